"""Request lines -> patterns, and patterns -> named campaigns.

A scanning campaign sends the same request from many devices, changing only
what identifies the sender or the payload server: the download IP and port,
a session token, a password tried.  ``normalise`` keeps what identifies the
*request* (method, path, parameter names, the shape of an injected command,
protocol) and replaces what varies by placeholders:

============  =====================================================================
``<v>``       the value of a ``name=value`` query parameter (split at ``&``) or path
              parameter (``;name=value`` inside a path segment)
``<ip>``      an IPv4 or IPv6 address
``<host>``    the host name of a URL (``scheme://host``)
``:<port>``   a port after an address, a host or a placeholder
``<hex>``     a run of 16 or more hexadecimal digits (hashes, tokens)
``<tok>``     a run of 24 or more letters, digits, ``_``, ``-`` or ``+`` mixing letters and digits,
              with the ``=`` or ``==`` that pads base64 to its length (percent-encoded, the
              words that ``%2B`` joins to it and its ``%3D`` padding)
``<n>``       a number standing alone (not part of a word such as ``v2`` or ``x86``)
============  =====================================================================

So the seed's four Mozi lines are one pattern (``GET /board.cgi?cmd=<v> HTTP/1.0``)
and its nine Boaform lines another; ``/shell?cd+/tmp;wget+http://<ip>:<port>/x``
keeps its command (it has no ``=``) with the address and port replaced.  Paths
are kept: ``/``, ``/index.html`` and ``/favicon.ico`` stay three patterns.  A
request line that is not ``METHOD target HTTP/x.y`` is ``<tls>`` (a TLS
ClientHello sent to the HTTP port), ``<binary>`` (other control bytes), ``<none>``
(no request line: ``-``), ``<empty>`` (an empty one) or its own text with the placeholders applied.

Named campaigns (``CampaignMatcher``) are regular expressions searched in the
whole, unescaped request line, read from ``data/campaigns.tsv`` and from user
files of the same format.  A request that one names belongs to that campaign
whatever its pattern, so a named campaign is always one row of the report.
"""

from __future__ import annotations

import re
from functools import lru_cache
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from .errors import TcpfpError

__all__ = ["Campaign", "CampaignMatcher", "CampaignFileError", "load_campaigns", "normalise"]

# --------------------------------------------------------------------------- patterns

_REQUEST = re.compile(r"([A-Z][A-Z0-9_-]*) (\S+(?: \S+)*?) (HTTP/\d\.\d)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\xff]")

_IP6 = re.compile(r"(?<![\w:.])\[?(?=[0-9A-Fa-f:]*::|(?:[0-9A-Fa-f]{1,4}:){7})"
                  r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}\]?(?!\w)")
# _IP4 and _NUMBER begin with the digit and look behind it afterwards; the same matches as
# (?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]) and (?<![\w<])\d+(?!\w), but the regex engine can
# skip ahead to the next digit instead of trying the look-behind at every position.
_IP4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\w.])")
# A host name ends where a character that cannot be in it comes: "/", ":", but also the "}" of
# ${jndi:ldap://x.example} or the ";" of wget+http://x.example;sh.
_HOST = re.compile(r"(?<=://)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?![A-Za-z0-9.-])")
_PORT = re.compile(r"(?<=>):\d{1,5}(?!\w)")
_HEX = re.compile(r"(?<![A-Za-z0-9])[0-9A-Fa-f]{16,}(?![A-Za-z0-9])")
# A base64 blob is a token too: "+" is one of its letters, and its "=" padding (0 to 2, by its
# length mod 3) goes with it, so blobs of any length are one placeholder.
_TOKEN = re.compile(r"(?<![\w+-])(?=[\w+-]*\d)(?=[\w+-]*[A-Za-z])[\w+-]{24,}(?:={1,2}(?![\w=]))?(?![\w+-])")
_NUMBER = re.compile(r"\d(?<![\w<]\d)\d*(?!\w)")
_MATRIX = re.compile(r";([^/;=]+)=[^/;]*")
_LONG_RUN = re.compile(r"[\w+-]{16}")
_DIGIT_OR_LONG = re.compile(r"\d|[0-9A-Za-z_-]{16,}|:")


# A percent-encoded byte that is not a letter, digit or "_" (those stay part of their word).
_PERCENT = re.compile(r"(%(?!3[0-9]|[46][1-9A-Fa-f]|[57][0-9Aa]|5[Ff])[0-9A-Fa-f]{2})")
_ENCODED_SCHEME = ("%3a%2f%2f",)  # "://" percent-encoded


