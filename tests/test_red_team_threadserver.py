"""A red-team pass over the thread-server default: a daemon with SERVERTYPE unset,
served by ``requestLoop()``, attacked by hostile and odd peers over real sockets.

Each test replays one attack and pins what the daemon must do: answer, bound,
or log (once, naming the config item), never lose a call silently, never hang,
never stall the loop that serves every other client.
"""

import contextlib
import logging
import socket
import struct
import threading

import pytest

from pyro_loops import Daemon, Proxy, _wire, behavior, config, errors, expose, oneway
from pyro_loops._serializers import get_serializer
from test_bounds import logs  # noqa: F401 (the fixture: pyro_loops INFO lines captured)
from test_daemon import TIMEOUT, RawClient, proxy_for, serving, wait_for

SERPENT = get_serializer("serpent")


@expose
class Gate:
    """Calls that wait for the test to open the gate, counted while they run."""

    def __init__(self):
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0  # the most calls that ran at once
        self.ran = 0
        self.notes = []

    def _enter(self):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)

    def _leave(self):
        with self.lock:
            self.running -= 1
            self.ran += 1

    def slow(self, tag):
        self._enter()
        try:
            self.gate.wait(TIMEOUT)
            return tag
        finally:
            self._leave()

    @oneway
    def slow_oneway(self):
        self.slow(None)

    def echo(self, value):
        return value

    def big(self, size):
        return b"x" * size

    def thread_name(self):
        return threading.current_thread().name

    def stop(self):
        self._pyroDaemon.shutdown()
        return "answered"

    @oneway
    def stop_oneway(self):
        self._pyroDaemon.shutdown()

    @oneway
    def note(self, value):
        self.notes.append(value)

    def noted(self):
        return len(self.notes)


def start(service, **settings):
    for name, value in settings.items():
        setattr(config, name, value)
    daemon = Daemon(host="127.0.0.1")
    return daemon, daemon.register(service, "svc")


class Caller(threading.Thread):
    """One blocking Proxy call in a thread of its own; ``outcome`` is its result or exception."""

    def __init__(self, uri, method, *args):
        super().__init__(daemon=True)
        self.uri, self.method, self.args = uri, method, args
        self.outcome = None
        self.start()

    def run(self):
        try:
            with proxy_for(self.uri) as proxy:
                self.outcome = getattr(proxy, self.method)(*self.args)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            self.outcome = exc

    def result(self):
        self.join(TIMEOUT)
        assert not self.is_alive(), f"{self.method}{self.args} got no answer"
        return self.outcome


