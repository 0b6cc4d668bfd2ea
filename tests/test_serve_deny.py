"""`tcpfp serve --deny`: clients refused by their SYN, end to end through the kernel.

A Mozi router's SYN cannot come from a loopback client, so the servers run in
a network namespace of the test's own and a fake remote host writes fixture
SYNs to a TUN device (tests/fakehost.py).  Three servers share the namespace:
one whose rule closes Mozi-like stacks (the client must see a reset and no
byte of response), one whose rule answers them 403, and one in
`--deny-dry-run` that serves everybody but logs what its rules matched.  A
Windows SYN matches no rule and gets 200 everywhere.  Every connection is
logged, blocked or not, and its line names the rule in FINGERPRINT_DENY
(`LINE:ACTION`, one token).  A bad rules file stops the server at start-up
with exit status 2 and the file's line number.  On loopback, a real client
sets IP_TTL so that a rule on FINGERPRINT_IP_TTL (and one on a request-time
field) decides its fate.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP

from conftest import need, need_root
from fakehost import Conversation, Namespace, replay, wait_for_port
from servehelp import Served, paused
from tcpfp_cli.logformat import compile_format

FIXTURES = Path(__file__).parent / "fixtures" / "syn"
CLOSE_PORT, FORBID_PORT, DRY_PORT = 8081, 8082, 8083
FORMAT = '%a %p "%r" %>s %b %{FINGERPRINT_IP_TTL}g "%{FINGERPRINT_TCP_OPTIONS}g" %{FINGERPRINT_DENY}g ' \
         "%{FINGERPRINT_SAVED_SYN}g"

MOZI_RULE = "FINGERPRINT_TCP_OPTIONS = 2,4,8,1,3 and FINGERPRINT_ITTL = 64 and FINGERPRINT_TCP_WSCALE <= 5"
CLOSE_RULES = f"# Mozi-like stacks\n{MOZI_RULE} -> close\n"
FORBID_RULES = f"# Mozi-like stacks\n{MOZI_RULE} -> 403\n"
DRY_RULES = (
    "# Windows 10/11 shapes, for the test\n"
    "FINGERPRINT_TCP_OPTIONS = 2,1,3,1,1,4 and FINGERPRINT_IP_TTL > 64 -> 403\n"
    f"{MOZI_RULE} -> close\n"
)


def _syn(name: str, sport: int, dport: int) -> bytes:
    """The fixture's SYN aimed at our port (scapy recomputes the checksums)."""
    packet = IP(bytes.fromhex(json.loads((FIXTURES / f"{name}.json").read_text())["hex"]))
    packet[TCP].sport, packet[TCP].dport = sport, dport
    del packet.chksum
    del packet[TCP].chksum
    return bytes(packet)


@pytest.fixture(scope="module")
def denied_in_namespace(tmp_path_factory):
    need_root()
    need(os.path.exists("/dev/net/tun"), "needs /dev/net/tun")
    tmp = tmp_path_factory.mktemp("deny")
    logs = {}
    with Namespace() as ns:
        servers = []
        for port, rules, extra, log_format in (
            (CLOSE_PORT, CLOSE_RULES, [], FORMAT),
            (FORBID_PORT, FORBID_RULES, [], FORMAT),
            (DRY_PORT, DRY_RULES, ["--deny-dry-run"], "tcpfp"),  # the default format carries the field
        ):
            (tmp / f"{port}.rules").write_text(rules)
            logs[port] = tmp / f"{port}.log"
            servers.append(ns.popen([
                sys.executable, "-m", "tcpfp_cli", "serve", "--listen", f"0.0.0.0:{port}",
                "--log", str(logs[port]), "--log-format", log_format,
                "--deny", str(tmp / f"{port}.rules"), *extra]))
        for port in logs:
            wait_for_port(ns, port, timeout=15)
        sent = {(port, name): _syn(name, 21000 + 10 * n + m, port)
                for n, port in enumerate(logs) for m, name in enumerate(("seed_mozi_1", "windows_64240"))}
        results = replay(ns, [Conversation(syn=syn, request=f"GET /{name} HTTP/1.0\r\n\r\n".encode())
                              for (_, name), syn in sent.items()])
        for server in servers:
            ns.stop(server)
            assert server.returncode == 0
    got = dict(zip(sent, results))
    lines = {port: path.read_text().splitlines() for port, path in logs.items()}
    yield got, sent, lines


