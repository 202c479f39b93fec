"""SLA definitions in the catalogue: every key read into the values scoring uses.

Invalid definitions have one fixture each in ``tests/configs/invalid-*.yaml`` (exact
messages, checked by ``test_config_validation.py``); this file checks what valid ones mean.
"""

from __future__ import annotations

import itertools
from datetime import date

import pytest

from collector.catalogue import LatencyObjective, SlaTarget, parse_catalogue
from collector.sla.definitions import (
    SITE_SERVICE,
    Counting,
    LatencyFraction,
    LatencyPercentile,
    MaintenanceWindow,
    Reporting,
    ServiceHours,
    SlaDefinition,
    Window,
)
from collector.sla.histogram import (
    CLOCK_LADDER_NS,
    LATENCY_EDGES_NS,
    clock_bucket,
    clock_flagged,
    decode,
    encode,
    fraction_within,
    from_durations,
    latency_bucket,
    merge_blobs,
    merge_into,
    percentile_ns,
)

FULL = """
reporting:
  clock_bound: 50ms
  retention: {raw: 35d, rollups: 730d}
sites:
  paris:
    description: Paris
    sla:
      availability: 99.5%
      latency: {percentile: 95, threshold: 300ms}
    services:
      shop:
        description: the web shop
        checks: [home, api]
        sla:
          availability: 99.95%
          latency:
            - {percentile: 99, threshold: 1.5s}
            - {fraction: 99%, threshold: 500ms}
          degraded_after: 800ms
          time_zone: Europe/Paris
          window: quarter
          service_hours:
            days: mon-fri
            hours: ["08:00-12:00", "13:00-18:30"]
            holidays: [2026-12-25, "2027-01-01"]
          maintenance:
            - {from: "2026-10-25 02:30", to: "2026-10-25 04:00", reason: DB upgrade}
            - {from: "2026-11-01T10:00:00Z", to: "2026-11-01T11:00:00Z", reason: in UTC}
            - {every: "sat,sun 23:00-01:00", reason: weekly patching}
            - {every: "day 03:00-03:15", reason: backups}
          counting:
            slice: 5m
            quorum: 2
            unknown: down
            degraded: down
            partial_weight: 0.25
      db:
        checks: [db]
        sla:
          window: rolling 28d
    checks:
      home: {type: http, target: "https://shop.example/", interval: 1m, timeout: 5s}
      api: {type: http, target: "https://shop.example/api", interval: 30s, timeout: 5s}
      db: {type: tcp, target: "192.0.2.1:5432", interval: 5m, timeout: 5s}
"""


def test_every_sla_key_is_read() -> None:
    cat = parse_catalogue(FULL, "cat.yaml")
    assert cat.reporting == Reporting(50_000_000, 35, 730)
    site = cat.sites["paris"]
    assert [s.name for s in site.services] == [SITE_SERVICE, "shop", "db"]
    whole, shop, db = site.services
    assert whole.checks == ("home", "api", "db")
    assert whole.sla == SlaDefinition(99.5, (LatencyPercentile(95, 300.0),))
    assert shop.description == "the web shop"
    assert shop.checks == ("home", "api")
    sla = shop.sla
    assert sla.availability == 99.95
    assert sla.latency == (LatencyPercentile(99, 1500.0), LatencyFraction(99, 500.0))
    assert sla.degraded_after_ms == 800
    assert sla.time_zone == "Europe/Paris"
    assert sla.window == Window("quarter")
    assert sla.service_hours == ServiceHours(
        frozenset(range(5)),
        ((8 * 60, 12 * 60), (13 * 60, 18 * 60 + 30)),
        frozenset({date(2026, 12, 25), date(2027, 1, 1)}),
    )
    # 02:30 on the night summer time ends happens twice: the first one (+02:00, 00:30Z) is meant;
    # 04:00 is then +01:00 (03:00Z): 1h30 on the wall clock, 2h30 of real time.
    assert sla.maintenance == (
        MaintenanceWindow("DB upgrade", start_ns=1_792_888_200 * 10**9, end_ns=1_792_897_200 * 10**9),
        MaintenanceWindow("in UTC", start_ns=1_793_527_200 * 10**9, end_ns=1_793_530_800 * 10**9),
        MaintenanceWindow("weekly patching", days=frozenset({5, 6}), start_min=23 * 60, end_min=60),
        MaintenanceWindow("backups", days=frozenset(range(7)), start_min=180, end_min=195),
    )
    assert sla.counting == Counting(300_000, 2, "down", "down", 0.25)
    assert db.sla == SlaDefinition(window=Window("rolling", 28))


def test_the_site_sla_keeps_its_legacy_summary() -> None:
    site = parse_catalogue(FULL, "cat.yaml").sites["paris"]
    # What the sites table stores (and older readers understand).
    assert site.sla == SlaTarget(99.5, LatencyObjective(95, 300.0))
    assert site.sla.to_json() == {"availability": 99.5, "latency": {"percentile": 95, "threshold_ms": 300.0}}


