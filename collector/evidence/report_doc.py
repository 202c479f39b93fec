"""The report document of an evidence bundle: one site's compliance over a period, as JSON.

``build_report(ctx, site, start_ns, end_ns, service=None)`` is a pure function of the
``Context`` (catalogue, store, slot source, now) and its arguments: no wall clock, lists in
a fixed order, floats rounded to fixed digits, only JSON types. ``slaprobe evidence verify``
rebuilds it from the bundle's raw results and compares the two documents for equality, so
everything here comes from the SLA engine's own functions (``report.score``, ``report.tally``,
``engine.summarise``, ``incidents.incidents``): no counting rule is restated.

Per service of the site (the site's own ``(site)`` SLA first, as the catalogue lists them):

* ``report``: the row of ``slaprobe compliance --format json`` (``ServiceReport.to_dict()``,
  per-check rows included), unchanged;
* ``sla``: the targets and objectives, time zone, window, service hours, counting rules;
* ``daily``: per calendar day of the SLA's time zone (a slice belongs to the day its start
  lies in, as it belongs to the period): the accounts in seconds, availability, latency
  percentiles of that day's counted results;
* ``incidents``: as ``slaprobe incidents`` gives them;
* ``budget``: allowed for the period, and the cumulative budget used at the end of each day.

Speed. Within one document the slot source is read once: a memo in front of it answers
the later reads (per-check rows, the daily summaries, incidents) from the first. Slot bits
are cut out of the widest range read per check version; raw summaries are read per UTC
hour (and local midnight) piece and added up, which is exact for raw rows (a summary of
[a, c) is the sum of [a, b) and [b, c)). Rollup summaries are not cut (they are cheap, and
a cut could change which pieces fall back to whole hours). Measured on this project's
machine kind (2 vCPU, load ~2.5, warm cache) for a month of one site with 50 checks at
60 s (2.16 M results, the database of ``bench/query.py --checks 50 --sites 1``): 13-14 s
from ``RawSource``, against 12.1 s for the plain raw ``compliance`` of that site and 22.0 s
with its per-check rows (what ``--format json`` computes): the raw path's floor is one
Python pass over every row (bucketing each duration and clock offset), which the document
pays once. From ``RollupSource``: 0.46 s. ``render_html`` of that document: 0.04 s.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import date, timedelta
from itertools import pairwise
from typing import Any

from collector.catalogue import Service, Site
from collector.evidence.records import _compiled
from collector.rollups import RawSource
from collector.sla import timeline
from collector.sla.definitions import LatencyFraction, LatencyPercentile, SlaDefinition
from collector.sla.engine import NS_PER_S, AgentBits, Evaluation, Part, Source, Summary, ones, summarise
from collector.sla.histogram import NS_PER_MS, fraction_within, percentile_ns, total
from collector.sla.incidents import incidents
from collector.sla.report import Context, ServiceReport, score, selected, tally
from collector.sla.timeline import UTC, Interval

# Summary.add of many, compiled (the optional slaprobe-speedups distribution), or None.
_add_summaries: Any = None if _compiled is None else _compiled.add_summaries


SCHEMA = "slaprobe.evidence.report/1"
DAILY_PERCENTILES = (50.0, 95.0, 99.0)
HOUR_NS = 3600 * NS_PER_S

# Digits kept: seconds to the millisecond, availability as compliance gives it, latency to the ns.
SECONDS_DIGITS = 3
AVAILABILITY_DIGITS = 4
PERCENT_DIGITS = 3
MS_DIGITS = 6


def build_report(
    ctx: Context, site: str, start_ns: int, end_ns: int, service: str | None = None
) -> dict[str, Any]:
    """The report document of ``site`` (or of one ``service`` of it) over [start_ns, end_ns)."""
    if end_ns <= start_ns:
        raise ValueError(f"empty period: end {end_ns} is not after start {start_ns}")
    chosen = selected(ctx.catalogue, site, service)
    if not chosen:
        what = f"site {site!r}" if service is None else f"service {service!r} in site {site!r}"
        raise LookupError(f"no {what} in the catalogue")
    ((s, services),) = chosen
    cuts = sorted({c for v in services for c in _day_starts(v.sla, start_ns, end_ns)})
    memo = MemoSource(ctx.source, cuts, split_summaries=isinstance(ctx.source, RawSource))
    mctx = replace(ctx, source=memo)
    docs = [_service_doc(mctx, s, v, start_ns, end_ns) for v in services]
    return {
        "schema": SCHEMA,
        "site": s.name,
        "description": s.description,
        "service": service,
        "period": {
            "start_ns": start_ns,
            "end_ns": end_ns,
            "from": timeline.format_local(start_ns, UTC),
            "to": timeline.format_local(end_ns, UTC),
        },
        "generated_at": timeline.format_local(ctx.now_ns, UTC),
        "now_ns": ctx.now_ns,
        "catalogue_sha256": ctx.catalogue.digest,
        "clock_bound_ms": ctx.catalogue.reporting.clock_bound_ns / NS_PER_MS,
        "verdicts": [
            {"service": d["service"], "status": d["report"]["status"], "complete": d["report"]["complete"]}
            for d in docs
        ],
        "services": docs,
    }


def add_exclusions(doc: dict[str, Any], reasons: Sequence[str], file: str) -> None:
    """Say in the document how many records of the bundle's chains the collector rejected at
    ingest, by reason (``file`` lists them): they are signed but not counted, and a reader of the
    report must see that, not only a reader of the tables. Export adds it from the collector's
    list, verify from the list it reproduced."""
    counts: dict[str, int] = {}
    for r in reasons:
        counts[r] = counts.get(r, 0) + 1
    doc["excluded"] = {
        "records": len(reasons),
        "file": file,
        "reasons": [{"reason": r, "records": counts[r]} for r in sorted(counts)],
    }


# ---- one service ----------------------------------------------------------------------------


def _service_doc(ctx: Context, site: Site, service: Service, start_ns: int, end_ns: int) -> dict[str, Any]:
    sla = service.sla
    row = score(ctx, site, service, start_ns, end_ns)
    # The per-check rows of `compliance --format json`, in the service's check order.
    for name in service.checks:
        row.checks.append(score(ctx, site, service, start_ns, end_ns, check=name))
    ev = row.evaluation
    assert ev is not None
    daily = _daily(ctx, sla, ev, start_ns, end_ns)
    return {
        "service": service.name,
        "description": service.description,
        "checks": list(service.checks),
        "sla": _sla_doc(sla),
        "report": row.to_dict(),
        "maintenance": _maintenance_doc(ctx, site, service, start_ns, end_ns),
        "daily": daily,
        "incidents": [i.to_dict() for i in incidents(ctx, site, service, start_ns, end_ns)],
        "budget": _budget_doc(row, daily),
    }


def _sla_doc(sla: SlaDefinition) -> dict[str, Any]:
    latency = []
    for o in sla.latency:
        latency.append(
            {
                "objective": o.describe(),
                "kind": "percentile" if isinstance(o, LatencyPercentile) else "fraction",
                "percentile": o.percentile if isinstance(o, LatencyPercentile) else None,
                "fraction": o.fraction if isinstance(o, LatencyFraction) else None,
                "threshold_ms": o.threshold_ms,
            }
        )
    c = sla.counting
    return {
        "availability": sla.availability,
        "latency": latency,
        "degraded_after_ms": sla.degraded_after_ms,
        "time_zone": sla.time_zone,
        "window": sla.window.describe(),
        "service_hours": sla.service_hours.describe(),
        "counting": {
            "slice_ms": c.slice_ms,
            "quorum": c.quorum,
            "unknown": c.unknown,
            "degraded": c.degraded,
            "partial_weight": c.partial_weight,
            "maintenance": c.maintenance,
        },
    }


def _maintenance_doc(
    ctx: Context, site: Site, service: Service, start_ns: int, end_ns: int
) -> dict[str, Any]:
    """The maintenance windows in force in the period: merged intervals, and the ad-hoc records."""
    tz = service.sla.tz
    rows = ctx.store.maintenance_windows(site.name, service.name, start_ns, end_ns)
    adhoc = sorted(
        (
            int(m["from_ns"]),
            int(m["to_ns"]),
            str(m.get("reason", "")),
            str(m.get("created_by", "")),
            int(m.get("created_ns") or 0),
        )
        for m in rows
    )
    merged = timeline.maintenance(
        service.sla.maintenance, tz, start_ns, end_ns, [(a, b) for a, b, *_ in adhoc]
    )
    return {
        "intervals": [
            {
                "from": timeline.format_local(a, tz),
                "to": timeline.format_local(b, tz),
                "start_ns": a,
                "end_ns": b,
                "duration_s": (b - a) / NS_PER_S,
            }
            for a, b in merged
        ],
        "adhoc": [
            {
                "from": timeline.format_local(a, tz),
                "to": timeline.format_local(b, tz),
                "reason": reason,
                "by": by,
                "added": timeline.format_local(created, tz),
                "added_after_start": created > a,
            }
            for a, b, reason, by, created in adhoc
        ],
    }


def _day_starts(sla: SlaDefinition, start_ns: int, end_ns: int) -> list[int]:
    """Local midnights of the SLA's time zone strictly inside (start, end)."""
    return [a for a, _, _ in _days(sla, start_ns, end_ns) if a > start_ns]