def _records(lines: list[str], fmt: str = FORMAT) -> list[dict]:
    parser = compile_format(fmt)
    return [parser.parse(line) for line in lines]


def test_a_close_rule_resets_the_connection_before_any_response(denied_in_namespace):
    got, _, _ = denied_in_namespace
    mozi = got[CLOSE_PORT, "seed_mozi_1"]
    assert mozi.synack is not None  # the handshake completed: the kernel accepted it
    assert mozi.reset and mozi.response == b""


def test_a_closed_connection_is_logged_once_with_its_rule(denied_in_namespace):
    _, sent, lines = denied_in_namespace
    records = _records(lines[CLOSE_PORT])
    dropped = [r for r in records if r["FINGERPRINT_SAVED_SYN"] == sent[CLOSE_PORT, "seed_mozi_1"].hex()]
    assert len(dropped) == 1
    (record,) = dropped
    # "-" if the request had not arrived when the connection was accepted, else its first line
    assert record["request"] in (None, "GET /seed_mozi_1 HTTP/1.0")
    assert record["status"] == "444"  # nginx's "closed without response"
    assert record["bytes"] is None
    assert record["FINGERPRINT_DENY"] == "2:close"
    assert (record["FINGERPRINT_IP_TTL"], record["FINGERPRINT_TCP_OPTIONS"]) == ("50", "2,4,8,1,3")


def test_a_403_rule_reads_the_request_and_refuses_it(denied_in_namespace):
    got, sent, lines = denied_in_namespace
    mozi = got[FORBID_PORT, "seed_mozi_1"]
    assert mozi.ok and mozi.response.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"FINGERPRINT" not in mozi.response  # the fingerprint body is not served
    (record,) = [r for r in _records(lines[FORBID_PORT])
                 if r["FINGERPRINT_SAVED_SYN"] == sent[FORBID_PORT, "seed_mozi_1"].hex()]
    assert record["request"] == "GET /seed_mozi_1 HTTP/1.0"
    assert record["status"] == "403"
    assert record["FINGERPRINT_DENY"] == "2:403"


@pytest.mark.parametrize("port", [CLOSE_PORT, FORBID_PORT])
def test_a_windows_syn_matches_no_rule_and_is_served(denied_in_namespace, port):
    got, sent, lines = denied_in_namespace
    windows = got[port, "windows_64240"]
    assert windows.ok and windows.response.startswith(b"HTTP/1.1 200 OK\r\n")
    (record,) = [r for r in _records(lines[port])
                 if r["FINGERPRINT_SAVED_SYN"] == sent[port, "windows_64240"].hex()]
    assert record["status"] == "200" and record["FINGERPRINT_DENY"] is None  # "-"
    assert record["FINGERPRINT_IP_TTL"] == "117"


def test_each_server_logged_exactly_its_two_clients(denied_in_namespace):
    _, _, lines = denied_in_namespace
    assert {port: len(found) for port, found in lines.items()} == {CLOSE_PORT: 2, FORBID_PORT: 2, DRY_PORT: 2}


def test_dry_run_serves_everybody_and_logs_what_would_have_happened(denied_in_namespace):
    got, _, lines = denied_in_namespace
    for name in ("seed_mozi_1", "windows_64240"):
        result = got[DRY_PORT, name]
        assert result.ok and result.response.startswith(b"HTTP/1.1 200 OK\r\n"), name
    by_path = {r["request"].split(" ")[1]: r for r in _records(lines[DRY_PORT], "tcpfp")}
    assert by_path["/seed_mozi_1"]["status"] == "200"
    assert by_path["/seed_mozi_1"]["FINGERPRINT_DENY"] == "3:close"
    assert by_path["/windows_64240"]["status"] == "200"
    assert by_path["/windows_64240"]["FINGERPRINT_DENY"] == "2:403"


