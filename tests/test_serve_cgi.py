"""`tcpfp serve --cgi-dir`: CGI/1.1 (RFC 3875) scripts see the module's environment variables.

The FINGERPRINT_* variables are what the Apache module gives scripts
(TCPFingerprintEnvVars, ...EnvTCPInfo, ...EnvSavedSYN); each switch adds
exactly its own variables, and their values are the ones the access log
holds for the same request.  The standard CGI variables, the script's Status
header, and every way a script can fail are specified too, and so is safety:
the listener faces the internet, so nothing outside the CGI directory ever
runs and no request byte ever reaches a shell.  Scripts are real files run by
the real server process; the tests talk to it over loopback.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from servehelp import Served, exchange, pid_alive
from tcpfp_cli.fields import FIELDS
from tcpfp_cli.hextext import parse_hex
from tcpfp_cli.syn import parse_syn

SCALARS = frozenset(f.name for f in FIELDS if f.scalar)
REQUEST_TIME = frozenset(f.name for f in FIELDS if f.source == "tcp_info_now")
DUMPS = frozenset({"FINGERPRINT_TCP_INFO", "FINGERPRINT_SAVED_SYN"})
# The log holds every field, so each CGI value can be compared with its log column.
FORMAT = '%a %{remote}p "%r" %>s %b %k "%{User-Agent}i" ' + " ".join(f'"%{{{f.name}}}g"' for f in FIELDS)

ENV_SCRIPT = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
env | LC_ALL=C sort
"""
POST_SCRIPT = """#!/bin/sh
printf 'Content-Type: text/plain\\n\\n'
printf 'CONTENT_LENGTH=%s\\nCONTENT_TYPE=%s\\nREQUEST_METHOD=%s\\n--\\n' \\
    "$CONTENT_LENGTH" "$CONTENT_TYPE" "$REQUEST_METHOD"
cat
"""


def write_script(directory: Path, name: str, text: str, mode: int = 0o755) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(mode)
    return path


def python_script(directory: Path, name: str, body: str) -> Path:
    return write_script(directory, name, f"#!{sys.executable} -I\n{body}")


def split_response(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    assert answer.startswith(b"HTTP/1.1 "), f"no HTTP answer, got {answer[:80]!r}"
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def env_of(body: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in body.decode("latin-1").splitlines() if "=" in line)


def get(port: int, target: str, *, headers: str = "", ttl: int | None = None, timeout: float = 10.0) -> bytes:
    request = f"GET {target} HTTP/1.0\r\nUser-Agent: cgi-tester/1\r\n{headers}\r\n".encode("latin-1")

    def set_ttl(s: socket.socket) -> None:
        if ttl is not None:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)

    # No half-close (shut=False): the client just waits for the answer, as browsers do.
    return exchange("127.0.0.1", port, request, before_connect=set_ttl, timeout=timeout, shut=False)


@pytest.fixture
def cgi_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "cgi"
    directory.mkdir()
    write_script(directory, "env.sh", ENV_SCRIPT)
    write_script(directory, "post.sh", POST_SCRIPT)
    return directory


def serve_cgi(tmp_path: Path, cgi_dir: Path, *flags: str) -> Served:
    # cwd is the temp dir: a shell that wrongly ran request bytes would leave its markers there.
    return Served(tmp_path, "--cgi-dir", str(cgi_dir), *flags, log_format=FORMAT, cwd=tmp_path)


