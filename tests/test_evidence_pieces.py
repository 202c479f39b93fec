"""``evidence verify`` in pieces: the chains cut between processes, at a chain boundary or at a
seal inside a chain, verify exactly as in one piece, and every tamper case is still caught.

The lab bundles of ``test_evidence`` are small, so one process would walk them whole; here the
size limit is lowered (and, for a cut inside a chain, no chain boundary is accepted as the cut).
"""

# ruff: noqa: F811  (the lab fixture is imported from test_evidence and named as a parameter)
from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from collector.evidence import layout, verify
from collector.evidence.records import frame, parse_view, read_frames
from protos import slaprobe_v1_pb2 as pb
from tests.test_evidence import (  # noqa: F401  (fixtures)
    CASES,
    Lab,
    anyio_backend,
    chain_file,
    lab,
    repack,
    resign,
    test_tampering_is_caught,
    unpack,
)
from tests.test_evidence import verify as run_verify

CUTS = ("one piece", "at a chain boundary", "inside a chain")


def _cut(monkeypatch: pytest.MonkeyPatch, cut: str) -> None:
    if cut != "one piece":
        monkeypatch.setattr(verify, "PARALLEL_MIN_BYTES", 0)
    if cut == "inside a chain":
        monkeypatch.setattr(verify, "BOUNDARY_SLACK", -1.0)


def _plan_of(bundle: Path, tmp: Path) -> list[list[verify.Segment]]:
    root = unpack(bundle, tmp)
    chains = json.loads((root / layout.MANIFEST).read_text())["chains"]
    return verify._plan(root, chains, 2)


@pytest.mark.parametrize("cut", CUTS)
def test_pieces_verify_as_one(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: str) -> None:
    bundle = lab.export()
    code, whole = run_verify(bundle, "--all-signatures")
    assert code == 0, whole
    _cut(monkeypatch, cut)
    plan = _plan_of(bundle, tmp_path / "plan")
    assert len(plan) == (1 if cut == "one piece" else 2)
    if cut == "inside a chain":
        (*_, (ci, _, stop)), ((cj, start, _), *_) = plan
        assert ci == cj and stop == start > 0  # the same seal ends one piece and starts the next
    code, out = run_verify(bundle, "--all-signatures")
    assert code == 0, out
    assert out.splitlines()[:-1] == whole.splitlines()[:-1]  # the same checks, the same words


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("cut", CUTS[1:])
def test_tampering_is_caught_in_pieces(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: str, case: str
) -> None:
    _cut(monkeypatch, cut)
    test_tampering_is_caught(lab, tmp_path, case)


