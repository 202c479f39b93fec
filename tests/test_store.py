"""The store: exactly-once results, contiguous acknowledgements, catalogue history."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from collector.catalogue import parse_catalogue
from collector.store import MIGRATIONS, RESULT_COLUMNS, Writer, measurement_row, open_store
from slaprobe.model import Measurement

CAT = """
sites:
  lab:
    checks:
      web: {type: http, target: "http://127.0.0.1:1/", interval: 10s, timeout: 1s}
      db: {type: tcp, target: "127.0.0.1:5432", interval: 10s, timeout: 1s}
"""


def m(i: int, ok: bool = True) -> Measurement:
    return Measurement(
        "lab/web", "r1", 1_000 + i, 1_001 + i, 5_000_000, ok, error_kind="" if ok else "refused"
    )


def rows(agent: int, epoch: int, first: int, last: int, check_row: int) -> list[tuple[object, ...]]:
    return [measurement_row(agent, epoch, s, check_row, m(s), 42) for s in range(first, last + 1)]


def count(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return int(c.execute("SELECT count(*) FROM results").fetchone()[0])


async def test_replayed_batches_are_stored_once_and_acks_stay_contiguous(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    w = Writer(db)
    await w.start()
    try:
        refs = await w.persist_catalogue(parse_catalogue(CAT, "cat.yaml"), 1)
        web = refs["lab/web"].row_id
        agent, acked, _ = await w.register_agent("a1", "lab", "0.1", "h", 7, 2)
        assert acked == 0

        out = await w.ingest(agent, 7, 1, 10, rows(agent, 7, 1, 10, web), [], 3)
        assert (out.acked_seq, out.inserted, out.duplicates) == (10, 10, 0)
        # The same batch again (an ack lost on the way): nothing new, same ack.
        out = await w.ingest(agent, 7, 1, 10, rows(agent, 7, 1, 10, web), [], 4)
        assert (out.acked_seq, out.inserted, out.duplicates) == (10, 0, 10)
        # A batch from beyond a hole is stored but not acknowledged until the hole is filled.
        out = await w.ingest(agent, 7, 21, 30, rows(agent, 7, 21, 30, web), [], 5)
        assert out.acked_seq == 10 and out.inserted == 10
        # The hole: record 15 is rejected (counts as handled), the rest stored.
        good = [r for r in rows(agent, 7, 11, 20, web) if r[2] != 15]
        out = await w.ingest(agent, 7, 11, 20, good, [(15, "bad")], 6)
        assert out.acked_seq == 30
        # Another epoch of the same agent is a separate sequence space.
        out = await w.ingest(agent, 8, 1, 5, rows(agent, 8, 1, 5, web), [], 7)
        assert out.acked_seq == 5
    finally:
        await w.close()
    assert count(db) == 34
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT seq, reason FROM rejections").fetchall() == [(15, "bad")]
        assert sorted(c.execute("SELECT epoch, acked_seq FROM streams").fetchall()) == [(7, 30), (8, 5)]

    # After a restart the acknowledgement is read back from disk.
    w2 = Writer(db)
    await w2.start()
    try:
        _, acked, _ = await w2.register_agent("a1", "lab", "0.1", "h", 7, 9)
        assert acked == 30
    finally:
        await w2.close()


async def test_catalogue_history_opens_and_closes_versions(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    w = Writer(db)
    await w.start()
    try:
        await w.persist_catalogue(parse_catalogue(CAT, "cat.yaml"), 100)
        await w.persist_catalogue(parse_catalogue(CAT, "cat.yaml"), 150)  # unchanged: no new version
        changed = CAT.replace(
            "interval: 10s, timeout: 1s}\n      db", "interval: 20s, timeout: 1s}\n      db"
        )
        changed = changed.replace(
            '      db: {type: tcp, target: "127.0.0.1:5432", interval: 10s, timeout: 1s}\n', ""
        )
        refs = await w.persist_catalogue(parse_catalogue(changed, "cat.yaml"), 200)
    finally:
        await w.close()
    assert set(refs) == {"lab/web", "lab/db"}  # history keeps the removed check
    with sqlite3.connect(db) as c:
        versions = c.execute(
            "SELECT c.name, v.interval_ms, v.valid_from_ns, v.valid_to_ns FROM check_versions v"
            " JOIN checks c ON c.id = v.check_id ORDER BY c.name, v.valid_from_ns"
        ).fetchall()
        assert versions == [("db", 10000, 100, 200), ("web", 10000, 100, 200), ("web", 20000, 200, None)]
        assert c.execute("SELECT count(*) FROM catalogue_versions").fetchone()[0] == 2


def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    db = open_store(tmp_path / "s.db")
    names = [r[0] for r in db.execute("SELECT name FROM _migrations").fetchall()]
    assert names == [name for name, _ in MIGRATIONS]
    assert names[:3] == ["0001_initial", "0002_gaps_and_clocks", "0003_identity"]
    db.conn.close()
    db = open_store(tmp_path / "s.db")  # second open applies nothing
    assert [r[0] for r in db.execute("SELECT name FROM _migrations").fetchall()] == names
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.conn.close()


def test_rows_by_column_are_stored_like_row_tuples(tmp_path: Path) -> None:
    """The decode worker's rows come back by column (``rollups.Columns``) and are bound from the
    columns: the same rows as tuples, partial resends included."""
    from array import array

    from collector import rollups

    tuples = [measurement_row(3, 1, s, 1, m(s, ok=s % 3 != 0), 42) for s in range(1, 1_201)]
    columns = rollups.Columns(
        [array("q", c) if isinstance(c[0], int) else list(c) for c in zip(*tuples, strict=True)]
    )
    assert len(columns) == 1_200 and list(columns) == tuples and columns[5] == tuples[5]
    assert columns.params(10, 12) == [v for row in tuples[10:12] for v in row]
    dbs = []
    for name, rows in (("tuples", tuples), ("columns", columns)):
        db = open_store(tmp_path / f"{name}.db")
        r = rollups.Rollups(RESULT_COLUMNS)
        db.execute("BEGIN")
        assert r.insert(db.conn, tuples[:100]) == tuples[:100]  # stored before: a resend overlaps them
        assert list(r.insert(db.conn, rows)) == tuples[100:]
        db.execute("COMMIT")
        dbs.append(db.execute("SELECT * FROM results ORDER BY rowid").fetchall())
    assert dbs[0] == dbs[1] and len(dbs[0]) == 1_200
