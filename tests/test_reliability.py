"""Nothing accepted is lost, nothing is left hanging (issue #10).

Clients that close or half-close right after sending still get every request
executed and answered; a connection whose handling fails inside the daemon is
closed at once; calls caught by ``daemon.close()`` are answered or logged; the
exposure check evaluates nothing it refuses; a full fd table pauses accepting.
Real sockets on 127.0.0.1, stock Pyro4 4.82 clients in subprocesses.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import threading
import time

import pytest

from pyro_loops import Daemon, Proxy, _wire, config, expose, in_worker, oneway
from pyro_loops._serializers import get_serializer
from _util import PEERS, Peer, PeerError, pyro4_client, wait_until
from test_daemon import TIMEOUT, RawClient, serving

SERPENT = get_serializer("serpent")
LARGE = 100 * 1024  # an argument this big makes the daemon decode the request in a worker


@expose
class Service:
    def __init__(self) -> None:
        self.hits = 0
        self.lock = threading.Lock()

    @oneway
    def hit(self) -> None:
        with self.lock:
            self.hits += 1

    @oneway
    @in_worker
    def hit_in_worker(self) -> None:
        self.hit()

    def echo(self, value):
        return value

    @in_worker
    def echo_in_worker(self, value):
        return value

    async def echo_async(self, value):
        await asyncio.sleep(0)
        return value


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    return caplog


def start(service, **settings) -> tuple[Daemon, object]:
    for name, value in settings.items():
        setattr(config, name, value)
    daemon = Daemon(host="127.0.0.1")
    return daemon, daemon.register(service, "svc")


def pipeline(client: RawClient, calls: list[tuple[str, tuple]]) -> None:
    """Send calls (seq 1, 2, ...) in one write, so the daemon receives them together."""
    client.send(b"".join(
        _wire.encode(_wire.Message(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", method, args, {}),
                                   SERPENT.serializer_id, 0, seq))
        for seq, (method, args) in enumerate(calls, 1)))


def half_close_after_calls(port: int, calls: list[tuple[str, object]]) -> list:
    """Send every call in one go, shut down the sending side, and read the replies.

    Returns the decoded results in arrival order; asserts the daemon closed
    the connection after the last one.
    """
    with RawClient(port) as client:
        client.handshake()
        pipeline(client, [(method, (arg,)) for method, arg in calls])
        client.sock.shutdown(socket.SHUT_WR)
        replies = [client.read_message() for _ in calls]
        assert [r.seq for r in replies] == list(range(1, len(calls) + 1))
        assert not any(r.flags & _wire.FLAGS_EXCEPTION for r in replies), \
            [SERPENT.loads(r.data) for r in replies]
        assert client.closed_by_peer()
        return [SERPENT.loads(r.data) for r in replies]


# --- end of stream and half-close --------------------------------------------------------------


@pytest.mark.parametrize("servertype, method", [("multiplex", "hit"), ("thread", "hit"),
                                                ("multiplex", "hit_in_worker")])
def test_every_oneway_call_of_a_pyro4_client_that_releases_right_after_is_run(servertype, method):
    service = Service()
    daemon, uri = start(service, SERVERTYPE=servertype)
    with serving(daemon), pyro4_client() as client:
        client.run(f"p = Pyro4.Proxy(uri)\nfor i in range(100): p.{method}()\np._pyroRelease()", uri=str(uri))
        wait_until(lambda: service.hits == 100)
        wait_until(lambda: not daemon._conns)  # and the released connection is closed


@pytest.mark.parametrize("calls", [
    [("echo", 1), ("echo", 2), ("echo", 3)],
    [("echo_in_worker", 1), ("echo", 2), ("echo_in_worker", 3)],
    [("echo", "x" * LARGE), ("echo", 2)],
], ids=["in-loop", "in-worker", "decoded-in-worker"])
@pytest.mark.parametrize("servertype", ["multiplex", "thread"])
def test_requests_sent_before_a_half_close_are_all_answered_in_order(servertype, calls):
    daemon, uri = start(Service(), SERVERTYPE=servertype)
    with serving(daemon):
        assert half_close_after_calls(uri.port, calls) == [arg for _, arg in calls]


def test_awaited_coroutine_call_is_answered_after_a_half_close():
    from pyro_loops.adapters import asyncio as asyncio_adapter

    daemon, uri = start(Service())
    calls = [("echo_async", 1), ("echo", 2), ("echo_async", 3)]

    async def scenario():
        with daemon, asyncio_adapter.attach(daemon):
            return await asyncio.wait_for(asyncio.to_thread(half_close_after_calls, uri.port, calls), TIMEOUT)

    assert asyncio.run(scenario()) == [1, 2, 3]


def test_call_running_a_nested_qt_loop_is_answered_after_a_half_close(qtbot, qapp):
    from pytestqt.qt_compat import qt_api

    from pyro_loops.adapters import qt as qt_adapter

    half_closed = threading.Event()

    @expose
    class Modal:
        def echo(self, value):
            return value

        def run_nested_loop(self, value):
            """Like a modal dialog, open until the client has half-closed its connection."""
            loop = qt_api.QtCore.QEventLoop()
            timer = qt_api.QtCore.QTimer()
            timer.timeout.connect(lambda: half_closed.is_set() and loop.quit())
            timer.start(10)
            loop.exec()
            return value

    daemon = Daemon(host="127.0.0.1")
    daemon.register(Modal(), "svc")
    outcome = []

    def client():
        with RawClient(daemon.sock.getsockname()[1]) as raw:
            raw.handshake()
            pipeline(raw, [("run_nested_loop", (1,)), ("echo", (2,))])
            raw.sock.shutdown(socket.SHUT_WR)
            half_closed.set()
            outcome.extend(SERPENT.loads(raw.read_message().data) for _ in range(2))
            outcome.append(raw.closed_by_peer())

    with daemon, qt_adapter.attach(daemon, qapp):
        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        qtbot.waitUntil(lambda: not thread.is_alive(), timeout=int(TIMEOUT * 1000))
    assert outcome == [1, 2, True]


def test_incomplete_message_at_end_of_stream_is_logged_after_the_complete_ones_are_answered(logs):
    daemon, uri = start(Service())
    with serving(daemon), RawClient(uri.port) as client:
        client.handshake()
        client.send_call("svc", "echo", ("whole",), seq=1)
        client.send(b"PYRO\x00\x30")  # the start of a header, and then nothing more
        client.sock.shutdown(socket.SHUT_WR)
        assert SERPENT.loads(client.read_message().data) == "whole"
        assert client.closed_by_peer()
    assert "closed its end in the middle of a message" in logs.text


# --- the exposure check evaluates nothing it refuses --------------------------------------------


class Tripwire:
    """A descriptor that is neither a property nor a method; reading it counts."""

    def __get__(self, obj, owner=None):
        if obj is not None:
            obj.evaluated.append("descriptor")
        return lambda: "from descriptor"


@expose
class Guarded:
    def __init__(self) -> None:
        self.evaluated: list[str] = []

    def ping(self):
        return "pong"


def _unexposed_property(self):
    self.evaluated.append("property")
    return "secret"


def _unexposed_cached(self):
    self.evaluated.append("cached_property")
    return lambda: "secret"


def _getattr_hook(self, name):
    if name.startswith("_"):  # the daemon's own bookkeeping (_pyroId) is no remote access
        raise AttributeError(name)
    self.evaluated.append("__getattr__ " + name)
    return lambda: "made up"


# added after @expose marked the class's own members, so none of these is exposed
Guarded.prop = property(_unexposed_property)
Guarded.cached = functools.cached_property(_unexposed_cached)
Guarded.cached.__set_name__(Guarded, "cached")
Guarded.tripwire = Tripwire()
Guarded.__getattr__ = _getattr_hook


@pytest.mark.parametrize("method, args", [
    ("cached", ()), ("prop", ()), ("tripwire", ()), ("invented", ()),
    ("__getattr__", ("cached",)), ("__getattr__", ("tripwire",)), ("__getattr__", ("prop",)),
])
def test_a_refused_remote_access_runs_no_getter_descriptor_or_getattr_hook(method, args):
    obj = Guarded()
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(obj, "guarded")
    with serving(daemon), RawClient(uri.port) as client:
        client.handshake()
        # an attribute read goes as "__getattr__" with kwargs None, as Pyro4's proxy sends it
        kwargs = None if method == "__getattr__" else {}
        client.send_message(_wire.MSG_INVOKE, SERPENT.dumps_call("guarded", method, args, kwargs), seq=1)
        reply = client.read_message()
        assert reply.flags & _wire.FLAGS_EXCEPTION
        assert isinstance(SERPENT.loads(reply.data), AttributeError)
        assert client.call("guarded", "ping", seq=2) == (False, "pong")
    assert obj.evaluated == []


# --- an error inside the daemon closes that connection at once ----------------------------------


class AnnotationsFail(Daemon):
    """A daemon whose annotations() hook raises once ``failing`` is set."""

    failing = False

    def annotations(self):
        if self.failing:
            raise RuntimeError("annotations hook broke")
        return {}


@expose
class Breaker:
    def __init__(self, daemon: AnnotationsFail) -> None:
        self.daemon = daemon

    def breaks_replies(self):
        self.daemon.failing = True
        return "unsent"

    @in_worker
    def breaks_replies_in_worker(self):
        return self.breaks_replies()

    @in_worker
    def raises_in_worker(self):
        self.daemon.failing = True
        raise ValueError("its error reply needs the annotations too")


def pyro4_outcome(client, uri, code: str) -> str:
    """Run ``code`` in the Pyro4 client with proxy ``p``; the name of the exception it raised."""
    try:
        client.run(f"p = Pyro4.Proxy(uri)\n{code}", uri=str(uri))
    except PeerError as exc:
        return exc.type
    return "no error"


@pytest.mark.parametrize("servertype, method", [
    ("multiplex", "breaks_replies"), ("thread", "breaks_replies"),
    ("multiplex", "breaks_replies_in_worker"), ("multiplex", "raises_in_worker"),
])
def test_call_whose_reply_cannot_be_made_closes_the_connection_at_once(servertype, method, logs):
    config.SERVERTYPE = servertype
    daemon = AnnotationsFail(host="127.0.0.1")
    uri = daemon.register(Breaker(daemon), "breaker")
    # with a hanging connection the Pyro4 client would end in its own timeout instead
    with serving(daemon), pyro4_client(PYRO_COMMTIMEOUT=str(TIMEOUT)) as client:
        assert pyro4_outcome(client, uri, f"p.{method}()") == "Pyro4.errors.ConnectionClosedError"
        wait_until(lambda: not daemon._conns)
    assert "annotations hook broke" in logs.text


def test_handshake_whose_reply_cannot_be_made_closes_the_connection_at_once():
    daemon = AnnotationsFail(host="127.0.0.1")
    daemon.failing = True
    uri = daemon.register(Breaker(daemon), "breaker")
    with serving(daemon), pyro4_client(PYRO_COMMTIMEOUT=str(TIMEOUT)) as client:
        assert pyro4_outcome(client, uri, "p._pyroBind()") == "Pyro4.errors.ConnectionClosedError"


def test_awaited_call_whose_reply_cannot_be_made_closes_the_connection_at_once():
    from pyro_loops.adapters import asyncio as asyncio_adapter

    daemon = AnnotationsFail(host="127.0.0.1")
    uri = daemon.register(Service(), "svc")

    def call():
        with RawClient(uri.port) as client:
            client.handshake()
            daemon.failing = True
            client.send_call("svc", "echo_async", (1,))
            return client.closed_by_peer()

    async def scenario():
        with daemon, asyncio_adapter.attach(daemon):
            return await asyncio.wait_for(asyncio.to_thread(call), TIMEOUT)

    assert asyncio.run(scenario())


# --- calls caught by daemon.close() -----------------------------------------------------------


@expose
class Closing:
    def __init__(self) -> None:
        self.daemon: Daemon | None = None
        self.started = threading.Event()
        self.release = threading.Event()

    def echo(self, value):
        return value

    def close_daemon(self):
        self.daemon.close()  # from inside a call: takes effect at the loop's next turn
        return "closing"

    @in_worker
    def slow(self):
        self.started.set()
        self.release.wait(TIMEOUT)
        return "late"


def closing_daemon(**settings) -> tuple[Daemon, Closing]:
    for name, value in settings.items():
        setattr(config, name, value)
    daemon = Daemon(host="127.0.0.1")
    obj = Closing()
    obj.daemon = daemon
    daemon.register(obj, "svc")
    return daemon, obj


def test_requests_queued_when_the_daemon_closes_are_answered_with_an_error():
    # one call per wakeup: the two echoes still wait in the daemon when the close comes
    daemon, _ = closing_daemon(MAX_CALLS_PER_WAKEUP=1, SERVERTYPE="multiplex")  # calls run in the loop
    with serving(daemon), RawClient(daemon.sock.getsockname()[1]) as client:
        client.handshake()
        pipeline(client, [("close_daemon", ()), ("echo", (1,)), ("echo", (2,))])
        replies = [client.read_message() for _ in range(3)]
        assert client.closed_by_peer()
    assert [r.seq for r in replies] == [1, 2, 3]
    assert SERPENT.loads(replies[0].data) == "closing"
    for reply in replies[1:]:
        assert reply.flags & _wire.FLAGS_EXCEPTION
        assert "the daemon closed before this call ran" in str(SERPENT.loads(reply.data))


def test_worker_result_after_the_daemon_closed_is_logged_once_with_the_queued_requests(logs):
    daemon, obj = closing_daemon()
    with serving(daemon), RawClient(daemon.sock.getsockname()[1]) as client:
        client.handshake()
        pipeline(client, [("slow", ()), ("echo", ("x",)), ("echo", ("y",))])
        assert obj.started.wait(TIMEOUT)
        daemon.close()
        assert client.closed_by_peer()
        wait_until(lambda: "queued requests" in logs.text)  # the echoes behind the running call
        obj.release.set()
        wait_until(lambda: "reply for" in logs.text)
    lines = [r.getMessage() for r in logs.records]
    assert len([line for line in lines if "reply for" in line]) == 1, lines
    assert any("reply for" in line and "the daemon closed" in line for line in lines), lines
    assert any(line.startswith("2 queued requests") and "the daemon closed" in line for line in lines), lines


def test_reply_of_a_nested_loop_call_cut_off_by_daemon_close_is_logged(qtbot, qapp, logs):
    from pytestqt.qt_compat import qt_api

    from pyro_loops.adapters import qt as qt_adapter

    class QuitNestedOnClose(Daemon):
        nested = None

        def onClose(self):
            self.nested.quit()

    @expose
    class Modal:
        def run_nested_loop(self):
            daemon.nested = qt_api.QtCore.QEventLoop()
            daemon.close()  # happens inside the nested loop, which onClose then ends
            daemon.nested.exec()
            return "too late"

    daemon = QuitNestedOnClose(host="127.0.0.1")
    uri = daemon.register(Modal(), "modal")

    def client():
        with RawClient(uri.port) as raw:
            raw.handshake()
            raw.send_call("modal", "run_nested_loop")
            return raw.closed_by_peer()

    qt_adapter.attach(daemon, qapp)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(client()), daemon=True)
    thread.start()
    qtbot.waitUntil(lambda: bool(outcome) and "reply for" in logs.text, timeout=int(TIMEOUT * 1000))
    assert outcome == [True]
    assert "the daemon closed" in logs.text


# --- repeated errors are rate-limited in the log ------------------------------------------------


def send_garbage(port: int) -> None:
    """A bad peer: bytes that are no Pyro protocol; waits until the daemon closed on it."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GARBAGE!" * 4)
        sock.settimeout(TIMEOUT)
        while sock.recv(4096):
            pass


