"""The contract between a host loop and what it hosts (daemons, clients).

pyro_loops never runs a loop of its own inside your program: a daemon or a
client owns some sockets and some deadlines, and whatever loop the program
already runs -- Qt, Tk, asyncio, a selectors loop, ``Daemon.requestLoop`` --
watches them on its behalf. The two sides of that arrangement are the two
protocols below, in the manner of ``selectors.BaseSelector``: the hosted
object says *what* to watch, the host says *when* something happened.

- A **host** implements ``Watcher`` and hands one to each object it hosts with
  ``hosted.attach_watcher(watcher)``. From then on the hosted object tells the
  watcher which sockets to watch, for what, and when it next needs time.
- A **hosted object** (``Daemon``, the loop ``Client``, the name server's
  broadcast responder) implements ``Hosted``: the host reports readiness with
  ``handle_event`` and due deadlines with ``handle_deadline``.

Rules for both sides:

- Every call, in both directions, happens in the host loop's thread. Threads
  inside the hosted object (workers) never call the watcher; they wake the
  loop through a socket of their own that the watcher watches like any other.
- Nothing raised inside a hosted object reaches the host: ``handle_event`` and
  ``handle_deadline`` return normally and hand internal errors to the hook set
  with ``set_error_hook`` (default: logged with its traceback).
- Idle means silent: an object with nothing pending has no deadline, so a
  host needs no timer and never wakes up for it.
- ``READ`` and ``WRITE`` are ``selectors.EVENT_READ`` and ``EVENT_WRITE``;
  ``events`` arguments are bit sets of them.
- Attaching or detaching from a thread that does not run the loop is refused
  with ``wrong_thread``'s error, the same for every host.
- ``reported`` is the one guard for code that runs on the loop's behalf: what
  it raises goes to the error hook, not into the toolkit.

A watcher may also say which thread runs its loop with a ``loop_thread``
attribute (a ``threading.get_ident()`` value, or None while no thread runs the
loop yet: the hosted object then learns it from the first event it handles);
without it, the thread that attaches is taken for the loop's. A daemon needs
it to refuse, rather than hang in, a blocking call the loop's thread makes to
itself.

``demos/custom_loop.py`` is a complete host in about a hundred lines; the
adapters in ``pyro_loops.adapters`` are hosts for Qt, Tk, asyncio and the
selectors loop.
"""

from __future__ import annotations

import functools
import logging
import selectors
import socket
import threading
from typing import Any, Callable, Iterable, Protocol, TypeVar, runtime_checkable

__all__ = ["READ", "WRITE", "Watcher", "Hosted", "set_error_hook", "report_error"]

log = logging.getLogger("pyro_loops")
_F = TypeVar("_F", bound=Callable[..., Any])

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


@runtime_checkable
class Watcher(Protocol):
    """What a host loop gives each object it hosts: the host's half of the contract.

    The hosted object calls these methods; the host carries them out on its
    loop. None of them may block, call back into the hosted object, or raise
    (a host that cannot watch a socket reports it through ``report_error``).
    """

    def add(self, sock: socket.socket, events: int) -> None:
        """Start watching ``sock`` for ``events`` (READ, WRITE or both).

        Called once per socket, before any ``modify`` or ``remove`` of it.
        When the socket is ready, call ``hosted.handle_event(sock, ready)``
        with the events that are ready, a subset of those asked for.
        """

    def modify(self, sock: socket.socket, events: int) -> None:
        """Watch the already added ``sock`` for ``events`` from now on.

        ``events`` may be 0: keep the socket known but report nothing for it
        until the next ``modify`` (a daemon pauses reading this way while a
        call of that connection runs). Typically WRITE comes and goes while
        output waits for room in the socket.
        """

    def remove(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` and forget it.

        Always called *before* the socket is closed, so the host can still
        unregister it by its file descriptor. A readiness report the host had
        already queued for it may still be delivered; the hosted object
        ignores sockets it no longer owns.
        """

    def set_deadline(self, when: float | None) -> None:
        """Call ``hosted.handle_deadline()`` once ``time.monotonic() >= when``.

        Replaces any earlier deadline: there is at most one per hosted object.
        ``None`` cancels it. ``when`` may already be past (work is queued for
        the next loop iteration): call soon, but from the loop, not from here.
        """

    def detached(self) -> None:
        """The hosted object closed or let go of this watcher; forget it.

        Every socket was ``remove``-d and the deadline cancelled first. After
        this the hosted object calls the watcher no more, and the host must
        not call the hosted object's ``handle_*`` methods for it.
        """


@runtime_checkable
class Hosted(Protocol):
    """What a host loop may call on a daemon or client: the hosted object's half."""

    def attach_watcher(self, watcher: Watcher) -> None:
        """Be watched by ``watcher`` from now on.

        During this call the object ``add``-s its current sockets and sets its
        deadline. Raises the object's own error (``DaemonError`` for a closed
        daemon or one that already has a watcher) if it cannot be hosted; it
        may have called ``add`` before refusing, so a refused host calls its
        own ``detached()`` to drop those registrations.
        """

    def detach_watcher(self) -> None:
        """Stop being watched; the object stays open, ready for another host.

        ``remove``-s every socket, cancels the deadline and calls the
        watcher's ``detached()``. Does nothing without a watcher.
        """

    def handle_event(self, sock: socket.socket, events: int) -> None:
        """``sock`` is ready for ``events`` (READ and/or WRITE). Never raises.

        Does a bounded amount of work and returns; work left over is asked
        for through the deadline. A socket the object no longer owns (a stale
        report) is ignored.
        """

    def handle_deadline(self) -> None:
        """The deadline last set through ``set_deadline`` is due. Never raises.

        Bounded like ``handle_event``; the object sets its next deadline (or
        None) before returning.
        """


def release(watcher: Watcher, sockets: Iterable[socket.socket]) -> None:
    """Let go of ``watcher`` in the order ``Watcher.detached`` promises the host.

    Every socket is removed and the deadline cancelled before ``detached()``;
    a hosted object's ``detach_watcher`` calls this once it has dropped its
    reference to the watcher.
    """
    for sock in sockets:
        watcher.remove(sock)
    watcher.set_deadline(None)
    watcher.detached()


def _log_error(exc: BaseException, where: str) -> None:
    log.error("internal error in %s", where, exc_info=(type(exc), exc, exc.__traceback__))


_error_hook: Callable[[BaseException, str], None] = _log_error


def set_error_hook(hook: Callable[[BaseException, str], None] | None) -> None:
    """Route errors raised inside hosted objects and adapters to ``hook(exc, where)``.

    ``None`` restores the default, which logs them on the ``pyro_loops`` logger.
    Errors raised by published methods are not reported here: they go back to
    the caller as remote exceptions.
    """
    global _error_hook
    _error_hook = hook or _log_error


def report_error(exc: BaseException, where: str) -> None:
    """Hand an internal error to the hook; a failing hook is logged, not raised.

    For hosts too: an error of the host's own callbacks goes here rather than
    into the toolkit.
    """
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
        let_through, where = self.let_through, self.where

        @functools.wraps(callback)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:  # what ``with self:`` does, without its two calls on every event
                return callback(*args, **kwargs)
            except let_through:
                raise
            except BaseException as exc:
                report_error(exc, where)
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
