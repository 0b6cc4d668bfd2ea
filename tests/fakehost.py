"""Fake remote hosts for tests: hand-built SYNs through a TUN device.

A loopback client only sends the SYN this machine's kernel builds.  To test
against a Mozi router, Windows or macOS, a test plays the remote host:

    with Namespace() as ns:                      # netns + lo + tun0, addressed
        server = ns.popen([sys.executable, "-m", "...", "--port", "8080"])
        wait_for_port(ns, 8080)
        syn = build_syn(dport=8080, ttl=50, window=28800, options=[...])
        [result] = replay(ns, [Conversation(syn)], 8080)
        assert result.ok and result.response.startswith(b"HTTP/1.0 200")

Design:
- The namespace holds a *persistent* TUN device ``tun0`` with 198.18.0.1/24
  and 2001:db8::1/64 (nodad), so servers can bind those addresses at once.
  It only carries packets while a process holds it open: ``replay`` runs
  ``tests/fakehost_client.py`` inside the namespace, which attaches to tun0
  (TUNSETIFF), plays every conversation of the batch in turn and exits.
- The SYN is bytes built by the caller (``build_syn`` wraps scapy, which fills
  in checksums and lengths); the client writes it unchanged and derives the
  later segments from it (addresses, ports, ISN, TTL, DF, TSval).
- Fake clients live at 198.18.0.2-254 and 2001:db8::2.. .  ``build_syn``
  gives each SYN its own source port.  Replaying the same SYN twice works
  too: when a server's TIME_WAIT socket answers it with a bare ACK, the
  client resets that socket and sends the SYN again, as real hosts do.
- Cleanup is unconditional: ``Namespace.__exit__`` kills the processes it
  started (by PID: SIGTERM, then SIGKILL after a bound) and deletes the
  namespace, which destroys tun0 with it.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

CLIENT = Path(__file__).with_name("fakehost_client.py")
TUN = "tun0"
SERVER_V4 = "198.18.0.1"
SERVER_V6 = "2001:db8::1"
CLIENT_V4 = "198.18.0.2"
CLIENT_V6 = "2001:db8::2"
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL

_counter = itertools.count(1)
_source_ports = itertools.count(random.randint(0, 64511))


class Namespace:
    """A throw-away network namespace with ``lo`` and an addressed tun0."""

    def __init__(self, kill_grace: float = KILL_GRACE) -> None:
        self.name = f"tcpfp-{os.getpid()}-{next(_counter)}"
        self.tun = TUN
        self.kill_grace = kill_grace
        self.started: list[subprocess.Popen[Any]] = []

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.started]

    def __enter__(self) -> Namespace:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, timeout=10)
        try:
            setup = "\n".join([
                "link set lo up",
                f"tuntap add dev {TUN} mode tun",
                f"addr add {SERVER_V4}/24 dev {TUN}",
                f"addr add {SERVER_V6}/64 dev {TUN} nodad",
                f"link set {TUN} up",
            ]) + "\n"
            subprocess.run(["ip", "-n", self.name, "-batch", "-"], input=setup.encode(),
                           check=True, capture_output=True, timeout=10)
        except BaseException:
            self._delete()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop_all()
        finally:
            self._delete()

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the namespace; it is killed on exit.

        ``ip netns exec`` execs the program in place, so the PID is the
        program's own; it leads a new session so that its children go too.
        """
        kw.setdefault("start_new_session", True)
        process = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kw)
        self.started.append(process)
        return process

    def run(self, argv: Sequence[str], timeout: float = 30.0, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside the namespace to completion (bounded by ``timeout``)."""
        kw.setdefault("capture_output", True)
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], timeout=timeout, **kw)

    def stop(self, process: subprocess.Popen[Any], grace: float | None = None) -> None:
        """SIGTERM one started process (and its group), SIGKILL after ``grace``."""
        grace = self.kill_grace if grace is None else grace
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=grace)
        else:
            _signal_group(process.pid, signal.SIGKILL, alive=False)  # leftovers of its group
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)

    def _delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


def _signal_group(pid: int, sig: int, *, alive: bool = True) -> None:
    """Signal the process group our started process leads.

    Only while the process is ``alive`` (not yet reaped, so its PID cannot
    have been reused) do we fall back to signalling the PID itself.
    """
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        if alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def namespace_exists(name: str) -> bool:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return any(line.split()[0] == name for line in listing.splitlines() if line.strip())


def wait_for_port(namespace: Namespace, port: int, timeout: float = 5.0) -> None:
    """Return once a TCP listener on ``port`` exists in ``namespace``.

    A SYN to a closed port is answered with RST, so replay only after this.
    """
    deadline = time.monotonic() + timeout
    while True:
        listing = subprocess.run(["ss", "-N", namespace.name, "-Hltn", f"sport = :{port}"],
                                 capture_output=True, text=True, timeout=10).stdout
        if listing.strip():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on port {port} in {namespace.name} after {timeout} s")
        time.sleep(0.02)


# --------------------------------------------------------------------------
# Conversations


@dataclass(frozen=True)
class Conversation:
    """One fake connection: the SYN to write, then how to behave."""

    syn: bytes  # complete IPv4/IPv6 packet, checksums right (see build_syn)
    ack_delay: float = 0.0  # seconds to hold the ACK of the SYN-ACK back
    request: bytes = b"GET / HTTP/1.0\r\n\r\n"  # sent after the handshake ("" = none)
    synack_timeout: float = 2.0
    response_timeout: float = 3.0  # for the server's response and FIN
    wire: tuple[bytes, ...] = ()  # packets to write instead of the SYN, e.g. its fragments
    ack_with_request: bool = False  # no bare ACK: the request's first segment completes the handshake
    request_segments: int = 1  # the request in this many segments (at most the server's MSS each)
    segment_gap: float = 0.0  # seconds between them

    def to_json(self) -> dict[str, Any]:
        return {"syn": self.syn.hex(), "ack_delay": self.ack_delay, "request": self.request.hex(),
                "synack_timeout": self.synack_timeout, "response_timeout": self.response_timeout,
                "wire": [packet.hex() for packet in self.wire], "ack_with_request": self.ack_with_request,
                "request_segments": self.request_segments, "segment_gap": self.segment_gap}

    @property
    def budget(self) -> float:
        return (self.synack_timeout + self.ack_delay + self.response_timeout + 1.0
                + self.segment_gap * self.request_segments)


@dataclass(frozen=True)
class Result:
    ok: bool  # handshake done, response read up to the server's FIN
    error: str | None  # which step failed, e.g. "timeout: no SYN-ACK within 2.0 s"
    response: bytes  # the server's payload, in order
    synack: bytes | None  # the server's SYN-ACK packet as read from the TUN
    synack_seconds: float | None  # from writing the SYN to reading the SYN-ACK
    elapsed_seconds: float
    reset: bool = False  # the server answered with RST
    server_fin: bool = False
    syn_resent: bool = False  # a TIME_WAIT socket ACKed the SYN; reset it, sent again

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        return cls(ok=data["ok"], error=data["error"], response=bytes.fromhex(data["response"]),
                   synack=bytes.fromhex(data["synack"]) if data["synack"] else None,
                   synack_seconds=data["synack_seconds"], elapsed_seconds=data["elapsed_seconds"],
                   reset=data["reset"], server_fin=data["server_fin"],
                   syn_resent=data["syn_resent"])


def replay(namespace: Namespace, conversations: Sequence[Conversation], port: int | None = None) -> list[Result]:
    """Play ``conversations`` in order against the kernel inside ``namespace``.

    ``port``, if given, is checked against every SYN's destination port so a
    test cannot silently aim at the wrong listener.  One client process runs
    the whole batch; the call is bounded by the sum of the per-conversation
    timeouts.  Only one replay at a time per namespace: tun0 takes a single
    reader, a second client fails its TUNSETIFF with EBUSY.
    """
    if port is not None:
        for conversation in conversations:
            if syn_ports(conversation.syn)[1] != port:
                raise ValueError(f"SYN is for port {syn_ports(conversation.syn)[1]}, not {port}")
    job = {"tun": namespace.tun, "conversations": [c.to_json() for c in conversations]}
    timeout = 10.0 + sum(c.budget for c in conversations)
    completed = namespace.run([sys.executable, str(CLIENT)], input=json.dumps(job).encode(),
                              timeout=timeout)
    if completed.returncode != 0:
        raise RuntimeError(f"fakehost client failed ({completed.returncode}): "
                           f"{completed.stderr.decode(errors='replace')}")
    return [Result.from_json(r) for r in json.loads(completed.stdout)["results"]]


def syn_ports(syn: bytes) -> tuple[int, int]:
    """(source, destination) port of a SYN built for replay."""
    flow = _client_module().Flow(syn)
    return flow.sport, flow.dport


@functools.cache
def _client_module() -> Any:
    """tests/fakehost_client.py as a module (its packet code, no I/O)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fakehost_client", CLIENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------
# Building SYNs


def build_syn(
    dport: int,
    *,
    version: int = 4,
    src: str | None = None,
    sport: int | None = None,
    seq: int | None = None,
    ttl: int = 64,
    df: bool = True,
    tos: int = 0,
    ip_id: int = 0,
    ip_options: Sequence[Any] | bytes = (),
    ext_headers: Sequence[Any] = (),
    flow_label: int = 0,
    window: int = 65535,
    options: Sequence[tuple[str, Any]] = (("MSS", 1460),),
    flags: str = "S",
    payload: bytes = b"",
) -> bytes:
    """A SYN from a fake client to the namespace's server, as bytes.

    Built with scapy, which computes lengths and checksums.  ``options`` are
    scapy TCP options (``("MSS", 1406), ("SAckOK", b""), ("Timestamp", (v, 0)),
    ("NOP", None), ("WScale", 4)``, raw ``(kind, bytes)`` pairs too);
    ``ip_options`` scapy IPOption objects or raw bytes (IPv4);
    ``ext_headers`` scapy IPv6 extension headers in order, e.g.
    ``[IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()]``; ``tos`` is the IPv4 TOS
    or IPv6 traffic class byte (ECN in its low two bits); ``flags`` scapy
    flags such as ``"SEC"`` for an ECN-setup SYN.
    """
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    sport = sport if sport is not None else 1024 + next(_source_ports) % 64512
    seq = seq if seq is not None else random.getrandbits(32)
    tcp = TCP(sport=sport, dport=dport, seq=seq, ack=0, flags=flags, window=window, options=list(options))
    if payload:
        tcp = tcp / Raw(payload)
    if version == 4:
        if isinstance(ip_options, bytes):
            from scapy.layers.inet import IPOption
            ip_options = [IPOption(ip_options)] if ip_options else []
        ip = IP(src=src or CLIENT_V4, dst=SERVER_V4, ttl=ttl, flags="DF" if df else 0, tos=tos,
                id=ip_id, options=list(ip_options))
        return bytes(ip / tcp)
    if version == 6:
        packet = IPv6(src=src or CLIENT_V6, dst=SERVER_V6, hlim=ttl, tc=tos, fl=flow_label)
        for header in ext_headers:
            packet = packet / header
        return bytes(packet / tcp)
    raise ValueError(f"IP version {version}")


__all__ = [
    "CLIENT_V4", "CLIENT_V6", "SERVER_V4", "SERVER_V6", "Conversation", "Namespace", "Result",
    "build_syn", "namespace_exists", "replay", "syn_ports", "wait_for_port",
]
