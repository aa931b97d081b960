"""Seed chapter, "Example 1: server and client not using name server", server code.

The seed's listing has a "normal code" part and an "alternatively, using serveSimple"
part; the second only runs when the first is skipped, so argv[1] picks one:
``daemon`` (default) or ``serveSimple``. The seed's Thing has no @expose, hence
REQUIRE_EXPOSE = False.
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
    uri = daemon.register(Thing())
    print("uri=", uri)
    daemon.requestLoop()
else:
    # ------ alternatively, using serveSimple -----
    Pyro4.Daemon.serveSimple(
        {
            Thing(): None
        },
        ns=False, verbose=True)
