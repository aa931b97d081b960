"""What the tests of ``pyro_loops.Client`` share besides the host loops.

Each test of the loop client is written once against ``_hosts.Host`` and runs
under every host loop (the ``host`` fixture, re-exported here with the
``client`` attached to it). The module also holds the server processes the
tests call: a stock Pyro4 4.82 daemon and a pyro_loops daemon, each serving
``peers/service.py``.
"""

from __future__ import annotations

import json

import pytest

import pyro_loops

from _adapter_support import WAIT_S, in_thread, reported
from _hosts import Host, host
from _util import PEERS, Peer, Pyro4Server, peer_env


@pytest.fixture
def client(host, reported):
    """A Client attached to the host loop, closed at the end."""
    with pyro_loops.Client() as made:
        host.attach(made)
        yield made


class LoopsServer(Peer):
    """peers/loops_server.py: our daemon in its own process (SERVERTYPE thread, so ``sleep`` runs aside)."""

    def __init__(self, **env: str) -> None:
        env.setdefault("PYRO_SERVERTYPE", "thread")
        super().__init__([str(PEERS / "loops_server.py")], peer_env(**env))
        self.uri: str = json.loads(self.readline())["uri"]


@pytest.fixture(scope="module")
def pyro4_server():
    with Pyro4Server() as server:
        yield server


@pytest.fixture(scope="module")
def loops_server():
    with LoopsServer() as server:
        yield server


@pytest.fixture(params=["pyro4", "loops"])
def server(request):
    """A stock Pyro4 4.82 daemon, then our own, each in its own process."""
    return request.getfixturevalue(request.param + "_server")


__all__ = ["WAIT_S", "Host", "host", "reported", "client", "pyro4_server", "loops_server", "server", "in_thread"]
