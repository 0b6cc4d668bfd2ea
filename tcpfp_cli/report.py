"""Access-log records -> DataFrame -> clusters of devices and of campaigns.

``build_report`` reads logs through ``logreader`` (one typed row per request,
block by block) and aggregates each block as it comes, so memory follows the
number of distinct clusters, patterns and clients, not the number of lines
(the RTTs are the exception: one integer per request, to give exact medians).
A large regular file is read by forked worker processes, one range of lines
each, whose partial aggregates (values, not ids) are merged in file order:
the same report as reading it in one process.  It returns a ``Report``; it
prints nothing.  ``Report.to_json``,
``Report.tables`` and ``Report.write_csv`` render it.

Fingerprint clusters (devices) group requests by the SYN's stable traits:
the initial-TTL bucket (``FINGERPRINT_ITTL`` if logged, else derived from
``FINGERPRINT_IP_TTL``; the TTL itself varies with distance and is not a
key), window, window scale, option layout, MSS, and DF and ECN when logged.
A log of ``FINGERPRINT_SAVED_SYN`` has the fields it does not log decoded
from the SYN, once per distinct SYN text.  ``--by`` chooses other columns.
Each cluster gets a label, its window-to-MSS relation (``window_mss``) and an
RTT-outlier flag.

Labels come from the signature databases (``oslabel``) when the log allows,
from the best evidence it holds (``label_source``): the logged
``FINGERPRINT_OS`` (the cluster's most common label, with its
``FINGERPRINT_OS_MATCH``); in a log without that field, the logged
``FINGERPRINT_P0F`` raw signatures matched now (each distinct one once; the
label most requests got wins); for clusters with neither, a partial match
of the key's fields (``oslabel.label_partial``: option layout, TTL, window,
scale, MSS, DF, ECN; the rest unknown); else the heuristics of
``label_cluster``.  Labels are worked out per cluster at the end, never per
row: the aggregator only counts (cluster, value) pairs of the logged label
columns, so the cost per line is that of reading two more text columns.
``family`` turns a database label into the report's device words
(``Linux-like``, ``Windows-like``...); the database's own label is kept as
``os``.

Request clusters (campaigns) group requests by ``campaigns.normalise``'s
pattern, or by the campaign name when a known campaign matches the request.
"""

from __future__ import annotations

import csv
import ctypes
import gzip
import json
import math
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from . import forks
from .campaigns import CampaignMatcher, normalise
from .errors import BadHex, MalformedSyn, TcpfpError, UnknownField
from .fields import BY_NAME, FIELDS, lookup
from .hextext import parse_hex
from .logformat import LogFormat, compile_format
from .logreader import (LogReader, MalformedLine, ReadStats, UnreadableInput, detect_format, line_ranges,
                        open_input, read_sample)
from .oslabel import Labeler, PartialSyn
from .sigdb import Match
from .signature import INITIAL_TTLS
from .syn import Fingerprint, parse_syn

__all__ = [
    "COMMON_MSS",
    "DEFAULT_KEY",
    "Report",
    "ReportError",
    "ReportOptions",
    "build_report",
    "family",
    "label_cluster",
    "window_mss",
]

ITTL, TTL, HOPS, RTT = "FINGERPRINT_ITTL", "FINGERPRINT_IP_TTL", "FINGERPRINT_HOPS", "FINGERPRINT_TCP_RTT"
WSIZE, WSCALE, OPTIONS, MSS = ("FINGERPRINT_TCP_WSIZE", "FINGERPRINT_TCP_WSCALE",
                               "FINGERPRINT_TCP_OPTIONS", "FINGERPRINT_TCP_MSS")
#: The default cluster key, in this order; the last three only when the log has them.
DEFAULT_KEY = (ITTL, WSIZE, WSCALE, OPTIONS, MSS, "FINGERPRINT_IP_DF", "FINGERPRINT_IP_ECN", "FINGERPRINT_TCP_ECN")
#: MSS values of common links (Ethernet, PPPoE, tunnels, clamping middleboxes), tried in this order.
COMMON_MSS = (1460, 1452, 1440, 1400, 1380, 1360)
RTT_OUTLIER_US = 1_000_000  # a median handshake RTT above 1 s
RTT_OUTLIER_FACTOR = 10  # or above 10 times the log's median
CLIENT_COLUMNS = ("remote_addr", "remote_host")
OS, OS_MATCH, P0F = "FINGERPRINT_OS", "FINGERPRINT_OS_MATCH", "FINGERPRINT_P0F"
DF, IP_ECN, TCP_ECN = "FINGERPRINT_IP_DF", "FINGERPRINT_IP_ECN", "FINGERPRINT_TCP_ECN"
SAVED_SYN = "FINGERPRINT_SAVED_SYN"
#: What the report reads from a SYN's fields: decoded from FINGERPRINT_SAVED_SYN when not logged.
SYN_DERIVED = tuple(dict.fromkeys((*DEFAULT_KEY, TTL, HOPS, P0F, *(
    f.name for f in FIELDS if f.source == "syn" and f.member is not None and f.scalar))))
#: label_source values, best evidence first.
SOURCE_LOGGED, SOURCE_DATABASE, SOURCE_PARTIAL, SOURCE_HEURISTIC = (
    "FINGERPRINT_OS", "database", "database-partial", "heuristic")
_NA_INT = np.iinfo(np.int64).min
#: Request lines whose classification is remembered (the memory is cleared when full), and
#: the characters of those lines and their patterns: clients choose their request lines, and
#: 2^18 of 8 KiB each would hold 4 GB.
MAX_CLASSES = 1 << 18
MAX_CLASS_CHARS = 32 << 20


class ReportError(TcpfpError):
    """The report cannot be made (unusable format, no line parsed, bad option)."""


# --------------------------------------------------------------------------- heuristics

LINUX_LAYOUTS = frozenset({"2,4,8,1,3", "2,4,1,1,1,3", "2,1,1,4,1,3", "2,1,1,8,1,3", "2,4,8"})
WINDOWS_LAYOUTS = frozenset({"2,1,3,1,1,4", "2,1,3,1,1,8,4", "2,1,3,4,8", "2,1,1,4"})
SMALL_WINDOW = 8192
SMALL_SCALE = 5


def _is_apple(options: str) -> bool:
    head, _, tail = options.partition("2,1,3,1,1,8,4")
    return head == "" and (tail == "" or set(tail.split(",")[1:]) == {"0"})


