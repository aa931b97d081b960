"""``Call``: the outcome of a loop proxy's call, available later in the loop's thread.

A loop proxy never waits: ``proxy.add(1, 2)`` returns a ``Call`` at once and
the client completes it when the reply arrives. Like an asyncio future (and
unlike ``concurrent.futures.Future``) nothing here blocks: ``result()`` on a
call still pending raises ``CallPendingError`` rather than waiting, because
waiting in the loop's thread would stop the very loop that brings the reply.

Everything runs in the loop's thread: done-callbacks are called there, and
``then``/``iferror`` chain further calls promise-style. Under asyncio a call
is awaitable, and cancelling the task that awaits it cancels the call.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from typing import Any, Callable, Generator

from . import errors
from ._ratelog import RateLimitedLog
from .hosting import report_error

log = logging.getLogger("pyro_loops")
#: Calls failed together (10,000 pending when a server dies or the client closes)
#: are collected together: their lines are bounded by LOG_REPEAT_LIMIT.
_unretrieved_log = RateLimitedLog(log)

_PENDING, _DONE, _CANCELLED = "pending", "done", "cancelled"


class _Running(threading.local):
    """The done-callbacks waiting to run in this thread, while some already run.

    A call completed inside a done-callback (each link of a ``then`` chain)
    has its callbacks queued here and run once the current one returns,
    instead of inside it: a chain thousands of links long (a poll written as
    ``fn`` returning ``proxy.next().then(fn)``) completes without growing the
    stack link by link into a RecursionError.

    The entry points a host loop calls (``Client.handle_event``) set ``queue``
    to None for their run and put it back after: a done-callback that runs a
    nested loop (a Qt modal dialog, a Tk ``wait_window``) must still see the
    calls completed meanwhile, not have their callbacks queued behind its own return.
    """

    queue: "collections.deque[tuple[Call, list[Callable[[Call], Any]]]] | None" = None
    #: an empty queue kept for the next outermost completion: not one allocated per call
    spare: "collections.deque[tuple[Call, list[Callable[[Call], Any]]]] | None" = None


#: this thread's callbacks waiting to run (see ``_Running``)
running_callbacks = _Running()


class CallPendingError(errors.PyroError, concurrent.futures.InvalidStateError):
    """``result()`` or ``exception()`` of a call that has not completed yet."""


class Call:
    """One remote call in flight; see the module docstring.

    ``describe`` names the call in messages ("add on PYRO:thing@..."). The
    client passes a ``(method, uri)`` pair instead, put into words only when a
    message needs it: not for each of the thousands of calls that succeed.
    """

    __slots__ = ("_describe", "_state", "_result", "_exception", "_callbacks", "_on_cancel", "_on_done",
                 "_retrieved", "_traceback")

    def __init__(self, describe: "str | tuple[str, Any]" = "call") -> None:
        self._describe = describe
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[Call], Any]] | None = None
        #: set by whoever can still undo the call (the client): called once on cancel()
        self._on_cancel: Callable[[Call], None] | None = None
        #: set by whoever keeps books on the call (the client): called once when it completes,
        #: however it does, before its done-callbacks and never deferred behind another callback
        self._on_done: Callable[[Call], None] | None = None
        self._retrieved = False
        self._traceback: Any = None

    @property
    def describe(self) -> str:
        """What the call is, for messages: "add on PYRO:thing@localhost:9090"."""
        describe = self._describe
        if not isinstance(describe, str):
            describe = self._describe = f"{describe[0]} on {describe[1]}"
        return describe

    def __repr__(self) -> str:
        return f"<pyro_loops.Call {self.describe} {self._state}>"

    # -- state --

    def done(self) -> bool:
        """True once the call has a result, an exception, or was cancelled."""
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def result(self) -> Any:
        """The call's result; raises its exception. Never waits: raises
        ``CallPendingError`` while the call is pending."""
        exc = self.exception()
        if exc is not None:
            raise exc.with_traceback(self._traceback)  # not growing with each raise, as asyncio does
        return self._result

    def exception(self) -> BaseException | None:
        """The call's exception (None if it succeeded); never waits."""
        if self._state == _PENDING:
            raise CallPendingError(f"{self.describe} has not completed yet: use add_done_callback() or "
                                   "then(), or await it under asyncio; result() never waits")
        if self._state == _CANCELLED:
            raise asyncio.CancelledError(f"{self.describe} was cancelled")
        self._retrieved = True
        return self._exception

    def cancel(self) -> bool:
        """Cancel the call; False if it had completed already.

        A call not yet sent is never sent. One already sent still runs on the
        server (the protocol has no way to stop it) and its reply is dropped.
        """
        if self._state != _PENDING:
            return False
        self._state = _CANCELLED
        undo, self._on_cancel = self._on_cancel, None
        if undo is not None:
            try:
                undo(self)
            except Exception as exc:
                report_error(exc, "cancelling " + self.describe)
        self._completed()
        return True

    # -- completion (the client's side) --

    def set_result(self, value: Any) -> None:
        if self._state is _PENDING:
            self._state, self._result, self._on_cancel = _DONE, value, None
            self._completed()

    def set_exception(self, exc: BaseException) -> None:
        if self._state is _PENDING:
            self._state, self._exception, self._on_cancel = _DONE, exc, None
            self._traceback = exc.__traceback__
            self._completed()

    def _completed(self) -> None:
        """The books first (``_on_done``), then the done-callbacks."""
        done = self._on_done
        if done is not None:
            self._on_done = None
            done(self)
        callbacks = self._callbacks
        if not callbacks:
            return
        self._callbacks = None
        running = running_callbacks
        queue = running.queue
        if queue is not None:  # inside another call's callback: run these when it returns
            queue.append((self, callbacks))
            return
        queue = running.spare or collections.deque()
        running.queue, running.spare = queue, None
        call = self
        try:
            while True:
                for callback in callbacks:
                    call._run_callback(callback)
                if not queue:
                    break
                call, callbacks = queue.popleft()
        finally:
            queue.clear()  # not empty only if a callback let KeyboardInterrupt through
            running.queue, running.spare = None, queue

    # -- consumers --

    def add_done_callback(self, fn: Callable[[Call], Any]) -> None:
        """Call ``fn(call)`` in the loop's thread when the call completes (at once if it has).

        Callbacks of a call completed inside a callback run right after that
        callback returns, not inside it (see ``_Running``).

        What ``fn`` raises goes to the error hook (``pyro_loops.set_error_hook``).
        """
        if self._state is _PENDING:
            if self._callbacks is None:
                self._callbacks = [fn]
            else:
                self._callbacks.append(fn)
            return
        self._run_callback(fn)

    def _run_callback(self, callback: Callable[[Call], Any]) -> None:
        try:
            callback(self)
        except Exception as exc:
            report_error(exc, f"done-callback of {self.describe}")

    def then(self, fn: Callable[..., Any], *args: Any) -> Call:
        """A new call completed with ``fn(result, *args)`` once this one succeeds.

        If ``fn`` returns a ``Call``, the new call follows it. If this call
        fails, the new one fails with the same exception. If ``fn`` raises, the
        exception goes to the error hook and the new call fails with it.
        """
        chained = Call(f"then({getattr(fn, '__name__', 'fn')}) of {self.describe}")

        def on_done(call: Call) -> None:
            copy_outcome(call, lambda value: _settle(chained, fn, value, *args), chained.set_exception,
                         chained.cancel)

        self.add_done_callback(on_done)
        return chained

    def iferror(self, fn: Callable[[BaseException], Any]) -> Call:
        """A new call completed with ``fn(exception)`` if this one fails,
        or with this call's result if it succeeds (promise-style ``catch``)."""
        chained = Call(f"iferror({getattr(fn, '__name__', 'fn')}) of {self.describe}")

        def on_done(call: Call) -> None:
            copy_outcome(call, chained.set_result, lambda exc: _settle(chained, fn, exc), chained.cancel)

        self.add_done_callback(on_done)
        return chained

    def __await__(self) -> Generator[Any, None, Any]:
        """``await call`` in a coroutine on the loop that hosts the client.

        Cancelling the awaiting task cancels the call.
        """
        if self._state is _PENDING:
            yield _Awaited(self, asyncio.get_running_loop())
        if self._exception is None and self._state is _DONE:
            return self._result  # result() without its checks, for the common case
        return self.result()

    def __del__(self) -> None:
        # As asyncio does for futures: an error nobody looked at must not vanish.
        if self._state == _DONE and self._exception is not None and not self._retrieved:
            try:
                _unretrieved_log.log(logging.ERROR, "call exception never retrieved",
                                     "exception of %s was never retrieved: %s: %s", self.describe,
                                     type(self._exception).__name__, self._exception)
            except Exception:
                pass


