"""``tcpfp serve``: an asyncio HTTP listener that logs every client's TCP fingerprint.

This module only adapts.  Sockets are built and given ``TCP_SAVE_SYN`` before
``listen()`` (``kernel``), then handed to the event loop.  Each accepted
connection reads its saved SYN and TCP_INFO once (``kernel``), parses them
(``syn``, ``tcpinfo``) into an ``Observation``, and keeps it for every request
on the connection.  Request heads are parsed by ``httpwire``; log lines are
rendered by the compiled LogFormat (``logformat``) from the field table.

Why we accept connections ourselves: a sensor answers many short
connections, and a client usually sends its request right behind the
handshake.  So the listening sockets are plain readers of the event loop;
each accepted connection is fingerprinted, and a request already waiting in
it is answered, logged and closed in the same callback, with no event-loop
transport, timer or task (``Connection.accepted``, ``AcceptTransport``).
Only a connection with more to come (nothing sent yet, a partial head,
keep-alive, CGI, an answer bigger than the socket buffer) is handed to the
event loop, where a bare ``asyncio.Protocol`` (not streams: no task and no
stream objects per connection) serves it.  On ``ab -c 50`` this took the
server's CPU per connection from 125 to 76 us (docs/performance.md).  uvloop
is used when installed.

Nothing is lost: every request that reached us gets exactly one log line,
including junk, TLS handshakes, HTTP/0.9 lines, oversize heads and requests
cut off by a timeout or by the client closing.  Lines are whole strings
written by the one event-loop thread, so they never interleave; they are
written at the end of the event-loop turn that made them, or, when the
server is busy (its last write less than ``FLUSH_DELAY``, 5 ms, ago), up to
5 ms later together with the lines of that time, and flushed on exit and on
SIGHUP.
"""

from __future__ import annotations

import _socket  # accepted sockets: the C socket type, no Python __init__ per connection
import asyncio
import errno
import fcntl
import ipaddress
import json
import os
import re
import select
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import IO

from . import kernel
from .errors import MalformedSyn, TcpfpError
from .fields import SCALAR_FIELDS, Observation, environment, render
from .httpwire import (BadRequest, Limits, RequestHead, host_without_port, read_head, request_line_of,
                       skip_blank_lines)
from .logformat import AccessRecord, LogFormat
from .oslabel import Labeler
from .rules import RuleSet
from .syn import parse_syn
from .tcpinfo import TcpInfo, parse_tcp_info

SERVER_NAME = "tcpfp"
_NO_HEADERS: dict = {}  # shared, never written to
REASONS = {
    200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
    411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
    500: "Internal Server Error", 503: "Service Unavailable", 505: "HTTP Version Not Supported",
}
#: The status logged for a connection a ``close`` rule dropped unanswered (nginx's 444).
DROPPED = 444
_LAST_SEND = socket.MSG_DONTWAIT | socket.MSG_MORE  # see AcceptTransport.write
_LINE_ENDS = frozenset(b"\r\n")  # a buffer starting with one of these may start with empty lines
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
#: A busy server writes its log at most once per FLUSH_DELAY, many lines per ``write``;
#: a quiet one writes each line at once.  SIGTERM, SIGINT and SIGHUP flush at once.
FLUSH_DELAY = 0.005
#: One read at accept takes whatever request is already waiting.
RECEIVE_SIZE = 65536
#: Connections taken per wake-up of a listening socket, before other work gets its turn.
ACCEPT_BATCH = 128
#: After EMFILE and its kind, accepting pauses this long (the queue keeps the clients).
ACCEPT_RETRY_DELAY = 1.0
#: Log bytes held while the log cannot be written (a full disk, a gone reader), for when it can.
LOG_BACKLOG = 1 << 20
#: The mode of a log file the server creates (the umask may take more away).
LOG_MODE = 0o644