def _days(sla: SlaDefinition, start_ns: int, end_ns: int) -> list[tuple[int, int, date]]:
    """The local calendar days meeting [start, end), clipped to it: (from, to, date)."""
    tz = sla.tz
    out = []
    d = timeline.local(start_ns, tz).date()
    while True:
        a, b = timeline.at(d, 0, tz), timeline.at(d + timedelta(days=1), 0, tz)
        lo, hi = max(a, start_ns), min(b, end_ns)
        if lo >= end_ns:
            break
        if hi > lo:
            out.append((lo, hi, d))
        d += timedelta(days=1)
    return out


def _daily(
    ctx: Context, sla: SlaDefinition, ev: Evaluation, start_ns: int, end_ns: int
) -> list[dict[str, Any]]:
    """Per local day: the accounts under the SLA's rules (``tally``) and that day's latency."""
    slice_s = ev.grid.slice_ns / NS_PER_S
    percentiles = sorted(
        {*DAILY_PERCENTILES, *(o.percentile for o in sla.latency if isinstance(o, LatencyPercentile))}
    )
    fractions = [o for o in sla.latency if isinstance(o, LatencyFraction)]
    out = []
    for lo, hi, d in _days(sla, start_ns, end_ns):
        within = ev.grid.mask_of([(lo, hi)])
        t = tally(ev, sla, within)
        known = t.up_s + t.down_s
        summary = summarise(ctx.source, ev, within) if within else Summary()
        lat = summary.latency
        out.append(
            {
                "date": d.isoformat(),
                "from": timeline.format_local(lo, sla.tz),
                "to": timeline.format_local(hi, sla.tz),
                "start_ns": lo,
                "end_ns": hi,
                "slices": within.bit_count(),
                "availability": None if known == 0 else round(100.0 * t.up_s / known, AVAILABILITY_DIGITS),
                "up_s": round(t.up_s, SECONDS_DIGITS),
                "down_s": round(t.down_s, SECONDS_DIGITS),
                "seconds": {k: round(v * slice_s, SECONDS_DIGITS) for k, v in t.counts.items()},
                "latency_ms": {
                    f"p{p:g}": None
                    if (v := percentile_ns(lat, p)) is None
                    else round(v / NS_PER_MS, MS_DIGITS)
                    for p in percentiles
                },
                "within": {
                    o.describe(): None
                    if (f := fraction_within(lat, round(o.threshold_ms * NS_PER_MS))) is None
                    else round(100 * f, PERCENT_DIGITS)
                    for o in fractions
                },
                "latency_samples": total(lat),
                "results": summary.results,
            }
        )
    return out


