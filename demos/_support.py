"""What the demos share and what is not the point of any of them: command-line
options, finding a name server without waiting long, the log of incoming
calls (kept for the ``log_lines()`` query and echoed to stdout, so a test or a
terminal sees what the window shows), the queries every demo answers, and
waking a sleeping loop when a signal arrives.

Not a demo itself: the demos import it from their own directory.
"""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import signal
import threading
import time
from typing import Any, Callable

import pyro_loops
from pyro_loops._wakeup import Wakeup
from pyro_loops.naming import locateNS

LOG_KEEP = 200   # lines of the call log a demo remembers
#: the demos' short names, and the names they register with a name server
DEMOS = {"qt": "demo.qt", "tk": "demo.tk", "custom": "demo.custom", "asyncio": "demo.asyncio"}


def add_server_options(parser: argparse.ArgumentParser, name: str) -> None:
    """The options every demo server takes."""
    parser.add_argument("--host", default="localhost",
                        help="address to bind the daemon on (default: localhost, this machine only)")
    parser.add_argument("--port", type=int, default=0, help="port of the daemon (default: any free port)")
    parser.add_argument("--name", default=name, help=f"name to register with the name server (default: {name})")
    parser.add_argument("--ns", default="auto", metavar="HOST[:PORT]|auto|none",
                        help="name server to register with: 'auto' tries NS_HOST:NS_PORT (localhost:9090 "
                             "unless PYRO_NS_HOST/PYRO_NS_PORT say otherwise) without broadcast; "
                             "'none' skips it (default: auto)")


def target_uri(target: str, ns: str | None) -> str:
    """A URI for ``target``: URIs pass through, demo names become PYRONAME URIs."""
    if ":" in target:
        return target
    name = DEMOS.get(target, target)
    return f"PYRONAME:{name}@{ns}" if ns else f"PYRONAME:{name}"


def add_client_options(parser: argparse.ArgumentParser, window: bool = False) -> None:
    """The options of the loop-client demos (qt_client, tk_client, asyncio_client);
    ``window``: also ``--tour``, for the windows that otherwise wait for clicks."""
    parser.add_argument("target", nargs="?", default="asyncio",
                        help="the service: a demo name (asyncio, the default, is the one with work() and "
                             "countdown()) or a Pyro URI")
    parser.add_argument("--ns", metavar="HOST[:PORT]",
                        help="name server to look demo names up in (default: found as configured)")
    parser.add_argument("--callback-host", default="localhost",
                        help="address of our own daemon, which the service calls back: one the service "
                             "can reach (default: localhost)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds any call may take (default 10)")
    if window:
        parser.add_argument("--tour", action="store_true",
                            help="press the buttons in turn, print a summary and exit (0: the bar moved and "
                                 "the service's notes arrived)")


def register_name(ns_option: str, name: str, uri: pyro_loops.URI) -> tuple[str, Callable[[], None]]:
    """Register ``uri`` as ``name`` if a name server is found quickly; never fail the demo.

    Returns a one-line status for the window and a function that removes the
    registration again (a no-op when nothing was registered). The lookup is
    bounded by the name server client's short per-attempt timeout and does not
    broadcast, so a missing name server costs at most a moment at start-up.
    """
    if ns_option == "none":
        return "name server: not used (--ns none); clients need the URI", lambda: None
    if ns_option == "auto":
        host, port = pyro_loops.config.ns_host(), pyro_loops.config.NS_PORT
    else:
        host, _, port_text = ns_option.rpartition(":") if ":" in ns_option else (ns_option, "", "")
        port = int(port_text) if port_text else pyro_loops.config.NS_PORT
    try:
        with locateNS(host, port, broadcast=False) as ns:
            ns.register(name, uri)
            where = ns._pyroUri.location
    except pyro_loops.errors.PyroError as exc:
        return f"name server: none found at {host}:{port} ({exc}); clients need the URI", lambda: None

    def unregister() -> None:
        try:
            with locateNS(host, port, broadcast=False) as ns:
                ns.remove(name)
        except pyro_loops.errors.PyroError:
            pass  # the name server went away first; nothing left to clean up

    return f"name server: registered as '{name}' at {where}", unregister


