"""The evidence report document and its HTML rendering, on a real store and the real engine.

The document is checked against ``slaprobe compliance`` and ``slaprobe incidents`` run
independently (the CLI, on the same database), against figures computed by hand, for
determinism, and on edge cases. The HTML is opened in headless Chromium: a screenshot that
is not blank, SVG charts with drawn shapes, and every number shown equal to the JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from collector.evidence.html import field_path, format_value, render_html, resolve
from collector.evidence.report_doc import SCHEMA, build_report
from slaprobe.cli import main
from tests.sla_world import DAY, HOUR, MINUTE, World, utc

T0 = utc(2026, 10, 5)
END = T0 + 3 * DAY
NOW = END + DAY

CAT = """
reporting:
  clock_bound: 100ms
sites:
  lab:
    description: the lab <b>bold</b> & "quoted"
    sla:
      availability: 99%
    services:
      web:
        description: <script>alert(1)</script>
        checks: [web, api]
        sla:
          availability: 99.9%
          latency:
            - {percentile: 95, threshold: 300ms}
            - {fraction: 99%, threshold: 500ms}
          time_zone: Europe/Paris
    checks:
      web: {type: tcp, target: "192.0.2.1:80", interval: 1m, timeout: 5s}
      api: {type: tcp, target: "192.0.2.2:80", interval: 1m, timeout: 5s}