class Site:
    """One server shared by the tests that only send requests: its dir, CGI dir and log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cgi = root / "cgi"
        self.cgi.mkdir()
        write_script(self.cgi, "env.sh", ENV_SCRIPT)
        self.marker = root / "OUTSIDE-RAN"  # left by any script that must never run
        write_script(root, "secret", f"#!/bin/sh\ntouch {self.marker}\n"
                     "printf 'Content-Type: text/plain\\n\\nsecret\\n'\n")
        (self.cgi / "link-out").symlink_to(root / "secret")
        write_script(self.cgi, "plain.sh", f"#!/bin/sh\ntouch {self.marker}\n", mode=0o644)
        (self.cgi / "subdir").mkdir()
        write_script(self.cgi / "subdir", "inner.sh", f"#!/bin/sh\ntouch {self.marker}\n")
        write_script(self.cgi, ".hidden.sh", f"#!/bin/sh\ntouch {self.marker}\n")
        self.server = serve_cgi(root, self.cgi)

    def request(self, target: str) -> tuple[int, bytes, dict]:
        """(status, body, the request's one log record)."""
        before = len(self.server.lines())
        status, _, body = split_response(get(self.server.port, target))
        records = self.server.records(before + 1)[before:]
        assert len(records) == 1, records
        return status, body, records[0]

    def injected(self) -> list[Path]:
        return [p for p in (self.root / "INJECTED", self.cgi / "INJECTED", self.marker) if p.exists()]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    shared = Site(tmp_path_factory.mktemp("site"))
    yield shared
    shared.server.stop()


# --------------------------------------------------------------------------- FINGERPRINT_* variables


@pytest.mark.parametrize("flags, expected", [
    ((), frozenset()),
    (("--env-vars",), SCALARS),
    (("--env-tcp-info",), frozenset({"FINGERPRINT_TCP_INFO"})),
    (("--env-saved-syn",), frozenset({"FINGERPRINT_SAVED_SYN"})),
    (("--env-tcp-info", "--env-saved-syn"), DUMPS),
    (("--env-vars", "--env-tcp-info"), SCALARS | {"FINGERPRINT_TCP_INFO"}),
    (("--env-vars", "--env-saved-syn"), SCALARS | {"FINGERPRINT_SAVED_SYN"}),
    (("--env-vars", "--env-tcp-info", "--env-saved-syn"), SCALARS | DUMPS),
])
def test_each_switch_adds_exactly_its_fingerprint_variables(tmp_path, cgi_dir, flags, expected):
    with serve_cgi(tmp_path, cgi_dir, *flags) as server:
        status, headers, body = split_response(get(server.port, "/cgi-bin/env.sh", ttl=47))
        (record,) = server.records(1)
    assert status == 200 and headers["content-type"] == "text/plain"
    env = env_of(body)
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1"  # the script did run and print its environment
    assert {name for name in env if name.startswith("FINGERPRINT_")} == expected
    assert record["status"] == "200" and record["request"] == "GET /cgi-bin/env.sh HTTP/1.0"
    # Each variable is the text the log holds for the same request ('-' when missing).
    # (The request-time TCP_INFO fields have their own test below.)
    for name in expected - REQUEST_TIME:
        assert env[name] == logged(record, name), name
    if "FINGERPRINT_IP_TTL" in expected:  # and the values are the client's own SYN
        assert env["FINGERPRINT_IP_TTL"] == "47" and env["FINGERPRINT_IP_VERSION"] == "4"
        assert env["FINGERPRINT_TCP_OPTIONS"] == "2,4,8,1,3"
        assert int(env["FINGERPRINT_TCP_RTT"]) > 0 and int(env["FINGERPRINT_REQ_RCV_MSS"]) > 0


def logged(record: dict, name: str) -> str:
    return "-" if record[name] is None else record[name]


def test_request_time_variables_are_the_reading_the_log_line_holds(tmp_path, cgi_dir):
    """FINGERPRINT_REQ_* are TCP_INFO "when the request arrived": one reading per request,
    so the script and the log line must show the same numbers."""
    with serve_cgi(tmp_path, cgi_dir, "--env-vars") as server:
        answers = [get(server.port, "/cgi-bin/env.sh") for _ in range(5)]
        records = server.records(5)
    by_port = {r["remote_port"]: r for r in records}
    assert {"FINGERPRINT_REQ_RTT", "FINGERPRINT_REQ_MIN_RTT"} <= REQUEST_TIME
    for answer in answers:
        env = env_of(split_response(answer)[2])
        record = by_port[env["REMOTE_PORT"]]
        assert {name: env[name] for name in REQUEST_TIME} == {name: logged(record, name) for name in REQUEST_TIME}


def test_tcp_info_variable_is_the_whole_kernel_structure_in_hex(tmp_path, cgi_dir):
    # The kernel's struct tcp_info size, asked from a socket of our own.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        probe.listen()
        with socket.create_connection(probe.getsockname(), timeout=5) as client:
            size = len(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1024))
    with serve_cgi(tmp_path, cgi_dir, "--env-tcp-info") as server:
        env = env_of(split_response(get(server.port, "/cgi-bin/env.sh"))[2])
    value = env["FINGERPRINT_TCP_INFO"]
    assert value == value.lower() and len(value) == 2 * size
    raw = bytes.fromhex(value)
    assert raw[0] == 1  # tcpi_state at accept: TCP_ESTABLISHED


