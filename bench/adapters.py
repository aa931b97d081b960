"""What serving a daemon costs the loop that hosts it: each adapter against polling.

For every host (the Qt, Tk, selectors and asyncio adapters, the plain
``requestLoop``, and Pyro4's 50 Hz ``select()`` polling from a Tk timer) one
server process is started, pinned to CPU 0, and measured four ways:

1. sequential calls from one client process (calls/s, p50, p99);
2. isolated calls spaced 5-15 ms apart at random (p50, p99): the latency a
   user sees when calls do not arrive back to back;
3. the host loop's worst stall while a burst of calls from several client
   processes is served: a 10 ms repeating timer of the host loop itself
   records its largest gap;
4. idle cost: CPU seconds and wakeups (voluntary context switches) of the
   server process over an idle period, read from /proc from outside.

Run ``python bench/adapters.py --help``; bench/README.rst explains the columns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from typing import Any, Callable

import _common as common

PROBE_ID = "bench.probe"
TIMER_INTERVAL = 0.010
POLL_HZ = 50
CONTROL_TIMEOUT = 15.0


# --- the published objects -------------------------------------------------------------------

class Probe:
    """Times the host loop's own repeating 10 ms timer between ``stall_start`` and ``stall_stop``.

    The timer is the host's (QTimer, Tk ``after``, ...), so a gap longer than
    the interval is exactly what a window would show as a freeze.
    """

    def __init__(self, start_timer: Callable[[Callable[[], None]], Callable[[], None]] | None) -> None:
        self._start_timer = start_timer
        self._cancel: Callable[[], None] | None = None
        self._last = 0.0
        self._max_gap = 0.0
        self._ticks = 0

    def stall_start(self) -> bool:
        if self._start_timer is None:
            return False
        self._ticks = 0
        self._max_gap = 0.0
        self._last = time.perf_counter()
        self._cancel = self._start_timer(self._tick)
        return True

    def stall_stop(self) -> dict:
        if self._cancel is None:
            return {}
        self._cancel()
        self._cancel = None
        self._tick()  # a stall still going on when the burst ended counts too
        return {"max_gap_ms": self._max_gap * 1e3, "ticks": self._ticks}

    def _tick(self) -> None:
        now = time.perf_counter()
        self._max_gap = max(self._max_gap, now - self._last)
        self._last = now
        self._ticks += 1


def publish(daemon: Any, expose: Callable, start_timer: Any) -> None:
    """Register the benchmark object and the probe, then tell the orchestrator where they are."""

    class Obj:
        def method(self, x):
            return x

    obj_uri = daemon.register(expose(Obj)(), common.OBJECT_ID)
    probe_uri = daemon.register(expose(Probe)(start_timer), PROBE_ID)
    common.announce(common.READY, {"obj": str(obj_uri), "probe": str(probe_uri)})


def repeating(call_later: Callable[[float, Callable[[], None]], Any],
              cancel: Callable[[Any], None]) -> Callable:
    """A repeating timer built from a host's one-shot timer, re-armed after each tick."""

    def start(tick: Callable[[], None]) -> Callable[[], None]:
        current: list[Any] = [None]

        def fire() -> None:
            tick()
            current[0] = call_later(TIMER_INTERVAL, fire)

        current[0] = call_later(TIMER_INTERVAL, fire)
        return lambda: cancel(current[0])

    return start


# --- servers ---------------------------------------------------------------------------------

def _our_daemon():
    import pyro_loops

    pyro_loops.config.SOCK_NODELAY = True
    return pyro_loops, pyro_loops.Daemon(host=common.LOCALHOST)


def serve_requestloop(_: argparse.Namespace) -> None:
    pyro_loops, daemon = _our_daemon()
    publish(daemon, pyro_loops.expose, None)  # requestLoop has no timer API for the host
    daemon.requestLoop()


def serve_selectloop(_: argparse.Namespace) -> None:
    from pyro_loops.adapters import selectloop

    pyro_loops, daemon = _our_daemon()
    loop = selectloop.SelectLoop()
    selectloop.attach(daemon, loop)
    publish(daemon, pyro_loops.expose, repeating(loop.call_later, lambda t: t.cancel()))
    loop.run()


