"""Fake remote TCP host: replays hand-built SYNs through a TUN device.

Runs *inside* a test network namespace (``ip netns exec NAME python3 this``),
started by ``tests/fakehost.py``.  It reads one JSON job on stdin and writes
one JSON answer on stdout; it uses the standard library only, so it starts
fast and never depends on scapy's speed.

Strategy: the kernel in the namespace owns 198.18.0.1 / 2001:db8::1 on the
TUN device, so every packet written to the TUN descriptor reaches it as if
from the wire, and its replies to the fake client come back as reads.  For
each conversation the SYN is written exactly as the caller built it (never
rebuilt); the client learns from it the addresses, ports, ISN, TTL/hop
limit, DF and TSval, and builds the few later segments itself (ACK, request,
ACKs of the response, FIN) so that they look like they come from the same
host.  Before the first SYN it waits until the device carries packets both
ways (an echo request is answered): the kernel drops what it sends in the
moment after the device comes up, and a lost SYN-ACK would change the RTT.
Every read has a deadline and every loop a bound.

Job:    {"tun": "tun0", "conversations": [{"syn": HEX, "ack_delay": S,
         "request": HEX, "synack_timeout": S, "response_timeout": S,
         "wire": [HEX, ...], "ack_with_request": B, "request_segments": N,
         "segment_gap": S}, ...]}   (the last four optional)
Answer: {"results": [{"ok": B, "error": STR|null, "response": HEX,
         "synack": HEX|null, "synack_seconds": S|null, "elapsed_seconds": S,
         "reset": B, "server_fin": B, "syn_resent": B}, ...]}
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
PROTO_ICMP, PROTO_TCP, PROTO_ICMPV6 = 1, 6, 58
# IPv6 extension headers we walk to find TCP in the caller's SYN.
V6_EXT_HEADERS = {0, 43, 60}  # hop-by-hop, routing, destination options
V6_FRAGMENT, V6_AH = 44, 51

MAX_PACKETS_PER_PHASE = 20_000  # bound on reads while waiting for one event
MAX_SEGMENT = 1400  # request chunk size if the server's MSS is larger
FINAL_ACK_WAIT = 0.5  # seconds to wait for the ACK of our FIN (not required)
LINK_WAIT = 3.0  # seconds to wait for the device to carry packets both ways
PROBE_EVERY = 0.02  # seconds between echo requests while it does not

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
TCP_HEADER = struct.Struct("!HHIIBBHHH")


# --------------------------------------------------------------------------
# Checksums and packet building


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Flow:
    """The fake host's side of one connection, learnt from its SYN."""

    def __init__(self, syn: bytes) -> None:
        self.syn = syn
        version = syn[0] >> 4
        self.version = version
        if version == 4:
            ihl = (syn[0] & 0x0F) * 4
            (_, tos, _, ip_id, frag, ttl, proto, _, src, dst) = IPV4_HEADER.unpack_from(syn)
            if proto != PROTO_TCP:
                raise ValueError("the SYN is not TCP")
            self.tos = tos & 0xFC  # keep DSCP, later segments are not-ECT
            self.ip_id = ip_id
            self.df = bool(frag & 0x4000)
            self.ttl = ttl
            self.src, self.dst = src, dst
            tcp_at = ihl
        elif version == 6:
            first_word, _, next_header, hlim = struct.unpack_from("!IHBB", syn)
            self.traffic_class = (first_word >> 20) & 0xFC
            self.flow_label = first_word & 0xFFFFF
            self.ttl = hlim
            self.src, self.dst = syn[8:24], syn[24:40]
            tcp_at = 40
            for _ in range(16):  # bounded walk of the extension headers
                if next_header == PROTO_TCP:
                    break
                if next_header in V6_EXT_HEADERS:
                    length = (syn[tcp_at + 1] + 1) * 8
                elif next_header == V6_FRAGMENT:
                    length = 8
                elif next_header == V6_AH:
                    length = (syn[tcp_at + 1] + 2) * 4
                else:
                    raise ValueError(f"the SYN has IPv6 next header {next_header}")
                next_header = syn[tcp_at]
                tcp_at += length
            else:
                raise ValueError("too many IPv6 extension headers in the SYN")
        else:
            raise ValueError(f"the SYN has IP version {version}")
        sport, dport, seq, _, offset_byte, _, window, _, _ = TCP_HEADER.unpack_from(syn, tcp_at)
        self.sport, self.dport, self.isn = sport, dport, seq
        wscale = None
        ts_val = None
        for kind, value in tcp_options(syn[tcp_at + 20 : tcp_at + (offset_byte >> 4) * 4]):
            if kind == 3 and len(value) == 1:
                wscale = value[0]
            elif kind == 8 and len(value) == 8:
                ts_val = struct.unpack("!I", value[:4])[0]
        self.window = window if window >= 1024 else 8192
        self.wscale = wscale
        self.ts_base = ts_val if ts_val is not None else 0
        self.started = time.monotonic()
        self.snd_nxt = (seq + 1) & 0xFFFFFFFF
        self.rcv_nxt = 0
        self.ts_recent: int | None = None  # server's last TSval, once negotiated

    # -- matching the server's packets ------------------------------------

    def parse_reply(self, packet: bytes) -> tuple[int, int, int, bytes, bytes] | None:
        """(seq, ack, flags, options, payload) if ``packet`` belongs to us."""
        if not packet or packet[0] >> 4 != self.version:
            return None
        if self.version == 4:
            if len(packet) < 40 or packet[9] != PROTO_TCP:
                return None
            if packet[12:16] != self.dst or packet[16:20] != self.src:
                return None
            tcp_at = (packet[0] & 0x0F) * 4
            end = struct.unpack_from("!H", packet, 2)[0]
        else:
            if len(packet) < 60 or packet[6] != PROTO_TCP:  # Linux adds no ext headers
                return None
            if packet[8:24] != self.dst or packet[24:40] != self.src:
                return None
            tcp_at = 40
            end = 40 + struct.unpack_from("!H", packet, 4)[0]
        if len(packet) < tcp_at + 20:
            return None
        sport, dport, seq, ack, offset_byte, flags, _, _, _ = TCP_HEADER.unpack_from(packet, tcp_at)
        if sport != self.dport or dport != self.sport:
            return None
        data_at = tcp_at + (offset_byte >> 4) * 4
        return seq, ack, flags, packet[tcp_at + 20 : data_at], packet[data_at:end]

    # -- building our segments --------------------------------------------

    def reset(self, seq: int) -> bytes:
        """A bare RST with sequence number ``seq`` (no options)."""
        saved = self.snd_nxt, self.rcv_nxt, self.ts_recent
        self.snd_nxt, self.rcv_nxt, self.ts_recent = seq, 0, None
        try:
            return self.segment(RST)
        finally:
            self.snd_nxt, self.rcv_nxt, self.ts_recent = saved

    def segment(self, flags: int, payload: bytes = b"") -> bytes:
        """One of our segments at snd_nxt/rcv_nxt, checksummed.

        It carries TSval/TSecr once the server's SYN-ACK had timestamps:
        the kernel takes the SYN-ACK RTT from our TSecr, and RFC 7323 lets
        it drop segments without them (Linux 6.18 here accepts them, but we
        do not rely on that).  TSval runs on from the SYN's at 1 kHz.
        """
        options = b""
        if self.ts_recent is not None:
            ts_val = (self.ts_base + int((time.monotonic() - self.started) * 1000)) & 0xFFFFFFFF
            options = struct.pack("!BBBBII", 1, 1, 8, 10, ts_val, self.ts_recent)
        offset = (20 + len(options)) // 4
        tcp = bytearray(
            TCP_HEADER.pack(self.sport, self.dport, self.snd_nxt, self.rcv_nxt,
                            offset << 4, flags, self.window, 0, 0)
            + options + payload
        )
        if self.version == 4:
            pseudo = self.src + self.dst + struct.pack("!BBH", 0, PROTO_TCP, len(tcp))
        else:
            pseudo = self.src + self.dst + struct.pack("!I3xB", len(tcp), PROTO_TCP)
        struct.pack_into("!H", tcp, 16, checksum(pseudo + bytes(tcp)))
        if self.version == 4:
            self.ip_id = (self.ip_id + 1) & 0xFFFF
            header = bytearray(IPV4_HEADER.pack(
                0x45, self.tos, 20 + len(tcp), self.ip_id, 0x4000 if self.df else 0,
                self.ttl, PROTO_TCP, 0, self.src, self.dst))
            struct.pack_into("!H", header, 10, checksum(bytes(header)))
            return bytes(header) + bytes(tcp)
        first_word = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        return struct.pack("!IHBB", first_word, len(tcp), PROTO_TCP, self.ttl) + self.src + self.dst + bytes(tcp)


