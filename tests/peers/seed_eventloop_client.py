"""Client for seed_eventloop_server.py: a small call, a reply of argv[2] bytes, then the small call again.

argv[3] is the proxy timeout in seconds.
"""

import json
import sys

import pyro_loops as Pyro4

thing = Pyro4.Proxy(sys.argv[1])
thing._pyroTimeout = float(sys.argv[3])
print(json.dumps([thing.method(21), len(thing.big(int(sys.argv[2]))), thing.method(4)]))
