"""The small interface between a daemon and whatever loop hosts it.

A daemon owns sockets (listening, connections, one wakeup socket for worker
threads) and some deadlines (half-received frames, idle connections, stream
lingering, "more work queued"). A host loop -- Qt, Tk, asyncio, a selectors
loop, or the daemon's own ``requestLoop`` -- attaches a *watcher* and from then
on is told, selectors-style:

- ``add(sock, events)``: a new socket to watch (READ, and WRITE while output waits);
- ``modify(sock, events)``: the interest of a watched socket changed;
- ``remove(sock)``: stop watching; always called *before* the socket is closed;
- ``set_deadline(when)``: call ``daemon.handle_deadline()`` at ``time.monotonic() >= when``
  (``None``: no deadline; idle daemons have none, so hosts need no timer);
- ``detached()``: the daemon closed or dropped the watcher; forget it.

The host reports readiness with ``daemon.handle_event(sock, events)`` and due
deadlines with ``daemon.handle_deadline()``. Both return normally whatever
happens inside; errors in the machinery go to the one hook set with
``set_error_hook`` (default: logged with traceback), never into the toolkit.
All calls happen in the host loop's thread.
"""

from __future__ import annotations

import logging
import selectors
import socket
from typing import Callable, Protocol

log = logging.getLogger("pyro_loops")

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class Watcher(Protocol):
    def add(self, sock: socket.socket, events: int) -> None: ...

    def modify(self, sock: socket.socket, events: int) -> None: ...

    def remove(self, sock: socket.socket) -> None: ...

    def set_deadline(self, when: float | None) -> None: ...

    def detached(self) -> None: ...


def _log_error(exc: BaseException, where: str) -> None:
    log.error("internal error in %s", where, exc_info=(type(exc), exc, exc.__traceback__))


_error_hook: Callable[[BaseException, str], None] = _log_error


def set_error_hook(hook: Callable[[BaseException, str], None] | None) -> None:
    """Route errors raised inside the daemon or an adapter to ``hook(exc, where)``.

    ``None`` restores the default, which logs them on the ``pyro_loops`` logger.
    Errors raised by published methods are not reported here: they go back to
    the caller as remote exceptions.
    """
    global _error_hook
    _error_hook = hook or _log_error


def report_error(exc: BaseException, where: str) -> None:
    """Hand an internal error to the hook; a failing hook is logged, not raised."""
    try:
        _error_hook(exc, where)
    except Exception:  # the hook itself must never take the loop down
        log.exception("error hook failed while reporting an error in %s", where)
