"""A test server that echoes what it is sent: ``python -m pyro_loops.test.echoserver``.

It is the server Pyro4 users know as ``Pyro4.test.echoserver`` (same object
name, methods and options), for poking at a client without writing a server
first. It prints ``echo uri: PYRO:...`` and ``echoserver running.`` when it is
ready, and stops when a client calls ``shutdown()``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any, Iterator

from .. import naming
from .._expose import expose, oneway
from ..configuration import config
from ..daemon import Daemon

OBJECT_NAME = "test.echoserver"
SLOW_SECONDS = 5  # how long slow() and oneway_slow() take: long enough to see a call outlast a timeout


def _log(enabled: bool, what: str) -> None:
    if enabled:
        print(f"{time.asctime()} - {what}", flush=True)


@expose
class EchoServer:
    """Echoes its argument back; also raises, streams and dawdles on demand."""

    def __init__(self) -> None:
        self._verbose = False
        self._must_shutdown = False

    def echo(self, message: Any) -> Any:
        _log(self._verbose, f"echo: {message!r}")
        return message

    def error(self) -> None:
        _log(self._verbose, "error: raising ValueError")
        raise ValueError("expected error from echoserver error() method")

    def error_with_text(self) -> None:
        _log(self._verbose, "error: raising ValueError")
        raise ValueError("the message of the error")

    @oneway
    def oneway_echo(self, message: Any) -> Any:
        _log(self._verbose, f"oneway_echo: {message!r}")
        return "a oneway call's result is never sent"

    def slow(self) -> str:
        _log(self._verbose, "slow: sleeping")
        time.sleep(SLOW_SECONDS)
        return "Finally, an answer!"

    def generator(self) -> Iterator[str]:
        yield from ("one", "two", "three")

    def nan(self) -> float:
        return float("nan")

    def inf(self) -> float:
        return float("inf")

    @oneway
    def oneway_slow(self) -> str:
        _log(self._verbose, "oneway_slow: sleeping")
        time.sleep(SLOW_SECONDS)
        return "a oneway call's result is never sent"

    def _private(self) -> str:
        return "a private method must not be callable remotely"

    def __dunder__(self) -> str:
        return "a dunder method is callable remotely"

    def shutdown(self) -> None:
        _log(self._verbose, "shutting down")
        self._must_shutdown = True

    @property
    def verbose(self) -> bool:
        return self._verbose

    @verbose.setter
    def verbose(self, onoff: bool) -> None:
        self._verbose = bool(onoff)


def _start_name_server(host: str, hmac: bytes) -> Any:
    """A name server on ``host`` served by a daemon thread; returns its URI."""
    uri, daemon, bcserver = naming.startNS(host, hmac=hmac or None)
    if bcserver is not None:
        bcserver.close()  # a loopback test server needs no broadcast responder
    threading.Thread(target=daemon.requestLoop, name="echoserver-ns", daemon=True).start()
    return uri


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pyro_loops.test.echoserver",
                                     description="A Pyro test server that echoes what it is sent.")
    parser.add_argument("-H", "--host", default="localhost", help="host name to bind to (default: localhost)")
    parser.add_argument("-p", "--port", type=int, default=0, help="port to bind to (default: any free port)")
    parser.add_argument("-u", "--unixsocket", help="Unix domain socket to bind to instead")
    parser.add_argument("-n", "--naming", action="store_true", help="register with a name server")
    parser.add_argument("-N", "--nameserver", action="store_true", help="start a name server too (implies -n)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each call")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    return parser


def main(args: list[str] | None = None, returnWithoutLooping: bool = False) -> Any:  # noqa: N803 - Pyro4's name
    """Run the echo server until a client calls ``shutdown()``.

    With ``returnWithoutLooping`` it returns ``(daemon, echo_object, uri)``
    instead, for a caller that runs the daemon itself. The HMAC key comes from
    ``PYRO_HMAC_KEY`` if set.
    """
    options = _parser().parse_args(args)
    quiet = options.quiet and not options.verbose
    say = (lambda text: None) if quiet else print
    say("Starting the test echo server.")
    config.SERVERTYPE = "multiplex"
    hmac = os.environ.get("PYRO_HMAC_KEY", "").encode("utf-8")
    if not hmac:
        say("Warning: HMAC key not set. Anyone can connect to this server!")
    ns_uri = _start_name_server(options.host, hmac) if options.nameserver else None
    daemon = Daemon(host=options.host, port=options.port, unixsocket=options.unixsocket)
    if hmac:
        daemon._pyroHmacKey = hmac
    echo = EchoServer()
    echo.verbose = options.verbose
    uri = daemon.register(echo, OBJECT_NAME)
    if options.naming or options.nameserver:
        ns = naming.locateNS(ns_uri.host if ns_uri else None, ns_uri.port if ns_uri else None, hmac_key=hmac or None)
        ns.register(OBJECT_NAME, uri)
        _log(options.verbose, f"using name server at {ns._pyroUri}")
    say(f"object name: {OBJECT_NAME}")
    say(f"echo uri: {uri}")
    say("echoserver running.")
    if returnWithoutLooping:
        return daemon, echo, uri
    daemon.requestLoop(loopCondition=lambda: not echo._must_shutdown)
    daemon.close()
    return None


if __name__ == "__main__":
    sys.exit(main())
