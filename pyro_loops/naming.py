"""The name server: Pyro4's ``Pyro.NameServer`` object, its UDP broadcast
responder, and the client side (``locateNS``, ``resolve``) that turns
``PYRONAME:``/``PYROMETA:`` URIs into ``PYRO:`` ones (PROTOCOL.md section 9).

The name server is an ordinary object on an ordinary ``Daemon``, and the
broadcast responder offers the same hosting interface as a daemon, so both can
ride whatever loop already serves the application -- Qt, Tk, asyncio or the
built-in select loop -- next to the application's own daemon. ``startNS``
therefore only builds them; ``startNSloop`` (and the ``pyro-loops-ns``
command) runs them on a loop of their own.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from typing import Any, Iterable

from . import _hosting
from ._expose import expose
from ._nsstorage import MemoryStorage, Storage, open_storage
from ._uri import URI
from .configuration import config
from .constants import NAMESERVER_NAME
from .daemon import Daemon, daemon_served_by_current_thread
from .errors import NamingError, PyroError

log = logging.getLogger("pyro_loops")

#: The metadata of the name server's own entry; Pyro4 clients may look for it.
NAMESERVER_METADATA = frozenset({"class:Pyro4.naming.NameServer"})

_GET_NSURI = b"GET_NSURI"
_MAX_DATAGRAM = 100          # both ends of Pyro4's broadcast protocol read at most this much
_STEP_TIMEOUT = 2.0          # seconds for each attempt to reach a name server while locating it
_BROADCAST_ROUNDS = 3
_BROADCAST_WAIT = 0.7        # seconds to wait for a reply after each broadcast round
_RESOLVE_TIMEOUT = 10.0      # seconds a lookup during resolve() may take: a proxy connect must not hang


def _check_tags(metadata: Any, what: str) -> frozenset[str]:
    """Validate a metadata argument (None, or an iterable of str that is not itself a str)."""
    if isinstance(metadata, str):
        raise TypeError(f"{what} should not be a str, but another iterable (set, list, etc)")
    if not metadata:
        return frozenset()
    try:
        tags = frozenset(metadata)
    except TypeError:
        raise TypeError(f"{what} should be an iterable of str (set, list, etc)") from None
    if not all(isinstance(tag, str) for tag in tags):
        raise TypeError(f"{what} should only contain str")
    return tags


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError("name must be a str")
    return name


@expose
class NameServer:
    """The ``Pyro.NameServer`` object: a table of name -> (URI, metadata tags).

    Remote callers see exactly Pyro4's seven methods with Pyro4's argument
    forms, return types and error texts, so Pyro4 clients (and ``pyro4-nsc``)
    can use it. Every operation holds one lock: under SERVERTYPE "thread" the
    calls may arrive from several workers at once.
    """

    def __init__(self, storage: Storage | None = None) -> None:
        self._storage = storage if storage is not None else MemoryStorage()
        self._lock = threading.RLock()

    def ping(self) -> None:
        """Answer, so a client can tell the name server is alive."""

    def count(self) -> int:
        """The number of registrations, the name server's own entry included."""
        with self._lock:
            return len(self._storage)

    def lookup(self, name: str, return_metadata: bool = False) -> URI | tuple[URI, list[str]]:
        """The URI registered under ``name`` (and its metadata as a list, if asked)."""
        _check_name(name)
        with self._lock:
            entry = self._storage.get(name)
        if entry is None:
            raise NamingError("unknown name: " + name)
        uri = URI(entry.uri)
        if return_metadata:
            return uri, sorted(entry.metadata)
        return uri

    def register(self, name: str, uri: URI | str, safe: bool = False, metadata: Iterable[str] | None = None) -> None:
        """Register ``uri`` (a URI or a valid URI string) under ``name``.

        An existing name is overwritten unless ``safe`` is true, in which case
        it is a NamingError.
        """
        if isinstance(uri, URI):
            uri = uri.asString()
        elif isinstance(uri, str):
            URI(uri)  # raises PyroError("invalid uri...") for a malformed string
        else:
            raise TypeError("only URIs or strings can be registered")
        _check_name(name)
        tags = _check_tags(metadata, "metadata")
        with self._lock:
            if safe and self._storage.get(name) is not None:
                raise NamingError("name already registered: " + name)
            self._storage.put(name, uri, tags)

    def set_metadata(self, name: str, metadata: Iterable[str] | None) -> None:
        """Replace the metadata of an existing registration (a falsy value clears it)."""
        _check_name(name)
        tags = _check_tags(metadata, "metadata")
        with self._lock:
            entry = self._storage.get(name)
            if entry is None:
                raise NamingError("unknown name: " + name)
            self._storage.put(name, entry.uri, tags)

    def remove(self, name: str | None = None, prefix: str | None = None, regex: str | None = None) -> int:
        """Remove one name, or every name with a prefix or matching a regex; returns how many.

        The name server's own entry is never removed.
        """
        with self._lock:
            if name and isinstance(name, str) and name != NAMESERVER_NAME and self._storage.get(name) is not None:
                return self._storage.delete([name])
            if prefix:
                doomed = self.list(prefix=prefix)
            elif regex:
                doomed = self.list(regex=regex)
            else:
                return 0
            doomed.pop(NAMESERVER_NAME, None)
            return self._storage.delete(doomed)

    def list(self, prefix: str | None = None, regex: str | None = None,
             metadata_all: Iterable[str] | None = None, metadata_any: Iterable[str] | None = None,
             return_metadata: bool = False) -> dict[str, Any]:
        """The registrations as name -> URI string (or -> (URI string, metadata list)).

        At most one filter may be given; a missing or empty filter lists everything.
        """
        if sum(arg is not None for arg in (prefix, regex, metadata_all, metadata_any)) > 1:
            raise ValueError("you can only filter on one thing at a time")
        wanted = self._filter(prefix, regex, metadata_all, metadata_any)
        with self._lock:
            entries = self._storage.entries()
        if return_metadata:
            return {name: (entry.uri, sorted(entry.metadata)) for name, entry in entries if wanted(name, entry)}
        return {name: entry.uri for name, entry in entries if wanted(name, entry)}

    @staticmethod
    def _filter(prefix, regex, metadata_all, metadata_any):
        """A predicate over (name, entry) for the one filter given; validates it first."""
        if prefix:
            if not isinstance(prefix, str):
                raise TypeError("prefix must be a str")
            return lambda name, entry: name.startswith(prefix)
        if regex:
            if not isinstance(regex, str):
                raise TypeError("regex must be a str")
            try:
                pattern = re.compile(regex)
            except re.error as exc:
                raise NamingError(f"invalid regex: {exc}") from None
            return lambda name, entry: pattern.match(name) is not None
        if metadata_all is not None or metadata_any is not None:
            tags_all = _check_tags(metadata_all, "metadata_all")
            tags_any = _check_tags(metadata_any, "metadata_any")
            if tags_all:
                return lambda name, entry: tags_all <= entry.metadata
            if tags_any:
                return lambda name, entry: not tags_any.isdisjoint(entry.metadata)
        return lambda name, entry: True

    def _close(self) -> None:
        with self._lock:
            self._storage.close()


