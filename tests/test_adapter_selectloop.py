"""The select loop (``pyro_loops.adapters.selectloop``) serving real clients.

The loop runs in the test's thread; clients run in threads and stop the loop
when they are done (``SelectLoop.stop`` is thread-safe), with a loop timer as
the safety net. What the loop watches is read from its selector, the real
registration state. The seed's hand-written ``select()`` pattern is covered
at the end.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any, Callable

import pytest

import pyro_loops
from pyro_loops.adapters.selectloop import SelectLoop, attach

from _adapter_support import (BIG_REPLY, FLOOD, WAIT_S, BaseService, DisconnectFails, RawClient, call_once,
                              errors_reported, half_frame_client, in_threads, proxy)


@pyro_loops.expose
class Service(BaseService):
    def in_loop_thread(self):
        return threading.current_thread() is threading.main_thread()


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def loop():
    with SelectLoop() as loop:
        yield loop


@pytest.fixture
def reported():
    """Errors sent to the error hook; a test that expects some clears the list."""
    with errors_reported() as seen:
        yield seen


@pytest.fixture
def daemon():
    with pyro_loops.Daemon(host="127.0.0.1") as daemon:
        yield daemon


@pytest.fixture
def service(daemon):
    service = Service()
    service.uri = daemon.register(service, "service")
    return service


# --- helpers --------------------------------------------------------------------------


def run_until(loop: SelectLoop, condition: Callable[[], Any]) -> None:
    """Run the loop until ``condition()`` holds, re-checked at least every 10 ms."""
    safety = loop.call_later(WAIT_S, loop.stop)
    loop.run(until=condition, max_wait=0.01)
    safety.cancel()
    assert condition(), f"not reached within {WAIT_S} s"


def serve_clients(loop: SelectLoop, *clients: Callable[[], Any]) -> list[Any]:
    """Run the loop while each client runs in a thread; return their results, re-raise their errors."""
    threads, results, failures = in_threads(*clients, when_done=loop.stop)
    safety = loop.call_later(WAIT_S, loop.stop)
    loop.run()
    safety.cancel()
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(t.is_alive() for t in threads), "clients still running"
    if failures:
        raise failures[0]
    return results


def watched(loop: SelectLoop) -> set[Any]:
    """The sockets registered in the loop's selector, its own wakeup socket left out."""
    return {key.fileobj for key in loop._selector.get_map().values()} - {loop._wakeup.reader}


# --- the loop hosting daemons ----------------------------------------------------------


def test_many_sequential_calls_run_in_the_loop_thread(loop, daemon, service, reported):
    attach(daemon, loop)

    def client():
        with proxy(service.uri) as p:
            return [p.echo(i) for i in range(300)], p.in_loop_thread()

    [(values, in_loop_thread)] = serve_clients(loop, client)
    assert values == list(range(300))
    assert in_loop_thread


def test_clients_coming_and_going_leave_no_registration_behind(loop, daemon, service, reported):
    attach(daemon, loop)

    def client(n):
        return lambda: [call_once(service.uri, "echo", (n, i)) for i in range(5)]

    results = serve_clients(loop, *(client(n) for n in range(12)))
    assert results == [[(n, i) for i in range(5)] for n in range(12)]
    run_until(loop, lambda: len(daemon.sockets) == 2)
    assert watched(loop) == set(daemon.sockets)
    assert serve_clients(loop, lambda: call_once(service.uri, "echo", "still served")) == ["still served"]


def test_half_sent_frame_does_not_stall_others_and_times_out(loop, daemon, service, reported):
    pyro_loops.config.HALF_FRAME_TIMEOUT = 0.3
    attach(daemon, loop)
    with half_frame_client(service.uri) as stalled:

        def other_client():
            with proxy(service.uri) as p:
                return [p.echo(i) for i in range(20)]

        assert serve_clients(loop, other_client) == [list(range(20))]
        # the stalled client is cut off by the daemon's deadline, a loop timer
        assert serve_clients(loop, lambda: stalled.recv(100)) == [b""]


def test_long_worker_call_leaves_loop_timers_ticking(loop, daemon, service, reported):
    ticks_during_call = []

    def tick():
        if service.worker_started.is_set() and not service.release.is_set():
            ticks_during_call.append(1)
            if len(ticks_during_call) >= 5:
                service.release.set()  # the call may end only after the loop ticked meanwhile
        timer[0] = loop.call_later(0.01, tick)

    timer = [loop.call_later(0.01, tick)]
    attach(daemon, loop)
    [(released, in_loop_thread)] = serve_clients(loop, lambda: call_once(service.uri, "wait_in_worker"))
    timer[0].cancel()
    assert released, "the worker call ended without the loop timer ticking 5 times meanwhile"
    assert not in_loop_thread
    assert len(ticks_during_call) == 5


