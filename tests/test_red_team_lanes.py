"""Red team of the three quick ways through: the daemon's call lane, the blocking
Proxy's quick path under threads sharing one proxy, and bulk sends through
``_wire.Outbox``.

Hostile and odd peers over real sockets on 127.0.0.1. Where the lane is
attacked, a daemon with the lane switched off (``_connections.lane = False``)
answers the same bytes and must give the same replies and run the same calls.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any

import pytest
from _client_hosts import client, host, reported  # noqa: F401 - fixtures
from _util import TIMEOUT, wait_until
from test_fast_daemon import (
    RawClient,
    Recorder,
    comparable,
    read_message,
    request_bytes,
    served,
)
from test_tls import pki  # noqa: F401 - fixture

from pyro_loops import (
    Daemon,
    Proxy,
    _wire,
    config,
    current_context,
    errors,
    expose,
    in_worker,
)
from pyro_loops._connections import _unsent
from pyro_loops._protocol import ClientProtocol, ConnectRequest, ServerProtocol
from pyro_loops._serializers import get_serializer

CORR = b"r" * 16


def replies_of(data: bytes) -> list[tuple]:
    """Every whole message in ``data``, comparable (see test_fast_daemon.comparable)."""
    reader = _wire.FrameReader(0)
    reader.feed(data)
    out = []
    while (msg := reader.next_message()) is not None:
        out.append(comparable(_wire.encode(msg), CORR))
    return out


def read_all(sock: socket.socket) -> bytes:
    """What ``sock`` receives until the daemon closes it."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_messages(sock: socket.socket, count: int) -> list[tuple]:
    """The next ``count`` messages ``sock`` receives, comparable."""
    data = b""
    while len(found := replies_of(data)) < count:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(found)} of {count} replies"
        data += chunk
    return found


# --- 1. the daemon's call lane ---------------------------------------------------------------------

def both(send: Any) -> list[tuple[Any, list]]:
    """``send(server, client)`` against a lane daemon and one with the lane off: what each gave back
    and the calls each object recorded (name and arguments)."""
    outcomes = []
    for lane in (True, False):
        with served(lane=lane) as server:
            client = RawClient(server)
            try:
                result = send(server, client)
            finally:
                client.close()
            outcomes.append((result, [call[:2] for call in server.obj.calls]))
    return outcomes


def test_pipelined_calls_in_one_segment_are_each_answered_once_in_order():
    def send(server, client):
        client.sock.sendall(b"".join(request_bytes("obj", "echo", (n,), CORR, n) for n in range(1, 6)))
        return read_messages(client.sock, 5)

    lane, general = both(send)
    assert lane == general
    assert lane[1] == [("echo", (n,)) for n in range(1, 6)]


def test_a_lane_call_split_at_every_byte_is_answered_once():
    request = request_bytes("obj", "echo", (7,), CORR, 1)
    with served() as server:
        client = RawClient(server)
        for cut in range(1, len(request)):
            client.sock.sendall(request[:cut])
            wait_until(lambda: server.daemon._connections.input.total or True)
            time.sleep(0.002)  # a read of its own for the first part, mostly
            client.sock.sendall(request[cut:])
            assert comparable(read_message(client.sock), CORR)[2] == 1
        client.close()
        assert len(server.obj.calls) == len(request) - 1


@pytest.mark.parametrize("garbage", [b"x", b"PYRO", b"\x00" * 40, b"PYRO" + b"\xff" * 20])
def test_a_call_followed_by_garbage_in_one_segment_is_treated_as_with_the_lane_off(garbage):
    def send(server, client):
        client.sock.sendall(request_bytes("obj", "echo", (3,), CORR, 1) + garbage)
        reply = comparable(read_message(client.sock), CORR)
        client.sock.settimeout(0.5)
        try:
            rest = read_all(client.sock)
        except TimeoutError:
            rest = b"<still open>"  # waiting for the rest of a message (until HALF_FRAME_TIMEOUT)
        return reply, rest

    lane, general = both(send)
    assert lane == general


@pytest.mark.parametrize("how", ["half-close", "reset"])
def test_a_peer_gone_right_after_sending_a_lane_call_has_it_run_once(how):
    with served() as server:
        sock = socket.create_connection(server.daemon.sock.getsockname(), timeout=TIMEOUT)
        protocol = ClientProtocol("serpent")
        sock.sendall(protocol.connect("obj"))
        read_message(sock)
        request = request_bytes("obj", "echo", (11,), CORR, 1)
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(request)
            sock.close()
        else:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            assert comparable(read_message(sock), CORR)[2] == 1
            assert sock.recv(10) == b""
            sock.close()
        wait_until(lambda: not server.daemon._connections.conns)
        assert [call[:2] for call in server.obj.calls] == [("echo", (11,))]
        # the daemon goes on serving
        with Proxy(server.uri) as proxy:
            assert proxy.echo(12) == 12


