"""The durable outbox: a SQLite spool (WAL, ``synchronous=FULL``) in the agent's data directory.

Why SQLite: it gives atomic group commits, crash safety under ``kill -9``
and power loss, and indexed reads of a backlog, from the standard library,
in a file an operator can inspect with ``sqlite3``. The agent writes a few
hundred records a second at most, far below what one writer thread commits.

How it works:

* ``append`` (on the event loop) numbers the record, encodes it and queues
  it for the spool's writer thread, which commits everything queued in one
  transaction. A record is readable, and so sendable, only once committed:
  the collector can never hold a record the spool does not.
* A crash loses at most the records queued but not yet committed (a few
  milliseconds' worth); their seqs were never sent, so they are reused.
* ``ack`` hands the collector's acknowledgement to the writer, which
  deletes the covered records and stores ``acked_seq`` in the same
  transaction. The epoch and the acknowledgement survive restarts, so a
  restarted agent resumes the same sequence space.
* Bounds: when the spool outgrows ``max_bytes`` or holds records older
  than ``max_age``, the oldest unacknowledged records are evicted and
  replaced, in the same transaction, by one **gap record** standing for
  their seq span and naming, per check, how many results from when to when
  were lost. The gap record is delivered like any other, so the loss is
  stored and shown instead of disappearing.
* Sealing (with a signing key): every ``seal_every`` records or
  ``seal_interval_s``, the writer appends a signed **seal** covering the
  records since the last one (``slaprobe/chain.py``). Only sealed records are
  readable, and reads end on a seal, so the collector always receives whole
  links it can check before storing. Eviction drops whole links and writes
  an eviction link for the gap record, so the chain never breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.outbox import Stored, scheduled_ns_of
from agent.wire import decode_gap, decode_seal, encode_record
from slaprobe import chain
from slaprobe.model import Gap, GapCheck, Measurement, Payload

log = logging.getLogger(__name__)

KIND_RESULT, KIND_GAP, KIND_CLOCK, KIND_SEAL = 1, 2, 3, 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    through_seq INTEGER NOT NULL,
    scheduled_ns INTEGER NOT NULL,
    check_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    data BLOB NOT NULL
);
-- The chain's state after the last seal written: its head, and the seq it sealed through.
CREATE TABLE IF NOT EXISTS chain (id INTEGER PRIMARY KEY CHECK (id = 1), head BLOB NOT NULL, sealed INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class SpoolLimits:
    max_bytes: int = 512 * 1024 * 1024
    max_age_s: float = 7 * 86400.0
    check_every_s: float = 1.0
    # Sealing: a link every this many records at most, and every this long while records wait.
    # The interval is how long a result may wait before it can be sent; longer ones make fewer,
    # larger links (a quiet agent with 50 checks a minute makes one link per result at 1 s).
    seal_every: int = 500
    seal_interval_s: float = 5.0


@dataclass(frozen=True)
class _Append:
    seq: int
    scheduled_ns: int
    check_id: str
    kind: int
    data: bytes


@dataclass(frozen=True)
class _SealMark:
    seq: int


_STOP = object()


@dataclass
class SpoolStats:
    evictions: int = 0
    evicted_results: int = 0
    commits: int = 0
    seals: int = 0


class Spool:
    def __init__(
        self,
        path: str | Path,
        limits: SpoolLimits | None = None,
        *,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.path = Path(path)
        self.limits = limits or SpoolLimits()
        self.key = signing_key
        self._queue: queue.SimpleQueue[_Append | _SealMark | int | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._grew = asyncio.Event()
        self._closed = asyncio.Event()
        self._epoch = 0
        self._next_seq = 0  # last seq handed out by append
        self._committed = 0  # last seq readable
        self._acked = 0
        self._oldest_ns = 0
        self.stats = SpoolStats()
        self._fatal: BaseException | None = None
        self._unsealed = 0  # appended since the last seal mark (event loop side)
        self._sealer: asyncio.Task[None] | None = None
        # Writer-thread side of the chain: the head, where the open link starts, its digest.
        self._head = chain.GENESIS
        self._segment_start = 1
        self._digest = chain.Digest()

    # ---- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = await asyncio.to_thread(self._connect)
        epoch, acked, last, oldest = await asyncio.to_thread(self._load_state, conn)
        self._epoch, self._acked, self._committed, self._oldest_ns = epoch, acked, last, oldest
        self._next_seq = last
        if self.key is not None:
            sealed = await asyncio.to_thread(self._load_chain, conn, last)
            if sealed is None:
                log.warning(
                    "spool %s holds %d records written before this agent sealed its records: this run"
                    " delivers them unsealed (the collector accepts them from an agent presenting no"
                    " key) and sealing starts at the first start with nothing of them left",
                    self.path,
                    last - acked,
                )
                self.key = None
            else:
                self._committed = sealed
                self._unsealed = last - self._committed
        self._read_conn = await asyncio.to_thread(self._connect)
        self._thread = threading.Thread(target=self._run, args=(conn,), name="slaprobe-spool", daemon=True)
        self._thread.start()
        if self.key is not None:
            self._sealer = asyncio.create_task(self._seal_periodically(), name="spool-sealer")
        log.info(
            "spool %s: epoch %d, %d records waiting (acked through %d)", self.path, epoch, last - acked, acked
        )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # survive power loss, not just kill -9
        conn.executescript(SCHEMA)
        return conn

    @staticmethod
    def _load_state(conn: sqlite3.Connection) -> tuple[int, int, int, int]:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if "epoch" not in meta:
            # A new sequence space: the spool is new (or was lost, and with it the old numbering).
            meta["epoch"] = time.time_ns()
            meta["acked_seq"] = 0
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
            conn.execute("COMMIT")
        row = conn.execute("SELECT through_seq FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        last = max(int(meta["acked_seq"]), int(row[0]) if row else 0)
        oldest = conn.execute("SELECT scheduled_ns FROM records ORDER BY seq LIMIT 1").fetchone()
        return int(meta["epoch"]), int(meta["acked_seq"]), last, int(oldest[0]) if oldest else 0

    def _load_chain(self, conn: sqlite3.Connection, last: int) -> int | None:
        """Restore the chain state; return the seq sealed through (what is readable).

        None for a spool written before sealing that still holds unsent records: they
        cannot be sealed after the fact in links a batch can carry (their seqs are taken),
        so they go out unsealed first, the way they were written.
        """
        row = conn.execute("SELECT head, sealed FROM chain WHERE id = 1").fetchone()
        if row is None:
            # A new spool, or one written before sealing with nothing unsent: the chain
            # starts after what the collector already holds.
            acked = int(conn.execute("SELECT value FROM meta WHERE key = 'acked_seq'").fetchone()[0])
            if last > acked:
                return None
            head, sealed = chain.GENESIS, acked
            conn.execute("INSERT INTO chain VALUES (1, ?, ?)", (head, sealed))
        else:
            head, sealed = bytes(row[0]), int(row[1])
        self._head, self._segment_start = head, sealed + 1
        # Records written after the last seal (a crash before it): the open link goes on from them.
        for (data,) in conn.execute("SELECT data FROM records WHERE seq > ? ORDER BY seq", (sealed,)):
            self._digest.add(bytes(data))
        return sealed

    async def close(self) -> None:
        """Seal and commit everything queued, then stop the writer."""
        if self._sealer is not None:
            self._sealer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sealer
            self._sealer = None
        if self._thread is not None:
            self._seal_now()
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None

    # ---- the Outbox protocol -------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def acked_seq(self) -> int:
        return self._acked

    @property
    def signing_key(self) -> bytes:
        return b"" if self.key is None else chain.public_raw(self.key)

    @property
    def last_seq(self) -> int:
        return self._committed

    @property
    def depth(self) -> int:
        return self._next_seq - self._acked

    @property
    def oldest_unacked_ns(self) -> int:
        return self._oldest_ns if self.depth else 0

    def append(self, payload: Payload) -> int:
        if self._fatal is not None:
            raise RuntimeError(f"spool {self.path} failed: {self._fatal}")
        self._next_seq += 1
        seq = self._next_seq
        if isinstance(payload, Measurement):
            kind, check = KIND_RESULT, payload.check_id
        elif isinstance(payload, Gap):
            kind, check = KIND_GAP, ""
        else:
            kind, check = KIND_CLOCK, ""
        self._queue.put(_Append(seq, scheduled_ns_of(payload), check, kind, encode_record(seq, payload)))
        if self.key is not None:
            self._unsealed += 1
            if self._unsealed >= self.limits.seal_every:
                self._seal_now()
        return seq

    def _seal_now(self) -> None:
        """Queue a seal for everything appended so far (a seal needs at least one record)."""
        if self.key is None or not self._unsealed or self._fatal is not None:
            return
        self._next_seq += 1
        self._unsealed = 0
        self._queue.put(_SealMark(self._next_seq))

    async def _seal_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.limits.seal_interval_s)
            self._seal_now()

    async def read(self, after_seq: int, limit: int) -> list[Stored]:
        upto = self._committed
        if upto <= after_seq:
            return []
        return await asyncio.to_thread(self._read, after_seq, upto, limit)

    def _read(self, after_seq: int, upto: int, limit: int) -> list[Stored]:
        with self._read_lock:
            assert self._read_conn is not None
            rows = self._read_conn.execute(
                # The record holding after_seq+1 may start earlier (a gap's span), hence the first part.
                "SELECT seq, through_seq, kind, data FROM ("
                " SELECT * FROM (SELECT seq, through_seq, kind, data FROM records WHERE seq <= ?"
                "  ORDER BY seq DESC LIMIT 1) WHERE through_seq > ?"
                " UNION ALL"
                " SELECT seq, through_seq, kind, data FROM records WHERE seq > ? AND seq <= ?"
                ") ORDER BY seq LIMIT ?",
                (after_seq, after_seq, after_seq, upto, limit),
            ).fetchall()
            if self.key is not None and rows and rows[-1][2] != KIND_SEAL:
                # Whole links only: end at the last seal read, or (a link longer than the
                # limit) go on to the seal that closes it (upto is a seal).
                last_seal = max((i for i, r in enumerate(rows) if r[2] == KIND_SEAL), default=-1)
                if last_seal >= 0:
                    return [Stored(int(s), int(t), bytes(d)) for s, t, _k, d in rows[: last_seal + 1]]
                more = self._read_conn.execute(
                    "SELECT seq, through_seq, kind, data FROM records WHERE seq > ? AND seq <= ?"
                    " ORDER BY seq LIMIT ?",
                    (rows[-1][0], upto, self.limits.seal_every + 1),
                ).fetchall()
                for row in more:
                    rows.append(row)
                    if row[2] == KIND_SEAL:
                        break
        return [Stored(int(s), int(t), bytes(d)) for s, t, _k, d in rows]

    def ack(self, seq: int) -> None:
        if seq > self._acked:
            self._acked = min(seq, self._next_seq)
            self._queue.put(self._acked)

    async def wait_beyond(self, seq: int) -> None:
        while self._committed <= seq:
            self._grew.clear()
            await self._grew.wait()

    async def flush(self) -> None:
        """Wait until everything appended so far is committed (and sealed, with a key)."""
        self._seal_now()
        target = self._next_seq
        while self._committed < target and self._thread is not None:
            self._grew.clear()
            await self._grew.wait()

    # ---- the writer thread -----------------------------------------------------------

    def _run(self, conn: sqlite3.Connection) -> None:
        disk_acked = self._acked
        last_check = 0.0
        stopping = False
        try:
            while not stopping:
                try:
                    item = self._queue.get(timeout=self.limits.check_every_s)
                except queue.Empty:
                    item = None
                items = [] if item is None else [item]
                while True:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                appends = [i for i in items if isinstance(i, _Append | _SealMark)]
                acks = [i for i in items if isinstance(i, int)]
                stopping = any(i is _STOP for i in items)
                ack = max(acks, default=disk_acked)
                now = time.monotonic()
                check_bounds = now - last_check >= self.limits.check_every_s
                if not appends and ack <= disk_acked and not check_bounds:
                    continue
                conn.execute("BEGIN IMMEDIATE")
                try:
                    chain_before = (self._head, self._segment_start, self._digest)
                    if appends:
                        conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", self._rows(appends))
                        if self.key is not None:
                            conn.execute(
                                "UPDATE chain SET head = ?, sealed = ? WHERE id = 1",
                                (self._head, self._segment_start - 1),
                            )
                    if ack > disk_acked:
                        # seq first: the primary key bounds the scan (through_seq alone scans the table).
                        conn.execute("DELETE FROM records WHERE seq <= ?1 AND through_seq <= ?1", (ack,))
                        conn.execute("UPDATE meta SET value = ? WHERE key = 'acked_seq'", (ack,))
                    evicted = self._enforce_bounds(conn, ack) if check_bounds else None
                    oldest = conn.execute("SELECT scheduled_ns FROM records ORDER BY seq LIMIT 1").fetchone()
                    conn.execute("COMMIT")
                except BaseException:
                    self._head, self._segment_start, self._digest = chain_before
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
                self.stats.commits += 1
                disk_acked = max(disk_acked, ack)
                if check_bounds:
                    last_check = now
                if evicted is not None:
                    self.stats.evictions += 1
                    self.stats.evicted_results += sum(c.count for c in evicted.checks)
                    log.warning(
                        "spool full (%s): %d results of %d checks evicted, replaced by a gap record",
                        evicted.reason,
                        sum(c.count for c in evicted.checks),
                        len(evicted.checks),
                    )
                if self.key is None:
                    committed = appends[-1].seq if appends else None
                else:  # only sealed records are readable
                    seals = [a.seq for a in appends if isinstance(a, _SealMark)]
                    committed = seals[-1] if seals else None
                    self.stats.seals += len(seals)
                assert self._loop is not None
                self._loop.call_soon_threadsafe(
                    self._committed_to, committed, int(oldest[0]) if oldest else 0
                )
        except BaseException as exc:  # disk full, I/O error: make it loud, stop accepting
            self._fatal = exc
            log.exception("spool %s failed", self.path)
        finally:
            conn.close()

    def _rows(self, appends: list[_Append | _SealMark]) -> list[tuple[int, int, int, str, int, bytes]]:
        """Spool rows for queued records, sealing where a seal mark says (writer thread)."""
        rows = []
        for a in appends:
            if isinstance(a, _Append):
                if self.key is not None:
                    self._digest.add(a.data)
                rows.append((a.seq, a.seq, a.scheduled_ns, a.check_id, a.kind, a.data))
                continue
            assert self.key is not None
            now = time.time_ns()
            seal = chain.make_seal(
                self.key,
                epoch=self._epoch,
                first_seq=self._segment_start,
                last_seq=a.seq - 1,
                prev=self._head,
                digest=self._digest.value(),
                count=self._digest.count,
                sealed_ns=now,
            )
            data = chain.seal_record(a.seq, seal)
            self._head = chain.parse_link(a.seq, seal).head
            self._segment_start = a.seq + 1
            self._digest = chain.Digest()
            rows.append((a.seq, a.seq, now, "", KIND_SEAL, data))
        return rows

    def _committed_to(self, seq: int | None, oldest_ns: int) -> None:
        if seq is not None and seq > self._committed:
            self._committed = seq
            self._grew.set()
        self._oldest_ns = oldest_ns

    def _enforce_bounds(self, conn: sqlite3.Connection, acked: int) -> Gap | None:
        """Evict the oldest unacknowledged records if a bound is exceeded; return the gap record."""
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        used = (pages - free) * page_size
        cutoff = time.time_ns() - int(self.limits.max_age_s * 1e9)
        too_old = 0
        if 0 < self._oldest_ns < cutoff:  # the count scans the backlog: only when something is too old
            too_old = conn.execute(
                "SELECT count(*) FROM records WHERE seq > ? AND kind IN (?, ?) AND scheduled_ns < ?",
                (acked, KIND_RESULT, KIND_CLOCK, cutoff),
            ).fetchone()[0]
        n = 0
        reason = ""
        if used > self.limits.max_bytes:
            count = conn.execute("SELECT count(*) FROM records").fetchone()[0] or 1
            per_row = used / count
            # Make room for a tenth of the bound at once, so eviction is rare and batched.
            n = max(1, int((used - self.limits.max_bytes * 0.9) / per_row))
            reason = "spool_full"
        if too_old > n:
            n = too_old
            reason = "spool_age"
        if n == 0:
            return None
        limit = n + (self.limits.seal_every + 1 if self.key is not None else 0)
        rows = conn.execute(
            "SELECT seq, through_seq, scheduled_ns, check_id, kind, data FROM records"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (acked, limit),
        ).fetchall()
        if self.key is not None:
            # Whole links only: cut after the last seal within reach (the first seal past n).
            cut = next((i for i, r in enumerate(rows) if r[4] == KIND_SEAL and i + 1 >= n), None)
            if cut is None:
                cut = max((i for i, r in enumerate(rows) if r[4] == KIND_SEAL), default=-1)
            rows = rows[: cut + 1]
        else:
            rows = rows[:n]
        spans: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # from, to, count
        first_seq = rows[0][0] if rows else 0
        through = first_seq
        for _seq, thr, scheduled, check, kind, data in rows:
            through = thr
            if kind == KIND_RESULT:
                _merge(spans, check, scheduled, scheduled, 1)
            elif kind == KIND_GAP:
                for c in decode_gap(bytes(data)).checks:
                    _merge(spans, c.check_id, c.from_ns, c.to_ns, c.count)
        if not spans:
            return None
        if self.key is not None:
            through -= 1  # the last row is a seal: the eviction link takes its seq
        gap = Gap(
            through_seq=through,
            reason=reason,
            evicted_ns=time.time_ns(),
            checks=tuple(GapCheck(k, v[0], v[1], v[2]) for k, v in sorted(spans.items())),
        )
        gap_bytes = encode_record(first_seq, gap)
        conn.execute("DELETE FROM records WHERE seq >= ? AND seq <= ?", (first_seq, rows[-1][1]))
        conn.execute(
            "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)",
            (first_seq, through, min(v[0] for v in spans.values()), "", KIND_GAP, gap_bytes),
        )
        if self.key is not None:
            links = [decode_seal(bytes(r[5])) for r in rows if r[4] == KIND_SEAL]
            first_link = chain.parse_link(rows[0][0], links[0])  # seq is not used for prev
            last_link = chain.parse_link(rows[-1][0], links[-1])
            seal = chain.make_seal(
                self.key,
                epoch=self._epoch,
                first_seq=first_seq,
                last_seq=through,
                prev=first_link.prev,
                digest=chain.digest_of([gap_bytes]),
                count=1,
                sealed_ns=time.time_ns(),
                replaces_head=last_link.head,
                evicted_links=len(links),
            )
            seq = rows[-1][0]
            conn.execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)",
                (seq, seq, time.time_ns(), "", KIND_SEAL, chain.seal_record(seq, seal)),
            )
        return gap


def _merge(spans: dict[str, list[int]], check: str, from_ns: int, to_ns: int, count: int) -> None:
    s = spans[check]
    s[0] = from_ns if s[2] == 0 else min(s[0], from_ns)
    s[1] = max(s[1], to_ns)
    s[2] += count
