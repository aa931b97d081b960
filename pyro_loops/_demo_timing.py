"""What the demo clients measure: a timed burst of small calls, and a long call
with quick calls made alongside it.

Shared by ``python -m pyro_loops.demo`` (its client half) and
``demos/client.py``, so both measure and word their figures the same way.
Client-side only: nothing here touches a loop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Burst:
    """The latencies of a burst's calls, sorted, in seconds."""

    latencies: tuple[float, ...]

    @property
    def seconds(self) -> float:
        return sum(self.latencies)

    def percentile(self, fraction: float) -> float:
        index = min(len(self.latencies) - 1, round(fraction * (len(self.latencies) - 1)))
        return self.latencies[index]

    def summary(self) -> dict[str, float]:
        """The figures, as plain numbers (the demo's client sends them as JSON)."""
        return {"burst": len(self.latencies), "burst_seconds": self.seconds,
                "calls_per_second": len(self.latencies) / self.seconds,
                "p50_ms": self.percentile(0.5) * 1000, "p99_ms": self.percentile(0.99) * 1000}


def describe_burst(summary: dict[str, float], calls: str = "calls") -> str:
    """One line for a burst's ``summary()``: ``calls`` says what was called ("calls of ping()")."""
    return (f"burst: {summary['burst']:.0f} {calls} in {summary['burst_seconds']:.2f} s = "
            f"{summary['calls_per_second']:,.0f} calls/s; latency p50 {summary['p50_ms']:.3f} ms, "
            f"p99 {summary['p99_ms']:.3f} ms")


def timed_burst(call: Callable[[int], Any], count: int, time_limit: float | None = None) -> Burst:
    """Make ``call(i)`` for i in range(count), one after another, each timed.

    With ``time_limit`` (seconds) the burst stops early once that much time
    has passed, so a slow machine still finishes; ``len(latencies)`` says how
    many calls were made.
    """
    clock = time.perf_counter
    stop_at = None if time_limit is None else clock() + time_limit
    latencies = []
    for i in range(count):
        begin = clock()
        call(i)
        end = clock()
        latencies.append(end - begin)
        if stop_at is not None and end > stop_at:
            break
    return Burst(tuple(sorted(latencies)))


def while_pinging(long_call: Callable[[], Any], ping: Callable[[], Any], pace: float = 0.0,
                  thread_name: str = "demo-long-call") -> tuple[Any, int, float]:
    """Run ``long_call()`` in a thread and call ``ping()`` here until it returns.

    ``long_call`` must use its own connection (one call is in flight per
    connection at a time). ``pace`` seconds pass between pings (0: back to
    back). Returns the long call's result, the number of pings answered
    meanwhile and the seconds the long call took; its exception is raised here.
    """
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((long_call(), None))
        except Exception as exc:  # handed to the calling thread
            outcome.append((None, exc))

    thread = threading.Thread(target=run, name=thread_name)
    begin = time.perf_counter()
    thread.start()
    pings = 0
    while thread.is_alive():
        ping()
        pings += 1
        if pace:
            time.sleep(pace)
    thread.join()
    took = time.perf_counter() - begin
    [(result, error)] = outcome
    if error is not None:
        raise error
    return result, pings, took
