"""The request-head parser: its shortcuts change no answer.

``_parse_head_checked`` checks each header line for folding, a name that is
not a token and control bytes in the value.  It has two shortcuts: when one
regular expression has already matched the whole header section as clean
lines, it skips those checks; and ``parse_head`` reads a plain head (an
origin-form target, HTTP/1.0 or later, clean lines, short enough) with two
regular expressions and no per-line work at all.  These tests feed heads
built from clean, folded, malformed and hostile lines and require the same
``RequestHead`` or the same ``BadRequest`` (status, reason, logged request
line) from ``parse_head`` as from the fully checked path.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpfp_cli import httpwire
from tcpfp_cli.httpwire import BadRequest, host_without_port, parse_head, read_head, request_line_of

NEVER = re.compile(rb"(?!)")  # matches nothing: every line takes the full checks

FIELD_LINES = [
    b"Host: example.com", b"Host: [2001:db8::1]:8080", b"Host: bad host", b"host: a", b"HOST: b",
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)", b"Accept: */*", b"Connection: close",
    b"Connection: keep-alive", b"Content-Length: 0", b"Content-Length: 12", b"Content-Length: x1",
    b"Transfer-Encoding: chunked", b"X-Tab:\tvalue\t", b"X-Empty:", b"X-Spaces:    ", b"X-Dup: 1", b"X-Dup: 2",
    b" folded continuation", b"\tfolded with tab", b"Bad Name: x", b": no name", b"NoColon",
    b"X-Ctl: a\x01b", b"X-Del: a\x7fb", b"X-CR: a\rb", b"X-High: caf\xc3\xa9", b"X-Quote: \"q\"",
    b"@: at", b"X-A:" + b"a" * 300,
]
REQUEST_LINES = [
    b"GET / HTTP/1.1", b"GET /p?q=1 HTTP/1.0", b"POST /x HTTP/1.1", b"OPTIONS * HTTP/1.1",
    b"GET http://example.com/a HTTP/1.1", b"GET http://u:pw@example.com/ HTTP/1.1", b"CONNECT h:443 HTTP/1.1",
    b"GET /caf\xc3\xa9 HTTP/1.1", b"GET /a#frag HTTP/1.1", b"GET /a\x01 HTTP/1.1", b"GET /a\x7f HTTP/1.1",
    b"GET / HTTP/0.9", b"GET / HTTP/2.0", b"GET / HTTP/1.10", b"GET / http/1.1", b"GET /", b"GET  / HTTP/1.1",
    b"G@T / HTTP/1.1", b"GET / HTTP/1.1\r", b"GET /\t HTTP/1.1", b"GET ./x HTTP/1.1",
]


def outcome(head: bytes, limits: httpwire.Limits):
    try:
        return parse_head(head, limits)
    except BadRequest as error:
        return (error.status, error.reason, error.request_line)


def both(head: bytes, limits: httpwire.Limits = httpwire.Limits()):
    """(``parse_head``'s outcome, the outcome with every line checked)."""
    fast = outcome(head, limits)
    saved = httpwire._CLEAN_FIELDS
    httpwire._CLEAN_FIELDS = NEVER
    try:
        try:
            slow = httpwire._parse_head_checked(head, limits)
        except BadRequest as error:
            slow = (error.status, error.reason, error.request_line)
    finally:
        httpwire._CLEAN_FIELDS = saved
    return fast, slow


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(REQUEST_LINES), st.lists(st.sampled_from(FIELD_LINES), max_size=8),
       st.sampled_from([b"\r\n", b"\n"]), st.booleans())
def test_shortcut_gives_the_same_answer(request_line, fields, eol, mixed):
    lines = [request_line, *fields]
    ends = [eol if not mixed or k % 2 else b"\n" for k in range(len(lines))]
    head = b"".join(line + end for line, end in zip(lines, ends)) + eol  # the empty line ends the head
    fast, slow = both(head)
    assert fast == slow


#: Field lines made of the bytes that matter to the checks: token and non-token name bytes,
#: a colon or none, value bytes clean and not (tab is allowed, other controls are not), and
#: sometimes a leading blank (obs-fold).  Random bytes alone almost never form a clean
#: ``name: value`` line, so they would never take the shortcuts.
_TOKEN_BYTES = st.sampled_from(b"Hhost-X_9!#|~")
_CLEAN_VALUE_BYTES = st.sampled_from(b"ab 9,;=\"\\\t\x80\xe9\xff")
_ANY_VALUE_BYTES = st.one_of(_CLEAN_VALUE_BYTES, st.sampled_from(b"\x00\x01\x08\x0b\x0c\x0d\x1b\x7f"))
CLEAN_FIELD_LINE = st.builds(lambda name, colon, value: bytes(name) + colon + bytes(value),
                             st.lists(_TOKEN_BYTES, min_size=1, max_size=8), st.sampled_from([b":", b": "]),
                             st.lists(_CLEAN_VALUE_BYTES, max_size=16))
