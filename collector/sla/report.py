"""Compliance reports: per site and service, the accounts, availability, budget and objectives.

The rules, in the order they apply (README, "Counting rules"):

* slices are pending, out of service hours, or in scope with a state (``engine``);
* good time = up + partial × (1 − partial_weight) [+ degraded when degraded counts up]
  [+ unknown and gap when unknown counts up]; bad time = down + partial × partial_weight
  [+ degraded when it counts down] [+ unknown and gap when unknown counts down];
  unmonitored time is neither;
* maintenance (rule ``downtime``, the default): a slice in a maintenance window that would
  bring bad time is *excused*: its bad time is removed, its good share (a partial slice's
  1 − weight) still counts. So adding maintenance never lowers availability. Rule ``all``:
  every slice in a window is removed, good or bad (the classic formula; removing good time
  can then lower availability);
* counted up = good time of the slices not removed; counted down = bad time of the slices
  not excused;
* availability = counted up / (counted up + counted down);
* error budget: allowed = (1 − target) × (counted up + counted down + the in-hours time still
  to come, less its maintenance windows under rule ``all``), used = counted down, remaining =
  allowed − used;
* latency objectives over the successful results of counted slices (``histogram``);
* status: ``no data`` when nothing counted and no latency sample, ``breached`` when an
  objective fails, else ``met``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from collector.catalogue import Catalogue, Service, Site
from collector.sla import timeline
from collector.sla.definitions import (
    SITE_SERVICE,
    LatencyFraction,
    LatencyPercentile,
    SlaDefinition,
    parse_local_time,
)
from collector.sla.engine import NS_PER_S, Evaluation, Part, Source, evaluate
from collector.sla.histogram import clock_flagged, format_ns, fraction_within, percentile_ns, total
from collector.sla.timeline import Interval
from slaprobe.schedule import NS_PER_MS, offset_ns

PERCENTILES = (50.0, 90.0, 95.0, 99.0)


class VersionRow(Protocol):
    """A check version as the store returns it (``collector.store.CheckVersion``)."""

    @property
    def check_id(self) -> int: ...
    @property
    def key(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def interval_ms(self) -> int: ...
    @property
    def timeout_ms(self) -> int: ...
    @property
    def valid_from_ns(self) -> int: ...
    @property
    def valid_to_ns(self) -> int | None: ...


class Store(Protocol):
    """What reports read besides slot data (``collector.store.Reader`` implements it)."""

    def check_versions(self, site: str, start_ns: int, end_ns: int) -> Sequence[VersionRow]: ...

    def maintenance_windows(
        self, site: str, service: str | None, start_ns: int, end_ns: int
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Period:
    """Which period to report: the SLA's current window, a calendar unit, a range, or the last N."""

    kind: str = "window"  # window | month | quarter | week | range | last
    year: int = 0
    number: int = 0
    start: str | None = None  # range: ISO text; naive times are in the SLA's time zone
    end: str | None = None
    last_ns: int = 0

    def resolve(self, sla: SlaDefinition, now_ns: int) -> Interval:
        tz = sla.tz
        if self.kind == "window":
            return timeline.window_at(sla.window, tz, now_ns)
        if self.kind == "month":
            return timeline.month_bounds(self.year, self.number, tz)
        if self.kind == "quarter":
            first = (self.number - 1) * 3 + 1
            return timeline.month_start(self.year, first, tz), timeline.month_start(self.year, first + 3, tz)
        if self.kind == "week":
            monday = datetime.fromisocalendar(self.year, self.number, 1).date()
            return timeline.at(monday, 0, tz), timeline.at(monday, 7 * 1440, tz)
        if self.kind == "last":
            return now_ns - self.last_ns, now_ns
        start = (
            parse_local_time(self.start, tz) if self.start else timeline.window_at(sla.window, tz, now_ns)[0]
        )
        end = parse_local_time(self.end, tz) if self.end else now_ns
        return start, end


@dataclass
class Context:
    """Everything a report needs: definitions, the store, a slot source, the time."""

    catalogue: Catalogue
    store: Store
    source: Source
    now_ns: int
    source_name: str = "rollups"


def parts_for(versions: Sequence[VersionRow], names: Sequence[str]) -> list[Part]:
    wanted = set(names)
    out = []
    for v in versions:
        if v.name not in wanted:
            continue
        interval = v.interval_ms * NS_PER_MS
        out.append(
            Part(
                check_row=v.check_id,
                key=v.key,
                name=v.name,
                interval_ns=interval,
                offset_ns=offset_ns(v.key, interval),
                timeout_ns=v.timeout_ms * NS_PER_MS,
                valid_from=v.valid_from_ns,
                valid_to=v.valid_to_ns,
            )
        )
    return out


