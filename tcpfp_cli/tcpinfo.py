"""``struct tcp_info`` bytes -> ``TcpInfo``.  Pure.

The kernel's ``struct tcp_info`` only ever grows at its end, and
``getsockopt(TCP_INFO)`` returns as many bytes as the running kernel knows
(104 in the oldest layout, 232 on 5.4, 280 on 6.18).  So the layout is a table
of (name, offset, format, first kernel), and a field exists in a given
TCP_INFO exactly when its bytes lie within the returned length.  Parsing never
fails: any length, even 0, is a valid prefix.

Source of offsets: Linux ``include/uapi/linux/tcp.h`` (Debian's
linux-libc-dev 6.1 for everything up to ``tcpi_snd_wnd``; the AccECN counters
appended in 6.18).  Native byte order: the bytes come from this machine's
kernel.  Times are microseconds unless named otherwise.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import NamedTuple


class TcpInfoField(NamedTuple):
    name: str
    offset: int
    format: str  # struct format of the value, native byte order
    since: str  # first kernel version with the field
    bits: tuple[int, int] | None = None  # (shift, width) for bitfields


#: Every field we name, in struct order.
TCP_INFO_LAYOUT: tuple[TcpInfoField, ...] = (
    TcpInfoField("state", 0, "B", "2.6"),
    TcpInfoField("ca_state", 1, "B", "2.6"),
    TcpInfoField("retransmits", 2, "B", "2.6"),
    TcpInfoField("probes", 3, "B", "2.6"),
    TcpInfoField("backoff", 4, "B", "2.6"),
    TcpInfoField("options", 5, "B", "2.6"),
    TcpInfoField("snd_wscale", 6, "B", "2.6", (0, 4)),
    TcpInfoField("rcv_wscale", 6, "B", "2.6", (4, 4)),
    TcpInfoField("delivery_rate_app_limited", 7, "B", "4.9", (0, 1)),
    TcpInfoField("fastopen_client_fail", 7, "B", "5.5", (1, 2)),
    TcpInfoField("rto", 8, "I", "2.6"),
    TcpInfoField("ato", 12, "I", "2.6"),
    TcpInfoField("snd_mss", 16, "I", "2.6"),
    TcpInfoField("rcv_mss", 20, "I", "2.6"),
    TcpInfoField("unacked", 24, "I", "2.6"),
    TcpInfoField("sacked", 28, "I", "2.6"),
    TcpInfoField("lost", 32, "I", "2.6"),
    TcpInfoField("retrans", 36, "I", "2.6"),
    TcpInfoField("fackets", 40, "I", "2.6"),
    TcpInfoField("last_data_sent", 44, "I", "2.6"),
    TcpInfoField("last_ack_sent", 48, "I", "2.6"),
    TcpInfoField("last_data_recv", 52, "I", "2.6"),
    TcpInfoField("last_ack_recv", 56, "I", "2.6"),
    TcpInfoField("pmtu", 60, "I", "2.6"),
    TcpInfoField("rcv_ssthresh", 64, "I", "2.6"),
    TcpInfoField("rtt", 68, "I", "2.6"),
    TcpInfoField("rttvar", 72, "I", "2.6"),
    TcpInfoField("snd_ssthresh", 76, "I", "2.6"),
    TcpInfoField("snd_cwnd", 80, "I", "2.6"),
    TcpInfoField("advmss", 84, "I", "2.6"),
    TcpInfoField("reordering", 88, "I", "2.6"),
    TcpInfoField("rcv_rtt", 92, "I", "2.6"),
    TcpInfoField("rcv_space", 96, "I", "2.6"),
    TcpInfoField("total_retrans", 100, "I", "2.6"),
    TcpInfoField("pacing_rate", 104, "Q", "3.15"),
    TcpInfoField("max_pacing_rate", 112, "Q", "3.15"),
    TcpInfoField("bytes_acked", 120, "Q", "4.1"),
    TcpInfoField("bytes_received", 128, "Q", "4.1"),
    TcpInfoField("segs_out", 136, "I", "4.2"),
    TcpInfoField("segs_in", 140, "I", "4.2"),
    TcpInfoField("notsent_bytes", 144, "I", "4.6"),
    TcpInfoField("min_rtt", 148, "I", "4.6"),
    TcpInfoField("data_segs_in", 152, "I", "4.6"),
    TcpInfoField("data_segs_out", 156, "I", "4.6"),
    TcpInfoField("delivery_rate", 160, "Q", "4.9"),
    TcpInfoField("busy_time", 168, "Q", "4.10"),
    TcpInfoField("rwnd_limited", 176, "Q", "4.10"),
    TcpInfoField("sndbuf_limited", 184, "Q", "4.10"),
    TcpInfoField("delivered", 192, "I", "4.18"),
    TcpInfoField("delivered_ce", 196, "I", "4.18"),
    TcpInfoField("bytes_sent", 200, "Q", "4.19"),
    TcpInfoField("bytes_retrans", 208, "Q", "4.19"),
    TcpInfoField("dsack_dups", 216, "I", "4.19"),
    TcpInfoField("reord_seen", 220, "I", "4.19"),
    TcpInfoField("rcv_ooopack", 224, "I", "5.4"),
    TcpInfoField("snd_wnd", 228, "I", "5.4"),
    TcpInfoField("rcv_wnd", 232, "I", "6.2"),
    TcpInfoField("rehash", 236, "I", "6.2"),
    TcpInfoField("total_rto", 240, "H", "6.7"),
    TcpInfoField("total_rto_recoveries", 242, "H", "6.7"),
    TcpInfoField("total_rto_time", 244, "I", "6.7"),
    TcpInfoField("received_ce", 248, "I", "6.18"),
    TcpInfoField("delivered_e1_bytes", 252, "I", "6.18"),
    TcpInfoField("delivered_e0_bytes", 256, "I", "6.18"),
    TcpInfoField("delivered_ce_bytes", 260, "I", "6.18"),
    TcpInfoField("received_e1_bytes", 264, "I", "6.18"),
    TcpInfoField("received_e0_bytes", 268, "I", "6.18"),
    TcpInfoField("received_ce_bytes", 272, "I", "6.18"),
)

class _Reader(NamedTuple):
    end: int  # offset just past the field: it exists when the TCP_INFO is at least this long
    struct: struct.Struct
    offset: int
    bits: tuple[int, int] | None


_READERS: dict[str, _Reader] = {
    f.name: _Reader(f.offset + struct.calcsize(f.format), struct.Struct("=" + f.format), f.offset, f.bits)
    for f in TCP_INFO_LAYOUT
}


class TcpInfo(NamedTuple):
    """One TCP_INFO as the kernel returned it; fields are decoded when asked for.

    A server reads TCP_INFO at every accept (and again per request) but logs
    only a few of its ~70 fields, so decoding is lazy: ``get`` unpacks one
    field, ``values`` all of those present.
    """

    raw: bytes

    def get(self, name: str) -> int | None:
        """The field's value, or None when this TCP_INFO is too short to hold it."""
        reader = _READERS.get(name)
        if reader is None or reader.end > len(self.raw):
            return None
        value = reader.struct.unpack_from(self.raw, reader.offset)[0]
        if reader.bits is not None:
            shift, width = reader.bits
            value = value >> shift & ((1 << width) - 1)
        return value

    @property
    def values(self) -> dict[str, int]:
        """Every named field the length holds, in struct order."""
        return {name: self.get(name) for name, r in _READERS.items() if r.end <= len(self.raw)}  # type: ignore[misc]

    @property
    def rtt(self) -> int | None:
        """Smoothed RTT in microseconds; at accept, the handshake RTT."""
        return self.get("rtt")


