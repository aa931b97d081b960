"""The Tk adapter serving real clients from a real Tk root under Xvfb.

Both strategies run on Linux: "filehandler" (Tcl file handlers, the default
here) and "thread" (the selector-thread fallback meant for Tk on Windows).
Clients run in threads while the test runs ``root.mainloop()`` (``tk_host``
from ``_hosts.py``, whose ``after`` timer ends the loop once the clients are
done, or a safety timeout passed); what every adapter promises is in
``test_adapter_contract.py``. Tk cannot list its file handlers, so leaks are caught by their effect:
a handler left on a readable descriptor keeps Tk busy for ever
(``tk_settles``). Any exception that escapes into Tk fails the test.
"""

from __future__ import annotations

import _tkinter
import gc
import socket
import subprocess
import sys
import threading
import time
import tkinter
import weakref
from typing import Any, Callable

import pytest

import pyro_loops
from pyro_loops.adapters import tk as tk_adapter

from _adapter_support import WAIT_S, BaseService, call_once, daemon, proxy, reported  # noqa: F401
from _hosts import helper_threads, helper_threads_end, tk_host  # noqa: F401


@pyro_loops.expose
class Service(BaseService):
    def __init__(self, root: tkinter.Tk) -> None:
        super().__init__()
        self.root = root
        self.nested_open = threading.Event()
        self.leave_nested: Callable[[], None] | None = None
        self.log: list[str] = []

    def in_tk_thread(self):
        return threading.current_thread() is threading.main_thread()

    def open_dialog(self):
        """Block in a nested Tk loop (a modal dialog) until another call closes it."""
        dialog = tkinter.Toplevel(self.root)
        self.leave_nested = dialog.destroy
        self.log.append("opened")
        self.nested_open.set()
        self.root.wait_window(dialog)
        self.log.append("returned")
        return "closed"

    def close_nested(self):
        self.log.append("closing")
        self.leave_nested()


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def root(tk_host):
    return tk_host.root


@pytest.fixture(params=["filehandler", "thread"])
def strategy(request):
    return request.param


@pytest.fixture
def service(daemon, root):
    service = Service(root)
    service.uri = daemon.register(service, "service")
    return service


# --- helpers --------------------------------------------------------------------------


def tk_settles(root: tkinter.Tk, rounds: int = 500) -> bool:
    """True once Tk has nothing left to do; False if some handler keeps firing."""
    for _ in range(rounds):
        if not root.tk.dooneevent(_tkinter.ALL_EVENTS | _tkinter.DONT_WAIT):
            return True
    return False


def watched(handle: tk_adapter.TkHandle) -> set[socket.socket]:
    """The sockets the adapter keeps Tk handlers (or helper-thread registrations) for."""
    socks = set(handle._socks.values())
    helper = getattr(handle._watching, "selector", None)
    if helper is not None:
        assert helper.watched() == socks
    return socks


def reuse_descriptors_readably(count: int = 8) -> list[socket.socket]:
    """Socket pairs that likely take the lowest free descriptor numbers (those of
    just-closed sockets), each made readable, so a handler left on one fires."""
    pairs = [socket.socketpair() for _ in range(count)]
    for a, b in pairs:
        b.send(b"stale?")
    return [s for pair in pairs for s in pair]


# --- tests ----------------------------------------------------------------------------


def test_auto_strategy_uses_file_handlers_where_tk_has_them(root, daemon, reported):
    with tk_adapter.attach(daemon, root) as handle:
        assert handle.strategy == "filehandler"
        assert not helper_threads()


@pytest.mark.parametrize("end", ["clients_leave", "daemon_closes"])
def test_no_handler_is_left_on_a_closed_socket(tk_host, root, daemon, service, strategy, end, reported):
    """Tk cannot list its file handlers: one left behind shows by firing on the
    readable socket that now has its descriptor number (the contract tests
    read the handle's own books)."""
    handle = tk_adapter.attach(daemon, root, strategy=strategy)

    def client(n):
        return lambda: [call_once(service.uri, "echo", (n, i)) for i in range(5)]

    assert tk_host.serve(*(client(n) for n in range(12))) == [[(n, i) for i in range(5)] for n in range(12)]
    # the daemon notices each disconnect when it reads the end of the stream
    tk_host.run_until(lambda: len(daemon.sockets) == 2)
    if end == "daemon_closes":
        daemon.close()
        assert helper_threads_end(root)
    reused = reuse_descriptors_readably()
    try:
        assert tk_settles(root)
        assert watched(handle) == set(daemon.sockets)
    finally:
        for sock in reused:
            sock.close()
    if end == "clients_leave":
        assert tk_host.serve(lambda: call_once(service.uri, "echo", "still served")) == ["still served"]
    handle.detach()


