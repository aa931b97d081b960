"""Soak: many clients against one daemon for a long time; does anything leak or get lost?

One server process (pinned to CPU 0) hosts a daemon in the select loop
(``--host select``) or in an offscreen Qt application (``--host qt``). Client
processes (pinned to CPU 1) run ``--clients`` threads between them, each with
its own proxy, for ``--seconds``, mixing normal calls, ``@in_worker`` calls,
oneway calls, 1 MB uploads and downloads, and reconnects. Every answer is
checked. At the end it reports:

- calls served, counted by the server object, against the calls the clients
  made (oneway ones included): "lost" is the difference and must be zero;
- errors seen by clients (expected zero), with a sample of their messages;
- the server process's open file descriptors, threads and RSS, read from
  /proc from outside the process: before any client, early and late under
  load, and after the clients left. Flat means no leak.

Run ``python bench/soak.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import threading
import time
from typing import Any

import _common as common

OBJECT_ID = "soak"
BIG = 1 << 20  # "large payload": 1 MB of bytes, each way
# share of each operation in a client's stream; the rest are plain echo calls
MIX = {"oneway": 0.25, "worker": 0.10, "upload": 0.005, "download": 0.005, "reconnect": 0.02,
       "new_proxy": 0.005}
CONTROL_TIMEOUT = 30.0


# --- the server ------------------------------------------------------------------------------

def make_service(pyro_loops: Any, stop_loop: Any) -> Any:
    expose, oneway, in_worker = pyro_loops.expose, pyro_loops.oneway, pyro_loops.in_worker

    class Soak:
        """Counts every call it serves, by kind; ``stats()`` returns the counts."""

        def __init__(self) -> None:
            self._lock = threading.Lock()  # worker calls count from other threads
            self._counts: collections.Counter = collections.Counter()

        def _count(self, kind: str) -> None:
            with self._lock:
                self._counts[kind] += 1

        @expose
        def echo(self, value: Any) -> Any:
            self._count("echo")
            return value

        @expose
        @in_worker
        def worker(self, value: Any) -> Any:
            self._count("worker")
            return value

        @expose
        @oneway
        def note(self, value: Any) -> None:
            self._count("oneway")

        @expose
        def upload(self, data: bytes) -> int:
            self._count("upload")
            return len(data)

        @expose
        def download(self, size: int) -> bytes:
            self._count("download")
            return b"\x5a" * size

        @expose
        def stats(self) -> dict:
            with self._lock:
                return dict(self._counts)

        @expose
        @oneway
        def stop(self) -> None:
            stop_loop()

    return Soak


def serve(args: argparse.Namespace) -> None:
    import pyro_loops

    pyro_loops.config.SERVERTYPE = args.servertype
    pyro_loops.config.SOCK_NODELAY = True
    daemon = pyro_loops.Daemon(host=common.LOCALHOST)
    if args.host == "qt":
        from PyQt5 import QtWidgets

        from pyro_loops.adapters import qt

        app = QtWidgets.QApplication(["soak"])
        qt.attach(daemon, app)
        uri = daemon.register(make_service(pyro_loops, app.quit)(), OBJECT_ID)
        common.announce(common.READY, str(uri))
        app.exec_()
    else:
        from pyro_loops.adapters import selectloop

        loop = selectloop.SelectLoop()
        selectloop.attach(daemon, loop)
        uri = daemon.register(make_service(pyro_loops, loop.stop)(), OBJECT_ID)
        common.announce(common.READY, str(uri))
        loop.run()
        loop.close()
    daemon.close()


# --- the clients -----------------------------------------------------------------------------

def client_thread(uri: str, seconds: float, seed: int, payload: bytes, out: dict) -> None:
    """One client: a proxy making a random mix of calls until the time is up."""
    import pyro_loops

    rng = random.Random(seed)
    made: collections.Counter = collections.Counter()  # attempts, by kind
    errors: collections.Counter = collections.Counter()
    latencies: list[int] = []

    def new_proxy() -> Any:
        proxy = pyro_loops.Proxy(uri)
        proxy._pyroTimeout = CONTROL_TIMEOUT
        return proxy

    proxy = new_proxy()
    thresholds = []
    total = 0.0
    for kind, share in MIX.items():
        total += share
        thresholds.append((total, kind))
    deadline = time.monotonic() + seconds
    clock = time.perf_counter_ns
    i = 0
    while time.monotonic() < deadline:
        i += 1
        roll = rng.random()
        kind = next((k for limit, k in thresholds if roll < limit), "echo")
        made[kind] += 1
        try:
            if kind == "reconnect":
                proxy._pyroRelease()  # the next call connects again
            elif kind == "new_proxy":
                proxy._pyroRelease()
                proxy = new_proxy()
            elif kind == "oneway":
                proxy.note(i)
            elif kind == "upload":
                if proxy.upload(payload) != len(payload):
                    raise AssertionError("upload: wrong length echoed")
            elif kind == "download":
                data = proxy.download(BIG)
                if len(data) != BIG or data[:1] != b"\x5a":
                    raise AssertionError("download: wrong data")
            else:
                t0 = clock()
                value = getattr(proxy, kind)((seed, i))
                if kind == "echo":
                    latencies.append(clock() - t0)
                if tuple(value) != (seed, i):
                    raise AssertionError(f"{kind}: got {value!r} for {(seed, i)!r}")
        except Exception as exc:  # counted and reported: the soak must see every kind of failure
            errors[f"{kind}: {type(exc).__name__}: {exc}"[:200]] += 1
            proxy._pyroRelease()
    proxy._pyroRelease()
    out.update(made=made, errors=errors, latencies=latencies)


def client_process(args: argparse.Namespace) -> dict:
    payload = os.urandom(BIG)
    results: list[dict] = []
    threads = []
    for n in range(args.threads):
        out: dict = {}
        results.append(out)
        seed = args.seed * 1000 + n
        threads.append(threading.Thread(target=client_thread, args=(args.uri, args.seconds, seed, payload, out)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    made: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    latencies: list[int] = []
    for out in results:
        made.update(out.get("made", {}))
        errors.update(out.get("errors", {"client thread ended without a result": 1}))
        latencies.extend(out.get("latencies", []))
    latencies.sort()
    return {"made": made, "errors": errors, "echo_calls": len(latencies),
            "echo_p50_us": common.percentile(latencies, 50) / 1e3,
            "echo_p99_us": common.percentile(latencies, 99) / 1e3,
            "echo_max_us": latencies[-1] / 1e3 if latencies else float("nan")}


# --- the orchestrator ------------------------------------------------------------------------

def snapshot(pid: int, label: str) -> dict:
    """Open fds, threads and RSS of ``pid``, read from /proc without waking it."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return {"when": label, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": int(status["Threads"]),
            "rss_mb": int(status["VmRSS"].split()[0]) / 1024, "cpu_s": common.process_counters(pid)["cpu_ns"] / 1e9}


