"""Run Debian's apache2 as a test oracle: on 127.0.0.1, a free port, a temp dir.

``Apache`` is a context manager.  It writes a minimal configuration (event
MPM, ``authz_core``, a DocumentRoot with one ``index.html``, one LogFormat
and its CustomLog), starts ``apache2 -k start``, waits for the port, and on
exit runs ``-k stop`` and waits (bounded) for the parent PID to go, killing
that PID if it does not.  The temp dir is removed afterwards.

``protocol_options=None`` leaves ``HttpProtocolOptions`` at Apache's default
(Strict); pass ``"Unsafe"`` to accept control bytes and high bytes.
``extra_config`` is appended to the configuration, with ``{docs}`` standing
for the DocumentRoot; ``modules`` names more of Debian's modules to load.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import need, need_tool
from servehelp import pid_alive

MODULES = Path("/usr/lib/apache2/modules")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




class Apache:
    """A running apache2 logging with ``log_format``; ``lines()`` reads its access log."""

    def __init__(self, log_format: str, *, protocol_options: str | None = None,
                 modules: tuple[str, ...] = (), extra_config: str = "") -> None:
        self.binary = need_tool("apache2")
        need((MODULES / "mod_mpm_event.so").exists(), "needs Debian's apache2 modules")
        self.log_format = log_format
        self.protocol_options = protocol_options
        self.modules = modules
        self.extra_config = extra_config
        self.root = Path(tempfile.mkdtemp(prefix="tcpfp-apache-", dir="/tmp"))
        self.docs = self.root / "docs"
        self.port = free_port()
        self.pid: int | None = None
        self.conf = self.root / "httpd.conf"
        self.log = self.root / "access.log"

    def _config(self) -> str:
        escaped = self.log_format.replace("\\", "\\\\").replace('"', '\\"')
        loads = "".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so\n"
                        for m in ("mpm_event", "authz_core", *self.modules))
        return (
            f"ServerRoot {self.root}\n{loads}"
            "ServerName 127.0.0.1\n"
            f"Listen 127.0.0.1:{self.port}\n"
            "User www-data\nGroup www-data\n"
            f"PidFile {self.root}/httpd.pid\n"
            f"ErrorLog {self.root}/error.log\n"
            f"Mutex file:{self.root} default\n"
            f"DocumentRoot {self.docs}\n"
            + (f"HttpProtocolOptions {self.protocol_options}\n" if self.protocol_options else "")
            + "HostnameLookups Off\n"
            f'LogFormat "{escaped}" oracle\n'
            f"CustomLog {self.log} oracle\n"
            + self.extra_config.replace("{docs}", str(self.docs))
        )

    def start(self) -> "Apache":
        self.root.chmod(0o755)  # the workers run as www-data and must read the DocumentRoot
        self.docs.mkdir(mode=0o755)
        (self.docs / "index.html").write_text("hi\n")
        (self.docs / "index.html").chmod(0o644)
        self.conf.write_text(self._config())
        started = subprocess.run([self.binary, "-f", str(self.conf), "-k", "start"], timeout=10,
                                 capture_output=True, text=True)
        if started.returncode != 0:
            raise RuntimeError(f"apache2 did not start: {started.stderr}{self.errors()}")
        pidfile = self.root / "httpd.pid"
        deadline = time.monotonic() + 5
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.pid = int(pidfile.read_text().split()[0])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if not pid_alive(self.pid):
                    break
                time.sleep(0.05)
        raise RuntimeError(f"apache2 did not listen on port {self.port}: {self.errors()}")

    def stop(self) -> None:
        try:
            subprocess.run([self.binary, "-f", str(self.conf), "-k", "stop"], timeout=10,
                           capture_output=True)
        finally:
            if self.pid is not None:
                deadline = time.monotonic() + 10
                while pid_alive(self.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if pid_alive(self.pid):
                    os.kill(self.pid, signal.SIGKILL)

    def lines(self, count: int | None = None, timeout: float = 5.0) -> list[str]:
        """The access log's lines (ASCII: Apache escapes the rest), waiting for ``count``."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log.read_bytes().decode("ascii") if self.log.exists() else ""
            lines = text.splitlines()
            if count is None or len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def errors(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> "Apache":
        try:
            return self.start()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
