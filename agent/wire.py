"""Protobuf ↔ domain conversion for the agent: the only agent module that builds generated types."""

from __future__ import annotations

import json
from collections.abc import Sequence

from protos import slaprobe_v1_pb2 as pb
from slaprobe.model import CheckSpec, Measurement, Record


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
    )


def batch_to_pb(agent_id: str, epoch: int, records: Sequence[Record]) -> pb.RecordBatch:
    return pb.RecordBatch(
        agent_id=agent_id,
        epoch=epoch,
        first_seq=records[0].seq,
        last_seq=records[-1].seq,
        records=[pb.Record(seq=r.seq, result=result_to_pb(r.measurement)) for r in records],
    )
