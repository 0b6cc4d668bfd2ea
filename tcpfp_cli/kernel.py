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

import ctypes
import errno
import socket
from typing import Protocol

TCP_SAVE_SYN = 27
TCP_SAVED_SYN = 28
TCP_INFO = getattr(socket, "TCP_INFO", 11)
#: IPv4 max 60+60 bytes; IPv6 extension headers can be longer.  CPython's
#: ``getsockopt`` refuses a buffer above 1024 bytes (OSError without errno), so a
#: longer saved SYN is read through libc with the length the kernel asks for.
_SYN_BUFFERS = (512, 1024)
_PY_GETSOCKOPT_MAX = 1024
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
            if error.errno == errno.EINVAL:
                continue  # buffer too short: the kernel kept the SYN, try a larger one
            return None
        return data or None
    return _read_long_saved_syn(sock)


def _read_long_saved_syn(sock: SockOpts) -> bytes | None:
    """A saved SYN longer than CPython's getsockopt can take: ask the kernel its length
    (it answers EINVAL and writes the length it needs), then read it into a buffer that size."""
    fileno = getattr(sock, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
        libc = ctypes.CDLL(None, use_errno=True)
        length = ctypes.c_uint32(0)
        for _ in range(3):  # bounded: the length only changes if the SYN was read meanwhile
            buffer = ctypes.create_string_buffer(max(length.value, _PY_GETSOCKOPT_MAX + 1))
            length.value = len(buffer)
            if libc.getsockopt(fd, socket.IPPROTO_TCP, TCP_SAVED_SYN, buffer, ctypes.byref(length)) == 0:
                return buffer.raw[: length.value] or None
            if ctypes.get_errno() != errno.EINVAL:
                return None
    except (OSError, AttributeError, ValueError):
        return None
    return None


def read_tcp_info(sock: SockOpts) -> bytes | None:
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_BUFFER) or None
    except OSError:
        return None
