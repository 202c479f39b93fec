"""The collector's stream tests again, with every batch decoded in the decode worker process.

In production only batches of ``OFFLOAD_MIN_BYTES`` or more go to the worker; here the threshold is
0, so the sealed-stream tests of ``test_chain`` (bytes stored exactly, a broken chain refused whole
with nothing stored, resends harmless) and a bad record rejected alone run through the worker path.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import psutil
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.outbox import Stored
from agent.wire import batch_bytes
from collector import rollups, service
from collector.server import Collector, CollectorSettings
from collector.sla.histogram import merge_blobs
from collector.store import RESULT_COLUMNS
from protos import slaprobe_v1_pb2 as pb
from tests.procs import stored_records
from tests.test_chain import (  # noqa: F401 - collected here too, with the worker on
    CAT,
    as_batch,
    collector,
    push,
    q,
    register,
    sealed_spool,
    test_a_bad_batch_is_refused_whole_and_loudly_with_the_agent_named,
    test_a_resent_batch_is_harmless_and_the_chain_goes_on,
    test_sealed_batches_are_stored_with_their_bytes_and_the_head_advances,
)


@pytest.fixture(autouse=True)
def every_batch_to_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "OFFLOAD_MIN_BYTES", 0)


def record(seq: int, **change: object) -> bytes:
    now = time.time_ns()
    r = pb.Result(
        check_id="lab/web",
        check_revision="r",
        scheduled_ns=now - 10**9,
        started_ns=now - 10**9 + 5,
        duration_ns=1_000_000,
        success=True,
        detail="ok",
        phases=[pb.Phase(name="connect", duration_ns=5)],
        fields={"code": pb.FieldValue(number=200)},
    )
    for k, v in change.items():
        setattr(r, k, v)
    return pb.Record(seq=seq, result=r).SerializeToString()


async def test_the_worker_decodes_and_a_bad_record_is_rejected_alone(
    collector: Collector,  # noqa: F811 - the fixture imported from test_chain
    tmp_path: Path,
) -> None:
    records = [record(1), record(2, check_id="lab/nope"), record(3, duration_ns=-1), record(4)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
        await register(ch, "w1", 3, None)
        acks, err = await push(ch, [batch_bytes("w1", 3, 1, 4, records), b"\x2a\xff"])
    assert err is None
    assert acks[0].acked_seq == 4
    assert [(r.seq, r.reason) for r in acks[0].rejected] == [
        (2, "unknown check 'lab/nope' for this agent's site"),
        (3, "duration -1 ns is negative or absurd"),
    ]
    assert [r.reason for r in acks[1].rejected] == ["undecodable batch"]
    assert collector.service is not None and collector.service._pool is not None  # the worker ran
    db = tmp_path / "c.db"
    assert q(db, "SELECT seq FROM results ORDER BY seq") == [(1,), (4,)]
    assert [(s, r) for _a, _e, s, _k, r in stored_records(db)] == [(i + 1, r) for i, r in enumerate(records)]


def rollup_tables(db: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(db) as c:
        return {
            t: c.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4").fetchall() for t in rollups.ROLLUP_TABLES
        }


async def test_rollups_folded_in_the_worker_equal_a_rebuild_from_the_rows(
    collector: Collector,  # noqa: F811 - the fixture imported from test_chain
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = time.time_ns()
    used: list[int] = []
    stage_folded = rollups.Rollups.stage_folded

    def counted(self: rollups.Rollups, folded: rollups.Folded, rows: Sequence[Sequence[object]]) -> None:
        used.append(len(rows))
        stage_folded(self, folded, rows)

    monkeypatch.setattr(rollups.Rollups, "stage_folded", counted)
    # The worker folds only where the fold is not compiled (service.FOLD_IN_WORKER): here, always.
    monkeypatch.setattr(service, "FOLD_IN_WORKER", True)

    def rec(seq: int) -> bytes:
        ok = seq % 7 != 0
        t = now - 3600 * 10**9 + seq * 10**9  # one check at 10 s: every slot and a few more
        return record(
            seq,
            scheduled_ns=t,
            started_ns=t + 5,
            duration_ns=seq * 997 % 50_000_000,
            success=ok,
            error_kind="" if ok else "refused",
            degraded=seq % 11 == 0,
            clock_offset_ns=(seq % 5 - 2) * 3_000_000,
        )

    batches = [(lo, lo + 99) for lo in range(1, 400, 100)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
        await register(ch, "w1", 1, None)
        payloads = [batch_bytes("w1", 1, lo, hi, [rec(s) for s in range(lo, hi + 1)]) for lo, hi in batches]
        # In order, then a resend overlapping stored records (the writer folds the new ones itself).
        acks, err = await push(
            ch, [*payloads, batch_bytes("w1", 1, 351, 450, [rec(s) for s in range(351, 451)])]
        )
    assert err is None and acks[-1].acked_seq == 450
    db = tmp_path / "c.db"
    assert q(db, "SELECT count(*) FROM results") == [(450,)]
    folded = rollup_tables(db)
    copy = tmp_path / "copy.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    with sqlite3.connect(copy) as c:
        c.create_function("hist_merge", 2, merge_blobs, deterministic=True)
        rollups.rebuild(c, RESULT_COLUMNS)
    assert rollup_tables(copy) == folded
    assert used == [100, 100, 100, 100]  # every batch but the resend (it overlapped stored records)


async def read_all(call: grpc.aio.StreamStreamCall[bytes, pb.BatchAck], into: list[pb.BatchAck]) -> None:
    while True:
        ack = await call.read()
        assert isinstance(ack, pb.BatchAck)
        into.append(ack)


async def test_batches_written_ahead_are_stored_in_order_and_none_after_a_refused_one(
    collector: Collector,  # noqa: F811 - the fixture imported from test_chain
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    spool = await sealed_spool(tmp_path / "a.db", key, 40, seal_every=5)
    records = await spool.read(0, 1000)
    epoch = spool.epoch
    await spool.close()
    links = [records[i : i + 6] for i in range(0, len(records), 6)]  # five results and a seal each
    r = links[3][2]
    rec = pb.Record.FromString(r.data)
    rec.result.detail = "altered"
    links[3][2] = Stored(r.seq, r.through_seq, rec.SerializeToString())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
        await register(ch, "a1", epoch, key)
        call: grpc.aio.StreamStreamCall[bytes, pb.BatchAck] = ch.stream_stream(
            "/slaprobe.v1.Collector/PushRecords",
            request_serializer=None,
            response_deserializer=pb.BatchAck.FromString,
        )()
        for link in links:  # every batch written before any ack is read: decoded side by side
            await call.write(as_batch("a1", epoch, link))
        acks: list[pb.BatchAck] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read_all(call, acks)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert [a.acked_seq for a in acks] == [6, 12, 18]  # in order, each after its commit
    held = {s for _a, _e, s, _k, _r in stored_records(tmp_path / "c.db")}
    assert held == set(range(1, 19)), "nothing of the refused batch nor of those after it"


async def test_the_decode_worker_starts_with_the_collector_before_any_batch(
    collector: Collector,  # noqa: F811 - the fixture imported from test_chain
    tmp_path: Path,
) -> None:
    """Its spawn and imports (~1.2 s here) happen while the collector waits for agents, not in front of
    the first large batch; with ``start_decode_worker=False`` it waits for that batch, as before."""
    assert collector.decode_worker is not None
    pid = await asyncio.wait_for(collector.decode_worker, 60)
    worker = psutil.Process(pid)
    assert worker.is_running() and worker.ppid() == os.getpid()
    assert collector.service is not None and collector.service._pool is not None

    cat = tmp_path / "lazy.yaml"
    cat.write_text(CAT)
    lazy = Collector(
        CollectorSettings(
            cat, tmp_path / "lazy.db", "127.0.0.1:0", grace_s=1, insecure=True, start_decode_worker=False
        )
    )
    await lazy.start()
    try:
        assert lazy.decode_worker is None
        assert lazy.service is not None and lazy.service._pool is None
    finally:
        await lazy.stop()
