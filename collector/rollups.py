"""Storage layer for the SLA engine: rollups kept with the results, and the two slot sources.

With ``collector/store.py`` this is the only module that runs SQL. ``store.py`` calls it
from the writer thread (rollup maintenance inside the transaction that stores the rows);
reports read through :class:`RawSource` or :class:`RollupSource`, both implementations of
:class:`collector.sla.engine.Source`, which give the same answers (a property test).

Rollup tables (migrations ``0005_rollups``, ``0006_rollup_slots``):

=================  =================================  ===============================================
table              one row per                        holds
=================  =================================  ===============================================
``rollup_slots``   check, agent, interval and 60      exact slot outcomes as bits (below) and a
                   slots' bucket: an hour at 60 s     ``clean`` flag; a partial index lists the rows
                   or slower, 30 min at 30 s, 10 min  that are not clean
                   at 10 s, a minute at 1 s
``rollup_hour``    check, agent, interval, UTC hour   result counts, latency and clock histograms;
                                                      ``present_mask``: the slot buckets of the hour
                                                      that have rows (checks faster than a minute)
``rollup_day``     check, agent, interval, UTC day    the same per day; ``present_mask``: the hours
                                                      whose slot bucket has rows (a minute or slower)
=================  =================================  ===============================================

Slot bits: bit ``i`` of ``ok_bits`` / ``fail_bits`` / ``deg_bits`` says whether this agent had a
successful / failed / degraded result for slot ``first_slot + i`` of the check's grid; ``n_due``
slots start in the bucket (at most 60, so the bits fit an INTEGER and merge with SQL ``|``).
Quorum, slices, maintenance cut at any minute, gaps: everything is recomputed from them
exactly, for any rule, at report time. A row is *clean* when every due slot is ok and nothing
failed or degraded: all its slots are up whatever the rule. Reports list the buckets that
have rows from the presence masks, read the rows that are not clean through the partial index
and never visit the clean ones. Counts are of results (``internal`` ones apart), latency is a
sparse histogram over the fixed buckets of :mod:`collector.sla.histogram`, clock a histogram
over the offset ladder. Retention: raw rows for ``reporting.retention.raw``, every rollup for
``reporting.retention.rollups`` (at least 400 days), both pruned by whole UTC days.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import compress, repeat
from operator import itemgetter
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast, overload

from collector.sla.engine import AgentBits, Part, Summary, runs
from collector.sla.histogram import (
    CLOCK_LADDER_NS,
    LATENCY_EDGES_NS,
    Hist,
    add,
    clock_bucket,
    decode,
    latency_bucket,
    merge_into,
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
ROLLUP_TABLES = ("rollup_slots", "rollup_hour", "rollup_day")
CLOCK_FIRST_STEP = CLOCK_LADDER_NS[0]
_SLOT_BUCKETS = tuple(m * MINUTE for m in (60, 30, 20, 15, 10, 5, 4, 3, 2, 1))  # divisors of an hour


def slot_bucket(interval_ns: int) -> int:
    """The longest bucket dividing an hour that holds at most 60 slots of this interval."""
    for size in _SLOT_BUCKETS:
        if -(-size // interval_ns) <= 60:
            return size
    return MINUTE


# ---- schema -----------------------------------------------------------------------------------


def create_tables(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE rollup_slots (
            check_id INTEGER NOT NULL,
            interval_ms INTEGER NOT NULL,
            bucket_ns INTEGER NOT NULL,
            agent_id INTEGER NOT NULL,
            first_slot INTEGER NOT NULL,
            n_due INTEGER NOT NULL,
            ok_bits INTEGER NOT NULL,
            fail_bits INTEGER NOT NULL,
            deg_bits INTEGER NOT NULL,
            clean INTEGER NOT NULL,
            PRIMARY KEY (check_id, interval_ms, bucket_ns, agent_id)
        ) WITHOUT ROWID
        """
    )
    # Only the rows that are not clean: reports find them without scanning the clean ones.
    conn.execute(
        "CREATE INDEX rollup_slots_dirty ON rollup_slots(check_id, interval_ms, bucket_ns) WHERE clean = 0"
    )
    for table in ("rollup_hour", "rollup_day"):
        conn.execute(
            f"""
            CREATE TABLE {table} (
                check_id INTEGER NOT NULL,
                bucket_ns INTEGER NOT NULL,
                agent_id INTEGER NOT NULL,
                interval_ms INTEGER NOT NULL,
                n_ok INTEGER NOT NULL,
                n_fail INTEGER NOT NULL,
                n_internal INTEGER NOT NULL,
                n_unsynced INTEGER NOT NULL,
                lat BLOB,
                clock BLOB,
                present_mask INTEGER NOT NULL,
                PRIMARY KEY (check_id, bucket_ns, agent_id, interval_ms)
            ) WITHOUT ROWID
            """
        )
    conn.execute("CREATE TABLE IF NOT EXISTS rollup_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")


