"""What the Qt and Tk client windows share: the calls behind their buttons and
the tour, written once against a small ``View`` that each window implements
with its own widgets and timers.

Everything here runs in the GUI thread. A button handler makes a loop call
and returns at once; the reply arrives later through ``then``/``iferror`` in
the same thread, so the handlers may touch widgets and the window never
freezes. The service (``demos/asyncio_service.py``) calls back into the
window's own daemon while the window's call to it is still pending: the
``Listener`` runs in the GUI thread too, because the daemon is served by the
same loop.

Not a demo itself: the client demos import it from their own directory.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Protocol

import pyro_loops

SLOW_SECONDS = 3.0    # the slow call's length: long enough to watch the bar move
TICK_MS = 50          # how often the bar moves while the slow call is pending
QUICK_AFTER_MS = 700  # when the tour clicks the quick button, the slow call still pending
STREAM_COUNT = 5


class View(Protocol):
    """What a client window offers the panel; every method runs in the GUI thread."""

    def show_result(self, text: str) -> None:
        """Add a line to the results list."""

    def show_pushed(self, text: str) -> None:
        """Add a line to the list of notes the service pushed to us."""

    def set_progress(self, percent: int) -> int:
        """Set the progress bar; returns the value the widget now shows."""

    def start_ticking(self, fn: Callable[[], None], interval_ms: int) -> None:
        """Call ``fn`` every ``interval_ms`` from the GUI loop until ``stop_ticking``."""

    def stop_ticking(self) -> None:
        """Stop what ``start_ticking`` started."""

    def later(self, delay_ms: int, fn: Callable[[], None]) -> None:
        """Call ``fn`` once, ``delay_ms`` from now, from the GUI loop."""

    def state(self) -> dict[str, Any]:
        """What the window shows, read back from its widgets (results, pushed, progress)."""


class Listener:
    """Our object the service calls back. Served by the window's daemon on the
    GUI loop, so ``notify`` runs in the GUI thread and may touch widgets."""

    def __init__(self, on_note: Callable[[str], None]) -> None:
        self.on_note = on_note

    @pyro_loops.expose
    @pyro_loops.callback   # an error here is reported in this program too, not only sent back
    def notify(self, text: str) -> None:
        self.on_note(text)


class Panel:
    """The calls behind the buttons: quick, slow (with pushed notes), stream, failing.

    ``service`` carries the quick calls; the slow call goes through a second
    loop proxy (a second connection), because one proxy's calls are answered
    in order and a quick call must not wait behind the slow one.
    """

    def __init__(self, client: pyro_loops.Client, daemon: pyro_loops.Daemon, uri: str, view: View,
                 timeout: float) -> None:
        self.view = view
        self.service = client.proxy(uri)
        self.slow_service = client.proxy(uri)
        for proxy in (self.service, self.slow_service):
            proxy._pyroTimeout = timeout + SLOW_SECONDS
        self.listener = client.proxy(daemon.register(Listener(self.pushed)))
        self.slow_call: pyro_loops.Call | None = None
        self.slow_began = 0.0
        self.progress_seen: list[int] = []   # the bar's value at each tick while the slow call was pending

    # -- what the buttons do --

    def quick(self) -> pyro_loops.Call:
        return self._shown("increment(1)", self.service.increment(1))

    def slow(self, seconds: float = SLOW_SECONDS) -> pyro_loops.Call:
        if self.slow_call is not None:
            self.view.show_result("work() is still running: its answer comes first")
            return self.slow_call
        self.progress_seen = []
        self.slow_began = time.monotonic()
        self.view.set_progress(0)
        self.view.start_ticking(lambda: self._tick(seconds), TICK_MS)
        call = self.slow_service.work(seconds, self.listener)
        call.add_done_callback(self._slow_done)
        self.slow_call = self._shown(f"work({seconds:g})", call)
        return self.slow_call

    def stream(self, count: int = STREAM_COUNT) -> pyro_loops.Call:
        items: list[Any] = []

        def each(item: Any) -> None:
            items.append(item)
            self.view.show_result(f"countdown({count}) item: {item!r}")

        streamed = self.service.countdown(count).then(lambda stream: stream.for_each(each).then(lambda _: items))
        return self._shown(f"countdown({count}) streamed", streamed)

    def failing(self) -> pyro_loops.Call:
        return self._shown("increment('ten')", self.service.increment("ten"))

    # -- what the service and the timers do --

    def pushed(self, text: str) -> None:
        self.view.show_pushed(text)

    def _tick(self, seconds: float) -> None:
        elapsed = time.monotonic() - self.slow_began
        self.progress_seen.append(self.view.set_progress(min(99, int(100 * elapsed / seconds))))

    def _slow_done(self, _call: pyro_loops.Call) -> None:
        self.view.stop_ticking()
        self.view.set_progress(100)
        self.slow_call = None

    def _shown(self, what: str, call: pyro_loops.Call) -> pyro_loops.Call:
        """Put the call's outcome in the results list (and on stdout); the returned call has it."""
        def answered(value: Any) -> Any:
            self._show(f"{what} -> {value!r}")
            return value

        def failed(exc: BaseException) -> BaseException:
            self._show(f"{what} failed: {type(exc).__name__}: {exc}")
            return exc

        return call.then(answered).iferror(failed)

    def _show(self, text: str) -> None:
        print(text, flush=True)
        self.view.show_result(text)

    # -- the tour --

    def tour(self, finished: Callable[[dict[str, Any]], None]) -> None:
        """Press the buttons in turn: the slow call, a quick call while it is pending,
        then the stream and the failing call; ``finished(summary)`` at the end."""
        quick_answers: list[bool] = []   # for each quick answer: was the slow call still pending?
        slow = self.slow()

        def quick_meanwhile() -> None:
            self.quick().add_done_callback(lambda _: quick_answers.append(not slow.done()))

        self.view.later(QUICK_AFTER_MS, quick_meanwhile)

        def summarize(_call: pyro_loops.Call) -> None:
            state = self.view.state()
            finished({
                "progress_seen": self.progress_seen,
                "quick_answered_while_slow_pending": quick_answers == [True],
                **state,
            })

        slow.then(lambda _: self.stream()).then(lambda _: self.failing()).add_done_callback(summarize)


def tour_passed(summary: dict[str, Any]) -> bool:
    """What the tour must show: the bar moved while the slow call was pending,
    notes were pushed to us meanwhile, the quick call was not held up."""
    moved = len(set(summary["progress_seen"])) >= 3
    return moved and len(summary["pushed"]) > 0 and summary["quick_answered_while_slow_pending"]
