"""Coverage-guided fuzzing of what a daemon does with bytes from the network.

The same code path a connection takes, minus the socket: bytes are fed in
pieces to the connection state machine (which owns the frame reader), each
message that comes out is decompressed within the size limit and its payload
handed to the serializer the message names. The property is the one the
hypothesis tests in ``tests/test_fuzz_properties.py`` check, for as long as you
let it run: only the documented errors come out (ProtocolError and its
subclasses -- SerializeError, MessageTooLargeError, FrameError --, SecurityError,
zlib.error for a bad compressed payload), nothing is buffered beyond one frame,
and nothing runs long (libFuzzer's ``-timeout`` turns a hang into a crash).

Input layout, so seeds are easy to write by hand:

- byte 0, low 2 bits: the target -- 0: a new connection, 1: a connection past
  its handshake, 2: one serializer's ``loads``/``loads_call`` on the rest,
  3: the bare frame reader with a size limit; bit 2: the daemon has an HMAC key;
- byte 1: the piece size for feeding (1..256), or the serializer for target 2;
- the rest: the bytes from the network.

Run: ``python fuzz/fuzz_frames.py -atheris_runs=100000`` (see fuzz/README.rst).
"""

from __future__ import annotations

import os
import sys
import zlib

import atheris

with atheris.instrument_imports(include=["pyro_loops"]):
    from pyro_loops import _fastserpent, _wire, errors
    from pyro_loops._protocol import ConnectRequest, InvokeRequest, PingRequest, ServerProtocol, Violation
    from pyro_loops._serializers import get_serializer

MAX_SIZE = 64 * 1024
HMAC_KEY = b"fuzz key"
SERIALIZERS = [get_serializer(name) for name in ("serpent", "json", "marshal")]
#: what may come out of decoding hostile bytes; anything else is a finding
DOCUMENTED = (errors.ProtocolError, errors.SecurityError)


def _decode_payload(msg: _wire.Message) -> None:
    try:
        payload = msg.payload(MAX_SIZE)
    except (zlib.error, errors.MessageTooLargeError):
        return
    assert len(payload) <= MAX_SIZE, "decompression went past the size limit"
    try:
        serializer = get_serializer(msg.serializer_id)
    except errors.SerializeError:
        return
    if serializer.name == "pickle":
        return  # never accepted unless the application opts in, and then trusted by definition
    try:
        if msg.type == _wire.MSG_INVOKE:
            serializer.loads_call(payload)
        else:
            serializer.loads(payload)
    except DOCUMENTED:
        pass


def _connection(data: bytes, established: bool, key: bytes | None, piece: int) -> None:
    proto = ServerProtocol(MAX_SIZE, key)
    proto.established = established
    for start in range(0, len(data), piece):
        proto.receive_data(data[start:start + piece])
        while (event := proto.next_event()) is not None:
            if isinstance(event, Violation):
                assert proto.next_event() is None, "an event after a violation"
                if event.reply is not None:
                    reader = _wire.FrameReader()
                    reader.feed(event.reply)
                    fail = reader.next_message()
                    assert fail.type == _wire.MSG_CONNECTFAIL and reader.buffered == 0
                return
            assert isinstance(event, (ConnectRequest, InvokeRequest, PingRequest))
            if isinstance(event, ConnectRequest):
                proto.connect_ok_bytes(event.msg, b"ok", 0, {})
            _decode_payload(event.msg)
        assert proto.reader.buffered < _wire.HEADER_SIZE + 0xFFFF + MAX_SIZE, "buffered beyond one frame"


def _serializer(data: bytes, choice: int) -> None:
    serializer = SERIALIZERS[choice % len(SERIALIZERS)]
    for decode in (serializer.loads, serializer.loads_call):
        try:
            decode(data)
        except DOCUMENTED:
            pass
    if serializer.name == "serpent":
        _fastserpent.loads(data)  # returns a value or FAIL, never raises


