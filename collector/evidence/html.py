"""The human report of an evidence bundle: one self-contained HTML file, printable to PDF.

``render_html(doc)`` turns a report document (``report_doc.build_report``) into HTML with
inline CSS and inline SVG charts: no script, no font or URL from outside, A4 pages when
printed (a page per service, charts never cut). Every number shown comes from the document
and sits in an element whose ``data-field`` names its path in the JSON (dot-separated; list
items by index; a ``.`` in a key is written ``~1`` and a ``~`` ``~0``, as JSON Pointer does
for ``/``) and whose ``data-format`` names how ``format_value`` wrote it, so a test can check
each one against the document. Axis ticks and scales are drawing aids, not figures. All text
is escaped: site, check and service names, error details and reasons are user data.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

# ---- formatting: the one place numbers become text ----------------------------------------------


def format_value(value: Any, fmt: str) -> str:
    """How the report writes ``value`` in format ``fmt`` (a test formats the JSON the same way)."""
    if value is None:
        return "–"
    if fmt == "pct":  # availability, as compliance computes it (4 decimals)
        return f"{value:.4f}%"
    if fmt == "pct2":
        return f"{value:.2f}%"
    if fmt == "pct3":
        return f"{value:.3f}%"
    if fmt == "target":
        return f"{value:g}%"
    if fmt == "dur":
        return _duration(float(value))
    if fmt == "ms":
        return f"{value:g} ms"
    if fmt == "int":
        return f"{int(value):,}"
    if fmt == "status":
        return str(value).upper()
    if fmt == "time":  # ISO 8601 with a space, so a narrow column can wrap it
        return str(value).replace("T", " ")
    if fmt == "list":
        return ", ".join(str(v) for v in value) or "–"
    return str(value)


def _duration(seconds: float) -> str:
    """1h 05m 07s; 2d 03h 10m; 45s; 0.5s (negative: a minus sign)."""
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 60 and s != int(s):
        return f"{sign}{s:.3f}".rstrip("0").rstrip(".") + "s"
    whole = round(s)
    d, rest = divmod(whole, 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    if d:
        return f"{sign}{d}d {h:02d}h {m:02d}m"
    if h:
        return f"{sign}{h}h {m:02d}m {sec:02d}s"
    if m:
        return f"{sign}{m}m {sec:02d}s"
    return f"{sign}{sec}s"


def path_key(key: str | int) -> str:
    return str(key).replace("~", "~0").replace(".", "~1")


def field_path(*keys: str | int) -> str:
    return ".".join(path_key(k) for k in keys)


def resolve(doc: Any, path: str) -> Any:
    """The value at a ``data-field`` path."""
    cur = doc
    for raw in path.split("."):
        key = raw.replace("~1", ".").replace("~0", "~")
        cur = cur[int(key)] if isinstance(cur, list) else cur[key]
    return cur


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


class Fields:
    """Writes numbers from the document with their ``data-field`` and ``data-format``."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def __call__(self, *path: str | int, fmt: str = "text", tag: str = "span", cls: str = "") -> str:
        p = field_path(*path)
        value = resolve(self.doc, p)
        c = f' class="{esc(cls)}"' if cls else ""
        return f'<{tag}{c} data-field="{esc(p)}" data-format="{esc(fmt)}">{esc(format_value(value, fmt))}</{tag}>'


# ---- the page ------------------------------------------------------------------------------------