def _caller() -> str:
    client = pyro_loops.current_context.client
    addr = getattr(client, "addr", None)
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr or "?")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class CallLog:
    """Timestamped lines about incoming calls; every line also goes to stdout.

    ``listener(line)`` is called for each new line in the thread that wrote it:
    a GUI must hand it over to its own thread (a queued signal, an event).
    """

    def __init__(self, listener: Callable[[str], None] | None = None) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_KEEP)
        self.listener = listener
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
        line = f"{stamp}  {text}"
        with self._lock:
            self.lines.append(line)
        print("LOG " + line, flush=True)
        if self.listener is not None:
            self.listener(line)

    def last(self, count: int) -> list[str]:
        with self._lock:
            return list(self.lines)[-count:] if count > 0 else []


@pyro_loops.expose
class DemoQueries:
    """What ``demos/client.py`` (and the demo tests) ask every demo's published
    object besides its own methods; the object keeps its ``CallLog`` in ``self.log``."""

    log: CallLog

    def log_lines(self, count: int = 20) -> list[str]:
        return self.log.last(int(count))

    def ping(self) -> None:
        pass



class SignalWakeup(Wakeup):
    """A socket that becomes readable when a signal arrives.

    Python runs signal handlers only when the interpreter gets control, which a
    loop sleeping in C (Qt, Tcl, ``select()``) never gives it:
    ``signal.set_wakeup_fd`` makes each signal write a byte to a socket, and a
    loop that watches ``reader`` wakes up and lets the handler run.
    """

    def __init__(self) -> None:
        super().__init__()
        signal.set_wakeup_fd(self.writer_fileno(), warn_on_full_buffer=False)

    def drain(self, *_: object) -> None:
        """Read the bytes the signals wrote (a callback for the loop: takes any arguments)."""
        super().drain()

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        super().close()


def logged(method: Callable) -> Callable:
    """Log each call of ``method`` (caller, arguments, result or error) in ``self.log``.

    Works for ``async def`` methods too (the line is written when the result is
    ready). Markers such as ``@pyro_loops.in_worker`` may go above or below it.
    """

    def describe(args: tuple, kwargs: dict) -> tuple[str, str]:
        shown = ", ".join([_short(a) for a in args] + [f"{k}={_short(v)}" for k, v in kwargs.items()])
        thread = threading.current_thread().name
        where = "" if thread == "MainThread" else f"  [in {thread}]"
        return f"{_caller()}  {method.__name__}({shown})", where

    def outcome(result: Any = None, exc: BaseException | None = None) -> str:
        return f"raised {type(exc).__name__}: {exc}" if exc is not None else f"-> {_short(result)}"

    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        def async_wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            # Described now, while current_context is about this call: by the time
            # the coroutine runs, the loop thread may have dispatched other calls.
            call, where = describe(args, kwargs)

            async def run() -> Any:
                try:
                    result = await method(self, *args, **kwargs)
                except Exception as exc:
                    self.log.write(f"{call} {outcome(exc=exc)}{where}")
                    raise
                self.log.write(f"{call} {outcome(result)}{where}")
                return result

            return run()

        return async_wrapper

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        call, where = describe(args, kwargs)
        try:
            result = method(self, *args, **kwargs)
        except Exception as exc:
            self.log.write(f"{call} {outcome(exc=exc)}{where}")
            raise
        self.log.write(f"{call} {outcome(result)}{where}")
        return result

    return wrapper


@pyro_loops.expose
class Tally(DemoQueries):
    """A counter and a message list kept in plain Python objects: what the demos without a
    window (asyncio, custom loop) publish where the window demos have widgets."""

    def __init__(self) -> None:
        self.counter = 0
        self.messages: list[str] = []

    @logged
    def increment(self, step: int = 1) -> int:
        self.counter += int(step)
        return self.counter

    @logged
    def add_message(self, text: str) -> int:
        self.messages.append(str(text))
        return len(self.messages)


def work_in_steps(seconds: float, report: Callable[[int], None], steps: int = 20) -> str:
    """Sleep ``seconds`` in ``steps`` slices (standing for real work in a worker thread),
    passing the percentage done to ``report`` after each; the window demos' ``long_task``."""
    for step in range(1, steps + 1):
        time.sleep(float(seconds) / steps)
        report(step * 100 // steps)
    return f"worked {float(seconds):g} s in {threading.current_thread().name}"
