"""Finding a name server and resolving ``PYRONAME:``/``PYROMETA:`` URIs with it
(protocol notes section 9).

Resolution sits below the daemon and the proxy, which both need it: a proxy
resolves its URI before connecting, a daemon's ``serveSimple`` registers with
the name server. Talking to a name server takes a proxy, so the caller passes
the proxy class in (``pyro_loops.locateNS`` and ``resolve`` pass
``pyro_loops.proxy.Proxy``) instead of this module importing the layer above.
"""

from __future__ import annotations

import random
import socket
from typing import Any

from ._broadcast import ask_by_broadcast
from ._serving import daemon_served_by_current_thread
from ._uri import URI
from .configuration import config
from .constants import NAMESERVER_NAME
from .errors import NamingError, PyroError
from .socketutil import location

_STEP_TIMEOUT = 2.0          # seconds for each attempt to reach a name server while locating it
_RESOLVE_TIMEOUT = 10.0      # seconds a lookup during resolve() may take: a proxy connect must not hang


def _ns_location(host: str, port: int) -> str:
    if URI.isUnixsockLocation(host):
        return host
    return location(host, port)


def _bind(uri: URI, hmac_key: bytes | None, proxy_class: type) -> Any:
    """A bound proxy for the name server at ``uri``, or a PyroError within the step timeout."""
    proxy = proxy_class(uri)
    proxy._pyroHmacKey = hmac_key
    proxy._pyroTimeout = _STEP_TIMEOUT
    try:
        proxy._pyroBind()
    except BaseException:
        proxy._pyroRelease()
        raise
    proxy._pyroTimeout = config.COMMTIMEOUT or None
    return proxy


def _same_thread_name_server(uri: URI, local_ok: bool) -> Any:
    """The NameServer behind ``uri`` if this very thread runs its daemon's loop.

    A proxy from that thread would wait for an answer the blocked loop can
    never give. ``resolve`` then asks the object directly (so an application
    that hosts the name server on its GUI loop can still use ``PYRONAME:``);
    ``locateNS``, which must return a proxy, says so plainly instead.
    """
    local = daemon_served_by_current_thread(uri)
    if local is None:
        return None
    nameserver = getattr(local, "nameserver", None)
    if local_ok and nameserver is not None:
        return nameserver
    raise PyroError(f"cannot use the name server at {uri} through a proxy from the thread that runs its own "
                    "loop: that would deadlock. Call it from another thread, or use daemon.nameserver directly")


def _locate(host: str | None, port: int | None, broadcast: bool, hmac_key: bytes | None, proxy_class: type,
            local_ok: bool) -> Any:
    """locate_ns, optionally accepting the NameServer object itself (see _same_thread_name_server)."""
    port = port or config.NS_PORT
    if host:
        attempts = [host]
    else:
        ns_host = config.ns_host()
        attempts = []
        if ns_host in ("localhost", "::1") or ns_host.startswith("127."):
            attempts.append(ns_host)
            if ns_host == "localhost":
                try:
                    socket.gethostbyaddr("127.0.1.1")
                    attempts.append("127.0.1.1")
                except OSError:
                    pass
        # then the broadcast (None), then NS_HOST directly if not tried yet
        if broadcast and config.PREFER_IP_VERSION != 6:
            attempts.append(None)
        if ns_host not in attempts:
            attempts.append(ns_host)
    last_error: BaseException | None = None
    for attempt in attempts:
        if attempt is None:
            uri = ask_by_broadcast()
            if uri is None:
                continue
        else:
            uri = URI(f"PYRO:{NAMESERVER_NAME}@{_ns_location(attempt, port)}")
        local = _same_thread_name_server(uri, local_ok)
        if local is not None:
            return local
        try:
            return _bind(uri, hmac_key, proxy_class)
        except PyroError as exc:
            last_error = exc
    raise NamingError("Failed to locate the nameserver") from last_error


def locate_ns(host: str | None, port: int | None, broadcast: bool, hmac_key: bytes | None,
              proxy_class: type) -> Any:
    """A bound ``proxy_class`` proxy for a name server; see ``pyro_loops.locateNS``."""
    return _locate(host, port, broadcast, hmac_key, proxy_class, local_ok=False)


def resolve(uri: URI | str, hmac_key: bytes | None, proxy_class: type) -> URI:
    """The ``PYRO:`` URI that ``uri`` names, asking the name server through
    ``proxy_class``; see ``pyro_loops.resolve``."""
    if isinstance(uri, str):
        uri = URI(uri)
    elif not isinstance(uri, URI):
        raise TypeError("can only resolve Pyro URIs")
    if uri.protocol == "PYRO":
        return uri
    ns_host = "./u:" + uri.sockname if uri.sockname else uri.host
    nameserver = _locate(ns_host, uri.port, True, hmac_key, proxy_class, local_ok=True)
    remote = isinstance(nameserver, proxy_class)
    try:
        if remote:
            nameserver._pyroTimeout = _RESOLVE_TIMEOUT
        if uri.protocol == "PYRONAME":
            return nameserver.lookup(uri.object)
        candidates = nameserver.list(metadata_all=sorted(uri.object))
        if not candidates:
            raise NamingError(f"no registrations available with desired metadata properties {uri.object}")
        return URI(random.choice(list(candidates.values())))
    finally:
        if remote:
            nameserver._pyroRelease()

