"""pyro_loops: Pyro4-compatible remote objects, served from your own event loop.

Publish objects with a ``Daemon``, call them with a ``Proxy``; host the daemon
in Qt, Tk, asyncio or a selectors loop with ``pyro_loops.adapters``, or run
``daemon.requestLoop()``.
"""

from . import constants, errors, socketutil, util
from ._expose import behavior, callback, expose, in_worker, oneway
from ._hosting import set_error_hook
from ._uri import URI
from .configuration import config
from .context import current_context
from .daemon import Daemon, DaemonObject
from .proxy import Proxy, batch
from .call import Call
from .client import Client, LoopProxy

__version__ = constants.VERSION


def locateNS(host=None, port=None, broadcast=True, hmac_key=None):  # noqa: N802 - Pyro4's name
    """Find the name server; see ``pyro_loops.naming.locateNS``."""
    from .naming import locateNS as locate
    return locate(host, port, broadcast, hmac_key)


def resolve(uri, hmac_key=None):
    """Turn a PYRONAME:/PYROMETA: URI into a PYRO: URI; see ``pyro_loops.naming.resolve``."""
    from .naming import resolve as resolve_uri
    return resolve_uri(uri, hmac_key)


__all__ = ["Call", "Client", "Daemon", "LoopProxy", "DaemonObject", "Proxy", "URI", "batch", "behavior", "callback", "config", "constants",
           "current_context", "errors", "expose", "in_worker", "locateNS", "oneway", "resolve",
           "set_error_hook", "socketutil", "util"]
