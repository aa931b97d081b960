"""The package's modules import downwards only: no import cycle, no import
hidden inside a function to break one, and every module importable on its own.

The module graph is read from the source (module-level import statements,
class bodies included, function bodies excluded), so a cycle is caught even
where the interpreter's import order happens to tolerate it.
"""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

import pytest

from _util import TIMEOUT, peer_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: package name -> its directory (the adapters live outside pyro_loops/ in the source tree)
PACKAGES = {"pyro_loops": ROOT / "pyro_loops", "pyro_loops.adapters": ROOT / "adapters"}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package, directory in PACKAGES.items():
        for path in sorted(directory.glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


MODULES = _modules()


def _package_of(module: str) -> str:
    return module if module in PACKAGES else module.rpartition(".")[0]


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> list[str]:
    """The package modules an import statement in ``module`` loads (outside modules are dropped)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = _package_of(module).split(".")
            anchor = ".".join(parts[:len(parts) - node.level + 1])
            base = f"{anchor}.{base}" if base else anchor
        # "from package import name" loads package.name when that is a module
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    return [name for name in names if name in MODULES]


def _imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(modules imported at import time, [(line, module) imported inside a function])."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    at_import: set[str] = set()
    deferred: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module):
                    if in_function:
                        deferred.append((child.lineno, target))
                    else:
                        at_import.add(target)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    at_import.discard(module)
    return at_import, deferred


def _graph() -> dict[str, set[str]]:
    return {module: _imports(module)[0] for module in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None: a depth-first walk with three colours."""
    state: dict[str, str] = {}
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := walk(start)):
            return found
    return None


def _below(graph: dict[str, set[str]], module: str) -> set[str]:
    """Everything ``module`` imports, directly or not."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_module_level_imports_form_no_cycle():
    assert _cycle(_graph()) is None


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_package_module_is_imported_inside_a_function():
    # An import inside a function is how a cycle hides from the graph above.
    # (Optional third-party packages, such as msgpack, may still be imported late.)
    deferred = {module: found for module in MODULES if (found := _imports(module)[1])}
    assert deferred == {}


def test_name_resolution_sits_below_the_daemon_and_the_proxy():
    graph = _graph()
    below_resolution = _below(graph, "pyro_loops._resolve") | {"pyro_loops._resolve"}
    assert {"pyro_loops._resolve", "pyro_loops._serving"} <= _below(graph, "pyro_loops.proxy")
    assert {"pyro_loops._resolve", "pyro_loops.proxy"} <= _below(graph, "pyro_loops.daemon")
    assert not below_resolution & {"pyro_loops.daemon", "pyro_loops.proxy", "pyro_loops.naming",
                                   "pyro_loops._nameserver"}


def test_the_core_never_imports_an_adapter():
    graph = _graph()
    core = [module for module in MODULES if not module.startswith("pyro_loops.adapters")]
    assert {module: sorted(hits) for module in core
            if (hits := {m for m in _below(graph, module) if m.startswith("pyro_loops.adapters")})} == {}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_on_its_own_in_a_fresh_interpreter(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                          env=peer_env(), cwd=ROOT, timeout=TIMEOUT)
    missing = re.search(r"^ModuleNotFoundError: No module named '([^']+)'$", done.stderr, re.MULTILINE)
    if missing and not missing.group(1).startswith("pyro_loops"):
        pytest.skip(f"{module} needs {missing.group(1)}, which is not installed")  # e.g. tkinter
    assert done.returncode == 0, done.stderr



def test_every_package_directory_is_installed():
    # A subpackage missing from pyproject's list is absent from a non-editable install
    # (``pip install .``), though every editable run of the tests still finds it.
    listed = re.search(r"^packages = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M)
    assert listed, "pyproject.toml lists no packages"
    installed = set(re.findall(r'"([^"]+)"', listed.group(1)))
    found = {"pyro_loops.adapters"} | {
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "pyro_loops").rglob("__init__.py")
        if not init.parent.is_symlink()}
    assert found <= installed, f"not installed by pip install .: {sorted(found - installed)}"
