"""Ready-made servers for trying pyro_loops out (Pyro4's ``Pyro4.test`` package)."""
