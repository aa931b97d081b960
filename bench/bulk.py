"""Bulk transfer: a 10 MB marshal ``bytes`` argument, pyro_loops against Pyro4 4.82.

A client calls ``obj.size(data)`` with ``data = b"x" * 10 MB`` over and over
(the method returns ``len(data)``: the reply is small), serializer marshal.
Server and client run in separate processes pinned to different CPUs. Each
pairing runs once per round, the order rotating from round to round; the
median round's MB/s is reported per pairing, with the server's CPU time per
call (read from /proc; a busy machine disturbs it less than the wall clock):

- pyro4 -> pyro4: stock Pyro4 client and daemon (the reference);
- pyro4 -> pyro_loops: the stock Pyro4 client against a pyro_loops daemon;
- pyro_loops -> pyro_loops: both sides pyro_loops.

Run ``taskset -c 0,1 python bench/bulk.py --rounds 5``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import _common as common

SIZE = 10 * 1024 * 1024
PAIRINGS = [("pyro4", "pyro4"), ("pyro4", "pyro_loops"), ("pyro_loops", "pyro_loops")]


def _api(name: str):
    if name == "pyro4":
        import Pyro4
        return Pyro4
    import pyro_loops
    return pyro_loops


def serve(name: str) -> None:
    api = _api(name)
    api.config.SERIALIZERS_ACCEPTED = {"marshal", "serpent"}
    if name == "pyro4":
        api.config.SERVERTYPE = "multiplex"  # one thread, like a loop-hosted daemon

    @api.expose
    class Obj:
        def size(self, data):
            return len(data)

    daemon = api.Daemon(host=common.LOCALHOST)
    uri = daemon.register(Obj(), common.OBJECT_ID)
    common.announce(common.READY, str(uri))
    daemon.requestLoop()


def client(name: str, uri: str, calls: int) -> None:
    api = _api(name)
    api.config.SERIALIZER = "marshal"
    data = b"x" * SIZE
    with api.Proxy(uri) as proxy:
        assert proxy.size(data) == SIZE  # connect and warm up
        start = time.perf_counter()
        for _ in range(calls):
            proxy.size(data)
        elapsed = time.perf_counter() - start
    common.announce(common.RESULT, {"mb_per_s": calls * SIZE / 1e6 / elapsed})


def one_round(client_name: str, server_name: str, calls: int) -> tuple[float, float]:
    """MB/s, and the server's CPU milliseconds per call (which a busy machine disturbs less)."""
    server_cpu, client_cpu = common.placement_cpus("split")
    with common.child([__file__, "serve", server_name], server_cpu) as server:
        uri = common.read_tagged_line(server, common.READY, 30)
        before = common.process_counters(server.pid)["cpu_ns"]
        result = common.run_client([__file__, "client", client_name, uri, str(calls)], client_cpu, 300)
        cpu_ns = common.process_counters(server.pid)["cpu_ns"] - before
    return result["mb_per_s"], cpu_ns / 1e6 / (calls + 1)  # + the warm-up call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="10 MB calls per round and pairing")
    args = parser.parse_args()
    if not common.can_pin():
        print("warning: cannot pin to two CPUs; figures will be noisy", file=sys.stderr)
    figures: dict[tuple[str, str], list[tuple[float, float]]] = {pair: [] for pair in PAIRINGS}
    for round_no in range(args.rounds):
        order = PAIRINGS[round_no % len(PAIRINGS):] + PAIRINGS[:round_no % len(PAIRINGS)]
        for pair in order:
            figures[pair].append(one_round(*pair, args.calls))
    reference = statistics.median(rate for rate, _ in figures[("pyro4", "pyro4")])
    print(f"10 MB marshal bytes argument, {args.calls} calls x {args.rounds} rounds, "
          "server CPU 0, client CPU 1; median MB/s (min-max), server CPU ms per call (median)")
    for (client_name, server_name), values in figures.items():
        rates = [rate for rate, _ in values]
        median = statistics.median(rates)
        cpu = statistics.median(ms for _, ms in values)
        print(f"  {client_name:>10} -> {server_name:<10} {median:8.1f}  ({min(rates):.1f}-{max(rates):.1f})"
              f"  {median / reference:.2f}x pyro4   server {cpu:5.1f} ms/call")

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
