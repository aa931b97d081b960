"""Pyro URIs: ``PYRO:obj@host:port``, ``PYRONAME:name[@host[:port]]``,
``PYROMETA:tag1,tag2[@host[:port]]`` and ``PYRO:obj@./u:/path/to/socket``."""

from __future__ import annotations

import re

from .configuration import config
from .errors import PyroError

_URI_RE = re.compile(r"(?P<protocol>[Pp][Yy][Rr][Oo][a-zA-Z]*):(?P<object>\S+?)(@(?P<location>.+))?$")
_IPV6_HOST = re.compile(r"[0-9a-fA-F:%]+$")
_FORMS = ("PYRO:<object id>@<host>:<port>, PYRO:<object id>@./u:<socket path>, "
          "PYRONAME:<name>[@<host>[:<port>]] or PYROMETA:<tag>[,<tag>...][@<host>[:<port>]]")


def _invalid(what: str, text: str) -> PyroError:
    """A parse error that shows the text (cut short) and the forms a URI may take.

    ``what`` is Pyro4's wording ("invalid uri", "invalid uri (protocol)"...),
    kept at the front for anyone matching on it.
    """
    shown = text if len(text) <= 80 else text[:77] + "..."
    return PyroError(f"{what}: {shown!r}; expected {_FORMS}")


class URI:
    """A parsed Pyro URI. Construct it from a string or copy another URI."""

    __slots__ = ("protocol", "object", "sockname", "host", "port")

    def __init__(self, uri: "str | URI") -> None:
        if isinstance(uri, URI):
            self.protocol, self.object, self.sockname, self.host, self.port = uri.state
            return
        if not isinstance(uri, str):
            raise TypeError("uri parameter object is of wrong type")
        self.sockname = self.host = self.port = None
        match = _URI_RE.match(uri)
        if not match:
            raise _invalid("invalid uri", uri)
        self.protocol = match.group("protocol").upper()
        self.object = match.group("object")
        location = match.group("location")
        if self.protocol == "PYRONAME":
            self._parse_location(location, config.NS_PORT, uri)
        elif self.protocol == "PYRO":
            if not location:
                raise _invalid("invalid uri", uri)
            self._parse_location(location, None, uri)
        elif self.protocol == "PYROMETA":
            self.object = {tag.strip() for tag in self.object.split(",")}
            self._parse_location(location, config.NS_PORT, uri)
        else:
            raise _invalid("invalid uri (protocol)", uri)

    def _parse_location(self, location: str | None, default_port: int | None, text: str) -> None:
        if not location:
            return
        if location.startswith("./u:"):
            self.sockname = location[4:]
            if not self.sockname or ":" in self.sockname:
                raise _invalid("invalid uri (location)", text)
            return
        if location.startswith("["):
            if location.startswith("[["):
                raise PyroError("invalid ipv6 address: enclosed in too many brackets")
            close = location.find("]")
            host = location[1:close] if close > 0 else ""
            if close < 0 or not _IPV6_HOST.match(host):
                raise PyroError("invalid ipv6 address: the part between brackets must be a numeric ipv6 address")
            self.host = host
            rest = location[close + 1:]
            port_text = rest[1:] if rest.startswith(":") else None
        else:
            self.host, _, port_text = location.partition(":")
            port_text = port_text or None
        if port_text is None:
            self.port = default_port
        else:
            try:
                self.port = int(port_text)
            except ValueError:
                raise _invalid(f"invalid port in uri, port={port_text}", text) from None
        if self.protocol == "PYRO" and self.port is None:
            raise _invalid("invalid port in uri, port=None", text)

    @staticmethod
    def isUnixsockLocation(location: str) -> bool:  # noqa: N802 - Pyro4's name
        return location.startswith("./u:")

    @property
    def location(self) -> str | None:
        if self.host:
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{host}:{self.port}" if self.port is not None else host
        if self.sockname:
            return "./u:" + self.sockname
        return None

    @property
    def state(self) -> tuple:
        return (self.protocol, self.object, self.sockname, self.host, self.port)

    @classmethod
    def from_state(cls, state) -> "URI":
        uri = cls.__new__(cls)
        protocol, obj, sockname, host, port = state
        if protocol == "PYROMETA" and not isinstance(obj, set):
            obj = set(obj)
        uri.protocol, uri.object, uri.sockname, uri.host, uri.port = protocol, obj, sockname, host, port
        return uri

    def asString(self) -> str:  # noqa: N802 - Pyro4's name
        obj = ",".join(sorted(self.object)) if self.protocol == "PYROMETA" else self.object
        text = f"{self.protocol}:{obj}"
        location = self.location
        return f"{text}@{location}" if location else text

    __str__ = asString

    def __repr__(self) -> str:
        return f"<pyro_loops.URI at 0x{id(self):x}; {self}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, URI) and self.state == other.state

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(str(self))

    def __getstate__(self):
        return self.state

    def __setstate__(self, state) -> None:
        self.protocol, self.object, self.sockname, self.host, self.port = state
