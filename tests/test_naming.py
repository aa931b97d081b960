"""The name server: its storages, the NameServer object's remote API (called
directly and through our own proxies), the broadcast responder, locateNS and
resolve, and a single select loop hosting a name server next to an application.

Sockets are on 127.0.0.1 only, ports are picked by the OS, and broadcast
lookups are pointed at 127.0.0.1 by unicast.
"""

import contextlib
import select
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

import pyro_loops
from _hosts import host  # noqa: F401
from _util import TIMEOUT, peer_env, wait_until
from pyro_loops import hosting, errors
from pyro_loops._eventloop import SelectLoop
from pyro_loops._nsstorage import MemoryStorage, SqlStorage, open_storage
from pyro_loops._uri import URI
from pyro_loops.daemon import Daemon
from pyro_loops.naming import NAMESERVER_METADATA, BroadcastServer, NameServer, locateNS, resolve, startNS
from pyro_loops.proxy import Proxy

NS = "Pyro.NameServer"
THING = "PYRO:thing@127.0.0.1:5555"
OTHER = "PYRO:other@127.0.0.1:5556"


# --- storages -----------------------------------------------------------------


@pytest.fixture(params=["memory", "sql"])
def storage(request, tmp_path):
    store = MemoryStorage() if request.param == "memory" else SqlStorage(str(tmp_path / "ns.sqlite"))
    yield store
    store.close()


def test_storage_keeps_uri_and_metadata(storage):
    storage.put("a", THING, {"x", "y"})
    storage.put("b", OTHER, ())
    assert storage.get("a") == (THING, frozenset({"x", "y"}))
    assert storage.get("b") == (OTHER, frozenset())
    assert storage.get("missing") is None
    assert len(storage) == 2
    assert sorted(storage.entries()) == [("a", (THING, frozenset({"x", "y"}))), ("b", (OTHER, frozenset()))]


def test_storage_put_replaces_uri_and_metadata(storage):
    storage.put("a", THING, {"x", "y"})
    storage.put("a", OTHER, {"z"})
    assert storage.get("a") == (OTHER, frozenset({"z"}))
    assert len(storage) == 1


def test_storage_delete_counts_only_existing_names(storage):
    storage.put("a", THING, {"x"})
    storage.put("b", OTHER, ())
    assert storage.delete(["a", "nope"]) == 1
    assert storage.get("a") is None
    assert [name for name, _ in storage.entries()] == ["b"]


def test_sql_storage_survives_reopening(tmp_path):
    path = str(tmp_path / "ns.sqlite")
    first = SqlStorage(path)
    first.put("kept", THING, {"tag"})
    first.put("gone", OTHER, ())
    first.delete(["gone"])
    first.close()
    second = SqlStorage(path)
    try:
        assert second.entries() == [("kept", (THING, frozenset({"tag"})))]
    finally:
        second.close()


def test_sql_storage_leaves_no_orphan_metadata(tmp_path):
    path = str(tmp_path / "ns.sqlite")
    store = SqlStorage(path)
    store.put("a", THING, {"x", "y"})
    store.put("a", THING, {"z"})
    store.delete(["a"])
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM pyro_metadata").fetchone()[0] == 0


def test_open_storage_understands_memory_and_sql_and_rejects_the_rest(tmp_path):
    assert isinstance(open_storage(None), MemoryStorage)
    assert isinstance(open_storage("memory"), MemoryStorage)
    sql = open_storage("sql:" + str(tmp_path / "x.sqlite"))
    try:
        assert isinstance(sql, SqlStorage)
    finally:
        sql.close()
    for bad in ("dbm:", "sql:", "nonsense"):
        with pytest.raises(ValueError, match="invalid storage type"):
            open_storage(bad)


# --- the NameServer object, called directly ----------------------------------


@pytest.fixture(params=["memory", "sql"])
def ns(request, tmp_path):
    store = MemoryStorage() if request.param == "memory" else SqlStorage(str(tmp_path / "ns.sqlite"))
    server = NameServer(store)
    server.register(NS, "PYRO:Pyro.NameServer@127.0.0.1:9999", metadata=NAMESERVER_METADATA)
    yield server
    server._close()


def test_lookup_returns_a_uri_object(ns):
    ns.register("thing", THING)
    found = ns.lookup("thing")
    assert isinstance(found, URI)
    assert found == URI(THING)


