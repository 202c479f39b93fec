"""The compiled bulk insert (``slaprobe_speedups._store``) stores what Python's sqlite3 stores.

The writer inserts every result row and every signed record through it, on its own connection and
inside its open transaction, with the GIL released while SQLite works. What lands on disk must be
what ``executemany`` would have stored, value for value and type for type (evidence is the agent's
bytes, and a report reads the same rows either way); what it does not take (a value past 64 bits,
an unknown type, no open transaction, not one statement) comes back NotImplemented with nothing
written, so that the Python path runs and gives its own answer or error; SQLite's errors are raised
as the classes and messages Python's sqlite3 raises.
"""

from __future__ import annotations

import sqlite3
import sys
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector import rollups
from tests.speedups_build import NOT_BUILT, require_built

store = rollups.compiled_store
# Honest: the module is optional where it cannot be built (tests/speedups_build.py); the first test
# below fails, never skips, wherever the build was possible, so a missing build cannot hide here.
needs_compiled = pytest.mark.skipif(store is None, reason=NOT_BUILT)

I64 = 2**63 - 1
values = st.one_of(
    st.none(),
    st.integers(-I64 - 1, I64),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    st.binary().map(bytearray),
)
SQL = "INSERT INTO t VALUES (?, ?, ?, ?)"


def test_the_compiled_insert_is_built_where_a_compiler_is() -> None:
    require_built()
    # It reads Python's sqlite3.Connection layout only on the CPython versions checked (3.11-3.13).
    assert store is not None and store.available() == ((3, 11) <= sys.version_info[:2] <= (3, 13))


def _db(path: Path | str = ":memory:") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (a, b, c, d)")
    conn.execute("CREATE TABLE u (k INTEGER PRIMARY KEY, v NOT NULL)")
    return conn


def _stored(conn: sqlite3.Connection, table: str = "t") -> list[tuple[Any, ...]]:
    cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    picks = ", ".join(f"{c}, typeof({c}), quote({c})" for c in cols)
    return conn.execute(f"SELECT {picks} FROM {table} ORDER BY rowid").fetchall()


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(values, values, values, values), max_size=40))
def test_rows_and_columns_store_what_executemany_stores(rows: list[tuple[Any, ...]]) -> None:
    assert store is not None
    want, by_rows, by_columns = _db(), _db(), _db()
    want.executemany(SQL, rows)
    for conn in (by_rows, by_columns):
        conn.execute("BEGIN")
    assert store.execute_rows(by_rows, SQL, 4, rows) == len(rows)
    columns = [[r[j] for r in rows] for j in range(4)]
    assert store.execute_columns(by_columns, SQL, columns, 0, len(rows)) == len(rows)
    for conn in (by_rows, by_columns):
        conn.execute("COMMIT")
        assert _stored(conn) == _stored(want)


@needs_compiled
def test_integer_arrays_and_a_range_of_the_columns() -> None:
    assert store is not None
    conn = _db()
    conn.execute("BEGIN")
    columns = [
        array("q", [1, 2, -(2**63), 2**63 - 1]),
        ["a", "é", "\x00z", None],
        [b"\x00", bytearray(b"r"), None, b""],
        [0.5, 1, True, None],
    ]
    assert store.execute_columns(conn, SQL, columns, 1, 3) == 2
    conn.execute("COMMIT")
    assert conn.execute("SELECT a, b, c, d, typeof(d) FROM t").fetchall() == [
        (2, "é", b"r", 1, "integer"),
        (-(2**63), "\x00z", None, 1, "integer"),
    ]


@needs_compiled
@pytest.mark.parametrize(
    "rows",
    [
        [(1, 2, 3, 2**63)],  # past 64 bits: Python's sqlite3 raises OverflowError
        [(1, 2, 3, object())],  # a type Python's sqlite3 adapts or refuses
        [(1, 2, 3, "\ud800")],  # a lone surrogate: not UTF-8
        [(1, 2, 3)],  # a row of the wrong width
    ],
)
def test_what_it_does_not_take_comes_back_with_nothing_written(rows: list[tuple[Any, ...]]) -> None:
    assert store is not None
    conn = _db()
    conn.execute("BEGIN")
    given_rows = [(0, 0, 0, 0)] * 5 + rows
    before = conn.total_changes
    assert store.execute_rows(conn, SQL, 4, given_rows) is NotImplemented
    if len(rows[0]) == 4:
        columns = [[r[j] for r in given_rows] for j in range(4)]
        assert store.execute_columns(conn, SQL, columns, 0, len(given_rows)) is NotImplemented
    assert conn.total_changes == before and _stored(conn) == []


