"""The daemon's call lane: a common call served from one read to one send.

Most calls a daemon serves look alike: an established plaintext connection
with nothing else going on sends one small serpent INVOKE of a plain method
with scalar arguments, and the result is a scalar. ``CallLane.serve`` takes
such a call from the readable event to the sent reply in one function: one
``recv``, ``_fastcall.lane_request``, the method, ``_fastcall.lane_reply``,
one ``send``. Whether a connection may be served so is decided where its
state changes (``Connections.lane_ready``), not asked on every event.

Exactness is the rule: the method runs with the call context the general
path gives it, from the same frame (``run_call``), and from the first thing
that is not the common case on (the request is of another shape, the method
raises or returns something else, sets response annotations, or the call
took long enough to peek for a hangup) the general path in ``_calls`` takes
over with what is known so far. The method never runs twice.
"""

from __future__ import annotations

import inspect
import random
import time
import types
from typing import Any, Protocol

from . import _expose, _fastcall, _wire
from ._connection import ClientConnection
from ._connections import Connections
from ._expose import lane_method
from ._serializers import Serializer, get_serializer
from .configuration import config
from .constants import DAEMON_NAME
from .context import _Facts, _facts
from .hosting import READ


class Deferred(Exception):
    """Raised by a dispatch step whose reply is sent later (a coroutine awaited, a worker encoding)."""


class Raised:
    """What ``run_call`` returns for a call that raised: the exception, for the caller's error reply."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def run_call(call: Any, args: tuple) -> Any:
    """``call(*args)``, or ``Raised`` holding what it raised (KeyboardInterrupt and SystemExit go on up).

    Every served method runs from here, by the lane or the general path: a
    remote traceback starts at this frame, so it reads the same either way.
    """
    try:
        return call(*args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # any other error, even a BaseException subclass: the caller's to see
        return Raised(exc)


class LaneHost(Protocol):
    """What the lane needs of the daemon's call dispatch (``_calls.CallDispatcher``)."""

    servertype_set: str | None
    own_loop: bool
    dispatching: int

    def exception_reply(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer,
                        exc: BaseException) -> bytes:
        """The error reply for ``exc`` raised by the call of ``msg``."""

    def outcome_reply(self, conn: ClientConnection, msg: _wire.Message, serializer: Serializer, result: Any,
                      facts: _Facts) -> bytes:
        """The reply for what the call of ``msg`` returned; raises Deferred when it comes later."""

    def reply_after_call(self, conn: ClientConnection, data: bytes) -> None:
        """Send the reply of a call that ran in the loop's thread, the general way."""


_RECV_SIZE = 64 * 1024  # as the general path reads
_SERPENT = get_serializer(_fastcall.SERPENT_ID)
_NO_TARGET = (None, None, None, None)
_TARGETS_MAX = 1024  # call keys remembered per daemon: they come from clients
#: a call that ran in the loop for less than this many seconds since its
#: request was read had little time to see its client hang up: no peek (a
#: system call) after it. A hangup that close to the reply could beat the
#: peek anyway; the reply then goes out, as it would have.
HANGUP_CHECK_AFTER = 0.001
_ANNOTATING: dict[type, bool] = {}
_monotonic = time.monotonic
_random_bits = random.getrandbits
_MethodType = types.MethodType
_lane_request = _fastcall.lane_request
_lane_reply = _fastcall.lane_reply
_LANE_COST = _fastcall.LANE_COST
_SERPENT_ID = _fastcall.SERPENT_ID
_facts_set = _facts.set
_facts_reset = _facts.reset


def overrides_annotations(cls: type) -> bool:
    """Whether daemon class ``cls`` overrides ``annotations()``: the first
    definition (the Daemon's) adds nothing, so replies need not call it."""
    found = _ANNOTATING.get(cls)
    if found is None:
        first = next(base for base in reversed(cls.__mro__) if "annotations" in vars(base))
        found = _ANNOTATING[cls] = cls.annotations is not vars(first)["annotations"]
    return found


