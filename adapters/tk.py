"""Serve a pyro_loops daemon from a Tkinter main loop.

``attach(daemon, root)`` hooks the daemon into the Tcl event loop of ``root``;
nothing polls. Two strategies carry "this socket is ready" into the Tk thread:

``"filehandler"`` (chosen wherever Tk has it: Linux, macOS, the BSDs)
    One ``root.tk.createfilehandler`` per socket, for READABLE, plus WRITABLE
    only while the daemon has output waiting. Tcl's own notifier watches the
    descriptors, so a call is dispatched as soon as its last byte arrives.

``"thread"`` (chosen where ``createfilehandler`` is missing: Tk on Windows)
    A helper thread watches the daemon's sockets with a selector and wakes
    the Tk thread with a virtual event when one is ready (``adapters._tk_thread``
    says how). Latency: one more thread hop each way than with file handlers. Measured on
    Linux (2 busy cores), the median call went from about 0.2 ms with file
    handlers to 0.4 ms back to back and 0.6-0.8 ms for isolated calls, against
    up to 20 ms for the usual 50 Hz ``select()`` timer; idle, both threads
    sleep. Limit: with a threaded Tcl (every current build) tkinter accepts
    calls from other threads only while the Tk thread is inside
    ``mainloop()``. A program that pumps Tk with ``update()`` instead gets a
    reported "main thread is not in main loop" error and its calls wait until
    ``mainloop()`` runs (the helper retries once a second); such programs
    should use the filehandler strategy or ``pyro_loops.adapters.selectloop``.

Either way every call runs in the Tk thread, so a published object may touch
widgets; methods marked ``@pyro_loops.in_worker`` run in the daemon's workers
and their replies come back through the daemon's wakeup socket. The daemon's
deadlines (half-received frames, queued work) become one single-shot ``after``
timer that exists only while the daemon has a deadline.

A call that opens a nested loop (``wait_window``, a dialog, ``update()``) keeps
the other sockets served meanwhile: Tk delivers their events inside the nested
loop and the daemon holds back further requests of the waiting connection.
A loop ``Client``'s done-callback may do the same: its replies keep coming in,
on every connection, with either strategy.

Attach and detach in the Tk thread (the one that created ``root``); other
threads are refused with an error that says so, as in every adapter.

Destroying ``root`` closes the daemon (``close_on_destroy=True``, the default)
or just detaches it, so no handler outlives the window and clients get a
closed connection at once instead of a timeout. Errors raised inside the
adapter or the daemon go to ``pyro_loops.hosting.report_error``, never to Tk.
"""

from __future__ import annotations

import math
import socket
import time
from typing import Any, Callable, Literal

try:
    import tkinter
except ImportError as exc:  # a Python built without Tk: say what to install, not just "No module named"
    raise ImportError(
        "pyro_loops.adapters.tk needs tkinter, which this Python lacks: install Tk for it "
        "(Debian/Ubuntu: apt-get install python3-tk; a Python built from source needs tk-dev "
        "before it is built), or host the daemon with another adapter") from exc

from pyro_loops.hosting import READ, WRITE, report_error, reported

from ._common import WatcherHandle, attach_watcher, nests, require_type
from ._tk_thread import ThreadStrategy, unbind

__all__ = ["attach", "TkHandle"]

Strategy = Literal["auto", "filehandler", "thread"]

_TK_MASKS = ((READ, tkinter.READABLE), (WRITE, tkinter.WRITABLE))
_SERVE_ERRORS = reported("tk adapter: handle_event")
_DEADLINE_ERRORS = reported("tk adapter: handle_deadline")


def attach(daemon: Any, root: tkinter.Misc, *, strategy: Strategy = "auto",
           close_on_destroy: bool = True) -> "TkHandle":
    """Serve ``daemon`` from ``root``'s event loop until the handle is detached.

    ``root`` is the Tk root (or any widget: its root's loop serves). Call this
    in the Tk thread. ``strategy`` forces one of the two ways of watching
    sockets described in the module docstring ("auto" picks "filehandler"
    where Tk has it). ``close_on_destroy`` closes the daemon when ``root`` is
    destroyed; with False the daemon is only detached.
    """
    require_type(root, tkinter.Misc, "a tkinter widget (the Tk root) as its second argument")
    if strategy == "auto":
        strategy = "filehandler" if hasattr(root.tk, "createfilehandler") else "thread"
    if strategy not in ("filehandler", "thread"):
        raise ValueError(f"unknown strategy {strategy!r}: 'auto', 'filehandler' or 'thread'")
    return TkHandle(daemon, root, strategy, close_on_destroy)


