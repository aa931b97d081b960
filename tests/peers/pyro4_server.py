"""A stock Pyro4 4.82 daemon serving ``service.Service`` under the id "service".

Usage: ``pyro4_server.py [--port N] [--hmac KEY]``. Everything else (SERVERTYPE,
COMPRESSION, SERIALIZERS_ACCEPTED, ...) comes from ``PYRO_*`` environment variables,
as it would for any Pyro4 program. Prints one JSON line ``{"uri": ..., "location": ...}``
when it is ready, and exits when stdin closes.
"""

import argparse
import json

import Pyro4

from service import build, serve_until_stdin_closes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hmac", default=None)
    args = parser.parse_args()

    Service, _ = build(Pyro4.expose, Pyro4.oneway)
    daemon = Pyro4.Daemon(host="127.0.0.1", port=args.port)
    if args.hmac is not None:
        daemon._pyroHmacKey = args.hmac.encode()
    uri = daemon.register(Service(), "service")
    print(json.dumps({"uri": str(uri), "location": daemon.locationStr,
                      "servertype": Pyro4.config.SERVERTYPE}), flush=True)
    serve_until_stdin_closes(daemon)


if __name__ == "__main__":
    main()
