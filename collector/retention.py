"""The collector enforces ``reporting.retention`` itself, daily, in short writer jobs.

Why in the collector and in small jobs: an operator should not need a cron job for the
database to stay bounded, and one big DELETE of a quarter's results would hold the single
writer (and every agent's acknowledgements) for minutes. So each job deletes at most
``chunk`` raw rows, ingest jobs queue between them, and the signed records that carried the
pruned results go last (``evidence/retention.py``), cut at a seal so what remains verifies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import sqlite_utils

from collector import rollups
from collector.evidence.retention import prune_record_log
from collector.sla.definitions import Reporting
from collector.store import Writer

log = logging.getLogger(__name__)

DAY_NS = 86_400 * 1_000_000_000


async def prune_once(
    writer: Writer, reporting: Reporting, now_ns: int, *, chunk: int = 20_000
) -> dict[str, int]:
    """Apply retention as of ``now_ns``; return what was deleted."""
    raw_before = now_ns - reporting.raw_retention_days * DAY_NS
    rollups_before = now_ns - reporting.rollup_retention_days * DAY_NS
    total = {"results": 0, "rollup rows": 0, "signed records": 0}
    while True:

        def step(db: sqlite_utils.Database) -> dict[str, int]:
            return rollups.prune(db.conn, raw_before, rollups_before, limit=chunk)

        done = await writer.submit(step, rows=chunk)
        total["results"] += done["results"]
        total["rollup rows"] += sum(v for k, v in done.items() if k != "results")
        if done["results"] < chunk:
            break
    total["signed records"] = await writer.submit(lambda db: prune_record_log(db.conn))
    return total


async def retention_loop(
    writer: Writer,
    reporting: Callable[[], Reporting],
    *,
    first_after_s: float = 300.0,
    every_s: float = 86_400.0,
    clock: Callable[[], int] = time.time_ns,
) -> None:
    """Prune ``first_after_s`` after start, then every ``every_s``; never stops the collector."""
    await asyncio.sleep(first_after_s)
    while True:
        try:
            deleted = await prune_once(writer, reporting(), clock())
            if any(deleted.values()):
                log.info("retention: deleted %s", ", ".join(f"{v} {k}" for k, v in deleted.items()))
        except Exception:
            log.exception("retention pass failed; trying again at the next one")
        await asyncio.sleep(every_s)
