"""The sans-IO framing layer: bytes in, messages out, and back (protocol notes 1).

No sockets here: every test feeds byte strings to ``FrameReader`` or checks the
bytes ``encode`` produces, against the captured examples and worked numbers of
the protocol notes where there are some.
"""

import hashlib
import hmac
import random
import struct
import zlib

import pytest

from pyro_loops import _wire, errors
from pyro_loops._wire import FrameError, FrameReader, Message

HEADER = "!4sHHHHiHHHH"
SERPENT_HEAD = b"# serpent utf-8 python3.2\n"

# protocol notes 1.9, byte for byte
CAPTURED_CONNECT = bytes.fromhex(
    "5059524f003000010010000000000040000100000000356b") + SERPENT_HEAD + b"{'handshake':'hello','object':'thing'}"
CAPTURED_CORR = bytes.fromhex("b1c295fe5cb5440d9653a48fa19a7b35")
CAPTURED_RESULT = bytes.fromhex(
    "5059524f00300005000000010000001b0001001600003551") + b"CORR\x00\x10" + CAPTURED_CORR + SERPENT_HEAD + b"3"
CAPTURED_INVOKE = bytes.fromhex("5059524f003000040000000100000044000200000000" "3564") + \
    b'{"object": "thing", "method": "add", "params": [1, 2], "kwargs": {}}'


def read_all(reader: FrameReader) -> list[Message]:
    messages = []
    while (msg := reader.next_message()) is not None:
        messages.append(msg)
    return messages


def raw_header(msg_type=4, flags=0, seq=1, data_len=0, ser=1, ann_len=0, tag=b"PYRO", version=48,
               check=None, reserved=0) -> bytes:
    if check is None:
        check = (msg_type + version + data_len + ann_len + ser + flags + seq + 0x34E9) & 0xFFFF
    return struct.pack(HEADER, tag, version, msg_type, flags, seq, data_len, ser, ann_len, reserved, check)


# --- checksum and captured bytes --------------------------------------------------


def test_checksum_matches_the_worked_example_of_protocol_1_2():
    # CONNECT: type 1, data 64, ann 0, ser 1, flags 16, seq 0 -> 0x356B ("35 6b" on the wire)
    assert _wire.checksum(1, 16, 0, 64, 1, 0) == 0x356B
    encoded = _wire.encode(Message(_wire.MSG_CONNECT, b"x" * 64, 1, 16, 0))
    assert encoded[22:24] == b"\x35\x6b"


def test_checksum_wraps_at_16_bits():
    value = _wire.checksum(0xFFFF, 0xFFFF, 0xFFFF, 0x7FFFFFFF, 0xFFFF, 0xFFFF)
    assert value == (0xFFFF * 5 + 0x7FFFFFFF + 48 + 0x34E9) & 0xFFFF


def test_captured_connect_decodes_to_the_documented_fields():
    reader = FrameReader()
    reader.feed(CAPTURED_CONNECT)
    msg = reader.next_message()
    assert (msg.type, msg.flags, msg.seq, msg.serializer_id) == (_wire.MSG_CONNECT, _wire.FLAGS_META_ON_CONNECT, 0, 1)
    assert msg.annotations == {}
    assert msg.data == SERPENT_HEAD + b"{'handshake':'hello','object':'thing'}"
    assert len(msg.data) == 64
    assert reader.next_message() is None and reader.buffered == 0


def test_captured_result_decodes_with_its_corr_annotation():
    reader = FrameReader()
    reader.feed(CAPTURED_RESULT)
    msg = reader.next_message()
    assert (msg.type, msg.flags, msg.seq, msg.serializer_id) == (_wire.MSG_RESULT, 0, 1, 1)
    assert msg.annotations == {"CORR": CAPTURED_CORR}
    assert msg.data == SERPENT_HEAD + b"3"


def test_captured_json_invoke_decodes_and_reencodes_to_the_same_bytes():
    reader = FrameReader()
    reader.feed(CAPTURED_INVOKE)
    msg = reader.next_message()
    assert (msg.type, msg.flags, msg.seq, msg.serializer_id) == (_wire.MSG_INVOKE, 0, 1, 2)
    assert msg.data.startswith(b'{"object": "thing"')
    assert _wire.encode(msg) == CAPTURED_INVOKE