class StartupError(TcpfpError):
    """The server cannot start: a port in use, no right to bind, a bad option."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        self.errno = errno  # the OS error behind it, if any
        super().__init__(message)


@dataclass
class ServerConfig:
    listen: list[tuple[str, int]]
    log_format: LogFormat
    log_path: str | None = None  # None: stdout
    saved_syn: bool = True
    tcp_info: bool = True
    body: bytes | None = None  # a fixed body instead of the fingerprint
    cgi_dir: Path | None = None
    env_vars: bool = False
    env_tcp_info: bool = False
    env_saved_syn: bool = False
    limits: Limits = field(default_factory=Limits)
    request_timeout: float = 20.0  # to receive a whole request head (slowloris)
    keepalive_timeout: float = 5.0  # idle time between requests
    max_connections: int = 10000
    max_body: int = 1 << 20
    cgi_timeout: float = 10.0
    cgi_max_output: int = 1 << 20
    shutdown_timeout: float = 5.0
    user: str | None = None
    backlog: int = 4096
    workers: int = 1  # processes sharing the port (SO_REUSEPORT)
    labeler: Labeler | None = None  # FINGERPRINT_OS from signature databases
    deny: RuleSet | None = None  # --deny rules (docs/blocking.md)
    deny_dry_run: bool = False  # log what the rules match, block nothing


# --------------------------------------------------------------------------- sockets


def parse_listen(text: str) -> tuple[str, int]:
    """``0.0.0.0:80``, ``[::1]:8080`` or ``:80`` -> (address, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise StartupError(f"--listen {text!r}: expected ADDR:PORT, e.g. 0.0.0.0:80 or [::1]:8080")
    host = host.strip("[]") or "::"
    return host, int(port)


def open_listener(host: str, port: int, backlog: int, *, reuse_port: bool = False) -> tuple[socket.socket, bool]:
    """A listening socket with TCP_SAVE_SYN set before listen(); (socket, saves SYNs).

    The default, ``[::]``, also takes IPv4; on a host or namespace without
    IPv6 it falls back to ``0.0.0.0``, with a warning, rather than not start.
    """
    if host in ("::", ""):
        try:
            return _open_listener("::", port, backlog, reuse_port)
        except StartupError as error:
            if error.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            print(f"tcpfp: warning: no IPv6 here ({error}); listening on 0.0.0.0:{port}",
                  file=sys.stderr)
            return _open_listener("0.0.0.0", port, backlog, reuse_port)
    return _open_listener(host, port, backlog, reuse_port)


def _open_listener(host: str, port: int, backlog: int, reuse_port: bool) -> tuple[socket.socket, bool]:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # as --listen takes it
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartupError(f"cannot listen on {where}: {error.strerror}") from None
    family, _, _, _, address = infos[0]
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise StartupError(f"cannot listen on {where}: {error.strerror}", error.errno) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # also accept IPv4
        saves = kernel.enable_save_syn(sock)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise StartupError(f"cannot listen on {where}: address already in use",
                               error.errno) from None
        if error.errno == errno.EACCES:
            raise StartupError(
                f"cannot listen on {where}: permission denied (ports below 1024 need root "
                "or CAP_NET_BIND_SERVICE)", error.errno) from None
        raise StartupError(f"cannot listen on {where}: {error.strerror}", error.errno) from None
    sock.setblocking(False)
    return sock, saves


def drop_privileges(user: str) -> None:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartupError(f"--user {user!r}: no such user") from None
    if os.geteuid() != 0 and os.getuid() == os.geteuid() == entry.pw_uid:
        return  # already that user: a worker that the parent of --workers started again
    try:
        os.setgroups([])  # root's supplementary groups go too; then the group, then the user
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except PermissionError:
        raise StartupError(f"--user {user!r}: only root can become another user") from None


# --------------------------------------------------------------------------- the log


class AccessLog:
    """Whole lines, at most one write per ``FLUSH_DELAY`` when busy, flushed on exit; SIGHUP reopens.

    Each flush is one ``write`` to a file opened with O_APPEND, which Linux
    never interleaves with another process's write to the same file, so
    workers can share a log.  A pipe or socket (stdout) only guarantees that
    for writes of up to PIPE_BUF bytes, and any client can make a longer line,
    so workers that share stdout take turns (``_write_shared_stdout``).

    A log that cannot be written (a full disk, a reader of stdout that has
    gone) does not stop the server and gives no traceback: one line on stderr
    says so, up to ``LOG_BACKLOG`` bytes of lines wait for the log to take
    them again (each flush tries), and one line says when it does and how
    many lines were lost.  The rest of a short write (the disk filled in the
    middle of a line) is what the next successful write starts with, so a
    line cut there is finished, never glued to the start of another.
    """

    def __init__(self, path: str | None, shared: bool = False, fallback: IO[bytes] | None = None,
                 no_symlink: bool = False) -> None:
        self.path = path
        self.shared = shared
        self.no_symlink = no_symlink  # --user: root must not follow a link the user may have made
        try:
            self.stream: IO[bytes] = self._open()
        except StartupError as error:
            if fallback is None:
                raise
            # A worker that the parent of --workers --user started again, unprivileged:
            # it writes to the log the parent opened as root, until a SIGHUP.
            print(f"tcpfp: {error}; writing to the log file the parent holds", file=sys.stderr)
            self.stream = fallback
        else:
            if fallback is not None and path is not None:
                fallback.close()  # this process's copy: it would keep a rotated file open
        self.pending: list[str] = []
        self.lines = 0
        self.written = 0.0  # time.monotonic() of the last write
        self.held = b""  # bytes the log refused, to write first; may start mid-line
        self.held_mid_line = False  # the log holds the start of held's first line
        self.lost = 0  # lines dropped while the log failed (over LOG_BACKLOG)
        self.failure: str | None = None  # why the log cannot be written now

    def _open(self) -> IO[bytes]:
        if self.path is None:
            return sys.stdout.buffer
        try:
            # Created 0644 (less under a stricter umask): never writable by others, whatever
            # the umask a service manager gave us; an existing file keeps its mode.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            if self.no_symlink:  # and no FIFO, whose open would wait for a reader: a regular file
                flags |= os.O_NOFOLLOW | os.O_NONBLOCK
            fd = os.open(self.path, flags, LOG_MODE)
            if self.no_symlink:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise StartupError(f"cannot open log {self.path}: --user needs a regular file there")
                os.set_blocking(fd, True)
            return open(fd, "ab", buffering=0)
        except OSError as error:
            if error.errno == errno.ENXIO and self.no_symlink:
                raise StartupError(f"cannot open log {self.path}: --user needs a regular file there") from None
            if error.errno == errno.ELOOP and self.no_symlink:
                raise StartupError(f"cannot open log {self.path}: it is a symbolic link, which --user "
                                   "refuses (the user could point it at any file root writes)") from None
            raise StartupError(f"cannot open log {self.path}: {error.strerror}") from None

    def write(self, line: str) -> None:
        if not self.pending:
            # A quiet server writes the line at the end of this loop turn; a busy one
            # (a write less than FLUSH_DELAY ago) collects lines until FLUSH_DELAY has passed.
            wait = self.written + FLUSH_DELAY - time.monotonic()
            loop = asyncio.get_running_loop()
            if wait <= 0:
                loop.call_soon(self.flush)
            else:
                loop.call_later(wait, self.flush)
        self.pending.append(line)

    def flush(self) -> None:
        if not self.pending and not self.held:
            return
        self.written = time.monotonic()
        data = ("\n".join(self.pending) + "\n").encode("utf-8", "surrogateescape") if self.pending else b""
        self.lines += len(self.pending)
        self.pending.clear()
        data, self.held = self.held + data, b""
        if self.shared and self.path is None:
            self._write_shared_stdout(data)
        else:
            self._write_all(data)

    def _write_shared_stdout(self, data: bytes) -> None:
        """Write while holding a POSIX lock on stdout, which one process holds at a time.

        Without it, a line longer than PIPE_BUF (8 KiB of request line is 32 KiB
        escaped) was cut at the pipe's page boundaries with other workers' lines
        in between, and its rest began a line of its own.  A stdout that takes
        no lock still gets whole lines of up to PIPE_BUF bytes.
        """
        fd = self.stream.fileno()
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
        except OSError:
            self._write_in_pipe_chunks(data)
            return
        try:
            self._write_in_pipe_chunks(data)
        finally:
            try:
                fcntl.lockf(fd, fcntl.LOCK_UN)
            except OSError:
                pass

    def _write_all(self, data: bytes, then: bytes = b"") -> bool:
        """Write all of ``data``, continuing short writes; hold what the log refuses, and ``then``."""
        fd = self.stream.fileno()
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(fd, view[done:])
        except OSError as error:
            self._hold(error, data[done:] + then, data[done - 1] != 0x0A if done else self.held_mid_line)
            return False
        self.held_mid_line = False
        if self.failure is not None:
            lost = f"; {self.lost} lines were lost" if self.lost else ""
            print(f"tcpfp: the access log is written again{lost}", file=sys.stderr)
            self.failure, self.lost = None, 0
        return True

    def _hold(self, error: OSError, rest: bytes, mid_line: bool) -> None:
        """Keep ``rest`` (whole lines dropped first over LOG_BACKLOG bytes) and say once why."""
        if len(rest) > LOG_BACKLOG:
            keep = rest.find(b"\n") + 1 if mid_line else 0  # the end of a line begun in the log
            drop_to = rest.find(b"\n", len(rest) - LOG_BACKLOG) + 1
            if drop_to > keep:
                self.lost += rest.count(b"\n", keep, drop_to)
                rest = rest[:keep] + rest[drop_to:]
        self.held, self.held_mid_line = rest, mid_line
        if self.failure is None:
            self.failure = error.strerror or str(error)
            print(f"tcpfp: cannot write the access log {self.path or 'to stdout'}: {self.failure}; "
                  f"holding up to {LOG_BACKLOG >> 10} KiB of lines until it can", file=sys.stderr)

    def _write_in_pipe_chunks(self, data: bytes) -> None:
        start = 0
        while start < len(data):
            end = data.rfind(b"\n", start, start + select.PIPE_BUF) + 1
            if end <= start:  # one line longer than PIPE_BUF: write it alone
                end = data.index(b"\n", start) + 1
            if not self._write_all(data[start:end], data[end:]):
                return
            start = end

    def reopen(self) -> None:
        self.flush()
        if self.path is None:
            return
        try:
            new = self._open()
        except StartupError as error:
            print(f"tcpfp: {error} (keeping the old log file)", file=sys.stderr)
            return
        old, self.stream = self.stream, new
        if self.held_mid_line:  # the start of that line is in the old file: end it there
            end = self.held.find(b"\n") + 1
            try:
                os.write(old.fileno(), self.held[:end])  # one try: it failed a moment ago
            except OSError:
                self.lost += 1  # the old file keeps a cut line; the new one starts clean
            self.held = self.held[end:]
            self.held_mid_line = False
        old.close()

    def close(self) -> None:
        self.flush()
        if self.held:
            unwritten = self.held.count(b"\n") + self.lost
            print(f"tcpfp: {unwritten} access log lines could not be written ({self.failure})",
                  file=sys.stderr)
            self.held = b""
        if self.path is not None:
            self.stream.close()


# --------------------------------------------------------------------------- responses

_date_cache: list = [0, ""]


def http_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0], _date_cache[1] = now, formatdate(now, usegmt=True)
    return _date_cache[1]


