"""Our name server and name-server client against the real Pyro4 4.82.

- A Pyro4 client (its own process, see ``_util.CodePeer``) uses our name server
  exactly as it would use Pyro4's: each of those tests also runs against a real
  Pyro4 name server (``python -m Pyro4.naming``) as the reference, so a test that
  fails only for the reference is a wrong test.
- Our ``locateNS``, ``resolve`` and ``PYRONAME:`` proxies use a Pyro4 name server.
- GET_NSURI crosses in both directions between Pyro4 and us, by unicast to 127.0.0.1.
- The SQLite registration file is shared with Pyro4's ``sql:`` storage.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from typing import NamedTuple

import pytest

import pyro_loops
from _util import TIMEOUT, Peer, PeerError, peer_env, pyro4_client
from pyro_loops import errors
from pyro_loops._uri import URI
from pyro_loops.daemon import Daemon
from pyro_loops.naming import locateNS, resolve, startNS
from pyro_loops.proxy import Proxy
from test_naming import LoopThread, Served, Thing, _ask, _refusing_tcp_port

NS = "Pyro.NameServer"

# Pyro4's locateNS() also tries 127.0.1.1 when that address has a host name; tests
# keep all traffic on 127.0.0.1, so the Pyro4 peer is told that it has none.
NO_127_0_1_1 = """
import socket
_real_gethostbyaddr = socket.gethostbyaddr
def _gethostbyaddr(address):
    if address == "127.0.1.1":
        raise socket.herror(1, "not used in tests")
    return _real_gethostbyaddr(address)
socket.gethostbyaddr = _gethostbyaddr
"""


class Pyro4NameServer(Peer):
    """``python -m Pyro4.naming -n 127.0.0.1 -p 0`` (plus ``args``); the URI it prints."""

    def __init__(self, *args: str) -> None:
        super().__init__(["-m", "Pyro4.naming", "-n", "127.0.0.1", "-p", "0", *args])
        self.uri = self.wait_for(r"^URI = (\S+)").group(1)
        self.port = URI(self.uri).port

    def stop(self, timeout: float = 5.0) -> None:
        # It does not stop when stdin closes; Ctrl-C is how it is stopped.
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout)
        super().stop(timeout)


@pytest.fixture(scope="module")
def pyro4():
    client = pyro4_client()
    client.run(NO_127_0_1_1)
    yield client
    client.stop()


@pytest.fixture
def app():
    """Our daemon serving a Thing, for names to point at."""
    daemon = Daemon(host="127.0.0.1", port=0)
    uri = daemon.register(Thing(), "thing")
    loop = LoopThread(daemon)
    yield str(uri)
    loop.stop()
    daemon.close()


class NameServerUnderTest(NamedTuple):
    kind: str  # "ours" or "pyro4"
    uri: str
    port: int


@pytest.fixture(params=["ours", "pyro4"])
def name_server(request):
    """Our name server (served from a select loop in a thread) or Pyro4's as the reference."""
    if request.param == "ours":
        served = Served(enableBroadcast=False)
        yield NameServerUnderTest("ours", str(served.uri), served.port)
        served.close()
    else:
        reference = Pyro4NameServer()
        yield NameServerUnderTest("pyro4", reference.uri, reference.port)
        reference.stop()


# --- a Pyro4 client using the name server ----------------------------------------