CSS = """
@page { size: A4; margin: 14mm 12mm; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, Helvetica, sans-serif; color: #1d2327;
       margin: 0 auto; max-width: 186mm; padding: 8px; font-size: 10.5pt; line-height: 1.35; }
h1 { font-size: 20pt; margin: 0 0 4px; }
h2 { font-size: 15pt; margin: 18px 0 6px; border-bottom: 2px solid #1d2327; padding-bottom: 3px; }
h3 { font-size: 11.5pt; margin: 14px 0 4px; }
p.meta { margin: 2px 0; color: #50575e; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; font-size: 9.5pt; }
th, td { border: 1px solid #c3c4c7; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f1; font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
.verdicts { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
.verdict { border: 3px solid; border-radius: 6px; padding: 8px 14px; min-width: 200px; }
.verdict .name { display: block; font-size: 10pt; color: #1d2327; }
.verdict .word { display: block; font-size: 22pt; font-weight: 700; letter-spacing: 0.04em; }
.verdict .figure { font-size: 10pt; color: #1d2327; }
.met { border-color: #00a32a; color: #00752a; }
.breached { border-color: #d63638; color: #b32d2e; }
.nodata { border-color: #8c8f94; color: #50575e; }
.ok { color: #00752a; font-weight: 600; }
.bad { color: #b32d2e; font-weight: 600; }
figure { margin: 8px 0 12px; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-size: 9pt; color: #50575e; margin-top: 2px; }
svg { display: block; width: 100%; height: auto; max-width: 680px; }
svg text { font-family: "DejaVu Sans", Arial, sans-serif; font-size: 10px; fill: #3c434a; }
.legend span { display: inline-block; margin-right: 12px; font-size: 9pt; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: -1px; }
section.service { break-before: page; page-break-before: always; }
section.service:first-of-type { break-before: auto; page-break-before: auto; }
table.incidents, .daily table { font-size: 8pt; }
table.incidents td { overflow-wrap: anywhere; }
.keep { break-inside: avoid; page-break-inside: avoid; }
.small { font-size: 8.5pt; color: #50575e; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  h2 { break-after: avoid; page-break-after: avoid; }
  h3 { break-after: avoid; page-break-after: avoid; }
  .daily { break-before: page; page-break-before: always; }
  a { color: inherit; text-decoration: none; }
}
"""

GREEN, RED, GREY, BLUE, AMBER = "#00a32a", "#d63638", "#a7aaad", "#2271b1", "#dba617"
LINE_COLOURS = ("#72aee6", "#2271b1", "#8c1c9c", "#b26200")


def render_html(doc: dict[str, Any]) -> str:
    """The report document as one self-contained HTML page."""
    f = Fields(doc)
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>SLA report: {esc(doc['site'])}, {esc(doc['period']['from'])} to {esc(doc['period']['to'])}</title>",
        f"<style>{CSS}</style></head><body>",
        _header(doc, f),
    ]
    for i, service in enumerate(doc["services"]):
        parts.append(_service(doc, f, i, service))
    parts.append(_footer(doc, f))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _status_class(status: str) -> str:
    return {"met": "met", "breached": "breached"}.get(status, "nodata")


def _header(doc: dict[str, Any], f: Fields) -> str:
    out = [
        "<header>",
        f"<h1>SLA report: {f('site')}</h1>",
    ]
    if doc.get("description"):
        out.append(f'<p class="meta">{f("description")}</p>')
    out.append(f'<p class="meta">Period: {f("period", "from")} to {f("period", "to")} (end excluded)</p>')
    if doc.get("service") is not None:
        out.append(f'<p class="meta">Service: {f("service")}</p>')
    out.append(
        f'<p class="meta">Computed for {f("generated_at")} from the raw results; catalogue SHA-256 '
        f'<code class="small">{f("catalogue_sha256")}</code></p>'
    )
    excluded = doc.get("excluded")
    if excluded is not None:
        if excluded["records"]:
            why = "; ".join(
                f"{f('excluded', 'reasons', j, 'records', fmt='int')}: {f('excluded', 'reasons', j, 'reason')}"
                for j in range(len(excluded["reasons"]))
            )
            out.append(
                f'<p class="meta">{f("excluded", "records", fmt="int")} records the agents signed were rejected'
                f" by the collector at ingest and are not counted ({why}); they are listed in "
                f"{f('excluded', 'file')}, and verification re-applies each rejection rule.</p>"
            )
        else:
            out.append(
                '<p class="meta">No record of this period was rejected by the collector at ingest.</p>'
            )
    out.append('<div class="verdicts">')
    for i, s in enumerate(doc["services"]):
        r = s["report"]
        so_far = "" if r["complete"] else ' <span class="small">(period not over: so far)</span>'
        out.append(
            f'<div class="verdict {_status_class(r["status"])}">'
            f'<span class="name">{f("services", i, "service")}</span>'
            f"{f('services', i, 'report', 'status', fmt='status', cls='word')}"
            f'<span class="figure">availability {f("services", i, "report", "availability", fmt="pct")}'
            f" (target {f('services', i, 'report', 'target_availability', fmt='target')}){so_far}</span>"
            "</div>"
        )
    out.append("</div></header>")
    return "\n".join(out)