def test_lookup_with_metadata_returns_uri_and_tag_list(ns):
    ns.register("thing", THING, metadata={"a", "b"})
    uri, tags = ns.lookup("thing", return_metadata=True)
    assert uri == URI(THING)
    assert isinstance(tags, list) and sorted(tags) == ["a", "b"]
    ns.register("plain", THING)
    assert ns.lookup("plain", return_metadata=True) == (URI(THING), [])


def test_lookup_of_unknown_name_is_a_naming_error(ns):
    with pytest.raises(errors.NamingError, match="^unknown name: nope$"):
        ns.lookup("nope")


def test_register_accepts_uri_objects_and_stores_strings(ns):
    ns.register("thing", URI(THING))
    assert ns.list(prefix="thing") == {"thing": THING}


def test_register_overwrites_unless_safe(ns):
    ns.register("thing", THING)
    ns.register("thing", OTHER)
    assert ns.lookup("thing") == URI(OTHER)
    with pytest.raises(errors.NamingError, match="^name already registered: thing$"):
        ns.register("thing", THING, safe=True)
    assert ns.lookup("thing") == URI(OTHER)


@pytest.mark.parametrize("name, uri, metadata, error, message", [
    ("x", "not a uri", None, errors.PyroError, "invalid uri"),
    ("x", "PYRO:obj@host:notaport", None, errors.PyroError, "invalid port"),
    ("x", 42, None, TypeError, "only URIs or strings can be registered"),
    (42, THING, None, TypeError, "name must be a str"),
    (None, THING, None, TypeError, "name must be a str"),
    ("x", THING, "tag", TypeError, "metadata should not be a str, but another iterable"),
    ("x", THING, 5, TypeError, "iterable"),
    ("x", THING, [1, 2], TypeError, "only contain str"),
])
def test_register_rejects_bad_input_and_stores_nothing(ns, name, uri, metadata, error, message):
    with pytest.raises(error, match=message):
        ns.register(name, uri, metadata=metadata)
    assert ns.count() == 1


def test_set_metadata_replaces_and_a_falsy_value_clears(ns):
    ns.register("thing", THING, metadata={"old"})
    ns.set_metadata("thing", ["new", "newer"])
    assert ns.lookup("thing", return_metadata=True) == (URI(THING), ["new", "newer"])
    ns.set_metadata("thing", None)
    assert ns.lookup("thing", return_metadata=True) == (URI(THING), [])


def test_set_metadata_errors(ns):
    with pytest.raises(errors.NamingError, match="^unknown name: nope$"):
        ns.set_metadata("nope", {"x"})
    ns.register("thing", THING)
    with pytest.raises(TypeError, match="metadata should not be a str"):
        ns.set_metadata("thing", "x")
    with pytest.raises(TypeError, match="name must be a str"):
        ns.set_metadata(3, {"x"})


def test_count_includes_the_name_servers_own_entry(ns):
    assert ns.count() == 1
    ns.register("thing", THING)
    assert ns.count() == 2


def _populate(ns):
    ns.register("app.one", THING, metadata={"red", "round"})
    ns.register("app.two", OTHER, metadata={"red"})
    ns.register("other.three", THING, metadata={"blue", "round"})


def test_list_without_filters_returns_everything_as_strings(ns):
    _populate(ns)
    listing = ns.list()
    assert set(listing) == {NS, "app.one", "app.two", "other.three"}
    assert all(isinstance(uri, str) for uri in listing.values())
    assert ns.list(prefix="") == listing and ns.list(metadata_all=[]) == listing


def test_list_by_prefix_and_by_regex_anchored_at_the_start(ns):
    _populate(ns)
    assert set(ns.list(prefix="app.")) == {"app.one", "app.two"}
    assert set(ns.list(regex=r"app\.t")) == {"app.two"}
    assert set(ns.list(regex=r"three")) == set()  # re.match: anchored at the start only
    assert set(ns.list(regex=r".*three")) == {"other.three"}
    assert set(ns.list(regex=r"app")) == {"app.one", "app.two"}  # not anchored at the end


def test_list_by_metadata_all_and_any(ns):
    _populate(ns)
    assert set(ns.list(metadata_all={"red", "round"})) == {"app.one"}
    assert set(ns.list(metadata_all=["red"])) == {"app.one", "app.two"}
    assert set(ns.list(metadata_any={"blue", "nothing"})) == {"other.three"}
    assert set(ns.list(metadata_any=("round",))) == {"app.one", "other.three"}
    assert set(ns.list(metadata_all={"class:Pyro4.naming.NameServer"})) == {NS}


