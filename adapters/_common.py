"""What the adapters share: the handle's attach/detach bookkeeping, the one
wrong-thread check, the argument check of ``attach`` and the guard that keeps
errors of an adapter's own callbacks out of the host loop.

Kept apart so that no adapter imports another (each pulls in its toolkit).
"""

from __future__ import annotations

import socket
from typing import Any, Callable, TypeVar

from pyro_loops.hosting import reported, wrong_thread

_H = TypeVar("_H", bound="WatcherHandle")  # typing.Self is 3.11+


def guarded(where: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a loop callback so that nothing it raises reaches the host loop, not even KeyboardInterrupt.

    For loops that take no exception at all from a callback: PyQt5 aborts the
    process on any, SystemExit included. Where the loop lets the user end the
    program from a callback, ``pyro_loops.hosting.reported`` is the guard.
    """
    return reported(where, let_through=())


def require_type(value: Any, expected: type | tuple[type, ...], what: str) -> None:
    """Refuse an ``attach`` argument of the wrong kind with a TypeError naming what was expected.

    Without it, a wrong argument fails deep inside the adapter with an
    AttributeError about some toolkit method.
    """
    if not isinstance(value, expected):
        raise TypeError(f"attach() needs {what}, not {type(value).__name__} {value!r:.60}")


def nests(hosted: Any) -> bool:
    """Whether ``hosted`` takes ``handle_event`` from a nested loop while an earlier call runs.

    A callback the hosted object runs may start a nested loop (``QDialog.exec()``,
    Tk's ``wait_window``, a select loop polled from inside). A hosted object with
    ``nested_events = True`` (the loop ``Client``) wants every socket reported
    there as usual, the one being handled included: the reply the dialog waits
    for comes over that very socket. Otherwise (a ``Daemon``) a host may hold a
    socket back until its ``handle_event`` returns; the daemon itself holds back
    the connection whose call runs.

    Either way the nested loop may remove sockets, or detach the hosted object,
    while the host's callback for that very socket is still on the stack below
    it: a host frees nothing the outer callback returns into (the Qt adapter
    deletes notifiers only once its last running slot returned). How deep a
    client runs callbacks at once is its own bound (``CLIENT_MAX_NESTING``).
    """
    return bool(getattr(hosted, "nested_events", False))


def attach_watcher(daemon: Any, watcher: Any) -> None:
    """``daemon.attach_watcher(watcher)``, undoing what the watcher registered if it is refused.

    The daemon calls ``add`` for its sockets before it may refuse (say, a
    second watcher): the watcher must let go of those registrations itself.
    """
    try:
        daemon.attach_watcher(watcher)
    except BaseException:
        watcher.detached()
        raise


class WatcherHandle:
    """A handle that is itself the daemon's watcher.

    Subclasses set ``daemon`` and ``_attached`` (True once attached, False in
    ``detached()``), say in ``_set_interest`` which events of a socket their
    loop must watch (``add``, ``modify`` and ``remove`` of the watcher
    interface all come down to that), and in ``_in_loop_thread`` and
    ``_loop_name`` how to tell their loop's thread. Attaching (the subclass
    calls ``_require_loop_thread("attach()")`` before touching its loop) and
    detaching outside that thread are refused alike by every adapter.
    """

    daemon: Any
    _attached: bool

    @property
    def attached(self) -> bool:
        return self._attached

    def detach(self) -> None:
        """Stop serving the daemon from this loop; nothing of it stays registered.

        Call it in the loop's thread. From another thread, ``daemon.close()``
        is the way: the daemon hands it to the loop.
        """
        if self._attached:
            self._require_loop_thread("detach()")
            self.daemon.detach_watcher()

    def __enter__(self: _H) -> _H:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def add(self, sock: socket.socket, events: int) -> None:
        self._set_interest(sock, events)

    def modify(self, sock: socket.socket, events: int) -> None:
        self._set_interest(sock, events)

    def remove(self, sock: socket.socket) -> None:
        self._set_interest(sock, 0)

    def _require_loop_thread(self, action: str) -> None:
        """Raise the shared wrong-thread error unless the caller runs in the loop's thread."""
        if not self._in_loop_thread():
            raise wrong_thread(action, self._loop_name())

    def _set_interest(self, sock: socket.socket, events: int) -> None:
        raise NotImplementedError

    def _in_loop_thread(self) -> bool:
        raise NotImplementedError

    def _loop_name(self) -> str:
        """Completes "... called in thread 'X', but <this>": which loop, and which thread runs it."""
        raise NotImplementedError
