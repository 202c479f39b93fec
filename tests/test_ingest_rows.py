"""The ingest hot path (``wire.result_row``) agrees with ``decode_record`` + ``measurement_row``."""

from __future__ import annotations

import json
import math

import pytest

from collector.store import measurement_row
from collector.wire import InvalidRecord, decode_record, fields_json, result_row
from protos import slaprobe_v1_pb2 as pb
from slaprobe.model import Measurement

NOW = 1_800_000_000_000_000_000
SKEW = 300 * 1_000_000_000
CHECKS = {"lab/web": 7, "lab/db": 9}


def good() -> pb.Record:
    rec = pb.Record(seq=5)
    r = rec.result
    r.check_id, r.check_revision = "lab/web", "r1"
    r.scheduled_ns, r.started_ns, r.duration_ns = NOW - 10**9, NOW - 10**9 + 5, 3_000_000
    r.success = True
    r.detail = "connected é \u2603"
    r.phases.add(name="resolve", duration_ns=10)
    r.phases.add(name="connect", duration_ns=20)
    r.phases.add(name="resolve", duration_ns=30)  # a repeated name: the last one wins, as in a dict
    r.fields["z"].number = 1.5
    r.fields["a"].text = 'quote " and \\'
    r.fields["m"].flag = True
    r.clock_offset_ns, r.clock_synced, r.degraded = -12345, True, True
    return rec


def tamper(name: str) -> pb.Record:
    rec = good()
    r = rec.result
    if name == "unknown check":
        r.check_id = "other/x"
    elif name == "no times":
        r.started_ns = 0
    elif name == "future":
        r.scheduled_ns = NOW + SKEW + 1
    elif name == "duration":
        r.duration_ns = -1
    elif name == "ok with kind":
        r.error_kind = "timeout"
    elif name == "failed without kind":
        r.success = False
    elif name == "long detail":
        r.detail = "x" * 5000
    elif name == "many phases":
        for i in range(40):
            r.phases.add(name=f"p{i}", duration_ns=1)
    elif name == "bad phase":
        r.phases.add(name="", duration_ns=1)
    elif name == "nan field":
        r.fields["n"].number = math.nan
    elif name == "empty field":
        r.fields["e"].SetInParent()
    elif name == "long text field":
        r.fields["t"].text = "y" * 5000
    elif name == "NUL":
        r.detail = "a\x00b"
    elif name == "two problems":
        r.duration_ns = -1
        r.detail = "a\x00b"
    return rec


def reference(rec: pb.Record) -> tuple[object, ...]:
    d = decode_record(rec, now_ns=NOW, max_skew_ns=SKEW, checks=CHECKS)
    assert isinstance(d.payload, Measurement)
    return measurement_row(1, 2, d.seq, CHECKS[d.payload.check_id], d.payload, NOW)


def test_the_json_columns_are_what_json_dumps_writes() -> None:
    row = result_row(good(), 1, 2, CHECKS, NOW, now_ns=NOW, max_skew_ns=SKEW)
    assert row[12] == json.dumps({"resolve": 30, "connect": 20}, separators=(",", ":"))
    fields = {"z": 1.5, "a": 'quote " and \\', "m": True}
    assert row[13] == json.dumps(fields, separators=(",", ":"), sort_keys=True)
    assert fields_json({"x": math.inf, "y": "é\n\u2603"}) == json.dumps(
        {"x": math.inf, "y": "é\n\u2603"}, separators=(",", ":"), sort_keys=True
    )


def test_a_good_record_gives_the_same_row() -> None:
    for rec in (
        good(),
        pb.Record(
            seq=6, result=pb.Result(check_id="lab/db", scheduled_ns=1, started_ns=2, error_kind="refused")
        ),
    ):
        assert result_row(rec, 1, 2, CHECKS, NOW, now_ns=NOW, max_skew_ns=SKEW) == reference(rec)


@pytest.mark.parametrize(
    "name",
    [
        "unknown check", "no times", "future", "duration", "ok with kind", "failed without kind",
        "long detail", "many phases", "bad phase", "nan field", "empty field", "long text field", "NUL",
        "two problems",
    ],
)  # fmt: skip
def test_a_bad_record_is_rejected_with_the_same_reason(name: str) -> None:
    rec = tamper(name)
    with pytest.raises(InvalidRecord) as expected:
        reference(rec)
    with pytest.raises(InvalidRecord) as got:
        result_row(rec, 1, 2, CHECKS, NOW, now_ns=NOW, max_skew_ns=SKEW)
    assert str(got.value) == str(expected.value)
