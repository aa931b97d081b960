"""Payload serializers and the class-to-dict rules (protocol notes 2, 5, 6.1),
plus the deserialization limits of issue 6: whatever a payload holds, ``loads``
answers with a value or with SerializeError/SecurityError, never with the
decoder's own exception and never by exhausting the C stack.
"""

import ast
import importlib.util
import math
import threading
import uuid
import zlib

import pytest

from pyro_loops import URI, Proxy, errors
from pyro_loops._serializers import ExceptionWrapper, exception_to_dict, get_serializer

SERPENT_HEAD = b"# serpent utf-8 python3.2\n"
NAMES = ["serpent", "json", "marshal"] + (["msgpack"] if importlib.util.find_spec("msgpack") else [])
TEXT_NAMES = ["serpent", "json"]


@pytest.fixture(params=NAMES)
def ser(request):
    return get_serializer(request.param)


def test_serializers_are_found_by_wire_id_and_by_name():
    for ser_id, name in [(1, "serpent"), (2, "json"), (3, "marshal"), (4, "pickle")]:
        assert get_serializer(ser_id) is get_serializer(name)
        assert get_serializer(ser_id).serializer_id == ser_id


@pytest.mark.parametrize("key", [0, 8, 42, 9999, "yaml"])  # 5 and 7 are dill and cloudpickle
def test_unknown_serializer_is_a_serialize_error(key):
    with pytest.raises(errors.SerializeError, match="unknown or not available"):
        get_serializer(key)


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2 ** 62, 3.25, -0.5, "", "text", "unicode \u20ac \U0001f600",
    [1, "two", None], {"a": 1, "b": [1, 2]}, {"nested": {"deeper": {"deepest": ["x"]}}},
])
def test_plain_values_round_trip_unchanged(ser, value):
    if ser.name == "msgpack":  # decoded with use_list=False, as Pyro5 does: lists come back as tuples
        value = _lists_as_tuples(value)
        assert _lists_as_tuples(ser.loads(ser.dumps(value))) == value
    else:
        assert ser.loads(ser.dumps(value)) == value


def _lists_as_tuples(value):
    if isinstance(value, (list, tuple)):
        return tuple(_lists_as_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _lists_as_tuples(v) for k, v in value.items()}
    return value


def pyro4_reads(data: bytes):
    """What a Pyro4 peer gets from a serpent payload: ``ast.literal_eval`` of the text."""
    assert data.startswith(SERPENT_HEAD)
    return ast.literal_eval(data.decode("utf-8"))


def test_tuples_and_sets_keep_their_type_on_serpent_and_marshal():
    for name in ("serpent", "marshal"):
        ser = get_serializer(name)
        assert ser.loads(ser.dumps((1, (2, 3), ()))) == (1, (2, 3), ())
        assert ser.loads(ser.dumps({1, 2, 3})) == {1, 2, 3}


def test_serpent_writes_the_empty_set_as_an_empty_tuple():
    assert pyro4_reads(get_serializer("serpent").dumps(set())) == ()


def test_json_turns_tuples_and_sets_into_lists():
    ser = get_serializer("json")
    assert ser.loads(ser.dumps((1, 2))) == [1, 2]
    assert sorted(ser.loads(ser.dumps({3, 1}))) == [1, 3]


def test_serpent_payload_starts_with_the_python3_header():
    assert get_serializer("serpent").dumps(3) == SERPENT_HEAD + b"3"
    assert get_serializer("serpent").dumps({"a": 1}).startswith(SERPENT_HEAD)


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_infinities_round_trip_on_serpent(value):
    ser = get_serializer("serpent")
    assert ser.loads(ser.dumps(value)) == value


def test_nan_travels_as_the_float_class_dict_on_serpent():
    ser = get_serializer("serpent")
    assert pyro4_reads(ser.dumps(float("nan"))) == {"__class__": "float", "value": "nan"}
    assert math.isnan(ser.loads(ser.dumps(float("nan"))))


@pytest.mark.parametrize("value", [b"", b"\x00\x01\xff" * 100, bytearray(b"array")])
def test_bytes_arrive_as_bytes_between_pyro_loops_peers_on_serpent(value):
    ser = get_serializer("serpent")
    encoded = ser.dumps(value)
    assert b"'encoding': 'base64'" in encoded or b"'encoding':'base64'" in encoded  # what Pyro4 peers read
    result = ser.loads(encoded)
    assert type(result) is bytes and result == bytes(value)


