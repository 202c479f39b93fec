"""The agent's connection to its collector: register, follow checks, push records, heartbeat.

One session = one registration plus three concurrent calls. Any call
failing ends the session; the link then waits (exponential backoff with
full jitter, 1 s doubling to a 30 s cap, reset after a good session) and
starts a new one. Probing is not involved: runners keep appending to the
outbox whatever the link is doing, and the new session resends everything
after the collector's acknowledgement.

gRPC status codes are mapped in one place, :func:`is_fatal`: a fatal code
(the collector does not know our site, refuses our identity) stops the agent
with the collector's message; everything else is retried.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime

import grpc

from agent.identity import IdentityError, TlsFiles, renew
from agent.outbox import Outbox
from agent.wire import batch_bytes, check_from_pb
from protos import slaprobe_v1_pb2 as pb
from protos import slaprobe_v1_pb2_grpc as pb_grpc
from slaprobe import __version__
from slaprobe.model import CheckSpec, ClockSample

log = logging.getLogger(__name__)

FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def is_fatal(code: grpc.StatusCode | None) -> bool:
    return code in FATAL_CODES


class FatalLinkError(Exception):
    """The collector refused us for a reason retrying will not fix."""


class CertificateRenewed(Exception):
    """The session ends so the next one uses the renewed certificate."""


class Backoff:
    """Exponential backoff with full jitter; ``reset()`` after a good connection."""

    def __init__(
        self,
        initial_s: float = 1.0,
        cap_s: float = 30.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.rng = rng
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.initial_s * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        # Full jitter, but never below half the ceiling: a fleet spreads out without hammering.
        return ceiling / 2 + self.rng() * ceiling / 2

    def reset(self) -> None:
        self.attempt = 0


def _most_serious(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A fatal gRPC status wins, then any gRPC error, then the first failure."""
    leaves: list[BaseException] = []

    def walk(g: BaseExceptionGroup[BaseException]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                walk(e)
            else:
                leaves.append(e)

    walk(group)
    for e in leaves:
        if isinstance(e, grpc.aio.AioRpcError) and is_fatal(e.code()):
            return e
    for e in leaves:
        if isinstance(e, grpc.aio.AioRpcError):
            return e
    return leaves[0]


PUSH_METHOD = "/slaprobe.v1.Collector/PushRecords"

ChangeHandler = Callable[[bool, list[CheckSpec], list[str]], None]


def channel_options(keepalive_s: float = 20.0) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        # Notice a dead path (no FIN, no RST) within a minute: ping every 20 s, give up after 10 s.
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(max(1.0, keepalive_s / 2) * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Without this, gRPC sends at most one ping per 5 minutes while no data flows: exactly when
        # a path has silently died.
        ("grpc.http2.min_sent_ping_interval_without_data_ms", int(keepalive_s * 1000)),
        # A session owns its connection: without this, a new channel would share the old (possibly
        # silently dead) connection through gRPC's global subchannel pool.
        ("grpc.use_local_subchannel_pool", 1),
        # Our own backoff decides when to reconnect.
        ("grpc.initial_reconnect_backoff_ms", 1000),
        ("grpc.max_reconnect_backoff_ms", 30_000),
    ]


class CollectorLink:
    def __init__(
        self,
        *,
        address: str,
        agent_id: str,
        site: str,
        outbox: Outbox,
        known_checks: Callable[[], dict[str, str]],
        on_changes: ChangeHandler,
        batch_max: int = 1000,
        heartbeat_s: float = 15.0,
        backoff: Backoff | None = None,
        window_records: int = 50_000,
        keepalive_s: float = 20.0,
        tls: TlsFiles | None = None,
    ) -> None:
        self.keepalive_s = keepalive_s
        self.tls = tls
        self.address = address
        self.agent_id = agent_id
        self.site = site
        self.outbox = outbox
        self.known_checks = known_checks
        self.on_changes = on_changes
        self.batch_max = batch_max
        self.heartbeat_s = heartbeat_s
        self.backoff = backoff or Backoff()
        self.window_records = window_records
        self.connected = asyncio.Event()
        self.clock: ClockSample | None = None
        self.sessions = 0
        self._acked_event = asyncio.Event()

    async def run(self) -> None:
        """Connect, and reconnect, until cancelled or refused for good (FatalLinkError)."""
        while True:
            try:
                try:
                    await self._session()
                except BaseExceptionGroup as group:
                    # One call of the session failed and the task group cancelled the rest:
                    # judge the session by its most serious failure.
                    raise _most_serious(group) from None
                log.warning("collector %s ended the session", self.address)
            except CertificateRenewed:
                log.info(
                    "certificate renewed (valid until %s); reconnecting with it",
                    self.tls and self.tls.not_after(),
                )
                self.connected.clear()
                continue
            except IdentityError as exc:
                raise FatalLinkError(str(exc)) from exc
            except FatalLinkError:
                raise
            except grpc.aio.AioRpcError as exc:
                if is_fatal(exc.code()):
                    raise FatalLinkError(
                        f"collector {self.address} refused this agent: {exc.code().name}: {exc.details()}"
                    ) from exc
                log.warning("collector %s unavailable (%s: %s)", self.address, exc.code().name, exc.details())
            except (OSError, grpc.RpcError) as exc:
                log.warning("collector %s unreachable: %s", self.address, exc)
            except Exception as exc:
                # A bug in a session must not stop an agent that keeps probing: log it loudly, retry.
                log.exception("collector session failed unexpectedly: %s", exc)
            finally:
                self.connected.clear()
            delay = self.backoff.next_delay()
            log.info("reconnecting in %.1f s (%d records waiting)", delay, self.outbox.depth)
            await asyncio.sleep(delay)

    def _channel(self) -> grpc.aio.Channel:
        options = channel_options(self.keepalive_s)
        if self.tls is None:
            return grpc.aio.insecure_channel(self.address, options=options)
        # Credentials are read per session, so a renewed certificate is used from the next one on.
        return grpc.aio.secure_channel(self.address, self.tls.credentials(), options=options)

    async def _session(self) -> None:
        async with self._channel() as channel:
            stub = pb_grpc.CollectorStub(channel)
            # Connect first, so connection setup does not skew the clock exchange below.
            await asyncio.wait_for(channel.channel_ready(), timeout=15.0)
            t0 = time.time_ns()
            reply = await stub.Register(
                pb.RegisterRequest(
                    agent_id=self.agent_id,
                    site=self.site,
                    version=__version__,
                    epoch=self.outbox.epoch,
                    agent_time_ns=t0,
                    hostname=socket.gethostname(),
                    signing_key=self.outbox.signing_key,
                ),
                timeout=15.0,
            )
            clock = self._clock_sample(
                t0, reply.collector_receive_ns, reply.collector_transmit_ns, time.time_ns()
            )
            self.outbox.ack(reply.acked_seq)
            self.sessions += 1
            log.info(
                "registered with collector %s (version %s); clock offset %+.1f ms, rtt %.1f ms; %d records to send",
                self.address,
                reply.collector_version,
                clock.offset_ns / 1e6,
                clock.rtt_ns / 1e6,
                self.outbox.depth,
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch(stub))
                tg.create_task(self._push(channel))
                tg.create_task(self._heartbeat(stub))
                tg.create_task(self._renewal(channel))

    async def _watch(self, stub: pb_grpc.CollectorStub) -> None:
        known = self.known_checks()
        call = stub.WatchChecks(
            pb.WatchChecksRequest(
                agent_id=self.agent_id,
                known=[pb.KnownCheck(id=k, revision=r) for k, r in sorted(known.items())],
            )
        )
        async for changes in call:
            upserts = []
            for c in changes.upserts:
                try:
                    upserts.append(check_from_pb(c))
                except ValueError as exc:
                    log.error("ignoring malformed check from collector: %s", exc)
            self.on_changes(changes.snapshot, upserts, list(changes.deletes))
            if changes.snapshot:
                self.connected.set()
                self.backoff.reset()
        raise ConnectionError("check stream closed by the collector")

    async def _push(self, channel: grpc.aio.Channel) -> None:
        # Raw bytes up: batches are assembled from the records' stored encoding (agent/wire.py).
        push: grpc.aio.StreamStreamMultiCallable[bytes, pb.BatchAck] = channel.stream_stream(
            PUSH_METHOD, request_serializer=None, response_deserializer=pb.BatchAck.FromString
        )
        call = push()
        sent = self.outbox.acked_seq

        async def read_acks() -> None:
            async for ack in call:
                for rejection in ack.rejected:
                    log.error(
                        "collector rejected %s: %s",
                        f"record {rejection.seq}" if rejection.seq else "a batch",
                        rejection.reason,
                    )
                if ack.epoch == self.outbox.epoch:
                    self.outbox.ack(ack.acked_seq)
                    self._acked_event.set()
            raise ConnectionError("record stream closed by the collector")

        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(read_acks())
            while not reader.done():
                if sent - self.outbox.acked_seq >= self.window_records:
                    self._acked_event.clear()
                    await self._acked_event.wait()
                    continue
                start = max(sent, self.outbox.acked_seq)
                records = await self.outbox.read(start, self.batch_max)
                if not records:
                    await self.outbox.wait_beyond(start)
                    continue
                await call.write(
                    batch_bytes(
                        self.agent_id,
                        self.outbox.epoch,
                        records[0].seq,
                        records[-1].through_seq,
                        [r.data for r in records],
                    )
                )
                sent = records[-1].through_seq

    async def _heartbeat(self, stub: pb_grpc.CollectorStub) -> None:
        """Report liveness, spool and clock at once (the fleet view needs them), then periodically."""
        first = True
        while True:
            if not first:
                await asyncio.sleep(self.heartbeat_s)
            first = False
            sample = self.clock
            t0 = time.time_ns()
            reply = await stub.Heartbeat(
                pb.HeartbeatRequest(
                    agent_id=self.agent_id,
                    epoch=self.outbox.epoch,
                    agent_time_ns=t0,
                    spool_depth=self.outbox.depth,
                    oldest_unsent_ns=self.outbox.oldest_unacked_ns,
                    version=__version__,
                    clock_offset_ns=sample.offset_ns if sample else 0,
                    clock_rtt_ns=sample.rtt_ns if sample else 0,
                ),
                timeout=max(5.0, self.heartbeat_s),
            )
            self._clock_sample(t0, reply.collector_receive_ns, reply.collector_transmit_ns, time.time_ns())

    async def _renewal(self, channel: grpc.aio.Channel) -> None:
        """Renew the client certificate once two thirds of its life have passed, then reconnect."""
        if self.tls is None:
            await asyncio.Event().wait()
            return
        while True:
            wait = (self.tls.renew_at() - datetime.now(UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, 3600.0))
                continue
            await renew(channel, self.tls)
            raise CertificateRenewed()

    def _clock_sample(self, t0: int, t1: int, t2: int, t3: int) -> ClockSample:
        """Keep the latest estimate and record the exchange itself as evidence."""
        sample = ClockSample(t0, t1, t2, t3)
        self.clock = sample
        self.outbox.append(sample)
        return sample
