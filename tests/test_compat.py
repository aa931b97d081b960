"""The opt-in ``Pyro4`` shim (``pyro_loops.compat``) and Pyro4's module layout in pyro_loops.

The shim changes a process's imports, and the real Pyro4 must never be
imported into the pytest process, so everything that installs it runs in a
subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyro_loops
from pyro_loops.naming import type_meta
from _util import TIMEOUT, Peer, peer_env


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
