"""The client role of the connection state machine, driven by byte strings only.

Replies come from three sources: frames built here, the server role of the same
module (both roles talking through byte strings), and bytes a stock Pyro4 4.82
daemon sent to this client role (tests/captures, recorded on loopback). The last
section checks the same conversation live against a Pyro4 daemon process, and
the last one that the blocking ``Proxy`` acts on what the client role reports.
"""

import marshal
import pathlib
import socket
import threading
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from _util import Pyro4Server, accepted
from pyro_loops import Proxy, _wire, errors
from pyro_loops._protocol import (
    Broken, ClientProtocol, ConnectFailed, Connected, ConnectRequest, Failure, InvokeRequest, Metadata,
    PingRequest, Pong, Result, ServerProtocol, State, StateError, StreamEnd, StreamStarted)
from pyro_loops._serializers import ExceptionWrapper, get_serializer
from pyro_loops._uri import URI
from pyro_loops.constants import DAEMON_NAME

SERPENT = get_serializer("serpent")
CAPTURES = pathlib.Path(__file__).parent / "captures"
META = {"methods": ["add", "gen"], "oneway": ["fire"], "attrs": ["prop"]}


def frame(msg_type, data=b"", ser=1, flags=0, seq=0, annotations=None, key=None) -> bytes:
    return _wire.encode(_wire.Message(msg_type, data, ser, flags, seq, annotations or {}), key)


def sent(data: bytes) -> _wire.Message:
    reader = _wire.FrameReader()
    reader.feed(data)
    msg = reader.next_message()
    assert reader.next_message() is None and reader.buffered == 0, "exactly one message expected"
    return msg


def events(conn) -> list:
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def result(seq, value, flags=0, **kwargs) -> bytes:
    return frame(_wire.MSG_RESULT, SERPENT.dumps(value), flags=flags, seq=seq, **kwargs)


def connected(key=None, **kwargs) -> ClientProtocol:
    conn = ClientProtocol("serpent", hmac_key=key, **kwargs)
    conn.connect("thing")
    conn.receive_data(frame(_wire.MSG_CONNECTOK, SERPENT.dumps({"handshake": "hello", "meta": META}),
                            flags=_wire.FLAGS_META_ON_CONNECT, seq=conn.seq, key=key))
    (event,) = events(conn)
    assert isinstance(event, Connected)
    return conn


# --- the handshake ---------------------------------------------------------------------------


def test_connect_asks_for_metadata_with_the_current_seq_and_the_handshake_data():
    conn = ClientProtocol("serpent", seq=7)
    msg = sent(conn.connect("thing", {"token": 1}))
    assert (msg.type, msg.flags, msg.seq, msg.serializer_id) == (_wire.MSG_CONNECT, _wire.FLAGS_META_ON_CONNECT, 7, 1)
    assert SERPENT.loads(msg.data) == {"handshake": {"token": 1}, "object": "thing"}
    assert conn.state is State.HANDSHAKING


def test_connect_without_metadata_sends_the_handshake_alone():
    msg = sent(ClientProtocol("marshal").connect("thing", metadata=False))
    assert (msg.flags, msg.serializer_id) == (0, 3)
    assert marshal.loads(msg.data) == {"handshake": "hello"}


def test_connectok_with_metadata_establishes_the_connection():
    conn = ClientProtocol()
    conn.connect("thing")
    conn.receive_data(frame(_wire.MSG_CONNECTOK, SERPENT.dumps({"handshake": "hi", "meta": META}),
                            flags=_wire.FLAGS_META_ON_CONNECT, annotations={"CORR": b"c" * 16}))
    (event,) = events(conn)
    assert event.handshake == "hi" and event.message.annotations["CORR"] == b"c" * 16
    assert event.metadata == Metadata(frozenset({"add", "gen"}), frozenset({"fire"}), frozenset({"prop"}))
    assert conn.state is State.ESTABLISHED


def test_connectok_without_the_metadata_flag_carries_the_handshake_answer_only():
    conn = ClientProtocol()
    conn.connect("thing")
    conn.receive_data(frame(_wire.MSG_CONNECTOK, SERPENT.dumps({"welcome": 1})))
    (event,) = events(conn)
    assert (event.handshake, event.metadata) == ({"welcome": 1}, None)