def _footer(doc: dict[str, Any], f: Fields) -> str:
    return (
        '<footer class="small"><p>Counting rules: README, "SLA definitions and counting rules". '
        "Slices without results are unknown, never up or down; latency percentiles are the upper "
        f"edge of a two-significant-digit bucket (at most 10% above the true value). Document schema "
        f"{f('schema')}.</p></footer>"
    )


def _service(doc: dict[str, Any], f: Fields, i: int, s: dict[str, Any]) -> str:
    r = s["report"]
    P = ("services", i)
    out = [f'<section class="service" id="service-{i}">']
    title = f"Service {f(*P, 'service')}"
    out.append(f"<h2>{title}</h2>")
    if s.get("description"):
        out.append(f'<p class="meta">{f(*P, "description")}</p>')
    out.append(
        f'<p class="meta">{f(*P, "report", "from")} to {f(*P, "report", "to")} ({f(*P, "sla", "time_zone")}); '
        f"window {f(*P, 'sla', 'window')}; service hours {f(*P, 'sla', 'service_hours')}; "
        f"slice {f(*P, 'report', 'slice_s', fmt='dur')}; checks: {f(*P, 'checks', fmt='list')}</p>"
    )
    out.append(_summary_table(f, P, s))
    out.append(_availability_chart(f, P, s))
    out.append(_latency_chart(f, P, s))
    out.append(_incident_section(f, P, s, doc))
    out.append(_budget_chart(f, P, s))
    out.append(_checks_table(f, P, r))
    out.append(_daily_table(f, P, s))
    out.append("</section>")
    return "\n".join(out)


def _met(met: bool | None) -> str:
    if met is None:
        return '<span class="small">no data</span>'
    return '<span class="ok">met</span>' if met else '<span class="bad">missed</span>'


def _summary_table(f: Fields, P: tuple[str | int, ...], s: dict[str, Any]) -> str:
    r = s["report"]
    R = (*P, "report")
    rows = [
        ("Availability target", f(*R, "target_availability", fmt="target")),
        ("Availability", f(*R, "availability", fmt="pct")),
        ("Downtime counted", f(*R, "counted_down_s", fmt="dur")),
        ("Uptime counted", f(*R, "counted_up_s", fmt="dur")),
        ("Maintenance (excused)", f(*R, "seconds", "maintenance", fmt="dur")),
        ("Unknown (no result)", f(*R, "seconds", "unknown", fmt="dur")),
        ("Gap (lost in an agent's spool)", f(*R, "seconds", "gap", fmt="dur")),
        ("Out of service hours", f(*R, "seconds", "out_of_hours", fmt="dur")),
        ("Not yet due", f(*R, "seconds", "pending", fmt="dur")),
    ]
    if r["budget"] is not None:
        rows += [
            ("Error budget allowed", f(*R, "budget", "allowed_s", fmt="dur")),
            ("Error budget used", f(*R, "budget", "used_s", fmt="dur")),
            ("Error budget remaining", f(*R, "budget", "remaining_s", fmt="dur")),
        ]
    rows += [
        ("Results counted", f(*R, "results", fmt="int")),
        ("Latency samples", f(*R, "latency_samples", fmt="int")),
    ]
    for key in r["latency_ms"]:
        rows.append((f"Latency {esc(key)}", f(*R, "latency_ms", key, fmt="ms")))
    rows.append(
        (
            "Clock-flagged results",
            f"{f(*R, 'clock_flagged', fmt='int')} (bound {f(*R, 'clock_bound_ms', fmt='ms')})",
        )
    )
    body = "".join(f"<tr><th>{k}</th><td class='num'>{v}</td></tr>" for k, v in rows)
    objectives = "".join(
        f"<tr><td>{f(*R, 'objectives', j, 'objective')}</td>"
        f"<td class='num'>{f(*R, 'objectives', j, 'value')}</td><td>{_met(o['met'])}</td></tr>"
        for j, o in enumerate(r["objectives"])
    )
    obj_table = (
        "<table class='keep'><tr><th>Objective</th><th class='num'>Measured</th><th>Verdict</th></tr>"
        f"{objectives}</table>"
        if objectives
        else '<p class="small">No objectives in this SLA.</p>'
    )
    breaches = "".join(f"<li>{f(*R, 'breaches', j)}</li>" for j in range(len(r["breaches"])))
    return (
        f'<div class="keep"><h3>Summary</h3><table>{body}</table>{obj_table}'
        + (f"<p><strong>Breaches:</strong></p><ul>{breaches}</ul>" if breaches else "")
        + "</div>"
    )


