"""Properties of parse_syn over inputs nobody wrote by hand.

Whatever bytes arrive (random, cut short, followed by junk, corrupted),
parse_syn returns a Fingerprint or raises one of our errors (a TcpfpError,
whose offset points into the input), never an IndexError, struct.error or
ValueError.  A well-formed SYN cut anywhere is Truncated, and bytes after
its TCP header never change its fields.  The inputs start from the golden
corpus in tests/fixtures/syn/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpfp_cli.errors import MalformedSyn, TcpfpError, Truncated
from tcpfp_cli.fields import BY_NAME, SYN_FIELDS, Observation, render
from tcpfp_cli.syn import Fingerprint, parse_syn

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "syn"
DOCS = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]
GOOD = [d for d in DOCS if "expected" in d]
BAD = [d for d in DOCS if "error" in d]
RAW = {d["name"]: bytes.fromhex(d["hex"]) for d in DOCS}
HEADER_FIELDS = [f for f in SYN_FIELDS if f.name != "FINGERPRINT_SAVED_SYN"]

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(data: bytes) -> Fingerprint | TcpfpError:
    """parse_syn's answer; any exception other than ours propagates and fails the test."""
    try:
        fp = parse_syn(data)
    except MalformedSyn as err:
        assert 0 <= err.offset <= len(data), f"offset {err.offset} outside {len(data)} bytes"
        return err
    assert isinstance(fp, Fingerprint)
    assert fp.saved_syn == data
    # every field of the table renders, whatever the SYN held
    for f in SYN_FIELDS:
        assert isinstance(render(f, Observation(fingerprint=fp, saved_syn=data)), str)
    return fp


def header_fields(data: bytes) -> dict[str, str]:
    fp = parse_syn(data)
    obs = Observation(fingerprint=fp, saved_syn=data)
    return {f.name: render(f, obs) for f in HEADER_FIELDS}


def test_corpus_has_both_kinds() -> None:
    assert len(GOOD) >= 60 and len(BAD) >= 25


# (1) random bytes ----------------------------------------------------------


@FAST
@given(st.binary(max_size=120))
def test_random_bytes(data: bytes) -> None:
    outcome(data)


#: Protocol (IPv4) or next-header (IPv6) values: TCP, the extension headers we walk
#: (hop-by-hop, routing, fragment, AH, destination options), "no next header", any.
NEXT_HEADERS = st.one_of(st.just(6), st.sampled_from((0, 43, 44, 51, 59, 60)), st.integers(0, 255))


@FAST
@given(st.sampled_from([b"\x45", b"\x46", b"\x4f", b"\x60"]),
       st.one_of(st.binary(max_size=120), st.binary(min_size=39, max_size=120)),
       NEXT_HEADERS, NEXT_HEADERS, NEXT_HEADERS)
def test_random_bytes_after_an_ip_version_byte(first: bytes, rest: bytes, proto: int, second: int,
                                              third: int) -> None:
    """Random headers long enough to be read, whose protocol or next-header values lead on
    to TCP or to extension headers often (random bytes alone stop at 'truncated IP
    header' or 'not TCP' nearly every time)."""
    data = bytearray(first + rest)
    # IPv4: the protocol byte.  IPv6: the next header; then, should that be an extension
    # header, its own next header, a length byte making it 8 bytes long, and the next
    # header of a second extension header right after it.
    places = ((9, proto),) if first[0] >> 4 == 4 else ((6, proto), (40, second), (41, 0), (48, third))
    for at, value in places:
        if at < len(data):
            data[at] = value
    outcome(bytes(data))


@FAST
@given(st.sampled_from(GOOD), st.binary(max_size=80))
def test_random_tcp_part_after_a_real_ip_header(doc: dict, rest: bytes) -> None:
    """Keep a fixture's IP header (and IPv6 extension headers), randomize from TCP on."""
    raw = RAW[doc["name"]]
    ip_length = int(doc["expected"]["FINGERPRINT_IP_OLEN"]) + (
        20 if raw[0] >> 4 == 4 else 40
    )
    outcome(raw[:ip_length] + rest)


# (2) every truncation -------------------------------------------------------


@pytest.mark.parametrize("doc", GOOD, ids=lambda d: d["name"])
def test_every_prefix_of_a_syn_is_truncated(doc: dict) -> None:
    raw = RAW[doc["name"]]
    for n in range(len(raw)):
        result = outcome(raw[:n])
        assert isinstance(result, Truncated), f"prefix of {n} bytes gave {result!r}"
    assert isinstance(outcome(raw), Fingerprint)


@pytest.mark.parametrize("doc", BAD, ids=lambda d: d["name"])
def test_every_prefix_of_a_malformed_packet_is_our_error(doc: dict) -> None:
    raw = RAW[doc["name"]]
    for n in range(len(raw) + 1):
        assert isinstance(outcome(raw[:n]), MalformedSyn)


# (3) trailing bytes ---------------------------------------------------------


@pytest.mark.parametrize("doc", GOOD, ids=lambda d: d["name"])
def test_bytes_after_the_tcp_header_are_ignored(doc: dict) -> None:
    raw = RAW[doc["name"]]
    want = header_fields(raw)
    for tail in (b"\x00", b"\xff" * 3, b"\x01" * 40, bytes(range(256))):
        assert header_fields(raw + tail) == want


@FAST
@given(st.sampled_from(GOOD), st.binary(min_size=1, max_size=100))
def test_random_trailing_garbage_is_ignored(doc: dict, tail: bytes) -> None:
    raw = RAW[doc["name"]]
    got = header_fields(raw + tail)
    assert {k: got[k] for k in doc["expected"]} == doc["expected"]


# (4) corrupted bytes --------------------------------------------------------


@FAST
@given(
    st.sampled_from(DOCS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=6),
)
def test_flipped_bytes(doc: dict, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(RAW[doc["name"]])
    if not raw:
        return
    for position, mask in flips:
        raw[position % len(raw)] ^= mask
    outcome(bytes(raw))


@pytest.mark.parametrize("doc", GOOD, ids=lambda d: d["name"])
def test_every_single_byte_set_to_extremes(doc: dict) -> None:
    """Each byte of each SYN set to 0x00, 0x01, 0x7f, 0x80 and 0xff in turn."""
    raw = RAW[doc["name"]]
    for i in range(len(raw)):
        for value in (0x00, 0x01, 0x7F, 0x80, 0xFF):
            outcome(raw[:i] + bytes([value]) + raw[i + 1 :])


def test_field_table_names_the_header_fields() -> None:
    assert "FINGERPRINT_P0F" in {f.name for f in HEADER_FIELDS}
    assert BY_NAME["FINGERPRINT_SAVED_SYN"] not in HEADER_FIELDS
