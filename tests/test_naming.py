"""The name server: its storages, the NameServer object's remote API (called
directly and through our own proxies), the broadcast responder, locateNS and
resolve, and a single select loop hosting a name server next to an application.

Sockets are on 127.0.0.1 only, ports are picked by the OS, and broadcast
lookups are pointed at 127.0.0.1 by unicast.
"""

import re
import socket
import sqlite3
import subprocess
import sys
import textwrap

import pytest

import pyro_loops
from pyro_loops import errors
from pyro_loops._nsstorage import MemoryStorage, SqlStorage, open_storage
from pyro_loops._uri import URI
from pyro_loops.naming import NAMESERVER_METADATA, NameServer

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
    for bad in ("dbm:file", "sql:", "nonsense"):
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
