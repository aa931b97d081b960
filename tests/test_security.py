"""Security (issue 6): where the daemon listens by default, the warning for
all-interface binding without a key, HMAC against a real Pyro4 4.82 in both
directions, a handshake token through ``validateHandshake``, which members a
caller can reach by any message a hand-written client can send, and pickle
only when the application opts in.

Every refusal is checked twice: the peer is told (an error naming the reason),
and our side logs it, because a refused intruder nobody hears of is half a
defence. Pyro4 runs in its own processes (tests/_util.py); sockets are on
127.0.0.1, except that one test binds 0.0.0.0 for an instant, accepting nothing,
to see the warning.
"""

from __future__ import annotations

import logging

import pytest

from pyro_loops import Daemon, Proxy, config, errors, expose
from pyro_loops import _wire
from pyro_loops._serializers import get_serializer
from _util import PeerError, Pyro4Server, pyro4_client, wait_until
from test_daemon import RawClient, proxy_for, serving

SERPENT = get_serializer("serpent")


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="pyro_loops")
    return caplog


def logged(logs, reason: str) -> bool:
    """Whether one INFO-or-worse line names a client on 127.0.0.1 together with ``reason``."""
    return any(r.levelno >= logging.INFO and "from ('127.0.0.1', " in r.getMessage() and reason in r.getMessage()
               for r in logs.records)


@pytest.fixture(scope="module")
def pyro4():
    """A real Pyro4 4.82 client process, shared by the module's tests."""
    client = pyro4_client()
    yield client
    client.stop()


@expose
class Service:
    def echo(self, value):
        return value


# --- where the daemon listens ------------------------------------------------------------------------


def test_daemon_binds_to_localhost_unless_told_otherwise():
    with Daemon() as daemon:
        address, port = daemon.sock.getsockname()[:2]
        assert address in ("127.0.0.1", "::1")
        assert daemon.locationStr == f"localhost:{port}"
        assert daemon.uriFor("Pyro.Daemon").host == "localhost"


class NullWatcher:
    """A host loop that watches nothing: the all-interface daemon below never accepts."""

    def add(self, sock, events):
        pass

    def modify(self, sock, events):
        pass

    def remove(self, sock):
        pass

    def set_deadline(self, when):
        pass

    def detached(self):
        pass


def all_interface_warnings(logs) -> list[str]:
    return [r.getMessage() for r in logs.records
            if r.levelno == logging.WARNING and "all interfaces" in r.getMessage()]


@pytest.mark.parametrize("host, key, warned", [
    ("0.0.0.0", None, True),
    ("", None, True),
    ("0.0.0.0", b"a key", False),
    ("127.0.0.1", None, False),
])
def test_serving_on_all_interfaces_without_an_hmac_key_logs_a_warning(logs, host, key, warned):
    daemon = Daemon(host=host)
    try:
        assert all_interface_warnings(logs) == []  # not yet: a key may still be set before serving
        daemon._pyroHmacKey = key
        daemon.attach_watcher(NullWatcher())
    finally:
        daemon.close()
    assert bool(all_interface_warnings(logs)) == warned, logs.text
    if warned:
        assert "_pyroHmacKey" in all_interface_warnings(logs)[0]  # it says what to do about it


# --- HMAC against a real Pyro4 4.82, both ways ---------------------------------------------------------


PYRO4_CALL = """
p = Pyro4.Proxy(uri)
p._pyroTimeout = 10
p._pyroHmacKey = key and key.encode()
p.echo(41)
"""


@pytest.fixture(params=["multiplex", "thread"])
def keyed_daemon(request):
    """Our daemon serving Service as "svc"; the test gives it a key (or none) before calls arrive."""
    config.SERVERTYPE = request.param
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Service(), "svc")
    with serving(daemon):
        yield daemon, str(uri)


def test_pyro4_client_with_the_right_hmac_key_is_served(pyro4, keyed_daemon):
    daemon, uri = keyed_daemon
    daemon._pyroHmacKey = b"s3cret"
    assert pyro4.run(PYRO4_CALL, uri=uri, key="s3cret") == 41


@pytest.mark.parametrize("daemon_key, client_key, reason", [
    (b"s3cret", "wrong", "message hmac mismatch"),
    (b"s3cret", None, "hmac key config not symmetric"),
    (None, "s3cret", "hmac key config not symmetric"),
])
def test_pyro4_client_with_a_wrong_or_missing_hmac_key_is_refused_and_logged(
        pyro4, keyed_daemon, logs, daemon_key, client_key, reason):
    daemon, uri = keyed_daemon
    daemon._pyroHmacKey = daemon_key
    with pytest.raises(PeerError) as refused:
        pyro4.run(PYRO4_CALL, uri=uri, key=client_key)
    assert "Pyro4.errors.PyroError" in refused.value.mro and "hmac" in refused.value.str
    # The loop thread logs as it closes the connection, which may be just after the client saw the refusal.
    wait_until(lambda: logged(logs, reason))


