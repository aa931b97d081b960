"""TLS as a sans-IO layer: ciphertext in and out on one side, plaintext on the other.

Pyro4 wraps its sockets with blocking ``ssl`` calls, so a peer that connects and
never finishes its handshake stalls a multiplex server. Here TLS is an
``ssl.SSLObject`` over a pair of ``ssl.MemoryBIO`` (the way asyncio's ``sslproto``
does it): the socket layer feeds whatever ciphertext arrived into
``receive_ciphertext()``, sends whatever ``ciphertext_to_send()`` returns, and in
between asks this object to advance the handshake or move application data.
Nothing here touches a socket, a clock or a thread, so every rule (handshake
failures, renegotiation refused, ``close_notify``, a peer speaking plaintext)
is tested with byte strings alone.

The Pyro protocol runs unchanged inside TLS: nothing in the URI or the message
header says TLS is on, so both ends must be configured alike (protocol notes 12).

Contexts follow Pyro4 4.82's configuration items (``SSL_SERVERCERT`` and friends)
with one difference that matters inside a loop: an encrypted private key never
makes OpenSSL prompt on the terminal. Its password comes from the config item
or a callback; with neither, loading fails with an error that names the item.
"""

from __future__ import annotations

import enum
import os
import ssl
from typing import Any, Callable

from .errors import CommunicationError, SecurityError

# How much plaintext one SSLObject.read() call may return; read() loops until the
# fed ciphertext is used up, so its work is bounded by what the socket layer fed.
_READ_CHUNK = 256 * 1024

# A Pyro message starts with this tag; TLS records never do (their first byte is a record type).
_PYRO_TAG = b"PYRO"
_PLAINTEXT_PEER = {
    True: "plaintext Pyro peer: this end speaks TLS (SSL), the peer does not",
    False: "the daemon answered in plaintext Pyro: it does not use TLS (SSL); both ends must set SSL",
}

PasswordSource = str | bytes | Callable[[], str | bytes] | None


class TLSError(CommunicationError, SecurityError):
    """The TLS layer failed: a handshake refused, a bad record, a plaintext peer.

    A ``CommunicationError`` because the connection is gone, and a
    ``SecurityError`` because the reason is usually a certificate or a peer that
    does not speak TLS; either ``except`` clause catches it.
    """


class TLSState(enum.Enum):
    """Where a TLS session stands.

    HANDSHAKING: no application data may move yet.
    ESTABLISHED: ``read()``/``write()`` move application data.
    CLOSED: the peer sent ``close_notify`` or the transport ended, or
    ``close()`` was called, or TLS failed; nothing more is read. After the
    peer's close alone, ``write()`` still sends (``half_closed``): a peer may
    close its side right behind a call and wait for the reply, as TLS 1.3
    and TCP allow.
    """

    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"


