"""The only Linux-specific code: socket options that keep and read the SYN.

- ``TCP_SAVE_SYN`` (27) on a listening socket makes the kernel keep every
  client's SYN (Linux 4.2+).  We set it before ``listen()``, so no connection
  is ever accepted without it.
- ``TCP_SAVED_SYN`` (28) on the accepted socket returns the SYN's headers and
  frees them: it is read exactly once, at accept.  If the buffer is too short
  the kernel answers EINVAL and keeps the data, so we retry with a larger one.
- ``TCP_INFO`` (11) returns as much of ``struct tcp_info`` as the running
  kernel has; ``tcpinfo.parse_tcp_info`` knows which fields that length holds.

The server reads these through the socket objects it holds itself (the C
socket type at accept, and the ``socket.socket`` it hands to the event loop),
never through the event loop's stand-in: uvloop's builds a full
``socket.socket`` (which asks the kernel for the family, type and protocol)
on every ``getsockopt``, which was a tenth of the server's time on
keep-alive requests.

Everything else (parsing, fields) is pure and lives elsewhere.
"""

from __future__ import annotations

import errno
import socket
from typing import Protocol

TCP_SAVE_SYN = 27
TCP_SAVED_SYN = 28
TCP_INFO = getattr(socket, "TCP_INFO", 11)
_SYN_BUFFERS = (512, 4096)  # IPv4 max 60+60 bytes; IPv6 extension headers can be longer
TCP_INFO_BUFFER = 512


class SockOpts(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


def enable_save_syn(sock: socket.socket) -> bool:
    """Ask the kernel to keep SYNs for this listener; False if this kernel cannot."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_SAVE_SYN, 1)
    except OSError as error:
        if error.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    return True


def read_saved_syn(sock: SockOpts) -> bytes | None:
    """The saved SYN of an accepted socket, or None when the kernel kept none (SYN cookies)."""
    for size in _SYN_BUFFERS:
        try:
            data = sock.getsockopt(socket.IPPROTO_TCP, TCP_SAVED_SYN, size)
        except OSError as error:
            if error.errno == errno.EINVAL and size != _SYN_BUFFERS[-1]:
                continue  # buffer too short: the kernel kept the SYN, try a larger one
            return None
        return data or None
    return None


def read_tcp_info(sock: SockOpts) -> bytes | None:
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_BUFFER) or None
    except OSError:
        return None
