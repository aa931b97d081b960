"""The daemon's record of one accepted client connection."""

from __future__ import annotations

import socket
import time
import weakref
from typing import Any

from .hosting import READ
from ._protocol import ServerProtocol
from ._transport import PlainTransport, TLSTransport
from ._wire import Outbox


class ClientConnection:
    """One accepted client connection: its socket, protocol state and buffers.

    User code sees it as ``current_context.client`` and in
    ``validateHandshake(conn, data)`` / ``clientDisconnect(conn)``.
    """

    __slots__ = ("sock", "addr", "protocol", "out", "busy", "read_paused", "interest", "closed",
                 "partial_since", "last_active", "decoded", "pyroInstances", "tracked_resources",
                 "eof", "close_reason", "transport", "__weakref__")

    def __init__(self, sock: socket.socket, addr: Any, protocol: ServerProtocol,
                 transport: PlainTransport | TLSTransport | None = None) -> None:
        self.sock = sock
        self.transport = transport or PlainTransport(sock)  # what reads and writes go through
        self.addr = addr
        self.protocol = protocol
        self.out = Outbox()  # replies not yet sent (a large one as its own buffers)
        self.busy = False           # a call of this connection is running (or awaited)
        self.read_paused = False    # readiness arrived while busy: stop watching until done
        self.decoded: tuple | None = None  # a request a worker decoded, waiting to be dispatched
        self.interest = READ
        self.closed = False
        self.eof = False            # the client closed (or half-closed) its end: finish what arrived, then close
        self.close_reason: str | None = None  # why the daemon closed it, for results that arrive later
        self.partial_since: float | None = None
        self.last_active = time.monotonic()
        self.pyroInstances: dict = {}   # per-connection instances of registered classes
        self.tracked_resources: weakref.WeakSet = weakref.WeakSet()  # closed when the connection ends

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The client's certificate (as ``ssl.SSLSocket.getpeercert``), None without TLS
        or when the client presented none; what ``validateHandshake`` checks, as in Pyro4."""
        return self.transport.getpeercert(binary_form)

    def __repr__(self) -> str:
        return f"<ClientConnection {self.addr} {'closed' if self.closed else 'open'}>"
