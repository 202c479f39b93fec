"""Storage: the only module that talks to SQLite.

Layout and invariants (see docs/architecture.md):

* ``results`` holds every stored probe run once: ``UNIQUE(agent_id, epoch, seq)``
  makes a replayed batch a no-op (``INSERT OR IGNORE``), so resends after a
  reconnect are harmless.
* ``streams`` holds, per (agent, epoch), the highest contiguous sequence
  number committed. It is updated in the same transaction as the rows, so an
  acknowledgement can never run ahead of the data.
* Catalogue history is kept (``catalogue_versions``, ``check_versions`` with
  ``valid_from``/``valid_to``): scoring counts a slot only while the check
  existed with the interval then in force.

Writes go through one :class:`Writer` thread that owns the only write
connection and commits in groups: every job waiting when a transaction
starts joins it (up to ``max_group_rows`` rows), and one ``fsync`` under
``synchronous=FULL`` covers them all. Measured on this machine kind, one
fsync costs ~0.3 ms; committing per batch would cap ingest far below what
group commits reach.

Schema and small writes use sqlite-utils; the result hot path uses the
connection's ``executemany`` directly, because ``Table.insert_all`` splits
statements at 999 variables and tops out near 14k rows/s here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import sqlite_utils

from collector import record_log, rollups
from collector.catalogue import Catalogue
from collector.hub import CheckRef
from collector.wire import fields_json, phases_json
from slaprobe.chain import GENESIS, fingerprint, key_id
from slaprobe.model import CheckSpec, ClockSample, Gap, Measurement

log = logging.getLogger(__name__)

T = TypeVar("T")

ResultRow = tuple[Any, ...]

RESULT_COLUMNS = (
    "agent_id",
    "epoch",
    "seq",
    "check_id",
    "check_revision",
    "scheduled_ns",
    "started_ns",
    "duration_ns",
    "ok",
    "degraded",
    "error_kind",
    "detail",
    "phases",
    "fields",
    "received_ns",
    "clock_offset_ns",
    "clock_synced",
)


# ---- schema ------------------------------------------------------------------

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(name: str) -> Callable[[Migration], Migration]:
    """Register a named schema migration; each runs once, in a transaction, in order."""

    def register(fn: Migration) -> Migration:
        MIGRATIONS.append((name, fn))
        return fn

    return register


@migration("0001_initial")
def _initial(db: sqlite_utils.Database) -> None:
    db.table("agents").create(
        {
            "id": int,
            "name": str,
            "site": str,
            "version": str,
            "hostname": str,
            "epoch": int,
            "first_seen_ns": int,
            "last_seen_ns": int,
            "clock_offset_ns": int,
            "clock_rtt_ns": int,
            "spool_depth": int,
            "oldest_unsent_ns": int,
        },
        pk="id",
        not_null={"name"},
    )
    db.table("agents").create_index(["name"], unique=True)
    db.table("catalogue_versions").create(
        {"id": int, "digest": str, "source": str, "text": str, "loaded_ns": int}, pk="id"
    )
    db.table("sites").create({"name": str, "description": str, "sla": str, "updated_ns": int}, pk="name")
    db.table("checks").create({"id": int, "key": str, "site": str, "name": str}, pk="id", not_null={"key"})
    db.table("checks").create_index(["key"], unique=True)
    db.table("check_versions").create(
        {
            "check_id": int,
            "revision": str,
            "type": str,
            "target": str,
            "interval_ms": int,
            "timeout_ms": int,
            "degraded_after_ms": int,
            "settings": str,
            "valid_from_ns": int,
            "valid_to_ns": int,
        },
        pk=("check_id", "valid_from_ns"),
    )
    db.table("streams").create({"agent_id": int, "epoch": int, "acked_seq": int}, pk=("agent_id", "epoch"))
    db.execute(
        """
        CREATE TABLE results (
            agent_id INTEGER NOT NULL,
            epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            check_id INTEGER NOT NULL,
            check_revision TEXT NOT NULL,
            scheduled_ns INTEGER NOT NULL,
            started_ns INTEGER NOT NULL,
            duration_ns INTEGER NOT NULL,
            ok INTEGER NOT NULL,
            degraded INTEGER NOT NULL,
            error_kind TEXT NOT NULL,
            detail TEXT NOT NULL,
            phases TEXT NOT NULL,
            fields TEXT NOT NULL,
            received_ns INTEGER NOT NULL
        )
        """
    )
    db.execute("CREATE UNIQUE INDEX results_stream_seq ON results(agent_id, epoch, seq)")
    # Covering index for scoring: a check's slots in a period without touching the table.
    db.execute("CREATE INDEX results_check_time ON results(check_id, scheduled_ns, ok, duration_ns)")
    db.table("rejections").create(
        {"agent_id": int, "epoch": int, "seq": int, "reason": str, "received_ns": int},
        pk=("agent_id", "epoch", "seq"),
    )


@migration("0002_gaps_and_clocks")
def _gaps_and_clocks(db: sqlite_utils.Database) -> None:
    # The agent's clock estimate in force when each probe ran (agent minus collector).
    db.execute("ALTER TABLE results ADD COLUMN clock_offset_ns INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE results ADD COLUMN clock_synced INTEGER NOT NULL DEFAULT 0")
    # Spool evictions, one row per check of a gap record: the loss is evidence too.
    db.execute(
        """
        CREATE TABLE gaps (
            agent_id INTEGER NOT NULL,
            epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            through_seq INTEGER NOT NULL,
            check_id INTEGER NOT NULL,
            from_ns INTEGER NOT NULL,
            to_ns INTEGER NOT NULL,
            count INTEGER NOT NULL,
            reason TEXT NOT NULL,
            evicted_ns INTEGER NOT NULL,
            received_ns INTEGER NOT NULL,
            PRIMARY KEY (agent_id, epoch, seq, check_id)
        )
        """
    )
    db.execute("CREATE INDEX gaps_check_time ON gaps(check_id, from_ns)")
    db.execute(
        """
        CREATE TABLE clock_samples (
            agent_id INTEGER NOT NULL,
            epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            t0_ns INTEGER NOT NULL,
            t1_ns INTEGER NOT NULL,
            t2_ns INTEGER NOT NULL,
            t3_ns INTEGER NOT NULL,
            offset_ns INTEGER NOT NULL,
            rtt_ns INTEGER NOT NULL,
            received_ns INTEGER NOT NULL,
            PRIMARY KEY (agent_id, epoch, seq)
        )
        """
    )
    db.execute("CREATE INDEX clock_samples_agent_time ON clock_samples(agent_id, t0_ns)")


@migration("0003_identity")
def _identity(db: sqlite_utils.Database) -> None:
    # One-time join tokens; only a hash is stored, so a database leak does not leak tokens.
    db.execute(
        """
        CREATE TABLE join_tokens (
            token_hash TEXT PRIMARY KEY,
            site TEXT NOT NULL,
            name TEXT,
            created_ns INTEGER NOT NULL,
            created_by TEXT NOT NULL,
            expires_ns INTEGER NOT NULL,
            used_ns INTEGER,
            used_by TEXT
        )
        """
    )
    db.execute(
        "CREATE TABLE revocations (name TEXT PRIMARY KEY, revoked_ns INTEGER NOT NULL,"
        " revoked_by TEXT NOT NULL, reason TEXT NOT NULL)"
    )
    db.execute(
        """
        CREATE TABLE certificates (
            serial TEXT PRIMARY KEY,
            agent_name TEXT NOT NULL,
            site TEXT NOT NULL,
            issued_ns INTEGER NOT NULL,
            not_after_ns INTEGER NOT NULL,
            reason TEXT NOT NULL
        )
        """
    )


@migration("0004_maintenance")
def _maintenance(db: sqlite_utils.Database) -> None:
    # Ad-hoc maintenance windows added from the CLI; service NULL: every service of the site.
    # Cancelled windows stay (who cancelled, when): the report's evidence.
    db.execute(
        """
        CREATE TABLE maintenance (
            id INTEGER PRIMARY KEY,
            site TEXT NOT NULL,
            service TEXT,
            from_ns INTEGER NOT NULL,
            to_ns INTEGER NOT NULL,
            reason TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_ns INTEGER NOT NULL,
            cancelled_by TEXT,
            cancelled_ns INTEGER
        )
        """
    )
    db.execute("CREATE INDEX maintenance_site_time ON maintenance(site, from_ns)")


@migration("0005_rollups")
def _rollups(db: sqlite_utils.Database) -> None:
    # Per minute/hour/day rollups kept in the transaction that stores the rows (collector/rollups.py);
    # results already stored are rolled up here, once.
    rollups.create_tables(db.conn)
    folded = rollups.rebuild(db.conn, RESULT_COLUMNS)
    if folded:
        log.info("rolled up %d stored results", folded)


@migration("0006_rollup_slots")
def _rollup_slots(db: sqlite_utils.Database) -> None:
    # Slot bits in their own table, 60 slots a row, with clean flags and presence masks (reports
    # skip clean buckets); no per-minute rows. Databases whose 0005 made this layout have nothing
    # to do; the others get it and are rolled up again.
    if rollups.upgrade_tables(db.conn):
        rollups.rebuild(db.conn, RESULT_COLUMNS)


@migration("0007_evidence")
def _evidence(db: sqlite_utils.Database) -> None:
    # Every record's bytes exactly as its agent sent them, seals included: the evidence a
    # bundle exports and anyone can check against the agent's signatures (slaprobe/chain.py).
    # Keyed like the stream, so a stream's records are one contiguous range of the b-tree.
    db.execute(
        """
        CREATE TABLE record_log (
            agent_id INTEGER NOT NULL,
            epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            through_seq INTEGER NOT NULL,
            kind INTEGER NOT NULL,  -- the Record oneof field number: 2 result, 3 gap, 4 clock, 5 seal
            raw BLOB NOT NULL,
            PRIMARY KEY (agent_id, epoch, seq)
        ) WITHOUT ROWID
        """
    )
    # The agents' signing keys (Ed25519, raw 32 bytes), by agent name: recorded at enrolment
    # (the join token vouches for it) or, for an agent enrolled without one, at first register.
    db.execute(
        """
        CREATE TABLE agent_keys (
            name TEXT NOT NULL,
            key_id BLOB NOT NULL,
            public_key BLOB NOT NULL,
            recorded_ns INTEGER NOT NULL,
            how TEXT NOT NULL,
            PRIMARY KEY (name, key_id)
        )
        """
    )
    # The head of each stream's chain after its last stored link (NULL: nothing sealed yet).
    db.execute("ALTER TABLE streams ADD COLUMN head BLOB")


@migration("0008_install_hosts")
def _install_hosts(db: sqlite_utils.Database) -> None:
    # Which host an agent name installed over SSH lives on, by the host's SSH key: enrolling a
    # name again replaces that agent's signing key, so `agent install` must not hand a name
    # that belongs to one host to another (cloned images that all call themselves "ubuntu").
    db.execute(
        """
        CREATE TABLE install_hosts (
            name TEXT PRIMARY KEY,
            host_key TEXT NOT NULL,  -- the host's SSH key fingerprint, SHA256:...
            host TEXT NOT NULL,  -- host[:port] as the installer reached it
            installed_ns INTEGER NOT NULL
        )
        """
    )


@migration("0009_record_batches")
def _record_batches(db: sqlite_utils.Database) -> None:
    # A batch's records as one row (collector/record_log.py): their bytes one after another, each
    # record's seq and end offset (int64 little-endian) and kind (a byte). A rowid table: rows are
    # ~180 kB, kept out of the key's b-tree. A stream's batch rows never overlap.
    db.execute(
        """
        CREATE TABLE record_batches (
            agent_id INTEGER NOT NULL,
            epoch INTEGER NOT NULL,
            first_seq INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            seqs BLOB NOT NULL,
            ends BLOB NOT NULL,
            kinds BLOB NOT NULL,
            raw BLOB NOT NULL,
            UNIQUE (agent_id, epoch, first_seq)
        )
        """
    )


# Checkpoint the WAL into the database once it holds this many pages (SQLite's default: 1,000).
WAL_AUTOCHECKPOINT_PAGES = 1000


def connect(path: str | Path, *, readonly: bool = False) -> sqlite_utils.Database:
    """Open the database with the pragmas every connection needs."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before we acknowledge it to an agent.
    conn.execute("PRAGMA synchronous=FULL")
    # A cache larger than the hot index pages turns random index writes into cache hits.
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute("PRAGMA foreign_keys=ON")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return sqlite_utils.Database(conn)


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply pending migrations; return the names applied."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_ns INTEGER NOT NULL)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            fn(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?)", [name, time.time_ns()])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        applied.append(name)
    return applied


