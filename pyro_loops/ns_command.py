"""The ``pyro-loops-ns`` command: a name server on a select loop of its own.

(The name server *client* command, ``pyro-loops-nsc``, is ``nsc``.)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from typing import Any

from ._eventloop import SelectLoop
from ._nameserver import build_name_server
from ._nsstorage import Storage, open_storage
from .configuration import config
from .socketutil import check_port
from .constants import NAMESERVER_NAME
from .errors import PyroError


def startNSloop(host: str | None = None, port: int | None = None, enableBroadcast: bool = True,  # noqa: N802,N803
                bchost: str | None = None, bcport: int | None = None, unixsocket: str | None = None,
                nathost: str | None = None, natport: int | None = None, storage: str | Storage | None = None,
                hmac: bytes | str | None = None) -> None:
    """Run a name server (and its responder) on a select loop of its own until interrupted."""
    ns_uri, daemon, bcserver, refusal = build_name_server(host, port, enableBroadcast, bchost, bcport, unixsocket,
                                                          nathost, natport, storage, hmac)
    loop = SelectLoop()
    try:
        loop.attach(daemon)
        if bcserver is not None:
            loop.attach(bcserver)
            print(f"Broadcast server running on {bcserver.locationStr}")
        else:
            print(refusal)
        existing = daemon.nameserver.count() - 1
        if existing > 0:
            print(f"Persistent store contains {existing} existing registrations.")
        internal_uri = daemon.uriFor(NAMESERVER_NAME, nat=False)
        where = "Unix domain socket" if unixsocket else _ip_of(internal_uri.host)
        print(f"NS running on {daemon.locationStr} ({where})")
        if not hmac:
            print("Warning: HMAC key not set. Anyone can connect to this server!")
        if internal_uri != ns_uri:
            print(f"internal URI = {internal_uri}")
            print(f"external URI = {ns_uri}")
        else:
            print(f"URI = {ns_uri}")
        sys.stdout.flush()
        loop.run()
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()
        if bcserver is not None:
            bcserver.close()
        daemon.close()
    print("NS shut down.", flush=True)


def _ip_of(host: str | None) -> str:
    try:
        return socket.gethostbyname(host) if host else "?"
    except OSError:
        return host or "?"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _port(text: str) -> int:
    """An argparse type: a port number, 0..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    try:
        check_port(port)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return port


def main(args: list[str] | None = None) -> int:
    """``pyro-loops-ns``: run a name server until interrupted (HMAC key from PYRO_HMAC_KEY)."""
    parser = argparse.ArgumentParser(prog="pyro-loops-ns", description="Run a Pyro4-compatible name server.")
    parser.add_argument("-n", "--host", help="hostname or IP address to bind the server on")
    parser.add_argument("-p", "--port", type=_port, help=f"port to bind the server on (0 = any free port; "
                                                       f"default {config.NS_PORT})")
    parser.add_argument("-u", "--unixsocket", help="Unix domain socket to bind the server on instead")
    parser.add_argument("-s", "--storage", default="memory", help="'memory' (default), 'sql:<file>' or 'dbm:<file>'")
    parser.add_argument("-x", "--nobc", dest="enablebc", action="store_false", help="don't start a broadcast server")
    parser.add_argument("--bchost", help="address to bind the broadcast server on (default: all)")
    parser.add_argument("--bcport", type=_port, help=f"port of the broadcast server (default {config.NS_BCPORT})")
    parser.add_argument("--nathost", help="external hostname, when behind NAT")
    parser.add_argument("--natport", type=_port, help="external port, when behind NAT")
    options = parser.parse_args(args)
    try:
        # opened here so that a bad -s is a usage error (exit 2) like a bad -p
        storage = open_storage(options.storage)
    except (ValueError, PyroError) as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING)
    # A service manager stops us with SIGTERM: shut down as cleanly as on Ctrl-C.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        startNSloop(options.host, options.port, options.enablebc, options.bchost, options.bcport,
                    options.unixsocket, options.nathost, options.natport, storage,
                    os.environ.get("PYRO_HMAC_KEY") or None)
    except (OSError, ValueError, PyroError) as exc:
        print(f"pyro-loops-ns: cannot start the name server: {exc}", file=sys.stderr)
        return 1
    return 0
