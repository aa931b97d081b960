"""Large requests: decoded by a worker, so the loop's thread only runs the call;
received straight into a buffer of their own; bulk bytes arriving intact."""

import hashlib
import socket
import threading

import pytest

import pyro_loops
from pyro_loops import _serializers, _wire
from pyro_loops._eventloop import SelectLoop

SERPENT = _serializers.get_serializer("serpent")
BULK = list(range(30000))  # well over the 64 KiB from which decoding moves to a worker
TIMEOUT = 10


class Probe:
    """Rebuilt from the payload; records the thread that decoded it."""

    decoded_in: list[str] = []


def _rebuild_probe(_classname, data):
    Probe.decoded_in.append(threading.current_thread().name)
    return Probe()


@pytest.fixture(autouse=True)
def probe_class():
    Probe.decoded_in = []
    _serializers.register_dict_to_class("probe.Probe", _rebuild_probe)
    yield
    _serializers.unregister_dict_to_class("probe.Probe")


@pyro_loops.expose
class Service:
    def __init__(self):
        self.ran_in: list[str] = []
        self.noted: list[int] = []

    def take(self, probe, bulk):
        self.ran_in.append(threading.current_thread().name)
        return len(bulk)

    def echo(self, value):
        return value

    @pyro_loops.oneway
    def note(self, probe, bulk):
        self.noted.append(len(bulk))


@pytest.fixture
def served():
    service = Service()
    daemon = pyro_loops.Daemon(host="127.0.0.1")
    daemon.register(service, "svc")
    loop = SelectLoop()
    attached = threading.Event()

    def serve():
        loop.attach(daemon)  # in the thread that serves it, like any host loop
        attached.set()
        loop.run()

    thread = threading.Thread(target=serve, name="the-loop")
    thread.start()
    assert attached.wait(TIMEOUT)
    yield daemon, service
    loop.stop()
    thread.join(TIMEOUT)
    daemon.close()
    loop.close()


