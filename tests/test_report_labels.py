"""`tcpfp report` labels its fingerprint clusters from the signature databases, from the best evidence the log holds.

A log written by `tcpfp serve` holds FINGERPRINT_OS (the label serve gave each
SYN): the cluster takes its most common label.  A log with only
FINGERPRINT_P0F has its raw signatures matched when the report runs.  A log
with only the seed's fields (TTL, window, scale, option kinds, MSS) is matched
on those parts alone and says the match is partial.  Heuristics are the last
resort.  Every cluster says where its label came from (`label_source`) and how
it matched (`label_match`).  Expected labels are written by hand from the
signature lines of tcpfp_cli/data/tcpfp.fp and /etc/p0f/p0f.fp quoted beside
each case, never by running the matcher.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import need
from servehelp import Served, exchange
from tcpfp_cli.cli import app
from tcpfp_cli.oslabel import P0F_DATABASE, PartialSyn, label_partial
from tcpfp_cli.sigdb import Databases, parse_database

SEED = Path(__file__).parent / "fixtures" / "seed_access.log"
SEED_FORMAT = ('%{FINGERPRINT_TCP_RTT}g %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_TCP_WSIZE}g '
               '%{FINGERPRINT_TCP_WSCALE}g %{FINGERPRINT_TCP_OPTIONS}g %{FINGERPRINT_TCP_MSS}g "%r"')
# The seed's fields, DF, and the raw signature: what an older Apache config might log.
P0F_FORMAT = ('%h "%r" %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_IP_DF}g %{FINGERPRINT_TCP_WSIZE}g '
              '%{FINGERPRINT_TCP_WSCALE}g "%{FINGERPRINT_TCP_OPTIONS}g" %{FINGERPRINT_TCP_MSS}g '
              '"%{FINGERPRINT_P0F}g"')
OS_FORMAT = ('%h "%r" %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_TCP_WSIZE}g %{FINGERPRINT_TCP_WSCALE}g '
             '"%{FINGERPRINT_TCP_OPTIONS}g" %{FINGERPRINT_TCP_MSS}g "%{FINGERPRINT_OS}g" "%{FINGERPRINT_OS_MATCH}g"')
# Only the seed's fields, but with the options quoted so that an empty layout is possible.
KEY_FORMAT = ('%h "%r" %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_TCP_WSIZE}g %{FINGERPRINT_TCP_WSCALE}g '
              '"%{FINGERPRINT_TCP_OPTIONS}g" %{FINGERPRINT_TCP_MSS}g')

EMBEDDED = "unix:Linux:embedded (low memory, window scale 1-5)"  # tcpfp.fp: *:64:0:*:*,1..5:mss,sok,ts,nop,ws:...
LINUX_NEW = "unix:Linux:4.19 or newer"  # tcpfp.fp: *:64:0:*:mss*44..54,*:mss,sok,ts,nop,ws:df,id+,flow:0
LINUX_ANY = "unix:Linux:"  # tcpfp.fp generic: *:64:0:*:*,*:mss,sok,ts,nop,ws:df,id+,flow:0
WINDOWS_10 = "win:Windows:10 or 11"  # tcpfp.fp: *:128:0:*:64240,*:mss,nop,ws,nop,nop,sok:df,id+,flow:0
MACOS = "unix:macOS:11 or newer (or iOS)"  # tcpfp.fp: *:64:0:*:65535,6:mss,nop,ws,nop,nop,ts,sok,eol+1:df...
OPENBSD = "unix:OpenBSD:4.x-5.x"  # p0f.fp: *:64:0:*:16384,3:mss,nop,nop,sok,nop,ws,nop,nop,ts:df,id+:0

runner = CliRunner()


def report(*args: str, input: str | None = None) -> dict:
    result = runner.invoke(app, ["report", "--json", *args], input=input)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def by_window(doc: dict) -> dict:
    return {(f["FINGERPRINT_TCP_WSIZE"], f["FINGERPRINT_TCP_WSCALE"], f["FINGERPRINT_TCP_MSS"]): f
            for f in doc["fingerprints"]}


def write(tmp_path: Path, lines: list[str], name: str = "access.log") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# --------------------------------------------------------------------------- the seed: a partial match


def test_seed_clusters_are_embedded_linux_by_a_partial_database_match():
    doc = report("--format", SEED_FORMAT, "--no-p0f-db", str(SEED))
    assert len(doc["fingerprints"]) == 7
    for f in doc["fingerprints"]:
        assert f["label"] == "embedded/low-memory Linux"
        assert f["label_source"] == "database-partial"
        assert f["label_match"] == "partial"
        assert f["os"] == EMBEDDED


def test_seed_with_p0f_database_too_keeps_our_embedded_label():
    # Our file is searched before p0f's, and its embedded signatures are specific (s).
    need(os.path.exists(P0F_DATABASE), f"needs p0f's database at {P0F_DATABASE}")
    for f in report("--format", SEED_FORMAT, str(SEED))["fingerprints"]:
        assert (f["os"], f["label_match"]) == (EMBEDDED, "partial")


def test_table_marks_partial_matches():
    result = runner.invoke(app, ["report", "--format", SEED_FORMAT, "--no-p0f-db", str(SEED)])
    assert result.exit_code == 0
    table = result.stdout.split("Fingerprint clusters")[1].split("Campaigns")[0]
    header = table.splitlines()[1].split()
    assert header[header.index("label") + 1] == "from"
    assert table.count("db~") == 7 + 1  # one per cluster, and the note under the table
    assert "Linux embedded (low memory, window scale 1-5)" in table
    assert "db~: matched on the logged fields only" in table


# Partial matching of the known parts, one cluster per line: (TTL, window, scale, options, MSS), os, label.
PARTIAL_LINES = [
    # 65340 = 45 x 1452: mss*45 -> 4.19 or newer.
    ((60, 65340, 7, "2,4,8,1,3", 1452), LINUX_NEW, "Linux-like"),
    # 65340 is no multiple of 1460 (nor of 1448, nor an MTU multiple): only the generic Linux line.
    ((60, 65340, 7, "2,4,8,1,3", 1460), LINUX_ANY, "Linux-like"),
    # Scale 3 -> the embedded line, whatever the window.
    ((52, 14600, 3, "2,4,8,1,3", 1460), EMBEDDED, "embedded/low-memory Linux"),
    # Windows at TTL 128 minus 13 hops.
    ((115, 64240, 8, "2,1,3,1,1,4", 1460), WINDOWS_10, "Windows-like"),
    # EOL and one padding byte (two trailing zeros) is eol+1: macOS.
    ((57, 65535, 6, "2,1,3,1,1,8,4,0,0", 1460), MACOS, "Apple-like"),
]


def test_partial_match_uses_window_multiples_scale_ttl_and_eol_padding(tmp_path):
    log = write(tmp_path, [f'10.0.0.{k} "GET / HTTP/1.1" {ttl} {window} {scale} "{options}" {mss}'
                           for k, ((ttl, window, scale, options, mss), _, _) in enumerate(PARTIAL_LINES)])
    got = by_window(report("--format", KEY_FORMAT, "--no-p0f-db", log))
    for fields, os_label, label in PARTIAL_LINES:
        _, window, scale, _, mss = fields
        f = got[(window, scale, mss)]
        assert (f["os"], f["label"], f["label_source"], f["label_match"]) == (
            os_label, label, "database-partial", "partial"), fields


def test_no_partial_match_falls_back_to_heuristics(tmp_path):
    log = write(tmp_path, [
        # EOL without padding (eol+0): no signature of ours has it; the heuristic still says Apple.
        '10.0.0.1 "GET / HTTP/1.1" 57 65535 6 "2,1,3,1,1,8,4,0" 1460',
        # Windows' layout from a TTL-255 stack: only a fuzzy Windows match (TTL 128), which the
        # labelling policy drops because the SYN arrived with a higher TTL.
        '10.0.0.2 "GET / HTTP/1.1" 250 64240 8 "2,1,3,1,1,4" 1460',
        # No options at all.
        '10.0.0.3 "GET / HTTP/1.1" 250 4128 - "" -',
    ])
    got = by_window(report("--format", KEY_FORMAT, "--no-p0f-db", log))
    apple = got[(65535, 6, 1460)]
    assert (apple["label"], apple["label_source"], apple["label_match"], apple["os"]) == (
        "Apple-like", "heuristic", None, None)
    high = got[(64240, 8, 1460)]
    assert (high["label"], high["label_source"], high["os"]) == ("-", "heuristic", None)
    bare = got[(4128, None, None)]
    assert (bare["label"], bare["label_source"]) == ("-", "heuristic")


# --------------------------------------------------------------------------- FINGERPRINT_P0F: a full match


def test_logged_p0f_signature_is_matched_with_the_databases(tmp_path):
    log = write(tmp_path, [
        # Windows 10: window 64240 at TTL 113 with DF and IP ID: exact, tcpfp.fp.
        '10.0.0.1 "GET / HTTP/1.1" 113 1 64240 8 "2,1,3,1,1,4" 1460 "4:113+15:0:1460:64240,8:mss,nop,ws,nop,nop,sok:df,id+:0"',
        '10.0.0.2 "GET / HTTP/1.1" 114 1 64240 8 "2,1,3,1,1,4" 1460 "4:114+14:0:1460:64240,8:mss,nop,ws,nop,nop,sok:df,id+:0"',
        # Linux layout whose TSecr is non-zero on the SYN (ts2+): no Linux line allows that quirk, even
        # fuzzily, so the database says nothing and the heuristics speak; a partial match (which does
        # not know the quirks) would have said "4.19 or newer".
        '10.0.0.3 "GET / HTTP/1.1" 60 1 64240 7 "2,4,8,1,3" 1460 "4:60+4:0:1460:mss*44,7:mss,sok,ts,nop,ws:df,id+,ts2+:0"',
    ])
    got = by_window(report("--format", P0F_FORMAT, "--no-p0f-db", log))
    windows = got[(64240, 8, 1460)]
    assert (windows["label"], windows["label_source"], windows["label_match"], windows["os"]) == (
        "Windows-like", "database", "exact", WINDOWS_10)
    odd = got[(64240, 7, 1460)]
    assert (odd["label"], odd["label_source"], odd["label_match"], odd["os"]) == (
        "Linux-like", "heuristic", None, None)


def test_most_requests_decide_among_logged_p0f_signatures(tmp_path):
    # One cluster (same window, scale, layout, MSS, TTL bucket, DF): two SYNs look like Linux 4.19+,
    # one carries ts2+ and matches nothing.  The label is the one most requests got.
    linux = '"4:{0}+{1}:0:1460:mss*44,7:mss,sok,ts,nop,ws:df,id+:0"'
    log = write(tmp_path, [
        f'10.0.0.1 "GET / HTTP/1.1" 60 1 64240 7 "2,4,8,1,3" 1460 {linux.format(60, 4)}',
        f'10.0.0.2 "GET / HTTP/1.1" 61 1 64240 7 "2,4,8,1,3" 1460 {linux.format(61, 3)}',
        '10.0.0.3 "GET / HTTP/1.1" 62 1 64240 7 "2,4,8,1,3" 1460 "4:62+2:0:1460:mss*44,7:mss,sok,ts,nop,ws:df,id+,ts2+:0"',
    ])
    (f,) = report("--format", P0F_FORMAT, "--no-p0f-db", log)["fingerprints"]
    assert (f["os"], f["label_source"], f["label_match"], f["requests"]) == (LINUX_NEW, "database", "exact", 3)


OPENBSD_LINE = ('10.0.0.9 "GET / HTTP/1.1" 57 1 16384 3 "2,1,1,4,1,3,1,1,8" 1460 '
                '"4:57+7:0:1460:16384,3:mss,nop,nop,sok,nop,ws,nop,nop,ts:df,id+:0"')


def test_no_p0f_db_leaves_p0f_only_systems_to_the_heuristics(tmp_path):
    need(os.path.exists(P0F_DATABASE), f"needs p0f's database at {P0F_DATABASE}")
    log = write(tmp_path, [OPENBSD_LINE])
    (f,) = report("--format", P0F_FORMAT, log)["fingerprints"]
    assert (f["label"], f["os"], f["label_source"], f["label_match"]) == (
        "OpenBSD 4.x-5.x", OPENBSD, "database", "exact")
    (f,) = report("--format", P0F_FORMAT, "--no-p0f-db", log)["fingerprints"]
    assert (f["label"], f["os"], f["label_source"]) == ("-", None, "heuristic")


def test_p0f_db_path_is_used_as_p0f_database(tmp_path):
    db = tmp_path / "old.fp"
    db.write_text("classes = unix\n[tcp:request]\n"
                  "label = s:unix:OpenBSD:from a test file\n"
                  "sig = *:64:0:*:16384,3:mss,nop,nop,sok,nop,ws,nop,nop,ts:df,id+:0\n")
    log = write(tmp_path, [OPENBSD_LINE])
    (f,) = report("--format", P0F_FORMAT, "--p0f-db", str(db), log)["fingerprints"]
    assert (f["label"], f["os"]) == ("OpenBSD from a test file", "unix:OpenBSD:from a test file")


# --------------------------------------------------------------------------- user signature files

ACME = ("; a user's own device\nclasses = unix\n[tcp:request]\n"
        "label = s:unix:Acme:router firmware 2\n"
        "sig = *:64:0:*:*,4:mss,sok,ts,nop,ws:df,id+:0\n")


def test_user_signatures_come_first(tmp_path):
    sigs = tmp_path / "acme.fp"
    sigs.write_text(ACME)
    doc = report("--format", SEED_FORMAT, "--no-p0f-db", "--signatures", str(sigs), str(SEED))
    for f in doc["fingerprints"]:
        if f["FINGERPRINT_TCP_WSCALE"] == 4:  # the seed's 28800/4/1406 cluster
            assert (f["label"], f["os"], f["label_match"]) == ("Acme router firmware 2", "unix:Acme:router firmware 2",
                                                              "partial")
        else:
            assert (f["label"], f["os"]) == ("embedded/low-memory Linux", EMBEDDED)
    assert sum(f["FINGERPRINT_TCP_WSCALE"] == 4 for f in doc["fingerprints"]) == 1


def test_bad_signature_file_is_one_line_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.fp"
    bad.write_text("classes = unix\n[tcp:request]\nlabel = s:unix:Acme:x\nsig = *:64:0:*:*,4:mss,bogus:df:0\n")
    result = runner.invoke(app, ["report", "--format", SEED_FORMAT, "--signatures", str(bad), str(SEED)])
    assert result.exit_code == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("tcpfp: ") and f"{bad}, line 4" in line and "bogus" in line


def test_missing_signature_file_exits_2(tmp_path):
    result = runner.invoke(app, ["report", "--format", SEED_FORMAT, "--signatures", str(tmp_path / "no.fp"),
                                 str(SEED)])
    assert result.exit_code == 2 and str(tmp_path / "no.fp") in result.stderr


# --------------------------------------------------------------------------- FINGERPRINT_OS: as logged


def test_logged_label_is_the_clusters_most_common_one(tmp_path):
    rows = ([("unix:Linux:4.19 or newer", "exact")] * 3 + [("unix:Linux:4.19 or newer", "fuzzy")]
            + [("win:Windows:10 or 11", "exact")] * 2 + [("-", "-")] * 5)
    lines = [f'10.0.0.{k} "GET / HTTP/1.1" 60 64240 7 "2,4,8,1,3" 1460 "{os_}" "{kind}"'
             for k, (os_, kind) in enumerate(rows)]
    # A second cluster where serve found no label at all: the log holds no raw signature, so partial.
    lines += [f'10.0.1.{k} "GET / HTTP/1.1" 50 28800 4 "2,4,8,1,3" 1406 "-" "-"' for k in range(2)]
    got = by_window(report("--format", OS_FORMAT, "--no-p0f-db", write(tmp_path, lines)))
    linux = got[(64240, 7, 1460)]
    assert (linux["label"], linux["os"], linux["label_source"], linux["label_match"]) == (
        "Linux-like", LINUX_NEW, "FINGERPRINT_OS", "exact")
    unlabelled = got[(28800, 4, 1406)]
    assert (unlabelled["os"], unlabelled["label_source"], unlabelled["label_match"]) == (
        EMBEDDED, "database-partial", "partial")


def test_logged_label_wins_over_the_databases_of_the_report(tmp_path):
    # serve's label stands for what serve saw; a user file given to report does not rewrite it.
    sigs = tmp_path / "acme.fp"
    sigs.write_text(ACME)
    log = write(tmp_path, ['10.0.0.1 "GET / HTTP/1.1" 50 28800 4 "2,4,8,1,3" 1406 "unix:Linux:from serve" "generic"'])
    (f,) = report("--format", OS_FORMAT, "--signatures", str(sigs), log)["fingerprints"]
    assert (f["label"], f["os"], f["label_source"], f["label_match"]) == (
        "Linux-like", "unix:Linux:from serve", "FINGERPRINT_OS", "generic")


def test_real_serve_log_is_labelled_from_fingerprint_os(tmp_path):
    with Served(tmp_path) as server:
        for _ in range(3):
            exchange("127.0.0.1", server.port, b"GET /x HTTP/1.0\r\n\r\n")
        records = server.records(3)
    assert len(records) == 3
    logged = {(r["FINGERPRINT_OS"], r["FINGERPRINT_OS_MATCH"]) for r in records}
    assert len(logged) == 1  # three SYNs from one kernel with the same settings
    ((os_label, kind),) = logged
    assert os_label.split(":")[1] == "Linux"  # this machine's kernel sent the SYNs
    (f,) = report(str(server.log))["fingerprints"]
    assert (f["os"], f["label_match"], f["label_source"]) == (os_label, kind, "FINGERPRINT_OS")
    assert f["label"] in ("Linux-like", "embedded/low-memory Linux")
    assert f["requests"] == 3


# --------------------------------------------------------------------------- label_partial itself

TWO = parse_database(
    "classes = unix\n[tcp:request]\n"
    "label = s:unix:WithDF:\nsig = 4:64:0:*:*,*:mss:df:0\n"
    "label = s:unix:NoDF:\nsig = 4:64:0:*:*,*:mss::0\n"
    "label = g:unix:Generic:\nsig = *:128:0:1460:*,*:mss,nop,nop,sok::0\n", "two.fp")


@pytest.mark.parametrize("known, expected", [
    # DF unknown: the first signature of the layout whose known parts agree.
    ({}, ("unix:WithDF:", "exact")),
    ({"df": True}, ("unix:WithDF:", "exact")),
    # DF clear: WithDF would only be p0f's fuzzy match; the exact NoDF wins.
    ({"df": False}, ("unix:NoDF:", "exact")),
    # TTL 100 is above 64: both are fuzzy at most, and the policy drops such a fuzzy match.
    ({"ttl": 100}, None),
    # TTL 20 is more than 35 hops below 64: fuzzy, kept (the sender's TTL is below the signature's).
    ({"ttl": 20}, ("unix:WithDF:", "fuzzy")),
])
def test_label_partial_known_parts(known, expected):
    found = label_partial(Databases([TWO]), PartialSyn.from_text("2", **known))
    assert (None if found is None else (found.label, found.kind)) == expected


def test_label_partial_mss_and_layout_must_agree():
    dbs = Databases([TWO])
    assert label_partial(dbs, PartialSyn.from_text("2,1,1,4", mss=1460, ttl=120)).label == "unix:Generic:"
    assert label_partial(dbs, PartialSyn.from_text("2,1,1,4", mss=1400, ttl=120)) is None
    assert label_partial(dbs, PartialSyn.from_text("2,1,1,4")).kind == "generic"  # MSS, TTL unknown
    assert label_partial(dbs, PartialSyn.from_text("2,4")) is None  # no signature has this layout
    assert PartialSyn.from_text("2,x") is None
