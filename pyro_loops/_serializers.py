"""Payload serializers (serpent, json, marshal, msgpack, pickle) and the
class-to-dict rules that let Pyro4 peers rebuild URIs, proxies and exceptions.

Objects that the serializers cannot write natively go through
``class_to_dict``; dicts with a ``__class__`` key that arrive are rebuilt by
``dict_to_class`` (protocol notes 2.5). Both know nothing about sockets or the
wire: they map Python values to payload bytes and back.
"""

from __future__ import annotations

import array
import base64
import datetime
import decimal
import importlib
import importlib.util
import builtins
import json
import json.decoder
import json.scanner
import marshal
import pickle
import re
import sqlite3
import sys
import uuid
from itertools import accumulate
from typing import Any, Callable

import serpent

from . import _fastcall, _fastserpent, _serpentbytes, _wire, errors
from ._expose import class_name
from ._uri import URI
from .configuration import config

# --- class <-> dict registries ----------------------------------------------

_class_to_dict: dict[type, Callable[[Any], dict]] = {}
_dict_to_class: dict[str, Callable[[str, dict], Any]] = {}


def register_class_to_dict(cls: type, converter: Callable[[Any], dict]) -> None:
    """Serialize instances of ``cls`` (and subclasses) with ``converter(obj) -> dict``."""
    _class_to_dict[cls] = converter


def register_dict_to_class(classname: str, converter: Callable[[str, dict], Any]) -> None:
    """Rebuild dicts whose ``__class__`` is ``classname`` with ``converter(classname, d)``."""
    _dict_to_class[classname] = converter


def unregister_class_to_dict(cls: type) -> None:
    _class_to_dict.pop(cls, None)


def unregister_dict_to_class(classname: str) -> None:
    _dict_to_class.pop(classname, None)


def exception_class_name(exc: BaseException) -> str:
    """The name under which a Pyro4 peer knows this exception's class."""
    cls = type(exc)
    if cls.__module__ == errors.__name__:
        return "Pyro4.errors." + cls.__name__
    return f"{cls.__module__}.{cls.__name__}"


def exception_to_dict(exc: BaseException) -> dict:
    return {"__class__": exception_class_name(exc), "__exception__": True,
            "args": exc.args, "attributes": dict(vars(exc))}


class ExceptionWrapper:
    """Marks the exception that ended a batch (Pyro4's ``futures._ExceptionWrapper``)."""

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception

    def raiseIt(self) -> None:  # noqa: N802 - Pyro4's name
        raise self.exception


