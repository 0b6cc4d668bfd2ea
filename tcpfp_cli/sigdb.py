"""p0f v3 signature databases (``p0f.fp``), and p0f's own matching of a SYN against them.

Strategy.  A database is read once into frozen records: one ``TcpSignature``
per ``sig =`` line, each pointing at its ``Label``.  The format and every rule
below follow p0f 3.09b (its README section 5, readfp.c and fp_tcp.c), because
p0f is the reference: ``tests/test_sigdb_p0f_oracle.py`` builds a SYN for every
signature of Debian's ``p0f.fp`` and checks that p0f and ``match`` name the
same label, with the same generic/fuzzy flags.

Matching (p0f's ``tcp_find_match``) runs on the values p0f itself uses, which
are exactly those of the packet's raw signature (``Fingerprint.p0f``, equal to
p0f's ``raw_sig``), plus the window, which the raw signature may only show as
``mss*N``.  Signatures are bucketed by option layout (kinds and EOL padding
must be equal); within the bucket, in file order:

- quirks must be equal, or differ only by ``df``/``id+`` missing and ``id-``/
  ``ecn`` appearing (a fuzzy candidate).  A ``*`` signature ignores its
  IPv4-only quirks (``df``, ``id+``, ``id-``) on IPv6 and ``flow`` on IPv4.
  (Like p0f, the signature's IP version is otherwise not compared.)
- IP option length, MSS, window scale and payload class must agree (``*``
  matches anything); the window as a value, ``%N`` (divisible by N), or
  ``mss*N``/``mtu*N`` (the packet's own window multiple).
- the signature's initial TTL must be >= the observed TTL and at most 35
  above it, else the candidate is only fuzzy; a ``ttl-`` (random TTL)
  signature needs only >= and is never fuzzy for its TTL.

The first exact match of a specific (``s``) signature wins at once; otherwise
the first exact generic (``g``) one; otherwise the first fuzzy candidate, but
never for a userland tool (class ``!``).

Reading follows readfp.c too: ``;`` comments, a ``classes`` line before the
first section, then per section ``label`` (and ``sys`` after a tool's label)
and ``sig`` lines; a name is printed as the file first spelled it (names
compare without case).  Like p0f, a signature that an earlier specific one
of its section already matches exactly is an error ("already covered").
Every error is one ``SignatureFileError`` naming the file, the line and the
problem; ``tests/test_sigdb_p0f_oracle.py`` also checks that p0f accepts and
refuses the same files, naming the same lines.

Cost.  Candidates that pass every test but the TTL are memoised per packet
shape (version, raw signature without TTL, window), and whole results per
(raw signature, window), so a repeated SYN costs one dictionary lookup;
a new shape costs one pass over its layout's bucket (at most 27 signatures
in p0f's database).

Where we differ from p0f, on purpose, only for files p0f itself misreads or
that we refuse: p0f reads a ``ttl-`` signature's IP option length with its
first digit skipped (harmless for the ``0`` every real database has); we read
it whole.  We refuse an empty numeric field, which p0f reads as 0, and a label flavor
with a quote, a backslash or a character that is not printable ASCII (it
goes into log lines as it is).  We ignore
trailing blanks and carriage returns, which p0f keeps (and then refuses).
HTTP signature values are not checked.  Several files are searched in the
order given, as one file would be; "already covered" is checked per file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from . import signature as sig
from .errors import TcpfpError
from .options import P0F_MAX_OPTIONS, P0F_OPTION_NAMES, p0f_layout_text
from .syn import Fingerprint

#: Where Debian's p0f package installs its database.
DEFAULT_DATABASE = "/etc/p0f/p0f.fp"

#: A signature's initial TTL may exceed the observed TTL by this much (MAX_DIST).
MAX_DIST = sig.MAX_DISTANCE

#: Characters besides letters and digits allowed in OS and tool names (p0f's NAME_CHARS).
NAME_CHARS = frozenset(" ./-_!?()")

TOOL_CLASS = "!"

#: The sections of a p0f.fp file: ``[module:direction]``, and ``[mtu]``.
SECTIONS = {
    "[mtu]": ("mtu", None),
    "[tcp:request]": ("tcp", "request"),
    "[tcp:response]": ("tcp", "response"),
    "[http:request]": ("http", "request"),
    "[http:response]": ("http", "response"),
}


class SignatureFileError(TcpfpError):
    """A signature file that cannot be read, or a line in it that breaks the format."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}, line {line}" if line is not None else path
        super().__init__(f"{where}: {reason}")