def test_an_sla_degraded_threshold_becomes_its_checks_threshold() -> None:
    cat = parse_catalogue(FULL, "cat.yaml")
    checks = {c.name: c for c in cat.all_checks()}
    assert checks["home"].degraded_after_ms == 800
    assert checks["api"].degraded_after_ms == 800
    assert checks["db"].degraded_after_ms == 0
    # The agent acts on it, so the revision says so.
    without = parse_catalogue(FULL.replace("          degraded_after: 800ms\n", ""), "cat.yaml")
    before = {c.name: c.revision for c in without.all_checks()}
    assert before["home"] != checks["home"].revision
    assert before["db"] == checks["db"].revision


def test_a_site_without_sla_or_services_is_one_service_without_objectives() -> None:
    cat = parse_catalogue(
        "sites:\n  lab:\n    checks:\n      ssh: {type: tcp, target: '192.0.2.10:22'}\n", "c.yaml"
    )
    (service,) = cat.sites["lab"].services
    assert service.name == SITE_SERVICE and service.checks == ("ssh",) and service.sla == SlaDefinition()
    assert cat.reporting == Reporting()


def test_services_without_a_site_sla_have_no_site_service() -> None:
    text = FULL.replace(
        "    sla:\n      availability: 99.5%\n      latency: {percentile: 95, threshold: 300ms}\n", ""
    )
    site = parse_catalogue(text, "c.yaml").sites["paris"]
    assert [s.name for s in site.services] == ["shop", "db"]


@pytest.mark.parametrize(
    ("days", "expected"),
    [("mon-fri", range(5)), ("[sat, sun]", (5, 6)), ("'mon,wed-thu'", (0, 2, 3)), ("[Monday]", (0,))],
)
def test_day_lists(days: str, expected: range | tuple[int, ...]) -> None:
    text = f"""
sites:
  lab:
    sla:
      service_hours: {{days: {days}}}
    checks:
      ssh: {{type: tcp, target: '192.0.2.10:22'}}
"""
    (service,) = parse_catalogue(text, "c.yaml").sites["lab"].services
    assert service.sla.service_hours.days == frozenset(expected)


def test_a_single_latency_mapping_and_a_fraction_objective() -> None:
    text = """
sites:
  lab:
    sla:
      latency: {fraction: 99.5, threshold: 45ms}
    checks:
      ssh: {type: tcp, target: '192.0.2.10:22'}
"""
    (service,) = parse_catalogue(text, "c.yaml").sites["lab"].services
    assert service.sla.latency == (LatencyFraction(99.5, 45.0),)


# ---- histograms ---------------------------------------------------------------------------


def test_latency_edges_have_two_significant_digits() -> None:
    assert LATENCY_EDGES_NS[:3] == (10_000, 11_000, 12_000)
    assert 300_000_000 in LATENCY_EDGES_NS and 1_500_000_000 in LATENCY_EDGES_NS
    assert all(b > a for a, b in itertools.pairwise(LATENCY_EDGES_NS))
    # A bucket is (previous edge, edge]: a value on an edge is in that edge's bucket.
    assert LATENCY_EDGES_NS[latency_bucket(300_000_000)] == 300_000_000
    assert LATENCY_EDGES_NS[latency_bucket(300_000_001)] == 310_000_000
    assert latency_bucket(0) == 0


def test_percentiles_are_bucket_upper_edges_never_below_the_truth() -> None:
    durations = [ms * 1_000_000 for ms in (101, 102, 250, 251, 300, 301, 900, 1000, 1001, 2000)]
    h = from_durations(durations)
    assert percentile_ns(h, 50) == 300_000_000  # nearest rank 5 of 10 → 300 ms, an edge itself
    assert percentile_ns(h, 60) == 310_000_000  # rank 6 → 301 ms → bucket (300, 310]
    assert percentile_ns(h, 10) == 110_000_000  # 101 ms → (100, 110]
    assert percentile_ns(h, 100) == 2_000_000_000
    assert fraction_within(h, 300_000_000) == 0.5
    assert percentile_ns({}, 95) is None and fraction_within({}, 1) is None


def test_sparse_encoding_round_trips_and_merges() -> None:
    h = {0: 3, 455: 1, 989: 7}
    assert decode(encode(h)) == h
    assert encode({}) is None and decode(None) == {}
    assert decode(merge_blobs(encode(h), encode({0: 1, 1: 2}))) == {0: 4, 1: 2, 455: 1, 989: 7}
    assert merge_blobs(None, encode(h)) == encode(h)
    blobs = [b for b in (encode(h), encode({1: 5}), encode({989: 1, 0: 1})) if b is not None]
    assert merge_into({0: 10}, blobs) == {0: 14, 1: 5, 455: 1, 989: 8}
    assert merge_into({2: 1}, []) == {2: 1}


def test_clock_ladder_counts_exactly_above_a_step() -> None:
    assert CLOCK_LADDER_NS[6] == 100_000_000
    offsets = [0, -1_000_000, 99_999_999, 100_000_000, -100_000_001, 3_000_000_000, 60_000_000_000]
    h: dict[int, int] = {}
    for o in offsets:
        h[clock_bucket(o)] = h.get(clock_bucket(o), 0) + 1
    assert clock_flagged(h, 100_000_000) == 3
    assert clock_flagged(h, 1_000_000) == 5
    assert clock_flagged(h, 10_000_000_000) == 1
