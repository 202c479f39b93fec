"""A small world for SLA tests: a real store, a catalogue persisted at a fixed time, results by slot.

Times are fixed instants, never the wall clock. ``World.at(check, i)`` is the i-th scheduled
instant of a check at or after ``World.t0``, so tests speak in slots and the check's offset
(derived from its id) never needs to be known by hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collector import rollups, store
from collector.catalogue import Catalogue, parse_catalogue
from collector.rollups import RawSource, RollupSource
from collector.sla.report import Context, Period, ServiceReport, compliance
from slaprobe.model import Measurement
from slaprobe.schedule import NS_PER_MS, NS_PER_S, next_slot_at_or_after, offset_ns

MINUTE = 60 * NS_PER_S
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()) * NS_PER_S


@dataclass
class Check:
    row: int
    key: str
    interval_ns: int

    @property
    def offset(self) -> int:
        return offset_ns(self.key, self.interval_ns)


class World:
    source = "raw"  # which path reports read unless told: "raw" or "rollups"

    def __init__(self, path: Path, catalogue: str, t0: int, *, persisted_at: int | None = None) -> None:
        self.path = path
        self.t0 = t0
        self.catalogue: Catalogue = parse_catalogue(catalogue, "cat.yaml")
        self.db = store.open_store(path)
        with store.immediate(self.db):
            store._persist_catalogue(self.db, self.catalogue, t0 if persisted_at is None else persisted_at)
        self.checks: dict[str, Check] = {}
        for row, key, name in self.db.execute("SELECT id, key, name FROM checks").fetchall():
            spec = next(c for c in self.catalogue.all_checks() if c.id == key)
            self.checks[name] = Check(int(row), key, spec.interval_ms * NS_PER_MS)
        self.agents: dict[str, int] = {}
        self.seq = 0
        self.pending: list[tuple[Any, ...]] = []
        self.stored: list[tuple[Any, ...]] = []
        self.rollups = rollups.Rollups(store.RESULT_COLUMNS)

    def persist(self, catalogue: str, at_ns: int) -> None:
        """Load another catalogue at ``at_ns`` (new check versions from then on)."""
        self.flush()
        self.catalogue = parse_catalogue(catalogue, "cat.yaml")
        with store.immediate(self.db):
            store._persist_catalogue(self.db, self.catalogue, at_ns)
        for row, key, name in self.db.execute("SELECT id, key, name FROM checks").fetchall():
            spec = next((c for c in self.catalogue.all_checks() if c.id == key), None)
            if spec is not None:
                self.checks[name] = Check(int(row), key, spec.interval_ms * NS_PER_MS)

    def agent(self, name: str, site: str = "lab") -> int:
        if name not in self.agents:
            cur = self.db.execute(
                "INSERT INTO agents (name, site, version, hostname, epoch, first_seen_ns, last_seen_ns)"
                " VALUES (?, ?, 't', 'h', 1, 0, 0)",
                [name, site],
            )
            self.agents[name] = int(cur.lastrowid or 0)
        return self.agents[name]

    def at(self, check: str, i: int, t0: int | None = None) -> int:
        c = self.checks[check]
        return (
            next_slot_at_or_after(self.t0 if t0 is None else t0, c.interval_ns, c.offset) + i * c.interval_ns
        )

    def result(
        self,
        check: str,
        i: int | None = None,
        *,
        ok: bool = True,
        agent: str = "a1",
        ms: float = 10.0,
        kind: str = "",
        degraded: bool = False,
        clock_ms: float = 0.0,
        synced: bool = True,
        phases: Iterable[tuple[str, int]] = (),
        at_ns: int | None = None,
        seq: int | None = None,
    ) -> None:
        if at_ns is None:
            assert i is not None
            scheduled = self.at(check, i)
        else:
            scheduled = at_ns
        if seq is None:
            self.seq += 1
            seq = self.seq
        m = Measurement(
            check_id=self.checks[check].key,
            check_revision="r",
            scheduled_ns=scheduled,
            started_ns=scheduled + 1000,
            duration_ns=round(ms * NS_PER_MS),
            success=ok,
            degraded=degraded,
            error_kind=kind if kind or ok else "refused",
            detail="",
            phases=tuple(phases),
            clock_offset_ns=round(clock_ms * NS_PER_MS),
            clock_synced=synced,
        )
        self.pending.append(store.measurement_row(self.agent(agent), 1, seq, self.checks[check].row, m, 0))

    def results(self, check: str, slots: Iterable[int], **kw: Any) -> None:
        for i in slots:
            self.result(check, i, **kw)

    def gap(self, check: str, from_ns: int, to_ns: int, agent: str = "a1", count: int = 1) -> None:
        self.seq += 1
        self.db.execute(
            "INSERT INTO gaps VALUES (?, 1, ?, ?, ?, ?, ?, ?, 'spool_full', 0, 0)",
            [self.agent(agent), self.seq, self.seq, self.checks[check].row, from_ns, to_ns, count],
        )

    def flush(self, rows: list[tuple[Any, ...]] | None = None) -> int:
        """Store results the way the collector's writer does (rows once, rollups in the same
        transaction); return how many were new."""
        if rows is None:
            rows, self.pending = self.pending, []
        if not rows:
            return 0
        with store.immediate(self.db):
            new = self.rollups.insert(self.db.conn, rows)
            self.rollups.stage(new)
            self.rollups.flush(self.db.conn)
        self.stored += [tuple(r) for r in new]
        return len(new)

    def rebuild(self) -> int:
        with store.immediate(self.db):
            return rollups.rebuild(self.db.conn, store.RESULT_COLUMNS)

    def maintenance(self, from_ns: int, to_ns: int, service: str | None = None, site: str = "lab") -> int:
        return store.add_maintenance(self.db, site, service, from_ns, to_ns, "test", "tester", 0)

    def context(self, now_ns: int, *, source: str | None = None) -> Context:
        source = source or self.source
        self.flush()
        reader = store.Reader(self.path)
        src = RawSource(reader.db.conn) if source == "raw" else RollupSource(reader.db.conn)
        return Context(self.catalogue, reader, src, now_ns, source)

    def report(
        self,
        start_ns: int,
        end_ns: int,
        *,
        now_ns: int | None = None,
        service: str | None = None,
        source: str | None = None,
        with_checks: bool = False,
    ) -> list[ServiceReport]:
        ctx = self.context(end_ns + DAY if now_ns is None else now_ns, source=source)
        period = Period("range", start=_iso(start_ns), end=_iso(end_ns))
        out = compliance(ctx, period, service=service, with_checks=with_checks)
        return [row for site in out for row in site.services]

    def one(self, start_ns: int, end_ns: int, **kw: Any) -> ServiceReport:
        (row,) = self.report(start_ns, end_ns, **kw)
        return row


def _iso(ns: int) -> str:
    assert ns % NS_PER_S == 0, "periods in tests start on whole seconds"
    return datetime.fromtimestamp(ns // NS_PER_S, UTC).isoformat()


def counts(row: ServiceReport, *names: str) -> dict[str, int]:
    return {n: row.counts[n] for n in names} if names else {k: v for k, v in row.counts.items() if v}


def dump(row: ServiceReport) -> str:
    return json.dumps(row.to_dict(), indent=1, default=str)
