"""``current_context``: per-thread facts about the call being served or made."""

from __future__ import annotations

import threading
import uuid
from typing import Any


class _CallContext(threading.local):
    """Inside a served call: who called (``client``, ``client_sock_addr``), the
    message's ``seq``, ``msg_flags``, ``serializer_id`` and ``annotations``; set
    ``response_annotations`` to add annotations to the reply. On the client
    side, set ``correlation_id`` (a uuid.UUID) to send it with every call."""

    def __init__(self) -> None:
        self.client: Any = None
        self.client_sock_addr: Any = None
        self.seq = 0
        self.msg_flags = 0
        self.serializer_id = 0
        self.annotations: dict[str, bytes] = {}
        self.response_annotations: dict[str, bytes] = {}
        self.correlation_bytes: bytes | None = None
        self._correlation_id: uuid.UUID | None = None

    @property
    def correlation_id(self) -> uuid.UUID | None:
        # made on demand: most calls never look at it
        if self.correlation_bytes is not None:
            return uuid.UUID(bytes=self.correlation_bytes)
        return self._correlation_id

    @correlation_id.setter
    def correlation_id(self, value: uuid.UUID | None) -> None:
        self.correlation_bytes = None
        self._correlation_id = value


current_context = _CallContext()