def _budget_doc(row: ServiceReport, daily: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The period's error budget and how it was spent, day by day (cumulative)."""
    if row.budget is None:
        return None
    allowed = row.budget["allowed_s"]
    used = 0.0
    burn = []
    for day in daily:
        used += day["down_s"]
        cumulative = round(used, SECONDS_DIGITS)
        burn.append(
            {
                "date": day["date"],
                "used_s": day["down_s"],
                "cumulative_used_s": cumulative,
                "remaining_s": round(allowed - cumulative, SECONDS_DIGITS),
                "used_pct": None if allowed <= 0 else round(100 * cumulative / allowed, 2),
            }
        )
    return {**row.budget, "target": row.target_availability, "burn": burn}


# ---- reading the slot source once ---------------------------------------------------------------


class MemoSource:
    """A slot source in front of another, answering repeated reads of one document from the first.

    Slot bits: the widest range read per check version; narrower ranges are cut out of it
    (bit shifts; agents left with no bit dropped, as the inner source never returns them).
    Summaries (``split_summaries``, for raw rows only): every interval is cut at UTC hours
    and at ``cuts``, each piece read once and the pieces added up.
    """

    def __init__(self, inner: Source, cuts: Sequence[int] = (), *, split_summaries: bool = False) -> None:
        self.inner = inner
        self.cuts = sorted(cuts)
        self.split_summaries = split_summaries
        self._bits: dict[Part, tuple[int, int, dict[int, AgentBits]]] = {}
        self._pieces: dict[tuple[Part, int, int], Summary] = {}

    def slot_bits(self, part: Part, k0: int, k1: int) -> dict[int, AgentBits]:
        got = self._bits.get(part)
        if got is None or not (got[0] <= k0 and k1 <= got[1]):
            bits = self.inner.slot_bits(part, k0, k1)
            if got is None or k1 - k0 > got[1] - got[0]:
                self._bits[part] = (k0, k1, bits)
            return bits
        c0, c1, bits = got
        if (c0, c1) == (k0, k1):
            return bits
        shift, mask = k0 - c0, ones(k1 - k0)
        out = {}
        for agent, b in bits.items():
            cut = AgentBits((b.ok >> shift) & mask, (b.fail >> shift) & mask, (b.deg >> shift) & mask)
            if cut.ok or cut.fail or cut.deg:
                out[agent] = cut
        return out

    def gaps(self, check_row: int, start_ns: int, end_ns: int) -> list[Interval]:
        return self.inner.gaps(check_row, start_ns, end_ns)

    def summary(self, part: Part, intervals: Sequence[Interval]) -> Summary:
        if not self.split_summaries:
            return self.inner.summary(part, intervals)
        out = Summary()
        many = getattr(self.inner, "summaries", None)  # RawSource: every piece of an interval in one read
        for a, b in intervals:
            pieces = self._cut(a, b)
            if many is not None:
                self._read_runs(part, pieces, many)
            gots = []
            for piece in pieces:
                got = self._pieces.get((part, *piece))
                if got is None:
                    got = self._pieces[(part, *piece)] = self.inner.summary(part, [piece])
                gots.append(got)
            if _add_summaries is not None:  # the same adds, in C (a month: ~200k of them)
                _add_summaries(out, gots)
            else:
                for got in gots:
                    out.add(got)
        return out

    def _read_runs(
        self, part: Part, pieces: list[Interval], many: Callable[[Part, Sequence[int]], list[Summary]]
    ) -> None:
        """Read each run of consecutive pieces not known yet with one call of ``many``."""
        run: list[Interval] = []
        for piece in [*pieces, None]:
            if piece is not None and (part, *piece) not in self._pieces:
                run.append(piece)
                continue
            if run:
                edges = [run[0][0]] + [p[1] for p in run]
                for known, got in zip(run, many(part, edges), strict=True):
                    self._pieces[(part, *known)] = got
                run = []

    def _cut(self, a: int, b: int) -> list[Interval]:
        points = {a, b}
        points.update(range(-(-a // HOUR_NS) * HOUR_NS, b, HOUR_NS))
        points.update(self.cuts[bisect_right(self.cuts, a) : bisect_left(self.cuts, b)])
        edges = sorted(points)
        return list(pairwise(edges))


__all__ = ["SCHEMA", "MemoSource", "build_report"]
