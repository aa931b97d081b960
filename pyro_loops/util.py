"""Helpers Pyro4 users know from ``Pyro4.util``: remote tracebacks and the
serializer class registries."""

from __future__ import annotations

import sys
import traceback
import zlib
from typing import Any, Callable

from . import _serializers, _wire
from ._expose import get_exposed_members, is_private_attribute, reset_metadata_cache


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


def reset_exposed_members(obj: Any = None, only_exposed: bool = True, as_lists: bool = False) -> None:
    """Forget the cached exposure metadata (of every class: the cache is per class, not per object)."""
    reset_metadata_cache()


class PyroSerializer:
    """One of our serializers with the method names Pyro4 code calls on ``util.get_serializer(...)``.

    ``serializeData``/``serializeCall`` return ``(payload, compressed)`` and
    compress by Pyro4's rule (only a large payload, only if it shrinks);
    ``deserializeData``/``deserializeCall`` take the flag back.
    """

    def __init__(self, serializer: _serializers.Serializer) -> None:
        self._serializer = serializer
        self.serializer_id: int = serializer.serializer_id
        self.name: str = serializer.name

    def dumps(self, data: Any) -> bytes:
        return self._serializer.dumps(data)

    def loads(self, data: bytes) -> Any:
        return self._serializer.loads(data)

    def dumpsCall(self, obj: str, method: str, vargs: Any, kwargs: Any) -> bytes:  # noqa: N802
        return self._serializer.dumps_call(obj, method, vargs, kwargs)

    def loadsCall(self, data: bytes) -> tuple[str, str, Any, Any]:  # noqa: N802
        return self._serializer.loads_call(data)

    def serializeData(self, data: Any, compress: bool = False) -> tuple[bytes, bool]:  # noqa: N802
        return self._maybe_compress(self.dumps(data), compress)

    def serializeCall(self, obj: str, method: str, vargs: Any, kwargs: Any,  # noqa: N802
                      compress: bool = False) -> tuple[bytes, bool]:
        return self._maybe_compress(self.dumpsCall(obj, method, vargs, kwargs), compress)

    def deserializeData(self, data: bytes, compressed: bool = False) -> Any:  # noqa: N802
        return self.loads(zlib.decompress(data) if compressed else data)

    def deserializeCall(self, data: bytes, compressed: bool = False) -> tuple[str, str, Any, Any]:  # noqa: N802
        return self.loadsCall(zlib.decompress(data) if compressed else data)

    @staticmethod
    def _maybe_compress(data: bytes, compress: bool) -> tuple[bytes, bool]:
        if not compress:
            return data, False
        packed, flags = _wire.compress_if_useful(data, 0)
        return packed, bool(flags & _wire.FLAGS_COMPRESSED)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PyroSerializer) and other.serializer_id == self.serializer_id

    def __hash__(self) -> int:
        return hash(self.serializer_id)


def get_serializer(name: str) -> PyroSerializer:  # noqa: N802 - Pyro4's name
    """The serializer called ``name`` ("serpent", "json", "marshal", "pickle"...).

    Raises SerializeError if there is no such serializer or it is not installed.
    """
    return PyroSerializer(_serializers.get_serializer(name))


def get_serializer_by_id(sid: int) -> PyroSerializer:
    """The serializer with wire id ``sid``; SerializeError if there is none."""
    return PyroSerializer(_serializers.get_serializer(sid))
