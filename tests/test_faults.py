"""Faults (issue 6): a client process killed mid-call, server objects raising in
every way, a server restarted or killed under open proxies, connections reset
on either side, and a ledger of every call made by many clients at once.

What each test holds the daemon to: it keeps serving everyone else, each
affected caller gets a clear error (never a hang), and no accepted call
vanishes: it is answered, or its connection is closed with a logged reason.

Calls run in three ways, because a fault surfaces on a different thread in each:
"multiplex" (inline on the loop thread), "in_worker" (multiplex, methods marked
``@in_worker``) and "thread" (SERVERTYPE "thread"). Daemons run ``requestLoop``
in a thread of this process unless a test needs a process it can kill.
"""

from __future__ import annotations

import collections
import logging
import signal
import socket
import struct
import threading

import pytest

from pyro_loops import Daemon, batch, config, errors, expose, in_worker, oneway
from pyro_loops import _protocol, _wire
from pyro_loops._serializers import get_serializer
from _util import TIMEOUT, Peer, free_port, peer_env, wait_until
from test_daemon import RawClient, proxy_for, serving

MODES = ["multiplex", "in_worker", "thread"]
SERPENT = get_serializer("serpent")


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    return caplog


class RecordingDaemon(Daemon):
    """Records the client port of every connection that closes (``clientDisconnect`` hook)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.disconnected: list[int] = []

    def clientDisconnect(self, conn):  # noqa: N802 - Pyro4's name
        self.disconnected.append(conn.addr[1])


def start(mode: str, obj_class: type, object_id: str = "svc", port: int = 0):
    """A RecordingDaemon for ``mode`` with a fresh ``obj_class`` instance registered."""
    config.SERVERTYPE = "thread" if mode == "thread" else "multiplex"
    if mode == "in_worker":
        obj_class = in_worker(type(obj_class.__name__, (obj_class,), {}))
    daemon = RecordingDaemon(host="127.0.0.1", port=port)
    obj = obj_class()
    uri = daemon.register(obj, object_id)
    return daemon, uri, obj


def logged_about(logs, port: int) -> list[str]:
    """INFO-or-worse log lines that name the client connection on ``port``."""
    return [r.getMessage() for r in logs.records
            if r.levelno >= logging.INFO and f"'127.0.0.1', {port})" in r.getMessage()]


def reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: what a crashed host or a firewall sends."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --- a client process killed mid-call ------------------------------------------------------------


@expose
class Blocking:
    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()

    def block(self):
        self.started.set()
        self.release.wait(TIMEOUT)
        return "x" * 100_000

    def echo(self, value):
        return value


# Connects, says which local port it uses, then waits in a call until it is killed.
KILLED_CLIENT = """
import sys, pyro_loops
proxy = pyro_loops.Proxy(sys.argv[1])
proxy._pyroBind()
print(proxy._pyroConnection.getsockname()[1], flush=True)
proxy.block()
"""


def kill_client_mid_call(daemon, uri, obj) -> int:
    """SIGKILL a client process while the daemon runs its call, then let the call
    finish; returns the dead client's port once the daemon has closed its connection."""
    client = Peer(["-c", KILLED_CLIENT, str(uri)], env=peer_env())
    try:
        port = int(client.readline())
        assert obj.started.wait(TIMEOUT)
        client.proc.send_signal(signal.SIGKILL)
        client.proc.wait(TIMEOUT)
    finally:
        client.stop()
    obj.release.set()  # the reply now goes to a dead peer
    wait_until(lambda: port in daemon.disconnected)
    return port


@pytest.mark.parametrize("mode", MODES)
def test_daemon_keeps_serving_others_when_a_client_process_is_killed_mid_call(mode):
    daemon, uri, obj = start(mode, Blocking)
    with serving(daemon), proxy_for(uri) as good:
        assert good.echo("before") == "before"
        kill_client_mid_call(daemon, uri, obj)
        assert good.echo("after") == "after"
        with proxy_for(uri) as newcomer:
            assert newcomer.echo("new") == "new"


@pytest.mark.parametrize("mode", MODES)
def test_reply_to_a_killed_client_is_dropped_with_a_log_line(mode, logs):
    daemon, uri, obj = start(mode, Blocking)
    with serving(daemon):
        port = kill_client_mid_call(daemon, uri, obj)
    lines = logged_about(logs, port)
    assert any("dropped" in line or "disconnected" in line for line in lines), \
        f"the killed client's call ended without a log line saying so: {lines}"


