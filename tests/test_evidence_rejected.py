"""Records the collector rejected at ingest, in a bundle: listed, reproduced by verify, excluded.

The world: a real collector whose clock is held at 06:30 on 2026-10-01 while it receives; agent
a1 sends six hours of results as in ``test_evidence``; agent a3's clock is an hour fast: its
last results are dated 07:30 and later, so ingest rejects them ("in the future beyond the
allowed clock skew"), and it also signed one malformed result and one of a check the site does
not have (rejected whatever the time). Every one of them is in the agent's signed chain (the
collector keeps every record as received), none in the collector's ``results``: the bundle's
report leaves them out, so verify must leave out exactly those, and only after proving that
each rejection follows from the rule and the record.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.spool import Spool, SpoolLimits
from collector.evidence import layout, verify
from protos import slaprobe_v1_pb2 as pb
from slaprobe.model import ClockSample
from tests.sla_world import HOUR, MINUTE
from tests.test_evidence import (  # noqa: F401  (fixtures)
    CAT,
    T0,
    Lab,
    anyio_backend,
    make_lab,
    repack,
    resign,
    result,
    slots,
    spool_of,
    unpack,
)
from tests.test_evidence import verify as run_verify

RECEIVED = T0 + 6 * HOUR + 30 * MINUTE  # the collector's clock while it receives
SKEWED = slots("lab/web", T0 + 7 * HOUR + 30 * MINUTE, T0 + 7 * HOUR + 35 * MINUTE)  # an hour fast
SKEW_REASON = "timestamp is in the future beyond the allowed clock skew"


async def skewed_records(path: Path, key: Ed25519PrivateKey) -> Spool:
    """a3: a clock exchange, results on time, then results an hour in the collector's future, a
    malformed result and one of an unknown check (all signed: sealed like any other)."""
    limits = SpoolLimits(max_age_s=365 * 86400.0, seal_every=4, seal_interval_s=3600, check_every_s=3600)
    spool = Spool(path, limits, signing_key=key)
    await spool.open()
    t = T0 + 6 * HOUR + MINUTE  # the collector's times in a clock exchange, signed by the agent
    spool.append(ClockSample(t + HOUR, t, t + 10_000, t + HOUR + 20_000))
    for at in slots("lab/web", T0 + 6 * HOUR + 5 * MINUTE, T0 + 6 * HOUR + 10 * MINUTE):
        spool.append(result("lab/web", at, True, 12))
    for at in SKEWED:
        spool.append(result("lab/web", at, True, 12))
    on_time = slots("lab/db", T0 + 6 * HOUR + 5 * MINUTE, T0 + 6 * HOUR + 10 * MINUTE)
    bad = result("lab/db", on_time[0], True, 3)
    spool.append(replace(bad, error_kind="refused"))  # a success with an error kind: malformed
    spool.append(result("lab/nope", on_time[1], True, 3))
    spool.append(result("lab/db", on_time[2], True, 3))
    await spool.flush()
    return spool


@pytest.fixture
async def skew_lab(tmp_path: Path) -> Lab:
    rejected: dict[str, list[str]] = {}
    lab = await make_lab(
        tmp_path,
        CAT,
        (("a1", spool_of(evict=False)), ("a3", skewed_records)),
        maintenance=False,
        clock=lambda: RECEIVED,
        rejected=rejected,
    )
    assert rejected["a1"] == []
    reasons = rejected["a3"]
    assert reasons.count(SKEW_REASON) == len(SKEWED) and len(reasons) == len(SKEWED) + 2
    return lab


def test_records_rejected_at_ingest_are_listed_reproduced_and_excluded(skew_lab: Lab, tmp_path: Path) -> None:
    bundle = skew_lab.export()
    code, out = run_verify(bundle, "--all-signatures")
    assert code == 0, out
    assert "VERIFIED" in out
    assert f"{len(SKEWED) + 2} records rejected at ingest" in out, out
    assert f"{len(SKEWED)} for clock skew" in out, out
    root = unpack(bundle, tmp_path / "u")
    rows = list(csv.DictReader(io.StringIO((root / layout.REJECTED_CSV).read_text())))
    assert len(rows) == len(SKEWED) + 2
    assert sorted(r["reason"] for r in rows).count(SKEW_REASON) == len(SKEWED)
    assert {r["agent"] for r in rows} == {"a3"} and {int(r["received_ns"]) for r in rows} == {RECEIVED}
    report = json.loads((root / layout.REPORT_JSON).read_text())
    excluded = report["excluded"]
    assert excluded["records"] == len(SKEWED) + 2
    assert {e["reason"]: e["records"] for e in excluded["reasons"]}[SKEW_REASON] == len(SKEWED)
    # The rejected results are not counted: web after 06:10 has no accepted result, so unknown.
    assert "rejected at ingest" in (root / layout.METHODOLOGY).read_text()
    assert "rejected" in (root / layout.REPORT_HTML).read_text()


def _edit_rejections(root: Path, edit: object) -> None:
    path = root / layout.REJECTED_CSV
    header, *lines = path.read_text().splitlines(keepends=True)
    path.write_text(header + "".join(edit(lines)))  # type: ignore[operator]


def _in_order(lines: list[str]) -> list[str]:
    def key(line: str) -> tuple[str, int, int]:
        agent, epoch, seq = next(csv.reader([line]))[:3]
        return agent, int(epoch), int(seq)

    return sorted(lines, key=key)


def _accepted_web_line(root: Path, received_ns: int) -> str:
    """A rejection line for one of a3's accepted web results (as a dishonest collector might add)."""
    from collector.evidence.records import read_frames, rejected_line

    manifest = json.loads((root / layout.MANIFEST).read_text())
    a3 = next(c for c in manifest["chains"] if c["agent"] == "a3")
    with open(root / a3["file"], "rb") as f:
        records = [pb.Record.FromString(raw) for raw in read_frames(f)]
    rec = next(r for r in records if r.WhichOneof("kind") == "result" and r.result.check_id == "lab/web")
    assert rec.result.scheduled_ns < RECEIVED  # accepted
    return rejected_line(
        "a3", a3["epoch"], rec.seq, "result", "lab/web", rec.result.scheduled_ns, SKEW_REASON, received_ns
    )


