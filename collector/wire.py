"""Protobuf ↔ domain conversion for the collector: the only collector module using generated types
besides the servicer's method signatures.

Decoding validates each record on its own, so one bad record is rejected
alone with a reason while the rest of its batch is stored.
"""

from __future__ import annotations

import math
from collections.abc import Container
from dataclasses import dataclass

from protos import slaprobe_v1_pb2 as pb
from slaprobe.model import CheckSpec, FieldScalar, Measurement

MAX_DETAIL_CHARS = 4096
MAX_FIELD_KEY_CHARS = 64
MAX_FIELDS = 64
MAX_PHASES = 32
MAX_DURATION_NS = 24 * 3600 * 1_000_000_000


def check_to_pb(spec: CheckSpec) -> pb.Check:
    return pb.Check(
        id=spec.id,
        site=spec.site,
        name=spec.name,
        type=spec.type,
        target=spec.target,
        interval_ms=spec.interval_ms,
        timeout_ms=spec.timeout_ms,
        settings_json=spec.settings_json,
        revision=spec.revision,
        degraded_after_ms=spec.degraded_after_ms,
    )


class InvalidRecord(ValueError):
    """A record that must not be stored; the message is the reason the agent is told."""


@dataclass(frozen=True)
class DecodedRecord:
    seq: int
    measurement: Measurement


def decode_record(
    record: pb.Record, *, now_ns: int, max_skew_ns: int, checks: Container[str]
) -> DecodedRecord:
    """Validate one record against the agent's site catalogue; raise InvalidRecord with the reason."""
    if record.WhichOneof("kind") != "result":
        raise InvalidRecord("record carries no result (unknown record kind from a newer agent?)")
    r = record.result
    if r.check_id not in checks:
        raise InvalidRecord(f"unknown check {r.check_id!r} for this agent's site")
    if r.scheduled_ns <= 0 or r.started_ns <= 0:
        raise InvalidRecord("scheduled and started times must be set")
    if r.scheduled_ns > now_ns + max_skew_ns or r.started_ns > now_ns + max_skew_ns:
        raise InvalidRecord("timestamp is in the future beyond the allowed clock skew")
    if not (0 <= r.duration_ns <= MAX_DURATION_NS):
        raise InvalidRecord(f"duration {r.duration_ns} ns is negative or absurd")
    if r.success and r.error_kind:
        raise InvalidRecord("a successful result cannot carry an error kind")
    if not r.success and not r.error_kind:
        raise InvalidRecord("a failed result must carry an error kind")
    if len(r.detail) > MAX_DETAIL_CHARS:
        raise InvalidRecord(f"detail longer than {MAX_DETAIL_CHARS} characters")
    if len(r.phases) > MAX_PHASES or len(r.fields) > MAX_FIELDS:
        raise InvalidRecord("too many phases or fields")
    phases = []
    for p in r.phases:
        if not p.name or len(p.name) > MAX_FIELD_KEY_CHARS or not (0 <= p.duration_ns <= MAX_DURATION_NS):
            raise InvalidRecord(f"invalid phase {p.name[:MAX_FIELD_KEY_CHARS]!r}")
        phases.append((p.name, p.duration_ns))
    fields: dict[str, FieldScalar] = {}
    for key, value in r.fields.items():
        if not key or len(key) > MAX_FIELD_KEY_CHARS:
            raise InvalidRecord("invalid field name")
        kind = value.WhichOneof("value")
        if kind == "number":
            if not math.isfinite(value.number):
                raise InvalidRecord(f"field {key!r} is not a finite number")
            fields[key] = value.number
        elif kind == "text":
            if len(value.text) > MAX_DETAIL_CHARS:
                raise InvalidRecord(f"field {key!r} is too long")
            fields[key] = value.text
        elif kind == "flag":
            fields[key] = value.flag
        else:
            raise InvalidRecord(f"field {key!r} has no value")
    if "\x00" in r.detail or "\x00" in r.error_kind:
        raise InvalidRecord("text fields must not contain NUL")
    return DecodedRecord(
        record.seq,
        Measurement(
            check_id=r.check_id,
            check_revision=r.check_revision,
            scheduled_ns=r.scheduled_ns,
            started_ns=r.started_ns,
            duration_ns=r.duration_ns,
            success=r.success,
            degraded=r.degraded,
            error_kind=r.error_kind,
            detail=r.detail,
            phases=tuple(phases),
            fields=fields,
        ),
    )
