"""Which daemons are being served, and by which thread.

A client call from the very thread that runs a daemon's loop, to that daemon,
would wait for an answer the blocked loop can never give. The proxy refuses
such a call and ``resolve`` asks a same-thread name server directly; both look
here. The registry sits below the daemon, the proxy and name resolution so
that all three can use it without importing each other.
"""

from __future__ import annotations

import threading
from typing import Protocol

from ._uri import URI


class Served(Protocol):
    """What the registry needs of a daemon (``pyro_loops.daemon.Daemon``)."""

    @property
    def _loop_thread(self) -> int | None:
        """The thread running the daemon's loop, None while none does."""

    def _serves(self, uri: URI) -> bool: ...


#: every daemon that a loop thread serves, by id(); the daemon adds and removes itself
serving: dict[int, Served] = {}
serving_lock = threading.Lock()


def daemon_served_by_current_thread(uri: URI) -> Served | None:
    """The local daemon behind ``uri`` if the calling thread is the loop serving it, else None."""
    with serving_lock:
        daemons = list(serving.values())
    me = threading.get_ident()
    for daemon in daemons:
        if daemon._loop_thread == me and daemon._serves(uri):
            return daemon
    return None
