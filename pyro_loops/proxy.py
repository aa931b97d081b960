"""The client side: ``Proxy`` for remote objects, and ``batch``.

A proxy is an ordinary blocking client (it runs in the caller's thread, not in
a loop). One call is in flight per connection, serialized by a lock, so a
proxy may be shared between threads. What goes on the wire and what a reply
means is decided by the client role of ``_protocol`` (the same rules the loop
client follows); this module is the blocking socket loop around it.
"""

from __future__ import annotations

import base64
import copy
import select
import socket
import ssl
import threading
import time
import uuid
from contextlib import nullcontext
from typing import Any, Callable, Iterator

from . import _protocol, _wire, errors
from ._expose import is_private_attribute
from ._resolve import resolve
from ._serializers import ExceptionWrapper, get_serializer, register_class_to_dict, register_dict_to_class
from ._serving import daemon_served_by_current_thread
from ._tls import TLSError, client_context_from_config
from ._transport import receive_blocking, sendall_buffers
from ._uri import URI
from ._workers import current_pool
from .configuration import config
from .context import _facts as _context_facts  # the ContextVar itself: one C call to read it
from .context import current_context
from .futures import FutureResult

#: makes the request of one call on a connection, given the annotations to send with it
_MakeRequest = Callable[[_protocol.ClientProtocol, "dict[str, bytes]"], _protocol.Request]

_RECV_SIZE = 64 * 1024  # larger requests allocate through mmap on every recv: several times slower
#: a connection's buffer for the replies of its quick calls (larger replies go on to the general path)
_QUICK_BUFFER = 4096
#: seconds after a call started within which the next one skips the freshness poll (see ``_Lane``)
_FRESH_WINDOW = 0.002
#: what ``Proxy.__quick`` returns when it sent nothing: the general path makes the call
_DECLINED = object()

#: attribute names that live on the proxy itself, never on the remote object
_LOCAL_ATTRS = frozenset((
    "_pyroUri", "_pyroConnection", "_pyroSeq", "_pyroTimeout", "_pyroMaxRetries", "_pyroHmacKey",
    "_pyroHandshake", "_pyroSerializer", "_pyroMethods", "_pyroAttrs", "_pyroOneway",
    "_pyroRawWireResponse", "_pyroLock", "_pyroResolved", "_pyroProtocol", "_pyroMetaKnown",
    "_pyroHmacKeyBytes", "_pyroPoller", "_pyroSslContext", "_pyroConnectedSocket", "_pyroAsyncCalls",
    "_pyroLane"))

#: dunder names a proxy never forwards, whatever the metadata says: Python's own
#: protocols (copying, pickling) ask for them and must get the local answer
_LOCAL_DUNDERS = frozenset(("__getnewargs__", "__getnewargs_ex__", "__getinitargs__"))


def set_caller_defaults(proxy: object) -> None:
    """The settings every proxy starts with, blocking or loop proxy alike: Pyro4's
    defaults for timeout, HMAC key, handshake data and serializer, and no metadata yet."""
    set_ = object.__setattr__
    set_(proxy, "_pyroTimeout", config.COMMTIMEOUT or None)
    set_(proxy, "_pyroHmacKeyBytes", None)
    set_(proxy, "_pyroHandshake", "hello")
    set_(proxy, "_pyroSerializer", None)
    set_(proxy, "_pyroMethods", set())
    set_(proxy, "_pyroAttrs", set())
    set_(proxy, "_pyroOneway", set())
    set_(proxy, "_pyroMetaKnown", False)

class _Lane:
    """The quick call path of one open connection (``Proxy.__quick``): its socket, its
    protocol, a buffer its replies are received into, and when its last call started.

    The freshness poll (``__ensure_fresh_connection``) is skipped for a call
    that starts within ``_FRESH_WINDOW`` of the start of the previous call on
    the connection that got its reply. A daemon that closes the connection in that moment is met as the
    poll meets one that closes right after it: the request goes to a closed
    socket, which the daemon never reads, and the receive sees the end of
    stream, a ConnectionClosedError that the proxy's retries take as the
    poll's. Sequential calls in a loop save a system call each.
    """

    __slots__ = ("sock", "protocol", "object_id", "buffer", "stamp")

    def __init__(self, sock: socket.socket, protocol: _protocol.ClientProtocol, object_id: str) -> None:
        self.sock = sock
        self.protocol = protocol
        self.object_id = object_id
        self.buffer = bytearray(_QUICK_BUFFER)
        self.stamp = time.monotonic()


