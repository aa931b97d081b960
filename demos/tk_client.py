"""A Tkinter window that calls a remote service from its buttons and never freezes.

The same window as ``qt_client.py``, in Tk: a ``pyro_loops.Client`` and a
``Daemon`` (for the ``Listener`` the service calls back) both hosted by Tk's
main loop with ``tk.attach(..., root)``. Tcl watches their sockets itself, so
a button's call returns at once, its answer arrives later in the Tk thread,
and the progress bar keeps moving (``root.after``) during the 3 s ``work()``.

Run a service, then the window::

    python demos/asyncio_service.py --ns none         # prints its URI
    python demos/tk_client.py PYRO:demo.asyncio@localhost:PORT

``--tour`` presses the buttons itself and exits (0 if the bar moved and the
notes arrived); ``--tour --stay`` leaves the window open afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import tkinter
from tkinter import ttk
from typing import Any, Callable

import pyro_loops
from pyro_loops.adapters import tk as tk_adapter

from _panel import SLOW_SECONDS, STREAM_COUNT, Panel, tour_passed
from _support import add_client_options, target_uri
from tk_app import route_signals


class Window:
    """The buttons, the progress bar and the two lists; the panel's ``View``."""

    def __init__(self, root: tkinter.Tk, target: str) -> None:
        self.root = root
        root.title("pyro_loops Tk client")
        root.geometry("760x480+0+0")
        frame = ttk.Frame(root, padding=8)
        frame.pack(fill="both", expand=True)
        frame.columnconfigure(0, weight=3)
        frame.columnconfigure(1, weight=2)
        frame.rowconfigure(6, weight=1)
        ttk.Label(frame, text="Remote calls made from Tk's main loop", font=("TkDefaultFont", 10, "bold")
                  ).grid(row=0, column=0, columnspan=2, sticky="w")
        ttk.Label(frame, text="pyro_loops.Client: a call returns at once, its answer comes later"
                  ).grid(row=1, column=0, columnspan=2, sticky="w")
        ttk.Label(frame, text=f"Service: {target}").grid(row=2, column=0, columnspan=2, sticky="w", pady=(0, 4))

        buttons = ttk.Frame(frame)
        buttons.grid(row=3, column=0, columnspan=2, sticky="ew")
        self.buttons: dict[str, ttk.Button] = {}
        for name, text in (("quick", "increment(1)"), ("slow", f"work({SLOW_SECONDS:g} s), calls us back"),
                           ("stream", f"countdown({STREAM_COUNT}), streamed"), ("failing", "increment('ten'), fails")):
            self.buttons[name] = ttk.Button(buttons, text=text)
            self.buttons[name].pack(side="left", expand=True, fill="x", padx=2)

        ttk.Label(frame, text="Progress of work(), moved by root.after while the call is pending:"
                  ).grid(row=4, column=0, columnspan=2, sticky="w", pady=(6, 0))
        self.progress = ttk.Progressbar(frame, maximum=100)
        self.progress.grid(row=5, column=0, columnspan=2, sticky="ew")

        results_box = ttk.LabelFrame(frame, text="Answers (then / iferror, in the Tk thread)", padding=4)
        results_box.grid(row=6, column=0, sticky="nsew", pady=(6, 0), padx=(0, 6))
        self.results = tkinter.Listbox(results_box)
        self.results.pack(fill="both", expand=True)
        pushed_box = ttk.LabelFrame(frame, text="Pushed to us (Listener.notify, @callback)", padding=4)
        pushed_box.grid(row=6, column=1, sticky="nsew", pady=(6, 0))
        self.pushed = tkinter.Listbox(pushed_box)
        self.pushed.pack(fill="both", expand=True)
        ttk.Label(frame, text="One Client and one Daemon on Tk's loop: no thread, no polling."
                  ).grid(row=7, column=0, columnspan=2, sticky="w", pady=(6, 0))
        self._ticking: str | None = None

    def connect_panel(self, panel: Panel) -> None:
        actions = {"quick": panel.quick, "slow": panel.slow, "stream": panel.stream, "failing": panel.failing}
        for name, action in actions.items():
            self.buttons[name].configure(command=action)

    # -- the View --

    def show_result(self, text: str) -> None:
        self.results.insert("end", text)
        self.results.see("end")

    def show_pushed(self, text: str) -> None:
        self.pushed.insert("end", text)
        self.pushed.see("end")

    def set_progress(self, percent: int) -> int:
        self.progress.configure(value=percent)
        return int(float(self.progress.cget("value")))

    def start_ticking(self, fn: Callable[[], None], interval_ms: int) -> None:
        self.stop_ticking()

        def tick() -> None:
            self._ticking = self.root.after(interval_ms, tick)
            fn()

        self._ticking = self.root.after(interval_ms, tick)

    def stop_ticking(self) -> None:
        if self._ticking is not None:
            self.root.after_cancel(self._ticking)
            self._ticking = None

    def later(self, delay_ms: int, fn: Callable[[], None]) -> None:
        self.root.after(delay_ms, fn)

    def state(self) -> dict[str, Any]:
        return {
            "results": list(self.results.get(0, "end")),
            "pushed": list(self.pushed.get(0, "end")),
            "progress": int(float(self.progress.cget("value"))),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A Tk window calling a remote service without freezing; "
                                                 "start demos/asyncio_service.py first.")
    add_client_options(parser, window=True)
    parser.add_argument("--stay", action="store_true", help="with --tour: keep the window open afterwards")
    options = parser.parse_args(argv)

    root = tkinter.Tk()
    uri = target_uri(options.target, options.ns)
    window = Window(root, uri)
    client = pyro_loops.Client()
    daemon = pyro_loops.Daemon(host=options.callback_host)
    tk_adapter.attach(daemon, root)   # both closed when the window is destroyed
    tk_adapter.attach(client, root)
    panel = Panel(client, daemon, uri, window, options.timeout)
    window.connect_panel(panel)
    unroute_signals = route_signals(root)
    root.update_idletasks()
    print(f"window id = {root.wm_frame()}", flush=True)
    print("ready", flush=True)
    status = [0]
    if options.tour:
        def finished(summary: dict[str, Any]) -> None:
            print("tour = " + json.dumps(summary), flush=True)
            status[0] = 0 if tour_passed(summary) else 1
            if not options.stay:
                root.destroy()

        root.after_idle(lambda: panel.tour(finished))
    try:
        root.mainloop()
    finally:
        unroute_signals()
    return status[0]


if __name__ == "__main__":
    sys.exit(main())