def test_bytes_inside_containers_arrive_as_bytes_on_serpent():
    ser = get_serializer("serpent")
    assert ser.loads(ser.dumps({"blob": [b"a", (b"b",)]})) == {"blob": [b"a", (b"b",)]}


def test_a_base64_lookalike_dict_with_invalid_data_stays_a_dict():
    ser = get_serializer("serpent")
    value = {"data": "not base64!", "encoding": "base64"}
    assert ser.loads(ser.dumps(value)) == value


def test_marshal_call_payload_sends_vargs_as_a_list():
    ser = get_serializer("marshal")
    assert ser.loads_call(ser.dumps_call("thing", "add", (1, 2), {})) == ("thing", "add", [1, 2], {})


def test_json_call_payload_has_pyro4_key_names():
    ser = get_serializer("json")
    assert ser.dumps_call("thing", "add", (1, 2), {}) == \
        b'{"object": "thing", "method": "add", "params": [1, 2], "kwargs": {}}'
    assert ser.loads_call(b'{"object": "o", "method": "m", "params": [], "kwargs": null}') == ("o", "m", [], None)


def test_serpent_call_payload_is_the_four_tuple():
    assert pyro4_reads(get_serializer("serpent").dumps_call("thing", "add", (1, 2), {})) == ("thing", "add", (1, 2), {})


@pytest.mark.parametrize("name, payload", [
    ("serpent", SERPENT_HEAD + b"('only','three',())"),
    ("serpent", SERPENT_HEAD + b"42"),
    ("json", b'["o", "m", [], {}]'),
    ("json", b'{"object": "o", "method": "m"}'),
    ("marshal", b"\xe9\x01\x00\x00\x00"),
])
def test_call_payload_of_the_wrong_shape_is_a_serialize_error(name, payload):
    with pytest.raises(errors.SerializeError, match="invalid call payload"):
        get_serializer(name).loads_call(payload)


# --- exceptions -------------------------------------------------------------------------


def test_builtin_exception_travels_with_args_attributes_and_traceback(ser):
    exc = ValueError("bad value", 7)
    exc.custom = "attr"
    exc._pyroTraceback = ["Traceback (most recent call last):\n", "ValueError: bad value\n"]
    back = ser.loads(ser.dumps(exc))
    assert type(back) is ValueError
    assert back.args == ("bad value", 7)
    assert back.custom == "attr"
    assert list(back._pyroTraceback) == exc._pyroTraceback


def test_exception_dict_has_the_pyro4_shape():
    exc = KeyError("k")
    assert exception_to_dict(exc) == {"__class__": "builtins.KeyError", "__exception__": True,
                                      "args": ("k",), "attributes": {}}
    assert exception_to_dict(errors.NamingError("x"))["__class__"] == "Pyro4.errors.NamingError"


def test_serpent_writes_exceptions_as_pyro4_does():
    data = get_serializer("serpent").dumps(ValueError("bad value", 7))
    assert pyro4_reads(data) == {"__class__": "builtins.ValueError", "__exception__": True,
                                 "args": ("bad value", 7), "attributes": {}}


@pytest.mark.parametrize("classname, expected", [
    ("builtins.ZeroDivisionError", ZeroDivisionError),
    ("exceptions.KeyError", KeyError),               # the Python 2 spelling
    ("ValueError", ValueError),                      # a bare builtin name
    ("TimeoutError", errors.TimeoutError),           # the bare TimeoutError is Pyro's
    ("builtins.TimeoutError", TimeoutError),
    ("Pyro4.errors.NamingError", errors.NamingError),
    ("Pyro4.errors.CommunicationError", errors.CommunicationError),
    ("Pyro5.errors.SecurityError", errors.SecurityError),
    ("sqlite3.OperationalError", __import__("sqlite3").OperationalError),
])
def test_exception_class_names_are_rebuilt_as_pyro4_does(classname, expected):
    ser = get_serializer("serpent")
    payload = SERPENT_HEAD + repr({"__class__": classname, "__exception__": True, "args": ("why",),
                                   "attributes": {"_pyroTraceback": ["tb"]}}).encode()
    exc = ser.loads(payload)
    assert type(exc) is expected
    assert exc.args == ("why",) and exc._pyroTraceback == ["tb"]