class TLSSession:
    """One TLS session, client or server side, over memory buffers.

    The socket layer's loop, per readiness event::

        session.receive_ciphertext(sock.recv(n))     # b"" when the peer closed
        if session.state is TLSState.HANDSHAKING:
            session.do_handshake()                    # True once established
        plaintext = session.read()                    # feed to the Pyro protocol
        session.write(reply_bytes)
        sock.send(session.ciphertext_to_send())

    Every method raises ``TLSError`` with a reason when the peer broke TLS;
    the connection must then be closed (after sending what
    ``ciphertext_to_send()`` still holds, typically an alert).
    """

    __slots__ = ("_in", "_out", "_obj", "state", "peer_closed", "server_side", "_head", "_writable")

    def __init__(self, context: ssl.SSLContext, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=server_side,
                                     server_hostname=None if server_side else server_hostname)
        self.server_side = server_side
        self.state = TLSState.HANDSHAKING
        self.peer_closed = False
        self._writable = False  # established, and neither close() nor a TLS failure since
        # The peer's first bytes, kept to tell a plaintext Pyro peer from a broken
        # TLS one even when its header arrives in pieces.
        self._head = b""

    # --- ciphertext side --------------------------------------------------------------

    def receive_ciphertext(self, data: bytes) -> None:
        """Hand over bytes read from the socket; ``b""`` means the peer closed its end.

        An end of stream without ``close_notify`` is normal for Pyro peers
        (Pyro4 never sends one), so it is not an error here: ``peer_closed``
        becomes True and ``read()`` returns what was complete before it.
        """
        if data:
            if len(self._head) < len(_PYRO_TAG):
                self._head += data[:len(_PYRO_TAG) - len(self._head)]
            self._in.write(data)
        else:
            self._in.write_eof()
            self.peer_closed = True

    def ciphertext_to_send(self) -> bytes:
        """The bytes the socket must send next (handshake records, data, alerts); may be ``b""``."""
        return self._out.read()

    # --- handshake --------------------------------------------------------------------

    def do_handshake(self) -> bool:
        """Advance the handshake with the ciphertext received so far.

        Returns True once the handshake is complete (state ESTABLISHED), False
        while it waits for more bytes from the peer. Raises ``TLSError`` if the
        peer failed verification, sent garbage or plaintext, or closed midway.
        """
        if self.state is TLSState.ESTABLISHED:
            return True
        if self.state is TLSState.CLOSED:
            raise TLSError("TLS session is closed")
        try:
            self._obj.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLEOFError):
            if self.peer_closed:
                self.state = TLSState.CLOSED
                raise TLSError("peer closed the connection during the TLS handshake") from None
            return False
        except ssl.SSLError as exc:
            self.state = TLSState.CLOSED
            if self._head == _PYRO_TAG:
                raise TLSError(_PLAINTEXT_PEER[self.server_side]) from None
            raise TLSError(f"TLS handshake failed: {_describe(exc)}") from None
        self.state = TLSState.ESTABLISHED
        self._writable = True
        return True

    # --- application data -------------------------------------------------------------

    def read(self) -> bytes:
        """The application bytes decrypted from what was received; ``b""`` if none yet.

        After the peer's ``close_notify`` or end of stream, returns the rest and
        then ``b""`` with ``state`` CLOSED. Raises ``TLSError`` on a bad record
        or a renegotiation attempt.
        """
        if self.state is not TLSState.ESTABLISHED:
            return b""
        chunks = []
        while True:
            try:
                chunk = self._obj.read(_READ_CHUNK)
            except ssl.SSLWantReadError:
                if self.peer_closed:  # transport ended without close_notify: normal for Pyro peers
                    self.state = TLSState.CLOSED
                break
            except ssl.SSLZeroReturnError:  # close_notify
                self.state = TLSState.CLOSED
                break
            except ssl.SSLEOFError:  # transport ended mid-stream with ssl's strict EOF rule
                self.state = TLSState.CLOSED
                break
            except ssl.SSLError as exc:
                self._fail()
                raise TLSError(f"TLS error: {_describe(exc)}") from None
            if not chunk:
                self.state = TLSState.CLOSED
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt application bytes; they appear in ``ciphertext_to_send()``.

        Raises ``TLSError`` before the handshake (the data would silently be
        lost otherwise) and after ``close()`` or a TLS failure; after the peer's
        close alone it still sends.
        """
        if not self._writable:
            raise TLSError(f"cannot send application data: TLS session is {self.state.value}")
        view = memoryview(data)
        while view:
            try:
                written = self._obj.write(view)
            except ssl.SSLError as exc:
                self._fail()
                raise TLSError(f"TLS error while sending: {_describe(exc)}") from None
            view = view[written:]

    def close(self) -> None:
        """Queue our ``close_notify`` (best effort) and end the session.

        The alert appears in ``ciphertext_to_send()``; we do not wait for the
        peer's answer, since Pyro peers just close the socket.
        """
        if self._writable:
            try:
                self._obj.unwrap()
            except ssl.SSLError:
                pass
        self._fail()

    @property
    def half_closed(self) -> bool:
        """The peer closed its side (``close_notify`` or end of stream); we may still send."""
        return self.state is TLSState.CLOSED and self._writable

    def _fail(self) -> None:
        self.state = TLSState.CLOSED
        self._writable = False

    # --- what user code may read --------------------------------------------------------

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer's certificate as ``ssl.SSLSocket.getpeercert`` gives it (None before the handshake)."""
        if self.state is TLSState.HANDSHAKING:
            return None
        return self._obj.getpeercert(binary_form)

    def cipher(self) -> tuple[str, str, int] | None:
        return self._obj.cipher()

    def version(self) -> str | None:
        return self._obj.version()


