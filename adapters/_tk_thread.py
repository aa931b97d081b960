"""The Tk adapter's "thread" strategy: a helper thread watches the sockets.

For Tk builds without ``createfilehandler`` (Tk on Windows). A helper thread
runs a ``selectors`` selector on the daemon's sockets. When one is ready the
helper stops watching it and posts a virtual event with
``root.event_generate(..., when="tail")``: tkinter hands a Tk call made in
another thread over to the Tk thread, and "tail" only queues the event there.
The Tk thread serves the socket, then gives it back to the helper. The
trade-offs (latency, the ``mainloop()`` limit) are in ``adapters.tk``'s
docstring.

The strategy offers what ``adapters.tk.TkHandle`` asks of one: ``watch``,
``unwatch``, ``start`` and ``stop``; readiness goes to the handle's ``serve``.
"""

from __future__ import annotations

import itertools
import selectors
import socket
import threading
import tkinter
import weakref
from typing import Callable

from pyro_loops.hosting import READ, report_error, reported
from pyro_loops._wakeup import Wakeup

_handle_numbers = itertools.count(1)  # gives each strategy its own virtual event

Serve = Callable[[int, socket.socket, int], None]


def unbind(widget: tkinter.Misc, sequence: str, funcid: str) -> None:
    """Remove one binding made with add="+", leaving the program's own bindings alone.

    (``Misc.unbind(sequence, funcid)`` before Python 3.13 drops every binding
    of the sequence.)
    """
    script = widget.tk.call("bind", str(widget), sequence)
    kept = "\n".join(line for line in str(script).split("\n") if funcid not in line)
    widget.tk.call("bind", str(widget), sequence, kept)
    widget.deletecommand(funcid)


class ThreadStrategy:
    """A helper thread watches the sockets and wakes the Tk thread per batch."""

    def __init__(self, root: tkinter.Misc, serve: Serve, nested: bool = False) -> None:
        self._root = root
        #: the hosted object takes sockets reported from a nested loop (``_common.nests``):
        #: a socket is given back to the helper before it is served, not after
        self._nested = nested
        self._serve: Serve | None = serve  # dropped at stop(): no cycle may keep the root alive
        self._virtual = f"<<PyroLoopsReady{next(_handle_numbers)}>>"
        # ``event generate`` silently drops events for a window that Tk has
        # not created yet (a fresh or withdrawn root); asking for its id creates it.
        root.winfo_id()
        # A plain command rather than root.bind(): no event fields to substitute.
        self._wake_cmd = root.register(self._on_wake)
        root.tk.call("bind", str(root), self._virtual, "+" + self._wake_cmd)
        self.selector = _SelectorThread(weakref.WeakMethod(self._wake_tk))
        _forget_retired()

    def start(self) -> None:
        self.selector.start()

    def watch(self, fd: int, sock: socket.socket, events: int) -> None:
        self.selector.watch(fd, sock, events)

    def unwatch(self, fd: int) -> None:
        self.selector.watch(fd, None, 0)

    def stop(self) -> None:
        self._serve = None
        if not self.selector.stop():
            _retired.append(self)
        _forget_retired()
        try:
            unbind(self._root, self._virtual, self._wake_cmd)
        except tkinter.TclError:
            pass  # the root is already gone

    def _wake_tk(self) -> None:
        """Called in the helper thread; tkinter marshals this into the Tk thread."""
        self._root.event_generate(self._virtual, when="tail")

    def _on_wake(self) -> None:
        # Take one socket at a time: if serving it opens a nested loop, the
        # rest are taken (and served) by the wakeups that loop delivers.
        while self._serve is not None and (item := self.selector.take()) is not None:
            fd, sock, ready = item
            if self._nested:  # a client's callback may open a dialog that waits for this socket's next reply
                self.selector.resume(fd)
                self._serve(fd, sock, ready)
                continue
            try:
                self._serve(fd, sock, ready)
            finally:
                self.selector.resume(fd)


# Strategies whose helper thread was still waking Tk when they were stopped
# (stop() cannot wait for it: it waits for the Tk thread). A Tcl interpreter
# must be deleted in its own thread (else Tcl aborts the process), so the
# helper holds its strategy -- and through it the root -- only weakly, and
# strongly just while it wakes Tk; parking such strategies here until their
# helper has ended (checked at the next start or stop) means the helper never
# drops the last reference to a root.
_retired: list[ThreadStrategy] = []


def _forget_retired() -> None:
    _retired[:] = [s for s in _retired if s.selector.thread.is_alive()]


class _SelectorThread:
    """Watches sockets with a selector in a daemon thread for the Tk thread.

    A ready socket is taken out of the selector until the Tk thread has served
    it and calls ``resume``: sockets are level-triggered, so watching it on
    would report the same bytes again and again while they wait to be read.
    The Tk side tells the thread about changes through a wakeup socket; the
    thread tells the Tk side through ``notify`` (at most one wakeup in flight).
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
        self._wakeup = Wakeup()
        self._thread = threading.Thread(target=self._run, name="pyro_loops-tk-selector", daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def watched(self) -> set[socket.socket]:
        """The sockets the Tk side asked the thread to watch."""
        with self._lock:
            return {sock for sock, _ in self._wanted.values()}

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
            self._wakeup.wake()

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
                self._wakeup.wake()

    def stop(self) -> bool:
        """End the thread; True once it has ended, False if it is still waking Tk
        (it ends by itself as soon as the Tk thread has taken that wakeup)."""
        with self._lock:
            self._stopping = True
            if self._thread.ident is None:  # never started: nobody else will close the pair
                self._wakeup.close()
                return True
            self._wakeup.wake()
            waking_tk = self._waking_tk
        if not waking_tk:
            self._thread.join(self.JOIN_TIMEOUT)
        return not self._thread.is_alive()

    # -- the thread --

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._wakeup.reader.fileno(), READ)
        try:
            with reported("tk adapter: selector thread"):
                self._serve_forever(selector)
        finally:
            with self._lock:
                self._stopping = True
                selector.close()
                self._wakeup.close()

    def _serve_forever(self, selector: selectors.BaseSelector) -> None:
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
            ready: dict[int, tuple[socket.socket, int]] = {}
            for key, mask in events:
                if key.data is None:
                    self._wakeup.drain()
                else:
                    selector.unregister(key.fd)
                    ready[key.fd] = (key.data, mask)
            with self._lock:
                for fd, (sock, mask) in ready.items():
                    if self._wanted.get(fd, (None, 0))[0] is sock:
                        self._held.add(fd)
                        self._ready[fd] = (sock, mask)

    def _deliver(self) -> bool:
        """Wake the Tk thread; False (after reporting) if tkinter refused."""
        with self._lock:
            if self._stopping:
                return True
            self._waking_tk = True
        try:
            notify = self._notify()
            if notify is not None:  # None: the strategy is gone, and stop() with it
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
    sock: socket.socket | None
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
