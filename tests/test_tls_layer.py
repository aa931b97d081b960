"""The sans-IO TLS layer, driven with byte strings alone: two sessions talk through memory.

Certificates are made at test time by trustme, so every case uses real TLS
(real handshakes, real verification, real records), just without sockets.
"""

from __future__ import annotations

import ssl

import pytest
trustme = pytest.importorskip("trustme")
from cryptography.hazmat.primitives import serialization

import pyro_loops
from pyro_loops import _tls
from pyro_loops._tls import TLSError, TLSSession, TLSState


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca, tmp_path_factory):
    """Files as a Pyro4 user would have them: CA, server cert+key, client cert+key."""
    folder = tmp_path_factory.mktemp("pki")
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client@example.org")
    paths = {name: str(folder / f"{name}.pem") for name in
             ("ca", "server_cert", "server_key", "client_cert", "client_key")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.cert_chain_pems[0].write_to_path(paths["server_cert"])
    server.private_key_pem.write_to_path(paths["server_key"])
    client.cert_chain_pems[0].write_to_path(paths["client_cert"])
    client.private_key_pem.write_to_path(paths["client_key"])
    return paths


def pump(a: TLSSession, b: TLSSession) -> None:
    """Move ciphertext both ways until neither side has anything to send."""
    for _ in range(50):
        moved = False
        for src, dst in ((a, b), (b, a)):
            data = src.ciphertext_to_send()
            if data:
                dst.receive_ciphertext(data)
                moved = True
                if dst.state is TLSState.HANDSHAKING:
                    dst.do_handshake()
        if not moved:
            return
    raise AssertionError("sessions kept talking")


def connected(pki, hostname="localhost", mutual=False) -> tuple[TLSSession, TLSSession]:
    server_ctx = _tls.server_context(pki["server_cert"], pki["server_key"], cacerts=pki["ca"],
                                     require_client_cert=mutual)
    client_ctx = _tls.client_context(pki["client_cert"] if mutual else None,
                                     pki["client_key"] if mutual else None, cacerts=pki["ca"])
    client = TLSSession(client_ctx, server_side=False, server_hostname=hostname)
    server = TLSSession(server_ctx, server_side=True)
    client.do_handshake()
    pump(client, server)
    return client, server


def test_one_way_tls_moves_application_bytes_both_ways(pki):
    client, server = connected(pki)
    assert client.state is server.state is TLSState.ESTABLISHED
    request = b"PYRO" + bytes(range(256)) * 4096  # about 1 MB: many records
    client.write(request)
    server.receive_ciphertext(client.ciphertext_to_send())
    assert server.read() == request
    server.write(b"reply")
    client.receive_ciphertext(server.ciphertext_to_send())
    assert client.read() == b"reply"


def test_client_sees_the_server_certificate_and_the_server_sees_none_without_mutual_tls(pki):
    client, server = connected(pki)
    subject_alt = dict(client.getpeercert()["subjectAltName"])
    assert subject_alt["DNS"] == "localhost"
    assert server.getpeercert() is None


def test_mutual_tls_gives_the_server_the_client_certificate(pki):
    client, server = connected(pki, mutual=True)
    assert ("email", "client@example.org") in server.getpeercert()["subjectAltName"]


def test_mutual_tls_refuses_a_client_without_certificate(pki):
    server_ctx = _tls.server_context(pki["server_cert"], pki["server_key"], cacerts=pki["ca"],
                                     require_client_cert=True)
    client = TLSSession(_tls.client_context(cacerts=pki["ca"]), server_side=False, server_hostname="localhost")
    server = TLSSession(server_ctx, server_side=True)
    client.do_handshake()
    with pytest.raises(TLSError, match="handshake failed"):
        pump(client, server)
    assert server.state is TLSState.CLOSED


def test_certificate_for_an_ip_address_verifies_against_that_address(pki):
    client, _server = connected(pki, hostname="127.0.0.1")
    assert client.state is TLSState.ESTABLISHED


def test_wrong_host_name_fails_the_client_handshake_with_the_reason(pki):
    with pytest.raises(TLSError, match="CERTIFICATE_VERIFY_FAILED.*mismatch"):
        connected(pki, hostname="otherhost")


def test_untrusted_server_fails_verification(pki):
    server = TLSSession(_tls.server_context(pki["server_cert"], pki["server_key"]), server_side=True)
    client = TLSSession(_tls.client_context(), server_side=False, server_hostname="localhost")
    client.do_handshake()
    with pytest.raises(TLSError, match="CERTIFICATE_VERIFY_FAILED"):
        pump(client, server)


def test_plaintext_pyro_header_to_a_tls_server_fails_its_handshake_naming_the_plaintext_peer(pki):
    server = TLSSession(_tls.server_context(pki["server_cert"], pki["server_key"]), server_side=True)
    server.receive_ciphertext(b"PYRO\x000\x00\x01" + bytes(16))
    with pytest.raises(TLSError, match="plaintext Pyro peer"):
        server.do_handshake()


def test_plaintext_pyro_header_in_pieces_is_still_named_as_a_plaintext_peer(pki):
    server = TLSSession(_tls.server_context(pki["server_cert"], pki["server_key"]), server_side=True)
    server.receive_ciphertext(b"PY")
    assert server.do_handshake() is False  # too little to tell yet
    server.receive_ciphertext(b"RO\x000\x00\x01" + bytes(16))
    with pytest.raises(TLSError, match="plaintext Pyro peer"):
        server.do_handshake()


def test_a_client_answered_in_plaintext_pyro_names_the_daemon_as_not_using_tls(pki):
    client = TLSSession(_tls.client_context(cacerts=pki["ca"]), server_side=False, server_hostname="localhost")
    assert client.do_handshake() is False
    client.receive_ciphertext(b"PYRO\x000\x00\x05" + bytes(16))
    with pytest.raises(TLSError, match="answered in plaintext Pyro: it does not use TLS"):
        client.do_handshake()


def test_garbage_record_after_the_handshake_is_an_error(pki):
    _client, server = connected(pki)
    server.receive_ciphertext(b"\x17\x03\x03\x00\x20" + b"\xaa" * 32)  # application data that fails to decrypt
    with pytest.raises(TLSError):
        server.read()
    assert server.state is TLSState.CLOSED


def test_end_of_stream_without_close_notify_is_a_quiet_close_after_the_data(pki):
    client, server = connected(pki)
    client.write(b"last words")
    server.receive_ciphertext(client.ciphertext_to_send())
    server.receive_ciphertext(b"")  # the socket reported end of stream, no close_notify
    assert server.read() == b"last words"
    assert server.state is TLSState.CLOSED


def test_close_notify_ends_the_session_on_the_other_side(pki):
    client, server = connected(pki)
    client.close()
    server.receive_ciphertext(client.ciphertext_to_send())
    assert server.read() == b""
    assert server.state is TLSState.CLOSED


def test_peer_closing_during_the_handshake_is_an_error(pki):
    server = TLSSession(_tls.server_context(pki["server_cert"], pki["server_key"]), server_side=True)
    client = TLSSession(_tls.client_context(cacerts=pki["ca"]), server_side=False, server_hostname="localhost")
    client.do_handshake()
    hello = client.ciphertext_to_send()
    server.receive_ciphertext(hello[: len(hello) // 2])
    assert server.do_handshake() is False  # waits for the rest
    server.receive_ciphertext(b"")
    with pytest.raises(TLSError, match="closed the connection during the TLS handshake"):
        server.do_handshake()


def test_writing_before_the_handshake_is_refused(pki):
    client = TLSSession(_tls.client_context(cacerts=pki["ca"]), server_side=False, server_hostname="localhost")
    with pytest.raises(TLSError, match="handshaking"):
        client.write(b"too early")


@pytest.fixture(scope="module")
def encrypted_key(pki, tmp_path_factory):
    key = serialization.load_pem_private_key(open(pki["server_key"], "rb").read(), password=None)
    path = tmp_path_factory.mktemp("enc") / "server_key_encrypted.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"s3cret")))
    return str(path)


def test_encrypted_key_without_password_fails_naming_the_config_item_instead_of_prompting(pki, encrypted_key):
    with pytest.raises(TLSError, match="SSL_SERVERKEYPASSWD"):
        _tls.server_context(pki["server_cert"], encrypted_key)


@pytest.mark.parametrize("password", ["s3cret", b"s3cret", lambda: "s3cret"], ids=["str", "bytes", "callback"])
def test_encrypted_key_loads_with_its_password(pki, encrypted_key, password):
    server_ctx = _tls.server_context(pki["server_cert"], encrypted_key, password)
    server = TLSSession(server_ctx, server_side=True)
    client = TLSSession(_tls.client_context(cacerts=pki["ca"]), server_side=False, server_hostname="localhost")
    client.do_handshake()
    pump(client, server)
    assert server.state is TLSState.ESTABLISHED


def test_wrong_password_is_an_ssl_error(pki, encrypted_key):
    with pytest.raises(ssl.SSLError):
        _tls.server_context(pki["server_cert"], encrypted_key, "wrong")


def test_contexts_from_config_follow_pyro4_items(pki):
    config = pyro_loops.config
    with pytest.raises(TLSError, match="SSL_SERVERCERT"):
        _tls.server_context_from_config(config)
    config.SSL_SERVERCERT, config.SSL_SERVERKEY = pki["server_cert"], pki["server_key"]
    config.SSL_CACERTS, config.SSL_REQUIRECLIENTCERT = pki["ca"], True
    config.SSL_CLIENTCERT, config.SSL_CLIENTKEY = pki["client_cert"], pki["client_key"]
    server_ctx = _tls.server_context_from_config(config)
    assert server_ctx.verify_mode == ssl.CERT_REQUIRED
    client_ctx = _tls.client_context_from_config(config)
    assert client_ctx.check_hostname and client_ctx.verify_mode == ssl.CERT_REQUIRED
    client = TLSSession(client_ctx, server_side=False, server_hostname="localhost")
    server = TLSSession(server_ctx, server_side=True)
    client.do_handshake()
    pump(client, server)
    assert server.getpeercert() is not None


def test_ca_directory_is_used_as_capath(pki, tmp_path):
    # Pyro4's SSL_CACERTS may name a directory of hashed certificates (c_rehash layout).
    import subprocess
    import shutil
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to hash the directory")
    shutil.copy(pki["ca"], tmp_path / "ca.pem")
    subprocess.run(["openssl", "rehash", str(tmp_path)], check=True, capture_output=True)
    client_ctx = _tls.client_context(cacerts=str(tmp_path))
    server = TLSSession(_tls.server_context(pki["server_cert"], pki["server_key"]), server_side=True)
    client = TLSSession(client_ctx, server_side=False, server_hostname="localhost")
    client.do_handshake()
    pump(client, server)
    assert client.state is TLSState.ESTABLISHED