class CallLane:
    """The call lane of one daemon (see the module docstring).

    ``host`` is the daemon (its ``objectsById`` and class), ``connections``
    its socket side, ``calls`` its call dispatch, which finishes what the
    lane cannot.
    """

    def __init__(self, host: Any, connections: Connections, calls: LaneHost) -> None:
        self.host = host
        self.connections = connections
        self.calls = calls
        # the lane's targets by call key (see serve), valid for one _expose.generation
        self.targets: dict[bytes, tuple] = {}
        self.generation = _expose.generation

    def serve(self, conn: ClientConnection) -> bool:
        """Serve a readable event of ``conn``, which ``Connections.lane_ready`` holds and is not busy.

        Under settings the lane does not serve (the thread server,
        COMPRESSION, DETAILED_TRACEBACK, no serpent, a wakeup budget of one
        message) the event goes the general way at once. Otherwise one read:
        a common call in it is run and answered here, anything else goes to
        the protocol and the general path, from wherever it turned out not
        to be the common case. True when the lane did it all: nothing else
        to do, no bound or deadline moved, interest unchanged.
        """
        calls = self.calls
        config_ = config
        if (config_.COMPRESSION or config_.DETAILED_TRACEBACK or config_.MAX_BLOCKING_ENCODE < _LANE_COST
                or "serpent" not in config_.SERIALIZERS_ACCEPTED
                or config_.MAX_CALLS_PER_WAKEUP < 2 and self.connections.watcher is not None
                or calls.servertype_set != "multiplex" and (calls.servertype_set is not None or calls.own_loop)):
            self.connections.serve_ready(conn, READ)
            return False
        sock = conn.sock
        try:
            data = sock.recv(_RECV_SIZE)
        except OSError as exc:
            return self._failed_read(conn, exc)
        conn.last_active = _monotonic()
        request = _lane_request(data, conn.protocol.reader.max_message_size)
        if request is None:
            return self._decline(conn, data)
        seq, corr, key, vargs = request
        if self.generation != _expose.generation:
            self.forget()
        obj_id, name, obj, func = self.targets.get(key) or self._target(key)
        if obj is None:
            return self._decline(conn, data)
        if self.host.objectsById.get(obj_id) is not obj:
            return self._decline(conn, data, key)  # unregistered or replaced meanwhile
        method = getattr(obj, name)
        if type(method) is not _MethodType or method.__func__ is not func or method.__self__ is not obj:
            return self._decline(conn, data)  # the instance holds a method of its own under that name
        self.connections.lane_calls += 1
        # the call context the general path makes of this message
        facts = _Facts(conn, conn.addr, seq, 0, _SERPENT_ID, {} if corr is None else {"CORR": corr}, corr)
        conn.busy = True
        calls.dispatching += 1
        try:
            token = _facts_set(facts)
            try:
                outcome = run_call(method, vargs)
                if type(outcome) is Raised:  # answered while the call's context is still current, as in general
                    reply = calls.exception_reply(conn, self.message(conn, data, facts.annotations), _SERPENT,
                                                  outcome.exc)
            finally:
                try:
                    _facts_reset(token)
                except ValueError:  # set in another context (a nested loop ran in between): leave it
                    pass
            if type(outcome) is not Raised:
                # the reply carries the correlation id as the method left the context's annotations:
                # the request's, or one drawn now when it had none
                annotations = facts.annotations
                if corr is None:
                    if not annotations and facts.correlation_bytes is None:
                        corr = _random_bits(128).to_bytes(16, "little")  # as random.randbytes(16)
                elif facts.correlation_bytes is not corr or annotations.get("CORR") is not corr:
                    corr = None  # changed by the method: the general path writes what it left
                reply = None
                # a key the method gave the daemon signs its reply, which the general writer does
                if corr is not None and not facts.response_annotations and not conn.protocol.hmac_key:
                    reply = _lane_reply(seq, corr, outcome, config_.MAX_MESSAGE_SIZE)
                if reply is None:
                    reply = calls.outcome_reply(conn, self.message(conn, data, annotations), _SERPENT, outcome, facts)
        except Deferred:
            return False  # a coroutine runs on the host loop or a worker encodes: the reply comes later
        finally:
            calls.dispatching -= 1
        if conn.closed or conn.read_paused or _monotonic() - conn.last_active > HANGUP_CHECK_AFTER:
            return self._reply_later(conn, reply)
        conn.busy = False
        # a plain socket (the lane never serves TLS), and nothing to re-arm when the whole
        # reply went, which it nearly always does
        try:
            sent = sock.send(reply)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.connections.close_conn(conn, f"send failed: {exc}")
            return False
        if sent == len(reply):
            return True
        conn.out += memoryview(reply)[sent:]
        self.connections.after_send(conn)
        self.connections.process(conn, spent=1)
        return False

    def _failed_read(self, conn: ClientConnection, exc: OSError) -> bool:
        """What the general read does when ``recv`` raised ``exc``."""
        if isinstance(exc, (BlockingIOError, InterruptedError)):
            self.connections.set_interest(conn)
        else:
            self.connections.close_conn(conn, f"receive failed: {exc}")
        return False

    def _reply_later(self, conn: ClientConnection, reply: bytes) -> bool:
        """Send ``reply`` the general way: the connection closed or was read during the call,
        or the call took long enough that the client may have hung up meanwhile."""
        self.calls.reply_after_call(conn, reply)
        self.connections.process(conn, spent=1)
        return False

    def _decline(self, conn: ClientConnection, data: bytes, key: bytes | None = None) -> bool:
        """``data`` is no call for the lane (nothing, at end of stream): the protocol and the
        general path take it. ``key``: the call key of a target that is gone (unregistered or
        replaced meanwhile), decided afresh next time."""
        if key is not None:
            self.targets.pop(key, None)
        if data:
            conn.protocol.receive_data(data)
        else:
            self.connections.end_of_stream(conn)
        self.connections.process(conn)
        return False

    def _target(self, key: bytes) -> tuple:
        """Find out (and remember) the lane target of a call key: ``(object id, method name,
        object, function)``, or ``_NO_TARGET`` when the general path serves such calls."""
        target = _NO_TARGET
        names = _fastcall.lane_names(key)
        # lane replies carry no annotations but the correlation id
        if names is not None and not overrides_annotations(type(self.host)):
            obj_id, name = names
            obj = self.host.objectsById.get(obj_id)
            # the daemon's own object is left out: its stream methods move deadlines
            if obj is not None and obj_id != DAEMON_NAME and not inspect.isclass(obj):
                func = lane_method(type(obj), name)
                if func is not None:
                    target = (obj_id, name, obj, func)
        if len(self.targets) >= _TARGETS_MAX:
            self.targets.clear()
        self.targets[key] = target
        return target

    def forget(self) -> None:
        """Decide every lane target afresh (objects were registered or unregistered, classes changed)."""
        self.targets.clear()
        self.generation = _expose.generation

    @staticmethod
    def message(conn: ClientConnection, data: bytes, annotations: dict[str, bytes]) -> _wire.Message:
        """The message the general path would have made of ``data`` (which the lane accepted),
        sharing its annotations with the call context as that path's message does."""
        msg = _fastcall.unframe(data, conn.protocol.reader.max_message_size)
        assert msg is not None
        msg.annotations = annotations
        return msg