def test_connectfail_in_marshal_gives_the_reason_and_closes():
    conn = ClientProtocol("json")
    conn.connect("thing")
    conn.receive_data(frame(_wire.MSG_CONNECTFAIL, marshal.dumps("go away"), ser=3))
    assert events(conn) == [ConnectFailed("go away", sent(frame(_wire.MSG_CONNECTFAIL, marshal.dumps("go away"), ser=3)))]
    assert conn.state is State.CLOSED
    with pytest.raises(StateError, match="CLOSED"):
        conn.invoke("thing", "add", (), {})


def test_connectok_with_another_seq_breaks_the_connection():
    conn = ClientProtocol(seq=3)
    conn.connect("thing")
    conn.receive_data(frame(_wire.MSG_CONNECTOK, SERPENT.dumps("hello"), seq=4))
    (event,) = events(conn)
    assert isinstance(event, Broken) and "got 4 expected 3" in str(event.error)
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("reply", [
    frame(_wire.MSG_RESULT, SERPENT.dumps(1)),
    frame(_wire.MSG_CONNECTOK, SERPENT.dumps("no dict"), flags=_wire.FLAGS_META_ON_CONNECT),
    frame(_wire.MSG_CONNECTOK, b"{{{"),
    b"HTTP/1.1 400 Bad Request\r\n\r\n",
])
def test_a_handshake_answer_that_is_not_a_readable_connectok_breaks_the_connection(reply):
    conn = ClientProtocol()
    conn.connect("thing")
    conn.receive_data(reply)
    (event,) = events(conn)
    assert isinstance(event, Broken) and isinstance(event.error, errors.ProtocolError)
    assert event.pending == () and conn.next_event() is None


def test_calls_before_the_handshake_and_a_second_connect_are_refused_locally():
    conn = ClientProtocol()
    with pytest.raises(StateError, match="IDLE"):
        conn.invoke("thing", "add", (), {})
    with pytest.raises(StateError):
        conn.ping()
    conn.connect("thing")
    with pytest.raises(StateError, match="HANDSHAKING"):
        conn.connect("thing")
    with pytest.raises(StateError, match="HANDSHAKING"):
        conn.invoke("thing", "add", (), {})


def test_bytes_before_connect_break_the_connection():
    conn = ClientProtocol()
    conn.receive_data(frame(_wire.MSG_CONNECTOK, SERPENT.dumps("hello")))
    (event,) = events(conn)
    assert isinstance(event, Broken) and "before CONNECT" in str(event.error)


# --- calls and their replies -----------------------------------------------------------------


def test_invoke_carries_the_call_with_the_next_seq():
    conn = connected()
    request = conn.invoke("thing", "add", (1, 2), {"scale": 3}, annotations={"USER": b"x"})
    msg = sent(request.data)
    assert (request.seq, request.expects_reply, msg.type, msg.seq, msg.flags) == (1, True, _wire.MSG_INVOKE, 1, 0)
    assert SERPENT.loads_call(msg.data) == ("thing", "add", (1, 2), {"scale": 3})
    assert msg.annotations == {"USER": b"x"}
    assert conn.pending == (1,)


def test_pipelined_replies_are_matched_by_seq_in_any_order():
    conn = connected()
    first, second, third = (conn.invoke("thing", "add", (n, 0), {}) for n in (1, 2, 3))
    conn.receive_data(result(third.seq, 3) + result(first.seq, 1))
    assert [(e.seq, e.value) for e in events(conn)] == [(3, 3), (1, 1)]
    assert conn.pending == (second.seq,)
    conn.receive_data(result(second.seq, 2))
    assert [(e.seq, e.value) for e in events(conn)] == [(2, 2)]


def test_a_reply_arriving_one_byte_at_a_time_comes_out_once_complete():
    conn = connected()
    request = conn.invoke("thing", "add", (1, 2), {})
    data = result(request.seq, 3)
    for i in range(len(data) - 1):
        conn.receive_data(data[i:i + 1])
        assert conn.next_event() is None
    conn.receive_data(data[-1:])
    assert [(e.seq, e.value) for e in events(conn)] == [(request.seq, 3)]


def test_sequence_numbers_wrap_after_65535_and_skip_the_ones_still_pending():
    conn = connected()
    conn.seq = 65534
    assert [conn.invoke("thing", "add", (), {}).seq for _ in range(3)] == [65535, 0, 1]
    conn.seq = 65534  # as a proxy does when its _pyroSeq is set: 65535, 0 and 1 are still pending
    assert conn.invoke("thing", "add", (), {}).seq == 2