def _overlaps(p: Part, start_ns: int, end_ns: int) -> bool:
    return p.valid_from < end_ns and (p.valid_to is None or p.valid_to > start_ns)


def slice_and_origin(sla: SlaDefinition, parts: Sequence[Part], names: Sequence[str]) -> tuple[int, int]:
    """Slice: the configured one, else the longest interval. Origin: one check's offset, else 0."""
    longest = max((p.interval_ns for p in parts), default=60 * NS_PER_S)
    slice_ns = sla.counting.slice_ms * NS_PER_MS if sla.counting.slice_ms else longest
    if len(set(names)) == 1 and parts:
        latest = max(parts, key=lambda p: p.valid_from)
        return slice_ns, offset_ns(latest.key, latest.interval_ns) % slice_ns
    return slice_ns, 0


@dataclass
class Objective:
    objective: str
    value: str | None
    met: bool | None  # None: nothing to judge (no data)


@dataclass
class ServiceReport:
    site: str
    service: str
    check: str | None
    description: str
    time_zone: str
    period_from: str
    period_to: str
    complete: bool
    slice_s: float
    service_hours: str
    rules: dict[str, Any]
    slices: int
    seconds: dict[str, float]
    counts: dict[str, int]
    maintenance_window_s: float
    counted_up_s: float
    counted_down_s: float
    availability: float | None
    target_availability: float | None
    budget: dict[str, float] | None
    latency_ms: dict[str, float | None]
    latency_samples: int
    latency_approximate: bool
    objectives: list[Objective]
    results: int
    clock_flagged: int
    clock_unsynced: int
    clock_bound_ms: float
    status: str
    breaches: list[str]
    checks: list[ServiceReport] = field(default_factory=list)
    evaluation: Evaluation | None = None

    # Names kept from the first-cut report (scripts read them).
    @property
    def up(self) -> int:
        return self.counts["up"] + self.counts["degraded"] + self.counts["partial"]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "site": self.site,
            "service": self.service,
            "check": self.check,
            "description": self.description,
            "time_zone": self.time_zone,
            "from": self.period_from,
            "to": self.period_to,
            "complete": self.complete,
            "slice_s": self.slice_s,
            "service_hours": self.service_hours,
            "rules": self.rules,
            "slices": self.slices,
            "up": self.up,
            "down": self.counts["down"],
            "unknown": self.counts["unknown"],
            "gap": self.counts["gap"],
            "availability": self.availability,
            "target_availability": self.target_availability,
            "downtime_s": self.counted_down_s,
            "unknown_s": self.seconds["unknown"],
            "counted_up_s": self.counted_up_s,
            "counted_down_s": self.counted_down_s,
            "maintenance_window_s": self.maintenance_window_s,
            "seconds": self.seconds,
            "counts": self.counts,
            "budget": self.budget,
            "latency_ms": self.latency_ms,
            "latency_samples": self.latency_samples,
            "latency_approximate": self.latency_approximate,
            "objectives": [o.__dict__ for o in self.objectives],
            "results": self.results,
            "clock_flagged": self.clock_flagged,
            "clock_unsynced": self.clock_unsynced,
            "clock_bound_ms": self.clock_bound_ms,
            "status": self.status,
            "breaches": self.breaches,
        }
        if self.check is None:
            d["checks"] = [c.to_dict() for c in self.checks]
        return d


@dataclass
class SiteReport:
    site: str
    description: str
    services: list[ServiceReport]
    checks: list[ServiceReport]


ACCOUNTS = (
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
)


@dataclass
class Tally:
    """The accounts of one evaluation under an SLA's rules: slice counts and counted time."""

    counts: dict[str, int]  # ACCOUNTS → slices; disjoint; they add up to every slice
    up_s: float
    down_s: float
    maintenance_window_s: float  # in-scope time inside maintenance windows (excused or not)


def bad_states(ev: Evaluation, sla: SlaDefinition) -> tuple[int, int]:
    """(good, bad) slice masks under the SLA's rules, partial slices apart."""
    c = sla.counting
    st = ev.state
    good = st["up"]
    bad = st["down"]
    if c.degraded == "down":
        bad |= st["degraded"]
    else:
        good |= st["degraded"]
    unknown = st["unknown"] | st["gap"]
    if c.unknown == "up":
        good |= unknown
    elif c.unknown == "down":
        bad |= unknown
    return good, bad


