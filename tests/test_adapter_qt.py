"""The Qt adapter serving real clients from a real (offscreen) QApplication.

What Qt adds to the adapter contract (``test_adapter_contract.py``): notifiers
made afresh for reused descriptors, and nested loops (a modal dialog) meeting
the notifier that fired them. Clients run in threads while the test pumps the
Qt event loop (``qt_host`` from ``_hosts.py``). Notifier checks look at the
real Qt objects the adapter created, found under its owner object in the
application tree.

The binding is pytest-qt's (PyQt5 by default); ``-o qt_api=pyside6`` or
``pyqt6`` runs the same tests against those bindings.
"""

from __future__ import annotations

import threading
import time

import pytest
qt_api = pytest.importorskip("pytestqt.qt_compat", reason="needs pytest-qt and a Qt binding").qt_api

import pyro_loops
from pyro_loops.adapters import qt as qt_adapter

from _adapter_support import WAIT_S, BaseService, RawClient, call_once, in_threads, proxy, pyro4_send_requests
from _hosts import qt_host  # noqa: F401

QCoreApplication = qt_api.QtCore.QCoreApplication
QEvent = qt_api.QtCore.QEvent
QEventLoop = qt_api.QtCore.QEventLoop
QObject = qt_api.QtCore.QObject
QSocketNotifier = qt_api.QtCore.QSocketNotifier
QTimer = qt_api.QtCore.QTimer

OWNER_NAME = "pyro_loops.adapters.qt"
READ_TYPE = QSocketNotifier.Type.Read


@pyro_loops.expose
class Service(BaseService):
    def __init__(self) -> None:
        super().__init__()
        self.nested_loop = None
        self.nested_loop_started = threading.Event()

    def in_main_thread(self):
        return threading.current_thread() is threading.main_thread()

    @pyro_loops.in_worker
    def echo_in_worker(self, value):
        return value

    def run_nested_loop_after_upload(self, payload):
        """A large request (decoded by a worker) whose call then opens a nested loop."""
        return self.run_nested_loop()

    def run_nested_loop(self):
        """Like a modal dialog: a nested Qt loop until quit_nested_loop() is called."""
        self.nested_loop = QEventLoop()
        self.nested_loop_started.set()
        self.nested_loop.exec()
        self.nested_loop = None
        return "nested loop ended"

    def in_nested_loop(self):
        return self.nested_loop is not None and self.nested_loop.isRunning()

    def quit_nested_loop(self):
        self.nested_loop.quit()

    def watched_for_reading(self):
        """How many sockets have an enabled read notifier now (asked from the GUI thread)."""
        return len(read_fds(QCoreApplication.instance()))


def owners(app) -> list[QObject]:
    return app.findChildren(QObject, OWNER_NAME)


def notifiers(app, kind=None) -> list[QSocketNotifier]:
    """The enabled notifiers of every attached Qt adapter."""
    return [n for owner in owners(app) for n in owner.findChildren(QSocketNotifier)
            if n.isEnabled() and (kind is None or n.type() == kind)]


def read_fds(app) -> list[int]:
    return sorted(int(n.socket()) for n in notifiers(app, READ_TYPE))


def daemon_fds(daemon) -> list[int]:
    return sorted(s.fileno() for s in daemon.sockets)


def leftovers(app) -> list[QObject]:
    """What the adapters left in the application once pending deletions ran."""
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    return owners(app)


@pytest.fixture
def daemon(qapp):
    with pyro_loops.Daemon(host="127.0.0.1", port=0) as d:
        yield d
    assert leftovers(qapp) == []


@pytest.fixture
def service() -> Service:
    return Service()


@pytest.fixture
def uri(qapp, daemon, service):
    """The URI of ``service`` in ``daemon``, attached to the application."""
    uri = daemon.register(service)
    with qt_adapter.attach(daemon, qapp):
        yield uri


