"""What the real Linux kernel hands over through TCP_SAVED_SYN and TCP_INFO, read by our core.

The whole tool rests on these kernel facts (docs/fields.md, "Where the bytes
come from"), so they are checked here on loopback rather than assumed: the
saved SYN carries the TTL and MSS the client chose and Linux's option layout;
it can be read only once; a too-short buffer fails without losing it; a
dual-stack AF_INET6 listener hands over an IPv4 client's SYN as plain IPv4;
a listener without TCP_SAVE_SYN gives an empty SYN; and TCP_INFO at accept
decodes to an established connection with a loopback-sized handshake RTT.
Only loopback traffic; every socket has a 2 s timeout and is closed.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import need
from tcpfp_cli.syn import parse_syn
from tcpfp_cli.tcpinfo import TCP_INFO_LAYOUT, parse_tcp_info

# From Linux include/uapi/linux/tcp.h.
TCP_INFO = 11
TCP_SAVE_SYN = 27
TCP_SAVED_SYN = 28
TCP_ESTABLISHED = 1  # include/net/tcp_states.h

TIMEOUT = 2.0
LINUX_LAYOUT = (2, 4, 8, 1, 3)  # MSS, SACK-permitted, timestamps, NOP, window scale


def sysctl(name: str) -> str | None:
    path = Path("/proc/sys/net/ipv4") / name
    return path.read_text().strip() if path.exists() else None


def default_option_sysctls() -> bool:
    return all(sysctl(n) == "1" for n in ("tcp_timestamps", "tcp_sack", "tcp_window_scaling"))


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@contextlib.contextmanager
def connection(
    family: int,
    listen_host: str,
    connect_host: str,
    *,
    client_family: int | None = None,
    ttl: int | None = None,
    mss: int | None = None,
    save_syn: bool = True,
    v6only: bool | None = None,
) -> Iterator[tuple[socket.socket, tuple]]:
    """One loopback connection; yields (accepted socket, peer address)."""
    client_family = client_family or family
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        listener.settimeout(TIMEOUT)
        if v6only is not None:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        if save_syn:
            listener.setsockopt(socket.IPPROTO_TCP, TCP_SAVE_SYN, 1)
        listener.bind((listen_host, 0))
        listener.listen(4)
        port = listener.getsockname()[1]

        client = stack.enter_context(socket.socket(client_family, socket.SOCK_STREAM))
        client.settimeout(TIMEOUT)
        if ttl is not None:
            if client_family == socket.AF_INET:
                client.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            else:
                client.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        if mss is not None:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        client.connect((connect_host, port))

        accepted, peer = listener.accept()
        stack.enter_context(accepted)
        accepted.settimeout(TIMEOUT)
        yield accepted, peer


def saved_syn(sock: socket.socket) -> bytes:
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_SAVED_SYN, 512)


V4 = (socket.AF_INET, "127.0.0.1")
V6 = (socket.AF_INET6, "::1")
CLIENTS = [
    pytest.param(*V4, 64, 1460, id="v4-ttl64-mss1460"),
    pytest.param(*V4, 1, 536, id="v4-ttl1-mss536"),
    pytest.param(*V4, 128, 1000, id="v4-ttl128-mss1000"),
    pytest.param(*V4, 255, 8960, id="v4-ttl255-mss8960"),
    pytest.param(*V6, 64, 1440, id="v6-hlim64-mss1440"),
    pytest.param(*V6, 1, 1220, id="v6-hlim1-mss1220"),
    pytest.param(*V6, 200, 536, id="v6-hlim200-mss536"),
    pytest.param(*V6, 255, 9000, id="v6-hlim255-mss9000"),
]


def need_family(family: int) -> None:
    if family == socket.AF_INET6:
        need(ipv6_loopback(), "needs IPv6 on loopback (::1)")


@pytest.mark.parametrize("family,host,ttl,mss", CLIENTS)
def test_saved_syn_carries_the_clients_ttl_and_mss(family, host, ttl, mss):
    need_family(family)
    with connection(family, host, host, ttl=ttl, mss=mss) as (accepted, _):
        syn = saved_syn(accepted)
    version = 4 if family == socket.AF_INET else 6
    assert syn, "the kernel saved no SYN on a TCP_SAVE_SYN listener"
    assert syn[0] >> 4 == version
    # The hop count, straight from the bytes (RFC 791 byte 8, RFC 8200 byte 7).
    assert syn[8 if version == 4 else 7] == ttl
    fp = parse_syn(syn)
    assert (fp.ip_version, fp.ttl, fp.mss) == (version, ttl, mss)
    assert fp.saved_syn == syn
    assert fp.tcp_flags & 0x02 and not fp.tcp_flags & 0x10  # SYN, no ACK
    assert not fp.has_payload
    assert fp.ip_olen == 0  # Linux sends no IP options or extension headers by default


@pytest.mark.parametrize("family,host", [V4, V6])
def test_linux_option_layout_with_default_sysctls(family, host):
    need_family(family)
    if not default_option_sysctls():
        pytest.skip("tcp_timestamps/tcp_sack/tcp_window_scaling changed from 1: layout differs")
    with connection(family, host, host, mss=1400) as (accepted, _):
        fp = parse_syn(saved_syn(accepted))
    assert fp.options == LINUX_LAYOUT
    assert fp.options_text == "2,4,8,1,3"
    assert fp.ts_val is not None and fp.ts_ecr == 0  # a SYN echoes no timestamp
    assert fp.window_scale is not None and 0 <= fp.window_scale <= 14


@pytest.mark.parametrize("family,host", [V4, V6])
def test_saved_syn_is_freed_by_the_first_read(family, host):
    need_family(family)
    with connection(family, host, host) as (accepted, _):
        first = saved_syn(accepted)
        second = saved_syn(accepted)
    assert len(first) >= (40 if family == socket.AF_INET else 60)
    assert second == b""


def test_too_short_buffer_fails_and_keeps_the_syn():
    with connection(*V4, V4[1]) as (accepted, _):
        with pytest.raises(OSError) as short:
            accepted.getsockopt(socket.IPPROTO_TCP, TCP_SAVED_SYN, 20)
        syn = saved_syn(accepted)
    assert short.value.errno == errno.EINVAL
    assert parse_syn(syn).ip_version == 4


@pytest.mark.parametrize("listen_host", ["::", "::ffff:127.0.0.1"])
def test_dual_stack_listener_hands_over_ipv4_syn_as_ipv4(listen_host):
    need_family(socket.AF_INET6)
    with connection(
        socket.AF_INET6, listen_host, "127.0.0.1",
        client_family=socket.AF_INET, ttl=42, mss=1300, v6only=False,
    ) as (accepted, peer):
        syn = saved_syn(accepted)
    assert peer[0] == "::ffff:127.0.0.1"
    assert syn[0] == 0x45  # IPv4, 20-byte header: no IPv6 header is made up
    fp = parse_syn(syn)
    assert (fp.ip_version, fp.ttl, fp.mss, fp.flow_label) == (4, 42, 1300, None)


@pytest.mark.parametrize("family,host", [V4, V6])
def test_listener_without_save_syn_gives_an_empty_syn(family, host):
    """No TCP_SAVE_SYN: the read succeeds and returns 0 bytes (fields render as ``-``)."""
    need_family(family)
    with connection(family, host, host, save_syn=False) as (accepted, _):
        assert saved_syn(accepted) == b""


def struct_sizes_by_kernel() -> dict[str, int]:
    """sizeof(struct tcp_info) on each kernel that grew it, from the layout table.

    A kernel copies its whole struct, which ends at its newest field rounded
    up to 8 bytes (the struct holds u64 members): 104, ..., 232 on 5.4, 280 on 6.18.
    """
    def version(v: str) -> tuple[int, ...]:
        return tuple(map(int, v.split(".")))

    ends = [(version(f.since), f.offset + struct.calcsize("=" + f.format)) for f in TCP_INFO_LAYOUT]
    sizes = {}
    for since, _ in ends:
        end = max(e for v, e in ends if v <= since)
        sizes[".".join(map(str, since))] = -(-end // 8) * 8
    return sizes


KNOWN_TCP_INFO_LENGTHS = set(struct_sizes_by_kernel().values())


def test_layout_table_gives_the_documented_struct_sizes():
    """docs/fields.md: 104 bytes in the oldest layout, 232 on 5.4, 280 on 6.18."""
    sizes = struct_sizes_by_kernel()
    assert (sizes["2.6"], sizes["5.4"], sizes["6.18"]) == (104, 232, 280)


@pytest.mark.parametrize("family,host", [V4, V6])
def test_tcp_info_at_accept(family, host):
    need_family(family)
    with connection(family, host, host, mss=1200) as (accepted, _):
        raw = accepted.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 512)
    info = parse_tcp_info(raw)
    assert len(raw) >= 104, "shorter than the oldest struct tcp_info"
    assert len(raw) in KNOWN_TCP_INFO_LENGTHS, f"{len(raw)} bytes: a layout we do not know"
    assert info.raw == raw
    # Read straight from the bytes too: tcpi_state is byte 0, tcpi_rtt the u32 at 68.
    assert info.get("state") == raw[0] == TCP_ESTABLISHED
    assert info.rtt == struct.unpack_from("=I", raw, 68)[0]
    assert 0 < info.rtt < 1_000_000, f"handshake RTT {info.rtt} us is not a loopback RTT"
    # The server may not send segments larger than the MSS the client announced.
    assert 0 < info.get("snd_mss") <= 1200
