"""Protobuf ↔ domain conversion for the collector: the only collector module using generated types
besides the servicer's method signatures.

Decoding validates each record on its own, so one bad record is rejected
alone with a reason while the rest of its batch is stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from protos import slaprobe_v1_pb2 as pb
from slaprobe.model import CheckSpec, ClockSample, FieldScalar, Gap, GapCheck, Measurement, Payload

_speedups: ModuleType | None
try:  # the compiled twin of ``batch_results_py`` (``speedups/``, a distribution of its own)
    from slaprobe_speedups import _wire as _speedups
except ImportError:  # pragma: no cover - where no compiler built it
    _speedups = None
if _speedups is not None and getattr(_speedups, "abi", lambda: 0)() != 3:  # pragma: no cover - stale build
    _speedups = None

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
    if _speedups is not None and type(raw) is bytes:
        # Compiled: the same bytes and the same errors (tests hold it to _scan_batch_py).
        got = _speedups.split_batch(raw, records is not None)
        if isinstance(got, str):
            raise DecodeError(got)
        header, found = got
        if records is not None:
            records[:] = found
        return pb.RecordBatch.FromString(header)
    return _scan_batch_py(raw, records)


def _scan_batch_py(raw: bytes, records: list[bytes] | None) -> pb.RecordBatch:
    n = len(raw)
    pos = 0
    header: list[bytes] = []
    while pos < n:
        start = pos
        if raw[pos] == _RECORDS_KEY:
            # A record's length is one or two bytes of varint (up to 16 KiB): read here, not
            # through a call per record (this scan runs on the event loop for every batch).
            b1 = raw[pos + 1] if pos + 2 < n else 0x80
            if b1 < 0x80:
                length = b1
                pos += 2
            elif pos + 3 < n and raw[pos + 2] < 0x80:
                length = (b1 & 0x7F) | (raw[pos + 2] << 7)
                pos += 3
            else:
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


# ---- the ingest fast path: a batch's results straight into ``results`` columns -----------------


def _ingest_view_class() -> type[Message]:
    """``slaprobe.v1.Record`` read with a result's ``fields`` map entries kept as bytes.

    Why: with upb every map entry read builds message wrappers (a ``FieldValue`` and its
    oneof: ~1.5 µs a result), and most results carry the same few entries. Read as bytes, a
    result's entries are looked up by their exact bytes (:class:`_FieldsCache`), and decoded on
    a miss with the real entry type (``pb.Result.FieldsEntry``), so an entry the real type
    cannot parse is found there. Everything else keeps its real type, the same field numbers and
    wire types, so the same bytes parse (or fail to) alike; gaps, clock samples and seals stay
    bytes, to be parsed with the real type. (``collector.evidence.records`` reads records the
    same way for rendering.)
    """
    f = descriptor_pb2.FieldDescriptorProto
    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    package = "slaprobe.ingest_view"
    proto = descriptor_pb2.FileDescriptorProto(
        name="slaprobe_ingest_view.proto", package=package, syntax="proto3"
    )
    phase = proto.message_type.add(name="Phase")
    phase.field.add(name="name", number=1, type=f.TYPE_STRING, label=opt)
    phase.field.add(name="duration_ns", number=2, type=f.TYPE_INT64, label=opt)
    result = proto.message_type.add(name="Result")
    for number, name, kind, label in (
        (1, "check_id", f.TYPE_STRING, opt),
        (2, "check_revision", f.TYPE_STRING, opt),
        (3, "scheduled_ns", f.TYPE_INT64, opt),
        (4, "started_ns", f.TYPE_INT64, opt),
        (5, "duration_ns", f.TYPE_INT64, opt),
        (6, "success", f.TYPE_BOOL, opt),
        (7, "degraded", f.TYPE_BOOL, opt),
        (8, "error_kind", f.TYPE_STRING, opt),
        (9, "detail", f.TYPE_STRING, opt),
        (10, "phases", f.TYPE_MESSAGE, rep),
        (11, "fields", f.TYPE_BYTES, rep),
        (12, "clock_offset_ns", f.TYPE_INT64, opt),
        (13, "clock_synced", f.TYPE_BOOL, opt),
    ):
        field = result.field.add(name=name, number=number, type=kind, label=label)
        if number == 10:
            field.type_name = f".{package}.Phase"
    record = proto.message_type.add(name="Record")
    record.oneof_decl.add(name="kind")
    record.field.add(name="seq", number=1, type=f.TYPE_UINT64, label=opt)
    record.field.add(
        name="result", number=2, type=f.TYPE_MESSAGE, label=opt, oneof_index=0, type_name=f".{package}.Result"
    )
    for number, name in ((3, "gap"), (4, "clock"), (5, "seal")):
        record.field.add(name=name, number=number, type=f.TYPE_BYTES, label=opt, oneof_index=0)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.Record"))


IngestRecordView = _ingest_view_class()
_FieldsEntry = pb.Result.FieldsEntry
_BAD = ""  # a cached template: these phase names need the exact path


def _fields_text(entries: Sequence[bytes]) -> str | None:
    """The ``fields`` column of a result whose map entries are ``entries`` (as sent), or None when
    they need the exact path (a rejection, or bytes the real entry type cannot parse)."""
    values: dict[str, FieldScalar] = {}
    try:
        for raw in entries:
            e = _FieldsEntry.FromString(raw)
            if len(UnknownFieldSet(e)):
                # The real type keeps such an entry out of the map (upb puts it among the
                # result's unknown fields): the exact path says what that gives.
                return None
            key, value = e.key, e.value
            if not key or len(key) > MAX_FIELD_KEY_CHARS:
                return None
            kind = value.WhichOneof("value")
            if kind == "number":
                if not math.isfinite(value.number):
                    return None
                values[key] = value.number
            elif kind == "text":
                if len(value.text) > MAX_DETAIL_CHARS:
                    return None
                values[key] = value.text
            elif kind == "flag":
                values[key] = value.flag
            else:
                return None
    except DecodeError:
        return None
    return fields_json(values)


def _phases_template(names: tuple[str, ...]) -> str:
    """``phases_json`` of these names as a ``%`` template for their durations (``_BAD``: names
    that need the exact path: empty, too long or repeated)."""
    if len(set(names)) != len(names) or any(not n or len(n) > MAX_FIELD_KEY_CHARS for n in names):
        return _BAD
    probe = phases_json(dict.fromkeys(names, 0))
    parts = [json.encoder.encode_basestring_ascii(n).replace("%", "%%") + ":%d" for n in names]
    template = "{" + ",".join(parts) + "}"
    if template % ((0,) * len(names)) != probe:  # pragma: no cover - the encoder's own text
        return _BAD
    return template


_fields_cache: dict[tuple[bytes, ...], str | None] = {}
_phase_templates: dict[tuple[str, ...], str] = {}
_CACHE_MAX = 4096


@dataclass
class ResultColumns:
    """A batch's results as ``results`` columns (``collector.store.RESULT_COLUMNS`` order, the
    constant columns left out), with the rejections by record index."""

    seq: list[int]
    check: list[int]
    revision: list[str]
    scheduled: list[int]
    started: list[int]
    duration: list[int]
    ok: list[int]
    degraded: list[int]
    error_kind: list[str]
    detail: list[str]
    phases: list[str]
    fields: list[str]
    clock_offset: list[int]
    clock_synced: list[int]
    rejections: list[tuple[int, int, str]]  # (index in the batch, seq, reason)
    undecodable: bool = False  # a record the real type cannot parse: the batch is undecodable

    def __len__(self) -> int:
        return len(self.seq)

    def columns(self, agent_id: int, epoch: int, received_ns: int) -> list[list[Any]]:
        n = len(self.seq)
        return [
            [agent_id] * n,
            [epoch] * n,
            self.seq,
            self.check,
            self.revision,
            self.scheduled,
            self.started,
            self.duration,
            self.ok,
            self.degraded,
            self.error_kind,
            self.detail,
            self.phases,
            self.fields,
            [received_ns] * n,
            self.clock_offset,
            self.clock_synced,
        ]


def result_columns(
    views: Sequence[Any],
    raws: Sequence[bytes],
    indexes: Iterable[int],
    agent_id: int,
    epoch: int,
    checks: Mapping[str, int],
    received_ns: int,
    *,
    now_ns: int,
    max_skew_ns: int,
) -> ResultColumns:
    """The result records ``views[i]`` (``IngestRecordView``, parsed from ``raws[i]``) for ``i`` in
    ``indexes``, validated into ``results`` columns: the rows and rejections ``result_row`` gives.

    The fast path reads each field once and tests every rule at once; a result that fails any
    test, or whose fields or phase names are not the usual ones, goes through ``result_row`` on
    the record parsed with the real type, which gives the exact reason (or the row). Phases are
    written through a ``%`` template per tuple of names, fields from a cache keyed by the map
    entries' bytes: many results share them.
    """
    out = ResultColumns([], [], [], [], [], [], [], [], [], [], [], [], [], [], [])
    a_seq, a_check, a_rev = out.seq.append, out.check.append, out.revision.append
    a_sched, a_start, a_dur = out.scheduled.append, out.started.append, out.duration.append
    a_ok, a_deg = out.ok.append, out.degraded.append
    a_kind, a_detail = out.error_kind.append, out.detail.append
    a_phases, a_fields = out.phases.append, out.fields.append
    a_off, a_sync = out.clock_offset.append, out.clock_synced.append
    # The row's columns from seq to fields, then clock_offset_ns and clock_synced.
    fallback_adds: tuple[Callable[[Any], None], ...] = (
        a_seq, a_check, a_rev, a_sched, a_start, a_dur, a_ok, a_deg, a_kind, a_detail, a_phases, a_fields,
        a_off, a_sync,
    )  # fmt: skip
    limit = now_ns + max_skew_ns
    fields_cache, templates = _fields_cache, _phase_templates
    get_check = checks.get
    for i in indexes:
        rec = views[i]
        r = rec.result
        check_row = get_check(r.check_id)
        scheduled = r.scheduled_ns
        started = r.started_ns
        duration = r.duration_ns
        success = r.success
        error_kind = r.error_kind
        detail = r.detail
        phases_pb = r.phases
        entries = r.fields
        fields: str | None = "{}"
        if entries:
            key = (entries[0],) if len(entries) == 1 else tuple(entries)
            if key in fields_cache:
                fields = fields_cache[key]
            else:
                if len(fields_cache) >= _CACHE_MAX:
                    fields_cache.clear()
                fields = fields_cache[key] = _fields_text(entries) if len(entries) <= MAX_FIELDS else None
        phases: str | None = "{}"
        n_phases = len(phases_pb)
        if n_phases:
            if n_phases == 2:  # read by index: iterating a upb container costs twice as much
                p0 = phases_pb[0]
                p1 = phases_pb[1]
                names: tuple[str, ...] = (p0.name, p1.name)
                durations: tuple[int, ...] = (p0.duration_ns, p1.duration_ns)
            elif n_phases <= MAX_PHASES:
                ps = [phases_pb[k] for k in range(n_phases)]
                names = tuple([p.name for p in ps])
                durations = tuple([p.duration_ns for p in ps])
            else:
                names = durations = ()
            template = templates.get(names)
            if template is None:
                if len(templates) >= _CACHE_MAX:
                    templates.clear()
                template = templates[names] = _phases_template(names) if names else _BAD
            if template and min(durations) >= 0 and max(durations) <= MAX_DURATION_NS:
                phases = template % durations
            else:
                phases = None
        if (
            check_row is None
            or not 0 < scheduled <= limit
            or not 0 < started <= limit
            or not 0 <= duration <= MAX_DURATION_NS
            or success == (error_kind != "")
            or len(detail) > MAX_DETAIL_CHARS
            or phases is None
            or fields is None
            or "\x00" in detail
            or "\x00" in error_kind
        ):
            # The exact path: the real type, every rule in order, the reason.
            try:
                row = result_row(
                    pb.Record.FromString(raws[i]), agent_id, epoch, checks, received_ns,
                    now_ns=now_ns, max_skew_ns=max_skew_ns,
                )  # fmt: skip
            except DecodeError:
                out.undecodable = True
                return out
            except InvalidRecord as exc:
                out.rejections.append((i, rec.seq, str(exc)))
                continue
            for add, value in zip(fallback_adds, row[2:14] + row[15:], strict=True):
                add(value)
            continue
        a_seq(rec.seq)
        a_check(check_row)
        a_rev(r.check_revision)
        a_sched(scheduled)
        a_start(started)
        a_dur(duration)
        a_ok(1 if success else 0)
        a_deg(1 if r.degraded else 0)
        a_kind(error_kind)
        a_detail(detail)
        a_phases(phases)
        a_fields(fields)
        a_off(r.clock_offset_ns)
        a_sync(1 if r.clock_synced else 0)
    return out


@dataclass
class BatchResults:
    """A batch's records as the ingest reads them: the results validated into columns (with their
    rejections, or the batch undecodable), every record's seq, and each record that is not a
    result parsed with the real type, in batch order. When ``results.undecodable`` the rest is
    unspecified."""

    results: ResultColumns
    seqs: list[int]
    others: list[tuple[int, pb.Record]]


def _no_columns() -> ResultColumns:
    return ResultColumns([], [], [], [], [], [], [], [], [], [], [], [], [], [], [])


def batch_results_py(
    raws: Sequence[bytes],
    agent_id: int,
    epoch: int,
    checks: Mapping[str, int],
    received_ns: int,
    *,
    now_ns: int,
    max_skew_ns: int,
) -> BatchResults:
    """:func:`batch_results` in Python: every record read as ``IngestRecordView``, the results into
    columns by :func:`result_columns`, the others parsed with the real type."""
    view = IngestRecordView.FromString
    try:
        records: list[Any] = [view(r) for r in raws]
        kinds = [r.WhichOneof("kind") for r in records]
        others = [(i, pb.Record.FromString(raws[i])) for i, k in enumerate(kinds) if k != "result"]
    except DecodeError:
        out = _no_columns()
        out.undecodable = True
        return BatchResults(out, [], [])
    seqs = [r.seq for r in records]
    results = result_columns(
        records,
        raws,
        [i for i, k in enumerate(kinds) if k == "result"] if others else range(len(raws)),
        agent_id,
        epoch,
        checks,
        received_ns,
        now_ns=now_ns,
        max_skew_ns=max_skew_ns,
    )
    return BatchResults(results, seqs, others)


def batch_results_c(
    raws: Sequence[bytes],
    agent_id: int,
    epoch: int,
    checks: Mapping[str, int],
    received_ns: int,
    *,
    now_ns: int,
    max_skew_ns: int,
) -> BatchResults:
    """:func:`batch_results` with the compiled scanner (``slaprobe_speedups._wire.scan_results``).

    The scanner reads the records it can read with certainty (a result in a conservative subset of
    the encoding) that pass every rule of :func:`result_row` straight into the columns, and stops
    at any other record; that one is parsed with the real type here: a result goes through
    ``result_row`` (the row, or the exact reason), anything else joins ``others``, and bytes the
    real type refuses make the batch undecodable. The scanner then resumes after it.
    """
    if _speedups is None:  # pragma: no cover - the caller checks
        raise RuntimeError("slaprobe_speedups._wire is not installed")
    scan = _speedups.scan_results
    out = _no_columns()
    cols: list[list[Any]] = [
        out.seq, out.check, out.revision, out.scheduled, out.started, out.duration, out.ok, out.degraded,
        out.error_kind, out.detail, out.phases, out.fields, out.clock_offset, out.clock_synced,
    ]  # fmt: skip
    seqs: list[int] = []
    others: list[tuple[int, pb.Record]] = []
    records = raws if type(raws) is list else list(raws)
    limit = now_ns + max_skew_ns
    n = len(records)
    i = scan(records, 0, checks, limit, cols, seqs)
    while i < n:
        # The exact path for this one record.
        try:
            rec = pb.Record.FromString(records[i])
        except DecodeError:
            out.undecodable = True
            return BatchResults(out, seqs, others)
        seqs.append(rec.seq)
        if rec.WhichOneof("kind") == "result":
            try:
                row = result_row(
                    rec, agent_id, epoch, checks, received_ns, now_ns=now_ns, max_skew_ns=max_skew_ns
                )
            except InvalidRecord as exc:
                out.rejections.append((i, rec.seq, str(exc)))
            else:
                for col, value in zip(cols, row[2:14] + row[15:], strict=True):
                    col.append(value)
        else:
            others.append((i, rec))
        i = scan(records, i + 1, checks, limit, cols, seqs)
    return BatchResults(out, seqs, others)


def batch_results(
    raws: Sequence[bytes],
    agent_id: int,
    epoch: int,
    checks: Mapping[str, int],
    received_ns: int,
    *,
    now_ns: int,
    max_skew_ns: int,
) -> BatchResults:
    """A batch's records (``split_batch``'s bytes) read for the ingest: the results validated into
    ``results`` columns, the rows and rejections ``result_row`` gives record by record, and the
    other records parsed with the real type.

    Compiled (:func:`batch_results_c`) when ``slaprobe_speedups`` is installed, in Python
    (:func:`batch_results_py`) otherwise: the same answer either way (tests hold them equal).
    """
    f = batch_results_c if _speedups is not None else batch_results_py
    return f(raws, agent_id, epoch, checks, received_ns, now_ns=now_ns, max_skew_ns=max_skew_ns)
