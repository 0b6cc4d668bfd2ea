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

from collections.abc import Callable, Iterable
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, NamedTuple

from .errors import UnknownField
from .sigdb import Match
from .syn import TTL_MEMBERS, TTL_TEXTS, Fingerprint
from .tcpinfo import TcpInfo, values_reader

if TYPE_CHECKING:
    from .rules import Rule

Value = int | str | None


class Observation(NamedTuple):
    """What one connection (or one decoded SYN) gives the fields to read."""

    fingerprint: Fingerprint | None = None
    saved_syn: bytes | None = None  # also kept when it could not be parsed
    tcp_info: TcpInfo | None = None  # read once, at accept
    tcp_info_now: TcpInfo | None = None  # read again when a request arrives
    accept_time_us: int | None = None
    os: Match | None = None  # the signature-database label of the SYN
    deny: Rule | None = None  # the --deny rule that matched (FINGERPRINT_DENY)


class Field(NamedTuple):
    name: str
    meaning: str
    source: str  # "syn", "tcp_info", "tcp_info_now", "connection"
    kind: str  # "int", "text", "hex": how report types the column
    read: Callable[[Observation], Value]
    scalar: bool = True  # False for the whole-structure hex dumps
    member: str | None = None  # the Fingerprint attribute it shows as is, if any
    info: str | None = None  # the TCP_INFO field it shows (from the ``source`` attribute), if any


def _syn(getter: Callable[[Fingerprint], Value]) -> Callable[[Observation], Value]:
    def read(obs: Observation) -> Value:
        fp = obs.fingerprint
        return None if fp is None else getter(fp)

    return read


def _info(attr: str, name: str) -> Callable[[Observation], Value]:
    def read(obs: Observation) -> Value:
        info = getattr(obs, attr)
        return None if info is None else info.get(name)

    return read


def _info_field(name: str, meaning: str, source: str, info: str) -> Field:
    """A field that shows one TCP_INFO field of ``source`` (at accept, or at the request)."""
    return Field(name, meaning, source, "int", _info(source, info), info=info)


def _member(name: str, meaning: str, kind: str, attr: str) -> Field:
    """A field that shows one Fingerprint attribute unchanged."""
    return Field(name, meaning, "syn", kind, _syn(attrgetter(attr)), member=attr)


