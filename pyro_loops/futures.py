"""Pyro4's ``futures`` module: ``Future`` and ``FutureResult``, thread-based.

These keep Pyro4 programs running unchanged: an asynchronous proxy call
(``proxy._pyroAsync()``), an asynchronous batch and a ``Future`` each run in a
thread of their own and hand back a ``FutureResult`` that the caller may
block on. Code that lives in an event loop should not block on them; the loop
client (``pyro_loops.Client``, whose calls return a ``Call``) is the way
forward there.

Errors are never lost: an exception raised by the call, or by a function of
its ``then`` chain, becomes the result (reading ``value`` raises it) and is
handed to the ``iferror`` handler.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from ._serializers import ExceptionWrapper

__all__ = ["Future", "FutureResult", "_ExceptionWrapper"]

_log = logging.getLogger("pyro_loops.futures")

#: Pyro4's name for the wrapper that marks an exception as a result (batches and futures use it)
_ExceptionWrapper = ExceptionWrapper



class FutureResult:
    """The result of a call that runs in another thread; reading ``value`` waits for it.

    ``then(f, *args, **kwargs)`` chains a function: it gets the value so far
    as its first argument and its return value becomes the new value. It runs
    in the thread that produced the value, or at once in the caller's thread
    when the value is there already. ``iferror(handler)`` is called with the
    exception when the call (or a chained function) fails.
    """

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._lock = threading.RLock()
        self._chain: list = []
        self._value: Any = None
        self.exceptionhandler: Callable[[BaseException], Any] | None = None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever); True if the result is there."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        """Whether the result is there (reading ``value`` would not wait)."""
        return self._ready.is_set()

    def get_value(self) -> Any:
        """The result, waiting for it; raises the call's exception if it failed."""
        self._ready.wait()
        if isinstance(self._value, ExceptionWrapper):
            self._value.raiseIt()
        return self._value

    def set_value(self, value: Any) -> None:
        """Deliver the result (an ``_ExceptionWrapper`` for a failure): runs the chain, or the error handler."""
        with self._lock:
            chain, self._chain = self._chain, []
            self._value = self._run_chain(value, chain)
            self._ready.set()

    value = property(get_value, set_value, None, "The result; reading it waits until it is there.")

    def set_cancelled(self) -> None:
        """Deliver 'cancelled' as the result: reading ``value`` raises RuntimeError."""
        self.set_value(ExceptionWrapper(RuntimeError("future has been cancelled")))

    def then(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> "FutureResult":
        """Chain ``call(value, *args, **kwargs)``; returns self, so calls can be chained."""
        with self._lock:
            if self._ready.is_set():
                self._value = self._run_chain(self._value, [(call, args, kwargs)])
            else:
                self._chain.append((call, args, kwargs))
        return self

    def iferror(self, exceptionhandler: Callable[[BaseException], Any]) -> "FutureResult":
        """Call ``exceptionhandler(exception)`` if the call failed; returns self.

        Set after the failure arrived, it is called at once (Pyro4 would miss it).
        """
        with self._lock:
            self.exceptionhandler = exceptionhandler
            if self._ready.is_set() and isinstance(self._value, ExceptionWrapper):
                self._handle_error(self._value.exception)
        return self

    def _run_chain(self, value: Any, chain: list) -> Any:
        """Apply the chained calls to ``value``; a failure stops the chain and becomes the result."""
        for call, args, kwargs in chain:
            if isinstance(value, ExceptionWrapper):
                break
            try:
                value = call(value, *args, **kwargs)
            except Exception as exc:  # the chain's failure is the result, as the call's own would be
                value = ExceptionWrapper(exc)
        if isinstance(value, ExceptionWrapper) and not isinstance(self._value, ExceptionWrapper):
            self._handle_error(value.exception)
        return value

    def _handle_error(self, exception: BaseException) -> None:
        handler = self.exceptionhandler
        if handler is None:
            return  # as in Pyro4: the failure waits in .value for whoever asks
        try:
            handler(exception)
        except Exception:
            _log.exception("the iferror handler of a FutureResult failed")


class Future:
    """A function to run later in a thread of its own: ``Future(f)(*args)`` returns a ``FutureResult``.

    Before it is called it can be given a chain (``then``), an error handler
    (``iferror``), a ``delay`` before it starts, or be ``cancel``led (also
    while it waits out its delay). It runs once.
    """

    def __init__(self, somecallable: Callable[..., Any]) -> None:
        self.callable = somecallable
        self.chain: list = []
        self.exceptionhandler: Callable[[BaseException], Any] | None = None
        self.cancelled = False
        self.completed = False  # True once the function started (or the cancel was delivered)
        self._started = False
        self._wakeup = threading.Condition()
        self._start_at = 0.0
        self._delay = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> FutureResult:
        """Start it: returns at once with the ``FutureResult``. Raises RuntimeError if run or cancelled before."""
        if self.completed or self._started:
            raise RuntimeError("the future has already been evaluated")
        if self.cancelled:
            raise RuntimeError("the future has been cancelled")
        self._started = True
        with self._wakeup:
            self._start_at = time.monotonic() + self._delay
        result = FutureResult()
        result.exceptionhandler = self.exceptionhandler
        result._chain = list(self.chain)
        threading.Thread(target=self._run, args=(result, args, kwargs), daemon=True,
                         name=f"pyro_loops Future {getattr(self.callable, '__name__', '')}").start()
        return result

    def _run(self, result: FutureResult, args: tuple, kwargs: dict) -> None:
        with self._wakeup:
            while not self.cancelled and (remaining := self._start_at - time.monotonic()) > 0:
                self._wakeup.wait(remaining)
            self.completed = True
            if self.cancelled:
                result.set_cancelled()
                return
        try:
            value = self.callable(*args, **kwargs)
        except Exception as exc:
            value = ExceptionWrapper(exc)
        result.set_value(value)

    def delay(self, seconds: float) -> bool:
        """Start ``seconds`` from now (or from the call); False if it started already."""
        with self._wakeup:
            if self.completed:
                return False
            self._delay = seconds
            self._start_at = time.monotonic() + seconds
            self._wakeup.notify_all()
            return True

    def cancel(self) -> bool:
        """Keep it from running; False if it started already."""
        with self._wakeup:
            if self.completed:
                return False
            self.cancelled = True
            self._wakeup.notify_all()
            return True

    def then(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> "Future":
        """Chain ``call(value, *args, **kwargs)`` after the function; returns self."""
        if self._started:
            raise RuntimeError("the future has already been evaluated")
        self.chain.append((call, args, kwargs))
        return self

    def iferror(self, exceptionhandler: Callable[[BaseException], Any]) -> "Future":
        """Call ``exceptionhandler(exception)`` if the function or its chain fails; returns self."""
        self.exceptionhandler = exceptionhandler
        return self
