"""The SLA commands end to end on a real database, at fixed instants (``--now``), with exact outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from slaprobe.cli import main
from tests.sla_world import DAY, HOUR, MINUTE, World, utc

T0 = utc(2026, 10, 5, 8, 0)

CAT = """
reporting:
  clock_bound: 100ms
sites:
  lab:
    description: the lab
    sla:
      availability: 99%
    services:
      web:
        checks: [web]
        sla:
          availability: 99.9%
          latency: {percentile: 95, threshold: 300ms}
          time_zone: Europe/Paris
    checks:
      web: {type: tcp, target: "192.0.2.1:80", interval: 1m, timeout: 5s}
"""


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def js(result: Result) -> Any:
    assert result.exit_code in (0, 3), result.output
    return json.loads(result.stdout)


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "s.db", CAT, T0, persisted_at=T0 - DAY)
    w.results("web", [i for i in range(60) if not 10 <= i < 30 and i not in (45, 46)], ms=40)
    w.results(
        "web", range(10, 30), ok=False, kind="refused", phases=[("resolve", 1_000), ("connect", 900_000)]
    )
    w.results(
        "web", [45, 46], ok=False, kind="timeout", phases=[("connect", 1_000_000), ("processing", 5_000_000)]
    )
    w.flush()
    return w


def db(w: World) -> list[str]:
    return ["--db", str(w.path), "--now", "2026-10-06T00:00Z"]


def test_compliance_json_one_entry_per_site_and_service(world: World) -> None:
    out = js(
        run(
            "compliance",
            *db(world),
            "--from",
            "2026-10-05T08:00Z",
            "--to",
            "2026-10-05T09:00Z",
            "--format",
            "json",
        )
    )
    assert out["source"] == "rollups"
    (site,) = out["sites"]
    assert [s["service"] for s in site["services"]] == ["(site)", "web"]
    whole, web = site["services"]
    assert whole["target_availability"] == 99.0 and whole["time_zone"] == "UTC"
    assert (web["up"], web["down"], web["unknown"], web["availability"]) == (
        38,
        22,
        0,
        round(100 * 38 / 60, 4),
    )
    assert web["downtime_s"] == 22 * 60.0 and web["status"] == "breached"
    assert (web["time_zone"], web["from"], web["to"]) == (
        "Europe/Paris",
        "2026-10-05T10:00:00+02:00",
        "2026-10-05T11:00:00+02:00",
    )
    assert web["budget"] == {"allowed_s": 3.6, "used_s": 1320.0, "remaining_s": -1316.4}
    # The first-cut fields per check, for scripts that read them.
    (check,) = site["checks"]
    assert {k: check[k] for k in ("check", "up", "down", "unknown", "downtime_s", "availability")} == {
        "check": "web",
        "up": 38,
        "down": 22,
        "unknown": 0,
        "downtime_s": 1320.0,
        "availability": round(100 * 38 / 60, 4),
    }
    # The raw path says the same.
    raw = js(
        run(
            "compliance", *db(world), "--from", "2026-10-05T08:00Z", "--to", "2026-10-05T09:00Z",
            "--format", "json", "--source", "raw",
        )
    )  # fmt: skip
    assert raw["sites"] == out["sites"]


def test_compliance_table_states_the_time_zone_and_breaches_exit_3(world: World) -> None:
    r = run(
        "compliance", *db(world), "--service", "web", "--from", "2026-10-05T10:00", "--to", "2026-10-05T11:00"
    )
    assert r.exit_code == 0
    lines = r.stdout.splitlines()
    assert (
        lines[0]
        == "Compliance from 2026-10-05T10:00:00+02:00 to 2026-10-05T11:00:00+02:00 (Europe/Paris), from rollups"
    )
    assert lines[1].split() == [
        "site", "service", "availability", "target", "downtime", "maintenance", "unknown", "gap", "out",
        "of", "hours", "budget", "left", "latency", "clock", "flagged", "status",
    ]  # fmt: skip
    assert lines[3].split()[:6] == ["lab", "web", "63.333%", "99.9%", "22m00s", "0s"]
    assert "  lab/web: availability 63.3333% < 99.9%" in lines
    r = run("compliance", *db(world), "--period", "2026-10", "--fail-on-breach", "--format", "csv")
    assert r.exit_code == 3
    header, first, second = r.stdout.splitlines()
    assert header.startswith("from,to,time zone,site,service,availability")
    assert first.startswith("2026-10-01T00:00:00+00:00,2026-11-01T00:00:00+00:00,UTC,lab,(site),")
    assert second.startswith("2026-10-01T00:00:00+02:00,2026-11-01T00:00:00+01:00,Europe/Paris,lab,web,")


def test_usage_errors(world: World) -> None:
    assert run("compliance", *db(world), "--period", "2026-13").exit_code == 2
    assert run("compliance", *db(world), "--period", "2026-10", "--last", "1h").exit_code == 2
    r = run("compliance", *db(world), "--site", "nowhere")
    assert r.exit_code == 1 and "no site 'nowhere' in the catalogue (sites: lab)" in r.output
    r = run("compliance", "--db", str(world.path.parent / "none.db"))
    assert r.exit_code == 1 and "no database at" in r.output


def test_incidents_with_maintenance_overlapping_one(world: World) -> None:
    world.maintenance(world.at("web", 20), world.at("web", 40), service="web")
    out = js(run("incidents", *db(world), "--service", "web", "--period", "2026-10", "--format", "json"))
    first, second = out["incidents"]
    assert {k: first[k] for k in ("start", "end", "duration_s", "counted_down_s", "excused_s")} == {
        "start": _local(world.at("web", 10)),
        "end": _local(world.at("web", 30)),
        "duration_s": 1200.0,
        "counted_down_s": 600.0,  # slots 10..19; 20..29 fell in the maintenance window
        "excused_s": 600.0,
    }
    assert (first["agents"], first["first_error"], first["first_error_check"], first["phase"]) == (
        ["a1"],
        "refused",
        "web",
        "connect",
    )
    assert (second["duration_s"], second["counted_down_s"], second["first_error"], second["phase"]) == (
        120.0,
        120.0,
        "timeout",
        "processing",
    )
    assert first["time_zone"] == "Europe/Paris"
    table = run("incidents", *db(world), "--service", "web", "--period", "2026-10").stdout
    assert table.splitlines()[0] == "Incidents (times in Europe/Paris), from rollups"


def _local(ns: int) -> str:
    from zoneinfo import ZoneInfo

    from collector.sla.timeline import format_local

    return format_local(ns, ZoneInfo("Europe/Paris"))


def test_budget_burn_rates_over_the_sre_windows(tmp_path: Path) -> None:
    start = utc(2026, 10, 2)
    w = World(tmp_path / "s.db", CAT, start, persisted_at=start - DAY)
    n = 3 * 24 * 60 + 10
    w.results("web", range(n - 3))
    w.results("web", range(n - 3, n), ok=False)  # the last three minutes down
    w.flush()
    now = w.at("web", n - 1) + 8 * 10**9  # the last slot is due (timeout 5 s + 2 s)
    from datetime import UTC, datetime

    iso = datetime.fromtimestamp(now / 1e9, UTC).isoformat()
    out = js(run("budget", "--db", str(w.path), "--now", iso, "--service", "web", "--format", "json"))
    (b,) = out["budgets"]
    # Error budget rate 0.1%: burn = share of bad time / 0.001.
    burns = {x["window"]: (x["long_rate"], x["short_rate"], x["alert"]) for x in b["burns"]}
    assert burns == {
        "1h/5m": (50.0, 600.0, True),  # 3/60 and 3/5
        "6h/30m": (8.333, 100.0, True),  # 3/360 and 3/30
        "1d/2h": (2.083, 25.0, False),  # 3/1440 < 3
        "3d/6h": (0.694, 8.333, False),  # 3/4320 < 1
    }
    assert b["basis_rate"] == 2.083 and b["used_s"] == 180.0
    assert b["window"] == "month" and b["window_from"] == "2026-10-01T00:00:00+02:00"
    assert (
        b["forecast"].startswith("budget exhausted")
        or "runs out" in b["forecast"]
        or "lasts" in b["forecast"]
    )


WHATIF = """
sites:
  lab:
    sla:
      availability: 99.9%
      latency: {percentile: 95, threshold: 300ms}
    checks:
      web: {type: tcp, target: "192.0.2.1:80", interval: 1h, timeout: 5s}