def test_oneway_calls_expect_no_reply_and_a_reply_to_one_breaks_the_connection():
    conn = connected()
    oneway = conn.invoke("thing", "fire", (), {}, oneway=True)
    normal = conn.invoke("thing", "add", (), {})
    assert not oneway.expects_reply and sent(oneway.data).flags == _wire.FLAGS_ONEWAY
    assert conn.pending == (normal.seq,)
    conn.receive_data(result(oneway.seq, None))
    (event,) = events(conn)
    assert isinstance(event, Broken) and event.pending == (normal.seq,)
    assert str(event.error) == f"invoke: reply sequence out of sync, got {oneway.seq} expected {normal.seq}"


def test_a_reply_nobody_waits_for_fails_every_pending_call():
    conn = connected()
    calls = [conn.invoke("thing", "add", (), {}).seq for _ in range(3)]
    conn.receive_data(result(99, None) + result(calls[0], 1))
    (event,) = events(conn)  # nothing after Broken, not even the reply that was next
    assert isinstance(event, Broken) and event.pending == tuple(calls)
    assert isinstance(event.error, errors.ProtocolError) and conn.state is State.CLOSED


def test_a_cancelled_call_s_reply_is_dropped_without_an_event():
    conn = connected()
    gone = conn.invoke("thing", "sleep", (5,), {})
    kept = conn.invoke("thing", "add", (), {})
    conn.cancel(gone.seq)
    assert conn.pending == (kept.seq,)
    conn.receive_data(result(gone.seq, "late") + result(kept.seq, 1))
    assert [(e.seq, e.value) for e in events(conn)] == [(kept.seq, 1)]
    conn.receive_data(result(gone.seq, "twice"))  # dropped once only: now it is unexpected
    assert isinstance(conn.next_event(), Broken)


def test_a_reply_of_the_wrong_type_or_serializer_breaks_the_connection():
    conn = connected()
    request = conn.invoke("thing", "add", (), {})
    conn.receive_data(frame(_wire.MSG_PING, b"pong", seq=request.seq))
    (event,) = events(conn)
    assert str(event.error) == "invoke: invalid msg type 6 received" and event.pending == (request.seq,)
    conn = connected()
    request = conn.invoke("thing", "add", (), {})
    conn.receive_data(frame(_wire.MSG_RESULT, marshal.dumps(1), ser=3, seq=request.seq))
    (event,) = events(conn)
    assert isinstance(event.error, errors.SerializeError) and "invalid serializer in response: 3" in str(event.error)


def test_an_exception_reply_becomes_a_failure_with_the_rebuilt_exception():
    conn = connected()
    request = conn.invoke("thing", "add", (), {})
    conn.receive_data(result(request.seq, ValueError("bad", 7), flags=_wire.FLAGS_EXCEPTION))
    (event,) = events(conn)
    assert isinstance(event, Failure) and isinstance(event.exception, ValueError)
    assert event.exception.args == ("bad", 7) and conn.state is State.ESTABLISHED


@pytest.mark.parametrize("payload, flags, error", [
    (SERPENT.dumps({"__class__": "mymodule.Custom", "__exception__": True, "args": (), "attributes": {}}),
     _wire.FLAGS_EXCEPTION, errors.SerializeError),
    (SERPENT.dumps("not an exception"), _wire.FLAGS_EXCEPTION, errors.ProtocolError),
    (b"not serpent {", 0, errors.SerializeError),
    (b"not zlib", _wire.FLAGS_COMPRESSED, errors.SerializeError),
])
def test_a_reply_that_cannot_be_decoded_fails_its_call_and_keeps_the_connection(payload, flags, error):
    conn = connected()
    request = conn.invoke("thing", "add", (), {})
    other = conn.invoke("thing", "add", (), {})
    conn.receive_data(frame(_wire.MSG_RESULT, payload, flags=flags, seq=request.seq) + result(other.seq, 2))
    failure, ok = events(conn)
    assert isinstance(failure, Failure) and type(failure.exception) is error and failure.seq == request.seq
    assert (ok.seq, ok.value) == (other.seq, 2)


