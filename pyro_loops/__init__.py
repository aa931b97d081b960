"""pyro_loops: Pyro4-compatible remote objects, served from your own event loop.

Publish objects with a ``Daemon``, call them with a ``Proxy``; host the daemon
in Qt, Tk, asyncio or a selectors loop with ``pyro_loops.adapters``, or run
``daemon.requestLoop()``.
"""

from __future__ import annotations

from typing import Any

from . import _resolve, constants, errors, socketutil, util
from ._blob import SerializedBlob
from ._expose import behavior, callback, expose, in_worker, oneway
from .hosting import set_error_hook
from ._uri import URI
from .call import Call
from .client import Client, LoopProxy
from .configuration import config
from .context import current_context
from .daemon import Daemon, DaemonObject
from .futures import Future, FutureResult
from .proxy import Proxy, asyncproxy, batch

from . import core, futures, message  # Pyro4's submodules, after the names they re-export

__version__ = constants.VERSION


def locateNS(host: str | None = None, port: int | None = None, broadcast: bool = True,  # noqa: N802
             hmac_key: bytes | None = None) -> Any:
    """A bound proxy for a name server.

    With a host (a name, an IP address or ``./u:<socket path>``) it connects
    there directly (port: ``port`` or NS_PORT). Without one it tries, each
    attempt bounded by a short timeout: NS_HOST:port if NS_HOST is a
    loopback address (and 127.0.1.1 when NS_HOST is "localhost", where some
    systems map the host name); then a GET_NSURI broadcast to BROADCAST_ADDRS
    on NS_BCPORT; then NS_HOST:port directly. ``port`` is always the name
    server's TCP port. Raises ``NamingError("Failed to locate the nameserver")``.
    """
    return _resolve.locate_ns(host, port, broadcast, hmac_key, Proxy)


def resolve(uri: URI | str, hmac_key: bytes | None = None) -> URI:
    """Turn a ``PYRONAME:``/``PYROMETA:`` URI into the ``PYRO:`` URI it names.

    ``PYRO:`` URIs come back unchanged. A name server location in the URI is
    used directly; otherwise the name server is located. ``PYROMETA:`` picks
    one of the registrations carrying all the tags, at random.
    """
    return _resolve.resolve(uri, hmac_key, Proxy)


__all__ = ["Call", "Client", "Daemon", "DaemonObject", "Future", "FutureResult", "LoopProxy", "Proxy", "SerializedBlob", "URI",
           "asyncproxy", "batch", "behavior", "callback",
           "config", "constants", "current_context", "errors", "expose", "in_worker", "locateNS", "oneway", "resolve",
           "set_error_hook", "socketutil", "util"]
