"""The host loops every loop-facing test runs under, behind one interface.

One ``Host`` per adapter: the select loop, asyncio, Qt (an offscreen
QApplication through pytest-qt) and Tk under Xvfb, with both of its strategies
("filehandler", the default on Linux, and "thread", the helper-thread fallback
meant for Windows). A host runs its real loop in the test's thread
(``run_until``, ``serve``), arms its own timers (``call_later``, ``repeat``),
attaches hosted objects (daemons and clients) with its adapter's real
``attach``, and reads back what the loop really watches (its selector, Qt's
notifiers, the Tk handle's registrations).

Fixtures: ``selectloop_host``, ``asyncio_host``, ``qt_host`` and ``tk_host``
(one adapter each, for the per-adapter test modules), and ``host``, each of
the five in turn, for behaviour every adapter shares. Test modules import the
fixtures they use. Qt and Tk are imported only when their host is made, so the
select-loop and asyncio runs need neither Qt nor a display.
"""

from __future__ import annotations

import asyncio
import gc
import selectors
import sys
import threading
import time
from typing import Any, Callable

import pytest

import pyro_loops
from pyro_loops.adapters import asyncio as asyncio_adapter
from pyro_loops.adapters import selectloop

from _adapter_support import WAIT_S, in_threads

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
BOTH = READ | WRITE
HOSTS = ["selectloop", "asyncio", "qt", "tk-filehandler", "tk-thread"]
# Loops that any thread may run (Qt's and Tk's run only in the thread that made them).
RUN_ANYWHERE = ["selectloop", "asyncio"]
# Loops that can run nested inside one of their callbacks (a modal dialog); asyncio's cannot.
NESTING = ["selectloop", "qt", "tk-filehandler", "tk-thread"]


#: Tcl interpreters still referenced when their Tk host closed (see TkHost.close)
_KEPT_INTERPRETERS: list[Any] = []

