"""Slots → slot states (quorum) → slice states → time accounts. The counting rules live here.

Definitions (the README states them for users):

* **Slot**: one scheduled instant of one check (``slaprobe.schedule``). Per agent, a slot
  is *ok* (results, all successful), *failed* (a failed result) or absent. A result of
  kind ``internal`` is no result. An ok result flagged degraded makes the agent's slot degraded.
* **Slot state**, with ``n`` agents that probed it, ``f`` that saw a failure, quorum ``k``:
  unknown when ``n = 0`` (gap when the slot lies in a span an agent's spool evicted);
  down when ``f >= k``; partial when ``0 < f < k`` and some agent succeeded; unknown
  (no quorum) when every agent that probed failed but fewer than ``k`` did; otherwise
  degraded when at least ``k`` of the agents that succeeded (or all of them, if fewer)
  saw it degraded, else up. With the default ``k = 1`` any failure is down.
* **Slice**: ``slice`` long, starting at ``origin + j*slice`` (origin: the check's schedule
  offset for a service of one check, the epoch otherwise). A slice takes the most severe
  known state of the slots due in it over all the service's checks, in the order down,
  partial, degraded, up; with nothing known it is gap (if a slot was lost to a spool) or
  unknown; with no slot due at all (no check existed) it is unmonitored.
* **Class**: a slice belongs to the period, to service hours and to maintenance windows by
  its *start*. Pending (a slot in it is not due yet: ``now - timeout - 2 s``) comes first,
  then out of service hours; what a maintenance window does to the slices in it is a
  counting rule applied by the report (``report.tally``).

Everything is computed on whole-period bit masks (Python ints, bit ``j - j0`` for slice
``j``): a month of one-minute slices is a 44,640-bit integer, and popcounts are the accounts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from collector.sla.histogram import Hist, add
from collector.sla.timeline import Interval

NS_PER_S = 1_000_000_000
GRACE_NS = 2 * NS_PER_S

# Slice ranks: a slice takes the highest rank among the slots due in it.
NONE, UNKNOWN, GAP, UP, DEGRADED, PARTIAL, DOWN = range(7)
STATES = ("unmonitored", "unknown", "gap", "up", "degraded", "partial", "down")


@dataclass(frozen=True)
class Part:
    """One check version inside the evaluated period: its own slot grid and validity."""

    check_row: int
    key: str
    name: str
    interval_ns: int
    offset_ns: int
    timeout_ns: int
    valid_from: int
    valid_to: int | None

    def slot_range(self, start_ns: int, end_ns: int) -> tuple[int, int]:
        """Slot indexes whose instant lies in [start, end) and inside this version's validity."""
        lo = max(start_ns, self.valid_from)
        hi = end_ns if self.valid_to is None else min(end_ns, self.valid_to)
        k0 = -((self.offset_ns - lo) // self.interval_ns)
        k1 = -((self.offset_ns - hi) // self.interval_ns)
        return k0, max(k0, k1)

    def instant(self, k: int) -> int:
        return self.offset_ns + k * self.interval_ns


@dataclass
class AgentBits:
    """One agent's outcomes over a slot range: bit ``k - k0`` for slot ``k``."""

    ok: int = 0
    fail: int = 0
    deg: int = 0


@dataclass
class Summary:
    """What the results in counted time say besides slot states."""

    latency: Hist = field(default_factory=dict)  # successful durations, by bucket
    results: int = 0  # non-internal results
    clock: Hist = field(default_factory=dict)  # |clock offset| by ladder step, beyond the first
    unsynced: int = 0  # results from an agent whose clock was never synchronised
    approximate: bool = False  # some latency came from an hour only partly counted (raw expired)

    def add(self, other: Summary) -> None:
        add(self.latency, other.latency)
        self.results += other.results
        add(self.clock, other.clock)
        self.unsynced += other.unsynced
        self.approximate |= other.approximate


class Source(Protocol):
    """Where slot outcomes and result summaries come from: raw rows or rollups."""

    def slot_bits(self, part: Part, k0: int, k1: int) -> dict[int, AgentBits]: ...

    def gaps(self, check_row: int, start_ns: int, end_ns: int) -> list[Interval]: ...

    def summary(self, part: Part, intervals: Sequence[Interval]) -> Summary: ...


# ---- bit helpers -------------------------------------------------------------------------


def ones(n: int) -> int:
    return (1 << n) - 1 if n > 0 else 0


def span(lo: int, hi: int) -> int:
    """Bits lo..hi-1 set."""
    return ones(hi - lo) << lo if hi > lo else 0


def at_least(masks: Sequence[int], k: int, width: int) -> int:
    """Bits set in at least ``k`` of ``masks``."""
    if k <= 0:
        return ones(width)
    if k > len(masks):
        return 0
    if k == 1:
        out = 0
        for m in masks:
            out |= m
        return out
    counts = [ones(width)] + [0] * k
    for i, m in enumerate(masks):
        for j in range(min(k, i + 1), 0, -1):
            counts[j] |= counts[j - 1] & m
    return counts[k]


def runs(mask: int) -> Iterator[tuple[int, int]]:
    """Maximal runs of set bits as [start, end) bit positions."""
    if not mask:
        return
    edges = mask ^ (mask << 1)
    data = edges.to_bytes((edges.bit_length() + 7) // 8, "little")
    start = -1
    for m in _NONZERO.finditer(data):  # skips runs of zero bytes in C
        i, byte = m.start(), data[m.start()]
        while byte:
            low = byte & -byte
            pos = i * 8 + low.bit_length() - 1
            byte ^= low
            if start < 0:
                start = pos
            else:
                yield start, pos
                start = -1


_NONZERO = re.compile(rb"[^\x00]")


def popcount(x: int) -> int:
    return x.bit_count()


# ---- slot states -----------------------------------------------------------------------------


@dataclass
class SlotStates:
    """Per-slot states of one part over a slot range (bit ``k - k0``); they are disjoint."""

    down: int = 0
    partial: int = 0
    degraded: int = 0
    up: int = 0
    gap: int = 0
    unknown: int = 0  # due, no known state (no result, or no quorum), not in a gap

    def by_rank(self) -> list[tuple[int, int]]:
        return [
            (UNKNOWN, self.unknown),
            (GAP, self.gap),
            (UP, self.up),
            (DEGRADED, self.degraded),
            (PARTIAL, self.partial),
            (DOWN, self.down),
        ]


def slot_states(bits: dict[int, AgentBits], quorum: int, width: int, gap_mask: int) -> SlotStates:
    """Combine the agents' outcomes slot by slot under the quorum rule (see the module doc)."""
    due = ones(width)
    agents = list(bits.values())
    fails = [a.fail for a in agents]
    succs = [a.ok & ~a.fail for a in agents]
    probed = any_fail = any_succ = 0
    for a, s in zip(agents, succs, strict=True):
        probed |= a.ok | a.fail
        any_fail |= a.fail
        any_succ |= s
    down = any_fail if quorum == 1 else at_least(fails, quorum, width)
    partial = any_fail & any_succ & ~down
    no_quorum = probed & ~down & ~any_succ
    degraded_by = [a.deg & s for a, s in zip(agents, succs, strict=True)]
    if quorum == 1:
        enough = 0
        for d in degraded_by:
            enough |= d
    else:
        fresh = 0  # slots where some agent succeeded without degradation
        for a, s in zip(agents, succs, strict=True):
            fresh |= s & ~a.deg
        enough = at_least(degraded_by, quorum, width) | (any_succ & ~fresh)
    clean = any_succ & ~any_fail
    degraded = clean & enough
    up = clean & ~degraded
    missing = due & ~probed
    gap = missing & gap_mask
    unknown = (missing & ~gap) | no_quorum
    return SlotStates(down & due, partial & due, degraded & due, up & due, gap, unknown & due)


# ---- slices ----------------------------------------------------------------------------------


@dataclass
class Grid:
    """The slices of one evaluation: slice ``j`` is [origin + j*slice, origin + (j+1)*slice)."""

    origin: int
    slice_ns: int
    j0: int
    j1: int

    @classmethod
    def covering(cls, start_ns: int, end_ns: int, slice_ns: int, origin: int) -> Grid:
        j0 = -((origin - start_ns) // slice_ns)
        j1 = -((origin - end_ns) // slice_ns)
        return cls(origin, slice_ns, j0, max(j0, j1))

    @property
    def width(self) -> int:
        return self.j1 - self.j0

    def start(self, j: int) -> int:
        return self.origin + j * self.slice_ns

    def first_at_or_after(self, t: int) -> int:
        return -((self.origin - t) // self.slice_ns)

    def mask_of(self, intervals: Sequence[Interval]) -> int:
        """Slices (bit j - j0) whose start lies in one of ``intervals``."""
        m = 0
        for a, b in intervals:
            lo = max(self.first_at_or_after(a), self.j0) - self.j0
            hi = min(self.first_at_or_after(b), self.j1) - self.j0
            m |= span(lo, hi)
        return m

    def instants(self, mask: int) -> list[Interval]:
        """The time covered by the slices of ``mask``, as merged intervals."""
        return [(self.start(self.j0 + a), self.start(self.j0 + b)) for a, b in runs(mask)]


@dataclass
class Evaluation:
    """Slice states and classes of one service (or check) over a period, as masks over the grid."""

    grid: Grid
    state: dict[str, int]  # STATES name + "pending" → mask; disjoint, their union is every slice
    pending: int
    out_of_hours: int  # elapsed slices starting outside service hours
    maintenance: int  # elapsed in-hours slices starting in a maintenance window
    pending_in_hours: int  # pending slices in service hours
    pending_maintenance: int  # ... of which in a maintenance window
    summary: Summary
    parts: list[Part]

    @property
    def in_scope(self) -> int:
        """Elapsed slices in service hours: what the SLA speaks about."""
        return ones(self.grid.width) & ~self.pending & ~self.out_of_hours

    def seconds(self, slices: int) -> float:
        return slices * self.grid.slice_ns / NS_PER_S


def evaluate(
    source: Source,
    parts: Sequence[Part],
    *,
    slice_ns: int,
    origin: int,
    start_ns: int,
    end_ns: int,
    now_ns: int,
    quorum: int,
    in_hours: Sequence[Interval],
    maintenance: Sequence[Interval],
    with_summary: bool = True,
) -> Evaluation:
    """Evaluate the slices starting in [start_ns, end_ns) for the service made of ``parts``."""
    grid = Grid.covering(start_ns, end_ns, slice_ns, origin)
    width = grid.width
    everything = ones(width)
    # Pending: every slice from the one holding the first slot not yet due.
    undue = []
    for p in parts:
        cutoff = now_ns - p.timeout_ns - GRACE_NS
        if p.valid_to is not None and p.valid_to <= cutoff:
            continue  # this version ended: all its slots are due
        t = max(cutoff, p.valid_from)
        undue.append(p.instant(-((p.offset_ns - t) // p.interval_ns)))
    first_undue = min(undue) if undue else now_ns - GRACE_NS
    jp = min(max((first_undue - origin) // slice_ns, grid.j0), grid.j1)
    pending = span(jp - grid.j0, width)
    due_end = grid.start(jp)

    aligned = all(p.interval_ns == slice_ns for p in parts)
    ranks = None if aligned else bytearray(width)
    acc = {name: 0 for name in STATES[1:]}
    per_part: list[tuple[Part, SlotStates, int]] = []
    for p in parts:
        k0, k1 = p.slot_range(grid.start(grid.j0), due_end)
        if k1 <= k0:
            continue
        bits = source.slot_bits(p, k0, k1)
        gap_mask = 0
        for a, b in source.gaps(p.check_row, p.instant(k0), p.instant(k1)):
            lo = max(k0, -((p.offset_ns - a) // p.interval_ns))
            hi = min(k1, (b - p.offset_ns) // p.interval_ns + 1)  # a gap span includes its end
            gap_mask |= span(lo - k0, hi - k0)
        states = slot_states(bits, quorum, k1 - k0, gap_mask)
        per_part.append((p, states, k0))
    if aligned:
        for p, states, k0 in per_part:
            shift = k0 + (p.offset_ns - origin) // slice_ns - grid.j0
            for rank, mask in states.by_rank():
                acc[STATES[rank]] |= (mask << shift) if shift >= 0 else (mask >> -shift)
        down = acc["down"]
        partial = acc["partial"] & ~down
        degraded = acc["degraded"] & ~down & ~partial
        up = acc["up"] & ~down & ~partial & ~degraded
        known = down | partial | degraded | up
        gap = acc["gap"] & ~known
        unknown = acc["unknown"] & ~known & ~gap
        state = {
            "down": down & everything,
            "partial": partial & everything,
            "degraded": degraded & everything,
            "up": up & everything,
            "gap": gap & everything,
            "unknown": unknown & everything,
        }
    else:
        assert ranks is not None
        for rank in range(UNKNOWN, DOWN + 1):
            for p, states, k0 in per_part:
                mask = dict(states.by_rank())[rank]
                for a, b in runs(mask):
                    first = (p.instant(k0 + a) - origin) // slice_ns - grid.j0
                    last = (p.instant(k0 + b - 1) - origin) // slice_ns - grid.j0
                    first, last = max(first, 0), min(last, width - 1)
                    if first <= last:
                        ranks[first : last + 1] = bytes([rank]) * (last - first + 1)
        state = {name: _mask_of_rank(ranks, r) for r, name in enumerate(STATES) if r != NONE}
    state["unmonitored"] = everything & ~pending
    for name in STATES[1:]:
        state[name] &= ~pending
        state["unmonitored"] &= ~state[name]
    state["pending"] = pending
    in_hours_mask = grid.mask_of(in_hours)
    maint_mask = grid.mask_of(maintenance)
    ooh = everything & ~in_hours_mask & ~pending
    mnt = maint_mask & in_hours_mask & ~pending
    pending_in_hours = pending & in_hours_mask
    ev = Evaluation(
        grid,
        state,
        pending,
        ooh,
        mnt,
        pending_in_hours,
        pending_in_hours & maint_mask,
        Summary(),
        list(parts),
    )
    if with_summary:
        ev.summary = summarise(source, ev)
    return ev


def summarise(source: Source, ev: Evaluation, within: int | None = None) -> Summary:
    """Latency and clock: the results of in-scope slices outside maintenance windows (of those
    in ``within`` only, e.g. one day's slices). ``evaluate`` puts the whole period's in ``ev.summary``."""
    grid = ev.grid
    counted = ev.in_scope & ~ev.maintenance & ~ev.state["unmonitored"]
    if within is not None:
        counted &= within
    # Results are read up to the first slice not yet due (every slice when none is pending).
    first_pending = (ev.pending & -ev.pending).bit_length() - 1
    due_end = grid.start(grid.j0 + first_pending if ev.pending else grid.j1)
    spans = grid.instants(counted)
    out = Summary()
    for p in ev.parts:
        lo, hi = p.valid_from, p.valid_to if p.valid_to is not None else due_end
        mine = [(max(a, lo), min(b, hi, due_end)) for a, b in spans if min(b, hi, due_end) > max(a, lo)]
        if mine:
            out.add(source.summary(p, mine))
    return out


def _mask_of_rank(ranks: bytearray, rank: int) -> int:
    if not ranks:
        return 0
    table = bytes(48 if i != rank else 49 for i in range(256))  # b"0" / b"1"
    return int(bytes(ranks).translate(table)[::-1], 2)
