"""Microbenchmark: the rollup fold and merge, compiled (slaprobe_speedups._rollups) against Python.

Process CPU per row over 100 batches of 1,000 rows for 1,000 checks at 60 s, in two shapes:
one row a check a batch (a backlog over many checks) and 4 rows a check (bench/ingest.py's
shape: 250 checks a site). Run: ``.venv/bin/python bench/fold.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from collector import rollups
from collector.rollups import HOUR, Hours, Slots, fold_python

S = 10**9
T0 = 1_790_000_000 * S - 1_790_000_000 * S % HOUR
PICK = tuple(range(9))
GRIDS = {c: [(0, 60 * S, (c * 7919) % 60 * S)] for c in range(1, 1001)}


def spread(j: int) -> list[tuple[Any, ...]]:
    """A batch with one row for each of 1,000 checks."""
    return [
        (1 + j % 4, c, T0 + j * 60 * S + (c * 7919) % 60 * S, (i * 7_777) % 10**9, i % 13 != 0, i % 29 == 0,
         "" if i % 13 else "timeout", (i % 5 - 2) * 10**5, True)
        for i in range(1000)
        for c in [1 + (i * 31) % 1000]
    ]  # fmt: skip


def dense(j: int) -> list[tuple[Any, ...]]:
    """A batch of one agent's site: 250 checks, 4 consecutive results each."""
    return [
        (1 + j % 4, c, T0 + (j // 4 * 4 + i // 250) * 60 * S + (c * 7919) % 60 * S, (i * 7_777) % 10**9,
         i % 13 != 0, i % 29 == 0, "" if i % 13 else "timeout", (i % 5 - 2) * 10**5, True)
        for i in range(1000)
        for c in [1 + (j % 4) * 250 + i % 250]
    ]  # fmt: skip


def per_row(run: Callable[[], None], rows: int) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        run()
        best = min(best, time.process_time() - t)
    return best / rows * 1e6


def compare(what: str, python: Callable[[], None], compiled: Callable[[], None] | None, rows: int) -> None:
    """One line: the Python path's µs a row, and the compiled one's where it is installed."""
    line = f"{what}: python {per_row(python, rows):.2f} µs/row"
    if compiled is not None:
        line += f", compiled {per_row(compiled, rows):.2f} µs/row"
    print(line)


def main() -> None:
    compiled = rollups.compiled
    print(f"compiled module: {'installed' if compiled is not None else 'NOT installed (Python only)'}")
    for shape, make in (("1 row a check", spread), ("4 rows a check", dense)):
        batches = [make(j) for j in range(100)]
        n = sum(len(b) for b in batches)

        def fold_all(
            f: Callable[..., Any], batches: list[list[tuple[Any, ...]]] = batches
        ) -> Callable[[], None]:
            def run() -> None:
                for b in batches:
                    f(b, PICK, GRIDS, {}, {})

            return run

        compare(f"fold, {shape}", fold_all(fold_python), fold_all(rollups.fold) if compiled else None, n)
        folds: list[tuple[Slots, Hours]] = []
        for b in batches:
            s: Slots = {}
            h: Hours = {}
            fold_python(b, PICK, GRIDS, s, h)
            folds.append((s, h))

        def merge_all(f: Callable[..., Any], folds: list[tuple[Slots, Hours]] = folds) -> Callable[[], None]:
            def run() -> None:
                slots: Slots = {}
                hours: Hours = {}
                for s, h in folds:
                    f(slots, hours, s, h)

            return run

        compare(
            f"merge, {shape}",
            merge_all(rollups.merge_python),
            merge_all(compiled.merge) if compiled else None,
            n,
        )


if __name__ == "__main__":
    main()
