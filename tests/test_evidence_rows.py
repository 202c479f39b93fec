"""Verify's rebuilt rows come from the reading the tables are rendered from, and are the ingest's.

``TableWriter.add_view(..., rows=RowSink(...))`` appends the collector's ``results`` row of a
result record while rendering it; the report is recomputed from those rows. They must be
exactly ``collector.wire.result_row``'s (the row the collector stored), and a record that
``result_row`` rejects must have none. Also: the hand-built CSV lines are the csv module's.
"""

from __future__ import annotations

import contextlib
import csv
import io
from typing import Any

import pytest

from collector.evidence.records import RowSink, TableWriter, _Renderer, parse_view
from collector.wire import (
    MAX_DETAIL_CHARS,
    MAX_DURATION_NS,
    MAX_FIELD_KEY_CHARS,
    MAX_FIELDS,
    MAX_PHASES,
    InvalidRecord,
    result_row,
)
from protos import slaprobe_v1_pb2 as pb
from tests.speedups_build import require_built
from tests.test_evidence import SPEEDUPS, T0, _odd_results

CHECKS = {"web": 11, "db": 12, "we%sird": 13, "ünï": 14}
NOW = T0 + 10**12
SKEW = 5 * 10**9


def _base(seq: int) -> pb.Record:
    r = pb.Result(
        check_id="web",
        check_revision="r1",
        scheduled_ns=T0 + seq,
        started_ns=T0 + seq + 5,
        duration_ns=1000,
        success=True,
        clock_offset_ns=-3,
        clock_synced=True,
    )
    r.phases.add(name="connect", duration_ns=400)
    r.phases.add(name="transfer", duration_ns=600)
    r.fields["status_code"].number = 200
    return pb.Record(seq=seq, result=r)


def _rejected_and_edge_cases() -> list[pb.Record]:
    """One record per rule of ``result_row`` (each broken, or just within), and repeated keys."""
    edits: list[Any] = [
        lambda r: setattr(r, "check_id", "nope"),
        lambda r: setattr(r, "scheduled_ns", 0),
        lambda r: setattr(r, "started_ns", -1),
        lambda r: setattr(r, "scheduled_ns", NOW + SKEW + 1),
        lambda r: setattr(r, "started_ns", NOW + SKEW),  # just within
        lambda r: setattr(r, "duration_ns", -1),
        lambda r: setattr(r, "duration_ns", MAX_DURATION_NS),  # just within
        lambda r: setattr(r, "duration_ns", MAX_DURATION_NS + 1),
        lambda r: setattr(r, "error_kind", "timeout"),  # success with an error kind
        lambda r: r.MergeFrom(pb.Result(error_kind="")) or r.ClearField("success"),
        lambda r: r.ClearField("success") or r.MergeFrom(pb.Result(error_kind="refused")),  # fine
        lambda r: setattr(r, "detail", "x" * MAX_DETAIL_CHARS),  # just within
        lambda r: setattr(r, "detail", "x" * (MAX_DETAIL_CHARS + 1)),
        lambda r: setattr(r, "detail", "nul\x00"),
        lambda r: r.ClearField("success") or r.MergeFrom(pb.Result(error_kind="e\x00")),
        lambda r: [r.phases.add(name=f"p{i}", duration_ns=i) for i in range(MAX_PHASES - 2)],  # 32: fine
        lambda r: [r.phases.add(name=f"p{i}", duration_ns=i) for i in range(MAX_PHASES - 1)],  # 33
        lambda r: [r.phases.add(name="connect", duration_ns=1) for _ in range(MAX_PHASES)],  # 34, repeated
        lambda r: r.phases.add(name="", duration_ns=1),
        lambda r: r.phases.add(name="n" * MAX_FIELD_KEY_CHARS, duration_ns=1),  # just within
        lambda r: r.phases.add(name="n" * (MAX_FIELD_KEY_CHARS + 1), duration_ns=1),
        lambda r: r.phases.add(name="late", duration_ns=-5),
        lambda r: r.phases.add(name="late", duration_ns=MAX_DURATION_NS + 1),
        lambda r: r.phases.add(name="connect", duration_ns=-5),  # repeated name: the bad one loses...
        lambda r: (r.phases.add(name="connect", duration_ns=-5), r.phases.add(name="connect", duration_ns=5)),
        lambda r: r.phases.add(name="ünïcödé", duration_ns=5),  # non-ASCII names
        lambda r: r.phases.add(name="del\x7f", duration_ns=5),
        lambda r: r.phases.add(name='q"uote\\', duration_ns=5),
        lambda r: r.fields["n"].CopyFrom(pb.FieldValue(number=float("nan"))),
        lambda r: r.fields["n"].CopyFrom(pb.FieldValue(number=float("inf"))),
        lambda r: r.fields["n"].CopyFrom(pb.FieldValue(text="t" * MAX_DETAIL_CHARS)),  # just within
        lambda r: r.fields["n"].CopyFrom(pb.FieldValue(text="t" * (MAX_DETAIL_CHARS + 1))),
        lambda r: r.fields["n"].CopyFrom(pb.FieldValue()),  # no value
        lambda r: r.fields[""].CopyFrom(pb.FieldValue(flag=True)),
        lambda r: r.fields["k" * MAX_FIELD_KEY_CHARS].CopyFrom(pb.FieldValue(flag=False)),  # just within
        lambda r: r.fields["k" * (MAX_FIELD_KEY_CHARS + 1)].CopyFrom(pb.FieldValue(flag=False)),
        lambda r: [r.fields[f"f{i}"].CopyFrom(pb.FieldValue(number=i)) for i in range(MAX_FIELDS - 1)],  # 64
        lambda r: [r.fields[f"f{i}"].CopyFrom(pb.FieldValue(number=i)) for i in range(MAX_FIELDS)],  # 65
        lambda r: r.fields["ünï"].CopyFrom(pb.FieldValue(text='✓ \x7f "q" \\')),
        lambda r: setattr(r, "check_id", "ünï"),
    ]
    out = []
    for i, edit in enumerate(edits):
        rec = _base(1000 + i)
        edit(rec.result)
        out.append(rec)
    return out


