"""The daemon's call lane answers exactly as the general path does.

Two daemons serve alike objects, each on its own select loop thread: one as
it is, one with the lane switched off (``_connections.lane = False``, a
switch only tests use). The same request bytes go to both over real
sockets; their replies must be the same bytes and their methods must have
run with the same arguments and the same call context. Where the lane must
take a call (``lane_calls`` counts the requests it took) and where it
must leave it to the general path is checked too, for every condition that
sends a call the general way: a raising method, a list result, a generator,
a oneway call, an HMAC key, an annotations hook, unregistering, registered
classes, a patched class, a method the instance holds itself, response
annotations, a reply the socket does not take at once.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import serpent
from _util import read_message, wait_until
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pyro_loops import (
    Daemon,
    Proxy,
    _fastcall,
    _wire,
    behavior,
    config,
    current_context,
    errors,
    expose,
    oneway,
)
from pyro_loops._eventloop import SelectLoop
from pyro_loops._protocol import ClientProtocol, Connected
from pyro_loops._serializers import Serializer, get_serializer

TIMEOUT = 10.0
SERPENT = get_serializer("serpent")
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                            HealthCheck.function_scoped_fixture])


@expose
class Recorder:
    """Records each call with what ``current_context`` showed it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def _record(self, name: str, *args: Any) -> None:
        ctx = current_context
        self.calls.append((name, args, ctx.seq, ctx.msg_flags, ctx.serializer_id, dict(ctx.annotations),
                           ctx.correlation_id if "CORR" in ctx.annotations else None,
                           ctx.client is not None and ctx.client_sock_addr == ctx.client.addr,
                           dict(ctx.response_annotations)))

    def echo(self, x=None):
        self._record("echo", x)
        return x

    def nothing(self):
        self._record("nothing")

    def several(self, *args):
        self._record("several", *args)
        return len(args)

    def text(self, x):
        self._record("text", x)
        return str(x) * 3

    def as_list(self, x):
        self._record("as_list", x)
        return [x]

    def fail(self, x):
        self._record("fail", x)
        raise ValueError(f"no {x!r}")

    def gen(self, x):
        self._record("gen", x)
        yield x

    def annotate(self, x):
        self._record("annotate", x)
        current_context.response_annotations = {"XTRA": b"yes"}
        return x

    def lose_corr(self, x):
        self._record("lose_corr", x)
        current_context.annotations.pop("CORR", None)
        return x

    def leave(self, x):
        self._record("leave", x)
        self._pyroDaemon.unregister(self)
        return x

    def stop(self, x):
        self._record("stop", x)
        self._pyroDaemon.shutdown()
        return x

    @oneway
    def later(self, x):
        self._record("later", x)
        return x

    @property
    def prop(self):
        return 1

    def _private(self, x):
        return x


class Served:
    """A multiplex daemon on a select loop in a thread of its own, with a Recorder as "obj"."""

    def __init__(self, lane: bool, daemon_class: type = Daemon) -> None:
        config.SERVERTYPE = "multiplex"
        config.ONEWAY_THREADED = False
        self.daemon = daemon_class(host="127.0.0.1")
        self.daemon._connections.lane = lane
        self.client: RawClient | None = None
        # every read the lane took must have been one of an idle connection (Connections.lane_idle)
        self.busy_takes: list[str] = []
        serve = self.daemon._lane.serve

        def checked_serve(conn):
            if not self.daemon._connections.lane_idle(conn):
                self.busy_takes.append(repr(conn))
            return serve(conn)

        self.daemon._lane.serve = checked_serve
        self.obj = Recorder()
        self.uri = self.daemon.register(self.obj, "obj")
        self.loop = SelectLoop()
        self.loop.attach(self.daemon)
        self.thread = threading.Thread(target=self.loop.run, name="fast-daemon-loop", daemon=True)
        self.thread.start()

    @property
    def lane_calls(self) -> int:
        return self.daemon._connections.lane_calls

    def exchange(self, request: bytes) -> bytes:
        """One request and its reply on a connection kept from one call to the next
        (b"" when the daemon closed it; the next exchange connects again)."""
        if self.client is None:
            self.client = RawClient(self)
        reply = self.client.exchange(request)
        if not reply:
            self.client.close()
            self.client = None
        return reply

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.loop.stop()
        self.thread.join(TIMEOUT)
        self.daemon.close()
        self.loop.close()
        assert not self.busy_takes, "the lane took a read of a connection that was not idle"