@pytest.mark.parametrize("ser", ["serpent", "json", "marshal"])
def test_pyro4_client_registers_looks_up_and_lists(pyro4, name_server, ser):
    if ser == "marshal" and name_server.kind == "pyro4":
        pytest.skip("Pyro4 4.82's marshal cannot send a URI inside a tuple (lookup with return_metadata)")
    uri, port = name_server.uri, name_server.port
    result = pyro4.run(textwrap.dedent("""
        ns = Pyro4.locateNS("127.0.0.1", port)
        ns._pyroSerializer = ser
        ns._pyroTimeout = 10
        ns.register("a.one", Pyro4.URI("PYRO:one@127.0.0.1:5001"), metadata={"red", "round"})
        ns.register("a.two", "PYRO:two@127.0.0.1:5002")
        ns.set_metadata("a.two", ["red"])
        found = ns.lookup("a.one")
        found_meta = ns.lookup("a.one", return_metadata=True)
        listing = ns.list(return_metadata=True)
        {
            "methods": sorted(ns._pyroMethods),
            "count": ns.count(),
            "lookup": (type(found).__module__ + "." + type(found).__name__, str(found)),
            "lookup_meta": (str(found_meta[0]), sorted(found_meta[1])),
            "own": (listing[ns_name][0], sorted(listing[ns_name][1])),
            "listing": {k: (v[0], sorted(v[1])) for k, v in listing.items() if k != ns_name},
            "prefix": ns.list(prefix="a.o"),
            "regex": ns.list(regex=r".*two"),
            "all": sorted(ns.list(metadata_all={"red", "round"})),
            "any": sorted(ns.list(metadata_any=["round", "nothing"])),
            "removed": (ns.remove("a.one"), ns.remove(prefix="a."), ns.remove(ns_name), ns.remove("gone")),
            "after": sorted(ns.list()),
        }
    """), port=port, ser=ser, ns_name=NS)
    assert result == {
        "methods": ["count", "list", "lookup", "ping", "register", "remove", "set_metadata"],
        "count": 3,
        "lookup": ("Pyro4.core.URI", "PYRO:one@127.0.0.1:5001"),
        "lookup_meta": ("PYRO:one@127.0.0.1:5001", ["red", "round"]),
        "own": (uri, ["class:Pyro4.naming.NameServer"]),
        "listing": {"a.one": ("PYRO:one@127.0.0.1:5001", ["red", "round"]),
                    "a.two": ("PYRO:two@127.0.0.1:5002", ["red"])},
        "prefix": {"a.one": "PYRO:one@127.0.0.1:5001"},
        "regex": {"a.two": "PYRO:two@127.0.0.1:5002"},
        "all": ["a.one"],
        "any": ["a.one"],
        "removed": (1, 1, 0, 0),
        "after": [NS],
    }


@pytest.mark.parametrize("call, error_type, message", [
    ('ns.lookup("nope")', "Pyro4.errors.NamingError", "unknown name: nope"),
    ('ns.register("x", "PYRO:x@127.0.0.1:1", safe=True)', "Pyro4.errors.NamingError", "name already registered: x"),
    ('ns.register(42, "PYRO:x@127.0.0.1:1")', "builtins.TypeError", "name must be a str"),
    ('ns.register("y", 42)', "builtins.TypeError", "only URIs or strings can be registered"),
    ('ns.register("y", "PYRO:x@127.0.0.1:1", metadata="red")', "builtins.TypeError",
     "metadata should not be a str, but another iterable (set, list, etc)"),
    ('ns.set_metadata("nope", ["red"])', "Pyro4.errors.NamingError", "unknown name: nope"),
    ('ns.list(prefix="a", regex="b")', "builtins.ValueError", "you can only filter on one thing at a time"),
    ('ns.list(metadata_all="red")', "builtins.TypeError",
     "metadata_all should not be a str, but another iterable (set, list, etc)"),
])
def test_pyro4_client_gets_the_same_errors_and_the_name_server_keeps_serving(
        pyro4, name_server, call, error_type, message):
    port = name_server.port
    pyro4.run('ns = Pyro4.locateNS("127.0.0.1", port)\nns._pyroTimeout = 10\n'
              'ns.register("x", "PYRO:x@127.0.0.1:1")', port=port)
    with pytest.raises(PeerError) as raised:
        pyro4.run(call)
    assert (raised.value.type, raised.value.str) == (error_type, message)
    assert pyro4.run("ns.ping()\nns.count()") == 2


def test_pyro4_client_gets_naming_errors_for_bad_uris_and_regexes(pyro4, name_server):
    # The message texts come from the regex engine and the URI parser, which differ in wording.
    port = name_server.port
    pyro4.run('ns = Pyro4.locateNS("127.0.0.1", port)\nns._pyroTimeout = 10', port=port)
    with pytest.raises(PeerError) as raised:
        pyro4.run('ns.register("x", "not a uri")')
    assert raised.value.type == "Pyro4.errors.PyroError" and raised.value.str.startswith("invalid uri")
    with pytest.raises(PeerError) as raised:
        pyro4.run('ns.list(regex="(")')
    assert raised.value.type == "Pyro4.errors.NamingError" and raised.value.str.startswith("invalid regex: ")
    assert pyro4.run("ns.count()") == 1


