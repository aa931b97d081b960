"""Both ends of one Pyro connection as sans-IO state machines.

No sockets, clocks or threads: bytes go in with ``receive_data()``,
``next_event()`` says what they meant, and the methods that make messages
return the bytes to send. Whoever owns the socket (the daemon, the blocking
``Proxy``, the loop ``Client``) decides *when* to send and read; this module
decides what the bytes must look like and which messages are allowed when
(protocol notes 3, 4, 11).

The two roles share framing, HMAC, ``MAX_MESSAGE_SIZE`` and the connection
``State``, in ``_Peer``; they are two classes rather than one class with a role
switch (as h11's symmetric ``Connection`` is) because Pyro's roles are not
symmetric: the server answers messages one at a time and never originates one,
the client originates every exchange and matches replies to its calls by
sequence number. One class would be an ``if role`` on every line.

States, for both roles::

    IDLE --(CONNECT)--> HANDSHAKING --(CONNECTOK)--> ESTABLISHED
      \\                     \\                           \\
       `--------------------- `--------------------------- `--> CLOSED

- ``IDLE``: nothing exchanged yet. The client may only call ``connect()``.
  The server waits for the CONNECT.
- ``HANDSHAKING``: the CONNECT is on its way (client) or was received and must
  be answered (server: with ``connect_ok_bytes``/``connect_fail_bytes`` before
  asking for another event).
- ``ESTABLISHED``: calls and pings flow.
- ``CLOSED``: a CONNECTFAIL, a protocol violation, the peer's end of stream,
  or ``close()``. Terminal: ``next_event()`` returns None for ever.

The client role, as the blocking proxy and the loop client use it::

    conn = ClientProtocol("serpent", hmac_key=key, max_message_size=config.MAX_MESSAGE_SIZE,
                          compression=config.COMPRESSION)
    sock.sendall(conn.connect("thing", "hello", metadata=True))
    ...  # feed what the socket reads with conn.receive_data(chunk) (b"" at end of stream)
    event = conn.next_event()     # Connected(handshake, metadata) or ConnectFailed(reason) or Broken
    call = conn.invoke("thing", "add", (1, 2), {})     # -> Request(seq=1, data=b"PYRO...")
    call2 = conn.invoke("thing", "add", (3, 4), {})    # pipelined: seq 2, sent right behind it
    ...  # feed replies, then next_event() -> Result(seq=1, value=3), Result(seq=2, value=7)

Replies are matched to calls by sequence number, not by order; a reply for a
sequence number that is not pending breaks the connection (``Broken``), except
for calls the owner gave up on with ``cancel(seq)``, whose replies are dropped
without an event.
"""

from __future__ import annotations

import enum
import marshal
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Union

from . import _fastcall, _wire, errors
from ._blob import blob_request
from ._serializers import Serializer, get_serializer
from ._wire import Message
from .constants import DAEMON_NAME

MARSHAL_ID = 3


class State(enum.Enum):
    """Where one connection is in its life; see the module docstring for the transitions."""

    IDLE = "IDLE"
    HANDSHAKING = "HANDSHAKING"
    ESTABLISHED = "ESTABLISHED"
    CLOSED = "CLOSED"


class StateError(errors.PyroError):
    """This side asked for something the connection's state does not allow.

    A bug of the caller (calling before the handshake, after ``close()``), or
    65,536 calls pending on one connection: nothing was sent.
    """


