"""The p0f.fp reader and matcher: what each line means, which lines are errors, which SYN matches what.

Expected values are written by hand from p0f's README (section 5, the
signature format) and its matching rules: option layout first, then quirks
(with the fuzzy exceptions), IP option length, MSS, scale, payload class,
window, and the TTL (at most 35 hops, or any lower TTL for ``ttl-``
signatures).  The SYNs are built with scapy, not with tcpfp.  The oracle test
against p0f itself is tests/test_sigdb_p0f_oracle.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import need
from synbuild import CWR, ECE, EOL, NOP, SOK, SYN, build_syn, linux_layout, mss, pad4, ws
from tcpfp_cli.errors import TcpfpError
from tcpfp_cli.sigdb import (
    DEFAULT_DATABASE, Databases, SignatureFileError, WindowType, load_databases, match,
    parse_database, read_database,
)
from tcpfp_cli.syn import parse_syn

HEAD = "classes = win,unix,other\n\n[tcp:request]\nlabel = s:unix:Test:1\n"
SIG_LINE = 5  # the line of a sig appended to HEAD


def one_sig(value: str):
    (record,) = parse_database(HEAD + f"sig = {value}\n", "t.fp").tcp_request
    return record


# --------------------------------------------------------------------------- parsing

VALID = [
    # value, then the fields as the README defines them
    ("*:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0",
     dict(version=None, ttl=64, random_ttl=False, olen=0, mss=None, window_type=WindowType.MSS,
          window=20, scale=10, layout=(2, 4, 8, 1, 3), eol_pad=0, quirk_names=("df", "id+"),
          payload=False)),
    ("4:128+2:4:1460:%8192,*:mss,nop,eol+3:ecn,0+:+",
     dict(version=4, ttl=130, random_ttl=False, olen=4, mss=1460, window_type=WindowType.MOD,
          window=8192, scale=None, layout=(2, 1, 0), eol_pad=3, quirk_names=("ecn", "0+"),
          payload=True)),
    ("6:64-:0:0:*,0::flow,seq-,ack+:*",
     dict(version=6, ttl=64, random_ttl=True, olen=0, mss=0, window_type=WindowType.ANY,
          window=0, scale=0, layout=(), eol_pad=0, quirk_names=("flow", "seq-", "ack+"),
          payload=None)),
    ("*:255:0:536:mtu*4,14:?30,sack,ws,eol+0:ack-,uptr+,urgf+,pushf+,ts1-,ts2+,opt+,exws,bad:0",
     dict(version=None, ttl=255, mss=536, window_type=WindowType.MTU, window=4, scale=14,
          layout=(30, 5, 3, 0), eol_pad=0,
          quirk_names=("ack-", "uptr+", "urgf+", "pushf+", "ts1-", "ts2+", "opt+", "exws", "bad"))),
    # quirks are a set: p0f's order on output whatever the order written
    ("4:64:0:1460:0,0:?8:id-,df:0",
     dict(version=4, window_type=WindowType.VALUE, window=0, layout=(8,), quirk_names=("df", "id-"))),
    ("*:32:0:*:65535,*:" + ",".join(["nop"] * 24) + "::0",
     dict(ttl=32, window=65535, layout=(1,) * 24)),
]


@pytest.mark.parametrize("value, fields", VALID, ids=[v for v, _ in VALID])
def test_a_valid_signature_reads_as_the_readme_defines(value, fields):
    record = one_sig(value)
    assert {name: getattr(record, name) for name in fields} == fields
    assert (record.text, record.line, record.path, record.direction) == (value, SIG_LINE, "t.fp", "request")


def test_olayout_is_written_back_as_p0f_writes_it():
    assert one_sig("*:64:0:*:*,*:mss,nop,?8,?30,sack,eol+7::0").olayout == "mss,nop,ts,?30,sack,eol+7"


MALFORMED_SIGS = [
    ("5:64:0:*:*,*:::0", "IP version"),
    ("*:0:0:*:*,*:::0", "initial TTL 0"),
    ("*:256:0:*:*,*:::0", "initial TTL 256"),
    ("*:250+10:0:*:*,*:::0", "above 255"),
    ("*:64x:0:*:*,*:::0", "initial TTL"),
    ("*:64-5:0:*:*,*:::0", "initial TTL"),
    ("*:64:256:*:*,*:::0", "IP option length"),
    ("*:64::*:*,*:::0", "IP option length"),
    ("*:64:0:65536:*,*:::0", "MSS"),
    ("*:64:0:x:*,*:::0", "MSS"),
    ("*:64:0:*:%1,*:::0", "window divisor"),
    ("*:64:0:*:mss*0,*:::0", "mss multiplier"),
    ("*:64:0:*:mtu*1001,*:::0", "mtu multiplier"),
    ("*:64:0:*:65536,*:::0", "window size"),
    ("*:64:0:*:mss*,*:::0", "window size"),
    ("*:64:0:*:*:mss::0", "wsize,scale"),
    ("*:64:0:*:*,256:::0", "window scale"),
    ("*:64:0:*:*,*:mss,foo::0", "unknown TCP option 'foo'"),
    ("*:64:0:*:*,*:mss,:0:0", "unknown TCP option ''"),
    ("*:64:0:*:*,*:eol+1,mss::0", "EOL must be the last"),
    ("*:64:0:*:*,*:mss,eol::0", "eol+N"),
    ("*:64:0:*:*,*:?256::0", "option kind 256"),
    ("*:64:0:*:*,*:" + ",".join(["nop"] * 25) + "::0", "at most 24"),
    ("*:64:0:*:*,*::df,bogus:0", "unknown quirk 'bogus'"),
    ("6:64:0:*:*,*::df:0", "'df' is not valid for IPv6"),
    ("6:64:0:*:*,*::id+:0", "'id+' is not valid for IPv6"),
    ("4:64:0:*:*,*::flow:0", "'flow' is not valid for IPv4"),
    ("*:64:0:*:*,*:::1", "payload class"),
    ("*:64:0:*:*,*::", "has 7"),
    ("*:64:0:*:*,*:::0:", "has 9"),
]


@pytest.mark.parametrize("value, reason", MALFORMED_SIGS, ids=[v for v, _ in MALFORMED_SIGS])
def test_a_malformed_signature_is_an_error_naming_file_line_and_problem(value, reason):
    with pytest.raises(SignatureFileError) as caught:
        parse_database(HEAD + "sig = *:64:0:*:*,*:::0\n" + f"sig = {value}\n", "t.fp")
    err = caught.value
    assert isinstance(err, TcpfpError)
    assert (err.path, err.line) == ("t.fp", SIG_LINE + 1)
    assert reason in err.reason
    assert str(err).startswith(f"t.fp, line {SIG_LINE + 1}: ")


MALFORMED_FILES = [
    # (file text, line of the error, words of the reason)
    ("label = s:unix:A:1\n", 1, "misplaced 'label'"),
    ("classes = unix\n[tcp:request]\nsig = *:64:0:*:*,*:::0\n", 3, "misplaced 'sig'"),
    ("classes = unix\n[tcp:request]\nlabel = s:win:A:1\n", 3, "unknown class 'win'"),
    ("classes = unix\n[tcp:request]\nlabel = x:unix:A:1\n", 3, "type s or g"),
    ("classes = unix\n[tcp:request]\nlabel = s:unix:A\n", 3, "type:class:name:flavor"),
    ("classes = unix\n[tcp:request]\nlabel = s:unix:A@B:1\n", 3, "name 'A@B'"),
    ("classes = unix\n[tcp:request]\nlabel = s:unix::1\n", 3, "name ''"),
    ("classes = unix\n[tcp:request]\nlabel = s:!:Tool:1\nsig = *:64:0:*:*,*:::0\n", 4, "'sys' line first"),
    ("classes = unix\n[tcp:request]\nlabel = s:!:Tool:1\nlabel = s:unix:A:1\n", 4, "needs a 'sys' line"),
    ("classes = unix\n[tcp:request]\nlabel = s:unix:A:1\nsys = Linux\n", 4, "misplaced 'sys'"),
    ("classes = unix\n[tcp:request]\nlabel = s:!:Tool:1\nsys = @win\n", 4, "unknown class 'win'"),
    ("classes = unix\n[tcp:request]\nlabel = s:!:Tool:1\nsys = Li#nux\n", 4, "sys entry 'Li#nux'"),
    ("classes = unix\n[tcp:request]\nlabel = s:!:Tool:1\nsys = Linux,\n", 4, "sys entry ''"),
    ("classes = unix\n[tcp:request]\nlabel = s:!:Tool:1\nsys = @unix ,Linux\n", 4, "unknown class 'unix '"),
    ("classes = unix ,win\n", 1, "class 'unix '"),
    ("classes = unix\n[tcp:request]\nclasses = win\n", 3, "before the first section"),
    ("classes = un-ix\n", 1, "class 'un-ix'"),
    ("classes = unix\n[udp:request]\n", 2, "unknown section '[udp:request]'"),
    ("classes = unix\n[tcp:sideways]\n", 2, "unknown section"),
    ("classes = unix\n[tcp:request]\nlabel s:unix:A:1\n", 3, "expected 'name = value'"),
    ("classes = unix\n[tcp:request]\nlabels = s:unix:A:1\n", 3, "unknown statement 'labels'"),
    ("classes = unix\n[tcp:request]\nua_os = Linux\n", 3, "'ua_os'"),
    # a flavor goes into log lines as it is: nothing there may break or forge a quoted field
    ("classes = unix\n[tcp:request]\nlabel = s:unix:A:2.6 \"x\n", 3, "holds a quote"),
    ("classes = unix\n[tcp:request]\nlabel = s:unix:A:2.6\\\n", 3, "a backslash"),
    ("classes = unix\n[tcp:request]\nlabel = s:unix:A:2.6\x1b[1m\n", 3, "that is not printable ASCII"),
    ("classes = unix\n[tcp:request]\nlabel = s:unix:A:caf\u00e9\n", 3, "not printable"),
    ("[mtu]\nlabel = \n", 2, "empty MTU label"),
    ("[mtu]\nlabel = Ethernet\nsig = 15x0\n", 3, "MTU"),
    # p0f refuses a signature that an earlier specific one already matches exactly
    ("classes = unix\n[tcp:request]\nlabel = s:unix:A:1\nsig = *:64:0:*:*,*:mss::0\n"
     "label = s:unix:B:1\nsig = 4:64:0:1460:5840,0:mss::0\n", 6, "already covered by line 4"),
    # ... seeing the new one as a packet of no IP version: a * signature's IPv4 quirks drop out
    ("classes = unix\n[tcp:request]\nlabel = s:unix:A:1\nsig = *:64:0:*:*,*:mss:df,id+:0\n"
     "sig = *:64:0:1460:*,*:mss::0\n", 5, "already covered by line 4"),
    ("classes = unix\n[tcp:request]\nlabel = s:unix:A:1\nsig = *:64:0:*:%1460,*:mss::0\n"
     "sig = 4:60:0:1460:5840,7:mss::0\n", 5, "already covered by line 4"),
    ("classes = unix\n[tcp:request]\nlabel = s:!:A:1\nsys = @unix\nsig = *:64-:0:*:*,*:mss::0\n"
     "sig = *:20:0:1460:5840,7:mss::0\n", 6, "already covered by line 5"),
]


@pytest.mark.parametrize("text, line, reason", MALFORMED_FILES, ids=[r for _, _, r in MALFORMED_FILES])
def test_a_misplaced_or_malformed_line_is_an_error_at_its_line(text, line, reason):
    with pytest.raises(SignatureFileError) as caught:
        parse_database(text, "bad.fp")
    assert (caught.value.path, caught.value.line) == ("bad.fp", line)
    assert reason in caught.value.reason, caught.value.reason


NOT_COVERED = [
    # a signature that overlaps an earlier one without being matched by it exactly
    ("generic first",
     "label = g:unix:A:1\nsig = *:64:0:*:*,*:mss::0\nlabel = s:unix:B:1\nsig = *:64:0:1460:*,*:mss::0\n"),
    ("other quirks", "label = s:unix:A:1\nsig = *:64:0:*:*,*:mss:ecn:0\nsig = *:64:0:*:*,*:mss::0\n"),
    ("window multiple after wildcard",
     "label = s:unix:A:1\nsig = *:64:0:*:*,*:mss::0\nsig = *:64:0:*:mss*4,*:mss::0\n"),
    ("wildcard after value", "label = s:unix:A:1\nsig = *:64:0:1460:*,*:mss::0\nsig = *:64:0:*:*,*:mss::0\n"),
    ("TTL 36 below", "label = s:unix:A:1\nsig = *:64:0:*:*,*:mss::0\nsig = *:28:0:*:*,*:mss::0\n"),
    ("other eol padding",
     "label = s:unix:A:1\nsig = *:64:0:*:*,*:mss,eol+0::0\nsig = *:64:0:*:*,*:mss,eol+4::0\n"),
]


@pytest.mark.parametrize("why, body", NOT_COVERED, ids=[w for w, _ in NOT_COVERED])
def test_an_overlapping_but_not_covered_signature_is_accepted(why, body):
    assert len(parse_database("classes = unix\n[tcp:request]\n" + body).tcp_request) == 2


def test_comments_blank_lines_blanks_and_crlf_are_ignored():
    text = "; comment\r\n\r\n  classes = unix, win\r\n[tcp:request]\r\n\t; more\r\n" \
           "label =  s:unix:Linux:2.x \r\n  sig   = *:64:0:*:*,*:::0\r\n"
    db = parse_database(text)
    assert db.classes == ("unix", "win")
    (record,) = db.tcp_request
    assert (record.line, record.text, record.label.text) == (7, "*:64:0:*:*,*:::0", "unix:Linux:2.x")


LABELS_TEXT = """\
classes = unix,Win
[tcp:request]
label = g:win:Windows:
sig = *:128:0:*:*,*:mss::0
label = s:!:NMap:SYN scan
sys = @unix, Linux,@WIN
sig = *:64-:0:1460:1024,0:mss::0
label = s:unix:LINUX:2.x
sig = *:64:0:*:*,*:mss,nop,nop,sok::0
[tcp:response]
label = s:unix:linux:3.x
sig = *:64:0:*:*,*:mss::0
"""


def test_labels_keep_class_name_flavor_and_tool_systems():
    db = parse_database(LABELS_TEXT)
    windows, nmap, linux = db.labels[:3]
    assert (windows.generic, windows.os_class, windows.name, windows.flavor) == (True, "Win", "Windows", "")
    assert (windows.text, windows.display, windows.is_tool) == ("Win:Windows:", "Windows", False)
    assert (nmap.text, nmap.display, nmap.is_tool, nmap.systems) == (
        "!:NMap:SYN scan", "NMap SYN scan", True, ("@unix", "Linux", "@Win"))
    # p0f compares names without case and prints the first spelling it saw ("Linux" in sys).
    assert linux.text == "unix:Linux:2.x"
    assert db.labels[3].name == "Linux"
    assert [s.direction for s in db.tcp_response] == ["response"]
    assert len(db.tcp_request) == 3


SECTIONS_TEXT = """\
classes = unix
[mtu]
label = Ethernet or modem
sig = 576
sig = 1500
[http:request]
ua_os = Linux,Windows
label = s:!:curl:
sys = Linux
sig = *:User-Agent,Host,Accept=[*/*]::curl/
"""


def test_other_sections_are_read_but_give_no_syn_signatures():
    db = parse_database(SECTIONS_TEXT)
    assert db.mtu == (("Ethernet or modem", "576", 4), ("Ethernet or modem", "1500", 5))
    assert db.tcp_request == () and db.tcp_response == ()


def test_an_empty_file_is_an_empty_database():
    assert len(Databases([parse_database("")])) == 0


def test_reading_a_missing_or_non_utf8_file_names_it(tmp_path):
    missing = tmp_path / "none.fp"
    with pytest.raises(SignatureFileError) as caught:
        read_database(missing)
    assert (caught.value.path, caught.value.line) == (str(missing), None)
    assert str(caught.value).startswith(f"{missing}: cannot read")
    latin = tmp_path / "latin.fp"
    latin.write_bytes(b"classes = unix\n[tcp:request]\nlabel = s:unix:Caf\xe9:1\n")
    with pytest.raises(SignatureFileError) as caught:
        read_database(latin)
    assert (caught.value.line, caught.value.reason) == (3, "not UTF-8 text")


# --------------------------------------------------------------------------- matching

DB_TEXT = """\
classes = unix,win,other
[tcp:request]
label = s:unix:Exact:one
sig = *:64:0:*:mss*20,7:mss,sok,ts,nop,ws:df,id+:0
label = s:unix:Later:two
sig = *:64:0:*:mss*20,6:mss,sok,ts,nop,ws:df,id+:0
label = g:unix:Generic:any window
sig = *:64:0:*:*,*:mss,sok,ts,nop,ws:df,id+:0
label = g:win:AnyWin:
sig = 4:128:0:*:*,8:mss,nop,ws,nop,nop,sok:df,id+:0
label = s:win:Modulo:8192
sig = 4:128:0:*:%8192,8:mss,nop,ws,nop,nop,sok:df,id+:0
label = s:win:MtuMultiple:
sig = 4:128:0:1360:mtu*4,2:mss,nop,ws,nop,nop,sok:df,id+:0
label = s:other:FixedMss:
sig = *:255:0:536:4128,0:mss::0
label = s:!:Scanner:random ttl
sys = @unix
sig = *:64-:0:1460:1024,0:mss:ack+:0
label = s:other:Payload:
sig = *:64:0:1460:65535,0:mss,nop,eol+2::+
label = s:other:Flow:
sig = *:64:0:1440:65535,0:mss,nop,nop,sok:flow:0
label = s:other:IpOptions:
sig = 4:64:4:1460:8192,0:mss:df:0
"""
# line numbers in DB_TEXT of the sig lines, by label name
LINE = {"Exact": 4, "Later": 6, "Generic": 8, "AnyWin": 10, "Modulo": 12, "MtuMultiple": 14,
        "FixedMss": 16, "Scanner": 19, "Payload": 21, "Flow": 23, "IpOptions": 25}

# Base SYNs; each case changes a few of their header values.
LINUX = dict(ip_id=7, window=1460 * 20, options=linux_layout(1460, 7, 1000))  # fits Exact at TTL 60
WIN = dict(ttl=120, ip_id=3, window=16384, options=pad4(mss(1460) + NOP + ws(8) + NOP + NOP + SOK))
MTU = dict(ttl=120, ip_id=3, window=1400 * 4, options=pad4(mss(1360) + NOP + ws(2) + NOP + NOP + SOK))
TOOL = dict(ttl=40, df=False, ip_id=9, window=1024, ack=1 << 24, options=mss(1460))
PAYLOAD = dict(ttl=64, df=False, ip_id=9, window=65535, options=mss(1460) + NOP + EOL * 3, payload=b"GET /")
FLOW = dict(version=6, ttl=64, flow=1, window=65535, options=pad4(mss(1440) + NOP + NOP + SOK))
IPOPT = dict(ttl=64, ip_id=0, window=8192, ip_options=NOP * 3 + EOL, options=mss(1460))
GENERIC = "unix:Generic:any window"

MATCHES = [
    # (case, build_syn arguments, expected label or None, kind, distance)
    ("exact", dict(LINUX, ttl=60), "unix:Exact:one", "exact", 4),
    ("TTL equal to the signature's", dict(LINUX, ttl=64), "unix:Exact:one", "exact", 0),
    ("generic when no specific fits (scale)", dict(LINUX, ttl=60, options=linux_layout(1460, 5, 1)),
     GENERIC, "generic", 4),
    ("generic when no specific fits (window)", dict(LINUX, ttl=60, window=1000), GENERIC, "generic", 4),
    ("second specific sig", dict(LINUX, ttl=60, options=linux_layout(1460, 6, 1)),
     "unix:Later:two", "exact", 4),
    ("mtu*20 is not mss*20", dict(LINUX, ttl=60, window=1500 * 20), GENERIC, "generic", 4),
    ("window mss-12 multiple with timestamps", dict(LINUX, ttl=60, window=1448 * 20),
     "unix:Exact:one", "exact", 4),
    ("TTL 36 hops below: fuzzy, guessed distance", dict(LINUX, ttl=28), "unix:Exact:one", "fuzzy", 4),
    ("TTL 35 hops below: exact", dict(LINUX, ttl=29), "unix:Exact:one", "exact", 35),
    ("TTL above the signature's: fuzzy", dict(LINUX, ttl=65), "unix:Exact:one", "fuzzy", 63),
    ("df and id+ missing: fuzzy", dict(LINUX, ttl=60, df=False), "unix:Exact:one", "fuzzy", 4),
    ("id- appears: fuzzy", dict(LINUX, ttl=60, df=False, ip_id=0), "unix:Exact:one", "fuzzy", 4),
    ("ecn appears: fuzzy", dict(LINUX, ttl=60, flags=SYN | ECE | CWR), "unix:Exact:one", "fuzzy", 4),
    ("ecn from IP: fuzzy", dict(LINUX, ttl=60, tos=1), "unix:Exact:one", "fuzzy", 4),
    ("id+ missing alone: fuzzy", dict(LINUX, ttl=60, ip_id=0), "unix:Exact:one", "fuzzy", 4),
    ("seq- appears: no match", dict(LINUX, ttl=60, seq=0), None, None, None),
    ("fuzzy generic is still fuzzy", dict(LINUX, ttl=60, df=False, options=linux_layout(1460, 5, 1)),
     GENERIC, "fuzzy", 4),
    ("* signature on IPv6 ignores df, id+",
     dict(LINUX, version=6, ttl=60, window=1440 * 20, options=linux_layout(1440, 7, 1)),
     "unix:Exact:one", "exact", 4),
    ("* signature on IPv6 with a flow label: no match",
     dict(LINUX, version=6, ttl=60, flow=5, window=1440 * 20, options=linux_layout(1440, 7, 1)),
     None, None, None),
    ("%8192, and a specific beats an earlier generic", WIN, "win:Modulo:8192", "exact", 8),
    ("%8192 not divisible", dict(WIN, window=16385), "win:AnyWin:", "generic", 8),
    ("4: signature on IPv6: version not compared, df/id+ missing: the first fuzzy one, generic or not",
     dict(WIN, version=6), "win:AnyWin:", "fuzzy", 8),
    ("mtu*4", MTU, "win:MtuMultiple:", "exact", 8),
    ("mss*4 is not mtu*4", dict(MTU, window=1360 * 4), None, None, None),
    ("fixed MSS and window", dict(ttl=250, df=False, ip_id=9, window=4128, options=mss(536)),
     "other:FixedMss:", "exact", 5),
    ("other MSS", dict(ttl=250, df=False, ip_id=9, window=4128, options=mss(537)), None, None, None),
    ("random TTL tool", TOOL, "!:Scanner:random ttl", "exact", 24),
    ("random TTL tool, any TTL below", dict(TOOL, ttl=3), "!:Scanner:random ttl", "exact", 61),
    ("random TTL tool, TTL above: no match", dict(TOOL, ttl=65), None, None, None),
    ("no fuzzy match for a tool", dict(TOOL, ip_id=0), None, None, None),
    ("p0f tests bit 24 of the ack number", dict(TOOL, ack=1), None, None, None),
    ("payload class +", PAYLOAD, "other:Payload:", "exact", 0),
    ("payload class + without payload", dict(PAYLOAD, payload=b""), None, None, None),
    ("eol padding must be equal", dict(PAYLOAD, options=mss(1460) + NOP + EOL * 7), None, None, None),
    ("IPv6 flow", FLOW, "other:Flow:", "exact", 0),
    ("IPv6 flow missing", dict(FLOW, flow=0), None, None, None),
    ("a * signature's flow is ignored on IPv4", dict(FLOW, version=4, df=False, ip_id=5), "other:Flow:", "exact", 0),
    ("IPv4 options length", IPOPT, "other:IpOptions:", "exact", 0),
    ("IPv4 options length differs", dict(IPOPT, ip_options=b""), None, None, None),
    ("unknown layout", dict(ttl=64, window=8192, options=pad4(mss(1460) + NOP)), None, None, None),
]


@pytest.fixture(scope="module")
def databases() -> Databases:
    return Databases([parse_database(DB_TEXT, "hand.fp")])


@pytest.mark.parametrize("case, syn, label, kind, distance", MATCHES, ids=[m[0] for m in MATCHES])
def test_a_syn_matches_as_p0f_would(databases, case, syn, label, kind, distance):
    fp = parse_syn(build_syn(**syn).raw)
    for _ in range(2):  # the second answer comes from the memo
        found = match(fp, databases)
        if label is None:
            assert found is None, found
            continue
        assert found is not None
        assert (found.label, found.kind, found.distance) == (label, kind, distance)
        assert (found.path, found.line) == ("hand.fp", LINE[found.name])
        assert found.sig == DB_TEXT.splitlines()[found.line - 1].split("= ", 1)[1]


def test_files_are_searched_as_if_concatenated(tmp_path):
    first = tmp_path / "first.fp"
    first.write_text("classes = unix\n[tcp:request]\nlabel = g:unix:Old:generic\nsig = *:64:0:*:*,*:mss::0\n")
    second = tmp_path / "second.fp"
    second.write_text("classes = unix\n[tcp:request]\n"
                      "label = s:unix:New:specific\nsig = *:64:0:1400:*,*:mss::0\n")
    databases = load_databases([first, second])
    assert len(databases) == 2

    def on(mss_value: int):
        return match(parse_syn(build_syn(ttl=60, df=False, ip_id=1, options=mss(mss_value)).raw), databases)

    assert (on(1400).label, on(1400).kind, on(1400).path) == ("unix:New:specific", "exact", str(second))
    assert (on(1300).label, on(1300).kind, on(1300).path) == ("unix:Old:generic", "generic", str(first))


def test_an_empty_database_matches_nothing():
    assert match(parse_syn(build_syn(options=mss(1460)).raw), Databases([])) is None


# --------------------------------------------------------------------------- p0f's own database

def p0f_request_sigs() -> list[tuple[int, str]]:
    lines, inside = [], False
    for number, line in enumerate(Path(DEFAULT_DATABASE).read_text().splitlines(), 1):
        line = line.strip()
        if line.startswith("["):
            inside = line == "[tcp:request]"
        elif inside and line.startswith("sig"):
            lines.append((number, line.split("=", 1)[1].strip()))
    return lines


def test_debians_p0f_database_loads_whole_and_by_default():
    need(os.path.exists(DEFAULT_DATABASE), f"needs p0f's database {DEFAULT_DATABASE}")
    databases = load_databases()
    assert [f.path for f in databases.files] == [DEFAULT_DATABASE]
    assert [(s.line, s.text) for s in databases.signatures] == p0f_request_sigs()
    assert databases.files[0].classes == ("win", "unix", "other")
    # a Linux 3.11+ SYN, 3 hops away
    fp = parse_syn(build_syn(ttl=61, ip_id=7, window=1460 * 20, options=linux_layout(1460, 7, 1)).raw)
    found = match(fp, databases)
    assert (found.label, found.kind, found.distance) == ("unix:Linux:3.11 and newer", "exact", 3)
