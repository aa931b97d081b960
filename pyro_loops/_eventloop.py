"""A small selectors-based event loop that can host daemons.

``Daemon.requestLoop`` runs on it, and programs that own their main loop use
it through ``pyro_loops.adapters.selectloop``: attach any number of daemons
(or other objects with the hosting interface, such as the name server's
broadcast responder), add the program's own sockets and timers, then ``run()``
or pump it with ``poll(0)`` once per frame. It sleeps in ``select()`` until a
socket is ready or the nearest timer is due, so an idle loop does not wake up.

Where the system has epoll, the loop waits on it directly (``_Epoll``): the
``selectors`` layers cost more per event than the daemon's whole common call.
Elsewhere it uses the ``selectors`` default.
"""

from __future__ import annotations

import heapq
import itertools
import math
import select
import selectors
import socket
import threading
import time
from typing import Any, Callable

from .hosting import READ, WRITE, report_error, reported, thread_name, wrong_thread
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


_EPOLLIN = getattr(select, "EPOLLIN", 1)
_EPOLLOUT = getattr(select, "EPOLLOUT", 4)


def _fileno(fileobj: Any) -> int:
    """The descriptor of a socket (or anything with ``fileno()``, or a descriptor); ValueError if closed."""
    fd = fileobj if isinstance(fileobj, int) else int(fileobj.fileno())
    if fd < 0:
        raise ValueError(f"invalid file descriptor: {fd}")
    return fd


class _Epoll:
    """What SelectLoop needs of a ``selectors`` selector (``register``, ``modify``,
    ``unregister``, ``get_map``, ``close``), over ``select.epoll``.

    Instead of ``select()``, the loop calls ``epoll.poll`` itself and looks the
    descriptors up in ``keys``: the selector's per-event objects and lookups
    are left out. ``fresh`` holds the descriptors registered since the loop
    last cleared it: an event the kernel reported for such a descriptor
    belonged to the socket that had it before (closed and replaced during
    the same pass), so the loop skips it.
    """

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.keys: dict[int, selectors.SelectorKey] = {}
        self.fresh: set[int] = set()

    def _fd(self, fileobj: Any) -> int:
        try:
            return _fileno(fileobj)
        except ValueError:  # closed already: found by identity, as selectors does
            for key in self.keys.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise KeyError(f"{fileobj!r} is not registered") from None

    @staticmethod
    def _mask(events: int) -> int:
        return (_EPOLLIN if events & READ else 0) | (_EPOLLOUT if events & WRITE else 0)

    def register(self, fileobj: Any, events: int, data: Any) -> selectors.SelectorKey:
        fd = _fileno(fileobj)
        if fd in self.keys:
            raise KeyError(f"{fileobj!r} (descriptor {fd}) is already registered")
        self.epoll.register(fd, self._mask(events))
        key = self.keys[fd] = selectors.SelectorKey(fileobj, fd, events, data)
        self.fresh.add(fd)
        return key

    def modify(self, fileobj: Any, events: int, data: Any) -> selectors.SelectorKey:
        fd = self._fd(fileobj)
        key = self.keys[fd]
        if events != key.events:
            self.epoll.modify(fd, self._mask(events))
        key = self.keys[fd] = key._replace(fileobj=fileobj, events=events, data=data)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._fd(fileobj)
        key = self.keys.pop(fd)
        try:
            self.epoll.unregister(fd)
        except OSError:  # closed meanwhile: the kernel forgot it already
            pass
        return key

    def get_map(self) -> dict[int, selectors.SelectorKey]:
        return self.keys

    def close(self) -> None:
        self.epoll.close()
        self.keys.clear()


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
        self.loop._register(sock, events, self.daemon.handle_event)

    def modify(self, sock: socket.socket, events: int) -> None:
        if events:
            self.loop._register(sock, events, self.daemon.handle_event)
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

    # --- callbacks (readiness goes to the daemon's handle_event directly) ---
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
        self._selector: Any = _Epoll() if hasattr(select, "epoll") else selectors.DefaultSelector()
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
        self._thread = threading.get_ident()
        self._poll(timeout)

    def _poll(self, timeout: float | None) -> None:
        """``poll`` in the loop's thread, known already (``run`` passes after pass)."""
        timers = self._timers
        if timers:
            while timers and timers[0][2].cancelled:
                heapq.heappop(timers)
            if timers:
                due_in = max(0.0, timers[0][0] - time.monotonic())
                timeout = due_in if timeout is None else min(timeout, due_in)
        selector = self._selector
        if type(selector) is not _Epoll:
            self._run_selector(selector, timeout)
        else:  # inline: this runs for every event
            if timeout is None:
                timeout = -1
            elif timeout > 0:
                timeout = math.ceil(timeout * 1e3) * 1e-3  # not a little early: the timer would not be due yet
            else:
                timeout = 0
            fresh = selector.fresh
            if fresh:
                fresh.clear()
            keys = selector.keys
            for fd, mask in selector.epoll.poll(timeout):
                key = keys.get(fd)
                if key is None or fresh and fd in fresh:  # an earlier callback of this pass removed or replaced it
                    continue
                # as selectors reads a mask: errors and hangups wake readers and writers alike
                events = (READ if mask == _EPOLLIN else (WRITE if mask & ~_EPOLLIN else 0)
                          | (READ if mask & ~_EPOLLOUT else 0)) & key.events
                if events:
                    try:  # as ``with _CALLBACK_ERRORS``, without its two calls per event
                        key.data(key.fileobj, events)
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except BaseException as exc:
                        report_error(exc, _CALLBACK_ERRORS.where)
        if not timers:
            return
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            with _TIMER_ERRORS:
                timer.callback()

    @staticmethod
    def _run_selector(selector: selectors.BaseSelector, timeout: float | None) -> None:
        """Wait for and run ready callbacks, through a ``selectors`` selector."""
        ready = selector.select(timeout)
        registered = selector.get_map()
        for key, events in ready:
            # an earlier callback of this pass may have removed (and closed) this one
            current = registered.get(key.fd)
            if current is None or current.fileobj is not key.fileobj or not events & current.events:
                continue
            with _CALLBACK_ERRORS:
                current.data(current.fileobj, events & current.events)

    def run(self, until: Callable[[], bool] | None = None, max_wait: float | None = None) -> None:
        """Run until ``stop()`` is called or ``until()`` returns true.

        ``max_wait`` bounds each sleep, for ``until`` conditions that change
        without any socket or timer activity; leave it None otherwise.
        """
        self._stopping = False
        self._thread = threading.get_ident()
        poll = self._poll
        if until is None:
            while not self._stopping:
                poll(max_wait)
        else:
            while not self._stopping and not until():
                poll(max_wait)

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
