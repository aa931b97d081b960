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

import ast
import enum
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import serpent
from _util import Pyro4Server, pyro4_client
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from peers.service import build
from test_daemon import RawClient, serving

import pyro_loops
from pyro_loops import (
    Daemon,
    _fastcall,
    _fastserpent,
    _serializers,
    _serpentbytes,
    _wire,
    errors,
    expose,
)

# invalid escapes ("\\q") in hostile strings: Python warns while reading them, both readers alike
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::SyntaxWarning")

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


def rebuilt(value):
    """``value`` after the rebuild walk (as ``by_serpent`` does), or Refused; FAIL stays FAIL."""
    if value is FAIL:
        return FAIL
    try:
        return _serializers._rebuild(value)
    except (errors.SerializeError, errors.SecurityError) as exc:
        return Refused(type(exc).__name__)


def fast_readers(payload: bytes) -> dict:
    """What each fast reader makes of ``payload`` (FAIL where it declines); the two general
    readers' values go through the rebuild walk, as the serializer's do."""
    found = _serpentbytes.loads(payload)
    return {
        "serpent_value": _fastcall.serpent_value(payload),
        "serpent_request": _fastcall.serpent_request(payload),
        "_fastserpent": rebuilt(_fastserpent.loads(payload)),
        "_serpentbytes": rebuilt(found if found is FAIL else found[0]),
    }


def check_readers(payload: bytes) -> None:
    """Each fast reader declines or reads exactly serpent's value; the serializer agrees with serpent."""
    expected = by_serpent(payload)
    for name, got in fast_readers(payload).items():
        if got is not FAIL:
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



@pytest.mark.parametrize("space", ["\x85", "\xa0", "\u2028", "\u2029", "\u3000", "\x0b", "\x1c", "\x1f", "\r"])
@pytest.mark.parametrize("template", ["[1,{}2]", "42{}", "{}42", "('o','m',(1,{}2),{{}})", "{{1:{}2}}"])
def test_whitespace_python_does_not_skip_is_not_skipped_between_tokens(space, template):
    # The tokenizer's catch-all once was "\S": a Unicode space matched neither it nor
    # the separators, and findall() stepped over it; Python refuses most of them.
    payload = HEADER + template.format(space).encode("utf-8")
    check_readers(payload)


# --- numbers and structure: spellings serpent never writes but Python reads -----------------------

NUMBERS = ["0", "-0", "00", "-00", "007", "1_000", "0x10", "0o7", "0b1", "+1", "- 1", "--1", "1j", "-1j", "1+2j",
           "999999999999999999", "9999999999999999999", "-999999999999999999", "1" + "0" * 4299, "1" + "0" * 4300,
           "-0.0", "0.0", "5.", ".5", "-.5", "1e5", "1E5", "1e+5", "1.0e+5", "1.0E-5", "1e309", "-1e309", "1e30000",
           "1e-400", "inf", "nan", "1_0.5", "1.e5", "0e0", "00.0", "00.5", "01e5", "1.5.5", "1e5e5", "1e5-3",
           "1" * 400 + ".0", "1.5e+05", "4.9e-324", "1.7976931348623157e+308", "1.7976931348623159e+308", "٣", "１"]


@pytest.mark.parametrize("number", NUMBERS, ids=lambda text: text if len(text) < 30 else f"{text[:8]}..{len(text)}")
def test_number_spellings_read_as_serpent_reads_them_alone_and_as_arguments(number):
    for body in (number, f"('obj','m',({number},),{{}})", f"('obj', 'm', ({number}, {number}), {{}})",
                 f"[{number}]", f"{{{number}:{number}}}"):
        check_readers(HEADER + body.encode("utf-8"))


@pytest.mark.parametrize("value", [0, -1, 10**18 - 1, -(10**18 - 1), 10**18, 1.5, -0.0, 0.0, 1e16, 1e-7, 5e-324,
                                   1.7976931348623157e308, True, False, None, "", "x", "é", "'", '"'])
