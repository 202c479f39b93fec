"""The schedule: deterministic spread offsets, slot arithmetic, and runners that never drift."""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics

from agent.runner import CheckRunner, next_run
from probes import PhaseTrace, Prober, ProbeResult
from slaprobe.configfile import Fields, Node
from slaprobe.model import CheckSpec, Measurement
from slaprobe.schedule import NS_PER_S, next_slot_at_or_after, offset_ns, slot_index, slots_in

I = 10 * NS_PER_S  # noqa: E741 - the interval, as in the formulas


def test_offset_is_deterministic_in_range_and_on_a_millisecond_grid() -> None:
    a = offset_ns("paris/web", I)
    assert a == offset_ns("paris/web", I)
    assert 0 <= a < I
    assert a % 1_000_000 == 0
    assert offset_ns("paris/web", I) != offset_ns("paris/db", I)


def test_offsets_spread_evenly_over_the_interval() -> None:
    offsets = [offset_ns(f"site/check-{i}", I) for i in range(1000)]
    # Ten buckets of one second each: none should be nearly empty or hold a burst.
    buckets = [0] * 10
    for o in offsets:
        buckets[o // NS_PER_S] += 1
    assert min(buckets) > 60 and max(buckets) < 140, buckets
    # 1,000 ids over 10,000 ms: about 50 birthday collisions are expected, not a burst.
    assert len(set(offsets)) > 900


def test_slot_arithmetic_round_trips() -> None:
    off = offset_ns("x/y", I)
    for t in (0, off, off + 1, off + I - 1, 1_795_000_000 * NS_PER_S + 123):
        nxt = next_slot_at_or_after(t, I, off)
        assert nxt >= t and nxt - t < I
        assert (nxt - off) % I == 0
        k = slot_index(t, I, off)
        assert off + k * I <= t < off + (k + 1) * I
    r = slots_in(off, off + 5 * I, I, off)
    assert len(r) == 5
    assert len(slots_in(off + 1, off + I, I, off)) == 0
    assert len(slots_in(off + 1, off + I + 1, I, off)) == 1


def test_next_run_follows_the_schedule_and_skips_only_when_a_whole_interval_late() -> None:
    off = 3 * NS_PER_S
    last = off + 7 * I
    assert next_run(last + 1, last, I, off) == last + I  # on time
    assert next_run(last + I + 5, last, I, off) == last + I  # a bit late: still that slot
    assert next_run(last + 2 * I + 5, last, I, off) == last + 3 * I  # a whole interval late: skip
    assert next_run(last, None, I, off) == last


class FakeClock:
    """Virtual time: sleeping advances the clock instantly."""

    def __init__(self, start_ns: int) -> None:
        self.now = start_ns

    def time_ns(self) -> int:
        return self.now

    async def sleep_until(self, t_ns: int) -> None:
        self.now = max(self.now, t_ns)
        await asyncio.sleep(0)


class SlowProber(Prober):
    """Takes a random 0-90% of the interval of virtual time, like a real probe would take real time."""

    type_name = "slow"

    def __init__(self, clock: FakeClock, rng: random.Random) -> None:
        self.clock = clock
        self.rng = rng

    @classmethod
    def from_config(cls, target: Node, settings: Fields) -> Prober:  # pragma: no cover - unused
        raise NotImplementedError

    async def probe(self, trace: PhaseTrace) -> ProbeResult:
        self.clock.now += int(self.rng.random() * 0.9 * I)
        return ProbeResult(True)


async def test_runner_starts_on_the_schedule_without_drift() -> None:
    clock = FakeClock(1_795_000_000 * NS_PER_S + 123_456_789)
    spec = CheckSpec(
        "lab/web", "lab", "web", "slow", "x", interval_ms=10_000, timeout_ms=9_000, revision="r1"
    )
    out: list[Measurement] = []
    runner = CheckRunner(spec, SlowProber(clock, random.Random(7)), out.append, clock)
    task = asyncio.create_task(runner.run_forever())
    while len(out) < 500:  # noqa: ASYNC110 - virtual time: each yield lets the runner take a step
        await asyncio.sleep(0)
    task.cancel()
    off = offset_ns("lab/web", I)
    scheduled = [m.scheduled_ns for m in out]
    # Every run is on the grid, one interval apart: 500 runs, zero accumulated drift.
    assert all((s - off) % I == 0 for s in scheduled)
    assert all(b - a == I for a, b in itertools.pairwise(scheduled))
    assert all(m.started_ns == m.scheduled_ns for m in out)
    assert statistics.mean(m.started_ns - m.scheduled_ns for m in out) == 0


async def test_timeout_is_enforced_and_reports_the_stuck_phase() -> None:
    class Hang(Prober):
        type_name = "hang"

        @classmethod
        def from_config(cls, target: Node, settings: Fields) -> Prober:  # pragma: no cover
            raise NotImplementedError

        async def probe(self, trace: PhaseTrace) -> ProbeResult:
            trace.enter("connect")
            await asyncio.sleep(0.01)
            trace.enter("processing")
            await asyncio.sleep(60)
            return ProbeResult(True)

    spec = CheckSpec("lab/h", "lab", "h", "hang", "x", interval_ms=1000, timeout_ms=200, revision="r")
    runner = CheckRunner(spec, Hang(), lambda m: None)
    m = await runner.run_once(123)
    assert not m.success and m.error_kind == "timeout"
    assert "processing" in m.detail
    assert [p for p, _ in m.phases] == ["connect", "processing"]
    assert 0.15e9 < m.duration_ns < 5e9


async def test_a_probe_bug_is_an_internal_result_not_a_crash() -> None:
    class Broken(Prober):
        type_name = "broken"

        @classmethod
        def from_config(cls, target: Node, settings: Fields) -> Prober:  # pragma: no cover
            raise NotImplementedError

        async def probe(self, trace: PhaseTrace) -> ProbeResult:
            raise ZeroDivisionError("oops")

    spec = CheckSpec("lab/b", "lab", "b", "broken", "x", interval_ms=1000, timeout_ms=200, revision="r")
    m = await CheckRunner(spec, Broken(), lambda m: None).run_once(1)
    assert not m.success and m.error_kind == "internal" and "ZeroDivisionError" in m.detail


async def test_degraded_marks_slow_successes() -> None:
    class Slow(Prober):
        type_name = "slowok"

        @classmethod
        def from_config(cls, target: Node, settings: Fields) -> Prober:  # pragma: no cover
            raise NotImplementedError

        async def probe(self, trace: PhaseTrace) -> ProbeResult:
            await asyncio.sleep(0.06)
            return ProbeResult(True)

    spec = CheckSpec(
        "lab/s",
        "lab",
        "s",
        "slowok",
        "x",
        interval_ms=1000,
        timeout_ms=900,
        degraded_after_ms=20,
        revision="r",
    )
    m = await CheckRunner(spec, Slow(), lambda m: None).run_once(1)
    assert m.success and m.degraded


async def test_the_duration_ends_at_the_targets_last_byte_not_after_our_parsing() -> None:
    class ParsesSlowly(Prober):
        type_name = "parses"

        @classmethod
        def from_config(cls, target: Node, settings: Fields) -> Prober:  # pragma: no cover
            raise NotImplementedError

        async def probe(self, trace: PhaseTrace) -> ProbeResult:
            trace.enter("connect")
            await asyncio.sleep(0.05)  # the target's time
            trace.stop()  # its last byte
            await asyncio.sleep(0.3)  # our own work on the answer
            return ProbeResult(True, trace.close())

    spec = CheckSpec("lab/p", "lab", "p", "parses", "x", interval_ms=1000, timeout_ms=2000, revision="r")
    m = await CheckRunner(spec, ParsesSlowly(), lambda m: None).run_once(1)
    assert m.success
    assert 0.04e9 < m.duration_ns < 0.25e9, m.duration_ns  # the 0.3 s of parsing is not latency
    assert [p for p, _ in m.phases] == ["connect"]
