"""An evidence bundle's records: the signed chain files and the result tables derived from them.

Why the tables are *derived*: the CSV and JSON Lines files are what people and
programs read, but what the agents signed is the chain files' bytes. Export
and verify render the tables with this one module from the decoded chain, so
a verifier can regenerate them byte for byte and prove they say what the
agents signed (and nothing else).

Chain file framing: each record as a 4-byte big-endian length and the record's
bytes, in seq order: the very framing the seal digests use (``slaprobe.chain``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import struct
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring as _enc
from typing import IO, Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from collector.wire import (
    MAX_DETAIL_CHARS,
    MAX_DURATION_NS,
    MAX_FIELD_KEY_CHARS,
    MAX_FIELDS,
    MAX_PHASES,
    fields_json,
    phases_json,
    record_span_end,
)
from protos import slaprobe_v1_pb2 as pb

COMPILED_ABI = 2  # the interface of slaprobe_speedups._evidence this code was written to
_compiled: Any  # that module (the optional slaprobe-speedups distribution), or None
try:
    from slaprobe_speedups import _evidence as _compiled

    if _compiled.abi() != COMPILED_ABI:  # pragma: no cover - a stale build: not used
        _compiled = None
except ImportError:  # pragma: no cover - depends on the installation
    _compiled = None
_Renderer: Any = None if _compiled is None else _compiled.Renderer  # TableWriter.add_view's compiled twin

_LEN = struct.Struct(">I")


def _view_class() -> type[Message]:
    """``slaprobe.v1.Record`` read with a result's ``fields`` map entries kept as bytes.

    Why: with upb, every map entry read builds two message wrappers (~4 µs each), and most
    results carry the same few entries (``status_code`` 200 ...). Read as bytes, an entry's
    rendering is cached by its exact bytes, and is decoded on a miss with the real entry type
    (``pb.Result.FieldsEntry``: its validation, its defaults), so the text is the real
    message's. Everything else keeps its real type, and the same field numbers and wire types
    mean the same bytes parse (or fail to) alike; gaps, clock samples and seals stay bytes, to
    be decoded with the real types.
    """
    f = descriptor_pb2.FieldDescriptorProto
    opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED
    proto = descriptor_pb2.FileDescriptorProto(
        name="slaprobe_evidence_view.proto", package="slaprobe.evidence_view", syntax="proto3"
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
            field.type_name = ".slaprobe.evidence_view.Phase"
    record = proto.message_type.add(name="Record")
    record.oneof_decl.add(name="kind")
    record.field.add(name="seq", number=1, type=f.TYPE_UINT64, label=opt)
    record.field.add(
        name="result", number=2, type=f.TYPE_MESSAGE, label=opt, oneof_index=0,
        type_name=".slaprobe.evidence_view.Result",
    )  # fmt: skip
    for number, name in ((3, "gap"), (4, "clock"), (5, "seal")):
        record.field.add(name=name, number=number, type=f.TYPE_BYTES, label=opt, oneof_index=0)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("slaprobe.evidence_view.Record"))


RecordView = _view_class()
_FieldsEntry = pb.Result.FieldsEntry
_OUT_OF_MAP: tuple[Any, ...] = ()  # a fields entry the real type keeps out of the map

RESULT_CSV_HEADER = (
    "scheduled_utc",
    "check",
    "agent",
    "ok",
    "degraded",
    "error_kind",
    "duration_ms",
    "detail",
    "epoch",
    "seq",
    "clock_offset_ms",
)
# ``results/records.jsonl``: its first line names the columns of each kind of line; every other
# line is one JSON array, its kind first and then the values in that order (the keys are not
# repeated on millions of lines: they were ~45% of the file). README "Evidence for disputes".
JSONL_FORMAT = "slaprobe-evidence/records-2"
JSONL_COLUMNS = {
    "result": (
        "kind", "agent", "epoch", "seq", "check", "revision", "scheduled_ns", "started_ns", "duration_ns",
        "ok", "degraded", "error_kind", "detail", "phases", "fields", "clock_offset_ns", "clock_synced",
    ),
    "gap": ("kind", "agent", "epoch", "seq", "through_seq", "reason", "evicted_ns", "checks"),
    "clock": ("kind", "agent", "epoch", "seq", "t0_ns", "t1_ns", "t2_ns", "t3_ns", "offset_ns", "rtt_ns"),
}  # fmt: skip


def jsonl_header() -> str:
    """The first line of ``results/records.jsonl``: what every later line's values are."""
    doc = {
        "format": JSONL_FORMAT,
        "columns": {kind: list(cols) for kind, cols in JSONL_COLUMNS.items()},
        "gap_checks": ["check", "from_ns", "to_ns", "count"],
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n"


GAP_CSV_HEADER = (
    "check",
    "agent",
    "from_utc",
    "to_utc",
    "results_lost",
    "reason",
    "evicted_utc",
    "epoch",
    "seq",
)


# The records the collector rejected at ingest (``results/rejected.csv``): the first three columns
# name the record, ``reason`` and ``received_ns`` are the collector's word (the rule is re-applied
# with them by verify), the rest are read from the record (people need not decode the chain).
REJECTED_CSV_HEADER = (
    "agent",
    "epoch",
    "seq",
    "kind",
    "check",
    "time_utc",
    "reason",
    "received_utc",
    "received_ns",
)


def rejected_line(
    agent: str, epoch: int, seq: int, kind: str, check: str, time_ns: int, reason: str, received_ns: int
) -> str:
    """One line of ``results/rejected.csv`` (the csv module's quoting; export and verify alike)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        (
            agent,
            epoch,
            seq,
            kind,
            check,
            utc(time_ns) if time_ns else "",
            reason,
            utc(received_ns),
            received_ns,
        )
    )
    return buf.getvalue()


def rejected_header() -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(REJECTED_CSV_HEADER)
    return buf.getvalue()


def record_brief(raw: bytes) -> tuple[str, str, int]:
    """(kind, check, time) of a record for a person reading the rejection list: a result's check
    and scheduled time, a gap's checks and eviction time, a clock sample's send time."""
    try:
        record = pb.Record.FromString(raw)
    except Exception:  # undecodable bytes are listed as what they are
        return "undecodable", "", 0
    kind = record.WhichOneof("kind") or "unknown"
    if kind == "result":
        return kind, record.result.check_id, record.result.scheduled_ns
    if kind == "gap":
        return kind, " ".join(c.check_id for c in record.gap.checks), record.gap.evicted_ns
    if kind == "clock":
        return kind, "", record.clock.t0_ns
    return kind, "", 0


def frame(raw: bytes) -> bytes:
    return _LEN.pack(len(raw)) + raw


def read_frames(stream: IO[bytes]) -> Iterator[bytes]:
    """The records of a chain file; a truncated file raises ValueError."""
    while True:
        head = stream.read(4)
        if not head:
            return
        if len(head) != 4:
            raise ValueError("truncated chain file (a length prefix is cut)")
        (n,) = _LEN.unpack(head)
        raw = stream.read(n)
        if len(raw) != n:
            raise ValueError("truncated chain file (a record is cut)")
        yield raw


_MINUTES: dict[int, str] = {}  # minute since the epoch -> "YYYY-MM-DDTHH:MM:"


def utc(ns: int) -> str:
    """``ns`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the datetime's own rounding to microseconds).

    The text of ``datetime.fromtimestamp(ns / 1e9, UTC)``, a table column of every result:
    the same float, the same round-half-even to microseconds (``_PyTime_DoubleToDenominator``),
    and the date and minute from a cache (a month of one site has 50 results a minute), at
    half the cost of building the datetime (held equal to it on ~750k values by a test).
    """
    if ns > 0:
        f = ns / 1e9
        sec = int(f)
        us = round((f - sec) * 1e6)
        if us >= 1_000_000:
            us -= 1_000_000
            sec += 1
        minute, s = divmod(sec, 60)
        prefix = _MINUTES.get(minute)
        if prefix is None:
            prefix = datetime.fromtimestamp(minute * 60, UTC).isoformat()[:17]
            if len(_MINUTES) >= 4096:
                _MINUTES.clear()
            _MINUTES[minute] = prefix
        return f"{prefix}{s:02d}.{us:06d}Z"
    return _utc(ns)


def _utc(ns: int) -> str:
    # isoformat is the C formatter; the same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ") for
    # every year an int64 of nanoseconds reaches (1677-2262: four digits), at a fifth of the cost.
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


@dataclass(frozen=True)
class Chain:
    """One agent epoch's records in a bundle."""

    agent: str
    epoch: int
    file: str  # path inside the bundle


_INF = float("inf")
_UNKNOWN: Any = object()  # not in a cache yet
# A CSV cell needs quoting (the csv module's rules, for its default dialect with "\n" line ends)
# only with these characters in it; rows with any go through the csv module itself.
_NEEDS_QUOTES = re.compile('[,"\r\n\x00]').search


class RowSink:
    """Where verify puts the collector's ``results`` rows it rebuilds while rendering the tables.

    A row is ``collector.wire.result_row``'s for the record (``RESULT_COLUMNS``, received at 0),
    from the reading the tables are rendered from; a record ``result_row`` rejects has none
    (``tests/test_evidence_rows.py`` holds both equal on odd and rejected records).
    ``limit_ns``: now plus the clock skew allowed.

    ``slim``: a successful result's row without the texts the report never reads of one (check
    revision, detail, phases and fields: empty, ``{}``); verify's scratch rows, where they were
    ~40% of the insert's cost. A failed result's row is whole (the report's incident evidence
    reads its detail and phases).
    """

    __slots__ = ("agent_row", "checks", "limit_ns", "rows", "slim")

    def __init__(
        self, agent_row: int, checks: Mapping[str, int], limit_ns: int, *, slim: bool = False
    ) -> None:
        self.agent_row = agent_row
        self.checks = checks
        self.limit_ns = limit_ns
        self.slim = slim
        self.rows: list[tuple[Any, ...]] = []


_EMPTY = '""'  # an empty string's JSON text
_BATCH = 4096  # rows rendered between writes


def _number(v: float) -> str:
    """A float as ``json.dumps`` writes it (NaN and infinities as its non-standard words)."""
    if v != v:
        return "NaN"
    if v == _INF:
        return "Infinity"
    if v == -_INF:
        return "-Infinity"
    return float.__repr__(v)


class TableWriter:
    """Renders a chain's records of the period into the bundle's tables (export and verify alike).

    Why the result line is assembled by hand: a month of one site is millions of lines, and
    ``json.dumps`` of a dict per line cost ~60 µs with the CSV row. The text is exactly
    ``json.dumps(doc, ensure_ascii=False, separators=(",", ":"))`` of the array below
    (``_result_doc``: the values in ``JSONL_COLUMNS`` order); strings go through json's own
    escaper.
    Lines are buffered: call :meth:`flush` before closing the files.
    """

    def __init__(
        self,
        start_ns: int,
        end_ns: int,
        results_csv: IO[bytes],
        gaps_csv: IO[bytes],
        jsonl: IO[bytes],
        checks: Container[str],
        *,
        header: bool = True,
        speedups: bool | None = None,
    ) -> None:
        self.start_ns, self.end_ns = start_ns, end_ns
        self.checks = checks  # the bundle's checks (a service's, or the whole site's)
        self._results_file = results_csv
        self._gaps_file = gaps_csv
        self._jsonl = jsonl
        self._csv_buffer = io.StringIO()  # a row that needs csv's quoting is written through it
        self._csv_writer = csv.writer(self._csv_buffer, lineterminator="\n")
        if header:  # a part rendered by another process goes without
            results_csv.write(self._csv_row(RESULT_CSV_HEADER).encode())
            gaps_csv.write(self._csv_row(GAP_CSV_HEADER).encode())
            jsonl.write(jsonl_header().encode())
        self._lines: list[str] = []
        self._csv: list[str] = []  # result CSV lines
        self._entries: dict[tuple[bytes, ...], tuple[str, str | None]] = {}  # -> (JSON text, row text)
        # The compiled twin of add_view (slaprobe_speedups._evidence, when installed): it renders
        # the plain result records into its own buffers and leaves every other one to the Python
        # code here, whose lines it takes into the same buffers, in order.
        self._c: Any = None
        if speedups is not False and _Renderer is not None:
            self._c = _Renderer(jsonl, results_csv, start_ns, end_ns, checks, self._entries)
        elif speedups:
            raise RuntimeError("slaprobe_speedups._evidence is not installed")
        # The compiled walk of a chain file's run of plain results (verify), or None.
        self.run: Callable[..., tuple[int, int, int, int, int]] | None = (
            self._c.run if self._c is not None else None
        )
        self._put_line: Callable[[str], Any] = self._c.jsonl if self._c is not None else self._lines.append
        self._put_csv: Callable[[str], Any] = self._c.csv if self._c is not None else self._csv.append
        self._names: dict[str, str] = {}  # JSON text of repeated strings (agents, checks, phase names)
        self._cells: dict[str, str | None] = {}  # CSV cell of repeated strings (None: needs quoting)
        self._phase_templates: dict[tuple[str, ...], str] = {}  # phase names in order -> % template
        self._phase_shapes: dict[tuple[str, ...], tuple[str, bool, bool]] = {}  # -> template, names ok, ascii
        self._entry_values: dict[bytes, tuple[str, str, Any, bool]] = {}  # -> key, text, value, valid
        self._results = 0
        self.gaps = 0
        self.clocks = 0

    @property
    def results(self) -> int:
        """Result lines rendered."""
        return self._results + (self._c.rendered if self._c is not None else 0)

    @property
    def compiled(self) -> bool:
        """Whether the compiled renderer takes the plain result records."""
        return self._c is not None

    def add_raw(self, agent: str, epoch: int, raw: bytes) -> None:
        """Render one record given as its bytes (the fast way for results)."""
        if self._c is not None and self._c.result(raw, agent, epoch, None) is not None:
            return
        view = _parse_view(raw)
        if view.WhichOneof("kind") == "result":
            self.add_view(agent, epoch, view)
            return
        self.add(agent, epoch, pb.Record.FromString(raw))

    def add_result(self, agent: str, epoch: int, raw: bytes, rows: RowSink | None) -> int | None:
        """A result record's bytes rendered (and its row appended, as ``add_view`` does) by the
        compiled renderer: its seq; None when it is not one the renderer takes (or there is none
        installed): read it with ``parse_view`` and give it to ``add_view``."""
        if self._c is None:
            return None
        seq: int | None = self._c.result(raw, agent, epoch, rows)
        return seq

    def add_view(self, agent: str, epoch: int, view: Any, rows: RowSink | None = None) -> None:
        """Render a result record read as a ``RecordView`` (``parse_view``); with ``rows``, also
        append the collector's ``results`` row for it, from the same reading (see ``RowSink``).

        Every protobuf field is read once, into a local: on upb each attribute read builds a
        Python object (a phase is a message wrapper, ~1 µs), so the phases text comes from a
        per-shape template (one ``%`` per result, not a call per phase), the fields text from a
        cache keyed by the entries' exact bytes, and the line, the CSV row and the row share
        the values.
        """
        r = view.result
        scheduled = r.scheduled_ns
        check = r.check_id
        render = self.start_ns <= scheduled < self.end_ns and check in self.checks
        if not render and rows is None:
            return
        seq = view.seq
        phases = r.phases
        names_ok = True
        if phases:
            named = {p.name: p.duration_ns for p in phases}  # a repeated name: the last one, as a dict
            shape = tuple(named)
            known = self._phase_shapes.get(shape)
            if known is None:
                known = self._shape(shape)
            template, names_ok, ascii_names = known
            values = tuple(named.values())
            phase_text = template % values
        else:
            phase_text = "{}"
        entries = r.fields
        if entries:
            key = tuple(entries)
            got = self._entries.get(key)
            if got is None:
                got = self._fields(key)
            field_text, field_row = got
        else:
            field_text = field_row = "{}"
        revision = r.check_revision
        ok, degraded, synced = r.success, r.degraded, r.clock_synced
        error_kind, detail, duration, offset = r.error_kind, r.detail, r.duration_ns, r.clock_offset_ns
        started = r.started_ns
        if rows is not None:
            # ``collector.wire.result_row``'s checks, all of them (which one fails does not matter
            # here: a rejected record has no row); a test holds the rows and rejections equal.
            check_row = rows.checks.get(check)
            limit = rows.limit_ns
            if (
                check_row is not None
                and 0 < scheduled <= limit
                and 0 < started <= limit
                and 0 <= duration <= MAX_DURATION_NS
                and bool(ok) != bool(error_kind)
                and len(detail) <= MAX_DETAIL_CHARS
                and field_row is not None
                and "\x00" not in detail
                and "\x00" not in error_kind
                and (
                    not phases
                    or (
                        names_ok
                        and len(phases) <= MAX_PHASES
                        and (
                            min(values) >= 0 and max(values) <= MAX_DURATION_NS
                            if len(values) == len(phases)
                            else all(0 <= p.duration_ns <= MAX_DURATION_NS for p in phases)
                        )
                    )
                )
            ):
                if ok and rows.slim:
                    rows.rows.append(
                        (rows.agent_row, epoch, seq, check_row, "", scheduled, started, duration, 1,
                         int(degraded), error_kind, "", "{}", "{}", 0, offset, int(synced))
                    )  # fmt: skip
                else:
                    rows.rows.append(
                        (rows.agent_row, epoch, seq, check_row, revision, scheduled, started, duration,
                         int(ok), int(degraded), error_kind, detail,
                         (phase_text if ascii_names else phases_json(named)) if phases else "{}",
                         field_row, 0, offset, int(synced))
                    )  # fmt: skip
            if not render:
                return
        names = self._names
        agent_text = names.get(agent) or self._name(agent)
        check_text = names.get(check) or self._name(check)
        self._put_line(
            f'["result",{agent_text},{epoch},{seq},{check_text},{names.get(revision) or self._name(revision)},'
            f"{scheduled},{started},{duration},{'true' if ok else 'false'},{'true' if degraded else 'false'},"
            f"{names.get(error_kind) or self._name(error_kind)},{_enc(detail) if detail else _EMPTY},"
            f"{phase_text},{field_text},{offset},{'true' if synced else 'false'}]\n"
        )
        cells = self._cells
        check_cell = cells.get(check, _UNKNOWN)
        if check_cell is _UNKNOWN:
            check_cell = self._cell(check)
        agent_cell = cells.get(agent, _UNKNOWN)
        if agent_cell is _UNKNOWN:
            agent_cell = self._cell(agent)
        kind_cell = cells.get(error_kind, _UNKNOWN)
        if kind_cell is _UNKNOWN:
            kind_cell = self._cell(error_kind)
        if (
            check_cell is None
            or agent_cell is None
            or kind_cell is None
            or (detail and _NEEDS_QUOTES(detail) is not None)
        ):
            self._put_csv(
                self._csv_row(
                    (utc(scheduled), check, agent, "up" if ok else "down", "yes" if degraded else "",
                     error_kind, f"{duration / 1e6:.3f}", detail, epoch, seq, f"{offset / 1e6:.3f}")
                )
            )  # fmt: skip
        else:
            self._put_csv(
                f"{utc(scheduled)},{check_cell},{agent_cell},{'up' if ok else 'down'},"
                f"{'yes' if degraded else ''},{kind_cell},{duration / 1e6:.3f},{detail},{epoch},{seq},"
                f"{offset / 1e6:.3f}\n"
            )
        self._results += 1
        if len(self._csv) >= _BATCH:
            self.flush()

    def _shape(self, shape: tuple[str, ...]) -> tuple[str, bool, bool]:
        """(``%`` template, every name valid for a row, the template's text is the row's) of phase
        names in order."""
        known = (
            self._phase_templates.get(shape) or self._template(shape, ":%d"),
            all(0 < len(n) <= MAX_FIELD_KEY_CHARS for n in shape),
            # ASCII without DEL: the table's escaping (ensure_ascii=False) is then the row's
            all(n.isascii() and "\x7f" not in n for n in shape),
        )
        if len(self._phase_shapes) < 10_000:
            self._phase_shapes[shape] = known
        return known

    def _fields(self, entries: tuple[bytes, ...]) -> tuple[str, str | None]:
        """(JSON text for the table, ``fields`` column of the row or None: rejected) of a result's
        ``fields`` map entries as sent; decoded with the real entry type, kept by their bytes."""
        cache = self._entry_values
        values: dict[str, tuple[str, Any, bool]] = {}
        for e in entries:
            kv = cache.get(e)
            if kv is None:
                entry = _FieldsEntry.FromString(e)  # bytes the real type refuses: DecodeError
                if len(UnknownFieldSet(entry)):
                    # The real type keeps an entry carrying a field its type does not know out of
                    # the map (upb files it among the result's unknown fields), as the ingest does.
                    if len(cache) < 50_000:
                        cache[e] = _OUT_OF_MAP
                    continue
                k, v = entry.key, entry.value
                kind = v.WhichOneof("value")
                value: Any = None
                valid = 0 < len(k) <= MAX_FIELD_KEY_CHARS
                if kind == "number":
                    value = v.number
                    valid = valid and math.isfinite(value)
                elif kind == "text":
                    value = v.text
                    valid = valid and len(value) <= MAX_DETAIL_CHARS
                elif kind == "flag":
                    value = v.flag
                else:
                    valid = False
                kv = (k, _value_text(v), value, valid)
                if len(cache) < 50_000:
                    cache[e] = kv
            if kv is _OUT_OF_MAP:
                continue
            values[kv[0]] = kv[1:]  # a repeated key: the last entry, as the map keeps it
        name = self._name
        text = "{" + ",".join([name(k) + ":" + values[k][0] for k in sorted(values)]) + "}"
        row = (
            fields_json({k: v[1] for k, v in values.items()})
            if len(values) <= MAX_FIELDS and all(v[2] for v in values.values())
            else None
        )
        if len(self._entries) < 50_000:
            self._entries[entries] = (text, row)
        return text, row

    def _cell(self, s: str) -> str | None:
        """``s`` as a CSV cell when it needs no quoting (else None), kept for repeated strings."""
        cell = None if _NEEDS_QUOTES(s) else s
        if len(self._cells) < 10_000:
            self._cells[s] = cell
        return cell

    def _csv_row(self, row: tuple[Any, ...]) -> str:
        """A CSV line as the csv module writes it (quoting included)."""
        buf = self._csv_buffer
        buf.seek(0)
        buf.truncate()
        self._csv_writer.writerow(row)
        return buf.getvalue()

    def add(self, agent: str, epoch: int, record: pb.Record) -> None:
        kind = record.WhichOneof("kind")
        if kind == "result":
            r = record.result
            fields = r.fields
            self._result(agent, epoch, record.seq, r, _fields_text(fields, self._name) if fields else "{}")
        elif kind == "gap":
            self._gap(agent, epoch, record)
        elif kind == "clock":
            c = record.clock
            if self.start_ns <= c.t0_ns < self.end_ns:
                self._line(
                    [
                        "clock",
                        agent,
                        epoch,
                        record.seq,
                        c.t0_ns,
                        c.t1_ns,
                        c.t2_ns,
                        c.t3_ns,
                        c.offset_ns,
                        c.rtt_ns,
                    ]
                )
                self.clocks += 1

    def flush(self) -> None:
        if self._c is not None:
            self._c.flush()
            return
        if self._lines:
            self._jsonl.write("".join(self._lines).encode())
            self._lines.clear()
        if self._csv:
            self._results_file.write("".join(self._csv).encode())
            self._csv.clear()

    def _line(self, doc: list[Any]) -> None:
        self._put_line(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")

    def _name(self, s: str) -> str:
        got = self._names.get(s)
        if got is None:
            got = _enc(s)
            if len(self._names) < 10_000:
                self._names[s] = got
        return got

    def _result(self, agent: str, epoch: int, seq: int, r: Any, field_text: str) -> None:
        # Every protobuf field is read once, into a local: on upb each attribute read builds a
        # Python object (a phase or a field value is a message wrapper, ~1 µs each), so the
        # phases and fields texts come from per-shape templates (one % per result, not a call
        # per phase), and the line and the CSV row share the values.
        scheduled = r.scheduled_ns
        check = r.check_id
        if not self.start_ns <= scheduled < self.end_ns or check not in self.checks:
            return
        names = self._names
        phases = r.phases
        if phases:
            named = {p.name: p.duration_ns for p in phases}  # a repeated name: the last one, as a dict
            shape = tuple(named)
            template = self._phase_templates.get(shape)
            if template is None:
                template = self._template(shape, ":%d")
            phase_text = template % tuple(named.values())
        else:
            phase_text = "{}"
        agent_text = names.get(agent) or self._name(agent)
        check_text = names.get(check) or self._name(check)
        revision = r.check_revision
        revision_text = names.get(revision) or self._name(revision)
        ok, degraded, synced = r.success, r.degraded, r.clock_synced
        error_kind, detail, duration, offset = r.error_kind, r.detail, r.duration_ns, r.clock_offset_ns
        self._put_line(
            f'["result",{agent_text},{epoch},{seq},{check_text},{revision_text},{scheduled},{r.started_ns},'
            f"{duration},{'true' if ok else 'false'},{'true' if degraded else 'false'},"
            f"{names.get(error_kind) or self._name(error_kind)},{_enc(detail) if detail else _EMPTY},"
            f"{phase_text},{field_text},{offset},{'true' if synced else 'false'}]\n"
        )
        self._put_csv(
            self._csv_row(
                (utc(scheduled), check, agent, "up" if ok else "down", "yes" if degraded else "",
                 error_kind, f"{duration / 1e6:.3f}", detail, epoch, seq, f"{offset / 1e6:.3f}")
            )
        )  # fmt: skip
        self._results += 1
        if len(self._csv) >= _BATCH:
            self.flush()

    def _template(self, shape: tuple[str, ...], value: str) -> str:
        """``{"k1":%d,"k2":%d}`` for the keys of ``shape`` (JSON-escaped, ``%`` doubled), kept."""
        template = "{" + ",".join([_enc(k).replace("%", "%%") + value for k in shape]) + "}"
        if len(self._phase_templates) < 10_000:
            self._phase_templates[shape] = template
        return template

    def _gap(self, agent: str, epoch: int, record: pb.Record) -> None:
        g = record.gap
        checks = [
            c
            for c in g.checks
            if c.from_ns < self.end_ns and c.to_ns >= self.start_ns and c.check_id in self.checks
        ]
        if not checks:
            return
        self._line(
            [
                "gap", agent, epoch, record.seq, g.through_seq, g.reason, g.evicted_ns,
                [[c.check_id, c.from_ns, c.to_ns, c.count] for c in checks],
            ]
        )  # fmt: skip
        for c in checks:
            line = self._csv_row(
                (
                    c.check_id,
                    agent,
                    utc(c.from_ns),
                    utc(c.to_ns),
                    c.count,
                    g.reason,
                    utc(g.evicted_ns),
                    epoch,
                    record.seq,
                )
            )
            self._gaps_file.write(line.encode())
        self.gaps += 1


def _result_doc(agent: str, epoch: int, seq: int, r: pb.Result) -> list[Any]:
    """The JSON array of a result line (what ``TableWriter`` writes, value for value, in
    ``JSONL_COLUMNS["result"]`` order; the tests' reference)."""
    return [
        "result",
        agent,
        epoch,
        seq,
        r.check_id,
        r.check_revision,
        r.scheduled_ns,
        r.started_ns,
        r.duration_ns,
        r.success,
        r.degraded,
        r.error_kind,
        r.detail,
        {p.name: p.duration_ns for p in r.phases},
        {k: _field(r.fields[k]) for k in sorted(r.fields)},
        r.clock_offset_ns,
        r.clock_synced,
    ]


def _fields_text(fields: Mapping[str, pb.FieldValue], name: Callable[[str], str]) -> str:
    return "{" + ",".join([name(k) + ":" + _value_text(fields[k]) for k in sorted(fields)]) + "}"


def _value_text(v: pb.FieldValue) -> str:
    """A field value's JSON text, as ``json.dumps`` writes ``_field(v)``."""
    kind = v.WhichOneof("value")
    if kind == "number":
        return _number(v.number)
    if kind == "text":
        return _enc(v.text)
    if kind == "flag":
        return "true" if v.flag else "false"
    return "null"


def _field(v: pb.FieldValue) -> float | str | bool | None:
    kind = v.WhichOneof("value")
    if kind == "number":
        return v.number
    if kind == "text":
        return v.text
    if kind == "flag":
        return v.flag
    return None


def decode(raw: bytes) -> tuple[pb.Record, int]:
    """A chain record and the last seq it stands for."""
    record = pb.Record.FromString(raw)
    return record, record_span_end(record)


_parse_view = RecordView.FromString


def parse_view(raw: bytes) -> Any:
    """A record's bytes as a ``RecordView``: its ``kind`` and ``seq``; a result to render with
    ``TableWriter.add_view`` (other kinds are bytes: decode those with ``decode``)."""
    return _parse_view(raw)