def test_what_the_writers_write_for_a_scalar_the_fast_lane_reads_exactly(value):
    # the forms serpent and repr() write are the ones the templates are for: they must not decline them
    templated = not (type(value) is int and abs(value) >= 10**18)
    for payload in (serpent.dumps(value, module_in_classname=True), SERPENT.dumps(value)):
        assert (_fastcall.serpent_value(payload) is not FAIL) is templated
        check_readers(payload)
    for call in (serpent.dumps(("obj", "m", (value,), {}), module_in_classname=True),
                 SERPENT.dumps_call("obj", "m", (value,), {}),
                 serpent.dumps(("obj", "m", (value, value), {}), module_in_classname=True)):
        assert (_fastcall.serpent_request(call) is not FAIL) is templated
        check_readers(call)


@pytest.mark.parametrize("body", [
    "('o','m',(1),{})", "('o','m',(1, ),{})", "('o','m',(1 ,),{})", "('o','m',(1,,),{})", "('o','m',(,),{})",
    "('o','m',(1,),{}) ", "('o','m',(1,),{})\n", "('o','m',(1,),{})\r\n", "('o','m',(1,),{})\t",
    "('o','m',(1,),{}) #c", "('o','m',(1,),{})#", "\n('o','m',(1,),{})", " ('o','m',(1,),{})",
    "('o','m',\n(1,),{})", "('o','m',\r\n(1,),{})", "('o','m',\t(1,),{})", "('o' ,'m',(1,),{})",
    "('o','m',(1,),{'k':1})", "('o','m',(1,),{1:2})", "('o','m',(1,),{None:1})", "('o','m',(1,),())",
    "('o','m',[1],{})", "['o','m',(1,),{}]", "('o','m',((1,),),{})", "('o','m',((),),{})", "('o','m',(1,),{},)",
    "('o','m',(1,),{}))", "('o','m',(1,),{})('o','m',(1,),{})", "('o','m',(1,),{}),", "('o','m',(1,),{})x",
    "('o','m',(1,),{})\x00", "(\"o\",'m',(1,),{})", "('o',\"m\",(1,),{})", "('o'\n,'m',(1,),{})",
    "(1,'m',(1,),{})", "('o',None,(1,),{})", "('o','m',None,{})", "('o','m',(1,),None)", "('o','m',(1,))",
    "('o','m',(1,),{},5)", "('a\\'b','m',(1,),{})", "('a\\\\b','m',(1,),{})", "(\"a'b\",'m',(1,),{})",
    "('é','ü',('ß',),{})", "('o','m',('a\\x41',),{})", "('o','m',('\\ud800',),{})", "('o','m',(\"'\",),{})",
    "('o','m',('\"',),{})", "('o','m',('),{})',),{})", "('o','m',(', ',),{})", "('o','m',(b'x',),{})",
    "('o','m',(u'x',),{})", "('o','m',(r'x',),{})", "('o','m',('''x''',),{})", "('o','m',('x' 'y',),{})",
    "('o','m',(True,False,None),{})", "('o','m',(true,),{})", "('o','m',(Ellipsis,),{})", "('o','m',(...,),{})",
    "('o','m',({'data':'QUJD','encoding':'base64'},),{})", "('o','m',({'__class__':'float','value':'nan'},),{})",
])
def test_call_structure_variants_read_as_serpent_reads_them(body):
    check_readers(HEADER + body.encode("utf-8"))


@pytest.mark.parametrize("header", [b"# serpent utf-8 python2.6\n", b"# serpent utf-8 python3.2\r\n", b"#\n", b"",
                                    b"# -*- coding: latin-1 -*-\n", b"\xef\xbb\xbf" + HEADER, b" " + HEADER,
                                    b"# serpent utf-8 python3.2", b"# serpent utf-8 python3.2\n\n",
                                    b"# serpent utf-8 python3.2\n#\n", b"# serpent utf-8 python3.2 \n",
                                    b"# serpent utf-8 python3.2\x00\n", b"# serpent utf-8 python3.2\xff\n"])
@pytest.mark.parametrize("body", [b"42", b"('o','m',(1,),{})", b"'\xc3\xa9'", b"[1,2]"])
def test_other_serpent_headers_are_read_as_serpent_reads_them(header, body):
    # serpent writes "python3.2" whatever the Python; to literal_eval a comment is a comment
    check_readers(header + body)


