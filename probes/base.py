"""The probe seam: one interface for every probe type.

A prober is built once per check from its target and settings
(:meth:`Prober.from_config`), which validates everything and raises
:class:`~slaprobe.configfile.ConfigError` for bad config: that is the only
time a prober raises on purpose. :meth:`Prober.probe` then runs as often as
the schedule says and always returns a :class:`ProbeResult`; a target that is
down, slow or wrong is a result with an :class:`ErrorKind`, not an exception.

The runner (``agent/runner.py``) owns what every probe shares: the timeout,
the total duration, the degraded threshold and turning a probe's bug into a
result of kind ``internal``.

Inside a probe, failing fast is easiest by raising :class:`ProbeFailure`;
:func:`run_probe` maps it to a failed result at this boundary.

Error kinds, one vocabulary for every probe (reports group incidents by it)::

    timeout        no answer within the check's timeout
    dns            the name did not resolve
    refused        the port actively refused the connection
    unreachable    no route, network down, host unreachable
    reset          the peer closed or reset the connection mid-exchange
    tls            handshake, chain or hostname verification failed
    cert_expiring  the certificate expires within the configured threshold
    status         an unexpected status (HTTP status, DNS rcode, health status)
    assertion      the answer did not match what the check expects (body, header, banner)
    protocol       the peer spoke something we could not parse
    internal       the probe itself failed (a bug): scored as unknown, never as down
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from slaprobe.configfile import Fields, Node

__all__ = [
    "ErrorKind",
    "PhaseTrace",
    "ProbeFailure",
    "ProbeResult",
    "Prober",
]


class ErrorKind(StrEnum):
    TIMEOUT = "timeout"
    DNS = "dns"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    RESET = "reset"
    TLS = "tls"
    CERT_EXPIRING = "cert_expiring"
    STATUS = "status"
    ASSERTION = "assertion"
    PROTOCOL = "protocol"
    INTERNAL = "internal"


FieldScalar = float | str | bool


@dataclass(frozen=True)
class ProbeResult:
    """What one probe run found out. Durations are seconds (floats from perf_counter)."""

    success: bool
    phases: tuple[tuple[str, float], ...] = ()
    error_kind: ErrorKind | None = None
    detail: str = ""
    fields: Mapping[str, FieldScalar] = field(default_factory=dict)


class ProbeFailure(Exception):
    """Raised inside a probe to end it with a failed result of the given kind."""

    def __init__(self, kind: ErrorKind, detail: str, **fields: FieldScalar) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.fields = fields


class PhaseTrace:
    """Times named phases as a probe moves through them.

    ``enter("connect")`` closes the phase in progress and opens the next, so a
    probe cancelled by its timeout still tells how far it got (the runner
    calls :meth:`close` and reports the phase that hung).
    """

    __slots__ = ("_current", "_mark", "_phases", "end", "fields")

    def __init__(self) -> None:
        self._phases: list[tuple[str, float]] = []
        self._current: str | None = None
        self._mark = time.perf_counter()
        self.fields: dict[str, FieldScalar] = {}
        # When the target's part ended (perf_counter): set by stop() or close(), cleared when a
        # phase opens again. The runner measures the total to here, so parsing the answer is
        # not counted as latency.
        self.end: float | None = None

    def enter(self, name: str, at: float | None = None) -> None:
        """Close the phase in progress and open ``name``.

        ``at`` (a ``perf_counter`` time) puts the boundary earlier than now: when
        the kernel says when the bytes arrived (a receive timestamp), waking this
        task up afterwards is not the target's time. It is kept between the
        phase's start and now.
        """
        now = self._when(at)
        if self._current is not None:
            self._phases.append((self._current, now - self._mark))
        self._current = name
        self._mark = now
        self.end = None  # the target's part goes on (an HTTP redirect's next hop, say)

    def stop(self, at: float | None = None) -> None:
        """Close the phase in progress without opening another; the target's part ends here.

        For work after the target's last byte (parsing its answer, say): that is
        the probe's own time, not the target's, so no phase holds it. ``at`` as
        for :meth:`enter`.
        """
        if self._current is not None:
            now = self._when(at)
            self._phases.append((self._current, now - self._mark))
            self._current = None
            self._mark = now
            self.end = now

    def skip(self, name: str) -> None:
        """Record a phase that took no time (for example resolving an IP literal)."""
        self.enter(name)

    def close(self) -> tuple[tuple[str, float], ...]:
        """Stop the phase in progress, if any, and return the phases; ``end`` stays where it was set."""
        self.stop()
        if self.end is None:
            self.end = self._mark
        return tuple(self._phases)

    def _when(self, at: float | None) -> float:
        now = time.perf_counter()
        if at is None:
            return now
        return min(max(at, self._mark), now)

    @property
    def current(self) -> str | None:
        return self._current


class Prober(ABC):
    """A validated, ready-to-run probe for one check."""

    #: The ``type`` a check names in the catalogue.
    type_name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, target: Node, settings: Fields) -> Prober:
        """Validate the target and settings; raise ConfigError naming the field.

        Must do no I/O: the collector calls it to validate the catalogue.
        Implementations read every setting they support through ``settings``;
        the caller rejects the keys left unread.
        """

    @property
    def min_timeout_s(self) -> float:
        """The least timeout a run of this prober can finish in (a burst of pings, say); 0 if no floor.

        The catalogue refuses a check whose timeout is shorter, instead of letting every run time out.
        """
        return 0.0

    @abstractmethod
    async def probe(self, trace: PhaseTrace) -> ProbeResult:
        """Run once. Enter phases on ``trace``; put probe-specific facts in ``trace.fields``."""


async def run_probe(prober: Prober, trace: PhaseTrace) -> ProbeResult:
    """Run a prober, mapping :class:`ProbeFailure` to a failed result."""
    try:
        return await prober.probe(trace)
    except ProbeFailure as failure:
        fields = dict(trace.fields)
        fields.update(failure.fields)
        return ProbeResult(
            success=False, phases=trace.close(), error_kind=failure.kind, detail=failure.detail, fields=fields
        )
