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
from typing import Any

from . import locateNS, resolve
from ._broadcast import BroadcastServer
from ._nameserver import NAMESERVER_METADATA, NameServer, NameServerDaemon, startNS
from .ns_command import main, startNSloop



def type_meta(class_or_object: Any, prefix: str = "class:") -> frozenset[str]:
    """Metadata tags naming the class of ``class_or_object`` and its bases, for ``ns.register(metadata=...)``.

    Each tag is ``prefix + "module.ClassName"``; builtins (``object``...) are left
    out, so ``ns.yplookup(meta_all=...)`` finds objects by what they are.
    """
    cls = class_or_object if isinstance(class_or_object, type) else type(class_or_object)
    return frozenset(f"{prefix}{base.__module__}.{base.__name__}" for base in cls.__mro__
                     if base.__module__ != "builtins")


__all__ = ["NAMESERVER_METADATA", "BroadcastServer", "NameServer", "NameServerDaemon", "locateNS", "main",
           "resolve", "startNS", "startNSloop", "type_meta"]


if __name__ == "__main__":  # python -m pyro_loops.naming, as with Pyro4
    sys.exit(main())
