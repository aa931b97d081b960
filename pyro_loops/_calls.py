"""What a daemon does with each request: handshakes, calls, replies, streams.

``CallDispatcher`` turns protocol events into user calls (in the loop, in a
worker, or as an awaited coroutine) and their outcomes into reply bytes. It
never touches a socket itself: replies go through the daemon's
``Connections``. What it needs of the daemon is declared in ``CallHost``; it
owns the worker pool, the per-connection job quota and the queue of jobs that
workers hand back to the loop.

The ``except BaseException`` clauses here (KeyboardInterrupt and SystemExit
let through) are not ``hosting.reported``: they turn whatever a published
method, a hook or an encoder raised into the caller's error reply (or, for a
oneway call, a log line about the caller's method), which is the Pyro
behaviour, not an internal error for the error hook.
"""

from __future__ import annotations

import collections
import collections.abc
import functools
import inspect
import logging
import random
import threading
import time
import traceback
import zlib
from typing import Any, Callable, Protocol

from . import _wire, errors
from ._blob import blob_call
from ._connection import ClientConnection
from ._connections import Connections
from ._expose import find_property, get_attribute, marked_in_worker
from ._lane import HANGUP_CHECK_AFTER, Deferred, Raised, overrides_annotations, run_call
from .hosting import log, report_error
from ._protocol import ConnectRequest, InvokeRequest, PingRequest, Violation
from ._serializers import ExceptionWrapper, Serializer, encoding_cost, get_serializer
from ._streams import StreamRegistry
from ._workers import JobQuota, WorkerPool, checked_size
from .configuration import config
from .constants import DAEMON_NAME
from .context import current_context, enter_call_context, reset_call_context, set_call_context


class _ReportedCall(functools.partial):
    """A call to a ``@callback`` method: what it raises is also reported locally."""


class _Unprepared(functools.partial):
    """A call looked up by the worker that runs it (``_prepare_call`` partially applied): under
    the thread server, as in Pyro4's connection threads, a percall, session or single class
    is instantiated there, so a slow or failing ``__init__`` never holds up the loop."""


class CallHost(Protocol):
    """What call dispatch needs of the daemon it serves (``Daemon`` is one)."""

    objectsById: dict[str, Any]
    coroutine_runner: Callable[[Any, Callable[[Any, BaseException | None], None]], None] | None

    @property
    def _loop_thread(self) -> int | None:
        """The thread running the host loop, None while none is known."""

    def annotations(self) -> dict[str, bytes]:
        """Annotations for every reply (a subclass hook)."""

    def validateHandshake(self, conn: ClientConnection, data: Any) -> Any:  # noqa: N802 - Pyro4's name
        """The handshake reply for ``data``; raises to refuse the connection (a subclass hook)."""

    def close(self) -> None:
        """Close the daemon (deferred to the loop's turn when it must be)."""

    def _serves(self, uri: Any) -> bool:
        """Whether ``uri`` reaches this daemon."""

    def _update_deadline(self) -> None:
        """Tell the host loop when the daemon next needs time."""


