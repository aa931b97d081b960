"""What a red-team pass over the daemon found (issue 10), one test per fix.

Each test replays an attack or an unlucky use over real sockets and pins
what the daemon must do: answer, bound, or log, never lose or hang.
"""

import fcntl
import socket
import termios
import threading

import pytest

from pyro_loops import Daemon, _wire, config, errors, expose, in_worker, naming, oneway
from test_bounds import logs  # noqa: F401 (the fixture: pyro_loops INFO lines captured)
from test_daemon import TIMEOUT, RawClient, Service, proxy_for, serving, wait_for


@expose
class Stopper:
    def stop(self):
        self._pyroDaemon.shutdown()
        return "answered"

    @in_worker
    def stop_from_worker(self):
        self._pyroDaemon.shutdown()
        return "answered"


@pytest.mark.parametrize("servertype, method", [("thread", "stop"), ("multiplex", "stop_from_worker")])
def test_shutdown_called_by_a_call_running_in_a_worker_still_answers_that_call(servertype, method):
    # the usual remote "shutdown" method of Pyro programs; Pyro4's thread server answers it
    config.SERVERTYPE = servertype
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Stopper(), "svc")
    loop = threading.Thread(target=daemon.requestLoop, daemon=True)
    loop.start()
    try:
        with proxy_for(uri) as proxy:
            assert getattr(proxy, method)() == "answered"
        loop.join(TIMEOUT)
        assert not loop.is_alive(), "the daemon did not close after the call"
    finally:
        daemon.close()
        loop.join(TIMEOUT)


def test_clients_that_ask_for_large_replies_and_never_read_them_are_bounded_over_all_connections(logs):
    # each stays under MAX_OUTPUT_BUFFER; together they would make the daemon hold
    # MAX_CONNECTIONS large replies
    limit, size = 8 << 20, 8 << 20
    config.MAX_BUFFERED_OUTPUT = limit
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(Service(), "svc")
    with serving(daemon):
        readers = []
        try:
            for seq in range(4):
                reader = RawClient(uri.port)
                reader.handshake()
                reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                reader.send_call("svc", "big", (size,), seq=seq + 1)
                readers.append(reader)
            wait_for(lambda: len(daemon._conns) < 4)  # one (or more) closed: the others stay under the bound
            closed = 4 - len(daemon._conns)
            with proxy_for(uri) as honest:
                assert honest.echo("still served") == "still served"
            assert daemon._connections.output.total <= limit
        finally:
            for reader in readers:
                reader.close()
    assert logs.text.count(f"MAX_BUFFERED_OUTPUT ({limit} bytes) exceeded by all connections") >= closed


@expose
class Slow:
    def __init__(self):
        self.release = threading.Event()
        self.notes = 0

    @in_worker
    def wait(self):
        self.release.wait(TIMEOUT)
        return "done"

    @oneway
    def note(self, value):
        self.notes += 1


def test_requests_waiting_in_the_socket_when_the_daemon_closes_are_all_counted_in_its_log(logs):
    # more than one recv() of the daemon's, all in its socket, queued behind a running call:
    # none may vanish unlogged
    service, count = Slow(), 800
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(service, "svc")
    with serving(daemon):
        client = RawClient(uri.port)
        client.handshake()
        client.send_call("svc", "wait", seq=1)
        wait_for(lambda: any(conn.busy for conn in daemon._conns.values()))
        for seq in range(count):
            client.send_call("svc", "note", ("x" * 40,), seq=seq + 2, flags=_wire.FLAGS_ONEWAY)
        wait_for(lambda: fcntl.ioctl(client.sock, termios.TIOCOUTQ, b"\0\0\0\0") == b"\0\0\0\0")  # all sent
        daemon.close()
        wait_for(lambda: daemon._closed)
        service.release.set()
        client.close()
    assert f"{count} queued requests of" in logs.text


def test_name_server_registrations_are_bounded_in_number_and_size_with_errors_naming_the_items():
    # anyone who reaches a name server may register: 100k names grew one by 100 MB, five 20 MB names by 210 MB
    config.NS_MAX_ENTRIES, config.NS_MAX_ENTRY_SIZE = 4, 1000
    ns_uri, ns_daemon, _ = naming.startNS(host="127.0.0.1", port=0, enableBroadcast=False)
    uri = "PYRO:thing@127.0.0.1:1234"
    with serving(ns_daemon), proxy_for(ns_uri) as ns:
        for n in range(3):  # the name server's own entry is the fourth
            ns.register(f"name.{n}", uri)
        with pytest.raises(errors.NamingError, match=r"NS_MAX_ENTRIES \(4\)"):
            ns.register("one.too.many", uri)
        ns.register("name.0", uri, metadata={"tag"})  # replacing one is not growing
        with pytest.raises(errors.NamingError, match="NS_MAX_ENTRY_SIZE is 1000"):
            ns.register("name.1", uri, metadata={"m" * 1000})
        with pytest.raises(errors.NamingError, match="NS_MAX_ENTRY_SIZE is 1000"):
            ns.set_metadata("name.1", {"m" * 1000})
        assert ns.count() == 4 and ns.lookup("name.1", return_metadata=True)[1] == []


@expose
class Gated:
    def __init__(self):
        self.gate = threading.Event()
        self.ran = 0
        self.lock = threading.Lock()

    @oneway
    @in_worker
    def store(self, data):
        self.gate.wait(TIMEOUT)
        with self.lock:
            self.ran += 1

    def echo(self, value):
        return value


def test_oneway_worker_jobs_of_many_connections_are_bounded_together_and_all_still_run(logs):
    # each connection stays under MAX_QUEUED_JOBS_PER_CONNECTION; together they queued without end
    # (10 connections x 100 jobs of 60 KB grew a daemon by 114 MB)
    size, per_client, clients = 20_000, 40, 4
    config.MAX_QUEUED_JOB_BYTES = 5 * size
    service = Gated()
    daemon = Daemon(host="127.0.0.1")
    uri = daemon.register(service, "svc")
    with serving(daemon):
        flooders = []
        try:
            for _ in range(clients):
                flooder = RawClient(uri.port)
                flooder.handshake()
                flooders.append(flooder)
                for seq in range(per_client):
                    flooder.send_call("svc", "store", (b"z" * size,), seq=seq + 1, flags=_wire.FLAGS_ONEWAY)
            wait_for(lambda: "MAX_QUEUED_JOB_BYTES" in logs.text)
            with proxy_for(uri) as honest:  # a connection without jobs is read and answered
                assert honest.echo("served") == "served"
            queued = sum(daemon._calls.jobs._pending.values())
            assert queued <= 5 + clients  # the bound, plus at most one job per connection that had none
            service.gate.set()
            wait_for(lambda: service.ran == clients * per_client)  # held back, never dropped
        finally:
            service.gate.set()
            for flooder in flooders:
                flooder.close()