class _Peer:
    """What both roles share: the frame reader, the HMAC key and the state.

    Most messages take a fast lane (``_fastcall``): one that arrives whole in
    one read is framed without the reader, and one without HMAC key is
    written in one piece. What comes out is the same; only the work differs.
    """

    __slots__ = ("reader", "hmac_key", "state", "_ready", "gather")

    def __init__(self, max_message_size: int = 0, hmac_key: bytes | None = None, gather: bool = False) -> None:
        self.reader = _wire.FrameReader(max_message_size)
        self.hmac_key = hmac_key
        self.state = State.IDLE
        # the owner writes _wire.Buffers in turn: large messages come out as those, not joined
        self.gather = gather
        # a message that arrived as one piece, framed without the reader (see _feed)
        self._ready: Message | None = None

    @property
    def max_message_size(self) -> int:
        return self.reader.max_message_size

    @property
    def partial(self) -> bool:
        """True while received bytes wait to become events (a whole message, or part of one)."""
        return self._ready is not None or self.reader.buffered > 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as events."""
        ready = self._ready
        return self.reader.buffered + (0 if ready is None else len(ready.data))

    def next_size(self) -> tuple[int, int] | None:
        """``(payload length, flags)`` of the next message once all of it is in, else None.

        As ``FrameReader.next_size``: lets the owner decide where to decode it.
        """
        ready = self._ready
        if ready is not None:
            return len(ready.data), ready.flags
        return self.reader.next_size()

    def encode(self, msg: Message) -> bytes:
        """The bytes of ``msg``, signed with this connection's HMAC key if it has one."""
        return _wire.encode(msg, self.hmac_key)

    def _encode(self, msg_type: int, data: _wire.Data, serializer_id: int, flags: int, seq: int,
                annotations: dict[str, bytes]) -> _wire.Data:
        """``encode`` of the message these make up; the common case without building one."""
        if self.gather and len(data) >= _wire.GATHER_SIZE:
            return _wire.encode(Message(msg_type, data, serializer_id, flags, seq, annotations), self.hmac_key, True)
        if not self.hmac_key:
            block = _fastcall.annotation_block(annotations) if annotations else b""
            if block is not None:
                return _fastcall.frame(msg_type, data, serializer_id, flags, seq, block)
        return _wire.encode(Message(msg_type, data, serializer_id, flags, seq, annotations), self.hmac_key)

    def _feed(self, data: bytes) -> None:
        """Non-empty ``data`` read from the peer.

        The common case, one small message in one read while nothing else
        is buffered, is framed at once without the reader.
        """
        if self._ready is None and type(data) is bytes and self.reader.buffered == 0 and \
                (ready := _fastcall.unframe(data, self.reader.max_message_size)) is not None:
            self._ready = ready
        else:
            self.reader.feed(data)

    def _next_message(self) -> Message | None:
        """The next complete message, or None; raises as ``FrameReader.next_message``."""
        msg = self._ready
        if msg is None:
            return self.reader.next_message()
        self._ready = None
        return msg


# --- the server role ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A well-formed CONNECT; the daemon answers with connect_ok/fail_bytes."""
    msg: Message


@dataclass(frozen=True, slots=True)
class InvokeRequest:
    """A call (normal, oneway or batch) after the handshake."""
    msg: Message


