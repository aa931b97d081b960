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
import logging
import os
import random
import re
import signal
import socket
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
FAULT_MIX = {**MIX, "burst": 0.002}  # the other faults come from the orchestrator (run_faults)
TWO_WAY = ("echo", "worker", "upload", "download")
VICTIM_DOWNLOAD = 16 << 20  # a killed client's large reply: the daemon is mid-send when it dies
CONTROL_TIMEOUT = 30.0
RESTART_TIMEOUT = 120.0  # a server starting or stopping on a loaded machine may take long


# --- the server ------------------------------------------------------------------------------

def make_service(pyro_loops: Any, stop_loop: Any) -> Any:
    expose, oneway, in_worker = pyro_loops.expose, pyro_loops.oneway, pyro_loops.in_worker

    class Soak:
        """Counts every call it serves, by kind; ``stats()`` returns the counts."""

        def __init__(self) -> None:
            self._lock = threading.Lock()  # worker calls count from other threads
            self._counts: collections.Counter = collections.Counter()
            self._started: set[int] = set()  # tags of slow() calls (fault mode only: few)
            self._finished: set[int] = set()

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
        @in_worker
        def slow(self, tag: int, seconds: float) -> int:
            """The call of a client that gets killed while it runs: it must finish all the same."""
            with self._lock:
                self._started.add(tag)
            time.sleep(seconds)
            with self._lock:
                self._finished.add(tag)
            return tag

        @expose
        def stats(self) -> dict:
            with self._lock:
                return {**self._counts, "slow_started": sorted(self._started),
                        "slow_finished": sorted(self._finished)}

        @expose
        @oneway
        def stop(self) -> None:
            stop_loop()

    return Soak


class DropCounter(logging.Handler):
    """Counts the requests the daemon says it dropped at close (its log is the only report a
    oneway caller can get) and keeps the rest of the log out of the unread stderr pipe."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.dropped = 0
        self.lines: collections.Counter = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.lines[text.split(" from ")[0].split(" of ")[0][:60]] += 1
        match = re.match(r"(\d+) queued requests of .* dropped unanswered", text)
        if match:
            self.dropped += int(match.group(1))


def serve(args: argparse.Namespace) -> None:
    import pyro_loops

    drops = DropCounter()
    if args.faults:
        logger = logging.getLogger("pyro_loops")
        logger.addHandler(drops)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    pyro_loops.config.SERVERTYPE = args.servertype
    pyro_loops.config.SOCK_NODELAY = True
    daemon = pyro_loops.Daemon(host=common.LOCALHOST, port=args.port)
    if args.host == "qt":
        from PyQt5 import QtWidgets

        from pyro_loops.adapters import qt

        app = QtWidgets.QApplication(["soak"])
        qt.attach(daemon, app)
        service = make_service(pyro_loops, app.quit)()
        uri = daemon.register(service, OBJECT_ID)
        common.announce(common.READY, str(uri))
        app.exec_()
    else:
        from pyro_loops.adapters import selectloop

        loop = selectloop.SelectLoop()
        selectloop.attach(daemon, loop)
        service = make_service(pyro_loops, loop.stop)()
        uri = daemon.register(service, OBJECT_ID)
        common.announce(common.READY, str(uri))
        loop.run()
        loop.close()
    daemon.close()
    for thread in threading.enumerate():  # the workers finish what they had begun or queued
        if thread is not threading.current_thread():
            thread.join(CONTROL_TIMEOUT)
    # the final counts of this incarnation: calls that arrived after the last stats() included
    common.announce(common.RESULT, {**service.stats(), "dropped_at_close": drops.dropped,
                                    "log": dict(drops.lines.most_common(12))})


# --- the clients -----------------------------------------------------------------------------

class Generation:
    """Which incarnation of the server is up, shared through a file the orchestrator rewrites.

    A client reads it before each call; a connection error is expected (and
    reported to its caller as it should be) when a restart happened since the
    client's last answered call, and a bug otherwise.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path

    def read(self) -> tuple[int, bool] | None:
        """(incarnation, running), or None without a file (no restarts)."""
        if self.path is None:
            return None
        with open(self.path) as f:
            number, state = f.read().split()
        return int(number), state == "running"

    def write(self, number: int, running: bool) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{number} {'running' if running else 'stopping'}")
        os.replace(tmp, self.path)

    def affected(self, answered_in: tuple[int, bool] | None) -> bool:
        """Whether a restart may explain an error after the last answer, seen in ``answered_in``."""
        now = self.read()
        return now is not None and (answered_in is None or not answered_in[1] or now != answered_in)


