"""FINGERPRINT_OS on real and realistic SYNs: our signature file, p0f's, and the labelling policy.

The family (the name in ``class:name:flavor``) is what matters on the real
internet, so most expectations here are families, written by hand from the
facts each signature of tcpfp_cli/data/tcpfp.fp rests on (the kernel's own
SYNs, XNU and FreeBSD sources, a published Windows capture; see
docs/signatures.md), never from running the matcher.  The robustness table
is the point of the file: NAT and TTL rewriting, options overwritten with
NOPs and MSS clamping must keep the family or give ``-``, never another
family.  The CLI tests go through ``tcpfp decode``; one test goes through
the real ``tcpfp serve`` with this machine's kernel as the client.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import need, need_root
from servehelp import Served, exchange, free_port
from synbuild import CWR, ECE, EOL, NOP, SOK, SYN, build_syn, mss, pad4, ts, ws
from tcpfp_cli.cli import app
from tcpfp_cli.hextext import parse_hex
from tcpfp_cli.oslabel import OUR_SIGNATURES, P0F_DATABASE, Labeler
from tcpfp_cli.sigdb import load_databases, match
from tcpfp_cli.syn import parse_syn

FIXTURES = Path(__file__).parent / "fixtures" / "syn"

# Labels of tcpfp.fp, as its label lines spell them.
LINUX_NEW = "unix:Linux:4.19 or newer"
LINUX_BIG_BUFFER = "unix:Linux:Android or large receive buffer"
LINUX_EMBEDDED = "unix:Linux:embedded (low memory, window scale 1-5)"
LINUX_TS_GONE = "unix:Linux:timestamps removed in transit"
WINDOWS_10 = "win:Windows:10 or 11"
MACOS = "unix:macOS:11 or newer (or iOS)"
IOS = "unix:iOS:iPhone or iPad (or macOS with a 2 MiB buffer)"
FREEBSD = "unix:FreeBSD:12 or newer"


def family(result) -> str | None:
    return None if result is None else result.label.split(":")[1]


@pytest.fixture(scope="module")
def labeler() -> Labeler:
    """Our file, then p0f's database when it is installed (the default search)."""
    return Labeler.from_options()


@pytest.fixture(scope="module")
def ours_only() -> Labeler:
    return Labeler.from_options(use_p0f=False)


# --- the option areas the stacks write, from their sources -------------------

def linux_opts(m: int = 1460, scale: int = 7) -> bytes:
    """net/ipv4/tcp_output.c order, as this kernel sends it: mss,sok,ts,nop,ws."""
    return mss(m) + SOK + ts(123456, 0) + NOP + ws(scale)


def windows_opts(m: int = 1460, scale: int = 8) -> bytes:
    """The published Windows 10 capture: mss,nop,ws,nop,nop,sok."""
    return mss(m) + NOP + ws(scale) + NOP + NOP + SOK


def apple_opts(m: int = 1460, scale: int = 6) -> bytes:
    """XNU tcp_output.c: mss, nop+ws, nop,nop,ts, sok last, EOL padding."""
    return mss(m) + NOP + ws(scale) + NOP + NOP + ts(777, 0) + SOK + EOL + EOL


def freebsd_opts(m: int = 1460, scale: int = 6) -> bytes:
    """FreeBSD tcp_addoptions(): mss,nop,ws,sok,ts."""
    return mss(m) + NOP + ws(scale) + SOK + ts(4242, 0)


def syn(**kw):
    return parse_syn(build_syn(**kw).raw)


