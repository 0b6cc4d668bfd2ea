"""``Renderer`` gives exactly the texts of ``render``, field by field.

``fields.render`` is the plain definition: read the field, ``-`` for a value
that does not exist, ``str`` otherwise.  ``Renderer`` is the batch form that
the log writer, ``decode --fields`` and the decode benchmark use; it takes
shortcuts (ready-made shape texts, a table of TTL, ITTL and hops texts, one
``itemgetter`` for the order).  These tests require both to agree for any
list of fields (any order, repeats allowed, members and non-members mixed)
on every fixture SYN, with and without TCP_INFO and the other connection
values, and when there is no Fingerprint at all.
"""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tcpfp_cli import fields as fields_module
from tcpfp_cli.errors import MalformedSyn
from tcpfp_cli.fields import FIELDS, Observation, Renderer, render
from tcpfp_cli.sigdb import Match
from tcpfp_cli.syn import parse_syn
from tcpfp_cli.tcpinfo import TCP_INFO_LAYOUT, TcpInfo, values_reader

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "syn").glob("*.json"))
GOOD = [bytes.fromhex(c["hex"]) for c in (json.loads(p.read_text()) for p in FIXTURES) if "expected" in c]
MEMBERS = [f for f in FIELDS if f.member is not None]

# A TCP_INFO of the oldest layout (104 bytes) with rtt 23456 us at offset 68.
INFO = TcpInfo(bytes(68) + (23456).to_bytes(4, "little") + bytes(32))


def observations(data: bytes) -> list[Observation]:
    fp = parse_syn(data)
    return [
        Observation(fp, data),
        Observation(fp, data, INFO, INFO, 1_700_000_000_123_456,
                    Match("s:unix:Linux:3.11 and newer", "exact", None, 1)),
        Observation(None, data),  # a SYN that could not be parsed: only its hex
        Observation(),
    ]


def expected(fields, obs: Observation) -> tuple[str, ...]:
    return tuple(render(f, obs) for f in fields)


def test_every_field_in_table_order_on_every_fixture():
    renderer = Renderer(FIELDS)
    for data in GOOD:
        for obs in observations(data):
            assert renderer.texts(obs) == expected(FIELDS, obs)


def test_member_fields_from_the_fingerprint_alone():
    renderer = Renderer(MEMBERS)
    for data in GOOD:
        fp = parse_syn(data)
        assert renderer.fingerprint_texts(fp) == expected(MEMBERS, Observation(fp, data))


def test_ttl_family_texts_follow_the_ttl():
    ttl, ittl, hops = (next(f for f in FIELDS if f.member == m) for m in ("ttl", "ittl", "hops"))
    renderer = Renderer([hops, ttl, ittl])
    for data in GOOD:
        fp = parse_syn(data)
        assert renderer.fingerprint_texts(fp) == (str(fp.ittl - fp.ttl), str(fp.ttl), str(fp.ittl))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FIELDS), max_size=40), st.sampled_from(GOOD), st.integers(0, 3))
def test_any_list_of_fields(fields, data, which):
    obs = observations(data)[which]
    assert Renderer(fields).texts(obs) == expected(fields, obs)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(MEMBERS), min_size=1, max_size=30), st.sampled_from(GOOD))
def test_any_list_of_member_fields(fields, data):
    fp = parse_syn(data)
    assert Renderer(fields).fingerprint_texts(fp) == expected(fields, Observation(fp, data))


def _one_byte_changes(data: bytes):
    for at in range(len(data)):
        for value in (data[at] ^ 0x01, data[at] ^ 0x80, 0, 0xFF):
            raw = bytearray(data)
            raw[at] = value
            yield bytes(raw)


def test_a_filler_writes_the_joined_texts_of_every_syn_one_byte_from_a_fixture():
    """One filler keeps a template per (shape, TTL) and fills in the rest.  Over every
    fixture and every one-byte change of each (new shapes, same shape with other IP IDs,
    timestamps, TTLs, flow labels; SYNs the shape cache does not keep), its text is the
    field texts joined, with literal '%' between them."""
    pieces = ["", " ", ' "', '" 100% ', " %s ", "%%", ""]
    chosen = [next(f for f in MEMBERS if f.member == m)
              for m in ("ttl", "ip_id", "options_text", "ts_val", "p0f", "hops")]
    renderer = Renderer(chosen)
    fill = renderer.filler(pieces)
    checked = 0
    for data in GOOD:
        for raw in (data, *_one_byte_changes(data)):
            try:
                fp = parse_syn(raw)
            except MalformedSyn:
                continue
            texts = expected(chosen, Observation(fp, raw))
            assert fill(fp) == pieces[0] + "".join(t + p for t, p in zip(texts, pieces[1:])), raw.hex()
            checked += 1
    assert checked > 10 * len(GOOD)


def test_a_filler_that_keeps_too_many_shapes_starts_again(monkeypatch):
    monkeypatch.setattr(fields_module, "SHAPES_KEPT", 2)
    chosen = [f for f in MEMBERS if f.member in ("ttl", "window", "ts_val")]
    fill = Renderer(chosen).filler(["<", ",", ",", ">"])
    for data in GOOD * 2:
        fp = parse_syn(data)
        assert fill(fp) == "<" + ",".join(expected(chosen, Observation(fp, data))) + ">"


def test_a_filler_needs_member_fields_and_one_piece_more():
    import pytest

    with pytest.raises(ValueError):
        Renderer([f for f in FIELDS if f.member is None][:1]).filler(["", ""])
    with pytest.raises(ValueError):
        Renderer(MEMBERS[:2]).filler(["", ""])


INFO_FIELDS = [f for f in FIELDS if f.source in ("tcp_info", "tcp_info_now") and f.scalar]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(INFO_FIELDS), min_size=1, max_size=12),
       st.binary(min_size=0, max_size=300), st.binary(min_size=0, max_size=300))
def test_fields_of_tcp_info_readings_of_any_length(fields, at_accept, now):
    """The fields read from TCP_INFO, alone or mixed, from readings of any length
    (a reading too short for some of them gives - for those)."""
    obs = Observation(None, None, TcpInfo(at_accept), TcpInfo(now), None)
    assert Renderer(fields).texts(obs) == expected(fields, obs)
    for source in ("tcp_info", "tcp_info_now"):
        same = [f for f in fields if f.source == source]
        if same:
            assert Renderer(same).texts(obs) == expected(same, obs)
    assert Renderer(fields).texts(Observation()) == expected(fields, Observation())


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([f.name for f in TCP_INFO_LAYOUT]), min_size=1, max_size=12),
       st.binary(min_size=0, max_size=300))
def test_values_reader_is_get_of_each_name(names, raw):
    """One unpack for several TCP_INFO fields (bitfields and repeats included) gives what
    ``TcpInfo.get`` gives for each, for a TCP_INFO of any length."""
    info = TcpInfo(raw)
    assert values_reader(names)(info) == tuple(info.get(n) for n in names)