class _RemoteMethod:
    """A remote method of ``proxy`` (a Proxy or a LoopProxy): calling it calls ``proxy._pyroInvoke``.

    Retries are the proxy's; ``max_retries`` is accepted for Pyro4 code that passes it.
    """

    __slots__ = ("_proxy", "_name")

    def __init__(self, proxy: Any, name: str, max_retries: int | None = None) -> None:
        self._proxy = proxy
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._proxy._pyroInvoke(self._name, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        # dotted names are not walked by daemons; say so instead of calling "a.b"
        raise AttributeError(f"remote method '{self._name}' has no attribute '{name}' "
                             "(dotted names are not supported)")


class Proxy:
    """Stands in for a remote object: method calls and property access go over the wire."""

    def __init__(self, uri: "str | URI", connected_socket: socket.socket | None = None) -> None:
        if connected_socket is not None:  # ``uri`` is the object id (Pyro4's spelling)
            uri = URI(f"PYRO:{uri}@<<connected-socket>>:0")
        if isinstance(uri, str):
            uri = URI(uri)
        elif not isinstance(uri, URI):
            raise TypeError("expected Pyro URI")
        set_ = object.__setattr__
        set_(self, "_pyroUri", uri)
        set_(self, "_pyroConnection", None)
        set_(self, "_pyroSeq", 0)
        set_caller_defaults(self)
        set_(self, "_pyroMaxRetries", config.MAX_RETRIES)
        set_(self, "_pyroRawWireResponse", False)
        set_(self, "_pyroLock", threading.RLock())
        set_(self, "_pyroResolved", None)
        set_(self, "_pyroProtocol", None)
        set_(self, "_pyroPoller", None)
        # TLS for this proxy's connections: an ssl.SSLContext, or None to follow
        # config.SSL (a context from the SSL_CLIENT*/SSL_CACERTS items)
        set_(self, "_pyroSslContext", None)
        set_(self, "_pyroConnectedSocket", connected_socket)  # used as is, never closed by the proxy
        # Pyro4's asynchronous mode (_pyroAsync): each method call runs in a thread of its own
        set_(self, "_pyroAsyncCalls", False)
        set_(self, "_pyroLane", None)  # the quick call path of the open connection, when it has one

    # --- attribute plumbing -----------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name[:1] == "_":  # every name below starts so: one test for the common names
            if name in _LOCAL_ATTRS or name.startswith("_pyro") or name in _LOCAL_DUNDERS:
                raise AttributeError(name)
            dunder = name.startswith("__") and name.endswith("__")
            if dunder and (is_private_attribute(name) or not config.METADATA):
                # without metadata a dunder cannot be told apart from Python probing the proxy
                raise AttributeError(name)
        if not self._pyroMetaKnown and config.METADATA:
            self._pyroGetMetadata()
        if name in self._pyroAttrs:
            return self._pyroInvoke("__getattr__", (name,), None)
        if name in self._pyroMethods or not config.METADATA:
            return _AsyncRemoteMethod(self, name) if self._pyroAsyncCalls else _RemoteMethod(self, name)
        raise AttributeError(f"remote object '{self._pyroUri}' has no exposed attribute or method '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LOCAL_ATTRS or name.startswith("_"):
            return object.__setattr__(self, name, value)
        if not self._pyroMetaKnown and config.METADATA:
            self._pyroGetMetadata()
        if name in self._pyroAttrs:
            self._pyroInvoke("__setattr__", (name, value), None)
            return
        raise AttributeError(f"remote object '{self._pyroUri}' has no exposed attribute '{name}'")

    @property
    def _pyroHmacKey(self) -> bytes | None:  # noqa: N802 - Pyro4's name
        return self._pyroHmacKeyBytes

    @_pyroHmacKey.setter
    def _pyroHmacKey(self, key: bytes | str | None) -> None:  # noqa: N802
        self._pyroHmacKeyBytes = key.encode("utf-8") if isinstance(key, str) else key

    def __repr__(self) -> str:
        state = "connected" if self._pyroConnection is not None else "not connected"
        return f"<pyro_loops.Proxy at 0x{id(self):x}; {state}; for {self._pyroUri}>"

    def __str__(self) -> str:
        return repr(self)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | self._pyroMethods | self._pyroAttrs)

    def __eq__(self, other: object) -> bool:
        return other is self or isinstance(other, Proxy) and other._pyroUri == self._pyroUri

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self._pyroUri)

    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pyroRelease()

    def __del__(self) -> None:
        try:
            self._pyroRelease()
        except Exception:
            pass

    def __copy__(self) -> "Proxy":
        """An unconnected twin, of the same class, with this proxy's settings (asynchronous mode included)."""
        clone = type(self)(URI(str(self._pyroUri)))  # a URI of its own, as in Pyro4
        for name in ("_pyroTimeout", "_pyroMaxRetries", "_pyroHmacKeyBytes", "_pyroHandshake",
                     "_pyroSerializer", "_pyroMetaKnown", "_pyroSslContext", "_pyroAsyncCalls"):
            object.__setattr__(clone, name, getattr(self, name))
        for name in ("_pyroMethods", "_pyroAttrs", "_pyroOneway"):
            object.__setattr__(clone, name, set(getattr(self, name)))
        return clone

    def __getstate__(self) -> tuple:
        return _proxy_state(self)

    def __setstate__(self, state: tuple) -> None:
        _restore_proxy(self, state)

    # --- connection management -------------------------------------------------------

    def _pyroBind(self) -> bool:  # noqa: N802
        """Connect now, and replace a PYRONAME/PYROMETA URI by the PYRO one it resolved to."""
        with self._pyroLock:
            self._pyroRelease()
            connected = self.__connect()
            object.__setattr__(self, "_pyroUri", self._pyroResolved)
            return connected

    def _pyroRelease(self) -> None:  # noqa: N802
        """Close the connection; the next call opens a new one."""
        with self._pyroLock:
            sock = self._pyroConnection
            if sock is not None and sock is not self._pyroConnectedSocket:
                object.__setattr__(self, "_pyroConnection", None)
                object.__setattr__(self, "_pyroLane", None)
                try:
                    sock.close()
                except OSError:
                    pass

    def _pyroReconnect(self, tries: int = 100000000) -> None:  # noqa: N802
        """Drop the connection and reconnect, retrying every 2 s up to ``tries`` times."""
        self._pyroRelease()
        while tries:
            try:
                with self._pyroLock:  # a call from another thread must not use the connection mid-handshake
                    self.__connect()
                return
            except errors.CommunicationError:
                tries -= 1
                if tries:
                    time.sleep(2)
        raise errors.ConnectionClosedError("reconnect failed")

    def _pyroGetMetadata(self, objectId: str | None = None, known_metadata: dict | None = None) -> None:  # noqa: N802
        """Fill in methods, oneway and attrs, from ``known_metadata`` or by asking the daemon."""
        if known_metadata is None:
            with self._pyroLock:
                if self._pyroConnection is None:
                    self.__connect()
                if self._pyroMetaKnown:
                    return
                known_metadata = self._pyroCall(lambda conn, annotations: conn.get_metadata(
                    objectId or self.__object_id(), annotations))
        self.__apply_metadata(known_metadata)

    def _pyroAsync(self, asynchronous: bool = True) -> None:  # noqa: N802
        """Switch Pyro4's asynchronous mode on (or off): method calls return a ``FutureResult`` at once.

        Each call then runs in a thread of its own, on a copy of this proxy (a
        connection of its own), as in Pyro4. Attribute access stays synchronous.
        This is the porting path for Pyro4 code; in an event loop use
        ``pyro_loops.Client``, whose calls never block the loop.
        """
        object.__setattr__(self, "_pyroAsyncCalls", bool(asynchronous))

    def _pyroBatch(self) -> "BatchProxy":  # noqa: N802
        """A batch of calls on this proxy (``pyro_loops.batch(proxy)``)."""
        return BatchProxy(self)

    def _pyroValidateHandshake(self, response: Any) -> None:  # noqa: N802
        """Override to check the daemon's handshake response; raise to refuse it."""

    def _pyroAnnotations(self) -> dict[str, bytes]:  # noqa: N802
        """Override to send annotations with every message."""
        return {}

    def _pyroResponseAnnotations(self, annotations: dict[str, bytes], msgtype: int) -> None:  # noqa: N802
        """Override to see the annotations of every reply."""

    def __apply_metadata(self, meta: "_protocol.Metadata | dict") -> None:
        if not isinstance(meta, _protocol.Metadata):
            meta = _protocol.Metadata.from_wire(meta)
        object.__setattr__(self, "_pyroMethods", set(meta.methods))
        object.__setattr__(self, "_pyroAttrs", set(meta.attrs))
        object.__setattr__(self, "_pyroOneway", set(meta.oneway))
        object.__setattr__(self, "_pyroMetaKnown", True)
        if not self._pyroMethods and not self._pyroAttrs:
            raise errors.PyroError(
                f"remote object '{self._pyroUri}' doesn't expose any methods or attributes. Did you forget "
                "to mark them with @expose? (or set config.REQUIRE_EXPOSE = False on the server)")

    def __object_id(self) -> str:
        return (self._pyroResolved or self._pyroUri).object

    def __connect(self) -> bool:
        """Open the connection and do the handshake; False if it was open already."""
        if self._pyroConnection is not None:
            return False
        if self._pyroConnectedSocket is not None:
            return self.__adopt(self._pyroConnectedSocket)
        uri = self._pyroUri
        if uri.protocol != "PYRO":
            uri = resolve(uri, self._pyroHmacKeyBytes, Proxy)
        object.__setattr__(self, "_pyroResolved", uri)
        if daemon_served_by_current_thread(uri) is not None:
            raise errors.PyroError(
                f"calling {uri} from the thread that runs its own daemon's loop would deadlock: the "
                "daemon cannot answer while this thread waits. Make the call from another thread, mark "
                "the calling method @pyro_loops.in_worker, or call the object directly")
        context = self._pyroSslContext
        if context is None and config.SSL:
            context = client_context_from_config(config)
        deadline = _HandshakeDeadline(uri, self._pyroTimeout or None)  # 0 is no timeout, as in Pyro4
        with deadline:
            sock = _connect_socket(uri, deadline.timeout())
            if context is not None:
                sock.settimeout(deadline.timeout())
                sock = _start_tls(sock, context, uri)
        sock.objectId = uri.object  # type: ignore[attr-defined] # Pyro4's connection attribute (an SSLSocket takes it too)
        object.__setattr__(self, "_pyroProtocol", _protocol.ClientProtocol(
            self._pyroSerializer or config.SERIALIZER, hmac_key=self._pyroHmacKeyBytes,
            max_message_size=config.MAX_MESSAGE_SIZE, compression=config.COMPRESSION, seq=self._pyroSeq,
            gather=True))
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        object.__setattr__(self, "_pyroPoller", poller)
        object.__setattr__(self, "_pyroConnection", sock)
        try:
            self.__handshake(uri, deadline)
        except BaseException:
            self._pyroRelease()
            raise
        sock.settimeout(self._pyroTimeout or None)  # calls wait as long as the proxy says, not the handshake
        self.__open_lane()
        return True

    def __adopt(self, sock: socket.socket) -> bool:
        """Use a socket connected to a daemon already: no handshake, as in Pyro4."""
        protocol = _protocol.ClientProtocol(self._pyroSerializer or config.SERIALIZER, hmac_key=self._pyroHmacKeyBytes,
                                            max_message_size=config.MAX_MESSAGE_SIZE,
                                            compression=config.COMPRESSION, seq=self._pyroSeq, gather=True)
        protocol.state = _protocol.State.ESTABLISHED
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        for name, value in (("_pyroResolved", self._pyroUri), ("_pyroProtocol", protocol),
                            ("_pyroPoller", poller), ("_pyroConnection", sock)):
            object.__setattr__(self, name, value)
        self.__open_lane()
        if config.METADATA and not self._pyroMetaKnown:
            self._pyroGetMetadata(self._pyroUri.object)
        return True

    def __open_lane(self) -> None:
        """Give the new connection its quick call path if what it depends on for good allows.

        A plain socket (TLS takes the general path), no compression, and
        annotation hooks left as they are: a subclass overriding
        ``_pyroAnnotations`` or ``_pyroResponseAnnotations`` is served by the general path.
        """
        sock = self._pyroConnection
        cls = type(self)
        if (isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket)
                and not self._pyroProtocol.compression and not self._pyroProtocol.partial
                and cls._pyroAnnotations is Proxy._pyroAnnotations
                and cls._pyroResponseAnnotations is Proxy._pyroResponseAnnotations):
            object.__setattr__(self, "_pyroLane", _Lane(sock, self._pyroProtocol, self.__object_id()))

    def __handshake(self, uri: URI, deadline: "_HandshakeDeadline") -> None:
        conn = self._pyroProtocol
        try:
            with deadline:
                self._pyroConnection.settimeout(deadline.timeout())
                self.__send(conn.connect(uri.object, self._pyroHandshake, metadata=config.METADATA,
                                         annotations=self.__annotations(take=False)))
                event = self.__receive(deadline)
        except errors.ConnectionClosedError as exc:
            if isinstance(self._pyroConnection, ssl.SSLSocket):
                raise
            raise errors.ConnectionClosedError(
                f"{exc}: the daemon at {uri.location} closed the connection at the handshake; "
                "if it uses TLS, set config.SSL (or the proxy's _pyroSslContext)") from None
        except errors.CommunicationError:
            raise
        except errors.PyroError as exc:
            # Pyro4's wording for a handshake that failed on this side (a wrong HMAC key, a refused
            # serializer): programs print it and compare it.
            where = uri.sockname or (uri.host, uri.port)
            raise errors.CommunicationError(f"cannot connect to {where}: {exc}") from exc
        if isinstance(event, _protocol.ConnectFailed):
            raise errors.CommunicationError(f"connection to {uri.location} rejected: {event.reason}")
        self._pyroValidateHandshake(event.handshake)
        if event.metadata is not None:
            self.__apply_metadata(event.metadata)
        elif config.METADATA and not self._pyroMetaKnown:
            self._pyroGetMetadata(uri.object)

    def __annotations(self, take: bool = True) -> dict[str, bytes]:
        """What a message carries: the caller's ``current_context.annotations``
        (taken by the call they go with, as in Pyro4, unless ``take`` is False),
        then ``_pyroAnnotations()`` (called only when a subclass overrides it), then the correlation id."""
        annotations = _context_annotations(take)
        if type(self)._pyroAnnotations is not Proxy._pyroAnnotations:
            annotations.update(self._pyroAnnotations())
        corr = current_context.correlation_id
        if corr is not None:
            annotations["CORR"] = corr.bytes
        return annotations

    def __send(self, data: _wire.Data) -> None:
        try:
            if type(data) is _wire.Buffers:  # a large call: the caller's bytes, not joined
                sendall_buffers(self._pyroConnection, data)
            else:
                self._pyroConnection.sendall(data)
        except OSError as exc:
            raise self.__broken(exc, "send timed out", "send failed") from None

    def __broken(self, exc: OSError, timeout: str, failed: str) -> errors.CommunicationError:
        """Release the connection a socket call failed on; the error to raise: TimeoutError
        (saying ``timeout``) for a timeout, else ConnectionClosedError (``failed``, then why)."""
        self._pyroRelease()
        if isinstance(exc, socket.timeout):
            return errors.TimeoutError(timeout)
        return errors.ConnectionClosedError(f"{failed}: {exc}")

    def __receive(self, deadline: "_HandshakeDeadline | None" = None) -> Any:
        """The next event of the connection: the reply to the one call in flight.

        A connection that broke (``Broken``) is released and its error raised.
        ``deadline`` (the handshake's) bounds all the reads together, not each one.
        """
        conn = self._pyroProtocol
        sock = self._pyroConnection
        try:
            while (event := conn.next_event()) is None:
                if deadline is not None:
                    sock.settimeout(deadline.timeout())
                receive_blocking(sock, conn, _RECV_SIZE)
        except OSError as exc:
            raise self.__broken(exc, "receiving: timeout", "receiving") from None
        if isinstance(event, _protocol.Broken):
            self._pyroRelease()
            raise event.error
        if self._pyroLane is not None and conn.partial:  # bytes beyond the reply: quick calls cannot ignore them
            object.__setattr__(self, "_pyroLane", None)
        if type(self)._pyroResponseAnnotations is not Proxy._pyroResponseAnnotations:
            self._pyroResponseAnnotations(event.message.annotations, event.message.type)
        if event.message.type == _wire.MSG_RESULT:
            _set_response_annotations(event.message.annotations)
        return event

    def __ensure_fresh_connection(self) -> None:
        """Connect if not connected; fail as Pyro4 does if the daemon closed our idle connection.

        The daemon may have timed the connection out, or restarted. Nothing
        has been sent yet, so the ConnectionClosedError raised here lets
        ``_pyroCall`` reconnect and send the call once more when the proxy has
        retries left (``MAX_RETRIES``), and reach the caller when it has none.
        """
        sock = self._pyroConnection
        if sock is None:
            self.__connect()
            return
        if self._pyroPoller.poll(0) and not _still_open(sock):
            self._pyroRelease()
            raise errors.ConnectionClosedError("receiving: not enough data")  # Pyro4's words for it

    # --- calls -----------------------------------------------------------------------

    def _pyroInvoke(self, methodname: str, vargs: Any, kwargs: Any, flags: int = 0,  # noqa: N802
                    objectId: str | None = None) -> Any:
        """Send one call and return its result (None for oneway calls)."""
        lane = self._pyroLane
        if lane is not None and not flags and objectId is None and type(kwargs) is dict and not kwargs:
            try:
                value = self.__quick(lane, methodname, vargs)
            except errors.ConnectionClosedError:  # the first try failed: the retries are the general path's
                if self._pyroMaxRetries <= 0:
                    raise
                self._pyroRelease()
                return self._pyroCall(self.__request(methodname, vargs, kwargs, flags, objectId),
                                      self._pyroMaxRetries - 1)
            if value is not _DECLINED:
                return value
        _set_response_annotations({})  # as in Pyro4: a oneway call leaves none
        return self._pyroCall(self.__request(methodname, vargs, kwargs, flags, objectId))

    def __request(self, methodname: str, vargs: Any, kwargs: Any, flags: int, objectId: str | None) -> _MakeRequest:
        """How the general path writes the call ``_pyroInvoke`` was given."""
        def request(conn: _protocol.ClientProtocol, annotations: dict[str, bytes]) -> _protocol.Request:
            oneway = bool(flags & _wire.FLAGS_ONEWAY) or objectId is None and methodname in self._pyroOneway
            if flags & _wire.FLAGS_BATCH:
                return conn.batch(self.__object_id(), vargs, oneway=oneway, annotations=annotations)
            return conn.invoke(objectId or self.__object_id(), methodname, vargs, kwargs, oneway=oneway,
                               raw=self._pyroRawWireResponse, annotations=annotations)
        return request

    def __quick(self, lane: _Lane, methodname: str, vargs: Any) -> Any:
        """The common call on the connection's quick path ``lane``: its result, or ``_DECLINED`` having sent nothing.

        Taken when nothing but the call itself needs deciding: no context
        annotations, not inside a served call, not oneway or raw, no HMAC key,
        serpent, the socket's timeout as set (and what ``__open_lane`` checked).
        The request is the general path's, byte for byte; a reply other than a
        plain scalar for this call goes on to the general path with the bytes
        received so far, so results, errors and ``current_context`` come out
        as they always do. Raises as ``__exchange``.
        """
        facts = _context_facts.get(None)
        if (facts is None or facts.client is not None or facts.annotations or facts.correlation_bytes is not None
                or self._pyroRawWireResponse or methodname in self._pyroOneway or self._pyroHmacKeyBytes
                or (self._pyroSerializer or config.SERIALIZER) != "serpent"):
            return _DECLINED
        corr = facts.correlation_uuid
        correlation = None
        if corr is not None:
            if type(corr) is not uuid.UUID:
                return _DECLINED
            correlation = corr.bytes
        lock = self._pyroLock
        lock.acquire()  # not ``with``: its protocol costs as much again as the lock itself
        try:
            if lane is not self._pyroLane or lane.sock.timeout != (self._pyroTimeout or None):  # another thread closed it
                return _DECLINED
            conn = lane.protocol
            conn.reader.max_message_size = config.MAX_MESSAGE_SIZE
            conn.seq = self._pyroSeq
            data = conn.quick_invoke(lane.object_id, methodname, vargs, correlation)
            if data is None:
                return _DECLINED
            facts.response_annotations = {}  # as in Pyro4: until a reply brings some
            now = time.monotonic()
            if now - lane.stamp > _FRESH_WINDOW:
                self.__ensure_fresh_connection()
            self.__dict__["_pyroSeq"] = conn.seq  # an instance attribute: object.__setattr__ costs three times more
            sock = lane.sock
            try:
                sock.sendall(data)
            except OSError as exc:
                raise self.__broken(exc, "send timed out", "send failed") from None
            try:
                size = sock.recv_into(lane.buffer)
            except OSError as exc:
                raise self.__broken(exc, "receiving: timeout", "receiving") from None
            reply = conn.quick_result(lane.buffer, size)
            if reply is None:
                value = self.__outcome()
            else:
                value, facts.response_annotations = reply
            lane.stamp = now
            return value
        finally:
            lock.release()

    def _pyroInvokeBatch(self, calls: list, oneway: bool = False) -> Any:  # noqa: N802
        """Send ``calls`` (``(method, vargs, kwargs)`` tuples) as one batch; their results, or None for oneway."""
        flags = _wire.FLAGS_BATCH | (_wire.FLAGS_ONEWAY if oneway else 0)
        return self._pyroInvoke("<batch>", calls, None, flags)

    def _pyroCall(self, request: _MakeRequest, retries: int | None = None) -> Any:  # noqa: N802
        """Send the request ``request(connection, annotations)`` makes; return what its reply means.

        Retried up to ``retries`` (``_pyroMaxRetries``) times on a closed connection, as Pyro4 does.
        """
        if retries is None:
            retries = self._pyroMaxRetries
        while True:
            try:
                return self.__exchange(request)
            except errors.ConnectionClosedError:
                if retries <= 0:
                    raise
                retries -= 1
                self._pyroRelease()

    def __exchange(self, request: _MakeRequest) -> Any:
        with self._pyroLock:
            self.__ensure_fresh_connection()
            timeout = self._pyroTimeout or None  # 0 is no timeout, as in Pyro4 (never a non-blocking socket)
            if self._pyroConnection.gettimeout() != timeout:
                self._pyroConnection.settimeout(timeout)
            conn = self._pyroProtocol
            serializer = self._pyroSerializer or config.SERIALIZER
            if serializer != conn.serializer.name:  # changed since the connection was made
                conn.serializer = get_serializer(serializer)
            conn.seq = self._pyroSeq
            conn.hmac_key = self._pyroHmacKeyBytes
            sent = request(conn, self.__annotations())
            object.__setattr__(self, "_pyroSeq", sent.seq)
            _refuse_oversize(conn, sent)
            pool, target = current_pool(), self._pyroResolved
            waiting = (nullcontext() if pool is None or target is None or not sent.expects_reply
                       else pool.waiting_on(target))  # a worker calling its own daemon could wait for itself
            with waiting:
                self.__send(sent.data)
                if not sent.expects_reply:
                    return None
                return self.__outcome()

    def __outcome(self) -> Any:
        """What the reply to the call just sent means: its result, or the exception raised."""
        event = self.__receive()
        if isinstance(event, _protocol.Result):
            return event.value
        if isinstance(event, _protocol.StreamStarted):
            return _StreamResult(self, event.stream_id)
        if isinstance(event, _protocol.StreamEnd):
            raise StopIteration
        if isinstance(event, _protocol.Failure):
            if isinstance(event.exception, errors.SerializeError):
                self._pyroRelease()  # as Pyro4: the stream can no longer be trusted
            raise event.exception
        return None  # a Pong: its meaning is the answer itself