def test_pyro4_pyroname_and_pyrometa_proxies_through_the_name_server(pyro4, name_server, app):
    port = name_server.port
    assert pyro4.run(textwrap.dedent("""
        with Pyro4.locateNS("127.0.0.1", port) as ns:
            ns.register("app.thing", app, metadata={"doubler"})
        by_name = Pyro4.Proxy("PYRONAME:app.thing@127.0.0.1:%d" % port)
        by_meta = Pyro4.Proxy("PYROMETA:doubler@127.0.0.1:%d" % port)
        by_name._pyroTimeout = by_meta._pyroTimeout = 10
        (by_name.double(21), by_meta.double("ab"), str(Pyro4.resolve("PYRONAME:app.thing@127.0.0.1:%d" % port)))
    """), port=port, app=app) == (42, "abab", app)


def test_pyro4_locate_ns_by_broadcast_finds_our_responder(pyro4):
    served = Served()  # responder bound to 127.0.0.1
    try:
        with contextlib.ExitStack() as stack:
            refusing = _refusing_tcp_port(stack)
            client = pyro4_client(PYRO_NS_HOST="127.0.0.1", PYRO_NS_PORT=str(refusing),
                                  PYRO_NS_BCPORT=str(served.bc.getPort()), PYRO_BROADCAST_ADDRS="127.0.0.1")
            try:
                client.run(NO_127_0_1_1)
                assert client.run("ns = Pyro4.locateNS()\n(str(ns._pyroUri), ns.count())") == (str(served.uri), 1)
            finally:
                client.stop()
    finally:
        served.close()


def test_pyro4_nsc_command_works_against_our_name_server():
    served = Served(enableBroadcast=False)
    try:
        def nsc(*args):
            return subprocess.run([sys.executable, "-m", "Pyro4.nsc", "-n", "127.0.0.1", "-p", str(served.port),
                                   *args], env=peer_env(), capture_output=True, text=True, timeout=TIMEOUT)
        assert "Registered app.thing" in nsc("register", "app.thing", "PYRO:thing@127.0.0.1:5001").stdout
        listing = nsc("list").stdout
        assert "app.thing --> PYRO:thing@127.0.0.1:5001" in listing
        assert f"{NS} --> {served.uri}" in listing
        assert nsc("lookup", "app.thing").stdout.splitlines()[0] == "PYRO:thing@127.0.0.1:5001"
    finally:
        served.close()


# --- our client using a Pyro4 name server ------------------------------------------


@pytest.fixture(scope="module")
def pyro4_ns():
    reference = Pyro4NameServer()
    yield reference
    reference.stop()


def test_our_locate_ns_and_api_against_a_pyro4_name_server(pyro4_ns):
    with locateNS("127.0.0.1", pyro4_ns.port) as ns:
        ns._pyroTimeout = TIMEOUT
        assert ns._pyroMethods == {"ping", "count", "lookup", "register", "set_metadata", "remove", "list"}
        ns.register("ours.one", URI("PYRO:one@127.0.0.1:5001"), metadata={"red"})
        try:
            found = ns.lookup("ours.one")
            assert isinstance(found, URI) and found == URI("PYRO:one@127.0.0.1:5001")
            assert ns.lookup("ours.one", return_metadata=True) == (found, ["red"])
            assert ns.lookup(NS, return_metadata=True) == (URI(pyro4_ns.uri), ["class:Pyro4.naming.NameServer"])
            assert ns.list(metadata_all={"red"}) == {"ours.one": "PYRO:one@127.0.0.1:5001"}
            with pytest.raises(errors.NamingError, match="unknown name: nope"):
                ns.lookup("nope")
            with pytest.raises(TypeError, match="name must be a str"):
                ns.register(5, found)
        finally:
            assert ns.remove(prefix="ours.") == 1


