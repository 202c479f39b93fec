"""SLA definitions: what a site or service promises and the rules that count it.

These are values read from the catalogue (``collector/catalogue.py`` calls
:func:`parse_sla` and :func:`parse_reporting`) and validated there with
``file:line: field: message`` errors. Nothing here touches the database.

Catalogue format, under a site's ``sla:`` (the whole site as one service
named ``(site)``) or a service's ``sla:``::

    availability: 99.9%
    latency:                        # one objective or a list
      - {percentile: 95, threshold: 300ms}   # p95 of successful probes <= 300 ms
      - {fraction: 99%, threshold: 500ms}    # 99% of successful probes <= 500 ms
    degraded_after: 800ms           # successes slower than this are "degraded" (sets the checks')
    time_zone: Europe/Paris         # IANA name; windows, hours and output use it (default UTC)
    window: month                   # month | week | quarter | rolling 30d
    service_hours:                  # default: 24x7
      days: mon-fri                 # or a list: [mon, tue, ...]
      hours: "08:00-18:00"          # or a list of ranges
      holidays: [2026-12-25]
    maintenance:
      - {from: "2026-10-04 02:00", to: "2026-10-04 04:00", reason: DB upgrade}
      - {every: "sun 03:00-04:00", reason: weekly patching}
    counting:
      slice: 1m                     # default: the longest interval of the service's checks
      quorum: 1                     # agents that must see a failure for a slice to be down
      unknown: excluded             # excluded | up | down
      degraded: up                  # up | down
      partial_weight: 0             # 0..1, with quorum > 1: share of a partial slice counted down
      maintenance: downtime         # downtime: a window excuses what would count down | all: removes its time
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from collector.sla.histogram import CLOCK_LADDER_NS, format_ns, is_latency_edge
from slaprobe.configfile import Fields, Node, format_duration

__all__ = [
    "DAY_NAMES",
    "SITE_SERVICE",
    "Counting",
    "LatencyFraction",
    "LatencyPercentile",
    "MaintenanceWindow",
    "Reporting",
    "ServiceHours",
    "SlaDefinition",
    "Window",
    "parse_reporting",
    "parse_sla",
]

SITE_SERVICE = "(site)"
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
MIN_ROLLUP_RETENTION_DAYS = 400
MAX_ROLLING_DAYS = 366


@dataclass(frozen=True)
class LatencyPercentile:
    """``percentile`` of successful probe durations must be at most ``threshold_ms``."""

    percentile: float
    threshold_ms: float

    def describe(self) -> str:
        return f"p{self.percentile:g} <= {format_ns(round(self.threshold_ms * NS_PER_MS))}"


@dataclass(frozen=True)
class LatencyFraction:
    """At least ``fraction`` percent of successful probes must take at most ``threshold_ms``."""

    fraction: float
    threshold_ms: float

    def describe(self) -> str:
        return f"{self.fraction:g}% <= {format_ns(round(self.threshold_ms * NS_PER_MS))}"


LatencyObjective = LatencyPercentile | LatencyFraction


@dataclass(frozen=True)
class Window:
    """The SLA's natural period: a calendar ``month``/``week``/``quarter`` or ``rolling`` N days."""

    kind: str = "month"
    days: int = 0

    def describe(self) -> str:
        return f"rolling {self.days}d" if self.kind == "rolling" else self.kind


@dataclass(frozen=True)
class ServiceHours:
    """When the SLA applies: weekdays (0 = Monday), minute ranges of the local day, holidays."""

    days: frozenset[int] = frozenset(range(7))
    ranges: tuple[tuple[int, int], ...] = ((0, 1440),)
    holidays: frozenset[date] = frozenset()

    @property
    def always(self) -> bool:
        return self.days == frozenset(range(7)) and self.ranges == ((0, 1440),) and not self.holidays

    def describe(self) -> str:
        if self.always:
            return "24x7"
        days = ",".join(DAY_NAMES[d] for d in sorted(self.days))
        hours = ",".join(f"{_hhmm(a)}-{_hhmm(b)}" for a, b in self.ranges)
        extra = f", {len(self.holidays)} holidays" if self.holidays else ""
        return f"{days} {hours}{extra}"


@dataclass(frozen=True)
class MaintenanceWindow:
    """A scheduled window: one-off (``start_ns``..``end_ns``) or weekly (``days`` + minute range)."""

    reason: str
    start_ns: int | None = None
    end_ns: int | None = None
    days: frozenset[int] = frozenset()
    start_min: int = 0
    end_min: int = 0  # <= start_min: ends the next day

    @property
    def recurring(self) -> bool:
        return self.start_ns is None


