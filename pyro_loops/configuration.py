"""Configuration items, with Pyro4's names and defaults where Pyro4 has them.

Every item can be overridden by an environment variable ``PYRO_<NAME>`` read
when the configuration is (re)set. Items that Pyro4 does not have are the
limits a loop-hosted daemon needs (half-frame and handshake deadlines, caps on
output buffers, buffered input, connections, item streams and queued worker
jobs, per-wakeup fairness).
"""

from __future__ import annotations

import os
import pickle
from typing import TYPE_CHECKING, Any

_TRUE = {"1", "yes", "on", "true"}
_FALSE = {"0", "no", "off", "false"}

_DEFAULTS: dict[str, Any] = {
    # Pyro4 items
    "HOST": "localhost",
    "NS_HOST": None,  # None means "same as HOST"; resolved when read
    "NS_PORT": 9090,
    "NS_BCPORT": 9091,
    "NS_BCHOST": None,
    "NS_AUTOCLEAN": 0.0,
    "NATHOST": None,
    "NATPORT": 0,
    # "multiplex": calls run in the thread of the loop that hosts the daemon,
    # which is what a GUI wants. "thread": calls run in a bounded worker pool.
    # None (unset): "thread" for a daemon served by requestLoop()/serveSimple()/a
    # hand-written events() loop, as in Pyro4; "multiplex" in an adapter's loop.
    "SERVERTYPE": None,
    "THREADPOOL_SIZE": 40,
    "THREADPOOL_SIZE_MIN": 4,
    # seconds a worker above THREADPOOL_SIZE_MIN stays idle before it ends (Pyro4 4.82
    # has no such item: its worker ends at once, which 0 gives)
    "THREADPOOL_IDLE_TIMEOUT": 5.0,
    # None: in the background unless the daemon runs calls in an adapter's loop
    # with SERVERTYPE unset (there inline, in order with the connection's calls).
    "ONEWAY_THREADED": None,
    "AUTOPROXY": True,
    "COMPRESSION": False,
    "MAX_MESSAGE_SIZE": 0,
    "COMMTIMEOUT": 0.0,
    "POLLTIMEOUT": 2.0,
    "SERIALIZER": "serpent",
    "SERIALIZERS_ACCEPTED": {"serpent", "marshal", "json"},
    "PICKLE_PROTOCOL_VERSION": pickle.HIGHEST_PROTOCOL,
    "DILL_PROTOCOL_VERSION": pickle.HIGHEST_PROTOCOL,
    "JSON_MODULE": "json",
    "METADATA": True,
    "REQUIRE_EXPOSE": True,
    "ITER_STREAMING": True,
    "ITER_STREAM_LIFETIME": 0.0,
    "ITER_STREAM_LINGER": 30.0,
    "DETAILED_TRACEBACK": False,
    "SOCK_REUSE": True,
    "SOCK_NODELAY": False,
    "PREFER_IP_VERSION": 4,
    "BROADCAST_ADDRS": "<broadcast>, 0.0.0.0",
    "MAX_RETRIES": 0,
    "LOGWIRE": False,
    # TLS, with Pyro4's names and meaning; both ends must agree (nothing on the wire says TLS is on)
    "SSL": False,
    "SSL_SERVERCERT": "",
    "SSL_SERVERKEY": "",
    "SSL_SERVERKEYPASSWD": "",
    "SSL_REQUIRECLIENTCERT": False,
    "SSL_CLIENTCERT": "",
    "SSL_CLIENTKEY": "",
    "SSL_CLIENTKEYPASSWD": "",
    "SSL_CACERTS": "",
    # TLS handshake steps (key exchange, signatures: milliseconds of CPU each) a
    # daemon (or loop Client) takes per pass of its host loop; more wait for the
    # next pass, so many handshakes at once cannot hold the loop. Must be >= 1.
    "SSL_HANDSHAKES_PER_WAKEUP": 4,
    # pyro_loops items
    "HALF_FRAME_TIMEOUT": 10.0,   # seconds a partly received message may wait
    "IDLE_TIMEOUT": 0.0,          # seconds without traffic before a connection is closed; 0 = never
    "MAX_CONNECTIONS": 1024,      # accepted connections per daemon; further ones are closed at once
    "MAX_OUTPUT_BUFFER": 256 * 1024 * 1024,  # bytes of unsent replies per connection
    "MAX_CALLS_PER_WAKEUP": 32,   # messages handled per connection per readiness event
    "LOG_REPEAT_LIMIT": 10,       # lines per reason and interval for errors peers can repeat; 0 = no limit
    "LOG_REPEAT_INTERVAL": 10.0,  # seconds of that interval
    "CLIENT_MAX_PENDING": 10000,  # calls pending per pyro_loops.Client; more fail at once
    "CLIENT_MAX_NESTING": 16,     # nested loops deep a Client runs done-callbacks at once; deeper they wait
    "ITER_STREAM_PREFETCH": 8,    # items of a remote iterator a loop client requests ahead
    # Seconds a new connection may take to complete its CONNECT handshake (the TLS
    # handshake shares it); silent connections would otherwise hold a
    # MAX_CONNECTIONS slot forever. A proxy or loop Client has the same deadline
    # for connecting and both handshakes, also when COMMTIMEOUT is 0 (calls
    # may wait for ever; a silent server must not hold a connect). 0 = no deadline.
    "HANDSHAKE_TIMEOUT": 10.0,
    # Open item streams per connection. Each holds a live iterator (a generator
    # frame and whatever it references) until exhausted, closed or expired; a
    # client that opens more gets an error naming this item. 0 = no bound.
    "ITER_STREAMS_MAX_PER_CONNECTION": 1000,
    # Open item streams in one daemon, over all connections and lingering ones
    # together (the count per connection alone lets MAX_CONNECTIONS clients
    # keep 1000 each, and reconnecting clients leave theirs lingering). At the
    # bound a new stream ends the stream that has lingered longest (a line
    # naming this item is logged); with none lingering it is refused with an
    # error naming this item. 0 = no bound.
    "ITER_STREAMS_MAX": 10_000,
    # Worker jobs (oneway calls run in the pool) one connection may have queued or
    # running. At the bound the daemon stops reading that connection until half of
    # them have run, so one flooding client cannot fill the pool's queue ahead of
    # everyone else; nothing it sent is dropped. 0 = no bound.
    "MAX_QUEUED_JOBS_PER_CONNECTION": 100,
    # Payload bytes of the oneway worker jobs of all connections together. The
    # count per connection alone lets MAX_CONNECTIONS clients queue 100 jobs
    # each (10 connections x 100 jobs of 60 KB grew a daemon by 114 MB). Past
    # it, connections with jobs pending are not read until half has run. 0 = no bound.
    "MAX_QUEUED_JOB_BYTES": 64 * 1024 * 1024,
    # Bytes received but not yet turned into messages, over all connections
    # together. MAX_MESSAGE_SIZE (0 by default, as in Pyro4) bounds one message;
    # this bounds what many peers announcing huge bodies can make the daemon
    # hold. Past it the connection buffering the most is closed. 0 = no bound.
    "MAX_BUFFERED_INPUT": 512 * 1024 * 1024,
    # Payload bytes (decompressed) that one request may hand to a decoder that
    # holds the interpreter lock until it is done, which stalls the host loop's
    # thread even while a worker decodes: json's C scanner (some 35 ms per MB
    # of numbers), serpent's full parser (each byte counted 64 times),
    # marshal's container items (4 bytes each), msgpack, pickle. Larger payloads are decoded step by step where
    # the serializer can (serpent's common subset, json) or refused with an
    # error reply naming this item.
    # A loop client decodes a reply over it (or a compressed one over 1/1024 of it:
    # zlib inflates up to ~1000-fold) in a worker thread while the loop goes on.
    "MAX_BLOCKING_DECODE": 2 * 1024 * 1024,
    # What the host loop's thread may spend encoding one reply, in payload bytes
    # of a list of small ints (an int counts 8, a float 24, a container 32
    # besides its items, a byte of a string or bytes a quarter: see
    # _serializers.encoding_cost). A result estimated larger is encoded (and
    # compressed) by a worker with an encoder that lets the interpreter lock go
    # (json and serpent walked in Python, 3 to 10 times slower than their C
    # paths), while the loop runs on; msgpack and pickle, which have no such
    # encoder, answer with an error naming this item.
    "MAX_BLOCKING_ENCODE": 512 * 1024,
    # Decompressed bytes of a CONNECT payload, decoded in the loop's thread
    # before the handshake; a larger one is refused with a CONNECTFAIL.
    "MAX_HANDSHAKE_SIZE": 64 * 1024,
    # Seconds a name server's list(regex=...)/remove(regex=...) may spend
    # matching, over all names together; a slower pattern gets a NamingError.
    "NS_REGEX_TIMEOUT": 0.05,
    # Bytes of replies made but not yet taken by the clients' sockets, over all
    # connections together. MAX_OUTPUT_BUFFER bounds one connection; this bounds
    # what many clients asking for large replies and never reading them can make
    # the daemon hold. Past it the connection holding the most is closed. 0 = no bound.
    "MAX_BUFFERED_OUTPUT": 512 * 1024 * 1024,
    # Registrations a name server holds (its own included), and characters in one
    # (name, URI and metadata tags together). Registering is open to anyone who
    # reaches the name server; without these a client can grow it without end.
    # A registration past either gets a NamingError naming the item. 0 = no bound.
    "NS_MAX_ENTRIES": 100_000,
    "NS_MAX_ENTRY_SIZE": 64 * 1024,
}