ANY_FIELD_LINE = st.builds(
    lambda fold, name, colon, value: fold + bytes(name) + colon + bytes(value),
    st.sampled_from([b"", b"", b"", b" ", b"\t"]),
    st.one_of(st.lists(_TOKEN_BYTES, max_size=8), st.lists(st.sampled_from(b"Hx-9 @\"(:"), max_size=8)),
    st.sampled_from([b":", b": ", b""]), st.lists(_ANY_VALUE_BYTES, max_size=16))
#: Whole field sections: LF-separated (the test turns LF into CR LF), all clean or mixed.
FIELD_SECTIONS = st.one_of(st.lists(CLEAN_FIELD_LINE, min_size=1, max_size=6),
                           st.lists(st.one_of(CLEAN_FIELD_LINE, ANY_FIELD_LINE), min_size=1, max_size=6)
                           ).map(b"\n".join)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"GET / HTTP/1.1", b"GET http://x/a HTTP/1.1", b"OPTIONS * HTTP/1.1"]),
       st.one_of(st.binary(max_size=120), FIELD_SECTIONS))
def test_shortcut_on_arbitrary_field_bytes(request_line, junk):
    """Any bytes as header fields, behind a plain request line (the two-expression path)
    and behind request lines that are not plain (the clean-fields shortcut)."""
    head = request_line + b"\r\nHost: x\r\n" + junk.replace(b"\n", b"\r\n") + b"\r\n\r\n"
    fast, slow = both(head)
    assert fast == slow


NOT_PLAIN_REQUEST_LINES = [b"GET http://x/a HTTP/1.1", b"OPTIONS * HTTP/1.1"]  # the clean-fields shortcut


@pytest.mark.parametrize("request_line", [b"GET / HTTP/1.1", *NOT_PLAIN_REQUEST_LINES])
def test_every_byte_in_a_header_name_and_value_gets_the_same_answer(request_line):
    """Each of the 256 byte values inside a field name and inside a field value: the
    shortcuts' expressions must accept exactly the bytes the per-line checks accept."""
    for value in range(256):
        byte = bytes([value])
        for field in (b"X-A: a" + byte + b"b", b"X" + byte + b"A: ab", byte + b"X: ab"):
            head = request_line + b"\r\nHost: x\r\n" + field + b"\r\n\r\n"
            fast, slow = both(head)
            assert fast == slow, head


@pytest.mark.parametrize("limits", [httpwire.Limits(max_line=40, max_headers=3), httpwire.Limits()])
def test_limits_still_apply_to_clean_heads(limits):
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (k, b"v" * 30) for k in range(5)) + b"\r\n"
    assert httpwire._CLEAN_FIELDS.fullmatch(head, head.index(b"\n") + 1)
    fast, slow = both(head, limits)
    assert fast == slow
    if limits.max_headers == 3:
        assert fast[:2] == (400, "too many header fields")


def test_clean_browser_head_is_parsed():
    head = (b"GET /index.html?q=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0\r\n"
            b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nX-Dup: 1\r\nX-Dup: 2\r\n\r\n")
    assert httpwire._CLEAN_FIELDS.fullmatch(head, head.index(b"\n") + 1)  # the shortcut is taken
    parsed = parse_head(head)
    assert parsed.headers == {"host": b"www.example.com", "user-agent": b"Mozilla/5.0",
                              "accept-encoding": b"gzip, deflate", "connection": b"keep-alive",
                              "x-dup": b"1, 2"}
    assert parsed.keep_alive and parsed.path == b"/index.html" and parsed.query == b"?q=1"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40), st.sampled_from([b"", b"Host: x\r\n", b"X: 1\r\nHost: a:1\r\n"]))
def test_arbitrary_request_lines_get_the_same_answer(junk, fields):
    for line in (junk, b"GET /" + junk + b" HTTP/1.1", b"GET / HTTP/" + junk, junk + b" / HTTP/1.0"):
        head = line.replace(b"\n", b"") + b"\r\n" + fields + b"\r\n"
        fast, slow = both(head)
        assert fast == slow


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.0\r\nHost: 127.0.0.1:8080\r\nUser-Agent: ApacheBench/2.3\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    b"GET /index.html?q=1 HTTP/1.1\nHost: h\nX-Dup: 1\nX-Dup: 2\n\n",
])
def test_plain_heads_take_the_two_expression_path_and_agree(head):
    assert httpwire._PLAIN_HEAD.fullmatch(head)
    fast, slow = both(head)
    assert fast == slow and isinstance(fast, httpwire.RequestHead)
    assert httpwire.read_plain_head(head + b"GET /next HTTP/1.1\r\n") == (fast, len(head))


