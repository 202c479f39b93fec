"""Build and run one probe type the way the catalogue and the runner do, for the probe tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from probes import PhaseTrace, Prober, ProbeResult, build_prober, run_probe
from slaprobe.configfile import ConfigError, Node


class ProbeHarness:
    """Validated like a check of ``check`` in ``source``, so config errors carry real paths."""

    def __init__(
        self, type_name: str, check: str, source: str = "catalogue.yaml", guard_s: float = 10.0
    ) -> None:
        self.type_name = type_name
        self.check = check
        self.source = source
        self.guard_s = guard_s

    def make_prober(self, target: Any, settings: Any = None, type_name: Any = None) -> Prober:
        return build_prober(
            Node.from_python(
                self.type_name if type_name is None else type_name, self.source, f"{self.check}.type"
            ),
            Node.from_python(target, self.source, f"{self.check}.target"),
            None if settings is None else Node.from_python(settings, self.source, f"{self.check}.settings"),
        )

    async def probe(self, target: str, settings: Any = None) -> ProbeResult:
        # A generous guard so a regression shows up as a failure, not a hung run.
        async with asyncio.timeout(self.guard_s):
            result = await run_probe(self.make_prober(target, settings), PhaseTrace())
        # Probes close sockets and transports after their result, on later loop turns (their
        # time is not the target's); let those run before the test's loop is torn down.
        for _ in range(3):
            await asyncio.sleep(0)
        return result

    def config_error(self, target: Any, settings: Any = None) -> str:
        with pytest.raises(ConfigError) as info:
            self.make_prober(target, settings)
        return str(info.value)


def phase_names(result: ProbeResult) -> list[str]:
    return [name for name, _ in result.phases]


async def block_the_loop_once(when: Callable[[], bool], seconds: float, give_up_s: float = 5.0) -> bool:
    """Freeze the event loop for ``seconds`` the first time ``when()`` holds (checked every turn).

    Stands in for a busy agent: bytes that arrive meanwhile wait in the kernel,
    and a probe must not count that wait as the target's time. False if
    ``when()`` never held within ``give_up_s`` (the probe went past that point
    between two turns): the caller's checks then fail instead of the test hanging.
    """
    deadline = time.perf_counter() + give_up_s
    while not when():  # a condition of the probe's own state, checked every turn
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0)
    time.sleep(seconds)  # noqa: ASYNC251 - blocking on purpose: nothing else runs meanwhile
    return True