@dataclass(frozen=True)
class Counting:
    """The counting rules, explicit. ``slice_ms`` None means the longest check interval."""

    slice_ms: int | None = None
    quorum: int = 1
    unknown: str = "excluded"  # excluded | up | down
    degraded: str = "up"  # up | down
    partial_weight: float = 0.0
    maintenance: str = "downtime"  # downtime | all


@dataclass(frozen=True)
class SlaDefinition:
    availability: float | None = None
    latency: tuple[LatencyObjective, ...] = ()
    degraded_after_ms: int | None = None
    time_zone: str = "UTC"
    window: Window = field(default_factory=Window)
    service_hours: ServiceHours = field(default_factory=ServiceHours)
    maintenance: tuple[MaintenanceWindow, ...] = ()
    counting: Counting = field(default_factory=Counting)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


@dataclass(frozen=True)
class Reporting:
    """Collector-wide reporting settings (the catalogue's top-level ``reporting:``)."""

    clock_bound_ns: int = 100 * NS_PER_MS
    raw_retention_days: int = 90
    rollup_retention_days: int = MIN_ROLLUP_RETENTION_DAYS


# ---- parsing -----------------------------------------------------------------------


def parse_reporting(f: Fields | None) -> Reporting:
    if f is None:
        return Reporting()
    bound_s = f.duration("clock_bound", 0.1, min=0.0)
    bound_ns = round(bound_s * NS_PER_S)
    if bound_ns not in CLOCK_LADDER_NS:
        _node(f, "clock_bound").fail(
            "must be one of "
            + ", ".join(format_ns(v) for v in CLOCK_LADDER_NS)
            + " (the steps rollups count)"
        )
    raw_days, rollup_days = 90, MIN_ROLLUP_RETENTION_DAYS
    r = f.mapping("retention")
    if r is not None:
        raw_days = _whole_days(r, "raw", 90.0, minimum=1)
        rollup_days = _whole_days(r, "rollups", float(MIN_ROLLUP_RETENTION_DAYS), minimum=None)
        if rollup_days < MIN_ROLLUP_RETENTION_DAYS:
            _node(r, "rollups").fail(
                f"must be at least {MIN_ROLLUP_RETENTION_DAYS}d: a year of monthly history needs"
                " 13 months of rollups"
            )
        r.finish()
    f.finish()
    return Reporting(bound_ns, raw_days, rollup_days)