def test_a_plain_head_longer_than_a_line_may_be_is_checked_line_by_line():
    limits = httpwire.Limits(max_line=60)
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 61 + b"\r\n\r\n"
    assert httpwire._PLAIN_HEAD.fullmatch(head)
    fast, slow = both(head, limits)
    assert fast == slow == (400, "header field too long", b"GET / HTTP/1.1")


def _scanned(buffer: bytes, limits: httpwire.Limits):
    """What scan and parse_head make of the start of ``buffer``."""
    try:
        end = httpwire.scan(buffer, limits)
        if end is None:
            return None
        return httpwire.parse_head(buffer[:end], limits), end
    except BadRequest as error:
        return (error.status, error.reason, error.request_line)


#: Lines of a plain head (a token method, an origin-form target without control bytes
#: or '#', HTTP/1.0 or later; field lines ``token ":" value`` without control bytes).
PLAIN_REQUEST_LINES = [b"GET / HTTP/1.1", b"GET /p?q=1 HTTP/1.0", b"POST /x HTTP/1.1",
                       b"GET /caf\xc3\xa9 HTTP/1.1", b"GET / HTTP/2.0"]
PLAIN_FIELD_LINES = [b"Host: example.com", b"host: a", b"HOST: b", b"Accept: */*", b"Connection: close",
                     b"Connection: keep-alive", b"Content-Length: 12", b"X-Tab:\tvalue\t", b"X-Empty:",
                     b"X-Dup: 1", b"X-Dup: 2", b"X-High: caf\xc3\xa9", b"User-Agent: Mozilla/5.0 (X11)"]


@settings(max_examples=600, deadline=None)
@given(st.booleans(), st.data(), st.sampled_from([b"\r\n", b"\n"]), st.binary(max_size=30),
       st.sampled_from([httpwire.Limits(), httpwire.Limits(max_line=50, max_headers=2)]))
def test_reading_a_plain_head_in_one_step_agrees_with_scan_and_parse(plain_lines, data, eol, rest, limits):
    """read_plain_head answers for a buffer that starts with a whole plain head (half the
    heads here are made of plain lines only), and then exactly as scan and parse_head do;
    for other buffers it may decline (None); whatever follows the head is left."""
    request_lines, field_lines = (PLAIN_REQUEST_LINES, PLAIN_FIELD_LINES) if plain_lines else (
        REQUEST_LINES, FIELD_LINES)
    request_line = data.draw(st.sampled_from(request_lines))
    fields = data.draw(st.lists(st.sampled_from(field_lines), max_size=6))
    buffer = b"".join(line + eol for line in [request_line, *fields]) + eol + rest
    for candidate in (buffer, buffer[: len(buffer) // 2]):
        try:
            plain = httpwire.read_plain_head(candidate, limits)
        except BadRequest as error:
            plain = (error.status, error.reason, error.request_line)
        if candidate is buffer and plain_lines and limits == httpwire.Limits():
            assert plain is not None, buffer  # a whole plain head, shorter than any line limit
        if plain is not None:
            assert plain == _scanned(candidate, limits)


@pytest.mark.parametrize("host, name", [
    (b"sensor.example:8080", b"sensor.example"),
    (b"sensor.example", b"sensor.example"),
    (b"[2001:db8::1]:80", b"[2001:db8::1]"),
    (b"[2001:db8::1]", b"[2001:db8::1]"),
    (b"2001:db8::1", b"2001:db8::1"),  # a bare IPv6 address (not a valid Host): as it is
    (b"[2001:db8::1", b"[2001:db8::1"),  # an unclosed bracket: as it is
    (b"198.51.100.7:443", b"198.51.100.7"),
])
def test_host_without_port(host, name):
    assert host_without_port(host) == name


@pytest.mark.parametrize("data, limit, line", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 100, b"GET / HTTP/1.1"),
    (b"\r\n\r\nGET /late HTTP/1.0\r\n", 100, b"GET /late HTTP/1.0"),  # empty lines first
    (b"GET /no-end", 100, b"GET /no-end"),
    (b"\x16\x03\x01\x02\x00\x01", 100, b"\x16\x03\x01\x02\x00\x01"),
    (b"A" * 20 + b"\n", 8, b"A" * 8),  # cut at the limit
    (b"\r\n", 100, b""),
])
def test_request_line_of_what_a_client_sent(data, limit, line):
    assert request_line_of(data, limit) == line


