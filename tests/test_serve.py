"""`tcpfp serve` over loopback with real clients: what it logs, answers and refuses.

Each test starts the real server process, talks to it over real sockets (and
curl), and reads its access log back through the same LogFormat.  The SYN
fields it logs must be what the client's kernel sent: we set IP_TTL,
TCP_MAXSEG and SO_RCVBUF on the client before connect and compare.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from servehelp import Served, exchange, free_port, pid_alive
from conftest import need_root, need_tool
from tcpfp_cli import server as serving
from tcpfp_cli.fields import FIELDS
from tcpfp_cli.hextext import parse_hex
from tcpfp_cli.syn import parse_syn

GET = b"GET /probe?x=1 HTTP/1.0\r\nUser-Agent: tester\r\n\r\n"
# Every directive the tests read, and every field of the table (the hex dumps included).
FORMAT = '%h %a %A %p %l %u %t "%r" %>s %b %k %D "%{User-Agent}i" ' + " ".join(
    f'"%{{{f.name}}}g"' for f in FIELDS)


@pytest.fixture
def served(tmp_path):
    server = Served(tmp_path, "--listen", "127.0.0.1:0".replace(":0", f":{(port := free_port())}"),
                    "--listen", f"[::1]:{port}", "--request-timeout", "1", port=port, log_format=FORMAT)
    yield server
    server.stop()


def _client_opts(family, ttl, mss, rcvbuf):
    def apply(s):
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    return apply


@pytest.mark.parametrize("host, family", [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)])
@pytest.mark.parametrize("ttl, mss, rcvbuf", [(33, 1200, 4096), (99, 536, 65536), (200, 1400, 2048)])
def test_logged_syn_fields_are_what_the_client_kernel_sent(served, host, family, ttl, mss, rcvbuf):
    answer = exchange(host, served.port, GET, before_connect=_client_opts(family, ttl, mss, rcvbuf))
    assert answer.startswith(b"HTTP/1.1 200 OK")
    (record,) = served.records(1)
    raw = parse_hex(record["FINGERPRINT_SAVED_SYN"])
    syn = parse_syn(raw)
    assert syn.ip_version == (4 if family == socket.AF_INET else 6)
    assert int(record["FINGERPRINT_IP_TTL"]) == syn.ttl == ttl
    assert int(record["FINGERPRINT_TCP_MSS"]) == syn.mss == mss
    # Window and scale read straight from the saved bytes (RFC 9293, RFC 7323), not by tcpfp:
    # Linux sends no IP options or extension headers, and its options are MSS, SACK-permitted,
    # timestamps, NOP and window scale (3, 3, shift) last.
    tcp = 20 if family == socket.AF_INET else 40
    assert raw[9 if family == socket.AF_INET else 6] == socket.IPPROTO_TCP
    assert raw[tcp + 12] >> 4 == 10 and raw[tcp + 37:tcp + 39] == b"\x03\x03"
    assert int(record["FINGERPRINT_TCP_WSIZE"]) == int.from_bytes(raw[tcp + 14:tcp + 16], "big") == syn.window
    assert int(record["FINGERPRINT_TCP_WSCALE"]) == raw[tcp + 39] == syn.window_scale
    assert record["FINGERPRINT_TCP_OPTIONS"] == syn.options_text == "2,4,8,1,3"
    assert record["FINGERPRINT_P0F"] == syn.p0f
    # The kernel doubles SO_RCVBUF and never offers more window than that buffer.
    assert 0 < syn.window <= 2 * rcvbuf
    assert record["remote_addr"] == record["remote_host"] == host
    assert record["request"] == "GET /probe?x=1 HTTP/1.0" and record["status"] == "200"
    assert int(record["FINGERPRINT_TCP_RTT"]) > 0


def test_curl_ipv4_and_ipv6_and_the_body_shows_the_clients_own_syn(served):
    curl = need_tool("curl")
    for url in (f"http://127.0.0.1:{served.port}/", f"http://[::1]:{served.port}/"):
        done = subprocess.run([curl, "-s", "--max-time", "5", url], capture_output=True, text=True, timeout=10)
        body = dict(line.split(" ", 1) for line in done.stdout.splitlines())
        assert body["FINGERPRINT_TCP_OPTIONS"] == "2,4,8,1,3"
    records = served.records(2)
    assert [r["FINGERPRINT_IP_VERSION"] for r in records] == ["4", "6"]
    assert all(r["header:user-agent"].startswith("curl/") for r in records)


def test_json_body_when_accept_asks_for_it(served):
    answer = exchange("127.0.0.1", served.port,
                      b"GET / HTTP/1.0\r\nAccept: application/json\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    values = json.loads(body)
    assert values["FINGERPRINT_TCP_OPTIONS"] == "2,4,8,1,3" and values["FINGERPRINT_IP_VERSION"] == 4


def test_keep_alive_requests_reuse_the_connections_fingerprint(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        for _ in range(3):
            s.sendall(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(65536)
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            rest = head.split(b"\r\n\r\n", 1)[1]
            while len(rest) < length:
                rest += s.recv(65536)
        s.sendall(b"HEAD /k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        tail = b""
        while chunk := s.recv(65536):
            tail += chunk
    assert tail.startswith(b"HTTP/1.1 200") and tail.endswith(b"\r\n\r\n")  # HEAD: no body
    records = served.records(4)
    assert [r["keepalive"] for r in records] == ["0", "1", "2", "3"]
    assert len({r["FINGERPRINT_SAVED_SYN"] for r in records}) == 1
    assert len({r["FINGERPRINT_ACCEPT_TIME"] for r in records}) == 1
    assert records[-1]["bytes"] is None  # HEAD sent no body: %b is '-'


TLS_CLIENT_HELLO = bytes.fromhex(
    "160301012c010001280303" + "ab" * 32 + "00" + "0004130113020100")


@pytest.mark.parametrize("payload, status, logged", [
    (b"\x00\x01\x02junk\xff\xfe", 400, "\x00\x01\x02junk\xff\xfe"),
    (TLS_CLIENT_HELLO, 400, TLS_CLIENT_HELLO.decode("latin-1")),  # no newline in it: every byte
    (b"\n", 400, ""),
    (b"GET /\n", 400, "GET /"),
    # cut where Apache cuts it: --max-line 8190 plus the one byte more Apache reads (its NUL)
    (b"GET /" + b"a" * 9000 + b" HTTP/1.0\r\n\r\n", 414, "GET /" + "a" * (8191 - 5)),
    (b"GET / HTTP/1.0\r\nX: " + b"b" * 9000 + b"\r\n\r\n", 400, "GET / HTTP/1.0"),
    (b"GET / HTTP/1.0\r\n" + b"X: y\r\n" * 101 + b"\r\n", 400, "GET / HTTP/1.0"),
    (b'GET /"quoted"\\path HTTP/1.0\r\n\r\n', 200, 'GET /"quoted"\\path HTTP/1.0'),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "GET / HTTP/1.1"),  # 1.1 without Host
], ids=["binary", "tls-client-hello", "newline", "http09", "long-line", "long-header", "many-headers",
        "quotes-and-backslashes", "http11-without-host"])
def test_malformed_input_gets_its_status_and_exactly_one_line(served, payload, status, logged):
    answer = exchange("127.0.0.1", served.port, payload)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    (record,) = served.records(1)
    assert record["status"] == str(status)
    assert (record["request"] or "") == logged
    assert record["FINGERPRINT_TCP_OPTIONS"] == "2,4,8,1,3"  # the fingerprint is still there
    line = served.lines(1)[0]
    assert line.isprintable() and line.isascii()
    if payload.startswith(b"\x00"):
        assert '"\\x00\\x01\\x02junk\\xff\\xfe"' in line  # escaped as Apache escapes


def test_partial_request_then_close_and_slowloris_are_logged(served):
    exchange("127.0.0.1", served.port, b"GET /half HTTP/1.0\r\nHost: x")  # client closes early
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"GET /slow HTTP/1.1\r\n")
        start = time.monotonic()
        answer = b""
        while chunk := s.recv(4096):  # the server gives up after --request-timeout 1
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in answer
        assert time.monotonic() - start < 4
    records = served.records(2)
    assert sorted((r["request"], r["status"]) for r in records) == [
        ("GET /half HTTP/1.0", "400"), ("GET /slow HTTP/1.1", "408")]


def test_fixed_body_and_switches_for_saved_syn_and_tcp_info(tmp_path):
    page = tmp_path / "page.html"
    page.write_bytes(b"<p>quiet</p>")
    with Served(tmp_path, "--body", str(page), "--no-saved-syn", "--no-tcp-info", log_format=FORMAT) as server:
        answer = exchange("127.0.0.1", server.port, GET)
        (record,) = server.records(1)
    assert answer.endswith(b"<p>quiet</p>")
    assert record["FINGERPRINT_IP_TTL"] is None and record["FINGERPRINT_TCP_RTT"] is None
    assert record["FINGERPRINT_ACCEPT_TIME"] is not None


def test_request_time_tcp_info_fields(tmp_path):
    fmt = '"%r" %{FINGERPRINT_REQ_RTT}g %{FINGERPRINT_REQ_MIN_RTT}g %{FINGERPRINT_REQ_RCV_MSS}g %{FINGERPRINT_REQ_TOTAL_RETRANS}g'
    with Served(tmp_path, log_format=fmt) as server:
        exchange("127.0.0.1", server.port, GET)
        (record,) = server.records(1)
    assert int(record["FINGERPRINT_REQ_RTT"]) > 0 and int(record["FINGERPRINT_REQ_MIN_RTT"]) > 0
    assert int(record["FINGERPRINT_REQ_RCV_MSS"]) > 0 and record["FINGERPRINT_REQ_TOTAL_RETRANS"] == "0"


def test_sighup_reopens_the_log_and_sigterm_flushes_and_exits_0(tmp_path):
    server = Served(tmp_path)
    try:
        exchange("127.0.0.1", server.port, GET)
        server.lines(1)
        rotated = tmp_path / "rotated.log"
        server.log.rename(rotated)
        server.process.send_signal(signal.SIGHUP)
        server.wait_reopened(rotated)
        exchange("127.0.0.1", server.port, GET)
        exchange("127.0.0.1", server.port, GET)
    finally:
        code = server.stop()
    assert code == 0
    assert len(rotated.read_text().splitlines()) == 1
    assert len(server.log.read_text().splitlines()) == 2


@pytest.mark.parametrize("args, message", [
    (["--log-format", "%{FINGERPRINT_NOPE}g"], "FINGERPRINT_NOPE"),
    (["--cgi-dir", "/nonexistent/dir"], "not a directory"),
    (["--listen", "nonsense"], "ADDR:PORT"),
])
def test_start_up_errors_are_one_line_and_exit_2(tmp_path, args, message):
    import sys

    done = subprocess.run([sys.executable, "-m", "tcpfp_cli", "serve", "--port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args, where", [
    (["--listen", "127.0.0.1:{port}"], "127.0.0.1:{port}"),
    (["--listen", "[::1]:{port}"], "[::1]:{port}"),
    (["--port", "{port}"], "[::]:{port}"),  # the default listener, written as --listen takes it
])
def test_port_in_use_is_a_start_up_error(served, args, where):
    import sys

    done = subprocess.run([sys.executable, "-m", "tcpfp_cli", "serve", *(a.format(port=served.port) for a in args)],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert done.stderr == f"tcpfp: cannot listen on {where.format(port=served.port)}: address already in use\n"


def _drop_net_bind_service() -> None:
    """Remove CAP_NET_BIND_SERVICE (bit 10) from this process: root that may not bind below 1024."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # two (effective, permitted, inheritable) triples
    if libc.capget(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    data[0] &= ~(1 << 10)
    data[1] &= ~(1 << 10)
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def test_port_80_without_the_right_to_bind_it(tmp_path):
    """A forked child gives up CAP_NET_BIND_SERVICE and runs the CLI in-process."""
    need_root()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.dup2(write_end, 2)
            import sys

            sys.stderr = os.fdopen(2, "w", buffering=1)
            _drop_net_bind_service()
            from tcpfp_cli.cli import app

            app(["serve", "--listen", "127.0.0.1:80"], prog_name="tcpfp")
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 98
        except BaseException as error:  # report, so the parent's assertion shows it
            os.write(2, repr(error).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as stream:
        stderr = stream.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2, stderr
    assert "permission denied" in stderr and len(stderr.strip().splitlines()) == 1


def test_user_drops_root_after_binding(tmp_path):
    need_root()
    os.chmod(tmp_path, 0o777)
    with Served(tmp_path, "--user", "nobody") as server:
        status = open(f"/proc/{server.process.pid}/status").read()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == ["65534"] * 4
        assert exchange("127.0.0.1", server.port, GET).startswith(b"HTTP/1.1 200")
    assert not pid_alive(server.process.pid)


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_user_refuses_a_log_path_that_is_not_a_regular_file(tmp_path, workers, kind):
    """With --user the log's directory may be the user's; root opens the log at each start,
    so a link the user put there could make root append to any file, and a FIFO would hold
    the start until someone reads it.  Both are refused, at once."""
    need_root()
    target = tmp_path / "precious"
    target.write_bytes(b"keep me\n")
    log = tmp_path / "access.log"
    if kind == "symlink":
        log.symlink_to(target)
        reason = "it is a symbolic link, which --user refuses (the user could point it at any file root writes)"
    else:
        os.mkfifo(log)
        reason = "--user needs a regular file there"
    process = subprocess.Popen([sys.executable, "-m", "tcpfp_cli", "serve", "--port", str(free_port()),
                                "--log", str(log), "--user", "nobody", "--workers", workers],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # it started serving or hangs: stop it and its workers (its own group)
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 2
    assert stderr.splitlines() == [f"tcpfp: cannot open log {log}: {reason}"]
    assert target.read_bytes() == b"keep me\n"


def test_workers_share_the_port_and_the_log_without_losing_or_mixing_lines(tmp_path):
    """--workers 2: two processes accept on the same port (SO_REUSEPORT) and append whole
    lines to one log; SIGHUP and SIGTERM reach both through the parent."""
    server = Served(tmp_path, "--workers", "2", log_format=FORMAT)
    try:
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(server.process.pid)],
                                  capture_output=True, text=True, timeout=10).stdout.split()
        assert len(children) == 2
        for i in range(150):
            assert exchange("127.0.0.1", server.port, f"GET /w{i} HTTP/1.0\r\n\r\n".encode()).startswith(
                b"HTTP/1.1 200")
        server.lines(150)
        rotated = tmp_path / "rotated.log"
        server.log.rename(rotated)
        server.process.send_signal(signal.SIGHUP)
        server.wait_reopened(rotated)
        for i in range(150, 200):
            exchange("127.0.0.1", server.port, f"GET /w{i} HTTP/1.0\r\n\r\n".encode())
    finally:
        code = server.stop()
    assert code == 0
    assert not any(pid_alive(int(pid)) for pid in children)
    fmt = server.log_format
    before = [fmt.parse(line)["request"] for line in rotated.read_text().splitlines()]
    after = [fmt.parse(line)["request"] for line in server.log.read_text().splitlines()]
    assert sorted(before + after) == sorted(f"GET /w{i} HTTP/1.0" for i in range(200))
    assert len(after) == 50


def test_response_headers_and_environment_variables_in_the_log(tmp_path):
    """%{Header}o logs what the server answered; %{VAR}e logs the FINGERPRINT_* variables
    a CGI script would see (with --env-vars), like the module's TCPFingerprintEnvVars."""
    fmt = '"%r" %{Content-Type}o %{Connection}o %{FINGERPRINT_IP_TTL}e %{FINGERPRINT_IP_TTL}g'
    with Served(tmp_path, "--env-vars", log_format=fmt) as server:
        exchange("127.0.0.1", server.port, b"GET / HTTP/1.0\r\nAccept: application/json\r\n\r\n")
        (line,) = server.lines(1)
    assert line.endswith(" application/json close 64 64")
    with Served(tmp_path, log_format=fmt) as server:  # without --env-vars, no such variable
        exchange("127.0.0.1", server.port, GET)
        (line,) = server.lines(1)
    assert line.endswith(" text/plain; charset=utf-8 close - 64")


def test_without_ipv6_the_default_listener_falls_back_to_ipv4(tmp_path):
    """In a namespace with IPv6 switched off, `--port P` still serves IPv4 clients."""
    need_root()
    name = f"tcpfp-noipv6-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True, timeout=10)
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                       check=True, timeout=10)
        subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1"],
                       check=True, timeout=10)
        import sys

        script = (
            "import socket,subprocess,sys,time\n"
            "p=subprocess.Popen([sys.executable,'-m','tcpfp_cli','serve','--port','8080','--log',sys.argv[1]],"
            "stderr=open(sys.argv[2],'wb'))\n"
            "try:\n"
            "  for _ in range(100):\n"
            "    try:\n"
            "      s=socket.create_connection(('127.0.0.1',8080),timeout=1); break\n"
            "    except OSError: time.sleep(0.05)\n"
            "  s.sendall(b'GET /v4 HTTP/1.0\\r\\n\\r\\n'); print(s.recv(100)[:15].decode()); s.close()\n"
            "finally:\n"
            "  p.terminate(); p.wait(10)\n"
        )
        log, err = tmp_path / "access.log", tmp_path / "stderr.txt"
        done = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", script, str(log), str(err)],
                              capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == "HTTP/1.1 200 OK", done.stderr + err.read_text()
        assert '"GET /v4 HTTP/1.0" 200' in log.read_text()
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)


