"""The asyncio adapter serving real clients from a real asyncio loop.

Each test runs a coroutine on a fresh loop; clients run in threads
(``asyncio.to_thread``) with timeouts. What the loop watches is read from the
loop's selector, the real registration state.
"""

from __future__ import annotations

import asyncio
import selectors
import threading
import time

import pytest

import pyro_loops
from pyro_loops.adapters import asyncio as asyncio_adapter

from _adapter_support import (BIG_REPLY, WAIT_S, BaseService, call_once, fail_first_event, half_frame_client,
                              proxy, pyro4_receive_result, pyro4_send_requests)


@pyro_loops.expose
class Service(BaseService):
    def __init__(self) -> None:
        super().__init__()
        self.awaiting = threading.Event()
        self.wake_up: asyncio.Event | None = None

    async def wait_for_wake_up(self):
        self.wake_up = asyncio.Event()
        self.awaiting.set()
        await self.wake_up.wait()
        return "woken"

    def wake(self):
        self.wake_up.set()

    async def fail_after_await(self):
        await asyncio.sleep(0)
        raise KeyError("async boom")


async def in_thread(fn, *args):
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), WAIT_S)


async def until(condition) -> None:
    """Let the loop run until ``condition()`` holds (bounded)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 3 * WAIT_S))


def watched(loop) -> dict[int, int]:
    """fd -> events the loop's selector watches (its own self-pipe included)."""
    return {key.fd: key.events for key in loop._selector.get_map().values()}


def daemon_fds(daemon) -> set[int]:
    return {s.fileno() for s in daemon.sockets}


@pytest.fixture
def daemon():
    with pyro_loops.Daemon(host="127.0.0.1", port=0) as d:
        yield d


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def uri(daemon, service):
    return daemon.register(service)


def test_many_sequential_calls_are_answered(daemon, uri):
    async def scenario():
        with asyncio_adapter.attach(daemon):
            def client():
                with proxy(uri) as p:
                    return [p.echo(i) for i in range(300)]

            assert await in_thread(client) == list(range(300))

    run(scenario)


def test_each_socket_is_watched_and_closed_connections_are_forgotten(daemon, uri):
    async def scenario():
        loop = asyncio.get_running_loop()
        with asyncio_adapter.attach(daemon):
            idle = daemon_fds(daemon)
            assert {fd: watched(loop)[fd] for fd in idle} == dict.fromkeys(idle, selectors.EVENT_READ)
            proxies = [proxy(uri) for _ in range(5)]
            try:
                for p in proxies:  # attribute access connects: do all of it in the client thread
                    assert await in_thread(lambda: p.echo("hello")) == "hello"
                connection_fds = daemon_fds(daemon) - idle
                assert len(connection_fds) == 5
                assert connection_fds <= watched(loop).keys()
            finally:
                for p in proxies:
                    p._pyroRelease()
            await until(lambda: daemon_fds(daemon) == idle)
            assert not connection_fds & watched(loop).keys()

    run(scenario)


def test_client_stalled_mid_header_does_not_hold_up_others(daemon, uri):
    async def scenario():
        with asyncio_adapter.attach(daemon):
            stalled = half_frame_client(uri)
            try:
                def client():
                    with proxy(uri) as p:
                        return [p.echo(i) for i in range(20)]

                assert await in_thread(client) == list(range(20))
            finally:
                stalled.close()

    run(scenario)


def test_half_frame_deadline_drops_the_stalled_client(daemon, uri):
    pyro_loops.config.HALF_FRAME_TIMEOUT = 0.2

    async def scenario():
        with asyncio_adapter.attach(daemon):
            idle = daemon_fds(daemon)
            stalled = half_frame_client(uri)
            try:
                await until(lambda: len(daemon_fds(daemon)) == len(idle) + 1)
                await until(lambda: daemon_fds(daemon) == idle)  # only the deadline timer can do this
                assert await in_thread(stalled.recv, 10) == b""
            finally:
                stalled.close()

    run(scenario)


def test_worker_call_leaves_the_loop_running(daemon, uri, service):
    async def scenario():
        loop = asyncio.get_running_loop()
        ticks_during_call = []

        def tick():
            if service.worker_started.is_set():
                ticks_during_call.append(1)
                if len(ticks_during_call) == 3:
                    service.release.set()  # the call only finishes if the loop kept running
                    return
            loop.call_later(0.005, tick)

        loop.call_soon(tick)
        with asyncio_adapter.attach(daemon):
            released, in_main_thread = await in_thread(call_once, uri, "wait_in_worker")
        assert released is True
        assert in_main_thread is False
        assert len(ticks_during_call) == 3

    run(scenario)


def test_method_exception_reaches_the_caller_and_serving_goes_on(daemon, uri):
    def client():
        with proxy(uri) as p:
            with pytest.raises(ValueError, match="boom"):
                p.fail()
            return p.echo("after")

    async def scenario():
        with asyncio_adapter.attach(daemon):
            assert await in_thread(client) == "after"

    run(scenario)