class NameServerDaemon(Daemon):
    """A Daemon serving a NameServer under ``Pyro.NameServer``, with the
    name server's own entry registered in it (which is why ``count()`` starts
    at 1). Closing the daemon closes the storage.

    ``storage`` is a spec (``"memory"``, ``"sql:<file>"``) or a storage object.
    """

    def __init__(self, host: str | None = None, port: int | None = None, unixsocket: str | None = None,
                 nathost: str | None = None, natport: int | None = None,
                 storage: str | Storage | None = None) -> None:
        if host is None:
            host = config.HOST
        if port is None:
            port = config.NS_PORT
        if nathost is None:
            nathost = config.NATHOST
        if natport is None:
            natport = config.NATPORT or None
        store = open_storage(storage) if storage is None or isinstance(storage, str) else storage
        try:
            super().__init__(host, port, unixsocket, nathost=nathost, natport=natport)
        except BaseException:
            store.close()
            raise
        self.nameserver = NameServer(store)
        self.register(self.nameserver, NAMESERVER_NAME)
        self.nameserver.register(NAMESERVER_NAME, self.uriFor(NAMESERVER_NAME), metadata=NAMESERVER_METADATA)

    def onClose(self) -> None:  # noqa: N802
        # Daemon.close() may defer the real close to the loop's next turn (when
        # called from another thread or from inside a call); the storage must
        # stay usable until then, so it is closed here rather than in close().
        nameserver, self.nameserver = getattr(self, "nameserver", None), None
        if nameserver is not None:
            nameserver._close()