def test_pyro4_errors_need_no_exception_flag():
    ser = get_serializer("json")
    exc = ser.loads(b'{"__class__": "Pyro4.errors.DaemonError", "args": ["unknown object"]}')
    assert type(exc) is errors.DaemonError and str(exc) == "unknown object"


def test_exception_whose_constructor_refuses_the_args_still_arrives():
    ser = get_serializer("json")
    exc = ser.loads(b'{"__class__": "builtins.UnicodeDecodeError", "__exception__": true, "args": ["only one"]}')
    assert type(exc) is UnicodeDecodeError and exc.args == ("only one",)


@pytest.mark.parametrize("classname", ["__main__.MyError", "mymod.__Evil", "os.__builtins__", "builtins.__import__"])
def test_class_names_with_double_underscores_are_refused_as_security_error(ser, classname):
    data = ser.dumps({"__class__": classname, "__exception__": True, "args": ()})
    with pytest.raises(errors.SecurityError, match="refused to deserialize types with double underscores"):
        ser.loads(data)


@pytest.mark.parametrize("value", [
    {"__class__": "mymod.Obj", "x": 1},
    {"__class__": "mymod.MyErr", "__exception__": True, "args": ()},
    {"__class__": "builtins.print", "__exception__": True, "args": ("not an exception",)},
    {"__class__": "builtins.object", "__exception__": True, "args": ()},
    {"__class__": "os.system", "args": ("echo owned",)},
])
def test_unknown_or_non_exception_classes_are_refused_as_serialize_error(ser, value):
    with pytest.raises(errors.SerializeError, match="unsupported serialized class"):
        ser.loads(ser.dumps(value))


@pytest.mark.parametrize("value", [
    {"__class__": "Pyro4.core.URI"},                                        # no state
    {"__class__": "Pyro4.core.URI", "state": ["PYRO", "x"]},                # wrong length
    {"__class__": "Pyro4.core.Proxy", "state": []},
    {"__class__": "Pyro4.core.Proxy", "state": ["not a uri", [], [], [], 0.0, None, "hello", 0]},
    {"__class__": "Pyro4.futures._ExceptionWrapper"},
    {"__class__": "builtins.ValueError", "__exception__": True, "args": 5},  # args not a sequence
    {"__class__": "builtins.ValueError", "__exception__": True, "args": [], "attributes": [1, 2]},
])
def test_malformed_class_dicts_are_a_serialize_error_not_a_raw_exception(ser, value):
    with pytest.raises(errors.SerializeError):
        ser.loads(ser.dumps(value))


def test_batch_exception_wrapper_round_trips(ser):
    wrapped = ser.loads(ser.dumps([1, ExceptionWrapper(KeyError("gone"))]))
    assert wrapped[0] == 1
    assert isinstance(wrapped[1], ExceptionWrapper) and type(wrapped[1].exception) is KeyError
    with pytest.raises(KeyError):
        wrapped[1].raiseIt()


# --- URIs, proxies, daemons (protocol notes 6.1) --------------------------------------------


def test_uri_is_written_as_the_pyro4_core_uri_dict():
    uri = URI("PYRO:thing@127.0.0.1:32903")
    assert pyro4_reads(get_serializer("serpent").dumps(uri)) == \
        {"__class__": "Pyro4.core.URI", "state": ("PYRO", "thing", None, "127.0.0.1", 32903)}
    assert get_serializer("json").dumps(uri) == \
        b'{"__class__": "Pyro4.core.URI", "state": ["PYRO", "thing", null, "127.0.0.1", 32903]}'


@pytest.mark.parametrize("text", [
    "PYRO:thing@127.0.0.1:32903", "PYRO:x@[::1]:5555", "PYRO:obj@./u:/run/app.sock", "PYRONAME:some.name",
    "PYROMETA:a,b@host:1234",
])
def test_uris_round_trip_as_uri_objects(ser, text):
    uri = URI(text)
    back = ser.loads(ser.dumps({"uri": uri}))["uri"]
    assert isinstance(back, URI) and back == uri