def test_a_flood_of_bad_peers_writes_a_bounded_number_of_log_lines(logs):
    daemon, uri = start(Service(), LOG_REPEAT_LIMIT=5, LOG_REPEAT_INTERVAL=3600)
    with serving(daemon):
        for _ in range(100):
            send_garbage(uri.port)
        closing = [r.getMessage() for r in logs.records if r.getMessage().startswith("closing connection")]
        assert len(closing) == 5
        assert "more messages like this (closing: protocol error) are suppressed" in logs.text
        config.LOG_REPEAT_INTERVAL = 0  # as if the interval had passed: the next line comes with the count
        send_garbage(uri.port)
        assert len([r for r in logs.records if r.getMessage().startswith("closing connection")]) == 6
        assert "suppressed 95 similar messages (closing: protocol error)" in logs.text


# --- accept() out of descriptors ----------------------------------------------------------------


def test_accept_out_of_descriptors_pauses_instead_of_spinning_and_resumes_when_they_free_up():
    # the server may open 5 more descriptors: 3 for its request loop, about 2 for connections
    with Peer([str(PEERS / "fd_limited_server.py"), "5"]) as server:
        port = int(server.readline())
        held = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(8)]
        try:
            wait_until(lambda: "accept failed" in server.stderr())
            server.send("count")
            before = int(server.readline())
            time.sleep(1.0)  # the fd table stays full meanwhile
            server.send("count")
            during = int(server.readline()) - before
            # a paused listener is retried after 0.1, 0.2, 0.4, 0.8 s...; a spinning one thousands of times
            assert during <= 10, f"{during} accept attempts in one second with the fd table full"
            log = server.stderr()
            assert log.count("accept failed") == 1, log  # one line for the whole episode
        finally:
            for sock in held:
                sock.close()
        with Proxy(f"PYRO:echo@127.0.0.1:{port}") as proxy:
            proxy._pyroTimeout = TIMEOUT
            assert proxy.echo("served again") == "served again"
        assert "accepting connections again" in server.stderr()
