"""Seed chapter, "Integrating Pyro in your own event loop": a hand-written select() loop.

The program owns the loop; Pyro only gets ``daemon.sockets`` to watch and
``daemon.events(ready)`` to call. ``big`` returns a reply far larger than a socket
buffer, which such a loop (watching readability only) must still deliver.
"""

import select

import pyro_loops as Pyro4

Pyro4.config.REQUIRE_EXPOSE = False


class Thing(object):
    def method(self, arg):
        return arg*2

    def big(self, size):
        return "x" * size


daemon = Pyro4.Daemon()
uri = daemon.register(Thing())
print("uri=", uri)
while True:
    ready, _, _ = select.select(daemon.sockets, [], [], 3.0)
    if ready:
        daemon.events(ready)