@pytest.mark.parametrize("state, expected", [
    (("PYRO", "x", None, "::1", 5555), "PYRO:x@[::1]:5555"),
    (("PYRO", "obj", "/run/app.sock", None, None), "PYRO:obj@./u:/run/app.sock"),
    (("PYROMETA", ["b", "a"], None, "host", 1234), "PYROMETA:a,b@host:1234"),
])
def test_uri_state_forms_of_pyro4_are_understood(state, expected):
    ser = get_serializer("json")
    import json
    uri = ser.loads(json.dumps({"__class__": "Pyro4.core.URI", "state": state}).encode())
    assert str(uri) == expected


def test_proxy_is_written_as_the_pyro4_core_proxy_dict():
    proxy = Proxy("PYRO:other@127.0.0.1:47001")
    proxy._pyroMethods.add("hello")
    assert pyro4_reads(get_serializer("serpent").dumps(proxy)) == {
        "__class__": "Pyro4.core.Proxy",
        "state": ("PYRO:other@127.0.0.1:47001", (), ("hello",), (), 0.0, None, "hello", 0, None)}


@pytest.mark.parametrize("state", [
    ("PYRO:other@127.0.0.1:47001", (), ("hello",), ("prop",), 0.0, "b64:c2Vrcml0", "hello", 0, None),
    ("PYRO:other@127.0.0.1:47001", (), ("hello",), ("prop",), 0.0, "b64:c2Vrcml0", "hello", 0),  # 8 fields
])
def test_proxy_dict_from_a_pyro4_peer_becomes_a_proxy(state):
    ser = get_serializer("serpent")
    proxy = ser.loads(SERPENT_HEAD + repr({"__class__": "Pyro4.core.Proxy", "state": state}).encode())
    try:
        assert isinstance(proxy, Proxy)
        assert str(proxy._pyroUri) == "PYRO:other@127.0.0.1:47001"
        assert proxy._pyroMethods == {"hello"} and proxy._pyroAttrs == {"prop"}
        assert proxy._pyroHmacKey == b"sekrit"
        assert proxy._pyroConnection is None  # nothing was connected while deserializing
    finally:
        proxy._pyroRelease()


def test_daemon_dict_deserializes_to_none():
    assert get_serializer("serpent").loads(SERPENT_HEAD + b"{'__class__':'Pyro4.core.Daemon','state':()}") is None


# --- what cannot be serialized ---------------------------------------------------------


def test_unserializable_value_is_a_serialize_error(ser):
    with pytest.raises(errors.SerializeError):
        ser.dumps({"lock": threading.Lock()})


def test_objects_go_as_their_attributes_and_class_name(ser):
    class Point:
        def __init__(self):
            self.x, self.y = 1, 2

    data = ser.dumps(Point())
    with pytest.raises(errors.SerializeError, match="unsupported serialized class"):
        ser.loads(data)  # a peer without a converter cannot rebuild it


def test_uuid_goes_as_its_string(ser):
    value = uuid.UUID(int=7)
    assert ser.loads(ser.dumps(value)) == str(value)


@pytest.mark.parametrize("name", NAMES)
def test_integer_beyond_the_digit_limit_cannot_be_written_by_text_serializers(name):
    ser = get_serializer(name)
    big = 10 ** 5000
    if name in TEXT_NAMES:
        with pytest.raises(errors.SerializeError):
            ser.dumps(big)
    else:  # binary formats carry big ints without decimal conversion (msgpack refuses > 64 bits)
        try:
            assert ser.loads(ser.dumps(big)) == big
        except errors.SerializeError:
            assert name == "msgpack"


def test_deeply_nested_value_cannot_be_written(ser):
    value: list = []
    for _ in range(5000):
        value = [value]
    with pytest.raises(errors.SerializeError):
        ser.dumps(value)


# --- deserialization limits (issue 6) --------------------------------------------------------


def nested(n: int, name: str) -> bytes:
    if name == "serpent":
        return SERPENT_HEAD + b"[" * n + b"]" * n
    return b"[" * n + b"]" * n


@pytest.mark.parametrize("name", TEXT_NAMES)
@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deep_bracket_nesting_is_a_serialize_error(name, depth):
    with pytest.raises(errors.SerializeError):
        get_serializer(name).loads(nested(depth, name))


