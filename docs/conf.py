"""Sphinx configuration for the pyro_loops documentation site.

Built by ``python -m sphinx -W -b html docs docs/_build/html`` (the test suite
does this with warnings as errors, so a broken reference fails the tests).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "pyro_loops"
author = "the pyro_loops developers"
copyright = "2026, " + author  # noqa: A001 - Sphinx's name

from pyro_loops import __version__ as release  # noqa: E402 - after the path is set

version = release
extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx", "sphinx.ext.viewcode"]
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
