"""Red-team pass over the docs extensions (docs/_ext): odd inputs must fail a ``-W`` build loudly
or render correctly, never pass quietly with a wrong page. Builds a small site per attack."""

from __future__ import annotations

import re
from pathlib import Path

from test_docs import DOCS, ROOT, sphinx_build

TESTS = ROOT / "tests"


def site(tmp_path: Path, extension: str, page: str, table: Path | None = None) -> tuple[int, str, str]:
    """Build a one-page site with one of our extensions; (status, build output, page text)."""
    source = tmp_path / "src"
    source.mkdir()
    conf = f"import sys\nsys.path[:0] = [{str(ROOT)!r}, {str(DOCS / '_ext')!r}]\nextensions = [{extension!r}]\n"
    if table is not None:
        conf += f"import examples_table, pathlib\nexamples_table.TABLE = pathlib.Path({str(table)!r})\n"
    (source / "conf.py").write_text(conf)
    (source / "index.rst").write_text(page)
    result = sphinx_build(source, tmp_path / "html")
    html = tmp_path / "html" / "index.html"
    text = " ".join(re.sub(r"<[^>]+>", " ", html.read_text(encoding="utf-8")).split()) if html.exists() else ""
    return result.returncode, result.stdout + result.stderr, text


CONFIG_PAGE = """Items
=====

.. pyro-config::

   SERVERTYPE
      how the daemon runs calls:

      thread
         in a pool of worker threads
      multiplex
         on the loop's thread

   HOST
      where a daemon binds
"""


def test_a_definition_list_inside_an_items_meaning_is_its_text_not_more_items(tmp_path):
    status, output, text = site(tmp_path, "pyro_config", CONFIG_PAGE)
    assert "item thread" not in output and "item multiplex" not in output
    assert "thread in a pool of worker threads" in text  # rendered inside SERVERTYPE's meaning
    assert "is not described" in output and status != 0  # the other items are still missing


EXAMPLES_PAGE = "Examples\n========\n\n.. pyro4-examples::\n"


def test_examples_table_entry_that_is_not_an_example_fails_the_build_naming_it(tmp_path):
    table = tmp_path / "table.py"
    table.write_text("from pyro4_examples import Example\n"
                     "EXAMPLES = (Example('oneway', 'client.py'), ('banks', 'client.py'))\n")
    status, output, _ = site(tmp_path, "examples_table", EXAMPLES_PAGE, table)
    assert status != 0
    assert "banks" in output or "tuple" in output, output


def test_examples_table_that_does_not_run_fails_the_build(tmp_path):
    table = tmp_path / "table.py"
    table.write_text("from pyro4_examples import Example\nEXAMPLES = (Example('oneway', 'client.py', xfal='x'),)\n")
    status, output, _ = site(tmp_path, "examples_table", EXAMPLES_PAGE, table)
    assert status != 0
    assert "xfal" in output, output


def test_examples_table_new_entry_with_a_reason_shows_up_on_the_page(tmp_path):
    table = tmp_path / "table.py"
    table.write_text("from pyro4_examples import Example\n"
                     "EXAMPLES = (Example('oneway', 'client.py'), Example('new', 'c.py', xfail='it differs'))\n"
                     "NOT_RUN = {'chatbox': 'interactive'}\n")
    status, output, text = site(tmp_path, "examples_table", EXAMPLES_PAGE, table)
    assert status == 0, output
    assert "runs 2 example programs" in text and "1 still differ" in text
    assert "new-client : it differs" in text or "new : it differs" in text, text
    assert "chatbox : interactive" in text


def test_a_missing_examples_table_fails_the_build(tmp_path):
    status, output, _ = site(tmp_path, "examples_table", EXAMPLES_PAGE, tmp_path / "gone.py")
    assert status != 0
    assert "gone.py" in output, output
