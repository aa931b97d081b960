"""serpent payloads that carry ``bytes``: base64 in and out at memory speed.

serpent writes a bytes value as the dict ``{'data': '<base64>', 'encoding':
'base64'}``, and Pyro reads it back as bytes. Through serpent's own writer
and a general tokenizer a 10 MB value crawls (some 30 MB/s): the base64 text
is repr()'d, joined, tokenized and copied several times, and one regex match
or one decode over tens of megabytes holds the interpreter lock throughout,
even in a worker thread.

Here the base64 text is found with ``bytes.find`` (memchr speed) and
converted a slice at a time, so the lock goes to other threads between
slices; what lies around the bytes dicts (a call tuple, a few names) is a
small text left to the general readers and writers. Both functions return a
sentinel (``None`` / ``FAIL``) whenever anything is outside what they handle
exactly; the caller then falls back to the full path, which stays the
definition of what a payload means.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from . import _fastserpent
from ._fastserpent import FAIL

# exactly what serpent (and so Pyro4) writes for bytes, bytearray and memoryview
PREFIX = b"{'data': '"
SUFFIX = b"', 'encoding': 'base64'}"
_ENCODING = b"'base64'"
_MAX_DEPTH = 64
#: raw bytes per base64 step (a multiple of 3): about a millisecond of work,
#: after which another thread may take the interpreter lock
STEP = 3 * 256 * 1024
_TEXT_STEP = STEP // 3 * 4
_SCALARS = frozenset((str, int, bool, type(None), float))
_KEYS = frozenset((str, int))
_BYTES = (bytes, bytearray, memoryview)


def dumps(value: Any) -> bytes | None:
    """The serpent payload for ``value``: plain literals (as ``_fastserpent``
    takes them) with bytes, bytearray or memoryview values inside; None if
    it holds anything else (then serpent's own writer is needed)."""
    parts = [_fastserpent.HEADER]
    try:
        if not _write(value, parts, 0):
            return None
    except (ValueError, TypeError):  # a huge int's digits, a memoryview that is no flat buffer
        return None
    return b"".join(parts)


def _write(value: Any, parts: list, depth: int) -> bool:
    kind = type(value)
    if kind in _SCALARS:
        if not _fastserpent._plain(value, depth):  # nan and inf need serpent's own forms
            return False
        parts.append(repr(value).encode("utf-8"))
        return True
    if kind in _BYTES:
        parts.append(PREFIX)
        view = memoryview(value).cast("B")
        for start in range(0, len(view), STEP):
            parts.append(binascii.b2a_base64(view[start:start + STEP], newline=False))
        parts.append(SUFFIX)
        return True
    if depth > _MAX_DEPTH:
        return False
    if kind is tuple or kind is list:
        parts.append(b"(" if kind is tuple else b"[")
        for item in value:
            if not _write(item, parts, depth + 1):
                return False
            parts.append(b",")
        if kind is list or len(value) != 1:
            if value:
                parts.pop()  # the last comma: only a one-item tuple keeps it
        parts.append(b")" if kind is tuple else b"]")
        return True
    if kind is dict:
        parts.append(b"{")
        for key, item in value.items():
            if type(key) not in _KEYS:
                return False
            parts.append(repr(key).encode("utf-8"))
            parts.append(b":")
            if not _write(item, parts, depth + 1):
                return False
            parts.append(b",")
        if value:
            parts.pop()
        parts.append(b"}")
        return True
    return False


def loads(data: bytes | bytearray) -> Any:
    """``(value, may_hold_class_dicts)`` of a serpent payload with bytes dicts, or ``FAIL``.

    Each bytes dict in serpent's exact form is cut out and replaced by a
    numbered stand-in; the small text left is read by ``_fastserpent``, and
    each stand-in found in the value is replaced by its bytes. ``FAIL`` when
    there is no bytes dict, when any base64 text is not strictly valid, when
    the rest is outside the fast reader's subset, or when a stand-in does not
    come back as a dict exactly once (the form appeared inside a string, or
    another base64 dict is present): the full decoder then reads ``data``.
    """
    spans = []
    pieces = []
    pos = 0
    while True:
        start = data.find(PREFIX, pos)
        if start < 0:
            break
        begin = start + len(PREFIX)
        end = data.find(b"'", begin)
        if end < 0 or data[end:end + len(SUFFIX)] != SUFFIX:
            return FAIL
        pieces.append(data[pos:start])
        pieces.append(b"{'data': '#%d', 'encoding': 'base64'}" % len(spans))
        spans.append((begin, end))
        pos = end + len(SUFFIX)
    if not spans or data.find(b"\n", 0, spans[0][0]) < 0:
        return FAIL  # none, or one in the header comment (where its stand-in would be lost)
    pieces.append(data[pos:])
    skeleton = b"".join(pieces)
    if skeleton.count(_ENCODING) != len(spans):
        return FAIL
    value = _fastserpent.loads(skeleton)
    if value is FAIL:
        return FAIL
    blobs: list[Any] = [None] * len(spans)
    try:
        for index, (begin, end) in enumerate(spans):
            blobs[index] = _decode_base64(data, begin, end)
        value = _substitute(value, blobs)
    except (binascii.Error, ValueError, _Mismatch):
        return FAIL
    if any(blob is not _USED for blob in blobs):
        return FAIL
    return value, b"__class__" in skeleton


def _decode_base64(data: bytes | bytearray, begin: int, end: int) -> bytes:
    """``base64.b64decode(data[begin:end], validate=True)``, a step at a time.

    Strictly valid base64 has padding at its end only, so it is valid if and
    only if every step is, with no padding before the last one; then the
    steps' outputs joined are the whole text's.
    """
    chunks = []
    for start in range(begin, end, _TEXT_STEP):
        stop = min(start + _TEXT_STEP, end)
        piece = data[start:stop]
        if stop < end and piece.endswith(b"="):
            raise binascii.Error("padding before the end")
        chunks.append(base64.b64decode(piece, validate=True))
    return b"".join(chunks)


class _Mismatch(Exception):
    pass


_USED = object()


_STAND_IN = PREFIX.decode("ascii")


def _substitute(value: Any, blobs: list) -> Any:
    """``value`` with each stand-in dict replaced by its bytes (each used once).

    A stand-in that was cut from inside a string comes out as text, not as a
    dict; a dict spelled otherwise (other quotes, escapes) could then pass for
    it and take its bytes. So a string holding the form is a mismatch too,
    wherever it is: a value, a key, in a set.
    """
    kind = type(value)
    if kind is str:
        if _STAND_IN in value:
            raise _Mismatch
        return value
    if kind is dict:
        if len(value) == 2 and value.get("encoding") == "base64":
            label = value.get("data")
            if not (type(label) is str and label.startswith("#") and label[1:].isdigit()):
                raise _Mismatch
            index = int(label[1:])
            if index >= len(blobs) or blobs[index] is _USED:
                raise _Mismatch
            blob, blobs[index] = blobs[index], _USED
            return blob
        return {_substitute(key, blobs): _substitute(item, blobs) for key, item in value.items()}
    if kind is list:
        return [_substitute(item, blobs) for item in value]
    if kind is tuple:
        return tuple(_substitute(item, blobs) for item in value)
    if kind is set:
        for item in value:  # no dict in a set: only strings to check
            _substitute(item, blobs)
    return value
