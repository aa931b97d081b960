"""What a blocking Proxy call costs the client: the proxy against a raw client, on a server that costs nothing.

A pyro_loops daemon answers one handshake and one ``method(42)`` through a
relay that keeps its CONNECTOK and RESULT bytes. A replay server (pinned to
the server CPU) then answers every CONNECT with that CONNECTOK and every
INVOKE with that RESULT, sequence number and checksum patched: whatever
differs between the clients below is the client's own work. One client
process (pinned to the client CPU) runs, in rounds whose order rotates:

- ``raw``: the proxy's recorded request bytes (sequence number patched),
  ``sendall`` and ``recv_into`` a reused buffer: the floor;
- ``proxy``: ``proxy.method(42)``;
- ``raw + proxy work``: as ``raw``, plus one call per round trip on a second
  proxy whose socket is a stand-in answering at once (no system call): the
  proxy's Python work, done where the proxy does it, between two round trips;
- ``proxy work alone``: those stand-in calls in a tight loop.

Columns: the median round trip, CPU per call (``time.process_time``), and
Python function calls per call (cProfile, one more pass). When ``raw + proxy
work`` costs what ``proxy`` costs, the proxy's extra time is its Python work
and not anything it does with the socket; the ratio of that extra to ``proxy
work alone`` is what running the same work between blocking waits costs
(caches cold after each wait) against running it hot.

Run ``python bench/client_cost.py --help``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import socket
import statistics
import struct
import sys
import threading
import time
from typing import Callable

import _common as common

_seq_checksum = struct.Struct("!H")


def patched(message: bytes, seq: int) -> bytes:
    """``message`` with sequence number ``seq``, its checksum following (header offsets 10 and 22)."""
    data = bytearray(message)
    old = _seq_checksum.unpack_from(data, 10)[0]
    _seq_checksum.pack_into(data, 10, seq)
    _seq_checksum.pack_into(data, 22, (_seq_checksum.unpack_from(data, 22)[0] - old + seq) & 0xFFFF)
    return bytes(data)


# --- the two servers -------------------------------------------------------------------------

def serve_daemon() -> None:
    from calls import serve_pyro_loops  # the daemon bench/calls.py measures
    serve_pyro_loops("multiplex")


def serve_replay(connect_ok: bytes, result: bytes) -> None:
    """Answer CONNECT with ``connect_ok`` and INVOKE with ``result``, each under the request's seq."""
    header = struct.Struct("!4sHHHHiHHHH")
    listener = socket.create_server((common.LOCALHOST, 0))
    common.announce(common.READY, str(listener.getsockname()[1]))

    def answer(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(65536)
        view = memoryview(buf)
        have = 0
        while n := conn.recv_into(view[have:]):
            have += n
            while have >= header.size:
                fields = header.unpack_from(buf)
                size = header.size + fields[7] + fields[5]
                if have < size:
                    break
                reply = connect_ok if fields[2] == 1 else result if fields[2] == 4 else None
                if reply is not None:
                    conn.sendall(patched(reply, fields[4]))
                buf[:have - size] = buf[size:have]
                have -= size

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


# --- the client --------------------------------------------------------------------------------

def record(uri: str) -> list[bytes]:
    """CONNECT, CONNECTOK, a request for method(42) and its RESULT, as a proxy and the daemon at ``uri`` send them."""
    import pyro_loops
    host, port = uri.rsplit("@", 1)[1].rsplit(":", 1)
    listener = socket.create_server((common.LOCALHOST, 0))
    seen: list[bytes] = []

    def relay() -> None:
        conn, _ = listener.accept()
        with conn, socket.create_connection((host, int(port))) as upstream:
            for _ in range(2):  # the handshake, then one call
                request = conn.recv(65536)
                upstream.sendall(request)
                reply = upstream.recv(65536)
                conn.sendall(reply)
                seen.extend((request, reply))

    thread = threading.Thread(target=relay)
    thread.start()
    with pyro_loops.Proxy(f"PYRO:{common.OBJECT_ID}@{common.LOCALHOST}:{listener.getsockname()[1]}") as proxy:
        proxy.method(42)
        thread.join()
    return seen


class _AnsweringAtOnce:
    """Stands in for a proxy's socket: each request is answered at once with ``result``, seq patched."""

    def __init__(self, real: socket.socket, result: bytes) -> None:
        self.real, self.result, self.seq = real, result, 0
        self.timeout = real.timeout

    def sendall(self, data: bytes) -> None:
        self.seq = _seq_checksum.unpack_from(data, 10)[0]

    def recv_into(self, buf: bytearray) -> int:
        reply = patched(self.result, self.seq)
        buf[:len(reply)] = reply
        return len(reply)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def measure(args: argparse.Namespace) -> None:
    import pyro_loops
    pyro_loops.config.SOCK_NODELAY = True
    server_cpu, client_cpu = common.placement_cpus("split")
    if client_cpu is not None:
        common.pin(client_cpu)
    script = os.path.abspath(__file__)
    with common.child([script, "--serve-daemon"], server_cpu) as daemon:
        connect, connect_ok, request, result = record(common.read_tagged_line(daemon, common.READY, 30))
    with common.child([script, "--serve-replay", connect_ok.hex(), result.hex()], server_cpu) as replay:
        uri = f"PYRO:{common.OBJECT_ID}@{common.LOCALHOST}:{common.read_tagged_line(replay, common.READY, 30)}"
        proxy = pyro_loops.Proxy(uri)
        worker = pyro_loops.Proxy(uri)
        for _ in range(500):
            proxy.method(42)
            worker.method(42)
        worker._pyroLane.sock = _AnsweringAtOnce(worker._pyroLane.sock, result)
        raw = socket.create_connection((common.LOCALHOST, int(uri.rsplit(":", 1)[1])))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.sendall(connect)
        raw.recv(65536)
        requests = [patched(request, seq & 0xFFFF) for seq in range(1, args.calls + 1)]
        buf = bytearray(4096)

        def run_raw() -> None:
            send, recv = raw.sendall, raw.recv_into
            for data in requests:
                send(data)
                recv(buf)

        def run_proxy() -> None:
            for _ in requests:
                proxy.method(42)

        def run_raw_and_work() -> None:
            send, recv = raw.sendall, raw.recv_into
            for data in requests:
                send(data)
                recv(buf)
                worker.method(42)

        def run_work() -> None:
            for _ in requests:
                worker.method(42)

        kinds: dict[str, Callable[[], None]] = {
            "raw": run_raw, "proxy": run_proxy, "raw + proxy work": run_raw_and_work, "proxy work alone": run_work}
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in kinds}
        names = list(kinds)
        for number in range(args.rounds):
            for name in names[number % len(names):] + names[:number % len(names)]:
                cpu, start = time.process_time(), time.perf_counter()
                kinds[name]()
                rounds[name].append((time.perf_counter() - start, time.process_time() - cpu))
        rows = []
        for name, run in kinds.items():
            profile = cProfile.Profile()
            profile.runcall(run)
            calls = pstats.Stats(profile).total_calls / args.calls
            rows.append((name, statistics.median(r[0] for r in rounds[name]) / args.calls * 1e6,
                         statistics.median(r[1] for r in rounds[name]) / args.calls * 1e6, calls))
        raw.close()
        proxy._pyroRelease()
    common.print_table(["client", "round trip us", "CPU per call us", "function calls per call"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per client (default 5); medians reported")
    parser.add_argument("--serve-daemon", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-replay", nargs=2, metavar=("CONNECTOK", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_daemon:
        serve_daemon()
    elif args.serve_replay:
        serve_replay(bytes.fromhex(args.serve_replay[0]), bytes.fromhex(args.serve_replay[1]))
    else:
        common.print_header("client cost of a blocking Proxy call against a replay server",
                            {"calls": args.calls, "rounds": args.rounds})
        measure(args)
        common.print_footer()
    return 0


if __name__ == "__main__":
    sys.exit(main())