def tcp_options(raw: bytes) -> list[tuple[int, bytes]]:
    """(kind, value) pairs of a TCP option list; stops at EOL or damage."""
    found = []
    at = 0
    while at < len(raw):
        kind = raw[at]
        if kind == 0:
            break
        if kind == 1:
            at += 1
            continue
        if at + 1 >= len(raw) or raw[at + 1] < 2 or at + raw[at + 1] > len(raw):
            break
        found.append((kind, raw[at + 2 : at + raw[at + 1]]))
        at += raw[at + 1]
    return found


def server_tsval(options: bytes) -> int | None:
    for kind, value in tcp_options(options):
        if kind == 8 and len(value) == 8:
            return struct.unpack("!I", value[:4])[0]
    return None


def server_mss(options: bytes) -> int:
    for kind, value in tcp_options(options):
        if kind == 2 and len(value) == 2:
            return struct.unpack("!H", value)[0]
    return 536


# --------------------------------------------------------------------------
# The TUN device


class Tun:
    def __init__(self, name: str) -> None:
        self.fd = os.open("/dev/net/tun", os.O_RDWR)
        ifreq = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
        fcntl.ioctl(self.fd, TUNSETIFF, ifreq)
        os.set_blocking(self.fd, False)
        self.poll = select.poll()
        self.poll.register(self.fd, select.POLLIN)

    def write(self, packet: bytes) -> None:
        os.write(self.fd, packet)

    def read(self, deadline: float) -> bytes | None:
        """One packet, or None once ``deadline`` (monotonic) has passed."""
        for _ in range(1000):  # bounded against spurious wake-ups
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if self.poll.poll(max(1, int(remaining * 1000))):
                try:
                    return os.read(self.fd, 65536)
                except BlockingIOError:
                    continue
        return None


