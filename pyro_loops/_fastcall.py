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


# --- the daemon's call lane: one request read whole, one reply sent whole -----------------------
#
# The daemon's common call arrives as one read holding exactly one INVOKE: serpent, flags 0, the
# client's correlation id as the only annotation, a call with scalar arguments. The reply to a
# scalar result is one message with the same correlation id. These functions read and write
# exactly those; anything else is declined and the daemon takes its general path, which gives
# the same result for what is accepted here (tests/test_fast_daemon.py compares them).

_MSG_INVOKE = _wire.MSG_INVOKE
_MSG_RESULT = _wire.MSG_RESULT
# _SCALAR_TEXT without its groups: the arguments after the first one, matched as a whole
_SCALAR_PLAIN = re.sub(rb"\((?!\?)", b"(?:", _SCALAR_TEXT)
# the payload of a call with scalar arguments. Groups: 1 the object and method as written (the
# lane's cache key), 2-6 the first argument as in _SCALAR_TEXT, 7 the arguments after it, each
# with the comma before it. One argument takes its trailing comma ("(x)" is no tuple), more may.
_LANE_REQUEST = re.compile(
    re.escape(_SERPENT_HEADER) + rb"\(('[^'\\\n\r\x00]*', ?'[^'\\\n\r\x00]*'), ?\("
    + rb"(?:(?:" + _SCALAR_TEXT + rb")(?:,|((?:, ?(?:" + _SCALAR_PLAIN + rb"))+),?))?"
    + rb"\), ?\{\}\)\Z")
# one of the arguments after the first, with the comma before it
_NEXT_ARG = re.compile(rb", ?(?:" + _SCALAR_TEXT + rb")")
# what a request starts with: tag, version, INVOKE, no flags; then the rest of the header
_INVOKE_HEAD = _pack_header(_TAG, PROTOCOL_VERSION, _MSG_INVOKE, 0, 0, 0, 0, 0, 0, 0)[:10]
# the rest of it, the payload size unsigned: a negative one (which the frame reader refuses) is
# then larger than SMALL_PAYLOAD
_unpack_invoke_rest = struct.Struct("!HIHHHH").unpack_from
_INVOKE_CHECKSUM = _CHECKSUM_BASE + _MSG_INVOKE + SERPENT_ID
# a reply header with its CORR annotation and the serpent header, packed at once
_LANE_REPLY = struct.Struct(_wire.HEADER.format + f"{len(_CORR_CHUNK)}s16s{_SERPENT_HEADER_SIZE}s")
_LANE_REPLY_CHECKSUM = _CHECKSUM_BASE + _MSG_RESULT + _CORR_LEN + SERPENT_ID
#: the longest str result the lane writes (longer ones cost the general path nothing extra)
LANE_TEXT = 1024
#: what the general path's ``encoding_cost`` counts at most for a lane result (a LANE_TEXT str)
LANE_COST = LANE_TEXT // 4 + 8
_LANE_INT = 10 ** 18  # ints the lane writes are shorter than this: no digit limit is near
_LANE_WORDS = {None: b"None", True: b"True", False: b"False"}


def lane_request(data: bytes, max_message_size: int) -> tuple[int, bytes | None, bytes, tuple] | None:
    """``(seq, correlation id or None, call key, vargs)`` if ``data`` is exactly one small serpent
    INVOKE with flags 0, no annotation but CORR, and scalar arguments only.

    The call key is the object id and method as the request writes them: one key per target.
    Accepted requests are a subset of what ``unframe`` and ``serpent_request`` accept, with the
    same values; None for anything else.
    """
    if not data.startswith(_INVOKE_HEAD) or len(data) < _HEADER_SIZE:
        return None
    seq, data_len, ser_id, ann_len, _reserved, check = _unpack_invoke_rest(data, 10)
    if (ser_id != SERPENT_ID or len(data) != _HEADER_SIZE + ann_len + data_len or data_len > SMALL_PAYLOAD
            or check != (_INVOKE_CHECKSUM + data_len + ann_len + seq) & 0xFFFF
            or max_message_size and data_len + ann_len > max_message_size):
        return None
    if not ann_len:
        corr = None
    elif ann_len == _CORR_LEN and data.startswith(_CORR_CHUNK, _HEADER_SIZE):
        corr = data[_HEADER_SIZE + 6:_HEADER_SIZE + _CORR_LEN]
    else:
        return None
    match = _LANE_REQUEST.match(data, _HEADER_SIZE + ann_len)
    if match is None:
        return None
    key, integer, real, single, double, word, more = match.groups()
    try:
        if integer is not None:
            first: Any = int(integer)
        elif real is not None:
            first = float(real)
        elif word is not None:
            first = _NAMES[word]
        elif single is not None:
            first = single.decode("utf-8")
        elif double is not None:
            first = double.decode("utf-8")
        else:
            return seq, corr, key, ()
        if more is None:
            return seq, corr, key, (first,)
        return seq, corr, key, (first, *map(_value, _NEXT_ARG.finditer(data, match.start(7), match.end(7))))
    except UnicodeDecodeError:
        return None