def test_reused_descriptors_get_one_fresh_notifier_each_time(qt_host, qapp, daemon, uri):
    idle = daemon_fds(daemon)
    connection_fds = []
    for round_no in range(8):
        connected, release = threading.Event(), threading.Event()

        def client():
            with proxy(uri) as p:
                p.echo(round_no)
                connected.set()
                release.wait(WAIT_S)

        threads, _, failures = in_threads(client)
        qt_host.run_until(connected.is_set)
        assert read_fds(qapp) == daemon_fds(daemon)  # exactly one enabled notifier per socket
        connection_fds += set(daemon_fds(daemon)) - set(idle)
        release.set()
        qt_host.run_until(lambda: not threads[0].is_alive())
        assert not failures
        qt_host.run_until(lambda: daemon_fds(daemon) == idle)
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        assert len([n for owner in owners(qapp) for n in owner.findChildren(QSocketNotifier)]) == len(idle)
    assert len(set(connection_fds)) < len(connection_fds)  # the kernel did hand out the same fds again


def test_request_arriving_during_its_connections_nested_loop_call_waits_unwatched(qt_host, uri, service):
    # Inside the nested loop the busy connection's socket becomes readable: its
    # notifier fires there once, must not re-enter the daemon, and is disabled
    # (a level-triggered notifier left on would spin the nested loop) until the
    # call returns; then the waiting request is answered, in order.
    raw = RawClient(uri)

    def clients():
        raw.call("run_nested_loop")
        assert service.nested_loop_started.wait(WAIT_S)
        with proxy(uri) as p:
            watched = p.watched_for_reading()  # the listener, raw's connection and this one
            raw.call("in_nested_loop")
            deadline = time.monotonic() + WAIT_S
            while p.watched_for_reading() != watched - 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            unwatched = p.watched_for_reading() == watched - 1
            p.quit_nested_loop()
        return unwatched, raw.results()

    [(unwatched, results)] = qt_host.serve(clients)
    assert unwatched, "the busy connection's read notifier stayed enabled during the nested loop"
    assert results == ["nested loop ended", False]


def worker_result_during_nested_loop(qt_host, uri, service, *requests) -> object:
    """Pipeline ``requests`` on one Pyro4 connection (one of them opens a nested loop),
    and meanwhile call a worker method from another client: what that client got."""
    # Both clients start before the test pumps Qt: the nested loop will run inside that pumping.
    def other_client():
        assert service.nested_loop_started.wait(WAIT_S)
        with proxy(uri) as p:
            p._pyroTimeout = 1.0
            try:
                answer = p.echo_in_worker(2)
            except pyro_loops.errors.TimeoutError:
                answer = "no worker result during the nested loop"
        call_once(uri, "quit_nested_loop")
        return answer

    pipelined, answer = qt_host.serve(lambda: pyro4_send_requests(uri, *requests), other_client)
    pipelined._pyroRelease()
    return answer


def test_nested_loop_started_after_a_worker_call_still_gets_worker_results(qt_host, uri, service):
    # One connection pipelines a worker call and a nested-loop call: the second is
    # dispatched when the worker's result comes back through the daemon's wakeup socket.
    assert worker_result_during_nested_loop(
        qt_host, uri, service, ("echo_in_worker", (1,)), ("run_nested_loop", ())) == 2


def test_nested_loop_in_a_large_request_still_gets_worker_results(qt_host, uri, service):
    # A request of 64 KiB or more is decoded by a worker and handed back through the
    # daemon's wakeup socket; the nested loop its call starts must not leave that socket
    # unwatched, or no worker result would come back until the loop ends.
    assert worker_result_during_nested_loop(
        qt_host, uri, service, ("run_nested_loop_after_upload", (list(range(30000)),))) == 2


def test_application_quit_closes_the_daemon(qapp):
    daemon = pyro_loops.Daemon(host="127.0.0.1", port=0)
    sockets = list(daemon.sockets)
    handle = qt_adapter.attach(daemon, qapp)
    QTimer.singleShot(0, qapp.quit)
    qapp.exec()
    assert not handle.attached
    assert [s.fileno() for s in sockets] == [-1] * len(sockets)
    assert leftovers(qapp) == []


