"""Serve a pyro_loops daemon from a Tkinter main loop.

``attach(daemon, root)`` hooks the daemon into the Tcl event loop of ``root``;
nothing polls. Two strategies carry "this socket is ready" into the Tk thread:

``"filehandler"`` (chosen wherever Tk has it: Linux, macOS, the BSDs)
    One ``root.tk.createfilehandler`` per socket, for READABLE, plus WRITABLE
    only while the daemon has output waiting. Tcl's own notifier watches the
    descriptors, so a call is dispatched as soon as its last byte arrives.

``"thread"`` (chosen where ``createfilehandler`` is missing: Tk on Windows)
    A helper thread runs a ``selectors`` selector on the daemon's sockets. When
    one is ready the helper stops watching it and posts a virtual event with
    ``root.event_generate(..., when="tail")``: tkinter hands a Tk call made in
    another thread over to the Tk thread, and "tail" only queues the event
    there. The Tk thread serves the socket, then gives it back to the helper.
    Latency: one more thread hop each way than with file handlers. Measured on
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

Destroying ``root`` closes the daemon (``close_on_destroy=True``, the default)
or just detaches it, so no handler outlives the window and clients get a
closed connection at once instead of a timeout. Errors raised inside the
adapter or the daemon go to ``pyro_loops.hosting.report_error``, never to Tk.
"""

from __future__ import annotations

import itertools
import math
import selectors
import socket
import threading
import time
import tkinter
import weakref
from typing import Any, Callable, Literal

from pyro_loops.hosting import READ, WRITE, report_error

from ._common import attach_watcher

__all__ = ["attach", "TkHandle"]

Strategy = Literal["auto", "filehandler", "thread"]

_TK_MASKS = ((READ, tkinter.READABLE), (WRITE, tkinter.WRITABLE))
_handle_numbers = itertools.count(1)  # gives each thread-strategy handle its own virtual event


def attach(daemon: Any, root: tkinter.Tk, *, strategy: Strategy = "auto",
           close_on_destroy: bool = True) -> "TkHandle":
    """Serve ``daemon`` from ``root``'s event loop until the handle is detached.

    Call this in the Tk thread. ``strategy`` forces one of the two ways of
    watching sockets described in the module docstring ("auto" picks
    "filehandler" where Tk has it). ``close_on_destroy`` closes the daemon when
    ``root`` is destroyed; with False the daemon is only detached.
    """
    if strategy == "auto":
        strategy = "filehandler" if hasattr(root.tk, "createfilehandler") else "thread"
    if strategy == "filehandler":
        watcher: _TkWatcher = _FileHandlerWatcher(daemon, root, close_on_destroy)
    elif strategy == "thread":
        watcher = _ThreadWatcher(daemon, root, close_on_destroy)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    attach_watcher(daemon, watcher)
    watcher.started()
    return TkHandle(watcher, strategy)


class TkHandle:
    """What ``attach`` returns: ``detach()`` it, or use it as a context manager."""

    def __init__(self, watcher: "_TkWatcher", strategy: str) -> None:
        self._watcher = watcher
        self.strategy = strategy

    @property
    def attached(self) -> bool:
        return self._watcher.attached

    def detach(self) -> None:
        """Stop serving: every file handler, timer and binding of this handle goes away."""
        if self._watcher.attached:
            self._watcher.daemon.detach_watcher()

    def __enter__(self) -> "TkHandle":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()


