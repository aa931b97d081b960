"""Both ends of Pyro4's name server broadcast protocol (protocol notes section 9).

A client that knows no name server address sends ``GET_NSURI`` as a UDP
datagram to the broadcast addresses; every responder answers with its name
server's URI. ``BroadcastServer`` is the answering end, offering the same
hosting interface as a daemon so the loop hosting the name server can host it
too; ``ask_by_broadcast`` is the asking end, used by ``locateNS``.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import threading
import time
from typing import Any, Iterable

from . import hosting, socketutil
from ._uri import URI
from .configuration import config
from .errors import PyroError

log = logging.getLogger("pyro_loops")

_GET_NSURI = b"GET_NSURI"
_MAX_DATAGRAM = 100          # both ends of Pyro4's broadcast protocol read at most this much
_BROADCAST_ROUNDS = 3
_BROADCAST_WAIT = 0.7        # seconds to wait for a reply after each broadcast round


def _interface_address_towards(peer_ip: str) -> str:
    """The local IP address a datagram to ``peer_ip`` would leave from (no packet is sent)."""
    family = socket.AF_INET6 if ":" in peer_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((peer_ip, 9))
        return probe.getsockname()[0]


class BroadcastServer:
    """Answers ``GET_NSURI`` datagrams with the name server's URI.

    It owns one non-blocking UDP socket and offers the hosting interface of a
    daemon (``sockets``/``events`` for hand-written select loops, and the
    watcher interface of ``pyro_loops.hosting`` for adapters), so whatever hosts the
    name server's daemon can host this too. It has no deadlines.
    """

    def __init__(self, nsUri: URI | str, bchost: str | None = None, bcport: int | None = None,  # noqa: N803
                 ipv6: bool | None = None) -> None:
        self.nsUri = URI(nsUri)
        if bcport is None:
            bcport = config.NS_BCPORT
        if bchost is None:
            bchost = config.NS_BCHOST
        if ipv6 is None:
            ipv6 = ":" in (bchost or self.nsUri.host or "")
        socketutil.check_port(bcport, "bcport")
        if len(str(self.nsUri).encode("latin-1")) > _MAX_DATAGRAM:
            log.warning("name server URI longer than %d bytes; broadcast clients will get it cut short", _MAX_DATAGRAM)
        sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if config.SOCK_REUSE:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if not ipv6:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            socketutil.bind(sock, (bchost or ("::" if ipv6 else ""), bcport))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock: socket.socket | None = sock
        host, port = sock.getsockname()[:2]
        host = bchost or host
        self.locationStr = socketutil.location(host, port)
        self._watcher: hosting.Watcher | None = None
        log.info("name server broadcast responder on %s", self.locationStr)

    # --- the hosting interface --------------------------------------------

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.sock] if self.sock is not None else []

    def events(self, ready: Iterable[Any]) -> None:
        """For hand-written select loops: handle whatever of ``ready`` is ours."""
        if self.sock is not None and any(s is self.sock for s in ready):
            self.handle_event(self.sock, hosting.READ)

    def attach_watcher(self, watcher: hosting.Watcher) -> None:
        if self._watcher is not None:
            raise PyroError("a watcher is already attached to this broadcast server")
        self._watcher = watcher
        if self.sock is not None:
            watcher.add(self.sock, hosting.READ)
        watcher.set_deadline(None)

    def detach_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        if self.sock is not None:
            watcher.remove(self.sock)
        watcher.detached()

    def handle_event(self, sock: socket.socket, events: int) -> None:
        """Answer every request waiting on the socket; never raises."""
        with hosting.reported("name server broadcast responder"):
            self._drain()

    def handle_deadline(self) -> None:
        """Nothing is ever due: the responder has no deadlines."""

    def next_deadline(self) -> float | None:
        return None

    def processRequest(self) -> None:  # noqa: N802 - Pyro4's name
        """Pyro4's name for "the socket is readable"."""
        self.handle_event(self.sock, hosting.READ)

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def getPort(self) -> int:  # noqa: N802 - Pyro4's name
        return self.sock.getsockname()[1]

    def runInThread(self) -> threading.Thread:  # noqa: N802 - Pyro4's name
        """Answer requests in a thread of its own instead of a host loop (Pyro4's
        spelling); the thread ends once ``close()`` is called, within POLLTIMEOUT."""
        if self._watcher is not None:
            raise PyroError("this broadcast server is attached to a loop already")
        thread = threading.Thread(target=self._serve_in_thread, name="pyro_loops-broadcast", daemon=True)
        thread.start()
        return thread

    def _serve_in_thread(self) -> None:
        while (sock := self.sock) is not None:
            try:
                ready, _, _ = select.select([sock], [], [], config.POLLTIMEOUT)
            except (OSError, ValueError):  # closed meanwhile: the loop condition says so
                continue
            if ready:
                self.handle_event(sock, hosting.READ)

    # --- answering ---------------------------------------------------------

    def _drain(self) -> None:
        # A bounded number per wakeup, so a flood cannot starve the host loop;
        # the socket stays readable and the loop comes back for the rest.
        for _ in range(64):
            if self.sock is None:
                return
            try:
                data, sender = self.sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error reported on the next receive
                log.debug("broadcast responder receive failed: %s", exc)
                continue
            if data != _GET_NSURI:
                continue
            try:
                self.sock.sendto(self._reply_for(sender[0]), sender)
            except OSError as exc:
                log.debug("broadcast responder could not answer %s: %s", sender, exc)

    def _reply_for(self, requester_ip: str) -> bytes:
        uri = URI(self.nsUri)
        if uri.host in ("0.0.0.0", "::", ""):
            # Bound to all interfaces: tell the requester the address it can reach us on.
            try:
                uri.host = _interface_address_towards(requester_ip)
            except OSError:
                pass
        return str(uri).encode("latin-1")

    # --- lifetime ----------------------------------------------------------

    def close(self) -> None:
        """Stop watching (telling the watcher first) and close the socket. Idempotent."""
        self.detach_watcher()
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> "BroadcastServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def broadcast_refusal(unixsocket: str | None, internal_uri: URI, bchost: str | None) -> str | None:
    """Why no broadcast responder should run for this name server, or None."""
    if unixsocket:
        return "Not starting broadcast server for a Unix domain socket."
    if bchost is None and _is_loopback(internal_uri.host):
        # Answering on every interface with an address only this machine can
        # reach would mislead the network; an explicit bchost overrides this.
        return "Not starting broadcast server for localhost."
    return None



# --- the asking end ----------------------------------------------------------


def _broadcast_addresses() -> list[str]:
    addrs = config.BROADCAST_ADDRS
    if isinstance(addrs, str):
        addrs = addrs.split(",")
    return [addr.strip() for addr in addrs if addr.strip()]


def ask_by_broadcast() -> URI | None:
    """Send GET_NSURI to the configured broadcast addresses; the first valid answer, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for _ in range(_BROADCAST_ROUNDS):
            for addr in _broadcast_addresses():
                try:
                    sock.sendto(_GET_NSURI, (addr, config.NS_BCPORT))
                except OSError as exc:  # e.g. no route for one of the addresses
                    log.debug("GET_NSURI to %s failed: %s", addr, exc)
            deadline = time.monotonic() + _BROADCAST_WAIT
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                try:
                    data, _ = sock.recvfrom(_MAX_DATAGRAM)
                except OSError:  # timeout, or an ICMP error from one of the targets
                    break
                try:
                    return URI(data.decode("latin-1"))
                except PyroError:
                    log.debug("ignoring a malformed GET_NSURI answer: %r", data)
    return None
