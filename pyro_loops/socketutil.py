"""Finding addresses to bind to (Pyro4's ``socketutil`` helpers)."""

from __future__ import annotations

import socket

from .configuration import config


def getIpAddress(hostname: str | None, workaround127: bool = False, ipVersion: int | None = None) -> str:  # noqa: N802
    """The IP address of ``hostname`` (this host if empty).

    With ``workaround127`` a loopback answer is replaced by the address of the
    interface that routes outwards, for publishing a daemon to other machines.
    """
    version = config.PREFER_IP_VERSION if ipVersion is None else ipVersion
    family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(version, socket.AF_UNSPEC)
    name = hostname or socket.gethostname()
    try:
        address = socket.getaddrinfo(name, 80, family, socket.SOCK_STREAM)[0][4][0]
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
