"""``pyro_loops.Client`` when things go wrong, under every host loop.

Servers that refuse, die mid-call, send garbage or never answer; hosts and
names that do not resolve. Each time the calls fail with a pyro_loops error
and nothing reaches the toolkit (the ``reported`` fixture fails the test if
anything reached the error hook, the Tk host if anything escaped into Tk).
"""

from __future__ import annotations

import socket
import struct
import threading

import pytest

import pyro_loops
from pyro_loops import errors

from _client_hosts import WAIT_S, LoopsServer, client, host, pyro4_server, reported  # noqa: F401
from _hosts import READ
from _util import Pyro4Server, accepted, free_port


class RawServer:
    """A listening socket served by a thread: ``behaviour(conn)`` decides what each connection gets."""

    def __init__(self, behaviour) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.closed_by_client = threading.Event()
        self.behaviour = behaviour
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"PYRO:thing@127.0.0.1:{self.port}"

    def _serve(self) -> None:
        for conn in accepted(self.sock):
            self.accepted += 1
            with conn:
                conn.settimeout(WAIT_S)
                try:
                    self.behaviour(self, conn)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def sends_garbage(server: RawServer, conn: socket.socket) -> None:
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" + b"x" * 64)
    conn.recv(4096)


def never_answers(server: RawServer, conn: socket.socket) -> None:
    while conn.recv(4096):
        pass
    server.closed_by_client.set()


@pytest.fixture
def raw_server(request):
    server = RawServer(request.param)
    yield server
    server.close()


def calls_on(proxy, count=3):
    proxy._pyroTimeout = WAIT_S
    return [proxy.add(i, i) for i in range(count)]


def test_connection_refused_fails_every_call_on_it(host, client):
    calls = calls_on(client.proxy(f"PYRO:thing@127.0.0.1:{free_port()}"))
    host.run_until(lambda: all(c.done() for c in calls))
    for call in calls:
        assert isinstance(call.exception(), errors.CommunicationError)
        assert "cannot connect to 127.0.0.1:" in str(call.exception())


def test_handshake_refused_by_a_pyro4_daemon(host, client):
    # We send no HMAC; the daemon refuses with a CONNECTFAIL signed with its key,
    # which we cannot check either: the handshake fails on that.
    with Pyro4Server(hmac="secret") as server:
        calls = calls_on(client.proxy(server.uri))
        host.run_until(lambda: all(c.done() for c in calls))
    for call in calls:
        assert isinstance(call.exception(), errors.SecurityError)
        assert "hmac key config not symmetric" in str(call.exception())


def test_handshake_refused_by_our_daemon(host, client):
    daemon = RefusingDaemon(host="127.0.0.1")
    host.attach(daemon)
    calls = calls_on(client.proxy(daemon.uriFor("thing")))
    host.run_until(lambda: all(c.done() for c in calls))
    for call in calls:
        assert isinstance(call.exception(), errors.CommunicationError)
        assert "rejected: go away" in str(call.exception())
    daemon.close()


class RefusingDaemon(pyro_loops.Daemon):
    def validateHandshake(self, conn, data):  # noqa: N802 - Pyro4's name
        raise ValueError("go away")


@pytest.mark.parametrize("raw_server", [sends_garbage], indirect=True)
def test_garbage_from_the_server_fails_every_pending_call_together(host, client, raw_server):
    calls = calls_on(client.proxy(raw_server.uri))
    host.run_until(lambda: calls[0].done())
    assert all(c.done() for c in calls)  # in the same turn of the loop as the first
    for call in calls:
        assert isinstance(call.exception(), errors.ProtocolError)
        assert "invalid data or unsupported protocol version" in str(call.exception())


def test_server_dying_mid_call_fails_every_pending_call(host, client):
    with LoopsServer() as server:
        proxy = client.proxy(server.uri)
        proxy._pyroTimeout = WAIT_S
        host.settle(proxy._pyroBind())
        calls = [proxy.sleep(5), proxy.add(1, 2)]
        server.proc.kill()
        host.run_until(lambda: calls[0].done())
    assert all(c.done() for c in calls)
    for call in calls:
        assert isinstance(call.exception(), errors.ConnectionClosedError)


