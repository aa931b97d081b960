"""Every resource a client can make the daemon hold has a bound (issue 10).

Each bound is hit on purpose over real sockets: the test checks what the
offender is told (or what is logged), names the configuration item that set
the bound, and that well-behaved clients are served meanwhile with nothing
they sent lost.
"""

import gc
import logging
import select
import socket
import threading
import time
import weakref

import pytest

from pyro_loops import Daemon, config, errors, expose, in_worker, oneway
from pyro_loops import _wire
from pyro_loops._serializers import get_serializer
from _util import pyro4_client
from test_daemon import TIMEOUT, RawClient, proxy_for, served_by_select_loop, serving, wait_closed, wait_for

SERPENT = get_serializer("serpent")


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    return caplog


@expose
class Service:
    def echo(self, value):
        return value

    def count(self, n):
        return iter(range(n))


def start(service, **settings):
    for name, value in settings.items():
        setattr(config, name, value)
    daemon = Daemon(host="127.0.0.1")
    return daemon, daemon.register(service, "svc")


# --- handshake deadline ---------------------------------------------------------------------


def test_silent_connections_are_refused_after_handshake_timeout_and_free_their_slots(logs):
    daemon, uri = start(Service(), HANDSHAKE_TIMEOUT=0.3, MAX_CONNECTIONS=4)
    with serving(daemon):
        silent = [socket.create_connection(("127.0.0.1", uri.port), timeout=TIMEOUT) for _ in range(4)]
        try:
            for sock in silent:
                reader = _wire.FrameReader()
                sock.settimeout(TIMEOUT)
                while (reply := reader.next_message()) is None:
                    chunk = sock.recv(65536)
                    assert chunk, "closed without a CONNECTFAIL"
                    reader.feed(chunk)
                assert reply.type == _wire.MSG_CONNECTFAIL
                assert "HANDSHAKE_TIMEOUT" in get_serializer(reply.serializer_id).loads(reply.data)
                assert wait_closed(sock)
        finally:
            for sock in silent:
                sock.close()
        # the slots they held are free again: a real client connects and is served
        with proxy_for(uri) as proxy:
            assert proxy.echo("in") == "in"
            time.sleep(0.6)  # past the deadline: a connection that completed its handshake stays
            assert proxy.echo("still in") == "still in"
    assert logs.text.count("no handshake within HANDSHAKE_TIMEOUT (0.3 s)") == 4


# --- item streams ---------------------------------------------------------------------------


def test_open_streams_per_connection_are_bounded_with_an_error_naming_the_item():
    daemon, uri = start(Service(), ITER_STREAMS_MAX_PER_CONNECTION=3)
    with serving(daemon), proxy_for(uri) as proxy, proxy_for(uri) as other:
        streams = [proxy.count(10) for _ in range(3)]
        assert [next(stream) for stream in streams] == [0, 0, 0]
        with pytest.raises(errors.PyroError, match=r"ITER_STREAMS_MAX_PER_CONNECTION \(3\)"):
            next(proxy.count(10))
        assert list(other.count(3)) == [0, 1, 2]  # the bound is per connection
        streams[0].close()
        assert proxy.echo("sync") == "sync"  # the oneway close_stream was handled before this
        assert list(proxy.count(2)) == [0, 1]  # room again
        assert [next(stream) for stream in streams[1:]] == [1, 1]  # the open ones were kept


@pytest.mark.pyro4
def test_a_stock_pyro4_client_is_told_which_item_bounds_its_streams():
    daemon, uri = start(Service(), ITER_STREAMS_MAX_PER_CONNECTION=2)
    with serving(daemon), pyro4_client() as pyro4:
        error = pyro4.run("""
p = Pyro4.Proxy(uri)
kept = [p.count(5), p.count(5)]
first = [next(s) for s in kept]
try:
    p.count(5)
    error = None
except Pyro4.errors.PyroError as exc:
    error = (type(exc).__name__, str(exc))
p._pyroRelease()
error
""", uri=str(uri))
    assert error[0] == "PyroError" and "ITER_STREAMS_MAX_PER_CONNECTION (2)" in error[1]


def test_stream_lifetime_ends_a_stream_still_in_use():
    daemon, uri = start(Service(), ITER_STREAM_LIFETIME=0.3)
    with serving(daemon), proxy_for(uri) as proxy:
        stream = proxy.count(100)
        assert next(stream) == 0
        wait_for(lambda: len(daemon._streams) == 0)
        with pytest.raises(errors.PyroError, match="item stream terminated"):
            next(stream)


def test_streams_of_a_closed_connection_end_at_once_when_they_may_not_linger():
    daemon, uri = start(Service(), ITER_STREAM_LINGER=0.0)
    with serving(daemon):
        proxy = proxy_for(uri)
        streams = [proxy.count(10), proxy.count(10)]
        assert [next(stream) for stream in streams] == [0, 0]
        assert len(daemon._streams) == 2
        proxy._pyroRelease()
        wait_for(lambda: len(daemon._streams) == 0)


