"""The daemon's open item streams: iterators a call returned, read item by item.

A call that returns an iterator gets a stream id instead of a value; the
client then asks for items with ``get_next_stream_item``. A stream lives until
it is exhausted or closed, until ``ITER_STREAM_LIFETIME`` after it was opened,
or until ``ITER_STREAM_LINGER`` after its connection closed (a reconnecting
client may pick it up meanwhile), as in Pyro4. Both deadlines sit in a heap,
so the daemon learns the next one in O(1) and no event walks every stream; a
connection holds at most ``ITER_STREAMS_MAX_PER_CONNECTION`` of them, and the
daemon at most ``ITER_STREAMS_MAX`` in all (Pyro4 has neither bound). At that
total a new stream takes the place of the one that has lingered longest: a
client that left is less likely to come back for its stream than a connected
one is to read the new one. With none lingering, the new stream is refused.

Calls run in the loop or in worker threads, so the registry takes a lock; it
never holds it while an iterator runs (user code).
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Hashable, Iterator

from . import errors
from ._deadlines import KeyedHeap
from ._ratelog import RateLimitedLog
from .configuration import config

_LIFETIME = "lifetime"
_LINGER = "linger"

_log = RateLimitedLog(logging.getLogger("pyro_loops"))  # clients can hit the bound again and again


@dataclass(eq=False)
class ItemStream:
    """One open stream. ``owner`` is the connection reading it, None while it lingers."""
    iterator: Iterator[Any]
    owner: Hashable | None
    created: float


class StreamRegistry:
    """Open item streams by id, with their deadlines and a count per connection."""

    def __init__(self) -> None:
        self._streams: dict[str, ItemStream] = {}
        self._by_owner: dict[Hashable, set[str]] = {}
        self._lingering: dict[str, None] = {}   # ids of streams without owner, longest lingering first
        self._deadlines: KeyedHeap[tuple[str, str]] = KeyedHeap()   # (stream id, _LIFETIME or _LINGER) -> when
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self._streams

    def open(self, iterator: Iterator[Any], owner: Hashable, now: float) -> str:
        """Register ``iterator`` for ``owner`` and return its new stream id.

        Raises PyroError when ``owner`` already has ITER_STREAMS_MAX_PER_CONNECTION
        open streams, or the daemon ITER_STREAMS_MAX with none lingering (the
        iterator is not kept). At ITER_STREAMS_MAX with some lingering, the one
        that has lingered longest ends to make room.
        """
        limit = config.ITER_STREAMS_MAX_PER_CONNECTION
        total = config.ITER_STREAMS_MAX
        stream_id = str(uuid.uuid4())
        with self._lock:
            owned = self._by_owner.get(owner, set())
            if limit and len(owned) >= limit:
                raise errors.PyroError(
                    f"too many open item streams on this connection: ITER_STREAMS_MAX_PER_CONNECTION "
                    f"({limit}) reached; exhaust or close some streams first")
            if total and len(self._streams) >= total:
                self._make_room(total)
            self._by_owner[owner] = owned
            owned.add(stream_id)
            self._streams[stream_id] = ItemStream(iterator, owner, now)
            if config.ITER_STREAM_LIFETIME > 0:
                self._deadlines.set((stream_id, _LIFETIME), now + config.ITER_STREAM_LIFETIME)
        return stream_id

    def next_item(self, stream_id: str, reader: Hashable | None) -> Any:
        """The next item of the stream; ``reader`` (if known) becomes its owner.

        Raises PyroError for an unknown (ended or expired) stream, StopIteration
        at its end, and whatever the iterator raises; the last two end it.
        """
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None:
                raise errors.PyroError("item stream terminated")
            if reader is not None and stream.owner is not reader:
                self._set_owner(stream_id, stream, reader)
        try:
            return next(stream.iterator)
        except StopIteration:
            self.close(stream_id)
            raise StopIteration() from None
        except BaseException:
            self.close(stream_id)
            raise

    def close(self, stream_id: str) -> None:
        """Forget the stream; nothing happens if it is already gone."""
        with self._lock:
            self._forget(stream_id)

    def orphan(self, owner: Hashable, now: float) -> None:
        """``owner`` disconnected: its streams linger for ITER_STREAM_LINGER, or end now if that is 0."""
        with self._lock:
            owned = list(self._by_owner.get(owner, ()))
        for stream_id in owned:
            if config.ITER_STREAM_LINGER > 0:
                with self._lock:
                    stream = self._streams.get(stream_id)
                    if stream is not None and stream.owner is owner:
                        self._set_owner(stream_id, stream, None)
                        self._deadlines.set((stream_id, _LINGER), now + config.ITER_STREAM_LINGER)
                        self._lingering[stream_id] = None
            else:
                self.close(stream_id)

    def expire(self, now: float) -> None:
        """End every stream whose lifetime or lingering time is over."""
        with self._lock:
            due = [stream_id for stream_id, _ in self._deadlines.pop_due(now)]
        for stream_id in due:
            self.close(stream_id)

    def next_deadline(self) -> float | None:
        """When ``expire`` next has work, or None."""
        with self._lock:
            first = self._deadlines.first()
        return None if first is None else first[1]

    def clear(self) -> None:
        with self._lock:
            self._streams.clear()
            self._by_owner.clear()
            self._lingering.clear()
            self._deadlines = KeyedHeap()

    def _make_room(self, total: int) -> None:
        """ITER_STREAMS_MAX reached (lock held): end the stream that has lingered longest, or refuse."""
        if not self._lingering:
            _log.log(logging.WARNING, "streams refused", "item stream refused: ITER_STREAMS_MAX (%d) open "
                     "streams in this daemon, none of them lingering", total)
            raise errors.PyroError(
                f"too many open item streams in this daemon: ITER_STREAMS_MAX ({total}) reached over all "
                "connections; try again once some are exhausted or closed")
        oldest = next(iter(self._lingering))
        self._forget(oldest)
        _log.log(logging.INFO, "lingering stream ended", "item stream %s ended early to make room for a new "
                 "one: ITER_STREAMS_MAX (%d) reached; it had lingered since its client disconnected",
                 oldest, total)

    def _forget(self, stream_id: str) -> None:
        """Drop the stream, its deadlines and its place in the counts (lock held); nothing if it is gone."""
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._set_owner(stream_id, stream, None)
            self._lingering.pop(stream_id, None)
            self._deadlines.discard((stream_id, _LINGER))
            self._deadlines.discard((stream_id, _LIFETIME))

    def _set_owner(self, stream_id: str, stream: ItemStream, owner: Hashable | None) -> None:
        """Move the stream to ``owner``'s count (lock held); a new owner ends its lingering."""
        if stream.owner is not None:
            owned = self._by_owner.get(stream.owner)
            if owned is not None:
                owned.discard(stream_id)
                if not owned:
                    del self._by_owner[stream.owner]
        stream.owner = owner
        if owner is not None:
            self._by_owner.setdefault(owner, set()).add(stream_id)
            self._deadlines.discard((stream_id, _LINGER))
            self._lingering.pop(stream_id, None)
