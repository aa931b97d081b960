"""The documentation site builds with warnings as errors, and its configuration tables cannot drift.

The site is built exactly as CI and Read the Docs build it. A docstring that
breaks the reStructuredText, a dangling ``:doc:`` link, or a configuration
item that ``docs/configuration.rst`` does not describe fails this test. The
code's citations of the protocol notes ("protocol notes 1.6") must name
sections that exist in ``docs/protocol.rst``.

Outside CI a machine without Sphinx skips the build tests with the package to
install; under CI (``CI`` set) a missing Sphinx is a broken set-up and fails.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"



def sphinx_build(source: Path, out: Path) -> subprocess.CompletedProcess:
    """``python -m sphinx -W --keep-going -b html source out``, with this checkout importable.

    Skips when Sphinx is missing outside CI; under CI that fails instead.
    """
    if importlib.util.find_spec("sphinx") is None:
        if os.environ.get("CI"):
            pytest.fail("CI run without Sphinx: the docs build must run there (pip install -e '.[test]')")
        pytest.skip("Sphinx is not installed: pip install -e '.[test]' (or '.[docs]') to build the site")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(source), str(out)], capture_output=True, text=True, env=env, timeout=300)


def test_site_builds_with_warnings_as_errors(tmp_path):
    result = sphinx_build(DOCS, tmp_path / "html")
    assert result.returncode == 0, f"the docs build failed:\n{result.stdout}\n{result.stderr}"
    page = (tmp_path / "html" / "configuration.html").read_text(encoding="utf-8")
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert "MAX_OUTPUT_BUFFER 268435456 (256 MiB)" in text  # the default, read from the code


MINI_CONF = f"""
import sys
sys.path[:0] = [{str(ROOT)!r}, {str(DOCS / "_ext")!r}]
extensions = ["pyro_config"]
"""


def test_configuration_table_warns_about_items_missing_stale_or_twice(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "conf.py").write_text(MINI_CONF)
    (source / "index.rst").write_text("""Items
=====

.. pyro-config::

   HOST
      where a daemon binds
   NOT_AN_ITEM
      described, but the code has no such item
   SOME_FUTURE_ITEM : upcoming
      another branch adds it; no row and no warning yet

.. pyro-config::

   HOST
      described a second time
""")
    result = sphinx_build(source, tmp_path / "html")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "configuration item NS_PORT is not described" in output       # one of the items left out
    assert "NOT_AN_ITEM is described in index but pyro_loops.configuration has no such item" in output
    assert "HOST is described more than once" in output
    assert "SOME_FUTURE_ITEM" not in output
    assert "item HOST is not described" not in output


def test_pyro4_examples_list_reads_labels_reasons_and_folders_not_run(tmp_path):
    spec = importlib.util.spec_from_file_location("examples_table", DOCS / "_ext" / "examples_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = tmp_path / "table.py"
    table.write_text('''
from pyro4_examples import Example, Server
EXAMPLES = (
    Example("async", "client.py", (Server("server.py"),), label="async-client"),
    Example("oneway", "client.py", xfail="prints its lines in another order"),
)
NOT_RUN = {"chatbox": "an interactive chat"}
''')
    examples, not_run = module.read_table(table)
    assert examples == [("async-client", None), ("oneway", "prints its lines in another order")]
    assert not_run == {"chatbox": "an interactive chat"}


CITATION = re.compile(r"protocol notes (?:section )?(\d+(?:\.\d+)?[a-z]?(?:,\s*\d+(?:\.\d+)?[a-z]?)*)")


def protocol_sections(text: str) -> set[str]:
    """Section numbers of docs/protocol.rst: "1", "1.6", and "11.9" for item 9 of section 11's list."""
    sections: set[str] = set()
    lines = text.splitlines()
    current = ""
    for line, below in zip(lines, lines[1:] + [""]):
        heading = re.match(r"(\d+)\. \S", line)
        if heading and below.startswith("---"):
            current = heading.group(1)
            sections.add(current)
        elif re.match(r"\d+\.\d+ ", line):
            sections.add(line.split()[0])
        elif heading and current:
            sections.add(f"{current}.{heading.group(1)}")
    return sections


def test_code_cites_protocol_notes_sections_that_exist():
    sections = protocol_sections((DOCS / "protocol.rst").read_text(encoding="utf-8"))
    stale, unknown = [], []
    for folder in ("pyro_loops", "adapters", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.is_symlink() or "pyro_loops/adapters" in path.as_posix():
                continue
            text = path.read_text(encoding="utf-8")
            where = path.relative_to(ROOT)
            if "PROTOCOL" + ".md" in text:
                stale.append(str(where))
            for match in CITATION.finditer(text):
                unknown += [f"{where}: {n}" for n in re.split(r",\s*", match.group(1)) if n not in sections]
    assert not stale, ("these files cite PROTOCOL" + ".md, which is not in the repository; cite the notes "
                       "instead (sed -i 's/PROTOCOL" + r"\.md/protocol notes/g' FILE): " + ", ".join(stale))
    assert not unknown, "citations of sections docs/protocol.rst does not have: " + ", ".join(unknown)
