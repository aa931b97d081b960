"""Pyro4's ``futures`` module: ``Future`` and ``FutureResult``.

Both are served from the package as soon as pyro_loops provides them (see
``_pyro4names``); until then asking for one says it is not available yet.
"""

from ._pyro4names import package_fallback

__getattr__ = package_fallback("futures", ("Future", "FutureResult"))
