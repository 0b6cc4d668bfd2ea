"""FINGERPRINT_OS: which stack sent a SYN, from signature databases.

The databases are searched in this order, as one file would be: the user's
own files (``--signatures``), then ours (``tcpfp_cli/data/tcpfp.fp``, written
for the stacks p0f's 2016 database misses), then p0f's (``/etc/p0f/p0f.fp``
where Debian's p0f package installed it, or ``--p0f-db PATH``; off with
``--no-p0f-db``).  Matching is p0f's (``sigdb``).  A label says
``class:name:flavor``; how it was found says ``exact``, ``fuzzy`` or
``generic``.

Policy on top of p0f's matching (docs/signatures.md, "Labelling policy"):
a fuzzy match is dropped (no label, ``-``) when the SYN arrived with a TTL
above the signature's initial TTL.  TTLs only fall on the way, so such a
sender started higher than the system the signature describes: p0f's
fuzzy rule would otherwise call a TTL-255 embedded stack with Windows'
option order "Windows", or a TTL-240 scanner's MSS-only SYN "Linux".
Fuzzy matches with a lower TTL (NAT and TTL-resetting middleboxes in front
of a Windows host) and fuzzy matches on quirks alone are kept.  Random-TTL
signatures (``ttl-``) are p0f's own exception and are kept too.

``label_partial`` is for what a log holds when it holds no raw signature (the
seed's format: TTL, window, scale, option kinds, MSS, maybe DF and ECN): the
same search and the same preference (specific, then generic, then fuzzy),
with the parts the log does not say (other quirks, IP option length, payload
class, the IP version) matching anything.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from . import signature as sig
from .options import p0f_layout_text
from .sigdb import Databases, Match, TcpSignature, WindowType, load_databases, match
from .syn import Fingerprint

OUR_SIGNATURES = Path(__file__).resolve().parent / "data" / "tcpfp.fp"
P0F_DATABASE = "/etc/p0f/p0f.fp"


def database_paths(
    signatures: Iterable[str] = (), p0f_db: str | None = None, use_p0f: bool = True
) -> list[str]:
    """The files to search, in order (missing default files are simply left out)."""
    paths = [str(p) for p in signatures]
    if OUR_SIGNATURES.exists():
        paths.append(str(OUR_SIGNATURES))
    if use_p0f:
        if p0f_db is not None:
            paths.append(p0f_db)
        elif os.path.exists(P0F_DATABASE):
            paths.append(P0F_DATABASE)
    return paths


class Labeler:
    """Labels Fingerprints from loaded databases; raises SignatureFileError at load time."""

    def __init__(self, databases: Databases) -> None:
        self.databases = databases

    @classmethod
    def from_options(
        cls, signatures: Iterable[str] = (), p0f_db: str | None = None, use_p0f: bool = True
    ) -> Labeler:
        return cls(load_databases(database_paths(signatures, p0f_db, use_p0f)))

    def label(self, fingerprint: Fingerprint) -> Match | None:
        found = match(fingerprint, self.databases)
        if found is not None and not plausible(found, fingerprint):
            return None
        return found

    def label_raw(self, raw_sig: str, window: int) -> Match | None:
        """The label of a logged FINGERPRINT_P0F (and window); None for no label or a malformed text."""
        m = _RAW_SIG.fullmatch(raw_sig)
        if m is None or any(q not in sig.Q for q in m[2].split(",") if q):
            return None
        found = self.databases.match_raw(raw_sig, window)
        if found is not None and not _plausible_ttl(found, int(m[1])):
            return None
        return found

    def label_partial(self, syn: PartialSyn) -> Match | None:
        return label_partial(self.databases, syn)


def plausible(found: Match, fingerprint: Fingerprint) -> bool:
    """False for a fuzzy match whose system could not have sent a TTL this high."""
    return _plausible_ttl(found, fingerprint.ttl)


def _plausible_ttl(found: Match, ttl: int | None) -> bool:
    if found.kind != "fuzzy" or found.signature.random_ttl or ttl is None:
        return True
    return ttl <= found.signature.ttl


# ver:ttl+dist:olen:mss:wsize,scale:olayout:quirks:pclass, as ``signature.p0f_signature`` writes it.
_RAW_SIG = re.compile(r"[46]:(\d+)\+(?:\d+|\?):\d+:\d+:(?:\d+|(?:mss|mtu)\*\d+),\d+:[a-z0-9?+,]*:([a-z0-9+\-,]*):[0+]")


# --------------------------------------------------------------------------- partial matching


class PartialSyn(NamedTuple):
    """What a log may say about a SYN; None is unknown (it matches anything)."""

    kinds: tuple[int, ...]  # FINGERPRINT_TCP_OPTIONS: option kinds, EOL and its padding as 0
    ttl: int | None = None  # the TTL as received (or the initial TTL, if that is all there is)
    window: int | None = None
    scale: int | None = None  # None is unknown; a SYN without option 3 has scale 0 as in p0f
    mss: int | None = None  # likewise for option 2
    df: bool | None = None
    ecn: bool | None = None  # ECN bits in IP or ECE/CWR in TCP

    @classmethod
    def from_text(cls, options: str, **known: int | bool | None) -> PartialSyn | None:
        """From FINGERPRINT_TCP_OPTIONS text (``2,4,8,1,3``); None if it is not a kinds list."""
        try:
            kinds = tuple(int(k) for k in options.split(",")) if options else ()
        except ValueError:
            return None
        if any(not 0 <= k <= 255 for k in kinds):
            return None
        return cls(kinds, **known)

    @property
    def layout(self) -> tuple[tuple[int, ...], int]:
        """p0f's (layout, eol_pad): the kinds up to EOL, and the bytes after it."""
        if 0 in self.kinds:
            end = self.kinds.index(0) + 1
            return self.kinds[:end], len(self.kinds) - end
        return self.kinds, 0


