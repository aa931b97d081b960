"""``python -m pyro_loops.demo``, the first command of the README, run as a new
user runs it: a subprocess with no display and no name server, whose report
must show every step working and which must leave no process behind."""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import subprocess
import sys

import pyro_loops.demo

LIMIT = 60  # seconds; the demo itself gives up on its client after 9


def run_demo(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_") and k != "DISPLAY"}
    return subprocess.run([sys.executable, "-m", "pyro_loops.demo", *args], capture_output=True, text=True,
                          timeout=LIMIT, env=env)


def assert_gone(pid: int) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    raise AssertionError(f"process {pid} is still there")


def test_main_job_reports_every_step_working_and_exits_0():
    done = run_demo()
    report = done.stdout
    assert done.returncode == 0, report + done.stderr
    for step in ("locate", "lookup", "call", "bytes", "oneway", "property", "stream", "exception", "worker", "burst"):
        assert re.search(rf"^  \[ok\] {step} ", report, re.M), f"step {step} missing:\n{report}"
    assert "FAILED" not in report
    assert "add(2, 3) = 5" in report
    assert "came back as bytes" in report
    assert "fetched [5, 4, 3, 2, 1]" in report
    assert "raised ZeroDivisionError('division by zero')" in report
    assert re.search(r"slow_square\(12, [\d.]+\) = 144 .* meanwhile the loop answered [1-9]\d* pings", report)
    counts = re.search(r"the client made (\d+) calls .* this process served (\d+)$", report, re.M)
    assert counts and counts.group(1) == counts.group(2), report
    # The burst stops after BURST_SECONDS on a slow or busy machine, so any count up to 2000 is right.
    burst = re.search(r"^burst: (\d+) calls in [\d.]+ s = [\d,]+ calls/s; latency p50 [\d.]+ ms, p99 [\d.]+ ms$",
                      report, re.M)
    assert burst and 0 < int(burst.group(1)) <= 2000, report
    assert re.search(r"^threads: every call ran in the loop's thread \(MainThread\) except slow_square "
                     r"\(in [^)]+\)$", report, re.M), report
    assert "pyro_loops.adapters.selectloop" in report
    assert report.rstrip().endswith("all steps worked")
    assert_gone(int(re.search(r"client process (\d+)", report).group(1)))


def test_main_job_runs_where_the_adapters_subpackage_is_not_importable():
    # README's first command, ``pip install . && python -m pyro_loops.demo`` in the
    # checkout, imports pyro_loops from the checkout, where adapters/ is no subpackage.
    code = ("import runpy, sys; sys.modules['pyro_loops.adapters'] = None; "
            "sys.argv[1:] = ['--burst', '50']; runpy.run_module('pyro_loops.demo', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("all steps worked")


def test_main_job_fails_and_stops_its_client_when_the_client_overruns():
    done = run_demo("--timeout", "0.05")
    assert done.returncode == 1
    assert "the client did not finish within 0.05 s; stopping it" in done.stdout
    assert_gone(int(re.search(r"client process (\d+)", done.stdout).group(1)))


def test_client_half_reports_a_missing_name_server_and_exits_1():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = run_demo("--client", f"PYRO:Pyro.NameServer@127.0.0.1:{port}")
    assert done.returncode == 1
    assert done.stdout.strip() == \
        '{"step": "locate", "ok": false, "text": "NamingError: Failed to locate the nameserver"}'


def test_pyro_loops_demo_command_runs_the_main_job():
    (entry,) = [ep for ep in importlib.metadata.entry_points(group="console_scripts")
                if ep.name == "pyro-loops-demo"]
    assert entry.load() is pyro_loops.demo.main
