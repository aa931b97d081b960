"""Bad input over real sockets: each case gets a clear error to that peer, or a
close (logged where protocol notes 11.9 says the peer gets no reply), and a second,
well-behaved client proves the daemon keeps serving everyone else.

Frames are written by hand (``RawClient``); the well-behaved client is our Proxy.
Both server types run every case.
"""

import ast
import logging
import marshal
import pickle
import socket
import struct
import zlib
from pathlib import Path

import pytest

from pyro_loops import Daemon, Proxy, config, errors, expose
from pyro_loops import _wire
from pyro_loops._serializers import get_serializer
from test_daemon import TIMEOUT, RawClient, proxy_for, serving

SERPENT = get_serializer("serpent")
SERPENT_HEAD = b"# serpent utf-8 python3.2\n"


class Unpicklable:
    def __reduce__(self):
        raise TypeError("no")


class Abort(BaseException):
    """A BaseException subclass that is neither KeyboardInterrupt nor SystemExit."""


class CarriesALock(Exception):
    def __init__(self):
        super().__init__("has a lock")
        import threading
        self.lock = threading.Lock()


@expose
class Service:
    def echo(self, value):
        return value

    def big(self, size):
        return b"x" * size

    def unserializable(self):
        import threading
        return {"lock": threading.Lock()}

    def raise_unserializable(self):
        raise CarriesALock()

    def raise_base_exception(self):
        raise Abort("stop right there")

    def raise_generator_exit(self):
        raise GeneratorExit("closing")

    def hidden_twin(self):
        return "exposed"

    def _private(self):
        return "private"


class HiddenService(Service):
    getter_ran = False

    def not_exposed(self):  # a subclass member: not covered by the base class's @expose
        return "nope"

    @property
    def unexposed_property(self):
        HiddenService.getter_ran = True
        return lambda: "leaked"

    @property
    def unexposed_alias(self):
        return self.echo  # an exposed method, under a name that is not exposed


@pytest.fixture(params=["multiplex", "thread"])
def served(request, caplog):
    """A running daemon with ``Service`` as "svc"; yields (daemon, port, check) where
    ``check()`` proves that a well-behaved client is still served."""
    config.SERVERTYPE = request.param
    caplog.set_level(logging.INFO, logger="pyro_loops")
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(HiddenService(), "svc")
    good = proxy_for(uri)

    def check():
        assert good.echo(["still", "served"]) == ["still", "served"]

    with serving(daemon):
        check()
        yield daemon, uri.port, check
        good._pyroRelease()


def connect_fail_text(reply: _wire.Message) -> str:
    assert reply.type == _wire.MSG_CONNECTFAIL
    return get_serializer(reply.serializer_id).loads(reply.data)


def remote_error(client: RawClient, reply: _wire.Message) -> dict:
    """The exception dict of an exception reply, as any Pyro4 peer would read it (no rebuilding)."""
    assert reply.type == _wire.MSG_RESULT and reply.flags & _wire.FLAGS_EXCEPTION
    if reply.serializer_id == 1:
        return ast.literal_eval(reply.data.decode())
    if reply.serializer_id == 3:
        return marshal.loads(reply.data)
    import json
    return json.loads(reply.data)


def raw_header(msg_type=1, flags=0, seq=0, data_len=0, ser=1, ann_len=0, tag=b"PYRO", version=48, check=None):
    if check is None:
        check = (msg_type + version + data_len + ann_len + ser + flags + seq + 0x34E9) & 0xFFFF
    return struct.pack("!4sHHHHiHHHH", tag, version, msg_type, flags, seq, data_len, ser, ann_len, 0, check)


# --- before the handshake -----------------------------------------------------------------


@pytest.mark.parametrize("garbage, text", [
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "invalid data or unsupported protocol version"),
    (raw_header(tag=b"PYRX"), "invalid data or unsupported protocol version"),
    (raw_header(version=47), "invalid data or unsupported protocol version"),
    (raw_header(check=0xDEAD), "header checksum mismatch"),
    (raw_header(msg_type=_wire.MSG_INVOKE), "invalid msg type 4 received"),
    (raw_header(msg_type=_wire.MSG_PING), "invalid msg type 6 received"),
], ids=["http-request", "wrong-magic", "wrong-version", "bad-checksum", "invoke-first", "ping-first"])
def test_bad_bytes_before_the_handshake_get_a_marshal_connectfail_then_close(served, garbage, text):
    _, port, check = served
    with RawClient(port) as client:
        client.send(garbage)
        reply = client.read_message()
        assert (reply.serializer_id, reply.seq) == (3, 0)
        assert connect_fail_text(reply) == text
        assert client.closed_by_peer()
    check()


