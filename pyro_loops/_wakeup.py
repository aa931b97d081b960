"""A socket that another thread (or a signal) makes readable to wake a sleeping loop.

A loop asleep in ``select()``, Tcl's notifier or a Qt event dispatcher only
wakes for a descriptor or a timer. ``Wakeup.reader`` is such a descriptor:
the loop watches it, ``wake()`` from any thread writes one byte, and the loop
calls ``drain()`` when it becomes readable. Both ends are non-blocking, so
neither side can block on it: a full buffer means a wakeup is already pending,
which is all a waker needs.
"""

from __future__ import annotations

import socket


class Wakeup:
    """One non-blocking socket pair: watch ``reader``, ``wake()`` from anywhere, ``drain()`` in the loop."""

    __slots__ = ("reader", "_writer")

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def writer_fileno(self) -> int:
        """The writing end's descriptor, for ``signal.set_wakeup_fd``."""
        return self._writer.fileno()

    def wake(self) -> None:
        """Make ``reader`` readable; safe from any thread, never blocks, never raises.

        A full buffer (a wakeup is pending anyway) and a closed pair (the loop
        is gone, nobody to wake) are both fine.
        """
        try:
            self._writer.send(b"\0")
        except OSError:
            pass

    def drain(self) -> None:
        """Read every pending wakeup byte, so the loop does not wake again for them."""
        try:
            while self.reader.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()