def test_raw_calls_return_the_reply_message_undecoded():
    conn = connected()
    request = conn.invoke("thing", "add", (), {}, raw=True)
    conn.receive_data(frame(_wire.MSG_RESULT, b"\xff raw", seq=request.seq))
    (event,) = events(conn)
    assert event.value.data == b"\xff raw" and event.value is event.message


def test_batch_sends_the_calls_in_one_message_and_gets_their_results_as_a_list():
    conn = connected()
    request = conn.batch("thing", [("add", (1,), {}), ("gen", (), {})])
    msg = sent(request.data)
    assert msg.flags == _wire.FLAGS_BATCH
    assert SERPENT.loads_call(msg.data) == ("thing", "<batch>", [("add", (1,), {}), ("gen", (), {})], None)
    wrapped = ExceptionWrapper(ValueError("second"))
    conn.receive_data(result(request.seq, [1, wrapped], flags=_wire.FLAGS_BATCH))
    (event,) = events(conn)
    assert event.value[0] == 1 and isinstance(event.value[1], ExceptionWrapper)
    oneway = conn.batch("thing", [("fire", (), {})], oneway=True)
    assert sent(oneway.data).flags == _wire.FLAGS_BATCH | _wire.FLAGS_ONEWAY and not oneway.expects_reply


def test_get_metadata_asks_the_daemon_object_and_returns_metadata():
    conn = connected()
    request = conn.get_metadata("thing")
    assert SERPENT.loads_call(sent(request.data).data) == (DAEMON_NAME, "get_metadata", ["thing"], {})
    conn.receive_data(result(request.seq, META))
    (event,) = events(conn)
    assert event.value.methods == {"add", "gen"} and event.value.oneway == {"fire"}


def test_ping_is_answered_by_a_pong_with_its_seq():
    conn = connected()
    request = conn.ping()
    msg = sent(request.data)
    assert (msg.type, msg.data, msg.seq) == (_wire.MSG_PING, b"ping", request.seq)
    conn.receive_data(frame(_wire.MSG_PING, b"pong", seq=request.seq))
    assert [type(e) for e in events(conn)] == [Pong]


# --- item streams ----------------------------------------------------------------------------


def stream_start(seq, stream_id=b"1234-abcd") -> bytes:
    error = errors.ProtocolError("result of call is an iterator")
    annotations = {"STRM": stream_id} if stream_id else {}
    return result(seq, error, flags=_wire.FLAGS_EXCEPTION | _wire.FLAGS_ITEMSTREAMRESULT, annotations=annotations)


def test_a_stream_is_started_then_read_item_by_item_until_its_end():
    conn = connected()
    call = conn.invoke("thing", "gen", (), {})
    conn.receive_data(stream_start(call.seq))
    (started,) = events(conn)
    assert started == StreamStarted(call.seq, "1234-abcd", started.message)
    item, end = conn.next_stream_item("1234-abcd"), conn.next_stream_item("1234-abcd")
    assert SERPENT.loads_call(sent(item.data).data) == (DAEMON_NAME, "get_next_stream_item", ["1234-abcd"], {})
    conn.receive_data(result(item.seq, "first") + result(end.seq, StopIteration(), flags=_wire.FLAGS_EXCEPTION))
    first, last = events(conn)
    assert (first.value, type(last), last.seq) == ("first", StreamEnd, end.seq)


def test_stop_iteration_from_an_ordinary_call_is_a_failure_not_a_stream_end():
    conn = connected()
    call = conn.invoke("thing", "gen", (), {})
    conn.receive_data(result(call.seq, StopIteration(), flags=_wire.FLAGS_EXCEPTION))
    (event,) = events(conn)
    assert isinstance(event, Failure) and isinstance(event.exception, StopIteration)


def test_a_stream_start_without_a_stream_id_fails_the_call():
    conn = connected()
    call = conn.invoke("thing", "gen", (), {})
    conn.receive_data(stream_start(call.seq, stream_id=None))
    (event,) = events(conn)
    assert isinstance(event, Failure) and "not configured to allow streaming" in str(event.exception)


def test_close_stream_is_a_oneway_call_on_the_daemon_object():
    conn = connected()
    request = conn.close_stream("1234-abcd")
    msg = sent(request.data)
    assert not request.expects_reply and msg.flags == _wire.FLAGS_ONEWAY and conn.pending == ()
    assert SERPENT.loads_call(msg.data) == (DAEMON_NAME, "close_stream", ["1234-abcd"], {})


