"""Where a oneway call runs relative to the connection's next call, on a thread server.

With ``ONEWAY_THREADED`` False, Pyro4 4.82's thread server runs a oneway call in
the connection's own thread before it reads that connection's next request, so
the next call sees its effect; with True (Pyro4's default) the oneway call runs
in a thread of its own and the next call is answered while it still runs. Each
test runs against a stock Pyro4 daemon and ours (both in their own process,
served by ``requestLoop()`` with ``SERVERTYPE`` unset), called by our Proxy.
"""

import json

import pytest

from pyro_loops import Proxy, batch
from _util import PEERS, Peer, peer_env, wait_until

TIMEOUT = 10.0
LIBRARIES = [pytest.param("pyro4", marks=pytest.mark.pyro4), "pyro_loops"]


class GateServer(Peer):
    """peers/oneway_order_server.py: a ``Gate`` served by ``library``'s thread server."""

    def __init__(self, library: str, oneway_threaded: bool) -> None:
        env = peer_env(PYRO_ONEWAY_THREADED="true" if oneway_threaded else "false")
        super().__init__([str(PEERS / "oneway_order_server.py"), library], env)
        self.uri: str = json.loads(self.readline())["uri"]


def gate(server: GateServer) -> Proxy:
    proxy = Proxy(server.uri)
    proxy._pyroTimeout = TIMEOUT
    return proxy


@pytest.mark.parametrize("library", LIBRARIES)
def test_unthreaded_oneway_call_runs_before_the_connections_next_call(library):
    with GateServer(library, oneway_threaded=False) as server, gate(server) as proxy:
        for i in range(20):
            proxy.record(i)
            assert proxy.recorded() == list(range(i + 1))


@pytest.mark.parametrize("library", LIBRARIES)
def test_unthreaded_oneway_call_holds_up_the_connections_next_call(library):
    with GateServer(library, oneway_threaded=False) as server, gate(server) as proxy:
        proxy.hold("held", 0.5)
        # read only once the hold gave up waiting for it
        assert proxy.release(0.5) is False
        assert proxy.recorded() == ["held"]


@pytest.mark.parametrize("library", LIBRARIES)
def test_threaded_oneway_call_does_not_hold_up_the_connections_next_call(library):
    with GateServer(library, oneway_threaded=True) as server, gate(server) as proxy:
        proxy.hold("held", TIMEOUT)
        assert proxy.release(TIMEOUT) is True  # answered while the hold waited for it
        assert wait_until(lambda: proxy.recorded() == ["held"])


@pytest.mark.parametrize("library", LIBRARIES)
def test_unthreaded_oneway_calls_of_two_connections_still_run_side_by_side(library):
    # the order is per connection: another client's call runs while this one's oneway holds
    with GateServer(library, oneway_threaded=False) as server, gate(server) as holder, gate(server) as other:
        holder.hold("held", TIMEOUT)
        assert other.release(TIMEOUT) is True
        assert holder.recorded() == ["held"]


@pytest.mark.parametrize("library", LIBRARIES)
def test_oneway_batch_runs_before_the_connections_next_call_even_with_oneway_threaded(library):
    # ONEWAY_THREADED is about single calls: a oneway batch runs in the connection's thread
    with GateServer(library, oneway_threaded=True) as server, gate(server) as proxy:
        calls = batch(proxy)
        calls.hold("held", 0.5)
        calls.record("after")
        assert calls(oneway=True) is None
        assert proxy.release(0.5) is False
        assert proxy.recorded() == ["held", "after"]
