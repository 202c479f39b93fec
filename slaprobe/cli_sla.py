"""SLA commands: ``compliance``, ``incidents``, ``budget``, ``sla whatif``, ``maintenance``, ``db prune``.

A thin layer over ``collector.sla``: the SLA definitions come from the catalogue the
collector loaded last (stored in the database) unless ``--catalogue`` names a file; data
comes from the rollups (``--source raw`` rescans raw rows, for checking). Times are shown
in each SLA's own time zone, which the output states. ``--now`` (hidden) fixes the clock
for tests and reproducible reports.
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from slaprobe.cli import main
from slaprobe.configfile import ConfigError, parse_duration
from slaprobe.output import db_option, format_option, render_csv, render_json, render_table

NS_PER_S = 1_000_000_000


# ---- shared options and plumbing ---------------------------------------------------------------


def _catalogue_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--catalogue",
        "catalogue_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Read SLA definitions from this file instead of the catalogue stored in the database.",
    )(fn)


def _now_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--now", "now_text", hidden=True, help="Pretend it is this time (ISO 8601).")(fn)


def _source_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--source",
        type=click.Choice(["rollups", "raw"]),
        default="rollups",
        show_default=True,
        help="Compute from the rollups, or rescan raw rows (slow; for checking).",
    )(fn)


def _select_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--service", help="Only this service ('(site)' is a site's own SLA).")(fn)
    return click.option("--site", help="Only this site.")(fn)


def _period_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--last", help="The trailing window, e.g. 24h or 7d.")(fn)
    fn = click.option(
        "--to", "end", help="End, exclusive (ISO 8601; in the SLA's time zone without an offset)."
    )(fn)
    fn = click.option("--from", "start", help="Start (ISO 8601; in the SLA's time zone without an offset).")(
        fn
    )
    return click.option(
        "--period",
        help="A month (2026-10), quarter (2026-Q4) or ISO week (2026-W41), in each SLA's time zone."
        " Default: each SLA's current window.",
    )(fn)


def _ns(text: str, hint: str) -> int:
    from collector.sla.definitions import parse_local_time
    from collector.sla.timeline import UTC

    try:
        return parse_local_time(text, UTC)
    except ValueError:
        raise click.BadParameter(
            f"expected an ISO time such as 2026-10-01T00:00Z, got {text!r}", param_hint=hint
        ) from None


def _duration_ns(text: str, hint: str) -> int:
    try:
        return round(parse_duration(text) * NS_PER_S)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def _period(period: str | None, start: str | None, end: str | None, last: str | None) -> Any:
    import re

    from collector.sla.report import Period

    if sum(x is not None for x in (period, last)) + (1 if (start or end) else 0) > 1:
        raise click.UsageError("use one of --period, --from/--to, or --last")
    if last is not None:
        return Period("last", last_ns=_duration_ns(last, "--last"))
    if start or end:
        for text, hint in ((start, "--from"), (end, "--to")):
            if text:
                try:
                    datetime.fromisoformat(text.replace("Z", "+00:00"))
                except ValueError:
                    raise click.BadParameter(
                        f"expected an ISO time such as 2026-10-01T00:00, got {text!r}", param_hint=hint
                    ) from None
        return Period("range", start=start, end=end)
    if period is None:
        return Period("window")
    for pattern, kind in (
        (r"(\d{4})-(\d{2})", "month"),
        (r"(\d{4})-Q([1-4])", "quarter"),
        (r"(\d{4})-W(\d{2})", "week"),
    ):
        m = re.fullmatch(pattern, period)
        if m:
            year, number = int(m.group(1)), int(m.group(2))
            if (kind == "month" and not 1 <= number <= 12) or (kind == "week" and not 1 <= number <= 53):
                break
            return Period(kind, year, number)
    raise click.BadParameter(
        f"expected a month (2026-10), quarter (2026-Q4) or week (2026-W41), got {period!r}",
        param_hint="--period",
    )


@contextmanager
def _context(db_path: Path, catalogue_path: Path | None, source: str, now_text: str | None) -> Iterator[Any]:
    from collector.catalogue import load_catalogue, parse_catalogue
    from collector.rollups import RawSource, RollupSource
    from collector.sla.report import Context
    from collector.store import Reader

    if not db_path.exists():
        raise click.ClickException(f"no database at {db_path}: start a collector with --db {db_path} first")
    reader = Reader(db_path)
    try:
        try:
            if catalogue_path is not None:
                catalogue = load_catalogue(catalogue_path)
            else:
                stored = reader.catalogue_text()
                if stored is None:
                    raise click.ClickException(
                        f"{db_path} holds no catalogue yet: start the collector once, or give --catalogue"
                    )
                catalogue = parse_catalogue(stored[1], f"{stored[0]} (as stored in {db_path})")
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        has_rollups = (
            reader.db.execute("SELECT 1 FROM _migrations WHERE name = '0005_rollups'").fetchone() is not None
        )
        if source == "rollups" and not has_rollups:
            click.echo(
                "note: this database has no rollups yet (start the collector once); reading raw rows",
                err=True,
            )
            source = "raw"
        src = RollupSource(reader.db.conn) if source == "rollups" else RawSource(reader.db.conn)
        now = _ns(now_text, "--now") if now_text else time.time_ns()
        yield Context(catalogue, reader, src, now, source)
    finally:
        reader.close()


def _pick(ctx: Any, site: str | None, service: str | None) -> list[tuple[Any, list[Any]]]:
    from collector.sla.report import selected

    chosen = selected(ctx.catalogue, site, service)
    if not chosen:
        what = (
            f"site {site!r}"
            if service is None
            else f"service {service!r}" + (f" in site {site!r}" if site else "")
        )
        names = ", ".join(ctx.catalogue.sites)
        raise click.ClickException(f"no {what} in the catalogue (sites: {names})")
    return chosen


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    negative = seconds < 0
    s = round(abs(seconds))
    if s < 60:
        out = f"{s}s"
    elif s < 3600:
        out = f"{s // 60}m{s % 60:02d}s"
    elif s < 48 * 3600:
        out = f"{s // 3600}h{s % 3600 // 60:02d}m"
    else:
        out = f"{s // 86400}d{s % 86400 // 3600:02d}h"
    return f"-{out}" if negative else out


def _pct(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}%"


# ---- compliance ----------------------------------------------------------------------------------------


@main.command("compliance")
@db_option
@_catalogue_option
@_select_options
@_period_options
@click.option(
    "--checks", "show_checks", is_flag=True, help="Also one row per check (under its service's rules)."
)
@click.option(
    "--fail-on-breach", is_flag=True, help="Exit with status 3 when a site or service breached its SLA."
)
@_source_option
@_now_option
@format_option
def compliance_cmd(
    db_path: Path,
    catalogue_path: Path | None,
    site: str | None,
    service: str | None,
    period: str | None,
    start: str | None,
    end: str | None,
    last: str | None,
    show_checks: bool,
    fail_on_breach: bool,
    source: str,
    now_text: str | None,
    fmt: str,
) -> None:
    """SLA compliance, one row per site and service: availability, downtime, maintenance,
    unknown and gap time, error budget, latency, met or breached.

    Slices without data are unknown (gap: lost to an agent's spool), never up or
    down. Each SLA's period is computed in its own time zone, stated in the output.

    \b
    Examples:
      slaprobe compliance --period 2026-10
      slaprobe compliance --site paris --last 24h --format json
      slaprobe compliance --period 2026-Q3 --fail-on-breach --format csv
    """
    from collector.sla.report import compliance

    p = _period(period, start, end, last)
    with _context(db_path, catalogue_path, source, now_text) as ctx:
        _pick(ctx, site, service)
        with_checks = show_checks or fmt == "json"
        reports = compliance(ctx, p, site, service, with_checks=with_checks)
    rows = [r for s in reports for r in s.services]
    if fmt == "json":
        click.echo(
            render_json(
                {
                    "source": ctx.source_name,
                    "sites": [
                        {
                            "site": s.site,
                            "description": s.description,
                            "services": [r.to_dict() for r in s.services],
                            "checks": [c.to_dict() for c in s.checks],
                        }
                        for s in reports
                    ],
                }
            )
        )
    else:
        headers = [
            "site",
            "service",
            "availability",
            "target",
            "downtime",
            "maintenance",
            "unknown",
            "gap",
            "out of hours",
            "budget left",
            "latency",
            "clock flagged",
            "status",
        ]
        table: list[tuple[tuple[str, str, str], list[Any]]] = []
        for r in rows:
            for row in [r, *(r.checks if show_checks else [])]:
                table.append(((row.period_from, row.period_to, row.time_zone), _compliance_row(row)))
        if fmt == "csv":
            click.echo(
                render_csv(["from", "to", "time zone", *headers], [[*k, *v] for k, v in table]), nl=False
            )
        else:
            groups: dict[tuple[str, str, str], list[list[Any]]] = {}
            for key, values in table:
                groups.setdefault(key, []).append(values)
            for (frm, to, tz), values in groups.items():
                click.echo(f"Compliance from {frm} to {to} ({tz}), from {ctx.source_name}")
                click.echo(render_table(headers, values, "llrrrrrrrrllr"))
                click.echo()
            for r in rows:
                for b in r.breaches:
                    click.echo(f"  {r.site}/{r.service}: {b}")
    if fail_on_breach and any(r.status == "breached" for r in rows):
        raise click.exceptions.Exit(3)


def _compliance_row(r: Any) -> list[Any]:
    lat = next((o for o in r.objectives if not o.objective.startswith("availability")), None)
    latency = (
        "-"
        if lat is None
        else f"{lat.objective}: {lat.value or '-'}" + ("" if lat.met is not False else " (!)")
    )
    if lat is None and r.latency_ms.get("p95") is not None:
        latency = f"p95 {r.latency_ms['p95']:g}ms"
    budget = "-" if r.budget is None else _hms(r.budget["remaining_s"])
    return [
        r.site,
        r.service if r.check is None else f"  check {r.check}",
        _pct(r.availability),
        "-" if r.target_availability is None else f"{r.target_availability:g}%",
        _hms(r.counted_down_s),
        _hms(r.seconds["maintenance"]),
        _hms(r.seconds["unknown"]),
        _hms(r.seconds["gap"]),
        _hms(r.seconds["out_of_hours"]),
        budget,
        latency,
        f"{r.clock_flagged}/{r.results}" if r.clock_flagged else "0",
        r.status if r.complete else f"{r.status} (so far)",
    ]


# ---- incidents ----------------------------------------------------------------------------------------


@main.command("incidents")
@db_option
@_catalogue_option
@_select_options
@_period_options
@click.option("--min-duration", default="0s", show_default=True, help="Hide shorter incidents.")
@_source_option
@_now_option
@format_option
def incidents_cmd(
    db_path: Path,
    catalogue_path: Path | None,
    site: str | None,
    service: str | None,
    period: str | None,
    start: str | None,
    end: str | None,
    last: str | None,
    min_duration: str,
    source: str,
    now_text: str | None,
    fmt: str,
) -> None:
    """Incidents: contiguous down slices merged into events, with what they cost the SLA.

    For each: start and end (in the SLA's time zone), duration, the downtime it
    counted against the SLA, the part excused by maintenance or outside service
    hours, the checks and agents that saw it, the first error kind and the phase
    where the failed probes spent their time.

    \b
    Examples:
      slaprobe incidents --period 2026-10
      slaprobe incidents --site paris --service shop --last 7d --format json
    """
    from collector.sla.incidents import incidents

    p = _period(period, start, end, last)
    shortest = _duration_ns(min_duration, "--min-duration") / NS_PER_S
    found = []
    with _context(db_path, catalogue_path, source, now_text) as ctx:
        for s, services in _pick(ctx, site, service):
            for v in services:
                a, b = p.resolve(v.sla, ctx.now_ns)
                found += [
                    (v.sla.time_zone, i) for i in incidents(ctx, s, v, a, b) if i.duration_s >= shortest
                ]
    if fmt == "json":
        click.echo(render_json({"incidents": [{**i.to_dict(), "time_zone": tz} for tz, i in found]}))
        return
    headers = [
        "site",
        "service",
        "start",
        "end",
        "duration",
        "counted",
        "excused",
        "checks",
        "agents",
        "first error",
        "phase",
    ]
    rows = [
        [
            i.site,
            i.service,
            i.start,
            i.end,
            _hms(i.duration_s),
            _hms(i.counted_down_s),
            _hms(i.excused_s + i.out_of_hours_s),
            ",".join(i.checks) or "-",
            ",".join(i.agents) or "-",
            "-" if i.first_error is None else f"{i.first_error} ({i.first_error_check})",
            i.phase or "-",
        ]
        for _, i in found
    ]
    if fmt == "csv":
        click.echo(render_csv(headers, rows), nl=False)
    elif not rows:
        click.echo("no incidents in the period")
    else:
        zones = sorted({tz for tz, _ in found})
        click.echo(f"Incidents (times in {', '.join(zones)}), from {ctx.source_name}")
        click.echo(render_table(headers, rows, "llllrrrllll"))


# ---- budget -----------------------------------------------------------------------------------------------


@main.command("budget")
@db_option
@_catalogue_option
@_select_options
@_source_option
@_now_option
@format_option
def budget_cmd(
    db_path: Path,
    catalogue_path: Path | None,
    site: str | None,
    service: str | None,
    source: str,
    now_text: str | None,
    fmt: str,
) -> None:
    """Error budget of each SLA's current window, burn rates and a forecast.

    Burn rate = the share of counted time that was down, divided by the share the
    target allows (1 = the budget lasts exactly the window). Alerts follow the SRE
    workbook: both windows of a pair above its factor (1h/5m 14.4, 6h/30m 6,
    1d/2h 3, 3d/6h 1). The forecast extrapolates the last day's burn.

    \b
    Examples:
      slaprobe budget
      slaprobe budget --site paris --format json
    """
    from collector.sla.budget import budget

    with _context(db_path, catalogue_path, source, now_text) as ctx:
        reports = [budget(ctx, s, v) for s, services in _pick(ctx, site, service) for v in services]
    if fmt == "json":
        click.echo(render_json({"budgets": [r.to_dict() for r in reports]}))
        return
    pairs = [b.label for b in reports[0].burns] if reports and reports[0].burns else []
    headers = [
        "site",
        "service",
        "window",
        "target",
        "availability",
        "allowed",
        "used",
        "left",
        *pairs,
        "forecast",
    ]
    rows = []
    for r in reports:
        burns = [
            "-"
            if b.long_rate is None
            else f"{b.long_rate:g}/{'-' if b.short_rate is None else f'{b.short_rate:g}'}"
            + (" ALERT" if b.alert else "")
            for b in r.burns
        ] or ["-"] * len(pairs)
        rows.append(
            [
                r.site,
                r.service,
                f"{r.window_from} → {r.window_to}",
                "-" if r.target is None else f"{r.target:g}%",
                _pct(r.availability),
                _hms(r.allowed_s),
                _hms(r.used_s),
                "-" if r.remaining_s is None else f"{_hms(r.remaining_s)} ({_pct(r.remaining_pct, 1)})",
                *burns,
                r.forecast,
            ]
        )
    if fmt == "csv":
        click.echo(render_csv(headers, rows), nl=False)
    else:
        zones = sorted({r.time_zone for r in reports})
        click.echo(f"Error budgets (burn: long/short window, times in {', '.join(zones)})")
        click.echo(render_table(headers, rows, "lllrrrrr" + "r" * len(pairs) + "l"))


# ---- sla whatif ------------------------------------------------------------------------------------------------


@main.group("sla")
def sla_group() -> None:
    """SLA analysis for negotiations."""


@sla_group.command("whatif")
@db_option
@_catalogue_option
@_select_options
@click.option(
    "--months", default=12, show_default=True, type=click.IntRange(1, 13), help="Complete months back."
)
@click.option(
    "--availability",
    "targets",
    default="99,99.5,99.9,99.95,99.99",
    show_default=True,
    help="Candidate availability targets, in percent, comma-separated.",
)
@click.option(
    "--latency",
    "latency",
    default="",
    help="Candidate latency objectives, e.g. 'p95<=300ms,p99<=1s' (default: the SLA's own).",
)
@_source_option
@_now_option
@format_option
def whatif_cmd(
    db_path: Path,
    catalogue_path: Path | None,
    site: str | None,
    service: str | None,
    months: int,
    targets: str,
    latency: str,
    source: str,
    now_text: str | None,
    fmt: str,
) -> None:
    """Which targets would have been met over the last N months, month by month.

    \b
    Examples:
      slaprobe sla whatif --site paris --months 12
      slaprobe sla whatif --availability 99.9,99.95 --latency 'p95<=250ms,p99<=1s' --format json
    """
    from collector.sla.whatif import whatif

    try:
        availability = [float(t.strip().rstrip("%")) for t in targets.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected percentages such as 99.9,99.95; got {targets!r}", param_hint="--availability"
        ) from None
    objectives = []
    for item in (x.strip() for x in latency.split(",") if x.strip()):
        head, sep, tail = item.partition("<=")
        if not sep or not head.startswith("p"):
            raise click.BadParameter(
                f"expected objectives such as p95<=300ms, got {item!r}", param_hint="--latency"
            )
        try:
            objectives.append((float(head[1:]), _duration_ns(tail, "--latency")))
        except ValueError:
            raise click.BadParameter(
                f"expected objectives such as p95<=300ms, got {item!r}", param_hint="--latency"
            ) from None
    with _context(db_path, catalogue_path, source, now_text) as ctx:
        results = [
            whatif(ctx, s, v, months, availability, objectives)
            for s, services in _pick(ctx, site, service)
            for v in services
        ]
    if fmt == "json":
        click.echo(render_json({"whatif": [w.to_dict() for w in results]}))
        return
    for w in results:
        headers = ["month", "availability", "downtime", "p50", "p95", "p99", *w.candidates]
        rows = [
            [
                m.month,
                _pct(m.availability, 4),
                _hms(m.downtime_s),
                *(
                    ("-" if m.latency_ms.get(k) is None else f"{m.latency_ms[k]:g}ms")
                    for k in ("p50", "p95", "p99")
                ),
                *("-" if m.met[c] is None else ("yes" if m.met[c] else "NO") for c in w.candidates),
            ]
            for m in w.months
        ]
        if fmt == "csv":
            click.echo(
                render_csv(["site", "service", *headers], [[w.site, w.service, *r] for r in rows]), nl=False
            )
            continue
        click.echo(f"{w.site}/{w.service}: last {len(w.months)} months ({w.time_zone})")
        click.echo(render_table(headers, rows, "lrrrrr" + "l" * len(w.candidates)))
        best = "none" if w.best_availability is None else f"{w.best_availability:g}%"
        worst = ", ".join(f"{k} {v:g}ms" for k, v in w.worst_latency_ms.items() if v is not None) or "-"
        click.echo(f"  strictest availability target met every month: {best}")
        click.echo(f"  lowest thresholds met every month (worst month): {worst}")
        click.echo()


# ---- maintenance ----------------------------------------------------------------------------------------------------


@main.group("maintenance")
def maintenance_group() -> None:
    """Ad-hoc maintenance windows (who, when and why recorded); they count like the catalogue's."""


@maintenance_group.command("add")
@db_option
@click.option("--site", required=True, help="The site under maintenance.")
@click.option("--service", help="Only this service (default: every service of the site).")
@click.option("--from", "start", required=True, help="Start: ISO 8601, or 'now'.")
@click.option("--to", "end", help="End (ISO 8601).")
@click.option("--for", "length", help="Or a duration, e.g. 2h.")
@click.option("--reason", required=True, help="Why (shown in reports).")
@click.option("--by", default=None, help="Who (default: $USER).")
@click.option("--time-zone", default="UTC", show_default=True, help="Zone of times given without an offset.")
@_now_option
def maintenance_add(
    db_path: Path,
    site: str,
    service: str | None,
    start: str,
    end: str | None,
    length: str | None,
    reason: str,
    by: str | None,
    time_zone: str,
    now_text: str | None,
) -> None:
    """Declare a maintenance window; its downtime is excused from the SLA.

    The collector may be running: the window counts at the next report.

    \b
    Examples:
      slaprobe maintenance add --site paris --from now --for 2h --reason "DB upgrade, CHG-1234"
      slaprobe maintenance add --site paris --service shop --from 2026-10-04T02:00+02:00 \\
          --to 2026-10-04T04:00+02:00 --reason "network change"
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from collector.sla.definitions import parse_local_time
    from collector.store import add_maintenance, open_store

    if (end is None) == (length is None):
        raise click.UsageError("give --to or --for (one of them)")
    if not reason.strip():
        raise click.BadParameter("must not be empty", param_hint="--reason")
    try:
        tz = ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"unknown time zone {time_zone!r}", param_hint="--time-zone") from None
    now = _ns(now_text, "--now") if now_text else time.time_ns()

    def at(text: str, hint: str) -> int:
        if text == "now":
            return now
        try:
            return parse_local_time(text, tz)
        except ValueError:
            raise click.BadParameter(
                f"expected an ISO time such as 2026-10-04T02:00, got {text!r}", param_hint=hint
            ) from None

    a = at(start, "--from")
    b = at(end, "--to") if end is not None else a + _duration_ns(length or "", "--for")
    if b <= a:
        raise click.BadParameter("the window must end after it starts", param_hint="--to" if end else "--for")
    if not db_path.exists():
        raise click.ClickException(f"no database at {db_path}: start a collector with --db {db_path} first")
    db = open_store(db_path)
    try:
        known = {r[0] for r in db.execute("SELECT name FROM sites").fetchall()}
        if site not in known:
            raise click.ClickException(
                f"no site named {site!r} in {db_path} (sites: {', '.join(sorted(known))})"
            )
        wid = add_maintenance(db, site, service, a, b, reason.strip(), by or _user(), now)
    finally:
        db.conn.close()
    from collector.sla.timeline import format_local

    click.echo(
        f"maintenance #{wid}: {site}{'/' + service if service else ''} {format_local(a, tz)} → {format_local(b, tz)}"
    )


@maintenance_group.command("list")
@db_option
@click.option("--site", help="Only this site.")
@click.option("--all", "include_cancelled", is_flag=True, help="Include cancelled windows.")
@click.option("--time-zone", default="UTC", show_default=True, help="Show times in this zone.")
@format_option
def maintenance_list(
    db_path: Path, site: str | None, include_cancelled: bool, time_zone: str, fmt: str
) -> None:
    """Ad-hoc maintenance windows with who added (or cancelled) them, when and why.

    \b
    Example:
      slaprobe maintenance list --site paris --all
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from collector.sla.timeline import format_local
    from collector.store import Reader

    try:
        tz = ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise click.BadParameter(f"unknown time zone {time_zone!r}", param_hint="--time-zone") from None
    if not db_path.exists():
        raise click.ClickException(f"no database at {db_path}: start a collector with --db {db_path} first")
    reader = Reader(db_path)
    try:
        windows = reader.maintenance_windows(site, None, -(2**62), 2**62, include_cancelled=include_cancelled)
    finally:
        reader.close()

    def t(ns: int | None) -> str | None:
        return None if ns is None else format_local(int(ns), tz)

    rows = [
        {
            "id": w["id"],
            "site": w["site"],
            "service": w["service"],
            "from": t(w["from_ns"]),
            "to": t(w["to_ns"]),
            "reason": w["reason"],
            "added_by": w["created_by"],
            "added_at": t(w["created_ns"]),
            "cancelled_by": w["cancelled_by"],
            "cancelled_at": t(w["cancelled_ns"]),
            "retroactive": w["created_ns"] > w["from_ns"],
        }
        for w in windows
    ]
    if fmt == "json":
        click.echo(render_json({"time_zone": time_zone, "maintenance": rows}))
        return
    headers = ["id", "site", "service", "from", "to", "reason", "added by", "added at", "cancelled"]
    table = [
        [
            r["id"],
            r["site"],
            r["service"] or "(all)",
            r["from"],
            r["to"],
            r["reason"],
            r["added_by"],
            f"{r['added_at']}{' (after it started)' if r['retroactive'] else ''}",
            "-" if r["cancelled_at"] is None else f"{r['cancelled_at']} by {r['cancelled_by']}",
        ]
        for r in rows
    ]
    if fmt == "csv":
        click.echo(render_csv(headers, table), nl=False)
    elif not table:
        click.echo("no maintenance windows")
    else:
        click.echo(f"Maintenance windows (times in {time_zone})")
        click.echo(render_table(headers, table))


@maintenance_group.command("cancel")
@db_option
@click.argument("window_id", type=int)
@click.option("--by", default=None, help="Who cancels (default: $USER).")
@_now_option
def maintenance_cancel(db_path: Path, window_id: int, by: str | None, now_text: str | None) -> None:
    """Cancel a window: it no longer counts; the record stays, with who cancelled it and when.

    \b
    Example:
      slaprobe maintenance cancel 12
    """
    from collector.store import cancel_maintenance, open_store

    if not db_path.exists():
        raise click.ClickException(f"no database at {db_path}: start a collector with --db {db_path} first")
    now = _ns(now_text, "--now") if now_text else time.time_ns()
    db = open_store(db_path)
    try:
        done = cancel_maintenance(db, window_id, by or _user(), now)
    finally:
        db.conn.close()
    if not done:
        raise click.ClickException(
            f"no open maintenance window #{window_id} (see: slaprobe maintenance list --all)"
        )
    click.echo(f"maintenance #{window_id} cancelled")


def _user() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# ---- retention --------------------------------------------------------------------------------------------------------


@main.group("db")
def db_group() -> None:
    """Database housekeeping."""


@db_group.command("prune")
@db_option
@_catalogue_option
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, delete nothing.")
@_now_option
def db_prune(db_path: Path, catalogue_path: Path | None, dry_run: bool, now_text: str | None) -> None:
    """Delete raw results (and the signed records carrying them) past ``reporting.retention.raw``,
    and rollups past ``.rollups``.

    Run it daily (cron, systemd timer); it can run beside the collector. Reports
    past the raw retention use rollups alone.

    \b
    Example:
      slaprobe db prune --db /var/lib/slaprobe/slaprobe.db
    """
    from collector import rollups
    from collector.catalogue import load_catalogue, parse_catalogue
    from collector.evidence.retention import prune_record_log
    from collector.sla.definitions import Reporting
    from collector.store import immediate, open_store

    if not db_path.exists():
        raise click.ClickException(f"no database at {db_path}: start a collector with --db {db_path} first")
    now = _ns(now_text, "--now") if now_text else time.time_ns()
    db = open_store(db_path)
    try:
        reporting = Reporting()
        try:
            if catalogue_path is not None:
                reporting = load_catalogue(catalogue_path).reporting
            else:
                row = db.execute(
                    "SELECT source, text FROM catalogue_versions ORDER BY id DESC LIMIT 1"
                ).fetchone()
                if row is not None:
                    reporting = parse_catalogue(row[1], row[0]).reporting
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        day = 86_400 * NS_PER_S
        raw_before = now - reporting.raw_retention_days * day
        rollups_before = now - reporting.rollup_retention_days * day
        if dry_run:
            (n,) = db.execute("SELECT count(*) FROM results WHERE scheduled_ns < ?", [raw_before]).fetchone()
            click.echo(f"would delete {n} raw results (older than {reporting.raw_retention_days}d)")
            return
        with immediate(db):
            deleted = rollups.prune(db.conn, raw_before, rollups_before)
            signed = prune_record_log(db.conn)
    finally:
        db.conn.close()
    click.echo(
        f"deleted {deleted['results']} raw results (older than {reporting.raw_retention_days}d),"
        f" {signed} signed records that carried them, and"
        f" {sum(v for k, v in deleted.items() if k != 'results')} rollup rows"
        f" (older than {reporting.rollup_retention_days}d)"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
