"""Apache ``LogFormat`` strings -> a line writer and its exact inverse, a line parser.

Strategy.  ``compile_format`` reads the format once into ``items``: literal
text and directives (``%>s``, ``%{User-Agent}i``, ``%{FINGERPRINT_TCP_RTT}g``).
From that one sequence we derive both directions, so they cannot disagree:

- the writer: one small function per directive, plus the literals (and the
  constant ``%l``/``%u``) folded into a ``%``-template, so a line is
  ``template % tuple([f(record) for f in writers])``.  ``serve`` writes one
  line per request, so nothing is looked up by name at write time.  A run of
  ``%{FINGERPRINT_*}g`` fields of one source (the SYN, TCP_INFO, ...) is one
  function that keeps its last text and the objects it was rendered from:
  the requests of a keep-alive connection render the SYN fields once.  A new
  connection's SYN fields fill a template kept per SYN shape and TTL
  (``Renderer.filler``), and a run of TCP_INFO fields is one unpack put into
  the template as numbers;
- the parser: one regular expression with a group per directive, built from
  what each directive can produce (digits, a bracketed time, Apache-escaped
  text).  ``LogFormat.pattern`` and ``LogFormat.items`` are public so the
  vectorised reader of ``report`` can reuse them without reading the format
  string again.

Escaping is Apache's (``ap_escape_logitem`` in ``server/util.c``, used by
mod_log_config for ``%r %U %q %m %H %h %l %u %{..}i %{..}o %{..}e``): ``"``
and ``\\`` get a backslash; BS, LF, CR, TAB and VT become ``\\b \\n \\r \\t
\\v``; every other byte that is not printable ASCII (controls, 0x7f and
everything from 0x80) becomes ``\\xhh`` with lowercase hex.  Space and ``%``
are written as they are.  The parser undoes this, mapping ``\\xhh`` to the
character U+00hh, so a value reads back as its bytes decoded as latin-1.
``str`` values (response headers, environment) are escaped as the latin-1
bytes they stand for (characters beyond U+00FF as their UTF-8 bytes).

Parsing rules, documented once:

- a value equal to ``-`` is ``None`` (Apache writes ``-`` for a missing value,
  so a request line that is literally ``-`` reads back as ``None`` too);
- a space in the format matches one or more spaces, and spaces around the
  line are ignored (the module's README right-aligns numbers);
- a directive between double quotes (``"%r"``) may hold any escaped text;
  a directive outside quotes cannot hold a space (``%t`` excepted: it is
  bracketed, and parses to the text between the brackets, see
  ``CLF_TIME_FORMAT``), unless the format glues it to its neighbours with
  tabs or "|" (``%h\t%r\t%>s``, ``%h|%r|%{User-Agent}i``): escaped text there
  may hold spaces but not its delimiter.  An unquoted
  request line (``%h %t %r %>s``) holds spaces and any delimiter: it ends
  where the rest of the line fits (see ``_delimited``).

Errors: a bad format raises ``LogFormatError`` (``format``, ``position``); a
line that does not fit raises ``LogLineError`` (``reason``, ``column``).
"""

from __future__ import annotations

import os
import re
import socket
import time
from operator import attrgetter, is_
from collections.abc import Callable, Mapping
from typing import NamedTuple

from .errors import TcpfpError, UnknownField
from .fields import BY_NAME, FIELDS, Field, Observation, Renderer, lookup, render
from .tcpinfo import values_reader
from .httpwire import host_without_port

__all__ = [
    "AccessRecord",
    "CLF_TIME_FORMAT",
    "Directive",
    "Literal",
    "LogFormat",
    "LogFormatError",
    "LogLineError",
    "NAMED_FORMATS",
    "compile_format",
    "escape",
    "unescape",
]

#: ``datetime.strptime`` format of a parsed ``%t`` value (brackets removed).
CLF_TIME_FORMAT = "%d/%b/%Y:%H:%M:%S %z"


# --------------------------------------------------------------------------- errors


class LogFormatError(TcpfpError):
    """A LogFormat string we cannot compile; ``position`` is the character where it went wrong."""

    def __init__(self, reason: str, fmt: str, position: int) -> None:
        self.reason = reason
        self.format = fmt
        self.position = position
        super().__init__(f"bad log format at character {position}: {reason} (in {fmt!r})")


class LogLineError(TcpfpError):
    """A log line that does not fit the format; ``column`` is the character where it stops fitting."""

    def __init__(self, reason: str, column: int) -> None:
        self.reason = reason
        self.column = column
        super().__init__(f"log line does not match the format at character {column}: {reason}")


# --------------------------------------------------------------------------- the record