class WindowType(IntEnum):
    """How a signature's wsize is written."""

    VALUE = 0  # a number: the window must equal it
    MOD = 1  # %N: the window must be divisible by N
    MSS = 2  # mss*N: the window is N times the MSS (or an MSS p0f tries)
    MTU = 3  # mtu*N: the window is N times an MTU p0f tries
    ANY = 4  # *


@dataclass(frozen=True, slots=True)
class Label:
    """A ``label = type:class:name:flavor`` line (and ``sys =`` for tools)."""

    generic: bool  # type g: a last-resort signature
    os_class: str  # as registered by ``classes =``, or "!" for a userland tool
    name: str  # spelled as first seen in the file (p0f compares names without case)
    flavor: str  # may be empty
    systems: tuple[str, ...]  # a tool's ``sys =`` entries, "@class" or OS names
    line: int

    @property
    def text(self) -> str:
        """``class:name:flavor``: how tcpfp writes a label."""
        return f"{self.os_class}:{self.name}:{self.flavor}"

    @property
    def is_tool(self) -> bool:
        return self.os_class == TOOL_CLASS

    @property
    def display(self) -> str:
        """``name flavor``: how p0f prints the label in its ``os=`` / ``app=`` field."""
        return f"{self.name} {self.flavor}" if self.flavor else self.name


@dataclass(frozen=True, slots=True)
class TcpSignature:
    """One ``sig = ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass`` line.  ``None`` = ``*``."""

    label: Label
    path: str
    line: int
    text: str  # the value as written
    direction: str  # "request" (SYN) or "response" (SYN+ACK)
    version: int | None  # 4, 6, or None for both
    ttl: int  # initial TTL, "ittl+dist" already added up
    random_ttl: bool  # "ittl-": a tool that randomises the TTL up to ittl
    olen: int
    mss: int | None
    window_type: WindowType
    window: int  # the value, the divisor, or the multiplier; 0 for *
    scale: int | None
    layout: tuple[int, ...]  # option kinds; EOL (0) only last
    eol_pad: int
    quirks: int  # bit set, as signature.Q
    payload: bool | None  # pclass: False "0", True "+", None "*"

    @property
    def olayout(self) -> str:
        return p0f_layout_text(self.layout, self.eol_pad)

    @property
    def quirk_names(self) -> tuple[str, ...]:
        return sig.quirk_names(self.quirks)


@dataclass(frozen=True, slots=True)
class SignatureFile:
    """One parsed p0f.fp file."""

    path: str
    classes: tuple[str, ...]
    labels: tuple[Label, ...]
    tcp_request: tuple[TcpSignature, ...]  # the SYN signatures, in file order
    tcp_response: tuple[TcpSignature, ...]
    mtu: tuple[tuple[str, str, int], ...]  # (label, value, line)


class Match(NamedTuple):
    """The signature a SYN matched, and how."""

    label: str  # "class:name:flavor"; class "!" for a userland tool, as p0f.fp writes it
    kind: str  # "exact", "generic" (an exact match of a g signature) or "fuzzy"
    signature: TcpSignature
    distance: int  # hops: signature TTL - observed TTL (p0f's guess when out of range)

    @property
    def name(self) -> str:
        return self.signature.label.name

    @property
    def flavor(self) -> str:
        return self.signature.label.flavor

    @property
    def os_class(self) -> str:
        return self.signature.label.os_class

    @property
    def is_tool(self) -> bool:
        return self.signature.label.is_tool

    @property
    def generic(self) -> bool:
        """The signature is generic (also true of a fuzzy match of a generic signature)."""
        return self.signature.label.generic

    @property
    def display(self) -> str:
        """p0f's ``name flavor``."""
        return self.signature.label.display

    @property
    def path(self) -> str:
        return self.signature.path

    @property
    def line(self) -> int:
        return self.signature.line

    @property
    def sig(self) -> str:
        return self.signature.text


