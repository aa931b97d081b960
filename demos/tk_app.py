"""A Tkinter window whose widgets remote callers change, served by Tk's own main loop.

Pyro's classic Tk example polls: a ``root.after(20, ...)`` timer wakes the
program 50 times a second to ``select()`` the daemon's sockets, so a call
waits up to 20 ms and an idle window still burns wakeups. Here the daemon is
attached with ``pyro_loops.adapters.tk``: Tcl's notifier watches the sockets
itself (``createfilehandler``), a call runs the moment its bytes arrive, and
an idle window sleeps.

Published methods run in the Tk thread and set widgets directly.
``long_task`` is marked ``@pyro_loops.in_worker`` and runs in a worker thread,
so the window stays responsive meanwhile; it must not touch widgets, so it
queues its progress and wakes Tk with a virtual event (``event_generate`` is
the one Tk call tkinter carries over to the Tk thread).

Run it, then drive it from another terminal::

    python demos/tk_app.py
    python demos/client.py tk                  # by name, if a name server runs
    python demos/client.py PYRO:demo.tk@localhost:PORT --burst 2000
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
import tkinter
from tkinter import ttk
from typing import Callable

import pyro_loops
from pyro_loops.adapters import tk as tk_adapter

from _support import CallLog, DemoQueries, SignalWakeup, add_server_options, logged, register_name, work_in_steps

WORKER_EVENT = "<<DemoWorkerNews>>"


class Window:
    def __init__(self, root: tkinter.Tk) -> None:
        self.root = root
        root.title("pyro_loops Tk demo")
        root.geometry("760x600+0+0")
        frame = ttk.Frame(root, padding=8)
        frame.pack(fill="both", expand=True)
        frame.columnconfigure(1, weight=1)
        frame.rowconfigure(6, weight=1)
        frame.rowconfigure(8, weight=2)

        ttk.Label(frame, text="Remote calls are served by Tk's main loop", font=("TkDefaultFont", 10, "bold")
                  ).grid(row=0, column=0, columnspan=2, sticky="w")
        ttk.Label(frame, text="pyro_loops.adapters.tk: Tcl watches the sockets itself -- no 50 Hz polling timer"
                  ).grid(row=1, column=0, columnspan=2, sticky="w", pady=(0, 4))
        ttk.Label(frame, text="URI:").grid(row=2, column=0, sticky="w")
        self.uri = tkinter.StringVar()
        ttk.Entry(frame, textvariable=self.uri, state="readonly").grid(row=2, column=1, sticky="ew")
        ttk.Label(frame, text="Name server:").grid(row=3, column=0, sticky="w")
        self.ns_status = tkinter.StringVar()
        ttk.Label(frame, textvariable=self.ns_status).grid(row=3, column=1, sticky="w")

        row = ttk.Frame(frame)
        row.grid(row=4, column=0, columnspan=2, sticky="ew", pady=6)
        row.columnconfigure(1, weight=1)
        counter_box = ttk.LabelFrame(row, text="Counter: increment(step)", padding=6)
        counter_box.grid(row=0, column=0, sticky="nsew", padx=(0, 6))
        self.counter = tkinter.IntVar(value=0)
        ttk.Label(counter_box, textvariable=self.counter, font=("TkFixedFont", 28, "bold"),
                  width=6, anchor="e").pack()
        progress_box = ttk.LabelFrame(row, text="Progress: set_progress(percent), long_task(seconds)", padding=6)
        progress_box.grid(row=0, column=1, sticky="nsew")
        self.progress = tkinter.IntVar(value=0)
        ttk.Progressbar(progress_box, variable=self.progress, maximum=100).pack(fill="x")
        self.clicks = 0
        self.button = ttk.Button(progress_box, command=self.on_click)
        self.button.pack(fill="x", pady=(6, 0))
        self.on_click(count=False)

        ttk.Label(frame, text="Messages: add_message(text)").grid(row=5, column=0, columnspan=2, sticky="w")
        self.messages = tkinter.Listbox(frame, height=5)
        self.messages.grid(row=6, column=0, columnspan=2, sticky="nsew")
        ttk.Label(frame, text="Incoming calls").grid(row=7, column=0, columnspan=2, sticky="w", pady=(6, 0))
        self.log = tkinter.Text(frame, height=10, wrap="none", font="TkFixedFont", state="disabled")
        self.log.grid(row=8, column=0, columnspan=2, sticky="nsew")
        ttk.Label(frame, text="Calls run in the Tk thread; long_task runs in a worker thread."
                  ).grid(row=9, column=0, columnspan=2, sticky="w", pady=(6, 0))

    def on_click(self, count: bool = True) -> None:
        self.clicks += count
        self.button.configure(text=f"Click me: I answer even while long_task runs ({self.clicks})")

    def append_log(self, line: str) -> None:
        self.log.configure(state="normal")
        self.log.insert("end", line + "\n")
        self.log.delete("1.0", "end - 500 lines")
        self.log.see("end")
        self.log.configure(state="disabled")


class WorkerNews:
    """Carries news from worker threads into the Tk thread: a queue, plus a virtual event to wake Tk."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        window.root.bind(WORKER_EVENT, self._deliver)

    def post(self, action: Callable[[], None]) -> None:
        if threading.current_thread() is threading.main_thread():
            action()
            return
        self.queue.put(action)
        try:
            self.window.root.event_generate(WORKER_EVENT, when="tail")
        except (RuntimeError, tkinter.TclError):
            pass  # the window is closing; the news no longer matters

    def _deliver(self, _event: tkinter.Event) -> None:
        while True:
            try:
                action = self.queue.get_nowait()
            except queue.Empty:
                return
            action()


