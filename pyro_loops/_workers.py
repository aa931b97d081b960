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
from typing import Callable, Hashable

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


class JobQuota:
    """Worker jobs queued or running per owner (a connection), for back-pressure.

    Used from the loop thread only. An owner that reaches ``limit`` jobs is
    *full* until half of them have finished: the gap keeps a flooding client
    from flipping its read interest on and off with every job. ``limit`` 0
    means no bound.
    """

    __slots__ = ("_pending", "_full", "_told")

    def __init__(self) -> None:
        self._pending: dict[Hashable, int] = {}
        self._full: set[Hashable] = set()
        self._told: set[Hashable] = set()   # full at least once since it last had no jobs

    def started(self, owner: Hashable, limit: int) -> bool:
        """Count a job submitted for ``owner``. True if that made the owner full for the
        first time since it last had no jobs (the moment worth a log line)."""
        pending = self._pending[owner] = self._pending.get(owner, 0) + 1
        if limit and pending >= limit and owner not in self._full:
            self._full.add(owner)
            if owner not in self._told:
                self._told.add(owner)
                return True
        return False

    def finished(self, owner: Hashable, limit: int) -> bool:
        """Count a finished job of ``owner``; True if the owner stopped being full."""
        pending = self._pending.get(owner, 1) - 1
        if pending > 0:
            self._pending[owner] = pending
        else:
            self._pending.pop(owner, None)
            self._told.discard(owner)
        if owner in self._full and pending <= limit // 2:
            self._full.discard(owner)
            return True
        return False

    def is_full(self, owner: Hashable) -> bool:
        return owner in self._full
