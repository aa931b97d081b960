"""A done-callback that runs a nested loop (a modal dialog) still gets replies.

What a Qt or Tk developer expects: a callback of a loop proxy's call opens
``QDialog.exec()`` or ``wait_window`` (or a select-loop program polls its loop
from inside the callback), and calls made meanwhile -- on the *same* proxy,
whose connection is the one the callback was dispatched from -- complete while
the dialog is open. asyncio has no nested loops (``run_until_complete`` inside
a running loop is refused), so it is not among the hosts here.

The dialog closes itself once the nested reply arrived (a timer checks), and
after ``WAIT_S`` in any case, so a missing reply fails the test instead of
hanging it.
"""

from __future__ import annotations

import time
import tkinter
from typing import Any, Callable

import pytest

from _client_hosts import WAIT_S, client, host, loops_server, pyro4_server, reported, server  # noqa: F401

NESTING_HOSTS = ["selectloop", "qt", "tk-filehandler", "tk-thread"]


def modal(host: Any, done: Callable[[], bool]) -> None:
    """Run the host's own nested loop, as a modal dialog does, until ``done()`` (or WAIT_S)."""
    deadline = time.monotonic() + WAIT_S

    def finished() -> bool:
        return done() or time.monotonic() > deadline

    if host.name == "qt":
        from pytestqt.qt_compat import qt_api
        widgets, core = qt_api.QtWidgets, qt_api.QtCore
        dialog = widgets.QDialog()
        closer = core.QTimer(dialog)
        closer.timeout.connect(lambda: dialog.accept() if finished() else None)
        closer.start(5)
        dialog.exec()  # QDialog.exec(): Qt's nested event loop
        closer.stop()
        dialog.deleteLater()
    elif host.name.startswith("tk"):
        top = tkinter.Toplevel(host.root)

        def check() -> None:
            if finished():
                top.destroy()
            else:
                host.root.after(5, check)

        host.root.after(5, check)
        host.root.wait_window(top)  # Tk's nested event loop
    else:
        host.loop.run(until=finished, max_wait=0.01)  # the program polls its own loop from the callback


@pytest.mark.parametrize("host", NESTING_HOSTS, indirect=True)
def test_callback_running_a_modal_loop_gets_replies_on_its_own_connection(host, client, server):
    proxy = client.proxy(server.uri)
    proxy._pyroTimeout = WAIT_S * 2
    host.settle(proxy._pyroBind())
    seen: list[Any] = []

    def open_dialog(call):
        seen.append(call.result())
        inner = proxy.add(40, 2)  # same proxy, same connection as the reply being handled
        inner.add_done_callback(lambda c: seen.append(c.result()))
        modal(host, lambda: len(seen) > 1)
        seen.append("dialog closed")

    proxy.add(1, 1).add_done_callback(open_dialog)
    host.run_until(lambda: "dialog closed" in seen, WAIT_S * 2)
    assert seen == [2, 42, "dialog closed"]


@pytest.mark.parametrize("host", NESTING_HOSTS, indirect=True)
def test_replies_already_received_behind_the_one_that_opened_the_dialog_complete_during_it(
        host, client, server):
    # Replies that arrived in the same read as the one whose callback opens the
    # dialog are not held back until the dialog closes, though their socket
    # has nothing more to read.
    proxy = client.proxy(server.uri)
    proxy._pyroTimeout = WAIT_S * 2
    seen: list[Any] = []
    during: list[Any] = []

    def open_dialog(call):
        modal(host, lambda: len(seen) == 20)
        during.extend(seen)

    # Made before the connection is ready, all go out in one write once it is; the
    # oneway call completes right after that write, and its callback holds the loop
    # while the 21 replies pile up, to be read in one go.
    written = proxy.record("nested")
    first = proxy.add(0, 0)
    others = [proxy.add(i, 1) for i in range(20)]
    written.add_done_callback(lambda c: time.sleep(0.5))
    first.add_done_callback(open_dialog)
    for other in others:
        other.add_done_callback(lambda c: seen.append(c.result()))
    host.run_until(lambda: len(seen) == 20 and during, WAIT_S * 2)
    assert during == list(range(1, 21))
