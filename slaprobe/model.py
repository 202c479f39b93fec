"""Domain values shared by the agent and the collector.

The wire format (protobuf) is converted to and from these types in exactly
one module on each side (``agent/wire.py``, ``collector/wire.py``); the rest
of the code never touches generated classes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

FieldScalar = float | str | bool


def check_id(site: str, name: str) -> str:
    """A stable, unambiguous id for a check: ``site/name`` with ``%`` and ``/`` escaped.

    Names are arbitrary Unicode chosen by users; escaping keeps ``a/b`` + ``c``
    distinct from ``a`` + ``b/c``.
    """
    return f"{_escape(site)}/{_escape(name)}"


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("/", "%2F")


@dataclass(frozen=True)
class CheckSpec:
    """One check as the agent runs it: everything needed to probe, nothing about SLAs."""

    id: str
    site: str
    name: str
    type: str
    target: str
    interval_ms: int
    timeout_ms: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    degraded_after_ms: int = 0
    revision: str = ""

    @property
    def settings_json(self) -> str:
        return json.dumps(self.settings, sort_keys=True, separators=(",", ":"))

    def with_revision(self) -> CheckSpec:
        """Return a copy whose revision is the hash of everything the agent acts on."""
        payload = json.dumps(
            [
                self.id,
                self.site,
                self.name,
                self.type,
                self.target,
                self.interval_ms,
                self.timeout_ms,
                self.settings_json,
                self.degraded_after_ms,
            ],
            separators=(",", ":"),
        )
        return replace(self, revision=hashlib.sha256(payload.encode()).hexdigest()[:16])


@dataclass(frozen=True)
class Measurement:
    """One probe run as produced by an agent and stored by the collector.

    Times are integer nanoseconds since the Unix epoch on the agent's clock;
    ``scheduled_ns`` is the slot the run belongs to, which is what SLA
    scoring counts, while ``started_ns - scheduled_ns`` is the agent's lateness.
    """

    check_id: str
    check_revision: str
    scheduled_ns: int
    started_ns: int
    duration_ns: int
    success: bool
    degraded: bool = False
    error_kind: str = ""
    detail: str = ""
    phases: tuple[tuple[str, int], ...] = ()
    fields: Mapping[str, FieldScalar] = field(default_factory=dict)
    clock_offset_ns: int = 0
    clock_synced: bool = False


@dataclass(frozen=True)
class GapCheck:
    check_id: str
    from_ns: int
    to_ns: int
    count: int


@dataclass(frozen=True)
class Gap:
    """Results evicted from a full or too-old agent spool, standing for seqs ``seq..through_seq``."""

    through_seq: int
    reason: str
    evicted_ns: int
    checks: tuple[GapCheck, ...]


@dataclass(frozen=True)
class ClockSample:
    """One NTP-style exchange (t0 agent send, t1 collector receive, t2 collector send, t3 agent receive)."""

    t0_ns: int
    t1_ns: int
    t2_ns: int
    t3_ns: int

    @property
    def offset_ns(self) -> int:
        """Agent clock minus collector clock."""
        return ((self.t0_ns - self.t1_ns) + (self.t3_ns - self.t2_ns)) // 2

    @property
    def rtt_ns(self) -> int:
        return max(0, (self.t3_ns - self.t0_ns) - (self.t2_ns - self.t1_ns))


Payload = Measurement | Gap | ClockSample


@dataclass(frozen=True)
class Record:
    """A numbered entry of an agent's outgoing stream."""

    seq: int
    measurement: Payload

    @property
    def through_seq(self) -> int:
        """The last seq this record stands for (a gap stands for a span)."""
        return self.measurement.through_seq if isinstance(self.measurement, Gap) else self.seq
