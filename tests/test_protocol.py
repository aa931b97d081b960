"""The daemon-side connection state machine, driven by byte strings only.

What each test pins down is the answer (or silence) Pyro4 4.82 gives for a
sequence of messages before and after the handshake (protocol notes 3, 4.9, 11.9).
"""

import marshal
import struct

import pytest

from pyro_loops import _wire
from pyro_loops._protocol import ConnectRequest, InvokeRequest, PingRequest, ServerProtocol, Violation
from pyro_loops._wire import FrameReader, Message

SERPENT_CONNECT = b"# serpent utf-8 python3.2\n{'handshake':'hello','object':'thing'}"


def frame(msg_type, data=b"x", ser=1, flags=0, seq=0, annotations=None, key=None) -> bytes:
    return _wire.encode(Message(msg_type, data, ser, flags, seq, annotations or {}), key)


def decode_one(data: bytes) -> Message:
    reader = FrameReader()
    reader.feed(data)
    msg = reader.next_message()
    assert reader.next_message() is None and reader.buffered == 0, "exactly one message expected"
    return msg


def events(proto: ServerProtocol) -> list:
    out = []
    while (event := proto.next_event()) is not None:
        out.append(event)
    return out


def established(**kwargs) -> ServerProtocol:
    proto = ServerProtocol(**kwargs)
    proto.receive_data(frame(_wire.MSG_CONNECT, SERPENT_CONNECT, key=kwargs.get("hmac_key")))
    (request,) = events(proto)
    proto.connect_ok_bytes(request.msg, b"ok", 0, {})
    return proto


def assert_connect_fail(event, text: str, seq: int = 0) -> Message:
    assert isinstance(event, Violation)
    reply = decode_one(event.reply)
    assert (reply.type, reply.serializer_id, reply.flags, reply.seq) == (_wire.MSG_CONNECTFAIL, 3, 0, seq)
    assert marshal.loads(reply.data) == text
    return reply


# --- before the handshake ------------------------------------------------------------


def test_connect_is_reported_as_a_connect_request():
    proto = ServerProtocol()
    proto.receive_data(frame(_wire.MSG_CONNECT, SERPENT_CONNECT, flags=_wire.FLAGS_META_ON_CONNECT, seq=777))
    (event,) = events(proto)
    assert isinstance(event, ConnectRequest)
    assert (event.msg.seq, event.msg.flags, event.msg.data) == (777, _wire.FLAGS_META_ON_CONNECT, SERPENT_CONNECT)
    assert not proto.established


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"\x00" * 24,
    b"PYRO" + b"\xff" * 40,
])
def test_garbage_of_24_bytes_or_more_gets_the_marshal_connectfail(garbage):
    proto = ServerProtocol()
    proto.receive_data(garbage)
    (event,) = events(proto)
    assert_connect_fail(event, "invalid data or unsupported protocol version")
    assert event.reason == "invalid data or unsupported protocol version"


def test_short_garbage_with_a_wrong_first_byte_is_refused_without_waiting_for_24_bytes():
    # Pyro4 would wait for 24 bytes (forever); refusing at the first wrong byte frees the connection.
    proto = ServerProtocol()
    proto.receive_data(b"hi\n")
    (event,) = events(proto)
    assert_connect_fail(event, "invalid data or unsupported protocol version")


def test_bytes_of_a_valid_header_prefix_wait_for_more():
    proto = ServerProtocol()
    proto.receive_data(frame(_wire.MSG_CONNECT, SERPENT_CONNECT)[:23])
    assert events(proto) == []
    assert proto.partial


def test_header_checksum_mismatch_before_the_handshake_gets_connectfail():
    data = bytearray(frame(_wire.MSG_CONNECT, SERPENT_CONNECT))
    data[23] ^= 0x01
    proto = ServerProtocol()
    proto.receive_data(bytes(data))
    (event,) = events(proto)
    assert_connect_fail(event, "header checksum mismatch")


@pytest.mark.parametrize("msg_type", [_wire.MSG_INVOKE, _wire.MSG_PING, _wire.MSG_RESULT, _wire.MSG_CONNECTOK, 99])
def test_any_message_but_connect_before_the_handshake_gets_connectfail(msg_type):
    proto = ServerProtocol()
    proto.receive_data(frame(msg_type, seq=5))
    (event,) = events(proto)
    assert_connect_fail(event, f"invalid msg type {msg_type} received")


def test_oversize_connect_is_closed_without_a_reply():
    proto = ServerProtocol(max_message_size=100)
    proto.receive_data(frame(_wire.MSG_CONNECT, b"x" * 101)[:24])
    (event,) = events(proto)
    assert isinstance(event, Violation) and event.reply is None
    assert "max message size exceeded" in event.reason


