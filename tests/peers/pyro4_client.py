"""A stock Pyro4 4.82 client, driven by a test one command at a time.

Each stdin line is JSON ``{"code": <python source>, "vars": {name: value}}``. The
code runs with ``Pyro4`` and the vars in one namespace that lives as long as the
process, so a proxy made by one command can be used (or reconnected) by the next.
Pyro4's config is reset (env vars applied again) before each command, so one test's
settings never leak into the next. Each command gets one JSON line back:
``{"result": repr(value of the last expression)}`` or ``{"error": {...}}`` with the
exception's class, str, class hierarchy and ``Pyro4.util.getPyroTraceback()``.
EOF stops the process.
"""

import ast
import json
import sys
import traceback

import Pyro4
import Pyro4.util

namespace = {"Pyro4": Pyro4}


def run(code):
    tree = ast.parse(code, "<test>")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<test>", "exec"), namespace)
    return eval(compile(last, "<test>", "eval"), namespace) if last else None


def describe(exc):
    cls = type(exc)
    return {
        "type": cls.__module__ + "." + cls.__qualname__,
        "str": str(exc),
        "mro": [c.__module__ + "." + c.__qualname__ for c in cls.__mro__],
        "traceback": "".join(Pyro4.util.getPyroTraceback(cls, exc, exc.__traceback__)),
    }


def main():
    print("ready", Pyro4.__version__, flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        Pyro4.config.reset()
        namespace.update(command["vars"])
        try:
            reply = {"result": repr(run(command["code"]))}
        except Exception as exc:  # reported to the test, which decides what it means
            reply = {"error": describe(exc)}
        except BaseException:
            traceback.print_exc()
            raise
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
