"""Serve daemons from a loop your program owns: the public home of ``SelectLoop``.

For programs without a GUI toolkit or asyncio -- a game, a simulation, a
device controller -- that want to serve calls next to their own sockets and
timers::

    loop = SelectLoop()
    attach(daemon, loop)               # as many daemons as you like
    loop.add_reader(sensor, on_sensor)  # the program's own sockets
    loop.call_later(1.0, tick)          # and timers
    loop.run(until=lambda: done)        # or, once per frame: loop.poll(0)

The loop sleeps in ``select()`` until a socket is ready or its nearest timer
is due, so an idle program does not wake up. It is the same loop
``Daemon.requestLoop`` runs on; this module only gives it a public name and
the ``attach(daemon, loop)`` shape every adapter shares.

The seed's hand-written pattern needs no loop object at all and keeps
working: ``select(daemon.sockets, [], [], timeout)`` then
``daemon.events(readable)``. Its limits are the ones ``Daemon.events``
documents: no write interest (pending output is flushed on every call) and
deadlines handled only when ``events`` runs.
"""

from __future__ import annotations

from typing import Any

from pyro_loops._eventloop import SelectLoop, Timer

__all__ = ["SelectLoop", "Timer", "attach"]


def attach(daemon: Any, loop: SelectLoop) -> Any:
    """Serve ``daemon`` from ``loop``; the handle has ``detach()`` and is a context manager."""
    return loop.attach(daemon)
