"""The name server: Pyro4's ``Pyro.NameServer`` object and the daemon that
serves it.

The name server is an ordinary object on an ordinary ``Daemon``, and its
broadcast responder (``_broadcast``) offers the same hosting interface as a
daemon, so both can ride whatever loop already serves the application -- Qt,
Tk, asyncio or the built-in select loop -- next to the application's own
daemon. ``startNS`` therefore only builds them; ``startNSloop`` (in
``ns_command``, behind the ``pyro-loops-ns`` command) runs them on a loop of
their own.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable

import regex as regex_engine

from ._broadcast import BroadcastServer, broadcast_refusal
from ._expose import expose
from ._nsstorage import MemoryStorage, Storage, open_storage
from ._uri import URI
from .configuration import config
from .constants import NAMESERVER_NAME
from .daemon import Daemon
from .errors import NamingError

#: The metadata of the name server's own entry; Pyro4 clients may look for it.
NAMESERVER_METADATA = frozenset({"class:Pyro4.naming.NameServer"})


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


def _check_size(name: str, uri: str, tags: frozenset[str]) -> None:
    """Refuse a registration larger than NS_MAX_ENTRY_SIZE: the name server keeps it,
    and sends it in every list() reply, for as long as it runs."""
    limit = config.NS_MAX_ENTRY_SIZE
    size = len(name) + len(uri) + sum(len(tag) for tag in tags)
    if limit and size > limit:
        raise NamingError(f"registration of {size} characters (name, URI and metadata) refused: "
                          f"NS_MAX_ENTRY_SIZE is {limit}")


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
        _check_size(name, uri, tags)
        with self._lock:
            known = self._storage.get(name) is not None
            if safe and known:
                raise NamingError("name already registered: " + name)
            limit = config.NS_MAX_ENTRIES
            if limit and not known and len(self._storage) >= limit:
                raise NamingError(f"name server full: it holds NS_MAX_ENTRIES ({limit}) registrations; "
                                  f"{name!r} was not registered")
            self._storage.put(name, uri, tags)

    def set_metadata(self, name: str, metadata: Iterable[str] | None) -> None:
        """Replace the metadata of an existing registration (a falsy value clears it)."""
        _check_name(name)
        tags = _check_tags(metadata, "metadata")
        with self._lock:
            entry = self._storage.get(name)
            if entry is None:
                raise NamingError("unknown name: " + name)
            _check_size(name, entry.uri, tags)
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
            return _regex_filter(regex)
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


def _regex_filter(text: str) -> Any:
    """A predicate matching names against ``text``, all matches together
    bounded by NS_REGEX_TIMEOUT: a pattern that backtracks catastrophically
    gets a NamingError instead of the name server's loop for seconds. The
    ``regex`` package because it takes a timeout and Pyro4's syntax
    (backreferences included), which a linear-time engine would not."""
    try:
        pattern = regex_engine.compile(text)
    except regex_engine.error as exc:
        raise NamingError(f"invalid regex: {exc}") from None
    limit = config.NS_REGEX_TIMEOUT
    deadline = time.monotonic() + limit

    def wanted(name: str, entry: Any) -> bool:
        try:
            return pattern.match(name, timeout=max(deadline - time.monotonic(), 0.0)) is not None
        except TimeoutError:
            raise NamingError(f"regex {text!r} took longer than NS_REGEX_TIMEOUT ({limit} s) to match "
                              "the registered names; use a simpler pattern or a prefix") from None
    return wanted


class NameServerDaemon(Daemon):
    """A Daemon serving a NameServer under ``Pyro.NameServer``, with the
    name server's own entry registered in it (which is why ``count()`` starts
    at 1). Closing the daemon closes the storage.

    ``storage`` is a spec (``"memory"``, ``"sql:<file>"``, ``"dbm:<file>"``) or a storage object.
    """

    def __init__(self, host: str | None = None, port: int | None = None, unixsocket: str | None = None,
                 nathost: str | None = None, natport: int | None = None,
                 storage: str | Storage | None = None) -> None:
        if port is None:
            port = config.NS_PORT
        # host, nathost and natport default as for any Daemon
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


def build_name_server(host, port, enableBroadcast, bchost, bcport, unixsocket, nathost, natport,  # noqa: N803
                      storage, hmac) -> tuple[URI, NameServerDaemon, BroadcastServer | None, str | None]:
    """startNS's work, and also why no broadcast responder was made (None if one was)."""
    daemon = NameServerDaemon(host, port, unixsocket, nathost=nathost, natport=natport, storage=storage)
    try:
        if hmac:
            daemon._pyroHmacKey = hmac.encode("utf-8") if isinstance(hmac, str) else hmac
        ns_uri = daemon.uriFor(NAMESERVER_NAME)
        # The responder hands out the internal URI: a client that can hear our
        # broadcast answer is on our side of any NAT.
        internal_uri = daemon.uriFor(NAMESERVER_NAME, nat=False)
        refusal = None if enableBroadcast else "Broadcast server disabled."
        refusal = refusal or broadcast_refusal(unixsocket, internal_uri, bchost)
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
    ns_uri, daemon, bcserver, _ = build_name_server(host, port, enableBroadcast, bchost, bcport, unixsocket,
                                                    nathost, natport, storage, hmac)
    return ns_uri, daemon, bcserver
