"""Shared test set-up: Qt runs offscreen; Tk runs under the Xvfb that pytest-xvfb starts.

Without the Xvfb binary (and no display of a desktop session), the tests that
need an X display are skipped with one reason naming the package to install,
so the README's test command passes on a fresh machine either way. Under CI
(``CI`` set) nothing may skip for that reason: a missing Xvfb fails the run.
"""

import os
import shutil

import pytest

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


def _needs_display(item: pytest.Item) -> bool:
    """Tk needs an X server: the Tk adapter's tests, the Tk demo's, and those marked ``display``."""
    return (item.path.name == "test_adapter_tk.py" or item.name.startswith("test_tk_")
            or item.get_closest_marker("display") is not None)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CI") and shutil.which("Xvfb") is None:
        # On CI the Tk tests must run, never skip: a missing Xvfb is a broken set-up.
        raise pytest.UsageError("CI run without Xvfb: install it (apt-get install -y xvfb)")
    if os.environ.get("DISPLAY"):  # pytest-xvfb's, or a desktop's
        return
    skip = pytest.mark.skip(reason=NO_DISPLAY)
    for item in items:
        if _needs_display(item):
            item.add_marker(skip)
