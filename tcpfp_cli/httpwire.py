"""HTTP/1.x request heads: bytes -> ``RequestHead`` or ``BadRequest``.  Pure, sans-IO.

The listener faces internet scanners, so the parser's job is to say quickly
and exactly what a request head is, or why it is not one, without ever
waiting for more input than the limits allow.  It follows RFC 9112 and, where
the RFC leaves room, Apache 2.4's defaults (LimitRequestLine 8190,
LimitRequestFields 100, LimitRequestFieldSize 8190, "HttpProtocolOptions
Strict"), so that our status codes and logged request lines match Apache's.

``scan`` looks at the bytes received so far and answers one of: need more,
a complete head (and where it ends), or an error.  Junk is recognised as soon
as the first bytes cannot start a request line (a TLS ClientHello, binary
data), not after a timeout.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import TcpfpError

#: RFC 9110 token characters (a method is a token).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)\Z")
_TOKEN_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_CTL = re.compile(rb"[\x00-\x1f\x7f]")


class Limits(NamedTuple):
    max_line: int = 8190  # request line and each header line, bytes (Apache's default)
    max_headers: int = 100


class BadRequest(TcpfpError):
    """A request head we refuse; ``status`` is the answer, ``request_line`` what to log."""

    def __init__(self, status: int, reason: str, request_line: bytes) -> None:
        self.status = status
        self.reason = reason
        self.request_line = request_line
        super().__init__(f"{status}: {reason}")


class RequestHead(NamedTuple):
    request_line: bytes
    method: bytes
    target: bytes
    path: bytes
    query: bytes  # with its leading "?", or b""
    version: bytes  # b"HTTP/1.1"
    headers: dict[str, bytes]  # lower-case name -> value; repeats joined with ", "
    keep_alive: bool
    content_length: int
    chunked: bool


def _first_line(buffer: bytes) -> bytes:
    end = buffer.find(b"\n")
    line = buffer if end < 0 else buffer[:end]
    return line[:-1] if line.endswith(b"\r") else line


def scan(buffer: bytes, limits: Limits = Limits()) -> int | None:
    """Where the head in ``buffer`` ends (index after its blank line), or None for "need more".

    Raises ``BadRequest`` as soon as the bytes so far cannot become a valid head.
    """
    if buffer[:1] and buffer[0] not in _TOKEN_BYTES:
        raise BadRequest(400, "not an HTTP request", _first_line(buffer))
    line_end = buffer.find(b"\n")
    if line_end < 0:
        if len(buffer) > limits.max_line:
            raise BadRequest(414, "request line too long", buffer[: limits.max_line])
        space = buffer.find(b" ")
        method = buffer if space < 0 else buffer[:space]
        if method and not _TOKEN.match(method):
            raise BadRequest(400, "not an HTTP request", buffer)
        return None
    if line_end > limits.max_line + 1:
        raise BadRequest(414, "request line too long", buffer[: limits.max_line])
    if line_end == 0 or (line_end == 1 and buffer[0] == 13):
        raise BadRequest(400, "empty request line", b"")
    crlf, lf = buffer.find(b"\n\r\n", line_end), buffer.find(b"\n\n", line_end)
    candidates = [e + 3 for e in (crlf,) if e >= 0] + [e + 2 for e in (lf,) if e >= 0]
    if not candidates:
        head = buffer
        if len(head) > limits.max_line * (limits.max_headers + 1):
            raise BadRequest(400, "request header section too large", _first_line(buffer))
        if head.count(b"\n") > limits.max_headers + 1:
            raise BadRequest(400, "too many header fields", _first_line(buffer))
        last_line = head[head.rfind(b"\n") + 1 :]
        if len(last_line) > limits.max_line:
            raise BadRequest(400, "header field too long", _first_line(buffer))
        if _version_missing(_first_line(buffer)):
            # "GET /" and a newline: HTTP/0.9, which has no headers to wait for.
            raise BadRequest(400, "HTTP/0.9 request", _first_line(buffer))
        return None
    return min(candidates)


def _version_missing(line: bytes) -> bool:
    return line.count(b" ") < 2


def parse_head(head: bytes, limits: Limits = Limits()) -> RequestHead:
    """Parse a complete head (as delimited by ``scan``)."""
    lines = head.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    request_line = lines[0]
    parts = request_line.split(b" ")
    if len(parts) != 3:
        reason = "HTTP/0.9 request" if len(parts) < 3 else "malformed request line"
        raise BadRequest(400, reason, request_line)
    method, target, version = parts
    if not _TOKEN.match(method):
        raise BadRequest(400, "bad method", request_line)
    if not target or _CTL.search(target):
        raise BadRequest(400, "bad request target", request_line)
    match = _VERSION.match(version)
    if not match:
        raise BadRequest(400, "bad protocol version", request_line)
    major, minor = int(match[1]), int(match[2])
    if major != 1:
        raise BadRequest(505, "HTTP version not supported", request_line)
    headers: dict[str, bytes] = {}
    count = 0
    for line in lines[1:]:
        if not line:
            continue
        count += 1
        if count > limits.max_headers:
            raise BadRequest(400, "too many header fields", request_line)
        if len(line) > limits.max_line:
            raise BadRequest(400, "header field too long", request_line)
        colon = line.find(b":")
        if colon <= 0 or not _TOKEN.match(line[:colon]):
            raise BadRequest(400, "malformed header field", request_line)
        name = line[:colon].decode("ascii").lower()
        value = line[colon + 1 :].strip(b" \t")
        headers[name] = headers[name] + b", " + value if name in headers else value
    if minor >= 1 and "host" not in headers:
        raise BadRequest(400, "HTTP/1.1 request without Host", request_line)
    connection = headers.get("connection", b"").lower()
    if minor >= 1:
        keep_alive = b"close" not in connection
    else:
        keep_alive = b"keep-alive" in connection
    chunked = b"chunked" in headers.get("transfer-encoding", b"").lower()
    content_length = 0
    if "content-length" in headers and not chunked:
        raw = headers["content-length"]
        if not raw.isdigit() or len(raw) > 18:
            raise BadRequest(400, "bad Content-Length", request_line)
        content_length = int(raw)
    question = target.find(b"?")
    path, query = (target, b"") if question < 0 else (target[:question], target[question:])
    return RequestHead(
        request_line, method, target, path, query, version, headers,
        keep_alive, content_length, chunked,
    )
