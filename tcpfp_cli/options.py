"""TCP options of a SYN: their kinds, and two ways of walking them.

Why two walks.  ``walk_options`` reads the option area the way the wire
format defines it (RFC 9293 section 3.2): every option but EOL and NOP carries
its own length, and that length is honoured.  It gives the option-kinds text
of FINGERPRINT_TCP_OPTIONS and the values of MSS, window scale and
timestamps, exactly as ``docs/fields.md`` defines them.

p0f 3.09b walks differently: it assumes the RFC length of the options it
knows (4 for MSS, 3 for window scale, 10 for timestamps), stops after 24
options, and gives up on a SACK block outside 10..34 bytes.  For a
well-formed option area both walks agree, so ``p0f_walk`` only runs when
``walk_options`` saw something odd; it exists so that FINGERPRINT_P0F stays
byte-for-byte equal to p0f's own ``raw_sig`` for malformed options too.

Both walks are bounded by the option area and never read past it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class TcpOption(IntEnum):
    """Option kinds that fingerprints name (IANA "TCP Option Kind Numbers")."""

    EOL = 0  # End of Option List, RFC 9293
    NOP = 1  # No-Operation, RFC 9293
    MSS = 2  # Maximum Segment Size, RFC 9293
    WINDOW_SCALE = 3  # RFC 7323
    SACK_PERMITTED = 4  # RFC 2018
    SACK = 5  # RFC 2018
    TIMESTAMPS = 8  # RFC 7323
    FAST_OPEN = 34  # TCP Fast Open cookie, RFC 7413


#: The length each known option must have; any other length is the ``bad`` quirk.
REQUIRED_LENGTH = {
    TcpOption.MSS: 4,
    TcpOption.WINDOW_SCALE: 3,
    TcpOption.SACK_PERMITTED: 2,
    TcpOption.TIMESTAMPS: 10,
}

#: p0f's names for option kinds in a raw signature's olayout.
P0F_OPTION_NAMES = {1: "nop", 2: "mss", 3: "ws", 4: "sok", 5: "sack", 8: "ts"}

#: p0f keeps at most this many options (MAX_TCP_OPT in p0f's config.h).
P0F_MAX_OPTIONS = 24


class OptionWalk(NamedTuple):
    """What an option area says.  ``None`` means the option is absent."""

    kinds: tuple[int, ...]  # wire order; EOL and every byte after it as 0
    mss: int | None
    window_scale: int | None
    ts_val: int | None
    ts_ecr: int | None
    eol_pad: int  # bytes after EOL (p0f's eol+N)
    eol_nonzero: bool  # a non-zero byte after EOL (quirk opt+)
    bad: bool  # a malformed option (quirk bad)
    p0f_agrees: bool  # p0f's walk would read the same layout and values
    ts_at: int  # offset of the one timestamp option; -1 none, -2 more than one
    ts1_zero: bool  # some timestamp option has TSval 0 (quirk ts1-)
    ts2_nonzero: bool  # some timestamp option has TSecr != 0 (quirk ts2+ on a SYN)
    exws: bool  # some window-scale option is over 14 (quirk exws)


def walk_options(area: bytes) -> OptionWalk:
    """Walk an option area honouring each option's length byte."""
    kinds: list[int] = []
    mss = window_scale = ts_val = ts_ecr = None
    eol_pad = 0
    eol_nonzero = bad = False
    p0f_agrees = True
    ts_at = -1
    ts1_zero = ts2_nonzero = exws = False
    end = len(area)
    i = 0
    while i < end:
        kind = area[i]
        if kind == 1:
            kinds.append(1)
            i += 1
            continue
        if kind == 0:
            eol_pad = end - i - 1
            kinds.append(0)
            kinds.extend([0] * eol_pad)
            rest = area[i + 1 :]
            eol_nonzero = any(rest)
            if eol_nonzero and not any(rest[:-1]):
                p0f_agrees = False  # p0f misses a non-zero byte that is the last one
            break
        kinds.append(kind)
        if i + 1 >= end:
            bad = True  # no room for the length byte
            break
        length = area[i + 1]
        if length < 2 or i + length > end:
            bad = True  # a length that cannot be, or that runs past the header
            break
        if kind == 2:
            if length != 4:
                bad = True
            if length >= 4:
                mss = (area[i + 2] << 8) | area[i + 3]
        elif kind == 8:
            if length != 10:
                bad = True
            ts_at = i if ts_at == -1 else -2
            if length >= 10:
                ts_val = int.from_bytes(area[i + 2 : i + 6], "big")
                ts_ecr = int.from_bytes(area[i + 6 : i + 10], "big")
                ts1_zero |= not ts_val
                ts2_nonzero |= bool(ts_ecr)
        elif kind == 3:
            if length != 3:
                bad = True
            if length >= 3:
                window_scale = area[i + 2]
                exws |= window_scale > 14
        elif kind == 4:
            if length != 2:
                bad = True
        elif kind == 5 and not 10 <= length <= 34:
            p0f_agrees = False
        i += length
    if bad or len(kinds) - eol_pad > P0F_MAX_OPTIONS:
        p0f_agrees = False
    return OptionWalk(
        tuple(kinds), mss, window_scale, ts_val, ts_ecr, eol_pad, eol_nonzero, bad, p0f_agrees,
        ts_at, ts1_zero, ts2_nonzero, exws,
    )


