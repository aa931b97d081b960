"""``Client``: remote calls made from the host loop's thread without ever blocking it.

A ``Client`` is hosted exactly like a ``Daemon``: every adapter's
``attach(client, host)`` watches its sockets and arms one timer for its
nearest deadline (the same watcher interface, see ``pyro_loops.hosting``).
``client.proxy(uri)`` gives a *loop proxy*, whose calls return a
``pyro_loops.Call`` at once::

    client = pyro_loops.Client()
    qt.attach(client, app)
    calc = client.proxy("PYRONAME:calculator")
    calc.add(1, 2).then(label.setNum)          # in a button handler
    total = await calc.add(1, 2)               # in a coroutine, under asyncio

Nothing on the way blocks: host names are resolved by a worker thread whose
answer comes back through the client's wakeup socket; the connect is
non-blocking; the handshake, the metadata and ``PYRONAME:``/``PYROMETA:``
lookups (loop calls to the name server) are read by the loop as they arrive.

Each loop proxy has one connection, and its calls are pipelined on it, matched
to replies by sequence number; the server answers them in order, so calls that
should run side by side on the server go through several proxies.
``_pyroTimeout`` bounds a whole call, connect included: at its deadline the
call fails with ``pyro_loops.errors.TimeoutError``, so do the calls pipelined
behind it (they could not finish sooner), the connection is closed and the
next call opens a fresh one. ``CLIENT_MAX_PENDING`` bounds the calls pending
per client.

Loop proxies belong to the loop's thread. Other threads hand work to it with
``client.submit(fn, *args)``, which returns a ``concurrent.futures.Future``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import functools
import heapq
import ipaddress
import itertools
import logging
import os
import random
import socket
import ssl
import threading
import time
import uuid
import weakref
from typing import Any, Callable

from . import _nslocate, _wire, errors
from .hosting import READ, WRITE, Watcher, release, report_error
from ._protocol import (Broken, ClientProtocol, ConnectFailed, Connected, Failure, Metadata, Result, StreamEnd,
                        StreamStarted)
from ._ratelog import RateLimitedLog
from ._resolve import _ns_location
from ._serializers import ExceptionWrapper, register_class_to_dict
from ._tls import TLSError, client_context_from_config
from ._transport import PlainTransport, TLSTransport, tls_transport
from ._wakeup import Wakeup
from ._uri import URI
from .call import Call, running_callbacks, settle_with
from .configuration import config
from .constants import NAMESERVER_NAME
from .context import _facts as _context_facts  # the ContextVar itself: one C call to read it
from .context import current_context
from .proxy import BatchProxy, Proxy, _proxy_state, _RemoteMethod, set_caller_defaults

__all__ = ["Client", "LoopBatch", "LoopProxy", "RemoteStream"]

_RECV_SIZE = 64 * 1024
#: calls queued on a ready connection that are written at once rather than at the loop's next turn
_BURST = 64
_AUTOPROXY_MARKER = b"Pyro4.core.Proxy"


class ClientClosedError(errors.ConnectionClosedError):
    """The client was closed (or its connection released) before the call completed."""


class _Request:
    """One call on its way: what to send, and the ``Call`` to complete.

    ``kind`` is the method name for a call on the proxy's object, or one of
    the channel's own, in angle brackets as no method name is: "<bind>"
    (completes when the connection is ready; nothing is sent), "<metadata>",
    "<next>" (a stream item), "<close_stream>", "<batch>" and "<batch-oneway>"
    (``args`` holds the recorded calls); "<timer>" is a deadline
    alone, for a call that no connection carries (a broadcast).
    """

    __slots__ = ("call", "kind", "args", "kwargs", "deadline", "seq", "channel", "proxy")

    def __init__(self, call: Call, kind: str, args: Any, kwargs: Any, proxy: "LoopProxy | None" = None) -> None:
        self.call = call
        self.kind = kind
        self.args = args
        self.kwargs = kwargs
        self.deadline: float | None = None
        self.seq = -1
        self.channel: _Channel | None = None
        #: the proxy, kept alive while the call is pending (its channel holds it weakly)
        self.proxy = proxy

    def __call__(self, _call: Call) -> None:
        """The call was cancelled (``Call._on_cancel``): its connection lets go of it."""
        if self.channel is not None:
            self.channel._cancel(self)

    def settled(self, _call: Call) -> None:
        """The call completed (``Call._on_done``): it no longer counts as pending, and lets go
        of its proxy and arguments (a deadline may still hold the request)."""
        self.proxy._pyroClient._pending -= 1
        self.proxy = self.args = self.kwargs = None


class Client:
    """Owns the loop proxies' connections; hosted by a loop like a ``Daemon``.

    ``close()`` (or leaving ``with``) fails every pending call with
    ``ClientClosedError`` and releases sockets, threads and the watcher.
    """

    #: Hosts may call ``handle_event`` again, for any socket (the one being handled
    #: included), while an earlier call still runs: a done-callback that opens a modal
    #: dialog runs a nested loop, and the replies it waits for arrive on the very
    #: connection that delivered the callback. Between two replies the client's state
    #: is whole, so a nested call simply goes on reading (``adapters._common.nests``).
    nested_events = True

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        #: TLS for this client's connections (a proxy's ``_pyroSslContext`` overrides it);
        #: None follows config.SSL, with a context made from the SSL_* items
        self.ssl_context = ssl_context
        if ssl_context is None and config.SSL:
            client_context_from_config(config)  # made now, not on the loop's time at the first connection
        self._watcher: Watcher | None = None
        self._socks: dict[socket.socket, Any] = {}  # -> what handles it: a _Channel, a broadcast
        self._channels: set[_Channel] = set()  # every open connection, with a socket or not yet
        self._wakeup = Wakeup()  # other threads (host-name lookups, submit, close) hand work to the loop
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._timers: list[tuple[float, int, _Request]] = []
        self._counter = itertools.count()
        self._soon: set[_Channel] = set()
        self._tls_waiting: set[_Channel] = set()  # a TLS handshake step deferred to the next pass
        self._tls_steps = config.SSL_HANDSHAKES_PER_WAKEUP  # left in this pass
        self._deadline: float | None = None
        self._loop_thread = threading.get_ident()
        self._pending = 0
        self._nesting = 0  # handle_event and handle_deadline calls running now (see _enter)
        self._closed = False
        self._resolver: concurrent.futures.ThreadPoolExecutor | None = None
        self._nameservers: dict[str, LoopProxy] = {}
        #: set by the asyncio adapter for daemons; a client runs no coroutines of its own
        self.coroutine_runner: Any = None

    def __repr__(self) -> str:
        return f"<pyro_loops.Client at 0x{id(self):x}; {self._pending} pending; {len(self._channels)} connections>"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- public API ------------------------------------------------------------------

    def proxy(self, uri: "str | URI") -> "LoopProxy":
        """A loop proxy for ``uri`` (PYRO:, PYRONAME: or PYROMETA:); it connects on first call."""
        return LoopProxy(self, uri)

    @property
    def pending(self) -> int:
        """Calls submitted and not yet completed."""
        return self._pending

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` in the loop's thread; safe from any thread.

        The returned ``concurrent.futures.Future`` gets ``fn``'s result, or, if
        that is a ``Call`` (``client.submit(lambda: proxy.add(1, 2))``), the
        call's outcome. The way for worker threads to use loop proxies.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()

        def job() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                value = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
                return
            settle_with(value, future.set_result, future.set_exception,
                        lambda: future.set_exception(concurrent.futures.CancelledError("the call was cancelled")))

        if self._closed:
            future.set_exception(ClientClosedError("the client is closed"))
        elif threading.get_ident() == self._loop_thread:
            job()
        else:
            self._post(job)
        return future

    def close(self) -> None:
        """Fail every pending call and release everything; safe from any thread."""
        if self._closed:
            return
        if threading.get_ident() != self._loop_thread and self._watcher is not None:
            self._post(self.close)
            return
        self._closed = True
        error = ClientClosedError("the pyro_loops.Client was closed before the call completed")
        for channel in list(self._channels):
            channel.fail(error)
        for _, _, request in self._timers:
            if not request.call.done():
                request.call.set_exception(error)
        self._timers.clear()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.remove(self._wakeup.reader)
            watcher.set_deadline(None)
        self._wakeup.close()
        if watcher is not None:
            watcher.detached()
        if self._resolver is not None:
            self._resolver.shutdown(wait=False, cancel_futures=True)

    # --- the hosting interface (see pyro_loops.hosting) -------------------------------

    @property
    def sockets(self) -> list[socket.socket]:
        return [self._wakeup.reader, *self._socks]

    def attach_watcher(self, watcher: Watcher) -> None:
        """Let a host loop watch this client's sockets and deadline."""
        if self._closed:
            raise errors.PyroError("client is closed")
        if self._watcher is not None:
            raise errors.PyroError("client is already attached to a loop; detach it first")
        self._watcher = watcher
        self._loop_thread = threading.get_ident()
        watcher.add(self._wakeup.reader, READ)
        for sock, handler in self._socks.items():
            watcher.add(sock, handler.interest)
        self._deadline = None
        self._update_deadline()
        if self._jobs:
            self._wakeup.wake()

    def detach_watcher(self) -> None:
        """Stop being watched; connections stay open until a loop serves them again."""
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        release(watcher, self.sockets)

    def handle_event(self, sock: socket.socket, events: int) -> None:
        """The host loop says ``sock`` is ready. Never raises."""
        self._loop_thread = threading.get_ident()
        saved = self._enter()  # this may be a nested loop run by a done-callback
        try:
            if sock is self._wakeup.reader:
                self._drain_wakeups()
            else:
                handler = self._socks.get(sock)
                if handler is not None:
                    handler.on_ready(events)
        except Exception as exc:
            report_error(exc, "client event handling")
        finally:
            self._leave(saved)
        if self._timers or self._soon or self._tls_waiting or self._deadline is not None:
            self._update_deadline()  # (else there is no deadline, nor any to set)

    def handle_deadline(self) -> None:
        """The deadline the client asked for is due. Never raises."""
        saved = self._enter()
        try:
            self._deadline = None
            now = time.monotonic()
            for channel in list(self._soon):
                self._soon.discard(channel)
                channel.resume()
            self._tls_steps = config.SSL_HANDSHAKES_PER_WAKEUP  # a new pass
            waiting, self._tls_waiting = self._tls_waiting, set()
            for channel in waiting:
                if channel.state == "tls":
                    channel._tls_step(channel._tls_read)
            while self._timers and self._timers[0][0] <= now:
                _, _, request = heapq.heappop(self._timers)
                if request.call.done():
                    continue
                error = errors.TimeoutError(f"{request.call.describe}: not done within its timeout")
                if request.channel is not None:
                    request.channel.fail(error)  # the calls pipelined behind it could not finish sooner
                else:
                    request.call.set_exception(error)
        except Exception as exc:
            report_error(exc, "client deadline handling")
        finally:
            self._leave(saved)
        self._update_deadline()

    def next_deadline(self) -> float | None:
        """When ``handle_deadline`` should next run (``time.monotonic()``), or None."""
        return self._deadline

    # --- internals ---------------------------------------------------------------------

    def _check_thread(self, what: object) -> None:
        if threading.get_ident() != self._loop_thread:
            raise errors.PyroError(
                f"{what} belongs to the loop thread that serves its pyro_loops.Client; it was used from "
                "another thread. From other threads use client.submit(lambda: proxy.method(...)), which "
                "returns a concurrent.futures.Future, or a blocking pyro_loops.Proxy")

    def _submit(self, proxy: "LoopProxy", kind: str, args: Any, kwargs: Any,
                describe: "str | tuple[str, Any]") -> Call:
        """A new call of ``proxy`` (see ``_Request`` for ``kind``), on its way; checks the thread."""
        if threading.get_ident() != self._loop_thread:
            self._check_thread(proxy)
        call = Call(describe)
        if self._closed:
            call.set_exception(ClientClosedError("the pyro_loops.Client is closed"))
            return call
        if self._pending >= config.CLIENT_MAX_PENDING:
            call.set_exception(errors.PyroError(
                f"too many pending calls on this client ({self._pending}, the CLIENT_MAX_PENDING limit); "
                "wait for some to complete"))
            return call
        self._pending += 1
        request = _Request(call, kind, args, kwargs, proxy)
        call._on_done = request.settled
        if proxy._pyroTimeout:
            self._add_timer(request, proxy._pyroTimeout)
        channel = proxy._pyroChannel
        if channel is None or channel.state == "closed":
            channel = _Channel(self, proxy)
            object.__setattr__(proxy, "_pyroChannel", channel)
            channel.submit(request)
            channel.start()
        elif channel.submit(request):
            return call  # it went out alone: nothing the deadline depends on changed
        self._update_deadline()
        return call

    def _enter(self) -> Any:
        """One more entry of the host loop (``handle_event``, ``handle_deadline``), counted;
        ``_leave`` gets what this returns, when the entry ends.

        Up to ``CLIENT_MAX_NESTING`` entries deep (a done-callback's nested loop,
        one opened inside that, ...) the callbacks of calls completed here run at
        once, even inside the callback that runs the nested loop. Deeper, they run
        once that callback returns, as callbacks of calls completed inside a
        callback always do: the calls still complete (a dialog waiting for
        ``call.done()`` closes), but a program that opens a dialog for every reply
        no longer recurses until Python's recursion limit, whose RecursionError
        strikes wherever it happens to, inside the client too.
        """
        self._nesting += 1
        if self._nesting <= config.CLIENT_MAX_NESTING:
            saved = running_callbacks.queue
            running_callbacks.queue = None  # callbacks run at once (see call._Running)
            return saved
        if self._nesting == config.CLIENT_MAX_NESTING + 1:
            _nesting_log.log(logging.WARNING, f"client nesting {id(self):x}", "done-callbacks run nested loops %d "
                             "deep in %r: callbacks of calls completed deeper run when the innermost callback "
                             "returns (CLIENT_MAX_NESTING)", config.CLIENT_MAX_NESTING, self)
        return _AS_IT_WAS

    def _leave(self, saved: Any) -> None:
        if saved is not _AS_IT_WAS:
            running_callbacks.queue = saved
        self._nesting -= 1

    def _add_timer(self, request: "_Request | Call", delay: float) -> None:
        """Fail ``request`` (or a bare call) with TimeoutError if it is not done in ``delay`` seconds."""
        if isinstance(request, Call):
            request = _Request(request, "<timer>", None, None)
        request.deadline = time.monotonic() + delay
        heapq.heappush(self._timers, (request.deadline, next(self._counter), request))
        self._update_deadline()

    def _update_deadline(self) -> None:
        if self._closed:
            return
        timers = self._timers
        while timers and timers[0][2].call.done():
            heapq.heappop(timers)
        if self._soon or self._tls_waiting:
            now = time.monotonic()
            if self._deadline is not None and self._deadline <= now:
                return  # due already: not set again for every call of a burst
            when: float | None = now
        else:
            when = timers[0][0] if timers else None
        if when != self._deadline:
            self._deadline = when
            if self._watcher is not None:
                self._watcher.set_deadline(when)

    def _may_step_tls(self, channel: "_Channel") -> bool:
        """Whether ``channel`` may take a TLS handshake step in this pass (SSL_HANDSHAKES_PER_WAKEUP).

        The same bound as the daemon's: a client opening many TLS connections
        at once (a window's worth of proxies) spreads their key exchanges
        over several loop passes. A deferred step is taken by the next
        ``handle_deadline``, asked for at once.
        """
        if self._watcher is None:  # not attached yet: no loop pass to spread over
            return True
        if self._tls_steps > 0:
            self._tls_steps -= 1
            return True
        self._tls_waiting.add(channel)
        return False

    def _watch(self, sock: socket.socket, handler: Any, events: int) -> None:
        """Watch ``sock`` for ``events``; ``handler.on_ready(events)`` is told (a connection, a broadcast)."""
        known = sock in self._socks
        self._socks[sock] = handler
        if self._watcher is not None:
            (self._watcher.modify if known else self._watcher.add)(sock, events)

    def _unwatch(self, sock: socket.socket) -> None:
        if self._socks.pop(sock, None) is not None and self._watcher is not None:
            self._watcher.remove(sock)

    def _post(self, job: Callable[[], None]) -> None:
        """Run ``job`` in the loop's thread soon; safe from any thread."""
        self._jobs.append(job)
        self._wakeup.wake()

    def _drain_wakeups(self) -> None:
        self._wakeup.drain()
        while self._jobs and not self._closed:
            job = self._jobs.popleft()
            try:
                job()
            except Exception as exc:
                report_error(exc, "client job from another thread")

    def _in_worker(self, fn: Callable[[], Any], then: Callable[[Any, BaseException | None], None]) -> None:
        """Run blocking ``fn`` (a host-name lookup) in a worker; ``then`` runs in the loop."""
        if self._resolver is None:
            self._resolver = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="pyro_loops-resolve")

        def work() -> None:
            try:
                value, error = fn(), None
            except BaseException as exc:
                value, error = None, exc
            self._post(lambda: then(value, error))

        self._resolver.submit(work)

    def _nameserver(self, uri: URI, hmac_key: bytes | None) -> Call:
        """A call whose result is a loop proxy of the name server named in ``uri`` (located if none is)."""
        if uri.sockname or uri.host:
            location = _ns_location("./u:" + uri.sockname if uri.sockname else uri.host, uri.port or config.NS_PORT)
        else:
            location = ""
        ns = self._nameservers.get(location)
        found = Call(f"name server {location or '(located)'}")
        if ns is not None:
            found.set_result(ns)
        elif not location:
            def located(call: Call) -> None:
                exc = call.exception()
                if exc is None:
                    self._nameservers[""] = call.result()
                    found.set_result(call.result())
                else:
                    found.set_exception(exc)

            _nslocate.locate(self, hmac_key).add_done_callback(located)
        else:
            ns = self._nameservers[location] = LoopProxy(self, f"PYRO:{NAMESERVER_NAME}@{location}")
            ns._pyroHmacKey = hmac_key
            found.set_result(ns)
        return found

    def _resolve_name(self, uri: URI, hmac_key: bytes | None) -> Call:
        """A loop call that turns a PYRONAME:/PYROMETA: URI into a PYRO: one."""
        resolved = Call(f"resolve {uri}")

        def ask(found: Call) -> None:
            exc = found.exception()
            if exc is not None:
                resolved.set_exception(exc)
                return
            ns = found.result()

            def answered(call: Call) -> None:
                exc = call.exception()
                if isinstance(exc, errors.CommunicationError):
                    if self._nameservers.get("") is ns:
                        del self._nameservers[""]  # located once, gone now: locate it again next time
                    exc = errors.NamingError(f"cannot resolve {uri}: name server at {ns._pyroUri.location} not "
                                             f"reachable: {exc}")
                elif exc is None and uri.protocol == "PYROMETA":
                    if call.result():
                        resolved.set_result(URI(random.choice(list(call.result().values()))))
                        return
                    exc = errors.NamingError(
                        f"no registrations available with desired metadata properties {uri.object}")
                if exc is None:
                    resolved.set_result(URI(call.result()))
                else:
                    resolved.set_exception(exc)

            if uri.protocol == "PYRONAME":
                ns.lookup(uri.object).add_done_callback(answered)
            else:
                ns.list(metadata_all=sorted(uri.object)).add_done_callback(answered)

        self._nameserver(uri, hmac_key).add_done_callback(ask)
        return resolved