# --- bytes dicts (_serpentbytes) -----------------------------------------------------------------

BYTES_DICT = "{'data': 'QUJD', 'encoding': 'base64'}"  # b"ABC" as serpent writes it
FORGED = ["{'data':'#0','encoding':'base64'}", "{'data': '#0', 'encoding': 'base\\x364'}",
          '{"data": "#0", "encoding": "base64"}', "{'encoding': 'base64', 'data': '#0'}",
          "{'data': '\\x230', 'encoding': 'base64'}"]


@pytest.mark.parametrize("forged", FORGED)
@pytest.mark.parametrize("hidden", [
    '["{real}", {forged}]', '[{forged}, "{real}"]', '{{"{real}": {forged}}}', '({{"{real}"}}, {forged})',
    '{{("{real}",): {forged}}}', '[{forged}, "\\0{real}"]', '[{forged}, "\\\\{real}"]',
])
def test_a_bytes_dict_hidden_in_a_string_does_not_lend_its_bytes_to_a_forged_stand_in(hidden, forged):
    # The bytes reader cuts every "{'data': '...', 'encoding': 'base64'}" out, reads the rest with
    # numbered stand-ins, and puts the bytes back where the stand-ins come out as dicts. A real one
    # inside a string comes out as text, and a dict spelled to look like its stand-in took its bytes.
    payload = HEADER + hidden.format(real=BYTES_DICT, forged=forged).encode("utf-8")
    payload += b" " * (4096 - len(payload))  # the size from which the serializer reads bytes dicts this way
    check_readers(payload)


@pytest.mark.parametrize("forged", FORGED)
def test_a_bytes_dict_in_the_header_comment_does_not_lend_its_bytes_to_a_forged_stand_in(forged):
    payload = (b"# " + BYTES_DICT.encode() + b"\n[" + forged.encode() + b"]").ljust(4096)
    check_readers(payload)


# --- work bounded by the payload's size ----------------------------------------------------------

# (what starts the text, what repeats to its end)
HOSTILE_TEXT = {
    "trailing spaces": (b"1", b" "),
    "trailing newlines and tabs": (b"[1]", b"\n\t "),
    "unterminated strings of escaped quotes": (b"'", b"\\'"),
    "unterminated double-quoted strings": (b'("', b'\\"'),
    "quotes that never close": (b"[", b"'a"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEXT))
def test_the_serpent_readers_work_in_time_linear_in_hostile_text(name):
    # These once cost time quadratic in their size inside one regex call, holding the
    # interpreter lock: 64 KiB of trailing spaces some four minutes, 2 MiB (what the
    # daemon decodes) some days, 64 KiB of an unterminated string half a minute. A child
    # process reads each at SMALL_PAYLOAD, ten times just under the size from which the
    # tokenizer goes token by token, and at 1 MiB, through every reader. Linear, all that
    # is well under a second; the bound is generous so that only a quadratic reader meets it.
    head, unit = HOSTILE_TEXT[name]
    script = textwrap.dedent(f"""
        from pyro_loops import _fastcall, _fastserpent, _serpentbytes, _serializers
        serpent = _serializers.get_serializer("serpent")
        stepwise = _fastserpent._STEPWISE_TEXT - 64
        for size in [_fastcall.SMALL_PAYLOAD] + [stepwise] * 10 + [1024 * 1024]:
            payload = {HEADER + head!r} + {unit!r} * (size // {len(unit)})
            _fastcall.serpent_value(payload), _fastcall.serpent_request(payload)
            _fastserpent.loads(payload), _serpentbytes.loads(payload)
            try:
                serpent.loads(payload)
            except Exception:
                pass
        print("done")
    """)
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90, check=False,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.stdout.strip() == "done", done.stderr


# --- serpent text from a grammar near the templates ----------------------------------------------
# Literals in the forms serpent and repr() write and in the forms a hostile or
# different peer might (other quoting, spacing, number spellings, comments,
# line ends), then mutated at random points with the characters that matter.

