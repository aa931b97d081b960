"""Red team: the fast codecs against hostile and odd Pyro4-shaped input.

``_fastcall``, ``_fastserpent`` and ``_serpentbytes`` promise to give exactly
what the general path gives for the same bytes, or to decline. Every test
here is differential: the fast function against the definition it stands in
for. For serpent text that definition is serpent itself (``serpent.loads``,
which is ``ast.literal_eval``, then the serializer's rebuild walk), not
``SerpentSerializer.loads``: that one reads through ``_fastserpent`` first,
so a fault shared by both fast readers would agree with itself. A decline is
always allowed; a value where serpent raises, a different value or type, or
an exception where a decline was due, is a defect.
"""

from __future__ import annotations

import pytest
import serpent

from pyro_loops import _fastcall, _fastserpent, _serializers, _serpentbytes, errors

SERPENT = _serializers.get_serializer("serpent")
HEADER = b"# serpent utf-8 python3.2\n"
FAIL = _fastcall.FAIL


class Refused(Exception):
    """What serpent raised, by type: the fast readers must not answer where serpent raises."""


def by_serpent(payload: bytes):
    """The value serpent (as Pyro4 does) reads from ``payload`` and the rebuild walk makes of it, or Refused."""
    try:
        return _serializers._rebuild(serpent.loads(payload))
    except Exception as exc:  # noqa: BLE001 - any refusal counts the same
        return Refused(type(exc).__name__)


def same(a, b) -> bool:
    """Equal values of equal types all the way down (floats by repr: -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(x, y) for x, y in zip(a, b)) \
            and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (set, frozenset)):
        return a == b and sorted(map(repr, a)) == sorted(map(repr, b))
    if isinstance(a, Refused):
        return True
    return a == b


def fast_readers(payload: bytes) -> dict:
    """What each fast reader makes of ``payload`` (FAIL where it declines)."""
    found = _serpentbytes.loads(payload)
    return {
        "serpent_value": _fastcall.serpent_value(payload),
        "serpent_request": _fastcall.serpent_request(payload),
        "_fastserpent": _fastserpent.loads(payload),
        "_serpentbytes": found if found is FAIL else found[0],
    }


def check_readers(payload: bytes) -> None:
    """Each fast reader declines or reads exactly serpent's value; the serializer agrees with serpent."""
    expected = by_serpent(payload)
    for name, got in fast_readers(payload).items():
        if got is FAIL:
            continue
        assert not isinstance(expected, Refused), (name, payload, got, expected)
        if name == "_fastserpent":  # before the rebuild walk
            assert same(_serializers._rebuild(got), expected), (name, payload, got, expected)
        else:
            assert same(got, expected), (name, payload, got, expected)
    check_serializer(payload, expected)


def check_serializer(payload: bytes, expected) -> None:
    """``SerpentSerializer.loads`` and ``loads_call`` give serpent's value or raise where serpent does."""
    try:
        value = SERPENT.loads(payload)
    except (errors.SerializeError, errors.SecurityError):
        assert isinstance(expected, Refused), (payload, expected)
    else:
        assert same(value, expected), (payload, value, expected)
    try:
        call = SERPENT.loads_call(payload)
    except (errors.SerializeError, errors.SecurityError):
        assert isinstance(expected, Refused) or not (isinstance(expected, (tuple, list)) and len(expected) == 4)
    else:
        assert same(call, tuple(expected)), (payload, call, expected)


# --- strings -------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"'a\rb'", b'"a\rb"', b"'\r'", b"'a\r\nb'",            # a lone CR is a line end to Python's tokenizer
    b"('o','m',('a\rb',),{})", b"('o','m',('x', 'a\rb'),{})",
    b"('o\r','m',(1,),{})", b"('o','m\r',(1,),{})",
    b"['a\rb']", b"{'k':'a\rb'}", b"{'a\rb':1}",
])
def test_a_raw_carriage_return_inside_a_string_is_refused_as_serpent_refuses_it(body):
    payload = HEADER + body
    assert isinstance(by_serpent(payload), Refused)
    check_readers(payload)


@pytest.mark.parametrize("payload", [
    b"#h\r'x'\n5", b"#h\r1\n2", b"# serpent utf-8 python3.2\r'x'\n5",
    b"# serpent utf-8 python3.2\r('o','m',(1,),{})\n('o','m',(2,),{})",
])
def test_a_carriage_return_in_the_header_ends_the_comment_there(payload):
    # Python reads what follows the CR as code: serpent refuses these two-line payloads
    assert isinstance(by_serpent(payload), Refused)
    check_readers(payload)
