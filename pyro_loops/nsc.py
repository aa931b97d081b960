"""``pyro-loops-nsc``: query and change a name server from the command line.

It speaks to any Pyro4-compatible name server (ours or Pyro4's). Unlike
``pyro4-nsc`` it reports failure through its exit code, so scripts can use it:
0 when the command did what was asked, 1 when the name server could not be
found or refused (unknown name, bad regex, nothing removed), 2 for usage errors.
The HMAC key, if any, comes from the ``PYRO_HMAC_KEY`` environment variable.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from .errors import PyroError
from .naming import locateNS


def _print_listing(listing: dict[str, tuple[str, list[str]]]) -> None:
    if not listing:
        print("(no registrations)")
        return
    for name in sorted(listing):
        uri, tags = listing[name]
        print(f"{name} --> {uri}")
        if tags:
            print(f"    metadata: {', '.join(sorted(tags))}")


def _cmd_ping(ns: Any, args: argparse.Namespace) -> int:
    ns.ping()
    print("Name server ping ok.")
    return 0


def _cmd_list(ns: Any, args: argparse.Namespace) -> int:
    _print_listing(ns.list(prefix=args.prefix or None, return_metadata=True))
    return 0


def _cmd_listmatching(ns: Any, args: argparse.Namespace) -> int:
    _print_listing(ns.list(regex=args.regex, return_metadata=True))
    return 0


def _cmd_yplookup_all(ns: Any, args: argparse.Namespace) -> int:
    _print_listing(ns.list(metadata_all=args.tags, return_metadata=True))
    return 0


def _cmd_yplookup_any(ns: Any, args: argparse.Namespace) -> int:
    _print_listing(ns.list(metadata_any=args.tags, return_metadata=True))
    return 0


def _cmd_lookup(ns: Any, args: argparse.Namespace) -> int:
    uri, tags = ns.lookup(args.name, return_metadata=True)
    print(uri)
    if tags:
        print(f"    metadata: {', '.join(sorted(tags))}")
    return 0


def _cmd_register(ns: Any, args: argparse.Namespace) -> int:
    ns.register(args.name, args.uri, metadata=args.tags or None)
    print(f"Registered {args.name}")
    return 0


def _cmd_remove(ns: Any, args: argparse.Namespace) -> int:
    if ns.remove(args.name):
        print(f"Removed {args.name}")
        return 0
    print(f"Nothing removed: no registration named {args.name}", file=sys.stderr)
    return 1


def _cmd_removematching(ns: Any, args: argparse.Namespace) -> int:
    print(f"{ns.remove(regex=args.regex)} items removed.")
    return 0


def _cmd_setmeta(ns: Any, args: argparse.Namespace) -> int:
    ns.set_metadata(args.name, args.tags)
    print(f"Metadata of {args.name} updated" if args.tags else f"Metadata of {args.name} cleared")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-loops-nsc", description="Query or change a Pyro name server.")
    parser.add_argument("-n", "--host", help="host of the name server (default: locate it)")
    parser.add_argument("-p", "--port", type=int, help="port of the name server")
    parser.add_argument("-u", "--unixsocket", help="Unix domain socket of the name server")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    def command(name: str, handler: Callable[[Any, argparse.Namespace], int], help_text: str,
                aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, aliases=list(aliases))
        sub.set_defaults(handler=handler)
        return sub

    command("ping", _cmd_ping, "check that the name server answers")
    command("list", _cmd_list, "list all registrations, or those with a prefix").add_argument("prefix", nargs="?")
    command("listprefix", _cmd_list, "list the registrations whose name starts with a prefix").add_argument("prefix")
    command("listmatching", _cmd_listmatching, "list the registrations whose name matches a regex"
            ).add_argument("regex")
    command("yplookup_all", _cmd_yplookup_all, "list the registrations carrying all of these tags",
            aliases=("listmeta_all",)).add_argument("tags", nargs="+")
    command("yplookup_any", _cmd_yplookup_any, "list the registrations carrying any of these tags",
            aliases=("listmeta_any",)).add_argument("tags", nargs="+")
    command("lookup", _cmd_lookup, "show the URI registered under a name").add_argument("name")
    register = command("register", _cmd_register, "register a URI under a name, with optional tags")
    register.add_argument("name")
    register.add_argument("uri")
    register.add_argument("tags", nargs="*")
    command("remove", _cmd_remove, "remove one registration").add_argument("name")
    command("removematching", _cmd_removematching, "remove the registrations whose name matches a regex"
            ).add_argument("regex")
    setmeta = command("setmeta", _cmd_setmeta, "replace the tags of a registration (none given: clear them)")
    setmeta.add_argument("name")
    setmeta.add_argument("tags", nargs="*")
    return parser


def main(args: list[str] | None = None) -> int:
    options = _parser().parse_args(args)
    host = "./u:" + options.unixsocket if options.unixsocket else options.host
    hmac_key = os.environ.get("PYRO_HMAC_KEY")
    try:
        nameserver = locateNS(host, options.port, hmac_key=hmac_key.encode("utf-8") if hmac_key else None)
    except PyroError as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        print(f"Error: {exc}{cause}", file=sys.stderr)
        return 1
    try:
        return options.handler(nameserver, options)
    except (PyroError, TypeError, ValueError) as exc:  # the name server's refusals, re-raised here
        print(f"Error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        nameserver._pyroRelease()


if __name__ == "__main__":
    sys.exit(main())
