"""The ingest fast path (``service.decode_batch``: results read as ``wire.IngestRecordView`` into
columns) gives what the exact path gives (``service.decode_batch_exact``: every record with the
real types and ``wire.result_row``): the same rows, log rows, rejections with the same reasons in
the same order, the same refusals, on good and bad records and on bytes only the view accepts."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError

from collector import rollups, service
from collector.service import BatchContext, DecodedBatch, decode_batch, decode_batch_exact
from collector.store import RESULT_COLUMNS
from collector.wire import IngestRecordView, split_batch
from protos import slaprobe_v1_pb2 as pb
from slaprobe import chain
from tests.test_ingest_rows import CHECKS, NOW, SKEW, good, tamper

BAD = [
    "unknown check", "no times", "future", "duration", "ok with kind", "failed without kind",
    "long detail", "many phases", "bad phase", "nan field", "empty field", "long text field", "NUL",
    "two problems",
]  # fmt: skip


def ctx(keys: dict[bytes, Any] | None = None) -> BatchContext:
    return BatchContext(1, "a1", 2, NOW, SKEW, CHECKS, keys)


def batch(raws: Sequence[bytes], first: int = 1, last: int | None = None) -> bytes:
    b = pb.RecordBatch(agent_id="a1", epoch=2, first_seq=first, last_seq=last or first + len(raws) - 1)
    return b.SerializeToString() + b"".join(
        pb.RecordBatch(records=[pb.Record()]).SerializeToString()[:1] + _varint(len(r)) + r for r in raws
    )


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def plain(d: DecodedBatch) -> dict[str, Any]:
    out = dataclasses.asdict(dataclasses.replace(d, rows=[], log_rows=[]))
    out["rows"] = [tuple(r) for r in d.rows]
    out["log_rows"] = [tuple(r) for r in d.log_rows]
    return out


def same(raw: bytes, c: BatchContext | None = None) -> DecodedBatch:
    c = c or ctx()
    header, raws = split_batch(raw)
    got = decode_batch(header, raws, c)
    assert plain(got) == plain(decode_batch_exact(header, raws, c))
    return got


def with_seq(rec: pb.Record, seq: int) -> bytes:
    rec.seq = seq
    return rec.SerializeToString()


def shapes() -> list[pb.Record]:
    """Good results of the shapes the fast path specialises or declines."""
    out = [good()]
    rec = good()
    del rec.result.phases[:]
    rec.result.fields.clear()
    out.append(rec)  # no phases, no fields
    rec = good()
    del rec.result.phases[2:]
    out.append(rec)  # two phases
    rec = good()
    del rec.result.phases[1:]
    out.append(rec)  # one phase
    rec = good()
    for i, name in enumerate(("tls", "processing", "transfer", 'q"%d\\', "é")):
        rec.result.phases.add(name=name, duration_ns=i * 1000)
    out.append(rec)  # many phases, names to escape, a repeated one
    rec = good()
    del rec.result.phases[:]
    rec.result.phases.add(name="x", duration_ns=0)
    rec.result.phases.add(name="y", duration_ns=0)
    out.append(rec)  # zero durations (not on the wire)
    rec = good()
    rec.result.success, rec.result.error_kind = False, "timeout"
    rec.result.fields.clear()
    rec.result.fields["status_code"].number = 0.0
    out.append(rec)
    rec = good()
    for i in range(64):
        rec.result.fields[f"k{i}"].flag = bool(i % 2)
    out.append(rec)  # more entries than MAX_FIELDS, fewer keys after the repeats
    return out


def test_good_results_of_every_shape_give_the_same_rows() -> None:
    recs = shapes()
    d = same(batch([with_seq(r, i + 1) for i, r in enumerate(recs * 3)]))
    assert isinstance(d.rows, rollups.Columns)
    assert len(d.rows) + len(d.rejections) == 3 * len(recs)


@pytest.mark.parametrize("name", BAD)
def test_a_bad_result_is_rejected_alone_with_the_same_reason(name: str) -> None:
    raws = [with_seq(good(), 1), with_seq(tamper(name), 2), with_seq(good(), 3)]
    d = same(batch(raws))
    assert [s for s, _ in d.rejections] == [2]
    assert len(d.rows) == 2


def test_every_bad_result_in_one_batch_among_gaps_clocks_and_seals() -> None:
    raws: list[bytes] = []
    seq = 1
    for name in BAD:
        raws.append(with_seq(good(), seq))
        raws.append(with_seq(tamper(name), seq + 1))
        seq += 2
    gap = pb.Record(seq=seq, gap=pb.Gap(through_seq=seq + 3, reason="spool_full", evicted_ns=NOW - 5))
    gap.gap.checks.add(check_id="lab/web", from_ns=NOW - 100, to_ns=NOW - 10, count=2)
    raws.append(gap.SerializeToString())
    seq += 4
    bad_gap = pb.Record(seq=seq, gap=pb.Gap(through_seq=seq, reason="nope", evicted_ns=NOW - 5))
    raws.append(bad_gap.SerializeToString())
    seq += 1
    clock = pb.Record(seq=seq, clock=pb.ClockSample(t0_ns=10, t1_ns=20, t2_ns=30, t3_ns=40, offset_ns=0))
    clock.clock.rtt_ns = 20
    raws.append(clock.SerializeToString())
    raws.append(pb.Record(seq=seq + 1, clock=pb.ClockSample(t0_ns=1)).SerializeToString())
    raws.append(pb.Record(seq=seq + 2, seal=pb.Seal(body=b"x")).SerializeToString())  # no key on record
    raws.append(pb.Record(seq=seq + 3).SerializeToString())  # no kind
    raws.append(with_seq(good(), seq + 4))
    d = same(batch(raws, last=seq + 4))
    assert len(d.rejections) == len(BAD) + 4
    assert len(d.gaps) == 1 and len(d.clocks) == 1
    assert len(d.rows) == len(BAD) + 1


def entry(key: bytes, value: bytes) -> bytes:
    """A ``fields`` map entry's bytes, built by hand (a key need not be valid UTF-8)."""
    return b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(value)) + value