def tally(ev: Evaluation, sla: SlaDefinition, within: int | None = None) -> Tally:
    """Accounts of the slices of ``ev`` (or of those in ``within``) under the SLA's rules."""
    c = sla.counting
    w = c.partial_weight
    st = ev.state
    scope = ev.in_scope if within is None else ev.in_scope & within
    good, bad = bad_states(ev, sla)
    maint = ev.maintenance & scope
    # Rule "downtime": a window removes only what would count against the SLA; "all": everything.
    excusable = ~0 if c.maintenance == "all" else bad | (st["partial"] if w > 0 else 0)
    removed = maint & excusable
    kept = scope & ~removed
    counts = {name: (st[name] & kept).bit_count() for name in ("up", "degraded", "partial", "down")}
    counts.update({name: (st[name] & kept).bit_count() for name in ("unknown", "gap", "unmonitored")})
    everything = (1 << ev.grid.width) - 1 if within is None else within
    counts["maintenance"] = removed.bit_count()
    counts["out_of_hours"] = (ev.out_of_hours & everything).bit_count()
    counts["pending"] = (ev.pending & everything).bit_count()
    partial_up = st["partial"] & (scope if c.maintenance == "downtime" else kept)
    up = (good & kept).bit_count() + (1 - w) * partial_up.bit_count()
    down = (bad & kept).bit_count() + w * (st["partial"] & kept).bit_count()
    s = ev.grid.slice_ns / NS_PER_S
    return Tally(counts, up * s, down * s, maint.bit_count() * s)