@expose
class Mutating:
    """Methods that change the daemon serving them."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.ran: list[str] = []

    def leave(self):
        self.ran.append("leave")
        self.daemon.unregister(self)
        return "left"

    def spawn(self, name):
        self.ran.append("spawn")
        self.daemon.register(Recorder(), name)
        return name

    def reset(self):
        self.ran.append("reset")
        self.daemon.resetMetadataCache()
        return 1

    def stop(self):
        self.ran.append("stop")
        self.daemon.shutdown()
        return "stopping"

    def where(self):
        return current_context.client_sock_addr is not None


def test_methods_that_change_the_registry_or_its_caches_answer_as_with_the_lane_off():
    def send(server, client):
        obj = Mutating(server.daemon)
        server.daemon.register(obj, "mut")
        out = []
        for seq, method, args in [(1, "reset", ()), (2, "spawn", ("other",)), (3, "leave", ()),
                                  (4, "leave", ()), (5, "reset", ())]:
            out.append(comparable(client.exchange(request_bytes("mut", method, args, CORR, seq)), CORR))
        out.append(comparable(client.exchange(request_bytes("other", "echo", (9,), CORR, 6)), CORR))
        out.append(obj.ran)
        out.append([c[:2] for c in server.daemon.objectsById["other"].calls])
        return out

    lane, general = both(send)
    assert lane == general
    assert lane[0][-2] == ["reset", "spawn", "leave"]


def test_a_method_that_shuts_the_daemon_down_gets_its_reply_out_first():
    def send(server, client):
        server.daemon.register(Mutating(server.daemon), "mut")
        client.sock.sendall(request_bytes("mut", "stop", (), CORR, 1))
        return replies_of(read_all(client.sock))

    lane, general = both(send)
    assert lane == general
    assert len(lane[0]) == 1 and b"stopping" in lane[0][0][-1]


# --- 2. the blocking Proxy's quick path, threads sharing one proxy ---------------------------------

@expose
class Shared:
    """What threads sharing one proxy call: each result names its argument and the call's seq."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.lock = threading.Lock()

    def tag(self, x):
        with self.lock:
            self.seqs.append(current_context.seq)
        current_context.response_annotations = {"XTAG": str(x).encode()} if x % 3 == 0 else {}
        return x

    def echo(self, x):
        return x

    @in_worker
    def slow(self, x):
        time.sleep(x)
        return x


def run_threads(count: int, work: Any) -> list[BaseException]:
    """``work(index)`` in ``count`` threads at once; the exceptions they raised."""
    failures: list[BaseException] = []
    start = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            start.wait(TIMEOUT)
            work(index)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(4 * TIMEOUT)
        assert not thread.is_alive(), "a thread sharing the proxy hung"
    return failures


@pytest.fixture
def shared():
    """A Shared object on a lane daemon (select loop thread) and one proxy to it."""
    with served() as server:
        obj = Shared()
        uri = server.daemon.register(obj, "shared")
        proxy = Proxy(uri)
        proxy._pyroTimeout = TIMEOUT
        try:
            yield server, obj, proxy
        finally:
            proxy._pyroRelease()


def test_threads_sharing_a_proxy_get_their_own_results_and_response_annotations(shared):
    server, obj, proxy = shared

    def work(index: int) -> None:
        for n in range(index * 1000, index * 1000 + 60):
            assert proxy.tag(n) == n
            expected = {"XTAG": str(n).encode()} if n % 3 == 0 else {}
            seen = {k: v for k, v in current_context.response_annotations.items() if k != "CORR"}
            assert seen == expected, (n, seen)

    assert run_threads(6, work) == []
    assert obj.seqs == list(range(1, 361))  # one proxy: one sequence, each number once, in order
    assert server.lane_calls >= 300


def test_a_timeout_on_one_thread_leaves_the_others_their_own_results(shared):
    _server, _obj, proxy = shared

    def work(index: int) -> None:
        if index == 0:
            proxy._pyroTimeout = 0.2
            with pytest.raises(errors.TimeoutError):
                proxy.slow(0.6)
            proxy._pyroTimeout = TIMEOUT
            time.sleep(0.7)  # the late reply arrives on a connection nobody reads any more
            assert proxy.echo("after") == "after"
            return
        for n in range(200):
            try:
                assert proxy.echo(index * 1000 + n) == index * 1000 + n
            except errors.TimeoutError:
                pass  # caught by the 0.2 s timeout while the slow call held the lock: fine

    assert run_threads(4, work) == []


def calls_while(proxy: Proxy, meddle: Any, calls: int = 150, tolerate: tuple = ()) -> int:
    """``meddle()`` again and again in one thread while two others call ``proxy.echo``
    ``calls`` times each, with numbers of their own: every call must return its own
    number (or raise one of ``tolerate``). Returns how many were answered."""
    stop = threading.Event()
    answered = [0]

    def work(index: int) -> None:
        if index == 0:
            while not stop.is_set():
                meddle()
                time.sleep(0.001)
            return
        try:
            for n in range(calls):
                try:
                    assert proxy.echo(index * 1000 + n) == index * 1000 + n
                    answered[0] += 1
                except tolerate:
                    pass
        finally:
            stop.set()

    assert run_threads(3, work) == []
    return answered[0]


