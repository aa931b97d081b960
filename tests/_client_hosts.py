"""The four host loops the loop-client tests run under, behind one small interface.

Each test of ``pyro_loops.Client`` is written once against ``Host`` and
parametrized over the select loop, asyncio, Qt (offscreen, pytest-qt) and Tk
(under Xvfb). A host attaches hosted objects (clients and daemons) with its
adapter's real ``attach``, runs its real loop until a condition holds, and
arms its own timers (for "the loop kept turning" checks).

The module also holds the server processes the tests call: a stock Pyro4
4.82 daemon and a pyro_loops daemon, each serving ``peers/service.py``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import tkinter
from typing import Any, Callable

import pytest

import pyro_loops
from pyro_loops.adapters import asyncio as asyncio_adapter
from pyro_loops.adapters import qt as qt_adapter
from pyro_loops.adapters import selectloop
from pyro_loops.adapters import tk as tk_adapter

from _adapter_support import errors_reported
from _util import PEERS, Peer, Pyro4Server, peer_env

WAIT_S = 10.0
HOSTS = ["select", "asyncio", "qt", "tk"]


class Host:
    """One host loop: ``attach``, ``run_until``, ``call_later``; the test's thread is the loop's."""

    name = ""

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def attach(self, hosted: Any) -> Any:
        handle = self._attach(hosted)
        self.handles.append(handle)
        return handle

    def run_until(self, condition: Callable[[], Any], timeout: float = WAIT_S) -> None:
        """Run the real loop until ``condition()`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: condition not met within {timeout} s")
            self._turn()

    def settle(self, call: pyro_loops.Call, timeout: float = WAIT_S) -> Any:
        """Run the loop until ``call`` is done; return the call."""
        self.run_until(call.done, timeout)
        return call

    def close(self) -> None:
        for handle in self.handles:
            handle.detach()

    def _attach(self, hosted: Any) -> Any:
        raise NotImplementedError

    def _turn(self) -> None:
        """Let the loop run for a moment (at most a few milliseconds when idle)."""
        raise NotImplementedError

    def call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        raise NotImplementedError


class SelectHost(Host):
    name = "select"

    def __init__(self) -> None:
        super().__init__()
        self.loop = selectloop.SelectLoop()

    def _attach(self, hosted):
        return selectloop.attach(hosted, self.loop)

    def _turn(self):
        self.loop.poll(0.005)

    def call_later(self, delay, fn):
        self.loop.call_later(delay, fn)

    def close(self):
        super().close()
        self.loop.close()


class AsyncioHost(Host):
    name = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

    def _attach(self, hosted):
        return asyncio_adapter.attach(hosted, self.loop)

    def _turn(self):
        self.loop.run_until_complete(asyncio.sleep(0.005))

    def run(self, coro: Any, timeout: float = WAIT_S) -> Any:
        """Run a coroutine on the loop to its end."""
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def call_later(self, delay, fn):
        self.loop.call_later(delay, fn)

    def close(self):
        super().close()
        self.loop.run_until_complete(asyncio.sleep(0))
        asyncio.set_event_loop(None)
        self.loop.close()


class QtHost(Host):
    name = "qt"

    def __init__(self, qtbot: Any) -> None:
        super().__init__()
        from pytestqt.qt_compat import qt_api
        self.qtbot = qtbot
        self.qt_api = qt_api
        self.app = qt_api.QtWidgets.QApplication.instance()

    def _attach(self, hosted):
        return qt_adapter.attach(hosted, self.app, close_on_quit=False)

    def run_until(self, condition, timeout=WAIT_S):
        self.qtbot.waitUntil(lambda: bool(condition()), timeout=int(timeout * 1000))

    def _turn(self):
        self.qtbot.wait(5)

    def call_later(self, delay, fn):
        self.qt_api.QtCore.QTimer.singleShot(int(delay * 1000), fn)


class TkHost(Host):
    name = "tk"

    def __init__(self) -> None:
        super().__init__()
        self.root = tkinter.Tk()
        self.root.withdraw()
        self.escaped: list[BaseException] = []
        self.root.report_callback_exception = lambda exc_type, exc, tb: self.escaped.append(exc)

    def _attach(self, hosted):
        return tk_adapter.attach(hosted, self.root, close_on_destroy=False)

    def run_until(self, condition, timeout=WAIT_S):
        deadline = time.monotonic() + timeout

        def check() -> None:
            if condition() or time.monotonic() > deadline:
                self.root.quit()
            else:
                self.root.after(5, check)

        self.root.after(0, check)
        self.root.mainloop()
        assert condition(), f"tk: condition not met within {timeout} s"

    def call_later(self, delay, fn):
        self.root.after(int(delay * 1000), fn)

    def close(self):
        super().close()
        self.root.destroy()
        del self.root
        gc.collect()
        assert not self.escaped, f"exceptions escaped into Tk: {self.escaped}"


@pytest.fixture(params=HOSTS)
def host(request):
    """Each host loop in turn; errors reaching the error hook fail the test unless it clears them."""
    if request.param == "qt":
        made: Host = QtHost(request.getfixturevalue("qtbot"))
    else:
        made = {"select": SelectHost, "asyncio": AsyncioHost, "tk": TkHost}[request.param]()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def reported():
    """What reached the error hook; a test that expects errors clears the list."""
    with errors_reported() as seen:
        yield seen


@pytest.fixture
def client(host, reported):
    """A Client attached to the host loop, closed at the end."""
    with pyro_loops.Client() as made:
        host.attach(made)
        yield made


class LoopsServer(Peer):
    """peers/loops_server.py: our daemon in its own process (SERVERTYPE thread, so ``sleep`` runs aside)."""

    def __init__(self, **env: str) -> None:
        env.setdefault("PYRO_SERVERTYPE", "thread")
        super().__init__([str(PEERS / "loops_server.py")], peer_env(**env))
        self.uri: str = json.loads(self.readline())["uri"]


@pytest.fixture(scope="module")
def pyro4_server():
    with Pyro4Server() as server:
        yield server


@pytest.fixture(scope="module")
def loops_server():
    with LoopsServer() as server:
        yield server


@pytest.fixture(params=["pyro4", "loops"])
def server(request):
    """A stock Pyro4 4.82 daemon, then our own, each in its own process."""
    return request.getfixturevalue(request.param + "_server")


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a new thread; the list gets its result or exception."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


__all__ = ["WAIT_S", "Host", "host", "reported", "client", "pyro4_server", "loops_server", "server", "in_thread"]