def class_to_dict(obj: Any) -> Any:
    """Turn an object the serializer cannot write into something it can."""
    daemon = getattr(obj, "_pyroDaemon", None)
    if daemon is not None and config.AUTOPROXY and getattr(obj, "_pyroId", None):
        proxy_for = getattr(daemon, "proxyFor", None)
        if proxy_for is not None and obj._pyroId in getattr(daemon, "objectsById", ()):
            obj = proxy_for(obj)
    for cls in type(obj).__mro__:
        converter = _class_to_dict.get(cls)
        if converter is not None:
            return converter(obj)
    if isinstance(obj, BaseException):
        return exception_to_dict(obj)
    if isinstance(obj, (set, frozenset)):
        return tuple(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        # only json gets here (the others write bytes themselves); Pyro4 refuses it too
        raise errors.SerializeError("it holds bytes, which json cannot carry; use the serpent or marshal serializer")
    if isinstance(obj, uuid.UUID):
        return str(obj)
    getstate = getattr(type(obj), "__getstate__", None)
    if getstate is not None and getstate is not getattr(object, "__getstate__", None):
        try:
            value = obj.__getstate__()
        except TypeError:  # e.g. a socket or a lock: "cannot pickle" would blame a serializer not in use
            raise errors.SerializeError(f"{class_name(obj)} objects refuse to be copied (their __getstate__ "
                                        "raises TypeError); pass plain data instead, or register a converter "
                                        "with register_class_to_dict") from None
        if isinstance(value, dict):
            value = dict(value)
            value.setdefault("__class__", f"{type(obj).__module__}.{type(obj).__name__}")
            return value
    try:
        value = dict(vars(obj))
    except TypeError:
        slots = getattr(obj, "__slots__", None)
        if slots is None:
            raise errors.SerializeError(f"don't know how to serialize class {type(obj)}; register a converter "
                                        "with register_class_to_dict") from None
        value = {name: getattr(obj, name) for name in slots if hasattr(obj, name)}
    value["__class__"] = f"{type(obj).__module__}.{type(obj).__name__}"
    return value


_register_class_to_dict = register_class_to_dict
_register_class_to_dict(URI, lambda uri: {"__class__": "Pyro4.core.URI", "state": uri.state})
_register_class_to_dict(ExceptionWrapper, lambda w: {"__class__": "Pyro4.futures._ExceptionWrapper",
                                                     "exception": exception_to_dict(w.exception)})


def _make_exception(classname: str, data: dict) -> BaseException:
    short = classname.rpartition(".")[2]
    if classname.startswith("Pyro4.errors.") or classname.startswith("Pyro5.errors."):
        cls = errors.BY_NAME.get(short)
    elif short == classname or classname.startswith(("builtins.", "exceptions.")):
        cls = errors.TimeoutError if short == "TimeoutError" and short == classname else getattr(builtins, short, None)
    elif classname.startswith("sqlite3."):
        cls = getattr(sqlite3, short, None)
    else:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        raise errors.SerializeError("unsupported serialized class: " + classname)
    args = data.get("args") or ()
    try:
        exc = cls(*args)
    except Exception:  # an exception whose constructor wants other args
        exc = cls.__new__(cls)
        exc.args = tuple(args)
    for key, value in (data.get("attributes") or {}).items():
        try:
            setattr(exc, key, value)
        except AttributeError:
            pass
    return exc


def dict_to_class(data: dict) -> Any:
    """Rebuild one dict that has a ``__class__`` key (protocol notes 2.5)."""
    classname = data.get("__class__")
    if not isinstance(classname, str):
        return data
    converter = _dict_to_class.get(classname)
    if converter is not None:
        return converter(classname, data)
    if "__" in classname:
        raise errors.SecurityError(
            "refused to deserialize types with double underscores in their name: " + classname)
    if classname == "Pyro4.core.URI":
        return URI.from_state(data["state"])
    if classname == "Pyro4.futures._ExceptionWrapper":
        inner = data["exception"]
        return ExceptionWrapper(dict_to_class(inner) if isinstance(inner, dict) else inner)
    if classname.startswith("Pyro4.errors.") or data.get("__exception__", False):
        return _make_exception(classname, data)
    if classname == "float" and data.get("value") == "nan":
        return float("nan")
    raise errors.SerializeError("unsupported serialized class: " + classname)


def _rebuild(value: Any) -> Any:
    """Walk a decoded payload, rebuilding class dicts and base64 bytes dicts."""
    kind = type(value)
    if kind is dict:
        if "__class__" in value:
            return dict_to_class({k: _rebuild(v) for k, v in value.items()})
        if len(value) == 2 and value.get("encoding") == "base64" and isinstance(value.get("data"), str):
            try:
                return base64.b64decode(value["data"], validate=True)
            except ValueError:
                return value
        return {k: _rebuild(v) for k, v in value.items()}
    if kind is list:
        return [_rebuild(v) for v in value]
    if kind is tuple:
        return tuple(_rebuild(v) for v in value)
    if kind is set:
        return {_rebuild(v) for v in value}
    return value


# --- serializers ---------------------------------------------------------------


# A bytes object no caller can hold (made at run time, never a shared constant): what
# dumps_call_parts writes in a large argument's place to find where that goes.
_STAND_IN = bytes(range(32, 64))


class Serializer:
    """Turns values and call tuples into payload bytes and back."""

    serializer_id = 0
    name = ""
    #: byte strings whose presence in a payload means it may hold class or bytes dicts
    _markers: tuple[bytes, ...] = (b"__class__", b"base64")

    def dumps(self, obj: Any) -> bytes:
        """``obj`` as payload bytes. A value this serializer cannot write is a
        SerializeError naming the serializer, since another one may take it."""
        return self._named_errors(self._dumps, obj)

    def _named_errors(self, encode: Callable[[Any], bytes], obj: Any) -> bytes:
        try:
            return encode(obj)
        except errors.SerializeError as exc:
            raise errors.SerializeError(f"the {self.name} serializer cannot serialize this value: {exc}") from exc

    def _dumps(self, obj: Any) -> bytes:
        raise NotImplementedError

    def dumps_large(self, obj: Any) -> bytes:
        """``dumps`` for a value whose ``encoding_cost`` exceeds MAX_BLOCKING_ENCODE.

        Meant for a worker thread: the encoder runs as Python bytecode (or
        spends its time in memory-speed copies), so the interpreter lock goes
        to the host loop's thread every few milliseconds, where ``dumps``'
        C encoders would hold it to the end (json's some 55 ms per MB of
        numbers, serpent's ``repr``). Slower than ``dumps`` (json and serpent
        about three times), which is why it is kept for large values. A
        serializer without such an encoder refuses, naming the item.
        """
        return self._named_errors(self._dumps_large, obj)

    def _dumps_large(self, obj: Any) -> bytes:
        raise errors.SerializeError(
            f"the result is larger than MAX_BLOCKING_ENCODE ({config.MAX_BLOCKING_ENCODE} bytes, as estimated) "
            "and this encoder holds the interpreter lock throughout: encoding it would stall the host loop; "
            "raise MAX_BLOCKING_ENCODE to allow it")

    def _loads(self, data: bytes) -> Any:
        raise NotImplementedError

    def loads(self, data: bytes | bytearray) -> Any:
        """The value in ``data``. Whatever is wrong with a payload comes out as
        SerializeError (SecurityError for refused class names), never as the
        decoder's own exception: the daemon turns it into an error reply.

        Nesting: the tokenizer refuses more than 200 open brackets, the parser
        reports stack exhaustion (long unary-operator chains) as MemoryError,
        json stops at its own depth limit (``_JSON_MAX_DEPTH``, the same on
        every Python), ``_rebuild`` hits the recursion limit, marshal stops
        at its own depth limit. Those exceptions
        are translated here, including the ones raised while rebuilding
        ``__class__`` dicts (a URI dict without "state" is a KeyError there, a
        proxy dict with a bad URI string a PyroError).

        A payload larger than MAX_BLOCKING_DECODE is never handed whole to a
        decoder that holds the interpreter lock until it is done (which would
        stall the host loop's thread even while a worker decodes): each
        serializer decodes it step by step or refuses it (``_decode_large``).
        """
        try:
            if len(data) > config.MAX_BLOCKING_DECODE:
                value, rebuild = self._decode_large(data)
            else:
                value, rebuild = self._decode(data)
            if rebuild is None:  # most payloads hold neither marker: skip the walk
                rebuild = any(marker in data for marker in self._markers)
            if rebuild:
                value = _rebuild(value)
        except (errors.SerializeError, errors.SecurityError):
            raise
        except (RecursionError, MemoryError):
            raise errors.SerializeError(f"{self.name} payload is nested too deeply or too large to decode") from None
        except Exception as exc:
            raise errors.SerializeError(f"invalid {self.name} payload: {type(exc).__name__}: {exc}") from exc
        return value

    def _decode(self, data: bytes | bytearray) -> tuple[Any, bool | None]:
        """The decoded value, and whether it may hold class or bytes dicts
        (None: not known, the payload is searched for the markers)."""
        return self._loads(data), None

    def _decode_large(self, data: bytes | bytearray) -> tuple[Any, bool | None]:
        """``_decode`` for a payload larger than MAX_BLOCKING_DECODE: refused
        unless the serializer has a way that lets the interpreter lock go."""
        raise _too_large_to_decode(self.name, len(data), "its decoder holds the interpreter lock throughout")

    def decodes_quickly(self, data: bytes | bytearray) -> bool:
        """True if ``data``, however large, decodes at memory speed (a few
        objects, strings or bytes copied whole), so the loop's thread may
        decode it itself rather than pay for a worker's round trip."""
        return False

    def dumps_call(self, obj: str, method: str, vargs: Any, kwargs: Any) -> bytes:
        return self.dumps((obj, method, vargs, kwargs))

    #: how this serializer writes ``_STAND_IN`` in a call; None: it writes bytes in no
    #: form that holds them as they are (serpent and json write text)
    _stand_in_form: bytes | None = None

    @staticmethod
    def _bytes_header(size: int) -> bytes:
        """What this serializer writes before a ``bytes`` of ``size`` (at least GATHER_SIZE) bytes."""
        raise NotImplementedError

    def dumps_call_parts(self, obj: str, method: str, vargs: Any, kwargs: Any) -> bytes | _wire.Buffers:
        """``dumps_call``, or for a call whose one argument is a large ``bytes`` (and
        no keyword arguments) the same bytes as ``Buffers``: what the serializer
        writes before that object, the caller's object itself (not copied), what
        it writes after it.

        marshal and msgpack write bytes as a header and then the bytes as they
        are. The pieces are found by writing the call with ``_STAND_IN`` in the
        argument's place: all but the header are the same for any argument.
        For marshal that holds because the stand-in is held elsewhere just as
        the argument is (so both get the "remember this object" flag and the
        objects after it are numbered the same); tests/test_bulk_send.py
        checks the bytes against ``dumps_call``. Any other call, or an output
        that does not show the stand-in exactly once: ``dumps_call``.
        """
        form = self._stand_in_form
        if form is None or not (type(vargs) in (tuple, list) and len(vargs) == 1 and not kwargs
                                and type(vargs[0]) is bytes and len(vargs[0]) >= _wire.GATHER_SIZE):
            return self.dumps_call(obj, method, vargs, kwargs)
        framed = self.dumps_call(obj, method, [_STAND_IN], kwargs)
        at = framed.find(form)
        if at < 0 or framed.find(form, at + 1) >= 0:
            return self.dumps_call(obj, method, vargs, kwargs)
        data = vargs[0]
        return _wire.Buffers((framed[:at] + self._bytes_header(len(data)), data, framed[at + len(form):]))

    def loads_call(self, data: bytes) -> tuple[str, str, Any, Any]:
        call = self.loads(data)
        if not isinstance(call, (tuple, list)) or len(call) != 4:
            raise errors.SerializeError("invalid call payload")
        return tuple(call)


# What encoding_cost counts, in bytes of a list of small ints (json's C encoder
# some 25 ms per MB unloaded): an int, bool or None 8 (itself and its comma), a
# float 24 (repr() finds its shortest digits), a container 32 besides its
# items, a string or bytes byte a quarter (copied at memory speed: some 8 ms
# per MB of one long str), an object written through class_to_dict 64 and its
# attributes
_ITEM_COST = 8
_CONTAINER_COST = 32
_OBJECT_COST = 64
_TEXT_COST_DIVISOR = 4
_LEAF_COSTS = {int: _ITEM_COST, bool: _ITEM_COST, type(None): _ITEM_COST, float: 3 * _ITEM_COST,
               complex: 6 * _ITEM_COST}


def encoding_cost(value: Any, limit: int) -> int:
    """What encoding ``value`` costs, in payload bytes at the speed of a list of
    ints, counted only until it exceeds ``limit`` (a result past it is large,
    and then its exact cost does not matter).

    A walk in Python costs time too: it adds each container's length before
    looking inside, so a huge list is found out at once, and small
    containers count extra, since both the walk and the encoders pay for
    each one. A reference cycle ends the walk as well, since every visit adds
    to the count.
    """
    total = 0
    todo = [value]
    leaf_costs = _LEAF_COSTS
    while todo and total <= limit:
        item = todo.pop()
        cost = leaf_costs.get(type(item))
        if cost is not None:
            total += cost
        elif isinstance(item, (str, bytes, bytearray)):
            total += len(item) // _TEXT_COST_DIVISOR + _ITEM_COST
        elif isinstance(item, (list, tuple, set, frozenset, dict)):
            pairs = isinstance(item, dict)
            total += _CONTAINER_COST + len(item) * _ITEM_COST * (2 if pairs else 1)
            if total > limit:
                break
            for sub in (item.values() if pairs else item):
                cost = leaf_costs.get(type(sub))
                if cost is None:
                    todo.append(sub)
                elif cost != _ITEM_COST:
                    total += cost - _ITEM_COST
            if pairs:  # keys: their text counts (most are short strings)
                for key in item:
                    if type(key) is str:
                        total += len(key) // _TEXT_COST_DIVISOR
                    elif type(key) not in leaf_costs:
                        todo.append(key)
        else:  # an object written through class_to_dict: its attributes count
            total += _OBJECT_COST
            attributes = getattr(item, "__dict__", None)
            if type(attributes) is dict:
                todo.append(attributes)
    return total


class _SerpentWriter(serpent.Serializer):
    """serpent, writing Pyro's exception and class dicts, and autoproxies."""

    dispatch = dict(serpent.Serializer.dispatch)

    def _ser_exception(self, exc, out, level):
        self._serialize(exception_to_dict(exc), out, level)

    def _ser_other(self, obj, out, level):
        value = class_to_dict(obj)
        if value is obj:
            raise errors.SerializeError(f"cannot serialize {type(obj)}")
        self._serialize(value, out, level)

    dispatch[BaseException] = _ser_exception
    dispatch[object] = _ser_other
    dispatch[URI] = _ser_other


# Python 3.10 converts the parser's tree to Python objects without a recursion
# check: a left-associative chain some 200,000 deep ("1+1+1...", "x.a.a...",
# "(1,)[0][0]...", a payload of well under a megabyte) crashes the interpreter
# inside ast.literal_eval. 3.11 raises RecursionError instead. serpent writes
# nothing but literals, so on 3.10 the text is checked to be literals only
# before it is parsed: every spelling literal_eval reads (hex, octal and binary
# ints, a sign apart from its number, string prefixes, triple quotes, adjacent
# strings, ...) and nothing that chains (a value must be followed by a
# separator, a closing bracket or the end). Regexes only: linear time.
#
# Comments and strings go first, in one left-to-right scan as Python's tokenizer
# reads them, so a quote inside a comment or a # inside a string is never taken
# for more: a comment (it ends at LF or CR, as a line does) is dropped, a string
# becomes ''. A quote after a letter that is no prefix stays, and is refused.
_SERPENT_STRINGS = re.compile(
    r"""#[^\r\n]*|(?<!\w)(?:[bB][rR]?|[rR][bB]?|[uU])?(?:'''(?:[^'\\]|\\[\s\S]|'(?!''))*'''"""
    r"""|"\"\"(?:[^"\\]|\\[\s\S]|"(?!""))*"\"\"|'(?:[^'\\\r\n]|\\[\s\S])*'|"(?:[^"\\\r\n]|\\[\s\S])*")""")
_SERPENT_NUMBER = (r"(?:0[xX][\da-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+"
                   r"|(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d[\d_]*)?[jJ]?)")
_SERPENT_LITERALS = re.compile(
    rf"(?:\s+|[\[({{,:]|(?:[\])}}]|''(?:\s*'')*|True|False|None|\.\.\."
    rf"|[-+]?\s*{_SERPENT_NUMBER}(?:\s*[-+]\s*{_SERPENT_NUMBER})?)(?=\s*(?:[,:\])}}]|\Z)))*")
_NEEDS_LITERAL_CHECK = sys.version_info < (3, 11)


# what links one operand to the next in an expression: an operator, a keyword
# operator, a subscript or call after a closing bracket. A run of them between two
# separators is one chain, nested as deep as it is long.
_CHAIN_LINKS = re.compile(r"[-+*/%~&|^<>@!=.]|[\])]\s*[\[(]|\b(?:not|and|or|if|else|in|is)\b")
_CHAIN_SEPARATORS = re.compile(r"[,:]")


def _only_literals(text: str) -> bool:
    """True if ``text`` holds nothing but the literals serpent writes (no operators, calls, names)."""
    return _literal_refusal(text) is None


def _literal_refusal(text: str) -> str | None:
    """Why ``text`` is not left to the parser on Python 3.10, or None if it holds
    nothing but literals. A chain deeper than the recursion limit is called
    nested too deeply, as the parser or ``ast.literal_eval`` of 3.11 and later
    call it (MemoryError or RecursionError), so one payload gets one reason on
    every Python; anything else beyond literals is refused as such."""
    stripped = _SERPENT_STRINGS.sub(lambda found: "" if found[0][0] == "#" else "''", text)
    if _SERPENT_LITERALS.match(stripped).end() == len(stripped):
        return None
    depth = max(sum(1 for _ in _CHAIN_LINKS.finditer(part)) for part in _CHAIN_SEPARATORS.split(stripped))
    if depth > sys.getrecursionlimit():
        return f"serpent payload holds more than literals, nested too deeply ({depth} operators in a chain)"
    return "serpent payload holds more than literals"


# serpent's own parser (ast.literal_eval) takes 0.8 s per MB of ints, 3.5 s of complex
# numbers, a hundred times json's C scanner: each byte counts 64 against the budget
_SERPENT_PARSER_WEIGHT = 64
_OUTSIDE_FAST_SUBSET = ("it needs serpent's full parser, which holds the interpreter lock throughout "
                        f"(each byte counted {_SERPENT_PARSER_WEIGHT} times): complex numbers, huge ints, "
                        "deep nesting")


# payloads from this size on are first read as bytes values with literals around
# (``_serpentbytes``): below it the general readers are as quick
_SERPENT_BYTES_SIZE = 4096


class SerpentSerializer(Serializer):
    serializer_id = 1
    name = "serpent"
    _markers = (b"__class__", b"'base64'")

    def _dumps(self, obj: Any) -> bytes:
        fast = _fastserpent.dumps(obj)
        if fast is not None:
            return fast
        return self._dumps_large(obj)

    def _dumps_large(self, obj: Any) -> bytes:
        # values with bytes inside: base64 a slice at a time, the rest as literals
        fast = _serpentbytes.dumps(obj)
        if fast is not None:
            return fast
        # serpent's own writer is Python throughout (about 3 times slower than
        # the repr() fast path, which holds the lock); strings inside are
        # copied at memory speed
        try:
            return _SerpentWriter(module_in_classname=True).serialize(obj)
        except errors.SerializeError:
            raise
        except (TypeError, ValueError, RecursionError) as exc:
            raise errors.SerializeError(str(exc)) from exc

    def _decode(self, data: bytes | bytearray) -> tuple[Any, bool | None]:
        if len(data) >= _SERPENT_BYTES_SIZE:
            found = _serpentbytes.loads(data)
            if found is not _fastserpent.FAIL:
                return found
        return self._loads(data), None

    def _loads(self, data: bytes | bytearray) -> Any:
        value = _fastserpent.loads(data)
        if value is _fastserpent.FAIL:
            if len(data) * _SERPENT_PARSER_WEIGHT > config.MAX_BLOCKING_DECODE:
                raise _too_large_to_decode(self.name, len(data), _OUTSIDE_FAST_SUBSET)
            refusal = _literal_refusal(data.decode("utf-8")) if _NEEDS_LITERAL_CHECK else None
            if refusal is not None:
                raise errors.SerializeError(refusal)
            value = serpent.loads(bytes(data))
        return value

    def _decode_large(self, data: bytes | bytearray) -> tuple[Any, bool | None]:
        # bytes values: their base64 is found and decoded a slice at a time
        found = _serpentbytes.loads(data)
        if found is not _fastserpent.FAIL:
            return found
        # the fast subset is read token by token; serpent's own parser
        # (ast.literal_eval, some 0.8 s per MB of numbers) is one long hold
        value = _fastserpent.loads(data)
        if value is _fastserpent.FAIL:
            raise _too_large_to_decode(self.name, len(data), _OUTSIDE_FAST_SUBSET)
        return value, None

    # Calls with scalar arguments, nearly all of them, by exact template (_fastcall)
    def dumps_call(self, obj: str, method: str, vargs: Any, kwargs: Any) -> bytes:
        payload = _fastcall.serpent_call(obj, method, vargs, kwargs)
        return payload if payload is not None else super().dumps_call(obj, method, vargs, kwargs)

    def loads_call(self, data: bytes) -> tuple[str, str, Any, Any]:
        call = _fastcall.serpent_request(data)
        return call if call is not _fastcall.FAIL else super().loads_call(data)


def _json_default(obj: Any) -> Any:
    """What json writes for a value it has no form for: Pyro4's json serializer writes dates
    and times as ISO text, decimals as text and arrays as lists (after registered converters);
    anything else goes through ``class_to_dict``."""
    for cls in type(obj).__mro__:
        if cls in _class_to_dict:
            return class_to_dict(obj)
    if isinstance(obj, (datetime.datetime, datetime.date)):
        return obj.isoformat()
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, array.array):
        return obj.tounicode() if obj.typecode == "u" else obj.tolist()
    return class_to_dict(obj)