@pytest.mark.parametrize("ser_id, text", [
    (4, "message used serializer that is not accepted: 4"),
    (9, "serializer '9' is unknown or not available"),
])
def test_refused_or_unknown_serializer_in_connect_gets_connectfail(served, ser_id, text):
    _, port, check = served
    with RawClient(port) as client:
        client.send_message(_wire.MSG_CONNECT, pickle.dumps({"handshake": "hello"}), ser_id, seq=5)
        reply = client.read_message()
        assert connect_fail_text(reply) == text
        assert reply.seq == 5
        assert client.closed_by_peer()
    check()


@pytest.mark.parametrize("payload, text", [
    (SERPENT_HEAD + b"'just a string'", "string indices must be integers"),
    (SERPENT_HEAD + b"{'object':'svc'}", "'handshake'"),
    (SERPENT_HEAD + b"{'handshake':", "invalid serpent payload"),
    (SERPENT_HEAD + b"-" * 30_000 + b"1", "nested too deeply"),
])
def test_bad_connect_payload_gets_connectfail_with_the_reason(served, payload, text):
    _, port, check = served
    with RawClient(port) as client:
        client.send_message(_wire.MSG_CONNECT, payload, 1)
        assert text in connect_fail_text(client.read_message())
        assert client.closed_by_peer()
    check()


def test_connect_for_an_unknown_object_with_metadata_request_gets_connectfail(served):
    _, port, check = served
    with RawClient(port) as client:
        client.send_message(_wire.MSG_CONNECT, SERPENT.dumps({"handshake": "hello", "object": "nope"}), 1,
                            _wire.FLAGS_META_ON_CONNECT)
        assert connect_fail_text(client.read_message()) == "unknown object"
    check()


def test_connectfail_is_logged(served, caplog):
    _, port, check = served
    with RawClient(port) as client:
        client.send(b"\x00" * 24)
        client.read_message()
        assert client.closed_by_peer()
    check()
    assert "invalid data or unsupported protocol version" in caplog.text


