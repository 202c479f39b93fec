"""The signed record chain: the agent's spool seals what it writes, the collector checks it on ingest.

Real parts throughout: the agent's SQLite spool, the collector's gRPC server on
loopback, Ed25519 keys from ``cryptography``. Tampering is done to the bytes
that travel, the way an attacker (or a bug) would.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.outbox import Stored
from agent.spool import Spool, SpoolLimits
from agent.wire import batch_bytes
from collector.server import Collector, CollectorSettings
from protos import slaprobe_v1_pb2 as pb
from protos import slaprobe_v1_pb2_grpc as pb_grpc
from slaprobe import chain
from slaprobe.model import Measurement
from tests.procs import stored_records

CAT = """
sites:
  lab:
    checks:
      web: {type: http, target: "http://127.0.0.1:1/", interval: 10s, timeout: 1s}
"""


def measurement(i: int, check: str = "lab/web") -> Measurement:
    now = time.time_ns() - 60 * 10**9
    return Measurement(
        check, "r", now + i * 10**9, now + i * 10**9 + 1000, 2_000_000 + i, True, detail=f"run {i}"
    )


async def sealed_spool(
    path: Path, key: Ed25519PrivateKey, n: int, *, seal_every: int = 5, max_bytes: int = 512 * 1024 * 1024
) -> Spool:
    spool = Spool(
        path,
        SpoolLimits(max_bytes=max_bytes, seal_every=seal_every, seal_interval_s=3600, check_every_s=3600),
        signing_key=key,
    )
    await spool.open()
    for i in range(n):
        spool.append(measurement(i))
    await spool.flush()
    return spool


def walk(
    records: list[Stored], key: Ed25519PrivateKey, epoch: int, signatures: str = "all"
) -> chain.ChainWalker:
    walker = chain.ChainWalker(
        epoch,
        chain.public_keys([chain.public_raw(key)]),
        head=chain.GENESIS,
        next_seq=1,
        signatures=signatures,
    )
    for r in records:
        rec = pb.Record.FromString(r.data)
        if rec.WhichOneof("kind") == "seal":
            walker.seal(chain.parse_link(rec.seq, rec.seal))
        else:
            walker.record(r.seq, r.through_seq, r.data)
    walker.finish()
    return walker


# ---- the agent's spool ------------------------------------------------------------------------


async def test_spool_seals_every_n_records_and_the_chain_verifies(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    spool = await sealed_spool(tmp_path / "s.db", key, 23, seal_every=5)
    try:
        records = await spool.read(0, 1000)
        kinds = [pb.Record.FromString(r.data).WhichOneof("kind") for r in records]
        assert kinds.count("result") == 23
        assert kinds.count("seal") == 5  # 4 full links of 5, one of 3 sealed by flush
        assert kinds[-1] == "seal" and spool.last_seq == records[-1].seq
        walker = walk(records, key, spool.epoch)
        assert walker.links == 5 and walker.records == 23
    finally:
        await spool.close()


async def test_reads_end_on_a_seal_so_batches_are_whole_links(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    spool = await sealed_spool(tmp_path / "s.db", key, 20, seal_every=5)
    try:
        batch = await spool.read(0, 3)  # asks for 3, gets the whole first link
        assert [pb.Record.FromString(r.data).WhichOneof("kind") for r in batch] == ["result"] * 5 + ["seal"]
        rest = await spool.read(batch[-1].seq, 1000)
        walk(batch + rest, key, spool.epoch)
    finally:
        await spool.close()


async def test_unsealed_records_are_not_readable_until_sealed(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    spool = await sealed_spool(tmp_path / "s.db", key, 5, seal_every=100)
    try:
        sealed_through = spool.last_seq
        spool.append(measurement(99))
        await asyncio_sleep(0.2)
        assert await spool.read(sealed_through, 100) == []
        await spool.flush()
        assert len(await spool.read(sealed_through, 100)) == 2  # the record and its seal
    finally:
        await spool.close()


async def test_a_restart_continues_the_chain_including_records_written_before_a_crash(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    spool = await sealed_spool(tmp_path / "s.db", key, 7, seal_every=5)
    epoch = spool.epoch
    await spool.close()
    # A crash between a write and its seal: the record is on disk, no seal covers it.
    with sqlite3.connect(tmp_path / "s.db") as c:
        last = c.execute("SELECT max(seq) FROM records").fetchone()[0]
        from agent.wire import encode_record

        c.execute(
            "INSERT INTO records VALUES (?, ?, ?, ?, 1, ?)",
            (last + 1, last + 1, 1, "lab/web", encode_record(last + 1, measurement(50))),
        )
    again = Spool(tmp_path / "s.db", SpoolLimits(seal_every=5, seal_interval_s=3600), signing_key=key)
    await again.open()
    try:
        assert again.epoch == epoch
        for i in range(3):
            again.append(measurement(60 + i))
        await again.flush()
        walker = walk(await again.read(0, 1000), key, epoch)
        assert walker.records == 7 + 1 + 3
    finally:
        await again.close()


async def test_eviction_drops_whole_links_and_the_chain_still_verifies(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    spool = await sealed_spool(tmp_path / "s.db", key, 400, seal_every=10, max_bytes=16 * 1024)
    try:
        head_before = await spool_head(tmp_path / "s.db")
        with sqlite3.connect(tmp_path / "s.db") as c:
            assert spool._enforce_bounds(c, 0) is not None  # the writer's bound check, run once by hand
        records = await spool.read(0, 10_000)
        walker = walk(records, key, spool.epoch, signatures="evictions")
        kinds = [pb.Record.FromString(r.data).WhichOneof("kind") for r in records]
        assert kinds[0] == "gap" and kinds[1] == "seal"
        link = chain.parse_link(records[1].seq, pb.Record.FromString(records[1].data).seal)
        assert link.is_eviction and link.body.evicted_links >= 1 and link.prev == chain.GENESIS
        gap = pb.Record.FromString(records[0].data).gap
        assert gap.through_seq == records[1].seq - 1
        assert sum(c.count for c in gap.checks) == 400 - walker.records + 1  # the gap record counts once
        assert walker.head == head_before, "eviction must not change the chain's head"
    finally:
        await spool.close()


async def spool_head(path: Path) -> bytes:
    with sqlite3.connect(path) as c:
        return bytes(c.execute("SELECT head FROM chain").fetchone()[0])


async def asyncio_sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


# ---- tampering, seen by the walker ------------------------------------------------------------------


@pytest.mark.parametrize("tamper", ["flip", "drop", "swap", "other_key", "relink"])
async def test_every_kind_of_tampering_breaks_the_chain(tmp_path: Path, tamper: str) -> None:
    key = Ed25519PrivateKey.generate()
    spool = await sealed_spool(tmp_path / "s.db", key, 12, seal_every=4)
    records = await spool.read(0, 1000)
    await spool.close()
    if tamper == "flip":
        r = records[2]
        data = bytearray(r.data)
        data[-3] ^= 0x01
        records[2] = Stored(r.seq, r.through_seq, bytes(data))
    elif tamper == "drop":
        del records[6]
    elif tamper == "swap":
        records[0], records[1] = records[1], records[0]
    elif tamper == "other_key":
        key = Ed25519PrivateKey.generate()
    else:  # a forger re-signs link 2 with its own key under the real key's id: the signature fails
        rec = pb.Record.FromString(records[4].data)
        forged = Ed25519PrivateKey.generate().sign(chain.DOMAIN + rec.seal.body)
        rec.seal.signature = forged
        records[4] = Stored(rec.seq, rec.seq, rec.SerializeToString())
    with pytest.raises(chain.ChainError) as err:
        walk(records, key, spool.epoch)
    assert "seq" in str(err.value)


# ---- the collector checks links on ingest --------------------------------------------------------


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[Collector]:
    cat = tmp_path / "cat.yaml"
    cat.write_text(CAT)
    c = Collector(CollectorSettings(cat, tmp_path / "c.db", "127.0.0.1:0", grace_s=1, insecure=True))
    await c.start()
    yield c
    await c.stop()


async def push(
    ch: grpc.aio.Channel, payloads: list[bytes]
) -> tuple[list[pb.BatchAck], grpc.aio.AioRpcError | None]:
    call: grpc.aio.StreamStreamCall[bytes, pb.BatchAck] = ch.stream_stream(
        "/slaprobe.v1.Collector/PushRecords",
        request_serializer=None,
        response_deserializer=pb.BatchAck.FromString,
    )()
    acks: list[pb.BatchAck] = []
    try:
        for p in payloads:
            await call.write(p)
            ack = await call.read()
            assert isinstance(ack, pb.BatchAck)
            acks.append(ack)
        await call.done_writing()
    except grpc.aio.AioRpcError as exc:
        return acks, exc
    return acks, None


def as_batch(agent: str, epoch: int, records: list[Stored]) -> bytes:
    return batch_bytes(agent, epoch, records[0].seq, records[-1].through_seq, [r.data for r in records])


async def register(ch: grpc.aio.Channel, name: str, epoch: int, key: Ed25519PrivateKey | None) -> int:
    reply = await pb_grpc.CollectorStub(ch).Register(
        pb.RegisterRequest(
            agent_id=name,
            site="lab",
            version="t",
            epoch=epoch,
            agent_time_ns=time.time_ns(),
            signing_key=chain.public_raw(key) if key else b"",
        )
    )
    return int(reply.acked_seq)


def q(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as c:
        return c.execute(sql, args).fetchall()


async def test_sealed_batches_are_stored_with_their_bytes_and_the_head_advances(
    collector: Collector, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    spool = await sealed_spool(tmp_path / "a.db", key, 20, seal_every=5)
    records = await spool.read(0, 1000)
    await spool.close()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
        await register(ch, "a1", spool.epoch, key)
        acks, err = await push(
            ch, [as_batch("a1", spool.epoch, records[:12]), as_batch("a1", spool.epoch, records[12:])]
        )
    assert err is None and acks[-1].acked_seq == records[-1].seq
    db = tmp_path / "c.db"
    stored = {s: r for _a, _e, s, _k, r in stored_records(db)}
    assert stored == {r.seq: r.data for r in records}  # byte for byte
    head = q(db, "SELECT head FROM streams")[0][0]
    last = chain.parse_link(records[-1].seq, pb.Record.FromString(records[-1].data).seal)
    assert head == last.head
    assert q(db, "SELECT count(*) FROM results")[0][0] == 20
    assert q(db, "SELECT how FROM agent_keys WHERE name = 'a1'") == [("first register",)]


@pytest.mark.parametrize(
    "attack", ["tampered", "forged", "replayed_by_other_agent", "unsealed", "skipped_link"]
)
async def test_a_bad_batch_is_refused_whole_and_loudly_with_the_agent_named(
    collector: Collector, tmp_path: Path, attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = Ed25519PrivateKey.generate()
    spool = await sealed_spool(tmp_path / "a.db", key, 15, seal_every=5)
    records = await spool.read(0, 1000)
    epoch = spool.epoch
    await spool.close()
    name = "a1"
    first = records[:6]  # link 1: five results and its seal
    if attack == "tampered":
        r = records[8]
        rec = pb.Record.FromString(r.data)
        rec.result.success = False
        rec.result.error_kind = "timeout"
        records[8] = Stored(r.seq, r.through_seq, rec.SerializeToString())
        payloads = [as_batch(name, epoch, first), as_batch(name, epoch, records[6:])]
    elif attack == "forged":
        forger = Ed25519PrivateKey.generate()
        fake = await sealed_spool(tmp_path / "f.db", forger, 15, seal_every=5)
        forged = await fake.read(0, 1000)
        await fake.close()
        payloads = [as_batch(name, epoch, first), as_batch(name, epoch, forged[6:])]
    elif attack == "replayed_by_other_agent":
        name = "a2"  # registers with its own key and sends a1's records as its own
        payloads = [as_batch(name, epoch, first)]
    elif attack == "unsealed":
        payloads = [as_batch(name, epoch, first), as_batch(name, epoch, records[6:8])]
    else:  # the collector is sent link 1, then link 3: link 2 is missing
        payloads = [as_batch(name, epoch, first), as_batch(name, epoch, records[12:])]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
        own = Ed25519PrivateKey.generate() if name == "a2" else key
        await register(ch, name, epoch, own)
        acks, err = await push(ch, payloads)
    assert err is not None and err.code() == grpc.StatusCode.DATA_LOSS
    assert f"agent {name!r}" in (err.details() or "")
    assert any(f"agent {name!r}" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    db = tmp_path / "c.db"
    held = {s for _a, _e, s, _k, _r in stored_records(db)}
    if name == "a2":
        assert held == set()
    else:
        assert acks and acks[0].acked_seq == 6
        assert held == {r.seq for r in first}, "nothing of the refused batch may be stored"


async def test_a_resent_batch_is_harmless_and_the_chain_goes_on(collector: Collector, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    spool = await sealed_spool(tmp_path / "a.db", key, 15, seal_every=5)
    records = await spool.read(0, 1000)
    await spool.close()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
        await register(ch, "a1", spool.epoch, key)
        b1, b2 = as_batch("a1", spool.epoch, records[:6]), as_batch("a1", spool.epoch, records[6:])
        acks, err = await push(ch, [b1, b1, b2, b2])
    assert err is None
    assert [a.acked_seq for a in acks] == [6, 6, records[-1].seq, records[-1].seq]
    assert q(tmp_path / "c.db", "SELECT count(*) FROM results")[0][0] == 15


async def test_an_agent_presenting_another_key_is_refused(collector: Collector) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
        await register(ch, "a1", 1, Ed25519PrivateKey.generate())
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await register(ch, "a1", 1, Ed25519PrivateKey.generate())
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "new enrolment" in (exc.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await register(ch, "a1", 1, None)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_backlog_written_before_sealing_is_delivered_unsealed_then_the_chain_starts(
    collector: Collector, tmp_path: Path
) -> None:
    """An agent upgraded with 2,000 unsent records from before sealing neither stalls nor loses them."""
    path = tmp_path / "old.db"
    old = Spool(path)  # no key: as written by an agent from before sealing
    await old.open()
    for i in range(2000):
        old.append(measurement(-i))  # in the past: results from before the upgrade
    await old.flush()
    await old.close()
    key = Ed25519PrivateKey.generate()
    upgraded = Spool(path, SpoolLimits(seal_every=50, seal_interval_s=3600), signing_key=key)
    await upgraded.open()
    try:
        assert upgraded.signing_key == b""  # this run presents no key and sends the backlog as it is
        async with grpc.aio.insecure_channel(f"127.0.0.1:{collector.port}") as ch:
            await register(ch, "a1", upgraded.epoch, None)
            after, payloads = 0, []
            while batch := await upgraded.read(after, 1000):
                payloads.append(as_batch("a1", upgraded.epoch, batch))
                after = batch[-1].through_seq
            acks, err = await push(ch, payloads)
        assert err is None and acks[-1].acked_seq == 2000
        upgraded.ack(2000)
    finally:
        await upgraded.close()
    again = Spool(path, SpoolLimits(seal_every=50, seal_interval_s=3600), signing_key=key)
    await again.open()  # nothing unsent is left: sealing starts, the chain after seq 2000
    try:
        assert again.signing_key == chain.public_raw(key)
        for i in range(60):
            again.append(measurement(-i))
        await again.flush()
        records = await again.read(2000, 1000)
        assert pb.Record.FromString(records[-1].data).WhichOneof("kind") == "seal"
        first = next(
            pb.Record.FromString(r.data) for r in records if pb.Record.FromString(r.data).HasField("seal")
        )
        assert chain.parse_link(first.seq, first.seal).body.first_seq == 2001
    finally:
        await again.close()
    assert q(tmp_path / "c.db", "SELECT count(*) FROM results")[0][0] == 2000