@contextlib.contextmanager
def served(lane: bool = True, daemon_class: type = Daemon) -> Iterator[Served]:
    server = Served(lane, daemon_class)
    try:
        yield server
    finally:
        server.close()


class RawClient:
    """A connection that sends request bytes as given and reads replies whole."""

    def __init__(self, server: Served, hmac_key: bytes | None = None) -> None:
        self.sock = socket.create_connection(server.daemon.sock.getsockname(), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.protocol = ClientProtocol("serpent", hmac_key=hmac_key)
        self.sock.sendall(self.protocol.connect("obj"))
        self.protocol.receive_data(read_message(self.sock))
        assert isinstance(self.protocol.next_event(), Connected)

    def exchange(self, request: bytes) -> bytes:
        self.sock.sendall(request)
        return read_message(self.sock)

    def call(self, method: str, *args: Any, corr: bytes | None = None) -> bytes:
        request = self.protocol.invoke("obj", method, args, {}, annotations={"CORR": corr} if corr else None)
        reply = self.exchange(request.data)
        self.protocol.receive_data(reply)
        return reply

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def connected(daemon_class: type = Daemon) -> Iterator[tuple[Served, RawClient]]:
    """A lane daemon and a raw connection to it."""
    with served(daemon_class=daemon_class) as server:
        client = RawClient(server)
        try:
            yield server, client
        finally:
            client.close()


def request_bytes(obj: str, method: str, vargs: tuple, corr: bytes | None, seq: int, flags: int = 0,
                  pyro4_spacing: bool = False) -> bytes:
    payload = (serpent.dumps((obj, method, vargs, {})) if pyro4_spacing
               else Serializer.dumps_call(SERPENT, obj, method, vargs, {}))
    return _wire.encode(_wire.Message(_wire.MSG_INVOKE, payload, SERPENT.serializer_id, flags, seq,
                                      {"CORR": corr} if corr is not None else {}))


def comparable(reply: bytes, request_corr: bytes | None) -> tuple:
    """A reply as a message, with what differs by chance alone made equal: the correlation id
    the daemon draws when the request had none, and an item stream's id."""
    if not reply:
        return ("closed",)
    msg = _wire.FrameReader(0)
    msg.feed(reply)
    message = msg.next_message()
    annotations = dict(message.annotations)
    if "CORR" in annotations and annotations["CORR"] != request_corr:  # none sent, or the method removed it
        assert len(annotations["CORR"]) == 16
        annotations["CORR"] = b"<drawn>"
    if "STRM" in annotations:
        annotations["STRM"] = b"<stream id>"
    return message.type, message.flags, message.seq, message.serializer_id, annotations, bytes(message.data)


def both_replies(pair: tuple[Served, Served], request: bytes, corr: bytes | None) -> list[tuple]:
    """What the lane daemon and the general one answer to ``request``, comparable."""
    return [comparable(server.exchange(request), corr) for server in pair]


def assert_same_call_log(lane: Served, general: Served) -> None:
    assert repr(lane.obj.calls) == repr(general.obj.calls)  # by repr: a nan argument equals itself


@pytest.fixture
def pair():
    with served(lane=True) as lane, served(lane=False) as general:
        yield lane, general


scalars = st.one_of(st.integers(-10**20, 10**20), st.integers(-5, 5), st.booleans(), st.none(),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["", "'", '"', "a, b", "k: v", "é", "\ud800", "x" * 1025, "x" * 1024]))
methods = st.sampled_from(["echo", "echo", "echo", "nothing", "several", "text", "as_list", "fail", "gen", "annotate",
                           "lose_corr", "later", "prop", "_private", "missing", "__init__"])
objects = st.sampled_from(["obj", "obj", "obj", "nope", "Pyro.Daemon"])
corrs = st.one_of(st.none(), st.binary(min_size=16, max_size=16))


# --- the property: same bytes, same calls ------------------------------------------------------

@SETTINGS
@given(objects, methods, st.lists(scalars, max_size=4).map(tuple), corrs, st.integers(0, 0xFFFF), st.booleans())
@example("obj", "echo", (42,), None, 1, False)
@example("obj", "echo", (42,), b"c" * 16, 2, True)
@example("obj", "fail", (42,), b"c" * 16, 3, False)
@example("obj", "gen", (1,), None, 4, False)
def test_lane_and_general_path_give_the_same_reply_bytes_and_calls(pair, obj, method, vargs, corr, seq,
                                                                  pyro4_spacing):
    lane, general = pair
    replies = both_replies(pair, request_bytes(obj, method, vargs, corr, seq, pyro4_spacing=pyro4_spacing), corr)
    assert replies[0] == replies[1]
    assert_same_call_log(lane, general)
    assert general.lane_calls == 0