_nesting_log = RateLimitedLog(logging.getLogger("pyro_loops"))
#: what ``Client._enter`` returns for an entry too deep to run callbacks at once
_AS_IT_WAS = object()


class _Channel:
    """One connection of one loop proxy, from resolving its address to its close.

    The protocol rules are ``_protocol.ClientProtocol``'s; this class moves its
    bytes. Steps: "resolving" (name server, host name), "connecting",
    "handshake", "metadata" (asked for when the handshake did not bring it),
    "ready", "closed", and "decoding" while a worker decodes a large reply
    (``MAX_BLOCKING_DECODE``). Requests submitted when not "ready" wait in ``queued``.
    """

    def __init__(self, client: Client, proxy: "LoopProxy") -> None:
        self.client = client
        # Weakly: a proxy the program dropped closes its connection once its calls are done
        # (each pending request holds it strongly until then).
        self._proxy = weakref.ref(proxy, self._proxy_dropped)
        self.proxy_uri = proxy._pyroUri
        self.state = "resolving"
        self.sock: socket.socket | None = None
        self.transport: PlainTransport | TLSTransport | None = None
        self.uri: URI | None = None
        self.protocol = ClientProtocol(proxy._pyroSerializer or config.SERIALIZER,
                                       hmac_key=proxy._pyroHmacKeyBytes, max_message_size=_reply_bound(),
                                       compression=config.COMPRESSION, gather=True)
        self.out = _wire.Outbox()  # requests not yet written (a large one as its own buffers)
        self.written = 0        # bytes written over the connection's life
        self.queued: collections.deque[_Request] = collections.deque()
        self.inflight: dict[int, _Request] = {}
        self.oneway_marks: collections.deque[tuple[int, _Request]] = collections.deque()
        self.interest = 0
        self.cancelled_queued = 0  # calls in ``queued`` cancelled since it was last compacted
        self.handshake_timer = _Request(Call("no handshake deadline"), "<timer>", None, None)
        self.resume_state = ""  # the step a worker's decoding interrupted
        #: why receiving or sending failed (a reset): the calls left once the replies read before it
        #: are handled fail with it
        self.lost: errors.ConnectionClosedError | None = None
        #: the end of stream (or a receive error) was read: the socket is not read again, nor
        #: watched for reading (a dead socket is readable for ever); the replies read before
        #: it are handled at the loop's deadline passes, then the connection fails
        self.ended = False
        #: the latest call made by ``quick_invoke``: while it is the one call in flight, its
        #: reply may be read whole by ``quick_result`` (see ``_quick_reply``)
        self.quick: _Request | None = None
        #: bytes were given to the protocol that it may still hold: False once ``process``
        #: found it holds none (``partial``, asked there rather than for every reply)
        self.fed = False
        #: the transport's ``send`` and ``recv``, the socket's own without TLS
        self._send: Callable[[bytes], int] = _not_connected
        self._recv: Callable[[int], bytes] = _not_connected
        client._channels.add(self)

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    @property
    def location(self) -> str:
        return str((self.uri or self.proxy_uri).location)

    @property
    def proxy(self) -> "LoopProxy":
        """The proxy this connection serves; raises ClientClosedError once it was dropped."""
        proxy = self._proxy()
        if proxy is None:
            raise ClientClosedError(f"the loop proxy for {self.proxy_uri} was dropped")
        return proxy

    def _proxy_dropped(self, _ref: Any) -> None:
        # Called where the proxy was collected, any thread: the loop closes the connection.
        self.client._post(self._release)

    def _release(self) -> None:
        self.fail(ClientClosedError(f"the loop proxy for {self.proxy_uri} was dropped"))

    # -- submitting --

    def submit(self, request: _Request) -> bool:
        """Send ``request`` now if it is the connection's only one, else queue it.

        Returns True when it went out alone, with nothing the client's
        deadline depends on changed.
        """
        request.channel = self
        request.call._on_cancel = request
        if self.state == "ready" and not (self.queued or self.inflight or self.out.size or self.oneway_marks):
            self._send_alone(request)  # a lone call goes out at once, for latency
            return self.state == "ready" and not request.call.done()
        queued = self.queued
        queued.append(request)
        if self.state == "ready":
            # A burst is encoded and written in one go at the loop's next turn, for
            # throughput; a call cancelled before then is never sent. A long burst
            # goes out _BURST calls at a time, so the server works on the first
            # ones while the program is still making the rest.
            if len(queued) >= _BURST:
                self._send_queued()
            else:
                self.client._soon.add(self)
        return False

    def _cancel(self, request: _Request) -> None:
        if request.seq < 0:
            # Never sent, and never will be: _send_request skips a done call. Not removed
            # here (a scan per cancel made cancelling 10,000 queued calls take seconds);
            # the queue is compacted once it is mostly cancelled calls.
            self.cancelled_queued += 1
            if self.cancelled_queued > 64 + len(self.queued) // 2:
                self.queued = collections.deque(r for r in self.queued if not r.call.done())
                self.cancelled_queued = 0
        elif self.inflight.pop(request.seq, None) is not None and self.state != "decoding":
            # It runs on the server; its reply is dropped (while a worker decodes, by
            # _handle, which finds no request for it: the protocol is the worker's).
            self.protocol.cancel(request.seq)

    # -- connecting --

    def start(self) -> None:
        uri = self.proxy._pyroUri
        if uri.protocol != "PYRO":
            self.client._resolve_name(uri, self.proxy._pyroHmacKeyBytes).add_done_callback(self._name_resolved)
            return
        self._resolve_host(uri)

    def _name_resolved(self, call: Call) -> None:
        if self.closed:
            return
        exc = call.exception()
        if exc is None and call.result().protocol != "PYRO":  # a name registered for a PYRONAME: itself
            exc = errors.NamingError(f"the name server resolved {self.proxy_uri} to {call.result()}, "
                                     "not to a PYRO: URI of an object")
        if exc is not None:
            self.fail(exc)
        else:
            self._resolve_host(call.result())

    def _resolve_host(self, uri: URI) -> None:
        self.uri = uri
        if uri.sockname:
            self._connect(socket.AF_UNIX, uri.sockname)
            return
        try:
            ip = ipaddress.ip_address(uri.host)
        except ValueError:
            host, port = uri.host, uri.port
            self.client._in_worker(lambda: socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM),
                                   self._host_resolved)
            return
        self._connect(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (uri.host, uri.port))

    def _host_resolved(self, infos: Any, exc: BaseException | None) -> None:
        if self.closed:
            return
        if exc is not None or not infos:
            self.fail(errors.CommunicationError(f"cannot connect to {self.location}: cannot resolve host "
                                                f"{self.uri.host!r}: {exc}"))
            return
        family, _, _, _, address = infos[0]
        self._connect(family, address)

    def _connect(self, family: int, address: Any) -> None:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            self.fail(errors.CommunicationError(f"cannot connect to {self.location}: {exc}"))
            return
        sock.setblocking(False)
        if family != getattr(socket, "AF_UNIX", None):
            # Pipelined small messages must not wait for the previous one's ACK (Nagle).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.sock = sock
        self.state = "connecting"
        self._bound_handshake()
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            self.fail(errors.CommunicationError(f"cannot connect to {self.location}: {os.strerror(err)}"))
            return
        self._set_interest(WRITE)

    def _bound_handshake(self) -> None:
        """Fail the connection if it is not ready within HANDSHAKE_TIMEOUT (a black hole, a silent server).

        A call's own ``_pyroTimeout`` may be longer or unset; a connection
        nobody answers must still end.
        """
        if config.HANDSHAKE_TIMEOUT > 0:
            self.handshake_timer = _Request(Call(f"connect and handshake with {self.location} (HANDSHAKE_TIMEOUT "
                                                 f"{config.HANDSHAKE_TIMEOUT:g} s)"), "<timer>", None, None)
            self.handshake_timer.channel = self
            self.client._add_timer(self.handshake_timer, config.HANDSHAKE_TIMEOUT)

    def _connected(self) -> None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(errors.CommunicationError(f"cannot connect to {self.location}: {os.strerror(err)}"))
            return
        context = self.proxy._pyroSslContext or self.client.ssl_context
        if context is None and config.SSL:
            try:
                context = client_context_from_config(config)
            except (OSError, ssl.SSLError, TLSError) as exc:
                self.fail(TLSError(f"cannot make the TLS context for {self.location}: {exc}"))
                return
        if context is None:
            self.transport = PlainTransport(self.sock)
            self._send, self._recv = self.sock.send, self.sock.recv  # what PlainTransport's do, one call less
            self._send_connect()
            return
        self.state = "tls"
        uri = self.uri
        try:
            self.transport = tls_transport(self.sock, context, False, None if uri.sockname else uri.host,
                                           may_step=functools.partial(self.client._may_step_tls, self))
        except ValueError as exc:  # say, a unix socket URI (no host name) with a context that checks host names
            self.fail(TLSError(f"cannot start TLS with {self.location}: {exc}"))
            return
        self._send, self._recv = self.transport.send, self.transport.recv
        self._tls_step(self.transport.start)

    def _tls_step(self, step: Callable[[], Any]) -> None:
        """Advance the TLS handshake; once done, the Pyro handshake starts."""
        try:
            step()
        except TLSError as exc:
            self.fail(TLSError(f"TLS handshake with {self.location} failed: {exc}"))
            return
        except OSError as exc:
            self.fail(TLSError(f"TLS handshake with {self.location} failed ({exc}): does the daemon use "
                               "TLS? Both ends must set SSL"))
            return
        if self.transport.handshaking:
            self._set_interest(READ | WRITE if self.transport.wants_write else READ)
        else:
            self._send_connect()

    def _send_connect(self) -> None:
        self.state = "handshake"
        self.out += self.protocol.connect(self.uri.object, self.proxy._pyroHandshake, metadata=config.METADATA,
                                          annotations=self._annotations())
        self._flush()

    def _handshake_done(self, event: Connected) -> None:
        proxy = self.proxy
        proxy._pyroResponseAnnotations(event.message.annotations, event.message.type)
        proxy._pyroValidateHandshake(event.handshake)
        if event.metadata is not None:
            proxy._pyroApplyMetadata(event.metadata)
        elif config.METADATA and not proxy._pyroMetaKnown:
            self.state = "metadata"
            call = Call(f"get_metadata of {self.uri}")
            call.add_done_callback(self._metadata_reply)
            self._send_request(_Request(call, "<metadata>", (self.uri.object,), None))
            self._flush()
            return
        self._ready()

    def _metadata_reply(self, call: Call) -> None:
        if self.closed:
            return
        try:
            self.proxy._pyroApplyMetadata(call.result())
        except Exception as exc:
            self.fail(exc)
            return
        self._ready()

    def _ready(self) -> None:
        self.state = "ready"
        self.handshake_timer.call.set_result(None)
        self._send_queued()

    def _send_queued(self) -> None:
        """Encode every queued call and write as much as the socket takes."""
        queued, self.queued = self.queued, collections.deque()
        self.cancelled_queued = 0
        for request in queued:
            self._send_request(request)
        self._flush()

    # -- sending --

    def _annotations(self) -> dict[str, bytes]:
        annotations = self.proxy._pyroAnnotations()  # not copied unless added to: encoding keeps none
        corr = current_context.correlation_id
        if corr is not None:
            annotations = {**annotations, "CORR": corr.bytes}
        return annotations

    def _send_request(self, request: _Request) -> None:
        """Encode ``request`` into the outbox (nothing for a call done already, or one that cannot be)."""
        data = self._encode(request)
        if data is not None:
            self.out += data

    def _encode(self, request: _Request) -> "_wire.Data | None":
        """The bytes of ``request``, to be written right behind what the outbox holds; the call is
        in flight from now on. None when nothing is to be sent: the call is done (cancelled while
        queued, a bind, arguments that cannot be serialized)."""
        call = request.call
        if call.done():  # cancelled while queued
            return None
        kind, args, kwargs = request.kind, request.args, request.kwargs
        protocol = self.protocol
        try:
            if kind == "<bind>":
                call.set_result(True)
                return None
            if kind == "<metadata>":
                out = protocol.get_metadata(args[0], self._annotations())
            elif kind == "<next>":
                out = protocol.next_stream_item(args[0], self._annotations())
            elif kind == "<close_stream>":
                out = protocol.close_stream(args[0], self._annotations())
            elif kind in _BATCH_KINDS:
                out = protocol.batch(self.uri.object, args, oneway=kind == "<batch-oneway>",
                                     annotations=self._annotations())
            else:
                proxy = request.proxy or self.proxy
                if proxy._pyroMetaKnown and kind not in proxy._pyroMethods and kwargs is not None:
                    raise AttributeError(f"remote object '{proxy._pyroUri}' has no exposed method '{kind}'")
                if type(kwargs) is dict and not kwargs and kind not in proxy._pyroOneway \
                        and type(proxy)._pyroAnnotations is Proxy._pyroAnnotations:
                    # the common call, written in one pass when the protocol can (no annotations
                    # but a correlation id): the same bytes, the call pending as invoke() leaves it
                    # (no call context at all: no correlation id, as current_context would say)
                    corr = None if _context_facts.get(None) is None else current_context.correlation_id
                    data = None if corr is not None and type(corr) is not uuid.UUID else \
                        protocol.quick_invoke(self.uri.object, kind, args, None if corr is None else corr.bytes)
                    if data is not None:
                        request.seq = protocol.seq
                        self.inflight[request.seq] = request
                        self.quick = request
                        return data
                out = protocol.invoke(self.uri.object, kind, args, kwargs, oneway=kind in proxy._pyroOneway,
                                      annotations=self._annotations())
        except Exception as exc:  # arguments that cannot be serialized: this call fails, nothing was sent
            call.set_exception(exc)
            return None
        request.seq = out.seq
        if out.expects_reply:
            self.inflight[out.seq] = request
        else:  # a oneway call completes once its bytes are written
            self.oneway_marks.append((self.written + self.out.size + len(out.data), request))
        return out.data

    def _send_alone(self, request: _Request) -> None:
        """Write ``request``, the only thing to send: a small one with one plain ``send``, not
        through the outbox (what the socket does not take waits there)."""
        data = self._encode(request)
        if type(data) is not bytes:  # nothing to send, or a large call in parts
            if data is not None:
                self.out += data
                self._flush()
            return
        try:
            sent = self._send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except (OSError, TLSError) as exc:
            self._send_failed(exc)
            return
        if sent < len(data):
            self.out += data[sent:]
        self._wrote(sent)

    def _flush(self) -> None:
        if self.sock is None or self.state in ("connecting", "tls", "closed", "decoding"):
            return
        if self.out.size:
            try:
                sent = self.out.send_to(self.transport)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except (OSError, TLSError) as exc:
                self._send_failed(exc)
                return
            self._wrote(sent)
            return
        try:
            self.transport.flush()
        except OSError as exc:
            self._send_failed(exc)
            return
        self._set_interest(WRITE | READ if self.transport.wants_write else READ)

    def _wrote(self, sent: int) -> None:
        """``sent`` more bytes were written: the oneway calls they complete are done; watch for
        writing while bytes wait."""
        self.written += sent
        marks = self.oneway_marks
        while marks and marks[0][0] <= self.written:
            marks.popleft()[1].call.set_result(None)
        events = WRITE | READ if self.out.size or self.transport.wants_write else READ
        if events != self.interest:
            self._set_interest(events)

    def _send_failed(self, exc: BaseException) -> None:
        """Writing failed: a reset, most often, with replies already read waiting to be handled
        (a call queued behind them, written now). Those are answers: ``_lose`` completes them
        first, as when receiving fails. A TLS error breaks the connection at once."""
        error = errors.ConnectionClosedError(f"sending to {self.location} failed: {exc}")
        if isinstance(exc, TLSError):
            self.fail(error)
            return
        self._lose(error)
        if not self.closed:
            self._set_interest(0)  # nothing more goes out; the replies left are handled at the deadline

    def _set_interest(self, events: int) -> None:
        """Watch the socket for ``events``, but never for reading once the end of stream was
        read (see ``ended``); a socket watched for nothing is not watched at all."""
        if self.ended:
            events &= WRITE
        if events != self.interest:
            self.interest = events
            if events:
                self.client._watch(self.sock, self, events)
            else:
                self.client._unwatch(self.sock)

    # -- receiving --

    def on_ready(self, events: int) -> None:
        if self.state == "decoding":  # an event the loop picked before the socket was unwatched
            return
        if self.state == "connecting":
            try:
                self._connected()
            except ClientClosedError as exc:  # every call was cancelled and the proxy dropped
                self.fail(exc)
            return
        if self.state == "tls":
            self._tls_step(self._tls_read if events & READ else self.transport.flush)
            return
        if events & WRITE:
            self._flush()
        if events & READ and self.state != "closed" and not self.ended:
            try:
                data = self._recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except TLSError as exc:
                self.fail(errors.ConnectionClosedError(f"receiving from {self.location} failed: {exc}"))
                return
            except OSError as exc:
                self._lose(errors.ConnectionClosedError(f"receiving from {self.location} failed: {exc}"))
                return
            if not data:
                self._lose(None)
                return
            if self._quick_reply(data):
                return
            self.fed = True
            self.protocol.receive_data(data)
            self.process()

    def _lose(self, error: errors.ConnectionClosedError | None) -> None:
        """The connection ended: the end of stream was read (``error`` None), or receiving or
        sending failed (a reset) with ``error``. Replies read whole before it (waiting behind a
        callback that runs a nested loop, or left by the budget) are answers: they complete
        first, then the calls left fail with ``error`` (the protocol's own when None, or when
        the end was read before)."""
        if not self.ended:
            self.lost = error
            self.ended = True
            self._set_interest(self.interest)  # not for reading any more
            self.fed = True
            self.protocol.receive_data(b"")  # the protocol says what the end means
        self.process()

    def _quick_reply(self, data: bytes) -> bool:
        """Complete the one call in flight from ``data`` if that is its whole reply, a plain scalar
        (``quick_result``): True, or False with nothing done.

        Only for a call made by ``quick_invoke`` that is the latest and the only one in flight,
        with nothing received before waiting in the protocol, and a reply the loop may decode
        (``MAX_BLOCKING_DECODE``): then the general path would give the same value and annotations.
        """
        request = self.quick
        protocol = self.protocol
        size = len(data)
        if request is None or self.fed or len(self.inflight) != 1 or self.inflight.get(protocol.seq) is not request \
                or 0 < config.MAX_BLOCKING_DECODE < size:
            return False
        self.quick = None
        reply = protocol.quick_result(data, size)
        if reply is None:  # the bytes went to the protocol: the general path reads them
            self.fed = True
            self.process()
            return True
        value, annotations = reply
        self._take_request(request.seq, annotations, _wire.MSG_RESULT)
        client = self.client
        if self in client._soon and not self.queued:
            client._soon.discard(self)  # nothing buffered is left for a nested loop to take
        request.call.set_result(value)
        return True

    def _tls_read(self) -> None:
        """Handshake records from the daemon; a plaintext daemon closes at our first one."""
        try:
            data = self.transport.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            raise TLSError("the daemon closed the connection: does it use TLS? Both ends must set SSL")
        self.fed = True
        self.protocol.receive_data(data)  # cannot happen before the handshake ends: kept for process()

    def resume(self) -> None:
        """Send a burst of calls, and handle replies left for later by the budget."""
        if self.state == "ready" and self.queued:
            self._send_queued()
        else:
            self._flush()
        self.process()

    def process(self) -> None:
        """Handle the replies received, at most MAX_CALLS_PER_WAKEUP of them now."""
        budget = config.MAX_CALLS_PER_WAKEUP
        client = self.client
        while not self.closed and self.state != "decoding":
            if self._too_large_for_the_loop():
                self._decode_aside()
                return
            event = self.protocol.next_event()
            if event is None:
                self.fed = self.protocol.partial
                if not self.queued:
                    client._soon.discard(self)  # nothing buffered is left for a nested loop to take
                return
            if (self.ended or self.protocol.partial) and self not in client._soon:
                # More replies (or the end of stream) are buffered behind this one. Should
                # its callback run a nested loop (a modal dialog), that loop must still get
                # them, though the socket may never be readable again (and is not read
                # once ended): the deadline, due now, hands them over.
                client._soon.add(self)
                client._update_deadline()
            try:
                self._handle(event)
            except Exception as exc:  # a handshake the program's hook refused, say
                self.fail(exc)
                return
            budget -= 1
            if budget <= 0 and (self.ended or self.protocol.partial):
                client._soon.add(self)
                return

    def _too_large_for_the_loop(self) -> bool:
        limit = config.MAX_BLOCKING_DECODE
        size = self.protocol.next_size() if limit else None
        if size is None:
            return False  # no complete message yet: receiving it costs the loop nothing
        length, flags = size
        return length > limit or bool(flags & _wire.FLAGS_COMPRESSED) and length > limit // 1024

    def _decode_aside(self) -> None:
        """Decode the next (large) reply in a worker thread; the loop goes on meanwhile.

        The connection is unwatched and its new calls wait in ``queued`` until
        the worker is done, so nothing touches the protocol state meanwhile and
        replies still complete in order.
        """
        self.resume_state, self.state = self.state, "decoding"
        self.client._unwatch(self.sock)
        self.client._in_worker(self.protocol.next_event, self._decoded)

    def _decoded(self, event: Any, exc: BaseException | None) -> None:
        if self.closed:
            return  # failed meanwhile (its deadline, the client's close)
        self.state = self.resume_state
        if self.interest:
            self.client._watch(self.sock, self, self.interest)
        if exc is not None:
            self.fail(errors.ProtocolError(f"decoding a reply from {self.location} failed: {exc!r}"))
            return
        try:
            if event is not None:
                self._handle(event)
        except Exception as exc:
            self.fail(exc)
            return
        if self.state == "ready":
            self._send_queued()  # the calls made meanwhile go out
        else:
            self._flush()
        self.process()

    def _handle(self, event: Any) -> None:
        if type(event) is Result:  # by far the most frequent: tested first
            message = event.message
            request = self._take_request(event.seq, message.annotations, message.type)
            if request is None:
                return
            value = event.value
            if message.flags & _wire.FLAGS_COMPRESSED or _AUTOPROXY_MARKER in message.data:
                value = _loopify(self.client, value)
            if request.kind in _BATCH_KINDS and value and isinstance(value[-1], ExceptionWrapper):
                request.call.set_exception(value[-1].exception)  # as iterating a blocking batch's results raises
            else:
                request.call.set_result(value)
            return
        if isinstance(event, Connected):
            self._handshake_done(event)
            return
        if isinstance(event, ConnectFailed):
            raise errors.CommunicationError(f"connection to {self.location} rejected: {event.reason}")
        if isinstance(event, Broken):
            if self.lost is not None:
                raise self.lost
            error = event.error
            hint = _REPLY_BOUND_HINT if isinstance(error, errors.MessageTooLargeError) else ""
            if self.state == "handshake" and not self.transport.tls:
                hint += " (at the handshake: if the daemon uses TLS, set config.SSL or an ssl_context)"
            raise type(error)(f"connection to {self.location}: {error}{hint}")
        request = self._take_request(event.seq, event.message.annotations, event.message.type)
        if request is None:
            return
        call = request.call
        if isinstance(event, Failure):
            call.set_exception(event.exception)
        elif isinstance(event, StreamStarted):
            call.set_result(RemoteStream(self.proxy, event.stream_id))
        elif isinstance(event, StreamEnd):
            call.set_result(_STREAM_END)

    def _take_request(self, seq: int, annotations: dict[str, bytes], msg_type: int) -> "_Request | None":
        """The request the reply ``seq`` answers, its proxy's response hook called (if the proxy's
        class has one); None for a call already failed (its deadline) whose reply made it after all."""
        request = self.inflight.pop(seq, None)
        if request is not None:
            proxy = request.proxy or self.proxy
            if type(proxy)._pyroResponseAnnotations is not _NO_RESPONSE_HOOK:
                proxy._pyroResponseAnnotations(annotations, msg_type)
        return request

    # -- the end --

    def fail(self, exc: BaseException) -> None:
        """Close the connection and fail every call on it with ``exc``."""
        if self.closed:
            return
        self.state = "closed"
        self.handshake_timer.call.set_result(None)
        self.client._tls_waiting.discard(self)
        self.protocol.close()
        proxy = self._proxy()
        if proxy is not None and proxy._pyroChannel is self:
            object.__setattr__(proxy, "_pyroChannel", None)
        self.client._soon.discard(self)
        self.client._channels.discard(self)
        if self.sock is not None:
            self.client._unwatch(self.sock)
            if self.transport is not None:
                self.transport.close()  # TLS: close_notify, if the socket takes it now
            self.sock.close()
        requests = [r for _, r in self.oneway_marks] + list(self.inflight.values()) + list(self.queued)
        self.oneway_marks.clear()
        self.inflight.clear()
        self.queued.clear()
        for request in requests:
            request.call.set_exception(exc)


