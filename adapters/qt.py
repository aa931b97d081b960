"""Serve a daemon from a Qt event loop with socket notifiers and one timer.

``handle = attach(daemon, app)`` and the daemon is served by ``app.exec()``:
each socket gets a ``QSocketNotifier`` for reading (and one for writing while
a reply waits to be sent), and a single-shot ``QTimer`` runs only while the
daemon has a deadline. An idle daemon costs no wakeups at all.

Published methods run in the GUI thread, so they may touch widgets; mark long
ones with ``@pyro_loops.in_worker``. A method may open a modal dialog
(``QDialog.exec``): while it runs, the nested loop keeps serving the other
connections; the daemon holds back further requests on the connection whose
call is in progress, so per-connection order is kept. A loop ``Client``'s
done-callback may open one too: replies, on every connection, keep coming in.

PyQt5 (5.15), PyQt6 and PySide6 go through the same code (only names that all
three spell alike are used); the test suite runs under each. The binding is the
one ``app`` belongs to, else one already imported, else the first installed of
PyQt5, PySide6, PyQt6. PySide6 6.12.0 on Python 3.10 and 3.11 is refused: its
methods that return nothing give back a reference to ``None`` they do not own
(upstream PYSIDE-3474), so any program calling them long enough aborts with
"Fatal Python error: none_dealloc". The adapter itself calls none of them per
request, but the program's own widget updates would.

Errors raised inside the machinery are sent to ``pyro_loops.set_error_hook``;
none escapes into Qt, where PyQt5 would abort the process.
"""

from __future__ import annotations

import importlib
import math
import socket
import sys
import time
from types import ModuleType
from typing import Any

from pyro_loops.hosting import READ, WRITE

from ._common import WatcherHandle, attach_watcher, guarded, nests

_BINDINGS = ("PyQt5", "PySide6", "PyQt6")
_MAX_TIMER_MS = 2**31 - 1  # QTimer takes a signed 32-bit interval
_PROBE_CALLS = 16  # calls of a method returning nothing, to see whether None loses references


def _qtcore(app: Any) -> ModuleType:
    """The QtCore of the binding ``app`` belongs to, or the best guess without an app."""
    if app is not None:
        for cls in type(app).__mro__:
            binding = cls.__module__.partition(".")[0]
            if binding in _BINDINGS:
                return importlib.import_module(binding + ".QtCore")
        raise TypeError(f"not a Qt application object: {app!r}")
    for binding in _BINDINGS:
        if binding + ".QtCore" in sys.modules:
            return sys.modules[binding + ".QtCore"]
    for binding in _BINDINGS:
        try:
            return importlib.import_module(binding + ".QtCore")
        except ImportError:
            continue
    raise ImportError(
        "pyro_loops.adapters.qt needs a Qt binding and none is installed: "
        "pip install 'pyro-loops[qt]' (PyQt5), 'pyro-loops[pyqt6]' or 'pyro-loops[pyside6]'"
    )


def _refuse_broken_binding(qtcore: ModuleType) -> None:
    """Raise if this binding drops references to ``None`` (PySide6 6.12.0 on Python < 3.12).

    Checked by behaviour, not by version number, so a fixed release passes: a
    method that returns nothing (``setObjectName``) is called a few times and
    the reference count of ``None`` must not fall; three rounds, so that another
    thread letting go of Nones meanwhile cannot fake the defect. From Python
    3.12 on ``None`` is immortal and the defect is harmless.
    """
    if sys.version_info >= (3, 12) or not qtcore.__name__.startswith("PySide6"):
        return
    probe = qtcore.QObject()

    def none_references_lost() -> int:
        before = sys.getrefcount(None)
        for _ in range(_PROBE_CALLS):
            probe.setObjectName("pyro_loops probe")
        return before - sys.getrefcount(None)

    if all(none_references_lost() >= _PROBE_CALLS for _ in range(3)):
        version = getattr(sys.modules.get("PySide6"), "__version__", "?")
        raise RuntimeError(
            f"PySide6 {version} on Python {sys.version_info[0]}.{sys.version_info[1]} loses a reference to None "
            "on every call of a Qt method that returns nothing (PYSIDE-3474): the program would abort with "
            "'Fatal Python error: none_dealloc'. Install a PySide6 without the defect "
            "(pip install 'pyro-loops[pyside6]' leaves out 6.12.0 on this Python), or use Python 3.12 or later"
        )