def fingerprint_body(obs: Observation, as_json: bool) -> bytes:
    """What the server saw of this connection, for the client to read."""
    if as_json:
        return (json.dumps({f.name: f.read(obs) for f in SCALAR_FIELDS}) + "\n").encode()
    return "".join(f"{f.name} {render(f, obs)}\n" for f in SCALAR_FIELDS).encode()


#: (status, content type, length, keep-alive) -> (the Date it was made with, the head); bounded.
_heads: dict[tuple, tuple[str, bytes]] = {}
_HEADS_KEPT = 256


#: Statuses whose answers never carry a body (RFC 9110 15.3.5, 15.4.5); a CGI script may send them.
BODILESS = frozenset({204, 304})


def response_head(status: int, content_type: str, length: int, keep_alive: bool,
                  extra: list[tuple[str, str]] = ()) -> bytes:
    """The status line and headers, with the empty line.  Without ``extra`` the head only
    changes with the Date, once a second, so it is kept and reused until then."""
    if extra:
        return _make_head(status, content_type, length, keep_alive, extra)
    key = (status, content_type, length, keep_alive)
    date = http_date()
    kept = _heads.get(key)
    if kept is not None and kept[0] is date:
        return kept[1]
    head = _make_head(status, content_type, length, keep_alive, ())
    if kept is not None or len(_heads) < _HEADS_KEPT:
        _heads[key] = (date, head)
    return head


def _reason(status: int) -> str:
    try:
        return REASONS.get(status) or HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _make_head(status: int, content_type: str, length: int, keep_alive: bool,
               extra: list[tuple[str, str]] | tuple = ()) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_reason(status)}",
        f"Date: {http_date()}",
        f"Server: {SERVER_NAME}",
        f"Content-Length: {length}",
        f"Content-Type: {content_type}",
        "Connection: keep-alive" if keep_alive else "Connection: close",
    ]
    if status in BODILESS:
        del lines[3]  # RFC 9110 8.6: no Content-Length in a 204; a 304's would describe another body
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --------------------------------------------------------------------------- connections


