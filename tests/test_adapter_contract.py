"""The adapter contract, written once and run against every host loop.

Each test runs once per host (``_hosts.py``): the select loop, asyncio, Qt (an
offscreen QApplication through pytest-qt) and Tk under Xvfb with both of its
strategies ("filehandler", and "thread", the helper-thread fallback meant for
Windows). A ``Host`` runs its real loop in the test's thread while clients run
in threads, and reads back what the loop really watches (its selector, Qt's
notifiers, the Tk handle's registrations). The few promises that only some
loops can keep say so in their parametrization (only the select loop and
asyncio can run in a thread other than the one that made them; asyncio's
cannot run nested, as a modal dialog runs Qt's or Tk's). What is particular
to one loop (Qt's notifiers during a nested loop, Tk's ``wait_window`` and
helper thread, async methods, the program's own sockets, ...) stays in
``test_adapter_<name>.py``.

The select-loop and asyncio runs need neither Qt, nor a display, nor Pyro4:
they belong to the ``core`` group (``-m core``, see ``conftest.py``); the Qt
and Tk runs skip when their toolkit is missing.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable

import pytest

import pyro_loops
from pyro_loops.adapters.selectloop import SelectLoop

from _adapter_support import (BIG_REPLY, FLOOD, WAIT_S, BaseService, DisconnectFails, RawClient, call_once,
                              fail_first_event, half_frame_client, in_threads, proxy, reported, service)  # noqa: F401
from _hosts import NESTING, READ, RUN_ANYWHERE, WRITE, host  # noqa: F401
from _util import wait_until

IDLE_SOCKETS = 2  # a daemon without clients: its listening socket and its wakeup socket


@pytest.fixture
def daemon(host, reported):
    with pyro_loops.Daemon(host="127.0.0.1") as daemon:
        yield daemon


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
        uri = daemon.register(BaseService(), "service")
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
        other_uri = second.register(BaseService(), "other")
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


def test_client_attached_twice_is_refused_and_its_first_loop_keeps_serving_it(host, daemon, service):
    with pyro_loops.Client() as client, SelectLoop() as other_loop:
        handle = host.attach(client)
        for again in (lambda: host.attach(client), lambda: other_loop.attach(client)):
            with pytest.raises(pyro_loops.errors.PyroError, match="already attached"):
                again()
        host.attach(daemon)
        call = client.proxy(service.uri).echo("still served")
        assert host.settle(call).result() == "still served"
        assert handle.attached


@pyro_loops.expose
class Modal:
    """A method that opens a modal dialog: a nested run of the host's loop until another call closes it."""

    def __init__(self, host) -> None:
        self.host = host
        self.opened = threading.Event()
        self.nested = False
        self.closed = False

    def run_nested_loop(self):
        self.nested = True
        self.opened.set()
        self.host.nest(lambda: self.closed)
        self.nested = False
        return "nested loop ended"

    def in_nested_loop(self):
        return self.nested

    def close_dialog(self):
        self.closed = True


@pytest.mark.parametrize("host", NESTING, indirect=True)
def test_call_running_a_nested_loop_lets_other_clients_through(host, daemon):
    modal = Modal(host)
    uri = daemon.register(modal, "modal")
    host.attach(daemon)

    def other_client():
        assert modal.opened.wait(WAIT_S)
        with proxy(uri) as p:
            answers = [(p.in_nested_loop(), i) for i in range(5)]
            p.close_dialog()
            return answers

    opener, answers = host.serve(lambda: call_once(uri, "run_nested_loop"), other_client)
    assert opener == "nested loop ended"
    assert answers == [(True, i) for i in range(5)]
    assert host.serve(lambda: call_once(uri, "in_nested_loop")) == [False]


@pytest.mark.parametrize("host", RUN_ANYWHERE, indirect=True)
def test_loop_attached_here_and_run_in_another_thread_serves_this_threads_calls(host, daemon, service):
    """The loop's thread is the thread that runs it: calls from the thread that
    attached are no calls of the loop to itself (which are refused as a deadlock)."""
    handle = host.attach(daemon)
    stop = host.run_in_thread()
    try:
        assert call_once(service.uri, "echo", "from the attaching thread") == "from the attaching thread"
        assert call_once(service.uri, "in_loop_thread") is False
    finally:
        daemon.close()  # from outside the loop's thread: the loop carries it out
        wait_until(lambda: not handle.attached, WAIT_S)
        stop()
    assert daemon.sockets == []


def test_attach_to_something_that_is_not_a_loop_says_what_it_needs(host, daemon):
    with pytest.raises(TypeError, match=host.expected) as refused:
        host.adapter.attach(daemon, "x")
    assert "'x'" in str(refused.value)
    assert len(daemon.sockets) == IDLE_SOCKETS  # the daemon was left alone