class _AsyncRemoteMethod(_RemoteMethod):
    """A method of a proxy in asynchronous mode: calling it starts the call in a thread."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> FutureResult:
        name = self._name
        return _in_thread(self._proxy, lambda proxy: proxy._pyroInvoke(name, args, kwargs), name)


def _in_thread(proxy: Proxy, call: Callable[[Proxy], Any], what: str) -> FutureResult:
    """Run ``call`` on a copy of ``proxy`` in a new thread; its outcome goes into the returned FutureResult.

    The copy has a connection of its own, so asynchronous calls overlap
    instead of queueing behind each other; it is closed when the call is done.
    """
    result = FutureResult()

    def run() -> None:
        try:
            with copy.copy(proxy) as twin:
                value = call(twin)
        except Exception as exc:  # the caller meets it when reading .value, or in its iferror handler
            value = ExceptionWrapper(exc)
        result.set_value(value)

    threading.Thread(target=run, daemon=True, name=f"pyro_loops async call {what}").start()
    return result


class _StreamResult:
    """The client side of a remote iterator: fetches items one call at a time."""

    def __init__(self, proxy: Proxy, stream_id: str) -> None:
        self.proxy: Proxy | None = proxy
        self.stream_id = stream_id

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self.proxy is None:
            raise StopIteration
        if self.proxy._pyroConnection is None:
            # as in Pyro4: the stream lives on its connection; after _pyroReconnect() (within
            # ITER_STREAM_LINGER) it carries on
            raise errors.ConnectionClosedError("the proxy for this stream result has been closed")
        try:
            return self.proxy._pyroCall(lambda conn, annotations: conn.next_stream_item(self.stream_id, annotations))
        except (StopIteration, GeneratorExit):
            self.proxy = None
            raise StopIteration from None
        except errors.ConnectionClosedError:
            self.proxy = None
            raise

    def close(self) -> None:
        """Stop early: tell the daemon to drop the iterator (a oneway call)."""
        proxy, self.proxy = self.proxy, None
        if proxy is not None and proxy._pyroConnection is not None:
            try:
                proxy._pyroCall(lambda conn, annotations: conn.close_stream(self.stream_id, annotations))
            except errors.PyroError:
                pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class _BatchedMethod:
    __slots__ = ("_calls", "_name")

    def __init__(self, calls: list, name: str) -> None:
        self._calls = calls
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self._calls.append((self._name, args, kwargs))


class BatchProxy:
    """Records calls on a proxy, then sends them as one message when called."""

    def __init__(self, proxy: Proxy) -> None:
        self._proxy = proxy
        self._calls: list = []

    def __getattr__(self, name: str) -> _BatchedMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _BatchedMethod(self._calls, name)

    def __enter__(self) -> "BatchProxy":
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def __copy__(self) -> "BatchProxy":
        clone = BatchProxy(self._proxy)
        clone._calls = list(self._calls)
        return clone

    def __call__(self, oneway: bool = False, asynchronous: bool = False) -> Any:
        """Send the recorded calls; returns an iterator over their results
        (raising the first exception where it occurred), or None for oneway.

        ``asynchronous=True`` (Pyro4's asynchronous batch) returns a
        ``FutureResult`` at once, whose value becomes that iterator. As in
        Pyro4, it leaves the calls recorded: calling the batch again sends
        them again, followed by any recorded since.
        """
        if oneway and asynchronous:
            raise errors.PyroError("async oneway calls make no sense")
        if asynchronous:
            calls = list(self._calls)
            return _in_thread(self._proxy, lambda proxy: _batch_results(proxy._pyroInvokeBatch(calls)), "<batch>")
        calls, self._calls = self._calls, []
        results = self._proxy._pyroInvokeBatch(calls, oneway)
        if oneway:
            return None
        return _batch_results(results)


def _batch_results(results: list) -> Iterator[Any]:
    for result in results:
        if isinstance(result, ExceptionWrapper):
            result.raiseIt()
        yield result


def asyncproxy(proxy: Proxy, asynchronous: bool = True) -> None:
    """Pyro4's spelling of ``proxy._pyroAsync(asynchronous)``."""
    proxy._pyroAsync(asynchronous)


def batch(proxy: Proxy) -> Any:
    """Collect calls on ``proxy`` and send them in one message: ``b = batch(p); b.f(); b.g(); results = b()``.

    A loop proxy gives its own batch (``LoopBatch``), whose call returns a ``Call``.
    """
    return proxy._pyroBatch()


def _caller_facts() -> Any:
    """The caller's ``current_context`` facts; None inside a served call, whose
    annotations belong to the request being served and its reply."""
    facts = current_context.facts()
    return facts if facts.client is None else None


def _context_annotations(take: bool) -> dict[str, bytes]:
    """A copy of the annotations the caller set on ``current_context`` for its next call; ``take`` clears them."""
    facts = _caller_facts()
    if facts is None or not facts.annotations:
        return {}
    annotations = dict(facts.annotations)
    if take:
        facts.annotations = {}
    return annotations


def _set_response_annotations(annotations: dict[str, bytes]) -> None:
    """Show the caller a reply's annotations in ``current_context.response_annotations``, as Pyro4 does."""
    facts = _caller_facts()
    if facts is not None:
        facts.response_annotations = annotations


def _refuse_oversize(conn: _protocol.ClientProtocol, sent: _protocol.Request) -> None:
    """Raise MessageTooLargeError, before sending, for a request larger than MAX_MESSAGE_SIZE (as Pyro4 does).

    The limit is read at each call, so a change of config.MAX_MESSAGE_SIZE
    applies to connections already open, for requests and replies alike.
    """
    limit = config.MAX_MESSAGE_SIZE
    conn.reader.max_message_size = limit
    size = len(sent.data) - _wire.HEADER_SIZE
    if limit and size > limit:
        conn.cancel(sent.seq)  # never sent: no reply will come
        raise errors.MessageTooLargeError(f"max message size exceeded ({size} where max={limit})")


class ProxyConnection(socket.socket):
    """A proxy's connection (``proxy._pyroConnection``): its socket, with what Pyro4's connection object offered.

    ``objectId`` is the object the proxy talks to, ``getpeercert()`` is None
    (a TLS connection is an ``ssl.SSLSocket`` that has both), and
    ``pyro_loops.message.Message.ping(connection)`` works on it between calls.
    """

    objectId: str = ""  # noqa: N815 - Pyro4's name

    @classmethod
    def adopt(cls, sock: socket.socket) -> "ProxyConnection":
        """Take over ``sock``'s file descriptor (and timeout); ``sock`` is left detached."""
        timeout = sock.gettimeout()
        conn = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        conn.settimeout(timeout)
        return conn

    def getpeercert(self, binary_form: bool = False) -> None:
        """No certificate: the connection is not TLS."""
        return None


class _HandshakeDeadline:
    """One deadline for connecting, the TLS handshake and the CONNECT exchange together: HANDSHAKE_TIMEOUT.

    Calls may wait for ever (COMMTIMEOUT 0, Pyro4's default), but a server
    that accepts and then says nothing (or drips its answer a byte at a time)
    must not hold a proxy's connect for ever. Each step's socket timeout is
    what is left of it, or the proxy's own timeout if that is shorter (which
    then raises as in Pyro4). Used as a context manager around the steps: a
    TimeoutError raised once the deadline has passed becomes the Pyro4-shaped
    "cannot connect to (host, port): ..." naming the item.
    """

    __slots__ = ("where", "call_timeout", "limit", "end")

    def __init__(self, uri: URI, call_timeout: float | None) -> None:
        self.where = uri.sockname or (uri.host, uri.port)
        self.call_timeout = call_timeout
        self.limit = config.HANDSHAKE_TIMEOUT
        self.end = time.monotonic() + self.limit if self.limit > 0 else None

    def timeout(self) -> float | None:
        """The socket timeout for the next step: the proxy's timeout or what is left, whichever is shorter."""
        if self.end is None:
            return self.call_timeout
        left = max(self.end - time.monotonic(), 0.001)  # 0 would make the socket non-blocking
        return left if self.call_timeout is None else min(left, self.call_timeout)

    def __enter__(self) -> "_HandshakeDeadline":
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, errors.TimeoutError) and self.end is not None and time.monotonic() >= self.end - 0.001:
            raise errors.TimeoutError(f"cannot connect to {self.where}: no connection and handshake within "
                                      f"HANDSHAKE_TIMEOUT ({self.limit:g} s)") from None