class AccessRecord(NamedTuple):
    """What one request gives its log line.  A NamedTuple: built per request, cheaply."""

    remote_addr: str  # IPv4 form for an IPv4-mapped peer
    remote_port: int
    local_addr: str
    local_port: int
    start_time: float  # epoch seconds, request start
    request_line: bytes  # the raw first line, without CR/LF; may be junk
    method: bytes | None  # None when the request line could not be parsed
    path: bytes | None
    query: bytes | None  # b"?a=1", or b"" when there is none (Apache's %q)
    protocol: bytes | None
    status: int
    bytes_sent: int  # body bytes
    duration_us: int
    keepalive: int  # keep-alive requests served on this connection before this one (%k)
    request_headers: Mapping[str, bytes]  # lowercased names
    response_headers: Mapping[str, str]  # lowercased names
    env: Mapping[str, str]
    observation: Observation
    bytes_in: int = 0  # the request as received: request line, headers and body (%I)
    bytes_out: int = 0  # the answer as sent: status line, headers and body (%O)
    kept_alive: bool = False  # the connection stays open for another request (%X)


# --------------------------------------------------------------------------- escaping

_ESCAPES = {0x08: "\\b", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x0B: "\\v", 0x22: '\\"', 0x5C: "\\\\"}
#: byte -> its text in a log line (Apache's T_ESCAPE_LOGITEM characters escaped).
_ESCAPE_TABLE: dict[int, str] = {
    b: _ESCAPES.get(b, f"\\x{b:02x}") for b in range(256) if b < 0x20 or b >= 0x7F or b in _ESCAPES
}
_NEEDS_ESCAPE_B = re.compile(rb'[^\x20\x21\x23-\x5b\x5d-\x7e]')
_NEEDS_ESCAPE_S = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


def escape(value: bytes | str | None) -> str:
    """``value`` as Apache writes it in a log line; ``None`` is ``-``."""
    if value is None:
        return "-"
    if isinstance(value, str):
        if _NEEDS_ESCAPE_S.search(value) is None:
            return value
        try:
            value = value.encode("latin-1")
        except UnicodeEncodeError:
            value = value.encode("utf-8")
    elif _NEEDS_ESCAPE_B.search(value) is None:
        return value.decode("ascii")
    return value.decode("latin-1").translate(_ESCAPE_TABLE)