@pytest.mark.parametrize("cut", CUTS)
def test_a_record_only_the_full_decode_refuses_is_a_named_failure(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    """A result whose ``fields`` entry the real type refuses (a key that is not UTF-8) reads
    fine as the tables' view (entries kept as bytes): verify names it and exits 1, no traceback."""
    _cut(monkeypatch, cut)
    root = unpack(lab.export(), tmp_path / "t")
    path = chain_file(root, "a2")  # the second chain: the last piece, whatever the cut
    with open(path, "rb") as f:
        records = list(read_frames(f))
    i = max(k for k, r in enumerate(records) if pb.Record.FromString(r).WhichOneof("kind") == "result")
    rec = pb.Record.FromString(records[i])
    rec.result.ClearField("fields")
    entry = b"\x0a\x02\xff\xfe\x12\x09\x09" + bytes(8)  # key b"\xff\xfe", value {number: 0.0}
    result = rec.result.SerializeToString() + b"\x5a" + bytes([len(entry)]) + entry
    crafted = pb.Record(seq=rec.seq).SerializeToString() + b"\x12" + bytes([len(result)]) + result
    assert parse_view(crafted).result.fields == [entry]  # the view reads it...
    with pytest.raises(DecodeError):
        pb.Record.FromString(crafted)  # ...the real type does not
    records[i] = crafted
    path.write_bytes(b"".join(frame(r) for r in records))
    resign(root, lab.tls)  # as a dishonest operator could: only the agent's chain can tell
    code, out = run_verify(repack(root, tmp_path / "crafted.tar.gz"))
    assert code == 1, out
    assert "FAILED: agent 'a2'" in out and "Traceback" not in out, out


@pytest.mark.parametrize("cut", CUTS[1:])
def test_the_report_from_the_pieces_answers_is_the_report_from_the_rows(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    """Each piece runs the report over its own rows and keeps its slot source's answers; the
    recompute puts them together (``_CombinedSource``), reading the rows only for a question
    some piece was not asked. Same text with all answers, some, or none."""
    _cut(monkeypatch, cut)
    root = unpack(lab.export(), tmp_path / "u")
    manifest = json.loads((root / layout.MANIFEST).read_text())
    plan = verify._plan(root, manifest["chains"], 2)
    assert len(plan) == 2
    pieces = [
        verify._verify_piece(str(root), piece, i, str(tmp_path / f"rows-{i}.db"), False, {}, True)
        for i, piece in enumerate(plan)
    ]
    dbs = [p["db"] for p in pieces]
    answers = [p["answers"] for p in pieces]
    assert all(answers)
    plain, _, _ = verify._recompute(root, manifest, dbs, db_path=tmp_path / "plain.db")
    combined, phases, _ = verify._recompute(root, manifest, dbs, answers=answers, db_path=tmp_path / "all.db")
    assert (
        phases["#report: source answers read again"] == 0
        and phases["#report: source answers from the pieces"] > 0
    )
    some = [dict(list(a.items())[::2]) for a in answers]  # every other answer forgotten
    partial, phases, _ = verify._recompute(root, manifest, dbs, answers=some, db_path=tmp_path / "some.db")
    assert phases["#report: source answers read again"] > 0
    assert plain == combined == partial
    bundle_report = json.loads((root / layout.REPORT_JSON).read_text())
    bundle_report.pop("excluded")  # added after the recompute, from the rejection list
    assert json.loads(plain) == bundle_report


def test_pieces_start_once_their_files_are_out_whatever_the_archive_order(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export puts the chains and the small files before the tables: the pieces start before
    the tables are extracted. Another order (the manifest first, the chains last: a chain file
    is not complete when the manifest is) must wait for the files, and verify alike."""
    import tarfile

    _cut(monkeypatch, "at a chain boundary")
    bundle = lab.export()
    v = verify.Verifier(bundle, say=lambda _: None)
    v.run()
    assert v.phases["extract: the pieces' inputs"] <= v.phases["extract"]
    root = unpack(bundle, tmp_path / "u")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    chains = [p for p in files if p.suffix == ".chain"]
    first = [root / layout.MANIFEST]
    order = first + [p for p in files if p not in chains and p not in first] + chains
    odd = tmp_path / "odd.tar.gz"
    with tarfile.open(odd, "w:gz") as tar:
        for p in order:
            tar.add(p, f"{root.name}/{p.relative_to(root).as_posix()}")
    code, out = run_verify(odd)
    assert code == 0, out


@pytest.mark.parametrize("odd", ["a chain file twice", "a link"])
def test_an_archive_that_could_change_a_file_being_read_is_refused(
    lab: Lab, tmp_path: Path, odd: str
) -> None:
    """The pieces may read a chain file while the rest is extracted: a second member for the
    same file (stock tar would keep the last) or a link is refused, not followed."""
    import tarfile

    root = unpack(lab.export(), tmp_path / "u")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    out = tmp_path / "odd.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for p in files:
            tar.add(p, f"{root.name}/{p.relative_to(root).as_posix()}")
        chain = next(p for p in files if p.suffix == ".chain")
        name = f"{root.name}/{chain.relative_to(root).as_posix()}"
        if odd == "a link":
            info = tarfile.TarInfo(f"{root.name}/results/extra")
            info.type, info.linkname = tarfile.SYMTYPE, "../" + chain.relative_to(root).as_posix()
            tar.addfile(info)
        else:
            tar.add(chain, name.replace("/records/", "/records/./"))
    code, text = run_verify(out)
    assert code == 1 and "damaged" in text, text
    assert ("twice" if odd != "a link" else "regular files only") in text, text
