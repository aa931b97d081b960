"""Connection-level abuse (issue 6): many half-open connections, a client that
never reads its replies, floods of oneway calls, reconnect storms, the
connection cap, idle connections, and clients that vanish mid-call. Each limit
is hit on purpose; the test checks that it was logged and that a well-behaved
client is served meanwhile. No call is lost: every accepted call is answered or
its connection closed with a logged reason.
"""

import logging
import os
import socket
import threading
import time

import pytest

from pyro_loops import Daemon, config, expose, in_worker, oneway
from pyro_loops import _wire
from pyro_loops._serializers import get_serializer
from _util import wait_until
from test_daemon import TIMEOUT, RawClient, proxy_for, serving, wait_closed, wait_for

SERPENT = get_serializer("serpent")


@expose
class Service:
    def __init__(self):
        self.fired = 0
        self.release = threading.Event()
        self.started = threading.Event()

    def echo(self, value):
        return value

    def big(self, size):
        return b"x" * size

    @oneway
    def fire(self):
        self.fired += 1

    @in_worker
    def slow(self):
        self.started.set()
        self.release.wait(TIMEOUT)
        return "done"


@pytest.fixture
def service():
    return Service()


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    return caplog


def start(service, **settings):
    for name, value in settings.items():
        setattr(config, name, value)
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(service, "svc")
    return daemon, uri


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_slowloris_half_open_connections_do_not_delay_a_client_and_are_closed(service, logs):
    # LOG_REPEAT_LIMIT 0: every closed connection is logged, so the test can count them
    daemon, uri = start(service, HALF_FRAME_TIMEOUT=0.5, LOG_REPEAT_LIMIT=0)
    header = _wire.encode(_wire.Message(_wire.MSG_CONNECT, SERPENT.dumps({"handshake": "hello"}), 1))
    stalled = []
    with serving(daemon):
        try:
            for i in range(200):
                sock = socket.create_connection(("127.0.0.1", uri.port), timeout=TIMEOUT)
                sock.sendall(header[:1 + i % 23])  # part of a header, never the rest
                stalled.append(sock)
            with proxy_for(uri) as good:
                for i in range(20):
                    assert good.echo(i) == i
            assert all(wait_closed(sock) for sock in stalled)
            with proxy_for(uri) as good:
                assert good.echo("after") == "after"
        finally:
            for sock in stalled:
                sock.close()
        wait_for(lambda: len(daemon._conns) == 0)
    assert logs.text.count("message incomplete after 0.5 s") == 200


def test_frame_trickling_in_byte_by_byte_is_closed_at_the_half_frame_deadline(service, logs):
    daemon, uri = start(service, HALF_FRAME_TIMEOUT=0.4)
    frame = _wire.encode(_wire.Message(_wire.MSG_CONNECT, SERPENT.dumps({"handshake": "hello"}), 1))
    with serving(daemon), RawClient(uri.port) as trickler:
        try:
            for byte in frame:  # one byte every 50 ms: 2.5 s for the frame, each byte "on time"
                trickler.send(bytes([byte]))
                time.sleep(0.05)
        except OSError:  # the daemon closed the connection under us
            pass
        assert trickler.closed_by_peer()
        with proxy_for(uri) as good:
            assert good.echo("served") == "served"
    assert "message incomplete after 0.4 s" in logs.text


def test_client_that_never_reads_its_replies_is_cut_off_at_the_output_limit(service, logs):
    daemon, uri = start(service, MAX_OUTPUT_BUFFER=1_000_000)
    with serving(daemon), RawClient(uri.port) as hog:
        hog.handshake()
        hog.send_call("svc", "big", (20_000_000,))  # far beyond socket buffers plus the limit
        with proxy_for(uri) as good:
            assert good.echo("served") == "served"
        assert hog.closed_by_peer()
        with proxy_for(uri) as good:
            assert good.echo("still served") == "still served"
    assert "more than MAX_OUTPUT_BUFFER (1000000 bytes)" in logs.text


def test_unread_replies_stop_the_daemon_reading_more_calls_instead_of_buffering_them(service):
    daemon, uri = start(service)
    calls, size = 60, 400_000  # 24 MB of replies asked for, none read for a while
    with serving(daemon), RawClient(uri.port) as lazy:
        lazy.handshake()
        for seq in range(1, calls + 1):
            lazy.send_call("svc", "big", (size,), seq=seq)
        with proxy_for(uri) as good:
            for _ in range(5):
                assert good.echo("served") == "served"
        buffered = sum(len(conn.out) for conn in list(daemon._conns.values()))
        assert buffered < 4_000_000, f"{buffered} bytes of replies held for a client that does not read"
        for seq in range(1, calls + 1):  # every call is answered, in order, once the client reads
            reply = lazy.read_message()
            assert (reply.type, reply.seq) == (_wire.MSG_RESULT, seq)
            assert SERPENT.loads(reply.data) == b"x" * size