"""

OUTAGE = range(1440 + 600, 1440 + 630)  # web down 2026-10-06 10:00-10:30 UTC (12:00 Paris)
API_SILENT = range(2 * 1440 + 60, 2 * 1440 + 120)  # api: no results for an hour on day 3


def fill(w: World, slots: range, skip: dict[str, range] | None = None) -> None:
    for check in ("web", "api"):
        gone = (skip or {}).get(check, range(0))
        w.results(check, [i for i in slots if i not in gone], ms=40)


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "s.db", CAT, T0, persisted_at=T0 - DAY)
    fill(w, range(3 * 1440), {"web": OUTAGE, "api": API_SILENT})
    w.results("web", OUTAGE, ok=False, kind="refused", phases=[("connect", 900_000)])
    w.flush()
    return w


def cli_json(w: World, command: str, *args: str) -> Any:
    result = CliRunner().invoke(
        main,
        [command, "--db", str(w.path), "--now", "2026-10-09T00:00Z", "--source", "raw", "--format", "json",
         "--from", "2026-10-05T00:00Z", "--to", "2026-10-08T00:00Z", *args],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code in (0, 3), result.output
    return json.loads(result.stdout)


def roundtrip(x: Any) -> Any:
    return json.loads(json.dumps(x))


# ---- the document ------------------------------------------------------------------------------


def test_the_document_carries_the_compliance_rows_and_incidents_of_the_cli(world: World) -> None:
    doc = build_report(world.context(NOW), "lab", T0, END)
    assert doc["schema"] == SCHEMA and doc["site"] == "lab" and doc["service"] is None
    assert doc["generated_at"] == "2026-10-09T00:00:00+00:00" and doc["now_ns"] == NOW
    assert [s["service"] for s in doc["services"]] == ["(site)", "web"]
    # Exactly the rows of `slaprobe compliance --format json`, per-check rows included.
    (site,) = cli_json(world, "compliance")["sites"]
    assert [s["report"] for s in roundtrip(doc)["services"]] == site["services"]
    # And the incidents of `slaprobe incidents`.
    listed = cli_json(world, "incidents")["incidents"]
    for s in doc["services"]:
        mine = [{**i, "time_zone": s["sla"]["time_zone"]} for i in s["incidents"]]
        assert roundtrip(mine) == [i for i in listed if i["service"] == s["service"]]
    assert doc["verdicts"] == [
        {"service": "(site)", "status": "met", "complete": True},  # 99.31% against 99%
        {"service": "web", "status": "breached", "complete": True},
    ]


def test_daily_series_add_up_to_the_report_and_match_hand_figures(world: World) -> None:
    doc = build_report(world.context(NOW), "lab", T0, END)
    whole, web = doc["services"]
    # (site) is in UTC: three whole days. web is in Europe/Paris (UTC+2): the period
    # 2026-10-05T02:00+02:00 .. 2026-10-08T02:00+02:00 meets four local days.
    assert [d["date"] for d in whole["daily"]] == ["2026-10-05", "2026-10-06", "2026-10-07"]
    assert [d["date"] for d in web["daily"]] == ["2026-10-05", "2026-10-06", "2026-10-07", "2026-10-08"]
    assert [d["slices"] for d in web["daily"]] == [1320, 1440, 1440, 120]
    assert (web["daily"][0]["from"], web["daily"][-1]["to"]) == (
        "2026-10-05T02:00:00+02:00",
        "2026-10-08T02:00:00+02:00",
    )
    for s in doc["services"]:
        r = s["report"]
        assert sum(d["slices"] for d in s["daily"]) == r["slices"]
        assert sum(d["down_s"] for d in s["daily"]) == r["counted_down_s"]
        assert sum(d["up_s"] for d in s["daily"]) == r["counted_up_s"]
        for account, seconds in r["seconds"].items():
            assert sum(d["seconds"][account] for d in s["daily"]) == seconds
        assert sum(d["results"] for d in s["daily"]) == r["results"]
        assert sum(d["latency_samples"] for d in s["daily"]) == r["latency_samples"]
    # The outage: 30 one-minute slices down on 2026-10-06 (both time zones).
    day = web["daily"][1]
    assert (day["date"], day["down_s"], day["availability"]) == (
        "2026-10-06",
        1800.0,
        round(100 * 1410 / 1440, 4),
    )
    assert whole["daily"][1]["availability"] == round(100 * 1410 / 1440, 4)
    assert [d["availability"] for d in web["daily"] if d["date"] != "2026-10-06"] == [100.0, 100.0, 100.0]
    # Every success took 40 ms, an edge of the buckets: every percentile says 40 ms.
    assert web["daily"][0]["latency_ms"] == {"p50": 40.0, "p95": 40.0, "p99": 40.0}
    assert web["daily"][0]["within"] == {"99% <= 500ms": 100.0}
    # api was silent for an hour on day 3: unknown for the check, not for the service (web was up).
    assert web["report"]["seconds"]["unknown"] == 0.0
    api = next(c for c in web["report"]["checks"] if c["check"] == "api")
    assert api["seconds"]["unknown"] == 3600.0
    # Budget: 0.1% of 3 days counted = 259.2 s allowed, 1,800 s used, all of it on 2026-10-06.
    b = web["budget"]
    assert (b["allowed_s"], b["used_s"], b["remaining_s"], b["target"]) == (259.2, 1800.0, -1540.8, 99.9)
    assert [x["cumulative_used_s"] for x in b["burn"]] == [0.0, 1800.0, 1800.0, 1800.0]
    assert b["burn"][1]["used_pct"] == round(100 * 1800 / 259.2, 2)
    (inc,) = web["incidents"]
    assert (inc["start"], inc["end"], inc["duration_s"], inc["first_error"], inc["checks"]) == (
        "2026-10-06T12:00:00+02:00",
        "2026-10-06T12:30:00+02:00",
        1800.0,
        "refused",
        ["web"],
    )
    assert web["sla"]["latency"] == [
        {
            "objective": "p95 <= 300ms",
            "kind": "percentile",
            "percentile": 95.0,
            "fraction": None,
            "threshold_ms": 300.0,
        },
        {
            "objective": "99% <= 500ms",
            "kind": "fraction",
            "percentile": None,
            "fraction": 99.0,
            "threshold_ms": 500.0,
        },
    ]


def test_the_document_is_deterministic_json_and_the_same_from_rollups(world: World) -> None:
    first = build_report(world.context(NOW), "lab", T0, END)
    second = build_report(world.context(NOW), "lab", T0, END)
    assert first == second
    text = json.dumps(first, sort_keys=True, allow_nan=False)
    assert text == json.dumps(second, sort_keys=True, allow_nan=False)
    assert json.loads(text) == first  # only JSON types: no tuple, set or NaN hides in it
    # Invariant 9 holds for the whole document: the rollup path says the same.
    assert build_report(world.context(NOW, source="rollups"), "lab", T0, END) == first


def test_one_service_and_unknown_names(world: World) -> None:
    doc = build_report(world.context(NOW), "lab", T0, END, service="web")
    assert doc["service"] == "web" and [s["service"] for s in doc["services"]] == ["web"]
    with pytest.raises(LookupError, match="no service 'nope' in site 'lab'"):
        build_report(world.context(NOW), "lab", T0, END, service="nope")
    with pytest.raises(LookupError, match="no site 'elsewhere'"):
        build_report(world.context(NOW), "elsewhere", T0, END)
    with pytest.raises(ValueError, match="empty period"):
        build_report(world.context(NOW), "lab", END, T0)


def test_no_data_and_a_period_not_over(tmp_path: Path) -> None:
    w = World(tmp_path / "s.db", CAT, T0, persisted_at=T0 - DAY)
    doc = build_report(w.context(NOW), "lab", T0, END)
    for s in doc["services"]:
        assert s["report"]["status"] == "no data" and s["incidents"] == []
        assert {d["availability"] for d in s["daily"]} == {None}
        assert {v for d in s["daily"] for v in d["latency_ms"].values()} == {None}
        assert s["budget"]["allowed_s"] == 0.0 and {b["used_pct"] for b in s["budget"]["burn"]} == {None}
    # Halfway through: the rest of the period is pending, the report is not complete.
    w.results("web", range(720), ms=40)
    doc = build_report(w.context(T0 + 12 * HOUR), "lab", T0, T0 + DAY)
    whole = doc["services"][0]
    assert whole["report"]["complete"] is False and whole["daily"][0]["seconds"]["pending"] > 0
    render_html(doc)  # renders without data, or with half of it


def test_a_long_outage_over_a_single_day_and_whole_days_down(tmp_path: Path) -> None:
    w = World(tmp_path / "s.db", CAT, T0, persisted_at=T0 - DAY)
    fill(w, range(2 * 1440), {"web": range(300, 2 * 1440 - 60)})
    w.results("web", range(300, 2 * 1440 - 60), ok=False, kind="timeout")
    # One day only, and the outage covers most of it.
    one = build_report(w.context(NOW), "lab", T0, T0 + DAY, service="(site)")
    (s,) = one["services"]
    assert len(s["daily"]) == 1 and s["daily"][0]["availability"] == round(100 * 300 / 1440, 4)
    (inc,) = s["incidents"]
    assert inc["duration_s"] == (1440 - 300) * 60.0
    page = render_html(one)
    assert page.count("<svg") == 4 and 'class="bar"' in page and 'class="incident"' in page
    # Two days: the incident spans midnight; the second day is down but for its last hour.
    two = build_report(w.context(NOW), "lab", T0, T0 + 2 * DAY, service="(site)")
    (s,) = two["services"]
    assert [d["availability"] for d in s["daily"]] == [round(100 * 300 / 1440, 4), round(100 * 60 / 1440, 4)]
    (inc,) = s["incidents"]
    assert (inc["start_ns"], inc["end_ns"]) == (T0 + 300 * MINUTE, T0 + 2 * DAY - HOUR)
    burn = s["budget"]["burn"]
    assert (
        burn[-1]["cumulative_used_s"] == s["report"]["budget"]["used_s"] > s["report"]["budget"]["allowed_s"]
    )


# ---- the HTML ---------------------------------------------------------------------------------------


class Page(HTMLParser):
    """The parts of a page the tests look at: data-field texts, SVG shapes, the text outside SVG."""

    SHAPES = frozenset({"rect", "path", "polyline", "polygon", "circle", "line"})

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str, str]] = []  # path, format, text
        self.svgs: list[list[tuple[str, dict[str, str]]]] = []
        self.scripts = 0
        self.external: list[str] = []
        self._open: list[tuple[str, str, list[str]]] = []
        self._in_svg = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        for k in ("src", "href"):
            if a.get(k, "").split(":", 1)[0] in ("http", "https", "file", "//"):
                self.external.append(a[k])
        if tag == "svg":
            self._in_svg = True
            self.svgs.append([])
        elif self._in_svg and tag in self.SHAPES:
            self.svgs[-1].append((tag, a))
        if "data-field" in a:
            self._open.append((tag, a["data-field"], [a.get("data-format", "text")]))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "svg":
            self._in_svg = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._in_svg = False
        if self._open and self._open[-1][0] == tag:
            _, path, parts = self._open.pop()
            self.fields.append((path, parts[0], "".join(parts[1:])))

    def handle_data(self, data: str) -> None:
        for _, _, parts in self._open:
            parts.append(data)


def parse(page: str) -> Page:
    p = Page()
    p.feed(page)
    p.close()
    return p


def check_fields(doc: dict[str, Any], p: Page) -> None:
    assert len(p.fields) > 50
    for path, fmt, text in p.fields:
        assert text == format_value(resolve(doc, path), fmt), path


def draws(tag: str, a: dict[str, str]) -> bool:
    """Whether a shape's coordinates draw something (a size, a length or points)."""
    if tag == "rect":
        return float(a.get("width", 0)) > 0 and float(a.get("height", 0)) > 0
    if tag in ("polyline", "polygon"):
        return len(a.get("points", "").split()) >= 2
    if tag == "circle":
        return float(a.get("r", 0)) > 0
    if tag == "line":
        return (a.get("x1"), a.get("y1")) != (a.get("x2"), a.get("y2"))
    return bool(a.get("d"))