def test_captured_result_reencodes_to_the_captured_bytes():
    msg = Message(_wire.MSG_RESULT, SERPENT_HEAD + b"3", 1, 0, 1, {"CORR": CAPTURED_CORR})
    assert _wire.encode(msg) == CAPTURED_RESULT


# --- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("annotations", [{}, {"CORR": b"c" * 16}, {"ZZZZ": b"last", "AAAA": b"first", "EMPT": b""}])
def test_encode_then_read_gives_back_the_same_message(annotations):
    msg = Message(_wire.MSG_INVOKE, b"payload \x00\xff", 6, _wire.FLAGS_ONEWAY | _wire.FLAGS_BATCH, 65535, annotations)
    reader = FrameReader()
    reader.feed(_wire.encode(msg))
    assert read_all(reader) == [msg]


def test_annotation_length_field_counts_every_chunk_with_its_six_byte_header():
    data = _wire.encode(Message(_wire.MSG_RESULT, b"", 1, 0, 0, {"AAAA": b"12345", "BBBB": b""}))
    (ann_len,) = struct.unpack_from("!H", data, 18)
    assert ann_len == (6 + 5) + (6 + 0)
    assert data[24:24 + ann_len] == b"AAAA\x00\x0512345BBBB\x00\x00"


def test_annotation_ids_must_be_four_characters():
    with pytest.raises(errors.ProtocolError, match="4 characters"):
        _wire.encode(Message(_wire.MSG_RESULT, b"", 1, annotations={"TOOLONG": b""}))


def test_annotations_above_65535_bytes_together_are_refused_when_encoding():
    annotations = {"AAAA": b"a" * 40000, "BBBB": b"b" * 40000}
    with pytest.raises(errors.ProtocolError, match="annotations too large"):
        _wire.encode(Message(_wire.MSG_RESULT, b"", 1, annotations=annotations))


def test_reserved_header_field_is_ignored_on_receive():
    reader = FrameReader()
    reader.feed(raw_header(data_len=2, reserved=0xBEEF) + b"hi")
    assert reader.next_message().data == b"hi"


def test_several_messages_in_one_chunk_come_out_in_order():
    messages = [Message(_wire.MSG_INVOKE, bytes([i]) * i, 1, 0, i, {"CORR": bytes(16)} if i % 2 else {})
                for i in range(10)]
    reader = FrameReader()
    reader.feed(b"".join(_wire.encode(m) for m in messages))
    assert read_all(reader) == messages


# --- arrival in pieces ------------------------------------------------------------


def test_message_fed_one_byte_at_a_time_appears_only_when_complete():
    msg = Message(_wire.MSG_INVOKE, b"x" * 50, 1, 0, 7, {"CORR": bytes(16), "USER": b"value"})
    data = _wire.encode(msg)
    reader = FrameReader()
    for i, byte in enumerate(data):
        reader.feed(bytes([byte]))
        got = reader.next_message()
        if i < len(data) - 1:
            assert got is None
            assert reader.buffered == i + 1
        else:
            assert got == msg
    assert reader.buffered == 0


@pytest.mark.parametrize("seed", range(20))
def test_stream_split_at_random_points_gives_the_same_messages(seed):
    rng = random.Random(seed)
    messages = [Message(rng.choice([4, 6]), rng.randbytes(rng.randrange(0, 600)), rng.choice([1, 2, 3]),
                        rng.randrange(0, 0x80), rng.randrange(0, 65536),
                        {"CORR": rng.randbytes(16)} if rng.random() < 0.5 else {})
                for _ in range(rng.randrange(1, 8))]
    stream = b"".join(_wire.encode(m) for m in messages)
    reader = FrameReader()
    got = []
    pos = 0
    while pos < len(stream):
        step = rng.randrange(1, 100)
        reader.feed(stream[pos:pos + step])
        pos += step
        got += read_all(reader)
    assert got == messages
    assert reader.buffered == 0


# --- what the reader refuses ------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"G", b"PX", b"PYRX", b"GET / HTTP/1.0\r\n"])
def test_wrong_tag_is_refused_as_soon_as_the_first_wrong_byte_arrives(garbage):
    reader = FrameReader()
    reader.feed(garbage)
    with pytest.raises(FrameError, match="invalid data or unsupported protocol version"):
        reader.next_message()