def _connect_socket(uri: URI, timeout: float | None) -> socket.socket:
    try:
        if uri.sockname:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(uri.sockname)
        else:
            sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if config.SOCK_NODELAY:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except socket.timeout:
        raise errors.TimeoutError(f"connecting to {uri.location}: timeout") from None
    except OSError as exc:
        raise errors.CommunicationError(f"cannot connect to {uri.location}: {exc}") from None
    return ProxyConnection.adopt(sock)


def _start_tls(sock: socket.socket, context: ssl.SSLContext, uri: URI) -> ssl.SSLSocket:
    """The TLS handshake on a fresh connection (blocking, within the socket's timeout).

    The daemon's certificate must match the URI's host (a name, or an IP address
    against the certificate's IP entries) when the context checks host names,
    as the default one from the SSL_* items does.
    """
    try:
        return context.wrap_socket(sock, server_hostname=None if uri.sockname else uri.host)
    except socket.timeout:
        sock.close()
        raise errors.TimeoutError(f"TLS handshake with {uri.location}: timeout") from None
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise TLSError(f"TLS handshake with {uri.location} failed: {exc.verify_message or exc}") from None
    except ValueError as exc:  # say, a unix socket URI (no host name) with a context that checks host names
        sock.close()
        raise TLSError(f"cannot start TLS with {uri.location}: {exc}") from None
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise TLSError(f"TLS handshake with {uri.location} failed ({exc}): does the daemon use TLS? "
                       "Both ends must set SSL") from None


