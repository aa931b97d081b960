"""What the adapters share: the handle's attach/detach bookkeeping and the guard
that keeps errors of an adapter's own callbacks out of the host loop.

Kept apart so that no adapter imports another (each pulls in its toolkit).
"""

from __future__ import annotations

import functools
import socket
from typing import Any, Callable, TypeVar

from pyro_loops.hosting import report_error

_Handle = TypeVar("_Handle", bound="WatcherHandle")  # typing.Self is 3.11+


def guarded(where: str) -> Callable[[Callable[..., Any]], Callable[..., None]]:
    """Wrap a loop callback so that nothing it raises reaches the host loop.

    Host loops treat an escaping exception badly (PyQt5 aborts the process,
    asyncio hands it to its exception handler); the daemon's error hook is
    where the program decided such errors go.
    """

    def decorate(callback: Callable[..., Any]) -> Callable[..., None]:
        @functools.wraps(callback)
        def wrapper(*args: Any) -> None:
            try:
                callback(*args)
            except BaseException as exc:  # noqa: BLE001 - a loop callback must not raise at all
                report_error(exc, where)

        return wrapper

    return decorate


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
    ``detached()``) and say in ``_set_interest`` which events of a socket
    their loop must watch; ``add``, ``modify`` and ``remove`` of the watcher
    interface all come down to that.
    """

    daemon: Any
    _attached: bool

    @property
    def attached(self) -> bool:
        return self._attached

    def detach(self) -> None:
        """Stop serving the daemon from this loop; nothing of it stays registered."""
        if self._attached:
            self.daemon.detach_watcher()

    def __enter__(self: _Handle) -> _Handle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def add(self, sock: socket.socket, events: int) -> None:
        self._set_interest(sock, events)

    def modify(self, sock: socket.socket, events: int) -> None:
        self._set_interest(sock, events)

    def remove(self, sock: socket.socket) -> None:
        self._set_interest(sock, 0)

    def _set_interest(self, sock: socket.socket, events: int) -> None:
        raise NotImplementedError
