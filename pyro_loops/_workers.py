"""A bounded pool of daemon threads for calls that must not run in the loop.

Threads start lazily, up to ``size``; when all are busy, work queues rather
than being refused. The queue is bounded per client instead: ``JobQuota``
counts each connection's jobs so the daemon can stop reading a connection
whose quota is full. They are daemon threads, so a long call still running at
interpreter exit never keeps the process alive.

A job may name the connection it serves (``affinity``): it then runs in the
thread that ran that connection's previous job whenever that thread is idle
or finishing it. Pyro4's thread server gives each connection a thread of its
own; a client that waits for each reply sees the same here (its calls run in
one thread, so thread-locals and thread names behave as on Pyro4), while a
connection holds no thread between calls, so more connections than threads
can be served.

When every thread is busy a job waits in the pool's backlog; the first job
that has to wait after the backlog was empty logs a line naming
THREADPOOL_SIZE, rate-limited (a pool that is too small for its load, or
calls that wait on calls into their own daemon, show up there). The backlog
needs no bound of its own: every connection has at most one call in it (its
calls run one after another) plus its oneway jobs, which ``JobQuota`` bounds.

A thread idle for THREADPOOL_IDLE_TIMEOUT seconds ends while more than
THREADPOOL_SIZE_MIN threads are left, so a burst's threads do not outlive it.
Pyro4 4.82 has no such time: its worker ends the moment it finishes a job
while THREADPOOL_SIZE_MIN others are idle (0 here). A worker here carries a
connection's calls one after another, so it waits a while before ending and
the next call of a client calling at a steady pace finds it. Only an idle
thread ends (in the idle list with an empty queue, checked under the lock
that hands out jobs), and a thread is idle only while the backlog is empty:
no job is left waiting and none is lost.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import queue
import threading
import weakref
from typing import Any, Callable, Generic, Hashable, Iterator, TypeVar

from ._ratelog import RateLimitedLog
from .configuration import config
from .errors import PyroError

log = logging.getLogger("pyro_loops")

_STOP = object()
_local = threading.local()  # .pool: the pool whose worker the thread is


def current_pool() -> WorkerPool | None:
    """The pool whose worker runs the calling thread, or None."""
    return getattr(_local, "pool", None)


class _Worker:
    """One pool thread with a queue of its own (jobs are handed to a chosen thread)."""

    __slots__ = ("thread", "jobs", "key")

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.key: object | None = None  # the affinity of the job it runs (None: idle or unkeyed)
        self.thread: threading.Thread | None = None


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    return value


def checked_size(size: int) -> int:
    """``size`` if it can bound a pool (THREADPOOL_SIZE) together with the pool's other
    items; a ValueError naming the item that cannot. Pyro4's thread server refuses the
    same when it is made: a size or minimum under 1 (a pool of no threads would never
    answer a call), a THREADPOOL_SIZE_MIN above the size, and here a negative or
    non-numeric THREADPOOL_IDLE_TIMEOUT."""
    _whole("THREADPOOL_SIZE", size)
    minimum = _whole("THREADPOOL_SIZE_MIN", config.THREADPOOL_SIZE_MIN)
    if minimum > size:
        raise ValueError(f"THREADPOOL_SIZE_MIN ({minimum}) must not be above THREADPOOL_SIZE ({size})")
    _idle_timeout()
    return size


def _idle_timeout() -> float:
    """THREADPOOL_IDLE_TIMEOUT as seconds; a ValueError naming it if it is no such number."""
    idle = config.THREADPOOL_IDLE_TIMEOUT
    if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not idle >= 0:
        raise ValueError(f"THREADPOOL_IDLE_TIMEOUT must be a number of seconds, 0 or more, not {idle!r}")
    return float(idle)


class WorkerPool:
    """``needs_worker(uri)`` says whether a call to ``uri`` is run by this pool (a call into
    the pool's own daemon under the thread server); see ``waiting_on``.

    THREADPOOL_SIZE_MIN threads (at most ``size``) stay once started; more end after
    THREADPOOL_IDLE_TIMEOUT seconds idle, both read when the pool is made. Threads
    still start on demand: a daemon whose calls all run in its loop starts none."""

    def __init__(self, size: int, name: str = "pyro_loops-worker",
                 needs_worker: Callable[[Any], bool] | None = None) -> None:
        self.size = _whole("THREADPOOL_SIZE", size)
        self.min_size = min(size, _whole("THREADPOOL_SIZE_MIN", config.THREADPOOL_SIZE_MIN))
        # checked again here: the daemon checked it when made, and it may have changed since
        self.idle_timeout = _idle_timeout()
        self.name = name
        self._numbers = itertools.count(1)  # thread names stay unique as threads end and start
        self.needs_worker = needs_worker
        self._nested = 0  # workers blocked in a call that needs a worker of this pool
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._backlog: collections.deque = collections.deque()  # (affinity, job) while every thread is busy
        self._last: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # affinity -> its last worker
        self._lock = threading.Lock()
        self._closed = False
        self._log = RateLimitedLog(log)

    def submit(self, job: Callable[[], None], affinity: object | None = None) -> None:
        """Run ``job()`` in a worker thread. Jobs must handle their own errors.

        With ``affinity`` (weakly referenced), the job goes to the thread that
        ran the previous job of the same affinity if that thread is idle or
        busy with that affinity (the caller runs one job of an affinity at a
        time, so the thread is finishing it); else to any idle thread.
        """
        if self._closed:
            raise RuntimeError("worker pool is closed")
        first_to_wait = False
        with self._lock:
            worker = self._last.get(affinity) if affinity is not None else None
            if worker is not None and worker in self._idle:
                self._idle.remove(worker)
            elif worker is None or worker.key is not affinity:
                if self._idle:
                    worker = self._idle.pop()
                elif len(self._workers) < self.size:
                    worker = self._start()
                else:
                    self._backlog.append((affinity, job))
                    first_to_wait = len(self._backlog) == 1
                    worker = None  # (the affinity's last worker, busy with another connection)
            if worker is not None:
                self._assign(worker, affinity, job)
        if first_to_wait:
            self._log.log(logging.WARNING, "THREADPOOL_SIZE",
                          "all %d worker threads (THREADPOOL_SIZE) are busy: calls wait until one is free "
                          "(raise THREADPOOL_SIZE if this recurs; a call into its own daemon from every "
                          "worker never frees one)", self.size)

    @contextlib.contextmanager
    def waiting_on(self, uri: Any) -> Iterator[None]:
        """Around a call that a worker of this pool makes to ``uri`` and waits for.

        A call into the pool's own daemon needs a worker of its own; were every
        worker waiting for such a call, none would ever be answered (Pyro4's
        thread server refuses the connection such a call makes when its pool is
        full). The call that would make it so raises PyroError naming
        THREADPOOL_SIZE instead; nothing has been sent then.
        """
        if self.needs_worker is None or not self.needs_worker(uri):
            yield
            return
        with self._lock:
            if self._nested + 1 >= self.size:
                raise PyroError(
                    f"calling {uri} from a worker of its own daemon would deadlock: all THREADPOOL_SIZE "
                    f"({self.size}) workers would wait for calls that need a worker. Raise THREADPOOL_SIZE, "
                    "or call the object directly")
            self._nested += 1
        try:
            yield
        finally:
            with self._lock:
                self._nested -= 1

    def _start(self) -> _Worker:
        worker = _Worker()
        worker.thread = threading.Thread(target=self._work, args=(worker,), daemon=True,
                                         name=f"{self.name}-{next(self._numbers)}")
        self._workers.append(worker)
        worker.thread.start()
        return worker

    def _assign(self, worker: _Worker, affinity: object | None, job: Callable[[], None]) -> None:
        """Under the lock: hand ``job`` to ``worker``."""
        worker.key = affinity
        if affinity is not None:
            self._last[affinity] = worker
        worker.jobs.put(job)

    def _work(self, worker: _Worker) -> None:
        _local.pool = self
        timeout: float | None = self.idle_timeout  # None once this idle spell may not end the thread
        while True:
            try:
                job = worker.jobs.get(timeout=timeout)
            except queue.Empty:
                if self._retire(worker):
                    return
                timeout = None  # at the minimum: wait for work without polling
                continue
            timeout = self.idle_timeout
            if job is _STOP:
                self._run_backlog()
                return
            try:
                job()
            except BaseException:  # a job that lets an error out must not kill the worker
                log.exception("unhandled error in worker job")
            finally:
                job = None  # not held while waiting for the next: it may hold a large request
                with self._lock:
                    if worker.jobs.empty():
                        if self._backlog:
                            self._assign(worker, *self._backlog.popleft())
                        else:
                            worker.key = None
                            self._idle.append(worker)

    def _retire(self, worker: _Worker) -> bool:
        """Whether ``worker``, idle for ``idle_timeout``, ends now: if it is still idle (a job
        handed to it meanwhile is in its queue) and more than ``min_size`` threads are left."""
        with self._lock:
            if (self._closed or worker not in self._idle or not worker.jobs.empty()
                    or len(self._workers) <= self.min_size):
                return False
            self._idle.remove(worker)
            self._workers.remove(worker)
            return True

    def _run_backlog(self) -> None:
        """At close: jobs still waiting for a thread run all the same (they answer their callers)."""
        while True:
            with self._lock:
                if not self._backlog:
                    return
                _, job = self._backlog.popleft()
            try:
                job()
            except BaseException:
                log.exception("unhandled error in worker job")

    @property
    def threads(self) -> int:
        return len(self._workers)

    def close(self) -> None:
        """Let the threads finish their current job and end; does not wait for them."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for worker in self._workers:
                worker.jobs.put(_STOP)


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