# ---- charts ----------------------------------------------------------------------------------------

W, H = 680, 240
ML, MR, MT, MB = 58, 16, 14, 40  # margins: room for the y labels and the date ticks
PW, PH = W - ML - MR, H - MT - MB


def _svg(body: Sequence[str], label: str, height: int = H) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" width="{W}" height="{height}"'
        f' role="img" aria-label="{esc(label)}">'
        f'<rect x="0" y="0" width="{W}" height="{height}" fill="#ffffff"/>' + "".join(body) + "</svg>"
    )


def _n(x: float) -> str:
    """A coordinate: two decimals at most, no trailing zeros."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _frame() -> str:
    return f'<rect x="{ML}" y="{MT}" width="{PW}" height="{PH}" fill="#fbfbfc" stroke="#c3c4c7"/>'


def _no_data(body: list[str], text: str = "no data in this period") -> None:
    body.append(
        f'<text x="{_n(ML + PW / 2)}" y="{_n(MT + PH / 2)}" text-anchor="middle" font-size="13">{esc(text)}</text>'
    )


def _day_ticks(body: list[str], daily: list[dict[str, Any]], x_of: Any) -> None:
    """Date labels under the plot: every day when few, else about eight."""
    n = len(daily)
    step = max(1, math.ceil(n / 8))
    for j in range(0, n, step):
        x = x_of(j)
        body.append(
            f'<line x1="{_n(x)}" y1="{MT + PH}" x2="{_n(x)}" y2="{MT + PH + 4}" stroke="#8c8f94"/>'
            f'<text x="{_n(x)}" y="{MT + PH + 16}" text-anchor="middle">{esc(daily[j]["date"][5:])}</text>'
        )


def _y_ticks(body: list[str], lo: float, hi: float, y_of: Any, unit: str) -> None:
    for v in _nice_ticks(lo, hi):
        y = y_of(v)
        body.append(
            f'<line x1="{ML}" y1="{_n(y)}" x2="{ML + PW}" y2="{_n(y)}" stroke="#e6e6e6"/>'
            f'<text x="{ML - 4}" y="{_n(y + 3)}" text-anchor="end">{esc(_tick(v))}{esc(unit)}</text>'
        )


def _tick(v: float) -> str:
    return f"{v:.6g}"


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(round(v, 10))
        v += step
    return out


def _availability_chart(f: Fields, P: tuple[str | int, ...], s: dict[str, Any]) -> str:
    daily = s["daily"]
    target = s["sla"]["availability"]
    values = [d["availability"] for d in daily if d["availability"] is not None]
    body = [_frame()]
    if not values:
        _no_data(body)
    else:
        lowest = min([*values, *([target] if target is not None else [])])
        span = 100.0 - lowest
        lo = max(0.0, lowest - max(span * 0.25, 0.05)) if span > 0 else max(0.0, lowest - 0.1)
        lo = _floor_nice(lo)

        def y_of(v: float) -> float:
            return MT + PH - (v - lo) / (100.0 - lo) * PH

        _y_ticks(body, lo, 100.0, y_of, "%")
        n = len(daily)
        slot = PW / n
        bar = max(1.0, slot * 0.72)
        for j, d in enumerate(daily):
            x = ML + j * slot + (slot - bar) / 2
            a = d["availability"]
            tip = f"{d['date']}: " + ("no data" if a is None else format_value(a, "pct"))
            if a is None:
                body.append(
                    f'<rect x="{_n(x)}" y="{MT + PH - 4}" width="{_n(bar)}" height="4" fill="{GREY}">'
                    f"<title>{esc(tip)}</title></rect>"
                )
                continue
            colour = GREEN if target is None or a >= target else RED
            y = y_of(a)
            body.append(
                f'<rect class="bar" x="{_n(x)}" y="{_n(y)}" width="{_n(bar)}" height="{_n(max(MT + PH - y, 1.0))}"'
                f' fill="{colour}"><title>{esc(tip)}</title></rect>'
            )
        if target is not None:
            y = y_of(target)
            body.append(
                f'<line class="target" x1="{ML}" y1="{_n(y)}" x2="{ML + PW}" y2="{_n(y)}" stroke="{RED}"'
                ' stroke-width="1.5" stroke-dasharray="6 3"/>'
            )
        _day_ticks(body, daily, lambda j: ML + (j + 0.5) * slot)
    legend = (
        f'<span><i class="swatch" style="background:{GREEN}"></i>day at or above target</span>'
        f'<span><i class="swatch" style="background:{RED}"></i>day below target</span>'
        f'<span><i class="swatch" style="background:{GREY}"></i>no data</span>'
    )
    target_text = (
        f"target {f(*P, 'sla', 'availability', fmt='target')} (dashed)" if target is not None else "no target"
    )
    return (
        f"<figure><h3>Daily availability</h3>{_svg(body, 'daily availability against the target')}"
        f'<figcaption class="legend">{legend}<span>{target_text}</span></figcaption></figure>'
    )


def _floor_nice(v: float) -> float:
    """Round a lower bound down to a readable value (99.83 → 99.8; 97.4 → 97)."""
    if v <= 0:
        return 0.0
    gap = 100.0 - v
    mag = 10 ** math.floor(math.log10(gap)) if gap > 0 else 0.01
    return math.floor(v / mag) * mag


def _latency_chart(f: Fields, P: tuple[str | int, ...], s: dict[str, Any]) -> str:
    daily = s["daily"]
    keys = list(daily[0]["latency_ms"]) if daily else ["p50", "p95", "p99"]
    objectives = s["sla"]["latency"]
    thresholds = [o["threshold_ms"] for o in objectives]
    values = [d["latency_ms"][k] for d in daily for k in keys if d["latency_ms"][k] is not None]
    body = [_frame()]
    n = len(daily)
    if not values:
        _no_data(body, "no latency samples in this period")
    else:
        hi = max([*values, *thresholds]) * 1.1
        hi = _nice_ticks(0, hi)[-1] if _nice_ticks(0, hi)[-1] >= hi else hi

        def y_of(v: float) -> float:
            return MT + PH - v / hi * PH

        slot = PW / n

        def x_of(j: int) -> float:
            return ML + (j + 0.5) * slot

        _y_ticks(body, 0.0, hi, y_of, " ms")
        for t, o in zip(thresholds, objectives, strict=True):
            y = y_of(t)
            body.append(
                f'<line class="objective" x1="{ML}" y1="{_n(y)}" x2="{ML + PW}" y2="{_n(y)}" stroke="{RED}"'
                f' stroke-width="1.5" stroke-dasharray="6 3"><title>{esc(o["objective"])}</title></line>'
            )
        for c, k in enumerate(keys):
            colour = LINE_COLOURS[c % len(LINE_COLOURS)]
            run: list[str] = []
            runs: list[list[str]] = []
            for j, d in enumerate(daily):
                v = d["latency_ms"][k]
                if v is None:
                    if run:
                        runs.append(run)
                    run = []
                    continue
                run.append(f"{_n(x_of(j))},{_n(y_of(v))}")
                body.append(
                    f'<circle cx="{_n(x_of(j))}" cy="{_n(y_of(v))}" r="2.5" fill="{colour}">'
                    f"<title>{esc(d['date'])} {esc(k)}: {esc(format_value(v, 'ms'))}</title></circle>"
                )
            if run:
                runs.append(run)
            for pts in runs:
                if len(pts) > 1:
                    body.append(
                        f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-width="1.8"/>'
                    )
        _day_ticks(body, daily, x_of)
    legend = "".join(
        f'<span><i class="swatch" style="background:{LINE_COLOURS[c % len(LINE_COLOURS)]}"></i>{esc(k)}</span>'
        for c, k in enumerate(keys)
    )
    objs = "".join(
        f"<span>objective {f(*P, 'sla', 'latency', j, 'objective')} (dashed)</span>"
        for j in range(len(objectives))
    )
    return (
        f"<figure><h3>Latency percentiles per day</h3>{_svg(body, 'latency percentiles per day against the objective')}"
        f'<figcaption class="legend">{legend}{objs or "<span>no latency objective</span>"}</figcaption></figure>'
    )


def _incident_section(f: Fields, P: tuple[str | int, ...], s: dict[str, Any], doc: dict[str, Any]) -> str:
    incidents = s["incidents"]
    daily = s["daily"]
    height = 110
    top, band = 18, 34
    body: list[str] = []
    t0, t1 = int(doc["period"]["start_ns"]), int(doc["period"]["end_ns"])
    span = max(t1 - t0, 1)

    def x_of(t: int) -> float:
        return ML + (min(max(t, t0), t1) - t0) / span * PW

    body.append(
        f'<rect x="{ML}" y="{top}" width="{PW}" height="{band}" fill="#e7f5ea" stroke="#c3c4c7"><title>period</title></rect>'
    )
    for m in s["maintenance"]["intervals"]:
        a, b = x_of(m["start_ns"]), x_of(m["end_ns"])
        body.append(
            f'<rect class="maintenance" x="{_n(a)}" y="{top + band + 4}" width="{_n(max(b - a, 1.5))}" height="8"'
            f' fill="{BLUE}"><title>maintenance {esc(m["from"])} to {esc(m["to"])}</title></rect>'
        )
    for inc in incidents:
        a, b = x_of(inc["start_ns"]), x_of(inc["end_ns"])
        colour = RED if inc["counted_down_s"] > 0 else AMBER
        body.append(
            f'<rect class="incident" x="{_n(a)}" y="{top}" width="{_n(max(b - a, 1.5))}" height="{band}"'
            f' fill="{colour}"><title>{esc(inc["start"])} to {esc(inc["end"])}: '
            f"{esc(format_value(inc['duration_s'], 'dur'))}</title></rect>"
        )
    for j in range(0, len(daily), max(1, math.ceil(len(daily) / 8))):
        x = x_of(daily[j]["start_ns"])
        body.append(
            f'<line x1="{_n(x)}" y1="{top + band}" x2="{_n(x)}" y2="{top + band + 16}" stroke="#8c8f94"/>'
            f'<text x="{_n(x)}" y="{top + band + 28}" text-anchor="middle">{esc(daily[j]["date"][5:])}</text>'
        )
    if not incidents:
        body.append(
            f'<text x="{_n(ML + PW / 2)}" y="{top + band / 2 + 4}" text-anchor="middle" font-size="12">'
            "no incident in this period</text>"
        )
    legend = (
        f'<span><i class="swatch" style="background:{RED}"></i>incident (downtime counted)</span>'
        f'<span><i class="swatch" style="background:{AMBER}"></i>incident entirely excused</span>'
        f'<span><i class="swatch" style="background:{BLUE}"></i>maintenance window</span>'
    )
    rows = []
    for j, inc in enumerate(incidents):
        inc_p = (*P, "incidents", j)
        first = (
            f"{f(*inc_p, 'first_error')} on {f(*inc_p, 'first_error_check')}<br>"
            f"<span class='small'>{f(*inc_p, 'first_error_at', fmt='time')}</span>"
            if inc["first_error"] is not None
            else f'<span class="small">{f(*inc_p, "evidence")}</span>'
        )
        rows.append(
            f"<tr><td>{f(*inc_p, 'start', fmt='time')}</td><td>{f(*inc_p, 'end', fmt='time')}</td>"
            f"<td class='num'>{f(*inc_p, 'duration_s', fmt='dur')}</td>"
            f"<td class='num'>{f(*inc_p, 'counted_down_s', fmt='dur')}</td>"
            f"<td class='num'>{f(*inc_p, 'excused_s', fmt='dur')}</td>"
            f"<td class='num'>{f(*inc_p, 'out_of_hours_s', fmt='dur')}</td>"
            f"<td>{f(*inc_p, 'checks', fmt='list')}</td><td>{f(*inc_p, 'agents', fmt='list')}</td>"
            f"<td>{first}</td><td>{f(*inc_p, 'phase')}</td></tr>"
        )
    table = (
        "<table class='incidents'><tr><th>Start</th><th>End</th><th class='num'>Duration</th><th class='num'>Counted</th>"
        "<th class='num'>Maintenance</th><th class='num'>Out of hours</th><th>Checks</th><th>Agents</th>"
        "<th>First error</th><th>Slowest phase</th></tr>" + "".join(rows) + "</table>"
        if rows
        else '<p class="small">No incident in this period.</p>'
    )
    return (
        f"<figure><h3>Incidents ({len(incidents)})</h3>"
        f"{_svg(body, 'incident timeline over the period', height)}"
        f'<figcaption class="legend">{legend}</figcaption></figure>{table}'
    )


def _budget_chart(f: Fields, P: tuple[str | int, ...], s: dict[str, Any]) -> str:
    budget = s["budget"]
    daily = s["daily"]
    body = [_frame()]
    if budget is None:
        _no_data(body, "no availability target: no error budget")
        caption = "<span>no availability target</span>"
    elif not budget["burn"]:
        _no_data(body)
        caption = ""
    else:
        burn = budget["burn"]
        allowed = float(budget["allowed_s"])
        hi = max(allowed, *(float(b["cumulative_used_s"]) for b in burn), 1.0) * 1.08
        n = len(burn)
        slot = PW / n

        def y_of(v: float) -> float:
            return MT + PH - v / hi * PH

        def x_of(j: int) -> float:
            return ML + (j + 1) * slot  # the end of day j: cumulative at that moment

        ticks = _nice_ticks(0, hi)
        for v in ticks:
            y = y_of(v)
            body.append(
                f'<line x1="{ML}" y1="{_n(y)}" x2="{ML + PW}" y2="{_n(y)}" stroke="#e6e6e6"/>'
                f'<text x="{ML - 4}" y="{_n(y + 3)}" text-anchor="end">{esc(_duration(v))}</text>'
            )
        pts = [f"{ML},{_n(y_of(0))}"]
        area = [f"{ML},{_n(y_of(0))}"]
        for j, b in enumerate(burn):
            pts.append(f"{_n(x_of(j))},{_n(y_of(b['cumulative_used_s']))}")
            area.append(pts[-1])
        area.append(f"{_n(x_of(n - 1))},{_n(y_of(0))}")
        over = burn[-1]["cumulative_used_s"] > allowed
        colour = RED if over else BLUE
        body.append(f'<polygon class="used" points="{" ".join(area)}" fill="{colour}" fill-opacity="0.15"/>')
        body.append(
            f'<polyline class="used" points="{" ".join(pts)}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        for j, b in enumerate(burn):
            body.append(
                f'<circle cx="{_n(x_of(j))}" cy="{_n(y_of(b["cumulative_used_s"]))}" r="2.2" fill="{colour}">'
                f"<title>{esc(b['date'])}: used {esc(_duration(b['cumulative_used_s']))}</title></circle>"
            )
        y = y_of(allowed)
        body.append(
            f'<line class="allowed" x1="{ML}" y1="{_n(y)}" x2="{ML + PW}" y2="{_n(y)}" stroke="{AMBER}"'
            ' stroke-width="2" stroke-dasharray="6 3"/>'
        )
        _day_ticks(body, daily, lambda j: ML + (j + 0.5) * slot)
        caption = (
            f'<span><i class="swatch" style="background:{colour}"></i>budget used (cumulative): '
            f"{f(*P, 'budget', 'used_s', fmt='dur')}</span>"
            f'<span><i class="swatch" style="background:{AMBER}"></i>allowed for the period: '
            f"{f(*P, 'budget', 'allowed_s', fmt='dur')}</span>"
            f"<span>remaining: {f(*P, 'budget', 'remaining_s', fmt='dur')}</span>"
        )
    return (
        f"<figure><h3>Error budget burn</h3>{_svg(body, 'error budget used against allowed')}"
        f'<figcaption class="legend">{caption}</figcaption></figure>'
    )


def _checks_table(f: Fields, P: tuple[str | int, ...], r: dict[str, Any]) -> str:
    checks = r.get("checks") or []
    if not checks:
        return ""
    rows = []
    for j in range(len(checks)):
        C = (*P, "report", "checks", j)
        rows.append(
            f"<tr><td>{f(*C, 'check')}</td><td class='num'>{f(*C, 'availability', fmt='pct')}</td>"
            f"<td class='num'>{f(*C, 'counted_down_s', fmt='dur')}</td>"
            f"<td class='num'>{f(*C, 'seconds', 'unknown', fmt='dur')}</td>"
            f"<td class='num'>{f(*C, 'latency_ms', 'p95', fmt='ms')}</td>"
            f"<td>{f(*C, 'status', fmt='status')}</td></tr>"
        )
    return (
        '<div><h3>Checks (under the service\'s rules)</h3><table><tr><th>Check</th><th class="num">Availability</th>'
        '<th class="num">Downtime</th><th class="num">Unknown</th><th class="num">p95</th><th>Status</th></tr>'
        + "".join(rows)
        + "</table></div>"
    )


def _daily_table(f: Fields, P: tuple[str | int, ...], s: dict[str, Any]) -> str:
    daily = s["daily"]
    if not daily:
        return ""
    keys = list(daily[0]["latency_ms"])
    burn = s["budget"]["burn"] if s["budget"] is not None else None
    head = (
        "<tr><th>Day</th><th class='num'>Availability</th><th class='num'>Down</th><th class='num'>Unknown</th>"
        "<th class='num'>Gap</th><th class='num'>Maintenance</th>"
        + "".join(f"<th class='num'>{esc(k)}</th>" for k in keys)
        + ("<th class='num'>Budget used</th>" if burn is not None else "")
        + "</tr>"
    )
    rows = []
    for j in range(len(daily)):
        D = (*P, "daily", j)
        cells = [
            f"<td>{f(*D, 'date')}</td>",
            f"<td class='num'>{f(*D, 'availability', fmt='pct')}</td>",
            f"<td class='num'>{f(*D, 'down_s', fmt='dur')}</td>",
            f"<td class='num'>{f(*D, 'seconds', 'unknown', fmt='dur')}</td>",
            f"<td class='num'>{f(*D, 'seconds', 'gap', fmt='dur')}</td>",
            f"<td class='num'>{f(*D, 'seconds', 'maintenance', fmt='dur')}</td>",
            *(f"<td class='num'>{f(*D, 'latency_ms', k, fmt='ms')}</td>" for k in keys),
        ]
        if burn is not None:
            cells.append(f"<td class='num'>{f(*P, 'budget', 'burn', j, 'cumulative_used_s', fmt='dur')}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="daily"><h3>Day by day ({f(*P, "sla", "time_zone")})</h3>'
        f"<table>{head}{''.join(rows)}</table></div>"
    )


__all__ = ["format_value", "render_html", "resolve"]
