"""Helpers Pyro4 users know from ``Pyro4.util``: remote tracebacks and the
serializer class registries."""

from __future__ import annotations

import sys
import traceback
from typing import Any, Callable

from . import _serializers


def getPyroTraceback(exc: BaseException | None = None) -> list[str]:  # noqa: N802 - Pyro4's name
    """The lines of the local traceback plus, for a remote exception, the remote one.

    Without an argument it uses the exception being handled (``sys.exc_info()``).
    """
    if exc is None:
        exc = sys.exc_info()[1]
        if exc is None:
            return []
    local = traceback.format_exception(type(exc), exc, exc.__traceback__)
    remote = getattr(exc, "_pyroTraceback", None)
    if not remote:
        return local
    return local + ["\n +--- This exception occured remotely (Pyro) - Remote traceback:\n"] + \
        [f" | {line}" for text in remote for line in text.splitlines(keepends=True)] + \
        [" +--- End of remote traceback\n"]


def formatTraceback(exc_type=None, exc_value=None, tb=None, detailed: bool = False) -> list[str]:  # noqa: N802
    if exc_type is None:
        exc_type, exc_value, tb = sys.exc_info()
    return traceback.format_exception(exc_type, exc_value, tb)


def excepthook(exc_type, exc_value, tb) -> None:
    """A ``sys.excepthook`` that also prints the remote traceback of Pyro calls."""
    sys.stderr.write("".join(getPyroTraceback(exc_value)))


class SerializerBase:
    """Pyro4's spelling of the class <-> dict registries."""

    register_class_to_dict: Callable[[type, Callable[[Any], dict]], None] = \
        staticmethod(_serializers.register_class_to_dict)
    register_dict_to_class: Callable[[str, Callable[[str, dict], Any]], None] = \
        staticmethod(_serializers.register_dict_to_class)
    unregister_class_to_dict = staticmethod(_serializers.unregister_class_to_dict)
    unregister_dict_to_class = staticmethod(_serializers.unregister_dict_to_class)
