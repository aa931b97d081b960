"""Serving from a hand-written ``select()`` loop: ``Daemon.sockets`` / ``Daemon.events``.

Pyro4's way of embedding a daemon in another loop is to select on
``daemon.sockets`` for reading and pass the ready ones to ``daemon.events``.
Such a loop never asks for write readiness, so replies that did not fit in a
socket at once would wait for the client's next request. ``HandWrittenLoop``
drains them on every ``events()`` and, while output still waits, has a
short-lived thread wait for room and wake the loop through the daemon's
wakeup socket (which is among ``sockets``).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Callable, Iterable

from .configuration import config
from .hosting import READ, WRITE, Hosted


class HandWrittenLoop:
    """The ``events()`` path of one daemon.

    ``hosted`` is the daemon (its ``handle_*`` methods do the work),
    ``output_pending`` lists the sockets with output waiting, ``next_deadline``
    and ``watched`` tell when deadline work is due and whether a real watcher
    is attached (then it reports write readiness itself and no waiter runs),
    ``wake`` makes the wakeup socket readable.
    """

    def __init__(self, hosted: Hosted, output_pending: Callable[[], list[socket.socket]],
                 next_deadline: Callable[[], float | None], watched: Callable[[], bool],
                 wake: Callable[[], None]) -> None:
        self._hosted = hosted
        self._output_pending = output_pending
        self._next_deadline = next_deadline
        self._watched = watched
        self._wake = wake
        self._write_waiter: threading.Thread | None = None

    def events(self, eventsockets: Iterable[socket.socket]) -> None:
        """Handle readable sockets, then flush pending output and run due deadline work."""
        for sock in list(eventsockets):
            self._hosted.handle_event(sock, READ)
        for sock in self._output_pending():
            self._hosted.handle_event(sock, WRITE)
        deadline = self._next_deadline()
        if deadline is not None and deadline <= time.monotonic():
            self._hosted.handle_deadline()
        if not self._watched():
            self._wake_when_writable(self._output_pending())

    def _wake_when_writable(self, socks: list[socket.socket]) -> None:
        """For loops that only watch readability: a short-lived thread waits until
        one of ``socks`` can take more output, then makes the wakeup socket
        readable so the loop calls ``events()`` again and the output drains."""
        if not socks or self._write_waiter is not None:
            return
        poller = select.poll()
        for sock in socks:
            poller.register(sock, select.POLLOUT)

        def wait() -> None:
            poller.poll(max(1, int(config.HALF_FRAME_TIMEOUT * 1000)))
            self._write_waiter = None  # before the wakeup, so the next events() may start another
            self._wake()

        self._write_waiter = threading.Thread(target=wait, daemon=True, name="pyro_loops-write-waiter")
        self._write_waiter.start()