FIELDS: tuple[Field, ...] = (
    # --- from the saved SYN: the Apache module's fields ---------------------
    _member("FINGERPRINT_IP_TTL", "IPv4 TTL or IPv6 hop limit of the SYN", "int", "ttl"),
    _member("FINGERPRINT_IP_DF", "1 if the IPv4 Don't Fragment bit is set, else 0; - for IPv6",
            "int", "df"),
    _member("FINGERPRINT_IP_ECN", "ECN bits of the IPv4 TOS or IPv6 traffic class, 0-3", "int", "ip_ecn"),
    _member("FINGERPRINT_TCP_WSIZE", "TCP window field of the SYN (never scaled)", "int", "window"),
    _member("FINGERPRINT_TCP_WSCALE", "window scale shift (option 3), or -", "int", "window_scale"),
    _member("FINGERPRINT_TCP_MSS", "MSS (option 2), or -", "int", "mss"),
    _member("FINGERPRINT_TCP_OPTIONS", "option kinds in wire order, EOL and its padding as 0", "text", "options_text"),
    _member("FINGERPRINT_TCP_ECN", "ECE + 2 x CWR of the SYN, 0-3 (3 = ECN setup)", "int", "tcp_ecn"),
    # --- from the saved SYN: ours --------------------------------------------
    _member("FINGERPRINT_IP_VERSION", "4 or 6", "int", "ip_version"),
    _member("FINGERPRINT_IP_ID", "IPv4 identification, or - for IPv6", "int", "ip_id"),
    _member("FINGERPRINT_IP_OLEN", "bytes of IPv4 options or of IPv6 extension headers", "int", "ip_olen"),
    _member("FINGERPRINT_TCP_TS", "TSval of the timestamp option, or -", "int", "ts_val"),
    _member("FINGERPRINT_TCP_TSECR", "TSecr of the timestamp option, or -", "int", "ts_ecr"),
    _member("FINGERPRINT_ITTL", "initial TTL guess: smallest of 32, 64, 128, 255 >= TTL", "int", "ittl"),
    _member("FINGERPRINT_HOPS", "ITTL - TTL", "int", "hops"),
    _member("FINGERPRINT_QUIRKS", "p0f quirk names, comma-separated, or empty", "text", "quirks_text"),
    _member("FINGERPRINT_P0F", "the SYN's p0f v3 raw signature, as p0f prints raw_sig",
            "text", "p0f"),
    # --- from signature databases ---------------------------------------------
    Field("FINGERPRINT_OS", "OS label class:name:flavor from the signature databases, or -",
          "os", "text", lambda obs: None if obs.os is None else obs.os.label),
    Field("FINGERPRINT_OS_MATCH", "how the label matched: exact, fuzzy, generic, or -",
          "os", "text", lambda obs: None if obs.os is None else obs.os.kind),
    # --- the connection -------------------------------------------------------
    _info_field("FINGERPRINT_TCP_RTT", "tcpi_rtt at accept, in microseconds: the handshake RTT",
                "tcp_info", "rtt"),
    Field("FINGERPRINT_ACCEPT_TIME", "when the connection was accepted, us since the epoch",
          "connection", "int", lambda obs: obs.accept_time_us),
    # --- TCP_INFO read again at request time ---------------------------------
    _info_field("FINGERPRINT_REQ_RTT", "tcpi_rtt when the request arrived, in microseconds",
                "tcp_info_now", "rtt"),
    _info_field("FINGERPRINT_REQ_MIN_RTT", "tcpi_min_rtt when the request arrived, in microseconds",
                "tcp_info_now", "min_rtt"),
    _info_field("FINGERPRINT_REQ_RCV_MSS", "tcpi_rcv_mss when the request arrived: largest segment seen",
                "tcp_info_now", "rcv_mss"),
    _info_field("FINGERPRINT_REQ_TOTAL_RETRANS", "tcpi_total_retrans when the request arrived",
                "tcp_info_now", "total_retrans"),
    # --- what serve did about it -----------------------------------------------
    Field("FINGERPRINT_DENY", "the --deny rule that matched, as LINE:ACTION (e.g. 3:close), or -",
          "deny", "text", lambda obs: None if obs.deny is None else obs.deny.tag),
    # --- whole structures, hex ------------------------------------------------
    Field("FINGERPRINT_SAVED_SYN", "the saved SYN, lowercase hex, whole", "syn", "hex",
          lambda obs: None if obs.saved_syn is None else obs.saved_syn.hex(), scalar=False),
    Field("FINGERPRINT_TCP_INFO", "TCP_INFO as the kernel returned it, lowercase hex, whole",
          "tcp_info", "hex",
          lambda obs: None if obs.tcp_info is None else obs.tcp_info.raw.hex(), scalar=False),
)

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
SCALAR_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.scalar)
#: Fields a SYN alone determines (with the signature databases): what ``decode`` shows.
SYN_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.source in ("syn", "os"))


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


#: Templates a ``Renderer.filler`` keeps, one per (SYN shape, TTL); all are dropped when full.
SHAPES_KEPT = 4096


