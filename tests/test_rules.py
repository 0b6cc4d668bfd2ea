"""The `--deny` rule language: what a rules file may say, and what each rule matches.

`tcpfp serve --deny RULES` refuses clients by their fingerprint, so a rule
must mean exactly what docs/blocking.md says: numbers compared as numbers,
text as text, globs on the logged text, `-` for a missing value, `and`
binding tighter than `or`, the first matching rule winning.  A bad rule must
be caught when the file is read, with its file and line, never when a
client arrives.  Observations are built from the fixture SYNs
(tests/fixtures/syn/*.json), and the expected outcomes follow from the
fields each fixture's written definition gives (Mozi: TTL 50, window 28800,
wscale 4, MSS 1406, options 2,4,8,1,3; Windows: TTL 117, wscale 8, MSS 1460,
options 2,1,3,1,1,4, no timestamps; macOS: TTL 58, window 65535, wscale 6,
options 2,1,3,1,1,8,4,0,0).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tcpfp_cli.errors import TcpfpError
from tcpfp_cli.fields import BY_NAME, Observation, render
from tcpfp_cli.rules import RuleError, load_rules, parse_rule, parse_rules
from tcpfp_cli.sigdb import Match
from tcpfp_cli.syn import parse_syn
from tcpfp_cli.tcpinfo import TcpInfo

FIXTURES = Path(__file__).parent / "fixtures" / "syn"


def _observation(name: str, **extra) -> Observation:
    raw = bytes.fromhex(json.loads((FIXTURES / f"{name}.json").read_text())["hex"])
    return Observation(fingerprint=parse_syn(raw), saved_syn=raw, **extra)


MOZI = _observation("seed_mozi_1")
WINDOWS = _observation("windows_64240")
MACOS = _observation("macos")
IPV6 = _observation("ipv6_plain")  # no DF, no IP ID
NOTHING = Observation()  # a connection without a saved SYN (SYN cookies)


def _matches(condition: str, obs: Observation) -> bool:
    rule = parse_rule(f"{condition} -> 403")
    assert rule is not None
    return rule.test(obs)


# --------------------------------------------------------------------------- evaluation

#: condition -> does it hold for (Mozi, Windows, macOS)?
EVALUATION = [
    # the example
    ("FINGERPRINT_TCP_OPTIONS = 2,4,8,1,3 and FINGERPRINT_ITTL = 64 and FINGERPRINT_TCP_WSCALE <= 5",
     (True, False, False)),
    # every operator on a number
    ("FINGERPRINT_IP_TTL = 50", (True, False, False)),
    ("FINGERPRINT_IP_TTL != 50", (False, True, True)),
    ("FINGERPRINT_IP_TTL < 58", (True, False, False)),
    ("FINGERPRINT_IP_TTL <= 58", (True, False, True)),
    ("FINGERPRINT_IP_TTL > 58", (False, True, False)),
    ("FINGERPRINT_IP_TTL >= 58", (False, True, True)),
    # numbers compare as numbers: as text, "28800" > "9000" would be false
    ("FINGERPRINT_TCP_WSIZE > 9000", (True, True, True)),
    ("FINGERPRINT_TCP_WSCALE < 10", (True, True, True)),
    # text compares as text
    ("FINGERPRINT_TCP_OPTIONS = 2,1,3,1,1,4", (False, True, False)),
    ("FINGERPRINT_TCP_OPTIONS != 2,1,3,1,1,4", (True, False, True)),
    ("FINGERPRINT_TCP_OPTIONS < 2,2", (False, True, True)),
    ("FINGERPRINT_QUIRKS = df,id+", (True, True, True)),
    ('FINGERPRINT_P0F = "4:50+14:0:1406:28800,4:mss,sok,ts,nop,ws:df,id+:0"', (True, False, False)),
    # globs: the whole text, case-sensitive, * ? and [..]
    ("FINGERPRINT_TCP_OPTIONS ~ 2,1,3,*", (False, True, True)),
    ('FINGERPRINT_TCP_OPTIONS ~ "*,0"', (False, False, True)),
    ("FINGERPRINT_TCP_OPTIONS ~ 2,1,3", (False, False, False)),
    ("FINGERPRINT_TCP_MSS ~ 14?6", (True, False, False)),
    ('FINGERPRINT_IP_TTL ~ "5[0-8]"', (True, False, True)),
    ('FINGERPRINT_QUIRKS ~ "df*"', (True, True, True)),
    ('FINGERPRINT_QUIRKS ~ "DF*"', (False, False, False)),
    # missing values (Windows sends no timestamps)
    ("FINGERPRINT_TCP_TS = -", (False, True, False)),
    ("FINGERPRINT_TCP_TS != -", (True, False, True)),
    ('FINGERPRINT_TCP_TS = "-"', (False, True, False)),
    ("FINGERPRINT_TCP_TS < 4000000000", (True, False, True)),
    ("FINGERPRINT_TCP_TS >= 0", (True, False, True)),
    ("FINGERPRINT_TCP_TS != 5", (True, True, True)),
    ("FINGERPRINT_TCP_TS = 5", (False, False, False)),
    ('FINGERPRINT_TCP_TS ~ "*"', (True, False, True)),
    # and binds tighter than or
    ("FINGERPRINT_IP_TTL = 50 or FINGERPRINT_IP_TTL = 58 and FINGERPRINT_TCP_WSCALE = 8", (True, False, False)),
    ("FINGERPRINT_IP_TTL = 58 and FINGERPRINT_TCP_WSCALE = 8 or FINGERPRINT_IP_TTL = 50", (True, False, False)),
    ("(FINGERPRINT_IP_TTL = 50 or FINGERPRINT_IP_TTL = 58) and FINGERPRINT_TCP_WSCALE = 6", (False, False, True)),
    ("FINGERPRINT_IP_TTL = 1 or FINGERPRINT_IP_TTL = 2 or FINGERPRINT_TCP_WSCALE = 6", (False, False, True)),
    ("((FINGERPRINT_IP_TTL = 117))", (False, True, False)),
    # names: short and any case; spaces optional around operators; keywords any case
    ("ip_ttl=50", (True, False, False)),
    ("Tcp_Mss = 1460 AND ittl = 128", (False, True, False)),
    ("TCP_WSCALE=4 Or TCP_WSCALE=6", (True, False, True)),
]


@pytest.mark.parametrize(("condition", "expected"), EVALUATION, ids=[c for c, _ in EVALUATION])
def test_conditions_on_real_syns(condition, expected):
    assert tuple(_matches(condition, obs) for obs in (MOZI, WINDOWS, MACOS)) == expected


def test_an_arrow_right_after_a_value_ends_it():
    rule = parse_rule("IP_TTL = 50-> close")
    assert rule.action == "close" and rule.test(MOZI) and not rule.test(WINDOWS)


@pytest.mark.parametrize(("condition", "holds"), [
    ("FINGERPRINT_IP_DF = -", True),
    ("FINGERPRINT_IP_DF != -", False),
    ("FINGERPRINT_IP_DF = 1", False),
    ("FINGERPRINT_IP_DF != 1", True),
    ("FINGERPRINT_IP_DF < 1", False),
    ("FINGERPRINT_IP_DF > 0", False),
    ("FINGERPRINT_IP_ID <= 65535", False),
    ("FINGERPRINT_IP_DF ~ *", False),
    ("FINGERPRINT_QUIRKS = \"\"", True),  # an empty list is empty text, not missing
    ("FINGERPRINT_QUIRKS = -", False),
    ("FINGERPRINT_IP_VERSION = 6 and FINGERPRINT_IP_DF = -", True),
])
def test_ipv4_only_fields_of_an_ipv6_syn_are_missing(condition, holds):
    assert render(BY_NAME["FINGERPRINT_IP_DF"], IPV6) == "-"  # the premise
    assert _matches(condition, IPV6) is holds


@pytest.mark.parametrize(("condition", "holds"), [
    ("IP_TTL = -", True),
    ("IP_TTL < 1000", False),
    ("IP_TTL > -1", False),
    ("IP_TTL != 64", True),
    ("TCP_OPTIONS ~ *", False),
    ("OS = -", True),
    ("TCP_RTT = -", True),
])
def test_a_connection_without_a_saved_syn_has_every_field_missing(condition, holds):
    assert _matches(condition, NOTHING) is holds


def test_os_label_globs():
    embedded = MOZI._replace(os=Match("unix:Linux:2.6.x (embedded)", "fuzzy", None, 14))
    assert _matches('FINGERPRINT_OS ~ "*embedded*"', embedded)
    assert _matches('FINGERPRINT_OS ~ "unix:Linux:*" and FINGERPRINT_OS_MATCH = fuzzy', embedded)
    assert not _matches('FINGERPRINT_OS ~ "*Embedded*"', embedded)
    assert not _matches('FINGERPRINT_OS ~ "*embedded*"', MOZI._replace(os=None))
    assert _matches("FINGERPRINT_OS = -", MOZI._replace(os=None))


def _tcp_info(rcv_mss: int, rtt: int) -> TcpInfo:
    """A 104-byte struct tcp_info (linux/tcp.h): tcpi_rcv_mss at byte 20, tcpi_rtt at 68."""
    raw = bytearray(104)
    struct.pack_into("=I", raw, 20, rcv_mss)
    struct.pack_into("=I", raw, 68, rtt)
    return TcpInfo(bytes(raw))


def test_tcp_info_fields_at_accept_and_at_request():
    obs = MOZI._replace(tcp_info=_tcp_info(536, 250_000), tcp_info_now=_tcp_info(1406, 90_000))
    assert _matches("FINGERPRINT_TCP_RTT > 200000", obs)
    assert _matches("FINGERPRINT_REQ_RTT < 100000 and FINGERPRINT_REQ_RCV_MSS = 1406", obs)
    assert not _matches("FINGERPRINT_REQ_RTT < 100000", MOZI)  # not known: missing


# --------------------------------------------------------------------------- files and rule sets

RULES = """\
# Blocking rules for the sensor.

