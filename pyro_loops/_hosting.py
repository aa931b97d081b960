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

A watcher may also say which thread runs its loop with a ``loop_thread``
attribute (a ``threading.get_ident()`` value, or None while no thread runs the
loop yet: the daemon then learns it from the first event it handles); without
it, the thread that attaches is taken for the loop's. The daemon needs it to
refuse, rather than hang in, a call the loop's thread makes to itself.

The host reports readiness with ``daemon.handle_event(sock, events)`` and due
deadlines with ``daemon.handle_deadline()``. Both return normally whatever
happens inside; errors in the machinery go to the one hook set with
``set_error_hook`` (default: logged with traceback), never into the toolkit:
``reported`` is the one guard that does this. All calls happen in the host
loop's thread; attaching or detaching from any other thread is refused with
``wrong_thread``'s error.
"""

from __future__ import annotations

import functools
import logging
import selectors
import socket
import threading
from typing import Any, Callable, Protocol, TypeVar

log = logging.getLogger("pyro_loops")
_F = TypeVar("_F", bound=Callable[..., Any])

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


class reported:  # noqa: N801 - reads as a statement: ``with reported("where"):``
    """Report what the guarded code raises to the error hook instead of raising it.

    For code that runs on behalf of a host loop (its callbacks, the daemon's
    hooks into user code): an exception that escapes there ends the loop or,
    with PyQt5, the process. ``with reported("select loop timer"): ...`` or, on
    a callback, ``@reported("asyncio adapter: deadline")`` (which then returns
    None). Every exception is reported, BaseException subclasses included,
    except those in ``let_through``: by default KeyboardInterrupt and
    SystemExit, which are the user ending the program. One instance may be
    reused and nested: it keeps no state.
    """

    __slots__ = ("where", "let_through")

    def __init__(self, where: str,
                 let_through: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit)) -> None:
        self.where = where
        self.let_through = let_through

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, self.let_through):
            return False
        report_error(exc, self.where)
        return True

    def __call__(self, callback: _F) -> _F:
        @functools.wraps(callback)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            with self:
                return callback(*args, **kwargs)
            return None

        return guarded  # type: ignore[return-value]


def wrong_thread(action: str, loop: str) -> RuntimeError:
    """The error with which every host refuses ``action`` from a thread that does not run its loop.

    ``loop`` says which loop and, where known, which thread runs it. The
    message names the calling thread and the way out.
    """
    here = threading.current_thread().name
    return RuntimeError(
        f"{action} called in thread {here!r}, but {loop}: call {action} in the loop's own thread "
        "(from any thread, daemon.close() stops serving: the loop carries it out)")


def thread_name(ident: int) -> str:
    """The name of the live thread ``ident``, for messages."""
    for thread in threading.enumerate():
        if thread.ident == ident:
            return repr(thread.name)
    return f"#{ident}"