# Each: a SYN as the system sends it (hop counts already taken off the TTL).
FAMILY_SYNS = [
    pytest.param(dict(ttl=116, ip_id=0x5A29, window=64240, options=windows_opts()), WINDOWS_10,
                 id="windows-10-11"),
    pytest.param(dict(ttl=119, ip_id=0x1234, window=65340, options=windows_opts(1452)), WINDOWS_10,
                 id="windows-pppoe-mss1452"),
    pytest.param(dict(ttl=57, ip_id=0, window=65535, options=apple_opts()), MACOS, id="macos"),
    pytest.param(dict(ttl=52, ip_id=0, window=65535, flags=SYN | ECE | CWR, options=apple_opts(1400)),
                 MACOS, id="ios-current-ecn-scale6"),
    pytest.param(dict(ttl=55, ip_id=0, window=65535, options=apple_opts(1460, 5)), IOS, id="ios-scale5"),
    pytest.param(dict(ttl=50, ip_id=0x4D2, window=65535, options=linux_opts(1400, 9)), LINUX_BIG_BUFFER,
                 id="android"),
    pytest.param(dict(ttl=58, ip_id=0x77, window=64240, options=linux_opts()), LINUX_NEW, id="linux-desktop"),
    pytest.param(dict(version=6, ttl=58, flow=0x5F3A1, window=64800, options=linux_opts(1440)), LINUX_NEW,
                 id="linux-ipv6-flow-label"),
    pytest.param(dict(ttl=60, ip_id=0, window=65535, options=freebsd_opts()), FREEBSD, id="freebsd-13"),
]


@pytest.mark.parametrize("spec, expected", FAMILY_SYNS)
def test_each_family_gets_its_label(labeler, ours_only, spec, expected):
    fp = syn(**spec)
    for chosen in (labeler, ours_only):
        result = chosen.label(fp)
        assert result is not None, fp.p0f
        assert (result.label, result.kind) == (expected, "exact"), fp.p0f
        assert result.path == str(OUR_SIGNATURES)


def test_mozi_and_boaform_syns_of_the_seed_are_embedded_linux(labeler):
    seeds = sorted(FIXTURES.glob("seed_*.json"))
    assert len(seeds) == 13
    for path in seeds:
        fp = parse_syn(parse_hex(json.loads(path.read_text())["hex"]))
        result = labeler.label(fp)
        assert result is not None and (result.label, result.kind) == (LINUX_EMBEDDED, "exact"), (path.name, fp.p0f)


# --- robustness ----------------------------------------------------------------

def linux_ts_as_nops(m: int = 1460) -> bytes:
    """A middlebox overwrote the 10-byte timestamp with 10 NOPs in place."""
    return mss(m) + SOK + NOP * 10 + NOP + ws(7)


# (SYN, families allowed: None is "-")
ROBUSTNESS = [
    pytest.param(dict(ttl=50, ip_id=0x99, window=64240, options=windows_opts()), {"Windows", None},
                 id="windows-behind-ttl-resetting-nat"),
    pytest.param(dict(ttl=40, ip_id=0x99, window=64240, options=windows_opts()), {"Windows", None},
                 id="windows-ttl-40"),
    pytest.param(dict(ttl=51, ip_id=0x99, window=64240, options=linux_ts_as_nops()), {"Linux", None},
                 id="linux-timestamp-nopped"),
    pytest.param(dict(ttl=51, ip_id=0x99, window=5840, options=linux_ts_as_nops()), {"Linux", None},
                 id="linux-timestamp-nopped-baidu-window"),
    pytest.param(dict(ttl=51, ip_id=0x99, window=64240, options=mss(1460) + NOP * 12 + NOP + ws(7)),
                 {"Linux", None}, id="linux-sack-and-timestamp-nopped"),
    pytest.param(dict(ttl=51, ip_id=0, window=65535, options=mss(1460) + NOP + ws(6) + NOP * 12 + SOK + EOL * 2),
                 {"macOS", None}, id="macos-timestamp-nopped"),
    *[pytest.param(dict(ttl=53, ip_id=0x99, window=64240, options=linux_opts(clamped)), {"Linux"},
                   id=f"linux-mss-clamped-{clamped}") for clamped in (1452, 1400, 1360)],
    *[pytest.param(dict(ttl=113, ip_id=0x99, window=64240, options=windows_opts(clamped)), {"Windows"},
                   id=f"windows-mss-clamped-{clamped}") for clamped in (1452, 1400, 1360)],
    *[pytest.param(dict(ttl=53, ip_id=0, window=65535, options=apple_opts(clamped)), {"macOS"},
                   id=f"macos-mss-clamped-{clamped}") for clamped in (1452, 1400, 1360)],
    pytest.param(dict(ttl=50, df=False, ip_id=0x99, window=64240, options=linux_opts()), {"Linux"},
                 id="linux-df-cleared-by-middlebox"),
    pytest.param(dict(ttl=100, ip_id=0x99, window=64240, options=linux_opts()), {"Linux", None},
                 id="linux-ttl-raised"),
    pytest.param(dict(ttl=60, ip_id=1, window=1234, options=pad4(ws(3) + mss(1000) + NOP)), {None},
                 id="unknown-odd-layout"),
    pytest.param(dict(ttl=250, df=False, ip_id=7, window=5744, options=windows_opts(1436, 2)), {None},
                 id="windows-order-from-a-ttl-255-stack"),
    pytest.param(dict(ttl=240, df=False, ip_id=54321, window=65535, options=mss(1460)), {None},
                 id="mss-only-scanner-ttl-255"),
    pytest.param(dict(ttl=50, ip_id=0x99, window=65535, options=pad4(mss(1460) + NOP + ws(6) + SOK)), {None},
                 id="apple-or-freebsd-without-timestamps-is-ambiguous"),
]


