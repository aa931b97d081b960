"""The blocking Proxy's quick call path gives exactly what the general path gives.

A plain call on an open connection (no annotations besides a correlation id,
no HMAC key, serpent, not oneway) is written and read without the general
machinery; everything else, and every reply that is not a plain scalar for
that call, goes the general way with the bytes received so far. Checked with
real sockets against a scripted daemon (which records each request byte for
byte and answers as a test says) and against pyro_loops daemons: the two
paths send the same bytes and come to the same results, errors and
``current_context``, and each case that must leave the quick path does.
Which path ran is seen by profiling the call (``functions_run``).
"""

from __future__ import annotations

import collections
import socket
import sys
import threading
import time
import uuid
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pyro_loops
from pyro_loops import _protocol, _wire, errors
from pyro_loops._serializers import get_serializer

from _util import TIMEOUT, Pyro4Server, accepted, read_message, wait_until
from test_compat import served

SERPENT = get_serializer("serpent")
CONTEXT = pyro_loops.current_context
METHODS = ["method", "echo", "fire"]


def parse(raw: bytes) -> _wire.Message:
    reader = _wire.FrameReader()
    reader.feed(raw)
    return reader.next_message()


def message(msg_type: int, payload: bytes, seq: int, flags: int = 0, annotations=None) -> bytes:
    return _wire.encode(_wire.Message(msg_type, payload, SERPENT.serializer_id, flags, seq, annotations or {}))


def result(value, seq: int, flags: int = 0, annotations=None) -> bytes:
    return message(_wire.MSG_RESULT, SERPENT.dumps(value), seq, flags, annotations)


class ScriptedDaemon:
    """A listening socket whose connections are answered by script.

    The handshake is answered as a daemon answers it (with metadata for
    ``METHODS``, "fire" oneway); each later request is recorded as it came
    (``requests``, and ``executed`` counts them) and answered with the byte
    pieces ``answer(message)`` returns, sent apart, or the connection is
    closed when it returns None. ``close_after_reply`` closes each connection
    right after its first answer.
    """

    def __init__(self, answer=None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.uri = f"PYRO:thing@127.0.0.1:{self.port}"
        self.answer = answer or (lambda msg: [result(42, msg.seq, annotations={"CORR": uuid.uuid4().bytes})])
        self.requests: list[bytes] = []
        self.close_after_reply = False
        self.connections = 0
        self.open = 0  # connections whose thread has not yet seen their end
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def executed(self) -> int:
        return len(self.requests)

    def _serve(self) -> None:
        for conn in accepted(self.sock):
            with self._lock:
                self.connections += 1
                self.open += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            self._answer(conn)
        except OSError:  # reset by a proxy that closed with our reply unread
            pass
        finally:
            with self._lock:
                self.open -= 1

    def _answer(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while raw := read_message(conn):
                msg = parse(raw)
                if msg.type == _wire.MSG_CONNECT:
                    body = {"handshake": "hello", "meta": {"methods": METHODS, "oneway": ["fire"], "attrs": []}}
                    conn.sendall(message(_wire.MSG_CONNECTOK, SERPENT.dumps(body), msg.seq,
                                         _wire.FLAGS_META_ON_CONNECT))
                    continue
                self.requests.append(raw)
                if msg.flags & _wire.FLAGS_ONEWAY:
                    continue
                pieces = self.answer(msg)
                if pieces is None:
                    return
                for number, piece in enumerate(pieces):
                    if number:
                        time.sleep(0.02)  # the rest comes in a TCP segment of its own
                    conn.sendall(piece)
                if self.close_after_reply:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted():
    daemon = ScriptedDaemon()
    yield daemon
    daemon.close()


@pytest.fixture(autouse=True)
def clean_context():
    """Each test starts and ends with nothing set on current_context."""
    CONTEXT.annotations, CONTEXT.correlation_id = {}, None
    yield
    CONTEXT.annotations, CONTEXT.correlation_id = {}, None


def functions_run(call) -> tuple[object, set[str]]:
    """``call()``'s result (or the exception it raised) and the names of the Python functions it ran."""
    names: set[str] = set()

    def profile(frame, event, _arg):
        if event == "call":
            names.add(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        outcome = call()
    except Exception as exc:
        outcome = exc
    finally:
        sys.setprofile(None)
    return outcome, names


def took_quick_path(names: set[str]) -> bool:
    """The call was sent and answered on the quick path alone."""
    return "quick_result" in names and "invoke" not in names and "__outcome" not in names


def fell_back_after_sending(names: set[str]) -> bool:
    """The quick path sent the call; its reply went on to the general path."""
    return "quick_result" in names and "__outcome" in names and "invoke" not in names


def sent_by_general_path(names: set[str]) -> bool:
    return "invoke" in names and "quick_result" not in names


def general_only(proxy: pyro_loops.Proxy) -> pyro_loops.Proxy:
    """Make ``proxy``'s open connection take the general path (as one whose conditions never allow the quick one)."""
    proxy._pyroBind()
    object.__setattr__(proxy, "_pyroLane", None)
    return proxy


@pyro_loops.expose
class Thing:
    def __init__(self) -> None:
        self.calls = 0

    def echo(self, value):
        self.calls += 1
        pyro_loops.current_context.response_annotations = {"XTRA": b"from the daemon"}
        return value

    def plain(self, value):
        return value

    def seen(self):
        return pyro_loops.current_context.annotations.get("XYZZ", b"").decode()

    def fail(self):
        raise ValueError("remote trouble")

    def items(self, count):
        return list(range(count))

    @pyro_loops.oneway
    def fire(self, value):
        self.calls += 1


# --- the quick path, and that it sends what the general path sends ----------------------------------


def test_plain_call_takes_the_quick_path_and_sends_the_general_paths_bytes(scripted):
    with pyro_loops.Proxy(scripted.uri) as quick, general_only(pyro_loops.Proxy(scripted.uri)) as general:
        quick._pyroBind()
        value, names = functions_run(lambda: quick.method(42, "x", 1.5, None, True))
        assert value == 42 and took_quick_path(names)
        assert CONTEXT.response_annotations.keys() == {"CORR"}
        assert general.method(42, "x", 1.5, None, True) == 42
        assert scripted.requests[0] == scripted.requests[1]
        assert parse(scripted.requests[0]).seq == 1  # the first call after the handshake, as the general path counts


def test_correlation_id_goes_with_quick_calls_and_comes_back_in_the_response_annotations():
    thing = Thing()
    with served(thing) as uri, pyro_loops.Proxy(uri) as proxy:
        proxy._pyroBind()
        corr = uuid.uuid4()
        CONTEXT.correlation_id = corr
        value, names = functions_run(lambda: proxy.plain(7))
        assert value == 7 and took_quick_path(names)
        assert CONTEXT.response_annotations == {"CORR": corr.bytes}  # the daemon echoes it


scalars = st.one_of(
    st.integers(), st.integers(-10, 10), st.booleans(), st.none(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "'", '"', "it's", "a, b", "k: v", "é", "\\", "\n", "\x00", "(", "), {})"]))
arguments = st.one_of(scalars, st.lists(scalars, max_size=2), st.binary(max_size=3))
reply_values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=3), scalars,
                                                                              max_size=2))