# --------------------------------------------------------------------------- parsing one sig

class _Bad(Exception):
    """A field that breaks the format; the file parser adds path and line."""


_OPTION_BY_NAME = {name: kind for kind, name in P0F_OPTION_NAMES.items()}
_QUIRK_BY_NAME = sig.Q
_IPV4_ONLY = sig.DF | sig.ID_NZ | sig.ID_ZERO | sig.MBZ
_IPV6_ONLY = sig.FLOW
_TTL = re.compile(r"([0-9]+)(?:\+([0-9]+)|(-))?")
_NUMBER = re.compile(r"[0-9]+")  # ASCII only: int() also takes other scripts' digits
_WINDOW = re.compile(r"(\*)|%([0-9]+)|(mss|mtu)\*([0-9]+)|([0-9]+)")
_PCLASS = {"0": False, "+": True, "*": None}
_VERSION = {"4": 4, "6": 6, "*": None}


def _number(text: str, what: str, low: int, high: int) -> int:
    if not _NUMBER.fullmatch(text):
        raise _Bad(f"{what} {text!r} is not a number")
    digits = text.lstrip("0")
    if len(digits) > len(str(high)):  # int() refuses more than 4300 digits with a ValueError
        raise _Bad(f"{what} {digits[:20]}... is outside {low}..{high}")
    value = int(text)
    if not low <= value <= high:
        raise _Bad(f"{what} {value} is outside {low}..{high}")
    return value


def _wildcard_or_number(text: str, what: str, high: int) -> int | None:
    return None if text == "*" else _number(text, what, 0, high)


def _parse_layout(text: str) -> tuple[tuple[int, ...], int]:
    if not text:
        return (), 0
    items = text.split(",")
    if len(items) > P0F_MAX_OPTIONS:
        raise _Bad(f"{len(items)} TCP options, at most {P0F_MAX_OPTIONS}")
    kinds: list[int] = []
    eol_pad = 0
    for i, item in enumerate(items):
        if item.startswith("eol"):
            if not item.startswith("eol+"):
                raise _Bad(f"EOL option {item!r} must be written eol+N")
            if i != len(items) - 1:
                raise _Bad("EOL must be the last option")
            eol_pad = _number(item[4:], "EOL padding", 0, 255)
            kinds.append(0)
        elif item in _OPTION_BY_NAME:
            kinds.append(_OPTION_BY_NAME[item])
        elif item.startswith("?"):
            kinds.append(_number(item[1:], "option kind", 0, 255))
        else:
            raise _Bad(f"unknown TCP option {item!r}")
    return tuple(kinds), eol_pad


def _parse_quirks(text: str, version: int | None) -> int:
    bits = 0
    for name in text.split(",") if text else ():
        bit = _QUIRK_BY_NAME.get(name)
        if bit is None:
            raise _Bad(f"unknown quirk {name!r}")
        if version == 6 and bit & _IPV4_ONLY:
            raise _Bad(f"quirk {name!r} is not valid for IPv6")
        if version == 4 and bit & _IPV6_ONLY:
            raise _Bad(f"quirk {name!r} is not valid for IPv4")
        bits |= bit
    return bits


