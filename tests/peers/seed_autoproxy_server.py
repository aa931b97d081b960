"""Seed chapter, "Autoproxying": a method registers a new object and just returns it."""

import pyro_loops as Pyro4

Pyro4.config.REQUIRE_EXPOSE = False


class SomethingNew(object):
    def hello(self):
        return "hello from " + self._pyroId


class Factory(object):
    def some_pyro_method(self):
        thing=SomethingNew()
        self._pyroDaemon.register(thing)
        return thing    # just return it, no need to return a proxy


daemon = Pyro4.Daemon()
uri = daemon.register(Factory())
print("uri=", uri)
daemon.requestLoop()