def test_hmac_mismatch_on_connect_gets_a_signed_connectfail():
    proto = ServerProtocol(hmac_key=b"daemon key")
    proto.receive_data(frame(_wire.MSG_CONNECT, SERPENT_CONNECT, key=b"other key"))
    (event,) = events(proto)
    reply = assert_connect_fail(event, "message hmac mismatch")
    _wire.check_hmac(reply, b"daemon key")


@pytest.mark.parametrize("client_key, daemon_key", [(None, b"k"), (b"k", None)])
def test_one_sided_hmac_on_connect_gets_connectfail(client_key, daemon_key):
    proto = ServerProtocol(hmac_key=daemon_key)
    proto.receive_data(frame(_wire.MSG_CONNECT, SERPENT_CONNECT, key=client_key))
    (event,) = events(proto)
    assert_connect_fail(event, "hmac key config not symmetric")


def test_matching_hmac_on_connect_is_accepted():
    proto = ServerProtocol(hmac_key=b"k")
    proto.receive_data(frame(_wire.MSG_CONNECT, SERPENT_CONNECT, key=b"k"))
    (event,) = events(proto)
    assert isinstance(event, ConnectRequest)


def test_connectfail_chosen_by_the_daemon_uses_the_request_serializer_and_seq():
    proto = ServerProtocol()
    proto.receive_data(frame(_wire.MSG_CONNECT, b'{"handshake": "hello"}', ser=2, seq=9))
    (request,) = events(proto)
    reply = decode_one(proto.connect_fail_bytes("unknown object", request.msg, b'"unknown object"'))
    assert (reply.type, reply.serializer_id, reply.seq, reply.data) == (_wire.MSG_CONNECTFAIL, 2, 9, b'"unknown object"')
    assert proto.broken and events(proto) == []


def test_connectfail_without_serialized_text_falls_back_to_marshal_with_the_request_seq():
    proto = ServerProtocol()
    proto.receive_data(frame(_wire.MSG_CONNECT, SERPENT_CONNECT, ser=4, seq=3))
    (request,) = events(proto)
    reply = decode_one(proto.connect_fail_bytes("message used serializer that is not accepted: 4", request.msg))
    assert (reply.serializer_id, reply.seq) == (3, 3)
    assert marshal.loads(reply.data) == "message used serializer that is not accepted: 4"


def test_connectok_echoes_seq_serializer_and_annotations():
    proto = ServerProtocol()
    proto.receive_data(frame(_wire.MSG_CONNECT, SERPENT_CONNECT, seq=777, flags=_wire.FLAGS_META_ON_CONNECT))
    (request,) = events(proto)
    reply = decode_one(proto.connect_ok_bytes(request.msg, b"payload", _wire.FLAGS_META_ON_CONNECT,
                                              {"CORR": bytes(range(16))}))
    assert (reply.type, reply.seq, reply.serializer_id, reply.flags) == (
        _wire.MSG_CONNECTOK, 777, 1, _wire.FLAGS_META_ON_CONNECT)
    assert reply.annotations == {"CORR": bytes(range(16))}
    assert proto.established


# --- after the handshake ---------------------------------------------------------------


def test_invoke_and_ping_after_the_handshake_are_reported_in_order():
    proto = established()
    proto.receive_data(frame(_wire.MSG_INVOKE, b"call-1", seq=1) + frame(_wire.MSG_PING, b"ping", ser=42, seq=0)
                       + frame(_wire.MSG_INVOKE, b"call-2", seq=2, flags=_wire.FLAGS_ONEWAY))
    got = events(proto)
    assert [type(e) for e in got] == [InvokeRequest, PingRequest, InvokeRequest]
    assert [e.msg.data for e in got] == [b"call-1", b"ping", b"call-2"]
    assert got[2].msg.flags == _wire.FLAGS_ONEWAY


def test_pong_carries_the_ping_serializer_id_and_seq():
    proto = established()
    proto.receive_data(frame(_wire.MSG_PING, b"ping", ser=42, seq=4321))
    (ping,) = events(proto)
    reply = decode_one(proto.pong_bytes(ping.msg, {"CORR": bytes(16)}))
    assert (reply.type, reply.data, reply.serializer_id, reply.seq, reply.flags) == (_wire.MSG_PING, b"pong", 42, 4321, 0)