def test_saved_syn_variable_decodes_to_the_clients_syn(tmp_path, cgi_dir):
    with serve_cgi(tmp_path, cgi_dir, "--env-saved-syn") as server:
        env = env_of(split_response(get(server.port, "/cgi-bin/env.sh", ttl=61))[2])
    raw = parse_hex(env["FINGERPRINT_SAVED_SYN"])
    assert raw[0] >> 4 == 4 and raw[8] == 61  # IPv4, TTL byte as the client set it
    assert raw[20 + 13] & 0x12 == 0x02  # a SYN, not a SYN-ACK
    assert parse_syn(raw).ttl == 61


# --------------------------------------------------------------------------- standard CGI variables


def test_standard_cgi_variables(site):
    before = len(site.server.lines())
    with socket.create_connection(("127.0.0.1", site.server.port), timeout=10) as s:
        s.sendall(b"GET /cgi-bin/env.sh/extra/path?a=1&b=two%20words HTTP/1.1\r\nHost: sensor.test:8080\r\n"
                  b"User-Agent: cgi-tester/1\r\nX-Custom-Thing: yes\r\nConnection: close\r\n\r\n")
        client_port = s.getsockname()[1]
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    (record,) = site.server.records(before + 1)[before:]
    status, _, body = split_response(answer)
    env = env_of(body)
    assert status == 200
    assert env["REQUEST_METHOD"] == "GET"
    assert env["QUERY_STRING"] == "a=1&b=two%20words"  # not decoded, without '?'
    assert env["SCRIPT_NAME"] == "/cgi-bin/env.sh"
    assert env["PATH_INFO"] == "/extra/path"
    assert env["REMOTE_ADDR"] == "127.0.0.1"  # not ::ffff:127.0.0.1 on the dual-stack socket
    assert env["REMOTE_PORT"] == str(client_port)
    assert env["SERVER_PORT"] == str(site.server.port)
    assert env["SERVER_NAME"] == "sensor.test"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert env["HTTP_USER_AGENT"] == "cgi-tester/1" == record["header:user-agent"]
    assert env["HTTP_X_CUSTOM_THING"] == "yes"
    assert "CONTENT_LENGTH" not in env or env["CONTENT_LENGTH"] == ""  # no body, no length
    assert not any(name.startswith("FINGERPRINT_") for name in env)  # no switch, no field
    assert record["request"] == "GET /cgi-bin/env.sh/extra/path?a=1&b=two%20words HTTP/1.1"


def post(port: int, request_head: bytes, payload: bytes, pieces: int = 1) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request_head)
        step = -(-len(payload) // pieces)
        for start in range(0, len(payload), step):
            s.sendall(payload[start:start + step])
            if pieces > 1:
                time.sleep(0.02)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_post_body_reaches_the_script_on_stdin(site):
    write_script(site.cgi, "post.sh", POST_SCRIPT)
    payload = b"name=value&bytes=" + bytes(range(32, 127)) + b"\n" * 3
    before = len(site.server.lines())
    answer = post(site.server.port, b"POST /cgi-bin/post.sh HTTP/1.0\r\nContent-Type: application/x-www-form-"
                  b"urlencoded\r\nContent-Length: %d\r\n\r\n" % len(payload), payload)
    (record,) = site.server.records(before + 1)[before:]
    status, _, body = split_response(answer)
    assert status == 200
    head, _, echoed = body.partition(b"--\n")
    env = env_of(head)
    assert env["CONTENT_LENGTH"] == str(len(payload))
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["REQUEST_METHOD"] == "POST"
    assert echoed == payload
    assert record["request"] == "POST /cgi-bin/post.sh HTTP/1.0" and record["status"] == "200"


def test_post_body_split_across_segments_and_larger_than_a_pipe(site):
    write_script(site.cgi, "post.sh", POST_SCRIPT)
    payload = bytes(i % 251 for i in range(300_000))
    answer = post(site.server.port, b"POST /cgi-bin/post.sh HTTP/1.0\r\nContent-Length: %d\r\n\r\n"
                  % len(payload), payload, pieces=5)
    status, _, body = split_response(answer)
    assert status == 200 and body.partition(b"--\n")[2] == payload


QUICK = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nquick\\n'\n"


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_quick_scripts_answer_every_time_under_concurrency(tmp_path, cgi_dir, loop):
    """A script that exits at once, without reading its (empty) stdin, is a success every time."""
    write_script(cgi_dir, "quick.sh", QUICK)
    with serve_cgi(tmp_path, cgi_dir, "--loop", loop) as server:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: get(server.port, "/cgi-bin/quick.sh"), range(120)))
        records = server.records(120)
    statuses = Counter(split_response(a)[0] for a in answers)
    assert statuses == {200: 120}
    assert Counter(r["status"] for r in records) == {"200": 120}


