"""Small helpers for tests that talk to peers in other processes.

Why peers live in other processes: Pyro4 and pyro_loops both keep process-global
state (serpent class registries, config), so a real Pyro4 must never be imported
into the pytest process. A peer announces that it is ready by printing a line on
stdout; :class:`Peer` waits for that line with a timeout, so a peer that crashes
or hangs fails the test quickly and with its stderr in the message.
"""

from __future__ import annotations

import ast
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from pyro_loops import _wire

PEERS = Path(__file__).parent / "peers"
TIMEOUT = 15.0  # seconds any single wait on a peer may take before the test fails


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = TIMEOUT, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``.

    For effects that complete in another thread or process with nothing to wait on
    (a oneway call run in a worker thread, a stream closed by a oneway message).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def peer_env(**extra: str) -> dict[str, str]:
    """The environment for a peer: ours without PYRO_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Peer:
    """A Python subprocess running a script; its stdout is read line by line in a thread."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-u", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env if env is not None else peer_env())
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line)
        sink(None)

    def stderr(self) -> str:
        return "".join(line for line in list(self._stderr) if line)

    def readline(self, timeout: float = TIMEOUT) -> str:
        """The next stdout line (without newline); fails on timeout or end of output."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"peer {self.args} printed nothing for {timeout} s; stderr:\n{self.stderr()}")
        if line is None:
            self.proc.wait(timeout)
            raise AssertionError(f"peer {self.args} ended (rc={self.proc.returncode}); stderr:\n{self.stderr()}")
        return line.rstrip("\n")

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match:
        """Read stdout lines until one matches the regex ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            match = re.search(pattern, line)
            if match:
                return match

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self, grace: float = 5.0, timeout: float = 5.0) -> None:
        """Close stdin (our peer scripts take that as "exit"), wait ``grace`` s, then terminate, then kill."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(grace)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class PeerError(Exception):
    """An exception raised by code that a :class:`CodePeer` ran; fields as the peer reported them."""

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(f"{info['type']}: {info['str']}")
        self.type: str = info["type"]
        self.str: str = info["str"]
        self.mro: list[str] = info["mro"]
        self.traceback: str = info["traceback"]


class CodePeer(Peer):
    """A peer script that runs Python code sent by the test (see peers/pyro4_client.py).

    Tests keep the client code they send right next to their assertions, so each test
    reads as the Pyro4 program it runs; the namespace persists between :meth:`run` calls.
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        super().__init__(args, env)
        self.ready = self.wait_for(r"^ready")

    def run(self, code: str, timeout: float = TIMEOUT, **variables: Any) -> Any:
        """Run ``code`` in the peer; returns the value of its last expression (via repr)."""
        self.send(json.dumps({"code": code, "vars": variables}))
        reply = json.loads(self.readline(timeout))
        if "error" in reply:
            raise PeerError(reply["error"])
        return ast.literal_eval(reply["result"])


class Pyro4Server(Peer):
    """peers/pyro4_server.py: a real Pyro4 4.82 daemon serving ``service.Service`` as "service".

    ``env`` holds PYRO_* settings for it (PYRO_SERVERTYPE, PYRO_COMPRESSION, ...).
    """

    def __init__(self, port: int = 0, hmac: str | None = None, **env: str) -> None:
        args = [str(PEERS / "pyro4_server.py"), "--port", str(port)]
        if hmac is not None:
            args += ["--hmac", hmac]
        super().__init__(args, peer_env(**env))
        info = json.loads(self.readline())
        self.uri: str = info["uri"]
        self.location: str = info["location"]
        self.port = int(self.location.rsplit(":", 1)[1])


def pyro4_client(**env: str) -> CodePeer:
    """peers/pyro4_client.py: a real Pyro4 4.82 client that runs the code a test sends."""
    return CodePeer([str(PEERS / "pyro4_client.py")], peer_env(**env))


def read_message(sock: socket.socket, data: bytes = b"", pause: float = 0.0) -> bytes:
    """One whole Pyro message from ``sock`` as it came, or b"" if the peer closed the
    connection first. ``data`` is its start, read already. Reads stop at the message's
    end, so a message behind it stays in the socket; at most 64 KiB a read, ``pause``
    seconds apart (a slow reader)."""
    data = bytearray(data)
    while True:
        size = _wire.HEADER_SIZE
        if len(data) >= size:
            fields = _wire.HEADER.unpack_from(data)
            size += fields[5] + fields[7]  # data and annotations
        if len(data) >= size:
            return bytes(data)
        chunk = sock.recv(min(65536, size - len(data)))
        if not chunk:
            return b""
        data += chunk
        if pause:
            time.sleep(pause)


def accepted(listener: socket.socket) -> Iterator[socket.socket]:
    """The connections ``listener`` accepts, one at a time, until it is closed: the loop
    of a test peer's serving thread, which ends when the test closes the listener."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        yield conn
