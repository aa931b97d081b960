"""``pyro_loops.Client`` under every host loop: calls that return at once and
complete in the loop's thread, against a stock Pyro4 4.82 daemon and our own
(each in its own process), and against daemons on the same loop.

Each test runs under the select loop, asyncio, Qt and Tk (``host`` fixture).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid

import pytest

import pyro_loops
from pyro_loops import errors
from pyro_loops.call import CallPendingError
from pyro_loops.client import ClientClosedError, LoopProxy, RemoteStream

from _client_hosts import WAIT_S, client, host, in_thread, loops_server, pyro4_server, reported, server  # noqa: F401


def unique(tag):
    """A stream tag no other test (the servers live for the whole module) has used."""
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def recorded_with(host, proxy, item):
    """The server's ``recorded()`` list once it holds ``item``: ``record`` is a oneway call, and a
    thread server (Pyro4's or ours) may run it after the connection's next call."""
    deadline = time.monotonic() + WAIT_S
    while item not in (recorded := host.settle(proxy.recorded()).result()):
        assert time.monotonic() < deadline, f"{item!r} never recorded: {recorded}"
    return recorded


def proxy_for(client, server, timeout=WAIT_S):
    proxy = client.proxy(server.uri)
    proxy._pyroTimeout = timeout
    return proxy


# --- calls ------------------------------------------------------------------------------------


def test_call_returns_at_once_and_completes_in_the_loop_thread(host, client, server):
    proxy = proxy_for(client, server)
    call = proxy.add(1, 2)
    assert isinstance(call, pyro_loops.Call) and not call.done()
    with pytest.raises(CallPendingError, match="has not completed yet"):
        call.result()
    threads = []
    call.add_done_callback(lambda c: threads.append(threading.get_ident()))
    host.settle(call)
    assert call.result() == 3 and call.exception() is None
    assert threads == [threading.get_ident()]


def test_pipelined_calls_on_one_connection_each_get_their_own_result(host, client, server):
    proxy = proxy_for(client, server)
    calls = [proxy.add(i, scale=2) for i in range(50)]
    host.run_until(lambda: all(c.done() for c in calls))
    assert [c.result() for c in calls] == [2 * i for i in range(50)]
    assert len(client._socks) == 1  # one connection carried them all


def test_remote_exception_then_and_iferror(host, client, server):
    proxy = proxy_for(client, server)
    failed = proxy.divide(1, 0)
    chained = proxy.add(2, 3).then(lambda value, factor: value * factor, 10)
    caught = proxy.divide(1, 0).iferror(lambda exc: type(exc).__name__)
    passed = proxy.add(1, 1).iferror(lambda exc: "not called")
    follows = proxy.add(1, 1).then(lambda value: proxy.add(value, 100))  # fn returns a Call: followed
    host.run_until(lambda: all(c.done() for c in (failed, chained, caught, passed, follows)))
    assert isinstance(failed.exception(), ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        failed.result()
    assert chained.result() == 50
    assert caught.result() == "ZeroDivisionError"
    assert passed.result() == 2
    assert follows.result() == 102


def test_oneway_call_completes_once_written(host, client, server):
    proxy = proxy_for(client, server)
    sent = proxy.record("oneway-item")
    host.settle(sent)
    assert sent.result() is None
    assert "oneway-item" in recorded_with(host, proxy, "oneway-item")


def test_remote_attributes_through_calls(host, client, server):
    proxy = proxy_for(client, server)
    host.settle(proxy._pyroSetAttr("value", 41))
    got = host.settle(proxy._pyroGetAttr("value"))
    label = host.settle(proxy._pyroGetAttr("label"))
    refused = host.settle(proxy._pyroSetAttr("label", "x"))
    assert got.result() == 41 and label.result() == "read-only"
    assert isinstance(refused.exception(), AttributeError)
    with pytest.raises(AttributeError, match="_pyroSetAttr"):
        proxy.value = 3  # a loop proxy never sets a remote attribute by assignment


def test_unknown_method_is_refused_once_metadata_is_known(host, client, server):
    proxy = proxy_for(client, server)
    host.settle(proxy._pyroBind())
    with pytest.raises(AttributeError, match="no exposed method 'nope'"):
        proxy.nope


def test_autoproxied_result_is_a_loop_proxy_of_the_same_client(host, client, server):
    proxy = proxy_for(client, server)
    child = host.settle(proxy.make_child("kid")).result()
    assert isinstance(child, LoopProxy) and child._pyroClient is client
    greeting = host.settle(child.greet("you"))
    assert greeting.result() == "kid greets you"


def test_item_stream_per_item_callback_with_bounded_prefetch(host, client, server):
    pyro_loops.config.ITER_STREAM_PREFETCH = 3
    proxy = proxy_for(client, server)
    tag = unique("each")
    stream = host.settle(proxy.ticker(12, tag)).result()
    assert isinstance(stream, RemoteStream)
    items, in_flight = [], []

    def on_item(item):
        items.append(item)
        in_flight.append(stream._requested + len(stream._items))

    finished = stream.for_each(on_item)
    host.settle(finished)
    assert finished.result() is None
    assert items == list(range(12))
    assert max(in_flight) <= 3
    assert host.settle(proxy.stream_events(tag)).result() == ["exhausted"]


def test_stream_closed_early_tells_the_server(host, client, server):
    proxy = proxy_for(client, server)
    tag = unique("early")
    stream = host.settle(proxy.ticker(1000, tag)).result()
    seen = []
    stream.for_each(seen.append)
    host.run_until(lambda: len(seen) >= 2)
    stream.close()
    for _ in range(100):  # the close is a oneway call: poll the server for its effect
        if host.settle(proxy.stream_events(tag)).result() == ["closed"]:
            break
        host.settle(proxy.sleep(0.05))
    else:
        pytest.fail("the server never saw the stream closed")


def test_host_loop_keeps_turning_while_a_1s_call_is_pending(host, client, server):
    proxy = proxy_for(client, server)
    ticks = []

    def tick():
        ticks.append(call.done())
        if not call.done():
            host.call_later(0.01, tick)

    call = proxy.sleep(1.0)
    host.call_later(0.01, tick)
    host.settle(call)
    assert call.result() == 1.0
    assert ticks.count(False) >= 5  # the loop's own timer ran, again and again, during the call


# --- cancelling and deadlines -----------------------------------------------------------------


def test_cancelled_call_not_yet_sent_is_never_sent(host, client, server):
    proxy = proxy_for(client, server)
    dropped = proxy.record("cancelled-before-sending")  # queued: the connection is not up yet
    assert dropped.cancel() and dropped.cancelled()
    kept = proxy.record("kept")
    host.settle(kept)
    assert "cancelled-before-sending" not in recorded_with(host, proxy, "kept")


def test_cancelled_call_already_sent_has_its_reply_dropped(host, client, server):
    proxy = proxy_for(client, server)
    host.settle(proxy._pyroBind())
    slow = proxy.sleep(0.3)
    after = proxy.add(1, 2)
    assert slow.cancel()
    host.settle(after)
    assert after.result() == 3 and slow.cancelled()
    with pytest.raises(asyncio.CancelledError):
        slow.result()
    assert host.settle(proxy.add(2, 2)).result() == 4  # the connection is still in step


def test_a_call_pipelined_behind_a_lone_call_gets_its_own_reply_once_that_one_is_answered(host, client, server):
    # the first went out alone and was answered first, with the second still in flight:
    # the second's reply, read alone, answers the second
    proxy = proxy_for(client, server)
    host.settle(proxy._pyroBind())
    first = proxy.sleep(0.2)
    second = proxy.sleep(seconds=0.1)  # with keywords: not written by quick_invoke
    host.run_until(lambda: first.done() and second.done())
    assert (first.result(), second.result()) == (0.2, 0.1)
    assert host.settle(proxy.add(2, 2)).result() == 4


def test_response_annotations_hook_of_a_loop_proxy_class_sees_every_reply(host, client, server):
    seen = []

    class Watching(LoopProxy):
        def _pyroResponseAnnotations(self, annotations, msgtype):
            seen.append((msgtype, annotations.get("CORR")))

    corr = uuid.uuid4()
    pyro_loops.current_context.correlation_id = corr
    try:
        proxy = Watching(client, server.uri)
        proxy._pyroTimeout = WAIT_S
        host.settle(proxy._pyroBind())
        calls = [host.settle(make()) for make in (lambda: proxy.add(1, 2), lambda: proxy.add(1, b=2),
                                                  lambda: proxy.echo([1]))]  # one at a time
    finally:
        pyro_loops.current_context.correlation_id = None
    assert [call.result() for call in calls] == [3, 3, [1]]
    assert seen[1:] == [(pyro_loops.message.MSG_RESULT, corr.bytes)] * 3  # after the handshake's


def test_timeout_fails_the_call_and_those_behind_it_then_a_fresh_connection(host, client, server):
    proxy = proxy_for(client, server, timeout=0.5)
    host.settle(proxy._pyroBind())
    first_connection = proxy._pyroChannel
    slow = proxy.sleep(3)
    behind = proxy.add(1, 2)
    host.run_until(lambda: slow.done() and behind.done())
    assert isinstance(slow.exception(), errors.TimeoutError)
    assert isinstance(behind.exception(), errors.TimeoutError)
    fresh = host.settle(proxy.add(2, 3))
    assert fresh.result() == 5
    assert proxy._pyroChannel is not first_connection


def test_pending_calls_are_bounded_per_client(host, client, server):
    pyro_loops.config.CLIENT_MAX_PENDING = 3
    proxy = proxy_for(client, server)
    calls = [proxy.add(i) for i in range(4)]
    assert isinstance(calls[3].exception(), errors.PyroError)
    assert "CLIENT_MAX_PENDING" in str(calls[3].exception())
    host.run_until(lambda: all(c.done() for c in calls[:3]))
    assert [c.result() for c in calls[:3]] == [0, 1, 2]
    assert host.settle(proxy.add(7)).result() == 7  # room again


def test_close_fails_pending_calls_and_releases_the_sockets(host, reported, server):
    made = pyro_loops.Client()
    handle = host.attach(made)
    proxy = proxy_for(made, server)
    host.settle(proxy._pyroBind())
    pending = proxy.sleep(2)
    queued = made.proxy(server.uri).add(1, 2)
    made.close()
    for call in (pending, queued):
        assert isinstance(call.exception(), ClientClosedError)
        assert "closed" in str(call.exception())
    assert not made._socks and not handle.attached
    assert isinstance(proxy.add(1, 2).exception(), ClientClosedError)


# --- threads ----------------------------------------------------------------------------------


def test_loop_proxy_from_another_thread_names_the_fix_and_submit_works(host, client, server):
    proxy = proxy_for(client, server)
    thread, out = in_thread(lambda: proxy.add(1, 2))
    thread.join(WAIT_S)
    assert isinstance(out[0], errors.PyroError) and "client.submit" in str(out[0])
    thread, out = in_thread(lambda: client.submit(lambda: proxy.add(1, 2)).result(WAIT_S))
    host.run_until(lambda: out)
    assert out == [3]


# --- callbacks and daemons on the same loop ---------------------------------------------------


class Listener:
    def __init__(self) -> None:
        self.heard = []

    @pyro_loops.expose
    @pyro_loops.callback
    def notify(self, value):
        self.heard.append((value, threading.get_ident()))
        if value == "fail":
            raise ValueError("callback failed")
        return value * 2


def test_server_calls_back_while_our_call_is_pending(host, client, server, reported):
    daemon = pyro_loops.Daemon(host="127.0.0.1")
    host.attach(daemon)
    listener = Listener()
    own = client.proxy(daemon.register(listener))
    proxy = proxy_for(client, server)
    call = proxy.call_back(own, 21)
    host.settle(call)
    assert call.result() == 42
    assert listener.heard == [(21, threading.get_ident())]  # ran in the loop's thread
    failing = host.settle(proxy.call_back(own, "fail"))
    assert "callback failed" in str(failing.exception())
    assert [str(exc) for exc, _ in reported] == ["callback failed"]  # @callback: reported here too
    reported.clear()
    daemon.close()


@pyro_loops.expose
class Local:
    def add(self, a, b):
        return a + b


def test_daemon_on_the_same_loop_is_called_through_the_loop_client(host, client):
    daemon = pyro_loops.Daemon(host="127.0.0.1")
    host.attach(daemon)
    proxy = client.proxy(daemon.register(Local()))
    assert host.settle(proxy.add(20, 22)).result() == 42
    daemon.close()


def test_pyroname_and_pyrometa_resolved_with_loop_calls(host, client):
    from pyro_loops import naming
    ns_uri, ns_daemon, _ = naming.startNS(host="127.0.0.1", port=0, enableBroadcast=False)
    host.attach(ns_daemon)
    daemon = pyro_loops.Daemon(host="127.0.0.1")
    host.attach(daemon)
    uri = daemon.register(Local())
    ns = client.proxy(ns_uri)
    host.settle(ns.register("local.adder", uri, metadata=["adder"]))
    by_name = client.proxy(f"PYRONAME:local.adder@127.0.0.1:{ns_uri.port}")
    by_meta = client.proxy(f"PYROMETA:adder@127.0.0.1:{ns_uri.port}")
    assert host.settle(by_name.add(1, 2)).result() == 3
    assert host.settle(by_meta.add(3, 4)).result() == 7
    daemon.close()
    ns_daemon.close()


# --- errors nobody looked at and callbacks that raise ------------------------------------------


def test_done_and_then_callbacks_that_raise_go_to_the_error_hook(host, client, server, reported):
    proxy = proxy_for(client, server)
    first = proxy.add(1, 1)
    first.add_done_callback(lambda c: 1 / 0)
    chained = proxy.add(2, 2).then(lambda value: [][value])
    other = proxy.add(3, 3)
    host.run_until(lambda: first.done() and chained.done() and other.done())
    assert other.result() == 6 and first.result() == 2
    assert isinstance(chained.exception(), IndexError)
    assert sorted(type(exc).__name__ for exc, _ in reported) == ["IndexError", "ZeroDivisionError"]
    reported.clear()


def test_exception_never_retrieved_is_logged_once(host, client, server, caplog):
    pyro_loops.config.LOG_REPEAT_LIMIT = 0  # earlier tests' lines in this process must not make this one the last
    proxy = proxy_for(client, server)
    call = proxy.divide(1, 0)
    host.settle(call)
    with caplog.at_level(logging.ERROR, logger="pyro_loops"):
        del call
        import gc
        gc.collect()
    assert [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()] == [
        "exception of divide on " + server.uri + " was never retrieved: ZeroDivisionError: division by zero"]


# --- asyncio ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["asyncio"], indirect=True)
def test_await_calls_and_async_for_over_a_stream(host, client, server):
    proxy = proxy_for(client, server)

    async def scenario():
        total = await proxy.add(1, 2)
        with pytest.raises(ZeroDivisionError):
            await proxy.divide(1, 0)
        items = [item async for item in await proxy.ticker(5, unique("async"))]
        return total, items

    assert host.run(scenario()) == (3, [0, 1, 2, 3, 4])


@pytest.mark.parametrize("host", ["asyncio"], indirect=True)
def test_cancelling_the_awaiting_task_cancels_the_call(host, client, server):
    proxy = proxy_for(client, server)
    calls = []

    async def waiter():
        call = proxy.sleep(0.5)
        calls.append(call)
        await call

    async def scenario():
        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await proxy.add(1, 2)

    assert host.run(scenario()) == 3
    assert calls[0].cancelled()


def test_pyroname_without_a_location_finds_the_name_server_by_broadcast(host, client):
    from pyro_loops import naming
    from _util import free_port
    bcport = free_port()
    ns_uri, ns_daemon, bc = naming.startNS(host="127.0.0.1", port=0, bchost="127.0.0.1", bcport=bcport)
    host.attach(ns_daemon)
    host.attach(bc)
    daemon = pyro_loops.Daemon(host="127.0.0.1")
    host.attach(daemon)
    ns_daemon.nameserver.register("local.adder", daemon.register(Local()))
    # NS_HOST (localhost) on NS_PORT is tried first and refuses; the broadcast answers
    pyro_loops.config.NS_PORT = free_port()
    pyro_loops.config.NS_BCPORT = bcport
    pyro_loops.config.BROADCAST_ADDRS = "127.0.0.1"
    proxy = client.proxy("PYRONAME:local.adder")
    assert host.settle(proxy.add(1, 2)).result() == 3
    assert host.settle(client.proxy("PYRONAME:local.adder").add(2, 2)).result() == 4  # located once
    daemon.close()
    bc.close()
    ns_daemon.close()


# --- batches ----------------------------------------------------------------------------------


def test_batch_on_a_loop_proxy_is_one_call_of_the_results(host, client, server):
    proxy = proxy_for(client, server)
    batch = pyro_loops.batch(proxy)
    batch.add(1, 2)
    batch.echo("x")
    batch.add(2, scale=10)
    results = batch()
    assert isinstance(results, pyro_loops.Call)
    assert host.settle(results).result() == [3, "x", 20]
    failing = pyro_loops.batch(proxy)
    failing.add(1, 1)
    failing.divide(1, 0)
    failing.record("never-reached")
    assert isinstance(host.settle(failing()).exception(), ZeroDivisionError)
    oneway = pyro_loops.batch(proxy)
    oneway.record("batched-oneway")
    assert host.settle(oneway(oneway=True)).result() is None
    assert "never-reached" not in recorded_with(host, proxy, "batched-oneway")


def test_call_cancelled_in_the_same_turn_as_a_burst_is_never_sent(host, client, server):
    proxy = proxy_for(client, server)
    host.settle(proxy._pyroBind())
    busy = proxy.sleep(0.2)  # the connection is not idle: what follows is a burst
    dropped = proxy.record("cancelled-in-a-burst")
    kept = proxy.record("kept-in-a-burst")
    assert dropped.cancel()
    host.run_until(lambda: busy.done() and kept.done())
    assert "cancelled-in-a-burst" not in recorded_with(host, proxy, "kept-in-a-burst")


def test_long_burst_goes_out_while_the_program_is_still_making_calls(host, client, server):
    # The server starts on the first calls of a long burst at once, instead of
    # idling until the program has made all of them and the loop turns.
    proxy = proxy_for(client, server)
    host.settle(proxy._pyroBind())
    calls = [proxy.add(i, 1) for i in range(300)]
    channel = proxy._pyroChannel
    assert len(channel.inflight) > 250 and channel.written > 0  # the loop has not turned yet
    host.run_until(lambda: all(c.done() for c in calls))
    assert [c.result() for c in calls] == list(range(1, 301))
