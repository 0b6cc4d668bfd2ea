"""Apache is the oracle for log escaping: we read its lines, and we write the same lines.

Debian's apache2 runs on 127.0.0.1 with a minimal configuration and a
combined-like LogFormat plus one more header.  We send it hostile request
lines and header values over raw sockets (quotes, backslashes, literal
``\\x41`` text, tabs, control bytes, bytes >= 0x80, percent signs), then:

(a) ``compile_format(...).parse`` reads every line Apache wrote back to the
    values we sent;
(b) ``write`` of the AccessRecord describing each request gives Apache's line
    character for character (the time is masked; %b is copied from Apache,
    since the body sizes are Apache's own pages).

``HttpProtocolOptions Unsafe`` makes Apache accept (and log) the control
bytes and high bytes; what it still rejects is answered 400 and logged too.
Apache strips the whitespace around header values and stops a request line
at a NUL (C strings), so the expected values say so where it matters.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from tcpfp_cli.fields import Observation
from tcpfp_cli.logformat import AccessRecord, compile_format

from conftest import need, need_tool
from servehelp import pid_alive

LOG_FORMAT = '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i" "%{X-Test}i"'


class Case(NamedTuple):
    request_line: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    status: int  # what Apache answers: 200 for /index.html, 404 missing, 400 rejected
    logged_request: bytes | None = None  # when Apache logs less than the line sent


CASES = (
    Case(b'GET /index.html?q="quoted"\\back\\slash HTTP/1.0',
         ((b"User-Agent", b'x"y\\z\ttab \x01 \xe9\xff end'), (b"X-Test", b'100% "q" %s%n')), 200),
    Case(b"GET /index.html?4=\\x41\\\\n%n%s%% HTTP/1.0",
         ((b"User-Agent", b'\\x41 \\" \\\\ \x80'), (b"X-Test", b"a\x1fb c")), 200),
    Case(b"GET /index.html?empty-agent HTTP/1.0",
         ((b"User-Agent", b""), (b"X-Test", b"a\x08b\x1b[31m\x7fz")), 200),
    Case(b"POST /index.html?7 HTTP/1.1",
         ((b"Host", b"localhost"), (b"Content-Length", b"0"), (b"X-Test", b"\xff\xfe"),
          (b"Referer", b"http://x/\"<'>")), 200),
    Case(b"GET /index.html?spaces HTTP/1.0",
         ((b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64) 100% \xc3\xa9"), (b"X-Test", b"  padded  ")), 200),
    Case(b'GET /missing"file HTTP/1.1', ((b"Host", b"localhost"),), 404),
    Case(b"GET /\x01\x7f\x80\xfe HTTP/1.0", (), 400),
    Case(b'junk"\\\xc3\xa9', (), 400),
    Case(bytes.fromhex("160301020001000001fc0303"), (), 400, logged_request=bytes.fromhex("16030102")),
)


def expected_request(case: Case) -> bytes:
    return case.request_line if case.logged_request is None else case.logged_request


def header(case: Case, name: bytes) -> bytes | None:
    """The value Apache sees: the last one sent, without surrounding whitespace."""
    values = [v for n, v in case.headers if n.lower() == name.lower()]
    return values[-1].strip(b" \t") if values else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and s.recv(65536):  # read the answer to its end
            pass


def wait_for_port(port: int, proc_ok, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if not proc_ok():
                break
            time.sleep(0.05)
    raise RuntimeError(f"apache2 did not listen on port {port}")




@pytest.fixture(scope="module")
def apache_log():
    apache = need_tool("apache2")
    need(os.path.exists("/usr/lib/apache2/modules/mod_mpm_event.so"), "needs Debian's apache2 modules")
    root = Path(tempfile.mkdtemp(prefix="tcpfp-apache-", dir="/tmp"))
    root.chmod(0o755)  # the workers run as www-data and must read the DocumentRoot
    (root / "docs").mkdir(mode=0o755)
    (root / "docs" / "index.html").write_text("hi\n")
    (root / "docs" / "index.html").chmod(0o644)
    port = free_port()
    escaped = LOG_FORMAT.replace('"', '\\"')
    conf = root / "httpd.conf"
    conf.write_text(
        f"ServerRoot {root}\n"
        "LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so\n"
        "LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so\n"
        "ServerName 127.0.0.1\n"
        f"Listen 127.0.0.1:{port}\n"
        "User www-data\nGroup www-data\n"
        f"PidFile {root}/httpd.pid\n"
        f"ErrorLog {root}/error.log\n"
        f"Mutex file:{root} default\n"
        f"DocumentRoot {root}/docs\n"
        "HttpProtocolOptions Unsafe\n"
        "HostnameLookups Off\n"
        f'LogFormat "{escaped}" oracle\n'
        f"CustomLog {root}/access.log oracle\n"
    )
    pid = None
    try:
        subprocess.run([apache, "-f", str(conf), "-k", "start"], check=True, timeout=10,
                       capture_output=True)
        pidfile = root / "httpd.pid"
        deadline = time.monotonic() + 5
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(pidfile.read_text().split()[0])
        wait_for_port(port, lambda: pid_alive(pid))
        for case in CASES:
            request = case.request_line + b"\r\n"
            request += b"".join(name + b": " + value + b"\r\n" for name, value in case.headers)
            send(port, request + b"\r\n")
    finally:
        subprocess.run([apache, "-f", str(conf), "-k", "stop"], timeout=10, capture_output=True)
        if pid is not None:
            deadline = time.monotonic() + 10
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        log = (root / "access.log").read_bytes() if (root / "access.log").exists() else b""
        errors = (root / "error.log").read_text(errors="replace") if (root / "error.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
    lines = log.decode("ascii").splitlines()  # Apache escapes everything outside ASCII
    assert len(lines) == len(CASES), errors
    return lines


def by_request(lines: list[str]) -> dict[str, tuple[str, dict]]:
    fmt = compile_format(LOG_FORMAT)
    out = {}
    for line in lines:
        parsed = fmt.parse(line)
        out[parsed["request"]] = (line, parsed)
    return out


def test_we_parse_apache_lines_back_to_what_was_sent(apache_log: list[str]) -> None:
    parsed = by_request(apache_log)
    assert set(parsed) == {expected_request(c).decode("latin-1") for c in CASES}
    for case in CASES:
        line, values = parsed[expected_request(case).decode("latin-1")]
        assert values["remote_host"] == "127.0.0.1"
        assert values["status"] == str(case.status), line
        for column, name in (("header:user-agent", b"User-Agent"), ("header:x-test", b"X-Test"),
                             ("header:referer", b"Referer")):
            sent = header(case, name) if case.status != 400 else None  # a 400 stops before the headers
            assert values[column] == (None if sent is None else sent.decode("latin-1")), line


def test_we_write_the_lines_apache_writes(apache_log: list[str]) -> None:
    parsed = by_request(apache_log)
    fmt = compile_format(LOG_FORMAT)
    mask = re.compile(r"\[[^\]]*\]")
    for case in CASES:
        apache_line, values = parsed[expected_request(case).decode("latin-1")]
        headers = {} if case.status == 400 else {
            n.decode().lower(): v for n in (b"User-Agent", b"X-Test", b"Referer")
            if (v := header(case, n)) is not None
        }
        record = AccessRecord(
            remote_addr="127.0.0.1", remote_port=40000, local_addr="127.0.0.1", local_port=80,
            start_time=time.time(), request_line=expected_request(case),
            method=None, path=None, query=None, protocol=None,
            status=case.status, bytes_sent=int(values["bytes"] or 0), duration_us=0, keepalive=0,
            request_headers=headers, response_headers={}, env={}, observation=Observation(),
        )
        ours = fmt.write(record)
        assert mask.sub("[T]", ours, count=1) == mask.sub("[T]", apache_line, count=1)