class _TkWatcher:
    """What both strategies share: the deadline timer and the end of the root."""

    def __init__(self, daemon: Any, root: tkinter.Tk, close_on_destroy: bool) -> None:
        self.daemon = daemon
        self.attached = True
        self._root = root
        self._close_on_destroy = close_on_destroy
        self._socks: dict[int, socket.socket] = {}
        self._events: dict[int, int] = {}
        # One Tcl command for the handle's life, armed with ``after`` as needed,
        # rather than a fresh command per deadline as root.after would create.
        self._deadline_cmd = root.register(self._deadline_due)
        self._after_id: str | None = None
        self._when: float | None = None
        self._destroy_cmd: str | None = None

    def started(self) -> None:
        self._destroy_cmd = self._root.bind("<Destroy>", self._root_destroyed, add="+")

    # -- the watcher interface, called by the daemon in the Tk thread --

    def add(self, sock: socket.socket, events: int) -> None:
        fd = sock.fileno()
        self._socks[fd] = sock
        self._events[fd] = events
        self._watch(fd, sock, events)

    def modify(self, sock: socket.socket, events: int) -> None:
        fd = sock.fileno()
        if self._socks.get(fd) is not sock:
            report_error(LookupError(f"modify() of an unwatched socket {sock!r}"), "tk adapter")
            return
        self._events[fd] = events
        self._watch(fd, sock, events)

    def remove(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._socks.get(fd) is not sock:
            # Already closed despite the contract: find it by identity so no handler leaks.
            fd = next((f for f, s in self._socks.items() if s is sock), -1)
            if fd < 0:
                return
        del self._socks[fd]
        del self._events[fd]
        self._unwatch(fd)

    def set_deadline(self, when: float | None) -> None:
        if when == self._when and (when is None or self._after_id is not None):
            return
        self._cancel_timer()
        self._when = when
        if when is not None and self.attached:
            delay = max(0, math.ceil((when - time.monotonic()) * 1000))
            self._after_id = self._root.tk.call("after", delay, self._deadline_cmd)

    def detached(self) -> None:
        if not self.attached:
            return
        self.attached = False
        for fd in list(self._socks):
            self._unwatch(fd)
        self._socks.clear()
        self._events.clear()
        self._cancel_timer()
        self._when = None
        self._stop()
        try:
            if self._destroy_cmd is not None:
                _unbind(self._root, "<Destroy>", self._destroy_cmd)
            self._root.deletecommand(self._deadline_cmd)
        except (tkinter.TclError, ValueError):
            pass  # the root is already gone, and its commands with it

    # -- strategy hooks --

    def _watch(self, fd: int, sock: socket.socket, events: int) -> None:
        raise NotImplementedError

    def _unwatch(self, fd: int) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        """Release what the strategy holds beyond its watched sockets."""

    # -- serving, in the Tk thread --

    def _serve(self, fd: int, sock: socket.socket, ready: int) -> None:
        """Hand one readiness report to the daemon unless it is stale."""
        if self._socks.get(fd) is not sock:
            return  # a report for a socket removed meanwhile (its fd may be reused)
        events = ready & self._events[fd]
        if not events:
            return
        try:
            self.daemon.handle_event(sock, events)
        except Exception as exc:  # the daemon promises not to raise; Tk must never see it
            report_error(exc, "tk adapter: handle_event")

    def _deadline_due(self) -> None:
        self._after_id = None
        self._when = None
        if not self.attached:
            return
        try:
            self.daemon.handle_deadline()
        except Exception as exc:
            report_error(exc, "tk adapter: handle_deadline")

    def _cancel_timer(self) -> None:
        if self._after_id is not None:
            after_id, self._after_id = self._after_id, None
            try:
                self._root.tk.call("after", "cancel", after_id)
            except tkinter.TclError as exc:
                report_error(exc, "tk adapter: cancelling the deadline timer")

    def _root_destroyed(self, event: tkinter.Event) -> None:
        if event.widget is not self._root or not self.attached:
            return  # <Destroy> on the root also fires for each of its children
        try:
            if self._close_on_destroy:
                self.daemon.close()
            else:
                self.daemon.detach_watcher()
        except Exception as exc:
            report_error(exc, "tk adapter: root destroyed")


def _unbind(widget: tkinter.Misc, sequence: str, funcid: str) -> None:
    """Remove one binding made with add="+", leaving the program's own bindings alone.

    (``Misc.unbind(sequence, funcid)`` before Python 3.13 drops every binding
    of the sequence.)
    """
    script = widget.tk.call("bind", widget._w, sequence)
    kept = "\n".join(line for line in str(script).split("\n") if funcid not in line)
    widget.tk.call("bind", widget._w, sequence, kept)
    widget.deletecommand(funcid)


class _FileHandlerWatcher(_TkWatcher):
    """Tcl's notifier watches each socket: one file handler per descriptor."""

    def _watch(self, fd: int, sock: socket.socket, events: int) -> None:
        # Tk keeps one handler per descriptor; deleting first also frees the
        # old callback, which a bare re-create would leave behind in tkinter.
        self._root.tk.deletefilehandler(fd)
        mask = sum(tk_bit for bit, tk_bit in _TK_MASKS if events & bit)
        if mask:
            self._root.tk.createfilehandler(fd, mask, self._callback(fd, sock))

    def _unwatch(self, fd: int) -> None:
        self._root.tk.deletefilehandler(fd)

    def _callback(self, fd: int, sock: socket.socket) -> Callable[[int, int], None]:
        # Bound to this socket object, so a handler that fires after its socket
        # was replaced by another on the same descriptor number does nothing.
        def ready(_file: int, tk_mask: int) -> None:
            self._serve(fd, sock, sum(bit for bit, tk_bit in _TK_MASKS if tk_mask & tk_bit))
        return ready


class _ThreadWatcher(_TkWatcher):
    """A helper thread watches the sockets and wakes the Tk thread per batch."""

    def __init__(self, daemon: Any, root: tkinter.Tk, close_on_destroy: bool) -> None:
        super().__init__(daemon, root, close_on_destroy)
        self._virtual = f"<<PyroLoopsReady{next(_handle_numbers)}>>"
        # ``event generate`` silently drops events for a window that Tk has
        # not created yet (a fresh or withdrawn root); asking for its id creates it.
        root.winfo_id()
        # A plain command rather than root.bind(): no event fields to substitute.
        self._wake_cmd = root.register(self._on_wake)
        root.tk.call("bind", root._w, self._virtual, "+" + self._wake_cmd)
        self._selector = _SelectorThread(weakref.WeakMethod(self._wake_tk))
        _forget_retired()

    def started(self) -> None:
        super().started()
        self._selector.start()

    def _watch(self, fd: int, sock: socket.socket, events: int) -> None:
        self._selector.watch(fd, sock, events)

    def _unwatch(self, fd: int) -> None:
        self._selector.watch(fd, None, 0)

    def _stop(self) -> None:
        if not self._selector.stop():
            _retired.append(self)
        _forget_retired()
        try:
            _unbind(self._root, self._virtual, self._wake_cmd)
        except tkinter.TclError:
            pass  # the root is already gone

    def _wake_tk(self) -> None:
        """Called in the helper thread; tkinter marshals this into the Tk thread."""
        self._root.event_generate(self._virtual, when="tail")

    def _on_wake(self) -> None:
        # Take one socket at a time: if serving it opens a nested loop, the
        # rest are taken (and served) by the wakeups that loop delivers.
        while self.attached and (item := self._selector.take()) is not None:
            fd, sock, ready = item
            try:
                self._serve(fd, sock, ready)
            finally:
                self._selector.resume(fd)


# Thread-strategy watchers whose helper thread was still waking Tk when they
# were detached (stop() cannot wait for it: it waits for the Tk thread). A Tcl
# interpreter must be deleted in its own thread (else Tcl aborts the process),
# so the helper holds its watcher -- and through it the root -- only weakly,
# and strongly just while it wakes Tk; parking such watchers here until their
# helper has ended (checked at the next attach or detach) means the helper
# never drops the last reference to a root.
_retired: list[_ThreadWatcher] = []


def _forget_retired() -> None:
    _retired[:] = [w for w in _retired if w._selector.thread.is_alive()]


class _SelectorThread:
    """Watches sockets with a selector in a daemon thread for the Tk thread.

    A ready socket is taken out of the selector until the Tk thread has served
    it and calls ``resume``: sockets are level-triggered, so watching it on
    would report the same bytes again and again while they wait to be read.
    The Tk side tells the thread about changes through a socketpair; the thread
    tells the Tk side through ``notify`` (at most one wakeup in flight).
    """

    RETRY_AFTER_FAILED_WAKEUP = 1.0
    JOIN_TIMEOUT = 1.0  # only a hung error hook could hold the thread this long

    def __init__(self, notify: "weakref.WeakMethod[Callable[[], None]]") -> None:
        self._notify = notify
        self._lock = threading.Lock()
        self._wanted: dict[int, tuple[socket.socket, int]] = {}
        self._dirty: set[int] = set()
        self._ready: dict[int, tuple[socket.socket, int]] = {}
        self._held: set[int] = set()  # reported and not yet resumed
        self._wakeup_pending = False
        self._waking_tk = False  # inside notify(), which waits for the Tk thread
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="pyro_loops-tk-selector", daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    # -- called from the Tk thread --

    def watch(self, fd: int, sock: socket.socket | None, events: int) -> None:
        with self._lock:
            if sock is None:
                self._wanted.pop(fd, None)
                self._ready.pop(fd, None)
                self._held.discard(fd)
            else:
                self._wanted[fd] = (sock, events)
            self._dirty.add(fd)
            self._poke()

    def take(self) -> tuple[int, socket.socket, int] | None:
        with self._lock:
            self._wakeup_pending = False  # anything reported from now on needs a new wakeup
            if not self._ready:
                return None
            fd, (sock, ready) = self._ready.popitem()
            return fd, sock, ready

    def resume(self, fd: int) -> None:
        with self._lock:
            self._held.discard(fd)
            if fd in self._wanted:
                self._dirty.add(fd)
                self._poke()

    def stop(self) -> bool:
        """End the thread; True once it has ended, False if it is still waking Tk
        (it ends by itself as soon as the Tk thread has taken that wakeup)."""
        with self._lock:
            self._stopping = True
            if self._thread.ident is None:  # never started: nobody else will close the pair
                self._wake_r.close()
                self._wake_w.close()
                return True
            self._poke()
            waking_tk = self._waking_tk
        if not waking_tk:
            self._thread.join(self.JOIN_TIMEOUT)
        return not self._thread.is_alive()

    def _poke(self) -> None:
        if self._wake_w.fileno() < 0:
            return  # the thread has ended and closed the pair
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # a wakeup byte is already waiting, one is enough

    # -- the thread --

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r.fileno(), READ)
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    changes = [(fd, None if fd in self._held else self._wanted.get(fd)) for fd in self._dirty]
                    self._dirty.clear()
                    must_notify = bool(self._ready) and not self._wakeup_pending
                    self._wakeup_pending |= must_notify
                for fd, wanted in changes:
                    _apply(selector, fd, wanted)
                timeout = None
                if must_notify and not self._deliver():
                    timeout = self.RETRY_AFTER_FAILED_WAKEUP
                try:
                    events = selector.select(timeout)
                except OSError:
                    # A socket closed under select() (only where select() does
                    # not forget closed sockets, as on Windows): its remove()
                    # marked it dirty before the close, so the next pass drops it.
                    with self._lock:
                        if not self._dirty:
                            raise
                    continue
                ready = {}
                for key, mask in events:
                    if key.data is None:
                        _drain(self._wake_r)
                    else:
                        selector.unregister(key.fd)
                        ready[key.fd] = (key.data, mask)
                with self._lock:
                    for fd, (sock, mask) in ready.items():
                        if self._wanted.get(fd, (None, 0))[0] is sock:
                            self._held.add(fd)
                            self._ready[fd] = (sock, mask)
        except Exception as exc:
            report_error(exc, "tk adapter: selector thread")
        finally:
            with self._lock:
                self._stopping = True
                selector.close()
                self._wake_r.close()
                self._wake_w.close()

    def _deliver(self) -> bool:
        """Wake the Tk thread; False (after reporting) if tkinter refused."""
        with self._lock:
            if self._stopping:
                return True
            self._waking_tk = True
        try:
            notify = self._notify()
            if notify is not None:  # None: the watcher is gone, and stop() with it
                notify()
            return True
        except (RuntimeError, tkinter.TclError) as exc:
            with self._lock:
                self._wakeup_pending = False
                stopping = self._stopping
            if not stopping:
                report_error(exc, "tk adapter: waking the Tk thread")
            return False
        finally:
            with self._lock:
                self._waking_tk = False


def _apply(selector: selectors.BaseSelector, fd: int, wanted: tuple[socket.socket, int] | None) -> None:
    """Make the selector's registration of ``fd`` match what the Tk side wants."""
    key = selector.get_map().get(fd)
    sock, events = wanted if wanted is not None else (None, 0)
    if key is not None and (key.data is not sock or not events):
        selector.unregister(fd)
        key = None
    if not events:
        return
    try:
        if key is None:
            selector.register(fd, events, sock)
        elif key.events != events:
            selector.modify(fd, events, sock)
    except OSError:
        # The Tk thread removed and closed the socket after this change was
        # read; the removal queued another change, which the next pass applies.
        pass


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        pass