_UNESCAPES = {'"': '"', "\\": "\\", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ESCAPED = re.compile(r"\\(x[0-9a-fA-F]{2}|.)", re.DOTALL)


def _unescape_one(m: re.Match[str]) -> str:
    code = m.group(1)
    if len(code) == 3:
        return chr(int(code[1:], 16))
    return _UNESCAPES.get(code, m.group(0))  # an escape Apache never writes stays as it is


def unescape(text: str) -> str:
    """The inverse of ``escape``: ``\\xhh`` becomes U+00hh."""
    if "\\" not in text:
        return text
    return _ESCAPED.sub(_unescape_one, text)


# --------------------------------------------------------------------------- time


def _clf_time_writer() -> Callable[[float], str]:
    """``[10/Oct/2000:13:55:36 -0700]`` in local time; one string per second, cached."""
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    cache: list[object] = [None, ""]

    def clf_time(t: float) -> str:
        second = int(t // 1)
        if cache[0] == second:
            return cache[1]  # type: ignore[return-value]
        tm = time.localtime(second)
        offset = (tm.tm_gmtoff or 0) // 60
        sign = "-" if offset < 0 else "+"
        offset = abs(offset)
        text = (
            f"[{tm.tm_mday:02d}/{months[tm.tm_mon - 1]}/{tm.tm_year}:"
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {sign}{offset // 60:02d}{offset % 60:02d}]"
        )
        cache[0], cache[1] = second, text
        return text

    return clf_time


# --------------------------------------------------------------------------- compiled items


class Literal(NamedTuple):
    text: str  # after the format's own escapes (\" \t \n ...)


class Directive(NamedTuple):
    text: str  # as written in the format, e.g. '%>s', '%{User-Agent}i'
    letter: str  # 'h', 's', 'i', 'g', ...
    arg: str | None  # what was between the braces
    column: str  # name of the parsed column
    kind: str  # 'int', 'text', 'time', or the field's kind for %{..}g ('int', 'text', 'hex')
    escaped: bool  # written through ``escape``; the parser unescapes it
    quoted: bool  # stands alone between double quotes: may hold spaces
    pattern: str  # regular expression of its value (no groups); for %t, the text inside the brackets
    position: int  # character position in the format string


Item = Literal | Directive

NAMED_FORMATS: dict[str, str] = {
    "common": '%h %l %u %t "%r" %>s %b',
    "combined": '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"',
}
NAMED_FORMATS["tcpfp"] = NAMED_FORMATS["combined"] + "".join(
    f' "%{{{f.name}}}g"' if f.kind == "text" else f" %{{{f.name}}}g" for f in FIELDS if f.scalar
)

_INT = r"-?[0-9]+|-"
# Escaped text is written "unrolled", runs of plain characters between escapes
# (``[^\\]*(?:\\.[^\\]*)*``), not as a repeated choice of one character or one
# escape (``(?:[^\\]|\\.)*``), which matches the same text in the same order:
# the choice keeps a backtracking state per character in ``re``, about 140 bytes,
# so a 100 MB line (a log cut while written, or a region of NUL bytes) took 14 GB.
_TEXT = r'[^\s"\\]*(?:\\\S[^\s"\\]*)*'  # escaped text without spaces
_QUOTED = r'[^"\\]*(?:\\.[^"\\]*)*'  # escaped text up to the closing quote
_QUERY = r"(?:\?" + _TEXT + ")?"  # %q: empty, or '?' and escaped text
_PATH_BEFORE_QUERY = r'[^\s"\\?]*(?:\\\S[^\s"\\?]*)*'  # %U right before %q: escaped text up to a '?'
_TIME = r"[^\]]*"

_R = AccessRecord

#: Directives without an argument: letter -> (column, kind, escaped, writer).
_SIMPLE: dict[str, tuple[str, str, bool, Callable[[_R], str]]] = {
    "h": ("remote_host", "text", True, lambda r: escape(r.remote_addr)),
    "a": ("remote_addr", "text", False, lambda r: r.remote_addr),
    "A": ("local_addr", "text", False, lambda r: r.local_addr),
    "l": ("ident", "text", True, lambda r: "-"),
    "u": ("user", "text", True, lambda r: "-"),
    "r": ("request", "text", True, lambda r: escape(r.request_line)),
    "m": ("method", "text", True, lambda r: escape(r.method)),
    "U": ("path", "text", True, lambda r: escape(r.path)),
    "q": ("query", "text", True, lambda r: "" if r.query is None else escape(r.query)),
    "H": ("protocol", "text", True, lambda r: escape(r.protocol)),
    "s": ("status", "int", False, lambda r: str(r.status)),
    "b": ("bytes", "int", False, lambda r: str(r.bytes_sent) if r.bytes_sent else "-"),
    "B": ("bytes", "int", False, lambda r: str(r.bytes_sent)),
    "D": ("duration_us", "int", False, lambda r: str(r.duration_us)),
    "k": ("keepalive", "int", False, lambda r: str(r.keepalive)),
    # mod_logio's byte counts (Debian's stock "combined" logs %O instead of %b)
    "I": ("bytes_in", "int", False, lambda r: str(r.bytes_in)),
    "O": ("bytes_out", "int", False, lambda r: str(r.bytes_out)),
    "S": ("bytes_in_out", "int", False, lambda r: str(r.bytes_in + r.bytes_out)),
    "v": ("server_name", "text", True, lambda r: escape(_this_host())),
    "V": ("server_name_used", "text", True, lambda r: escape(_name_used(r))),
    "P": ("pid", "int", False, lambda r: str(os.getpid())),
    "X": ("connection_status", "text", False, lambda r: "+" if r.kept_alive else "-"),
}
_ALL_LETTERS = "%a %A %b %B %D %e %g %h %H %i %I %k %l %m %o %O %p %P %q %r %s %S %t %T %u %U %v %V %X"


def _this_host() -> str:
    """This host's name: what Apache's %v shows without a ServerName.  (%v and %P read
    the process's state when a line is written: a worker forked after the format was
    compiled has its own pid.)"""
    if not _HOST_NAME:
        _HOST_NAME.append(socket.gethostname() or "-")
    return _HOST_NAME[0]


_HOST_NAME: list[str] = []


def _name_used(r: AccessRecord) -> bytes | str:
    """Apache's %V (UseCanonicalName Off): the Host the client asked for, without its port."""
    host = r.request_headers.get("host")
    return host_without_port(host) if host else _this_host()


#: strftime conversions -> the regular expression of their text (for %{format}t).
_STRFTIME = {
    "Y": r"[0-9]{4}", "y": r"[0-9]{2}", "m": r"[0-9]{2}", "d": r"[0-9]{2}", "e": r"[ 0-9][0-9]",
    "H": r"[0-9]{2}", "I": r"[0-9]{2}", "M": r"[0-9]{2}", "S": r"[0-9]{2}", "j": r"[0-9]{3}",
    "z": r"[+-][0-9]{4}", "Z": r"[A-Za-z0-9+-]*", "b": r"[A-Za-z]+", "h": r"[A-Za-z]+",
    "B": r"[A-Za-z]+", "a": r"[A-Za-z]+", "A": r"[A-Za-z]+", "p": r"[A-Za-z]*", "s": r"[0-9]+",
    "u": r"[0-9]", "w": r"[0-9]", "T": r"[0-9]{2}:[0-9]{2}:[0-9]{2}", "R": r"[0-9]{2}:[0-9]{2}",
    "D": r"[0-9]{2}/[0-9]{2}/[0-9]{2}", "F": r"[0-9]{4}-[0-9]{2}-[0-9]{2}", "%": "%",
    "k": r"[ 0-9][0-9]", "l": r"[ 0-9][0-9]", "r": r"[0-9:]+ [A-Za-z]*",
    "c": r"[A-Za-z]+ [A-Za-z]+ [ 0-9][0-9] [0-9:]+ [0-9]+",
}
_ANY_CONVERSION = r"[^\s\"]*(?: [^\s\"]+)*?"  # a conversion this table does not know: maybe spaces
#: Apache's own %{...}t forms: seconds and parts of them since the epoch.
_EPOCH_TIMES = {
    "sec": lambda t: str(int(t)), "msec": lambda t: str(int(t * 1000)),
    "usec": lambda t: str(int(t * 1_000_000)), "msec_frac": lambda t: f"{int(t * 1000) % 1000:03d}",
    "usec_frac": lambda t: f"{int(t * 1_000_000) % 1_000_000:06d}",
}


def _strftime_pattern(fmt: str) -> str:
    """The regular expression of what ``time.strftime(fmt)`` writes.  A conversion with
    flags or modifiers (``%-d``, ``%Ez``), or one the table does not know, matches any
    text, spaces included, up to what follows it."""
    out, i = [], 0
    while i < len(fmt):
        if fmt[i] == "%" and i + 1 < len(fmt):
            j = i + 1
            while j < len(fmt) - 1 and fmt[j] in "-_0^#EO":  # glibc's flags and modifiers
                j += 1
            known = j == i + 1 and fmt[j] in _STRFTIME
            out.append(_STRFTIME[fmt[j]] if known else _ANY_CONVERSION)
            i = j + 1
        else:
            out.append(re.escape(fmt[i]))
            i += 1
    return "".join(out)


def _time_directive(arg: str) -> tuple[str, str, Callable[[_R], str], str]:
    """Apache's %{format}t: (column, kind, writer, pattern).  ``begin:``/``end:`` choose
    the request's start (the default) or the end of its answer."""
    at_end = arg.startswith("end:")
    form = arg.split(":", 1)[1] if arg.startswith(("begin:", "end:")) else arg

    def when(r: _R) -> float:
        return r.start_time + r.duration_us / 1e6 if at_end else r.start_time

    if form in _EPOCH_TIMES:
        render = _EPOCH_TIMES[form]
        return f"time:{arg}", "int", (lambda r: render(when(r))), "[0-9]+"
    return f"time:{arg}", "text", (lambda r: time.strftime(form, time.localtime(when(r)))), _strftime_pattern(form)


class LogFormat:
    """A compiled LogFormat: ``write(record) -> str`` and ``parse(line) -> dict``."""

    def __init__(self, fmt: str, items: tuple[Item, ...], writers: list[_Writer]) -> None:
        self.format = fmt
        self.items = items
        self.directives: tuple[Directive, ...] = tuple(i for i in items if isinstance(i, Directive))
        self.columns: tuple[str, ...] = tuple(d.column for d in self.directives)
        #: One log line for an AccessRecord, without the newline (``_line_writer``).
        self.write: Callable[[AccessRecord], str] = _line_writer(*_build_writer(items, writers))
        self._parts = _regex_parts(items)
        self.pattern = "".join(self._parts)  # one group per directive, in ``columns`` order
        self._regex = re.compile(self.pattern, re.DOTALL)
        self._prefixes: dict[int, re.Pattern[str]] = {}
        self._decoders = tuple(
            (d.column, d.escaped and d.kind == "text") for d in self.directives
        )

    def __repr__(self) -> str:
        return f"LogFormat({self.format!r})"

    def parse(self, line: str) -> dict[str, str | None]:
        """The values of a line this format wrote, by column; ``-`` is ``None``."""
        line = line.rstrip("\r\n")
        m = self._regex.fullmatch(line)
        if m is None:
            raise self._diagnose(line)
        out: dict[str, str | None] = {}
        for (column, unesc), value in zip(self._decoders, m.groups()):
            if value == "-":
                out[column] = None
            elif unesc and "\\" in value:
                out[column] = unescape(value)
            else:
                out[column] = value
        return out

    def _diagnose(self, line: str) -> LogLineError:
        if not line.strip():
            return LogLineError("the line is empty", 0)
        parts = self._parts
        # The longest prefix of the items that still matches shows where the line stops fitting.
        end = 0
        for k in range(1, len(parts) + 1):
            prefix = self._prefixes.get(k)
            if prefix is None:
                prefix = self._prefixes[k] = re.compile("".join(parts[:k]), re.DOTALL)
            m = prefix.match(line)
            if m is None:
                early = "the line ends early: " if not line[end:].strip() else ""
                return LogLineError(f"{early}expected {_describe(self.items[k - 2])}", end)
            end = m.end()
        return LogLineError("unexpected text after the last field", end)


def _describe(item: Item) -> str:
    """What the parser expected where ``item`` should be, for LogLineError."""
    if isinstance(item, Literal):
        return f"the literal text {item.text!r}"
    if item.quoted:
        return f"the quoted text of {item.text} ({item.column}) and its closing quote"
    if item.kind == "time":
        return f"a bracketed time [dd/Mon/yyyy:hh:mm:ss +zzzz] for {item.text}"
    if item.kind == "int":
        return f"a number or - for {item.text} ({item.column})"
    return f"text without spaces for {item.text} ({item.column})"


def _regex_parts(items: tuple[Item, ...]) -> list[str]:
    """Regular expression pieces: ' *' for the line's leading spaces, then one per item."""
    parts = [" *"]
    last = len(items) - 1
    for n, item in enumerate(items):
        if isinstance(item, Directive):
            if item.kind == "time":
                parts.append(rf"\[({item.pattern})\]")
            else:
                parts.append(f"({item.pattern})")
            continue
        piece = []
        for run in re.findall(r" +|[^ ]+", item.text):
            if run[0] == " ":
                piece.append(" +")
            else:
                piece.append(re.escape(run))
        text = "".join(piece)
        if n == 0 and text.startswith(" +"):
            text = text[2:]
        if n == last and text.endswith(" +"):
            text = text[:-2] + " *"
        if n and text.startswith(" +") and _one_space_will_do(items[n - 1], item, items[n + 1] if n < last else None):
            # After text that may hold spaces, " +" would be tried at each of its ends inside
            # a run of spaces and each time run to the run's end: quadratic in a run a client
            # sent.  The first end that fits leaves one space, so " " finds the same match.
            text = " " + text[2:]
        parts.append(text)
    if not (items and isinstance(items[-1], Literal) and parts[-1].endswith(" *")) and not (
            items and _holds_spaces(items[-1])):  # which takes the line's trailing spaces itself
        parts[-1] = parts[-1] + " *"
    return parts


def _holds_spaces(item: Item) -> bool:
    """A directive whose text may hold any spaces (``_delimited``): it can end anywhere in a run."""
    return isinstance(item, Directive) and item.pattern.startswith(_SPACED_TEXT)


def _one_space_will_do(before: Item, item: Item, after: Item | None) -> bool:
    """Whether the literal ``item``, which begins with spaces, may begin with one space instead
    of " +": it follows text that holds spaces, and what comes after its spaces cannot
    begin with a space nor be empty (more literal text, a number, a bracketed time)."""
    if not (isinstance(item, Literal) and item.text[:1] == " " and _holds_spaces(before)):
        return False
    if item.text.strip(" "):
        return True
    return isinstance(after, Directive) and (after.pattern == _INT or after.kind == "time")


# --------------------------------------------------------------------------- compiling


def compile_format(fmt: str) -> LogFormat:
    """Compile a named format (``common``, ``combined``, ``tcpfp``) or a LogFormat string."""
    source = NAMED_FORMATS.get(fmt, fmt)
    items, writers = _Compiler(source).run()
    return LogFormat(source, items, writers)


_FORMAT_ESCAPES = {'"': '"', "\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


class _Compiler:
    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.items: list[Item] = []
        self.writers: list[_Writer] = []

    def error(self, reason: str, position: int) -> LogFormatError:
        return LogFormatError(reason, self.fmt, position)

    def run(self) -> tuple[tuple[Item, ...], list[_Writer]]:
        fmt, i, n = self.fmt, 0, len(self.fmt)
        text: list[str] = []
        while i < n:
            c = fmt[i]
            if c == "\\" and i + 1 < n and fmt[i + 1] in _FORMAT_ESCAPES:
                text.append(_FORMAT_ESCAPES[fmt[i + 1]])
                i += 2
            elif c != "%":
                text.append(c)
                i += 1
            elif i + 1 < n and fmt[i + 1] == "%":
                text.append("%")
                i += 2
            else:
                if text:
                    self.items.append(Literal("".join(text)))
                    text = []
                i = self.directive(i)
        if text:
            self.items.append(Literal("".join(text)))
        if not any(isinstance(item, Directive) for item in self.items):
            names = ", ".join(NAMED_FORMATS)
            raise self.error(f"no % directive, and not a named format ({names})", 0)
        return self._mark_quoted(), self.writers

    def directive(self, start: int) -> int:
        """Read one directive at ``fmt[start] == '%'``; return the index after it."""
        fmt, n = self.fmt, len(self.fmt)
        i = start + 1
        arg: str | None = None
        statuses: list[int] = []
        negate = False
        while True:
            if i >= n:
                raise self.error("the format ends inside a % directive", start)
            c = fmt[i]
            if c in "<>":
                i += 1
            elif c == "!":
                negate = True
                i += 1
            elif c == ",":
                i += 1
            elif c.isdigit():
                j = i
                while j < n and fmt[j].isdigit():
                    j += 1
                code = int(fmt[i:j])
                if not 100 <= code <= 999:
                    raise self.error(f"status condition {fmt[i:j]} is not an HTTP status", i)
                statuses.append(code)
                i = j
            elif c == "{":
                if arg is not None:
                    raise self.error("two {...} arguments in one directive", i)
                close = fmt.find("}", i + 1)
                if close < 0:
                    raise self.error("unterminated %{ (no closing brace)", i)
                arg = fmt[i + 1 : close]
                i = close + 1
            else:
                break
        letter = fmt[i]
        text = fmt[start : i + 1]
        strftime_pattern = None
        if letter == "t" and arg is not None:  # %{FORMAT}t: its own column, writer and pattern
            column, kind, writer, strftime_pattern = _time_directive(arg)
            escaped = False
        else:
            column, kind, escaped, writer = self.resolve(letter, arg, text, start)
        if letter in "lu":
            spec = _Writer(writer, None, "-")  # Apache's "-" whatever the status
        elif statuses:
            spec = _Writer(_conditional(writer, frozenset(statuses), negate), None, None)
        else:
            spec = _Writer(writer, BY_NAME[column] if letter == "g" else None, None)
        if strftime_pattern is not None:
            pattern = f"(?:{strftime_pattern})|-" if statuses else strftime_pattern  # '-': other statuses
        elif letter == "q":
            pattern = _QUERY
        elif letter == "U":
            pattern = r'(?:[^\s"\\]|\\\S)*?'  # lazy, so that %U%q splits at the first '?'
        elif escaped:
            pattern = _TEXT
        elif kind == "int":
            pattern = _INT
        elif kind == "time":
            pattern = _TIME
        else:
            pattern = r'[^\s"]*'
        self.items.append(Directive(text, letter, arg, column, kind, escaped, False, pattern, start))
        self.writers.append(spec)
        return i + 1

    def resolve(self, letter: str, arg: str | None, text: str, at: int) -> tuple[str, str, bool, Callable[[_R], str]]:
        if arg == "c" and letter in "ah":  # the connection's peer (Apache 2.4): here, the client
            arg = None
        takes_arg = letter in "ieogpT"
        if arg is not None and not takes_arg:
            raise self.error(f"{text}: %{letter} takes no {{...}} argument here", at)
        if letter in _SIMPLE:
            return _SIMPLE[letter]
        if letter == "t":
            clf_time = _clf_time_writer()
            return "time", "time", False, lambda r: clf_time(r.start_time)
        if letter in "ieog" and not arg:
            raise self.error(f"{text}: %{letter} needs a name between braces, as in %{{Name}}{letter}", at)
        if letter == "i":
            key = arg.lower()  # type: ignore[union-attr]
            return f"header:{key}", "text", True, lambda r: escape(r.request_headers.get(key))
        if letter == "o":
            key = arg.lower()  # type: ignore[union-attr]
            return f"response_header:{key}", "text", True, lambda r: escape(r.response_headers.get(key))
        if letter == "e":
            name = arg
            return f"env:{name}", "text", True, lambda r: escape(r.env.get(name))  # type: ignore[arg-type]
        if letter == "g":
            try:
                field = lookup(arg)  # type: ignore[arg-type]
            except UnknownField as err:
                raise self.error(f"{text}: no field named {arg!r}", at) from err
            return field.name, field.kind, False, _field_writer(field)
        if letter == "p":
            if arg in (None, "local", "canonical"):
                return "local_port", "int", False, lambda r: str(r.local_port)
            if arg == "remote":
                return "remote_port", "int", False, lambda r: str(r.remote_port)
            raise self.error(f"{text}: %{{...}}p takes local, remote or canonical", at)
        if letter == "T":
            if arg in (None, "s"):
                return "duration_s", "int", False, lambda r: str(r.duration_us // 1_000_000)
            if arg == "ms":
                return "duration_ms", "int", False, lambda r: str(r.duration_us // 1000)
            if arg == "us":
                return "duration_us", "int", False, lambda r: str(r.duration_us)
            raise self.error(f"{text}: %{{...}}T takes s, ms or us", at)
        raise self.error(f"unsupported directive {text} (supported: {_ALL_LETTERS} %%)", at)

    def _mark_quoted(self) -> tuple[Item, ...]:
        """A directive is quoted when a literal ending in an opening quote precedes it and one starting with '"' follows."""
        items = self.items
        inside = False
        out: list[Item] = []
        for n, item in enumerate(items):
            if isinstance(item, Literal):
                inside ^= item.text.count('"') % 2 == 1
                out.append(item)
                continue
            before = items[n - 1] if n else None
            after = items[n + 1] if n + 1 < len(items) else None
            quoted = (
                inside
                and isinstance(before, Literal)
                and before.text.endswith('"')
                and isinstance(after, Literal)
                and after.text.startswith('"')
            )
            if item.letter == "U" and isinstance(after, Directive) and after.letter == "q":
                # %U%q: the path ends at its first unescaped "?", which the lazy %U found by
                # trying every end, each time reading %q to the token's end (quadratic in a
                # path a client fills with %3F).  Without "?" and greedy: the same split.
                item = item._replace(pattern=_PATH_BEFORE_QUERY)
            elif quoted:
                item = item._replace(quoted=True, pattern=_QUOTED)
            elif item.kind == "text" and (item.escaped or item.letter == "g") and item.letter not in "Uq" and (
                    item.letter == "r" or _glued(before, -1) and _glued(after, 0)
                    and _delimiter(before, after) in _SPACED_DELIMITERS):
                item = item._replace(pattern=_delimited(item, before, after))
            out.append(item)
        return tuple(out)


def _delimited(item: Directive, before: Item | None, after: Item | None) -> str:
    """The pattern of escaped text (or a text field such as ``FINGERPRINT_OS``, whose
    labels hold spaces) between tabs or "|" (``_SPACED_DELIMITERS``): it may
    hold spaces, which Apache writes as they are (tabs, line ends and quotes it always
    escapes).  It may not hold its delimiter (the character after it, or before
    it at the end of the line), so that the line splits one way only, in time linear
    in its length; except the request line (``%r``), which holds spaces whatever
    separates the fields, and where exploits put "|": it ends at the last delimiter
    that lets the rest of the line fit.
    """
    delimiter = "" if item.letter == "r" else _delimiter(before, after)
    plain = rf'{_SPACED_TEXT}{re.escape(delimiter)}]*'
    return rf'{plain}(?:\\\S{plain})*'


#: How the pattern of text that may hold spaces begins (``_delimited``; ``_holds_spaces`` asks).
_SPACED_TEXT = r'[^\t\n\r\f\v"\\'

#: The delimiters between which escaped text may hold spaces: a tab (which Apache always
#: escapes) and "|".  Other characters that glue fields (":" of ``%h:%{remote}p``, "," of a
#: CSV) are in the values themselves (IPv6 addresses, FINGERPRINT_P0F, FINGERPRINT_TCP_OPTIONS):
#: there a field holds no space and may hold its delimiter, as around spaces.
_SPACED_DELIMITERS = ("", "\t", "|")


def _delimiter(before: Item | None, after: Item | None) -> str:
    """The character after a directive, or before it at the end of the line ("": none)."""
    near = after if after is not None else before
    return near.text[0 if near is after else -1] if isinstance(near, Literal) else ""


def _glued(item: Item | None, end: int) -> bool:
    """Whether a directive's neighbour ``item`` (None: the line's start or end) touches it
    with a character other than a space: a tab, "|", "," ... that delimits it."""
    if item is None:
        return True
    return isinstance(item, Literal) and item.text[end:][:1] not in ("", " ")


class _Writer(NamedTuple):
    """How one directive is written: a function of the record, and what allows folding it."""

    write: Callable[[_R], str]
    field: Field | None  # a plain %{FINGERPRINT_..}g: may join a run of its source
    const: str | None  # always this text: folded into the template


#: The Observation attributes each field source reads (see fields.py).  A run of
#: fields of one source is rendered again only when one of these objects changes,
#: so keep-alive requests on one connection render the SYN fields once.
_SOURCE_ATTRS = {
    "syn": ("fingerprint", "saved_syn"),
    "os": ("os",),
    "tcp_info": ("tcp_info",),
    "tcp_info_now": ("tcp_info_now",),
    "connection": ("accept_time_us",),
    "deny": ("deny",),
}


def _build_writer(items: tuple[Item, ...], specs: list[_Writer]) -> tuple[str, tuple[Callable[[_R], str], ...]]:
    """A %-template and its writers: constants folded in, runs of same-source fields joined."""
    parts: list[str | _Writer] = []
    specs_left = iter(specs)
    for item in items:
        parts.append(next(specs_left) if isinstance(item, Directive) else item.text)
    template: list[str] = []
    writers: list[Callable[[_R], str]] = []
    i, n = 0, len(parts)
    while i < n:
        part = parts[i]
        if isinstance(part, str):
            template.append(part.replace("%", "%%"))
            i += 1
        elif part.const is not None:
            template.append(part.const.replace("%", "%%"))
            i += 1
        elif part.field is None or part.field.source not in _SOURCE_ATTRS:
            template.append("%s")
            writers.append(part.write)
            i += 1
        else:
            source = part.field.source
            run_fields, pieces, end, j = [part.field], [""], i + 1, i + 1
            while j < n:
                nxt = parts[j]
                if isinstance(nxt, str):
                    j += 1
                    continue
                if nxt.field is None or nxt.field.source != source:
                    break
                pieces.append("".join(parts[end:j]))  # type: ignore[arg-type]
                run_fields.append(nxt.field)
                end = j = j + 1
            pieces.append("")
            template.append("%s")
            writers.append(_run_writer(tuple(run_fields), pieces, _SOURCE_ATTRS[source]))
            i = end
    return "".join(template), tuple(writers)


def _line_writer(template: str, writers: tuple[Callable[[_R], str], ...]) -> Callable[[_R], str]:
    """``lambda r: template % tuple(w(r) for w in writers)`` as one function with the
    calls written out: no list, no loop (a line is written per request)."""
    names = [f"_w{k}" for k in range(len(writers))]
    calls = "".join(f"{name}(r), " for name in names)
    source = f"def write(r, _t=_t, {', '.join(f'{n}={n}' for n in names)}):\n    return _t % ({calls})\n"
    scope: dict[str, object] = {"_t": template, **dict(zip(names, writers))}
    exec(source, scope)  # noqa: S102 - the source is built above from names only
    return scope["write"]  # type: ignore[return-value]


def _run_writer(fields: tuple[Field, ...], pieces: list[str], attrs: tuple[str, ...]) -> Callable[[_R], str]:
    """The text of a run of fields of one source (``pieces``: the literal text before,
    between and after them), kept while the source's objects are the same ones (the
    requests of a kept-alive connection share them)."""
    template = "%s".join(p.replace("%", "%%") for p in pieces)
    if len(attrs) == 1:
        return _run_writer_of_one(fields, template, attrs[0])
    key = attrgetter(*attrs)
    renderer = Renderer(fields)
    texts = renderer.texts
    if all(f.member is not None for f in fields):  # SYN fields only: filled in per shape
        fill = renderer.filler(pieces)
        missing = template % tuple(texts(Observation(None, None, None, None, None, None)))
        produce: Callable[[Observation], str] = \
            lambda obs: missing if obs.fingerprint is None else fill(obs.fingerprint)  # noqa: E731
    else:
        produce = lambda obs: template % tuple(texts(obs))  # noqa: E731
    cache: list[object] = [(), ""]  # the key objects last rendered, and the text

    def write(r: _R) -> str:
        obs = r.observation
        now = key(obs)
        last = cache[0]
        if len(last) == len(now) and all(map(is_, now, last)):  # type: ignore[arg-type]
            return cache[1]  # type: ignore[return-value]
        text = produce(obs)
        cache[0], cache[1] = now, text
        return text

    return write


def _run_writer_of_one(fields: tuple[Field, ...], template: str, attr: str) -> Callable[[_R], str]:
    """``_run_writer`` for a source of one attribute (TCP_INFO, the label, the accept time...)."""
    if all(f.info is not None for f in fields):  # fields of one TCP_INFO: one unpack, one format
        produce: Callable[[Observation], str] = _info_run(fields, template, attr)
    elif len(fields) == 1:
        (field,) = fields
        produce = lambda obs: render(field, obs)  # noqa: E731
    else:
        texts = Renderer(fields).texts
        produce = lambda obs: template % tuple(texts(obs))  # noqa: E731
    cache: list[object] = [_UNSET, ""]  # the object last rendered, and the text

    def write(r: _R) -> str:
        obs = r.observation
        now = getattr(obs, attr)
        if now is cache[0]:
            return cache[1]  # type: ignore[return-value]
        text = produce(obs)
        cache[0], cache[1] = now, text
        return text

    return write


_UNSET = object()


def _info_run(fields: tuple[Field, ...], template: str, attr: str) -> Callable[[Observation], str]:
    """The text of a run of fields of the TcpInfo ``attr``: the numbers go into the
    template as they are (``%s`` writes ``str`` of them, as ``render`` does)."""
    values = values_reader([f.info for f in fields])  # type: ignore[misc]
    missing = template % (("-",) * len(fields))

    def produce(obs: Observation) -> str:
        info = getattr(obs, attr)
        if info is None:
            return missing
        found = values(info)
        if None in found:
            found = tuple(["-" if v is None else v for v in found])
        return template % found

    return produce


def _field_writer(field: Field) -> Callable[[_R], str]:
    def write(r: _R) -> str:
        return render(field, r.observation)

    return write


def _conditional(writer: Callable[[_R], str], statuses: frozenset[int], negate: bool) -> Callable[[_R], str]:
    """Apache's ``%400,501{..}i``: the value only for (or, with ``!``, except for) those statuses."""

    def write(r: _R) -> str:
        return writer(r) if (r.status in statuses) != negate else "-"

    return write