@pytest.mark.parametrize("raw_server", [never_answers], indirect=True)
def test_server_that_never_answers_times_out_and_the_connection_is_replaced(host, client, raw_server):
    proxy = client.proxy(raw_server.uri)
    proxy._pyroTimeout = 0.3
    first = proxy.add(1, 2)
    host.settle(first)
    assert isinstance(first.exception(), errors.TimeoutError)
    assert raw_server.closed_by_client.wait(WAIT_S)  # our socket was closed
    second = proxy.add(1, 2)
    host.settle(second)
    assert isinstance(second.exception(), errors.TimeoutError)
    assert raw_server.accepted == 2  # a fresh connection for the next call


def test_unknown_host_fails_the_call_clearly(host, client):
    call = client.proxy("PYRO:thing@no-such-host.invalid:9999").add(1, 2)
    host.settle(call)
    assert isinstance(call.exception(), errors.CommunicationError)
    assert "cannot resolve host 'no-such-host.invalid'" in str(call.exception())


def test_unknown_name_and_missing_name_server_fail_the_call_clearly(host, client):
    from pyro_loops import naming
    ns_uri, ns_daemon, _ = naming.startNS(host="127.0.0.1", port=0, enableBroadcast=False)
    host.attach(ns_daemon)
    unknown = client.proxy(f"PYRONAME:no.such.name@127.0.0.1:{ns_uri.port}").add(1, 2)
    no_tags = client.proxy(f"PYROMETA:no-such-tag@127.0.0.1:{ns_uri.port}").add(1, 2)
    no_ns = client.proxy(f"PYRONAME:anything@127.0.0.1:{free_port()}").add(1, 2)
    host.run_until(lambda: unknown.done() and no_tags.done() and no_ns.done())
    assert isinstance(unknown.exception(), errors.NamingError)
    assert "unknown name: no.such.name" in str(unknown.exception())
    assert isinstance(no_tags.exception(), errors.NamingError)
    assert "no registrations available" in str(no_tags.exception())
    assert isinstance(no_ns.exception(), errors.NamingError)
    assert "not reachable" in str(no_ns.exception())
    ns_daemon.close()


def test_other_connections_go_on_when_one_fails(host, client, pyro4_server):
    with LoopsServer() as doomed:
        dying = client.proxy(doomed.uri)
        dying._pyroTimeout = WAIT_S
        host.settle(dying._pyroBind())
        pending = dying.sleep(5)
        healthy = client.proxy(pyro4_server.uri)
        healthy._pyroTimeout = WAIT_S
        doomed.proc.kill()
        host.settle(pending)
    assert host.settle(healthy.add(1, 2)).result() == 3


def test_name_registered_as_a_pyroname_uri_fails_clearly_instead_of_connecting_to_the_name_server(host, client):
    from pyro_loops import naming
    ns_uri, ns_daemon, _ = naming.startNS(host="127.0.0.1", port=0, enableBroadcast=False)
    host.attach(ns_daemon)
    loopy = f"PYRONAME:loopy@127.0.0.1:{ns_uri.port}"
    host.settle(client.proxy(ns_uri).register("loopy", loopy)).result()
    call = host.settle(client.proxy(loopy).add(1, 2))
    assert isinstance(call.exception(), errors.NamingError)
    assert "not to a PYRO: URI" in str(call.exception())
    ns_daemon.close()


def test_pyro4_daemon_killed_mid_call_fails_every_pending_call(host, client):
    with Pyro4Server() as server:
        proxy = client.proxy(server.uri)
        proxy._pyroTimeout = WAIT_S
        host.settle(proxy._pyroBind())
        calls = [proxy.sleep(5), proxy.add(1, 2), proxy.record("x")]
        server.proc.kill()
        host.run_until(lambda: all(c.done() for c in calls))
    assert all(isinstance(c.exception(), errors.ConnectionClosedError) for c in calls[:2])


class ScriptedPeer:
    """The server side of one raw connection: reads our messages, writes hand-made replies."""

    def __init__(self, conn: socket.socket) -> None:
        from pyro_loops import _wire
        from pyro_loops._serializers import get_serializer
        self.conn, self.wire, self.ser = conn, _wire, get_serializer("serpent")
        self.reader = _wire.FrameReader()

    def message(self):
        while (msg := self.reader.next_message()) is None:
            self.reader.feed(self.conn.recv(65536))
        return msg

    def reply(self, msg_type, value, seq, flags=0) -> bytes:
        return self.wire.encode(self.wire.Message(msg_type, self.ser.dumps(value), self.ser.serializer_id, flags,
                                                  seq, {}))

    def accept_handshake(self) -> None:
        connect = self.message()
        meta = {"handshake": "hello", "meta": {"methods": ["add"], "oneway": [], "attrs": []}}
        self.conn.sendall(self.reply(self.wire.MSG_CONNECTOK, meta, connect.seq, self.wire.FLAGS_META_ON_CONNECT))


