"""A pyro_loops daemon serving ``service.Service`` under the id "service", in its own process.

The counterpart of pyro4_server.py for tests that need our daemon as a real
server process (one they can kill mid-call). Settings come from ``PYRO_*``
environment variables. Prints one JSON line ``{"uri": ...}`` when ready and
exits when stdin closes.
"""

import json

import pyro_loops

from service import build, serve_until_stdin_closes


def main():
    service_class, _ = build(pyro_loops.expose, pyro_loops.oneway)
    daemon = pyro_loops.Daemon(host="127.0.0.1")
    uri = daemon.register(service_class(), "service")
    print(json.dumps({"uri": str(uri), "location": daemon.locationStr}), flush=True)
    serve_until_stdin_closes(daemon)


if __name__ == "__main__":
    main()