def client_thread(uri: str, seconds: float, seed: int, payload: bytes, out: dict, mix: dict,
                  generation: Generation) -> None:
    """One client: a proxy making a random mix of calls until the time is up."""
    import pyro_loops

    rng = random.Random(seed)
    made: collections.Counter = collections.Counter()  # attempts, by kind
    answered: collections.Counter = collections.Counter()  # two-way calls answered, by kind
    # oneway calls sent: confirmed by a later answer on the same connection or sent before a clean
    # close (both must run), or caught by a restart (may be dropped at close: logged)
    oneway: collections.Counter = collections.Counter()
    unsure = 0  # oneway calls sent since the last answer on this connection
    errors: collections.Counter = collections.Counter()
    restart_errors: collections.Counter = collections.Counter()
    latencies: list[int] = []

    def new_proxy() -> Any:
        proxy = pyro_loops.Proxy(uri)
        proxy._pyroTimeout = CONTROL_TIMEOUT
        return proxy

    def release(proxy: Any) -> None:
        nonlocal unsure
        proxy._pyroRelease()
        oneway["closed after" if generation.read() == seen else "caught by restart"] += unsure
        unsure = 0

    proxy = new_proxy()
    seen = answered_in = generation.read()
    thresholds = []
    total = 0.0
    for kind, share in mix.items():
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
        seen = generation.read()
        try:
            if kind == "reconnect":
                release(proxy)  # the next call connects again
            elif kind == "new_proxy":
                release(proxy)
                proxy = new_proxy()
            elif kind == "burst":  # oneway calls, then a close at once: all of them must run
                for _ in range(rng.randrange(20, 200)):
                    made["oneway"] += 1
                    proxy.note(i)
                    unsure += 1
                release(proxy)
            elif kind == "oneway":
                proxy.note(i)
                unsure += 1
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
            if kind in TWO_WAY:
                answered[kind] += 1
                answered_in = seen
                oneway["confirmed"] += unsure
                unsure = 0
        except Exception as exc:  # counted and reported: the soak must see every kind of failure
            text = f"{kind}: {type(exc).__name__}: {exc}"[:200]
            restarted = (isinstance(exc, pyro_loops.errors.CommunicationError) or "daemon closed" in str(exc)) \
                and generation.affected(answered_in)
            (restart_errors if restarted else errors)[text] += 1
            oneway["caught by restart"] += unsure
            unsure = 0
            proxy._pyroRelease()
            if restarted:
                time.sleep(0.1)  # the server is restarting: do not spin on refused connections
    release(proxy)
    out.update(made=made, answered=answered, oneway=oneway, errors=errors, restart_errors=restart_errors,
               latencies=latencies)


