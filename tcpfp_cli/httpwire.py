"""HTTP/1.x request heads: bytes -> ``RequestHead`` or ``BadRequest``.  Pure, sans-IO.

The listener faces internet scanners, so the parser's job is to say quickly
and exactly what a request head is, or why it is not one, without ever
waiting for more input than the limits allow.  It follows RFC 9112 and, where
the RFC leaves room, what Debian's apache2 does with its default settings
(LimitRequestLine 8190, LimitRequestFields 100, LimitRequestFieldSize 8190,
``HttpProtocolOptions Strict``): the same statuses for the same heads, so
that our log lines match Apache's (tests/test_serve_apache.py compares them).

Deliberate differences from Apache, each documented in that test: every
method and path gets 200 (we serve no files); the request line is logged as
the bytes received, where Apache rebuilds it from its tokens; a bare LF ends
a line (RFC 9112 section 2.2 allows it); an HTTP/0.9 request gets 400.

``scan`` looks at the bytes received so far and answers one of: need more,
a complete head (and where it ends), or an error.  Junk is recognised as soon
as the first bytes cannot start a request line (a TLS ClientHello, binary
data), not after a timeout.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import TcpfpError

#: RFC 9110 token characters (a method or a header name is a token).
_TOKEN_CHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN = re.compile(_TOKEN_CHAR + rb"+\Z")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)\Z")
_TOKEN_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_CTL = re.compile(rb"[\x00-\x1f\x7f]")
#: Control bytes a header value may not hold (RFC 9110 section 5.5; tab is allowed).
_BAD_VALUE_CHAR = rb"\x00-\x08\x0a-\x1f\x7f"
_BAD_VALUE = re.compile(rb"[" + _BAD_VALUE_CHAR + rb"]")
#: A Host value: reg-name or IPv4, or an IPv6 literal, and an optional port (RFC 9110 7.2).
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?\Z")
#: Absolute-form target: scheme "://" authority, possibly with userinfo.
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)(.*)\Z", re.S)
#: A header section (after the request line) whose every line is ``token ":" value`` with
#: no forbidden control byte, up to the empty line: one match instead of per-line checks.
_CLEAN_FIELDS = re.compile(rb"(?:" + _TOKEN_CHAR + rb"+:[^" + _BAD_VALUE_CHAR + rb"]*\r?\n)*\r?\n")
#: A head that none of the per-line checks can refuse: a token method, an origin-form target
#: without control bytes or '#', HTTP/1.0 or later, clean field lines and the empty line.
#: Groups: method, target, version, major, minor, header section.
_PLAIN_HEAD = re.compile(
    rb"(" + _TOKEN_CHAR + rb"+) (/[^\x00-\x20\x7f#]*) (HTTP/([1-9])\.([0-9]))\r?\n"
    rb"((?:" + _TOKEN_CHAR + rb"+:[^" + _BAD_VALUE_CHAR + rb"]*\r?\n)*)\r?\n")
#: One field line of a section that ``_PLAIN_HEAD`` or ``_CLEAN_FIELDS`` matched.
_FIELD_LINE = re.compile(rb"(" + _TOKEN_CHAR + rb"+):([^\r\n]*)\r?\n")
_LEADING_BLANK_LINES = 10  # Apache skips at most this many empty lines before a request


class Limits(NamedTuple):
    max_line: int = 8190  # request line and each header line, bytes (Apache's default)
    max_headers: int = 100

    @property
    def line_bytes(self) -> int:
        """The longest line accepted, without its line end: Apache takes one byte more
        than the limit it is configured with (its buffer holds the limit plus the NUL)."""
        return self.max_line + 1


class BadRequest(TcpfpError):
    """A request head we refuse; ``status`` is the answer, ``request_line`` what to log."""

    def __init__(self, status: int, reason: str, request_line: bytes) -> None:
        self.status = status
        self.reason = reason
        self.request_line = request_line
        super().__init__(f"{status}: {reason}")


class RequestHead(NamedTuple):
    request_line: bytes  # as received (a URL password masked, as Apache logs it)
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


def request_line_of(data: bytes, limit: int) -> bytes:
    """The first line of what a client sent, empty lines before it skipped, cut at ``limit``
    bytes: the request line to log for input that is not (or not yet) a whole request."""
    return _first_line(data.lstrip(b"\r\n"))[:limit]


def host_without_port(host: bytes) -> bytes:
    """A Host header's name: ``[2001:db8::1]:80`` -> ``[2001:db8::1]``, ``a.test:80`` -> ``a.test``.
    Anything else (no port, a bare IPv6 address, an unclosed bracket) is returned as it is."""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    return host.rsplit(b":", 1)[0] if host.count(b":") == 1 else host


def skip_blank_lines(buffer: bytes) -> int:
    """How many bytes of empty lines precede the request (RFC 9112 2.2: SHOULD ignore them)."""
    at = 0
    for _ in range(_LEADING_BLANK_LINES):
        if buffer.startswith(b"\r\n", at):
            at += 2
        elif buffer.startswith(b"\n", at):
            at += 1
        else:
            break
    return at


def scan(buffer: bytes, limits: Limits = Limits()) -> int | None:
    """Where the head in ``buffer`` ends (index after its blank line), or None for "need more".

    ``buffer`` starts at the request line (see ``skip_blank_lines``).  Raises
    ``BadRequest`` as soon as the bytes so far cannot become a valid head.
    """
    longest = limits.line_bytes
    if buffer[:1] and buffer[0] not in _TOKEN_BYTES:
        raise BadRequest(400, "not an HTTP request", _first_line(buffer)[:longest])
    line_end = buffer.find(b"\n")
    if line_end < 0:
        if len(buffer) > longest + 1:  # room for a CR still to come
            raise BadRequest(414, "request line too long", buffer[:longest])
        space = buffer.find(b" ")
        method = buffer if space < 0 else buffer[:space]
        if method and not _TOKEN.match(method):
            raise BadRequest(400, "not an HTTP request", buffer)
        return None
    line = _first_line(buffer)
    if len(line) > longest:
        raise BadRequest(414, "request line too long", line[:longest])
    crlf, lf = buffer.find(b"\n\r\n", line_end), buffer.find(b"\n\n", line_end)
    candidates = [e + 3 for e in (crlf,) if e >= 0] + [e + 2 for e in (lf,) if e >= 0]
    if candidates:
        return min(candidates)
    if len(buffer) > (longest + 2) * (limits.max_headers + 1):
        raise BadRequest(400, "request header section too large", line)
    if buffer.count(b"\n") > limits.max_headers + 1:
        raise BadRequest(400, "too many header fields", line)
    last_line = buffer[buffer.rfind(b"\n") + 1 :]
    if len(last_line) > longest + 1:
        raise BadRequest(400, "header field too long", line)
    if line.count(b" ") < 2:
        # "GET /" and a newline: HTTP/0.9, which has no headers to wait for.
        raise BadRequest(400, "HTTP/0.9 request", line)
    return None


def _mask_password(line: bytes, target: bytes) -> bytes:
    """Apache logs a URL's password as XXXXXXXX; so do we."""
    match = _ABSOLUTE.match(target)
    if not match or b"@" not in match[2]:
        return line
    userinfo, _, host = match[2].rpartition(b"@")
    user, colon, _password = userinfo.partition(b":")
    if not colon:
        return line
    masked = match[1] + user + b":XXXXXXXX@" + host + match[3]
    return line.replace(target, masked, 1)


