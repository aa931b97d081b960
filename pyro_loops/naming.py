"""Pyro4's ``naming`` module under its usual names (protocol notes section 9).

The parts live in their own modules, each importing only the layers below it:
``_broadcast`` (both ends of the GET_NSURI protocol), ``_resolve`` (locating a
name server and resolving ``PYRONAME:``/``PYROMETA:`` URIs, below the daemon
and the proxy), ``_nameserver`` (the name server object and its daemon) and
``ns_command`` (``startNSloop`` and the ``pyro-loops-ns`` command). This module
sits on top of them all. ``locateNS`` and ``resolve`` are defined with the
package (``pyro_loops.locateNS``), as in Pyro4; the package must not import
this module, or ``python -m pyro_loops.naming`` would run a second copy of it.
"""

from __future__ import annotations

import sys

from . import locateNS, resolve
from ._broadcast import BroadcastServer
from ._nameserver import NAMESERVER_METADATA, NameServer, NameServerDaemon, startNS
from .ns_command import main, startNSloop

__all__ = ["NAMESERVER_METADATA", "BroadcastServer", "NameServer", "NameServerDaemon", "locateNS", "main",
           "resolve", "startNS", "startNSloop"]


if __name__ == "__main__":  # python -m pyro_loops.naming, as with Pyro4
    sys.exit(main())
