"""Where every record's bytes are kept: ``record_log`` (one row a record) and ``record_batches``
(one row a batch).

Why two tables: the evidence is every record exactly as its agent sent it, and storing it a row a
record cost the writer as much as a quarter of its time (a b-tree cell of ~200 bytes a record,
~3.3 µs each; the batch's records as one blob cost ~0.9 µs each, `bench/RESULTS.md`). So a batch
none of whose records is stored yet goes in as one ``record_batches`` row: the records' bytes one
after another, with each record's seq, end offset and kind beside them. Seals always go to
``record_log`` (the export and retention find them by kind through its key), and so do the records
of a batch that overlaps stored ones (a resend), minus those a stored batch row already holds.

Invariants: a stream's batch rows never overlap one another; a record is held once (in one table
or the other; a record in both, which only a collector of an earlier version could leave, is the
same bytes by the chain, and readers yield it once); every reader goes through :func:`records`,
which yields a stream's records in seq order whichever table holds them.
"""

from __future__ import annotations

import sqlite3
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, chain, pairwise
from typing import Any

SEAL = 5  # the Record oneof field number of a seal (record_log.kind)
RESULT = 2

LOG_SQL = "INSERT OR IGNORE INTO record_log VALUES (?, ?, ?, ?, ?, ?)"
_BATCH_SQL = "INSERT INTO record_batches (agent_id, epoch, first_seq, last_seq, seqs, ends, kinds, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_LOG_STORED = "SELECT 1 FROM record_log WHERE agent_id = ? AND epoch = ? AND seq BETWEEN ? AND ? LIMIT 1"
# The batch rows holding seqs lo..hi: the one starting at or before lo, and those starting after it.
# Either with every column, or only the seqs (a row's bytes are read only when asked for).
_ALL = "first_seq, last_seq, seqs, ends, kinds, raw"
_SEQS = "first_seq, last_seq, seqs"
_BATCH_AT = (
    "SELECT {} FROM record_batches WHERE agent_id = ? AND epoch = ? AND first_seq <= ?"
    " ORDER BY first_seq DESC LIMIT 1"
)
_BATCHES_AFTER = (
    "SELECT {} FROM record_batches WHERE agent_id = ? AND epoch = ? AND first_seq > ? AND first_seq <= ?"
    " ORDER BY first_seq"
)


def _packed(values: Sequence[int]) -> bytes:
    a = array("q", values)
    if sys.byteorder != "little":  # pragma: no cover - stored little-endian everywhere
        a.byteswap()
    return a.tobytes()


def _unpacked(blob: bytes) -> array[int]:
    a = array("q")
    a.frombytes(blob)
    if sys.byteorder != "little":  # pragma: no cover
        a.byteswap()
    return a


def store(conn: sqlite3.Connection, agent_id: int, epoch: int, rows: Sequence[Sequence[Any]]) -> None:
    """Store a batch's records (rows of ``record_log``'s columns: agent, epoch, seq, through seq,
    kind, bytes; ``rollups.Columns`` or tuples), each once, in the caller's transaction."""
    from collector import rollups  # the storage layer's bulk insert (compiled where built)

    if not rows:
        return
    columns = rows.columns if isinstance(rows, rollups.Columns) else list(zip(*rows, strict=True))
    agents, epochs, seqs, throughs, kinds, raws = columns
    n = len(seqs)
    if agents.count(agent_id) != n or epochs.count(epoch) != n:  # not one stream: record by record
        rollups.insert_many(conn, LOG_SQL, "INSERT OR IGNORE INTO record_log VALUES ", 6, rows)
        return
    # Seals (and kinds past a byte) record by record; the others as one batch row if none is stored.
    single = (
        [] if kinds.count(RESULT) == n else [i for i, k in enumerate(kinds) if k == SEAL or not 0 <= k < 256]
    )
    rest: Sequence[int] = range(n)
    indexed = bool(single)  # the batch row's records picked by index (else the columns as they are)
    if single:
        skip = set(single)
        rest = [i for i in range(n) if i not in skip]
    if rest:
        b_seqs = [seqs[i] for i in rest] if indexed else list(seqs)
        lo, hi = min(b_seqs), max(b_seqs)
        held = _held_by_batches(conn, agent_id, epoch, lo, hi)
        if not held and conn.execute(_LOG_STORED, (agent_id, epoch, lo, hi)).fetchone() is None:
            if any(a >= b for a, b in pairwise(b_seqs)):  # put them in seq order
                rest = sorted(rest, key=seqs.__getitem__)
                b_seqs = [seqs[i] for i in rest]
                indexed = True
            b_kinds = [kinds[i] for i in rest] if indexed else kinds
            b_raws = [raws[i] for i in rest] if indexed else raws
            _insert_batch(conn, agent_id, epoch, b_seqs, b_kinds, b_raws)
        else:  # a resend: what no batch row holds goes record by record (OR IGNORE for the rest)
            single += [i for i in rest if seqs[i] not in held]
    if single:
        rollups.insert_many(
            conn,
            LOG_SQL,
            "INSERT OR IGNORE INTO record_log VALUES ",
            6,
            [(agents[i], epochs[i], seqs[i], throughs[i], kinds[i], raws[i]) for i in sorted(single)],
        )


