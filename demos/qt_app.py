"""A Qt window whose widgets remote callers change, served by Qt's own event loop.

The daemon is attached to the QApplication with ``pyro_loops.adapters.qt``:
each socket gets a QSocketNotifier, so a call is dispatched the moment its
bytes arrive and an idle window costs nothing -- no polling timer, no server
thread. Published methods therefore run in the GUI thread and set widgets
directly (counter, message list, progress bar, log of incoming calls).

``long_task`` is marked ``@pyro_loops.in_worker``: it runs in a worker thread,
so the window stays responsive (and other calls keep being served) while it
works. A worker thread must not touch widgets; it reports progress through a
Qt signal, which Qt delivers in the GUI thread.

Run it, then drive it from another terminal::

    python demos/qt_app.py
    python demos/client.py qt                  # by name, if a name server runs
    python demos/client.py PYRO:demo.qt@localhost:PORT --burst 2000

Without a display, ``QT_QPA_PLATFORM=offscreen`` runs it invisibly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import Callable

# The first installed of the bindings the adapter takes (names all three spell alike).
for _binding in ("PyQt5", "PySide6", "PyQt6"):
    try:
        QtCore, QtGui, QtWidgets = (importlib.import_module(f"{_binding}.{m}") for m in ("QtCore", "QtGui", "QtWidgets"))
        break
    except ImportError:
        continue
else:
    sys.exit("the Qt demo needs PyQt5, PyQt6 or PySide6: pip install 'pyro-loops[qt]' (or [pyqt6], [pyside6])")
Signal = getattr(QtCore, "pyqtSignal", None) or QtCore.Signal

import pyro_loops
from pyro_loops.adapters import qt as qt_adapter

from _support import CallLog, DemoQueries, SignalWakeup, add_server_options, logged, register_name, work_in_steps


class Bridge(QtCore.QObject):
    """Signals are the thread-safe way into the GUI thread: emitted anywhere, delivered there."""

    line = Signal(str)
    progress = Signal(int)


class Window(QtWidgets.QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("pyro_loops Qt demo")
        self.resize(720, 600)
        central = QtWidgets.QWidget()
        self.setCentralWidget(central)
        layout = QtWidgets.QVBoxLayout(central)

        heading = QtWidgets.QLabel("<b>Remote calls are served by Qt's event loop</b> "
                                   "(pyro_loops.adapters.qt: socket notifiers, no polling)")
        layout.addWidget(heading)
        form = QtWidgets.QFormLayout()
        self.uri = QtWidgets.QLineEdit()
        self.uri.setReadOnly(True)
        form.addRow("URI:", self.uri)
        self.ns_status = QtWidgets.QLabel()
        form.addRow("Name server:", self.ns_status)
        layout.addLayout(form)

        row = QtWidgets.QHBoxLayout()
        self.counter = QtWidgets.QLCDNumber(6)
        self.counter.setSegmentStyle(QtWidgets.QLCDNumber.SegmentStyle.Flat)
        self.counter.setMinimumHeight(60)
        counter_box = QtWidgets.QGroupBox("Counter: increment(step)")
        QtWidgets.QVBoxLayout(counter_box).addWidget(self.counter)
        row.addWidget(counter_box, 1)
        side = QtWidgets.QGroupBox("Progress: set_progress(percent), long_task(seconds)")
        side_layout = QtWidgets.QVBoxLayout(side)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        side_layout.addWidget(self.progress)
        self.clicks = 0
        self.button = QtWidgets.QPushButton("Click me: I answer even while long_task runs (0)")
        self.button.clicked.connect(self.on_click)
        side_layout.addWidget(self.button)
        row.addWidget(side, 2)
        layout.addLayout(row)

        messages_box = QtWidgets.QGroupBox("Messages: add_message(text)")
        self.messages = QtWidgets.QListWidget()
        QtWidgets.QVBoxLayout(messages_box).addWidget(self.messages)
        layout.addWidget(messages_box, 1)

        log_box = QtWidgets.QGroupBox("Incoming calls")
        self.log = QtWidgets.QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(500)
        self.log.setLineWrapMode(QtWidgets.QPlainTextEdit.LineWrapMode.NoWrap)
        self.log.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        QtWidgets.QVBoxLayout(log_box).addWidget(self.log)
        layout.addWidget(log_box, 2)
        self.statusBar().showMessage("Calls run in the GUI thread; long_task runs in a worker thread.")

    def on_click(self) -> None:
        self.clicks += 1
        self.button.setText(f"Click me: I answer even while long_task runs ({self.clicks})")


@pyro_loops.expose
class Board(DemoQueries):
    """The published object. Its methods run in the GUI thread, so they use widgets directly."""

    def __init__(self, window: Window, bridge: Bridge) -> None:
        self.window = window
        self.bridge = bridge
        self.log = CallLog(bridge.line.emit)  # emit: safe from the worker thread too

    def info(self) -> str:
        return "Qt demo: widgets changed by remote calls, served by pyro_loops.adapters.qt"

    @logged
    def increment(self, step: int = 1) -> int:
        value = self.window.counter.intValue() + int(step)
        self.window.counter.display(value)
        return value

    @logged
    def add_message(self, text: str) -> int:
        self.window.messages.addItem(str(text))
        self.window.messages.scrollToBottom()
        return self.window.messages.count()

    @logged
    def set_progress(self, percent: int) -> int:
        self.window.progress.setValue(max(0, min(100, int(percent))))
        return self.window.progress.value()

    @pyro_loops.in_worker
    @logged
    def long_task(self, seconds: float = 3.0) -> str:
        """Work for a while in a worker thread; progress reaches the bar through a signal."""
        return work_in_steps(seconds, self.bridge.progress.emit)

    def state(self) -> dict:
        """What the window shows right now, read back from the widgets."""
        window = self.window
        return {
            "counter": window.counter.intValue(),
            "progress": window.progress.value(),
            "messages": [window.messages.item(i).text() for i in range(window.messages.count())],
            "log": window.log.toPlainText().splitlines()[-20:],
            "clicks": window.clicks,
            "uri": window.uri.text(),
            "name_server": window.ns_status.text(),
        }


def route_signals(app: QtWidgets.QApplication, window: Window, screenshot: str | None) -> Callable[[], None]:
    """Let Ctrl+C / SIGTERM quit and SIGUSR1 save a screenshot, without a polling timer.

    A Qt loop sleeping in C++ never lets Python run its signal handlers; a
    socket notifier on a ``SignalWakeup`` turns each signal into a Qt event.
    Returns the function that undoes all this.
    """
    wakeup = SignalWakeup()
    notifier = QtCore.QSocketNotifier(wakeup.reader.fileno(), QtCore.QSocketNotifier.Type.Read, app)
    notifier.activated.connect(wakeup.drain)
    signal.signal(signal.SIGINT, lambda *_: app.quit())
    signal.signal(signal.SIGTERM, lambda *_: app.quit())
    if screenshot:
        def save(*_: object) -> None:
            window.grab().save(screenshot)
            print(f"screenshot saved to {screenshot}", flush=True)

        signal.signal(signal.SIGUSR1, save)

    def undo() -> None:
        notifier.setEnabled(False)
        wakeup.close()

    return undo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A Qt window publishing an object whose methods change "
                                                 "its widgets; drive it with demos/client.py.")
    add_server_options(parser, "demo.qt")
    parser.add_argument("--screenshot", metavar="PNG",
                        help="save a picture of the window to PNG whenever the process gets SIGUSR1")
    options = parser.parse_args(argv)

    app = QtWidgets.QApplication(sys.argv[:1])
    window = Window()
    bridge = Bridge()
    board = Board(window, bridge)
    bridge.line.connect(window.log.appendPlainText)
    bridge.progress.connect(window.progress.setValue)

    daemon = pyro_loops.Daemon(host=options.host, port=options.port)
    uri = daemon.register(board, options.name)
    window.uri.setText(str(uri))
    status, unregister = register_name(options.ns, options.name, uri)
    window.ns_status.setText(status.partition(": ")[2])
    qt_adapter.attach(daemon, app)   # closes the daemon when the application quits
    unroute_signals = route_signals(app, window, options.screenshot)
    window.show()
    print(f"uri = {uri}", flush=True)
    print(status, flush=True)
    print(f"ready (pid {os.getpid()})", flush=True)
    try:
        return app.exec()
    finally:
        unroute_signals()
        unregister()


if __name__ == "__main__":
    sys.exit(main())