def _interface_address_towards(peer_ip: str) -> str:
    """The local IP address a datagram to ``peer_ip`` would leave from (no packet is sent)."""
    family = socket.AF_INET6 if ":" in peer_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((peer_ip, 9))
        return probe.getsockname()[0]


class BroadcastServer:
    """Answers ``GET_NSURI`` datagrams with the name server's URI.

    It owns one non-blocking UDP socket and offers the hosting interface of a
    daemon (``sockets``/``events`` for hand-written select loops, and the
    watcher interface of ``_hosting`` for adapters), so whatever hosts the
    name server's daemon can host this too. It has no deadlines.
    """

    def __init__(self, nsUri: URI | str, bchost: str | None = None, bcport: int | None = None,  # noqa: N803
                 ipv6: bool | None = None) -> None:
        self.nsUri = URI(nsUri)
        if bcport is None:
            bcport = config.NS_BCPORT
        if bchost is None:
            bchost = config.NS_BCHOST
        if ipv6 is None:
            ipv6 = ":" in (bchost or self.nsUri.host or "")
        if len(str(self.nsUri).encode("latin-1")) > _MAX_DATAGRAM:
            log.warning("name server URI longer than %d bytes; broadcast clients will get it cut short", _MAX_DATAGRAM)
        sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if config.SOCK_REUSE:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if not ipv6:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.bind((bchost or ("::" if ipv6 else ""), bcport))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock: socket.socket | None = sock
        host, port = sock.getsockname()[:2]
        host = bchost or host
        self.locationStr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._watcher: _hosting.Watcher | None = None
        log.info("name server broadcast responder on %s", self.locationStr)

    # --- the hosting interface --------------------------------------------

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.sock] if self.sock is not None else []

    def events(self, ready: Iterable[Any]) -> None:
        """For hand-written select loops: handle whatever of ``ready`` is ours."""
        if self.sock is not None and any(s is self.sock for s in ready):
            self.handle_event(self.sock, _hosting.READ)

    def attach_watcher(self, watcher: _hosting.Watcher) -> None:
        if self._watcher is not None:
            raise PyroError("a watcher is already attached to this broadcast server")
        self._watcher = watcher
        if self.sock is not None:
            watcher.add(self.sock, _hosting.READ)
        watcher.set_deadline(None)

    def detach_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        if self.sock is not None:
            watcher.remove(self.sock)
        watcher.detached()

    def handle_event(self, sock: socket.socket, events: int) -> None:
        """Answer every request waiting on the socket; never raises."""
        try:
            self._drain()
        except Exception as exc:  # the host loop must never see our errors
            _hosting.report_error(exc, "name server broadcast responder")

    def handle_deadline(self) -> None:
        """Nothing is ever due: the responder has no deadlines."""

    def next_deadline(self) -> float | None:
        return None

    def processRequest(self) -> None:  # noqa: N802 - Pyro4's name
        """Pyro4's name for "the socket is readable"."""
        self.handle_event(self.sock, _hosting.READ)

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def getPort(self) -> int:  # noqa: N802 - Pyro4's name
        return self.sock.getsockname()[1]

    # --- answering ---------------------------------------------------------

    def _drain(self) -> None:
        # A bounded number per wakeup, so a flood cannot starve the host loop;
        # the socket stays readable and the loop comes back for the rest.
        for _ in range(64):
            if self.sock is None:
                return
            try:
                data, sender = self.sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error reported on the next receive
                log.debug("broadcast responder receive failed: %s", exc)
                continue
            if data != _GET_NSURI:
                continue
            try:
                self.sock.sendto(self._reply_for(sender[0]), sender)
            except OSError as exc:
                log.debug("broadcast responder could not answer %s: %s", sender, exc)

    def _reply_for(self, requester_ip: str) -> bytes:
        uri = URI(self.nsUri)
        if uri.host in ("0.0.0.0", "::", ""):
            # Bound to all interfaces: tell the requester the address it can reach us on.
            try:
                uri.host = _interface_address_towards(requester_ip)
            except OSError:
                pass
        return str(uri).encode("latin-1")

    # --- lifetime ----------------------------------------------------------

    def close(self) -> None:
        """Stop watching (telling the watcher first) and close the socket. Idempotent."""
        self.detach_watcher()
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> "BroadcastServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _broadcast_refusal(unixsocket: str | None, internal_uri: URI, bchost: str | None) -> str | None:
    """Why no broadcast responder should run for this name server, or None."""
    if unixsocket:
        return "Not starting broadcast server for a Unix domain socket."
    if bchost is None and _is_loopback(internal_uri.host):
        # Answering on every interface with an address only this machine can
        # reach would mislead the network; an explicit bchost overrides this.
        return "Not starting broadcast server for localhost."
    return None


