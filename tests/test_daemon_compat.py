"""Daemon behaviour Pyro4 programs rely on: the thread server of requestLoop(), combine(),
the call context seen by instance creators, resource tracking.

Daemons run over real sockets on 127.0.0.1, served by ``requestLoop`` or a
hand-written select loop in a thread, or by the select loop adapter; every
blocking wait has a timeout.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid

import pytest
from test_daemon import served_by_select_loop, serving

from pyro_loops import Daemon, Proxy, SerializedBlob, behavior, config, current_context, errors, expose, oneway
from pyro_loops.adapters.selectloop import SelectLoop, attach
from pyro_loops.naming import BroadcastServer

TIMEOUT = 10.0


request_loop = serving  # requestLoop() in a thread of its own
hand_written_loop = served_by_select_loop  # the seed's select() + events() loop


class _AdapterServed:
    """A daemon attached to a SelectLoop, in the shape ``serving`` runs: the loop runs until
    the daemon is closed (close() from another thread is carried out by the loop)."""

    def __init__(self, daemon: Daemon, loop: SelectLoop) -> None:
        self.daemon, self.loop = daemon, loop
        attach(daemon, loop)

    def requestLoop(self) -> None:  # noqa: N802 - what serving() runs
        self.loop.run(until=lambda: self.daemon._closed, max_wait=0.05)

    def shutdown(self) -> None:
        self.daemon.close()


@contextlib.contextmanager
def adapter_loop(daemon: Daemon):
    """``daemon`` attached to a SelectLoop (an adapter) that runs in a thread of its own."""
    with SelectLoop() as loop, serving(_AdapterServed(daemon, loop)) as thread:
        yield thread


@expose
class Threads:
    """Tells which thread runs its calls; meets other calls at a barrier; calls its own daemon."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=TIMEOUT)
        self.released = threading.Event()
        self.release_seen: bool | None = None

    def thread_name(self) -> str:
        return threading.current_thread().name

    def meet(self) -> str:
        self.barrier.wait()  # raises BrokenBarrierError unless a second call runs meanwhile
        return threading.current_thread().name

    def call_own_daemon(self, uri: str) -> str:
        with Proxy(uri) as proxy:
            return proxy.thread_name()

    @oneway
    def wait_for_release(self) -> None:
        self.release_seen = self.released.wait(TIMEOUT)

    def release(self) -> None:
        self.released.set()

    def seen(self) -> bool | None:
        return self.release_seen


def _threads_daemon() -> tuple[Daemon, str]:
    daemon = Daemon(host="127.0.0.1")
    return daemon, str(daemon.register(Threads(), "threads"))


# --- the thread server of requestLoop() and hand-written loops -----------------------------


@pytest.mark.parametrize("serve", [request_loop, hand_written_loop], ids=["requestLoop", "events"])
def test_own_loop_daemon_runs_concurrent_calls_in_parallel(serve):
    daemon, uri = _threads_daemon()
    results: list[str] = []
    with serve(daemon), Proxy(uri) as first, Proxy(uri) as second:
        other = threading.Thread(target=lambda: results.append(second.meet()))
        other.start()
        results.append(first.meet())
        other.join(TIMEOUT)
    assert len(set(results)) == 2


def test_request_loop_daemon_serves_a_call_its_own_method_makes_into_it():
    daemon, uri = _threads_daemon()
    with request_loop(daemon) as loop_thread, Proxy(uri) as proxy:
        assert proxy.call_own_daemon(uri) not in (loop_thread.name, threading.current_thread().name)


def test_explicit_multiplex_request_loop_refuses_a_call_into_its_own_daemon():
    config.SERVERTYPE = "multiplex"
    daemon, uri = _threads_daemon()
    with request_loop(daemon), Proxy(uri) as proxy:
        with pytest.raises(errors.PyroError, match="deadlock"):
            proxy.call_own_daemon(uri)


def test_one_connection_has_its_calls_run_in_one_thread_and_another_in_another():
    daemon, uri = _threads_daemon()
    with request_loop(daemon) as loop_thread, Proxy(uri) as first, Proxy(uri) as second:
        names = {first.thread_name() for _ in range(5)}
        assert len(names) == 1 and loop_thread.name not in names
        met: dict[str, str] = {}
        holder = threading.Thread(target=lambda: met.update(first=first.meet()))
        holder.start()
        met["second"] = second.meet()  # both at once: two threads
        holder.join(TIMEOUT)
        assert met["first"] != met["second"]
        for _ in range(3):
            assert (first.thread_name(), second.thread_name()) == (met["first"], met["second"])


