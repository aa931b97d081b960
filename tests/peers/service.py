"""The object served in the interop tests, by a Pyro4 daemon and by ours alike.

It imports neither library: ``build(expose, oneway)`` makes the classes with the
decorators of whichever library the caller uses, so both daemons serve exactly
the same behaviour and a test can hold one daemon's answers against the other's.
"""

import sys
import threading
import time


def serve_until_stdin_closes(daemon):
    """Run ``daemon.requestLoop()`` until stdin closes (the tests' "exit"), then close it."""

    def stop_on_eof():
        sys.stdin.read()
        daemon.shutdown()

    threading.Thread(target=stop_on_eof, daemon=True).start()
    daemon.requestLoop()
    daemon.close()


class ServiceError(Exception):
    """An exception class only the server knows; a Pyro4 client cannot rebuild it."""


def build(expose, oneway):
    """Return ``(Service, Child)`` decorated with the given ``expose``/``oneway``."""

    @expose
    class Child:
        """What ``Service.make_child`` registers and returns (autoproxy)."""

        def __init__(self, name):
            self._name = name

        def greet(self, who):
            return f"{self._name} greets {who}"

        @property
        def name(self):
            return self._name

    class Service:
        def __init__(self):
            self._recorded = []
            self._value = 0
            self._stream_events = []

        @expose
        def add(self, a, b=0, *, scale=1):
            return (a + b) * scale

        @expose
        def echo(self, value):
            return value

        @expose
        def describe(self, value):
            """What the server received, as the type name and the value."""
            return type(value).__name__, value

        @expose
        def types_of(self, *args, **kwargs):
            return [type(a).__name__ for a in args], {k: type(v).__name__ for k, v in kwargs.items()}

        @expose
        @oneway
        def record(self, item):
            self._recorded.append(item)

        @expose
        def recorded(self):
            return list(self._recorded)

        @expose
        @property
        def value(self):
            return self._value

        @value.setter
        def value(self, new):
            self._value = new

        @expose
        @property
        def label(self):
            return "read-only"

        @expose
        def divide(self, a, b):
            return a / b

        @expose
        def fail_custom(self, text):
            raise ServiceError(text)

        @expose
        def lookup(self, key):
            return {"known": 1}[key]

        def hidden(self):
            return "not exposed"

        def _private(self):
            return "private"

        @expose
        def make_child(self, name):
            child = Child(name)
            self._pyroDaemon.register(child)
            return child

        @expose
        def fill(self, char, n):
            """A large result from a small request (for compression)."""
            return char * n

        @expose
        def length(self, value):
            return len(value)

        @expose
        def blob(self, n):
            return bytes(range(n))

        @expose
        def ticker(self, n, tag):
            """A generator result (iterator streaming); logs under ``tag`` how it ended."""
            try:
                for i in range(n):
                    yield i
                self._stream_events.append((tag, "exhausted"))
            except GeneratorExit:
                self._stream_events.append((tag, "closed"))
                raise

        @expose
        def stream_events(self, tag):
            return [event for t, event in self._stream_events if t == tag]

        @expose
        def sleep(self, seconds):
            time.sleep(seconds)
            return seconds

        @expose
        def call_back(self, target, value):
            """Call ``target.notify(value)`` while this call is still running; return its answer."""
            return target.notify(value)

    return Service, Child