def _start(host, port, enableBroadcast, bchost, bcport, unixsocket, nathost, natport,  # noqa: N803
           storage, hmac) -> tuple[URI, NameServerDaemon, BroadcastServer | None, str | None]:
    daemon = NameServerDaemon(host, port, unixsocket, nathost=nathost, natport=natport, storage=storage)
    try:
        if hmac:
            daemon._pyroHmacKey = hmac.encode("utf-8") if isinstance(hmac, str) else hmac
        ns_uri = daemon.uriFor(NAMESERVER_NAME)
        # The responder hands out the internal URI: a client that can hear our
        # broadcast answer is on our side of any NAT.
        internal_uri = daemon.uriFor(NAMESERVER_NAME, nat=False)
        refusal = None if enableBroadcast else "Broadcast server disabled."
        refusal = refusal or _broadcast_refusal(unixsocket, internal_uri, bchost)
        bcserver = None if refusal else BroadcastServer(internal_uri, bchost, bcport)
    except BaseException:
        daemon.close()
        raise
    return ns_uri, daemon, bcserver, refusal


def startNS(host: str | None = None, port: int | None = None, enableBroadcast: bool = True,  # noqa: N802,N803
            bchost: str | None = None, bcport: int | None = None, unixsocket: str | None = None,
            nathost: str | None = None, natport: int | None = None, storage: str | Storage | None = None,
            hmac: bytes | str | None = None) -> tuple[URI, NameServerDaemon, BroadcastServer | None]:
    """Build a name server and (maybe) its broadcast responder without running anything.

    Returns ``(uri, daemon, broadcast_server_or_None)``; attach both to the
    host loop (or call ``daemon.requestLoop()``). No responder is made when
    broadcast is disabled, for a Unix socket, or for a loopback name server
    unless ``bchost`` is given explicitly.
    """
    ns_uri, daemon, bcserver, _ = _start(host, port, enableBroadcast, bchost, bcport, unixsocket,
                                         nathost, natport, storage, hmac)
    return ns_uri, daemon, bcserver


