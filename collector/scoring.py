"""Scoring entry points. The SLA engine lives in ``collector/sla/`` (one module per job):

* ``compliance(ctx, period, site=None, service=None)``: one row per site and service
  (``collector.sla.report``; ``score`` for one service or check over one period);
* ``incidents(ctx, site, service, start_ns, end_ns)`` (``collector.sla.incidents``);
* ``budget(ctx, site, service)``: budget, burn rates, forecast (``collector.sla.budget``);
* ``whatif(ctx, site, service, months)`` (``collector.sla.whatif``).

``ctx`` is a :class:`collector.sla.report.Context`: the catalogue, a ``collector.store.Reader``,
a slot source from ``collector.rollups`` (``RollupSource`` or ``RawSource``) and the time.
The counting rules are in the README ("SLA definitions and counting rules").
"""

from __future__ import annotations

from collector.sla.budget import budget
from collector.sla.incidents import incidents
from collector.sla.report import Context, Period, compliance, score
from collector.sla.whatif import whatif

__all__ = ["Context", "Period", "budget", "compliance", "incidents", "score", "whatif"]
