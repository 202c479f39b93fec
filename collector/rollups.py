"""Storage layer for the SLA engine: the raw-row source (and, below, rollups).

With ``collector/store.py`` this is the only module that runs SQL; it is called
from ``store.py`` (rollup maintenance inside the writer's transactions) and by the
SLA engine through the :class:`collector.sla.engine.Source` protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from collector.sla.engine import AgentBits, Part, Summary
from collector.sla.histogram import clock_bucket, latency_bucket
from collector.sla.timeline import Interval

if TYPE_CHECKING:
    import sqlite3

INTERNAL = "internal"


def _bits_to_int(b: bytearray) -> int:
    return int.from_bytes(b, "little")


class RawSource:
    """Slot outcomes and summaries straight from ``results`` (the reference path)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def slot_bits(self, part: Part, k0: int, k1: int) -> dict[int, AgentBits]:
        width = k1 - k0
        size = (width + 7) // 8
        agents: dict[int, tuple[bytearray, bytearray, bytearray]] = {}
        interval, offset = part.interval_ns, part.offset_ns
        cur = self.conn.execute(
            "SELECT agent_id, scheduled_ns, ok, degraded, error_kind FROM results"
            " WHERE check_id = ? AND scheduled_ns >= ? AND scheduled_ns < ?",
            (part.check_row, part.instant(k0), part.instant(k1)),
        )
        for agent, t, ok, deg, kind in cur:
            if kind == INTERNAL:
                continue
            i = (t - offset) // interval - k0
            bufs = agents.get(agent)
            if bufs is None:
                bufs = agents[agent] = (bytearray(size), bytearray(size), bytearray(size))
            bit = 1 << (i & 7)
            if ok:
                bufs[0][i >> 3] |= bit
                if deg:
                    bufs[2][i >> 3] |= bit
            else:
                bufs[1][i >> 3] |= bit
        return {
            a: AgentBits(_bits_to_int(ok), _bits_to_int(fail), _bits_to_int(deg))
            for a, (ok, fail, deg) in agents.items()
        }

    def gaps(self, check_row: int, start_ns: int, end_ns: int) -> list[Interval]:
        return gap_spans(self.conn, check_row, start_ns, end_ns)

    def summary(self, part: Part, intervals: Sequence[Interval]) -> Summary:
        out = Summary()
        for a, b in intervals:
            raw_summary(self.conn, part.check_row, a, b, out)
        return out


def gap_spans(conn: sqlite3.Connection, check_row: int, start_ns: int, end_ns: int) -> list[Interval]:
    """Spool evictions reported for a check, as inclusive [from_ns, to_ns] spans."""
    return [
        (int(a), int(b))
        for a, b in conn.execute(
            "SELECT from_ns, to_ns FROM gaps WHERE check_id = ? AND from_ns < ? AND to_ns >= ?",
            (check_row, end_ns, start_ns),
        )
    ]


def raw_summary(conn: sqlite3.Connection, check_row: int, start_ns: int, end_ns: int, out: Summary) -> bool:
    """Add the results scheduled in [start, end) to ``out``; False when there were none."""
    cur = conn.execute(
        "SELECT ok, duration_ns, error_kind, clock_offset_ns, clock_synced FROM results"
        " WHERE check_id = ? AND scheduled_ns >= ? AND scheduled_ns < ?",
        (check_row, start_ns, end_ns),
    )
    lat, clock = out.latency, out.clock
    found = False
    for ok, duration, kind, offset, synced in cur:
        found = True
        if kind == INTERNAL:
            continue
        out.results += 1
        if ok:
            b = latency_bucket(duration)
            lat[b] = lat.get(b, 0) + 1
        c = clock_bucket(offset)
        clock[c] = clock.get(c, 0) + 1
        if not synced:
            out.unsynced += 1
    return found