# --- HMAC, compression, sizes, end of stream ---------------------------------------------------


def test_every_message_is_signed_and_every_reply_checked_with_the_hmac_key():
    conn = connected(key=b"k")
    request = conn.invoke("thing", "add", (), {})
    _wire.check_hmac(sent(request.data), b"k")
    conn.receive_data(result(request.seq, 1, key=b"k"))
    assert [e.value for e in events(conn)] == [1]


@pytest.mark.parametrize("reply_key, error", [(b"other", "message hmac mismatch"),
                                              (None, "hmac key config not symmetric")])
def test_a_reply_with_a_wrong_or_missing_hmac_breaks_the_connection(reply_key, error):
    conn = connected(key=b"k")
    request = conn.invoke("thing", "add", (), {})
    conn.receive_data(result(request.seq, 1, key=reply_key))
    (event,) = events(conn)
    assert isinstance(event.error, errors.SecurityError) and str(event.error) == error


def test_large_requests_are_compressed_and_compressed_replies_decompressed():
    conn = connected(compression=True)
    request = conn.invoke("thing", "echo", ("x" * 1000,), {})
    msg = sent(request.data)
    assert msg.flags & _wire.FLAGS_COMPRESSED and len(msg.data) < 200
    conn.receive_data(frame(_wire.MSG_RESULT, zlib.compress(SERPENT.dumps("y" * 1000)),
                            flags=_wire.FLAGS_COMPRESSED, seq=request.seq))
    assert [e.value for e in events(conn)] == ["y" * 1000]
    small = sent(conn.invoke("thing", "add", (), {}).data)
    assert not small.flags & _wire.FLAGS_COMPRESSED


def test_a_reply_larger_than_max_message_size_breaks_the_connection():
    conn = connected(max_message_size=200)
    request = conn.invoke("thing", "echo", (), {})
    conn.receive_data(result(request.seq, "x" * 300)[:24])  # the header alone is enough to refuse it
    (event,) = events(conn)
    assert isinstance(event.error, errors.MessageTooLargeError) and event.pending == (request.seq,)


def test_end_of_stream_fails_the_pending_calls_after_the_replies_that_arrived():
    conn = connected()
    answered, lost = conn.invoke("thing", "add", (), {}), conn.invoke("thing", "add", (), {})
    conn.receive_data(result(answered.seq, 1) + result(lost.seq, 2)[:10])
    conn.receive_data(b"")
    first, broken = events(conn)
    assert (first.seq, first.value) == (answered.seq, 1)
    assert isinstance(broken.error, errors.ConnectionClosedError) and broken.pending == (lost.seq,)


def test_close_returns_the_calls_that_will_never_be_answered():
    conn = connected()
    calls = tuple(conn.invoke("thing", "add", (), {}).seq for _ in range(2))
    assert conn.close() == calls
    assert conn.state is State.CLOSED and conn.pending == ()
    conn.receive_data(result(calls[0], 1))
    assert conn.next_event() is None


@pytest.mark.parametrize("args, annotations, error", [
    ((object(),), None, errors.SerializeError),
    ((1,), {"BIG1": b"x" * 40000, "BIG2": b"x" * 40000}, errors.ProtocolError),
])
def test_a_call_that_cannot_be_encoded_leaves_nothing_pending_and_no_seq_used(args, annotations, error):
    conn = connected()
    before = conn.seq
    with pytest.raises(error):
        conn.invoke("thing", "echo", args, {}, annotations=annotations)
    assert conn.pending == () and conn.seq == before


# --- hostile replies ----------------------------------------------------------------------------

reply_frames = st.builds(
    frame, msg_type=st.sampled_from([2, 3, 5, 6]) | st.integers(0, 0xFFFF),
    data=st.sampled_from([SERPENT.dumps(1), SERPENT.dumps({"handshake": 1, "meta": META}), b"", b"{"])
    | st.binary(max_size=200),
    ser=st.sampled_from([1, 2, 3]) | st.integers(0, 0xFFFF), flags=st.integers(0, 0x7F), seq=st.integers(0, 5))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(reply_frames, max_size=6), st.binary(max_size=30), st.integers(1, 50), st.booleans())