class Trap:
    """Unpickling it creates ``marker``: proof that a payload was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_connect_payload_is_never_unpickled(served, tmp_path):
    _, port, check = served
    marker = tmp_path / "unpickled"
    with RawClient(port) as client:
        client.send_message(_wire.MSG_CONNECT, pickle.dumps({"handshake": Trap(marker)}), 4)
        assert "not accepted: 4" in connect_fail_text(client.read_message())
    check()
    assert not marker.exists()


# --- after the handshake ------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    pytest.param(b"\x00" * 40, id="zeros"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n" * 3, id="http"),
    pytest.param(raw_header(msg_type=_wire.MSG_INVOKE, check=1), id="bad-checksum"),
    pytest.param(raw_header(msg_type=_wire.MSG_INVOKE, tag=b"XYRO"), id="wrong-magic"),
    pytest.param(_wire.encode(_wire.Message(_wire.MSG_CONNECT, SERPENT.dumps({"handshake": "hello"}), 1)),
                 id="second-connect"),
    pytest.param(_wire.encode(_wire.Message(_wire.MSG_RESULT, SERPENT.dumps(1), 1)), id="result-from-client"),
    pytest.param(_wire.encode(_wire.Message(_wire.MSG_CONNECTOK, b"", 1)), id="connectok-from-client"),
    pytest.param(_wire.encode(_wire.Message(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", "echo", (1,), {}), 9,
                                            seq=1)), id="unknown-serializer-id"),
])
def test_protocol_violation_after_the_handshake_closes_without_a_reply(served, caplog, data):
    _, port, check = served
    with RawClient(port) as client:
        client.handshake()
        client.send(data)
        assert client.closed_by_peer()
        assert client.reader.buffered == 0  # not a single byte of reply
    check()
    assert "protocol error" in caplog.text


def test_ping_after_the_handshake_gets_pong_with_its_serializer_id_and_seq(served):
    _, port, check = served
    with RawClient(port) as client:
        client.handshake()
        client.send_message(_wire.MSG_PING, b"ping", 42, seq=77)
        reply = client.read_message()
        assert (reply.type, reply.data, reply.serializer_id, reply.seq) == (_wire.MSG_PING, b"pong", 42, 77)
    check()


def test_pickle_invoke_gets_a_pickled_serialize_error_and_is_not_unpickled(served, tmp_path):
    _, port, check = served
    marker = tmp_path / "unpickled"
    with RawClient(port) as client:
        client.handshake()
        client.send_message(_wire.MSG_INVOKE, pickle.dumps(("svc", "echo", (Trap(marker),), {})), 4, seq=1)
        reply = client.read_message()
        assert reply.serializer_id == 4 and reply.flags & _wire.FLAGS_EXCEPTION  # as Pyro4 answers
        exc = pickle.loads(reply.data)
        assert isinstance(exc, errors.SerializeError) and "not accepted: 4" in str(exc)
        assert client.call("svc", "echo", ("connection survives",)) == (False, "connection survives")
    check()
    assert not marker.exists()


def test_pickle_works_when_the_application_opts_in(served):
    daemon, _, check = served
    config.SERIALIZERS_ACCEPTED = {"serpent", "pickle"}
    with Proxy(daemon.uriFor("svc")) as proxy:
        proxy._pyroTimeout = TIMEOUT
        proxy._pyroSerializer = "pickle"
        assert proxy.echo({1: {2}}) == {1: {2}}
    check()


def test_truncated_frame_followed_by_disconnect_leaves_the_others_served(served):
    _, port, check = served
    frame = _wire.encode(_wire.Message(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", "echo", (1,), {}), 1, seq=1))
    for cut in (3, 12, 24, len(frame) - 1):
        with RawClient(port) as client:
            client.handshake()
            client.send(frame[:cut])
        check()


# --- calls that cannot be served ---------------------------------------------------------------


@pytest.mark.parametrize("obj, method, cls, text", [
    ("nope", "echo", "Pyro4.errors.DaemonError", "unknown object"),
    ("svc", "missing", "builtins.AttributeError", "has no attribute 'missing'"),
    ("svc", "_private", "builtins.AttributeError", "attempt to access private attribute '_private'"),
    ("svc", "__init__", "builtins.AttributeError", "private"),
    ("svc", "__class__", "builtins.AttributeError", "private"),
    ("svc", "not_exposed", "builtins.AttributeError", "attempt to access unexposed attribute 'not_exposed'"),
    ("svc", "echo.__globals__", "builtins.AttributeError", "has no attribute"),
])
def test_unknown_private_or_unexposed_names_get_an_exception_reply(served, obj, method, cls, text):
    _, port, check = served
    with RawClient(port) as client:
        client.handshake()
        client.send_call(obj, method, ("x",))
        error = remote_error(client, client.read_message())
        assert error["__class__"] == cls and text in str(error["args"][0])
        assert error["attributes"]["_pyroTraceback"]
        assert client.call("svc", "echo", (2,)) == (False, 2)  # the connection stays usable
    check()


def test_calling_an_unexposed_property_as_a_method_does_not_run_its_getter(served):
    _, port, check = served
    HiddenService.getter_ran = False
    with RawClient(port) as client:
        client.handshake()
        client.send_call("svc", "unexposed_property")
        error = remote_error(client, client.read_message())
        assert "attempt to access unexposed attribute 'unexposed_property'" in error["args"][0]
    check()
    assert not HiddenService.getter_ran


def test_an_exposed_method_is_not_reachable_through_an_unexposed_property(served):
    _, port, check = served
    with RawClient(port) as client:
        client.handshake()
        client.send_call("svc", "unexposed_alias", ("through the back door",))
        reply = client.read_message()
        assert reply.flags & _wire.FLAGS_EXCEPTION, "the call went through"
        assert "unexposed" in remote_error(client, reply)["args"][0]
    check()


def test_unserializable_result_gets_a_serialize_error_and_the_connection_survives(served):
    _, port, check = served
    with RawClient(port) as client:
        client.handshake()
        is_error, exc = client.call("svc", "unserializable")
        assert is_error and isinstance(exc, errors.SerializeError)
        assert client.call("svc", "echo", ("after",)) == (False, "after")
    check()


@pytest.mark.parametrize("ser", ["serpent", "json", "marshal"])
def test_unserializable_exception_is_replaced_by_a_pyro_error_that_names_it(served, ser):
    _, port, check = served
    with RawClient(port) as client:
        client.handshake(ser)
        is_error, exc = client.call("svc", "raise_unserializable", ser=ser)
        assert is_error and type(exc) is errors.PyroError
        assert "Error serializing exception" in str(exc) and "has a lock" in str(exc)
    check()


def test_base_exception_subclass_from_a_method_is_answered_as_an_exception(served):
    _, port, check = served
    with RawClient(port) as client:
        client.handshake()
        client.send_call("svc", "raise_base_exception")
        error = remote_error(client, client.read_message())
        assert error["__class__"].endswith(".Abort") and error["args"] == ("stop right there",)
        is_error, exc = client.call("svc", "raise_generator_exit", seq=2)
        assert is_error and type(exc) is GeneratorExit
    check()


def test_base_exception_through_a_proxy_gives_the_caller_a_clear_error(served):
    daemon, _, check = served
    with proxy_for(daemon.uriFor("svc")) as proxy:
        with pytest.raises(errors.SerializeError, match="unsupported serialized class"):
            proxy.raise_base_exception()  # the caller cannot rebuild a class of the server's test module
    check()


@pytest.mark.parametrize("ser, payload", [
    ("serpent", SERPENT_HEAD + b"('svc','echo'"),
    ("serpent", SERPENT_HEAD + b"('svc','echo',(1,))"),
    ("serpent", SERPENT_HEAD + b"__import__('os').system('false')"),
    ("json", b'{"object": "svc", "method": "echo"}'),
    ("json", b"[1, 2, 3, 4]"),
    ("marshal", b"\x00\x01\x02"),
    ("serpent", SERPENT_HEAD + b"('svc','echo',(1,),None)"),     # kwargs None on a normal call
    ("serpent", SERPENT_HEAD + b"('svc','echo',5,{})"),           # vargs not iterable
    ("serpent", SERPENT_HEAD + b"('svc','echo',(),{1:2})"),       # kwargs with a non-str key
    ("serpent", SERPENT_HEAD + b"(['svc'],'echo',(),{})"),        # unhashable object id
    ("serpent", SERPENT_HEAD + b"('svc',['echo'],(),{})"),        # unhashable method name
], ids=lambda v: v if isinstance(v, str) else repr(v[-30:]))
def test_malformed_call_payload_gets_an_exception_reply(served, ser, payload):
    _, port, check = served
    serializer = get_serializer(ser)
    with RawClient(port) as client:
        client.handshake(ser)
        client.send_message(_wire.MSG_INVOKE, payload, serializer.serializer_id, seq=3)
        reply = client.read_message()
        assert reply.seq == 3 and reply.flags & _wire.FLAGS_EXCEPTION
        assert isinstance(serializer.loads(reply.data), BaseException)
        assert client.call("svc", "echo", (1,), ser=ser, seq=4) == (False, 1)
    check()


def test_corr_annotation_of_the_wrong_length_gets_the_pyro4_value_error(served):
    _, port, check = served
    with RawClient(port) as client:
        client.handshake()
        client.send_message(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", "echo", (1,), {}), 1, seq=1,
                            annotations={"CORR": b"short"})
        error = remote_error(client, client.read_message())
        assert error["__class__"] == "builtins.ValueError" and error["args"] == ("bytes is not a 16-char string",)
    check()


def test_compressed_flag_on_plain_data_gets_a_zlib_error_reply(served):
    _, port, check = served
    with RawClient(port) as client:
        client.handshake()
        client.send_message(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", "echo", (1,), {}), 1,
                            _wire.FLAGS_COMPRESSED, seq=1)
        assert remote_error(client, client.read_message())["__class__"] == "zlib.error"
    check()


def test_oneway_call_with_a_garbage_payload_gets_no_reply_and_the_connection_survives(served):
    _, port, check = served
    with RawClient(port) as client:
        client.handshake()
        client.send_message(_wire.MSG_INVOKE, b"garbage", 1, _wire.FLAGS_ONEWAY, seq=1)
        client.send_message(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", "missing", (), {}), 1, _wire.FLAGS_ONEWAY,
                            seq=2)
        assert client.call("svc", "echo", ("next",), seq=3) == (False, "next")
    check()


@pytest.mark.parametrize("vargs", [[("echo",)], "not a list", [(1, (), {})], [("echo", (1,), {}), ("_private", (), {})]])
def test_malformed_batch_gets_a_plain_exception_reply(served, vargs):
    _, port, check = served
    with RawClient(port) as client:
        client.handshake()
        client.send_message(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", "<batch>", vargs, None), 1,
                            _wire.FLAGS_BATCH, seq=1)
        reply = client.read_message()
        assert reply.flags & _wire.FLAGS_EXCEPTION and not reply.flags & _wire.FLAGS_BATCH
    check()


def test_batch_call_with_bad_arguments_ends_the_batch_with_a_wrapped_exception(served):
    _, port, check = served
    with RawClient(port) as client:
        client.handshake()
        client.send_message(_wire.MSG_INVOKE, SERPENT.dumps_call(
            "svc", "<batch>", [("echo", (1,), {}), ("echo", 5, {}), ("echo", (3,), {})], None), 1, _wire.FLAGS_BATCH, seq=1)
        reply = client.read_message()
        assert reply.flags == _wire.FLAGS_BATCH
        first, wrapper = ast.literal_eval(reply.data.decode())
        assert first == 1 and wrapper["__class__"] == "Pyro4.futures._ExceptionWrapper"
        assert wrapper["exception"]["__class__"] == "builtins.TypeError"
    check()


# --- size limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("established", [False, True])
def test_oversize_length_field_closes_without_a_reply_before_the_payload_arrives(served, caplog, established):
    _, port, check = served
    config.MAX_MESSAGE_SIZE = 100_000  # read when the connection is accepted
    with RawClient(port) as client:
        if established:
            client.handshake()
        client.send(raw_header(msg_type=_wire.MSG_INVOKE if established else _wire.MSG_CONNECT,
                               data_len=0x7FFFFFFF))
        assert client.closed_by_peer()
        assert client.reader.buffered == 0
    check()
    assert "max message size exceeded" in caplog.text


def test_huge_announced_length_without_a_limit_is_closed_by_the_half_frame_deadline(served, caplog):
    _, port, check = served
    config.HALF_FRAME_TIMEOUT = 0.2
    with RawClient(port) as client:
        client.handshake()
        client.send(raw_header(msg_type=_wire.MSG_INVOKE, data_len=0x7FFFFFFF) + b"a few bytes")
        check()
        assert client.closed_by_peer()
    assert "message incomplete" in caplog.text


def test_compressed_payload_that_inflates_beyond_the_limit_gets_an_error_reply(served):
    _, port, check = served
    config.MAX_MESSAGE_SIZE = 100_000
    bomb = zlib.compress(SERPENT.dumps_call("svc", "echo", ("x" * 20_000_000,), {}), 9)
    assert len(bomb) < 100_000
    with RawClient(port) as client:
        client.handshake()
        client.send_message(_wire.MSG_INVOKE, bomb, 1, _wire.FLAGS_COMPRESSED, seq=1)
        assert remote_error(client, client.read_message())["__class__"] == "Pyro4.errors.MessageTooLargeError"
    check()


def test_reply_beyond_the_message_size_limit_gets_an_error_instead(served):
    _, port, check = served
    config.MAX_MESSAGE_SIZE = 100_000
    with RawClient(port) as client:
        client.handshake()
        is_error, exc = client.call("svc", "big", (200_000,))
        assert is_error and isinstance(exc, errors.MessageTooLargeError)
    check()


# --- deserialization limits (issue 6) -------------------------------------------------------------


@pytest.mark.parametrize("ser, payload", [
    pytest.param("serpent", SERPENT_HEAD + b"[" * 100_000 + b"]" * 100_000, id="serpent-100k-brackets"),
    pytest.param("serpent", SERPENT_HEAD + b"-" * 100_000 + b"1", id="serpent-100k-unary-minus"),
    pytest.param("serpent", SERPENT_HEAD + b"('svc','echo',(" + b"7" * 10_000_000 + b",),{})",
                 id="serpent-10MB-integer"),
    pytest.param("json", b"[" * 100_000 + b"]" * 100_000, id="json-100k-brackets"),
    pytest.param("json", b'{"object": "svc", "method": "echo", "params": [' + b"7" * 10_000_000 + b'], "kwargs": {}}',
                 id="json-10MB-integer"),
    pytest.param("marshal", b"(\xff\xff\xff\x7f", id="marshal-tuple-announcing-2G-items"),
    pytest.param("marshal", b"\xdb\x01\x00\x00\x00" * 5000 + b"N", id="marshal-5000-levels"),
])
def test_hostile_payload_gets_a_serialize_error_reply_and_the_daemon_lives_on(served, ser, payload):
    _, port, check = served
    config.MAX_MESSAGE_SIZE = 20_000_000
    with RawClient(port) as client:
        client.handshake(ser)
        client.send_message(_wire.MSG_INVOKE, payload, get_serializer(ser).serializer_id, seq=1)
        reply = client.read_message()
        assert reply.flags & _wire.FLAGS_EXCEPTION
        assert isinstance(get_serializer(ser).loads(reply.data), errors.SerializeError)
        assert client.call("svc", "echo", ("fine",), ser=ser, seq=2) == (False, "fine")
    check()


def test_enormous_string_inside_the_size_limit_is_served(served):
    _, port, check = served
    config.MAX_MESSAGE_SIZE = 20_000_000
    with RawClient(port) as client:
        client.handshake()
        assert client.call("svc", "echo", ("s" * 5_000_000,)) == (False, "s" * 5_000_000)
    check()


# --- clients that go away --------------------------------------------------------------------------


def test_client_disconnecting_during_a_large_reply_leaves_the_others_served(served):
    _, port, check = served
    for _ in range(2):
        with RawClient(port) as client:
            client.handshake()
            client.send_call("svc", "big", (10_000_000,))
            client.sock.recv(1000)  # the reply has started
        check()


def test_client_disconnecting_before_its_reply_leaves_the_others_served(served):
    _, port, check = served
    for _ in range(3):
        client = RawClient(port)
        client.handshake()
        client.send_call("svc", "big", (5_000_000,))
        client.close()
        check()


def test_client_reset_mid_call_leaves_the_others_served(served):
    _, port, check = served
    client = RawClient(port)
    client.handshake()
    client.send_call("svc", "big", (10_000_000,))
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST instead of FIN
    check()


# --- HMAC ---------------------------------------------------------------------------------------------


@pytest.fixture
def hmac_daemon(caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    daemon = Daemon(host="127.0.0.1")
    daemon._pyroHmacKey = b"the key"
    uri = daemon.register(Service(), "svc")
    good = proxy_for(uri)
    good._pyroHmacKey = b"the key"
    with serving(daemon):
        yield uri.port, lambda: good.echo(1) == 1
        good._pyroRelease()


@pytest.mark.parametrize("key, text", [(None, "hmac key config not symmetric"), (b"wrong", "message hmac mismatch")])
def test_missing_or_wrong_hmac_key_on_connect_gets_connectfail(hmac_daemon, key, text):
    port, check = hmac_daemon
    with RawClient(port) as client:
        client.send_message(_wire.MSG_CONNECT, SERPENT.dumps({"handshake": "hello"}), 1, key=key)
        reply = client.read_message()
        assert connect_fail_text(reply) == text
        _wire.check_hmac(reply, b"the key")  # the refusal itself is signed
        assert client.closed_by_peer()
    assert check()


def test_wrong_hmac_after_the_handshake_closes_without_a_reply_and_logs_it(hmac_daemon, caplog):
    port, check = hmac_daemon
    with RawClient(port) as client:
        client.handshake(key=b"the key")
        client.send_message(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", "echo", (1,), {}), 1, seq=1, key=b"other")
        assert client.closed_by_peer() and client.reader.buffered == 0
    assert check()
    assert "message hmac mismatch" in caplog.text


def test_proxy_with_the_wrong_key_is_refused_clearly(hmac_daemon):
    port, check = hmac_daemon
    with Proxy(f"PYRO:svc@127.0.0.1:{port}") as proxy:
        proxy._pyroTimeout = TIMEOUT
        proxy._pyroHmacKey = "not the key"
        # the refusal is signed with the daemon's key, which the proxy does not have either
        with pytest.raises((errors.SecurityError, errors.CommunicationError), match="hmac mismatch"):
            proxy.echo(1)
    assert check()

