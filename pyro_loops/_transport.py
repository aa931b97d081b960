"""What a connection's non-blocking socket code calls to move bytes: plain, or TLS.

The daemon and the loop client read and write through one small object per
connection instead of the socket itself, so TLS lives in one place and the
socket code has no ``if tls`` branches. Both transports keep the socket's own
contract, which that code already handles:

``recv(n)``
    application bytes; ``b""`` once the peer has closed; raises
    ``BlockingIOError`` when nothing is ready yet (for TLS also while the
    handshake is in progress, or while a handshake step waits for its turn);
    ``TLSError`` when the peer broke TLS; ``OSError`` as the socket does.
``send(data)``
    how many application bytes were taken (maybe fewer than given); raises
    ``BlockingIOError`` when none could be.
``send_parts(buffers)``
    the same for a list of buffers to write in order (``_wire.Outbox``).
``ended``
    the peer will send nothing more though its socket may stay open (TLS
    ``close_notify`` that came with the last data): an end of stream that
    no readiness event will report.
``wants_write``
    bytes are waiting for the socket to take them (TLS records made while
    reading, say handshake messages): watch the socket for writability and
    call ``flush()``.
``held``
    how many such bytes: the owner counts them with its own unsent bytes
    against its output bounds.

Nothing here blocks: every socket call is a non-blocking ``recv``/``send``.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, Callable

from ._tls import TLSSession, TLSState
from ._wire import Buffers

# Plaintext taken per send(): the ciphertext of one chunk is what a TLS
# transport holds for the socket at most, the rest stays in the caller's buffer
# (where its output bounds count it).
_SEND_CHUNK = 64 * 1024


#: Buffers handed to one sendmsg call at most (Linux takes 1024)
_IOV_MAX = 64
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")  # not on Windows


def sendall_buffers(sock: socket.socket, data: Buffers) -> None:
    """Write all of ``data`` to a blocking socket (or one with a timeout), as ``sendall`` does:
    with ``sendmsg``, so header and payload go out together and no part is copied to join them.

    A TLS socket has no ``sendmsg`` (nor has Windows): the parts are written in turn. Raises as
    ``sendall`` (``socket.timeout``, ``OSError``); what was written then is unknown.
    """
    if isinstance(sock, ssl.SSLSocket) or not _HAS_SENDMSG:
        for part in data.parts:
            sock.sendall(part)
        return
    views = [memoryview(part) for part in data.parts]
    first = 0
    while first < len(views):
        sent = sock.sendmsg(views[first:first + _IOV_MAX])
        while sent:
            size = views[first].nbytes
            if sent < size:
                views[first] = views[first][sent:]
                break
            sent -= size
            first += 1


def receive_blocking(sock: socket.socket, protocol: Any, size: int) -> None:
    """One read of a blocking socket (or one with a timeout) into ``protocol`` (a
    ``_protocol`` role): a large payload under way straight into its own buffer
    (``FrameReader.receive_into``), anything else ``recv(size)`` as usual.
    Raises as ``recv``."""
    reader = protocol.reader
    view = reader.receive_into()
    if view is None:
        protocol.receive_data(sock.recv(size))
        return
    with view:
        count = sock.recv_into(view)
    if count:
        reader.received(count)
    else:
        protocol.receive_data(b"")  # end of stream


def _always() -> bool:
    return True


class PlainTransport:
    """The socket itself."""

    __slots__ = ("sock",)
    wants_write = False
    held = 0
    handshaking = False
    ended = False
    tls = False

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        return self.sock.send(data)

    def send_parts(self, buffers: list[bytearray | memoryview]) -> int:
        """``send`` of several buffers in one system call (``sendmsg``), none joined."""
        if _HAS_SENDMSG:
            return self.sock.sendmsg(buffers)
        return self.sock.send(buffers[0])

    def flush(self) -> None:
        """Nothing is ever held back."""

    def getpeercert(self, binary_form: bool = False) -> Any:
        return None

    def close(self) -> None:
        """Nothing to say before the socket closes."""


class TLSTransport:
    """A TLS session over a non-blocking socket.

    ``may_step()`` is asked before each handshake step (the CPU-heavy part: key
    exchange and signatures); when it says no, the ciphertext read so far waits
    in the session and ``recv`` raises ``BlockingIOError``; the owner calls
    ``recv`` again later (its next loop pass), which takes the step then.
    """

    __slots__ = ("sock", "session", "_pending", "_may_step", "_received_any")
    tls = True

    def __init__(self, sock: socket.socket, session: TLSSession,
                 may_step: Callable[[], bool] = _always) -> None:
        self.sock = sock
        self.session = session
        self._pending = bytearray()   # ciphertext the socket has not taken yet
        self._may_step = may_step
        self._received_any = False

    @property
    def wants_write(self) -> bool:
        return bool(self._pending)

    @property
    def held(self) -> int:
        return len(self._pending)

    @property
    def handshaking(self) -> bool:
        return self.session.state is TLSState.HANDSHAKING

    @property
    def ended(self) -> bool:
        return self.session.state is TLSState.CLOSED

    def start(self) -> None:
        """Client side: make and send the first handshake flight (ClientHello)."""
        self._step()

    def recv(self, size: int) -> bytes:
        session = self.session
        try:
            data = self.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            data = None   # nothing new, but a deferred handshake step may be due
        except ConnectionResetError:
            # What a TLS 1.3 peer's close usually looks like: the session tickets a
            # server sends after the handshake sat unread in its socket. An end of
            # stream like any other (a message cut short still says so upstream).
            data = b""
        if data is not None:
            self._received_any = self._received_any or bool(data)
            session.receive_ciphertext(data)
        if session.state is TLSState.HANDSHAKING:
            if not self._received_any and session.peer_closed and session.server_side:
                return b""  # connected and closed without a word: nothing to report
            if not self._step():
                raise BlockingIOError
        try:
            plaintext = session.read()
        finally:
            self._queue_output()
        if plaintext:
            return plaintext
        if session.state is TLSState.CLOSED:
            return b""
        raise BlockingIOError

    def _step(self) -> bool:
        """One handshake step if allowed; True once established. Sends what it made."""
        if not self._may_step():
            return False
        try:
            return self.session.do_handshake()
        finally:
            self._queue_output()

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self.flush()
        if self._pending:
            raise BlockingIOError
        chunk = memoryview(data)[:_SEND_CHUNK]
        self.session.write(chunk)
        self._queue_output()
        return len(chunk)

    def send_parts(self, buffers: list[bytearray | memoryview]) -> int:
        """``send`` of the first buffer: TLS encrypts a record at a time anyway."""
        return self.send(buffers[0])

    def flush(self) -> None:
        """Send held-back ciphertext as far as the socket takes it (never blocks)."""
        while self._pending:
            try:
                sent = self.sock.send(self._pending)
            except (BlockingIOError, InterruptedError):
                return
            del self._pending[:sent]

    def _queue_output(self) -> None:
        out = self.session.ciphertext_to_send()
        if out:
            self._pending += out
            try:
                self.flush()
            except OSError:
                pass  # the next recv/send sees the broken socket and says so

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self.session.getpeercert(binary_form)

    def close(self) -> None:
        """Queue ``close_notify`` and send what the socket takes now (best effort)."""
        if self.session.state is TLSState.ESTABLISHED or self.session.half_closed:
            self.session.close()
            self._queue_output()


def tls_transport(sock: socket.socket, context: ssl.SSLContext, server_side: bool,
                  server_hostname: str | None = None,
                  may_step: Callable[[], bool] = _always) -> TLSTransport:
    """A TLS transport over ``sock`` (server or client role)."""
    return TLSTransport(sock, TLSSession(context, server_side, server_hostname), may_step)
