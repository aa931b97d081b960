"""What the loop client costs and gains, against the blocking ``Proxy`` in the same run.

Servers are ``pyro_loops.Daemon`` processes pinned to CPU 0: SERVERTYPE
thread for (a), so the 1 s call runs in a worker, and multiplex for (b) and
(c), where a thread handoff per call would measure the server's pool rather
than the client. Each measurement runs in its own client process pinned to
CPU 1.

(a) ``gap``: the host loop's worst 10 ms-timer gap while a 1 s remote call
    is pending, per host (select loop, asyncio, Qt, Tk): the loop client's
    call against the blocking proxy called from the same host's timer.
(b) ``inflight``: 1,000 calls in flight from one loop thread (a select loop),
    to one server and spread over 10 servers, in calls/s; against the
    blocking proxy calling sequentially and against 8 threads of blocking
    proxies (one proxy per thread and server).
(c) ``latency``: sequential ``await proxy.add(1, 2)`` under asyncio, p50 and
    p99, against the blocking proxy's sequential ``proxy.add(1, 2)``.

Run ``python bench/client.py`` (``--help`` for the counts).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import threading
import time
from typing import Any, Callable

import _common as common

TIMER_INTERVAL = 0.010
HOSTS = ("select", "asyncio", "qt", "tk")


# --- server -----------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    import pyro_loops

    @pyro_loops.expose
    class Bench:
        def add(self, a, b):
            return a + b

        def sleep(self, seconds):
            time.sleep(seconds)
            return seconds

    pyro_loops.config.SERVERTYPE = args.servertype
    pyro_loops.config.THREADPOOL_SIZE = 64
    daemon = pyro_loops.Daemon(host=common.LOCALHOST)
    common.announce(common.READY, str(daemon.register(Bench(), common.OBJECT_ID)))
    daemon.requestLoop()


# --- (a) the host loop's worst timer gap --------------------------------------------------------


class Host:
    """A host loop with a repeating timer that records its largest gap, for one client."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.max_gap = 0.0
        self._last = 0.0
        self._measuring = False
        if name == "select":
            from pyro_loops.adapters import selectloop
            self.loop = selectloop.SelectLoop()
            self.later = lambda delay, fn: self.loop.call_later(delay, fn)
            self.attach = lambda obj: selectloop.attach(obj, self.loop)
            self.turn = lambda: self.loop.poll(None)
        elif name == "asyncio":
            from pyro_loops.adapters import asyncio as adapter
            self.loop = asyncio.new_event_loop()
            self.later = lambda delay, fn: self.loop.call_later(delay, fn)
            self.attach = lambda obj: adapter.attach(obj, self.loop)
            self.turn = lambda: self.loop.run_until_complete(asyncio.sleep(0.001))
        elif name == "qt":
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
            from PyQt5 import QtCore, QtWidgets
            from pyro_loops.adapters import qt as adapter
            self.app = QtWidgets.QApplication([])
            self.later = lambda delay, fn: QtCore.QTimer.singleShot(int(delay * 1000), fn)
            self.attach = lambda obj: adapter.attach(obj, self.app)
            self.turn = lambda: self.app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.WaitForMoreEvents)
        else:
            import tkinter
            from pyro_loops.adapters import tk as adapter
            self.root = tkinter.Tk()
            self.later = lambda delay, fn: self.root.after(int(delay * 1000), fn)
            self.attach = lambda obj: adapter.attach(obj, self.root)
            self.turn = lambda: self.root.dooneevent(0)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._measuring:
            self.max_gap = max(self.max_gap, now - self._last)
        self._last = now
        self.later(TIMER_INTERVAL, self._tick)

    def run_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.turn()

    def measure(self, start: Callable[[Callable[[], None]], None]) -> float:
        """Start the timer, then ``start(done)`` the call; the worst gap until ``done()``."""
        finished = []
        self._tick()
        pause_until = time.perf_counter() + 0.2
        self.run_until(lambda: time.perf_counter() > pause_until)  # the timer is running
        self._measuring = True
        self.max_gap = 0.0
        self.later(0, lambda: start(lambda: finished.append(self._last)))
        # until the first tick after the call's end: a blocked loop shows its gap there
        self.run_until(lambda: bool(finished) and self._last > finished[0])
        self._measuring = False
        return self.max_gap


