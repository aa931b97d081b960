"""The adapter contract, written once and run against every host loop.

Each test runs once per host: the select loop, asyncio, Qt (an offscreen
QApplication through pytest-qt) and Tk under Xvfb with both of its strategies
("filehandler", and "thread", the helper-thread fallback meant for Windows).
A ``Host`` runs its real loop in the test's thread while clients run in
threads, and reads back what the loop really watches (its selector, Qt's
notifiers, the Tk handle's registrations). What is particular to one loop
(nested loops, async methods, the program's own sockets, ...) stays in
``test_adapter_<name>.py``.

The select-loop and asyncio runs need neither Qt, nor a display, nor Pyro4:
``-k "selectloop or asyncio"`` runs the contract for the core alone; the Qt
and Tk runs skip when their toolkit is missing.
"""

from __future__ import annotations

import asyncio
import gc
import selectors
import socket
import threading
import time
from typing import Any, Callable

import pytest

import pyro_loops
from pyro_loops.adapters import asyncio as asyncio_adapter
from pyro_loops.adapters import selectloop

from _adapter_support import (BIG_REPLY, FLOOD, WAIT_S, BaseService, DisconnectFails, RawClient, call_once,
                              fail_first_event, half_frame_client, in_threads, proxy, reported)

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
BOTH = READ | WRITE
IDLE_SOCKETS = 2  # a daemon without clients: its listening socket and its wakeup socket


@pyro_loops.expose
class Service(BaseService):
    def in_loop_thread(self):
        return threading.current_thread() is threading.main_thread()


# --- the hosts --------------------------------------------------------------------------


