"""Pyro4's ``naming`` module under its usual names (PROTOCOL.md section 9).

The parts live in their own modules, each importing only the layers below it:
``_broadcast`` (both ends of the GET_NSURI protocol), ``_resolve`` (locating a
name server and resolving ``PYRONAME:``/``PYROMETA:`` URIs, below the daemon
and the proxy), ``_nameserver`` (the name server object and its daemon) and
``ns_command`` (``startNSloop`` and the ``pyro-loops-ns`` command). This module
sits on top of them all: ``locateNS`` and ``resolve`` here are the resolution
functions bound to this package's ``Proxy``.
"""

from __future__ import annotations

import sys
from typing import Any

from . import _resolve
from ._broadcast import BroadcastServer
from ._nameserver import NAMESERVER_METADATA, NameServer, NameServerDaemon, startNS
from ._uri import URI
from .ns_command import main, startNSloop
from .proxy import Proxy

__all__ = ["NAMESERVER_METADATA", "BroadcastServer", "NameServer", "NameServerDaemon", "locateNS", "main",
           "resolve", "startNS", "startNSloop"]


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


if __name__ == "__main__":  # python -m pyro_loops.naming, as with Pyro4
    sys.exit(main())
