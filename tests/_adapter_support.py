"""What the adapter tests share: the published test service, proxies and
clients in threads, and raw clients that misbehave on purpose (a half-sent
frame, pipelined requests whose replies are read late).

Each adapter's test module keeps what is particular to its loop: how the loop
is run while clients work, and how its registrations are read back.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any, Callable, Iterator

import pytest

import pyro_loops
from pyro_loops import _wire
from pyro_loops._serializers import get_serializer

WAIT_S = 10.0
BIG_REPLY = 8 * 1024 * 1024
FLOOD = 600  # pipelined calls, about 60 kB: fits the socket buffers on both ends


@pyro_loops.expose
class BaseService:
    """The methods every adapter test calls; subclasses add what their loop needs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.worker_started = threading.Event()
        self.ticks = 0  # advanced by a loop timer of the test

    def echo(self, value):
        return value

    def ticks_seen(self):
        return self.ticks

    def fail(self):
        raise ValueError("boom")

    def big(self):
        return "x" * BIG_REPLY

    def in_loop_thread(self):
        return threading.current_thread() is threading.main_thread()

    @pyro_loops.in_worker
    def wait_in_worker(self):
        self.worker_started.set()
        return self.release.wait(WAIT_S), threading.current_thread() is threading.main_thread()


class DisconnectFails(pyro_loops.Daemon):
    """A daemon whose ``clientDisconnect`` hook raises: an error inside the machinery."""

    def clientDisconnect(self, conn):  # noqa: N802 - Pyro4's name
        raise RuntimeError("disconnect hook failed")


def fail_first_event(monkeypatch: pytest.MonkeyPatch, daemon: pyro_loops.Daemon) -> None:
    """Make the daemon's entry point raise once, as a bug in it would (an injected fault)."""
    real_handle_event = daemon.handle_event
    faults = [RuntimeError("injected daemon fault")]

    def handle_event(sock, events):
        if faults:
            raise faults.pop()
        real_handle_event(sock, events)

    monkeypatch.setattr(daemon, "handle_event", handle_event)


@contextlib.contextmanager
def errors_reported() -> Iterator[list[tuple[BaseException, str]]]:
    """Collect what reaches the error hook; fails at the end if anything is left.

    A test that expects errors clears the list once it has looked at them.
    """
    seen: list[tuple[BaseException, str]] = []
    pyro_loops.set_error_hook(lambda exc, where: seen.append((exc, where)))
    try:
        yield seen
    finally:
        pyro_loops.set_error_hook(None)
    assert not seen, f"unexpected internal errors: {seen}"


@pytest.fixture
def reported() -> Iterator[list[tuple[BaseException, str]]]:
    """``errors_reported`` as a fixture, for the test modules that import it."""
    with errors_reported() as seen:
        yield seen


@pytest.fixture
def daemon() -> Iterator[pyro_loops.Daemon]:
    """A daemon on 127.0.0.1, closed at the end."""
    with pyro_loops.Daemon(host="127.0.0.1") as daemon:
        yield daemon


@pytest.fixture
def service(daemon) -> BaseService:
    """A ``BaseService`` registered in ``daemon`` as "service"; ``service.uri`` is its URI."""
    service = BaseService()
    service.uri = daemon.register(service, "service")
    return service


# --- clients ----------------------------------------------------------------------------


def proxy(uri) -> pyro_loops.Proxy:
    p = pyro_loops.Proxy(uri)
    p._pyroTimeout = WAIT_S
    return p


def call_once(uri, method: str, *args: Any) -> Any:
    with proxy(uri) as p:
        return getattr(p, method)(*args)


