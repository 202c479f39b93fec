"""``slaprobe`` with read-only observation hooks, for the ingest benchmark.

Runs exactly what the ``slaprobe`` console script runs (``slaprobe.cli.main``),
after wrapping three collector methods to count and time what they already do:

* ``Writer._commit_group`` (writer thread): rows per transaction, ingest jobs
  per transaction, wall and thread-CPU time per transaction;
* ``CollectorService._accept`` (event loop): wall and thread-CPU time spent
  taking each batch in: decoding and validating it when it is small, else scanning
  its header and sending it to the decode worker (whose CPU is not in this figure);
* ``Writer.close``: after the writer has committed everything and stopped,
  print the figures as one line ``BENCH-STATS {json}`` on stderr.

The hooks add two clock reads per batch and per commit; ``bench/ingest.py
--plain`` runs the unmodified ``slaprobe`` command to check that they do not
change the result.

Usage: ``python bench/collector_shim.py collector serve --catalogue ... --db ...``
"""

# ruff: noqa: E402
from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ comes first on sys.path and bench/agent.py would shadow the agent package.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]

import json
import threading
import time
from typing import Any

from collector.service import CollectorService
from collector.store import Writer

STATS_PREFIX = "BENCH-STATS "

_commits: list[tuple[int, int, int, float, float, float]] = []  # ingest rows, rows, jobs, start, wall, cpu
_accepts: list[tuple[float, float]] = []  # wall, cpu
_writer_tid: list[int] = []
_loop_tid: list[int] = []
_services: list[CollectorService] = []


def _is_ingest(job: Any) -> bool:
    return "Writer.ingest" in getattr(job.apply, "__qualname__", "")


_orig_commit_group = Writer._commit_group


def _commit_group(self: Writer, db: Any, jobs: list[Any]) -> None:
    if not _writer_tid:
        _writer_tid.append(threading.get_native_id())
    start = time.perf_counter()
    cpu = time.thread_time()
    _orig_commit_group(self, db, jobs)
    wall = time.perf_counter() - start
    cpu = time.thread_time() - cpu
    ingest_rows = sum(j.rows for j in jobs if _is_ingest(j))
    _commits.append((ingest_rows, sum(j.rows for j in jobs), len(jobs), start, wall, cpu))


_orig_accept = CollectorService._accept


async def _accept(self: CollectorService, raw: bytes, context: Any, *rest: Any) -> Any:
    if not _loop_tid:
        _loop_tid.append(threading.get_native_id())
        _services.append(self)
    start = time.perf_counter()
    cpu = time.thread_time()
    result = await _orig_accept(self, raw, context, *rest)
    _accepts.append((time.perf_counter() - start, time.thread_time() - cpu))
    return result


_orig_close = Writer.close


async def _close(self: Writer) -> None:
    await _orig_close(self)
    ingest = [c for c in _commits if c[0] > 0]
    stats: dict[str, Any] = {
        "commits": self.commits,
        "rows_committed": self.rows_committed,
        "writer_tid": _writer_tid[0] if _writer_tid else None,
        "loop_tid": _loop_tid[0] if _loop_tid else None,
        # One entry per transaction that stored results: [rows, jobs, start (perf_counter), wall s, cpu s].
        "ingest_commits": [[c[0], c[2], round(c[3], 6), round(c[4], 6), round(c[5], 6)] for c in ingest],
        "accept_batches": len(_accepts),
        "accept_wall_s": sum(a[0] for a in _accepts),
        "accept_cpu_s": sum(a[1] for a in _accepts),
    }
    if _services:  # the collector-wide budget of uncommitted batch bytes (collector/inflight.py)
        budget = _services[0].inflight
        stats["inflight"] = {"limit": budget.limit, "peak": budget.peak, "waits": budget.waits}
    print(STATS_PREFIX + json.dumps(stats, separators=(",", ":")), file=sys.stderr, flush=True)


Writer._commit_group = _commit_group  # type: ignore[method-assign]
CollectorService._accept = _accept  # type: ignore[method-assign,assignment]
Writer.close = _close  # type: ignore[method-assign]

if __name__ == "__main__":
    from slaprobe.cli import main

    main()
