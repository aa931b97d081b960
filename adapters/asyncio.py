"""Serve a daemon from an asyncio event loop with ``add_reader``/``add_writer``.

``handle = attach(daemon)`` inside a running loop (or ``attach(daemon, loop)``)
and the daemon is served by that loop: each socket is registered as a reader
(and as a writer while a reply waits to be sent), and one ``call_at`` handle
exists only while the daemon has a deadline, so an idle daemon costs nothing.

Published ``async def`` methods are awaited on the loop as tasks; while one
awaits, calls on other connections go on (the connection that made the call
waits for its reply, which keeps per-connection order).

The loop must support ``add_reader``: on Windows the default
``ProactorEventLoop`` does not, and ``attach`` says so; use a
``SelectorEventLoop`` there (``asyncio.run(main(), loop_factory=asyncio.SelectorEventLoop)``
from Python 3.12, or ``asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())``).

Call ``attach`` and ``detach`` in the loop's thread (before the loop runs,
any thread may attach: the loop's thread is the one that runs it); other
threads are refused. asyncio has no hook for "the loop
stopped", so end serving yourself: leave the ``with attach(...)`` block or
close the daemon before the loop closes.

Errors raised inside the machinery are sent to ``pyro_loops.set_error_hook``
rather than to the loop's exception handler; KeyboardInterrupt and SystemExit
go on to the loop, which ends with them as it does for its own callbacks.
"""

from __future__ import annotations

import asyncio as _asyncio
import functools
import socket
import threading
import time
from typing import Any, Callable

from pyro_loops.hosting import READ, WRITE, reported

from ._common import WatcherHandle, attach_watcher, require_type


class AsyncioHandle(WatcherHandle):
    """A daemon attached to an asyncio loop; the daemon's watcher.

    ``detach()`` (or leaving the ``with`` block) stops serving and removes
    every reader, writer and timer handle; the daemon stays open.
    ``daemon.close()`` while attached detaches first.
    """

    def __init__(self, daemon: Any, loop: _asyncio.AbstractEventLoop) -> None:
        self.daemon = daemon
        self.loop = loop
        self._require_loop_thread("attach()")
        # For the daemon: the thread that runs the loop, unknown (None) until one does.
        self.loop_thread = threading.get_ident() if loop.is_running() else None
        self._socks: dict[int, tuple[socket.socket, int]] = {}  # fd -> (socket, events registered)
        self._when: float | None = None
        self._timer: _asyncio.TimerHandle | None = None
        self._tasks: set[_asyncio.Task] = set()  # the loop keeps only weak references to tasks
        self._attached = True
        attach_watcher(daemon, self)
        daemon.coroutine_runner = self._run_coroutine

    def _in_loop_thread(self) -> bool:
        """True in the thread running the loop, and anywhere while no thread runs it."""
        if not self.loop.is_running():
            return True
        try:
            return _asyncio.get_running_loop() is self.loop
        except RuntimeError:  # no loop runs in this thread
            return False

    def _loop_name(self) -> str:
        return f"the asyncio loop {self.loop!r} runs in another thread"

    # -- the rest of the watcher interface (called by the daemon, in the loop's thread) --

    def set_deadline(self, when: float | None) -> None:
        self._when = when
        self._arm()

    def detached(self) -> None:
        for sock, _ in list(self._socks.values()):
            self._set_interest(sock, 0)
        self._when = None
        self._arm()
        if getattr(self.daemon, "coroutine_runner", None) == self._run_coroutine:
            self.daemon.coroutine_runner = None
        self._attached = False

    # -- readers and writers --

    def _set_interest(self, sock: socket.socket, events: int) -> None:
        fd = sock.fileno()
        known, had = self._socks.get(fd, (sock, 0))
        if known is not sock:  # the fd now belongs to another socket: drop what was registered for the old one
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
            had = 0
        if events & READ and not had & READ:
            self.loop.add_reader(fd, self._on_ready, fd, sock, READ)
        elif had & READ and not events & READ:
            self.loop.remove_reader(fd)
        if events & WRITE and not had & WRITE:
            self.loop.add_writer(fd, self._on_ready, fd, sock, WRITE)
        elif had & WRITE and not events & WRITE:
            self.loop.remove_writer(fd)
        if events:
            self._socks[fd] = (sock, events)
        else:
            self._socks.pop(fd, None)

    @reported("asyncio adapter: socket ready")
    def _on_ready(self, fd: int, sock: socket.socket, direction: int) -> None:
        known, events = self._socks.get(fd, (None, 0))
        if known is sock and events & direction:  # else a callback that outlived its registration
            self.daemon.handle_event(sock, direction)

    # -- deadline --

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._when is not None:
            # Deadlines are time.monotonic() values; the loop has its own clock.
            self._timer = self.loop.call_at(self.loop.time() + (self._when - time.monotonic()), self._on_timer)

    @reported("asyncio adapter: deadline")
    def _on_timer(self) -> None:
        self._timer = None
        if self._when is None:
            return
        if time.monotonic() < self._when:  # the loop runs timers up to one clock tick early
            self._arm()
            return
        self._when = None
        self.daemon.handle_deadline()

    # -- async def methods --

    def _run_coroutine(self, coro: Any, done: Callable[[Any, BaseException | None], None]) -> None:
        """The daemon's hook for a published ``async def``: run it as a task, reply when it ends.

        Tasks still running at ``detach()`` are left to finish: their replies
        wait in the daemon until a loop serves it again (or are dropped if
        the daemon or the connection closed meanwhile).
        """
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._coroutine_done, done))

    @reported("asyncio adapter: coroutine reply")
    def _coroutine_done(self, done: Callable[[Any, BaseException | None], None], task: _asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            done(None, _asyncio.CancelledError("the task running this call was cancelled"))
        elif task.exception() is not None:
            done(None, task.exception())
        else:
            done(task.result(), None)


def _check_loop(loop: _asyncio.AbstractEventLoop) -> None:
    if type(loop).add_reader is _asyncio.AbstractEventLoop.add_reader:
        raise RuntimeError(
            f"{type(loop).__name__} cannot watch sockets (no add_reader; on Windows this is the default "
            "ProactorEventLoop): run the daemon on a SelectorEventLoop, e.g. "
            "asyncio.run(main(), loop_factory=asyncio.SelectorEventLoop) or "
            "asyncio.set_event_loop_policy(asyncio.WindowsSelectorEventLoopPolicy())"
        )


def attach(daemon: Any, loop: _asyncio.AbstractEventLoop | None = None) -> AsyncioHandle:
    """Serve ``daemon`` from ``loop`` (default: the running loop).

    Call it in the loop's thread (or before any thread runs the loop). The loop must be able to watch sockets
    (``add_reader``); a Windows ProactorEventLoop cannot, and is refused with
    a message naming the fix.
    """
    if loop is None:
        try:
            loop = _asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("no running event loop: call attach() from a coroutine, or pass loop=") from None
    require_type(loop, _asyncio.AbstractEventLoop, "an asyncio event loop as its second argument")
    _check_loop(loop)
    return AsyncioHandle(daemon, loop)