class AcceptTransport:
    """The transport of a connection that the accept callback is still serving.

    It writes straight to the accepted socket.  Once the connection is being
    handed to the event loop, what the connection writes, closes or aborts
    meanwhile is kept and replayed on the loop's transport, in order.
    """

    __slots__ = ("sock", "state", "pending", "close_asked", "abort_asked", "held")
    DIRECT, HANDING_OVER, CLOSED = range(3)

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.state = self.DIRECT
        self.pending = bytearray()  # written, not yet sent
        self.close_asked = False
        self.abort_asked = False
        self.held = False  # the last answer was sent with MSG_MORE: close() must push it

    def write(self, data: bytes, last: bool = False) -> None:
        """Send ``data`` now, or keep what the socket cannot take for the event loop.

        ``last``: the connection is closed right after, in this callback.  The
        kernel then holds the data (MSG_MORE) and ``close`` sends it with the FIN
        in one segment (``shutdown``, then ``close``): one packet fewer for both
        ends of every short connection.  ``shutdown`` first, because a ``close``
        with unread input (a client that sent more than we read) resets the
        connection and would drop data still held; after ``shutdown`` the
        answer has left, as it would have without MSG_MORE.
        """
        if self.state != self.DIRECT or self.pending:
            if self.state != self.CLOSED:
                self.pending += data
            return
        try:
            sent = self.sock.send(data, _LAST_SEND if last else socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:  # the client is gone; its request is logged all the same
            self.abort()
            return
        if sent < len(data):
            self.pending += data[sent:]  # the event loop sends the rest
        elif last:
            self.held = True

    def close(self) -> None:
        if self.state == self.DIRECT and not self.pending:
            self.state = self.CLOSED
            if self.held:
                try:
                    self.sock.shutdown(socket.SHUT_WR)  # the held answer and the FIN leave now
                except OSError:
                    pass
            self.sock.close()
        else:
            self.close_asked = True

    def abort(self) -> None:
        if self.state == self.DIRECT:
            self.state = self.CLOSED
            self.pending.clear()
            self.sock.close()
        elif self.state == self.HANDING_OVER:
            self.abort_asked = True

    def reset(self) -> None:
        """Close with a RST, not a FIN."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        except OSError:
            pass  # then close() sends FIN, or RST if the request already arrived
        self.abort()

    def is_closing(self) -> bool:
        return self.state == self.CLOSED or self.close_asked or self.abort_asked

    def get_write_buffer_size(self) -> int:
        return len(self.pending)

    def finished(self) -> bool:
        return self.state == self.CLOSED

    def hand_over(self) -> socket.socket:
        """The socket, for the event loop to take; from now on everything is kept for ``replay``."""
        self.state = self.HANDING_OVER
        family = self.sock.family
        return socket.socket(family, socket.SOCK_STREAM, 0, self.sock.detach())

    def replay(self, transport: asyncio.Transport) -> None:
        if self.pending:
            transport.write(bytes(self.pending))
            self.pending.clear()
        if self.abort_asked:
            transport.abort()
        elif self.close_asked:
            transport.close()
        self.state = self.CLOSED


def _at_request(obs: Observation, info: TcpInfo) -> Observation:
    """``obs`` with ``info`` as its request-time TCP_INFO (a third cheaper than ``_replace``)."""
    return Observation(*obs[:3], info, *obs[4:])


_ENV_NAME = re.compile(r"[A-Za-z0-9-]+\Z")


def _client_address(address: str) -> str:
    return address[7:] if address.startswith("::ffff:") and "." in address else address


class Connection(asyncio.Protocol):
    """One client connection: fingerprint at accept, then requests until close."""

    __slots__ = (
        "server", "transport", "obs", "remote", "local", "buffer", "requests", "timer", "deadline",
        "sock",
        "started", "busy", "closing", "head", "body_left", "body", "blank_lines",
        "half_closed", "obs_now", "received", "write_paused", "unsent", "seen",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buffer = bytearray()
        self.requests = 0
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0  # loop time when the current request or keep-alive wait times out
        self.busy = False  # a request is being answered (CGI)
        self.closing = False
        self.blank_lines = False  # empty lines arrived, and no request after them yet
        self.half_closed = False  # the client shut its side while a CGI script ran
        self.head: RequestHead | None = None
        self.body_left = 0
        self.body = bytearray()
        self.started = 0.0
        self.obs_now: Observation | None = None  # this callback's request-time observation
        self.received = 0  # bytes of the current request so far, head and body (%I)
        self.write_paused = False  # the client does not read our answers as fast as it asks
        self.unsent = -1  # bytes of answers not sent when the send timer was set (-1: none set)
        self.seen = 0  # the buffer's length when it last held an incomplete head (read_head)

    # -- accept ----------------------------------------------------------------
    def accepted(self, sock: _socket.socket, address: tuple, local: tuple[str, int] | None) -> None:
        """Fingerprint a just-accepted connection, and serve what it already sent.

        A client usually sends its request right behind the handshake, so it is
        often waiting in the socket by now.  Then the request is answered, logged
        and closed here, in the accept callback, with no event-loop transport,
        timer or task at all.  Anything else (nothing sent yet, a partial head,
        keep-alive, a CGI script, an answer too large to send at once) is handed
        to the event loop by ``_hand_over``, and goes on as any connection.
        """
        server = self.server
        config = server.config
        self.transport = direct = AcceptTransport(sock)  # type: ignore[assignment]
        accept_us = time.time_ns() // 1000
        self.sock = sock
        raw_syn = kernel.read_saved_syn(sock) if config.saved_syn else None
        try:
            data: bytes | None = sock.recv(RECEIVE_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            data = None  # nothing sent yet
        except OSError:
            data = b""  # reset before it sent anything
        # TCP_INFO after the read: a request found waiting has arrived by this reading,
        # so it also serves as that request's FINGERPRINT_REQ_* reading (``_observation``).
        raw_info = kernel.read_tcp_info(sock) if config.tcp_info else None
        fingerprint = None
        if raw_syn is not None:
            try:
                fingerprint = parse_syn(raw_syn)
            except MalformedSyn:
                fingerprint = None  # logged with '-' fields; the hex is kept
        labeler = config.labeler
        self.obs = Observation(
            fingerprint, raw_syn, parse_tcp_info(raw_info) if raw_info else None, None, accept_us,
            labeler.label(fingerprint) if labeler is not None and fingerprint is not None else None,
        )
        if local is None:  # a wildcard listener: ask which of our addresses the client reached
            try:
                here = sock.getsockname()
            except OSError:
                here = ("-", 0)
            local = (_client_address(here[0]), here[1])
        self.remote = (_client_address(address[0]), address[1])
        self.local = local
        deny = config.deny
        if deny is not None and (rule := deny.at_accept(self.obs)) is not None:
            self.obs = self.obs._replace(deny=rule)
            if rule.action == "close" and not config.deny_dry_run:
                self._drop(data)
                return
        if len(server.connections) >= config.max_connections:
            if data:
                self._refuse(data)
            else:
                direct.abort()  # no request reached us: nothing to answer or log
            return
        if data == b"":  # closed or reset before it sent anything (a connect-only scan): no request
            direct.close()
            return
        self.started = time.time()
        if data:
            if server.wants_now and raw_info:
                self.obs_now = _at_request(self.obs, self.obs.tcp_info)
            self.data_received(data)
            self.obs_now = None
        if direct.finished():
            # Answered and closed here, or the client reset while we answered: nothing is
            # left for the event loop.  A request it had only begun still gets its line.
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self._log_unfinished(400)
            self.closing = True
            return
        if self.timer is None and not self.busy:  # keep-alive armed its own; CGI has --cgi-timeout
            self._arm(config.request_timeout)
        server.connections.add(self)
        # The event loop's transport owns the socket from now on; we keep the object to read
        # TCP_INFO through (once the transport closes it, reads fail and give '-').
        self.sock = direct.hand_over()
        asyncio.get_running_loop().create_task(self._hand_over(self.sock))

    async def _hand_over(self, sock: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: self, sock)
        except (OSError, ValueError):
            sock.close()
            self.connection_lost(None)

    def _refuse(self, data: bytes) -> None:
        """Over --max-connections, with a request already read: answer it 503 and log it
        (nothing that reached the server goes unlogged), but keep nothing open."""
        self.started = time.time()
        limits = self.server.config.limits
        data = data.lstrip(b"\r\n")  # empty lines before a request are no part of it
        try:
            found = read_head(data, limits)
        except BadRequest:
            found = None
        head: RequestHead | None = found[0] if found is not None else None
        line = head.request_line if head is not None else request_line_of(data, limits.line_bytes)
        body = b"503 Service Unavailable: too many connections\n"
        out = self._write_error(503, body)
        self.received = len(data)
        self._log(line, head, 503, len(body), out=out)
        self.closing = True
        self.transport.close()

    def _drop(self, data: bytes | None) -> None:
        """A ``close`` rule matched: reset the connection without answering it, and log that,
        with the first line of what it had already sent (the accept's one read), if anything."""
        self.closing = True
        self.started = time.time()
        self.transport.reset()
        line = b"-"
        if data:
            line = request_line_of(data, self.server.config.limits.line_bytes) or b"-"
            self.received = len(data)
        self._log(line, None, DROPPED, 0, self.obs)

    # -- asyncio callbacks (after the hand-over) ------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        direct, self.transport = self.transport, transport  # type: ignore[assignment]
        direct.replay(transport)
        if self.server.stopping and not self.busy and self.head is None and not self.buffer:
            self.closing = True
            transport.close()  # idle, and the server began to stop during the hand-over

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        # The next request on a kept-alive connection starts (the first one's clock
        # was set at accept).  Its request timeout only matters if it is still
        # incomplete once what arrived has been read.
        starts = self.requests and not self.buffer and self.head is None
        if starts:
            self.started = time.time()
        self.buffer += data
        if not self.busy:
            self._process()
        elif len(self.buffer) > RECEIVE_SIZE and type(self.transport) is not AcceptTransport:
            # A script is answering: hold what comes next in the kernel, not in memory.
            self.transport.pause_reading()
        if starts and not self.closing and not self.busy and (self.buffer or self.head is not None):
            self._arm(self.server.config.request_timeout)

    def eof_received(self) -> bool:
        if self.busy:  # a CGI script is answering: keep the socket open to write it
            self.half_closed = True
            return True
        self._log_unfinished(400)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._log_unfinished(400)
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        if not self.busy:  # a script still answering keeps the slot until it ends (_run_cgi)
            self.server.connections.discard(self)
        self.server.idle_check()

    def pause_writing(self) -> None:
        """Answers pile up unsent (pipelining without reading): read and answer no more until
        they leave, and cut the connection off if they stop leaving (``_arm_send``)."""
        self.write_paused = True
        self.transport.pause_reading()
        self._arm_send()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.closing:
            return
        self.transport.resume_reading()
        if not self.busy:
            self._process()

    def _arm_send(self) -> None:
        """Time out in --request-timeout unless what is unsent now is leaving by then."""
        self.unsent = self.transport.get_write_buffer_size()
        self._arm(self.server.config.request_timeout)

    # -- request handling --------------------------------------------------
    def _arm(self, delay: float) -> None:
        """Time the connection out ``delay`` seconds from now.

        One timer per connection, not one per request: a timer that fires before
        the deadline (which later requests moved on) sets itself again for it.  Only
        a deadline earlier than the timer's replaces the timer.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        self.deadline = deadline
        timer = self.timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self.timer = loop.call_at(deadline, self._timeout)

    def _timeout(self) -> None:
        self.timer = None
        if self.busy:  # a CGI script is answering: --cgi-timeout bounds it, and its answer re-arms
            return
        loop = asyncio.get_running_loop()
        if self.deadline > loop.time():  # requests since the timer was set moved the deadline on
            self.timer = loop.call_at(self.deadline, self._timeout)
            return
        unsent = self.transport.get_write_buffer_size()
        if unsent and (self.unsent < 0 or unsent < self.unsent):  # the client reads, if slowly
            self._arm_send()
            return
        self._log_unfinished(408)
        self.closing = True
        if unsent:  # a client that reads nothing is not waited for: close() would wait forever
            self.transport.abort()
        else:
            self.transport.close()

    def _log_unfinished(self, status: int) -> None:
        """A request that started arriving but never completed still gets its line,
        and, if the client can still read, its 400 or 408 answer.  Only empty
        lines (a bare newline) count as a request that started, too."""
        if self.closing or self.busy:
            return
        if self.write_paused and self.head is None:
            self._log_waiting_requests(status)
        if self.head is not None:
            head, self.head = self.head, None
            line, head_or_none = head.request_line, head
        elif self.buffer or self.blank_lines:
            text = bytes(self.buffer)
            line = request_line_of(text, self.server.config.limits.line_bytes)
            head_or_none = None
            self.received = len(text)
            self.buffer.clear()
        else:
            return
        self.blank_lines = False
        self.closing = True
        body = f"{status} {REASONS[status]}\n".encode()
        sent = out = 0
        if not self.transport.is_closing() and not self.write_paused:  # paused: it reads nothing
            sent, out = len(body), self._write_error(status, body)
        self._log(line, head_or_none, status, sent, out=out)
        self.transport.close()

    def _log_waiting_requests(self, status: int) -> None:
        """Whole requests pipelined behind answers the client did not read (reading was
        paused) each get their own line, unanswered, with ``status``; what is left (a
        partial or malformed request) is for the caller to log."""
        limits = self.server.config.limits
        while self.buffer:
            if self.buffer[0] in _LINE_ENDS and (blank := skip_blank_lines(self.buffer)):
                del self.buffer[:blank]
                continue
            try:
                found = read_head(self.buffer, limits)
            except BadRequest:
                return
            if found is None:
                return
            head, end = found
            if head.content_length > len(self.buffer) - end:
                return  # its body did not all arrive
            del self.buffer[: end + head.content_length]
            self.received = end + head.content_length
            self._log(head.request_line, head, status, 0)

    def _process(self) -> None:
        config = self.server.config
        while not self.closing and not self.busy and not self.write_paused:
            if self.head is not None:  # reading a body
                take = min(self.body_left, len(self.buffer))
                if take:
                    if self.server.runs_script(self.head):  # any other body is dropped as it comes
                        self.body += self.buffer[:take]
                    del self.buffer[:take]
                    self.received += take
                    self.body_left -= take
                if self.body_left:
                    return
                head, self.head = self.head, None
                self._respond(head)
                continue
            if not self.buffer:
                return
            if self.buffer[0] in _LINE_ENDS and (blank := skip_blank_lines(self.buffer)):
                del self.buffer[:blank]  # empty lines before a request are ignored...
                self.blank_lines = True  # ...unless nothing follows them
                if not self.buffer:
                    return
            if self.buffer == b"\r":  # an empty line's CR, its LF in the next segment
                return
            try:
                found = read_head(self.buffer, config.limits, self.seen)
            except BadRequest as error:
                self.received = len(self.buffer)
                self.buffer.clear()
                self._reject(error)
                return
            if found is None:
                self.seen = len(self.buffer)  # only appended to until the next look
                return  # the rest of the head is still to come
            self.seen = 0
            head, end = found
            del self.buffer[:end]
            self.received = end
            self.blank_lines = False
            if head.content_length > config.max_body:
                self._finish(head, 413, b"request body too large\n", "text/plain", False, self.obs)
                return
            if head.content_length:
                self.head, self.body_left = head, head.content_length
                self.body = bytearray()
                continue
            self._respond(head)

    def _reject(self, error: BadRequest) -> None:
        body = f"{error.status} {REASONS.get(error.status, '')}: {error.reason}\n".encode()
        out = self._write_error(error.status, body)
        self._log(error.request_line, None, error.status, len(body), out=out)
        self.closing = True
        self.transport.close()

    def _respond(self, head: RequestHead) -> None:
        server = self.server
        obs = self._observation()  # one TCP_INFO reading per request, for body, CGI and log
        deny = server.config.deny
        if deny is not None:
            if deny.request_time and (obs.deny is None or obs.deny.action == "403"):
                obs = obs._replace(deny=deny.at_request(obs))
            if obs.deny is not None and obs.deny.action == "403" and not server.config.deny_dry_run:
                self._finish(head, 403, b"403 Forbidden\n", "text/plain", False, obs)
                return
        if server.runs_script(head):
            self.busy = True
            if self.timer is not None:
                self.timer.cancel()  # the script has --cgi-timeout, not the request timeout
                self.timer = None
            server.run_script(self._run_cgi(head, obs))
            return
        keep_alive = head.keep_alive and not head.chunked and not server.stopping
        if server.body is not None:
            body, ctype = server.body, server.body_type
        else:
            as_json = b"application/json" in head.headers.get("accept", b"")
            body = fingerprint_body(obs, as_json)
            ctype = "application/json" if as_json else "text/plain; charset=utf-8"
        self._finish(head, 200, body, ctype, keep_alive, obs)

    def _observation(self) -> Observation:
        """The connection's observation, with TCP_INFO read again now if anything uses it."""
        if self.obs_now is not None:  # served at accept: TCP_INFO was read after the request arrived
            return self.obs_now
        server = self.server
        if server.wants_now and server.config.tcp_info and not self.transport.is_closing():
            raw = kernel.read_tcp_info(self.sock)  # None once the socket is gone
            if raw:
                return _at_request(self.obs, parse_tcp_info(raw))
        return self.obs

    def _finish(self, head: RequestHead, status: int, body: bytes, ctype: str, keep_alive: bool,
                obs: Observation, extra: list[tuple[str, str]] = ()) -> None:
        send_body = head.method != b"HEAD" and status not in BODILESS
        answer = response_head(status, ctype, len(body), keep_alive, extra) + (body if send_body else b"")
        if keep_alive:
            self.transport.write(answer)
        else:
            self._write_last(answer)
        sent_headers = _NO_HEADERS
        if self.server.logs_response_headers:  # %{Header}o: what we answered
            sent_headers = {"content-type": ctype, "content-length": str(len(body)),
                            "connection": "keep-alive" if keep_alive else "close",
                            "server": SERVER_NAME} | {k.lower(): v for k, v in extra}
            if status in BODILESS:
                del sent_headers["content-length"]
        self._log(head.request_line, head, status, len(body) if send_body else 0, obs, sent_headers,
                  len(answer), keep_alive)
        self.requests += 1
        if keep_alive:
            if self.write_paused:
                self._arm_send()
            else:
                self._arm(self.server.config.keepalive_timeout)
        else:
            self.closing = True
            self.transport.close()
            if self.transport.get_write_buffer_size():
                self._arm_send()

    def _write_error(self, status: int, body: bytes) -> int:
        """Write a plain-text error answer as the connection's last; its length (%O)."""
        answer = response_head(status, "text/plain", len(body), False) + body
        self._write_last(answer)
        return len(answer)

    def _write_last(self, answer: bytes) -> None:
        """Write the connection's last answer; the caller closes the transport right after."""
        if type(self.transport) is AcceptTransport:
            self.transport.write(answer, last=True)
        else:
            self.transport.write(answer)

    def _log(self, request_line: bytes, head: RequestHead | None, status: int, sent: int,
             obs: Observation | None = None, sent_headers: dict = _NO_HEADERS, out: int = 0,
             kept_alive: bool = False) -> None:
        """One log line.  ``sent``: body bytes (%b); ``out``: the whole answer (%O);
        ``kept_alive``: the connection waits for another request (%X)."""
        now = time.time()
        if obs is None:
            obs = self._observation()
        env = _NO_HEADERS
        if self.server.logs_env:  # %{VAR}e: the FINGERPRINT_* variables a CGI script would see
            config = self.server.config
            env = environment(obs, scalars=config.env_vars, tcp_info=config.env_tcp_info,
                              saved_syn=config.env_saved_syn)
        started = self.started or now
        remote, local = self.remote, self.local
        # Positional, in AccessRecord's field order: the hot path of every request.
        if head is not None:
            record = AccessRecord(
                remote[0], remote[1], local[0], local[1], started, request_line,
                head.method, head.path, head.query, head.version, status, sent,
                int((now - started) * 1e6), self.requests, head.headers, sent_headers, env, obs,
                self.received, out, kept_alive,
            )
        else:
            record = AccessRecord(
                remote[0], remote[1], local[0], local[1], started, request_line,
                None, None, None, None, status, sent,
                int((now - started) * 1e6), self.requests, _NO_HEADERS, sent_headers, env, obs,
                self.received, out, kept_alive,
            )
        self.received = 0
        self.server.log.write(self.server.config.log_format.write(record))

    # -- CGI -----------------------------------------------------------------
    async def _run_cgi(self, head: RequestHead, obs: Observation) -> None:
        from .cgiscript import run_cgi

        server = self.server
        given, self.body = bytes(self.body), bytearray()  # the connection keeps no body
        try:
            status, headers, body = await run_cgi(
                server.cgi_dir, head, given, self._cgi_environment(head, obs),
                timeout=server.config.cgi_timeout, max_output=server.config.cgi_max_output,
            )
        except asyncio.CancelledError:  # the server stops: the script was killed; log the request
            status, headers, body = 503, [], b"503 Service Unavailable: the server is stopping\n"
        except Exception as error:  # a failing script must not take the server down
            print(f"tcpfp: CGI {head.path!r}: {error}", file=sys.stderr)
            status, headers, body = 500, [], b"CGI script failed\n"
        self.busy = False
        if (type(self.transport) is not AcceptTransport and not self.closing and not self.write_paused
                and not self.transport.is_closing()):
            self.transport.resume_reading()  # paused (data_received) while the script ran
        if self.closing or self.transport.is_closing():
            self._log(head.request_line, head, status, 0, obs)  # the client left meanwhile
            server.connections.discard(self)  # its slot, kept while the script ran
            return
        ctype = next((v for k, v in headers if k.lower() == "content-type"), "text/plain")
        extra = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length", "status")]
        keep_alive = head.keep_alive and not head.chunked and not server.stopping and not self.half_closed
        self._finish(head, status, body, ctype, keep_alive, obs, extra)
        if self.buffer and not self.closing:
            self._process()
        if self.half_closed and not self.closing:
            self.closing = True
            self.transport.close()
        server.idle_check()

    def _cgi_environment(self, head: RequestHead, obs: Observation) -> dict[str, str]:
        config = self.server.config
        env = {
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_SOFTWARE": SERVER_NAME,
            "SERVER_PROTOCOL": head.version.decode("ascii"),
            "SERVER_NAME": host_without_port(head.headers.get("host", b"")).decode("latin-1") or self.local[0],
            "SERVER_ADDR": self.local[0],
            "SERVER_PORT": str(self.local[1]),
            "REMOTE_ADDR": self.remote[0],
            "REMOTE_PORT": str(self.remote[1]),
            "REQUEST_METHOD": head.method.decode("ascii"),
            "REQUEST_URI": head.target.decode("utf-8", "surrogateescape"),  # the bytes as received
            "QUERY_STRING": head.query[1:].decode("utf-8", "surrogateescape"),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }
        if head.content_length:
            env["CONTENT_LENGTH"] = str(head.content_length)
        if "content-type" in head.headers:
            env["CONTENT_TYPE"] = head.headers["content-type"].decode("utf-8", "surrogateescape")
        for name, value in head.headers.items():
            # Only letters, digits and '-' (as Apache): 'X_Forwarded_For' must not pass for
            # 'X-Forwarded-For'.  'Proxy' never becomes HTTP_PROXY (httpoxy).
            if name not in ("content-type", "content-length", "proxy") and _ENV_NAME.match(name):
                env["HTTP_" + name.upper().replace("-", "_")] = value.decode("utf-8", "surrogateescape")
        if config.env_vars or config.env_tcp_info or config.env_saved_syn:
            env.update(environment(obs, scalars=config.env_vars, tcp_info=config.env_tcp_info,
                                   saved_syn=config.env_saved_syn))
        return env


# --------------------------------------------------------------------------- the server


def open_listeners(config: ServerConfig, *, reuse_port: bool = False) -> list[socket.socket]:
    """Every listening socket of the configuration, TCP_SAVE_SYN set before listen()."""
    sockets: list[socket.socket] = []
    warned = False
    try:
        for host, port in config.listen:
            sock, saves = open_listener(host, port, config.backlog, reuse_port=reuse_port)
            sockets.append(sock)
            if not saves and config.saved_syn and not warned:
                print("tcpfp: warning: this kernel cannot save SYNs (TCP_SAVE_SYN); "
                      "SYN fields will be '-'", file=sys.stderr)
                warned = True
    except StartupError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Server:
    """One event loop serving its listening sockets (one per worker process)."""

    def __init__(self, config: ServerConfig, sockets: list[socket.socket],
                 log_fallback: IO[bytes] | None = None) -> None:
        self.config = config
        self.connections: set[Connection] = set()
        self.scripts: set[asyncio.Task] = set()  # CGI requests being answered (``run_script``)
        self.stopping = False
        self.sockets = sockets
        self.cgi_dir = config.cgi_dir
        self.body = config.body
        self.body_type = "text/html; charset=utf-8"
        self.wants_now = config.env_vars or any(
            c.startswith("FINGERPRINT_REQ_") for c in config.log_format.columns) or (
            config.deny is not None and config.deny.request_time)
        letters = {d.letter for d in config.log_format.directives}
        self.logs_response_headers = "o" in letters
        self.logs_env = "e" in letters
        self._stopped: asyncio.Event | None = None
        # The local address of every connection of a listener bound to one address; a
        # wildcard listener's connections each ask the kernel (getsockname).
        self._local: dict[socket.socket, tuple[str, int]] = {}
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            address = ipaddress.ip_address(host.split("%")[0])
            mapped = getattr(address, "ipv4_mapped", None)
            if not (address.is_unspecified or (mapped is not None and mapped.is_unspecified)):
                self._local[sock] = (_client_address(host), port)
        self.log = AccessLog(config.log_path, shared=config.workers > 1, fallback=log_fallback,
                             no_symlink=bool(config.user))
        if config.user:
            drop_privileges(config.user)

    def runs_script(self, head: RequestHead) -> bool:
        return self.cgi_dir is not None and head.path.startswith(b"/cgi-bin/")

    def _accept(self, listener: socket.socket) -> None:
        """Take the waiting connections of a listening socket (it is readable)."""
        accept = listener._accept  # (fd, address), no socket.socket built
        family = listener.family
        local = self._local.get(listener)
        for _ in range(ACCEPT_BATCH):
            try:
                fd, address = accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(listener, error)
                    return
                continue  # ECONNABORTED and its kind: that client is gone, the next may wait
            Connection(self).accepted(_socket.socket(family, socket.SOCK_STREAM, 0, fd), address, local)

    def _pause_accepting(self, listener: socket.socket, error: OSError) -> None:
        print(f"tcpfp: cannot accept: {error.strerror}; pausing accepts for {ACCEPT_RETRY_DELAY:g} s",
              file=sys.stderr)
        loop = asyncio.get_running_loop()
        loop.remove_reader(listener.fileno())

        def resume() -> None:
            if not self.stopping:
                loop.add_reader(listener.fileno(), self._accept, listener)

        loop.call_later(ACCEPT_RETRY_DELAY, resume)

    def run_script(self, answer: Coroutine) -> None:
        """Run a CGI request's coroutine as a task the server waits for when it stops,
        even if its client has gone (its line is still to be written)."""
        task = asyncio.get_running_loop().create_task(answer)
        self.scripts.add(task)

        def done(task: asyncio.Task) -> None:
            self.scripts.discard(task)
            self.idle_check()

        task.add_done_callback(done)

    def idle_check(self) -> None:
        if self.stopping and self._stopped is not None and not self.connections and not self.scripts:
            self._stopped.set()

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)
        self._stopped = asyncio.Event()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.log.reopen)
        # A worker starts with these blocked (``_supervise``): one sent meanwhile is handled now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        if ready:
            ready()
        try:
            await stop.wait()
        finally:
            self.stopping = True
            for sock in self.sockets:
                loop.remove_reader(sock.fileno())
                sock.close()  # new clients are refused, not queued, while we drain
            for conn in list(self.connections):
                if not conn.busy and conn.head is None and not conn.buffer:
                    conn.closing = True
                    conn.transport.close()  # idle keep-alive: nothing in flight
            self.idle_check()
            try:
                await asyncio.wait_for(self._stopped.wait(), self.config.shutdown_timeout)
            except asyncio.TimeoutError:
                scripts = list(self.scripts)
                for task in scripts:
                    task.cancel()  # kills the script; its request is answered 503 and logged
                if scripts:
                    await asyncio.wait(scripts, timeout=5)
                for conn in list(self.connections):
                    conn._log_unfinished(408)
                    conn.transport.abort()
            self.log.close()