class CallDispatcher:
    """The daemon's call dispatch (see the module docstring).

    ``wake`` makes the host loop run ``run_loop_jobs`` soon; any thread may call it.
    """

    def __init__(self, host: CallHost, connections: Connections, streams: StreamRegistry,
                 servertype: str | None, wake: Callable[[], None]) -> None:
        self.host = host
        self.connections = connections
        self.streams = streams
        self.servertype_set = servertype  # SERVERTYPE as configured; None: decided by how the daemon is served
        self.own_loop = False  # served by requestLoop() or a hand-written events() loop (the daemon says)
        self.wake = wake
        self.single_instances: dict[type, Any] = {}
        self.making = threading.Condition()  # guards being_made
        self.being_made: set[tuple[int, type]] = set()  # (id of the dict it goes in, class) being made
        self.dispatching = 0  # calls running in the loop's thread right now (nested loops included)
        self.worker_call = threading.local()  # in a worker running a call: close() waits for its reply
        self.workers: WorkerPool | None = None  # started with the first job
        checked_size(config.THREADPOOL_SIZE)  # a size no pool can have is refused now, as Pyro4's daemon does
        self.jobs: JobQuota[ClientConnection] = JobQuota()  # oneway jobs per connection, MAX_QUEUED_JOBS_PER_CONNECTION
        # ``Requests.holds_back``: the connection's job quota is full (asked before every read)
        self.holds_back: Callable[[ClientConnection], bool] = self.jobs.is_full
        self.loop_jobs: collections.deque = collections.deque()  # (conn, job) posted by workers
        self.jobs_after_close = False  # closed: posted jobs run at once (their connections are closed)

    @property
    def servertype(self) -> str:
        """"thread" or "multiplex": SERVERTYPE if set, else by what serves the daemon.

        Left unset, a daemon served by ``requestLoop()``, ``serveSimple()`` or a
        hand-written ``events()`` loop is a thread server as in Pyro4 (such
        programs rely on callbacks, circular and concurrent calls); one attached
        to an adapter runs calls in its loop's thread.
        """
        if self.servertype_set is not None:
            return self.servertype_set
        return "thread" if self.own_loop else "multiplex"

    def oneway_threaded(self) -> bool:
        """Whether oneway calls run in the background: ONEWAY_THREADED if set, else under the
        thread server and under an explicit multiplex server (Pyro4's default), not in an adapter's loop."""
        if config.ONEWAY_THREADED is not None:
            return bool(config.ONEWAY_THREADED)
        return self.servertype_set is not None or self.own_loop

    # --- what the connection side asks for (``_connections.Requests``) ----------------------

    def dispatch_decoded(self, conn: ClientConnection) -> None:
        assert conn.decoded is not None
        msg, serializer, request = conn.decoded
        conn.decoded = None
        self._dispatch(conn, msg, serializer, request)

    # --- workers and the loop -------------------------------------------------------------

    def pool(self) -> WorkerPool:
        if self.workers is None:
            self.workers = WorkerPool(config.THREADPOOL_SIZE, needs_worker=self._needs_worker)
        return self.workers

    def _needs_worker(self, uri: Any) -> bool:
        """Whether a call to ``uri`` from one of our workers would wait for another of them."""
        try:
            return self.servertype == "thread" and self.host._serves(uri)
        except OSError:  # the daemon closed meanwhile
            return False

    def post(self, conn: ClientConnection, job: Callable[[], None]) -> None:
        """Run ``job`` for ``conn`` in the loop's thread soon; safe from any thread.

        Once the daemon has closed, no loop runs jobs any more: the job runs
        here and now, where it finds its connection closed and logs the drop.
        """
        self.loop_jobs.append((conn, job))
        if self.jobs_after_close:
            self.run_loop_jobs()
        else:
            self.wake()

    def run_loop_jobs(self) -> None:
        while self.loop_jobs:
            try:
                conn, job = self.loop_jobs.popleft()
            except IndexError:  # taken by another thread meanwhile (only after close)
                return
            self.connections.guarded(conn, "daemon job from a worker", job)

    def close(self) -> None:
        """The daemon closed: stop the workers; results they post from now on run at once."""
        if self.workers is not None:
            self.workers.close()
        self.jobs_after_close = True
        self.run_loop_jobs()  # results that arrived meanwhile: their drop is logged

    def finish_call(self, conn: ClientConnection, data: bytes | None) -> None:
        conn.busy = False
        if conn.closed:
            if data is not None:
                self._log_dropped_reply(conn)
            return
        if data is not None:
            self.connections.send(conn, data)
        if conn.protocol.partial or conn.eof:
            # More requests wait (or the connection closes once answered). Not run from here: this runs in the callback
            # of the wakeup socket that every worker shares, and a call that
            # starts a nested loop would keep that socket unwatched meanwhile.
            self.connections.soon.add(conn)
        elif not conn.closed:
            self.connections.set_interest(conn)

    def submit_job(self, conn: ClientConnection, job: Callable[[], None], size: int) -> None:
        """Run a oneway call's ``job`` (``size`` payload bytes) in the pool, counted against the quotas.

        A connection with MAX_QUEUED_JOBS_PER_CONNECTION jobs queued or running is
        not read (nor are its buffered messages handled) until half of them have
        run: the client's sends block in its own socket buffers, the pool's queue
        stays short for everyone else, and nothing the client sent is dropped.
        Likewise every connection with jobs pending while all jobs together
        hold more than MAX_QUEUED_JOB_BYTES of payload.
        """
        limit, total_limit = config.MAX_QUEUED_JOBS_PER_CONNECTION, config.MAX_QUEUED_JOB_BYTES
        bound = self.jobs.started(conn, limit, size, total_limit)
        if bound == "count":
            self.connections.limited_log.log(
                logging.INFO, "MAX_QUEUED_JOBS_PER_CONNECTION",
                "connection from %s has MAX_QUEUED_JOBS_PER_CONNECTION (%d) worker jobs "
                "queued: not reading from it until half of them have run", conn.addr, limit)
        elif bound == "total":
            self.connections.limited_log.log(
                logging.INFO, "MAX_QUEUED_JOB_BYTES",
                "worker jobs of all connections hold more than MAX_QUEUED_JOB_BYTES (%d): not "
                "reading from %s, which has jobs queued, until half of that has run", total_limit, conn.addr)

        def run() -> None:
            try:
                job()
            finally:
                self.post(conn, lambda: self._job_finished(conn, size))

        self.pool().submit(run)

    def _job_finished(self, conn: ClientConnection, size: int) -> None:
        for owner in self.jobs.finished(conn, config.MAX_QUEUED_JOBS_PER_CONNECTION, size,
                                        config.MAX_QUEUED_JOB_BYTES):
            if not owner.closed:
                self.connections.soon.add(owner)  # its buffered messages first, then reading again

    # --- protocol events ---------------------------------------------------------------

    def handle(self, conn: ClientConnection, event: Any) -> None:
        if isinstance(event, InvokeRequest):
            self._invoke(conn, event.msg)
        elif isinstance(event, PingRequest):
            self.connections.send(conn, conn.protocol.pong_bytes(event.msg, self._reply_annotations(event.msg)))
        elif isinstance(event, ConnectRequest):
            self._handshake(conn, event.msg)
        elif isinstance(event, Violation):
            if event.reply is not None:
                self.connections.send(conn, event.reply)
            self.connections.close_conn(conn, "protocol error: " + event.reason)

    def _reply_annotations(self, request: _wire.Message, corr: bytes | None = None) -> dict[str, bytes]:
        # a correlation id needs to be unique, not secret: no system call per reply
        annotations = {"CORR": corr or request.annotations.get("CORR") or random.randbytes(16)}
        if overrides_annotations(type(self.host)):
            annotations.update(self.host.annotations())
        return annotations

    def _handshake(self, conn: ClientConnection, msg: _wire.Message) -> None:
        serializer = None
        try:
            serializer = get_serializer(msg.serializer_id)
            if serializer.name not in config.SERIALIZERS_ACCEPTED:
                serializer = None
                raise errors.SerializeError(f"message used serializer that is not accepted: {msg.serializer_id}")
            corr = msg.annotations.get("CORR")
            if corr is not None and len(corr) != 16:
                raise ValueError("bytes is not a 16-char string")
            # decoded right here, before anyone is known: a bound on the
            # decompressed size keeps a compressed bomb from holding the loop
            payload = msg.small_payload(config.MAX_HANDSHAKE_SIZE)
            if payload is None:
                raise errors.MessageTooLargeError(
                    f"handshake payload exceeds MAX_HANDSHAKE_SIZE ({config.MAX_HANDSHAKE_SIZE} bytes) "
                    "when decompressed")
            data = serializer.loads(payload)
            response = self.host.validateHandshake(conn, data["handshake"])
            flags = 0
            if msg.flags & _wire.FLAGS_META_ON_CONNECT:
                flags = _wire.FLAGS_META_ON_CONNECT
                meta = self.host.objectsById[DAEMON_NAME].get_metadata(data["object"], as_lists=True)
                response = {"handshake": response, "meta": meta}
            payload = serializer.dumps(response)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # any other error, even a BaseException subclass
            text = _describe(exc)
            self.connections.limited_log.log(logging.INFO, "refused handshake", "refused connection from %s: %s",
                                  conn.addr, text)
            fail_data = None
            if serializer is not None:
                try:
                    fail_data = serializer.dumps(text)
                except Exception:
                    pass
            self.connections.send(conn, conn.protocol.connect_fail_bytes(text, msg, fail_data))
            self.connections.close_conn(conn, None)
            return
        if config.COMPRESSION:
            payload, flags = _wire.compress_if_useful(payload, flags)
        self.connections.handshake_done(conn)
        self.connections.send(conn, conn.protocol.connect_ok_bytes(msg, payload, flags,
                                                        self._reply_annotations(msg, corr)))

    def _invoke(self, conn: ClientConnection, msg: _wire.Message) -> None:
        try:
            serializer = get_serializer(msg.serializer_id)
        except errors.SerializeError:
            self.connections.close_conn(conn, f"protocol error: unknown serializer id {msg.serializer_id}")
            return
        try:
            # judged by the decompressed size, found out at the cost of _LARGE
            # bytes of inflating at most: a 4 KB bomb is a large request
            payload = msg.small_payload(_LARGE)
        except zlib.error:
            payload = None  # the worker's decoding reports it
        if payload is None and not msg.flags & _wire.FLAGS_COMPRESSED and serializer.decodes_quickly(msg.data):
            payload = msg.data  # e.g. one big bytes argument: a worker would only add its round trip
        if payload is None and self.connections.watcher is not None:
            # Decompressing and decoding a large payload takes time in
            # proportion to its size: a worker does it, the loop only runs the
            # call. The serializers keep the worker from holding the
            # interpreter lock for long (MAX_BLOCKING_DECODE).
            conn.busy = True
            self.pool().submit(lambda: self._decode_in_worker(conn, msg, serializer))
            return
        try:
            request = _decode_call(msg, serializer, payload)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # any other error, even a BaseException subclass
            self._refuse_call(conn, msg, serializer, exc, now=True)
            return
        self._dispatch(conn, msg, serializer, request)

    def _decode_in_worker(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer) -> None:
        try:
            request = _decode_call(msg, serializer)
        except BaseException as exc:
            self.post(conn, functools.partial(self._refuse_call, conn, msg, serializer, exc, now=False))
            return
        self.post(conn, lambda: self._decoded(conn, msg, serializer, request))

    def _decoded(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer,
                 request: tuple) -> None:
        """A worker decoded a request. It is dispatched from the deadline path, not
        from here: this runs in the callback of the wakeup socket all workers share,
        and a call that starts a nested loop would keep that socket unwatched."""
        conn.busy = False
        if conn.closed:
            log.info("call from %s dropped before it ran: %s", conn.addr, conn.close_reason)
        else:
            conn.decoded = (msg, serializer, request)
            self.connections.soon.add(conn)

    def _refuse_call(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer,
                     exc: BaseException, now: bool) -> None:
        """Answer a call that cannot be made with its error (oneway calls only get a log line)."""
        data = None
        if msg.flags & _wire.FLAGS_ONEWAY:
            log.info("oneway call from %s failed before it ran: %s", conn.addr, _describe(exc))
        else:
            data = self.exception_reply(conn, msg, serializer, exc)
        if now:
            if data is not None:
                self.connections.send(conn, data)
        else:
            self.finish_call(conn, data)

    def _dispatch(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer,
                  request: tuple) -> None:
        """Run a decoded call where it belongs and send its reply (or arrange for it)."""
        oneway = bool(msg.flags & _wire.FLAGS_ONEWAY)
        if conn.closed:
            return
        try:
            if self.servertype == "thread":
                call, in_worker = _Unprepared(self._prepare_call, conn, msg, *request), True
            else:
                call, in_worker = self._prepare_call(conn, msg, *request)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # any other error, even a BaseException subclass
            self._refuse_call(conn, msg, serializer, exc, now=True)
            return
        if oneway:
            if self.oneway_threaded() and not msg.flags & _wire.FLAGS_BATCH:
                self.submit_job(conn, lambda: self._run_oneway(conn, msg, call), len(msg.data))
            elif in_worker:  # in order, as Pyro4 runs it in the connection's own thread
                conn.busy = True
                self.pool().submit(lambda: self._run_oneway_in_order(conn, msg, call), affinity=conn)
            else:
                self.dispatching += 1
                try:
                    self._run_oneway(conn, msg, call)
                finally:
                    self.dispatching -= 1
            return
        conn.busy = True
        if in_worker:
            self.pool().submit(lambda: self._run_in_worker(conn, msg, serializer, call), affinity=conn)
            return
        self.dispatching += 1
        try:
            data = self._run_call(conn, msg, serializer, call)
        except Deferred:
            return  # a coroutine runs on the host loop; its reply comes later
        finally:
            self.dispatching -= 1
        self.reply_after_call(conn, data)

    def reply_after_call(self, conn: ClientConnection, data: bytes) -> None:
        """Send the reply of a call that ran in the loop's thread."""
        if not conn.closed and time.monotonic() - conn.last_active > HANGUP_CHECK_AFTER:
            # nothing was read while the call ran here: one peek tells whether
            # the client hung up meanwhile, so its reply is not lost silently
            self.connections.notice_hangup(conn)
        conn.busy = False
        if conn.closed:  # say, the daemon closed during a nested loop the call ran
            self._log_dropped_reply(conn)
            return
        self.connections.send(conn, data)
        if conn.read_paused:
            self.connections.set_interest(conn)

    def _log_dropped_reply(self, conn: ClientConnection) -> None:
        log.info("reply for %s dropped: its connection closed during the call (%s)", conn.addr, conn.close_reason)

    def refuse_queued(self, conn: ClientConnection) -> None:
        """At daemon close: answer the complete requests still queued on ``conn``
        with an error, so their callers learn at once that they did not run.
        Behind a running call they cannot be answered in order: they are counted
        in one log line, as are oneway calls."""
        error = errors.DaemonError("the daemon closed before this call ran")
        queued = [conn.decoded[0]] if conn.decoded is not None else []
        conn.decoded = None
        while (event := conn.protocol.next_event()) is not None:
            if not isinstance(event, Violation):
                queued.append(event.msg)
        dropped = 0
        for msg in queued:
            if conn.busy or msg.type != _wire.MSG_INVOKE or msg.flags & _wire.FLAGS_ONEWAY:
                dropped += 1
                continue
            try:
                serializer = get_serializer(msg.serializer_id)
            except errors.SerializeError:
                dropped += 1
                continue
            conn.out += self.exception_reply(conn, msg, serializer, error)
        if dropped:
            log.info("%d queued requests of %s dropped unanswered: %s", dropped, conn.addr, conn.close_reason)

    def _prepare_call(self, conn: ClientConnection, msg: _wire.Message, obj_id: str, method: str,
                      vargs: Any, kwargs: Any) -> tuple[Callable[[], Any], bool]:
        """The call to make for this request, and whether it must run in a worker."""
        obj = self._target(conn, obj_id, msg)
        if msg.flags & _wire.FLAGS_BATCH and method == "<batch>":
            calls = [(get_attribute(obj, name), args, kw) for name, args, kw in vargs]
            run_in_worker = any(marked_in_worker(obj, func) for func, _, _ in calls)
            return (lambda: _run_batch(calls)), self.servertype == "thread" or run_in_worker
        if kwargs is None and method in ("__getattr__", "__setattr__"):
            name = vargs[0]
            prop = find_property(obj, name)
            if prop is None or (method == "__setattr__" and prop.fset is None):
                raise AttributeError(f"attempt to access unexposed or unknown remote attribute '{name}'")
            if method == "__getattr__":
                return (lambda: prop.__get__(obj, type(obj))), self.servertype == "thread"
            value = vargs[1]
            return (lambda: prop.__set__(obj, value)), self.servertype == "thread"
        func = get_attribute(obj, method)
        if not callable(func):
            raise AttributeError(f"attempt to access unexposed or unknown remote attribute '{method}'")
        run_in_worker = self.servertype == "thread" or marked_in_worker(obj, func)
        run = functools.partial(func, *vargs, **kwargs)
        if getattr(func, "_pyroCallback", False):
            run = _ReportedCall(run)
        return run, run_in_worker

    def _target(self, conn: ClientConnection, obj_id: str, msg: _wire.Message) -> Any:
        obj = self.host.objectsById.get(obj_id) if isinstance(obj_id, str) else None
        if obj is None:
            raise errors.DaemonError("unknown object")
        if not inspect.isclass(obj):
            return obj
        mode, creator = obj._pyroInstancing

        def make() -> Any:
            # inside the call's context, as in Pyro4: a creator may read annotations or the correlation id
            token = self._set_context(conn, msg)
            try:
                return creator(obj) if creator else obj()
            finally:
                reset_call_context(token)

        if mode == "percall":
            instance = make()
        else:
            made = self.single_instances if mode == "single" else conn.pyroInstances
            instance = made.get(obj)
            if instance is None:
                instance = self._make_once(made, obj, make)
        instance._pyroDaemon = self.host  # the daemon, as for registered objects
        instance._pyroId = obj_id
        return instance

    def _make_once(self, made: dict, cls: type, make: Callable[[], Any]) -> Any:
        """``made[cls]``, made now unless another thread is making it (then that one's).

        Workers of the thread server make instances, two at once at times (a
        threaded oneway call beside its connection's next call, say). No lock
        is held while ``make`` runs: an ``__init__`` may call other objects of
        this daemon through a proxy.
        """
        key = (id(made), cls)
        with self.making:
            while key in self.being_made:
                self.making.wait()
            instance = made.get(cls)
            if instance is not None:
                return instance
            self.being_made.add(key)
        try:
            instance = made[cls] = make()
        finally:
            with self.making:
                self.being_made.discard(key)
                self.making.notify_all()
        return instance

    def _set_context(self, conn: ClientConnection, msg: _wire.Message) -> Any:
        return set_call_context(conn, conn.addr, msg.seq, msg.flags, msg.serializer_id, msg.annotations)

    def _run_call(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer,
                  call: Callable[..., Any]) -> bytes:
        """Run a call where we are (loop or worker) and return its reply bytes.

        The method runs from ``_lane.run_call``, as the call lane runs it, so
        a remote traceback reads the same whichever way the call came.
        """
        token = self._set_context(conn, msg)
        facts = current_context.facts()
        try:
            outcome = run_call(call, ())
            if type(call) is _Unprepared and type(outcome) is not Raised:  # the call, looked up by this worker
                call = outcome[0]
                outcome = run_call(call, ())
            if type(outcome) is Raised:
                if isinstance(call, _ReportedCall):
                    report_error(outcome.exc, "@pyro_loops.callback method")
                return self.exception_reply(conn, msg, serializer, outcome.exc)
        finally:
            reset_call_context(token)
        return self.outcome_reply(conn, msg, serializer, outcome, facts)

    def outcome_reply(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer, result: Any,
                       facts: Any) -> bytes:
        """The reply bytes for what a call returned; raises Deferred when they come later."""
        if inspect.iscoroutine(result):
            return self._await(conn, msg, serializer, result, facts)
        return self._result_reply(conn, msg, serializer, result, facts.response_annotations)

    def _await(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer, coro: Any,
               facts: Any) -> bytes:
        runner = self.host.coroutine_runner
        if runner is None or threading.get_ident() != self.host._loop_thread:
            coro.close()
            return self.exception_reply(conn, msg, serializer, TypeError(
                "async def methods need a daemon hosted by the asyncio adapter "
                "(pyro_loops.adapters.asyncio)"))

        def reply(result: Any, exc: BaseException | None) -> None:
            if exc is not None:
                data = self.exception_reply(conn, msg, serializer, exc)
            else:
                try:
                    data = self._result_reply(conn, msg, serializer, result, facts.response_annotations)
                except Deferred:
                    return  # a worker encodes it
            self.finish_call(conn, data)

        def done(result: Any, exc: BaseException | None) -> None:
            self.connections.guarded(conn, "reply of an awaited call", reply, result, exc)
            self.host._update_deadline()

        token = enter_call_context(facts)  # the task copies the context it is created in
        try:
            runner(coro, done)
        finally:
            reset_call_context(token)
        raise Deferred()

    def _run_in_worker(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer,
                       call: Callable[[], Any]) -> None:
        if conn.closed:  # queued while the daemon or the connection closed
            log.info("call from %s dropped before it ran: %s", conn.addr, conn.close_reason)
            return
        self._reply_from_here(conn, msg, serializer, lambda: self._run_call(conn, msg, serializer, call))

    def _reply_from_here(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer,
                         make: Callable[[], bytes]) -> None:
        """In a worker: make a reply and hand it to the loop, which sends it."""
        self.worker_call.running = True  # a close() the call asks for waits for its reply
        try:
            data = make()
        except BaseException as exc:  # even SystemExit in a worker must not lose the reply
            # its reply is made in the loop: should that fail too (a raising
            # annotations() hook), the loop closes the connection
            error = exc
            self.post(conn, lambda: self.finish_call(conn, self.exception_reply(conn, msg, serializer, error)))
        else:
            self.post(conn, lambda: self.finish_call(conn, data))
        finally:
            self.worker_call.running = False
        if getattr(self.worker_call, "close_after", False):
            self.worker_call.close_after = False
            self.host.close()

    def _reply_from_worker(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer,
                           make: Callable[[], bytes]) -> None:
        """Have a worker make a reply the loop's thread must not spend its time on;
        raises Deferred. The connection stays busy until the reply is sent, so
        replies keep the order of their requests."""
        self.pool().submit(lambda: self._reply_from_here(conn, msg, serializer, make))
        raise Deferred()

    def _run_oneway(self, conn: ClientConnection, msg: _wire.Message, call: Callable[[], Any]) -> None:
        token = self._set_context(conn, msg)
        try:
            if type(call) is _Unprepared:
                call = call()[0]
            result = call()
            if inspect.iscoroutine(result):
                if self.host.coroutine_runner is not None and threading.get_ident() == self.host._loop_thread:
                    self.host.coroutine_runner(result, lambda _r, e: e and log.info("oneway coroutine failed: %r", e))
                else:
                    result.close()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            log.info("oneway call from %s raised %s: %s", conn.addr, type(exc).__name__, _describe(exc))
        finally:
            reset_call_context(token)

    def _run_oneway_in_order(self, conn: ClientConnection, msg: _wire.Message, call: Callable[[], Any]) -> None:
        """In a worker: a oneway call the connection waits for (ONEWAY_THREADED off), so its
        next request is read only after this one ran; no reply, the connection is free again."""
        try:
            if conn.closed:
                log.info("oneway call from %s dropped before it ran: %s", conn.addr, conn.close_reason)
            else:
                self._run_oneway(conn, msg, call)
        finally:
            self.post(conn, lambda: self.finish_call(conn, None))

    def _result_reply(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer,
                      result: Any, response_annotations: dict[str, bytes] | None = None) -> bytes:
        """The reply bytes for a call's result; raises Deferred when a worker makes them.

        In the host loop's thread a result is encoded at once, while the call's
        effects are still what the method saw, as long as its estimated cost
        (``encoding_cost``) is within MAX_BLOCKING_ENCODE; so is compression of
        up to _COMPRESS_IN_LOOP bytes. Beyond either, a worker takes over with
        an encoder that lets the interpreter lock go (``dumps_large``) or with
        zlib (which releases it), and the loop runs on meanwhile. In a worker
        (``@in_worker`` methods, SERVERTYPE "thread") the reply is made right
        there, with ``dumps_large`` when large.

        What that means for a result the program keeps changing: a large one
        is encoded *after* the method returned, while the loop's other events
        run, exactly as Pyro4's thread server encodes after the method returns
        while its other threads run. The daemon copies nothing: the caller gets
        the value as the encoder finds it, possibly with changes made
        meanwhile, or, if a dict or set changed size under the encoder, a
        SerializeError saying so. A method that returns a large container
        that the GUI keeps changing should return a copy (``list(x)``,
        ``dict(x)``: a C-speed copy of the top level) or an immutable value.
        """
        flags = 0
        annotations = self._reply_annotations(msg)
        if response_annotations:
            annotations.update(response_annotations)
        if msg.flags & _wire.FLAGS_BATCH:
            flags |= _wire.FLAGS_BATCH
        elif type(result) not in _PLAIN and _is_stream(result):
            return self._start_stream(conn, msg, serializer, result)
        can_defer = threading.get_ident() == self.host._loop_thread and self.connections.watcher is not None
        large = encoding_cost(result, config.MAX_BLOCKING_ENCODE) > config.MAX_BLOCKING_ENCODE
        if large and can_defer:
            self._reply_from_worker(conn, msg, serializer, lambda: self._result_message(
                conn, msg, serializer, result, flags, annotations, large))
        return self._result_message(conn, msg, serializer, result, flags, annotations, large, can_defer)

    def _result_message(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer, result: Any,
                        flags: int, annotations: dict[str, bytes], large: bool, defer_packing: bool = False) -> bytes:
        """Encode ``result`` here and pack it into its reply (the error reply if it
        cannot be encoded). With ``defer_packing``, a payload COMPRESSION wants
        compressed and longer than _COMPRESS_IN_LOOP goes to a worker for it."""
        try:
            data = _payload(serializer, result, large)
        except errors.SerializeError as exc:
            return self.exception_reply(conn, msg, serializer, exc.with_traceback(None))
        if defer_packing and config.COMPRESSION and len(data) > _COMPRESS_IN_LOOP:
            self._reply_from_worker(conn, msg, serializer, lambda: self._packed_reply(
                conn, msg, serializer, data, flags, annotations))
        return self._packed_reply(conn, msg, serializer, data, flags, annotations)

    def _packed_reply(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer, data: bytes,
                      flags: int, annotations: dict[str, bytes]) -> bytes:
        """The reply message around an encoded result: compressed if COMPRESSION
        says so, an error if it exceeds MAX_MESSAGE_SIZE."""
        if config.COMPRESSION:
            data, flags = _wire.compress_if_useful(data, flags)
        if config.MAX_MESSAGE_SIZE and len(data) > config.MAX_MESSAGE_SIZE:
            return self.exception_reply(conn, msg, serializer, errors.MessageTooLargeError(
                f"reply of {len(data)} bytes exceeds MAX_MESSAGE_SIZE ({config.MAX_MESSAGE_SIZE})"))
        return conn.protocol.result_bytes(msg, data, flags, annotations)

    def exception_reply(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer,
                         exc: BaseException, flags: int = _wire.FLAGS_EXCEPTION,
                         annotations: dict[str, bytes] | None = None) -> bytes:
        # Whatever the exception does wrong (a failing __str__ or __setattr__,
        # unserializable attributes), the caller must still get an answer.
        traceback_lines = _attach_traceback(exc)
        annotations = annotations if annotations is not None else dict(self.host.annotations())
        try:
            data = serializer.dumps(exc)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as ser_exc:
            replacement = errors.PyroError(f"Error serializing exception: {_describe(ser_exc)}. "
                                           f"Original exception: {type(exc)}: {_describe(exc)}")
            replacement._pyroTraceback = traceback_lines if isinstance(traceback_lines, list) else None
            data = serializer.dumps(replacement)
        return conn.protocol.result_bytes(msg, data, flags, annotations)

    # --- streams ------------------------------------------------------------------------

    def _start_stream(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer,
                      iterator: Any) -> bytes:
        flags = _wire.FLAGS_EXCEPTION | _wire.FLAGS_ITEMSTREAMRESULT
        annotations = dict(self.host.annotations())
        if config.ITER_STREAMING:
            try:
                stream_id = self.streams.open(iterator, conn, time.monotonic())
            except errors.PyroError as exc:  # ITER_STREAMS_MAX_PER_CONNECTION reached
                return self.exception_reply(conn, msg, serializer, exc)
            annotations["STRM"] = stream_id.encode("ascii")
        marker = errors.ProtocolError("result of call is an iterator")
        marker._pyroTraceback = None  # tells the client this is no real error
        return self.exception_reply(conn, msg, serializer, marker, flags, annotations)



