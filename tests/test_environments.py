"""The README's test command on the set-ups a newcomer may have, run from inside it.

- A machine without Xvfb: the display tests skip with one reason naming the
  package; under CI the run fails instead.
- The oldest and the newest supported Python (3.10, 3.13), each in a virtual
  environment of its own with the project installed, running the core, adapter
  and demo tests; each with a Qt binding the main run does not use (PyQt6 on
  3.10; the newest PySide6 on 3.13), so PyQt5 (the main run), PyQt6 and PySide6
  all serve the Qt adapter and demo tests.
- PySide6 6.12.0 on Python 3.10, which the Qt adapter refuses with a message
  naming the fix.

A Python that is absent skips its test outside CI and fails it under CI. The
environments live in ``build/venvs/`` and are brought up to date on each run.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import NO_DISPLAY
from test_demos import HOST, client, demo_env, start_demo  # noqa: F401 - start_demo is a fixture

ROOT = Path(__file__).resolve().parents[1]
VENVS = ROOT / "build" / "venvs"
IN_CI = bool(os.environ.get("CI"))

# What each interpreter's environment runs: the core, every adapter, the demos.
SUITE = ["tests/test_wire.py", "tests/test_protocol.py", "tests/test_serializers.py", "tests/test_uri.py",
         "tests/test_daemon.py", "tests/test_expose.py", "tests/test_naming.py",
         "tests/test_adapter_selectloop.py", "tests/test_adapter_asyncio.py", "tests/test_adapter_tk.py",
         "tests/test_adapter_qt.py", "tests/test_demos.py"]
SETUP_TIMEOUT_S = 900
SUITE_TIMEOUT_S = 900


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` ("3.10"): on PATH, else one that pyenv installed."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    for candidate in candidates:
        if not candidate:
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def require_python(version: str) -> str:
    python = find_python(version)
    if python is None:
        message = f"Python {version} is not installed (pyenv install {version}, or your system's python{version})"
        if IN_CI:
            pytest.fail(message + ": CI must test it")
        pytest.skip(message)
    return python


def run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` from the project root; a failure shows what it printed."""
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-6000:]}\n{done.stderr[-4000:]}"
    return done


def make_venv(name: str, python: str, *requirements: str) -> Path:
    """``build/venvs/<name>`` made by ``python``, with ``requirements`` installed or updated."""
    venv = VENVS / name
    if not (venv / "bin" / "python").exists():
        run([python, "-m", "venv", "--clear", str(venv)], SETUP_TIMEOUT_S)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *requirements], SETUP_TIMEOUT_S)
    return venv / "bin" / "python"


def clean_env(**changes: str | None) -> dict[str, str]:
    """This process's environment with ``changes`` (None removes a variable)."""
    env = dict(os.environ)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def path_without(program: str, shadow: Path) -> str:
    """PATH with every directory holding ``program`` replaced by a copy of links to the rest."""
    parts = []
    for index, directory in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        if not directory or not os.path.exists(os.path.join(directory, program)):
            parts.append(directory)
            continue
        copy = shadow / f"dir{index}"
        copy.mkdir(parents=True)
        for entry in os.listdir(directory):
            if entry != program:
                (copy / entry).symlink_to(os.path.join(directory, entry))
        parts.append(str(copy))
    return os.pathsep.join(parts)


# --- no Xvfb ----------------------------------------------------------------------------

DISPLAY_TESTS = ["tests/test_adapter_tk.py", "tests/test_adapter_contract.py", "tests/test_demos.py",
                 "-k", "tk or every_demo"]


def test_without_xvfb_display_tests_skip_with_one_reason_naming_the_package(tmp_path):
    env = clean_env(PATH=path_without("Xvfb", tmp_path), CI=None, DISPLAY=None)
    assert shutil.which("Xvfb", path=env["PATH"]) is None
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *DISPLAY_TESTS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    reasons = {line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("SKIPPED")}
    assert reasons == {NO_DISPLAY}, done.stdout[-4000:]
    assert "apt-get install xvfb" in NO_DISPLAY
    assert " passed" in done.stdout  # the demos' --help needs no display and still runs