def test_correct_tag_prefix_waits_for_more_bytes():
    reader = FrameReader()
    reader.feed(b"PYR")
    assert reader.next_message() is None


def test_wrong_protocol_version_is_refused():
    reader = FrameReader()
    reader.feed(raw_header(version=47))
    with pytest.raises(FrameError, match="unsupported protocol version"):
        reader.next_message()


def test_checksum_mismatch_is_refused():
    reader = FrameReader()
    reader.feed(raw_header(check=0x1234))
    with pytest.raises(FrameError, match="header checksum mismatch"):
        reader.next_message()


def test_negative_payload_length_is_refused():
    reader = FrameReader()
    reader.feed(raw_header(data_len=-1))
    with pytest.raises(FrameError, match="negative payload length"):
        reader.next_message()


def test_oversize_length_is_refused_from_the_header_alone():
    reader = FrameReader(max_message_size=1000)
    reader.feed(raw_header(data_len=0x7FFFFFFF))  # 2 GB announced, not one payload byte sent
    with pytest.raises(errors.MessageTooLargeError, match="max message size exceeded"):
        reader.next_message()
    assert reader.buffered == 24


def test_message_size_limit_counts_annotations_and_payload_together():
    ok = _wire.encode(Message(_wire.MSG_INVOKE, b"x" * 90, 1, annotations={"AAAA": b"1234"}))  # 90 + 10
    reader = FrameReader(max_message_size=100)
    reader.feed(ok)
    assert reader.next_message() is not None
    too_big = _wire.encode(Message(_wire.MSG_INVOKE, b"x" * 91, 1, annotations={"AAAA": b"1234"}))
    reader.feed(too_big)
    with pytest.raises(errors.MessageTooLargeError):
        reader.next_message()


def test_without_a_limit_a_large_announcement_just_waits_for_its_bytes():
    reader = FrameReader()
    reader.feed(raw_header(data_len=50_000_000) + b"abc")
    assert reader.next_message() is None
    assert reader.buffered == 27


@pytest.mark.parametrize("annotations, message", [
    (b"CORR\x00", "truncated annotation chunk"),
    (b"CORR\x00\x10" + b"x" * 5, "longer than the annotations block"),
    (b"\xff\xfe\xfd\xfc\x00\x00", "not ASCII"),
])
def test_malformed_annotation_block_is_a_frame_error(annotations, message):
    reader = FrameReader()
    reader.feed(raw_header(ann_len=len(annotations)) + annotations)
    with pytest.raises(errors.ProtocolError, match=message):
        reader.next_message()


# --- HMAC -------------------------------------------------------------------------


def test_hmac_digest_follows_the_worked_example_of_protocol_1_6():
    payload = SERPENT_HEAD + b"('thing','add',(1,2),{})"
    msg = Message(_wire.MSG_INVOKE, payload, 1, 0, 1, {"ZZZZ": b"last", "AAAA": b"first"})
    data = _wire.encode(msg, b"sekrit")
    expected = hmac.new(b"sekrit", payload + b"first" + b"last", hashlib.sha1).digest()
    # chunks in the sender's order, HMAC last, then the payload
    assert data[24:] == b"ZZZZ\x00\x04last" + b"AAAA\x00\x05first" + b"HMAC\x00\x14" + expected + payload


def test_hmac_is_computed_over_the_payload_as_sent_after_compression():
    raw = b"z" * 1000
    packed, flags = _wire.compress_if_useful(raw, 0)
    msg = Message(_wire.MSG_RESULT, packed, 1, flags, 3, {})
    reader = FrameReader()
    reader.feed(_wire.encode(msg, b"key"))
    got = reader.next_message()
    assert got.annotations["HMAC"] == hmac.new(b"key", packed, hashlib.sha1).digest()
    _wire.check_hmac(got, b"key")
    assert got.payload() == raw


def test_signed_message_passes_the_check_with_the_same_key():
    reader = FrameReader()
    reader.feed(_wire.encode(Message(_wire.MSG_INVOKE, b"data", 1, annotations={"CORR": bytes(16)}), b"k"))
    _wire.check_hmac(reader.next_message(), b"k")


def test_signing_replaces_an_hmac_annotation_already_present():
    msg = Message(_wire.MSG_INVOKE, b"data", 1, annotations={"HMAC": b"stale", "AAAA": b"x"})
    reader = FrameReader()
    reader.feed(_wire.encode(msg, b"k"))
    got = reader.next_message()
    assert list(got.annotations) == ["AAAA", "HMAC"]
    _wire.check_hmac(got, b"k")


