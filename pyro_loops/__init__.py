"""pyro_loops: Pyro4-compatible remote objects, served from your own event loop.

Publish objects with a ``Daemon``, call them with a ``Proxy``; host the daemon
in Qt, Tk, asyncio or a selectors loop with ``pyro_loops.adapters``, or run
``daemon.requestLoop()``.
"""

from . import constants, errors, socketutil, util
from ._expose import behavior, expose, in_worker, oneway
from ._hosting import set_error_hook
from ._uri import URI
from .configuration import config
from .context import current_context
from .daemon import Daemon, DaemonObject
from .naming import locateNS, resolve
from .proxy import Proxy, batch

__version__ = constants.VERSION


__all__ = ["Daemon", "DaemonObject", "Proxy", "URI", "batch", "behavior", "config", "constants",
           "current_context", "errors", "expose", "in_worker", "locateNS", "oneway", "resolve",
           "set_error_hook", "socketutil", "util"]
