"""Serve daemons from a loop your program owns: the public home of ``SelectLoop``.

For programs without a GUI toolkit or asyncio -- a game, a simulation, a
device controller -- that want to serve calls next to their own sockets and
timers::

    loop = SelectLoop()
    attach(daemon, loop)                # as many daemons as you like
    loop.add_reader(sensor, on_sensor)  # the program's own sockets
    loop.call_later(1.0, tick)          # and timers
    loop.run(until=lambda: done)        # or, once per frame: loop.poll(0)

The loop sleeps in ``select()`` until a socket is ready or its nearest timer
is due, so an idle program does not wake up. It is the same loop
``Daemon.requestLoop`` runs on; this module only gives it a public name and
the ``attach(daemon, loop)`` shape every adapter shares.

The seed's hand-written pattern needs no loop object at all and keeps
working: ``select(daemon.sockets, [], [], timeout)`` then
``daemon.events(readable)``. It gives up what a watcher brings: the daemon's
deadlines (such as the half-frame timeout) are only checked when ``events``
runs, so the ``select()`` timeout bounds how late they come, and a reply too
big for the socket drains with the help of a short-lived thread that wakes
the loop when the socket can take more.
"""

from __future__ import annotations

from typing import Any

from pyro_loops._eventloop import SelectLoop, Timer, _Hosted

from ._common import require_type

__all__ = ["SelectLoop", "Timer", "attach"]


def attach(daemon: Any, loop: SelectLoop) -> _Hosted:
    """Serve ``daemon`` from ``loop``; the handle has ``detach()`` and is a context manager.

    Call it in the thread that runs the loop, or in any thread before the loop
    first runs: the loop's thread is the one that runs it. Attaching or
    detaching from another thread is refused.
    """
    require_type(loop, SelectLoop, "a SelectLoop as its second argument")
    return loop.attach(daemon)
