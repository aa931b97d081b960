"""A bounded pool of daemon threads for calls that must not run in the loop.

Threads start lazily, up to ``size``; when all are busy, work queues rather
than being refused. They are daemon threads, so a long call still running at
interpreter exit never keeps the process alive.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

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
