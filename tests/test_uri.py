"""URI parsing and formatting, as protocol notes 6.3 describes Pyro4's grammar."""

import pytest

from pyro_loops import URI, config, errors


@pytest.mark.parametrize("text, state", [
    ("PYRO:thing@127.0.0.1:32903", ("PYRO", "thing", None, "127.0.0.1", 32903)),
    ("pyro:thing@localhost:1", ("PYRO", "thing", None, "localhost", 1)),
    ("PyRo:obj_0123@host.example:9", ("PYRO", "obj_0123", None, "host.example", 9)),
    ("PYRO:x@[::1]:5555", ("PYRO", "x", None, "::1", 5555)),
    ("PYRO:x@[fe80::1:2]:7", ("PYRO", "x", None, "fe80::1:2", 7)),
    ("PYRO:obj@./u:/run/app.sock", ("PYRO", "obj", "/run/app.sock", None, None)),
    ("PYRO:obj@./u:\0abstract", ("PYRO", "obj", "\0abstract", None, None)),
    ("PYRONAME:some.name", ("PYRONAME", "some.name", None, None, None)),
    ("PYRONAME:some.name@nshost", ("PYRONAME", "some.name", None, "nshost", 9090)),
    ("PYRONAME:some.name@nshost:1234", ("PYRONAME", "some.name", None, "nshost", 1234)),
    ("PYRO:a@b@host:5", ("PYRO", "a", None, "b@host", 5)),
    ("PYRO:obj@my host:5", ("PYRO", "obj", None, "my host", 5)),
])
def test_uri_strings_parse_into_pyro4_state(text, state):
    assert URI(text).state == state


def test_pyrometa_tags_are_split_and_kept_as_a_set():
    uri = URI("PYROMETA:tag1,tag2,tag3@host:1234")
    assert uri.protocol == "PYROMETA"
    assert uri.object == {"tag1", "tag2", "tag3"}
    assert (uri.host, uri.port) == ("host", 1234)
    assert str(uri) == "PYROMETA:tag1,tag2,tag3@host:1234"


def test_name_server_port_default_follows_the_configuration():
    config.NS_PORT = 7777
    assert URI("PYRONAME:x@host").port == 7777


@pytest.mark.parametrize("text, message", [
    ("", "invalid uri"),
    ("thing@host:1", "invalid uri"),
    ("PYRO:thing", "invalid uri"),
    ("PYRO:thing@host", "invalid port in uri, port=None"),
    ("PYRO:thing@host:port", "invalid port in uri, port=port"),
    ("PYRO:with space@host:1", "invalid uri"),
    ("PYROX:thing@host:1", r"invalid uri \(protocol\)"),
    ("HTTP:thing@host:1", "invalid uri"),
    ("PYRO:x@[[::1]]:5", "enclosed in too many brackets"),
    ("PYRO:x@[fe80::1%eth0]:5", "numeric ipv6 address"),
    ("PYRO:x@[::1:5", "numeric ipv6 address"),
    ("PYRO:x@./u:", r"invalid uri \(location\)"),
    ("PYRO:x@./u:a:b", r"invalid uri \(location\)"),
])
def test_invalid_uris_are_refused_with_pyro4_messages(text, message):
    with pytest.raises(errors.PyroError, match=message):
        URI(text)


def test_non_string_argument_is_a_type_error():
    with pytest.raises(TypeError):
        URI(1234)


@pytest.mark.parametrize("text", [
    "PYRO:thing@127.0.0.1:32903", "PYRO:x@[::1]:5555", "PYRO:obj@./u:/run/app.sock", "PYRONAME:name",
    "PYRONAME:name@host:9090", "PYROMETA:a,b",
])
def test_str_gives_back_a_uri_that_parses_to_the_same_state(text):
    uri = URI(text)
    assert URI(str(uri)) == uri
    assert str(uri) == uri.asString()


def test_ipv6_host_gets_its_brackets_back_in_str_and_location():
    uri = URI("PYRO:x@[::1]:5555")
    assert str(uri) == "PYRO:x@[::1]:5555"
    assert uri.location == "[::1]:5555"


def test_copy_constructor_equality_and_hash():
    uri = URI("PYRO:thing@127.0.0.1:1")
    copy = URI(uri)
    assert copy == uri and copy is not uri and hash(copy) == hash(uri)
    assert uri != URI("PYRO:thing@127.0.0.1:2")
    assert uri != "PYRO:thing@127.0.0.1:1"  # a string is not a URI
    assert len({uri, copy}) == 1


def test_unix_socket_location_is_recognised():
    assert URI.isUnixsockLocation("./u:/tmp/sock")
    assert not URI.isUnixsockLocation("localhost:9090")


def test_uri_pickles_by_its_state():
    import pickle
    uri = URI("PYRO:thing@127.0.0.1:32903")
    assert pickle.loads(pickle.dumps(uri)) == uri
