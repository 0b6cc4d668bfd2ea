"""Build SYN packets with scapy for the oracle tests, and hypothesis strategies for them.

The oracle tests (p0f, scapy's dissection) need SYNs whose every header bit
the test chooses.  scapy builds the IP and TCP headers; the TCP option area is
always given as raw bytes (scapy's option field cannot carry malformed or
padded options), placed at the start of the TCP payload with ``dataofs`` set
to cover it.  Nothing here uses tcpfp: expected values never come from the
code under test.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

# TCP flag bits as they sit in the 9-bit flag field.
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, NS = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x100


# --- option bytes, written by hand from RFC 9293 / 7323 / 2018 -------------

def mss(value: int) -> bytes:
    return struct.pack("!BBH", 2, 4, value)


def ws(shift: int) -> bytes:
    return bytes((3, 3, shift))


SOK = bytes((4, 2))
NOP = b"\x01"
EOL = b"\x00"


def ts(val: int, ecr: int) -> bytes:
    return struct.pack("!BBII", 8, 10, val, ecr)


def opt(kind: int, body: bytes = b"") -> bytes:
    """Any option with a correct length byte."""
    return bytes((kind, 2 + len(body))) + body


def pad4(area: bytes, filler: bytes = EOL) -> bytes:
    """Pad an option area to a multiple of 4 bytes."""
    return area + filler * (-len(area) % 4)


# --- packets ----------------------------------------------------------------

class Syn(NamedTuple):
    """One built SYN: its bytes and where it claims to come from."""

    raw: bytes
    src: str
    sport: int
    options: bytes  # the TCP option area exactly as placed on the wire


def src_address(version: int, index: int) -> str:
    """A distinct documentation/benchmark source address per index."""
    if version == 4:
        return str(ipaddress.IPv4Address("198.18.0.0") + 1 + index)
    return str(ipaddress.IPv6Address("2001:db8::") + 1 + index)


def build_syn(
    *,
    index: int = 0,
    version: int = 4,
    ttl: int = 64,
    df: bool = True,
    ip_id: int = 0,
    tos: int = 0,
    reserved_bit: bool = False,
    flow: int = 0,
    ip_options: bytes = b"",
    window: int = 65535,
    seq: int = 1,
    ack: int = 0,
    flags: int = SYN,
    reserved: int = 0,
    urgptr: int = 0,
    options: bytes = b"",
    payload: bytes = b"",
    sport: int | None = None,
) -> Syn:
    """Build one SYN.  ``options`` must already be a multiple of 4 bytes long."""
    assert len(options) % 4 == 0 and len(options) <= 40, options.hex()
    assert len(ip_options) % 4 == 0 and len(ip_options) <= 40
    src = src_address(version, index)
    sport = 1024 + index if sport is None else sport
    tcp = TCP(
        sport=sport, dport=80, seq=seq, ack=ack, dataofs=5 + len(options) // 4,
        reserved=reserved, flags=flags, window=window, urgptr=urgptr,
    )
    body = options + payload
    if version == 4:
        ip_flags = (2 if df else 0) | (4 if reserved_bit else 0)
        ip_pkt = IP(src=src, dst="198.19.0.1", ttl=ttl, tos=tos, id=ip_id, flags=ip_flags)
    else:
        ip_pkt = IPv6(src=src, dst="2001:db8:ffff::1", hlim=ttl, tc=tos, fl=flow)
    pkt = ip_pkt / tcp / Raw(body) if body else ip_pkt / tcp
    raw = bytes(pkt)
    if ip_options:
        # scapy re-encodes the options it is given; splice raw ones in instead.
        raw = _with_ipv4_options(raw, ip_options)
    return Syn(raw, src, sport, options)


def _with_ipv4_options(raw: bytes, ip_options: bytes) -> bytes:
    """Insert IPv4 options after a 20-byte header; fix IHL, total length, checksum."""
    b = bytearray(raw[:20] + ip_options + raw[20:])
    b[0] = 0x40 | (5 + len(ip_options) // 4)
    b[2:4] = struct.pack("!H", len(b))
    b[10:12] = b"\0\0"
    ihl = (b[0] & 15) * 4
    total = sum(struct.unpack(f"!{ihl // 2}H", bytes(b[:ihl])))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    b[10:12] = struct.pack("!H", ~total & 0xFFFF)
    return bytes(b)


# --- hypothesis strategies for well-formed SYNs ------------------------------

#: Kinds a well-formed SYN may carry that neither we nor p0f name (each with a
#: legal length): SACK is excluded (its length must be 10..34 for p0f),
#: as are EOL/NOP/MSS/WS/SOK/TS, which have their own strategies.  TCP-AO
#: (29) is left out: its body has its own structure (RFC 5925), which scapy
#: parses and fails on for short bodies, so it would test scapy, not us.
UNKNOWN_KINDS = (6, 7, 9, 14, 15, 19, 27, 28, 30, 34, 69, 76, 172, 253, 254)

option_item = st.one_of(
    st.integers(0, 65535).map(mss),
    st.just(NOP),
    st.integers(0, 14).map(ws),
    st.integers(15, 255).map(ws),
    st.just(SOK),
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)).map(lambda v: ts(*v)),
    st.tuples(st.sampled_from(UNKNOWN_KINDS), st.binary(min_size=0, max_size=6)).map(
        lambda kb: opt(*kb)
    ),
)


@st.composite
def option_areas(draw: st.DrawFn, max_items: int = 10) -> bytes:
    """A well-formed option area: known-length options, then EOL padding or NOPs."""
    items = draw(st.lists(option_item, max_size=max_items))
    area = b""
    for item in items:
        if len(area) + len(item) > 40:
            break
        area += item
    end = draw(st.sampled_from(("eol", "nop", "explicit-eol", "eol-then-junk")))
    if end == "explicit-eol" and len(area) < 40:
        area += EOL
    if end == "eol-then-junk" and len(area) < 40:
        # Bytes after EOL are not options (RFC 9293), whatever their value.
        room = min(40 - len(area) - 1, 3 + -(len(area) + 1) % 4)
        area += EOL + draw(st.binary(min_size=room, max_size=room))
    return pad4(area, NOP if end == "nop" else EOL)


#: Layouts real stacks send, as templates (mss, ws, ts values filled in).
def linux_layout(m: int, s: int, v: int) -> bytes:
    return mss(m) + SOK + ts(v, 0) + NOP + ws(s)


def windows_layout(m: int, s: int, v: int) -> bytes:
    return mss(m) + NOP + ws(s) + NOP + NOP + SOK


def macos_layout(m: int, s: int, v: int) -> bytes:
    return mss(m) + NOP + ws(s) + NOP + NOP + ts(v, 0) + SOK + EOL + EOL


def freebsd_layout(m: int, s: int, v: int) -> bytes:
    return mss(m) + NOP + ws(s) + SOK + ts(v, 0)


LAYOUTS = (linux_layout, windows_layout, macos_layout, freebsd_layout)


@st.composite
def realistic_areas(draw: st.DrawFn) -> bytes:
    """An OS-like option area, or a permutation of the usual options."""
    m = draw(st.sampled_from((0, 99, 100, 536, 1220, 1360, 1400, 1406, 1440, 1452, 1460, 8960, 65495)))
    s = draw(st.integers(0, 16))
    v = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        return pad4(draw(st.sampled_from(LAYOUTS))(m, s, v))
    parts = draw(st.permutations([mss(m), ws(s), SOK, ts(v, draw(st.sampled_from((0, 1, 2**31)))), NOP]))
    keep = draw(st.integers(0, len(parts)))
    return pad4(b"".join(parts[:keep]), draw(st.sampled_from((EOL, NOP))))


@st.composite
def windows_for(draw: st.DrawFn, area: bytes) -> int:
    """A window that is often an exact multiple of something p0f looks for."""
    m = first_mss(area) or 1460
    base = draw(st.sampled_from((m, m - 12, 1460, 1448, 1440, 1428, m + 40, m + 60, 1500, 1)))
    if base <= 0:
        base = 1
    n = draw(st.integers(0, max(0, 65535 // base)))
    return draw(st.one_of(st.just(base * n), st.integers(0, 65535)))


def first_mss(area: bytes) -> int | None:
    """The MSS value of a well-formed option area built here, if any."""
    i = 0
    while i < len(area):
        kind = area[i]
        if kind == 0:
            return None
        if kind == 1:
            i += 1
            continue
        if kind == 2:
            return area[i + 2] << 8 | area[i + 3]
        i += area[i + 1]
    return None


# p0f reports SYNs only: no ACK, FIN or RST.  Any of the others may ride along.
p0f_flags = st.sets(st.sampled_from((PSH, URG, ECE, CWR, NS))).map(lambda s: SYN | sum(s))
# Our parser reads any segment with SYN set.
any_syn_flags = st.sets(st.sampled_from((FIN, RST, PSH, ACK, URG, ECE, CWR, NS))).map(
    lambda s: SYN | sum(s)
)


class SynSpec(NamedTuple):
    """The free header values of one random SYN (addresses are assigned later)."""

    version: int
    ttl: int
    df: bool
    ip_id: int
    tos: int
    flow: int
    window: int
    seq: int
    ack: int
    flags: int
    urgptr: int
    options: bytes

    def build(self, index: int) -> Syn:
        return build_syn(
            index=index, version=self.version, ttl=self.ttl, df=self.df, ip_id=self.ip_id,
            tos=self.tos, flow=self.flow, window=self.window, seq=self.seq, ack=self.ack,
            flags=self.flags, urgptr=self.urgptr, options=self.options,
        )


@st.composite
def syn_specs(draw: st.DrawFn, flags: st.SearchStrategy[int] = p0f_flags, realistic: bool = True) -> SynSpec:
    version = draw(st.sampled_from((4, 6)))
    areas = st.one_of(realistic_areas(), option_areas()) if realistic else option_areas()
    area = draw(areas)
    return SynSpec(
        version=version,
        ttl=draw(st.one_of(st.sampled_from((1, 32, 33, 64, 65, 128, 129, 255)), st.integers(0, 255))),
        df=draw(st.booleans()),
        ip_id=draw(st.one_of(st.just(0), st.integers(0, 65535))),
        tos=draw(st.one_of(st.integers(0, 3), st.integers(0, 255))),
        flow=draw(st.one_of(st.just(0), st.integers(0, 0xFFFFF))) if version == 6 else 0,
        window=draw(windows_for(area)),
        seq=draw(st.one_of(st.just(0), st.integers(0, 2**32 - 1))),
        ack=draw(st.one_of(st.just(0), st.just(1 << 24), st.integers(0, 2**32 - 1))),
        flags=draw(flags),
        urgptr=draw(st.one_of(st.just(0), st.integers(0, 65535))),
        options=area,
    )
