"""The ingest hot path's statements, executed on SQLite's DBAPI cursor directly.

Measured (``_index`` of an instance of a known series, SQLite, ``synchronous=NORMAL``):
SQLAlchemy Core spends ~17 µs of Python per statement on execution contexts, cache keys
and result objects, about 0.2 ms of the ~0.3 ms an instance's five statements take; the
sqlite3 driver alone needs ~3 µs per statement. Here the same prebuilt Core statements are
compiled once for SQLite (so the SQL is SQLAlchemy's, not hand-written), and run on the
driver's cursor of the caller's connection, inside its transaction. Parameters go through
the column types' bind processors and inserts get their columns' Python-side defaults, as
SQLAlchemy would apply them. Other databases take the ordinary ``conn.execute``.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

from sqlalchemy import Connection, exc
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.sql import Executable

_DIALECT = pysqlite.dialect()


class _Compiled:
    """One statement compiled for SQLite with a given set of parameter names."""

    def __init__(self, statement: Executable, keys: frozenset[str] | None) -> None:
        compiled = statement.compile(dialect=_DIALECT, column_keys=sorted(keys) if keys is not None else None)
        self.sql = compiled.string
        self.names: list[str] = list(compiled.positiontup or [])
        base = compiled.params  # literal values of the statement (e.g. the 1 of "n + 1")
        self.fixed = {name: base[name] for name in self.names if base.get(name) is not None}
        self.defaults: dict[str, Callable[[], Any]] = {}
        for column in getattr(compiled, "insert_prefetch", None) or []:  # columns not given
            default = column.default
            if default is None:
                continue
            if default.is_scalar:
                self.defaults[column.key] = lambda value=default.arg: value
            else:
                self.defaults[column.key] = lambda fn=default.arg: fn(None)
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name in self.names:
            processor = compiled.binds[name].type.dialect_impl(_DIALECT).bind_processor(_DIALECT)
            if processor is not None:
                self.processors[name] = processor

    def parameters(self, params: dict[str, Any]) -> list[Any]:
        values = []
        for name in self.names:
            if name in params:
                value = params[name]
            elif name in self.defaults:
                value = self.defaults[name]()
            else:
                value = self.fixed.get(name)
            processor = self.processors.get(name)
            values.append(processor(value) if processor is not None and value is not None else value)
        return values


_CACHE: dict[tuple[int, frozenset[str] | None], _Compiled] = {}


def _compiled(statement: Executable, params: dict[str, Any], keyed: bool) -> _Compiled:
    keys = frozenset(params) if keyed else None
    cache_key = (id(statement), keys)
    entry = _CACHE.get(cache_key)
    if entry is None:
        entry = _CACHE[cache_key] = _Compiled(statement, keys)
    return entry


def _execute(conn: Connection, entry: _Compiled, params: dict[str, Any], fetch: bool = False) -> tuple[int, Any]:
    """(rowcount, first row or None); driver errors raised as SQLAlchemy's (IntegrityError,
    OperationalError, ...), as ``conn.execute`` would."""
    values = entry.parameters(params)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(entry.sql, values)
        return cursor.rowcount, cursor.fetchone() if fetch else None
    except sqlite3.Error as err:
        raise exc.DBAPIError.instance(entry.sql, values, err, sqlite3.Error) from err
    finally:
        cursor.close()


def rowcount(conn: Connection, statement: Executable, params: dict[str, Any]) -> int:
    """Run a prebuilt UPDATE/DELETE; the number of rows it changed."""
    if conn.dialect.name != "sqlite":
        return conn.execute(statement, params).rowcount
    return _execute(conn, _compiled(statement, params, keyed=False), params)[0]


def scalar(conn: Connection, statement: Executable, params: dict[str, Any]) -> Any:
    """Run a prebuilt statement with RETURNING of one column; the value of its one row."""
    if conn.dialect.name != "sqlite":
        return conn.execute(statement, params).scalar_one()
    row = _execute(conn, _compiled(statement, params, keyed=False), params, fetch=True)[1]
    if row is None:
        raise exc.NoResultFound("the statement returned no row")
    return row[0]


def insert(conn: Connection, statement: Executable, params: dict[str, Any]) -> None:
    """Run a prebuilt INSERT of the columns named by ``params`` (others take their defaults)."""
    if conn.dialect.name != "sqlite":
        conn.execute(statement, params)
        return
    _execute(conn, _compiled(statement, params, keyed=True), params)