def _repeated_field_entries() -> list[bytes]:
    """Map entries repeated on the wire (the map keeps the last): a bad entry overridden, and not."""
    good = pb.Result.FieldsEntry(key="n", value=pb.FieldValue(number=1.5)).SerializeToString()
    bad = pb.Result.FieldsEntry(key="n", value=pb.FieldValue(number=float("nan"))).SerializeToString()
    out = []
    for i, entries in enumerate(([bad, good], [good, bad], [good, good])):
        base = _base(2000 + i)
        base.result.ClearField("fields")
        raw = base.SerializeToString()
        rec = pb.Record.FromString(raw)
        result = rec.result.SerializeToString() + b"".join(b"\x5a" + _varint(len(e)) + e for e in entries)
        out.append(b"\x08" + _varint(rec.seq) + b"\x12" + _varint(len(result)) + result)
        assert len(pb.Record.FromString(out[-1]).result.fields) == 1
    return out


def _entries_with_unknown_fields() -> list[bytes]:
    """Map entries carrying a field the entry type does not know: the real type keeps such an
    entry out of the map (upb files it among the result's unknown fields), so an earlier entry
    of its key stands; an unknown field inside the value keeps the entry."""
    unknown = b"\x38\x01"  # field 7, varint 1
    good = pb.Result.FieldsEntry(key="n", value=pb.FieldValue(number=1.5)).SerializeToString()
    odd = pb.Result.FieldsEntry(key="n", value=pb.FieldValue(number=9.0)).SerializeToString() + unknown
    alone = pb.Result.FieldsEntry(key="x", value=pb.FieldValue(flag=True)).SerializeToString() + unknown
    nan = pb.Result.FieldsEntry(key="n", value=pb.FieldValue(number=float("nan"))).SerializeToString() + unknown
    value = pb.FieldValue(text="v").SerializeToString() + unknown
    inner = b"\x0a\x01y" + b"\x12" + _varint(len(value)) + value  # key "y", a value with an unknown field
    out = []
    for i, entries in enumerate(([good, odd], [odd, good], [alone], [nan, good], [inner, good], [alone, inner])):
        base = _base(3000 + i)
        base.result.ClearField("fields")
        result = base.result.SerializeToString() + b"".join(b"\x5a" + _varint(len(e)) + e for e in entries)
        out.append(b"\x08" + _varint(base.seq) + b"\x12" + _varint(len(result)) + result)
    return out


def test_entries_with_unknown_fields_render_as_the_real_type_reads_them() -> None:
    """The tables from a record's bytes (export and verify) say what the record decoded with the
    real type says (a third party's protobuf library), and the row is the ingest's."""
    raws = _entries_with_unknown_fields()
    assert [sorted(pb.Record.FromString(r).result.fields) for r in raws] == [
        ["n"], ["n"], [], ["n"], ["n", "y"], ["y"],
    ]
    for speedups in (False, True) if _Renderer is not None else (False,):
        outs = []
        for as_bytes in (False, True):
            rcsv, gcsv, jsonl = io.BytesIO(), io.BytesIO(), io.BytesIO()
            tables = TableWriter(0, 2**63 - 1, rcsv, gcsv, jsonl, set(CHECKS), speedups=speedups)
            for raw in raws * 2:
                if as_bytes:
                    tables.add_raw("a", 9, raw)
                else:
                    tables.add("a", 9, pb.Record.FromString(raw))
            tables.flush()
            outs.append((rcsv.getvalue(), jsonl.getvalue()))
        assert outs[0] == outs[1]
        assert b"9.0" not in outs[1][1]  # the entry the real type keeps out


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _raws() -> list[bytes]:
    odd = []
    for rec in _odd_results():  # odd texts, repeated names and keys, NaN and empty field values
        rec.result.check_id = rec.result.check_id if rec.seq % 7 else "ünï"
        odd.append(rec.SerializeToString())
    return (
        odd
        + [r.SerializeToString() for r in _rejected_and_edge_cases()]
        + _repeated_field_entries()
        + _entries_with_unknown_fields()
    )




