"""The opt-in ``Pyro4`` shim (``pyro_loops.compat``) and Pyro4's module layout in pyro_loops.

The shim changes a process's imports, and the real Pyro4 must never be
imported into the pytest process, so everything that installs it runs in a
subprocess.
"""

from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
import textwrap
import threading

import pytest

import pyro_loops
from pyro_loops.naming import type_meta
from _util import TIMEOUT, Peer, Pyro4Server, peer_env


def run_python(code: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=TIMEOUT * 2, env=peer_env(), cwd=cwd)


def test_script_run_through_the_shim_gets_pyro_loops_as_Pyro4_with_its_argv_and_folder(tmp_path):
    (tmp_path / "helper.py").write_text("VALUE = 'sibling module imported'\n")
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import sys
        import Pyro4, Pyro4.core, Pyro4.naming, Pyro4.errors, Pyro4.message, Pyro4.util, Pyro4.socketutil
        import pyro_loops
        from Pyro4.core import Daemon
        import helper
        print(Pyro4 is pyro_loops, Daemon is pyro_loops.Daemon, Pyro4.naming.__name__, __name__)
        print(sys.argv, helper.VALUE)
    """))
    done = subprocess.run([sys.executable, "-m", "pyro_loops.compat", str(tmp_path / "prog.py"), "a", "b"],
                          capture_output=True, text=True, timeout=TIMEOUT * 2, env=peer_env(), cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "True True pyro_loops.naming __main__",
        f"[{str(tmp_path / 'prog.py')!r}, 'a', 'b'] sibling module imported"]


def test_script_exit_status_passes_through_the_shim(tmp_path):
    (tmp_path / "prog.py").write_text("import sys\nsys.exit(3)\n")
    done = subprocess.run([sys.executable, "-m", "pyro_loops.compat", str(tmp_path / "prog.py")],
                          capture_output=True, text=True, timeout=TIMEOUT * 2, env=peer_env())
    assert done.returncode == 3


def test_name_server_runs_as_python_m_Pyro4_naming_through_the_shim():
    with Peer(["-m", "pyro_loops.compat", "-m", "Pyro4.naming", "-n", "127.0.0.1", "-p", "0", "-x"]) as ns:
        uri = ns.wait_for(r"URI = (PYRO:\S+)").group(1)
        with pyro_loops.Proxy(uri) as proxy:
            assert proxy.ping() is None
    assert "RuntimeWarning" not in ns.stderr()  # the module ran once, as __main__, not also imported


def test_echo_server_runs_as_python_m_Pyro4_test_echoserver_and_echoes():
    with Peer(["-m", "pyro_loops.compat", "-m", "Pyro4.test.echoserver"]) as server:
        uri = server.wait_for(r"echo uri: (PYRO:test\.echoserver@\S+)").group(1)
        server.wait_for(r"echoserver running")
        with pyro_loops.Proxy(uri) as echo:
            assert echo.echo([1, "two"]) == [1, "two"]
            assert list(echo.generator()) == ["one", "two", "three"]
            echo.shutdown()
        server.proc.wait(TIMEOUT)
        assert server.proc.returncode == 0


def test_install_refuses_when_the_real_Pyro4_is_already_imported():
    done = run_python("""
        import Pyro4, pyro_loops.compat
        try:
            pyro_loops.compat.install()
        except ImportError as exc:
            print("refused:", exc)
    """)
    assert done.stdout.startswith("refused: the real Pyro4 is already imported"), done.stderr


def test_without_the_shim_import_Pyro4_is_the_real_Pyro4():
    done = run_python("import Pyro4, pyro_loops; print(Pyro4.__name__ == 'Pyro4', Pyro4 is pyro_loops)")
    assert done.stdout.split() == ["True", "False"], done.stderr


def test_uninstall_gives_the_name_back_to_the_real_Pyro4():
    done = run_python("""
        import pyro_loops, pyro_loops.compat
        pyro_loops.compat.install()
        import Pyro4.core
        shimmed = Pyro4 is pyro_loops
        pyro_loops.compat.uninstall()
        import Pyro4
        print(shimmed, Pyro4 is pyro_loops, pyro_loops.core.__spec__.name)
    """)
    assert done.stdout.split() == ["True", "False", "pyro_loops.core"], done.stderr


def test_a_Pyro4_module_pyro_loops_lacks_fails_to_import_saying_so():
    done = run_python("""
        import pyro_loops.compat
        pyro_loops.compat.install()
        try:
            import Pyro4.utils.flame
        except ImportError as exc:
            print(exc)
    """)
    assert "pyro_loops has no 'pyro_loops.utils'" in done.stdout, done.stderr


def test_import_pyro_loops_as_Pyro4_has_Pyro4s_submodules():
    import pyro_loops as Pyro4

    assert Pyro4.core.Daemon is Pyro4.Daemon
    assert Pyro4.core.Proxy is Pyro4.Proxy
    assert Pyro4.core.URI is Pyro4.URI
    assert Pyro4.core.current_context is Pyro4.current_context
    assert Pyro4.message.MSG_INVOKE == 4


def test_a_Pyro4_core_name_not_built_yet_says_so():
    import pyro_loops.core

    missing = [name for name in pyro_loops.core._LATER if not hasattr(pyro_loops, name)]
    for name in missing:
        try:
            getattr(pyro_loops.core, name)
        except AttributeError as exc:
            assert "not available in pyro_loops yet" in str(exc)
        else:
            raise AssertionError(f"pyro_loops.core.{name} should be missing")
    try:
        pyro_loops.core.no_such_name
    except AttributeError as exc:
        assert "has no attribute 'no_such_name'" in str(exc)


class _Base:
    pass


class _Thing(_Base):
    pass


def test_type_meta_names_the_class_and_its_bases_but_not_builtins():
    expected = {f"class:{__name__}._Thing", f"class:{__name__}._Base"}
    assert type_meta(_Thing) == expected
    assert type_meta(_Thing()) == expected
    assert type_meta(_Thing, prefix="") == {f"{__name__}._Thing", f"{__name__}._Base"}


def test_finding_a_Pyro4_module_does_not_import_it_so_runpy_runs_the_only_copy():
    done = run_python("""
        import importlib.util, sys
        import pyro_loops.compat
        pyro_loops.compat.install()
        spec = importlib.util.find_spec("Pyro4.naming")
        print(spec.name, "pyro_loops.naming" in sys.modules, "Pyro4.naming" in sys.modules)
    """)
    assert done.stdout.split() == ["Pyro4.naming", "False", "False"], done.stderr


def test_util_get_serializer_speaks_Pyro4s_method_names_and_compresses_large_payloads():
    from pyro_loops import errors, util

    serpent = util.get_serializer("serpent")
    data, compressed = serpent.serializeData(list(range(500)), compress=True)
    assert compressed and serpent.deserializeData(data, compressed) == list(range(500))
    data, compressed = serpent.serializeCall("obj", "method", (1, 2), {"k": 3})
    assert not compressed and serpent.deserializeCall(data) == ("obj", "method", (1, 2), {"k": 3})
    assert util.get_serializer_by_id(serpent.serializer_id) == serpent
    try:
        util.get_serializer("no-such-serializer")
    except errors.SerializeError as exc:
        assert "no-such-serializer" in str(exc)
    else:
        raise AssertionError("an unknown serializer must be refused")


def test_util_has_Pyro4s_exposure_helpers():
    from pyro_loops import util

    @pyro_loops.expose
    class Exposed:
        def method(self):
            return 1

        def _hidden(self):
            return 2

    assert util.is_private_attribute("_hidden") and not util.is_private_attribute("__dunder__")
    assert util.get_exposed_members(Exposed())["methods"] == {"method"}
    util.reset_exposed_members(Exposed)


# --- Pyro4's thread-based asynchronous proxy, asynchronous batch and Future -------------------------------

def test_async_proxy_call_returns_a_future_result_and_runs_on_a_connection_of_its_own():
    with Pyro4Server() as server, pyro_loops.Proxy(server.uri) as proxy:
        proxy._pyroAsync()
        slow = proxy.sleep(5)
        quick = proxy.add(1, 2)
        assert isinstance(slow, pyro_loops.FutureResult)
        assert quick.wait(TIMEOUT) and quick.value == 3
        assert not slow.ready  # the quick call did not queue behind the slow one
        assert slow.wait(TIMEOUT) and slow.value == 5
        pyro_loops.asyncproxy(proxy, False)
        assert proxy.add(2, 3) == 5


def test_async_call_failure_reaches_iferror_and_value_skipping_the_then_chain():
    seen: list = []
    with Pyro4Server() as server, pyro_loops.Proxy(server.uri) as proxy:
        pyro_loops.asyncproxy(proxy)
        result = proxy.divide(1, 0).iferror(seen.append).then(seen.append)
        assert result.wait(TIMEOUT)
        with pytest.raises(ZeroDivisionError):
            result.value
        assert len(seen) == 1 and isinstance(seen[0], ZeroDivisionError)
        late: list = []
        result.iferror(late.append)  # a handler set after the failure arrived still hears of it
        assert len(late) == 1 and isinstance(late[0], ZeroDivisionError)


def test_async_then_chain_passes_each_value_on_and_runs_at_once_when_set_late():
    with Pyro4Server() as server, pyro_loops.Proxy(server.uri) as proxy:
        proxy._pyroAsync(asynchronous=True)
        result = proxy.add(5, 6).then(lambda v, extra: v + extra, 10).then(lambda v, extra=0: v * 2, extra=1)
        assert result.value == 42
        assert result.then(str).value == "42"  # already there: runs in the caller's thread, at once


def test_a_failing_then_function_becomes_the_result_and_reaches_iferror():
    seen: list = []
    with Pyro4Server() as server, pyro_loops.Proxy(server.uri) as proxy:
        proxy._pyroAsync()
        result = proxy.add(1, 1).iferror(seen.append).then(lambda v: v // 0).then(seen.append)
        with pytest.raises(ZeroDivisionError):
            result.value
        assert [type(error) for error in seen] == [ZeroDivisionError]


def test_async_batch_returns_a_future_whose_value_iterates_the_results_and_keeps_its_calls():
    with Pyro4Server() as server, pyro_loops.Proxy(server.uri) as proxy:
        calls = pyro_loops.batch(proxy)
        calls.add(1, 2)
        calls.divide(9, 3)
        result = calls(asynchronous=True)
        assert isinstance(result, pyro_loops.FutureResult)
        assert list(result.then(lambda values: [v * 10 for v in values]).value) == [30, 30]
        assert list(calls()) == [3, 3]  # as in Pyro4, an asynchronous batch leaves its calls recorded
        assert list(calls()) == []
        calls.divide(1, 1)
        calls.divide(1, 0)
        failing = calls(asynchronous=True)
        with pytest.raises(ZeroDivisionError):
            list(failing.value)
        with pytest.raises(pyro_loops.errors.PyroError, match="make no sense"):
            calls(oneway=True, asynchronous=True)


def test_copy_of_a_proxy_subclass_keeps_its_class_and_asynchronous_mode():
    class Mine(pyro_loops.Proxy):
        pass

    proxy = Mine("PYRO:thing@127.0.0.1:9")
    proxy._pyroAsync()
    twin = copy.copy(proxy)
    assert type(twin) is Mine and twin._pyroAsyncCalls
    assert twin._pyroConnection is None


def test_future_runs_its_function_and_chain_once_in_another_thread():
    threads: list = []

    def add(a, b, extra=0):
        threads.append(threading.current_thread())
        return a + b + extra

    future = pyro_loops.Future(add).then(add, 10).then(add, 20, extra=1)
    result = future(5, 6)
    assert result.value == 42
    assert threading.current_thread() not in threads
    with pytest.raises(RuntimeError, match="already been evaluated"):
        future(1, 2)
    assert not future.delay(1) and not future.cancel()


def test_future_failure_goes_to_iferror_and_value():
    seen: list = []
    result = pyro_loops.Future(lambda: 1 // 0).then(seen.append).iferror(seen.append)()
    with pytest.raises(ZeroDivisionError):
        result.value
    assert [type(error) for error in seen] == [ZeroDivisionError]


def test_future_cancelled_during_its_delay_never_runs_and_says_cancelled():
    ran: list = []
    future = pyro_loops.Future(ran.append)
    assert future.delay(TIMEOUT * 10)
    result = future("ran")
    assert not result.wait(0.05)
    assert future.cancel()
    assert result.wait(TIMEOUT)
    with pytest.raises(RuntimeError, match="cancelled"):
        result.value
    assert ran == []
    cancelled = pyro_loops.Future(ran.append)
    cancelled.cancel()
    with pytest.raises(RuntimeError, match="cancelled"):
        cancelled("ran")


def test_future_delay_holds_the_call_until_it_is_shortened():
    future = pyro_loops.Future(lambda: "done")
    future.delay(TIMEOUT * 10)
    result = future()
    assert not result.wait(0.05)
    assert future.delay(0)  # still waiting: the new delay counts from now
    assert result.wait(TIMEOUT) and result.value == "done"


# --- the blocking proxy's Pyro4 behaviour ---------------------------------------------------------------

def test_without_retries_a_call_on_a_connection_the_daemon_closed_raises_and_the_next_reconnects():
    first = Pyro4Server()
    proxy = pyro_loops.Proxy(first.uri)
    try:
        assert proxy._pyroMaxRetries == 0 and proxy.add(1, 1) == 2
        first.stop()
        with Pyro4Server(port=first.port) as second:
            with pytest.raises(pyro_loops.errors.ConnectionClosedError, match="receiving: not enough data"):
                proxy.add(1, 2)
            assert proxy._pyroConnection is None
            assert proxy.add(1, 3) == 4  # a new connection, to the daemon now there
            second.stop()
            with Pyro4Server(port=first.port):
                proxy._pyroMaxRetries = 1
                assert proxy.add(1, 4) == 5  # with a retry the call goes through on a new connection
    finally:
        first.stop()
        proxy._pyroRelease()


@contextlib.contextmanager
def served(obj: object):
    """A pyro_loops daemon on 127.0.0.1 serving ``obj`` from ``requestLoop`` in a thread; yields its URI."""
    daemon = pyro_loops.Daemon(host="127.0.0.1")
    uri = daemon.register(obj, "thing")
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    try:
        yield uri
    finally:
        daemon.shutdown()
        thread.join(TIMEOUT)
        daemon.close()


@pyro_loops.expose
class Dunders:
    def __dunder__(self):
        return "yep"

    def __len__(self):
        return 200

    def plain(self):
        return "plain"


def test_exposed_dunder_methods_are_called_remotely_and_python_protocol_names_stay_local():
    with served(Dunders()) as uri, pyro_loops.Proxy(uri) as proxy:
        assert proxy.__dunder__() == "yep"
        assert proxy.__len__() == 200  # len(proxy) is Python's own lookup, on the class: not remote
        with pytest.raises(AttributeError, match="no exposed attribute or method '__nothing__'"):
            proxy.__nothing__
        for local in ("__getnewargs__", "__getnewargs_ex__", "__deepcopy__", "__getstate_for_dict__"):
            with pytest.raises(AttributeError):
                getattr(proxy, local)  # Python's copy and pickle protocols ask for these: never remote
        assert copy.deepcopy(proxy)._pyroUri == proxy._pyroUri


def test_a_request_over_max_message_size_is_refused_before_it_is_sent():
    echoed: list = []

    @pyro_loops.expose
    class Echo:
        def echo(self, value):
            echoed.append(value)
            return value

    with served(Echo()) as uri, pyro_loops.Proxy(uri) as proxy:
        assert proxy.echo("small") == "small"
        pyro_loops.config.MAX_MESSAGE_SIZE = 2500  # changed while the proxy is connected, as Pyro4 allows
        with pytest.raises(pyro_loops.errors.MessageTooLargeError, match=r"max message size exceeded \(\d+ where max=2500\)"):
            proxy.echo("x" * 10000)
        assert proxy.echo("after") == "after"  # the connection is still good
    assert echoed == ["small", "after"]


@pytest.mark.parametrize("serializer", ["dill", "cloudpickle"])
def test_dill_and_cloudpickle_carry_functions_to_a_Pyro4_daemon_that_accepts_them(serializer):
    pytest.importorskip(serializer)
    # a lambda of no importable module (the daemon cannot import this test file): sent by value,
    # which is beyond what pickle can write
    add_40 = eval("lambda value: value + 40", {})
    with Pyro4Server(PYRO_SERIALIZERS_ACCEPTED=f"serpent,{serializer}") as server, \
            pyro_loops.Proxy(server.uri) as proxy:
        proxy._pyroSerializer = serializer
        echoed = proxy.echo(add_40)
        assert echoed(2) == 42
        with pytest.raises(ZeroDivisionError):
            proxy.divide(1, 0)  # exceptions come back through it too


def test_dill_without_its_package_says_which_package_to_install():
    done = run_python("""
        import sys
        sys.modules["dill"] = None  # as if dill were not installed
        import pyro_loops
        try:
            pyro_loops._serializers.get_serializer("dill")
        except pyro_loops.errors.SerializeError as exc:
            print(exc)
    """)
    assert done.stdout.strip() == ("serializer 'dill' needs the dill package, which is not installed "
                                   "(pip install dill)"), done.stderr


def test_annotations_set_on_current_context_go_with_the_next_call_and_the_reply_s_come_back_there():
    @pyro_loops.expose
    class Annotated:
        def seen(self):
            pyro_loops.current_context.response_annotations = {"RSPN": b"reply annotation"}
            return {key: value for key, value in pyro_loops.current_context.annotations.items() if key == "XYZZ"}

        @pyro_loops.oneway
        def fire(self):
            pass

    context = pyro_loops.current_context
    with served(Annotated()) as uri, pyro_loops.Proxy(uri) as proxy:
        context.annotations = {"XYZZ": b"for the next call"}
        assert proxy.seen() == {"XYZZ": b"for the next call"}
        assert context.response_annotations["RSPN"] == b"reply annotation"
        assert context.annotations == {}  # taken by that call, as in Pyro4
        assert proxy.seen() == {}
        proxy.fire()
        assert context.response_annotations == {}  # a oneway call has no reply


def test_the_proxy_connection_offers_Pyro4s_connection_attributes_and_answers_a_ping():
    import pyro_loops.message

    with Pyro4Server() as server, pyro_loops.Proxy(server.uri) as proxy:
        proxy._pyroBind()
        connection = proxy._pyroConnection
        assert connection.objectId == "service"
        assert connection.getpeercert() is None  # not TLS
        pyro_loops.message.Message.ping(connection)  # a real Pyro4 daemon answers it
        assert proxy.add(1, 2) == 3  # the ping left nothing behind on the connection
        server.stop()
        with pytest.raises(pyro_loops.errors.ConnectionClosedError):
            pyro_loops.message.Message.ping(connection)


def test_message_recv_reads_one_message_and_not_a_byte_of_the_next():
    import socket as socketlib

    import pyro_loops.message
    from pyro_loops import _wire

    left, right = socketlib.socketpair()
    with left, right:
        first = _wire.Message(_wire.MSG_RESULT, b"first", 1, 0, 7, {"XYZZ": b"note"})
        second = _wire.Message(_wire.MSG_PING, b"ping", 42, 0, 8)
        left.sendall(_wire.encode(first, b"key") + _wire.encode(second, b"key"))
        got = pyro_loops.message.Message.recv(right, [_wire.MSG_RESULT], hmac_key=b"key")
        assert (got.type, bytes(got.data), got.seq, got.annotations["XYZZ"]) == (5, b"first", 7, b"note")
        with pytest.raises(pyro_loops.errors.ProtocolError, match="invalid msg type 6"):
            pyro_loops.message.Message.recv(right, [_wire.MSG_RESULT], hmac_key=b"key")


def test_a_stream_on_a_released_proxy_raises_connection_closed_as_in_Pyro4():
    with Pyro4Server() as server, pyro_loops.Proxy(server.uri) as proxy:
        ticks = proxy.ticker(3, "released")
        assert next(ticks) is not None
        proxy._pyroRelease()
        with pytest.raises(pyro_loops.errors.ConnectionClosedError, match="has been closed"):
            next(ticks)
        twin = copy.copy(proxy)
        assert twin._pyroUri == proxy._pyroUri and twin._pyroUri is not proxy._pyroUri