_REPLY_BOUND_HINT = " (MAX_MESSAGE_SIZE, or MAX_BUFFERED_INPUT where that is 0)"


def _not_connected(*_args: Any) -> Any:
    """A channel's ``_send``/``_recv`` before it has a transport: never called (it is not "ready")."""
    raise BlockingIOError


def _reply_bound() -> int:
    """The largest reply a connection accepts: MAX_MESSAGE_SIZE, else MAX_BUFFERED_INPUT.

    With both 0 there is no bound (Pyro4's default); otherwise a server
    announcing a huge reply cannot make the program buffer it.
    """
    return config.MAX_MESSAGE_SIZE or config.MAX_BUFFERED_INPUT


#: the response-annotations hook a loop proxy has unless its class overrides it: it does nothing
_NO_RESPONSE_HOOK = Proxy._pyroResponseAnnotations
#: what a stream-item call completes with when the stream has no more items
_STREAM_END = object()
_BATCH_KINDS = ("<batch>", "<batch-oneway>")


def _loopify(client: Client, value: Any) -> Any:
    """Replace the (blocking) proxies in a result by loop proxies of ``client``."""
    if isinstance(value, Proxy):
        return LoopProxy._from_proxy(client, value)
    if isinstance(value, list):
        return [_loopify(client, v) for v in value]
    if isinstance(value, tuple):
        return tuple(_loopify(client, v) for v in value)
    if isinstance(value, dict):
        return {k: _loopify(client, v) for k, v in value.items()}
    return value


