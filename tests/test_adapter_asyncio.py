"""The asyncio adapter serving real clients from a real asyncio loop.

Each test runs a coroutine on a fresh loop; clients run in threads
(``asyncio.to_thread``) with timeouts. What the loop watches is read from the
loop's selector, the real registration state.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

import pyro_loops
from pyro_loops.adapters import asyncio as asyncio_adapter

from _adapter_support import WAIT_S, BaseService, call_once, proxy


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


def run(scenario) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 3 * WAIT_S))


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


def test_detach_takes_back_the_coroutine_runner_and_reattach_restores_it(daemon, uri):
    async def scenario():
        handle = asyncio_adapter.attach(daemon)  # the running loop
        assert await in_thread(call_once, uri, "echo", 1) == 1
        handle.detach()
        assert daemon.coroutine_runner is None
        with asyncio_adapter.attach(daemon):
            def client():
                with proxy(uri) as p:
                    with pytest.raises(KeyError, match="async boom"):
                        p.fail_after_await()  # awaited on the loop again
                    return p.echo("after")

            assert await in_thread(client) == "after"

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