def view_with(entries: list[bytes], seq: int = 2) -> bytes:
    v: Any = IngestRecordView.FromString(with_seq(good(), seq))
    v.result.fields.extend(entries)
    return bytes(v.SerializeToString())


@pytest.mark.parametrize(
    "entries",
    [
        [entry(b"\xff", pb.FieldValue(number=1).SerializeToString())],  # a key that is not UTF-8
        [entry(b"k", b"\x12\x01\xff")],  # text that is not UTF-8
        [entry(b"k", b"\x12\x05ab")],  # a truncated value
        [b"\x0a\x05ab"],  # a truncated entry
    ],
)
def test_entries_the_real_type_cannot_parse_make_the_batch_undecodable(entries: list[bytes]) -> None:
    raws = [with_seq(good(), 1), view_with(entries), with_seq(good(), 3)]
    with pytest.raises(DecodeError):  # the real type refuses the record
        pb.Record.FromString(raws[1])
    assert same(batch(raws)).undecodable
    # ... and the same again, now that those entries are cached.
    assert same(batch(raws)).undecodable


def test_entries_kept_as_sent_repeated_keys_last_one_wins() -> None:
    one = entry(b"k", pb.FieldValue(number=1).SerializeToString())
    two = entry(b"k", pb.FieldValue(text="two").SerializeToString())
    empty = entry(b"e", b"")  # an entry with no value: rejected
    for entries in ([one, two], [two, one], [one, one], [empty], [one, empty, two]):
        same(batch([with_seq(good(), 1), view_with(entries), with_seq(good(), 3)]))


def test_refusals_are_the_same() -> None:
    raws = [with_seq(good(), i) for i in (1, 2, 3)]
    assert same(batch(raws, first=1, last=4)).problem
    assert same(batch([raws[0], raws[2]])).problem  # a hole
    assert same(batch([])).problem
    assert same(batch([raws[0], b"\xff\xff"])).undecodable


def sealed(key: Ed25519PrivateKey, raws: list[bytes], first: int, head: bytes) -> tuple[list[bytes], bytes]:
    seq = first + len(raws)
    seal = chain.make_seal(
        key, epoch=2, first_seq=first, last_seq=seq - 1, prev=head, digest=chain.digest_of(raws),
        count=len(raws), sealed_ns=NOW,
    )  # fmt: skip
    return [*raws, chain.seal_record(seq, seal)], chain.parse_link(seq, seal).head


def test_sealed_batches_good_and_broken() -> None:
    key = Ed25519PrivateKey.generate()
    keys = chain.public_keys([chain.public_raw(key)])
    raws, _ = sealed(
        key, [with_seq(good(), 1), with_seq(tamper("NUL"), 2), with_seq(good(), 3)], 1, chain.GENESIS
    )
    d = same(batch(raws), ctx(keys))
    assert d.links is not None and [s for s, _ in d.rejections] == [2]
    broken = [*raws]
    broken[0] = with_seq(tamper("future"), 1)  # not what was sealed
    assert same(batch(broken), ctx(keys)).chain_error


