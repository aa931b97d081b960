"""Drive any of the demos from the command line.

The target is a demo's short name (qt, tk, custom, asyncio: looked up as
``demo.<name>`` in the name server) or any Pyro URI (``PYRO:...``,
``PYRONAME:...``). Without further options it takes a tour of the object: one
call of each kind the demo offers, a long call next to quick ones, and what
the demo now shows. ``--call`` makes single calls, ``--burst N`` times N
small calls one after another and prints the calls per second::

    python demos/client.py qt
    python demos/client.py tk --call increment 5 --call add_message "hi there"
    python demos/client.py PYRO:demo.asyncio@localhost:40123 --burst 2000
    python demos/client.py custom --ns localhost:9090 --call state
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import threading
import time
from typing import Any

import pyro_loops
from pyro_loops._demo_timing import describe_burst, timed_burst, while_pinging

from _support import DEMOS, target_uri


def parse_argument(text: str) -> Any:
    """A Python literal if ``text`` is one (5, 2.5, [1, 2], None), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


class Client:
    def __init__(self, uri: str, timeout: float) -> None:
        self.uri = uri
        self.timeout = timeout
        self.proxy = self.new_proxy()

    def new_proxy(self) -> pyro_loops.Proxy:
        proxy = pyro_loops.Proxy(self.uri)
        proxy._pyroTimeout = self.timeout
        return proxy

    def call(self, method: str, *args: Any) -> Any:
        result = getattr(self.proxy, method)(*args)
        shown = ", ".join(repr(a) for a in args)
        print(f"{method}({shown}) -> {result!r}", flush=True)
        return result

    def methods(self) -> set[str]:
        self.proxy._pyroBind()
        return set(self.proxy._pyroMethods)

    def burst(self, count: int) -> None:
        self.proxy.ping()  # connect first: the burst measures calls, not the connection
        burst = timed_burst(lambda _: self.proxy.ping(), count)
        print(describe_burst(burst.summary(), "calls of ping()"), flush=True)

    def tour(self) -> None:
        methods = self.methods()
        print(f"connected to {self.proxy._pyroUri}", flush=True)
        if "info" in methods:
            self.call("info")
        if "increment" in methods:
            for _ in range(3):
                self.call("increment", 1)
        if "add_message" in methods:
            self.call("add_message", f"hello from client process {os.getpid()}")
        if "set_progress" in methods:
            self.call("set_progress", 25)
        if "long_task" in methods:
            self.alongside("long_task", (1.5,))
        if "wait_and_echo" in methods:
            self.concurrently("wait_and_echo", 3, 1.0)
        if "udp_address" in methods:
            self.call("udp_address")
        if "state" in methods:
            state = self.call("state")
            if isinstance(state, dict) and "log" in state:
                print("the demo's log ends with:")
                for line in state["log"][-5:]:
                    print("   ", line)

    def alongside(self, method: str, args: tuple) -> None:
        """Run a long call on a second connection and keep making quick calls until it returns."""
        def run() -> Any:
            with self.new_proxy() as other:
                return getattr(other, method)(*args)

        # a realistic client pace between pings, so the demo's log is not all pings
        result, answered, took = while_pinging(run, self.proxy.ping, pace=0.01, thread_name=f"client-{method}")
        shown = ", ".join(repr(a) for a in args)
        print(f"{method}({shown}) -> {result!r} after {took:.2f} s; "
              f"meanwhile {answered} quick calls were answered", flush=True)

    def concurrently(self, method: str, count: int, delay: float) -> None:
        """Make ``count`` slow async calls at once, each on its own connection."""
        results: list[Any] = [None] * count

        def run(index: int) -> None:
            with self.new_proxy() as other:
                try:
                    results[index] = getattr(other, method)(f"call {index}", delay)
                except Exception as exc:
                    results[index] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
        begin = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.perf_counter() - begin
        for index, result in enumerate(results):
            if isinstance(result, Exception):
                raise result
            print(f"{method}('call {index}', {delay!r}) -> {result!r}", flush=True)
        print(f"{count} calls of {method} that each wait {delay:g} s took {took:.2f} s together", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Drive a pyro_loops demo: a tour by default, or single calls, or a timed burst.",
        epilog="Examples: client.py qt | client.py tk --call increment 5 | "
               "client.py PYRO:demo.custom@localhost:40123 --burst 2000")
    parser.add_argument("target", help=f"a demo name ({', '.join(DEMOS)}) or a Pyro URI")
    parser.add_argument("--ns", metavar="HOST[:PORT]",
                        help="name server to look demo names up in (default: found as configured)")
    parser.add_argument("--call", nargs="+", action="append", metavar=("METHOD", "ARG"),
                        help="call METHOD with literal or text arguments and print the result; repeatable")
    parser.add_argument("--burst", type=int, metavar="N", help="make N ping() calls and print calls per second")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds any call may take (default 10)")
    options = parser.parse_args(argv)

    client = Client(target_uri(options.target, options.ns), options.timeout)
    try:
        with client.proxy:
            for method, *args in options.call or []:
                client.call(method, *(parse_argument(a) for a in args))
            if options.burst:
                client.burst(options.burst)
            if not options.call and not options.burst:
                client.tour()
    except pyro_loops.errors.PyroError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # raised by the remote method: show where, on the server
        if getattr(exc, "_pyroTraceback", None):
            sys.stderr.write("".join(pyro_loops.util.getPyroTraceback(exc)))
        else:
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