@pytest.mark.parametrize("sign_key, check_key, message", [
    (b"right", b"wrong", "message hmac mismatch"),
    (None, b"key", "hmac key config not symmetric"),
    (b"key", None, "hmac key config not symmetric"),
])
def test_hmac_check_refuses_wrong_or_one_sided_keys(sign_key, check_key, message):
    reader = FrameReader()
    reader.feed(_wire.encode(Message(_wire.MSG_INVOKE, b"data", 1), sign_key))
    with pytest.raises(errors.SecurityError, match=message):
        _wire.check_hmac(reader.next_message(), check_key)


def test_tampered_payload_fails_the_hmac_check():
    data = bytearray(_wire.encode(Message(_wire.MSG_INVOKE, b"transfer 10", 1), b"k"))
    data[-2:] = b"99"
    reader = FrameReader()
    reader.feed(bytes(data))
    with pytest.raises(errors.SecurityError, match="mismatch"):
        _wire.check_hmac(reader.next_message(), b"k")


# --- compression ------------------------------------------------------------------


def test_compression_applies_only_from_200_bytes_and_only_when_smaller():
    assert _wire.compress_if_useful(b"a" * 199, 0) == (b"a" * 199, 0)
    packed, flags = _wire.compress_if_useful(b"a" * 200, 0)
    assert flags == _wire.FLAGS_COMPRESSED and packed.startswith(b"\x78\x9c")
    incompressible = random.Random(1).randbytes(500)
    assert _wire.compress_if_useful(incompressible, 4) == (incompressible, 4)


def test_compressed_message_round_trips_through_the_reader():
    raw = b"hello world " * 100
    packed, flags = _wire.compress_if_useful(raw, _wire.FLAGS_BATCH)
    reader = FrameReader()
    reader.feed(_wire.encode(Message(_wire.MSG_INVOKE, packed, 1, flags, 2)))
    msg = reader.next_message()
    assert msg.flags == _wire.FLAGS_BATCH | _wire.FLAGS_COMPRESSED
    assert msg.data == packed and msg.payload() == raw


def test_payload_is_returned_untouched_without_the_compressed_flag():
    assert Message(_wire.MSG_INVOKE, b"\x78\x9c not really", 1).payload() == b"\x78\x9c not really"


def test_compressed_flag_on_uncompressed_data_raises_zlib_error():
    with pytest.raises(zlib.error):
        Message(_wire.MSG_INVOKE, b"plain text", 1, _wire.FLAGS_COMPRESSED).payload()


def test_truncated_compressed_payload_raises_zlib_error():
    packed = zlib.compress(b"x" * 5000)
    with pytest.raises(zlib.error, match="incomplete"):
        Message(_wire.MSG_INVOKE, packed[:-4], 1, _wire.FLAGS_COMPRESSED).payload()


def test_decompression_is_bounded_by_the_size_limit():
    bomb = zlib.compress(b"\0" * 10_000_000)  # about 10 kB that inflate to 10 MB
    msg = Message(_wire.MSG_INVOKE, bomb, 1, _wire.FLAGS_COMPRESSED)
    with pytest.raises(errors.MessageTooLargeError, match="decompressed payload exceeds 100000 bytes"):
        msg.payload(max_size=100_000)
    assert len(msg.payload(max_size=10_000_000)) == 10_000_000


def test_decompression_is_bounded_even_without_a_size_limit(monkeypatch):
    # MAX_MESSAGE_SIZE 0 means "unlimited", but a small frame must not inflate into gigabytes
    monkeypatch.setattr(_wire, "DECOMPRESSED_LIMIT", 1024 * 1024)
    bomb = zlib.compress(b"\0" * (2 * 1024 * 1024))
    msg = _wire.Message(_wire.MSG_INVOKE, bomb, 1, _wire.FLAGS_COMPRESSED)
    with pytest.raises(errors.MessageTooLargeError):
        msg.payload(0)
    small = _wire.Message(_wire.MSG_INVOKE, zlib.compress(b"\0" * 1000), 1, _wire.FLAGS_COMPRESSED)
    assert small.payload(0) == b"\0" * 1000
