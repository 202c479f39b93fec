"""Storage layer for the SLA engine: rollups kept with the results, and the two slot sources.

With ``collector/store.py`` this is the only module that runs SQL. ``store.py`` calls it
from the writer thread (rollup maintenance inside the transaction that stores the rows);
reports read through :class:`RawSource` or :class:`RollupSource`, both implementations of
:class:`collector.sla.engine.Source`, which give the same answers (a property test).

Rollup tables (migration ``0005_rollups``), one row per (check, bucket, agent, interval):

==================  =======================  ====================================================
table               bucket                   holds
==================  =======================  ====================================================
``rollup_minute``   a UTC minute             checks with an interval under a minute only: the
                                             slot bits below, counts, latency, clock
``rollup_hour``     a UTC hour               every check: counts, latency, clock; slot bits for
                                             checks with an interval of a minute or more
``rollup_day``      a UTC day                every check: counts, latency, clock
==================  =======================  ====================================================

Slot bits are exact slot outcomes: bit ``i`` of ``ok_bits`` / ``fail_bits`` / ``deg_bits``
says whether this agent had a successful / failed / degraded result for slot
``first_slot + i`` of the check's grid (``n_due`` slots start in the bucket; at most 60, so
they fit an INTEGER and merge with SQL ``|``). Quorum, slices, maintenance cut at any
minute, gaps: everything is recomputed from them exactly, for any rule, at report time.
Counts are of results (``internal`` ones apart), latency is a sparse histogram over the
fixed buckets of :mod:`collector.sla.histogram`, clock a histogram over the offset ladder.

A bucket whose rows have every due slot ok and nothing failed or degraded is *clean*: all
its slots are up whatever the rule, so reports ask SQL for the clean buckets and only read
the bits of the others. Retention: raw rows for ``reporting.retention.raw``, every rollup
for ``reporting.retention.rollups`` (at least 400 days).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from collector.sla.engine import AgentBits, Part, Summary
from collector.sla.histogram import (
    CLOCK_LADDER_NS,
    LATENCY_EDGES_NS,
    Hist,
    add,
    clock_bucket,
    decode,
    encode,
    latency_bucket,
    merge_blobs,
)
from collector.sla.timeline import Interval
from slaprobe.schedule import NS_PER_MS, offset_ns

if TYPE_CHECKING:
    import sqlite3

INTERNAL = "internal"
NS_PER_S = 1_000_000_000
MINUTE = 60 * NS_PER_S
HOUR = 60 * MINUTE
DAY = 24 * HOUR
LEVELS = (("rollup_minute", MINUTE), ("rollup_hour", HOUR), ("rollup_day", DAY))
ROLLUP_TABLES = tuple(t for t, _ in LEVELS)
CLOCK_FIRST_STEP = CLOCK_LADDER_NS[0]


def bits_level(interval_ns: int) -> tuple[str, int]:
    """Where a check's slot bits live: minute rows below a one-minute interval, hour rows otherwise."""
    return ("rollup_minute", MINUTE) if interval_ns < MINUTE else ("rollup_hour", HOUR)


# ---- schema -----------------------------------------------------------------------------------


def create_tables(conn: sqlite3.Connection) -> None:
    for table in ROLLUP_TABLES:
        conn.execute(
            f"""
            CREATE TABLE {table} (
                check_id INTEGER NOT NULL,
                bucket_ns INTEGER NOT NULL,
                agent_id INTEGER NOT NULL,
                interval_ms INTEGER NOT NULL,
                first_slot INTEGER NOT NULL,
                n_due INTEGER NOT NULL,
                ok_bits INTEGER NOT NULL,
                fail_bits INTEGER NOT NULL,
                deg_bits INTEGER NOT NULL,
                n_ok INTEGER NOT NULL,
                n_fail INTEGER NOT NULL,
                n_internal INTEGER NOT NULL,
                n_unsynced INTEGER NOT NULL,
                lat BLOB,
                clock BLOB,
                PRIMARY KEY (check_id, bucket_ns, agent_id, interval_ms)
            ) WITHOUT ROWID
            """
        )
    conn.execute("CREATE TABLE rollup_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")


