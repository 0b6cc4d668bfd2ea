"""Saved SYNs and TCP_INFO values given as hex -> the texts ``tcpfp decode`` prints.

This is the adapter between user input and the pure core for ``decode``:
each input becomes either an ``Observation`` (rendered through the field
table) or a ``TcpfpError`` that the CLI prints as one line.  Nothing here
reads or writes a stream, so the CLI command stays a few lines and the
rendering is testable on its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from tabulate import tabulate

from .errors import TcpfpError
from .fields import SYN_FIELDS, Field, Observation, Renderer, render
from .hextext import parse_hex
from .oslabel import Labeler
from .syn import parse_syn
from .tcpinfo import TCP_INFO_LAYOUT, TcpInfo, parse_tcp_info


class Outcome(NamedTuple):
    """One input and what became of it: exactly one of ``result`` and ``error`` is set."""

    label: str  # "argument 2", "line 7": where the input came from
    text: str
    result: Observation | TcpInfo | None
    error: TcpfpError | None


def decode_all(
    inputs: Iterable[tuple[str, str]], *, tcp_info: bool = False, labeler: Labeler | None = None
) -> Iterator[Outcome]:
    """Decode every (label, hex text) pair; a bad one yields its error, never stops the run."""
    for label, text in inputs:
        try:
            raw = parse_hex(text)
            if tcp_info:
                result: Observation | TcpInfo = parse_tcp_info(raw)
            else:
                fingerprint = parse_syn(raw)
                os_label = labeler.label(fingerprint) if labeler is not None else None
                result = Observation(fingerprint=fingerprint, saved_syn=raw, os=os_label)
        except TcpfpError as error:
            yield Outcome(label, text, None, error)
        else:
            yield Outcome(label, text, result, None)


def error_line(outcome: Outcome) -> str:
    """One line naming the input and its problem."""
    shown = outcome.text.strip()
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"tcpfp decode: {outcome.label} ({shown!r}): {outcome.error}"


def syn_table(obs: Observation, fields: Sequence[Field] = SYN_FIELDS) -> str:
    return tabulate([(f.name, render(f, obs)) for f in fields], tablefmt="plain")


def syn_json(obs: Observation, fields: Sequence[Field] = SYN_FIELDS) -> str:
    return json.dumps({f.name: f.read(obs) for f in fields})


def syn_fields_line(obs: Observation, renderer: Renderer) -> str:
    """The chosen fields' texts, tab-separated: an OS label holds spaces (``win:Windows:10 or 11``)."""
    return "\t".join(renderer.texts(obs))


def tcp_info_names(selection: str | None) -> list[str]:
    """The TCP_INFO field names to show: all, or a comma-separated choice (``tcpi_`` optional)."""
    known = [f.name for f in TCP_INFO_LAYOUT]
    if not selection:
        return known
    names = [n.strip().lower().removeprefix("tcpi_") for n in selection.split(",") if n.strip()]
    for name in names:
        if name not in known:
            raise TcpfpError(f"unknown TCP_INFO field {name!r}; known: {', '.join(known)}")
    return names


def tcp_info_table(info: TcpInfo, names: Sequence[str]) -> str:
    rows = [(n, info.values.get(n, "-")) for n in names]
    rows.append(("(bytes)", len(info.raw)))
    return tabulate(rows, tablefmt="plain")


def tcp_info_json(info: TcpInfo, names: Sequence[str]) -> str:
    return json.dumps({n: info.values.get(n) for n in names} | {"length": len(info.raw)})


def tcp_info_fields_line(info: TcpInfo, names: Sequence[str]) -> str:
    return "\t".join(str(info.values.get(n, "-")) for n in names)
