"""Pyro4 4.82's own example programs run unchanged on pyro_loops (through ``python -m pyro_loops.compat``).

Each example of the table (``pyro4_examples_table.py``) runs twice in the same
test: on the real Pyro4 and on pyro_loops, each with its own name server and
ports. The test passes when both give the same exit status and the same key
output lines (normalised for addresses, ports, ids and timings). Examples that
still differ are ``xfail(strict=True)`` with the reason, so a fix that makes one
pass turns into a failure until its table entry drops the xfail.

The sdist comes from the package index once (cache: ``PYRO_LOOPS_TEST_CACHE`` or
~/.cache/pyro_loops-tests); without the index the module skips, except under CI
(``CI`` set), where it fails. Cost: 53 examples, two runs each, THREADS at a
time: about 4 to 5 minutes on two shared cores (the slowest, batchedcalls,
about 90 s of it).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from pyro4_examples import FLAVOURS, Example, Outcome, run_example, sdist_examples
from pyro4_examples_table import EXAMPLES

#: Examples run this many at a time (each is a handful of mostly idle processes).
THREADS = int(os.environ.get("PYRO_LOOPS_EXAMPLE_THREADS", "4"))

pytestmark = pytest.mark.timeout(900)


def _param(example: Example):
    marks = [pytest.mark.xfail(reason=example.xfail, strict=True)] if example.xfail else []
    return pytest.param(example, id=example.id, marks=marks)


@pytest.fixture(scope="module")
def examples_dir() -> Path:
    folder, why = sdist_examples()
    if folder is None:
        if os.environ.get("CI"):
            pytest.fail(f"{why} (under CI this test must run)")
        pytest.skip(why)
    return folder


@pytest.fixture(scope="module")
def outcomes(request, examples_dir, tmp_path_factory):
    """Both runs of every selected example, started in a thread pool at once and awaited per test.

    Only the examples this session selected are run, so ``-k echoserver`` costs one example.
    """
    selected = [item.callspec.params["example"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    workroot = tmp_path_factory.mktemp("pyro4-examples")
    pool = ThreadPoolExecutor(THREADS, thread_name_prefix="example")
    futures: dict[tuple[str, str], Future[Outcome]] = {}
    for example in selected:
        if any(importlib.util.find_spec(name) is None for name in example.requires):
            continue
        workdir = Path(tempfile.mkdtemp(prefix=example.id + "-", dir=workroot))
        for flavour in FLAVOURS:
            futures[example.id, flavour] = pool.submit(run_example, example, flavour, examples_dir, workdir)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("example", [_param(example) for example in EXAMPLES])
def test_example_runs_as_on_pyro4(example: Example, outcomes) -> None:
    missing = [name for name in example.requires if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the example needs {', '.join(missing)}, which is not installed")
    pyro4 = outcomes[example.id, "pyro4"].result()
    ours = outcomes[example.id, "pyro_loops"].result()
    assert pyro4.returncode is not None or pyro4.lines, f"the example does not run on Pyro4:\n{pyro4.describe()}"
    assert (ours.returncode, ours.lines) == (pyro4.returncode, pyro4.lines), (
        f"{example.id} differs from Pyro4.\n=== on pyro_loops: {ours.describe()}\n=== on Pyro4: {pyro4.describe()}")
