"""The ``tcpfp`` command line: thin typer commands over the core.

Each command parses its arguments, calls the core (through an adapter module
such as ``decoding``), prints, and exits with a meaningful status: 0 when
everything worked, 2 when any input was bad.  Bad input is one line on
stderr, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__, decoding
from .errors import TcpfpError
from .fields import FIELDS, SYN_FIELDS, Renderer, lookup

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


SignaturesOption = Annotated[Optional[list[str]], typer.Option(
    "--signatures", metavar="FILE", help="Your own p0f-format signature file, searched first (repeatable).")]
P0fDbOption = Annotated[Optional[str], typer.Option(
    "--p0f-db", metavar="PATH", help="p0f's database to use (default /etc/p0f/p0f.fp when it exists).")]
NoP0fDbOption = Annotated[bool, typer.Option("--no-p0f-db", help="Do not use p0f's database.")]


def _labeler(signatures: list[str] | None, p0f_db: str | None, no_p0f_db: bool):
    from .oslabel import Labeler

    return Labeler.from_options(signatures or (), p0f_db, not no_p0f_db)


def _inputs(values: list[str]) -> Iterator[tuple[str, str]]:
    """(label, text) for every input: the arguments, or stdin lines for none or ``-``.

    Stdin is read line by line as bytes (so a result prints as soon as its line
    arrives), and a line that is not UTF-8 becomes text that ``parse_hex`` names as
    bad, instead of a UnicodeDecodeError that would end the run.
    """
    if not values or values == ["-"]:
        if sys.stdin is None:
            raise TcpfpError("stdin is closed")
        lines = getattr(sys.stdin, "buffer", None)
        if lines is None:
            lines = (line.encode("utf-8", "surrogateescape") for line in sys.stdin)
        return (
            (f"line {number}", line.decode("utf-8", "surrogateescape"))
            for number, line in enumerate(lines, 1)
            if line.strip()
        )
    return ((f"argument {number}", value) for number, value in enumerate(values, 1))


@app.command()
def decode(
    hex_values: Annotated[Optional[list[str]], typer.Argument(
        metavar="HEX", help="Saved SYNs as hex; none or '-' reads one per line from stdin.",
        show_default=False)] = None,
    json_lines: Annotated[bool, typer.Option(
        "--json", help="One JSON object per input, keyed by field name.")] = False,
    fields: Annotated[Optional[str], typer.Option(
        "--fields", metavar="A,B,...",
        help="Print only these fields, tab-separated, one line per good input (with --json: "
             "only these keys). With --tcp-info: TCP_INFO names such as rtt,snd_cwnd.")] = None,
    tcp_info: Annotated[bool, typer.Option(
        "--tcp-info", help="The inputs are FINGERPRINT_TCP_INFO values, not SYNs.")] = False,
    list_fields: Annotated[bool, typer.Option(
        "--list-fields", help="List every field with its meaning, and exit.")] = False,
    signatures: SignaturesOption = None,
    p0f_db: P0fDbOption = None,
    no_p0f_db: NoP0fDbOption = False,
) -> None:
    """Decode saved SYNs (FINGERPRINT_SAVED_SYN hex) into their fingerprint fields."""
    if list_fields:
        for field in FIELDS:
            typer.echo(f"{field.name:32} {field.meaning}")
        return
    try:
        names = decoding.tcp_info_names(fields) if tcp_info else None
        chosen = [lookup(n) for n in fields.split(",") if n.strip()] if fields and not tcp_info else SYN_FIELDS
        if fields is not None and not (names if tcp_info else chosen):
            raise TcpfpError(f"--fields {fields!r} names no field")
        labeler = None if tcp_info else _labeler(signatures, p0f_db, no_p0f_db)
        inputs = _inputs(hex_values or [])
    except TcpfpError as error:
        raise fail(str(error)) from None
    if fields and not tcp_info and not json_lines:
        chosen = Renderer(chosen)  # a line of texts; JSON takes the field list itself
    failed = 0
    try:
        for outcome in decoding.decode_all(inputs, tcp_info=tcp_info, labeler=labeler):
            if outcome.error is not None:
                failed += 1
                typer.echo(decoding.error_line(outcome), err=True)
                continue
            typer.echo(_render(outcome, chosen, names, json_lines, bool(fields)))
    except BrokenPipeError:
        raise  # the reader went away: click exits quietly
    except OSError as error:  # stdout on a full disk, stdin unreadable, ...
        raise fail(f"decode stopped: {error.strerror or error}") from None
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


@app.command()
def serve(
    port: Annotated[int, typer.Option("--port", help="Listen on this port on every address ([::], dual-stack).")] = 80,
    listen: Annotated[Optional[list[str]], typer.Option(
        "--listen", metavar="ADDR:PORT", help="Listen here instead (repeatable): 0.0.0.0:80, [::1]:8080.")] = None,
    log: Annotated[Optional[str], typer.Option("--log", metavar="FILE", help="Access log file (default: stdout).")] = None,
    log_format: Annotated[str, typer.Option(
        "--log-format", metavar="FMT",
        help="Apache LogFormat string, or common, combined, tcpfp (combined + every scalar field).")] = "tcpfp",
    no_saved_syn: Annotated[bool, typer.Option("--no-saved-syn", help="Do not read TCP_SAVED_SYN.")] = False,
    no_tcp_info: Annotated[bool, typer.Option("--no-tcp-info", help="Do not read TCP_INFO.")] = False,
    body: Annotated[Optional[Path], typer.Option(
        "--body", metavar="FILE", help="Serve this file to every request instead of the fingerprint.")] = None,
    cgi_dir: Annotated[Optional[Path], typer.Option(
        "--cgi-dir", metavar="DIR", help="Run executables in DIR for requests under /cgi-bin/.")] = None,
    env_vars: Annotated[bool, typer.Option("--env-vars", help="Give CGI scripts the FINGERPRINT_* fields.")] = False,
    env_tcp_info: Annotated[bool, typer.Option("--env-tcp-info", help="Give CGI scripts FINGERPRINT_TCP_INFO.")] = False,
    env_saved_syn: Annotated[bool, typer.Option("--env-saved-syn", help="Give CGI scripts FINGERPRINT_SAVED_SYN.")] = False,
    max_line: Annotated[int, typer.Option("--max-line", help="Longest request line or header line, bytes.")] = 8190,
    max_headers: Annotated[int, typer.Option("--max-headers", help="Most header fields in a request.")] = 100,
    request_timeout: Annotated[float, typer.Option("--request-timeout", help="Seconds to receive a request head.")] = 20.0,
    keepalive_timeout: Annotated[float, typer.Option("--keepalive-timeout", help="Idle seconds between requests.")] = 5.0,
    max_connections: Annotated[int, typer.Option("--max-connections", help="Open connections at most.")] = 10000,
    cgi_timeout: Annotated[float, typer.Option("--cgi-timeout", help="Seconds a CGI script may run.")] = 10.0,
    user: Annotated[Optional[str], typer.Option("--user", metavar="NAME", help="Drop root to this user after binding.")] = None,
    loop: Annotated[str, typer.Option("--loop", help="Event loop: auto (uvloop if installed), asyncio, uvloop.")] = "auto",
    workers: Annotated[int, typer.Option(
        "--workers", help="Worker processes sharing the port (SO_REUSEPORT); one per core is fastest.")] = 1,
    signatures: SignaturesOption = None,
    p0f_db: P0fDbOption = None,
    no_p0f_db: NoP0fDbOption = False,
    deny: Annotated[Optional[Path], typer.Option(
        "--deny", metavar="RULES", help="Refuse clients that match these rules (docs/blocking.md).")] = None,
    deny_dry_run: Annotated[bool, typer.Option(
        "--deny-dry-run", help="Log the --deny rule each client matches, but block nothing.")] = False,
) -> None:
    """Listen for HTTP, fingerprint every client's SYN, and write an Apache-style access log."""
    from .httpwire import Limits
    from .logformat import compile_format
    from .rules import load_rules
    from .server import ServerConfig, parse_listen
    from .server import serve as run_server

    try:
        if not listen and not 0 < port < 65536:  # getaddrinfo would take 70000 as 4464
            raise TcpfpError(f"--port {port}: expected 1 to 65535")
        config = ServerConfig(
            listen=[parse_listen(t) for t in listen] if listen else [("::", port)],
            log_format=compile_format(log_format), log_path=log,
            saved_syn=not no_saved_syn, tcp_info=not no_tcp_info,
            body=_read_body(body), cgi_dir=cgi_dir,
            env_vars=env_vars, env_tcp_info=env_tcp_info, env_saved_syn=env_saved_syn,
            limits=Limits(max_line, max_headers), request_timeout=request_timeout,
            keepalive_timeout=keepalive_timeout, max_connections=max_connections,
            cgi_timeout=cgi_timeout, user=user, workers=workers,
            labeler=_labeler(signatures, p0f_db, no_p0f_db),
            deny=load_rules(deny) if deny is not None else None, deny_dry_run=deny_dry_run,
        )
        if deny_dry_run and deny is None:
            raise TcpfpError("--deny-dry-run needs --deny RULES")
        run_server(config, loop)
    except TcpfpError as error:
        raise fail(str(error)) from None


