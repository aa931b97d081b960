"""An asyncio service whose published object has ``async def`` methods.

The daemon is attached to the running loop with ``pyro_loops.adapters.asyncio``
(``add_reader``/``add_writer`` per socket, one ``call_at`` handle only while a
deadline exists). An ``async def`` method is awaited as a task on that loop:
while one call awaits, the loop serves other connections and runs the
program's own tasks, so three clients that each call ``wait_and_echo(..., 1.0)``
at once all get their answer after about one second, not three.

Plain methods run in the loop's thread too; like any code on an asyncio loop
they must not block it (mark a blocking one ``@pyro_loops.in_worker``).

``work(seconds, listener)`` calls its caller back: the service also hosts a
``pyro_loops.Client`` on the same loop and pushes a note to
``listener.notify(text)`` at each step, awaiting each push, so one slow call
never holds up the others. ``countdown(n)`` is a generator, streamed item by
item. The client demos (``qt_client.py``, ``tk_client.py``,
``asyncio_client.py``) use both.

Run it, then drive it from another terminal::

    python demos/asyncio_service.py
    python demos/client.py asyncio             # by name, if a name server runs
    python demos/client.py PYRO:demo.asyncio@localhost:PORT --call wait_and_echo hello 0.5
    python demos/qt_client.py PYRO:demo.asyncio@localhost:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any, Iterator

import pyro_loops
from pyro_loops.adapters import asyncio as asyncio_adapter

from _support import CallLog, Tally, add_server_options, logged, register_name

PUSH_TIMEOUT = 5.0   # seconds a listener may take to take a note

@pyro_loops.expose
class AsyncService(Tally):
    """The published object; every method runs on the asyncio loop."""

    def __init__(self, client: pyro_loops.Client) -> None:
        super().__init__()
        self.client = client    # for calls back to our callers, made from this loop
        self.log = CallLog()
        self.ticks = 0          # advanced by a task of the program's own, next to the daemon
        self.waiting = 0        # async calls awaiting right now
        self.most_waiting = 0   # the most that were awaiting at the same time

    def info(self) -> str:
        return "asyncio demo: async def methods awaited on the loop by pyro_loops.adapters.asyncio"

    @logged
    async def wait_and_echo(self, text: str, delay: float = 1.0) -> str:
        """Await a while (a stand-in for an HTTP request, a database query...) and answer."""
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        begin = time.monotonic()
        try:
            await asyncio.sleep(float(delay))
        finally:
            self.waiting -= 1
        return f"{text} (after {time.monotonic() - begin:.2f} s of awaiting)"

    @logged
    async def work(self, seconds: float = 3.0, listener: Any = None, steps: int = 6) -> str:
        """Await ``seconds`` in ``steps`` steps, pushing a note to ``listener.notify(text)`` after each.

        ``listener`` arrives as a (blocking) proxy; the pushes go through a loop
        proxy of the same URI, so awaiting them leaves the loop free. A listener
        that fails or vanishes stops the notes, not the work.
        """
        steps = max(1, int(steps))
        pusher = None if listener is None else self.client.proxy(listener._pyroUri)
        if pusher is not None:
            pusher._pyroTimeout = PUSH_TIMEOUT
        pushed = 0
        try:
            for step in range(1, steps + 1):
                await asyncio.sleep(float(seconds) / steps)
                if pusher is not None:
                    try:
                        await pusher.notify(f"step {step} of {steps} done ({float(seconds) * step / steps:.1f} s)")
                        pushed += 1
                    except pyro_loops.errors.PyroError as exc:
                        self.log.write(f"listener {listener._pyroUri} stopped listening: {exc}")
                        pusher._pyroRelease()
                        pusher = None
        finally:
            if pusher is not None:
                pusher._pyroRelease()
        return f"worked {float(seconds):g} s in {steps} steps; {pushed} notes pushed"

    @logged
    def countdown(self, start: int = 5) -> Iterator[int]:
        """A generator: the caller gets a stream and fetches its items as it goes."""
        yield from range(int(start), 0, -1)

    def state(self) -> dict:
        return {
            "counter": self.counter,
            "messages": list(self.messages),
            "ticks": self.ticks,
            "waiting": self.waiting,
            "most_waiting": self.most_waiting,
            "log": self.log.last(20),
        }


async def ticker(service: AsyncService, interval: float) -> None:
    """The program's own work, sharing the loop with the daemon."""
    while True:
        await asyncio.sleep(interval)
        service.ticks += 1


async def serve(options: argparse.Namespace) -> None:
    client = pyro_loops.Client()   # calls back to listeners, from this loop
    service = AsyncService(client)
    with client, pyro_loops.Daemon(host=options.host, port=options.port) as daemon:
        uri = daemon.register(service, options.name)
        # The name server is found with a short blocking lookup: run it off the loop's thread.
        status, unregister = await asyncio.to_thread(register_name, options.ns, options.name, uri)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        with asyncio_adapter.attach(daemon), asyncio_adapter.attach(client):
            tick_task = asyncio.create_task(ticker(service, options.tick))
            print(f"uri = {uri}", flush=True)
            print(status, flush=True)
            print(f"ready (pid {os.getpid()})", flush=True)
            await stopping.wait()
            tick_task.cancel()
        await asyncio.to_thread(unregister)
    print("stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An asyncio program publishing an object with async def "
                                                 "methods; drive it with demos/client.py.")
    add_server_options(parser, "demo.asyncio")
    parser.add_argument("--tick", type=float, default=1.0,
                        help="seconds between ticks of the program's own background task (default 1)")
    options = parser.parse_args(argv)
    asyncio.run(serve(options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
