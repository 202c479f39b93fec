"""Protobuf ↔ domain conversion for the collector: the only collector module using generated types
besides the servicer's method signatures.

Decoding validates each record on its own, so one bad record is rejected
alone with a reason while the rest of its batch is stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from protos import slaprobe_v1_pb2 as pb
from slaprobe.model import CheckSpec, ClockSample, FieldScalar, Gap, GapCheck, Measurement, Payload

MAX_DETAIL_CHARS = 4096
MAX_FIELD_KEY_CHARS = 64
MAX_FIELDS = 64
MAX_PHASES = 32
MAX_DURATION_NS = 24 * 3600 * 1_000_000_000


def _json_encoder(sort_keys: bool) -> Callable[[Any], str]:
    """``json.dumps(obj, separators=(",", ":"), sort_keys=...)`` for flat dicts of scalars, built once.

    ``json.dumps`` builds a new encoder on every call (~5 µs each); this makes the C encoder once
    (no circular-reference check: the values are scalars). The output is the same.
    """
    enc = json.JSONEncoder(separators=(",", ":"), sort_keys=sort_keys, check_circular=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has the C encoder
        return enc.encode
    chunks = make(
        None, enc.default, json.encoder.encode_basestring_ascii, None, ":", ",", sort_keys, False, True
    )
    return lambda obj: "".join(chunks(obj, 0))


phases_json = _json_encoder(sort_keys=False)
fields_json = _json_encoder(sort_keys=True)


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
    payload: Payload


GAP_REASONS = frozenset({"spool_full", "spool_age"})


_RECORDS_KEY = 0x2A  # field 5 (records), wire type 2


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint too long")


def batch_header(raw: bytes) -> pb.RecordBatch:
    """A batch's header alone (records skipped over, not copied): who sent it, which seqs."""
    return _scan_batch(raw, None)


def split_batch(raw: bytes) -> tuple[pb.RecordBatch, list[bytes]]:
    """A batch's header and each record's bytes exactly as the agent sent them.

    Why not ``RecordBatch.FromString``: re-serialising a parsed record need not
    give back the agent's bytes (map order, for one), and the seals are over
    the agent's bytes. The top level of a batch is scanned by hand instead;
    each record is then parsed on its own.
    """
    records: list[bytes] = []
    return _scan_batch(raw, records), records


def _scan_batch(raw: bytes, records: list[bytes] | None) -> pb.RecordBatch:
    n = len(raw)
    pos = 0
    header: list[bytes] = []
    while pos < n:
        start = pos
        if raw[pos] == _RECORDS_KEY:
            length, pos = _varint(raw, pos + 1)
            end = pos + length
            if end > n:
                raise DecodeError("truncated record")
            if records is not None:
                records.append(raw[pos:end])
            pos = end
            continue
        key, pos = _varint(raw, pos)
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
    return pb.RecordBatch.FromString(b"".join(header))


def record_span_end(record: pb.Record) -> int:
    """The last seq a record stands for: a gap stands for seq..through_seq."""
    if record.WhichOneof("kind") == "gap":
        return int(record.gap.through_seq)
    return int(record.seq)


def decode_record(
    record: pb.Record, *, now_ns: int, max_skew_ns: int, checks: Container[str]
) -> DecodedRecord:
    """Validate one record against the agent's site catalogue; raise InvalidRecord with the reason."""
    kind = record.WhichOneof("kind")
    if kind == "result":
        return DecodedRecord(record.seq, _decode_result(record.result, now_ns, max_skew_ns, checks))
    if kind == "gap":
        return DecodedRecord(record.seq, _decode_gap(record, now_ns, max_skew_ns, checks))
    if kind == "clock":
        return DecodedRecord(record.seq, _decode_clock(record.clock))
    raise InvalidRecord("record carries nothing we know (an unknown record kind from a newer agent?)")


def _decode_gap(record: pb.Record, now_ns: int, max_skew_ns: int, checks: Container[str]) -> Gap:
    g = record.gap
    if g.through_seq < record.seq:
        raise InvalidRecord("gap ends before it starts")
    if g.reason not in GAP_REASONS:
        raise InvalidRecord(f"unknown gap reason {g.reason[:40]!r}")
    if not g.checks or len(g.checks) > 100_000:
        raise InvalidRecord("a gap must name the checks whose results it stands for")
    if g.evicted_ns <= 0 or g.evicted_ns > now_ns + max_skew_ns:
        raise InvalidRecord("gap eviction time missing or in the future")
    out = []
    total = 0
    for c in g.checks:
        if c.check_id not in checks:
            raise InvalidRecord(f"gap names unknown check {c.check_id!r} for this agent's site")
        if c.count <= 0 or c.from_ns <= 0 or c.to_ns < c.from_ns:
            raise InvalidRecord(f"gap for {c.check_id!r} has an empty or inverted span")
        total += c.count
        out.append(GapCheck(c.check_id, c.from_ns, c.to_ns, c.count))
    if total > g.through_seq - record.seq + 1:
        raise InvalidRecord("gap counts more results than the sequence numbers it stands for")
    return Gap(g.through_seq, g.reason, g.evicted_ns, tuple(out))