def open_store(path: str | Path) -> sqlite_utils.Database:
    db = connect(path)
    migrate(db)
    return db


# ---- conversions ----------------------------------------------------------------


def measurement_row(
    agent_id: int, epoch: int, seq: int, check_row: int, m: Measurement, received_ns: int
) -> ResultRow:
    return (
        agent_id,
        epoch,
        seq,
        check_row,
        m.check_revision,
        m.scheduled_ns,
        m.started_ns,
        m.duration_ns,
        int(m.success),
        int(m.degraded),
        m.error_kind,
        m.detail,
        phases_json(dict(m.phases)) if m.phases else "{}",
        fields_json(dict(m.fields)) if m.fields else "{}",
        received_ns,
        m.clock_offset_ns,
        int(m.clock_synced),
    )


def gap_rows(
    agent_id: int, epoch: int, seq: int, gap: Gap, check_rows: Mapping[str, int], received_ns: int
) -> list[tuple[Any, ...]]:
    """One row per check of a gap record (a gap names the checks whose results it stands for)."""
    return [
        (
            agent_id,
            epoch,
            seq,
            gap.through_seq,
            check_rows[c.check_id],
            c.from_ns,
            c.to_ns,
            c.count,
            gap.reason,
            gap.evicted_ns,
            received_ns,
        )
        for c in gap.checks
    ]


