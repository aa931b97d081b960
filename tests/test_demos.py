"""The demos, run as a user runs them: each demo is a subprocess, driven by
``demos/client.py`` from another process, and judged by what its window
shows (read back from the widgets by the remote ``state()`` query) and by the
log lines it prints. Every process is stopped in teardown."""

from __future__ import annotations

import ast
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pyro_loops

DEMOS = Path(__file__).resolve().parent.parent / "demos"
WAIT = 20.0      # seconds any single wait for a demo's output may take
HOST = "127.0.0.1"


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class DemoProcess:
    """A demo running in a subprocess; its stdout lines are collected by a reader thread."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env or demo_env())
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for(self, pattern: str) -> re.Match:
        """The first new output line matching ``pattern``; fails after WAIT seconds or at exit."""
        deadline = time.monotonic() + WAIT
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {WAIT} s; output:\n"
                                     + "\n".join(self.output)) from None
            if line is None:
                raise AssertionError(f"demo exited ({self.proc.wait()}) before printing {pattern!r}; "
                                     "output:\n" + "\n".join(self.output))
            self.output.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def stop(self) -> int:
        """SIGTERM (the demos quit cleanly on it), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=WAIT)
        self.proc.stdout.close()
        return self.proc.returncode


@pytest.fixture
def start_demo():
    started: list[DemoProcess] = []

    def start(script: str, *args: str, env: dict[str, str] | None = None) -> DemoProcess:
        """``script`` is a file in demos/, or ``-m`` and a module."""
        argv = [sys.executable, script] if script == "-m" else [sys.executable, str(DEMOS / script)]
        demo = DemoProcess(argv + list(args), env=env)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.stop()


def client(*args: str) -> str:
    """Run demos/client.py to completion; its stdout (it must succeed)."""
    done = subprocess.run([sys.executable, str(DEMOS / "client.py"), *args, "--timeout", "15"],
                          capture_output=True, text=True, timeout=60, env=demo_env())
    assert done.returncode == 0, f"client {args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def result_of(output: str, call: str):
    """The value the client printed for ``call`` (as ``call -> repr``)."""
    for line in output.splitlines():
        if line.startswith(call + " -> "):
            return ast.literal_eval(line[len(call) + 4:])
    raise AssertionError(f"no result for {call} in client output:\n{output}")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@pytest.fixture
def name_server(start_demo):
    """A name server in its own process (the pyro-loops-ns command), on a free port of 127.0.0.1."""
    ns = start_demo("-m", "pyro_loops.naming", "-n", HOST, "-p", "0", "-x")
    return ns.wait_for(r"NS running on (\S+)").group(1)


def start_qt(start_demo, *args: str) -> tuple[DemoProcess, str]:
    demo = start_demo("qt_app.py", "--host", HOST, *args, env=demo_env(QT_QPA_PLATFORM="offscreen"))
    uri = demo.wait_for(r"^uri = (\S+)").group(1)
    demo.wait_for("^ready")
    return demo, uri


def start_tk(start_demo, *args: str) -> tuple[DemoProcess, str]:
    if not os.environ.get("DISPLAY"):
        pytest.skip("no X display (pytest-xvfb starts one when Xvfb is installed)")
    demo = start_demo("tk_app.py", "--host", HOST, *args)
    uri = demo.wait_for(r"^uri = (\S+)").group(1)
    demo.wait_for("^ready")
    return demo, uri


@pytest.mark.parametrize("script", ["qt_app.py", "tk_app.py", "custom_loop.py", "asyncio_service.py", "client.py",
                                    "qt_client.py", "tk_client.py", "asyncio_client.py"])