@pytest.mark.parametrize("chain", [
    pytest.param(b"-" * 100_000 + b"1", id="unary-minus"),
    pytest.param(b"not " * 50_000 + b"1", id="not"),
    pytest.param(b"~" * 100_000 + b"1", id="invert"),
    pytest.param(b"1**" * 50_000 + b"1", id="power"),
    pytest.param(b"lambda:" * 50_000 + b"1", id="lambda"),
    pytest.param(b"1 if 1 else " * 30_000 + b"1", id="conditional"),
    pytest.param(b"x" + b".a" * 50_000, id="attribute"),
    pytest.param(b"f" + b"()" * 50_000, id="call"),
    pytest.param(b"1+" * 50_000 + b"1", id="plus"),
])
def test_long_operator_chains_in_serpent_are_a_serialize_error(chain):
    # unary chains exhaust the parser's stack (MemoryError on 3.11), binary chains the
    # recursion limit when the AST is converted; both must come out as SerializeError
    with pytest.raises(errors.SerializeError):
        get_serializer("serpent").loads(SERPENT_HEAD + chain)


def test_nesting_within_the_tokenizer_limit_still_decodes_on_serpent():
    value = get_serializer("serpent").loads(nested(150, "serpent"))
    for _ in range(149):
        value = value[0]
    assert value == []


@pytest.mark.parametrize("name", NAMES)
def test_nesting_that_breaks_the_recursion_limit_while_rebuilding_class_dicts_is_a_serialize_error(name):
    # the decoder accepts it, the walk that rebuilds "__class__" dicts does not
    value: object = {"__class__": "float", "value": "nan"}
    for _ in range(990):
        value = [value]
    if name == "marshal":
        import marshal
        data = marshal.dumps(value)
    elif name == "msgpack":
        data = b"\x91" * 990 + b"\x82\xa9__class__\xa5float\xa5value\xa3nan"
    elif name == "json":
        data = b"[" * 990 + b'{"__class__": "float", "value": "nan"}' + b"]" * 990
    else:
        pytest.skip("serpent cannot nest this deep at all (tokenizer limit)")
    with pytest.raises(errors.SerializeError, match="nested too deeply"):
        get_serializer(name).loads(data)


def test_marshal_nesting_beyond_its_own_limit_is_a_serialize_error():
    data = b"\xdb\x01\x00\x00\x00" * 5000 + b"N"  # 5000 one-element lists around None
    with pytest.raises(errors.SerializeError):
        get_serializer("marshal").loads(data)


@pytest.mark.parametrize("name", TEXT_NAMES)
def test_ten_megabyte_integer_is_a_serialize_error(name):
    digits = b"7" * 10_000_000
    data = SERPENT_HEAD + digits if name == "serpent" else digits
    with pytest.raises(errors.SerializeError, match="integer string conversion|MAX_BLOCKING_DECODE"):
        get_serializer(name).loads(data)


def test_enormous_string_decodes_within_the_payload_it_came_in():
    ser = get_serializer("serpent")
    text = "x" * 5_000_000
    assert ser.loads(ser.dumps(text)) == text


@pytest.mark.parametrize("name, payload", [
    ("serpent", SERPENT_HEAD + b"'a\x00b'"),
    ("serpent", SERPENT_HEAD + b"\xff\xfe"),
    ("serpent", SERPENT_HEAD + b"__import__('os').system('true')"),
    ("serpent", SERPENT_HEAD + b"{'a':"),
    ("serpent", b""),
    ("json", b"\xff"),
    ("json", b"{'single': 'quotes'}"),
    ("json", b""),
    ("marshal", b""),
    ("marshal", b"\xff\xff\xff"),
    ("serpent", zlib.compress(b"compressed data without the flag")),
], ids=lambda v: v if isinstance(v, str) else repr(v[:30]))
def test_malformed_payloads_are_a_serialize_error(name, payload):
    with pytest.raises(errors.SerializeError):
        get_serializer(name).loads(payload)


def test_unhashable_dict_key_in_serpent_is_a_serialize_error():
    with pytest.raises(errors.SerializeError):
        get_serializer("serpent").loads(SERPENT_HEAD + b"{[1]:2}")


def test_pickle_serializer_exists_for_those_who_opt_in():
    ser = get_serializer("pickle")
    assert ser.loads(ser.dumps({"a": (1, 2)})) == {"a": (1, 2)}