def test_flood_of_oneway_calls_runs_every_call_and_others_are_served_meanwhile(service):
    daemon, uri = start(service)
    flood = b"".join(_wire.encode(_wire.Message(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", "fire", (), {}), 1,
                                                _wire.FLAGS_ONEWAY, seq & 0xFFFF)) for seq in range(20_000))
    with serving(daemon), RawClient(uri.port) as flooder:
        flooder.handshake()
        sender = threading.Thread(target=flooder.send, args=(flood,))
        sender.start()
        with proxy_for(uri) as good:
            for i in range(20):
                assert good.echo(i) == i
        sender.join(TIMEOUT)
        assert flooder.call("svc", "echo", ("last",), seq=1) == (False, "last")
        # requestLoop() is a thread server: oneway calls run in the background, as in Pyro4
        wait_until(lambda: service.fired == 20_000)
        assert flooder.reader.buffered == 0  # not one reply to a oneway call


def test_reconnect_storm_leaks_no_connections_or_file_descriptors(service):
    daemon, uri = start(service)
    with serving(daemon):
        with proxy_for(uri) as warm:
            warm.echo(0)
        fds_before = open_fds()
        errors = []

        def storm():
            try:
                for i in range(50):
                    with proxy_for(uri) as proxy:
                        assert proxy.echo(i) == i
                    with RawClient(uri.port) as raw:  # and some that leave without a word
                        raw.send(b"PYRO")
            except Exception as exc:  # reported below; a thread cannot fail the test itself
                errors.append(exc)

        threads = [threading.Thread(target=storm) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 3)
        assert errors == []
        wait_for(lambda: len(daemon._conns) == 0)
        assert open_fds() <= fds_before + 2
        with proxy_for(uri) as proxy:
            assert proxy.echo("after the storm") == "after the storm"


def test_connections_beyond_max_connections_are_closed_and_logged_while_others_are_served(service, logs):
    daemon, uri = start(service, MAX_CONNECTIONS=5)
    with serving(daemon):
        good = proxy_for(uri)
        assert good.echo(1) == 1
        idle = [RawClient(uri.port) for _ in range(4)]
        try:
            for client in idle:
                client.handshake()
            with RawClient(uri.port) as refused:
                assert refused.closed_by_peer()
            assert good.echo(2) == 2
            assert idle[0].call("svc", "echo", ("idle ones too",)) == (False, "idle ones too")
            idle.pop().close()
            wait_for(lambda: len(daemon._conns) == 4)
            with proxy_for(uri) as newcomer:
                assert newcomer.echo(3) == 3
        finally:
            for client in idle:
                client.close()
            good._pyroRelease()
    assert "MAX_CONNECTIONS (5) reached" in logs.text


def test_idle_connections_are_closed_after_idle_timeout_and_logged(service, logs):
    daemon, uri = start(service, IDLE_TIMEOUT=0.3)
    with serving(daemon), RawClient(uri.port) as idle:
        idle.handshake()
        assert idle.closed_by_peer()
        with proxy_for(uri) as proxy:
            assert proxy.echo("fresh") == "fresh"
    assert "idle for 0.3 s" in logs.text


def test_pyro4_commtimeout_also_closes_idle_connections(service, logs):
    # Pyro4's daemons drop clients idle longer than COMMTIMEOUT; IDLE_TIMEOUT 0 defers to it
    daemon, uri = start(service, COMMTIMEOUT=0.3)
    with serving(daemon), RawClient(uri.port) as idle:
        idle.handshake()
        assert idle.closed_by_peer()
    assert "idle for 0.3 s" in logs.text


def test_busy_connection_is_not_closed_as_idle(service):
    daemon, uri = start(service, IDLE_TIMEOUT=0.3)
    with serving(daemon), RawClient(uri.port) as client:
        client.handshake()
        client.send_call("svc", "slow")
        assert service.started.wait(TIMEOUT)
        threading.Timer(1.0, service.release.set).start()  # a call that outlives the idle timeout
        reply = client.read_message()
        assert SERPENT.loads(reply.data) == "done"


@pytest.mark.parametrize("servertype", ["multiplex", "thread"])
def test_client_gone_while_its_call_runs_is_closed_with_a_logged_reason(service, logs, servertype):
    daemon, uri = start(service, SERVERTYPE=servertype)
    with serving(daemon), proxy_for(uri) as good:
        assert good.echo("connected") == "connected"
        client = RawClient(uri.port)
        client.handshake()
        address = client.sock.getsockname()
        client.send_call("svc", "slow")
        assert service.started.wait(TIMEOUT)
        client.close()
        service.release.set()
        assert good.echo("served") == "served"
        wait_for(lambda: len(daemon._conns) == 1)  # only the good client's connection is left
    assert any(str(address) in record.getMessage() for record in logs.records), \
        "the vanished client's connection was closed without a logged reason"


def test_many_concurrent_clients_get_every_answer(service):
    daemon, uri = start(service, SERVERTYPE="thread")
    failures = []

    def client(n):
        try:
            with proxy_for(uri) as proxy:
                for i in range(30):
                    proxy.fire()
                    if proxy.echo((n, i)) != (n, i):
                        failures.append((n, i))
        except Exception as exc:
            failures.append(exc)

    with serving(daemon):
        threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 3)
        wait_for(lambda: service.fired == 600)
    assert failures == []
