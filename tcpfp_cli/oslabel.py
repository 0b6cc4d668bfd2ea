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
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .sigdb import Databases, Match, load_databases, match
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


def plausible(found: Match, fingerprint: Fingerprint) -> bool:
    """False for a fuzzy match whose system could not have sent a TTL this high."""
    if found.kind != "fuzzy" or found.signature.random_ttl:
        return True
    return fingerprint.ttl <= found.signature.ttl