# marshal allocates a container of the announced size before reading its items, and
# releases it slot by slot when the data runs out: minutes of loop time for 5 bytes
@pytest.mark.parametrize("payload", [
    pytest.param(b"(\xff\xff\xff\x7f", id="tuple-2G"),
    pytest.param(b"\xa8\xff\xff\xff\x7f", id="tuple-2G-ref-flag"),
    pytest.param(b"[\xff\xff\xff\x7f", id="list-2G"),
    pytest.param(b"\xdb\xff\xff\xff\x7f", id="list-2G-ref-flag"),
    pytest.param(b"[\x01\x00\x00\x00" + b"(\xff\xff\xff\x7f", id="nested-inside-a-list"),
    pytest.param(b"{" + b"\xe9\x01\x00\x00\x00" + b"[\x00\x00\x00\x10" + b"0", id="inside-a-dict"),
    pytest.param((b"[" + (4095).to_bytes(4, "little")) * 1999 + b"N", id="many-levels-of-4095"),
])
def test_marshal_counts_beyond_the_payload_are_refused_before_allocating(payload):
    with pytest.raises(errors.SerializeError, match="announces more than it holds"):
        get_serializer("marshal").loads(payload)


def test_marshal_code_objects_are_refused_when_the_payload_is_walked():
    import marshal
    data = marshal.dumps([compile("1", "x", "eval"), list(range(300))])
    with pytest.raises(errors.SerializeError, match="not accepted"):
        get_serializer("marshal").loads(data)


@pytest.mark.parametrize("version", range(5))
def test_marshal_payloads_that_need_the_count_check_still_decode(version):
    import marshal
    value = [list(range(1000)), tuple(range(300)), {i: str(i) * 3 for i in range(300)},
             [1.5, 2j, None, True, False, b"x" * 300, "\u00e9" * 300, 10 ** 50, -(10 ** 50), {1, 2}, frozenset([3])] * 30,
             ("(" * 1000, "[" * 400), [()] * 300, [[]] * 300, {"k": [1] * 256}, [StopIteration, Ellipsis] * 200]
    assert get_serializer("marshal").loads(marshal.dumps(value, version)) == value


# --- the literal-only check that guards ast.literal_eval on Python 3.10 ------------------------


@pytest.mark.parametrize("value", [
    ("thing", "add", (1, 2), {}), {"a": [1, 2.5, -3e-10, 1 + 2j, -1.5 - 2e3j, float("inf"), -float("inf")]},
    (), (1,), {1, 2}, set(), [[[]]], float("nan"), "quote ' and \" and \\ and \n", b"\x00bytes", 10 ** 300,
    {"nested": {"__class__": "x", "y": [None, True, False]}}, ValueError("e", 1), URI("PYRO:x@127.0.0.1:1"),
])
def test_everything_serpent_writes_counts_as_literals(value):
    from pyro_loops._serializers import _only_literals
    import serpent
    assert _only_literals(serpent.dumps(value, module_in_classname=True).decode("utf-8"))


@pytest.mark.parametrize("text", [
    "1+1+1", "1-2-3", "1*2", "(1,)[0]", "[1][0]", "{}[1]", "'a'[0]", "x.a", "f()", "()()", "-(1)", "--1",
    "not 1", "~1", "lambda:1", "1 if 1 else 2", "1<2", "1 and 2", "1 2", "None.x", "__import__('os')",
    # a comment ends at a CR too, and a quote inside one opens no string: the chain after it is seen
    "[0,#\r1+1+1]", "[0,#'''\n1+1+1#'''\n]", "[0,#'\n1+1+1#'\n]", "x'a'", "f'{1+1+1}'", "Ellipsis",
])
def test_expressions_beyond_literals_are_not_literals(text):
    from pyro_loops._serializers import _only_literals
    assert not _only_literals(text)


@pytest.mark.parametrize("text", [
    "0x1F", "0o17", "0b101", "- 1", "+ 1.5", "1 + 2j", "b'x'", "rb'x'", "u'x'", "R'x\\\\'", "'''a\nb'''",
    '"""a\nb"""', "'x' 'y'", "...", "('o','m',(1,),{}) #c", "[1 #c\r, 2]", "'#' ", "'''it's'''",
])
def test_every_spelling_serpents_parser_reads_counts_as_literals(text):
    # serpent's parser (ast.literal_eval) reads these; the check must not refuse them on 3.10
    import ast
    from pyro_loops._serializers import _only_literals
    ast.literal_eval(text)
    assert _only_literals(text)