def test_our_pyroname_proxy_and_resolve_against_a_pyro4_name_server(pyro4_ns, app):
    with locateNS("127.0.0.1", pyro4_ns.port) as ns:
        ns.register("ours.thing", app, metadata={"ours-doubler"})
    try:
        where = f"@127.0.0.1:{pyro4_ns.port}"
        assert resolve("PYRONAME:ours.thing" + where) == URI(app)
        assert resolve("PYROMETA:ours-doubler" + where) == URI(app)
        with Proxy("PYRONAME:ours.thing" + where) as thing:
            thing._pyroTimeout = TIMEOUT
            assert thing.double(4) == 8
        with pytest.raises(errors.NamingError, match="no registrations available"):
            resolve("PYROMETA:nobody-has-this" + where)
    finally:
        with locateNS("127.0.0.1", pyro4_ns.port) as ns:
            ns.remove("ours.thing")


PYRO4_RESPONDER = textwrap.dedent("""
    import json, sys, threading
    import Pyro4.naming
    uri, daemon, _ = Pyro4.naming.startNS(host="127.0.0.1", port=0)
    responder = Pyro4.naming.BroadcastServer(uri, bchost="127.0.0.1", bcport=0)
    responder.runInThread()
    print(json.dumps({"uri": str(uri), "bcport": responder.getPort()}), flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), daemon.shutdown()), daemon=True).start()
    daemon.requestLoop()
    daemon.close()
    responder.close()
""")


def test_our_locate_ns_by_broadcast_finds_a_pyro4_responder():
    with Peer(["-c", PYRO4_RESPONDER]) as peer:
        info = json.loads(peer.readline())
        with contextlib.ExitStack() as stack:
            refusing = _refusing_tcp_port(stack)
            pyro_loops.config.NS_HOST = "127.0.0.1"
            pyro_loops.config.NS_PORT = refusing
            pyro_loops.config.NS_BCPORT = info["bcport"]
            pyro_loops.config.BROADCAST_ADDRS = "127.0.0.1"
            with locateNS() as ns:
                assert str(ns._pyroUri) == info["uri"]
                assert ns.count() == 1


def test_pyro4_get_nsuri_reply_matches_ours_byte_for_byte():
    """Same request, same kind of name server: the two responders' answers have the same form."""
    with Peer(["-c", PYRO4_RESPONDER]) as peer:
        info = json.loads(peer.readline())
        assert _ask(info["bcport"]) == info["uri"].encode("latin-1")
    served = Served()
    try:
        assert _ask(served.bc.getPort()) == str(served.uri).encode("latin-1")
    finally:
        served.close()


# --- the SQLite file --------------------------------------------------------------


def _pyro4_sql(path: str, code: str) -> str:
    script = f"from Pyro4.naming_storage import SqlStorage\nstore = SqlStorage({path!r})\n{code}\nstore.close()\n"
    done = subprocess.run([sys.executable, "-c", script], env=peer_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_name_server_serves_registrations_from_a_pyro4_sqlite_file(tmp_path):
    path = str(tmp_path / "ns.sqlite")
    _pyro4_sql(path, 'store["from.pyro4"] = ("PYRO:p4@127.0.0.1:5001", {"old", "tags"})')
    _, daemon, _ = startNS(host="127.0.0.1", port=0, enableBroadcast=False, storage="sql:" + path)
    try:
        assert daemon.nameserver.lookup("from.pyro4", return_metadata=True) == (
            URI("PYRO:p4@127.0.0.1:5001"), ["old", "tags"])
        daemon.nameserver.register("from.us", "PYRO:us@127.0.0.1:5002", metadata=["new"])
    finally:
        daemon.close()
    listing = _pyro4_sql(path, "print(sorted((k, v[0], sorted(v[1])) for k, v in store.everything(True).items()))")
    uri = f"PYRO:{NS}@{daemon.locationStr}"
    assert listing.strip() == repr(sorted([
        (NS, uri, ["class:Pyro4.naming.NameServer"]),
        ("from.pyro4", "PYRO:p4@127.0.0.1:5001", ["old", "tags"]),
        ("from.us", "PYRO:us@127.0.0.1:5002", ["new"]),
    ]))
