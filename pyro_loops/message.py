"""Pyro4's ``message`` module: the message type and flag numbers of the wire protocol.

The framing itself lives in ``_wire`` (sans-IO); this module gives it the
names Pyro4 programs import (the protocol notes, section 1, give the layout),
and Pyro4's two ``Message`` helpers that talk over a connection themselves,
``Message.ping`` and ``Message.recv``.
"""

from __future__ import annotations

import socket
from typing import Any, Iterable

from . import _wire, errors
from ._wire import (FLAGS_BATCH, FLAGS_COMPRESSED, FLAGS_EXCEPTION, FLAGS_ITEMSTREAMRESULT, FLAGS_KEEPSERIALIZED,
                    FLAGS_META_ON_CONNECT, FLAGS_ONEWAY, MSG_CONNECT, MSG_CONNECTFAIL, MSG_CONNECTOK, MSG_INVOKE,
                    MSG_PING, MSG_RESULT)
from .configuration import config

__all__ = ["FLAGS_BATCH", "FLAGS_COMPRESSED", "FLAGS_EXCEPTION", "FLAGS_ITEMSTREAMRESULT", "FLAGS_KEEPSERIALIZED",
           "FLAGS_META_ON_CONNECT", "FLAGS_ONEWAY", "MSG_CONNECT", "MSG_CONNECTFAIL", "MSG_CONNECTOK", "MSG_INVOKE",
           "MSG_PING", "MSG_RESULT", "Message"]


class Message(_wire.Message):
    """A wire message (``_wire.Message``), with Pyro4's blocking helpers.

    ``ping`` and ``recv`` take a connected socket, such as a proxy's
    ``_pyroConnection`` between calls; messages the library itself receives
    are plain ``_wire.Message`` objects.
    """

    @staticmethod
    def ping(connection: Any, hmac_key: bytes | None = None) -> None:
        """Send a PING on ``connection`` and wait for the daemon's answer (blocking).

        Raises ConnectionClosedError if the connection is closed, as Pyro4 does.
        """
        ping = _wire.Message(MSG_PING, b"ping", 42, 0, 0)  # Pyro4's ping: serializer id 42, seq 0
        try:
            connection.sendall(_wire.encode(ping, hmac_key))
        except OSError as exc:
            raise errors.ConnectionClosedError(f"sending: {exc}") from None
        Message.recv(connection, [MSG_PING], hmac_key)

    @staticmethod
    def recv(connection: Any, requiredMsgTypes: Iterable[int] | None = None,  # noqa: N803 - Pyro4's name
             hmac_key: bytes | None = None) -> _wire.Message:
        """Read exactly one message from ``connection`` (blocking): no byte of the next is consumed.

        Raises ConnectionClosedError at end of stream, ProtocolError for a
        message type not in ``requiredMsgTypes``, SecurityError for a bad HMAC.
        """
        reader = _wire.FrameReader(config.MAX_MESSAGE_SIZE)
        header = _recv_exactly(connection, _wire.HEADER_SIZE)
        reader.feed(header)
        msg = reader.next_message()  # checks the header before its announced size is read
        if msg is None:
            fields = _wire.HEADER.unpack(header)
            reader.feed(_recv_exactly(connection, fields[5] + fields[7]))  # payload and annotations
            msg = reader.next_message()
        if msg is None:
            raise errors.ProtocolError("incomplete message")  # cannot happen: every announced byte was fed
        if requiredMsgTypes is not None and msg.type not in requiredMsgTypes:
            raise errors.ProtocolError(f"invalid msg type {msg.type} received")
        _wire.check_hmac(msg, hmac_key)
        return msg


def _recv_exactly(connection: Any, size: int) -> bytes:
    """``size`` bytes from ``connection``, however many reads that takes."""
    chunks = []
    while size:
        try:
            chunk = connection.recv(size)
        except socket.timeout:
            raise errors.TimeoutError("receiving: timeout") from None
        except OSError as exc:
            raise errors.ConnectionClosedError(f"receiving: {exc}") from None
        if not chunk:
            raise errors.ConnectionClosedError("receiving: not enough data")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
