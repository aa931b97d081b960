"""The installed commands ``pyro-loops-ns`` and ``pyro-loops-nsc``, run as a user would.

Every name server here binds 127.0.0.1 on a port the OS picks; the test reads the
URI it prints. Broadcast lookups go by unicast to a responder bound to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

from _util import TIMEOUT, peer_env
from pyro_loops._uri import URI
from test_naming import _ask, _refusing_tcp_port
from test_naming_interop import Pyro4NameServer

THING = "PYRO:thing@127.0.0.1:5001"


def _command(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (pip install -e .)"
    return path


class NameServerProcess:
    """A running ``pyro-loops-ns`` (or ``python -m pyro_loops.naming``), its stdout read in a thread."""

    def __init__(self, *args: str, module: bool = False, **env: str) -> None:
        argv = [sys.executable, "-m", "pyro_loops.naming"] if module else [_command("pyro-loops-ns")]
        self.proc = subprocess.Popen([*argv, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=peer_env(**env))
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.uri = URI(self.wait_for(r"^(?:external )?URI = (\S+)").group(1))

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str) -> re.Match:
        """Read output lines until one matches; every line read is kept in ``lines``."""
        for line in self.lines:
            if match := re.search(pattern, line):
                return match
        while True:
            try:
                line = self._queue.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; output so far: {self.lines}") from None
            if line is None:
                self.proc.wait(TIMEOUT)
                raise AssertionError(f"pyro-loops-ns ended (rc={self.proc.returncode}) without {pattern!r}; "
                                     f"output: {self.lines}; stderr: {self.proc.stderr.read()}")
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match

    def interrupt(self) -> int:
        """Ctrl-C; returns the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(TIMEOUT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def start_ns():
    started = []

    def start(*args: str, **kwargs) -> NameServerProcess:
        started.append(NameServerProcess(*args, **kwargs))
        return started[-1]

    yield start
    for process in started:
        process.close()


def nsc(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([_command("pyro-loops-nsc"), *args], capture_output=True, text=True,
                          timeout=TIMEOUT, env=peer_env(**env))


def test_ns_prints_where_it_runs_and_shuts_down_on_ctrl_c(start_ns):
    server = start_ns("-n", "127.0.0.1", "-p", "0", "-x")
    assert server.uri.host == "127.0.0.1" and server.uri.object == "Pyro.NameServer"
    assert f"NS running on 127.0.0.1:{server.uri.port} (127.0.0.1)" in server.lines
    assert "Warning: HMAC key not set. Anyone can connect to this server!" in server.lines
    assert server.interrupt() == 0
    server.wait_for("^NS shut down.$")


def test_ns_stops_cleanly_on_sigterm(start_ns):
    server = start_ns("-n", "127.0.0.1", "-p", "0", "-x")
    server.proc.terminate()
    assert server.proc.wait(TIMEOUT) == 0
    server.wait_for("^NS shut down.$")


def test_nsc_manages_registrations(start_ns):
    server = start_ns("-n", "127.0.0.1", "-p", "0", "-x")
    at = ("-n", "127.0.0.1", "-p", str(server.uri.port))

    def ok(*args: str) -> list[str]:
        done = nsc(*at, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout.splitlines()

    assert ok("ping") == ["Name server ping ok."]
    assert ok("register", "app.thing", THING, "red", "round") == ["Registered app.thing"]
    assert ok("register", "app.other", "PYRO:other@127.0.0.1:5002") == ["Registered app.other"]
    assert ok("list") == [
        "Pyro.NameServer --> " + str(server.uri), "    metadata: class:Pyro4.naming.NameServer",
        "app.other --> PYRO:other@127.0.0.1:5002",
        "app.thing --> " + THING, "    metadata: red, round"]
    assert ok("list", "app.t") == ["app.thing --> " + THING, "    metadata: red, round"]
    assert ok("listprefix", "app.o") == ["app.other --> PYRO:other@127.0.0.1:5002"]
    assert ok("listmatching", r".*ther") == ["app.other --> PYRO:other@127.0.0.1:5002"]
    assert ok("listmatching", "nothing") == ["(no registrations)"]
    assert ok("lookup", "app.thing") == [THING, "    metadata: red, round"]
    assert ok("yplookup_all", "red", "round")[0] == "app.thing --> " + THING
    assert ok("yplookup_all", "red", "blue") == ["(no registrations)"]
    assert ok("yplookup_any", "blue", "round")[0] == "app.thing --> " + THING
    assert ok("setmeta", "app.thing", "blue") == ["Metadata of app.thing updated"]
    assert ok("listmeta_any", "blue")[1] == "    metadata: blue"
    assert ok("setmeta", "app.thing") == ["Metadata of app.thing cleared"]
    assert ok("lookup", "app.thing") == [THING]
    assert ok("remove", "app.thing") == ["Removed app.thing"]
    assert ok("removematching", "app.*") == ["1 items removed."]
    assert ok("list") == ["Pyro.NameServer --> " + str(server.uri), "    metadata: class:Pyro4.naming.NameServer"]


@pytest.mark.parametrize("args, message", [
    (("lookup", "nope"), "unknown name: nope"),
    (("remove", "nope"), "Nothing removed"),
    (("remove", "Pyro.NameServer"), "Nothing removed"),
    (("setmeta", "nope", "tag"), "unknown name: nope"),
    (("listmatching", "(unclosed"), "invalid regex"),
    (("register", "x", "not a uri"), "invalid uri"),
])
def test_nsc_fails_with_exit_code_1_and_a_message(start_ns, args, message):
    server = start_ns("-n", "127.0.0.1", "-p", "0", "-x")
    done = nsc("-n", "127.0.0.1", "-p", str(server.uri.port), *args)
    assert done.returncode == 1
    assert message in done.stderr
    assert nsc("-n", "127.0.0.1", "-p", str(server.uri.port), "ping").returncode == 0


def test_nsc_without_a_name_server_fails_with_exit_code_1():
    with contextlib.ExitStack() as stack:
        done = nsc("-n", "127.0.0.1", "-p", str(_refusing_tcp_port(stack)), "ping")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: Failed to locate the nameserver")


@pytest.mark.parametrize("args", [(), ("frobnicate",), ("lookup",), ("register", "only-a-name")])
def test_nsc_usage_errors_exit_with_2(args):
    done = nsc(*args)
    assert done.returncode == 2
    assert "usage: pyro-loops-nsc" in done.stderr


def test_ns_with_sql_storage_keeps_registrations_across_restarts(start_ns, tmp_path):
    storage = "sql:" + str(tmp_path / "ns.sqlite")
    first = start_ns("-n", "127.0.0.1", "-p", "0", "-x", "-s", storage)
    assert nsc("-n", "127.0.0.1", "-p", str(first.uri.port), "register", "kept", THING).returncode == 0
    assert first.interrupt() == 0
    second = start_ns("-n", "127.0.0.1", "-p", "0", "-x", "-s", storage)
    assert "Persistent store contains 1 existing registrations." in second.lines
    assert nsc("-n", "127.0.0.1", "-p", str(second.uri.port), "lookup", "kept").stdout.strip() == THING


def test_ns_broadcast_responder_on_request_and_nsc_finds_it_without_a_host(start_ns):
    server = start_ns("-n", "127.0.0.1", "-p", "0", "--bchost", "127.0.0.1", "--bcport", "0")
    bcport = int(server.wait_for(r"^Broadcast server running on 127\.0\.0\.1:(\d+)$").group(1))
    assert _ask(bcport) == str(server.uri).encode()
    with contextlib.ExitStack() as stack:
        done = nsc("ping", PYRO_NS_HOST="127.0.0.1", PYRO_NS_PORT=str(_refusing_tcp_port(stack)),
                   PYRO_NS_BCPORT=str(bcport), PYRO_BROADCAST_ADDRS="127.0.0.1")
    assert done.returncode == 0, done.stderr


def test_ns_on_loopback_starts_no_responder_unless_asked(start_ns):
    server = start_ns("-n", "127.0.0.1", "-p", "0")
    assert "Not starting broadcast server for localhost." in server.lines


def test_ns_behind_nat_prints_both_uris(start_ns):
    server = start_ns("-n", "127.0.0.1", "-p", "0", "-x", "--nathost", "ns.example.org", "--natport", "9999")
    assert server.uri == URI("PYRO:Pyro.NameServer@ns.example.org:9999")
    internal = server.wait_for(r"^internal URI = (\S+)$").group(1)
    done = nsc("-n", "127.0.0.1", "-p", str(URI(internal).port), "lookup", "Pyro.NameServer")
    assert done.stdout.splitlines()[0] == str(server.uri)


def test_ns_takes_its_hmac_key_from_the_environment(start_ns):
    server = start_ns("-n", "127.0.0.1", "-p", "0", "-x", PYRO_HMAC_KEY="secret")
    assert not any(line.startswith("Warning: HMAC key not set") for line in server.lines)
    at = ("-n", "127.0.0.1", "-p", str(server.uri.port))
    assert nsc(*at, "ping", PYRO_HMAC_KEY="secret").returncode == 0
    assert nsc(*at, "ping").returncode == 1
    assert nsc(*at, "ping", PYRO_HMAC_KEY="wrong").returncode == 1


def test_ns_on_a_unix_socket(start_ns, tmp_path):
    path = str(tmp_path / "ns.sock")
    server = start_ns("-u", path)
    assert server.uri == URI(f"PYRO:Pyro.NameServer@./u:{path}")
    assert "NS running on ./u:" + path + " (Unix domain socket)" in server.lines
    assert nsc("-u", path, "ping").returncode == 0


def test_python_m_pyro_loops_naming_runs_the_name_server(start_ns):
    server = start_ns("-n", "127.0.0.1", "-p", "0", "-x", module=True)
    assert nsc("-n", "127.0.0.1", "-p", str(server.uri.port), "ping").returncode == 0


def test_ns_on_a_busy_port_fails_with_a_message_naming_the_address():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([_command("pyro-loops-ns"), "-n", "127.0.0.1", "-p", str(port), "-x"],
                              capture_output=True, text=True, timeout=TIMEOUT, env=peer_env())
    assert done.returncode == 1
    assert "cannot start the name server" in done.stderr
    assert f"cannot bind to 127.0.0.1:{port}: Address already in use" in done.stderr


@pytest.mark.parametrize("args, message", [
    (("-p", "99999"), "argument -p/--port: port 99999 is out of range: use 0..65535"),
    (("-p", "ninety"), "argument -p/--port: 'ninety' is not a port number"),
    (("--bcport", "70000"), "argument --bcport: port 70000 is out of range"),
    (("--nathost", "nat.example", "--natport", "65536"), "argument --natport: port 65536 is out of range"),
    (("-s", "dbm:"), "invalid storage type 'dbm:' (use 'memory', 'sql:<file>' or 'dbm:<file>')"),
    (("-s", "sql:{tmp}/missing/dir/x.sqlite"), "cannot use '{tmp}/missing/dir/x.sqlite' as name server storage"),
])
def test_ns_refuses_bad_arguments_with_exit_code_2_and_a_message_naming_them(tmp_path, args, message):
    args = [arg.format(tmp=tmp_path) for arg in args]
    done = subprocess.run([_command("pyro-loops-ns"), "-n", "127.0.0.1", "-x", *args],
                          capture_output=True, text=True, timeout=TIMEOUT, env=peer_env())
    assert done.returncode == 2
    assert "usage: pyro-loops-ns" in done.stderr and "Traceback" not in done.stderr
    assert message.format(tmp=tmp_path) in done.stderr


def test_nsc_against_a_pyro4_name_server():
    reference = Pyro4NameServer()
    try:
        at = ("-n", "127.0.0.1", "-p", str(reference.port))
        assert nsc(*at, "register", "from.nsc", THING, "tag").returncode == 0
        assert nsc(*at, "lookup", "from.nsc").stdout.splitlines() == [THING, "    metadata: tag"]
        assert nsc(*at, "yplookup_all", "class:Pyro4.naming.NameServer").stdout.splitlines()[0] == (
            "Pyro.NameServer --> " + reference.uri)
        assert nsc(*at, "lookup", "nope").returncode == 1
    finally:
        reference.stop()
