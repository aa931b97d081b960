"""A Qt window that calls a remote service from its buttons and never freezes.

The window hosts a ``pyro_loops.Client`` on Qt's own event loop
(``qt.attach(client, app)``): a button handler's call returns a
``pyro_loops.Call`` at once and its answer arrives later in the GUI thread
(``call.then(...)``), so the progress bar keeps moving during the 3 s
``work()`` call and the other buttons keep answering. The window also hosts a
``Daemon`` on the same loop for its ``Listener``; the service calls it back
while the window's call is still pending, and the notes land in a list.

Run a service, then the window::

    python demos/asyncio_service.py --ns none         # prints its URI
    python demos/qt_client.py PYRO:demo.asyncio@localhost:PORT
    python demos/qt_client.py asyncio                 # by name, if a name server runs

``--tour`` presses the buttons itself and exits (0 if the bar moved and the
notes arrived); without a display, ``QT_QPA_PLATFORM=offscreen`` runs it invisibly.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

import pyro_loops
from pyro_loops.adapters import qt as qt_adapter

from _panel import SLOW_SECONDS, STREAM_COUNT, Panel, tour_passed
from _support import add_client_options, target_uri
from qt_app import QtCore, QtWidgets, route_signals  # whichever Qt binding is installed


class Window(QtWidgets.QMainWindow):
    """The buttons, the progress bar and the two lists; the panel's ``View``."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.setWindowTitle("pyro_loops Qt client")
        self.resize(760, 520)
        central = QtWidgets.QWidget()
        self.setCentralWidget(central)
        layout = QtWidgets.QVBoxLayout(central)
        layout.addWidget(QtWidgets.QLabel("<b>Remote calls made from Qt's event loop</b> "
                                          "(pyro_loops.Client: a call returns at once, its answer comes later)"))
        layout.addWidget(QtWidgets.QLabel(f"Service: {target}"))

        buttons = QtWidgets.QHBoxLayout()
        self.quick_button = QtWidgets.QPushButton("increment(1)")
        self.slow_button = QtWidgets.QPushButton(f"work({SLOW_SECONDS:g} s), calls us back")
        self.stream_button = QtWidgets.QPushButton(f"countdown({STREAM_COUNT}), streamed")
        self.failing_button = QtWidgets.QPushButton("increment('ten'), fails")
        for button in (self.quick_button, self.slow_button, self.stream_button, self.failing_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)

        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        layout.addWidget(QtWidgets.QLabel("Progress of work(), moved by a QTimer while the call is pending:"))
        layout.addWidget(self.progress)

        lists = QtWidgets.QHBoxLayout()
        results_box = QtWidgets.QGroupBox("Answers (then / iferror, in the GUI thread)")
        self.results = QtWidgets.QListWidget()
        QtWidgets.QVBoxLayout(results_box).addWidget(self.results)
        pushed_box = QtWidgets.QGroupBox("Pushed to us (Listener.notify, @callback)")
        self.pushed = QtWidgets.QListWidget()
        QtWidgets.QVBoxLayout(pushed_box).addWidget(self.pushed)
        lists.addWidget(results_box, 3)
        lists.addWidget(pushed_box, 2)
        layout.addLayout(lists, 1)
        self.statusBar().showMessage("One Client and one Daemon on Qt's loop: no thread, no polling.")

        self.ticker = QtCore.QTimer(self)

    def connect_panel(self, panel: Panel) -> None:
        self.quick_button.clicked.connect(lambda: panel.quick())
        self.slow_button.clicked.connect(lambda: panel.slow())
        self.stream_button.clicked.connect(lambda: panel.stream())
        self.failing_button.clicked.connect(lambda: panel.failing())

    # -- the View --

    def show_result(self, text: str) -> None:
        self.results.addItem(text)
        self.results.scrollToBottom()

    def show_pushed(self, text: str) -> None:
        self.pushed.addItem(text)
        self.pushed.scrollToBottom()

    def set_progress(self, percent: int) -> int:
        self.progress.setValue(percent)
        return self.progress.value()

    def start_ticking(self, fn: Callable[[], None], interval_ms: int) -> None:
        self.ticker.stop()
        try:
            self.ticker.timeout.disconnect()
        except TypeError:  # nothing was connected yet
            pass
        self.ticker.timeout.connect(fn)
        self.ticker.start(interval_ms)

    def stop_ticking(self) -> None:
        self.ticker.stop()

    def later(self, delay_ms: int, fn: Callable[[], None]) -> None:
        QtCore.QTimer.singleShot(delay_ms, fn)

    def state(self) -> dict[str, Any]:
        return {
            "results": [self.results.item(i).text() for i in range(self.results.count())],
            "pushed": [self.pushed.item(i).text() for i in range(self.pushed.count())],
            "progress": self.progress.value(),
        }


def build(app: QtWidgets.QApplication, uri: str, callback_host: str,
          timeout: float) -> tuple[Window, Panel, Callable[[], None]]:
    """The window with its client and daemon attached to ``app`` (closed when it quits),
    its panel, and a function that detaches and closes them sooner."""
    window = Window(uri)
    client = pyro_loops.Client()
    daemon = pyro_loops.Daemon(host=callback_host)
    handles = [qt_adapter.attach(daemon, app), qt_adapter.attach(client, app)]
    panel = Panel(client, daemon, uri, window, timeout)
    window.connect_panel(panel)

    def close() -> None:
        for handle in handles:
            handle.detach()
        client.close()
        daemon.close()

    return window, panel, close


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A Qt window calling a remote service without freezing; "
                                                 "start demos/asyncio_service.py first.")
    add_client_options(parser, window=True)
    parser.add_argument("--screenshot", metavar="PNG", help="with --tour: save a picture of the window at the end")
    options = parser.parse_args(argv)

    app = QtWidgets.QApplication(sys.argv[:1])
    uri = target_uri(options.target, options.ns)
    window, panel, _ = build(app, uri, options.callback_host, options.timeout)
    unroute_signals = route_signals(app, window, None)
    window.show()
    print("ready", flush=True)
    if options.tour:
        def finished(summary: dict[str, Any]) -> None:
            print("tour = " + json.dumps(summary), flush=True)
            if options.screenshot:
                window.grab().save(options.screenshot)
                print(f"screenshot saved to {options.screenshot}", flush=True)
            app.exit(0 if tour_passed(summary) else 1)

        QtCore.QTimer.singleShot(0, lambda: panel.tour(finished))
    try:
        return app.exec()
    finally:
        unroute_signals()


if __name__ == "__main__":
    sys.exit(main())