def test_the_lane_serves_the_common_call_and_its_reply_is_the_general_one(pair):
    lane, general = pair
    corr = b"k" * 16
    for value in (42, -7, 1.5, "text", "é", None, True):
        request = request_bytes("obj", "echo", (value,), corr, 5)
        before = lane.lane_calls
        replies = both_replies(pair, request, corr)
        assert replies[0] == replies[1]
        assert lane.lane_calls == before + 1, f"the lane did not serve echo({value!r})"
    assert_same_call_log(lane, general)


def test_pyro4_spacing_and_no_arguments_take_the_lane(pair):
    lane, _ = pair
    client = RawClient(lane)
    assert client.exchange(request_bytes("obj", "echo", (3,), None, 1, pyro4_spacing=True))
    assert client.exchange(request_bytes("obj", "nothing", (), None, 2))
    assert lane.lane_calls == 2
    client.close()


def test_calls_with_several_scalar_arguments_take_the_lane(pair):
    lane, general = pair
    for vargs in [(1, 2), ("a", 2.5, None, True, -3), tuple(range(40)), ("é", "x, y", "k: v")]:
        for corr in (None, b"m" * 16):
            before = lane.lane_calls
            replies = both_replies(pair, request_bytes("obj", "several", vargs, corr, 6), corr)
            assert replies[0] == replies[1]
            assert lane.lane_calls == before + 1, f"the lane did not serve several{vargs!r}"
    assert_same_call_log(lane, general)
    assert general.lane_calls == 0


def read_replies(sock: socket.socket, count: int) -> list[_wire.Message]:
    """``count`` whole messages from ``sock``, however the daemon wrote them."""
    reader = _wire.FrameReader(0)
    replies: list[_wire.Message] = []
    while len(replies) < count:
        chunk = sock.recv(65536)
        assert chunk, "the daemon closed the connection"
        reader.feed(chunk)
        while (message := reader.next_message()) is not None:
            replies.append(message)
    return replies


batch_calls = st.lists(st.tuples(st.sampled_from(["echo", "several", "fail", "as_list", "later", "nothing"]),
                                 st.lists(scalars, max_size=3).map(tuple), corrs), min_size=1, max_size=3)


@SETTINGS
@given(st.lists(st.tuples(batch_calls, st.integers(0, 120)), min_size=1, max_size=4))
def test_pipelined_and_split_requests_get_the_same_answers_in_order_on_both_paths(pair, batches):
    """Requests sent together, or cut anywhere, take the general path until the connection is
    idle again; then the lane goes on. Both daemons answer the same, in order."""
    answers = []
    for server in pair:
        client = RawClient(server)
        seq = 0
        answered = []
        for batch, cut in batches:
            data = b""
            expected = 0
            for method, vargs, corr in batch:
                seq += 1
                flags = _wire.FLAGS_ONEWAY if method == "later" else 0
                data += request_bytes("obj", method, vargs, corr, seq, flags)
                expected += not flags
            if 0 < cut < len(data):
                client.sock.sendall(data[:cut])
                time.sleep(0.002)  # the daemon may read the first part alone (or not: both must agree)
                client.sock.sendall(data[cut:])
            else:
                client.sock.sendall(data)
            corrs_sent = [corr for method, _, corr in batch if method != "later"]
            answered += [comparable(_wire.encode(message), corr)
                         for message, corr in zip(read_replies(client.sock, expected), corrs_sent)]
        answered.append(comparable(client.call("echo", "end"), None))  # the oneway calls before it ran
        client.close()
        answers.append(answered)
    assert answers[0] == answers[1]
    assert_same_call_log(*pair)


@pytest.mark.parametrize("corr", [None, b"u" * 16])
def test_a_method_that_unregisters_its_object_is_answered_and_the_next_call_finds_it_gone(pair, corr):
    lane, general = pair
    for seq, method in enumerate(("echo", "leave", "echo")):  # the first echo leaves its target cached
        replies = both_replies(pair, request_bytes("obj", method, (seq,), corr, seq), corr)
        assert replies[0] == replies[1]
    assert replies[0][1] & _wire.FLAGS_EXCEPTION  # "unknown object"
    assert lane.lane_calls == 2
    assert_same_call_log(lane, general)


