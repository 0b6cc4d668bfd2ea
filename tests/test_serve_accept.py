"""Serving at accept, and handing over to the event loop: each path through the real server.

``Connection.accepted`` answers a request that is already waiting when the
connection is accepted, without an event-loop transport; everything else is
handed to the event loop.  These tests drive each case through the real
server on loopback (a request sent late, a head split in two, an answer too
big for the socket buffer, keep-alive after a request served at accept), and
test ``AcceptTransport``'s bookkeeping on a socket pair.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from servehelp import Served, free_port, paused
from tcpfp_cli.fields import FIELDS
from tcpfp_cli.server import AcceptTransport

FORMAT = '%h %p "%r" %>s %b %k ' + " ".join(f'"%{{{f.name}}}g"' for f in FIELDS if f.scalar)


class Answers:
    """Answers with a Content-Length read one at a time from a kept-alive connection;
    bytes of the next answer that arrived with this one are kept for it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "the server closed before its answer"
        self.data += chunk

    def next(self) -> bytes:
        """The next answer's head (its body is read and checked for length)."""
        while b"\r\n\r\n" not in self.data:
            self._more()
        head, _, rest = self.data.partition(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        self.data = rest
        while len(self.data) < length:
            self._more()
        self.data = self.data[length:]
        return head


def _read_to_close(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(1 << 20):
        data += chunk
    return data


@pytest.fixture(params=["uvloop", "asyncio"])
def served(tmp_path, request):
    port = free_port()
    server = Served(tmp_path, "--listen", f"127.0.0.1:{port}", "--loop", request.param, port=port,
                    log_format=FORMAT)
    yield server
    server.stop()


def test_a_request_sent_after_the_accept_is_served_by_the_event_loop(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        served.wait_accepted(1)  # the server has accepted and found nothing to read
        s.sendall(b"GET /late HTTP/1.0\r\n\r\n")
        answer = _read_to_close(s)
    assert answer.startswith(b"HTTP/1.1 200 ")
    (record,) = served.records(1)
    assert (record["request"], record["status"]) == ("GET /late HTTP/1.0", "200")
    assert record["FINGERPRINT_TCP_OPTIONS"] == "2,4,8,1,3"
    assert record["FINGERPRINT_REQ_RTT"] is not None


def test_a_head_split_across_the_accept_is_read_whole(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"GET /split?a=1 HTTP/1.0\r\nUser-Agent: hal")
        time.sleep(0.2)
        s.sendall(b"f\r\n\r\n")
        answer = _read_to_close(s)
    assert answer.startswith(b"HTTP/1.1 200 ")
    (record,) = served.records(1)
    assert (record["request"], record["status"]) == ("GET /split?a=1 HTTP/1.0", "200")


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_an_answer_larger_than_the_socket_buffers_is_sent_whole_and_then_closed(tmp_path, loop):
    body = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than send and receive buffers hold
    path = tmp_path / "big.bin"
    path.write_bytes(body)
    port = free_port()
    with Served(tmp_path, "--listen", f"127.0.0.1:{port}", "--body", str(path), "--loop", loop,
                port=port, log_format=FORMAT) as served:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /big HTTP/1.0\r\n\r\n")
            time.sleep(0.2)  # the server's first send fills the buffers and keeps the rest
            answer = _read_to_close(s)
        head, _, received = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in head
        assert received == body
        (record,) = served.records(1)
        assert (record["status"], record["bytes"]) == ("200", str(len(body)))


def test_keep_alive_goes_on_after_requests_served_at_accept(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        with paused(served):  # both requests wait for the accept, which answers them
            s.sendall(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.05)
        answers = Answers(s)
        assert answers.next().startswith(b"HTTP/1.1 200 ")
        assert answers.next().startswith(b"HTTP/1.1 200 ")
        time.sleep(0.1)  # the third arrives at the event loop's transport
        s.sendall(b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_to_close(s).startswith(b"HTTP/1.1 200 ")
    records = served.records(3)
    assert [(r["request"], r["keepalive"]) for r in records] == [
        ("GET /1 HTTP/1.1", "0"), ("GET /2 HTTP/1.1", "1"), ("GET /3 HTTP/1.1", "2")]
    assert len({r["FINGERPRINT_ACCEPT_TIME"] for r in records}) == 1  # one connection, one fingerprint
    for record in records:  # TCP_INFO at the request: at accept for the first two, read again for the third
        assert record["FINGERPRINT_REQ_RTT"] is not None and record["FINGERPRINT_REQ_RCV_MSS"] is not None


def _send_then_reset(port: int, payload: bytes) -> None:
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.sendall(payload)
    time.sleep(0.05)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    time.sleep(0.05)


def test_a_request_begun_by_a_client_that_reset_gets_its_line_at_once(served):
    """Found in review: the answer to the first request fails (the client reset), and the
    second request, only begun, must still get its line, as 400, without waiting for a
    keep-alive timer of a connection that is gone."""
    with paused(served):
        _send_then_reset(served.port, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HT")
    records = served.records(2)
    assert [(r["request"], r["status"]) for r in records] == [("GET /1 HTTP/1.1", "200"), ("GET /2 HT", "400")]


def test_sigterm_right_after_such_a_reset_loses_no_line(tmp_path):
    port = free_port()
    server = Served(tmp_path, "--listen", f"127.0.0.1:{port}", port=port, log_format=FORMAT)
    try:
        with paused(server):
            _send_then_reset(port, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HT")
        time.sleep(0.3)
    finally:
        assert server.stop() == 0
    assert [r["request"] for r in server.records()] == ["GET /1 HTTP/1.1", "GET /2 HT"]


def test_a_connection_that_sends_nothing_and_closes_gets_no_line_and_no_harm(served):
    for _ in range(3):
        socket.create_connection(("127.0.0.1", served.port), timeout=5).close()
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as s:
        s.sendall(b"GET /after HTTP/1.0\r\n\r\n")
        assert _read_to_close(s).startswith(b"HTTP/1.1 200 ")
    assert [r["request"] for r in served.records(1)] == ["GET /after HTTP/1.0"]


def test_the_local_address_is_the_one_each_client_reached(tmp_path):
    """%A and %p: fixed for a listener bound to one address, asked per connection on a wildcard."""
    bound, wildcard = free_port(), free_port()
    with Served(tmp_path, "--listen", f"127.0.0.1:{bound}", "--listen", f"[::]:{wildcard}", port=bound,
                log_format='%a %A %p "%r"') as served:
        targets = [("127.0.0.1", bound), ("127.0.0.1", wildcard), ("127.0.0.2", wildcard), ("::1", wildcard)]
        for host, port in targets:
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(b"GET /where HTTP/1.0\r\n\r\n")
                assert _read_to_close(s).startswith(b"HTTP/1.1 200 ")
        records = served.records(len(targets))
    assert [(r["remote_addr"], r["local_addr"], r["local_port"]) for r in records] == [
        ("127.0.0.1", "127.0.0.1", str(bound)), ("127.0.0.1", "127.0.0.1", str(wildcard)),
        ("127.0.0.1", "127.0.0.2", str(wildcard)), ("::1", "::1", str(wildcard))]


def test_an_ipv4_mapped_wildcard_listener_is_a_wildcard_too(tmp_path):
    port = free_port()
    with Served(tmp_path, "--listen", f"[::ffff:0.0.0.0]:{port}", port=port, log_format='%A %p "%r"') as served:
        for host in ("127.0.0.1", "127.0.0.2"):
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(b"GET /mapped HTTP/1.0\r\n\r\n")
                assert _read_to_close(s).startswith(b"HTTP/1.1 200 ")
        assert [r["local_addr"] for r in served.records(2)] == ["127.0.0.1", "127.0.0.2"]


# --------------------------------------------------------------------------- AcceptTransport


class LoopTransport:
    """What replay does to the event loop's transport, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close",))

    def abort(self) -> None:
        self.calls.append(("abort",))


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    theirs.settimeout(2)
    yield ours, theirs
    theirs.close()
    ours.close()


def _transport(sock: socket.socket) -> AcceptTransport:
    return AcceptTransport(socket.socket(sock.family, sock.type, 0, sock.detach()))


def test_write_sends_at_once_and_close_closes_at_once(pair):
    ours, theirs = pair
    direct = _transport(ours)
    direct.write(b"answer")
    assert theirs.recv(100) == b"answer"
    assert not direct.is_closing() and not direct.finished()
    direct.close()
    assert direct.finished() and direct.is_closing()
    assert theirs.recv(100) == b""


def test_what_the_socket_cannot_take_waits_and_is_replayed_first_then_the_close(pair):
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    direct = _transport(ours)
    big = bytes(range(256)) * 4096  # 1 MiB
    direct.write(big)
    direct.write(b"-and-more")
    direct.close()
    assert not direct.finished()  # the rest still has to be sent: the event loop takes over
    handed = direct.hand_over()
    try:
        direct.write(b"-after")
        loop_transport = LoopTransport()
        direct.replay(loop_transport)
        sent_at_once = b""
        theirs.setblocking(False)
        while True:
            try:
                chunk = theirs.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            sent_at_once += chunk
        assert 0 < len(sent_at_once) < len(big)
        (write, rest), close = loop_transport.calls
        assert write == "write" and close == ("close",)
        assert sent_at_once + rest == big + b"-and-more-after"
    finally:
        handed.close()


def test_abort_during_the_hand_over_is_replayed_as_abort(pair):
    ours, _theirs = pair
    direct = _transport(ours)
    handed = direct.hand_over()
    try:
        direct.write(b"x")
        direct.abort()
        assert direct.is_closing()
        loop_transport = LoopTransport()
        direct.replay(loop_transport)
        assert loop_transport.calls == [("write", b"x"), ("abort",)]
    finally:
        handed.close()


def test_a_client_that_is_gone_closes_the_transport_and_drops_the_answer(pair):
    ours, theirs = pair
    theirs.close()
    direct = _transport(ours)
    direct.write(b"nobody reads this")
    assert direct.finished()
    direct.write(b"nor this")  # no error
    direct.close()
    assert direct.finished()


@pytest.fixture
def tcp_pair():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    ours, _ = listener.accept()
    listener.close()
    yield ours, client
    client.close()
    ours.close()


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_a_last_answer_is_held_and_leaves_with_the_close(tcp_pair):
    ours, client = tcp_pair
    direct = _transport(ours)
    direct.write(b"the answer", last=True)
    assert not direct.finished()
    direct.close()
    assert direct.finished()
    assert _read_all(client) == b"the answer"


def test_a_last_answer_still_arrives_when_the_client_sent_more_than_was_read(tcp_pair):
    """close() with unread input resets the connection: the held answer must have left first."""
    ours, client = tcp_pair
    client.sendall(b"x" * 100_000)
    time.sleep(0.05)
    direct = _transport(ours)
    direct.write(b"400 Bad Request\n", last=True)
    direct.close()
    assert _read_all(client) == b"400 Bad Request\n"
