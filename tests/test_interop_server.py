"""Our Proxy (in this process) calling a stock Pyro4 4.82 daemon (in its own process).

The Pyro4 daemon (peers/pyro4_server.py) serves ``peers/service.Service`` as "service",
once per Pyro4 server type, set through PYRO_SERVERTYPE as any Pyro4 program would be.
"""

from __future__ import annotations

import pytest

import pyro_loops
from pyro_loops import errors
from _util import Pyro4Server, free_port, wait_until

ALL_SERIALIZERS = ["serpent", "json", "marshal"]
# Pyro4's marshal call encoder cannot carry attribute access or batches, and a marshal
# daemon sends no autoproxies (protocol notes 2.4): those paths are tested on serpent and json.
FULL_SERIALIZERS = ["serpent", "json"]

SERVICE_METHODS = {"add", "echo", "describe", "types_of", "record", "recorded", "divide", "lookup",
                   "make_child", "fill", "length", "fail_custom", "blob", "ticker", "stream_events", "sleep",
                   "call_back"}


@pytest.fixture(scope="module", params=["thread", "multiplex"])
def pyro4_server(request):
    server = Pyro4Server(PYRO_SERVERTYPE=request.param)
    server.servertype = request.param
    yield server
    server.stop()


@pytest.fixture
def servers():
    """Starts Pyro4 servers with their own settings for one test; stops them after it."""
    started = []

    def start(**kwargs):
        started.append(Pyro4Server(**kwargs))
        return started[-1]

    yield start
    for s in reversed(started):
        s.stop()


@pytest.fixture
def make_proxy():
    """Makes our proxies on a serializer (through config, as a program would); releases them after."""
    made = []

    def make(uri: str, ser: str = "serpent", **attrs) -> pyro_loops.Proxy:
        pyro_loops.config.SERIALIZER = ser
        proxy = pyro_loops.Proxy(uri)
        proxy._pyroTimeout = 10
        for name, value in attrs.items():
            setattr(proxy, name, value)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy._pyroRelease()


def remote_traceback() -> str:
    return "".join(pyro_loops.util.getPyroTraceback())


