"""The Pyro4 exception hierarchy.

The class names matter on the wire: our errors travel as ``Pyro4.errors.<Name>``
so that a stock Pyro4 client rebuilds them as its own classes, and a
``Pyro4.errors.<Name>`` arriving here becomes the class of the same name below.
"""

import builtins


class PyroError(Exception):
    """Generic base of all Pyro errors."""


class CommunicationError(PyroError):
    """Base for the errors related to network communication problems."""


class ConnectionClosedError(CommunicationError):
    """The connection was unexpectedly closed."""


class TimeoutError(CommunicationError, builtins.TimeoutError):  # noqa: A001 - Pyro4's name
    """An operation did not complete within the configured timeout."""


class ProtocolError(CommunicationError):
    """A message broke the wire protocol."""


class MessageTooLargeError(ProtocolError):
    """A message was larger than ``MAX_MESSAGE_SIZE`` allows."""


class NamingError(PyroError):
    """A problem with the name server or a name lookup."""


class DaemonError(PyroError):
    """The daemon could not do what was asked (unknown object, and so on)."""


class SecurityError(PyroError):
    """A security check failed: HMAC, a refused class name, a refused serializer."""


class SerializeError(ProtocolError):
    """A value could not be serialized or deserialized."""


#: Every error above, by class name, for rebuilding them from the wire.
BY_NAME = {cls.__name__: cls for cls in (
    PyroError, CommunicationError, ConnectionClosedError, TimeoutError, ProtocolError,
    MessageTooLargeError, NamingError, DaemonError, SecurityError, SerializeError)}