def test_list_with_metadata_returns_uri_and_tag_list(ns):
    _populate(ns)
    listing = ns.list(prefix="app.", return_metadata=True)
    assert listing == {"app.one": (THING, ["red", "round"]), "app.two": (OTHER, ["red"])}
    assert ns.list(return_metadata=True)[NS] == ("PYRO:Pyro.NameServer@127.0.0.1:9999",
                                                 ["class:Pyro4.naming.NameServer"])


@pytest.mark.parametrize("kwargs, error, message", [
    ({"prefix": "a", "regex": "b"}, ValueError, "you can only filter on one thing at a time"),
    ({"metadata_all": ["a"], "metadata_any": ["b"]}, ValueError, "one thing at a time"),
    ({"regex": "("}, errors.NamingError, "^invalid regex: "),
    ({"regex": "[z-a]"}, errors.NamingError, "^invalid regex: "),
    ({"metadata_all": "red"}, TypeError, "metadata_all should not be a str"),
    ({"metadata_any": "red"}, TypeError, "metadata_any should not be a str"),
])
def test_list_rejects_bad_filters(ns, kwargs, error, message):
    _populate(ns)
    with pytest.raises(error, match=message):
        ns.list(**kwargs)


def test_remove_by_name_prefix_and_regex(ns):
    _populate(ns)
    assert ns.remove("app.one") == 1
    assert ns.remove("app.one") == 0
    assert ns.remove(prefix="app.") == 1
    assert ns.remove(regex=r"oth") == 1
    assert ns.remove() == 0
    assert set(ns.list()) == {NS}


def test_remove_never_removes_the_name_server_entry(ns):
    _populate(ns)
    assert ns.remove(NS) == 0
    assert ns.remove(prefix="Pyro.") == 0
    assert ns.remove(regex=".*") == 3
    assert set(ns.list()) == {NS}


def test_remove_with_a_bad_regex_is_a_naming_error(ns):
    with pytest.raises(errors.NamingError, match="invalid regex"):
        ns.remove(regex="(")


# --- served over the network ----------------------------------------------------


class LoopThread:
    """A SelectLoop in a thread of its own hosting daemons and broadcast responders,
    so proxies in the test's thread can call them."""

    def __init__(self, *hosted) -> None:
        self.loop = SelectLoop()
        self._attached = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(hosted,), name="ns-loop", daemon=True)
        self.thread.start()
        assert self._attached.wait(TIMEOUT)

    def _run(self, hosted) -> None:
        try:
            for thing in hosted:
                self.loop.attach(thing)
        finally:
            self._attached.set()
        self.loop.run()
        self.loop.close()

    def stop(self) -> None:
        self.loop.stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the select loop did not stop"


class Served:
    """A name server from startNS (with a responder on 127.0.0.1) served by a LoopThread."""

    def __init__(self, *extra, **start_args) -> None:
        start_args = {"host": "127.0.0.1", "port": 0, "bchost": "127.0.0.1", "bcport": 0, **start_args}
        self.uri, self.daemon, self.bc = startNS(**start_args)
        self.port = self.uri.port
        self.loop = LoopThread(*[x for x in (self.daemon, self.bc, *extra) if x is not None])

    def close(self) -> None:
        self.loop.stop()
        self.daemon.close()
        if self.bc is not None:
            self.bc.close()


@pyro_loops.expose
class Thing:
    def double(self, value):
        return value * 2


@pytest.fixture
def served():
    server = Served()
    yield server
    server.close()


@pytest.fixture
def app_daemon():
    daemon = Daemon(host="127.0.0.1", port=0)
    yield daemon
    daemon.close()


def _silent_udp_port(stack: contextlib.ExitStack) -> int:
    """A UDP port on 127.0.0.1 where something is bound but never answers."""
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def _refusing_tcp_port(stack: contextlib.ExitStack) -> int:
    """A TCP port on 127.0.0.1 that is bound but not listening: connections are refused."""
    sock = stack.enter_context(socket.socket())
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_name_server_publishes_itself_like_pyro4(served):
    with locateNS("127.0.0.1", served.port) as ns:
        assert ns.count() == 1
        uri, tags = ns.lookup(NS, return_metadata=True)
        assert isinstance(uri, URI) and uri == served.uri
        assert tags == ["class:Pyro4.naming.NameServer"]
        assert ns._pyroMethods == {"ping", "count", "lookup", "register", "set_metadata", "remove", "list"}
    with Proxy(f"PYRO:Pyro.Daemon@127.0.0.1:{served.port}") as daemon_object:
        assert set(daemon_object.registered()) == {"Pyro.Daemon", NS}