def _convert(name: str, text: str) -> Any:
    default = _DEFAULTS[name]
    if name == "SERIALIZERS_ACCEPTED":
        return {part.strip() for part in text.split(",") if part.strip()}
    if isinstance(default, bool) or name == "ONEWAY_THREADED":
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"invalid boolean for PYRO_{name}: {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


class Configuration:
    """Holds the configuration items as attributes (``config.HOST`` and so on)."""

    __slots__ = tuple(_DEFAULTS)

    if TYPE_CHECKING:  # the items are the slots named in _DEFAULTS, which a type checker cannot see
        def __getattr__(self, name: str) -> Any: ...

    def __init__(self) -> None:
        self.reset()

    def reset(self, use_environment: bool = True) -> None:
        """Set every item to its default, then apply ``PYRO_<NAME>`` variables."""
        for name, value in _DEFAULTS.items():
            setattr(self, name, set(value) if isinstance(value, set) else value)
        if use_environment:
            for name in _DEFAULTS:
                text = os.environ.get("PYRO_" + name)
                if text is not None:
                    setattr(self, name, _convert(name, text))

    def asDict(self) -> dict[str, Any]:  # noqa: N802 - Pyro4's name
        return {name: getattr(self, name) for name in _DEFAULTS}

    def copy(self) -> "Configuration":
        clone = Configuration.__new__(Configuration)
        for name in _DEFAULTS:
            value = getattr(self, name)
            setattr(clone, name, set(value) if isinstance(value, set) else value)
        return clone

    def idle_timeout(self) -> float:
        """IDLE_TIMEOUT, or else Pyro4's COMMTIMEOUT, whose daemons drop clients idle that long."""
        return self.IDLE_TIMEOUT or self.COMMTIMEOUT

    def ns_host(self) -> str:
        return self.NS_HOST or self.HOST

    def dump(self) -> str:
        lines = ["pyro_loops configuration:"]
        lines += [f"  {name} = {getattr(self, name)!r}" for name in sorted(_DEFAULTS)]
        return "\n".join(lines)


config = Configuration()