SPACES = st.sampled_from(["", "", "", " ", "  ", "\t", "\n", "\r\n", "\r", "\n ", "\n\t", "\\\n", " #c\n", "\x0c",
                          "\x00", "\xa0"])
INT_TEXT = st.one_of(
    st.integers(-10**20, 10**20).map(str),
    st.sampled_from(["0", "-0", "00", "-00", "007", "1_000", "0x10", "0o7", "0b1", "+1", "- 1", "--1", "1j",
                     "9" * 18, "9" * 19, "-" + "9" * 18, "1" + "0" * 4299, "1" + "0" * 4300, "٣", "１"]))
FLOAT_TEXT = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1.5", "-0.0", "0.0", "5.", ".5", "-.5", "1e5", "1E5", "1e+5", "1.0e+5", "1.0E-5", "1e309",
                     "-1e309", "1e30000", "-1e30000", "1e-400", "inf", "nan", "-inf", "1_0.5", "1.5j", "1e", "1.e5",
                     "0e0", "00.0", "00.5", "01e5", "1.5.5", "1e5e5", "1e5-3", "1" * 400 + ".0", "1.5e+05"]))
STR_CHARS = st.sampled_from(["a", "é", "\u2028", "\x85", "\ufeff", "'", '"', "\\", "\n", "\r", "\x00", "\t", " ", ",",
                             ", ", ": ", "(", ")", "{})", "\\n", "\\r", "\\x41", "\\u00e9", "\\ud800", "\\U0001F600",
                             "\\N{BULLET}", "\\'", '\\"', "\\\\", "\\\n", "\\\r", "\\q", "\\x4", "__class__", "base64",
                             "#0", "\udc80", "\U0001F600"])
STR_TEXT = st.builds(lambda prefix, quote, chars: prefix + quote + "".join(chars) + quote,
                     st.sampled_from(["", "", "", "", "b", "r", "u", "f", "rb"]),
                     st.sampled_from(["'", "'", '"', "'''", '"""']), st.lists(STR_CHARS, max_size=6))
NAME_TEXT = st.sampled_from(["None", "True", "False", "none", "true", "null", "Infinity", "NaN", "Ellipsis", "..."])
BYTES_TEXT = st.sampled_from([BYTES_DICT, '"' + BYTES_DICT + '"', "{'data': '', 'encoding': 'base64'}",
                              "{'data': 'QQ==', 'encoding': 'base64'}", "{'data': 'QQ=', 'encoding': 'base64'}", *FORGED])
SCALAR_TEXT = st.one_of(INT_TEXT, FLOAT_TEXT, STR_TEXT, NAME_TEXT, BYTES_TEXT,
                        st.builds(repr, st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                                                  st.booleans(), st.none())))


def _container(items):
    seps = st.lists(st.sampled_from([",", ",", ", ", " , ", ",\n", ",\r\n", ",\n ", ",,", ""]), min_size=1, max_size=3)
    trailing = st.sampled_from(["", "", ",", ", ", " ", ",,"])

    def build(kind, values, separators, tail, pad):
        if kind == "dict":
            values = [k + ":" + v for k, v in zip(values[::2], values[1::2])]
        body = "".join(v + (separators[i % len(separators)] if i < len(values) - 1 else "")
                       for i, v in enumerate(values))
        opening, closing = {"tuple": "()", "list": "[]", "dict": "{}", "set": "{}"}[kind]
        return opening + pad + body + (tail if values else "") + closing

    return st.builds(build, st.sampled_from(["tuple", "tuple", "list", "dict", "set"]),
                     st.lists(items, max_size=5), seps, trailing, st.sampled_from(["", "", " ", "\n"]))


VALUE_TEXT = st.recursive(SCALAR_TEXT, _container, max_leaves=12)
CALL_TEXT = st.builds(
    lambda obj, method, args, kwargs, sep, end: "(" + obj + sep[0] + method + sep[1] + args + sep[2] + kwargs + end,
    st.one_of(st.just("'obj'"), STR_TEXT, SCALAR_TEXT), st.one_of(st.just("'method'"), STR_TEXT),
    _container(SCALAR_TEXT).filter(lambda t: t.startswith("(")) | st.sampled_from(["()", "(1)", "(1,)", "(1, )"]),
    st.sampled_from(["{}", "{}", "{ }", "{'k':1}", "{1:2}", "()", "[]", "None"]),
    st.lists(st.sampled_from([",", ",", ", ", " ,", ",\n"]), min_size=3, max_size=3),
    st.sampled_from([")", ")", ",)", ") ", ")\n", ")\r\n", ") #c", "))", "),"]))