@pytest.mark.parametrize("method, args, kwargs, error, message", [
    ("register", (42, THING), {}, TypeError, "name must be a str"),
    ("register", ("x", "garbage"), {}, errors.PyroError, "invalid uri"),
    ("register", ("x", 3.5), {}, TypeError, "only URIs or strings can be registered"),
    ("register", ("x", THING), {"metadata": "tag"}, TypeError, "metadata should not be a str"),
    ("set_metadata", ("x", "tag"), {}, TypeError, "metadata should not be a str"),
    ("lookup", ("nope",), {}, errors.NamingError, "unknown name: nope"),
    ("list", (), {"regex": "(unclosed"}, errors.NamingError, "invalid regex"),
    ("list", (), {"prefix": "a", "regex": "b"}, ValueError, "one thing at a time"),
    ("list", (), {"metadata_any": "tag"}, TypeError, "metadata_any should not be a str"),
    ("remove", (), {"regex": "["}, errors.NamingError, "invalid regex"),
])
def test_bad_input_over_the_wire_gets_the_documented_error_and_the_ns_keeps_serving(
        served, method, args, kwargs, error, message):
    with locateNS("127.0.0.1", served.port) as ns:
        ns.register("x", THING)
        with pytest.raises(error, match=message):
            getattr(ns, method)(*args, **kwargs)
        ns.ping()
        assert ns.list() == {NS: str(served.uri), "x": THING}


def test_pyroname_and_pyrometa_proxies_reach_the_registered_object(served, app_daemon):
    app_loop = LoopThread(app_daemon)
    try:
        uri = app_daemon.register(Thing(), "thing")
        with locateNS("127.0.0.1", served.port) as ns:
            ns.register("app.thing", uri, metadata={"doubler", "demo"})
        with Proxy(f"PYRONAME:app.thing@127.0.0.1:{served.port}") as thing:
            thing._pyroTimeout = TIMEOUT
            assert thing.double(21) == 42
            assert thing._pyroUri.protocol == "PYRONAME"  # only _pyroBind() replaces it
        with Proxy(f"PYROMETA:doubler,demo@127.0.0.1:{served.port}") as thing:
            thing._pyroTimeout = TIMEOUT
            assert thing.double("ab") == "abab"
    finally:
        app_loop.stop()


def test_resolve_turns_names_and_tags_into_pyro_uris(served):
    with locateNS("127.0.0.1", served.port) as ns:
        ns.register("one", THING, metadata={"red", "round"})
        ns.register("two", OTHER, metadata={"red"})
    where = f"@127.0.0.1:{served.port}"
    assert resolve("PYRONAME:one" + where) == URI(THING)
    assert resolve(URI("PYRONAME:two" + where)) == URI(OTHER)
    assert resolve("PYROMETA:red,round" + where) == URI(THING)
    assert resolve("PYROMETA:red" + where) in (URI(THING), URI(OTHER))
    assert resolve(THING) == URI(THING)
    with pytest.raises(errors.NamingError, match="unknown name: three"):
        resolve("PYRONAME:three" + where)
    with pytest.raises(errors.NamingError, match="no registrations available with desired metadata properties"):
        resolve("PYROMETA:blue" + where)
    with pytest.raises(TypeError):
        resolve(42)


def test_locate_with_a_host_that_has_no_name_server_is_a_naming_error():
    with contextlib.ExitStack() as stack:
        port = _refusing_tcp_port(stack)
        with pytest.raises(errors.NamingError, match="^Failed to locate the nameserver$"):
            locateNS("127.0.0.1", port)
        with pytest.raises(errors.NamingError, match="Failed to locate the nameserver"):
            resolve(f"PYRONAME:thing@127.0.0.1:{port}")


def test_locate_without_host_tries_a_loopback_ns_host_first(served):
    with contextlib.ExitStack() as stack:
        pyro_loops.config.NS_HOST = "127.0.0.1"
        pyro_loops.config.NS_PORT = served.port
        pyro_loops.config.BROADCAST_ADDRS = "127.0.0.1"
        pyro_loops.config.NS_BCPORT = _silent_udp_port(stack)  # broadcast would find nothing
        with locateNS() as ns:
            assert ns._pyroUri == served.uri
            assert ns.count() == 1


