"""Incidents: contiguous bad slices merged into events, with the evidence of what happened.

An incident is a maximal run of elapsed slices that are down or partial (and degraded, when
degraded counts as down), whatever their class: an outage that started before a
maintenance window and ran into it is one event. For each: start and end (slice edges),
duration, the bad time it cost the SLA (counted), the bad time excused by maintenance or
falling outside service hours, the checks and agents that saw failures, the first error
kind and the phase where the failed probes spent most of their time (from raw rows; once
those are pruned the event keeps its times and counts).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from collector.catalogue import Service, Site
from collector.sla import timeline
from collector.sla.engine import NS_PER_S, runs, span
from collector.sla.report import Context, Store, evaluate_service, tally


class EvidenceStore(Store, Protocol):
    def failures(self, check_ids: Sequence[int], start_ns: int, end_ns: int) -> list[tuple[Any, ...]]: ...

    def agent_names(self) -> dict[int, str]: ...


@dataclass
class Incident:
    site: str
    service: str
    start: str
    end: str
    start_ns: int
    end_ns: int
    duration_s: float
    slices: int
    down_slices: int
    partial_slices: int
    counted_down_s: float
    excused_s: float
    out_of_hours_s: float
    checks: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    first_error: str | None = None
    first_error_at: str | None = None
    first_error_check: str | None = None
    phase: str | None = None
    evidence: str = "raw"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def incidents(ctx: Context, site: Site, service: Service, start_ns: int, end_ns: int) -> list[Incident]:
    sla = service.sla
    tz = sla.tz
    ev, _, _ = evaluate_service(ctx, site, service, start_ns, end_ns, with_summary=False)
    st = ev.state
    bad = st["down"] | st["partial"] | (st["degraded"] if sla.counting.degraded == "down" else 0)
    bad &= ~ev.pending
    store: Any = ctx.store
    names = store.agent_names() if hasattr(store, "agent_names") else {}
    check_names = {p.check_row: p.name for p in ev.parts}
    s = ev.grid.slice_ns / NS_PER_S
    out = []
    for a, b in runs(bad):
        t0, t1 = ev.grid.start(ev.grid.j0 + a), ev.grid.start(ev.grid.j0 + b)
        within = span(a, b)
        t = tally(ev, sla, within)
        excused_bad = bad & within & ev.maintenance  # in scope, in a window: excused under both rules
        inc = Incident(
            site=site.name,
            service=service.name,
            start=timeline.format_local(t0, tz),
            end=timeline.format_local(t1, tz),
            start_ns=t0,
            end_ns=t1,
            duration_s=(t1 - t0) / NS_PER_S,
            slices=b - a,
            down_slices=(st["down"] & within).bit_count(),
            partial_slices=(st["partial"] & within).bit_count(),
            counted_down_s=round(t.down_s, 3),
            excused_s=round(excused_bad.bit_count() * s, 3),
            out_of_hours_s=round((bad & within & ev.out_of_hours).bit_count() * s, 3),
        )
        failures = store.failures(list(check_names), t0, t1) if hasattr(store, "failures") else []
        if failures:
            first = failures[0]
            inc.first_error, inc.first_error_at = first[3], timeline.format_local(first[0], tz)
            inc.first_error_check = check_names.get(first[1])
            inc.checks = sorted({check_names[f[1]] for f in failures if f[1] in check_names})
            inc.agents = sorted({names.get(f[2], f"agent {f[2]}") for f in failures})
            inc.phase = _slowest_phase(failures)
        else:
            inc.evidence = "rollups (raw rows pruned)"
        out.append(inc)
    return out


def _slowest_phase(failures: list[tuple[Any, ...]]) -> str | None:
    """The phase in which the failed probes spent most time, summed over them."""
    totals: dict[str, int] = {}
    for f in failures:
        try:
            phases = json.loads(f[5] or "{}")
        except ValueError:
            continue
        for name, ns in phases.items():
            if isinstance(ns, int | float):
                totals[name] = totals.get(name, 0) + int(ns)
    return max(totals, key=lambda k: totals[k]) if totals else None
