"""Derived fingerprint values: initial TTL, distance, quirks, p0f raw signature.

The p0f v3 raw signature (``ver:ittl+dist:olen:mss:wsize,scale:olayout:quirks:pclass``)
is what p0f 3.09b prints as ``raw_sig`` for every SYN.  This module writes it
from already-parsed header values, following p0f's own rules (fp_tcp.c,
``dump_sig`` and ``detect_win_multi``) so that a pcap run through ``p0f -r`` is
an oracle for FINGERPRINT_P0F; ``tests/test_p0f_oracle.py`` checks exactly that.

Quirks are a bit set internally (cheap to compute, cheap to compare) and
names in p0f's order outside.  Signatures repeat a lot (one OS, one layout,
many TTLs), so the text of a signature is memoised on its inputs.
"""

from __future__ import annotations

from .options import p0f_layout_text

#: Candidate initial TTLs, smallest first (p0f's guess_dist uses the same four).
INITIAL_TTLS = (32, 64, 128, 255)

#: p0f marks a distance above this as unknown (MAX_DIST in p0f's config.h).
MAX_DISTANCE = 35

# Quirk bits, in the order p0f prints them.
QUIRK_NAMES = (
    "df",  # DF set
    "id+",  # DF set and IP ID != 0
    "id-",  # DF clear and IP ID == 0
    "ecn",  # ECN bits in IP, or ECE/CWR/NS in TCP
    "0+",  # IPv4 reserved ("must be zero") bit set
    "flow",  # IPv6 flow label != 0
    "seq-",  # sequence number 0
    "ack+",  # ACK clear, ack number != 0
    "ack-",  # ACK set, ack number 0
    "uptr+",  # URG clear, urgent pointer != 0
    "urgf+",  # URG set
    "pushf+",  # PSH set
    "ts1-",  # TSval 0
    "ts2+",  # TSecr != 0 on a SYN
    "opt+",  # non-zero byte after EOL
    "exws",  # window scale > 14
    "bad",  # malformed option
)
Q = {name: 1 << bit for bit, name in enumerate(QUIRK_NAMES)}
DF, ID_NZ, ID_ZERO, ECN, MBZ, FLOW = Q["df"], Q["id+"], Q["id-"], Q["ecn"], Q["0+"], Q["flow"]
SEQ_ZERO, ACK_NZ, ACK_ZERO, UPTR_NZ, URG, PUSH = (
    Q["seq-"], Q["ack+"], Q["ack-"], Q["uptr+"], Q["urgf+"], Q["pushf+"],
)
TS1_ZERO, TS2_NZ, OPT_EOL_NZ, EXWS, BAD = Q["ts1-"], Q["ts2+"], Q["opt+"], Q["exws"], Q["bad"]
OPTION_QUIRKS = TS1_ZERO | TS2_NZ | OPT_EOL_NZ | EXWS | BAD

_names_cache: dict[int, tuple[str, ...]] = {}


def quirk_names(bits: int) -> tuple[str, ...]:
    """Quirk names of a bit set, in p0f's order."""
    names = _names_cache.get(bits)
    if names is None:
        names = tuple(n for b, n in enumerate(QUIRK_NAMES) if bits >> b & 1)
        _names_cache[bits] = names
    return names


def initial_ttl(ttl: int) -> int:
    """The smallest of 32, 64, 128, 255 that is >= the observed TTL."""
    if ttl <= 32:
        return 32
    if ttl <= 64:
        return 64
    if ttl <= 128:
        return 128
    return 255


def window_multiple(
    window: int, mss: int, ts_val: int, ip_version: int, header_length: int
) -> str | None:
    """p0f's ``mss*N`` / ``mtu*N`` form of the window, or None for plain decimal.

    The first divisor that divides the window exactly wins (fp_tcp.c,
    detect_win_multi): MSS, MSS-12 when timestamps are on, the MSS of a
    1500-byte MTU (1460, 1448; for IPv6 also 1440, 1428); then as an MTU:
    MSS+40, MSS plus the actual header length, MSS+60 for IPv6, and 1500.
    """
    if not window or mss < 100:
        return None
    candidates: list[tuple[int, str]] = [(mss, "mss")]
    if ts_val:
        candidates.append((mss - 12, "mss"))
    candidates += [(1460, "mss"), (1448, "mss")]
    if ip_version == 6:
        candidates += [(1440, "mss"), (1428, "mss")]
    candidates += [(mss + 40, "mtu"), (mss + header_length, "mtu")]
    if ip_version == 6:
        candidates.append((mss + 60, "mtu"))
    candidates.append((1500, "mtu"))
    for divisor, unit in candidates:
        if window % divisor == 0:
            return f"{unit}*{window // divisor}"
    return None


_sig_cache: dict[tuple, str] = {}
_SIG_CACHE_LIMIT = 1 << 16


def p0f_signature(
    ip_version: int,
    ttl: int,
    ip_olen: int,
    mss: int,
    window: int,
    window_scale: int,
    layout: tuple[int, ...],
    eol_pad: int,
    quirks: int,
    has_payload: bool,
    ts_val: int,
    header_length: int,
) -> str:
    """The raw signature text p0f 3.09b prints for a SYN with these values.

    Absent MSS and window scale are 0, as in p0f; ``olen`` is 0 for IPv6.
    """
    key = (ip_version, ttl, ip_olen, mss, window, window_scale, layout, eol_pad,
           quirks, has_payload, bool(ts_val), header_length)
    text = _sig_cache.get(key)
    if text is not None:
        return text
    distance = initial_ttl(ttl) - ttl
    dist = "?" if distance > MAX_DISTANCE else str(distance)
    wsize = window_multiple(window, mss, ts_val, ip_version, header_length) or str(window)
    olen = ip_olen if ip_version == 4 else 0
    text = (
        f"{ip_version}:{ttl}+{dist}:{olen}:{mss}:{wsize},{window_scale}:"
        f"{p0f_layout_text(layout, eol_pad)}:{','.join(quirk_names(quirks))}:"
        f"{'+' if has_payload else '0'}"
    )
    if len(_sig_cache) >= _SIG_CACHE_LIMIT:
        _sig_cache.clear()
    _sig_cache[key] = text
    return text
