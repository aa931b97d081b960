"""TLS end to end: our daemon, blocking Proxy and loop Client, against each other and
against stock Pyro4 4.82 with SSL=True (one-way and mutual), the name server over
TLS, and the faults a TLS daemon meets (plaintext peers, garbage, peers stuck or
leaving halfway through the handshake).

Certificates are made at test time by trustme, for "localhost" and 127.0.0.1 (the
URIs here carry the IP address, so verification is against the IP entry).
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest
trustme = pytest.importorskip("trustme")

import pyro_loops
from pyro_loops import _tls, errors
from pyro_loops._tls import TLSError
from pyro_loops.daemon import Daemon

from _client_hosts import WAIT_S, host, reported  # noqa: F401
from _util import TIMEOUT, Peer, PeerError, Pyro4Server, peer_env, pyro4_client, wait_until
from test_daemon import serving


@pyro_loops.expose
class Echo:
    def __init__(self) -> None:
        self.notes: list = []

    def echo(self, value):
        return value

    @pyro_loops.oneway
    def note(self, value):
        self.notes.append(value)


class CertCheckingDaemon(Daemon):
    """Refuses clients without a certificate and remembers the subjects it saw."""

    def __init__(self, **kwargs) -> None:
        super().__init__(host="127.0.0.1", **kwargs)
        self.seen: list = []

    def validateHandshake(self, conn, data):  # noqa: N802 - Pyro4's name
        cert = conn.getpeercert()
        if not cert:
            raise errors.SecurityError("client certificate required")
        self.seen.append(dict(x[0] for x in cert["subject"]).get("commonName") or cert.get("subjectAltName"))
        return super().validateHandshake(conn, data)


class Pki:
    """A CA, a server certificate (localhost, 127.0.0.1) and a client certificate, as files."""

    def __init__(self, folder) -> None:
        self.ca_obj = trustme.CA()
        server = self.ca_obj.issue_cert("localhost", "127.0.0.1")
        client = self.ca_obj.issue_cert("client.example.org")
        self.files = {name: str(folder / f"{name}.pem") for name in
                      ("ca", "server_cert", "server_key", "client_cert", "client_key")}
        self.ca_obj.cert_pem.write_to_path(self.files["ca"])
        server.cert_chain_pems[0].write_to_path(self.files["server_cert"])
        server.private_key_pem.write_to_path(self.files["server_key"])
        client.cert_chain_pems[0].write_to_path(self.files["client_cert"])
        client.private_key_pem.write_to_path(self.files["client_key"])

    def __getattr__(self, name: str) -> str:
        try:
            return self.files[name]
        except KeyError:
            raise AttributeError(name) from None

    def server_ctx(self, mutual: bool = False) -> ssl.SSLContext:
        return _tls.server_context(self.server_cert, self.server_key, cacerts=self.ca, require_client_cert=mutual)

    def client_ctx(self, mutual: bool = False) -> ssl.SSLContext:
        if mutual:
            return _tls.client_context(self.client_cert, self.client_key, cacerts=self.ca)
        return _tls.client_context(cacerts=self.ca)

    def pyro4_server_env(self, mutual: bool = False) -> dict[str, str]:
        env = {"PYRO_SSL": "true", "PYRO_SSL_SERVERCERT": self.server_cert,
               "PYRO_SSL_SERVERKEY": self.server_key, "PYRO_SSL_CACERTS": self.ca}
        if mutual:
            env["PYRO_SSL_REQUIRECLIENTCERT"] = "true"
        return env

    def pyro4_client_env(self, mutual: bool = False) -> dict[str, str]:
        env = {"PYRO_SSL": "true", "PYRO_SSL_CACERTS": self.ca}
        if mutual:
            env.update(PYRO_SSL_CLIENTCERT=self.client_cert, PYRO_SSL_CLIENTKEY=self.client_key)
        return env


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def server_ctx_from(issued: trustme.LeafCert, folder) -> ssl.SSLContext:
    """A daemon context for a certificate trustme issued, through files as a user would have them."""
    issued.cert_chain_pems[0].write_to_path(folder / "c.pem")
    issued.private_key_pem.write_to_path(folder / "k.pem")
    return _tls.server_context(str(folder / "c.pem"), str(folder / "k.pem"))


def client_hello(pki: Pki) -> bytes:
    """The first flight of a real TLS client (a ClientHello), made without a socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = pki.client_ctx().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def raw_connection(daemon: Daemon, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(daemon.sock.getsockname(), timeout=TIMEOUT)
    if first:
        sock.sendall(first)
    return sock


def closed_by_daemon(sock: socket.socket) -> bool:
    """Read until the daemon closes (EOF or reset); True when it did within TIMEOUT."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return True


def closing_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("closing connection")]


# --- our ends with each other -------------------------------------------------------------------


@pytest.mark.parametrize("mutual", [False, True], ids=["one-way", "mutual"])
def test_proxy_calls_our_daemon_over_tls_and_each_end_sees_the_others_certificate(pki, mutual):
    daemon = CertCheckingDaemon(ssl_context=pki.server_ctx(mutual)) if mutual else \
        Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    uri = daemon.register(Echo(), "echo")
    with serving(daemon):
        with pyro_loops.Proxy(uri) as proxy:
            proxy._pyroSslContext = pki.client_ctx(mutual)
            assert proxy.echo("x" * 200_000) == "x" * 200_000
            cert = proxy._pyroConnection.getpeercert()
            assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]
    if mutual:
        assert daemon.seen


def test_config_items_turn_on_tls_for_daemon_and_proxy(pki):
    pyro_loops.config.SSL = True
    pyro_loops.config.SSL_SERVERCERT, pyro_loops.config.SSL_SERVERKEY = pki.server_cert, pki.server_key
    pyro_loops.config.SSL_CACERTS = pki.ca
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Echo(), "echo")
    with serving(daemon), pyro_loops.Proxy(uri) as proxy:
        assert proxy.echo(7) == 7
        assert isinstance(proxy._pyroConnection, ssl.SSLSocket)


def test_mutual_tls_daemon_refuses_a_client_without_certificate(pki):
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx(mutual=True))
    uri = daemon.register(Echo(), "echo")
    with serving(daemon), pyro_loops.Proxy(uri) as proxy:
        proxy._pyroSslContext = pki.client_ctx()
        with pytest.raises(errors.CommunicationError):
            proxy.echo(1)


def test_proxy_refuses_a_daemon_whose_certificate_does_not_match_the_uri_host(pki, tmp_path):
    other = trustme.CA()
    daemon = Daemon(host="127.0.0.1", ssl_context=server_ctx_from(pki.ca_obj.issue_cert("elsewhere.example.org"),
                                                                  tmp_path))
    uri = daemon.register(Echo(), "echo")
    with serving(daemon), pyro_loops.Proxy(uri) as proxy:
        proxy._pyroSslContext = pki.client_ctx()
        with pytest.raises(TLSError, match="(?i)mismatch|doesn't match|not valid"):
            proxy.echo(1)
        untrusted = ssl.create_default_context()
        other.configure_trust(untrusted)
        proxy._pyroSslContext = untrusted
        with pytest.raises(TLSError, match="(?i)certificate"):
            proxy.echo(1)


def test_new_context_given_to_a_running_daemon_applies_to_new_connections(pki, tmp_path):
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    uri = daemon.register(Echo(), "echo")
    renewed_ca = trustme.CA()
    trusting_renewed = ssl.create_default_context()
    renewed_ca.configure_trust(trusting_renewed)
    with serving(daemon), pyro_loops.Proxy(uri) as old, pyro_loops.Proxy(uri) as new:
        old._pyroSslContext = pki.client_ctx()
        new._pyroSslContext = trusting_renewed
        assert old.echo(1) == 1
        daemon.ssl_context = server_ctx_from(renewed_ca.issue_cert("127.0.0.1"), tmp_path)
        assert new.echo(2) == 2
        assert old.echo(3) == 3  # its connection keeps the context it was made with


# --- faults --------------------------------------------------------------------------------------


@pytest.fixture
def tls_daemon(pki, caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    daemon.uri = daemon.register(Echo(), "echo")
    with serving(daemon):
        yield daemon


def test_plaintext_proxy_to_tls_daemon_gets_a_clear_error_and_the_daemon_logs_why(tls_daemon, caplog):
    with pyro_loops.Proxy(tls_daemon.uri) as proxy:
        with pytest.raises(errors.ConnectionClosedError, match="TLS"):
            proxy.echo(1)
    wait_until(lambda: any("plaintext Pyro peer" in line for line in closing_lines(caplog)))


def test_tls_proxy_to_plaintext_daemon_gets_a_clear_error(pki):
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Echo(), "echo")
    with serving(daemon), pyro_loops.Proxy(uri) as proxy:
        proxy._pyroSslContext = pki.client_ctx()
        with pytest.raises(TLSError, match="does the daemon use TLS"):
            proxy.echo(1)
        plain = pyro_loops.Proxy(uri)
        assert plain.echo(5) == 5  # it cost the daemon nothing lasting
        plain._pyroRelease()


@pytest.mark.parametrize("garbage", [b"\x16\x03\x01\x00\x10" + b"\xff" * 16, b"GET / HTTP/1.0\r\n\r\n" * 4],
                         ids=["bad-record", "http"])
def test_garbage_is_closed_with_a_logged_reason(tls_daemon, caplog, pki, garbage):
    assert closed_by_daemon(raw_connection(tls_daemon, garbage))
    wait_until(lambda: any("TLS handshake failed" in line for line in closing_lines(caplog)))
    with pyro_loops.Proxy(tls_daemon.uri) as proxy:
        proxy._pyroSslContext = pki.client_ctx()
        assert proxy.echo(1) == 1


def test_peer_leaving_halfway_through_the_handshake_is_closed_with_a_logged_reason(tls_daemon, caplog, pki):
    hello = client_hello(pki)
    raw_connection(tls_daemon, hello[: len(hello) // 2]).close()
    wait_until(lambda: any("during the TLS handshake" in line for line in closing_lines(caplog)))


def test_peer_stuck_halfway_through_the_handshake_is_closed_at_handshake_timeout(pki, caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    pyro_loops.config.HANDSHAKE_TIMEOUT = 0.3
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    with serving(daemon):
        hello = client_hello(pki)
        assert closed_by_daemon(raw_connection(daemon, hello[:40]))
        assert closed_by_daemon(raw_connection(daemon, hello))  # got the server's flight, answers nothing
    lines = [line for line in closing_lines(caplog) if "TLS handshake not done within HANDSHAKE_TIMEOUT" in line]
    assert len(lines) == 2


def test_connecting_and_closing_without_a_word_or_without_close_notify_is_quiet(tls_daemon, caplog, pki):
    raw_connection(tls_daemon).close()
    plain = socket.create_connection(tls_daemon.sock.getsockname())
    tls = pki.client_ctx().wrap_socket(plain, server_hostname="127.0.0.1")
    proxy = pyro_loops.Proxy(tls_daemon.uri)
    proxy._pyroSslContext = pki.client_ctx()
    assert proxy.echo(1) == 1
    proxy._pyroRelease()  # SSLSocket.close() sends no close_notify, as with Pyro4
    tls.close()
    wait_until(lambda: len(tls_daemon._conns) == 0)
    assert closing_lines(caplog) == []


# --- stock Pyro4 4.82 with SSL ------------------------------------------------------------------


@pytest.mark.parametrize("mutual", [False, True], ids=["one-way", "mutual"])
def test_pyro4_client_calls_our_tls_daemon(pki, mutual):
    daemon = CertCheckingDaemon(ssl_context=pki.server_ctx(mutual)) if mutual else \
        Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    uri = daemon.register(Echo(), "echo")
    with serving(daemon), pyro4_client(**pki.pyro4_client_env(mutual)) as peer:
        assert peer.run("p = Pyro4.Proxy(uri); p.echo([1, 'two'])", uri=str(uri)) == [1, "two"]
        assert peer.run("p._pyroConnection.getpeercert()['subjectAltName']") == \
            (("DNS", "localhost"), ("IP Address", "127.0.0.1"))
    if mutual:
        assert daemon.seen


def test_pyro4_plaintext_client_to_our_tls_daemon_sees_its_connection_fail(tls_daemon, caplog):
    with pyro4_client() as peer:
        with pytest.raises(PeerError) as failed:
            peer.run("Pyro4.Proxy(uri).echo(1)", uri=str(tls_daemon.uri))
        assert "CommunicationError" in failed.value.type or "ConnectionClosed" in failed.value.type
    wait_until(lambda: any("plaintext Pyro peer" in line for line in closing_lines(caplog)))


@pytest.mark.parametrize("mutual", [False, True], ids=["one-way", "mutual"])
def test_our_proxy_and_loop_client_call_a_pyro4_tls_daemon(pki, mutual):
    with Pyro4Server(**pki.pyro4_server_env(mutual)) as server:
        seen = []

        class Checking(pyro_loops.Proxy):
            def _pyroValidateHandshake(self, response):  # noqa: N802
                seen.append(self._pyroConnection.getpeercert()["subjectAltName"])

        with Checking(server.uri) as proxy:
            proxy._pyroSslContext = pki.client_ctx(mutual)
            assert proxy.echo("hi") == "hi"
        assert seen == [(("DNS", "localhost"), ("IP Address", "127.0.0.1"))]

        from pyro_loops.adapters import selectloop
        loop = selectloop.SelectLoop()
        with pyro_loops.Client(ssl_context=pki.client_ctx(mutual)) as client:
            handle = selectloop.attach(client, loop)
            loop_proxy = client.proxy(server.uri)
            call = loop_proxy.echo("loop")
            deadline = time.monotonic() + WAIT_S
            while not call.done() and time.monotonic() < deadline:
                loop.poll(0.01)
            assert call.result() == "loop"
            assert ("IP Address", "127.0.0.1") in loop_proxy._pyroConnection.getpeercert()["subjectAltName"]
            handle.detach()
        loop.close()


def test_name_server_and_nsc_over_tls_with_pyro4(pki, tmp_path):
    env = peer_env(**{**pki.pyro4_server_env(), **pki.pyro4_client_env()})
    ns = Peer([shutil.which("pyro-loops-ns"), "-n", "127.0.0.1", "-p", "0", "-x"], env)
    try:
        uri = ns.wait_for(r"URI = (\S+)").group(1)
        port = uri.rsplit(":", 1)[1]
        with pyro4_client(**pki.pyro4_client_env()) as peer:
            peer.run("ns = Pyro4.locateNS('127.0.0.1', int(port)); ns.register('app.x', 'PYRO:x@127.0.0.1:5001')",
                     port=port)
            assert "app.x" in peer.run("ns.list()")
        nsc = subprocess.run([shutil.which("pyro-loops-nsc"), "-n", "127.0.0.1", "-p", port, "list"],
                             env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert "app.x --> PYRO:x@127.0.0.1:5001" in nsc.stdout, nsc.stderr
        plain = subprocess.run([sys.executable, "-m", "Pyro4.nsc", "-n", "127.0.0.1", "-p", port, "list"],
                               env=peer_env(), capture_output=True, text=True, timeout=TIMEOUT)
        assert "app.x" not in plain.stdout
    finally:
        ns.proc.terminate()
        ns.stop()


def test_our_nsc_lists_a_pyro4_tls_name_server(pki):
    env = peer_env(**{**pki.pyro4_server_env(), **pki.pyro4_client_env()})
    ns = Peer(["-m", "Pyro4.naming", "-n", "127.0.0.1", "-p", "0", "-x"], env)
    try:
        port = ns.wait_for(r"URI = (\S+)").group(1).rsplit(":", 1)[1]
        nsc = subprocess.run([shutil.which("pyro-loops-nsc"), "-n", "127.0.0.1", "-p", port, "list"],
                             env=env, capture_output=True, text=True, timeout=TIMEOUT)
        assert "Pyro.NameServer --> PYRO:Pyro.NameServer@127.0.0.1:" in nsc.stdout, nsc.stderr
    finally:
        ns.proc.terminate()
        ns.stop()


# --- per host loop: a call served while 50 peers are stuck mid-handshake --------------------------


def test_tls_call_served_while_50_peers_are_stuck_mid_handshake(host, reported, pki):
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    uri = daemon.register(Echo(), "echo")
    host.attach(daemon)
    hello = client_hello(pki)
    stuck = [raw_connection(daemon, hello if i % 2 else hello[:60]) for i in range(50)]
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.monotonic())
        if len(ticks) < 10_000:
            host.call_later(0.01, tick)

    host.call_later(0.01, tick)
    with pyro_loops.Client(ssl_context=pki.client_ctx()) as client:
        host.attach(client)
        host.run_until(lambda: len(daemon._conns) == 50)
        proxy = client.proxy(uri)  # kept: a dropped loop proxy closes its connection once its calls are done
        call = proxy.echo("through")
        host.settle(call)
        assert call.result() == "through"
        served_at = len(ticks)
        host.run_until(lambda: len(ticks) > served_at + 2)  # the loop's timer kept going
        assert len(daemon._conns) == 51  # the stuck peers were not dropped for it
    for sock in stuck:
        sock.close()
    daemon.close()


def test_loop_client_gets_a_clear_error_from_a_daemon_of_the_other_kind(host, reported, pki):
    tls_daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    plain_daemon = Daemon(host="127.0.0.1")
    tls_uri, plain_uri = tls_daemon.register(Echo(), "echo"), plain_daemon.register(Echo(), "echo")
    host.attach(tls_daemon)
    host.attach(plain_daemon)
    with pyro_loops.Client() as plain_client, pyro_loops.Client(ssl_context=pki.client_ctx()) as tls_client:
        host.attach(plain_client)
        host.attach(tls_client)
        to_tls = host.settle(plain_client.proxy(tls_uri).echo(1))
        to_plain = host.settle(tls_client.proxy(plain_uri).echo(1))
        with pytest.raises(errors.CommunicationError, match="TLS"):
            to_tls.result()
        with pytest.raises(TLSError, match="TLS"):
            to_plain.result()
    tls_daemon.close()
    plain_daemon.close()


def test_handshakes_past_the_per_pass_budget_wait_for_the_next_pass_and_all_complete(pki):
    pyro_loops.config.SSL_HANDSHAKES_PER_WAKEUP = 1
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    uri = daemon.register(Echo(), "echo")
    deferred = []
    may_step = daemon._connections.may_step_tls

    def counting(conn):
        allowed = may_step(conn)
        if not allowed:
            deferred.append(conn)
        return allowed

    daemon._connections.may_step_tls = counting
    hello = client_hello(pki)
    with serving(daemon):
        waiting = [raw_connection(daemon, hello) for _ in range(10)]  # ten ClientHellos in one go
        results = []

        def call(i: int) -> None:
            with pyro_loops.Proxy(uri) as proxy:
                proxy._pyroSslContext = pki.client_ctx()
                results.append(proxy.echo(i))

        import threading
        threads = [threading.Thread(target=call, args=(i,)) for i in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert sorted(results) == list(range(10))
        assert deferred, "no handshake step was ever deferred: the budget did not apply"
        for sock in waiting:
            sock.close()


def test_tls12_renegotiation_is_refused_and_the_connection_closed_with_a_logged_reason(tls_daemon, caplog, pki):
    # Python's ssl cannot start a renegotiation; the openssl command's "R" does.
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    port = tls_daemon.sock.getsockname()[1]
    client = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2",
                               "-CAfile", pki.ca], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: [c for c in list(tls_daemon._conns.values()) if not c.transport.handshaking])
        client.stdin.write("R\n")
        client.stdin.flush()
        wait_until(lambda: any("TLS error" in line for line in closing_lines(caplog)))
        wait_until(lambda: len(tls_daemon._conns) == 0)
    finally:
        client.kill()
        client.communicate(timeout=TIMEOUT)


def test_tls_over_a_unix_socket_needs_a_context_that_checks_no_host_name(pki, tmp_path):
    daemon = Daemon(unixsocket=str(tmp_path / "tls.sock"), ssl_context=pki.server_ctx())
    uri = daemon.register(Echo(), "echo")
    with serving(daemon), pyro_loops.Proxy(uri) as proxy:
        proxy._pyroSslContext = pki.client_ctx()
        with pytest.raises(TLSError, match="cannot start TLS"):
            proxy.echo(1)
        no_names = pki.client_ctx()
        no_names.check_hostname = False  # the chain is still verified
        proxy._pyroSslContext = no_names
        assert proxy.echo(2) == 2


def test_close_notify_right_behind_a_oneway_call_with_the_socket_left_open_ends_the_connection(pki):
    from pyro_loops._protocol import ClientProtocol, Connected
    from pyro_loops._tls import TLSSession
    daemon = Daemon(host="127.0.0.1", ssl_context=pki.server_ctx())
    echo = Echo()
    daemon.register(echo, "echo")
    with serving(daemon):
        sock = raw_connection(daemon)
        sock.settimeout(5)  # without an end of stream the daemon would hold the connection for good
        session = TLSSession(pki.client_ctx(), False, "127.0.0.1")
        while not session.do_handshake():
            sock.sendall(session.ciphertext_to_send())
            session.receive_ciphertext(sock.recv(65536))
        protocol = ClientProtocol("serpent")
        session.write(protocol.connect("echo", metadata=False))
        sock.sendall(session.ciphertext_to_send())
        while (event := protocol.next_event()) is None:
            session.receive_ciphertext(sock.recv(65536))
            plaintext = session.read()  # b"" after records of TLS's own (session tickets)
            if plaintext:
                protocol.receive_data(plaintext)
        assert isinstance(event, Connected)
        session.write(protocol.invoke("echo", "note", (1,), {}, oneway=True).data)
        session.close()  # close_notify in the same segment; the socket stays open
        sock.sendall(session.ciphertext_to_send())
        assert closed_by_daemon(sock)
        wait_until(lambda: echo.notes == [1])
