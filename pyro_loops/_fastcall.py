"""The common case of a call, framed and coded without the general machinery.

Nearly every message on an established connection has the same shape: no
HMAC key, no annotations besides the daemon's correlation id, uncompressed,
serpent, a few scalar arguments and a scalar result. For that shape the
general path (``_wire.FrameReader`` gathering bytes, the ``Message`` and
``Serializer.loads`` layers, the recursive ``_fastserpent`` reader) costs
several times what the work itself does. The blocking ``Proxy``, the loop
``Client`` and the daemon all reach these functions through ``_protocol``.

Every function here either gives exactly what the general path gives for
the same input (value, bytes, or message) or declines (None, ``FAIL``), and
the caller takes the general path; they never report errors themselves, so
every fault is still described by the full code. tests/test_fastcall.py
checks that agreement on generated payloads and on the fuzz seeds.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any

from . import _fastserpent, _wire, errors
from .constants import PROTOCOL_VERSION

FAIL = _fastserpent.FAIL
SERPENT_ID = 1

#: payloads up to this size are read here; larger ones go to the general
#: readers, which know how to share the interpreter lock with the host loop
SMALL_PAYLOAD = 16 * 1024

_pack_header = _wire.HEADER.pack
_unpack_header = _wire.HEADER.unpack_from
_pack_length = struct.Struct("!H").pack
_HEADER_SIZE = _wire.HEADER_SIZE
_TAG = _wire.TAG
# the checksum's constant part: version and magic (protocol notes 1.2)
_CHECKSUM_BASE = PROTOCOL_VERSION + 0x34E9
_SERPENT_HEADER = _fastserpent.HEADER
_SERPENT_HEADER_SIZE = len(_SERPENT_HEADER)
_SCALARS = frozenset((str, int, bool, type(None)))
_CORR_CHUNK = b"CORR\x00\x10"  # a correlation id: 16 bytes
_CORR_LEN = len(_CORR_CHUNK) + 16


# --- framing ----------------------------------------------------------------------------------

def frame(msg_type: int, payload: bytes | bytearray, serializer_id: int, flags: int, seq: int,
          annotations: bytes = b"") -> bytes:
    """``_wire.encode`` of a message, for a connection without HMAC key.

    ``annotations`` is the annotation block as ``annotation_block`` makes it.
    """
    size = len(payload)
    ann_len = len(annotations)
    return b"".join((_pack_header(_TAG, PROTOCOL_VERSION, msg_type, flags, seq, size, serializer_id, ann_len, 0,
                                  (_CHECKSUM_BASE + msg_type + size + ann_len + serializer_id + flags + seq)
                                  & 0xFFFF),
                     annotations, payload))


def annotation_block(annotations: dict[str, bytes]) -> bytes | None:
    """The annotation chunks of ``annotations`` as ``_wire.encode`` writes them.

    None if any is not a 4-character ASCII id with a bytes value, or they
    are too long together: ``_wire.encode`` says what is wrong.
    """
    block = b""
    for name, value in annotations.items():
        if type(name) is not str or len(name) != 4 or not name.isascii() or type(value) is not bytes \
                or len(value) > 0xFFFF:
            return None
        block += name.encode("ascii") + _pack_length(len(value)) + value
    return block if len(block) <= 0xFFFF else None


def unframe(data: bytes, max_message_size: int) -> _wire.Message | None:
    """``data`` as a message, if it is exactly one small, complete, well-formed message.

    None for anything else (part of a message, more than one, a large or
    broken one): then ``data`` goes to the frame reader, which assembles
    it or reports what is wrong. What this returns equals what the frame
    reader would have returned for the same bytes.
    """
    if len(data) < _HEADER_SIZE:
        return None
    tag, version, msg_type, flags, seq, data_len, ser_id, ann_len, _reserved, check = _unpack_header(data)
    start = _HEADER_SIZE + ann_len
    if (tag != _TAG or version != PROTOCOL_VERSION or len(data) != start + data_len
            or data_len > SMALL_PAYLOAD or data_len < 0
            or check != (_CHECKSUM_BASE + msg_type + data_len + ann_len + ser_id + flags + seq) & 0xFFFF
            or max_message_size and data_len + ann_len > max_message_size):
        return None
    annotations: dict[str, bytes] = {}
    if ann_len == _CORR_LEN and data.startswith(_CORR_CHUNK, _HEADER_SIZE):
        annotations = {"CORR": data[_HEADER_SIZE + 6:start]}  # what every daemon reply carries
    elif ann_len:
        try:
            annotations = _wire._parse_annotations(data[_HEADER_SIZE:start])
        except errors.ProtocolError:
            return None
    return _wire.Message(msg_type, data[start:], ser_id, flags, seq, annotations)


# --- serpent: calls with scalar arguments, scalar values ---------------------------------------

def _scalar(value: Any) -> bool:
    kind = type(value)
    return kind in _SCALARS or kind is float and math.isfinite(value)


def serpent_call(obj: str, method: str, vargs: Any, kwargs: Any) -> bytes | None:
    """The serpent request payload for a call with scalar positional arguments and no keywords.

    The same bytes as ``SerpentSerializer.dumps_call``; None for any other call.
    """
    if type(vargs) is not tuple or type(kwargs) is not dict or kwargs or type(obj) is not str \
            or type(method) is not str:
        return None
    for arg in vargs:
        if type(arg) not in _SCALARS and not _scalar(arg) or type(arg) is str and not _fastserpent._compactable(arg):
            return None
    if not _fastserpent._compactable(obj) or not _fastserpent._compactable(method):
        return None
    try:
        return _SERPENT_HEADER + _fastserpent.compact(repr((obj, method, vargs, kwargs))).encode("utf-8")
    except ValueError:  # an int beyond sys.get_int_max_str_digits(): the full writer reports it
        return None


# One scalar as both serpent and repr() write it. Groups: 1 int, 2 float,
# 3 single-quoted string, 4 double-quoted string, 5 name. Strings without
# escapes only, and without a raw CR: Python's tokenizer reads a lone CR as a
# line end, so serpent refuses such a string. Ints short enough that no digit
# limit applies.
_SCALAR_TEXT = (rb"(-?(?:0|[1-9][0-9]{0,17}))(?![0-9.eE])"
                rb"|(-?[0-9]+\.[0-9]+(?:e[-+]?[0-9]+)?|-?[0-9]+e[-+]?[0-9]+)"
                rb"|'([^'\\\n\r\x00]*)'|\"([^\"\\\n\r\x00]*)\"|(None|True|False)")
_SCALAR = re.compile(rb"(?:" + _SCALAR_TEXT + rb")\Z")
# an argument and what follows it: a comma (and a space unless the tuple ends), or the tuple's end
_ARG = re.compile(rb"(?:" + _SCALAR_TEXT + rb")(?:,(?: (?=[^)]))?|(?=\)))")
_CALL = re.compile(rb"\('([^'\\\n\r\x00]*)', ?'([^'\\\n\r\x00]*)', ?\(")
_CALL_END = b"), {})", b"),{})"
_NAMES = {b"None": None, b"True": True, b"False": False}


def _value(match: re.Match) -> Any:
    """The scalar a ``_SCALAR_TEXT`` match stands for; UnicodeDecodeError for a string that is not UTF-8."""
    group = match.lastindex
    if group == 1:
        return int(match.group(1))
    if group == 2:
        return float(match.group(2))
    if group == 5:
        return _NAMES[match.group(5)]
    return match.group(group).decode("utf-8")


def serpent_value(payload: bytes | bytearray) -> Any:
    """The value of a serpent payload holding one scalar (int, float, str, None, True, False).

    The same value as ``SerpentSerializer.loads``; ``FAIL`` for any other payload.
    """
    if len(payload) > SMALL_PAYLOAD or not payload.startswith(_SERPENT_HEADER):
        return FAIL
    match = _SCALAR.match(payload, _SERPENT_HEADER_SIZE)
    if match is None:
        return FAIL
    try:
        return _value(match)
    except UnicodeDecodeError:
        return FAIL


def serpent_request(payload: bytes | bytearray) -> tuple[str, str, tuple, dict] | Any:
    """``(object id, method, vargs, kwargs)`` of a serpent request with scalar arguments, no keywords.

    The same tuple as ``SerpentSerializer.loads_call``; ``FAIL`` for any other payload.
    """
    if len(payload) > SMALL_PAYLOAD or not payload.startswith(_SERPENT_HEADER):
        return FAIL
    call = _CALL.match(payload, _SERPENT_HEADER_SIZE)
    if call is None or not payload.endswith(_CALL_END):
        return FAIL
    end = len(payload) - 5 if payload[-4] == 44 else len(payload) - 6  # 44: ","
    pos = call.end()
    vargs = []
    trailing = False
    try:
        while pos < end:
            match = _ARG.match(payload, pos)
            if match is None:
                return FAIL
            vargs.append(_value(match))
            pos = match.end()
            trailing = payload[pos - 1] in b", "  # no argument ends in either: a separator was taken
        if pos != end or len(vargs) == 1 and not trailing:
            return FAIL  # "(x)" is x, not a tuple: the general reader says what that means
        return call.group(1).decode("utf-8"), call.group(2).decode("utf-8"), tuple(vargs), {}
    except UnicodeDecodeError:
        return FAIL