def drawn(shapes: list[tuple[str, dict[str, str]]]) -> list[tuple[str, dict[str, str]]]:
    return [(tag, a) for tag, a in shapes if draws(tag, a)]


def test_every_number_in_the_html_is_the_documents_and_text_is_escaped(world: World) -> None:
    doc = build_report(world.context(NOW), "lab", T0, END)
    page = render_html(doc)
    p = parse(page)
    check_fields(doc, p)
    shown = {path for path, _, _ in p.fields}
    for i, s in enumerate(doc["services"]):
        for key in ("availability", "counted_down_s", "target_availability", "status"):
            assert field_path("services", i, "report", key) in shown
        for key in ("allowed_s", "used_s", "remaining_s"):
            assert field_path("services", i, "report", "budget", key) in shown
        for j in range(len(s["incidents"])):
            assert field_path("services", i, "incidents", j, "duration_s") in shown
        for j in range(len(s["daily"])):
            assert field_path("services", i, "daily", j, "availability") in shown
    # User text is escaped, never markup; nothing loads from outside; no script at all.
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>bold</b>" not in page
    assert p.scripts == 0 and p.external == []
    assert "@media print" in page and "@page" in page
    assert len(p.svgs) == 4 * len(doc["services"]) and all(drawn(svg) for svg in p.svgs)


