"""A bounded pool of daemon threads for calls that must not run in the loop.

Threads start lazily, up to ``size``; when all are busy, work queues rather
than being refused. The queue is bounded per client instead: ``JobQuota``
counts each connection's jobs so the daemon can stop reading a connection
whose quota is full. They are daemon threads, so a long call still running at
interpreter exit never keeps the process alive.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Generic, Hashable, TypeVar

log = logging.getLogger("pyro_loops")

_STOP = object()


class WorkerPool:
    def __init__(self, size: int, name: str = "pyro_loops-worker") -> None:
        self.size = max(1, size)
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job()`` in a worker thread. Jobs must handle their own errors."""
        if self._closed:
            raise RuntimeError("worker pool is closed")
        with self._lock:
            if self._idle == 0 and len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"{self.name}-{len(self._threads) + 1}")
                self._threads.append(thread)
                self._idle += 1
                thread.start()
            self._idle -= 1
        self._queue.put(job)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            try:
                job()
            except BaseException:  # a job that lets an error out must not kill the worker
                log.exception("unhandled error in worker job")
            finally:
                with self._lock:
                    self._idle += 1

    @property
    def threads(self) -> int:
        return len(self._threads)

    def close(self) -> None:
        """Let the threads finish their current job and end; does not wait for them."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)


_Owner = TypeVar("_Owner", bound=Hashable)


class JobQuota(Generic[_Owner]):
    """Worker jobs queued or running per owner (a connection), for back-pressure.

    Used from the loop thread only. An owner that reaches ``limit`` jobs is
    *full* until half of them have finished: the gap keeps a flooding client
    from flipping its read interest on and off with every job. The payload
    bytes of all jobs are bounded together too (``total_limit``): past it every
    owner with jobs pending is *held* until the total is back under half, so
    many connections each under ``limit`` cannot queue without end. A limit 0
    means no bound.
    """

    __slots__ = ("_pending", "_full", "_told", "_bytes", "_total", "_held")

    def __init__(self) -> None:
        self._pending: dict[_Owner, int] = {}
        self._full: set[_Owner] = set()
        self._told: set[_Owner] = set()   # full at least once since it last had no jobs
        self._bytes: dict[_Owner, int] = {}
        self._total = 0
        self._held: set[_Owner] = set()   # waiting for the total to come down

    def started(self, owner: _Owner, limit: int, size: int = 0, total_limit: int = 0) -> str | None:
        """Count a job of ``size`` payload bytes submitted for ``owner``. Returns the name
        of the bound that made the owner full or held just now ("count" the first time
        since it last had no jobs, or "total"): the moment worth a log line."""
        pending = self._pending[owner] = self._pending.get(owner, 0) + 1
        self._bytes[owner] = self._bytes.get(owner, 0) + size
        self._total += size
        if total_limit and self._total > total_limit and owner not in self._held:
            self._held.add(owner)
            return "total"
        if limit and pending >= limit and owner not in self._full:
            self._full.add(owner)
            if owner not in self._told:
                self._told.add(owner)
                return "count"
        return None

    def finished(self, owner: _Owner, limit: int, size: int = 0, total_limit: int = 0) -> list[_Owner]:
        """Count a finished job of ``owner``; returns the owners that stopped being full or held."""
        freed: list[_Owner] = []
        pending = self._pending.get(owner, 1) - 1
        self._total -= size
        if pending > 0:
            self._pending[owner] = pending
            self._bytes[owner] -= size
        else:
            self._pending.pop(owner, None)
            self._bytes.pop(owner, None)
            self._told.discard(owner)
            if owner in self._held:  # holds nothing any more
                self._held.discard(owner)
                freed.append(owner)
        if owner in self._full and pending <= limit // 2:
            self._full.discard(owner)
            freed.append(owner)
        if self._held and self._total <= total_limit // 2:
            freed.extend(self._held)
            self._held.clear()
        return [o for o in dict.fromkeys(freed) if not self.is_full(o)]

    def is_full(self, owner: _Owner) -> bool:
        return owner in self._full or owner in self._held
