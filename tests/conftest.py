"""Shared test set-up: Qt runs offscreen; Tk runs under the Xvfb that pytest-xvfb starts.

Without the Xvfb binary (and no display of a desktop session), the tests that
need an X display are skipped with one reason naming the package to install,
so the README's test command passes on a fresh machine either way. Under CI
(``CI`` set) nothing may skip for that reason: a missing Xvfb fails the run.

The host loops the loop-facing tests run under are in ``_hosts.py`` (one
fixture per adapter, and ``host`` for all of them in turn).

The core group: ``python -m pytest -m core`` runs the core's unit tests (wire,
protocol, serializers, URIs, calls, the daemon, the select loop and asyncio,
and the adapter contract's runs under those two loops). They need only the
core's own dependencies (serpent, regex) plus pytest and hypothesis: no Qt, no
pytest-qt, no X display, no Pyro4, no installed package. ``CORE_MODULES`` below
lists them; the few tests in them that talk to a stock Pyro4 are marked
``pyro4`` and left out. A test added to these modules must keep to that: run
the group once in a virtual environment with only those packages and
``PYTHONPATH`` set to the checkout.
Nothing here imports Qt, tkinter or Pyro4.
"""

import os
import shutil

import pytest

CORE_MODULES = {
    "test_wire.py", "test_protocol.py", "test_protocol_client.py", "test_serializers.py", "test_uri.py",
    "test_fastserpent.py", "test_fuzz_properties.py", "test_client_call.py", "test_expose.py", "test_hosting.py",
    "test_error_messages.py", "test_bounds.py", "test_bad_input.py", "test_large_payloads.py", "test_daemon.py",
    "test_imports.py", "test_adapter_selectloop.py", "test_adapter_asyncio.py",
}
CORE_HOSTS = {"selectloop", "asyncio"}  # the adapter contract's runs that the core group includes

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

NO_DISPLAY = "needs an X display: install Xvfb (apt-get install xvfb), which pytest-xvfb then starts"


@pytest.fixture(autouse=True)
def _fresh_config():
    """Each test starts from the default configuration and leaves it so."""
    import pyro_loops

    pyro_loops.config.reset()
    yield
    pyro_loops.config.reset()


def pytest_configure(config):
    config.addinivalue_line("markers", "display: needs an X display (skipped without one, outside CI)")
    config.addinivalue_line("markers", "core: the core's unit tests, which need no Qt, X display or Pyro4 "
                                       "(set by conftest.py; run them with -m core)")
    config.addinivalue_line("markers", "pyro4: talks to a stock Pyro4 4.82 (left out of the core group)")


def _host(item: pytest.Item) -> str:
    """The host loop a test runs under (the ``host`` parameter), or ''."""
    callspec = getattr(item, "callspec", None)
    return str(callspec.params.get("host", "")) if callspec is not None else ""


def _needs_display(item: pytest.Item) -> bool:
    """Tk needs an X server: the Tk adapter's tests, the Tk demo's, the runs under a Tk host,
    and those marked ``display``."""
    return (item.path.name == "test_adapter_tk.py" or item.name.startswith("test_tk_")
            or _host(item).startswith("tk") or "tk_host" in getattr(item, "fixturenames", ())
            or item.get_closest_marker("display") is not None)


def _is_core(item: pytest.Item) -> bool:
    if item.get_closest_marker("pyro4") is not None:
        return False
    return item.path.name in CORE_MODULES or (item.path.name == "test_adapter_contract.py"
                                              and _host(item) in CORE_HOSTS)


@pytest.hookimpl(tryfirst=True)  # before -m reads the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_core(item):
            item.add_marker(pytest.mark.core)
    if os.environ.get("CI") and shutil.which("Xvfb") is None:
        # On CI the Tk tests must run, never skip: a missing Xvfb is a broken set-up.
        raise pytest.UsageError("CI run without Xvfb: install it (apt-get install -y xvfb)")
    if os.environ.get("DISPLAY"):  # pytest-xvfb's, or a desktop's
        return
    skip = pytest.mark.skip(reason=NO_DISPLAY)
    for item in items:
        if _needs_display(item):
            item.add_marker(skip)
