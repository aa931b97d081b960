"""Sphinx directive ``pyro-config``: configuration tables whose defaults come from the code.

The configuration page writes each item's *meaning* as a definition list
inside the directive; the item's default and environment variable are read
from ``pyro_loops.configuration._DEFAULTS`` when the site is built, so a
changed default shows up without anyone editing the page::

    .. pyro-config::

       HOST
          The address a daemon binds to when none is given.
       SSL_CACERTS : upcoming
          Extra certificates to trust (a file or a hashed directory).

At the end of reading, the build warns (an error under ``-W``, as the tests
build it) about an item the code has and no table describes, an item a
table describes that the code lacks, and an item described twice. The
classifier ``upcoming`` marks an item another branch is adding: its row is
left out until the item exists in the code, and no warning is given for it,
so the page can be written before the code is merged.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging

log = logging.getLogger(__name__)

_UPCOMING = "upcoming"
_MIB = 1024 * 1024


def _defaults() -> dict[str, Any]:
    from pyro_loops.configuration import _DEFAULTS
    return _DEFAULTS


def format_default(value: Any) -> str:
    """The default as a reader wants to see it: sets sorted, big byte counts in MiB too."""
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(repr(v) for v in sorted(value)) + "}"
    if isinstance(value, int) and not isinstance(value, bool) and value >= _MIB and value % _MIB == 0:
        return f"{value} ({value // _MIB} MiB)"
    return repr(value)


def _documented(env: BuildEnvironment) -> dict[str, list[str]]:
    if not hasattr(env, "pyro_config_items"):
        env.pyro_config_items = {}  # item name -> docnames that describe it
    return env.pyro_config_items


def _upcoming(env: BuildEnvironment) -> set[str]:
    if not hasattr(env, "pyro_config_upcoming"):
        env.pyro_config_upcoming = set()
    return env.pyro_config_upcoming


def _row(cells: list[nodes.Node | str]) -> nodes.row:
    row = nodes.row()
    for cell in cells:
        entry = nodes.entry()
        if isinstance(cell, str):
            entry += nodes.paragraph("", "", nodes.literal(cell, cell))
        else:
            entry += cell
        row += entry
    return row


class PyroConfig(Directive):
    """A table of configuration items: name, default (from the code), meaning (from the page)."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        holder = nodes.container()
        self.state.nested_parse(self.content, self.content_offset, holder)
        if len(holder.children) != 1 or not isinstance(holder.children[0], nodes.definition_list):
            raise self.error("pyro-config holds one definition list: ITEM_NAME, then its meaning indented")
        # the list's own items only: a meaning may hold a definition list of its own (say, of values)
        items = [node for node in holder.children[0].children if isinstance(node, nodes.definition_list_item)]
        defaults = _defaults()
        table = nodes.table(classes=["pyro-config"])
        group = nodes.tgroup(cols=3)
        table += group
        for width in (22, 18, 60):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        head += _row([nodes.paragraph(text=t) for t in ("item", "default", "meaning")])
        group += head
        body = nodes.tbody()
        group += body
        for item in items:
            name = item.next_node(nodes.term).astext().strip()
            classifiers = [c.astext().strip() for c in item.children if isinstance(c, nodes.classifier)]
            unknown = [c for c in classifiers if c != _UPCOMING]
            if unknown:
                raise self.error(f"pyro-config: unknown classifier {unknown[0]!r} on {name} "
                                 f"(only {_UPCOMING!r} is known)")
            _documented(env).setdefault(name, []).append(env.docname)
            if classifiers:
                _upcoming(env).add(name)
            if name not in defaults:
                continue  # upcoming, or reported as stale at the end of reading
            meaning = item.next_node(nodes.definition)
            body += _row([name, format_default(defaults[name]), meaning.deepcopy()])
            target = nodes.target("", "", ids=[nodes.make_id("config-" + name)])
            self.state.document.note_explicit_target(target)
            body.children[-1].children[0].insert(0, target)
        return [table] if body.children else []  # every item still upcoming: no empty table


def _purge(_app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    documented = _documented(env)
    for name in list(documented):
        documented[name] = [d for d in documented[name] if d != docname]
        if not documented[name]:
            del documented[name]
            _upcoming(env).discard(name)


def _merge(_app: Sphinx, env: BuildEnvironment, _docnames: set[str], other: BuildEnvironment) -> None:
    for name, docnames in _documented(other).items():
        _documented(env).setdefault(name, []).extend(docnames)
    _upcoming(env).update(_upcoming(other))


def _check(_app: Sphinx, env: BuildEnvironment) -> None:
    """Warn about every mismatch between the code's items and the described ones."""
    defaults = _defaults()
    documented = _documented(env)
    if not documented:
        return  # a build without the configuration page (a partial build) checks nothing
    for name in defaults:
        if name not in documented:
            log.warning("configuration item %s is not described on any page: add it to a "
                        "pyro-config table in docs/configuration.rst", name)
    for name, docnames in sorted(documented.items()):
        if len(docnames) > 1:
            log.warning("configuration item %s is described more than once (%s)", name, ", ".join(docnames))
        if name not in defaults and name not in _upcoming(env):
            log.warning("configuration item %s is described in %s but pyro_loops.configuration has no "
                        "such item: remove it, or mark it ': %s' if a branch is adding it",
                        name, docnames[0], _UPCOMING)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("pyro-config", PyroConfig)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-check-consistency", _check)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
