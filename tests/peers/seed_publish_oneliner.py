"""Seed chapter, "Oneliner Pyro object publishing": serveSimple without a name server."""

import pyro_loops as Pyro4


class MyPyroThing(object):
    pass


Pyro4.Daemon.serveSimple(
    {
        MyPyroThing(): None
    },
    ns=False, verbose=True)