def _tokens(text: str) -> str:
    """Addresses, hosts, ports, hashes, tokens and numbers of ``text`` as placeholders.

    A percent-encoded separator byte (``%2F``, ``%20``) is kept as it is; the text between such
    bytes is worked on piece by piece, so ``http%3A%2F%2F1.2.3.4%3A8080`` has its address and
    port replaced (``http%3A%2F%2F<ip>%3A<n>``), and the ``20`` of ``%20`` is not a number.
    """
    if _DIGIT_OR_LONG.search(text) is None:
        return text
    if "%" in text:
        parts = _PERCENT.split(text)
        if len(parts) > 1:
            out = []
            for k, part in enumerate(parts):
                if k % 2 or not part:
                    out.append(part)
                elif k >= 6 and not parts[k - 2] and not parts[k - 4] and \
                        "".join(parts[k - 5:k:2]).lower() in _ENCODED_SCHEME:
                    out.append(_plain_tokens("://" + part)[3:])  # the host of an encoded URL
                else:
                    out.append(_plain_tokens(part))
            text = "".join(out)
            return _encoded_blobs(text) if "<tok>" in text else text
    return _plain_tokens(text)


_WORD = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-")
_HEXDIGITS = frozenset("0123456789ABCDEFabcdef")
_PLUS, _PAD = ("%2B", "%2b"), ("%3D", "%3d")


def _starts_word(text: str, at: int) -> bool:
    """A word of a blob may start at ``at``: the text's start, after a character that is
    neither part of a word nor "%", or right after an escape ``%hh``."""
    if at == 0 or (text[at - 1] not in _WORD and text[at - 1] != "%"):
        return True
    return at >= 3 and text[at - 3] == "%" and text[at - 2] in _HEXDIGITS and text[at - 1] in _HEXDIGITS


def _encoded_blobs(text: str) -> str:
    """A percent-encoded base64 blob as one ``<tok>``: its ``+`` are ``%2B``, which cut it
    into words of which only the long ones became ``<tok>``, and its padding is ``%3D``.
    So the words that ``%2B`` joins to a ``<tok>`` (a word starting after an escape or a
    character that is not part of a word) and up to two ``%3D`` after them go into it.

    One pass from left to right, each character looked at a bounded number of times:
    request lines come from clients, and a pattern that tried every start again would
    take quadratic time on a crafted 8 KiB line.
    """
    out: list[str] = []
    done, n = 0, len(text)
    while (at := text.find("<tok>", done)) >= 0:
        start = at
        while start - 3 >= done and text[start - 3:start] in _PLUS:  # "word%2B" chunks before
            word_end = s = start - 3
            while s > done and text[s - 1] in _WORD:
                s -= 1
            # Where the word may start: after a character that is not part of a word, or
            # right after an escape (whose two hex digits the scan above went through).
            first = next((p for p in (s, s + 1, s + 2) if p < word_end and _starts_word(text, p)), None)
            if first is None:
                break
            start = first
        j = at + 5
        end = j if j == n or text[j] not in _WORD or text[j] == "-" else -1
        while text[j:j + 3] in _PLUS:  # "%2Bword" chunks after
            j += 3
            while j < n and text[j] in _WORD:
                j += 1
            if j == n or text[j] not in _WORD or text[j] == "-":
                end = j
        for _ in range(2):  # the padding
            if text[j:j + 3] not in _PAD:
                break
            j += 3
            if j == n or text[j] not in _WORD or text[j] == "-":
                end = j
        if end < 0:  # a word goes on right after: no blob ends here
            out.append(text[done:at + 5])
            done = at + 5
            continue
        out.append(text[done:start] + "<tok>")
        done = end
    out.append(text[done:])
    return "".join(out)


def _plain_tokens(text: str) -> str:
    if _DIGIT_OR_LONG.search(text) is None:
        return text
    # Each pass only when the text holds what its expression needs (a dot, "://", "::" or
    # seven colons, a placeholder's ">"): the same result, fewer scans.
    if "." in text:
        text = _IP4.sub("<ip>", text)
    if ":" in text:
        if "://" in text:
            text = _HOST.sub("<host>", text)
        if "::" in text or text.count(":") >= 7:
            text = _IP6.sub("<ip>", text)
        if ">" in text:
            text = _PORT.sub(":<port>", text)
    if _LONG_RUN.search(text) is not None:  # <hex> and <tok> need 16 and 24 such characters in a row
        text = _HEX.sub("<hex>", text)
        text = _TOKEN.sub("<tok>", text)
    return _NUMBER.sub("<n>", text)


