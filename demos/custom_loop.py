"""A program with its own ``selectors`` main loop, hosting a name server, an
application daemon and a UDP service of its own -- all in one thread.

Nothing here is a pyro_loops loop: ``MainLoop`` below is the program's own,
the kind a game, a simulator or a device controller already has. To host a
daemon, a loop only has to keep the small promise of ``pyro_loops.hosting``:
the daemon tells a *watcher* which sockets to watch (``add``, ``modify``,
``remove``) and when it next needs attention (``set_deadline``); the loop
reports back with ``daemon.handle_event(sock, events)`` and
``daemon.handle_deadline()``. ``LoopWatcher`` is that watcher (a
``pyro_loops.hosting.Watcher``), in about 30 lines.
The name server's daemon (and its broadcast responder, when there is one) is
hosted the same way.

The loop sleeps in ``select()`` until a socket is ready or a deadline is due,
so an idle program does not wake up at all: ``state()`` reports how often the
loop went round, and that number only moves when something happened.

Run it, then talk to it::

    python demos/custom_loop.py                          # name server on localhost:9090
    python demos/client.py custom                        # finds demo.custom there
    python demos/client.py custom --call state
    python -c "import socket; s=socket.socket(type=socket.SOCK_DGRAM); s.sendto(b'hi', ('localhost', PORT)); print(s.recv(100))"
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any, Callable

import pyro_loops
from pyro_loops.naming import startNS

from _support import CallLog, SignalWakeup, Tally, logged

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class MainLoop:
    """The program's own main loop: one selector, the daemons' deadlines, a stop flag."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.deadlines: dict[LoopWatcher, float] = {}
        self.running = False
        self.iterations = 0   # times select() returned: the loop's wakeups
        self.events = 0       # socket readiness events handled

    def host(self, target: Any) -> "LoopWatcher":
        """Serve a daemon (or anything with the hosting interface) from this loop."""
        watcher = LoopWatcher(self, target)
        target.attach_watcher(watcher)
        return watcher

    def add_reader(self, sock: Any, callback: Callable[[Any], None]) -> None:
        self.selector.register(sock, READ, lambda ready, _events: callback(ready))

    def run(self) -> None:
        self.running = True
        while self.running:
            timeout = None
            if self.deadlines:
                timeout = max(0.0, min(self.deadlines.values()) - time.monotonic())
            ready = self.selector.select(timeout)
            self.iterations += 1
            for key, events in ready:
                if self.selector.get_map().get(key.fd) is not key:
                    continue  # an earlier callback of this round removed it
                self.events += 1
                self.guarded(key.data, key.fileobj, events)
            now = time.monotonic()
            for watcher, when in list(self.deadlines.items()):
                if when <= now:
                    del self.deadlines[watcher]
                    self.guarded(watcher.target.handle_deadline)

    @staticmethod
    def guarded(callback: Callable, *args: Any) -> None:
        """The program's own callbacks may fail; the loop must go on."""
        try:
            callback(*args)
        except Exception as exc:
            print(f"error in a loop callback: {type(exc).__name__}: {exc}", flush=True)


class LoopWatcher:
    """The watcher ``MainLoop`` gives each hosted daemon: it keeps the rules of
    ``pyro_loops.hosting.Watcher``, each method's in its docstring there."""

    def __init__(self, loop: MainLoop, target: Any) -> None:
        self.loop = loop
        self.target = target

    def add(self, sock: socket.socket, events: int) -> None:
        self.loop.selector.register(sock, events, self.ready)

    def modify(self, sock: socket.socket, events: int) -> None:
        if not events:  # a selector cannot watch for nothing: drop it until the next modify
            self.remove(sock)
            return
        try:
            self.loop.selector.modify(sock, events, self.ready)
        except KeyError:
            self.loop.selector.register(sock, events, self.ready)

    def remove(self, sock: socket.socket) -> None:
        try:
            self.loop.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def set_deadline(self, when: float | None) -> None:
        if when is None:
            self.loop.deadlines.pop(self, None)
        else:
            self.loop.deadlines[self] = when

    def detached(self) -> None:
        self.loop.deadlines.pop(self, None)

    def ready(self, sock: socket.socket, events: int) -> None:
        self.target.handle_event(sock, events)


