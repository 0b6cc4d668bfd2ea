"""Access-log files -> pandas DataFrames, fast, through a compiled ``LogFormat``.

This is the only code that reads log files for ``report``.  It is not a
second format parser: what a line looks like comes from ``LogFormat.items``
(and ``columns``), and every line the fast path is not sure about goes to
``LogFormat.parse``, which decides exactly (escapes included) or says why the
line is malformed.

Strategy.  A log is read in blocks of whole lines (``CHUNK_BYTES``).  For each
block:

1. numpy looks at the bytes once to find, per line, what the fast path cannot
   take: a backslash (an Apache escape: the tokenizer below would not undo it
   as Apache wrote it), a byte outside printable ASCII (controls, tabs, CR,
   bytes >= 0x80), a number of double quotes other than the format's, a quote
   that does not open or close a whole token, a leading or trailing space, two
   spaces in a row, or nothing at all (a blank line, counted as skipped);
2. the remaining lines go, as one buffer, to pandas' C tokenizer
   (``read_csv`` with one space as separator and ``"`` as quote, everything
   as text or numbers, only the columns asked for), plus one sentinel line so
   that the tokenizer always sees one token more than the format has;
3. each row is checked against the format's token plan: exactly as many
   tokens as the format writes (the extra column is empty and the last is
   not), numbers where the format has numbers, fixed text around a value
   where the format has it;
4. the lines rejected in (1) or (3) are handed to ``LogFormat.parse`` one by
   one: a good line joins the frame, a bad one is counted as malformed with
   the parser's reason.

Several cores.  ``report`` cuts a large regular file into ranges of whole lines
(``line_ranges``) and forks worker processes that each read ranges
(``LogReader.range_frames``) and aggregate them; the parent adds up their counts
in file order (``LogReader.add_range``), so line numbers are those of the file.
Processes, because the tokenizer and numpy hold the GIL for much of a block:
threads overlapped only partly.  A stream (stdin, gzip) cannot be cut into
ranges; ``LogReader.frames`` reads it here, with ``workers`` threads.

A format whose tokens the C tokenizer cannot cut apart (two directives in one
token, such as ``%U%q``, or quotes around more than one directive) is read
by ``LogFormat.parse`` alone: slower, and exactly as correct.

Known tolerance of the fast path: numbers are read by pandas, which also
accepts ``1.0`` or ``1e3`` where the format's regex wants digits; the text of
columns that were not asked for is not looked at, only counted as tokens.

Types: a column of a field of kind ``int``, and status, bytes, ports and
durations, is nullable ``Int64``; everything else is text (``category`` in the
chunks, to keep memory bounded).  ``-`` is missing (``<NA>``), as
``LogFormat.parse`` makes it ``None``.  Every frame has a ``line`` column (the
line number in its file) and a ``source`` attribute in ``frame.attrs``.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import pandas as pd

from .errors import TcpfpError
from .logformat import Directive, Literal, LogFormat, LogLineError, compile_format, unescape

__all__ = [
    "AUTO_FORMATS",
    "CHUNK_BYTES",
    "LogReader",
    "MalformedLine",
    "ReadStats",
    "UnreadableInput",
    "detect_format",
    "int_columns",
    "line_ranges",
    "open_input",
    "read_dataframe",
    "read_sample",
]

CHUNK_BYTES = 8 << 20
#: Named formats tried, in this order, when no format is given.
AUTO_FORMATS = ("tcpfp", "combined", "common")
SAMPLE_LINES = 20


class UnreadableInput(TcpfpError):
    """An input that cannot be opened or read (missing file, bad gzip, ...)."""


@dataclass(frozen=True)
class MalformedLine:
    source: str
    line: int
    reason: str


@dataclass
class ReadStats:
    """Line counts over all inputs: ``lines == parsed + malformed + skipped``."""

    lines: int = 0
    parsed: int = 0
    malformed: int = 0
    skipped: int = 0  # blank lines
    examples: list[MalformedLine] = field(default_factory=list)
    max_examples: int = 10

    def bad(self, source: str, line: int, reason: str) -> None:
        self.malformed += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(MalformedLine(source, line, reason))

    def add(self, source: str, base: int, lines: int, parsed: int, malformed: int, skipped: int,
            examples: Iterable[tuple[int, str]]) -> None:
        """Count lines read after ``base`` lines of ``source``; ``examples`` are (line, reason)
        with line numbers counted from there."""
        self.lines += lines
        self.parsed += parsed
        self.malformed += malformed
        self.skipped += skipped
        for line, reason in examples:
            if len(self.examples) >= self.max_examples:
                break
            self.examples.append(MalformedLine(source, base + line, reason))


# --------------------------------------------------------------------------- inputs


def open_input(path: str) -> tuple[BinaryIO, str, int | None]:
    """A binary stream of the log ``path`` (``-`` is stdin), gunzipped when it is gzip.

    Returns the stream, a label for messages and the size in bytes when known.
    """
    try:
        if path == "-":
            raw: BinaryIO = sys.stdin.buffer
            label, size = "<stdin>", None
        else:
            raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
            label, size = path, os.fstat(raw.fileno()).st_size
    except OSError as error:
        raise UnreadableInput(f"{path}: {error.strerror or error}") from None
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[arg-type]
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered, mode="rb"), label, size  # type: ignore[return-value]
    return buffered, label, size


def int_columns(fmt: LogFormat) -> frozenset[str]:
    """Columns typed as nullable integers: int fields, status, bytes, ports, durations."""
    return frozenset(d.column for d in fmt.directives if d.kind == "int")


def detect_format(sample: bytes, complete: bool = False) -> tuple[str, LogFormat] | None:
    """The first of ``AUTO_FORMATS`` that most of the first lines of ``sample`` fit.

    ``complete``: ``sample`` is the whole input, so its last line is whole even without a
    newline; otherwise the text after its last newline is a cut line and is not tried.
    """
    pieces = sample.split(b"\n")
    if not complete and len(pieces) > 1:
        pieces.pop()  # cut (or empty, after the last newline)
    lines = [ln for ln in (p.decode("latin-1") for p in pieces) if ln.strip()][:SAMPLE_LINES]
    if not lines:
        return None
    for name in AUTO_FORMATS:
        fmt = compile_format(name)
        fits = 0
        for line in lines:
            try:
                fmt.parse(line)
                fits += 1
            except LogLineError:
                pass
        if fits * 2 > len(lines):
            return name, fmt
    return None


class _Replay:
    """A stream that gives ``head`` again before the rest of ``stream`` (for streams that cannot seek)."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head, self._stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._stream.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._stream.read(n)

    def close(self) -> None:
        self._stream.close()