@dataclass(frozen=True, slots=True)
class PingRequest:
    msg: Message


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the protocol. Send ``reply`` if not None, then close."""
    reason: str
    reply: bytes | None


Event = Union[ConnectRequest, InvokeRequest, PingRequest, Violation]


class ServerProtocol(_Peer):
    """The daemon's side of one client connection, before and after the handshake."""

    __slots__ = ()

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the client (the daemon handles end of stream itself)."""
        if data:
            self._feed(data)

    # The daemon, its tests and the fuzzers think in these two flags.
    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    @established.setter
    def established(self, value: bool) -> None:
        self.state = State.ESTABLISHED if value else State.IDLE

    @property
    def broken(self) -> bool:
        return self.state is State.CLOSED

    def next_event(self) -> Event | None:
        """The next thing the peer asked for, or None until more bytes arrive.

        Returns None for ever once CLOSED, and while HANDSHAKING (the daemon
        answers the CONNECT first). Raises nothing: every fault of the peer is
        a ``Violation``, after which the state is CLOSED.
        """
        if self.state is State.CLOSED or self.state is State.HANDSHAKING:
            return None
        try:
            msg = self._next_message()
        except errors.MessageTooLargeError as exc:
            return self._violation(str(exc), quiet=True)
        except errors.ProtocolError as exc:
            return self._violation(str(exc))
        if msg is None:
            return None
        allowed = (_wire.MSG_INVOKE, _wire.MSG_PING) if self.established else (_wire.MSG_CONNECT,)
        if msg.type not in allowed:
            return self._violation(f"invalid msg type {msg.type} received")
        try:
            _wire.check_hmac(msg, self.hmac_key)
        except errors.SecurityError as exc:
            return self._violation(str(exc))
        if msg.type == _wire.MSG_CONNECT:
            self.state = State.HANDSHAKING
            return ConnectRequest(msg)
        if msg.type == _wire.MSG_PING:
            return PingRequest(msg)
        return InvokeRequest(msg)

    def _violation(self, reason: str, quiet: bool = False) -> Violation:
        # Before the handshake Pyro4 explains itself with a CONNECTFAIL; after
        # it, and for oversize messages, it just closes (protocol notes 11.9).
        reply = None if (quiet or self.established) else self.connect_fail_bytes(reason)
        self.state = State.CLOSED
        return Violation(reason, reply)

    def connect_ok_bytes(self, request: Message, data: bytes, flags: int,
                         annotations: dict[str, bytes]) -> bytes:
        """The CONNECTOK answering ``request``; the connection is ESTABLISHED."""
        self.state = State.ESTABLISHED
        return self._encode(_wire.MSG_CONNECTOK, data, request.serializer_id, flags, request.seq, annotations)

    def connect_fail_bytes(self, reason: str, request: Message | None = None,
                           data: bytes | None = None) -> bytes:
        """CONNECTFAIL carrying ``reason``; marshal unless the request's serializer wrote ``data``.

        The connection is CLOSED: the daemon sends these bytes, then closes.
        """
        self.state = State.CLOSED
        if data is None:
            return self.encode(Message(_wire.MSG_CONNECTFAIL, marshal.dumps(reason), MARSHAL_ID, 0,
                                       request.seq if request else 0))
        return self.encode(Message(_wire.MSG_CONNECTFAIL, data, request.serializer_id, 0, request.seq))

    def pong_bytes(self, request: Message, annotations: dict[str, bytes]) -> bytes:
        return self._encode(_wire.MSG_PING, b"pong", request.serializer_id, 0, request.seq, annotations)

    def result_bytes(self, request: Message, data: bytes, flags: int,
                     annotations: dict[str, bytes]) -> _wire.Data:
        return self._encode(_wire.MSG_RESULT, data, request.serializer_id, flags, request.seq, annotations)


# --- the client role ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metadata:
    """What a remote object exposes: method names, the oneway ones, property names."""

    methods: frozenset[str]
    oneway: frozenset[str]
    attrs: frozenset[str]

    @classmethod
    def from_wire(cls, meta: Any) -> "Metadata":
        """From the daemon's ``{"methods": [...], "oneway": [...], "attrs": [...]}``.

        Raises ProtocolError for anything else.
        """
        try:
            return cls(*(frozenset(meta.get(key) or ()) for key in ("methods", "oneway", "attrs")))
        except (AttributeError, TypeError):
            raise errors.ProtocolError(f"invalid metadata from the daemon: {meta!r}") from None


@dataclass(frozen=True, slots=True)
class Request:
    """Bytes for the peer. ``expects_reply`` is False for oneway calls: no event will carry ``seq``."""

    seq: int
    data: _wire.Data  # Buffers for a large call when the protocol's ``gather`` is set
    expects_reply: bool


@dataclass(frozen=True, slots=True)
class Connected:
    """CONNECTOK: the connection is ESTABLISHED.

    ``handshake`` is the daemon's answer to the handshake data (its
    ``validateHandshake`` result). ``metadata`` is None when the daemon sent
    none (it was not asked, or ignored the request): ask with ``get_metadata()``.
    """

    handshake: Any
    metadata: Metadata | None
    message: Message


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """CONNECTFAIL: the daemon refused the connection for ``reason``; it is CLOSED."""

    reason: str
    message: Message


@dataclass(frozen=True, slots=True)
class Result:
    """The value returned by call ``seq``.

    A ``Metadata`` for ``get_metadata()``, the list of results for a batch
    (ending with an ``ExceptionWrapper`` if one of them raised), the raw
    ``Message`` for ``invoke(raw=True)``, an item for ``next_stream_item()``.
    """

    seq: int
    value: Any
    message: Message


@dataclass(frozen=True, slots=True)
class Failure:
    """Call ``seq`` raised ``exception`` remotely, or its reply could not be decoded.

    The connection stays ESTABLISHED: the frames are intact. A
    ``SerializeError`` here is what Pyro4 proxies drop their connection for;
    whether to do so is the owner's choice.
    """

    seq: int
    exception: BaseException
    message: Message


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """Call ``seq`` returned an iterator; fetch its items with ``next_stream_item(stream_id)``."""

    seq: int
    stream_id: str
    message: Message


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The stream asked for by ``next_stream_item()`` call ``seq`` has no more items."""

    seq: int
    message: Message


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to ``ping()`` call ``seq``."""

    seq: int
    message: Message


@dataclass(frozen=True, slots=True)
class Broken:
    """The connection cannot go on; it is CLOSED.

    Every call in ``pending`` (sequence numbers, oldest first) fails with
    ``error``: a ProtocolError or SecurityError for a peer that broke the
    rules, MessageTooLargeError, or ConnectionClosedError at end of stream.
    In HANDSHAKING it means the handshake failed with ``error``.
    """

    error: errors.PyroError
    pending: tuple[int, ...]


ClientEvent = Union[Connected, ConnectFailed, Result, Failure, StreamStarted, StreamEnd, Pong, Broken]

# What a pending call expects back: it decides how its reply is decoded.
_CALL, _BATCH, _METADATA, _STREAM_ITEM, _PING, _RAW = range(6)
#: State.ESTABLISHED for the quick calls, read once: on 3.11 an enum member read costs ten attribute reads
_ESTABLISHED = State.ESTABLISHED
#: request templates a connection keeps (one per object and method called on it)
_TEMPLATES = 256


class ClientProtocol(_Peer):
    """The proxy's side of one connection: handshake, pipelined calls, replies.

    ``serializer`` (a name or wire id) writes every request; it may be
    replaced between calls, each pending call remembers its own. ``seq`` is
    the last sequence number used: the CONNECT carries it as is (0 for a new
    proxy, as in Pyro4), each call takes the next free one, wrapping after
    65535. ``compression`` applies Pyro4's rule to outgoing payloads; incoming
    ones are decompressed whenever flagged, bounded by ``max_message_size``.
    ``gather``: the owner sends ``_wire.Buffers`` as they are (``Request.data``
    of a large call is one, holding the caller's large ``bytes`` uncopied).
    """

    __slots__ = ("serializer", "compression", "seq", "_connect_seq", "_pending", "_dropped", "_eof", "_prefixes")

    def __init__(self, serializer: str | int = "serpent", *, hmac_key: bytes | None = None,
                 max_message_size: int = 0, compression: bool = False, seq: int = 0,
                 gather: bool = False) -> None:
        super().__init__(max_message_size, hmac_key, gather)
        self.serializer: Serializer = get_serializer(serializer)
        self.compression = compression
        self.seq = seq & 0xFFFF
        self._connect_seq = 0
        self._pending: dict[int, tuple[int, Serializer]] = {}
        self._dropped: set[int] = set()
        self._eof = False
        self._prefixes: dict[tuple[str, str], bytes | None] = {}  # quick_invoke's templates

    @property
    def pending(self) -> tuple[int, ...]:
        """Sequence numbers of the calls waiting for a reply, oldest first."""
        return tuple(self._pending)

    # --- outgoing -------------------------------------------------------------------------

    def connect(self, object_id: str, handshake: Any = "hello", *, metadata: bool = True,
                annotations: dict[str, bytes] | None = None) -> bytes:
        """The CONNECT message; IDLE -> HANDSHAKING.

        ``metadata`` asks the daemon to include ``object_id``'s metadata in its
        CONNECTOK (protocol notes 3.2). Raises StateError unless IDLE, and
        SerializeError if ``handshake`` cannot be serialized (still IDLE).
        """
        self._require(State.IDLE, "connect")
        data: dict[str, Any] = {"handshake": handshake}
        flags = 0
        if metadata:
            data["object"] = object_id
            flags = _wire.FLAGS_META_ON_CONNECT
        out = self._message(_wire.MSG_CONNECT, self.serializer.dumps(data), flags, self.seq, annotations)
        self._connect_seq = self.seq
        self.state = State.HANDSHAKING
        return out

    def invoke(self, object_id: str, method: str, vargs: Iterable[Any], kwargs: dict[str, Any] | None, *,
               oneway: bool = False, raw: bool = False,
               annotations: dict[str, bytes] | None = None) -> Request:
        """A call of ``method`` on ``object_id``; its reply becomes Result, Failure or StreamStarted.

        ``oneway``: no reply will come (``expects_reply`` False). ``raw``: the
        Result's value is the reply ``Message``, undecoded. Raises StateError
        unless ESTABLISHED (or with 65,536 calls pending), SerializeError if the
        arguments cannot be serialized, ProtocolError for oversize annotations;
        nothing is pending after a raise.
        """
        return self._call(object_id, method, vargs, kwargs, 0, oneway, _RAW if raw else _CALL, annotations)

    def batch(self, object_id: str, calls: Iterable[tuple[str, Any, Any]], *, oneway: bool = False,
              annotations: dict[str, bytes] | None = None) -> Request:
        """Several ``(method, vargs, kwargs)`` calls in one message (protocol notes 4.7).

        The Result's value is the list of their results, cut short by an
        ``ExceptionWrapper`` at the first that raised. Raises as ``invoke``.
        """
        return self._call(object_id, "<batch>", list(calls), None, _wire.FLAGS_BATCH, oneway, _BATCH,
                          annotations)

    def get_metadata(self, object_id: str, annotations: dict[str, bytes] | None = None) -> Request:
        """Ask the daemon what ``object_id`` exposes; the Result's value is a ``Metadata``."""
        return self._call(DAEMON_NAME, "get_metadata", [object_id], {}, 0, False, _METADATA, annotations)

    def next_stream_item(self, stream_id: str, annotations: dict[str, bytes] | None = None) -> Request:
        """Ask for the next item of a stream: a Result, or StreamEnd when there is none.

        Items may be asked for ahead of need (pipelined); the daemon answers
        requests after the end with a Failure (``PyroError("item stream terminated")``).
        """
        return self._call(DAEMON_NAME, "get_next_stream_item", [stream_id], {}, 0, False, _STREAM_ITEM,
                          annotations)

    def close_stream(self, stream_id: str, annotations: dict[str, bytes] | None = None) -> Request:
        """Tell the daemon to drop a stream the caller stops early (a oneway call, as Pyro4 sends it)."""
        return self._call(DAEMON_NAME, "close_stream", [stream_id], {}, 0, True, _CALL, annotations)

    def ping(self, annotations: dict[str, bytes] | None = None) -> Request:
        """A PING; the daemon answers it without looking at it, with a ``Pong``."""
        self._require(State.ESTABLISHED, "ping")
        seq = self._next_seq()
        out = self._message(_wire.MSG_PING, b"ping", 0, seq, annotations)
        self.seq = seq
        self._pending[seq] = (_PING, self.serializer)
        return Request(seq, out, True)

    def quick_invoke(self, object_id: str, method: str, vargs: Any, correlation: bytes | None) -> bytes | None:
        """``invoke(object_id, method, vargs, {})`` for the common call, made in one pass: its bytes,
        the call pending under ``seq`` as ``invoke`` leaves it; or None, and nothing changed: use ``invoke``.

        The common call: no HMAC key, serpent, no compression, a small
        payload of plain scalar arguments within ``max_message_size``, a
        correlation id (its 16 bytes, or None) as the one annotation, and the
        next sequence number free.
        """
        if (self.state is not _ESTABLISHED or self.hmac_key or self.compression
                or self.serializer.serializer_id != _fastcall.SERPENT_ID):
            return None
        try:
            prefix = self._prefixes[object_id, method]
        except KeyError:
            if len(self._prefixes) >= _TEMPLATES:  # a program making up method names: start over
                self._prefixes.clear()
            prefix = self._prefixes[object_id, method] = _fastcall.call_prefix(object_id, method)
        seq = (self.seq + 1) & 0xFFFF
        if prefix is None or seq in self._pending or seq in self._dropped:
            return None
        data = _fastcall.invoke_message(prefix, vargs, seq, correlation, self.reader.max_message_size)
        if data is not None:
            self.seq = seq
            self._pending[seq] = (_CALL, self.serializer)
        return data

    def quick_result(self, data: bytes | bytearray, size: int) -> tuple[Any, dict[str, bytes]] | None:
        """``(value, annotations)`` of the reply to the latest call, made by ``quick_invoke``, when
        ``data[:size]`` is that whole reply, plain, holding a scalar: the value and
        annotations ``next_event()`` would give, and the call is done. For an owner
        with one call in flight: ``data`` is what it received since sending that
        call, and nothing received before waits here (``partial`` is False).

        None for anything else: the bytes went to ``receive_data`` (``size`` 0
        is the end of stream), and ``next_event()`` says what they mean.
        """
        seq = self.seq
        reply = _fastcall.scalar_result(data, size, seq, self.reader.max_message_size)
        if reply is None:
            self.receive_data(bytes(memoryview(data)[:size]))
        else:
            del self._pending[seq]
        return reply

    def cancel(self, seq: int) -> None:
        """Give up on pending call ``seq``: its reply, when it comes, is dropped without an event.

        The wire has no cancel message; the daemon still runs the call. Does
        nothing if ``seq`` is not pending.
        """
        if self._pending.pop(seq, None) is not None:
            self._dropped.add(seq)

    def close(self) -> tuple[int, ...]:
        """Any state -> CLOSED. Returns the calls that will never be answered, oldest first."""
        pending = tuple(self._pending)
        self._forget()
        return pending

    # --- incoming -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the daemon; ``b""`` means end of stream.

        Complete replies received before the end still come out of
        ``next_event()``; then a ``Broken`` with ConnectionClosedError.
        """
        if data:
            self._feed(data)
        else:
            self._eof = True

    def next_event(self) -> ClientEvent | None:
        """What the next complete message from the daemon means, or None until more bytes arrive.

        Returns None for ever once CLOSED. Raises nothing: a daemon that breaks
        the rules gives a ``Broken`` (and CLOSED), a reply that cannot be
        decoded a ``Failure`` for its call. Replies to cancelled calls are
        consumed without an event.
        """
        while self.state is not State.CLOSED:
            try:
                msg = self._next_message()
            except errors.ProtocolError as exc:
                return self._break(exc)
            if msg is None:
                if self._eof:
                    return self._break(errors.ConnectionClosedError("receiving: connection lost"))
                return None
            try:
                _wire.check_hmac(msg, self.hmac_key)
            except errors.SecurityError as exc:
                return self._break(exc)
            if self.state is not State.ESTABLISHED:
                if self.state is State.HANDSHAKING:
                    return self._connect_reply(msg)
                return self._break(errors.ProtocolError(f"invalid msg type {msg.type} received before CONNECT"))
            if self._dropped and msg.seq in self._dropped and msg.type in (_wire.MSG_RESULT, _wire.MSG_PING):
                self._dropped.discard(msg.seq)
                continue
            return self._reply(msg)
        return None

    # --- internals ------------------------------------------------------------------------

    def _require(self, state: State, what: str) -> None:
        if self.state is not state:
            raise StateError(f"cannot {what}: the connection is {self.state.name}, not {state.name}")

    def _next_seq(self) -> int:
        seq = self.seq
        for _ in range(0x10000):
            seq = (seq + 1) & 0xFFFF
            if seq not in self._pending and seq not in self._dropped:
                return seq
        raise StateError("all 65536 sequence numbers are taken by pending calls on this connection")

    def _message(self, msg_type: int, payload: _wire.Data, flags: int, seq: int,
                 annotations: dict[str, bytes] | None) -> _wire.Data:
        if self.compression and not flags & _wire.FLAGS_COMPRESSED:
            payload, flags = _wire.compress_if_useful(payload, flags)
        # encoding neither keeps nor changes the annotations: no copy needed
        return self._encode(msg_type, payload, self.serializer.serializer_id, flags, seq,
                            {} if annotations is None else annotations)

    def _call(self, object_id: str, method: str, vargs: Any, kwargs: Any, flags: int, oneway: bool,
              kind: int, annotations: dict[str, bytes] | None) -> Request:
        if self.state is not State.ESTABLISHED:
            self._require(State.ESTABLISHED, f"call {method}")
        serializer = self.serializer
        blob = blob_request(serializer, object_id, method, vargs, kwargs)
        if blob is None:
            payload = (serializer.dumps_call_parts if self.gather else serializer.dumps_call)(
                object_id, method, vargs, kwargs)
        else:  # a SerializedBlob, sent as Pyro4 does (see _blob)
            payload, blob_flags, blob_annotations = blob
            flags |= blob_flags
            annotations = {**(annotations or {}), **blob_annotations}
        if oneway:
            flags |= _wire.FLAGS_ONEWAY
        seq = (self.seq + 1) & 0xFFFF
        if seq in self._pending or seq in self._dropped:  # only with thousands of calls pending
            seq = self._next_seq()
        out = self._message(_wire.MSG_INVOKE, payload, flags, seq, annotations)
        self.seq = seq  # only now: a call that could not be encoded used no sequence number
        if not oneway:
            self._pending[seq] = (kind, serializer)
        return Request(seq, out, not oneway)

    def _forget(self) -> None:
        self.state = State.CLOSED
        self._ready = None
        self._pending.clear()
        self._dropped.clear()

    def _break(self, error: errors.PyroError) -> Broken:
        pending = tuple(self._pending)
        self._forget()
        return Broken(error, pending)

    def _decode(self, msg: Message, serializer: Serializer) -> Any:
        return serializer.loads(msg.payload(self.max_message_size))

    def _connect_reply(self, msg: Message) -> ClientEvent:
        if msg.type == _wire.MSG_CONNECTFAIL:
            # The reason is in whatever serializer the daemon could use (marshal if it
            # understood nothing); a reason we cannot read still refuses the connection.
            try:
                reason = str(self._decode(msg, get_serializer(msg.serializer_id)))
            except (errors.PyroError, zlib.error) as exc:
                reason = f"(unreadable reason: {exc})"
            self._forget()
            return ConnectFailed(reason, msg)
        if msg.type != _wire.MSG_CONNECTOK:
            return self._break(errors.ProtocolError(f"connect: invalid msg type {msg.type} received"))
        if msg.seq != self._connect_seq:
            return self._break(errors.ProtocolError(
                f"connect: reply sequence out of sync, got {msg.seq} expected {self._connect_seq}"))
        try:
            body = self._decode(msg, get_serializer(msg.serializer_id))
            metadata = None
            if msg.flags & _wire.FLAGS_META_ON_CONNECT:
                handshake, meta = body["handshake"], body.get("meta")
                metadata = Metadata.from_wire(meta) if meta else None
            else:
                handshake = body
        except errors.PyroError as exc:
            return self._break(exc)
        except (KeyError, TypeError, AttributeError, zlib.error) as exc:
            return self._break(errors.ProtocolError(f"connect: invalid CONNECTOK payload: {exc!r}"))
        self.state = State.ESTABLISHED
        return Connected(handshake, metadata, msg)

    def _reply(self, msg: Message) -> ClientEvent:
        seq = msg.seq
        expected = self._pending.get(seq)
        if expected is None:
            oldest = next(iter(self._pending), None)
            return self._break(errors.ProtocolError(
                f"invoke: reply sequence out of sync, got {seq} expected {oldest}"))
        kind, serializer = expected
        if msg.type != (_wire.MSG_PING if kind == _PING else _wire.MSG_RESULT):
            return self._break(errors.ProtocolError(f"invoke: invalid msg type {msg.type} received"))
        if kind == _PING:
            del self._pending[seq]
            return Pong(seq, msg)
        if msg.serializer_id != serializer.serializer_id:
            return self._break(errors.SerializeError(f"invalid serializer in response: {msg.serializer_id}"))
        del self._pending[seq]
        if kind == _RAW:
            return Result(seq, msg, msg)
        if not msg.flags and kind == _CALL and serializer.serializer_id == _fastcall.SERPENT_ID:
            value = _fastcall.serpent_value(msg.data)  # a plain reply holding a scalar
            if value is not _fastcall.FAIL:
                return Result(seq, value, msg)
        if msg.flags & _wire.FLAGS_ITEMSTREAMRESULT:  # checked before EXCEPTION: it comes with it
            stream_id = msg.annotations.get("STRM")
            if not stream_id:
                return Failure(seq, errors.ProtocolError(
                    "result of call is an iterator, but the server is not configured to allow streaming"), msg)
            return StreamStarted(seq, stream_id.decode("ascii", "replace"), msg)
        try:
            value = serializer.loads(msg.payload(self.reader.max_message_size))
        except errors.PyroError as exc:
            return Failure(seq, exc, msg)
        except zlib.error as exc:  # flagged compressed, but it is not
            return Failure(seq, errors.SerializeError(f"invalid compressed payload: {exc}"), msg)
        if msg.flags & _wire.FLAGS_EXCEPTION:
            if kind == _STREAM_ITEM and isinstance(value, StopIteration):
                return StreamEnd(seq, msg)
            if not isinstance(value, BaseException):
                value = errors.ProtocolError(f"invalid exception payload: {value!r}")
            return Failure(seq, value, msg)
        if kind == _METADATA:
            try:
                value = Metadata.from_wire(value)
            except errors.ProtocolError as exc:
                return Failure(seq, exc, msg)
        return Result(seq, value, msg)
