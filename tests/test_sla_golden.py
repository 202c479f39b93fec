"""Hand-computed golden cases: a table of results in, the exact report out, one rule each.

Every expectation below was worked out by hand from the rule it names (README, "Counting
rules"); a change in any number here is a change in the rules. Times are fixed instants.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.sla import timeline
from collector.sla.definitions import ServiceHours
from tests.sla_world import DAY, HOUR, MINUTE, World, counts, utc

T0 = utc(2026, 10, 5, 8, 0)  # a Monday, 08:00 UTC


@pytest.fixture(autouse=True, params=["raw", "rollups"])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every golden case holds on both paths: raw rows and rollups."""
    World.source = request.param
    yield request.param
    World.source = "raw"


H1 = T0 + HOUR

ONE = """
sites:
  lab:
    sla:
      availability: 99%
      latency: [{{percentile: 95, threshold: 300ms}}, {{fraction: 90%, threshold: 100ms}}]
{extra}
    checks:
      web: {{type: tcp, target: "192.0.2.1:80", interval: 1m, timeout: 5s}}
"""


def one(tmp_path: Path, extra: str = "") -> World:
    return World(tmp_path / "s.db", ONE.format(extra=extra), T0)


def test_slots_up_down_unknown_and_internal(tmp_path: Path) -> None:
    w = one(tmp_path)
    w.results("web", range(0, 55))  # 55 up
    w.results("web", [55, 56, 57], ok=False, kind="timeout")  # 3 down
    w.result("web", 58, ok=False, kind="internal")  # the probe broke: no result
    # slot 59: nothing
    r = w.one(T0, H1)
    assert counts(r) == {"up": 55, "down": 3, "unknown": 2}
    assert r.slices == 60 and r.slice_s == 60.0
    assert r.availability == round(100 * 55 / 58, 4) == 94.8276
    assert r.counted_down_s == 180.0 and r.seconds["unknown"] == 120.0
    assert r.budget == {"allowed_s": 34.8, "used_s": 180.0, "remaining_s": -145.2}
    assert r.status == "breached"
    assert r.results == 58  # the internal result is not a result


def test_a_failed_and_a_successful_result_in_one_slot_is_down(tmp_path: Path) -> None:
    w = one(tmp_path)
    w.results("web", range(60))
    w.result("web", 7, ok=False)  # a second run of slot 7, which failed
    r = w.one(T0, H1)
    assert counts(r) == {"up": 59, "down": 1}


def test_unknown_inside_a_spool_gap_is_gap(tmp_path: Path) -> None:
    w = one(tmp_path)
    w.results("web", [i for i in range(60) if i not in (10, 11, 12, 40)])
    # The agent's spool evicted slots 10..12 (the span names the first and last instant).
    w.gap("web", w.at("web", 10), w.at("web", 12), count=3)
    r = w.one(T0, H1)
    assert counts(r) == {"up": 56, "gap": 3, "unknown": 1}
    assert r.availability == 100.0  # unknown and gap excluded by default


@pytest.mark.parametrize(
    ("rule", "availability", "down_s"),
    [("excluded", 100.0, 0.0), ("up", 100.0, 0.0), ("down", round(100 * 56 / 60, 4), 240.0)],
)
def test_unknown_counting_rule(tmp_path: Path, rule: str, availability: float, down_s: float) -> None:
    w = one(tmp_path, f"      counting: {{unknown: {rule}}}")
    w.results("web", [i for i in range(60) if i not in (10, 11, 12, 40)])
    w.gap("web", w.at("web", 10), w.at("web", 12))
    r = w.one(T0, H1)
    assert r.availability == availability and r.counted_down_s == down_s


@pytest.mark.parametrize(("rule", "availability"), [("up", 100.0), ("down", 95.0)])
def test_degraded_counts_as_configured(tmp_path: Path, rule: str, availability: float) -> None:
    w = one(tmp_path, f"      counting: {{degraded: {rule}}}")
    w.results("web", range(57))
    w.results("web", [57, 58, 59], degraded=True, ms=900)
    r = w.one(T0, H1)
    assert counts(r) == {"up": 57, "degraded": 3}
    assert r.availability == availability


QUORUM = """
sites:
  lab:
    sla:
      availability: 99%
      counting: {{quorum: 2, partial_weight: {w}}}
    checks:
      web: {{type: tcp, target: "192.0.2.1:80", interval: 1m, timeout: 5s}}
"""


