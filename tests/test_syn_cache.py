"""The shape cache of ``parse_syn`` never changes an answer.

``parse_syn`` serves common SYNs from a cache keyed on the bytes that decide
everything but TTL, IP ID, flow label, ports, addresses, sequence number,
checksums and timestamp values.  These tests replay the fixture corpus with
those varying bytes (and, separately, any byte at all) changed, after the
original has filled the cache, and require the result to equal
``parse_syn_uncached`` exactly: the same Fingerprint, or the same error
(class, message, offset).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpfp_cli.errors import TcpfpError
from tcpfp_cli.syn import parse_syn, parse_syn_uncached

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "syn").glob("*.json"))
CASES = [json.loads(p.read_text()) for p in FIXTURES]
PACKETS = [bytes.fromhex(case["hex"]) for case in CASES]
#: Every well-formed SYN (the cache serves IPv4 and IPv6 without extension headers;
#: the others must come out of the full parse the same either way).
GOOD = [bytes.fromhex(c["hex"]) for c in CASES if "expected" in c]


def outcome(parse, data: bytes):
    try:
        return parse(data)
    except TcpfpError as error:
        return (type(error), str(error), getattr(error, "offset", None))


def check(data: bytes) -> None:
    assert outcome(parse_syn, data) == outcome(parse_syn_uncached, data)


def varying_offsets(packet: bytes) -> list[int]:
    """Byte offsets of the fields that vary per connection (the ones the cache masks)."""
    if packet[0] >> 4 == 4:
        tcp = (packet[0] & 15) * 4
        offsets = [4, 5, 8, 10, 11, *range(12, 20)]
    else:
        tcp = 40
        offsets = [1, 2, 3, 7, *range(8, 40)]
    offsets += [tcp + i for i in (0, 1, 2, 3, 4, 5, 6, 7, 16, 17)]
    ts = packet.find(b"\x08\x0a", tcp + 20)
    if ts >= 0:
        offsets += range(ts + 2, min(ts + 10, len(packet)))
    return [o for o in offsets if o < len(packet)]


def test_every_fixture_twice_is_the_same_as_uncached():
    for packet in PACKETS:
        check(packet)
        check(packet)  # the second time comes from the cache


def test_timestamps_ttl_id_seq_zero_and_nonzero_after_the_cache_is_warm():
    for packet in GOOD:
        parse_syn(packet)
        for offset in varying_offsets(packet):
            for value in (0, 1, 0x80, 0xFF):
                mutated = bytearray(packet)
                mutated[offset] = value
                check(bytes(mutated))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(GOOD), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.booleans())
def test_any_mutation_after_a_warm_cache(packet, edits, only_varying):
    parse_syn(packet)
    mutated = bytearray(packet)
    offsets = varying_offsets(packet) if only_varying else range(len(packet))
    for index, value in edits:
        mutated[offsets[index % len(offsets)]] = value
    check(bytes(mutated))


def test_every_single_byte_change_after_the_cache_is_warm():
    """Whatever byte of a cached SYN changes (not only the varying ones), the answer is
    that of the full parse: the key holds every byte that decides the fingerprint."""
    for packet in GOOD:
        parse_syn(packet)
        for offset in range(len(packet)):
            for value in (0, 1, 0xFF):
                if packet[offset] != value:
                    mutated = bytearray(packet)
                    mutated[offset] = value
                    check(bytes(mutated))


def _v4(options: bytes, urgent: int = 0) -> bytes:
    tcp_length = 20 + len(options)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_length, 1, 0x4000, 64, 6, 0,
                     bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
    return ip + struct.pack("!HHIIHHHH", 40000, 80, 1, 0, (tcp_length // 4) << 12 | 0x002, 65535, 0,
                            urgent) + options


def _v6(options: bytes, urgent: int = 0) -> bytes:
    tcp_length = 20 + len(options)
    ip = struct.pack("!IHBB16s16s", 6 << 28 | 1, tcp_length, 6, 64,
                     bytes.fromhex("20010db8000000000000000000000001"), bytes.fromhex("20010db8000000000000000000000002"))
    return ip + struct.pack("!HHIIHHHH", 40000, 80, 1, 0, (tcp_length // 4) << 12 | 0x002, 65535, 0,
                            urgent) + options


@pytest.mark.parametrize("build", [_v4, _v6], ids=["ipv4", "ipv6"])
def test_urgent_pointer_is_part_of_the_shape(build):
    """uptr+ comes from the urgent pointer of a SYN without URG: a cached shape with a
    zero pointer must not answer for a non-zero one (found missing for IPv6)."""
    options = bytes.fromhex("020405a001030307")
    check(build(options, urgent=0))
    check(build(options, urgent=5))
    assert "uptr+" in parse_syn(build(options, urgent=5)).quirks


@pytest.mark.parametrize("build", [_v4, _v6], ids=["ipv4", "ipv6"])
def test_options_p0f_reads_differently_are_never_served_from_the_cache(build):
    """MSS with length 2 and then a timestamp: our walk honours the length, p0f's walk
    takes MSS as 4 bytes and reads the timestamp value as option kinds, so FINGERPRINT_P0F
    depends on the TSval bytes the cache key leaves out."""
    for tsval in ("01010101", "03030501", "00000000"):
        check(build(bytes.fromhex("0202080a" + tsval + "00000001" + "01010000")))


@pytest.mark.parametrize("build", [_v4, _v6], ids=["ipv4", "ipv6"])
def test_two_timestamp_options_are_never_served_from_the_cache(build):
    """Two timestamp options of length 11 (no 08 0a pair for the key to mask): the values
    the parse reads must come from each packet, not from the first one cached."""
    for first in ("00000007", "00000005"):
        area = "080b" + first + "00000009" + "00" + "080b0000000500000000" + "000000"
        packet = build(bytes.fromhex(area))
        check(packet)
        check(packet)
