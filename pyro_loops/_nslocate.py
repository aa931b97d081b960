"""Finding a name server from the loop, for the loop client's ``PYRONAME:``/``PYROMETA:`` URIs.

The same order as ``pyro_loops.locateNS``: NS_HOST if it is a loopback address,
then a ``GET_NSURI`` broadcast, then NS_HOST directly; each attempt is a loop
call (a bind of a loop proxy bounded by a short timeout), and the broadcast
is a UDP socket the client's host loop watches, with a deadline for the
answer. Nothing waits. ``client`` below is the ``pyro_loops.Client`` asking
(not imported here: it imports this module).
"""

from __future__ import annotations

import socket
from typing import Any

from . import errors
from .hosting import READ
from ._uri import URI
from .call import Call
from .configuration import config
from .constants import NAMESERVER_NAME
from ._broadcast import _BROADCAST_WAIT, _GET_NSURI, _MAX_DATAGRAM, _broadcast_addresses
from ._resolve import _STEP_TIMEOUT, _ns_location


def locate(client: Any, hmac_key: bytes | None) -> Call:
    """A call whose result is a bound loop proxy of a name server, or a NamingError."""
    ns_host = config.ns_host()
    attempts: list[str | None] = []
    if ns_host in ("localhost", "::1") or ns_host.startswith("127."):
        attempts.append(ns_host)
    if config.PREFER_IP_VERSION != 6:
        attempts.append(None)  # the broadcast
    if ns_host not in attempts:
        attempts.append(ns_host)
    located = Call("locate the name server")
    failures: list[str] = []

    def next_attempt(reason: str | None = None) -> None:
        if reason:
            failures.append(reason)
        if not attempts:
            located.set_exception(errors.NamingError("Failed to locate the nameserver: " + "; ".join(failures)))
        elif (attempt := attempts.pop(0)) is None:
            Broadcast(client).call.add_done_callback(broadcast_answered)
        else:
            try_uri(URI(f"PYRO:{NAMESERVER_NAME}@{_ns_location(attempt, config.NS_PORT)}"))

    def broadcast_answered(call: Call) -> None:
        exc = call.exception()
        if exc is None:
            try_uri(call.result())
        else:
            next_attempt(f"no answer to a broadcast on port {config.NS_BCPORT}")

    def try_uri(uri: URI) -> None:
        ns = client.proxy(uri)
        ns._pyroHmacKey = hmac_key
        ns._pyroTimeout = _STEP_TIMEOUT

        def bound(call: Call) -> None:
            exc = call.exception()
            if exc is None:
                ns._pyroTimeout = config.COMMTIMEOUT or None
                located.set_result(ns)
            else:
                next_attempt(f"{uri.location}: {exc}")

        ns._pyroBind().add_done_callback(bound)

    next_attempt()
    return located


class Broadcast:
    """One ``GET_NSURI`` round: ``call`` gets the first valid answer, or fails at its deadline."""

    interest = READ

    def __init__(self, client: Any) -> None:
        self.client = client
        self.call = Call("GET_NSURI broadcast")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for addr in _broadcast_addresses():
            try:
                self.sock.sendto(_GET_NSURI, (addr, config.NS_BCPORT))
            except OSError:  # no route for one of the addresses, a full buffer: the others may answer
                pass
        client._watch(self.sock, self, READ)
        client._add_timer(self.call, _BROADCAST_WAIT)
        self.call.add_done_callback(self._close)

    def on_ready(self, events: int) -> None:
        while not self.call.done():
            try:
                data, _ = self.sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error for one of the targets
                continue
            try:
                self.call.set_result(URI(data.decode("latin-1")))
            except errors.PyroError:
                continue  # a malformed answer: wait for another

    def _close(self, _call: Call) -> None:
        self.client._unwatch(self.sock)
        self.sock.close()

