"""The Tk adapter serving real clients from a real Tk root under Xvfb.

Both strategies run on Linux: "filehandler" (Tcl file handlers, the default
here) and "thread" (the selector-thread fallback meant for Tk on Windows).
Clients run in threads while the test runs ``root.mainloop()``; the test's own
``after`` timer ends the loop once the clients are done (or a safety timeout
passed). Tk cannot list its file handlers, so leaks are caught by their effect:
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

from _adapter_support import (BIG_REPLY, FLOOD, WAIT_S, BaseService, DisconnectFails, RawClient, call_once,
                              errors_reported, half_frame_client, in_threads, proxy)

HELPER_THREAD = "pyro_loops-tk-selector"


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

    def spin_nested(self):
        """Block in a hand-written nested loop until another call ends it."""
        done = []
        self.leave_nested = lambda: done.append(True)
        self.log.append("opened")
        self.nested_open.set()
        while not done:
            self.root.tk.dooneevent(_tkinter.ALL_EVENTS)
        self.log.append("returned")
        return "closed"

    def close_nested(self):
        self.log.append("closing")
        self.leave_nested()


class FirstEventFails(pyro_loops.Daemon):
    """A daemon that breaks its promise never to raise from handle_event, once."""

    failed = False

    def handle_event(self, sock, events):
        if not self.failed:
            self.failed = True
            raise RuntimeError("escaped from the daemon")
        super().handle_event(sock, events)


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def root():
    root = tkinter.Tk()
    root.withdraw()
    escaped: list[BaseException] = []
    root.report_callback_exception = lambda exc_type, exc, tb: escaped.append(exc)
    yield root
    try:
        root.destroy()
    except tkinter.TclError:
        pass  # the test destroyed it
    # A Tcl interpreter must be deleted in its own thread: free this one here,
    # not in whichever client thread the garbage collector would next run in.
    del root
    gc.collect()
    assert not escaped, f"exceptions escaped into Tk: {escaped}"


@pytest.fixture
def reported():
    """Errors sent to the error hook; a test that expects some clears the list."""
    with errors_reported() as seen:
        yield seen


@pytest.fixture(params=["filehandler", "thread"])
def strategy(request):
    return request.param


@pytest.fixture
def daemon():
    with pyro_loops.Daemon(host="127.0.0.1") as daemon:
        yield daemon


@pytest.fixture
def service(daemon, root):
    service = Service(root)
    service.uri = daemon.register(service, "service")
    return service


# --- helpers --------------------------------------------------------------------------


def run_mainloop_until(root: tkinter.Tk, condition: Callable[[], Any], timeout: float = WAIT_S) -> None:
    """Run ``root.mainloop()`` until ``condition()`` holds, checked by the test's own timer."""
    deadline = time.monotonic() + timeout

    def check() -> None:
        if condition() or time.monotonic() > deadline:
            root.quit()
        else:
            root.after(5, check)

    root.after(5, check)
    root.mainloop()
    assert condition(), f"not reached within {timeout} s"


def serve_clients(root: tkinter.Tk, *clients: Callable[[], Any]) -> list[Any]:
    """Run each client in a thread while Tk runs; return their results, re-raise their errors."""
    threads, results, failures = in_threads(*clients)
    run_mainloop_until(root, lambda: not any(t.is_alive() for t in threads))
    if failures:
        raise failures[0]
    return results


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


def helper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == HELPER_THREAD]


def helper_threads_end(root: tkinter.Tk) -> bool:
    deadline = time.monotonic() + WAIT_S
    while helper_threads() and time.monotonic() < deadline:
        root.tk.dooneevent(_tkinter.ALL_EVENTS | _tkinter.DONT_WAIT)  # delivers a wakeup in flight
        for thread in helper_threads():
            thread.join(0.01)
    return not helper_threads()


def adapter_timers(root: tkinter.Tk) -> list[str]:
    """Pending Tcl ``after`` timers (the test's own are gone once mainloop returned)."""
    return list(root.tk.splitlist(root.tk.call("after", "info")))


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


def test_many_sequential_calls_run_in_the_tk_thread(root, daemon, service, strategy, reported):
    with tk_adapter.attach(daemon, root, strategy=strategy):
        def client():
            with proxy(service.uri) as p:
                return [p.echo(i) for i in range(300)], p.in_tk_thread()

        [(values, in_tk_thread)] = serve_clients(root, client)
    assert values == list(range(300))
    assert in_tk_thread


def test_clients_coming_and_going_leave_no_handler_behind(root, daemon, service, strategy, reported):
    with tk_adapter.attach(daemon, root, strategy=strategy) as handle:
        def client(n):
            return lambda: [call_once(service.uri, "echo", (n, i)) for i in range(5)]

        results = serve_clients(root, *(client(n) for n in range(12)))
        assert results == [[(n, i) for i in range(5)] for n in range(12)]
        # the daemon notices each disconnect when it reads the end of the stream
        run_mainloop_until(root, lambda: len(daemon.sockets) == 2)
        assert watched(handle) == set(daemon.sockets)
        reused = reuse_descriptors_readably()
        try:
            assert tk_settles(root)
            assert watched(handle) == set(daemon.sockets)
        finally:
            for sock in reused:
                sock.close()
        assert serve_clients(root, lambda: call_once(service.uri, "echo", "still served")) == ["still served"]