def test_field_paths_escape_dots_in_keys() -> None:
    doc = {"a": [{"p99.9": 1.5, "x~y": "t"}]}
    assert field_path("a", 0, "p99.9") == "a.0.p99~19"
    assert resolve(doc, field_path("a", 0, "p99.9")) == 1.5
    assert resolve(doc, field_path("a", 0, "x~y")) == "t"
    assert format_value(None, "pct") == "–" and format_value(99.95, "pct") == "99.9500%"
    assert format_value(3725.0, "dur") == "1h 02m 05s" and format_value(-1540.8, "dur") == "-25m 41s"
    assert format_value(2 * 86400 + 7200, "dur") == "2d 02h 00m" and format_value(0.25, "dur") == "0.25s"


# ---- in a real browser ----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1200,3000",
)  # fmt: skip


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "HOME": str(tmp)},
    )


def png_rows(path: Path) -> Iterator[list[tuple[int, ...]]]:
    """Pixels of an 8-bit RGB or RGBA PNG, row by row (enough of PNG for a screenshot)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunk, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if chunk == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif chunk == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, row = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(channels, stride):
                row[i] = (row[i] + row[i - channels]) & 0xFF
        elif kind == 2:
            row = bytearray((a + b) & 0xFF for a, b in zip(row, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = row[i - channels] if i >= channels else 0
                row[i] = (row[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = row[i - channels] if i >= channels else 0
                b, c = prev[i], prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        prev = row
        yield [tuple(row[x : x + 3]) for x in range(0, stride, channels)]


def rgb(hex_colour: str) -> tuple[int, ...]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make system-deps installs it)")
def test_headless_chromium_renders_the_charts_and_shows_the_documents_numbers(
    world: World, tmp_path: Path
) -> None:
    from collector.evidence.html import GREEN, RED

    doc = build_report(world.context(NOW), "lab", T0, END)
    report = tmp_path / "report.html"
    report.write_text(render_html(doc), encoding="utf-8")
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", report.as_uri())
    assert shot.stat().st_size > 10_000
    colours: set[tuple[int, ...]] = set()
    rows = 0
    for row in png_rows(shot):
        rows += 1
        colours.update(row[::3])
    assert rows == 3000 and len(row) == 1200
    # Not blank: text, tables and charts in many colours, among them the bars' red and green.
    assert len(colours) > 20 and rgb(RED) in colours and rgb(GREEN) in colours
    # The DOM as the browser built it: charts drawn, every number the document's.
    dom = chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    p = parse(dom)
    assert len(p.svgs) == 8
    for svg in p.svgs:
        assert drawn(svg), svg
    bars = [a for svg in p.svgs for tag, a in svg if tag == "rect" and a.get("class") == "bar"]
    assert len(bars) == 3 + 4  # a bar per day: three UTC days, four Paris days
    check_fields(doc, p)
    assert {path for path, _, _ in p.fields} == {path for path, _, _ in parse(render_html(doc)).fields}


CAT_HOURS = """
sites:
  lab:
    sla: {availability: 99.5%, time_zone: Asia/Kolkata,
          service_hours: {days: mon-fri, hours: ["08:30-12:00", "13:00-17:45"]},
          maintenance: [{every: "day 10:15-10:45", reason: daily restart}]}
    checks:
      web: {type: tcp, target: "192.0.2.1:80", interval: 1m, timeout: 5s}
      api: {type: tcp, target: "192.0.2.2:80", interval: 30s, timeout: 5s}
