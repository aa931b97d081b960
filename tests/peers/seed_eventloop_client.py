"""Client for seed_eventloop_server.py: a small call, a reply of argv[2] bytes, then the small call again.

argv[3] is the proxy timeout in seconds. The proxy's socket gets a small receive
buffer so the reply cannot slip through in one go while the server writes: the
server must come back to write the rest, however fast this client reads.
"""

import json
import socket
import sys

import pyro_loops as Pyro4

thing = Pyro4.Proxy(sys.argv[1])
thing._pyroTimeout = float(sys.argv[3])
thing._pyroBind()
thing._pyroConnection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
print(json.dumps([thing.method(21), len(thing.big(int(sys.argv[2]))), thing.method(4)]))