# --- queued worker jobs per connection ------------------------------------------------------


@expose
class Flooded:
    def __init__(self):
        self.ran = 0
        self.lock = threading.Lock()

    @oneway
    @in_worker
    def flood(self):
        time.sleep(0.005)
        with self.lock:
            self.ran += 1

    @in_worker
    def flood_calls_run(self):
        return self.ran


@pytest.mark.parametrize("host", [serving, served_by_select_loop])
def test_a_oneway_flood_is_held_back_per_connection_and_still_runs_every_call(logs, host):
    calls, limit = 300, 8
    service = Flooded()
    daemon, uri = start(service, THREADPOOL_SIZE=2, THREADPOOL_SIZE_MIN=1, MAX_QUEUED_JOBS_PER_CONNECTION=limit)
    flood = SERPENT.dumps_call("svc", "flood", (), {})
    frames = b"".join(_wire.encode(_wire.Message(_wire.MSG_INVOKE, flood, SERPENT.serializer_id,
                                                 _wire.FLAGS_ONEWAY, seq))
                      for seq in range(calls))
    with host(daemon), RawClient(uri.port) as flooder, proxy_for(uri) as other:
        flooder.handshake()
        other._pyroBind()
        sender = threading.Thread(target=flooder.send, args=(frames,), daemon=True)
        sender.start()  # blocks in sendall while the daemon holds the flood back
        wait_for(lambda: service.ran >= 10)
        before = service.ran
        ran_first = other.flood_calls_run() - before
        # Queued behind the other client's call: only what one connection may queue, not the whole flood
        assert ran_first <= 3 * limit, f"{ran_first} flood calls ran ahead of the other client's call"
        sender.join(TIMEOUT)
        wait_for(lambda: service.ran == calls)
        assert flooder.call("svc", "flood_calls_run", seq=calls) == (False, calls)  # still connected
    assert "MAX_QUEUED_JOBS_PER_CONNECTION (8)" in logs.text


# --- buffered input across all connections --------------------------------------------------


def closed_now(sock: socket.socket) -> bool:
    """True if the daemon has closed ``sock`` (without waiting)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def test_huge_bodies_from_many_peers_close_the_largest_and_honest_calls_are_served(logs):
    limit, sent = 1024 * 1024, 400 * 1024
    daemon, uri = start(Service(), MAX_BUFFERED_INPUT=limit, HALF_FRAME_TIMEOUT=60.0)  # not what closes them
    huge = 2**31 - 1  # each announces a 2 GiB body and sends part of it
    header = _wire.HEADER.pack(_wire.TAG, _wire.PROTOCOL_VERSION, _wire.MSG_INVOKE, 0, 1, huge,
                               SERPENT.serializer_id, 0, 0,
                               _wire.checksum(_wire.MSG_INVOKE, 0, 1, huge, SERPENT.serializer_id, 0))
    with serving(daemon):
        offenders = [RawClient(uri.port) for _ in range(4)]
        try:
            for offender in offenders:
                offender.handshake()
            wait_for(lambda: len(daemon._conns) == 4)
            connections = [weakref.ref(conn) for conn in list(daemon._conns.values())]
            for offender in offenders:
                offender.send(header + b"x" * sent)
            wait_for(lambda: sum(closed_now(o.sock) for o in offenders) >= 2)
            with proxy_for(uri) as honest:  # its call tips the total over the bound, yet it is served
                assert honest.echo(b"y" * (300 * 1024)) == b"y" * (300 * 1024)
            closed = sum(closed_now(o.sock) for o in offenders)
            assert closed >= 2
            assert daemon._connections.input.total <= limit
            gc.collect()
            assert sum(ref() is None for ref in connections) == closed  # their buffers are freed
        finally:
            for offender in offenders:
                offender.close()
    assert logs.text.count(f"MAX_BUFFERED_INPUT ({limit} bytes) exceeded by all connections") >= closed


# --- the deadline heap ----------------------------------------------------------------------


def test_keyed_heap_orders_keys_and_stays_small_however_often_they_are_rescheduled():
    from pyro_loops._deadlines import KeyedHeap

    heap = KeyedHeap()
    for round_ in range(1000):
        for key in range(10):
            heap.set(key, round_ + key)  # every key moves on, as a connection's deadline does
    assert len(heap) == 10 and len(heap._heap) <= 2 * 10 + 64
    heap.discard(0)
    assert heap.first() == (1, 1000)
    assert list(heap.pop_due(1002)) == [1, 2, 3]
    assert heap.get(9) == 1008 and 1 not in heap
