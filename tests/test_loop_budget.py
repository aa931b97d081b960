"""What one request may cost the host loop's thread.

Hostile requests (a compressed bomb, a huge json payload) are decoded, and
large replies encoded and compressed, while a repeating 10 ms timer of the
host loop keeps ticking: each adapter's test logs "arrived" when the daemon
starts handling the complete message, "tick" for each timer tick, "ran" when
the called method runs and "sent" when a reply is handed to the socket, and
asserts that ticks came between arrival and the call, or between the call and
its reply (an order, not a duration). Requests the budget cannot decode
without stalling the loop, and results the serializer cannot encode without
doing so, get an error naming the config item; the name server's regex
filter has a bound of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import zlib
from typing import Any, Callable

import pytest

import pyro_loops
from pyro_loops import _wire, errors
from pyro_loops._serializers import get_serializer
from pyro_loops.configuration import config

from _adapter_support import in_thread
from _hosts import asyncio_host, host  # noqa: F401
from _util import TIMEOUT, pyro4_client

JSON = get_serializer("json")
MARSHAL = get_serializer("marshal")
SERPENT = get_serializer("serpent")
ITEMS = 1_300_000  # "[1, 1, ...": 3.9 MB of json, past MAX_BLOCKING_DECODE's default
TICKS = 5  # ticks wanted between a hostile request's arrival and its call
# Ticks wanted while a large reply is made: a reply made inline leaves none between "ran" and
# "sent", while a worker's may take only a few tens of ms on an idle machine.
REPLY_TICKS = 2
NUMBERS = 300_000  # a result estimated at 2.4 MB, past MAX_BLOCKING_ENCODE's default (1.5 MB of json)
TEXT = os.urandom(2_500_000).hex()  # 5 MB that zlib takes long over


@pyro_loops.expose
class Service:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def take(self, items):
        self.log.append("ran")
        return len(items)

    def numbers(self, count):
        self.log.append("ran")
        return [i % 1000 for i in range(count)]

    def text(self):
        self.log.append("ran")
        return TEXT

    async def numbers_awaited(self, count):
        await asyncio.sleep(0)
        return self.numbers(count)

    @pyro_loops.in_worker
    def numbers_in_worker(self, count):
        return [i % 1000 for i in range(count)]

    def echo(self, value):
        return value


class LoggingDaemon(pyro_loops.Daemon):
    """Logs "arrived" when a complete call message starts being handled."""

    def __init__(self, log: list[str]) -> None:
        super().__init__(host="127.0.0.1")
        self.log = log
        invoke, send = self._calls._invoke, self._connections.send

        def logged_invoke(conn, msg):
            log.append("arrived")
            invoke(conn, msg)

        def logged_send(conn, data):
            log.append("sent")
            send(conn, data)

        self._calls._invoke = logged_invoke
        self._connections.send = logged_send


def json_call(method: str, *args: Any) -> bytes:
    return JSON.dumps_call("svc", method, args, {})


def bomb() -> tuple[Any, bytes, int]:
    """4 KB on the wire, 3.9 MB of json containers once inflated."""
    return JSON, zlib.compress(json_call("take", [1] * ITEMS), 9), _wire.FLAGS_COMPRESSED


def huge_json() -> tuple[Any, bytes, int]:
    return JSON, json_call("take", [1] * ITEMS), 0


class RawClient:
    """A client built from the wire module, to send any payload with any flags."""

    def __init__(self, port: int, serializer=JSON, handshake: bytes | None = None, flags: int = 0) -> None:
        self.serializer = serializer
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.reader = _wire.FrameReader()
        if handshake is None:
            handshake = serializer.dumps({"handshake": "hello", "object": "svc"})
        self.send(_wire.MSG_CONNECT, handshake, 0, flags)
        self.connect_reply = self.read()

    def send(self, msg_type: int, payload: bytes, seq: int, flags: int = 0) -> None:
        self.sock.sendall(_wire.encode(_wire.Message(msg_type, payload, self.serializer.serializer_id,
                                                     flags, seq)))

    def read(self) -> _wire.Message:
        while (msg := self.reader.next_message()) is None:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "connection closed by the daemon"
            self.reader.feed(chunk)
        return msg

    def call(self, payload: bytes, flags: int = 0, seq: int = 1) -> Any:
        """The value (or the exception) the daemon answers."""
        self.send(_wire.MSG_INVOKE, payload, seq, flags)
        reply = self.read()
        return self.serializer.loads(reply.payload())

    def close(self) -> None:
        self.sock.close()


def send_hostile(port: int, make: Callable[[], tuple[Any, bytes, int]]) -> Any:
    """Send the call ``make()`` gives as (serializer, payload, flags); return the answer."""
    serializer, payload, flags = make()
    client = RawClient(port, serializer)
    try:
        return client.call(payload, flags)
    finally:
        client.close()


# --- one host loop each, with a repeating 10 ms timer ------------------------------------


@contextlib.contextmanager
def served(log: list[str]):
    daemon = LoggingDaemon(log)
    daemon.register(Service(log), "svc")
    with daemon:
        yield daemon


def run_host(host, daemon, log: list[str], make) -> Any:
    """Serve ``daemon`` from ``host`` while a client sends ``make()``'s request; a host
    timer logs "tick" every 10 ms meanwhile. Returns what the client got."""
    host.attach(daemon)
    stop_ticking = host.repeat(0.01, lambda: log.append("tick"))
    try:
        thread, result = in_thread(lambda: send_hostile(daemon.sock.getsockname()[1], make))
        host.run_until(lambda: not thread.is_alive(), TIMEOUT)
    finally:
        stop_ticking()
    return result


def ticks_between(log: list[str], first: str, then: str) -> int:
    """Ticks between the last ``first`` and the ``then`` after it."""
    assert first in log and then in log, log[-20:]
    start = len(log) - 1 - log[::-1].index(first)
    assert then in log[start:], log[-20:]
    return log[start:log.index(then, start)].count("tick")


HOSTILE = {"compressed bomb": bomb, "huge json": huge_json}


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_the_host_timer_ticks_while_a_hostile_request_is_decoded(host, make):
    log: list[str] = []
    with served(log) as daemon:
        result = run_host(host, daemon, log, make)
    assert result == [ITEMS]
    assert ticks_between(log, "arrived", "ran") >= TICKS


LARGE_REPLIES = {
    "serpent list of ints": (lambda: (SERPENT, SERPENT.dumps_call("svc", "numbers", (NUMBERS,), {}), 0),
                             [i % 1000 for i in range(NUMBERS)], {}),
    "json list of ints": (lambda: (JSON, json_call("numbers", NUMBERS), 0),
                          [i % 1000 for i in range(NUMBERS)], {}),
    # encoded in the loop's thread (a long string is a copy), compressed elsewhere
    "compressed text": (lambda: (JSON, json_call("text"), 0), TEXT,
                        {"COMPRESSION": True, "MAX_BLOCKING_ENCODE": 2 * len(TEXT)}),
}


@pytest.mark.parametrize("case", LARGE_REPLIES.values(), ids=LARGE_REPLIES.keys())
def test_the_host_timer_ticks_while_a_large_reply_of_a_loop_run_method_is_made(host, case, monkeypatch):
    make, expected, settings = case
    for name, value in settings.items():
        monkeypatch.setattr(config, name, value)
    log: list[str] = []
    with served(log) as daemon:
        result = run_host(host, daemon, log, make)
    assert result == [expected]
    assert ticks_between(log, "ran", "sent") >= REPLY_TICKS


# --- refusals and what still works -------------------------------------------------------


@pytest.fixture
def loop_daemon():
    """A daemon served by a select loop in a thread, as a plain requestLoop() would."""
    log: list[str] = []
    daemon = pyro_loops.Daemon(host="127.0.0.1")
    daemon.register(Service(log), "svc")
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    yield daemon
    daemon.shutdown()
    thread.join(TIMEOUT)
    daemon.close()


def port_of(daemon) -> int:
    return daemon.sock.getsockname()[1]


def test_a_marshal_request_with_millions_of_items_is_refused_naming_max_blocking_decode(loop_daemon):
    client = RawClient(port_of(loop_daemon), MARSHAL)
    try:
        answer = client.call(MARSHAL.dumps_call("svc", "take", ([0] * 1_000_000,), {}))
        assert isinstance(answer, errors.SerializeError) and "MAX_BLOCKING_DECODE" in str(answer)
        assert client.call(MARSHAL.dumps_call("svc", "echo", ("after",), {}), seq=2) == "after"
    finally:
        client.close()


def test_a_large_serpent_request_outside_the_fast_subset_is_refused_naming_max_blocking_decode(loop_daemon):
    client = RawClient(port_of(loop_daemon), SERPENT)
    try:
        # complex numbers need serpent's full parser: one long hold of the interpreter lock
        answer = client.call(SERPENT.dumps_call("svc", "take", ([1j] * 300_000,), {}))
        assert isinstance(answer, errors.SerializeError) and "MAX_BLOCKING_DECODE" in str(answer)
    finally:
        client.close()


@pytest.mark.parametrize("text", [
    json.dumps({"a": [{"x": "y" * 10, "n": [1.5, None, True, False, -3e5, 1e400]}] * 50_000, "k": "\u1234\n"}),
    json.dumps([[[]], {}, {"a": {}}, "z" * 3_000_000]),
    " [1, 2 ] ",
])
def test_json_over_max_blocking_decode_decodes_as_json_loads_does(text, monkeypatch):
    monkeypatch.setattr(config, "MAX_BLOCKING_DECODE", 1)
    assert JSON.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("text", ["[1,", "[1 2]", '{"a" 1}', "[1] x", "[1,]", '{"a":1,}', "[" * 100_000])
def test_broken_json_over_max_blocking_decode_is_a_serialize_error(text, monkeypatch):
    monkeypatch.setattr(config, "MAX_BLOCKING_DECODE", 1)
    with pytest.raises(errors.SerializeError):
        JSON.loads(text.encode())


def test_a_large_request_within_max_blocking_decode_is_answered_when_the_item_is_raised(loop_daemon):
    config.MAX_BLOCKING_DECODE = 16 * 1024 * 1024
    try:
        client = RawClient(port_of(loop_daemon), MARSHAL)
        try:
            assert client.call(MARSHAL.dumps_call("svc", "take", ([0] * 1_000_000,), {})) == 1_000_000
        finally:
            client.close()
    finally:
        config.reset()


def test_a_compressed_bomb_before_the_handshake_gets_connectfail_naming_max_handshake_size(loop_daemon):
    handshake = zlib.compress(JSON.dumps({"handshake": "x" * 5_000_000, "object": "svc"}), 9)
    client = RawClient(port_of(loop_daemon), JSON, handshake, _wire.FLAGS_COMPRESSED)
    try:
        assert client.connect_reply.type == _wire.MSG_CONNECTFAIL
        assert "MAX_HANDSHAKE_SIZE" in JSON.loads(client.connect_reply.data)
    finally:
        client.close()


def test_a_large_reply_of_a_loop_run_method_goes_out_compressed_and_intact(loop_daemon, monkeypatch):
    monkeypatch.setattr(config, "COMPRESSION", True)
    client = RawClient(port_of(loop_daemon), SERPENT)
    try:
        client.send(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", "echo", ("y" * 2_000_000,), {}), 1)
        reply = client.read()
    finally:
        client.close()
    assert reply.flags & _wire.FLAGS_COMPRESSED
    assert SERPENT.loads(reply.payload()) == "y" * 2_000_000


def test_the_asyncio_loop_ticks_while_a_large_result_of_an_async_method_is_encoded(asyncio_host):
    log: list[str] = []
    with served(log) as daemon:
        result = run_host(asyncio_host, daemon, log, lambda: (JSON, json_call("numbers_awaited", NUMBERS), 0))
    assert result == [[i % 1000 for i in range(NUMBERS)]]
    assert ticks_between(log, "ran", "sent") >= REPLY_TICKS


def test_a_large_result_of_an_in_worker_method_is_encoded_there_by_the_budget_rules(loop_daemon, monkeypatch):
    pickle_serializer = get_serializer("pickle")
    monkeypatch.setattr(config, "SERIALIZERS_ACCEPTED", config.SERIALIZERS_ACCEPTED | {"pickle"})
    for serializer in (JSON, pickle_serializer):
        client = RawClient(port_of(loop_daemon), serializer)
        try:
            answer = client.call(serializer.dumps_call("svc", "numbers_in_worker", (NUMBERS,), {}))
        finally:
            client.close()
        if serializer is JSON:
            assert answer == [i % 1000 for i in range(NUMBERS)]
        else:  # pickle.dumps would hold the interpreter lock throughout, in a worker too
            assert isinstance(answer, errors.SerializeError) and "MAX_BLOCKING_ENCODE" in str(answer)


def test_replies_keep_the_order_of_their_requests_when_a_worker_encodes_one(loop_daemon):
    client = RawClient(port_of(loop_daemon), JSON)
    try:
        client.send(_wire.MSG_INVOKE, json_call("numbers", NUMBERS), 1)
        client.send(_wire.MSG_INVOKE, json_call("echo", "small"), 2)
        first, second = client.read(), client.read()
    finally:
        client.close()
    assert (first.seq, second.seq) == (1, 2)
    assert len(JSON.loads(first.payload())) == NUMBERS and JSON.loads(second.payload()) == "small"


def test_a_large_result_of_a_serializer_without_a_stepwise_encoder_is_refused_naming_max_blocking_encode(
        loop_daemon, monkeypatch):
    pickle_serializer = get_serializer("pickle")
    monkeypatch.setattr(config, "SERIALIZERS_ACCEPTED", config.SERIALIZERS_ACCEPTED | {"pickle"})
    client = RawClient(port_of(loop_daemon), pickle_serializer)
    try:
        answer = client.call(pickle_serializer.dumps_call("svc", "numbers", (NUMBERS,), {}))
        assert isinstance(answer, errors.SerializeError) and "MAX_BLOCKING_ENCODE" in str(answer)
        assert client.call(pickle_serializer.dumps_call("svc", "numbers", (3,), {}), seq=2) == [0, 1, 2]
    finally:
        client.close()


@pytest.mark.parametrize("name", ["serpent", "json", "marshal"])
@pytest.mark.parametrize("value", [
    [1, 2.5, "x", None, True, {"a": [1, (2, 3)]}],
    {"k": {"nested": ["\u1234\n", -7, 1e300]}, "e": []},
    list(range(1000)),
    "plain text",
])
def test_the_worker_encoder_writes_what_the_loop_encoder_writes(name, value):
    serializer = get_serializer(name)
    assert serializer.loads(serializer.dumps_large(value)) == serializer.loads(serializer.dumps(value))


def test_encoding_cost_finds_a_huge_list_out_without_walking_it_and_ends_on_a_cycle():
    from pyro_loops._serializers import encoding_cost

    assert encoding_cost([None] * 10_000_000, 1024) > 1024
    cycle: list = []
    cycle.append(cycle)
    assert encoding_cost(cycle, 1024) > 1024
    assert encoding_cost({"a": [1, 2], "b": "x" * 400}, 10_000) < 1000


def test_pyro4_hugetransfer_of_five_megabytes_works_under_a_plain_request_loop(loop_daemon):
    """Pyro4's examples/hugetransfer: str, bytes and bytearray of 5 MB, serpent."""
    with pyro4_client() as peer:
        sizes = peer.run(
            "import Pyro4, serpent\n"
            "p = Pyro4.Proxy(uri)\n"
            "def size(data):\n"
            "    back = p.echo(data)\n"
            "    return len(serpent.tobytes(back) if isinstance(back, dict) else back)\n"
            "[size('x' * 5242880), size(b'x' * 5242880), size(bytearray(b'x' * 5242880))]",
            timeout=60, uri=str(loop_daemon.uriFor("svc")))
    assert sizes == [5242880] * 3