def evaluate_service(
    ctx: Context,
    site: Site,
    service: Service,
    start_ns: int,
    end_ns: int,
    names: Sequence[str] | None = None,
    with_summary: bool = True,
) -> tuple[Evaluation, list[Interval], list[Interval]]:
    """Evaluate ``service`` (or the subset ``names`` of its checks) over [start, end)."""
    sla = service.sla
    names = list(service.checks if names is None else names)
    # Versions in force during the period set the default slice and the origin; the slots
    # counted come from every version overlapping the slices (the last may end after the period).
    versions = ctx.store.check_versions(site.name, start_ns, end_ns + 86_400 * NS_PER_S)
    in_period = [p for p in parts_for(versions, names) if _overlaps(p, start_ns, end_ns)]
    slice_ns, origin = slice_and_origin(sla, in_period, names)
    first = origin + -((origin - start_ns) // slice_ns) * slice_ns
    last_end = origin + -((origin - end_ns) // slice_ns) * slice_ns
    parts = [p for p in parts_for(versions, names) if _overlaps(p, first, last_end)]
    grid_start = start_ns
    grid_end = end_ns + slice_ns  # slices starting before end_ns may run past it
    in_hours = timeline.service_hours(sla.service_hours, sla.tz, grid_start - slice_ns, grid_end)
    adhoc = [
        (int(m["from_ns"]), int(m["to_ns"]))
        for m in ctx.store.maintenance_windows(site.name, service.name, grid_start - slice_ns, grid_end)
    ]
    maint = timeline.maintenance(sla.maintenance, sla.tz, grid_start - slice_ns, grid_end, adhoc)
    ev = evaluate(
        ctx.source,
        parts,
        slice_ns=slice_ns,
        origin=origin,
        start_ns=start_ns,
        end_ns=end_ns,
        now_ns=ctx.now_ns,
        quorum=sla.counting.quorum,
        in_hours=in_hours,
        maintenance=maint,
        with_summary=with_summary,
    )
    return ev, in_hours, maint


def score(
    ctx: Context,
    site: Site,
    service: Service,
    start_ns: int,
    end_ns: int,
    check: str | None = None,
) -> ServiceReport:
    """One report row: ``service`` as a whole, or one of its checks under the service's rules."""
    sla = service.sla
    tz = sla.tz
    ev, _, _ = evaluate_service(ctx, site, service, start_ns, end_ns, None if check is None else [check])
    slice_s = ev.grid.slice_ns / NS_PER_S
    t = tally(ev, sla)
    counts = t.counts
    seconds = {k: v * slice_s for k, v in counts.items()}
    up_s, down_s = t.up_s, t.down_s
    known = up_s + down_s
    availability = None if known == 0 else round(100.0 * up_s / known, 4)
    objectives: list[Objective] = []
    breaches: list[str] = []
    budget = None
    if sla.availability is not None:
        # The time still to come that will count: in hours; under rule "all", not in maintenance.
        future = ev.pending_in_hours & ~(ev.pending_maintenance if sla.counting.maintenance == "all" else 0)
        eligible = known + future.bit_count() * slice_s
        allowed = (1 - sla.availability / 100.0) * eligible
        budget = {
            "allowed_s": round(allowed, 3),
            "used_s": round(down_s, 3),
            "remaining_s": round(allowed - down_s, 3),
        }
        met = None if availability is None else availability >= sla.availability
        objectives.append(
            Objective(
                f"availability >= {sla.availability:g}%",
                None if availability is None else f"{availability:.4f}%",
                met,
            )
        )
        if met is False:
            breaches.append(f"availability {availability:.4f}% < {sla.availability:g}%")
    lat = ev.summary.latency
    for o in sla.latency:
        threshold_ns = round(o.threshold_ms * NS_PER_MS)
        if isinstance(o, LatencyPercentile):
            v = percentile_ns(lat, o.percentile)
            value = None if v is None else f"{format_ns(v)}"
            met = None if v is None else v <= threshold_ns
            if met is False:
                breaches.append(f"latency p{o.percentile:g} {value} > {format_ns(threshold_ns)}")
        else:
            assert isinstance(o, LatencyFraction)
            frac = fraction_within(lat, threshold_ns)
            value = None if frac is None else f"{100 * frac:.3f}%"
            met = None if frac is None else 100 * frac >= o.fraction
            if met is False:
                breaches.append(f"latency {value} <= {format_ns(threshold_ns)}, below {o.fraction:g}%")
        objectives.append(Objective(o.describe(), value, met))
    samples = total(lat)
    if known == 0 and samples == 0:
        status = "no data"
    elif breaches:
        status = "breached"
    else:
        status = "met"
    latency_ms = {
        f"p{p:g}": None if (v := percentile_ns(lat, p)) is None else v / NS_PER_MS for p in PERCENTILES
    }
    bound = ctx.catalogue.reporting.clock_bound_ns
    c = sla.counting
    return ServiceReport(
        site=site.name,
        service=service.name,
        check=check,
        description=service.description,
        time_zone=sla.time_zone,
        period_from=timeline.format_local(start_ns, tz),
        period_to=timeline.format_local(end_ns, tz),
        complete=end_ns <= ctx.now_ns and not ev.pending,
        slice_s=slice_s,
        service_hours=sla.service_hours.describe(),
        rules={
            "window": sla.window.describe(),
            "quorum": c.quorum,
            "unknown": c.unknown,
            "degraded": c.degraded,
            "partial_weight": c.partial_weight,
            "maintenance": c.maintenance,
        },
        maintenance_window_s=t.maintenance_window_s,
        slices=ev.grid.width,
        seconds=seconds,
        counts=counts,
        counted_up_s=round(up_s, 3),
        counted_down_s=round(down_s, 3),
        availability=availability,
        target_availability=sla.availability,
        budget=budget,
        latency_ms=latency_ms,
        latency_samples=samples,
        latency_approximate=ev.summary.approximate,
        objectives=objectives,
        results=ev.summary.results,
        clock_flagged=clock_flagged(ev.summary.clock, bound),
        clock_unsynced=ev.summary.unsynced,
        clock_bound_ms=bound / NS_PER_MS,
        status=status,
        breaches=breaches,
        evaluation=ev,
    )


def selected(catalogue: Catalogue, site: str | None, service: str | None) -> list[tuple[Site, list[Service]]]:
    out = []
    for s in catalogue.sites.values():
        if site is not None and s.name != site:
            continue
        services = [v for v in s.services if service is None or v.name == service]
        if services:
            out.append((s, services))
    return out


def compliance(
    ctx: Context,
    period: Period,
    site: str | None = None,
    service: str | None = None,
    with_checks: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[SiteReport]:
    """One row per site and service over ``period`` (resolved in each SLA's time zone)."""
    reports = []
    for s, services in selected(ctx.catalogue, site, service):
        rows = []
        per_check: dict[str, ServiceReport] = {}
        for v in services:
            start, end = period.resolve(v.sla, ctx.now_ns)
            row = score(ctx, s, v, start, end)
            if with_checks:
                for name in v.checks:
                    c = score(ctx, s, v, start, end, check=name)
                    row.checks.append(c)
                    per_check.setdefault(name, c)
            rows.append(row)
            if progress is not None:
                progress(f"{s.name}/{v.name}")
        reports.append(
            SiteReport(
                s.name, s.description, rows, [per_check[c.name] for c in s.checks if c.name in per_check]
            )
        )
    return reports


def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


__all__ = [
    "ACCOUNTS",
    "SITE_SERVICE",
    "Context",
    "Objective",
    "Period",
    "ServiceReport",
    "SiteReport",
    "compliance",
    "score",
]