class Host:
    """One host loop, run in the test's thread. Subclasses say how to attach, run,
    time and inspect it; the shared parts are written here once."""

    name: str
    where: str            # what the error hook is told for a fault inside this host's callbacks
    expected: str         # what attach() says it needs when given something else
    adapter: Any          # the adapter module, for its attach()
    native: Any           # what that attach() takes: the SelectLoop, asyncio loop, QApplication or Tk root
    attach_options: dict[str, Any] = {}

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def attach(self, hosted: Any) -> Any:
        """Attach a daemon or client with the adapter's ``attach``; the host detaches it at its end."""
        handle = self._attach(hosted)
        self.handles.append(handle)
        return handle

    def _attach(self, hosted: Any) -> Any:
        return self.adapter.attach(hosted, self.native, **self.attach_options)

    def run_until(self, condition: Callable[[], Any], timeout: float = WAIT_S) -> None:
        """Run the loop until ``condition()`` holds (checked at least every 10 ms); fail after ``timeout``."""
        raise NotImplementedError

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Callable[[], None]:
        """Call ``fn`` once from a loop timer after ``delay`` seconds; returns a cancel function."""
        raise NotImplementedError

    def repeat(self, interval: float, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` from a loop timer every ``interval`` seconds (0: every turn); returns a stop function."""
        def tick() -> None:
            fn()
            cancel[0] = self.call_later(interval, tick)

        cancel = [self.call_later(interval, tick)]
        return lambda: cancel[0]()

    def nest(self, until: Callable[[], Any]) -> None:
        """Run a nested loop until ``until()`` holds, as a modal dialog opened in a callback does
        (only the hosts in ``NESTING``: an asyncio loop cannot run inside itself)."""
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
        """End of the test: detach what is still attached; nothing may have escaped into the loop."""
        for handle in self.handles:
            handle.detach()

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.run_until(lambda: time.monotonic() >= end)

    def settle(self, call: pyro_loops.Call, timeout: float = WAIT_S) -> pyro_loops.Call:
        """Run the loop until ``call`` is done; return the call."""
        self.run_until(call.done, timeout)
        return call

    def serve(self, *clients: Callable[[], Any]) -> list[Any]:
        """Run the loop while each client runs in a thread; return their results, re-raise their errors."""
        threads, results, failures = in_threads(*clients)
        self.run_until(lambda: not any(t.is_alive() for t in threads))
        if failures:
            raise failures[0]
        return results


class SelectorHost(Host):
    """A host whose loop has ``call_later`` and watches sockets with a ``selectors`` selector;
    any thread may run it (``run_in_thread``)."""

    def __init__(self, loop: Any) -> None:
        super().__init__()
        self.loop = self.native = loop

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Callable[[], None]:
        return self.loop.call_later(delay, fn).cancel

    def watched(self, events: int = BOTH) -> list[int]:
        own = self._own_fd()
        return sorted(key.fd for key in self.loop._selector.get_map().values() if key.events & events and key.fd != own)

    def _own_fd(self) -> int:
        """The loop's own wakeup descriptor, which is no adapter's."""
        raise NotImplementedError

    def run_in_thread(self) -> Callable[[], None]:
        """Run the loop in a thread of its own until the returned function stops it."""
        runner = threading.Thread(target=self._run_forever, name=f"{self.name}-loop")
        runner.start()

        def stop() -> None:
            self._stop_from_another_thread()
            runner.join(WAIT_S)
            assert not runner.is_alive(), "the loop's thread did not end"

        return stop

    def _run_forever(self) -> None:
        raise NotImplementedError

    def _stop_from_another_thread(self) -> None:
        raise NotImplementedError


class SelectLoopHost(SelectorHost):
    name = "selectloop"
    where = "select loop"
    expected = "SelectLoop"
    adapter = selectloop

    def __init__(self) -> None:
        super().__init__(selectloop.SelectLoop())

    def run_until(self, condition: Callable[[], Any], timeout: float = WAIT_S) -> None:
        safety = self.loop.call_later(timeout, self.loop.stop)
        self.loop.run(until=condition, max_wait=0.01)
        safety.cancel()
        assert condition(), f"{self.name}: not reached within {timeout} s"

    def nest(self, until: Callable[[], Any]) -> None:
        self.loop.run(until=until, max_wait=0.01)

    def _own_fd(self) -> int:
        return self.loop._wakeup.reader.fileno()

    def deadline_timers(self) -> int:
        return sum(1 for _, _, timer in self.loop._timers if not timer.cancelled)

    def _run_forever(self) -> None:
        self.loop.run()

    def _stop_from_another_thread(self) -> None:
        self.loop.stop()

    def close(self) -> None:
        super().close()
        self.loop.close()


class AsyncioHost(SelectorHost):
    name = "asyncio"
    where = "asyncio adapter"
    expected = "asyncio event loop"
    adapter = asyncio_adapter

    def __init__(self) -> None:
        super().__init__(asyncio.new_event_loop())  # attached before it runs: the thread that runs it serves
        asyncio.set_event_loop(self.loop)
        self.escaped: list[dict] = []
        self.loop.set_exception_handler(lambda loop, context: self.escaped.append(context))

    def run_until(self, condition: Callable[[], Any], timeout: float = WAIT_S) -> None:
        async def until() -> None:
            deadline = time.monotonic() + timeout
            while not condition() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)

        self.loop.run_until_complete(until())
        assert condition(), f"{self.name}: not reached within {timeout} s"

    def run(self, coro: Any, timeout: float = WAIT_S) -> Any:
        """Run a coroutine on the loop to its end."""
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def _own_fd(self) -> int:
        return self.loop._ssock.fileno()  # the loop's self-pipe

    def deadline_timers(self) -> int:
        return sum(1 for handle in self.handles if getattr(handle, "_timer", None) is not None)

    def _run_forever(self) -> None:
        self.loop.run_forever()

    def _stop_from_another_thread(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)

    def close(self) -> None:
        super().close()
        self.loop.run_until_complete(asyncio.sleep(0))
        asyncio.set_event_loop(None)
        self.loop.close()
        assert self.escaped == [], f"errors reached the loop's exception handler: {self.escaped}"


class QtHost(Host):
    name = "qt"
    where = "qt adapter"
    expected = "Qt application"

    def __init__(self, qtbot: Any, qapp: Any) -> None:
        super().__init__()
        from pytestqt.qt_compat import qt_api

        from pyro_loops.adapters import qt as qt_adapter

        self.adapter = qt_adapter
        self.qtbot = qtbot
        self.app = self.native = qapp
        self.qt = qt_api.QtCore
        self._timers: set[Any] = set()  # single-shot timers of the test, kept alive until they fire


    def run_until(self, condition: Callable[[], Any], timeout: float = WAIT_S) -> None:
        self.qtbot.waitUntil(lambda: bool(condition()), timeout=int(timeout * 1000))

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Callable[[], None]:
        timer = self.qt.QTimer()
        timer.setSingleShot(True)

        def fire() -> None:
            self._timers.discard(timer)
            fn()

        def cancel() -> None:
            timer.stop()
            self._timers.discard(timer)

        timer.timeout.connect(fire)
        timer.start(int(delay * 1000))
        self._timers.add(timer)
        return cancel

    def nest(self, until: Callable[[], Any]) -> None:
        nested = self.qt.QEventLoop()
        check = self.qt.QTimer()
        check.timeout.connect(lambda: until() and nested.quit())
        check.start(5)
        nested.exec()
        check.stop()

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
        super().close()
        for timer in list(self._timers):
            timer.stop()
        self.assert_released()


class TkHost(Host):
    where = "tk adapter"
    expected = "tkinter widget"

    def __init__(self, strategy: str = "auto") -> None:
        super().__init__()
        import tkinter

        from pyro_loops.adapters import tk as tk_adapter

        self.adapter = tk_adapter
        self.tkinter = tkinter
        self.name = f"tk-{strategy}"
        self.attach_options = {"strategy": strategy}
        self.root = self.native = tkinter.Tk()
        self.root.withdraw()
        self.escaped: list[BaseException] = []
        self.root.report_callback_exception = lambda exc_type, exc, tb: self.escaped.append(exc)


    def run_until(self, condition: Callable[[], Any], timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout

        def check() -> None:
            if condition() or time.monotonic() > deadline:
                self.root.quit()
            else:
                self.root.after(5, check)

        self.root.after(0, check)
        self.root.mainloop()
        assert condition(), f"{self.name}: not reached within {timeout} s"

    def nest(self, until: Callable[[], Any]) -> None:
        import _tkinter

        while not until():
            self.root.tk.dooneevent(_tkinter.ALL_EVENTS)  # sleeps until an event: a socket's, a timer's

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Callable[[], None]:
        timer = self.root.after(int(delay * 1000), fn)
        return lambda: self.root.after_cancel(timer)

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
        assert helper_threads_end(self.root)

    def close(self) -> None:
        super().close()
        try:
            self.root.destroy()
        except self.tkinter.TclError:
            pass  # the test destroyed it
        # A Tcl interpreter must be deleted in its own thread (elsewhere Tcl panics:
        # "Tcl_AsyncDelete: async handler deleted by the wrong thread", and the
        # process aborts): free this one here, not in whichever daemon or client
        # thread the garbage collector would next run in. If something the test
        # made still holds it (an exception's traceback, a leaked closure), keep
        # it for the rest of the session instead.
        interpreter = self.root.tk
        del self.root
        gc.collect()
        if sys.getrefcount(interpreter) > 2:  # more than this local and the call's argument
            _KEPT_INTERPRETERS.append(interpreter)
        del interpreter
        assert not self.escaped, f"exceptions escaped into Tk: {self.escaped}"


def helper_threads() -> list[threading.Thread]:
    """The Tk thread strategy's helper threads still running."""
    return [t for t in threading.enumerate() if t.name == "pyro_loops-tk-selector"]


def helper_threads_end(root: Any) -> bool:
    """Whether the thread strategy's helper threads all end (a wakeup in flight is delivered first)."""
    import _tkinter

    deadline = time.monotonic() + WAIT_S
    while helper_threads() and time.monotonic() < deadline:
        root.tk.dooneevent(_tkinter.ALL_EVENTS | _tkinter.DONT_WAIT)  # works on a destroyed root too
        for thread in helper_threads():
            thread.join(0.01)
    return not helper_threads()


def make_host(name: str, request: pytest.FixtureRequest) -> Host:
    """The host called ``name`` (one of ``HOSTS``, or ``tk`` for Tk's default strategy)."""
    if name == "selectloop":
        return SelectLoopHost()
    if name == "asyncio":
        return AsyncioHost()
    if name == "qt":
        pytest.importorskip("pytestqt", reason="the Qt runs need pytest-qt and a Qt binding")
        return QtHost(request.getfixturevalue("qtbot"), request.getfixturevalue("qapp"))
    pytest.importorskip("tkinter", reason="the Tk runs need tkinter")
    return TkHost(name.partition("-")[2] or "auto")


def _hosted(name: str, request: pytest.FixtureRequest):
    made = make_host(name, request)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(params=HOSTS)
def host(request):
    """Each host loop in turn."""
    yield from _hosted(request.param, request)


def _adapter_fixture(name: str, doc: str) -> Any:
    """A fixture ``<adapter>_host``: the host called ``name`` alone, for one adapter's own tests."""
    def fixture(request):
        yield from _hosted(name, request)

    fixture.__doc__ = doc
    return pytest.fixture(name=f"{name.partition('-')[0]}_host")(fixture)


selectloop_host = _adapter_fixture("selectloop", "A SelectLoop; ``selectloop_host.loop`` is the loop.")
asyncio_host = _adapter_fixture("asyncio", "A fresh asyncio loop, not running; ``asyncio_host.loop`` is the loop.")
qt_host = _adapter_fixture("qt", "The offscreen QApplication of pytest-qt; ``qt_host.app`` is the application.")
tk_host = _adapter_fixture("tk", "A Tk root with Tk's default strategy; ``tk_host.root`` is the root window.")