# --- the name server's regex filter ------------------------------------------------------


@pytest.fixture
def name_server():
    from pyro_loops.naming import startNS

    uri, ns_daemon, _ = startNS(host="127.0.0.1", port=0, enableBroadcast=False)
    thread = threading.Thread(target=ns_daemon.requestLoop, daemon=True)
    thread.start()
    proxy = pyro_loops.Proxy(uri)
    proxy._pyroTimeout = TIMEOUT
    for i in range(200):
        proxy.register("a" * 30 + f".n{i}", f"PYRO:x{i}@127.0.0.1:5555")
    yield proxy
    proxy._pyroRelease()
    ns_daemon.shutdown()
    thread.join(TIMEOUT)
    ns_daemon.close()


CATASTROPHIC = r"(a|aa)+\1\.z"  # seconds per name without a bound, in re and regex alike


def test_a_backtracking_regex_gets_a_naming_error_naming_ns_regex_timeout(name_server):
    with pytest.raises(errors.NamingError, match="NS_REGEX_TIMEOUT"):
        name_server.list(regex=CATASTROPHIC)
    with pytest.raises(errors.NamingError, match="NS_REGEX_TIMEOUT"):
        name_server.remove(regex=CATASTROPHIC)
    assert name_server.count() == 201  # nothing removed, and the name server still answers


def test_regex_filters_keep_pyro4_syntax_including_backreferences(name_server):
    name_server.register("abab.x", "PYRO:y@127.0.0.1:5555")
    assert set(name_server.list(regex=r"(ab)\1\.")) == {"abab.x"}
    assert len(name_server.list(regex=r"a{30}\.n1\d$")) == 10
    assert name_server.remove(regex=r"a+\.n19\d") == 10