@needs_compiled
def test_only_inside_an_open_transaction_and_one_statement() -> None:
    assert store is not None
    conn = _db()
    assert store.execute_rows(conn, SQL, 4, [(1, 2, 3, 4)]) is NotImplemented  # autocommit
    conn.execute("BEGIN")
    assert store.execute_rows(conn, SQL + "; DELETE FROM t", 4, [(1, 2, 3, 4)]) is NotImplemented
    assert store.execute_rows(conn, "INSERT INTO t VALUES (?, ?, ?, 1)", 4, [(1, 2, 3, 4)]) is NotImplemented
    assert store.execute_rows(conn, SQL + " ;\n", 4, [(1, 2, 3, 4)]) == 1
    conn.execute("COMMIT")
    conn.close()
    assert store.execute_rows(conn, SQL, 4, [(1, 2, 3, 4)]) is NotImplemented  # closed
    assert store.execute_rows("not a connection", SQL, 4, [(1, 2, 3, 4)]) is NotImplemented


def _python_error(sql: str, rows: Sequence[tuple[Any, ...]]) -> BaseException:
    conn = _db()
    conn.execute("BEGIN")
    with pytest.raises(sqlite3.Error) as caught:
        conn.executemany(sql, rows)
    return caught.value


@needs_compiled
@pytest.mark.parametrize(
    ("sql", "rows"),
    [
        ("INSERT INTO u VALUES (?, ?)", [(1, "a"), (2, None)]),  # NOT NULL
        ("INSERT INTO u VALUES (?, ?)", [(1, "a"), (1, "b")]),  # PRIMARY KEY
        ("INSERT INTO nowhere VALUES (?, ?)", [(1, "a")]),
        ("INSERT INTO u VALUES (?, ?, ?)", [(1, "a", 2)]),
    ],
)
def test_sqlite_errors_are_the_ones_python_raises(sql: str, rows: list[tuple[Any, ...]]) -> None:
    assert store is not None
    want = _python_error(sql, rows)
    conn = _db()
    conn.execute("BEGIN")
    with pytest.raises(sqlite3.Error) as caught:
        store.execute_rows(conn, sql, len(rows[0]), rows)
    assert type(caught.value) is type(want) and str(caught.value) == str(want)
    # The rows before the failing one are in, as with executemany: the writer rolls the job back.
    assert conn.in_transaction
    assert conn.execute("SELECT count(*) FROM u").fetchone()[0] == (1 if "u VALUES (?, ?)" in sql else 0)


@needs_compiled
def test_or_ignore_counts_only_the_rows_stored_and_upserts_update_in_order(tmp_path: Path) -> None:
    assert store is not None
    conn = _db(tmp_path / "s.db")
    conn.execute("BEGIN")
    assert (
        store.execute_rows(conn, "INSERT OR IGNORE INTO u VALUES (?, ?)", 2, [(1, "a"), (1, "b"), (2, "c")])
        == 2
    )
    upsert = "INSERT INTO u VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = v || excluded.v"
    assert store.execute_rows(conn, upsert, 2, [(2, "d"), (2, "e"), (3, "f")]) == 3
    conn.execute("COMMIT")
    assert conn.execute("SELECT k, v FROM u ORDER BY k").fetchall() == [(1, "a"), (2, "cde"), (3, "f")]


@needs_compiled
def test_insert_many_stores_the_same_with_and_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [(i, f"s{i}" * (i % 3), bytes([i % 256]) * (i % 5), i / 7 if i % 2 else None) for i in range(1200)]
    got = []
    for compiled in (rollups.compiled_store, None):
        monkeypatch.setattr(rollups, "compiled_store", compiled)
        for given_rows in (rows, rollups.Columns([[r[j] for r in rows] for j in range(4)])):
            conn = _db()
            conn.execute("BEGIN")
            rollups.insert_many(conn, SQL, "INSERT INTO t VALUES ", 4, given_rows)
            assert conn.total_changes == len(rows)
            conn.execute("COMMIT")
            got.append(_stored(conn))
    assert all(g == got[0] for g in got) and len(got[0]) == len(rows)