# Levels of arrays and objects json reads and writes, on every Python. Without
# a limit of its own what json takes depends on the interpreter: 3.10 and 3.11
# stop near sys.getrecursionlimit() (less what the caller's stack holds), 3.12+
# at a C stack limit (some 1500 levels read; 3.13 writes 5000). 200 is what
# serpent (Python's tokenizer) and marshal (_MARSHAL_MAX_DEPTH) carry, so a
# value one serializer takes the others take too, and it keeps the step-by-step
# decoder and _rebuild (two frames per level) well inside the recursion limit.
_JSON_MAX_DEPTH = 200
# what the depth check keeps of a document: brackets (objects' as arrays') and quotes
_JSON_KEEP = bytes.maketrans(b"{}", b"[]")
_JSON_DROP = bytes(set(range(256)) - set(b'[]{}"'))
_JSON_RUNS = re.compile(rb"\[+|\]+")
_OPEN = ord("[")
_JSON_LEAF_PASSES = 8  # rounds of dropping innermost pairs before the depth is counted
_JSON_CHECK_BATCH = 4096  # pieces of iterencode's output checked per step


def _json_brackets(data: bytes | bytearray) -> bytes | bytearray:
    """The brackets of ``data`` (JSON cut between tokens) outside its strings, objects' as arrays'.

    Escaped backslashes and quotes go first; then everything but brackets and
    quotes; then the strings: as empty pairs of quotes where they hold no
    bracket (the usual case; dropping adjacent quotes leaves every other
    quote's parity as it was), else every other quote-separated part. Only
    byte-string operations that run at memory speed, none per character in
    Python (UTF-8 puts no ASCII byte inside a multibyte character).
    """
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = data.translate(_JSON_KEEP, _JSON_DROP).replace(b'""', b"")
    if b'"' in kept:
        kept = b"".join(kept.split(b'"')[::2])
    return kept