HEADERS = st.sampled_from([HEADER, HEADER, HEADER, b"# serpent utf-8 python2.6\n", b"# serpent utf-8 python3.2\r\n",
                           b"#\n", b"", b"# serpent utf-8 python3.2", b"# -*- coding: latin-1 -*-\n",
                           b"\xef\xbb\xbf" + HEADER, b" " + HEADER, b"# serpent utf-8 python3.2\r"])
INSERTS = st.sampled_from([b"\r", b"\n", b" ", b"\t", b"\x00", b"\\", b"'", b'"', b",", b")", b"(", b"#", b"\xff",
                           b"\xc3", b"\xed\xa0\x80", b"e", b".", b"-", b"0", b"j", b"_", b"{}", b"\r\n", b"\xc2\x85"])


ODD_SCALARS = st.one_of(
    st.integers(), st.sampled_from([0, -1, 10**18, 10**19, -10**18, True, False, None, -0.0, 0.0, 1e16, 1e-7, 5e-324,
                                    1.7976931348623157e308, float("inf"), float("-inf"), float("nan")]),
    st.floats(), st.text(st.sampled_from("a'\"\\\n\r\x00\t ,:é\u2028\ud800(){}#"), max_size=6), st.text(max_size=6))
NAMES = st.one_of(st.sampled_from(["obj", "method", "Pyro.Daemon", "a'b", 'a"b', "a'\"b", "x\\y", "é", "a\rb", ""]),
                  st.text(max_size=6))
# what real writers put on the wire: serpent (Pyro4's, spaceless) and this serializer's
WRITTEN = st.builds(lambda obj, method, vargs, pyro4: (serpent.dumps((obj, method, vargs, {}), module_in_classname=True)
                                                       if pyro4 else SERPENT.dumps_call(obj, method, vargs, {})),
                    NAMES, NAMES, st.lists(ODD_SCALARS, max_size=4).map(tuple), st.booleans()) \
    | st.builds(lambda value, pyro4: serpent.dumps(value, module_in_classname=True) if pyro4 else SERPENT.dumps(value),
                ODD_SCALARS, st.booleans())


@st.composite
def payloads(draw, body=None):
    """A serpent payload from the grammar or from a writer, sometimes mutated at a few points."""
    if body is None and draw(st.booleans()):
        data = bytearray(draw(WRITTEN))
    else:
        text = draw(body if body is not None else st.one_of(CALL_TEXT, VALUE_TEXT))
        data = bytearray(draw(HEADERS) + text.encode("utf-8", "surrogatepass"))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["insert", "delete", "replace"]))
        if how == "delete":
            del data[at:at + draw(st.integers(1, 3))]
        else:
            data[at:at + (how == "replace")] = draw(INSERTS)
    return bytes(data)


# --- framing -------------------------------------------------------------------------------------

def framed(msg_type=_wire.MSG_INVOKE, payload=HEADER + b"('obj','m',(1,),{})", ser_id=1, flags=0, seq=1,
           notes=None) -> bytes:
    return _wire.encode(_wire.Message(msg_type, payload, ser_id, flags, seq, {} if notes is None else notes))


def by_reader(data: bytes, max_size: int):
    """What the frame reader makes of ``data``: (message or None, bytes left buffered), or the error type."""
    reader = _wire.FrameReader(max_size)
    reader.feed(data)
    try:
        return reader.next_message(), reader.buffered
    except errors.ProtocolError as exc:
        return type(exc)


def check_unframe(data: bytes, max_size: int = 0) -> bool:
    """``unframe`` declines, or gives the reader's message for bytes that are exactly one message; True if it answered."""
    fast = _fastcall.unframe(data, max_size)
    if fast is None:
        return False
    assert by_reader(data, max_size) == (fast, 0), (data, fast)
    assert type(fast.data) is bytes and all(type(v) is bytes for v in fast.annotations.values())
    return True


