"""Red team: the loop ``Client`` re-entered from nested loops (modal dialogs in done-callbacks).

Each test is one attack on the promise of ``adapters._common.nests``: a
done-callback may run a nested loop (``QDialog.exec``, ``wait_window``, a
select loop polled from inside) and replies keep arriving there, on every
connection, its own included. The attacks nest twice, nest on every reply,
close or detach the client inside the nested loop with replies buffered
behind, split or cut a reply while the outer handler is mid-way, raise from
callbacks, use the client from another thread, and nest inside a daemon's
method that waits for the client. What must hold each time: every call
completes exactly once, with its result or a clear error; nothing reaches the
toolkit; nothing stays registered in the loop.

Replies are steered with ``Relay``, a TCP relay in a thread between the
client and a real daemon process: it can hold the server's bytes and let
them through in one piece (so the client reads many replies in one read),
in pieces cut anywhere, or cut the connection (a reset or a graceful close).
asyncio has no nested loops, so the hosts are ``_hosts.NESTING``.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any, Callable

import pytest

import pyro_loops
from pyro_loops import errors

from _client_hosts import WAIT_S, client, host, loops_server, reported  # noqa: F401
from _hosts import NESTING
from _util import accepted

_HEADER = struct.Struct("!4sHHHHiHHHH")  # the Pyro wire header: data length 6th, annotations length 8th


def nest(host: Any, until: Callable[[], Any]) -> None:
    """Run the host's loop nested, as a modal dialog does, until ``until()`` holds (or WAIT_S passed)."""
    deadline = time.monotonic() + WAIT_S
    ticking = host.repeat(0.01, lambda: None)  # a loop that has nothing else to do still checks ``until``
    try:
        host.nest(lambda: until() or time.monotonic() > deadline)
    finally:
        ticking()


class Relay:
    """A TCP relay in a thread between the client and a server; the test steers the server's bytes.

    ``hold()`` keeps what the server sends; ``release(*cuts)`` sends it on in
    pieces cut at the given offsets, a short pause between pieces so that each
    is its own segment; ``reset()`` ends the client's side with a RST,
    ``shut()`` with a FIN.
    """

    def __init__(self, uri: str) -> None:
        self.target = pyro_loops.URI(uri)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"PYRO:{self.target.object}@127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Condition()
        self.held = bytearray()
        self.holding = False
        self.downstream: socket.socket | None = None
        self.others: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        """The first connection is steered; later ones (after a reset, say) go straight through."""
        for down in accepted(self.listener):
            up = socket.create_connection((self.target.host, self.target.port))
            if self.downstream is None:
                with self.lock:
                    self.downstream, self.upstream = down, up
                pumps = [self._to_server, self._to_client]
                self.ended = threading.Event()  # _to_server returned: the socket may be closed
            else:
                self.others += [down, up]
                pumps = [lambda: _pipe(down, up), lambda: _pipe(up, down)]
            for fn in pumps:
                thread = threading.Thread(target=fn, daemon=True)
                thread.start()
                self.threads.append(thread)

    def _to_server(self) -> None:
        try:
            while data := self.downstream.recv(65536):
                self.upstream.sendall(data)
        except OSError:
            pass
        self.ended.set()

    def _to_client(self) -> None:
        try:
            while data := self.upstream.recv(65536):
                with self.lock:
                    if self.holding:
                        self.held += data
                        self.lock.notify_all()
                    else:
                        self.downstream.sendall(data)
        except OSError:
            pass

    def hold(self) -> None:
        with self.lock:
            self.holding = True

    def held_messages(self) -> int:
        """How many whole messages are held."""
        with self.lock:
            return _count_messages(self.held)

    def wait_held(self, messages: int) -> None:
        with self.lock:
            assert self.lock.wait_for(lambda: _count_messages(self.held) >= messages, WAIT_S), \
                f"the server sent {_count_messages(self.held)} of {messages} replies"

    def message_ends(self) -> list[int]:
        """Where each held message ends (offsets into the held bytes)."""
        with self.lock:
            return _message_ends(self.held)

    def release(self, *cuts: int, upto: int | None = None) -> None:
        """Send what is held, in pieces cut at ``cuts``; stop holding. With ``upto``, send only
        that much and keep holding (what the server sends later is never let through)."""
        with self.lock:
            data, self.held = bytes(self.held[:upto]), bytearray()
            self.holding = upto is not None
            bounds = [0, *cuts, len(data)]
            for start, end in zip(bounds, bounds[1:]):
                self.downstream.sendall(data[start:end])
                time.sleep(0.05)  # each piece its own segment, read on its own

    def reset(self) -> None:
        """Cut the client's side with a RST (SO_LINGER 0), as a crashed peer or a middlebox does."""
        with self.lock:
            self.downstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # A close() while another thread waits in recv() on the socket takes effect only once
            # that recv() returns: wake it first (SHUT_RD sends nothing), so the RST goes out now.
            self.downstream.shutdown(socket.SHUT_RD)
            assert self.ended.wait(WAIT_S)
            self.downstream.close()
            self.upstream.close()

    def shut(self) -> None:
        """Close the client's side gracefully (FIN) after what was released, as a daemon shutting down."""
        with self.lock:
            self.downstream.shutdown(socket.SHUT_RDWR)
            self.downstream.close()
            self.upstream.close()

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for sock in (self.downstream, getattr(self, "upstream", None), *self.others):
                if sock is not None:
                    sock.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass


