"""A daemon of either library serving a ``Gate`` under the id "gate", for the oneway order tests.

Usage: ``oneway_order_server.py pyro4|pyro_loops``. The daemon is served by its
own ``requestLoop()`` with ``SERVERTYPE`` unset (Pyro4's thread server; ours is
one too when so served); ``ONEWAY_THREADED`` comes from ``PYRO_ONEWAY_THREADED``.
Prints one JSON line ``{"uri": ...}`` when ready and exits when stdin closes.

``Gate.hold`` (oneway) waits until ``release`` lets it go, so whether a oneway
call holds up the connection's next call is seen without any clock: ``release``
says whether it found a ``hold`` waiting.
"""

import json
import sys
import threading

from service import serve_until_stdin_closes


def build(expose, oneway):
    @expose
    class Gate:
        def __init__(self):
            self._recorded = []
            self._cond = threading.Condition()
            self._holding = 0
            self._releases = 0

        @oneway
        def record(self, item):
            self._recorded.append(item)

        def recorded(self):
            return list(self._recorded)

        @oneway
        def hold(self, item, timeout):
            """Wait up to ``timeout`` s for ``release()``, then record ``item``."""
            with self._cond:
                self._holding += 1
                self._cond.notify_all()
                if self._cond.wait_for(lambda: self._releases, timeout):
                    self._releases -= 1
                self._holding -= 1
            self._recorded.append(item)

        def release(self, timeout):
            """Let a waiting ``hold`` go; whether one was waiting within ``timeout`` s."""
            with self._cond:
                if not self._cond.wait_for(lambda: self._holding > self._releases, timeout):
                    return False
                self._releases += 1
                self._cond.notify_all()
                return True

    return Gate


def main():
    if sys.argv[1] == "pyro4":
        import Pyro4 as library
    else:
        import pyro_loops as library
    daemon = library.Daemon(host="127.0.0.1")
    uri = daemon.register(build(library.expose, library.oneway)(), "gate")
    print(json.dumps({"uri": str(uri)}), flush=True)
    serve_until_stdin_closes(daemon)


if __name__ == "__main__":
    main()