def _frames(data: bytes, piece: int) -> None:
    reader = _wire.FrameReader(MAX_SIZE)
    for start in range(0, len(data), piece):
        reader.feed(data[start:start + piece])
        try:
            while (msg := reader.next_message()) is not None:
                assert len(msg.data) <= MAX_SIZE
        except DOCUMENTED:
            return
        assert reader.buffered < _wire.HEADER_SIZE + MAX_SIZE


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    target, choice, rest = data[0] & 3, data[1], data[2:]
    key = HMAC_KEY if data[0] & 4 else None
    piece = choice + 1
    if target == 0:
        _connection(rest, False, key, piece)
    elif target == 1:
        _connection(rest, True, key, piece)
    elif target == 2:
        _serializer(rest, choice)
    else:
        _frames(rest, piece)


def seeds() -> dict[str, bytes]:
    """Valid inputs to start from: handshakes and calls in each serializer, compressed and signed ones."""
    serpent, json_, marshal_ = SERIALIZERS

    def frame(msg_type, payload, ser, flags=0, seq=0, annotations=None, key=None):
        return _wire.encode(_wire.Message(msg_type, payload, ser.serializer_id if hasattr(ser, "serializer_id")
                                          else ser, flags, seq, annotations or {}), key)

    out = {}
    for ser in SERIALIZERS:
        connect = frame(_wire.MSG_CONNECT, ser.dumps({"handshake": "hello", "object": "thing"}), ser,
                        _wire.FLAGS_META_ON_CONNECT)
        call = frame(_wire.MSG_INVOKE, ser.dumps_call("thing", "add", (1, [2.5, None], {"k": "v"}), {"x": True}),
                     ser, seq=1, annotations={"CORR": bytes(16)})
        batch = frame(_wire.MSG_INVOKE, ser.dumps_call("thing", "<batch>", [("a", (), {}), ("b", (1,), {})], None),
                      ser, _wire.FLAGS_BATCH, seq=2)
        out[f"connect-call-{ser.name}"] = bytes([0, 255]) + connect + call + batch
        out[f"call-{ser.name}"] = bytes([1, 7]) + call + frame(_wire.MSG_PING, b"ping", 42)
        out[f"payload-{ser.name}"] = bytes([2, SERIALIZERS.index(ser)]) + ser.dumps_call(
            "thing", "m", ({"__class__": "Pyro4.core.URI", "state": ("PYRO", "x", None, "127.0.0.1", 1)},), {})
    packed, flags = _wire.compress_if_useful(serpent.dumps_call("thing", "m", ("z" * 500,), {}), 0)
    out["compressed"] = bytes([1, 100]) + frame(_wire.MSG_INVOKE, packed, serpent, flags, seq=3)
    out["signed"] = bytes([4, 30]) + frame(_wire.MSG_CONNECT, serpent.dumps({"handshake": "hello"}), serpent,
                                           key=HMAC_KEY)
    out["exception-dict"] = bytes([2, 1]) + json_.dumps(
        {"__class__": "builtins.ValueError", "__exception__": True, "args": [1], "attributes": {}})
    out["marshal-call"] = bytes([2, 2]) + marshal_.dumps_call("thing", "m", [1, 2], {})
    # the shape of nearly every call, as a Pyro4 client writes it (the daemon's fast lane reads it)
    out["call-scalars-pyro4"] = bytes([1, 255]) + frame(
        _wire.MSG_INVOKE, b"# serpent utf-8 python3.2\n('thing','add',(1,'two',None,2.5),{})", serpent, seq=4)
    out["frames"] = bytes([3, 3]) + frame(_wire.MSG_RESULT, serpent.dumps(3), serpent, seq=1,
                                          annotations={"CORR": bytes(16)})
    return out


def main() -> None:
    args = sys.argv
    if "--seed-corpus" in args:
        i = args.index("--seed-corpus")
        directory = args[i + 1]
        os.makedirs(directory, exist_ok=True)
        for name, data in seeds().items():
            with open(os.path.join(directory, "seed-" + name), "wb") as f:
                f.write(data)
        args = args[:i] + args[i + 2:] + [directory]
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