def _message_ends(data: bytes | bytearray) -> list[int]:
    ends, pos = [], 0
    while len(data) - pos >= _HEADER.size:
        fields = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + fields[7] + fields[5]
        if end > len(data):
            break
        ends.append(end)
        pos = end
    return ends


def _count_messages(data: bytes | bytearray) -> int:
    return len(_message_ends(data))


@pytest.fixture
def relay(loops_server):
    made = Relay(loops_server.uri)
    yield made
    made.close()


def bound_proxy(host: Any, client: pyro_loops.Client, uri: str) -> Any:
    proxy = client.proxy(uri)
    proxy._pyroTimeout = WAIT_S * 2
    host.settle(proxy._pyroBind())
    return proxy


def held_calls(host: Any, client: pyro_loops.Client, relay: Relay, count: int) -> tuple[Any, list[Any]]:
    """``count`` calls whose replies the relay holds, all of them in; returns the proxy and the calls."""
    proxy = bound_proxy(host, client, relay.uri)
    relay.hold()
    calls = [proxy.add(i, 1) for i in range(count)]
    host.run_until(lambda: relay.held_messages() >= count)
    return proxy, calls


def completions(calls: list[Any]) -> list[list[Any]]:
    """Per call, the outcomes its done-callback saw (each must see exactly one)."""
    seen: list[list[Any]] = [[] for _ in calls]
    for index, call in enumerate(calls):
        call.add_done_callback(lambda c, index=index: seen[index].append(
            c.exception() if c.exception() is not None else c.result()))
    return seen


def dialog_until(host: Any, done: Callable[[], Any]) -> Callable[[Any], None]:
    """A done-callback that opens a dialog (runs the loop nested) until ``done()``."""
    return lambda call: nest(host, done)


nesting = pytest.mark.parametrize("host", NESTING, indirect=True)


# --- nesting deeper ---------------------------------------------------------------------


@nesting
def test_a_nested_loop_inside_a_nested_loop_gets_replies_at_every_depth(host, client, relay):
    proxy = bound_proxy(host, client, relay.uri)
    seen: list[Any] = []

    def second_dialog(call):
        seen.append(("second", call.result()))
        third = proxy.add(100, 1)
        nest(host, third.done)
        seen.append(("third", third.result()))

    def first_dialog(call):
        seen.append(("first", call.result()))
        second = proxy.add(10, 1)
        second.add_done_callback(second_dialog)
        nest(host, lambda: len(seen) == 3)
        seen.append("first closed")

    proxy.add(1, 1).add_done_callback(first_dialog)
    host.run_until(lambda: "first closed" in seen)
    assert seen == [("first", 2), ("second", 11), ("third", 101), "first closed"]
    assert host.settle(proxy.add(2, 2)).result() == 4