def clock_row(agent_id: int, epoch: int, seq: int, c: ClockSample, received_ns: int) -> tuple[Any, ...]:
    return (agent_id, epoch, seq, c.t0_ns, c.t1_ns, c.t2_ns, c.t3_ns, c.offset_ns, c.rtt_ns, received_ns)


# ---- the writer -------------------------------------------------------------------

BULK_JOB_ROWS = 500  # an ingest job this large is part of a backlog: its group may wait for more


@dataclass
class _Job(Generic[T]):
    apply: Callable[[sqlite_utils.Database], T]
    rows: int
    future: asyncio.Future[T]
    result: Any = None
    error: BaseException | None = None


_STOP = object()


@dataclass
class IngestOutcome:
    acked_seq: int
    inserted: int
    duplicates: int


@dataclass
class _StreamState:
    acked: int
    pending: list[tuple[int, int]] = field(default_factory=list)
    head: bytes | None = None  # the chain's head after the link ending at ``acked``


@dataclass(frozen=True)
class BatchLinks:
    """A sealed batch's chain, as checked within the batch: where it must join the stored chain."""

    first_seq: int  # the first link's first record
    prev: bytes  # the head the first link chains to
    last_seq: int  # the last link's seq (the batch ends with it)
    head: bytes  # the head after the last link


