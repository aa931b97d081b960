"""Errors a newcomer meets name what was wrong and what to do (issue 12):
ports out of range, a busy address, a malformed URI, an unwritable name
server storage, a value the serializer cannot carry, and a registered class
that exposes nothing. Real sockets on 127.0.0.1 throughout."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading

import pytest

from pyro_loops import URI, Daemon, Proxy, config, errors, expose
from pyro_loops._nsstorage import open_storage
from pyro_loops.naming import BroadcastServer, startNS

TIMEOUT = 10.0


@contextlib.contextmanager
def _busy(kind: int = socket.SOCK_STREAM):
    """A socket bound (and, for TCP, listening) on 127.0.0.1; yields its port."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("port", [70000, 65536, -1])
def test_daemon_refuses_a_port_out_of_range_instead_of_binding_another(port):
    with pytest.raises(ValueError, match=rf"port {port} is out of range: use 0\.\.65535"):
        Daemon(host="127.0.0.1", port=port)


def test_daemon_refuses_a_nat_port_out_of_range():
    with pytest.raises(ValueError, match=r"natport 70000 is out of range"):
        Daemon(host="127.0.0.1", nathost="nat.example", natport=70000)


def test_name_server_and_broadcast_responder_refuse_ports_out_of_range():
    with pytest.raises(ValueError, match=r"port 99999 is out of range"):
        startNS(host="127.0.0.1", port=99999, enableBroadcast=False)
    with pytest.raises(ValueError, match=r"bcport 99999 is out of range"):
        BroadcastServer("PYRO:Pyro.NameServer@127.0.0.1:9090", bchost="127.0.0.1", bcport=99999)


def test_daemon_on_a_busy_port_names_the_address_and_what_to_do():
    with _busy() as port, pytest.raises(OSError) as raised:
        Daemon(host="127.0.0.1", port=port)
    assert raised.value.errno == errno.EADDRINUSE
    assert f"cannot bind to 127.0.0.1:{port}" in str(raised.value)
    assert "choose another port" in str(raised.value)


def test_name_server_on_a_busy_port_names_the_address():
    with _busy() as port, pytest.raises(OSError, match=rf"cannot bind to 127\.0\.0\.1:{port}: .*in use"):
        startNS(host="127.0.0.1", port=port, enableBroadcast=False)


def test_broadcast_responder_on_a_busy_port_names_the_address():
    config.SOCK_REUSE = False  # with SO_REUSEADDR two UDP sockets may share the port
    with _busy(socket.SOCK_DGRAM) as port, \
            pytest.raises(OSError, match=rf"cannot bind to 127\.0\.0\.1:{port}: .*in use"):
        BroadcastServer("PYRO:Pyro.NameServer@127.0.0.1:9090", bchost="127.0.0.1", bcport=port)


@pytest.mark.parametrize("text", ["not a uri", "PYRO:thing", "PYROX:thing@host:1", "PYRO:thing@host:port"])
def test_an_invalid_uri_shows_the_text_and_the_expected_forms(text):
    with pytest.raises(errors.PyroError) as raised:
        URI(text)
    message = str(raised.value)
    assert message.startswith("invalid ")  # Pyro4's wording stays in front
    assert repr(text) in message
    assert "PYRO:<object id>@<host>:<port>" in message and "PYRONAME:<name>" in message


def test_an_unusable_sql_storage_names_the_file(tmp_path):
    missing = tmp_path / "missing" / "ns.sqlite"
    with pytest.raises(errors.NamingError, match=rf"cannot use {str(missing)!r} as name server storage"):
        open_storage(f"sql:{missing}")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is no database, not even close" * 100)
    with pytest.raises(errors.NamingError, match=r"garbage\.sqlite.* as name server storage: file is not a database"):
        open_storage(f"sql:{garbage}")


@expose
class Echo:
    def echo(self, value):
        return value


@pytest.mark.parametrize("serializer", ["serpent", "json", "marshal"])
def test_a_socket_argument_is_refused_naming_the_serializer_and_the_type(serializer):
    config.SERIALIZER = serializer
    with Daemon(host="127.0.0.1") as daemon:
        uri = daemon.register(Echo())
        thread = threading.Thread(target=daemon.requestLoop, daemon=True)
        thread.start()
        try:
            with Proxy(uri) as proxy, socket.socket() as sock:
                proxy._pyroTimeout = TIMEOUT
                with pytest.raises(errors.SerializeError) as raised:
                    proxy.echo(sock)
                assert proxy.echo("still fine") == "still fine"
        finally:
            daemon.shutdown()
            thread.join(TIMEOUT)
    message = str(raised.value)
    assert f"the {serializer} serializer cannot serialize" in message
    assert "socket.socket" in message and "pickle" not in message


class Plain:
    def method(self):
        pass


@pytest.mark.parametrize("registered", [Plain, Plain()], ids=["class", "instance"])
def test_the_exposes_nothing_warnings_name_the_class(registered, caplog):
    with Daemon(host="127.0.0.1") as daemon, caplog.at_level(logging.WARNING, logger="pyro_loops"):
        uri = daemon.register(registered)
        daemon.objectsById["Pyro.Daemon"].get_metadata(uri.object)
    warnings = [record.getMessage() for record in caplog.records if "exposes nothing" in record.getMessage()]
    assert len(warnings) == 2  # one on register, one when a proxy asks for the metadata
    assert all(f"{__name__}.Plain" in text and "(type)" not in text and "registered type" not in text
               for text in warnings)