def test_pyro4_client_whose_key_changes_after_the_handshake_is_cut_off_and_logged(pyro4, keyed_daemon, logs):
    daemon, uri = keyed_daemon
    daemon._pyroHmacKey = b"s3cret"
    assert pyro4.run(PYRO4_CALL, uri=uri, key="s3cret") == 41
    with pytest.raises(PeerError) as cut_off:
        pyro4.run("p._pyroHmacKey = b'forged'\np.echo(42)")
    assert cut_off.value.type == "Pyro4.errors.ConnectionClosedError"
    wait_until(lambda: logged(logs, "message hmac mismatch"))


@pytest.fixture(scope="module")
def pyro4_daemons():
    """Real Pyro4 4.82 daemons serving peers/service.Service: with the key "s3cret", and without a key."""
    keyed, open_ = Pyro4Server(hmac="s3cret"), Pyro4Server()
    yield {"s3cret": keyed.uri, None: open_.uri}
    keyed.stop()
    open_.stop()


@pytest.mark.parametrize("daemon_key, proxy_key, served", [
    ("s3cret", b"s3cret", True),
    ("s3cret", b"wrong", False),
    ("s3cret", None, False),
    (None, b"s3cret", False),
])
def test_our_proxy_and_a_pyro4_daemon_agree_only_on_the_same_hmac_key(pyro4_daemons, daemon_key, proxy_key, served):
    with proxy_for(pyro4_daemons[daemon_key]) as proxy:
        proxy._pyroHmacKey = proxy_key
        if served:
            assert proxy.echo(41) == 41
        else:
            with pytest.raises(errors.PyroError, match="hmac") as refused:
                proxy.echo(41)
            assert isinstance(refused.value, (errors.SecurityError, errors.CommunicationError))
            assert proxy._pyroConnection is None


# --- a handshake token (validateHandshake) ---------------------------------------------------------------


class Abort(BaseException):
    """A BaseException subclass other than KeyboardInterrupt and SystemExit."""


class TokenDaemon(Daemon):
    """Lets in only clients whose handshake data is the token."""

    def validateHandshake(self, conn, data):  # noqa: N802 - Pyro4's name
        if data == "abort":
            raise Abort("validateHandshake gave up")
        if data != "open sesame":
            raise errors.SecurityError(f"handshake token required, got {data!r}")
        return {"welcome": conn.addr[1]}


class HandshakeSeeingProxy(Proxy):
    def _pyroValidateHandshake(self, response):  # noqa: N802 - Pyro4's name
        self._welcome = response


@pytest.fixture(params=["multiplex", "thread"])
def token_daemon(request):
    config.SERVERTYPE = request.param
    daemon = TokenDaemon(host="127.0.0.1")
    uri = daemon.register(Service(), "svc")
    with serving(daemon):
        yield str(uri)


def test_our_proxy_with_the_token_is_let_in_and_sees_the_daemons_answer(token_daemon):
    proxy = HandshakeSeeingProxy(token_daemon)
    proxy._pyroTimeout = 10
    proxy._pyroHandshake = "open sesame"
    with proxy:
        assert proxy.echo(1) == 1
        assert proxy._welcome == {"welcome": proxy._pyroConnection.getsockname()[1]}


@pytest.mark.parametrize("token", [None, "hello", "open sesame?"])
def test_our_proxy_without_the_token_is_refused_with_the_reason_and_logged(token_daemon, logs, token):
    with proxy_for(token_daemon) as proxy:
        if token is not None:
            proxy._pyroHandshake = token
        with pytest.raises(errors.CommunicationError, match="rejected: handshake token required") as refused:
            proxy.echo(1)
        assert not isinstance(refused.value, errors.TimeoutError)
    shown = repr(token if token is not None else "hello")
    wait_until(lambda: logged(logs, f"handshake token required, got {shown}"))


@pytest.mark.parametrize("token, served", [("open sesame", True), ("guess", False)])
def test_pyro4_proxy_needs_the_token_too(pyro4, token_daemon, logs, token, served):
    code = "p = Pyro4.Proxy(uri)\np._pyroTimeout = 10\np._pyroHandshake = token\np.echo(7)"
    if served:
        assert pyro4.run(code, uri=token_daemon, token=token) == 7
        return
    with pytest.raises(PeerError) as refused:
        pyro4.run(code, uri=token_daemon, token=token)
    assert refused.value.type == "Pyro4.errors.CommunicationError"
    assert "rejected: handshake token required, got 'guess'" in refused.value.str
    wait_until(lambda: logged(logs, "handshake token required, got 'guess'"))


