"""serpent's bytes fast path must read and write what the full path does, or step aside.

The full path is serpent itself: ``serpent.dumps`` to write, and
``serpent.loads`` followed by the serializer's rebuild walk (which turns
base64 dicts into bytes) to read. The fast path is ``_serpentbytes``.
"""

from __future__ import annotations

import base64

import pytest
import serpent
from hypothesis import given, settings, strategies as st

from pyro_loops import _serializers, _serpentbytes
from pyro_loops._fastserpent import FAIL

SERPENT = _serializers.get_serializer("serpent")

blobs = st.binary(max_size=40) | st.binary(min_size=60, max_size=200).map(bytearray)
scalars = (st.none() | st.booleans() | st.integers() | st.text()
           | st.floats(allow_nan=False, allow_infinity=False))
keys = st.integers() | st.text()
values = st.recursive(
    blobs | scalars,
    lambda inner: (st.lists(inner, max_size=5) | st.tuples(inner) | st.tuples(inner, inner)
                   | st.dictionaries(keys, inner, max_size=5)),
    max_leaves=20)
# text that looks like a bytes dict from inside a string, or is one the fast path must not take
tricky_text = st.sampled_from([
    "{'data': 'QUJD', 'encoding': 'base64'}", "{'data': '", "', 'encoding': 'base64'}", "'base64'",
    "{'data': 'QUJD=', 'encoding': 'base64'}", "#0", "{'data': '#0', 'encoding': 'base64'}", "__class__"])


def full_read(payload: bytes):
    return _serializers._rebuild(serpent.loads(payload))


def as_read(value):
    """``value`` as a reader gives it back: bytearrays arrive as bytes."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, list):
        return [as_read(item) for item in value]
    if isinstance(value, tuple):
        return tuple(as_read(item) for item in value)
    if isinstance(value, dict):
        return {key: as_read(item) for key, item in value.items()}
    return value


@pytest.fixture(autouse=True)
def small_steps(monkeypatch):
    """Base64 in steps of 6 bytes (8 characters), so that generated values take several."""
    monkeypatch.setattr(_serpentbytes, "STEP", 6)
    monkeypatch.setattr(_serpentbytes, "_TEXT_STEP", 8)


@settings(max_examples=200, deadline=None)
@given(values)
def test_fast_writer_output_reads_back_with_serpent_as_the_value(value):
    payload = _serpentbytes.dumps(value)
    if payload is None:
        return
    assert repr(full_read(payload)) == repr(as_read(value))


@settings(max_examples=200, deadline=None)
@given(values)
def test_fast_reader_agrees_with_the_full_reader_on_serpent_output(value):
    for payload in (serpent.dumps(value, module_in_classname=True), _serpentbytes.dumps(value)):
        if payload is None:
            continue
        fast = _serpentbytes.loads(payload)
        if fast is not FAIL:
            assert repr(fast[0]) == repr(full_read(payload))


@settings(max_examples=200, deadline=None)
@given(values, tricky_text)
def test_fast_reader_steps_aside_or_agrees_when_strings_look_like_bytes_dicts(value, text):
    payload = serpent.dumps([text, value, {"k": text}], module_in_classname=True)
    fast = _serpentbytes.loads(payload)
    if fast is not FAIL:
        assert repr(fast[0]) == repr(full_read(payload))


def test_bytes_values_of_a_call_take_the_fast_path_both_ways():
    data = bytes(range(256)) * 10
    payload = SERPENT.dumps_call("obj", "size", (data, bytearray(b"xy")), {})
    fast = _serpentbytes.loads(payload)
    assert fast is not FAIL
    assert fast[0] == ("obj", "size", (data, b"xy"), {})
    assert SERPENT.loads_call(payload) == ("obj", "size", (data, b"xy"), {})


@pytest.mark.parametrize("text", [
    "=QUJD",      # padding that is not where it may be
    "QU JD",      # a space: not base64 (a lenient decoder would skip it)
    "QUJ\\nD",    # an escape
    "QUJ",        # a length no padding explains
])
def test_invalid_base64_leaves_the_dict_to_the_full_reader(text):
    payload = b"# serpent utf-8 python3.2\n(" + _serpentbytes.PREFIX + text.encode() + _serpentbytes.SUFFIX + b",)"
    assert _serpentbytes.loads(payload) is FAIL
    assert SERPENT.loads(payload + b" " * 4096) == ({"data": text.replace("\\n", "\n"), "encoding": "base64"},)


def test_padding_inside_the_text_is_refused_even_where_a_step_ends():
    good = base64.b64encode(b"abcdef").decode()  # 8 characters: one step
    payload = ("# serpent utf-8 python3.2\n{'data': '" + base64.b64encode(b"ab").decode() + good
               + "', 'encoding': 'base64'}").encode()
    assert _serpentbytes.loads(payload) is FAIL
    with pytest.raises(ValueError):
        base64.b64decode(payload.split(b"'")[3], validate=True)


def test_class_dicts_around_bytes_are_still_rebuilt():
    error = ValueError(b"raw")
    payload = SERPENT.dumps((error, b"z" * 5000))
    value = SERPENT.loads(payload)
    assert isinstance(value[0], ValueError) and value[1] == b"z" * 5000


def test_writer_declines_what_serpent_writes_differently():
    for value in ({1, 2}, float("nan"), float("inf"), object(), (b"x", {b"key": 1}), [b"x", ValueError()]):
        assert _serpentbytes.dumps(value) is None
