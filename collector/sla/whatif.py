"""What-if for negotiations: over the last N calendar months, which targets would have held.

Each complete month (in the SLA's time zone, the current one excluded) is scored under the
service's counting rules; then, month by month, every candidate availability target and
latency objective is checked against it. The summary names the strictest availability
target met every month and, per percentile, the lowest threshold that would have held
every month (the worst month's value).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from collector.catalogue import Service, Site
from collector.sla import timeline
from collector.sla.definitions import LatencyPercentile
from collector.sla.histogram import format_ns, percentile_ns
from collector.sla.report import Context, score
from slaprobe.schedule import NS_PER_MS

DEFAULT_AVAILABILITY = (99.0, 99.5, 99.9, 99.95, 99.99)
DEFAULT_PERCENTILES = (50.0, 90.0, 95.0, 99.0)


@dataclass
class Month:
    month: str
    availability: float | None
    downtime_s: float
    latency_ms: dict[str, float | None]
    samples: int
    met: dict[str, bool | None]  # candidate → met this month (None: nothing to judge)


@dataclass
class WhatIf:
    site: str
    service: str
    time_zone: str
    months: list[Month] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    best_availability: float | None = None
    worst_latency_ms: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def last_months(now_ns: int, tz_name: str, n: int) -> list[tuple[int, int]]:
    t = timeline.local(now_ns, ZoneInfo(tz_name))
    out = []
    y, m = t.year, t.month
    for _ in range(n):
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
        out.append((y, m))
    return out[::-1]


def whatif(
    ctx: Context,
    site: Site,
    service: Service,
    months: int = 12,
    availability: Sequence[float] = DEFAULT_AVAILABILITY,
    latency: Sequence[tuple[float, int]] = (),
) -> WhatIf:
    """``latency``: candidate (percentile, threshold ns) objectives; default: the SLA's own."""
    sla = service.sla
    tz = sla.tz
    if not latency:
        latency = [
            (o.percentile, round(o.threshold_ms * NS_PER_MS))
            for o in sla.latency
            if isinstance(o, LatencyPercentile)
        ]
    percentiles = sorted({*DEFAULT_PERCENTILES, *(p for p, _ in latency)})
    out = WhatIf(site.name, service.name, sla.time_zone)
    out.candidates = [f"availability >= {a:g}%" for a in availability] + [
        f"p{p:g} <= {format_ns(t)}" for p, t in latency
    ]
    for y, m in last_months(ctx.now_ns, sla.time_zone, months):
        start, end = timeline.month_bounds(y, m, tz)
        row = score(ctx, site, service, start, end)
        assert row.evaluation is not None
        hist = row.evaluation.summary.latency
        values = {p: percentile_ns(hist, p) for p in percentiles}
        met: dict[str, bool | None] = {}
        for a in availability:
            met[f"availability >= {a:g}%"] = None if row.availability is None else row.availability >= a
        for p, t in latency:
            v = values[p]
            met[f"p{p:g} <= {format_ns(t)}"] = None if v is None else v <= t
        out.months.append(
            Month(
                month=f"{y:04d}-{m:02d}",
                availability=row.availability,
                downtime_s=row.counted_down_s,
                latency_ms={f"p{p:g}": None if v is None else v / NS_PER_MS for p, v in values.items()},
                samples=row.latency_samples,
                met=met,
            )
        )
    judged = [mo for mo in out.months if mo.availability is not None]
    held = [a for a in availability if judged and all(mo.met[f"availability >= {a:g}%"] for mo in judged)]
    out.best_availability = max(held) if held else None
    for p in percentiles:
        key = f"p{p:g}"
        seen = [mo.latency_ms[key] for mo in out.months if mo.latency_ms[key] is not None]
        out.worst_latency_ms[key] = max(v for v in seen if v is not None) if seen else None
    return out