REPLY_ANNOTATIONS = [{}, {"CORR": bytes(range(16))}, {"CORR": bytes(16), "XTRA": b"x"}, {"CORR": b"short"},
                     {"XTRA": b""}]


@st.composite
def replies(draw):
    """How the scripted daemon answers: a function of the request, and a description for failures."""
    value = draw(reply_values)
    kind = draw(st.sampled_from(["plain"] * 6 + ["exception", "compressed", "wrong seq", "split", "trailing",
                                                 "stream", "close"]))
    annotations = draw(st.sampled_from(REPLY_ANNOTATIONS))

    def answer(msg):
        if kind == "close":
            return None
        if kind == "exception":
            return [message(_wire.MSG_RESULT, SERPENT.dumps(ValueError(str(value))), msg.seq,
                            _wire.FLAGS_EXCEPTION, annotations)]
        if kind == "compressed":
            return [message(_wire.MSG_RESULT, zlib.compress(SERPENT.dumps(value)), msg.seq,
                            _wire.FLAGS_COMPRESSED, annotations)]
        if kind == "stream":
            return [message(_wire.MSG_RESULT, SERPENT.dumps(None), msg.seq, _wire.FLAGS_ITEMSTREAMRESULT,
                            annotations)]
        data = result(value, msg.seq + (kind == "wrong seq"), annotations=annotations)
        if kind == "split":
            cut = draw_cut % len(data)
            return [data[:cut], data[cut:]] if cut else [data]
        if kind == "trailing":
            return [data + b"xx"]
        return [data]

    draw_cut = draw(st.integers(1, 200))
    return kind, value, annotations, answer


def outcome(proxy, method, vargs):
    """What a call came to: its value's type and repr, or the exception's; then the response annotations."""
    try:
        value = proxy._pyroInvoke(method, vargs, {})
    except Exception as exc:
        return ("raised", type(exc), str(exc)), dict(CONTEXT.response_annotations)
    return ("value", type(value), repr(value)), dict(CONTEXT.response_annotations)