# --- server objects raising in every way -----------------------------------------------------------


class Abort(BaseException):
    """A BaseException subclass other than KeyboardInterrupt and SystemExit."""


class Locked(Exception):
    """Cannot be serialized: one of its attributes is a lock."""

    def __init__(self, text):
        super().__init__(text)
        self.lock = threading.Lock()


class LockedAbort(Abort):
    def __init__(self, text):
        super().__init__(text)
        self.lock = threading.Lock()


class Mute(Locked):
    """Cannot be serialized, and str() of it fails too."""

    def __str__(self):
        raise RuntimeError("str() refused")


class Frozen(Exception):
    """Takes no attributes, so no remote traceback can be attached to it."""

    def __setattr__(self, name, value):
        raise TypeError("frozen exception")


class AbortsWhenSerialized:
    """A result whose serialization raises a BaseException subclass."""

    def __getstate__(self):
        raise Abort("while serializing the result")


class FailsWhenSerialized:
    def __getstate__(self):
        raise ValueError("while serializing the result")


@expose
class Raiser:
    def __init__(self):
        self.lock = threading.Lock()
        self.ran = collections.Counter()

    def _count(self, name):
        with self.lock:
            self.ran[name] += 1

    def ping(self):
        self._count("ping")
        return "pong"

    def value_error(self):
        raise ValueError("bad value", 7)

    def abort(self):
        raise Abort("stop")

    def generator_exit(self):
        raise GeneratorExit("closing")

    def stop_iteration(self):
        raise StopIteration("early")

    def recursion(self, depth=0):
        return self.recursion(depth + 1)

    def locked(self):
        raise Locked("has a lock")

    def locked_abort(self):
        raise LockedAbort("has a lock too")

    def mute(self):
        raise Mute("unprintable")

    def frozen(self):
        raise Frozen("cold")

    def result_fails(self):
        return FailsWhenSerialized()

    def result_aborts(self):
        return AbortsWhenSerialized()

    def stream(self):
        yield 1
        raise Abort("mid-stream")

    @property
    def broken(self):
        raise KeyError("getter")

    @broken.setter
    def broken(self, value):
        raise Abort("setter")

    @oneway
    def oneway_abort(self):
        self._count("oneway_abort")
        raise Abort("nobody hears this")


def call_case(proxy, case: str):
    """The outcome of one raising case: ("raised", exception) or ("returned", value)."""
    try:
        if case == "property_get":
            return "returned", proxy.broken
        if case == "property_set":
            proxy.broken = 1
            return "returned", None
        if case == "stream":
            items = iter(proxy.stream())
            return "returned", [next(items), next(items)]
        return "returned", getattr(proxy, case)()
    except errors.TimeoutError:
        raise AssertionError(f"{case}: no answer within {proxy._pyroTimeout} s: the call was lost") from None
    except BaseException as exc:  # noqa: BLE001 - BaseException subclasses are the point here
        return "raised", exc


def is_answered(exc) -> bool:
    """An exception reply reached the caller: anything but a failed connection (a SerializeError
    counts, since the reply arrived and only its class could not be rebuilt)."""
    return not isinstance(exc, errors.CommunicationError) or isinstance(exc, errors.SerializeError)