def test_flood_of_pipelined_calls_leaves_the_loop_its_turns(loop, daemon, service, reported):
    def tick():  # advances once per pass of the loop, whatever the clock says
        service.ticks += 1
        timer[0] = loop.call_later(0, tick)

    attach(daemon, loop)
    flood = RawClient(service.uri)
    try:
        # sent before the loop runs, so it all waits in one receive buffer
        flood.call("ticks_seen", FLOOD)
        timer = [loop.call_later(0, tick)]
        [seen] = serve_clients(loop, flood.results)
        timer[0].cancel()
    finally:
        flood.sock.close()
    assert len(seen) == FLOOD
    assert seen[-1] > seen[0], "the whole flood was served without the loop's timers getting a turn"


def test_exception_in_a_method_goes_back_to_its_caller(loop, daemon, service, reported):
    def client():
        with proxy(service.uri) as p:
            with pytest.raises(ValueError, match="boom"):
                p.fail()
            return p.echo("after")

    attach(daemon, loop)
    assert serve_clients(loop, client) == ["after"]


def test_internal_error_goes_to_the_hook_and_serving_goes_on(loop, reported):
    with DisconnectFails(host="127.0.0.1") as daemon:
        uri = daemon.register(Service(), "service")
        attach(daemon, loop)
        assert serve_clients(loop, lambda: call_once(uri, "echo", 1)) == [1]
        run_until(loop, lambda: reported)
        [(exc, where)] = reported
        assert isinstance(exc, RuntimeError) and "clientDisconnect" in where
        reported.clear()
        assert serve_clients(loop, lambda: call_once(uri, "echo", 2)) == [2]
        run_until(loop, lambda: reported)
        reported.clear()


def test_exception_in_the_programs_callback_goes_to_the_hook(loop, daemon, service, reported):
    attach(daemon, loop)
    loop.call_later(0, lambda: 1 / 0)
    assert serve_clients(loop, lambda: call_once(service.uri, "echo", 1)) == [1]
    [(exc, _where)] = reported
    assert isinstance(exc, ZeroDivisionError)
    reported.clear()


def test_detach_and_reattach(loop, daemon, service, reported):
    handle = attach(daemon, loop)
    assert serve_clients(loop, lambda: call_once(service.uri, "echo", 1)) == [1]
    run_until(loop, lambda: len(daemon.sockets) == 2)
    handle.detach()
    assert not handle.attached
    assert watched(loop) == set()
    with socket.create_connection((service.uri.host, service.uri.port), timeout=WAIT_S):
        for _ in range(5):
            loop.poll(0)
        assert len(daemon.sockets) == 2  # the pending connection was not accepted
    with attach(daemon, loop) as again:
        assert serve_clients(loop, lambda: call_once(service.uri, "echo", 2)) == [2]
    assert not again.attached
    assert watched(loop) == set()


def test_two_daemons_on_one_loop(loop, daemon, service, reported):
    with pyro_loops.Daemon(host="127.0.0.1") as second:
        other_uri = second.register(Service(), "other")
        attach(daemon, loop)
        second_handle = attach(second, loop)

        def client(uri):
            with proxy(uri) as p:
                return [p.echo(str(uri.object) + str(i)) for i in range(50)]

        first_calls, second_calls = serve_clients(loop, lambda: client(service.uri), lambda: client(other_uri))
        assert first_calls == [f"service{i}" for i in range(50)]
        assert second_calls == [f"other{i}" for i in range(50)]
        second_handle.detach()
        assert serve_clients(loop, lambda: client(service.uri)) == [first_calls]


def test_big_reply_drains_while_another_client_is_served(loop, daemon, service, reported):
    attach(daemon, loop)
    slow = RawClient(service.uri, receive_buffer=64 * 1024)
    try:
        slow.call("big")

        def other_client():
            with proxy(service.uri) as p:
                return [p.echo(i) for i in range(50)]

        # the slow reader has not read a byte of its reply yet
        assert serve_clients(loop, other_client) == [list(range(50))]
        [reply] = serve_clients(loop, slow.results)
    finally:
        slow.sock.close()
    assert reply == ["x" * BIG_REPLY]


def test_daemon_close_while_attached_leaves_no_registration(loop, daemon, service, reported):
    handle = attach(daemon, loop)
    with proxy(service.uri) as p:
        assert serve_clients(loop, lambda: p.echo(1)) == [1]
        daemon.close()
        assert not handle.attached
        assert watched(loop) == set()
        with pytest.raises(pyro_loops.errors.CommunicationError):
            p.echo(2)
    loop.poll(0)  # the loop carries on without it
    handle.detach()  # harmless once the daemon let go