class _Watch:
    """One notifier for one (socket, direction).

    ``busy`` while its callback runs; ``paused`` once the notifier fired again
    meanwhile (from a nested loop) and was disabled until the callback returns.
    """

    __slots__ = ("sock", "fd", "direction", "notifier", "busy", "paused")

    def __init__(self, sock: socket.socket, direction: int, notifier: Any) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.direction = direction
        self.notifier = notifier
        self.busy = False
        self.paused = False


class QtHandle(WatcherHandle):
    """A daemon attached to a Qt application; the daemon's watcher.

    Use ``detach()`` (or the ``with`` statement) to stop serving; the daemon
    stays open. ``daemon.close()`` while attached detaches first. After either,
    every notifier and the timer are disabled and scheduled for deletion.
    """

    def __init__(self, daemon: Any, app: Any, qtcore: ModuleType, close_on_quit: bool) -> None:
        self.daemon = daemon
        self._qt = qtcore
        self._app = app
        self._require_loop_thread("attach()")
        self._watches: dict[tuple[int, int], _Watch] = {}
        self._attached = True
        # The notifiers and the timer are children of this object, which Qt owns
        # (its parent is the app): they are only ever deleted with deleteLater,
        # never by Python's garbage collector in the middle of their own slot.
        self._owner = qtcore.QObject(app)
        self._owner.setObjectName("pyro_loops.adapters.qt")
        self._when: float | None = None
        self._timer = qtcore.QTimer(self._owner)
        self._timer.setSingleShot(True)
        self._timer.setTimerType(qtcore.Qt.TimerType.PreciseTimer)
        self._timer.timeout.connect(self._on_timer)
        self._nests = nests(daemon)
        #: the handle's slots running now, nested ones counted (see _dispatching)
        self._running = 0
        self._doomed: list[_Watch] = []  # dropped while a slot ran: disposed of once none runs
        self._quit_slot = self._on_quit if close_on_quit else None
        if self._quit_slot is not None:
            app.aboutToQuit.connect(self._quit_slot)
        attach_watcher(daemon, self)

    def _in_loop_thread(self) -> bool:
        return self._qt.QThread.currentThread() == self._app.thread()

    def _loop_name(self) -> str:
        return "the Qt application runs in another thread (the one that created it)"

    # -- the rest of the watcher interface (called by the daemon, in the GUI thread) --

    def set_deadline(self, when: float | None) -> None:
        self._when = when
        if when is None:
            self._timer.stop()
        else:
            self._arm(when - time.monotonic())

    def detached(self) -> None:
        for key in list(self._watches):
            self._drop(key)
        self._timer.stop()
        self._when = None
        if self._quit_slot is not None:
            self._app.aboutToQuit.disconnect(self._quit_slot)
            self._quit_slot = None
        if self._attached and not self._running:
            self._owner.deleteLater()  # else by the last slot to return (_dispatching)
        self._attached = False

    # -- notifiers --

    def _set_interest(self, sock: socket.socket, events: int) -> None:
        fd = sock.fileno()
        for direction in (READ, WRITE):
            key = (fd, direction)
            watch = self._watches.get(key)
            if watch is not None and (watch.sock is not sock or not events & direction):
                self._drop(key)  # no longer wanted, or the fd now belongs to another socket
                watch = None
            if watch is None and events & direction:
                self._watches[key] = self._make_watch(sock, direction)

    def _make_watch(self, sock: socket.socket, direction: int) -> _Watch:
        kind = self._qt.QSocketNotifier.Type
        notifier = self._qt.QSocketNotifier(
            sock.fileno(), kind.Read if direction == READ else kind.Write, self._owner
        )
        watch = _Watch(sock, direction, notifier)
        # activated's arguments differ between bindings and Qt versions (an int
        # fd, or a QSocketDescriptor plus a type since Qt 5.15): take none of them.
        notifier.activated.connect(lambda *_: self._on_activated(watch))
        return watch  # a new notifier is enabled already

    def _drop(self, key: tuple[int, int]) -> None:
        """Forget a notifier; called before its socket is closed."""
        watch = self._watches.pop(key)
        watch.notifier.setEnabled(False)
        if self._running:
            self._doomed.append(watch)
        else:
            _dispose(watch)

    def _dispatching(self) -> "_Dispatching":
        """Count a slot of this handle as running, for as long as the ``with`` block lasts.

        A slot may run a nested loop (a client's done-callback opening a dialog)
        in which a notifier of this handle is dropped, or the handle detached,
        the very notifier whose slot is still on the stack below included.
        Disconnecting or deleting it then frees what that outer slot returns
        into (PyQt's slot proxy is freed by the inner return already when the
        same slot runs twice): the process crashes. So nothing is disconnected
        or deleted until the last running slot has returned.
        """
        return _Dispatching(self)

    def _all_returned(self) -> None:
        doomed, self._doomed = self._doomed, []
        for watch in doomed:
            _dispose(watch)
        if not self._attached:
            self._owner.deleteLater()

    @guarded("qt adapter: socket notifier")
    def _on_activated(self, watch: _Watch) -> None:
        key = (watch.fd, watch.direction)
        if self._watches.get(key) is not watch:
            return  # a notifier that outlived its registration: the fd may be someone else's now
        if self._nests:  # a client reads on, even from a nested loop (see _common.nests)
            with self._dispatching():
                self.daemon.handle_event(watch.sock, watch.direction)
            return
        if watch.busy:
            # Fired again from a nested event loop started by the call this
            # notifier dispatched: never re-enter the daemon; disable the
            # level-triggered notifier until that call returns, or the nested
            # loop would spin on it. Disabled only now, not around every call:
            # two Qt calls per request is what trips PYSIDE-3474.
            watch.paused = True
            watch.notifier.setEnabled(False)
            return
        watch.busy = True
        try:
            with self._dispatching():
                self.daemon.handle_event(watch.sock, watch.direction)
        finally:
            watch.busy = False
            if watch.paused:
                watch.paused = False
                if self._watches.get(key) is watch:
                    watch.notifier.setEnabled(True)

    # -- deadline timer --

    def _arm(self, delay: float) -> None:
        # Rounded up: a timer that fires early would only make the daemon find nothing due.
        self._timer.start(min(_MAX_TIMER_MS, max(0, math.ceil(delay * 1000))))

    @guarded("qt adapter: deadline timer")
    def _on_timer(self) -> None:
        if self._when is None:
            return
        remaining = self._when - time.monotonic()
        if remaining > 0:
            self._arm(remaining)
            return
        self._when = None
        with self._dispatching():
            self.daemon.handle_deadline()

    @guarded("qt adapter: application quit")
    def _on_quit(self) -> None:
        self.daemon.close()


class _Dispatching:
    """``QtHandle._dispatching``'s context manager."""

    __slots__ = ("_handle",)

    def __init__(self, handle: QtHandle) -> None:
        self._handle = handle

    def __enter__(self) -> None:
        self._handle._running += 1

    def __exit__(self, *exc_info: object) -> None:
        handle = self._handle
        handle._running -= 1
        if not handle._running and (handle._doomed or not handle._attached):
            handle._all_returned()


def _dispose(watch: _Watch) -> None:
    watch.notifier.activated.disconnect()
    watch.notifier.deleteLater()


def attach(daemon: Any, app: Any = None, *, close_on_quit: bool = True) -> QtHandle:
    """Serve ``daemon`` from the Qt event loop of ``app`` (default: the running application).

    Call it from the GUI thread, after the application object exists. With
    ``close_on_quit`` (the default) the daemon is closed when the application
    quits, so its sockets do not outlive the loop that served them.
    """
    qtcore = _qtcore(app)
    app = app if app is not None else qtcore.QCoreApplication.instance()
    if app is None:
        raise RuntimeError("create the QApplication before attaching a daemon to it")
    _refuse_broken_binding(qtcore)
    return QtHandle(daemon, app, qtcore, close_on_quit)
