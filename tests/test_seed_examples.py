"""The seed chapter's examples ("Servers: publishing objects", shared/seed/) run on pyro_loops.

Each code example is a script under peers/ (seed_*.py), transcribed to Python 3 with
``import pyro_loops as Pyro4``; servers and clients run in separate processes, as the
chapter's readers would run them. The rest of the chapter's promises (attributes added
to registered objects, what cannot be registered, NAT addresses, loopCondition, ...)
are checked in this process.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading

import pytest

import pyro_loops
from pyro_loops import errors
from _util import PEERS, TIMEOUT, Peer, free_port, peer_env, wait_until

OBJ_URI = r"PYRO:(obj_[0-9a-f]{32})@localhost:(\d+)"


def start_server(script: str, *args: str, env: dict[str, str] | None = None) -> tuple[Peer, re.Match]:
    """Start a seed server script and wait until it prints a PYRO: URI."""
    server = Peer([str(PEERS / script), *args], env)
    try:
        return server, server.wait_for(r"PYRO:\S+")
    except BaseException:
        server.stop(grace=0)
        raise


def run_client(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a seed client script to its end; return its stdout (it must exit 0)."""
    done = subprocess.run([sys.executable, str(PEERS / script), *args], capture_output=True, text=True,
                          timeout=TIMEOUT * 2, env=env if env is not None else peer_env())
    assert done.returncode == 0, f"{script} failed:\n{done.stderr}"
    return done.stdout


@pytest.fixture
def seed_server():
    """Starts seed server scripts for one test and kills them after it (they never exit by themselves)."""
    started = []

    def start(script: str, *args: str, env: dict[str, str] | None = None):
        server, match = start_server(script, *args, env=env)
        started.append(server)
        return match.group(0)

    yield start
    for server in started:
        server.stop(grace=0)


def daemon_interface(location: str, env: dict[str, str] | None = None) -> tuple[None, set[str]]:
    ping, registered = json.loads(run_client("seed_daemon_interface.py", location, env=env))
    return ping, set(registered)


# -- publishing objects -----------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["seed_publish_basic.py", "seed_publish_oneliner.py"])
def test_published_object_is_registered_under_the_printed_uri(seed_server, script):
    uri = seed_server(script)
    match = re.fullmatch(OBJ_URI, uri)
    assert match, f"{uri!r} is not like the seed's PYRO:obj_dcf713ac20ce4fb2a6e72acaeba57dfd@localhost:51850"
    assert daemon_interface(f"localhost:{match.group(2)}") == (None, {"Pyro.Daemon", match.group(1)})


@pytest.mark.parametrize("variant", ["daemon", "serveSimple"])
def test_example1_client_calls_the_server_by_uri(seed_server, variant):
    uri = seed_server("seed_example1_server.py", variant)
    assert re.fullmatch(OBJ_URI, uri)
    assert run_client("seed_example1_client.py", uri) == "84\n"


# -- example 2: the name server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def name_server():
    """``python -m pyro_loops.naming`` on a free port; yields the env that points programs at it."""
    port = free_port()
    env = peer_env(PYRO_NS_HOST="127.0.0.1", PYRO_NS_PORT=str(port), PYRO_NS_BCPORT=str(free_port()),
                   PYRO_BROADCAST_ADDRS="127.0.0.1")  # should anything broadcast, it stays on loopback
    server = Peer(["-m", "pyro_loops.naming", "-n", "127.0.0.1", "-p", str(port)], env)
    try:
        server.wait_for(r"URI = PYRO:")
        yield env
    finally:
        server.stop(grace=0)


def ns_proxy(env: dict[str, str]) -> pyro_loops.Proxy:
    ns = pyro_loops.Proxy(f"PYRO:Pyro.NameServer@127.0.0.1:{env['PYRO_NS_PORT']}")
    ns._pyroTimeout = TIMEOUT
    return ns


def ns_names(env: dict[str, str]) -> dict[str, str]:
    with ns_proxy(env) as ns:
        return ns.list()


@pytest.mark.parametrize("variant", ["daemon", "serveSimple"])
def test_example2_client_finds_the_server_through_the_name_server(name_server, variant):
    with ns_proxy(name_server) as ns:
        ns.remove("mythingy")
    server = Peer([str(PEERS / "seed_example2_server.py"), variant], name_server)
    try:
        # The seed's server prints nothing in the "normal code" variant: wait for its registration.
        wait_until(lambda: "mythingy" in ns_names(name_server))
        assert run_client("seed_example2_client.py", env=name_server) == "84\n"
    finally:
        server.stop(grace=0)


def test_daemon_interface_of_a_name_server_lists_its_two_objects(name_server):
    assert daemon_interface(f"localhost:{name_server['PYRO_NS_PORT']}", name_server) == (
        None, {"Pyro.NameServer", "Pyro.Daemon"})


# -- your own event loop, autoproxy -----------------------------------------------------------------