def test_under_ci_a_missing_xvfb_fails_the_run(tmp_path):
    env = clean_env(PATH=path_without("Xvfb", tmp_path), CI="true", DISPLAY=None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *DISPLAY_TESTS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    assert done.returncode != 0
    assert "CI run without Xvfb: install it (apt-get install -y xvfb)" in done.stdout + done.stderr


@pytest.mark.display
def test_qt_demo_runs_on_the_xvfb_display(start_demo):
    """Qt's xcb platform, not offscreen: it needs libxcb-icccm4, libxcb-keysyms1 and libxcb-xinerama0."""
    demo = start_demo("qt_app.py", "--host", HOST, "--ns", "none", env=demo_env(QT_QPA_PLATFORM="xcb"))
    uri = demo.wait_for(r"^uri = (\S+)").group(1)
    demo.wait_for("^ready")
    assert "increment(3) -> 3" in client(uri, "--call", "increment", "3")
    assert demo.stop() == 0


# --- oldest and newest Python, each Qt binding ------------------------------------------


@pytest.mark.timeout(SETUP_TIMEOUT_S + SUITE_TIMEOUT_S)
@pytest.mark.parametrize(("version", "extra", "qt_api"), [("3.10", "pyqt6", "pyqt6"), ("3.13", "pyside6", "pyside6")])
def test_core_adapter_and_demo_tests_pass_on_python(version, extra, qt_api):
    python = make_venv(f"py{version}-{extra}", require_python(version), "-e", f".[{extra},test]")
    # PYTHONPATH is dropped so that nothing of this interpreter's packages leaks in.
    env = clean_env(PYTEST_QT_API=qt_api, PYTHONPATH=None)
    done = run([str(python), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-ra", *SUITE], SUITE_TIMEOUT_S, env=env)
    summary = done.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and not re.search(r"\d+ (failed|errors?)\b", summary), summary
    versions = run([str(python), "-c", f"import sys; from pytestqt.qt_compat import qt_api; qt_api.set_qt_api('{qt_api}'); "
                    "print(sys.version_info[:2], qt_api.get_versions())"], SETUP_TIMEOUT_S, env=env)
    print(f"python{version} with {extra}: {summary} -- {versions.stdout.strip()}")


def test_qt_adapter_without_a_binding_names_the_extras_to_install():
    # The interpreter is told the three bindings are absent, as on a machine without them.
    script = textwrap.dedent("""
        import sys
        sys.modules.update(dict.fromkeys(("PyQt5", "PySide6", "PyQt6")))
        import pyro_loops
        from pyro_loops.adapters import qt
        with pyro_loops.Daemon(host="127.0.0.1") as daemon:
            qt.attach(daemon)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: pyro_loops.adapters.qt needs a Qt binding and none is installed")
    assert all(f"pyro-loops[{extra}]" in last_line for extra in ("qt", "pyqt6", "pyside6"))


def test_tk_adapter_without_tkinter_names_what_to_install():
    # The interpreter is told tkinter is absent, as with a Python built without Tk.
    script = "import sys; sys.modules['tkinter'] = None; from pyro_loops.adapters import tk"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: pyro_loops.adapters.tk needs tkinter")
    assert "python3-tk" in last_line


@pytest.fixture(scope="module")
def pyside6_losing_none():
    """Python 3.10 with PySide6 6.12.0, whose methods returning nothing lose a reference to None."""
    return make_venv("py3.10-pyside6.12.0", require_python("3.10"), "-e", ".", "PySide6-Essentials==6.12.0")


def run_qt_script(python: Path, body: str) -> str:
    """Run ``body`` after creating a QCoreApplication ``app``; what it printed."""
    script = "from PySide6 import QtCore\nimport pyro_loops\nfrom pyro_loops.adapters import qt\n" \
             "app = QtCore.QCoreApplication([])\n" + textwrap.dedent(body)
    return run([str(python), "-c", script], SUITE_TIMEOUT_S,
               env=clean_env(PYTHONPATH=None, QT_QPA_PLATFORM="offscreen")).stdout


@pytest.mark.timeout(SETUP_TIMEOUT_S + SUITE_TIMEOUT_S)
def test_qt_adapter_refuses_pyside6_that_loses_references_to_none(pyside6_losing_none):
    message = run_qt_script(pyside6_losing_none, """
        with pyro_loops.Daemon(host="127.0.0.1") as daemon:
            try:
                qt.attach(daemon, app)
            except RuntimeError as exc:
                print(exc)
            else:
                raise SystemExit("attached")
    """)
    assert "PySide6 6.12.0 on Python 3.10" in message
    assert "PYSIDE-3474" in message and "none_dealloc" in message
    assert "pip install 'pyro-loops[pyside6]'" in message and "Python 3.12 or later" in message


@pytest.mark.timeout(SETUP_TIMEOUT_S + SUITE_TIMEOUT_S)
def test_qt_adapter_makes_no_call_per_request_that_loses_none(pyside6_losing_none):
    """Serving a request calls no Qt method returning nothing (the old notifier toggling lost two)."""
    output = run_qt_script(pyside6_losing_none, """
        import subprocess, sys

        CALLS = 300

        @pyro_loops.expose
        class Echo:
            def echo(self, value):
                return value

        qt._refuse_broken_binding = lambda qtcore: None  # to measure the adapter alone
        daemon = pyro_loops.Daemon(host="127.0.0.1")
        uri = daemon.register(Echo(), "echo")
        qt.attach(daemon, app)
        client = subprocess.Popen([sys.executable, "-c",
                                   f"import pyro_loops\\np = pyro_loops.Proxy('{uri}')\\n"
                                   f"for i in range({CALLS}): assert p.echo(i) == i\\n"])
        watch = QtCore.QTimer()
        watch.timeout.connect(lambda: client.poll() is not None and app.quit())
        watch.start(20)
        before = sys.getrefcount(None)
        app.exec()
        print(client.returncode, (before - sys.getrefcount(None)) / CALLS)
    """)
    returncode, lost_per_call = output.split()
    assert returncode == "0"
    assert float(lost_per_call) < 0.1, output
