"""Helpers shared by the benchmark scripts: pinning, child processes, statistics, tables.

Every benchmark runs its server and its clients in separate processes, each
pinned to its own CPU before the interpreter starts: on a 2-core machine an
unpinned run can swing by a factor of two depending on where the scheduler
happens to put the two sides. The orchestrating process only starts children
and collects the single JSON line each client prints at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import selectors
import shlex
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

SERVER_CPU = 0
CLIENT_CPU = 1
LOCALHOST = "127.0.0.1"
OBJECT_ID = "bench.obj"
READY = "READY"
RESULT = "RESULT"


# --- pinning and child processes -------------------------------------------------------------

# Captured before anything is pinned: the orchestrator pins itself to the client
# CPU and must still be able to place its children on the server CPU.
USABLE_CPUS = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()


def can_pin() -> bool:
    """Pinning needs sched_setaffinity and at least two CPUs we are allowed to use."""
    return hasattr(os, "sched_setaffinity") and len(USABLE_CPUS) >= 2


def pin(cpu: int) -> bool:
    """Pin the calling process (and threads it starts later) to one CPU, if possible."""
    if not can_pin() or cpu not in USABLE_CPUS:
        return False
    os.sched_setaffinity(0, {cpu})
    return True


PLACEMENTS = {
    "split": "server on CPU 0, client on CPU 1",
    "same": "server and client both on CPU 0",
    "free": "not pinned: the scheduler places both",
}


def placement_cpus(placement: str) -> tuple[int | None, int | None]:
    """(server CPU, client CPU) for a placement name; None means not pinned."""
    if placement == "free" or not can_pin():
        return None, None
    if placement == "same":
        return SERVER_CPU, SERVER_CPU
    return SERVER_CPU, CLIENT_CPU


def spawn(args: Sequence[str], cpu: int | None, env: dict[str, str] | None = None,
          stdin: bool = False) -> subprocess.Popen:
    """Start ``python args...`` pinned to ``cpu`` from its first instruction.

    The affinity is set in the forked child before exec, so the interpreter,
    every thread it starts and every library it loads run on that CPU only.
    """
    child_env = dict(os.environ)
    if env:
        child_env.update(env)
    child_env["PYTHONUNBUFFERED"] = "1"
    preexec = (lambda: pin(cpu)) if cpu is not None else None
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env,
        preexec_fn=preexec,
        bufsize=0,
    )


class ChildFailed(RuntimeError):
    """A child process died or did not answer in time; the message carries its stderr tail."""


def _stderr_tail(proc: subprocess.Popen, lines: int = 6) -> str:
    if proc.poll() is None:
        return ""
    text = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    return " | ".join(text.strip().splitlines()[-lines:])


def read_tagged_line(proc: subprocess.Popen, tag: str, timeout: float) -> str:
    """Return the rest of the first stdout line that starts with ``tag``.

    Reads the unbuffered pipe with a deadline so a child that hangs or dies
    turns into a ChildFailed instead of a frozen benchmark.
    """
    deadline = time.monotonic() + timeout
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(tag + " "):
                    return text[len(tag) + 1:]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildFailed(f"no {tag} line within {timeout:.0f} s")
            if not sel.select(remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                proc.wait(timeout=5)
                raise ChildFailed(f"exited with {proc.returncode} before {tag}: {_stderr_tail(proc)}")
            buf += chunk
    finally:
        sel.close()


def announce(tag: str, payload: Any) -> None:
    """Child side of read_tagged_line: one line, flushed at once."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    sys.stdout.write(f"{tag} {text}\n")
    sys.stdout.flush()


def stop(proc: subprocess.Popen) -> None:
    """Terminate a child we started, escalating to SIGKILL if it ignores SIGTERM."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream:
            stream.close()


@contextlib.contextmanager
def child(args: Sequence[str], cpu: int | None, env: dict[str, str] | None = None,
          stdin: bool = False) -> Iterator[subprocess.Popen]:
    proc = spawn(args, cpu, env, stdin)
    try:
        yield proc
    finally:
        stop(proc)


def run_client(args: Sequence[str], cpu: int | None, timeout: float,
               env: dict[str, str] | None = None) -> dict:
    """Run a client process to completion and return the JSON it announced as RESULT."""
    with child(args, cpu, env) as proc:
        return json.loads(read_tagged_line(proc, RESULT, timeout))


# --- timing and statistics -------------------------------------------------------------------

def time_calls(call: Callable[[int], Any], count: int) -> tuple[float, list[int]]:
    """Make ``count`` sequential calls; return the total seconds and each call's nanoseconds."""
    lat = [0] * count
    clock = time.perf_counter_ns
    start = clock()
    for i in range(count):
        t0 = clock()
        call(42)
        lat[i] = clock() - t0
    return (clock() - start) / 1e9, lat


def timed_threads(targets: Sequence[Callable[[], Any]], barrier: threading.Barrier) -> float:
    """Run each target in a thread of its own and return the seconds from the moment all of
    them (and this thread) pass ``barrier`` until the last has ended: set-up before the
    barrier is not counted."""
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def summarize(elapsed: float, lat_ns: Sequence[int]) -> dict:
    """calls/s over the whole run, and p50/p99/max per-call latency in microseconds."""
    ordered = sorted(lat_ns)
    return {
        "calls": len(ordered),
        "seconds": elapsed,
        "calls_per_s": len(ordered) / elapsed if elapsed > 0 else float("nan"),
        "p50_us": percentile(ordered, 50) / 1e3,
        "p99_us": percentile(ordered, 99) / 1e3,
        "max_us": ordered[-1] / 1e3 if ordered else float("nan"),
    }