def test_internal_error_goes_to_the_hook_not_to_the_loop(daemon, uri, monkeypatch):
    reported, loop_errors = [], []
    fail_first_event(monkeypatch, daemon)

    async def scenario():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: loop_errors.append(context))
        with asyncio_adapter.attach(daemon):
            assert await in_thread(call_once, uri, "echo", "served anyway") == "served anyway"

    pyro_loops.set_error_hook(lambda exc, where: reported.append((exc, where)))
    try:
        run(scenario)
    finally:
        pyro_loops.set_error_hook(None)
    assert [str(exc) for exc, _ in reported] == ["injected daemon fault"]
    assert "asyncio" in reported[0][1]
    assert loop_errors == []


def test_detach_leaves_nothing_and_reattach_serves_the_waiting_client(daemon, uri):
    async def scenario():
        loop = asyncio.get_running_loop()
        handle = asyncio_adapter.attach(daemon)
        assert await in_thread(call_once, uri, "echo", 1) == 1
        handle.detach()
        assert not handle.attached
        assert not daemon_fds(daemon) & watched(loop).keys()
        assert daemon.coroutine_runner is None

        waiting = asyncio.ensure_future(in_thread(call_once, uri, "echo", 2))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # nothing serves a detached daemon
        with asyncio_adapter.attach(daemon):
            assert await waiting == 2

    run(scenario)


def test_two_daemons_share_one_loop(daemon):
    async def scenario():
        loop = asyncio.get_running_loop()
        with pyro_loops.Daemon(host="127.0.0.1", port=0) as other:
            uri1 = daemon.register(Service())
            uri2 = other.register(Service())
            with asyncio_adapter.attach(daemon), asyncio_adapter.attach(other):
                def client():
                    with proxy(uri1) as p1, proxy(uri2) as p2:
                        return [(p1.echo(i), p2.echo(-i)) for i in range(10)]

                assert await in_thread(client) == [(i, -i) for i in range(10)]
                assert daemon_fds(daemon) | daemon_fds(other) <= watched(loop).keys()
            assert not (daemon_fds(daemon) | daemon_fds(other)) & watched(loop).keys()

    run(scenario)


def test_large_reply_drains_through_writer_while_others_are_served(daemon, uri):
    async def scenario():
        loop = asyncio.get_running_loop()

        def writers():
            return [fd for fd, events in watched(loop).items() if events & selectors.EVENT_WRITE]

        with asyncio_adapter.attach(daemon):
            stalled = await in_thread(pyro4_send_requests, uri, ("big", ()))
            try:
                await until(lambda: len(writers()) == 1)
                writer_fd = writers()[0]

                def client():
                    with proxy(uri) as p:
                        return [p.echo(i) for i in range(10)]

                assert await in_thread(client) == list(range(10))
                assert writers() == [writer_fd]  # the big reply is still pending
                assert len(await in_thread(pyro4_receive_result, stalled)) == BIG_REPLY
            finally:
                stalled._pyroRelease()
            await until(lambda: not writers())

    run(scenario)


def test_async_method_awaits_while_other_connections_are_served(daemon, uri, service):
    def other_client():
        assert service.awaiting.wait(WAIT_S)
        with proxy(uri) as p:
            answers = [p.echo(i) for i in range(5)]
            p.wake()
            return answers

    async def scenario():
        with asyncio_adapter.attach(daemon):
            awaiting = asyncio.ensure_future(in_thread(call_once, uri, "wait_for_wake_up"))
            assert await in_thread(other_client) == list(range(5))
            assert await awaiting == "woken"

    run(scenario)


def test_async_method_exception_reaches_the_caller(daemon, uri):
    def client():
        with proxy(uri) as p:
            with pytest.raises(KeyError, match="async boom"):
                p.fail_after_await()
            return p.echo("after")

    async def scenario():
        with asyncio_adapter.attach(daemon):
            assert await in_thread(client) == "after"

    run(scenario)


def test_daemon_close_while_attached_detaches(uri, daemon):
    async def scenario():
        loop = asyncio.get_running_loop()
        handle = asyncio_adapter.attach(daemon)
        assert await in_thread(call_once, uri, "echo", "x") == "x"
        fds = daemon_fds(daemon)
        daemon.close()
        assert not handle.attached
        assert not fds & watched(loop).keys()
        handle.detach()  # detaching again is harmless

    run(scenario)


def test_attach_outside_a_running_loop_needs_a_loop(daemon):
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio_adapter.attach(daemon)


def test_loop_without_add_reader_is_refused_with_the_fix(daemon):
    # Windows' ProactorEventLoop cannot run here; the bare loop interface, which
    # lacks add_reader just as the Proactor does, stands in for it.
    with pytest.raises(RuntimeError, match="SelectorEventLoop"):
        asyncio_adapter.attach(daemon, asyncio.AbstractEventLoop())
    assert daemon.sockets  # the daemon was left alone


@pytest.mark.skipif(not hasattr(asyncio, "ProactorEventLoop"), reason="Windows only")
def test_windows_proactor_loop_is_refused(daemon):
    loop = asyncio.ProactorEventLoop()
    try:
        with pytest.raises(RuntimeError, match="SelectorEventLoop"):
            asyncio_adapter.attach(daemon, loop)
    finally:
        loop.close()
