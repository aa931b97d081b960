"""Sphinx directive ``pyro4-examples``: which of Pyro4's examples still differ, read from the test table.

``tests/pyro4_examples_table.py`` says how the test suite runs each of Pyro4
4.82's examples on Pyro4 and on pyro_loops; an entry with ``xfail="reason"``
still behaves differently, and ``NOT_RUN`` lists the folders that cannot run
unattended. This directive renders those lists, so the porting guide shows
what the tests check and nobody keeps a second copy.

The table is run with ``tests/`` importable, as under pytest: its reasons
live in named constants, and its helpers need nothing beyond the standard
library.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx

TESTS = Path(__file__).resolve().parents[2] / "tests"
TABLE = TESTS / "pyro4_examples_table.py"


def read_table(path: Path = TABLE) -> tuple[list[tuple[str, str | None]], dict[str, str]]:
    """``([(label, xfail reason or None) per example], {folder: reason not run})``.

    The table is run as Python (with ``tests/`` importable, as under pytest), so
    reasons kept in named constants read the same as literal ones.
    """
    tests = str(TESTS)
    added = tests not in sys.path
    if added:
        sys.path.insert(0, tests)
    try:
        table = runpy.run_path(str(path))
    finally:
        if added:
            sys.path.remove(tests)
    examples = [(example.id, example.xfail) for example in table["EXAMPLES"]]
    return examples, dict(table.get("NOT_RUN", {}))


def _bullets(pairs: list[tuple[str, str]]) -> nodes.bullet_list:
    bullets = nodes.bullet_list()
    for name, reason in pairs:
        bullets += nodes.list_item("", nodes.paragraph("", "", nodes.literal(name, name), nodes.Text(": " + reason)))
    return bullets


class Pyro4Examples(Directive):
    """Renders the examples that still differ and those not run, with their reasons."""

    def run(self) -> list[nodes.Node]:
        self.state.document.settings.env.note_dependency(str(TABLE))
        if not TABLE.exists():  # moved or renamed: the page must not quietly lose its list
            raise self.error(f"pyro4-examples: the table of Pyro4's examples ({TABLE}) is missing")
        examples, not_run = read_table(TABLE)
        differing = [(label, reason) for label, reason in examples if reason]
        out: list[nodes.Node] = [nodes.paragraph(
            text=f"The test suite runs {len(examples)} example programs on Pyro4 4.82 and on pyro_loops and "
                 f"compares what they print; {len(differing)} still differ.")]
        if differing:
            out += [nodes.paragraph(text="Still different, and why:"), _bullets(differing)]
        if not_run:
            out += [nodes.paragraph(text="Not run, because they cannot run unattended on Pyro4 either:"),
                    _bullets(sorted(not_run.items()))]
        return out


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("pyro4-examples", Pyro4Examples)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