"""


def test_whatif_month_by_month(tmp_path: Path) -> None:
    jul = utc(2026, 7, 1)
    w = World(tmp_path / "s.db", WHATIF, jul, persisted_at=jul - DAY)
    hours = (31 + 31 + 30) * 24
    down = {5, 6, 31 * 24 + 31 * 24 + 100}  # two hours in July, one in September
    w.results("web", [i for i in range(hours) if i not in down], ms=200)
    w.results("web", sorted(down), ok=False)
    w.results("web", range(31 * 24, 31 * 24 + 60), ms=400)  # August: a slow spell (second runs)
    w.flush()
    out = js(
        run(
            "sla", "whatif", "--db", str(w.path), "--now", "2026-10-05T12:00Z", "--months", "3",
            "--availability", "99,99.5,99.9", "--latency", "p95<=300ms,p99<=500ms", "--format", "json",
        )
    )  # fmt: skip
    (wi,) = out["whatif"]
    months = {m["month"]: m for m in wi["months"]}
    assert list(months) == ["2026-07", "2026-08", "2026-09"]
    assert [months[m]["availability"] for m in months] == [
        round(100 * 742 / 744, 4),
        100.0,
        round(100 * 719 / 720, 4),
    ]
    assert months["2026-07"]["met"] == {
        "availability >= 99%": True,
        "availability >= 99.5%": True,
        "availability >= 99.9%": False,
        "p95 <= 300ms": True,
        "p99 <= 500ms": True,
    }
    # August: 744 + 60 samples, 60 of them at 400 ms (7.5%): p95 is 400 ms.
    assert (
        months["2026-08"]["latency_ms"]["p95"] == 400.0 and months["2026-08"]["met"]["p95 <= 300ms"] is False
    )
    assert wi["best_availability"] == 99.5
    assert wi["worst_latency_ms"]["p95"] == 400.0
    table = run("sla", "whatif", "--db", str(w.path), "--now", "2026-10-05T12:00Z", "--months", "3").stdout
    assert "strictest availability target met every month: 99.5%" in table


def test_maintenance_add_list_cancel_records_who_when_why(world: World) -> None:
    r = run(
        "maintenance", "add", "--db", str(world.path), "--now", "2026-10-05T09:00Z", "--site", "lab",
        "--service", "web", "--from", "now", "--for", "2h", "--reason", "DB upgrade, CHG-1", "--by", "alice",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.stdout == "maintenance #1: lab/web 2026-10-05T09:00:00+00:00 → 2026-10-05T11:00:00+00:00\n"
    r = run(
        "maintenance", "add", "--db", str(world.path), "--now", "2026-10-05T09:00Z", "--site", "lab",
        "--from", "2026-10-05T08:00", "--to", "2026-10-05T08:30", "--reason", "after the fact",
        "--time-zone", "UTC", "--by", "bob",
    )  # fmt: skip
    assert r.exit_code == 0
    listed = js(run("maintenance", "list", "--db", str(world.path), "--format", "json"))["maintenance"]
    assert [(m["id"], m["service"], m["added_by"], m["reason"], m["retroactive"]) for m in listed] == [
        (2, None, "bob", "after the fact", True),
        (1, "web", "alice", "DB upgrade, CHG-1", False),
    ]
    r = run(
        "maintenance", "cancel", "--db", str(world.path), "--now", "2026-10-05T09:05Z", "1", "--by", "carol"
    )
    assert r.exit_code == 0 and r.stdout == "maintenance #1 cancelled\n"
    assert run("maintenance", "cancel", "--db", str(world.path), "1").exit_code == 1
    listed = js(run("maintenance", "list", "--db", str(world.path), "--all", "--format", "json"))[
        "maintenance"
    ]
    assert [(m["id"], m["cancelled_by"], m["cancelled_at"]) for m in listed] == [
        (2, None, None),
        (1, "carol", "2026-10-05T09:05:00+00:00"),
    ]
    # Validation: a reason is required, the window must end after it starts, the site must exist.
    base = ["maintenance", "add", "--db", str(world.path), "--site", "lab", "--from", "now"]
    assert run(*base, "--for", "1h").exit_code == 2
    assert run(*base, "--for", "0s", "--reason", "x").exit_code == 2
    r = run(
        "maintenance",
        "add",
        "--db",
        str(world.path),
        "--site",
        "nowhere",
        "--from",
        "now",
        "--for",
        "1h",
        "--reason",
        "x",
    )
    assert r.exit_code == 1 and "no site named 'nowhere'" in r.output


def test_prune_keeps_reports_from_rollups(world: World) -> None:
    before = js(run("compliance", *db(world), "--period", "2026-10", "--format", "json"))
    r = run("db", "prune", "--db", str(world.path), "--now", "2027-02-01T00:00Z")
    assert r.exit_code == 0, r.output
    assert r.stdout == (
        "deleted 60 raw results (older than 90d), 0 signed records that carried them,"
        " and 0 rollup rows (older than 400d)\n"
    )
    after = js(run("compliance", *db(world), "--period", "2026-10", "--format", "json"))
    for b, a in zip(before["sites"][0]["services"], after["sites"][0]["services"], strict=True):
        assert (a["counts"], a["availability"], a["latency_ms"]) == (
            b["counts"],
            b["availability"],
            b["latency_ms"],
        )


def test_every_sla_command_has_help_with_examples() -> None:
    for args in (
        ["compliance"],
        ["incidents"],
        ["budget"],
        ["sla", "whatif"],
        ["maintenance", "add"],
        ["maintenance", "list"],
        ["maintenance", "cancel"],
        ["db", "prune"],
    ):
        r = run(*args, "--help")
        assert r.exit_code == 0 and "Example" in r.stdout, args


def test_minutes_per_hour_constants() -> None:
    assert HOUR == 60 * MINUTE