@pytest.mark.parametrize("buffer, request_line, end", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next", b"GET / HTTP/1.1", 27),  # plain: one step
    (b"GET /f HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", b"GET /f HTTP/1.1", 38),  # folded: scan + parse
    (b"GET / HTTP/1.1\r\nHost: x\r\n", None, None),  # incomplete
])
def test_read_head_finds_whole_heads_of_either_kind(buffer, request_line, end):
    found = read_head(buffer)
    if request_line is None:
        assert found is None
    else:
        assert (found[0].request_line, found[1]) == (request_line, end)
        assert found[0] == parse_head(buffer[:end])


def test_read_head_refuses_what_cannot_be_a_head():
    with pytest.raises(BadRequest):
        read_head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")


def _read(buffer: bytes, limits: httpwire.Limits, seen: int = 0):
    try:
        return read_head(buffer, limits, seen)
    except BadRequest as error:
        return (error.status, error.reason, error.request_line)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(REQUEST_LINES), st.lists(st.sampled_from(FIELD_LINES + [b"X-Long: " + b"l" * 60]), max_size=6),
       st.sampled_from([b"\r\n", b"\n"]), st.binary(max_size=20), st.lists(st.integers(1, 40), max_size=30),
       st.sampled_from([httpwire.Limits(), httpwire.Limits(max_line=50, max_headers=2)]))
def test_a_head_read_piece_by_piece_gets_the_answer_it_gets_whole(request_line, fields, eol, rest, cuts, limits):
    """``seen`` (the length of the last incomplete look) only saves work: every prefix of a
    head, each read knowing the last incomplete one, gets the answer it gets alone."""
    data = b"".join(line + eol for line in [request_line, *fields]) + eol + rest
    seen, at = 0, 0
    for cut in [*cuts, len(data)]:
        at = min(len(data), at + cut)
        answer = _read(data[:at], limits, seen)
        assert answer == _read(data[:at], limits)
        if answer is not None:
            break
        seen = at


def joined_at_every_line(fields: list[bytes]) -> dict[str, bytes]:
    """The header values as RFC 9112 defines them, one line at a time: a repeated field's
    values joined with ", ", a folded line's text (trimmed) added with one space."""
    headers: dict[str, bytes] = {}
    previous = None
    for line in fields:
        if line[:1] in (b" ", b"\t"):
            headers[previous] = headers[previous] + b" " + line.strip(b" \t")
            continue
        name, _, value = line.partition(b":")
        previous = name.decode().lower()
        value = value.strip(b" \t")
        headers[previous] = headers[previous] + b", " + value if previous in headers else value
    return headers


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"X-Dup: 1", b"x-dup:2 ", b"Other: o", b" fold", b"\t\tfold two ", b" ", b"X-Empty:"]),
                max_size=40), st.sampled_from([b"\r\n", b"\n"]))
def test_repeated_and_folded_fields_are_joined_as_the_definition_says(fields, eol):
    head = b"GET / HTTP/1.1" + eol + b"Host: h" + eol + b"X-Dup: 0" + eol + eol.join(fields) + (eol if fields else b"") + eol
    assert parse_head(head).headers == joined_at_every_line([b"Host: h", b"X-Dup: 0", *fields])


def test_a_folded_value_is_one_field_line_for_the_limit():
    """Folds count as one field line, as Apache counts them (one space and the text after
    each fold; tests/test_serve_apache.py has the boundary against apache2): the longest
    folded value is read whole, and a head folded over the whole window a client may fill
    (about 280,000 lines) is refused, not joined."""
    limits = httpwire.Limits()
    fits = (limits.max_line - 2 - len(b"X: a")) // 2  # each " b" fold adds 2
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX: a\n" + b" b\n" * fits + b"\n"
    found = read_head(head, limits)
    assert found is not None and found[1] == len(head)
    assert found[0].headers["x"] == b"a" + b" b" * fits
    with pytest.raises(BadRequest, match="header field too long"):
        read_head(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\n" + b" b\n" * (fits + 1) + b"\n", limits)
    folds = ((limits.line_bytes + 2) * (limits.max_headers + 2) - 40) // 3
    with pytest.raises(BadRequest, match="header field too long"):
        read_head(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\n" + b" b\n" * folds + b"\n", limits)
