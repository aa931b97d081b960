"""Seed chapter, "Pyro Daemon: publishing Pyro objects": the most basic server.

Python 3 transcription of the seed's code with ``import pyro_loops as Pyro4``.
"""

import pyro_loops as Pyro4


class MyPyroThing(object):
    pass


thing = MyPyroThing()
daemon = Pyro4.Daemon()
uri = daemon.register(thing)
print(uri)
daemon.requestLoop()
