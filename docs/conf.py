"""Sphinx configuration for the pyro_loops documentation site.

Built by ``python -m sphinx -W -b html docs docs/_build/html`` (the test suite
does this with warnings as errors, so a broken reference fails the tests).
"""

import importlib.util
import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))  # pyro_config, examples_table: tables read from the code

project = "pyro_loops"
author = "the pyro_loops developers"
copyright = "2026, " + author  # noqa: A001 - Sphinx's name

from pyro_loops import __version__ as release  # noqa: E402 - after the path is set


def _import_adapters_from_checkout() -> None:
    """Make ``pyro_loops.adapters`` importable from a bare checkout (Read the Docs).

    pyproject maps the package to ``adapters/``; an installed copy or the
    developer's symlink provides it, a plain clone does not.
    """
    if importlib.util.find_spec("pyro_loops.adapters") is not None:
        return
    folder = os.path.abspath(os.path.join("..", "adapters"))
    spec = importlib.util.spec_from_file_location("pyro_loops.adapters", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["pyro_loops.adapters"] = module
    spec.loader.exec_module(module)


_import_adapters_from_checkout()

version = release
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "sphinx.ext.viewcode", "pyro_config", "examples_table"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Links to the standard library resolve offline too: no network is needed to build.
intersphinx_mapping: dict = {}
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
html_theme_options = {"description": "Pyro4-compatible remote objects in your own event loop"}