class Renderer:
    """Renders one fixed list of fields at a time: the hot path of decode and the log.

    The texts are exactly those of ``render``; they are only put together with
    fewer steps.  Fields that show a Fingerprint attribute unchanged come from
    the Fingerprint in three groups: its shape fields ready-made from
    ``Fingerprint.shape_texts``; TTL, ITTL and hops from a table of every TTL
    (ITTL and hops are functions of the TTL); the other varying ones (IP ID,
    timestamps, p0f signature) converted per SYN.  Other fields go through
    their ``read``.  One ``itemgetter`` then puts all of them in field order.
    """

    def __init__(self, fields: Iterable[Field]) -> None:
        self.fields = tuple(fields)
        index = {name: i for i, name in enumerate(Fingerprint._fields)}
        first_shape = index["ip_version"]  # the fields from here on are the SYN's shape
        members = [f.member for f in self.fields if f.member is not None]
        self._all_members = len(members) == len(self.fields)
        self._no_members = not members
        # The other fields: those of one TCP_INFO (at accept, or at the request) are read by
        # one producer each; every other field by its own.  A producer gives a tuple of texts.
        others = [f for f in self.fields if f.member is None]
        by_source: dict[str, list[Field]] = {}
        for f in others:
            if f.info is not None:
                by_source.setdefault(f.source, []).append(f)
        producers, produced = [], []
        for source, group in by_source.items():
            producers.append(_info_texts(source, [f.info for f in group]))  # type: ignore[misc]
            produced += group
        for f in others:
            if f.info is None:
                producers.append(_one_text(f))
                produced.append(f)
        self._producers = tuple(producers)
        by_ttl = [m for m in members if m in TTL_MEMBERS]
        self._uses_ttl = bool(by_ttl)
        varying = list(dict.fromkeys(m for m in members if index[m] < first_shape and m not in TTL_MEMBERS))
        self._varying = _getter([index[m] for m in varying])
        # Slots of the concatenation: TTL texts, varying texts, shape texts, then other fields.
        slot = {m: k for k, m in enumerate(TTL_MEMBERS)} if by_ttl else {}
        slot |= {m: len(slot) + k for k, m in enumerate(varying)}
        base = len(slot)
        slot |= {m: base + index[m] - first_shape for m in members if index[m] >= first_shape}
        after = base + len(Fingerprint._fields) - first_shape - 1  # shape_texts is not a shape field
        if not members:
            after = 0  # no member texts come first
        position = {id(f): after + k for k, f in enumerate(produced)}
        self._order = _getter([slot[f.member] if f.member is not None else position[id(f)] for f in self.fields])
        self._missing_members = ("-",) * after

    def filler(self, pieces: list[str]) -> Callable[[Fingerprint], str]:
        """``pieces[0] + texts[0] + pieces[1] + ... + texts[-1] + pieces[-1]`` of a
        Fingerprint, for a renderer of Fingerprint members only (a log line's run of SYN
        fields), in fewer steps: the shape and TTL texts are written once into a
        %-template kept per (shape texts, TTL), so each SYN fills in only its own values
        (IP ID, flow label, timestamps, p0f signature).  The same text as the texts joined.
        """
        if not self._all_members or len(pieces) != len(self.fields) + 1:
            raise ValueError("a filler needs Fingerprint members only, and one piece more than fields")
        index = {name: i for i, name in enumerate(Fingerprint._fields)}
        first_shape = index["ip_version"]
        own = [k for k, f in enumerate(self.fields)
               if index[f.member] < first_shape and f.member not in TTL_MEMBERS]  # type: ignore[index]
        values = _getter([index[self.fields[k].member] for k in own])  # type: ignore[index]
        escaped = [p.replace("%", "%%") for p in pieces]
        kept: dict[tuple[tuple[str, ...], int], str] = {}

        def fill(fp: Fingerprint) -> str:
            key = (fp.shape_texts, fp.ttl)
            template = kept.get(key)
            if template is None:
                texts = [t.replace("%", "%%") for t in self.fingerprint_texts(fp)]
                for k in own:
                    texts[k] = "%s"
                template = escaped[0] + "".join(t + p for t, p in zip(texts, escaped[1:]))
                if len(kept) >= SHAPES_KEPT:
                    kept.clear()
                kept[key] = template
            found = values(fp)
            if None in found:
                found = tuple(["-" if v is None else v for v in found])
            return template % found  # %s writes str(value), as render does

        return fill

    def fingerprint_texts(self, fp: Fingerprint) -> tuple[str, ...]:
        """The texts of a renderer whose fields all show Fingerprint members, from the
        Fingerprint alone (what ``decode --fields`` and the benchmark need)."""
        return self._order(self._member_texts(fp))

    def _member_texts(self, fp: Fingerprint) -> tuple[str, ...]:
        values = self._varying(fp)
        if None in values:
            varying = tuple(["-" if v is None else str(v) for v in values])
        else:
            varying = tuple(map(str, values))
        if self._uses_ttl:
            return TTL_TEXTS[fp.ttl] + varying + fp.shape_texts
        return varying + fp.shape_texts

    def texts(self, obs: Observation) -> tuple[str, ...]:
        if self._no_members:
            members: tuple[str, ...] = ()
        else:
            fp = obs.fingerprint
            members = self._missing_members if fp is None else self._member_texts(fp)
            if self._all_members:
                return self._order(members)
        for produce in self._producers:
            members += produce(obs)
        return self._order(members)


def _one_text(field: Field) -> Callable[[Observation], tuple[str]]:
    return lambda obs: (render(field, obs),)


def _info_texts(source: str, names: list[str]) -> Callable[[Observation], tuple[str, ...]]:
    """The texts of several fields of the TcpInfo in ``source``, from one unpack."""
    values = values_reader(names)
    missing = ("-",) * len(names)

    def texts(obs: Observation) -> tuple[str, ...]:
        info = getattr(obs, source)
        if info is None:
            return missing
        found = values(info)
        if None in found:
            return tuple(["-" if v is None else str(v) for v in found])
        return tuple(map(str, found))

    return texts


def _getter(indices: list[int]) -> Callable[[tuple], tuple]:
    """``itemgetter`` that always returns a tuple, even of zero or one item."""
    if len(indices) > 1:
        return itemgetter(*indices)
    if len(indices) == 1:
        only = indices[0]
        return lambda t: (t[only],)
    return lambda t: ()


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