def test_a_thread_releasing_the_shared_proxy_meanwhile_costs_no_call_its_result(shared):
    _, _, proxy = shared
    assert calls_while(proxy, proxy._pyroRelease) == 300


def test_a_thread_reconnecting_the_shared_proxy_meanwhile_costs_no_call_its_result(shared):
    _, _, proxy = shared
    assert calls_while(proxy, lambda: proxy._pyroReconnect(1)) == 300


def test_a_thread_switching_the_serializer_meanwhile_costs_no_call_its_result(shared):
    _server, _obj, proxy = shared
    names = iter(["json", "serpent", "marshal"] * 100000)
    assert calls_while(proxy, lambda: setattr(proxy, "_pyroSerializer", next(names)), calls=200) == 400


# --- 3. bulk sends through the Outbox ----------------------------------------------------------------

MB = 1024 * 1024


@expose
class Bulk:
    def blob(self, size):
        return b"\x07" * size

    def echo(self, x):
        return x

    def size(self, data):
        return len(data)


def bulk_request(sock: socket.socket, size: int, serializer: str = "marshal") -> ClientProtocol:
    """Connect ``sock`` to "bulk" and ask for a reply of ``size`` bytes; the protocol to read it with."""
    protocol = ClientProtocol(serializer)
    sock.sendall(protocol.connect("bulk", metadata=False))
    protocol.receive_data(read_message(sock))
    protocol.next_event()
    sock.sendall(protocol.invoke("bulk", "blob", (size,), {}).data)
    return protocol


def raw_peer(daemon: Daemon, rcvbuf: int = 4096) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect(daemon.sock.getsockname())
    return sock


def finish_reply(sock: socket.socket, protocol: ClientProtocol, data: bytes = b"") -> Any:
    """Read the rest of the one reply under way; its value."""
    if data:
        protocol.receive_data(data)
    while (event := protocol.next_event()) is None:
        chunk = sock.recv(256 * 1024)
        assert chunk, "the daemon closed the connection"
        protocol.receive_data(chunk)
    return event.value




def bulk_to_a_pausing_reader(host: Any, daemon: Daemon, uri: Any, head: int, wrap: Any = None,
                             proxy_ssl: Any = None) -> None:
    """In ``host``'s loop, a peer asks ``daemon`` for 5 MB, reads ``head`` bytes of it one at a
    time, then stops reading while another client calls ``uri`` 10 times; then it reads the
    rest. Both get all they asked for. ``wrap`` makes the peer's socket (TLS), ``proxy_ssl`` is
    the other client's TLS context."""
    size = 5 * MB
    started, others_done = threading.Event(), threading.Event()

    def slow() -> Any:
        sock = raw_peer(daemon, 8192)
        if wrap is not None:
            sock = wrap(sock)
        try:
            protocol = bulk_request(sock, size)
            first = b"".join(sock.recv(1) for _ in range(head))  # one byte at a time
            started.set()
            assert others_done.wait(TIMEOUT)  # not reading at all meanwhile
            return finish_reply(sock, protocol, first)
        finally:
            sock.close()

    def others() -> list:
        assert started.wait(TIMEOUT)
        try:
            with Proxy(uri) as proxy:
                proxy._pyroSslContext = proxy_ssl
                proxy._pyroTimeout = TIMEOUT
                return [proxy.echo(n) for n in range(10)]
        finally:
            others_done.set()

    try:
        reply, answers = host.serve(slow, others)
    finally:
        daemon.close()
    assert reply == b"\x07" * size
    assert answers == list(range(10))


