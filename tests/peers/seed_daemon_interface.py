"""Seed chapter, "Daemon Pyro interface": ping() and registered() on Pyro.Daemon.

The seed talks to a name server on localhost:9090; argv[1] gives the location
(host:port) instead. Prints the two results as one JSON line.
"""

import json
import sys

import pyro_loops as Pyro4

daemon = Pyro4.Proxy("PYRO:" + Pyro4.constants.DAEMON_NAME + "@" + sys.argv[1])
print(json.dumps([daemon.ping(), daemon.registered()]))