CORR = bytes(range(16))
MESSAGES = {
    "plain": framed(),
    "corr": framed(notes={"CORR": CORR}),
    "result": framed(_wire.MSG_RESULT, HEADER + b"42", notes={"CORR": CORR}),
    "two chunks": framed(notes={"CORR": CORR, "XXXX": b"v"}),
    "empty chunk": framed(notes={"ZERO": b""}),
    "empty corr": framed(notes={"CORR": b""}),
    "long corr": framed(notes={"CORR": CORR + b"!"}),
    "short corr": framed(notes={"CORR": CORR[:15]}),
    "empty payload": framed(payload=b""),
    "connect": framed(_wire.MSG_CONNECT, HEADER + b"{'handshake':'hello','object':'thing'}", flags=0x10, seq=0),
    "ping": framed(_wire.MSG_PING, b"", ser_id=0),
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_unframe_on_every_prefix_and_extension_of_a_message_declines_or_reads_what_the_reader_reads(name):
    data = MESSAGES[name]
    assert check_unframe(data), "a whole small message is read by the fast lane"
    for end in range(len(data)):
        assert not check_unframe(data[:end])
    for extra in (b"\x00", b"P", b"PYRO", data[:24], data):
        assert not check_unframe(data + extra)


def test_unframe_reads_odd_annotation_blocks_as_the_reader_does():
    blocks = [
        b"CORR\x00\x0f" + CORR[:15] + b"X",             # 22 bytes like a CORR chunk: a short CORR, then a byte
        b"CORR\x00\x10" + CORR[:10] + b"CORR\x00\x00",  # 22 bytes, claims 16, a second CORR chunk inside
        b"CORR\x00\x10" + CORR[:15],                     # one byte short of its length
        b"CORR\x00\x17" + CORR,                          # longer than the block
        b"CORR\x00\x00", b"CORR\x00\x11" + CORR + b"!",  # CORR of the wrong length (the daemon refuses it later)
        b"ZERO\x00\x00CORR\x00\x10" + CORR, b"CORR\x00\x10" + CORR + b"ZERO\x00\x00",  # zero-length chunks
        b"CORR\x00\x09" + CORR[:9] + b"AB\x00\x01x",     # 22 bytes, an id of two characters
        b"CORR\x00\x10" + CORR + b"CORR\x00\x10" + CORR,  # the same id twice: the last one counts
        b"COR", b"\xff\xff\xff\xff\x00\x00", b"corr\x00\x10" + CORR,
    ]
    answered = 0
    for block in blocks:
        payload = HEADER + b"42"
        header = _wire.HEADER.pack(_wire.TAG, 48, _wire.MSG_RESULT, 0, 7, len(payload), 1, len(block), 0,
                                   _wire.checksum(_wire.MSG_RESULT, 0, 7, len(payload), 1, len(block)))
        data = header + block + payload
        answered += check_unframe(data)
        if not isinstance(by_reader(data, 0), tuple):  # the reader refuses the block: the fast lane must decline
            assert _fastcall.unframe(data, 0) is None, block
    assert answered >= 5


@pytest.mark.parametrize("flags", [0, 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80, 0x8000, 0xFFFF])
@pytest.mark.parametrize("seq", [0, 1, 0xFFFF])
def test_unframe_keeps_flags_and_sequence_numbers_as_they_came(flags, seq):
    data = framed(flags=flags, seq=seq, notes={"CORR": CORR})
    assert check_unframe(data)
    assert _fastcall.unframe(data, 0).flags == flags and _fastcall.unframe(data, 0).seq == seq


def test_unframe_declines_a_damaged_header():
    data = framed(notes={"CORR": CORR})
    for at in range(_wire.HEADER_SIZE):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[at] ^= 1 << bit
            check_unframe(bytes(damaged))
            if at not in (20, 21):  # only the reserved field may differ (Pyro4 ignores it too)
                assert _fastcall.unframe(bytes(damaged), 0) is None, (at, bit)
    negative = _wire.HEADER.pack(_wire.TAG, 48, 4, 0, 0, -1, 1, 0, 0, _wire.checksum(4, 0, 0, -1, 1, 0))
    assert _fastcall.unframe(negative, 0) is None and by_reader(negative, 0) is _wire.FrameError


def test_unframe_honours_max_message_size_at_its_boundary():
    data = framed(notes={"CORR": CORR})
    size = len(data) - _wire.HEADER_SIZE  # payload and annotations: what MAX_MESSAGE_SIZE counts
    assert check_unframe(data, size)
    assert _fastcall.unframe(data, size - 1) is None
    assert by_reader(data, size - 1) is errors.MessageTooLargeError
    assert check_unframe(data, 0) and check_unframe(data, size + 1)


def test_unframe_takes_a_payload_of_exactly_small_payload_and_leaves_a_byte_more_to_the_reader():
    for size, fast in ((_fastcall.SMALL_PAYLOAD, True), (_fastcall.SMALL_PAYLOAD + 1, False)):
        payload = HEADER + b"'" + b"x" * (size - len(HEADER) - 2) + b"'"
        data = framed(payload=payload, notes={"CORR": CORR})
        assert check_unframe(data) is fast
        assert by_reader(data, 0)[0].data == payload
        assert (_fastcall.serpent_value(payload) is not FAIL) is fast
        assert SERPENT.loads(payload) == "x" * (size - len(HEADER) - 2)


def test_annotation_block_declines_ids_that_are_not_strings_and_leaves_the_error_to_the_encoder():
    for notes in ({b"ABCD": b"x"}, {1234: b"x"}, {("a", "b", "c", "d"): b"x"}, {"ABCD": "x"}, {"ABCD": bytearray(b"x")},
                  {"ÉÉÉÉ": b"x"}, {"ABC": b"x"}, {"ABCD": b"x" * 0x10000}, {"ABCD": b"x" * 0xFFFA, "EFGH": b""}):
        assert _fastcall.annotation_block(notes) is None, notes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(payloads())
@example(HEADER + b"('obj','m',(1,'a\rb'),{})")
@example(HEADER + b"[1,\xc2\xa02]")
@example(HEADER + b"[\"" + BYTES_DICT.encode() + b"\", {'data':'#0','encoding':'base64'}]")
def test_fast_readers_agree_with_serpent_on_grammar_payloads_and_their_mutations(payload):
    check_readers(payload)


# --- writing a request ---------------------------------------------------------------------------

class Colour(enum.IntEnum):
    RED = 1


class Mood(enum.Enum):
    CALM = "calm"


class Text(str):
    pass


class Count(int):
    pass


class Ratio(float):
    pass


ODD_ARGUMENTS = [Colour.RED, Mood.CALM, Text("x"), Count(3), Ratio(2.5), enum.IntFlag("F", "A B")(3), True, -0.0,
                 1e16, 1e-7, float("inf"), float("nan"), 10**4299, -10**4299, "a'b\"c", "\ud800", "\x00", "a, b",
                 "k: v", "é", complex(1, 2), b"raw", bytearray(b"ab"), memoryview(b"mv"), (1,), [1], {"k": 1}, {1}]


@pytest.mark.parametrize("argument", ODD_ARGUMENTS, ids=repr)
@pytest.mark.parametrize("names", [("obj", "m"), ("a'b", 'c"d'), ("é", "ü"), ("a, b", "k: v"), ("x\\y", "\r")])
def test_a_request_is_written_byte_for_byte_as_pyro4_writes_it(argument, names):
    pyro4 = serpent.dumps((*names, (argument,), {}), module_in_classname=True)  # Pyro4's SerpentSerializer.dumpsCall
    fast = _fastcall.serpent_call(*names, (argument,), {})
    assert fast is None or fast == pyro4
    assert SERPENT.dumps_call(*names, (argument,), {}) == pyro4
    if type(argument) in (Colour, Mood, Text, Count, Ratio):
        assert fast is None  # subclasses go to the general writer, which writes what serpent writes for them


# --- over real sockets ---------------------------------------------------------------------------

WIRE_ARGUMENTS = [*NUMBERS[:50], "'a\rb'", "'a\xa0b'", "'é'", "'\\ud800'", "\"a'b\"", "'x, y'", "True", "None",
                  "'a', 'b'", "1,\xa02", "1,\u20282", "(1,)", "[1]", "{'k':1}", "'),{})'"]


def exchange(client: RawClient, payloads: list[bytes]) -> list:
    """Each payload as an INVOKE, and what came back: (flags, payload bytes), or for an
    exception reply (flags, class, args without object addresses), since its traceback
    names the code path."""
    replies = []
    for seq, payload in enumerate(payloads, 1):
        client.send_message(_wire.MSG_INVOKE, payload, 1, 0, seq)
        reply = client.read_message()
        assert (reply.type, reply.seq) == (_wire.MSG_RESULT, seq)
        if reply.flags & _wire.FLAGS_EXCEPTION:
            error = ast.literal_eval(bytes(reply.data).decode("utf-8").split("\n", 1)[1])
            replies.append((reply.flags, error["__class__"], re.sub(r" at 0x[0-9a-f]+", "", repr(error["args"]))))
        else:
            replies.append((reply.flags, bytes(reply.data)))
    return replies


def test_a_daemon_answers_odd_requests_from_a_raw_peer_as_it_does_with_the_fast_lane_off(monkeypatch):
    payloads = [HEADER + f"('svc','echo',({text},),{{}})".encode("utf-8", "surrogatepass") for text in WIRE_ARGUMENTS]
    payloads += [HEADER + f"('svc','echo',({text}, {text}),{{}})".encode() for text in NUMBERS[:50:5]]
    payloads += [b"# serpent utf-8 python2.6\n('svc','echo',(1,),{})", HEADER + b"('svc','echo',(1),{})",
                 HEADER + b"('svc','echo',(1,),{}) ", HEADER + b"#h\r('svc','echo',(1,),{})\n('svc','echo',(2,),{})"]
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(ArgsEcho(), "svc")
    with serving(daemon), RawClient(uri.port) as client:
        client.handshake()
        fast = exchange(client, payloads)
        assert any(_fastcall.serpent_request(payload) is not FAIL for payload in payloads)
        # every fast reader off: the daemon reads with serpent itself
        monkeypatch.setattr(_fastcall, "serpent_request", lambda payload: FAIL)
        monkeypatch.setattr(_fastcall, "unframe", lambda data, max_message_size: None)
        monkeypatch.setattr(_fastserpent, "loads", lambda data: FAIL)
        monkeypatch.setattr(_serpentbytes, "loads", lambda data: FAIL)
        general = exchange(client, payloads)
    for payload, got, expected in zip(payloads, fast, general):
        assert got == expected, payload


@expose
class ArgsEcho:
    def echo(self, *args):
        return args


ODD_VALUES = ("[-0.0, 0.0, True, False, 1, 10**18, 10**19, -10**18, 1e16, 1e-7, 5e-324, 1e308, float('inf'), "
              "float('-inf'), float('nan'), 'a\\rb', 'a\\nb', 'é', '\\ud800', \"a'b\\\"c\", '', '\\x00', 'x, y', "
              "'k: v', '\\\\', '1', '-0', 'None', (1,), [1], {1: 2}, None, 10**4000, complex(1, 2)]")


def test_a_pyro4_client_gets_the_same_results_for_odd_arguments_from_pyro_loops_as_from_pyro4():
    Service, _ = build(pyro_loops.expose, pyro_loops.oneway)
    daemon = Daemon(host="127.0.0.1")
    ours = daemon.register(Service(), "service")
    code = ("results = []\n"
            "for value in " + ODD_VALUES + ":\n"
            "    with Pyro4.Proxy(uri) as proxy:\n"
            "        results.append((proxy.describe(value), proxy.types_of(value, value)))\n"
            "repr(results)")
    with serving(daemon), Pyro4Server() as theirs, pyro4_client() as client:
        from_ours = client.run(code, uri=str(ours))
        from_pyro4 = client.run(code, uri=theirs.uri)
    assert from_ours == from_pyro4
