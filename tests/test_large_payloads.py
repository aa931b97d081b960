"""Large requests are decoded by a worker, so the loop's thread only runs the call."""

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
