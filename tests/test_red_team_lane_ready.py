"""Red team of ``Connections.lane_ready``: the connections whose next read the call lane takes.

The set is kept where connection state changes, not asked per event. Each
test here drives a connection into a state where it may be in the set while
it is not idle, or the set out of step with the switches that govern it,
and compares what a client sees over real sockets with the lane on and off.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

from _util import TIMEOUT, wait_until
from test_fast_daemon import RawClient, comparable, read_message, request_bytes, served
from test_red_team_lanes import CORR, both, read_messages

from pyro_loops import Daemon, config, expose
from pyro_loops._protocol import ClientProtocol


def test_switching_the_lane_off_sends_the_next_reads_of_open_connections_the_general_way():
    """``Connections.lane = False`` says reads from then on take the general path: a
    connection the lane served just before is no exception."""
    with served(lane=True) as server:
        client = RawClient(server)
        try:
            client.call("echo", 1, corr=CORR)
            taken = server.lane_calls
            assert taken > 0
            server.daemon._connections.lane = False
            client.call("echo", 2, corr=CORR)
            client.call("echo", 3, corr=CORR)
            assert server.lane_calls == taken
            server.daemon._connections.lane = True
            client.call("echo", 4, corr=CORR)  # the general path, or the lane: it is idle again after it
            client.call("echo", 5, corr=CORR)
            assert server.lane_calls > taken
        finally:
            client.close()


def unsigned_call_after_a_key_set_mid_set_interest(lane: bool) -> tuple[bytes, bool]:
    """A thread sets the daemon's HMAC key just as the loop thread, in ``set_interest``,
    has found the connection idle (no key yet) and is about to put it in ``lane_ready``:
    that thread switch is forced by setting the key from ``lane_idle`` once, when it
    answers True to ``set_interest`` (with the lane off it never does: the key is set
    at the same point of the exchange instead). Then the client sends a call without a
    key: what it got back (b"" when the daemon closed the connection), whether the call ran."""
    with served(lane=lane) as server:
        connections = server.daemon._connections
        client = RawClient(server)
        try:
            time.sleep(0.2)  # the daemon is done with the handshake
            idle = connections.lane_idle
            armed = [True]

            def key_set_meanwhile(conn):
                found = idle(conn)
                if found and armed and sys._getframe(1).f_code.co_name == "set_interest":
                    armed.clear()
                    server.daemon._pyroHmacKey = b"secret"  # as another thread would, right here
                return found

            connections.lane_idle = key_set_meanwhile
            # a oneway call: the general path, which ends in one set_interest
            client.sock.sendall(client.protocol.invoke("obj", "later", (1,), {}, oneway=True).data)
            wait_until(lambda: server.obj.calls)
            time.sleep(0.2)  # the loop is done with it
            if armed:
                server.daemon._pyroHmacKey = b"secret"
            client.sock.sendall(client.protocol.invoke("obj", "echo", ("unsigned",), {},
                                                       annotations={"CORR": CORR}).data)
            try:
                reply = read_message(client.sock)
            except ConnectionResetError:
                reply = b""
            ran = any(call[:2] == ("echo", ("unsigned",)) for call in server.obj.calls)
            return reply, ran
        finally:
            client.close()


def test_a_key_set_by_another_thread_while_the_loop_marks_a_connection_ready_refuses_the_next_unsigned_call():
    """The lane never serves a connection of a daemon with an HMAC key: a call without
    the key is refused, as with the lane off, however the key-setting thread interleaves."""
    with_lane, without_lane = (unsigned_call_after_a_key_set_mid_set_interest(lane) for lane in (True, False))
    assert with_lane == without_lane
    assert with_lane[1] is False


@expose
class Keyed:
    """A method that gives its own daemon an HMAC key, as a setup call might."""

    def lock(self, key):
        self._pyroDaemon._pyroHmacKey = key
        return key


def test_a_method_that_sets_its_daemons_hmac_key_gets_the_reply_it_gets_with_the_lane_off():
    """The key comes into force while the call runs: its reply is the one the general
    path writes then (signed with the new key), the lane on or off."""
    replies = []
    for lane in (True, False):
        with served(lane=lane) as server:
            server.daemon.register(Keyed(), "keyed")
            client = RawClient(server)
            try:
                client.sock.sendall(request_bytes("keyed", "lock", ("secret",), CORR, 1))
                replies.append(comparable(read_message(client.sock), CORR))
                assert server.lane_calls == lane  # the lane takes it when on
            finally:
                client.close()
    assert replies[0] == replies[1]
    assert "HMAC" in replies[0][4]  # the reply's annotations


def connect(port: int, obj: str) -> tuple[socket.socket, ClientProtocol]:
    """A raw client connection to ``obj``, handshake done."""
    protocol = ClientProtocol("serpent")
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(protocol.connect(obj, metadata=False))
    while protocol.next_event() is None:
        protocol.receive_data(sock.recv(65536))
    return sock, protocol


def results(sock: socket.socket, protocol: ClientProtocol, count: int) -> list:
    """The next ``count`` results ``sock`` receives."""
    got: list = []
    while len(got) < count:
        protocol.receive_data(sock.recv(65536))
        while (event := protocol.next_event()) is not None:
            got.append(event.value)
    return got


def slow_call_then_two_more(port: int, order: list, obj: str, slow: str, first: list, second: list) -> None:
    """A client calls ``slow`` on ``obj`` and, once it runs, calls ``rec("B")`` behind it;
    another client then calls ``rec("C")``. Their results go to ``first`` and ``second``."""
    sock, protocol = connect(port, obj)
    other, other_protocol = connect(port, obj)
    sock.sendall(protocol.invoke(obj, slow, (), {}).data)
    wait_until(lambda: order)
    sock.sendall(protocol.invoke(obj, "rec", ("B",), {}).data)  # behind the running call
    time.sleep(0.1)
    other.sendall(other_protocol.invoke(obj, "rec", ("C",), {}).data)
    second.extend(results(other, other_protocol, 1))
    first.extend(results(sock, protocol, 2))
    sock.close()
    other.close()


def in_a_dialog(lane: bool, client: Callable[[int, list], None]) -> list:
    """A daemon on the select-loop adapter host serving "m", whose ``modal`` call nests
    the loop for 0.6 s (a modal dialog's way) and whose ``rec`` records its argument;
    ``client(port, order)`` runs in a thread meanwhile. The order things ran in."""
    from pyro_loops._eventloop import SelectLoop
    from pyro_loops.adapters.selectloop import attach

    loop = SelectLoop()
    order: list = []

    @expose
    class Modal:
        def modal(self):
            order.append("A-start")
            end = time.monotonic() + 0.6
            while time.monotonic() < end:
                loop.poll(0.02)
            order.append("A-end")
            return "A"

        def rec(self, x):
            order.append(x)
            return x

    with Daemon(host="127.0.0.1") as daemon:
        daemon._connections.lane = lane
        uri = daemon.register(Modal(), "m")
        handle = attach(daemon, loop)
        thread = threading.Thread(target=client, args=(uri.port, order), daemon=True)
        thread.start()
        loop.run(until=lambda: not thread.is_alive(), max_wait=0.05)
        handle.detach()
        assert (daemon._connections.lane_calls > 0) == lane
    return order


def test_a_lane_call_that_nests_the_loop_answers_in_order_and_lets_other_clients_through_as_with_the_lane_off():
    """On an adapter host a call opens a modal dialog (nests the loop). Its client
    sends its next call meanwhile, and another client calls: that one is answered
    inside the dialog, the first client's next call after the dialog's, lane on or off."""

    def run(lane: bool) -> tuple[list, list, list]:
        first: list = []
        second: list = []

        def client(port: int, order: list) -> None:
            slow_call_then_two_more(port, order, "m", "modal", first, second)

        return in_a_dialog(lane, client), first, second

    assert run(lane=True) == run(lane=False) == (["A-start", "C", "A-end", "B"], ["A", "B"], ["C"])


def test_a_coroutine_lane_call_answers_after_its_await_and_the_calls_behind_it_in_order_as_with_the_lane_off():
    """On the asyncio host an ``async def`` method is run by the loop and answered
    later (the lane raises Deferred and leaves the connection busy). Its client's next
    call waits for it; another client is answered meanwhile, lane on or off."""
    import asyncio

    from pyro_loops.adapters.asyncio import attach

    def run(lane: bool) -> tuple[list, list, list]:
        order: list = []

        @expose
        class Waits:
            async def wait(self):
                order.append("A-start")
                await asyncio.sleep(0.5)
                order.append("A-end")
                return "A"

            def rec(self, x):
                order.append(x)
                return x

        first: list = []
        second: list = []

        async def main() -> int:
            with Daemon(host="127.0.0.1") as daemon:
                daemon._connections.lane = lane
                uri = daemon.register(Waits(), "w")
                handle = attach(daemon)

                thread = threading.Thread(target=slow_call_then_two_more, daemon=True,
                                          args=(uri.port, order, "w", "wait", first, second))
                thread.start()
                while thread.is_alive():
                    await asyncio.sleep(0.02)
                handle.detach()
                return daemon._connections.lane_calls

        lane_calls = asyncio.run(main())
        assert (lane_calls > 0) == lane
        return order, first, second

    assert run(lane=True) == run(lane=False) == (["A-start", "C", "A-end", "B"], ["A", "B"], ["C"])


def test_calls_left_for_the_next_pass_by_the_wakeup_budget_are_answered_before_a_later_call_as_with_the_lane_off():
    """MAX_CALLS_PER_WAKEUP leaves pipelined calls for the next pass (the ``soon`` set);
    a call sent right behind them, or after the budget ran out exactly, must not go ahead."""
    config.MAX_CALLS_PER_WAKEUP = 2

    def send(server, client) -> list:
        got = []
        for batch in (4, 2, 1, 3):
            calls = [request_bytes("obj", "echo", (f"{batch}-{n}",), CORR, n) for n in range(batch)]
            client.sock.sendall(b"".join(calls))
            client.sock.sendall(request_bytes("obj", "echo", (f"{batch}-late",), CORR, batch))
            got += read_messages(client.sock, batch + 1)
        return got

    with_lane, without_lane = both(send)
    assert with_lane == without_lane
    assert [call[1][0] for call in with_lane[1]] == [
        f"{batch}-{n}" for batch in (4, 2, 1, 3) for n in [*range(batch), "late"]]


def test_a_client_gone_during_its_nested_lane_call_leaves_its_socket_number_to_a_new_client_served_as_with_the_lane_off():
    """A call nests the loop; its client resets the connection meanwhile, and a new
    client, likely given the same socket number, calls during and after the dialog.
    The new client gets its answers; nothing of the old connection reaches it."""

    def run(lane: bool) -> tuple[list, list]:
        got: list = []

        def client(port: int, order: list) -> None:
            sock, protocol = connect(port, "m")
            sock.sendall(protocol.invoke("m", "modal", (), {}).data)
            wait_until(lambda: order)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset
            time.sleep(0.1)
            other, other_protocol = connect(port, "m")
            other.sendall(other_protocol.invoke("m", "rec", ("C",), {}).data)
            got.extend(results(other, other_protocol, 1))
            wait_until(lambda: "A-end" in order)
            other.sendall(other_protocol.invoke("m", "rec", ("D",), {}).data)
            got.extend(results(other, other_protocol, 1))
            other.close()

        return in_a_dialog(lane, client), got

    assert run(lane=True) == run(lane=False) == (["A-start", "C", "A-end", "D"], ["C", "D"])