# --- the client closed or detached inside the nested loop --------------------------------


@nesting
def test_close_inside_the_nested_loop_fails_the_replies_still_buffered_behind_exactly_once(
        host, client, relay, reported):
    proxy, calls = held_calls(host, client, relay, 8)
    seen = completions(calls)
    fd = proxy._pyroChannel.sock.fileno()

    # calls[1] comes in the nested loop; its callback closes the client
    calls[0].add_done_callback(dialog_until(host, lambda: all(seen)))
    calls[1].add_done_callback(lambda call: client.close())
    relay.release()  # all eight replies in one read
    host.run_until(lambda: all(seen))
    assert seen[:2] == [[1], [2]]
    assert all(len(outcomes) == 1 and isinstance(outcomes[0], pyro_loops.errors.ConnectionClosedError)
               for outcomes in seen[2:]), seen
    assert "closed" in str(seen[2][0])
    assert client.pending == 0 and not client._socks
    host.assert_released()
    # A new connection (most often on the closed socket's descriptor number) is served as
    # itself: no registration of the old one fires for it.
    with pyro_loops.Client() as fresh:
        host.attach(fresh)
        again = bound_proxy(host, fresh, relay.uri)
        assert host.settle(again.add(3, 4)).result() == 7
        assert again._pyroChannel.sock.fileno() >= 0 and fd >= 0


@nesting
def test_detach_and_attach_again_inside_the_nested_loop_delivers_every_reply_once(host, client, relay, reported):
    proxy, calls = held_calls(host, client, relay, 6)
    seen = completions(calls)
    handles = list(host.handles)

    def dialog(call):
        handles[-1].detach()
        nest(host, lambda: True)  # a turn of the loop while detached
        handles.append(host.attach(client))
        nest(host, lambda: all(seen))

    calls[0].add_done_callback(dialog)
    relay.release()
    host.run_until(lambda: all(seen))
    assert seen == [[i + 1] for i in range(6)]
    assert host.settle(proxy.add(5, 5)).result() == 10


@nesting
def test_close_then_attach_again_inside_the_nested_loop_is_refused_clearly(host, client, relay, reported):
    proxy, calls = held_calls(host, client, relay, 3)
    seen = completions(calls)
    refused: list[BaseException] = []

    def dialog(call):
        client.close()
        try:
            host.attach(client)
        except pyro_loops.errors.PyroError as exc:
            refused.append(exc)
        # the calls failed by close() inside this callback run their callbacks once it returns
        nest(host, lambda: all(c.done() for c in calls))

    calls[0].add_done_callback(dialog)
    relay.release()
    host.run_until(lambda: all(seen))
    assert seen[0] == [1] and all(isinstance(s[0], pyro_loops.errors.ConnectionClosedError) for s in seen[1:])
    assert len(refused) == 1 and "closed" in str(refused[0])
    host.assert_released()


# --- replies cut, connections cut ----------------------------------------------------------


@nesting
def test_a_reply_split_across_segments_while_the_outer_handler_waits_completes_in_the_nested_loop(
        host, client, relay, reported):
    proxy, calls = held_calls(host, client, relay, 3)
    seen = completions(calls)
    during: list[Any] = []

    def dialog(call):
        nest(host, lambda: all(seen))
        during.extend(list(s) for s in seen)

    calls[0].add_done_callback(dialog)
    first, second, _ = relay.message_ends()
    # the first reply and the header and a byte of the second; then the rest of the second
    # a byte at a time in two more pieces; then the third
    relay.release(first + 25, first + 27, second)
    host.run_until(lambda: during)
    assert during == [[1], [2], [3]]