def read_sample(stream: BinaryIO, source: str, lines: int = SAMPLE_LINES,
                limit: int = CHUNK_BYTES) -> tuple[bytes, bool, BinaryIO]:
    """The start of ``stream`` up to its first ``lines`` non-blank lines (at most ``limit`` bytes).

    Returns the sample, whether it is the whole input, and a stream that reads the input
    from where ``stream`` was (``stream`` itself, moved back, when it can seek).  A pipe
    is read until the sample is there, not only what its first read gives.
    """
    try:
        # GzipFile says it can seek even over a pipe (and then fails): ask the file under it.
        seekable = stream.seekable() and (not isinstance(stream, gzip.GzipFile) or stream.fileobj.seekable())
        start = stream.tell() if seekable else None
    except (OSError, ValueError, AttributeError):
        start = None
    data = b""
    eof = False
    try:
        while len(data) < limit:
            piece = stream.read(min(1 << 16, limit - len(data)))
            if not piece:
                eof = True
                break
            data += piece
            whole = data[: data.rfind(b"\n") + 1]
            if whole.count(b"\n") >= lines and sum(1 for ln in whole.split(b"\n") if ln.strip()) >= lines:
                break
        if start is not None:
            stream.seek(start)
    except (OSError, EOFError, zlib.error) as error:
        raise UnreadableInput(f"{source}: cannot read: {error}") from None
    return data, eof, stream if start is not None else _Replay(data, stream)  # type: ignore[return-value]


# --------------------------------------------------------------------------- the token plan


@dataclass(frozen=True)
class _Token:
    """What the C tokenizer gives for one whitespace-separated piece of the format."""

    directive: Directive | None  # None: fixed text only
    prefix: str = ""  # fixed text glued before the value
    suffix: str = ""


