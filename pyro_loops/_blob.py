"""``SerializedBlob``: call arguments that stay serialized while they pass through.

A dispatcher or gateway that forwards data it does not understand need not
decode it (nor have its classes). A proxy call whose only argument is a
``SerializedBlob`` is sent with the KEEPSERIALIZED flag and a ``BLBI``
annotation (marshal of ``(info, object id, method)``), so the daemon learns
the target without decoding the payload; the method receives a blob holding
the message, and passing that blob on forwards the payload bytes unchanged.
Only ``deserialized()`` decodes them. This is Pyro4's wire format for blobs.
"""

from __future__ import annotations

import marshal
from typing import Any

from . import _wire, errors
from ._serializers import Serializer, get_serializer
from .configuration import config


class SerializedBlob:
    """``info``: a small marshallable description (a topic, an id); ``data``: the payload.

    ``is_blob`` (for the daemon) says ``data`` is a received message, still serialized.
    """

    def __init__(self, info: Any, data: Any, is_blob: bool = False) -> None:
        self.info = info
        self._data = data
        self._contains_blob = is_blob

    def deserialized(self) -> Any:
        """The data, decoded now if it arrived serialized."""
        if not self._contains_blob:
            return self._data
        msg: _wire.Message = self._data
        _, _, data, _ = get_serializer(msg.serializer_id).loads_call(msg.payload(config.MAX_MESSAGE_SIZE))
        return data


def blob_request(serializer: Serializer, object_id: str, method: str, vargs: Any,
                 kwargs: Any) -> tuple[bytes, int, dict[str, bytes]] | None:
    """For a call whose first argument is a blob: its payload, flags and BLBI annotation; else None."""
    if not vargs or not isinstance(vargs[0], SerializedBlob):
        return None
    if len(vargs) > 1 or kwargs:
        raise errors.SerializeError("if SerializedBlob is used, it must be the only argument")
    blob = vargs[0]
    annotations = {"BLBI": marshal.dumps((blob.info, object_id, method))}
    flags = _wire.FLAGS_KEEPSERIALIZED
    if blob._contains_blob:  # forwarded as it came
        msg: _wire.Message = blob._data
        return bytes(msg.data), flags | msg.flags & _wire.FLAGS_COMPRESSED, annotations
    return serializer.dumps_call(object_id, method, blob._data, kwargs), flags, annotations


def blob_call(msg: _wire.Message) -> tuple[str, str, tuple, dict]:
    """The call a KEEPSERIALIZED message makes: its method gets the message as a blob."""
    try:
        info, object_id, method = marshal.loads(msg.annotations["BLBI"])
    except (KeyError, ValueError, EOFError, TypeError) as exc:
        raise errors.ProtocolError(f"KEEPSERIALIZED message without a valid BLBI annotation: {exc}") from None
    return object_id, method, (SerializedBlob(info, msg, is_blob=True),), {}
