"""``current_context``: facts about the call being served (or the calls being made).

Inside a served call: who called (``client``, ``client_sock_addr``), the
message's ``seq``, ``msg_flags``, ``serializer_id`` and ``annotations``; set
``response_annotations`` to add annotations to the reply. On the client side,
set ``correlation_id`` (a uuid.UUID) to send it with every call.

The values live in a ``contextvars.ContextVar``, not a thread-local: an
``async def`` method keeps seeing its own caller after an ``await``, while
other calls are dispatched on the same thread.
"""

from __future__ import annotations

import contextvars
import random
import uuid
from typing import Any

from .errors import PyroError


class _Facts:
    __slots__ = ("client", "client_sock_addr", "seq", "msg_flags", "serializer_id", "annotations",
                 "response_annotations", "correlation_bytes", "correlation_uuid")

    def __init__(self, client: Any = None, addr: Any = None, seq: int = 0, flags: int = 0, serializer_id: int = 0,
                 annotations: dict[str, bytes] | None = None, correlation: bytes | None = None) -> None:
        """The facts of a call served to ``client`` (None outside one); made in one step, once per call."""
        self.client = client
        self.client_sock_addr = addr
        self.seq = seq
        self.msg_flags = flags
        self.serializer_id = serializer_id
        self.annotations: dict[str, bytes] = {} if annotations is None else annotations
        self.response_annotations: dict[str, bytes] = {}
        self.correlation_bytes = correlation
        self.correlation_uuid: uuid.UUID | None = None


_facts: contextvars.ContextVar[_Facts] = contextvars.ContextVar("pyro_loops_call_context")


def _current() -> _Facts:
    facts = _facts.get(None)
    if facts is None:
        facts = _Facts()
        _facts.set(facts)
    return facts


class _CallContext:
    """Attribute access to the facts of the current call; see the module docstring."""

    def __getattr__(self, name: str) -> Any:
        if name == "correlation_id":
            facts = _current()
            if facts.correlation_bytes is not None:
                return uuid.UUID(bytes=facts.correlation_bytes)  # made on demand: rarely read
            if facts.correlation_uuid is None and facts.client is not None:
                # a served call whose client sent no CORR gets a fresh id, as in Pyro4 (unique, not secret)
                facts.correlation_uuid = uuid.UUID(bytes=random.randbytes(16), version=4)
            return facts.correlation_uuid
        try:
            return getattr(_current(), name)
        except AttributeError:
            raise AttributeError(f"current_context has no attribute '{name}'") from None

    def __setattr__(self, name: str, value: Any) -> None:
        facts = _current()
        if name == "correlation_id":
            facts.correlation_bytes, facts.correlation_uuid = None, value
        else:
            setattr(facts, name, value)

    def track_resource(self, resource: Any) -> None:
        """Have ``resource.close()`` called when the calling client's connection ends
        (weakly held, as in Pyro4)."""
        self._connection("track").tracked_resources.add(resource)

    def untrack_resource(self, resource: Any) -> None:
        """No longer close ``resource`` when the client's connection ends."""
        self._connection("untrack").tracked_resources.discard(resource)

    @property
    def tracked_resources(self) -> Any:
        """The resources tracked for the calling client's connection."""
        return self._connection("list tracked").tracked_resources

    def _connection(self, action: str) -> Any:
        client = _current().client
        if client is None:
            raise PyroError(f"cannot {action} resources outside a call from a client connection")
        return client

    def facts(self) -> _Facts:
        """The object holding the current call's facts (kept by deferred replies)."""
        return _current()


current_context = _CallContext()


def set_call_context(client: Any, addr: Any, seq: int, flags: int, serializer_id: int,
                     annotations: dict[str, bytes]) -> contextvars.Token:
    return _facts.set(_Facts(client, addr, seq, flags, serializer_id, annotations, annotations.get("CORR")))


def reset_call_context(token: contextvars.Token) -> None:
    try:
        _facts.reset(token)
    except ValueError:  # set in another context (a nested loop ran in between): leave it
        pass


def enter_call_context(facts: _Facts) -> contextvars.Token:
    """Make ``facts`` current again, e.g. while a coroutine's task is created."""
    return _facts.set(facts)