TAMPER = {
    # name: (edit of the rejection lines, what verify must say)
    "drop a rejection": (lambda lines: lines[1:], "differs from the report recomputed"),
    "change a reason": (
        lambda lines: [lines[0].replace("allowed clock skew", "allowed clock drift"), *lines[1:]],
        "does not reproduce",
    ),
    "leave a malformed record out of the list": (
        lambda lines: [line for line in lines if "error kind" not in line],
        "the collector must have rejected this record (a successful result cannot carry an error kind)",
    ),
    "call a valid result rejected (its real receipt time)": ("accepted_now", "does not reproduce"),
    "call a valid result rejected (received before it ran)": ("accepted_early", "before the collector's"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_a_dishonest_rejection_list_is_caught(skew_lab: Lab, tmp_path: Path, case: str) -> None:
    edit, expected = TAMPER[case]
    root = unpack(skew_lab.export(), tmp_path / "t")
    if edit == "accepted_now":
        line = _accepted_web_line(root, RECEIVED)
        _edit_rejections(root, lambda lines: _in_order([*lines, line]))
    elif edit == "accepted_early":
        line = _accepted_web_line(root, T0 + 5 * HOUR)  # before a3's signed clock exchange at 06:01
        _edit_rejections(root, lambda lines: _in_order([*lines, line]))
    else:
        _edit_rejections(root, edit)
    resign(root, skew_lab.tls)  # a dishonest operator holds the collector's key
    code, out = run_verify(repack(root, tmp_path / "tampered.tar.gz"))
    assert code == 1, out
    assert expected in out, out


def test_rejected_records_in_pieces(skew_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "PARALLEL_MIN_BYTES", 0)
    code, out = run_verify(skew_lab.export(), "--all-signatures")
    assert code == 0, out
    assert f"{len(SKEWED) + 2} records rejected at ingest" in out, out
