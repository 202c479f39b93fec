"""What rollup maintenance costs the store's ingest path: Writer.ingest with rollups on and off.

No gRPC: batches go straight to ``collector.store.Writer.ingest`` (the writer thread, group
commits, ``synchronous=FULL``), pipelined like the collector's service does, so the
figures isolate the storage side. "off" replaces the rollup maintainer with one that
inserts the rows as before and keeps no rollups.

Run: ``.venv/bin/python bench/rollup_ingest.py [--checks 1000] [--minutes 300] [--runs 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from collector import store
from collector.catalogue import parse_catalogue
from slaprobe.model import Measurement
from slaprobe.schedule import NS_PER_S, next_slot_at_or_after, offset_ns

T0 = 1_791_187_200 * NS_PER_S  # 2026-10-05T08:00Z


class NoRollups:
    """The ingest path as it was before rollups: insert, count, nothing else."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.sql = (
            f"INSERT OR IGNORE INTO results ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        )

    def insert(self, conn: Any, rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
        before = conn.total_changes
        conn.executemany(self.sql, rows)
        return [None] * (conn.total_changes - before)  # type: ignore[list-item]

    def stage(self, rows: Any) -> None:
        pass

    def flush(self, conn: Any) -> int:
        return 0

    def discard(self) -> None:
        pass


def catalogue(checks: int, sites: int) -> str:
    lines = ["sites:"]
    per = checks // sites
    for s in range(sites):
        lines += [f"  s{s}:", "    checks:"]
        lines += [
            f'      c{i}: {{type: tcp, target: "192.0.2.1:{1000 + i}", interval: 1m, timeout: 5s}}'
            for i in range(per)
        ]
    return "\n".join(lines) + "\n"


async def run(path: Path, checks: int, minutes: int, rollups_on: bool, in_flight: int) -> dict[str, float]:
    w = store.Writer(path)
    await w.start()
    if not rollups_on:
        w._rollups = NoRollups(store.RESULT_COLUMNS)  # type: ignore[assignment]
    refs = await w.persist_catalogue(
        parse_catalogue(catalogue(checks, 10), "bench.yaml"), T0 - 3600 * NS_PER_S
    )
    agent, _, _ = await w.register_agent("bench", "s0", "b", "h", 1, T0)
    grid = [(ref.row_id, key, offset_ns(key, 60 * NS_PER_S)) for key, ref in sorted(refs.items())]
    batches = []
    seq = 0
    for m in range(minutes):
        rows = []
        for row_id, key, off in grid:
            seq += 1
            t = next_slot_at_or_after(T0, 60 * NS_PER_S, off) + m * 60 * NS_PER_S
            ok = (seq % 997) != 0
            meas = Measurement(
                key, "r", t, t + 1000, 20_000_000 + seq % 5_000_000, ok, error_kind="" if ok else "refused"
            )
            rows.append(store.measurement_row(agent, 1, seq, row_id, meas, t))
        batches.append((seq - len(rows) + 1, seq, rows))
    sem = asyncio.Semaphore(in_flight)

    async def push(first: int, last: int, rows: list[Any]) -> None:
        async with sem:
            await w.ingest(agent, 1, first, last, rows, [], T0)

    start = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(push(*b) for b in batches))
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    commits = w.commits
    await w.close()
    total = sum(len(b[2]) for b in batches)
    return {
        "rows_per_s": total / wall,
        "cpu_us_per_row": cpu / total * 1e6,
        "wall_s": wall,
        "rows": total,
        "rows_per_commit": total / max(1, commits),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checks", type=int, default=1000)
    ap.add_argument("--minutes", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--in-flight", type=int, default=50, help="batches in flight (the service allows 50)")
    a = ap.parse_args()
    out: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for _ in range(a.runs):
        for mode in ("off", "on"):
            with tempfile.TemporaryDirectory() as d:
                r = asyncio.run(run(Path(d) / "b.db", a.checks, a.minutes, mode == "on", a.in_flight))
                out[mode].append(r)
                print(mode, json.dumps({k: round(v, 1) for k, v in r.items()}), flush=True)
    med = {m: statistics.median(x["rows_per_s"] for x in rs) for m, rs in out.items()}
    cpu = {m: statistics.median(x["cpu_us_per_row"] for x in rs) for m, rs in out.items()}
    print(
        f"median rows/s: rollups off {med['off']:,.0f}, on {med['on']:,.0f}"
        f" ({100 * med['on'] / med['off']:.0f}% of off); CPU per row: off {cpu['off']:.1f} us,"
        f" on {cpu['on']:.1f} us; load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