def _describe(exc: ssl.SSLError) -> str:
    """A one-line reason from an SSLError, e.g. "CERTIFICATE_VERIFY_FAILED (certificate has expired)"."""
    reason = getattr(exc, "reason", None)
    verify = getattr(exc, "verify_message", None)
    if reason and verify:
        return f"{reason} ({verify})"
    if reason:
        return str(reason)
    return str(exc) or type(exc).__name__


# --- contexts from Pyro4's configuration items --------------------------------------------

def _password(source: PasswordSource, item: str) -> Callable[[], str | bytes]:
    """A password callback for ``load_cert_chain`` that never lets OpenSSL prompt.

    Without a callback, OpenSSL asks on the controlling terminal for an encrypted
    key: that would block the loop, and hang a process without stdin. With
    neither a password nor a callback the callback raises, naming the item to set.
    """
    if callable(source):
        return source
    if source:
        return lambda: source
    def missing() -> str:
        raise TLSError(f"the private key is encrypted: set {item} (or PYRO_{item}) to its password, "
                       "or pass a password callback")
    return missing


def _load_cas(context: ssl.SSLContext, cacerts: str | None) -> None:
    """``SSL_CACERTS``: a file of certificates, or a directory prepared with c_rehash, as in Pyro4."""
    if not cacerts:
        return
    if os.path.isdir(cacerts):
        context.load_verify_locations(capath=cacerts)
    else:
        context.load_verify_locations(cafile=cacerts)


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    # TLS 1.2 renegotiation lets a peer restart the expensive handshake at will
    # inside an established session: refuse it (TLS 1.3 has none).
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return context


def server_context(certfile: str, keyfile: str | None = None, password: PasswordSource = None,
                   cacerts: str | None = None, require_client_cert: bool = False) -> ssl.SSLContext:
    """A daemon's context with Pyro4's semantics (``SSL_SERVERCERT`` and friends).

    Client certificates are verified against ``cacerts`` only when
    ``require_client_cert`` is true (then they are required), as in Pyro4.
    Raises ``TLSError`` for a missing certificate, ``ssl.SSLError``/``OSError``
    for unreadable files.
    """
    if not certfile:
        raise TLSError("SSL is on but no server certificate is set: set SSL_SERVERCERT (and SSL_SERVERKEY)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile or None, _password(password, "SSL_SERVERKEYPASSWD"))
    _load_cas(context, cacerts)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return _harden(context)


def client_context(certfile: str | None = None, keyfile: str | None = None, password: PasswordSource = None,
                   cacerts: str | None = None) -> ssl.SSLContext:
    """A client's context with Pyro4's semantics: the server's chain and host name are verified.

    ``cacerts`` adds trust anchors beside the system's default ones; a client
    certificate is presented when ``certfile`` is set (mutual TLS).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if certfile:
        context.load_cert_chain(certfile, keyfile or None, _password(password, "SSL_CLIENTKEYPASSWD"))
    _load_cas(context, cacerts)
    return _harden(context)


def server_context_from_config(config: Any) -> ssl.SSLContext:
    """The daemon's default context, made from the ``SSL_*`` config items."""
    return server_context(config.SSL_SERVERCERT, config.SSL_SERVERKEY, config.SSL_SERVERKEYPASSWD,
                          config.SSL_CACERTS, config.SSL_REQUIRECLIENTCERT)


_client_contexts: dict[tuple, ssl.SSLContext] = {}


def client_context_from_config(config: Any) -> ssl.SSLContext:
    """A proxy's or client's default context, made from the ``SSL_*`` config items.

    Made once per set of item values and then shared (as Pyro4 does): loading
    the system's trust store takes a good part of a second, which must not be
    paid per connection, least of all on a loop's thread.
    """
    items = (config.SSL_CLIENTCERT, config.SSL_CLIENTKEY, config.SSL_CLIENTKEYPASSWD, config.SSL_CACERTS)
    context = _client_contexts.get(items)
    if context is None:
        context = _client_contexts[items] = client_context(*items)
    return context
