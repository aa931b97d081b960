"""Red team of ``Connections.lane_ready``: the connections whose next read the call lane takes.

The set is kept where connection state changes, not asked per event. Each
test here drives a connection into a state where it may be in the set while
it is not idle, or the set out of step with the switches that govern it,
and compares what a client sees over real sockets with the lane on and off.
"""

from __future__ import annotations

from test_fast_daemon import RawClient, served
from test_red_team_lanes import CORR


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