class Writer:
    """The single writer thread. Every method is a coroutine that resolves after commit."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_group_rows: int = 40_000,
        bulk_group_rows: int = 20_000,
        bulk_wait_s: float = 0.5,
    ) -> None:
        """``max_group_rows``: a group commit takes the jobs waiting up to this many rows. Each
        commit has costs that do not grow with its rows (the rollup rows of every check it
        touches, the index pages it rewrites, the fsyncs): 40,000 instead of 20,000 took ~20% off
        the writer's CPU per result here. Keep it under an agent's window (50,000 records), so
        one agent's next batches are already waiting while its group commits.

        ``bulk_group_rows``, ``bulk_wait_s``: when every job of a group is a bulk batch (at
        least ``BULK_JOB_ROWS`` rows) and fewer than ``bulk_group_rows`` rows wait, the writer
        waits up to ``bulk_wait_s`` for more before it commits. Then the decoders are behind
        the writer, so waiting costs no throughput, and commits of 6,000 rows instead of
        15,000 cost the writer ~20% more CPU per result, CPU the decoders lack. Acks of bulk
        batches come up to that much later; small jobs (heartbeats, a live agent's few
        records) never wait."""
        self.path = Path(path)
        self.max_group_rows = max_group_rows
        self.bulk_group_rows = bulk_group_rows
        self.bulk_wait_s = bulk_wait_s
        self._queue: queue.SimpleQueue[_Job[Any] | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[tuple[int, int], _StreamState] = {}
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self.commits = 0
        self.rows_committed = 0
        # Rollups of the rows stored by this group's jobs, written just before its COMMIT.
        self._rollups = rollups.Rollups(RESULT_COLUMNS)

    # lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="slaprobe-writer", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._opened.wait)
        if self._open_error is not None:
            raise self._open_error

    async def close(self) -> None:
        """Commit everything queued, then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    def _run(self) -> None:
        try:
            db = open_store(self.path)
        except BaseException as exc:  # reported to start()
            self._open_error = exc
            self._opened.set()
            return
        try:
            # Grids from the start: batches decoded before the first commit are folded by the
            # decode worker too (with none, the writer folded the whole first window itself).
            self._rollups.refresh_grids(db.conn)
        except BaseException as exc:
            db.conn.close()
            self._open_error = exc
            self._opened.set()
            return
        self._opened.set()
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is _STOP:
                    break
                assert isinstance(first, _Job)
                jobs: list[_Job[Any]] = [first]
                rows = first.rows
                bulk = first.rows >= BULK_JOB_ROWS
                deadline = 0.0
                while rows < self.max_group_rows:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        if not bulk or rows >= self.bulk_group_rows:
                            break
                        # Bulk batches and a short queue: wait a little for the next ones.
                        now = time.monotonic()
                        deadline = deadline or now + self.bulk_wait_s
                        if now >= deadline:
                            break
                        try:
                            nxt = self._queue.get(timeout=deadline - now)
                        except queue.Empty:
                            break
                    if nxt is _STOP:
                        stopping = True
                        break
                    assert isinstance(nxt, _Job)
                    jobs.append(nxt)
                    rows += nxt.rows
                    bulk = bulk and nxt.rows >= BULK_JOB_ROWS
                self._commit_group(db, jobs)
        finally:
            db.conn.close()

    def _commit_group(self, db: sqlite_utils.Database, jobs: list[_Job[Any]]) -> None:
        """Run the jobs in one transaction and commit; then settle their futures.

        A job that fails must leave nothing behind while the others commit. Jobs first run
        without savepoints: with one open, SQLite copies every page a job touches into a
        statement journal (a temporary file) before changing it, ~7% of the writer's time in
        the ingest benchmark. A refusal (``JobRefused``) that changed no row needs nothing
        undone. Any other failure, or a refusal after a change, rolls the group back and it
        runs again with a savepoint per job, which rolls back the failing job alone.
        """
        streams_before = {k: _StreamState(v.acked, list(v.pending), v.head) for k, v in self._streams.items()}
        try:
            if not self._run_group(db, jobs, streams_before, savepoints=False):
                self._run_group(db, jobs, streams_before, savepoints=True)
            self.commits += 1
            self.rows_committed += sum(j.rows for j in jobs if j.error is None)
        except BaseException as exc:
            # Nothing of this group is on disk: fail every job, forget stream state.
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._rollups.discard()
            self._streams = streams_before
            for job in jobs:
                job.error = exc
            log.exception("commit failed; %d jobs not acknowledged", len(jobs))
        assert self._loop is not None
        for job in jobs:
            self._loop.call_soon_threadsafe(_settle, job)

    def _run_group(
        self,
        db: sqlite_utils.Database,
        jobs: list[_Job[Any]],
        streams_before: dict[tuple[int, int], _StreamState],
        *,
        savepoints: bool,
    ) -> bool:
        """One attempt at the group's transaction. Without ``savepoints``: False (rolled back,
        state as before) when a job failed in a way only a savepoint can undo."""
        conn = db.conn
        db.execute("BEGIN IMMEDIATE")
        for i, job in enumerate(jobs):
            job.result, job.error = None, None
            if savepoints:
                db.execute(f"SAVEPOINT job{i}")
            changes = conn.total_changes
            try:
                job.result = job.apply(db)
            except Exception as exc:
                if not savepoints and not (isinstance(exc, JobRefused) and conn.total_changes == changes):
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    self._rollups.discard()
                    self._streams = {
                        k: _StreamState(v.acked, list(v.pending), v.head) for k, v in streams_before.items()
                    }
                    return False
                if savepoints:
                    db.execute(f"ROLLBACK TO job{i}")
                job.error = exc
                if not isinstance(exc, JobRefused):
                    log.exception("storage job failed; its batch is not acknowledged")
            if savepoints:
                db.execute(f"RELEASE job{i}")
        self._rollups.flush(conn)
        db.execute("COMMIT")
        return True

    def rollup_grids(self) -> tuple[tuple[int, int], dict[int, list[rollups.Grid]]] | None:
        """The check grids the rollups fold with, and their generation (None before the first fold)."""
        return self._rollups.snapshot

    def rollup_pick(self) -> tuple[int, ...]:
        return self._rollups.pick

    def submit(self, apply: Callable[[sqlite_utils.Database], T], rows: int = 1) -> asyncio.Future[T]:
        if self._thread is None:
            raise RuntimeError("writer is not running")
        assert self._loop is not None
        fut: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Job(apply, rows, fut))
        return fut

    # jobs

    async def persist_catalogue(self, catalogue: Catalogue, now_ns: int) -> dict[str, CheckRef]:
        """Record the catalogue, its sites and check versions; return every check ever stored."""

        def apply(db: sqlite_utils.Database) -> dict[str, CheckRef]:
            refs = _persist_catalogue(db, catalogue, now_ns)
            # New checks or versions: new grids now, so batches decoded from here on fold with them.
            # (Should this transaction roll back, the next flush sees another generation and
            # refolds whatever was folded with these.)
            self._rollups.refresh_grids(db.conn)
            return refs

        return await self.submit(apply)

    async def register_agent(
        self,
        name: str,
        site: str,
        version: str,
        hostname: str,
        epoch: int,
        now_ns: int,
        signing_key: bytes = b"",
    ) -> tuple[int, int, list[bytes]]:
        """Upsert the agent; return (agent row id, acked seq of its epoch, its signing keys).

        The key presented must be the agent's latest on record; an agent with none on
        record has the presented one recorded (first use). KeyRefused otherwise.
        """

        def apply(db: sqlite_utils.Database) -> tuple[int, int, list[bytes]]:
            keys = _check_signing_key(db, name, signing_key, now_ns)
            row = db.execute("SELECT id FROM agents WHERE name = ?", [name]).fetchone()
            if row is None:
                cur = db.execute(
                    "INSERT INTO agents (name, site, version, hostname, epoch, first_seen_ns, last_seen_ns)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [name, site, version, hostname, epoch, now_ns, now_ns],
                )
                agent_id = int(cur.lastrowid or 0)
            else:
                agent_id = int(row[0])
                db.execute(
                    "UPDATE agents SET site=?, version=?, hostname=?, epoch=?, last_seen_ns=? WHERE id=?",
                    [site, version, hostname, epoch, now_ns, agent_id],
                )
            return agent_id, self._stream(db, agent_id, epoch).acked, keys

        return await self.submit(apply)

    async def heartbeat(
        self,
        agent_id: int,
        now_ns: int,
        *,
        version: str,
        clock_offset_ns: int,
        clock_rtt_ns: int,
        spool_depth: int,
        oldest_unsent_ns: int,
    ) -> None:
        def apply(db: sqlite_utils.Database) -> None:
            db.execute(
                "UPDATE agents SET last_seen_ns=?, version=?, clock_offset_ns=?, clock_rtt_ns=?,"
                " spool_depth=?, oldest_unsent_ns=? WHERE id=?",
                [
                    now_ns,
                    version,
                    clock_offset_ns,
                    clock_rtt_ns,
                    spool_depth,
                    oldest_unsent_ns or None,
                    agent_id,
                ],
            )

        await self.submit(apply)

    async def ingest(
        self,
        agent_id: int,
        epoch: int,
        first_seq: int,
        last_seq: int,
        rows: Sequence[ResultRow],
        rejections: Sequence[tuple[int, str]],
        now_ns: int,
        *,
        gaps: Sequence[tuple[Any, ...]] = (),
        clocks: Sequence[tuple[Any, ...]] = (),
        raw: Sequence[tuple[Any, ...]] = (),
        links: BatchLinks | None = None,
        agent_name: str = "",
        folded: rollups.Folded | None = None,
    ) -> IngestOutcome:
        """Store a batch once and advance the stream's contiguous acknowledgement.

        A sealed batch (``links``) must join the stream's chain where the stream's
        acknowledgement ends; otherwise it is refused whole (ChainRefused), loudly.
        ``folded``: the rollup fold of ``rows`` made with the grids of :meth:`rollup_grids`
        (``rollups.fold``); used when every row is inserted, else the inserted rows are folded.
        """

        def apply(db: sqlite_utils.Database) -> IngestOutcome:
            conn = db.conn
            state = self._stream(db, agent_id, epoch)
            new_head = _join_chain(state, links, agent_name, epoch)
            if raw:
                record_log.store(conn, agent_id, epoch, raw)
            stored = self._rollups.insert(conn, rows)  # the rows not already stored
            inserted = len(stored)
            if gaps:
                conn.executemany("INSERT OR IGNORE INTO gaps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", gaps)
            if clocks:
                conn.executemany(
                    "INSERT OR IGNORE INTO clock_samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", clocks
                )
            if rejections:
                conn.executemany(
                    "INSERT OR IGNORE INTO rejections (agent_id, epoch, seq, reason, received_ns)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(agent_id, epoch, seq, reason, now_ns) for seq, reason in rejections],
                )
            old = state.acked
            _advance(state, first_seq, last_seq)
            if new_head is not None:
                state.head = new_head
            if state.acked != old:
                conn.execute(
                    "INSERT INTO streams (agent_id, epoch, acked_seq, head) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(agent_id, epoch) DO UPDATE SET acked_seq = excluded.acked_seq,"
                    " head = excluded.head",
                    (agent_id, epoch, state.acked, state.head),
                )
            # Last: a job that failed above stages nothing. A fold made by the decoder holds for
            # these rows only if every one of them was inserted (no resend overlapped them).
            if folded is not None and inserted == len(rows):
                self._rollups.stage_folded(folded, stored)
            else:
                self._rollups.stage(stored)
            return IngestOutcome(state.acked, inserted, len(rows) - inserted)

        return await self.submit(apply, rows=max(1, len(rows)))

    async def consume_token(
        self,
        token: str,
        name: str,
        serial: str,
        not_after_ns: int,
        now_ns: int,
        *,
        dry_run: bool = False,
        signing_key: bytes = b"",
    ) -> tuple[str, str]:
        """Use a join token once; record the certificate issued. Return (site, name) or raise TokenRefused.

        ``dry_run`` checks without using the token (to learn the identity to put in the certificate).
        """

        def apply(db: sqlite_utils.Database) -> tuple[str, str]:
            row = db.execute(
                "SELECT site, name, expires_ns, used_ns FROM join_tokens WHERE token_hash = ?",
                [token_hash(token)],
            ).fetchone()
            if row is None:
                raise TokenRefused("unknown join token")
            site, fixed_name, expires, used = row
            if used is not None:
                raise TokenRefused("join token already used")
            if now_ns >= expires:
                raise TokenRefused("join token expired")
            agent = fixed_name or name
            if not agent:
                raise TokenRefused("the agent needs a name (the token does not fix one)")
            if fixed_name and name and name != fixed_name:
                raise TokenRefused(f"this token is for agent {fixed_name!r}")
            if db.execute("SELECT 1 FROM revocations WHERE name = ?", [agent]).fetchone():
                raise TokenRefused(f"agent {agent!r} is revoked")
            if dry_run:
                return str(site), str(agent)
            db.execute(
                "UPDATE join_tokens SET used_ns = ?, used_by = ? WHERE token_hash = ?",
                [now_ns, agent, token_hash(token)],
            )
            db.execute(
                "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, 'enrol')",
                [serial, agent, site, now_ns, not_after_ns],
            )
            if signing_key:
                db.execute(
                    "INSERT OR REPLACE INTO agent_keys VALUES (?, ?, ?, ?, 'enrol')",
                    [agent, key_id(signing_key), signing_key, now_ns],
                )
            return str(site), str(agent)

        return await self.submit(apply)

    async def record_certificate(
        self, serial: str, name: str, site: str, not_after_ns: int, now_ns: int
    ) -> None:
        await self.submit(
            lambda db: db.execute(
                "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, 'renew')",
                [serial, name, site, now_ns, not_after_ns],
            )
        )

    def _stream(self, db: sqlite_utils.Database, agent_id: int, epoch: int) -> _StreamState:
        key = (agent_id, epoch)
        state = self._streams.get(key)
        if state is None:
            row = db.execute(
                "SELECT acked_seq, head FROM streams WHERE agent_id = ? AND epoch = ?", [agent_id, epoch]
            ).fetchone()
            state = (
                _StreamState(int(row[0]), [], bytes(row[1]) if row[1] is not None else None)
                if row
                else _StreamState(0)
            )
            self._streams[key] = state
        return state


