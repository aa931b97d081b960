"""A pyro_loops daemon in a process that may open only a few more descriptors.

argv[1] is how many descriptors the process may open beyond those it holds once
its daemon exists (the request loop itself needs three). It prints the daemon's
port, logs to stderr, and serves ``echo`` as "echo" until stdin closes. Each
stdin line ``count`` is answered with how many times the daemon has tried to
accept so far, which tells a spinning accept loop from a paused one.
"""

import logging
import os
import resource
import sys
import threading

import pyro_loops

attempts = 0


class CountingDaemon(pyro_loops.Daemon):
    """Counts the tries of its socket side to accept."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        accept = self._connections.accept

        def counted():
            global attempts
            attempts += 1
            accept()

        self._connections.accept = counted


@pyro_loops.expose
class Echo:
    def echo(self, value):
        return value


def commands(daemon):
    for line in sys.stdin:
        if line.strip() == "count":
            print(attempts, flush=True)
    daemon.shutdown()


def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    daemon = CountingDaemon(host="127.0.0.1")
    daemon.register(Echo(), "echo")
    held = len(os.listdir("/proc/self/fd"))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (held + int(sys.argv[1]), hard))
    threading.Thread(target=commands, args=(daemon,), daemon=True).start()
    print(daemon.sock.getsockname()[1], flush=True)
    daemon.requestLoop()


if __name__ == "__main__":
    main()