# --- the program's own sockets, timers and frame loop ----------------------------------


def test_programs_own_socket_and_timer_share_the_loop_with_a_daemon(loop, daemon, service, reported):
    attach(daemon, loop)
    mine, theirs = socket.socketpair()
    received: list[bytes] = []
    timer_fired: list[bool] = []
    with mine, theirs:
        loop.add_reader(mine, lambda sock: received.append(sock.recv(100)))
        loop.call_later(0, lambda: timer_fired.append(True))

        def client():
            theirs.sendall(b"sensor reading")
            return call_once(service.uri, "echo", "call")

        assert serve_clients(loop, client) == ["call"]
        run_until(loop, lambda: received and timer_fired)
        assert received == [b"sensor reading"]
        loop.remove_reader(mine)
        assert watched(loop) == set(daemon.sockets)


def test_frame_loop_pumping_poll_zero_keeps_running_during_a_long_call(loop, daemon, service, reported):
    attach(daemon, loop)
    for _ in range(100):
        loop.poll(0)  # nothing to do: must return at once, or this test hangs
    threads, results, failures = in_threads(lambda: call_once(service.uri, "wait_in_worker"))
    frames_during_call = 0
    while threads[0].is_alive():
        loop.poll(0)  # one frame
        if service.worker_started.is_set() and not service.release.is_set():
            frames_during_call += 1
            if frames_during_call == 100:
                service.release.set()  # the call may end only after 100 frames ran meanwhile
    assert not failures
    [(released, in_loop_thread)] = results
    assert released and not in_loop_thread
    assert frames_during_call == 100


def test_stop_from_another_thread_ends_run(loop, daemon, reported):
    attach(daemon, loop)
    stopper = threading.Timer(0.05, loop.stop)
    stopper.start()
    safety = loop.call_later(WAIT_S, lambda: pytest.fail("stop() from another thread did not end run()"))
    loop.run()
    safety.cancel()
    stopper.join()


def test_refused_attach_leaves_the_daemons_real_loop_alone(loop, daemon, reported):
    handle = attach(daemon, loop)
    with SelectLoop() as other:
        with pytest.raises(pyro_loops.errors.DaemonError):
            attach(daemon, other)
    assert handle.attached


def test_reader_removed_during_a_pass_is_not_called(loop, reported):
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    called = []

    def reader(other):
        def on_readable(sock):
            called.append(sock)
            loop.remove_reader(other)
        return on_readable

    with first, first_peer, second, second_peer:
        loop.add_reader(first, reader(second))
        loop.add_reader(second, reader(first))
        first_peer.send(b"x")
        second_peer.send(b"y")
        loop.poll(WAIT_S)
    assert len(called) == 1


# --- the seed's hand-written select() pattern ------------------------------------------


def seed_loop(daemon, until: Callable[[], bool]) -> None:
    """The loop the seed chapter describes, with a safety deadline."""
    deadline = time.monotonic() + WAIT_S
    while not until():
        assert time.monotonic() < deadline, "seed loop: not done in time"
        readable, _, _ = select.select(daemon.sockets, [], [], 0.05)
        daemon.events(readable)


def test_seed_select_pattern_serves_clients_coming_and_going(daemon, service, reported):
    threads, results, failures = in_threads(
        *(lambda n=n: [call_once(service.uri, "echo", (n, i)) for i in range(5)] for n in range(8)))
    seed_loop(daemon, lambda: not any(t.is_alive() for t in threads) and len(daemon.sockets) == 2)
    assert not failures
    assert results == [[(n, i) for i in range(5)] for n in range(8)]
    with proxy(service.uri) as p:
        threads, results, failures = in_threads(lambda: p.fail(), lambda: p.echo("after"))
        seed_loop(daemon, lambda: not any(t.is_alive() for t in threads))
    assert [type(f) for f in failures] == [ValueError] and results[1] == "after"


def test_seed_select_pattern_delivers_a_big_reply_without_waiting_for_a_timeout(daemon, service, reported):
    """Pyro4's examples select() for reading with timeouts of seconds; a reply
    bigger than the socket takes at once must not wait for that timeout."""
    def client():
        with proxy(service.uri) as p:
            p._pyroTimeout = 1.0  # far below the loop's select() timeout
            return len(p.big())

    threads, results, failures = in_threads(client)
    deadline = time.monotonic() + WAIT_S
    while threads[0].is_alive() and time.monotonic() < deadline:
        readable, _, _ = select.select(daemon.sockets, [], [], 3.0)
        daemon.events(readable)
    assert not failures
    assert results == [BIG_REPLY]