def test_client_that_half_closes_after_its_request_still_gets_the_answer(site):
    """`shutdown(SHUT_WR)` after the request (HTTP/1.0 style, `nc -N`) means "no more requests",
    not "do not answer": the plain page is answered so, and a script's page must be too."""
    before = len(site.server.lines())
    plain = exchange("127.0.0.1", site.server.port, b"GET / HTTP/1.0\r\n\r\n", shut=True)
    scripted = exchange("127.0.0.1", site.server.port, b"GET /cgi-bin/env.sh HTTP/1.0\r\n\r\n", shut=True,
                        timeout=10)
    site.server.lines(before + 2, timeout=2)
    records = site.server.records()[before:]
    assert plain.startswith(b"HTTP/1.1 200 ")
    assert scripted.startswith(b"HTTP/1.1 200 ") and b"GATEWAY_INTERFACE=CGI/1.1" in scripted
    assert [(r["request"], r["status"]) for r in records] == [
        ("GET / HTTP/1.0", "200"), ("GET /cgi-bin/env.sh HTTP/1.0", "200")]


def test_client_gone_while_the_script_runs_still_gets_its_line(tmp_path, cgi_dir):
    write_script(cgi_dir, "slow.sh", "#!/bin/sh\nsleep 0.5\nprintf 'Content-Type: text/plain\\n\\nlate\\n'\n")
    with serve_cgi(tmp_path, cgi_dir, "--env-vars") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /cgi-bin/slow.sh HTTP/1.0\r\n\r\n")
            time.sleep(0.2)  # the script is running; the client gives up
        time.sleep(0.6)
        assert split_response(get(server.port, "/cgi-bin/env.sh"))[0] == 200  # still serving
        server.lines(2, timeout=2)
        records = server.records()
    assert [r["request"] for r in records] == ["GET /cgi-bin/slow.sh HTTP/1.0", "GET /cgi-bin/env.sh HTTP/1.0"]
    assert records[1]["status"] == "200"


# --------------------------------------------------------------------------- the script's answer


def test_status_header_becomes_the_response_status_and_the_logged_status(site):
    write_script(site.cgi, "gone.sh", "#!/bin/sh\nprintf 'Status: 404 Not Found\\nContent-Type: text/plain\\n"
                 "X-From-Script: 1\\n\\nnot here\\n'\n")
    before = len(site.server.lines())
    status, headers, body = split_response(get(site.server.port, "/cgi-bin/gone.sh"))
    (record,) = site.server.records(before + 1)[before:]
    assert status == 404 and body == b"not here\n"
    assert headers["content-type"] == "text/plain" and headers["x-from-script"] == "1"
    assert "status" not in headers  # the CGI Status header is not passed on as a header
    assert headers["content-length"] == str(len(body))
    assert record["status"] == "404" and record["bytes"] == str(len(body))


def test_location_without_status_is_a_redirect(site):
    write_script(site.cgi, "moved.sh", "#!/bin/sh\nprintf 'Location: http://example.test/\\n\\n'\n")
    before = len(site.server.lines())
    status, headers, _ = split_response(get(site.server.port, "/cgi-bin/moved.sh"))
    (record,) = site.server.records(before + 1)[before:]
    assert status == 302 and headers["location"] == "http://example.test/" and record["status"] == "302"


@pytest.mark.parametrize("status", [204, 304])
def test_a_bodiless_status_goes_out_without_the_scripts_body_and_keeps_the_connection_framed(site, status):
    # RFC 9110: a 204 or 304 never has a body.  Were the script's text sent, a kept-alive
    # client would read it as the start of the next answer.
    write_script(site.cgi, f"s{status}.sh", f"#!/bin/sh\nprintf 'Status: {status}\\nContent-Type: text/plain\\n"
                 "\\nthis text must not be sent\\n'\n")
    before = len(site.server.lines())
    answer = exchange("127.0.0.1", site.server.port,
                      f"GET /cgi-bin/s{status}.sh HTTP/1.1\r\nHost: t\r\n\r\n"
                      "GET /cgi-bin/env.sh HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode(),
                      shut=False, timeout=10)
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"content-length" not in first.lower()
    assert b"must not be sent" not in answer
    assert rest.startswith(b"HTTP/1.1 200 ")  # the next answer follows the head at once
    records = site.server.records(before + 2)[before:]
    assert (records[0]["status"], records[0]["bytes"]) == (str(status), None)  # %b: "-"
    assert records[1]["status"] == "200"