def _json_deepest(brackets: bytes | bytearray, depth: int) -> int:
    """The deepest level ``brackets`` reach from ``depth``, counted a run of like brackets at a time."""
    runs = _JSON_RUNS.findall(brackets)
    return max(accumulate((len(run) if run[0] == _OPEN else -len(run) for run in runs), initial=depth))


def _check_json_depth(data: bytes | bytearray) -> None:
    """Raise SerializeError if a whole JSON document nests deeper than _JSON_MAX_DEPTH.

    A document with fewer brackets than that is let through at once. Else
    innermost pairs are dropped a few rounds (each round lowers a document's
    depth by one; wide data is gone after a round or two), and what is left
    is counted in runs: linear time, however the brackets are laid out.
    """
    if data.count(b"[") + data.count(b"{") <= _JSON_MAX_DEPTH:
        return
    brackets = _json_brackets(data)
    rounds = 0
    while rounds < _JSON_LEAF_PASSES and brackets:
        brackets = brackets.replace(b"[]", b"")
        rounds += 1
    if len(brackets) // 2 + rounds > _JSON_MAX_DEPTH and _json_deepest(brackets, rounds) > _JSON_MAX_DEPTH:
        raise _json_too_deep()


def _json_depth_at_end(data: bytes, depth: int) -> int:
    """The nesting depth at the end of ``data`` (JSON cut between tokens) that starts at ``depth``;
    raises SerializeError where it goes deeper than _JSON_MAX_DEPTH."""
    brackets = _json_brackets(data)
    opened = brackets.count(b"[")
    if depth + opened > _JSON_MAX_DEPTH and _json_deepest(brackets, depth) > _JSON_MAX_DEPTH:
        raise _json_too_deep()
    return depth + 2 * opened - len(brackets)