def test_a_method_that_shuts_the_daemon_down_is_answered_before_the_connection_closes(pair):
    lane, general = pair
    replies = both_replies(pair, request_bytes("obj", "stop", (5,), b"s" * 16, 3), b"s" * 16)
    assert replies[0] == replies[1] and replies[0][-1].endswith(b"5")
    for server in pair:
        wait_until(lambda server=server: server.daemon._closed, timeout=TIMEOUT)
        assert server.client.exchange(request_bytes("obj", "echo", (6,), None, 4)) == b""
    assert lane.lane_calls == 1
    assert_same_call_log(lane, general)


# --- each condition that leaves a call to the general path ----------------------------------------

@pytest.mark.parametrize("method, arg", [("fail", 1), ("as_list", 2), ("gen", 3), ("annotate", 4),
                                         ("lose_corr", 5), ("text", "x" * 400)])
def test_calls_the_lane_cannot_answer_run_once_and_get_the_general_answer(pair, method, arg):
    lane, general = pair
    replies = both_replies(pair, request_bytes("obj", method, (arg,), b"q" * 16, 9), b"q" * 16)
    assert replies[0] == replies[1]
    assert len(lane.obj.calls) == (0 if method == "gen" else 1), "the method ran more than once"
    assert lane.lane_calls == 1  # taken by the lane, answered the general way from the call on
    assert_same_call_log(lane, general)


def test_a_raising_method_reports_the_same_remote_traceback(pair):
    lane, general = pair
    tracebacks = []
    for server in (lane, general):
        with Proxy(server.uri) as proxy:
            with pytest.raises(ValueError) as info:
                proxy.fail(7)
            tracebacks.append("".join(info.value._pyroTraceback))
    assert tracebacks[0] == tracebacks[1]
    assert "in fail" in tracebacks[0]


def test_generator_result_streams_its_items_through_the_lane_daemon():
    with served() as server, Proxy(server.uri) as proxy:
        assert list(proxy.gen(5)) == [5]
        assert server.obj.calls[0][:2] == ("gen", (5,))


def test_oneway_call_runs_once_without_a_reply_then_calls_go_on():
    with connected() as (server, client):
        client.sock.sendall(request_bytes("obj", "later", (1,), None, 1, flags=_wire.FLAGS_ONEWAY))
        wait_until(lambda: server.obj.calls)
        reply = client.call("echo", 2)
        assert comparable(reply, None)[2] == client.protocol.seq
        assert [call[:2] for call in server.obj.calls] == [("later", (1,)), ("echo", (2,))]
        assert server.lane_calls == 1  # the echo only


def test_a_daemon_with_an_hmac_key_answers_on_the_general_path():
    with served() as server:
        server.daemon._pyroHmacKey = b"secret"
        with Proxy(server.uri) as proxy:
            proxy._pyroHmacKey = b"secret"
            assert proxy.echo(3) == 3
        assert server.lane_calls == 0


class AnnotatingDaemon(Daemon):
    def annotations(self):
        return {"XDMN": b"daemon"}


def test_a_daemon_class_that_adds_annotations_adds_them_to_every_reply():
    with connected(daemon_class=AnnotatingDaemon) as (server, client):
        reply = comparable(client.call("echo", 3), None)
        assert reply[4]["XDMN"] == b"daemon"
        assert server.lane_calls == 0


def test_unregistering_between_calls_ends_the_lane_and_a_new_object_takes_the_id():
    with connected() as (server, client):
        client.call("echo", 1)
        assert server.lane_calls == 1
        server.daemon.unregister("obj")
        reply = client.exchange(request_bytes("obj", "echo", (2,), None, 7))
        message = _wire.FrameReader(0)
        message.feed(reply)
        msg = message.next_message()
        assert msg.flags & _wire.FLAGS_EXCEPTION
        with pytest.raises(errors.DaemonError, match="unknown object"):
            raise SERPENT.loads(msg.data)
        replacement = Recorder()
        server.daemon.register(replacement, "obj")
        client.exchange(request_bytes("obj", "echo", (3,), None, 8))
        assert [call[:2] for call in replacement.calls] == [("echo", (3,))]
        assert [call[:2] for call in server.obj.calls] == [("echo", (1,))]
        assert server.lane_calls == 2


def test_an_object_replaced_in_the_registry_directly_gets_the_calls():
    with connected() as (server, client):
        client.call("echo", 1)
        replacement = Recorder()
        server.daemon.objectsById["obj"] = replacement
        client.call("echo", 2)
        assert [call[:2] for call in replacement.calls] == [("echo", (2,))]


