"""Property tests (hypothesis) for the SLA engine's invariants.

Random scenarios (checks and intervals, a catalogue change, agents, outcomes, spool gaps,
maintenance, service hours, every counting rule, a "now" inside or after the period) are
stored through the writer's path (rows once, rollups in the same transaction). Then:

* the report from raw rows equals the report from rollups, field for field;
* both equal a naive oracle written slot by slot from the README's definitions;
* the accounts add up to the whole period (slices × slice length = its length);
* adding a maintenance window never lowers availability (default maintenance rule);
* a result stored twice changes nothing; rebuilding rollups from raw rows changes nothing.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.sla import timeline
from collector.sla.engine import GRACE_NS
from collector.sla.histogram import Hist, clock_bucket, latency_bucket
from collector.sla.report import ServiceReport
from slaprobe.schedule import NS_PER_MS, offset_ns
from tests.sla_world import HOUR, MINUTE, World, utc

T0 = utc(2026, 10, 5, 6, 0)


@dataclass
class Scenario:
    intervals: list[int]  # seconds, per check
    slice_s: int | None
    quorum: int
    weight: float
    unknown: str
    degraded: str
    maintenance_rule: str
    hours: str | None
    time_zone: str
    agents: int
    seed: int
    fail_rate: float
    missing_rate: float
    start_min: int
    length_min: int
    now_offset_min: int | None  # None: long after the period
    change_at_min: int | None  # the first check's interval changes then
    adhoc: list[tuple[int, int]]  # maintenance windows, minutes from T0

    def catalogue(self, intervals: list[int]) -> str:
        counting = [f"quorum: {self.quorum}", f"unknown: {self.unknown}", f"degraded: {self.degraded}"]
        counting.append(f"maintenance: {self.maintenance_rule}")
        if self.quorum > 1:
            counting.append(f"partial_weight: {self.weight}")
        if self.slice_s is not None:
            counting.append(f"slice: {max(self.slice_s, *intervals)}s")
        hours = f"\n          service_hours: {{hours: '{self.hours}'}}" if self.hours else ""
        names = ", ".join(f"c{i}" for i in range(len(intervals)))
        checks = "\n".join(
            f'      c{i}: {{type: tcp, target: "192.0.2.1:{80 + i}", interval: {s}s, timeout: 5s}}'
            for i, s in enumerate(intervals)
        )
        return f"""