@pytest.mark.parametrize(("weight", "availability"), [(0, round(100 * 4 / 6, 4)), (0.5, 50.0)])
def test_quorum_with_one_agent_offline(tmp_path: Path, weight: float, availability: float) -> None:
    w = World(tmp_path / "s.db", QUORUM.format(w=weight), T0)
    # slot 0: all three ok → up
    for a in ("a", "b", "c"):
        w.result("web", 0, agent=a)
    # slot 1: one of three fails → partial (below quorum, others saw it work)
    w.result("web", 1, agent="a", ok=False)
    w.result("web", 1, agent="b")
    w.result("web", 1, agent="c")
    # slot 2: two of three fail → down
    w.result("web", 2, agent="a", ok=False)
    w.result("web", 2, agent="b", ok=False)
    w.result("web", 2, agent="c")
    # From slot 3 on, agent c is offline.
    # slot 3: a fails, b ok → partial
    w.result("web", 3, agent="a", ok=False)
    w.result("web", 3, agent="b")
    # slot 4: a and b fail → down (two agents are the quorum)
    w.result("web", 4, agent="a", ok=False)
    w.result("web", 4, agent="b", ok=False)
    # slot 5: only a probed, and failed → unknown: nobody saw it work, not enough saw it fail
    w.result("web", 5, agent="a", ok=False)
    # slot 6: only a probed, ok → up
    w.result("web", 6, agent="a")
    r = w.one(T0, T0 + 7 * MINUTE)
    assert counts(r) == {"up": 2, "partial": 2, "down": 2, "unknown": 1}
    # Counted: up 2 + partial 2 × (1 − w); down 2 + partial 2 × w.
    assert r.counted_up_s == (2 + 2 * (1 - weight)) * 60
    assert r.counted_down_s == (2 + 2 * weight) * 60
    assert r.availability == availability


def test_quorum_one_is_any_failure(tmp_path: Path) -> None:
    w = one(tmp_path)
    w.result("web", 0, agent="a", ok=False)
    w.result("web", 0, agent="b")
    w.result("web", 1, agent="a")
    w.result("web", 1, agent="b")
    r = w.one(T0, T0 + 2 * MINUTE)
    assert counts(r) == {"down": 1, "up": 1}


@pytest.mark.parametrize(
    ("rule", "expected", "availability"),
    [
        # Default: the window excuses the 10 down slices inside it; its 10 up slices still count.
        ("downtime", {"up": 40, "down": 10, "maintenance": 10}, 80.0),
        # "all": the window's 20 slices are removed, good and bad alike.
        ("all", {"up": 30, "down": 10, "maintenance": 20}, 75.0),
        # No maintenance at all: 40 up, 20 down.
        (None, {"up": 40, "down": 20}, round(100 * 40 / 60, 4)),
    ],
)
def test_maintenance_overlapping_an_incident(
    tmp_path: Path, rule: str | None, expected: dict[str, int], availability: float
) -> None:
    w = one(tmp_path, "" if rule is None else f"      counting: {{maintenance: {rule}}}")
    w.results("web", [i for i in range(60) if not 10 <= i < 30])
    w.results("web", range(10, 30), ok=False, kind="refused")  # down 10..29
    if rule is not None:
        # From slice 20's start to slice 40's start: slices 20..39 by their start.
        w.maintenance(w.at("web", 20), w.at("web", 40))
    r = w.one(T0, H1)
    assert counts(r) == expected
    assert r.availability == availability
    assert r.maintenance_window_s == (0 if rule is None else 1200.0)


def test_maintenance_from_the_catalogue_and_cancelled_windows(tmp_path: Path) -> None:
    w = one(
        tmp_path,
        '      maintenance: [{from: "2026-10-05 08:30", to: "2026-10-05 08:40", reason: x}]\n'
        "      counting: {maintenance: all}",
    )
    w.results("web", range(60))
    wid = w.maintenance(T0, T0 + 5 * MINUTE)
    # Slices start at the check's offset past the minute: 08:00:xx..08:04:xx start in [08:00, 08:05).
    assert counts(w.one(T0, H1)) == {"up": 45, "maintenance": 15}
    from collector import store

    assert store.cancel_maintenance(w.db, wid, "tester", 1)
    assert not store.cancel_maintenance(w.db, wid, "tester", 2)
    assert counts(w.one(T0, H1)) == {"up": 50, "maintenance": 10}