class UdpEcho:
    """The program's own little service: answers each datagram with a numbered echo."""

    def __init__(self, host: str, port: int, log: CallLog) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((socket.gethostbyname(host), port))
        self.sock.setblocking(False)
        self.log = log
        self.count = 0

    def readable(self, sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(2048)
            except BlockingIOError:
                return
            self.count += 1
            sock.sendto(b"echo #%d: " % self.count + data, peer)
            self.log.write(f"{peer[0]}:{peer[1]}  udp datagram {data[:40]!r}")


@pyro_loops.expose
class LoopService(Tally):
    """The published object; runs in the loop's thread like everything else here."""

    def __init__(self, loop: MainLoop, udp: UdpEcho, ns_uri: pyro_loops.URI, log: CallLog) -> None:
        super().__init__()
        self.loop = loop
        self.udp = udp
        self.ns_uri = ns_uri
        self.log = log

    def info(self) -> str:
        return "custom loop demo: a selectors loop of its own hosts a name server, this daemon and a UDP service"

    @logged
    def udp_address(self) -> list:
        host, port = self.udp.sock.getsockname()[:2]
        return [host, port]

    def state(self) -> dict:
        return {
            "counter": self.counter,
            "messages": list(self.messages),
            "udp_datagrams": self.udp.count,
            "loop_iterations": self.loop.iterations,
            "loop_events": self.loop.events,
            "sockets_watched": len(self.loop.selector.get_map()),
            "name_server": str(self.ns_uri),
            "log": self.log.last(20),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A hand-written selectors main loop hosting a name server, "
                                                 "an application daemon and a UDP echo service in one thread.")
    parser.add_argument("--host", default="localhost", help="address for every socket (default: localhost)")
    parser.add_argument("--ns-port", type=int, default=pyro_loops.config.NS_PORT,
                        help=f"name server port (default {pyro_loops.config.NS_PORT}; 0: any free port)")
    parser.add_argument("--port", type=int, default=0, help="application daemon port (default: any free port)")
    parser.add_argument("--udp-port", type=int, default=0, help="UDP echo port (default: any free port)")
    parser.add_argument("--name", default="demo.custom", help="name of the object in the name server")
    options = parser.parse_args(argv)

    loop = MainLoop()
    log = CallLog()
    ns_uri, ns_daemon, bcserver = startNS(options.host, options.ns_port)
    daemon = pyro_loops.Daemon(options.host, options.port)
    udp = UdpEcho(options.host, options.udp_port, log)
    try:
        uri = daemon.register(LoopService(loop, udp, ns_uri, log), options.name)
        ns_daemon.nameserver.register(options.name, uri)  # same process, same thread: no proxy needed
        loop.host(ns_daemon)
        if bcserver is not None:
            loop.host(bcserver)
        loop.host(daemon)
        loop.add_reader(udp.sock, udp.readable)

        # Ctrl+C and SIGTERM: the handler clears the flag, the wakeup socket makes select() return.
        wakeup = SignalWakeup()
        loop.add_reader(wakeup.reader, wakeup.drain)

        def stop(*_: object) -> None:
            loop.running = False

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

        print(f"name server = {ns_uri}" + ("" if bcserver else " (no broadcast responder)"), flush=True)
        print(f"uri = {uri}  (registered as '{options.name}')", flush=True)
        print(f"udp = {udp.sock.getsockname()[0]}:{udp.sock.getsockname()[1]}", flush=True)
        print(f"ready (pid {os.getpid()})", flush=True)
        loop.run()
        wakeup.close()
        print(f"stopped after {loop.iterations} loop iterations", flush=True)
    finally:
        daemon.close()
        if bcserver is not None:
            bcserver.close()
        ns_daemon.close()
        udp.sock.close()
        loop.selector.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