def echo_request(syn: bytes, ident: int, seq: int) -> bytes:
    """An ICMP (IPv4) or ICMPv6 echo request between the addresses of ``syn``."""
    if syn[0] >> 4 == 4:
        icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, ident, seq))
        struct.pack_into("!H", icmp, 2, checksum(bytes(icmp)))
        header = bytearray(IPV4_HEADER.pack(0x45, 0, 20 + len(icmp), 0, 0, 64, PROTO_ICMP, 0,
                                            syn[12:16], syn[16:20]))
        struct.pack_into("!H", header, 10, checksum(bytes(header)))
        return bytes(header) + bytes(icmp)
    src, dst = syn[8:24], syn[24:40]
    icmp = bytearray(struct.pack("!BBHHH", 128, 0, 0, ident, seq))
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), PROTO_ICMPV6)
    struct.pack_into("!H", icmp, 2, checksum(pseudo + bytes(icmp)))
    return struct.pack("!IHBB", 6 << 28, len(icmp), PROTO_ICMPV6, 64) + src + dst + bytes(icmp)


def is_echo_reply(packet: bytes, ident: int) -> bool:
    if packet[:1] and packet[0] >> 4 == 4:
        at = (packet[0] & 0x0F) * 4
        return len(packet) >= at + 8 and packet[9] == PROTO_ICMP and packet[at] == 0 \
            and struct.unpack_from("!H", packet, at + 4)[0] == ident
    return len(packet) >= 48 and packet[0] >> 4 == 6 and packet[6] == PROTO_ICMPV6 \
        and packet[40] == 129 and struct.unpack_from("!H", packet, 44)[0] == ident