@pytest.mark.parametrize("mode", ["single", "session", "percall"])
def test_registered_classes_keep_their_instance_mode(mode):
    @behavior(instance_mode=mode)
    @expose
    class Counter:
        made = 0

        def __init__(self):
            Counter.made += 1
            self.count = 0

        def bump(self, x):
            self.count += x
            return self.count

    with served() as server:
        server.daemon.register(Counter, "counter")
        results = []
        for _ in range(2):
            with Proxy(server.daemon.uriFor("counter")) as proxy:
                results += [proxy.bump(1), proxy.bump(1)]
        expected = {"single": ([1, 2, 3, 4], 1), "session": ([1, 2, 1, 2], 2), "percall": ([1, 1, 1, 1], 4)}
        assert (results, Counter.made) == expected[mode]


def valued_class() -> type:
    """A fresh exposed class with one plain method, for a test to change."""
    @expose
    class Valued:
        def value(self, x):
            return x

    return Valued


@contextlib.contextmanager
def proxy_for(obj: Any) -> Iterator[tuple[Served, Proxy]]:
    with served() as server:
        server.daemon.register(obj, "target")
        with Proxy(server.daemon.uriFor("target")) as proxy:
            yield server, proxy


def test_a_method_patched_on_the_class_runs_from_the_next_call():
    cls = valued_class()
    with proxy_for(cls()) as (_, proxy):
        assert proxy.value(1) == 1
        cls.value = expose(lambda self, x: x * 10)
        assert proxy.value(2) == 20


def test_a_method_the_instance_holds_itself_is_the_one_called():
    with served() as server, Proxy(server.uri) as proxy:
        assert proxy.echo(1) == 1
        server.obj.echo = lambda x: ("own", x)
        assert tuple(proxy.echo(2)) == ("own", 2)


def test_reset_metadata_cache_makes_the_lane_decide_again():
    cls = valued_class()
    with proxy_for(cls()) as (server, proxy):
        assert proxy.value(1) == 1
        calls = server.lane_calls
        cls.value._pyroInWorker = True  # now it must run in a worker thread
        server.daemon.resetMetadataCache()
        assert proxy.value(2) == 2
        assert server.lane_calls == calls


def test_thread_and_private_and_unexposed_names_are_refused_as_before(pair):
    lane, _ = pair
    for method in ("_private", "prop", "missing", "__init__"):
        replies = both_replies(pair, request_bytes("obj", method, (1,), None, 3), None)
        assert replies[0] == replies[1]
    assert lane.lane_calls == 0


def test_replies_the_socket_does_not_take_at_once_are_queued_in_order():
    with served() as server:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(server.daemon.sock.getsockname())
        protocol = ClientProtocol("serpent")
        client.sendall(protocol.connect("obj"))
        protocol.receive_data(read_message(client))
        assert isinstance(protocol.next_event(), Connected)
        conn = next(iter(server.daemon._conns.values()))
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        count = 0
        # one request at a time, each read alone, until a reply found the socket full
        while not conn.out:
            before = len(server.obj.calls)
            client.sendall(protocol.invoke("obj", "echo", ("x" * 1000,), {}).data)
            wait_until(lambda before=before: len(server.obj.calls) > before or conn.out, timeout=TIMEOUT)
            count += 1
            assert count < 10000
        client.settimeout(TIMEOUT)
        results = []
        while len(results) < count:
            protocol.receive_data(client.recv(65536))
            while (event := protocol.next_event()) is not None:
                results.append(event.value)
        assert results == ["x" * 1000] * count
        assert server.lane_calls == count  # the last one's reply was the lane's partial send
        client.close()


# --- the pure parts: request reader and reply writer ---------------------------------------------

@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["obj", "o,b'j", "Pyro.Daemon", "é"]), st.sampled_from(["m", "echo", "a b"]),
       st.lists(scalars, max_size=5).map(tuple), corrs, st.integers(0, 0xFFFF),
       st.sampled_from([0, 0, 0, _wire.FLAGS_ONEWAY, _wire.FLAGS_BATCH, _wire.FLAGS_COMPRESSED]),
       st.booleans(), st.sampled_from([0, 0, 40, 4096]))
def test_lane_request_reads_what_the_frame_reader_and_full_decoder_read(obj, method, vargs, corr, seq, flags,
                                                                      pyro4_spacing, max_size):
    data = request_bytes(obj, method, vargs, corr, seq, flags, pyro4_spacing)
    check_lane_request(data, max_size)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 200))
