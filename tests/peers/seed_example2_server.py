"""Seed chapter, "Example 2: server and client, with name server", server code.

argv[1] picks the listing's part: ``daemon`` (default) or ``serveSimple``. The name
server's location comes from PYRO_NS_HOST / PYRO_NS_PORT, as for any Pyro program.
"""

import sys

import pyro_loops as Pyro4

Pyro4.config.REQUIRE_EXPOSE = False


class Thing(object):
    def method(self, arg):
        return arg*2


if sys.argv[1:] in ([], ["daemon"]):
    # ------ normal code ------
    daemon = Pyro4.Daemon()
    ns = Pyro4.locateNS()
    uri = daemon.register(Thing())
    ns.register("mythingy", uri)
    daemon.requestLoop()
else:
    # ------ alternatively, using serveSimple -----
    Pyro4.Daemon.serveSimple(
        {
            Thing(): "mythingy"
        },
        ns=True, verbose=True)