@pytest.mark.parametrize("spec, allowed", ROBUSTNESS)
def test_rewritten_syns_keep_their_family_or_get_no_label(labeler, spec, allowed):
    fp = syn(**spec)
    assert family(labeler.label(fp)) in allowed, fp.p0f


def test_windows_behind_nat_is_a_fuzzy_windows_match(labeler):
    result = labeler.label(syn(ttl=50, ip_id=0x99, window=64240, options=windows_opts()))
    assert (result.label, result.kind) == (WINDOWS_10, "fuzzy")


def test_policy_drops_what_p0f_alone_would_call_a_wrong_family():
    """p0f's own rules name these; the policy says '-' because their TTL is above the system's."""
    need(os.path.exists(P0F_DATABASE), f"needs p0f's database at {P0F_DATABASE}")
    p0f_alone = load_databases([P0F_DATABASE])
    policy = Labeler(p0f_alone)
    scanner = syn(ttl=240, df=False, ip_id=54321, window=65535, options=mss(1460))
    embedded = syn(ttl=250, df=False, ip_id=7, window=5744, options=windows_opts(1436, 2))
    assert family(match(scanner, p0f_alone)) == "Linux"
    assert family(match(embedded, p0f_alone)) == "Windows"
    assert policy.label(scanner) is None and policy.label(embedded) is None


def test_our_file_parses_and_every_label_is_a_known_family():
    (ours,) = load_databases([OUR_SIGNATURES]).files
    assert len(ours.tcp_request) > 50
    assert {lab.name for lab in ours.labels} == {"Linux", "Windows", "macOS", "iOS", "FreeBSD"}


# --- the real kernel through the real server ---------------------------------------

def test_this_kernels_syn_through_tcpfp_serve_is_labelled_linux(tmp_path):
    fmt = "%{FINGERPRINT_OS}g|%{FINGERPRINT_OS_MATCH}g|%{FINGERPRINT_P0F}g"
    port = free_port()
    with Served(tmp_path, "--listen", f"127.0.0.1:{port}", port=port, log_format=fmt) as served:
        answer = exchange("127.0.0.1", served.port, b"GET / HTTP/1.0\r\n\r\n",
                          before_connect=lambda s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460))
        assert answer.startswith(b"HTTP/1.")
        (line,) = served.lines(1)
    label, kind, p0f = line.split("|")
    assert ":mss,sok,ts,nop,ws:" in p0f  # the kernel's own layout
    assert label.startswith("unix:Linux:"), line
    assert kind in ("exact", "generic"), line


# In a private network namespace (lo at MTU 1500, Debian's default buffers),
# one SYN per sysctl setting, read back through TCP_SAVE_SYN; printed as hex.
NETNS_SCRIPT = r"""
import json, socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up", "mtu", "1500"], check=True, timeout=10)
def put(name, value):
    with open("/proc/sys/net/ipv4/" + name, "w") as f:
        f.write(value)
put("tcp_rmem", "4096 131072 6291456")
out = {}
for name, sysctls, rcvbuf in json.loads(sys.argv[1]):
    for key, value in sysctls.items():
        put(key, value)
    with socket.socket() as l, socket.socket() as c:
        l.settimeout(2); c.settimeout(2)
        l.setsockopt(socket.IPPROTO_TCP, 27, 1)  # TCP_SAVE_SYN
        l.bind(("127.0.0.1", 0)); l.listen(4)
        if rcvbuf:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        c.connect(l.getsockname())
        a, _ = l.accept()
        with a:
            out[name] = a.getsockopt(socket.IPPROTO_TCP, 28, 512).hex()  # TCP_SAVED_SYN
    for key in sysctls:
        put(key, "1")
print(json.dumps(out))
"""