def test_half_sent_frame_does_not_stall_others_and_times_out(root, daemon, service, strategy, reported):
    pyro_loops.config.HALF_FRAME_TIMEOUT = 0.3
    with tk_adapter.attach(daemon, root, strategy=strategy), \
            half_frame_client(service.uri) as stalled:

        def other_client():
            with proxy(service.uri) as p:
                return [p.echo(i) for i in range(20)]

        assert serve_clients(root, other_client) == [list(range(20))]
        # the stalled client is cut off by the daemon's deadline, a Tk timer
        assert serve_clients(root, lambda: stalled.recv(100)) == [b""]
    assert adapter_timers(root) == []


def test_tk_timer_exists_only_while_the_daemon_has_a_deadline(root, daemon, service, strategy, reported):
    address = (service.uri.host, service.uri.port)
    with tk_adapter.attach(daemon, root, strategy=strategy) as handle, proxy(service.uri) as p:
        assert serve_clients(root, lambda: p.echo(1)) == [1]
        assert adapter_timers(root) == []  # idle, though a client is connected
        with socket.create_connection(address, timeout=WAIT_S) as stalled:
            stalled.sendall(b"PYRO")
            run_mainloop_until(root, lambda: daemon.next_deadline() is not None)
            assert len(adapter_timers(root)) == 1  # a half frame has a deadline
        run_mainloop_until(root, lambda: daemon.next_deadline() is None)
        assert adapter_timers(root) == []  # its client left: the timer went with it
        with socket.create_connection(address, timeout=WAIT_S) as stalled:
            stalled.sendall(b"PYRO")
            run_mainloop_until(root, lambda: daemon.next_deadline() is not None)
            handle.detach()
            assert adapter_timers(root) == []


def test_long_worker_call_leaves_tk_timers_ticking(root, daemon, service, strategy, reported):
    ticks_during_call = []

    def tick():
        if service.worker_started.is_set() and not service.release.is_set():
            ticks_during_call.append(1)
            if len(ticks_during_call) >= 5:
                service.release.set()  # the call may end only after Tk ticked meanwhile
        root.after(10, tick)

    with tk_adapter.attach(daemon, root, strategy=strategy):
        root.after(10, tick)
        [(released, in_tk_thread)] = serve_clients(root, lambda: call_once(service.uri, "wait_in_worker"))
        assert serve_clients(root, lambda: call_once(service.uri, "echo", "after")) == ["after"]
    assert released, "the worker call ended without the Tk timer ticking 5 times meanwhile"
    assert not in_tk_thread
    assert len(ticks_during_call) == 5


def test_flood_of_pipelined_calls_leaves_tk_its_turns(root, daemon, service, strategy, reported):
    running = [True]

    def tick():  # advances once per turn of the Tk loop, whatever the clock says
        service.ticks += 1
        if running[0]:
            root.after(0, tick)

    with tk_adapter.attach(daemon, root, strategy=strategy):
        flood = RawClient(service.uri)
        try:
            # sent before the loop runs, so it all waits in one receive buffer
            flood.call("ticks_seen", FLOOD)
            root.after(0, tick)
            [seen] = serve_clients(root, flood.results)
        finally:
            running[0] = False
            flood.sock.close()
    assert len(seen) == FLOOD
    assert seen[-1] > seen[0], "the whole flood was served without Tk getting a turn"


def test_exception_in_a_method_goes_back_to_its_caller(root, daemon, service, strategy, reported):
    def client():
        with proxy(service.uri) as p:
            with pytest.raises(ValueError, match="boom"):
                p.fail()
            return p.echo("after")

    with tk_adapter.attach(daemon, root, strategy=strategy):
        assert serve_clients(root, client) == ["after"]


def test_internal_error_goes_to_the_hook_and_serving_goes_on(root, strategy, reported):
    with DisconnectFails(host="127.0.0.1") as daemon:
        uri = daemon.register(Service(root), "service")
        with tk_adapter.attach(daemon, root, strategy=strategy):
            assert serve_clients(root, lambda: call_once(uri, "echo", 1)) == [1]
            run_mainloop_until(root, lambda: reported)
            [(exc, where)] = reported
            assert isinstance(exc, RuntimeError) and "clientDisconnect" in where
            reported.clear()
            assert serve_clients(root, lambda: call_once(uri, "echo", 2)) == [2]
            run_mainloop_until(root, lambda: reported)
            reported.clear()


def test_exception_escaping_the_daemon_is_reported_not_raised_into_tk(root, strategy, reported):
    with FirstEventFails(host="127.0.0.1") as daemon:
        uri = daemon.register(Service(root), "service")
        with tk_adapter.attach(daemon, root, strategy=strategy):
            # the failed event was the accept: the listening socket stays readable
            assert serve_clients(root, lambda: call_once(uri, "echo", 1)) == [1]
    [(exc, where)] = reported
    assert str(exc) == "escaped from the daemon" and "tk adapter" in where
    reported.clear()