def _token_plan(fmt: LogFormat) -> list[_Token] | None:
    """The format as the tokenizer will cut it, or None when it cannot be cut apart."""
    tokens: list[list[object]] = []
    current: list[object] = []
    for item in fmt.items:
        if isinstance(item, Directive):
            current.append(item)
            continue
        for char in item.text:
            if char == " ":
                if current:
                    tokens.append(current)
                    current = []
            else:
                current.append(char)
    if current:
        tokens.append(current)
    plan: list[_Token] = []
    for parts in tokens:
        directives = [p for p in parts if isinstance(p, Directive)]
        if len(directives) > 1:
            return None
        if not directives:
            text = "".join(parts)  # type: ignore[arg-type]
            if '"' in text:
                return None
            plan.append(_Token(None, text))
            continue
        (d,) = directives
        at = parts.index(d)
        before = "".join(parts[:at])  # type: ignore[arg-type]
        after = "".join(parts[at + 1:])  # type: ignore[arg-type]
        if d.quoted:
            if before != '"' or after != '"':
                return None
            plan.append(_Token(d))
        elif '"' in before or '"' in after:
            return None
        elif d.kind == "time":
            if before or after:
                return None
            # [dd/Mon/yyyy:hh:mm:ss +zzzz]: two tokens; only the count is checked.
            plan.append(_Token(d, "[", ""))
            plan.append(_Token(None, ""))
        else:
            plan.append(_Token(d, before, after))
    return plan if plan else None


# --------------------------------------------------------------------------- the reader


@dataclass
class _Block:
    """What one block of lines gave: a frame (``line`` relative to the block) and counts."""

    frame: pd.DataFrame | None
    lines: int
    skipped: int
    malformed: int
    examples: list[tuple[int, str]]


