"""A small selectors-based event loop that can host daemons.

``Daemon.requestLoop`` runs on it, and programs that own their main loop use
it through ``pyro_loops.adapters.selectloop``: attach any number of daemons
(or other objects with the hosting interface, such as the name server's
broadcast responder), add the program's own sockets and timers, then ``run()``
or pump it with ``poll(0)`` once per frame. It sleeps in ``select()`` until a
socket is ready or the nearest timer is due, so an idle loop does not wake up.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import socket
import threading
import time
from typing import Any, Callable

from .hosting import READ, WRITE, reported, thread_name, wrong_thread
from ._wakeup import Wakeup

_CALLBACK_ERRORS = reported("select loop callback")
_TIMER_ERRORS = reported("select loop timer")


class Timer:
    """A pending ``call_later``; ``cancel()`` it to drop it."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], Any]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Hosted:
    """The watcher a SelectLoop gives each attached daemon."""

    def __init__(self, loop: "SelectLoop", daemon: Any) -> None:
        self.loop = loop
        self.daemon = daemon
        self.socks: set[socket.socket] = set()
        self.timer: Timer | None = None
        self.attached = True

    @property
    def loop_thread(self) -> int | None:
        """The thread that last ran the loop, None until one has (see ``pyro_loops.hosting``)."""
        return self.loop._thread

    # --- watcher interface ---
    def add(self, sock: socket.socket, events: int) -> None:
        self.socks.add(sock)
        self.loop._register(sock, events, self._on_ready)

    def modify(self, sock: socket.socket, events: int) -> None:
        if events:
            self.loop._register(sock, events, self._on_ready)
        else:  # selectors cannot watch for nothing; come back with the next modify
            self.loop._unregister(sock)

    def remove(self, sock: socket.socket) -> None:
        self.socks.discard(sock)
        self.loop._unregister(sock)

    def set_deadline(self, when: float | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if when is not None:
            self.timer = self.loop._call_at(when, self._on_deadline)

    def detached(self) -> None:
        self.set_deadline(None)
        for sock in list(self.socks):
            self.remove(sock)
        self.attached = False
        self.loop._hosted.discard(self)

    # --- callbacks ---
    def _on_ready(self, sock: socket.socket, events: int) -> None:
        self.daemon.handle_event(sock, events)

    def _on_deadline(self) -> None:
        self.timer = None
        self.daemon.handle_deadline()

    # --- handle API ---
    def detach(self) -> None:
        """Stop serving the daemon from this loop; from the loop's thread only."""
        if self.attached:
            self.loop._check_thread("detach()")
            self.daemon.detach_watcher()

    def __enter__(self) -> "_Hosted":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()


class SelectLoop:
    """One thread's loop over sockets and timers; see the module docstring."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        self._hosted: set[_Hosted] = set()
        self._stopping = False
        self._thread: int | None = None  # the thread that last ran poll(): the loop's thread
        self._wakeup = Wakeup()
        self._register(self._wakeup.reader, READ, lambda _sock, _events: self._wakeup.drain())

    # --- hosting daemons ---
    def attach(self, daemon: Any) -> _Hosted:
        """Serve ``daemon`` from this loop until the returned handle is detached.

        Attach in the thread that runs the loop, or in any thread before the
        loop first runs: the loop's thread is the one that runs it.
        """
        self._check_thread("attach()")
        hosted = _Hosted(self, daemon)
        daemon.attach_watcher(hosted)  # may refuse (already attached elsewhere): then keep nothing
        self._hosted.add(hosted)
        return hosted

    # --- the program's own sockets and timers ---
    def add_reader(self, sock: Any, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(sock)`` whenever ``sock`` is readable."""
        self._register(sock, READ, lambda s, _events: callback(s))

    def remove_reader(self, sock: Any) -> None:
        self._unregister(sock)

    def call_later(self, delay: float, callback: Callable[[], Any]) -> Timer:
        """Call ``callback()`` after ``delay`` seconds. From the loop's thread only:
        ``stop()`` is the one method other threads may call."""
        return self._call_at(time.monotonic() + delay, callback)

    def _call_at(self, when: float, callback: Callable[[], Any]) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._counter), timer))
        return timer

    # --- running ---
    def poll(self, timeout: float | None = 0) -> None:
        """One pass: wait at most ``timeout`` seconds (None: until something happens),
        then run the callbacks of ready sockets and due timers."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if self._timers:
            due_in = max(0.0, self._timers[0][0] - time.monotonic())
            timeout = due_in if timeout is None else min(timeout, due_in)
        self._thread = threading.get_ident()
        ready = self._selector.select(timeout)
        registered = self._selector.get_map()
        for key, events in ready:
            # an earlier callback of this pass may have removed (and closed) this one
            current = registered.get(key.fd)
            if current is None or current.fileobj is not key.fileobj or not events & current.events:
                continue
            with _CALLBACK_ERRORS:
                current.data(current.fileobj, events & current.events)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            with _TIMER_ERRORS:
                timer.callback()

    def run(self, until: Callable[[], bool] | None = None, max_wait: float | None = None) -> None:
        """Run until ``stop()`` is called or ``until()`` returns true.

        ``max_wait`` bounds each sleep, for ``until`` conditions that change
        without any socket or timer activity; leave it None otherwise.
        """
        self._stopping = False
        while not self._stopping and not (until is not None and until()):
            self.poll(max_wait)

    def stop(self) -> None:
        """Make ``run()`` return; safe to call from any thread."""
        self._stopping = True
        self._wakeup.wake()

    def close(self) -> None:
        """Detach every daemon and release the loop's own resources.

        Once the loop no longer runs, any thread may close it.
        """
        for hosted in list(self._hosted):
            hosted.daemon.detach_watcher()
        self._unregister(self._wakeup.reader)
        self._selector.close()
        self._wakeup.close()

    # --- internals ---
    def _register(self, sock: Any, events: int, callback: Callable[[Any, int], Any]) -> None:
        try:
            self._selector.modify(sock, events, callback)
        except KeyError:
            self._selector.register(sock, events, callback)

    def _unregister(self, sock: Any) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _check_thread(self, action: str) -> None:
        """Refuse ``action`` outside the loop's thread (any thread goes before the loop first ran)."""
        if self._thread is not None and self._thread != threading.get_ident():
            raise wrong_thread(action, f"the SelectLoop runs in thread {thread_name(self._thread)}")

    def __enter__(self) -> "SelectLoop":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["SelectLoop", "Timer", "READ", "WRITE"]