_LOCAL = ("_pyroClient", "_pyroUri", "_pyroChannel", "_pyroTimeout", "_pyroHmacKeyBytes", "_pyroHandshake",
          "_pyroSerializer", "_pyroMethods", "_pyroAttrs", "_pyroOneway", "_pyroMetaKnown", "_pyroMaxRetries",
          "_pyroSslContext")


class LoopProxy:
    """A remote object seen from the loop: every call returns a ``Call`` at once.

    Remote attributes (exposed properties) go through ``_pyroGetAttr(name)``
    and ``_pyroSetAttr(name, value)``, which return calls too. Use it in the
    thread of the loop hosting its client only.
    """

    __slots__ = _LOCAL + ("__weakref__",)

    def __init__(self, client: Client, uri: "str | URI") -> None:
        uri = URI(uri) if isinstance(uri, str) else URI(uri)
        set_ = object.__setattr__
        set_(self, "_pyroClient", client)
        set_(self, "_pyroUri", uri)
        set_(self, "_pyroChannel", None)
        set_caller_defaults(self)
        set_(self, "_pyroMaxRetries", 0)
        set_(self, "_pyroSslContext", None)  # TLS for this proxy; None: its client's ssl_context

    @classmethod
    def _from_proxy(cls, client: Client, proxy: Proxy) -> "LoopProxy":
        loop_proxy = cls(client, proxy._pyroUri)
        for name in ("_pyroHmacKeyBytes", "_pyroHandshake", "_pyroSerializer", "_pyroMetaKnown",
                     "_pyroSslContext"):
            object.__setattr__(loop_proxy, name, getattr(proxy, name))
        for name in ("_pyroMethods", "_pyroAttrs", "_pyroOneway"):
            object.__setattr__(loop_proxy, name, set(getattr(proxy, name)))
        return loop_proxy

    def __getattr__(self, name: str) -> _RemoteMethod:
        if name[:5] == "_pyro" or name[:2] == "__" == name[-2:]:  # not startswith(): a call less each
            raise AttributeError(name)
        if self._pyroMetaKnown and name not in self._pyroMethods:
            raise AttributeError(f"remote object '{self._pyroUri}' has no exposed method '{name}'"
                                 + (" (it is an attribute: use _pyroGetAttr/_pyroSetAttr)"
                                    if name in self._pyroAttrs else ""))
        return _RemoteMethod(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_pyroHmacKey":
            name, value = "_pyroHmacKeyBytes", value.encode("utf-8") if isinstance(value, str) else value
        if name in _LOCAL:
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"cannot set '{name}' on a loop proxy: remote attributes are set with "
                             "_pyroSetAttr(name, value), which returns a Call")

    @property
    def _pyroConnection(self) -> PlainTransport | TLSTransport | None:  # noqa: N802 - Pyro4's name
        """The open connection, for ``_pyroConnection.getpeercert()`` in ``_pyroValidateHandshake``
        as in Pyro4 (None without TLS); None when not connected."""
        channel = self._pyroChannel
        return None if channel is None else channel.transport

    def __repr__(self) -> str:
        state = "connected" if self._pyroChannel is not None else "not connected"
        return f"<pyro_loops.LoopProxy at 0x{id(self):x}; {state}; for {self._pyroUri}>"

    def __eq__(self, other: object) -> bool:
        return other is self or isinstance(other, LoopProxy) and other._pyroUri == self._pyroUri

    # The same as the blocking Proxy's: the HMAC key property, hashing, ``with``
    # (releases the connection), and the hooks a subclass overrides.
    _pyroHmacKey = Proxy._pyroHmacKey
    __hash__ = Proxy.__hash__
    __enter__ = Proxy.__enter__
    __exit__ = Proxy.__exit__
    _pyroValidateHandshake = Proxy._pyroValidateHandshake
    _pyroAnnotations = Proxy._pyroAnnotations
    _pyroResponseAnnotations = Proxy._pyroResponseAnnotations

    # -- calls --

    def _pyroInvoke(self, method: str, vargs: Any, kwargs: Any) -> Call:  # noqa: N802
        """Send a call of ``method`` and return its ``Call`` at once."""
        return self._pyroClient._submit(self, method, vargs, kwargs, (method, self._pyroUri))

    def _pyroRequest(self, kind: str, args: Any, kwargs: Any,  # noqa: N802
                     describe: "str | tuple[str, Any]") -> Call:
        return self._pyroClient._submit(self, kind, args, kwargs, describe)

    def _pyroGetAttr(self, name: str) -> Call:  # noqa: N802
        """A call whose result is the remote (exposed) property ``name``."""
        return self._pyroInvoke("__getattr__", (name,), None)

    def _pyroSetAttr(self, name: str, value: Any) -> Call:  # noqa: N802
        """A call that sets the remote (exposed) property ``name``; its result is None."""
        return self._pyroInvoke("__setattr__", (name, value), None)

    def _pyroBatch(self) -> "LoopBatch":  # noqa: N802
        """What ``pyro_loops.batch(loop_proxy)`` returns."""
        return LoopBatch(self)

    def _pyroBind(self) -> Call:  # noqa: N802
        """Connect (and fetch metadata) now; the call's result is True once the connection is ready."""
        return self._pyroRequest("<bind>", None, None, f"connect to {self._pyroUri}")

    def _pyroRelease(self) -> None:  # noqa: N802
        """Close the connection; its pending calls fail, the next call opens a new one."""
        channel = self._pyroChannel
        if channel is not None:
            channel.fail(ClientClosedError(f"connection to {channel.location} released by the program"))

    def _pyroApplyMetadata(self, meta: Metadata) -> None:  # noqa: N802
        set_ = object.__setattr__
        set_(self, "_pyroMethods", set(meta.methods))
        set_(self, "_pyroAttrs", set(meta.attrs))
        set_(self, "_pyroOneway", set(meta.oneway))
        set_(self, "_pyroMetaKnown", True)
        if not self._pyroMethods and not self._pyroAttrs:
            raise errors.PyroError(
                f"remote object '{self._pyroUri}' doesn't expose any methods or attributes. Did you forget "
                "to mark them with @expose? (or set config.REQUIRE_EXPOSE = False on the server)")