def test_latency_objectives_and_maintenance_removes_samples(tmp_path: Path) -> None:
    w = one(tmp_path)
    # 20 successes: 18 at 50 ms, one at 250 ms, one at 2 s (this one during maintenance).
    w.results("web", range(18), ms=50)
    w.result("web", 18, ms=250)
    w.result("web", 19, ms=2000)
    r = w.one(T0, T0 + 20 * MINUTE)
    assert r.latency_samples == 20
    assert r.latency_ms["p95"] == 250.0 and r.latency_ms["p50"] == 50.0 and r.latency_ms["p99"] == 2000.0
    assert [(o.objective, o.value, o.met) for o in r.objectives] == [
        ("availability >= 99%", "100.0000%", True),
        ("p95 <= 300ms", "250ms", True),
        ("90% <= 100ms", "90.000%", True),
    ]
    w.maintenance(w.at("web", 19), w.at("web", 20))
    r = w.one(T0, T0 + 20 * MINUTE)
    assert r.latency_samples == 19 and r.latency_ms["p99"] == 250.0


def test_latency_breach(tmp_path: Path) -> None:
    w = one(tmp_path)
    w.results("web", range(10), ms=50)
    w.results("web", range(10, 20), ms=310)
    r = w.one(T0, T0 + 20 * MINUTE)
    assert r.latency_ms["p95"] == 310.0
    assert r.status == "breached"
    assert r.breaches == ["latency p95 310ms > 300ms", "latency 50.000% <= 100ms, below 90%"]


def test_clock_flagged_and_unsynced_results(tmp_path: Path) -> None:
    w = one(tmp_path)
    w.result("web", 0, clock_ms=0)
    w.result("web", 1, clock_ms=150)
    w.result("web", 2, clock_ms=-200, ok=False)
    w.result("web", 3, clock_ms=100)  # exactly the bound: not beyond it
    w.result("web", 4, synced=False)
    r = w.one(T0, T0 + 5 * MINUTE)
    assert (r.results, r.clock_flagged, r.clock_unsynced, r.clock_bound_ms) == (5, 2, 1, 100.0)


def test_pending_slices_are_not_yet_counted(tmp_path: Path) -> None:
    w = one(tmp_path)
    w.results("web", range(30))
    # At slot 30's instant + 6 s, slot 30 (timeout 5 s + 2 s grace) is not due yet.
    r = w.one(T0, H1, now_ns=w.at("web", 30) + 6 * 10**9)
    assert counts(r) == {"up": 30, "pending": 30}
    assert not r.complete
    # The budget projects the pending time that will count.
    assert r.budget == {"allowed_s": 36.0, "used_s": 0.0, "remaining_s": 36.0}
    r = w.one(T0, H1, now_ns=w.at("web", 30) + 8 * 10**9)
    assert counts(r) == {"up": 30, "unknown": 1, "pending": 29}


def test_unmonitored_before_the_check_existed(tmp_path: Path) -> None:
    w = World(tmp_path / "s.db", ONE.format(extra=""), T0, persisted_at=T0 + 10 * MINUTE)
    w.results("web", range(10, 60))
    r = w.one(T0, H1)
    assert counts(r) == {"unmonitored": 10, "up": 50}
    assert r.availability == 100.0


MULTI = """
sites:
  lab:
    services:
      shop:
        checks: [web, api]
        sla: {{availability: 99%{extra}}}
    checks:
      web: {{type: tcp, target: "192.0.2.1:80", interval: 1m, timeout: 5s}}
      api: {{type: tcp, target: "192.0.2.1:81", interval: {api}, timeout: 5s}}
"""


def test_a_service_slice_takes_the_worst_known_state_of_its_checks(tmp_path: Path) -> None:
    w = World(tmp_path / "s.db", MULTI.format(extra="", api="1m"), T0)
    # Slices are minutes (origin: the epoch); each holds one slot of each check.
    w.results("web", [i for i in range(10) if i != 5])
    w.result("web", 5, ok=False)  # minute 5: web down → down
    w.results("api", [i for i in range(10) if i not in (6, 7, 8)])
    w.result("api", 7, ok=False)  # minute 6: api unknown, web up → up; minute 7: api down → down
    w.gap("api", w.at("api", 8), w.at("api", 8))  # minute 8: api lost, web up → up
    r = w.one(T0, T0 + 10 * MINUTE)
    assert counts(r) == {"up": 8, "down": 2}
    assert r.availability == 80.0


