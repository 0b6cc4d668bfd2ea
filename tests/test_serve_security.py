"""`tcpfp serve` as root on an internet-facing sensor: what a hostile client, or whoever
controls the unprivileged --user, must not be able to do.

Found by a security review, each through the real server on loopback:

- a worker of ``--workers N --user NAME`` that dies is replaced, although the
  parent is no longer root (its SO_REUSEPORT socket otherwise kept taking a
  share of the clients and answered none);
- a client that asks for a slow CGI script and resets does not free its
  connection slot while the script runs (scripts beyond --max-connections were
  a fork bomb for any client);
- a request body is kept only for a script, and only while the script needs it
  (with --cgi-dir, every kept-alive connection that had once sent a body held
  that MiB);
- a request head sent in small pieces costs time in proportion to its size,
  not to its size times the number of pieces;
- PATH_INFO never holds a ``.`` or ``..`` segment (Apache removes them before
  a script sees the path: scripts that open files by PATH_INFO rely on it);
- the access log is never created group- or world-writable, whatever the umask;
- a script inherits no descriptor the server inherited from whatever started it
  (uvloop runs scripts without closing the others);
- workers that share a stdout pipe never break a line longer than PIPE_BUF.

Every server is started and stopped by PID, every socket has a timeout, every
loop is bounded; traffic goes to loopback only.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import need_root
from servehelp import Served, exchange, free_port, paused, wait_port
from tcpfp_cli.logformat import LogLineError, compile_format

FORMAT = '%a "%r" %>s %b "%{User-Agent}i"'
GET = b"GET /ok HTTP/1.0\r\nUser-Agent: probe\r\n\r\n"


def status_of(answer: bytes) -> int | None:
    return int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else None


def write_script(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def _children(pid: int) -> list[int]:
    return [int(p) for task in Path(f"/proc/{pid}/task").glob("*/children") for p in task.read_text().split()]


def _ids(pid: int, key: str) -> list[str]:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(key + ":"))
    return line.split()[1:]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    return int(_ids(pid, "VmRSS")[0])


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _read_answer(sock: socket.socket) -> bytes:
    """One answer on a kept-alive connection, delimited by its Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data[:80]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head + b"\r\n\r\n" + body


# --------------------------------------------------------------------------- --workers --user