def test_whatever_the_daemon_sends_the_client_role_gives_events_and_nothing_after_broken(
        replies, tail, piece, eof):
    conn = ClientProtocol("serpent", max_message_size=4096)
    conn.connect("thing")
    wire = b"".join(replies) + tail
    got = []
    for start in range(0, len(wire), piece):
        conn.receive_data(wire[start:start + piece])
        while (event := conn.next_event()) is not None:
            got.append(event)
            if isinstance(event, Connected):
                for _ in range(3):
                    conn.invoke("thing", "add", (), {})
                conn.ping()
    if eof:
        conn.receive_data(b"")
        got += events(conn)
    ends = [i for i, e in enumerate(got) if isinstance(e, (Broken, ConnectFailed))]
    assert ends in ([], [len(got) - 1]), "nothing may follow the end of a connection"
    assert (conn.state is State.CLOSED) == bool(ends)
    assert bool(ends) or not eof, "end of stream always ends the connection"


# --- both roles through byte strings ---------------------------------------------------------


def test_client_and_server_roles_hold_a_whole_conversation_through_bytes():
    client, server = ClientProtocol("serpent", hmac_key=b"k"), ServerProtocol(hmac_key=b"k")
    server.receive_data(client.connect("thing", "token"))
    (connect,) = events(server)
    assert isinstance(connect, ConnectRequest) and SERPENT.loads(connect.msg.data)["handshake"] == "token"
    client.receive_data(server.connect_ok_bytes(connect.msg, SERPENT.dumps({"handshake": "ok", "meta": META}),
                                                _wire.FLAGS_META_ON_CONNECT, {}))
    assert [e.handshake for e in events(client)] == ["ok"]
    assert server.state is client.state is State.ESTABLISHED
    calls = [client.invoke("thing", "add", (n, n), {}) for n in range(3)] + [client.ping()]
    wire = b"".join(c.data for c in calls)
    for i in range(0, len(wire), 7):  # the server sees the pipelined calls in arbitrary pieces
        server.receive_data(wire[i:i + 7])
    requests = events(server)
    assert [type(r) for r in requests] == [InvokeRequest] * 3 + [PingRequest]
    replies = [server.pong_bytes(requests[3].msg, {})]
    for request in reversed(requests[:3]):
        _obj, _method, (a, b), _kw = SERPENT.loads_call(request.msg.data)
        replies.append(server.result_bytes(request.msg, SERPENT.dumps(a + b), 0, {}))
    client.receive_data(b"".join(replies))
    answers = events(client)
    assert isinstance(answers[0], Pong)
    assert sorted((e.seq, e.value) for e in answers[1:]) == [(1, 0), (2, 2), (3, 4)]
    assert client.pending == ()


def test_a_server_role_connectfail_reaches_the_client_role_as_connect_failed():
    client, server = ClientProtocol("json"), ServerProtocol()
    server.receive_data(client.connect("nobody"))
    (connect,) = events(server)
    client.receive_data(server.connect_fail_bytes("unknown object", connect.msg))
    (event,) = events(client)
    assert isinstance(event, ConnectFailed) and event.reason == "unknown object"
    assert server.state is client.state is State.CLOSED


# --- replies a stock Pyro4 4.82 daemon sent ---------------------------------------------------
# Recorded on loopback from tests/peers/pyro4_server.py answering this client role; the
# seqs in them follow from the order of the requests below, which must not change.


def test_a_pyro4_daemon_s_connectok_gives_the_service_metadata():
    conn = ClientProtocol("serpent")
    conn.connect("service")
    conn.receive_data((CAPTURES / "pyro4_connectok.bin").read_bytes())
    (event,) = events(conn)
    assert event.handshake == "hello" and event.metadata.oneway == {"record"}
    assert {"add", "divide", "ticker"} <= event.metadata.methods and event.metadata.attrs == {"value", "label"}


