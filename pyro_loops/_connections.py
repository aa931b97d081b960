"""The daemon's socket side: the listening socket and every accepted connection.

``Connections`` accepts (backing off while descriptors run out), reads,
sends and closes, computes each socket's interest, keeps the totals of
buffered input and output within their bounds and runs the per-connection
deadlines (handshake, half frame, idle). It knows nothing about calls: the
complete messages it reads go to a ``Requests`` object (the daemon's call
dispatch), and what happens when a connection closes is the daemon's
``closed`` callback.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import ssl
import sys
import time
from typing import Any, Callable, Protocol

from . import _wire, socketutil
from ._connection import ClientConnection
from ._deadlines import KeyedHeap, SizeRanking
from ._protocol import ServerProtocol, State
from ._ratelog import RateLimitedLog
from ._tls import TLSError
from ._transport import tls_transport
from .configuration import config
from .hosting import READ, WRITE, Watcher, log, report_error

_RECV_SIZE = 64 * 1024  # larger requests allocate through mmap on every recv: several times slower
_SEND_BUDGET = 4 * 1024 * 1024     # bytes written per writable event, for fairness
_ACCEPT_BUDGET = 64                # connections accepted per readable event
_OUTPUT_HIGH_WATER = 1024 * 1024   # stop reading a connection whose replies pile up
_ACCEPT_BACKOFF = (0.1, 1.0)       # seconds accepting pauses when out of descriptors: first, most
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_HANDSHAKE = "handshake"           # kinds of per-connection deadline in Connections.timers
_HALF_FRAME = "half frame"


class Requests(Protocol):
    """What the connection side hands complete messages to (the daemon's call dispatch)."""

    def handle(self, conn: ClientConnection, event: Any) -> None:
        """Act on one protocol event of ``conn`` (a call, a ping, a handshake, a violation)."""

    def dispatch_decoded(self, conn: ClientConnection) -> None:
        """Run the request a worker decoded for ``conn`` (``conn.decoded``, taken here)."""

    def holds_back(self, conn: ClientConnection) -> bool:
        """Whether ``conn`` must not be read: its worker jobs pile up (MAX_QUEUED_JOBS_PER_CONNECTION)."""

    def refuse_queued(self, conn: ClientConnection) -> None:
        """At daemon close: answer or log the complete requests still queued on ``conn``."""


def bind(host: str, port: int, unixsocket: str | None) -> tuple[socket.socket, str]:
    """A listening, non-blocking socket for the daemon and its location string."""
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
        location = socketutil.sock_location(sock, host)
    sock.listen(100)
    sock.setblocking(False)
    return sock, location


def _unsent(conn: ClientConnection) -> int:
    """Reply bytes ``conn``'s socket has not taken: its own buffer and the records its TLS layer holds."""
    return len(conn.out) + conn.transport.held


class Connections:
    """The listening socket and the accepted connections of one daemon.

    ``watcher`` is the host's watcher while one is attached (the daemon sets
    it); without one, nothing is registered and no per-pass budget applies.
    ``requests`` must be set before anything is served.
    """

    def __init__(self, sock: socket.socket, closed: Callable[[ClientConnection], None],
                 ssl_context: ssl.SSLContext | None) -> None:
        self.sock = sock
        self.listening = True  # False: ``sock`` is a connected socket, adopted as the one connection
        # told of every connection that closes, just before its socket closes (as in Pyro4,
        # clientDisconnect may still ask the socket for its peer)
        self.closed = closed
        self.ssl_context = ssl_context
        self.hmac_key: bytes | None = None
        self.requests: Requests  # set by the daemon once its call dispatch exists
        self.watcher: Watcher | None = None
        self.conns: dict[socket.socket, ClientConnection] = {}
        self.soon: set[ClientConnection] = set()  # messages to handle at the next deadline
        self.tls_waiting: set[ClientConnection] = set()  # a handshake step deferred to the next pass
        self.tls_steps = config.SSL_HANDSHAKES_PER_WAKEUP  # left in this pass
        # per-connection deadlines: (_HANDSHAKE or _HALF_FRAME, conn) -> time.monotonic() when due
        self.timers: KeyedHeap[tuple[str, ClientConnection]] = KeyedHeap()
        # bytes each connection buffers (input not yet messages, replies not yet sent)
        self.input: SizeRanking[ClientConnection] = SizeRanking()
        self.output: SizeRanking[ClientConnection] = SizeRanking()
        self.limited_log = RateLimitedLog(log)  # for what peers can make the daemon say again and again
        self.accept_backoff = 0.0  # > 0 while accept() fails for want of descriptors
        self.accept_resume_at: float | None = None  # accepting is paused until then
        self.idle_check_at: float | None = None
        self._lane = True  # see the lane property
        self.lane_calls = 0  # requests the call lane took (tests tell by it which way a call went)
        # the connections whose next read the call lane may take (see lane_idle), kept where their
        # state changes: process() takes a connection out while it handles its messages (a call it
        # runs inline may open a nested loop with later ones buffered), and set_interest or
        # close_conn ends every change that makes a connection busier
        self.lane_ready: dict[socket.socket, ClientConnection] = {}  # by socket, as the host reports events

    def set_hmac_key(self, key: bytes | None) -> None:
        self.hmac_key = key
        for conn in list(self.conns.values()):  # a copy: accept() may add to conns in the loop's thread
            conn.protocol.hmac_key = key
        # after the keys: a set_interest the loop runs meanwhile sees them (lane_idle) and adds none back
        self.lane_ready.clear()

    def readable_sockets(self) -> list[socket.socket]:
        """The sockets a select loop should watch for reading (see ``Daemon.sockets``)."""
        holds_back = self.requests.holds_back
        listening = [self.sock] if self.listening and self.accept_resume_at is None else []
        return [*listening, *(sock for sock, conn in self.conns.items() if not (conn.eof or holds_back(conn)))]

    def output_pending(self) -> list[socket.socket]:
        return [c.sock for c in self.conns.values() if c.out or c.transport.wants_write]

    # --- readiness and deadlines ---------------------------------------------------------

    def serve_ready(self, conn: ClientConnection, events: int) -> None:
        if events & WRITE:
            self.flush(conn)
        if events & READ and not conn.closed and not self.requests.holds_back(conn):
            self.read(conn)

    def guarded(self, conn: ClientConnection, where: str, work: Callable[..., None], *args: Any) -> None:
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
            self.internal_error(conn, where, exc)

    def internal_error(self, conn: ClientConnection, where: str, exc: BaseException) -> None:
        """What ``guarded`` does with an error raised inside the daemon."""
        report_error(exc, where)
        self.close_conn(conn, f"internal error in {where}: {type(exc).__name__}")

    def run_due(self, now: float) -> None:
        """The deadline work of one pass: accepting again, deferred messages and
        handshakes, per-connection timers and the idle check."""
        if self.accept_resume_at is not None and now >= self.accept_resume_at:
            self.resume_accepting()
        for conn in list(self.soon):
            self.soon.discard(conn)
            self.guarded(conn, "daemon request handling", self.process, conn)
        self.tls_steps = config.SSL_HANDSHAKES_PER_WAKEUP  # a new pass
        waiting, self.tls_waiting = self.tls_waiting, set()
        for conn in waiting:
            self.guarded(conn, "TLS handshake", self.read, conn)
        for kind, conn in list(self.timers.pop_due(now)):
            self._timer_due(kind, conn)
        idle_timeout = config.idle_timeout()
        if idle_timeout and self.idle_check_at is not None and now >= self.idle_check_at:
            for conn in list(self.conns.values()):
                if not conn.busy and now - conn.last_active >= idle_timeout:
                    self.close_conn(conn, f"idle for {idle_timeout} s")
            self.idle_check_at = None

    def next_due(self) -> float | None:
        """When ``run_due`` should next run (``time.monotonic()``), or None; the
        listening socket's back-off is included, whatever else is due."""
        if self.soon or self.tls_waiting:
            when: float | None = time.monotonic()
        else:
            first = self.timers.first()
            when = None if first is None else first[1]
            idle_timeout = config.idle_timeout()
            if idle_timeout and self.conns:
                if self.idle_check_at is None:
                    self.idle_check_at = time.monotonic() + idle_timeout / 2
                when = self.idle_check_at if when is None else min(when, self.idle_check_at)
        if self.accept_resume_at is not None:
            when = self.accept_resume_at if when is None else min(when, self.accept_resume_at)
        return when

    def may_step_tls(self, conn: ClientConnection) -> bool:
        """Whether ``conn`` may take a TLS handshake step in this loop pass (SSL_HANDSHAKES_PER_WAKEUP).

        When not, it is resumed by the next ``handle_deadline``, which the
        daemon asks for at once. A hand-written loop without a watcher gets no
        bound, as with MAX_CALLS_PER_WAKEUP.
        """
        if self.watcher is None or self.tls_steps > 0:
            self.tls_steps -= 1
            return True
        self.tls_waiting.add(conn)
        return False

    def handshake_done(self, conn: ClientConnection) -> None:
        self.timers.discard((_HANDSHAKE, conn))

    def _timer_due(self, kind: str, conn: ClientConnection) -> None:
        """A per-connection deadline from ``self.timers`` has passed."""
        if kind == _HANDSHAKE:
            reason = f"no handshake within HANDSHAKE_TIMEOUT ({config.HANDSHAKE_TIMEOUT} s)"
            if not conn.closed and not conn.protocol.established:
                if conn.transport.handshaking:
                    reason = f"TLS handshake not done within HANDSHAKE_TIMEOUT ({config.HANDSHAKE_TIMEOUT} s)"
                else:
                    self.send(conn, conn.protocol.connect_fail_bytes(reason))
                self.close_conn(conn, reason)
        elif conn.partial_since is not None:
            self.close_conn(conn, f"message incomplete after {config.HALF_FRAME_TIMEOUT} s (HALF_FRAME_TIMEOUT)")

    # --- accepting ------------------------------------------------------------------------

    def accept(self) -> None:
        for _ in range(_ACCEPT_BUDGET):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                self.accept_backoff = 0.0  # nobody waits: whatever the shortage was, it is over
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting(exc)
                else:  # say, a connection reset while queued: keep serving the others
                    self.limited_log.log(logging.WARNING, "accept failed", "accept failed: %s", exc)
                return
            if self.accept_backoff:
                self.limited_log.log(logging.WARNING, "accept resumed", "accepting connections again")
                self.accept_backoff = 0.0
            if len(self.conns) >= config.MAX_CONNECTIONS:
                self.limited_log.log(logging.WARNING, "MAX_CONNECTIONS", "connection from %s refused: "
                                     "MAX_CONNECTIONS (%d) reached", addr, config.MAX_CONNECTIONS)
                sock.close()
                continue
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if config.SOCK_NODELAY:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = ClientConnection(sock, addr, ServerProtocol(config.MAX_MESSAGE_SIZE, self.hmac_key, gather=True))
            if self.ssl_context is not None:
                conn.transport = tls_transport(sock, self.ssl_context, True,
                                               may_step=functools.partial(self.may_step_tls, conn))
            self.conns[sock] = conn
            if config.HANDSHAKE_TIMEOUT > 0:
                self.timers.set((_HANDSHAKE, conn), time.monotonic() + config.HANDSHAKE_TIMEOUT)
            if self.watcher is not None:
                self.watcher.add(sock, READ)
            log.debug("accepted connection from %s", addr)

    def adopt(self) -> None:
        """Serve ``sock``, connected already, as the one connection (Pyro4's ``connected_socket``):
        no listening, and no handshake (Pyro4's proxy on such a socket sends none)."""
        self.listening = False
        peer = self.sock.getpeername()  # raises unless connected
        self.sock.setblocking(False)
        conn = ClientConnection(self.sock, peer,
                                ServerProtocol(config.MAX_MESSAGE_SIZE, self.hmac_key, gather=True))
        conn.protocol.established = True
        self.conns[self.sock] = conn

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors (or memory): the pending connection stays in the
        listen queue and the listening socket stays readable, so retrying at
        once would spin the loop. Stop watching it for a back-off that doubles
        while the shortage lasts; one log line per episode."""
        low, high = _ACCEPT_BACKOFF
        if not self.accept_backoff:
            self.limited_log.log(logging.WARNING, "accept paused", "accept failed: %s; not accepting "
                                 "connections until descriptors free up (retrying after %g s, then up "
                                 "to every %g s)", exc, low, high)
        self.accept_backoff = min(high, self.accept_backoff * 2 or low)
        self.accept_resume_at = time.monotonic() + self.accept_backoff
        if self.watcher is not None:
            self.watcher.modify(self.sock, 0)

    def resume_accepting(self) -> None:
        self.accept_resume_at = None
        if self.watcher is not None:
            self.watcher.modify(self.sock, READ)
        self.accept()  # one try now: with nobody waiting, no readiness would come to end the episode

    # --- reading --------------------------------------------------------------------------

    def read(self, conn: ClientConnection) -> None:
        if conn.eof:
            return  # a stale notification: nothing more comes from this client
        if conn.busy:
            # A client that hung up mid-call is noticed now; anything else waits
            # until the call is done (per-connection order), unwatched, or
            # level-triggered loops would fire again and again.
            self.notice_hangup(conn)
            if not conn.closed:
                conn.read_paused = True
                self.set_interest(conn)
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
            self._track_tls_records(conn)
            self.set_interest(conn)  # TLS may have records of its own to send
            return
        except TLSError as exc:
            self.close_conn(conn, str(exc))
            return
        except OSError as exc:
            self.close_conn(conn, f"receive failed: {exc}")
            return
        if not count:
            self.end_of_stream(conn)
            self.process(conn)
            return
        conn.last_active = time.monotonic()
        if view is not None:
            reader.received(count)
        else:
            conn.protocol.receive_data(data)
            self._track_tls_records(conn)
        if conn.transport.ended:  # TLS close_notify right behind the data, the socket left open
            self.end_of_stream(conn)
        self.process(conn)

    def notice_hangup(self, conn: ClientConnection) -> None:
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
            self.close_conn(conn, f"connection lost while its call was running: {exc}")
            return
        self.end_of_stream(conn)

    def end_of_stream(self, conn: ClientConnection) -> None:
        """The client closed its sending end: what it sent is still executed and answered."""
        if conn.eof:
            return
        conn.eof = True
        if conn.busy:
            log.info("client %s disconnected or half-closed while its call was running: the reply "
                     "is sent all the same, and is lost unless the client only half-closed", conn.addr)
        self.set_interest(conn)

    def process(self, conn: ClientConnection, spent: int = 0) -> None:
        """Handle the complete messages buffered for ``conn``, a bounded number at a time
        (``spent`` of them handled already in this wakeup)."""
        self.lane_ready.pop(conn.sock, None)  # not idle while its messages are handled; set_interest decides again
        requests = self.requests
        budget = (config.MAX_CALLS_PER_WAKEUP if self.watcher is not None else sys.maxsize) - spent
        drained = taken = False
        while not conn.closed and not conn.busy:
            if len(conn.out) > _OUTPUT_HIGH_WATER:
                break  # the peer is not reading its replies: wait for the output to drain
            if requests.holds_back(conn):
                break  # its worker jobs pile up: wait for them (see CallDispatcher.submit_job)
            if budget <= 0:
                self.soon.add(conn)
                break
            budget -= 1
            if conn.decoded is not None:  # comes before anything the client sent after it
                requests.dispatch_decoded(conn)
                taken = True
                continue
            event = conn.protocol.next_event()
            if event is None:
                drained = True
                break
            requests.handle(conn, event)
            taken = True
        if drained and conn.eof and not conn.out:
            # every complete request of a client that closed its end is answered
            self.close_conn(conn, "client closed its end in the middle of a message"
                            if conn.protocol.partial else None)
            return
        self._track_input(conn)
        self._track_partial(conn, restart=taken)
        if not conn.closed:
            self.set_interest(conn)

    # --- bounds ---------------------------------------------------------------------------

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
            self.input.count(conn, conn.protocol.buffered)
        self._enforce_total(self.input, "MAX_BUFFERED_INPUT", "buffered the most input")

    def _track_output(self, conn: ClientConnection) -> None:
        """Count ``conn``'s unsent replies towards MAX_BUFFERED_OUTPUT and enforce it.

        MAX_OUTPUT_BUFFER bounds one connection; without a total, many clients
        that ask for large replies and never read them make the daemon hold
        MAX_CONNECTIONS of those. Past the bound the connection holding the
        most unsent bytes is closed (its undelivered replies are named in the
        closing log line), as for MAX_BUFFERED_INPUT.
        """
        if not conn.closed:
            self.output.count(conn, _unsent(conn))
        self._enforce_total(self.output, "MAX_BUFFERED_OUTPUT", "held the most unsent replies")

    def _track_tls_records(self, conn: ClientConnection) -> None:
        """Count the records TLS made while reading (handshake, key updates) for a peer that may never read them."""
        if conn.transport.held:
            self._track_output(conn)

    def _enforce_total(self, ranking: SizeRanking[ClientConnection], item: str, what: str) -> None:
        limit = getattr(config, item)
        while limit and ranking.total > limit and (largest := ranking.largest()) is not None:
            victim, size = largest
            self.close_conn(victim, f"{item} ({limit} bytes) exceeded by all connections "
                                    f"together: this one {what} ({size} bytes)")

    def _track_partial(self, conn: ClientConnection, restart: bool = False) -> None:
        """Start or stop the half-frame deadline: only while the daemon waits for the client,
        not while it stops reading itself (replies pile up past the high-water mark). The
        deadline is for one message: ``restart`` says messages were taken since it started,
        so the incomplete one now is a later one (a client pipelining without pause
        leaves one incomplete at the end of nearly every read)."""
        waiting_for_client = not (conn.closed or conn.busy or conn in self.soon
                                  or self.requests.holds_back(conn) or len(conn.out) > _OUTPUT_HIGH_WATER)
        if waiting_for_client and conn.protocol.partial and conn.protocol.next_size() is None:
            # part of a message is in and the rest is the client's to send (a whole one
            # waits on the daemon: behind a reply still draining, say)
            if conn.partial_since is None or restart:
                conn.partial_since = time.monotonic()
                self.timers.set((_HALF_FRAME, conn), conn.partial_since + config.HALF_FRAME_TIMEOUT)
        elif conn.partial_since is not None:
            conn.partial_since = None
            self.timers.discard((_HALF_FRAME, conn))

    def set_interest(self, conn: ClientConnection) -> None:
        if (conn.eof or conn.busy and conn.read_paused or len(conn.out) > _OUTPUT_HIGH_WATER
                or self.requests.holds_back(conn)):
            events = 0
        else:
            events = READ
            conn.read_paused = False
        if conn.out or conn.transport.wants_write:
            events |= WRITE
        if events == READ and self.lane_idle(conn):
            self.lane_ready[conn.sock] = conn
            if conn.protocol.hmac_key:  # set from another thread since lane_idle asked: set_hmac_key's
                self.lane_ready.pop(conn.sock, None)  # clear may have come before the line above
        else:
            self.lane_ready.pop(conn.sock, None)
        if events != conn.interest:
            conn.interest = events
            if self.watcher is not None:
                self.watcher.modify(conn.sock, events)

    @property
    def lane(self) -> bool:
        """False: reads from then on take the general path (tests compare the two)."""
        return self._lane

    @lane.setter
    def lane(self, on: bool) -> None:
        self._lane = on
        if not on:  # a connection the lane served stays in lane_ready until its state changes
            self.lane_ready.clear()

    def lane_idle(self, conn: ClientConnection) -> bool:
        """Whether the call lane may take ``conn``'s next read (``_lane.CallLane.serve``).

        Idle: the lane is on; established, plaintext, no HMAC key; nothing
        buffered, decoded, queued or waiting to be sent; not running a call,
        held back or at end of stream (set_interest asks for read interest
        alone). Every change away from that ends in ``set_interest`` or
        ``close_conn``, which keep ``lane_ready``; a call that starts is
        seen by ``busy``, which the lane's caller asks as well.
        """
        protocol = conn.protocol
        return (self._lane and not (conn.busy or conn.out or conn.eof or conn.closed or conn.decoded is not None
                                   or protocol.hmac_key or conn.transport.tls or protocol.partial
                                   or self.requests.holds_back(conn))
                and protocol.state is State.ESTABLISHED)

    # --- writing --------------------------------------------------------------------------

    def send(self, conn: ClientConnection, data: bytes | _wire.Buffers) -> None:
        """Queue reply bytes and write as much as the socket takes now."""
        if conn.closed:
            return
        if conn.out:
            conn.out += data
        elif type(data) is _wire.Buffers:  # a large reply: written from its own buffers, never joined
            conn.out += data
            try:
                conn.out.send_to(conn.transport)
            except (BlockingIOError, InterruptedError):
                pass
            except (OSError, TLSError) as exc:
                self.close_conn(conn, f"send failed: {exc}")
                return
        else:
            try:
                sent = conn.transport.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except (OSError, TLSError) as exc:
                self.close_conn(conn, f"send failed: {exc}")
                return
            if sent < len(data):
                conn.out += memoryview(data)[sent:]
        self.after_send(conn)

    def after_send(self, conn: ClientConnection) -> None:
        """Reply bytes were sent or queued on ``conn``: bound its output, watch for room if any waits."""
        unsent = _unsent(conn)
        if unsent > config.MAX_OUTPUT_BUFFER:
            self.close_conn(conn, f"more than MAX_OUTPUT_BUFFER ({config.MAX_OUTPUT_BUFFER} bytes) of replies "
                                  "unread by the client")
        else:
            self.set_interest(conn)
            if unsent:
                self._track_output(conn)

    def flush(self, conn: ClientConnection) -> None:
        sent_total = 0
        try:
            conn.transport.flush()
        except OSError as exc:
            self.close_conn(conn, f"send failed: {exc}")
            return
        while conn.out and sent_total < _SEND_BUDGET:
            try:
                sent_total += conn.out.send_to(conn.transport)
            except (BlockingIOError, InterruptedError):
                break
            except (OSError, TLSError) as exc:
                self.close_conn(conn, f"send failed: {exc}")
                return
        self.output.count(conn, _unsent(conn))
        conn.last_active = time.monotonic()
        if not conn.out and not conn.busy:
            self.process(conn)  # input held back while output piled up
        else:
            self._track_partial(conn)  # below the high-water mark again: the daemon waits for the client
            self.set_interest(conn)

    # --- closing --------------------------------------------------------------------------

    def close_all(self) -> None:
        """At daemon close: every connection gets what can still be answered, then closes."""
        refuse_queued = self.requests.refuse_queued
        for conn in list(self.conns.values()):
            conn.close_reason = "the daemon closed"
            self._receive_at_close(conn)
            self.guarded(conn, "closing the daemon", refuse_queued, conn)
            self._flush_at_close(conn)
            self.close_conn(conn, None)

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
                conn.out.send_to(conn.transport)
            except (OSError, TLSError):  # full or gone: what is left is logged below
                break
        if conn.out:
            log.info("%d bytes of replies to %s dropped: %s", len(conn.out), conn.addr, conn.close_reason)

    def close_conn(self, conn: ClientConnection, reason: str | None) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.close_reason = conn.close_reason or reason or "the client disconnected"
        if reason:
            # keyed by the kind of reason (the text before any detail): a flood
            # of bad peers must not flood the log
            self.limited_log.log(logging.INFO, "closing: " + reason.split(":", 1)[0],
                                 "closing connection from %s: %s", conn.addr, reason)
        self.conns.pop(conn.sock, None)
        self.lane_ready.pop(conn.sock, None)
        self.soon.discard(conn)
        self.tls_waiting.discard(conn)
        self.timers.discard((_HANDSHAKE, conn))
        self.timers.discard((_HALF_FRAME, conn))
        self.input.count(conn, 0)
        self.output.count(conn, 0)
        if self.watcher is not None:
            self.watcher.remove(conn.sock)
        self.closed(conn)
        conn.transport.close()  # TLS: close_notify, if the socket takes it now
        try:
            conn.sock.close()
        except OSError:
            pass