def label_cluster(key: Mapping[str, Any]) -> str:
    """A device label from a cluster's key fields (``-`` when nothing fits).

    Linux-like: Linux's option layout (MSS, SACK-permitted, timestamps, NOP,
    window scale: ``2,4,8,1,3``) and initial TTL 64.  embedded/low-memory
    Linux: the same with a window scale of at most 5 or a window under 8192;
    Linux sizes its receive buffer, and so its window scale, from memory when
    memory is small, so routers, modems and cameras announce small scales.
    Windows-like: initial TTL 128 and ``2,1,3,1,1,4`` (or with timestamps).
    Apple-like: initial TTL 64 and ``2,1,3,1,1,8,4`` followed by EOL padding.
    A missing TTL does not exclude a label; a missing layout gives ``-``.
    """
    options = key.get(OPTIONS)
    ittl = key.get(ITTL)
    if not isinstance(options, str):
        return "-"
    if options in LINUX_LAYOUTS and ittl in (64, None):
        scale, window = key.get(WSCALE), key.get(WSIZE)
        if (scale is not None and scale <= SMALL_SCALE) or (window is not None and window < SMALL_WINDOW):
            return "embedded/low-memory Linux"
        return "Linux-like"
    if options in WINDOWS_LAYOUTS and ittl in (128, None):
        return "Windows-like"
    if _is_apple(options) and ittl in (64, None):
        return "Apple-like"
    return "-"


_FAMILIES = {"linux": "Linux-like", "windows": "Windows-like", "macos": "Apple-like", "mac os x": "Apple-like",
             "ios": "Apple-like"}


def family(label: str) -> str:
    """A database label (``class:name:flavor``) in the report's device words.

    Linux, Windows, macOS/iOS are named as the heuristics name them, a Linux
    flavor that says ``embedded`` is ``embedded/low-memory Linux``; any other
    system is its ``name flavor``, as p0f prints it.
    """
    parts = label.split(":", 2)
    if len(parts) != 3:
        return label
    _, name, flavor = parts
    word = _FAMILIES.get(name.lower())
    if word is None:
        return f"{name} {flavor}" if flavor else name
    if word == "Linux-like" and "embedded" in flavor.lower():
        return "embedded/low-memory Linux"
    return word


def window_mss(window: int | None, mss: int | None) -> str:
    """The window as a multiple of the MSS (``4xMSS``), else of a common MSS (``20x1440``), else ``none``.

    A window that is a multiple of a common MSS but not of the SYN's own MSS
    points at a middlebox that lowered (clamped) the MSS after the sender chose
    its window: the seed's 28800 with MSS 1406 is 20 x 1440.
    """
    if not window:
        return "none"
    if mss and window % mss == 0:
        return f"{window // mss}xMSS"
    for common in COMMON_MSS:
        if mss and common <= mss:  # a clamp only lowers the MSS: the sender's was larger
            continue
        if window % common == 0:
            return f"{window // common}x{common}"
    return "none"


def _ittl(ttl: np.ndarray) -> np.ndarray:
    out = np.full(ttl.shape, INITIAL_TTLS[-1], dtype=np.int64)
    for bucket in reversed(INITIAL_TTLS[:-1]):
        out[ttl <= bucket] = bucket
    return out


# --------------------------------------------------------------------------- options and plan


@dataclass
class ReportOptions:
    campaigns: CampaignMatcher = field(default_factory=lambda: CampaignMatcher([]))
    by: Sequence[str] | None = None  # cluster by these columns instead of DEFAULT_KEY
    top: int | None = None  # at most this many clusters and campaigns (None: all)
    min_count: int = 1  # hide clusters and campaigns with fewer requests
    top_patterns: int = 3
    workers: int = 1
    chunk_bytes: int | None = None
    labeler: Labeler | None = None  # the signature databases; None: the default ones (oslabel)


@dataclass(frozen=True)
class _Plan:
    key: tuple[str, ...]  # output names of the key fields
    read: tuple[str, ...]  # columns to read
    derive_ittl: bool  # FINGERPRINT_ITTL from FINGERPRINT_IP_TTL
    client: str | None
    texts: frozenset[str]
    os: bool  # FINGERPRINT_OS is logged (and FINGERPRINT_OS_MATCH: os_match)
    os_match: bool
    p0f: bool  # FINGERPRINT_P0F and FINGERPRINT_TCP_WSIZE are logged, FINGERPRINT_OS is not
    from_syn: tuple[str, ...] = ()  # fields not logged but decoded from FINGERPRINT_SAVED_SYN


def _plan(fmt: LogFormat, by: Sequence[str] | None) -> _Plan:
    """What to read and how to key clusters.  A SYN field the log lacks is decoded from
    ``FINGERPRINT_SAVED_SYN`` when that is logged (``_Aggregator._syn_fields``), so a log of
    the saved SYN alone clusters as one with every field."""
    columns = set(fmt.columns)
    ints = {d.column for d in fmt.directives if d.kind == "int"}
    derive = ITTL not in columns and TTL in columns
    from_syn: tuple[str, ...] = ()
    if SAVED_SYN in columns:
        from_syn = tuple(n for n in SYN_DERIVED if n not in columns and not (n == ITTL and derive))
        columns |= set(from_syn)
        ints |= {n for n in from_syn if BY_NAME[n].kind == "int"}
    if by:
        key = []
        for name in by:
            name = name.strip()
            if not name:
                continue
            if name not in columns:
                try:
                    name = lookup(name).name
                except UnknownField:
                    pass
            if name not in columns and not (name == ITTL and derive):
                raise ReportError(f"--by {name}: not a column of the log format ({', '.join(fmt.columns)})")
            if name not in key:
                key.append(name)
        if not key:
            raise ReportError("--by needs at least one field")
    else:
        key = [k for k in DEFAULT_KEY if k in columns or (k == ITTL and derive)]
    client = next((c for c in CLIENT_COLUMNS if c in columns), None)
    # Every text column read costs time per line: P0F only when the log holds no label.
    has_os = OS in columns
    has_p0f = not has_os and P0F in columns and WSIZE in columns
    labels = [OS, OS_MATCH if has_os else None] + ([P0F, WSIZE] if has_p0f else [])
    wanted = [*key, "request", client, TTL, HOPS, RTT, *labels]
    read = tuple(dict.fromkeys(c for c in wanted if c and c in columns and not (c == ITTL and derive)))
    if derive and ITTL in key and TTL not in read:
        read = (*read, TTL)
    from_syn = tuple(n for n in from_syn if n in read)
    if from_syn:
        read = (*(c for c in read if c not in from_syn), SAVED_SYN)
    texts = frozenset(c for c in key if c in columns and c not in ints)
    return _Plan(tuple(key), read, derive, client, texts, has_os, has_os and OS_MATCH in columns, has_p0f,
                 from_syn)