def test_a_worker_that_dies_under_user_is_replaced_and_serves(tmp_path):
    """The parent drops root after forking its workers, so a replacement worker starts
    unprivileged: it used to fail to open the root-owned log and to drop groups (EPERM),
    exit, and be restarted every second, while its listening socket, still open in the
    parent, took its share of the clients and never answered them."""
    need_root()
    server = Served(tmp_path, "--workers", "2", "--user", "nobody", log_format=FORMAT)
    try:
        deadline = time.monotonic() + 10
        while len(_children(server.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        first, survivor = _children(server.process.pid)
        os.kill(first, signal.SIGKILL)
        # The parent waits 1 s before it starts a new worker; wait until one is up and stays.
        deadline = time.monotonic() + 10
        stable = 0
        while stable < 20 and time.monotonic() < deadline:
            workers = _children(server.process.pid)
            stable = stable + 1 if len(workers) == 2 and first not in workers else 0
            time.sleep(0.1)
        replacement = next(p for p in _children(server.process.pid) if p != survivor)
        uid = _ids(replacement, "Uid")
        # Fresh source ports: the kernel spreads them over both workers' sockets.
        answers = [exchange("127.0.0.1", server.port, GET, timeout=2) for _ in range(24)]
        records = server.records(24)
    finally:
        server.stop()
    stderr = server.stderr_path.read_text()
    assert uid == ["65534"] * 4
    assert [status_of(a) for a in answers] == [200] * 24, stderr
    assert len(records) == 24 and {r["status"] for r in records} == {"200"}
    assert stderr.count("restarting it") == 1, stderr


# --------------------------------------------------------------------------- CGI


@pytest.fixture
def cgi_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "cgi"
    directory.mkdir()
    write_script(directory, "env.sh", "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nenv\n")
    write_script(directory, "nap.sh", "#!/bin/sh\nsleep 3\nprintf 'Content-Type: text/plain\\n\\nlate\\n'\n")
    write_script(directory, "drain.sh", "#!/bin/sh\ncat >/dev/null\nprintf 'Content-Type: text/plain\\n\\nread\\n'\n")
    return directory


def test_a_script_whose_client_reset_keeps_its_connection_slot(tmp_path, cgi_dir):
    """A client that asks for a slow script and resets at once used to free its slot while
    the script went on: with --max-connections 2, any number of scripts ran at once (a
    fork bomb at the rate of a client's connects).  Now a script counts as its connection
    until it ends; the clients beyond the limit get 503, and every request its line."""
    server = Served(tmp_path, "--cgi-dir", str(cgi_dir), "--max-connections", "2", log_format=FORMAT)
    running: list[int] = []
    statuses: list[int | None] = []
    try:
        for _ in range(5):
            before = len(_children(server.process.pid))
            with paused(server):  # the request waits at accept: a refused one is answered 503
                s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                s.sendall(b"GET /cgi-bin/nap.sh HTTP/1.0\r\nUser-Agent: leaver\r\n\r\n")
            # Until the server has either started the script or refused the connection.
            s.settimeout(0.05)
            answer = b""
            deadline = time.monotonic() + 5
            scripts = before
            while time.monotonic() < deadline and scripts == before and not answer:
                try:
                    answer = s.recv(65536)
                except socket.timeout:
                    pass
                scripts = len(_children(server.process.pid))
            running.append(scripts)
            statuses.append(status_of(answer))
            _reset(s)
        records = server.records(5)
    finally:
        server.stop()
    assert max(running) == 2, running
    assert statuses == [None, None, 503, 503, 503]
    assert sorted(r["status"] for r in records) == ["200", "200", "503", "503", "503"]


def test_request_bodies_are_not_kept_once_their_request_is_answered(tmp_path, cgi_dir):
    """With --cgi-dir, a body sent to any path was kept on the connection until its next
    body: forty kept-alive connections that had each sent 1 MiB held 40 MiB, and a client
    could hold a MiB per connection slot with one request.  Bodies of requests that are
    not for a script are discarded as they arrive; a script's is let go once it ran."""
    server = Served(tmp_path, "--cgi-dir", str(cgi_dir), "--keepalive-timeout", "30", log_format=FORMAT)
    body = b"b" * (1 << 20)
    kept: list[socket.socket] = []
    try:
        before = _rss_kib(server.process.pid)
        for k in range(40):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            kept.append(s)
            target = b"/cgi-bin/drain.sh" if k % 2 else b"/upload"
            s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (target, len(body)) + body)
            assert status_of(_read_answer(s)) == 200
        grown = _rss_kib(server.process.pid) - before
        records = server.records(40)
    finally:
        for s in kept:
            s.close()
        server.stop()
    assert grown < 16 << 10, f"the server grew by {grown >> 10} MiB"
    assert [r["status"] for r in records] == ["200"] * 40


@pytest.mark.parametrize("target", [
    "/cgi-bin/env.sh/../secret",
    "/cgi-bin/env.sh/%2e%2e/%2e%2e/etc/passwd",
    "/cgi-bin/env.sh/..%2f..%2fetc%2fpasswd",
    "/cgi-bin/env.sh/a/..",
    "/cgi-bin/env.sh/./x",
    "/cgi-bin/env.sh/a/%2E/b",
])
def test_path_info_with_a_dot_segment_is_refused(tmp_path, cgi_dir, target):
    """Apache removes ``.`` and ``..`` segments (also %-encoded ones) before it maps a path,
    so its scripts never see them in PATH_INFO; ours got ``/../../etc/passwd``.  RFC 3875
    4.1.5 lets a server refuse such values: 404, and the script does not run."""
    with Served(tmp_path, "--cgi-dir", str(cgi_dir), log_format=FORMAT) as server:
        answer = exchange("127.0.0.1", server.port, f"GET {target} HTTP/1.0\r\n\r\n".encode(), shut=False)
        records = server.records(1)
    assert status_of(answer) == 404 and b"PATH_INFO" not in answer
    assert [r["status"] for r in records] == ["404"]


def test_dots_inside_path_info_names_are_data(tmp_path, cgi_dir):
    with Served(tmp_path, "--cgi-dir", str(cgi_dir), log_format=FORMAT) as server:
        answer = exchange("127.0.0.1", server.port, b"GET /cgi-bin/env.sh/a..b/.x/..y HTTP/1.0\r\n\r\n",
                          shut=False)
    assert status_of(answer) == 200 and b"\nPATH_INFO=/a..b/.x/..y\n" in answer


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_script_inherits_no_descriptor_of_the_server(tmp_path, cgi_dir, loop):
    """Only the script's own stdin, stdout and stderr: not the listening socket, the log,
    another client's socket, nor a descriptor the server inherited from what started it
    (uvloop has no close_fds: such a pipe reached every script)."""
    pytest.importorskip(loop)
    write_script(cgi_dir, "fds.py", f"#!{sys.executable} -I\nimport os\n"
                 "print('Content-Type: text/plain\\n')\n"
                 "for fd in sorted(os.listdir('/proc/self/fd'), key=int):\n"
                 "    try:\n        print(fd, os.readlink('/proc/self/fd/' + fd))\n"
                 "    except OSError:\n        pass\n")
    read_end, write_end = os.pipe()
    try:
        inherited = os.readlink(f"/proc/self/fd/{write_end}")
        with Served(tmp_path, "--cgi-dir", str(cgi_dir), "--loop", loop, log_format=FORMAT,
                    pass_fds=(write_end,)) as server:
            os.close(write_end)
            write_end = -1
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as other:
                other.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")  # kept alive meanwhile
                _read_answer(other)
                answer = exchange("127.0.0.1", server.port, b"GET /cgi-bin/fds.py HTTP/1.0\r\n\r\n", shut=False)
            server_fds = {os.readlink(p) for p in Path(f"/proc/{server.process.pid}/fd").iterdir()}
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    assert status_of(answer) == 200
    held = dict(line.split(" ", 1) for line in answer.partition(b"\r\n\r\n")[2].decode().strip().splitlines())
    stdio = {held[fd] for fd in ("0", "1", "2") if fd in held}
    others = {target for fd, target in held.items() if fd not in ("0", "1", "2")}
    assert inherited not in held.values()
    assert str(server.log) not in held.values()
    # Whatever else is open (the interpreter's own, uvloop's copies of the stdio pipes)
    # is none of the server's sockets.
    assert not {t for t in others if t.startswith("socket:") and t not in stdio} & server_fds


# --------------------------------------------------------------------------- the log file


def test_the_log_is_created_writable_by_its_owner_only_whatever_the_umask(tmp_path):
    """Log lines are evidence: a log created 0666 under a service's umask 0 let any local
    user write lines of their own into it."""
    with Served(tmp_path, log_format=FORMAT, umask=0) as server:
        assert status_of(exchange("127.0.0.1", server.port, GET)) == 200
        server.records(1)
        mode = server.log.stat().st_mode & 0o777
    assert mode == 0o644


# --------------------------------------------------------------------------- slow heads


def test_a_head_sent_in_small_pieces_costs_no_more_than_its_size(tmp_path):
    """Each piece of an incomplete head used to copy and search the whole head received
    so far: 750 KiB of headers in 3,000 pieces of 256 bytes, 1 ms apart, cost the server
    2.5 s of CPU (0.2 s now), so one slow client could keep the event loop busy.  Now a
    piece without a line end is looked at alone.  (A bound on the server's own CPU
    seconds, not on wall-clock time, with a wide margin either way.)"""
    line = b"X-Pad: " + b"p" * 7993 + b"\r\n"  # 8002 bytes: under --max-line
    head = b"GET /slow HTTP/1.1\r\nHost: x\r\nUser-Agent: drip\r\n" + line * 96
    pieces = [head[k:k + 256] for k in range(0, len(head), 256)]
    with Served(tmp_path, "--request-timeout", "60", log_format=FORMAT) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            before = _cpu_seconds(server.process.pid)
            for piece in pieces:
                s.sendall(piece)
                time.sleep(0.001)  # so that the server reads the pieces one by one
            used = _cpu_seconds(server.process.pid) - before
            s.sendall(b"\r\n")
            answer = _read_answer(s)
        records = server.records(1)
    assert status_of(answer) == 200
    assert [(r["request"], r["status"]) for r in records] == [("GET /slow HTTP/1.1", "200")]
    assert used < 1.0, f"the server spent {used:.2f} s of CPU on one head of {len(head) >> 10} KiB"


# --------------------------------------------------------------------------- workers on stdout


def test_workers_on_a_stdout_pipe_never_break_a_long_line(tmp_path):
    """Any client can make a line longer than PIPE_BUF (8000 bytes of 0xff in the request
    line are 32000 escaped).  Two workers writing to one stdout pipe cut such lines at the
    pipe's page boundaries and put each other's lines inside them (a third of 240 lines
    were broken, the rest of a cut line starting a line of its own, whose text the client
    chose).  Now every line is whole."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tcpfp_cli", "serve", "--port", str(port), "--workers", "2",
         "--log-format", "combined"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    received: list[bytes] = []

    def read_slowly() -> None:  # a reader that lags, so that the pipe fills
        assert process.stdout is not None
        while chunk := os.read(process.stdout.fileno(), 3000):
            received.append(chunk)
            time.sleep(0.0005)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    request = b"GET /" + b"\xff" * 8000 + b" HTTP/1.0\r\nUser-Agent: " + b"\xff" * 8000 + b"\r\n\r\n"
    try:
        wait_port("127.0.0.1", port)
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: exchange("127.0.0.1", port, request), range(240)))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        reader.join(30)
    fmt = compile_format("combined")
    lines = b"".join(received).decode("ascii").splitlines()
    broken = []
    for line in lines:
        try:
            fmt.parse(line)
        except LogLineError:
            broken.append(line)
    assert all(status_of(a) == 200 for a in answers)
    assert len(lines) == 240 and not broken, f"{len(broken)} of {len(lines)} lines broken"