def test_the_decode_worker_packs_the_same_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    recs = shapes() + [tamper(n) for n in BAD]
    raw = batch([with_seq(r, i + 1) for i, r in enumerate(recs * 4)])
    pick = rollups.Rollups(RESULT_COLUMNS).pick
    grids = {7: [(0, 30_000_000_000, 5)], 9: [(0, 60_000_000_000, 0)]}
    job = service._WorkerJob(1, "a1", 2, NOW, SKEW, dict(CHECKS), None, ((1, 1), grids), pick)
    fast = service._decode_packed(raw, job).unpack(raw)
    monkeypatch.setattr(service, "decode_batch", decode_batch_exact)
    exact = service._decode_packed(raw, job).unpack(raw)
    assert plain(fast) == plain(exact)
    assert fast.folded is not None
    # The records' bytes: split off the batch again by the collector (compiled insert), or sent
    # back by the worker as bytearrays (Python's sqlite3 binds those without an adapter lookup).
    _, records = split_batch(raw)
    for compiled in (rollups.compiled_store, None):
        monkeypatch.setattr(rollups, "compiled_store", compiled)
        packed = service._decode_packed(raw, job)
        assert (packed.log_raws is None) == (compiled is not None)
        log_raws = list(packed.unpack(raw).log_rows.columns[5])  # type: ignore[attr-defined]
        assert [bytes(r) for r in log_raws] == records
        assert all(type(r) is (bytes if compiled else bytearray) for r in log_raws)
        if compiled is not None:  # given another batch than the one decoded: refused, loudly
            with pytest.raises(RuntimeError):
                packed.unpack(batch([with_seq(shapes()[0], 1)]))


def reference_split(raw: bytes) -> tuple[pb.RecordBatch, list[bytes]]:
    """``wire.split_batch`` as it was: every varint through ``wire._varint``."""
    from collector.wire import _varint

    n, pos, header, records = len(raw), 0, [], []
    while pos < n:
        start = pos
        key, pos = _varint(raw, pos)
        if key == 0x2A and raw[start] == 0x2A:
            length, pos = _varint(raw, pos)
            if pos + length > n:
                raise DecodeError("truncated record")
            records.append(raw[pos : pos + length])
            pos += length
            continue
        wire_type = key & 7
        if wire_type == 0:
            _, pos = _varint(raw, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _varint(raw, pos)
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise DecodeError(f"unexpected wire type {wire_type}")
        if pos > n:
            raise DecodeError("truncated field")
        header.append(raw[start:pos])
    return pb.RecordBatch.FromString(b"".join(header)), records


def outcome(f: Any, raw: bytes) -> Any:
    try:
        header, records = f(raw)
    except DecodeError:
        return "undecodable"
    return header.SerializeToString(), records


@pytest.mark.parametrize("size", [0, 1, 126, 127, 128, 129, 16_382, 16_383, 16_384, 16_385, 70_000])
def test_a_batch_is_split_as_before_at_every_length_and_cut(size: int) -> None:
    records = [b"", b"\x08\x01", b"x" * size, b"\x08\x02"]
    raw = batch(records)
    assert outcome(split_batch, raw) == outcome(reference_split, raw)
    assert split_batch(raw)[1] == records
    for cut in {*range(0, len(raw), max(1, len(raw) // 200)), *range(len(raw) - 8, len(raw))}:
        assert outcome(split_batch, raw[:cut]) == outcome(reference_split, raw[:cut])


def test_a_worker_job_crosses_to_the_worker_whole_its_site_pickled_once() -> None:
    import pickle

    grids = ((3, 4), {7: [(0, 30_000_000_000, 5)]})
    checks = dict(CHECKS)
    jobs = [
        service._WorkerJob(1, "a1", 2, NOW + i, SKEW, checks, (b"k" * 32,), grids, (0, 1)) for i in range(2)
    ]
    back = [pickle.loads(pickle.dumps(j)) for j in jobs]
    assert back == jobs
    assert back[0].checks is back[1].checks  # unpickled once (the worker's cache)
    assert service._site_blob(checks, grids, (0, 1)) is service._site_blob(checks, grids, (0, 1))
    changed = ((3, 5), grids[1])  # another generation: another pickle
    assert pickle.loads(pickle.dumps(dataclasses.replace(jobs[0], grids=changed))).grids == changed
    none = service._WorkerJob(1, "a1", 2, NOW, SKEW, checks, None)
    assert pickle.loads(pickle.dumps(none)) == none


# F_SETPIPE_SZ exists only on Linux (the collector widens its pipes only there, best effort); CI is Linux.
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe sizes are Linux's")
def test_the_decode_pool_pipes_are_widened() -> None:
    import fcntl
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        service._widen_pipes(pool)
        for q in (pool._call_queue, pool._result_queue):  # type: ignore[attr-defined]
            reader: Any = q._reader  # type: ignore[union-attr]
            assert fcntl.fcntl(reader.fileno(), 1032) >= service._PIPE_BYTES  # F_GETPIPE_SZ
    finally:
        pool.shutdown()
