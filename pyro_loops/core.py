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
from .futures import Future, FutureResult
from .proxy import BatchProxy as _BatchProxyAdapter
from .proxy import Proxy, _AsyncRemoteMethod, asyncproxy, batch
from .proxy import _RemoteMethod  # noqa: F401 - Pyro4's names, for code that checks isinstance

_LATER = ("callback", "SerializedBlob", "locateNS", "resolve")

__getattr__ = package_fallback("core", _LATER)

__all__ = ["URI", "Daemon", "DaemonObject", "Future", "FutureResult", "Proxy", "asyncproxy", "batch", "behavior",
           "config", "current_context", "expose", "oneway"]
