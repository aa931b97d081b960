"""Run Pyro4 4.82's own test suite (``tests/PyroTests`` in its sdist) through the shim, per file.

    PYTHONPATH=$PWD python tools/pyro4_testsuite.py [--files test_core.py ...] [--json out.json]

A second measure of how much of Pyro4's public behaviour pyro_loops has, next
to the example programs (tests/test_pyro4_examples.py). Each test file runs in
its own process, once on the real Pyro4 (the baseline: what passes there) and
once with ``pyro_loops.compat`` installed; the table shows, per file, how many
tests pass on each. Files that test Pyro4's private internals or features
pyro_loops leaves out are not run; they are listed with their test count and
the reason. The sdist is fetched the same way as for the example tests.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pyro4_examples import sdist_examples  # noqa: E402 - the one way the sdist is fetched

#: Files left out, with the reason (counts are reported with them).
LEFT_OUT = {
    "test_threadpool.py": "Pyro4's private thread pool (Pyro4.socketserver.threadpool)",
    "test_socket.py": "Pyro4's private socket servers and socketutil internals (SocketServer_Multiplex/Threadpool)",
    "test_package.py": "the module list of Pyro4's own package (socketserver, naming_storage, utils...)",
    "test_ironpython.py": "IronPython-only workarounds (its tests are skipped on CPython)",
    "test_flame.py": "flame (remote code execution), left out of pyro_loops by design",
    "test_httpgateway.py": "Pyro4's HTTP gateway, which pyro_loops does not provide",
}
FILE_TIMEOUT = 300  # seconds one test file may take before it counts as hung

#: Runs one test file in a fresh process and prints its counts as one JSON line.
_RUNNER = """
import collections, json, sys, unittest
if sys.argv[1] == "pyro_loops":
    import pyro_loops.compat
    pyro_loops.compat.install()
suite = unittest.defaultTestLoader.loadTestsFromName(sys.argv[2])
result = unittest.TestResult()
suite.run(result)
print("RESULT " + json.dumps({"run": result.testsRun, "failures": len(result.failures),
      "errors": len(result.errors), "skipped": len(result.skipped),
      "failed": sorted(test.id().split(".", 1)[1] for test, _ in result.failures + result.errors),
      "reasons": collections.Counter(text.strip().splitlines()[-1][:160]
                                     for _, text in result.failures + result.errors).most_common(5)}))
"""


def count_tests(path: Path) -> int:
    """The number of ``test*`` methods in the file's classes (known even if it cannot be imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return sum(1 for cls in tree.body if isinstance(cls, ast.ClassDef) for node in cls.body
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"))


def run_file(path: Path, flavour: str) -> dict:
    """Counts for one test file on ``flavour``: run, passed, failed (names), or why it did not run."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(path.parent)]), PYTHONHASHSEED="0")
    env = {k: v for k, v in env.items() if not k.startswith("PYRO_")}
    try:
        done = subprocess.run([sys.executable, "-c", _RUNNER, flavour, path.stem], cwd=path.parent, env=env,
                              capture_output=True, text=True, timeout=FILE_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"passed": 0, "note": f"hung (killed after {FILE_TIMEOUT} s)"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"passed": 0, "note": f"crashed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"}
    counts = json.loads(lines[-1][len("RESULT "):])
    counts["passed"] = counts["run"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if counts["reasons"]:
        reason, times = counts["reasons"][0]
        counts["note"] = f"most common failure ({times}x): {reason}"
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="*", help="only these test files (default: all)")
    parser.add_argument("--json", help="also write the per-file results to this file")
    options = parser.parse_args(argv)
    examples, why = sdist_examples()
    if examples is None:
        print(why, file=sys.stderr)
        return 2
    suite = examples.parent / "tests" / "PyroTests"
    files = sorted(suite.glob("test_*.py"))
    if options.files:
        files = [f for f in files if f.name in options.files]
    results: dict[str, dict] = {}
    totals = {"tests": 0, "pyro4": 0, "pyro_loops": 0}
    print(f"{'file':24} {'tests':>5} {'Pyro4':>6} {'ours':>5}  note")
    for path in files:
        tests = count_tests(path)
        if path.name in LEFT_OUT:
            results[path.name] = {"tests": tests, "left_out": LEFT_OUT[path.name]}
            print(f"{path.name:24} {tests:5} {'-':>6} {'-':>5}  left out: {LEFT_OUT[path.name]}", flush=True)
            continue
        pyro4, ours = run_file(path, "pyro4"), run_file(path, "pyro_loops")
        tests = pyro4.get("run", tests)  # inherited test classes run their tests more than once
        results[path.name] = {"tests": tests, "pyro4": pyro4, "pyro_loops": ours}
        totals["tests"] += tests
        totals["pyro4"] += pyro4["passed"]
        totals["pyro_loops"] += ours["passed"]
        print(f"{path.name:24} {tests:5} {pyro4['passed']:6} {ours['passed']:5}  {ours.get('note', '')}", flush=True)
    left_out = sum(r["tests"] for r in results.values() if "left_out" in r)
    print(f"{'total':24} {totals['tests']:5} {totals['pyro4']:6} {totals['pyro_loops']:5}  "
          f"({left_out} tests in left-out files)")
    if options.json:
        Path(options.json).write_text(json.dumps({"files": results, "totals": totals, "left_out_tests": left_out},
                                                 indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