def upgrade_tables(conn: sqlite3.Connection) -> bool:
    """Replace rollup tables of an earlier layout (the first 0005); False when already current."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "rollup_slots" in tables:
        return False
    for table in ("rollup_minute", "rollup_hour", "rollup_day"):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    create_tables(conn)
    return True


def meta(conn: sqlite3.Connection, key: str, default: int = 0) -> int:
    row = conn.execute("SELECT value FROM rollup_meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else int(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
    conn.execute(
        "INSERT INTO rollup_meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


# ---- maintenance (writer thread) ------------------------------------------------------------------


SlotKey = tuple[int, int, int, int]  # (check, interval_ms, bucket, agent)
CountKey = tuple[int, int, int, int]  # (check, bucket, agent, interval_ms)
Grid = tuple[int, int, int]  # (valid_from, interval_ns, offset_ns)
Slots = dict[SlotKey, list[int]]  # → [first_slot, n_due, ok, fail, deg]
Hours = dict[CountKey, list[Any]]  # → [n_ok, n_fail, n_internal, n_unsynced, lat, clock, present]
Folded = tuple[tuple[int, int], Slots, Hours]  # the grids' generation, and a fold made with them


ROWS_PER_STATEMENT = 500
compiled_store: ModuleType | None  # the compiled bulk insert (speedups/_store.c), where it is built
try:
    from slaprobe_speedups import _store as compiled_store
except ImportError:  # pragma: no cover - a machine without a C compiler
    compiled_store = None
# Below this largest rowid a new row's rowid is always the largest plus one (SQLite picks random
# unused ones only once the largest is 2**63 - 1): :meth:`Rollups.insert` relies on it.
_ROWID_HEADROOM = 1 << 62
_values_cache: dict[tuple[int, int], str] = {}


class Columns(Sequence[tuple[Any, ...]]):
    """Rows held by column, as the decode worker sends them back (integer arrays, string lists).

    Why: :func:`insert_many` binds a statement's parameters straight from the columns
    (``zip`` and ``chain`` in C), so nobody builds a tuple per row on the ingest path; the
    tuples exist only if something asks for rows (a fold, a resend that overlapped stored
    rows), and then once.
    """

    __slots__ = ("_n", "_rows", "columns")

    def __init__(self, columns: Sequence[Sequence[Any]]) -> None:
        self.columns = columns
        self._n = len(columns[0]) if columns else 0
        if any(len(c) != self._n for c in columns):
            raise ValueError("columns of different lengths")
        self._rows: list[tuple[Any, ...]] | None = None

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows) if self._rows is not None else zip(*self.columns, strict=True)

    @overload
    def __getitem__(self, i: int) -> tuple[Any, ...]: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[tuple[Any, ...]]: ...
    def __getitem__(self, i: int | slice) -> tuple[Any, ...] | Sequence[tuple[Any, ...]]:
        if self._rows is None:
            self._rows = list(zip(*self.columns, strict=True))
        return self._rows[i]

    def params(self, start: int, stop: int) -> list[Any]:
        """The flat parameters of rows ``start``..``stop - 1``, row after row.

        Each column goes into every ``width``-th place of one list by slice assignment (C loops,
        no tuple per row): ~20% less than zipping the columns and flattening the tuples.
        """
        columns = self.columns
        width = len(columns)
        out: list[Any] = [None] * (width * (min(stop, self._n) - start))
        for j, c in enumerate(columns):
            out[j::width] = c[start:stop]
        return out


def insert_many(
    conn: sqlite3.Connection,
    one_sql: str,
    many_sql: str,
    width: int,
    rows: Sequence[Sequence[Any]],
    tail: str = "",
) -> None:
    """``executemany(one_sql, rows)``: compiled where built (``speedups/src/_store.c``, every row
    bound and stepped with the GIL released once), else as statements of up to
    ``ROWS_PER_STATEMENT`` rows each.

    Why: ``executemany`` steps the statement once per row and gives the GIL up and takes it back
    at every step; with the event loop decoding on the same GIL, the writer waited for it once
    per row. One statement of 500 rows binds under the GIL, then inserts them all in one step
    without it. ``many_sql`` is ``one_sql`` up to ``VALUES``, ``tail`` what follows the values
    (an upsert's ``ON CONFLICT`` clause). Same effect, same constraints: rows that ``OR IGNORE``
    drops are dropped alike, a row whose key an earlier one inserted updates it.
    """
    n = len(rows)
    step = ROWS_PER_STATEMENT
    by_column = rows if isinstance(rows, Columns) else None
    if by_column is not None and len(by_column.columns) != width:
        raise ValueError(f"rows of {width} values expected")
    if compiled_store is not None and n:
        # Compiled (speedups/_store.c): every row bound and stepped with the GIL released once.
        if by_column is not None:
            done = compiled_store.execute_columns(conn, one_sql, by_column.columns, 0, n)
        else:
            done = compiled_store.execute_rows(conn, one_sql, width, rows)
        if done is not NotImplemented:
            return
    if n < 8:
        conn.executemany(one_sql, rows)
        return
    for i in range(0, n, step):
        k = min(step, n - i)
        values = _values_cache.get((width, k))
        if values is None:
            values = _values_cache[(width, k)] = ",".join(["(" + ",".join("?" * width) + ")"] * k)
        if by_column is not None:
            params = by_column.params(i, i + k)
        else:
            chunk = rows[i : i + step]
            if any(len(row) != width for row in chunk):
                raise ValueError(f"rows of {width} values expected")
            params = [v for row in chunk for v in row]
        conn.execute(many_sql + values + tail, params)


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
        self._key = (pos["agent_id"], pos["epoch"], pos["seq"])
        self._insert_sql = (
            f"INSERT OR IGNORE INTO results ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        )
        self._multi_sql = f"INSERT OR IGNORE INTO results ({', '.join(columns)}) VALUES "
        self._staged: list[Sequence[Any]] = []
        self._staged_columns: list[Columns] = []
        self._folded: list[tuple[Folded, Sequence[Sequence[Any]]]] = []
        self._grids: dict[int, list[Grid]] = {}
        self._generation: tuple[int, int] | None = None
        # (generation, grids), replaced whole: other threads may read it to fold rows elsewhere.
        self.snapshot: tuple[tuple[int, int], dict[int, list[Grid]]] | None = None

    # -- the transaction's side

    def insert(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
        """Insert result rows, ignoring those already stored; return the ones inserted.

        Which rows a resend's partly stored batch really inserted is read back by rowid (a new
        row's rowid is one past the table's largest), not found by a savepoint and a rollback:
        while a savepoint is open SQLite copies every page the insert touches into a statement
        journal first (a temporary file), ~7% of the writer's time in a profile of the ingest
        benchmark. Near the largest rowid SQLite may pick random ones: then the savepoint way.
        """
        if not rows:
            return []
        (last,) = conn.execute("SELECT max(rowid) FROM results").fetchone()
        if last is not None and last >= _ROWID_HEADROOM:
            return self._insert_savepoint(conn, rows)
        before = conn.total_changes
        insert_many(conn, self._insert_sql, self._multi_sql, len(self.columns), rows)
        inserted = conn.total_changes - before
        if inserted == len(rows):
            return rows
        if inserted == 0:
            return []
        # Some were already stored (a resend overlapping stored records): the new ones are those
        # with a rowid past the old last one; the first row of a key is the one inserted.
        ia, ie, iseq = self._key
        new = set(conn.execute("SELECT agent_id, epoch, seq FROM results WHERE rowid > ?", (last or 0,)))
        out = []
        for r in rows:
            key = (r[ia], r[ie], r[iseq])
            if key in new:
                new.discard(key)
                out.append(r)
        return out

    def _insert_savepoint(
        self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]
    ) -> Sequence[Sequence[Any]]:
        """:meth:`insert` for a table whose rowids may not grow: try all, redo row by row if some
        were stored before."""
        before = conn.total_changes
        conn.execute("SAVEPOINT rollup_insert")
        insert_many(conn, self._insert_sql, self._multi_sql, len(self.columns), rows)
        inserted = conn.total_changes - before
        if inserted == len(rows):
            conn.execute("RELEASE rollup_insert")
            return rows
        if inserted == 0:
            conn.execute("RELEASE rollup_insert")
            return []
        conn.execute("ROLLBACK TO rollup_insert")
        out = [r for r in rows if conn.execute(self._insert_sql, r).rowcount == 1]
        conn.execute("RELEASE rollup_insert")
        return out

    def stage(self, rows: Iterable[Sequence[Any]]) -> None:
        if isinstance(rows, Columns) and _fold_columns is not None:
            self._staged_columns.append(rows)  # folded from its columns: no tuple per row
        else:
            self._staged.extend(rows)

    def stage_folded(self, folded: Folded, rows: Sequence[Sequence[Any]]) -> None:
        """Stage rows already folded (elsewhere, with the grids of ``snapshot``); ``rows`` must be
        exactly the rows folded and all of them inserted. If the grids changed before the flush,
        the rows are folded again with the new ones."""
        self._folded.append((folded, rows))

    def discard(self) -> None:
        self._staged = []
        self._staged_columns = []
        self._folded = []

    def flush(self, conn: sqlite3.Connection) -> int:
        """Fold the staged rows into the rollup tables; return how many were folded."""
        rows, self._staged = self._staged, []
        by_column, self._staged_columns = self._staged_columns, []
        folded, self._folded = self._folded, []
        if not rows and not folded and not by_column:
            return 0
        self.refresh_grids(conn)
        slots: Slots = {}
        hours: Hours = {}
        n = len(rows)
        for staged in by_column:
            n += len(staged)
            if not fold_columns(staged, self._pick, self._grids, slots, hours):
                rows.extend(staged)
        for (generation, more_slots, more_hours), folded_rows in folded:
            if generation == self._generation:
                merge(slots, hours, more_slots, more_hours)
            else:  # the catalogue changed since: fold them with the grids in force
                rows.extend(folded_rows)
            n += len(folded_rows)
        fold(rows, self._pick, self._grids, slots, hours)
        self.write(conn, slots, *finish(slots, hours))
        return n

    @property
    def pick(self) -> tuple[int, ...]:
        """The positions in a row of the columns :func:`fold` reads."""
        return self._pick

    # -- internals

    def refresh_grids(self, conn: sqlite3.Connection) -> None:
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
        self.snapshot = (generation, grids)

    def _aggregate(self, rows: Iterable[Sequence[Any]]) -> tuple[Slots, Hours, Hours]:
        """Fold rows: slot bits per 60-slot bucket, counts per hour; days from the hours."""
        slots: Slots = {}
        hours: Hours = {}
        fold(rows, self._pick, self._grids, slots, hours)
        return (slots, *finish(slots, hours))

    def write(self, conn: sqlite3.Connection, slots: Slots, hours: Hours, days: Hours) -> None:
        """Upsert folded slot bits, hour and day counts (:func:`finish`) in the caller's transaction.

        Histograms are merged here, in Python, with the stored ones read first (one indexed
        lookup per statement of keys): an SQL merge function would be a Python callback per
        upserted row, each taking the GIL back from inside the statement. The writer holds the
        write lock, so nothing changes the rows between the read and the upsert.
        """
        if slots:
            insert_many(
                conn,
                _UPSERT_SLOTS,
                _SLOTS_HEAD,
                10,
                [
                    (check, ims, b, agent, first, n_due, ok, fail, deg,
                     int(not fail and not deg and ok == (1 << n_due) - 1))
                    for (check, ims, b, agent), (first, n_due, ok, fail, deg) in slots.items()
                ],
                _SLOTS_TAIL,
            )  # fmt: skip
        for table, counts in (("rollup_hour", hours), ("rollup_day", days)):
            if not counts:
                continue
            stored = _stored_histograms(conn, table, [key for key, v in counts.items() if v[4] or v[5]])
            rows = []
            for key, (n_ok, n_fail, n_internal, n_unsynced, lat, clock, present) in counts.items():
                old = stored.get(key)
                if old is not None:  # the row exists: write the sum (NULL keeps the stored blob)
                    lat_blob = _merged(old[0], lat)
                    clock_blob = _merged(old[1], clock)
                else:  # _merged(None, h) is _encode(h)
                    lat_blob, clock_blob = _merged(None, lat), _merged(None, clock)
                rows.append((*key, n_ok, n_fail, n_internal, n_unsynced, lat_blob, clock_blob, present))
            insert_many(
                conn,
                _UPSERT_COUNTS.format(table=table),
                f"INSERT INTO {table} VALUES ",
                11,
                rows,
                _COUNTS_TAIL,
            )


_KEYS_PER_LOOKUP = 500
_lookup_cache: dict[tuple[str, int], str] = {}


def _stored_histograms(
    conn: sqlite3.Connection, table: str, keys: Sequence[CountKey]
) -> dict[CountKey, tuple[bytes | None, bytes | None]]:
    """The stored (lat, clock) blobs of those of ``keys`` that have a row in ``table``.

    The keys join the primary key from a VALUES list (``(a, b) IN (VALUES ...)`` would scan the
    table in SQLite 3.40), so each is one b-tree search, on pages the upsert visits next anyway.
    """
    out: dict[CountKey, tuple[bytes | None, bytes | None]] = {}
    for i in range(0, len(keys), _KEYS_PER_LOOKUP):
        chunk = keys[i : i + _KEYS_PER_LOOKUP]
        sql = _lookup_cache.get((table, len(chunk)))
        if sql is None:
            sql = _lookup_cache[(table, len(chunk))] = (
                "WITH k(c, b, a, i) AS (VALUES " + ",".join(["(?,?,?,?)"] * len(chunk)) + ")"
                f" SELECT t.check_id, t.bucket_ns, t.agent_id, t.interval_ms, t.lat, t.clock FROM k"
                f" JOIN {table} t ON t.check_id = k.c AND t.bucket_ns = k.b AND t.agent_id = k.a"
                " AND t.interval_ms = k.i"
            )
        for check, b, agent, ims, lat, clock in conn.execute(sql, [v for key in chunk for v in key]):
            out[(check, b, agent, ims)] = (lat, clock)
    return out


def _merged(stored: bytes | None, hist: Hist) -> bytes | None:
    """The encoded sum of a stored histogram blob (None: no row yet) and a new histogram.

    Compiled where built (``slaprobe_speedups._rollups.merged_blob``, one merge of two sorted
    runs instead of a dict, a sum and a sort: ~10% of the writer's time in the ingest benchmark);
    it answers NotImplemented for anything it would not answer alike, and this runs instead.
    """
    if _merged_blob is not None and type(hist) is dict:
        out = _merged_blob(stored, hist)
        if out is not NotImplemented:
            return cast("bytes | None", out)
    return _merged_python(stored, hist)


def _merged_python(stored: bytes | None, hist: Hist) -> bytes | None:
    """:func:`_merged` in Python: the reference, and the path where the compiled one is not built."""
    if not hist:
        return stored
    if not stored:
        return _encode(hist)
    summed = decode(stored)
    get = summed.get
    for k, v in hist.items():
        summed[k] = get(k, 0) + v
    return _encode(summed)


def _encode(hist: Hist) -> bytes | None:
    """``histogram.encode``, byte for byte (a test holds them equal), for the writer's rollup flush.

    Why a second one: it sorts the bucket numbers alone and fills the pairs by slice assignment;
    sorting the (bucket, count) tuples and building the array from a flattening iterator cost
    2.4 times as much (121 buckets, a day row's: 26 -> 11 µs), and the flush encodes one or two
    histograms per hour and day row of every check of a group (~7% of the writer).
    """
    if not hist:
        return None
    keys = sorted(hist)
    pairs = [0] * (2 * len(keys))
    pairs[0::2] = keys
    pairs[1::2] = map(hist.__getitem__, keys)
    return array("I", pairs).tobytes()


compiled: ModuleType | None  # the compiled fold (speedups/), where it is built; the same answers
try:
    from slaprobe_speedups import _rollups as compiled
except ImportError:  # pragma: no cover - a machine without a C compiler
    compiled = None
if compiled is not None:
    compiled.configure(LATENCY_EDGES_NS, CLOCK_LADDER_NS, INTERNAL)
# A build from before merged_blob existed has none: the Python path then.
_merged_blob = getattr(compiled, "merged_blob", None)
_fold_columns = getattr(compiled, "fold_columns", None)


def fold_columns(
    rows: Columns, pick: Sequence[int], grids: Mapping[int, list[Grid]], slots: Slots, hours: Hours
) -> bool:
    """:func:`fold` of rows held by column, compiled, reading the picked columns where they are
    (no tuple per row); False when it did not fold them (not built, or values it does not take:
    nothing changed), and the caller folds them as rows."""
    if _fold_columns is None or type(grids) is not dict or type(slots) is not dict or type(hours) is not dict:
        return False
    picked = [rows.columns[i] for i in pick]
    return _fold_columns(picked, grids, slots, hours, _grid, _grid_end) is not NotImplemented


def fold(
    rows: Iterable[Sequence[Any]],
    pick: Sequence[int],
    grids: Mapping[int, list[Grid]],
    slots: Slots,
    hours: Hours,
) -> None:
    """Fold result rows into slot bits per 60-slot bucket and counts per hour (into ``slots``, ``hours``).

    A fold: rows folded in any grouping and then merged (:func:`merge`) give the same dicts, so a
    batch can be folded where it is decoded and merged by the writer. Every stored result passes
    here, so the compiled fold runs when installed (a quarter of the Python loop's time or less); it takes
    rows of plain ints, bools and strs in dicts, and hands anything else back (NotImplemented)
    before changing anything.
    """
    if compiled is not None and type(grids) is dict and type(slots) is dict and type(hours) is dict:
        listed = rows if type(rows) is list else list(rows)
        if compiled.fold(listed, pick, grids, slots, hours, _grid, _grid_end) is not NotImplemented:
            return
        rows = listed
    fold_python(rows, pick, grids, slots, hours)


def fold_python(
    rows: Iterable[Sequence[Any]],
    pick: Sequence[int],
    grids: Mapping[int, list[Grid]],
    slots: Slots,
    hours: Hours,
) -> None:
    """:func:`fold` in Python: the reference, and the path where the compiled one is not built."""
    ia, ic, it, idur, iok, ideg, ikind, ioff, isync = pick
    # check → (interval, offset, interval_ms, slot bucket); one version: no lookup by time.
    single = {
        c: (v[0][1], v[0][2], v[0][1] // NS_PER_MS, slot_bucket(v[0][1]))
        for c, v in grids.items()
        if len(v) == 1
    }
    edges, last_edge = LATENCY_EDGES_NS, len(LATENCY_EDGES_NS) - 1
    step = CLOCK_FIRST_STEP
    # Sorted by check, agent and time, consecutive rows share their grid, keys and buckets.
    cur_check = cur_agent = -1
    lo = hi = slo = shi = 0  # the hour of the scheduled time; the slot bucket
    interval = offset = ims = size = 1
    c: list[Any] = []
    d: list[int] = []
    grid_until = 0  # where the current version ends (0: the last one)
    for r in sorted(rows, key=itemgetter(ic, ia, it)):
        check, agent, t = r[ic], r[ia], r[it]
        if check != cur_check or agent != cur_agent or (grid_until and t >= grid_until):
            g = single.get(check)
            if g is None:
                interval, offset = _grid(grids, check, t)
                ims, size = interval // NS_PER_MS, slot_bucket(interval)
                grid_until = _grid_end(grids, check, t)
            else:
                interval, offset, ims, size = g
                grid_until = 0
            cur_check, cur_agent, hi, shi = check, agent, 0, 0
        if not lo <= t < hi:
            lo = t - t % HOUR
            hi = lo + HOUR
            found = hours.get((check, lo, agent, ims))
            if found is None:
                found = hours[(check, lo, agent, ims)] = [0, 0, 0, 0, {}, {}, 0]
            c = found
        if r[ikind] == INTERNAL:
            c[2] += 1
            continue
        k = (t - offset) // interval
        instant = offset + k * interval
        if not slo <= instant < shi:
            slo = instant - instant % size
            shi = slo + size
            known = slots.get((check, ims, slo, agent))
            if known is None:
                first = -((offset - slo) // interval)
                n_due = -((offset - shi) // interval) - first
                known = slots[(check, ims, slo, agent)] = [first, n_due, 0, 0, 0]
            d = known
        bit = 1 << (k - d[0])
        if r[iok]:
            d[2] |= bit
            if r[ideg]:
                d[4] |= bit
            c[0] += 1
            lat = c[4]
            lb = bisect_left(edges, r[idur])
            if lb > last_edge:
                lb = last_edge
            lat[lb] = lat.get(lb, 0) + 1
        else:
            d[3] |= bit
            c[1] += 1
        off = r[ioff]
        if not -step <= off <= step:  # bucket 0 (the usual case) is implied: results minus the rest
            clock = c[5]
            cb = clock_bucket(off)
            clock[cb] = clock.get(cb, 0) + 1
        if not r[isync]:
            c[3] += 1


def finish(slots: Slots, hours: Hours) -> tuple[Hours, Hours]:
    """The hour counts (``hours`` itself, updated) and day counts summed from them, with the
    presence masks from the slot buckets (on the parent row: the hour, or the day)."""
    days: Hours = {}
    for (check, b, agent, ims), v in hours.items():
        v[6] = 0
        key = (check, b - b % DAY, agent, ims)
        e = days.get(key)
        if e is None:
            days[key] = [v[0], v[1], v[2], v[3], dict(v[4]), dict(v[5]), 0]
        else:
            _add_counts(e, v)
    sizes: dict[int, int] = {}
    for check, ims, b, agent in slots:
        size = sizes.get(ims)
        if size is None:
            size = sizes[ims] = slot_bucket(ims * NS_PER_MS)
        target, parent = (days, DAY) if size == HOUR else (hours, HOUR)
        key = (check, b - b % parent, agent, ims)
        e = target.get(key)
        if e is None:
            e = target[key] = [0, 0, 0, 0, {}, {}, 0]
        e[6] |= 1 << (b % parent // size)
    return hours, days


def merge(slots: Slots, hours: Hours, more_slots: Slots, more_hours: Hours) -> None:
    """Merge one fold into another (bits OR-ed, counts and histograms added).

    The writer merges every batch the decode worker folded: compiled where built.
    """
    if compiled is not None and all(type(d) is dict for d in (slots, hours, more_slots, more_hours)):
        compiled.merge(slots, hours, more_slots, more_hours)
        return
    merge_python(slots, hours, more_slots, more_hours)


def merge_python(slots: Slots, hours: Hours, more_slots: Slots, more_hours: Hours) -> None:
    """:func:`merge` in Python: the reference, and the path where the compiled one is not built."""
    for key, v in more_slots.items():
        d = slots.get(key)
        if d is None:
            slots[key] = list(v)
        else:
            d[2] |= v[2]
            d[3] |= v[3]
            d[4] |= v[4]
    for key, h in more_hours.items():
        c = hours.get(key)
        if c is None:
            hours[key] = [h[0], h[1], h[2], h[3], dict(h[4]), dict(h[5]), h[6]]
            continue
        # _add_counts, written out: this runs for every check of every batch a group merges.
        c[0] += h[0]
        c[1] += h[1]
        c[2] += h[2]
        c[3] += h[3]
        into = c[4]
        get = into.get
        for k, v in h[4].items():
            into[k] = get(k, 0) + v
        if h[5]:
            into = c[5]
            get = into.get
            for k, v in h[5].items():
                into[k] = get(k, 0) + v


def _add_counts(into: list[Any], more: list[Any]) -> None:
    """Add one aggregate's counts and histograms to another's (the presence mask is the caller's)."""
    into[0] += more[0]
    into[1] += more[1]
    into[2] += more[2]
    into[3] += more[3]
    add(into[4], more[4])
    add(into[5], more[5])


def _grid(grids: Mapping[int, list[Grid]], check: int, t: int) -> tuple[int, int]:
    versions = grids.get(check)
    if not versions:
        raise KeyError(f"check row {check} has no version: persist the catalogue first")
    chosen = versions[0]
    for v in versions:
        if v[0] <= t:
            chosen = v
        else:
            break
    return chosen[1], chosen[2]


def _grid_end(grids: Mapping[int, list[Grid]], check: int, t: int) -> int:
    """Where the version in force at ``t`` ends (0: it is the last)."""
    for v in grids[check]:
        if v[0] > t:
            return v[0]
    return 0


_SLOTS_HEAD = "INSERT INTO rollup_slots VALUES "
_SLOTS_TAIL = """
ON CONFLICT (check_id, interval_ms, bucket_ns, agent_id) DO UPDATE SET
    ok_bits = ok_bits | excluded.ok_bits,
    fail_bits = fail_bits | excluded.fail_bits,
    deg_bits = deg_bits | excluded.deg_bits,
    clean = (fail_bits | excluded.fail_bits) = 0
        AND (deg_bits | excluded.deg_bits) = 0
        AND (ok_bits | excluded.ok_bits) = (1 << n_due) - 1
"""
_UPSERT_SLOTS = _SLOTS_HEAD + "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" + _SLOTS_TAIL

_COUNTS_TAIL = """
ON CONFLICT (check_id, bucket_ns, agent_id, interval_ms) DO UPDATE SET
    n_ok = n_ok + excluded.n_ok,
    n_fail = n_fail + excluded.n_fail,
    n_internal = n_internal + excluded.n_internal,
    n_unsynced = n_unsynced + excluded.n_unsynced,
    lat = coalesce(excluded.lat, lat),
    clock = coalesce(excluded.clock, clock),
    present_mask = present_mask | excluded.present_mask
"""
_UPSERT_COUNTS = "INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" + _COUNTS_TAIL


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


# ---- the raw source (the reference path) -----------------------------------------------------------


_ONE = ord("1")


def _positions_to_int(width: int, positions: Iterable[int]) -> int:
    """An int whose bit ``width - 1 - p`` is set for each of the ``positions``.

    C loops only: the positions are written as ``"1"`` into a string of ``width`` binary digits
    (``map`` over ``bytearray.__setitem__``), which ``int(..., 2)`` reads: ~0.1 µs a row, where a
    Python statement per row costs ten times that (a month of one site is 2.2 M rows).
    """
    digits = bytearray(b"0") * width
    deque(map(digits.__setitem__, positions, repeat(_ONE)), 0)
    return int(digits, 2)


class RawSource:
    """Slot outcomes and summaries straight from ``results`` (the reference path).

    Why no Python statement per row: a report reads every row of the period (a month of one
    site: 2.2 M), and a Python loop costs ~1-2 µs a row for the slot bits and ~3-7 µs for the
    summary's histograms. SQL filters and groups the rows (slot positions as one string per
    agent and outcome), and the rest is C loops (``map``, ``itertools.compress``, ``Counter``)
    over columns, with the same rules row by row as the reference loop kept in ``raw_summary``
    and held equal to it by tests. ``tables``: where the rows are (evidence verify: the
    pieces' databases, each read on its own index); the answer is that of their union.
    """

    def __init__(self, conn: sqlite3.Connection, tables: Sequence[str] = ("results",)) -> None:
        self.conn = conn
        self.tables = tuple(tables)

    def slot_bits(self, part: Part, k0: int, k1: int) -> dict[int, AgentBits]:
        width = k1 - k0
        if width <= 0:
            return {}
        interval = part.interval_ns
        # A result belongs to the version in force at its scheduled time, on that version's grid.
        base = part.instant(k0)
        lo = max(base, part.valid_from)
        hi = part.instant(k1) if part.valid_to is None else min(part.instant(k1), part.valid_to)
        # Slot k0 + i of a row is (t - base) // interval with t - base >= 0 (SQL's division then
        # floors too) and < width; written as the binary digit width - 1 - i. Per agent, the
        # positions of ok results, of ok and degraded ones, of failed ones (internal: no result).
        agents: dict[int, list[int]] = {}
        for table in self.tables:
            for agent, ok, deg, positions in self.conn.execute(
                "SELECT agent_id, ok != 0, ok != 0 AND degraded != 0, group_concat(? - (scheduled_ns - ?) / ?)"
                f" FROM {table} WHERE check_id = ? AND scheduled_ns >= ? AND scheduled_ns < ?"
                " AND error_kind != ? GROUP BY 1, 2, 3",
                (width - 1, base, interval, part.check_row, lo, hi, INTERNAL),
            ):
                bits = _positions_to_int(width, map(int, positions.split(",")))
                got = agents.get(agent)
                if got is None:
                    got = agents[agent] = [0, 0, 0]
                if ok:
                    got[0] |= bits
                    if deg:
                        got[2] |= bits
                else:
                    got[1] |= bits
        return {a: AgentBits(ok, fail, deg) for a, (ok, fail, deg) in agents.items()}

    def gaps(self, check_row: int, start_ns: int, end_ns: int) -> list[Interval]:
        return gap_spans(self.conn, check_row, start_ns, end_ns)

    def summary(self, part: Part, intervals: Sequence[Interval]) -> Summary:
        out = Summary()
        for a, b in intervals:
            if b > a:
                out.add(self.summaries(part, [a, b])[0])
        return out

    def summaries(self, part: Part, edges: Sequence[int]) -> list[Summary]:
        """The summaries of the consecutive pieces [edges[i], edges[i + 1]), from one read of the rows."""
        return raw_summaries(self.conn, part.check_row, edges, self.tables)


def gap_spans(conn: sqlite3.Connection, check_row: int, start_ns: int, end_ns: int) -> list[Interval]:
    """Spool evictions reported for a check, as inclusive [from_ns, to_ns] spans."""
    return [
        (int(a), int(b))
        for a, b in conn.execute(
            "SELECT from_ns, to_ns FROM gaps WHERE check_id = ? AND from_ns < ? AND to_ns >= ?",
            (check_row, end_ns, start_ns),
        )
    ]


_LAST_EDGE = len(LATENCY_EDGES_NS) - 1


RowCounter = Callable[[list[tuple[int, int, int]], Sequence[int]], tuple[Sequence[int], Sequence[Any]] | None]
"""Counts (scheduled_ns, ok, duration_ns) rows per piece of edges: each piece's results and latency
histogram (a mapping or (bucket, count) pairs, in the rows' order), or None for rows it does not
take (the Python loop counts those)."""


def raw_summaries(
    conn: sqlite3.Connection,
    check_row: int,
    edges: Sequence[int],
    tables: Sequence[str] = ("results",),
    count: RowCounter | None = None,
) -> list[Summary]:
    """``raw_summary`` of each piece [edges[i], edges[i + 1]) (increasing edges), by columns in C loops.

    The same rules as ``raw_summary``'s loop, row for row: internal results are left out; a
    successful result's duration goes in its latency bucket (the last one above the last edge),
    a clock offset beyond the first step in its ladder bucket, an unsynced result is counted.
    Histogram keys are added in the order of the rows, as that loop adds them. The rows with
    a clock offset beyond the first step or unsynced are few: a query of their own.
    """
    out = [Summary() for _ in range(len(edges) - 1)]
    if not out:
        return out
    where = " WHERE check_id = ? AND scheduled_ns >= ? AND scheduled_ns < ? AND error_kind != ?"
    args = (check_row, edges[0], edges[-1], INTERNAL)
    rows: list[tuple[int, int, int]] = []
    for table in tables:  # the rows of all tables in one pass (one table's after the other's)
        rows += conn.execute(f"SELECT scheduled_ns, ok, duration_ns FROM {table}" + where, args).fetchall()
    if not rows:
        return out
    one = len(out) == 1  # else piece i + 1 holds t when edges[i] <= t < edges[i + 1]
    counted = count(rows, edges) if count is not None else None
    if counted is not None:  # a compiled counter (evidence verify's), the same rules and order
        for s, n, hist in zip(out, *counted, strict=True):
            s.results = n
            s.latency.update(hist)
    else:
        times, oks, durations = zip(*rows, strict=True)
        piece: Sequence[int] = (1,) * len(times) if one else list(map(bisect_right, repeat(edges), times))
        for i, n in Counter(piece).items():
            out[i - 1].results = n
        buckets = map(
            min, map(bisect_left, repeat(LATENCY_EDGES_NS), compress(durations, oks)), repeat(_LAST_EDGE)
        )
        for (i, b), n in Counter(zip(compress(piece, oks), buckets, strict=True)).items():
            out[i - 1].latency[b] = n
    step = CLOCK_FIRST_STEP
    for table in tables:
        for t, offset, synced in conn.execute(
            f"SELECT scheduled_ns, clock_offset_ns, clock_synced FROM {table}" + where
            + " AND (clock_synced = 0 OR clock_offset_ns > ? OR clock_offset_ns < ?)",
            (*args, step, -step),
        ):  # fmt: skip
            s = out[0 if one else bisect_right(edges, t) - 1]
            c = clock_bucket(offset)
            if c:  # bucket 0 (within 1 ms) is implied: results minus the others
                s.clock[c] = s.clock.get(c, 0) + 1
            if not synced:
                s.unsynced += 1
    return out


def raw_summary(conn: sqlite3.Connection, check_row: int, start_ns: int, end_ns: int, out: Summary) -> bool:
    """Add the results scheduled in [start, end) to ``out``; False when there were none.

    The reference loop, a Python statement per row (``raw_summaries`` gives the same in C loops).
    """
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
        self.stats = {"clean_buckets": 0, "dirty_buckets": 0, "raw_pieces": 0, "approximate_pieces": 0}

    def slot_bits(self, part: Part, k0: int, k1: int) -> dict[int, AgentBits]:
        size = slot_bucket(part.interval_ns)
        t0, t1 = part.instant(k0), part.instant(k1)
        buckets = _buckets(t0, t1, size)
        if not buckets:
            return {}
        ims = part.interval_ns // NS_PER_MS
        cols = "bucket_ns, agent_id, first_slot, ok_bits, fail_bits, deg_bits"
        # Rows that are not clean, through the partial index: clean ones are never visited.
        dirty_rows = self.conn.execute(
            # The planner would rather walk the primary key (it matches the range too) and read
            # every row; the partial index holds only the rows asked for.
            f"SELECT {cols} FROM rollup_slots INDEXED BY rollup_slots_dirty WHERE check_id = ?"
            " AND interval_ms = ? AND bucket_ns >= ? AND bucket_ns < ? AND clean = 0",
            (part.check_row, ims, buckets.start, t1),
        ).fetchall()
        dirty = {r[0] for r in dirty_rows}
        if dirty:  # the clean rows of other agents in those buckets count too (quorum)
            marks = ",".join("?" * len(dirty))
            dirty_rows += self.conn.execute(
                f"SELECT {cols} FROM rollup_slots WHERE check_id = ? AND interval_ms = ?"
                f" AND bucket_ns IN ({marks}) AND clean = 1",
                (part.check_row, ims, *sorted(dirty)),
            ).fetchall()
        # Buckets with rows at all: the parent rows' presence masks (a day's hours, an hour's buckets).
        parent, psize = ("rollup_day", DAY) if size == HOUR else ("rollup_hour", HOUR)
        per = psize // size
        masks: dict[int, int] = {}
        for pb, mask in self.conn.execute(
            f"SELECT bucket_ns, present_mask FROM {parent} WHERE check_id = ? AND interval_ms = ?"
            " AND bucket_ns >= ? AND bucket_ns < ? AND present_mask != 0",
            (part.check_row, ims, buckets.start - buckets.start % psize, t1),
        ):
            masks[pb] = masks.get(pb, 0) | mask
        present_runs: list[list[int]] = []
        full_mask = (1 << per) - 1
        for pb in sorted(masks):
            mask = masks[pb]
            if mask == full_mask:  # the usual case: the whole parent bucket
                if present_runs and present_runs[-1][1] == pb:
                    present_runs[-1][1] = pb + psize
                else:
                    present_runs.append([pb, pb + psize])
                continue
            for a, b in runs(mask):
                a, b = pb + a * size, pb + b * size
                if present_runs and present_runs[-1][1] == a:
                    present_runs[-1][1] = b
                else:
                    present_runs.append([a, b])
        if present_runs:  # parents reach beyond the range: clip the ends
            present_runs[0][0] = max(present_runs[0][0], buckets.start)
            present_runs[-1][1] = min(present_runs[-1][1], buckets.stop)
        # Clean slots: the present runs cut at the dirty buckets.
        width = k1 - k0
        full = (1 << width) - 1
        interval, offset = part.interval_ns, part.offset_ns
        clean = 0
        n_clean = 0
        cuts = sorted(dirty)
        for a, b in present_runs:
            if b <= a:
                continue
            for d in [x for x in cuts if a <= x < b] if cuts else ():
                if d > a:
                    clean |= self._slots(a, d, interval, offset, k0, width)
                    n_clean += (d - a) // size
                a = d + size
            if b > a:
                clean |= self._slots(a, b, interval, offset, k0, width)
                n_clean += (b - a) // size
        self.stats["clean_buckets"] += n_clean
        self.stats["dirty_buckets"] += len(dirty)
        out: dict[int, AgentBits] = {}
        if clean:
            out[0] = AgentBits(ok=clean & full)  # agent 0: "every agent saw these slots ok"
        for _, agent, first, ok, fail, deg in dirty_rows:
            shift = first - k0
            bits = out.get(agent)
            if bits is None:
                bits = out[agent] = AgentBits()
            if shift >= 0:
                bits.ok |= (ok << shift) & full
                bits.fail |= (fail << shift) & full
                bits.deg |= (deg << shift) & full
            else:
                bits.ok |= (ok >> -shift) & full
                bits.fail |= (fail >> -shift) & full
                bits.deg |= (deg >> -shift) & full
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
        lats: list[bytes] = []
        clocks: list[bytes] = []
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
                else:
                    h0 = x - x % HOUR
                    approx[h0] = approx.get(h0, 0) + (y - x)
        for a, b in days:
            self._rows("rollup_day", part.check_row, a, b, out, lats, clocks)
        for a, b in hours:
            self._rows("rollup_hour", part.check_row, a, b, out, lats, clocks)
        for h0, counted in approx.items():
            # Past raw retention, a piece of an hour counts as the whole hour when it is at least half.
            self.stats["approximate_pieces"] += 1
            out.approximate = True
            if counted * 2 >= HOUR:
                self._rows("rollup_hour", part.check_row, h0, h0 + HOUR, out, lats, clocks)
        merge_into(out.latency, lats)
        merge_into(out.clock, clocks)
        return out

    def _rows(
        self, table: str, check_row: int, a: int, b: int, out: Summary, lats: list[bytes], clocks: list[bytes]
    ) -> None:
        """Counts into ``out``; histogram blobs into ``lats`` and ``clocks`` (merged once, later)."""
        for n_ok, n_fail, n_unsynced, lat_blob, clock_blob in self.conn.execute(
            f"SELECT n_ok, n_fail, n_unsynced, lat, clock FROM {table}"
            " WHERE check_id = ? AND bucket_ns >= ? AND bucket_ns < ?",
            (check_row, a, b),
        ):
            out.results += n_ok + n_fail
            out.unsynced += n_unsynced
            if lat_blob:
                lats.append(lat_blob)
            if clock_blob:
                clocks.append(clock_blob)


# ---- retention ------------------------------------------------------------------------------------


def prune(
    conn: sqlite3.Connection, raw_before_ns: int, rollups_before_ns: int, *, limit: int | None = None
) -> dict[str, int]:
    """Delete raw results scheduled before ``raw_before_ns`` and rollups before ``rollups_before_ns``.

    Check by check, so every delete walks an index range instead of the whole table. Rollups
    go by whole UTC days at every level, so a presence mask never names rows that are gone.
    Records the raw horizon: reports past it use rollups alone (exact, so recording it before
    the last raw row is gone changes no report). ``limit`` bounds the raw rows deleted in one
    call, so a collector can prune in short transactions between ingest jobs: call again
    while ``results`` comes back equal to the limit.
    """
    deleted = {"results": 0, **{t: 0 for t in ROLLUP_TABLES}}
    cut = rollups_before_ns - rollups_before_ns % DAY
    for (cid,) in conn.execute("SELECT id FROM checks").fetchall():
        if limit is None:
            deleted["results"] += conn.execute(
                "DELETE FROM results WHERE check_id = ? AND scheduled_ns < ?", (cid, raw_before_ns)
            ).rowcount
        elif deleted["results"] < limit:
            deleted["results"] += conn.execute(
                "DELETE FROM results WHERE rowid IN (SELECT rowid FROM results"
                " WHERE check_id = ? AND scheduled_ns < ? LIMIT ?)",
                (cid, raw_before_ns, limit - deleted["results"]),
            ).rowcount
        for table in ROLLUP_TABLES:
            deleted[table] += conn.execute(
                f"DELETE FROM {table} WHERE check_id = ? AND bucket_ns < ?", (cid, cut)
            ).rowcount
    set_meta(conn, "raw_pruned_before_ns", max(raw_before_ns, meta(conn, "raw_pruned_before_ns")))
    return deleted
