"""``python -m pyro_loops.demo``: a tour of pyro_loops that needs nothing but Python.

One process hosts an embedded name server and an application daemon on one
``SelectLoop`` (the loop ``pyro_loops.adapters.selectloop`` publishes), all in
its main thread. It starts a second Python process as the client, which finds
the application object by ``PYRONAME:``, makes a call of every kind -- normal,
bytes, oneway, property, streamed generator, remote exception, a method marked
``@in_worker`` -- and then a burst of small calls, and reports each step back
through its stdout. The client's stdout pipe is watched by the same loop, so
the server side never blocks or polls: its report is written as the steps
arrive. The name server binds a free port on 127.0.0.1 with broadcast off, so
the demo neither needs nor disturbs any name server on the machine.

``--client NS_URI`` runs only the client half, against the name server at
NS_URI (it emits one JSON object per line; the server side formats them).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import pyro_loops
from pyro_loops import errors
from pyro_loops._demo_timing import describe_burst, timed_burst, while_pinging
# The loop that pyro_loops.adapters.selectloop publishes, imported from where it lives:
# ``python -m pyro_loops.demo`` run in a source checkout imports the package from
# the checkout, where the adapters are not a subpackage (setup maps them in).
from pyro_loops._eventloop import SelectLoop
from pyro_loops.naming import locateNS, startNS

OBJECT_NAME = "demo.service"
DEFAULT_BURST = 2000
DEFAULT_TIMEOUT = 9.0      # seconds the client may take before it is killed and the demo fails
BURST_SECONDS = 3.0        # the burst stops early after this long, so a slow machine still finishes in time
WORKER_SECONDS = 0.5       # how long the @in_worker method sleeps
CALL_TIMEOUT = 10.0        # every client-side call is bounded, so a stuck server cannot hang the demo


# --- the server side ------------------------------------------------------------------

def _counted(method: Callable) -> Callable:
    """Record which thread served each call, so the report can show thread affinity."""

    @functools.wraps(method)
    def wrapper(self: "DemoService", *args: Any, **kwargs: Any) -> Any:
        self._record(method.__name__)
        return method(self, *args, **kwargs)

    return wrapper


@pyro_loops.expose
class DemoService:
    """The published object: one method for each kind of call the client makes."""

    def __init__(self) -> None:
        self._notes: list[str] = []
        self._lock = threading.Lock()  # slow_square records from a worker thread
        self.calls: collections.Counter[str] = collections.Counter()
        self.threads: dict[str, set[str]] = collections.defaultdict(set)

    def _record(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1
            self.threads[name].add(threading.current_thread().name)

    @_counted
    def add(self, a: Any, b: Any) -> Any:
        return a + b

    @_counted
    def echo(self, value: Any) -> Any:
        return value

    @pyro_loops.oneway
    @_counted
    def note(self, text: str) -> None:
        self._notes.append(text)

    @_counted
    def notes(self) -> list[str]:
        return list(self._notes)

    @property
    def calls_served(self) -> int:
        self._record("calls_served")
        return sum(self.calls.values())

    @_counted
    def countdown(self, start: int):
        yield from range(start, 0, -1)

    @_counted
    def divide(self, a: float, b: float) -> float:
        return a / b

    @pyro_loops.in_worker
    @_counted
    def slow_square(self, x: int, seconds: float) -> int:
        time.sleep(seconds)  # stands for real work; the loop keeps serving meanwhile
        return x * x

    @_counted
    def ping(self) -> None:
        pass


class _ClientPipe:
    """Collects the client's JSON lines from its stdout, as the loop reports them readable."""

    def __init__(self, on_record: Callable[[dict], None]) -> None:
        self.on_record = on_record
        self.buffer = b""
        self.eof = False

    def readable(self, pipe: Any) -> None:
        data = os.read(pipe.fileno(), 65536)
        if not data:
            self.eof = True
            return
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:  # not one of ours (a stray print, a warning): show it as it is
                    record = {"text": line.decode(errors="replace")}
                self.on_record(record)


