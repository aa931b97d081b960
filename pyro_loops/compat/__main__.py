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
    if argv[0] == "-m":
        install()
        sys.argv = [argv[1], *argv[2:]]  # runpy puts the module's file name first, as "python -m" does
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    script = os.path.abspath(argv[0])  # __file__ is absolute under "python SCRIPT" too (3.9+)
    if not os.path.exists(script):
        print(f"{sys.executable}: can't open file {script!r}: [Errno 2] No such file or directory",
              file=sys.stderr)
        return 2  # python's own status for it
    sys.argv = list(argv)
    if not getattr(sys.flags, "safe_path", False):  # python -P (3.11+) puts no script folder first
        sys.path[0] = os.path.dirname(script)  # what "python SCRIPT" puts first
    install()
    try:
        runpy.run_path(script, run_name="__main__")
    except Exception as exc:  # SystemExit and KeyboardInterrupt pass: their exit status is the program's
        _report(exc, script)
        return 1
    return 0


def _report(exc: Exception, script: str) -> None:
    """Report an uncaught exception as python would: through ``sys.excepthook`` (the program may
    have set its own), with the traceback starting at the script's frame, not the shim's."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)  # the default hook prints exc.__traceback__


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
