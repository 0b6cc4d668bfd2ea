"""The field table is the single description of every FINGERPRINT_* field.

These tests keep docs/fields.md and the table in step, and pin the rendering
rules every consumer relies on: `-` for a value that does not exist, empty
text for an empty list, and hex dumps that are whole and lowercase.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tcpfp_cli.errors import UnknownField
from tcpfp_cli.fields import BY_NAME, FIELDS, Observation, environment, lookup, render
from tcpfp_cli.hextext import parse_hex
from tcpfp_cli.syn import parse_syn
from tcpfp_cli.tcpinfo import parse_tcp_info

DOC = Path(__file__).resolve().parent.parent / "docs" / "fields.md"
# IPv4, TTL 50, no DF, id 0, window 5808, options MSS 1452, SOK, TS, NOP, WS 1.
MOZI = (
    "4500003c00000000320600000a0000010a000002"
    "c35000500000000100000000a00216b000000000"
    "020405ac0402080a000000070000000001030301"
)


def test_every_field_is_documented_and_every_documented_field_exists():
    documented = set(re.findall(r"\| (FINGERPRINT_[A-Z_0-9]+) \|", DOC.read_text()))
    assert documented == {f.name for f in FIELDS}


def test_names_are_unique_and_meanings_one_line():
    assert len(BY_NAME) == len(FIELDS)
    for field in FIELDS:
        assert field.meaning and "\n" not in field.meaning
        assert field.kind in {"int", "text", "hex"}


def test_missing_values_render_as_dash_and_empty_lists_as_empty_text():
    raw = parse_hex("60000000001406402001" "0db8000000000000000000000002" "20010db8000000000000000000000001"
                    "c35000500000000100000000500220000000" "0000")
    obs = Observation(fingerprint=parse_syn(raw), saved_syn=raw)
    assert render(BY_NAME["FINGERPRINT_IP_DF"], obs) == "-"
    assert render(BY_NAME["FINGERPRINT_TCP_MSS"], obs) == "-"
    assert render(BY_NAME["FINGERPRINT_TCP_OPTIONS"], obs) == ""
    assert render(BY_NAME["FINGERPRINT_QUIRKS"], obs) == ""
    assert render(BY_NAME["FINGERPRINT_TCP_RTT"], obs) == "-"


def test_connection_without_saved_syn_renders_every_syn_field_as_dash():
    obs = Observation(tcp_info=parse_tcp_info(bytes(104)))
    for field in FIELDS:
        expected = "0" if field.name == "FINGERPRINT_TCP_RTT" else ("0" * 208 if field.name == "FINGERPRINT_TCP_INFO" else "-")
        assert render(field, obs) == expected, field.name


def test_mozi_syn_renders_as_the_seed_logs_it():
    raw = parse_hex(MOZI)
    obs = Observation(fingerprint=parse_syn(raw), saved_syn=raw)
    seed_fields = ["FINGERPRINT_IP_TTL", "FINGERPRINT_TCP_WSIZE", "FINGERPRINT_TCP_WSCALE",
                   "FINGERPRINT_TCP_OPTIONS", "FINGERPRINT_TCP_MSS"]
    assert [render(BY_NAME[n], obs) for n in seed_fields] == ["50", "5808", "1", "2,4,8,1,3", "1452"]
    assert render(BY_NAME["FINGERPRINT_P0F"], obs) == "4:50+14:0:1452:mss*4,1:mss,sok,ts,nop,ws:id-:0"
    assert render(BY_NAME["FINGERPRINT_SAVED_SYN"], obs) == MOZI


def test_cgi_environment_has_scalars_and_dumps_only_when_asked():
    raw = parse_hex(MOZI)
    obs = Observation(fingerprint=parse_syn(raw), saved_syn=raw, tcp_info=parse_tcp_info(bytes(104)))
    plain = environment(obs)
    assert plain["FINGERPRINT_IP_TTL"] == "50"
    assert "FINGERPRINT_SAVED_SYN" not in plain and "FINGERPRINT_TCP_INFO" not in plain
    full = environment(obs, tcp_info=True, saved_syn=True)
    assert full["FINGERPRINT_SAVED_SYN"] == MOZI and full["FINGERPRINT_TCP_INFO"] == "00" * 104


@pytest.mark.parametrize("name", ["FINGERPRINT_IP_TTL", "ip_ttl", " IP_TTL "])
def test_lookup_accepts_short_and_lower_case_names(name):
    assert lookup(name) is BY_NAME["FINGERPRINT_IP_TTL"]


def test_lookup_rejects_unknown_names():
    with pytest.raises(UnknownField) as caught:
        lookup("FINGERPRINT_NOPE")
    assert caught.value.name == "FINGERPRINT_NOPE"