def _check_target(method: bytes, target: bytes, request_line: bytes) -> None:
    """Origin-, absolute-, authority- (CONNECT) or asterisk-form (OPTIONS), RFC 9112 3.2."""
    if not target or _CTL.search(target) or b"#" in target:
        raise BadRequest(400, "bad request target", request_line)
    if target.startswith(b"/"):
        return
    if target == b"*" and method == b"OPTIONS":
        return
    if method == b"CONNECT" and _HOST.match(target):
        return
    match = _ABSOLUTE.match(target)
    if match and b"@" not in match[2] and _HOST.match(match[2]):
        return
    raise BadRequest(400, "bad request target", _mask_password(request_line, target))


def parse_head(head: bytes, limits: Limits = Limits()) -> RequestHead:
    """Parse a complete head (as delimited by ``scan``).

    A head that ``_PLAIN_HEAD`` matches whole, and that is too short for any
    line to break the line limit, is read with two regular expressions; every
    other head takes ``_parse_head_checked``, line by line.  Both give the same
    answer for every head (tests/test_httpwire.py).
    """
    plain = _PLAIN_HEAD.fullmatch(head) if len(head) <= limits.line_bytes else None
    if plain is None:
        return _parse_head_checked(head, limits)
    return _parse_plain(head, plain, limits)