# case -> check of the outcome
RAISING_CASES = {
    "value_error": (lambda kind, exc: type(exc) is ValueError and exc.args == ("bad value", 7)
                    and "value_error" in "".join(exc._pyroTraceback)),
    # the caller cannot rebuild a class of the server's module: a clear SerializeError naming it
    "abort": (lambda kind, exc: isinstance(exc, errors.SerializeError) and "Abort" in str(exc)),
    "generator_exit": (lambda kind, exc: type(exc) is GeneratorExit),
    "stop_iteration": (lambda kind, exc: type(exc) is StopIteration and exc.args == ("early",)),
    "recursion": (lambda kind, exc: type(exc) is RecursionError),
    "locked": (lambda kind, exc: type(exc) is errors.PyroError and "Error serializing exception" in str(exc)
               and "has a lock" in str(exc)),
    "locked_abort": (lambda kind, exc: type(exc) is errors.PyroError and "LockedAbort" in str(exc)),
    "mute": (lambda kind, exc: kind == "raised" and is_answered(exc)),
    "frozen": (lambda kind, exc: kind == "raised" and is_answered(exc)),
    "result_fails": (lambda kind, exc: isinstance(exc, errors.SerializeError)
                     and "while serializing the result" in str(exc)),
    "result_aborts": (lambda kind, exc: kind == "raised" and is_answered(exc)),
    "property_get": (lambda kind, exc: type(exc) is KeyError and exc.args == ("getter",)),
    "property_set": (lambda kind, exc: isinstance(exc, errors.SerializeError) and "Abort" in str(exc)),
    "stream": (lambda kind, exc: isinstance(exc, errors.SerializeError) and "Abort" in str(exc)),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", RAISING_CASES)
def test_server_object_raising_gives_its_caller_a_clear_error_and_others_are_served(case, mode, logs):
    check = RAISING_CASES[case]
    daemon, uri, _ = start(mode, Raiser)
    with serving(daemon), proxy_for(uri) as caller, proxy_for(uri) as other:
        assert other.ping() == "pong"
        caller._pyroTimeout = 3  # the lost-call bugs would otherwise cost TIMEOUT each
        kind, outcome = call_case(caller, case)
        assert check(kind, outcome), f"{case}: {kind} {outcome!r}"
        assert other.ping() == "pong"
        assert caller.ping() == "pong"  # the caller itself carries on (reconnecting if it had to)


@pytest.mark.parametrize("mode", MODES)
def test_batch_stops_at_a_base_exception_and_reports_it_after_the_earlier_results(mode):
    daemon, uri, obj = start(mode, Raiser)
    with serving(daemon), proxy_for(uri) as proxy:
        calls = batch(proxy)
        calls.ping()
        calls.generator_exit()  # a class the caller can rebuild, or the whole reply would be unreadable
        calls.ping()
        results = calls()
        assert next(results) == "pong"
        with pytest.raises(GeneratorExit, match="closing"):
            next(results)
        assert obj.ran["ping"] == 1  # the call after the exception never ran
        assert proxy.ping() == "pong"


@pytest.mark.parametrize("mode", MODES)
def test_oneway_call_raising_a_base_exception_is_logged_and_the_connection_carries_on(mode, logs):
    daemon, uri, obj = start(mode, Raiser)
    with serving(daemon), proxy_for(uri) as proxy:
        assert proxy.oneway_abort() is None
        wait_until(lambda: "raised Abort: nobody hears this" in logs.text)
        assert proxy.ping() == "pong"
        assert obj.ran["oneway_abort"] == 1


# --- servers restarted, gone, or killed under open proxies ------------------------------------------


@expose
class Generation:
    """Tells which daemon answered: each start makes a new instance."""
    started = 0

    def __init__(self):
        Generation.started += 1
        self.generation = Generation.started
        self.release = threading.Event()
        self.started_call = threading.Event()

    def which(self):
        return self.generation

    @in_worker
    def block(self):
        self.started_call.set()
        self.release.wait(TIMEOUT)
        return "unblocked"


@pytest.mark.parametrize("servertype", ["multiplex", "thread"])
def test_open_proxy_reconnects_transparently_after_the_server_restarts_on_the_same_port(servertype):
    first, uri, _ = start(servertype, Generation)
    proxy = proxy_for(uri)
    proxy._pyroMaxRetries = 1  # with none (MAX_RETRIES=0) the first call raises ConnectionClosedError, as in Pyro4
    with proxy:
        with serving(first):
            before = proxy.which()
        second, _, _ = start(servertype, Generation, port=uri.port)
        with serving(second):
            assert proxy.which() == before + 1  # the same proxy, answered by the new daemon
            assert proxy.which() == before + 1


def test_call_on_an_open_proxy_after_its_server_is_gone_raises_connection_closed_error():
    daemon, uri, _ = start("multiplex", Generation)
    with proxy_for(uri) as proxy:
        with serving(daemon):
            proxy.which()
        with pytest.raises(errors.ConnectionClosedError):
            proxy.which()


def test_call_on_an_open_proxy_after_its_server_is_gone_fails_and_works_once_it_is_back():
    daemon, uri, _ = start("multiplex", Generation)
    with proxy_for(uri) as proxy:
        with serving(daemon):
            proxy.which()
        with pytest.raises(errors.ConnectionClosedError):
            proxy.which()  # the connection it had was closed, as Pyro4 says
        with pytest.raises(errors.CommunicationError) as failure:
            proxy.which()
        assert not isinstance(failure.value, errors.TimeoutError), "the call hung instead of failing"
        assert "127.0.0.1" in str(failure.value)
        again, _, _ = start("multiplex", Generation, port=uri.port)
        with serving(again):
            assert proxy.which() >= 1


@pytest.mark.parametrize("mode", ["in_worker", "thread"])
def test_call_in_flight_when_the_daemon_shuts_down_gets_connection_closed_error(mode):
    daemon, uri, obj = start(mode, Generation)
    outcome = []
    with proxy_for(uri) as proxy:
        with serving(daemon):
            proxy._pyroBind()
            caller = threading.Thread(target=lambda: outcome.append(call_case(proxy, "block")))
            caller.start()
            assert obj.started_call.wait(TIMEOUT)
        caller.join(TIMEOUT)
        obj.release.set()
        kind, exc = outcome[0]
        assert kind == "raised" and isinstance(exc, errors.ConnectionClosedError), outcome
        again, _, _ = start(mode, Generation, port=uri.port)
        with serving(again):
            assert proxy.which() >= 1


# A daemon in its own process: prints its URI, and "called" when block() starts.
SERVER_PROCESS = """
import sys, threading, pyro_loops

@pyro_loops.expose
class Service:
    def echo(self, value):
        return value

    @pyro_loops.in_worker
    def block(self):
        print("called", flush=True)
        threading.Event().wait()

daemon = pyro_loops.Daemon(host="127.0.0.1", port=int(sys.argv[1]))
print(daemon.register(Service(), "svc"), flush=True)
threading.Thread(target=lambda: (sys.stdin.read(), daemon.shutdown()), daemon=True).start()
daemon.requestLoop()
"""


def test_server_process_killed_mid_call_gives_connection_closed_error_and_its_successor_serves():
    port = free_port()
    server = Peer(["-c", SERVER_PROCESS, str(port)])
    outcome = []
    try:
        uri = server.readline()
        with proxy_for(uri) as proxy:
            assert proxy.echo(1) == 1
            caller = threading.Thread(target=lambda: outcome.append(call_case(proxy, "block")))
            caller.start()
            server.wait_for("^called$")
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait(TIMEOUT)
            caller.join(TIMEOUT)
            kind, exc = outcome[0]
            assert kind == "raised" and isinstance(exc, errors.ConnectionClosedError), outcome
            with Peer(["-c", SERVER_PROCESS, str(port)]) as successor:
                assert successor.readline() == uri
                assert proxy.echo(2) == 2
    finally:
        server.stop()


# --- connections reset on either side ------------------------------------------------------------------


@expose
class Sender:
    def echo(self, value):
        return value

    def big(self, size):
        return b"x" * size


@pytest.mark.parametrize("mode", MODES)
def test_client_reset_while_the_daemon_sends_its_reply_is_logged_and_others_are_served(mode, logs):
    daemon, uri, _ = start(mode, Sender)
    with serving(daemon), proxy_for(uri) as good:
        client = RawClient(uri.port)
        client.handshake()
        port = client.sock.getsockname()[1]
        client.send_call("svc", "big", (10_000_000,))
        assert client.sock.recv(1000)  # the reply is on its way
        reset(client.sock)
        wait_until(lambda: port in daemon.disconnected)
        assert good.echo("served") == "served"
    assert any("send failed" in line or "receive failed" in line for line in logged_about(logs, port)), \
        logged_about(logs, port)


@pytest.mark.parametrize("mode", MODES)
def test_client_reset_in_the_middle_of_a_request_is_logged_and_others_are_served(mode, logs):
    daemon, uri, _ = start(mode, Sender)
    with serving(daemon), proxy_for(uri) as good:
        client = RawClient(uri.port)
        client.handshake()
        port = client.sock.getsockname()[1]
        call = _wire.encode(_wire.Message(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", "echo", ("x" * 1000,), {}),
                                          1, 0, 1))
        client.send(call[:500])
        reset(client.sock)
        wait_until(lambda: port in daemon.disconnected)
        assert good.echo("served") == "served"
    assert any("receive failed" in line for line in logged_about(logs, port)), logged_about(logs, port)


def test_proxy_reset_by_the_daemon_while_sending_gets_connection_closed_error_and_recovers(logs):
    # Over MAX_MESSAGE_SIZE the daemon closes right after the header, with the rest of
    # the request unread: the kernel answers the proxy's remaining bytes with RST.
    config.MAX_MESSAGE_SIZE = 100_000
    daemon, uri, _ = start("multiplex", Sender)
    with serving(daemon), proxy_for(uri) as proxy:
        assert proxy.echo(1) == 1
        config.MAX_MESSAGE_SIZE = 0  # the daemon's connection keeps its limit; the proxy would refuse to send
        with pytest.raises(errors.ConnectionClosedError, match="send failed|receiving"):
            proxy.echo("x" * 20_000_000)
        assert proxy.echo(2) == 2
    assert "max message size exceeded" in logs.text


class ResettingPeer:
    """A server that does the Pyro handshake, reads one call and answers it with RST,
    as a crashing or firewalled server would; real sockets, no daemon."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.uri = f"PYRO:svc@127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(TIMEOUT)
        protocol = _protocol.ServerProtocol()
        while True:
            event = protocol.next_event()
            if event is None:
                data = conn.recv(65536)
                if not data:
                    conn.close()
                    return
                protocol.receive_data(data)
            elif isinstance(event, _protocol.ConnectRequest):
                meta = {"handshake": "hello", "meta": {"methods": ["echo"], "oneway": [], "attrs": []}}
                conn.sendall(protocol.connect_ok_bytes(event.msg, SERPENT.dumps(meta),
                                                       _wire.FLAGS_META_ON_CONNECT, {}))
            else:
                reset(conn)
                return

    def close(self) -> None:
        self.thread.join(TIMEOUT)
        self.listener.close()


def test_proxy_reset_by_the_server_before_the_reply_gets_connection_closed_error():
    peer = ResettingPeer()
    try:
        with proxy_for(peer.uri) as proxy:
            with pytest.raises(errors.ConnectionClosedError, match="receiving"):
                proxy.echo(1)
            assert proxy._pyroConnection is None  # the broken socket is not reused
    finally:
        peer.close()


# --- no call is lost silently --------------------------------------------------------------------------


@expose
class Ledger:
    """Counts, per client and kind, every call that reached the object."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = collections.Counter()

    def _note(self, kind, client):
        with self.lock:
            self.seen[(client, kind)] += 1

    def echo(self, client, i):
        self._note("echo", client)
        return client, i

    @in_worker
    def work(self, client, i):
        self._note("work", client)
        return client, i

    def fail(self, client, i):
        self._note("fail", client)
        raise ValueError(client, i)

    @in_worker
    def fail_in_worker(self, client, i):
        self._note("fail_in_worker", client)
        raise ValueError(client, i)

    @oneway
    def fire(self, client, i):
        self._note("fire", client)

    @oneway
    @in_worker
    def fire_in_worker(self, client, i):
        self._note("fire_in_worker", client)


KINDS = ["echo", "work", "fail", "fail_in_worker", "fire", "fire_in_worker"]
ONEWAY_KINDS = {"fire", "fire_in_worker"}


@pytest.mark.parametrize("servertype", ["multiplex", "thread"])
def test_every_call_of_many_concurrent_clients_is_answered_exactly_once(servertype, logs):
    clients, calls = 8, 60
    daemon, uri, ledger = start(servertype, Ledger)
    answered = collections.Counter()  # (client, kind) -> answers received
    sent = collections.Counter()
    problems = []
    lock = threading.Lock()

    def client(n):
        try:
            with proxy_for(uri) as proxy:
                for i in range(calls):
                    kind = KINDS[(i + n) % len(KINDS)]
                    with lock:
                        sent[(n, kind)] += 1
                    try:
                        result = getattr(proxy, kind)(n, i)
                    except ValueError as exc:
                        result = ("raised", exc.args)
                    expected = {"fail": ("raised", (n, i)), "fail_in_worker": ("raised", (n, i))}.get(
                        kind, None if kind in ONEWAY_KINDS else (n, i))
                    if result != expected:
                        problems.append((n, i, kind, result))
                    elif kind not in ONEWAY_KINDS:
                        with lock:
                            answered[(n, kind)] += 1
        except Exception as exc:  # reported below: a thread cannot fail the test itself
            problems.append((n, repr(exc)))

    with serving(daemon):
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 3)
        assert problems == []
        wait_until(lambda: sum(ledger.seen.values()) == clients * calls)  # oneway calls finish later
    with ledger.lock:
        seen = dict(ledger.seen)
    assert seen == dict(sent)  # every call reached the object exactly once...
    assert answered == {key: count for key, count in sent.items() if key[1] not in ONEWAY_KINDS}  # ...and back
    assert len(daemon.disconnected) == clients  # each client's connection ended once, when it left
    assert "closing connection" not in logs.text  # no connection needed closing for a reason
