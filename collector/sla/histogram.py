"""Fixed histograms: latency buckets with two-significant-digit edges, and the clock-offset ladder.

Latency is never kept as a sorted list of samples past the raw rows: rollups
store counts per bucket, and *both* scoring paths (raw rows and rollups) put
every duration in the same bucket before computing anything, so they agree
exactly.

Bucket edges are every value with two significant digits from 10 µs up:
10, 11, … 99 µs, 100, 110, … 990 µs, 1.0, 1.1, … 9.9 ms, 10, 11, … 99 ms, …
(90 edges per decade). Bucket *i* holds durations in ``(edge[i-1], edge[i]]``;
the first holds everything up to 10 µs. Consequences, stated in the README:

* a percentile is reported as the upper edge of the bucket holding the
  nearest-rank sample: never below the true value, at most 10% above it
  (1% near the top of a decade);
* an objective threshold written with at most two significant digits
  (250ms, 1.5s, 45ms) is an edge, so "p95 <= 250ms" and "99% <= 500ms" are
  decided exactly, as if on the raw durations.

Clock offsets are counted on a 1-2-5 ladder (1 ms … 10 s): ``reporting.clock_bound``
must be one of its steps, so "results whose |offset| exceeds the bound" is an
exact count from rollups too.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from itertools import chain

NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000

LATENCY_EDGES_NS: tuple[int, ...] = tuple(m * 10**e for e in range(3, 14) for m in range(10, 100))
"""Upper bucket edges in ns: 10 µs (10·10³ ns) up to 99·10¹⁴ ns (beyond any timeout)."""

CLOCK_LADDER_NS: tuple[int, ...] = tuple(
    m * 10**e * NS_PER_MS for e in range(5) for m in (1, 2, 5) if m * 10**e <= 10_000
)
"""Clock-offset steps: 1, 2, 5, 10, 20, 50, 100, 200, 500 ms, 1, 2, 5, 10 s."""

Hist = dict[int, int]  # bucket index → count


def latency_bucket(duration_ns: int) -> int:
    """Index of the bucket holding ``duration_ns`` (durations above the last edge go in the last)."""
    i = bisect_left(LATENCY_EDGES_NS, duration_ns)
    return min(i, len(LATENCY_EDGES_NS) - 1)


def latency_edge(index: int) -> int:
    return LATENCY_EDGES_NS[index]


def is_latency_edge(ns: int) -> bool:
    i = bisect_left(LATENCY_EDGES_NS, ns)
    return i < len(LATENCY_EDGES_NS) and LATENCY_EDGES_NS[i] == ns


def clock_bucket(offset_ns: int) -> int:
    """0 for |offset| <= 1 ms, j for (ladder[j-1], ladder[j]], len(ladder) above 10 s."""
    return bisect_left(CLOCK_LADDER_NS, abs(offset_ns))


def clock_flagged(hist: Mapping[int, int], bound_ns: int) -> int:
    """Results whose |clock offset| exceeds ``bound_ns`` (a ladder step)."""
    step = CLOCK_LADDER_NS.index(bound_ns)
    return sum(n for b, n in hist.items() if b > step)


def add(into: Hist, other: Mapping[int, int]) -> Hist:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v
    return into


def encode(hist: Mapping[int, int]) -> bytes | None:
    """Sparse form for a BLOB column: (bucket, count) uint32 pairs by bucket; None when empty."""
    if not hist:
        return None
    return array("I", chain.from_iterable(sorted(hist.items()))).tobytes()


def decode(blob: bytes | None) -> Hist:
    if not blob:
        return {}
    a = array("I")
    a.frombytes(blob)
    return dict(zip(a[0::2], a[1::2], strict=True))


def merge_blobs(a: bytes | None, b: bytes | None) -> bytes | None:
    """SQL function for rollup upserts: the sum of two encoded histograms."""
    if not a:
        return b
    if not b:
        return a
    h = decode(a)
    x = array("I")
    x.frombytes(b)
    for k, v in zip(x[0::2], x[1::2], strict=True):
        h[k] = h.get(k, 0) + v
    return array("I", chain.from_iterable(sorted(h.items()))).tobytes()


def merge_into(into: Hist, blobs: Iterable[bytes]) -> Hist:
    """Add many encoded histograms to ``into`` in one pass (a dense accumulator, then sparse)."""
    joined = b"".join(blobs)
    if not joined:
        return into
    a = array("I")
    a.frombytes(joined)
    acc = [0] * (max(a[0::2]) + 1)
    for k, v in zip(a[0::2], a[1::2], strict=True):
        acc[k] += v
    for k, v in enumerate(acc):
        if v:
            into[k] = into.get(k, 0) + v
    return into


def total(hist: Mapping[int, int]) -> int:
    return sum(hist.values())


def percentile_ns(hist: Mapping[int, int], p: float) -> int | None:
    """Nearest-rank ``p`` percentile, as the upper edge of the bucket holding that sample."""
    n = total(hist)
    if n == 0:
        return None
    rank = max(1, math.ceil(p / 100.0 * n))
    seen = 0
    for k in sorted(hist):
        seen += hist[k]
        if seen >= rank:
            return LATENCY_EDGES_NS[k]
    raise AssertionError("unreachable")


def fraction_within(hist: Mapping[int, int], threshold_ns: int) -> float | None:
    """Share (0..1) of samples at most ``threshold_ns`` (exact when the threshold is an edge)."""
    n = total(hist)
    if n == 0:
        return None
    limit = bisect_left(LATENCY_EDGES_NS, threshold_ns)
    return sum(v for k, v in hist.items() if k <= limit) / n


def from_durations(durations_ns: Iterable[int]) -> Hist:
    h: Hist = {}
    for d in durations_ns:
        b = latency_bucket(d)
        h[b] = h.get(b, 0) + 1
    return h


def format_ns(ns: int) -> str:
    """A duration the way the catalogue writes it: 10us, 250ms, 1.5s, 2m."""
    if ns < NS_PER_MS:
        return f"{ns / NS_PER_US:g}us"
    if ns < NS_PER_S:
        return f"{ns / NS_PER_MS:g}ms"
    if ns < 60 * NS_PER_S or ns % (60 * NS_PER_S):
        return f"{ns / NS_PER_S:g}s"
    return f"{ns // (60 * NS_PER_S)}m"
