"""Adapters that host a pyro_loops daemon in someone else's event loop.

Each submodule offers ``attach(daemon, <host loop>) -> handle`` where the
handle has ``detach()`` and works as a context manager. They are built on the
watcher interface of ``pyro_loops.hosting``; the core never imports them.
"""
