"""CGI/1.1 (RFC 3875) for ``tcpfp serve --cgi-dir``: the module's environment variables at work.

Safety first, because the listener faces the internet: no shell is ever
involved (the script is executed directly), only regular executable files
whose real path lies inside the CGI directory are run, each run has a
timeout after which the script is killed, and its output is read up to a
bound.  Anything that goes wrong is a 500 for the client and a log line.
PATH_INFO never holds a ``.`` or ``..`` segment, and a script inherits no
descriptor of the server but its own stdin, stdout and stderr.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path
from urllib.parse import unquote_to_bytes

from .httpwire import RequestHead

PREFIX = b"/cgi-bin/"


class CgiFailure(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)


def resolve(cgi_dir: Path, path: bytes) -> tuple[Path, str, str]:
    """(script, SCRIPT_NAME, PATH_INFO) for a request path under /cgi-bin/, or CgiFailure."""
    rest = unquote_to_bytes(path[len(PREFIX):]).decode("utf-8", "surrogateescape")
    name, _, info = rest.partition("/")
    if not name or name.startswith(".") or "\0" in rest:
        raise CgiFailure(404, "no such script")
    root = cgi_dir.resolve()
    script = (root / name).resolve()
    if script.parent != root or not script.is_file():
        raise CgiFailure(404, "no such script")
    if not os.access(script, os.X_OK):
        raise CgiFailure(403, "script is not executable")
    if any(segment in (".", "..") for segment in info.split("/")):
        # Apache removes dot segments (also %-encoded ones) before a script sees the path,
        # and scripts that open files by PATH_INFO count on it (RFC 3875 4.1.5 lets us refuse).
        raise CgiFailure(404, "no such script")
    return script, "/cgi-bin/" + name, ("/" + info) if info else ""


def no_inherited_descriptors() -> None:
    """Make every descriptor this process holds now close-on-exec.

    The server opens all of its own close-on-exec, and the stdlib loop runs a
    script with ``close_fds``; uvloop has no ``close_fds``, so a descriptor the
    server inherited from whatever started it (a supervisor's pipe or socket)
    reached every script.  Called once at start-up, before anything is opened.
    """
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            try:
                os.set_inheritable(int(name), False)
            except OSError:
                pass  # the listing's own descriptor, closed by now


#: The end of a CGI header section: the first empty line, each line ending in LF or CR LF.
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
#: Connection-level headers are the server's to send (it frames the answer): a script's are dropped.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                        "proxy-connection"})


def parse_output(output: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Split a CGI response into status, headers and body (RFC 3875 section 6)."""
    end = _HEADER_END.search(output)  # the first empty line, not the first CR LF CR LF
    if end is None:
        raise CgiFailure(500, "script output has no header section")
    head, body = output[:end.start()], output[end.end():]
    status = 200
    headers: list[tuple[str, str]] = []
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        name, colon, value = line.decode("latin-1").partition(":")
        name, value = name.strip(), value.strip(" \t")
        if not colon or not _HEADER_NAME.match(name) or _BAD_VALUE.search(value):
            raise CgiFailure(500, "malformed header in script output")
        if name.lower() == "status":
            code = value.split(" ", 1)[0]
            if not (code.isdigit() and 200 <= int(code) <= 599):  # a 1xx is not a final answer
                raise CgiFailure(500, "bad Status header in script output")
            status = int(code)
        elif name.lower() == "location" and status == 200:
            status = 302
            headers.append((name, value))
        elif name.lower() not in HOP_BY_HOP:
            headers.append((name, value))
    if not any(k.lower() in ("content-type", "location") for k, _ in headers):
        raise CgiFailure(500, "script output has no Content-Type")
    return status, headers, body


async def run_cgi(
    cgi_dir: Path, head: RequestHead, body: bytes, env: dict[str, str], *,
    timeout: float, max_output: int,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Run the script a request names; (status, headers, body).  Never raises CgiFailure."""
    try:
        script, script_name, path_info = resolve(cgi_dir, head.path)
    except CgiFailure as failure:
        return failure.status, [], f"{failure.reason}\n".encode()
    env = dict(env, SCRIPT_NAME=script_name, PATH_INFO=path_info,
               SCRIPT_FILENAME=str(script))
    process = await asyncio.create_subprocess_exec(
        str(script), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env=env, cwd=str(script.parent),
        start_new_session=True,
    )
    try:
        output = await asyncio.wait_for(_collect(process, body, max_output), timeout)
    except (asyncio.TimeoutError, CgiFailure) as error:
        await _kill(process)
        reason = "script timed out" if isinstance(error, asyncio.TimeoutError) else str(error)
        return 500, [], f"{reason}\n".encode()
    except asyncio.CancelledError:  # the server stops: the script must not outlive it
        await _kill(process)
        raise
    if process.returncode != 0:
        return 500, [], f"script exited with status {process.returncode}\n".encode()
    try:
        return parse_output(output)
    except CgiFailure as failure:
        return failure.status, [], f"{failure.reason}\n".encode()


async def _kill(process: asyncio.subprocess.Process) -> None:
    """Kill the script and everything it started, and reap it, in bounded time.

    The stdlib loop reports a process's exit only once all its pipes are closed,
    and a stdout reader whose buffer is full has stopped reading (so it would
    never see the end): read stdout to its end first.  A descendant that left the
    process group can still hold a pipe: then stop waiting and close the pipes.
    """
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

    async def drain_and_wait() -> None:
        assert process.stdout
        while await process.stdout.read(65536):
            pass
        await process.wait()

    try:
        await asyncio.wait_for(drain_and_wait(), 2.0)
    except asyncio.TimeoutError:
        transport = getattr(process, "_transport", None)
        if transport is not None:
            transport.close()


async def _feed(stdin: asyncio.StreamWriter, body: bytes) -> None:
    try:
        if body:
            stdin.write(body)
            await stdin.drain()
        stdin.close()
    except (BrokenPipeError, ConnectionResetError, RuntimeError):
        pass  # the script exited without reading its input (uvloop raises RuntimeError)


async def _collect(process: asyncio.subprocess.Process, body: bytes, max_output: int) -> bytes:
    """The script's output.  Its input is written meanwhile, not first: a script may
    write more than a pipe holds before it reads its input (or never read it)."""
    assert process.stdin and process.stdout
    feeder = asyncio.ensure_future(_feed(process.stdin, body))
    try:
        chunks: list[bytes] = []
        size = 0
        while chunk := await process.stdout.read(65536):
            size += len(chunk)
            if size > max_output:
                raise CgiFailure(500, "script output too large")
            chunks.append(chunk)
    finally:
        if not feeder.done():  # its output is complete: what it has not read of its input is dropped
            feeder.cancel()
            process.stdin.transport.abort()
    await process.wait()
    return b"".join(chunks)
