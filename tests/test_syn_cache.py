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
from pathlib import Path

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
