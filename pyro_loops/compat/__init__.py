"""An opt-in ``Pyro4`` import shim: existing Pyro4 programs run unchanged on pyro_loops.

Why a shim and not a ``Pyro4`` package: the real Pyro4 may be installed next to
pyro_loops (our own tests use it as a peer), and a second top-level ``Pyro4``
would silently shadow it. So the alias exists only in a process that asks for it:

* ``python -m pyro_loops.compat SCRIPT [args]`` runs a script with the shim on;
* ``python -m pyro_loops.compat -m Pyro4.naming [args]`` runs a module (here the
  name server; ``Pyro4.nsc`` and ``Pyro4.test.echoserver`` work the same way);
* ``pyro_loops.compat.install()`` switches it on in a running program, before
  the first ``import Pyro4``.

With the shim on, ``Pyro4`` *is* the ``pyro_loops`` package and ``Pyro4.<name>``
is ``pyro_loops.<name>``: the same module objects, so a class defined once has one
identity under both spellings and ``Pyro4.config`` is ``pyro_loops.config``. A
``Pyro4`` module pyro_loops does not have fails to import with a message that says
so; ``import pyro_loops as Pyro4`` needs no shim at all.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import CodeType, ModuleType
from typing import Sequence

ALIAS = "Pyro4"
TARGET = "pyro_loops"


def target_name(fullname: str) -> str | None:
    """The pyro_loops module that stands in for ``fullname`` (None: not a Pyro4 name).

    >>> target_name("Pyro4.core")
    'pyro_loops.core'
    """
    if fullname == ALIAS:
        return TARGET
    if fullname.startswith(ALIAS + "."):
        return TARGET + fullname[len(ALIAS):]
    return None


class _AliasLoader(importlib.abc.Loader):
    """Loads ``Pyro4.<x>`` by importing ``pyro_loops.<x>`` and handing out that module.

    The target is imported only when the alias is *loaded*, not when it is found:
    runpy finds ``Pyro4.naming`` before running it as ``__main__``, and importing
    the target then would leave a second copy of the module in the process.
    """

    def __init__(self, target: str, target_spec: importlib.machinery.ModuleSpec) -> None:
        self.target = target
        self.target_spec = target_spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias spec onto the shared module object;
        # give it back its own, so that pickling, reloading and tracebacks keep
        # naming the module by its real name.
        module.__spec__ = self.target_spec if module.__name__ == self.target else module.__spec__

    # runpy (``-m Pyro4.naming``) asks the loader for the code to run as __main__.
    def get_code(self, fullname: str) -> CodeType | None:
        return self.target_spec.loader.get_code(self.target)  # type: ignore[union-attr]

    def is_package(self, fullname: str) -> bool:
        return self.target_spec.submodule_search_locations is not None

    def get_filename(self, fullname: str) -> str | None:
        return self.target_spec.origin


class Pyro4Finder(importlib.abc.MetaPathFinder):
    """The meta-path finder behind the shim: ``Pyro4[.x]`` -> ``pyro_loops[.x]``."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        real = target_name(fullname)
        if real is None:
            return None
        real_spec = importlib.util.find_spec(real)
        if real_spec is None:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: pyro_loops has no {real!r} (see the README, "
                f"'What a Pyro4 user must know')", name=fullname)
        spec = importlib.machinery.ModuleSpec(fullname, _AliasLoader(real, real_spec), origin=real_spec.origin,
                                              is_package=real_spec.submodule_search_locations is not None)
        if real_spec.submodule_search_locations is not None:
            spec.submodule_search_locations = list(real_spec.submodule_search_locations)
        return spec


def installed() -> bool:
    """Whether the shim is on in this process."""
    return any(isinstance(finder, Pyro4Finder) for finder in sys.meta_path)


#: On ``sys.path`` while the shim is on, for multiprocessing children (see _spawn/Pyro4.py).
SPAWN_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_spawn")


def install() -> None:
    """Switch the shim on: from now on ``import Pyro4`` gives pyro_loops.

    Idempotent. Raises ImportError if the real Pyro4 was already imported in
    this process: the two cannot share the name, and mixing them silently
    would be worse. Multiprocessing children (spawn, forkserver) inherit the
    shim through ``sys.path``; other child processes do not get it.
    """
    if installed():
        return
    loaded = sys.modules.get(ALIAS)
    if loaded is not None and getattr(loaded, "__name__", None) != TARGET:
        raise ImportError("the real Pyro4 is already imported in this process; call "
                          "pyro_loops.compat.install() before the first 'import Pyro4'")
    sys.meta_path.insert(0, Pyro4Finder())
    if SPAWN_PATH not in sys.path:
        sys.path.insert(1, SPAWN_PATH)  # after the script's folder, which stays sys.path[0]


def uninstall() -> None:
    """Switch the shim off and forget the ``Pyro4`` aliases imported so far."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, Pyro4Finder)]
    sys.path[:] = [entry for entry in sys.path if entry != SPAWN_PATH]
    for name in [name for name in sys.modules if target_name(name) is not None]:
        del sys.modules[name]


__all__ = ["ALIAS", "SPAWN_PATH", "TARGET", "Pyro4Finder", "install", "installed", "target_name", "uninstall"]