def read_plain_head(buffer: bytes, limits: Limits = Limits()) -> tuple[RequestHead, int] | None:
    """``(parse_head(buffer[:end]), end)`` when ``buffer`` starts with a whole plain head, else None.

    The common request in one step: no ``scan`` first, and one match finds
    both where the head ends and its parts.  None means "use ``scan`` and
    ``parse_head``", which give the same answer as this when it answers.
    """
    # A head longer than a line may be is never plain: look no further than that, so a
    # long head still arriving costs no more than one line's worth per look.
    plain = _PLAIN_HEAD.match(buffer, 0, limits.line_bytes)
    if plain is None:
        return None
    end = plain.end()
    return _parse_plain(buffer[:end] if end < len(buffer) else buffer, plain, limits), end


def read_head(buffer: bytes | bytearray, limits: Limits = Limits(), seen: int = 0) -> tuple[RequestHead, int] | None:
    """The request head at the start of ``buffer`` and its length, or None while it is
    still incomplete; ``BadRequest`` when it cannot be one.

    The plain head in one step (``read_plain_head``), any other through ``scan`` and
    ``parse_head``.  Only as much of ``buffer`` as a head may hold is looked at.

    ``seen``: the length ``buffer`` had when the last call answered None (the
    bytes since were appended).  If none of them ends a line, and the request
    line had ended, only a length limit can change that answer: the rest is
    not looked at again, so a head that arrives in many small pieces costs
    time in proportion to its size, not to its size times the pieces.
    """
    if 0 < seen < len(buffer) and buffer.find(b"\n", seen) < 0:
        line_start = buffer.rfind(b"\n", 0, seen) + 1  # at most a line back: longer ones were refused
        if (line_start and len(buffer) - line_start <= limits.line_bytes + 1
                and len(buffer) <= (limits.line_bytes + 2) * (limits.max_headers + 1)):
            return None
    room = (limits.line_bytes + 2) * (limits.max_headers + 2)
    window = bytes(buffer) if len(buffer) <= room else bytes(buffer[:room])
    plain = read_plain_head(window, limits)
    if plain is not None:
        return plain
    end = scan(window, limits)
    if end is None:
        return None
    return parse_head(window if end == len(window) else window[:end], limits), end


def _parse_plain(head: bytes, plain: re.Match[bytes], limits: Limits) -> RequestHead:
    method, target, version, major, minor, section = plain.groups()
    request_line = head[: plain.end(3)]
    headers: dict[str, bytes] = {}
    fields = _FIELD_LINE.findall(section)
    if len(fields) > limits.max_headers:
        return _parse_head_checked(head, limits)  # it words the error
    hosts = 0
    for name_bytes, value in fields:
        name = name_bytes.decode("ascii").lower()
        value = value.strip(b" \t")
        if name == "host":
            hosts += 1
            if hosts > 1 or not _HOST.match(value):
                raise BadRequest(400, "bad Host header", request_line)
        headers[name] = headers[name] + b", " + value if name in headers else value
    return _complete(request_line, method, target, version, int(major), int(minor), headers)


