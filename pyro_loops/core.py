"""Pyro4's ``core`` module: where Pyro4 programs find ``Daemon``, ``Proxy``, ``URI``...

Pyro4 code often spells ``Pyro4.core.Proxy`` or ``from Pyro4.core import
Daemon``; the objects are the same as the package's (``pyro_loops.Proxy is
pyro_loops.core.Proxy``). The Pyro4 names in ``_LATER`` are served from the
package as soon as pyro_loops provides them (see ``_pyro4names``).
"""

from __future__ import annotations

from ._expose import behavior, expose, oneway
from ._pyro4names import package_fallback
from ._uri import URI
from .configuration import config
from .context import current_context
from .daemon import Daemon, DaemonObject
from .proxy import Proxy, batch

_LATER = ("callback", "asyncproxy", "SerializedBlob", "Future", "FutureResult", "locateNS", "resolve")

__getattr__ = package_fallback("core", _LATER)

__all__ = ["URI", "Daemon", "DaemonObject", "Proxy", "batch", "behavior", "config", "current_context",
           "expose", "oneway"]