def check_limits(config: ServerConfig) -> None:
    """Refuse limits and timeouts no server can work with (a start-up error, not a
    server that answers every request 414 or 503, or fails on every connection)."""
    limits = config.limits
    for name, value in (("--max-line", limits.max_line), ("--max-headers", limits.max_headers),
                        ("--max-connections", config.max_connections)):
        if value < 1:
            raise StartupError(f"{name} {value}: must be at least 1")
    if config.max_connections < config.workers:  # shared out, each worker needs one
        raise StartupError(f"--max-connections {config.max_connections}: fewer than --workers {config.workers}")
    for name, seconds in (("--request-timeout", config.request_timeout),
                          ("--keepalive-timeout", config.keepalive_timeout),
                          ("--cgi-timeout", config.cgi_timeout)):
        if not 0 < seconds < float("inf"):
            raise StartupError(f"{name} {seconds}: expected a number of seconds above 0")


def _runner(loop_name: str) -> Callable:
    if loop_name in ("auto", "uvloop"):
        try:
            import uvloop

            return uvloop.run
        except ImportError:
            if loop_name == "uvloop":
                raise StartupError("--loop uvloop: uvloop is not installed") from None
    if loop_name not in ("auto", "asyncio", "uvloop"):
        raise StartupError(f"--loop {loop_name!r}: expected auto, asyncio or uvloop")
    return asyncio.run