def test_locate_without_host_finds_the_name_server_by_broadcast(served):
    with contextlib.ExitStack() as stack:
        pyro_loops.config.NS_HOST = "127.0.0.1"
        pyro_loops.config.NS_PORT = _refusing_tcp_port(stack)  # the first and last steps fail
        pyro_loops.config.BROADCAST_ADDRS = "127.0.0.1"
        pyro_loops.config.NS_BCPORT = served.bc.getPort()
        with locateNS() as ns:
            assert ns._pyroUri == served.uri
            ns.register("found", THING)
        # a PYRONAME without a location is resolved the same way
        assert resolve("PYRONAME:found") == URI(THING)


def test_locate_without_host_gives_up_with_a_naming_error():
    with contextlib.ExitStack() as stack:
        pyro_loops.config.NS_HOST = "127.0.0.1"
        pyro_loops.config.NS_PORT = _refusing_tcp_port(stack)
        pyro_loops.config.BROADCAST_ADDRS = "127.0.0.1"
        pyro_loops.config.NS_BCPORT = _silent_udp_port(stack)
        with pytest.raises(errors.NamingError, match="^Failed to locate the nameserver$"):
            locateNS()
        with pytest.raises(errors.NamingError, match="^Failed to locate the nameserver$"):
            locateNS(broadcast=False)


def _ask(port: int, request: bytes = b"GET_NSURI") -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(request, ("127.0.0.1", port))
        return sock.recv(200)


def test_broadcast_responder_answers_get_nsuri_with_the_name_server_uri(served):
    assert _ask(served.bc.getPort()) == str(served.uri).encode("latin-1")


