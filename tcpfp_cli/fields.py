"""THE table of FINGERPRINT_* fields.

Each field is described once, here: its name, one line of meaning, where its
value comes from, its type, and how its value is read from an
``Observation`` (everything known about one connection).  The log writer,
the CGI environment, ``tcpfp decode`` and the report's columns all render
fields through this table and nowhere else, so a field means the same text
everywhere.  ``docs/fields.md`` documents the same table for people;
``tests/test_fields.py`` checks that the two agree.

Rendering rule (Apache's): a value that does not exist is ``-``.  An empty
list (no quirks, no options) is the empty text, not ``-``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .errors import UnknownField
from .syn import Fingerprint
from .tcpinfo import TcpInfo

Value = int | str | None


class Observation(NamedTuple):
    """What one connection (or one decoded SYN) gives the fields to read."""

    fingerprint: Fingerprint | None = None
    saved_syn: bytes | None = None  # also kept when it could not be parsed
    tcp_info: TcpInfo | None = None  # read once, at accept
    tcp_info_now: TcpInfo | None = None  # read again when a request arrives
    accept_time_us: int | None = None


class Field(NamedTuple):
    name: str
    meaning: str
    source: str  # "syn", "tcp_info", "tcp_info_now", "connection"
    kind: str  # "int", "text", "hex": how report types the column
    read: Callable[[Observation], Value]
    scalar: bool = True  # False for the whole-structure hex dumps


def _syn(getter: Callable[[Fingerprint], Value]) -> Callable[[Observation], Value]:
    def read(obs: Observation) -> Value:
        fp = obs.fingerprint
        return None if fp is None else getter(fp)

    return read


def _info(attr: str, name: str) -> Callable[[Observation], Value]:
    def read(obs: Observation) -> Value:
        info = getattr(obs, attr)
        return None if info is None else info.values.get(name)

    return read


def _bit(value: bool | None) -> int | None:
    return None if value is None else int(value)


FIELDS: tuple[Field, ...] = (
    # --- from the saved SYN: the Apache module's fields ---------------------
    Field("FINGERPRINT_IP_TTL", "IPv4 TTL or IPv6 hop limit of the SYN", "syn", "int",
          _syn(lambda fp: fp.ttl)),
    Field("FINGERPRINT_IP_DF", "1 if the IPv4 Don't Fragment bit is set, else 0; - for IPv6",
          "syn", "int", _syn(lambda fp: _bit(fp.df))),
    Field("FINGERPRINT_IP_ECN", "ECN bits of the IPv4 TOS or IPv6 traffic class, 0-3",
          "syn", "int", _syn(lambda fp: fp.ip_ecn)),
    Field("FINGERPRINT_TCP_WSIZE", "TCP window field of the SYN (never scaled)", "syn", "int",
          _syn(lambda fp: fp.window)),
    Field("FINGERPRINT_TCP_WSCALE", "window scale shift (option 3), or -", "syn", "int",
          _syn(lambda fp: fp.window_scale)),
    Field("FINGERPRINT_TCP_MSS", "MSS (option 2), or -", "syn", "int",
          _syn(lambda fp: fp.mss)),
    Field("FINGERPRINT_TCP_OPTIONS", "option kinds in wire order, EOL and its padding as 0",
          "syn", "text", _syn(lambda fp: fp.options_text)),
    Field("FINGERPRINT_TCP_ECN", "ECE + 2 x CWR of the SYN, 0-3 (3 = ECN setup)", "syn", "int",
          _syn(lambda fp: fp.tcp_ecn)),
    # --- from the saved SYN: ours --------------------------------------------
    Field("FINGERPRINT_IP_VERSION", "4 or 6", "syn", "int", _syn(lambda fp: fp.ip_version)),
    Field("FINGERPRINT_IP_ID", "IPv4 identification, or - for IPv6", "syn", "int",
          _syn(lambda fp: fp.ip_id)),
    Field("FINGERPRINT_IP_OLEN", "bytes of IPv4 options or of IPv6 extension headers",
          "syn", "int", _syn(lambda fp: fp.ip_olen)),
    Field("FINGERPRINT_TCP_TS", "TSval of the timestamp option, or -", "syn", "int",
          _syn(lambda fp: fp.ts_val)),
    Field("FINGERPRINT_TCP_TSECR", "TSecr of the timestamp option, or -", "syn", "int",
          _syn(lambda fp: fp.ts_ecr)),
    Field("FINGERPRINT_ITTL", "initial TTL guess: smallest of 32, 64, 128, 255 >= TTL",
          "syn", "int", _syn(lambda fp: fp.ittl)),
    Field("FINGERPRINT_HOPS", "ITTL - TTL", "syn", "int", _syn(lambda fp: fp.hops)),
    Field("FINGERPRINT_QUIRKS", "p0f quirk names, comma-separated, or empty", "syn", "text",
          _syn(lambda fp: fp.quirks_text)),
    Field("FINGERPRINT_P0F", "the SYN's p0f v3 raw signature, as p0f prints raw_sig",
          "syn", "text", _syn(lambda fp: fp.p0f)),
    # --- the connection -------------------------------------------------------
    Field("FINGERPRINT_TCP_RTT", "tcpi_rtt at accept, in microseconds: the handshake RTT",
          "tcp_info", "int", _info("tcp_info", "rtt")),
    Field("FINGERPRINT_ACCEPT_TIME", "when the connection was accepted, us since the epoch",
          "connection", "int", lambda obs: obs.accept_time_us),
    # --- TCP_INFO read again at request time ---------------------------------
    Field("FINGERPRINT_REQ_RTT", "tcpi_rtt when the request arrived, in microseconds",
          "tcp_info_now", "int", _info("tcp_info_now", "rtt")),
    Field("FINGERPRINT_REQ_MIN_RTT", "tcpi_min_rtt when the request arrived, in microseconds",
          "tcp_info_now", "int", _info("tcp_info_now", "min_rtt")),
    Field("FINGERPRINT_REQ_RCV_MSS", "tcpi_rcv_mss when the request arrived: largest segment seen",
          "tcp_info_now", "int", _info("tcp_info_now", "rcv_mss")),
    Field("FINGERPRINT_REQ_TOTAL_RETRANS", "tcpi_total_retrans when the request arrived",
          "tcp_info_now", "int", _info("tcp_info_now", "total_retrans")),
    # --- whole structures, hex ------------------------------------------------
    Field("FINGERPRINT_SAVED_SYN", "the saved SYN, lowercase hex, whole", "syn", "hex",
          lambda obs: None if obs.saved_syn is None else obs.saved_syn.hex(), scalar=False),
    Field("FINGERPRINT_TCP_INFO", "TCP_INFO as the kernel returned it, lowercase hex, whole",
          "tcp_info", "hex",
          lambda obs: None if obs.tcp_info is None else obs.tcp_info.raw.hex(), scalar=False),
)

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
SCALAR_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.scalar)
#: Fields a SYN alone determines: what ``decode`` shows.
SYN_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.source == "syn")


def lookup(name: str) -> Field:
    """A field by name; the ``FINGERPRINT_`` prefix and case are optional."""
    key = name.strip().upper()
    if not key.startswith("FINGERPRINT_"):
        key = "FINGERPRINT_" + key
    field = BY_NAME.get(key)
    if field is None:
        raise UnknownField(name)
    return field


def render(field: Field, obs: Observation) -> str:
    """One field of one observation, as it appears in a log line or CGI variable."""
    value = field.read(obs)
    return "-" if value is None else str(value)


def environment(
    obs: Observation, *, scalars: bool = True, tcp_info: bool = False, saved_syn: bool = False
) -> dict[str, str]:
    """CGI variables: the scalar fields (the module's TCPFingerprintEnvVars) and, each
    on its own switch, the TCP_INFO and SAVED_SYN dumps (TCPFingerprintEnvTCPInfo,
    TCPFingerprintEnvSavedSYN)."""
    env = {f.name: render(f, obs) for f in SCALAR_FIELDS} if scalars else {}
    if tcp_info:
        env["FINGERPRINT_TCP_INFO"] = render(BY_NAME["FINGERPRINT_TCP_INFO"], obs)
    if saved_syn:
        env["FINGERPRINT_SAVED_SYN"] = render(BY_NAME["FINGERPRINT_SAVED_SYN"], obs)
    return env
