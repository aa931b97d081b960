"""The daemon's side of one connection, as a sans-IO state machine.

Bytes go in with ``receive_data()``; ``next_event()`` says what the peer asked
for (a handshake, a call, a ping) or that it broke the protocol. Replies are
turned into bytes by the ``*_bytes`` methods. No sockets, no registry: the
daemon decides what to answer, this class knows how the answer must look and
which protocol rules apply before and after the handshake (PROTOCOL.md 3, 11).
"""

from __future__ import annotations

import marshal
from dataclasses import dataclass

from . import _wire
from ._wire import Message
from .errors import MessageTooLargeError, ProtocolError, SecurityError

MARSHAL_ID = 3


@dataclass(slots=True)
class ConnectRequest:
    """A well-formed CONNECT; the daemon answers with connect_ok/fail_bytes."""
    msg: Message


@dataclass(slots=True)
class InvokeRequest:
    """A call (normal, oneway or batch) after the handshake."""
    msg: Message


@dataclass(slots=True)
class PingRequest:
    msg: Message


@dataclass(slots=True)
class Violation:
    """The peer broke the protocol. Send ``reply`` if not None, then close."""
    reason: str
    reply: bytes | None


Event = ConnectRequest | InvokeRequest | PingRequest | Violation


class ServerProtocol:
    """Protocol state of one client connection, before and after the handshake."""

    __slots__ = ("reader", "hmac_key", "established", "broken")

    def __init__(self, max_message_size: int = 0, hmac_key: bytes | None = None) -> None:
        self.reader = _wire.FrameReader(max_message_size)
        self.hmac_key = hmac_key
        self.established = False
        self.broken = False

    def receive_data(self, data: bytes) -> None:
        self.reader.feed(data)

    @property
    def partial(self) -> bool:
        """True while bytes of an incomplete message are buffered."""
        return self.reader.buffered > 0

    def next_event(self) -> Event | None:
        """The next thing the peer asked for, or None until more bytes arrive."""
        if self.broken:
            return None
        try:
            msg = self.reader.next_message()
        except MessageTooLargeError as exc:
            return self._violation(str(exc), quiet=True)
        except ProtocolError as exc:
            return self._violation(str(exc))
        if msg is None:
            return None
        if not self.established:
            if msg.type != _wire.MSG_CONNECT:
                return self._violation(f"invalid msg type {msg.type} received")
            try:
                _wire.check_hmac(msg, self.hmac_key)
            except SecurityError as exc:
                return self._violation(str(exc))
            return ConnectRequest(msg)
        if msg.type not in (_wire.MSG_INVOKE, _wire.MSG_PING):
            return self._violation(f"invalid msg type {msg.type} received")
        try:
            _wire.check_hmac(msg, self.hmac_key)
        except SecurityError as exc:
            return self._violation(str(exc))
        if msg.type == _wire.MSG_PING:
            return PingRequest(msg)
        return InvokeRequest(msg)

    def _violation(self, reason: str, quiet: bool = False) -> Violation:
        # Before the handshake Pyro4 explains itself with a CONNECTFAIL; after
        # it, and for oversize messages, it just closes (PROTOCOL.md 11.9).
        self.broken = True
        reply = None if (quiet or self.established) else self.connect_fail_bytes(reason)
        return Violation(reason, reply)

    def encode(self, msg: Message) -> bytes:
        return _wire.encode(msg, self.hmac_key)

    def connect_ok_bytes(self, request: Message, data: bytes, flags: int,
                         annotations: dict[str, bytes]) -> bytes:
        self.established = True
        return self.encode(Message(_wire.MSG_CONNECTOK, data, request.serializer_id, flags,
                                   request.seq, annotations))

    def connect_fail_bytes(self, reason: str, request: Message | None = None,
                           data: bytes | None = None) -> bytes:
        """CONNECTFAIL carrying ``reason``; marshal unless the request's serializer wrote ``data``."""
        self.broken = True
        if data is None:
            return self.encode(Message(_wire.MSG_CONNECTFAIL, marshal.dumps(reason), MARSHAL_ID, 0,
                                       request.seq if request else 0))
        return self.encode(Message(_wire.MSG_CONNECTFAIL, data, request.serializer_id, 0, request.seq))

    def pong_bytes(self, request: Message, annotations: dict[str, bytes]) -> bytes:
        return self.encode(Message(_wire.MSG_PING, b"pong", request.serializer_id, 0, request.seq,
                                   annotations))

    def result_bytes(self, request: Message, data: bytes, flags: int,
                     annotations: dict[str, bytes]) -> bytes:
        return self.encode(Message(_wire.MSG_RESULT, data, request.serializer_id, flags, request.seq,
                                   annotations))
