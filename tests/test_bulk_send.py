"""Large calls leave the blocking proxy without being joined or copied, with the same bytes on the wire.

A call carrying a large ``bytes`` goes out as ``_wire.Buffers`` (header and
annotations, then the payload's own pieces), written with ``sendmsg`` (in
turn over TLS); with marshal the payload's pieces are the serializer's framing
around the caller's object itself. What the peer receives must be exactly
what joining everything first gave: checked on a raw socket that records
every byte, with HMAC, compression and TLS, and against stock Pyro4 4.82.
The daemon receives large payloads into a buffer it uses again once nothing
holds the previous message.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import threading
import tracemalloc
import weakref

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyro_loops
from pyro_loops import _wire, errors
from pyro_loops._protocol import ClientProtocol, ConnectRequest, InvokeRequest, ServerProtocol, State
from pyro_loops._serializers import get_serializer
from pyro_loops.daemon import Daemon
from pyro_loops.proxy import Proxy

from _client_hosts import host, client, reported  # noqa: F401 - fixtures
from _util import TIMEOUT, Pyro4Server, pyro4_client, read_message
from test_daemon import serving
from test_protocol_client import MisbehavingPeer

LARGE = 3 * _wire.GATHER_SIZE
MARSHAL = get_serializer("marshal")


def big(size: int = LARGE, seed: int = 1) -> bytes:
    """Bytes that compress somewhat (a repeated random block), different per seed."""
    block = bytes((seed * 7 + i * 31) % 251 for i in range(997)) + os.urandom(3)
    return (block * (size // len(block) + 1))[:size]


# --- marshal: the pieces are the serializer's own bytes ----------------------------------------

names = st.one_of(st.text(max_size=40), st.sampled_from(["obj", "size", "Pyro.Daemon", sys.intern("echo")]))


@pytest.fixture(params=["marshal", "msgpack"])
def bulk_serializer(request):
    if request.param == "msgpack":
        pytest.importorskip("msgpack")
    return get_serializer(request.param)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obj=names, method=names, size=st.integers(_wire.GATHER_SIZE, _wire.GATHER_SIZE + 5000),
       as_list=st.booleans(), kwargs=st.sampled_from([{}, None]))
def test_a_call_with_one_large_bytes_argument_is_the_serializers_bytes_around_the_callers_object(
        bulk_serializer, obj, method, size, as_list, kwargs):
    data = bytes(size)
    vargs = [data] if as_list else (data,)
    pieces = bulk_serializer.dumps_call_parts(obj, method, vargs, kwargs)
    assert type(pieces) is _wire.Buffers
    assert bytes(pieces) == bulk_serializer.dumps_call(obj, method, vargs, kwargs)
    assert any(part is data for part in pieces.parts)  # not copied


@pytest.mark.parametrize("vargs, kwargs", [
    ((b"x" * LARGE, 1), {}),                      # more than one argument
    ((b"x" * LARGE,), {"k": 1}),                  # keyword arguments
    (("x" * LARGE,), {}),                         # not bytes
    ((b"x" * (_wire.GATHER_SIZE - 1),), {}),      # small
])
def test_other_calls_are_one_payload_as_the_serializer_writes_it(bulk_serializer, vargs, kwargs):
    payload = bulk_serializer.dumps_call_parts("obj", "size", vargs, kwargs)
    assert type(payload) is bytes and payload == bulk_serializer.dumps_call("obj", "size", vargs, kwargs)


def test_serpent_writes_a_large_bytes_argument_as_one_payload():
    serpent = get_serializer("serpent")
    payload = serpent.dumps_call_parts("obj", "size", (b"x" * LARGE,), {})
    assert type(payload) is bytes and payload == serpent.dumps_call("obj", "size", (b"x" * LARGE,), {})


def test_hmac_and_compression_over_buffers_equal_those_over_the_joined_bytes():
    pieces = MARSHAL.dumps_call_parts("obj", "size", (big(),), {})
    joined = bytes(pieces)
    assert _wire.hmac_digest(b"key", pieces, {"CORR": b"c" * 16}) == \
        _wire.hmac_digest(b"key", joined, {"CORR": b"c" * 16})
    assert _wire.compress_if_useful(pieces, 0) == _wire.compress_if_useful(joined, 0)


# --- on the wire: a raw peer records what the proxy sends ----------------------------------------


class RecordingPeer(MisbehavingPeer):
    """A server on a real socket that records every byte it receives and answers
    the handshake and ``size(data)`` calls through the server role (signing with
    ``hmac_key``, over TLS with ``tls``).

    ``close_after``: read that many bytes of the first call, then close (a peer
    going away while the proxy is still sending). ``cut_reply``: answer a call
    with half of a reply carrying its argument back, then close."""

    def __init__(self, hmac_key: bytes | None = None, tls: ssl.SSLContext | None = None,
                 close_after: int = 0, cut_reply: bool = False) -> None:
        self.hmac_key, self.tls, self.close_after, self.cut_reply = hmac_key, tls, close_after, cut_reply
        self.received = bytearray()
        super().__init__()

    def _converse(self, conn: socket.socket, server: ServerProtocol) -> None:
        server.hmac_key = self.hmac_key
        try:
            if self.tls is None:
                self._record(conn, server)
            else:
                with self.tls.wrap_socket(conn, server_side=True) as tls_conn:
                    self._record(tls_conn, server)
        except OSError:
            pass  # the proxy went away; the next connection is served all the same

    def _record(self, conn: socket.socket, server: ServerProtocol) -> None:
        while True:
            event = server.next_event()
            if event is None:
                data = conn.recv(65536)
                if not data:
                    return
                self.received += data
                server.receive_data(data)
                if self.close_after and len(self.received) > self.close_after:
                    self.close_after = 0
                    conn.close()
                    return
            elif isinstance(event, ConnectRequest):
                serializer = get_serializer(event.msg.serializer_id)
                meta = {"handshake": "hello", "meta": {"methods": ["size"], "oneway": [], "attrs": []}}
                conn.sendall(server.connect_ok_bytes(event.msg, serializer.dumps(meta),
                                                     _wire.FLAGS_META_ON_CONNECT, {}))
            elif isinstance(event, InvokeRequest):
                serializer = get_serializer(event.msg.serializer_id)
                _obj, _method, (value,), _kwargs = serializer.loads_call(event.msg.payload())
                if self.cut_reply:  # half of a large reply (the argument back), then the end
                    reply = bytes(server.result_bytes(event.msg, serializer.dumps(value), 0, {}))
                    conn.sendall(reply[:len(reply) // 2])
                    return
                conn.sendall(server.result_bytes(event.msg, serializer.dumps(len(value)), 0, {}))
            else:
                return

    def messages(self) -> list[bytes]:
        """The messages received, each as its bytes on the wire."""
        out, pos = [], 0
        while pos < len(self.received):
            fields = _wire.HEADER.unpack_from(self.received, pos)
            end = pos + _wire.HEADER_SIZE + fields[5] + fields[7]
            out.append(bytes(self.received[pos:end]))
            pos = end
        return out


def joined_call(call: bytes, object_id: str, serializer: str, data: bytes, hmac_key: bytes | None = None,
                compression: bool = False) -> bytes:
    """``call`` (a captured size(data) request) as the client role makes it without
    ``gather``: joined into one. ``object_id`` is the sender's own string: marshal
    writes an interned string differently from an equal one that is not."""
    seq = _wire.HEADER.unpack_from(call)[4]
    conn = ClientProtocol(serializer, hmac_key=hmac_key, compression=compression, seq=seq - 1)
    conn.state = State.ESTABLISHED
    request = conn.invoke(object_id, "size", (data,), {})
    assert type(request.data) is bytes
    return request.data


@pytest.mark.parametrize("serializer", ["marshal", "serpent", "msgpack"])
@pytest.mark.parametrize("hmac_key, compression", [(None, False), (b"sekrit", False), (None, True),
                                                   (b"sekrit", True)], ids=["plain", "hmac", "compressed", "both"])
def test_a_large_call_puts_the_same_bytes_on_the_wire_as_joining_it_did(monkeypatch, serializer, hmac_key,
                                                                       compression):
    if serializer == "msgpack":
        pytest.importorskip("msgpack")
    monkeypatch.setattr(pyro_loops.config, "COMPRESSION", compression)
    peer = RecordingPeer(hmac_key)
    data = big()
    try:
        with Proxy(peer.uri) as proxy:
            proxy._pyroSerializer = serializer
            proxy._pyroHmacKey = hmac_key
            proxy._pyroTimeout = TIMEOUT
            assert proxy.size(data) == len(data)
            object_id = proxy._pyroUri.object
    finally:
        peer.close()
    connect, call = peer.messages()
    assert call == joined_call(call, object_id, serializer, data, hmac_key, compression)


def test_a_large_call_over_tls_puts_the_same_bytes_in_the_tls_stream(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    peer = RecordingPeer(tls=server_ctx)
    data = big()
    try:
        with Proxy(peer.uri) as proxy:
            proxy._pyroSerializer = "marshal"
            proxy._pyroSslContext = client_ctx
            proxy._pyroTimeout = TIMEOUT
            assert proxy.size(data) == len(data)
            assert isinstance(proxy._pyroConnection, ssl.SSLSocket)
            object_id = proxy._pyroUri.object
    finally:
        peer.close()
    call = peer.messages()[1]
    assert call == joined_call(call, object_id, "marshal", data)


def test_a_proxy_whose_peer_closes_in_the_middle_of_a_large_call_says_so_and_reconnects_for_the_next():
    peer = RecordingPeer(close_after=1024 * 1024)
    data = big(16 * 1024 * 1024)
    try:
        with Proxy(peer.uri) as proxy:
            proxy._pyroSerializer = "marshal"
            proxy._pyroTimeout = TIMEOUT
            proxy._pyroMaxRetries = 0
            with pytest.raises(errors.ConnectionClosedError):
                proxy.size(data)
            assert proxy._pyroConnection is None
            assert proxy.size(big()) == LARGE and peer.connections == 2
    finally:
        peer.close()


def test_a_proxy_whose_peer_closes_in_the_middle_of_a_large_reply_says_so():
    peer = RecordingPeer(cut_reply=True)
    try:
        with Proxy(peer.uri) as proxy:
            proxy._pyroSerializer = "marshal"
            proxy._pyroTimeout = TIMEOUT
            proxy._pyroMaxRetries = 0
            with pytest.raises(errors.ConnectionClosedError, match="connection lost"):
                proxy.size(big(4 * 1024 * 1024))
            assert proxy._pyroConnection is None
    finally:
        peer.close()


# --- the daemon's receive buffer -------------------------------------------------------------------


def receive(reader: _wire.FrameReader, seq: int, payload: bytes) -> tuple[_wire.Message, int]:
    """A message arriving as a socket gives it, its start first, then the rest; and the
    most memory the reader allocated meanwhile (traced)."""
    frame = _wire.encode(_wire.Message(_wire.MSG_INVOKE, payload, 3, 0, seq))
    start, rest = frame[:65536], frame[65536:]
    tracemalloc.start()
    try:
        reader.feed(start)
        assert reader.next_message() is None  # the payload's own buffer is set up now
        reader.feed(rest)
        message = reader.next_message()
        return message, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_payload_buffer_still_held_is_never_received_into_again():
    size = 2 * _wire.EXACT_RECEIVE_MIN
    reader = _wire.FrameReader()
    first, _ = receive(reader, 1, b"a" * size)
    second, _ = receive(reader, 2, b"b" * size)
    assert first.data == b"a" * size and second.data == b"b" * size
    view = memoryview(second.data)
    del second
    assert receive(reader, 3, b"c" * size)[0].data == b"c" * size and view == b"b" * size


def test_a_payload_buffer_nothing_holds_is_received_into_again_for_the_next_payload_of_about_its_size():
    size = 2 * _wire.EXACT_RECEIVE_MIN
    reader = _wire.FrameReader()
    allocated = receive(reader, 1, b"a" * size)[1]  # the message is dropped at once
    assert allocated >= size
    message, allocated = receive(reader, 2, b"b" * (size - 100))
    assert message.data == b"b" * (size - 100) and allocated < size // 2


# --- against stock Pyro4 4.82 ------------------------------------------------------------------------


@pytest.mark.parametrize("hmac", [None, "sekrit"])
def test_a_pyro4_daemon_gets_large_marshal_calls_from_the_proxy(hmac):
    with Pyro4Server(hmac=hmac, PYRO_SERIALIZERS_ACCEPTED="marshal,serpent") as server:
        with Proxy(server.uri) as proxy:
            proxy._pyroSerializer = "marshal"
            proxy._pyroHmacKey = hmac
            proxy._pyroTimeout = TIMEOUT
            for seed in (1, 2):
                data = big(2 * _wire.EXACT_RECEIVE_MIN, seed)
                assert proxy.echo(data) == data


class Echo:
    @pyro_loops.expose
    def echo(self, value):
        return value


def test_a_pyro4_client_gets_its_large_marshal_calls_answered_by_the_daemon_call_after_call():
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Echo(), "echo")
    with serving(daemon), pyro4_client(PYRO_SERIALIZER="marshal") as client:
        size = 2 * _wire.EXACT_RECEIVE_MIN
        answers = client.run(
            "import hashlib\n"
            "p = Pyro4.Proxy(uri)\n"
            "[hashlib.sha1(p.echo(bytes([s]) * size)).hexdigest() == hashlib.sha1(bytes([s]) * size).hexdigest()"
            " for s in (1, 2, 3)]", uri=str(uri), size=size, timeout=60)
    assert answers == [True, True, True]


# --- the loop client and the daemon send large messages as the socket allows ----------------------


def test_the_loop_client_puts_a_large_call_on_the_wire_with_the_same_bytes_as_joining_it_did(host, client):
    peer = RecordingPeer()
    data = big(4 * 1024 * 1024)
    try:
        proxy = client.proxy(peer.uri)
        proxy._pyroSerializer = "marshal"
        assert host.settle(proxy.size(data), timeout=60).result() == len(data)
        object_id = proxy._pyroUri.object
    finally:
        peer.close()
    call = peer.messages()[1]
    assert call == joined_call(call, object_id, "marshal", data)


def test_a_large_reply_reaches_a_slow_reader_whole_while_the_daemon_keeps_answering_others():
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Echo(), "echo")
    data = big(8 * 1024 * 1024)
    with serving(daemon):
        slow = socket.create_connection(daemon.sock.getsockname(), timeout=TIMEOUT)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        conn = ClientProtocol("marshal")
        slow.sendall(conn.connect("echo", metadata=False))
        conn.receive_data(read_message(slow))
        conn.next_event()
        slow.sendall(conn.invoke("echo", "echo", (data,), {}).data)
        started = slow.recv(65536)  # the reply is on its way; most of it waits in the daemon
        with Proxy(uri) as other:
            other._pyroTimeout = TIMEOUT
            assert [other.echo(n) for n in range(20)] == list(range(20))
        reply = read_message(slow, started, pause=0.001)
        assert reply, "the daemon closed the connection"
        slow.close()
    conn.receive_data(reply)
    event = conn.next_event()
    assert event.value == data and conn.next_event() is None


def test_an_idle_worker_holds_nothing_of_the_job_it_ran():
    """A worker waiting for its next job must not keep the last one's closure (under the
    thread server that is a call's request and arguments, a large payload among them)."""
    from pyro_loops._workers import WorkerPool

    class Argument:
        pass

    pool = WorkerPool(1)
    ran = threading.Event()
    argument = Argument()
    gone = threading.Event()
    weak = weakref.ref(argument, lambda _: gone.set())
    pool.submit(lambda held=argument: ran.set())
    del argument
    try:
        assert ran.wait(TIMEOUT)
        assert gone.wait(TIMEOUT), f"the idle worker still holds {weak()!r}"
    finally:
        pool.close()