def _still_open(sock: socket.socket) -> bool:
    """Whether an idle connection that became readable is still open (not closed by the daemon).

    Plain sockets are peeked. A TLS socket cannot be: it reads one record
    without waiting; tickets the daemon sent after the handshake are taken in
    passing, and application data nobody asked for means the connection is unusable.
    """
    if not isinstance(sock, ssl.SSLSocket):
        try:
            return bool(sock.recv(1, socket.MSG_PEEK))
        except OSError:
            return False
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1)
        return False
    except ssl.SSLWantReadError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)


def _proxy_state(proxy: Proxy) -> tuple:
    key = proxy._pyroHmacKeyBytes
    hmac = "b64:" + base64.b64encode(key).decode("ascii") if key else None
    return (str(proxy._pyroUri), tuple(proxy._pyroOneway), tuple(proxy._pyroMethods), tuple(proxy._pyroAttrs),
            proxy._pyroTimeout or 0.0, hmac, proxy._pyroHandshake, proxy._pyroMaxRetries,
            proxy._pyroSerializer)


def _restore_proxy(proxy: Proxy, state: tuple) -> None:
    Proxy.__init__(proxy, state[0])
    object.__setattr__(proxy, "_pyroOneway", set(state[1]))
    object.__setattr__(proxy, "_pyroMethods", set(state[2]))
    object.__setattr__(proxy, "_pyroAttrs", set(state[3]))
    object.__setattr__(proxy, "_pyroMetaKnown", bool(state[2] or state[3]))
    hmac = state[5]
    if isinstance(hmac, str) and hmac.startswith("b64:"):
        object.__setattr__(proxy, "_pyroHmacKeyBytes", base64.b64decode(hmac[4:]))
    elif hmac:
        object.__setattr__(proxy, "_pyroHmacKeyBytes", hmac if isinstance(hmac, bytes) else str(hmac).encode())
    object.__setattr__(proxy, "_pyroHandshake", state[6])
    if len(state) > 8 and state[8]:
        object.__setattr__(proxy, "_pyroSerializer", state[8])


def _proxy_from_dict(_classname: str, data: dict) -> Proxy:
    proxy = Proxy.__new__(Proxy)
    _restore_proxy(proxy, tuple(data["state"]))
    return proxy


register_class_to_dict(Proxy, lambda p: {"__class__": "Pyro4.core.Proxy", "state": _proxy_state(p)})
register_dict_to_class("Pyro4.core.Proxy", _proxy_from_dict)
register_dict_to_class("Pyro4.core.Daemon", lambda _name, _data: None)