def values_reader(names: Sequence[str]) -> Callable[[TcpInfo], tuple[int | None, ...]]:
    """A function giving the values of ``names`` from one TcpInfo, in that order.

    It is ``tuple(info.get(n) for n in names)``, made for the log writer, which
    renders the same few fields of a new TCP_INFO on every request: when the
    TCP_INFO is long enough for all of them, one ``struct`` unpacks them at
    once (bitfields shifted and masked after), instead of one per field.
    """
    readers = [_READERS[n] for n in names]  # KeyError for a name the layout lacks
    slots = sorted({(r.offset, r.struct.format) for r in readers})
    fmt, at = "=", slots[0][0]
    for offset, part in slots:
        if offset < at:  # two overlapping fields of different sizes: read each alone
            return lambda info: tuple([info.get(n) for n in names])
        fmt += "x" * (offset - at) + part.lstrip("=")
        at = offset + struct.calcsize("=" + part.lstrip("="))
    start, end, unpack = slots[0][0], at, struct.Struct(fmt).unpack_from
    index = {slot: k for k, slot in enumerate(slots)}
    picks = [index[(r.offset, r.struct.format)] for r in readers]
    bits = [r.bits for r in readers]
    if not any(bits):
        pick = itemgetter(*picks) if len(picks) > 1 else (lambda values, k=picks[0]: (values[k],))

        def read(info: TcpInfo) -> tuple[int | None, ...]:
            raw = info.raw
            if len(raw) < end:
                return tuple([info.get(n) for n in names])
            return pick(unpack(raw, start))
    else:
        masks = [None if b is None else (b[0], (1 << b[1]) - 1) for b in bits]

        def read(info: TcpInfo) -> tuple[int | None, ...]:
            raw = info.raw
            if len(raw) < end:
                return tuple([info.get(n) for n in names])
            values = unpack(raw, start)
            return tuple([values[k] if m is None else values[k] >> m[0] & m[1] for k, m in zip(picks, masks)])

    return read


def parse_tcp_info(data: bytes | bytearray | memoryview) -> TcpInfo:
    """A TcpInfo over ``data``; any length is valid (fields past it are absent)."""
    return TcpInfo(bytes(data))
