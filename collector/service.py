"""The gRPC servicer: registration, check streams, record ingest, heartbeats.

Ingest is pipelined per stream: a batch is decoded and validated on the
event loop, handed to the writer thread, and the next batch is read while
the previous one commits; acknowledgements are written back in order as
their commits complete. A batch is acknowledged only after its commit.

A bad record is rejected alone (stored in ``rejections`` with its reason,
reported back in the ack so the agent does not resend it); an undecodable or
inconsistent batch is refused alone, and the stream stays open.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import pickle
import time
from array import array
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from collector import rollups
from collector.hub import CatalogueHub
from collector.inflight import InflightBudget
from collector.store import (
    RESULT_COLUMNS,
    BatchLinks,
    ChainRefused,
    IngestOutcome,
    KeyRefused,
    ResultRow,
    TokenRefused,
    Writer,
    clock_row,
    gap_rows,
)
from collector.wire import (
    InvalidRecord,
    batch_header,
    batch_results,
    check_to_pb,
    decode_record,
    result_row,
    split_batch,
)
from protos import slaprobe_v1_pb2 as pb
from protos import slaprobe_v1_pb2_grpc as pb_grpc
from slaprobe import __version__
from slaprobe.chain import ChainError, ChainWalker, Link, parse_link, public_keys
from slaprobe.model import ClockSample, Gap
from slaprobe.pki import AgentIdentity, CollectorPki, PkiError, cert_not_after, cert_serial

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

MAX_BATCH_RECORDS = 10_000
ACK_WINDOW = 64  # batches decoded ahead of their commit, per stream
# Batch bytes taken in and not yet committed, all streams together (collector/inflight.py): ~3x this
# in decoded rows. Four agents streaming at full speed use ~40 MiB of it (the ingest benchmark).
INFLIGHT_BYTES = 64 << 20
# record_log.kind: the Record oneof's field number (0: a kind this collector does not know).
_KIND_NUMBER = {f.name: f.number for f in pb.Record.DESCRIPTOR.oneofs_by_name["kind"].fields}
_RESULT_KIND = _KIND_NUMBER["result"]
# Batches at least this large are decoded in the decode worker process (smaller: on the event loop).
OFFLOAD_MIN_BYTES = 16 * 1024
FOLD_MIN_ROWS_PER_CHECK = 3  # the decode worker folds a batch for the rollups from this many rows per check
# Whether the decode worker folds batches for the rollups: only where the fold is Python's. With the
# compiled fold (speedups/) the writer folds a batch of 1,000 results in ~0.6 ms, while a fold made
# in the worker costs ~0.9 ms there and ~0.3 ms to pickle, ~0.35 ms to unpickle here and ~0.15 ms
# to merge: the ingest benchmark ran at 78-85k results/s with 7.4-7.6 s of CPU without it, against
# 68-76k with 8.7-10 s with it (interleaved, bench/RESULTS.md, 2026-11-27).
FOLD_IN_WORKER = rollups.compiled is None


@dataclass
class AgentSession:
    row_id: int
    name: str
    site: str
    epoch: int
    revoked: asyncio.Event = field(default_factory=asyncio.Event)
    # The agent's signing keys by key id when it seals its records; None when it does not.
    keys: dict[bytes, Ed25519PublicKey] | None = None
    key_raws: tuple[bytes, ...] = ()  # the same keys, raw (what a decode worker is sent)


class CollectorService:
    def __init__(
        self,
        hub: CatalogueHub,
        writer: Writer,
        *,
        clock: Callable[[], int] = time.time_ns,
        max_future_skew_ns: int = 300 * 1_000_000_000,
        pki: CollectorPki | None = None,
        require_identity: bool = True,
        cert_days: float = 90.0,
        decode_workers: int | None = None,
        inflight_bytes: int = INFLIGHT_BYTES,
    ) -> None:
        """``decode_workers``: processes that decode and validate large batches beside the event
        loop (None: one when the machine has more than one CPU; 0: decode on the event loop).
        ``inflight_bytes``: the batches of all streams between arrival and commit, at most."""
        self.pki = pki
        self.inflight = InflightBudget(inflight_bytes)
        if decode_workers is None:
            decode_workers = 1 if (os.cpu_count() or 1) > 1 else 0
        self.decode_workers = decode_workers
        self._pool: ProcessPoolExecutor | None = None
        self._grids_cache: dict[
            str, tuple[tuple[int, int], dict[int, list[rollups.Grid]], dict[str, int]]
        ] = {}
        self.require_identity = require_identity
        self.cert_days = cert_days
        self.revoked: set[str] = set()
        self.hub = hub
        self.writer = writer
        self.clock = clock
        self.max_future_skew_ns = max_future_skew_ns
        self.sessions: dict[str, AgentSession] = {}
        self._watchers: set[asyncio.Task[object]] = set()
        self.stopping = asyncio.Event()

    def add_to(self, server: grpc.aio.Server) -> None:
        """Register handlers. PushRecords takes raw bytes so one undecodable batch cannot end its stream."""
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Register": grpc.unary_unary_rpc_method_handler(
                self.Register,
                request_deserializer=pb.RegisterRequest.FromString,
                response_serializer=pb.RegisterResponse.SerializeToString,
            ),
            "WatchChecks": grpc.unary_stream_rpc_method_handler(
                self.WatchChecks,
                request_deserializer=pb.WatchChecksRequest.FromString,
                response_serializer=pb.CheckChanges.SerializeToString,
            ),
            "PushRecords": grpc.stream_stream_rpc_method_handler(
                self.PushRecords,
                request_deserializer=None,
                response_serializer=pb.BatchAck.SerializeToString,
            ),
            "Heartbeat": grpc.unary_unary_rpc_method_handler(
                self.Heartbeat,
                request_deserializer=pb.HeartbeatRequest.FromString,
                response_serializer=pb.HeartbeatResponse.SerializeToString,
            ),
            "Enroll": grpc.unary_unary_rpc_method_handler(
                self.Enroll,
                request_deserializer=pb.EnrollRequest.FromString,
                response_serializer=pb.EnrollResponse.SerializeToString,
            ),
            "Renew": grpc.unary_unary_rpc_method_handler(
                self.Renew,
                request_deserializer=pb.RenewRequest.FromString,
                response_serializer=pb.RenewResponse.SerializeToString,
            ),
        }
        assert set(handlers) == set(pb.DESCRIPTOR.services_by_name["Collector"].methods_by_name)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("slaprobe.v1.Collector", handlers),)
        )
        _ = pb_grpc  # the generated stub is what agents use; the contract is the same file

    def _decode_pool(self) -> ProcessPoolExecutor | None:
        if self._pool is None and self.decode_workers > 0:
            # spawn: a forked child would inherit gRPC's threads and state.
            self._pool = ProcessPoolExecutor(
                self.decode_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
            )
            _widen_pipes(self._pool)
        return self._pool

    def start_decode_worker(self) -> asyncio.Future[int] | None:
        """Start the decode worker now, in the background; resolves with its pid (None: no worker).

        Why: a worker is a new interpreter (``spawn``) importing protobuf, gRPC and this package,
        ~0.7 s on a 2-vCPU VM (1.2 s while the catalogue still imported every probe). Started at
        the first large batch, that batch and every one behind it waited that long: a fleet
        reconnecting after a collector restart, or the start of the ingest benchmark (whose writer
        sat idle 1.2 s of ~14). The pool's job queue serves batches submitted meanwhile as soon
        as the worker is up.
        """
        pool = self._decode_pool()
        if pool is None:
            return None
        ready: asyncio.Future[int] = asyncio.get_running_loop().run_in_executor(pool, _worker_ready)
        ready.add_done_callback(_log_worker_start)
        return ready

    def _site_grids(
        self, site: str, checks: dict[str, int]
    ) -> tuple[tuple[int, int], dict[int, list[rollups.Grid]]] | None:
        """The writer's rollup grids for a site's checks (cached per generation)."""
        snapshot = self.writer.rollup_grids()
        if snapshot is None:
            return None
        generation, grids = snapshot
        cached = self._grids_cache.get(site)
        if cached is None or cached[0] != generation or cached[2] is not checks:
            rows = set(checks.values())
            cached = (generation, {c: v for c, v in grids.items() if c in rows}, checks)
            self._grids_cache[site] = cached
        return cached[0], cached[1]

    def close(self) -> None:
        """Stop the decode workers (after the server stopped: no batch is being decoded)."""
        pool, self._pool, self.decode_workers = self._pool, None, 0
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # ---- Register -----------------------------------------------------------

    # ---- identity -------------------------------------------------------------

    async def _identity(
        self, context: Context, claimed_name: str, claimed_site: str | None = None
    ) -> AgentIdentity:
        """Who is calling: from the verified client certificate (mTLS), or, only with --insecure, the payload.

        A payload naming another agent or site than the certificate is refused: agent A cannot
        speak for agent B. A revoked agent is refused whatever it presents.
        """
        if self.require_identity:
            uris = (
                context.auth_context().get("peer_uri")
                or context.auth_context().get("x509_subject_alternative_name")
                or []
            )
            ident = next(
                (
                    i
                    for i in (AgentIdentity.from_uri(u.decode("utf-8", "replace")) for u in uris)
                    if i is not None
                ),
                None,
            )
            if ident is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "no agent certificate: enrol this agent first"
                )
            assert ident is not None
            if claimed_name and claimed_name != ident.name:
                log.warning("certificate of %r used to speak for %r: refused", ident.name, claimed_name)
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this certificate is for agent {ident.name!r}, not {claimed_name!r}",
                )
            if claimed_site is not None and claimed_site != ident.site:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"agent {ident.name!r} is enrolled for site {ident.site!r}, not {claimed_site!r}",
                )
        else:
            if not claimed_name or len(claimed_name) > 200 or "\x00" in claimed_name:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "agent_id must be 1-200 characters, no NUL"
                )
            ident = AgentIdentity(claimed_site or "", claimed_name)
        if ident.name in self.revoked:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"agent {ident.name!r} is revoked")
        return ident

    def set_revoked(self, names: set[str]) -> None:
        """Apply the revocation list: new revocations close the agent's open streams at once."""
        for name in names - self.revoked:
            session = self.sessions.pop(name, None)
            if session is not None:
                session.revoked.set()
                log.warning("agent %r revoked: its streams are closed", name)
        self.revoked = set(names)

    async def Register(self, request: pb.RegisterRequest, context: Context) -> pb.RegisterResponse:
        received = self.clock()
        ident = await self._identity(context, request.agent_id, request.site)
        name = ident.name
        if not self.hub.has_site(request.site):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"site {request.site!r} is not in the collector's catalogue",
            )
        if request.signing_key and len(request.signing_key) != 32:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "signing_key must be 32 bytes (Ed25519)")
        try:
            agent_row, acked, keys = await self.writer.register_agent(
                name,
                request.site,
                request.version[:100],
                request.hostname[:255],
                request.epoch,
                received,
                bytes(request.signing_key),
            )
        except KeyRefused as exc:
            log.error("register refused: %s", exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        self.sessions[name] = AgentSession(
            agent_row,
            name,
            request.site,
            request.epoch,
            keys=public_keys(keys) if request.signing_key else None,
            key_raws=tuple(keys) if request.signing_key else (),
        )
        log.info(
            "agent %r registered for site %r (version %s, epoch %d, acked %d)",
            name,
            request.site,
            request.version,
            request.epoch,
            acked,
        )
        return pb.RegisterResponse(
            collector_receive_ns=received,
            collector_transmit_ns=self.clock(),
            acked_seq=acked,
            collector_version=__version__,
        )

    async def _session(self, agent_id: str, context: Context) -> AgentSession:
        ident = await self._identity(context, agent_id)
        session = self.sessions.get(ident.name)
        if session is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "register first")
        assert session is not None
        return session

    # ---- WatchChecks --------------------------------------------------------

    async def WatchChecks(
        self, request: pb.WatchChecksRequest, context: Context
    ) -> AsyncIterator[pb.CheckChanges]:
        session = await self._session(request.agent_id, context)
        sub = self.hub.subscribe(session.site)
        try:
            first = self.hub.first_diff(session.site, {k.id: k.revision for k in request.known})
            yield pb.CheckChanges(
                snapshot=True,
                upserts=[check_to_pb(c) for c in first.upserts],
                deletes=list(first.deletes),
            )
            stop = asyncio.ensure_future(self.stopping.wait())
            revoked = asyncio.ensure_future(session.revoked.wait())
            try:
                while True:
                    get = asyncio.ensure_future(sub.queue.get())
                    done, _ = await asyncio.wait({get, stop, revoked}, return_when=asyncio.FIRST_COMPLETED)
                    if get not in done:
                        get.cancel()
                        if revoked in done:
                            await context.abort(
                                grpc.StatusCode.PERMISSION_DENIED, f"agent {session.name!r} is revoked"
                            )
                        return
                    change = get.result()
                    yield pb.CheckChanges(
                        snapshot=False,
                        upserts=[check_to_pb(c) for c in change.upserts],
                        deletes=list(change.deletes),
                    )
            finally:
                stop.cancel()
                revoked.cancel()
        finally:
            self.hub.unsubscribe(sub)

    # ---- PushRecords --------------------------------------------------------

    async def PushRecords(self, request_iterator: object, context: Context) -> None:
        pending: asyncio.Queue[asyncio.Future[pb.BatchAck] | None] = asyncio.Queue(maxsize=ACK_WINDOW)

        async def write_acks() -> None:
            while True:
                fut = await pending.get()
                if fut is None:
                    return
                await context.write(await fut)

        # With mTLS the caller is known before its first batch, so a revocation can end an idle stream.
        revoked = (
            asyncio.ensure_future((await self._session("", context)).revoked.wait())
            if self.require_identity
            else asyncio.get_running_loop().create_future()
        )
        acker = asyncio.create_task(write_acks())
        order = _Order()  # the stream's batches go to the writer in the order they came
        try:
            while not self.stopping.is_set():
                read = asyncio.ensure_future(context.read())
                await asyncio.wait({read, revoked, acker}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    if acker.done():  # a refused or failed batch: its exception surfaces below
                        break
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this agent has been revoked")
                raw = read.result()
                if raw is grpc.aio.EOF:
                    break
                assert isinstance(raw, bytes)
                fut = await self._take_in(raw, context, order)
                put = asyncio.ensure_future(pending.put(fut))
                await asyncio.wait({put, acker}, return_when=asyncio.FIRST_COMPLETED)
                if not put.done():  # the ack writer failed; its exception surfaces below
                    put.cancel()
                    break
            if not acker.done():
                await pending.put(None)
            await acker
        except ChainRefused as exc:
            # Loud: either a forged or replayed batch, or an agent whose chain broke; nothing of it is stored.
            log.error("batch refused, nothing stored: %s", exc)
            await context.abort(grpc.StatusCode.DATA_LOSS, f"batch refused: {exc}")
        except Exception as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, grpc.aio.AbortError):
                raise
            log.warning("record stream ended: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "storage failed; resend unacknowledged records")
        finally:
            acker.cancel()
            revoked.cancel()

    async def _take_in(self, raw: bytes, context: Context, order: _Order) -> asyncio.Future[pb.BatchAck]:
        """:meth:`_accept` within the collector-wide in-flight budget: waits (reading nothing more
        from this stream) while all streams' uncommitted batches fill it; released at the ack."""
        n = len(raw)
        await self.inflight.take(n)
        try:
            fut = await self._accept(raw, context, order)
        except BaseException:
            self.inflight.give(n)
            raise
        fut.add_done_callback(lambda _: self.inflight.give(n))
        return fut

    async def _accept(self, raw: bytes, context: Context, order: _Order) -> asyncio.Future[pb.BatchAck]:
        """Decode and validate a batch; return a future of its ack (resolved after commit).

        Large batches are decoded in the decode worker process: this process (the event loop and
        the writer thread share one GIL) then only scans the header and unpacks the rows. The
        stream goes on reading while the worker decodes; batches still reach the writer in the
        order they came (``order``), and none after a batch that was refused whole.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[pb.BatchAck] = loop.create_future()
        pool = self._decode_pool() if len(raw) >= OFFLOAD_MIN_BYTES else None
        try:
            if pool is None:
                batch, raws = split_batch(raw)
            else:
                batch = batch_header(raw)
        except DecodeError:
            log.warning("undecodable record batch refused (%d bytes)", len(raw))
            done.set_result(pb.BatchAck(rejected=[pb.Rejection(seq=0, reason="undecodable batch")]))
            return done
        session = await self._session(batch.agent_id, context)
        now = self.clock()
        prev = order.last
        if pool is None and (prev is None or prev.done()):
            failed = prev.exception() if prev is not None else None
            if failed is not None:  # a batch before this one was refused whole: this one is not stored
                raise failed
            ctx = BatchContext(
                session.row_id,
                session.name,
                batch.epoch,
                now,
                self.max_future_skew_ns,
                _SiteChecks(self.hub, session.site),
                session.keys,
            )
            return self._store(decode_batch(batch, raws, ctx), ctx, done)
        checks = self.hub.site_checks(session.site)
        ctx = BatchContext(
            session.row_id, session.name, batch.epoch, now, self.max_future_skew_ns, checks, session.keys
        )
        decoding: asyncio.Future[_Packed] | None = None
        if pool is not None:
            job = _WorkerJob(
                session.row_id,
                session.name,
                batch.epoch,
                now,
                self.max_future_skew_ns,
                checks,
                session.key_raws if session.keys is not None else None,
                self._site_grids(session.site, checks) if FOLD_IN_WORKER else None,
                self.writer.rollup_pick(),
            )
            decoding = loop.run_in_executor(pool, _decode_packed, raw, job)
        submitted: asyncio.Future[None] = loop.create_future()
        submitted.add_done_callback(_consume)
        order.last = submitted

        async def finish() -> None:
            try:
                if prev is not None:
                    await prev  # a batch refused whole before this one: this one is not stored
                decoded: DecodedBatch | None = None
                if decoding is not None:
                    try:
                        decoded = (await decoding).unpack(raw)
                    except BrokenProcessPool:
                        log.error("the decode worker died; decoding on the event loop from now on")
                        self.close()
                if decoded is None:
                    whole, records = split_batch(raw)
                    decoded = decode_batch(whole, records, ctx)
                self._store(decoded, ctx, done)
            except BaseException as exc:
                if not done.done():
                    done.set_exception(exc)
                    done.add_done_callback(_consume)  # the stream may have ended on an earlier one
                submitted.set_exception(
                    exc if isinstance(exc, Exception) else RuntimeError("an earlier batch was cancelled")
                )
                if isinstance(exc, asyncio.CancelledError):
                    raise
            else:
                submitted.set_result(None)

        order.tasks.add(task := asyncio.ensure_future(finish()))
        task.add_done_callback(order.tasks.discard)
        return done

    def _store(
        self, d: DecodedBatch, ctx: BatchContext, done: asyncio.Future[pb.BatchAck]
    ) -> asyncio.Future[pb.BatchAck]:
        """Hand a decoded batch to the writer; ``done`` resolves with its ack after the commit."""
        if d.undecodable:
            log.warning("undecodable record batch refused from %r", ctx.agent_name)
            done.set_result(pb.BatchAck(rejected=[pb.Rejection(seq=0, reason="undecodable batch")]))
            return done
        if d.problem is not None:
            log.warning("batch from %r refused: %s", ctx.agent_name, d.problem)
            done.set_result(pb.BatchAck(epoch=ctx.epoch, rejected=[pb.Rejection(seq=0, reason=d.problem)]))
            return done
        if d.chain_error is not None:
            raise ChainRefused(d.chain_error)
        for count, reason, first, through in d.gap_notes:
            log.warning(
                "agent %r reports %d results lost to its spool (%s), seqs %d..%d",
                ctx.agent_name,
                count,
                reason,
                first,
                through,
            )
        rejections = d.rejections
        if rejections:
            log.warning(
                "agent %r: %d of %d records rejected (first: seq %d: %s)",
                ctx.agent_name,
                len(rejections),
                d.records,
                rejections[0][0],
                rejections[0][1],
            )
        ingest = self.writer.ingest(
            ctx.agent_row,
            ctx.epoch,
            d.first_seq,
            d.last_seq,
            d.rows,
            rejections,
            ctx.now_ns,
            gaps=d.gaps,
            clocks=d.clocks,
            raw=d.log_rows,
            links=d.links,
            agent_name=ctx.agent_name,
            folded=d.folded,
        )
        rejected_pb = [pb.Rejection(seq=s, reason=r) for s, r in rejections]
        epoch = ctx.epoch

        def to_ack(f: asyncio.Future[IngestOutcome]) -> None:
            if done.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                done.set_exception(exc)
                return
            outcome = f.result()
            done.set_result(pb.BatchAck(epoch=epoch, acked_seq=outcome.acked_seq, rejected=rejected_pb))

        asyncio.ensure_future(ingest).add_done_callback(to_ack)
        return done

    # ---- Enroll and Renew -------------------------------------------------------

    async def Enroll(self, request: pb.EnrollRequest, context: Context) -> pb.EnrollResponse:
        if self.pki is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this collector runs without TLS (--insecure)")
        assert self.pki is not None
        name = request.name
        if (
            len(name) > 200
            or "\x00" in name
            or len(request.token) > 200
            or len(request.csr_pem) > 16384
            or len(request.signing_key) not in (0, 32)
        ):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed enrolment request")
        now = self.clock()
        # Sign first (no side effects), then consume the token atomically with the record of the certificate.
        provisional = AgentIdentity("", name)
        try:
            consumed = await self.writer.consume_token(request.token, name, "", 0, now, dry_run=True)
            provisional = AgentIdentity(*consumed)
            cert = self.pki.issue_agent_cert(request.csr_pem, provisional, days=self.cert_days)
            site, agent = await self.writer.consume_token(
                request.token,
                name,
                cert_serial(cert),
                int(cert_not_after(cert).timestamp() * 1e9),
                now,
                signing_key=bytes(request.signing_key),
            )
        except TokenRefused as exc:
            log.warning("enrolment refused: %s", exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except PkiError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.info("agent %r enrolled for site %r", agent, site)
        return pb.EnrollResponse(cert_pem=cert, ca_pem=self.pki.ca_cert_pem(), site=site, name=agent)

    async def Renew(self, request: pb.RenewRequest, context: Context) -> pb.RenewResponse:
        if self.pki is None or not self.require_identity:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this collector runs without TLS (--insecure)")
        assert self.pki is not None
        ident = await self._identity(context, "")
        try:
            cert = self.pki.issue_agent_cert(request.csr_pem, ident, days=self.cert_days)
        except PkiError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self.writer.record_certificate(
            cert_serial(cert),
            ident.name,
            ident.site,
            int(cert_not_after(cert).timestamp() * 1e9),
            self.clock(),
        )
        log.info("agent %r renewed its certificate", ident.name)
        return pb.RenewResponse(cert_pem=cert)

    # ---- Heartbeat ----------------------------------------------------------

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Context) -> pb.HeartbeatResponse:
        received = self.clock()
        session = await self._session(request.agent_id, context)
        await self.writer.heartbeat(
            session.row_id,
            received,
            version=request.version[:100],
            clock_offset_ns=request.clock_offset_ns,
            clock_rtt_ns=request.clock_rtt_ns,
            spool_depth=request.spool_depth,
            oldest_unsent_ns=request.oldest_unsent_ns,
        )
        return pb.HeartbeatResponse(collector_receive_ns=received, collector_transmit_ns=self.clock())


class _SiteChecks(Mapping[str, int]):
    """Check key → row id, for the checks stored for one site (current or historical).

    One per batch: keys looked up once are remembered for the rest of the batch.
    """

    def __init__(self, hub: CatalogueHub, site: str) -> None:
        self.hub = hub
        self.site = site
        self._memo: dict[str, int] = {}

    def __getitem__(self, key: str) -> int:
        row = self._memo.get(key)
        if row is not None:
            return row
        ref = self.hub.check_ref(key)
        if ref is None or ref.site != self.site:
            raise KeyError(key)
        self._memo[key] = ref.row_id
        return ref.row_id

    def get(self, key: str, default: Any = None) -> Any:
        row = self._memo.get(key)
        if row is not None:
            return row
        try:
            return self[key]
        except KeyError:
            return default

    def row_id(self, key: str) -> int:
        return self[key]

    def __iter__(self) -> Iterator[str]:  # pragma: no cover - membership and lookup are what we use
        return iter(())

    def __len__(self) -> int:  # pragma: no cover
        return 0


@dataclass(frozen=True)
class BatchContext:
    """What decoding a batch needs to know of its stream."""

    agent_row: int
    agent_name: str
    epoch: int
    now_ns: int
    max_skew_ns: int
    checks: Mapping[str, int]  # the agent's site: check key → row id
    keys: Mapping[bytes, Ed25519PublicKey] | None  # the agent's signing keys when it seals


@dataclass
class DecodedBatch:
    """A batch decoded and validated, ready for ``Writer.ingest``; or why it is refused."""

    first_seq: int = 0
    last_seq: int = 0
    records: int = 0
    undecodable: bool = False
    problem: str | None = None  # an inconsistent batch: refused alone, the stream stays open
    chain_error: str | None = None  # a broken chain: refused whole, the stream is ended
    rows: Sequence[ResultRow] = field(default_factory=list)
    gaps: list[tuple[Any, ...]] = field(default_factory=list)
    clocks: list[tuple[Any, ...]] = field(default_factory=list)
    rejections: list[tuple[int, str]] = field(default_factory=list)
    log_rows: Sequence[tuple[Any, ...]] = field(default_factory=list)
    links: BatchLinks | None = None
    gap_notes: list[tuple[int, str, int, int]] = field(default_factory=list)  # count, reason, seq, through
    folded: rollups.Folded | None = None  # the rollup fold of ``rows`` (made in the decode worker)


def decode_batch(batch: pb.RecordBatch, raws: Sequence[bytes], ctx: BatchContext) -> DecodedBatch:
    """Decode, chain-check and validate one batch into the rows the writer stores (no I/O, no loop).

    Results are validated straight into columns (``wire.batch_results``: compiled where
    ``slaprobe_speedups`` is installed, else read as ``wire.IngestRecordView``; rows by column,
    ``rollups.Columns``); every other record is parsed with the real type. The outcome is
    :func:`decode_batch_exact`'s (a test holds them equal).
    """
    out = DecodedBatch(first_seq=batch.first_seq, last_seq=batch.last_seq, records=len(raws))
    agent, epoch, now = ctx.agent_row, ctx.epoch, ctx.now_ns
    checks = ctx.checks
    skew = ctx.max_skew_ns
    got = batch_results(raws, agent, epoch, checks, now, now_ns=now, max_skew_ns=skew)
    results = got.results
    if results.undecodable:  # a record the real type cannot parse
        out.undecodable = True
        return out
    seqs = got.seqs
    others = [i for i, _ in got.others]
    records: list[Any] = [None] * len(raws)  # the others, parsed with the real type
    kinds: list[str | None] = []
    ends = seqs
    if others:
        kinds = ["result"] * len(raws)
        ends = list(seqs)
        for i, record in got.others:
            records[i] = record
            kinds[i] = kind = record.WhichOneof("kind")
            if kind == "gap":
                ends[i] = int(record.gap.through_seq)
    out.problem = _batch_problem(batch, seqs, ends)
    if out.problem is not None:
        return out
    if ctx.keys is not None:
        try:
            out.links = _check_chain(ctx, seqs, kinds or ["result"] * len(raws), ends, raws, records)
        except ChainRefused as exc:
            out.chain_error = str(exc)
            return out
    n = len(raws)
    kind_numbers = _KIND_NUMBER
    out.log_rows = rollups.Columns(
        [
            [agent] * n,
            [epoch] * n,
            seqs,
            ends,
            [kind_numbers.get(k or "", 0) for k in kinds] if others else [_RESULT_KIND] * n,
            raws,
        ]
    )
    if results.seq:
        out.rows = rollups.Columns(results.columns(agent, epoch, now))
    rejections = out.rejections
    if not others:
        rejections.extend((seq, reason) for _, seq, reason in results.rejections)
        return out
    # Rejections in record order, the results' among the others'.
    pending = results.rejections[::-1]
    for i in others:
        while pending and pending[-1][0] < i:
            _, seq, reason = pending.pop()
            rejections.append((seq, reason))
        record, kind = records[i], kinds[i]
        if kind == "seal":
            if ctx.keys is None:
                rejections.append((record.seq, "a seal from an agent without a signing key on record"))
            continue
        try:
            decoded = decode_record(record, now_ns=now, max_skew_ns=skew, checks=checks)
        except InvalidRecord as exc:
            rejections.append((record.seq, str(exc)))
            continue
        payload = decoded.payload
        if isinstance(payload, Gap):
            out.gaps.extend(gap_rows(agent, epoch, decoded.seq, payload, checks, now))
            out.gap_notes.append(
                (sum(c.count for c in payload.checks), payload.reason, decoded.seq, payload.through_seq)
            )
        elif isinstance(payload, ClockSample):
            out.clocks.append(clock_row(agent, epoch, decoded.seq, payload, now))
    rejections.extend((seq, reason) for _, seq, reason in reversed(pending))
    return out


def decode_batch_exact(batch: pb.RecordBatch, raws: Sequence[bytes], ctx: BatchContext) -> DecodedBatch:
    """What :func:`decode_batch` gives, record by record with the real types and ``result_row``
    (the reference a test holds it equal to)."""
    out = DecodedBatch(first_seq=batch.first_seq, last_seq=batch.last_seq, records=len(raws))
    try:
        records = [pb.Record.FromString(r) for r in raws]
    except DecodeError:
        out.undecodable = True
        return out
    kinds = [r.WhichOneof("kind") for r in records]
    ends = [int(r.gap.through_seq) if k == "gap" else int(r.seq) for r, k in zip(records, kinds, strict=True)]
    seqs = [r.seq for r in records]
    out.problem = _batch_problem(batch, seqs, ends)
    if out.problem is not None:
        return out
    agent, epoch, now = ctx.agent_row, ctx.epoch, ctx.now_ns
    if ctx.keys is not None:
        try:
            out.links = _check_chain(ctx, seqs, kinds, ends, raws, records)
        except ChainRefused as exc:
            out.chain_error = str(exc)
            return out
    out.log_rows = [
        (agent, epoch, r.seq, end, _KIND_NUMBER.get(k or "", 0), b)
        for r, k, end, b in zip(records, kinds, ends, raws, strict=True)
    ]
    rows: list[ResultRow] = []
    out.rows = rows
    rejections = out.rejections
    checks = ctx.checks
    skew = ctx.max_skew_ns
    for record, kind in zip(records, kinds, strict=True):
        try:
            if kind == "result":
                rows.append(result_row(record, agent, epoch, checks, now, now_ns=now, max_skew_ns=skew))
                continue
            if kind == "seal":
                if ctx.keys is None:
                    rejections.append((record.seq, "a seal from an agent without a signing key on record"))
                continue
            decoded = decode_record(record, now_ns=now, max_skew_ns=skew, checks=checks)
        except InvalidRecord as exc:
            rejections.append((record.seq, str(exc)))
            continue
        payload = decoded.payload
        if isinstance(payload, Gap):
            out.gaps.extend(gap_rows(agent, epoch, decoded.seq, payload, checks, now))
            out.gap_notes.append(
                (sum(c.count for c in payload.checks), payload.reason, decoded.seq, payload.through_seq)
            )
        elif isinstance(payload, ClockSample):
            out.clocks.append(clock_row(agent, epoch, decoded.seq, payload, now))
    return out


@dataclass
class _Order:
    """One stream's batches on their way to the writer: the last one handed over (or failing)."""

    last: asyncio.Future[None] | None = None
    tasks: set[asyncio.Future[None]] = field(default_factory=set)


def _worker_ready() -> int:
    """The decode worker's first job: nothing but proving it runs (its imports came with it)."""
    return os.getpid()


def _log_worker_start(f: asyncio.Future[int]) -> None:
    if f.cancelled():
        return
    exc = f.exception()
    if exc is not None:  # each batch then finds the pool broken and decodes on the event loop
        log.warning("the decode worker did not start: %s", exc)


def _consume(f: asyncio.Future[Any]) -> None:
    """Mark a hand-over's failure as seen (the batch's ack future carries it to the stream)."""
    if not f.cancelled():
        f.exception()


@dataclass(frozen=True)
class _WorkerJob:
    """A batch's context as sent to the decode worker (plain values: it is pickled)."""

    agent_row: int
    agent_name: str
    epoch: int
    now_ns: int
    max_skew_ns: int
    checks: dict[str, int]
    keys: tuple[bytes, ...] | None
    # The writer's rollup grids for the site's checks, and the positions fold reads: the worker
    # folds the rows for the rollups too (None: the writer folds them).
    grids: tuple[tuple[int, int], dict[int, list[rollups.Grid]]] | None = None
    pick: tuple[int, ...] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        # The site's checks, grids and pick are the same for every batch of a site until the
        # catalogue changes: pickled once (``_site_blob``), sent as those bytes, and unpickled
        # once per worker (``_site_of``), not a dict of every check each way per batch.
        scalars = (self.agent_row, self.agent_name, self.epoch, self.now_ns, self.max_skew_ns, self.keys)
        return (_unpickle_job, (scalars, _site_blob(self.checks, self.grids, self.pick)))


# Main process: (id of checks, id of grids, generation) -> (the objects, kept alive; their pickle).
_site_blobs: dict[tuple[int, int, Any], tuple[Any, Any, bytes]] = {}
# Decode worker: a site's pickle -> what it holds.
_worker_sites: dict[bytes, tuple[Any, Any, Any]] = {}


def _site_blob(checks: dict[str, int], grids: Any, pick: tuple[int, ...]) -> bytes:
    key = (id(checks), id(grids[1]) if grids else 0, (grids[0] if grids else None, pick))
    found = _site_blobs.get(key)
    if found is None:
        if len(_site_blobs) >= 256:
            _site_blobs.clear()
        found = _site_blobs[key] = (checks, grids, pickle.dumps((checks, grids, pick), protocol=5))
    return found[2]


def _site_of(blob: bytes) -> tuple[Any, Any, Any]:
    found = _worker_sites.get(blob)
    if found is None:
        if len(_worker_sites) >= 256:
            _worker_sites.clear()
        found = _worker_sites[blob] = pickle.loads(blob)
    return found


def _unpickle_job(scalars: tuple[Any, ...], site: bytes) -> _WorkerJob:
    agent_row, agent_name, epoch, now_ns, max_skew_ns, keys = scalars
    checks, grids, pick = _site_of(site)
    return _WorkerJob(agent_row, agent_name, epoch, now_ns, max_skew_ns, checks, keys, grids, pick)


# Text columns whose values repeat (pickled once each when they are the same object); phase
# timings are unique to each result, so that column is sent as it is.
_STR_COLUMNS = frozenset(
    i for i, c in enumerate(RESULT_COLUMNS) if c in ("check_revision", "error_kind", "detail", "fields")
)
_UNIQUE_STR_COLUMNS = frozenset(i for i, c in enumerate(RESULT_COLUMNS) if c == "phases")
_worker_keys: dict[tuple[bytes, ...], dict[bytes, Ed25519PublicKey]] = {}
_PICKED = tuple(range(9))  # fold's columns, when they are all it is given


@dataclass
class _Packed:
    """A DecodedBatch as it crosses the process boundary: result rows and record log rows by
    column, integers in arrays, repeated strings once. Pickling 1,000 row tuples costs ~5 µs a
    row each way; this costs a fraction of that."""

    decoded: DecodedBatch  # without rows and log rows
    columns: list[Any]
    log_agent: int
    log_epoch: int
    log_columns: list[Any]
    # None: the records' bytes stay behind, and unpack() splits them off the batch it was given.
    log_raws: list[bytearray] | None

    @staticmethod
    def pack(d: DecodedBatch, agent: int, epoch: int) -> _Packed:
        rows, logs = d.rows, d.log_rows
        d.rows, d.log_rows = [], []
        columns: list[Any] = []
        if rows:
            by_column = rows.columns if isinstance(rows, rollups.Columns) else zip(*rows, strict=True)
            for i, col in enumerate(by_column):
                if i in _STR_COLUMNS:
                    seen: dict[str, str] = {}
                    columns.append([seen.setdefault(v, v) for v in col])
                elif i in _UNIQUE_STR_COLUMNS:
                    columns.append(list(col))
                else:
                    columns.append(_ints(col))
        log_columns: list[Any] = []
        raws: list[bytearray] | None = None
        if logs:
            _, _, seqs, ends, kinds, raw_col = (
                logs.columns if isinstance(logs, rollups.Columns) else zip(*logs, strict=True)
            )
            log_columns = [_ints(seqs), _ints(ends), _ints(kinds)]
            if rollups.compiled_store is None:
                # As bytearrays: Python's sqlite3 binds those (and str, int, float) directly, but
                # looks a bytes object up as something to adapt first (a failed attribute lookup
                # each, ~0.85 µs a row in the writer); a blob either way, the same bytes stored.
                raws = list(map(bytearray, raw_col))
            # Else the compiled insert binds bytes as they are, and the collector, which holds the
            # batch, splits the records off it again (~30 µs a batch) rather than receive a copy
            # (~0.2 ms a batch to make, pickle and unpickle, and 180 kB more through the pipe).
        return _Packed(d, columns, agent, epoch, log_columns, raws)

    def unpack(self, raw: bytes) -> DecodedBatch:
        """The batch (``raw``: the bytes the worker decoded) again, its rows left by column
        (``rollups.Columns``): the writer binds its statements from the columns, and no tuple is
        made per row on the event loop."""
        d = self.decoded
        if self.columns:
            d.rows = rollups.Columns(self.columns)
        if self.log_columns:
            raws: Sequence[Any] = self.log_raws if self.log_raws is not None else split_batch(raw)[1]
            n = len(raws)
            if any(len(c) != n for c in self.log_columns):
                raise RuntimeError("the batch's records are not the ones the decode worker split")
            d.log_rows = rollups.Columns([[self.log_agent] * n, [self.log_epoch] * n, *self.log_columns, raws])
        return d


def _ints(col: Sequence[int]) -> Any:
    try:
        return array("q", col)
    except OverflowError:  # beyond int64 (an epoch is a uint64): as it is
        return list(col)


_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031  # Linux (fcntl.F_SETPIPE_SZ from Python 3.10, not on every platform)


def _widen_pipes(pool: ProcessPoolExecutor) -> None:
    """Give the pool's two pipes (jobs to the workers, results back) 1 MiB of buffer, Linux's
    default limit for anyone, instead of 64 KiB.

    Why: a job (a batch, ~170 KiB for 1,000 results) and a result (~380 KiB) then cross in one
    write each. Through 64 KiB the worker sat blocked in its write until this process's result
    thread, which needs the GIL for every chunk it reads, had drained the pipe six times (a
    quarter of the worker's samples in a profile of the ingest bench). Micro-benchmark (40
    batches through a one-worker pool): 22-32 -> 18-25 µs of wall a result, this process's CPU
    a little lower. Best effort: the pool's pipes are private attributes, and the kernel may
    refuse; the pool works either way.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a Unix
        return
    for queue_attr in ("_call_queue", "_result_queue"):
        conn = getattr(getattr(pool, queue_attr, None), "_reader", None)
        try:
            fcntl.fcntl(conn.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError) as exc:
            log.debug("decode pool pipe left at its size: %s", exc)


def _worker_init() -> None:
    """A decode worker's garbage collection: its imports frozen (never traversed again), young
    collections after 10,000 new containers instead of 700 (a batch makes tuples by the
    thousand, nearly all freed at once). Measured: ~1-3 µs of collections per result -> ~0."""
    gc.set_threshold(10_000, 10, 10)
    gc.freeze()


def _decode_packed(raw: bytes, job: _WorkerJob) -> _Packed:
    """The decode worker's task: :func:`decode_batch` of a raw batch, packed for the way back."""
    keys = None
    if job.keys is not None:
        keys = _worker_keys.get(job.keys)
        if keys is None:
            if len(_worker_keys) > 10_000:
                _worker_keys.clear()
            keys = _worker_keys[job.keys] = public_keys(job.keys)
    try:
        batch, raws = split_batch(raw)
    except DecodeError:
        return _Packed(DecodedBatch(undecodable=True), [], 0, 0, [], [])
    ctx = BatchContext(
        job.agent_row, job.agent_name, job.epoch, job.now_ns, job.max_skew_ns, job.checks, keys
    )
    d = decode_batch(batch, raws, ctx)
    # Fold only where it pays: merging a fold costs the writer about what folding a row does, so a
    # batch with about one row per check (a backlog over many checks) is left to the writer's fold.
    rows = d.rows
    if job.grids is not None and job.pick and rows:
        # Folded from the columns it reads (no row tuple of every column is made).
        if isinstance(rows, rollups.Columns):
            picked: Sequence[Sequence[Any]] = [rows.columns[i] for i in job.pick]
        else:
            picked = list(zip(*rows, strict=True))
            picked = [picked[i] for i in job.pick]
        if len(set(picked[1])) * FOLD_MIN_ROWS_PER_CHECK > len(rows):
            return _Packed.pack(d, job.agent_row, job.epoch)
        generation, grids = job.grids
        slots: rollups.Slots = {}
        hours: rollups.Hours = {}
        try:
            rollups.fold(zip(*picked, strict=True), _PICKED, grids, slots, hours)
        except KeyError:  # a check without grids yet: the writer folds these rows itself
            pass
        else:
            d.folded = (generation, slots, hours)
    return _Packed.pack(d, job.agent_row, job.epoch)


def _check_chain(
    ctx: BatchContext,
    seqs: Sequence[int],
    kinds: Sequence[str | None],
    ends: Sequence[int],
    raws: Sequence[bytes],
    records: Sequence[pb.Record | None],
) -> BatchLinks:
    """Check a sealed agent's links within the batch (digests, signatures, order).

    ``records[i]`` is read for the seals only (the real type). Returns what the writer needs to
    check the batch's first link against the stream's stored head. Raises ChainRefused, naming
    the agent and the link, when a link fails.
    """
    assert ctx.keys is not None
    epoch = ctx.epoch
    walker = ChainWalker(epoch, ctx.keys, head=None, next_seq=seqs[0], signatures="all")
    first: Link | None = None
    try:
        for i, (seq, kind, end, raw) in enumerate(zip(seqs, kinds, ends, raws, strict=True)):
            if kind == "seal":
                record = records[i]
                assert record is not None
                link = walker.seal(parse_link(seq, record.seal))
                first = first or link
            else:
                walker.record(seq, end, raw)
        walker.finish()
    except ChainError as exc:
        raise ChainRefused(f"agent {ctx.agent_name!r}, epoch {epoch}: record chain broken at {exc}") from None
    except DecodeError:
        raise ChainRefused(f"agent {ctx.agent_name!r}, epoch {epoch}: undecodable seal") from None
    assert first is not None and walker.last_link is not None
    return BatchLinks(first.body.first_seq, first.prev, walker.last_link.seq, walker.head or b"")


def _batch_problem(batch: pb.RecordBatch, seqs: Sequence[int], ends: Sequence[int]) -> str | None:
    n = len(seqs)
    if n == 0:
        return "empty batch"
    if n > MAX_BATCH_RECORDS:
        return f"batch of {n} records exceeds the limit of {MAX_BATCH_RECORDS}"
    if batch.first_seq < 1 or batch.last_seq < batch.first_seq:
        return f"batch header {batch.first_seq}..{batch.last_seq} is not a sequence range"
    expected = batch.first_seq
    for i, (seq, end) in enumerate(zip(seqs, ends, strict=True)):
        if seq != expected:
            return f"record {i} has seq {seq}, expected {expected}"
        if end < seq:
            return f"record {i} ends before it starts"
        expected = end + 1
    if expected - 1 != batch.last_seq:
        return (
            f"batch header {batch.first_seq}..{batch.last_seq} does not match its records (..{expected - 1})"
        )
    return None