calls = st.tuples(
    st.one_of(st.sampled_from(["method", "echo"]), st.sampled_from(["a'b", "x, y", "ü"]), st.text(max_size=6)),
    st.lists(arguments, max_size=4).map(tuple),
    st.one_of(st.none(), st.uuids()),
    st.sampled_from([{}, {}, {}, {"XYZZ": b"1"}]),
    replies())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(exchanges=st.lists(calls, min_size=1, max_size=3))
def test_quick_and_general_paths_send_the_same_bytes_and_come_to_the_same_outcome(scripted, exchanges):
    """Calls in a row on a new proxy of each kind: the same requests, results, errors,
    response annotations, sequence numbers and connection state after each."""
    seen = []
    for general in (False, True):
        with pyro_loops.Proxy(scripted.uri) as proxy:
            proxy._pyroBind()
            history = []
            for method, vargs, correlation, context_annotations, (kind, value, annotations, answer) in exchanges:
                if general:
                    object.__setattr__(proxy, "_pyroLane", None)
                scripted.answer = answer
                CONTEXT.correlation_id = correlation
                CONTEXT.annotations = dict(context_annotations)
                scripted.requests.clear()
                found = outcome(proxy, method, vargs)
                if proxy._pyroConnection is None:  # it may have failed before the daemon read its request
                    wait_until(lambda: scripted.open == 0)
                history.append((kind, found, list(scripted.requests), proxy._pyroSeq, proxy._pyroConnection is None))
            seen.append(history)
    assert seen[0] == seen[1]


# --- the same, sans IO: the protocol's quick calls against invoke() and next_event() ------------------


def established(seq: int = 0, max_message_size: int = 0) -> _protocol.ClientProtocol:
    conn = _protocol.ClientProtocol("serpent", max_message_size=max_message_size, seq=seq)
    conn.state = _protocol.State.ESTABLISHED
    return conn


def described(event) -> tuple:
    """An event as comparable data: its type, seq, and value (type and repr) or exception (type and text)."""
    if isinstance(event, _protocol.Result):
        return type(event), event.seq, type(event.value), repr(event.value), event.message.annotations
    if isinstance(event, (_protocol.Failure, _protocol.Broken)):
        exc = event.exception if isinstance(event, _protocol.Failure) else event.error
        return type(event), type(exc), str(exc)
    return (type(event), getattr(event, "seq", None))


@settings(max_examples=400, deadline=None)
@given(method=st.one_of(st.sampled_from(["method", "a'b", "x, y", "ü"]), st.text(max_size=6)),
       vargs=st.one_of(st.lists(arguments, max_size=4), st.lists(scalars, min_size=7, max_size=10)).map(tuple),
       correlation=st.one_of(st.none(), st.uuids()),
       seq=st.sampled_from([0, 1, 41, 0xFFFE, 0xFFFF]), taken=st.booleans(),
       limit=st.sampled_from([0, 0, 60, 200]))
def test_quick_invoke_writes_what_invoke_writes_and_leaves_the_same_call_pending(
        method, vargs, correlation, seq, taken, limit):
    quick, general = established(seq, limit), established(seq, limit)
    if taken:  # the next sequence number is a call still pending: both must skip it
        for conn in (quick, general):
            conn.invoke("thing", "other", (), {})
            conn.seq = seq
    data = quick.quick_invoke("thing", method, vargs, None if correlation is None else correlation.bytes)
    try:
        request = general.invoke("thing", method, vargs, {},
                                 annotations=None if correlation is None else {"CORR": correlation.bytes})
    except errors.PyroError:
        request = None
    if data is None:
        assert quick.seq == seq and len(quick.pending) == (1 if taken else 0)
        return
    assert request is not None and data == request.data
    assert (quick.seq, quick.pending) == (general.seq, general.pending)
    if limit:
        assert len(data) - _wire.HEADER_SIZE <= limit  # the general path refuses larger requests before sending


def test_quick_invoke_leaves_arguments_that_are_not_a_plain_tuple_to_invoke():
    """A list, or a tuple of a class of its own, is written as serpent writes it: the general path's."""
    point = collections.namedtuple("point", "x y")
    for vargs in ([1, 2], point(1, 2), "ab"):
        conn = established(3)
        assert conn.quick_invoke("thing", "method", vargs, None) is None
        assert (conn.seq, conn.pending) == (3, ())