# --------------------------------------------------------------------------- start-up errors


@pytest.mark.parametrize(("rules", "reason"), [
    ("FINGERPRINT_IP_TTL = 64 -> 403\nFINGERPRINT_TCP_MSS >= fourteen -> close\n", "bad number 'fourteen'"),
    ("# ok\n\nFINGERPRINT_IP_TTL = 64 -> 403\nFINGERPRINT_REQ_RTT > 1 -> close\n", "FINGERPRINT_REQ_RTT"),
])
def test_a_bad_rules_file_stops_the_server_at_start_up(tmp_path, rules, reason):
    path = tmp_path / "bad.rules"
    path.write_text(rules)
    line = rules.count("\n")  # the bad rule is the last line
    with socket.socket() as probe:  # a free port, so only the rules can fail
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "tcpfp_cli", "serve", "--listen", f"127.0.0.1:{port}",
                           "--deny", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"tcpfp: {path}:{line}: ") and reason in done.stderr
    assert done.stdout == ""


# --------------------------------------------------------------------------- loopback


def _talk(port: int, ttl: int, request: bytes = b"GET /ttl HTTP/1.0\r\n\r\n") -> tuple[bytes, bool]:
    """One request from a client whose SYN carries ``ttl``; (response, reset by the server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        client.connect(("127.0.0.1", port))
        chunks = []
        try:
            client.sendall(request)
            for _ in range(1000):
                chunk = client.recv(65536)
                if not chunk:
                    return b"".join(chunks), False
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return b"".join(chunks), True
        raise AssertionError("the server never closed")


def test_loopback_clients_are_refused_by_their_ip_ttl(tmp_path):
    rules = tmp_path / "ttl.rules"
    rules.write_text(
        "FINGERPRINT_IP_TTL = 33 -> close\n"
        "FINGERPRINT_IP_TTL = 44 -> 403\n"
        "# a request-time rule: known once the request's TCP_INFO is read\n"
        "FINGERPRINT_IP_TTL = 55 and FINGERPRINT_REQ_RCV_MSS > 0 -> 403\n")
    fmt = '"%r" %>s %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_DENY}g'
    with Served(tmp_path, "--deny", str(rules), log_format=fmt) as served:
        # A request already waiting when the connection is accepted (the server paused
        # meanwhile): reset unanswered, and its first line logged.
        with paused(served):
            early = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            early.settimeout(5)
            early.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 33)
            early.connect(("127.0.0.1", served.port))
            early.sendall(b"GET /early HTTP/1.0\r\n\r\n")
        with early:
            try:
                closed, reset = early.recv(65536), False
            except ConnectionResetError:
                closed, reset = b"", True
        assert closed == b"" and reset
        silent, reset = _talk(served.port, 33, b"")  # nothing unread: still a reset, not a FIN
        assert silent == b"" and reset
        refused, _ = _talk(served.port, 44)
        assert refused.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        late, _ = _talk(served.port, 55)
        assert late.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        served_ok, _ = _talk(served.port, 66)
        assert served_ok.startswith(b"HTTP/1.1 200 OK\r\n")
        records = served.records(5)
    logged = sorted(((r["FINGERPRINT_IP_TTL"], r["status"], r["FINGERPRINT_DENY"], r["request"]) for r in records),
                    key=lambda t: (t[0], t[3] or ""))
    assert logged == [
        ("33", "444", "1:close", None),  # it had sent nothing: "-"
        ("33", "444", "1:close", "GET /early HTTP/1.0"),  # what it had sent, never answered
        ("44", "403", "2:403", "GET /ttl HTTP/1.0"),
        ("55", "403", "4:403", "GET /ttl HTTP/1.0"),
        ("66", "200", None, "GET /ttl HTTP/1.0"),
    ]