def test_a_bulk_reply_to_a_byte_at_a_time_reader_that_then_pauses_arrives_whole_while_others_are_served(host):
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Bulk(), "bulk")
    host.attach(daemon)
    bulk_to_a_pausing_reader(host, daemon, uri, head=3000)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_peer_gone_half_way_through_a_bulk_reply_frees_its_output_and_the_daemon_goes_on(how, caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    with served() as server:
        server.daemon.register(Bulk(), "bulk")
        sock = raw_peer(server.daemon, 64 * 1024)
        bulk_request(sock, 8 * MB)
        got = 0
        while got < 4 * MB:
            got += len(sock.recv(256 * 1024))
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        connections = server.daemon._connections
        wait_until(lambda: not connections.conns)
        assert connections.output.total == 0
        with Proxy(server.daemon.uriFor("bulk")) as proxy:
            assert proxy.echo("on") == "on"


def test_a_reply_beyond_max_output_buffer_closes_that_connection_and_says_so(caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    config.MAX_OUTPUT_BUFFER = 1 * MB
    with served() as server:
        server.daemon.register(Bulk(), "bulk")
        sock = raw_peer(server.daemon)
        bulk_request(sock, 16 * MB)  # beyond what the kernel's buffers take (about 4 MB on loopback)
        wait_until(lambda: not server.daemon._connections.conns)
        assert any("MAX_OUTPUT_BUFFER" in r.getMessage() for r in caplog.records)
        assert server.daemon._connections.output.total == 0
        sock.close()


def test_peers_not_reading_their_bulk_replies_are_held_to_max_buffered_output_together(caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    config.MAX_BUFFERED_OUTPUT = 10 * MB
    with served() as server:
        server.daemon.register(Bulk(), "bulk")
        connections = server.daemon._connections
        peers = []
        for _ in range(4):
            sock = raw_peer(server.daemon)
            bulk_request(sock, 8 * MB)  # about half of it beyond what the kernel's buffers take
            peers.append(sock)
            wait_until(lambda: server.daemon._calls.dispatching == 0 and connections.output.total)
            assert connections.output.total <= 10 * MB
        assert len(connections.conns) < 4
        assert any("MAX_BUFFERED_OUTPUT" in r.getMessage() for r in caplog.records)
        with Proxy(server.daemon.uriFor("bulk")) as proxy:
            assert proxy.echo("on") == "on"
        for sock in peers:
            sock.close()


# --- the lane against stock Pyro4 peers and other daemon set-ups -----------------------------------

@pytest.mark.pyro4
def test_a_stock_pyro4_proxy_shared_by_threads_gets_each_thread_its_results_from_the_lane_daemon():
    from _util import pyro4_client
    with served() as server, pyro4_client() as peer:
        obj = Shared()
        uri = server.daemon.register(obj, "shared")
        code = """
import threading
p = Pyro4.Proxy(uri)
bad = []
def work(i):
    for n in range(i * 1000, i * 1000 + 50):
        if p.tag(n) != n:
            bad.append(n)
ts = [threading.Thread(target=work, args=(i,)) for i in range(5)]
[t.start() for t in ts]
[t.join() for t in ts]
p._pyroRelease()
bad
"""
        assert peer.run(code, uri=str(uri)) == []
        assert obj.seqs == list(range(1, 251))
        assert server.lane_calls >= 200


def test_the_lane_serves_under_a_multiplex_request_loop_as_well():
    from test_daemon import serving
    config.SERVERTYPE = "multiplex"
    daemon = Daemon(host="127.0.0.1")
    obj = Recorder()
    uri = daemon.register(obj, "obj")
    with serving(daemon), Proxy(uri) as proxy:
        assert [proxy.echo(n) for n in range(20)] == list(range(20))
        assert proxy.as_list(3) == [3]
    assert daemon._connections.lane_calls >= 20
    assert [call[:2] for call in obj.calls][-2:] == [("echo", (19,)), ("as_list", (3,))]


@expose
class Nested:
    """A served method calling, through a proxy, an object of the same daemon."""

    def __init__(self) -> None:
        self.proxy: Proxy | None = None

    def plain(self):  # on the loop's thread: a call back into its own daemon is refused clearly
        return self.proxy.echo(1)

    @in_worker
    def from_worker(self, x):
        current_context.response_annotations = {"XOWN": b"mine"}
        value = self.proxy.echo(x)  # the shared proxy, from inside a served call
        return [value, dict(current_context.response_annotations)]


def test_a_served_call_using_a_shared_proxy_keeps_its_own_response_annotations_and_others_their_results(shared):
    server, _obj, proxy = shared
    nested = Nested()
    nested.proxy = proxy
    uri = server.daemon.register(nested, "nested")

    def work(index: int) -> None:
        if index == 0:
            with Proxy(uri) as caller:
                caller._pyroTimeout = TIMEOUT
                for n in range(40):
                    assert caller.from_worker(n) == [n, {"XOWN": b"mine"}]
                    assert current_context.response_annotations.get("XOWN") == b"mine"
            return
        for n in range(200):
            assert proxy.echo(index * 1000 + n) == index * 1000 + n

    assert run_threads(3, work) == []


def test_a_lane_method_calling_its_own_daemon_gets_the_error_it_gets_with_the_lane_off():
    def send(server, client):
        nested = Nested()
        server.daemon.register(nested, "nested")
        nested.proxy = Proxy(server.uri)
        reply = comparable(client.exchange(request_bytes("nested", "plain", (), CORR, 1)), CORR)
        nested.proxy._pyroRelease()
        return reply[:5], b"deadlock" in reply[5]

    lane, general = both(send)
    assert lane == general
    assert lane[0][1] is True


def rebind(port: int) -> Daemon | None:
    try:
        return Daemon(host="127.0.0.1", port=port)
    except OSError:
        return None


def test_threads_sharing_a_proxy_through_a_daemon_restart_get_their_results_or_a_connection_error():
    config.SERVERTYPE = "multiplex"
    first = Daemon(host="127.0.0.1")
    port = first.sock.getsockname()[1]
    uri = first.register(Shared(), "shared")
    from test_daemon import serving
    proxy = Proxy(uri)
    proxy._pyroTimeout = TIMEOUT
    restarted = threading.Event()
    wrong: list = []

    def work(index: int) -> None:
        if index == 0:
            try:
                time.sleep(0.05)
                first.shutdown()
                second = wait_until(lambda: rebind(port))  # once the first has closed its socket
                second.register(Shared(), "shared")
                with serving(second):
                    time.sleep(0.1)
                    restarted.set()
                    time.sleep(0.3)
            finally:
                restarted.set()
            return
        n = 0
        while not restarted.is_set() or n < 400:
            n += 1
            try:
                value = proxy.echo(index * 100000 + n)
            except errors.CommunicationError:
                continue
            except errors.DaemonError as exc:  # queued behind a call when the daemon closed: said so
                assert "closed before this call ran" in str(exc)
                continue
            if value != index * 100000 + n:
                wrong.append((index, n, value))

    with serving(first):
        failures = run_threads(4, work)
    proxy._pyroRelease()
    assert failures == [] and wrong == []


def test_a_proxy_timeout_of_zero_means_no_timeout_as_in_pyro4(shared):
    _server, _obj, proxy = shared
    proxy._pyroTimeout = 0  # Pyro4 4.82: the socket blocks (its connect treats 0 as None)
    assert proxy.slow(0.05) == 0.05
    assert proxy.echo(4) == 4
    proxy._pyroTimeout = None
    assert proxy.echo(5) == 5
    proxy._pyroTimeout = 0
    assert proxy.echo(6) == 6


@expose
class Varied:
    """What the lane meets on every host: plain, raising, non-scalar, long, awaiting methods."""

    def echo(self, x):
        return x

    def fail(self, x):
        raise ValueError(x)

    def listed(self, x):
        return [x, x]

    def long(self, x):
        time.sleep(0.2)  # on the loop's thread: other connections wait, and are answered after
        return x

    async def later(self, x):
        import asyncio
        await asyncio.sleep(0.01)
        return x * 2


def test_the_lane_answers_plain_raising_listed_and_long_calls_on_every_host(host):
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Varied(), "varied")
    host.attach(daemon)

    def caller(offset: int) -> Any:
        def run() -> list:
            with Proxy(uri) as proxy:
                proxy._pyroTimeout = TIMEOUT
                out = [proxy.echo(offset + n) for n in range(20)]
                with pytest.raises(ValueError, match="bad"):
                    proxy.fail("bad")
                out += [proxy.listed(offset), proxy.long(offset), proxy.echo("last")]
                if host.name == "asyncio":
                    out.append(proxy.later(offset))
                return out
        return run

    try:
        results = host.serve(caller(0), caller(100))
    finally:
        daemon.close()
    for offset, result in zip((0, 100), results):
        expected = [offset + n for n in range(20)] + [[offset, offset], offset, "last"]
        if host.name == "asyncio":
            expected.append(offset * 2)
        assert result == expected
    assert daemon._connections.lane_calls >= 40




def test_a_bulk_reply_over_tls_to_a_reader_that_pauses_arrives_whole_while_a_tls_proxy_is_served(pki, host):
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    uri = daemon.register(Bulk(), "bulk")
    host.attach(daemon)
    bulk_to_a_pausing_reader(host, daemon, uri, head=500, proxy_ssl=pki.client_ctx(),
                             wrap=lambda sock: pki.client_ctx().wrap_socket(sock, server_hostname="127.0.0.1"))
    assert daemon._connections.lane_calls == 0  # the lane never serves TLS


def test_threads_sharing_a_proxy_one_fetching_megabytes_get_their_own_results(shared):
    server, _obj, _proxy = shared
    server.daemon.register(Bulk(), "bulk")
    bulk = Proxy(server.daemon.uriFor("bulk"))
    bulk._pyroTimeout = TIMEOUT

    def work(index: int) -> None:
        for n in range(8 if index == 0 else 150):
            if index == 0:
                assert bulk.blob(3 * MB + n) == b"\x07" * (3 * MB + n)
            else:
                assert bulk.echo(index * 1000 + n) == index * 1000 + n

    try:
        assert run_threads(3, work) == []
    finally:
        bulk._pyroRelease()


# --- the loop Client's bulk requests to a daemon that reads them badly ---------------------------



class SlowReader:
    """A daemon stand-in that takes one connection, shakes hands, then reads the call
    ``how`` says: "pause" (3000 bytes one at a time, then nothing until ``resume``, then
    the rest, answering with the payload's size), "close" or "reset" (half of it, then gone)."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"PYRO:svc@127.0.0.1:{self.listener.getsockname()[1]}"
        self.paused, self.resume = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(TIMEOUT)
        server = ServerProtocol()
        while not isinstance(event := server.next_event(), ConnectRequest):
            server.receive_data(conn.recv(65536))
        meta = {"handshake": "hello", "meta": {"methods": ["size"], "oneway": [], "attrs": []}}
        conn.sendall(server.connect_ok_bytes(event.msg, get_serializer(event.msg.serializer_id).dumps(meta),
                                             _wire.FLAGS_META_ON_CONNECT, {}))
        if self.how == "pause":
            server.receive_data(b"".join(conn.recv(1) for _ in range(3000)))
            self.paused.set()
            self.resume.wait(TIMEOUT)
            while (event := server.next_event()) is None:
                server.receive_data(conn.recv(1024 * 1024))
            marshal = get_serializer("marshal")
            _, _, (data,), _ = marshal.loads_call(bytes(event.msg.data))
            conn.sendall(server.result_bytes(event.msg, marshal.dumps(len(data)), 0, {}))
            conn.recv(1)  # until the client goes
        else:
            got = 0
            while got < 4 * MB:
                got += len(conn.recv(256 * 1024))
            self.paused.set()
            if self.how == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("how", ["pause", "close", "reset"])
def test_a_bulk_loop_client_call_to_a_daemon_that_reads_it_badly_leaves_the_loop_serving(host, client, how):
    slow = SlowReader(how)
    data = b"\x05" * (12 * MB)
    ticks = []
    stop_ticking = host.repeat(0.005, lambda: ticks.append(time.monotonic()))
    try:
        with served() as server:
            other = client.proxy(server.uri)
            big = client.proxy(slow.uri)
            big._pyroSerializer = "marshal"
            call = big.size(data)
            host.run_until(slow.paused.is_set, timeout=TIMEOUT)
            before = len(ticks)
            # while the big call is stuck, the loop serves the other daemon and its own timers
            assert [host.settle(other.echo(n)).result() for n in range(5)] == list(range(5))
            host.run_for(0.05)
            assert len(ticks) > before
            slow.resume.set()
            host.settle(call, timeout=TIMEOUT)
            if how == "pause":
                assert call.result() == len(data)
            else:
                with pytest.raises(errors.CommunicationError):
                    call.result()
            assert host.settle(other.echo("after")).result() == "after"
    finally:
        stop_ticking()
        slow.close()


class HookedDaemon(Daemon):
    """Overrides the hooks a Pyro4 program overrides: each connection's handshake and its end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, Any]] = []

    def validateHandshake(self, conn, data):
        self.events.append(("hello", data))
        return "welcome"

    def clientDisconnect(self, conn):
        self.events.append(("bye", None))


@pytest.mark.parametrize("ending", ["close", "reset", "half-close", "reset-with-reply-unread"])
def test_a_daemon_subclass_hears_each_connection_begin_and_end_once_whatever_way_its_lane_calls_end(ending):
    def send(server, client):
        for seq in range(1, 4):
            assert client.exchange(request_bytes("obj", "echo", (seq,), CORR, seq))
        request = request_bytes("obj", "echo", (99,), CORR, 9)
        if ending.startswith("reset"):
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if ending == "reset-with-reply-unread":
                client.sock.sendall(request)
                wait_until(lambda: len(server.obj.calls) == 4)
        elif ending == "half-close":
            client.sock.sendall(request)
            client.sock.shutdown(socket.SHUT_WR)
            assert comparable(read_message(client.sock), CORR)[2] == 9
        client.sock.close()
        wait_until(lambda: ("bye", None) in server.daemon.events)
        time.sleep(0.05)  # a second goodbye would come now
        return list(server.daemon.events)

    lane, general = [], []
    for out, flag in ((lane, True), (general, False)):
        with served(lane=flag, daemon_class=HookedDaemon) as server:
            client = RawClient(server)
            try:
                out.append(send(server, client))
            finally:
                client.close()
            out.append([call[:2] for call in server.obj.calls])
    assert lane == general
    assert lane[0] == [("hello", "hello"), ("bye", None)]


def test_threads_sharing_a_proxy_across_the_sequence_number_wrap_get_their_own_results(shared):
    _server, obj, proxy = shared
    proxy._pyroSeq = 0xFFFF - 40

    def work(index: int) -> None:
        for n in range(30):
            assert proxy.tag(index * 1000 + n) == index * 1000 + n

    assert run_threads(4, work) == []
    assert obj.seqs == [(0xFFFF - 40 + i) & 0xFFFF for i in range(1, 121)]


def test_a_peer_pipelining_calls_and_not_reading_is_held_at_the_high_water_mark_then_answered_in_order():
    total = 6_000  # 6.6 MB of calls, as much of replies: more than the buffers below hold
    with served() as server:
        client = RawClient(server)
        conn = next(iter(server.daemon._conns.values()))
        for sock in (client.sock, conn.sock):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sent = [0]

        def flood() -> None:
            for n in range(total):
                client.sock.sendall(request_bytes("obj", "echo", ("y" * 1000,), CORR, n & 0xFFFF))
                sent[0] += 1

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        last = -1
        while sent[0] != last and sent[0] < total:  # until the daemon stops reading
            last = sent[0]
            time.sleep(0.3)
        assert sent[0] < total, "the daemon read everything without its replies being read"
        assert server.daemon._connections.output.total <= 2 * MB
        with Proxy(server.uri) as other:
            assert other.echo("served") == "served"
        # reading at last, the peer gets every reply, in order
        seqs = []
        reader = _wire.FrameReader(0)
        while len(seqs) < total:
            reader.feed(client.sock.recv(256 * 1024))
            while (msg := reader.next_message()) is not None:
                assert bytes(msg.data).endswith(b"'" + b"y" * 1000 + b"'")
                seqs.append(msg.seq)
        sender.join(TIMEOUT)
        assert seqs == [n & 0xFFFF for n in range(total)]
        assert len(server.obj.calls) == total + 1  # and the other client's
        client.close()


# --- the half-frame deadline against peers that keep sending, or that the daemon stops reading -----

def test_a_peer_pipelining_calls_without_pause_for_longer_than_half_frame_timeout_is_served_throughout():
    """Each read ends inside some message, a different one each time: the client is not stalling."""
    config.HALF_FRAME_TIMEOUT = 0.5
    with served() as server:
        client = RawClient(server)
        requests = b"".join(request_bytes("obj", "echo", (n,), CORR, n) for n in range(1, 4001))
        step = 1500  # about 30 messages a send, never ending on a message's end
        received: list[int] = []

        def read() -> None:
            reader = _wire.FrameReader(0)
            while len(received) < 4000 and (chunk := client.sock.recv(65536)):
                reader.feed(chunk)
                while (msg := reader.next_message()) is not None:
                    received.append(msg.seq)

        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        end = time.monotonic() + 1.5  # three times HALF_FRAME_TIMEOUT
        for start in range(0, len(requests), step):
            client.sock.sendall(requests[start:start + step])
            time.sleep(max(0.0, (end - time.monotonic()) / ((len(requests) - start) / step)))
        reading.join(TIMEOUT)
        assert received == list(range(1, 4001))
        client.close()


def test_a_pipelined_call_the_daemon_stops_reading_behind_a_bulk_reply_is_answered_after_a_long_pause():
    """The daemon, not the client, leaves the second call incomplete: its reply to the first
    piles up past the high-water mark, so it stops reading until the client reads."""
    config.HALF_FRAME_TIMEOUT = 0.5
    with served() as server:
        server.daemon.register(Bulk(), "bulk")
        sock = raw_peer(server.daemon, 8192)
        protocol = ClientProtocol("marshal")
        sock.sendall(protocol.connect("bulk", metadata=False))
        protocol.receive_data(read_message(sock))
        protocol.next_event()
        first = protocol.invoke("bulk", "blob", (12 * MB,), {}).data
        second = protocol.invoke("bulk", "echo", ("second",), {}).data
        sock.sendall(first + second[:10])
        time.sleep(0.2)
        sock.sendall(second[10:])
        time.sleep(1.5)  # not reading, for three times HALF_FRAME_TIMEOUT
        values = [finish_reply(sock, protocol)]
        values.append(finish_reply(sock, protocol))
        assert values == [b"\x07" * (12 * MB), "second"]
        sock.close()


def test_a_thread_changing_the_hmac_key_meanwhile_costs_no_call_a_wrong_result_or_a_hang():
    with served() as server:
        server.daemon._pyroHmacKey = b"secret"
        uri = server.daemon.register(Shared(), "shared")
        proxy = Proxy(uri)
        proxy._pyroTimeout = TIMEOUT
        keys = iter([b"secret", "secret", None, b"wrong"] * 100000)
        try:
            # a call sent with no key or the wrong one is refused and says so
            assert calls_while(proxy, lambda: setattr(proxy, "_pyroHmacKey", next(keys)),
                               tolerate=(errors.PyroError,)) > 0
            proxy._pyroHmacKey = b"secret"
            assert proxy.echo("settled") == "settled"
        finally:
            proxy._pyroRelease()


def call_then(location: tuple, garbage: bytes) -> tuple:
    """A lane-shaped call to "service" followed by ``garbage`` in the same segment: the reply
    (comparable), and whether the daemon closed the connection within half a second."""
    sock = socket.create_connection(location, timeout=TIMEOUT)
    try:
        protocol = ClientProtocol("serpent")
        sock.sendall(protocol.connect("service", metadata=False))
        read_message(sock)
        sock.sendall(request_bytes("service", "echo", (3,), CORR, 1) + garbage)
        reply = comparable(read_message(sock), CORR)
        sock.settimeout(0.5)
        try:
            closed = read_all(sock) == b""
        except TimeoutError:
            closed = False
        except ConnectionResetError:
            closed = True
        return reply, closed
    finally:
        sock.close()


@pytest.mark.pyro4
def test_a_call_followed_by_garbage_is_answered_and_the_garbage_met_as_a_pyro4_daemon_meets_it():
    from _util import Pyro4Server
    # (a lone wrong first byte is not among them: the daemon refuses it at once, where Pyro4
    # waits for a whole header first)
    garbages = [b"\x00" * 40, b"PYRO" + b"\xff" * 20, b"PYRO"]
    with served() as server, Pyro4Server(PYRO_SERVERTYPE="multiplex") as pyro4:
        server.daemon.register(Varied(), "service")  # its echo is peers/service.py's
        ours = [call_then(server.daemon.sock.getsockname(), garbage) for garbage in garbages]
        host, port = pyro4.location.rsplit(":", 1)
        theirs = [call_then((host, int(port)), garbage) for garbage in garbages]
    assert ours == theirs


def test_a_whole_call_behind_a_draining_bulk_reply_waits_for_it_without_a_half_frame_timeout():
    """The second call arrived whole behind the first's large reply; the client reads that
    reply slowly, for longer than HALF_FRAME_TIMEOUT. Nothing is the client's to send, so
    no half-frame deadline may run out: both calls are answered and the connection stays."""
    config.HALF_FRAME_TIMEOUT = 0.5
    with served() as server:
        server.daemon.register(Bulk(), "bulk")
        sock = raw_peer(server.daemon, 32768)
        protocol = ClientProtocol("marshal")
        sock.sendall(protocol.connect("bulk", metadata=False))
        protocol.receive_data(read_message(sock))
        protocol.next_event()
        first = protocol.invoke("bulk", "blob", (6 * MB,), {}).data
        second = protocol.invoke("bulk", "echo", ("second",), {}).data
        sock.sendall(first + second)
        conn = wait_until(lambda: next(iter(server.daemon._connections.conns.values()), None))
        wait_until(lambda: _unsent(conn) > MB)  # held back: the second call waits whole in the buffer
        while _unsent(conn) > 900_000:  # below the high-water mark, still draining
            protocol.receive_data(sock.recv(65536))
        values: list = []
        slow_until = time.monotonic() + 1.5  # three times HALF_FRAME_TIMEOUT, reading slowly
        while len(values) < 2:
            data = sock.recv(16384)
            assert data, f"the daemon closed the connection after {len(values)} replies"
            protocol.receive_data(data)
            while (event := protocol.next_event()) is not None:
                values.append(event.value)
            if time.monotonic() < slow_until:
                time.sleep(0.03)
        assert values == [b"\x07" * (6 * MB), "second"]
        assert not conn.closed
        sock.close()


def test_calls_buffered_behind_an_inline_oneway_that_nests_the_loop_run_in_order_not_by_the_lane():
    """An adapter-hosted daemon runs a oneway inline; this one nests the loop (a modal
    dialog's way). The call behind it in the same read, and one arriving meanwhile, run in
    the nested loop in the order sent, as with the lane off: the lane must not take the
    later one ahead of the earlier, buffered one."""
    from pyro_loops._eventloop import SelectLoop
    from pyro_loops.adapters.selectloop import attach

    def run(lane: bool) -> tuple[list, list]:
        loop = SelectLoop()
        order: list = []
        replies: list = []

        @expose
        class Modal:
            def modal(self):
                order.append("A-start")
                end = time.monotonic() + 1.0  # a dialog open for a second
                while time.monotonic() < end:
                    loop.poll(0.02)
                order.append("A-end")

            def rec(self, x):
                order.append(x)
                return x

        with Daemon(host="127.0.0.1") as daemon:
            daemon._connections.lane = lane
            uri = daemon.register(Modal(), "m")
            handle = attach(daemon, loop)

            def client() -> None:
                protocol = ClientProtocol("serpent")
                sock = socket.create_connection(("127.0.0.1", uri.port), timeout=TIMEOUT)
                sock.sendall(protocol.connect("m", metadata=False))
                while protocol.next_event() is None:
                    protocol.receive_data(sock.recv(65536))
                first = protocol.invoke("m", "modal", (), {}, oneway=True).data
                sock.sendall(first + protocol.invoke("m", "rec", ("B",), {}).data)  # B waits behind A
                wait_until(lambda: order)
                time.sleep(0.2)
                sock.sendall(protocol.invoke("m", "rec", ("C",), {}).data)  # while A's nested loop runs
                while len(replies) < 2:
                    protocol.receive_data(sock.recv(65536))
                    while (event := protocol.next_event()) is not None:
                        replies.append(event.value)
                sock.close()

            thread = threading.Thread(target=client, daemon=True)
            thread.start()
            loop.run(until=lambda: not thread.is_alive() and "A-end" in order, max_wait=0.05)
            handle.detach()
        return order, replies

    assert run(lane=True) == run(lane=False) == (["A-start", "B", "C", "A-end"], ["B", "C"])