def _decode_clock(c: pb.ClockSample) -> ClockSample:
    if min(c.t0_ns, c.t1_ns, c.t2_ns, c.t3_ns) <= 0:
        raise InvalidRecord("clock sample times must be set")
    if c.t3_ns < c.t0_ns or c.t2_ns < c.t1_ns:
        raise InvalidRecord("clock sample times are out of order")
    sample = ClockSample(c.t0_ns, c.t1_ns, c.t2_ns, c.t3_ns)
    if sample.offset_ns != c.offset_ns or sample.rtt_ns != c.rtt_ns:
        raise InvalidRecord("clock sample offset or rtt does not follow from its times")
    return sample


def _decode_result(r: pb.Result, now_ns: int, max_skew_ns: int, checks: Container[str]) -> Measurement:
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
    return Measurement(
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
        clock_offset_ns=r.clock_offset_ns,
        clock_synced=r.clock_synced,
    )


def result_row(
    record: pb.Record,
    agent_id: int,
    epoch: int,
    checks: Mapping[str, int],
    received_ns: int,
    *,
    now_ns: int,
    max_skew_ns: int,
) -> tuple[Any, ...]:
    """A result record validated straight into its ``results`` row (``collector.store.RESULT_COLUMNS``).

    The ingest hot path: the same checks, in the same order and with the same reasons, as
    ``decode_record`` followed by ``collector.store.measurement_row`` (a test holds them equal),
    without the ``Measurement`` in between. ``checks`` maps the site's check keys to row ids.
    """
    r = record.result
    check_id = r.check_id
    check_row = checks.get(check_id)
    if check_row is None:
        raise InvalidRecord(f"unknown check {check_id!r} for this agent's site")
    scheduled = r.scheduled_ns
    started = r.started_ns
    if scheduled <= 0 or started <= 0:
        raise InvalidRecord("scheduled and started times must be set")
    if scheduled > now_ns + max_skew_ns or started > now_ns + max_skew_ns:
        raise InvalidRecord("timestamp is in the future beyond the allowed clock skew")
    duration = r.duration_ns
    if not (0 <= duration <= MAX_DURATION_NS):
        raise InvalidRecord(f"duration {duration} ns is negative or absurd")
    success = r.success
    error_kind = r.error_kind
    if success and error_kind:
        raise InvalidRecord("a successful result cannot carry an error kind")
    if not success and not error_kind:
        raise InvalidRecord("a failed result must carry an error kind")
    detail = r.detail
    if len(detail) > MAX_DETAIL_CHARS:
        raise InvalidRecord(f"detail longer than {MAX_DETAIL_CHARS} characters")
    phases_pb = r.phases
    fields_pb = r.fields
    if len(phases_pb) > MAX_PHASES or len(fields_pb) > MAX_FIELDS:
        raise InvalidRecord("too many phases or fields")
    phases = "{}"
    if phases_pb:
        named: dict[str, int] = {}
        for p in phases_pb:
            name = p.name
            d = p.duration_ns
            if not name or len(name) > MAX_FIELD_KEY_CHARS or not (0 <= d <= MAX_DURATION_NS):
                raise InvalidRecord(f"invalid phase {name[:MAX_FIELD_KEY_CHARS]!r}")
            named[name] = d
        phases = phases_json(named)
    fields = "{}"
    if fields_pb:
        values: dict[str, FieldScalar] = {}
        for key, value in fields_pb.items():
            if not key or len(key) > MAX_FIELD_KEY_CHARS:
                raise InvalidRecord("invalid field name")
            kind = value.WhichOneof("value")
            if kind == "number":
                number = value.number
                if not math.isfinite(number):
                    raise InvalidRecord(f"field {key!r} is not a finite number")
                values[key] = number
            elif kind == "text":
                text = value.text
                if len(text) > MAX_DETAIL_CHARS:
                    raise InvalidRecord(f"field {key!r} is too long")
                values[key] = text
            elif kind == "flag":
                values[key] = value.flag
            else:
                raise InvalidRecord(f"field {key!r} has no value")
        fields = fields_json(values)
    if "\x00" in detail or "\x00" in error_kind:
        raise InvalidRecord("text fields must not contain NUL")
    return (
        agent_id,
        epoch,
        record.seq,
        check_row,
        r.check_revision,
        scheduled,
        started,
        duration,
        int(success),
        int(r.degraded),
        error_kind,
        detail,
        phases,
        fields,
        received_ns,
        r.clock_offset_ns,
        int(r.clock_synced),
    )