def median_round(rounds: Sequence[dict], key: str = "calls_per_s") -> dict:
    """The round whose ``key`` is the median (the lower middle one for an even count).

    Reporting one whole round keeps its calls/s and latencies consistent with
    each other, which separate per-column medians would not.
    """
    ordered = sorted(rounds, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]


# --- process accounting (idle cost) ----------------------------------------------------------

def process_counters(pid: int) -> dict:
    """CPU time and context switches of every thread of ``pid``, read from /proc.

    Read from outside the process so that measuring idleness does not wake it.
    CPU time comes from schedstat (nanoseconds) where the kernel has it, else
    from stat (clock ticks, 10 ms resolution).
    """
    cpu_ns = 0
    voluntary = involuntary = 0
    have_schedstat = True
    task_dir = f"/proc/{pid}/task"
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        voluntary += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        involuntary += int(line.split()[1])
            if have_schedstat:
                try:
                    with open(f"{task_dir}/{tid}/schedstat") as f:
                        cpu_ns += int(f.read().split()[0])
                except OSError:
                    have_schedstat = False
        except FileNotFoundError:  # thread exited while we were reading
            continue
    if not have_schedstat:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        cpu_ns = ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return {"cpu_ns": cpu_ns, "voluntary": voluntary, "involuntary": involuntary,
            "threads": len(os.listdir(task_dir)), "cpu_source": "schedstat" if have_schedstat else "stat"}


def idle_cost(pid: int, seconds: float) -> dict:
    """CPU seconds and wakeups (voluntary context switches) of ``pid`` over ``seconds``."""
    before = process_counters(pid)
    time.sleep(seconds)
    after = process_counters(pid)
    return {
        "seconds": seconds,
        "cpu_s": (after["cpu_ns"] - before["cpu_ns"]) / 1e9,
        "wakeups": after["voluntary"] - before["voluntary"],
        "involuntary": after["involuntary"] - before["involuntary"],
        "threads": after["threads"],
        "cpu_source": after["cpu_source"],
    }


# --- Xvfb ------------------------------------------------------------------------------------

@contextlib.contextmanager
def display() -> Iterator[dict[str, str]]:
    """Yield the environment a Tk child needs: the current DISPLAY, or a private Xvfb.

    The Xvfb is started on the first display number with no lock file and no
    socket, and stopped on exit.
    """
    if os.environ.get("DISPLAY"):
        yield {"DISPLAY": os.environ["DISPLAY"]}
        return
    if shutil.which("Xvfb") is None:
        raise ChildFailed("DISPLAY is unset and Xvfb is not installed")
    number = next(n for n in range(90, 400)
                  if not os.path.exists(f"/tmp/.X{n}-lock")
                  and not os.path.exists(f"/tmp/.X11-unix/X{n}"))
    proc = subprocess.Popen(["Xvfb", f":{number}", "-nolisten", "tcp", "-screen", "0", "800x600x24"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(f"/tmp/.X11-unix/X{number}"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ChildFailed(f"Xvfb :{number} did not start: {_stderr_tail(proc)}")
            time.sleep(0.05)
        yield {"DISPLAY": f":{number}"}
    finally:
        stop(proc)


# --- reporting -------------------------------------------------------------------------------

def machine_facts() -> dict:
    facts = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": sorted(USABLE_CPUS),
        "pinned": can_pin(),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "source": source_state(),
    }
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    facts["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    return facts


def source_state() -> str:
    """The commit the measured code is at, and whether library files differ from it.

    Figures belong to a commit; uncommitted edits to the core or the adapters
    make them belong to nothing anyone can check out again, so say so.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "pyro_loops", "adapters"],
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"{head or 'unknown'}" + (f" plus uncommitted changes in {', '.join(changed)}" if changed else " (clean)")


def versions(*modules: str) -> dict[str, str]:
    """Installed versions of the given distributions ("not installed" where absent)."""
    from importlib import metadata

    found = {}
    for name in modules:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def command_line() -> str:
    return shlex.join([os.path.basename(sys.executable), *sys.argv])


def print_header(title: str, extra: dict[str, Any]) -> None:
    print(f"== {title}")
    print(f"command: {command_line()}")
    for key, value in {**machine_facts(), **extra}.items():
        print(f"{key}: {value}")
    if not can_pin():
        print("WARNING: cannot pin server and client to separate CPUs here")
    print()


def print_footer() -> None:
    """Repeat the command under the tables, with the load now, for copying figures with their command."""
    print(f"\ncommand: {command_line()}   (1-min load average at the end: {os.getloadavg()[0]:.2f})")


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table: first column left-aligned, the numbers right-aligned."""
    cells = [list(headers)] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def write_json(path: str | None, data: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump({"command": command_line(), "machine": machine_facts(), **data}, f, indent=2)
        print(f"\nwrote {path}")
