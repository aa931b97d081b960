"""Seed chapter, "Example 1", client code; the URI the server printed is argv[1]."""

import sys

import pyro_loops as Pyro4

# use the URI that the server printed:
uri = sys.argv[1]
thing = Pyro4.Proxy(uri)
print(thing.method(42))   # prints 84