def meta(conn: sqlite3.Connection, key: str, default: int = 0) -> int:
    row = conn.execute("SELECT value FROM rollup_meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else int(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute(
        "INSERT INTO rollup_meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


# ---- maintenance (writer thread) ------------------------------------------------------------------


@dataclass
class _Delta:
    first_slot: int = 0
    n_due: int = 0
    ok: int = 0
    fail: int = 0
    deg: int = 0
    n_ok: int = 0
    n_fail: int = 0
    n_internal: int = 0
    n_unsynced: int = 0
    lat: Hist = field(default_factory=dict)
    clock: Hist = field(default_factory=dict)


Grid = tuple[int, int, int]  # (valid_from, interval_ns, offset_ns)


class Rollups:
    """Rollup maintenance for one write connection.

    ``insert`` stores result rows once (``INSERT OR IGNORE``) and returns the rows really
    inserted; ``stage`` queues them; ``flush`` (called before COMMIT, in the same
    transaction) folds everything staged into the rollup tables. A result stored twice is
    inserted once, so it is rolled up once.
    """

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        pos = {c: i for i, c in enumerate(columns)}
        self._pick = tuple(
            pos[c]
            for c in (
                "agent_id",
                "check_id",
                "scheduled_ns",
                "duration_ns",
                "ok",
                "degraded",
                "error_kind",
                "clock_offset_ns",
                "clock_synced",
            )
        )
        self._insert_sql = (
            f"INSERT OR IGNORE INTO results ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        )
        self._staged: list[Sequence[Any]] = []
        self._grids: dict[int, list[Grid]] = {}
        self._generation: tuple[int, int] | None = None
        self._functions: set[int] = set()

    # -- the transaction's side

    def insert(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> list[Sequence[Any]]:
        """Insert result rows, ignoring those already stored; return the ones inserted."""
        if not rows:
            return []
        before = conn.total_changes
        conn.execute("SAVEPOINT rollup_insert")
        conn.executemany(self._insert_sql, rows)
        inserted = conn.total_changes - before
        if inserted == len(rows):
            conn.execute("RELEASE rollup_insert")
            return list(rows)
        if inserted == 0:
            conn.execute("RELEASE rollup_insert")
            return []
        # Some were already stored (a resend overlapping stored records): find out which.
        conn.execute("ROLLBACK TO rollup_insert")
        out = [r for r in rows if conn.execute(self._insert_sql, r).rowcount == 1]
        conn.execute("RELEASE rollup_insert")
        return out

    def stage(self, rows: Iterable[Sequence[Any]]) -> None:
        self._staged.extend(rows)

    def discard(self) -> None:
        self._staged = []

    def flush(self, conn: sqlite3.Connection) -> int:
        """Fold the staged rows into the rollup tables; return how many were folded."""
        rows, self._staged = self._staged, []
        if not rows:
            return 0
        self._refresh_grids(conn)
        deltas = self._aggregate(rows)
        self.write(conn, deltas)
        return len(rows)

    # -- internals

    def _refresh_grids(self, conn: sqlite3.Connection) -> None:
        """Check versions (interval and offset by period), reread when the catalogue changed."""
        gen_row = conn.execute(
            "SELECT max(id), (SELECT count(*) FROM check_versions) FROM catalogue_versions"
        ).fetchone()
        generation = (int(gen_row[0] or 0), int(gen_row[1] or 0))
        if generation == self._generation:
            return
        grids: dict[int, list[Grid]] = {}
        for cid, key, valid_from, interval_ms in conn.execute(
            "SELECT v.check_id, c.key, v.valid_from_ns, v.interval_ms FROM check_versions v"
            " JOIN checks c ON c.id = v.check_id ORDER BY v.check_id, v.valid_from_ns"
        ):
            interval = int(interval_ms) * NS_PER_MS
            grids.setdefault(int(cid), []).append((int(valid_from), interval, offset_ns(key, interval)))
        self._grids = grids
        self._generation = generation

    def _grid(self, check: int, t: int) -> tuple[int, int]:
        versions = self._grids.get(check)
        if not versions:
            raise KeyError(f"check row {check} has no version: persist the catalogue first")
        chosen = versions[0]
        for v in versions:
            if v[0] <= t:
                chosen = v
            else:
                break
        return chosen[1], chosen[2]

    def _grid_end(self, check: int, t: int) -> int:
        """Where the version in force at ``t`` ends (0: it is the last)."""
        for v in self._grids[check]:
            if v[0] > t:
                return v[0]
        return 0

    def _aggregate(self, rows: Iterable[Sequence[Any]]) -> dict[tuple[int, int, int, int, int], _Delta]:
        """Fold rows into deltas: each row once at its fine level, coarser levels from the deltas."""
        ia, ic, it, idur, iok, ideg, ikind, ioff, isync = self._pick
        # check → (interval, offset, interval_ms, fine bucket size); one version: no lookup by time.
        single = {
            c: (v[0][1], v[0][2], v[0][1] // NS_PER_MS, MINUTE if v[0][1] < MINUTE else HOUR)
            for c, v in self._grids.items()
            if len(v) == 1
        }
        # (check, bucket, agent, interval_ms) → [first_slot, n_due, ok, fail, deg,
        #                                         n_ok, n_fail, n_internal, n_unsynced, lat, clock]
        fine: dict[tuple[int, int, int, int], list[Any]] = {}
        edges, last_edge = LATENCY_EDGES_NS, len(LATENCY_EDGES_NS) - 1
        step = CLOCK_FIRST_STEP

        def entry(
            check: int, b: int, agent: int, ims: int, interval: int, offset: int, size: int
        ) -> list[Any]:
            e = fine.get((check, b, agent, ims))
            if e is None:
                first = -((offset - b) // interval)
                e = fine[(check, b, agent, ims)] = [
                    first,
                    -((offset - b - size) // interval) - first,
                    0, 0, 0, 0, 0, 0, 0, {}, {},
                ]  # fmt: skip
            return e

        # Sorted by check, agent and time, consecutive rows share their grid, key and bucket.
        cur_check = cur_agent = -1
        lo = hi = dlo = dhi = 0  # buckets of the scheduled time (counts) and of the slot (bits)
        interval = offset = ims = size = 1
        c: list[Any] = []
        d: list[Any] = []
        grid_until = 0  # where the current version ends (0: the last one)
        for r in sorted(rows, key=itemgetter(ic, ia, it)):
            check, agent, t = r[ic], r[ia], r[it]
            if check != cur_check or agent != cur_agent or (grid_until and t >= grid_until):
                g = single.get(check)
                if g is None:
                    interval, offset = self._grid(check, t)
                    ims, size = interval // NS_PER_MS, MINUTE if interval < MINUTE else HOUR
                    grid_until = self._grid_end(check, t)
                else:
                    interval, offset, ims, size = g
                    grid_until = 0
                cur_check, cur_agent, hi, dhi = check, agent, 0, 0
            k = (t - offset) // interval
            instant = offset + k * interval
            if not lo <= t < hi:
                lo = t - t % size
                hi = lo + size
                c = entry(check, lo, agent, ims, interval, offset, size)
            if not dlo <= instant < dhi:
                dlo = instant - instant % size
                dhi = dlo + size
                d = entry(check, dlo, agent, ims, interval, offset, size)
            if r[ikind] == INTERNAL:
                c[7] += 1
                continue
            bit = 1 << (k - d[0])
            if r[iok]:
                d[2] |= bit
                if r[ideg]:
                    d[4] |= bit
                c[5] += 1
                lat = c[9]
                lb = bisect_left(edges, r[idur])
                if lb > last_edge:
                    lb = last_edge
                lat[lb] = lat.get(lb, 0) + 1
            else:
                d[3] |= bit
                c[6] += 1
            off = r[ioff]
            if not -step <= off <= step:  # bucket 0 (the usual case) is implied: results minus the rest
                clock = c[10]
                cb = clock_bucket(off)
                clock[cb] = clock.get(cb, 0) + 1
            if not r[isync]:
                c[8] += 1
        deltas: dict[tuple[int, int, int, int, int], _Delta] = {}
        for (check, b, agent, ims), v in fine.items():
            level = 0 if ims * NS_PER_MS < MINUTE else 1
            deltas[(level, check, b, agent, ims)] = _Delta(
                v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10]
            )
            coarser = ((1, HOUR), (2, DAY)) if level == 0 else ((2, DAY),)
            for lvl, size in coarser:
                key = (lvl, check, b - b % size, agent, ims)
                e = deltas.get(key)
                if e is None:
                    e = deltas[key] = _Delta()
                e.n_ok += v[5]
                e.n_fail += v[6]
                e.n_internal += v[7]
                e.n_unsynced += v[8]
                add(e.lat, v[9])
                add(e.clock, v[10])
        return deltas

    def write(self, conn: sqlite3.Connection, deltas: dict[tuple[int, int, int, int, int], _Delta]) -> None:
        if id(conn) not in self._functions:
            conn.create_function("hist_merge", 2, merge_blobs, deterministic=True)
            self._functions.add(id(conn))
        by_level: list[list[tuple[Any, ...]]] = [[], [], []]
        for (level, check, bucket, agent, ims), d in deltas.items():
            by_level[level].append(
                (
                    check,
                    bucket,
                    agent,
                    ims,
                    d.first_slot,
                    d.n_due,
                    d.ok,
                    d.fail,
                    d.deg,
                    d.n_ok,
                    d.n_fail,
                    d.n_internal,
                    d.n_unsynced,
                    encode(d.lat),
                    encode(d.clock),
                )
            )
        for (table, _), values in zip(LEVELS, by_level, strict=True):
            if values:
                conn.executemany(_UPSERT.format(table=table), values)


_UPSERT = """
INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (check_id, bucket_ns, agent_id, interval_ms) DO UPDATE SET
    first_slot = CASE WHEN n_due = 0 THEN excluded.first_slot ELSE first_slot END,
    n_due = max(n_due, excluded.n_due),
    ok_bits = ok_bits | excluded.ok_bits,
    fail_bits = fail_bits | excluded.fail_bits,
    deg_bits = deg_bits | excluded.deg_bits,
    n_ok = n_ok + excluded.n_ok,
    n_fail = n_fail + excluded.n_fail,
    n_internal = n_internal + excluded.n_internal,
    n_unsynced = n_unsynced + excluded.n_unsynced,
    lat = CASE WHEN excluded.lat IS NULL THEN lat ELSE hist_merge(lat, excluded.lat) END,
    clock = CASE WHEN excluded.clock IS NULL THEN clock ELSE hist_merge(clock, excluded.clock) END
"""


def rebuild(conn: sqlite3.Connection, columns: Sequence[str], *, chunk: int = 200_000) -> int:
    """Recompute every rollup from the stored results (migration, repair). Returns rows folded."""
    for table in ROLLUP_TABLES:
        conn.execute(f"DELETE FROM {table}")
    r = Rollups(columns)
    done = 0
    last = -1
    select = f"SELECT rowid, {', '.join(columns)} FROM results WHERE rowid > ? ORDER BY rowid LIMIT {chunk}"
    while True:
        batch = conn.execute(select, (last,)).fetchall()
        if not batch:
            return done
        last = batch[-1][0]
        r.stage(row[1:] for row in batch)
        done += r.flush(conn)


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
        # A result belongs to the version in force at its scheduled time, on that version's grid.
        lo = max(part.instant(k0), part.valid_from)
        hi = part.instant(k1) if part.valid_to is None else min(part.instant(k1), part.valid_to)
        cur = self.conn.execute(
            "SELECT agent_id, scheduled_ns, ok, degraded, error_kind FROM results"
            " WHERE check_id = ? AND scheduled_ns >= ? AND scheduled_ns < ?",
            (part.check_row, lo, hi),
        )
        for agent, t, ok, deg, kind in cur:
            if kind == INTERNAL:
                continue
            i = (t - offset) // interval - k0
            if not 0 <= i < width:
                continue
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
        if c:  # bucket 0 (within 1 ms) is implied: results minus the others
            clock[c] = clock.get(c, 0) + 1
        if not synced:
            out.unsynced += 1
    return found


# ---- the rollup source (reports) ---------------------------------------------------------------

_CLEAN = "n_due > 0 AND fail_bits = 0 AND deg_bits = 0 AND ok_bits = (1 << n_due) - 1"


def _buckets(start: int, end: int, size: int) -> range:
    """Buckets of ``size`` that hold instants of [start, end)."""
    first = start - start % size
    return range(first, end, size) if end > start else range(0)


def _decompose(a: int, b: int) -> tuple[list[Interval], list[Interval], list[Interval]]:
    """[a, b) as (whole UTC days, whole hours outside them, the ragged rest)."""
    ha, hb = -(-a // HOUR) * HOUR, b // HOUR * HOUR
    if ha >= hb:
        return [], [], [(a, b)]
    ragged = [(x, y) for x, y in ((a, ha), (hb, b)) if y > x]
    da, db = -(-ha // DAY) * DAY, hb // DAY * DAY
    if da >= db:
        return [], [(ha, hb)], ragged
    hours = [(x, y) for x, y in ((ha, da), (db, hb)) if y > x]
    return [(da, db)], hours, ragged


class RollupSource:
    """Slot outcomes from rollup bits (clean buckets in bulk), summaries from day/hour rollups."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.raw_horizon = meta(conn, "raw_pruned_before_ns")
        self.minute_horizon = meta(conn, "minute_pruned_before_ns")
        self.stats = {"clean_buckets": 0, "dirty_buckets": 0, "raw_pieces": 0, "approximate_pieces": 0}

    def slot_bits(self, part: Part, k0: int, k1: int) -> dict[int, AgentBits]:
        table, size = bits_level(part.interval_ns)
        t0, t1 = part.instant(k0), part.instant(k1)
        buckets = _buckets(t0, t1, size)
        if not buckets:
            return {}
        ims = part.interval_ns // NS_PER_MS
        args = (part.check_row, ims, buckets.start, t1)
        where = "check_id = ? AND interval_ms = ? AND bucket_ns >= ? AND bucket_ns < ?"
        dirty_rows = self.conn.execute(
            f"SELECT bucket_ns, agent_id, first_slot, ok_bits, fail_bits, deg_bits FROM {table}"
            f" WHERE {where} AND bucket_ns IN (SELECT bucket_ns FROM {table} WHERE {where} AND NOT ({_CLEAN}))",
            args + args,
        ).fetchall()
        dirty = {r[0] for r in dirty_rows}
        (present_count,) = self.conn.execute(
            f"SELECT count(DISTINCT bucket_ns) FROM {table} WHERE {where}", args
        ).fetchone()
        if present_count == len(buckets):
            present: Iterable[int] = buckets
        else:
            present = [
                r[0] for r in self.conn.execute(f"SELECT DISTINCT bucket_ns FROM {table} WHERE {where}", args)
            ]
        width = k1 - k0
        full = (1 << width) - 1
        interval, offset = part.interval_ns, part.offset_ns
        clean = 0
        run_start = run_end = None
        n_clean = 0
        for b in present:
            if b in dirty:
                continue
            n_clean += 1
            if run_end is not None and b == run_end:
                run_end = b + size
                continue
            if run_start is not None and run_end is not None:
                clean |= self._slots(run_start, run_end, interval, offset, k0, width)
            run_start, run_end = b, b + size
        if run_start is not None and run_end is not None:
            clean |= self._slots(run_start, run_end, interval, offset, k0, width)
        self.stats["clean_buckets"] += n_clean
        self.stats["dirty_buckets"] += len(dirty)
        out: dict[int, AgentBits] = {}
        if clean:
            out[0] = AgentBits(ok=clean & full)  # agent 0: "every agent saw these slots ok"
        for _, agent, first, ok, fail, deg in dirty_rows:
            shift = first - k0
            a = out.get(agent)
            if a is None:
                a = out[agent] = AgentBits()
            if shift >= 0:
                a.ok |= (ok << shift) & full
                a.fail |= (fail << shift) & full
                a.deg |= (deg << shift) & full
            else:
                a.ok |= (ok >> -shift) & full
                a.fail |= (fail >> -shift) & full
                a.deg |= (deg >> -shift) & full
        return out

    @staticmethod
    def _slots(start: int, end: int, interval: int, offset: int, k0: int, width: int) -> int:
        lo = -((offset - start) // interval) - k0
        hi = -((offset - end) // interval) - k0
        lo, hi = max(lo, 0), min(hi, width)
        return ((1 << (hi - lo)) - 1) << lo if hi > lo else 0

    def gaps(self, check_row: int, start_ns: int, end_ns: int) -> list[Interval]:
        return gap_spans(self.conn, check_row, start_ns, end_ns)

    def summary(self, part: Part, intervals: Sequence[Interval]) -> Summary:
        out = Summary()
        days: list[Interval] = []
        hours: list[Interval] = []
        approx: dict[int, int] = {}  # hour → counted ns, for ragged pieces past raw retention
        for a, b in intervals:
            d, h, ragged = _decompose(a, b)
            days += d
            hours += h
            for x, y in ragged:
                if x >= self.raw_horizon:
                    self.stats["raw_pieces"] += 1
                    raw_summary(self.conn, part.check_row, x, y, out)
                elif part.interval_ns < MINUTE and x >= self.minute_horizon:
                    # Minute rows: the minutes that start inside the piece.
                    self._rows("rollup_minute", part.check_row, -(-x // MINUTE) * MINUTE, y, out)
                    out.approximate |= x % MINUTE != 0 or y % MINUTE != 0
                else:
                    h0 = x - x % HOUR
                    approx[h0] = approx.get(h0, 0) + (y - x)
        for a, b in days:
            self._rows("rollup_day", part.check_row, a, b, out)
        for a, b in hours:
            self._rows("rollup_hour", part.check_row, a, b, out)
        for h0, counted in approx.items():
            self.stats["approximate_pieces"] += 1
            out.approximate = True
            if counted * 2 >= HOUR:
                self._rows("rollup_hour", part.check_row, h0, h0 + HOUR, out)
        return out

    def _rows(self, table: str, check_row: int, a: int, b: int, out: Summary) -> None:
        lat, clock = out.latency, out.clock
        for n_ok, n_fail, n_unsynced, lat_blob, clock_blob in self.conn.execute(
            f"SELECT n_ok, n_fail, n_unsynced, lat, clock FROM {table}"
            " WHERE check_id = ? AND bucket_ns >= ? AND bucket_ns < ?",
            (check_row, a, b),
        ):
            out.results += n_ok + n_fail
            out.unsynced += n_unsynced
            if lat_blob:
                add(lat, decode(lat_blob))
            if clock_blob:
                add(clock, decode(clock_blob))


# ---- retention ------------------------------------------------------------------------------------


def prune(conn: sqlite3.Connection, raw_before_ns: int, rollups_before_ns: int) -> dict[str, int]:
    """Delete raw results scheduled before ``raw_before_ns`` and rollups before ``rollups_before_ns``.

    Check by check, so every delete walks an index range instead of the whole table.
    Records the horizons: reports past them use rollups alone.
    """
    deleted = {"results": 0, **{t: 0 for t in ROLLUP_TABLES}}
    for (cid,) in conn.execute("SELECT id FROM checks").fetchall():
        deleted["results"] += conn.execute(
            "DELETE FROM results WHERE check_id = ? AND scheduled_ns < ?", (cid, raw_before_ns)
        ).rowcount
        for table, size in LEVELS:  # whole buckets only: one straddling the cutoff stays
            deleted[table] += conn.execute(
                f"DELETE FROM {table} WHERE check_id = ? AND bucket_ns <= ?", (cid, rollups_before_ns - size)
            ).rowcount
    set_meta(conn, "raw_pruned_before_ns", max(raw_before_ns, meta(conn, "raw_pruned_before_ns")))
    set_meta(conn, "minute_pruned_before_ns", max(rollups_before_ns, meta(conn, "minute_pruned_before_ns")))
    return deleted