def wait_link_ready(tun: Tun, syn: bytes, timeout: float = LINK_WAIT) -> None:
    """Return once the kernel's packets come back through the device: an echo is answered.

    Attaching to the device turns its carrier on, but the kernel sends
    through it only after its link-watch work has run, a moment later; what
    it sends before is dropped.  A SYN written in that moment loses its
    SYN-ACK: the kernel resends it after 1 s (a 1 s RTT, or none without
    timestamps), or never when it answered with a SYN cookie.  A device
    that is down refuses writes (EIO) until it is up.
    """
    if len(syn) < 40 or syn[0] >> 4 not in (4, 6):
        return  # no addresses to probe with; the conversation reports the SYN as unreadable
    ident = os.getpid() & 0xFFFF
    deadline = time.monotonic() + timeout
    for seq in range(1, 1 + int(timeout / PROBE_EVERY)):
        try:
            tun.write(echo_request(syn, ident, seq))
        except OSError:
            pass  # the device is down: wait and try again
        wait = min(deadline, time.monotonic() + PROBE_EVERY)
        for _ in range(MAX_PACKETS_PER_PHASE):
            packet = tun.read(wait)
            if packet is None:
                break
            if is_echo_reply(packet, ident):
                return
        if time.monotonic() >= deadline:
            return  # the conversations will say what goes wrong


