"""Where the name server keeps its registrations: in memory, in a SQLite file, or in a dbm file.

Both storages hold the same thing -- name -> (URI string, set of metadata tags) --
and offer the same few operations; all searching (prefix, regex, metadata) is
done by the name server over ``entries()``, so a storage stays a dumb table and
the two cannot disagree about what a filter means.

The SQLite file uses the table layout of Pyro4's ``sql:`` storage
(``pyro_names`` and ``pyro_metadata``), so a registration database written by a
Pyro4 name server can be served by ours and the other way round.
"""

from __future__ import annotations

import dbm
import logging
import sqlite3
import threading
from typing import Any, Iterable, NamedTuple, Protocol

from .errors import NamingError

log = logging.getLogger("pyro_loops")


class Entry(NamedTuple):
    """One registration: the URI as a string and its metadata tags."""

    uri: str
    metadata: frozenset[str]


class Storage(Protocol):
    def get(self, name: str) -> Entry | None: ...

    def put(self, name: str, uri: str, metadata: Iterable[str]) -> None: ...

    def delete(self, names: Iterable[str]) -> int: ...

    def entries(self) -> list[tuple[str, Entry]]: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


class MemoryStorage:
    """Registrations in a dict; gone when the process ends."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def get(self, name: str) -> Entry | None:
        return self._entries.get(name)

    def put(self, name: str, uri: str, metadata: Iterable[str]) -> None:
        self._entries[name] = Entry(uri, frozenset(metadata))

    def delete(self, names: Iterable[str]) -> int:
        removed = 0
        for name in names:
            if self._entries.pop(name, None) is not None:
                removed += 1
        return removed

    def entries(self) -> list[tuple[str, Entry]]:
        return list(self._entries.items())

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        self._entries.clear()


class SqlStorage:
    """Registrations in a SQLite file, so they survive a name server restart.

    Every change is committed at once: a name server that is killed loses
    nothing it acknowledged. One connection is shared between threads (the
    name server may run calls in workers under SERVERTYPE "thread"); a lock
    keeps them from interleaving.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        db = None
        try:
            db = sqlite3.connect(path, check_same_thread=False)
            with db:
                db.execute("PRAGMA foreign_keys=ON")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS pyro_names"
                    " (id integer PRIMARY KEY, name nvarchar NOT NULL UNIQUE, uri nvarchar NOT NULL)")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS pyro_metadata"
                    " (object integer NOT NULL, metadata nvarchar NOT NULL,"
                    " FOREIGN KEY(object) REFERENCES pyro_names(id))")
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            raise NamingError(f"cannot use {path!r} as name server storage: {exc}; give a writable file in an "
                              "existing directory (it is created if missing), or an sqlite file of a name server") \
                from exc
        self._db = db
        log.debug("name server storage: sqlite file %s, %d entries", path, len(self))

    def _metadata(self, row_id: int) -> frozenset[str]:
        rows = self._db.execute("SELECT metadata FROM pyro_metadata WHERE object=?", (row_id,))
        return frozenset(tag for (tag,) in rows)

    def get(self, name: str) -> Entry | None:
        with self._lock:
            row = self._db.execute("SELECT id, uri FROM pyro_names WHERE name=?", (name,)).fetchone()
            if row is None:
                return None
            return Entry(row[1], self._metadata(row[0]))

    def _delete_one(self, name: str) -> bool:
        row = self._db.execute("SELECT id FROM pyro_names WHERE name=?", (name,)).fetchone()
        if row is None:
            return False
        self._db.execute("DELETE FROM pyro_metadata WHERE object=?", (row[0],))
        self._db.execute("DELETE FROM pyro_names WHERE id=?", (row[0],))
        return True

    def put(self, name: str, uri: str, metadata: Iterable[str]) -> None:
        tags = frozenset(metadata)
        with self._lock, self._db:
            self._delete_one(name)
            row_id = self._db.execute("INSERT INTO pyro_names(name, uri) VALUES (?, ?)", (name, uri)).lastrowid
            self._db.executemany("INSERT INTO pyro_metadata(object, metadata) VALUES (?, ?)",
                                 [(row_id, tag) for tag in tags])

    def delete(self, names: Iterable[str]) -> int:
        with self._lock, self._db:
            return sum(1 for name in names if self._delete_one(name))

    def entries(self) -> list[tuple[str, Entry]]:
        with self._lock:
            tags: dict[int, set[str]] = {}
            for row_id, tag in self._db.execute("SELECT object, metadata FROM pyro_metadata"):
                tags.setdefault(row_id, set()).add(tag)
            rows = self._db.execute("SELECT id, name, uri FROM pyro_names").fetchall()
            return [(name, Entry(uri, frozenset(tags.get(row_id, ())))) for row_id, name, uri in rows]

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM pyro_names").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class DbmStorage:
    """Registrations in a ``dbm`` file, as Pyro4's ``dbm:`` storage keeps them.

    Name and URI are the key and value, UTF-8 encoded; dbm has no room for
    metadata, so (as in Pyro4) tags given with a registration are dropped with
    a warning and every entry has none. The file is opened for each operation,
    so every change is on disk once acknowledged and a Pyro4 name server can
    take the file over; a lock keeps worker threads from interleaving.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            with dbm.open(path, "c", 0o600):
                pass
        except (dbm.error[0], OSError) as exc:
            raise NamingError(f"cannot use {path!r} as name server storage: {exc}") from exc
        log.debug("name server storage: dbm file %s, %d entries", path, len(self))

    def _open(self, flag: str = "r") -> Any:
        return dbm.open(self.path, flag)

    def get(self, name: str) -> Entry | None:
        with self._lock, self._open() as db:
            uri = db.get(name.encode("utf-8"))
        return None if uri is None else Entry(uri.decode("utf-8"), frozenset())

    def put(self, name: str, uri: str, metadata: Iterable[str]) -> None:
        if frozenset(metadata):
            log.warning("the name server's dbm storage cannot keep metadata: the tags of %r are dropped", name)
        with self._lock, self._open("w") as db:
            db[name.encode("utf-8")] = uri.encode("utf-8")

    def delete(self, names: Iterable[str]) -> int:
        deleted = 0
        with self._lock, self._open("w") as db:
            for name in names:
                key = name.encode("utf-8")
                if key in db:
                    del db[key]
                    deleted += 1
        return deleted

    def entries(self) -> list[tuple[str, Entry]]:
        with self._lock, self._open() as db:
            return [(key.decode("utf-8"), Entry(db[key].decode("utf-8"), frozenset())) for key in db.keys()]

    def __len__(self) -> int:
        with self._lock, self._open() as db:
            return len(db)

    def close(self) -> None:
        """Nothing stays open between operations."""


def open_storage(spec: str | None) -> MemoryStorage | SqlStorage | DbmStorage:
    """Build the storage named by a ``-s`` style spec: ``"memory"`` (or None), ``"sql:<file>"`` or ``"dbm:<file>"``."""
    if spec is None or spec == "memory":
        return MemoryStorage()
    if spec.startswith("sql:") and len(spec) > 4:
        return SqlStorage(spec[4:])
    if spec.startswith("dbm:") and len(spec) > 4:
        return DbmStorage(spec[4:])
    raise ValueError(f"invalid storage type '{spec}' (use 'memory', 'sql:<file>' or 'dbm:<file>')")