class Report:
    """Prints the report as the client's steps arrive; remembers whether all went well."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.failures = 0
        self.summary: dict | None = None

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def record(self, record: dict) -> None:
        if "step" in record:
            mark = "ok" if record["ok"] else "FAILED"
            self.failures += not record["ok"]
            self.line(f"  [{mark}] {record['step']:<9} {record['text']}")
        elif "summary" in record:
            self.summary = record["summary"]
        else:
            self.line(f"  client says: {record.get('text', record)}")


def _thread_summary(service: DemoService, loop_thread: str) -> str:
    elsewhere = {name: sorted(threads - {loop_thread}) for name, threads in service.threads.items()
                 if threads - {loop_thread}}
    text = f"every call ran in the loop's thread ({loop_thread})"
    if elsewhere:
        text += " except " + ", ".join(f"{name} (in {', '.join(threads)})" for name, threads in sorted(elsewhere.items()))
    return text


def serve(burst: int = DEFAULT_BURST, timeout: float = DEFAULT_TIMEOUT, out: Any = None) -> int:
    """Run the whole demo; returns the process exit status (0: every step worked)."""
    started = time.perf_counter()
    report = Report(out)
    loop = SelectLoop()
    ns_uri, ns_daemon, _ = startNS("127.0.0.1", 0, enableBroadcast=False)
    daemon = pyro_loops.Daemon("127.0.0.1", 0)
    child: subprocess.Popen | None = None
    try:
        service = DemoService()
        uri = daemon.register(service, OBJECT_NAME)
        # The name server object lives in this process: register directly, no proxy needed.
        ns_daemon.nameserver.register(OBJECT_NAME, uri)
        loop.attach(ns_daemon)
        loop.attach(daemon)
        selector = selectors.DefaultSelector.__name__
        report.line("pyro_loops demo")
        report.line(f"  server process {os.getpid()}: one SelectLoop ({selector}) in thread "
                    f"{threading.current_thread().name} hosts")
        report.line(f"    name server  {ns_uri}  (free port, broadcast off)")
        report.line(f"    app daemon   {uri}  registered as '{OBJECT_NAME}'")
        report.line("  adapter: the SelectLoop of pyro_loops.adapters.selectloop; it sleeps in select() until "
                    "a socket is ready -- no polling timer")

        child = subprocess.Popen([sys.executable, "-m", "pyro_loops.demo", "--client", str(ns_uri),
                                  "--burst", str(burst)], stdout=subprocess.PIPE)
        report.line(f"  client process {child.pid}: python -m pyro_loops.demo --client {ns_uri}")
        pipe = _ClientPipe(report.record)
        loop.add_reader(child.stdout, pipe.readable)
        timed_out = []
        loop.call_later(timeout, lambda: timed_out.append(True))
        loop.run(until=lambda: pipe.eof or bool(timed_out))
        loop.remove_reader(child.stdout)
        if timed_out:
            report.line(f"  the client did not finish within {timeout:g} s; stopping it")
            report.failures += 1
            child.kill()
        status = child.wait(timeout=5)
        if status != 0 and not timed_out:
            report.line(f"  the client exited with status {status}")
            report.failures += 1

        served = sum(service.calls.values())
        report.line()
        if report.summary:
            s = report.summary
            report.line(f"calls: the client made {s['calls']} calls to '{OBJECT_NAME}' (besides name server "
                        f"lookups, metadata and {s['stream_items']} stream fetches); this process served {served}")
            if s["calls"] != served:
                report.line("  the two counts differ: calls were lost or duplicated")
                report.failures += 1
            report.line(describe_burst(s))
        report.line("threads: " + _thread_summary(service, threading.current_thread().name))
        outcome = "all steps worked" if not report.failures else f"{report.failures} problem(s)"
        report.line(f"done in {time.perf_counter() - started:.1f} s with the selectloop adapter: {outcome}")
        return 0 if not report.failures else 1
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        if child is not None and child.stdout is not None:
            child.stdout.close()
        loop.close()
        daemon.close()
        ns_daemon.close()


# --- the client side --------------------------------------------------------------------

def _emit(**record: Any) -> None:
    print(json.dumps(record), flush=True)


class _Client:
    """Makes the calls and emits one record per step; counts its calls to the service
    (not the name server lookups, metadata requests and stream fetches around them)."""

    def __init__(self, ns_uri: str, burst: int) -> None:
        self.ns_location = pyro_loops.URI(ns_uri).location
        self.burst = burst
        self.calls = 0
        self.stream_items = 0
        self.failed = False

    def proxy(self) -> pyro_loops.Proxy:
        proxy = pyro_loops.Proxy(f"PYRONAME:{OBJECT_NAME}@{self.ns_location}")
        proxy._pyroTimeout = CALL_TIMEOUT
        return proxy

    def step(self, name: str, action: Callable[[], str]) -> bool:
        try:
            text = action()
        except Exception as exc:  # a failed step is reported; the tour goes on if it can
            self.failed = True
            _emit(step=name, ok=False, text=f"{type(exc).__name__}: {exc}")
            return False
        _emit(step=name, ok=True, text=text)
        return True

    def run(self) -> int:
        host, _, port = self.ns_location.rpartition(":")
        with self.proxy() as svc:
            if not (self.step("locate", lambda: self.find_ns(host, int(port)))
                    and self.step("lookup", lambda: self.lookup(svc))):
                return 1
            self.step("call", lambda: self.call(svc))
            self.step("bytes", lambda: self.echo_bytes(svc))
            self.step("oneway", lambda: self.oneway(svc))
            self.step("property", lambda: self.property(svc))
            self.step("stream", lambda: self.stream(svc))
            self.step("exception", lambda: self.exception(svc))
            self.step("worker", lambda: self.worker(svc))
            bursts: list[dict[str, float]] = []
            self.step("burst", lambda: self.burst_calls(svc, bursts))
        if bursts:
            _emit(summary={"calls": self.calls, "stream_items": self.stream_items, **bursts[0]})
        return 1 if self.failed else 0

    def find_ns(self, host: str, port: int) -> str:
        with locateNS(host, port, broadcast=False) as ns:
            names = ns.list()
        return f"locateNS({host!r}, {port}) found it; it lists {', '.join(sorted(names))}"

    def lookup(self, svc: pyro_loops.Proxy) -> str:
        resolved = pyro_loops.resolve(svc._pyroUri)
        return f"{svc._pyroUri} resolves to {resolved}"

    def call(self, svc: pyro_loops.Proxy) -> str:
        begin = time.perf_counter()
        result = svc.add(2, 3)
        took = time.perf_counter() - begin
        self.calls += 1
        return f"add(2, 3) = {result!r} ({took * 1000:.1f} ms, including connect and metadata)"

    def echo_bytes(self, svc: pyro_loops.Proxy) -> str:
        data = bytes([0, 1, 2, 254, 255])
        result = svc.echo(data)
        self.calls += 1
        if result != data or not isinstance(result, bytes):
            raise AssertionError(f"echo returned {result!r}")
        return f"echo({data!r}) came back as {type(result).__name__} {result!r}"

    def oneway(self, svc: pyro_loops.Proxy) -> str:
        text = f"hello from process {os.getpid()}"
        begin = time.perf_counter()
        returned = svc.note(text)
        took = time.perf_counter() - begin
        notes = svc.notes()
        self.calls += 2
        if text not in notes:
            raise AssertionError(f"the oneway call did not arrive: notes() = {notes!r}")
        return f"note(...) returned {returned!r} after {took * 1000:.2f} ms without a reply; notes() = {notes!r}"

    def property(self, svc: pyro_loops.Proxy) -> str:
        value = svc.calls_served
        self.calls += 1
        return f"svc.calls_served (a remote property) = {value}"

    def stream(self, svc: pyro_loops.Proxy) -> str:
        items = svc.countdown(5)
        values = list(items)
        self.calls += 1
        self.stream_items += len(values) + 1  # one fetch per item, one to learn the end
        return f"countdown(5) returned an iterator; it fetched {values!r} one item at a time"

    def exception(self, svc: pyro_loops.Proxy) -> str:
        self.calls += 1
        try:
            svc.divide(1, 0)
        except ZeroDivisionError as exc:
            remote = [line for line in pyro_loops.util.getPyroTraceback(exc) if line.startswith(" |")]
            return (f"divide(1, 0) raised ZeroDivisionError({str(exc)!r}) here, with the server's "
                    f"traceback attached ({len(remote)} lines)")
        raise AssertionError("divide(1, 0) did not raise")

    def worker(self, svc: pyro_loops.Proxy) -> str:
        def slow() -> int:
            with self.proxy() as other:  # one call in flight per connection: use a second proxy
                return other.slow_square(12, WORKER_SECONDS)

        try:
            result, pings, took = while_pinging(slow, svc.ping, thread_name="demo-slow-call")
        finally:
            self.calls += 1
        self.calls += pings
        if pings == 0:
            raise AssertionError("no ping was answered while slow_square ran")
        return (f"slow_square(12, {WORKER_SECONDS}) = {result} after {took:.2f} s in a worker thread; "
                f"meanwhile the loop answered {pings} pings")

    def burst_calls(self, svc: pyro_loops.Proxy, bursts: list[dict[str, float]]) -> str:
        burst = timed_burst(lambda i: svc.add(i, 1), self.burst, BURST_SECONDS)
        bursts.append(burst.summary())
        self.calls += len(burst.latencies)
        text = f"{len(burst.latencies)} calls of add(i, 1), one after another, each timed"
        if len(burst.latencies) < self.burst:
            text += f" (stopped after {BURST_SECONDS:g} s, before all {self.burst})"
        return text


def run_client(ns_uri: str, burst: int = DEFAULT_BURST) -> int:
    """The client half: emits JSON lines on stdout; returns 0 when every step worked."""
    try:
        return _Client(ns_uri, burst).run()
    except errors.PyroError as exc:
        _emit(step="connect", ok=False, text=f"{type(exc).__name__}: {exc}")
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m pyro_loops.demo`` and ``pyro-loops-demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m pyro_loops.demo",
        description="Start a name server and a daemon on one select loop, drive them from a client "
                    "process, and print what happened. Needs no display and no running name server.")
    parser.add_argument("--burst", type=int, default=DEFAULT_BURST, metavar="N",
                        help=f"number of calls in the timed burst (default {DEFAULT_BURST})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"give up if the client takes longer (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--client", metavar="NS_URI",
                        help="run only the client half against the name server at NS_URI "
                             "(used by the demo itself; prints JSON lines)")
    options = parser.parse_args(argv)
    if options.burst < 1:
        parser.error("--burst must be at least 1")
    if options.client:
        return run_client(options.client, options.burst)
    return serve(options.burst, options.timeout)


if __name__ == "__main__":
    sys.exit(main())