def _parse_head_checked(head: bytes, limits: Limits) -> RequestHead:
    """``parse_head`` for any head: each line checked, each refusal worded."""
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
    match = _VERSION.match(version)
    if not match:
        raise BadRequest(400, "bad protocol version", request_line)
    major, minor = int(match[1]), int(match[2])
    if major == 0:
        raise BadRequest(400, "HTTP/0.x request", request_line)
    _check_target(method, target, request_line)
    # Each field's pieces, joined once at the end: a client can send a value folded over
    # hundreds of thousands of lines, and joining at every line would copy it each time.
    pieces: dict[str, list[bytes]] = {}
    count = 0
    previous: str | None = None
    hosts = 0
    longest = limits.line_bytes
    field = 0  # the length of the previous field's lines so far, for its folds
    # When every field line is clean (the common case), the per-line checks for
    # folding, the name's characters and control bytes cannot fail: skip them.
    checked = _CLEAN_FIELDS.fullmatch(head, head.find(b"\n") + 1)
    for line in lines[1:]:
        if not line:
            continue
        if len(line) > longest:
            raise BadRequest(400, "header field too long", request_line)
        if checked is None and line[:1] in (b" ", b"\t"):
            if previous is None:
                raise BadRequest(400, "malformed header field", request_line)
            # A folded field is one field line for the limit, as Apache counts it: each fold
            # as one space and the text after it, and room for a NUL within --max-line.
            field += 1 + len(line.lstrip(b" \t"))
            if field + 1 >= limits.max_line:
                raise BadRequest(400, "header field too long", request_line)
            pieces[previous] += (b" ", line.strip(b" \t"))  # obs-fold (RFC 9112 5.2)
            continue
        count += 1
        if count > limits.max_headers:
            raise BadRequest(400, "too many header fields", request_line)
        colon = line.find(b":")
        if checked is None and (colon <= 0 or not _TOKEN.match(line[:colon])):
            raise BadRequest(400, "malformed header field", request_line)
        name = line[:colon].decode("ascii").lower()
        value = line[colon + 1 :].strip(b" \t")
        if checked is None and _BAD_VALUE.search(value):
            raise BadRequest(400, "control character in a header value", request_line)
        if name == "host":
            hosts += 1
            if hosts > 1 or not _HOST.match(value):
                raise BadRequest(400, "bad Host header", request_line)
        if name in pieces:
            pieces[name] += (b", ", value)
        else:
            pieces[name] = [value]
        previous, field = name, len(line)
    headers = {name: b"".join(parts) for name, parts in pieces.items()}
    return _complete(request_line, method, target, version, major, minor, headers)


def _complete(request_line: bytes, method: bytes, target: bytes, version: bytes, major: int, minor: int,
              headers: dict[str, bytes]) -> RequestHead:
    """What the headers say about the connection and the body; the last checks."""
    http11 = major > 1 or minor >= 1
    if http11 and "host" not in headers:
        raise BadRequest(400, "HTTP/1.1 request without Host", request_line)
    connection = headers.get("connection")
    if connection is None:
        keep_alive = http11
    elif http11:
        keep_alive = b"close" not in connection.lower()
    else:
        keep_alive = b"keep-alive" in connection.lower()
    encoding = headers.get("transfer-encoding")
    chunked = encoding is not None and b"chunked" in encoding.lower()
    content_length = 0
    raw = headers.get("content-length")
    if raw is not None and not chunked:
        if not raw.isdigit() or len(raw) > 18:
            raise BadRequest(400, "bad Content-Length", request_line)
        content_length = int(raw)
    question = target.find(b"?")
    path, query = (target, b"") if question < 0 else (target[:question], target[question:])
    return RequestHead(
        request_line, method, target, path, query, version, headers,
        keep_alive, content_length, chunked,
    )