def test_an_interim_status_from_a_script_is_a_failure(site):
    write_script(site.cgi, "s100.sh", "#!/bin/sh\nprintf 'Status: 100 Continue\\nContent-Type: text/plain\\n\\nx\\n'\n")
    before = len(site.server.lines())
    status, _, _ = split_response(get(site.server.port, "/cgi-bin/s100.sh"))
    (record,) = site.server.records(before + 1)[before:]
    assert status == 500 and record["status"] == "500"


def test_scripts_run_as_root_only_with_a_warning(tmp_path, cgi_dir):
    """Run as root without --user, scripts are root: the operator is told once, at start."""
    assert os.geteuid() == 0  # the tests run as root (README)
    served = serve_cgi(tmp_path, cgi_dir)
    try:
        status, _, body = split_response(get(served.port, "/cgi-bin/env.sh"))
    finally:
        served.stop()
    assert status == 200
    warnings = [line for line in served.stderr_path.read_text().splitlines() if "run as root" in line]
    assert warnings == ["tcpfp: warning: --cgi-dir without --user: scripts run as root"]
    (tmp_path / "plain").mkdir()
    without_cgi = Served(tmp_path / "plain")
    without_cgi.stop()
    assert "run as root" not in without_cgi.stderr_path.read_text()


def kill_leftovers(pid_file: Path, command_part: bytes) -> None:
    """Kill, by PID, the processes a script recorded, if they still run that script."""
    if not pid_file.exists():
        return
    for pid in (int(p) for p in pid_file.read_text().split()):
        try:
            if command_part in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, 9)
        except (FileNotFoundError, ProcessLookupError):
            pass


SLEEPER = "#!/bin/sh\necho $$ > {pids}\nsleep 30 &\necho $! >> {pids}\nwait\n"


@pytest.mark.parametrize("name, text", [
    ("exits-1.sh", "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nok but failing\\n'\nexit 1\n"),
    ("no-head.sh", "#!/bin/sh\necho just a body without any header\n"),
    ("no-type.sh", "#!/bin/sh\nprintf 'X-Only: 1\\n\\nbody\\n'\n"),
    ("bad-status.sh", "#!/bin/sh\nprintf 'Status: banana\\nContent-Type: text/plain\\n\\nx\\n'\n"),
    ("killed.sh", "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nkill -9 $$\n"),
    ("huge.sh", "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\nexec head -c 50000000 /dev/zero\n"),
])
def test_failing_scripts_give_500_and_exactly_one_line(site, name, text):
    write_script(site.cgi, name, text)
    before = len(site.server.lines())
    started = time.monotonic()
    status, _, body = split_response(get(site.server.port, f"/cgi-bin/{name}"))
    elapsed = time.monotonic() - started
    site.server.lines(before + 1)
    time.sleep(0.2)  # nothing more comes
    records = site.server.records()[before:]
    assert status == 500
    assert len(body) < 1000 and b"\0" not in body  # no script output leaks into the error page
    assert elapsed < 4  # output over the bound is cut off, not read to the end
    assert [(r["request"], r["status"]) for r in records] == [(f"GET /cgi-bin/{name} HTTP/1.0", "500")]
    assert split_response(get(site.server.port, "/cgi-bin/env.sh"))[0] == 200  # and the server is fine


def test_script_running_past_the_timeout_is_killed_with_its_children(tmp_path, cgi_dir):
    pids = tmp_path / "pids"
    write_script(cgi_dir, "sleeper.sh", SLEEPER.format(pids=pids))
    started = []
    try:
        with serve_cgi(tmp_path, cgi_dir, "--cgi-timeout", "1") as server:
            t0 = time.monotonic()
            status, _, _ = split_response(get(server.port, "/cgi-bin/sleeper.sh", timeout=10))
            elapsed = time.monotonic() - t0
            started = [int(p) for p in pids.read_text().split()]
            records = server.records(1)
            deadline = time.monotonic() + 2
            while any(pid_alive(p) for p in started) and time.monotonic() < deadline:
                time.sleep(0.05)
            alive = [p for p in started if pid_alive(p)]
    finally:
        kill_leftovers(pids, b"sleep")  # never leave a sleeper behind, whatever the server did
    assert len(started) == 2  # the script and the `sleep` it started
    assert status == 500 and 0.9 < elapsed < 3.5
    assert [(r["request"], r["status"]) for r in records] == [("GET /cgi-bin/sleeper.sh HTTP/1.0", "500")]
    assert alive == []