def _parse_sig(text: str, label: Label, path: str, line: int, direction: str) -> TcpSignature:
    fields = text.split(":")
    if len(fields) != 8:
        raise _Bad(
            f"a TCP signature has 8 fields (ver:ittl:olen:mss:wsize,scale:olayout:quirks:pclass), "
            f"this one has {len(fields)}"
        )
    ver_text, ttl_text, olen_text, mss_text, win_text, layout_text, quirk_text, pclass_text = fields
    if ver_text not in _VERSION:
        raise _Bad(f"IP version {ver_text!r} is not 4, 6 or *")
    version = _VERSION[ver_text]
    m = _TTL.fullmatch(ttl_text)
    if not m:
        raise _Bad(f"initial TTL {ttl_text!r} is not N, N+D or N-")
    ttl = _number(m[1], "initial TTL", 1, 255)
    if m[2] is not None:
        ttl += _number(m[2], "TTL distance", 0, 255)
        if ttl > 255:
            raise _Bad(f"initial TTL {ttl_text} adds up to {ttl}, above 255")
    olen = _number(olen_text, "IP option length", 0, 255)
    mss = _wildcard_or_number(mss_text, "MSS", 65535)
    if win_text.count(",") != 1:
        raise _Bad(f"window {win_text!r} is not wsize,scale")
    wsize_text, scale_text = win_text.split(",")
    w = _WINDOW.fullmatch(wsize_text)
    if not w:
        raise _Bad(f"window size {wsize_text!r} is not N, %N, mss*N, mtu*N or *")
    if w[1]:
        window_type, window = WindowType.ANY, 0
    elif w[2] is not None:
        window_type, window = WindowType.MOD, _number(w[2], "window divisor", 2, 65535)
    elif w[3]:
        window_type = WindowType.MSS if w[3] == "mss" else WindowType.MTU
        window = _number(w[4], f"{w[3]} multiplier", 1, 1000)
    else:
        window_type, window = WindowType.VALUE, _number(w[5], "window size", 0, 65535)
    scale = _wildcard_or_number(scale_text, "window scale", 255)
    layout, eol_pad = _parse_layout(layout_text)
    quirks = _parse_quirks(quirk_text, version)
    if pclass_text not in _PCLASS:
        raise _Bad(f"payload class {pclass_text!r} is not 0, + or *")
    return TcpSignature(
        label, path, line, text, direction, version, ttl, m[3] is not None, olen, mss,
        window_type, window, scale, layout, eol_pad, quirks, _PCLASS[pclass_text],
    )


# --------------------------------------------------------------------------- parsing a file

_STATEMENT = re.compile(r"([A-Za-z_]+)[ \t]*=[ \t]*(.*)")
_STATEMENTS = frozenset(("classes", "ua_os", "label", "sys", "sig"))
_LABEL = re.compile(r"([sg]):([A-Za-z0-9!]+):([^:]*):(.*)")