class RawClient:
    """Sends pipelined requests on one connection, as a Pyro4 client never would but may."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.reader = _wire.FrameReader()
        self.send(_wire.MSG_CONNECT, SERPENT.dumps({"handshake": "hello"}), 0)
        assert self.read().type == _wire.MSG_CONNECTOK

    def send(self, msg_type, payload, seq, flags=0):
        self.sock.sendall(_wire.encode(_wire.Message(msg_type, payload, 1, flags, seq)))

    def call(self, method, args, seq, flags=0):
        self.send(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", method, args, {}), seq, flags)

    def read(self):
        while (msg := self.reader.next_message()) is None:
            self.reader.feed(self.sock.recv(65536))
        return msg

    def close(self):
        self.sock.close()


def probe_dict():
    return {"__class__": "probe.Probe"}


def test_a_large_request_is_decoded_by_a_worker_and_run_in_the_loop_thread(served):
    daemon, service = served
    with pyro_loops.Proxy(daemon.uriFor("svc")) as proxy:
        proxy._pyroTimeout = TIMEOUT
        assert proxy.take(probe_dict(), BULK) == len(BULK)
    assert Probe.decoded_in and Probe.decoded_in[0] != "the-loop"
    assert service.ran_in == ["the-loop"]


def test_a_small_request_is_decoded_in_the_loop_thread(served):
    daemon, service = served
    with pyro_loops.Proxy(daemon.uriFor("svc")) as proxy:
        proxy._pyroTimeout = TIMEOUT
        assert proxy.take(probe_dict(), [1, 2, 3]) == 3
    assert Probe.decoded_in == ["the-loop"]


def test_calls_pipelined_behind_a_large_one_are_answered_after_it_in_order(served):
    daemon, _ = served
    client = RawClient(daemon.sock.getsockname()[1])
    try:
        client.call("take", (probe_dict(), BULK), seq=1)
        client.call("echo", ("second",), seq=2)
        client.call("echo", ("third",), seq=3)
        replies = [client.read() for _ in range(3)]
    finally:
        client.close()
    assert [r.seq for r in replies] == [1, 2, 3]
    assert [SERPENT.loads(r.data) for r in replies] == [len(BULK), "second", "third"]


def test_a_large_request_that_cannot_be_decoded_gets_an_error_and_the_connection_goes_on(served):
    daemon, _ = served
    client = RawClient(daemon.sock.getsockname()[1])
    try:
        garbage = b"# serpent utf-8 python3.2\n(" + b"1," * 40000  # never closed
        client.send(_wire.MSG_INVOKE, garbage, seq=1)
        client.call("echo", ("after",), seq=2)
        failed, answered = client.read(), client.read()
    finally:
        client.close()
    assert failed.seq == 1 and failed.flags & _wire.FLAGS_EXCEPTION
    assert SERPENT.loads(failed.data).__class__.__name__ == "SerializeError"
    assert answered.seq == 2 and SERPENT.loads(answered.data) == "after"


def test_a_large_oneway_call_runs_and_the_next_call_is_answered(served):
    daemon, service = served
    client = RawClient(daemon.sock.getsockname()[1])
    try:
        client.call("note", (probe_dict(), BULK), seq=1, flags=_wire.FLAGS_ONEWAY)
        client.call("echo", ("next",), seq=2)
        reply = client.read()
    finally:
        client.close()
    assert reply.seq == 2 and SERPENT.loads(reply.data) == "next"
    assert service.noted == [len(BULK)]


@pyro_loops.expose
class Digest:
    def digest(self, data):
        return len(data), hashlib.sha256(data).hexdigest()


def test_a_ten_megabyte_marshal_bytes_argument_arrives_intact(served):
    daemon, _ = served
    daemon.register(Digest(), "digest")
    data = bytes(range(256)) * (10 * 1024 * 1024 // 256) + b"tail"
    with pyro_loops.Proxy(daemon.uriFor("digest")) as proxy:
        proxy._pyroTimeout = TIMEOUT
        proxy._pyroSerializer = "marshal"
        for _ in range(2):  # the second reuses the connection after a direct receive
            assert tuple(proxy.digest(data)) == (len(data), hashlib.sha256(data).hexdigest())


def frames(payload_size, count=3):
    payload = bytes(range(256)) * (payload_size // 256) + b"end"
    one = _wire.encode(_wire.Message(_wire.MSG_INVOKE, payload, 3, 0, 7, {"CORR": b"c" * 16}))
    return payload, one * count


@pytest.mark.parametrize("piece", [1000, 65536, 1 << 20])
def test_large_messages_come_out_whole_whether_fed_or_received_into_the_buffer(piece):
    payload, stream = frames(600_000)
    for direct in (False, True):
        reader = _wire.FrameReader()
        messages, pos = [], 0
        while pos < len(stream):
            room = reader.receive_into() if direct else None
            if room is not None:
                with room:
                    count = min(len(room), piece, len(stream) - pos)
                    room[:count] = stream[pos:pos + count]
                reader.received(count)
            else:
                count = min(piece, len(stream) - pos)
                reader.feed(stream[pos:pos + count])
            pos += count
            while (msg := reader.next_message()) is not None:
                messages.append(msg)
        assert [(m.seq, m.annotations, bytes(m.data) == payload) for m in messages] == \
            [(7, {"CORR": b"c" * 16}, True)] * 3
        assert reader.buffered == 0


def test_a_peer_announcing_a_huge_payload_gets_buffer_room_in_step_with_what_it_sent():
    announced = 1 << 30
    header = _wire.HEADER.pack(_wire.TAG, 48, _wire.MSG_INVOKE, 0, 1, announced, 3, 0, 0,
                               _wire.checksum(_wire.MSG_INVOKE, 0, 1, announced, 3, 0))
    reader = _wire.FrameReader()
    reader.feed(header + b"x" * 300_000)
    assert reader.next_message() is None
    sent = 300_000
    for _ in range(5):
        room = reader.receive_into()
        assert room is not None and len(room) <= max(sent, _wire.DIRECT_RECEIVE_SIZE)
        with room:
            count = len(room)
            room[:] = b"y" * count
        reader.received(count)
        sent += count
    assert reader.buffered == _wire.HEADER_SIZE + sent < 20_000_000
