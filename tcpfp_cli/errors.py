"""The one exception family of tcpfp.

Every error a caller can see from the pure core is a ``TcpfpError``.  Each
leaf keeps the values that explain it as attributes (what was wrong, and at
which byte offset), so a caller can act on the data and a user reads one clear
sentence.  The core never lets ``IndexError``, ``struct.error`` or
``ValueError`` escape: bounds are checked before every read.

Boundaries:

- ``syn.parse_syn`` raises ``MalformedSyn`` (or one of its leaves) for a packet
  it cannot read.  A packet it *can* read but whose TCP options are broken is
  not an error: it gets the ``bad`` quirk.
- ``hextext.parse_hex`` raises ``BadHex``.
- ``tcpinfo.parse_tcp_info`` never raises: any length is a valid prefix.
- The CLI turns any ``TcpfpError`` into one line on stderr and exit status 2.

Every error of the family pickles with its message and its attributes, so a
worker process can hand it to its parent (``forks``).
"""

from __future__ import annotations


class TcpfpError(Exception):
    """Base of every error tcpfp raises on purpose."""

    def __reduce__(self) -> tuple:
        # Leaves take their data, not their message, as arguments; pickle (which
        # carries errors out of report's worker processes) rebuilds them from the
        # message and the attributes instead of calling __init__ again.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[TcpfpError], args: tuple, state: dict) -> TcpfpError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class BadHex(TcpfpError):
    """Text that should be hex is not: odd length or a non-hex character."""

    def __init__(self, reason: str, position: int | None = None) -> None:
        self.reason = reason
        self.position = position
        where = f" at character {position}" if position is not None else ""
        super().__init__(f"not hex: {reason}{where}")


class MalformedSyn(TcpfpError):
    """A packet that cannot be read as a SYN; ``offset`` is the byte where reading failed."""

    def __init__(self, reason: str, offset: int) -> None:
        self.reason = reason
        self.offset = offset
        super().__init__(f"{reason} (at byte offset {offset})")


class Truncated(MalformedSyn):
    """The packet ends before a header it announces."""

    def __init__(self, what: str, offset: int, needed: int, available: int) -> None:
        self.what = what
        self.needed = needed
        self.available = available
        super().__init__(
            f"truncated {what}: needs {needed} bytes, {available} left", offset
        )


class UnsupportedIpVersion(MalformedSyn):
    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"IP version {version}, expected 4 or 6", 0)


class BadHeaderLength(MalformedSyn):
    """An IPv4 IHL or a TCP data offset below its minimum."""

    def __init__(self, what: str, value: int, offset: int) -> None:
        self.what = what
        self.value = value
        super().__init__(f"bad {what} {value}", offset)


class NotTcp(MalformedSyn):
    def __init__(self, protocol: int, offset: int) -> None:
        self.protocol = protocol
        super().__init__(f"not TCP: next protocol is {protocol}", offset)


class NotSyn(MalformedSyn):
    def __init__(self, flags: int, offset: int) -> None:
        self.flags = flags
        super().__init__(f"not a SYN: TCP flags are 0x{flags:03x}", offset)


class UnknownField(TcpfpError):
    """A field name that is not in the field table."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown field {name!r} (see `tcpfp decode --list-fields`)")
