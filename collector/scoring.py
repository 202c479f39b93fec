"""Scoring, first cut: availability, downtime, unknown time and latency per check and site.

Counting rules (the README states them for users):

* Time is cut into the check's schedule slots (``slaprobe.schedule``): one
  slot per interval, at the instants the agents were told to probe. Only
  slots while the check existed in the catalogue, with the interval then
  in force, and that are already past (the timeout plus a small grace) count.
* A slot is **down** when any result in it failed, **up** when results
  exist and all succeeded, and **unknown** when no result exists. A result
  of kind ``internal`` (the probe itself broke) counts as no result.
* availability = up / (up + down); unknown slots are excluded from it and
  reported separately: a gap in the data is never scored as up or down.
* downtime = down slots × interval; unknown time likewise.
* Latency percentiles (nearest rank) are over successful results only.
* A site pools the slots and latencies of its checks.
* Status: ``met`` when every objective holds, ``breached`` when one does
  not, ``no data`` when no slot of the period is known.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from collector.catalogue import SlaTarget
from collector.store import CheckVersion, Reader, SlotSample
from slaprobe.schedule import NS_PER_MS, NS_PER_S, offset_ns, slot_index, slots_in

GRACE_NS = 2 * NS_PER_S
INTERNAL = "internal"


@dataclass
class Tally:
    up: int = 0
    down: int = 0
    unknown: int = 0
    down_ns: int = 0
    unknown_ns: int = 0
    total_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.up += other.up
        self.down += other.down
        self.unknown += other.unknown
        self.down_ns += other.down_ns
        self.unknown_ns += other.unknown_ns
        self.total_ns += other.total_ns
        self.latencies_ns.extend(other.latencies_ns)

    @property
    def availability(self) -> float | None:
        known = self.up + self.down
        return None if known == 0 else 100.0 * self.up / known


def percentile(values_sorted: list[int], p: float) -> int | None:
    """Nearest-rank percentile of an ascending list."""
    if not values_sorted:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(values_sorted)))
    return values_sorted[rank - 1]


def tally_version(version: CheckVersion, samples: Iterable[SlotSample], start_ns: int, end_ns: int) -> Tally:
    """Tally the slots of one check version inside [start_ns, end_ns)."""
    interval = version.interval_ms * NS_PER_MS
    offset = offset_ns(version.key, interval)
    lo = max(start_ns, version.valid_from_ns)
    hi = min(end_ns, version.valid_to_ns if version.valid_to_ns is not None else end_ns)
    slots = slots_in(lo, hi, interval, offset)
    state: dict[int, bool] = {}  # slot → True up / False down
    t = Tally()
    for s in samples:
        k = slot_index(s.scheduled_ns, interval, offset)
        if k not in slots or s.error_kind == INTERNAL:
            continue
        if s.ok:
            state.setdefault(k, True)
            t.latencies_ns.append(s.duration_ns)
        else:
            state[k] = False
    t.up = sum(1 for v in state.values() if v)
    t.down = len(state) - t.up
    t.unknown = len(slots) - len(state)
    t.down_ns = t.down * interval
    t.unknown_ns = t.unknown * interval
    t.total_ns = len(slots) * interval
    return t


@dataclass
class Score:
    site: str
    check: str | None  # None for the site row
    slots: int
    up: int
    down: int
    unknown: int
    availability: float | None
    downtime_s: float
    unknown_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    target_availability: float | None
    latency_objective: str | None
    latency_value_ms: float | None
    status: str
    breaches: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _score(site: str, check: str | None, t: Tally, sla: SlaTarget) -> Score:
    lat = sorted(t.latencies_ns)

    def ms(v: int | None) -> float | None:
        return None if v is None else round(v / NS_PER_MS, 3)

    availability = t.availability
    breaches = []
    objective = None
    lat_value = None
    if sla.latency is not None:
        objective = f"p{sla.latency.percentile:g} <= {sla.latency.threshold_ms:g} ms"
        lat_value = ms(percentile(lat, sla.latency.percentile))
        if lat_value is not None and lat_value > sla.latency.threshold_ms:
            breaches.append(
                f"latency p{sla.latency.percentile:g} {lat_value:g} ms > {sla.latency.threshold_ms:g} ms"
            )
    if sla.availability is not None and availability is not None and availability < sla.availability:
        breaches.append(f"availability {availability:.3f}% < {sla.availability:g}%")
    if availability is None:
        status = "no data"
    elif breaches:
        status = "breached"
    else:
        status = "met"
    return Score(
        site=site,
        check=check,
        slots=t.up + t.down + t.unknown,
        up=t.up,
        down=t.down,
        unknown=t.unknown,
        availability=None if availability is None else round(availability, 4),
        downtime_s=t.down_ns / NS_PER_S,
        unknown_s=t.unknown_ns / NS_PER_S,
        p50_ms=ms(percentile(lat, 50)),
        p95_ms=ms(percentile(lat, 95)),
        p99_ms=ms(percentile(lat, 99)),
        target_availability=sla.availability,
        latency_objective=objective,
        latency_value_ms=lat_value,
        status=status,
        breaches=breaches,
    )


@dataclass
class SiteReport:
    site: str
    site_score: Score
    checks: list[Score]


def compliance(
    reader: Reader, start_ns: int, end_ns: int, now_ns: int, site: str | None = None
) -> list[SiteReport]:
    """Score every site (or one) over [start_ns, end_ns), counting only slots already past."""
    reports = []
    for s in reader.sites():
        if site is not None and s["name"] != site:
            continue
        sla = SlaTarget.from_json(s["sla"])
        site_tally = Tally()
        per_check: dict[str, Tally] = {}
        for version in reader.check_versions(s["name"], start_ns, end_ns):
            cutoff = min(end_ns, now_ns - version.timeout_ms * NS_PER_MS - GRACE_NS)
            lo = max(start_ns, version.valid_from_ns)
            hi = min(cutoff, version.valid_to_ns if version.valid_to_ns is not None else cutoff)
            if hi <= lo:
                per_check.setdefault(version.name, Tally())
                continue
            t = tally_version(version, reader.samples(version.check_id, lo, hi), lo, hi)
            per_check.setdefault(version.name, Tally()).add(t)
        checks = []
        for name, t in sorted(per_check.items()):
            checks.append(_score(s["name"], name, t, sla))
            site_tally.add(t)
        reports.append(SiteReport(s["name"], _score(s["name"], None, site_tally, sla), checks))
    return reports