def test_call_in_a_dialogs_wait_window_lets_other_clients_through(tk_host, root, daemon, service, strategy, reported):
    """Tk's own modal idiom (``wait_window``); a hand-written nested loop is in the contract."""
    def second_client():
        assert service.nested_open.wait(WAIT_S)
        return call_once(service.uri, "close_nested")

    with tk_adapter.attach(daemon, root, strategy=strategy):
        results = tk_host.serve(lambda: call_once(service.uri, "open_dialog"), second_client)
        assert results == ["closed", None]
        assert service.log == ["opened", "closing", "returned"]
        assert tk_host.serve(lambda: call_once(service.uri, "echo", "after")) == ["after"]


def test_destroying_the_root_closes_the_daemon(tk_host, root, daemon, service, strategy, reported):
    handle = tk_adapter.attach(daemon, root, strategy=strategy)
    user_saw_destroy = []
    root.bind("<Destroy>", lambda e: user_saw_destroy.append(e.widget), add="+")
    with proxy(service.uri) as p:
        assert tk_host.serve(lambda: p.echo(1)) == [1]
        root.destroy()
        assert not handle.attached
        assert daemon.sockets == []
        assert helper_threads_end(root)
        with pytest.raises(pyro_loops.errors.CommunicationError):
            p.echo(2)
    assert root in user_saw_destroy  # the program's own binding survived ours


def test_destroying_the_root_can_leave_the_daemon_open(root, daemon, service, strategy, reported):
    handle = tk_adapter.attach(daemon, root, strategy=strategy, close_on_destroy=False)
    root.destroy()
    assert not handle.attached
    assert len(daemon.sockets) == 2


def test_thread_strategy_waits_for_mainloop_when_pumped_with_update(tk_host, root, daemon, service, reported):
    """The documented limit: tkinter refuses calls from other threads outside mainloop()."""
    with tk_adapter.attach(daemon, root, strategy="thread"):
        client = threading.Thread(target=lambda: results.append(call_once(service.uri, "echo", 1)))
        results: list[Any] = []
        client.start()
        deadline = time.monotonic() + WAIT_S
        while not reported and time.monotonic() < deadline:
            root.update()
            time.sleep(0.01)
        [(exc, where)] = reported
        assert "main thread is not in main loop" in str(exc) and "waking the Tk thread" in where
        reported.clear()
        tk_host.run_until(lambda: not client.is_alive())
        assert results == [1]


@pytest.mark.parametrize("end", ["detach", "daemon_close", "root_destroy"])
def test_adapter_leaves_no_cycle_keeping_the_root(daemon, strategy, end, reported):
    """A root kept alive by a reference cycle would be freed by the garbage
    collector in whatever thread it runs in; Tcl aborts the process when an
    interpreter is deleted outside its own thread."""
    gc.disable()
    try:
        root = tkinter.Tk()
        root.withdraw()
        handle = tk_adapter.attach(daemon, root, strategy=strategy)
        {"detach": handle.detach, "daemon_close": daemon.close, "root_destroy": root.destroy}[end]()
        if end != "root_destroy":
            root.destroy()
        assert helper_threads_end(root)
        root_ref = weakref.ref(root)
        del root, handle
        assert root_ref() is None
    finally:
        gc.enable()


EXIT_SCRIPT = """
import sys, tkinter, pyro_loops
from pyro_loops.adapters import tk as tk_adapter

strategy, ending = sys.argv[1:]
root = tkinter.Tk()
root.withdraw()
daemon = pyro_loops.Daemon(host="127.0.0.1")
tk_adapter.attach(daemon, root, strategy=strategy)
if ending == "destroy":
    root.after(0, root.destroy)
    root.mainloop()
else:  # the program just ends, attached
    root.update()
print("end of program", flush=True)
"""


@pytest.mark.parametrize("ending", ["destroy", "just_exit"])
def test_no_thread_keeps_the_process_alive(strategy, ending):
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, strategy, ending], capture_output=True,
                          text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "end of program\n"