KERNEL_SETTINGS = [
    # name, sysctls, SO_RCVBUF, expected label
    ("default", {}, 0, LINUX_NEW),
    ("android-buffers", {"tcp_rmem": "524288 1048576 4525824"}, 0, LINUX_BIG_BUFFER),
    ("small-buffer", {}, 65536, LINUX_NEW),
    ("timestamps-off", {"tcp_timestamps": "0"}, 0, "unix:Linux:timestamps off"),
    ("sack-off", {"tcp_sack": "0"}, 0, "unix:Linux:SACK off"),
    ("window-scaling-off", {"tcp_window_scaling": "0"}, 0, "unix:Linux:window scaling off"),
]


def test_this_kernels_syns_under_other_settings_are_labelled_linux(ours_only):
    need_root()
    unshare = shutil.which("unshare")
    need(unshare is not None and shutil.which("ip") is not None, "needs unshare and ip")
    settings = [(name, sysctls, rcvbuf) for name, sysctls, rcvbuf, _ in KERNEL_SETTINGS]
    done = subprocess.run([unshare, "-n", sys.executable, "-c", NETNS_SCRIPT, json.dumps(settings)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    syns = json.loads(done.stdout)
    for name, _, _, expected in KERNEL_SETTINGS:
        fp = parse_syn(bytes.fromhex(syns[name]))
        result = ours_only.label(fp)
        assert result is not None and result.label == expected, (name, fp.p0f)


# --- tcpfp decode ------------------------------------------------------------------

WINDOWS_HEX = build_syn(ttl=116, ip_id=0x5A29, window=64240, options=windows_opts()).raw.hex()
LINUX_HEX = build_syn(ttl=58, ip_id=0x77, window=64240, options=linux_opts()).raw.hex()
FIELDS = ["--fields", "FINGERPRINT_OS,FINGERPRINT_OS_MATCH"]


def run(*args: str):
    return CliRunner().invoke(app, ["decode", *FIELDS, *args])


def test_decode_with_our_file_only():
    result = run("--no-p0f-db", WINDOWS_HEX, LINUX_HEX)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"{WINDOWS_10}\texact", f"{LINUX_NEW}\texact"]


def test_decode_with_a_p0f_db_path(tmp_path):
    db = tmp_path / "mini.fp"
    db.write_text("classes = win,unix\n\n[tcp:request]\nlabel = s:unix:Mini:os\n"
                  "sig = *:64:0:*:*,*:ws,mss,nop:df,id+:0\n")
    odd = build_syn(ttl=60, ip_id=1, window=1234, options=pad4(ws(3) + mss(1000) + NOP)).raw.hex()
    result = run("--p0f-db", str(db), odd, LINUX_HEX)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["unix:Mini:os\texact", f"{LINUX_NEW}\texact"]


def test_decode_user_signatures_override_our_label(tmp_path):
    mine = tmp_path / "mine.fp"
    mine.write_text("classes = win,unix\n\n[tcp:request]\nlabel = s:win:Windows:lab machine 7\n"
                    "sig = *:128:0:1460:64240,8:mss,nop,ws,nop,nop,sok:df,id+:0\n")
    result = run("--no-p0f-db", "--signatures", str(mine), WINDOWS_HEX, LINUX_HEX)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["win:Windows:lab machine 7\texact", f"{LINUX_NEW}\texact"]


def test_decode_without_any_match_prints_dashes():
    odd = build_syn(ttl=60, ip_id=1, window=1234, options=pad4(ws(3) + mss(1000) + NOP)).raw.hex()
    result = run("--no-p0f-db", odd)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["-\t-"]


def test_decode_refuses_a_signature_file_with_an_error(tmp_path):
    bad = tmp_path / "bad.fp"
    bad.write_text("classes = win,unix\n\n[tcp:request]\nlabel = s:unix:X:y\nsig = *:64:0:*:*,*:mss,bogus:df:0\n")
    result = run("--no-p0f-db", "--signatures", str(bad), LINUX_HEX)
    assert result.exit_code == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert str(bad) in line and "line 5" in line and "bogus" in line
