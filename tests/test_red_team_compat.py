"""Red-team pass over the ``Pyro4`` import shim (``python -m pyro_loops.compat``).

Every program here runs in a subprocess: the shim changes a process's imports,
and the real Pyro4 (installed as a test peer) must never enter the pytest process.
Each test is one attack; its name says what the shim does about it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _util import TIMEOUT, peer_env


def shim(*args: str, cwd: Path | str = "/", code: str | None = None) -> subprocess.CompletedProcess:
    """``python -m pyro_loops.compat ARGS`` (or plain ``python ARGS`` with ``code=None`` unused)."""
    return subprocess.run([sys.executable, "-m", "pyro_loops.compat", *args], capture_output=True, text=True,
                          timeout=TIMEOUT * 2, env=peer_env(), cwd=cwd)


def plain(*args: str, cwd: Path | str = "/") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT * 2,
                          env=peer_env(), cwd=cwd)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# --- what the shim survives ----------------------------------------------------------------------


def test_import_forms_of_a_ported_script_all_give_pyro_loops(tmp_path):
    write(tmp_path, "prog.py", """
        import Pyro4.core as core
        from Pyro4 import naming
        from Pyro4.core import Proxy
        import Pyro4.errors
        import pyro_loops
        print(core is pyro_loops.core, naming is pyro_loops.naming, Proxy is pyro_loops.Proxy,
              Pyro4.errors is pyro_loops.errors)
    """)
    done = shim(str(tmp_path / "prog.py"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"] * 4


def test_a_subprocess_of_a_shimmed_script_imports_the_real_Pyro4(tmp_path):
    write(tmp_path, "prog.py", """
        import subprocess, sys
        import Pyro4
        child = subprocess.run([sys.executable, "-c", "import Pyro4; print(Pyro4.__name__, Pyro4.__version__)"],
                               capture_output=True, text=True)
        print(Pyro4.__name__, child.stdout.strip())
    """)
    done = shim(str(tmp_path / "prog.py"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pyro_loops", "Pyro4", "4.82"]


def test_main_guard_and_pickling_of_classes_defined_in_the_script(tmp_path):
    write(tmp_path, "prog.py", """
        import pickle
        import Pyro4

        class Thing:
            def __init__(self, n):
                self.n = n

        if __name__ == "__main__":
            back = pickle.loads(pickle.dumps(Thing(5)))
            print(type(back) is Thing, back.n, Thing.__module__)
    """)
    done = shim(str(tmp_path / "prog.py"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "5", "__main__"]


def test_an_uncaught_exception_exits_1_with_its_traceback_like_python(tmp_path):
    write(tmp_path, "prog.py", "def f():\n    raise ValueError('boom')\nf()\n")
    done = shim(str(tmp_path / "prog.py"))
    assert done.returncode == 1
    assert done.stderr.rstrip().endswith("ValueError: boom")
    assert 'prog.py", line 2, in f' in done.stderr


def test_the_real_Pyro4_in_the_same_process_after_the_shim_is_refused_rather_than_mixed(tmp_path):
    write(tmp_path, "prog.py", """
        import Pyro4
        import pyro_loops.compat
        pyro_loops.compat.uninstall()
        import Pyro4 as real
        print(real.__name__, real.__version__)
        try:
            pyro_loops.compat.install()
        except ImportError as exc:
            print("refused")
    """)
    done = shim(str(tmp_path / "prog.py"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Pyro4", "4.82", "refused"]


# --- findings ----------------------------------------------------------------------------------


MP_PROG = """
    import multiprocessing as mp
    import sys
    import Pyro4

    def child(queue):
        import Pyro4
        queue.put(Pyro4.__name__)

    if __name__ == "__main__":
        ctx = mp.get_context(sys.argv[1])
        queue = ctx.Queue()
        proc = ctx.Process(target=child, args=(queue,))
        proc.start()
        print(Pyro4.__name__, queue.get(timeout=30))
        proc.join()
"""


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_children_of_a_shimmed_script_get_pyro_loops_as_Pyro4_too(tmp_path, method):
    write(tmp_path, "prog.py", MP_PROG)
    done = shim(str(tmp_path / "prog.py"), method)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pyro_loops", "pyro_loops"]


def test_script_file_is_absolute_as_under_python_when_given_relative(tmp_path):
    write(tmp_path, "prog.py", "import os\nos.chdir('/')\nprint(os.path.exists(__file__), __file__)\n")
    done = shim("prog.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == plain("prog.py", cwd=tmp_path).stdout.split() == ["True", str(tmp_path / "prog.py")]


def test_a_missing_script_is_one_line_and_exit_status_2_like_python(tmp_path):
    done = shim(str(tmp_path / "nosuch.py"))
    assert done.returncode == plain(str(tmp_path / "nosuch.py")).returncode == 2
    assert "Traceback" not in done.stderr
    assert "nosuch.py" in done.stderr and "No such file" in done.stderr


def test_traceback_of_a_failing_script_shows_the_script_not_the_shim(tmp_path):
    write(tmp_path, "prog.py", "def f():\n    raise ValueError('boom')\nf()\n")
    done = shim(str(tmp_path / "prog.py"))
    assert done.returncode == 1
    assert "runpy" not in done.stderr and "compat" not in done.stderr, done.stderr
    assert done.stderr.count("File ") == 2  # the script's two frames, as under python


@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P is 3.11+")
def test_safe_path_flag_keeps_the_path_python_would_have(tmp_path):
    write(tmp_path, "prog.py", """
        import sys
        from pyro_loops.compat import SPAWN_PATH
        print([entry for entry in sys.path if entry != SPAWN_PATH])
    """)
    under_shim = subprocess.run([sys.executable, "-P", "-m", "pyro_loops.compat", str(tmp_path / "prog.py")],
                                capture_output=True, text=True, timeout=TIMEOUT * 2, env=peer_env(), cwd="/")
    under_python = plain("-P", str(tmp_path / "prog.py"))
    assert under_shim.returncode == 0, under_shim.stderr
    assert under_shim.stdout == under_python.stdout