def test_every_demo_explains_its_options(script):
    done = subprocess.run([sys.executable, str(DEMOS / script), "--help"], capture_output=True, text=True,
                          timeout=60, env=demo_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")
    assert "--" in done.stdout


# --- Qt ---------------------------------------------------------------------------------

def test_qt_window_shows_what_remote_calls_did(start_demo):
    demo, uri = start_qt(start_demo, "--ns", "none")
    out = client(uri, "--call", "increment", "5", "--call", "add_message", "hello qt",
                 "--call", "set_progress", "40", "--call", "state")
    assert result_of(out, "increment(5)") == 5
    state = result_of(out, "state()")
    assert state["counter"] == 5
    assert state["messages"] == ["hello qt"]
    assert state["progress"] == 40
    assert state["uri"] == uri
    assert any(line.endswith("increment(5) -> 5") for line in state["log"])
    assert any(line.endswith("set_progress(40) -> 40") for line in state["log"])
    demo.wait_for(r"^LOG .*add_message\('hello qt'\) -> 1$")


def test_qt_window_keeps_serving_while_the_worker_method_runs(start_demo):
    demo, uri = start_qt(start_demo, "--ns", "none")
    out = client(uri)  # the tour: long_task(1.5) on one connection, quick calls on another meanwhile
    answered = re.search(r"^long_task\(1\.5\) -> 'worked 1\.5 s in (\S+)' after [\d.]+ s; "
                         r"meanwhile (\d+) quick calls were answered$", out, re.M)
    assert answered, out
    assert answered.group(1) != "MainThread"
    assert int(answered.group(2)) > 0
    state = result_of(out, "state()")
    assert state["progress"] == 100  # the worker's progress signals reached the bar
    assert state["counter"] == 3
    demo.wait_for(r"long_task\(1\.5\) -> .*\[in pyro_loops-worker")


def test_qt_demo_registers_with_a_name_server_and_removes_its_name_on_exit(start_demo, name_server):
    demo, uri = start_qt(start_demo, "--ns", name_server)
    out = client("qt", "--ns", name_server, "--call", "increment", "2")
    assert result_of(out, "increment(2)") == 2
    with pyro_loops.Proxy(f"PYRO:Pyro.NameServer@{name_server}") as ns:
        ns._pyroTimeout = WAIT
        assert ns.lookup("demo.qt") == pyro_loops.URI(uri)
        assert demo.stop() == 0
        assert "demo.qt" not in ns.list()


# --- Tk ---------------------------------------------------------------------------------

def test_tk_window_shows_what_remote_calls_did(start_demo):
    demo, uri = start_tk(start_demo, "--ns", "none")
    out = client(uri, "--call", "increment", "7", "--call", "add_message", "hello tk",
                 "--call", "set_progress", "55", "--call", "state")
    state = result_of(out, "state()")
    assert state["counter"] == 7
    assert state["messages"] == ["hello tk"]
    assert state["progress"] == 55
    assert any(line.endswith("add_message('hello tk') -> 1") for line in state["log"])
    demo.wait_for(r"^LOG .*set_progress\(55\) -> 55$")


def test_tk_window_keeps_serving_while_the_worker_method_runs(start_demo):
    demo, uri = start_tk(start_demo, "--ns", "none")
    out = client(uri)
    answered = re.search(r"^long_task\(1\.5\) -> .* meanwhile (\d+) quick calls were answered$", out, re.M)
    assert answered, out
    assert int(answered.group(1)) > 0
    state = result_of(out, "state()")
    assert state["progress"] == 100  # the worker's news reached the Tk thread
    assert any("[in pyro_loops-worker" in line for line in state["log"])


def test_tk_demo_carries_on_without_a_name_server(start_demo):
    port = closed_port()
    demo, uri = start_tk(start_demo, "--ns", f"{HOST}:{port}")
    assert any(f"none found at {HOST}:{port}" in line for line in demo.output)
    assert result_of(client(uri, "--call", "increment", "1"), "increment(1)") == 1


# --- the custom selectors loop ------------------------------------------------------------

def start_custom(start_demo) -> tuple[DemoProcess, str, int]:
    demo = start_demo("custom_loop.py", "--host", HOST, "--ns-port", "0")
    ns_location = demo.wait_for(r"^name server = PYRO:Pyro\.NameServer@(\S+)").group(1)
    udp_port = int(demo.wait_for(r"^udp = [\d.]+:(\d+)").group(1))
    demo.wait_for("^ready")
    return demo, ns_location, udp_port


def test_custom_loop_serves_name_server_daemon_and_its_own_udp_service(start_demo):
    demo, ns_location, udp_port = start_custom(start_demo)
    out = client("custom", "--ns", ns_location, "--call", "increment", "4", "--call", "add_message", "hi")
    assert result_of(out, "increment(4)") == 4
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(WAIT)
        udp.sendto(b"are you there", (HOST, udp_port))
        assert udp.recv(100) == b"echo #1: are you there"
    state = result_of(client("custom", "--ns", ns_location, "--call", "state"), "state()")
    assert state["counter"] == 4
    assert state["messages"] == ["hi"]
    assert state["udp_datagrams"] == 1
    assert state["name_server"] == f"PYRO:Pyro.NameServer@{ns_location}"
    assert any("udp datagram b'are you there'" in line for line in state["log"])
    demo.wait_for(r"^LOG .*increment\(4\) -> 4$")
    assert demo.stop() == 0
    demo.wait_for(r"^stopped after \d+ loop iterations$")


def test_custom_loop_does_not_wake_up_while_idle(start_demo):
    demo, ns_location, _ = start_custom(start_demo)
    with pyro_loops.Proxy(f"PYRONAME:demo.custom@{ns_location}") as proxy:
        proxy._pyroTimeout = WAIT
        before = proxy.state()["loop_iterations"]
        time.sleep(0.5)  # a 50 Hz polling loop would go round ~25 times meanwhile
        after = proxy.state()["loop_iterations"]
    assert after - before <= 2  # the second call's arrival, and nothing else


# --- asyncio ------------------------------------------------------------------------------

def test_asyncio_service_awaits_concurrent_async_calls_side_by_side(start_demo):
    demo = start_demo("asyncio_service.py", "--host", HOST, "--ns", "none")
    uri = demo.wait_for(r"^uri = (\S+)").group(1)
    demo.wait_for("^ready")
    out = client(uri)  # the tour makes 3 wait_and_echo calls at once, on 3 connections
    for index in range(3):
        assert re.search(rf"^wait_and_echo\('call {index}', 1\.0\) -> 'call {index} \(after", out, re.M), out
    state = result_of(out, "state()")
    assert state["most_waiting"] == 3
    callers = {line.split()[1] for line in state["log"] if "wait_and_echo" in line}
    assert len(callers) == 3  # each logged with its own connection
    assert demo.stop() == 0
    demo.wait_for("^stopped$")


def test_client_burst_reports_calls_per_second(start_demo):
    demo = start_demo("asyncio_service.py", "--host", HOST, "--ns", "none")
    uri = demo.wait_for(r"^uri = (\S+)").group(1)
    demo.wait_for("^ready")
    out = client(uri, "--burst", "300")
    assert re.search(r"^burst: 300 calls of ping\(\) in [\d.]+ s = [\d,]+ calls/s; "
                     r"latency p50 [\d.]+ ms, p99 [\d.]+ ms$", out, re.M), out


def test_client_reports_a_remote_error_and_fails(start_demo):
    demo = start_demo("asyncio_service.py", "--host", HOST, "--ns", "none")
    uri = demo.wait_for(r"^uri = (\S+)").group(1)
    done = subprocess.run([sys.executable, str(DEMOS / "client.py"), uri, "--call", "increment", "not a number",
                           "--timeout", "15"], capture_output=True, text=True, timeout=60, env=demo_env())
    assert done.returncode == 1
    assert "ValueError: invalid literal for int()" in done.stderr
    assert "Remote traceback" in done.stderr


# --- the loop-client demos: windows and a coroutine calling the asyncio service ---------------


@pytest.fixture
def async_service(start_demo) -> str:
    """demos/asyncio_service.py in its own process; its URI."""
    demo = start_demo("asyncio_service.py", "--host", HOST, "--ns", "none")
    uri = demo.wait_for(r"^uri = (\S+)").group(1)
    demo.wait_for("^ready")
    return uri


def tour_of(demo: DemoProcess) -> dict:
    """The summary a client demo prints at the end of its tour; the demo must exit with 0."""
    summary = json.loads(demo.wait_for(r"^tour = (.*)$").group(1))
    assert demo.proc.wait(timeout=WAIT) == 0, "\n".join(demo.output)
    return summary


def assert_window_tour(summary: dict) -> None:
    """What a client window must show after its tour."""
    seen = summary["progress_seen"]  # the bar's value at each tick of the GUI timer, call sent to reply
    assert len(set(seen)) >= 3, f"the progress bar did not move while work() was pending: {seen}"
    assert seen == sorted(seen) and seen[-1] < 100
    assert summary["progress"] == 100  # set when the reply came
    assert summary["pushed"] == [f"step {i} of 6 done ({i * 0.5:.1f} s)" for i in range(1, 7)]
    assert "work(3) -> 'worked 3 s in 6 steps; 6 notes pushed'" in summary["results"]  # pushed before it replied
    assert summary["quick_answered_while_slow_pending"]
    assert "countdown(5) streamed -> [5, 4, 3, 2, 1]" in summary["results"]
    assert any(line.startswith("increment('ten') failed: ValueError") for line in summary["results"])


def test_qt_client_window_moves_its_bar_during_a_3s_call_and_lists_what_the_service_pushes(
        qtbot, monkeypatch, async_service):
    monkeypatch.syspath_prepend(str(DEMOS))
    import qt_client
    from qt_client import QtCore, QtWidgets  # the binding the demo picked, as pytest-qt's

    window, panel, close = qt_client.build(QtWidgets.QApplication.instance(), async_service, HOST, WAIT)
    qtbot.addWidget(window)
    window.show()
    summaries: list[dict] = []
    try:
        panel.tour(summaries.append)
        qtbot.waitUntil(lambda: bool(summaries), timeout=int(WAIT * 1000))
        qtbot.mouseClick(window.quick_button, QtCore.Qt.MouseButton.LeftButton)  # the buttons make the same calls
        qtbot.waitUntil(lambda: window.results.item(window.results.count() - 1).text() == "increment(1) -> 2",
                        timeout=int(WAIT * 1000))
    finally:
        close()
    assert_window_tour(summaries[0])
    assert [window.pushed.item(i).text() for i in range(window.pushed.count())] == summaries[0]["pushed"]
    assert window.progress.value() == 100


def test_qt_client_tour_as_a_program(start_demo, async_service):
    demo = start_demo("qt_client.py", async_service, "--callback-host", HOST, "--tour",
                      env=demo_env(QT_QPA_PLATFORM="offscreen"))
    assert_window_tour(tour_of(demo))


def test_tk_client_window_moves_its_bar_during_a_3s_call_and_lists_what_the_service_pushes(
        start_demo, async_service):
    if not os.environ.get("DISPLAY"):
        pytest.skip("no X display (pytest-xvfb starts one when Xvfb is installed)")
    demo = start_demo("tk_client.py", async_service, "--callback-host", HOST, "--tour")
    assert_window_tour(tour_of(demo))


def test_asyncio_client_awaits_calls_is_called_back_and_iterates_a_remote_generator(start_demo, async_service):
    demo = start_demo("asyncio_client.py", async_service, "--callback-host", HOST)
    summary = tour_of(demo)
    assert summary["ticks_while_pending"] >= 3  # the program's own task ran while work(3) was awaited
    assert len(summary["pushed"]) == 6
    assert summary["items"] == [5, 4, 3, 2, 1]
    assert summary["failure"].startswith("ValueError: invalid literal")
    assert [echo.split(" (")[0] for echo in summary["echoes"]] == ["call 0", "call 1", "call 2"]