def test_on_python_3_10_non_literal_serpent_is_refused_before_parsing(monkeypatch):
    # on 3.10 this payload would crash the interpreter inside ast.literal_eval
    import pyro_loops._serializers as module
    monkeypatch.setattr(module, "_NEEDS_LITERAL_CHECK", True)
    monkeypatch.setattr(module.config, "MAX_BLOCKING_DECODE", 1 << 30)  # past the budget's own refusal
    for chain in (b"1+" * 300_000 + b"1", b"[0,#\r" + b"1+" * 300_000 + b"1]"):  # a CR ends a comment
        with pytest.raises(errors.SerializeError, match="more than literals"):
            get_serializer("serpent").loads(SERPENT_HEAD + chain)
    value = {"still": [1, 2.5, (1 + 2j), b"works"]}
    ser = get_serializer("serpent")
    assert ser.loads(ser.dumps(value)) == value


@pytest.mark.parametrize("text", ["-" * 30_000 + "1", "1+" * 300_000 + "1", "x" + ".a" * 5_000,
                                  "(1,)" + "[0]" * 5_000, "f" + "()" * 5_000, "not " * 5_000 + "1"],
                         ids=["unary", "binary", "attribute", "subscript", "call", "not"])
def test_literal_check_calls_a_chain_deeper_than_the_recursion_limit_nested_too_deeply(text):
    # the reason 3.11 and later give for these (the parser's MemoryError or a
    # RecursionError), so a payload is refused for the same reason on 3.10
    from pyro_loops._serializers import _literal_refusal
    assert "nested too deeply" in _literal_refusal(text)


@pytest.mark.parametrize("text", ["1+1+1", "[-1.5e-10, 2] + [3]", "--" * 400 + "1", "x" + ".a" * 900,
                                  "[" + "1*1, " * 5_000 + "]"],
                         ids=["sum", "list-sum", "unary-800", "attribute-900", "many-short-items"])
def test_literal_check_calls_short_chains_more_than_literals_only(text):
    from pyro_loops._serializers import _literal_refusal
    assert _literal_refusal(text) == "serpent payload holds more than literals"


@pytest.mark.parametrize("text, reasons", [
    # beyond the parser's stack: nested too deeply everywhere (3.10 by the literal check)
    ("-" * 30_000 + "1", {10: "nested too deeply", 11: "nested too deeply", 12: "nested too deeply",
                          13: "nested too deeply"}),
    # 3,000 deep: past 3.11's and 3.12's recursion limit while building the tree, while
    # 3.13 builds it and literal_eval finds no literal; 3.10 refuses it before parsing
    ("-" * 3_000 + "1", {10: "holds more than literals", 11: "nested too deeply", 12: "nested too deeply",
                         13: "malformed node"}),
    # a short expression: literal_eval's own refusal from 3.11 on
    ("--1", {10: "holds more than literals", 11: "malformed node", 12: "malformed node", 13: "malformed node"}),
], ids=["unary-30000", "unary-3000", "unary-2"])
def test_serpent_refuses_operator_chains_for_each_pythons_reason(text, reasons):
    # a version difference of Python's own parser: stated per version
    import sys
    reason = reasons[min(sys.version_info[1], 13)]
    with pytest.raises(errors.SerializeError, match=reason):
        get_serializer("serpent").loads(SERPENT_HEAD + text.encode())


@pytest.mark.pyro4
def test_json_writes_dates_decimals_and_arrays_as_pyro4s_json_does():
    import array
    import datetime
    import decimal
    import json

    import Pyro4.util

    theirs = Pyro4.util.JsonSerializer()
    ours = get_serializer("json")
    for value in (datetime.datetime(2020, 1, 2, 3, 4, 5, 6), datetime.date(2020, 1, 2), decimal.Decimal("1.50"),
                  array.array("i", [1, 2]), array.array("u", "text")):
        assert json.loads(ours.dumps([value])) == json.loads(theirs.serializeData([value])[0])
