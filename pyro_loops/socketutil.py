"""Finding addresses to bind to (Pyro4's ``socketutil`` helpers), and binding
with errors that say which address and what to do."""

from __future__ import annotations

import errno
import socket
from typing import Any

from .configuration import config

_BIND_ADVICE = {
    errno.EADDRINUSE: "something else listens there (another daemon or name server?): stop it, "
                      "or choose another port (0 picks a free one)",
    errno.EACCES: "ports below 1024 need privileges: choose a port from 1024 up (0 picks a free one)",
    errno.EADDRNOTAVAIL: "this machine has no such address: bind to one of its own addresses, "
                         "or '' / 0.0.0.0 for all of them",
}


def location(host: str, port: int) -> str:
    """``host:port`` as Pyro writes it, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_port(port: Any, what: str = "port") -> None:
    """Refuse an int port outside 0..65535 with a ValueError naming it.

    Without this, getaddrinfo() takes 70000 as 4464 (70000 - 65536) and a
    daemon would listen on a port nobody asked for.
    """
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise ValueError(f"{what} {port} is out of range: use 0..65535 (0 picks a free port)")


def bind(sock: socket.socket, address: Any) -> None:
    """``sock.bind(address)``; on failure the socket is closed and the OSError
    (same errno) names the address and, where there is one, the usual fix."""
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if isinstance(address, tuple):
            host, port = address[:2]
            where = location(host or "0.0.0.0", port)  # "0.0.0.0": what "" means to bind()
        else:
            where = repr(address)  # a Unix socket path (or an abstract name starting with NUL)
        advice = _BIND_ADVICE.get(exc.errno) if exc.errno is not None else None
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot bind to {where}: {reason}" + (f"; {advice}" if advice else "")) from exc


def getIpAddress(hostname: str | None, workaround127: bool = False, ipVersion: int | None = None) -> str:  # noqa: N802
    """The IP address of ``hostname`` (this host if empty).

    With ``workaround127`` a loopback answer is replaced by the address of the
    interface that routes outwards, for publishing a daemon to other machines.
    """
    version = config.PREFER_IP_VERSION if ipVersion is None else ipVersion
    family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(version, socket.AF_UNSPEC)
    name = hostname or socket.gethostname()
    try:
        address = str(socket.getaddrinfo(name, 80, family, socket.SOCK_STREAM)[0][4][0])
    except socket.gaierror:
        if hostname:
            raise
        address = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    if workaround127 and (address.startswith("127.") or address == "::1"):
        address = getInterfaceAddress("4.2.2.2" if family != socket.AF_INET6 else "2001:4860:4860::8888")
    return address


def getInterfaceAddress(ip_address: str) -> str:  # noqa: N802
    """The local address of the interface that would route to ``ip_address``.

    Connecting a UDP socket sends no packet; it only asks the kernel for a route.
    """
    family = socket.AF_INET6 if ":" in ip_address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((ip_address, 53))
            return sock.getsockname()[0]
        except OSError:
            return "::1" if family == socket.AF_INET6 else "127.0.0.1"
