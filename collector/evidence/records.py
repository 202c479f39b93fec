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
import json
import struct
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring as _enc
from typing import IO, Any

from collector.wire import record_span_end
from protos import slaprobe_v1_pb2 as pb

_LEN = struct.Struct(">I")

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


def utc(ns: int) -> str:
    """``ns`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the datetime's own rounding to microseconds)."""
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
    ``json.dumps(doc, ensure_ascii=False, separators=(",", ":"))`` of the document below
    (``_result_doc``), with the keys in its order; strings go through json's own escaper.
    Lines are buffered: call :meth:`flush` before closing the files.
    """

    def __init__(
        self,
        start_ns: int,
        end_ns: int,
        results_csv: IO[str],
        gaps_csv: IO[str],
        jsonl: IO[str],
        checks: Container[str],
        *,
        header: bool = True,
    ) -> None:
        self.start_ns, self.end_ns = start_ns, end_ns
        self.checks = checks  # the bundle's checks (a service's, or the whole site's)
        self._results = csv.writer(results_csv, lineterminator="\n")
        self._gaps = csv.writer(gaps_csv, lineterminator="\n")
        self._jsonl = jsonl
        if header:  # a part rendered by another process goes without
            self._results.writerow(RESULT_CSV_HEADER)
            self._gaps.writerow(GAP_CSV_HEADER)
        self._lines: list[str] = []
        self._rows: list[tuple[Any, ...]] = []
        self._names: dict[str, str] = {}  # JSON text of repeated strings (agents, checks, phase names)
        self.results = 0
        self.gaps = 0
        self.clocks = 0

    def add(self, agent: str, epoch: int, record: pb.Record) -> None:
        kind = record.WhichOneof("kind")
        if kind == "result":
            self._result(agent, epoch, record.seq, record.result)
        elif kind == "gap":
            self._gap(agent, epoch, record)
        elif kind == "clock":
            c = record.clock
            if self.start_ns <= c.t0_ns < self.end_ns:
                self._line(
                    {
                        "kind": "clock",
                        "agent": agent,
                        "epoch": epoch,
                        "seq": record.seq,
                        "t0_ns": c.t0_ns,
                        "t1_ns": c.t1_ns,
                        "t2_ns": c.t2_ns,
                        "t3_ns": c.t3_ns,
                        "offset_ns": c.offset_ns,
                        "rtt_ns": c.rtt_ns,
                    }
                )
                self.clocks += 1

    def flush(self) -> None:
        if self._lines:
            self._jsonl.write("".join(self._lines))
            self._lines.clear()
        if self._rows:
            self._results.writerows(self._rows)
            self._rows.clear()

    def _line(self, doc: Mapping[str, Any]) -> None:
        self._lines.append(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")

    def _name(self, s: str) -> str:
        got = self._names.get(s)
        if got is None:
            got = _enc(s)
            if len(self._names) < 10_000:
                self._names[s] = got
        return got

    def _result(self, agent: str, epoch: int, seq: int, r: pb.Result) -> None:
        scheduled = r.scheduled_ns
        check = r.check_id
        if not self.start_ns <= scheduled < self.end_ns or check not in self.checks:
            return
        name = self._name
        phases = r.phases
        if not phases:
            phase_text = "{}"
        else:
            named = {p.name: p.duration_ns for p in phases}  # a repeated name: the last one, as a dict
            phase_text = "{" + ",".join([name(k) + ":" + str(v) for k, v in named.items()]) + "}"
        fields = r.fields
        field_text = "{}" if not fields else _fields_text(fields, name)
        ok, degraded, synced = r.success, r.degraded, r.clock_synced
        error_kind, detail, duration, offset = r.error_kind, r.detail, r.duration_ns, r.clock_offset_ns
        self._lines.append(
            f'{{"kind":"result","agent":{name(agent)},"epoch":{epoch},"seq":{seq},"check":{name(check)},'
            f'"revision":{name(r.check_revision)},"scheduled_ns":{scheduled},"started_ns":{r.started_ns},'
            f'"duration_ns":{duration},"ok":{"true" if ok else "false"},'
            f'"degraded":{"true" if degraded else "false"},"error_kind":{name(error_kind)},'
            f'"detail":{_enc(detail)},"phases":{phase_text},"fields":{field_text},'
            f'"clock_offset_ns":{offset},"clock_synced":{"true" if synced else "false"}}}\n'
        )
        self._rows.append(
            (
                utc(scheduled),
                check,
                agent,
                "up" if ok else "down",
                "yes" if degraded else "",
                error_kind,
                f"{duration / 1e6:.3f}",
                detail,
                epoch,
                seq,
                f"{offset / 1e6:.3f}",
            )
        )
        self.results += 1
        if len(self._rows) >= _BATCH:
            self.flush()

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
            {
                "kind": "gap",
                "agent": agent,
                "epoch": epoch,
                "seq": record.seq,
                "through_seq": g.through_seq,
                "reason": g.reason,
                "evicted_ns": g.evicted_ns,
                "checks": [
                    {"check": c.check_id, "from_ns": c.from_ns, "to_ns": c.to_ns, "count": c.count}
                    for c in checks
                ],
            }
        )
        for c in checks:
            self._gaps.writerow(
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
        self.gaps += 1


def _result_doc(agent: str, epoch: int, seq: int, r: pb.Result) -> dict[str, Any]:
    """The JSON document of a result line (what ``TableWriter`` writes, key for key; the tests' reference)."""
    return {
        "kind": "result",
        "agent": agent,
        "epoch": epoch,
        "seq": seq,
        "check": r.check_id,
        "revision": r.check_revision,
        "scheduled_ns": r.scheduled_ns,
        "started_ns": r.started_ns,
        "duration_ns": r.duration_ns,
        "ok": r.success,
        "degraded": r.degraded,
        "error_kind": r.error_kind,
        "detail": r.detail,
        "phases": {p.name: p.duration_ns for p in r.phases},
        "fields": {k: _field(r.fields[k]) for k in sorted(r.fields)},
        "clock_offset_ns": r.clock_offset_ns,
        "clock_synced": r.clock_synced,
    }


def _fields_text(fields: Mapping[str, pb.FieldValue], name: Callable[[str], str]) -> str:
    parts = []
    for k in sorted(fields):
        v = fields[k]
        kind = v.WhichOneof("value")
        if kind == "number":
            text = _number(v.number)
        elif kind == "text":
            text = _enc(v.text)
        elif kind == "flag":
            text = "true" if v.flag else "false"
        else:
            text = "null"
        parts.append(name(k) + ":" + text)
    return "{" + ",".join(parts) + "}"


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