def test_a_script_within_cgi_timeout_is_not_cut_by_the_request_timeout(tmp_path, cgi_dir):
    """--request-timeout bounds receiving the head; once it is in, the script has --cgi-timeout."""
    write_script(cgi_dir, "ponder.sh", "#!/bin/sh\nsleep 1.5\nprintf 'Content-Type: text/plain\\n\\ndone\\n'\n")
    with serve_cgi(tmp_path, cgi_dir, "--request-timeout", "1", "--cgi-timeout", "5") as server:
        status, _, body = split_response(get(server.port, "/cgi-bin/ponder.sh"))
        (record,) = server.records(1)
    assert status == 200 and body == b"done\n"
    assert record["status"] == "200" and record["bytes"] == "5"


def test_script_itself_sleeping_past_the_timeout_is_killed(tmp_path, cgi_dir):
    pids = tmp_path / "pid"
    python_script(cgi_dir, "nap.py", f"import os, time\nopen({str(pids)!r}, 'w').write(str(os.getpid()))\n"
                  "time.sleep(30)\n")
    try:
        with serve_cgi(tmp_path, cgi_dir, "--cgi-timeout", "1") as server:
            t0 = time.monotonic()
            status, _, _ = split_response(get(server.port, "/cgi-bin/nap.py", timeout=10))
            elapsed = time.monotonic() - t0
            pid = int(pids.read_text())
            (record,) = server.records(1)
            gone = not pid_alive(pid)
    finally:
        kill_leftovers(pids, b"nap.py")
    assert status == 500 and 0.9 < elapsed < 3.5 and record["status"] == "500"
    assert gone


# --------------------------------------------------------------------------- safety


@pytest.mark.parametrize("target", [
    "/cgi-bin/../secret",
    "/cgi-bin/%2e%2e/secret",
    "/cgi-bin/%2E%2E%2Fsecret",
    "/cgi-bin/..%2fsecret",
    "/cgi-bin/.%2e/secret",
    "/cgi-bin/%2f..%2fsecret",
    "/cgi-bin/link-out",
    "/cgi-bin/link-out/more",
    "/cgi-bin/plain.sh",
    "/cgi-bin/missing.sh",
    "/cgi-bin/",
    "/cgi-bin/subdir",
    "/cgi-bin/subdir/inner.sh",
    "/cgi-bin/.hidden.sh",
    "/cgi-bin/env.sh%00.txt",
])
def test_nothing_outside_the_cgi_dir_or_not_executable_ever_runs(site, target):
    """Traversal (plain and %-encoded), a symlink out, a non-executable file, a directory,
    a hidden file and a missing script: refused, and never executed."""
    status, body, record = site.request(target)
    assert status in (403, 404), body
    assert record["status"] == str(status)
    assert b"secret" not in body
    assert site.injected() == []


# --------------------------------------------------------------------------- no shell


@pytest.mark.parametrize("query", [
    "a=1;touch${IFS}INJECTED",
    "`touch${IFS}INJECTED`",
    "$(touch${IFS}INJECTED)",
    "x|touch${IFS}INJECTED",
    "x&&touch${IFS}INJECTED",
    "'\"$(touch${IFS}INJECTED)\"'",
    "-c${IFS}touch${IFS}INJECTED",
])
def test_query_string_is_data_never_shell(site, query):
    status, body, _ = site.request(f"/cgi-bin/env.sh?{query}")
    assert status == 200 and env_of(body)["QUERY_STRING"] == query
    assert site.injected() == []


@pytest.mark.parametrize("target, expected_status", [
    ("/cgi-bin/env.sh;touch${IFS}INJECTED", 404),
    ("/cgi-bin/env.sh`touch${IFS}INJECTED`", 404),
    ("/cgi-bin/$(touch${IFS}INJECTED)", 404),
    ("/cgi-bin/env.sh/$(touch${IFS}INJECTED)", 200),
    ("/cgi-bin/env.sh/;touch${IFS}INJECTED", 200),
])
def test_script_name_and_path_info_are_data_never_shell(site, target, expected_status):
    status, body, record = site.request(target)
    assert status == expected_status and record["status"] == str(expected_status)
    if status == 200:
        assert env_of(body)["PATH_INFO"] == target[len("/cgi-bin/env.sh"):]
    assert site.injected() == []