@settings(max_examples=400, deadline=None)
@given(value=reply_values, annotations=st.sampled_from(REPLY_ANNOTATIONS),
       flags=st.sampled_from([0, 0, 0, _wire.FLAGS_EXCEPTION, _wire.FLAGS_COMPRESSED, _wire.FLAGS_ONEWAY]),
       seq_offset=st.sampled_from([0, 0, 0, 1]), cut=st.one_of(st.none(), st.integers(0, 120)),
       extra=st.sampled_from([b"", b"", b"xx"]), limit=st.sampled_from([0, 0, 40]))
def test_quick_result_means_what_next_event_says_the_reply_means(value, annotations, flags, seq_offset, cut,
                                                                  extra, limit):
    quick, general = established(7), established(7)
    sent = quick.quick_invoke("thing", "method", (1,), None)
    assert sent == general.invoke("thing", "method", (1,), {}).data
    quick.reader.max_message_size = general.reader.max_message_size = limit  # for the reply
    payload = SERPENT.dumps(value)
    if flags & _wire.FLAGS_COMPRESSED:
        payload = zlib.compress(payload)
    data = message(_wire.MSG_RESULT, payload, quick.seq + seq_offset, flags, annotations) + extra
    if cut is not None:
        data = data[:cut]
    buffer = bytearray(4096)
    buffer[:len(data)] = data
    reply = quick.quick_result(buffer, len(data))
    general.receive_data(data)
    expected = general.next_event()
    if reply is None:
        assert described(quick.next_event()) == described(expected)
    else:
        assert type(expected) is _protocol.Result and expected.message.annotations == reply[1]
        assert (type(expected.value), repr(expected.value)) == (type(reply[0]), repr(reply[0]))
    assert quick.pending == general.pending and quick.state == general.state
    assert quick.partial == general.partial


# --- what leaves the quick path ------------------------------------------------------------------------


def test_annotations_set_on_current_context_take_the_general_path_and_reach_the_daemon():
    with served(Thing()) as uri, pyro_loops.Proxy(uri) as proxy:
        proxy._pyroBind()
        CONTEXT.annotations = {"XYZZ": b"for the next call"}
        value, names = functions_run(proxy.seen)
        assert value == "for the next call" and sent_by_general_path(names)
        assert CONTEXT.annotations == {}
        value, names = functions_run(proxy.seen)
        assert value == "" and took_quick_path(names)


class Annotating(pyro_loops.Proxy):
    def _pyroAnnotations(self):  # noqa: N802
        return {"XYZZ": b"from the subclass"}


class Listening(pyro_loops.Proxy):
    def _pyroResponseAnnotations(self, annotations, msgtype):  # noqa: N802
        self._heard.append((dict(annotations), msgtype))


def test_a_subclass_adding_annotations_sends_them_on_every_call():
    with served(Thing()) as uri, Annotating(uri) as proxy:
        proxy._pyroBind()
        for _ in range(2):
            value, names = functions_run(proxy.seen)
            assert value == "from the subclass" and sent_by_general_path(names)


def test_a_subclass_hearing_response_annotations_hears_every_reply():
    with served(Thing()) as uri, Listening(uri) as proxy:
        proxy._heard = []
        proxy._pyroBind()
        proxy._heard.clear()
        value, names = functions_run(lambda: proxy.echo(1))
        assert value == 1 and sent_by_general_path(names)
        assert proxy.echo(2) == 2
        assert [msgtype for _, msgtype in proxy._heard] == [_wire.MSG_RESULT] * 2
        assert all(heard["XTRA"] == b"from the daemon" for heard, _ in proxy._heard)


def test_proxy_with_an_hmac_key_signs_its_calls_on_the_general_path():
    with Pyro4Server(hmac="secret") as server, pyro_loops.Proxy(server.uri) as proxy:
        proxy._pyroHmacKey = b"secret"
        proxy._pyroBind()
        value, names = functions_run(lambda: proxy.add(1, 2))
        assert value == 3 and sent_by_general_path(names)


def test_oneway_call_is_sent_by_the_general_path_without_waiting(scripted):
    with pyro_loops.Proxy(scripted.uri) as proxy:
        proxy._pyroBind()
        CONTEXT.response_annotations = {"OLD_": b"x"}
        value, names = functions_run(lambda: proxy.fire(1))
        assert value is None and sent_by_general_path(names)
        assert CONTEXT.response_annotations == {}  # a oneway call has no reply
        assert proxy.method(2) == 42  # the scripted daemon did not answer the oneway call
        assert parse(scripted.requests[0]).flags & _wire.FLAGS_ONEWAY