class TkHandle(WatcherHandle):
    """What ``attach`` returns, and the daemon's watcher: ``detach()`` it, or use it as a context manager.

    It keeps the deadline timer and the end of the root; watching the sockets
    is the strategy's part (file handlers here, the helper thread in
    ``adapters._tk_thread``).
    """

    def __init__(self, daemon: Any, root: tkinter.Misc, strategy: str, close_on_destroy: bool) -> None:
        self.daemon = daemon
        self.strategy = strategy
        self._root = root
        self._require_loop_thread("attach()")
        self._close_on_destroy = close_on_destroy
        self._socks: dict[int, socket.socket] = {}
        self._events: dict[int, int] = {}
        # One Tcl command for the handle's life, armed with ``after`` as needed,
        # rather than a fresh command per deadline as root.after would create.
        self._deadline_cmd = root.register(self._deadline_due)
        self._after_id: str | None = None
        self._when: float | None = None
        self._destroy_cmd: str | None = None
        self._watching: _FileHandlers | ThreadStrategy = (
            _FileHandlers(root, self._serve) if strategy == "filehandler" else ThreadStrategy(root, self._serve, nests(daemon)))
        self._attached = True
        attach_watcher(daemon, self)
        self._destroy_cmd = root.bind("<Destroy>", self._root_destroyed, add="+")
        self._watching.start()

    def _in_loop_thread(self) -> bool:
        try:
            self._root.tk.eval("")  # tkinter's own check: raises in a thread other than the interpreter's
        except RuntimeError:
            return False
        return True

    def _loop_name(self) -> str:
        return f"the Tk root {str(self._root)!r} belongs to another thread (the one that created it)"

    # -- the watcher interface, called by the daemon in the Tk thread --

    def _set_interest(self, sock: socket.socket, events: int) -> None:
        fd = sock.fileno()
        if fd < 0:  # already closed despite the contract: find it by identity so no handler leaks
            fd = next((f for f, s in self._socks.items() if s is sock), -1)
        known = self._socks.get(fd)
        if known is not None and (known is not sock or not events):
            del self._socks[fd], self._events[fd]
            self._watching.unwatch(fd)  # no longer wanted, or the fd now belongs to another socket
        if events:
            self._socks[fd] = sock
            self._events[fd] = events
            self._watching.watch(fd, sock, events)

    def set_deadline(self, when: float | None) -> None:
        if when == self._when and (when is None or self._after_id is not None):
            return
        self._cancel_timer()
        self._when = when
        if when is not None and self._attached:
            delay = max(0, math.ceil((when - time.monotonic()) * 1000))
            self._after_id = self._root.tk.call("after", delay, self._deadline_cmd)

    def detached(self) -> None:
        if not self._attached:
            return
        self._attached = False
        for fd in list(self._socks):
            self._watching.unwatch(fd)
        self._socks.clear()
        self._events.clear()
        self._cancel_timer()
        self._when = None
        self._watching.stop()
        try:
            if self._destroy_cmd is not None:
                unbind(self._root, "<Destroy>", self._destroy_cmd)
            self._root.deletecommand(self._deadline_cmd)
        except (tkinter.TclError, ValueError):
            pass  # the root is already gone, and its commands with it

    # -- serving, in the Tk thread --

    def _serve(self, fd: int, sock: socket.socket, ready: int) -> None:
        """Hand one readiness report to the daemon unless it is stale."""
        if self._socks.get(fd) is not sock:
            return  # a report for a socket removed meanwhile (its fd may be reused)
        events = ready & self._events[fd]
        if events:
            with _SERVE_ERRORS:  # the daemon promises not to raise; Tk must never see it
                self.daemon.handle_event(sock, events)

    def _deadline_due(self) -> None:
        self._after_id = None
        self._when = None
        if self._attached:
            with _DEADLINE_ERRORS:
                self.daemon.handle_deadline()

    def _cancel_timer(self) -> None:
        if self._after_id is not None:
            after_id, self._after_id = self._after_id, None
            try:
                self._root.tk.call("after", "cancel", after_id)
            except tkinter.TclError as exc:
                report_error(exc, "tk adapter: cancelling the deadline timer")

    @reported("tk adapter: root destroyed")
    def _root_destroyed(self, event: tkinter.Event) -> None:
        if event.widget is not self._root or not self._attached:
            return  # <Destroy> on the root also fires for each of its children
        if self._close_on_destroy:
            self.daemon.close()
        else:
            self.daemon.detach_watcher()


class _FileHandlers:
    """Tcl's notifier watches each socket: one file handler per descriptor."""

    def __init__(self, root: tkinter.Misc, serve: Callable[[int, socket.socket, int], None]) -> None:
        self._tk = root.tk
        self._serve: Callable[[int, socket.socket, int], None] | None = serve

    def start(self) -> None:
        """Nothing to start: Tcl's notifier is already running."""

    def stop(self) -> None:
        """The handlers went with ``unwatch``; drop the handle too, so no cycle keeps the root alive."""
        self._serve = None

    def watch(self, fd: int, sock: socket.socket, events: int) -> None:
        # Tk keeps one handler per descriptor; deleting first also frees the
        # old callback, which a bare re-create would leave behind in tkinter.
        self._tk.deletefilehandler(fd)
        mask = sum(tk_bit for bit, tk_bit in _TK_MASKS if events & bit)
        if mask:
            self._tk.createfilehandler(fd, mask, self._callback(fd, sock))

    def unwatch(self, fd: int) -> None:
        self._tk.deletefilehandler(fd)

    def _callback(self, fd: int, sock: socket.socket) -> Callable[[int, int], None]:
        # Bound to this socket object, so a handler that fires after its socket
        # was replaced by another on the same descriptor number does nothing.
        def ready(_file: int, tk_mask: int) -> None:
            if self._serve is not None:
                self._serve(fd, sock, sum(bit for bit, tk_bit in _TK_MASKS if tk_mask & tk_bit))
        return ready
