"""TLS: calls/s and handshake time, pyro_loops against Pyro4 4.82 with SSL, and the host
loop's worst 10 ms-timer gap while 50 clients handshake at once.

Certificates come from trustme (made at start, in a temporary folder); both
servers and clients take them through Pyro4's ``PYRO_SSL*`` environment items.
Server and client are pinned to different CPUs (see _common.py).

- calls/s: sequential ``method(42)`` over one TLS connection.
- handshake: connect + TLS handshake + Pyro handshake of a fresh proxy
  (``_pyroBind``), median and p90 over ``--connects`` proxies.
- gap: our daemon hosted by a SelectLoop that also runs a 10 ms repeating
  timer; 50 threads of the client process open TLS connections at the same
  instant and each makes one call. The server reports the longest interval
  between two timer runs during that burst (10 ms is the ideal; the aim is
  under 20 ms), as wall time and as the loop thread's CPU time in that
  interval: on a loaded machine the wall gap also holds the time the OS ran
  other processes, which no loop can help.

Run ``python bench/tls.py --help``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

import _common as common

TIMER_S = 0.010
BURST = 50


def make_certificates(folder: str) -> dict[str, str]:
    import trustme
    ca = trustme.CA()
    server = ca.issue_cert("localhost", common.LOCALHOST)
    paths = {"ca": os.path.join(folder, "ca.pem"), "cert": os.path.join(folder, "server.pem"),
             "key": os.path.join(folder, "server.key")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.cert_chain_pems[0].write_to_path(paths["cert"])
    server.private_key_pem.write_to_path(paths["key"])
    return {"PYRO_SSL": "true", "PYRO_SSL_SERVERCERT": paths["cert"], "PYRO_SSL_SERVERKEY": paths["key"],
            "PYRO_SSL_CACERTS": paths["ca"], "PYRO_SOCK_NODELAY": "true"}


# --- servers ---------------------------------------------------------------------------------

def serve(name: str) -> None:
    api = __import__("Pyro4" if name == "pyro4" else "pyro_loops")

    @api.expose
    class Obj:
        def __init__(self) -> None:
            self.gaps: list[float] = []
            self.cpu_gaps: list[float] = []  # the loop thread's CPU time between two timer runs
            self.last = time.monotonic()
            self.last_cpu = time.thread_time()

        def method(self, x):
            return x

        def reset_gaps(self) -> None:
            self.gaps = []
            self.cpu_gaps = []

        def worst_gap_ms(self) -> tuple[float, float]:
            """(wall, CPU of the loop thread): the wall gap includes time the OS gave other processes."""
            return max(self.gaps, default=0.0) * 1000, max(self.cpu_gaps, default=0.0) * 1000

    obj = Obj()
    daemon = api.Daemon(host=common.LOCALHOST)
    uri = daemon.register(obj, common.OBJECT_ID)
    common.announce(common.READY, str(uri))
    if name == "pyro4":
        daemon.requestLoop()
        return
    from pyro_loops.adapters import selectloop
    loop = selectloop.SelectLoop()

    def tick() -> None:
        now, cpu = time.monotonic(), time.thread_time()
        obj.gaps.append(now - obj.last)
        obj.cpu_gaps.append(cpu - obj.last_cpu)
        obj.last, obj.last_cpu = now, cpu
        loop.call_later(TIMER_S, tick)

    selectloop.attach(daemon, loop)
    loop.call_later(TIMER_S, tick)
    loop.run()


# --- clients ---------------------------------------------------------------------------------

def client(name: str, uri: str, calls: int, connects: int, burst: bool) -> None:
    api = __import__("Pyro4" if name == "pyro4" else "pyro_loops")
    proxy = api.Proxy(uri)
    for _ in range(min(500, calls // 10)):
        proxy.method(42)
    elapsed, lat = common.time_calls(proxy.method, calls)
    result = common.summarize(elapsed, lat)
    handshakes = []
    for _ in range(connects):
        fresh = api.Proxy(uri)
        t0 = time.perf_counter()
        fresh._pyroBind()
        handshakes.append(time.perf_counter() - t0)
        fresh._pyroRelease()
    handshakes.sort()
    result["handshake_ms_median"] = statistics.median(handshakes) * 1000
    result["handshake_ms_p90"] = common.percentile(handshakes, 90) * 1000
    if burst:
        result.update(handshake_burst(api, uri, proxy))
    proxy._pyroRelease()
    common.announce(common.RESULT, result)


def handshake_burst(api, uri: str, control) -> dict:
    """BURST threads connect at the same instant; the server says its worst timer gap meanwhile."""
    gate = threading.Barrier(BURST)
    failures: list[BaseException] = []

    def one() -> None:
        fresh = api.Proxy(uri)
        gate.wait()
        try:
            fresh.method(1)
        except BaseException as exc:  # counted and reported, the burst goes on
            failures.append(exc)
        finally:
            fresh._pyroRelease()

    threads = [threading.Thread(target=one) for _ in range(BURST)]
    control.reset_gaps()
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.perf_counter() - t0
    wall, cpu = control.worst_gap_ms()
    return {"burst_clients": BURST, "burst_s": took, "burst_failures": len(failures),
            "worst_timer_gap_ms": wall, "worst_timer_gap_cpu_ms": cpu}


# --- orchestration ---------------------------------------------------------------------------

def measure(name: str, env: dict[str, str], args: argparse.Namespace) -> dict:
    script = os.path.abspath(__file__)
    server_cpu, client_cpu = common.placement_cpus("split")
    with common.child([script, "--serve", name], server_cpu, env) as server:
        uri = common.read_tagged_line(server, common.READY, 30)
        return common.run_client([script, "--client", name, "--uri", uri, "--calls", str(args.calls),
                                  "--connects", str(args.connects)] + (["--burst"] if name == "pyro_loops" else []),
                                 client_cpu, args.timeout, env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="measured calls per round (default 5000)")
    parser.add_argument("--connects", type=int, default=100, help="fresh connections timed per round (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs both implementations")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--burst", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if args.client:
        client(args.client, args.uri, args.calls, args.connects, args.burst)
        return 0

    if common.can_pin():
        common.pin(common.CLIENT_CPU)
    common.print_header("TLS: calls/s, handshake time, loop timer gap during a handshake burst", {
        "calls_per_round": args.calls, "connects_per_round": args.connects, "rounds": args.rounds,
        "versions": common.versions("pyro-loops", "Pyro4"),
        "tls": "trustme ECDSA certificates, SSL via PYRO_SSL* for both; TCP_NODELAY on",
    })
    rounds: dict[str, list[dict]] = {"pyro_loops": [], "pyro4": []}
    with tempfile.TemporaryDirectory() as folder:
        env = make_certificates(folder)
        for r in range(args.rounds):
            for name in (["pyro_loops", "pyro4"] if r % 2 == 0 else ["pyro4", "pyro_loops"]):
                result = measure(name, env, args)
                result["round"] = r + 1
                rounds[name].append(result)
                extra = (f"  burst gap {result['worst_timer_gap_ms']:.1f} ms wall, "
                         f"{result['worst_timer_gap_cpu_ms']:.1f} ms loop CPU"
                         if "worst_timer_gap_ms" in result else "")
                print(f"round {r + 1}/{args.rounds}  {name:10s} {result['calls_per_s']:8,.0f} calls/s"
                      f"  handshake {result['handshake_ms_median']:.2f} ms{extra}", flush=True)
    rows = []
    for name, results in rounds.items():
        med = common.median_round(results)
        gaps = [r["worst_timer_gap_ms"] for r in results if "worst_timer_gap_ms" in r]
        cpu_gaps = [r["worst_timer_gap_cpu_ms"] for r in results if "worst_timer_gap_ms" in r]
        rows.append([name, common.fmt(med["calls_per_s"], 0), common.fmt(med["p50_us"]),
                     common.fmt(statistics.median(r["handshake_ms_median"] for r in results), 2),
                     common.fmt(statistics.median(r["handshake_ms_p90"] for r in results), 2),
                     common.fmt(max(gaps), 1) if gaps else "-",
                     common.fmt(max(cpu_gaps), 1) if gaps else "-",
                     str(sum(r.get("burst_failures", 0) for r in results)) if gaps else "-"])
    common.print_table(["impl", "calls/s", "p50 us", "handshake ms", "handshake p90 ms",
                        "gap ms (50 at once)", "gap: loop CPU ms", "burst failures"], rows)
    common.print_footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
