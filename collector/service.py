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
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from collector.hub import CatalogueHub
from collector.store import (
    BatchLinks,
    ChainRefused,
    IngestOutcome,
    KeyRefused,
    ResultRow,
    TokenRefused,
    Writer,
    clock_row,
    gap_rows,
    measurement_row,
)
from collector.wire import InvalidRecord, check_to_pb, decode_record, record_span_end, split_batch
from protos import slaprobe_v1_pb2 as pb
from protos import slaprobe_v1_pb2_grpc as pb_grpc
from slaprobe import __version__
from slaprobe.chain import ChainError, ChainWalker, Link, parse_link, public_keys
from slaprobe.model import Gap, Measurement
from slaprobe.pki import AgentIdentity, CollectorPki, PkiError, cert_not_after, cert_serial

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

MAX_BATCH_RECORDS = 10_000
ACK_WINDOW = 64  # batches decoded ahead of their commit, per stream
# record_log.kind: the Record oneof's field number (0: a kind this collector does not know).
_KIND_NUMBER = {f.name: f.number for f in pb.Record.DESCRIPTOR.oneofs_by_name["kind"].fields}


@dataclass
class AgentSession:
    row_id: int
    name: str
    site: str
    epoch: int
    revoked: asyncio.Event = field(default_factory=asyncio.Event)
    # The agent's signing keys by key id when it seals its records; None when it does not.
    keys: dict[bytes, Ed25519PublicKey] | None = None


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
    ) -> None:
        self.pki = pki
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
                fut = await self._accept(raw, context)
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

    async def _accept(self, raw: bytes, context: Context) -> asyncio.Future[pb.BatchAck]:
        """Decode and validate a batch; return a future of its ack (resolved after commit)."""
        done: asyncio.Future[pb.BatchAck] = asyncio.get_running_loop().create_future()
        try:
            batch, raws = split_batch(raw)
            records = [pb.Record.FromString(r) for r in raws]
        except DecodeError:
            log.warning("undecodable record batch refused (%d bytes)", len(raw))
            done.set_result(pb.BatchAck(rejected=[pb.Rejection(seq=0, reason="undecodable batch")]))
            return done
        session = await self._session(batch.agent_id, context)
        problem = _batch_problem(batch, records)
        if problem is not None:
            log.warning("batch from %r refused: %s", session.name, problem)
            done.set_result(pb.BatchAck(epoch=batch.epoch, rejected=[pb.Rejection(seq=0, reason=problem)]))
            return done
        now = self.clock()
        agent, epoch = session.row_id, batch.epoch
        links = self._check_chain(session, epoch, records, raws)
        rows: list[ResultRow] = []
        gaps: list[tuple[object, ...]] = []
        clocks: list[tuple[object, ...]] = []
        rejections: list[tuple[int, str]] = []
        site_checks = _SiteChecks(self.hub, session.site)
        log_rows = [
            (agent, epoch, r.seq, record_span_end(r), _KIND_NUMBER.get(r.WhichOneof("kind") or "", 0), b)
            for r, b in zip(records, raws, strict=True)
        ]
        for record in records:
            if record.WhichOneof("kind") == "seal":
                if links is None:
                    rejections.append((record.seq, "a seal from an agent without a signing key on record"))
                continue
            try:
                decoded = decode_record(
                    record, now_ns=now, max_skew_ns=self.max_future_skew_ns, checks=site_checks
                )
            except InvalidRecord as exc:
                rejections.append((record.seq, str(exc)))
                continue
            payload = decoded.payload
            if isinstance(payload, Measurement):
                row_id = site_checks.row_id(payload.check_id)
                rows.append(measurement_row(agent, epoch, decoded.seq, row_id, payload, now))
            elif isinstance(payload, Gap):
                gaps.extend(gap_rows(agent, epoch, decoded.seq, payload, site_checks, now))
                log.warning(
                    "agent %r reports %d results lost to its spool (%s), seqs %d..%d",
                    session.name,
                    sum(c.count for c in payload.checks),
                    payload.reason,
                    decoded.seq,
                    payload.through_seq,
                )
            else:
                clocks.append(clock_row(agent, epoch, decoded.seq, payload, now))
        if rejections:
            log.warning(
                "agent %r: %d of %d records rejected (first: seq %d: %s)",
                session.name,
                len(rejections),
                len(batch.records),
                rejections[0][0],
                rejections[0][1],
            )
        ingest = self.writer.ingest(
            agent,
            epoch,
            batch.first_seq,
            batch.last_seq,
            rows,
            rejections,
            now,
            gaps=gaps,
            clocks=clocks,
            raw=log_rows,
            links=links,
            agent_name=session.name,
        )
        rejected_pb = [pb.Rejection(seq=s, reason=r) for s, r in rejections]

        def to_ack(f: asyncio.Future[IngestOutcome]) -> None:
            if done.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                done.set_exception(exc)
                return
            outcome = f.result()
            done.set_result(pb.BatchAck(epoch=batch.epoch, acked_seq=outcome.acked_seq, rejected=rejected_pb))

        asyncio.ensure_future(ingest).add_done_callback(to_ack)
        return done

    def _check_chain(
        self, session: AgentSession, epoch: int, records: Sequence[pb.Record], raws: Sequence[bytes]
    ) -> BatchLinks | None:
        """Check a sealed agent's links within the batch (digests, signatures, order).

        Returns what the writer needs to check the batch's first link against
        the stream's stored head, or None for an agent that does not seal.
        Raises ChainRefused, naming the agent and the link, when a link fails.
        """
        if session.keys is None:
            return None
        walker = ChainWalker(epoch, session.keys, head=None, next_seq=records[0].seq, signatures="all")
        first: Link | None = None
        try:
            for record, raw in zip(records, raws, strict=True):
                if record.WhichOneof("kind") == "seal":
                    link = walker.seal(parse_link(record.seq, record.seal))
                    first = first or link
                else:
                    walker.record(record.seq, record_span_end(record), raw)
            walker.finish()
        except ChainError as exc:
            raise ChainRefused(
                f"agent {session.name!r}, epoch {epoch}: record chain broken at {exc}"
            ) from None
        except DecodeError:
            raise ChainRefused(f"agent {session.name!r}, epoch {epoch}: undecodable seal") from None
        assert first is not None and walker.last_link is not None
        return BatchLinks(first.body.first_seq, first.prev, walker.last_link.seq, walker.head or b"")

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
    """Check key → row id, for the checks stored for one site (current or historical)."""

    def __init__(self, hub: CatalogueHub, site: str) -> None:
        self.hub = hub
        self.site = site

    def __getitem__(self, key: str) -> int:
        ref = self.hub.check_ref(key)
        if ref is None or ref.site != self.site:
            raise KeyError(key)
        return ref.row_id

    def row_id(self, key: str) -> int:
        return self[key]

    def __iter__(self) -> Iterator[str]:  # pragma: no cover - membership and lookup are what we use
        return iter(())

    def __len__(self) -> int:  # pragma: no cover
        return 0


def _batch_problem(batch: pb.RecordBatch, records: Sequence[pb.Record]) -> str | None:
    n = len(records)
    if n == 0:
        return "empty batch"
    if n > MAX_BATCH_RECORDS:
        return f"batch of {n} records exceeds the limit of {MAX_BATCH_RECORDS}"
    if batch.first_seq < 1 or batch.last_seq < batch.first_seq:
        return f"batch header {batch.first_seq}..{batch.last_seq} is not a sequence range"
    expected = batch.first_seq
    for i, record in enumerate(records):
        if record.seq != expected:
            return f"record {i} has seq {record.seq}, expected {expected}"
        end = record_span_end(record)
        if end < record.seq:
            return f"record {i} ends before it starts"
        expected = end + 1
    if expected - 1 != batch.last_seq:
        return (
            f"batch header {batch.first_seq}..{batch.last_seq} does not match its records (..{expected - 1})"
        )
    return None