class _Parser:
    """Everything needed to parse a block; built once, used in this process or in workers."""

    def __init__(self, fmt: LogFormat, columns: list[str], max_examples: int) -> None:
        self.format = fmt
        self.columns = columns
        self.ints = int_columns(fmt) & set(columns)
        self.escaped = {d.column for d in fmt.directives if d.escaped and d.kind == "text"}
        self.max_examples = max_examples
        self.plan = _token_plan(fmt)
        self.quotes = sum(i.text.count('"') for i in fmt.items if isinstance(i, Literal))
        if self.plan is not None:
            self._prepare_fast(self.plan)

    def _prepare_fast(self, plan: list[_Token]) -> None:
        ntokens = len(plan)
        self.names = [f"t{i}" for i in range(ntokens + 1)]
        self.use = {i: t.directive.column for i, t in enumerate(plan)
                    if t.directive is not None and t.directive.column in self.columns}
        self.last, self.extra = ntokens - 1, ntokens
        needed = set(self.use) | {self.last, self.extra}
        needed |= {i + 1 for i, t in enumerate(plan) if i in self.use and t.directive.kind == "time"}
        self.usecols = [self.names[i] for i in sorted(needed)]
        self.dtypes: dict[str, object] = {}
        self.na: dict[str, list[str]] = {}
        for i in sorted(needed):
            column = self.use.get(i)
            if column in self.ints and i != self.last and not plan[i].prefix and not plan[i].suffix:
                self.na[self.names[i]] = ["-"]  # numbers: the C parser converts them
            else:
                self.dtypes[self.names[i]] = object
        self.sentinel = (" ".join(["-"] * (ntokens + 1)) + "\n").encode()

    # ---------------------------------------------------------------- one block

    def block(self, buf: bytes) -> _Block:
        """Parse whole lines ``buf`` (ending with a newline)."""
        arr = np.frombuffer(buf, dtype=np.uint8)
        ends = np.flatnonzero(arr == 10)
        nlines = len(ends)
        starts = np.empty_like(ends)
        if nlines:
            starts[0] = 0
            starts[1:] = ends[:-1] + 1
        blank = ends == starts
        out = _Block(None, nlines, int(blank.sum()), 0, [])
        if self.plan is None:
            self._slow(out, buf, starts, ends, np.flatnonzero(~blank), None, None)
            return out
        # Controls (a newline is never inside a line), DEL and bytes >= 0x80: LogFormat.parse decides.
        odd = np.flatnonzero((arr - np.uint8(32)) > np.uint8(94))
        plain = ~blank & (np.searchsorted(odd, ends) == np.searchsorted(odd, starts))
        plain &= arr[np.maximum(ends - 1, 0)] != 32  # a trailing space: let the parser judge
        # A leading space or two spaces in a row (even inside quotes): the parser judges too, so
        # that on the fast path every space separates two tokens and the tokenizer can split at
        # single spaces, which is faster than at runs of whitespace.
        plain &= arr[np.minimum(starts, len(arr) - 1)] != 32
        space = arr == 32
        doubles = np.flatnonzero(space[1:] & space[:-1])
        if len(doubles):
            plain[np.searchsorted(ends, doubles)] = False
        bs = np.flatnonzero(arr == 92)
        escaped_lines = np.zeros(nlines, dtype=bool)
        if len(bs):
            escaped_lines[np.unique(np.searchsorted(ends, bs))] = True
            escaped_lines &= plain
        simple = plain & ~escaped_lines
        rows = np.flatnonzero(simple)
        if len(rows) == nlines:
            body = buf
        else:
            body = _select_lines(buf, starts, ends, simple)
        erows = np.flatnonzero(escaped_lines)
        if len(erows):
            # \\ and \" become bytes 2 and 1 (never in a plain line), so the tokenizer sees
            # no escaped quote; the values are restored and unescaped after tokenizing.
            # Lines end with a newline, so replacing in all of them at once is the same as line by line.
            body += _select_lines(buf, starts, ends, escaped_lines).replace(
                b"\\\\", b"\x02").replace(b'\\"', b"\x01")
            rows = np.concatenate([rows, erows])
        frame = None
        rejected = np.empty(0, dtype=np.intp)
        if len(rows):
            nplain = len(rows) - len(erows)
            quotes = self._quotes_ok(body, len(rows))
            if not quotes.all():
                # A line whose quotes do not pair up would make the tokenizer run into the next line.
                rejected = rows[~quotes]
                barr = np.frombuffer(body, dtype=np.uint8)
                bends = np.flatnonzero(barr == 10)
                lengths = np.diff(bends, prepend=-1)
                body = barr[np.repeat(quotes, lengths)].tobytes()
                nplain = int(quotes[:nplain].sum())
                rows = rows[quotes]
            if len(rows):
                frame, ok = self._tokenize(body, nplain)
                if len(frame) != len(rows):  # never expected; be exact rather than fast
                    frame, ok, rejected = None, None, np.concatenate([rejected, rows])
                    rows = rows[:0]
                elif not ok.all():
                    rejected = np.concatenate([rejected, rows[~ok]])
                    frame = frame[ok]
                    rows = rows[ok]
        slow = np.flatnonzero(~blank & ~plain)
        if len(rejected):
            slow = np.sort(np.concatenate([slow, rejected]).astype(np.intp))
        self._slow(out, buf, starts, ends, slow, frame, rows)
        return out

    def _quotes_ok(self, body: bytes, nrows: int) -> np.ndarray:
        """Per line of ``body``: the format's number of quotes, each opening or closing a token."""
        arr = np.frombuffer(body, dtype=np.uint8)
        q = np.flatnonzero(arr == 34)
        if not len(q):
            return np.full(nrows, self.quotes == 0)
        ends = np.flatnonzero(arr == 10)
        counts = np.diff(np.searchsorted(q, ends), prepend=0)
        ok = counts == self.quotes
        if (counts & 1).any():
            misplaced = self._misplaced_by_line(arr, ends, q, counts, nrows)
        else:
            # Every line has an even number of quotes, so the quotes open and close in turn
            # across the whole body: even ones open (after a space or at a line start), odd ones close.
            opening, closing = q[0::2], q[1::2]
            before = arr[np.maximum(opening - 1, 0)]
            after = arr[closing + 1]  # never past the end: the body ends with a newline
            misplaced = np.concatenate([
                opening[~((before == 32) | (before == 10) | (opening == 0))],
                closing[~((after == 32) | (after == 10))]])
        if len(misplaced):
            ok[np.unique(np.searchsorted(ends, misplaced))] = False
        return ok

    @staticmethod
    def _misplaced_by_line(arr: np.ndarray, ends: np.ndarray, q: np.ndarray, counts: np.ndarray,
                           nrows: int) -> np.ndarray:
        """The quotes that do not open or close a token, counting opening and closing per line."""
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        qline = np.searchsorted(ends, q)
        first = np.cumsum(counts) - counts
        opening = (np.arange(len(q)) - first[qline]) % 2 == 0
        before_ok = (q == starts[qline]) | (arr[np.maximum(q - 1, 0)] == 32)
        after_ok = (q + 1 == ends[qline]) | (arr[np.minimum(q + 1, len(arr) - 1)] == 32)
        return q[np.where(opening, ~before_ok, ~after_ok)]

    def _tokenize(self, body: bytes, nplain: int) -> tuple[pd.DataFrame, np.ndarray]:
        """The wanted columns of the fast lines, and which rows fit the token plan."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = pd.read_csv(
                io.BytesIO(body + self.sentinel), sep=" ", header=None, names=self.names,
                usecols=self.usecols, dtype=self.dtypes, na_values=self.na, keep_default_na=False,
                quotechar='"', doublequote=False, engine="c", skip_blank_lines=False, low_memory=False,
                index_col=False,  # a first line with surplus tokens is cut to the names, not read as an index
            )
        raw = raw.iloc[:-1]
        n = len(raw)
        extra = raw[self.names[self.extra]].to_numpy()
        ok = (extra == "") | pd.isna(extra)
        lastv = raw[self.names[self.last]].to_numpy()
        ok &= ~((lastv == "") | pd.isna(lastv))
        out: dict[str, object] = {}
        for i, column in self.use.items():
            token = self.plan[i]  # type: ignore[index]
            values = raw[self.names[i]]
            if n > nplain and values.dtype == object:
                values, good = _restore(values, nplain, column in self.escaped)
                ok &= good
            if token.directive.kind == "time":  # [date and zone]: two tokens
                head = values.astype(object)
                tail = raw[self.names[i + 1]].astype(object)
                fits = head.str.startswith("[") & tail.str.endswith("]") & ~head.str.contains("]", regex=False)
                ok &= fits.fillna(False).to_numpy(dtype=bool)
                out[column] = _to_text(head.str.slice(1) + " " + tail.str.slice(0, -1))
                continue
            if token.prefix or token.suffix:
                text = values.astype(object)
                fits = text.str.startswith(token.prefix) & text.str.endswith(token.suffix)
                fits &= text.str.len() >= len(token.prefix) + len(token.suffix)
                ok &= fits.fillna(False).to_numpy(dtype=bool)
                values = text.str.slice(len(token.prefix), -len(token.suffix) if token.suffix else None)
            if column in self.ints:
                numbers, valid = _to_int(values)
                ok &= valid
                out[column] = numbers
            else:
                out[column] = _to_text(values)
        return pd.DataFrame(out, index=pd.RangeIndex(n)), np.asarray(ok, dtype=bool)

    # ---------------------------------------------------------------- slow path and assembly

    def _slow(self, out: _Block, buf: bytes, starts: np.ndarray, ends: np.ndarray, slow: np.ndarray,
              frame: pd.DataFrame | None, rows: np.ndarray | None) -> None:
        records: list[dict[str, str | None]] = []
        slow_rows: list[int] = []
        parse = self.format.parse
        for i in slow.tolist():
            text = buf[starts[i]:ends[i]].decode("latin-1")
            if not text.strip():
                out.skipped += 1
                continue
            try:
                record = parse(text)
            except LogLineError as error:
                out.malformed += 1
                if len(out.examples) < self.max_examples:
                    out.examples.append((i + 1, f"{error.reason} (at character {error.column})"))
                continue
            big = next((c for c in self.ints if record[c] is not None and not _fits_int64(record[c])), None)
            if big is not None:
                out.malformed += 1
                if len(out.examples) < self.max_examples:
                    shown = record[big] if len(record[big]) <= 40 else record[big][:37] + "..."
                    out.examples.append((i + 1, f"{big} {shown} is out of the 64-bit integer range"))
                continue
            records.append(record)
            slow_rows.append(i)
        parts = []
        if frame is not None and len(frame):
            frame.index = pd.RangeIndex(len(frame))
            frame["line"] = rows + 1
            parts.append(frame)
        if records:
            data: dict[str, object] = {}
            for column in self.columns:
                values = [r[column] for r in records]
                if column in self.ints:
                    data[column] = pd.array([None if v is None else int(v) for v in values], dtype="Int64")
                else:
                    data[column] = pd.Categorical(values)
            data["line"] = np.asarray(slow_rows, dtype=np.int64) + 1
            parts.append(pd.DataFrame(data))
        if not parts:
            return
        if len(parts) == 1:
            result = parts[0]
        else:
            result = pd.concat(parts, ignore_index=True)
            for column in self.columns:
                if column not in self.ints:
                    result[column] = result[column].astype("category")
        if len(parts) > 1 or len(rows if rows is not None else ()) and not (np.diff(rows) > 0).all():
            result = result.sort_values("line", kind="stable", ignore_index=True)
        result = result[[*self.columns, "line"]]
        result["line"] = result["line"].astype(np.int64)
        out.frame = result


class LogReader:
    """Reads logs of one format into DataFrames, block by block, counting what it meets.

    ``workers`` > 1 parses the blocks of a stream in that many threads (the order of
    the frames is kept; pandas' tokenizer and numpy release the GIL for part of their
    work); an input smaller than two blocks is parsed in the calling thread.  Ranges of
    a file read in other processes: ``range_frames`` there, ``add_range`` here.
    """

    def __init__(self, fmt: LogFormat, columns: Iterable[str] | None = None, *,
                 chunk_bytes: int = CHUNK_BYTES, max_examples: int = 10, workers: int = 1,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.format = fmt
        wanted = list(fmt.columns) if columns is None else list(dict.fromkeys(columns))
        unknown = [c for c in wanted if c not in fmt.columns]
        if unknown:
            raise TcpfpError(f"the log format has no column {unknown[0]!r} (it has: {', '.join(fmt.columns)})")
        self.columns = wanted
        self.ints = int_columns(fmt) & set(wanted)
        self.stats = ReadStats(max_examples=max_examples)
        self.chunk_bytes = chunk_bytes
        self.workers = workers
        self.progress = progress
        self._parser = _Parser(fmt, wanted, max_examples)

    @property
    def fast(self) -> bool:
        return self._parser.plan is not None

    def _blocks(self, stream: BinaryIO, source: str) -> Iterator[tuple[bytes, int]]:
        """Blocks of whole lines, each with how far the input has been read: bytes of the
        file, so for gzip its compressed bytes (the size the progress bar is given)."""
        rest: list[bytes] = []  # the start of a line still to end: pieces, joined once it ends
        done = 0
        where = _compressed_position(stream)
        while True:
            try:
                block = stream.read(self.chunk_bytes)
            except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
                raise UnreadableInput(f"{source}: cannot read: {error}") from None
            if not block:
                if rest:
                    yield b"".join(rest) + b"\n", done
                return
            done = where() if where is not None else done + len(block)
            cut = block.rfind(b"\n")  # only the new block: a line of gigabytes is read once
            if cut < 0:
                rest.append(block)
                continue
            yield b"".join(rest) + block[: cut + 1] if rest else block[: cut + 1], done
            rest = [block[cut + 1:]] if cut + 1 < len(block) else []

    def range_frames(self, fd: int, source: str, start: int, end: int) -> Iterator[pd.DataFrame]:
        """Like ``frames``, for the lines between the offsets ``start`` and ``end`` of the open file ``fd``.

        ``start`` and ``end`` are line starts (``line_ranges``); the ``line`` column and
        the examples count from the first line of the range, which is line 1.  The file
        is read with ``pread``: processes that share ``fd`` do not move each other's offset,
        and they all read the file that was opened, even if its name now means another.
        """
        yield from self._collect(((self._parser.block(b), done) for b, done in
                                  self._blocks(_Range(fd, start, end, source), source)), source)

    def add_range(self, counts: ReadStats, source: str, base: int, done: int) -> None:
        """Count a range read elsewhere (``range_frames`` with its own stats) that follows ``base`` lines of its file.

        ``done`` is the offset where the range ends, for the progress callback.
        """
        self.stats.add(source, base, counts.lines, counts.parsed, counts.malformed, counts.skipped,
                       ((e.line, e.reason) for e in counts.examples))
        if self.progress is not None:
            self.progress(done, self.stats.lines)

    def frames(self, stream: BinaryIO, source: str) -> Iterator[pd.DataFrame]:
        """DataFrames of the parsed lines of ``stream``, in order, one per block of lines."""
        blocks = self._blocks(stream, source)
        first = next(blocks, None)
        if first is None:
            return
        second = next(blocks, None)
        if second is None or self.workers <= 1:
            pending = [first] if second is None else [first, second]
            results = ((self._parser.block(b), done) for b, done in _chain(pending, blocks))
            yield from self._collect(results, source)
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        # The C tokenizer and numpy release the GIL: threads overlap blocks on several cores.
        # At most workers + 1 blocks are in flight, so memory stays bounded.
        def run() -> Iterator[tuple[_Block, int]]:
            with ThreadPoolExecutor(self.workers) as pool:
                pending: deque = deque()
                for b, done in _chain([first, second], blocks):
                    pending.append((pool.submit(self._parser.block, b), done))
                    if len(pending) > self.workers:
                        future, size = pending.popleft()
                        yield future.result(), size
                while pending:
                    future, size = pending.popleft()
                    yield future.result(), size

        yield from self._collect(run(), source)

    def _collect(self, results: Iterable[tuple[_Block, int]], source: str) -> Iterator[pd.DataFrame]:
        base = 0
        stats = self.stats
        for result, done in results:
            frame = result.frame
            if frame is not None:
                if base:
                    frame["line"] += base
                frame.attrs["source"] = source
            stats.add(source, base, result.lines, 0 if frame is None else len(frame), result.malformed,
                      result.skipped, result.examples)
            base += result.lines
            if self.progress is not None:
                self.progress(done, stats.lines)
            if frame is not None:
                yield frame


def _compressed_position(stream: BinaryIO) -> Callable[[], int] | None:
    """For a gzip file: where its compressed file has been read to; None otherwise."""
    if not isinstance(stream, gzip.GzipFile):
        return None
    try:
        if stream.fileobj.seekable():  # type: ignore[union-attr]
            return stream.fileobj.tell  # type: ignore[union-attr]
    except (OSError, ValueError, AttributeError):
        pass
    return None


class _Range:
    """The bytes of the open file ``fd`` from ``start`` to ``end``, read with ``pread``."""

    def __init__(self, fd: int, start: int, end: int, source: str) -> None:
        self.fd, self.at, self.end, self.source = fd, start, end, source

    def read(self, n: int) -> bytes:
        if self.at >= self.end:
            return b""
        try:
            data = os.pread(self.fd, min(n, self.end - self.at), self.at)
        except OSError as error:
            raise UnreadableInput(f"{self.source}: cannot read: {error.strerror or error}") from None
        self.at += len(data)
        if not data:
            self.at = self.end  # the file shrank: what is gone is not read
        return data


def line_ranges(fd: int, size: int, parts: int, source: str = "log") -> list[tuple[int, int]]:
    """The first ``size`` bytes of the open file ``fd`` cut into about ``parts`` ranges of
    whole lines: (start, end) offsets.

    Each cut is moved forward to the start of the next line, so a range holds the
    lines that start inside it; a range left empty by a very long line is dropped.
    """
    cuts = [0]
    try:
        for k in range(1, parts):
            at = max(size * k // parts, cuts[-1] + 1)
            if at >= size:
                break
            at -= 1  # a cut right after a newline is a line start already
            while at < size:
                piece = os.pread(fd, min(1 << 16, size - at), at)
                if not piece:
                    at = size
                    break
                newline = piece.find(b"\n")
                if newline >= 0:
                    at += newline + 1
                    break
                at += len(piece)
            if at >= size:
                break
            if at > cuts[-1]:
                cuts.append(at)
    except OSError as error:
        raise UnreadableInput(f"{source}: cannot read: {error.strerror or error}") from None
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _select_lines(buf: bytes, starts: np.ndarray, ends: np.ndarray, mask: np.ndarray) -> bytes:
    """The lines of ``buf`` (each with its newline) where ``mask`` is true, joined run by run."""
    edges = np.diff(mask.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    first, after = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    view = memoryview(buf)
    return b"".join([view[a:b] for a, b in zip(starts[first].tolist(), (ends[after - 1] + 1).tolist())])


def _chain(first: list, rest: Iterator) -> Iterator:
    yield from first
    yield from rest


def _restore(values: pd.Series, nplain: int, escaped: bool) -> tuple[pd.Series, np.ndarray]:
    """Undo the stand-in bytes of the escaped lines (rows from ``nplain``); unescape if Apache escaped the column.

    Each distinct value of those rows is looked at once.
    """
    arr = values.to_numpy(dtype=object, copy=True)
    good = np.ones(len(arr), dtype=bool)
    codes, uniques = pd.factorize(arr[nplain:], use_na_sentinel=True)
    uniques = np.asarray(uniques, dtype=object)
    changed = np.zeros(len(uniques), dtype=bool)
    bad = np.zeros(len(uniques), dtype=bool)
    for k, v in enumerate(uniques.tolist()):
        if not isinstance(v, str) or ("\x01" not in v and "\x02" not in v and "\\" not in v):
            continue
        if not escaped:
            if "\x01" in v or "\x02" in v:
                bad[k] = True  # an escape where Apache writes none: LogFormat.parse decides
            continue
        uniques[k] = unescape(v.replace("\x02", "\\\\").replace("\x01", '\\"'))
        changed[k] = True
    if changed.any() or bad.any():
        safe = np.maximum(codes, 0)
        has = codes >= 0
        if changed.any():
            rows = np.flatnonzero(has & changed[safe])
            arr[nplain + rows] = uniques[codes[rows]]
        if bad.any():
            good[nplain:] = ~(has & bad[safe])
    return pd.Series(arr, index=values.index, dtype=object), good


#: Floats are exact integers up to here; larger numbers go to ``LogFormat.parse`` (``_slow``), which
#: reads them exactly and rejects those beyond Int64.
_EXACT_FLOAT = float(1 << 53)
_INT64 = np.iinfo(np.int64)


def _fits_int64(text: str) -> bool:
    """A number's text (``-?[0-9]+``) within Int64; by its length first (Python refuses to
    convert more than 4300 digits)."""
    digits = len(text) - (text[0] == "-")
    return digits <= 19 and _INT64.min <= int(text) <= _INT64.max


def _to_int(values: pd.Series) -> tuple[pd.arrays.IntegerArray, np.ndarray]:
    """Nullable integers and where the value was a number or ``-``."""
    if values.dtype.kind == "u":
        v = values.to_numpy()
        fits = v <= np.uint64(_INT64.max)
        return pd.arrays.IntegerArray(np.where(fits, v, 0).astype(np.int64), ~fits), fits
    if values.dtype.kind == "i":
        return pd.array(values.to_numpy(), dtype="Int64"), np.ones(len(values), dtype=bool)
    if values.dtype.kind == "f":
        v = values.to_numpy()
        finite = np.isfinite(v) & (np.abs(v) < _EXACT_FLOAT)
        whole = finite & (np.floor(np.where(finite, v, 0)) == np.where(finite, v, 0))
        nan = np.isnan(v)
        valid = whole | nan
        ints = np.where(whole, v, 0).astype(np.int64)
        return pd.arrays.IntegerArray(ints, ~whole), valid
    text = values.astype(object)
    dash = (text == "-").to_numpy(dtype=bool)
    numbers = pd.to_numeric(text.where(~dash), errors="coerce")
    return _to_int_from_numbers(numbers, dash)


def _to_int_from_numbers(numbers: pd.Series, dash: np.ndarray) -> tuple[pd.arrays.IntegerArray, np.ndarray]:
    v = numbers.to_numpy(dtype=float, na_value=np.nan)
    finite = np.isfinite(v) & (np.abs(v) < _EXACT_FLOAT)
    safe = np.where(finite, v, 0)
    whole = finite & (np.floor(safe) == safe)
    return pd.arrays.IntegerArray(safe.astype(np.int64), ~whole), whole | dash


def _to_text(values: pd.Series) -> pd.Categorical:
    """Text as a categorical, ``-`` missing."""
    codes, uniques = pd.factorize(values.astype(object), use_na_sentinel=True)
    uniques = pd.Index(uniques, dtype=object)
    dash = uniques.get_indexer(["-"])[0]
    if dash >= 0:
        codes = codes.copy()
        codes[codes == dash] = -1
        keep = np.ones(len(uniques), dtype=bool)
        keep[dash] = False
        remap = np.cumsum(keep) - 1
        codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
        uniques = uniques[keep]
    return pd.Categorical.from_codes(codes, categories=pd.Index(uniques, dtype=object), validate=False)


# --------------------------------------------------------------------------- convenience


def read_dataframe(paths: Sequence[str], fmt: LogFormat | str,
                   columns: Iterable[str] | None = None) -> tuple[pd.DataFrame, ReadStats]:
    """Every parsed line of ``paths`` as one DataFrame (text columns as ``string``)."""
    fmt = compile_format(fmt) if isinstance(fmt, str) else fmt
    reader = LogReader(fmt, columns)
    frames = []
    for path in paths:
        stream, label, _ = open_input(path)
        try:
            for frame in reader.frames(stream, label):
                frame = frame.copy()
                frame["source"] = label
                frames.append(frame)
        finally:
            if path != "-":
                stream.close()
    if not frames:
        empty = pd.DataFrame({c: pd.array([], dtype="Int64" if c in reader.ints else "string")
                              for c in reader.columns})
        return empty, reader.stats
    out = pd.concat(frames, ignore_index=True)
    for column in reader.columns:
        if column not in reader.ints:
            out[column] = out[column].astype(object).astype("string")
    return out, reader.stats


class TerminalProgress:
    """A one-line progress bar on stderr (stdlib only); call it with (bytes done, lines)."""

    def __init__(self, total: int | None, label: str, stream=None) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.shown = False

    def __call__(self, done: int, lines: int) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        if elapsed < 0.5 and not self.shown:
            return
        if self.total:
            share = min(done / self.total, 1.0)
            bar = "#" * int(share * 30)
            text = f"\r{self.label} [{bar:<30}] {share:4.0%} {lines:,} lines {lines / elapsed:,.0f}/s"
        else:
            text = f"\r{self.label} {done >> 20} MiB {lines:,} lines {lines / elapsed:,.0f}/s"
        self.stream.write(text)
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