def answers_out_of_order_and_unasked(server: RawServer, conn: socket.socket) -> None:
    """Handshake, then answer two calls in reverse order, then a seq never asked."""
    peer = ScriptedPeer(conn)
    peer.accept_handshake()
    first, second = peer.message(), peer.message()
    result = peer.wire.MSG_RESULT
    conn.sendall(peer.reply(result, "second", second.seq) + peer.reply(result, "first", first.seq))
    third = peer.message()
    conn.sendall(peer.reply(result, "unasked", third.seq + 100))
    conn.recv(4096)


@pytest.mark.parametrize("raw_server", [answers_out_of_order_and_unasked], indirect=True)
def test_replies_out_of_order_match_by_seq_and_an_unasked_seq_breaks_the_connection(host, client, raw_server):
    proxy = client.proxy(raw_server.uri)
    proxy._pyroTimeout = WAIT_S
    first, second = proxy.add(1, 1), proxy.add(2, 2)
    host.run_until(lambda: first.done() and second.done())
    assert (first.result(), second.result()) == ("first", "second")
    third = host.settle(proxy.add(3, 3))
    assert isinstance(third.exception(), errors.ProtocolError)
    assert "reply sequence out of sync" in str(third.exception())


@pytest.mark.parametrize("raw_server", [never_answers], indirect=True)
def test_server_that_never_answers_the_handshake_fails_calls_without_a_timeout_at_handshake_timeout(
        host, client, raw_server):
    pyro_loops.config.HANDSHAKE_TIMEOUT = 0.3
    proxy = client.proxy(raw_server.uri)  # no _pyroTimeout: COMMTIMEOUT is 0
    call = host.settle(proxy.add(1, 2))
    assert isinstance(call.exception(), errors.TimeoutError)
    assert "HANDSHAKE_TIMEOUT" in str(call.exception())
    assert raw_server.closed_by_client.wait(WAIT_S)


def announces_a_huge_reply(server: RawServer, conn: socket.socket) -> None:
    """A valid handshake, then a reply header announcing 1 GiB that never comes."""
    peer = ScriptedPeer(conn)
    peer.accept_handshake()
    call = peer.message()
    wire = peer.wire
    fields = list(wire.HEADER.unpack(peer.reply(wire.MSG_RESULT, None, call.seq)[:wire.HEADER_SIZE]))
    size = 1 << 30
    fields[5] = size  # the payload length, with a checksum to match
    fields[-1] = wire.checksum(fields[2], fields[3], fields[4], size, fields[6], fields[7])
    conn.sendall(wire.HEADER.pack(*fields) + b"x" * 1000)
    conn.recv(4096)


@pytest.mark.parametrize("raw_server", [announces_a_huge_reply], indirect=True)
def test_reply_announced_over_max_buffered_input_fails_before_it_is_buffered(host, client, raw_server):
    pyro_loops.config.MAX_BUFFERED_INPUT = 1 << 20
    proxy = client.proxy(raw_server.uri)
    proxy._pyroTimeout = WAIT_S
    call = host.settle(proxy.add(1, 2))
    assert isinstance(call.exception(), errors.MessageTooLargeError)
    assert "MAX_BUFFERED_INPUT" in str(call.exception())


def sends_a_large_reply_with_its_last_bytes_late(server: RawServer, conn: socket.socket) -> None:
    peer = ScriptedPeer(conn)
    peer.accept_handshake()
    call = peer.message()
    data = peer.reply(peer.wire.MSG_RESULT, "y" * 200_000, call.seq)
    conn.sendall(data[:-10])
    server.closed_by_client.wait(0.5)  # the client has all but the last 10 bytes meanwhile
    conn.sendall(data[-10:])
    conn.recv(4096)


@pytest.mark.parametrize("raw_server", [sends_a_large_reply_with_its_last_bytes_late], indirect=True)
def test_large_reply_short_of_its_last_bytes_is_decoded_once_complete(host, client, raw_server):
    pyro_loops.config.MAX_BLOCKING_DECODE = 64 * 1024  # the reply goes to a worker once complete
    proxy = client.proxy(raw_server.uri)
    proxy._pyroTimeout = WAIT_S
    call = host.settle(proxy.add(1, 2))
    assert call.result() == "y" * 200_000


