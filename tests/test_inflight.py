"""The collector-wide bound on uncommitted batches (collector/inflight.py).

Many agents draining their spools at once must not make the collector hold every agent's
window of decoded batches in memory: with the budget full, streams stop reading and their
agents wait (their spools keep everything). Here a real collector's writer is slowed down
(a controllable delay per commit), four agents each write twenty batches without waiting
for acks, and the bytes in flight stay within the budget while everything is stored once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from agent.wire import batch_bytes
from collector import service as service_module
from collector.inflight import InflightBudget
from collector.server import Collector
from collector.store import Writer
from protos import slaprobe_v1_pb2 as pb
from tests.test_chain import collector, q, register  # noqa: F401 - the collector fixture
from tests.test_decode_worker import record

# ---- the budget alone ---------------------------------------------------------------------------


async def test_takes_wait_in_order_and_a_release_lets_the_next_in() -> None:
    b = InflightBudget(100)
    await b.take(60)
    second = asyncio.ensure_future(b.take(50))
    third = asyncio.ensure_future(b.take(10))  # would fit, but waits its turn behind the second
    await asyncio.sleep(0)
    assert not second.done() and not third.done() and b.waits == 2
    b.give(60)
    await asyncio.sleep(0)
    assert second.done() and third.done() and b.in_use == 60
    assert b.peak == 60


async def test_a_batch_larger_than_the_budget_goes_alone() -> None:
    b = InflightBudget(100)
    await b.take(500)  # nothing in flight: taken, or it could never be
    small = asyncio.ensure_future(b.take(1))
    await asyncio.sleep(0)
    assert not small.done()
    b.give(500)
    await small
    assert (b.in_use, b.peak) == (1, 500)


async def test_a_cancelled_wait_takes_nothing_and_blocks_no_one() -> None:
    b = InflightBudget(100)
    await b.take(90)
    stuck = asyncio.ensure_future(b.take(50))
    after = asyncio.ensure_future(b.take(10))
    await asyncio.sleep(0)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    await asyncio.sleep(0)
    assert after.done() and b.in_use == 100
    b.give(90)
    b.give(10)
    assert b.in_use == 0
    with pytest.raises(ValueError, match="must be positive"):
        InflightBudget(0)


# ---- a real collector under four draining agents ---------------------------------------------------


async def test_four_streams_writing_ahead_stay_within_the_budget_and_everything_is_stored(
    collector: Collector,  # noqa: F811 - the fixture imported from test_chain
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow = Writer._commit_group

    def commit_slowly(self: Writer, db: object, jobs: list[object]) -> None:
        time.sleep(0.02)  # a writer slower than the streams: what a drain of many agents looks like
        slow(self, db, jobs)  # type: ignore[arg-type]

    monkeypatch.setattr(Writer, "_commit_group", commit_slowly)
    monkeypatch.setattr(service_module, "OFFLOAD_MIN_BYTES", 1 << 30)  # decode here: one process to watch
    agents, batches, per_batch = 4, 20, 25
    payloads = {
        f"d{a}": [
            batch_bytes(
                f"d{a}",
                7,
                b * per_batch + 1,
                (b + 1) * per_batch,
                [record(b * per_batch + i + 1) for i in range(per_batch)],
            )
            for b in range(batches)
        ]
        for a in range(agents)
    }
    size = max(len(p) for ps in payloads.values() for p in ps)
    assert collector.service is not None
    budget = collector.service.inflight = InflightBudget(3 * size)  # three batches, of eighty written

    async def drain(name: str) -> list[pb.BatchAck]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
            await register(ch, name, 7, None)
            call: grpc.aio.StreamStreamCall[bytes, pb.BatchAck] = ch.stream_stream(
                "/slaprobe.v1.Collector/PushRecords",
                request_serializer=None,
                response_deserializer=pb.BatchAck.FromString,
            )()
            acks: list[pb.BatchAck] = []

            async def read_acks() -> None:
                while (ack := await call.read()) is not grpc.aio.EOF:
                    assert isinstance(ack, pb.BatchAck)
                    acks.append(ack)

            reader = asyncio.ensure_future(read_acks())
            for p in payloads[name]:  # written ahead, as a draining agent does within its window
                await call.write(p)
            await call.done_writing()
            await asyncio.wait_for(reader, 60)
            return acks

    all_acks = await asyncio.wait_for(asyncio.gather(*(drain(n) for n in payloads)), 120)
    for acks in all_acks:
        assert [a.acked_seq for a in acks] == [(b + 1) * per_batch for b in range(batches)]
        assert not any(a.rejected for a in acks)
    assert budget.waits > 0, "the streams never had to wait: the test did not press the budget"
    assert budget.peak <= 3 * size
    assert budget.in_use == 0  # every batch's bytes given back at its ack
    db = tmp_path / "c.db"
    (stored,) = q(db, "SELECT count(*) FROM results")[0]
    assert stored == agents * batches * per_batch