def test_validate_handshake_raising_a_base_exception_refuses_only_that_client(token_daemon):
    with proxy_for(token_daemon) as proxy:
        proxy._pyroTimeout = 3
        proxy._pyroHandshake = "abort"
        with pytest.raises(errors.CommunicationError, match="rejected: validateHandshake gave up"):
            proxy.echo(1)
    with proxy_for(token_daemon) as proxy:
        proxy._pyroTimeout = 3
        proxy._pyroHandshake = "open sesame"
        assert proxy.echo(2) == 2


# --- only exposed members are reachable ------------------------------------------------------------------


class Vault:
    """Exposes open(), __len__ and two properties; everything else must stay out of reach.

    Whatever runs records itself in ``touched``, so a refused member that ran anyway shows.
    """

    def __init__(self):
        self.secret = "s3cret"                    # a plain attribute
        self.callback = lambda: "plain callable"  # a plain attribute holding a function
        self.touched = []
        self._writable = 0

    @expose
    def open(self):
        return "open"

    @expose
    def __len__(self):  # an exposable dunder: reachable, the positive control
        return 3

    def unexposed(self):
        self.touched.append("unexposed")

    def _private(self):
        self.touched.append("_private")

    def __mangled(self):
        self.touched.append("__mangled")

    @property
    def hidden(self):
        self.touched.append("hidden getter")
        return "hidden"

    @hidden.setter
    def hidden(self, value):
        self.touched.append("hidden setter")

    @expose
    @property
    def readonly(self):
        return "ro"

    @expose
    @property
    def writable(self):
        return self._writable

    @writable.setter
    def writable(self, value):
        self._writable = value


@pytest.fixture(params=["multiplex", "thread"])
def vault(request):
    """(vault object, connected RawClient) for a daemon serving a Vault as "vault"."""
    config.SERVERTYPE = request.param
    daemon = Daemon(host="127.0.0.1")
    obj = Vault()
    uri = daemon.register(obj, "vault")
    with serving(daemon), RawClient(uri.port) as client:
        client.handshake()
        yield obj, client
    assert obj.secret == "s3cret" and obj.touched == [], "a refused member ran or changed state"


def invoke(client: RawClient, method: str, vargs, kwargs, flags: int = 0, obj: str = "vault"):
    """Send one hand-made INVOKE; returns (is_exception, value) of its reply."""
    client.send_message(_wire.MSG_INVOKE, SERPENT.dumps_call(obj, method, vargs, kwargs), 1, flags, 1)
    reply = client.read_message()
    assert (reply.type, reply.seq) == (_wire.MSG_RESULT, 1)
    return bool(reply.flags & _wire.FLAGS_EXCEPTION), SERPENT.loads(reply.data), reply.flags


@pytest.mark.parametrize("obj, method, text", [
    ("vault", "_private", "private"),
    ("vault", "_Vault__mangled", "private"),
    ("vault", "__init__", "private"),
    ("vault", "__class__", "private"),
    ("vault", "__reduce_ex__", "private"),
    ("vault", "__getattribute__", "private"),
    ("vault", "__setattr__", "private"),
    ("vault", "_pyroDaemon", "private"),
    ("vault", "__dict__", "unexposed"),
    ("vault", "unexposed", "unexposed"),
    ("vault", "secret", "unexposed"),
    ("vault", "callback", "unexposed"),
    ("vault", "open.__globals__", "open.__globals__"),
    ("Pyro.Daemon", "daemon", "unexposed"),
    ("Pyro.Daemon", "daemon.shutdown", "daemon.shutdown"),
    ("Pyro.Daemon", "__init__", "private"),
])
def test_normal_call_reaches_no_private_dunder_unexposed_or_plain_member(vault, obj, method, text):
    _, client = vault
    is_error, exc, _ = invoke(client, method, (), {}, obj=obj)
    assert is_error and isinstance(exc, AttributeError) and text in str(exc), exc
    assert invoke(client, "__len__", (), {}) == (False, 3, 0)
    assert invoke(client, "open", (), {}) == (False, "open", 0)