def test_adapter_attached_daemon_runs_calls_in_the_loop_thread_when_servertype_unset():
    daemon, uri = _threads_daemon()
    with adapter_loop(daemon) as loop_thread, Proxy(uri) as proxy:
        assert proxy.thread_name() == loop_thread.name


def test_explicit_thread_servertype_applies_to_an_adapter_attached_daemon():
    config.SERVERTYPE = "thread"
    daemon, uri = _threads_daemon()
    with adapter_loop(daemon) as loop_thread, Proxy(uri) as proxy:
        assert proxy.thread_name() != loop_thread.name


@pytest.mark.parametrize("servertype", [None, "multiplex", "thread"])
def test_oneway_call_runs_in_the_background_unless_in_an_adapter_loop_by_default(servertype):
    config.SERVERTYPE = servertype
    daemon, uri = _threads_daemon()
    with request_loop(daemon), Proxy(uri) as proxy:
        proxy.wait_for_release()
        proxy.release()  # served while the oneway call waits, only if that runs aside
        with Proxy(uri) as watcher:
            for _ in range(int(TIMEOUT * 100)):
                if watcher.seen() is not None:
                    break
                threading.Event().wait(0.01)
            assert watcher.seen() is True


def test_oneway_call_in_an_adapter_loop_runs_inline_when_servertype_unset():
    daemon, uri = _threads_daemon()
    with adapter_loop(daemon) as loop_thread, Proxy(uri) as proxy:
        proxy.release()  # so the oneway call does not wait
        proxy.wait_for_release()
        assert proxy.seen() is True  # ran, in order, before this call
        assert proxy.thread_name() == loop_thread.name


# --- combine ---------------------------------------------------------------------------------


@pytest.mark.parametrize("serve", [request_loop, hand_written_loop], ids=["requestLoop", "events"])
def test_combined_daemon_is_served_by_the_other_daemons_loop(serve):
    main, main_uri = _threads_daemon()
    other = Daemon(host="127.0.0.1")
    other_uri = other.register(Threads(), "other")
    main.combine(other)
    try:
        with serve(main), Proxy(main_uri) as first, Proxy(other_uri) as second:
            assert first.thread_name()
            assert second.thread_name()
    finally:
        other.close()


def test_combining_a_daemon_twice_is_refused():
    main, other = Daemon(host="127.0.0.1"), Daemon(host="127.0.0.1")
    try:
        main.combine(other)
        with pytest.raises(errors.DaemonError):
            main.combine(other)
    finally:
        main.close()
        other.close()


# --- the call context ------------------------------------------------------------------------


seen_by_creator: list[tuple] = []


def _creator(cls: type) -> object:
    seen_by_creator.append((dict(current_context.annotations), current_context.correlation_id))
    return cls()


@expose
@behavior(instance_mode="percall", instance_creator=_creator)
class PerCall:
    def correlation(self) -> str:
        return str(current_context.correlation_id)


def test_instance_creator_runs_in_the_calls_context():
    seen_by_creator.clear()
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(PerCall, "percall")
    sent = uuid.uuid4()
    with request_loop(daemon), Proxy(uri) as proxy:
        current_context.correlation_id = sent
        try:
            assert proxy.correlation() == str(sent)
        finally:
            current_context.correlation_id = None
    annotations, correlation = seen_by_creator[-1]
    assert correlation == sent and annotations["CORR"] == sent.bytes


def test_call_without_correlation_id_sees_a_fresh_uuid():
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(PerCall, "percall")
    with request_loop(daemon), Proxy(uri) as proxy:
        first, second = proxy.correlation(), proxy.correlation()
    assert uuid.UUID(first).version == 4 and first != second


# --- resource tracking -----------------------------------------------------------------------


class Resource:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def close(self) -> None:
        self.log.append("closed " + self.name)


@expose
class Tracking:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.kept: dict[str, Resource] = {}  # tracked resources are weakly held

    def allocate(self, name: str) -> None:
        self.kept[name] = Resource(self.log, name)
        current_context.track_resource(self.kept[name])

    def release(self, name: str) -> None:
        current_context.untrack_resource(self.kept[name])

    def tracked(self) -> list[str]:
        return sorted(r.name for r in current_context.tracked_resources)


def test_tracked_resources_close_when_the_connection_ends_after_client_disconnect_saw_them():
    service = Tracking()

    class Watching(Daemon):
        def clientDisconnect(self, conn):  # noqa: N802 - Pyro4's name
            service.log.append("disconnect from %s:%s sees %s" % (
                *conn.sock.getpeername(), sorted(r.name for r in conn.tracked_resources)))

    daemon = Watching(host="127.0.0.1")
    uri = daemon.register(service, "tracking")
    with request_loop(daemon):
        with Proxy(uri) as proxy:
            proxy.allocate("a")
            proxy.allocate("b")
            proxy.release("b")
            assert proxy.tracked() == ["a"]
        for _ in range(int(TIMEOUT * 100)):
            if "closed a" in service.log:
                break
            threading.Event().wait(0.01)
    assert service.log[0].startswith("disconnect from 127.0.0.1:") and service.log[0].endswith("sees ['a']")
    assert service.log[1:] == ["closed a"]