def _settle(job: _Job[Any]) -> None:
    if job.future.done():  # the waiter was cancelled
        return
    if job.error is not None:
        job.future.set_exception(job.error)
    else:
        job.future.set_result(job.result)


def _check_signing_key(db: sqlite_utils.Database, name: str, presented: bytes, now_ns: int) -> list[bytes]:
    """The agent's signing keys, oldest first, after checking the one it presents."""
    rows = db.execute(
        "SELECT public_key FROM agent_keys WHERE name = ? ORDER BY recorded_ns, rowid", [name]
    ).fetchall()
    keys = [bytes(r[0]) for r in rows]
    if not presented:
        if keys:
            raise KeyRefused(
                f"agent {name!r} has a signing key on record and must seal its records;"
                " it presented none (was its data directory replaced? re-enrol it)"
            )
        return keys
    if not keys:
        db.execute(
            "INSERT INTO agent_keys VALUES (?, ?, ?, ?, 'first register')",
            [name, key_id(presented), presented, now_ns],
        )
        log.info("agent %r: signing key %s recorded at first use", name, key_id(presented).hex())
        return [presented]
    if presented != keys[-1]:
        raise KeyRefused(
            f"agent {name!r} presents signing key {key_id(presented).hex()}, not the one on record"
            f" ({key_id(keys[-1]).hex()}); a new key needs a new enrolment"
        )
    return keys