def _settle(chained: Call, fn: Callable[..., Any], *args: Any) -> None:
    """Complete ``chained`` with ``fn(*args)``, following it if it is a Call."""
    try:
        value = fn(*args)
    except Exception as exc:
        report_error(exc, chained.describe)
        chained._retrieved = True  # reported once, through the hook
        chained.set_exception(exc)
        return
    settle_with(value, chained.set_result, chained.set_exception, chained.cancel)


def settle_with(value: Any, set_result: Callable[[Any], Any], set_exception: Callable[[BaseException], Any],
                cancel: Callable[[], Any]) -> None:
    """Hand ``value`` to ``set_result``; if it is a ``Call``, its outcome once it completes."""
    if isinstance(value, Call):
        value.add_done_callback(lambda call: copy_outcome(call, set_result, set_exception, cancel))
    else:
        set_result(value)


def copy_outcome(call: Call, set_result: Callable[[Any], Any], set_exception: Callable[[BaseException], Any],
                 cancel: Callable[[], Any]) -> None:
    """Pass a completed call's result, exception or cancellation on (to a Call or a future)."""
    if call.cancelled():
        cancel()
        return
    exc = call.exception()
    if exc is None:
        set_result(call._result)
    else:
        set_exception(exc)


class _Awaited:
    """What the asyncio task awaiting a pending ``Call`` waits on.

    asyncio lets a task wait on any object that speaks its future protocol
    (``_asyncio_future_blocking``, ``get_loop``, ``add_done_callback``,
    ``cancel``); this one is that protocol over the call, with no
    ``asyncio.Future`` between them. The task resumes inside the loop event
    that completed the call, rather than being scheduled for the loop's next
    iteration as a Future's waiter is: one loop turn less per ``await``.
    It is scheduled instead where resuming at once would not be safe: while
    another task runs (the call completed inside it), outside the loop's
    thread, or for a cancellation (``asyncio.timeout`` must finish its own
    bookkeeping after ``task.cancel()`` before the task sees the error).
    """

    __slots__ = ("_call", "_loop", "_asyncio_future_blocking", "_fn", "_context")

    def __init__(self, call: Call, loop: asyncio.AbstractEventLoop) -> None:
        self._call = call
        self._loop = loop
        self._asyncio_future_blocking = True  # asyncio's mark of a future being waited on
        self._fn: Callable[[Any], Any] | None = None  # the waiting task's wakeup, and its context
        self._context: Any = None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def add_done_callback(self, fn: Callable[[Any], Any], *, context: Any = None) -> None:
        if self._fn is not None:  # not the task's one wakeup: one more waiter of the call, as itself
            _Awaited(self._call, self._loop).add_done_callback(fn, context=context)
            return
        self._fn, self._context = fn, context
        self._call.add_done_callback(self)  # the call calls us: no closure made per await

    def __call__(self, call: Call) -> None:
        """The call completed: wake the task."""
        loop, context = self._loop, self._context
        if (call._state is _DONE and context is not None and asyncio._get_running_loop() is loop
                and asyncio.current_task(loop) is None):
            context.run(self._fn, self)  # the task's own step: our result() is what it reads
        else:
            loop.call_soon(self._fn, self, context=context)

    def cancel(self, msg: Any = None) -> bool:
        return self._call.cancel()

    def done(self) -> bool:
        return self._call.done()

    def result(self) -> Any:
        call = self._call
        if call._exception is None and call._state is _DONE:
            return call._result  # the common case, without result()'s checks
        return call.result()