def test_result_echoes_the_request_seq_and_serializer():
    proto = established()
    proto.receive_data(frame(_wire.MSG_INVOKE, b"call", ser=2, seq=65535))
    (call,) = events(proto)
    reply = decode_one(proto.result_bytes(call.msg, b"3", _wire.FLAGS_EXCEPTION, {}))
    assert (reply.type, reply.seq, reply.serializer_id, reply.flags, reply.data) == (
        _wire.MSG_RESULT, 65535, 2, _wire.FLAGS_EXCEPTION, b"3")


@pytest.mark.parametrize("data", [
    pytest.param(b"\x00" * 30, id="garbage"),
    pytest.param(frame(_wire.MSG_CONNECT, SERPENT_CONNECT), id="second-connect"),
    pytest.param(frame(_wire.MSG_RESULT), id="result-from-client"),
    pytest.param(frame(_wire.MSG_CONNECTOK), id="connectok-from-client"),
    pytest.param(frame(_wire.MSG_CONNECTFAIL), id="connectfail-from-client"),
    pytest.param(bytes(bytearray(frame(_wire.MSG_INVOKE))[:22]) + b"\x00\x00", id="bad-checksum"),
])
def test_violation_after_the_handshake_closes_without_a_reply(data):
    proto = established()
    proto.receive_data(data)
    (event,) = events(proto)
    assert isinstance(event, Violation)
    assert event.reply is None


def test_hmac_mismatch_after_the_handshake_closes_without_a_reply():
    proto = established(hmac_key=b"k")
    proto.receive_data(frame(_wire.MSG_INVOKE, b"call", seq=1, key=b"wrong"))
    (event,) = events(proto)
    assert isinstance(event, Violation) and event.reply is None
    assert event.reason == "message hmac mismatch"


def test_signed_invoke_and_ping_pass_and_replies_are_signed():
    proto = established(hmac_key=b"k")
    proto.receive_data(frame(_wire.MSG_INVOKE, b"call", seq=1, key=b"k"))
    (call,) = events(proto)
    assert isinstance(call, InvokeRequest)
    _wire.check_hmac(decode_one(proto.result_bytes(call.msg, b"1", 0, {"CORR": bytes(16)})), b"k")


def test_oversize_invoke_after_the_handshake_closes_without_a_reply():
    proto = established(max_message_size=len(SERPENT_CONNECT))
    header = frame(_wire.MSG_INVOKE, b"y" * (len(SERPENT_CONNECT) + 1), seq=1)[:24]
    proto.receive_data(header)
    (event,) = events(proto)
    assert isinstance(event, Violation) and event.reply is None


def test_nothing_more_is_reported_after_a_violation():
    proto = established()
    proto.receive_data(b"\x00" * 24 + frame(_wire.MSG_INVOKE, b"ignored", seq=1))
    first = proto.next_event()
    assert isinstance(first, Violation)
    proto.receive_data(frame(_wire.MSG_INVOKE, b"also ignored", seq=2))
    assert proto.next_event() is None and proto.broken


def test_messages_before_a_violation_in_the_same_chunk_are_still_reported():
    proto = established()
    proto.receive_data(frame(_wire.MSG_INVOKE, b"good", seq=1) + b"JUNK" * 10)
    got = events(proto)
    assert isinstance(got[0], InvokeRequest) and got[0].msg.data == b"good"
    assert isinstance(got[1], Violation) and len(got) == 2


def test_partial_is_true_only_while_a_message_is_incomplete():
    proto = established()
    data = frame(_wire.MSG_INVOKE, b"body" * 10, seq=1)
    assert not proto.partial
    proto.receive_data(data[:30])
    assert proto.next_event() is None and proto.partial
    proto.receive_data(data[30:])
    assert isinstance(proto.next_event(), InvokeRequest)
    assert not proto.partial


def test_invoke_arriving_byte_by_byte_is_reported_once_complete():
    proto = established()
    data = frame(_wire.MSG_INVOKE, b"slow call", seq=1, annotations={"CORR": bytes(16)})
    for byte in data[:-1]:
        proto.receive_data(bytes([byte]))
        assert proto.next_event() is None
    proto.receive_data(data[-1:])
    (event,) = events(proto)
    assert isinstance(event, InvokeRequest) and event.msg.annotations == {"CORR": bytes(16)}


def test_header_fields_stay_unsigned_16_bit_on_the_wire():
    proto = established()
    proto.receive_data(frame(_wire.MSG_INVOKE, b"c", seq=65535, flags=0x8000))
    (call,) = events(proto)
    reply = proto.result_bytes(call.msg, b"", 0, {})
    assert struct.unpack_from("!H", reply, 10)[0] == 65535
