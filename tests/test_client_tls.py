"""The loop client's TLS handshakes are bounded per loop pass like the daemon's.

``SSL_HANDSHAKES_PER_WAKEUP`` caps the handshake steps (key exchange,
signatures: the CPU-heavy part of TLS) a daemon takes per pass of its loop; a
client opening many TLS connections at once (a window's worth of proxies) is
held to the same cap, and every connection still completes.
"""

from __future__ import annotations

import pytest

import pyro_loops
from pyro_loops import _tls
from pyro_loops.daemon import Daemon

from _client_hosts import host, reported  # noqa: F401
from test_tls import Echo, pki  # noqa: F401


@pytest.fixture
def client_steps_per_pass(monkeypatch):
    """Client-side handshake steps taken between two ``handle_deadline`` passes of any Client."""
    passes = [0]
    do_handshake = _tls.TLSSession.do_handshake

    def counting(session):
        if not session.server_side:
            passes[-1] += 1
        return do_handshake(session)

    handle_deadline = pyro_loops.Client.handle_deadline

    def new_pass(client):
        passes.append(0)
        handle_deadline(client)

    monkeypatch.setattr(_tls.TLSSession, "do_handshake", counting)
    monkeypatch.setattr(pyro_loops.Client, "handle_deadline", new_pass)
    return passes


def test_client_handshake_steps_per_pass_are_bounded_and_every_connection_completes(
        host, reported, pki, client_steps_per_pass):
    pyro_loops.config.SSL_HANDSHAKES_PER_WAKEUP = 1
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    uri = daemon.register(Echo(), "echo")
    host.attach(daemon)
    with pyro_loops.Client(ssl_context=pki.client_ctx()) as client:
        host.attach(client)
        calls = [client.proxy(uri).echo(i) for i in range(6)]  # six TLS connections opened at once
        host.run_until(lambda: all(c.done() for c in calls))
        assert [c.result() for c in calls] == list(range(6))
    daemon.close()
    assert sum(client_steps_per_pass) >= 12  # at least ClientHello and Finished per connection
    assert max(client_steps_per_pass) <= 1, client_steps_per_pass