# --------------------------------------------------------------------------- aggregation


class _Ids:
    """Text -> small integer, shared across blocks."""

    def __init__(self) -> None:
        self.ids: dict[object, int] = {}
        self.values: list[object] = []

    def of(self, value: object) -> int:
        got = self.ids.get(value)
        if got is None:
            got = self.ids[value] = len(self.values)
            self.values.append(value)
        return got

    def codes(self, column: pd.Series) -> np.ndarray:
        """Global ids of a categorical column; -1 for missing."""
        cat = column.array
        table = np.fromiter((self.of(v) for v in cat.categories), dtype=np.int64, count=len(cat.categories))
        codes = np.asarray(cat.codes, dtype=np.int64)
        return np.where(codes >= 0, table[np.maximum(codes, 0)] if len(table) else -1, -1)


class _Classifier:
    """Request line -> (campaign group, pattern), each distinct line worked out once.

    The group is ("name", campaign) for a named campaign, else ("pattern", pattern).
    At most ``MAX_CLASSES`` lines, of ``MAX_CLASS_CHARS`` characters with their
    patterns, are remembered, so memory stays bounded on logs where every line
    differs, however long the lines.
    """

    def __init__(self, matcher: CampaignMatcher) -> None:
        self.matcher = matcher
        self.known: dict[str | None, tuple[tuple[str, str], str]] = {}
        self.chars = 0  # of the remembered lines and patterns

    def of(self, request: str | None) -> tuple[tuple[str, str], str]:
        known = self.known.get(request)
        if known is None:
            pattern = normalise(request)
            name = self.matcher.name(request)
            known = (("name", name) if name is not None else ("pattern", pattern)), pattern
            chars = len(pattern) + (len(request) if request else 0)
            if len(self.known) >= MAX_CLASSES or self.chars + chars > MAX_CLASS_CHARS:
                self.known.clear()
                self.chars = 0
            self.known[request] = known
            self.chars += chars
        return known


