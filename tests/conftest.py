"""Shared test set-up: Qt runs offscreen; Tk runs under the Xvfb that pytest-xvfb starts."""

import os
import shutil

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _fresh_config():
    """Each test starts from the default configuration and leaves it so."""
    import pyro_loops

    pyro_loops.config.reset()
    yield
    pyro_loops.config.reset()


def pytest_collection_modifyitems(config, items):
    # On CI the Tk tests must run, never skip: a missing Xvfb is a broken set-up.
    if os.environ.get("CI") and shutil.which("Xvfb") is None:
        raise pytest.UsageError("CI run without Xvfb: install it (apt-get install -y xvfb)")