def test_lane_request_declines_what_is_not_one_whole_common_call(tail, cut):
    data = request_bytes("obj", "echo", (1,), b"c" * 16, 1)
    check_lane_request(data[:cut] + tail, 0)
    check_lane_request(data + tail, 0)


def test_lane_request_declines_a_raw_cr_in_a_name_as_serpent_refuses_it():
    """Python's tokenizer reads a lone CR as a line end, so serpent refuses it inside a string."""
    for names in (b"'obj','me\rth'", b"'o\rbj','method'"):
        payload = _fastcall._SERPENT_HEADER + b"(" + names + b",(),{})"
        check_lane_request(_wire.encode(_wire.Message(_wire.MSG_INVOKE, payload, SERPENT.serializer_id, 0, 1, {})), 0)


def check_lane_request(data: bytes, max_size: int) -> None:
    found = _fastcall.lane_request(data, max_size)
    if found is None:
        return
    msg = _fastcall.unframe(data, max_size)
    assert msg is not None and msg.type == _wire.MSG_INVOKE and msg.flags == 0
    assert msg.serializer_id == SERPENT.serializer_id and set(msg.annotations) <= {"CORR"}
    seq, corr, key, vargs = found
    obj_id, method, full_vargs, kwargs = Serializer.loads_call(SERPENT, msg.data)
    assert (seq, corr) == (msg.seq, msg.annotations.get("CORR"))
    assert _fastcall.lane_names(key) == (obj_id, method)
    assert kwargs == {} and len(vargs) == len(full_vargs)
    assert all(type(a) is type(b) and repr(a) == repr(b) for a, b in zip(vargs, full_vargs))


@settings(max_examples=400, deadline=None)
@given(scalars, st.binary(min_size=16, max_size=16), st.integers(0, 0xFFFF), st.sampled_from([0, 0, 30, 60]))
def test_lane_reply_writes_what_the_general_reply_writer_writes(value, corr, seq, max_size):
    reply = _fastcall.lane_reply(seq, corr, value, max_size)
    if reply is None:
        return
    payload = SERPENT.dumps(value)
    assert not max_size or len(payload) <= max_size
    assert reply == _wire.encode(_wire.Message(_wire.MSG_RESULT, payload, SERPENT.serializer_id, 0, seq,
                                               {"CORR": corr}))


# --- the select loop on epoll -----------------------------------------------------------------------

def test_an_event_of_a_socket_closed_and_replaced_in_the_same_pass_is_not_delivered_to_its_successor():
    loop = SelectLoop()
    pairs = {"a": socket.socketpair(), "b": socket.socketpair()}
    delivered: list[str] = []
    kept: list[socket.socket] = []

    def ready(name: str, other: str):
        def callback(sock):
            delivered.append(name)
            if len(delivered) == 1:  # the first of the pass replaces the other ready socket
                victim = pairs[other][0]
                number = victim.fileno()
                loop.remove_reader(victim)
                victim.close()
                fresh, peer = socket.socketpair()
                kept.extend((fresh, peer))
                assert fresh.fileno() == number  # the lowest free descriptor: the one just closed
                loop.add_reader(fresh, lambda sock: delivered.append("successor"))
        return callback

    loop.add_reader(pairs["a"][0], ready("a", "b"))
    loop.add_reader(pairs["b"][0], ready("b", "a"))
    pairs["a"][1].send(b"x")
    pairs["b"][1].send(b"x")
    loop.poll(1.0)
    assert delivered in (["a"], ["b"])  # the successor is idle: nothing is for it
    for sock in (*pairs["a"], *pairs["b"], *kept):
        sock.close()
    loop.close()


def test_callback_errors_are_reported_and_the_loop_goes_on():
    from pyro_loops import hosting
    reported = []
    hosting.set_error_hook(lambda exc, where: reported.append(where))
    try:
        loop = SelectLoop()
        a, b = socket.socketpair()
        calls = []

        def callback(sock):
            calls.append(sock.recv(10))
            raise RuntimeError("boom")

        loop.add_reader(a, callback)
        b.send(b"1")
        loop.poll(1.0)
        b.send(b"2")
        loop.poll(1.0)
        assert calls == [b"1", b"2"]
        assert reported == ["select loop callback", "select loop callback"]
        loop.remove_reader(a)
        a.close()
        b.close()
        loop.close()
    finally:
        hosting.set_error_hook(None)
