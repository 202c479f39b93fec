"""Runs checks on their schedule and turns probe outcomes into measurements.

The runner owns what every probe shares (blackbox_exporter's handler does
the same): when to start, the timeout, the total duration, the degraded
threshold, and turning a probe's own bug into a result of kind ``internal``
(scored as unknown, never as down: a broken probe says nothing about the
target).

Start times come from :mod:`slaprobe.schedule`, never from the end of the
previous run, so there is no drift; a runner that falls more than one
interval behind (a suspended host, say) skips to the next slot and the
missed slots stay unknown: nothing is invented to fill them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from probes import ErrorKind, PhaseTrace, Prober, ProbeResult, run_probe
from slaprobe.model import CheckSpec, Measurement
from slaprobe.schedule import NS_PER_MS, next_slot_at_or_after, offset_ns

log = logging.getLogger(__name__)


class Clock(Protocol):
    def time_ns(self) -> int: ...

    async def sleep_until(self, t_ns: int) -> None: ...


class SystemClock:
    def time_ns(self) -> int:
        return time.time_ns()

    async def sleep_until(self, t_ns: int) -> None:
        delay = (t_ns - time.time_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)


def next_run(now_ns: int, last_slot: int | None, interval_ns: int, offset: int) -> int:
    """The slot to run next: the one after ``last_slot`` unless we are a whole interval late."""
    if last_slot is None:
        return next_slot_at_or_after(now_ns, interval_ns, offset)
    candidate = last_slot + interval_ns
    if now_ns - candidate >= interval_ns:
        return next_slot_at_or_after(now_ns, interval_ns, offset)
    return candidate


class CheckRunner:
    def __init__(
        self,
        spec: CheckSpec,
        prober: Prober,
        emit: Callable[[Measurement], None],
        clock: Clock | None = None,
    ) -> None:
        self.spec = spec
        self.prober = prober
        self.emit = emit
        self.clock = clock or SystemClock()
        self.interval_ns = spec.interval_ms * NS_PER_MS
        self.offset_ns = offset_ns(spec.id, self.interval_ns)
        self.last_slot: int | None = None

    async def run_forever(self) -> None:
        while True:
            slot = next_run(self.clock.time_ns(), self.last_slot, self.interval_ns, self.offset_ns)
            await self.clock.sleep_until(slot)
            self.last_slot = slot
            self.emit(await self.run_once(slot))

    async def run_once(self, scheduled_ns: int) -> Measurement:
        spec = self.spec
        trace = PhaseTrace()
        started_ns = self.clock.time_ns()
        t0 = time.perf_counter()
        timed_out = False
        try:
            async with asyncio.timeout(spec.timeout_ms / 1000):
                result = await run_probe(self.prober, trace)
        except TimeoutError:
            timed_out = True
            hung = trace.current or "start"
            result = ProbeResult(
                False,
                trace.close(),
                ErrorKind.TIMEOUT,
                f"no answer within {spec.timeout_ms} ms (stuck in {hung})",
                dict(trace.fields),
            )
        except Exception as exc:
            log.exception("probe %s (%s) failed internally", spec.id, spec.type)
            result = ProbeResult(
                False, trace.close(), ErrorKind.INTERNAL, f"probe error: {type(exc).__name__}: {exc}"[:1000]
            )
        # The target's time: up to its last byte (trace.end), not our parsing after it; a
        # timeout is the whole wait.
        end = trace.end if trace.end is not None and not timed_out else time.perf_counter()
        duration_ns = int((max(end, t0) - t0) * 1e9)
        degraded = (
            result.success and spec.degraded_after_ms > 0 and duration_ns > spec.degraded_after_ms * NS_PER_MS
        )
        return Measurement(
            check_id=spec.id,
            check_revision=spec.revision,
            scheduled_ns=scheduled_ns,
            started_ns=started_ns,
            duration_ns=duration_ns,
            success=result.success,
            degraded=degraded,
            error_kind=str(result.error_kind) if result.error_kind else "",
            detail=result.detail[:4096],
            phases=tuple((name, int(seconds * 1e9)) for name, seconds in result.phases),
            fields=dict(result.fields),
        )
