"""A saved SYN's bytes -> ``Fingerprint``.  Pure: bytes in, an immutable record out.

Strategy.  ``TCP_SAVED_SYN`` hands over the SYN's network header (IPv4 with
its options, or IPv6 with its extension headers) and the TCP header with its
options, but no payload.  We read it front to back with precompiled
``struct``s, checking the length before every read, so any input either gives
a ``Fingerprint`` or raises one ``MalformedSyn`` naming what is wrong and at
which byte.  What a sensor sees most (IPv4, no IP options, a handful of TCP
options) takes the shortest path, because ``serve`` and ``report`` call this
for every connection.

The IP length fields are trusted only to say whether the SYN carried data
(TCP Fast Open): the saved bytes stop at the TCP header, so a length beyond
them is normal, not truncation.

``Fingerprint`` is a ``NamedTuple``: immutable and typed like a frozen
dataclass, but built in a fraction of the time (0.3 us against 2.2 us for 22
fields on the benchmark machine), which the decode benchmark needs.

References: RFC 791 (IPv4), RFC 8200 (IPv6 and its extension headers),
RFC 4302 (AH), RFC 9293 (TCP), RFC 3168 (ECN), RFC 7323 (window scale,
timestamps), ``docs/fields.md`` (the meaning of every field).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from . import signature as sig
from .errors import BadHeaderLength, MalformedSyn, NotSyn, NotTcp, Truncated, UnsupportedIpVersion
from .options import OptionWalk, P0fWalk, kinds_text, p0f_walk, walk_options

_IPV4 = struct.Struct("!BBHHHBB")  # ver/ihl, tos, total length, id, flags/fragment, ttl, protocol
_IPV6 = struct.Struct("!IHBB")  # ver/class/flow, payload length, next header, hop limit
_TCP = struct.Struct("!HHIIHHHH")  # ports, seq, ack, offset/flags, window, checksum, urgent

PROTO_TCP = 6
#: IPv6 extension headers we walk through: hop-by-hop, routing, fragment,
#: AH, destination options (RFC 8200 section 4, RFC 4302).
HOP_BY_HOP, ROUTING, FRAGMENT, AUTH, DEST_OPTS = 0, 43, 44, 51, 60
_EXTENSIONS = frozenset((HOP_BY_HOP, ROUTING, FRAGMENT, AUTH, DEST_OPTS))

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, NS = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x100
IP_DF, IP_MBZ = 0x4000, 0x8000


class Fingerprint(NamedTuple):
    """Everything a SYN says about the stack that sent it.  ``None`` = absent.

    The first fields vary from one connection to the next even for one
    device; the rest describe the stack (its "shape") and repeat.
    """

    saved_syn: bytes
    ttl: int  # IPv4 TTL or IPv6 hop limit
    ip_id: int | None  # None for IPv6
    flow_label: int | None  # None for IPv4
    ts_val: int | None
    ts_ecr: int | None
    ittl: int  # initial TTL guess: smallest of 32, 64, 128, 255 >= ttl
    hops: int  # ittl - ttl
    p0f: str  # the p0f v3 raw signature
    # --- the shape -----------------------------------------------------------
    ip_version: int
    df: int | None  # 1 if DF is set, else 0; None for IPv6
    ip_ecn: int  # 0..3
    ip_olen: int  # IPv4 option bytes, or IPv6 extension-header bytes before TCP
    window: int
    window_scale: int | None
    mss: int | None
    options: tuple[int, ...]  # option kinds in wire order, EOL padding as 0s
    options_text: str  # the same, as FINGERPRINT_TCP_OPTIONS text
    tcp_flags: int  # the 9 flag bits, NS included
    tcp_ecn: int  # ECE + 2 x CWR: 3 on an ECN-setup SYN
    has_payload: bool  # the IP length says the SYN carried data
    quirks: tuple[str, ...]
    quirks_text: str
    #: The log text of each shape field above (``-`` for None), shared by every
    #: SYN of this shape: rendering a shape field is then a lookup.
    shape_texts: tuple[str, ...]


_ITTL = tuple(sig.initial_ttl(t) for t in range(256))
#: "ver:ttl+dist:" for every version and TTL: the per-packet head of a p0f signature.
_P0F_HEAD = {
    v: tuple(f"{v}:{t}+{_ITTL[t] - t if _ITTL[t] - t <= sig.MAX_DISTANCE else '?'}:" for t in range(256))
    for v in (4, 6)
}
_P0F_HEAD4, _P0F_HEAD6 = _P0F_HEAD[4], _P0F_HEAD[6]
_HOPS = tuple(_ITTL[t] - t for t in range(256))
#: The Fingerprint members a TTL decides, and their texts for every TTL (for renderers).
TTL_MEMBERS = ("ttl", "ittl", "hops")
TTL_TEXTS = tuple((str(t), str(_ITTL[t]), str(_HOPS[t])) for t in range(256))
_N_VARYING = 9  # Fingerprint fields before the shape


def _option_quirks(walk: OptionWalk | P0fWalk, plain_syn: bool) -> int:
    """The quirks an option walk found.  A repeated option shows its quirk if any
    occurrence has it, as in p0f; ts2+ only counts on a plain SYN."""
    quirks = 0
    if walk.ts1_zero:
        quirks |= sig.TS1_ZERO
    if walk.ts2_nonzero and plain_syn:
        quirks |= sig.TS2_NZ
    if walk.eol_nonzero:
        quirks |= sig.OPT_EOL_NZ
    if walk.exws:
        quirks |= sig.EXWS
    if walk.bad:
        quirks |= sig.BAD
    return quirks


def _parse_slow(data: bytes) -> tuple[Fingerprint, int | None]:
    """Read any SYN front to back; also returns where its timestamp option starts (-1: none;
    None: the shape must not be cached)."""
    n = len(data)
    if n == 0:
        raise Truncated("IP header", 0, 1, 0)
    version = data[0] >> 4
    quirks = 0
    if version == 4:
        if n < 20:
            raise Truncated("IPv4 header", 0, 20, n)
        vihl, tos, total_length, ip_id, frag, ttl, proto = _IPV4.unpack_from(data)
        at = (vihl & 15) * 4
        if at < 20:
            raise BadHeaderLength("IPv4 IHL", vihl & 15, 0)
        if n < at:
            raise Truncated("IPv4 options", 20, at - 20, n - 20)
        if proto != PROTO_TCP:
            raise NotTcp(proto, 9)
        ip_olen = at - 20
        after_ip = total_length - at
        ip_ecn = tos & 3
        df = 1 if frag & IP_DF else 0
        flow_label = None
        if df:
            quirks = sig.DF | sig.ID_NZ if ip_id else sig.DF
        elif not ip_id:
            quirks = sig.ID_ZERO
        if frag & IP_MBZ:
            quirks |= sig.MBZ
    elif version == 6:
        if n < 40:
            raise Truncated("IPv6 header", 0, 40, n)
        word, payload_length, next_header, ttl = _IPV6.unpack_from(data)
        ip_ecn = word >> 20 & 3
        flow_label = word & 0xFFFFF
        df = ip_id = None
        if flow_label:
            quirks = sig.FLOW
        at = 40
        header_field = 6  # where the current "next header" value was read
        while next_header in _EXTENSIONS:
            if n - at < 8:
                raise Truncated("IPv6 extension header", at, 8, n - at)
            if next_header == FRAGMENT:
                offset = (data[at + 2] << 8 | data[at + 3]) >> 3
                if offset:
                    raise MalformedSyn(
                        f"IPv6 fragment at offset {offset * 8}: no TCP header in it", at + 2
                    )
                length = 8
            elif next_header == AUTH:
                length = (data[at + 1] + 2) * 4
            else:
                length = (data[at + 1] + 1) * 8
            if n - at < length:
                raise Truncated("IPv6 extension header", at, length, n - at)
            next_header = data[at]
            header_field = at
            at += length
        if next_header != PROTO_TCP:
            raise NotTcp(next_header, header_field)
        ip_olen = at - 40
        after_ip = payload_length - ip_olen
    else:
        raise UnsupportedIpVersion(version)

    if n - at < 20:
        raise Truncated("TCP header", at, 20, n - at)
    _sport, _dport, seq, ack, offset_flags, window, _csum, urgent = _TCP.unpack_from(data, at)
    flags = offset_flags & 0x1FF
    if not flags & SYN:
        raise NotSyn(flags, at + 12)
    tcp_length = (offset_flags >> 12) * 4
    if tcp_length < 20:
        raise BadHeaderLength("TCP data offset", offset_flags >> 12, at + 12)
    if n - at < tcp_length:
        raise Truncated("TCP options", at + 20, tcp_length - 20, n - at - 20)
    area = data[at + 20 : at + tcp_length]
    walk = walk_options(area)
    has_payload = after_ip > tcp_length

    if ip_ecn or flags & (ECE | CWR | NS):
        quirks |= sig.ECN
    if not seq:
        quirks |= sig.SEQ_ZERO
    if flags & ACK:
        if not ack:
            quirks |= sig.ACK_ZERO
    elif ack:
        quirks |= sig.ACK_NZ
    if flags & URG:
        quirks |= sig.URG
    elif urgent:
        quirks |= sig.UPTR_NZ
    if flags & PSH:
        quirks |= sig.PUSH
    plain_syn = flags & (SYN | ACK | FIN | RST) == SYN
    p0f_quirks = quirks
    quirks |= _option_quirks(walk, plain_syn)

    # p0f reads the 32-bit ack field without byte-swapping it and tests bit 0,
    # so on the little-endian machines it runs on, ack+ is bit 24 of the ack
    # number, and never on a RST (process.c).  Reproduced to match raw_sig.
    p0f_quirks &= ~sig.ACK_NZ
    if not flags & (ACK | RST) and ack >> 24 & 1:
        p0f_quirks |= sig.ACK_NZ
    if walk.p0f_agrees:
        p0f_quirks |= quirks & sig.OPTION_QUIRKS
        p0f_layout = walk.kinds[: len(walk.kinds) - walk.eol_pad]
        p0f_mss = walk.mss or 0
        p0f_scale = walk.window_scale or 0
        p0f_ts = walk.ts_val or 0
        eol_pad = walk.eol_pad
    else:
        pw = p0f_walk(area)
        p0f_quirks |= _option_quirks(pw, plain_syn)
        p0f_layout, p0f_mss, p0f_scale, p0f_ts, eol_pad = (
            pw.layout, pw.mss, pw.window_scale, pw.ts_val, pw.eol_pad,
        )
    p0f = sig.p0f_signature(
        version, ttl, ip_olen, p0f_mss, window, p0f_scale, p0f_layout, eol_pad,
        p0f_quirks, has_payload, p0f_ts, at + tcp_length,
    )
    names = sig.quirk_names(quirks)
    ittl = _ITTL[ttl]
    shape = (
        version, df, ip_ecn, ip_olen, window, walk.window_scale, walk.mss, walk.kinds,
        _kinds_text(walk.kinds), flags, flags >> 6 & 3, has_payload, names, _quirks_text(names),
    )
    shape_texts = tuple(["-" if v is None else str(v) for v in shape])
    fingerprint = Fingerprint(
        data, ttl, ip_id, flow_label, walk.ts_val, walk.ts_ecr, ittl, ittl - ttl, p0f,
        *shape, shape_texts,
    )
    # Where the one timestamp option starts (-1: none).  None says "do not cache this
    # shape": more than one timestamp option, or a timestamp option (whose values the
    # cache key leaves out) in options that p0f's walk reads in another way, so that
    # FINGERPRINT_P0F may depend on those values.
    if walk.ts_at == -2 or (not walk.p0f_agrees and walk.ts_at >= 0):
        return fingerprint, None
    return fingerprint, -1 if walk.ts_at < 0 else at + 20 + walk.ts_at


# --------------------------------------------------------------------------- the fast path
#
# Most SYNs a sensor sees come from a few stacks: the same header and option
# layout, differing only in TTL, IP ID, flow label, ports, addresses, sequence
# number, checksums and timestamp values.  Everything else a Fingerprint holds
# is a pure function of the remaining bytes (plus whether IP ID, sequence
# number, TSval and TSecr are zero, which quirks depend on).  So for the common
# forms (IPv4, with or without options; IPv6 without extension headers) we key a cache
# on exactly those bytes and flags, and rebuild only the varying fields per
# packet.  A shape is cached only when the timestamp option we masked is the
# one the full parse found, so a cached shape always equals a full parse;
# tests/test_syn_cache.py checks that against ``parse_syn_uncached``.

_shapes: dict[object, tuple[tuple, int, str]] = {}
_SHAPES_LIMIT = 1 << 16
_kinds_cache: dict[tuple[int, ...], str] = {}
_quirks_cache: dict[tuple[str, ...], str] = {}
_NO_TS = b"\0"
_TS_KIND = b"\x08\x0a"


def _kinds_text(kinds: tuple[int, ...]) -> str:
    text = _kinds_cache.get(kinds)
    if text is None:
        if len(_kinds_cache) >= _SHAPES_LIMIT:
            _kinds_cache.clear()
        text = _kinds_cache[kinds] = kinds_text(kinds)
    return text


def _quirks_text(names: tuple[str, ...]) -> str:
    text = _quirks_cache.get(names)
    if text is None:
        text = _quirks_cache[names] = ",".join(names)
    return text


#: IPv4 (no options) + TCP fixed headers: ver/ihl, TOS, total length, ID,
#: flags/fragment, TTL, protocol, [checksum, addresses, ports], seq, ack,
#: offset/flags, window, [checksum], urgent pointer.
_COMMON_V4 = struct.Struct("!BBHHHBB10x4xIIHH2xH")
_TS_VALUES = struct.Struct("!II")
_TCP_AFTER_PORTS = struct.Struct("!IIHH2xH")  # seq, ack, offset/flags, window, [checksum], urgent


def _other_key(data: bytes) -> tuple[object, int, int, int | None, int | None, int | None] | None:
    """(key, timestamp offset, TTL, IP ID or flow label, TSval, TSecr) of the less
    common forms: IPv4 with IP options (their bytes join the key), and IPv6
    without extension headers.  None for any other SYN: the full parse handles
    it.  Keys of the three forms never collide: their tuples differ in length.
    """
    n = len(data)
    first = data[0]
    if first >> 4 == 4:
        ihl = (first & 15) * 4
        if ihl < 24 or n < ihl + 20:
            return None
        _, tos, total, ip_id, frag, ttl, proto = _IPV4.unpack_from(data)
        seq, ack, offset_flags, window, urgent = _TCP_AFTER_PORTS.unpack_from(data, ihl + 4)
        end = ihl + (offset_flags >> 12) * 4
        if proto != PROTO_TCP or end < ihl + 20 or n < end:
            return None
        header = (first, tos, total, frag, ack, offset_flags, window, urgent, not ip_id, not seq,
                  data[20:ihl])
        return _key_rest(data, header, ihl + 20, end, ttl, ip_id)
    if first >> 4 == 6:
        if n < 60 or data[6] != PROTO_TCP:
            return None
        end = 40 + (data[52] >> 4) * 4
        if end < 60 or n < end:
            return None
        flow = (data[1] & 15) << 16 | data[2] << 8 | data[3]
        # Traffic class, payload length, ack, offset/flags, window, urgent pointer.
        header = (first, data[1] & 0xF0, data[4:6], data[48:56], data[58:60], not flow,
                  data[44:48] == b"\0\0\0\0")
        return _key_rest(data, header, 60, end, data[7], flow)
    return None


def _key_rest(
    data: bytes, header: tuple, options_at: int, end: int, ttl: int, ident: int
) -> tuple[object, int, int, int | None, int | None, int | None] | None:
    """``_other_key``'s answer for the less common forms, from the header part of the
    key: the TCP option bytes with the timestamp values left out, and the varying values."""
    ts = data.find(_TS_KIND, options_at, end)
    if ts < 0:
        return header + (data[options_at:end],), ts, ttl, ident, None, None
    if ts + 10 > end:
        return None
    ts_val, ts_ecr = _TS_VALUES.unpack_from(data, ts + 2)
    return (header + (data[options_at:ts], data[ts + 10 : end], ts, not ts_val, not ts_ecr),
            ts, ttl, ident, ts_val, ts_ecr)


def parse_syn(data: bytes | bytearray | memoryview) -> Fingerprint:
    """Read a SYN (IPv4 or IPv6 header, TCP header, options).  Raises ``MalformedSyn``."""
    if type(data) is not bytes:
        data = bytes(data)
    n = len(data)
    if n >= 40 and data[0] == 0x45:
        # IPv4 without IP options, the most common form by far: its key is
        # computed here, without a helper call.  It holds every header value
        # that decides the fingerprint: all but TTL, IP ID, ports, addresses,
        # sequence number, checksums and timestamp values, and whether IP ID,
        # seq, TSval and TSecr are zero.
        vihl, tos, total, ip_id, frag, ttl, proto, seq, ack, offset_flags, window, urgent = (
            _COMMON_V4.unpack_from(data))
        end = 20 + (offset_flags >> 12) * 4
        if proto != PROTO_TCP or end < 40 or n < end:
            return _parse_slow(data)[0]
        ts = data.find(_TS_KIND, 40, end)
        if ts < 0:
            ts_val = ts_ecr = None
            key: tuple = (tos, total, frag, ack, offset_flags, window, urgent, not ip_id, not seq,
                          data[40:end])
        elif ts + 10 <= end:
            ts_val, ts_ecr = _TS_VALUES.unpack_from(data, ts + 2)
            key = (tos, total, frag, ack, offset_flags, window, urgent, not ip_id, not seq,
                   data[40:ts], data[ts + 10 : end], ts, not ts_val, not ts_ecr)
        else:
            return _parse_slow(data)[0]
        shape = _shapes.get(key)
        if shape is not None:
            return tuple.__new__(Fingerprint, (
                data, ttl, ip_id, None, ts_val, ts_ecr, _ITTL[ttl], _HOPS[ttl],
                _P0F_HEAD4[ttl] + shape[2]) + shape[0])
        return _parse_and_remember(data, key, ts)
    if not n:
        raise Truncated("IP header", 0, 1, 0)
    found = _other_key(data)
    if found is None:
        return _parse_slow(data)[0]
    key, ts, ttl, ident, ts_val, ts_ecr = found
    shape = _shapes.get(key)
    if shape is None:
        return _parse_and_remember(data, key, ts)
    rest, version, tail = shape
    if version == 4:
        return tuple.__new__(Fingerprint, (
            data, ttl, ident, None, ts_val, ts_ecr, _ITTL[ttl], _HOPS[ttl],
            _P0F_HEAD4[ttl] + tail) + rest)
    return tuple.__new__(Fingerprint, (
        data, ttl, None, ident, ts_val, ts_ecr, _ITTL[ttl], _HOPS[ttl],
        _P0F_HEAD6[ttl] + tail) + rest)


def _parse_and_remember(data: bytes, key: object, ts: int) -> Fingerprint:
    """The full parse of a common-form SYN whose shape is not cached yet; caches it
    when the timestamp option the key left out is the one the full parse found."""
    fingerprint, ts_at = _parse_slow(data)
    if ts_at is not None and ts_at == ts:
        if len(_shapes) >= _SHAPES_LIMIT:
            _shapes.clear()
        tail = fingerprint.p0f.split(":", 2)[2]
        _shapes[key] = (fingerprint[_N_VARYING:], fingerprint.ip_version, tail)
    return fingerprint


def parse_syn_uncached(data: bytes | bytearray | memoryview) -> Fingerprint:
    """``parse_syn`` without the shape cache: the reference the cache is tested against."""
    data = bytes(data)
    if not data:
        raise Truncated("IP header", 0, 1, 0)
    return _parse_slow(data)[0]