_MISSING = object()
#: result types that are never a stream
_PLAIN = frozenset((int, float, str, bool, type(None), bytes, tuple, list, dict))
_LARGE = 64 * 1024  # payload bytes from which a request is decoded in a worker
# reply bytes the loop's thread compresses at most: zlib takes 50 to 450 ms per
# MB (text to numbers); larger replies are compressed by a worker (zlib lets
# the interpreter lock go)
_COMPRESS_IN_LOOP = 128 * 1024


def _payload(serializer: Serializer, result: Any, large: bool) -> bytes:
    """``result`` encoded (``dumps_large`` if ``large``); SerializeError if it cannot be."""
    try:
        return serializer.dumps_large(result) if large else serializer.dumps(result)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # any other error, even a BaseException subclass
        raise errors.SerializeError(
            f"result of {type(result).__name__} could not be serialized with {serializer.name}: {exc}") from None


def _decode_call(msg: _wire.Message, serializer: Serializer, payload: bytes | bytearray | None = None) -> tuple:
    """(object id, method, vargs, kwargs) of an INVOKE; pure, so any thread may do it.

    ``payload`` is the decompressed payload if the caller has it already.
    """
    if serializer.name not in config.SERIALIZERS_ACCEPTED:
        raise errors.SerializeError(f"message used serializer that is not accepted: {msg.serializer_id}")
    corr = msg.annotations.get("CORR")
    if corr is not None and len(corr) != 16:
        raise ValueError("bytes is not a 16-char string")
    if msg.flags & _wire.FLAGS_KEEPSERIALIZED:
        return blob_call(msg)  # the payload stays as it is: the method gets it as a SerializedBlob
    if payload is None:
        payload = msg.payload(config.MAX_MESSAGE_SIZE)
    return serializer.loads_call(payload)