def test_hand_written_select_loop_serves_several_clients_and_large_replies(seed_server):
    uri = seed_server("seed_eventloop_server.py")
    size = 16 * 1024 * 1024  # far beyond a socket buffer: the loop only waits for readability
    clients = [subprocess.Popen([sys.executable, str(PEERS / "seed_eventloop_client.py"), uri, str(size), "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=peer_env())
               for _ in range(2)]
    for client in clients:
        out, err = client.communicate(timeout=TIMEOUT * 2)
        assert client.returncode == 0, err
        assert json.loads(out) == [42, size, 8]


def test_returned_registered_object_is_a_proxy_to_it(seed_server):
    uri = seed_server("seed_autoproxy_server.py")
    kind, object_id, greeting = json.loads(run_client("seed_autoproxy_client.py", uri))
    assert kind == "Proxy"
    assert re.fullmatch(r"obj_[0-9a-f]{32}", object_id) and object_id not in uri
    assert greeting == f"hello from {object_id}"


# -- the chapter's other promises, in this process ----------------------------------------------------


class Plain:
    def method(self):
        return "plain"


class Slotted:
    __slots__ = ("value",)


class SlottedWithRoom:
    __slots__ = ("value", "_pyroId", "_pyroDaemon")


def test_register_adds_pyro_id_and_daemon_and_unregister_removes_them():
    with pyro_loops.Daemon() as daemon:
        thing = Plain()
        uri = daemon.register(thing)
        assert thing._pyroId == uri.object and thing._pyroDaemon is daemon
        assert daemon.objectsById[thing._pyroId] is thing
        daemon.unregister(thing)
        assert not hasattr(thing, "_pyroId") and not hasattr(thing, "_pyroDaemon")
        assert uri.object not in daemon.objectsById


def test_register_with_an_id_uses_it_and_refuses_it_twice():
    with pyro_loops.Daemon() as daemon:
        uri = daemon.register(Plain(), "thing")
        assert str(uri) == f"PYRO:thing@{daemon.locationStr}"
        assert daemon.uriFor("thing") == uri
        with pytest.raises(errors.DaemonError, match="thing"):
            daemon.register(Plain(), "thing")
        daemon.unregister("thing")
        assert "thing" not in daemon.objectsById


@pytest.mark.parametrize("value, hint", [(42, "builtin"), ("text", "builtin"), (Slotted(), "__slots__")])
def test_objects_without_room_for_pyro_attributes_are_refused_clearly(value, hint):
    with pyro_loops.Daemon() as daemon:
        with pytest.raises(errors.DaemonError, match=re.escape(hint)):
            daemon.register(value)
        assert set(daemon.objectsById) == {"Pyro.Daemon"}


def test_slots_object_with_room_for_pyro_attributes_can_be_registered():
    # The seed's "possible way around this": add Pyro's attributes to __slots__.
    with pyro_loops.Daemon() as daemon:
        thing = SlottedWithRoom()
        uri = daemon.register(thing)
        assert thing._pyroId == uri.object


def test_daemon_binds_localhost_on_a_free_port_by_default():
    with pyro_loops.Daemon() as daemon:
        host, port = daemon.locationStr.rsplit(":", 1)
        assert host == "localhost" and int(port) > 0
        assert daemon.natLocationStr is None


def test_nat_address_goes_into_uris_and_natport_0_reuses_the_internal_port():
    port = free_port()
    with pyro_loops.Daemon(host="127.0.0.1", port=port, nathost="nat.example.org", natport=0) as daemon:
        assert daemon.locationStr == f"127.0.0.1:{port}"
        assert daemon.natLocationStr == f"nat.example.org:{port}"
        thing = Plain()
        assert str(daemon.register(thing)) == f"PYRO:{thing._pyroId}@nat.example.org:{port}"
        assert str(daemon.uriFor(thing, nat=False)) == f"PYRO:{thing._pyroId}@127.0.0.1:{port}"


def test_closed_daemon_no_longer_accepts_connections():
    with pyro_loops.Daemon(host="127.0.0.1") as daemon:
        port = int(daemon.locationStr.rsplit(":", 1)[1])
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def test_request_loop_returns_once_its_loop_condition_is_false():
    pyro_loops.config.REQUIRE_EXPOSE = False
    running = True

    class Switch:
        def off(self):
            nonlocal running
            running = False
            return "off"

    with pyro_loops.Daemon(host="127.0.0.1") as daemon:
        uri = daemon.register(Switch())
        loop = threading.Thread(target=daemon.requestLoop, args=(lambda: running,), daemon=True)
        loop.start()
        with pyro_loops.Proxy(uri) as switch:
            switch._pyroTimeout = TIMEOUT
            assert switch.off() == "off"
        loop.join(TIMEOUT)
        assert not loop.is_alive()


def test_unregistered_object_is_unknown_to_new_clients():
    pyro_loops.config.REQUIRE_EXPOSE = False
    with pyro_loops.Daemon(host="127.0.0.1") as daemon:
        thing = Plain()
        uri = daemon.register(thing)
        loop = threading.Thread(target=daemon.requestLoop, daemon=True)
        loop.start()
        try:
            with pyro_loops.Proxy(uri) as p:
                p._pyroTimeout = TIMEOUT
                assert p.method() == "plain"
            daemon.unregister(thing)
            with pyro_loops.Proxy(uri) as p:
                p._pyroTimeout = TIMEOUT
                with pytest.raises(errors.CommunicationError, match="unknown object"):
                    p.method()
        finally:
            daemon.shutdown()
            loop.join(TIMEOUT)


def test_address_helpers_find_the_loopback_address():
    assert pyro_loops.socketutil.getIpAddress("localhost") == "127.0.0.1"
    assert pyro_loops.socketutil.getInterfaceAddress("127.0.0.1") == "127.0.0.1"