_VALUE = re.compile(r"=[^&]*")


#: Paths and query shapes longer than this are worked out each time, not kept: clients
#: choose them, and 2^14 kept ones of 8 KiB would hold a quarter of a gigabyte.
KEPT_TEXT_CHARS = 512


def _shape_uncached(query: str) -> str:
    """A query whose values are already ``<v>``: placeholders in names and in value-less parts."""
    return "&".join(_tokens(part) for part in query.split("&"))


_shape_kept = lru_cache(maxsize=1 << 14)(_shape_uncached)


def _shape(query: str) -> str:
    return _shape_kept(query) if len(query) <= KEPT_TEXT_CHARS else _shape_uncached(query)


def _query(query: str) -> str:
    return _shape(_VALUE.sub("=<v>", query))


def _path_uncached(path: str) -> str:
    if ";" in path:
        path = _MATRIX.sub(r";\1=<v>", path)
    return _tokens(path)


_path_kept = lru_cache(maxsize=1 << 14)(_path_uncached)


def _path(path: str) -> str:
    return _path_kept(path) if len(path) <= KEPT_TEXT_CHARS else _path_uncached(path)


def _target(target: str) -> str:
    path, mark, query = target.partition("?")
    return _path(path) + mark + (_query(query) if query else "")


def normalise(request: str | None) -> str:
    """The pattern of one (unescaped) request line."""
    if request is None:
        return "<none>"
    if not request:
        return "<empty>"
    m = _REQUEST.fullmatch(request)
    if m is not None:
        method, target, protocol = m.groups()
        return f"{method} {_target(target)} {protocol}"
    if request.startswith("\x16\x03"):
        return "<tls>"
    if _CONTROL.search(request) is not None:
        return "<binary>"
    head, _, rest = request.partition(" ")
    if rest and head.isupper() and head.isalpha():  # HTTP/0.9 style "GET /path", or a CONNECT
        return f"{head} {_target(rest)}"
    return _tokens(request)


# --------------------------------------------------------------------------- named campaigns


class CampaignFileError(TcpfpError):
    """A campaign definition file we cannot read or use."""


class Campaign(NamedTuple):
    name: str
    expression: re.Pattern[str]
    description: str


def _parse(text: str, origin: str) -> list[Campaign]:
    campaigns = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip() or not fields[1]:
            raise CampaignFileError(
                f"{origin} line {number}: expected 'name<TAB>regular expression<TAB>description'")
        try:
            expression = re.compile(fields[1])
        except re.error as error:
            raise CampaignFileError(f"{origin} line {number}: bad regular expression: {error}") from None
        campaigns.append(Campaign(fields[0].strip(), expression, "\t".join(fields[2:]).strip()))
    return campaigns


def load_campaigns(extra: Sequence[str | Path] = (), *, shipped: bool = True) -> list[Campaign]:
    """The campaigns of the user files ``extra`` (first), then the shipped ones."""
    campaigns: list[Campaign] = []
    for path in extra:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CampaignFileError(f"--campaigns {path}: {getattr(error, 'strerror', None) or error}") from None
        campaigns += _parse(text, str(path))
    if shipped:
        text = resources.files("tcpfp_cli").joinpath("data/campaigns.tsv").read_text(encoding="utf-8")
        campaigns += _parse(text, "campaigns.tsv")
    return campaigns


class CampaignMatcher:
    """Names requests by the first campaign whose expression matches."""

    def __init__(self, campaigns: Iterable[Campaign]) -> None:
        self.campaigns = list(campaigns)
        self.descriptions = {}
        for c in self.campaigns:
            self.descriptions.setdefault(c.name, c.description)
        # One search per expression, in order: faster than a joined alternation (which has no
        # literal prefix or anchor for the regex engine to use), and exactly "the first that matches".
        self._searches = [(c.expression.search, c.name) for c in self.campaigns]

    def name(self, request: str | None) -> str | None:
        if request is None:
            return None
        for search, name in self._searches:
            if search(request) is not None:
                return name
        return None
