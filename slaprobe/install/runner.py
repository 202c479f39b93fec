"""Run one coroutine per host, a bounded number at once; show progress; summarise.

A host's failure is its own: ``InstallError`` becomes a failed row with the
reason, any other exception a failed row saying it is a bug (with the
traceback in the log), and the other hosts carry on. Progress goes to stderr
(one redrawn line per host on a terminal, one line per step otherwise, so CI
logs read well); the summary table goes to stdout.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

from slaprobe.install.errors import InstallError
from slaprobe.install.inventory import Target
from slaprobe.install.plan import HostResult, Progress
from slaprobe.output import render_table

log = logging.getLogger("slaprobe.install")

HostFn = Callable[[Target, Progress], Awaitable[HostResult]]


class ProgressDisplay:
    def __init__(self, labels: list[str], stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.state = dict.fromkeys(labels, "waiting")
        self.width = max((len(x) for x in labels), default=0)
        self.drawn = 0

    def update(self, label: str, text: str) -> None:
        self.state[label] = text
        if not self.tty:
            self.stream.write(f"{label}: {text}\n")
        else:
            if self.drawn:
                self.stream.write(f"\x1b[{self.drawn}F")
            for k, v in self.state.items():
                self.stream.write(f"\x1b[2K{k.ljust(self.width)}  {v.splitlines()[0] if v else ''}\n")
            self.drawn = len(self.state)
        self.stream.flush()


async def run_hosts(
    targets: list[Target], fn: HostFn, *, parallel: int, display: ProgressDisplay | None = None
) -> list[HostResult]:
    sem = asyncio.Semaphore(max(1, parallel))

    async def one(t: Target) -> HostResult:
        def say(text: str) -> None:
            if display is not None:
                display.update(t.label, text)

        async with sem:
            t0 = time.monotonic()
            try:
                r = await fn(t, say)
            except InstallError as exc:
                r = HostResult(t, False, "failed", seconds=time.monotonic() - t0, detail=str(exc))
            except Exception as exc:
                log.exception("%s: unexpected error", t.label)
                r = HostResult(
                    t,
                    False,
                    "failed",
                    seconds=time.monotonic() - t0,
                    detail=f"internal error (a bug): {exc!r}",
                )
            say(f"{r.outcome}" + (f": {r.detail}" if not r.ok else ""))
            return r

    return list(await asyncio.gather(*(one(t) for t in targets)))


def summary(results: list[HostResult]) -> str:
    rows = [
        [
            r.target.label,
            r.outcome,
            r.version,
            f"{r.seconds:.1f}s",
            r.detail.splitlines()[0] if r.detail else "",
        ]
        for r in results
    ]
    table = render_table(["host", "result", "version", "time", "detail"], rows, "lllrl")
    multi = [r for r in results if not r.ok and "\n" in r.detail]
    extra = "".join(f"\n{r.target.label}:\n{r.detail}\n" for r in multi)
    ok = sum(r.ok for r in results)
    return f"{table}\n{ok} of {len(results)} hosts ok{extra}"