def lane_names(key: bytes) -> tuple[str, str] | None:
    """The object id and method of a ``lane_request`` call key, None unless both are UTF-8."""
    _, obj, _, method, _ = key.split(b"'")  # neither name holds a quote
    try:
        return obj.decode("utf-8"), method.decode("utf-8")
    except UnicodeDecodeError:
        return None


def lane_reply(seq: int, corr: bytes, value: Any, max_message_size: int) -> bytes | None:
    """The RESULT message for ``value`` (int, float, str, bool or None) answering call ``seq``
    with correlation id ``corr``, exactly as the general path writes it on a connection without
    HMAC key and COMPRESSION off. None for any other value, for a str longer than LANE_TEXT or
    one serpent must space differently, and for a payload beyond ``max_message_size``.
    """
    kind = type(value)
    if kind is int:
        if not -_LANE_INT < value < _LANE_INT:
            return None
        text = b"%d" % value
    elif kind is str:
        if len(value) > LANE_TEXT or ", " in value or ": " in value:
            return None
        text = repr(value).encode("utf-8")
    elif kind is float:
        if value != value or value in (math.inf, -math.inf):
            return None
        text = b"%r" % value  # a float's ascii() is its repr()
    elif kind is bool or value is None:
        text = _LANE_WORDS[value]
    else:
        return None
    data_len = _SERPENT_HEADER_SIZE + len(text)
    if max_message_size and data_len > max_message_size:
        return None
    return _LANE_REPLY.pack(_TAG, PROTOCOL_VERSION, _MSG_RESULT, 0, seq, data_len, SERPENT_ID, _CORR_LEN, 0,
                            (_LANE_REPLY_CHECKSUM + data_len + seq) & 0xFFFF, _CORR_CHUNK, corr,
                            _SERPENT_HEADER) + text


# --- the client's common call, whole messages ----------------------------------------------------
#
# The client's quick calls (``ClientProtocol.quick_invoke``/``quick_result``): an
# INVOKE written from a per-method template in one pass (the blocking Proxy and
# the loop Client), and the RESULT of that call read in one pass from the
# buffer the blocking Proxy receives into. Both decline (None) for anything else.
# Each call pays for these, so they do as few operations as they can: the
# arguments are written one by one (``ascii()`` of a whole tuple costs twice as
# much, most of it in the recursion guard), and a reply is checked with one
# ``unpack_from`` against constants.

#: argument types written as they are: ascii() of them is serpent's text for them
_WORDS = frozenset((int, bool, type(None)))
# after an INVOKE's _INVOKE_HEAD (the lane's, above): sequence number, payload length,
# serializer id, annotations length, reserved (0), checksum (from _INVOKE_CHECKSUM, above)
_invoke_rest = struct.Struct("!HiHH2xH").pack
# how the arguments follow the prefix, by their number: "(a,)", "(a,b)" as serpent compacts them
_ARGUMENTS = tuple(b"%s(" + (b"%a," if count == 1 else b",".join([b"%a"] * count)) + b"),{})"
                   for count in range(9))
