"""The Daemon: registry, request loop life cycle, server types, workers,
streams, the half-frame deadline and output buffering.

Daemons run in a thread on ``requestLoop`` (or on a hand-written select loop)
and are called over real sockets on 127.0.0.1 by our own Proxy; every
blocking wait has a timeout.
"""

import contextlib
import logging
import select
import socket
import threading
import time

import pytest

from pyro_loops import Daemon, Proxy, behavior, config, errors, expose, in_worker, oneway
from pyro_loops import _wire, hosting
from pyro_loops._serializers import get_serializer
from pyro_loops.constants import DAEMON_NAME

TIMEOUT = 10.0
SERPENT = get_serializer("serpent")


def wait_for(predicate, timeout: float = TIMEOUT) -> None:
    """Wait for an effect in another thread that offers nothing to block on."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        time.sleep(0.005)


@contextlib.contextmanager
def serving(daemon: Daemon):
    """Run ``daemon.requestLoop`` in a thread; shut it down and join it afterwards."""
    thread = threading.Thread(target=daemon.requestLoop, name="test-daemon-loop", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        daemon.shutdown()
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "requestLoop did not end after shutdown()"


@contextlib.contextmanager
def served_by_select_loop(daemon: Daemon):
    """The seed's hand-written loop: ``select`` on ``daemon.sockets``, then ``daemon.events``;
    the daemon is closed afterwards."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            readable, _, _ = select.select(daemon.sockets, [], [], 0.02)
            daemon.events(readable)

    thread = threading.Thread(target=loop, name="test-select-loop", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(TIMEOUT)
        daemon.close()


def proxy_for(uri) -> Proxy:
    proxy = Proxy(uri)
    proxy._pyroTimeout = TIMEOUT
    return proxy


def wait_closed(sock: socket.socket) -> bool:
    """True once the peer closed ``sock`` (EOF or reset); False if it stayed open for TIMEOUT."""
    sock.settimeout(TIMEOUT)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        return False
    return True


class RawClient:
    """A client that writes frames (or any bytes) by hand and reads whole messages back."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.reader = _wire.FrameReader()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_message(self, msg_type: int, data: bytes, ser: int = 1, flags: int = 0, seq: int = 0,
                     annotations: dict | None = None, key: bytes | None = None) -> None:
        self.send(_wire.encode(_wire.Message(msg_type, data, ser, flags, seq, annotations or {}), key))

    def handshake(self, ser: str = "serpent", key: bytes | None = None) -> _wire.Message:
        serializer = get_serializer(ser)
        self.send_message(_wire.MSG_CONNECT, serializer.dumps({"handshake": "hello"}), serializer.serializer_id,
                          key=key)
        reply = self.read_message()
        assert reply.type == _wire.MSG_CONNECTOK, get_serializer(reply.serializer_id).loads(reply.data)
        return reply

    def send_call(self, obj: str, method: str, args=(), kwargs=None, ser: str = "serpent", seq: int = 1,
                  flags: int = 0) -> None:
        serializer = get_serializer(ser)
        payload = serializer.dumps_call(obj, method, args, {} if kwargs is None else kwargs)
        self.send_message(_wire.MSG_INVOKE, payload, serializer.serializer_id, flags, seq)

    def call(self, obj: str, method: str, args=(), kwargs=None, ser: str = "serpent", seq: int = 1):
        """(is_exception, value) of one call."""
        self.send_call(obj, method, args, kwargs, ser, seq)
        reply = self.read_message()
        assert (reply.type, reply.seq) == (_wire.MSG_RESULT, seq)
        return bool(reply.flags & _wire.FLAGS_EXCEPTION), get_serializer(reply.serializer_id).loads(reply.data)

    def read_message(self) -> _wire.Message:
        while (msg := self.reader.next_message()) is None:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed by the daemon")
            self.reader.feed(chunk)
        return msg

    def closed_by_peer(self) -> bool:
        return wait_closed(self.sock)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@expose
class Service:
    def __init__(self):
        self.threads = []
        self.oneways = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.waiting = 0

    def echo(self, value):
        return value

    def thread_name(self):
        return threading.current_thread().name

    def big(self, size):
        return b"x" * size

    def wait_for_release(self):
        with self.lock:
            self.waiting += 1
        return self.release.wait(TIMEOUT)

    def count(self, n):
        yield from range(n)

    def stop_daemon(self):
        self._pyroDaemon.shutdown()
        return "stopping"

    @oneway
    def fire(self):
        self.oneways += 1

    @in_worker
    def worker_thread_name(self):
        return threading.current_thread().name


# --- registry ---------------------------------------------------------------------------


@pytest.fixture
def daemon():
    with Daemon(host="127.0.0.1") as d:
        yield d


def test_register_returns_a_pyro_uri_with_a_generated_id(daemon):
    obj = Service()
    uri = daemon.register(obj)
    port = daemon.sock.getsockname()[1]
    assert uri.protocol == "PYRO" and (uri.host, uri.port) == ("127.0.0.1", port)
    assert uri.object.startswith("obj_") and len(uri.object) == 4 + 32
    assert obj._pyroId == uri.object and obj._pyroDaemon is daemon
    assert daemon.objectsById[uri.object] is obj
    assert daemon.locationStr == f"127.0.0.1:{port}"


def test_register_with_a_chosen_id_and_find_it_with_uri_for(daemon):
    obj = Service()
    uri = daemon.register(obj, "my.service")
    assert str(uri) == f"PYRO:my.service@{daemon.locationStr}"
    assert daemon.uriFor(obj) == uri == daemon.uriFor("my.service")


def test_every_daemon_publishes_its_own_daemon_object(daemon):
    assert DAEMON_NAME in daemon.objectsById
    assert DAEMON_NAME in daemon.objectsById[DAEMON_NAME].registered()


def test_unregister_removes_the_object_and_its_pyro_attributes(daemon):
    obj = Service()
    daemon.register(obj, "x")
    daemon.unregister(obj)
    assert "x" not in daemon.objectsById
    assert not hasattr(obj, "_pyroId") and not hasattr(obj, "_pyroDaemon")
    daemon.register(obj, "y")
    daemon.unregister("y")
    assert "y" not in daemon.objectsById and not hasattr(obj, "_pyroId")


def test_unregistering_the_daemon_object_is_ignored(daemon):
    daemon.unregister(DAEMON_NAME)
    assert DAEMON_NAME in daemon.objectsById


@pytest.mark.parametrize("value, exc, message", [
    (None, ValueError, "object or objectid argument expected"),
    (Service(), errors.DaemonError, "isn't registered"),
])
def test_unregister_refuses_what_is_not_registered(daemon, value, exc, message):
    with pytest.raises(exc, match=message):
        daemon.unregister(value)


def test_duplicate_ids_and_double_registration_are_refused(daemon):
    obj = Service()
    daemon.register(obj, "taken")
    with pytest.raises(errors.DaemonError, match="already registered"):
        daemon.register(Service(), "taken")
    with pytest.raises(errors.DaemonError, match="already registered"):
        daemon.register(obj)


@pytest.mark.parametrize("value", [42, "text", [1, 2], {"a": 1}])
def test_builtin_objects_cannot_be_registered(daemon, value):
    with pytest.raises(errors.DaemonError, match="builtin type"):
        daemon.register(value)


def test_slots_objects_without_room_for_pyro_attributes_are_refused(daemon):
    @expose
    class Slotted:
        __slots__ = ("a",)

    with pytest.raises(errors.DaemonError, match="__slots__"):
        daemon.register(Slotted())

    @expose
    class Roomy:
        __slots__ = ("a", "_pyroId", "_pyroDaemon")

        def m(self):
            return 1

    assert daemon.register(Roomy()).object.startswith("obj_")


@pytest.mark.parametrize("object_id", ["", 123])
def test_object_id_must_be_a_non_empty_string(daemon, object_id):
    with pytest.raises(errors.DaemonError, match="non-empty string"):
        daemon.register(Service(), object_id)


def test_uri_for_an_unregistered_object_is_refused(daemon):
    with pytest.raises(errors.DaemonError, match="isn't registered"):
        daemon.uriFor(Service())


def test_registering_an_object_that_exposes_nothing_logs_how_to_fix_it(daemon, caplog):
    class Bare:
        def method(self):
            pass

    with caplog.at_level(logging.WARNING, logger="pyro_loops"):
        daemon.register(Bare())
    assert "@pyro_loops.expose" in caplog.text and "REQUIRE_EXPOSE" in caplog.text


def test_nat_address_is_used_in_uris_unless_asked_not_to():
    with Daemon(host="127.0.0.1", nathost="nat.example", natport=4444) as d:
        assert d.natLocationStr == "nat.example:4444"
        assert str(d.uriFor("x")) == "PYRO:x@nat.example:4444"
        assert str(d.uriFor("x", nat=False)) == f"PYRO:x@{d.locationStr}"


def test_natport_without_nathost_is_refused():
    with pytest.raises(ValueError, match="nathost"):
        Daemon(host="127.0.0.1", natport=5)


def test_invalid_server_type_is_refused():
    config.SERVERTYPE = "forking"
    with pytest.raises(errors.PyroError, match="invalid server type"):
        Daemon(host="127.0.0.1")


def test_registered_class_gets_one_instance_per_connection(daemon):
    @expose
    @behavior("session")
    class Session:
        def ident(self):
            return id(self)

    uri = daemon.register(Session, "session")
    with serving(daemon), proxy_for(uri) as first, proxy_for(uri) as second:
        assert first.ident() == first.ident()
        assert first.ident() != second.ident()


def test_unix_socket_daemon_serves_calls(tmp_path):
    path = str(tmp_path / "daemon.sock")
    with Daemon(unixsocket=path) as d:
        uri = d.register(Service(), "svc")
        assert str(uri) == f"PYRO:svc@./u:{path}"
        with serving(d), proxy_for(uri) as proxy:
            assert proxy.echo("over unix") == "over unix"


def test_bytes_arrive_as_bytes_between_pyro_loops_peers_on_serpent(daemon):
    uri = daemon.register(Service(), "svc")
    with serving(daemon), proxy_for(uri) as proxy:
        assert proxy.echo(b"\x00\xffbytes") == b"\x00\xffbytes"
        assert proxy.echo({"nested": [b"a", (b"b",)]}) == {"nested": [b"a", (b"b",)]}


# --- life cycle ---------------------------------------------------------------------------


def test_shutdown_from_another_thread_ends_request_loop_without_waiting_for_a_poll():
    config.POLLTIMEOUT = 60.0  # a loop that waited out a poll would fail the join below
    d = Daemon(host="127.0.0.1")
    thread = threading.Thread(target=d.requestLoop, daemon=True)
    thread.start()
    uri = d.register(Service(), "svc")
    with proxy_for(uri) as proxy:
        assert proxy.echo(1) == 1  # the loop is running
    d.shutdown()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert d.sockets == []
    assert d.sock.fileno() == -1


def test_shutdown_from_inside_a_call_still_answers_that_call():
    d = Daemon(host="127.0.0.1")
    uri = d.register(Service(), "svc")
    thread = threading.Thread(target=d.requestLoop, daemon=True)
    thread.start()
    with proxy_for(uri) as proxy:
        assert proxy.stop_daemon() == "stopping"
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_request_loop_returns_when_its_condition_turns_false():
    config.POLLTIMEOUT = 0.05
    stop = threading.Event()
    with Daemon(host="127.0.0.1") as d:
        thread = threading.Thread(target=d.requestLoop, args=(lambda: not stop.is_set(),), daemon=True)
        thread.start()
        stop.set()
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert d.sockets  # the daemon itself stays open


def test_close_closes_client_connections_and_the_listening_socket():
    d = Daemon(host="127.0.0.1")
    uri = d.register(Service(), "svc")
    with serving(d):
        proxy = proxy_for(uri)
        assert proxy.echo(1) == 1
    with pytest.raises(errors.CommunicationError):
        proxy.echo(2)
    proxy._pyroRelease()
    with pytest.raises(errors.CommunicationError):
        proxy_for(uri).echo(3)


def test_close_is_idempotent_and_the_context_manager_closes():
    with Daemon(host="127.0.0.1") as d:
        pass
    assert d.sockets == []
    d.close()
    d.shutdown()


def test_closed_daemon_cannot_be_attached_to_a_loop():
    d = Daemon(host="127.0.0.1")
    d.close()
    with pytest.raises(errors.DaemonError, match="closed"):
        d.requestLoop()


# --- the hosting interface ----------------------------------------------------------------


class RecordingWatcher:
    def __init__(self):
        self.calls = []
        self.watched = {}

    def add(self, sock, events):
        self.calls.append(("add", sock))
        self.watched[sock] = events

    def modify(self, sock, events):
        self.calls.append(("modify", sock))
        self.watched[sock] = events

    def remove(self, sock):
        assert sock.fileno() != -1, "remove() must come before the socket is closed"
        self.calls.append(("remove", sock))
        self.watched.pop(sock, None)

    def set_deadline(self, when):
        self.calls.append(("deadline", when))

    def detached(self):
        self.calls.append(("detached", None))


def test_attached_watcher_is_told_about_sockets_and_removed_before_close():
    d = Daemon(host="127.0.0.1")
    watcher = RecordingWatcher()
    d.attach_watcher(watcher)
    assert set(watcher.watched) == set(d.sockets) and len(d.sockets) == 2
    assert all(events == hosting.READ for events in watcher.watched.values())
    assert d.next_deadline() is None  # idle: no timer needed
    with pytest.raises(errors.DaemonError, match="already attached"):
        d.attach_watcher(RecordingWatcher())
    d.close()
    assert watcher.watched == {}
    assert watcher.calls[-1] == ("detached", None)


def test_detach_removes_every_socket_but_leaves_them_open():
    d = Daemon(host="127.0.0.1")
    try:
        watcher = RecordingWatcher()
        d.attach_watcher(watcher)
        d.detach_watcher()
        assert watcher.watched == {}
        assert watcher.calls[-1] == ("detached", None)
        assert all(sock.fileno() != -1 for sock in d.sockets)
    finally:
        d.close()


def test_hand_written_select_loop_of_the_seed_serves_calls():
    d = Daemon(host="127.0.0.1")
    uri = d.register(Service(), "svc")
    with served_by_select_loop(d), proxy_for(uri) as proxy:
        assert proxy.echo([1, 2]) == [1, 2]
        assert len(proxy.big(3_000_000)) == 3_000_000  # pending output flushed by events()


# --- server types and workers -------------------------------------------------------------


def test_multiplex_runs_calls_in_the_loop_thread_and_in_worker_methods_elsewhere():
    config.SERVERTYPE = "multiplex"  # requestLoop() is a thread server unless told otherwise
    d = Daemon(host="127.0.0.1")
    uri = d.register(Service(), "svc")
    with serving(d) as loop_thread, proxy_for(uri) as proxy:
        assert proxy.thread_name() == loop_thread.name
        assert proxy.worker_thread_name() != loop_thread.name


def test_thread_server_runs_calls_in_worker_threads():
    config.SERVERTYPE = "thread"
    d = Daemon(host="127.0.0.1")
    uri = d.register(Service(), "svc")
    with serving(d) as loop_thread, proxy_for(uri) as proxy:
        assert proxy.thread_name() != loop_thread.name


def test_full_thread_pool_queues_calls_instead_of_refusing_them():
    config.SERVERTYPE = "thread"
    config.THREADPOOL_SIZE = 2
    config.THREADPOOL_SIZE_MIN = 2
    service = Service()
    d = Daemon(host="127.0.0.1")
    uri = d.register(service, "svc")
    results = []

    def call():
        with proxy_for(uri) as proxy:
            results.append(proxy.wait_for_release())

    with serving(d):
        callers = [threading.Thread(target=call) for _ in range(5)]
        for caller in callers:
            caller.start()
        wait_for(lambda: service.waiting == 2)
        with proxy_for(uri) as probe:  # both workers are blocked: this call waits in the queue
            service.release.set()
            assert probe.echo("queued") == "queued"
        for caller in callers:
            caller.join(TIMEOUT)
    assert results == [True] * 5
    assert d._calls.workers is None or d._calls.workers.threads <= 2


def test_call_blocked_in_a_worker_does_not_stop_the_loop_serving_others():
    config.SERVERTYPE = "thread"
    service = Service()
    d = Daemon(host="127.0.0.1")
    uri = d.register(service, "svc")
    done = []
    with serving(d):
        blocked = threading.Thread(target=lambda: done.append(proxy_for(uri).wait_for_release()))
        blocked.start()
        wait_for(lambda: service.waiting == 1)
        with proxy_for(uri) as other:
            assert other.echo("served meanwhile") == "served meanwhile"
        service.release.set()
        blocked.join(TIMEOUT)
    assert done == [True]


def test_oneway_calls_run_inline_under_multiplex_and_keep_their_order():
    config.SERVERTYPE = "multiplex"
    config.ONEWAY_THREADED = False  # Pyro4's default runs them in the background, in no set order
    service = Service()
    d = Daemon(host="127.0.0.1")
    uri = d.register(service, "svc")
    with serving(d), proxy_for(uri) as proxy:
        for _ in range(50):
            proxy.fire()
        assert proxy.echo("after") == "after"  # same connection: the oneways ran first
        assert service.oneways == 50


# --- streams ------------------------------------------------------------------------------


def test_generator_result_is_streamed_item_by_item():
    d = Daemon(host="127.0.0.1")
    uri = d.register(Service(), "svc")
    with serving(d), proxy_for(uri) as proxy:
        assert list(proxy.count(5)) == [0, 1, 2, 3, 4]
        assert len(d._streams) == 0


def test_stream_closed_early_is_dropped_by_the_daemon():
    d = Daemon(host="127.0.0.1")
    uri = d.register(Service(), "svc")
    with serving(d), proxy_for(uri) as proxy:
        stream = proxy.count(100)
        assert next(stream) == 0
        stream.close()
        assert proxy.echo("sync") == "sync"  # the oneway close_stream was handled before this
        assert len(d._streams) == 0


def test_stream_of_a_disconnected_client_expires_after_its_linger_time():
    config.ITER_STREAM_LINGER = 0.2
    d = Daemon(host="127.0.0.1")
    uri = d.register(Service(), "svc")
    with serving(d):
        proxy = proxy_for(uri)
        stream = proxy.count(100)
        assert next(stream) == 0
        stream_id = stream.stream_id
        proxy._pyroRelease()
        with proxy_for(f"PYRO:{DAEMON_NAME}@{d.locationStr}") as daemon_proxy:
            wait_for(lambda: stream_id not in d._streams)
            with pytest.raises(errors.PyroError, match="item stream terminated"):
                daemon_proxy.get_next_stream_item(stream_id)


def test_lingering_stream_can_be_picked_up_from_a_new_connection():
    d = Daemon(host="127.0.0.1")
    uri = d.register(Service(), "svc")
    with serving(d):
        proxy = proxy_for(uri)
        stream = proxy.count(3)
        assert next(stream) == 0
        stream_id = stream.stream_id
        proxy._pyroRelease()
        with proxy_for(f"PYRO:{DAEMON_NAME}@{d.locationStr}") as daemon_proxy:
            assert daemon_proxy.get_next_stream_item(stream_id) == 1


# --- half frames and output buffering -------------------------------------------------------




def test_half_received_frame_is_closed_after_the_deadline_with_a_logged_reason(caplog):
    config.HALF_FRAME_TIMEOUT = 0.2
    d = Daemon(host="127.0.0.1")
    uri = d.register(Service(), "svc")
    with caplog.at_level(logging.INFO, logger="pyro_loops"), serving(d):
        with socket.create_connection(("127.0.0.1", uri.port), timeout=TIMEOUT) as stalled:
            stalled.sendall(b"PYRO\x00\x30")  # six bytes of a header, then nothing
            with proxy_for(uri) as proxy:
                assert proxy.echo("not delayed") == "not delayed"
            assert wait_closed(stalled)
    assert "message incomplete after 0.2 s" in caplog.text


def test_idle_daemon_has_no_deadline_and_a_half_frame_sets_one():
    config.HALF_FRAME_TIMEOUT = 30.0
    config.HANDSHAKE_TIMEOUT = 0.0  # a fresh connection's handshake deadline is pinned in test_bounds
    d = Daemon(host="127.0.0.1")
    watcher = RecordingWatcher()
    d.attach_watcher(watcher)
    try:
        client = socket.create_connection(("127.0.0.1", d.sock.getsockname()[1]), timeout=TIMEOUT)
        d.handle_event(d.sock, hosting.READ)
        assert d.next_deadline() is None
        conn_sock = next(s for s in watcher.watched if s not in (d.sock, d._wakeup.reader))
        client.sendall(b"PYRO")
        select.select([conn_sock], [], [], TIMEOUT)
        d.handle_event(conn_sock, hosting.READ)
        assert d.next_deadline() is not None
        assert d.next_deadline() > time.monotonic() + 20
        client.close()
        select.select([conn_sock], [], [], TIMEOUT)
        d.handle_event(conn_sock, hosting.READ)
        assert d.next_deadline() is None
    finally:
        d.close()


def test_reply_larger_than_the_socket_buffers_reaches_a_late_reader_while_others_are_served():
    size = 20_000_000  # far more than the loopback socket buffers hold
    d = Daemon(host="127.0.0.1")
    uri = d.register(Service(), "svc")
    with serving(d), RawClient(uri.port) as late:
        late.handshake()
        late.send_call("svc", "big", (size,), seq=7)
        with proxy_for(uri) as other:  # the big reply is queued (and the reader not reading) meanwhile
            assert other.echo("served meanwhile") == "served meanwhile"
        reply = late.read_message()
        assert (reply.type, reply.seq) == (_wire.MSG_RESULT, 7)
        assert SERPENT.loads(reply.data) == b"x" * size
