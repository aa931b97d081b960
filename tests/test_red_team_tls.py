"""Red-team pass over TLS: attacks on the daemon, the blocking Proxy and the loop Client.

Each test is one attack; its name says what the product does about it. The
certificates, the raw-socket helpers and the daemon fixture are test_tls.py's.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import socket
import ssl
import threading
import time

import pytest
import trustme

import pyro_loops
from pyro_loops import errors
from pyro_loops._tls import TLSError
from pyro_loops.daemon import Daemon

from _client_hosts import WAIT_S, host, reported  # noqa: F401
from _util import TIMEOUT, Pyro4Server, PeerError, pyro4_client, wait_until
from test_daemon import serving
from test_tls import (Echo, client_hello, closed_by_daemon, closing_lines, pki, raw_connection,  # noqa: F401
                      server_ctx_from, tls_daemon)


@pyro_loops.expose
class Big:
    def blob(self, size):
        return "x" * size


# --- a relay that cuts the daemon's bytes short -----------------------------------------------


@contextlib.contextmanager
def cutting_relay(target: tuple[str, int], cut_after: int):
    """A TCP relay to ``target`` that forwards the daemon's first ``cut_after`` bytes, then
    drops both connections without a word (no close_notify): a reply truncated mid-record."""
    listener = socket.create_server(("127.0.0.1", 0))
    socks: list[socket.socket] = []

    def pump(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                upstream = socket.create_connection(target)
                socks.extend([client, upstream])
                threading.Thread(target=pump, args=(client, upstream, None), daemon=True).start()
                threading.Thread(target=pump, args=(upstream, client, cut_after), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for sock in socks:
            sock.close()


def via(uri, port: int) -> str:
    return f"PYRO:{uri.object}@127.0.0.1:{port}"


# --- handshake timing attacks -------------------------------------------------------------------


def test_client_hello_dripped_one_byte_at_a_time_is_closed_at_handshake_timeout(pki, caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    pyro_loops.config.HANDSHAKE_TIMEOUT = 0.5
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    hello = client_hello(pki)
    with serving(daemon):
        sock = raw_connection(daemon)
        sock.settimeout(0.1)
        dripped = 0
        deadline = time.monotonic() + TIMEOUT
        closed = False
        while not closed and time.monotonic() < deadline:  # one byte every 0.1 s: never idle, never done
            try:
                sock.send(hello[dripped:dripped + 1])
                dripped += 1
                closed = sock.recv(65536) == b""
            except socket.timeout:
                pass
            except OSError:
                closed = True
        sock.close()
        assert closed and dripped < len(hello)
    assert any("TLS handshake not done within HANDSHAKE_TIMEOUT" in line for line in closing_lines(caplog))


def test_connect_and_never_speak_is_closed_at_handshake_timeout(pki, caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    pyro_loops.config.HANDSHAKE_TIMEOUT = 0.3
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    with serving(daemon):
        assert closed_by_daemon(raw_connection(daemon))
    assert any("HANDSHAKE_TIMEOUT" in line for line in closing_lines(caplog))


def test_loop_client_to_a_server_that_accepts_and_never_speaks_tls_fails_at_handshake_timeout(host, reported, pki):
    pyro_loops.config.HANDSHAKE_TIMEOUT = 0.3
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        with pyro_loops.Client(ssl_context=pki.client_ctx()) as client:
            host.attach(client)
            call = host.settle(client.proxy(f"PYRO:x@127.0.0.1:{silent.getsockname()[1]}").echo(1))
            with pytest.raises(errors.CommunicationError, match="HANDSHAKE_TIMEOUT"):
                call.result()
    finally:
        silent.close()


def test_proxy_to_a_server_that_never_speaks_tls_fails_within_its_timeout(pki):
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        with pyro_loops.Proxy(f"PYRO:x@127.0.0.1:{silent.getsockname()[1]}") as proxy:
            proxy._pyroSslContext = pki.client_ctx()
            proxy._pyroTimeout = 0.3
            with pytest.raises(errors.TimeoutError, match="TLS handshake"):
                proxy.echo(1)
    finally:
        silent.close()


# --- certificates --------------------------------------------------------------------------------


def expired_ctx(pki, tmp_path) -> ssl.SSLContext:
    past = datetime.datetime(2020, 1, 1)
    issued = pki.ca_obj.issue_cert("localhost", "127.0.0.1", not_before=past,
                                   not_after=past + datetime.timedelta(days=1))
    return server_ctx_from(issued, tmp_path)


def self_signed_ctx(tmp_path) -> ssl.SSLContext:
    lone = trustme.CA()
    return server_ctx_from(lone.issue_cert("127.0.0.1"), tmp_path)


@pytest.mark.parametrize("kind", ["expired", "self-signed"])
def test_proxy_refuses_a_daemon_with_a_bad_certificate_naming_the_reason(pki, tmp_path, kind):
    ctx = expired_ctx(pki, tmp_path) if kind == "expired" else self_signed_ctx(tmp_path)
    daemon = Daemon(host="127.0.0.1", ssl_context=ctx)
    uri = daemon.register(Echo(), "echo")
    reason = "expired" if kind == "expired" else "(?i)certificate"
    with serving(daemon), pyro_loops.Proxy(uri) as proxy:
        proxy._pyroSslContext = pki.client_ctx()
        with pytest.raises(TLSError, match=reason):
            proxy.echo(1)


def test_loop_client_refuses_an_expired_daemon_certificate_naming_the_reason(host, reported, pki, tmp_path):
    daemon = Daemon(host="127.0.0.1", ssl_context=expired_ctx(pki, tmp_path))
    uri = daemon.register(Echo(), "echo")
    host.attach(daemon)
    with pyro_loops.Client(ssl_context=pki.client_ctx()) as client:
        host.attach(client)
        call = host.settle(client.proxy(uri).echo(1))
        with pytest.raises(TLSError, match="expired"):
            call.result()
    daemon.close()


def test_loop_client_without_certificate_to_a_mutual_tls_daemon_gets_a_clear_error(host, reported, pki, caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx(mutual=True))
    uri = daemon.register(Echo(), "echo")
    host.attach(daemon)
    with pyro_loops.Client(ssl_context=pki.client_ctx()) as client:
        host.attach(client)
        call = host.settle(client.proxy(uri).echo(1))
        with pytest.raises(errors.CommunicationError) as failed:
            call.result()
    daemon.close()
    assert "certificate" in str(failed.value).lower(), failed.value


def test_proxy_without_certificate_to_a_mutual_tls_daemon_gets_a_clear_error(pki):
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx(mutual=True))
    uri = daemon.register(Echo(), "echo")
    with serving(daemon), pyro_loops.Proxy(uri) as proxy:
        proxy._pyroSslContext = pki.client_ctx()
        with pytest.raises(errors.CommunicationError) as failed:
            proxy.echo(1)
    assert "certificate" in str(failed.value).lower(), failed.value


def test_mutual_tls_daemon_refuses_a_client_certificate_from_another_ca_and_logs_why(pki, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    stranger = trustme.CA().issue_cert("mallory.example.org")
    stranger.cert_chain_pems[0].write_to_path(tmp_path / "c.pem")
    stranger.private_key_pem.write_to_path(tmp_path / "k.pem")
    client_ctx = pyro_loops._tls.client_context(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"), cacerts=pki.ca)
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx(mutual=True))
    uri = daemon.register(Echo(), "echo")
    with serving(daemon), pyro_loops.Proxy(uri) as proxy:
        proxy._pyroSslContext = client_ctx
        with pytest.raises(errors.CommunicationError):
            proxy.echo(1)
        wait_until(lambda: any("CERTIFICATE_VERIFY_FAILED" in line for line in closing_lines(caplog)))


# --- the other kind of daemon ---------------------------------------------------------------------


def test_plaintext_pyro_split_across_segments_to_a_tls_daemon_is_named_as_plaintext(tls_daemon, caplog):
    sock = raw_connection(tls_daemon, b"PY")
    time.sleep(0.2)  # the daemon reads "PY" alone first
    sock.sendall(b"RO" + bytes(20))
    assert closed_by_daemon(sock)
    wait_until(lambda: any("plaintext Pyro peer" in line for line in closing_lines(caplog)))


def test_plain_daemon_names_a_tls_client_hello_in_its_log(pki, caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    daemon = Daemon(host="127.0.0.1")
    with serving(daemon):
        assert closed_by_daemon(raw_connection(daemon, client_hello(pki)))
        wait_until(lambda: closing_lines(caplog))
    assert any("TLS" in line for line in closing_lines(caplog)), closing_lines(caplog)


def test_pyro4_tls_client_to_our_plain_daemon_fails_clearly_and_the_daemon_goes_on(pki, caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Echo(), "echo")
    with serving(daemon), pyro4_client(**pki.pyro4_client_env()) as peer:
        with pytest.raises(PeerError) as failed:
            peer.run("Pyro4.Proxy(uri).echo(1)", uri=str(uri))
        assert "Communication" in failed.value.type or "ConnectionClosed" in failed.value.type, failed.value
        with pyro_loops.Proxy(uri) as plain:
            assert plain.echo(2) == 2


def test_our_tls_proxy_and_loop_client_to_a_plain_pyro4_daemon_fail_clearly(host, reported, pki):
    with Pyro4Server() as server:
        with pyro_loops.Proxy(server.uri) as proxy:
            proxy._pyroSslContext = pki.client_ctx()
            with pytest.raises(TLSError, match="does the daemon use TLS"):
                proxy.echo(1)
        with pyro_loops.Client(ssl_context=pki.client_ctx()) as client:
            host.attach(client)
            call = host.settle(client.proxy(server.uri).echo(1))
            with pytest.raises(TLSError, match="answered in plaintext Pyro: it does not use TLS"):
                call.result()


# --- records cut short -----------------------------------------------------------------------------


def test_proxy_gets_connection_closed_when_a_reply_is_cut_mid_record_without_close_notify(tls_daemon, pki):
    uri = tls_daemon.register(Big(), "big")
    with cutting_relay(tls_daemon.sock.getsockname(), 20_000) as port:
        with pyro_loops.Proxy(via(uri, port)) as proxy:
            proxy._pyroSslContext = no_host_check(pki)
            proxy._pyroTimeout = TIMEOUT
            with pytest.raises(errors.ConnectionClosedError):
                proxy.blob(200_000)


def test_loop_client_gets_an_error_when_a_reply_is_cut_mid_record_without_close_notify(host, reported, pki):
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    uri = daemon.register(Big(), "big")
    host.attach(daemon)
    with cutting_relay(daemon.sock.getsockname(), 20_000) as port:
        with pyro_loops.Client(ssl_context=no_host_check(pki)) as client:
            host.attach(client)
            call = host.settle(client.proxy(via(uri, port)).blob(200_000))
            with pytest.raises(errors.ConnectionClosedError):
                call.result()
    daemon.close()


def no_host_check(pki) -> ssl.SSLContext:
    ctx = pki.client_ctx()
    ctx.check_hostname = False
    return ctx


def pyro_over_tls(daemon: Daemon, pki, object_id: str):
    """A raw socket, its TLS session and a Pyro protocol, connected to ``object_id``."""
    from pyro_loops._protocol import ClientProtocol, Connected
    from pyro_loops._tls import TLSSession
    sock = raw_connection(daemon)
    session = TLSSession(pki.client_ctx(), False, "127.0.0.1")
    while not session.do_handshake():
        sock.sendall(session.ciphertext_to_send())
        session.receive_ciphertext(sock.recv(65536))
    protocol = ClientProtocol("serpent")
    session.write(protocol.connect(object_id, metadata=False))
    sock.sendall(session.ciphertext_to_send())
    while (event := protocol.next_event()) is None:
        session.receive_ciphertext(sock.recv(65536))
        plaintext = session.read()
        if plaintext:
            protocol.receive_data(plaintext)
    assert isinstance(event, Connected)
    return sock, session, protocol


def test_request_cut_mid_record_without_close_notify_runs_nothing_and_is_closed(tls_daemon, pki):
    echo = Echo()
    tls_daemon.register(echo, "notes")
    sock, session, protocol = pyro_over_tls(tls_daemon, pki, "notes")
    session.write(protocol.invoke("notes", "note", ("x" * 50_000,), {}, oneway=True).data)
    records = session.ciphertext_to_send()
    sock.sendall(records[: len(records) - 1000])
    sock.close()
    wait_until(lambda: len(tls_daemon._conns) == 0)
    assert echo.notes == []


# --- bursts against a daemon on a select loop with a heartbeat -----------------------------------


def heartbeat(host) -> list[float]:
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.monotonic())
        if len(ticks) < 100_000:
            host.call_later(0.005, tick)

    host.call_later(0.005, tick)
    return ticks


@pytest.mark.parametrize("host", ["select"], indirect=True)
def test_a_request_in_100k_one_byte_records_is_read_in_bounded_steps_while_the_heartbeat_ticks(host, reported, pki):
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    echo = Echo()
    daemon.register(echo, "notes")
    host.attach(daemon)
    ticks = heartbeat(host)
    marks: dict[str, int] = {}

    def hostile() -> None:
        sock, session, protocol = pyro_over_tls(daemon, pki, "notes")
        data = protocol.invoke("notes", "note", ("y" * 100_000,), {}, oneway=True).data
        for i in range(len(data)):
            session.write(data[i:i + 1])  # one TLS record per byte: ~23 times the ciphertext
        burst = session.ciphertext_to_send()
        marks["start"] = len(ticks)
        sock.sendall(burst)
        marks["sent"] = len(ticks)
        marks["bytes"] = len(burst)
        sock.close()

    sender = threading.Thread(target=hostile, daemon=True)
    sender.start()
    host.run_until(lambda: echo.notes, timeout=60)
    marks["ran"] = len(ticks)
    sender.join(TIMEOUT)
    assert echo.notes == ["y" * 100_000]
    assert marks["bytes"] > 2_000_000
    # the burst was read over many loop passes, with the timer firing between them
    assert marks["ran"] - marks["start"] >= 3
    daemon.close()


@pytest.mark.parametrize("host", ["select"], indirect=True)
def test_60_simultaneous_handshakes_from_one_peer_leave_the_heartbeat_ticking_and_a_call_served(host, reported, pki):
    pyro_loops.config.SSL_HANDSHAKES_PER_WAKEUP = 2
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    uri = daemon.register(Echo(), "echo")
    host.attach(daemon)
    ticks = heartbeat(host)
    hello = client_hello(pki)
    flood = [raw_connection(daemon, hello) for _ in range(60)]  # each asks the daemon for a key exchange
    answered: set[int] = set()

    def flood_answered() -> bool:
        for i, sock in enumerate(flood):
            if i not in answered:
                sock.settimeout(0)
                with contextlib.suppress(BlockingIOError):
                    if sock.recv(65536):
                        answered.add(i)
        return len(answered) == len(flood)

    with pyro_loops.Client(ssl_context=pki.client_ctx()) as client:
        host.attach(client)
        proxy = client.proxy(uri)
        start = len(ticks)
        call = host.settle(proxy.echo("through"), timeout=60)
        assert call.result() == "through"
        host.run_until(flood_answered, timeout=60)  # the flood was served as well, a few per loop pass
        assert len(ticks) - start >= 3
    for sock in flood:
        sock.close()
    daemon.close()


# --- half-close ------------------------------------------------------------------------------------


def test_a_call_followed_by_close_notify_is_executed_and_answered(tls_daemon, pki):
    from pyro_loops._protocol import Result as Reply
    sock, session, protocol = pyro_over_tls(tls_daemon, pki, "echo")
    session.write(protocol.invoke("echo", "echo", ("half",), {}).data)
    session.close()  # close_notify right behind the call; the socket stays open for the reply
    sock.sendall(session.ciphertext_to_send())
    sock.settimeout(TIMEOUT)
    answered = None
    try:
        while answered is None:
            data = sock.recv(65536)
            if not data:
                break
            session.receive_ciphertext(data)
            with contextlib.suppress(TLSError):
                # our own session is closed for reading after close(): read the raw session object
                plaintext = session._obj.read(1 << 20)
                protocol.receive_data(plaintext)
                event = protocol.next_event()
                if isinstance(event, Reply):
                    answered = event
    except (ssl.SSLError, OSError):
        pass
    sock.close()
    # TLS 1.3 (and TCP) let a peer close its side and still read: the reply must come
    assert answered is not None, "the reply to a call followed by close_notify was not sent"
    assert answered.value == "half"


def test_session_still_sends_after_the_peers_close_but_not_after_its_own_or_a_failure(pki):
    from pyro_loops._tls import TLSSession, TLSState
    server = TLSSession(pki.server_ctx(), server_side=True)
    client = TLSSession(pki.client_ctx(), server_side=False, server_hostname="localhost")
    for _ in range(10):
        done = [client.do_handshake(), server.do_handshake()]
        for sender, receiver in ((client, server), (server, client)):
            data = sender.ciphertext_to_send()
            if data:  # b"" would mean end of stream
                receiver.receive_ciphertext(data)
        if all(done):
            break
    client.write(b"call")
    client.close()
    server.receive_ciphertext(client.ciphertext_to_send())
    assert server.read() == b"call"
    assert server.state is TLSState.CLOSED and server.half_closed
    server.write(b"reply")  # the peer only closed its side
    server.close()
    assert not server.half_closed
    with pytest.raises(TLSError, match="closed"):
        server.write(b"more")


def test_pyro4_client_without_certificate_to_our_mutual_tls_daemon_fails_and_the_daemon_logs_why(pki, caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx(mutual=True))
    uri = daemon.register(Echo(), "echo")
    with serving(daemon), pyro4_client(**pki.pyro4_client_env()) as peer:
        with pytest.raises(PeerError) as failed:
            peer.run("Pyro4.Proxy(uri).echo(1)", uri=str(uri))
        assert "Communication" in failed.value.type or "ConnectionClosed" in failed.value.type, failed.value
        wait_until(lambda: any("CERTIFICATE" in line for line in closing_lines(caplog)))
