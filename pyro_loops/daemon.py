"""The Daemon: publishes objects and serves calls from whatever loop hosts it.

The daemon owns its sockets, per-connection buffers and the object registry.
It never blocks: sockets are non-blocking, a half-received message waits in
its connection's buffer, a large reply drains as the socket takes it. Which
loop drives it is not its business: the host loop attaches a watcher (see
``pyro_loops.hosting``) and reports readiness; ``requestLoop`` is just the built-in
select loop doing the same.

The daemon is a facade over three parts with declared interfaces: the socket
side (``_connections.Connections``: accept, read, send, close, interest,
buffer totals, per-connection deadlines), call dispatch
(``_calls.CallDispatcher``, which needs of the daemon only what
``_calls.CallHost`` declares), the call lane that serves the common call
of an idle connection in one step (``_lane.CallLane``) and the ``events()``
path of hand-written select loops (``_seedloop.HandWrittenLoop``). Item streams live in
``_streams.StreamRegistry``. The daemon keeps the object registry, the hooks
subclasses override, the hosting interface and closing.
"""

from __future__ import annotations

import inspect
import os
import socket
import ssl
import threading
import time
import uuid
from typing import Any, Callable, Iterable

from . import errors, socketutil
from ._expose import (class_name, expose, get_exposed_members, reset_metadata_cache)
from .hosting import READ, Watcher, log, release, reported
from ._calls import CallDispatcher
from ._connection import ClientConnection
from ._connections import Connections, bind
from ._eventloop import SelectLoop
from ._lane import CallLane
from ._resolve import locate_ns
from ._seedloop import HandWrittenLoop
from ._serving import serving as _serving, serving_lock as _serving_lock  # under the names the body uses
from ._streams import StreamRegistry
from ._tls import server_context_from_config
from ._uri import URI
from ._wakeup import Wakeup
from .configuration import config
from .constants import DAEMON_NAME
from .context import current_context
from .proxy import Proxy

_get_ident = threading.get_ident


@expose
class DaemonObject:
    """The ``Pyro.Daemon`` object every daemon publishes about itself."""

    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon

    def registered(self) -> list[str]:
        return list(self.daemon.objectsById)

    def ping(self) -> None:
        pass

    def info(self) -> str:
        d = self.daemon
        return (f"{DAEMON_NAME} bound on {d.locationStr}, NAT {d.natLocationStr}, "
                f"{len(d.objectsById)} objects registered. Servertype: {d._servertype_text()}")

    def get_metadata(self, objectId: str, as_lists: bool = False) -> dict:
        obj = self.daemon.objectsById.get(objectId)
        if obj is None:
            raise errors.DaemonError("unknown object")
        meta = get_exposed_members(obj, as_lists=as_lists)
        if config.REQUIRE_EXPOSE and not (meta["methods"] or meta["attrs"]):
            log.warning("object %r (%s) exposes nothing: add @expose to its class or methods, "
                        "or set config.REQUIRE_EXPOSE = False", objectId, class_name(obj))
        return meta

    def get_next_stream_item(self, streamId: str) -> Any:
        return self.daemon._streams.next_item(streamId, getattr(current_context, "client", None))

    def close_stream(self, streamId: str) -> None:
        self.daemon._streams.close(streamId)


def _always() -> bool:
    return True