@pytest.mark.parametrize("nested", ["open_dialog", "spin_nested"])
def test_call_in_a_nested_loop_lets_other_clients_through(root, daemon, service, strategy, nested, reported):
    def second_client():
        assert service.nested_open.wait(WAIT_S)
        return call_once(service.uri, "close_nested")

    with tk_adapter.attach(daemon, root, strategy=strategy):
        results = serve_clients(root, lambda: call_once(service.uri, nested), second_client)
        assert results == ["closed", None]
        assert service.log == ["opened", "closing", "returned"]
        assert serve_clients(root, lambda: call_once(service.uri, "echo", "after")) == ["after"]


def test_detach_and_reattach(root, daemon, service, strategy, reported):
    handle = tk_adapter.attach(daemon, root, strategy=strategy)
    assert serve_clients(root, lambda: call_once(service.uri, "echo", 1)) == [1]
    run_mainloop_until(root, lambda: len(daemon.sockets) == 2)  # that client is gone
    handle.detach()
    assert not handle.attached
    assert helper_threads_end(root)
    with socket.create_connection((service.uri.host, service.uri.port), timeout=WAIT_S):
        # the listening socket is now readable, and nothing may watch it
        assert tk_settles(root)
        assert len(daemon.sockets) == 2  # not accepted
    assert adapter_timers(root) == []
    with tk_adapter.attach(daemon, root, strategy=strategy) as again:
        assert again.attached
        assert serve_clients(root, lambda: call_once(service.uri, "echo", 2)) == [2]
    assert helper_threads_end(root)


def test_two_daemons_on_one_root(root, daemon, service, strategy, reported):
    with pyro_loops.Daemon(host="127.0.0.1") as second:
        other_uri = second.register(Service(root), "other")
        with tk_adapter.attach(daemon, root, strategy=strategy), \
                tk_adapter.attach(second, root, strategy=strategy) as second_handle:
            def client(uri):
                with proxy(uri) as p:
                    return [p.echo(str(uri.object) + str(i)) for i in range(50)]

            first_calls, second_calls = serve_clients(root, lambda: client(service.uri), lambda: client(other_uri))
            assert first_calls == [f"service{i}" for i in range(50)]
            assert second_calls == [f"other{i}" for i in range(50)]
            second_handle.detach()
            assert serve_clients(root, lambda: client(service.uri)) == [first_calls]


def test_big_reply_drains_while_another_client_is_served(root, daemon, service, strategy, reported):
    with tk_adapter.attach(daemon, root, strategy=strategy):
        slow = RawClient(service.uri, receive_buffer=64 * 1024)
        try:
            slow.call("big")

            def other_client():
                with proxy(service.uri) as p:
                    return [p.echo(i) for i in range(50)]

            # the slow reader has not read a byte of its reply yet
            assert serve_clients(root, other_client) == [list(range(50))]
            [reply] = serve_clients(root, slow.results)
        finally:
            slow.sock.close()
    assert reply == ["x" * BIG_REPLY]


def test_daemon_close_while_attached_leaves_nothing(root, daemon, service, strategy, reported):
    handle = tk_adapter.attach(daemon, root, strategy=strategy)
    with proxy(service.uri) as p:
        assert serve_clients(root, lambda: p.echo(1)) == [1]
        daemon.close()
        assert not handle.attached
        assert watched(handle) == set()
        assert helper_threads_end(root)
        reused = reuse_descriptors_readably()
        try:
            assert tk_settles(root)
        finally:
            for sock in reused:
                sock.close()
        assert adapter_timers(root) == []
        with pytest.raises(pyro_loops.errors.CommunicationError):
            p.echo(2)
    handle.detach()  # harmless once the daemon let go


def test_destroying_the_root_closes_the_daemon(root, daemon, service, strategy, reported):
    handle = tk_adapter.attach(daemon, root, strategy=strategy)
    user_saw_destroy = []
    root.bind("<Destroy>", lambda e: user_saw_destroy.append(e.widget), add="+")
    with proxy(service.uri) as p:
        assert serve_clients(root, lambda: p.echo(1)) == [1]
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


def test_thread_strategy_waits_for_mainloop_when_pumped_with_update(root, daemon, service, reported):
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
        run_mainloop_until(root, lambda: not client.is_alive())
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


def test_refused_attach_leaves_the_daemons_real_loop_alone(root, daemon, service, strategy, reported):
    handle = tk_adapter.attach(daemon, root, strategy=strategy)
    with pytest.raises(pyro_loops.errors.DaemonError):
        tk_adapter.attach(daemon, root, strategy=strategy)
    assert handle.attached
    assert serve_clients(root, lambda: call_once(service.uri, "echo", 1)) == [1]
    handle.detach()
    assert helper_threads_end(root)
    assert adapter_timers(root) == []


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