# -- calls ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_method_call_passes_positional_and_keyword_arguments(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    assert (p.add(1, 2, scale=3), p.add(a=2), p.add(5, b=1)) == (9, 2, 6)


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_arguments_reach_pyro4_with_the_types_the_serializer_gives_them(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    sequence = "list" if ser == "json" else None
    assert tuple(p.types_of((1, 2), {3}, [4], {"k": None}, "t", 2.5, True, 10**30)) == (
        [sequence or "tuple", sequence or "set", "list", "dict", "str", "float", "bool", "int"], {})
    assert tuple(p.describe((1, 2))) == (("list", [1, 2]) if ser == "json" else ("tuple", (1, 2)))


@pytest.mark.parametrize("ser, received", [("serpent", "dict"), ("marshal", "bytes")])
def test_bytes_argument_reaches_pyro4_as_pyro4_itself_sends_it(pyro4_server, make_proxy, ser, received):
    p = make_proxy(pyro4_server.uri, ser)
    # serpent has no bytes type: a Pyro4 client sends base64 in a dict, and so must we (protocol notes 2.2).
    assert tuple(p.types_of(b"abc")) == ([received], {})


@pytest.mark.parametrize("ser", ["serpent", "marshal"])
def test_bytes_result_from_pyro4_arrives_as_bytes(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    assert p.blob(3) == b"\x00\x01\x02"


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_oneway_call_runs_and_the_next_call_gets_its_own_answer(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    tag = f"oneway-{ser}-{free_port()}"
    assert p.record(tag) is None
    assert p.add(20, 22) == 42
    wait_until(lambda: tag in p.recorded())  # Pyro4 runs oneway calls in their own thread
    assert p.add(1, 1) == 2


# -- properties -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_exposed_property_can_be_read_and_written(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    p.value = f"v-{ser}"
    assert (p.value, p.label) == (f"v-{ser}", "read-only")


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_writing_a_read_only_property_raises_attribute_error(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    with pytest.raises(AttributeError, match="label"):
        p.label = "x"


# -- batch ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_batch_returns_all_results_in_order(pyro4_server, make_proxy, ser):
    b = pyro_loops.batch(make_proxy(pyro4_server.uri, ser))
    b.add(1, 2)
    b.echo("x")
    b.add(1, b=1, scale=5)
    assert list(b()) == [3, "x", 10]


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_batch_that_raises_midway_yields_earlier_results_then_the_exception(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    b = pyro_loops.batch(p)
    b.add(1, 2)
    b.echo("x")
    b.divide(1, 0)
    b.add(5)
    results = []
    with pytest.raises(ZeroDivisionError):
        try:
            for r in b():
                results.append(r)
        except ZeroDivisionError:
            assert "in divide" in remote_traceback()
            raise
    assert results == [3, "x"]
    assert p.add(2, 2) == 4


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_oneway_batch_gets_no_reply_and_runs(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    tag = f"batch-{ser}-{free_port()}"
    b = pyro_loops.batch(p)
    b.record(f"{tag}-1")
    b.record(f"{tag}-2")
    assert b(oneway=True) is None
    assert p.add(2, 3) == 5
    wait_until(lambda: {f"{tag}-1", f"{tag}-2"} <= set(p.recorded()))


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_sequence_numbers_wrap_after_65535(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    p._pyroBind()
    p._pyroSeq = 65533
    assert [p.add(i, 0) for i in range(4)] == [0, 1, 2, 3]
    assert p._pyroSeq == 1


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
@pytest.mark.parametrize("call, exc_type, function", [
    (lambda p: p.divide(1, 0), ZeroDivisionError, "divide"),
    (lambda p: p.lookup("missing"), KeyError, "lookup"),
])
def test_remote_exception_is_raised_with_the_remote_traceback(pyro4_server, make_proxy, ser, call, exc_type,
                                                              function):
    p = make_proxy(pyro4_server.uri, ser)
    with pytest.raises(exc_type):
        try:
            call(p)
        except exc_type:
            tb = remote_traceback()
            assert f"in {function}" in tb
            raise
    assert p.add(3, 4) == 7, "the connection must survive a remote exception"


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_exception_of_a_class_we_cannot_rebuild_gives_serialize_error(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    with pytest.raises(errors.SerializeError, match="unsupported serialized class: service.ServiceError"):
        p.fail_custom("boom")
    assert p.add(3, 4) == 7


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
@pytest.mark.parametrize("name, message", [
    ("hidden", "attempt to access unexposed attribute 'hidden'"),
    ("_private", "attempt to access private attribute '_private'"),
    ("nonexistent", "has no attribute 'nonexistent'"),
])
def test_calling_what_pyro4_does_not_expose_raises_attribute_error(pyro4_server, make_proxy, ser, name, message):
    p = make_proxy(pyro4_server.uri, ser)
    # _pyroInvoke skips our proxy's metadata check, so the request reaches the Pyro4 daemon.
    with pytest.raises(AttributeError, match=message):
        p._pyroInvoke(name, (), {})
    assert p.add(3, 4) == 7


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_proxy_refuses_locally_what_metadata_does_not_list(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    with pytest.raises(AttributeError, match="hidden"):
        p.hidden()


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_connecting_to_an_unknown_object_is_rejected(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri.replace("service", "nothing"), ser)
    with pytest.raises(errors.CommunicationError, match="unknown object"):
        p._pyroBind()


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_calling_an_unknown_object_without_metadata_raises_daemon_error(pyro4_server, make_proxy, ser):
    pyro_loops.config.METADATA = False
    p = make_proxy(pyro4_server.uri.replace("service", "nothing"), ser)
    with pytest.raises(errors.DaemonError, match="^unknown object$"):
        p.anything()


# -- autoproxy, streaming, metadata ---------------------------------------------------------------


@pytest.mark.parametrize("ser", FULL_SERIALIZERS)
def test_returned_registered_object_arrives_as_a_working_proxy(pyro4_server, make_proxy, ser):
    child = make_proxy(pyro4_server.uri, ser).make_child("kid")
    try:
        assert isinstance(child, pyro_loops.Proxy)
        assert child._pyroUri.location == pyro4_server.location
        assert (child.greet("you"), child.name) == ("kid greets you", "kid")
    finally:
        child._pyroRelease()


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_generator_result_streams_every_item(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    tag = f"full-{ser}-{free_port()}"
    assert list(p.ticker(5, tag)) == [0, 1, 2, 3, 4]
    assert p.stream_events(tag) == ["exhausted"]


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_stream_closed_early_is_closed_on_the_server(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    tag = f"early-{ser}-{free_port()}"
    it = p.ticker(1000, tag)
    assert [next(it), next(it)] == [0, 1]
    it.close()
    assert p.add(1, 1) == 2
    # close_stream is a oneway call; Pyro4 runs it in a thread of its own.
    assert wait_until(lambda: p.stream_events(tag)) == ["closed"]


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_proxy_metadata_lists_what_pyro4_exposes(pyro4_server, make_proxy, ser):
    p = make_proxy(pyro4_server.uri, ser)
    p._pyroBind()
    assert (set(p._pyroMethods), set(p._pyroOneway), set(p._pyroAttrs)) == (
        SERVICE_METHODS, {"record"}, {"value", "label"})


# -- the Pyro.Daemon object -----------------------------------------------------------------------


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_pyro4_daemon_object_answers_ping_registered_info_and_get_metadata(pyro4_server, make_proxy, ser):
    d = make_proxy(pyro4_server.uri.replace("service", pyro_loops.constants.DAEMON_NAME), ser)
    assert d.ping() is None
    assert {"Pyro.Daemon", "service"} <= set(d.registered())
    info = d.info()
    assert info.startswith(f"Pyro.Daemon bound on {pyro4_server.location}, NAT None, ")
    assert ("Multiplex" in info) == (pyro4_server.servertype == "multiplex")  # PYRO_SERVERTYPE took effect
    meta = d.get_metadata("service")
    assert {k: set(v) for k, v in meta.items()} == {
        "methods": SERVICE_METHODS, "oneway": {"record"}, "attrs": {"value", "label"}}
    with pytest.raises(errors.DaemonError, match="unknown object"):
        d.get_metadata("nothing")


# -- HMAC, compression, restarts, env config ------------------------------------------------------


def test_hmac_key_on_both_sides_lets_calls_through(servers, make_proxy):
    server = servers(hmac="s3cret")
    assert make_proxy(server.uri, _pyroHmacKey=b"s3cret").add(2, 3) == 5


@pytest.mark.parametrize("key", [b"wrong", None])
def test_wrong_or_missing_hmac_key_is_refused(servers, make_proxy, key):
    server = servers(hmac="s3cret")
    p = make_proxy(server.uri, _pyroHmacKey=key)
    with pytest.raises(errors.PyroError, match="hmac"):
        p.add(2, 3)


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_large_reply_from_a_compressing_pyro4_daemon_is_decompressed(servers, make_proxy, ser):
    server = servers(PYRO_COMPRESSION="true")
    raw = make_proxy(server.uri, ser, _pyroRawWireResponse=True).fill("x", 100000)
    assert raw.flags & 0x02, "the Pyro4 daemon was expected to compress this reply"
    assert make_proxy(server.uri, ser).fill("x", 100000) == "x" * 100000


def test_proxy_refuses_a_reply_larger_than_max_message_size(pyro4_server, make_proxy):
    # Pyro4 checks MAX_MESSAGE_SIZE on every message it receives, right after the header (protocol notes 1.8).
    pyro_loops.config.MAX_MESSAGE_SIZE = 20000
    with pytest.raises(errors.MessageTooLargeError):
        make_proxy(pyro4_server.uri).fill("x", 100000)


@pytest.mark.parametrize("ser", ALL_SERIALIZERS)
def test_compressed_large_request_is_accepted_by_pyro4(servers, make_proxy, ser):
    # The daemon closes connections whose messages exceed its 20 kB limit, so a 100 kB
    # argument gets through only if our proxy compressed it.
    server = servers(PYRO_MAX_MESSAGE_SIZE="20000")
    with pytest.raises(errors.CommunicationError):
        make_proxy(server.uri, ser).length("x" * 100000)
    pyro_loops.config.COMPRESSION = True
    assert make_proxy(server.uri, ser).length("x" * 100000) == 100000


def test_proxy_reconnects_after_the_server_restarts_on_the_same_port(servers, make_proxy):
    first = servers()
    p = make_proxy(first.uri)
    assert p.add(1, 1) == 2
    first.stop()
    second = servers(port=first.port)
    assert second.uri == first.uri
    # Our proxy notices the closed idle connection before sending and, with a retry allowed, reconnects by itself.
    p._pyroMaxRetries = 1
    assert p.add(1, 2) == 3
    p._pyroReconnect(tries=5)
    assert p.add(2, 2) == 4


def test_pyro4_daemon_configured_by_env_var_refuses_other_serializers(servers, make_proxy):
    server = servers(PYRO_SERIALIZERS_ACCEPTED="json")
    with pytest.raises(errors.CommunicationError, match="serializer that is not accepted: 1"):
        make_proxy(server.uri, "serpent").add(1, 1)
    assert make_proxy(server.uri, "json").add(1, 1) == 2
