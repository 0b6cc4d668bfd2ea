"""The ``tcpfp`` command line: thin typer commands over the core.

Each command parses its arguments, calls the core (through an adapter module
such as ``decoding``), prints, and exits with a meaningful status: 0 when
everything worked, 2 when any input was bad.  Bad input is one line on
stderr, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from . import __version__, decoding
from .errors import TcpfpError
from .fields import FIELDS, SYN_FIELDS, lookup

app = typer.Typer(
    name="tcpfp",
    help="Fingerprint the TCP stacks of HTTP clients from their saved SYN and TCP_INFO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2


def fail(message: str) -> typer.Exit:
    typer.echo(f"tcpfp: {message}", err=True)
    return typer.Exit(EXIT_BAD_INPUT)


def _inputs(values: list[str]) -> list[tuple[str, str]]:
    """(label, text) for every input: the arguments, or stdin lines for none or ``-``."""
    if not values or values == ["-"]:
        return [
            (f"line {number}", line)
            for number, line in enumerate(sys.stdin, 1)
            if line.strip()
        ]
    return [(f"argument {number}", value) for number, value in enumerate(values, 1)]


@app.command()
def decode(
    hex_values: Annotated[Optional[list[str]], typer.Argument(
        metavar="[HEX]...", help="Saved SYNs as hex; none or '-' reads one per line from stdin.",
        show_default=False)] = None,
    json_lines: Annotated[bool, typer.Option(
        "--json", help="One JSON object per input, keyed by field name.")] = False,
    fields: Annotated[Optional[str], typer.Option(
        "--fields", metavar="A,B,...",
        help="Print only these fields, space-separated, one line per good input.")] = None,
    tcp_info: Annotated[bool, typer.Option(
        "--tcp-info", help="The inputs are FINGERPRINT_TCP_INFO values, not SYNs.")] = False,
    list_fields: Annotated[bool, typer.Option(
        "--list-fields", help="List every field with its meaning, and exit.")] = False,
) -> None:
    """Decode saved SYNs (FINGERPRINT_SAVED_SYN hex) into their fingerprint fields."""
    if list_fields:
        for field in FIELDS:
            typer.echo(f"{field.name:32} {field.meaning}")
        return
    try:
        names = decoding.tcp_info_names(fields) if tcp_info else None
        chosen = [lookup(n) for n in fields.split(",") if n.strip()] if fields and not tcp_info else SYN_FIELDS
    except TcpfpError as error:
        raise fail(str(error)) from None
    failed = 0
    for outcome in decoding.decode_all(_inputs(hex_values or []), tcp_info=tcp_info):
        if outcome.error is not None:
            failed += 1
            typer.echo(decoding.error_line(outcome), err=True)
            continue
        typer.echo(_render(outcome, chosen, names, json_lines, bool(fields)))
    if failed:
        raise typer.Exit(EXIT_BAD_INPUT)


def _render(outcome, chosen, names, json_lines: bool, just_fields: bool) -> str:
    result = outcome.result
    if names is not None:
        if json_lines:
            return decoding.tcp_info_json(result, names)
        if just_fields:
            return decoding.tcp_info_fields_line(result, names)
        return f"# {outcome.label}\n{decoding.tcp_info_table(result, names)}\n"
    if json_lines:
        return decoding.syn_json(result, chosen)
    if just_fields:
        return decoding.syn_fields_line(result, chosen)
    return f"# {outcome.label}\n{decoding.syn_table(result, chosen)}\n"


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"tcpfp {__version__}")
        raise typer.Exit(0)


def main() -> None:
    app()
