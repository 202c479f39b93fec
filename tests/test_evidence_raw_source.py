"""``RawSource`` (the evidence report's slot source) answers in C loops as its reference loops did.

The report of a bundle, in export and in verify, reads every result of the period through
``RawSource``; its slot bits and summaries are built by SQL groups and C loops over columns
instead of a Python statement per row. These tests hold them equal, bit for bit and key for
key (histogram keys in the same order), to the per-row loops they replaced, on rows made to
hit every rule: internal results, degraded and failed ones, several agents, durations on and
beyond the latency edges, clock offsets on the ladder's steps and far off, unsynced clocks,
versions starting and ending inside the range.
"""

from __future__ import annotations

import random
import sqlite3
from itertools import pairwise
from pathlib import Path

import pytest

from collector import store
from collector.evidence.report_doc import MemoSource
from collector.rollups import INTERNAL, RawSource, raw_summaries, raw_summary
from collector.sla.engine import AgentBits, Part, Summary
from collector.sla.histogram import CLOCK_LADDER_NS, LATENCY_EDGES_NS

S = 1_000_000_000
HOUR = 3600 * S
T0 = 1_790_000_000 * S - 1_790_000_000 * S % HOUR


def _reference_slot_bits(conn: sqlite3.Connection, part: Part, k0: int, k1: int) -> dict[int, AgentBits]:
    """``RawSource.slot_bits`` as it was: a Python statement per row."""
    width = k1 - k0
    size = (width + 7) // 8
    agents: dict[int, tuple[bytearray, bytearray, bytearray]] = {}
    interval, offset = part.interval_ns, part.offset_ns
    lo = max(part.instant(k0), part.valid_from)
    hi = part.instant(k1) if part.valid_to is None else min(part.instant(k1), part.valid_to)
    cur = conn.execute(
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
        a: AgentBits(*(int.from_bytes(b, "little") for b in (ok, fail, deg)))
        for a, (ok, fail, deg) in agents.items()
    }


def _world(path: Path, seed: int) -> sqlite3.Connection:
    rng = random.Random(seed)
    db = store.open_store(path)
    conn = db.conn
    rows = []
    seq = 0
    durations = [0, 1, *LATENCY_EDGES_NS[:3], LATENCY_EDGES_NS[-1], LATENCY_EDGES_NS[-1] + 1, 2**62]
    offsets = [0, *CLOCK_LADDER_NS, *(-x for x in CLOCK_LADDER_NS), CLOCK_LADDER_NS[0] + 1, -(2**62), 2**62]
    for check in (1, 2):
        for k in range(3 * 60):  # three hours of minutes, slots at offset 7 s
            for agent in (1, 2, 3):
                if rng.random() < 0.15:
                    continue  # no result from this agent for this slot
                for _ in range(2 if rng.random() < 0.05 else 1):  # now and then two results a slot
                    seq += 1
                    ok = rng.random() < 0.8
                    kind = "" if ok else rng.choice(["timeout", "refused", INTERNAL])
                    t = T0 + 7 * S + k * 60 * S + rng.randrange(0, 2 * S)
                    duration = rng.choice(durations) if rng.random() < 0.2 else rng.randrange(1, 10**9)
                    offset = rng.choice(offsets) if rng.random() < 0.3 else rng.randrange(-(10**6), 10**6)
                    rows.append(
                        (agent, 1, seq, check, "r", t, t, duration, int(ok), int(rng.random() < 0.2), kind,
                         "", "{}", "{}", 0, offset, int(rng.random() < 0.9))
                    )  # fmt: skip
    conn.executemany(f"INSERT INTO results VALUES ({','.join('?' * len(rows[0]))})", rows)
    conn.commit()
    return conn


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> sqlite3.Connection:
    return _world(tmp_path_factory.mktemp("raw") / "raw.db", 6)


def _part(check: int, valid_from: int, valid_to: int | None, interval: int = 60 * S) -> Part:
    return Part(check, f"lab/c{check}", f"c{check}", interval, 7 * S, 5 * S, valid_from, valid_to)


@pytest.mark.parametrize(
    ("valid_from", "valid_to", "k0", "k1"),
    [
        (0, None, -5, 10**6),  # the whole range, and slots before and after it
        (T0 + 20 * 60 * S, T0 + 100 * 60 * S + 3, 0, 10**6),  # a version inside it
        (0, None, 25, 26),  # one slot
        (0, None, 40, 40),  # none
        (0, None, 99, 7),  # reversed
    ],
)
def test_slot_bits_equal_the_reference_loop(
    conn: sqlite3.Connection, valid_from: int, valid_to: int | None, k0: int, k1: int
) -> None:
    for check in (1, 2, 3):
        part = _part(check, valid_from, valid_to)
        base = (T0 - 7 * S) // (60 * S)  # slot numbers on the check's grid
        want = _reference_slot_bits(conn, part, base + k0, base + k1)
        got = RawSource(conn).slot_bits(part, base + k0, base + k1)
        assert got == want
        if check != 3 and k1 - k0 > 100:
            assert len(got) == 3 and all(b.ok and b.fail and b.deg for b in got.values())


