"""What a red-team pass over the daemon found (issue 10), one test per fix.

Each test replays an attack or an unlucky use over real sockets and pins
what the daemon must do: answer, bound, or log, never lose or hang.
"""

import threading

import pytest

from pyro_loops import Daemon, config, expose, in_worker
from test_daemon import TIMEOUT, proxy_for


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
