"""Property tests over hostile bytes (issue 6): random bytes, mutated valid
frames, arbitrary split points. Whatever comes in, the framing, the connection
state machine and the serializers give a message, an event, ``None``, or one of
the documented errors (ProtocolError and its subclasses, SecurityError) --
nothing else escapes, nothing is buffered beyond one frame, nothing hangs.

Settings stay modest so the suite stays fast; ``fuzz/fuzz_frames.py`` runs the
same targets for as long as you like under a coverage-guided fuzzer.
"""

import ast
import zlib

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from pyro_loops import _fastserpent, _wire, errors
from pyro_loops._protocol import ConnectRequest, InvokeRequest, PingRequest, ServerProtocol, Violation
from pyro_loops._serializers import get_serializer

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SERPENT_HEAD = b"# serpent utf-8 python3.2\n"
SERIALIZERS = ["serpent", "json", "marshal"]
DOCUMENTED = (errors.ProtocolError, errors.SecurityError)  # SerializeError, MessageTooLargeError, FrameError
MAX_SIZE = 4096

annotation_ids = st.text(alphabet=st.characters(min_codepoint=65, max_codepoint=90), min_size=4, max_size=4)
messages = st.builds(
    _wire.Message,
    type=st.sampled_from([1, 2, 3, 4, 5, 6]) | st.integers(0, 0xFFFF),
    data=st.binary(max_size=300),
    serializer_id=st.sampled_from([1, 2, 3, 4, 6, 42]) | st.integers(0, 0xFFFF),
    flags=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFF),
    annotations=st.dictionaries(annotation_ids, st.binary(max_size=40), max_size=3),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