def serve_asyncio(_: argparse.Namespace) -> None:
    import asyncio

    from pyro_loops.adapters import asyncio as adapter

    pyro_loops, daemon = _our_daemon()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    adapter.attach(daemon, loop)
    publish(daemon, pyro_loops.expose, repeating(loop.call_later, lambda h: h.cancel()))
    loop.run_forever()


def serve_qt(_: argparse.Namespace) -> None:
    from PyQt5 import QtCore, QtWidgets

    from pyro_loops.adapters import qt

    app = QtWidgets.QApplication(["bench"])
    pyro_loops, daemon = _our_daemon()
    qt.attach(daemon, app)

    def start_timer(tick: Callable[[], None]) -> Callable[[], None]:
        timer = QtCore.QTimer()
        timer.setTimerType(QtCore.Qt.PreciseTimer)
        timer.timeout.connect(tick)
        timer.start(round(TIMER_INTERVAL * 1000))
        return timer.stop

    publish(daemon, pyro_loops.expose, start_timer)
    app.exec_()


def _tk_timer(root: Any) -> Callable:
    return repeating(lambda delay, fn: root.after(round(delay * 1000), fn), root.after_cancel)


def serve_tk(_: argparse.Namespace) -> None:
    import tkinter

    from pyro_loops.adapters import tk

    root = tkinter.Tk()
    pyro_loops, daemon = _our_daemon()
    tk.attach(daemon, root)
    publish(daemon, pyro_loops.expose, _tk_timer(root))
    root.mainloop()


def serve_pyro4_tk_poll(select_timeout: float) -> Callable[[argparse.Namespace], None]:
    """Pyro4's documented way into a Tk GUI without threads: poll the sockets from a 50 Hz timer.

    Each tick drains whatever is ready (select, events, repeat until select
    finds nothing within ``select_timeout``), then re-arms the timer. Pyro4's
    own Tk example waits 10 ms in that select; with 0 the tick returns as soon
    as no request is already waiting.
    """

    def serve(_: argparse.Namespace) -> None:
        import select
        import tkinter

        import Pyro4

        Pyro4.config.SERVERTYPE = "multiplex"
        Pyro4.config.SOCK_NODELAY = True
        root = tkinter.Tk()
        daemon = Pyro4.Daemon(host=common.LOCALHOST)
        interval_ms = 1000 // POLL_HZ

        def poll() -> None:
            try:
                while True:
                    ready, _, _ = select.select(daemon.sockets, [], [], select_timeout)
                    if not ready:
                        break
                    daemon.events(ready)
            finally:
                root.after(interval_ms, poll)

        root.after(interval_ms, poll)
        publish(daemon, Pyro4.expose, _tk_timer(root))
        root.mainloop()

    return serve


def serve_sleep(_: argparse.Namespace) -> None:
    """The reference for idle cost: a process that only sleeps."""
    common.announce(common.READY, {})
    time.sleep(10 ** 6)


# name: (server, what the host needs: "display" / "qt" / None, client library)
HOSTS: dict[str, tuple[Callable[[argparse.Namespace], None], str | None, str]] = {
    "requestloop": (serve_requestloop, None, "pyro_loops"),
    "selectloop": (serve_selectloop, None, "pyro_loops"),
    "asyncio": (serve_asyncio, None, "pyro_loops"),
    "qt": (serve_qt, "qt", "pyro_loops"),
    "tk": (serve_tk, "display", "pyro_loops"),
    "pyro4-tk-poll": (serve_pyro4_tk_poll(0.0), "display", "Pyro4"),
    "pyro4-tk-poll-10ms": (serve_pyro4_tk_poll(0.010), "display", "Pyro4"),
}
ADAPTER_MODULES = {"selectloop": "selectloop", "asyncio": "asyncio", "qt": "qt", "tk": "tk"}


def unavailable(name: str) -> str | None:
    """Why a host cannot be measured here (None if it can), checked before anything runs."""
    try:
        if HOSTS[name][2] == "Pyro4":
            import Pyro4  # noqa: F401
        else:
            import pyro_loops

            missing = [n for n in ("Daemon", "Proxy", "expose", "config") if not hasattr(pyro_loops, n)]
            if missing:
                return f"pyro_loops has no {', '.join(missing)} yet"
        if name in ADAPTER_MODULES:
            import importlib

            module = importlib.import_module(f"pyro_loops.adapters.{ADAPTER_MODULES[name]}")
            if name == "selectloop" and not hasattr(module, "SelectLoop"):
                return "pyro_loops.adapters.selectloop has no SelectLoop yet"
            if not hasattr(module, "attach"):
                return f"pyro_loops.adapters.{name} has no attach() yet"
        if HOSTS[name][1] == "qt":
            import PyQt5.QtWidgets  # noqa: F401
        if HOSTS[name][1] == "display":
            import tkinter  # noqa: F401
    except ImportError as exc:
        return f"cannot import: {exc}"
    return None


