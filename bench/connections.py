"""Idle connections: do 1,000 connected but silent clients slow down the active ones?

A daemon in a desktop application may hold many connections that do nothing
(proxies kept open by other programs). With an epoll-based select loop an
idle socket should cost nothing per call; a host loop that scans every
watched socket on each pass (Qt's notifier dispatch on some platforms, a plain
``select()``) pays for every one of them. This measures it.

For each host (``--hosts``, default the select loop and an offscreen Qt
application) one server process (pinned to CPU 0) serves ``echo``. Each round
runs two phases, their order alternating between rounds:

- ``no idle``: ``--active`` client processes (pinned to CPU 1) each make
  ``--calls`` sequential calls at the same time;
- ``N idle``: the same, while one more process holds ``--idle`` connections
  to the same daemon, each handshaken by a proxy and then left silent. After
  the active clients finish, every idle proxy makes one call, to show that
  the idle connections were still served.

Reported per phase (the median round by calls/s): calls/s of all active
clients together, p50 and p99 latency over all their calls, and the server's
open fds and RSS while the phase ran (the RSS difference is the memory cost
of the idle connections). File descriptor limits (RLIMIT_NOFILE) are raised
to the hard limit where needed.

Run ``python bench/connections.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Any

import _common as common

OBJECT_ID = "conn.echo"
CONTROL_TIMEOUT = 60.0
HOSTS = ("select", "qt")


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to cover ``needed`` fds (up to the hard limit); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- children --------------------------------------------------------------------------------

def serve(args: argparse.Namespace) -> None:
    import pyro_loops

    raise_fd_limit(args.idle + args.active + 256)
    pyro_loops.config.SOCK_NODELAY = True
    pyro_loops.config.MAX_CONNECTIONS = max(pyro_loops.config.MAX_CONNECTIONS, args.idle + args.active + 64)
    daemon = pyro_loops.Daemon(host=common.LOCALHOST)

    @pyro_loops.expose
    class Echo:
        def echo(self, value: Any) -> Any:
            return value

    uri = daemon.register(Echo(), OBJECT_ID)
    if args.host == "qt":
        from PyQt5 import QtWidgets

        from pyro_loops.adapters import qt

        app = QtWidgets.QApplication(["connections"])
        qt.attach(daemon, app)
        common.announce(common.READY, str(uri))
        app.exec_()
    else:
        common.announce(common.READY, str(uri))
        daemon.requestLoop()


def hold(args: argparse.Namespace) -> None:
    """Open ``--idle`` connections, wait for a line on stdin, then call once through each."""
    import pyro_loops

    raise_fd_limit(args.idle + 256)
    pyro_loops.config.SOCK_NODELAY = True
    started = time.perf_counter()
    proxies = []
    for _ in range(args.idle):
        proxy = pyro_loops.Proxy(args.uri)
        proxy._pyroTimeout = CONTROL_TIMEOUT
        proxy._pyroBind()
        proxies.append(proxy)
    common.announce(common.READY, json.dumps({"open_seconds": time.perf_counter() - started}))
    sys.stdin.readline()
    answered = 0
    for n, proxy in enumerate(proxies):
        try:
            answered += proxy.echo(n) == n
        except pyro_loops.errors.PyroError:
            pass
        proxy._pyroRelease()
    common.announce(common.RESULT, {"idle": len(proxies), "answered_after": answered})


def client(args: argparse.Namespace) -> dict:
    import pyro_loops

    pyro_loops.config.SOCK_NODELAY = True
    proxy = pyro_loops.Proxy(args.uri)
    proxy._pyroTimeout = CONTROL_TIMEOUT
    proxy._pyroBind()
    for _ in range(min(500, args.calls // 10)):  # warm-up, not measured
        proxy.echo(42)
    elapsed, latencies = common.time_calls(proxy.echo, args.calls)
    proxy._pyroRelease()
    return {"seconds": elapsed, "latencies_ns": latencies}


# --- orchestration ---------------------------------------------------------------------------

def server_memory(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "rss_mb": int(status["VmRSS"].split()[0]) / 1024}


def run_active(uri: str, args: argparse.Namespace, cpu: int | None) -> dict:
    """All active clients at once; calls/s of them together and latency over all their calls."""
    me = os.path.abspath(__file__)
    procs = [common.spawn([me, "--client", "--uri", uri, "--calls", str(args.calls)], cpu)
             for _ in range(args.active)]
    try:
        results = [json.loads(common.read_tagged_line(p, common.RESULT, CONTROL_TIMEOUT * 5)) for p in procs]
    finally:
        for p in procs:
            common.stop(p)
    latencies = sorted(ns for r in results for ns in r["latencies_ns"])
    return {
        "calls": len(latencies),
        "calls_per_s": sum(args.calls / r["seconds"] for r in results),
        "p50_us": common.percentile(latencies, 50) / 1e3,
        "p99_us": common.percentile(latencies, 99) / 1e3,
        "max_us": latencies[-1] / 1e3,
    }


def wait_for_fds(pid: int, target: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while server_memory(pid)["fds"] > target and time.monotonic() < deadline:
        time.sleep(0.1)


def phase(name: str, uri: str, server_pid: int, args: argparse.Namespace, cpu: int | None) -> dict:
    me = os.path.abspath(__file__)
    if name == "none":
        result = run_active(uri, args, cpu)
        result["server"] = server_memory(server_pid)
        return result
    with common.child([me, "--hold", "--uri", uri, "--idle", str(args.idle)], cpu, stdin=True) as holder:
        opened = json.loads(common.read_tagged_line(holder, common.READY, CONTROL_TIMEOUT * 5))
        result = run_active(uri, args, cpu)
        server = server_memory(server_pid)
        holder.stdin.write(b"check\n")
        holder.stdin.flush()
        after = json.loads(common.read_tagged_line(holder, common.RESULT, CONTROL_TIMEOUT * 5))
    result.update(server=server, open_seconds=opened["open_seconds"], **after)
    return result


def measure_host(host: str, args: argparse.Namespace) -> dict[str, list[dict]]:
    server_cpu, client_cpu = common.placement_cpus("split")
    me = os.path.abspath(__file__)
    rounds: dict[str, list[dict]] = {"none": [], "idle": []}
    serve_args = [me, "--serve", "--host", host, "--idle", str(args.idle), "--active", str(args.active)]
    with common.child(serve_args, server_cpu, {"QT_QPA_PLATFORM": "offscreen"}) as server:
        uri = common.read_tagged_line(server, common.READY, CONTROL_TIMEOUT)
        baseline_fds = server_memory(server.pid)["fds"]
        for r in range(args.rounds):
            order = ["none", "idle"] if r % 2 == 0 else ["idle", "none"]
            for name in order:
                label = "no idle connections" if name == "none" else f"{args.idle} idle connections"
                print(f"{host} round {r + 1}/{args.rounds}: {label}", flush=True)
                rounds[name].append(phase(name, uri, server.pid, args, client_cpu))
                wait_for_fds(server.pid, baseline_fds, 30.0)
    return rounds


def report(results: dict[str, dict[str, dict]], failures: dict[str, str], args: argparse.Namespace) -> None:
    print()
    rows = []
    for host, phases in results.items():
        for name in ("none", "idle"):
            r = phases[name]
            label = f"{host}, {'no idle' if name == 'none' else f'{args.idle:,} idle'}"
            rows.append([label, r["calls_per_s"], r["p50_us"], r["p99_us"], r["max_us"] / 1e3,
                         r["server"]["fds"], r["server"]["rss_mb"]])
    common.print_table(["host, idle connections", "calls/s", "p50 us", "p99 us", "max ms", "server fds",
                        "server RSS MB"], rows)
    print(f"\n(median round of {args.rounds} by calls/s; {args.active} active clients x {args.calls:,} calls)")
    for host, phases in results.items():
        none, idle = phases["none"], phases["idle"]
        per_conn_kb = (idle["server"]["rss_mb"] - none["server"]["rss_mb"]) * 1024 / args.idle
        print(f"{host}: with idle connections calls/s {idle['calls_per_s'] / none['calls_per_s'] - 1:+.1%}, "
              f"p99 {idle['p99_us'] / none['p99_us'] - 1:+.1%}; about {per_conn_kb:.1f} kB of server RSS per idle "
              f"connection; opening them took {idle['open_seconds']:.2f} s; idle proxies answered afterwards: "
              f"{idle['answered_after']}/{idle['idle']}")
    for host, reason in failures.items():
        print(f"{host}: {reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default=",".join(HOSTS), help="comma-separated, out of: " + ", ".join(HOSTS))
    parser.add_argument("--idle", type=int, default=1000, help="idle connections (default 1000)")
    parser.add_argument("--active", type=int, default=4, help="active client processes (default 4)")
    parser.add_argument("--calls", type=int, default=5000, help="sequential calls per active client (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per host, phase order alternating (default 3)")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="also write all figures as JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args)
        return 0
    if args.hold:
        hold(args)
        return 0
    if args.client:
        common.announce(common.RESULT, client(args))
        return 0
    hosts = args.hosts.split(",")
    unknown = [h for h in hosts if h not in HOSTS]
    if unknown:
        parser.error(f"unknown host(s): {', '.join(unknown)}")
    limit = raise_fd_limit(args.idle + 256)  # inherited by the children
    common.pin(common.CLIENT_CPU)  # keep the orchestrator off the server's CPU
    common.print_header("idle connections", {
        "hosts": ", ".join(hosts), "idle": args.idle, "active": f"{args.active} processes x {args.calls} calls",
        "rounds": args.rounds, "RLIMIT_NOFILE (soft)": limit,
        "placement": f"server on CPU {common.SERVER_CPU}, clients and idle holder on CPU {common.CLIENT_CPU}"
                     if common.can_pin() else "not pinned (cannot pin here)",
        "versions": common.versions("pyro-loops", "PyQt5", "serpent"),
    })
    rounds: dict[str, dict[str, list[dict]]] = {}
    failures: dict[str, str] = {}
    for host in hosts:
        try:
            rounds[host] = measure_host(host, args)
        except Exception as exc:  # one broken host must not hide the other's figures
            failures[host] = f"failed: {type(exc).__name__}: {exc}"
    results = {h: {name: common.median_round(rs) for name, rs in phases.items()} for h, phases in rounds.items()}
    report(results, failures, args)
    common.print_footer()
    common.write_json(args.json, {"rounds": rounds, "median": results, "failures": failures, "args": vars(args)})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
