"""The public API is typed: the package says so (``py.typed``) and mypy agrees.

What mypy checks, and as which Python, is set in ``[tool.mypy]`` of
pyproject.toml, so ``python -m mypy`` from the project root runs the same.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_declares_its_types_with_py_typed():
    assert resources.files("pyro_loops").joinpath("py.typed").is_file()


def test_public_api_passes_mypy(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