def _insert_batch(
    conn: sqlite3.Connection,
    agent_id: int,
    epoch: int,
    seqs: Sequence[int],
    kinds: Sequence[int],
    raws: Sequence[bytes],
) -> None:
    """One ``record_batches`` row of records in seq order (kinds below 256)."""
    conn.execute(
        _BATCH_SQL,
        (
            agent_id,
            epoch,
            seqs[0],
            seqs[-1],
            _packed(seqs),
            _packed(list(accumulate(map(len, raws)))),
            array("B", kinds).tobytes(),
            b"".join(raws),
        ),
    )


def _batch_rows(
    conn: sqlite3.Connection, agent_id: int, epoch: int, lo: int, hi: int, columns: str = _ALL
) -> Iterator[tuple[Any, ...]]:
    """The stream's batch rows holding any seq in lo..hi, in seq order (read as they are used: a
    month's export walks hundreds of thousands of them)."""
    at = conn.execute(_BATCH_AT.format(columns), (agent_id, epoch, lo)).fetchone()
    if at is not None and at[1] >= lo:
        yield at
    yield from conn.execute(_BATCHES_AFTER.format(columns), (agent_id, epoch, lo, hi))


def _held_by_batches(conn: sqlite3.Connection, agent_id: int, epoch: int, lo: int, hi: int) -> set[int]:
    held: set[int] = set()
    for row in _batch_rows(conn, agent_id, epoch, lo, hi, _SEQS):
        held.update(_unpacked(row[2]))
    return held


def _from_batches(
    batch_rows: Iterable[tuple[Any, ...]], lo: int, hi: int
) -> Iterator[tuple[int, int, bytes]]:
    """The records with ``lo <= seq <= hi`` of batch rows (:func:`_batch_rows`), in seq order."""
    for _first, _last, seqs_blob, ends_blob, kinds, raw in batch_rows:
        seqs, ends = _unpacked(seqs_blob), _unpacked(ends_blob)
        start = 0
        for seq, end, kind in zip(seqs, ends, kinds, strict=True):
            if lo <= seq <= hi:
                yield seq, kind, raw[start:end]
            start = end


def records(
    conn: sqlite3.Connection, agent_id: int, epoch: int, lo: int, hi: int
) -> Iterator[tuple[int, int, bytes]]:
    """(seq, kind, bytes) of the stream's stored records with ``lo <= seq <= hi``, in seq order,
    each once, from both tables."""
    singles = iter(
        conn.execute(
            "SELECT seq, kind, raw FROM record_log WHERE agent_id = ? AND epoch = ? AND seq >= ? AND seq <= ?"
            " ORDER BY seq",
            (agent_id, epoch, lo, hi),
        )
    )
    batched = _from_batches(_batch_rows(conn, agent_id, epoch, lo, hi), lo, hi)
    first = next(batched, None)
    if first is None:  # the rows as they come
        yield from singles
        return
    # Two sorted runs merged by hand (heapq.merge with a key cost ~1 µs a record more): the
    # singles are mostly seals, one every few records.
    single = next(singles, None)
    for record in chain((first,), batched):
        seq = record[0]
        while single is not None and single[0] < seq:
            yield single
            single = next(singles, None)
        if single is not None and single[0] == seq:  # in both (an earlier version's): once
            single = next(singles, None)
        yield record
    while single is not None:
        yield single
        single = next(singles, None)


