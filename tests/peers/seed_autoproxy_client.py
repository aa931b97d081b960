"""Client for seed_autoproxy_server.py: what comes back must be a proxy that works."""

import json
import sys

import pyro_loops as Pyro4

factory = Pyro4.Proxy(sys.argv[1])
thing = factory.some_pyro_method()
print(json.dumps([type(thing).__name__, thing._pyroUri.object, thing.hello()]))