# --- clients ---------------------------------------------------------------------------------

def make_proxy(lib: str, uri: str) -> Any:
    if lib == "Pyro4":
        import Pyro4

        Pyro4.config.SOCK_NODELAY = True
        proxy = Pyro4.Proxy(uri)
    else:
        import pyro_loops

        pyro_loops.config.SOCK_NODELAY = True
        proxy = pyro_loops.Proxy(uri)
    proxy._pyroBind()
    return proxy


def client_seq(args: argparse.Namespace) -> dict:
    """Back-to-back calls, stopping early at ``max_seconds`` so a 50 Hz poller ends in time."""
    call = make_proxy(args.lib, args.location).method
    warm_end = time.monotonic() + args.max_seconds / 10
    for _ in range(min(500, args.calls // 10)):
        call(42)
        if time.monotonic() > warm_end:
            break
    lat = []
    clock = time.perf_counter_ns
    stop_at = time.monotonic() + args.max_seconds
    start = clock()
    while len(lat) < args.calls and time.monotonic() < stop_at:
        t0 = clock()
        call(42)
        lat.append(clock() - t0)
    return common.summarize((clock() - start) / 1e9, lat)


def client_spaced(args: argparse.Namespace) -> dict:
    """Calls with a random 5-15 ms pause before each; the pause is not part of the latency."""
    call = make_proxy(args.lib, args.location).method
    call(42)
    rng = random.Random(args.seed)
    lat = []
    clock = time.perf_counter_ns
    for _ in range(args.calls):
        time.sleep(rng.uniform(0.005, 0.015))
        t0 = clock()
        call(42)
        lat.append(clock() - t0)
    return common.summarize(sum(lat) / 1e9, lat)


def client_burst(args: argparse.Namespace) -> dict:
    """Connect, say READY, wait for "go" on stdin, then make the calls as fast as possible."""
    call = make_proxy(args.lib, args.location).method
    call(42)
    common.announce(common.READY, "bound")
    sys.stdin.readline()
    started = time.monotonic()
    _, lat = common.time_calls(call, args.calls)
    return {"started": started, "ended": time.monotonic(), "lat_ns": lat}


CLIENTS = {"seq": client_seq, "spaced": client_spaced, "burst": client_burst}


# --- orchestration ---------------------------------------------------------------------------

SCRIPT = os.path.abspath(__file__)


def client_args(mode: str, lib: str, uri: str, calls: int, **extra: Any) -> list[str]:
    args = [SCRIPT, "--client", mode, "--lib", lib, "--location", uri, "--calls", str(calls)]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def run_burst(lib: str, where: dict, args: argparse.Namespace) -> dict:
    """Start the burst clients, arm the host timer, release them together, collect both sides."""
    per_client = args.burst_calls // args.burst_clients
    control = make_proxy(lib, where["probe"])
    control._pyroTimeout = CONTROL_TIMEOUT
    procs = [common.spawn(client_args("burst", lib, where["obj"], per_client), common.CLIENT_CPU, stdin=True)
             for _ in range(args.burst_clients)]
    try:
        for proc in procs:
            common.read_tagged_line(proc, common.READY, 30)
        timed = control.stall_start()
        for proc in procs:
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        results = [json.loads(common.read_tagged_line(p, common.RESULT, args.timeout)) for p in procs]
        stall = control.stall_stop()
    finally:
        for proc in procs:
            common.stop(proc)
        control._pyroRelease()
    lat = sorted(x for r in results for x in r["lat_ns"])
    seconds = max(r["ended"] for r in results) - min(r["started"] for r in results)
    return {
        "calls": len(lat),
        "seconds": seconds,
        "calls_per_s": len(lat) / seconds,
        "p99_us": common.percentile(lat, 99) / 1e3,
        "max_gap_ms": stall.get("max_gap_ms") if timed else None,
        "ticks": stall.get("ticks") if timed else None,
    }


def measure_host(name: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    serve, _, lib = HOSTS[name]
    result: dict[str, Any] = {}
    with common.child([SCRIPT, "--serve", name], common.SERVER_CPU, env) as server:
        where = json.loads(common.read_tagged_line(server, common.READY, 30))
        print(f"  {name}: sequential calls", flush=True)
        result["seq"] = common.run_client(
            client_args("seq", lib, where["obj"], args.calls, max_seconds=args.max_seconds),
            common.CLIENT_CPU, args.timeout)
        print(f"  {name}: isolated calls", flush=True)
        result["isolated"] = common.run_client(
            client_args("spaced", lib, where["obj"], args.isolated, seed=args.seed),
            common.CLIENT_CPU, args.timeout)
        print(f"  {name}: burst of {args.burst_calls} calls from {args.burst_clients} clients", flush=True)
        result["burst"] = run_burst(lib, where, args)
        print(f"  {name}: idle for {args.idle_seconds:g} s", flush=True)
        result["idle"] = measure_idle(server, args)
    return result


def measure_idle(server: Any, args: argparse.Namespace) -> dict:
    time.sleep(args.settle)  # let connections close and deferred work finish
    if server.poll() is not None:
        raise common.ChildFailed(f"server exited with {server.returncode} before the idle period")
    return common.idle_cost(server.pid, args.idle_seconds)


def measure_sleeper(args: argparse.Namespace) -> dict:
    with common.child([SCRIPT, "--serve", "sleep"], common.SERVER_CPU) as proc:
        common.read_tagged_line(proc, common.READY, 30)
        return {"idle": measure_idle(proc, args)}


# Each phase is its own measurement, so each takes its median round by its own main figure.
PHASE_KEYS = {"seq": "calls_per_s", "isolated": "p99_us", "burst": "max_gap_ms", "idle": "cpu_s"}


def median_phases(host_rounds: list[dict]) -> dict:
    """Per phase, the round with the median main figure (see PHASE_KEYS)."""
    merged = {}
    for phase, key in PHASE_KEYS.items():
        runs = [r[phase] for r in host_rounds if phase in r]
        if runs:
            if any(run.get(key) is None for run in runs):
                key = "calls_per_s"  # a host without a timer: no gap to rank by
            merged[phase] = common.median_round(runs, key)
    return merged


def report(names: list[str], results: dict[str, dict], failures: dict[str, str], args: argparse.Namespace) -> None:
    plain_p50 = results.get("requestloop", {}).get("seq", {}).get("p50_us")
    print("\ncalls (sequential: back to back from one client; isolated: 5-15 ms apart):")
    rows = []
    for name in names:
        if name not in results or "seq" not in results[name]:
            continue
        seq, iso = results[name]["seq"], results[name]["isolated"]
        rows.append([name, seq["calls"], round(seq["calls_per_s"]), seq["p50_us"], seq["p99_us"],
                     common.fmt(seq["p50_us"] / plain_p50, 2) if plain_p50 else "-",
                     iso["p50_us"], iso["p99_us"]])
    common.print_table(["host", "seq calls", "calls/s", "p50 us", "p99 us", "p50 x plain",
                        "isolated p50 us", "isolated p99 us"], rows)

    print(f"\nhost loop (burst: {args.burst_calls} calls from {args.burst_clients} clients, "
          f"{TIMER_INTERVAL * 1000:g} ms host timer; idle: {args.idle_seconds:g} s, no connections):")
    rows = []
    for name in [*names, "sleep"]:
        if name not in results:
            continue
        burst, idle = results[name].get("burst"), results[name]["idle"]
        label = "sleep (reference)" if name == "sleep" else name
        gap = "-" if not burst else ("n/a: no host timer" if burst["max_gap_ms"] is None else burst["max_gap_ms"])
        rows.append([label, gap,
                     burst["ticks"] if burst and burst["ticks"] is not None else "-",
                     burst["seconds"] * 1e3 if burst else "-",
                     round(burst["calls_per_s"]) if burst else "-",
                     common.fmt(idle["cpu_s"], 4), idle["wakeups"],
                     common.fmt(idle["wakeups"] / idle["seconds"], 1), idle["threads"]])
    common.print_table(["host", "worst gap ms", "ticks", "burst ms", "burst calls/s",
                        "idle cpu s", "idle wakeups", "wakeups/s", "threads"], rows)
    for name, reason in failures.items():
        print(f"{name}: {reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated hosts out of: " + ", ".join(HOSTS))
    parser.add_argument("--quick", action="store_true",
                        help="short run: 1000 sequential calls, 60 isolated calls, 2 s idle")
    parser.add_argument("--calls", type=int, default=None, help="sequential calls (default 5000)")
    parser.add_argument("--max-seconds", type=float, default=5.0,
                        help="stop the sequential calls after this long (a 50 Hz poller manages ~50/s)")
    parser.add_argument("--isolated", type=int, default=None, help="isolated calls (default 300)")
    parser.add_argument("--burst-calls", type=int, default=2000, help="calls in the burst, all clients together")
    parser.add_argument("--burst-clients", type=int, default=4, help="client processes in the burst")
    parser.add_argument("--idle-seconds", type=float, default=None, help="idle period (default 10)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between the burst and the idle period")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every host this often, order rotated; each phase reports its median round")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the isolated-call spacing")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one client run may take")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="also write all figures as JSON")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--lib", help=argparse.SUPPRESS)
    parser.add_argument("--location", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.calls = args.calls or (1000 if args.quick else 5000)
    args.isolated = args.isolated or (60 if args.quick else 300)
    args.idle_seconds = args.idle_seconds or (2.0 if args.quick else 10.0)

    if args.serve:
        (serve_sleep if args.serve == "sleep" else HOSTS[args.serve][0])(args)
        return 0
    if args.client:
        common.announce(common.RESULT, CLIENTS[args.client](args))
        return 0

    names = args.only.split(",") if args.only else list(HOSTS)
    unknown = [n for n in names if n not in HOSTS]
    if unknown:
        parser.error(f"unknown host(s): {', '.join(unknown)}")
    common.pin(common.CLIENT_CPU)  # keep the orchestrator off the server's CPU
    common.print_header("serving from a host loop", {
        "sequential_calls": args.calls, "isolated_calls": args.isolated,
        "burst": f"{args.burst_calls} calls from {args.burst_clients} clients",
        "idle_seconds": args.idle_seconds, "rounds": args.rounds,
        "placement": f"server on CPU {common.SERVER_CPU}, clients on CPU {common.CLIENT_CPU}"
                     if common.can_pin() else "not pinned (cannot pin here)",
        "pyro4_poll": f"Pyro4 multiplex daemon, Tk after({1000 // POLL_HZ} ms) tick draining "
                      "select(daemon.sockets, timeout 0 (pyro4-tk-poll) or 10 ms (pyro4-tk-poll-10ms)) "
                      "+ daemon.events()",
        "versions": common.versions("pyro-loops", "Pyro4", "PyQt5", "serpent"),
    })

    failures = {n: f"not available: {r}" for n in names if (r := unavailable(n))}
    rounds: dict[str, list[dict]] = {n: [] for n in [*names, "sleep"]}
    with contextlib.ExitStack() as stack:
        env = {"QT_QPA_PLATFORM": "offscreen"}
        if any(HOSTS[n][1] == "display" for n in names if n not in failures):
            try:
                env.update(stack.enter_context(common.display()))
            except common.ChildFailed as exc:
                failures.update({n: f"not available: {exc}" for n in names if HOSTS[n][1] == "display"})
        print(f"display for Tk: {env.get('DISPLAY', '-')}\n")
        for r in range(args.rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                if name in failures:
                    continue
                print(f"round {r + 1}/{args.rounds} {name}:", flush=True)
                try:
                    rounds[name].append(measure_host(name, args, env))
                except Exception as exc:  # one broken host must not hide the others' figures
                    failures[name] = f"failed in round {r + 1}: {type(exc).__name__}: {exc}"
            print(f"round {r + 1}/{args.rounds} sleep (reference): idle", flush=True)
            rounds["sleep"].append(measure_sleeper(args))

    results = {n: median_phases(rs) for n, rs in rounds.items() if rs and n not in failures}
    report(names, results, failures, args)
    common.print_footer()
    common.write_json(args.json, {"rounds": rounds, "median": results, "failures": failures, "args": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