def _json_too_deep() -> errors.SerializeError:
    return errors.SerializeError(f"json value nested too deeply: more than {_JSON_MAX_DEPTH} levels of arrays "
                                 "and objects")


class JsonSerializer(Serializer):
    serializer_id = 2
    name = "json"
    _markers = (b"__class__", b'"base64"')

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(ensure_ascii=False, default=_json_default)

    def _dumps(self, obj: Any) -> bytes:
        try:
            data = self._encoder.encode(obj).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise errors.SerializeError(str(exc)) from exc
        _check_json_depth(data)
        return data

    def _dumps_large(self, obj: Any) -> bytes:
        # iterencode without _one_shot walks the value in Python, leaving
        # only each string and number to C (about 3 times slower than encode);
        # its pieces end between tokens, so their depth is checked a batch at a
        # time and no single step holds the interpreter lock for long
        try:
            pieces = list(self._encoder.iterencode(obj))
        except (TypeError, ValueError, RecursionError) as exc:
            raise errors.SerializeError(str(exc)) from exc
        depth = 0
        for start in range(0, len(pieces), _JSON_CHECK_BATCH):
            depth = _json_depth_at_end("".join(pieces[start:start + _JSON_CHECK_BATCH]).encode("utf-8"), depth)
        return "".join(pieces).encode("utf-8")

    def _loads(self, data: bytes | bytearray) -> Any:
        _check_json_depth(data)
        return json.loads(data.decode("utf-8"))

    def _decode_large(self, data: bytes | bytearray) -> tuple[Any, bool | None]:
        # json's C scanner holds the lock for its whole run (some 35 ms per MB of numbers)
        return _stepwise_json_loads(data.decode("utf-8")), None

    def dumps_call(self, obj, method, vargs, kwargs):
        return self.dumps({"object": obj, "method": method, "params": vargs, "kwargs": kwargs})

    def loads_call(self, data):
        call = self.loads(data)
        if not isinstance(call, dict):
            raise errors.SerializeError("invalid call payload")
        try:
            return call["object"], call["method"], call["params"], call["kwargs"]
        except KeyError as exc:
            raise errors.SerializeError(f"invalid call payload: missing {exc}") from None