def _join_chain(state: _StreamState, links: BatchLinks | None, agent: str, epoch: int) -> bytes | None:
    """Check a sealed batch against the stream's chain; return the new head (None: unchanged)."""
    if links is None:
        return None
    if links.last_seq <= state.acked:
        return None  # a resend of links already stored (their records are ignored as duplicates)
    if links.first_seq != state.acked + 1:
        raise ChainRefused(
            f"agent {agent!r}, epoch {epoch}: batch starts at seq {links.first_seq} but the collector"
            f" holds the chain through seq {state.acked}; resend from {state.acked + 1}"
        )
    expected = state.head
    if expected is None and links.first_seq == 1:
        expected = GENESIS
    if expected is None:
        # The stream has records from before this agent sealed (or the head was lost): the
        # first link is taken as given; every later one is checked against it.
        log.info("agent %r epoch %d: chain picked up at seq %d", agent, epoch, links.first_seq)
    elif links.prev != expected:
        raise ChainRefused(
            f"agent {agent!r}, epoch {epoch}: record chain broken at seq {links.first_seq}: the batch's"
            " first seal does not chain to the last stored one (a link is missing, replayed or forged)"
        )
    return links.head


def _advance(state: _StreamState, first: int, last: int) -> None:
    """Merge [first, last] into the contiguous prefix, keeping out-of-order ranges aside."""
    if last < first:
        return
    if first > state.acked + 1:
        state.pending.append((first, last))
        state.pending.sort()
        return
    state.acked = max(state.acked, last)
    while state.pending and state.pending[0][0] <= state.acked + 1:
        _, hi = state.pending.pop(0)
        state.acked = max(state.acked, hi)


