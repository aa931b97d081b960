"""How to run each of Pyro4 4.82's examples (``examples/`` in its sdist) without a person at the keyboard.

Only the recipe is here: which scripts, what to type, which client lines matter.
``xfail`` says why an example still differs on pyro_loops; when the fix lands the
test passes, ``strict=True`` turns that into a failure, and the entry must go.
``NOT_RUN`` lists the folders that cannot run unattended even on real Pyro4.
"""

from __future__ import annotations

from pyro4_examples import Example, Server

ECHO = Server("-m Pyro4.test.echoserver", ready=r"echoserver running")
URI = "{uri}\n"

EXAMPLES: tuple[Example, ...] = (
    Example("async", "client.py", (Server("server.py"),), stdin=URI, label="async-client"),
    Example("async", "client_batch.py", (Server("server.py"),), stdin=URI, label="async-batch"),
    Example("async", "client_callchain.py", (Server("server.py"),), stdin=URI, label="async-callchain",
            keys=(r"^(?!sleeping 1 second$)",)),  # printed while the chain's thread prints: order is timing
    Example("attributes", "client.py", (Server("server.py"),), stdin=URI),
    Example("autoproxy", "client.py", (Server("server.py"),), stdin=URI),
    Example("autoretry", "client.py", (Server("server.py"),)),
    Example("banks", "client.py", (Server("server.py"),)),
    Example("batchedcalls", "client.py", (Server("server.py"),), stdin=URI, timeout=180,
            keys=(r"^(?!.*calls/sec).*$",)),
    Example("benchmark", "bench.py", label="benchmark-local"),
    Example("benchmark", "client.py", (Server("server.py"),), stdin=URI, timeout=120,
            keys=(r"^(?!.*(?:\d+\.\d|<num>)).*$",), label="benchmark-client"),
    Example("benchmark", "connections.py", (Server("server.py"),), stdin=URI, timeout=120,
            keys=(r"^(?!.*<num>).*$",), label="benchmark-connections"),
    Example("blob-dispatch", "client/client.py",
            (Server("dispatcher/dispatcher.py"),
             Server("listeners/main.py", args=("weather",), ready=r"waiting for data")),
            stdin="weather\n\n"),
    Example("callback", "client.py", (Server("server.py"),), label="callback",
            keys=(r"^(?!callback: worker)",)),  # the workers sleep random times: their order varies
    Example("callcontext", "client.py", (Server("server.py", ready=r"Server is ready"),), stdin=URI + "\n",
            keys=(r"^(?!.*'HMAC': b).*$",)),  # that line shows random bytes (correlation id, HMAC) as they are
    Example("circular", "client.py", (Server("servC.py"), Server("servB.py"), Server("servA.py"))),
    Example("deadlock", "client.py", (Server("server.py", ready=r"Bouncer started"),), timeout=10),
    Example("diffie-hellman", "client.py", (Server("server.py", ready=r"Starting server loop"),)),
    Example("disconnects", "client.py", (Server("server.py"),), stdin=URI + "\n\n"),
    Example("distributed-computing", "client.py",
            (Server("dispatcher.py"), Server("worker.py", ready=r"(?i)worker|ready"),
             Server("worker.py", ready=r"(?i)worker|ready")),
            keys=(r"^(This|The more|the faster|placing|getting|Computed)",)),
    Example("distributed-computing2", "client.py", (Server("servers.py", ready=r"Spinning up|running"),),
            timeout=120),
    Example("distributed-computing3", "client.py", (Server("worker.py", ready=r"Starting up worker"),),
            keys=(r"^(?!.* factorized ).*$",)),  # unseeded random numbers: the exit status says it ran
    Example("echoserver", "client.py", (ECHO,), stdin=URI),
    Example("eventloop", "client.py", (Server("server_multiplexed.py", ready=r"Waiting for requests"),),
            stdin="\n", own_ns=True, label="eventloop-multiplexed"),
    Example("eventloop", "client.py", (Server("server_threads.py", ready=r"Waiting for requests"),),
            stdin="\n", own_ns=True, label="eventloop-threads"),
    Example("exceptions", "client.py", (Server("server.py"),)),
    Example("extended-pickle", "client.py", (Server("server.py"),), stdin=URI, requires=("dill",)),
    Example("filetransfer", "client.py", (Server("server.py", ready=r"Filetransfer server URI"),),
            stdin=URI + "\n\n\n\n", timeout=120,
            keys=(r"^(?!.*<num>)(?!.*\bthread <thread>).*$",)),  # two threads print at once: lines interleave
    Example("futures", "futures.py"),
    Example("handshake", "client.py", (Server("server.py", ready=r"secret code"),),
            stdin=URI + "{secret}\n", captures=(r"secret code:\s+(?P<secret>\S+)",)),
    Example("hugetransfer", "client.py", (Server("server.py"),), stdin=URI, timeout=120,
            keys=(r"^(?!.*<num>).*$",)),
    Example("instancemode", "client.py", (Server("server.py"),)),
    Example("maxsize", "client.py", (ECHO,), stdin=URI),
    Example("nonameserver", "client.py", (Server("server.py", ready=r"PYRO:"),), stdin=URI),
    Example("ns-metadata", "example.py", unordered=r"meta: (.*)$"),
    Example("oneway", "client.py", (Server("server.py"),)),
    Example("proxysharing", "client.py", (Server("server.py"),),
            # both counts are timing: threads start before the client's 5 s timer, so a fast
            # proxy fits an 11th 0.5 s call into a thread (101), and a shared one does about 20
            keys=(r"^(?!--> work done on the server: ).*$",)),
    Example("resourcetracking", "client.py", (Server("server.py"),), stdin=URI + "\n",
            keys=(r"^(?!allocating resource)",)),  # resources have random names
    Example("ser_custom", "client.py", (Server("server.py"),), stdin=URI),
    Example("servertypes", "client.py", (Server("server.py", stdin="t\n"),), label="servertypes-threaded",
            keys=(r"^(?!.*(?:<num>|\[ thread))",)),
    Example("servertypes", "client.py", (Server("server.py", stdin="m\n"),), label="servertypes-multiplex",
            keys=(r"^(?!.*(?:<num>|\[ thread))",)),
    Example("shoppingcart", "clients.py", (Server("shopserver.py"),),  # random goods, dated receipts
            keys=(r"^(?!.* (?:buys|takes) |Receipt Date|\s*\w+\s+<num>$)",)),
    Example("socketpair", "pair-thread.py", label="socketpair-thread"),
    Example("socketpair", "pair-fork.py", label="socketpair-fork",
            keys=(r"^(?!Process PID=)",)),  # process ids differ
    Example("streaming", "client.py", (Server("server.py"),), stdin=URI),
    Example("thirdpartylib", "client.py", (Server("server.py", ready=r"registered"),), stdin=URI,
            label="thirdpartylib-wrapped"),
    Example("thirdpartylib", "client.py", (Server("server2.py", ready=r"registered"),), stdin=URI,
            label="thirdpartylib-adapter"),
    # its last step waits for ever on a daemon that never answers the handshake, as on Pyro4 only
    # with HANDSHAKE_TIMEOUT 0 (test_bounds_more pins the 10 s default that ends it)
    Example("timeout", "client.py", (Server("server.py", ready=r"Server ready"),), timeout=25,
            env=(("PYRO_HANDSHAKE_TIMEOUT", "0"),)),
    Example("timezones", "client.py", (Server("server.py"),), stdin=URI, requires=("pytz", "dateutil")),
    Example("unixdomainsock", "client.py", (Server("server.py", ready=r"Server running"),), stdin=URI),
    Example("usersession", "client.py", (Server("server.py"),), stdin="\n\n",
            keys=(r"^(?!.*num=)",)),  # what concurrent threads read varies from run to run
    Example("warehouse", "phase1/visit.py", stdin="a\n\nb\n\nc\n\n", label="warehouse-phase1"),
    Example("warehouse", "phase2/visit.py", (Server("phase2/warehouse.py"),), stdin=URI + "a\n\nb\n\nc\n\n",
            label="warehouse-phase2"),
    Example("warehouse", "phase3/visit.py", (Server("phase3/warehouse.py"),), stdin="a\n\nb\n\nc\n\n",
            label="warehouse-phase3"),
)

#: Folders left out, with the reason: they cannot run unattended on real Pyro4 either.
NOT_RUN = {
    "autoreconnect": "needs the server stopped and restarted by hand while the client runs",
    "chatbox": "an interactive chat between people",
    "distributed-mandelbrot": "draws an animation in the terminal / a Tk window until closed",
    "flame": "remote code execution by design; pyro_loops has no flame (see the README)",
    "gui_eventloop": "a Tk window that runs until it is closed",
    "http": "needs Pyro4's HTTP gateway, which pyro_loops does not provide",
    "itunes": "controls iTunes on macOS",
    "nameserverstress": "hammers the name server until interrupted",
    "messagebus": "needs the separate Pyro4 message bus package and runs until interrupted",
    "robots": "a curses game that runs until it is closed",
    "ssl": "the demo certificates in the sdist have expired: the TLS handshake fails on Pyro4 too",
    "stockquotes": "streams quotes until interrupted",
    "stockquotes-old": "streams quotes until interrupted",
}
