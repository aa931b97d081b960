"""The Daemon: publishes objects and serves calls from whatever loop hosts it.

The daemon owns its sockets, per-connection buffers and the object registry.
It never blocks: sockets are non-blocking, a half-received message waits in
its connection's buffer, a large reply drains as the socket takes it. Which
loop drives it is not its business: the host loop attaches a watcher (see
``pyro_loops.hosting``) and reports readiness; ``requestLoop`` is just the built-in
select loop doing the same.
"""

from __future__ import annotations

import collections
import errno
import functools
import inspect
import logging
import os
import select
import socket
import ssl
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterable

from . import errors, socketutil
from ._expose import (class_name, expose, get_exposed_members, reset_metadata_cache)
from .hosting import READ, WRITE, Watcher, log, release, report_error, reported
from ._calls import CallHandling
from ._connection import ClientConnection
from ._deadlines import KeyedHeap, SizeRanking
from ._eventloop import SelectLoop
from ._protocol import ServerProtocol
from ._ratelog import RateLimitedLog
from ._resolve import locate_ns
from ._serving import serving as _serving, serving_lock as _serving_lock  # under the names the body uses
from ._streams import StreamRegistry
from ._tls import TLSError, server_context_from_config
from ._transport import tls_transport
from ._uri import URI
from ._wakeup import Wakeup
from ._workers import JobQuota, WorkerPool
from .configuration import config
from .constants import DAEMON_NAME
from .proxy import Proxy

_RECV_SIZE = 64 * 1024  # larger requests allocate through mmap on every recv: several times slower
_SEND_BUDGET = 4 * 1024 * 1024     # bytes written per writable event, for fairness
_ACCEPT_BUDGET = 64                # connections accepted per readable event
_OUTPUT_HIGH_WATER = 1024 * 1024   # stop reading a connection whose replies pile up
_ACCEPT_BACKOFF = (0.1, 1.0)       # seconds accepting pauses when out of descriptors: first, most
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_HANDSHAKE = "handshake"           # kinds of per-connection deadline in Daemon._timers
_HALF_FRAME = "half frame"


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
        return self.daemon._next_stream_item(streamId)

    def close_stream(self, streamId: str) -> None:
        self.daemon._streams.close(streamId)


def _always() -> bool:
    return True