def _persist_catalogue(db: sqlite_utils.Database, catalogue: Catalogue, now_ns: int) -> dict[str, CheckRef]:
    last = db.execute("SELECT digest FROM catalogue_versions ORDER BY id DESC LIMIT 1").fetchone()
    if last is None or last[0] != catalogue.digest:
        db.table("catalogue_versions").insert(
            {
                "digest": catalogue.digest,
                "source": catalogue.source,
                "text": catalogue.text,
                "loaded_ns": now_ns,
            }
        )
    for site in catalogue.sites.values():
        db.table("sites").upsert(
            {
                "name": site.name,
                "description": site.description,
                "sla": json.dumps(site.sla.to_json(), sort_keys=True),
                "updated_ns": now_ns,
            },
            pk="name",
        )
    ids: dict[str, int] = {key: int(cid) for cid, key in db.execute("SELECT id, key FROM checks").fetchall()}
    current: set[int] = set()
    for spec in catalogue.all_checks():
        cid = ids.get(spec.id)
        if cid is None:
            cur = db.execute(
                "INSERT INTO checks (key, site, name) VALUES (?, ?, ?)", [spec.id, spec.site, spec.name]
            )
            cid = int(cur.lastrowid or 0)
            ids[spec.id] = cid
        current.add(cid)
        open_version = db.execute(
            "SELECT revision FROM check_versions WHERE check_id = ? AND valid_to_ns IS NULL", [cid]
        ).fetchone()
        if open_version is not None and open_version[0] == spec.revision:
            continue
        if open_version is not None:
            db.execute(
                "UPDATE check_versions SET valid_to_ns = ? WHERE check_id = ? AND valid_to_ns IS NULL",
                [now_ns, cid],
            )
        db.table("check_versions").insert(_version_row(cid, spec, now_ns))
    # Checks gone from the catalogue: close their open version (history stays).
    for (cid,) in db.execute("SELECT check_id FROM check_versions WHERE valid_to_ns IS NULL").fetchall():
        if cid not in current:
            db.execute(
                "UPDATE check_versions SET valid_to_ns = ? WHERE check_id = ? AND valid_to_ns IS NULL",
                [now_ns, cid],
            )
    return {
        key: CheckRef(int(cid), site)
        for cid, key, site in db.execute("SELECT id, key, site FROM checks").fetchall()
    }


def _version_row(cid: int, spec: CheckSpec, now_ns: int) -> dict[str, Any]:
    return {
        "check_id": cid,
        "revision": spec.revision,
        "type": spec.type,
        "target": spec.target,
        "interval_ms": spec.interval_ms,
        "timeout_ms": spec.timeout_ms,
        "degraded_after_ms": spec.degraded_after_ms,
        "settings": spec.settings_json,
        "valid_from_ns": now_ns,
        "valid_to_ns": None,
    }


# ---- reading ----------------------------------------------------------------------


@dataclass(frozen=True)
class CheckVersion:
    check_id: int
    key: str
    site: str
    name: str
    type: str
    target: str
    interval_ms: int
    timeout_ms: int
    valid_from_ns: int
    valid_to_ns: int | None


@dataclass(frozen=True)
class SlotSample:
    """What scoring needs of one stored result."""

    agent_id: int
    scheduled_ns: int
    ok: bool
    duration_ns: int
    error_kind: str


# ---- identity administration (used by the CLI, synchronously, beside a running collector) ----


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class JobRefused(Exception):
    """A storage job that refused its input on purpose (not a failure of the store)."""


class ChainRefused(JobRefused):
    """A batch whose seals do not hold or do not join the stored chain: it is not stored."""


class KeyRefused(JobRefused):
    """An agent presenting a signing key other than its own."""


class TokenRefused(JobRefused):
    """A join token that is unknown, used or expired; the message says which."""


def _immediate(db: sqlite_utils.Database) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


immediate = contextlib.contextmanager(_immediate)


def create_token(
    db: sqlite_utils.Database, token: str, site: str, name: str | None, ttl_ns: int, by: str, now_ns: int
) -> None:
    with immediate(db):
        db.execute(
            "INSERT INTO join_tokens (token_hash, site, name, created_ns, created_by, expires_ns)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [token_hash(token), site, name, now_ns, by, now_ns + ttl_ns],
        )


def install_host_of(db: sqlite_utils.Database, name: str) -> tuple[str, str, int] | None:
    """(host key fingerprint, host, installed_ns) of the host the agent ``name`` was installed on."""
    row = db.execute(
        "SELECT host_key, host, installed_ns FROM install_hosts WHERE name = ?", [name]
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]), int(row[2]))


def bind_install_host(db: sqlite_utils.Database, name: str, host_key: str, host: str, now_ns: int) -> None:
    """Record that the agent ``name`` lives on the host with SSH key ``host_key`` (replacing any other)."""
    with immediate(db):
        db.execute(
            "INSERT INTO install_hosts (name, host_key, host, installed_ns) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET host_key = excluded.host_key, host = excluded.host,"
            " installed_ns = CASE WHEN install_hosts.host_key = excluded.host_key"
            " THEN install_hosts.installed_ns ELSE excluded.installed_ns END",
            [name, host_key, host, now_ns],
        )


def unbind_install_host(db: sqlite_utils.Database, name: str, host_key: str) -> bool:
    """Forget that ``name`` lives on that host (it was uninstalled there); False if it lived elsewhere."""
    with immediate(db):
        cur = db.execute("DELETE FROM install_hosts WHERE name = ? AND host_key = ?", [name, host_key])
        return bool(cur.rowcount)


def revoke(db: sqlite_utils.Database, name: str, by: str, reason: str, now_ns: int) -> bool:
    """Revoke an agent by name; return False if it was already revoked."""
    with immediate(db):
        cur = db.execute(
            "INSERT OR IGNORE INTO revocations (name, revoked_ns, revoked_by, reason) VALUES (?, ?, ?, ?)",
            [name, now_ns, by, reason],
        )
        return bool(cur.rowcount)


def unrevoke(db: sqlite_utils.Database, name: str) -> bool:
    with immediate(db):
        return bool(db.execute("DELETE FROM revocations WHERE name = ?", [name]).rowcount)


# ---- maintenance windows (the CLI writes them beside a running collector) ----