def test_tracking_a_resource_outside_a_call_is_refused():
    with pytest.raises(errors.PyroError, match="outside a call"):
        current_context.track_resource(Resource([], "x"))


# --- a daemon on a connected socket ----------------------------------------------------------


def test_daemon_and_proxies_on_a_socket_pair_skip_the_handshake_and_share_the_connection():
    server_end, client_end = socket.socketpair()
    daemon = Daemon(connected_socket=server_end)
    daemon.register(Threads(), "threads")
    assert daemon.locationStr == "./u:<<not-bound>>" and daemon.sockets == [daemon._wakeup.reader, server_end]
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    with Proxy("threads", connected_socket=client_end) as proxy:
        assert proxy.thread_name()
    with Proxy("threads", connected_socket=client_end) as proxy:  # the first left the socket open
        assert proxy.thread_name()
    client_end.close()
    thread.join(TIMEOUT)  # the daemon closes when its one connection ends
    assert not thread.is_alive()


# --- SerializedBlob ----------------------------------------------------------------------------


@expose
class Forwarder:
    """Passes blobs on without decoding them."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[tuple] = []

    def dispatch(self, blob: SerializedBlob) -> str:
        self.seen.append((type(blob).__name__, blob.info, blob._contains_blob))
        with Proxy(self.target) as listener:
            return listener.receive(blob)


@expose
class Listener:
    def receive(self, blob: SerializedBlob) -> str:
        return f"{blob.info}: {blob.deserialized()}"


def test_a_blob_passes_a_daemon_serialized_and_is_decoded_where_asked():
    listening = Daemon(host="127.0.0.1")
    listener_uri = str(listening.register(Listener(), "listener"))
    forwarding = Daemon(host="127.0.0.1")
    forwarder = Forwarder(listener_uri)
    uri = forwarding.register(forwarder, "forwarder")
    with request_loop(listening), request_loop(forwarding), Proxy(uri) as proxy:
        assert proxy.dispatch(SerializedBlob("weather", {"temp": 21})) == "weather: {'temp': 21}"
        with pytest.raises(errors.SerializeError, match="only argument"):
            proxy.dispatch(SerializedBlob("x", 1), 2)
    assert forwarder.seen == [("SerializedBlob", "weather", True)]


# --- the name server's broadcast responder -----------------------------------------------------


def test_broadcast_server_run_in_thread_answers_until_closed():
    config.POLLTIMEOUT = 0.05  # how soon the thread notices the close
    server = BroadcastServer("PYRO:Pyro.NameServer@127.0.0.1:9999", bchost="127.0.0.1", bcport=0)
    thread = server.runInThread()
    port = server.getPort()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as asker:
        asker.settimeout(TIMEOUT)
        asker.sendto(b"GET_NSURI", ("127.0.0.1", port))
        assert asker.recvfrom(1024)[0] == b"PYRO:Pyro.NameServer@127.0.0.1:9999"
    server.close()
    thread.join(TIMEOUT)
    assert not thread.is_alive()


# --- the name server's dbm storage ---------------------------------------------------------------


def test_dbm_storage_file_is_shared_with_pyro4s_dbm_storage(tmp_path, caplog):
    from Pyro4.naming_storage import DbmStorage as Pyro4DbmStorage

    from pyro_loops._nsstorage import DbmStorage, open_storage

    path = str(tmp_path / "names.dbm")
    ours = open_storage("dbm:" + path)
    assert isinstance(ours, DbmStorage)
    ours.put("example.thing", "PYRO:thing@localhost:9999", {"class:Thing"})
    ours.put("example.other", "PYRO:other@localhost:9999", ())
    assert "cannot keep metadata" in caplog.text
    assert ours.delete(["example.other", "never.there"]) == 1
    theirs = Pyro4DbmStorage(path)
    try:
        assert dict(theirs.items()) == {"example.thing": ("PYRO:thing@localhost:9999", frozenset())}
        theirs["from.pyro4"] = ("PYRO:p4@localhost:1", frozenset())
    finally:
        theirs.close()
    assert ours.get("from.pyro4").uri == "PYRO:p4@localhost:1" and len(ours) == 2
    assert sorted(name for name, _ in ours.entries()) == ["example.thing", "from.pyro4"]
