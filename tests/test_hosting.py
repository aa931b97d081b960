"""The public hosting contract (pyro_loops.hosting) is the one the library keeps.

Behaviour of each side is tested where it lives (test_daemon, the adapter
tests); here every hosted object and every watcher the core ships is held
against the two protocols, method by method and parameter by parameter, so the
documented contract cannot drift from the code.
"""

import inspect

import pytest

from pyro_loops import Daemon, hosting
from pyro_loops._eventloop import _Hosted
from pyro_loops.adapters.asyncio import AsyncioHandle
from pyro_loops.naming import BroadcastServer


def contract(protocol: type) -> dict[str, list[str]]:
    """Method name -> parameter names (without self) of a hosting protocol."""
    return {name: list(inspect.signature(member).parameters)[1:]
            for name, member in vars(protocol).items() if inspect.isfunction(member) and not name.startswith("_")}


def test_the_protocols_hold_the_documented_methods():
    assert contract(hosting.Watcher) == {"add": ["sock", "events"], "modify": ["sock", "events"],
                                         "remove": ["sock"], "set_deadline": ["when"], "detached": []}
    assert contract(hosting.Hosted) == {"attach_watcher": ["watcher"], "detach_watcher": [],
                                        "handle_event": ["sock", "events"], "handle_deadline": []}


@pytest.mark.parametrize("protocol, cls", [
    (hosting.Hosted, Daemon),
    (hosting.Hosted, BroadcastServer),
    (hosting.Watcher, _Hosted),
    (hosting.Watcher, AsyncioHandle),
], ids=["Daemon", "BroadcastServer", "SelectLoop watcher", "asyncio watcher"])
def test_each_hosted_object_and_watcher_keeps_its_side_of_the_contract(protocol, cls):
    for name, parameters in contract(protocol).items():
        assert list(inspect.signature(getattr(cls, name)).parameters)[1:] == parameters, name


def test_a_daemon_is_a_hosted_object_at_run_time():
    with Daemon(host="127.0.0.1") as daemon:
        assert isinstance(daemon, hosting.Hosted) and not isinstance(daemon, hosting.Watcher)