def control_proxy(uri: str) -> Any:
    import pyro_loops

    proxy = pyro_loops.Proxy(uri)
    proxy._pyroTimeout = CONTROL_TIMEOUT
    return proxy


def wait_for_fds(pid: int, target: int, timeout: float) -> None:
    """Give the server a moment to close the connections of clients that left."""
    deadline = time.monotonic() + timeout
    while len(os.listdir(f"/proc/{pid}/fd")) > target and time.monotonic() < deadline:
        time.sleep(0.1)


def run(args: argparse.Namespace) -> dict:
    server_cpu, client_cpu = common.placement_cpus("split")
    env = {"QT_QPA_PLATFORM": "offscreen"}
    me = os.path.abspath(__file__)
    with common.child([me, "--serve", "--host", args.host, "--servertype", args.servertype], server_cpu, env) as server:
        uri = common.read_tagged_line(server, common.READY, CONTROL_TIMEOUT)
        with control_proxy(uri) as control:
            control.stats()  # the control connection exists before the first snapshot
            samples = [snapshot(server.pid, "idle, before clients")]
            per_process = [args.clients // args.processes + (1 if k < args.clients % args.processes else 0)
                           for k in range(args.processes)]
            clients = [common.spawn([me, "--client", "--uri", uri, "--seconds", str(args.seconds),
                                     "--threads", str(n), "--seed", str(k + 1)], client_cpu)
                       for k, n in enumerate(per_process)]
            started = time.monotonic()
            try:
                next_sample = started + min(args.sample, args.seconds / 4)
                while next_sample < started + args.seconds - 1:
                    time.sleep(max(0.0, next_sample - time.monotonic()))
                    samples.append(snapshot(server.pid, f"under load, t={time.monotonic() - started:.0f} s"))
                    next_sample += args.sample
                reports = [json.loads(common.read_tagged_line(c, common.RESULT, CONTROL_TIMEOUT + 60))
                           for c in clients]
            finally:
                for c in clients:
                    common.stop(c)
            made: collections.Counter = collections.Counter()
            errors: collections.Counter = collections.Counter()
            for report in reports:
                made.update(report["made"])
                errors.update(report["errors"])
            wait_for_fds(server.pid, samples[0]["fds"], 10.0)
            served: dict = {}
            deadline = time.monotonic() + CONTROL_TIMEOUT
            while time.monotonic() < deadline:  # oneway calls may still be finishing
                served = control.stats()
                if served.get("oneway", 0) >= made["oneway"]:
                    break
                time.sleep(0.2)
            samples.append(snapshot(server.pid, "idle, after clients"))
            control.stop()
        server.wait(CONTROL_TIMEOUT)
    calls = {kind: made[kind] for kind in ("echo", "worker", "oneway", "upload", "download")}
    return {
        "host": args.host, "seconds": args.seconds, "clients": args.clients, "processes": args.processes,
        "calls_made": calls, "calls_served": served,
        "lost": {kind: calls[kind] - served.get(kind, 0) for kind in calls},
        "reconnects": made["reconnect"] + made["new_proxy"],
        "errors": dict(errors), "samples": samples,
        "echo_p50_us_median": sorted(r["echo_p50_us"] for r in reports)[len(reports) // 2],
        "echo_p99_us_worst": max(r["echo_p99_us"] for r in reports),
        "echo_max_us": max(r["echo_max_us"] for r in reports),
        "server_exit": server.returncode,
    }


def report(result: dict) -> None:
    total_made = sum(result["calls_made"].values())
    total_served = sum(result["calls_served"].get(k, 0) for k in result["calls_made"])
    print(f"host {result['host']}: {result['clients']} clients in {result['processes']} processes, "
          f"{result['seconds']:.0f} s\n")
    common.print_table(["calls", *result["calls_made"], "total"], [
        ["made by clients", *result["calls_made"].values(), total_made],
        ["served (server count)", *(result["calls_served"].get(k, 0) for k in result["calls_made"]), total_served],
        ["lost", *result["lost"].values(), sum(result["lost"].values())],
    ])
    print(f"\ncalls/s served: {total_served / result['seconds']:,.0f}   reconnects: {result['reconnects']:,}   "
          f"echo latency p50 {result['echo_p50_us_median']:,.0f} us (median client), "
          f"p99 {result['echo_p99_us_worst']:,.0f} us (worst client), max {result['echo_max_us'] / 1e3:,.1f} ms")
    errors = result["errors"]
    print(f"errors: {sum(errors.values())}")
    for text, count in sorted(errors.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {count} x {text}")
    print()
    samples = result["samples"]
    common.print_table(["server process", "open fds", "threads", "RSS MB", "CPU s"],
                       [[s["when"], s["fds"], s["threads"], s["rss_mb"], s["cpu_s"]] for s in samples])
    loaded = [s for s in samples if s["when"].startswith("under load")]
    if len(loaded) >= 2:
        first, last = loaded[0], loaded[-1]
        print(f"\nunder load, first to last sample: fds {last['fds'] - first['fds']:+d}, "
              f"threads {last['threads'] - first['threads']:+d}, RSS {last['rss_mb'] - first['rss_mb']:+.1f} MB")
    before, after = samples[0], samples[-1]
    print(f"idle, before to after: fds {after['fds'] - before['fds']:+d}, "
          f"threads {after['threads'] - before['threads']:+d}, RSS {after['rss_mb'] - before['rss_mb']:+.1f} MB")
    print(f"server exit status after stop(): {result['server_exit']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the clients run (default 600)")
    parser.add_argument("--host", choices=["select", "qt"], default="select",
                        help="the loop hosting the daemon: the select loop, or an offscreen QApplication")
    parser.add_argument("--servertype", choices=["multiplex", "thread"], default="multiplex")
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients, one thread each (default 50)")
    parser.add_argument("--processes", type=int, default=5, help="client processes sharing them (default 5)")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between snapshots under load")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="also write the figures as JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args)
        return 0
    if args.client:
        common.announce(common.RESULT, client_process(args))
        return 0
    if not 1 <= args.processes <= args.clients:
        parser.error("need 1 <= --processes <= --clients")
    common.pin(common.CLIENT_CPU)  # keep the orchestrator off the server's CPU
    common.print_header("soak", {
        "host": args.host, "servertype": args.servertype, "seconds": args.seconds,
        "clients": f"{args.clients} threads in {args.processes} processes, each with its own proxy",
        "mix": ", ".join(f"{k} {v:.1%}" for k, v in MIX.items()) + f", echo the rest; payloads {BIG:,} bytes",
        "placement": f"server on CPU {common.SERVER_CPU}, clients on CPU {common.CLIENT_CPU}"
                     if common.can_pin() else "not pinned (cannot pin here)",
        "versions": common.versions("pyro-loops", "PyQt5", "serpent"),
    })
    result = run(args)
    report(result)
    common.print_footer()
    common.write_json(args.json, {"result": result, "args": vars(args)})
    failed = sum(result["errors"].values()) or any(result["lost"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