class Host:
    """One host loop, run in the test's thread. Subclasses say how to attach, run,
    time and inspect it; the shared parts are written here once."""

    name: str
    where: str            # what the error hook is told for a fault inside this host's callbacks
    expected: str         # what attach() says it needs when given something else
    adapter: Any          # the adapter module, for its attach()

    def attach(self, daemon: Any) -> Any:
        raise NotImplementedError

    def run_until(self, condition: Callable[[], Any], timeout: float = WAIT_S) -> None:
        """Run the loop until ``condition()`` holds (it is checked at least every 10 ms)."""
        raise NotImplementedError

    def repeat(self, interval: float, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` from a loop timer every ``interval`` seconds (0: every turn); returns a stop function."""
        raise NotImplementedError

    def watched(self, events: int = BOTH) -> list[int]:
        """The descriptors the loop watches for ``events`` on behalf of adapters, sorted, each
        as often as it is watched (one Qt notifier too many would show as a repeat)."""
        raise NotImplementedError

    def deadline_timers(self) -> int:
        """How many deadline timers of the adapters are armed in the loop."""
        raise NotImplementedError

    def assert_released(self) -> None:
        """Nothing of any adapter handle remains in the loop."""
        assert self.watched() == []
        assert self.deadline_timers() == 0

    def close(self) -> None:
        """End of the test: nothing may have escaped into the loop."""

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.run_until(lambda: time.monotonic() >= end)

    def serve(self, *clients: Callable[[], Any]) -> list[Any]:
        """Run the loop while each client runs in a thread; return their results, re-raise their errors."""
        threads, results, failures = in_threads(*clients)
        self.run_until(lambda: not any(t.is_alive() for t in threads))
        if failures:
            raise failures[0]
        return results


class SelectorHost(Host):
    """A host whose loop has ``call_later`` and watches sockets with a ``selectors`` selector."""

    loop: Any

    def repeat(self, interval: float, fn: Callable[[], None]) -> Callable[[], None]:
        def tick() -> None:
            fn()
            timer[0] = self.loop.call_later(interval, tick)

        timer = [self.loop.call_later(interval, tick)]
        return lambda: timer[0].cancel()

    def watched(self, events: int = BOTH) -> list[int]:
        own = self._own_fd()
        return sorted(key.fd for key in self.loop._selector.get_map().values() if key.events & events and key.fd != own)

    def _own_fd(self) -> int:
        """The loop's own wakeup descriptor, which is no adapter's."""
        raise NotImplementedError


class SelectLoopHost(SelectorHost):
    name = "selectloop"
    where = "select loop"
    expected = "SelectLoop"
    adapter = selectloop

    def __init__(self) -> None:
        self.loop = selectloop.SelectLoop()

    def attach(self, daemon: Any) -> Any:
        return selectloop.attach(daemon, self.loop)

    def run_until(self, condition: Callable[[], Any], timeout: float = WAIT_S) -> None:
        safety = self.loop.call_later(timeout, self.loop.stop)
        self.loop.run(until=condition, max_wait=0.01)
        safety.cancel()
        assert condition(), f"not reached within {timeout} s"

    def _own_fd(self) -> int:
        return self.loop._wakeup.reader.fileno()

    def deadline_timers(self) -> int:
        return sum(1 for _, _, timer in self.loop._timers if not timer.cancelled)

    def close(self) -> None:
        self.loop.close()


class AsyncioHost(SelectorHost):
    name = "asyncio"
    where = "asyncio adapter"
    expected = "asyncio event loop"
    adapter = asyncio_adapter

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.escaped: list[dict] = []
        self.loop.set_exception_handler(lambda loop, context: self.escaped.append(context))
        self.handles: list[asyncio_adapter.AsyncioHandle] = []

    def attach(self, daemon: Any) -> Any:
        handle = asyncio_adapter.attach(daemon, self.loop)  # not running yet: the thread that runs it serves
        self.handles.append(handle)
        return handle

    def run_until(self, condition: Callable[[], Any], timeout: float = WAIT_S) -> None:
        async def until() -> None:
            deadline = time.monotonic() + timeout
            while not condition() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)

        self.loop.run_until_complete(until())
        assert condition(), f"not reached within {timeout} s"

    def _own_fd(self) -> int:
        return self.loop._ssock.fileno()  # the loop's self-pipe

    def deadline_timers(self) -> int:
        return sum(1 for handle in self.handles if handle._timer is not None)

    def close(self) -> None:
        self.loop.close()
        assert self.escaped == [], f"errors reached the loop's exception handler: {self.escaped}"


class QtHost(Host):
    name = "qt"
    where = "qt adapter"
    expected = "Qt application"

    def __init__(self, qtbot: Any, qapp: Any) -> None:
        from pytestqt.qt_compat import qt_api

        from pyro_loops.adapters import qt as qt_adapter

        self.adapter = qt_adapter
        self.qtbot = qtbot
        self.app = qapp
        self.qt = qt_api.QtCore

    def attach(self, daemon: Any) -> Any:
        return self.adapter.attach(daemon, self.app)

    def run_until(self, condition: Callable[[], Any], timeout: float = WAIT_S) -> None:
        self.qtbot.waitUntil(lambda: bool(condition()), timeout=int(timeout * 1000))

    def repeat(self, interval: float, fn: Callable[[], None]) -> Callable[[], None]:
        timer = self.qt.QTimer()
        timer.timeout.connect(fn)
        timer.start(int(interval * 1000))
        return timer.stop

    def _owners(self) -> list[Any]:
        return self.app.findChildren(self.qt.QObject, "pyro_loops.adapters.qt")

    def watched(self, events: int = BOTH) -> list[int]:
        kinds = {READ: self.qt.QSocketNotifier.Type.Read, WRITE: self.qt.QSocketNotifier.Type.Write}
        wanted = [kind for bit, kind in kinds.items() if events & bit]
        notifiers = [n for owner in self._owners() for n in owner.findChildren(self.qt.QSocketNotifier)
                     if n.isEnabled() and n.type() in wanted]
        if events == BOTH:  # a socket is watched once however many directions
            return sorted({int(n.socket()) for n in notifiers})
        return sorted(int(n.socket()) for n in notifiers)

    def deadline_timers(self) -> int:
        return sum(1 for owner in self._owners() for t in owner.findChildren(self.qt.QTimer) if t.isActive())

    def assert_released(self) -> None:
        super().assert_released()
        self.qt.QCoreApplication.sendPostedEvents(None, self.qt.QEvent.Type.DeferredDelete)
        assert self._owners() == []  # every notifier and timer went with its owner

    def close(self) -> None:
        self.assert_released()


class TkHost(Host):
    where = "tk adapter"
    expected = "tkinter widget"

    def __init__(self, strategy: str) -> None:
        import tkinter

        from pyro_loops.adapters import tk as tk_adapter

        self.adapter = tk_adapter
        self.name = f"tk-{strategy}"
        self.strategy = strategy
        self.root = tkinter.Tk()
        self.root.withdraw()
        self.escaped: list[BaseException] = []
        self.root.report_callback_exception = lambda exc_type, exc, tb: self.escaped.append(exc)
        self.handles: list[Any] = []

    def attach(self, daemon: Any) -> Any:
        handle = self.adapter.attach(daemon, self.root, strategy=self.strategy)
        self.handles.append(handle)
        return handle

    def run_until(self, condition: Callable[[], Any], timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout

        def check() -> None:
            if condition() or time.monotonic() > deadline:
                self.root.quit()
            else:
                self.root.after(5, check)

        self.root.after(5, check)
        self.root.mainloop()
        assert condition(), f"not reached within {timeout} s"

    def repeat(self, interval: float, fn: Callable[[], None]) -> Callable[[], None]:
        def tick() -> None:
            fn()
            timer[0] = self.root.after(int(interval * 1000), tick)

        timer = [self.root.after(int(interval * 1000), tick)]
        return lambda: self.root.after_cancel(timer[0])

    def watched(self, events: int = BOTH) -> list[int]:
        # Tk cannot list its file handlers: the handles' own books, checked
        # against the helper thread's where there is one (test_adapter_tk.py
        # catches leaked handlers by their effect).
        fds = []
        for handle in self.handles:
            helper = getattr(handle._watching, "selector", None)
            if helper is not None:
                assert helper.watched() == set(handle._socks.values())
            fds += [fd for fd, registered in handle._events.items() if registered & events]
        return sorted(fds)

    def deadline_timers(self) -> int:
        """Pending Tcl ``after`` timers (the test's own are gone once mainloop returned)."""
        return len(self.root.tk.splitlist(self.root.tk.call("after", "info")))

    def assert_released(self) -> None:
        super().assert_released()
        deadline = time.monotonic() + WAIT_S
        while self._helper_threads() and time.monotonic() < deadline:
            self.root.update()  # delivers a wakeup in flight, after which the helper ends
            for thread in self._helper_threads():
                thread.join(0.01)
        assert self._helper_threads() == []

    @staticmethod
    def _helper_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "pyro_loops-tk-selector"]

    def close(self) -> None:
        self.root.destroy()
        # A Tcl interpreter must be deleted in its own thread: free this one here,
        # not in whichever client thread the garbage collector would next run in.
        del self.root
        gc.collect()
        assert not self.escaped, f"exceptions escaped into Tk: {self.escaped}"


def _make_host(request: pytest.FixtureRequest) -> Host:
    name = request.param
    if name == "selectloop":
        return SelectLoopHost()
    if name == "asyncio":
        return AsyncioHost()
    if name == "qt":
        pytest.importorskip("pytestqt", reason="the Qt runs need pytest-qt and a Qt binding")
        return QtHost(request.getfixturevalue("qtbot"), request.getfixturevalue("qapp"))
    pytest.importorskip("tkinter", reason="the Tk runs need tkinter")
    return TkHost(name.partition("-")[2])


@pytest.fixture(params=["selectloop", "asyncio", "qt", "tk-filehandler", "tk-thread"])
def host(request):
    host = _make_host(request)
    yield host
    host.close()


@pytest.fixture
def daemon(host, reported):
    with pyro_loops.Daemon(host="127.0.0.1") as daemon:
        yield daemon


@pytest.fixture
def service(daemon):
    service = Service()
    service.uri = daemon.register(service, "service")
    return service


def fds(*daemons: pyro_loops.Daemon) -> list[int]:
    return sorted(s.fileno() for daemon in daemons for s in daemon.sockets)


def echoes(uri, count: int) -> Callable[[], list[Any]]:
    """A client that makes ``count`` calls on one connection."""
    def client() -> list[Any]:
        with proxy(uri) as p:
            return [p.echo(i) for i in range(count)]
    return client


# --- the contract -----------------------------------------------------------------------


def test_many_sequential_calls_are_answered_in_the_loop_thread(host, daemon, service):
    host.attach(daemon)

    def client():
        with proxy(service.uri) as p:
            return [p.echo(i) for i in range(300)], p.in_loop_thread()

    [(values, in_loop_thread)] = host.serve(client)
    assert values == list(range(300))
    assert in_loop_thread


def test_each_socket_is_watched_and_clients_coming_and_going_leave_nothing_behind(host, daemon, service):
    host.attach(daemon)
    idle = fds(daemon)
    assert host.watched() == host.watched(READ) == idle
    holding, release = threading.Event(), threading.Event()

    def five_connections():
        proxies = [proxy(service.uri) for _ in range(5)]
        for p in proxies:
            p.echo("hello")
        holding.set()
        release.wait(WAIT_S)
        for p in proxies:
            p._pyroRelease()

    threads, _, failures = in_threads(five_connections)
    host.run_until(holding.is_set)
    assert len(fds(daemon)) == len(idle) + 5
    assert host.watched() == host.watched(READ) == fds(daemon)  # each socket watched once, for reading
    release.set()
    host.run_until(lambda: not threads[0].is_alive() and fds(daemon) == idle)
    assert not failures

    def client(n):
        return lambda: [call_once(service.uri, "echo", (n, i)) for i in range(5)]

    assert host.serve(*(client(n) for n in range(12))) == [[(n, i) for i in range(5)] for n in range(12)]
    # the daemon notices each disconnect when it reads the end of the stream
    host.run_until(lambda: len(daemon.sockets) == IDLE_SOCKETS)
    assert host.watched() == fds(daemon)
    assert host.serve(lambda: call_once(service.uri, "echo", "still served")) == ["still served"]


def test_half_sent_frame_does_not_stall_others_and_is_cut_off_by_the_deadline(host, daemon, service):
    pyro_loops.config.HALF_FRAME_TIMEOUT = 0.3
    host.attach(daemon)
    idle = fds(daemon)
    with half_frame_client(service.uri) as stalled:
        assert host.serve(echoes(service.uri, 20)) == [list(range(20))]
        # the stalled client is cut off by the daemon's deadline, a loop timer
        assert host.serve(lambda: stalled.recv(100)) == [b""]
    host.run_until(lambda: fds(daemon) == idle)
    assert host.watched() == idle
    assert host.deadline_timers() == 0


def test_deadline_timer_exists_only_while_the_daemon_has_a_deadline(host, daemon, service):
    address = (service.uri.host, service.uri.port)
    handle = host.attach(daemon)
    with proxy(service.uri) as p:
        assert host.serve(lambda: p.echo(1)) == [1]
        assert host.deadline_timers() == 0  # idle, though a client is connected
        with socket.create_connection(address, timeout=WAIT_S) as stalled:
            stalled.sendall(b"PYRO")
            host.run_until(lambda: daemon.next_deadline() is not None)
            assert host.deadline_timers() == 1  # a half frame has a deadline
        host.run_until(lambda: daemon.next_deadline() is None)
        assert host.deadline_timers() == 0  # its client left: the timer went with it
        with socket.create_connection(address, timeout=WAIT_S) as stalled:
            stalled.sendall(b"PYRO")
            host.run_until(lambda: daemon.next_deadline() is not None)
            handle.detach()
            assert host.deadline_timers() == 0


def test_long_worker_call_leaves_loop_timers_ticking(host, daemon, service):
    ticks_during_call = []

    def tick():
        if service.worker_started.is_set() and not service.release.is_set():
            ticks_during_call.append(1)
            if len(ticks_during_call) >= 5:
                service.release.set()  # the call may end only after the loop ticked meanwhile

    stop = host.repeat(0.01, tick)
    host.attach(daemon)
    try:
        [(released, in_main_thread)] = host.serve(lambda: call_once(service.uri, "wait_in_worker"))
        assert host.serve(lambda: call_once(service.uri, "echo", "after")) == ["after"]
    finally:
        stop()
    assert released, "the worker call ended without the loop's timer ticking 5 times meanwhile"
    assert not in_main_thread
    assert len(ticks_during_call) == 5


def test_flood_of_pipelined_calls_leaves_the_loop_its_turns(host, daemon, service):
    def tick():  # advances once per turn of the loop, whatever the clock says
        service.ticks += 1

    host.attach(daemon)
    flood = RawClient(service.uri)
    try:
        # sent before the loop runs, so it all waits in one receive buffer
        flood.call("ticks_seen", FLOOD)
        stop = host.repeat(0, tick)
        try:
            [seen] = host.serve(flood.results)
        finally:
            stop()
    finally:
        flood.sock.close()
    assert len(seen) == FLOOD
    assert seen[-1] > seen[0], "the whole flood was served without the loop's timers getting a turn"


def test_exception_in_a_method_goes_back_to_its_caller_and_serving_goes_on(host, daemon, service):
    def client():
        with proxy(service.uri) as p:
            with pytest.raises(ValueError, match="boom"):
                p.fail()
            return p.echo("after")

    host.attach(daemon)
    assert host.serve(client) == ["after"]


def test_internal_error_goes_to_the_hook_and_serving_goes_on(host, reported):
    with DisconnectFails(host="127.0.0.1") as daemon:
        uri = daemon.register(Service(), "service")
        host.attach(daemon)
        assert host.serve(lambda: call_once(uri, "echo", 1)) == [1]
        host.run_until(lambda: reported)
        [(exc, where)] = reported
        assert isinstance(exc, RuntimeError) and "clientDisconnect" in where
        reported.clear()
        assert host.serve(lambda: call_once(uri, "echo", 2)) == [2]
        host.run_until(lambda: reported)
        reported.clear()


def test_exception_escaping_the_daemon_is_reported_not_raised_into_the_loop(host, daemon, service, reported,
                                                                            monkeypatch):
    fail_first_event(monkeypatch, daemon)
    host.attach(daemon)
    # the failed event was the accept: the listening socket stays readable
    assert host.serve(lambda: call_once(service.uri, "echo", "served anyway")) == ["served anyway"]
    [(exc, where)] = reported
    assert str(exc) == "injected daemon fault" and host.where in where
    reported.clear()  # and host.close() checks that nothing reached the loop itself


def test_detach_leaves_nothing_and_reattach_serves_the_waiting_client(host, daemon, service):
    handle = host.attach(daemon)
    assert host.serve(lambda: call_once(service.uri, "echo", 1)) == [1]
    host.run_until(lambda: len(daemon.sockets) == IDLE_SOCKETS)  # that client is gone
    handle.detach()
    assert not handle.attached
    host.assert_released()
    threads, results, failures = in_threads(lambda: call_once(service.uri, "echo", 2))
    host.run_for(0.2)
    assert threads[0].is_alive()  # nothing serves a detached daemon
    assert len(daemon.sockets) == IDLE_SOCKETS  # not even the connection is accepted
    with host.attach(daemon) as again:
        assert again.attached
        host.run_until(lambda: not threads[0].is_alive())
        assert not failures and results == [2]
    assert not again.attached
    host.assert_released()


def test_two_daemons_share_one_loop(host, daemon, service):
    with pyro_loops.Daemon(host="127.0.0.1") as second:
        other_uri = second.register(Service(), "other")
        host.attach(daemon)
        second_handle = host.attach(second)

        def client(uri):
            with proxy(uri) as p:
                return [p.echo(str(uri.object) + str(i)) for i in range(50)]

        first_calls, second_calls = host.serve(lambda: client(service.uri), lambda: client(other_uri))
        assert first_calls == [f"service{i}" for i in range(50)]
        assert second_calls == [f"other{i}" for i in range(50)]
        host.run_until(lambda: len(daemon.sockets) == len(second.sockets) == IDLE_SOCKETS)
        assert host.watched() == fds(daemon, second)
        second_handle.detach()
        assert host.watched() == fds(daemon)
        assert host.serve(lambda: client(service.uri)) == [first_calls]


def test_big_reply_drains_while_another_client_is_served(host, daemon, service):
    host.attach(daemon)
    slow = RawClient(service.uri, receive_buffer=64 * 1024)
    try:
        slow.call("big")
        host.run_until(lambda: len(host.watched(WRITE)) == 1)  # the reply waits for the socket to take more
        writer = host.watched(WRITE)
        # the slow reader has not read a byte of its reply yet
        assert host.serve(echoes(service.uri, 50)) == [list(range(50))]
        assert host.watched(WRITE) == writer  # still pending
        [reply] = host.serve(slow.results)
    finally:
        slow.sock.close()
    assert reply == ["x" * BIG_REPLY]
    host.run_until(lambda: not host.watched(WRITE))


def test_daemon_close_while_attached_leaves_nothing(host, daemon, service):
    handle = host.attach(daemon)
    with proxy(service.uri) as p:
        assert host.serve(lambda: p.echo(1)) == [1]
        daemon.close()
        assert not handle.attached
        host.assert_released()
        with pytest.raises(pyro_loops.errors.CommunicationError):
            p.echo(2)
    handle.detach()  # harmless once the daemon let go


def test_refused_second_attach_leaves_the_first_one_serving(host, daemon, service):
    handle = host.attach(daemon)
    with pytest.raises(pyro_loops.errors.DaemonError):
        host.attach(daemon)
    assert handle.attached
    assert host.watched() == fds(daemon)
    assert host.serve(lambda: call_once(service.uri, "echo", 1)) == [1]
    handle.detach()
    host.assert_released()


def test_attach_and_detach_from_another_thread_are_refused_alike(host, daemon, service):
    handle = host.attach(daemon)
    assert host.serve(lambda: call_once(service.uri, "echo", 1)) == [1]  # the loop has run in this thread

    def from_another_thread():
        errors = []
        with pyro_loops.Daemon(host="127.0.0.1") as other:
            for attempt in (lambda: host.attach(other), handle.detach):
                try:
                    attempt()
                except RuntimeError as exc:
                    errors.append(str(exc))
        daemon.close()  # the one way out from another thread: the loop carries it out
        return errors

    loop_running = threading.Event()  # set by a loop timer: the attempts come while the loop runs
    stop = host.repeat(0.01, loop_running.set)
    thread = threading.Thread(target=lambda: loop_running.wait(WAIT_S) and results.append(from_another_thread()),
                              name="not-the-loop")
    results: list[list[str]] = []
    thread.start()
    host.run_until(lambda: not thread.is_alive() and not handle.attached)
    stop()
    [[attach_error, detach_error]] = results
    for action, error in (("attach()", attach_error), ("detach()", detach_error)):
        assert error.startswith(f"{action} called in thread 'not-the-loop'"), error
        assert f"call {action} in the loop's own thread" in error
    assert daemon.sockets == []
    host.assert_released()


def test_attach_to_something_that_is_not_a_loop_says_what_it_needs(host, daemon):
    with pytest.raises(TypeError, match=host.expected) as refused:
        host.adapter.attach(daemon, "x")
    assert "'x'" in str(refused.value)
    assert len(daemon.sockets) == IDLE_SOCKETS  # the daemon was left alone