_OPTION_BYTES = {0: 1, 1: 1, 2: 4, 3: 3, 4: 2, 8: 10}
_partial_buckets: weakref.WeakKeyDictionary[Databases, dict[str, tuple[TcpSignature, ...]]] = (
    weakref.WeakKeyDictionary())


def _buckets(databases: Databases) -> dict[str, tuple[TcpSignature, ...]]:
    got = _partial_buckets.get(databases)
    if got is None:
        lists: dict[str, list[TcpSignature]] = {}
        for s in databases.signatures:
            lists.setdefault(s.olayout, []).append(s)
        got = _partial_buckets[databases] = {k: tuple(v) for k, v in lists.items()}
    return got


def _window_fits(s: TcpSignature, syn: PartialSyn, multiple: tuple[str, int] | None) -> bool:
    t = s.window_type
    if t == WindowType.ANY or syn.window is None:
        return True
    if t == WindowType.VALUE:
        return syn.window == s.window
    if t == WindowType.MOD:
        return syn.window % s.window == 0
    if syn.mss is None:  # mss*N or mtu*N of an unknown MSS
        return True
    return multiple is not None and multiple == ("mss" if t == WindowType.MSS else "mtu", s.window)


def _quirks_fit(s: TcpSignature, syn: PartialSyn) -> bool | None:
    """True: the known quirks agree; False: they agree as p0f's fuzzy rule allows; None: no match."""
    ref = s.quirks & ~sig.FLOW if s.version is None else s.quirks
    fuzzy = False
    if syn.df is not None and bool(ref & sig.DF) != syn.df:
        if syn.df:  # DF in the packet but not in the signature: p0f never matches
            return None
        fuzzy = True  # DF missing from the packet: p0f's fuzzy match
    if syn.ecn is not None and bool(ref & sig.ECN) != syn.ecn:
        if not syn.ecn:  # the signature wants ECN
            return None
        fuzzy = True
    return not fuzzy


def label_partial(databases: Databases, syn: PartialSyn) -> Match | None:
    """The label of the first signature whose known parts agree with ``syn``, p0f's way.

    The option layout must be equal (kinds and EOL padding); MSS, scale, window
    (a value, ``%N``, or ``mss*N``/``mtu*N`` computed as p0f does) and DF/ECN
    must agree when known; the TTL decides exact or fuzzy as in p0f.  Then
    the first exact specific signature wins, else the first exact generic
    one, else the first fuzzy one (never a tool's), and the labelling policy
    drops a fuzzy match whose signature's TTL is below the SYN's.
    """
    layout, eol_pad = syn.layout
    bucket = _buckets(databases).get(p0f_layout_text(layout, eol_pad))
    if not bucket:
        return None
    mss = syn.mss if 2 in layout else 0
    scale = syn.scale if 3 in layout else 0
    multiple = None
    if syn.window is not None and mss is not None:
        header = 40 + (sum(_OPTION_BYTES.get(k, 4) for k in layout) + eol_pad + 3) // 4 * 4
        text = sig.window_multiple(syn.window, mss, 8 in layout, 4, header)
        multiple = None if text is None else (text[:3], int(text[4:]))
    known = syn._replace(mss=mss, scale=scale)
    generic = fuzzy = None
    for s in bucket:
        if (s.mss is not None and mss is not None and s.mss != mss) or (
                s.scale is not None and scale is not None and s.scale != scale):
            continue
        if not _window_fits(s, known, multiple):
            continue
        quirks = _quirks_fit(s, known)
        if quirks is None:
            continue
        ttl = syn.ttl
        if ttl is None:
            ttl_ok = True
        elif s.random_ttl:
            ttl_ok = s.ttl >= ttl
        else:
            ttl_ok = ttl <= s.ttl <= ttl + sig.MAX_DISTANCE
        if quirks and ttl_ok:
            if not s.label.generic:
                return _found(s, "exact", syn.ttl)
            if generic is None:
                generic = s
        elif fuzzy is None and not (s.random_ttl and ttl is not None and s.ttl < ttl):
            fuzzy = s
    if generic is not None:
        return _found(generic, "generic", syn.ttl)
    if fuzzy is None or fuzzy.label.is_tool:
        return None
    found = _found(fuzzy, "fuzzy", syn.ttl)
    return found if _plausible_ttl(found, syn.ttl) else None


def _found(s: TcpSignature, kind: str, ttl: int | None) -> Match:
    if ttl is None:
        distance = 0
    elif s.ttl < ttl or (not s.random_ttl and s.ttl - ttl > sig.MAX_DISTANCE):
        distance = sig.initial_ttl(ttl) - ttl
    else:
        distance = s.ttl - ttl
    return Match(s.label.text, kind, s, distance)
