"""A stock Pyro4 4.82 client (in its own process) calling our daemon.

Every test runs against three servers: our daemon under SERVERTYPE "multiplex" and
"thread" (in a thread of this process, driven by ``requestLoop``), and a real Pyro4
daemon as the reference. A test that fails only for the reference is a wrong test;
one that fails only for ours is a compatibility bug. The Pyro4 client code each test
runs is written out in the test (see ``_util.CodePeer``).
"""

from __future__ import annotations

import base64
import threading

import pytest

import pyro_loops
from _util import TIMEOUT, PeerError, Pyro4Server, free_port, pyro4_client, wait_until
from peers.service import build

ALL_SERIALIZERS = ["serpent", "json", "marshal"]
# A 4.82 client on marshal cannot get/set attributes, batch, or receive autoproxies (protocol notes 2.4).
FULL_SERIALIZERS = ["serpent", "json"]
SERVER_KINDS = ["multiplex", "thread", "pyro4"]

SERVICE_METHODS = {"add", "echo", "describe", "types_of", "record", "recorded", "divide", "lookup",
                   "make_child", "fill", "length", "fail_custom", "blob", "ticker", "stream_events", "sleep",
                   "call_back"}

# Defined once in the Pyro4 client process; every test makes its proxies with it.
PRELUDE = """
def proxy(uri, ser, **attrs):
    p = Pyro4.Proxy(uri)
    p._pyroSerializer = ser
    p._pyroTimeout = 10
    for name, value in attrs.items():
        setattr(p, name, value)
    return p

def remote_traceback(exc):
    return "".join(Pyro4.util.getPyroTraceback(type(exc), exc, exc.__traceback__))
"""