@nesting
def test_a_reset_during_the_nested_loop_still_delivers_the_replies_received_before_it(
        host, client, relay, reported):
    proxy, calls = held_calls(host, client, relay, 6)
    seen = completions(calls)

    def second_dialog(call):  # in the nested loop, with four replies read and waiting behind this one
        relay.reset()
        time.sleep(0.05)  # the RST is in: the socket is readable (with an error) in the next loop
        nest(host, lambda: all(seen))

    calls[0].add_done_callback(dialog_until(host, lambda: all(seen)))
    calls[1].add_done_callback(second_dialog)
    relay.release()
    host.run_until(lambda: all(seen))
    assert seen == [[i + 1] for i in range(6)]
    # the rest is the reset's: a call made now fails with it (or opens a new connection, once
    # the reset was seen), and the next one works
    late = proxy.add(1, 1)
    host.run_until(late.done)
    assert late.exception() is None or "reset" in str(late.exception())
    assert host.settle(proxy.add(2, 2)).result() == 4


@nesting
def test_a_graceful_close_during_the_nested_loop_delivers_what_came_and_fails_the_rest(
        host, client, relay, reported):
    proxy, calls = held_calls(host, client, relay, 4)
    more = [proxy.add(10 + i, 1) for i in range(2)]  # their replies are never let through
    host.run_until(lambda: relay.held_messages() >= 6)
    seen = completions(calls + more)
    calls[0].add_done_callback(dialog_until(host, lambda: all(seen)))
    relay.release(upto=relay.message_ends()[3])
    relay.shut()
    host.run_until(lambda: all(seen))
    assert seen[:4] == [[1], [2], [3], [4]]
    assert all(isinstance(s[0], pyro_loops.errors.ConnectionClosedError) and len(s) == 1 for s in seen[4:]), seen


@nesting
def test_a_dialog_opened_by_the_last_reply_before_the_end_sees_the_calls_behind_it_fail(
        host, client, relay, reported):
    # One reply per pass, the end of stream read meanwhile: a connection at its end is not
    # watched for reading, so its end must still reach the dialog the last reply opens.
    pyro_loops.config.MAX_CALLS_PER_WAKEUP = 1
    proxy, calls = held_calls(host, client, relay, 8)
    later = proxy.add(100, 1)  # its reply is never let through
    host.run_until(lambda: relay.held_messages() >= 9)
    seen = completions(calls + [later])
    inside: list[bool] = []

    def dialog(call):
        nest(host, later.done)
        inside.append(later.done())

    calls[-1].add_done_callback(dialog)
    relay.release(upto=relay.message_ends()[7])
    relay.shut()
    host.run_until(lambda: inside)
    assert inside == [True]  # in the dialog, not once it gave up waiting
    assert seen[:8] == [[i + 1] for i in range(8)]
    assert isinstance(seen[8][0], pyro_loops.errors.ConnectionClosedError) and len(seen[8]) == 1


# --- callbacks that raise, other threads -----------------------------------------------------


@nesting
def test_callbacks_raising_inside_and_after_the_nested_loop_are_reported_and_others_complete(
        host, client, relay, reported):
    proxy, calls = held_calls(host, client, relay, 4)
    seen = completions(calls)

    def dialog(call):
        nest(host, lambda: all(seen))
        raise RuntimeError("after the dialog")

    def fails(call):
        raise ValueError("inside the dialog")

    calls[0].add_done_callback(dialog)
    calls[1].add_done_callback(fails)
    relay.release()
    host.run_until(lambda: all(seen) and len(reported) == 2)
    assert seen == [[1], [2], [3], [4]]
    assert sorted(str(exc) for exc, _ in reported) == ["after the dialog", "inside the dialog"]
    assert all("done-callback" in where for _, where in reported)
    reported.clear()
    assert host.settle(proxy.add(1, 1)).result() == 2


