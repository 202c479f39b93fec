"""The collector applies retention itself, in short writer jobs, while it serves."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from collector.retention import prune_once
from collector.server import Collector, CollectorSettings
from collector.sla.definitions import Reporting
from collector.store import Writer
from tests.sla_world import World, utc

CAT = """
sites:
  lab:
    checks:
      web: {type: http, target: "http://127.0.0.1:1/", interval: 60s, timeout: 5s}
      db: {type: tcp, target: "127.0.0.1:5432", interval: 60s, timeout: 5s}
"""
T0 = utc(2026, 6, 1)


def old_and_new(path: Path) -> None:
    w = World(path, CAT, T0)
    w.results("web", range(100))  # 2026-06-01: older than 90 days by October
    w.results("db", range(50))
    for i in range(20):
        w.result("web", at_ns=w.at("web", i, utc(2026, 10, 1)))
    w.flush()
    w.db.conn.close()


def count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as c:
        return int(c.execute(sql).fetchone()[0])


async def test_prune_deletes_in_chunks_and_keeps_what_is_retained(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    old_and_new(db)
    w = Writer(db)
    await w.start()
    try:
        deleted = await prune_once(w, Reporting(), utc(2026, 10, 2), chunk=7)
        commits_before = w.commits
        again = await prune_once(w, Reporting(), utc(2026, 10, 2), chunk=7)
    finally:
        await w.close()
    assert deleted["results"] == 150
    assert again["results"] == 0 and w.commits - commits_before == 2  # one step and the record_log pass
    assert count(db, "SELECT count(*) FROM results") == 20
    assert count(db, "SELECT min(scheduled_ns) FROM results") >= utc(2026, 10, 1)


async def test_the_collector_prunes_on_its_own(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    old_and_new(db)
    cat = tmp_path / "cat.yaml"
    cat.write_text(CAT)
    c = Collector(
        CollectorSettings(
            cat, db, "127.0.0.1:0", grace_s=1, insecure=True, retention_first_s=0.2, retention_every_s=3600
        )
    )
    await c.start()
    try:
        for _ in range(100):
            if count(db, "SELECT count(*) FROM results") == 20:
                break
            await asyncio.sleep(0.1)
    finally:
        await c.stop()
    assert count(db, "SELECT count(*) FROM results") == 20, "old results were not pruned within 10 s"