def _stepwise_json_loads(text: str) -> Any:
    """``json.loads(text)`` that lets the interpreter lock go between values.

    json's C scanner parses a whole document in one call. Here arrays and
    objects are walked by the json module's own Python functions, while
    every string, number and literal inside them is still read by the C
    scanner: each step is short, and the walk runs at about a third of the
    C scanner's speed rather than the tenth of the pure-Python one.
    """
    decoder = json.JSONDecoder()
    scan_scalar = (json.scanner.c_make_scanner or json.scanner.py_make_scanner)(decoder)
    memo: dict = {}
    depth = 0  # arrays and objects open around the value being scanned

    def scan_once(string: str, idx: int) -> Any:
        nonlocal depth
        try:
            nextchar = string[idx]
        except IndexError:
            raise StopIteration(idx) from None
        if nextchar not in "[{":
            return scan_scalar(string, idx)
        if depth == _JSON_MAX_DEPTH:
            raise _json_too_deep()
        depth += 1
        try:
            if nextchar == "[":
                return json.decoder.JSONArray((string, idx + 1), scan_once)
            return json.decoder.JSONObject((string, idx + 1), decoder.strict, scan_once, None, None, memo)
        finally:
            depth -= 1

    decoder.scan_once = scan_once
    return decoder.decode(text)


def _too_large_to_decode(name: str, size: int, why: str) -> errors.SerializeError:
    return errors.SerializeError(
        f"{name} payload of {size} bytes exceeds MAX_BLOCKING_DECODE ({config.MAX_BLOCKING_DECODE} bytes) "
        f"and {why}: decoding it would stall the host loop; raise MAX_BLOCKING_DECODE to accept it")


_MARSHAL_NATIVE = (type(None), bool, int, float, complex, str, bytes)
_MARSHAL_MAX_DEPTH = 200
# a payload of at most this many objects and bytes decodes in a few ms (copies at memory speed)
_MARSHAL_QUICK_OBJECTS = 64
_MARSHAL_QUICK_SIZE = 32 * 1024 * 1024
_MARSHAL_ITEM_WEIGHT = 4  # bytes a container item counts as against MAX_BLOCKING_DECODE (an int takes 5)  # marshal itself refuses deeper values; say so before recursing that far


def _marshalable(value: Any, depth: int = 0) -> Any:
    if depth > _MARSHAL_MAX_DEPTH:
        raise errors.SerializeError("value is nested too deeply")
    kind = type(value)
    if kind in _MARSHAL_NATIVE:
        return value
    if kind in (list, tuple, set, frozenset):
        return kind(_marshalable(v, depth + 1) for v in value)
    if kind is dict:
        return {_marshalable(k, depth + 1): _marshalable(v, depth + 1) for k, v in value.items()}
    return _marshalable(class_to_dict(value), depth + 1)


# marshal type codes (the 0x80 "remember this object" flag masked off), by what follows them
_MARSHAL_FIXED = {ord(c): size for c, size in
                  (("0", 0), ("N", 0), ("F", 0), ("T", 0), ("S", 0), (".", 0),
                   ("i", 4), ("r", 4), ("g", 8), ("y", 16))}
_MARSHAL_TEXT4 = frozenset(b"stuaA")   # 4-byte length, then that many bytes
_MARSHAL_TEXT1 = frozenset(b"zZf")     # 1-byte length, then that many bytes
_MARSHAL_SEQ4 = frozenset(b"([<>")     # 4-byte count, then that many objects
# a tuple or list code followed by a count of 256 or more (or bytes that look like one)
_MARSHAL_REGEX_SIZE = 64 * 1024  # larger payloads are walked without the regex's pre-check
_MARSHAL_BIG_COUNT = re.compile(rb"[(\[\xa8\xdb](?=.[^\x00]|..[^\x00]|...[^\x00])", re.DOTALL)


