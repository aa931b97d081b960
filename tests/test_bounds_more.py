"""More bounds: the ones test_bounds.py does not pin (the blocking proxy's handshake,
TLS output, item streams over all connections, exact-size receives, json nesting).

As there, each bound is hit on purpose over real sockets (TLS with certificates
made at test time): the test checks what the offender is told or what is
logged, and that the message names the configuration item that set the bound.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import pyro_loops
from pyro_loops import _wire, errors

from pyro_loops._serializers import get_serializer
from pyro_loops.daemon import Daemon
from _client_hosts import host, reported  # noqa: F401
from _util import TIMEOUT, wait_until
from test_daemon import RawClient, serving
from test_tls import Echo, closing_lines, pki  # noqa: F401


# --- the blocking proxy's handshake -------------------------------------------------------------


@contextlib.contextmanager
def silent_server(drip: bytes = b""):
    """A TCP server that accepts and reads everything but never answers; with ``drip``, it
    sends those bytes one every 0.05 s (a reply that never completes, yet never idles)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def drain(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.settimeout(0.05)
            for byte in drip:
                if stop.is_set():
                    return
                conn.send(bytes([byte]))
                with contextlib.suppress(socket.timeout):
                    conn.recv(65536)
            while not stop.is_set():
                with contextlib.suppress(socket.timeout):
                    if conn.recv(65536) == b"":
                        return

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                accepted.append(conn)
                threading.Thread(target=drain, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        for conn in accepted:
            conn.close()


def call_in_thread(fn) -> BaseException | None:
    """What ``fn()`` raised, run in a thread given TIMEOUT seconds (a hang fails the test, not the run)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert outcome, f"still waiting after {TIMEOUT} s"
    return outcome[0]


def proxy_call(port: int, ssl_context=None, timeout: float | None = None):
    def call() -> None:
        with pyro_loops.Proxy(f"PYRO:x@127.0.0.1:{port}") as proxy:
            proxy._pyroSslContext = ssl_context
            proxy._pyroTimeout = timeout
            proxy.echo(1)
    return call


def assert_handshake_timeout(exc: BaseException | None, port: int) -> None:
    assert isinstance(exc, errors.CommunicationError), repr(exc)
    assert str(exc).startswith(f"cannot connect to ('127.0.0.1', {port}): ")
    assert "HANDSHAKE_TIMEOUT (0.3 s)" in str(exc)


def test_proxy_without_commtimeout_to_a_silent_tls_server_fails_at_handshake_timeout(pki):
    pyro_loops.config.HANDSHAKE_TIMEOUT = 0.3
    with silent_server() as port:
        assert_handshake_timeout(call_in_thread(proxy_call(port, pki.client_ctx())), port)


def test_proxy_without_commtimeout_to_a_server_that_never_answers_connect_fails_at_handshake_timeout():
    pyro_loops.config.HANDSHAKE_TIMEOUT = 0.3
    with silent_server() as port:
        assert_handshake_timeout(call_in_thread(proxy_call(port)), port)


def test_proxy_handshake_timeout_is_one_deadline_for_a_reply_dripped_a_byte_at_a_time():
    pyro_loops.config.HANDSHAKE_TIMEOUT = 0.3
    reply = _wire.encode(_wire.Message(_wire.MSG_CONNECTOK, b"x" * 100, 1, 0, 0, {}))
    with silent_server(drip=reply[:-1]) as port:  # some 6 s of bytes, each well within any timeout
        assert_handshake_timeout(call_in_thread(proxy_call(port)), port)


def test_proxy_commtimeout_shorter_than_handshake_timeout_still_raises_pyro4s_timeout(pki):
    with silent_server() as port:
        exc = call_in_thread(proxy_call(port, pki.client_ctx(), timeout=0.2))
    assert isinstance(exc, errors.TimeoutError) and "HANDSHAKE_TIMEOUT" not in str(exc)


def test_proxy_handshake_timeout_zero_leaves_the_handshake_to_commtimeout():
    pyro_loops.config.HANDSHAKE_TIMEOUT = 0.0
    with silent_server() as port:
        exc = call_in_thread(proxy_call(port, timeout=0.3))
    assert isinstance(exc, errors.TimeoutError) and "HANDSHAKE_TIMEOUT" not in str(exc)


# --- TLS output counts towards the output bounds ------------------------------------------------


@pytest.mark.parametrize("item, says", [("MAX_BUFFERED_OUTPUT", "exceeded by all connections together"),
                                        ("MAX_OUTPUT_BUFFER", "of replies unread by the client")])
def test_tls_records_held_for_a_peer_that_never_reads_count_towards_the_output_bounds(pki, caplog, item, says):
    # A reply under one TLS chunk is taken whole by the TLS layer: the connection's own
    # buffer stays empty, and only the layer's ciphertext waits for the socket.
    caplog.set_level(logging.INFO, logger="pyro_loops")
    setattr(pyro_loops.config, item, 16_000)
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    uri = daemon.register(Echo(), "echo")
    daemon.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # accepted sockets inherit it
    with serving(daemon):
        reader = RawClient(uri.port)
        reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.sock = pki.client_ctx().wrap_socket(reader.sock, server_hostname="127.0.0.1")
        try:
            reader.handshake()
            reader.send_call("echo", "echo", ("x" * 60_000,))
            wait_until(lambda: any(item in line and says in line for line in closing_lines(caplog)))
        finally:
            reader.sock.close()


# --- item streams over all connections -----------------------------------------------------------


@pyro_loops.expose
class Counter:
    def count(self, n):
        return iter(range(n))

    def echo(self, value):
        return value


def test_open_streams_over_all_connections_are_bounded_and_lingering_ones_give_way_first(caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    pyro_loops.config.ITER_STREAMS_MAX = 3
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Counter(), "counter")
    with serving(daemon), pyro_loops.Proxy(uri) as gone, pyro_loops.Proxy(uri) as busy, \
            pyro_loops.Proxy(uri) as other:
        lingering = [gone.count(10), gone.count(10)]
        assert [next(stream) for stream in lingering] == [0, 0]
        gone._pyroRelease()  # its streams linger (ITER_STREAM_LINGER) for a client that comes back
        wait_until(lambda: len(daemon._streams) == 2 and not daemon._streams._by_owner)
        kept = [busy.count(10)]
        assert next(kept[0]) == 0
        for _ in range(2):  # each new stream ends the stream that has lingered longest
            kept.append(busy.count(10))
            assert next(kept[-1]) == 0
        assert len(daemon._streams) == 3
        assert sum("ITER_STREAMS_MAX (3)" in r.getMessage() and "lingered" in r.getMessage()
                   for r in caplog.records) == 2
        gone._pyroReconnect()  # its client comes back, too late
        with pytest.raises(errors.PyroError, match="item stream terminated"):
            next(lingering[0])
        for proxy in (busy, other):  # none lingers now: new streams are refused, on every connection
            with pytest.raises(errors.PyroError, match=r"ITER_STREAMS_MAX \(3\)"):
                next(proxy.count(10))
        assert any("refused" in r.getMessage() and "ITER_STREAMS_MAX (3)" in r.getMessage()
                   for r in caplog.records)
        assert [next(stream) for stream in kept] == [1, 1, 1]  # the open ones were kept
        kept[0].close()
        assert other.echo("sync") == "sync"  # the oneway close_stream was handled before this
        assert list(other.count(2)) == [0, 1]  # room again


# --- payload buffers made at their announced size -------------------------------------------------


def test_payload_buffers_made_at_their_announced_size_count_in_full_towards_max_buffered_input(caplog):
    # A body from EXACT_RECEIVE_MIN to EXACT_RECEIVE_SIZE gets its whole buffer as soon as its
    # header is in: peers that announce 16 MB and send one byte must not hold 16 MB each unbounded.
    caplog.set_level(logging.INFO, logger="pyro_loops")
    limit, announced = 40 * 1024 * 1024, _wire.EXACT_RECEIVE_SIZE
    pyro_loops.config.MAX_BUFFERED_INPUT = limit
    pyro_loops.config.HALF_FRAME_TIMEOUT = 60.0  # not what closes them
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Counter(), "counter")
    serpent_id = get_serializer("serpent").serializer_id
    header = _wire.HEADER.pack(_wire.TAG, _wire.PROTOCOL_VERSION, _wire.MSG_INVOKE, 0, 1, announced, serpent_id,
                               0, 0, _wire.checksum(_wire.MSG_INVOKE, 0, 1, announced, serpent_id, 0))
    with serving(daemon):
        offenders = [RawClient(uri.port) for _ in range(4)]
        try:
            for offender in offenders:
                offender.handshake()
                offender.send(header + b"x")
            wait_until(lambda: sum(f"MAX_BUFFERED_INPUT ({limit} bytes) exceeded" in r.getMessage()
                                   for r in caplog.records) >= 2)  # the third and the fourth tip it over
            assert daemon._connections.input.total == 2 * (_wire.HEADER_SIZE + announced)
            with pyro_loops.Proxy(uri) as honest:
                assert honest.echo("still served") == "still served"
        finally:
            for offender in offenders:
                offender.close()


# --- json nesting: one limit on every Python ----------------------------------------------------


def nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def nested_json(depth: int) -> bytes:
    return b'{"a": ' * (depth // 2) + b"[" * (depth - depth // 2) + b"]" * (depth - depth // 2) + \
        b"}" * (depth // 2)


@pytest.mark.parametrize("decoder", ["in one go", "step by step"])
def test_json_reads_200_levels_of_arrays_and_objects_and_refuses_201_on_every_python(decoder):
    if decoder == "step by step":
        pyro_loops.config.MAX_BLOCKING_DECODE = 100  # the decoder for large payloads
    ser = get_serializer("json")
    assert ser.loads(nested_json(200) + b" " * 200) is not None
    with pytest.raises(errors.SerializeError, match="nested too deeply: more than 200 levels"):
        ser.loads(nested_json(201) + b" " * 200)


@pytest.mark.parametrize("encoder", ["in one go", "step by step"])
def test_json_writes_200_levels_and_refuses_201_on_every_python(encoder):
    ser = get_serializer("json")
    dumps = ser.dumps if encoder == "in one go" else ser.dumps_large
    assert ser.loads(dumps(nested_list(200))) == nested_list(200)
    with pytest.raises(errors.SerializeError, match="nested too deeply: more than 200 levels"):
        dumps(nested_list(201))


def test_json_brackets_inside_strings_do_not_count_as_nesting():
    ser = get_serializer("json")
    tricky = ['[[[{{{' * 1000, 'a \\" [[[ " \\\\', "\\" * 7 + '"' + "[" * 500]
    for value in (tricky, [tricky] * 3, {"k[": tricky}):
        assert ser.loads(ser.dumps(value)) == value
        assert ser.loads(ser.dumps_large(value)) == value


@settings(max_examples=60, deadline=None)
@given(strings=st.lists(st.text(alphabet='[]{}"\\ab\n\u00e9', max_size=12), min_size=1, max_size=6),
       depth=st.sampled_from([3, 7, 9, 150, 199, 200, 201, 260]), width=st.integers(0, 40),
       as_object=st.booleans())
@example(strings=['"[', "\\"], depth=200, width=3, as_object=True)
@example(strings=['"]', "\\"], depth=201, width=3, as_object=True)
def test_json_depth_limit_holds_whatever_the_strings_and_the_shape_around_the_deepest_value(
        strings, depth, width, as_object):
    deepest: object = strings
    for level in range(depth - 2):
        deepest = {strings[level % len(strings)]: deepest} if as_object and level % 2 else [deepest]
    wide = [[s, [s]] for s in strings] * width  # shallow neighbours before and after the deep value
    value = wide + [deepest] + wide  # ``depth`` levels of arrays and objects
    ser = get_serializer("json")
    for dumps in (ser.dumps, ser.dumps_large):
        if depth <= 200:
            assert ser.loads(dumps(value)) == value
        else:
            with pytest.raises(errors.SerializeError, match="nested too deeply"):
                dumps(value)
    if depth > 200:
        text = json.dumps(value).encode()
        with pytest.raises(errors.SerializeError, match="nested too deeply"):
            ser.loads(text)


def test_loop_client_handshake_timeout_is_one_deadline_for_a_reply_dripped_a_byte_at_a_time(host, reported):
    # The loop Client had this bound already (one timer from connect to CONNECTOK); pinned here
    # beside the proxy's.
    pyro_loops.config.HANDSHAKE_TIMEOUT = 0.3
    reply = _wire.encode(_wire.Message(_wire.MSG_CONNECTOK, b"x" * 100, 1, 0, 0, {}))
    with silent_server(drip=reply[:-1]) as port, pyro_loops.Client() as client:
        host.attach(client)
        call = host.settle(client.proxy(f"PYRO:x@127.0.0.1:{port}").echo(1))
        with pytest.raises(errors.CommunicationError, match="HANDSHAKE_TIMEOUT"):
            call.result()