class Daemon(CallHandling):
    """Publishes objects to remote callers; see the module docstring."""

    def __init__(self, host: str | None = None, port: int = 0, unixsocket: str | None = None,
                 nathost: str | None = None, natport: int | None = None,
                 interface: type = DaemonObject, ssl_context: ssl.SSLContext | None = None) -> None:
        if host is None:
            host = config.HOST
        if nathost is None:
            nathost = config.NATHOST
        if natport is None:
            natport = config.NATPORT or None
        self._hmac_key: bytes | None = None
        if ssl_context is None and config.SSL:
            ssl_context = server_context_from_config(config)
        self.ssl_context = ssl_context
        if nathost and unixsocket:
            raise ValueError("cannot use nathost together with unixsocket")
        if natport is not None and not nathost:
            raise ValueError("must provide natport with nathost")
        socketutil.check_port(natport, "natport")
        self.sock, self.locationStr = self._bind(host, port, unixsocket)
        bound_port = None if unixsocket else self.sock.getsockname()[1]
        self.natLocationStr: str | None = None
        if nathost:
            nat_port = natport or bound_port
            self.natLocationStr = f"[{nathost}]:{nat_port}" if ":" in nathost else f"{nathost}:{nat_port}"
        self.objectsById: dict[str, Any] = {}
        self._conns: dict[socket.socket, ClientConnection] = {}
        self._wakeup = Wakeup()  # workers hand results to the loop through it
        self._loop_jobs: collections.deque = collections.deque()  # (conn, job) posted by workers
        self._jobs_after_close = False  # closed: posted jobs run at once (their connections are closed)
        self._soon: set[ClientConnection] = set()
        self._tls_waiting: set[ClientConnection] = set()  # a handshake step deferred to the next pass
        self._tls_steps = config.SSL_HANDSHAKES_PER_WAKEUP  # left in this pass
        # per-connection deadlines: (_HANDSHAKE or _HALF_FRAME, conn) -> time.monotonic() when due
        self._timers: KeyedHeap[tuple[str, ClientConnection]] = KeyedHeap()
        # bytes each connection buffers (input not yet messages, replies not yet sent)
        self._input: SizeRanking[ClientConnection] = SizeRanking()
        self._output: SizeRanking[ClientConnection] = SizeRanking()
        self._streams = StreamRegistry()
        self._single_instances: dict[type, Any] = {}
        self._watcher: Watcher | None = None
        self._deadline: float | None = None
        self._event_thread: int | None = None  # the thread of the last event, or the attaching one
        self._idle_check_at: float | None = None
        self._closed = False
        self._limited_log = RateLimitedLog(log)  # for what peers can make the daemon say again and again
        self._accept_backoff = 0.0  # > 0 while accept() fails for want of descriptors
        self._accept_resume_at: float | None = None  # accepting is paused until then
        self._close_requested = False
        self._dispatching = 0
        self._worker_call = threading.local()  # in a worker running a call: close() waits for its reply
        self._write_waiter: threading.Thread | None = None
        self._workers: WorkerPool | None = None
        self._jobs: JobQuota[ClientConnection] = JobQuota()   # oneway jobs per connection, MAX_QUEUED_JOBS_PER_CONNECTION
        self.coroutine_runner: Callable[[Any, Callable[[Any, BaseException | None], None]], None] | None = None
        self._servertype = config.SERVERTYPE
        if self._servertype not in ("thread", "multiplex"):
            raise errors.PyroError("invalid server type: " + str(self._servertype))
        self.register(interface(self), DAEMON_NAME)
        self._open_to_all = host in ("", "0.0.0.0", "::") and not unixsocket

    # --- binding ---------------------------------------------------------------------

    def _bind(self, host: str, port: int, unixsocket: str | None) -> tuple[socket.socket, str]:
        if unixsocket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if not unixsocket.startswith("\0") and os.path.exists(unixsocket):
                os.remove(unixsocket)
            socketutil.bind(sock, unixsocket)
            location = "./u:" + unixsocket
        else:
            family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(config.PREFER_IP_VERSION, socket.AF_UNSPEC)
            if ":" in host:
                family = socket.AF_INET6
            socketutil.check_port(port)
            infos = socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
            af, _, _, _, address = infos[0]
            sock = socket.socket(af, socket.SOCK_STREAM)
            if config.SOCK_REUSE:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            socketutil.bind(sock, address)
            bound = sock.getsockname()
            shown = host or bound[0]
            location = f"[{shown}]:{bound[1]}" if ":" in shown else f"{shown}:{bound[1]}"
        sock.listen(100)
        sock.setblocking(False)
        return sock, location

    def _serves(self, uri: URI) -> bool:
        if self._closed:
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
        self._hmac_key = value or None
        for conn in self._conns.values():
            conn.protocol.hmac_key = self._hmac_key

    # --- hooks for subclasses (Pyro4's names) -------------------------------------

    def validateHandshake(self, conn: ClientConnection, data: Any) -> Any:  # noqa: N802
        """Override to check the client's handshake data; raise to refuse the connection."""
        return "hello"

    def clientDisconnect(self, conn: ClientConnection) -> None:  # noqa: N802
        """Override to be told when a client connection closes."""

    def annotations(self) -> dict[str, bytes]:
        """Override to add annotations to every reply."""
        return {}

    # --- the seed's loop integration -------------------------------------------------

    @property
    def sockets(self) -> list[socket.socket]:
        """Every socket the daemon wants watched for readability (not a connection at
        end-of-file or held back by MAX_QUEUED_JOBS_PER_CONNECTION: a select loop would spin on it)."""
        if self._closed:
            return []
        listening = [self.sock] if self._accept_resume_at is None else []
        return [*listening, self._wakeup.reader, *(sock for sock, conn in self._conns.items()
                                            if not (conn.eof or self._jobs.is_full(conn)))]

    def events(self, eventsockets: Iterable[socket.socket]) -> None:
        """Handle readable sockets, as a hand-written ``select()`` loop reports them.

        Loops without write notifications get their pending output flushed here
        as far as the sockets take it; attach a watcher for real write interest.
        """
        for sock in list(eventsockets):
            self.handle_event(sock, READ)
        for sock in self._output_pending():
            self.handle_event(sock, WRITE)
        if self._deadline is not None and self._deadline <= time.monotonic():
            self.handle_deadline()
        if self._watcher is None:
            self._wake_when_writable(self._output_pending())

    def _output_pending(self) -> list[socket.socket]:
        return [c.sock for c in self._conns.values() if c.out or c.transport.wants_write]

    def _wake_when_writable(self, socks: list[socket.socket]) -> None:
        """For loops that only watch readability: a short-lived thread waits until
        one of ``socks`` can take more output, then makes the wakeup socket
        readable so the loop calls ``events()`` again and the output drains."""
        if not socks or self._write_waiter is not None:
            return
        poller = select.poll()
        for sock in socks:
            poller.register(sock, select.POLLOUT)

        def wait() -> None:
            poller.poll(max(1, int(config.HALF_FRAME_TIMEOUT * 1000)))
            self._write_waiter = None  # before the wakeup, so the next events() may start another
            self._wake()

        self._write_waiter = threading.Thread(target=wait, daemon=True, name="pyro_loops-write-waiter")
        self._write_waiter.start()

    def requestLoop(self, loopCondition: Callable[[], bool] = _always) -> None:  # noqa: N802
        """Serve requests until ``loopCondition()`` is false or the daemon shuts down.

        A custom ``loopCondition`` is re-checked at least every POLLTIMEOUT
        seconds; with the default the loop sleeps until there is work.
        """
        with SelectLoop() as loop:
            hosted = loop.attach(self)
            try:
                loop.run(until=lambda: self._closed or not loopCondition(),
                         max_wait=None if loopCondition is _always else config.POLLTIMEOUT)
            finally:
                hosted.detach()

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
        if getattr(self._worker_call, "running", False):
            self._worker_call.close_after = True
            return
        if self._watcher is not None and (self._dispatching or
                                          self._loop_thread not in (None, threading.get_ident())):
            self._close_requested = True
            self._wake()
            return
        self._close_now()

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
        for conn in list(self._conns.values()):
            conn.close_reason = "the daemon closed"
            self._receive_at_close(conn)
            self._guarded(conn, "closing the daemon", self._refuse_queued, conn)
            self._flush_at_close(conn)
            self._close_conn(conn, None)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.remove(self.sock)
            watcher.remove(self._wakeup.reader)
        self.sock.close()
        self._wakeup.close()
        if watcher is not None:
            watcher.detached()
        self._forget_loop_thread()
        if self._workers is not None:
            self._workers.close()
        if self.sock.family == getattr(socket, "AF_UNIX", None):
            path = self.locationStr[4:]
            if path and not path.startswith("\0") and os.path.exists(path):
                try:
                    os.remove(path)
                except OSError:
                    pass
        self._streams.clear()
        self._jobs_after_close = True
        self._run_loop_jobs()  # results that arrived meanwhile: their drop is logged
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
        if self._accept_resume_at is None:
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
        self._event_thread = threading.get_ident()  # a loop may run in another thread than attached it
        with reported("daemon event handling"):
            if sock is self.sock:
                self._accept()
            elif sock is self._wakeup.reader:
                self._drain_wakeups()
            else:
                conn = self._conns.get(sock)
                if conn is None:
                    return  # a stale notification for a socket already closed
                self._guarded(conn, "daemon event handling", self._serve_ready, conn, events)
        self._update_deadline()

    def _serve_ready(self, conn: ClientConnection, events: int) -> None:
        if events & WRITE:
            self._flush(conn)
        if events & READ and not conn.closed and not self._jobs.is_full(conn):
            self._read(conn)

    def _guarded(self, conn: ClientConnection, where: str, work: Callable[..., None], *args: Any) -> None:
        """Run ``work(*args)`` for ``conn``; an error raised inside the daemon closes
        that connection at once (as Pyro4 does), so its client is never left
        waiting for a reply that no code path will send.

        Not ``hosting.reported``: besides reporting, it must close the
        connection, naming the error's type in the reason."""
        try:
            work(*args)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # any other error, even from a hook such as annotations()
            report_error(exc, where)
            self._close_conn(conn, f"internal error in {where}: {type(exc).__name__}")

    def handle_deadline(self) -> None:
        """The deadline the daemon asked for is due. Never raises."""
        with reported("daemon deadline handling"):
            self._deadline = None
            if self._close_requested:
                self._close_as_requested()
                return
            now = time.monotonic()
            if self._accept_resume_at is not None and now >= self._accept_resume_at:
                self._resume_accepting()
            for conn in list(self._soon):
                self._soon.discard(conn)
                self._guarded(conn, "daemon request handling", self._process, conn)
            self._tls_steps = config.SSL_HANDSHAKES_PER_WAKEUP  # a new pass
            waiting, self._tls_waiting = self._tls_waiting, set()
            for conn in waiting:
                self._guarded(conn, "TLS handshake", self._read, conn)
            for kind, conn in list(self._timers.pop_due(now)):
                self._timer_due(kind, conn)
            idle_timeout = config.idle_timeout()
            if idle_timeout and self._idle_check_at is not None and now >= self._idle_check_at:
                for conn in list(self._conns.values()):
                    if not conn.busy and now - conn.last_active >= idle_timeout:
                        self._close_conn(conn, f"idle for {idle_timeout} s")
                self._idle_check_at = None
            self._streams.expire(now)
        self._update_deadline()

    def next_deadline(self) -> float | None:
        """When ``handle_deadline`` should next run (``time.monotonic()``), or None."""
        return self._deadline

    def _update_deadline(self) -> None:
        if self._closed:
            return
        when = None
        if self._soon or self._tls_waiting or self._close_requested:
            when = time.monotonic()
        else:
            first = self._timers.first()
            candidates = [None if first is None else first[1], self._streams.next_deadline()]
            idle_timeout = config.idle_timeout()
            if idle_timeout and self._conns:
                if self._idle_check_at is None:
                    self._idle_check_at = time.monotonic() + idle_timeout / 2
                candidates.append(self._idle_check_at)
            when = min((due for due in candidates if due is not None), default=None)
        if self._accept_resume_at is not None:
            when = self._accept_resume_at if when is None else min(when, self._accept_resume_at)
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
        return self._ssl_context

    @ssl_context.setter
    def ssl_context(self, context: ssl.SSLContext | None) -> None:
        self._ssl_context = context

    def _may_step_tls(self, conn: ClientConnection) -> bool:
        """Whether ``conn`` may take a TLS handshake step in this loop pass (SSL_HANDSHAKES_PER_WAKEUP).

        When not, it is resumed by the next ``handle_deadline``, which the
        daemon asks for at once. A hand-written loop without a watcher gets no
        bound, as with MAX_CALLS_PER_WAKEUP.
        """
        if self._watcher is None or self._tls_steps > 0:
            self._tls_steps -= 1
            return True
        self._tls_waiting.add(conn)
        return False

    def _handshake_done(self, conn: ClientConnection) -> None:
        self._timers.discard((_HANDSHAKE, conn))

    def _timer_due(self, kind: str, conn: ClientConnection) -> None:
        """A per-connection deadline from ``self._timers`` has passed."""
        if kind == _HANDSHAKE:
            reason = f"no handshake within HANDSHAKE_TIMEOUT ({config.HANDSHAKE_TIMEOUT} s)"
            if not conn.closed and not conn.protocol.established:
                if conn.transport.handshaking:
                    reason = f"TLS handshake not done within HANDSHAKE_TIMEOUT ({config.HANDSHAKE_TIMEOUT} s)"
                else:
                    self._send(conn, conn.protocol.connect_fail_bytes(reason))
                self._close_conn(conn, reason)
        elif conn.partial_since is not None:
            self._close_conn(conn, f"message incomplete after {config.HALF_FRAME_TIMEOUT} s (HALF_FRAME_TIMEOUT)")

    # --- sockets -----------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BUDGET):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                self._accept_backoff = 0.0  # nobody waits: whatever the shortage was, it is over
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting(exc)
                else:  # say, a connection reset while queued: keep serving the others
                    self._limited_log.log(logging.WARNING, "accept failed", "accept failed: %s", exc)
                return
            if self._accept_backoff:
                self._limited_log.log(logging.WARNING, "accept resumed", "accepting connections again")
                self._accept_backoff = 0.0
            if len(self._conns) >= config.MAX_CONNECTIONS:
                self._limited_log.log(logging.WARNING, "MAX_CONNECTIONS", "connection from %s refused: "
                                "MAX_CONNECTIONS (%d) reached", addr, config.MAX_CONNECTIONS)
                sock.close()
                continue
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if config.SOCK_NODELAY:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = ClientConnection(sock, addr, ServerProtocol(config.MAX_MESSAGE_SIZE, self._hmac_key))
            if self.ssl_context is not None:
                conn.transport = tls_transport(sock, self.ssl_context, True,
                                               may_step=functools.partial(self._may_step_tls, conn))
            self._conns[sock] = conn
            if config.HANDSHAKE_TIMEOUT > 0:
                self._timers.set((_HANDSHAKE, conn), time.monotonic() + config.HANDSHAKE_TIMEOUT)
            if self._watcher is not None:
                self._watcher.add(sock, READ)
            log.debug("accepted connection from %s", addr)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors (or memory): the pending connection stays in the
        listen queue and the listening socket stays readable, so retrying at
        once would spin the loop. Stop watching it for a back-off that doubles
        while the shortage lasts; one log line per episode."""
        low, high = _ACCEPT_BACKOFF
        if not self._accept_backoff:
            self._limited_log.log(logging.WARNING, "accept paused", "accept failed: %s; not accepting "
                                  "connections until descriptors free up (retrying after %g s, then up "
                                  "to every %g s)", exc, low, high)
        self._accept_backoff = min(high, self._accept_backoff * 2 or low)
        self._accept_resume_at = time.monotonic() + self._accept_backoff
        if self._watcher is not None:
            self._watcher.modify(self.sock, 0)

    def _resume_accepting(self) -> None:
        self._accept_resume_at = None
        if self._watcher is not None:
            self._watcher.modify(self.sock, READ)
        self._accept()  # one try now: with nobody waiting, no readiness would come to end the episode

    def _read(self, conn: ClientConnection) -> None:
        if conn.eof:
            return  # a stale notification: nothing more comes from this client
        if conn.busy:
            # A client that hung up mid-call is noticed now; anything else waits
            # until the call is done (per-connection order), unwatched, or
            # level-triggered loops would fire again and again.
            self._notice_hangup(conn)
            if not conn.closed:
                conn.read_paused = True
                self._set_interest(conn)
            return
        reader = conn.protocol.reader
        # a large payload under way: straight into its buffer (TLS hands over plaintext of its own sizes)
        view = None if conn.transport.tls else reader.receive_into()
        try:
            if view is not None:
                with view:
                    count = conn.sock.recv_into(view)
            else:
                data = conn.transport.recv(_RECV_SIZE)
                count = len(data)
        except (BlockingIOError, InterruptedError):
            self._set_interest(conn)  # TLS may have records of its own to send
            return
        except TLSError as exc:
            self._close_conn(conn, str(exc))
            return
        except OSError as exc:
            self._close_conn(conn, f"receive failed: {exc}")
            return
        if not count:
            self._end_of_stream(conn)
            self._process(conn)
            return
        conn.last_active = time.monotonic()
        if view is not None:
            reader.received(count)
        else:
            conn.protocol.receive_data(data)
        if conn.transport.ended:  # TLS close_notify right behind the data, the socket left open
            self._end_of_stream(conn)
        self._process(conn)

    def _notice_hangup(self, conn: ClientConnection) -> None:
        """Peek whether the client of a running call hung up (nothing is read meanwhile).

        A reset closes the connection: the reply has nowhere to go. An end of
        stream only marks it: the client may have half-closed and still wait
        for its replies, so they are sent; the connection closes after them.
        """
        try:
            if conn.sock.recv(1, socket.MSG_PEEK):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close_conn(conn, f"connection lost while its call was running: {exc}")
            return
        self._end_of_stream(conn)

    def _end_of_stream(self, conn: ClientConnection) -> None:
        """The client closed its sending end: what it sent is still executed and answered."""
        if conn.eof:
            return
        conn.eof = True
        if conn.busy:
            log.info("client %s disconnected or half-closed while its call was running: the reply "
                     "is sent all the same, and is lost unless the client only half-closed", conn.addr)
        self._set_interest(conn)

    def _process(self, conn: ClientConnection) -> None:
        """Handle the complete messages buffered for ``conn``, a bounded number at a time."""
        budget = config.MAX_CALLS_PER_WAKEUP if self._watcher is not None else sys.maxsize
        drained = False
        while not conn.closed and not conn.busy:
            if len(conn.out) > _OUTPUT_HIGH_WATER:
                break  # the peer is not reading its replies: wait for the output to drain
            if self._jobs.is_full(conn):
                break  # its worker jobs pile up: wait for them (see _submit_job)
            if budget <= 0:
                self._soon.add(conn)
                break
            budget -= 1
            if conn.decoded is not None:  # comes before anything the client sent after it
                msg, serializer, request = conn.decoded
                conn.decoded = None
                self._dispatch(conn, msg, serializer, request)
                continue
            event = conn.protocol.next_event()
            if event is None:
                drained = True
                break
            self._handle(conn, event)
        if drained and conn.eof and not conn.out:
            # every complete request of a client that closed its end is answered
            self._close_conn(conn, "client closed its end in the middle of a message"
                             if conn.protocol.partial else None)
            return
        self._track_input(conn)
        self._track_partial(conn)
        if not conn.closed:
            self._set_interest(conn)

    def _track_input(self, conn: ClientConnection) -> None:
        """Count ``conn``'s buffered input towards MAX_BUFFERED_INPUT and enforce it.

        Past the bound the connection buffering the most is closed (its peer
        sees the connection end, as with MAX_MESSAGE_SIZE), again until the
        total fits. Not back-pressure: a connection that is merely not read
        keeps its buffer until HALF_FRAME_TIMEOUT, and meanwhile the next
        honest message would find the budget still full. Closing the largest
        frees memory at once and spares small calls, which are never the
        largest while something big is being sent.
        """
        if not conn.closed:
            self._input.count(conn, conn.protocol.reader.buffered)
        self._enforce_total(self._input, "MAX_BUFFERED_INPUT", "buffered the most input")

    def _track_output(self, conn: ClientConnection) -> None:
        """Count ``conn``'s unsent replies towards MAX_BUFFERED_OUTPUT and enforce it.

        MAX_OUTPUT_BUFFER bounds one connection; without a total, many clients
        that ask for large replies and never read them make the daemon hold
        MAX_CONNECTIONS of those. Past the bound the connection holding the
        most unsent bytes is closed (its undelivered replies are named in the
        closing log line), as for MAX_BUFFERED_INPUT.
        """
        if not conn.closed:
            self._output.count(conn, len(conn.out))
        self._enforce_total(self._output, "MAX_BUFFERED_OUTPUT", "held the most unsent replies")

    def _enforce_total(self, ranking: SizeRanking[ClientConnection], item: str, what: str) -> None:
        limit = getattr(config, item)
        while limit and ranking.total > limit and (largest := ranking.largest()) is not None:
            victim, size = largest
            self._close_conn(victim, f"{item} ({limit} bytes) exceeded by all connections "
                                     f"together: this one {what} ({size} bytes)")

    def _track_partial(self, conn: ClientConnection) -> None:
        """Start or stop the half-frame deadline: only while the daemon waits for the client."""
        waiting_for_client = not (conn.closed or conn.busy or conn in self._soon or self._jobs.is_full(conn))
        if waiting_for_client and conn.protocol.partial:
            if conn.partial_since is None:
                conn.partial_since = time.monotonic()
                self._timers.set((_HALF_FRAME, conn), conn.partial_since + config.HALF_FRAME_TIMEOUT)
        elif conn.partial_since is not None:
            conn.partial_since = None
            self._timers.discard((_HALF_FRAME, conn))

    def _set_interest(self, conn: ClientConnection) -> None:
        if (conn.eof or conn.busy and conn.read_paused or len(conn.out) > _OUTPUT_HIGH_WATER
                or self._jobs.is_full(conn)):
            events = 0
        else:
            events = READ
            conn.read_paused = False
        if conn.out or conn.transport.wants_write:
            events |= WRITE
        if events != conn.interest:
            conn.interest = events
            if self._watcher is not None:
                self._watcher.modify(conn.sock, events)

    def _send(self, conn: ClientConnection, data: bytes) -> None:
        """Queue reply bytes and write as much as the socket takes now."""
        if conn.closed:
            return
        if conn.out:
            conn.out += data
        else:
            try:
                sent = conn.transport.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except (OSError, TLSError) as exc:
                self._close_conn(conn, f"send failed: {exc}")
                return
            if sent < len(data):
                conn.out += memoryview(data)[sent:]
        if len(conn.out) > config.MAX_OUTPUT_BUFFER:
            self._close_conn(conn, f"more than MAX_OUTPUT_BUFFER ({config.MAX_OUTPUT_BUFFER} bytes) of replies "
                                   "unread by the client")
        else:
            self._set_interest(conn)
            if conn.out:
                self._track_output(conn)

    def _flush(self, conn: ClientConnection) -> None:
        sent_total = 0
        try:
            conn.transport.flush()
        except OSError as exc:
            self._close_conn(conn, f"send failed: {exc}")
            return
        while conn.out and sent_total < _SEND_BUDGET:
            try:
                sent = conn.transport.send(conn.out)
            except (BlockingIOError, InterruptedError):
                break
            except (OSError, TLSError) as exc:
                self._close_conn(conn, f"send failed: {exc}")
                return
            del conn.out[:sent]
            sent_total += sent
        self._output.count(conn, len(conn.out))
        conn.last_active = time.monotonic()
        if not conn.out and not conn.busy:
            self._process(conn)  # input held back while output piled up
        else:
            self._set_interest(conn)

    def _receive_at_close(self, conn: ClientConnection) -> None:
        """Take what the client sent but the daemon had not read yet, say behind a
        running call: those requests get answered or logged too, not lost with the
        socket. Bounded by what the kernel holds for the socket (its receive buffer)."""
        if conn.eof:
            return
        try:
            budget = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            while budget > 0 and (data := conn.transport.recv(_RECV_SIZE)):
                conn.protocol.receive_data(data)
                budget -= len(data)
        except (OSError, TLSError):  # nothing (more) waiting, or the connection is gone anyway
            return

    def _flush_at_close(self, conn: ClientConnection) -> None:
        """Write what the socket takes now of replies already made; log what it did not take."""
        while conn.out and not conn.closed:
            try:
                sent = conn.transport.send(conn.out)
            except (OSError, TLSError):  # full or gone: what is left is logged below
                break
            del conn.out[:sent]
        if conn.out:
            log.info("%d bytes of replies to %s dropped: %s", len(conn.out), conn.addr, conn.close_reason)

    def _close_conn(self, conn: ClientConnection, reason: str | None) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.close_reason = conn.close_reason or reason or "the client disconnected"
        if reason:
            # keyed by the kind of reason (the text before any detail): a flood
            # of bad peers must not flood the log
            self._limited_log.log(logging.INFO, "closing: " + reason.split(":", 1)[0],
                            "closing connection from %s: %s", conn.addr, reason)
        self._conns.pop(conn.sock, None)
        self._soon.discard(conn)
        self._tls_waiting.discard(conn)
        self._timers.discard((_HANDSHAKE, conn))
        self._timers.discard((_HALF_FRAME, conn))
        self._input.count(conn, 0)
        self._output.count(conn, 0)
        if self._watcher is not None:
            self._watcher.remove(conn.sock)
        conn.transport.close()  # TLS: close_notify, if the socket takes it now
        try:
            conn.sock.close()
        except OSError:
            pass
        self._streams.orphan(conn, time.monotonic())
        for instance in conn.pyroInstances.values():
            closer = getattr(instance, "_pyroClose", None)
            if callable(closer):
                with reported("_pyroClose of a session instance"):
                    closer()
        with reported("clientDisconnect"):
            self.clientDisconnect(conn)

    def _wake(self) -> None:
        self._wakeup.wake()

    def _drain_wakeups(self) -> None:
        self._wakeup.drain()
        if self._close_requested:
            self._close_as_requested()
            return
        self._run_loop_jobs()

    def _close_as_requested(self) -> None:
        """Close at the loop's turn; results that workers finished before the request go out first."""
        self._run_loop_jobs()
        self._close_now()

    def _run_loop_jobs(self) -> None:
        while self._loop_jobs:
            try:
                conn, job = self._loop_jobs.popleft()
            except IndexError:  # taken by another thread meanwhile (only after close)
                return
            self._guarded(conn, "daemon job from a worker", job)

    def _post(self, conn: ClientConnection, job: Callable[[], None]) -> None:
        """Run ``job`` for ``conn`` in the loop's thread soon; safe from any thread.

        Once the daemon has closed, no loop runs jobs any more: the job runs
        here and now, where it finds its connection closed and logs the drop.
        """
        self._loop_jobs.append((conn, job))
        if self._jobs_after_close:
            self._run_loop_jobs()
        else:
            self._wake()

    def _finish_call(self, conn: ClientConnection, data: bytes | None) -> None:
        conn.busy = False
        if conn.closed:
            if data is not None:
                self._log_dropped_reply(conn)
            return
        if data is not None:
            self._send(conn, data)
        if conn.protocol.partial or conn.eof:
            # More requests wait (or the connection closes once answered). Not run from here: this runs in the callback
            # of the wakeup socket that every worker shares, and a call that
            # starts a nested loop would keep that socket unwatched meanwhile.
            self._soon.add(conn)
        elif not conn.closed:
            self._set_interest(conn)

    def _submit_job(self, conn: ClientConnection, job: Callable[[], None], size: int) -> None:
        """Run a oneway call's ``job`` (``size`` payload bytes) in the pool, counted against the quotas.

        A connection with MAX_QUEUED_JOBS_PER_CONNECTION jobs queued or running is
        not read (nor are its buffered messages handled) until half of them have
        run: the client's sends block in its own socket buffers, the pool's queue
        stays short for everyone else, and nothing the client sent is dropped.
        Likewise every connection with jobs pending while all jobs together
        hold more than MAX_QUEUED_JOB_BYTES of payload.
        """
        limit, total_limit = config.MAX_QUEUED_JOBS_PER_CONNECTION, config.MAX_QUEUED_JOB_BYTES
        bound = self._jobs.started(conn, limit, size, total_limit)
        if bound == "count":
            self._limited_log.log(logging.INFO, "MAX_QUEUED_JOBS_PER_CONNECTION",
                                  "connection from %s has MAX_QUEUED_JOBS_PER_CONNECTION (%d) worker jobs "
                                  "queued: not reading from it until half of them have run", conn.addr, limit)
        elif bound == "total":
            self._limited_log.log(logging.INFO, "MAX_QUEUED_JOB_BYTES",
                                  "worker jobs of all connections hold more than MAX_QUEUED_JOB_BYTES (%d): not "
                                  "reading from %s, which has jobs queued, until half of that has run",
                                  total_limit, conn.addr)

        def run() -> None:
            try:
                job()
            finally:
                self._post(conn, lambda: self._job_finished(conn, size))

        self._pool().submit(run)

    def _job_finished(self, conn: ClientConnection, size: int) -> None:
        for owner in self._jobs.finished(conn, config.MAX_QUEUED_JOBS_PER_CONNECTION, size,
                                         config.MAX_QUEUED_JOB_BYTES):
            if not owner.closed:
                self._soon.add(owner)  # its buffered messages first, then reading again (_process)

    def _pool(self) -> WorkerPool:
        if self._workers is None:
            self._workers = WorkerPool(config.THREADPOOL_SIZE)
        return self._workers

    # --- misc --------------------------------------------------------------------------

    def _servertype_text(self) -> str:
        workers = self._workers.threads if self._workers else 0
        return f"<pyro_loops {self._servertype} daemon on {self.locationStr}; {workers} workers>"

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