@pytest.mark.parametrize("method", ["unexposed", "_private", "__init__", "secret"])
def test_oneway_call_to_a_member_out_of_reach_does_not_run_it(vault, method):
    _, client = vault
    client.send_message(_wire.MSG_INVOKE, SERPENT.dumps_call("vault", method, (), {}), 1, _wire.FLAGS_ONEWAY, 1)
    assert invoke(client, "open", (), {}) == (False, "open", 0)  # the one reply is this call's


@pytest.mark.parametrize("name", ["secret", "callback", "hidden", "_private", "_writable", "__dict__", "__class__",
                                  "open", "_pyroDaemon", "touched"])
def test_getattr_message_reads_only_exposed_properties(vault, name):
    _, client = vault
    is_error, exc, _ = invoke(client, "__getattr__", (name,), None)
    assert is_error and isinstance(exc, AttributeError), exc
    assert f"unexposed or unknown remote attribute '{name}'" in str(exc)
    assert invoke(client, "__getattr__", ("readonly",), None) == (False, "ro", 0)


@pytest.mark.parametrize("name, value", [
    ("secret", "stolen"), ("hidden", 1), ("readonly", "rw"), ("_writable", 99), ("__class__", "Service"),
    ("_pyroId", "vault2"), ("touched", ["replaced"]), ("__dict__", {}),
])
def test_setattr_message_writes_only_exposed_settable_properties(vault, name, value):
    obj, client = vault
    is_error, exc, _ = invoke(client, "__setattr__", (name, value), None)
    assert is_error and isinstance(exc, AttributeError), exc
    assert type(obj) is Vault and obj._pyroId == "vault" and obj._writable == 0
    assert invoke(client, "__setattr__", ("writable", 5), None) == (False, None, 0)
    assert obj._writable == 5


@pytest.mark.parametrize("method", ["_private", "__init__", "unexposed", "secret", "__getattr__", "__class__"])
def test_crafted_batch_naming_a_member_out_of_reach_is_refused_as_a_whole(vault, method):
    _, client = vault
    calls = [("open", (), {}), (method, (), {}), ("open", (), {})]
    is_error, exc, flags = invoke(client, "<batch>", calls, None, _wire.FLAGS_BATCH)
    assert is_error and isinstance(exc, AttributeError) and method in str(exc), exc
    assert not flags & _wire.FLAGS_BATCH  # a plain exception reply, as Pyro4 gives
    is_error, results, _ = invoke(client, "<batch>", [("open", (), {}), ("__len__", (), {})], None,
                                  _wire.FLAGS_BATCH)
    assert (is_error, results) == (False, ["open", 3])


@pytest.mark.parametrize("method, reachable", [
    ("unexposed", True), ("_private", False), ("__init__", False), ("__class__", False), ("_pyroDaemon", False),
])
def test_without_require_expose_public_methods_open_up_but_private_names_never(vault, method, reachable):
    obj, client = vault
    config.REQUIRE_EXPOSE = False
    is_error, result, _ = invoke(client, method, (), {})
    if reachable:
        assert (is_error, result, obj.touched) == (False, None, [method])
        obj.touched.clear()
    else:
        assert is_error and isinstance(result, AttributeError) and "private" in str(result)


# --- pickle only when the application opts in --------------------------------------------------------------


@pytest.fixture
def served_uri():
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Service(), "svc")
    with serving(daemon):
        yield str(uri)


def test_our_proxy_speaking_pickle_is_refused_unless_the_daemon_opts_in(served_uri, logs):
    config.SERIALIZER = "pickle"
    with proxy_for(served_uri) as proxy:
        with pytest.raises(errors.CommunicationError, match="serializer that is not accepted: 4"):
            proxy.echo(1)
    wait_until(lambda: logged(logs, "not accepted: 4"))
    config.SERIALIZERS_ACCEPTED = config.SERIALIZERS_ACCEPTED | {"pickle"}
    with proxy_for(served_uri) as proxy:
        assert proxy.echo({1, 2}) == {1, 2}


def test_pyro4_client_speaking_pickle_is_refused_unless_the_daemon_opts_in(pyro4, served_uri, logs):
    code = "Pyro4.config.SERIALIZER = 'pickle'\np = Pyro4.Proxy(uri)\np._pyroTimeout = 10\np.echo((3, 'x'))"
    with pytest.raises(PeerError) as refused:
        pyro4.run(code, uri=served_uri)
    assert refused.value.type == "Pyro4.errors.CommunicationError"
    assert "serializer that is not accepted: 4" in refused.value.str
    wait_until(lambda: logged(logs, "not accepted: 4"))
    config.SERIALIZERS_ACCEPTED = config.SERIALIZERS_ACCEPTED | {"pickle"}
    assert pyro4.run(code, uri=served_uri) == (3, "x")
