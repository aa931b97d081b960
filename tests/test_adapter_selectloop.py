"""The select loop (``pyro_loops.adapters.selectloop``) serving real clients.

What the select loop does beyond the adapter contract (``test_adapter_contract.py``):
the program's own sockets, timers and frame loop sharing it with a daemon, and
``stop()`` from another thread. The loop runs in the test's thread
(``selectloop_host`` from ``_hosts.py``); clients run in threads. The seed's
hand-written ``select()`` pattern is covered at the end.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Callable

import pytest

from pyro_loops.adapters.selectloop import attach

from _adapter_support import BIG_REPLY, WAIT_S, call_once, daemon, in_threads, proxy, reported, service  # noqa: F401
from _hosts import selectloop_host  # noqa: F401


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def loop(selectloop_host):
    return selectloop_host.loop


# --- the loop hosting daemons ----------------------------------------------------------


def test_exception_in_the_programs_callback_goes_to_the_hook(selectloop_host, loop, daemon, service, reported):
    attach(daemon, loop)
    loop.call_later(0, lambda: 1 / 0)
    assert selectloop_host.serve(lambda: call_once(service.uri, "echo", 1)) == [1]
    [(exc, _where)] = reported
    assert isinstance(exc, ZeroDivisionError)
    reported.clear()


def test_request_loop_in_another_thread_ends_when_shut_down_before_any_client(daemon, reported):
    runner = threading.Thread(target=daemon.requestLoop, name="request-loop")
    runner.start()
    deadline = time.monotonic() + WAIT_S
    while daemon._watcher is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # the loop is asleep in select() by now
    daemon.shutdown()
    runner.join(WAIT_S)
    assert not runner.is_alive(), "requestLoop() did not end after shutdown() from another thread"


# --- the program's own sockets, timers and frame loop ----------------------------------


def test_programs_own_socket_and_timer_share_the_loop_with_a_daemon(selectloop_host, loop, daemon, service, reported):
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

        assert selectloop_host.serve(client) == ["call"]
        selectloop_host.run_until(lambda: received and timer_fired)
        assert received == [b"sensor reading"]
        loop.remove_reader(mine)
        assert selectloop_host.watched() == sorted(s.fileno() for s in daemon.sockets)


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
