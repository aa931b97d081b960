"""Sequential small calls: pyro_loops against Pyro4, Pyro5 and a raw socket ping-pong.

One client process makes ``obj.method(42)`` calls one after the other against
a server process; server and client are pinned to different CPUs. Each
implementation runs once per round, the order rotating from round to round so
that a slow phase of the machine hits every implementation alike, and the
median round per implementation is reported.

Run ``python bench/calls.py --help``; bench/README.rst explains the columns.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
from typing import Callable

import _common as common

# A Pyro4 4.82 serpent request for ``method(42)`` is 81 bytes and its reply 74
# (header 24, annotations and payload the rest); the raw ping-pong moves the same.
RAW_REQUEST = 81
RAW_REPLY = 74

NODELAY_NOTE = ("TCP_NODELAY: config.SOCK_NODELAY=True for pyro_loops, Pyro4 and Pyro5 "
                "(server and client); setsockopt(TCP_NODELAY) on both raw sockets")


# --- servers ---------------------------------------------------------------------------------

def _serve(api, servertype: str) -> None:
    """Serve ``method`` with a library whose API has Pyro4's shape (config, expose, Daemon)."""
    api.config.SERVERTYPE = servertype
    api.config.SOCK_NODELAY = True

    @api.expose
    class Obj:
        def method(self, x):
            return x

    daemon = api.Daemon(host=common.LOCALHOST)
    uri = daemon.register(Obj(), common.OBJECT_ID)
    common.announce(common.READY, str(uri))
    daemon.requestLoop()


def serve_pyro_loops(servertype: str) -> None:
    import pyro_loops
    _serve(pyro_loops, servertype)


def serve_pyro4(servertype: str) -> None:
    import Pyro4
    _serve(Pyro4, servertype)


def serve_pyro5(servertype: str) -> None:
    from Pyro5 import api
    _serve(api, servertype)


def _recv_exact(sock: socket.socket, buf: bytearray) -> bool:
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = sock.recv_into(view[got:])
        if not n:
            return False
        got += n
    return True


def serve_raw() -> None:
    """Echo-style ping-pong: read a whole request, answer with a whole reply, one client at a time."""
    listener = socket.create_server((common.LOCALHOST, 0))
    common.announce(common.READY, "%s:%d" % listener.getsockname())
    reply = b"r" * RAW_REPLY
    request = bytearray(RAW_REQUEST)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while _recv_exact(conn, request):
                conn.sendall(reply)


# --- clients: each returns a callable making one call ----------------------------------------

def client_pyro_loops(location: str) -> Callable[[int], object]:
    import pyro_loops

    pyro_loops.config.SOCK_NODELAY = True
    proxy = pyro_loops.Proxy(location)
    proxy._pyroBind()
    return proxy.method


def client_pyro4(location: str) -> Callable[[int], object]:
    import Pyro4

    Pyro4.config.SOCK_NODELAY = True
    proxy = Pyro4.Proxy(location)
    proxy._pyroBind()
    return proxy.method


def client_pyro5(location: str) -> Callable[[int], object]:
    from Pyro5 import api

    api.config.SOCK_NODELAY = True
    proxy = api.Proxy(location)
    proxy._pyroBind()
    return proxy.method


def client_raw(location: str) -> Callable[[int], object]:
    host, port = location.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"q" * RAW_REQUEST
    reply = bytearray(RAW_REPLY)

    def call(_arg: int) -> bytearray:
        sock.sendall(request)
        if not _recv_exact(sock, reply):
            raise ConnectionError("raw server closed the connection")
        return reply

    return call


# name: (server, client, module whose absence makes it unavailable)
IMPLEMENTATIONS: dict[str, tuple[Callable[[], None], Callable[[str], Callable], str]] = {
    "pyro_loops-multiplex": (lambda: serve_pyro_loops("multiplex"), client_pyro_loops, "pyro_loops"),
    "pyro_loops-thread": (lambda: serve_pyro_loops("thread"), client_pyro_loops, "pyro_loops"),
    "pyro4-thread": (lambda: serve_pyro4("thread"), client_pyro4, "Pyro4"),
    "pyro4-multiplex": (lambda: serve_pyro4("multiplex"), client_pyro4, "Pyro4"),
    "pyro5": (lambda: serve_pyro5("thread"), client_pyro5, "Pyro5"),
    "pyro5-multiplex": (lambda: serve_pyro5("multiplex"), client_pyro5, "Pyro5"),
    "raw": (serve_raw, client_raw, "socket"),
}
DEFAULT = ["pyro_loops-multiplex", "pyro_loops-thread", "pyro4-thread", "pyro4-multiplex", "pyro5", "raw"]