def test_broadcast_responder_ignores_anything_but_the_exact_request():
    # Driven by hand, so that every datagram is queued before the responder runs
    # and every answer is queued when handle_event returns: the count is exact.
    bc = BroadcastServer("PYRO:Pyro.NameServer@127.0.0.1:4321", bchost="127.0.0.1", bcport=0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for junk in (b"GET_NSURI\n", b"get_nsuri", b"", b"GET_NSURI" * 20, b" GET_NSURI", b"GET_NSUR"):
                client.sendto(junk, ("127.0.0.1", bc.getPort()))
            client.sendto(b"GET_NSURI", ("127.0.0.1", bc.getPort()))
            assert select.select([bc.sock], [], [], TIMEOUT)[0]
            bc.handle_event(bc.sock, hosting.READ)
            client.setblocking(False)
            assert client.recv(200) == b"PYRO:Pyro.NameServer@127.0.0.1:4321"
            with pytest.raises(BlockingIOError):
                client.recv(200)
    finally:
        bc.close()


class RecordingWatcher:
    def __init__(self):
        self.calls = []

    def add(self, sock, events):
        self.calls.append(("add", sock, events))

    def modify(self, sock, events):
        self.calls.append(("modify", sock, events))

    def remove(self, sock):
        self.calls.append(("remove", sock))

    def set_deadline(self, when):
        self.calls.append(("set_deadline", when))

    def detached(self):
        self.calls.append(("detached",))


def test_broadcast_responder_offers_the_hosting_interface_of_a_daemon():
    bc = BroadcastServer("PYRO:Pyro.NameServer@0.0.0.0:1234", bchost="127.0.0.1", bcport=0)
    sock = bc.sock
    watcher = RecordingWatcher()
    bc.attach_watcher(watcher)
    assert watcher.calls == [("add", sock, hosting.READ), ("set_deadline", None)]
    with pytest.raises(errors.PyroError):
        bc.attach_watcher(RecordingWatcher())
    assert bc.sockets == [sock] and bc.next_deadline() is None
    # a requester gets the interface address that reaches it in place of 0.0.0.0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(b"GET_NSURI", ("127.0.0.1", bc.getPort()))
        assert select.select([sock], [], [], TIMEOUT)[0] == [sock]
        bc.handle_event(sock, hosting.READ)
        assert client.recv(200) == b"PYRO:Pyro.NameServer@127.0.0.1:1234"
    bc.handle_deadline()
    bc.close()
    assert watcher.calls[2:] == [("remove", sock), ("detached",)]
    assert sock.fileno() == -1 and bc.sockets == []
    bc.close()  # idempotent
    assert len(watcher.calls) == 4


def test_broadcast_responder_serves_a_hand_written_select_loop():
    bc = BroadcastServer("PYRO:Pyro.NameServer@127.0.0.1:4321", bchost="127.0.0.1", bcport=0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.sendto(b"GET_NSURI", ("127.0.0.1", bc.getPort()))
            ready, _, _ = select.select(bc.sockets, [], [], TIMEOUT)
            bc.events(ready)
            assert client.recv(200) == b"PYRO:Pyro.NameServer@127.0.0.1:4321"
    finally:
        bc.close()


def test_start_ns_makes_a_responder_only_where_it_makes_sense(tmp_path):
    cases = [
        ({"host": "127.0.0.1"}, False),                        # loopback: nobody else could use the answer
        ({"host": "127.0.0.1", "bchost": "127.0.0.1"}, True),  # ... unless asked for explicitly
        ({"host": "127.0.0.1", "bchost": "127.0.0.1", "enableBroadcast": False}, False),
        ({"unixsocket": str(tmp_path / "ns.sock"), "bchost": "127.0.0.1"}, False),
    ]
    for args, expected in cases:
        uri, daemon, bc = startNS(port=0, bcport=0, **args)
        try:
            assert (bc is not None) == expected, args
            assert daemon.nameserver.count() == 1
            assert daemon.nameserver.lookup(NS) == uri
        finally:
            daemon.close()
            if bc is not None:
                bc.close()


def test_name_server_on_a_unix_socket(tmp_path):
    path = str(tmp_path / "ns.sock")
    uri, daemon, bc = startNS(unixsocket=path)
    loop = LoopThread(daemon)
    try:
        assert uri == URI(f"PYRO:Pyro.NameServer@./u:{path}")
        with locateNS("./u:" + path) as ns:
            ns.register("thing", THING)
        assert resolve(f"PYRONAME:thing@./u:{path}") == URI(THING)
    finally:
        loop.stop()
        daemon.close()


def test_nat_name_server_registers_its_nat_uri_and_broadcasts_the_internal_one():
    served = Served(nathost="ns.example.org", natport=9999)
    try:
        assert served.uri == URI("PYRO:Pyro.NameServer@ns.example.org:9999")
        assert served.daemon.nameserver.lookup(NS) == served.uri
        assert _ask(served.bc.getPort()) == f"PYRO:Pyro.NameServer@127.0.0.1:{served.daemon.sock.getsockname()[1]}".encode()
    finally:
        served.close()


def test_hmac_protected_name_server_needs_the_key():
    served = Served(hmac=b"secret")
    try:
        with locateNS("127.0.0.1", served.port, hmac_key=b"secret") as ns:
            assert ns.count() == 1
        with pytest.raises(errors.NamingError, match="Failed to locate the nameserver"):
            locateNS("127.0.0.1", served.port)
        assert resolve(f"PYRONAME:Pyro.NameServer@127.0.0.1:{served.port}", b"secret") == served.uri
    finally:
        served.close()


def test_sql_storage_keeps_registrations_across_a_name_server_restart(tmp_path):
    storage = "sql:" + str(tmp_path / "ns.sqlite")
    first = Served(storage=storage)
    try:
        with locateNS("127.0.0.1", first.port) as ns:
            ns.register("kept", THING, metadata={"tag"})
    finally:
        first.close()
    second = Served(storage=storage)
    try:
        with locateNS("127.0.0.1", second.port) as ns:
            assert ns.count() == 2
            assert ns.lookup("kept", return_metadata=True) == (URI(THING), ["tag"])
            assert ns.lookup(NS) == second.uri  # its own entry now points at the new address
    finally:
        second.close()


CLIENT = textwrap.dedent("""
    import pyro_loops
    from pyro_loops.naming import locateNS
    from pyro_loops.proxy import Proxy

    with Proxy("PYRONAME:app.thing") as thing:   # no location: the name server is located
        thing._pyroTimeout = 10
        print(thing.double(21))
    with locateNS() as ns:
        print(ns._pyroUri)
""")


def start_client(stack: contextlib.ExitStack, bc) -> subprocess.Popen:
    """CLIENT in another process; its configured name server port refuses, so
    only the broadcast responder ``bc`` can lead it to the name server."""
    env = peer_env(PYRO_NS_HOST="127.0.0.1", PYRO_NS_PORT=str(_refusing_tcp_port(stack)),
                   PYRO_BROADCAST_ADDRS="127.0.0.1", PYRO_NS_BCPORT=str(bc.getPort()))
    client = subprocess.Popen([sys.executable, "-c", CLIENT], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stack.callback(client.kill)
    return client


def test_one_host_loop_hosts_name_server_responder_and_app_for_a_client_in_another_process(host):
    uri, ns_daemon, bc = startNS(host="127.0.0.1", port=0, bchost="127.0.0.1", bcport=0)
    app = Daemon(host="127.0.0.1", port=0)
    with contextlib.ExitStack() as stack:
        stack.callback(bc.close)
        stack.callback(ns_daemon.close)
        stack.callback(app.close)
        for hosted in (ns_daemon, bc, app):
            host.attach(hosted)
        # Registering from the loop's own thread goes to the object, not through a proxy.
        ns_daemon.nameserver.register("app.thing", app.register(Thing()))
        client = start_client(stack, bc)
        host.run_until(lambda: client.poll() is not None, TIMEOUT)
        out, err = client.communicate(timeout=TIMEOUT)
        assert client.returncode == 0, err
        assert out.split() == ["42", str(uri)]


def test_serve_simple_registers_its_objects_with_the_located_name_server(served):
    pyro_loops.config.NS_HOST = "127.0.0.1"
    pyro_loops.config.NS_PORT = served.port
    daemon = Daemon(host="127.0.0.1", port=0)
    serving = threading.Thread(target=Daemon.serveSimple, args=({Thing(): "simple.thing"},),
                               kwargs={"daemon": daemon, "ns": True, "verbose": False}, daemon=True)
    serving.start()
    try:
        with locateNS() as ns:
            wait_until(lambda: "simple.thing" in ns.list())
        with Proxy("PYRONAME:simple.thing") as thing:
            thing._pyroTimeout = TIMEOUT
            assert thing.double(5) == 10
    finally:
        daemon.shutdown()
        serving.join(TIMEOUT)
    assert not serving.is_alive()


@pyro_loops.expose
class Relay:
    """Runs in the thread of the loop that also hosts the name server."""

    def __init__(self, ns_port):
        self._ns_port = ns_port

    def relay(self, name, value):
        with Proxy(f"PYRONAME:{name}@127.0.0.1:{self._ns_port}") as target:
            target._pyroTimeout = TIMEOUT
            return target.double(value)

    def locate(self):
        try:
            locateNS("127.0.0.1", self._ns_port)
        except errors.PyroError as exc:
            return type(exc).__name__, str(exc)
        return None


def test_pyroname_resolves_on_the_loop_thread_that_hosts_the_name_server(app_daemon):
    relay_daemon = Daemon(host="127.0.0.1", port=0)
    served = Served(relay_daemon)
    app_loop = LoopThread(app_daemon)
    try:
        served.daemon.nameserver.register("app.thing", app_daemon.register(Thing()))
        with Proxy(relay_daemon.register(Relay(served.port))) as relay:
            relay._pyroTimeout = TIMEOUT
            # resolve() asks the name server object directly instead of deadlocking on it
            assert relay.relay("app.thing", 8) == 16
            # locateNS() must return a proxy, which could never be answered there: a clear error
            kind, message = relay.locate()
            assert kind == "PyroError" and "deadlock" in message
    finally:
        app_loop.stop()
        served.close()
        relay_daemon.close()


def test_threaded_name_server_with_sql_storage_takes_concurrent_registrations(tmp_path):
    pyro_loops.config.SERVERTYPE = "thread"  # calls run in worker threads, not the loop's
    served = Served(storage="sql:" + str(tmp_path / "ns.sqlite"))
    failures = []

    def register_many(worker):
        try:
            with locateNS("127.0.0.1", served.port) as ns:
                ns._pyroTimeout = TIMEOUT
                for i in range(20):
                    ns.register(f"w{worker}.n{i}", THING, metadata={f"worker{worker}"})
        except Exception as exc:  # reported below, with the worker it came from
            failures.append((worker, exc))

    try:
        workers = [threading.Thread(target=register_many, args=(w,)) for w in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(TIMEOUT)
        assert failures == []
        with locateNS("127.0.0.1", served.port) as ns:
            assert ns.count() == 1 + 6 * 20
            assert len(ns.list(metadata_any={"worker3"})) == 20
    finally:
        served.close()
