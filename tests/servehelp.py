"""Start `tcpfp serve` as a real process for tests, and talk to it over real sockets.

Every server is started by PID and stopped by PID (SIGTERM, then SIGKILL after
a bound); every socket has a timeout.  Traffic goes to loopback only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tcpfp_cli.logformat import compile_format


def free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids += [p for child in task.read_text().split() for p in _tree(int(child))]
        except OSError:
            continue  # gone meanwhile
    return pids


def _holds(pid: int, path: Path) -> bool:
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:
            continue
    return False


@contextmanager
def paused(served: "Served"):
    """The server process stopped (SIGSTOP, by PID): clients queue, with what they send,
    in the accept queue, so the accept callback finds their requests waiting."""
    os.kill(served.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(served.process.pid, signal.SIGCONT)


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


class Served:
    """A running `tcpfp serve` with its log file."""

    def __init__(self, tmp: Path, *args: str, port: int | None = None, log_format: str = "tcpfp",
                 wait_host: str = "127.0.0.1", prefix: list[str] | None = None, **popen) -> None:
        self.port = port or free_port()
        self.log = tmp / f"access-{self.port}.log"
        self.log_format = compile_format(log_format)
        self.stderr_path = tmp / f"stderr-{self.port}.txt"
        argv = [*(prefix or []), sys.executable, "-m", "tcpfp_cli", "serve", "--log", str(self.log),
                "--log-format", log_format, *args]
        if "--listen" not in args:
            argv += ["--port", str(self.port)]
        self.stderr_file = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.stderr_file, **popen)
        try:
            wait_port(wait_host, self.port)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"server did not start: {self.stderr_path.read_text()}")
        self.lines_before = 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.stderr_file.close()
        return self.process.returncode

    def lines(self, count: int | None = None, timeout: float = 5.0) -> list[str]:
        """The log's lines, waiting (bounded) until there are at least ``count``.

        Without ``count``: once the log has not changed for 30 ms.  The server
        holds lines for up to 5 ms before it writes them, so the lines of requests
        already answered are then in the file.
        """
        deadline = time.monotonic() + timeout
        last, quiet_since = None, time.monotonic()
        while True:
            text = self.log.read_text(encoding="utf-8", errors="surrogateescape") if self.log.exists() else ""
            lines = text.splitlines()
            now = time.monotonic()
            if text != last:
                last, quiet_since = text, now
            if count is None and now - quiet_since >= 0.03:
                return lines
            if count is not None and len(lines) >= count or now > deadline:
                return lines
            time.sleep(0.01)

    def accepted(self) -> int:
        """How many established connections to its port the server process holds open.

        A connection the kernel completed but the server has not accepted yet is
        in no process's file table, so this counts what the server took.
        """
        inodes = set()
        for fd in Path(f"/proc/{self.process.pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == self.port and fields[3] == "01" and fields[9] in inodes:
                    count += 1
        return count

    def wait_accepted(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (held := self.accepted()) != count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the server holds {held} connections, not {count}")
            time.sleep(0.02)

    def wait_reopened(self, rotated: Path, timeout: float = 10.0) -> None:
        """After SIGHUP: wait until no process of the server holds ``rotated`` (the renamed log)."""
        deadline = time.monotonic() + timeout
        while any(_holds(pid, rotated) for pid in _tree(self.process.pid)):
            if time.monotonic() > deadline:
                raise AssertionError(f"the server still writes to {rotated}")
            time.sleep(0.02)

    def records(self, count: int | None = None) -> list[dict]:
        return [self.log_format.parse(line) for line in self.lines(count)]

    def __enter__(self) -> "Served":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def exchange(host: str, port: int, payload: bytes, *, timeout: float = 5.0,
             before_connect=None, shut: bool = True) -> bytes:
    """Send ``payload`` on a fresh connection and read until the server closes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        if before_connect:
            before_connect(s)
        s.connect((host, port))
        s.sendall(payload)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