def add_maintenance(
    db: sqlite_utils.Database,
    site: str,
    service: str | None,
    from_ns: int,
    to_ns: int,
    reason: str,
    by: str,
    now_ns: int,
) -> int:
    """Record an ad-hoc maintenance window; return its id."""
    with immediate(db):
        cur = db.execute(
            "INSERT INTO maintenance (site, service, from_ns, to_ns, reason, created_by, created_ns)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [site, service, from_ns, to_ns, reason, by, now_ns],
        )
        return int(cur.lastrowid or 0)


def cancel_maintenance(db: sqlite_utils.Database, window_id: int, by: str, now_ns: int) -> bool:
    """Cancel a window (it no longer counts; the record stays); False if unknown or already cancelled."""
    with immediate(db):
        cur = db.execute(
            "UPDATE maintenance SET cancelled_by = ?, cancelled_ns = ? WHERE id = ? AND cancelled_ns IS NULL",
            [by, now_ns, window_id],
        )
        return bool(cur.rowcount)


class Reader:
    """Read-side queries for reports and the CLI (its own connection, never writes)."""

    def __init__(self, path: str | Path) -> None:
        if not Path(path).exists():
            raise FileNotFoundError(str(path))
        self.db = connect(path, readonly=True)

    def close(self) -> None:
        self.db.conn.close()

    def sites(self) -> list[dict[str, Any]]:
        return [
            {"name": r[0], "description": r[1], "sla": json.loads(r[2])}
            for r in self.db.execute("SELECT name, description, sla FROM sites ORDER BY name").fetchall()
        ]

    def check_versions(self, site: str, start_ns: int, end_ns: int) -> list[CheckVersion]:
        rows = self.db.execute(
            """
            SELECT c.id, c.key, c.site, c.name, v.type, v.target, v.interval_ms, v.timeout_ms,
                   v.valid_from_ns, v.valid_to_ns
            FROM check_versions v JOIN checks c ON c.id = v.check_id
            WHERE c.site = ? AND v.valid_from_ns < ? AND (v.valid_to_ns IS NULL OR v.valid_to_ns > ?)
            ORDER BY c.name, v.valid_from_ns
            """,
            [site, end_ns, start_ns],
        ).fetchall()
        return [CheckVersion(*r) for r in rows]

    def samples(self, check_id: int, start_ns: int, end_ns: int) -> Iterable[SlotSample]:
        cur = self.db.execute(
            "SELECT agent_id, scheduled_ns, ok, duration_ns, error_kind FROM results"
            " WHERE check_id = ? AND scheduled_ns >= ? AND scheduled_ns < ? ORDER BY scheduled_ns",
            [check_id, start_ns, end_ns],
        )
        for agent_id, scheduled, ok, duration, kind in cur:
            yield SlotSample(agent_id, scheduled, bool(ok), duration, kind)

    def revoked_names(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT name FROM revocations").fetchall()}

    def agents(self) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM agents ORDER BY site, name"))

    def failures(self, check_ids: Sequence[int], start_ns: int, end_ns: int) -> list[tuple[Any, ...]]:
        """Failed results (not ``internal``) scheduled in [start, end): the evidence of an incident.

        Rows: (scheduled_ns, check_id, agent_id, error_kind, detail, phases JSON), by time.
        """
        out: list[tuple[Any, ...]] = []
        for cid in check_ids:
            out += self.db.execute(
                "SELECT scheduled_ns, check_id, agent_id, error_kind, detail, phases FROM results"
                " WHERE check_id = ? AND scheduled_ns >= ? AND scheduled_ns < ? AND ok = 0"
                " AND error_kind != 'internal'",
                [cid, start_ns, end_ns],
            ).fetchall()
        return sorted(out)

    def rejections(
        self, agent_id: int, epoch: int, first_seq: int, last_seq: int
    ) -> list[tuple[int, str, int]]:
        """(seq, reason, received_ns) of the stream's records rejected at ingest in [first, last], by seq.

        Why evidence needs them: ``record_log`` keeps a rejected record with the rest of the
        agent's chain, but ``results`` does not hold it, so a bundle lists them for its verifier.
        """
        rows = self.db.execute(
            "SELECT seq, reason, received_ns FROM rejections WHERE agent_id = ? AND epoch = ?"
            " AND seq >= ? AND seq <= ? ORDER BY seq",
            [agent_id, epoch, first_seq, last_seq],
        ).fetchall()
        return [(int(s), str(r), int(t)) for s, r, t in rows]

    def signing_keys(self) -> dict[str, str]:
        """Each agent's current signing key fingerprint (sha256 of the raw public key), by name."""
        rows = self.db.execute("SELECT name, public_key FROM agent_keys ORDER BY recorded_ns").fetchall()
        return {str(name): fingerprint(bytes(key)) for name, key in rows}

    def agent_names(self) -> dict[int, str]:
        return {int(r[0]): str(r[1]) for r in self.db.execute("SELECT id, name FROM agents").fetchall()}

    def catalogue_text(self) -> tuple[str, str] | None:
        """(source, text) of the catalogue the collector loaded last."""
        row = self.db.execute(
            "SELECT source, text FROM catalogue_versions ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def maintenance_windows(
        self,
        site: str | None,
        service: str | None,
        start_ns: int,
        end_ns: int,
        *,
        include_cancelled: bool = False,
    ) -> list[dict[str, Any]]:
        """Ad-hoc windows overlapping [start, end) for a service (its own and the site's)."""
        sql = "SELECT * FROM maintenance WHERE from_ns < ? AND to_ns > ?"
        args: list[Any] = [end_ns, start_ns]
        if site is not None:
            sql += " AND site = ?"
            args.append(site)
        if service is not None:
            sql += " AND (service IS NULL OR service = ?)"
            args.append(service)
        if not include_cancelled:
            sql += " AND cancelled_ns IS NULL"
        return list(self.db.query(sql + " ORDER BY from_ns, id", args))
