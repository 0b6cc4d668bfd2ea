"""Every header field parse_syn reports equals scapy's own dissection of the same bytes.

scapy is an independent, widely used packet dissector, so for random
well-formed SYNs (IPv4 and IPv6, any TTL, TOS/traffic class, flow label, IP
ID, DF, window, sequence and ack numbers, flags with SYN set, and option lists
of MSS, NOP, window scale, SACK-permitted, timestamps, EOL and unknown kinds
with valid lengths) each field of our ``Fingerprint`` must equal the value
read from ``IP(raw)`` / ``IPv6(raw)``.  The definitions compared against are
those of ``docs/fields.md``; the only place they differ from scapy's view is
EOL, after which scapy stops and fields.md writes every remaining byte as 0.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, TCPOptions
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet

from synbuild import any_syn_flags, build_syn, option_areas, realistic_areas
from tcpfp_cli.syn import parse_syn


KIND_OF_NAME = TCPOptions[1]  # scapy's own table: option name -> kind


def scapy_option_size(name: str | int, value: object) -> int:
    """How many wire bytes one option that scapy dissected took."""
    if name in ("NOP", "EOL"):
        return 1
    if isinstance(value, (bytes, str)):
        return 2 + len(value)
    if isinstance(value, Packet):
        return 2 + len(bytes(value))
    fmt = TCPOptions[0][KIND_OF_NAME[name]][1]
    if name == "SAck":
        fmt += "%iI" % len(value)  # type: ignore[arg-type]
    return 2 + struct.calcsize(fmt)


def scapy_view(raw: bytes) -> dict:
    """The fields, as scapy reads them, in fields.md's terms."""
    if raw[0] >> 4 == 4:
        ip = IP(raw)
        view = dict(
            ip_version=ip.version, ttl=ip.ttl, df=bool(ip.flags.DF), ip_ecn=ip.tos & 3,
            ip_id=ip.id, ip_olen=(ip.ihl - 5) * 4, flow_label=None,
        )
    else:
        ip = IPv6(raw)
        view = dict(
            ip_version=ip.version, ttl=ip.hlim, df=None, ip_ecn=ip.tc & 3,
            ip_id=None, ip_olen=0, flow_label=ip.fl,
        )
    tcp = ip[TCP]
    kinds: list[int] = []
    mss = wscale = ts_val = ts_ecr = None
    used = 0
    for name, value in tcp.options:
        kinds.append(name if isinstance(name, int) else KIND_OF_NAME[name])
        used += scapy_option_size(name, value)
        if name == "MSS":
            mss = value
        elif name == "WScale":
            wscale = value
        elif name == "Timestamp":
            ts_val, ts_ecr = value
    area = (tcp.dataofs - 5) * 4
    if kinds and kinds[-1] == 0:
        kinds += [0] * (area - used)  # fields.md: each byte after EOL is written 0
    else:
        assert used == area, "a well-formed area is consumed exactly"
    flags = int(tcp.flags)
    view.update(
        window=tcp.window, window_scale=wscale, mss=mss, options=tuple(kinds),
        options_text=",".join(map(str, kinds)), ts_val=ts_val, ts_ecr=ts_ecr,
        tcp_flags=flags, tcp_ecn=int(tcp.flags.E) + 2 * int(tcp.flags.C),
        has_payload=len(bytes(tcp.payload)) > 0,
    )
    return view


@st.composite
def well_formed_syns(draw: st.DrawFn) -> tuple[bytes, int]:
    """(packet bytes, length of its payload)."""
    version = draw(st.sampled_from((4, 6)))
    payload = draw(st.one_of(st.just(b""), st.binary(min_size=1, max_size=24)))
    syn = build_syn(
        index=draw(st.integers(0, 60000)),
        version=version,
        ttl=draw(st.integers(0, 255)),
        df=draw(st.booleans()),
        ip_id=draw(st.integers(0, 65535)),
        tos=draw(st.integers(0, 255)),
        flow=draw(st.integers(0, 0xFFFFF)) if version == 6 else 0,
        ip_options=draw(st.sampled_from((b"", b"\x01\x01\x01\x00", bytes(8), b"\x01" * 40)))
        if version == 4 else b"",
        window=draw(st.integers(0, 65535)),
        seq=draw(st.integers(0, 2**32 - 1)),
        ack=draw(st.integers(0, 2**32 - 1)),
        flags=draw(any_syn_flags),
        urgptr=draw(st.integers(0, 65535)),
        options=draw(st.one_of(option_areas(), realistic_areas())),
        payload=payload,
    )
    return syn.raw, len(payload)


@settings(max_examples=200, deadline=None)
@given(well_formed_syns())
def test_every_field_equals_scapys_dissection(syn):
    raw, payload_length = syn
    ours = parse_syn(raw)
    expected = scapy_view(raw)
    got = {name: getattr(ours, name) for name in expected}
    assert got == expected, raw.hex()


@settings(max_examples=100, deadline=None)
@given(well_formed_syns())
def test_saved_form_without_payload_reads_the_same(syn):
    """TCP_SAVED_SYN stops at the TCP header: dropping the payload changes no field."""
    raw, payload_length = syn
    saved = raw[: len(raw) - payload_length]
    expected = scapy_view(raw)
    ours = parse_syn(saved)
    assert ours.saved_syn == saved
    assert {name: getattr(ours, name) for name in expected} == expected, raw.hex()


@settings(max_examples=100, deadline=None)
@given(well_formed_syns())
def test_derived_ttl_fields_follow_fields_md(syn):
    """ITTL is the smallest of 32, 64, 128, 255 at or above the TTL; HOPS the difference."""
    raw, _ = syn
    ours = parse_syn(raw)
    ttl = IP(raw).ttl if raw[0] >> 4 == 4 else IPv6(raw).hlim
    ittl = min(t for t in (32, 64, 128, 255) if t >= ttl)
    assert (ours.ittl, ours.hops) == (ittl, ittl - ttl)