def gap_child(args: argparse.Namespace) -> None:
    import pyro_loops
    host = Host(args.host)
    if args.impl == "loop":
        client = pyro_loops.Client()
        host.attach(client)
        proxy = client.proxy(args.uri)
        host.run_until(host_bound(proxy))
        gap = host.measure(lambda done: proxy.sleep(1.0).add_done_callback(lambda call: done()))
    else:
        proxy = pyro_loops.Proxy(args.uri)
        proxy._pyroBind()

        def call(done: Callable[[], None]) -> None:
            proxy.sleep(1.0)
            done()

        gap = host.measure(call)
    common.announce(common.RESULT, {"max_gap_ms": gap * 1000})


def host_bound(proxy: Any) -> Callable[[], bool]:
    bound = proxy._pyroBind()
    return bound.done


# --- (b) calls in flight ----------------------------------------------------------------------


def inflight_child(args: argparse.Namespace) -> None:
    import pyro_loops
    uris = args.uri.split(",")
    count = args.calls
    rounds = []
    if args.impl == "loop":
        from pyro_loops.adapters import selectloop
        loop = selectloop.SelectLoop()
        client = pyro_loops.Client()
        pyro_loops.config.CLIENT_MAX_PENDING = max(count, 10000)
        selectloop.attach(client, loop)
        proxies = [client.proxy(uri) for uri in uris]
        for proxy in proxies:
            bound = proxy._pyroBind()
            loop.run(until=bound.done)
        for _ in range(args.rounds):
            remaining = [count]

            def done(call: Any) -> None:
                remaining[0] -= 1

            start = time.perf_counter()
            for i in range(count):
                proxies[i % len(proxies)].add(i, 1).add_done_callback(done)
            loop.run(until=lambda: remaining[0] == 0)
            rounds.append(count / (time.perf_counter() - start))
    elif args.impl == "blocking":
        proxies = [pyro_loops.Proxy(uri) for uri in uris]
        for proxy in proxies:
            proxy._pyroBind()
        for _ in range(args.rounds):
            start = time.perf_counter()
            for i in range(count):
                proxies[i % len(proxies)].add(i, 1)
            rounds.append(count / (time.perf_counter() - start))
    else:
        threads_n = 8
        per_thread = [[pyro_loops.Proxy(uri) for uri in uris] for _ in range(threads_n)]
        for proxies in per_thread:
            for proxy in proxies:
                proxy._pyroBind()
        for _ in range(args.rounds):
            barrier = threading.Barrier(threads_n + 1)

            def work(index: int) -> None:
                proxies = per_thread[index]
                barrier.wait()
                for i in range(index, count, threads_n):
                    proxies[i % len(proxies)].add(i, 1)

            rounds.append(count / common.timed_threads(
                [functools.partial(work, n) for n in range(threads_n)], barrier))
    rounds.sort()
    common.announce(common.RESULT, {"calls_per_s": rounds[(len(rounds) - 1) // 2]})


# --- (c) sequential latency -------------------------------------------------------------------


def latency_child(args: argparse.Namespace) -> None:
    import pyro_loops
    count = args.calls
    if args.impl == "loop":
        from pyro_loops.adapters import asyncio as adapter

        async def run() -> tuple[float, list[int]]:
            client = pyro_loops.Client()
            adapter.attach(client)
            proxy = client.proxy(args.uri)
            await proxy._pyroBind()
            for _ in range(count // 10):
                await proxy.add(1, 2)
            lat = [0] * count
            clock = time.perf_counter_ns
            start = clock()
            for i in range(count):
                t0 = clock()
                await proxy.add(1, 2)
                lat[i] = clock() - t0
            return (clock() - start) / 1e9, lat

        elapsed, lat = asyncio.run(run())
    else:
        proxy = pyro_loops.Proxy(args.uri)
        for _ in range(count // 10):
            proxy.add(1, 2)
        elapsed, lat = common.time_calls(lambda _x: proxy.add(1, 2), count)
    common.announce(common.RESULT, common.summarize(elapsed, lat))


# --- orchestration ----------------------------------------------------------------------------


CHILDREN = {"serve": serve, "gap": gap_child, "inflight": inflight_child, "latency": latency_child}


def start_servers(count: int, servertype: str, stack: Any) -> list[str]:
    uris = []
    for _ in range(count):
        proc = stack.enter_context(common.child([__file__, "serve", "--servertype", servertype],
                                                common.SERVER_CPU))
        uris.append(common.read_tagged_line(proc, common.READY, 15))
    return uris


def run(kind: str, uri: str, timeout: float, env: dict[str, str] | None = None, **options: Any) -> dict:
    args = [__file__, kind, "--uri", uri]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    return common.run_client(args, common.CLIENT_CPU, timeout, env)


def main() -> None:
    import contextlib
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls in flight in (b)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (b); the median is shown")
    parser.add_argument("--latency-calls", type=int, default=5000, help="sequential calls in (c)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    common.pin(common.CLIENT_CPU)
    common.print_header("pyro_loops loop client against the blocking proxy",
                        common.versions("pyro_loops"))
    figures: dict[str, Any] = {}
    failures = []
    with contextlib.ExitStack() as stack:
        thread_server = start_servers(1, "thread", stack)[0]
        uris = start_servers(10, "multiplex", stack)
        gap_rows = []
        for host in HOSTS:
            env = None
            try:
                if host == "tk":
                    env = stack.enter_context(common.display())
                row = [host]
                for impl in ("loop", "blocking"):
                    row.append(run("gap", thread_server, 30, env, host=host, impl=impl)["max_gap_ms"])
                gap_rows.append(row)
            except common.ChildFailed as exc:
                failures.append(f"(a) {host}: failed: {exc}")
        figures["gap"] = gap_rows
        inflight_rows = []
        for label, targets in (("1 server", uris[:1]), ("10 servers", uris)):
            row = [label]
            for impl in ("loop", "blocking", "threads8"):
                try:
                    row.append(run("inflight", ",".join(targets), 120, impl=impl, calls=args.calls,
                                   rounds=args.rounds)["calls_per_s"])
                except common.ChildFailed as exc:
                    row.append(None)
                    failures.append(f"(b) {label} {impl}: failed: {exc}")
            inflight_rows.append(row)
        figures["inflight"] = inflight_rows
        latency_rows = []
        for impl in ("loop", "blocking"):
            try:
                result = run("latency", uris[0], 120, impl=impl, calls=args.latency_calls)
                latency_rows.append([impl, result["p50_us"], result["p99_us"], result["calls_per_s"]])
            except common.ChildFailed as exc:
                failures.append(f"(c) {impl}: failed: {exc}")
        figures["latency"] = latency_rows
    print("(a) worst gap of the host's 10 ms timer while a 1 s remote call is pending, ms")
    common.print_table(["host", "loop client", "blocking proxy"], gap_rows)
    print(f"\n(b) {args.calls:,} calls in flight from one thread, calls/s (median of {args.rounds} rounds)")
    common.print_table(["servers", "loop client", "blocking, sequential", "8 threads of blocking"],
                       inflight_rows)
    print(f"\n(c) {args.latency_calls:,} sequential add(1, 2) calls, microseconds")
    common.print_table(["client", "p50", "p99", "calls/s"], latency_rows)
    for failure in failures:
        print(failure)
    common.print_footer()
    common.write_json(args.json, figures)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:
        child_parser = argparse.ArgumentParser()
        child_parser.add_argument("kind")
        child_parser.add_argument("--uri", default="")
        child_parser.add_argument("--host", default="select")
        child_parser.add_argument("--impl", default="loop")
        child_parser.add_argument("--calls", type=int, default=1000)
        child_parser.add_argument("--rounds", type=int, default=5)
        child_parser.add_argument("--servertype", default="multiplex")
        child_args = child_parser.parse_args()
        CHILDREN[child_args.kind](child_args)
    else:
        main()