def client_process(args: argparse.Namespace) -> dict:
    payload = os.urandom(BIG)
    results: list[dict] = []
    threads = []
    for n in range(args.threads):
        out: dict = {}
        results.append(out)
        seed = args.seed * 1000 + n
        threads.append(threading.Thread(target=client_thread, args=(
            args.uri, args.seconds, seed, payload, out, FAULT_MIX if args.faults else MIX, Generation(args.genfile))))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    latencies: list[int] = []
    for out in results:
        for key in ("made", "answered", "oneway", "errors", "restart_errors"):
            totals[key].update(out.get(key, {}))
        if not out:
            totals["errors"]["client thread ended without a result"] += 1
        latencies.extend(out.get("latencies", []))
    latencies.sort()
    return {**totals, "echo_calls": len(latencies),
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


# --- the faults (--faults) ---------------------------------------------------------------------

def victim(args: argparse.Namespace) -> None:
    """A client process the orchestrator kills while its call runs (or its large reply is sent)."""
    proxy = control_proxy(args.uri)
    proxy._pyroBind()
    common.announce(common.READY, "calling")
    if args.victim == "slow":
        proxy.slow(args.seed, 1.0)
    else:
        proxy.download(VICTIM_DOWNLOAD)


def half_close(host: str, port: int, tag: int) -> list:
    """Pipeline three echo calls on a raw connection, half-close it, and read the three answers."""
    from pyro_loops import _protocol

    protocol = _protocol.ClientProtocol("serpent")
    values: list = []
    with socket.create_connection((host, port), timeout=CONTROL_TIMEOUT) as sock:
        sock.sendall(protocol.connect(OBJECT_ID))
        calls = 0
        while True:
            event = protocol.next_event()
            if event is None:
                data = sock.recv(65536)
                protocol.receive_data(data)
                continue
            if isinstance(event, _protocol.Connected):
                sock.sendall(b"".join(protocol.invoke(OBJECT_ID, "echo", [[tag, k]], {}).data for k in range(3)))
                sock.shutdown(socket.SHUT_WR)
                calls = 3
            elif isinstance(event, _protocol.Result):
                values.append(event.value)
                if len(values) == calls:
                    return values
            else:
                raise ConnectionError(f"half-closed connection got {event!r} after {len(values)} answers")


def fault_actor(kind: str, args: argparse.Namespace, uri: str, generation: Generation, stop: threading.Event,
                tally: collections.Counter, cpu: int | None) -> None:
    """Every ``args.fault_every`` seconds: kill a client mid-call, or half-close after pipelined calls."""
    host, port = uri.split("@")[1].rsplit(":", 1)
    tag = 0
    while not stop.wait(args.fault_every):
        tag += 1
        seen = generation.read()
        try:
            if kind == "halfclose":
                tally["halfclose echo made"] += 3
                values = half_close(host, int(port), tag)
                if values != [[tag, k] for k in range(3)]:
                    raise AssertionError(f"half-close answers {values!r}")
                tally["halfclose echo answered"] += 3
                continue
            what = "slow" if tag % 2 else "download"
            proc = common.spawn([os.path.abspath(__file__), "--victim", what, "--uri", uri,
                                 "--seed", str(tag)], cpu)
            try:
                common.read_tagged_line(proc, common.READY, CONTROL_TIMEOUT)
                time.sleep(0.3)  # the call is on its way or running
                proc.send_signal(signal.SIGKILL)
                proc.wait(CONTROL_TIMEOUT)
                tally[f"victims killed ({what})"] += 1
            finally:
                common.stop(proc)
        except Exception as exc:  # a restart explains connection errors; anything else is a failure
            restarted = isinstance(exc, (OSError, common.ChildFailed)) and generation.affected(seen)
            tally[f"{kind} {'failed in a restart' if restarted else 'FAILED'}: {type(exc).__name__}: {exc}"[:160]] += 1


def run_faults(args: argparse.Namespace) -> dict:
    """The soak with faults: see the module docstring."""
    import tempfile

    server_cpu, client_cpu = common.placement_cpus("split")
    env = {"QT_QPA_PLATFORM": "offscreen"}
    me = os.path.abspath(__file__)
    with tempfile.TemporaryDirectory() as tmp:
        generation = Generation(os.path.join(tmp, "generation"))
        number = 1
        generation.write(number, True)
        server_args = [me, "--serve", "--faults", "--host", args.host, "--servertype", args.servertype]
        server = common.spawn([*server_args, "--port", "0"], server_cpu, env)
        uri = common.read_tagged_line(server, common.READY, CONTROL_TIMEOUT)
        port = uri.rsplit(":", 1)[1]
        control_proxy(uri).stats()  # imports and first connection done before the idle figures
        samples = [snapshot(server.pid, "idle, before clients (1st server)")]
        incarnations: list[dict] = []
        tally: collections.Counter = collections.Counter()
        stop = threading.Event()
        per_process = [args.clients // args.processes + (1 if k < args.clients % args.processes else 0)
                       for k in range(args.processes)]
        clients = [common.spawn([me, "--client", "--faults", "--genfile", generation.path, "--uri", uri,
                                 "--seconds", str(args.seconds), "--threads", str(n), "--seed", str(k + 1)],
                                client_cpu) for k, n in enumerate(per_process)]
        actors = [threading.Thread(target=fault_actor, args=(kind, args, uri, generation, stop, tally, client_cpu))
                  for kind in ("halfclose", "victim")]
        for actor in actors:
            actor.start()
        started = time.monotonic()

        def stop_server() -> None:
            with control_proxy(uri) as control:
                control.stop()
            incarnations.append(json.loads(common.read_tagged_line(server, common.RESULT, RESTART_TIMEOUT)))
            server.wait(RESTART_TIMEOUT)
            common.stop(server)

        try:
            next_sample = started + args.sample
            next_restart = started + args.restart_every
            while True:
                now = time.monotonic()
                if now >= started + args.seconds - 1:
                    break
                if now >= next_sample:
                    samples.append(snapshot(server.pid, f"under load, t={now - started:.0f} s (server {number})"))
                    next_sample += args.sample
                if now >= next_restart and now < started + args.seconds - args.restart_every / 2:
                    generation.write(number + 1, False)
                    stop_server()
                    number += 1
                    server = common.spawn([*server_args, "--port", port], server_cpu, env)
                    common.read_tagged_line(server, common.READY, RESTART_TIMEOUT)
                    generation.write(number, True)
                    next_restart += args.restart_every
                time.sleep(0.2)
            reports = [json.loads(common.read_tagged_line(c, common.RESULT, CONTROL_TIMEOUT + 60)) for c in clients]
        except BaseException:
            common.stop(server)
            raise
        finally:
            stop.set()
            for actor in actors:
                actor.join()
            for c in clients:
                common.stop(c)
        totals: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for rep in reports:
            for key in ("made", "answered", "oneway", "errors", "restart_errors"):
                totals[key].update(rep[key])
        totals["made"]["echo"] += tally.pop("halfclose echo made", 0)
        totals["answered"]["echo"] += tally.pop("halfclose echo answered", 0)
        totals["made"]["download"] += tally["victims killed (download)"]
        wait_for_fds(server.pid, samples[0]["fds"], 10.0)
        time.sleep(2.0)  # oneway jobs and killed clients' calls finish
        samples.append(snapshot(server.pid, f"idle, after clients (server {number})"))
        stop_server()
        server_exit = server.returncode
    served: collections.Counter = collections.Counter()
    unfinished = 0
    for inc in incarnations:
        unfinished += len(set(inc.pop("slow_started")) - set(inc.pop("slow_finished")))
        served.update({k: v for k, v in inc.items() if isinstance(v, int)})
    kinds = ("echo", "worker", "oneway", "upload", "download")
    made, answered, oneway = totals["made"], totals["answered"], totals["oneway"]
    must_run = oneway["confirmed"] + oneway["closed after"]
    problems = [f"{k}: answered {answered[k]} > served {served[k]}" for k in TWO_WAY if answered[k] > served[k]]
    problems += [f"{k}: served {served[k]} > made {made[k]}" for k in kinds if served[k] > made[k]]
    if served["oneway"] + served["dropped_at_close"] < must_run:
        problems.append(f"oneway: served {served['oneway']} (and {served['dropped_at_close']} requests logged as "
                        f"dropped at close) < {must_run} that had to run")
    sent = sum(oneway.values())  # oneway calls whose send did not raise
    unaccounted = sent - served["oneway"] - served["dropped_at_close"]
    if unaccounted > oneway["caught by restart"]:
        problems.append(f"oneway: {unaccounted} neither run nor logged, more than the "
                        f"{oneway['caught by restart']} caught by a restart")
    if unfinished:
        problems.append(f"{unfinished} calls of killed clients began and never finished")
    return {
        "host": args.host, "seconds": args.seconds, "clients": args.clients, "processes": args.processes,
        "faults": True, "servers": number, "calls_made": {k: made[k] for k in kinds},
        "calls_answered": {k: answered[k] for k in TWO_WAY}, "calls_served": dict(served),
        "lost": {k: (max(0, unaccounted - oneway["caught by restart"]) if k == "oneway"
                     else answered[k] - min(answered[k], served[k])) for k in kinds},
        "oneway": dict(oneway), "faults_done": dict(tally), "problems": problems,
        "reconnects": made["reconnect"] + made["new_proxy"] + made["burst"], "bursts": made["burst"],
        "errors": dict(totals["errors"]), "restart_errors": dict(totals["restart_errors"]),
        "server_log": [inc.get("log", {}) for inc in incarnations],
        "samples": samples,
        "echo_p50_us_median": sorted(r["echo_p50_us"] for r in reports)[len(reports) // 2],
        "echo_p99_us_worst": max(r["echo_p99_us"] for r in reports),
        "echo_max_us": max(r["echo_max_us"] for r in reports),
        "server_exit": server_exit,
    }


def report_faults(result: dict) -> None:
    print(f"\nfault mode: {result['servers']} server incarnations, {result['bursts']:,} oneway bursts then close")
    print("two-way calls answered: " + ", ".join(f"{k} {v:,}" for k, v in result["calls_answered"].items()))
    print("oneway calls sent: " + ", ".join(f"{k} {v:,}" for k, v in result["oneway"].items())
          + f"; dropped at a restart, logged by the daemon: {result['calls_served'].get('dropped_at_close', 0):,}")
    for text, count in sorted(result["faults_done"].items()):
        print(f"  {count:,} x {text}")
    restart_errors = result["restart_errors"]
    print(f"errors reported to callers during restarts (expected): {sum(restart_errors.values()):,}")
    for text, count in sorted(restart_errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  {count:,} x {text}")
    print(f"accounting problems: {len(result['problems'])}")
    for text in result["problems"]:
        print(f"  {text}")


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
    if result.get("faults"):
        report_faults(result)
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
    parser.add_argument("--faults", action="store_true",
                        help="kill clients mid-call, half-close, oneway bursts then close, restart the server")
    parser.add_argument("--restart-every", type=float, default=120.0, metavar="S",
                        help="--faults: seconds between server restarts (default 120)")
    parser.add_argument("--fault-every", type=float, default=1.0, metavar="S",
                        help="--faults: seconds between killed clients, and between half-closes (default 1)")
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--genfile", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--victim", choices=["slow", "download"], default=None, help=argparse.SUPPRESS)
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
    if args.victim:
        victim(args)
        return 0
    if not 1 <= args.processes <= args.clients:
        parser.error("need 1 <= --processes <= --clients")
    common.pin(common.CLIENT_CPU)  # keep the orchestrator off the server's CPU
    common.print_header("soak", {
        "host": args.host, "servertype": args.servertype, "seconds": args.seconds,
        "clients": f"{args.clients} threads in {args.processes} processes, each with its own proxy",
        "mix": ", ".join(f"{k} {v:.1%}" for k, v in (FAULT_MIX if args.faults else MIX).items())
               + f", echo the rest; payloads {BIG:,} bytes",
        "faults": f"restart every {args.restart_every:g} s, a killed client and a half-close every "
                  f"{args.fault_every:g} s" if args.faults else "none",
        "placement": f"server on CPU {common.SERVER_CPU}, clients on CPU {common.CLIENT_CPU}"
                     if common.can_pin() else "not pinned (cannot pin here)",
        "versions": common.versions("pyro-loops", "PyQt5", "serpent"),
    })
    result = run_faults(args) if args.faults else run(args)
    report(result)
    common.print_footer()
    common.write_json(args.json, {"result": result, "args": vars(args)})
    failed = sum(result["errors"].values()) or any(result["lost"].values()) or result.get("problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
