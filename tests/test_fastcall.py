"""The fast lane (``_fastcall``) agrees with the general path wherever it answers.

Each fast function may decline (None or FAIL); where it does not, its value,
bytes or message must be exactly the general path's, down to the types
(``1`` is not ``1.0`` nor ``True``) and the sign of a zero. Payloads come from
the general writers, from text built of the characters that matter to the
templates, and from the fuzz seeds in fuzz/fuzz_frames.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import sys
import types

import pytest
import serpent
from hypothesis import HealthCheck, example, given, settings, strategies as st

from pyro_loops import _fastcall, _wire, errors
from pyro_loops._serializers import Serializer, get_serializer

SERPENT = get_serializer("serpent")
HEADER = b"# serpent utf-8 python3.2\n"
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def full_loads(payload):
    """The general reader: what a serpent payload means, or the exception it raises."""
    try:
        return Serializer.loads(SERPENT, payload)
    except (errors.SerializeError, errors.SecurityError) as exc:
        return exc


def full_loads_call(payload):
    try:
        return Serializer.loads_call(SERPENT, payload)
    except (errors.SerializeError, errors.SecurityError) as exc:
        return exc


def same(a, b) -> bool:
    """Equal values of equal types all the way down (floats by repr: -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


scalars = st.one_of(
    st.integers(), st.integers(-10, 10), st.booleans(), st.none(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["", "'", '"', "it's", 'say "hi"', "a'b\"c", "\\", "\n", "\r", "\x00", "é", "\ud800",
                     "base64", "__class__", "a,", ",", "(", ")", "), {})"]))
names = st.one_of(st.text(max_size=12), st.sampled_from(["obj", "method", "Pyro.Daemon", "a'b", "x\\y"]))
# text built of what the templates look at, to reach their edges
template_text = st.text(alphabet="()'\", 0123456789.-+eE{}:\\\n\r\x00\tNoneTruFalsé[]x", max_size=40)


# --- serpent calls -------------------------------------------------------------------------------

@SETTINGS
@given(names, names, st.lists(scalars, max_size=6).map(tuple),
       st.one_of(st.just({}), st.dictionaries(st.text(max_size=3), scalars, max_size=2)))
@example("obj", "method", (42,), {})
@example("o", "m", (), {})
def test_fast_call_encoder_writes_what_the_full_encoder_writes(obj, method, vargs, kwargs):
    fast = _fastcall.serpent_call(obj, method, vargs, kwargs)
    if fast is not None:
        assert fast == Serializer.dumps_call(SERPENT, obj, method, vargs, kwargs)
    assert SERPENT.dumps_call(obj, method, vargs, kwargs) == Serializer.dumps_call(SERPENT, obj, method, vargs, kwargs)


@SETTINGS
@given(names, names, st.lists(scalars, max_size=6).map(tuple), st.booleans())
@example("obj", "method", (42,), True)
def test_fast_call_decoder_reads_what_the_full_decoder_reads(obj, method, vargs, pyro4_spacing):
    # ours writes repr()'s spacing, serpent (so Pyro4) none: both must read alike
    if pyro4_spacing:
        payload = serpent.dumps((obj, method, vargs, {}))
    else:
        payload = Serializer.dumps_call(SERPENT, obj, method, vargs, {})
    check_call_decoder(payload)


@SETTINGS
@given(template_text)
@example("'o', 'm', ('a,'), {}")
@example("'o', 'm', (1), {}")
@example("'o', 'm', (1, ), {}")
@example("'o','m',(01,),{}")
@example("'o','m',(1.,),{}")
@example("'o','m',(1e5-3,),{}")
@example("'o','m',(1,2),{})")
def test_fast_call_decoder_agrees_on_arbitrary_text(inner):
    check_call_decoder(HEADER + ("(" + inner + ")").encode("utf-8", "surrogatepass"))
    check_call_decoder(HEADER + inner.encode("utf-8", "surrogatepass"))


def check_call_decoder(payload: bytes) -> None:
    fast = _fastcall.serpent_request(payload)
    full = full_loads_call(payload)
    if fast is not _fastcall.FAIL:
        assert same(fast, full), (payload, fast, full)
    got = full_loads_call_via_serializer(payload)
    assert same(got, full) or (isinstance(got, Exception) and type(got) is type(full)), (payload, got, full)


def full_loads_call_via_serializer(payload):
    try:
        return SERPENT.loads_call(payload)
    except (errors.SerializeError, errors.SecurityError) as exc:
        return exc


# --- serpent values ------------------------------------------------------------------------------

@SETTINGS
@given(scalars)
@example(42)
@example(-0.0)
@example(1e300)
def test_fast_value_decoder_reads_what_the_full_decoder_reads(value):
    for payload in (SERPENT.dumps(value), serpent.dumps(value)):
        check_value_decoder(payload)


@SETTINGS
@given(template_text)
@example("01")
@example("1.")
@example("-0")
@example("1e5")
@example("'a'  ")
@example(" 42")
def test_fast_value_decoder_agrees_on_arbitrary_text(text):
    check_value_decoder(HEADER + text.encode("utf-8", "surrogatepass"))


def check_value_decoder(payload: bytes) -> None:
    fast = _fastcall.serpent_value(payload)
    if fast is not _fastcall.FAIL:
        full = full_loads(payload)
        assert same(fast, full), (payload, fast, full)


# --- framing -------------------------------------------------------------------------------------

annotations = st.dictionaries(st.sampled_from(["CORR", "HMAC", "STRM", "XXXX", "abc", "ABCDE", "ÉÉÉÉ"]),
                              st.one_of(st.binary(max_size=40), st.binary(min_size=16, max_size=16),
                                        st.text(max_size=3)), max_size=3)


@SETTINGS
@given(st.integers(1, 6), st.binary(max_size=300), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
       st.integers(0, 0xFFFF), annotations)
def test_fast_framing_writes_what_the_wire_encoder_writes(msg_type, payload, ser_id, flags, seq, notes):
    block = _fastcall.annotation_block(notes)
    try:
        full = _wire.encode(_wire.Message(msg_type, payload, ser_id, flags, seq, notes))
    except Exception:  # noqa: BLE001 - whatever it is, the fast lane must have declined
        assert block is None
        return
    if block is not None:
        assert _fastcall.frame(msg_type, payload, ser_id, flags, seq, block) == full
    if not notes:
        assert _fastcall.frame(msg_type, payload, ser_id, flags, seq) == full


@SETTINGS
@given(st.integers(1, 6), st.binary(max_size=300), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
       st.integers(0, 0xFFFF), annotations.filter(lambda n: _fastcall.annotation_block(n) is not None),
       st.integers(0, 400), st.binary(max_size=30), st.integers(-1, 64))
def test_fast_unframing_reads_what_the_frame_reader_reads(msg_type, payload, ser_id, flags, seq, notes, max_size,
                                                          extra, damage):
    data = bytearray(_wire.encode(_wire.Message(msg_type, payload, ser_id, flags, seq, notes)))
    if 0 <= damage < len(data):
        data[damage] ^= 0x5A
    check_unframe(bytes(data), max_size)
    check_unframe(bytes(data) + extra, max_size)
    check_unframe(bytes(data[:-1]), max_size)


def check_unframe(data: bytes, max_size: int) -> None:
    fast = _fastcall.unframe(data, max_size)
    if fast is None:
        return
    reader = _wire.FrameReader(max_size)
    reader.feed(data)
    assert reader.next_message() == fast
    assert reader.buffered == 0


# --- the fuzz seeds ------------------------------------------------------------------------------

def fuzz_seeds(monkeypatch) -> dict[str, bytes]:
    """fuzz/fuzz_frames.py's seeds; atheris (needed to fuzz, not to list them) stood in for if absent."""
    if importlib.util.find_spec("atheris") is None:
        monkeypatch.setitem(sys.modules, "atheris", types.SimpleNamespace(
            instrument_imports=lambda **_: contextlib.nullcontext()))
    path = pathlib.Path(__file__).parent.parent / "fuzz" / "fuzz_frames.py"
    spec = importlib.util.spec_from_file_location("fuzz_frames_for_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.seeds()


def test_fast_lane_agrees_with_the_full_path_on_the_fuzz_seeds(monkeypatch):
    seeds = fuzz_seeds(monkeypatch)
    assert seeds
    answered = 0
    for name, seed in seeds.items():
        stream = seed[2:]  # the layout: target byte, piece-size byte, then what came from the network
        for end in range(len(stream) + 1):
            check_unframe(stream[:end], 0)
        reader = _wire.FrameReader(0)
        reader.feed(stream)
        while True:
            try:
                msg = reader.next_message()
            except errors.ProtocolError:
                break
            if msg is None:
                break
            if msg.serializer_id == _fastcall.SERPENT_ID and not msg.flags & _wire.FLAGS_COMPRESSED:
                if _fastcall.serpent_request(msg.data) is not _fastcall.FAIL:
                    answered += 1
                if _fastcall.serpent_value(msg.data) is not _fastcall.FAIL:
                    answered += 1
                check_call_decoder(bytes(msg.data))
                check_value_decoder(bytes(msg.data))
        for cut in range(len(stream)):
            check_call_decoder(HEADER + stream[cut:])
    assert answered >= 2, "the seeds hold no call and no result the fast lane reads: the test would prove nothing"

