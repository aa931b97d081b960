"""An asyncio program that awaits remote calls and iterates a remote generator.

A ``pyro_loops.Client`` attached to the running loop
(``asyncio.attach(client)``) makes ``await proxy.method(...)`` work like any
other awaitable: while a call is pending the loop runs the program's other
tasks (a ticker here) and serves its own ``Daemon``, which the service calls
back during the slow call. A call whose answer is a generator gives a
stream: ``async for item in await proxy.countdown(5)``, its items fetched a
few ahead. One loop proxy is one connection whose calls are answered in
order; calls meant to run side by side on the server go through several
proxies, as the last step shows.

Run a service, then this client (it takes its tour and exits)::

    python demos/asyncio_service.py --ns none         # prints its URI
    python demos/asyncio_client.py PYRO:demo.asyncio@localhost:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import pyro_loops
from pyro_loops.adapters import asyncio as asyncio_adapter

from _panel import SLOW_SECONDS, STREAM_COUNT, Listener
from _support import add_client_options, target_uri

TICK_SECONDS = 0.05
SIDE_BY_SIDE = 3


async def ticker(ticks: list[float]) -> None:
    """The program's own work, going on while calls are pending."""
    while True:
        await asyncio.sleep(TICK_SECONDS)
        ticks.append(time.monotonic())


async def tour(options: argparse.Namespace) -> dict[str, Any]:
    uri = target_uri(options.target, options.ns)
    pushed: list[str] = []
    with pyro_loops.Client() as client, pyro_loops.Daemon(host=options.callback_host) as daemon, \
            asyncio_adapter.attach(client), asyncio_adapter.attach(daemon):
        listener = client.proxy(daemon.register(Listener(pushed.append)))

        def proxy() -> pyro_loops.LoopProxy:
            made = client.proxy(uri)
            made._pyroTimeout = options.timeout + SLOW_SECONDS
            return made

        service = proxy()
        print(f"increment(1) -> {await service.increment(1)!r}", flush=True)

        ticks: list[float] = []
        tick_task = asyncio.create_task(ticker(ticks))
        began = time.monotonic()
        answer = await service.work(SLOW_SECONDS, listener)
        took = time.monotonic() - began
        tick_task.cancel()
        ticks_while_pending = sum(1 for tick in ticks if tick < began + took)
        print(f"work({SLOW_SECONDS:g}) -> {answer!r} after {took:.2f} s; meanwhile our ticker ran "
              f"{ticks_while_pending} times and the service pushed {len(pushed)} notes to us: {pushed}", flush=True)

        items = [item async for item in await service.countdown(STREAM_COUNT)]
        print(f"async for over countdown({STREAM_COUNT}) -> {items}", flush=True)

        try:
            await service.increment("ten")
            failure = "increment('ten') did not fail"
        except ValueError as exc:
            failure = f"ValueError: {exc}"
        print(f"increment('ten') raised {failure}", flush=True)

        began = time.monotonic()
        echoes = await asyncio.gather(*(proxy().wait_and_echo(f"call {i}", 1.0) for i in range(SIDE_BY_SIDE)))
        print(f"{SIDE_BY_SIDE} calls of wait_and_echo(..., 1.0) through {SIDE_BY_SIDE} proxies (connections) "
              f"answered together after {time.monotonic() - began:.2f} s: {echoes}", flush=True)
    return {"ticks_while_pending": ticks_while_pending, "pushed": pushed, "items": items,
            "failure": failure, "echoes": echoes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An asyncio client awaiting remote calls and iterating a "
                                                 "remote generator; start demos/asyncio_service.py first.")
    add_client_options(parser)
    options = parser.parse_args(argv)
    summary = asyncio.run(tour(options))
    print("tour = " + json.dumps(summary), flush=True)
    passed = summary["ticks_while_pending"] >= 3 and summary["pushed"] and summary["items"] == [5, 4, 3, 2, 1]
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
