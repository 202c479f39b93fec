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
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from collector.hub import CatalogueHub
from collector.store import IngestOutcome, ResultRow, Writer, clock_row, gap_rows, measurement_row
from collector.wire import InvalidRecord, check_to_pb, decode_record, record_span_end
from protos import slaprobe_v1_pb2 as pb
from protos import slaprobe_v1_pb2_grpc as pb_grpc
from slaprobe import __version__
from slaprobe.model import Gap, Measurement

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

MAX_BATCH_RECORDS = 10_000
ACK_WINDOW = 64  # batches decoded ahead of their commit, per stream


@dataclass
class AgentSession:
    row_id: int
    name: str
    site: str
    epoch: int


class CollectorService:
    def __init__(
        self,
        hub: CatalogueHub,
        writer: Writer,
        *,
        clock: Callable[[], int] = time.time_ns,
        max_future_skew_ns: int = 300 * 1_000_000_000,
    ) -> None:
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
        }
        assert set(handlers) == set(pb.DESCRIPTOR.services_by_name["Collector"].methods_by_name)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("slaprobe.v1.Collector", handlers),)
        )
        _ = pb_grpc  # the generated stub is what agents use; the contract is the same file

    # ---- Register -----------------------------------------------------------

    async def Register(self, request: pb.RegisterRequest, context: Context) -> pb.RegisterResponse:
        received = self.clock()
        name = request.agent_id
        if not name or len(name) > 200 or "\x00" in name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "agent_id must be 1-200 characters, no NUL")
        if not self.hub.has_site(request.site):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"site {request.site!r} is not in the collector's catalogue",
            )
        agent_row, acked = await self.writer.register_agent(
            name, request.site, request.version[:100], request.hostname[:255], request.epoch, received
        )
        self.sessions[name] = AgentSession(agent_row, name, request.site, request.epoch)
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
        session = self.sessions.get(agent_id)
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
            try:
                while True:
                    get = asyncio.ensure_future(sub.queue.get())
                    done, _ = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if get not in done:
                        get.cancel()
                        return
                    change = get.result()
                    yield pb.CheckChanges(
                        snapshot=False,
                        upserts=[check_to_pb(c) for c in change.upserts],
                        deletes=list(change.deletes),
                    )
            finally:
                stop.cancel()
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

        acker = asyncio.create_task(write_acks())
        try:
            while not self.stopping.is_set():
                raw = await context.read()
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
        except Exception as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, grpc.aio.AbortError):
                raise
            log.warning("record stream ended: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "storage failed; resend unacknowledged records")
        finally:
            acker.cancel()

    async def _accept(self, raw: bytes, context: Context) -> asyncio.Future[pb.BatchAck]:
        """Decode and validate a batch; return a future of its ack (resolved after commit)."""
        done: asyncio.Future[pb.BatchAck] = asyncio.get_running_loop().create_future()
        try:
            batch = pb.RecordBatch.FromString(raw)
        except DecodeError:
            log.warning("undecodable record batch refused (%d bytes)", len(raw))
            done.set_result(pb.BatchAck(rejected=[pb.Rejection(seq=0, reason="undecodable batch")]))
            return done
        session = await self._session(batch.agent_id, context)
        problem = _batch_problem(batch)
        if problem is not None:
            log.warning("batch from %r refused: %s", session.name, problem)
            done.set_result(pb.BatchAck(epoch=batch.epoch, rejected=[pb.Rejection(seq=0, reason=problem)]))
            return done
        now = self.clock()
        rows: list[ResultRow] = []
        gaps: list[tuple[object, ...]] = []
        clocks: list[tuple[object, ...]] = []
        rejections: list[tuple[int, str]] = []
        site_checks = _SiteChecks(self.hub, session.site)
        agent, epoch = session.row_id, batch.epoch
        for record in batch.records:
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
            agent, epoch, batch.first_seq, batch.last_seq, rows, rejections, now, gaps=gaps, clocks=clocks
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


def _batch_problem(batch: pb.RecordBatch) -> str | None:
    n = len(batch.records)
    if n == 0:
        return "empty batch"
    if n > MAX_BATCH_RECORDS:
        return f"batch of {n} records exceeds the limit of {MAX_BATCH_RECORDS}"
    if batch.first_seq < 1 or batch.last_seq < batch.first_seq:
        return f"batch header {batch.first_seq}..{batch.last_seq} is not a sequence range"
    expected = batch.first_seq
    for i, record in enumerate(batch.records):
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
