"""Pyro4 names that a module promises before pyro_loops has built them all.

``Pyro4.core`` and ``Pyro4.futures`` export names (``callback``, ``Future``,
``SerializedBlob``...) that other parts of pyro_loops add to the package one by
one. Rather than keep a second list of imports in step, those modules look
such names up on the package when first asked, and a name not built yet fails
with an AttributeError that says so instead of a bare "has no attribute".
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable


def package_fallback(module: str, names: Iterable[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves ``names`` from the pyro_loops package.

    Raises AttributeError for any other name, and for one of ``names`` the
    package does not (yet) have, naming the Pyro4 spelling that was asked for.
    """
    promised = frozenset(names)

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's fixed name
        if name in promised:
            value = getattr(sys.modules["pyro_loops"], name, None)
            if value is not None:
                return value
            raise AttributeError(f"Pyro4.{module}.{name} is not available in pyro_loops yet "
                                 f"(see the README, 'What a Pyro4 user must know')")
        raise AttributeError(f"module 'pyro_loops.{module}' has no attribute {name!r}")

    return __getattr__
