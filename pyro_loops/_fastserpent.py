"""A fast path for the serpent payloads that almost every call consists of.

serpent writes Python literals and reads them with ``ast.literal_eval``; both
are pure-Python walks that dominate the cost of a small call. Most payloads
are plain tuples, lists and dicts of str, int, float, bool and None. For those
``repr()`` without its spaces after separators is exactly the literal serpent
would write (so message sizes, and MAX_MESSAGE_SIZE refusals, match Pyro4's),
and a small tokenizer reads them back several times faster than ``literal_eval``.

Both functions return ``None`` when a value or text is outside that subset,
and the caller falls back to serpent itself. They never guess: a token they
do not know ends the fast path.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

HEADER = b"# serpent utf-8 python3.2\n"
_MAX_DEPTH = 64
_MAX_TEXT = 64 * 1024 * 1024
_STEPWISE_TEXT = 64 * 1024  # from this size on, tokens are found one at a time

_SCALARS = frozenset((str, int, bool, type(None)))
_OTHER_SCALARS = frozenset((int, bool, type(None)))  # scalars whose repr() holds no ", " or ": "
_KEYS = frozenset((str, int))


def _compactable(text: str) -> bool:
    """True if ``repr(text)`` holds no ", " or ": ", so removing those spaces from a
    container's repr() leaves exactly serpent's separators (serpent writes none)."""
    return ", " not in text and ": " not in text


def compact(literal: str) -> str:
    """``repr()`` of plain values (strings passed by ``_compactable``) as serpent spaces it."""
    return literal.replace(", ", ",").replace(": ", ":")


def _plain(value: Any, depth: int) -> bool:
    kind = type(value)
    if kind is str:
        return _compactable(value)
    if kind in _SCALARS:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth > _MAX_DEPTH:
        return False
    if kind is tuple or kind is list:
        for item in value:  # a loop, not all(): this runs for every call's arguments
            if type(item) not in _OTHER_SCALARS and not _plain(item, depth + 1):
                return False
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) not in _KEYS or type(key) is str and not _compactable(key) \
                    or type(item) not in _OTHER_SCALARS and not _plain(item, depth + 1):
                return False
        return True
    return False


def dumps(value: Any) -> bytes | None:
    """The serpent payload for ``value``, or None if it needs serpent's full rules."""
    if not _plain(value, 0):
        return None
    try:
        return HEADER + compact(repr(value)).encode("utf-8")
    except ValueError:  # e.g. an int beyond sys.get_int_max_str_digits()
        return None


# One C-level pass splits the text into tokens; the catch-all turns any
# character outside the subset into a token the parser rejects. It takes every
# character but the three separators Python and this reader both skip (not
# "\S": findall() would step over a Unicode space such as U+00A0 or U+2028,
# which Python refuses). A string holds no raw CR: Python's tokenizer reads a
# lone CR as a line end. Every search must succeed where it starts, or the
# regex engine retries at each later position, each retry scanning on to the
# end (quadratic in one call that holds the interpreter lock): so a string's
# closing quote is optional (an unterminated one is a token the parser
# rejects), and trailing separators are cut off before tokenizing.
_TOKENS = re.compile(r"""[ \t\n]*('[^'\\\n\r]*(?:\\.[^'\\\n\r]*)*'?|"[^"\\\n\r]*(?:\\.[^"\\\n\r]*)*"?|-?[0-9][0-9.eE+\-]*|[()\[\]{},:]|True|False|None|[^ \t\n])""")
_NAMES = {"True": True, "False": False, "None": None}
FAIL = object()


class _GiveUp(Exception):
    pass


def loads(data: bytes) -> Any:
    """The value of a serpent payload, or ``FAIL`` if it is outside the fast subset."""
    if len(data) > _MAX_TEXT or not data.startswith(b"#"):
        return FAIL
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return FAIL
    start = text.find("\n")
    if start < 0 or "\x00" in text or text.find("\r", 0, start) >= 0:
        return FAIL  # a CR ends the header comment for Python: what follows it is code
    if text.find("\n ", start) >= 0 or text.find("\n\t", start) >= 0:
        # An indented line is an IndentationError to Python's parser in some places
        # ("0\n ", "\n 0") and fine in others ("[1,\n 2]"); the full parser decides.
        return FAIL
    end = len(text.rstrip(" \t\n"))  # a copy only if there is anything to cut (serpent writes nothing there)
    if len(text) > _STEPWISE_TEXT:
        # One findall() over megabytes holds the interpreter lock until it is
        # done, even in a worker thread; token by token, the loop's thread gets
        # its turn every few milliseconds.
        tokens: Any = (match.group(1) for match in _TOKENS.finditer(text, start + 1, end))
    else:
        tokens = iter(_TOKENS.findall(text, start + 1, end))
    try:
        value = _value(next(tokens), tokens, 0)
    except (_GiveUp, StopIteration, ValueError, TypeError, SyntaxError):
        return FAIL
    for _ in tokens:
        return FAIL  # something after the value
    return value


def _value(token: str, tokens: Any, depth: int) -> Any:
    first = token[0]
    if first == "'" or first == '"':
        if len(token) < 2 or token[-1] != first:
            raise _GiveUp  # a string that does not end (one ending in an escaped quote: literal_eval refuses it)
        return token[1:-1] if "\\" not in token else ast.literal_eval(token)
    if first in "-0123456789":
        if "." in token or "e" in token or "E" in token:
            return float(token)
        digits = token.lstrip("-")
        if len(digits) > 4000 or len(digits) > 1 and digits[0] == "0":
            raise _GiveUp  # digit limits and "01" (a syntax error) are the full parser's to report
        return int(token)
    if depth > _MAX_DEPTH:
        raise _GiveUp
    if token == "(":
        items, trailing = _sequence(tokens, ")", depth)
        if len(items) == 1 and not trailing:
            return items[0]  # "(x)" is x, as in Python
        return tuple(items)
    if token == "[":
        return _sequence(tokens, "]", depth)[0]
    if token == "{":
        return _braces(tokens, depth)
    if token in _NAMES:
        return _NAMES[token]
    raise _GiveUp


def _sequence(tokens: Any, close: str, depth: int) -> tuple[list, bool]:
    items: list = []
    trailing = False
    token = next(tokens)
    while token != close:
        items.append(_value(token, tokens, depth + 1))
        token = next(tokens)
        if token == ",":
            trailing = True
            token = next(tokens)
        elif token == close:
            trailing = False
        else:
            raise _GiveUp
    return items, trailing


def _braces(tokens: Any, depth: int) -> Any:
    token = next(tokens)
    if token == "}":
        return {}
    first = _value(token, tokens, depth + 1)
    token = next(tokens)
    if token == ":":
        result = {}
        key = first
        while True:
            result[key] = _value(next(tokens), tokens, depth + 1)
            token = next(tokens)
            if token == "}":
                return result
            if token != ",":
                raise _GiveUp
            token = next(tokens)
            if token == "}":
                return result
            key = _value(token, tokens, depth + 1)
            if next(tokens) != ":":
                raise _GiveUp
    items = [first]
    while token != "}":
        if token != ",":
            raise _GiveUp
        token = next(tokens)
        if token == "}":
            break
        items.append(_value(token, tokens, depth + 1))
        token = next(tokens)
    return set(items)
