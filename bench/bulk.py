"""Bulk transfer: a 10 MB ``bytes`` argument, pyro_loops against Pyro4 4.82 and raw sockets.

A client calls ``obj.size(data)`` with ``data = b"x" * 10 MB`` over and over
(the method returns ``len(data)``: the reply is small), with the serializer
given by ``--serializer`` (marshal by default; serpent, msgpack, json has no
bytes). Server and client run in separate processes pinned to different
CPUs. Each pairing runs once per round, the order rotating from round to
round; the median round's MB/s is reported per pairing, with the server's CPU
time per call (read from /proc; a busy machine disturbs it less than the wall
clock):

- pyro4 -> pyro4: stock Pyro4 client and daemon (the reference);
- pyro4 -> pyro_loops: the stock Pyro4 client against a pyro_loops daemon;
- pyro_loops -> pyro_loops: both sides pyro_loops;
- raw -> raw: the floor, a length-prefixed message sent with ``sendall`` and
  received with ``recv_into`` into a buffer of its size, an 8-byte answer.

Run ``taskset -c 0,1 python bench/bulk.py --rounds 5`` (``--serializer
msgpack`` needs the msgpack package on both sides).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import time

import _common as common

SIZE = 10 * 1024 * 1024
PAIRINGS = [("pyro4", "pyro4"), ("pyro4", "pyro_loops"), ("pyro_loops", "pyro_loops"), ("raw", "raw")]
_LENGTH = struct.Struct("!Q")


def _api(name: str):
    if name == "pyro4":
        import Pyro4
        return Pyro4
    import pyro_loops
    return pyro_loops


def serve(name: str, serializer: str) -> None:
    if name == "raw":
        serve_raw()
        return
    api = _api(name)
    api.config.SERIALIZERS_ACCEPTED = {serializer, "serpent"}
    if name == "pyro4":
        api.config.SERVERTYPE = "multiplex"  # one thread, like a loop-hosted daemon

    @api.expose
    class Obj:
        def size(self, data):
            if isinstance(data, dict):  # Pyro4 leaves serpent's base64 dict to the program
                import serpent
                data = serpent.tobytes(data)
            return len(data)

    daemon = api.Daemon(host=common.LOCALHOST)
    uri = daemon.register(Obj(), common.OBJECT_ID)
    common.announce(common.READY, str(uri))
    daemon.requestLoop()


def _recv_exactly(sock: socket.socket, view: memoryview) -> bool:
    while view:
        count = sock.recv_into(view)
        if not count:
            return False
        view = view[count:]
    return True


def serve_raw() -> None:
    """One connection at a time: a length, that many bytes into a buffer of their own, the length back."""
    listener = socket.create_server((common.LOCALHOST, 0))
    common.announce(common.READY, str(listener.getsockname()[1]))
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = bytearray(_LENGTH.size)
        with conn:
            while _recv_exactly(conn, memoryview(head)):
                (length,) = _LENGTH.unpack(head)
                body = bytearray(length)
                if not _recv_exactly(conn, memoryview(body)):
                    break
                conn.sendall(_LENGTH.pack(len(body)))


def client(name: str, uri: str, calls: int, serializer: str) -> None:
    data = b"x" * SIZE
    if name == "raw":
        with socket.create_connection((common.LOCALHOST, int(uri))) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            answer = bytearray(_LENGTH.size)

            def size(payload: bytes) -> int:
                sock.sendall(_LENGTH.pack(len(payload)) + payload)
                _recv_exactly(sock, memoryview(answer))
                return _LENGTH.unpack(answer)[0]

            elapsed = _timed(size, data, calls)
    else:
        api = _api(name)
        api.config.SERIALIZER = serializer
        with api.Proxy(uri) as proxy:
            elapsed = _timed(proxy.size, data, calls)
    elapsed, cpu = elapsed
    common.announce(common.RESULT, {"mb_per_s": calls * SIZE / 1e6 / elapsed, "cpu_ms": cpu * 1e3 / calls})


def _timed(size, data: bytes, calls: int) -> tuple[float, float]:
    """Seconds for ``calls`` calls, and the client's CPU seconds for them."""
    assert size(data) == SIZE  # connect and warm up
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        size(data)
    return time.perf_counter() - start, time.process_time() - cpu


def one_round(client_name: str, server_name: str, calls: int, serializer: str) -> tuple[float, float, float]:
    """MB/s, and the server's and the client's CPU milliseconds per call (which a busy machine disturbs less)."""
    server_cpu, client_cpu = common.placement_cpus("split")
    with common.child([__file__, "serve", server_name, serializer], server_cpu) as server:
        uri = common.read_tagged_line(server, common.READY, 30)
        before = common.process_counters(server.pid)["cpu_ns"]
        result = common.run_client([__file__, "client", client_name, uri, str(calls), serializer],
                                   client_cpu, 600)
        cpu_ns = common.process_counters(server.pid)["cpu_ns"] - before
    return result["mb_per_s"], cpu_ns / 1e6 / (calls + 1), result["cpu_ms"]  # server: + the warm-up call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="10 MB calls per round and pairing")
    parser.add_argument("--serializer", default="marshal", choices=["marshal", "serpent", "msgpack"])
    args = parser.parse_args()
    if not common.can_pin():
        print("warning: cannot pin to two CPUs; figures will be noisy", file=sys.stderr)
    figures: dict[tuple[str, str], list[tuple[float, float, float]]] = {pair: [] for pair in PAIRINGS}
    for round_no in range(args.rounds):
        order = PAIRINGS[round_no % len(PAIRINGS):] + PAIRINGS[:round_no % len(PAIRINGS)]
        for pair in order:
            figures[pair].append(one_round(*pair, args.calls, args.serializer))
    reference = statistics.median(rate for rate, _, _ in figures[("pyro4", "pyro4")])
    raw = statistics.median(rate for rate, _, _ in figures[("raw", "raw")])
    print(f"10 MB {args.serializer} bytes argument, {args.calls} calls x {args.rounds} rounds, "
          "server CPU 0, client CPU 1; median MB/s (min-max), CPU ms per call (median)")
    for (client_name, server_name), values in figures.items():
        rates = [rate for rate, _, _ in values]
        median = statistics.median(rates)
        server_cpu = statistics.median(ms for _, ms, _ in values)
        client_cpu = statistics.median(ms for _, _, ms in values)
        print(f"  {client_name:>10} -> {server_name:<10} {median:8.1f}  ({min(rates):.1f}-{max(rates):.1f})"
              f"  {median / reference:5.2f}x pyro4  {median / raw:5.2f}x raw"
              f"   CPU server {server_cpu:6.1f} client {client_cpu:6.1f} ms/call")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