class Daemon:
    """Publishes objects to remote callers; see the module docstring."""

    def __init__(self, host: str | None = None, port: int = 0, unixsocket: str | None = None,
                 nathost: str | None = None, natport: int | None = None,
                 interface: type = DaemonObject, ssl_context: ssl.SSLContext | None = None,
                 connected_socket: socket.socket | None = None) -> None:
        if connected_socket is not None:
            nathost, natport, unixsocket = "", None, None  # no address of its own to publish
        if host is None:
            host = config.HOST
        if nathost is None:
            nathost = config.NATHOST
        if natport is None:
            natport = config.NATPORT or None
        if ssl_context is None and config.SSL:
            ssl_context = server_context_from_config(config)
        if nathost and unixsocket:
            raise ValueError("cannot use nathost together with unixsocket")
        if natport is not None and not nathost:
            raise ValueError("must provide natport with nathost")
        socketutil.check_port(natport, "natport")
        servertype = config.SERVERTYPE  # None: decided by what serves the daemon (see CallDispatcher.servertype)
        if servertype not in (None, "thread", "multiplex"):
            raise errors.PyroError("invalid server type: " + str(servertype))
        if connected_socket is not None:
            if ssl_context is not None:
                raise errors.DaemonError("a daemon on a connected socket cannot use TLS")
            self.sock, self.locationStr = connected_socket, socketutil.sock_location(connected_socket)
        else:
            self.sock, self.locationStr = bind(host, port, unixsocket)
        bound_port = None if unixsocket or connected_socket else self.sock.getsockname()[1]
        self.natLocationStr: str | None = None
        if nathost:
            nat_port = natport or bound_port
            self.natLocationStr = f"[{nathost}]:{nat_port}" if ":" in nathost else f"{nathost}:{nat_port}"
        self.objectsById: dict[str, Any] = {}
        self.coroutine_runner: Callable[[Any, Callable[[Any, BaseException | None], None]], None] | None = None
        self._combined: list[Any] = []  # served by this daemon's own loop too (combine)
        self._wakeup = Wakeup()  # workers hand results to the loop through it
        self._streams = StreamRegistry()
        self._connections = Connections(self.sock, self._connection_closed, ssl_context)
        self._calls = CallDispatcher(self, self._connections, self._streams, servertype, self._wakeup.wake)
        self._connections.requests = self._calls
        self._lane = CallLane(self, self._connections, self._calls)
        self._lane_ready = self._connections.lane_ready
        self._conns = self._connections.conns  # the open connections by socket (read by tests and tools)
        self._seed_loop = HandWrittenLoop(self, self._connections.output_pending, self.next_deadline,
                                          lambda: self._watcher is not None, self._wakeup.wake)
        self._deadline: float | None = None
        self._event_thread: int | None = None  # the thread of the last event, or the attaching one
        self._closed = False
        self._close_requested = False
        self.register(interface(self), DAEMON_NAME)
        self._open_to_all = host in ("", "0.0.0.0", "::") and not unixsocket and connected_socket is None
        if connected_socket is not None:
            self._connections.adopt()  # the daemon closes when that connection ends (Pyro4's loop ends)

    @property
    def _watcher(self) -> Watcher | None:
        """The host's watcher while one is attached (the socket side registers through it)."""
        return self._connections.watcher

    @_watcher.setter
    def _watcher(self, watcher: Watcher | None) -> None:
        self._connections.watcher = watcher

    @property
    def _hmac_key(self) -> bytes | None:
        return self._connections.hmac_key

    def _serves(self, uri: URI) -> bool:
        if self._closed or not self._connections.listening:
            return False
        if uri.sockname:
            return self.sock.family == getattr(socket, "AF_UNIX", None) and self.sock.getsockname() == uri.sockname
        if self.sock.family not in (socket.AF_INET, socket.AF_INET6) or uri.port != self.sock.getsockname()[1]:
            return False
        try:
            wanted = {str(info[4][0]) for info in socket.getaddrinfo(uri.host, uri.port)}
        except OSError:
            return False
        bound = str(self.sock.getsockname()[0])
        return bound in wanted or bound in ("0.0.0.0", "::") or any(
            ip.startswith("127.") or ip == "::1" for ip in wanted) and (bound.startswith("127.") or bound == "::1")
    # --- registry -----------------------------------------------------------------

    def register(self, obj_or_class: Any, objectId: str | None = None, force: bool = False) -> URI:
        """Publish an object (or a class, instantiated per ``@behavior``) and return its URI."""
        if objectId is not None:
            if not isinstance(objectId, str) or not objectId:
                raise errors.DaemonError("objectId must be a non-empty string")
        else:
            objectId = "obj_" + uuid.uuid4().hex
        if objectId in self.objectsById:
            raise errors.DaemonError(f"object or class already registered with id {objectId!r}")
        if not inspect.isclass(obj_or_class):
            obj = obj_or_class
            if type(obj).__module__ == "builtins":
                raise errors.DaemonError(
                    f"cannot register an object of builtin type {type(obj).__name__}: Pyro needs to add "
                    "attributes to it; wrap the value in an object of your own class")
            existing = getattr(obj, "_pyroId", None)
            if not force and existing and self.objectsById.get(existing) is obj:
                raise errors.DaemonError(f"object already registered with id {existing!r}")
            try:
                obj._pyroId = objectId
                obj._pyroDaemon = self
            except AttributeError:
                raise errors.DaemonError(
                    f"cannot register {type(obj).__name__}: it has __slots__ without room for the "
                    "_pyroId and _pyroDaemon attributes (add them to __slots__)") from None
        elif not hasattr(obj_or_class, "_pyroInstancing"):
            setattr(obj_or_class, "_pyroInstancing", ("session", None))
        self.objectsById[objectId] = obj_or_class
        self._lane.forget()
        if config.REQUIRE_EXPOSE and objectId != DAEMON_NAME:
            meta = get_exposed_members(obj_or_class)
            if not (meta["methods"] or meta["attrs"]):
                log.warning("registered %s exposes nothing, so callers will see no methods: add "
                            "@pyro_loops.expose to the class or its methods, or set "
                            "config.REQUIRE_EXPOSE = False", class_name(obj_or_class))
        return self.uriFor(objectId)

    def unregister(self, objectOrId: Any) -> None:
        """Stop publishing an object; removes the ``_pyroId``/``_pyroDaemon`` attributes."""
        if objectOrId is None:
            raise ValueError("object or objectid argument expected")
        objectId = objectOrId if isinstance(objectOrId, str) else getattr(objectOrId, "_pyroId", None)
        if objectId is None:
            if inspect.isclass(objectOrId):
                for key, value in list(self.objectsById.items()):
                    if value is objectOrId:
                        objectId = key
            if objectId is None:
                raise errors.DaemonError("object isn't registered")
        if objectId == DAEMON_NAME:
            return
        obj = self.objectsById.pop(objectId, None)
        self._lane.forget()
        if obj is not None and not inspect.isclass(obj):
            for attr in ("_pyroId", "_pyroDaemon"):
                try:
                    delattr(obj, attr)
                except AttributeError:
                    pass

    def uriFor(self, objectOrId: Any, nat: bool = True) -> URI:  # noqa: N802 - Pyro4's name
        """A URI for a registered object or id, with the NAT address if there is one."""
        if not isinstance(objectOrId, str):
            objectOrId = getattr(objectOrId, "_pyroId", None)
            if objectOrId is None:
                raise errors.DaemonError("object isn't registered")
        location = self.natLocationStr if nat and self.natLocationStr else self.locationStr
        return URI(f"PYRO:{objectOrId}@{location}")

    def proxyFor(self, objectOrId: Any, nat: bool = True) -> Any:  # noqa: N802 - Pyro4's name
        """A proxy for a registered object, with its metadata filled in (used by autoproxy)."""
        uri = self.uriFor(objectOrId, nat)
        proxy = Proxy(uri)
        obj = self.objectsById.get(uri.object)
        if obj is None:
            raise errors.DaemonError("object isn't registered")
        meta = get_exposed_members(obj)
        proxy._pyroGetMetadata(known_metadata=meta)
        return proxy

    def resetMetadataCache(self, objectOrId: Any = None, nat: bool = True) -> None:  # noqa: N802
        reset_metadata_cache()

    @property
    def _pyroHmacKey(self) -> bytes | None:  # noqa: N802 - Pyro4's name
        return self._hmac_key

    @_pyroHmacKey.setter
    def _pyroHmacKey(self, value: bytes | str | None) -> None:  # noqa: N802
        if isinstance(value, str):
            value = value.encode("utf-8")
        self._connections.set_hmac_key(value or None)

    # --- hooks for subclasses (Pyro4's names) -------------------------------------

    def validateHandshake(self, conn: ClientConnection, data: Any) -> Any:  # noqa: N802
        """Override to check the client's handshake data; raise to refuse the connection."""
        return "hello"

    def clientDisconnect(self, conn: ClientConnection) -> None:  # noqa: N802
        """Override to be told when a client connection closes."""

    def annotations(self) -> dict[str, bytes]:
        """Override to add annotations to every reply."""
        return {}
    # --- the seed's loop integration (see _seedloop) ----------------------------------

    @property
    def sockets(self) -> list[socket.socket]:
        """Every socket the daemon wants watched for readability (not a connection at
        end-of-file or held back by MAX_QUEUED_JOBS_PER_CONNECTION: a select loop would spin on it)."""
        if self._closed:
            return []
        return [self._wakeup.reader, *self._connections.readable_sockets(),
                *(sock for other in self._combined for sock in other.sockets)]

    def events(self, eventsockets: Iterable[socket.socket]) -> None:
        """Handle readable sockets, as a hand-written ``select()`` loop reports them.

        Loops without write notifications get their pending output flushed here
        as far as the sockets take it; attach a watcher for real write interest.
        """
        if self._watcher is None:
            self._calls.own_loop = True
        eventsockets = list(eventsockets)
        for other in self._combined:
            theirs = set(other.sockets)
            other.events([sock for sock in eventsockets if sock in theirs])  # its deadlines run too
            eventsockets = [sock for sock in eventsockets if sock not in theirs]
        self._seed_loop.events(eventsockets)

    def requestLoop(self, loopCondition: Callable[[], bool] = _always) -> None:  # noqa: N802
        """Serve requests until ``loopCondition()`` is false or the daemon shuts down.

        A custom ``loopCondition`` is re-checked at least every POLLTIMEOUT
        seconds; with the default the loop sleeps until there is work.
        """
        served = [self, *self._combined]
        daemons = [daemon for daemon in served if isinstance(daemon, Daemon)]
        for daemon in daemons:
            daemon._calls.own_loop = True
        with SelectLoop() as loop:
            hosted = [loop.attach(item) for item in served]
            try:
                if loopCondition is _always:
                    loop.run(until=lambda: self._closed)
                else:
                    loop.run(until=lambda: self._closed or not loopCondition(), max_wait=config.POLLTIMEOUT)
            finally:
                for watcher in hosted:
                    watcher.detach()
                for daemon in daemons:
                    daemon._calls.own_loop = False

    @property
    def transportServer(self) -> "Daemon":  # noqa: N802 - Pyro4's name
        """Pyro4's socket server object: here the daemon itself, which has what
        programs use of it (``sock``, ``sockets``, ``events()``, ``locationStr``)."""
        return self

    def combine(self, other: Any) -> None:
        """Serve ``other`` from this daemon's own loop as well (Pyro4's ``combine``).

        ``other`` is another daemon or a name server's broadcast responder.
        ``requestLoop()`` then serves both, and a hand-written loop serves both
        through this daemon's ``sockets`` and ``events()``. A host loop's adapter
        is attached to each daemon instead; ``combine`` does not reach it.
        """
        if other is self or any(other is known for known in self._combined):
            raise errors.DaemonError("daemon is already combined with that one")
        self._combined.append(other)

    def shutdown(self) -> None:
        """Stop serving and close the daemon; safe from any thread, takes effect at once."""
        self.close()

    def close(self) -> None:
        """Close every socket of the daemon.

        Called from another thread, or from inside a call being served (so
        that call still gets its reply), it asks the loop to close at its next
        turn, which comes at once. From a call running in a worker, the close
        is asked for once that call has returned and its reply is on its way.
        """
        if self._closed:
            return
        if getattr(self._calls.worker_call, "running", False):
            self._calls.worker_call.close_after = True
            return
        if self._watcher is not None and (self._calls.dispatching or
                                          self._loop_thread not in (None, threading.get_ident())):
            self._close_requested = True
            self._wakeup.wake()
            return
        self._close_as_requested()  # replies that workers finished meanwhile go out first

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and self._watcher is None:
            try:
                self._close_now()
            except Exception:
                pass

    def onClose(self) -> None:  # noqa: N802
        """Override to release resources when the daemon has really closed its sockets
        (``close()`` from another thread or from inside a call happens a moment later)."""

    def _close_now(self) -> None:
        self._closed = True
        self._connections.close_all()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            if self._connections.listening:
                watcher.remove(self.sock)
            watcher.remove(self._wakeup.reader)
        self.sock.close()
        self._wakeup.close()
        if watcher is not None:
            watcher.detached()
        self._forget_loop_thread()
        if self._connections.listening and self.sock.family == getattr(socket, "AF_UNIX", None):
            path = self.locationStr[4:]
            if path and not path.startswith("\0") and os.path.exists(path):
                try:
                    os.remove(path)
                except OSError:
                    pass
        self._streams.clear()
        self._calls.close()
        with reported("Daemon.onClose"):
            self.onClose()
    # --- the hosting interface ------------------------------------------------------------

    def attach_watcher(self, watcher: Watcher) -> None:
        """Let a host loop watch this daemon; see ``pyro_loops.hosting``."""
        if self._closed:
            raise errors.DaemonError("daemon is closed")
        if self._watcher is not None:
            raise errors.DaemonError("daemon is already attached to a loop; detach it first")
        if self._open_to_all and not self._hmac_key:
            # said when serving starts, so a key set after construction counts
            log.warning("daemon bound on all interfaces (%s) without HMAC key: anyone who can reach "
                        "this machine can call its objects; set daemon._pyroHmacKey", self.locationStr)
        self._watcher = watcher
        # A watcher that tells its loop's thread knows better than the attaching thread (see hosting).
        self._event_thread = None if hasattr(watcher, "loop_thread") else threading.get_ident()
        with _serving_lock:
            _serving[id(self)] = self
        if self._connections.listening and self._connections.accept_resume_at is None:
            watcher.add(self.sock, READ)
        watcher.add(self._wakeup.reader, READ)
        for conn in self._conns.values():
            watcher.add(conn.sock, conn.interest)
        self._deadline = None
        self._update_deadline()

    def detach_watcher(self) -> None:
        """Stop being watched; sockets stay open (attach another loop to carry on)."""
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        release(watcher, self.sockets)
        self._forget_loop_thread()

    @property
    def _loop_thread(self) -> int | None:
        """The thread that runs the loop serving this daemon; None while none is known.

        The loop's thread is the one that runs it, not the one that attached it:
        the watcher's ``loop_thread`` when it knows, else the thread of the last event.
        """
        return getattr(self._watcher, "loop_thread", None) or self._event_thread

    def _forget_loop_thread(self) -> None:
        self._event_thread = None
        with _serving_lock:
            _serving.pop(id(self), None)

    def handle_event(self, sock: socket.socket, events: int) -> None:
        """The host loop says ``sock`` is ready (READ and/or WRITE). Never raises."""
        self._event_thread = _get_ident()  # a loop may run in another thread than attached it
        conn = self._lane_ready.get(sock)
        if conn is not None and events == READ and not conn.busy:
            # an idle connection's request: the call lane needs no deadline update when it did all
            try:
                if self._lane.serve(conn):
                    return
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # as guarded() does for the general path
                with reported("daemon event handling"):
                    self._connections.internal_error(conn, "daemon event handling", exc)
            self._update_deadline()
            return
        with reported("daemon event handling"):
            if sock is self.sock and self._connections.listening:
                self._connections.accept()
            elif sock is self._wakeup.reader:
                self._drain_wakeups()
            else:
                conn = self._conns.get(sock)
                if conn is None:
                    return  # a stale notification for a socket already closed
                self._connections.guarded(conn, "daemon event handling", self._connections.serve_ready,
                                          conn, events)
        self._update_deadline()

    def handle_deadline(self) -> None:
        """The deadline the daemon asked for is due. Never raises."""
        with reported("daemon deadline handling"):
            self._deadline = None
            if self._close_requested:
                self._close_as_requested()
                return
            now = time.monotonic()
            self._connections.run_due(now)
            self._streams.expire(now)
        self._update_deadline()

    def next_deadline(self) -> float | None:
        """When ``handle_deadline`` should next run (``time.monotonic()``), or None."""
        return self._deadline

    def _update_deadline(self) -> None:
        if self._closed:
            return
        if self._close_requested:
            when: float | None = time.monotonic()
        else:
            due = (self._connections.next_due(), self._streams.next_deadline())
            when = min((when for when in due if when is not None), default=None)
        if when != self._deadline:
            self._deadline = when
            if self._watcher is not None:
                self._watcher.set_deadline(when)

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of connections accepted from now on (None: plaintext).

        Given as ``Daemon(ssl_context=...)``, or made from the ``SSL_*`` items when
        ``config.SSL`` is on. Setting it on a running daemon (say, to renew a
        certificate) applies to new connections; open ones keep theirs.
        """
        return self._connections.ssl_context

    @ssl_context.setter
    def ssl_context(self, context: ssl.SSLContext | None) -> None:
        self._connections.ssl_context = context

    # --- the wakeup socket and closing ---------------------------------------------------

    def _drain_wakeups(self) -> None:
        self._wakeup.drain()
        if self._close_requested:
            self._close_as_requested()
            return
        self._calls.run_loop_jobs()

    def _close_as_requested(self) -> None:
        """Close at the loop's turn; results that workers finished before the request go out first."""
        self._calls.run_loop_jobs()
        self._close_now()

    def _connection_closed(self, conn: ClientConnection) -> None:
        """The socket side is closing ``conn``: the hook is told (while the socket still
        knows its peer, as in Pyro4), then its streams, session instances and tracked
        resources go."""
        with reported("clientDisconnect"):
            self.clientDisconnect(conn)
        self._streams.orphan(conn, time.monotonic())
        for instance in conn.pyroInstances.values():
            closer = getattr(instance, "_pyroClose", None)
            if callable(closer):
                with reported("_pyroClose of a session instance"):
                    closer()
        for resource in list(conn.tracked_resources):  # after the hook, which may still list them
            with reported("close() of a tracked resource"):
                resource.close()
        conn.tracked_resources.clear()
        if not self._connections.listening:
            self.close()  # its one connection is gone

    # --- misc --------------------------------------------------------------------------

    def _servertype_text(self) -> str:
        workers = self._calls.workers.threads if self._calls.workers else 0
        return f"<pyro_loops {self._calls.servertype} daemon on {self.locationStr}; {workers} workers>"

    def __repr__(self) -> str:
        return f"<pyro_loops.Daemon at 0x{id(self):x}; {self.locationStr}; {len(self.objectsById)} objects>"

    @staticmethod
    def serveSimple(objects: dict, host: str | None = None, port: int = 0,  # noqa: N802
                    daemon: "Daemon | None" = None, ns: bool = True, verbose: bool = True) -> None:
        """Register ``{object: name}`` pairs, optionally with the name server, and serve."""
        if daemon is None:
            daemon = Daemon(host, port)
        with daemon:
            nameserver = None
            if ns:
                nameserver = locate_ns(None, None, True, None, Proxy)
            for obj, name in objects.items():
                if nameserver is not None and name:
                    uri = daemon.register(obj, name)
                    nameserver.register(name, uri)
                else:
                    uri = daemon.register(obj, name or None)
                if verbose:
                    print(f"Object {obj!r}:\n    uri = {uri}" + (f"\n    name = {name}" if name and ns else ""))
            if nameserver is not None:
                nameserver._pyroRelease()
            if verbose:
                print("Pyro daemon running.", flush=True)
            daemon.requestLoop()
