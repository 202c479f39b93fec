"""The probe schedule: which instants a check is due, shared by agent and collector.

A check with interval ``I`` runs at ``offset + k*I`` nanoseconds since the
Unix epoch, for every integer ``k``. The offset is derived from the check id
alone, so that

* load spreads: a thousand checks with the same interval start at a
  thousand different instants instead of in one burst;
* the schedule is the same on every agent and after every restart, so
  the collector can enumerate exactly which slots were due in any period
  (a slot with no result is *unknown*, never assumed up or down), and
  agents of one site probe in the same slots, which quorum needs;
* there is no drift: each start is computed from the schedule, never from
  the end of the previous run.
"""

from __future__ import annotations

import hashlib

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000


def offset_ns(check_id: str, interval_ns: int) -> int:
    """Deterministic start offset in ``[0, interval)``, on a millisecond grid."""
    if interval_ns <= 0:
        raise ValueError("interval must be positive")
    digest = hashlib.sha256(check_id.encode("utf-8")).digest()
    fraction = int.from_bytes(digest[:8], "big")
    interval_ms = max(1, interval_ns // NS_PER_MS)
    return (fraction % interval_ms) * NS_PER_MS


def slot_index(t_ns: int, interval_ns: int, offset: int) -> int:
    """The slot containing instant ``t_ns`` (slot k spans [offset+k*I, offset+(k+1)*I))."""
    return (t_ns - offset) // interval_ns


def slot_start(index: int, interval_ns: int, offset: int) -> int:
    return offset + index * interval_ns


def next_slot_at_or_after(t_ns: int, interval_ns: int, offset: int) -> int:
    """The first scheduled instant at or after ``t_ns``."""
    k = -((offset - t_ns) // interval_ns)  # ceil((t - offset) / I)
    return offset + k * interval_ns


def slots_in(start_ns: int, end_ns: int, interval_ns: int, offset: int) -> range:
    """Indexes of the slots whose scheduled instant lies in ``[start_ns, end_ns)``."""
    first = -((offset - start_ns) // interval_ns)
    last_exclusive = -((offset - end_ns) // interval_ns)
    return range(first, max(first, last_exclusive))
