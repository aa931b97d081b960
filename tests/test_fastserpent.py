"""The serpent fast path must agree exactly with serpent itself, or step aside."""

import ast

import serpent
from hypothesis import given, settings, strategies as st

from pyro_loops import _fastserpent

scalars = (st.none() | st.booleans() | st.integers() | st.text()
           | st.floats(allow_nan=False, allow_infinity=True))
hashables = st.integers() | st.text()  # serpent refuses None as a key
values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=5) | st.tuples(inner, inner)
                   | st.dictionaries(hashables, inner, max_size=5)
                   | st.frozensets(hashables, max_size=4).map(set)),
    max_leaves=30)


def literal(payload: bytes):
    return ast.literal_eval(payload.decode("utf-8").split("\n", 1)[1])


@settings(max_examples=300, deadline=None)
@given(values)
def test_fast_reader_agrees_with_literal_eval_on_serpent_output(value):
    payload = serpent.dumps(value, module_in_classname=True)
    fast = _fastserpent.loads(payload)
    if fast is not _fastserpent.FAIL:
        assert repr(fast) == repr(literal(payload))


@settings(max_examples=300, deadline=None)
@given(values)
def test_fast_writer_output_reads_back_as_serpent_would(value):
    payload = _fastserpent.dumps(value)
    if payload is None:
        return
    assert payload.startswith(b"# serpent utf-8 python3.2\n")
    assert repr(serpent.loads(payload)) == repr(literal(serpent.dumps(value, module_in_classname=True)))


@settings(max_examples=300, deadline=None)
@given(values | st.lists(st.sampled_from(["a, b", "k: v", ", ", 1, "x"]), max_size=4))
def test_fast_writer_output_is_byte_for_byte_what_serpent_writes(value):
    # Same bytes, so message sizes (and MAX_MESSAGE_SIZE refusals) are Pyro4's.
    payload = _fastserpent.dumps(value)
    if payload is not None:
        assert payload == serpent.dumps(value, module_in_classname=True)


def test_writer_declines_values_serpent_writes_differently():
    for value in (b"bytes", {1, 2}, set(), float("inf"), float("nan"), object(), ValueError("x")):
        assert _fastserpent.dumps(value) is None


def test_reader_declines_text_outside_its_subset():
    for text in (b"# serpent utf-8 python3.2\n(1+2j)", b"# serpent utf-8 python3.2\nb'x'",
                 b"# serpent utf-8 python3.2\n(1,2", b"# serpent utf-8 python3.2\n[1] [2]",
                 b"no header", b"# serpent utf-8 python3.2\n{[1]:2}"):
        assert _fastserpent.loads(text) is _fastserpent.FAIL


def test_single_parenthesised_value_is_not_a_tuple():
    assert _fastserpent.loads(b"# serpent utf-8 python3.2\n(5)") == 5
    assert _fastserpent.loads(b"# serpent utf-8 python3.2\n(5,)") == (5,)


def test_indented_lines_go_to_the_full_parser_which_may_refuse_them():
    # Python's parser refuses "0\n " (IndentationError) yet reads "[1,\n 2]": the reader declines both.
    for body in (b"0\n ", b"0\n\t", b"\n 0", b"[1,\n 2]"):
        assert _fastserpent.loads(b"# serpent utf-8 python3.2\n" + body) is _fastserpent.FAIL
