"""The agent process: checks in force, their runners, the outbox and the link.

The set of checks comes from the collector and is cached in the data
directory, so an agent restarted while its collector is away resumes
probing at once from the last catalogue it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

from agent.config import AgentConfig
from agent.identity import TlsFiles
from agent.link import CollectorLink
from agent.outbox import Outbox
from agent.runner import CheckRunner, Clock
from agent.spool import Spool, SpoolLimits
from probes import Prober, build_prober
from slaprobe.chain import load_or_create_key
from slaprobe.configfile import ConfigError, Node
from slaprobe.model import CheckSpec, Measurement

log = logging.getLogger(__name__)

CHECK_CACHE = "checks.json"
SPOOL_FILE = "spool.db"
SIGNING_KEY = "signing.key"  # Ed25519: seals this agent's records (evidence)


def build_runner_prober(spec: CheckSpec) -> Prober:
    source = f"check {spec.id!r} from the collector"
    return build_prober(
        Node(spec.type, source, None, "type"),
        Node(spec.target, source, None, "target"),
        Node.from_python(dict(spec.settings), source, "settings"),
    )


class Agent:
    def __init__(
        self, config: AgentConfig, *, outbox: Outbox | None = None, clock: Clock | None = None
    ) -> None:
        self.config = config
        self.outbox: Outbox = outbox or Spool(
            config.data_dir / SPOOL_FILE,
            SpoolLimits(
                max_bytes=config.spool_max_bytes,
                max_age_s=config.spool_max_age_s,
                seal_interval_s=config.seal_interval_s,
            ),
            signing_key=load_or_create_key(config.data_dir / SIGNING_KEY),
        )
        self.clock = clock
        self.checks: dict[str, CheckSpec] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self.link = CollectorLink(
            address=config.collector,
            agent_id=config.name,
            site=config.site,
            outbox=self.outbox,
            known_checks=lambda: {cid: spec.revision for cid, spec in self.checks.items()},
            on_changes=self.apply_changes,
            batch_max=config.batch_max,
            heartbeat_s=config.heartbeat_s,
            keepalive_s=config.keepalive_s,
            tls=None if config.insecure else TlsFiles(config.tls_path),
        )
        self.produced = 0

    # ---- checks -------------------------------------------------------------

    def apply_changes(self, snapshot: bool, upserts: list[CheckSpec], deletes: list[str]) -> None:
        for cid in deletes:
            self._stop_runner(cid)
            self.checks.pop(cid, None)
        for spec in upserts:
            if spec.site != self.config.site:
                log.error(
                    "ignoring check %r of site %r (this agent is for %r)",
                    spec.id,
                    spec.site,
                    self.config.site,
                )
                continue
            try:
                prober = build_runner_prober(spec)
            except ConfigError as exc:
                log.error("cannot run check %r: %s", spec.id, exc)
                continue
            self._stop_runner(spec.id)
            self.checks[spec.id] = spec
            self._start_runner(spec, prober)
        if upserts or deletes or snapshot:
            log.info(
                "checks %s: %d running (%d added or changed, %d removed)",
                "synchronised" if snapshot else "updated",
                len(self.checks),
                len(upserts),
                len(deletes),
            )
            self._save_cache()

    def _start_runner(self, spec: CheckSpec, prober: Prober) -> None:
        runner = CheckRunner(spec, prober, self._emit, self.clock)
        task = asyncio.get_running_loop().create_task(runner.run_forever(), name=f"check:{spec.id}")
        self._runners[spec.id] = task

    def _stop_runner(self, cid: str) -> None:
        task = self._runners.pop(cid, None)
        if task is not None:
            task.cancel()

    def _emit(self, m: Measurement) -> None:
        clock = self.link.clock
        if clock is not None:
            # The offset in force when the probe ran travels with the result (clock evidence).
            m = replace(m, clock_offset_ns=clock.offset_ns, clock_synced=True)
        self.outbox.append(m)
        self.produced += 1

    def _cache_path(self) -> Path:
        return self.config.data_dir / CHECK_CACHE

    def _save_cache(self) -> None:
        path = self._cache_path()
        tmp = path.with_suffix(".tmp")
        data = [
            {
                "id": s.id,
                "site": s.site,
                "name": s.name,
                "type": s.type,
                "target": s.target,
                "interval_ms": s.interval_ms,
                "timeout_ms": s.timeout_ms,
                "settings": dict(s.settings),
                "degraded_after_ms": s.degraded_after_ms,
                "revision": s.revision,
            }
            for s in self.checks.values()
        ]
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)

    def _load_cache(self) -> list[CheckSpec]:
        path = self._cache_path()
        if not path.exists():
            return []
        try:
            return [CheckSpec(**item) for item in json.loads(path.read_text(encoding="utf-8"))]
        except (ValueError, TypeError) as exc:
            log.warning("ignoring unreadable check cache %s: %s", path, exc)
            return []

    # ---- lifecycle -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Probe and deliver until ``stop`` is set; then try briefly to deliver what is left."""
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(self.outbox, Spool):
            await self.outbox.open()
        cached = self._load_cache()
        if cached:
            log.info("resuming %d cached checks until the collector answers", len(cached))
            self.apply_changes(False, cached, [])
        link_task = asyncio.create_task(self.link.run(), name="collector-link")
        stop_task = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({link_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if link_task.done():
                link_task.result()  # raises FatalLinkError
        finally:
            for cid in list(self._runners):
                self._stop_runner(cid)
            stop_task.cancel()
            if not link_task.done():
                await self._drain(link_task, timeout_s=5.0)
                link_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await link_task
            # Everything appended is committed to the spool before we exit: nothing is lost.
            await self.outbox.close()

    async def _drain(self, link_task: asyncio.Task[None], timeout_s: float) -> None:
        """Give the link a moment to deliver the last records before exit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.outbox.depth and loop.time() < deadline and not link_task.done():
            if isinstance(self.outbox, Spool):
                # Seal what waits (a clock sample may still arrive): only sealed records can be
                # sent, and the periodic seal may be seconds away.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.outbox.flush(), max(0.01, deadline - loop.time()))
            await asyncio.sleep(0.05)
        if self.outbox.depth:
            where = "kept in the spool for the next start" if isinstance(self.outbox, Spool) else "LOST"
            log.warning("exiting with %d undelivered records (%s)", self.outbox.depth, where)
