"""Error budget, burn rates over the SRE workbook's windows, and a forecast.

* Budget of the SLA's current window (calendar or rolling): allowed, used, remaining
  (``report.score``).
* Burn rate over a trailing window W = (bad time / counted time in W) / (1 − target): 1 means
  the budget lasts exactly the window. Alerts use the workbook's pairs, both windows above
  the factor: 1 h and 5 min above 14.4, 6 h and 30 min above 6, 1 d and 2 h above 3,
  3 d and 6 h above 1. Service hours, maintenance and unknown time follow the SLA's rules.
* Forecast, at the burn of the last day (``basis``): when the remaining budget runs out,
  walking forward through the time that will count (service hours; maintenance windows too
  under rule ``all``). For a rolling window: where availability tends at that burn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from collector.catalogue import Service, Site
from collector.sla import timeline
from collector.sla.engine import NS_PER_S
from collector.sla.report import Context, evaluate_service, score, tally

MINUTE = 60
HOUR = 3600
DAY = 86400
SRE_WINDOWS = (
    (1 * HOUR, 5 * MINUTE, 14.4),
    (6 * HOUR, 30 * MINUTE, 6.0),
    (1 * DAY, 2 * HOUR, 3.0),
    (3 * DAY, 6 * HOUR, 1.0),
)
FORECAST_BASIS_S = DAY


@dataclass
class Burn:
    long_s: int
    short_s: int
    factor: float
    long_rate: float | None
    short_rate: float | None
    alert: bool

    @property
    def label(self) -> str:
        return f"{_span(self.long_s)}/{_span(self.short_s)}"


@dataclass
class BudgetReport:
    site: str
    service: str
    time_zone: str
    window: str
    window_from: str
    window_to: str
    target: float | None
    availability: float | None
    allowed_s: float | None
    used_s: float | None
    remaining_s: float | None
    remaining_pct: float | None
    burns: list[Burn] = field(default_factory=list)
    basis: str = "1d"
    basis_rate: float | None = None
    forecast: str = ""
    exhausted_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["burns"] = [{**asdict(b), "window": b.label} for b in self.burns]
        return d


def budget(ctx: Context, site: Site, service: Service) -> BudgetReport:
    sla = service.sla
    tz = sla.tz
    now = ctx.now_ns
    start, end = timeline.window_at(sla.window, tz, now)
    row = score(ctx, site, service, start, end)
    rep = BudgetReport(
        site=site.name,
        service=service.name,
        time_zone=sla.time_zone,
        window=sla.window.describe(),
        window_from=row.period_from,
        window_to=row.period_to,
        target=sla.availability,
        availability=row.availability,
        allowed_s=None,
        used_s=None,
        remaining_s=None,
        remaining_pct=None,
    )
    if sla.availability is None or row.budget is None:
        rep.forecast = "no availability target: no budget"
        return rep
    allowed, used = row.budget["allowed_s"], row.budget["used_s"]
    rep.allowed_s, rep.used_s, rep.remaining_s = allowed, used, round(allowed - used, 3)
    rep.remaining_pct = None if allowed <= 0 else round(100 * (allowed - used) / allowed, 2)
    # One evaluation of the last three days (plus a slice) serves every burn window.
    longest = max(w[0] for w in SRE_WINDOWS)
    ev, _, _ = evaluate_service(ctx, site, service, now - longest * NS_PER_S, now, with_summary=False)
    error_rate = 1 - sla.availability / 100

    def rate(seconds: int) -> float | None:
        first = ev.grid.first_at_or_after(now - seconds * NS_PER_S) - ev.grid.j0
        within = ((1 << ev.grid.width) - 1) & ~((1 << max(first, 0)) - 1)
        t = tally(ev, sla, within)
        counted = t.up_s + t.down_s
        if counted <= 0:
            return None
        return round(t.down_s / counted / error_rate, 3) if error_rate > 0 else None

    for long_s, short_s, factor in SRE_WINDOWS:
        lr, sr = rate(long_s), rate(short_s)
        alert = lr is not None and sr is not None and lr >= factor and sr >= factor
        rep.burns.append(Burn(long_s, short_s, factor, lr, sr, alert))
    basis = rate(FORECAST_BASIS_S)
    rep.basis_rate = basis
    rep.forecast, rep.exhausted_at = _forecast(ctx, service, rep, basis, error_rate, end)
    return rep


def _forecast(
    ctx: Context, service: Service, rep: BudgetReport, basis: float | None, error_rate: float, end: int
) -> tuple[str, str | None]:
    sla = service.sla
    tz = sla.tz
    now = ctx.now_ns
    assert rep.remaining_s is not None
    if basis is None:
        return "no counted time in the last day: no forecast", None
    bad_fraction = basis * error_rate
    if sla.window.kind == "rolling":
        tends = 100 * (1 - bad_fraction)
        verdict = "meets" if tends >= (sla.availability or 0) else "misses"
        return f"at this burn, availability tends to {tends:.4f}% ({verdict} the target)", None
    if rep.remaining_s <= 0:
        return "budget exhausted", None
    if bad_fraction <= 0:
        return "no burn in the last day: the budget lasts the window", None
    need_ns = rep.remaining_s / bad_fraction * NS_PER_S
    counting = timeline.service_hours(sla.service_hours, tz, now, end)
    if sla.counting.maintenance == "all":
        counting = timeline.subtract(counting, timeline.maintenance(sla.maintenance, tz, now, end))
    for a, b in counting:
        if b - a >= need_ns:
            at = int(a + need_ns)
            return (
                f"at this burn the budget runs out on {timeline.format_local(at, tz)}",
                timeline.format_local(at, tz),
            )
        need_ns -= b - a
    left = need_ns * bad_fraction / NS_PER_S
    return f"at this burn the budget lasts the window ({_human(left)} of it would be left)", None


def _span(seconds: int) -> str:
    if seconds % DAY == 0:
        return f"{seconds // DAY}d"
    if seconds % HOUR == 0:
        return f"{seconds // HOUR}h"
    return f"{seconds // MINUTE}m"


def _human(seconds: float) -> str:
    s = round(seconds)
    if s < 120:
        return f"{s}s"
    if s < 2 * HOUR:
        return f"{s // 60}m"
    return f"{s / HOUR:.1f}h"