FINGERPRINT_IP_TTL = 117 and FINGERPRINT_TCP_TS = - -> 403   # Windows, no timestamps
FINGERPRINT_TCP_OPTIONS = 2,4,8,1,3 and FINGERPRINT_TCP_MSS = 1406 -> close
FINGERPRINT_IP_TTL = 50 -> 403
    # an indented comment
FINGERPRINT_REQ_RCV_MSS > 1000 -> 403
FINGERPRINT_IP_TTL < 60 -> close
"""


def test_a_rules_file_keeps_order_line_numbers_and_actions():
    rules = parse_rules(RULES, "deny.rules")
    assert [(r.line, r.action, r.request_time) for r in rules.rules] == [
        (3, "403", False), (4, "close", False), (5, "403", False), (7, "403", True), (8, "close", False)]
    assert rules.rules[0].condition == "FINGERPRINT_IP_TTL = 117 and FINGERPRINT_TCP_TS = -"
    assert rules.request_time


def test_the_first_matching_rule_wins_and_is_tagged_line_colon_action():
    rules = parse_rules(RULES, "deny.rules")
    # Mozi matches lines 4, 5 and 8; line 4 comes first.
    assert rules.at_accept(MOZI).tag == "4:close"
    assert rules.at_accept(WINDOWS).tag == "3:403"
    # macOS (TTL 58) and FreeBSD (TTL 57) match only line 8.
    assert rules.at_accept(MACOS).tag == "8:close"
    assert rules.at_accept(_observation("freebsd")).tag == "8:close"
    # a Linux desktop 9 hops away (TTL 55, MSS 1460) too; with TTL 64 it matches nothing
    assert rules.first(_observation("linux_desktop")).tag == "8:close"
    assert rules.first(IPV6) is None


def test_request_time_rules_wait_for_the_request():
    rules = parse_rules(RULES, "deny.rules")
    linux = _observation("linux_desktop")  # TTL 55: only line 8 (close) at accept
    assert rules.at_accept(linux).tag == "8:close"
    plain = IPV6  # TTL 64, options 2,4,8,1,3 but MSS 1440: nothing at accept
    assert rules.at_accept(plain) is None
    assert rules.at_request(plain) is None  # the request's TCP_INFO is not known
    big = plain._replace(tcp_info_now=_tcp_info(1440, 1000))
    assert rules.at_request(big).tag == "7:403"
    assert rules.at_accept(big) is None  # at accept, line 7 is never tried
    # at request time only 403 rules are tried: close rules were decided at accept
    assert rules.at_request(MOZI).tag == "5:403"


def test_a_file_without_rules_blocks_nothing():
    rules = parse_rules("# nothing yet\n\n   \n", "empty.rules")
    assert len(rules) == 0 and rules.at_accept(MOZI) is None and not rules.request_time


@pytest.mark.parametrize(("line", "condition"), [
    ('FINGERPRINT_OS ~ "#1*" -> close', 'FINGERPRINT_OS ~ "#1*"'),  # '#' inside quotes
    ("FINGERPRINT_OS = a#b -> close", "FINGERPRINT_OS = a#b"),  # '#' inside a word
    ("FINGERPRINT_OS = x -> close # comment", "FINGERPRINT_OS = x"),
    ("FINGERPRINT_OS = x -> CLOSE", "FINGERPRINT_OS = x"),
    ("\tFINGERPRINT_OS = x\t->\tclose\t", "FINGERPRINT_OS = x"),
])
def test_comments_and_spacing(line, condition):
    rule = parse_rule(line)
    assert rule.condition == condition and rule.action == "close"


def test_quoted_values_may_hold_spaces_quotes_and_backslashes():
    labelled = MOZI._replace(os=Match('a "b" \\ c', "exact", None, 0))
    assert _matches(r'FINGERPRINT_OS = "a \"b\" \\ c"', labelled)
    assert _matches(r'FINGERPRINT_OS ~ "a \"*"', labelled)


def test_load_rules_reads_a_file(tmp_path):
    path = tmp_path / "deny.rules"
    path.write_text(RULES)
    assert load_rules(path).rules[1].tag == "4:close"


def test_a_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(TcpfpError, match=r"--deny .*nope\.rules: No such file"):
        load_rules(tmp_path / "nope.rules")


# --------------------------------------------------------------------------- bad rules

BAD = [
    ("FINGERPRINT_TTL = 64 -> close", "unknown field 'FINGERPRINT_TTL'"),
    ("64 = FINGERPRINT_IP_TTL -> close", "expected a field name at column 1"),
    ("FINGERPRINT_IP_TTL == 64 -> close", "bad operator '=='"),
    ("FINGERPRINT_IP_TTL => 64 -> close", "bad operator '=>'"),
    ("FINGERPRINT_IP_TTL 64 -> close", "bad operator '64'"),
    ("FINGERPRINT_IP_TTL", "missing operator"),
    ("FINGERPRINT_IP_TTL = sixty-four -> close", "bad number 'sixty-four' for FINGERPRINT_IP_TTL"),
    ("FINGERPRINT_IP_TTL > 6.5 -> close", "bad number '6.5'"),
    ('FINGERPRINT_IP_TTL = "64" -> 403', None),  # quoted numbers are fine: not an error
    ("FINGERPRINT_IP_TTL = 64", "missing action"),
    ("FINGERPRINT_IP_TTL = 64 # -> close", "missing action"),
    ("FINGERPRINT_IP_TTL = 64 ->", "missing action after '->'"),
    ("FINGERPRINT_IP_TTL = 64 -> drop", "unknown action 'drop'"),
    ("FINGERPRINT_IP_TTL = 64 -> 404", "unknown action '404'"),
    ("FINGERPRINT_IP_TTL = 64 -> close now", "unexpected text after the action"),
    ('FINGERPRINT_OS ~ "*embedded* -> close', "unbalanced quotes"),
    ('FINGERPRINT_OS ~ *embedded*" -> close', "unbalanced quotes"),
    ("(FINGERPRINT_IP_TTL = 64 -> close", "unbalanced '('"),
    ("FINGERPRINT_IP_TTL = 64) -> close", "unbalanced ')'"),
    ("FINGERPRINT_IP_TTL = -> close", "missing value after 'FINGERPRINT_IP_TTL ='"),
    ("FINGERPRINT_IP_TTL = 64 and -> close", "expected a field name"),
    ("FINGERPRINT_IP_TTL = 64 nand FINGERPRINT_IP_DF = 1 -> close", "expected 'and', 'or' or '->'"),
    ("FINGERPRINT_IP_TTL < - -> close", "'< -' compares with a missing value"),
    ("FINGERPRINT_REQ_RTT > 100000 -> close", "FINGERPRINT_REQ_RTT is only known once a request arrives"),
    ("IP_TTL = 50 and (REQ_MIN_RTT < 9 or IP_DF = 1) -> close", "FINGERPRINT_REQ_MIN_RTT is only known"),
    ("FINGERPRINT_DENY = - -> close", "FINGERPRINT_DENY cannot be used in a rule"),
    ("-> close", "expected a field name"),
]


@pytest.mark.parametrize(("line", "reason"), BAD, ids=[line for line, _ in BAD])
def test_a_bad_rule_is_an_error_naming_file_and_line(line, reason):
    text = "# rules\nFINGERPRINT_IP_TTL = 64 -> 403\n" + line + "\nFINGERPRINT_IP_TTL = 1 -> close\n"
    if reason is None:
        assert len(parse_rules(text, "deny.rules")) == 3
        return
    with pytest.raises(RuleError) as caught:
        parse_rules(text, "/etc/tcpfp/deny.rules")
    error = caught.value
    assert (error.source, error.line) == ("/etc/tcpfp/deny.rules", 3)
    assert str(error).startswith("/etc/tcpfp/deny.rules:3: ")
    assert reason in error.reason
    assert "\n" not in str(error)


def test_request_time_fields_are_allowed_in_403_rules():
    rule = parse_rule("FINGERPRINT_REQ_RTT > 100000 -> 403")
    assert rule.request_time and rule.action == "403"


# --------------------------------------------------------------------------- speed


def test_twenty_rules_that_match_nothing_answer_none_every_time():
    """Rules are closures built when the file is read, and their accept-time answer is
    remembered per tuple of the values they read; asked again, the answer is the same.
    (How fast this is, is measured by bench/serve's tcpfp-deny variant, not here.)"""
    lines = [f"TCP_WSIZE = {1000 + i} and IP_TTL = {i} and TCP_MSS < 536 -> 403" if i % 2 else
             f'OS ~ "*thing{i}*" or TCP_OPTIONS = 2,{i} -> close' for i in range(20)]
    rules = parse_rules("\n".join(lines))
    assert len(rules) == 20
    for obs in (MOZI, WINDOWS, MACOS, Observation()):
        for _ in range(3):
            assert rules.at_accept(obs) is None


def test_remembered_accept_answers_equal_evaluating_every_rule():
    """at_accept remembers its answer per tuple of the values the rules read; across
    the fixture SYNs, every TTL and the first and a later call, it must give what
    trying the rules in order gives."""
    rules = parse_rules(
        "FINGERPRINT_TCP_OPTIONS = 2,4,8,1,3 and FINGERPRINT_ITTL = 64 and FINGERPRINT_TCP_WSCALE <= 5 -> 403\n"
        "FINGERPRINT_IP_TTL > 200 or FINGERPRINT_TCP_WSIZE = 65535 -> close\n"
        # a rule on a value new on every connection sits between remembered runs
        "FINGERPRINT_IP_ID = 54321 or FINGERPRINT_IP_ID = 7 -> close\n"
        "FINGERPRINT_QUIRKS ~ \"*ecn*\" -> 403\n")
    names = [p.stem for p in sorted(FIXTURES.glob("*.json"))
             if "expected" in json.loads(p.read_text())]
    for name in names:
        base = bytes.fromhex(json.loads((FIXTURES / f"{name}.json").read_text())["hex"])
        ttl_at = 8 if base[0] >> 4 == 4 else 7
        for ttl, ip_id in ((1, 7), (50, 54321), (64, 1), (128, 7), (201, 2), (255, 54321)):
            raw = bytearray(base)
            raw[ttl_at] = ttl
            if base[0] >> 4 == 4:
                raw[4:6] = ip_id.to_bytes(2, "big")
            obs = Observation(fingerprint=parse_syn(bytes(raw)), saved_syn=bytes(raw))
            expected = next((r for r in rules.rules if not r.request_time and r.test(obs)), None)
            assert rules.at_accept(obs) is expected
            assert rules.at_accept(obs) is expected  # now from memory
    for obs in (Observation(), Observation(saved_syn=b"\x45")):  # no Fingerprint: every member is None
        expected = next((r for r in rules.rules if not r.request_time and r.test(obs)), None)
        assert rules.at_accept(obs) is expected
        assert rules.at_accept(obs) is expected


def test_a_byte_order_mark_is_no_part_of_the_first_line(tmp_path):
    """Windows editors save UTF-8 with a BOM: the file must still load, line 1 its first rule."""
    path = tmp_path / "bom.rules"
    path.write_bytes("\ufeff# my rules\nFINGERPRINT_IP_TTL = 50 -> close\n".encode())
    assert [rule.tag for rule in load_rules(path).rules] == ["2:close"]


@pytest.mark.parametrize("separator", ["\x0c", "\x0b", "\x1c", "\x85", "\u2028", "\u2029"])
def test_only_lf_cr_lf_and_cr_end_a_line(separator):
    """Other characters that ``str.splitlines`` breaks at must neither renumber the rules
    (FINGERPRINT_DENY names the line) nor end a comment and so turn its rest into a rule."""
    text = (f"# section one{separator}\n"
            f"# old: {separator}FINGERPRINT_IP_TTL = 50 -> close\n"
            "FINGERPRINT_IP_TTL = 50 -> 403\n")
    rules = parse_rules(text)
    assert [rule.tag for rule in rules.rules] == ["3:403"]
    assert rules.first(MOZI).tag == "3:403"