def kinds_text(kinds: tuple[int, ...]) -> str:
    """The FINGERPRINT_TCP_OPTIONS text: kinds in decimal, comma-separated."""
    return ",".join(map(str, kinds))


class P0fWalk(NamedTuple):
    """The option area as p0f 3.09b reads it (process.c, parse_packet)."""

    layout: tuple[int, ...]  # at most 24 kinds; EOL appears once, at the end
    mss: int  # 0 when absent
    window_scale: int  # 0 when absent
    ts_val: int  # 0 when absent; the last timestamp option's
    ts1_zero: bool  # some timestamp option has TSval 0
    ts2_nonzero: bool  # some timestamp option has TSecr != 0
    exws: bool  # some window-scale option is over 14
    eol_pad: int
    eol_nonzero: bool
    bad: bool


def p0f_walk(area: bytes) -> P0fWalk:
    """Walk an option area as p0f does: fixed lengths for known kinds."""
    layout: list[int] = []
    mss = window_scale = ts_val = 0
    ts1_zero = ts2_nonzero = exws = eol_nonzero = False
    eol_pad = 0
    end = len(area)
    i = 0
    bad = False
    aborted = False
    while i < end and len(layout) < P0F_MAX_OPTIONS:
        kind = area[i]
        layout.append(kind)
        i += 1  # i now points at the length byte, as p0f's `data`
        if kind == 0:
            eol_pad = end - i
            # p0f stops at the first non-zero padding byte and flags opt+
            # only if that byte is not the last one of the area.
            rest = area[i:].lstrip(b"\0")
            eol_nonzero = len(rest) > 1
            i = end
        elif kind == 1:
            pass
        elif kind == 2:
            if i >= end or area[i] != 4:
                bad = True
            if i + 3 > end:
                aborted = True
                break
            mss = (area[i + 1] << 8) | area[i + 2]
            i += 3
        elif kind == 3:
            if i >= end or area[i] != 3:
                bad = True
            if i + 2 > end:
                aborted = True
                break
            window_scale = area[i + 1]
            exws |= window_scale > 14
            i += 2
        elif kind == 4:
            if i >= end or area[i] != 2:
                bad = True
            if i + 1 > end:
                aborted = True
                break
            i += 1
        elif kind == 8:
            if i >= end or area[i] != 10:
                bad = True
            if i + 9 > end:
                aborted = True
                break
            ts_val = int.from_bytes(area[i + 1 : i + 5], "big")
            ts1_zero |= not ts_val
            ts2_nonzero |= area[i + 5 : i + 9] != b"\0\0\0\0"
            i += 9
        else:
            # SACK (10..34 bytes) and unknown kinds (2..40) carry their length.
            if i >= end:
                aborted = True
                break
            length = area[i]
            low, high = (10, 34) if kind == 5 else (2, 40)
            if not low <= length <= high or i - 1 + length > end:
                aborted = True
                break
            i += length - 1
    if aborted or i != end:
        bad = True
    return P0fWalk(
        tuple(layout), mss, window_scale, ts_val, ts1_zero, ts2_nonzero, exws, eol_pad,
        eol_nonzero, bad,
    )


def p0f_layout_text(layout: tuple[int, ...], eol_pad: int) -> str:
    """p0f's olayout: ``mss,nop,ws``; EOL as ``eol+N``; unknown kind K as ``?K``."""
    parts = []
    for kind in layout:
        if kind == 0:
            parts.append(f"eol+{eol_pad}")
        else:
            parts.append(P0F_OPTION_NAMES.get(kind) or f"?{kind}")
    return ",".join(parts)