def in_threads(*clients: Callable[[], Any], when_done: Callable[[], None] | None = None):
    """Start each client in a thread; ``when_done()`` runs after the last one ends.

    Returns the threads, the list their results go to (in order) and the list
    of exceptions they raised.
    """
    results: list[Any] = [None] * len(clients)
    failures: list[BaseException] = []
    remaining = [len(clients)]
    lock = threading.Lock()

    def run(index: int, client: Callable[[], Any]) -> None:
        try:
            results[index] = client()
        except BaseException as exc:
            failures.append(exc)
        finally:
            with lock:
                remaining[0] -= 1
                if not remaining[0] and when_done is not None:
                    when_done()

    threads = [threading.Thread(target=run, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    return threads, results, failures


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a new thread; the list gets its result or exception."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def half_frame_client(uri) -> socket.socket:
    """A raw client that sends 10 of the 24 header bytes of a CONNECT and stalls."""
    sock = socket.create_connection((uri.host, uri.port), timeout=WAIT_S)
    sock.sendall(b"PYRO\x00\x30\x00\x01\x00\x00")
    return sock


class RawClient:
    """A protocol client built from the wire module that sends and reads only
    when told: it can pipeline many calls at once, or leave a big reply
    waiting in the daemon's output buffer (a small receive buffer helps)."""

    def __init__(self, uri, receive_buffer: int | None = None) -> None:
        self.serializer = get_serializer("serpent")
        self.sock = socket.socket()
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(WAIT_S)
        self.sock.connect((uri.host, uri.port))
        self.reader = _wire.FrameReader()
        self.object = uri.object
        self.sent = 0
        self._send(_wire.MSG_CONNECT, self.serializer.dumps({"handshake": "hello"}), 0)
        self.connected = False

    def _send(self, msg_type: int, payload: bytes, seq: int) -> None:
        msg = _wire.Message(msg_type, payload, self.serializer.serializer_id, 0, seq)
        self.sock.sendall(_wire.encode(msg))

    def call(self, method: str, count: int = 1) -> None:
        """Send ``count`` calls in one go, without waiting for any reply."""
        payload = self.serializer.dumps_call(self.object, method, (), {})
        frames = b"".join(_wire.encode(_wire.Message(_wire.MSG_INVOKE, payload, self.serializer.serializer_id,
                                                     0, self.sent + i + 1)) for i in range(count))
        self.sent += count
        self.sock.sendall(frames)

    def _receive(self) -> _wire.Message:
        while (msg := self.reader.next_message()) is None:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "connection closed"
            self.reader.feed(chunk)
        return msg

    def results(self) -> list[Any]:
        """Read the handshake reply (once) and the replies to every call sent, in order."""
        if not self.connected:
            assert self._receive().type == _wire.MSG_CONNECTOK
            self.connected = True
        replies = [self._receive() for _ in range(self.sent)]
        assert [r.type for r in replies] == [_wire.MSG_RESULT] * self.sent
        assert [r.seq for r in replies] == list(range(1, self.sent + 1))
        return [self.serializer.loads(r.payload()) for r in replies]


# Pyro4 is imported only by the tests that use a real Pyro4 client in this
# process (the others leave its process-global state alone).


def pyro4_send_requests(uri, *calls):
    """A Pyro4 client that pipelines ``(method, args)`` requests and reads no reply yet."""
    import Pyro4
    import Pyro4.message
    import Pyro4.util

    p = Pyro4.Proxy(str(uri))
    p._pyroTimeout = WAIT_S
    p._pyroBind()
    ser = Pyro4.util.get_serializer("serpent")
    messages = []
    for seq, (method, args) in enumerate(calls, 1):
        data, _ = ser.serializeCall(Pyro4.URI(str(uri)).object, method, args, {})
        messages.append(Pyro4.message.Message(Pyro4.message.MSG_INVOKE, data, ser.serializer_id, 0, seq).to_bytes())
    p._pyroConnection.send(b"".join(messages))  # one send: the daemon receives them together
    return p


def pyro4_receive_result(p):
    """The next result on ``p``'s connection (a proxy from :func:`pyro4_send_requests`)."""
    import Pyro4.message
    import Pyro4.util

    msg = Pyro4.message.Message.recv(p._pyroConnection, [Pyro4.message.MSG_RESULT])
    return Pyro4.util.get_serializer_by_id(msg.serializer_id).deserializeData(msg.data)
