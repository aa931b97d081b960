"""Regenerate the screenshots in docs/ from the real demo programs.

Each demo is started as a user would start it, registers with a name server
started for the occasion, and is driven by ``demos/client.py`` (the tour, then
a few calls), so the pictures show real remote calls. The client windows
(``qt_client.py``, ``tk_client.py``) take their own ``--tour`` against
``demos/asyncio_service.py``. The Qt windows run on Qt's offscreen platform
and photograph themselves (``widget.grab()``); the Tk windows run under a
private Xvfb server and are captured from the X server with ImageMagick's
``import`` (or ``xwd`` + ``convert``, or else Qt's xcb platform grabbing the
X window).

Needs: PyQt5, Xvfb, and ImageMagick or Qt's xcb platform (``apt-get install -y xvfb imagemagick``).
Run from anywhere: ``python docs/make_screenshots.py [qt_demo tk_demo qt_client tk_client]``
(default: all four).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

DOCS = Path(__file__).resolve().parent
DEMOS = DOCS.parent / "demos"
WAIT = 20.0


class Program:
    """A background process whose stdout we can wait on, line by line."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def wait_for(self, pattern: str) -> re.Match:
        # Our own short-lived helper: a blocking readline is fine, the deadline is checked per line.
        deadline = time.monotonic() + WAIT
        for line in self.proc.stdout:
            match = re.search(pattern, line)
            if match:
                return match
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"{self.proc.args[1]}: no line matching {pattern!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def drive(target: str, ns: str) -> None:
    """What a visitor would do: the client's tour, then a few more calls."""
    client = [sys.executable, str(DEMOS / "client.py"), target, "--ns", ns]
    subprocess.run(client, check=True, stdout=subprocess.DEVNULL, timeout=60)
    subprocess.run(client + ["--call", "add_message", "The window stayed responsive during long_task",
                             "--call", "increment", "39", "--call", "set_progress", "60"],
                   check=True, stdout=subprocess.DEVNULL, timeout=60)


def qt_screenshot(ns: str, target: Path) -> None:
    target.unlink(missing_ok=True)
    demo = Program([sys.executable, str(DEMOS / "qt_app.py"), "--ns", ns, "--screenshot", str(target)],
                   env={"QT_QPA_PLATFORM": "offscreen"})
    try:
        demo.wait_for("^ready")
        drive("qt", ns)
        demo.proc.send_signal(signal.SIGUSR1)
        demo.wait_for("^screenshot saved")
    finally:
        demo.stop()


def start_xvfb() -> tuple[subprocess.Popen, str]:
    """A private X server on a free display number (Xvfb picks it and tells us)."""
    read_end, write_end = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1024x768x24",
                             "-nolisten", "tcp"], pass_fds=(write_end,), stderr=subprocess.DEVNULL)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        number = pipe.readline().strip()
    if not number:
        xvfb.kill()
        raise RuntimeError("Xvfb did not start")
    return xvfb, f":{number}"


#: Qt on the xcb platform photographs an X window by id: the capture of last resort
_QT_GRAB = ("import sys\nfrom PyQt5 import QtWidgets\napp = QtWidgets.QApplication(sys.argv[:1])\n"
            "sys.exit(0 if app.primaryScreen().grabWindow(int(sys.argv[1], 16)).save(sys.argv[2]) else 1)\n")


def capture_window(window_id: str, display: str, target: Path) -> None:
    env = {**os.environ, "DISPLAY": display}
    if shutil.which("import"):
        subprocess.run(["import", "-window", window_id, str(target)], check=True, env=env, timeout=60)
        return
    if shutil.which("xwd"):
        with tempfile.NamedTemporaryFile(suffix=".xwd") as dump:
            subprocess.run(["xwd", "-silent", "-id", window_id, "-out", dump.name], check=True, env=env,
                           timeout=60)
            subprocess.run(["convert", dump.name, str(target)], check=True, timeout=60)
        return
    subprocess.run([sys.executable, "-c", _QT_GRAB, window_id, str(target)], check=True, timeout=60,
                   env={**env, "QT_QPA_PLATFORM": "xcb"})


def tk_window_screenshot(argv: list[str], target: Path, settle: Callable[[Program], None]) -> None:
    """Run a Tk program (``argv``) under a private Xvfb and capture its window
    once ``settle(program)`` returns (it waits for, or makes, what the picture shows)."""
    xvfb, display = start_xvfb()
    try:
        window = Program(argv, env={"DISPLAY": display})
        try:
            window_id = window.wait_for(r"^window id = (\S+)").group(1)
            settle(window)
            time.sleep(0.5)  # let Tk redraw after the last change before the picture is taken
            capture_window(window_id, display, target)
        finally:
            window.stop()
    finally:
        xvfb.terminate()
        xvfb.wait()


def tk_screenshot(ns: str, target: Path) -> None:
    def settle(demo: Program) -> None:
        demo.wait_for("^ready")
        drive("tk", ns)

    tk_window_screenshot([sys.executable, str(DEMOS / "tk_app.py"), "--ns", ns], target, settle)


def start_service(ns: str) -> tuple[Program, str]:
    """demos/asyncio_service.py, the service the client windows call; its URI."""
    service = Program([sys.executable, str(DEMOS / "asyncio_service.py"), "--ns", ns])
    uri = service.wait_for(r"^uri = (\S+)").group(1)
    service.wait_for("^ready")
    return service, uri


def qt_client_screenshot(ns: str, target: Path) -> None:
    target.unlink(missing_ok=True)
    service, uri = start_service(ns)
    try:
        window = Program([sys.executable, str(DEMOS / "qt_client.py"), uri, "--tour", "--screenshot", str(target)],
                         env={"QT_QPA_PLATFORM": "offscreen"})
        try:
            window.wait_for("^screenshot saved")
        finally:
            window.stop()
    finally:
        service.stop()


def tk_client_screenshot(ns: str, target: Path) -> None:
    service, uri = start_service(ns)
    try:
        tk_window_screenshot([sys.executable, str(DEMOS / "tk_client.py"), uri, "--tour", "--stay"], target,
                             lambda window: window.wait_for("^tour = "))
    finally:
        service.stop()


SHOTS = {"qt_demo": qt_screenshot, "tk_demo": tk_screenshot,
         "qt_client": qt_client_screenshot, "tk_client": tk_client_screenshot}


def main(argv: list[str] | None = None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or list(SHOTS)
    unknown = set(names) - set(SHOTS)
    if unknown:
        print(f"unknown screenshot(s) {', '.join(sorted(unknown))}; choose from {', '.join(SHOTS)}", file=sys.stderr)
        return 2
    ns = Program([sys.executable, "-m", "pyro_loops.naming", "-n", "127.0.0.1", "-p", "0", "-x"])
    try:
        location = ns.wait_for(r"NS running on (\S+)").group(1)
        for name in names:
            target = DOCS / f"{name}.png"
            SHOTS[name](location, target)
            print(f"wrote {target}")
    finally:
        ns.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
