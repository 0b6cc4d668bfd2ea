"""`tcpfp serve` in operation: a log that fails, signals to --workers, clients that do not read,
a split empty line, and option values no server can run with.

Every server is started and stopped by PID, every socket has a timeout, every
loop is bounded; traffic goes to loopback only.  The full-disk test mounts a
64 KiB tmpfs of its own (root) and unmounts it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import need_root
from servehelp import Served, _tree, free_port, wait_port
from tcpfp_cli import server as serving


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    need_root()
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:  # lazily: a log file left open by a failed test must not keep the mount
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_a_full_disk_breaks_no_line_and_raises_nothing(small_disk, capsys):
    """The disk fills in the middle of a line: nothing is raised (no traceback per flush, no
    traceback at exit), one stderr line says so, and once there is room again the cut line
    is finished and every line is whole: none lost, none glued to another."""
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave one 4 KiB page for the log
        try:
            f.write(b"x" * (60 * 1024))
        except OSError:
            pass
    log = serving.AccessLog(str(small_disk / "access.log"))
    lines = [f"line {n:03d} " + "x" * 90 for n in range(120)]  # 12 KiB: the disk fills inside one

    async def scenario() -> None:
        for start in range(0, 100, 10):
            for line in lines[start : start + 10]:
                log.write(line)
            log.flush()  # the disk is full from the fourth batch on
        filler.unlink()  # room again
        for line in lines[100:]:
            log.write(line)
        log.flush()
        log.close()

    asyncio.run(scenario())
    assert (small_disk / "access.log").read_text().splitlines() == lines
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "No space left on device" in err[0] and "written again" in err[1], err


def test_a_log_reader_that_is_gone_gives_one_stderr_line_not_a_traceback_per_request(tmp_path):
    port = free_port()
    read, write = os.pipe()
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "tcpfp_cli", "serve", "--port", str(port), "--log-format", "common"],
            stdout=write, stderr=err)
    os.close(write)
    os.close(read)  # like `tcpfp serve | head -1` once head has exited
    try:
        wait_port("127.0.0.1", port)
        for n in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /%d HTTP/1.0\r\n\r\n" % n)
                assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(5)
    text = stderr.read_text()
    assert "Traceback" not in text and code == 0, text
    assert len(text.splitlines()) <= 2 and "Broken pipe" in text, text


# --------------------------------------------------------------------------- --workers and signals


def _stop_tree(pid: int) -> None:
    for p in reversed(_tree(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("trial", range(5))
def test_workers_stop_on_a_sigterm_sent_while_they_start(tmp_path, trial):
    """SIGTERM right after the parent forked its workers: a worker that got it before its
    event loop took over SIGTERM used to run the parent's handler instead, and live on."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tcpfp_cli", "serve", "--port", str(port), "--workers", "4",
         "--log", str(tmp_path / "access.log")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while len(_tree(process.pid)) < 5 and time.monotonic() < deadline:
        time.sleep(0.0005)
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(30) == 0  # bounded; generous for a loaded CI machine
    except subprocess.TimeoutExpired:
        _stop_tree(process.pid)
        process.wait(5)
        pytest.fail("the server did not stop on SIGTERM")


def test_workers_stop_on_a_sigterm_sent_while_a_dead_worker_is_replaced(tmp_path):
    server = Served(tmp_path, "--workers", "2")
    try:
        deadline = time.monotonic() + 10
        while len(_tree(server.process.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(_tree(server.process.pid)[1], signal.SIGKILL)
        time.sleep(0.3)  # the parent waits 1 s before it starts a new worker
        server.process.send_signal(signal.SIGTERM)
        try:
            assert server.process.wait(30) == 0
        except subprocess.TimeoutExpired:
            _stop_tree(server.process.pid)
            pytest.fail("the server started a worker after SIGTERM, and did not stop")
    finally:
        server.stop()


# --------------------------------------------------------------------------- clients that do not read


def _rss_mib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def test_a_client_that_pipelines_and_never_reads_is_bounded_and_cut_off(tmp_path):
    """Answers are ~30 times the size of these requests: without flow control the server
    buffered every answer (12 MB sent took it from 40 to 360 MiB), and close() waited for
    a client that reads nothing forever, holding its --max-connections slot."""
    server = Served(tmp_path, "--request-timeout", "1", "--keepalive-timeout", "1", log_format='"%r" %>s %I')
    try:
        before = _rss_mib(server.process.pid)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(2)
            s.connect(("127.0.0.1", server.port))
            chunk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
            sent, start = 0, time.monotonic()
            while sent < 8_000_000 and time.monotonic() - start < 15:
                try:
                    sent += s.send(chunk)
                except (socket.timeout, OSError):
                    break
            grown = _rss_mib(server.process.pid) - before
            assert grown < 50, f"{grown} MiB more after {sent} bytes of requests"
            deadline = time.monotonic() + 10
            while server.accepted() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.accepted() == 0, "the connection of a client that reads nothing is kept"
    finally:
        assert server.stop() == 0
    # One line per request, the unanswered ones included (they were logged as one line
    # holding thousands of requests); only the last, cut-off one may be partial.
    one = len(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    records = [server.log_format.parse(line) for line in server.log.read_text().splitlines()]
    assert len(records) > 2000 and len(records) <= sent // one + 1
    assert all((r["request"], int(r["bytes_in"])) == ("GET / HTTP/1.1", one) for r in records[:-1])
    assert int(records[-1]["bytes_in"]) <= one


# --------------------------------------------------------------------------- an empty line split in two


def test_an_empty_lines_cr_and_lf_in_separate_segments_are_skipped(tmp_path):
    server = Served(tmp_path, log_format='"%r" %>s')
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for part in (b"\r", b"\nGET /after-empty-line HTTP/1.0\r\n\r\n"):
                s.sendall(part)
                time.sleep(0.2)
            assert s.recv(100).startswith(b"HTTP/1.1 200 ")
        assert server.lines(1) == ['"GET /after-empty-line HTTP/1.0" 200']
    finally:
        server.stop()


# --------------------------------------------------------------------------- option values


@pytest.mark.parametrize("args, named", [
    (["--port", "70000"], "--port 70000"),  # getaddrinfo took it as port 4464
    (["--port", "0"], "--port 0"),  # --listen :0 is refused too
    (["--max-line", "0"], "--max-line"),  # every request 414
    (["--max-headers", "-1"], "--max-headers"),  # every request 400
    (["--max-connections", "0"], "--max-connections"),  # every request 503
    (["--max-connections", "2", "--workers", "3"], "--max-connections 2"),  # 3 would be let in
    (["--request-timeout", "nan"], "--request-timeout"),  # a traceback per connection
    (["--keepalive-timeout", "-1"], "--keepalive-timeout"),
    (["--cgi-timeout", "0"], "--cgi-timeout"),
])
def test_option_values_no_server_can_run_with_are_one_line_and_exit_2(tmp_path, args, named):
    argv = [sys.executable, "-m", "tcpfp_cli", "serve", "--log", str(tmp_path / "access.log"), *args]
    if "--port" not in args:
        argv += ["--port", str(free_port())]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args}: the server started")
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and named in done.stderr, done.stderr
