"""Large replies reach a loop client without freezing its host loop, and msgpack bulk data is walked, not scanned.

A 50 MB ``bytes`` value comes back from a server process as serpent (some 67
MB of base64 text), plainly or compressed. The loop client decodes it in a
worker; the host loop's 10 ms timer logs "tick", and the decoding logs
"decode" when the payload is taken (before any inflating) and "decoded" when
the value is out. Ticks between the two show that the worker let the loop's
thread run (an order, not a duration): one inflate call or one tokenizer
match over the whole payload holds the interpreter lock to its end.
"""

from __future__ import annotations

import pytest

from _client_hosts import LoopsServer, client, host, reported  # noqa: F401 - fixtures
from pyro_loops import _serializers, _wire

SIZE = 50_000_000
TICKS = 2
LARGE = 1 << 20  # payloads from this size on are logged (the handshake is not)


@pytest.fixture(params=[False, True], ids=["plain", "compressed"])
def bulk_server(request):
    with LoopsServer(PYRO_COMPRESSION="1" if request.param else "0") as server:
        yield server


def logging_decoder(monkeypatch, log: list[str]) -> None:
    payload, loads = _wire.Message.payload, _serializers.SerpentSerializer.loads

    def logged_payload(self, max_size=0):
        if len(self.data) >= LARGE or self.flags & _wire.FLAGS_COMPRESSED:
            log.append("decode")
        return payload(self, max_size)

    def logged_loads(self, data):
        value = loads(self, data)
        if len(data) >= LARGE:
            log.append("decoded")
        return value

    monkeypatch.setattr(_wire.Message, "payload", logged_payload)
    monkeypatch.setattr(_serializers.SerpentSerializer, "loads", logged_loads)


def test_the_host_timer_ticks_while_a_large_serpent_bytes_reply_is_decoded(host, client, bulk_server, monkeypatch):
    log: list[str] = []
    logging_decoder(monkeypatch, log)
    proxy = client.proxy(bulk_server.uri)
    proxy._pyroTimeout = 120
    assert host.settle(proxy.length(b"warm")).result() == 4  # connected: only the large reply is logged

    def tick():
        log.append("tick")
        if "decoded" not in log:
            host.call_later(0.01, tick)

    host.call_later(0.01, tick)
    value = host.settle(proxy.fill(b"x", SIZE), timeout=120).result()
    assert type(value) is bytes and len(value) == SIZE and value.count(b"x") == SIZE
    start = log.index("decode")
    assert "decoded" in log[start:], log[-10:]
    assert log[start:log.index("decoded", start)].count("tick") >= TICKS


@pytest.fixture
def msgpack():
    return pytest.importorskip("msgpack")


def test_a_large_msgpack_bytes_payload_is_decoded_when_its_objects_are_few(msgpack, monkeypatch):
    MSGPACK = _serializers.get_serializer("msgpack")
    monkeypatch.setattr(_serializers.config, "MAX_BLOCKING_DECODE", 1 << 20)
    call = ("obj", "size", [b"x" * (3 << 20)], {})
    payload = msgpack.packb(call, use_bin_type=True)
    assert MSGPACK.decodes_quickly(payload)
    assert MSGPACK.loads_call(payload) == ("obj", "size", (b"x" * (3 << 20),), {})


def test_a_large_msgpack_payload_of_many_objects_is_refused_naming_max_blocking_decode(msgpack, monkeypatch):
    MSGPACK = _serializers.get_serializer("msgpack")
    monkeypatch.setattr(_serializers.config, "MAX_BLOCKING_DECODE", 1 << 16)
    payload = msgpack.packb(list(range(100_000)))
    assert not MSGPACK.decodes_quickly(payload)
    with pytest.raises(_serializers.errors.SerializeError, match="MAX_BLOCKING_DECODE"):
        MSGPACK.loads(payload)


@pytest.mark.parametrize("payload", [b"\xdd\xff\xff\xff\x7f", b"\xdf\x00\x10\x00\x00\x01\x02", b"\x92\x01",
                                     b"\xc6\x00\x10\x00\x00ab", b"\xc1"])
def test_msgpack_data_announcing_more_than_it_holds_is_refused_before_decoding(payload):
    with pytest.raises(_serializers.errors.SerializeError):
        _serializers._walk_msgpack(payload)


def test_a_payload_buffer_made_at_its_declared_size_counts_in_full_as_buffered_input():
    announced = 4 * 1024 * 1024
    header = _wire.HEADER.pack(_wire.TAG, 48, _wire.MSG_INVOKE, 0, 1, announced, 3, 0, 0,
                               _wire.checksum(_wire.MSG_INVOKE, 0, 1, announced, 3, 0))
    reader = _wire.FrameReader()
    reader.feed(header + b"x" * 1000)
    assert reader.next_message() is None
    assert reader.buffered == _wire.HEADER_SIZE + announced  # what MAX_BUFFERED_INPUT weighs
    room = reader.receive_into()
    assert room is not None and len(room) == announced - 1000  # the rest, in one buffer
    with room:
        room[:] = b"y" * len(room)
    reader.received(announced - 1000)
    msg = reader.next_message()
    assert msg.data == b"x" * 1000 + b"y" * (announced - 1000) and reader.buffered == 0