# a RESULT with flags 0 and a correlation id (every daemon annotates its replies so), up to the text
# of its serpent payload: header start as above, sequence number, payload length, serializer id and
# annotations length, reserved (ignored on receive), checksum, the CORR chunk's header, its 16
# bytes, the serpent header
_CORR_RESULT = struct.Struct(f"!10sHi4s2xH{len(_CORR_CHUNK)}s16s{_SERPENT_HEADER_SIZE}s")
_RESULT_START = _TAG + struct.pack("!HHH", PROTOCOL_VERSION, _MSG_RESULT, 0)
_RESULT_IDS = struct.pack("!HH", SERPENT_ID, _CORR_LEN)
_RESULT_CHECKSUM = _CHECKSUM_BASE + _MSG_RESULT + _CORR_LEN + SERPENT_ID
_RESULT_TEXT = _CORR_RESULT.size  # where the value's text starts
_VALUE = re.compile(rb"(?:" + _SCALAR_TEXT + rb")\Z")


def call_prefix(obj: str, method: str) -> bytes | None:
    """What every serpent request for ``method`` on ``obj`` starts with, up to its arguments.

    None for names the template cannot write (``serpent_call`` declines them too).
    """
    if type(obj) is not str or type(method) is not str \
            or not _fastserpent._compactable(obj) or not _fastserpent._compactable(method):
        return None
    return _SERPENT_HEADER + _fastserpent.compact(repr((obj, method)))[:-1].encode("utf-8") + b","


def invoke_message(prefix: bytes, vargs: Any, seq: int, correlation: bytes | None,
                   max_message_size: int) -> bytes | None:
    """The whole INVOKE message (no flags, no HMAC key) calling with ``vargs`` and no keywords.

    ``prefix`` is ``call_prefix``'s; ``correlation`` the 16 bytes of a
    correlation id, the message's one annotation, or None for none. The same
    bytes as ``frame(MSG_INVOKE, serpent_call(...), ...)``; None unless
    ``vargs`` is a tuple of at most 8 plain scalars (strings in ASCII) and the
    message is small and within ``max_message_size`` (0: no limit), which the
    general path refuses.
    """
    if type(vargs) is not tuple:  # a list, or a tuple of a class of its own, is written as serpent says
        return None
    for arg in vargs:
        kind = type(arg)
        if kind in _WORDS:
            continue
        if kind is str:
            if ", " in arg or ": " in arg or not arg.isascii():
                return None
        elif kind is not float or arg - arg != 0.0:  # inf or nan: serpent writes those its own way
            return None
    try:
        # ascii() is repr() for these values, written straight as bytes
        payload = _ARGUMENTS[len(vargs)] % ((prefix,) + vargs)
    except IndexError:  # more arguments than templates
        return None
    except ValueError:  # an int beyond sys.get_int_max_str_digits(): the full writer reports it
        return None
    size = len(payload)
    if size > SMALL_PAYLOAD or max_message_size and size + _CORR_LEN > max_message_size:
        return None
    if correlation is None:
        return _INVOKE_HEAD + _invoke_rest(seq, size, SERPENT_ID, 0, (_INVOKE_CHECKSUM + size + seq) & 0xFFFF) \
            + payload
    return _INVOKE_HEAD + _invoke_rest(seq, size, SERPENT_ID, _CORR_LEN,
                                       (_INVOKE_CHECKSUM + _CORR_LEN + size + seq) & 0xFFFF) \
        + _CORR_CHUNK + correlation + payload


def scalar_result(buf: bytes | bytearray, size: int, seq: int,
                  max_message_size: int) -> tuple[Any, dict[str, bytes]] | None:
    """``(value, annotations)`` of ``buf[:size]`` if it is exactly one serpent RESULT for
    ``seq``, without flags, holding one scalar, annotated with a correlation id alone.

    The value and annotations the general path gives for that message (frame
    reader, ``serpent_value``); None for any other bytes.
    """
    if size <= _RESULT_TEXT:
        return None
    start, reply_seq, data_len, ids, check, chunk, corr, header = _CORR_RESULT.unpack_from(buf)
    if (start != _RESULT_START or reply_seq != seq or data_len != size - _HEADER_SIZE - _CORR_LEN
            or ids != _RESULT_IDS or chunk != _CORR_CHUNK or header != _SERPENT_HEADER
            or check != (_RESULT_CHECKSUM + data_len + seq) & 0xFFFF
            or max_message_size and data_len + _CORR_LEN > max_message_size):
        return None
    match = _VALUE.match(buf, _RESULT_TEXT, size)
    if match is None:
        return None
    if match.lastindex == 1:  # the common int, without _value's call
        return int(match[1]), {"CORR": corr}
    try:
        return _value(match), {"CORR": corr}
    except UnicodeDecodeError:
        return None