def _walk_marshal(data: bytes | bytearray, max_steps: int = 0) -> tuple[int, bool]:
    """Refuse marshal data that announces more items than it holds.

    ``marshal.loads`` allocates a tuple or list of the announced size before
    reading any item, and releases it slot by slot when the data runs out:
    the five bytes ``(\\xff\\xff\\xff\\x7f`` keep the loop busy for over a
    minute. Every item takes at least one byte, so the counts of all
    containers together can never exceed the payload's length. Only payloads
    with a possible count of 256 or more are walked (a regex finds them), so
    small calls pay nothing; a walk refuses what it cannot follow, such as
    code objects, which Pyro never sends. Large payloads are always walked:
    the walk steps over a string or bytes object in one move, so its cost is
    the number of objects, where the regex would read every byte.

    Returns the number of container items announced and whether the data
    holds a non-empty dict (only dicts can be class or bytes dicts); for a small
    payload that needed no walk, or one that takes more than ``max_steps``
    objects (if given), ``(-1, True)``: not known.
    """
    if len(data) <= _MARSHAL_REGEX_SIZE and not _MARSHAL_BIG_COUNT.search(data):
        return -1, True
    has_dict = False
    steps = max_steps or -1
    end = len(data)
    pos = announced = 0
    todo = [1]  # objects still to read per open container; -1 for a dict (ended by "0")
    while todo:
        if todo[-1] == 0:
            todo.pop()
            continue
        steps -= 1
        if not steps:
            return -1, True
        if pos >= end:
            raise errors.SerializeError("marshal data too short")
        code = data[pos] & 0x7F
        pos += 1
        if todo[-1] > 0:
            todo[-1] -= 1
        elif code == 0x30:  # "0": the end of a dict
            todo.pop()
            continue
        if code in _MARSHAL_FIXED:
            pos += _MARSHAL_FIXED[code]
        elif code in _MARSHAL_TEXT4:
            pos += 4 + int.from_bytes(data[pos:pos + 4], "little")
        elif code in _MARSHAL_TEXT1:
            pos += 1 + (data[pos] if pos < end else 0)
        elif code == 0x78:  # "x": complex as two 1-byte-length texts
            for _ in range(2):
                pos += 1 + (data[pos] if pos < end else 0)
        elif code == 0x6C:  # "l": long, 4-byte digit count, 2 bytes per digit
            pos += 4 + 2 * abs(int.from_bytes(data[pos:pos + 4], "little", signed=True))
        elif code == 0x29:  # ")": small tuple, 1-byte count
            count = data[pos] if pos < end else 0
            pos += 1
            announced += count
            todo.append(count)
        elif code in _MARSHAL_SEQ4:
            count = int.from_bytes(data[pos:pos + 4], "little", signed=True)
            pos += 4
            if count < 0:
                raise errors.SerializeError("marshal data with a negative item count")
            announced += count
            todo.append(count)
        elif code == 0x7B:  # "{"
            has_dict = has_dict or pos < end and data[pos] & 0x7F != 0x30  # an empty one holds no class
            todo.append(-1)
        else:
            raise errors.SerializeError(f"marshal type {chr(code)!r} is not accepted")
        if announced > end or pos > end:
            raise errors.SerializeError("marshal data announces more than it holds")
    return announced, has_dict


_Walk = Callable[..., "tuple[int, bool]"]


def _few_objects(data: bytes | bytearray, walk: _Walk) -> bool:
    """True if ``data`` holds so few objects that it decodes at memory speed."""
    return len(data) <= _MARSHAL_QUICK_SIZE and walk(data, _MARSHAL_QUICK_OBJECTS)[0] >= 0


def _decode_counted(name: str, data: bytes | bytearray, walk: _Walk, what: str,
                    load: Callable[[Any], Any]) -> tuple[Any, bool | None]:
    """``_decode_large`` of marshal and msgpack: their decoders hold the lock,
    but copy strings and bytes at memory speed, so the cost is the number of
    objects, which ``walk`` counts (and refuses data that announces more than
    it holds)."""
    items, has_dict = walk(data)
    if items * _MARSHAL_ITEM_WEIGHT > config.MAX_BLOCKING_DECODE:
        raise _too_large_to_decode(name, len(data), f"holds {items} {what} "
                                   f"(each counted as {_MARSHAL_ITEM_WEIGHT} bytes)")
    return load(data), None if has_dict else False


class MarshalSerializer(Serializer):
    serializer_id = 3
    name = "marshal"

    def _dumps(self, obj: Any) -> bytes:
        try:
            return marshal.dumps(_marshalable(obj))
        except ValueError as exc:
            raise errors.SerializeError(str(exc)) from exc

    # the walk that makes a value marshalable is Python, marshal.dumps after
    # it a copy at some 10 ms per MB of containers (strings and bytes faster)
    _dumps_large = _dumps

    def _loads(self, data: bytes | bytearray) -> Any:
        return self._decode(data)[0]

    def _decode(self, data: bytes | bytearray) -> tuple[Any, bool | None]:
        _, has_dict = _walk_marshal(data)
        return marshal.loads(data), None if has_dict else False

    def decodes_quickly(self, data: bytes | bytearray) -> bool:
        return _few_objects(data, _walk_marshal)

    def _decode_large(self, data: bytes | bytearray) -> tuple[Any, bool | None]:
        return _decode_counted(self.name, data, _walk_marshal, "container items", marshal.loads)

    def dumps_call(self, obj, method, vargs, kwargs):
        return self.dumps((obj, method, list(vargs), kwargs))

    # marshal writes bytes as "s" (with the reference flag while something else holds
    # the object, as the argument list always does), a 4-byte little-endian length,
    # the bytes themselves
    _stand_in_form = b"\xf3" + len(_STAND_IN).to_bytes(4, "little") + _STAND_IN

    @staticmethod
    def _bytes_header(size: int) -> bytes:
        return b"\xf3" + size.to_bytes(4, "little")


class PickleSerializer(Serializer):
    """Only used when the application puts "pickle" in SERIALIZERS_ACCEPTED."""

    serializer_id = 4
    name = "pickle"
    _markers = ()

    def _dumps(self, obj: Any) -> bytes:
        try:
            return pickle.dumps(obj, config.PICKLE_PROTOCOL_VERSION)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise errors.SerializeError(str(exc)) from exc

    def _loads(self, data: bytes) -> Any:
        return pickle.loads(data)


def _msgpack_layout() -> dict[int, tuple[int, int, int]]:
    """Per lead byte: (bytes of fixed data after it, bytes of a length field
    that follows (of data bytes, or of items for containers), items per
    counted entry: 0 for data, 1 for arrays, 2 for maps)."""
    table: dict[int, tuple[int, int, int]] = {}
    for byte in range(0x100):
        if byte <= 0x7F or byte >= 0xE0 or byte in (0xC0, 0xC2, 0xC3):
            table[byte] = (0, 0, 0)
    for first, width in ((0xC4, 1), (0xC5, 2), (0xC6, 4), (0xD9, 1), (0xDA, 2), (0xDB, 4)):
        table[first] = (0, width, 0)                  # bin and str: a length, then the data
    for first, width in ((0xC7, 1), (0xC8, 2), (0xC9, 4)):
        table[first] = (1, width, 0)                  # ext: a length, a type byte, the data
    for first, size in ((0xCA, 4), (0xCB, 8), (0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8), (0xD0, 1),
                        (0xD1, 2), (0xD2, 4), (0xD3, 8), (0xD4, 2), (0xD5, 3), (0xD6, 5), (0xD7, 9),
                        (0xD8, 17)):
        table[first] = (size, 0, 0)                   # numbers and fixext: fixed sizes
    for first, width, per in ((0xDC, 2, 1), (0xDD, 4, 1), (0xDE, 2, 2), (0xDF, 4, 2)):
        table[first] = (0, width, per)
    return table