class AnswersThenEnds:
    """Handshake, read ``count`` calls, then, once the test says ``go``, answer them all in one
    write and end the connection at once: with a FIN, or a RST (``reset``)."""

    def __init__(self, count: int, reset: bool) -> None:
        self.count, self.reset = count, reset
        self.asked, self.go, self.ended = threading.Event(), threading.Event(), threading.Event()

    def __call__(self, server: RawServer, conn: socket.socket) -> None:
        peer = ScriptedPeer(conn)
        peer.accept_handshake()
        calls = [peer.message() for _ in range(self.count)]
        self.asked.set()
        self.go.wait(WAIT_S)
        conn.sendall(b"".join(peer.reply(peer.wire.MSG_RESULT, i, call.seq) for i, call in enumerate(calls)))
        if self.reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        self.ended.set()


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_a_connection_whose_end_was_read_is_not_watched_for_reading_while_its_replies_are_handled(
        host, client, reset):
    # The replies and the end arrive together; one reply is handled per pass (the budget).
    # A socket at its end is readable for ever: watched on, it made every pass read the
    # end again until the last reply was handled.
    pyro_loops.config.MAX_CALLS_PER_WAKEUP = 1
    peer = AnswersThenEnds(12, reset)
    server = RawServer(peer)
    try:
        proxy = client.proxy(server.uri)
        proxy._pyroTimeout = WAIT_S
        calls = [proxy.add(i, 0) for i in range(12)]
        host.run_until(peer.asked.is_set)
        fd = proxy._pyroChannel.sock.fileno()
        watched: list[bool] = []
        for call in calls:
            call.add_done_callback(lambda call: watched.append(fd in host.watched(READ)))
        peer.go.set()
        assert peer.ended.wait(WAIT_S)  # all of it is in before the loop reads any
        host.run_until(lambda: proxy._pyroChannel is None)  # failed by the end once the replies were handled
    finally:
        server.close()
    assert [call.result() for call in calls] == list(range(12))
    assert watched[0] and not watched[-1], watched  # read until the end came, then no more
    assert fd not in host.watched()


def strays_then_answers(server: RawServer, conn: socket.socket) -> None:
    """Answer a call, then send the start of a message that never ends, then answer the next call."""
    peer = ScriptedPeer(conn)
    peer.accept_handshake()
    first = peer.message()
    reply = peer.reply(peer.wire.MSG_RESULT, 1, first.seq)
    conn.sendall(reply + reply[:10])
    second = peer.message()
    conn.sendall(peer.reply(peer.wire.MSG_RESULT, 2, second.seq))
    conn.recv(4096)


@pytest.mark.parametrize("raw_server", [strays_then_answers], indirect=True)
def test_a_whole_reply_behind_stray_bytes_is_read_behind_them(host, client, raw_server):
    # The reply alone looks like the answer; what came before it makes the stream garbage.
    proxy = client.proxy(raw_server.uri)
    proxy._pyroTimeout = WAIT_S
    assert host.settle(proxy.add(1, 0)).result() == 1
    second = host.settle(proxy.add(2, 0))
    assert isinstance(second.exception(), errors.ProtocolError)


def test_a_send_that_fails_after_a_reset_completes_the_calls_whose_replies_were_read_first(host, client):
    # Two replies, then a reset, are read before either is handled. The first reply's
    # callback makes a burst of calls, written at once: the write fails (the peer reset).
    # The second reply is in the client's buffer already: it is an answer, not a loss.
    from pyro_loops.client import _BURST
    peer = AnswersThenEnds(2, reset=True)
    server = RawServer(peer)
    try:
        proxy = client.proxy(server.uri)
        proxy._pyroTimeout = WAIT_S
        first, second = proxy.add(0, 0), proxy.add(1, 0)
        host.run_until(peer.asked.is_set)
        burst: list[pyro_loops.Call] = []
        first.add_done_callback(lambda _call: burst.extend(proxy.add(i, 2) for i in range(_BURST)))
        peer.go.set()
        assert peer.ended.wait(WAIT_S)  # the replies and the reset are in before the loop reads any
        host.run_until(lambda: second.done() and len(burst) == _BURST and all(c.done() for c in burst))
    finally:
        server.close()
    assert (first.result(), second.result()) == (0, 1)
    reasons = {type(c.exception()) for c in burst}
    assert reasons == {errors.ConnectionClosedError}, reasons
    assert all(str(c.exception()).startswith("sending to ") for c in burst), burst[0].exception()