def startNSloop(host: str | None = None, port: int | None = None, enableBroadcast: bool = True,  # noqa: N802,N803
                bchost: str | None = None, bcport: int | None = None, unixsocket: str | None = None,
                nathost: str | None = None, natport: int | None = None, storage: str | Storage | None = None,
                hmac: bytes | str | None = None) -> None:
    """Run a name server (and its responder) on a select loop of its own until interrupted."""
    from ._eventloop import SelectLoop

    ns_uri, daemon, bcserver, refusal = _start(host, port, enableBroadcast, bchost, bcport, unixsocket,
                                               nathost, natport, storage, hmac)
    loop = SelectLoop()
    try:
        loop.attach(daemon)
        if bcserver is not None:
            loop.attach(bcserver)
            print(f"Broadcast server running on {bcserver.locationStr}")
        else:
            print(refusal)
        existing = daemon.nameserver.count() - 1
        if existing > 0:
            print(f"Persistent store contains {existing} existing registrations.")
        internal_uri = daemon.uriFor(NAMESERVER_NAME, nat=False)
        where = "Unix domain socket" if unixsocket else _ip_of(internal_uri.host)
        print(f"NS running on {daemon.locationStr} ({where})")
        if not hmac:
            print("Warning: HMAC key not set. Anyone can connect to this server!")
        if internal_uri != ns_uri:
            print(f"internal URI = {internal_uri}")
            print(f"external URI = {ns_uri}")
        else:
            print(f"URI = {ns_uri}")
        sys.stdout.flush()
        loop.run()
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()
        if bcserver is not None:
            bcserver.close()
        daemon.close()
    print("NS shut down.", flush=True)


def _ip_of(host: str | None) -> str:
    try:
        return socket.gethostbyname(host) if host else "?"
    except OSError:
        return host or "?"


# --- the client side -------------------------------------------------------


def _ns_location(host: str, port: int) -> str:
    if URI.isUnixsockLocation(host):
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(uri: URI | str, hmac_key: bytes | None):
    """A bound proxy for the name server at ``uri``, or a PyroError within the step timeout."""
    from .proxy import Proxy

    proxy = Proxy(uri)
    proxy._pyroHmacKey = hmac_key
    proxy._pyroTimeout = _STEP_TIMEOUT
    try:
        proxy._pyroBind()
    except BaseException:
        proxy._pyroRelease()
        raise
    proxy._pyroTimeout = config.COMMTIMEOUT or None
    return proxy


def _broadcast_addresses() -> list[str]:
    addrs = config.BROADCAST_ADDRS
    if isinstance(addrs, str):
        addrs = addrs.split(",")
    return [addr.strip() for addr in addrs if addr.strip()]