_MSGPACK_LAYOUT = _msgpack_layout()


def _walk_msgpack(data: bytes | bytearray, max_steps: int = 0) -> tuple[int, bool]:
    """The number of objects in msgpack ``data``, stepping over str, bin and
    ext data in one move, and whether it holds a non-empty map (only maps can
    be class dicts); ``(-1, True)`` once more than ``max_steps`` objects (if
    given) are seen. SerializeError for data that announces more than it holds.
    """
    layout = _MSGPACK_LAYOUT
    end = len(data)
    pos = objects = 0
    has_map = False
    todo = 1  # objects still to read
    while todo:
        todo -= 1
        objects += 1
        if max_steps and objects > max_steps:
            return -1, True
        if pos >= end:
            raise errors.SerializeError("msgpack data too short")
        first = data[pos]
        pos += 1
        if 0x80 <= first <= 0x9F:  # fixmap, fixarray
            count = (first & 0x0F) * (2 if first < 0x90 else 1)
            has_map = has_map or first < 0x90 and count > 0
            todo += count
            continue
        if 0xA0 <= first <= 0xBF:  # fixstr
            pos += first & 0x1F
            continue
        try:
            fixed, width, per = layout[first]
        except KeyError:
            raise errors.SerializeError(f"msgpack data with the unused lead byte {first:#x}") from None
        length = int.from_bytes(data[pos:pos + width], "big") if width else 0
        pos += width
        if per:
            has_map = has_map or per == 2 and length > 0
            todo += per * length
        else:
            pos += fixed + length
        if pos > end or todo > end - pos:
            raise errors.SerializeError("msgpack data announces more than it holds")
    return objects, has_map


class MsgpackSerializer(Serializer):
    serializer_id = 6
    name = "msgpack"
    _markers = (b"__class__",)

    def __init__(self) -> None:
        import msgpack  # optional: without it this raises ImportError and the serializer is not installed
        self._msgpack = msgpack

    # bin 8 for the stand-in; bin 32 (a 4-byte big-endian length) for a large bytes
    _stand_in_form = b"\xc4" + bytes((len(_STAND_IN),)) + _STAND_IN

    @staticmethod
    def _bytes_header(size: int) -> bytes:
        return b"\xc6" + size.to_bytes(4, "big")

    def _dumps(self, obj: Any) -> bytes:
        try:
            return self._msgpack.packb(obj, use_bin_type=True, default=class_to_dict)
        except (TypeError, ValueError) as exc:
            raise errors.SerializeError(str(exc)) from exc

    def _loads(self, data: bytes | bytearray) -> Any:
        return self._msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False)

    def decodes_quickly(self, data: bytes | bytearray) -> bool:
        return _few_objects(data, _walk_msgpack)

    def _decode_large(self, data: bytes | bytearray) -> tuple[Any, bool | None]:
        return _decode_counted(self.name, data, _walk_msgpack, "objects", self._loads)


_BY_ID: dict[int, Serializer] = {}
_BY_NAME: dict[str, Serializer] = {}


def _install(serializer: Serializer) -> None:
    _BY_ID[serializer.serializer_id] = serializer
    _BY_NAME[serializer.name] = serializer


for _cls in (SerpentSerializer, JsonSerializer, MarshalSerializer, PickleSerializer):
    _install(_cls())
try:
    _install(MsgpackSerializer())
except ImportError:  # msgpack is optional
    pass


# --- dill and cloudpickle: Pyro4's extended picklers, opt-in ------------------------------------------------
# Pickle's format, written by a pickler that also takes functions, lambdas and
# closures. Like pickle, a daemon reads them only when the application puts
# their name in SERIALIZERS_ACCEPTED (reading one runs code the peer chose).
# The package is imported at first use, not with pyro_loops.

class _ExtendedPickleSerializer(Serializer):
    """pickle's wire format through the ``package`` module's ``dumps``/``loads``."""

    package = ""
    protocol_item = ""  #: the config item giving the pickle protocol
    _markers = ()

    def __init__(self) -> None:
        self._module: Any = None

    def _pickler(self) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self.package)
        return self._module

    def _dumps(self, obj: Any) -> bytes:
        try:
            return self._pickler().dumps(obj, getattr(config, self.protocol_item))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise errors.SerializeError(str(exc)) from exc

    def _loads(self, data: bytes) -> Any:
        return self._pickler().loads(data)


class DillSerializer(_ExtendedPickleSerializer):
    serializer_id = 5
    name = package = "dill"
    protocol_item = "DILL_PROTOCOL_VERSION"


class CloudpickleSerializer(_ExtendedPickleSerializer):
    serializer_id = 7
    name = package = "cloudpickle"
    protocol_item = "PICKLE_PROTOCOL_VERSION"


#: serializers whose package is not installed: name and wire id -> the package to install
_MISSING_PACKAGE: dict[int | str, str] = {}
for _cls in (DillSerializer, CloudpickleSerializer):
    if importlib.util.find_spec(_cls.package) is not None:
        _install(_cls())
    else:
        _MISSING_PACKAGE[_cls.name] = _MISSING_PACKAGE[_cls.serializer_id] = _cls.package


def get_serializer(key: int | str) -> Serializer:
    """The serializer with this wire id or name; SerializeError if there is none."""
    table = _BY_ID if isinstance(key, int) else _BY_NAME
    try:
        return table[key]
    except KeyError:
        package = _MISSING_PACKAGE.get(key)
        if package is not None:
            raise errors.SerializeError(f"serializer '{key}' needs the {package} package, which is not installed "
                                        f"(pip install {package})") from None
        raise errors.SerializeError(f"serializer '{key}' is unknown or not available") from None