class LoopBatch(BatchProxy):
    """Calls recorded on a loop proxy, sent as one message: ``pyro_loops.batch(loop_proxy)``.

    ``b = pyro_loops.batch(proxy); b.add(1, 2); b.echo("x"); b().then(show)``:
    calling it sends the recorded calls and returns a ``Call`` whose result is
    the list of their results. If one raised on the server (the server stops
    there), the call fails with that exception, as iterating a blocking
    batch's results raises it. ``b(oneway=True)``: a call that completes once
    the batch is written, with None.
    """

    def __call__(self, oneway: bool = False) -> Call:  # type: ignore[override]  # a Call, not an iterator
        calls, self._calls = self._calls, []
        return self._proxy._pyroRequest("<batch-oneway>" if oneway else "<batch>", calls, None,
                                        f"batch of {len(calls)} calls on {self._proxy._pyroUri}")


register_class_to_dict(LoopProxy, lambda p: {"__class__": "Pyro4.core.Proxy", "state": _proxy_state(p)})


class RemoteStream:
    """The items of a remote iterator, fetched a bounded number ahead.

    Under asyncio: ``async for item in stream``. Elsewhere:
    ``stream.for_each(fn)`` calls ``fn(item)`` in the loop's thread for each
    item and returns a ``Call`` that completes at the end of the stream.
    At most ``ITER_STREAM_PREFETCH`` items are requested or held at a time.
    ``close()`` stops early and tells the server to drop the iterator; so
    does a stream the program drops unfinished, once it is collected.
    """

    def __init__(self, proxy: LoopProxy, stream_id: str) -> None:
        self.proxy = proxy
        self.stream_id = stream_id
        self._items: collections.deque[Any] = collections.deque()
        self._requested = 0
        self._ended = False
        self._error: BaseException | None = None
        self._waiter: Call | None = None
        self._on_item: Callable[[Any], Any] | None = None
        self._finished: Call | None = None
        self._fill()

    def _fill(self) -> None:
        while not self._ended and self._requested + len(self._items) < max(1, config.ITER_STREAM_PREFETCH):
            self._requested += 1
            call = self.proxy._pyroRequest("<next>", (self.stream_id,), None, f"next item of stream {self.stream_id}")
            call.add_done_callback(self._arrived)

    def _arrived(self, call: Call) -> None:
        self._requested -= 1
        if self._ended or call.cancelled():
            if not call.cancelled():
                call.exception()  # fetched past the end: "item stream terminated" is expected
            return
        exc = call.exception()
        if exc is None and call.result() is not _STREAM_END:
            self._items.append(call.result())
        else:
            self._ended = True
            self._error = exc
        self._deliver()

    def _deliver(self) -> None:
        if self._on_item is not None:
            while self._items:
                item = self._items.popleft()
                try:
                    self._on_item(item)
                except Exception as exc:
                    report_error(exc, f"stream item callback of {self.proxy._pyroUri}")
            if self._ended and self._finished is not None:
                finished, self._finished = self._finished, None
                if self._error is None:
                    finished.set_result(None)
                else:
                    finished.set_exception(self._error)
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set_result(None)
        self._fill()

    def for_each(self, fn: Callable[[Any], Any]) -> Call:
        """Call ``fn(item)`` for every item; the returned call completes when the stream ends."""
        self._on_item = fn
        self._finished = Call(f"stream {self.stream_id} of {self.proxy._pyroUri}")
        finished = self._finished
        self._deliver()
        return finished

    def __aiter__(self) -> "RemoteStream":
        return self

    async def __anext__(self) -> Any:
        if not self._items and not self._ended:
            self._waiter = Call(f"next item of stream {self.stream_id}")
            self._fill()
            await self._waiter
        if self._items:
            item = self._items.popleft()
            self._fill()
            return item
        if self._error is not None:
            raise self._error
        raise StopAsyncIteration

    def close(self) -> None:
        """Stop early: the server drops the iterator (a oneway call)."""
        if not self._ended:
            self._ended = True
            _close_stream(self.proxy, self.stream_id)

    def __del__(self) -> None:
        # Dropped unfinished: tell the server, from the loop's thread (this may run in any).
        if not self._ended:
            proxy, stream_id = self.proxy, self.stream_id
            try:
                proxy._pyroClient._post(lambda: _close_stream(proxy, stream_id))
            except Exception:  # the interpreter is shutting down
                pass


def _close_stream(proxy: LoopProxy, stream_id: str) -> None:
    """Send ``close_stream`` (oneway); if the connection is gone, so is the stream on the server."""
    if not proxy._pyroClient._closed:
        proxy._pyroRequest("<close_stream>", (stream_id,), None, f"close stream {stream_id}")._retrieved = True
