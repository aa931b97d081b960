"""``python -m pyro_loops.compat``: run a Pyro4 program unchanged on pyro_loops.

    python -m pyro_loops.compat SCRIPT [args...]
    python -m pyro_loops.compat -m Pyro4.naming [args...]

The script (or module) runs as ``__main__`` with ``sys.argv`` as if Python had
started it directly, and with the script's folder first on ``sys.path``, so the
modules next to it import as they would under ``python SCRIPT``.
"""

from __future__ import annotations

import os
import runpy
import sys

from . import install

USAGE = "usage: python -m pyro_loops.compat SCRIPT [args...] | -m MODULE [args...]"


def main(argv: list[str]) -> int:
    """Run the script or module named in ``argv``; returns 2 on a usage error.

    The program's own exit (``sys.exit``, an exception) passes through unchanged.
    """
    if not argv or argv[0] in ("-h", "--help") or (argv[0] == "-m" and len(argv) < 2):
        print(USAGE, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    install()
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]  # runpy puts the module's file name first, as "python -m" does
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        script = argv[0]
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(script))  # what "python SCRIPT" puts first
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