def _ask_by_broadcast() -> URI | None:
    """Send GET_NSURI to the configured broadcast addresses; the first valid answer, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for _ in range(_BROADCAST_ROUNDS):
            for addr in _broadcast_addresses():
                try:
                    sock.sendto(_GET_NSURI, (addr, config.NS_BCPORT))
                except OSError as exc:  # e.g. no route for one of the addresses
                    log.debug("GET_NSURI to %s failed: %s", addr, exc)
            deadline = time.monotonic() + _BROADCAST_WAIT
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                try:
                    data, _ = sock.recvfrom(_MAX_DATAGRAM)
                except OSError:  # timeout, or an ICMP error from one of the targets
                    break
                try:
                    return URI(data.decode("latin-1"))
                except PyroError:
                    log.debug("ignoring a malformed GET_NSURI answer: %r", data)
    return None


def _same_thread_name_server(uri: URI, local_ok: bool) -> NameServer | None:
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


def _locate(host: str | None, port: int | None, broadcast: bool, hmac_key: bytes | None,
            local_ok: bool) -> Any:
    """locateNS, optionally accepting the NameServer object itself (see _same_thread_name_server)."""
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
            uri = _ask_by_broadcast()
            if uri is None:
                continue
        else:
            uri = URI(f"PYRO:{NAMESERVER_NAME}@{_ns_location(attempt, port)}")
        local = _same_thread_name_server(uri, local_ok)
        if local is not None:
            return local
        try:
            return _bind(uri, hmac_key)
        except PyroError as exc:
            last_error = exc
    raise NamingError("Failed to locate the nameserver") from last_error


def locateNS(host: str | None = None, port: int | None = None, broadcast: bool = True,  # noqa: N802
             hmac_key: bytes | None = None):
    """A bound proxy for a name server.

    With a host (a name, an IP address or ``./u:<socket path>``) it connects
    there directly (port: ``port`` or NS_PORT). Without one it tries, each
    attempt bounded by a short timeout: NS_HOST:port if NS_HOST is a
    loopback address (and 127.0.1.1 when NS_HOST is "localhost", where some
    systems map the host name); then a GET_NSURI broadcast to BROADCAST_ADDRS
    on NS_BCPORT; then NS_HOST:port directly. ``port`` is always the name
    server's TCP port. Raises ``NamingError("Failed to locate the nameserver")``.
    """
    return _locate(host, port, broadcast, hmac_key, local_ok=False)


def resolve(uri: URI | str, hmac_key: bytes | None = None) -> URI:
    """Turn a ``PYRONAME:``/``PYROMETA:`` URI into the ``PYRO:`` URI it names.

    ``PYRO:`` URIs come back unchanged. A name server location in the URI is
    used directly; otherwise the name server is located. ``PYROMETA:`` picks
    one of the registrations carrying all the tags, at random.
    """
    if isinstance(uri, str):
        uri = URI(uri)
    elif not isinstance(uri, URI):
        raise TypeError("can only resolve Pyro URIs")
    if uri.protocol == "PYRO":
        return uri
    ns_host = "./u:" + uri.sockname if uri.sockname else uri.host
    nameserver = _locate(ns_host, uri.port, True, hmac_key, local_ok=True)
    remote = not isinstance(nameserver, NameServer)
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


# --- the pyro-loops-ns command ----------------------------------------------


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(args: list[str] | None = None) -> int:
    """``pyro-loops-ns``: run a name server until interrupted (HMAC key from PYRO_HMAC_KEY)."""
    parser = argparse.ArgumentParser(prog="pyro-loops-ns", description="Run a Pyro4-compatible name server.")
    parser.add_argument("-n", "--host", help="hostname or IP address to bind the server on")
    parser.add_argument("-p", "--port", type=int, help=f"port to bind the server on (0 = any free port; "
                                                       f"default {config.NS_PORT})")
    parser.add_argument("-u", "--unixsocket", help="Unix domain socket to bind the server on instead")
    parser.add_argument("-s", "--storage", default="memory", help="'memory' (default) or 'sql:<file>'")
    parser.add_argument("-x", "--nobc", dest="enablebc", action="store_false", help="don't start a broadcast server")
    parser.add_argument("--bchost", help="address to bind the broadcast server on (default: all)")
    parser.add_argument("--bcport", type=int, help=f"port of the broadcast server (default {config.NS_BCPORT})")
    parser.add_argument("--nathost", help="external hostname, when behind NAT")
    parser.add_argument("--natport", type=int, help="external port, when behind NAT")
    options = parser.parse_args(args)
    logging.basicConfig(level=logging.WARNING)
    # A service manager stops us with SIGTERM: shut down as cleanly as on Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        startNSloop(options.host, options.port, options.enablebc, options.bchost, options.bcport,
                    options.unixsocket, options.nathost, options.natport, options.storage,
                    os.environ.get("PYRO_HMAC_KEY") or None)
    except (OSError, ValueError, PyroError) as exc:
        print(f"pyro-loops-ns: cannot start the name server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from pyro_loops.naming import main as _main  # the package's module, not a second copy as __main__

    sys.exit(_main())
