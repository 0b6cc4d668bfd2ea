"""kernel.py's answers when the kernel lacks a feature, and serve's single warning.

A kernel without TCP_SAVE_SYN (before 4.2, or a sandbox that filters the
option) answers setsockopt with ENOPROTOOPT.  We cannot boot such a kernel in
a test, so a socket stand-in gives that answer; everything above it is the
real code.  A socket that is gone is a real closed socket.
"""

from __future__ import annotations

import errno
import socket

import pytest

from tcpfp_cli import kernel, server
from tcpfp_cli.logformat import compile_format


class NoSaveSyn(socket.socket):
    def setsockopt(self, level, option, value, *rest):  # type: ignore[override]
        if level == socket.IPPROTO_TCP and option == kernel.TCP_SAVE_SYN:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        return super().setsockopt(level, option, value, *rest)


def test_a_kernel_without_tcp_save_syn_is_reported_not_fatal():
    with NoSaveSyn(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert kernel.enable_save_syn(sock) is False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert kernel.enable_save_syn(sock) is True


def test_reading_a_gone_socket_gives_nothing_rather_than_an_error():
    gone = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    gone.close()
    with pytest.raises(OSError) as raised:  # the premise: the kernel refuses every read
        gone.getsockopt(socket.IPPROTO_TCP, kernel.TCP_SAVED_SYN, 512)
    assert raised.value.errno == errno.EBADF
    assert kernel.read_saved_syn(gone) is None
    assert kernel.read_tcp_info(gone) is None


def test_serve_warns_once_and_still_listens(monkeypatch, capsys):
    monkeypatch.setattr(server.socket, "socket", NoSaveSyn)
    config = server.ServerConfig(listen=[("127.0.0.1", 0), ("127.0.0.1", 0)],
                                 log_format=compile_format("common"))
    sockets = server.open_listeners(config)
    try:
        assert len(sockets) == 2 and all(s.getsockname()[1] for s in sockets)
    finally:
        for s in sockets:
            s.close()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "TCP_SAVE_SYN" in line]
    assert len(warnings) == 1 and "'-'" in warnings[0]


@pytest.mark.parametrize("text, expected", [
    ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:8080", ("::1", 8080)), (":81", ("::", 81)),
])
def test_listen_addresses(text, expected):
    assert server.parse_listen(text) == expected


class NoIpv6(socket.socket):
    def __init__(self, family=socket.AF_INET, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        super().__init__(family, *args, **kwargs)


def test_a_host_without_ipv6_gets_the_ipv4_wildcard_with_a_warning(monkeypatch, capsys):
    monkeypatch.setattr(server.socket, "socket", NoIpv6)
    sock, saves = server.open_listener("::", 0, 16)
    try:
        assert sock.family == socket.AF_INET and sock.getsockname()[0] == "0.0.0.0"
        assert saves
    finally:
        sock.close()
    assert "no IPv6 here" in capsys.readouterr().err