def test_a_request_pipelined_behind_a_slow_script_waits_for_it(tmp_path, cgi_dir):
    """On a kept-alive connection, a request that arrives while a script runs waits for
    the script (--cgi-timeout), not for --request-timeout: both get answered and logged."""
    write_script(cgi_dir, "ponder.sh", "#!/bin/sh\nsleep 1.5\nprintf 'Content-Type: text/plain\\n\\ndone\\n'\n")
    with serve_cgi(tmp_path, cgi_dir, "--request-timeout", "0.5", "--cgi-timeout", "5") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
            first = s.recv(65536)
            s.sendall(b"GET /cgi-bin/ponder.sh HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.2)
            s.sendall(b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            rest = b""
            while chunk := s.recv(65536):
                rest += chunk
        records = server.records(3)
    assert first.startswith(b"HTTP/1.1 200 ")
    assert rest.count(b"HTTP/1.1 200 ") == 2 and b"done\n" in rest
    assert [(r["request"], r["status"]) for r in records] == [
        ("GET /first HTTP/1.1", "200"), ("GET /cgi-bin/ponder.sh HTTP/1.1", "200"), ("GET /third HTTP/1.1", "200")]


# --------------------------------------------------------------------------- found by a review


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_body_larger_than_the_pipes_to_a_script_that_answers_as_it_reads(tmp_path, cgi_dir, loop):
    """The script's output is read while its input is written: `cat` echoes a 1 MB body
    (more than the pipes and the reader's buffer hold), at once, not after --cgi-timeout
    (uvloop: 500) or never (the stdlib loop: no answer and no line at all)."""
    write_script(cgi_dir, "cat.sh", "#!/bin/sh\nprintf 'Content-Type: application/octet-stream\\n\\n'\n"
                 "exec cat\n")
    payload = bytes(i % 251 for i in range(1_000_000))
    with serve_cgi(tmp_path, cgi_dir, "--cgi-timeout", "3", "--loop", loop) as server:
        answer = exchange("127.0.0.1", server.port, b"POST /cgi-bin/cat.sh HTTP/1.0\r\nContent-Length: %d\r\n\r\n"
                          % len(payload) + payload, timeout=8, shut=False)
        records = server.records(1)
    status, _, body = split_response(answer)
    assert status == 200 and body == payload
    assert [r["status"] for r in records] == ["200"]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_script_still_running_when_the_server_stops_is_killed_and_its_request_logged(tmp_path, cgi_dir, loop):
    """SIGTERM waits 5 s for requests in flight; a script that needs longer must not outlive
    the server (it ran on as an orphan) and its request still gets its one line (it got none)."""
    pids = tmp_path / "pid"
    write_script(cgi_dir, "long.sh", f"#!/bin/sh\necho $$ > {pids}\nexec sleep 9\n")
    server = serve_cgi(tmp_path, cgi_dir, "--cgi-timeout", "30", "--loop", loop)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as s:
            s.sendall(b"GET /cgi-bin/long.sh HTTP/1.0\r\n\r\n")
            deadline = time.monotonic() + 5
            while not pids.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.stop() == 0
            answer = s.recv(65536)
        pid = int(pids.read_text())
        alive = pid_alive(pid)
        records = server.records()
    finally:
        server.stop()
        kill_leftovers(pids, b"sleep")
    assert not alive
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert [(r["request"], r["status"]) for r in records] == [("GET /cgi-bin/long.sh HTTP/1.0", "503")]


def test_a_script_whose_client_reset_still_gets_its_line_when_the_server_stops(tmp_path, cgi_dir):
    """The client resets while its script runs, then SIGTERM: the server waited for no one
    (the connection was gone), closed the log, and the script's line was lost."""
    pids = tmp_path / "pid"
    write_script(cgi_dir, "slow.sh", f"#!/bin/sh\necho $$ > {pids}\nsleep 1\n"
                                     "printf 'Content-Type: text/plain\\n\\nlate\\n'\n")
    server = serve_cgi(tmp_path, cgi_dir, "--cgi-timeout", "30")
    try:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(b"GET /cgi-bin/slow.sh HTTP/1.0\r\n\r\n")
        deadline = time.monotonic() + 5
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST
        time.sleep(0.2)
        assert server.stop() == 0
        records = server.records()
        stderr = server.stderr_path.read_text()
    finally:
        server.stop()
        kill_leftovers(pids, b"sleep")
    assert "Traceback" not in stderr and "closed file" not in stderr, stderr
    assert [r["request"] for r in records] == ["GET /cgi-bin/slow.sh HTTP/1.0"]


def test_bytes_sent_behind_a_running_script_are_not_held_in_memory(tmp_path, cgi_dir):
    """While a script answers, what the client sends next waits in the kernel: a client
    streaming junk meanwhile took 1 GiB of the server's memory per second."""
    write_script(cgi_dir, "nap.sh", "#!/bin/sh\nsleep 3\nprintf 'Content-Type: text/plain\\n\\nlate\\n'\n")
    with serve_cgi(tmp_path, cgi_dir) as server:
        def rss_kib() -> int:
            status = Path(f"/proc/{server.process.pid}/status").read_text()
            return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])

        before = rss_kib()
        with socket.create_connection(("127.0.0.1", server.port), timeout=1) as s:
            s.sendall(b"GET /cgi-bin/nap.sh HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.2)
            junk, sent, started = b"x" * (1 << 20), 0, time.monotonic()
            while sent < 256 << 20 and time.monotonic() - started < 2:
                try:
                    s.sendall(junk)
                except (socket.timeout, OSError):
                    break
                sent += len(junk)
            grown = rss_kib() - before
    assert grown < 32 << 10, f"the server grew by {grown >> 10} MiB"


def test_the_header_section_ends_at_the_first_empty_line(site):
    """LF-ended headers and a body holding CR LF CR LF (RFC 3875 6: NL is LF or CR LF): the
    headers end at the first empty line; the body was read as headers and gave 500."""
    write_script(site.cgi, "crlf-body.sh", "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\none\\r\\n\\r\\nthree\\n'\n")
    status, headers, body = split_response(get(site.server.port, "/cgi-bin/crlf-body.sh"))
    assert status == 200 and headers["content-type"] == "text/plain" and body == b"one\r\n\r\nthree\n"


def test_a_scripts_connection_headers_and_control_bytes_do_not_reach_the_client(site):
    """The server frames the answer (Content-Length, Connection): a script's Transfer-Encoding
    or Connection would contradict it; a bare CR in a header value is no header line."""
    write_script(site.cgi, "framing.sh", "#!/bin/sh\nprintf 'Content-Type: text/plain\\nTransfer-Encoding: chunked\\n"
                 "Connection: keep-alive\\nX-Kept: 1\\n\\nplain\\n'\n")
    write_script(site.cgi, "bare-cr.sh", "#!/bin/sh\nprintf 'Content-Type: text/plain\\nX-A: a\\rSet-Cookie: x=1\\n\\nb\\n'\n")
    answer = get(site.server.port, "/cgi-bin/framing.sh")
    status, headers, body = split_response(answer)
    assert status == 200 and body == b"plain\n" and headers["x-kept"] == "1"
    assert b"transfer-encoding" not in answer.lower() and answer.lower().count(b"connection:") == 1
    status, _, body = split_response(get(site.server.port, "/cgi-bin/bare-cr.sh"))
    assert status == 500 and b"Set-Cookie" not in body


def test_request_bytes_reach_the_environment_unchanged_and_names_are_not_confused(site):
    """Header and query bytes are the bytes received (they were re-encoded as UTF-8 from
    Latin-1); 'X_Forwarded_For' does not overwrite X-Forwarded-For (Apache drops such names);
    an IPv6 Host keeps its brackets in SERVER_NAME (it became '[')."""
    request = (b"GET /cgi-bin/env.sh?x=\xe9 HTTP/1.1\r\nHost: [::1]:8080\r\nX-Forwarded-For: 192.0.2.1\r\n"
               b"X_Forwarded_For: 198.51.100.6\r\nX-Latin: caf\xe9\r\nConnection: close\r\n\r\n")
    body = split_response(exchange("127.0.0.1", site.server.port, request, shut=False))[2]
    env = dict(line.split(b"=", 1) for line in body.splitlines() if b"=" in line)
    assert env[b"HTTP_X_FORWARDED_FOR"] == b"192.0.2.1"
    assert env[b"HTTP_X_LATIN"] == b"caf\xe9" and env[b"QUERY_STRING"] == b"x=\xe9"
    assert env[b"SERVER_NAME"] == b"[::1]"