def unavailable(name: str) -> str | None:
    """Why an implementation cannot run here (None if it can), checked before any round."""
    module = IMPLEMENTATIONS[name][2]
    try:
        mod = __import__(module)
    except ImportError as exc:
        return f"cannot import {module}: {exc}"
    if module == "pyro_loops":
        missing = [n for n in ("Daemon", "Proxy", "expose", "config") if not hasattr(mod, n)]
        if missing:
            return f"pyro_loops has no {', '.join(missing)} yet"
    return None


# --- child entry points ----------------------------------------------------------------------

def run_client(name: str, location: str, calls: int, warmup: int, clients: int) -> None:
    """``clients`` threads with a connection each share ``calls`` (one thread: the plain sequential case)."""
    make = IMPLEMENTATIONS[_base_name(name)][1]
    if clients <= 1:
        call = make(location)
        for _ in range(warmup):
            call(42)
        elapsed, lat = common.time_calls(call, calls)
        common.announce(common.RESULT, common.summarize(elapsed, lat))
        return
    share = calls // clients
    results: list[list[int]] = []
    start_together = threading.Barrier(clients + 1)

    def work() -> None:
        call = make(location)  # in its thread: a Pyro5 proxy belongs to the thread that made it
        for _ in range(max(1, warmup // clients)):
            call(42)
        start_together.wait()
        results.append(common.time_calls(call, share)[1])

    elapsed = common.timed_threads([work] * clients, start_together)
    if len(results) < clients:
        raise SystemExit(f"{clients - len(results)} client threads failed")
    common.announce(common.RESULT, common.summarize(elapsed, [ns for lat in results for ns in lat]))


#: suffix of a name that runs the pyro_loops of --baseline (another source tree) instead of this one
BASELINE = "@base"


def _base_name(name: str) -> str:
    return name[:-len(BASELINE)] if name.endswith(BASELINE) else name


# --- orchestration ---------------------------------------------------------------------------

def measure(name: str, calls: int, warmup: int, timeout: float, placement: str, clients: int,
            baseline: str | None) -> dict:
    script = os.path.abspath(__file__)
    server_cpu, client_cpu = common.placement_cpus(placement)
    env = {"PYTHONPATH": baseline} if name.endswith(BASELINE) and baseline else None
    with common.child([script, "--serve", name], server_cpu, env) as server:
        location = common.read_tagged_line(server, common.READY, 30)
        result = common.run_client(
            [script, "--client", name, "--location", location, "--calls", str(calls), "--warmup", str(warmup),
             "--clients", str(clients)],
            client_cpu, timeout, env)
        if server.poll() is not None:
            raise common.ChildFailed(f"server exited with {server.returncode} during the run")
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="measured calls per round (default 20000)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured calls first (default calls/10, max 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each runs every implementation once")
    parser.add_argument("--only", default=None,
                        help="comma-separated names out of: " + ", ".join(IMPLEMENTATIONS))
    parser.add_argument("--json", default=None, metavar="OUT.json", help="also write every round as JSON")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one client run may take")
    parser.add_argument("--placement", choices=sorted(common.PLACEMENTS), default="split",
                        help="split (default): server CPU 0, client CPU 1; same: both on CPU 0; free: unpinned")
    parser.add_argument("--clients", type=int, default=1,
                        help="client threads, each with its own connection, sharing the calls (default 1)")
    parser.add_argument("--baseline", default=None, metavar="SRC",
                        help="a pyro_loops source tree (say, a checkout of main) to measure in the same rounds: "
                             "every pyro_loops name gets a twin NAME" + BASELINE + " running that tree's code")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--location", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve:
        IMPLEMENTATIONS[_base_name(args.serve)][0]()
        return 0
    warmup = args.warmup if args.warmup is not None else min(2000, args.calls // 10)
    if args.client:
        run_client(args.client, args.location, args.calls, warmup, args.clients)
        return 0

    names = args.only.split(",") if args.only else DEFAULT
    if args.baseline:
        args.baseline = os.path.abspath(args.baseline)
        names = [twin for n in names for twin in ((n, n + BASELINE) if n.startswith("pyro_loops") else (n,))]
    unknown = [n for n in names if _base_name(n) not in IMPLEMENTATIONS]
    if unknown:
        parser.error(f"unknown implementation(s): {', '.join(unknown)}")
    if common.can_pin() and args.placement != "free":
        common.pin(common.CLIENT_CPU)  # keep the orchestrator off the server's CPU
    common.print_header("sequential calls obj.method(42)" if args.clients <= 1 else
                        f"obj.method(42) from {args.clients} client threads at once, each sequential", {
        "calls_per_round": args.calls, "warmup_calls": warmup, "rounds": args.rounds,
        "placement": common.PLACEMENTS[args.placement] if common.can_pin() else "not pinned (cannot pin here)",
        "versions": common.versions("pyro-loops", "Pyro4", "Pyro5", "serpent"),
        "nodelay": NODELAY_NOTE,
        "raw_message_bytes": f"request {RAW_REQUEST}, reply {RAW_REPLY}",
        "clients": args.clients,
        "baseline": args.baseline or "none",
    })

    failures: dict[str, str] = {}
    for name in names:
        reason = unavailable(_base_name(name))
        if reason:
            failures[name] = f"not available: {reason}"
    runnable = [n for n in names if n not in failures]
    rounds: dict[str, list[dict]] = {n: [] for n in runnable}
    for r in range(args.rounds):
        shift = r % len(runnable) if runnable else 0
        order = runnable[shift:] + runnable[:shift]
        for name in order:
            if name in failures:
                continue
            try:
                result = measure(name, args.calls, warmup, args.timeout, args.placement, args.clients,
                                 args.baseline)
            except common.ChildFailed as exc:
                failures[name] = f"failed in round {r + 1}: {exc}"
                continue
            result["round"] = r + 1
            rounds[name].append(result)
            print(f"round {r + 1}/{args.rounds}  {name:22s} {result['calls_per_s']:10,.0f} calls/s"
                  f"  p50 {result['p50_us']:7.1f} us  p99 {result['p99_us']:7.1f} us", flush=True)

    medians = {n: common.median_round(rs) for n, rs in rounds.items() if rs and n not in failures}

    def ratio(name: str, base: str) -> str:
        if name not in medians or base not in medians:
            return "-"
        return common.fmt(medians[name]["calls_per_s"] / medians[base]["calls_per_s"], 2)

    def paired(name: str, base: str) -> str:
        """Median over rounds of the same-round ratio: robust against the machine's load drifting."""
        if name not in medians or base not in medians:
            return "-"
        by_round = {r["round"]: r["calls_per_s"] for r in rounds[base]}
        ratios = [r["calls_per_s"] / by_round[r["round"]] for r in rounds[name] if r["round"] in by_round]
        return common.fmt(statistics.median(ratios), 2) if ratios else "-"

    rows = []
    for name in names:
        if name in medians:
            m = medians[name]
            spread = [r["calls_per_s"] for r in rounds[name]]
            rows.append([name, round(m["calls_per_s"]), m["p50_us"], m["p99_us"],
                         ratio(name, "pyro5"), ratio(name, "raw"), paired(name, "pyro5"), paired(name, "raw"),
                         f"{min(spread):,.0f}..{max(spread):,.0f}"])
    print("\nmedian round per implementation (x: calls/s divided by pyro5's and raw's median round;"
          " paired: median of same-round ratios):")
    common.print_table(["implementation", "calls/s", "p50 us", "p99 us", "x pyro5", "x raw",
                        "paired x pyro5", "paired x raw", "calls/s range"], rows)
    for name, reason in failures.items():
        print(f"{name}: {reason}")
    common.print_footer()
    common.write_json(args.json, {"rounds": rounds, "median": medians, "failures": failures,
                                  "calls": args.calls, "warmup": warmup})
    return 0


if __name__ == "__main__":
    sys.exit(main())