def test_a_slice_longer_than_the_interval(tmp_path: Path) -> None:
    text = MULTI.format(extra=", counting: {slice: 5m}", api="5m")
    w = World(tmp_path / "s.db", text, T0)
    # 5-minute slices from 08:00. web: slot 2 down; api (every 5 min): slice 2 unknown.
    w.results("web", [i for i in range(20) if i != 2])
    w.result("web", 2, ok=False)
    w.results("api", [0, 1, 3])
    r = w.one(T0, T0 + 20 * MINUTE)
    # slice 0: web down → down; slices 1, 3 up; slice 2: web up, api unknown → up.
    assert counts(r) == {"down": 1, "up": 3}
    assert r.slice_s == 300.0


BUSINESS = """
sites:
  lab:
    sla:
      availability: 99%
      time_zone: Europe/Paris
      service_hours: {days: mon-fri, hours: "08:00-18:00", holidays: [2026-10-07]}
    checks:
      web: {type: tcp, target: "192.0.2.1:80", interval: 1h, timeout: 5s}
"""


def test_service_hours_and_holidays(tmp_path: Path) -> None:
    start = utc(2026, 10, 4, 22, 0)  # Monday 5 October 00:00 in Paris (+02:00)
    w = World(tmp_path / "s.db", BUSINESS, start)
    w.results("web", range(7 * 24))
    r = w.one(start, start + 7 * DAY)
    # Slices start at the check's offset past each hour: 08:xx..17:xx start in hours (10 a day),
    # Monday to Friday but not Wednesday 7 October: 4 days.
    assert counts(r) == {"up": 40, "out_of_hours": 128}


def test_month_boundaries_in_a_time_zone_with_a_dst_change(tmp_path: Path) -> None:
    text = BUSINESS.replace(
        '      service_hours: {days: mon-fri, hours: "08:00-18:00", holidays: [2026-10-07]}\n', ""
    )
    oct_start, nov_start = utc(2026, 9, 30, 22), utc(2026, 10, 31, 23)
    assert timeline.month_bounds(2026, 10, ZoneInfo("Europe/Paris")) == (oct_start, nov_start)
    w = World(tmp_path / "s.db", text, utc(2026, 9, 1))
    before = w.at("web", 0, t0=oct_start - HOUR)  # 30 Sep, 23:xx in Paris
    w.result("web", at_ns=before)
    for i in range(3):
        w.result("web", at_ns=w.at("web", i, t0=oct_start))
    w.result("web", ok=False, at_ns=w.at("web", 0, t0=nov_start - HOUR))  # 31 Oct, 23:xx in Paris
    w.result("web", at_ns=w.at("web", 0, t0=nov_start))  # 1 Nov, 00:xx
    ctx = w.context(utc(2026, 12, 1))
    from collector.sla.report import Period, compliance

    (site,) = compliance(ctx, Period("month", 2026, 10), with_checks=False)
    (r,) = site.services
    # October 2026 in Paris has 745 hours (summer time ends on the 25th).
    assert r.slices == 745 and sum(r.seconds.values()) == 745 * 3600
    assert counts(r) == {"up": 3, "down": 1, "unknown": 741}
    assert (r.period_from, r.period_to) == ("2026-10-01T00:00:00+02:00", "2026-11-01T00:00:00+01:00")
    (site,) = compliance(ctx, Period("month", 2026, 9), with_checks=False)
    (r,) = site.services
    assert r.slices == 720 and r.counts["up"] == 1


def test_business_hours_follow_the_wall_clock_across_dst() -> None:
    paris = ZoneInfo("Europe/Paris")
    hours = ServiceHours(frozenset(range(5)), ((8 * 60, 18 * 60),))
    friday, monday = utc(2026, 10, 23), utc(2026, 10, 26)
    assert timeline.service_hours(hours, paris, friday, friday + DAY) == [
        (utc(2026, 10, 23, 6), utc(2026, 10, 23, 16))
    ]
    assert timeline.service_hours(hours, paris, monday, monday + DAY) == [
        (utc(2026, 10, 26, 7), utc(2026, 10, 26, 17))
    ]


def test_per_check_rows_keep_the_first_cut_fields(tmp_path: Path) -> None:
    w = World(tmp_path / "s.db", MULTI.format(extra="", api="1m"), T0)
    w.results("web", range(10))
    w.results("api", range(8))
    (r,) = w.report(T0, T0 + 10 * MINUTE, with_checks=True)
    by = {c.check: c.to_dict() for c in r.checks}
    assert {k: by["api"][k] for k in ("up", "down", "unknown", "availability", "downtime_s", "status")} == {
        "up": 8,
        "down": 0,
        "unknown": 2,
        "availability": 100.0,
        "downtime_s": 0.0,
        "status": "met",
    }