def test_a_signature_file_with_an_error_stops_serve_at_start_up(tmp_path):
    import sys

    bad = tmp_path / "mine.fp"
    bad.write_text("classes = unix\n[tcp:request]\nlabel = s:unix:Mine:1\nsig = 4:64:0:*:nonsense,*:mss:df:0\n")
    done = subprocess.run([sys.executable, "-m", "tcpfp_cli", "serve", "--port", str(free_port()),
                           "--signatures", str(bad)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert str(bad) in line and "line 4" in line


def _read_until_closed(s: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed (monotonic)."""
    s.settimeout(limit)
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    return data, time.monotonic()


def test_keepalive_timeout_follows_each_request_and_idle_connections_close(tmp_path):
    """One timer per connection: each request moves the deadline on (the connection
    outlives several timeouts while it is used), an idle kept-alive connection
    closes after --keepalive-timeout even though --request-timeout is longer, and
    a head that never completes is cut off after --request-timeout."""
    port = free_port()
    server = Served(tmp_path, "--listen", f"127.0.0.1:{port}", "--request-timeout", "2",
                    "--keepalive-timeout", "0.5", port=port, log_format='%>s "%r" %k')
    try:
        request = b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            start = time.monotonic()
            for _ in range(5):  # 5 requests 0.35 s apart: 1.75 s, more than three keep-alive timeouts
                s.sendall(request)
                answer = s.recv(4096)
                assert answer.startswith(b"HTTP/1.1 200 "), answer
                time.sleep(0.35)
            assert time.monotonic() - start > 1.75
            s.sendall(request)
            last = time.monotonic()
            answer, closed = _read_until_closed(s, 5)
            assert answer.startswith(b"HTTP/1.1 200 ")
            # Closed by the 0.5 s keep-alive timeout, not the 2 s request timeout.
            assert 0.4 < closed - last < 1.6, closed - last
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /stalls HTTP/1.1\r\n")  # never finished: the request timeout applies
            start = time.monotonic()
            answer, closed = _read_until_closed(s, 6)
            assert answer.startswith(b"HTTP/1.1 408 ")
            assert 1.8 < closed - start < 4, closed - start
        records = server.records(7)
        assert [(r["status"], r["request"]) for r in records] == (
            [("200", "GET /again HTTP/1.1")] * 6 + [("408", "GET /stalls HTTP/1.1")])
    finally:
        server.stop()


def test_access_log_writes_at_once_when_quiet_and_in_batches_when_busy(tmp_path, monkeypatch):
    """A quiet server's line is in the file at the end of the loop turn that made it;
    lines that follow within FLUSH_DELAY wait and go out together; close() writes
    whatever waits."""
    monkeypatch.setattr(serving, "FLUSH_DELAY", 1.0)  # long, so "not yet" cannot race the clock
    path = tmp_path / "access.log"
    log = serving.AccessLog(str(path))

    async def scenario() -> list[list[str]]:
        seen = []
        log.write("first")
        await asyncio.sleep(0)  # one loop turn
        await asyncio.sleep(0)
        seen.append(path.read_text().splitlines())
        log.write("second")
        log.write("third")
        await asyncio.sleep(0.05)
        seen.append(path.read_text().splitlines())  # busy: held back
        log.close()
        seen.append(path.read_text().splitlines())
        return seen

    assert asyncio.run(scenario()) == [["first"], ["first"], ["first", "second", "third"]]
    assert log.lines == 3


def test_apache_byte_counts_connection_status_and_server_names(tmp_path):
    """%I %O %S (mod_logio), %X, %P, %v, %V and %{...}t, as in Debian's stock formats:
    the byte counts are those the client sent and received."""
    fmt = '%v:%p "%r" %>s %b %I %O %S %X %P %V [%{%Y-%m-%d %H:%M:%S}t] %{sec}t'
    first = b"GET /one HTTP/1.1\r\nHost: sensor.example:8080\r\n\r\n"
    second = b"POST /two HTTP/1.1\r\nHost: [2001:db8::1]:80\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    server = Served(tmp_path, log_format=fmt)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(first)
            answer_one = b""
            while b"\r\n\r\n" not in answer_one or len(answer_one) < answer_one.index(b"\r\n\r\n") + 4 + int(
                    answer_one.split(b"Content-Length: ")[1].split(b"\r\n")[0]):
                answer_one += s.recv(65536)
            s.sendall(second)
            answer_two = b""
            while chunk := s.recv(65536):
                answer_two += chunk
        records = server.records(2)
    finally:
        server.stop()
    one, two = records
    assert (one["request"], two["request"]) == ("GET /one HTTP/1.1", "POST /two HTTP/1.1")
    assert (int(one["bytes_in"]), int(one["bytes_out"])) == (len(first), len(answer_one))
    assert (int(two["bytes_in"]), int(two["bytes_out"])) == (len(second), len(answer_two))
    assert int(two["bytes_in_out"]) == len(second) + len(answer_two)
    assert (one["connection_status"], two["connection_status"]) == ("+", None)  # "-": closed after
    assert one["pid"] == two["pid"] == str(server.process.pid)
    assert one["server_name"] == socket.gethostname()
    assert (one["server_name_used"], two["server_name_used"]) == ("sensor.example", "[2001:db8::1]")
    assert abs(int(one["time:sec"]) - time.time()) < 60
    assert time.strftime("%Y-%m-%d", time.localtime(int(one["time:sec"]))) == one["time:%Y-%m-%d %H:%M:%S"][:10]