def _is_class_char(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _is_name_char(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c in NAME_CHARS)


def _is_name(text: str) -> bool:
    return bool(text) and all(map(_is_name_char, text))


def _items(value: str, what: str, allowed: Callable[[str], bool], prefix: str = "") -> list[str]:
    """A comma-separated list read as p0f reads one: blanks and commas before an
    item are skipped, and the item runs over allowed characters up to a comma."""
    items = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        start = i
        if prefix and value.startswith(prefix, i):
            i += len(prefix)
        j = i
        while j < n and allowed(value[j]):
            j += 1
        if j == i or (j < n and value[j] != ","):
            raise _Bad(f"{what} {value[start:].split(',')[0]!r} is malformed")
        items.append(value[start:j])
        i = j
    return items


class _FileParser:
    """p0f's readfp.c state machine: section, then label, (sys,) sig..."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.section: tuple[str, str | None] | None = None
        self.state = "section"  # what may come next: section, label, sys, sig
        self.classes: list[str] = []
        self.names: dict[str, str] = {}  # lower-case -> first spelling
        self.labels: list[Label] = []
        self.label: Label | None = None
        self.mtu_label = ""
        self.tcp: dict[str, list[TcpSignature]] = {"request": [], "response": []}
        self.mtu: list[tuple[str, str, int]] = []

    def name(self, text: str) -> str:
        return self.names.setdefault(text.lower(), text)

    def find_class(self, text: str) -> str:
        for known in self.classes:
            if known.lower() == text.lower():
                return known
        raise _Bad(f"unknown class {text!r} (not in the classes line)")

    def line(self, text: str, number: int) -> None:
        if text.startswith("["):
            if text not in SECTIONS:
                raise _Bad(f"unknown section {text!r}")
            self.section = SECTIONS[text]
            self.state = "label"
            return
        m = _STATEMENT.fullmatch(text)
        if not m:
            raise _Bad(f"expected 'name = value', got {text!r}")
        key, value = m[1], m[2]
        if key not in _STATEMENTS:
            raise _Bad(f"unknown statement {key!r}")
        getattr(self, f"do_{key}")(value, number)

    def do_classes(self, value: str, number: int) -> None:
        if self.state != "section":
            raise _Bad("'classes' must come before the first section")
        self.classes += _items(value, "class", _is_class_char)

    def do_ua_os(self, value: str, number: int) -> None:
        if self.state != "label" or self.section != ("http", "request"):
            raise _Bad("'ua_os' belongs at the start of [http:request]")

    def do_label(self, value: str, number: int) -> None:
        if self.state not in ("label", "sig"):
            hint = " (a tool's label needs a 'sys' line)" if self.state == "sys" else ""
            raise _Bad("misplaced 'label'" + hint)
        if self.section == ("mtu", None):
            if not value:
                raise _Bad("empty MTU label")
            self.mtu_label = value
            self.state = "sig"
            return
        m = _LABEL.fullmatch(value)
        if not m:
            raise _Bad(f"label {value!r} is not type:class:name:flavor (type s or g)")
        generic, os_class, name, flavor = m[1] == "g", m[2], m[3], m[4]
        os_class = TOOL_CLASS if os_class == TOOL_CLASS else self.find_class(os_class)
        if not _is_name(name):
            raise _Bad(f"name {name!r} is empty or has characters other than letters, digits "
                       f"and {''.join(sorted(NAME_CHARS))!r}")
        if any(c in '"\\' or not " " <= c <= "~" for c in flavor):
            # The label is written into log lines as it is (FINGERPRINT_OS, quoted in the default
            # format): a quote, backslash or control byte there would break or forge the line.
            raise _Bad(f"flavor {flavor!r} holds a quote, a backslash or a character that is not printable ASCII")
        self.label = Label(generic, os_class, self.name(name), flavor, (), number)
        self.labels.append(self.label)
        self.state = "sys" if os_class == TOOL_CLASS else "sig"

    def do_sys(self, value: str, number: int) -> None:
        if self.state != "sys" or self.label is None:
            raise _Bad("misplaced 'sys' (it follows the label of a tool, class '!')")
        systems = []
        for item in _items(value, "sys entry", _is_name_char, prefix="@"):
            systems.append("@" + self.find_class(item[1:]) if item.startswith("@") else self.name(item))
        self.label = Label(
            self.label.generic, self.label.os_class, self.label.name, self.label.flavor,
            tuple(systems), self.label.line,
        )
        self.labels[-1] = self.label
        self.state = "sig"

    def do_sig(self, value: str, number: int) -> None:
        if self.state != "sig":
            hint = " (a tool's label needs a 'sys' line first)" if self.state == "sys" else ""
            raise _Bad("misplaced 'sig'" + hint)
        module, direction = self.section  # type: ignore[misc]
        if module == "mtu":
            _number(value, "MTU", 0, 65535)
            self.mtu.append((self.mtu_label, value, number))
        elif module == "tcp":
            assert self.label is not None and direction is not None
            new = _parse_sig(value, self.label, self.path, number, direction)
            earlier = self.tcp[direction]
            for ref in earlier:
                if _covers(ref, new):
                    raise _Bad(f"signature is already covered by line {ref.line}")
            earlier.append(new)
        # HTTP signature values are not used for SYNs and are not checked.


def parse_database(text: str, path: str = "<p0f.fp>") -> SignatureFile:
    """Parse the text of a p0f.fp file.  Raises ``SignatureFileError``."""
    parser = _FileParser(path)
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t\r")
        if not line or line.startswith(";"):
            continue
        try:
            parser.line(line, number)
        except _Bad as err:
            raise SignatureFileError(path, number, str(err)) from None
    return SignatureFile(
        path, tuple(parser.classes), tuple(parser.labels), tuple(parser.tcp["request"]),
        tuple(parser.tcp["response"]), tuple(parser.mtu),
    )


def read_database(path: str | os.PathLike[str]) -> SignatureFile:
    """Read and parse one p0f.fp file."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as err:
        raise SignatureFileError(name, None, f"cannot read: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise SignatureFileError(name, line, "not UTF-8 text") from None
    return parse_database(text, name)


def default_paths() -> list[str]:
    """p0f's database where Debian installs it, if it is there."""
    return [DEFAULT_DATABASE] if os.path.exists(DEFAULT_DATABASE) else []


def load_databases(paths: Iterable[str | os.PathLike[str]] | None = None) -> Databases:
    """Read signature files into one ``Databases`` (``None``: the default p0f database).

    Files are searched in the order given, as if concatenated: every specific
    exact match in any file beats a generic one, and so on.
    """
    chosen = default_paths() if paths is None else list(paths)
    return Databases(read_database(p) for p in chosen)


# --------------------------------------------------------------------------- matching

class _Entry(NamedTuple):
    """A signature precompiled for matching; -1 is a wildcard."""

    quirks4: int  # the quirks compared with an IPv4 packet
    quirks6: int
    olen: int
    mss: int
    scale: int
    pclass: int
    window_type: int
    window: int
    ttl: int
    random_ttl: bool
    generic: bool
    tool: bool
    label: str
    signature: TcpSignature


def _compile(s: TcpSignature) -> _Entry:
    quirks4 = quirks6 = s.quirks
    if s.version is None:
        quirks4 &= ~sig.FLOW
        quirks6 &= ~(sig.DF | sig.ID_NZ | sig.ID_ZERO)
    return _Entry(
        quirks4, quirks6, s.olen, -1 if s.mss is None else s.mss, -1 if s.scale is None else s.scale,
        -1 if s.payload is None else int(s.payload), s.window_type, s.window, s.ttl, s.random_ttl,
        s.label.generic, s.label.is_tool, s.label.text, s,
    )


_FUZZY_GONE = sig.DF | sig.ID_NZ  # quirks that may disappear in a fuzzy match
_FUZZY_NEW = sig.ID_ZERO | sig.ECN  # quirks that may appear


def _window_fits(e: _Entry, window: int, use_mtu: bool, multiple: int) -> bool:
    t = e.window_type
    if t == WindowType.VALUE:
        return e.window == window
    if t == WindowType.MOD:
        return window % e.window == 0
    if t == WindowType.MSS:
        return not use_mtu and e.window == multiple
    if t == WindowType.MTU:
        return use_mtu and e.window == multiple
    return True


def _covers(ref: TcpSignature, new: TcpSignature) -> bool:
    """p0f refuses a signature an earlier specific one already matches exactly (tcp_register_sig)."""
    if ref.label.generic or ref.layout != new.layout or ref.eol_pad != new.eol_pad:
        return False
    quirks = ref.quirks
    if ref.version is None:
        quirks &= ~sig.FLOW if new.version == 4 else ~(sig.DF | sig.ID_NZ | sig.ID_ZERO)
    if quirks != new.quirks or ref.olen != new.olen:
        return False
    if ref.random_ttl:
        if ref.ttl < new.ttl:
            return False
    elif ref.ttl < new.ttl or ref.ttl - new.ttl > MAX_DIST:
        return False
    for mine, theirs in ((ref.mss, new.mss), (ref.scale, new.scale), (ref.payload, new.payload)):
        if mine is not None and mine != theirs:
            return False
    if new.window_type != WindowType.VALUE:
        return ref.window_type == new.window_type and ref.window == new.window
    # p0f sees the new signature as a packet: no timestamps, no header length.
    multiple = sig.window_multiple(new.window, -1 if new.mss is None else new.mss, 0,
                                   6 if new.version == 6 else 4, 0)
    use_mtu, times = _read_multiple(multiple)
    return _window_fits(_compile(ref), new.window, use_mtu, times)


def _read_multiple(text: str | None) -> tuple[bool, int]:
    """``mss*N`` / ``mtu*N`` (or None) -> (use_mtu, N), N = -1 for none."""
    if text is None:
        return False, -1
    return text[1] == "t", int(text[4:])


_quirk_bits_cache: dict[str, int] = {}


def _quirk_bits(text: str) -> int:
    bits = _quirk_bits_cache.get(text)
    if bits is None:
        bits = 0
        for name in text.split(",") if text else ():
            bits |= sig.Q[name]
        _quirk_bits_cache[text] = bits
    return bits


_CACHE_LIMIT = 1 << 16


class Databases:
    """Signature files searched together, indexed by option layout for matching SYNs."""

    def __init__(self, files: Iterable[SignatureFile]) -> None:
        self.files: tuple[SignatureFile, ...] = tuple(files)
        buckets: dict[str, list[_Entry]] = {}
        for f in self.files:
            for s in f.tcp_request:
                buckets.setdefault(s.olayout, []).append(_compile(s))
        self._buckets = {layout: tuple(entries) for layout, entries in buckets.items()}
        self._shapes: dict[tuple[str, int], tuple[tuple[_Entry, bool], ...]] = {}
        self._results: dict[tuple[str, int], Match | None] = {}

    @property
    def signatures(self) -> tuple[TcpSignature, ...]:
        """Every SYN signature, in search order."""
        return tuple(s for f in self.files for s in f.tcp_request)

    def __len__(self) -> int:
        return sum(len(f.tcp_request) for f in self.files)

    def match_raw(self, raw_sig: str, window: int) -> Match | None:
        """Match a p0f raw signature (as p0f prints it) with the packet's window."""
        key = (raw_sig, window)
        try:
            return self._results[key]
        except KeyError:
            pass
        result = self._match(raw_sig, window)
        if len(self._results) >= _CACHE_LIMIT:
            self._results.clear()
        self._results[key] = result
        return result

    def _candidates(self, raw_sig: str, window: int) -> tuple[tuple[_Entry, bool], ...]:
        """Signatures the packet matches but for the TTL, each with "fuzzy by quirks"."""
        ver, _ttl, olen, mss, win_scale, layout, quirk_text, pclass = raw_sig.split(":")
        bucket = self._buckets.get(layout)
        if not bucket:
            return ()
        quirks = _quirk_bits(quirk_text)
        olen_i, mss_i, pclass_i = int(olen), int(mss), pclass == "+"
        wsize, scale = win_scale.split(",")
        scale_i = int(scale)
        use_mtu, multiple = (False, -1) if wsize.isdigit() else _read_multiple(wsize)
        v4 = ver == "4"
        found = []
        for e in bucket:
            ref = e.quirks4 if v4 else e.quirks6
            fuzzy = False
            if ref != quirks:
                if ref & ~quirks & ~_FUZZY_GONE or quirks & ~ref & ~_FUZZY_NEW:
                    continue
                fuzzy = True
            if (e.olen != olen_i or (e.mss != -1 and e.mss != mss_i)
                    or (e.scale != -1 and e.scale != scale_i)
                    or (e.pclass != -1 and e.pclass != pclass_i)
                    or not _window_fits(e, window, use_mtu, multiple)):
                continue
            found.append((e, fuzzy))
        return tuple(found)

    def _match(self, raw_sig: str, window: int) -> Match | None:
        head, ttl_text, tail = raw_sig.split(":", 2)
        ttl = int(ttl_text.partition("+")[0])
        key = (head + tail, window)
        candidates = self._shapes.get(key)
        if candidates is None:
            candidates = self._candidates(raw_sig, window)
            if len(self._shapes) >= _CACHE_LIMIT:
                self._shapes.clear()
            self._shapes[key] = candidates
        generic = fuzzy = None
        for e, quirk_fuzzy in candidates:
            if e.random_ttl:
                if e.ttl < ttl:
                    continue
                exact = not quirk_fuzzy
            else:
                exact = not quirk_fuzzy and ttl <= e.ttl <= ttl + MAX_DIST
            if exact:
                if not e.generic:
                    return Match(e.label, "exact", e.signature, e.ttl - ttl)
                if generic is None:
                    generic = e
            elif fuzzy is None:
                fuzzy = e
        if generic is not None:
            return Match(generic.label, "generic", generic.signature, generic.ttl - ttl)
        if fuzzy is None or fuzzy.tool:
            return None
        if fuzzy.ttl < ttl or (not fuzzy.random_ttl and fuzzy.ttl - ttl > MAX_DIST):
            distance = sig.initial_ttl(ttl) - ttl
        else:
            distance = fuzzy.ttl - ttl
        return Match(fuzzy.label, "fuzzy", fuzzy.signature, distance)


def match(fingerprint: Fingerprint, databases: Databases) -> Match | None:
    """The signature p0f would pick for this SYN, or None."""
    return databases.match_raw(fingerprint.p0f, fingerprint.window)