def feed(tables: TableWriter, agent: str, epoch: int, raw: bytes, sink: RowSink | None) -> None:
    """A result record rendered as verify's walk renders it: the compiled renderer first (when
    installed), else its ``RecordView`` through ``add_view``."""
    if tables.add_result(agent, epoch, raw, sink) is None:
        tables.add_view(agent, epoch, parse_view(raw), sink)


@pytest.mark.parametrize("speedups", SPEEDUPS)
def test_rows_are_the_ingests_rows_and_rejections(speedups: bool) -> None:
    raws = _raws()
    sink = RowSink(5, CHECKS, NOW + SKEW)
    tables = TableWriter(
        0, 2**63 - 1, io.BytesIO(), io.BytesIO(), io.BytesIO(), set(CHECKS), speedups=speedups
    )
    want = []
    for raw in raws + raws:  # twice: the fields' texts are then cached (the compiled path takes them)
        record = pb.Record.FromString(raw)
        with contextlib.suppress(InvalidRecord):
            want.append(result_row(record, 5, 9, CHECKS, 0, now_ns=NOW, max_skew_ns=SKEW))
        feed(tables, "a", 9, raw, sink)
    assert 40 < len(want) < 2 * len(raws) - 40  # both kinds, many of each
    assert sink.rows == want
    assert [type(v) for row in sink.rows for v in row] == [type(v) for row in want for v in row]


@pytest.mark.parametrize("speedups", SPEEDUPS)
def test_slim_rows_are_the_ingests_without_what_the_report_never_reads(speedups: bool) -> None:
    """verify's scratch rows (``RowSink(slim=True)``): a successful result's without its check
    revision, detail, phases and fields; a failed one's whole; the same records rejected."""
    raws = _raws()
    sink = RowSink(5, CHECKS, NOW + SKEW, slim=True)
    tables = TableWriter(
        0, 2**63 - 1, io.BytesIO(), io.BytesIO(), io.BytesIO(), set(CHECKS), speedups=speedups
    )
    want = []
    for raw in raws + raws:
        record = pb.Record.FromString(raw)
        with contextlib.suppress(InvalidRecord):
            row = result_row(record, 5, 9, CHECKS, 0, now_ns=NOW, max_skew_ns=SKEW)
            if row[8]:
                row = (*row[:4], "", *row[5:11], "", "{}", "{}", *row[14:])
            want.append(row)
        feed(tables, "a", 9, raw, sink)
    assert any(row[8] for row in want) and any(not row[8] and row[13] != "{}" for row in want)
    assert sink.rows == want


@pytest.mark.parametrize("speedups", SPEEDUPS)
def test_rows_do_not_change_the_tables(speedups: bool) -> None:
    """Rendering with rows gives the same bytes as without (export renders without), and the
    compiled renderer the Python code's."""
    texts = []
    for with_rows, compiled in ((False, False), (True, False), (False, speedups), (True, speedups)):
        rcsv, gcsv, jsonl = io.BytesIO(), io.BytesIO(), io.BytesIO()
        tables = TableWriter(T0, T0 + 10**15, rcsv, gcsv, jsonl, set(CHECKS), speedups=compiled)
        for raw in _raws() * 2:
            feed(tables, 'a,"gent', 9, raw, RowSink(5, CHECKS, NOW) if with_rows else None)
        tables.flush()
        texts.append((rcsv.getvalue(), jsonl.getvalue()))
    assert texts[0] == texts[1] == texts[2] == texts[3]


@pytest.mark.parametrize("speedups", SPEEDUPS)
def test_csv_lines_are_the_csv_modules(speedups: bool) -> None:
    """The CSV lines assembled by hand are what ``csv.writer`` writes for the same cells."""
    for agent in ("plain", 'a,"gent', "new\nline"):
        rcsv, jsonl = io.BytesIO(), io.BytesIO()
        tables = TableWriter(0, 2**63 - 1, rcsv, io.BytesIO(), jsonl, set(CHECKS), speedups=speedups)
        raws = _raws()
        for raw in raws + raws:
            tables.add_raw(agent, 9, raw)
        tables.flush()
        got = rcsv.getvalue().decode()
        parsed = list(csv.reader(io.StringIO(got)))
        want = io.StringIO()
        csv.writer(want, lineterminator="\n").writerows(parsed)
        assert got == want.getvalue()
        assert len(parsed) == tables.results + 1 == 2 * len(raws) - 1  # all but the unknown check's
        assert any('"' in line for line in got.splitlines())  # the quoting path was taken too


def test_the_compiled_renderer_is_built_where_it_can_be() -> None:
    """``make install`` builds speedups/ wherever it can: a missing (or stale) renderer here is a
    broken install, and export and verify would quietly run the slower Python path."""
    from collector.evidence import records

    require_built()
    assert records._compiled is not None and records._compiled.abi() == records.COMPILED_ABI