def serve(config: ServerConfig, loop_name: str = "auto") -> None:
    """Run until SIGTERM/SIGINT; raises StartupError before anything is served.

    With ``config.workers`` > 1, each worker is a forked process with its own
    listening sockets on the same addresses (SO_REUSEPORT, so the kernel
    spreads connections), all opened here first so that a start-up error is
    still one line and exit 2.  The parent only forwards signals and waits;
    it keeps the log open (and reopens it on SIGHUP) for a worker it starts
    again once --user has taken root away, which may not open the log itself.
    """
    if config.cgi_dir is not None:
        if not config.cgi_dir.is_dir():
            raise StartupError(f"--cgi-dir {config.cgi_dir}: not a directory")
        from .cgiscript import no_inherited_descriptors

        no_inherited_descriptors()
        if os.geteuid() == 0 and not config.user:
            print("tcpfp: warning: --cgi-dir without --user: scripts run as root", file=sys.stderr)
    if config.workers < 1:
        raise StartupError("--workers must be at least 1")
    check_limits(config)
    runner = _runner(loop_name)
    if config.workers == 1:
        server = Server(config, open_listeners(config))
        runner(server.run())
        return
    # Fail now, not in every worker; kept for a worker started again after --user took root away.
    log = AccessLog(config.log_path, shared=True, no_symlink=bool(config.user))
    per_worker = [open_listeners(config, reuse_port=True) for _ in range(config.workers)]
    config.max_connections = max(1, config.max_connections // config.workers)
    try:
        _supervise(config, per_worker, runner, log)
    finally:
        log.close()


#: The signals the parent of ``--workers`` forwards to its workers.
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _supervise(config: ServerConfig, per_worker: list[list[socket.socket]], runner: Callable,
               log: AccessLog) -> None:
    children: dict[int, int] = {}  # pid -> worker index

    def start(index: int) -> None:
        # Signals wait until the child is in ``children`` (so ``forward`` reaches it) and,
        # in the child, until its event loop handles them (``Server.run`` unblocks them):
        # without this, a SIGTERM then ran the parent's ``forward`` in the child, which went on.
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)  # before the check: none slips between
        pid = -1
        try:
            if stopping:
                return
            pid = os.fork()
            if pid > 0:
                children[pid] = index
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        if pid == 0:
            for signum in _FORWARDED:
                signal.signal(signum, signal.SIG_DFL)
            code = 0
            try:
                for other, sockets in enumerate(per_worker):
                    if other != index:
                        for sock in sockets:
                            sock.close()
                runner(Server(config, per_worker[index], log.stream).run())
            except BaseException as error:  # noqa: BLE001 - a worker must report, then exit
                print(f"tcpfp: worker {index}: {error}", file=sys.stderr)
                code = 1
            finally:
                os._exit(code)

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        elif signum == signal.SIGHUP:
            log.reopen()  # what a worker started again writes to if it cannot open the log
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)
            except ProcessLookupError:
                pass

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    for index in range(len(per_worker)):
        start(index)
    if config.user:
        drop_privileges(config.user)
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None:
            continue
        if os.waitstatus_to_exitcode(status) != 0:
            failed = True
            if not stopping:  # a worker died on its own: replace it, after a pause
                print(f"tcpfp: worker {index} exited with {os.waitstatus_to_exitcode(status)}; "
                      "restarting it", file=sys.stderr)
                time.sleep(1)
                start(index)
                failed = False
    for sockets in per_worker:
        for sock in sockets:
            sock.close()
    if failed:
        raise SystemExit(1)