@pyro_loops.expose
class Board(DemoQueries):
    """The published object. Its methods run in the Tk thread, so they use widgets directly."""

    def __init__(self, window: Window, news: WorkerNews) -> None:
        self.window = window
        self.news = news
        self.log = CallLog(lambda line: news.post(lambda: window.append_log(line)))

    def info(self) -> str:
        return "Tk demo: widgets changed by remote calls, served by pyro_loops.adapters.tk"

    @logged
    def increment(self, step: int = 1) -> int:
        self.window.counter.set(self.window.counter.get() + int(step))
        return self.window.counter.get()

    @logged
    def add_message(self, text: str) -> int:
        self.window.messages.insert("end", str(text))
        self.window.messages.see("end")
        return self.window.messages.size()

    @logged
    def set_progress(self, percent: int) -> int:
        self.window.progress.set(max(0, min(100, int(percent))))
        return self.window.progress.get()

    @pyro_loops.in_worker
    @logged
    def long_task(self, seconds: float = 3.0) -> str:
        """Work for a while in a worker thread; progress reaches the bar through WorkerNews."""
        return work_in_steps(seconds, lambda percent: self.news.post(lambda: self.window.progress.set(percent)))

    def state(self) -> dict:
        """What the window shows right now, read back from the widgets."""
        window = self.window
        return {
            "counter": window.counter.get(),
            "progress": window.progress.get(),
            "messages": list(window.messages.get(0, "end")),
            "log": window.log.get("1.0", "end - 1 chars").splitlines()[-20:],
            "clicks": window.clicks,
            "uri": window.uri.get(),
            "name_server": window.ns_status.get(),
        }


def route_signals(root: tkinter.Tk) -> Callable[[], None]:
    """Let Ctrl+C / SIGTERM close the window, without a polling timer.

    Tk sleeping in Tcl's notifier never gives Python a chance to run its signal
    handlers; Tcl watches the socket of a ``SignalWakeup``, to which each signal
    writes a byte, and that wakes the loop. Returns the function that undoes this.
    """
    if not hasattr(root.tk, "createfilehandler"):  # Tk on Windows: Ctrl+C waits for the next event
        signal.signal(signal.SIGINT, lambda *_: root.destroy())
        return lambda: None
    wakeup = SignalWakeup()
    root.tk.createfilehandler(wakeup.reader, tkinter.READABLE, wakeup.drain)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: root.destroy())

    def undo() -> None:
        try:
            root.tk.deletefilehandler(wakeup.reader)
        except tkinter.TclError:
            pass
        wakeup.close()

    return undo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A Tkinter window publishing an object whose methods change "
                                                 "its widgets; drive it with demos/client.py.")
    add_server_options(parser, "demo.tk")
    options = parser.parse_args(argv)

    root = tkinter.Tk()
    window = Window(root)
    board = Board(window, WorkerNews(window))
    daemon = pyro_loops.Daemon(host=options.host, port=options.port)
    uri = daemon.register(board, options.name)
    window.uri.set(str(uri))
    status, unregister = register_name(options.ns, options.name, uri)
    window.ns_status.set(status.partition(": ")[2])
    handle = tk_adapter.attach(daemon, root)   # closes the daemon when the window is destroyed
    unroute_signals = route_signals(root)
    root.update_idletasks()
    print(f"uri = {uri}", flush=True)
    print(status, flush=True)
    print(f"window id = {root.wm_frame()} (adapter strategy: {handle.strategy})", flush=True)
    print(f"ready (pid {os.getpid()})", flush=True)
    try:
        root.mainloop()
    finally:
        unroute_signals()
        unregister()
    return 0


if __name__ == "__main__":
    sys.exit(main())
