"""Protobuf ↔ domain conversion for the agent: the only agent module that builds generated types.

Records are encoded once, when they enter the outbox, and stored as the
exact bytes of a ``slaprobe.v1.Record``. A batch is then assembled by
concatenating those bytes behind a small header (protobuf's encoding of a
repeated message field is just tag, length, bytes), so draining a backlog of
a million spooled records costs no decode/re-encode, and the bytes the agent
sends are the bytes it stored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from protos import slaprobe_v1_pb2 as pb
from slaprobe.model import CheckSpec, ClockSample, Gap, GapCheck, Measurement, Payload

_RECORDS_TAG = b"\x2a"  # field 5 (records), wire type 2 (length-delimited)


def check_from_pb(c: pb.Check) -> CheckSpec:
    settings = json.loads(c.settings_json) if c.settings_json else {}
    if not isinstance(settings, dict):
        raise ValueError(f"check {c.id!r}: settings must be a JSON object")
    return CheckSpec(
        id=c.id,
        site=c.site,
        name=c.name,
        type=c.type,
        target=c.target,
        interval_ms=c.interval_ms,
        timeout_ms=c.timeout_ms,
        settings=settings,
        degraded_after_ms=c.degraded_after_ms,
        revision=c.revision,
    )


def _field(value: float | str | bool) -> pb.FieldValue:
    if isinstance(value, bool):
        return pb.FieldValue(flag=value)
    if isinstance(value, int | float):
        return pb.FieldValue(number=float(value))
    return pb.FieldValue(text=str(value))


def result_to_pb(m: Measurement) -> pb.Result:
    return pb.Result(
        check_id=m.check_id,
        check_revision=m.check_revision,
        scheduled_ns=m.scheduled_ns,
        started_ns=m.started_ns,
        duration_ns=m.duration_ns,
        success=m.success,
        degraded=m.degraded,
        error_kind=m.error_kind,
        detail=m.detail,
        phases=[pb.Phase(name=n, duration_ns=d) for n, d in m.phases],
        fields={k: _field(v) for k, v in m.fields.items()},
        clock_offset_ns=m.clock_offset_ns,
        clock_synced=m.clock_synced,
    )


def gap_to_pb(g: Gap) -> pb.Gap:
    return pb.Gap(
        through_seq=g.through_seq,
        reason=g.reason,
        evicted_ns=g.evicted_ns,
        checks=[
            pb.GapCheck(check_id=c.check_id, from_ns=c.from_ns, to_ns=c.to_ns, count=c.count)
            for c in g.checks
        ],
    )


def clock_to_pb(c: ClockSample) -> pb.ClockSample:
    return pb.ClockSample(
        t0_ns=c.t0_ns, t1_ns=c.t1_ns, t2_ns=c.t2_ns, t3_ns=c.t3_ns, offset_ns=c.offset_ns, rtt_ns=c.rtt_ns
    )


def encode_record(seq: int, payload: Payload) -> bytes:
    """The stored and sent form of one record."""
    if isinstance(payload, Measurement):
        return pb.Record(seq=seq, result=result_to_pb(payload)).SerializeToString()
    if isinstance(payload, Gap):
        return pb.Record(seq=seq, gap=gap_to_pb(payload)).SerializeToString()
    return pb.Record(seq=seq, clock=clock_to_pb(payload)).SerializeToString()


def decode_gap(data: bytes) -> Gap:
    """Read back a stored gap record (the spool merges older gaps into new evictions)."""
    g = pb.Record.FromString(data).gap
    return Gap(
        g.through_seq,
        g.reason,
        g.evicted_ns,
        tuple(GapCheck(c.check_id, c.from_ns, c.to_ns, c.count) for c in g.checks),
    )


def decode_seal(data: bytes) -> pb.Seal:
    """Read back a stored seal record (eviction chains over the seals it drops)."""
    return pb.Record.FromString(data).seal


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def batch_bytes(agent_id: str, epoch: int, first_seq: int, last_seq: int, records: Sequence[bytes]) -> bytes:
    """A serialized ``RecordBatch`` made of already-encoded records."""
    header = pb.RecordBatch(
        agent_id=agent_id, epoch=epoch, first_seq=first_seq, last_seq=last_seq
    ).SerializeToString()
    parts = [header]
    for r in records:
        parts.append(_RECORDS_TAG)
        parts.append(_varint(len(r)))
        parts.append(r)
    return b"".join(parts)
