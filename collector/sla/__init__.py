"""The SLA engine: definitions, slices and quorum, rollup-backed history, budgets, incidents, what-if.

Modules, one job each:

* ``definitions``: SLA values read from the catalogue (objectives, window, service hours,
  maintenance, counting rules) and their validation;
* ``histogram``: the fixed latency buckets and the clock-offset ladder both scoring paths share;
* ``timeline``: windows, service hours and maintenance in the SLA's time zone → instants;
* ``engine``: slots → per-slice states (quorum, degraded, gaps) → time accounts and latency;
* ``report``: the counting rules → accounts, availability, error budget, objectives, compliance rows;
* ``incidents``: bad slices merged into events, with their evidence;
* ``budget``: the current window's budget, SRE burn rates, forecast;
* ``whatif``: the last N months against candidate targets.

Data comes from a source in ``collector/rollups.py`` (the storage layer): raw rows or rollups.
"""