def _reference(conn: sqlite3.Connection, check: int, a: int, b: int) -> Summary:
    out = Summary()
    raw_summary(conn, check, a, b, out)
    return out


def _same(got: Summary, want: Summary) -> None:
    assert got == want
    assert list(got.latency) == list(want.latency)  # keys in the same order, too
    assert list(got.clock) == list(want.clock)


def test_summaries_equal_the_reference_loop(conn: sqlite3.Connection) -> None:
    rng = random.Random(7)
    for check in (1, 2, 3):
        edges = [
            T0 - HOUR,
            T0,
            T0 + 1,
            T0 + 7 * S,
            T0 + HOUR,
            T0 + HOUR + 61 * S,
            T0 + 3 * HOUR,
            T0 + 9 * HOUR,
        ]
        got = raw_summaries(conn, check, edges)
        assert len(got) == len(edges) - 1
        for (a, b), s in zip(pairwise(edges), got, strict=True):
            _same(s, _reference(conn, check, a, b))
        for _ in range(20):
            a = T0 + rng.randrange(-HOUR, 4 * HOUR)
            b = a + rng.randrange(0, 2 * HOUR)
            _same(raw_summaries(conn, check, [a, b])[0], _reference(conn, check, a, b))
            _same(RawSource(conn).summary(_part(check, 0, None), [(a, b), (b, b + HOUR)]),
                  _add(_reference(conn, check, a, b), _reference(conn, check, b, b + HOUR)))  # fmt: skip
    assert sum(s.results for s in raw_summaries(conn, 1, [T0, T0 + 4 * HOUR])) > 400


def _add(a: Summary, b: Summary) -> Summary:
    a.add(b)
    return a


def test_rows_in_several_tables_answer_as_their_union(conn: sqlite3.Connection, tmp_path: Path) -> None:
    """RawSource over the pieces' tables (evidence verify) gives the answers of one table with all rows."""
    for i, (lo, hi) in enumerate(((0, 900), (900, 10**9))):
        conn.execute(f"ATTACH ? AS part{i}", (str(tmp_path / f"part{i}.db"),))
        conn.execute(
            f"CREATE TABLE part{i}.results AS SELECT * FROM results WHERE seq > ? AND seq <= ?", (lo, hi)
        )
    try:
        split, whole = RawSource(conn, ["part0.results", "part1.results"]), RawSource(conn)
        base = (T0 - 7 * S) // (60 * S)
        edges = [T0 - HOUR, T0 + 7 * S, T0 + HOUR, T0 + 2 * HOUR + 1, T0 + 9 * HOUR]
        for check in (1, 2):
            part = _part(check, 0, None)
            assert split.slot_bits(part, base, base + 1000) == whole.slot_bits(part, base, base + 1000)
            assert split.summaries(part, edges) == whole.summaries(part, edges)
    finally:
        conn.execute("DETACH part0")
        conn.execute("DETACH part1")


def test_memo_reads_each_piece_once_and_adds_as_the_loop(conn: sqlite3.Connection) -> None:
    """The report's memo reads runs of hour pieces in one call; the sums are the loop's, piece by piece."""
    calls: list[int] = []

    class Counting(RawSource):
        def summaries(self, part: Part, edges: list[int]) -> list[Summary]:  # type: ignore[override]
            calls.append(len(edges) - 1)
            return super().summaries(part, edges)

    memo = MemoSource(Counting(conn), [T0 + 90 * 60 * S], split_summaries=True)
    part = _part(1, 0, None)
    first = memo.summary(part, [(T0 + 5 * 60 * S, T0 + 150 * 60 * S)])
    assert calls == [4]  # 00:05-01:00, 01:00-01:30 (a cut), 01:30-02:00, 02:00-02:30
    want = Summary()
    for a, b in ((5, 60), (60, 90), (90, 120), (120, 150)):
        want.add(_reference(conn, 1, T0 + a * 60 * S, T0 + b * 60 * S))
    _same(first, want)
    again = memo.summary(part, [(T0 + 60 * 60 * S, T0 + 180 * 60 * S)])  # two pieces known, one new
    assert calls == [4, 1]
    want = Summary()
    for a, b in ((60, 90), (90, 120), (120, 180)):
        want.add(_reference(conn, 1, T0 + a * 60 * S, T0 + b * 60 * S))
    _same(again, want)
