"""Seed chapter, "Example 2", client code (finds the name server through PYRO_NS_HOST/PORT)."""

import pyro_loops as Pyro4

thing = Pyro4.Proxy("PYRONAME:mythingy")
print(thing.method(42))   # prints 84
