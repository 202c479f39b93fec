"""Rollups kept by the collector's writer: same transaction as the rows, exactly once, and retention."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from collector import record_log, rollups, store
from collector.catalogue import parse_catalogue
from collector.rollups import RollupSource
from collector.sla.engine import Part
from collector.sla.report import Context, Period, compliance
from slaprobe.model import Measurement
from slaprobe.schedule import NS_PER_MS, next_slot_at_or_after, offset_ns
from tests.sla_world import DAY, HOUR, MINUTE, World, utc

T0 = utc(2026, 10, 5, 8, 0)
CAT = """
sites:
  lab:
    sla: {availability: 99%}
    checks:
      web: {type: tcp, target: "192.0.2.1:80", interval: 1m, timeout: 5s}
      fast: {type: tcp, target: "192.0.2.1:81", interval: 10s, timeout: 5s}
"""


def slot(key: str, interval_s: int, i: int) -> int:
    iv = interval_s * 10**9
    return next_slot_at_or_after(T0, iv, offset_ns(key, iv)) + i * iv


def rows_for(
    agent: int, check_row: int, key: str, interval_s: int, first_seq: int, n: int, **kw: Any
) -> list[Any]:
    out = []
    for i in range(n):
        t = slot(key, interval_s, i)
        ok = kw.get("ok", lambda i: True)(i)
        m = Measurement(key, "r", t, t, 20 * NS_PER_MS, ok, error_kind="" if ok else "refused")
        out.append(store.measurement_row(agent, 1, first_seq + i, check_row, m, 0))
    return out


def rollup_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as c:
        return [
            row
            for t in rollups.ROLLUP_TABLES
            for row in c.execute(f"SELECT '{t}', * FROM {t} ORDER BY check_id, bucket_ns, agent_id")
        ]


def report(db: Path, source: str, end: int = T0 + HOUR) -> list[dict[str, Any]]:
    reader = store.Reader(db)
    try:
        src = RollupSource(reader.db.conn) if source == "rollups" else rollups.RawSource(reader.db.conn)
        ctx = Context(parse_catalogue(CAT, "c.yaml"), reader, src, end + DAY, source)
        out = compliance(
            ctx, Period("range", start="2026-10-05T08:00:00+00:00", end="2026-10-05T09:00:00+00:00")
        )
        return [r.to_dict() for s in out for r in s.services]
    finally:
        reader.close()


async def test_the_writer_keeps_rollups_in_the_same_transaction_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    w = store.Writer(db)
    await w.start()
    try:
        refs = await w.persist_catalogue(parse_catalogue(CAT, "c.yaml"), T0 - HOUR)
        web, fast = refs["lab/web"].row_id, refs["lab/fast"].row_id
        agent, _, _ = await w.register_agent("a1", "lab", "t", "h", 1, T0)
        web_rows = rows_for(agent, web, "lab/web", 60, 1, 60, ok=lambda i: i % 7 != 3)
        fast_rows = rows_for(agent, fast, "lab/fast", 10, 61, 360, ok=lambda i: i % 50 != 0)
        # Three jobs in one group: the second repeats part of the first (a resend in flight).
        outs = await asyncio.gather(
            w.ingest(agent, 1, 1, 60, web_rows, [], T0),
            w.ingest(agent, 1, 30, 60, web_rows[29:], [], T0),
            w.ingest(agent, 1, 61, 420, fast_rows, [], T0),
        )
        assert [o.inserted for o in outs] == [60, 0, 360]
        before = rollup_rows(db)
        # The whole stream again, and a batch half old, half new.
        out = await w.ingest(agent, 1, 1, 420, web_rows + fast_rows, [], T0)
        assert (out.inserted, out.duplicates) == (0, 420)
        more = rows_for(agent, web, "lab/web", 60, 421, 10)
        more = [(*r[:5], r[5] + HOUR, *r[6:]) for r in more]
        out = await w.ingest(agent, 1, 411, 430, fast_rows[-10:] + more, [], T0)
        assert (out.inserted, out.duplicates) == (10, 10)
    finally:
        await w.close()
    after = rollup_rows(db)
    # Every result counted once: day rows are (table, check, bucket, agent, interval, n_ok, n_fail, ...).
    assert sum(r[5] + r[6] for r in after if r[0] == "rollup_day") == 60 + 360 + 10
    assert sum(r[5] + r[6] for r in before if r[0] == "rollup_day") == 60 + 360
    assert report(db, "rollups") == report(db, "raw")


async def test_a_failing_job_leaves_no_rollups_behind(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    w = store.Writer(db)
    await w.start()
    try:
        refs = await w.persist_catalogue(parse_catalogue(CAT, "c.yaml"), T0 - HOUR)
        web = refs["lab/web"].row_id
        agent, _, _ = await w.register_agent("a1", "lab", "t", "h", 1, T0)
        good = rows_for(agent, web, "lab/web", 60, 1, 30)
        bad = rows_for(agent, web, "lab/web", 60, 31, 30)
        bad[-1] = bad[-1][:-1]  # a malformed row: its whole job fails
        results = await asyncio.gather(
            w.ingest(agent, 1, 1, 30, good, [], T0),
            w.ingest(agent, 1, 31, 60, bad, [], T0),
            return_exceptions=True,
        )
        assert not isinstance(results[0], BaseException) and isinstance(results[1], BaseException)
    finally:
        await w.close()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM results").fetchone() == (30,)
        assert c.execute("SELECT sum(n_ok) FROM rollup_day").fetchone() == (30,)
    assert report(db, "rollups") == report(db, "raw")


def test_the_migration_rolls_up_results_stored_before_it(tmp_path: Path) -> None:
    db_path = tmp_path / "old.db"
    db = store.connect(db_path)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_ns INTEGER NOT NULL)")
    names = [n for n, _ in store.MIGRATIONS]
    upto = names.index("0005_rollups")
    for name, fn in store.MIGRATIONS[:upto]:
        fn(db)
        db.execute("INSERT INTO _migrations VALUES (?, 0)", [name])
    with store.immediate(db):
        refs = store._persist_catalogue(db, parse_catalogue(CAT, "c.yaml"), T0 - HOUR)
    db.execute("INSERT INTO agents (name, site) VALUES ('a1', 'lab')")
    rows = rows_for(1, refs["lab/web"].row_id, "lab/web", 60, 1, 60, ok=lambda i: i < 50)
    db.conn.executemany(
        f"INSERT INTO results ({', '.join(store.RESULT_COLUMNS)}) VALUES ({', '.join('?' * 17)})", rows
    )
    db.conn.close()
    assert "0005_rollups" in store.migrate(store.connect(db_path))
    assert report(db_path, "rollups") == report(db_path, "raw")
    (r,) = report(db_path, "rollups")
    assert (r["counts"]["up"], r["counts"]["down"]) == (50, 10)


def test_rollup_tables_from_the_first_0005_are_upgraded_and_rebuilt(tmp_path: Path) -> None:
    w = World(tmp_path / "s.db", CAT, T0, persisted_at=T0 - HOUR)
    w.results("web", range(60))
    w.results("web", [3], ok=False, seq=10_000)
    w.flush()
    expected = report(w.path, "rollups")
    # What the first version of 0005 made: per-minute, per-hour and per-day tables, bits inside.
    for t in rollups.ROLLUP_TABLES:
        w.db.execute(f"DROP TABLE {t}")
    for t in ("rollup_minute", "rollup_hour", "rollup_day"):
        w.db.execute(
            f"CREATE TABLE {t} (check_id, bucket_ns, agent_id, interval_ms, first_slot, n_due, ok_bits,"
            " fail_bits, deg_bits, n_ok, n_fail, n_internal, n_unsynced, lat, clock,"
            " PRIMARY KEY (check_id, bucket_ns, agent_id, interval_ms)) WITHOUT ROWID"
        )
    w.db.execute("DELETE FROM _migrations WHERE name = '0006_rollup_slots'")
    assert store.migrate(w.db) == ["0006_rollup_slots"]
    assert "rollup_minute" not in w.db.table_names()
    assert report(w.path, "rollups") == expected == report(w.path, "raw")
    assert store.migrate(w.db) == []


def test_past_raw_retention_slots_stay_exact_and_latency_says_when_approximate(tmp_path: Path) -> None:
    w = World(tmp_path / "s.db", CAT, T0, persisted_at=T0 - HOUR)
    w.results("web", range(60), ms=20)
    w.results("fast", range(360), ms=20)
    w.flush()
    start, end = T0, T0 + HOUR
    # A maintenance window cutting the hour in the middle: the latency of the cut hour needs rows
    # finer than an hour.
    w.maintenance(T0 + 10 * MINUTE, T0 + 20 * MINUTE)
    cut = w.one(start, end, source="rollups")
    assert not cut.latency_approximate
    with store.immediate(w.db):
        deleted = rollups.prune(w.db.conn, raw_before_ns=T0 + 2 * HOUR, rollups_before_ns=T0 - 400 * DAY)
    assert deleted["results"] == 420 and sum(v for k, v in deleted.items() if k != "results") == 0
    after = w.one(start, end, source="rollups")
    assert after.counts == cut.counts and after.availability == cut.availability
    assert after.latency_approximate  # the web check's cut hour now comes from its hour row
    raw = w.one(start, end, source="raw")
    assert raw.counts["up"] == 0 and raw.counts["unknown"] > 0  # the raw path has nothing left
    # Rollups go by whole UTC days: a cutoff inside the day keeps it, the next midnight takes it.
    with store.immediate(w.db):
        deleted = rollups.prune(w.db.conn, raw_before_ns=T0 + 2 * HOUR, rollups_before_ns=T0 + 2 * HOUR)
    assert sum(v for k, v in deleted.items() if k != "results") == 0
    with store.immediate(w.db):
        deleted = rollups.prune(w.db.conn, raw_before_ns=T0 + 2 * HOUR, rollups_before_ns=T0 + DAY)
    assert deleted["rollup_hour"] > 0 and deleted["rollup_slots"] > 0 and deleted["rollup_day"] > 0


@pytest.mark.parametrize("interval_s", [10, 60, 7 * 60])
def test_rollup_bits_cover_every_slot_once(tmp_path: Path, interval_s: int) -> None:
    text = CAT.replace("interval: 1m", f"interval: {interval_s}s")
    w = World(tmp_path / "s.db", text, T0, persisted_at=T0 - HOUR)
    iv = interval_s * 10**9
    off = offset_ns("lab/web", iv)
    part = Part(w.checks["web"].row, "lab/web", "web", iv, off, 5 * 10**9, T0 - HOUR, None)
    k0, k1 = part.slot_range(T0, T0 + 3 * HOUR)
    w.results("web", range(k1 - k0))
    w.flush()
    src = RollupSource(w.db.conn)
    bits = src.slot_bits(part, k0, k1)
    ok = 0
    for a in bits.values():
        ok |= a.ok
    assert ok == (1 << (k1 - k0)) - 1
    assert src.stats["dirty_buckets"] <= 2  # the first and last, cut by the range


def test_durations_beyond_the_last_bucket_edge_land_in_the_last_bucket(tmp_path: Path) -> None:
    w = World(tmp_path / "s.db", CAT, T0, persisted_at=T0 - HOUR)
    w.result("web", 0, ms=2e10)  # 231 days: nothing takes that long, but nothing is lost either
    w.result("web", 1, ms=20)
    w.flush()
    rolled = w.one(T0, T0 + HOUR, source="rollups", service="(site)")
    raw = w.one(T0, T0 + HOUR, source="raw", service="(site)")
    assert rolled.evaluation is not None and raw.evaluation is not None
    assert rolled.evaluation.summary.latency == raw.evaluation.summary.latency == {280: 1, 989: 1}


async def test_a_group_runs_without_savepoints_and_still_fails_jobs_alone(tmp_path: Path) -> None:
    """Jobs run without savepoints (SQLite journals every page a savepoint's job touches); a
    refusal that wrote nothing fails alone, and any other failure makes the group run again with
    a savepoint per job, so the good jobs of it commit and the failing one leaves nothing."""
    db = tmp_path / "s.db"
    w = store.Writer(db)
    await w.start()
    statements: list[str] = []
    try:
        refs = await w.persist_catalogue(parse_catalogue(CAT, "c.yaml"), T0 - HOUR)
        web = refs["lab/web"].row_id
        agent, _, _ = await w.register_agent("a1", "lab", "t", "h", 1, T0)
        await w.submit(lambda d: d.conn.set_trace_callback(statements.append))
        first = await w.ingest(agent, 1, 1, 30, rows_for(agent, web, "lab/web", 60, 1, 30), [], T0)
        assert first.inserted == 30 and not any("SAVEPOINT" in s.upper() for s in statements)
        # One group: a good batch, a batch whose chain does not join (refused before writing),
        # a malformed batch (fails after writing its record log), another good batch.
        broken = store.BatchLinks(first_seq=500, prev=b"p", last_seq=510, head=b"h")
        bad = rows_for(agent, web, "lab/web", 60, 61, 30)
        bad[-1] = bad[-1][:-1]
        raw = [(agent, 1, s, s, 2, b"x") for s in range(61, 91)]
        statements.clear()
        results = await asyncio.gather(
            w.ingest(agent, 1, 31, 60, rows_for(agent, web, "lab/web", 60, 31, 30), [], T0),
            w.ingest(agent, 1, 500, 510, [], [], T0, links=broken, agent_name="a1"),
            w.ingest(agent, 1, 61, 90, bad, [], T0, raw=raw),
            w.ingest(agent, 1, 91, 120, rows_for(agent, web, "lab/web", 60, 91, 30), [], T0),
            return_exceptions=True,
        )
        assert any("SAVEPOINT" in s.upper() for s in statements)  # the group ran again with them
        await w.submit(lambda d: d.conn.set_trace_callback(None))
    finally:
        await w.close()
    assert isinstance(results[1], store.ChainRefused)
    assert isinstance(results[2], BaseException) and not isinstance(results[2], store.JobRefused)
    assert [r.inserted for r in results if isinstance(r, store.IngestOutcome)] == [30, 30]
    assert results[3].acked_seq == 60  # type: ignore[union-attr]  # 61..90 never stored: a hole
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT count(*) FROM results").fetchone() == (90,)
        assert record_log.count(c) == 0
        assert c.execute("SELECT sum(n_ok) FROM rollup_day").fetchone() == (90,)
    assert report(db, "rollups") == report(db, "raw")


def test_the_writers_histogram_encoding_is_the_histogram_modules() -> None:
    """``rollups._encode`` and ``_merged`` write the bytes ``histogram.encode`` of the sum writes."""
    import random

    from collector.sla.histogram import add, decode, encode

    rnd = random.Random(5)
    for n in (0, 1, 2, 7, 121, 990):
        hist = {rnd.randrange(990): rnd.randrange(1, 1 << 20) for _ in range(n)}
        assert rollups._encode(hist) == encode(hist)
        stored = encode({rnd.randrange(990): rnd.randrange(1, 1 << 20) for _ in range(rnd.randrange(200))})
        assert rollups._merged(stored, hist) == (encode(add(decode(stored), hist)) if hist else stored)