class _Aggregator:
    """Counts per cluster, campaign, pattern and client, block by block, under ids of this aggregator.

    ``partial`` gives the counts with values instead of ids, and ``merge`` adds such a
    partial aggregate (of the next range of lines) to this one: the ids given, and so
    the order in which the report breaks ties, are those of reading every line here.
    """

    def __init__(self, plan: _Plan, classifier: _Classifier) -> None:
        self.plan = plan
        self.classifier = classifier
        self.matcher = classifier.matcher
        self.text_ids = {c: _Ids() for c in plan.texts}
        self.clusters: dict[tuple, int] = {}
        self.groups = _Ids()  # ("name", n) or ("pattern", p)
        self.patterns = _Ids()
        self.clients = _Ids()
        self.pair_counts: Counter[tuple[int, int]] = Counter()  # (cluster, group) -> requests
        self.group_patterns: Counter[tuple[int, int]] = Counter()  # (group, pattern) -> requests
        self.client_pairs: list[np.ndarray] = []
        self.ttl: dict[int, list[int]] = {}  # cluster -> [ttl_min, ttl_max, hops_min, hops_max]
        self.rtts: defaultdict[int, list[np.ndarray]] = defaultdict(list)
        self.label_texts = _Ids()  # FINGERPRINT_OS, _OS_MATCH and _P0F values
        # cluster -> Counter of (OS id, OS_MATCH id or -1) / (P0F id, window); only logged values.
        self.os_votes: defaultdict[int, Counter[tuple[int, int]]] = defaultdict(Counter)
        self.p0f_votes: defaultdict[int, Counter[tuple[int, int]]] = defaultdict(Counter)

    def fresh(self) -> _Aggregator:
        """An empty aggregator of the same plan, sharing this one's classifier."""
        return _Aggregator(self.plan, self.classifier)

    def _request_ids(self, column: pd.Series | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        if column is None:
            g = self.groups.of(("pattern", "<none>"))
            p = self.patterns.of("<none>")
            return np.full(n, g), np.full(n, p)
        cat = column.array
        classify, group, pattern = self.classifier.of, self.groups.of, self.patterns.of
        found = [(group(g), pattern(p)) for g, p in map(classify, cat.categories.tolist())]
        g, p = classify(None)
        found.append((group(g), pattern(p)))
        ids = np.array(found, dtype=np.int64).reshape(len(found), 2)
        gids, pids = ids[:, 0], ids[:, 1]
        codes = np.asarray(cat.codes, dtype=np.int64)  # -1 (missing) picks the last entry
        return gids[codes], pids[codes]

    def _key_arrays(self, frame: pd.DataFrame) -> list[np.ndarray]:
        arrays = []
        for name in self.plan.key:
            if name == ITTL and self.plan.derive_ittl:
                ttl = frame[TTL].to_numpy(dtype=np.int64, na_value=_NA_INT)
                arrays.append(np.where(ttl == _NA_INT, _NA_INT, _ittl(ttl)))
            elif name in self.text_ids:
                arrays.append(self.text_ids[name].codes(frame[name]))
            else:
                arrays.append(frame[name].to_numpy(dtype=np.int64, na_value=_NA_INT))
        return arrays

    def _syn_fields(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with the fields of ``plan.from_syn`` decoded from its saved SYNs, each distinct
        one once; a SYN that is missing or does not decode gives missing fields."""
        syn = frame[SAVED_SYN].array
        found: list[Fingerprint | None] = []
        for text in syn.categories.tolist():
            try:
                found.append(parse_syn(parse_hex(text)))
            except (BadHex, MalformedSyn):
                found.append(None)
        found.append(None)  # code -1: not logged
        codes = np.asarray(syn.codes, dtype=np.int64)
        columns: dict[str, object] = {}
        for name in self.plan.from_syn:
            values = [None if fp is None else getattr(fp, BY_NAME[name].member) for fp in found]  # type: ignore[arg-type]
            if BY_NAME[name].kind == "int":
                columns[name] = pd.array(values, dtype="Int64")[codes]
            else:
                columns[name] = pd.Categorical(np.asarray(values, dtype=object)[codes])
        return frame.assign(**columns)

    def add(self, frame: pd.DataFrame) -> None:
        n = len(frame)
        if not n:
            return
        plan = self.plan
        if plan.from_syn:
            frame = self._syn_fields(frame)
        if plan.key:
            arrays = self._key_arrays(frame)
            # One integer per row for the whole key (mixed radix of per-column codes), then factorize.
            combined = np.zeros(n, dtype=np.int64)
            size = 1
            for values in arrays:
                codes, uniq = pd.factorize(values)
                combined = combined * len(uniq) + codes
                size *= len(uniq)
                if size > 1 << 31:  # keep the radix product far from overflowing
                    combined, kept = pd.factorize(combined)
                    size = len(kept)
            local, seen = pd.factorize(combined)
            rows = np.zeros(len(seen), dtype=np.int64)
            rows[local[::-1]] = np.arange(n)[::-1]  # the first row of each key
            table = np.empty(len(seen), dtype=np.int64)
            for k, row in enumerate(rows.tolist()):
                key = tuple(int(a[row]) for a in arrays)
                got = self.clusters.get(key)
                if got is None:
                    got = self.clusters[key] = len(self.clusters)
                table[k] = got
            cluster = table[local]
        else:
            cluster = np.zeros(n, dtype=np.int64)
            self.clusters.setdefault((), 0)
        gids, pids = self._request_ids(frame["request"] if "request" in frame else None, n)
        both = pd.Series(cluster * (1 << 32) + gids).value_counts(sort=False)
        for combined, count in zip(both.index.to_numpy(), both.to_numpy()):
            self.pair_counts[(int(combined >> 32), int(combined & 0xFFFFFFFF))] += int(count)
        gp = pd.Series(gids * (1 << 32) + pids).value_counts(sort=False)
        for combined, count in zip(gp.index.to_numpy(), gp.to_numpy()):
            self.group_patterns[(int(combined >> 32), int(combined & 0xFFFFFFFF))] += int(count)
        if plan.client:
            clients = self.clients.codes(frame[plan.client])
            has = clients >= 0
            self.client_pairs.append(np.unique(cluster[has] * (1 << 32) + clients[has]))
            if len(self.client_pairs) > 64:
                self.client_pairs = [np.unique(np.concatenate(self.client_pairs))]
        self._ttl_hops(frame, cluster)
        self._label_votes(frame, cluster)
        if RTT in frame:
            rtt = frame[RTT].to_numpy(dtype=np.int64, na_value=_NA_INT)
            has = rtt != _NA_INT
            order = np.argsort(cluster[has], kind="stable")
            sorted_c = cluster[has][order]
            values = rtt[has][order]
            cuts = np.flatnonzero(np.diff(sorted_c)) + 1
            for piece_c, piece in zip(np.split(sorted_c, cuts), np.split(values, cuts)):
                if len(piece):
                    self.rtts[int(piece_c[0])].append(piece)

    def _label_votes(self, frame: pd.DataFrame, cluster: np.ndarray) -> None:
        """Count (cluster, FINGERPRINT_OS, _OS_MATCH), or (cluster, FINGERPRINT_P0F, window)."""
        plan = self.plan
        if plan.os:
            os_ids = self.label_texts.codes(frame[OS])
            has = os_ids >= 0
            if has.any():
                match_ids = self.label_texts.codes(frame[OS_MATCH]) if plan.os_match else np.full(len(frame), -1)
                _tally(self.os_votes, cluster[has], os_ids[has], match_ids[has])
        if plan.p0f:
            p0f_ids = self.label_texts.codes(frame[P0F])
            window = frame[WSIZE].to_numpy(dtype=np.int64, na_value=_NA_INT)
            has = (p0f_ids >= 0) & (window != _NA_INT)
            if has.any():
                _tally(self.p0f_votes, cluster[has], p0f_ids[has], window[has])

    def _ttl_hops(self, frame: pd.DataFrame, cluster: np.ndarray) -> None:
        if TTL not in frame:
            return
        ttl = frame[TTL].to_numpy(dtype=np.int64, na_value=_NA_INT)
        if HOPS in frame:
            hops = frame[HOPS].to_numpy(dtype=np.int64, na_value=_NA_INT)
        else:
            hops = np.where(ttl == _NA_INT, _NA_INT, _ittl(ttl) - ttl)
        has = ttl != _NA_INT
        if not has.any():
            return
        t, h = ttl[has], np.where(hops[has] == _NA_INT, -1, hops[has])
        cs, inv = np.unique(cluster[has], return_inverse=True)  # per cluster: min and max of t and h
        big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        t0, t1 = np.full(len(cs), big), np.full(len(cs), small)
        h0, h1 = np.full(len(cs), big), np.full(len(cs), small)
        np.minimum.at(t0, inv, t)
        np.maximum.at(t1, inv, t)
        np.minimum.at(h0, inv, h)
        np.maximum.at(h1, inv, h)
        for c, *row in zip(cs.tolist(), t0.tolist(), t1.tolist(), h0.tolist(), h1.tolist()):
            self._widen(c, row)

    def _widen(self, c: int, new: list[int]) -> None:
        old = self.ttl.get(c)
        if old is not None:
            new = [min(old[0], new[0]), max(old[1], new[1]), min(old[2], new[2]), max(old[3], new[3])]
        self.ttl[c] = new

    # ---------------------------------------------------------------- across processes

    def partial(self) -> dict[str, Any]:
        """The counts with the values behind every id, to ``merge`` in another process."""
        pairs = np.unique(np.concatenate(self.client_pairs)) if self.client_pairs else np.empty(0, np.int64)
        return {
            "texts": {c: ids.values for c, ids in self.text_ids.items()},
            "clusters": list(self.clusters),  # the keys, in id order
            "groups": self.groups.values, "patterns": self.patterns.values,
            "clients": self.clients.values, "labels": self.label_texts.values,
            "pair_counts": self.pair_counts, "group_patterns": self.group_patterns, "client_pairs": pairs,
            "ttl": self.ttl, "rtts": {c: np.concatenate(parts) for c, parts in self.rtts.items()},
            "os_votes": dict(self.os_votes), "p0f_votes": dict(self.p0f_votes),
        }

    def merge(self, part: Mapping[str, Any]) -> None:
        """Add a ``partial`` aggregate of the lines that follow those counted so far."""
        texts = {c: [self.text_ids[c].of(v) for v in values] for c, values in part["texts"].items()}
        positions = [(k, texts[name]) for k, name in enumerate(self.plan.key) if name in texts]
        cluster = []
        for key in part["clusters"]:
            if positions:
                values = list(key)
                for k, table in positions:
                    if values[k] >= 0:
                        values[k] = table[values[k]]
                key = tuple(values)
            got = self.clusters.get(key)
            if got is None:
                got = self.clusters[key] = len(self.clusters)
            cluster.append(got)
        group = [self.groups.of(v) for v in part["groups"]]
        pattern = [self.patterns.of(v) for v in part["patterns"]]
        label = [self.label_texts.of(v) for v in part["labels"]]
        for (c, g), n in part["pair_counts"].items():
            self.pair_counts[(cluster[c], group[g])] += n
        for (g, p), n in part["group_patterns"].items():
            self.group_patterns[(group[g], pattern[p])] += n
        pairs = part["client_pairs"]
        if len(pairs):
            clients = np.fromiter((self.clients.of(v) for v in part["clients"]), dtype=np.int64,
                                  count=len(part["clients"]))
            self.client_pairs.append(np.asarray(cluster, dtype=np.int64)[pairs >> 32] * (1 << 32)
                                     + clients[pairs & 0xFFFFFFFF])
            if len(self.client_pairs) > 64:
                self.client_pairs = [np.unique(np.concatenate(self.client_pairs))]
        for c, row in part["ttl"].items():
            self._widen(cluster[c], row)
        for c, values in part["rtts"].items():
            self.rtts[cluster[c]].append(values)
        for c, votes in part["os_votes"].items():
            mine = self.os_votes[cluster[c]]
            for (o, m), n in votes.items():
                mine[(label[o], label[m] if m >= 0 else -1)] += n
        for c, votes in part["p0f_votes"].items():
            mine = self.p0f_votes[cluster[c]]
            for (p, window), n in votes.items():
                mine[(label[p], window)] += n


def _tally(votes: defaultdict[int, Counter[tuple[int, int]]], cluster: np.ndarray, a: np.ndarray,
           b: np.ndarray) -> None:
    """votes[cluster][(a, b)] += rows, for rows given as three integer arrays (b >= -1)."""
    if len(cluster) and cluster.max() < 1 << 20 and a.max() < 1 << 21 and -1 <= b.min() and b.max() < (1 << 21) - 1:
        counts = pd.Series((cluster << 42) | (a << 21) | (b + 1)).value_counts(sort=False)
        for k, n in zip(counts.index.tolist(), counts.to_numpy().tolist()):
            votes[k >> 42][((k >> 21) & 0x1FFFFF, (k & 0x1FFFFF) - 1)] += n
        return
    counts = pd.DataFrame({"c": cluster, "a": a, "b": b}).value_counts(sort=False)
    for (c, x, y), n in zip(counts.index.tolist(), counts.to_numpy().tolist()):
        votes[c][(x, y)] += n


# --------------------------------------------------------------------------- labels


class _ClusterLabel(NamedTuple):
    label: str
    source: str  # SOURCE_*
    match: str | None  # exact, generic, fuzzy, partial; None for the heuristics
    os: str | None  # the database label, class:name:flavor


def _most(votes: Counter[tuple[str, str | None]]) -> tuple[str, str | None] | None:
    """The label most requests got and, among its requests, the most common match kind."""
    totals: Counter[str] = Counter()
    for (label, _), n in votes.items():
        totals[label] += n
    if not totals:
        return None
    label = min(totals, key=lambda k: (-totals[k], k))
    kinds = {kind: n for (lab, kind), n in votes.items() if lab == label}
    kind = min(kinds, key=lambda k: (-kinds[k], k or ""))
    return label, kind


def _from_match(found: Match, source: str, kind: str) -> _ClusterLabel:
    return _ClusterLabel(family(found.label), source, kind, found.label)


def _label(agg: _Aggregator, c: int, key: Mapping[str, Any], labeler: Labeler) -> _ClusterLabel:
    texts = agg.label_texts.values
    logged = Counter({(str(texts[o]), None if m < 0 else str(texts[m])): n
                      for (o, m), n in agg.os_votes.get(c, Counter()).items()})
    best = _most(logged)
    if best is not None:
        return _ClusterLabel(family(best[0]), SOURCE_LOGGED, best[1], best[0])
    raw = agg.p0f_votes.get(c)
    if raw:
        matched: Counter[tuple[str, str | None]] = Counter()
        by_label: dict[str, Match] = {}
        for (p, window), n in raw.items():
            found = labeler.label_raw(str(texts[p]), window)
            if found is not None:
                matched[(found.label, found.kind)] += n
                by_label.setdefault(found.label, found)
        best = _most(matched)
        if best is not None:
            return _from_match(by_label[best[0]], SOURCE_DATABASE, best[1] or "")
    else:
        syn = _partial_syn(key, agg.ttl.get(c))
        found = labeler.label_partial(syn) if syn is not None else None
        if found is not None:
            return _from_match(found, SOURCE_PARTIAL, "partial")
    return _ClusterLabel(label_cluster(key), SOURCE_HEURISTIC, None, None)


def _partial_syn(key: Mapping[str, Any], ttl: list[int] | None) -> PartialSyn | None:
    """What the cluster's key (and its highest TTL) says about its SYNs."""
    options = key.get(OPTIONS)
    if not isinstance(options, str):
        return None

    def number(name: str) -> int | None:
        value = key.get(name)
        return value if isinstance(value, int) else None

    ecn_values = [number(n) for n in (IP_ECN, TCP_ECN) if n in key]
    if any(v for v in ecn_values):
        ecn: bool | None = True
    elif len(ecn_values) == 2 and all(v == 0 for v in ecn_values):
        ecn = False
    else:
        ecn = None
    df = number(DF)
    return PartialSyn.from_text(
        options, ttl=ttl[1] if ttl else number(ITTL), window=number(WSIZE), scale=number(WSCALE),
        mss=number(MSS), df=None if df is None else bool(df), ecn=ecn)


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    summary: dict[str, Any]
    fingerprints: pd.DataFrame  # one row per cluster
    campaigns: pd.DataFrame  # one row per request pattern or named campaign
    crosstab: pd.DataFrame  # campaigns x clusters, request counts
    malformed: list[MalformedLine]
    key: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "fingerprints": [_jsonable(r) for r in self.fingerprints.to_dict("records")],
            "campaigns": [_jsonable(r) for r in self.campaigns.to_dict("records")],
            "crosstab": {
                "campaigns": [str(i) for i in self.crosstab.index],
                "fingerprints": [str(c) for c in self.crosstab.columns],
                "requests": self.crosstab.to_numpy(dtype=np.int64).tolist(),
            },
            "malformed_lines": [{"file": m.source, "line": m.line, "reason": m.reason} for m in self.malformed],
        }

    def tables(self, top: int | None = 20) -> str:
        """The report as text: a summary line, then the three tables (tabulate)."""
        from tabulate import tabulate

        s = self.summary
        out = [f"{s['parsed']:,} requests from {s['lines']:,} lines ({s['malformed']:,} malformed, "
               f"{s['skipped']:,} blank) in format {s['format_name'] or s['format']!r}: "
               f"{len(self.fingerprints)} fingerprint clusters, {len(self.campaigns)} campaigns"]
        if self.malformed:
            out.append("malformed: " + "; ".join(
                f"{_printable(m.source)}:{m.line}: {_printable(m.reason)}" for m in self.malformed[:10]))
        fp = self.fingerprints.head(top) if top else self.fingerprints
        if len(fp):
            shown = fp.drop(columns=["top_patterns", "label_source", "label_match", "os"]).copy()
            shown.insert(shown.columns.get_loc("label") + 1, "from",
                         [_source_tag(s, m) for s, m in zip(fp["label_source"], fp["label_match"])])
            shown = _printable_frame(shown)
            shown["label"] = [_label_cell(r) for r in fp.to_dict("records")]  # escaped, then two lines
            shown["top patterns"] = [  # one line per pattern: escaped first, then joined
                "\n".join(f"{p['requests']} {_printable(p['campaign'])}" for p in tops) for tops in fp["top_patterns"]]
            shown.columns = [c.removeprefix("FINGERPRINT_") for c in shown.columns]
            out += ["", "Fingerprint clusters", tabulate(shown, headers="keys", showindex=False,
                                                         missingval="-", disable_numparse=True)]
            if (fp["label_source"] == SOURCE_PARTIAL).any():
                out.append("db~: matched on the logged fields only (option layout, TTL, window, scale, MSS, "
                           "DF/ECN if logged); quirks, IP options and payload were not logged")
        cp = self.campaigns.head(top) if top else self.campaigns
        if len(cp):
            shown = cp.copy()
            shown["fingerprints"] = [" ".join(f) for f in cp["fingerprints"]]
            shown = _printable_frame(shown)
            out += ["", "Campaigns", tabulate(shown.drop(columns=["description"]), headers="keys",
                                              showindex=False, missingval="-")]
        ct = self.crosstab
        if top:
            ct = ct.iloc[:top, :top]
        if ct.size:
            out += ["", "Campaigns x fingerprint clusters (requests)",
                    tabulate(_printable_frame(ct), headers="keys", showindex=True)]
        return "\n".join(out)

    def write_csv(self, directory: str | os.PathLike[str]) -> list[Path]:
        """One CSV per table: summary, fingerprints, campaigns, crosstab, malformed."""
        folder = Path(directory)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ReportError(f"--csv {directory}: {error.strerror or error}") from None
        written = []
        fp = self.fingerprints.copy()
        fp["top_patterns"] = [json.dumps(t) for t in fp["top_patterns"]]
        cp = self.campaigns.copy()
        cp["fingerprints"] = [" ".join(f) for f in cp["fingerprints"]]
        tables = {
            "summary": pd.DataFrame([self.summary]),
            "fingerprints": fp,
            "campaigns": cp,
            "crosstab": self.crosstab.rename_axis("campaign").reset_index(),
            "malformed": pd.DataFrame([m.__dict__ for m in self.malformed], columns=["source", "line", "reason"]),
        }
        for name, table in tables.items():
            path = folder / f"{name}.csv"
            try:
                _printable_frame(table).to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
            except OSError as error:
                raise ReportError(f"--csv {path}: {error.strerror or error}") from None
            written.append(path)
        return written


#: C0 and C1 control characters -> ``\xhh``, as the log writes them.  Request lines reach the
#: report from clients: shown raw, an escape sequence in one would drive the reader's terminal.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def _printable(value: object) -> object:
    """A text with its control characters escaped (anything else unchanged)."""
    return value.translate(_CONTROLS) if isinstance(value, str) else value


def _printable_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text cell, the index and the column names made printable.

    Cells are mapped column by column into object columns: ``DataFrame.map`` would infer
    float for a key column that mixes integers and None (IPv6's missing DF), which
    tabulate and the CSV then show as ``1.0`` and ``nan``.
    """
    out = pd.DataFrame({c: pd.Series([_printable(v) for v in frame[c]], index=frame.index, dtype=object)
                        for c in frame.columns}, index=frame.index)
    out.index = out.index.map(_printable)
    out.columns = out.columns.map(_printable)
    return out


def _label_cell(row: Mapping[str, Any]) -> str:
    """The label, and under it the database's ``name flavor`` when it says more."""
    label, os_label = _printable(row["label"]), _printable(row.get("os"))
    if not os_label:
        return label
    detail = _display(os_label)
    return label if detail == label else f"{label}\n{detail}"


def _display(label: str) -> str:
    parts = label.split(":", 2)
    if len(parts) != 3:
        return label
    return f"{parts[1]} {parts[2]}" if parts[2] else parts[1]


def _source_tag(source: str, match: str | None) -> str:
    """``log:exact``, ``db:generic``, ``db~`` (partial), ``heuristic``."""
    if source == SOURCE_LOGGED:
        return f"log:{match}" if match else "log"
    if source == SOURCE_DATABASE:
        return f"db:{match}"
    if source == SOURCE_PARTIAL:
        return "db~"
    return "heuristic"


def _jsonable(record: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in record.items():
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            out[k] = None
        elif isinstance(v, np.integer):
            out[k] = int(v)
        elif isinstance(v, np.bool_):
            out[k] = bool(v)
        elif isinstance(v, np.floating):
            out[k] = float(v)
        else:
            out[k] = v
    return out


def _finish(agg: _Aggregator, stats: ReadStats, fmt: LogFormat, name: str | None,
            options: ReportOptions, labeler: Labeler) -> Report:
    plan = agg.plan
    key_values: list[tuple] = [()] * len(agg.clusters)
    for key, idx in agg.clusters.items():
        values = []
        for field_name, v in zip(plan.key, key):
            if v == _NA_INT or (field_name in agg.text_ids and v < 0):
                values.append(None)
            elif field_name in agg.text_ids:
                values.append(agg.text_ids[field_name].values[v])
            else:
                values.append(int(v))
        key_values[idx] = tuple(values)
    requests = Counter()
    for (c, g), n in agg.pair_counts.items():
        requests[c] += n
    clients: Counter[int] = Counter()
    if plan.client and agg.client_pairs:
        pairs = np.unique(np.concatenate(agg.client_pairs))
        cs, counts = np.unique(pairs >> 32, return_counts=True)
        clients.update(dict(zip(cs.tolist(), counts.tolist())))
    all_rtt = [p for parts in agg.rtts.values() for p in parts]
    overall = float(np.median(np.concatenate(all_rtt))) if all_rtt else None

    # Campaign labels: a name, or the pattern.
    group_label = {}
    group_pattern: dict[int, tuple[int, str]] = {}
    for (g, p), n in agg.group_patterns.items():
        best = group_pattern.get(g)
        text = agg.patterns.values[p]
        if best is None or n > best[0] or (n == best[0] and text < best[1]):  # type: ignore[operator]
            group_pattern[g] = (n, text)  # type: ignore[assignment]
    for g, (kind, value) in enumerate(agg.groups.values):  # type: ignore[misc]
        group_label[g] = value

    # Fingerprint clusters.
    order = sorted(agg.clusters.values(), key=lambda c: (-requests[c], tuple(str(v) for v in key_values[c])))
    order = [c for c in order if requests[c] >= options.min_count] if plan.key else []  # no fingerprint fields
    if options.top:
        order = order[: options.top]
    cluster_id = {c: f"F{k + 1}" for k, c in enumerate(order)}
    per_cluster: defaultdict[int, list[tuple[int, int]]] = defaultdict(list)
    for (c, g), n in agg.pair_counts.items():
        per_cluster[c].append((n, g))
    rows = []
    for c in order:
        key = dict(zip(plan.key, key_values[c]))
        rtt = np.concatenate(agg.rtts[c]) if agg.rtts.get(c) else None
        median = int(round(float(np.median(rtt)))) if rtt is not None else None
        p90 = int(round(float(np.percentile(rtt, 90)))) if rtt is not None else None
        ttl = agg.ttl.get(c)
        tops = sorted(per_cluster[c], key=lambda t: (-t[0], str(group_label[t[1]])))[: options.top_patterns]
        label = _label(agg, c, key, labeler)
        row = {"id": cluster_id[c], **key, "requests": requests[c],
               "clients": clients.get(c, 0) if plan.client else None,
               "label": label.label, "label_source": label.source, "label_match": label.match, "os": label.os,
               "ttl_min": ttl[0] if ttl else None, "ttl_max": ttl[1] if ttl else None,
               "hops_min": ttl[2] if ttl and ttl[2] >= 0 else None,
               "hops_max": ttl[3] if ttl and ttl[3] >= 0 else None,
               "rtt_median_us": median, "rtt_p90_us": p90,
               "window_mss": window_mss(key.get(WSIZE), key.get(MSS)) if WSIZE in key else None,
               "rtt_outlier": bool(median is not None and (
                   median > RTT_OUTLIER_US or (overall is not None and median > RTT_OUTLIER_FACTOR * overall))),
               "top_patterns": [{"campaign": group_label[g], "pattern": group_pattern[g][1], "requests": n}
                                for n, g in tops]}
        rows.append(row)
    fingerprints = pd.DataFrame(rows, dtype=object, columns=["id", *plan.key, "requests", "clients", "label",
                                               "label_source", "label_match", "os", "ttl_min",
                                               "ttl_max", "hops_min", "hops_max", "rtt_median_us",
                                               "rtt_p90_us", "window_mss", "rtt_outlier", "top_patterns"])

    # Campaigns.
    group_requests: Counter[int] = Counter()
    group_clusters: defaultdict[int, Counter[int]] = defaultdict(Counter)
    for (c, g), n in agg.pair_counts.items():
        group_requests[g] += n
        group_clusters[g][c] += n
    gorder = sorted(group_requests, key=lambda g: (-group_requests[g], str(group_label[g])))
    gorder = [g for g in gorder if group_requests[g] >= options.min_count]
    if options.top:
        gorder = gorder[: options.top]
    crows = []
    for k, g in enumerate(gorder):
        kind, value = agg.groups.values[g]  # type: ignore[misc]
        named = kind == "name"
        crows.append({
            "id": f"C{k + 1}", "name": value if named else None, "pattern": group_pattern[g][1],
            "requests": group_requests[g],
            "fingerprints": [cluster_id[c] for c, _ in group_clusters[g].most_common() if c in cluster_id],
            "description": agg.matcher.descriptions.get(value) if named else None,
        })
    campaigns = pd.DataFrame(crows, dtype=object, columns=["id", "name", "pattern", "requests", "fingerprints", "description"])

    # Cross-tab: campaign label x cluster id.
    matrix = np.zeros((len(gorder), len(order)), dtype=np.int64)
    gpos = {g: i for i, g in enumerate(gorder)}
    cpos = {c: i for i, c in enumerate(order)}
    for (c, g), n in agg.pair_counts.items():
        if g in gpos and c in cpos:
            matrix[gpos[g], cpos[c]] += n
    crosstab = pd.DataFrame(matrix, index=[str(group_label[g]) for g in gorder],
                            columns=[cluster_id[c] for c in order])

    summary = {"lines": stats.lines, "parsed": stats.parsed, "malformed": stats.malformed,
               "skipped": stats.skipped, "format": fmt.format, "format_name": name,
               "key": list(plan.key), "rtt_median_us": None if overall is None else int(round(overall))}
    return Report(summary, fingerprints, campaigns, crosstab, list(stats.examples), plan.key)


# --------------------------------------------------------------------------- worker processes

#: Ranges per worker: enough that a worker left with the last one does not keep the others waiting long.
RANGES_PER_WORKER = 8
RANGE_BYTES_MAX = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def _in_processes(path: str, stream: Any, size: int | None, reader: LogReader, workers: int) -> bool:
    """Whether to read ``path`` in worker processes: a large regular, uncompressed file, and fork.

    Pipes and gzip cannot be cut into ranges; they are read here (``LogReader.frames``
    with its threads).  Below two blocks, starting processes does not pay.
    """
    if workers <= 1 or path == "-" or size is None or not reader.fast or isinstance(stream, gzip.GzipFile):
        return False
    if size < 2 * reader.chunk_bytes or not forks.available():
        return False
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, AttributeError, ValueError):
        return False


def _start_worker() -> None:
    """Let a worker's allocator keep freed blocks of lines for the next ones (glibc's ``mallopt``).

    Each block allocates a few arrays as large as the block.  By default glibc maps
    and unmaps each of them, and the kernel zeroes every page again: about 0.6 s of
    system time for 1M lines.  Kept in the heap (up to 64 MiB each, 256 MiB before
    the heap is trimmed) they are reused; the peak size is the same.  Elsewhere nothing is changed.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_TRIM_THRESHOLD, 256 << 20)
    mallopt(_M_MMAP_THRESHOLD, 64 << 20)


def _aggregate_range(reader: LogReader, agg: _Aggregator, task: tuple[int, str, int, int],
                     ) -> tuple[dict[str, Any], ReadStats]:
    """In a worker: the partial aggregate and the line counts of one range of the open file.

    ``reader`` and ``agg`` are this process's copies of the parent's, which are empty;
    the aggregate of each range starts anew, and shares the request-line classifier.
    """
    fd, label, start, end = task
    reader.stats = ReadStats(max_examples=reader.stats.max_examples)
    part = agg.fresh()
    for frame in reader.range_frames(fd, label, start, end):
        part.add(frame)
    return part.partial(), reader.stats


def _aggregate_in_processes(reader: LogReader, agg: _Aggregator, fd: int, label: str, size: int,
                            workers: int) -> None:
    """Read the first ``size`` bytes of the open file ``fd`` in ranges of whole lines, each
    parsed and aggregated by one of ``workers`` forked processes (``forks.run_in_forks``).

    The workers read the descriptor opened here (with ``pread``), so a log rotated or
    replaced under the same name meanwhile is still the file that was opened, and a
    log that grows meanwhile is read as it was when opened.  Each range comes back as
    a small partial aggregate with values, not ids, and is merged here in the order of
    the ranges, so line numbers and ties come out as when reading here.  A worker keeps
    the classification of the request lines it has met across its ranges, and holds
    one block of lines at a time.
    """
    parts = max(workers * RANGES_PER_WORKER, -(-size // RANGE_BYTES_MAX))
    parts = max(1, min(parts, size // reader.chunk_bytes))
    ranges = line_ranges(fd, size, parts, label)
    worker = LogReader(reader.format, reader.columns, chunk_bytes=reader.chunk_bytes,
                       max_examples=reader.stats.max_examples)
    blank = agg.fresh()
    tasks = [(fd, label, start, end) for start, end in ranges]
    base = 0
    results = forks.run_in_forks(tasks, lambda task: _aggregate_range(worker, blank, task), workers,
                                 start=_start_worker)
    with closing(results):
        try:
            for (_, end), (part, counts) in zip(ranges, results):
                agg.merge(part)
                reader.add_range(counts, label, base, end)
                base += counts.lines
        except forks.WorkerError as error:
            raise forks.WorkerError(f"{label}: {error}; --workers 1 reads it in one process",
                                    error.pid) from None


# --------------------------------------------------------------------------- entry point


def build_report(paths: Sequence[str], fmt: str | None = None, options: ReportOptions | None = None, *,
                 note: Callable[[str], None] | None = None,
                 progress: Callable[[str, int | None], Callable[[int, int], None] | None] | None = None,
                 ) -> Report:
    """Read the logs ``paths`` (``-`` is stdin, gzip is recognised) and cluster them.

    ``fmt`` is a named format or a LogFormat string; None recognises ``tcpfp``,
    ``combined`` or ``common`` from the first lines and tells ``note`` which.
    ``progress(label, size)`` may return a callback for (bytes done, lines).
    Raises ``ReportError`` (or another ``TcpfpError``) when nothing can be read.
    """
    options = options or ReportOptions()
    if options.top is not None and options.top < 1:
        raise ReportError(f"--top {options.top}: give a number of clusters and campaigns, 1 or more")
    if options.min_count < 1:
        raise ReportError(f"--min-count {options.min_count}: give a number of requests, 1 or more")
    if options.workers < 1:
        raise ReportError(f"--workers {options.workers}: give a number of processes, 1 or more")
    labeler = options.labeler if options.labeler is not None else Labeler.from_options()
    paths = list(paths) or ["-"]
    for path in paths:
        if path != "-" and not os.path.exists(path):
            raise UnreadableInput(f"{path}: No such file or directory")
    name: str | None = None
    if fmt is not None:
        compiled = compile_format(fmt)
        name = fmt if fmt in ("tcpfp", "combined", "common") else None
    else:
        compiled = None
    plan: _Plan | None = None
    agg: _Aggregator | None = None
    reader: LogReader | None = None
    for path in paths:
        stream, label, size = open_input(path)
        bar = None
        try:
            if compiled is None:
                sample, whole, stream = read_sample(stream, label)
                found = detect_format(sample, whole)
                if found is None and not sample.strip():
                    raise ReportError(f"{label}: the input is empty" if whole else
                                      f"{label}: the first {len(sample):,} bytes are blank lines; "
                                      "give the log's LogFormat with --format 'FORMAT'")
                if found is None and not whole and b"\n" not in sample:
                    raise ReportError(f"{label}: the first line is longer than {len(sample):,} bytes, too long "
                                      "to recognise the format; give the log's LogFormat with --format 'FORMAT'")
                if found is None:
                    raise ReportError(
                        f"{label}: the first lines fit none of the formats tcpfp, combined, common; "
                        "give the log's LogFormat with --format 'FORMAT'")
                name, compiled = found
                if note:
                    note(f"reading {label} as format {name!r} (recognised from its first lines; "
                         "--format chooses another)")
            if reader is None:
                plan = _plan(compiled, options.by)
                agg = _Aggregator(plan, _Classifier(options.campaigns))
                kwargs = {"chunk_bytes": options.chunk_bytes} if options.chunk_bytes else {}
                reader = LogReader(compiled, plan.read, workers=options.workers, **kwargs)
            bar = progress(label, size) if progress else None
            reader.progress = bar
            if _in_processes(path, stream, size, reader, options.workers):
                _aggregate_in_processes(reader, agg, stream.fileno(), label, size,  # type: ignore[arg-type]
                                        options.workers)
            else:
                for frame in reader.frames(stream, label):
                    agg.add(frame)  # type: ignore[union-attr]
        finally:
            if reader is not None:
                reader.progress = None
            if bar is not None and hasattr(bar, "close"):
                bar.close()  # the next line (an error, the next bar, the report) starts clean
            if path != "-":
                stream.close()
    assert reader is not None and agg is not None and compiled is not None
    report = _finish(agg, reader.stats, compiled, name, options, labeler)
    if reader.stats.parsed == 0:
        what = ("the input is empty (no line, or only blank ones)" if reader.stats.lines == reader.stats.skipped
                else "no line of the input fits the format")
        raise ReportError(what + (
            f" (first malformed line: {reader.stats.examples[0].source}:{reader.stats.examples[0].line}: "
            f"{reader.stats.examples[0].reason})" if reader.stats.examples else ""))
    return report
