"""Names and numbers that both ends of a Pyro connection must agree on."""

VERSION = "0.1.0"
#: Wire protocol version spoken by Pyro4 4.38 up to 4.82 (and by us).
PROTOCOL_VERSION = 48
DAEMON_NAME = "Pyro.Daemon"
NAMESERVER_NAME = "Pyro.NameServer"
FLAME_NAME = "Pyro.Flame"