"""


def test_ragged_hours_maintenance_and_a_changed_interval_match_compliance(tmp_path: Path) -> None:
    """Service hours and windows that cut UTC hours (+05:30), slices of several intervals,
    a check version change mid-period: the memo in front of the source changes no figure."""
    from collector.sla.report import Period, compliance

    w = World(tmp_path / "s.db", CAT_HOURS, T0, persisted_at=T0 - DAY)
    w.results("web", [i for i in range(3 * 1440) if i % 97], ms=120)
    w.results("web", [i for i in range(3 * 1440) if not i % 97], ok=False, kind="timeout")
    w.results("api", range(2 * 2880), ms=7.5)
    w.flush()
    w.persist(CAT_HOURS.replace("interval: 30s", "interval: 2m"), T0 + 2 * DAY)
    for i in range(720):
        w.result("api", at_ns=w.at("api", i, T0 + 2 * DAY), ms=9)
    w.maintenance(T0 + DAY + 5 * HOUR + 7 * MINUTE, T0 + DAY + 6 * HOUR)
    ctx = w.context(NOW)
    doc = build_report(ctx, "lab", T0, END)
    period = Period("range", start="2026-10-05T00:00:00+00:00", end="2026-10-08T00:00:00+00:00")
    (site,) = compliance(w.context(NOW), period, "lab", with_checks=True)
    assert [s["report"] for s in doc["services"]] == [r.to_dict() for r in site.services]
    (s,) = doc["services"]
    assert s["sla"]["service_hours"] == "mon,tue,wed,thu,fri 08:30-12:00,13:00-17:45"
    assert sum(d["down_s"] for d in s["daily"]) == s["report"]["counted_down_s"]
    assert sum(d["latency_samples"] for d in s["daily"]) == s["report"]["latency_samples"] > 0
    assert s["daily"][0]["from"] == "2026-10-05T05:30:00+05:30"
    (adhoc,) = s["maintenance"]["adhoc"]
    assert (adhoc["from"], adhoc["reason"]) == ("2026-10-06T10:37:00+05:30", "test")
    # Three daily restarts; on 2026-10-06 the ad-hoc window runs on from the restart's.
    assert [(m["from"][11:16], m["to"][11:16]) for m in s["maintenance"]["intervals"]] == [
        ("10:15", "10:45"),
        ("10:15", "11:30"),
        ("10:15", "10:45"),
    ]
    check_fields(doc, parse(render_html(doc)))