def first_record(conn: sqlite3.Connection, agent_id: int, epoch: int) -> tuple[int, int] | None:
    """(seq, kind) of the stream's first stored record."""
    single = conn.execute(
        "SELECT seq, kind FROM record_log WHERE agent_id = ? AND epoch = ? ORDER BY seq LIMIT 1",
        (agent_id, epoch),
    ).fetchone()
    batch = conn.execute(
        "SELECT first_seq, substr(kinds, 1, 1) FROM record_batches WHERE agent_id = ? AND epoch = ?"
        " ORDER BY first_seq LIMIT 1",
        (agent_id, epoch),
    ).fetchone()
    found = [(int(single[0]), int(single[1]))] if single else []
    if batch:
        found.append((int(batch[0]), bytes(batch[1])[0]))
    return min(found) if found else None


def last_seq(conn: sqlite3.Connection, agent_id: int, epoch: int) -> int | None:
    """The stream's last stored seq."""
    (a,) = conn.execute(
        "SELECT max(seq) FROM record_log WHERE agent_id = ? AND epoch = ?", (agent_id, epoch)
    ).fetchone()
    (b,) = conn.execute(
        "SELECT max(last_seq) FROM record_batches WHERE agent_id = ? AND epoch = ?", (agent_id, epoch)
    ).fetchone()
    found = [int(v) for v in (a, b) if v is not None]
    return max(found) if found else None


def delete_before(conn: sqlite3.Connection, agent_id: int, epoch: int, seq: int) -> int:
    """Delete the stream's records before ``seq``; return how many. A batch row that straddles
    ``seq`` is replaced by a batch row of its records from ``seq`` on, their bytes unchanged."""
    deleted = conn.execute(
        "DELETE FROM record_log WHERE agent_id = ? AND epoch = ? AND seq < ?", (agent_id, epoch, seq)
    ).rowcount
    for _first, _last, seqs_blob in conn.execute(
        "SELECT first_seq, last_seq, seqs FROM record_batches"
        " WHERE agent_id = ? AND epoch = ? AND first_seq < ? AND last_seq < ?",
        (agent_id, epoch, seq, seq),
    ).fetchall():
        deleted += len(_unpacked(seqs_blob))
    conn.execute(
        "DELETE FROM record_batches WHERE agent_id = ? AND epoch = ? AND first_seq < ? AND last_seq < ?",
        (agent_id, epoch, seq, seq),
    )
    straddling = conn.execute(_BATCH_AT.format(_ALL), (agent_id, epoch, seq - 1)).fetchone()
    if straddling is not None and straddling[1] >= seq:
        kept = list(_from_batches([straddling], seq, straddling[1]))
        deleted += len(_unpacked(straddling[2])) - len(kept)
        conn.execute(
            "DELETE FROM record_batches WHERE agent_id = ? AND epoch = ? AND first_seq = ?",
            (agent_id, epoch, straddling[0]),
        )
        if kept:  # the same records' bytes, now a batch row of their own
            _insert_batch(conn, agent_id, epoch, *map(list, zip(*kept, strict=True)))
    return deleted


def count(conn: sqlite3.Connection) -> int:
    """How many records are stored, both tables together."""
    (a,) = conn.execute("SELECT count(*) FROM record_log").fetchone()
    total = int(a)
    for (seqs_blob,) in conn.execute("SELECT seqs FROM record_batches"):
        total += len(seqs_blob) // 8
    return total


def every_record(conn: sqlite3.Connection) -> Iterator[tuple[int, int, int, int, bytes]]:
    """(agent, epoch, seq, kind, bytes) of every stored record, by stream and seq (tests, tools)."""
    streams = conn.execute(
        "SELECT agent_id, epoch FROM record_log UNION SELECT agent_id, epoch FROM record_batches ORDER BY 1, 2"
    ).fetchall()
    for agent_id, epoch in streams:
        for seq, kind, raw in records(conn, agent_id, epoch, -(2**63), 2**63 - 1):
            yield int(agent_id), int(epoch), seq, kind, raw