def _whole_days(f: Fields, key: str, default_days: float, minimum: int | None) -> int:
    seconds = f.duration(key, default_days * 86400.0, min=0.0)
    if seconds % 86400:
        _node(f, key).fail("must be a whole number of days, e.g. 90d")
    days = int(seconds // 86400)
    if minimum is not None and days < minimum:
        _node(f, key).fail(f"must be at least {minimum}d")
    return days


def parse_sla(f: Fields | None) -> SlaDefinition:
    """Read an ``sla:`` mapping. Cross-checks that need the checks happen in the catalogue."""
    if f is None:
        return SlaDefinition()
    availability = f.percent("availability", None)
    latency = _parse_latency(f)
    degraded_after_ms = None
    if f.raw("degraded_after") is not None:
        degraded = f.duration("degraded_after", min=0.0)
        if degraded <= 0:
            _node(f, "degraded_after").fail("must be longer than 0ms")
        degraded_after_ms = round(degraded * 1000)
    tz_name = f.str("time_zone", "UTC")
    tz = _zone(_node(f, "time_zone"), tz_name) if f.raw("time_zone") is not None else ZoneInfo("UTC")
    window = _parse_window(f)
    hours = _parse_service_hours(f.mapping("service_hours"))
    maintenance = _parse_maintenance(f, tz)
    counting = _parse_counting(f.mapping("counting"))
    f.finish()
    return SlaDefinition(
        availability=availability,
        latency=latency,
        degraded_after_ms=degraded_after_ms,
        time_zone=tz_name,
        window=window,
        service_hours=hours,
        maintenance=maintenance,
        counting=counting,
    )


def _node(f: Fields, key: str) -> Node:
    node = f.raw(key)
    assert node is not None
    return node


def _parse_latency(f: Fields) -> tuple[LatencyObjective, ...]:
    node = f.raw("latency")
    if node is None or node.value is None:
        return ()
    items = node.value if node.is_list else [node]
    if node.is_list and not items:
        node.fail("list at least one latency objective, or leave 'latency' out")
    return tuple(_parse_latency_objective(Fields(item, "a latency objective (a mapping)")) for item in items)


def _parse_latency_objective(lat: Fields) -> LatencyObjective:
    has_percentile = lat.raw("percentile") is not None
    has_fraction = lat.raw("fraction") is not None
    if has_percentile and has_fraction:
        _node(lat, "fraction").fail("give either percentile or fraction, not both")
    if has_fraction:
        fraction = lat.percent("fraction")
        if fraction >= 100:
            _node(lat, "fraction").fail("must be below 100%: no sample set is ever all fast")
    else:
        percentile = lat.number("percentile", min=0.0, max=100.0)
        if percentile <= 0 or percentile >= 100:
            _node(lat, "percentile").fail("must be above 0 and below 100, for example 95 or 99.9")
    threshold = lat.duration("threshold", min=0.0)
    if threshold <= 0:
        _node(lat, "threshold").fail("must be longer than 0ms")
    threshold_ns = round(threshold * NS_PER_S)
    if not is_latency_edge(threshold_ns):
        _node(lat, "threshold").fail(
            "use at most two significant digits and at least 10us (e.g. 250ms, 1.2s or 1.3s):"
            " latency is counted in buckets whose edges are such values"
        )
    lat.finish()
    threshold_ms = threshold_ns / NS_PER_MS
    if has_fraction:
        return LatencyFraction(fraction, threshold_ms)
    return LatencyPercentile(percentile, threshold_ms)


_ROLLING = re.compile(r"rolling\s+(\S+)")


def _parse_window(f: Fields) -> Window:
    node = f.raw("window")
    if node is None or node.value is None:
        return Window()
    text = node.value
    if not isinstance(text, str):
        node.fail(f"expected month, week, quarter or 'rolling <N>d', got {text!r}")
    text = text.strip()
    if text in ("month", "week", "quarter"):
        return Window(text)
    m = _ROLLING.fullmatch(text)
    if m is None:
        node.fail(f"expected month, week, quarter or 'rolling <N>d' (e.g. rolling 30d); got {text!r}")
    from slaprobe.configfile import parse_duration

    try:
        seconds = parse_duration(m.group(1))
    except ValueError as exc:
        node.fail(str(exc))
    if seconds <= 0 or seconds % 86400:
        node.fail("a rolling window is a whole number of days, e.g. rolling 30d")
    days = int(seconds // 86400)
    if days > MAX_ROLLING_DAYS:
        node.fail(f"a rolling window is at most {MAX_ROLLING_DAYS}d")
    return Window("rolling", days)


def _zone(node: Node, name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    node.fail(f"unknown time zone {name!r} (use an IANA name such as Europe/Paris or UTC)")


def _parse_days(node: Node) -> frozenset[int]:
    items: list[Node] = node.value if node.is_list else [node]
    out: set[int] = set()
    for item in items:
        if not isinstance(item.value, str):
            item.fail(f"expected day names such as mon-fri or [mon, tue], got {item.value!r}")
        for part in item.value.replace(",", " ").split():
            lo, _, hi = part.partition("-")
            a = _day(item, lo)
            b = _day(item, hi) if hi else a
            if b < a:
                item.fail(f"day range {part!r} runs backwards; write it as two ranges")
            out.update(range(a, b + 1))
    if not out:
        node.fail("name at least one day")
    return frozenset(out)


def _day(node: Node, name: str) -> int:
    key = name.strip().lower()[:3]
    if name.strip().lower() not in DAY_NAMES and name.strip().lower() not in _LONG_DAYS:
        node.fail(f"unknown day {name!r}; use mon, tue, wed, thu, fri, sat or sun")
    return DAY_NAMES.index(key)


_LONG_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME = re.compile(r"(\d{1,2}):(\d{2})")


def _minute_of_day(node: Node, text: str, *, allow_24: bool) -> int:
    m = _TIME.fullmatch(text.strip())
    if m is None:
        node.fail(f"expected a time of day such as 08:00, got {text.strip()!r}")
    h, mi = int(m.group(1)), int(m.group(2))
    if mi > 59 or h > 24 or (h == 24 and (mi or not allow_24)):
        node.fail(f"{text.strip()!r} is not a time of day (00:00 to {'24:00' if allow_24 else '23:59'})")
    return h * 60 + mi


def _range(node: Node, text: str, *, wrap: bool) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not sep:
        node.fail(f"expected a range of times such as 08:00-18:00, got {text!r}")
    a = _minute_of_day(node, lo, allow_24=False)
    b = _minute_of_day(node, hi, allow_24=True)
    if b <= a and not wrap:
        node.fail(
            f"the end ({_hhmm(b)}) must be after the start ({_hhmm(a)}); "
            "a range past midnight is two ranges on two days"
        )
    if b == a:
        node.fail(f"the range {text.strip()!r} is empty")
    return a, b


def _parse_service_hours(f: Fields | None) -> ServiceHours:
    if f is None:
        return ServiceHours()
    days_node = f.raw("days")
    days = frozenset(range(7)) if days_node is None or days_node.value is None else _parse_days(days_node)
    ranges: list[tuple[int, int]] = [(0, 1440)]
    hours_node = f.raw("hours")
    if hours_node is not None and hours_node.value is not None:
        items = hours_node.value if hours_node.is_list else [hours_node]
        if not items:
            hours_node.fail("list at least one range such as 08:00-18:00")
        ranges = []
        for item in items:
            if not isinstance(item.value, str):
                item.fail(f"expected a range of times such as 08:00-18:00 (quoted), got {item.value!r}")
            ranges.append(_range(item, item.value, wrap=False))
        ranges.sort()
        for (a1, b1), (a2, b2) in itertools.pairwise(ranges):
            if a2 < b1:
                hours_node.fail(f"ranges overlap ({_hhmm(a1)}-{_hhmm(b1)} and {_hhmm(a2)}-{_hhmm(b2)})")
    holidays: set[date] = set()
    for item in f.list("holidays", []):
        try:
            holidays.add(date.fromisoformat(str(item.value)))
        except ValueError:
            item.fail(f"expected a date such as 2026-12-25, got {item.value!r}")
    f.finish()
    return ServiceHours(days, tuple(ranges), frozenset(holidays))


def _parse_maintenance(f: Fields, tz: ZoneInfo) -> tuple[MaintenanceWindow, ...]:
    out = []
    for item in f.list("maintenance", []):
        m = Fields(item, "a maintenance window (a mapping with from/to or every, and reason)")
        reason = m.str("reason")
        every = m.raw("every")
        if every is not None:
            if m.raw("from") is not None or m.raw("to") is not None:
                _node(m, "every").fail("give either 'every' or 'from'/'to', not both")
            text = every.value
            if not isinstance(text, str) or " " not in text.strip():
                every.fail(f"expected days and a time range such as 'sun 03:00-04:00', got {text!r}")
            day_text, _, range_text = text.strip().rpartition(" ")
            days = (
                frozenset(range(7))
                if day_text.strip() in ("day", "daily")
                else _parse_days(Node(day_text, every.source, every.line, every.path))
            )
            a, b = _range(every, range_text, wrap=True)
            out.append(MaintenanceWindow(reason, days=days, start_min=a, end_min=b % 1440))
        else:
            start = _local_time(m, "from", tz)
            end = _local_time(m, "to", tz)
            if end <= start:
                _node(m, "to").fail(f"must be after 'from' ({_node(m, 'from').value})")
            out.append(MaintenanceWindow(reason, start_ns=start, end_ns=end))
        m.finish()
    return tuple(out)


def _local_time(f: Fields, key: str, tz: ZoneInfo) -> int:
    text = f.str(key)
    node = _node(f, key)
    return parse_local_time(text, tz, node)


def parse_local_time(text: str, tz: ZoneInfo, node: Node | None = None) -> int:
    """``2026-10-04 02:00`` (in ``tz``) or an ISO time with an offset → ns since the epoch."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        message = f"expected a date and time such as 2026-10-04 02:00, got {text!r}"
        if node is None:
            raise ValueError(message) from None
        node.fail(message)
    if t.tzinfo is None:
        t = t.replace(tzinfo=tz)
    return to_ns(t)


def to_ns(t: datetime) -> int:
    """Exact ns since the epoch (``timestamp()`` goes through a float)."""
    delta = t - datetime(1970, 1, 1, tzinfo=ZoneInfo("UTC"))
    return (delta // timedelta(microseconds=1)) * 1000


def _parse_counting(f: Fields | None) -> Counting:
    if f is None:
        return Counting()
    slice_ms = None
    if f.raw("slice") is not None:
        s = f.duration("slice", min=1.0, max=86400.0)
        if s % 1:
            _node(f, "slice").fail("must be a whole number of seconds")
        slice_ms = round(s * 1000)
    quorum = f.int("quorum", 1, min=1, max=100)
    unknown = f.choice("unknown", ("excluded", "up", "down"), "excluded")
    degraded = f.choice("degraded", ("up", "down"), "up")
    weight = f.number("partial_weight", 0.0, min=0.0, max=1.0)
    if weight and quorum == 1:
        _node(f, "partial_weight").fail(
            "needs a quorum above 1: with quorum 1 any failure already makes the slice down"
        )
    maintenance = f.choice("maintenance", ("downtime", "all"), "downtime")
    f.finish()
    return Counting(slice_ms, quorum, unknown, degraded, weight, maintenance)


def check_slice(sla: SlaDefinition, intervals_ms: list[int], where: Node) -> None:
    """The slice must hold at least one scheduled probe of every check of the service."""
    s = sla.counting.slice_ms
    if s is not None and intervals_ms and s < max(intervals_ms):
        where.fail(
            f"slice ({format_duration(s / 1000)}) must be at least the longest check interval of the"
            f" service ({format_duration(max(intervals_ms) / 1000)}): a slice with no scheduled probe"
            " would always be unknown"
        )


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
