"""The record store (``collector/record_log.py``): every record's bytes kept once, whichever table.

A new batch goes in as one ``record_batches`` row, seals one row each in ``record_log``; a resend
that overlaps stored records adds only what is missing; readers get a stream's records in seq
order, each once, byte for byte; retention cuts at a seq even through a batch row.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from collector import record_log, rollups
from collector.store import open_store

RESULT, GAP, SEAL = 2, 3, 5


def rec(seq: int, tag: bytes = b"a") -> bytes:
    return tag + seq.to_bytes(4, "big") * (1 + seq % 5)


def columns(agent: int, seqs: list[int], tag: bytes = b"a", seals: tuple[int, ...] = ()) -> list[list[Any]]:
    kinds = [SEAL if s in seals else RESULT for s in seqs]
    return [[agent] * len(seqs), [7] * len(seqs), seqs, list(seqs), kinds, [rec(s, tag) for s in seqs]]


def batch(agent: int, seqs: list[int], tag: bytes = b"a", seals: tuple[int, ...] = ()) -> rollups.Columns:
    return rollups.Columns(columns(agent, seqs, tag, seals))


@pytest.fixture
def conn(tmp_path: Path) -> Any:
    db = open_store(tmp_path / "r.db")
    db.conn.execute("BEGIN IMMEDIATE")
    yield db.conn
    db.conn.close()


def stream(conn: sqlite3.Connection, agent: int = 1) -> list[tuple[int, int, bytes]]:
    return list(record_log.records(conn, agent, 7, 0, 2**62))


def tables(conn: sqlite3.Connection) -> tuple[int, int]:
    (singles,) = conn.execute("SELECT count(*) FROM record_log").fetchone()
    (batches,) = conn.execute("SELECT count(*) FROM record_batches").fetchone()
    return int(singles), int(batches)


def test_a_new_batch_is_one_row_and_its_seals_are_rows_of_their_own(conn: sqlite3.Connection) -> None:
    record_log.store(conn, 1, 7, batch(1, list(range(1, 11)), seals=(5, 10)))
    assert tables(conn) == (2, 1)
    assert stream(conn) == [(s, SEAL if s in (5, 10) else RESULT, rec(s)) for s in range(1, 11)]
    assert [s for s, k, _ in stream(conn) if k == SEAL] == [
        s for (s,) in conn.execute("SELECT seq FROM record_log WHERE kind = 5 ORDER BY seq")
    ]
    assert record_log.first_record(conn, 1, 7) == (1, RESULT)
    assert record_log.last_seq(conn, 1, 7) == 10
    assert record_log.count(conn) == 10
    assert list(record_log.records(conn, 1, 7, 4, 6)) == [
        (4, RESULT, rec(4)),
        (5, SEAL, rec(5)),
        (6, RESULT, rec(6)),
    ]


def test_resends_add_only_what_is_missing_and_the_first_bytes_stay(conn: sqlite3.Connection) -> None:
    record_log.store(conn, 1, 7, batch(1, list(range(1, 21))))
    record_log.store(conn, 1, 7, batch(1, list(range(1, 21)), b"x"))  # the same batch again
    assert tables(conn) == (0, 1)
    record_log.store(conn, 1, 7, batch(1, list(range(15, 31)), b"b"))  # overlaps 15..20
    record_log.store(conn, 1, 7, batch(1, list(range(41, 51)), b"c"))  # new: a batch row
    record_log.store(conn, 1, 7, batch(1, list(range(10, 61)), b"d"))  # covers all, and more
    got = stream(conn)
    assert [s for s, _, _ in got] == list(range(1, 61))  # each once
    tags = {s: r[:1] for s, _, r in got}
    assert {s for s, t in tags.items() if t == b"a"} == set(range(1, 21))
    assert {s for s, t in tags.items() if t == b"b"} == set(range(21, 31))
    assert {s for s, t in tags.items() if t == b"c"} == set(range(41, 51))
    assert {s for s, t in tags.items() if t == b"d"} == set(range(31, 41)) | set(range(51, 61))
    assert all(r == rec(s, tags[s]) for s, _, r in got)
    assert record_log.count(conn) == 60


def test_records_out_of_order_or_of_several_streams_or_odd_kinds(conn: sqlite3.Connection) -> None:
    record_log.store(conn, 1, 7, batch(1, [3, 1, 2]))  # a batch row in seq order
    assert tables(conn) == (0, 1) and [s for s, _, _ in stream(conn)] == [1, 2, 3]
    mixed = columns(1, [4, 5])
    mixed[0][1] = 2  # a row of another stream: record by record
    record_log.store(conn, 1, 7, rollups.Columns(mixed))
    assert [s for s, _, _ in stream(conn, 1)] == [1, 2, 3, 4] and [s for s, _, _ in stream(conn, 2)] == [5]
    odd = columns(1, [6, 7])
    odd[4][0] = 300  # a kind past a byte: its own row
    record_log.store(conn, 1, 7, rollups.Columns(odd))
    assert [(s, k) for s, k, _ in stream(conn)][-2:] == [(6, 300), (7, RESULT)]
    record_log.store(conn, 1, 7, [(1, 7, 8, 9, GAP, b"gap")])  # tuples too
    assert stream(conn)[-1] == (8, GAP, b"gap")


def test_retention_cuts_through_a_batch_row_and_keeps_the_rest_unchanged(conn: sqlite3.Connection) -> None:
    record_log.store(conn, 1, 7, batch(1, list(range(1, 11)), seals=(5,)))
    record_log.store(conn, 1, 7, batch(1, list(range(11, 21)), seals=(15, 20)))
    before = stream(conn)
    assert record_log.delete_before(conn, 1, 7, 15) == 14
    assert stream(conn) == [r for r in before if r[0] >= 15]
    assert record_log.first_record(conn, 1, 7) == (15, SEAL)
    assert record_log.delete_before(conn, 1, 7, 12) == 0
    assert record_log.delete_before(conn, 1, 7, 21) == 6 and stream(conn) == []
    assert record_log.last_seq(conn, 1, 7) is None and record_log.first_record(conn, 1, 7) is None


def test_a_record_held_in_both_tables_is_read_once(conn: sqlite3.Connection) -> None:
    """Only a mix of versions could leave one (a resend stored record by record before a batch row
    of it existed is refused a batch row): readers still yield it once, the batch row's bytes equal."""
    record_log.store(conn, 1, 7, batch(1, list(range(1, 6)), seals=(5,)))
    conn.execute("INSERT INTO record_log VALUES (1, 7, 3, 3, 2, ?)", (rec(3),))
    conn.execute("INSERT INTO record_log VALUES (1, 7, 0, 0, 2, ?)", (rec(0),))
    assert [s for s, _, _ in stream(conn)] == [0, 1, 2, 3, 4, 5]
    assert dict((s, r) for s, _, r in stream(conn)) == {s: rec(s) for s in range(6)}
