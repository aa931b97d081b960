"""``Pyro4`` in a multiprocessing child of a program that runs with the shim on.

A spawn or forkserver child is a fresh interpreter that imports the program's
main module again (as ``__mp_main__``) before anything else runs, so the
shim's finder is not in it yet and ``import Pyro4`` would find the real Pyro4
(or nothing). What the child does get is the parent's ``sys.path``, and
``install()`` put this folder on it: the child's first ``import Pyro4`` lands
here, switches the shim on and hands out pyro_loops, as in the parent. A
process that never had the shim on does not have this folder on its path.
"""

import sys

import pyro_loops

sys.modules[__name__] = pyro_loops  # what "import Pyro4" returns, and what install() expects to find

from pyro_loops.compat import install  # noqa: E402 - the alias must be in place first

install()