def reset_on_close(client: RawClient) -> None:
    """Make ``client.close()`` send a reset instead of an orderly end."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def errors_logged(logs):
    return [record for record in logs.records if record.levelno >= logging.ERROR]


# --- more slow calls than workers ------------------------------------------------------------


def test_calls_beyond_threadpool_size_wait_for_a_worker_and_the_full_pool_is_logged(logs):
    service = Gate()
    daemon, uri = start(service, THREADPOOL_SIZE=3, THREADPOOL_SIZE_MIN=1)
    with serving(daemon):
        callers = [Caller(uri, "slow", i) for i in range(6)]
        wait_for(lambda: service.running == 3 and "THREADPOOL_SIZE" in logs.text)
        # the loop itself is free: a new client is admitted, its call waits in line
        with proxy_for(uri) as late:
            late._pyroBind()
            later = Caller(uri, "echo", "late")
            assert daemon._calls.workers.threads == 3
            service.gate.set()
            assert [caller.result() for caller in callers] == list(range(6))
            assert later.result() == "late"
            assert late.echo("still") == "still"
    assert service.most == 3
    assert "all 3 worker threads (THREADPOOL_SIZE) are busy" in logs.text


# --- a client that does not read ------------------------------------------------------------


def test_a_client_that_never_reads_its_large_reply_holds_no_worker(logs):
    size = 16 << 20
    daemon, uri = start(Gate(), THREADPOOL_SIZE=1, THREADPOOL_SIZE_MIN=1)
    with serving(daemon):
        hoarder = RawClient(uri.port)
        hoarder.handshake()
        hoarder.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hoarder.send_call("svc", "big", (size,), seq=1)
        held = wait_for_conn(daemon, lambda conn: len(conn.out) > 0)
        with proxy_for(uri) as other:  # the pool's only worker is free for everyone else
            for i in range(20):
                assert other.echo(i) == i
        assert not held.closed and len(held.out) > 0  # its reply waits for it in the daemon, not in a worker
        hoarder.close()


def test_calls_pipelined_without_reading_are_answered_in_order_and_held_back(logs):
    count, size = 400, 50_000
    daemon, uri = start(Gate())
    with serving(daemon):
        piper = RawClient(uri.port)
        piper.handshake()
        payload = b"y" * size
        frames = b"".join(
            _wire.encode(_wire.Message(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", "echo", (payload,), {}),
                                       SERPENT.serializer_id, 0, seq))
            for seq in range(1, count + 1))
        sender = threading.Thread(target=piper.send, args=(frames,), daemon=True)
        sender.start()  # blocks: the daemon stops reading while the replies pile up
        conn = wait_for_conn(daemon, lambda c: len(c.out) > 0)
        with proxy_for(uri) as other:
            for i in range(10):
                assert other.echo(i) == i
                assert len(conn.out) < 2 * (1 << 20)  # about the high-water mark, not 20 MB
        seqs = []
        for _ in range(count):
            reply = piper.read_message()
            assert reply.type == _wire.MSG_RESULT and not reply.flags & _wire.FLAGS_EXCEPTION
            seqs.append(reply.seq)
        sender.join(TIMEOUT)
        assert seqs == list(range(1, count + 1))
        piper.close()


def wait_for_conn(daemon, predicate):
    found = []
    wait_for(lambda: found.extend(c for c in list(daemon._conns.values()) if predicate(c)) or found)
    return found[0]


def test_oneway_calls_pipelined_on_one_connection_are_held_at_max_queued_jobs(logs):
    limit, count = 8, 60
    service = Gate()
    daemon, uri = start(service, MAX_QUEUED_JOBS_PER_CONNECTION=limit)
    with serving(daemon):
        flooder = RawClient(uri.port)
        flooder.handshake()
        for seq in range(1, count + 1):
            flooder.send_call("svc", "slow_oneway", seq=seq, flags=_wire.FLAGS_ONEWAY)
        wait_for(lambda: service.running == limit)
        with proxy_for(uri) as other:  # read and answered: the flood is held back, not the daemon
            assert other.echo("served") == "served"
        assert service.running == limit and max(daemon._calls.jobs._pending.values()) == limit
        service.gate.set()
        wait_for(lambda: service.ran == count)  # held back, never dropped
        assert flooder.call("svc", "echo", ("after",), seq=count + 1) == (False, "after")
        flooder.close()
    assert f"MAX_QUEUED_JOBS_PER_CONNECTION ({limit})" in logs.text


@pytest.mark.parametrize("threaded", [True, False])
def test_a_oneway_flood_runs_every_call_and_others_are_served_meanwhile(logs, threaded):
    count = 3000
    service = Gate()
    daemon, uri = start(service, ONEWAY_THREADED=threaded)
    frames = b"".join(_wire.encode(_wire.Message(_wire.MSG_INVOKE, SERPENT.dumps_call("svc", "note", (i,), {}),
                                                 SERPENT.serializer_id, _wire.FLAGS_ONEWAY, i + 1))
                      for i in range(count))
    with serving(daemon):
        flooder = RawClient(uri.port)
        flooder.handshake()
        sender = threading.Thread(target=flooder.send, args=(frames,), daemon=True)
        sender.start()
        with proxy_for(uri) as other:
            for i in range(20):
                assert other.echo(i) == i
        sender.join(TIMEOUT)
        noted = flooder.call("svc", "noted", seq=count + 1)
        if not threaded:  # one after another, in the order sent, before the call after them
            assert noted == (False, count) and service.notes == list(range(count))
        wait_for(lambda: len(service.notes) == count)
        flooder.close()
    assert not errors_logged(logs)


# --- clients that leave while their call runs -----------------------------------------------


def lines_about(logs, port):
    return [r.getMessage() for r in logs.records if f"', {port})" in r.getMessage()]


def leave_while_calls_run(daemon, uri, service, reset):
    """Six clients call ``slow`` on a pool of two workers and leave before the gate opens."""
    clients = []
    for _ in range(6):
        client = RawClient(uri.port)
        client.handshake()
        client.send_call("svc", "slow", ("gone",))
        clients.append(client)
    wait_for(lambda: service.running == 2 and all(c.busy for c in list(daemon._conns.values())))
    ports = [client.sock.getsockname()[1] for client in clients]
    for client in clients:
        if reset:
            reset_on_close(client)
        client.close()
    return ports


def test_clients_resetting_while_their_calls_run_or_wait_have_each_reply_logged_once_as_dropped(logs):
    service = Gate()
    daemon, uri = start(service, THREADPOOL_SIZE=2, THREADPOOL_SIZE_MIN=1)
    with serving(daemon):
        ports = leave_while_calls_run(daemon, uri, service, reset=True)
        wait_for(lambda: not daemon._conns)
        service.gate.set()
        wait_for(lambda: service.ran == 2 and logs.text.count("dropped") == 6)
        with proxy_for(uri) as other:  # the workers serve newcomers as before
            assert other.echo("next") == "next"
    for port in ports:
        lines = lines_about(logs, port)
        assert len([line for line in lines if "dropped" in line]) == 1, lines
    assert service.ran == 2  # the calls still waiting for a worker when their clients left never ran
    assert not errors_logged(logs)


def test_clients_closing_while_their_calls_run_or_wait_are_answered_as_if_half_closed_and_logged_once(logs):
    # an orderly close looks like a half-close: every call is run and answered, in case the client reads
    service = Gate()
    daemon, uri = start(service, THREADPOOL_SIZE=2, THREADPOOL_SIZE_MIN=1)
    with serving(daemon):
        ports = leave_while_calls_run(daemon, uri, service, reset=False)
        wait_for(lambda: logs.text.count("while its call was running") == 6)
        service.gate.set()
        wait_for(lambda: service.ran == 6 and not daemon._conns)
        with proxy_for(uri) as other:
            assert other.echo("next") == "next"
    for port in ports:
        assert len(lines_about(logs, port)) == 1, lines_about(logs, port)
    assert not errors_logged(logs)


# --- the daemon ends while calls run ---------------------------------------------------------


def test_shutdown_from_a_call_answers_it_and_other_running_calls_end_with_a_clear_error(logs):
    service = Gate()
    daemon, uri = start(service)
    loop = threading.Thread(target=daemon.requestLoop, daemon=True)
    loop.start()
    try:
        running = Caller(uri, "slow", "late")
        wait_for(lambda: service.running == 1)
        with proxy_for(uri) as proxy:
            assert proxy.stop() == "answered"
        loop.join(TIMEOUT)
        assert not loop.is_alive()
        assert isinstance(running.result(), errors.CommunicationError)
        service.gate.set()
        wait_for(lambda: service.ran == 1)
        wait_for(lambda: "reply for" in logs.text)
    finally:
        service.gate.set()
        daemon.close()
        loop.join(TIMEOUT)
    assert logs.text.count("reply for") == 1 and not errors_logged(logs)


@pytest.mark.parametrize("threaded", [True, False])
def test_shutdown_from_a_oneway_call_ends_the_loop(logs, threaded):
    daemon, uri = start(Gate(), ONEWAY_THREADED=threaded)
    loop = threading.Thread(target=daemon.requestLoop, daemon=True)
    loop.start()
    try:
        with proxy_for(uri) as proxy:
            proxy.stop_oneway()
        loop.join(TIMEOUT)
        assert not loop.is_alive() and daemon._closed
    finally:
        daemon.close()
        loop.join(TIMEOUT)
    assert not errors_logged(logs)


@expose
class LoopStopper:
    def __init__(self):
        self.stopped = threading.Event()
        self.go_on = threading.Event()

    def stop_loop(self):
        self.stopped.set()
        self.go_on.wait(TIMEOUT)  # the loop may end before this call has returned
        return "answered"

    def echo(self, value):
        return value


def test_call_that_ends_request_loop_is_answered_when_the_daemon_closes():
    # Pyro4's programs: requestLoop(lambda: not stopped); daemon.close()
    service = LoopStopper()
    daemon, uri = start(service)
    loop = threading.Thread(target=daemon.requestLoop, args=(lambda: not service.stopped.is_set(),),
                            daemon=True)
    loop.start()
    stopper = Caller(uri, "stop_loop")
    service.stopped.wait(TIMEOUT)
    with proxy_for(uri) as other, contextlib.suppress(errors.CommunicationError):
        other._pyroTimeout = 0.5
        other.echo("wake")  # wakes the loop, which sees the condition false and ends
    loop.join(TIMEOUT)
    assert not loop.is_alive()
    service.go_on.set()
    wait_for(lambda: daemon._calls.loop_jobs)  # the reply is made; no loop runs to send it
    daemon.close()
    assert stopper.result() == "answered"


def test_call_running_when_request_loop_ends_is_answered_by_the_next_request_loop():
    service = Gate()
    daemon, uri = start(service)
    serving_now = threading.Event()
    serving_now.set()
    loop = threading.Thread(target=daemon.requestLoop, args=(serving_now.is_set,), daemon=True)
    loop.start()
    running = Caller(uri, "slow", "kept")
    wait_for(lambda: service.running == 1)
    serving_now.clear()
    with proxy_for(uri) as other, contextlib.suppress(errors.CommunicationError):
        other._pyroTimeout = 0.5
        other.echo("wake")  # wakes the loop, which ends (this call may stay unanswered)
    loop.join(TIMEOUT)
    assert not loop.is_alive()
    service.gate.set()
    serving_now.set()
    with serving(daemon):
        assert running.result() == "kept"


# --- a call into its own daemon --------------------------------------------------------------


@expose
class Nested:
    def __init__(self):
        self.inner_uri = None

    def outer(self):
        with Proxy(self.inner_uri) as inner:
            inner._pyroTimeout = TIMEOUT
            return inner.ping()

    def outer_together(self):
        self.together.wait()  # both workers are busy before either calls in
        return self.outer()

    def ping(self):
        return "pong"


@pytest.mark.parametrize("size", [2, 40])
def test_a_call_into_its_own_daemon_from_a_worker_is_answered_when_a_worker_is_free(size):
    service = Nested()
    daemon, uri = start(service, THREADPOOL_SIZE=size, THREADPOOL_SIZE_MIN=1)
    service.inner_uri = uri
    with serving(daemon), proxy_for(uri) as proxy:
        assert proxy.outer() == "pong"


def test_a_call_into_its_own_daemon_from_its_only_worker_fails_clearly():
    service = Nested()
    daemon, uri = start(service, THREADPOOL_SIZE=1, THREADPOOL_SIZE_MIN=1)
    service.inner_uri = uri
    with serving(daemon), proxy_for(uri) as proxy:
        with pytest.raises(errors.PyroError, match=r"its own daemon would deadlock: all THREADPOOL_SIZE \(1\)"):
            proxy.outer()
        assert proxy.ping() == "pong"  # the worker is free again


def test_when_every_worker_would_wait_on_its_own_daemon_the_last_call_fails_clearly_and_the_rest_complete():
    service = Nested()
    service.together = threading.Barrier(2, timeout=TIMEOUT)
    daemon, uri = start(service, THREADPOOL_SIZE=2, THREADPOOL_SIZE_MIN=1)
    service.inner_uri = uri
    with serving(daemon):
        callers = [Caller(uri, "outer_together") for _ in range(2)]
        outcomes = [caller.result() for caller in callers]
    assert sorted(map(type, outcomes), key=lambda t: t.__name__) == [errors.PyroError, str]
    assert "pong" in outcomes


# --- odd pool sizes --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -1])
def test_a_threadpool_size_below_one_is_refused_naming_the_item(size):
    config.THREADPOOL_SIZE = size
    with pytest.raises(ValueError, match="THREADPOOL_SIZE"):
        Daemon(host="127.0.0.1").close()


def test_a_huge_threadpool_size_starts_threads_only_as_calls_need_them():
    service = Gate()
    daemon, uri = start(service, THREADPOOL_SIZE=10**9, THREADPOOL_SIZE_MIN=1, THREADPOOL_IDLE_TIMEOUT=60.0)
    with serving(daemon):
        callers = [Caller(uri, "slow", i) for i in range(5)]
        wait_for(lambda: service.running == 5)
        service.gate.set()
        assert [caller.result() for caller in callers] == list(range(5))
        assert daemon._calls.workers.threads == 5


@pytest.mark.parametrize("settings, reason", [
    ({"THREADPOOL_SIZE_MIN": 0}, "THREADPOOL_SIZE_MIN must be a whole number of at least 1, not 0"),
    ({"THREADPOOL_SIZE_MIN": -1}, "THREADPOOL_SIZE_MIN must be a whole number of at least 1, not -1"),
    ({"THREADPOOL_SIZE_MIN": 2.5}, "THREADPOOL_SIZE_MIN must be a whole number"),
    ({"THREADPOOL_SIZE": 3}, r"THREADPOOL_SIZE_MIN \(4\) must not be above THREADPOOL_SIZE \(3\)"),
    ({"THREADPOOL_SIZE": 1, "THREADPOOL_SIZE_MIN": 50}, r"THREADPOOL_SIZE_MIN \(50\) must not be above"),
    ({"THREADPOOL_IDLE_TIMEOUT": -1.0}, "THREADPOOL_IDLE_TIMEOUT must be a number of seconds, 0 or more"),
    ({"THREADPOOL_IDLE_TIMEOUT": float("nan")}, "THREADPOOL_IDLE_TIMEOUT must be a number of seconds"),
])
def test_a_threadpool_minimum_under_one_or_above_the_size_is_refused_naming_the_item(settings, reason):
    # Pyro4's thread server refuses both when it is made ("threadpool sizes must be
    # greater than zero", "minimum threadpool size must be less than or equal to max size")
    for name, value in settings.items():
        setattr(config, name, value)
    with pytest.raises(ValueError, match=reason):
        Daemon(host="127.0.0.1").close()


def pool_threads(daemon):
    pool = daemon._calls.workers
    with pool._lock:
        return [worker.thread for worker in pool._workers]


def test_idle_workers_above_the_minimum_end_and_the_pool_grows_again_under_load():
    service = Gate()
    daemon, uri = start(service, THREADPOOL_SIZE=6, THREADPOOL_SIZE_MIN=2, THREADPOOL_IDLE_TIMEOUT=0.2)
    with serving(daemon):
        for round_ in range(2):  # grows, shrinks to the minimum, grows again
            service.gate.clear()
            callers = [Caller(uri, "slow", i) for i in range(5)]
            wait_for(lambda: service.running == 5)
            grown = pool_threads(daemon)
            assert len(grown) == 5
            service.gate.set()
            assert [caller.result() for caller in callers] == list(range(5))
            wait_for(lambda: len(pool_threads(daemon)) == 2)
            kept = pool_threads(daemon)
            for thread in set(grown) - set(kept):
                thread.join(TIMEOUT)
                assert not thread.is_alive()
            # the minimum stays through many more idle spells, and still answers
            for thread in kept:
                thread.join(1.0)
                assert thread.is_alive()
            assert pool_threads(daemon) == kept
            with proxy_for(uri) as proxy:
                assert proxy.thread_name() in {thread.name for thread in kept}


def test_workers_that_end_as_soon_as_idle_lose_no_call():
    # THREADPOOL_IDLE_TIMEOUT 0 is Pyro4's rule: a worker above the minimum ends the
    # moment it is idle, racing every job handed out at that moment
    service = Gate()
    service.gate.set()
    daemon, uri = start(service, THREADPOOL_SIZE=4, THREADPOOL_SIZE_MIN=1, THREADPOOL_IDLE_TIMEOUT=0)
    results = {}

    def calls(n):
        with proxy_for(uri) as proxy:
            results[n] = [proxy.echo((n, i)) for i in range(150)]

    with serving(daemon):
        threads = [threading.Thread(target=calls, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == {n: [(n, i) for i in range(150)] for n in range(6)}
        wait_for(lambda: len(pool_threads(daemon)) == 1)


# --- instances made per call or per session --------------------------------------------------


def made_class(mode):
    """A class the daemon instantiates (``mode``); ``__init__`` waits at a gate or fails when told."""

    @expose
    @behavior(instance_mode=mode)
    class Made:
        entered = threading.Event()
        gate = threading.Event()
        fail = False
        made = 0

        def __init__(self):
            type(self).entered.set()
            type(self).gate.wait(TIMEOUT)
            if type(self).fail:
                raise RuntimeError("no instance today")
            type(self).made += 1

        def thread_name(self):
            return threading.current_thread().name

    return Made


@pytest.fixture(params=["percall", "session", "single"])
def made(request):
    cls = made_class(request.param)
    yield cls
    cls.gate.set()


def test_a_slow_init_of_a_made_instance_runs_in_a_worker_and_holds_up_no_one(made):
    daemon, uri = start(Gate())
    made_uri = daemon.register(made, "made")
    with serving(daemon):
        waiting = Caller(made_uri, "thread_name")
        assert made.entered.wait(TIMEOUT)
        with proxy_for(uri) as other:
            assert other.echo("not held up") == "not held up"
            assert made.made == 0  # answered while the __init__ still waited
        made.gate.set()
        assert waiting.result().startswith("pyro_loops-worker")


def test_an_init_that_raises_answers_the_call_with_its_error_and_the_next_call_tries_again(made):
    made.gate.set()
    made.fail = True
    daemon, _ = start(Gate())
    made_uri = daemon.register(made, "made")
    with serving(daemon), proxy_for(made_uri) as proxy:
        with pytest.raises(RuntimeError, match="no instance today"):
            proxy.thread_name()
        made.fail = False
        assert proxy.thread_name().startswith("pyro_loops-worker")
        assert made.made == 1


def test_an_init_may_call_a_class_of_its_own_daemon_made_on_demand(made):
    made.gate.set()
    daemon, _ = start(Gate())
    made_uri = daemon.register(made, "made")

    @expose
    @behavior(instance_mode="session")
    class Caller_:
        def __init__(self):
            with Proxy(made_uri) as inner:  # another class of this daemon, made on demand as well
                inner._pyroTimeout = TIMEOUT
                self.inner_thread = inner.thread_name()

        def inner(self):
            return self.inner_thread

    uri = daemon.register(Caller_, "caller")
    with serving(daemon), proxy_for(uri) as proxy:
        assert proxy.inner().startswith("pyro_loops-worker")


def test_a_session_instance_is_made_once_when_a_oneway_call_and_the_next_call_need_it_at_once():
    cls = made_class("session")
    daemon, _ = start(Gate())
    uri = daemon.register(cls, "made")
    with serving(daemon), proxy_for(uri) as proxy:
        proxy._pyroBind()
        proxy._pyroOneway.add("thread_name")
        proxy.thread_name()  # oneway: its worker starts making the session's instance
        assert cls.entered.wait(TIMEOUT)
        proxy._pyroOneway.discard("thread_name")
        second = threading.Thread(target=proxy.thread_name, daemon=True)
        second.start()  # needs the same instance, in another worker
        wait_for(lambda: daemon._calls.workers.threads == 2)
        cls.gate.set()
        second.join(TIMEOUT)
        assert not second.is_alive()
    assert cls.made == 1


def test_a_job_whose_last_worker_serves_another_connection_waits_and_runs_once():
    from pyro_loops._workers import WorkerPool

    class Conn:  # an affinity (weakly referenced, as connections are)
        pass

    pool, first, other = WorkerPool(1), Conn(), Conn()
    ran, gate, done = [], threading.Event(), threading.Event()
    pool.submit(lambda: ran.append("first"), affinity=first)
    wait_for(lambda: ran == ["first"] and pool._idle)
    pool.submit(lambda: gate.wait(TIMEOUT), affinity=other)  # the same (only) worker, now busy
    pool.submit(lambda: (ran.append("again"), done.set()), affinity=first)
    gate.set()
    assert done.wait(TIMEOUT)
    pool.submit(lambda: ran.append("last"))
    wait_for(lambda: "last" in ran)
    assert ran == ["first", "again", "last"]
    pool.close()