class OurServer:
    """Our daemon serving ``service.Service`` as "service", its requestLoop in a thread."""

    def __init__(self, servertype: str, port: int = 0, hmac: bytes | None = None) -> None:
        pyro_loops.config.SERVERTYPE = servertype
        self.daemon = pyro_loops.Daemon(host="127.0.0.1", port=port)
        if hmac is not None:
            self.daemon._pyroHmacKey = hmac
        service_class, _ = build(pyro_loops.expose, pyro_loops.oneway)
        self.uri = str(self.daemon.register(service_class(), "service"))
        self.location = self.daemon.locationStr
        self.port = int(self.location.rsplit(":", 1)[1])
        self.thread = threading.Thread(target=self.daemon.requestLoop, name="daemon-loop", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.daemon.shutdown()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "requestLoop did not return after shutdown()"
        self.daemon.close()


def start_server(kind: str, port: int = 0, hmac: str | None = None, compression: bool = False,
                 max_message_size: int = 0):
    """A fresh server of ``kind``: "pyro4" (the reference) or one of our server types."""
    if kind == "pyro4":
        return Pyro4Server(port=port, hmac=hmac, PYRO_COMPRESSION=str(compression),
                           PYRO_MAX_MESSAGE_SIZE=str(max_message_size))
    pyro_loops.config.COMPRESSION = compression
    pyro_loops.config.MAX_MESSAGE_SIZE = max_message_size
    return OurServer(kind, port=port, hmac=hmac.encode() if hmac is not None else None)


def known_core_bug(request, applies: bool, reason: str) -> None:
    """Mark this test run as an expected failure (strict: it fails once the core is fixed)."""
    if applies:
        request.applymarker(pytest.mark.xfail(strict=True, reason="core bug: " + reason))


@pytest.fixture(scope="module")
def pyro4():
    client = pyro4_client()
    client.run(PRELUDE)
    yield client
    client.stop()


@pytest.fixture(scope="module")
def reference_server():
    server = Pyro4Server()
    yield server
    server.stop()


@pytest.fixture(params=SERVER_KINDS)
def server(request):
    """Ours (fresh per test) or the module's Pyro4 reference daemon."""
    if request.param == "pyro4":
        yield request.getfixturevalue("reference_server")
        return
    ours = OurServer(request.param)
    yield ours
    ours.stop()


@pytest.fixture
def servers():
    """Starts servers for tests that need their own (HMAC, compression, restarts); stops them after."""
    started = []

    def start(*args, **kwargs):
        started.append(start_server(*args, **kwargs))
        return started[-1]

    yield start
    for s in reversed(started):
        s.stop()


# -- calls ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_method_call_passes_positional_and_keyword_arguments(pyro4, server, ser):
    assert pyro4.run("p = proxy(uri, ser)\n(p.add(1, 2, scale=3), p.add(a=2), p.add(5, b=1))",
                     uri=server.uri, ser=ser) == (9, 2, 6)


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_arguments_arrive_with_the_types_the_serializer_gives_them(pyro4, server, ser):
    got = pyro4.run("p = proxy(uri, ser)\n"
                    "[tuple(p.describe(v)) for v in [(1, 2), {3}, [4], {'k': None}, 'text', 2.5, True, 10**30]]",
                    uri=server.uri, ser=ser)
    as_sequence = "list" if ser == "json" else None
    assert got == [
        (as_sequence or "tuple", [1, 2] if ser == "json" else (1, 2)),
        (as_sequence or "set", [3] if ser == "json" else {3}),
        ("list", [4]), ("dict", {"k": None}), ("str", "text"), ("float", 2.5), ("bool", True),
        ("int", 10**30)]


@pytest.mark.parametrize("ser", ["serpent", "marshal"])
def test_bytes_argument_comes_back_as_pyro4_would_return_it(pyro4, server, ser):
    # What the server method sees may differ (ours decodes serpent's base64 dict back to bytes);
    # what the Pyro4 client gets back must not.
    got = pyro4.run("p = proxy(uri, ser)\np.echo(b'abc')", uri=server.uri, ser=ser)
    if ser == "serpent":  # serpent has no bytes type: base64 in a dict (protocol notes 2.2)
        assert got == {"data": "YWJj", "encoding": "base64"}
    else:
        assert got == b"abc"


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_bytes_results_reach_the_client_as_pyro4_would_send_them(request, pyro4, server, ser):
    code = "p = proxy(uri, ser)\np.blob(3)"
    if ser == "json":  # json cannot carry bytes: the daemon answers with a SerializeError (protocol notes 2.3)
        with pytest.raises(PeerError) as failure:
            pyro4.run(code, uri=server.uri, ser=ser)
        assert failure.value.type == "Pyro4.errors.SerializeError"
        assert pyro4.run("p.add(1, 1)") == 2
    elif ser == "serpent":
        assert pyro4.run(code, uri=server.uri, ser=ser) == {
            "data": base64.b64encode(b"\x00\x01\x02").decode(), "encoding": "base64"}
    else:
        assert pyro4.run(code, uri=server.uri, ser=ser) == b"\x00\x01\x02"


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_oneway_call_runs_and_the_next_call_gets_its_own_answer(pyro4, server, ser):
    tag = f"oneway-{ser}-{free_port()}"
    assert pyro4.run("p = proxy(uri, ser)\n(p.record(tag), p.add(20, 22))", uri=server.uri, ser=ser, tag=tag) \
        == (None, 42)
    wait_until(lambda: tag in pyro4.run("p.recorded()"))
    assert pyro4.run("p.add(1, 1)") == 2


# -- properties -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_exposed_property_can_be_read_and_written(pyro4, server, ser):
    assert pyro4.run("p = proxy(uri, ser)\np.value = 'v-' + ser\n(p.value, p.label)",
                     uri=server.uri, ser=ser) == (f"v-{ser}", "read-only")


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_writing_a_read_only_property_raises_attribute_error(pyro4, server, ser):
    with pytest.raises(PeerError) as failure:
        pyro4.run("p = proxy(uri, ser)\np.label = 'x'", uri=server.uri, ser=ser)
    assert failure.value.type == "builtins.AttributeError"
    assert "label" in failure.value.str


# -- batch ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_batch_returns_all_results_in_order(pyro4, server, ser):
    assert pyro4.run("p = proxy(uri, ser)\nb = Pyro4.batch(p)\nb.add(1, 2)\nb.echo('x')\nb.add(1, b=1, scale=5)\n"
                     "list(b())", uri=server.uri, ser=ser) == [3, "x", 10]


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_batch_that_raises_midway_yields_earlier_results_then_the_exception(pyro4, server, ser):
    got = pyro4.run("""
p = proxy(uri, ser)
b = Pyro4.batch(p)
b.add(1, 2)
b.echo('x')
b.divide(1, 0)
b.add(5)
results = []
try:
    for r in b():
        results.append(r)
except ZeroDivisionError as exc:
    error = ('ZeroDivisionError', 'in divide' in remote_traceback(exc))
(results, error, p.add(2, 2))""", uri=server.uri, ser=ser)
    assert got == ([3, "x"], ("ZeroDivisionError", True), 4)


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_batch_naming_an_unexposed_method_fails_as_a_whole(pyro4, server, ser):
    with pytest.raises(PeerError) as failure:
        pyro4.run("p = proxy(uri, ser)\nb = Pyro4.batch(p)\nb.add(1)\nb.hidden()\nlist(b())",
                  uri=server.uri, ser=ser)
    assert failure.value.type == "builtins.AttributeError"
    assert "attempt to access unexposed attribute 'hidden'" in failure.value.str


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_oneway_batch_gets_no_reply_and_runs(pyro4, server, ser):
    # A reply to a oneway batch would be read as the answer to the next call (protocol notes 4.7, 11.1).
    tag = f"batch-{ser}-{free_port()}"
    assert pyro4.run("p = proxy(uri, ser)\nb = Pyro4.batch(p)\nb.record(tag + '-1')\nb.record(tag + '-2')\n"
                     "(b(oneway=True), p.add(2, 3))", uri=server.uri, ser=ser, tag=tag) == (None, 5)
    wait_until(lambda: {f"{tag}-1", f"{tag}-2"} <= set(pyro4.run("p.recorded()")))


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_sequence_numbers_wrap_after_65535(pyro4, server, ser):
    # The client checks that each reply echoes its request's seq (protocol notes 4.1, 4.5).
    assert pyro4.run("p = proxy(uri, ser)\np._pyroBind()\np._pyroSeq = 65533\n"
                     "[p.add(i, 0) for i in range(4)] + [p._pyroSeq]", uri=server.uri, ser=ser) == [0, 1, 2, 3, 1]


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_reply_echoes_the_callers_correlation_id(pyro4, server, ser):
    got = pyro4.run("""
import uuid
seen = []

class Watching(Pyro4.Proxy):
    def _pyroResponseAnnotations(self, annotations, msgtype):
        seen.append((msgtype, annotations.get("CORR")))

corr = uuid.UUID("12345678-1234-5678-1234-567812345678")
Pyro4.current_context.correlation_id = corr
try:
    w = Watching(uri)
    w._pyroSerializer = ser
    w._pyroTimeout = 10
    result = w.add(1, 2)
finally:
    Pyro4.current_context.correlation_id = None
(result, [(t, c == corr.bytes) for t, c in seen])""", uri=server.uri, ser=ser)
    assert got == (3, [(2, True), (5, True)])  # CONNECTOK, then RESULT


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_client_without_metadata_can_still_call(pyro4, server, ser):
    assert pyro4.run("Pyro4.config.METADATA = False\np = proxy(uri, ser)\n(p.add(4, 5), p._pyroMethods)",
                     uri=server.uri, ser=ser) == (9, set())


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
@pytest.mark.parametrize("call, exc_type, function", [
    ("p.divide(1, 0)", "builtins.ZeroDivisionError", "divide"),
    ("p.lookup('missing')", "builtins.KeyError", "lookup"),
])
def test_remote_exception_is_raised_with_the_remote_traceback(pyro4, server, ser, call, exc_type, function):
    with pytest.raises(PeerError) as failure:
        pyro4.run("p = proxy(uri, ser)\n" + call, uri=server.uri, ser=ser)
    assert failure.value.type == exc_type
    assert "Remote traceback" in failure.value.traceback
    assert f"in {function}" in failure.value.traceback
    assert pyro4.run("p.add(3, 4)") == 7, "the connection must survive a remote exception"


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_exception_of_a_class_the_client_cannot_rebuild_gives_serialize_error(pyro4, server, ser):
    # protocol notes 5.2: the 4.82 client refuses unknown exception classes and drops the connection.
    with pytest.raises(PeerError) as failure:
        pyro4.run("p = proxy(uri, ser)\np.fail_custom('boom')", uri=server.uri, ser=ser)
    assert failure.value.type == "Pyro4.errors.SerializeError"
    assert "unsupported serialized class" in failure.value.str and "ServiceError" in failure.value.str
    assert pyro4.run("p._pyroReconnect(tries=5)\np.add(3, 4)") == 7


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
@pytest.mark.parametrize("name, message", [
    ("hidden", "attempt to access unexposed attribute 'hidden'"),
    ("_private", "attempt to access private attribute '_private'"),
    ("__init__", "attempt to access private attribute '__init__'"),
    ("nonexistent", "has no attribute 'nonexistent'"),
])
def test_calling_what_is_not_exposed_raises_attribute_error(pyro4, server, ser, name, message):
    # _pyroInvoke skips the proxy's own metadata check, so the request reaches the daemon.
    with pytest.raises(PeerError) as failure:
        pyro4.run("p = proxy(uri, ser)\np._pyroInvoke(name, (), {})", uri=server.uri, ser=ser, name=name)
    assert failure.value.type == "builtins.AttributeError"
    assert message in failure.value.str
    assert pyro4.run("p.add(3, 4)") == 7


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_proxy_refuses_locally_what_metadata_does_not_list(pyro4, server, ser):
    with pytest.raises(PeerError) as failure:
        pyro4.run("p = proxy(uri, ser)\np.hidden()", uri=server.uri, ser=ser)
    assert failure.value.type == "builtins.AttributeError"
    assert "has no exposed attribute or method 'hidden'" in failure.value.str


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_connecting_to_an_unknown_object_is_rejected(pyro4, server, ser):
    with pytest.raises(PeerError) as failure:
        pyro4.run("p = proxy(uri, ser)\np._pyroBind()", uri=server.uri.replace("service", "nothing"), ser=ser)
    assert failure.value.type == "Pyro4.errors.CommunicationError"
    assert failure.value.str.endswith("rejected: unknown object")


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_calling_an_unknown_object_without_metadata_raises_daemon_error(pyro4, server, ser):
    with pytest.raises(PeerError) as failure:
        pyro4.run("Pyro4.config.METADATA = False\np = proxy(uri, ser)\np.anything()",
                  uri=server.uri.replace("service", "nothing"), ser=ser)
    assert failure.value.type == "Pyro4.errors.DaemonError"
    assert failure.value.str == "unknown object"
    assert "Pyro4.errors.PyroError" in failure.value.mro


# -- autoproxy, streaming, metadata ---------------------------------------------------------------


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_returned_registered_object_arrives_as_a_working_proxy(pyro4, server, ser):
    got = pyro4.run("p = proxy(uri, ser)\nc = p.make_child('kid')\n"
                    "(type(c).__name__, c._pyroUri.location, c.greet('you'), c.name)", uri=server.uri, ser=ser)
    assert got == ("Proxy", server.location, "kid greets you", "kid")


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_generator_result_streams_every_item(pyro4, server, ser):
    tag = f"full-{ser}"
    assert pyro4.run("p = proxy(uri, ser)\nlist(p.ticker(5, tag))", uri=server.uri, ser=ser, tag=tag) \
        == [0, 1, 2, 3, 4]
    assert pyro4.run("p.stream_events(tag)") == ["exhausted"]


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_stream_closed_early_is_closed_on_the_server(pyro4, server, ser):
    tag = f"early-{ser}"
    assert pyro4.run("p = proxy(uri, ser)\nit = p.ticker(1000, tag)\nfirst = [next(it), next(it)]\nit.close()\n"
                     "(first, p.add(1, 1))", uri=server.uri, ser=ser, tag=tag) == ([0, 1], 2)
    # close_stream is a oneway call, so the server may finish it after our next call.
    assert wait_until(lambda: pyro4.run("p.stream_events(tag)")) == ["closed"]


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_proxy_metadata_lists_exposed_methods_oneways_and_properties(pyro4, server, ser):
    methods, oneway, attrs = pyro4.run("p = proxy(uri, ser)\np._pyroBind()\n(p._pyroMethods, p._pyroOneway, p._pyroAttrs)",
                                       uri=server.uri, ser=ser)
    assert (methods, oneway, attrs) == (SERVICE_METHODS, {"record"}, {"value", "label"})


# -- the Pyro.Daemon object -----------------------------------------------------------------------


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_daemon_object_answers_ping_registered_info_and_get_metadata(pyro4, server, ser):
    ping, registered, info, meta = pyro4.run(
        "d = proxy(uri, ser)\n(d.ping(), d.registered(), d.info(), d.get_metadata('service'))",
        uri=server.uri.replace("service", "Pyro.Daemon"), ser=ser)
    assert ping is None
    assert {"Pyro.Daemon", "service"} <= set(registered)
    assert info.startswith(f"Pyro.Daemon bound on {server.location}, NAT None, ")
    assert {k: set(v) for k, v in meta.items()} == {
        "methods": SERVICE_METHODS, "oneway": {"record"}, "attrs": {"value", "label"}}


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_daemon_object_get_metadata_of_unknown_object_raises_daemon_error(pyro4, server, ser):
    with pytest.raises(PeerError) as failure:
        pyro4.run("d = proxy(uri, ser)\nd.get_metadata('nothing')",
                  uri=server.uri.replace("service", "Pyro.Daemon"), ser=ser)
    assert (failure.value.type, failure.value.str) == ("Pyro4.errors.DaemonError", "unknown object")


# -- HMAC, compression, restarts, env config ------------------------------------------------------


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_hmac_key_on_both_sides_lets_calls_through(pyro4, servers, kind):
    server = servers(kind, hmac="s3cret")
    assert pyro4.run("p = proxy(uri, 'serpent', _pyroHmacKey=b's3cret')\np.add(2, 3)", uri=server.uri) == 5


@pytest.mark.parametrize("kind", SERVER_KINDS)
@pytest.mark.parametrize("client_key, message", [
    ("wrong", "message hmac mismatch"),
    (None, "hmac key config not symmetric"),
])
def test_connection_with_wrong_or_missing_hmac_key_is_refused(pyro4, servers, kind, client_key, message):
    server = servers(kind, hmac="s3cret")
    with pytest.raises(PeerError) as failure:
        pyro4.run("p = proxy(uri, 'serpent', _pyroHmacKey=key and key.encode())\np.add(2, 3)",
                  uri=server.uri, key=client_key)
    assert failure.value.type == "Pyro4.errors.CommunicationError"
    assert message in failure.value.str


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_compressed_request_is_understood(pyro4, server, ser):
    # Pyro4 checks MAX_MESSAGE_SIZE on what it sends, so passing it proves the request was compressed.
    assert pyro4.run("Pyro4.config.COMPRESSION = True\nPyro4.config.MAX_MESSAGE_SIZE = 20000\n"
                     "p = proxy(uri, ser)\np.length('x' * 100000)", uri=server.uri, ser=ser) == 100000


@pytest.mark.parametrize("kind", SERVER_KINDS)
@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_server_with_compression_compresses_large_replies(pyro4, servers, kind, ser):
    # A reply of 100 kB passes the client's 20 kB MAX_MESSAGE_SIZE only if it came compressed.
    code = "Pyro4.config.MAX_MESSAGE_SIZE = 20000\np = proxy(uri, ser)\nlen(p.fill('x', 100000))"
    plain = servers(kind)
    with pytest.raises(PeerError) as failure:
        pyro4.run(code, uri=plain.uri, ser=ser)
    assert failure.value.type == "Pyro4.errors.MessageTooLargeError"
    compressing = servers(kind, compression=True)
    assert pyro4.run(code, uri=compressing.uri, ser=ser) == 100000


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_server_size_limit_applies_to_the_compressed_reply(request, pyro4, servers, kind):
    # protocol notes 1.8: MAX_MESSAGE_SIZE bounds data_len + ann_len as sent, i.e. after compression.
    server = servers(kind, compression=True, max_message_size=20000)
    assert pyro4.run("p = proxy(uri, 'serpent')\nlen(p.fill('x', 100000))", uri=server.uri) == 100000


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_client_reconnects_after_the_server_restarts_on_the_same_port(pyro4, servers, kind):
    first = servers(kind)
    assert pyro4.run("p = proxy(uri, 'serpent')\np.add(1, 1)", uri=first.uri) == 2
    first.stop()
    second = servers(kind, port=first.port)
    with pytest.raises(PeerError) as failure:
        pyro4.run("p.add(1, 1)")
    assert "Pyro4.errors.CommunicationError" in failure.value.mro
    assert pyro4.run("p._pyroReconnect(tries=5)\np.add(2, 2)") == 4
    assert second.uri == first.uri


def test_client_configured_by_env_var_uses_that_serializer(server):
    client = pyro4_client(PYRO_SERIALIZER="json")
    try:
        assert client.run("p = Pyro4.Proxy(uri)\ntuple(p.describe((1, 2)))", uri=server.uri) == ("list", [1, 2])
    finally:
        client.stop()


@pytest.mark.parametrize("servertype", ["multiplex", "thread"])
def test_client_reaches_our_daemon_on_a_unix_socket(pyro4, tmp_path, servertype):
    pyro_loops.config.SERVERTYPE = servertype
    service_class, _ = build(pyro_loops.expose, pyro_loops.oneway)
    with pyro_loops.Daemon(unixsocket=str(tmp_path / "d.sock")) as daemon:
        uri = str(daemon.register(service_class(), "service"))
        assert uri == f"PYRO:service@./u:{tmp_path / 'd.sock'}"
        loop = threading.Thread(target=daemon.requestLoop, daemon=True)
        loop.start()
        try:
            assert pyro4.run("p = proxy(uri, 'serpent')\np.add(1, 2)", uri=uri) == 3
        finally:
            daemon.shutdown()
            loop.join(TIMEOUT)