@st.composite
def mutated(draw, base: st.SearchStrategy[bytes]) -> bytes:
    """Valid bytes with a few flips, insertions, deletions and cuts."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "overwrite-u16"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "overwrite-u16" and len(data) >= 2:
            pos = min(pos, len(data) - 2)
            data[pos:pos + 2] = draw(st.sampled_from([b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00"]))
    return bytes(data)


def frames_of(msgs: list[_wire.Message]) -> bytes:
    return b"".join(_wire.encode(m) for m in msgs)


valid_streams = st.lists(messages, min_size=1, max_size=4).map(frames_of)


def drain_reader(reader: _wire.FrameReader) -> list[_wire.Message]:
    """Every message the reader gives; a documented error ends the stream."""
    out = []
    while True:
        try:
            msg = reader.next_message()
        except DOCUMENTED:
            return out
        if msg is None:
            # bounded memory: what stays buffered is less than one frame the limit allows
            assert reader.buffered < _wire.HEADER_SIZE + 0xFFFF + reader.max_message_size or not reader.max_message_size
            return out
        out.append(msg)


# --- framing ----------------------------------------------------------------------------------


@FAST
@given(st.lists(messages, min_size=1, max_size=5), st.lists(st.integers(0, 10_000), max_size=12))
def test_any_split_of_a_valid_stream_gives_the_same_messages(msgs, cuts):
    reader = _wire.FrameReader()
    got = []
    for piece in split(frames_of(msgs), cuts):
        reader.feed(piece)
        while (msg := reader.next_message()) is not None:
            got.append(msg)
    assert got == msgs
    assert reader.buffered == 0


@FAST
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
@example(b"PYRO" + b"\x00" * 20, [])
@example(b"PYRO\x00\x30\x00\x04\x00\x00\x00\x01\x7f\xff\xff\xff\x00\x01\x00\x00\x00\x00\x00\x00", [5])
def test_random_bytes_give_messages_or_documented_errors_only(data, cuts):
    reader = _wire.FrameReader(MAX_SIZE)
    for piece in split(data, cuts):
        reader.feed(piece)
        try:
            while reader.next_message() is not None:
                pass
        except DOCUMENTED:
            return
        assert reader.buffered < _wire.HEADER_SIZE + MAX_SIZE


@FAST
@given(mutated(valid_streams), st.lists(st.integers(0, 5000), max_size=6))
def test_mutated_frames_give_messages_or_documented_errors_only(data, cuts):
    reader = _wire.FrameReader(MAX_SIZE)
    for piece in split(data, cuts):
        reader.feed(piece)
        try:
            while (msg := reader.next_message()) is not None:
                assert 0 <= msg.type <= 0xFFFF and len(msg.data) <= MAX_SIZE
        except DOCUMENTED:
            return


@FAST
@given(messages, st.binary(min_size=1, max_size=32))
def test_hmac_check_gives_only_security_errors_on_tampered_messages(msg, key):
    reader = _wire.FrameReader()
    reader.feed(_wire.encode(msg, key))
    got = reader.next_message()
    _wire.check_hmac(got, key)
    for wrong in (None, key + b"x"):
        with pytest.raises(errors.SecurityError):
            _wire.check_hmac(got, wrong)


@FAST
@given(st.binary(max_size=3000), st.integers(0, 2000))
def test_payload_decompression_of_any_bytes_is_bounded(data, limit):
    msg = _wire.Message(_wire.MSG_INVOKE, data, 1, _wire.FLAGS_COMPRESSED)
    try:
        out = msg.payload(max_size=limit or 1)
    except (zlib.error, errors.MessageTooLargeError):
        return
    assert len(out) <= (limit or 1)


@FAST
@given(st.binary(min_size=0, max_size=200_000).map(zlib.compress), st.integers(1, 50_000))
def test_decompression_never_exceeds_the_limit_for_valid_zlib_data(packed, limit):
    msg = _wire.Message(_wire.MSG_INVOKE, packed, 1, _wire.FLAGS_COMPRESSED)
    try:
        assert len(msg.payload(max_size=limit)) <= limit
    except errors.MessageTooLargeError:
        pass


# --- the connection state machine --------------------------------------------------------------


def run_protocol(proto: ServerProtocol, pieces: list[bytes], established: bool) -> list:
    events = []
    for piece in pieces:
        proto.receive_data(piece)
        while (event := proto.next_event()) is not None:
            events.append(event)
            if isinstance(event, ConnectRequest) and not established:
                proto.connect_ok_bytes(event.msg, b"ok", 0, {})
                established = True
    return events


def check_events(events: list, hmac_key: bytes | None) -> None:
    assert all(isinstance(e, (ConnectRequest, InvokeRequest, PingRequest, Violation)) for e in events)
    violations = [i for i, e in enumerate(events) if isinstance(e, Violation)]
    if violations:
        assert violations == [len(events) - 1], "nothing may follow a violation"
        reply = events[-1].reply
        if reply is not None:  # a CONNECTFAIL that a Pyro4 client can read
            reader = _wire.FrameReader()
            reader.feed(reply)
            fail = reader.next_message()
            assert fail.type == _wire.MSG_CONNECTFAIL and reader.buffered == 0
            _wire.check_hmac(fail, hmac_key)
            assert isinstance(get_serializer(fail.serializer_id).loads(fail.data), str)


@FAST
@given(st.binary(max_size=1500), st.lists(st.integers(0, 1500), max_size=8), st.booleans(),
       st.sampled_from([None, b"key"]))
def test_protocol_turns_random_bytes_into_events_only(data, cuts, established, hmac_key):
    proto = ServerProtocol(MAX_SIZE, hmac_key)
    proto.established = established
    check_events(run_protocol(proto, split(data, cuts), established), hmac_key)


@FAST
@given(mutated(valid_streams), st.lists(st.integers(0, 3000), max_size=6), st.booleans())
def test_protocol_turns_mutated_frames_into_events_only(data, cuts, established):
    proto = ServerProtocol(MAX_SIZE)
    proto.established = established
    check_events(run_protocol(proto, split(data, cuts), established), None)


@FAST
@given(st.lists(messages, min_size=1, max_size=4), st.lists(st.integers(0, 3000), max_size=6))
def test_protocol_events_follow_the_handshake_rules(msgs, cuts):
    proto = ServerProtocol(MAX_SIZE)
    events = run_protocol(proto, split(frames_of(msgs), cuts), False)
    check_events(events, None)
    for msg, event in zip(msgs, events):
        if isinstance(event, ConnectRequest):
            assert msg.type == _wire.MSG_CONNECT
        elif isinstance(event, (InvokeRequest, PingRequest)):
            assert msg.type in (_wire.MSG_INVOKE, _wire.MSG_PING)


# --- serializers -----------------------------------------------------------------------------------


def loads_only_documented(name: str, data: bytes) -> None:
    serializer = get_serializer(name)
    try:
        serializer.loads_call(data)
    except (errors.SerializeError, errors.SecurityError):
        pass
    try:
        serializer.loads(data)
    except (errors.SerializeError, errors.SecurityError):
        pass


@FAST
@given(st.sampled_from(SERIALIZERS), st.binary(max_size=500))
@example("marshal", b"(\xff\xff\xff\x7f")
@example("serpent", SERPENT_HEAD + b"-" * 50_000 + b"1")
@example("serpent", SERPENT_HEAD + b"{'__class__':'Pyro4.core.Proxy','state':('not a uri',(),(),(),0,None,'',0)}")
@example("json", b'{"__class__": "Pyro4.core.URI", "state": 7}')
def test_serializers_give_values_or_documented_errors_on_random_bytes(name, data):
    loads_only_documented(name, data)


class_names = st.sampled_from(["Pyro4.core.URI", "Pyro4.core.Proxy", "Pyro4.core.Daemon", "Pyro4.errors.PyroError",
                               "Pyro4.futures._ExceptionWrapper", "builtins.ValueError", "float", "sqlite3.Error",
                               "ValueError", "__main__.X", "mod.Cls"])
json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    | st.fixed_dictionaries({"__class__": class_names}, optional={
        "state": inner, "args": inner, "attributes": inner, "exception": inner, "__exception__": st.booleans(),
        "value": st.just("nan") | inner}),
    max_leaves=20)


@FAST
@given(st.sampled_from(SERIALIZERS), json_like)
def test_class_dicts_of_any_shape_give_values_or_documented_errors(name, value):
    import json
    import marshal
    if name == "serpent":
        data = SERPENT_HEAD + repr(value).encode()
    elif name == "json":
        data = json.dumps(value).encode()
    else:
        data = marshal.dumps(value)
    loads_only_documented(name, data)


@FAST
@given(st.sampled_from(SERIALIZERS), mutated(st.sampled_from([
    SERPENT_HEAD + b"('svc','echo',(1,'two',[3.0,None,True]),{'k':{'__class__':'Pyro4.core.URI',"
                   b"'state':('PYRO','x',None,'127.0.0.1',1)}})",
    b'{"object": "svc", "method": "echo", "params": [1, {"data": "AAE=", "encoding": "base64"}], "kwargs": {}}',
    b"\xa9\x04\xda\x03svc\xda\x04echo\xdb\x02\x00\x00\x00\xe9\x01\x00\x00\x00\xfb0\xfb0",
])))
def test_mutated_call_payloads_give_values_or_documented_errors(name, data):
    loads_only_documented(name, data)


# --- the serpent fast path --------------------------------------------------------------------------

serpentish = st.text(alphabet="()[]{},:'\"\\-+.0123456789eEjxTrueFalsNon \n\u0661", max_size=60)
@FAST
@given(serpentish)
@example("(1,)")
@example("{1:2,3:[4,(5,)]}")
@example("('a\\'b',\"c\")")
def test_fast_serpent_reader_never_accepts_what_serpent_reads_differently(text):
    data = SERPENT_HEAD + text.encode("utf-8")
    fast = _fastserpent.loads(data)
    if fast is _fastserpent.FAIL:
        return
    try:
        expected = ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
        pytest.fail(f"fast path accepted {text!r}, which serpent refuses")
    assert repr(fast) == repr(expected)


@pytest.mark.parametrize("text", ["'", '"', "['x',']", "01", "[007]", "1\u0661"])
def test_fast_serpent_reader_refuses_what_serpent_refuses(text):
    assert _fastserpent.loads(SERPENT_HEAD + text.encode("utf-8")) is _fastserpent.FAIL


serpent_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.complex_numbers() | st.text() | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.frozensets(st.integers() | st.text(), max_size=3)
    | st.dictionaries(st.integers() | st.text(max_size=5), inner, max_size=4),
    max_leaves=25)


@FAST
@given(serpent_values)
def test_the_python_3_10_literal_check_accepts_all_that_serpent_writes(value):
    import serpent
    from pyro_loops._serializers import _only_literals
    assert _only_literals(serpent.dumps(value, module_in_classname=True).decode("utf-8"))