def _read_body(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise TcpfpError(f"--body {path}: {error.strerror}") from None


@app.command()
def report(
    logs: Annotated[Optional[list[str]], typer.Argument(
        metavar="LOG", help="Access logs (gzip is read directly); none or '-' reads stdin.",
        show_default=False)] = None,
    log_format: Annotated[Optional[str], typer.Option(
        "--format", metavar="FMT",
        help="The logs' Apache LogFormat string, or common, combined, tcpfp. Default: recognised.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document instead of tables.")] = False,
    csv_dir: Annotated[Optional[Path], typer.Option(
        "--csv", metavar="DIR", help="Also write one CSV file per table into DIR.")] = None,
    campaigns: Annotated[Optional[list[Path]], typer.Option(
        "--campaigns", metavar="FILE", help="More campaign definitions (name<TAB>regex<TAB>description).")] = None,
    top: Annotated[Optional[int], typer.Option(
        "--top", metavar="N", help="Show the N (1 or more) largest clusters and campaigns (tables: 20, JSON/CSV: all).")] = None,
    min_count: Annotated[int, typer.Option(
        "--min-count", metavar="N", help="Hide clusters and campaigns with fewer than N requests.")] = 1,
    by: Annotated[Optional[str], typer.Option(
        "--by", metavar="FIELD,...", help="Cluster fingerprints by these fields instead of the default key.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Processes that read a large file (ranges of lines); threads for stdin and gzip.")] = 2,
    signatures: SignaturesOption = None,
    p0f_db: P0fDbOption = None,
    no_p0f_db: NoP0fDbOption = False,
) -> None:
    """Cluster an access log's requests into device fingerprints and campaigns."""
    from . import report as reporting
    from .campaigns import CampaignMatcher, load_campaigns
    from .logreader import TerminalProgress

    def progress(label: str, size: int | None):
        return TerminalProgress(size, label) if sys.stderr.isatty() else None

    try:
        options = reporting.ReportOptions(
            campaigns=CampaignMatcher(load_campaigns([str(p) for p in campaigns or []])),
            by=by.split(",") if by else None, top=top, min_count=min_count, workers=workers,
            labeler=_labeler(signatures, p0f_db, no_p0f_db))
        result = reporting.build_report(logs or ["-"], log_format, options,
                                        note=lambda m: typer.echo(f"tcpfp: {m}", err=True), progress=progress)
        if csv_dir is not None:
            result.write_csv(csv_dir)
    except TcpfpError as error:
        raise fail(str(error)) from None
    typer.echo(json.dumps(result.to_json(), indent=1) if json_out else result.tables(20 if top is None else top))


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"tcpfp {__version__}")
        raise typer.Exit(0)


def main() -> None:
    """Run the command; a usage error (an unknown option, ``--port abc``) is one line too.

    Typer would draw it as a multi-line box; an operator's service log or a
    script's ``2>`` should get the same one ``tcpfp: ...`` line as every other
    error, with the same exit status 2.
    """
    try:
        from typer._click.exceptions import ClickException  # typer 0.2x carries its own click
    except ImportError:
        from click import ClickException

    try:
        code = app(standalone_mode=False)
    except ClickException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # bare `tcpfp`: the help, as typer shows it
            if error.format_message():  # (typer's rich help has printed itself already)
                error.show()
            sys.exit(error.exit_code)
        command = error.ctx.command_path if getattr(error, "ctx", None) else "tcpfp"
        typer.echo(f"tcpfp: {error.format_message()} (see '{command} --help')", err=True)
        sys.exit(error.exit_code)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