@nesting
def test_another_thread_using_a_proxy_while_the_loop_is_nested_gets_the_clear_error(
        host, client, relay, reported):
    proxy, calls = held_calls(host, client, relay, 2)
    outcome: list[Any] = []
    submitted: list[Any] = []

    def other_thread():
        try:
            proxy.add(1, 2)
        except pyro_loops.errors.PyroError as exc:
            outcome.append(exc)
        submitted.append(client.submit(lambda: proxy.add(20, 2)).result(WAIT_S))

    def dialog(call):
        thread = threading.Thread(target=other_thread)
        thread.start()
        nest(host, lambda: submitted)
        thread.join(WAIT_S)

    calls[0].add_done_callback(dialog)
    relay.release()
    host.run_until(lambda: submitted)
    assert "another thread" in str(outcome[0]) and "client.submit" in str(outcome[0])
    assert submitted == [22]


@nesting
def test_close_from_another_thread_while_the_loop_is_nested_fails_the_pending_calls_once(
        host, client, relay, reported):
    proxy, calls = held_calls(host, client, relay, 3)
    late = proxy.add(100, 1)  # its reply is never let through
    seen = completions(calls + [late])

    def dialog(call):
        thread = threading.Thread(target=client.close)
        thread.start()
        nest(host, lambda: all(seen))
        thread.join(WAIT_S)

    calls[0].add_done_callback(dialog)
    relay.release(upto=relay.message_ends()[0])
    host.run_until(lambda: all(seen))
    assert seen[0] == [1]
    assert all(len(s) == 1 and isinstance(s[0], pyro_loops.errors.ConnectionClosedError) for s in seen[1:])
    host.assert_released()


# --- a daemon and a client on one loop -----------------------------------------------------


@pyro_loops.expose
class Asker:
    """A published method that opens a modal dialog waiting for a loop-client call of its own."""

    def __init__(self, host: Any, client: pyro_loops.Client, uri: str) -> None:
        self.host, self.client, self.uri = host, client, uri

    def ask(self, a, b):
        call = self.client.proxy(self.uri).add(a, b)
        nest(self.host, call.done)
        return call.result()


@nesting
@pytest.mark.parametrize("target", ["other server", "same daemon"])
def test_a_daemon_method_nesting_until_the_clients_reply_on_the_same_loop_gets_it(
        host, client, loops_server, reported, target):
    with pyro_loops.Daemon(host="127.0.0.1") as daemon:
        host.attach(daemon)
        asker = Asker(host, client, loops_server.uri)
        uri = daemon.register(asker)
        if target == "same daemon":
            asker.uri = daemon.register(Adder())
        callers = [bound_proxy(host, client, uri) for _ in range(2)]
        calls = [callers[0].ask(1, 2), callers[1].ask(3, 4), callers[0].ask(5, 6)]
        host.run_until(lambda: all(c.done() for c in calls))
        assert [c.result() for c in calls] == [3, 7, 11]


@pyro_loops.expose
class Adder:
    def add(self, a, b):
        return a + b


@nesting
def test_a_callback_nesting_for_every_reply_is_bounded_and_every_call_completes_once(
        host, client, relay, reported, caplog):
    # Each reply's callback makes the next call and opens a dialog until it is done: without a
    # bound the stack grows by a nested loop per reply, until a RecursionError strikes somewhere
    # inside the client (at about 70 deep: it left a call counted pending for ever).
    pyro_loops.config.CLIENT_MAX_NESTING = 5
    proxy = bound_proxy(host, client, relay.uri)
    calls: list[Any] = []
    depth = [0, 0]  # now, deepest

    def dialog(call):
        depth[0] += 1
        depth[1] = max(depth)
        if len(calls) < 150:
            calls.append(proxy.add(len(calls), 1))
            calls[-1].add_done_callback(dialog)
            nest(host, calls[-1].done)
        depth[0] -= 1

    calls.append(proxy.add(0, 0))
    calls[0].add_done_callback(dialog)
    host.run_until(lambda: len(calls) == 150 and all(c.done() for c in calls) and depth[0] == 0, WAIT_S * 3)
    assert [c.result() for c in calls] == [0] + list(range(2, 151))
    assert depth[1] <= 5 + 1 and client.pending == 0
    assert "CLIENT_MAX_NESTING" in caplog.text