def _attach_traceback(exc: BaseException) -> Any:
    """Give ``exc`` its ``_pyroTraceback`` (unless it has one) and return it."""
    lines = getattr(exc, "_pyroTraceback", _MISSING)
    if lines is _MISSING:
        lines = _format_traceback(exc)
        try:
            exc._pyroTraceback = lines
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # an exception that refuses attributes still gets answered
            pass
    return lines


def _describe(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception cannot even say that."""
    try:
        return str(exc)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        return f"<{type(exc).__name__} whose str() failed>"


def _is_stream(result: Any) -> bool:
    return inspect.isgenerator(result) or (
        isinstance(result, collections.abc.Iterator) and not isinstance(result, (str, bytes, dict)))


def _run_batch(calls: list) -> list:
    results: list[Any] = []
    for func, args, kwargs in calls:
        try:
            results.append(func(*args, **(kwargs or {})))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            _attach_traceback(exc)
            results.append(ExceptionWrapper(exc))
            break
    return results


def _format_traceback(exc: BaseException) -> list[str]:
    try:
        return _traceback_lines(exc)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # e.g. a local whose repr() fails in a detailed traceback
        return [f"{type(exc).__name__} (its traceback could not be formatted)\n"]


def _traceback_lines(exc: BaseException) -> list[str]:
    if config.DETAILED_TRACEBACK:
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        frames = []
        tb = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            local_vars = ", ".join(f"{k}={v!r:.80}" for k, v in frame.f_locals.items() if not k.startswith("__"))
            frames.append(f"  locals in {frame.f_code.co_name}: {local_vars}\n")
            tb = tb.tb_next
        return lines + frames
    return traceback.format_exception(type(exc), exc, exc.__traceback__)