def test_exception_reply_is_raised_by_the_general_path_and_the_next_call_is_quick_again():
    with served(Thing()) as uri, pyro_loops.Proxy(uri) as proxy:
        proxy._pyroBind()
        raised, names = functions_run(proxy.fail)
        assert isinstance(raised, ValueError) and str(raised) == "remote trouble"
        assert fell_back_after_sending(names)
        value, names = functions_run(lambda: proxy.plain("again"))
        assert value == "again" and took_quick_path(names)


def test_non_scalar_reply_is_decoded_by_the_general_path():
    with served(Thing()) as uri, pyro_loops.Proxy(uri) as proxy:
        proxy._pyroBind()
        value, names = functions_run(lambda: proxy.items(3))
        assert value == [0, 1, 2] and fell_back_after_sending(names)


def test_reply_larger_than_the_quick_buffer_is_completed_by_the_general_path():
    with served(Thing()) as uri, pyro_loops.Proxy(uri) as proxy:
        proxy._pyroBind()
        text = "y" * 12000  # a scalar, but longer than one quick receive
        value, names = functions_run(lambda: proxy.plain(text))
        assert value == text and "quick_result" in names


def test_reply_split_across_two_tcp_segments_is_completed_by_the_general_path(scripted):
    def in_two_pieces(msg):
        data = result("split", msg.seq, annotations={"CORR": bytes(16)})
        return [data[:30], data[30:]]

    scripted.answer = in_two_pieces
    with pyro_loops.Proxy(scripted.uri) as proxy:
        proxy._pyroBind()
        value, names = functions_run(lambda: proxy.method(1))
        assert value == "split" and fell_back_after_sending(names)
        assert CONTEXT.response_annotations == {"CORR": bytes(16)}


@pytest.mark.parametrize("retries", [0, 1])
def test_call_right_after_the_daemon_closed_the_connection_runs_once_or_fails_as_closed(scripted, retries,
                                                                                           monkeypatch):
    """The freshness poll is skipped for a call right after another: a connection the
    daemon closed meanwhile still ends in ConnectionClosedError or a retry, and the
    daemon, which never read the request sent to the closed socket, runs the call once."""
    monkeypatch.setattr(pyro_loops.proxy, "_FRESH_WINDOW", 60.0)  # "right after", however slow the machine
    scripted.close_after_reply = True
    with pyro_loops.Proxy(scripted.uri) as proxy:
        proxy._pyroMaxRetries = retries
        assert proxy.method(1) == 42
        time.sleep(0.1)  # the daemon has closed; the next call still comes within the window
        if retries:
            assert proxy.method(2) == 42
            assert scripted.executed == 2 and scripted.connections == 2
        else:
            with pytest.raises(errors.ConnectionClosedError):
                proxy.method(2)
            assert scripted.executed == 1
            assert proxy.method(3) == 42  # a new connection


def test_call_long_after_the_daemon_closed_the_connection_is_refused_before_sending(scripted, monkeypatch):
    monkeypatch.setattr(pyro_loops.proxy, "_FRESH_WINDOW", 0.0)  # "long after", however fast the machine
    scripted.close_after_reply = True
    with pyro_loops.Proxy(scripted.uri) as proxy:
        assert proxy.method(1) == 42
        time.sleep(0.1)  # beyond the window: the freshness poll sees the close
        with pytest.raises(errors.ConnectionClosedError, match="not enough data"):
            proxy.method(2)
        assert scripted.executed == 1


def test_daemon_restarted_between_quick_calls_is_reconnected_to():
    thing = Thing()
    with served(thing) as uri:
        proxy = pyro_loops.Proxy(uri)
        proxy._pyroMaxRetries = 1
        assert proxy.echo(1) == 1
    again = Thing()
    daemon = pyro_loops.Daemon(host="127.0.0.1", port=uri.port)
    daemon.register(again, "thing")
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    try:
        with proxy:
            assert proxy.echo(2) == 2
            assert again.calls == 1
    finally:
        daemon.shutdown()
        thread.join(TIMEOUT)
        daemon.close()


def test_request_over_max_message_size_is_refused_as_by_the_general_path(scripted, monkeypatch):
    with pyro_loops.Proxy(scripted.uri) as proxy:
        proxy._pyroBind()
        monkeypatch.setattr(pyro_loops.config, "MAX_MESSAGE_SIZE", 100)  # the handshake's reply is larger
        with pytest.raises(errors.MessageTooLargeError, match=r"max message size exceeded"):
            proxy.method("z" * 200)
        assert proxy.method(1) == 42
        assert scripted.executed == 1
