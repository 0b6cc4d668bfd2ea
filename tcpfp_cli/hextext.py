"""Hex text -> bytes, forgiving about how people paste hex.

A SAVED_SYN or TCP_INFO value arrives as lowercase hex in a log, but users
also paste ``0x``-prefixed, upper-case, colon- or space-separated dumps.  We
accept all of those and nothing else: an odd number of digits or a non-hex
character is a ``BadHex`` naming the character.
"""

from __future__ import annotations

import binascii

from .errors import BadHex

_SEPARATORS = str.maketrans("", "", " \t:")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def parse_hex(text: str) -> bytes:
    """Bytes from hex text; accepts a ``0x`` prefix, spaces, colons and upper case."""
    compact = text.strip()
    if compact[:2] in ("0x", "0X"):
        compact = compact[2:]
    compact = compact.translate(_SEPARATORS)
    if not compact:
        raise BadHex("empty input")
    for char in compact:
        if char not in _HEX_DIGITS:
            # The position in the text as the user sees it (stripped, prefix and
            # separators included), not in the compacted digits.
            stripped = text.strip()
            start = 2 if stripped[:2] in ("0x", "0X") else 0
            raise BadHex(f"unexpected character {char!r}", stripped.index(char, start))
    if len(compact) % 2:
        raise BadHex(f"odd number of hex digits ({len(compact)})")
    return binascii.unhexlify(compact)
