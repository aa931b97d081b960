"""A keyed min-heap: the daemon's timers, and its "largest buffer" rankings.

The daemon keeps one host deadline, but many things are due at different
times: each silent connection's handshake deadline, each half-received
message, each item stream's lifetime and lingering. Scanning them all on every
event costs O(n) per event; this heap costs O(log n) per change and lets the
daemon read the earliest due time in O(1).

Each key has at most one live entry. Re-scheduling or cancelling a key leaves
its old entry in the heap, marked dead, and skipped when it surfaces; the heap
is rebuilt once dead entries outnumber live ones, so memory stays
proportional to the live keys however often they change.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Generic, Hashable, Iterator, TypeVar

_COMPACT_SLACK = 64  # dead entries tolerated beyond the live count before a rebuild

K = TypeVar("K", bound=Hashable)


class KeyedHeap(Generic[K]):
    """Keys ordered by a numeric priority (a ``time.monotonic()`` deadline, a size).

    Not thread-safe: callers that share one between threads hold a lock.
    """

    __slots__ = ("_heap", "_live", "_order")

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []          # [priority, tie-breaker, key, alive]
        self._live: dict[K, list[Any]] = {}
        self._order = itertools.count()           # keys themselves are never compared

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: K) -> bool:
        return key in self._live

    def get(self, key: K, default: float = 0) -> float:
        """The priority of ``key``, or ``default`` if it is not there."""
        entry = self._live.get(key)
        return default if entry is None else entry[0]

    def set(self, key: K, priority: float) -> None:
        """Give ``key`` this priority, replacing any it had."""
        self.discard(key)
        entry = [priority, next(self._order), key, True]
        self._live[key] = entry
        heapq.heappush(self._heap, entry)

    def discard(self, key: K) -> None:
        """Forget ``key``; nothing happens if it is not there."""
        entry = self._live.pop(key, None)
        if entry is None:
            return
        entry[2] = None   # a dead entry must not keep its key (a closed connection and its buffers) alive
        entry[3] = False
        if len(self._heap) > 2 * len(self._live) + _COMPACT_SLACK:
            self._heap = [e for e in self._heap if e[3]]
            heapq.heapify(self._heap)

    def first(self) -> tuple[K, float] | None:
        """The key with the lowest priority and that priority, or None if empty."""
        heap = self._heap
        while heap and not heap[0][3]:
            heapq.heappop(heap)
        return (heap[0][2], heap[0][0]) if heap else None

    def pop_due(self, limit: float) -> Iterator[K]:
        """Remove and yield, lowest first, each key whose priority is ``<= limit``."""
        while (first := self.first()) is not None and first[1] <= limit:
            self.discard(first[0])
            yield first[0]


class SizeRanking(Generic[K]):
    """Bytes each key holds, their ``total``, and which key holds the most.

    For bounds over all connections together (MAX_BUFFERED_INPUT and
    MAX_BUFFERED_OUTPUT): past the bound, the daemon closes the largest. Keys
    holding nothing are not stored, so the common case (a reply sent at once)
    costs one dictionary lookup.
    """

    __slots__ = ("_heap", "total")

    def __init__(self) -> None:
        self._heap: KeyedHeap[K] = KeyedHeap()   # sizes negated: the largest comes first
        self.total = 0

    def count(self, key: K, size: int) -> None:
        """``key`` now holds ``size`` bytes (0 forgets it)."""
        old = -int(self._heap.get(key))
        if size != old:
            self.total += size - old
            if size:
                self._heap.set(key, -size)
            else:
                self._heap.discard(key)

    def largest(self) -> tuple[K, int] | None:
        """The key holding the most and its size, or None if none holds anything."""
        first = self._heap.first()
        return None if first is None else (first[0], -int(first[1]))