def wait_ipv6_ready(tun: str, timeout: float = 3.0) -> None:
    """Wait until no IPv6 address on ``tun`` is tentative (it drops SYNs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tentative = False
        with open("/proc/net/if_inet6") as table:
            for line in table:
                fields = line.split()
                if len(fields) == 6 and fields[5] == tun and int(fields[4], 16) & 0x40:
                    tentative = True
        if not tentative:
            return
        time.sleep(0.002)


# --------------------------------------------------------------------------
# One conversation


def converse(tun: Tun, spec: dict) -> dict:
    syn = bytes.fromhex(spec["syn"])
    request = bytes.fromhex(spec.get("request", ""))
    ack_delay = float(spec.get("ack_delay", 0.0))
    synack_timeout = float(spec.get("synack_timeout", 2.0))
    response_timeout = float(spec.get("response_timeout", 3.0))
    result = {"ok": False, "error": None, "response": "", "synack": None,
              "synack_seconds": None, "elapsed_seconds": 0.0, "reset": False,
              "server_fin": False, "syn_resent": False}
    started = time.monotonic()
    try:
        flow = Flow(syn)
    except (ValueError, struct.error, IndexError) as err:
        result["error"] = f"cannot read the SYN: {err}"
        return result

    def finish(error: str | None) -> dict:
        result["error"] = error
        result["ok"] = error is None
        result["elapsed_seconds"] = time.monotonic() - started
        return result

    # 1. SYN, then wait for the matching SYN-ACK.  A bare ACK instead means
    #    a TIME_WAIT socket of an earlier connection with this 4-tuple took
    #    the SYN (its ISN was not higher): like a real host, reset that
    #    socket and send the same SYN again, once.
    on_the_wire = [bytes.fromhex(piece) for piece in spec.get("wire") or ()] or [syn]
    flow.started = time.monotonic()
    for piece in on_the_wire:
        tun.write(piece)
    deadline = time.monotonic() + synack_timeout
    synack = None
    resent = False
    for _ in range(MAX_PACKETS_PER_PHASE):
        packet = tun.read(deadline)
        if packet is None:
            break
        reply = flow.parse_reply(packet)
        if reply is None:
            continue
        seq, ack, flags, options, _ = reply
        if flags & RST:
            result["reset"] = True
            return finish(f"connection refused: RST from port {flow.dport} in answer to the SYN")
        if flags & (SYN | ACK) == SYN | ACK and ack == flow.snd_nxt:
            synack = packet
            break
        if flags & (SYN | ACK) == ACK and not resent:
            tun.write(flow.reset(ack))
            for piece in on_the_wire:
                tun.write(piece)
            flow.started = time.monotonic()
            resent = result["syn_resent"] = True
    if synack is None:
        return finish(f"timeout: no SYN-ACK within {synack_timeout} s")
    result["synack"] = synack.hex()
    result["synack_seconds"] = time.monotonic() - flow.started
    flow.rcv_nxt = (seq + 1) & 0xFFFFFFFF
    flow.ts_recent = server_tsval(options)
    mss = min(server_mss(options), MAX_SEGMENT)

    # 2. Hold the ACK back if asked, then ACK and send the request: the
    #    request's first segment can be the ACK, and it can come in pieces.
    if ack_delay > 0:
        time.sleep(ack_delay)
    if not (spec.get("ack_with_request") and request):
        tun.write(flow.segment(ACK))
    pieces = max(1, int(spec.get("request_segments", 1)))
    size = min(mss, max(1, -(-len(request) // pieces)))
    for at in range(0, len(request), size):
        if at and spec.get("segment_gap"):
            time.sleep(float(spec["segment_gap"]))
        chunk = request[at : at + size]
        tun.write(flow.segment(PSH | ACK, chunk))
        flow.snd_nxt = (flow.snd_nxt + len(chunk)) & 0xFFFFFFFF

    # 3. Read the response, ACK every segment, until the server's FIN.
    response = bytearray()
    error = None
    deadline = time.monotonic() + response_timeout
    for _ in range(MAX_PACKETS_PER_PHASE):
        packet = tun.read(deadline)
        if packet is None:
            error = f"timeout: no FIN from the server within {response_timeout} s"
            break
        reply = flow.parse_reply(packet)
        if reply is None:
            continue
        seq, ack, flags, options, payload = reply
        if flags & SYN:
            continue  # a retransmitted SYN-ACK
        if flags & RST:
            result["reset"] = True
            error = "connection reset by the server"
            break
        ts = server_tsval(options)
        if ts is not None and flow.ts_recent is not None:
            flow.ts_recent = ts
        if not payload and not flags & FIN:
            continue  # a pure ACK of our data
        if seq == flow.rcv_nxt:
            response += payload
            flow.rcv_nxt = (flow.rcv_nxt + len(payload)) & 0xFFFFFFFF
            if flags & FIN:
                flow.rcv_nxt = (flow.rcv_nxt + 1) & 0xFFFFFFFF
                result["server_fin"] = True
                break
        tun.write(flow.segment(ACK))  # ACK in-order data, re-ACK anything else
    else:
        error = "too many packets while reading the response"
    result["response"] = bytes(response).hex()
    if result["reset"]:
        return finish(error)

    # 4. Close with FIN/ACK (this also ACKs the server's FIN), then give the
    #    server a moment to ACK it so its socket does not linger.
    tun.write(flow.segment(FIN | ACK))
    flow.snd_nxt = (flow.snd_nxt + 1) & 0xFFFFFFFF
    if result["server_fin"]:
        deadline = time.monotonic() + FINAL_ACK_WAIT
        for _ in range(MAX_PACKETS_PER_PHASE):
            packet = tun.read(deadline)
            if packet is None:
                break
            reply = flow.parse_reply(packet)
            if reply is not None and reply[2] & ACK and reply[1] == flow.snd_nxt:
                break
    return finish(error)


def main() -> int:
    job = json.load(sys.stdin)
    tun_name = job.get("tun", "tun0")
    tun = Tun(tun_name)
    conversations = job["conversations"]
    if any(bytes.fromhex(c["syn"][:2])[0] >> 4 == 6 for c in conversations if c["syn"]):
        wait_ipv6_ready(tun_name)
    if conversations:
        wait_link_ready(tun, bytes.fromhex(conversations[0]["syn"]))
    results = [converse(tun, spec) for spec in conversations]
    json.dump({"results": results}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