def test_a_pyro4_daemon_s_replies_to_pipelined_calls_are_each_matched_to_their_call():
    conn = ClientProtocol("serpent")
    conn.connect("service")
    conn.receive_data((CAPTURES / "pyro4_connectok.bin").read_bytes())
    events(conn)
    add, divide, ticker, ping, batch = (conn.invoke("service", "add", (1, 2), {}),
                                        conn.invoke("service", "divide", (1, 0), {}),
                                        conn.invoke("service", "ticker", (2, "t"), {}), conn.ping(),
                                        conn.batch("service", [("add", (1, 1), {}), ("divide", (1, 0), {}),
                                                               ("add", (2, 2), {})]))
    conn.receive_data((CAPTURES / "pyro4_pipelined.bin").read_bytes())
    got = events(conn)
    assert [(type(e), e.seq) for e in got] == [(Result, add.seq), (Failure, divide.seq),
                                               (StreamStarted, ticker.seq), (Pong, ping.seq), (Result, batch.seq)]
    assert got[0].value == 3 and isinstance(got[1].exception, ZeroDivisionError)
    assert got[4].value[0] == 2 and isinstance(got[4].value[1], ExceptionWrapper) and len(got[4].value) == 2
    items = [conn.next_stream_item(got[2].stream_id) for _ in range(3)]
    conn.receive_data((CAPTURES / "pyro4_stream.bin").read_bytes())
    assert [(type(e), getattr(e, "value", None)) for e in events(conn)] == [(Result, 0), (Result, 1), (StreamEnd, None)]
    assert conn.pending == () and items[-1].seq == 8


def test_a_pyro4_daemon_s_connectfail_for_an_unknown_object_gives_its_reason():
    conn = ClientProtocol("serpent")
    conn.connect("nosuchobject")
    conn.receive_data((CAPTURES / "pyro4_connectfail.bin").read_bytes())
    assert [e.reason for e in events(conn)] == ["unknown object"]


@pytest.mark.pyro4
def test_pipelined_calls_to_a_live_pyro4_daemon_are_answered_on_one_connection():
    with Pyro4Server() as server:
        uri = URI(server.uri)
        with socket.create_connection((uri.host, uri.port), timeout=10) as sock:
            conn = ClientProtocol("serpent")
            sock.sendall(conn.connect(uri.object))
            expected = {}
            answers = {}
            while True:
                event = conn.next_event()
                if event is None:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, Connected):
                    requests = [conn.invoke(uri.object, "add", (n, 1), {}) for n in range(50)]
                    expected = {r.seq: n + 1 for n, r in enumerate(requests)}
                    sock.sendall(b"".join(r.data for r in requests))  # all 50 before the first reply
                else:
                    answers[event.seq] = event.value
                    if len(answers) == len(expected):
                        break
    assert answers == expected and conn.pending == ()


# --- the blocking Proxy keeps the client role's rules ------------------------------------------


class MisbehavingPeer:
    """A server on a real socket, driven by the server role, that answers ``echo(x)``
    correctly except for the faults its argument names."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"PYRO:svc@127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for conn in accepted(self.listener):
            self.connections += 1
            with conn:
                self._converse(conn, ServerProtocol())

    def _converse(self, conn: socket.socket, server: ServerProtocol) -> None:
        while True:
            event = server.next_event()
            if event is None:
                data = conn.recv(65536)
                if not data:
                    return
                server.receive_data(data)
            elif isinstance(event, ConnectRequest):
                meta = {"handshake": "hello", "meta": {"methods": ["echo"], "oneway": [], "attrs": []}}
                conn.sendall(server.connect_ok_bytes(event.msg, SERPENT.dumps(meta), _wire.FLAGS_META_ON_CONNECT, {}))
            else:
                _obj, _method, (value,), _kwargs = SERPENT.loads_call(event.msg.data)
                request = event.msg
                if value == "wrong seq":
                    request = _wire.Message(request.type, request.data, request.serializer_id, 0, request.seq + 1)
                data = b"{not serpent" if value == "garbage" else SERPENT.dumps(value)
                conn.sendall(server.result_bytes(request, data, 0, {}))

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def misbehaving():
    peer = MisbehavingPeer()
    yield peer
    peer.close()


@pytest.mark.parametrize("fault, error", [("wrong seq", errors.ProtocolError), ("garbage", errors.SerializeError)])
def test_the_blocking_proxy_drops_a_connection_that_broke_the_rules_and_the_next_call_reconnects(
        misbehaving, fault, error):
    with Proxy(misbehaving.uri) as proxy:
        proxy._pyroTimeout = 10
        assert proxy.echo("fine") == "fine"
        with pytest.raises(error):
            proxy.echo(fault)
        assert proxy._pyroConnection is None
        assert proxy.echo("fine again") == "fine again" and misbehaving.connections == 2
