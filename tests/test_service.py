"""The collector's gRPC service against a real in-process server on loopback."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from collector.server import Collector, CollectorSettings
from protos import slaprobe_v1_pb2 as pb
from protos import slaprobe_v1_pb2_grpc as pb_grpc

CAT = """
sites:
  lab:
    checks:
      web: {type: http, target: "http://127.0.0.1:1/", interval: 10s, timeout: 1s}
      db: {type: tcp, target: "127.0.0.1:5432", interval: 10s, timeout: 1s}
  other:
    checks:
      web: {type: http, target: "http://127.0.0.1:2/", interval: 10s, timeout: 1s}
"""


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[Collector]:
    cat = tmp_path / "cat.yaml"
    cat.write_text(CAT)
    c = Collector(CollectorSettings(cat, tmp_path / "s.db", "127.0.0.1:0", grace_s=1, insecure=True))
    await c.start()
    yield c
    await c.stop()


def result(check: str = "lab/web", ok: bool = True) -> pb.Result:
    now = time.time_ns()
    return pb.Result(
        check_id=check,
        check_revision="r",
        scheduled_ns=now - 10**9,
        started_ns=now - 10**9 + 1000,
        duration_ns=2_000_000,
        success=ok,
        error_kind="" if ok else "refused",
        detail="x",
        phases=[pb.Phase(name="connect", duration_ns=1_000_000)],
        fields={"status_code": pb.FieldValue(number=200)},
    )


def batch(epoch: int, first: int, results: list[pb.Result], agent: str = "a1") -> pb.RecordBatch:
    return pb.RecordBatch(
        agent_id=agent,
        epoch=epoch,
        first_seq=first,
        last_seq=first + len(results) - 1,
        records=[pb.Record(seq=first + i, result=r) for i, r in enumerate(results)],
    )


async def register(
    stub: pb_grpc.CollectorStub, agent: str = "a1", site: str = "lab", epoch: int = 1
) -> pb.RegisterResponse:
    reply: pb.RegisterResponse = await stub.Register(
        pb.RegisterRequest(agent_id=agent, site=site, version="t", epoch=epoch, agent_time_ns=time.time_ns())
    )
    return reply


async def read_ack(call: grpc.aio.StreamStreamCall[bytes, pb.BatchAck]) -> pb.BatchAck:
    ack = await call.read()
    assert isinstance(ack, pb.BatchAck), ack
    return ack


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


async def test_unknown_site_is_refused_as_not_found(collector: Collector) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await register(pb_grpc.CollectorStub(ch), site="nowhere")
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nowhere" in (exc.value.details() or "")


async def test_push_before_register_is_refused(collector: Collector) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
        call = pb_grpc.CollectorStub(ch).PushRecords()
        await call.write(batch(1, 1, [result()], agent="stranger"))
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call.read()
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_register_returns_clock_and_ack(collector: Collector) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
        t0 = time.time_ns()
        reply = await register(pb_grpc.CollectorStub(ch))
        t3 = time.time_ns()
    assert t0 <= reply.collector_receive_ns <= reply.collector_transmit_ns <= t3
    assert reply.acked_seq == 0


async def test_invalid_records_are_rejected_alone_and_the_stream_survives_garbage(
    collector: Collector, tmp_path: Path
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
        stub = pb_grpc.CollectorStub(ch)
        await register(stub)
        raw: grpc.aio.StreamStreamMultiCallable[bytes, pb.BatchAck] = ch.stream_stream(
            "/slaprobe.v1.Collector/PushRecords",
            request_serializer=None,
            response_deserializer=pb.BatchAck.FromString,
        )
        call = raw()
        # 1. a batch with a record for another site's check, one failed without a kind, two good ones
        bad_kind = result(ok=False)
        bad_kind.error_kind = ""
        good = [result(), result("lab/db"), result("other/web"), bad_kind]
        await call.write(batch(1, 1, good).SerializeToString())
        ack = await read_ack(call)
        assert ack.acked_seq == 4
        assert {r.seq: r.reason for r in ack.rejected} == {
            3: "unknown check 'other/web' for this agent's site",
            4: "a failed result must carry an error kind",
        }
        # 2. bytes that are not a batch at all: refused alone, stream stays open
        await call.write(b"\xff\xff\xff\xff garbage")
        ack = await read_ack(call)
        assert [r.reason for r in ack.rejected] == ["undecodable batch"]
        # 3. a header that lies about its records: refused alone
        lying = batch(1, 5, [result()])
        lying.last_seq = 9
        await call.write(lying.SerializeToString())
        ack = await read_ack(call)
        assert "does not match" in ack.rejected[0].reason and ack.acked_seq == 0
        # 4. the stream still works
        await call.write(batch(1, 5, [result(), result()]).SerializeToString())
        ack = await read_ack(call)
        assert ack.acked_seq == 6 and not ack.rejected
        await call.done_writing()
    db = tmp_path / "s.db"
    assert rows(db, "SELECT seq FROM results ORDER BY seq") == [(1,), (2,), (5,), (6,)]
    assert rows(db, "SELECT seq FROM rejections ORDER BY seq") == [(3,), (4,)]


async def test_watch_sends_a_diff_against_what_the_agent_runs_then_pushes_changes(
    collector: Collector, tmp_path: Path
) -> None:
    assert collector.hub is not None
    web = collector.hub.catalogue.checks_for_site("lab")["lab/web"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
        stub = pb_grpc.CollectorStub(ch)
        await register(stub)
        call = stub.WatchChecks(
            pb.WatchChecksRequest(
                agent_id="a1",
                known=[
                    pb.KnownCheck(id="lab/web", revision=web.revision),
                    pb.KnownCheck(id="lab/gone", revision="x"),
                ],
            )
        )
        first = await call.read()
        assert first.snapshot
        assert [c.id for c in first.upserts] == ["lab/db"]
        assert list(first.deletes) == ["lab/gone"]
        # Change one check's interval and reload: only that check is pushed.
        (tmp_path / "cat.yaml").write_text(
            CAT.replace('target: "127.0.0.1:5432", interval: 10s', 'target: "127.0.0.1:5432", interval: 20s')
        )
        assert await collector.reload()
        change = await asyncio.wait_for(call.read(), 5)
        assert not change.snapshot
        assert [(c.id, c.interval_ms) for c in change.upserts] == [("lab/db", 20000)]
        # A broken catalogue is refused and nothing is pushed.
        (tmp_path / "cat.yaml").write_text("sites: [")
        assert not await collector.reload()
        call.cancel()
