"""Collector lifecycle: startup → serve → graceful shutdown, plus catalogue reload.

Shutdown order matters for "no acknowledged result is lost": health goes
NOT_SERVING, streams are told to stop, the gRPC server stops accepting and
gives in-flight calls a grace period, and only then does the writer commit
what is queued and close. An agent whose batch was committed but whose ack
was lost resends it after reconnecting; the unique key makes that a no-op.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from collector.catalogue import Catalogue, load_catalogue
from collector.hub import CatalogueHub
from collector.retention import retention_loop
from collector.service import CollectorService
from collector.store import Reader, Writer
from slaprobe.configfile import ConfigError
from slaprobe.pki import CollectorPki

log = logging.getLogger(__name__)

# The collector's threads hand the GIL over after this long (Python's default: 5 ms). The writer
# thread releases the GIL for every SQLite statement (~300 a group commit) and the decode
# worker's results are read by the executor's thread in pipe-sized chunks, each read then
# waiting for the GIL; with the event loop or the writer's Python holding it, each wait could
# last a whole interval. Measured (bench/ingest.py, 4 sealed streams, interleaved, machine
# shared): 21.5-25.8k results/s at 0.5 ms against 15.1-19.9k at 5 ms.
GIL_SWITCH_INTERVAL_S = 0.0005
# Garbage collection while serving: what exists once the collector is up is frozen (gc.freeze:
# never traversed again) and young collections wait for 10,000 new containers, not 700. Every
# full collection traversed everything alive (gRPC, protobuf, the catalogue, batches in flight),
# holding the GIL each time (~150 ms); measured during one ingest bench run of 500,000 results:
# 2.3-2.6 s of collections, 1.3 s with the freeze, ~0.9 s with both.
GC_THRESHOLD = (10_000, 10, 10)


class _ServingSettings:
    """The process-wide settings above, made while at least one collector serves in this
    process (tests run several) and restored when the last one stops."""

    def __init__(self) -> None:
        self.serving = 0
        self._saved: tuple[float, tuple[int, int, int]] | None = None

    def enter(self) -> None:
        self.serving += 1
        if self.serving == 1:
            self._saved = (sys.getswitchinterval(), gc.get_threshold())
            sys.setswitchinterval(min(self._saved[0], GIL_SWITCH_INTERVAL_S))
            gc.set_threshold(*GC_THRESHOLD)
        gc.freeze()  # what exists now, this collector included, is never traversed again

    def leave(self) -> None:
        self.serving -= 1
        if self.serving == 0 and self._saved is not None:
            interval, threshold = self._saved
            self._saved = None
            sys.setswitchinterval(interval)
            gc.set_threshold(*threshold)
            gc.unfreeze()


_process = _ServingSettings()

SERVICE_NAME = "slaprobe.v1.Collector"


@dataclass(frozen=True)
class CollectorSettings:
    catalogue_path: Path
    db_path: Path
    listen: str = "127.0.0.1:7431"
    max_message_bytes: int = 16 * 1024 * 1024
    grace_s: float = 5.0
    max_future_skew_s: float = 300.0
    # Mutual TLS is the default: tls_dir holds what `slaprobe collector init` made.
    tls_dir: Path | None = None
    insecure: bool = False
    enroll_listen: str | None = "127.0.0.1:7432"
    cert_days: float = 90.0
    revocation_poll_s: float = 1.0
    # Retention (reporting.retention in the catalogue): first pass after start, then daily.
    retention_first_s: float = 300.0
    retention_every_s: float = 86_400.0
    # The decode worker starts with the collector, in the background (CollectorService.start_decode_worker),
    # not at the first large batch; False: at the first large batch.
    start_decode_worker: bool = True


def grpc_server_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Agents ping every 20 s to notice dead paths; allow it, also between calls.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def _listen(server: grpc.aio.Server, address: str, creds: grpc.ServerCredentials | None) -> int:
    try:
        port = server.add_insecure_port(address) if creds is None else server.add_secure_port(address, creds)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {exc}") from exc
    if not port:
        raise OSError(f"cannot listen on {address} (in use, or not an address of this host)")
    return int(port)


def _read_revocations(db_path: Path) -> set[str]:
    reader = Reader(db_path)
    try:
        return reader.revoked_names()
    finally:
        reader.close()


class Collector:
    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.writer = Writer(settings.db_path)
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self.service: CollectorService | None = None
        self.decode_worker: asyncio.Future[int] | None = None  # resolves with its pid once it runs
        self.hub: CatalogueHub | None = None
        self.enroll_port = 0
        self._revocations: asyncio.Task[None] | None = None
        self._retention: asyncio.Task[None] | None = None
        self._serving = False

    async def start(self) -> int:
        """Load and persist the catalogue, open storage, start serving; return the bound port."""
        s = self.settings
        pki: CollectorPki | None = None
        if not s.insecure:
            if s.tls_dir is None or not CollectorPki(s.tls_dir).exists():
                raise OSError(
                    f"no TLS material in {s.tls_dir or '(no --tls-dir given)'}: run `slaprobe collector init"
                    " --tls-dir DIR` first, or pass --insecure to serve plaintext (not for production)"
                )
            pki = CollectorPki(s.tls_dir)
        else:
            log.warning("serving WITHOUT TLS (--insecure): anyone who reaches the port can push results")
        catalogue = await asyncio.to_thread(load_catalogue, self.settings.catalogue_path)
        await self.writer.start()
        try:
            refs = await self.writer.persist_catalogue(catalogue, time.time_ns())
            self.hub = CatalogueHub(catalogue, refs)
            self.service = CollectorService(
                self.hub,
                self.writer,
                max_future_skew_ns=int(self.settings.max_future_skew_s * 1e9),
                pki=pki,
                require_identity=pki is not None,
                cert_days=s.cert_days,
            )
            self.service.set_revoked(await asyncio.to_thread(_read_revocations, s.db_path))
            server = grpc.aio.server(options=grpc_server_options(self.settings.max_message_bytes))
            self.service.add_to(server)
            self._health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            if pki is None:
                self.port = _listen(server, s.listen, None)
            else:
                key, chain = pki.server_pair()
                self.port = _listen(
                    server,
                    s.listen,
                    grpc.ssl_server_credentials(
                        [(key, chain)], root_certificates=pki.ca_cert_pem(), require_client_auth=True
                    ),
                )
                if s.enroll_listen:
                    # Enrolment: server-authenticated TLS without a client certificate. Every other
                    # call reached through this port has no peer identity and is refused.
                    self.enroll_port = _listen(
                        server, s.enroll_listen, grpc.ssl_server_credentials([(key, chain)])
                    )
            await server.start()
            self._server = server
            if s.start_decode_worker:
                self.decode_worker = self.service.start_decode_worker()
            self._revocations = asyncio.create_task(self._watch_revocations())
            hub = self.hub
            self._retention = asyncio.create_task(
                retention_loop(
                    self.writer,
                    lambda: hub.catalogue.reporting,
                    first_after_s=s.retention_first_s,
                    every_s=s.retention_every_s,
                )
            )
            await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
            await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        except BaseException:
            await self.writer.close()
            raise
        if self.enroll_port:
            log.info("enrolment endpoint on %s (port %d)", s.enroll_listen, self.enroll_port)
        log.info(
            "collector listening on %s (port %d, %s), %d sites, %d checks, database %s",
            self.settings.listen,
            self.port,
            "plaintext" if pki is None else "mutual TLS",
            len(catalogue.sites),
            len(catalogue.all_checks()),
            self.settings.db_path,
        )
        if not self._serving:
            self._serving = True
            _process.enter()
        return self.port

    async def reload(self) -> bool:
        """Re-read the catalogue; on any error keep the one in force and say why."""
        assert self.hub is not None
        try:
            catalogue: Catalogue = await asyncio.to_thread(load_catalogue, self.settings.catalogue_path)
        except ConfigError as exc:
            log.error("catalogue not reloaded, keeping the previous one: %s", exc)
            return False
        refs = await self.writer.persist_catalogue(catalogue, time.time_ns())
        told = self.hub.replace(catalogue, refs)
        log.info("catalogue reloaded (%s); %d agent streams updated", catalogue.digest[:12], told)
        return True

    async def _watch_revocations(self) -> None:
        """Apply `slaprobe agent revoke` (written to the database by the CLI) within a second."""
        assert self.service is not None
        while True:
            await asyncio.sleep(self.settings.revocation_poll_s)
            try:
                self.service.set_revoked(await asyncio.to_thread(_read_revocations, self.settings.db_path))
            except Exception:
                log.exception("cannot read revocations; keeping the current list")

    async def stop(self) -> None:
        if self._revocations is not None:
            self._revocations.cancel()
        if self._retention is not None:
            self._retention.cancel()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self.service is not None:
            self.service.stopping.set()
        if self._server is not None:
            await self._server.stop(self.settings.grace_s)
            self._server = None
        if self.service is not None:
            self.service.close()
        await self.writer.close()
        if self._serving:
            self._serving = False
            _process.leave()
        log.info("collector stopped")
