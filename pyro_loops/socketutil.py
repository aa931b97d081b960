"""Finding addresses to bind to (Pyro4's ``socketutil`` helpers), and binding
with errors that say which address and what to do."""

from __future__ import annotations

import errno
import socket
from typing import Any

from .configuration import config
from .errors import ConnectionClosedError

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


def sock_location(sock: socket.socket, host: str = "") -> str:
    """Pyro's location string for a bound or connected socket: ``./u:<path>`` for a Unix
    socket, else its ``host:port`` (``host`` in place of the bound address if given)."""
    name = sock.getsockname()
    if sock.family == getattr(socket, "AF_UNIX", None):
        return "./u:" + (name or "<<not-bound>>")
    return location(host or name[0], name[1])


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


_NO_TIMEOUT_GIVEN = object()
_bind = bind  # createSocket's parameter of the same name hides it


def createSocket(bind: Any = None, connect: Any = None, reuseaddr: bool = False, keepalive: bool = True,  # noqa: N802
                 timeout: Any = _NO_TIMEOUT_GIVEN, noinherit: bool = False, ipv6: bool = False,
                 nodelay: bool = True, sslContext: Any = None) -> socket.socket:  # noqa: N803
    """A blocking TCP (or, for a str address, Unix) socket, bound and listening or connected (Pyro4's helper).

    ``timeout`` 0 means none (Pyro4's reading). ``noinherit`` is accepted:
    Python's sockets are never inherited by child processes anyway.
    """
    if bind and connect:
        raise ValueError("bind and connect cannot both be specified at the same time")
    address = bind or connect
    if isinstance(address, str):
        family = socket.AF_UNIX
    elif ipv6 or (address and ":" in str(address[0])):
        family = socket.AF_INET6
    else:
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if sslContext is not None:
        sock = sslContext.wrap_socket(sock, server_side=bool(bind),
                                      server_hostname=None if bind or family == socket.AF_UNIX else connect[0])
    if reuseaddr:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family != socket.AF_UNIX:
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if timeout is not _NO_TIMEOUT_GIVEN:
        sock.settimeout(timeout or None)
    if bind:
        bind_to = bind if isinstance(bind, str) else (bind[0] or ("::" if family == socket.AF_INET6 else ""), bind[1])
        _bind(sock, bind_to)
        sock.listen(100)
    elif connect:
        try:
            sock.connect(connect)
        except OSError:
            sock.close()
            raise
    return sock


def receiveData(sock: socket.socket, size: int) -> bytes:  # noqa: N802
    """Exactly ``size`` bytes from ``sock``; ConnectionClosedError if it ends first (Pyro4's helper)."""
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionClosedError(f"receiving: connection lost after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)
