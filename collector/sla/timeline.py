"""Calendar arithmetic in the SLA's time zone: windows, service hours, maintenance → UTC instants.

Every function returns half-open ``[start_ns, end_ns)`` intervals of nanoseconds since
the epoch, sorted and merged. Local times go through :mod:`zoneinfo`, so a month in
Europe/Paris that contains the end of summer time is 745 hours long, and "08:00" on
any day is 08:00 on the wall clock of that day.

A local time that does not exist (the hour skipped when summer time starts) is taken
with the offset in force before the change (Python's ``fold=0``), which lands just after
the skipped hour; an ambiguous one (the hour repeated in autumn) is its first occurrence.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from collector.sla.definitions import MaintenanceWindow, ServiceHours, Window, to_ns

Interval = tuple[int, int]
NS_PER_S = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_S
UTC = ZoneInfo("UTC")


def local(ns: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ns // NS_PER_S, tz).replace(microsecond=(ns % NS_PER_S) // 1000)


def at(d: date, minute: int, tz: ZoneInfo) -> int:
    """The instant of ``minute`` minutes after local midnight of ``d`` (1440 = next midnight)."""
    if minute >= 1440:
        d, minute = d + timedelta(days=minute // 1440), minute % 1440
    return to_ns(datetime(d.year, d.month, d.day, minute // 60, minute % 60, tzinfo=tz))


def month_start(year: int, month: int, tz: ZoneInfo) -> int:
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return at(date(year, month, 1), 0, tz)


def month_bounds(year: int, month: int, tz: ZoneInfo) -> Interval:
    return month_start(year, month, tz), month_start(year, month + 1, tz)


def window_at(window: Window, tz: ZoneInfo, at_ns: int) -> Interval:
    """The SLA window containing ``at_ns`` (for rolling windows: the N days up to ``at_ns``)."""
    if window.kind == "rolling":
        return at_ns - window.days * NS_PER_DAY, at_ns
    t = local(at_ns, tz)
    if window.kind == "month":
        return month_bounds(t.year, t.month, tz)
    if window.kind == "quarter":
        first = (t.month - 1) // 3 * 3 + 1
        return month_start(t.year, first, tz), month_start(t.year, first + 3, tz)
    if window.kind == "week":
        monday = t.date() - timedelta(days=t.weekday())
        return at(monday, 0, tz), at(monday + timedelta(days=7), 0, tz)
    raise ValueError(f"unknown window kind {window.kind!r}")


def _days(start_ns: int, end_ns: int, tz: ZoneInfo) -> Iterable[date]:
    d = local(start_ns, tz).date() - timedelta(days=1)
    last = local(end_ns, tz).date() + timedelta(days=1)
    while d <= last:
        yield d
        d += timedelta(days=1)


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def clip(intervals: Iterable[Interval], start_ns: int, end_ns: int) -> list[Interval]:
    return merge((max(a, start_ns), min(b, end_ns)) for a, b in intervals)


def intersect(xs: list[Interval], ys: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    i = j = 0
    while i < len(xs) and j < len(ys):
        a, b = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if a < b:
            out.append((a, b))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(xs: list[Interval], ys: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for a, b in xs:
        cur = a
        for c, d in ys:
            if d <= cur or c >= b:
                continue
            if c > cur:
                out.append((cur, c))
            cur = max(cur, d)
        if cur < b:
            out.append((cur, b))
    return out


def total(intervals: Iterable[Interval]) -> int:
    return sum(b - a for a, b in intervals)


def service_hours(hours: ServiceHours, tz: ZoneInfo, start_ns: int, end_ns: int) -> list[Interval]:
    """The in-hours parts of ``[start_ns, end_ns)``."""
    if hours.always:
        return [(start_ns, end_ns)] if end_ns > start_ns else []
    out = []
    for d in _days(start_ns, end_ns, tz):
        if d.weekday() not in hours.days or d in hours.holidays:
            continue
        for a, b in hours.ranges:
            out.append((at(d, a, tz), at(d, b, tz)))
    return clip(out, start_ns, end_ns)


def maintenance(
    windows: Iterable[MaintenanceWindow],
    tz: ZoneInfo,
    start_ns: int,
    end_ns: int,
    extra: Iterable[Interval] = (),
) -> list[Interval]:
    """Scheduled windows (one-off and weekly) plus ``extra`` (ad-hoc ones), clipped and merged."""
    out = list(extra)
    for w in windows:
        if not w.recurring:
            assert w.start_ns is not None and w.end_ns is not None
            out.append((w.start_ns, w.end_ns))
            continue
        for d in _days(start_ns, end_ns, tz):
            if d.weekday() not in w.days:
                continue
            end_min = w.end_min if w.end_min > w.start_min else w.end_min + 1440
            out.append((at(d, w.start_min, tz), at(d, end_min, tz)))
    return clip(out, start_ns, end_ns)


def format_local(ns: int, tz: ZoneInfo) -> str:
    """ISO 8601 with the offset in force, seconds precision: 2026-10-25T02:30:00+02:00."""
    return local(ns, tz).replace(microsecond=0).isoformat()