sites:
  lab:
    services:
      svc:
        checks: [{names}]
        sla:
          availability: 99%
          latency: {{percentile: 90, threshold: 50ms}}
          time_zone: {self.time_zone}
          counting: {{{", ".join(counting)}}}{hours}
    checks:
{checks}
"""


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 2))
    intervals = [draw(st.sampled_from([20, 30, 60, 120])) for _ in range(n)]
    longest = max(intervals)
    slice_s = draw(st.sampled_from([None, longest, 2 * longest, 300 if longest <= 300 else None]))
    quorum = draw(st.integers(1, 3))
    hours = draw(st.sampled_from([None, "07:00-09:30", "06:15-06:45"]))
    start = draw(st.integers(0, 90))
    length = draw(st.integers(5, 200))
    adhoc = draw(
        st.lists(
            st.tuples(st.integers(-30, 300), st.integers(1, 90)).map(lambda t: (t[0], t[0] + t[1])),
            max_size=2,
        )
    )
    return Scenario(
        intervals=intervals,
        slice_s=slice_s,
        quorum=quorum,
        weight=draw(st.sampled_from([0.0, 0.5, 1.0])) if quorum > 1 else 0.0,
        unknown=draw(st.sampled_from(["excluded", "up", "down"])),
        degraded=draw(st.sampled_from(["up", "down"])),
        maintenance_rule=draw(st.sampled_from(["downtime", "all"])),
        hours=hours,
        time_zone=draw(st.sampled_from(["UTC", "Europe/Paris", "Asia/Kolkata"])),
        agents=draw(st.integers(1, 3)),
        seed=draw(st.integers(0, 2**32)),
        fail_rate=draw(st.sampled_from([0.0, 0.05, 0.3])),
        missing_rate=draw(st.sampled_from([0.0, 0.1, 0.5])),
        start_min=start,
        length_min=length,
        now_offset_min=draw(st.one_of(st.none(), st.integers(-5, length + 5))),
        change_at_min=draw(st.one_of(st.none(), st.integers(start - 20, start + length))),
        adhoc=adhoc,
    )


def build(path: Path, sc: Scenario) -> tuple[World, int, int, int]:
    rng = random.Random(sc.seed)
    w = World(path, sc.catalogue(sc.intervals), T0 - 2 * HOUR)
    start = T0 + sc.start_min * MINUTE
    end = start + sc.length_min * MINUTE
    now = end + 3 * HOUR if sc.now_offset_min is None else start + sc.now_offset_min * MINUTE
    change = None if sc.change_at_min is None else T0 + sc.change_at_min * MINUTE
    changed = [60 if sc.intervals[0] != 60 else 30, *sc.intervals[1:]]
    agents = [f"a{i}" for i in range(sc.agents)]
    lo, hi = start - HOUR, end + HOUR
    for i, interval in enumerate(sc.intervals):
        name = f"c{i}"
        for grid_interval, (a, b) in _grids(interval, changed[i], change, lo, hi):
            off = offset_ns(w.checks[name].key, grid_interval * 10**9)
            k = -((off - a) // (grid_interval * 10**9))
            while (t := off + k * grid_interval * 10**9) < b:
                k += 1
                for agent in agents:
                    if rng.random() < sc.missing_rate:
                        continue
                    r = rng.random()
                    jitter = rng.choice([0, 0, 0, rng.randrange(grid_interval * 10**9)])
                    w.result(
                        name,
                        at_ns=t + jitter,
                        agent=agent,
                        ok=r >= sc.fail_rate,
                        kind="internal" if r < sc.fail_rate / 3 else "",
                        degraded=rng.random() < 0.05,
                        ms=rng.choice([5, 20, 49, 50, 51, 300]),
                        clock_ms=rng.choice([0, 0, 0, 150, -120]),
                        synced=rng.random() > 0.05,
                    )
                    if rng.random() < 0.03:  # a second run of the same slot
                        w.result(name, at_ns=t, agent=agent, ok=rng.random() > 0.5)
    # Store what came before the catalogue change, then change it, then the rest (as in life).
    before = [r for r in w.pending if change is None or r[5] < change]
    after = [r for r in w.pending if change is not None and r[5] >= change]
    w.pending = []
    rng.shuffle(before)
    for chunk in range(0, len(before), 97):
        w.flush(before[chunk : chunk + 97])
    if change is not None:
        w.persist(sc.catalogue(changed), change)
        w.flush(after)
    if rng.random() < 0.5:
        a = start + rng.randrange(max(1, end - start))
        w.gap("c0", a, a + rng.randrange(10 * MINUTE), agent="a0")
    for a, b in sc.adhoc:
        w.maintenance(T0 + a * MINUTE, T0 + b * MINUTE)
    return w, start, end, now


def _grids(old: int, new: int, change: int | None, lo: int, hi: int) -> list[tuple[int, tuple[int, int]]]:
    if change is None:
        return [(old, (lo, hi))]
    return [(old, (lo, max(lo, change))), (new, (max(lo, change), hi))]


def comparable(rows: list[ServiceReport]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in rows]


# ---- the oracle: the definitions, slot by slot ------------------------------------------------------


def oracle(w: World, sc: Scenario, start: int, end: int, now: int) -> dict[str, Any]:
    service = w.catalogue.sites["lab"].services[0]
    sla = service.sla
    versions = [
        v
        for v in w.db.execute(
            "SELECT c.id, c.key, v.interval_ms, v.timeout_ms, v.valid_from_ns, v.valid_to_ns"
            " FROM check_versions v JOIN checks c ON c.id = v.check_id"
            " WHERE v.valid_from_ns < ? AND (v.valid_to_ns IS NULL OR v.valid_to_ns > ?)",
            [end + 2 * HOUR, start - 2 * HOUR],
        ).fetchall()
    ]
    parts = [
        (cid, key, i * NS_PER_MS, offset_ns(key, i * NS_PER_MS), t * NS_PER_MS, vf, vt)
        for cid, key, i, t, vf, vt in versions
    ]
    # The versions in force during the period set the default slice and the origin.
    in_period = [p for p in parts if p[5] < end and (p[6] is None or p[6] > start)]
    longest = max(p[2] for p in in_period)
    S = sla.counting.slice_ms * NS_PER_MS if sla.counting.slice_ms else longest
    if len(service.checks) == 1:
        latest = max(in_period, key=lambda p: p[5])
        origin = latest[3] % S
    else:
        origin = 0
    undue = []
    for _, _, interval, off, timeout, vf, vt in parts:
        cutoff = now - timeout - GRACE_NS
        if vt is not None and vt <= cutoff:
            continue
        t = max(cutoff, vf)
        undue.append(off + -((off - t) // interval) * interval)
    first_undue = min(undue) if undue else now - GRACE_NS
    results = w.db.execute(
        "SELECT agent_id, check_id, scheduled_ns, ok, degraded, error_kind, duration_ns,"
        " clock_offset_ns, clock_synced FROM results"
    ).fetchall()
    gaps = w.db.execute("SELECT check_id, from_ns, to_ns FROM gaps").fetchall()
    tz = sla.tz
    in_hours = timeline.service_hours(sla.service_hours, tz, start - 2 * HOUR, end + 2 * HOUR)
    adhoc = [
        (a, b) for a, b in w.db.execute("SELECT from_ns, to_ns FROM maintenance WHERE cancelled_ns IS NULL")
    ]
    maint = timeline.maintenance(sla.maintenance, tz, start - 2 * HOUR, end + 2 * HOUR, adhoc)
    k = sla.counting.quorum
    j0 = -((origin - start) // S)
    j1 = -((origin - end) // S)
    states: list[str] = []
    classes: list[str] = []
    lat: Hist = {}
    clock: Hist = {}
    n_results = unsynced = 0

    def inside(t: int, spans: list[tuple[int, int]]) -> bool:
        return any(a <= t < b for a, b in spans)

    order = ["unmonitored", "unknown", "gap", "up", "degraded", "partial", "down"]
    # Per part: slot → agent → the outcomes of its results there.
    by_slot: list[dict[int, dict[int, set[str]]]] = []
    for cid, _, interval, off, _, vf, vt in parts:
        slots: dict[int, dict[int, set[str]]] = {}
        for agent, c, t, ok, deg, kind, *_ in results:
            # A result belongs to the version in force at its scheduled time.
            if c == cid and kind != "internal" and vf <= t and (vt is None or t < vt):
                outcome = ("deg" if deg else "ok") if ok else "fail"
                slots.setdefault((t - off) // interval, {}).setdefault(agent, set()).add(outcome)
        by_slot.append(slots)
    for j in range(j0, j1):
        s0, s1 = origin + j * S, origin + (j + 1) * S
        if s1 > first_undue:
            states.append("pending")
            classes.append("pending")
            continue
        best = "unmonitored"
        for (cid, _, interval, off, _, vf, vt), slots in zip(parts, by_slot, strict=True):
            k_first = -((off - max(s0, vf)) // interval)
            k_end = -((off - min(s1, vt if vt is not None else s1)) // interval)
            for slot in range(k_first, k_end):
                t_slot = off + slot * interval
                outcomes = slots.get(slot, {})
                n = len(outcomes)
                f = sum(1 for o in outcomes.values() if "fail" in o)
                succeeded = [o for o in outcomes.values() if "fail" not in o]
                d = sum(1 for o in succeeded if "deg" in o)
                if n == 0:
                    lost = any(gc == cid and a <= t_slot <= b for gc, a, b in gaps)
                    state = "gap" if lost else "unknown"
                elif f >= k:
                    state = "down"
                elif f > 0 and succeeded:
                    state = "partial"
                elif not succeeded:
                    state = "unknown"
                elif d >= min(k, len(succeeded)):
                    state = "degraded"
                else:
                    state = "up"
                if order.index(state) > order.index(best):
                    best = state
        states.append(best)
        if not inside(s0, in_hours):
            classes.append("out_of_hours")
        elif inside(s0, maint):
            classes.append("maintenance")
        else:
            classes.append("counted")
    # Latency and clock: results scheduled in counted slices (not maintenance), inside their version.
    for _agent, c, t, ok, _deg, kind, dur, off_ns, synced in results:
        if kind == "internal":
            continue
        j = (t - origin) // S
        if not j0 <= j < j1 or classes[j - j0] != "counted" or states[j - j0] == "unmonitored":
            continue
        if not any(c == p[0] and p[5] <= t < (p[6] if p[6] is not None else first_undue) for p in parts):
            continue
        n_results += 1
        if ok:
            b = latency_bucket(dur)
            lat[b] = lat.get(b, 0) + 1
        cb = clock_bucket(off_ns)
        if cb:
            clock[cb] = clock.get(cb, 0) + 1
        unsynced += not synced
    # Accounts under the counting rules.
    c = sla.counting
    bad = {"down"} | ({"degraded"} if c.degraded == "down" else set())
    good = {"up"} | ({"degraded"} if c.degraded == "up" else set())
    if c.unknown == "down":
        bad |= {"unknown", "gap"}
    elif c.unknown == "up":
        good |= {"unknown", "gap"}
    counts = dict.fromkeys(
        [
            "up",
            "degraded",
            "partial",
            "down",
            "unknown",
            "gap",
            "unmonitored",
            "maintenance",
            "out_of_hours",
            "pending",
        ],
        0,
    )
    up = down = 0.0
    for state, cls in zip(states, classes, strict=True):
        if cls in ("pending", "out_of_hours"):
            counts[cls] += 1
            continue
        in_maint = cls == "maintenance"
        removed = in_maint and (
            c.maintenance == "all" or state in bad or (state == "partial" and c.partial_weight > 0)
        )
        if removed:
            counts["maintenance"] += 1
        else:
            counts[state] += 1
        if state == "partial":
            if not (removed and c.maintenance == "all"):
                up += 1 - c.partial_weight
            if not removed:
                down += c.partial_weight
        elif not removed:
            up += state in good
            down += state in bad
    return {
        "counts": counts,
        "up_s": up * S / 1e9,
        "down_s": down * S / 1e9,
        "latency": lat,
        "clock": clock,
        "results": n_results,
        "unsynced": unsynced,
        "slices": j1 - j0,
        "slice_ns": S,
    }


# ---- the properties -----------------------------------------------------------------------------------

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@SETTINGS
@given(scenarios())
def test_raw_rollups_and_the_oracle_agree(sc: Scenario) -> None:
    with tempfile.TemporaryDirectory() as d:
        w, start, end, now = build(Path(d) / "s.db", sc)
        (raw,) = w.report(start, end, now_ns=now, source="raw", with_checks=True)
        (rolled,) = w.report(start, end, now_ns=now, source="rollups", with_checks=True)
        assert raw.to_dict() == rolled.to_dict()
        o = oracle(w, sc, start, end, now)
        assert raw.counts == o["counts"]
        assert (raw.counted_up_s, raw.counted_down_s) == (round(o["up_s"], 3), round(o["down_s"], 3))
        assert raw.slices == o["slices"]
        assert raw.evaluation is not None
        assert raw.evaluation.summary.latency == o["latency"]
        assert raw.evaluation.summary.clock == o["clock"]
        assert (raw.results, raw.clock_unsynced) == (o["results"], o["unsynced"])
        # The accounts cover the period exactly.
        assert sum(raw.counts.values()) == raw.slices
        if (end - start) % o["slice_ns"] == 0:
            assert raw.slices * o["slice_ns"] == end - start


@SETTINGS
@given(scenarios(), st.integers(-60, 300), st.integers(1, 120))
def test_adding_maintenance_never_lowers_availability(sc: Scenario, at: int, length: int) -> None:
    sc.maintenance_rule = "downtime"
    with tempfile.TemporaryDirectory() as d:
        w, start, end, now = build(Path(d) / "s.db", sc)
        before = w.report(start, end, now_ns=now, source="rollups")[0]
        w.maintenance(T0 + at * MINUTE, T0 + (at + length) * MINUTE)
        after = w.report(start, end, now_ns=now, source="rollups")[0]
        if before.availability is not None and after.availability is not None:
            assert after.availability >= before.availability
        assert after.counted_down_s <= before.counted_down_s
        if before.budget is not None and after.budget is not None:
            assert after.budget["remaining_s"] >= before.budget["remaining_s"] - 1e-6


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_storing_twice_or_rebuilding_changes_nothing(sc: Scenario) -> None:
    with tempfile.TemporaryDirectory() as d:
        w, start, end, now = build(Path(d) / "s.db", sc)
        first = comparable(w.report(start, end, now_ns=now, source="rollups", with_checks=True))
        assert w.flush(list(w.stored)) == 0  # every row again: nothing new
        half = w.stored[: len(w.stored) // 2]
        assert w.flush(half + half) == 0  # and a batch with duplicates inside it
        assert comparable(w.report(start, end, now_ns=now, source="rollups", with_checks=True)) == first
        w.rebuild()
        assert comparable(w.report(start, end, now_ns=now, source="rollups", with_checks=True)) == first
        assert comparable(w.report(start, end, now_ns=now, source="raw", with_checks=True)) == first
