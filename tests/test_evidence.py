"""Evidence bundles end to end: signed at the agents' spools, stored by a real collector,
exported, verified by slaprobe and by stock tools (sha256sum, openssl, tar), and tampered with.

The world: a real collector (gRPC on loopback, SQLite) whose catalogue existed since
2026-09-30; two agents whose real spools sealed six hours of results on 2026-10-01 (with a
30-minute outage and, for one agent, a spool eviction that became a gap record and an
eviction link), delivered over gRPC as the agent's link would.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.spool import Spool, SpoolLimits
from agent.wire import batch_bytes
from collector import store
from collector.catalogue import parse_catalogue
from collector.evidence import layout
from collector.evidence.records import _Renderer, frame, read_frames
from collector.server import Collector, CollectorSettings
from protos import slaprobe_v1_pb2 as pb
from protos import slaprobe_v1_pb2_grpc as pb_grpc
from slaprobe import chain
from slaprobe.cli import main
from slaprobe.model import ClockSample, Measurement
from slaprobe.pki import SIGNING_KEY, CollectorPki
from slaprobe.schedule import NS_PER_S, next_slot_at_or_after, offset_ns
from tests.procs import stored_records
from tests.sla_world import HOUR, MINUTE, utc
from tests.speedups_build import NOT_BUILT

CAT = """
sites:
  lab:
    description: "Evidence test site"
    sla:
      availability: 99.5%
      latency: {percentile: 95, threshold: 250ms}
    checks:
      web: {type: http, target: "http://127.0.0.1:1/", interval: 60s, timeout: 5s}
      db: {type: tcp, target: "127.0.0.1:5432", interval: 60s, timeout: 5s}
"""

T0 = utc(2026, 10, 1)
OUTAGE = (T0 + 2 * HOUR, T0 + 2 * HOUR + 30 * MINUTE)


@dataclass
class Lab:
    tmp: Path
    db: Path
    tls: Path

    def export(self, name: str = "bundle.tar.gz", *extra: str) -> Path:
        out = self.tmp / name
        res = CliRunner().invoke(
            main,
            [
                "evidence",
                "export",
                "--db",
                str(self.db),
                "--tls-dir",
                str(self.tls),
                "--site",
                "lab",
                "--from",
                "2026-10-01T00:00Z",
                "--to",
                "2026-10-02T00:00Z",
                "--now",
                "2026-10-03T00:00Z",
                "-o",
                str(out),
                *extra,
            ],
        )
        assert res.exit_code == 0, res.output
        return out


def verify(bundle: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["evidence", "verify", str(bundle), *extra])
    return res.exit_code, res.output


def slots(check: str, start: int, end: int) -> list[int]:
    interval = 60 * NS_PER_S
    t = next_slot_at_or_after(start, interval, offset_ns(check, interval))
    return list(range(t, end, interval))


def result(check: str, at: int, ok: bool, ms: float) -> Measurement:
    return Measurement(
        check,
        "r",
        at,
        at + 1000,
        round(ms * 1e6),
        ok,
        error_kind="" if ok else "refused",
        detail="" if ok else "connection refused",
        phases=(("connect", round(ms * 5e5)),),
        fields={"status_code": 200.0} if ok else {},
        clock_offset_ns=150_000,
        clock_synced=True,
    )


async def agent_records(path: Path, key: Ed25519PrivateKey, *, evict: bool) -> Spool:
    """Six hours of both checks, a 30-minute outage of web, an hourly clock sample."""
    limits = SpoolLimits(max_age_s=365 * 86400.0, seal_every=40, seal_interval_s=3600, check_every_s=3600)
    spool = Spool(path, limits, signing_key=key)
    await spool.open()
    for i, at in enumerate(slots("lab/web", T0, T0 + 6 * HOUR)):
        down = OUTAGE[0] <= at < OUTAGE[1]
        spool.append(result("lab/web", at, not down, 20 + i % 7))
        if i % 60 == 0:
            spool.append(ClockSample(at + 5, at + 100_005, at + 100_010, at + 200_000))
    for i, at in enumerate(slots("lab/db", T0, T0 + 6 * HOUR)):
        spool.append(result("lab/db", at, True, 3 + i % 3))
    await spool.flush()
    if evict:  # the writer's bound check, run once by hand with a bound the spool now exceeds
        import sqlite3

        spool.limits = replace(limits, max_bytes=48 * 1024)
        with sqlite3.connect(path) as c:
            assert spool._enforce_bounds(c, 0) is not None
    return spool


async def deliver(
    port: int, name: str, spool: Spool, key: Ed25519PrivateKey, *, rejections: bool = False
) -> list[str]:
    """Deliver a spool as the agent's link would; return the reasons of the records the collector
    rejected (any rejection fails the delivery unless ``rejections``)."""
    reasons: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        await pb_grpc.CollectorStub(ch).Register(
            pb.RegisterRequest(
                agent_id=name, site="lab", version="t", epoch=spool.epoch, signing_key=chain.public_raw(key)
            )
        )
        call: grpc.aio.StreamStreamCall[bytes, pb.BatchAck] = ch.stream_stream(
            "/slaprobe.v1.Collector/PushRecords",
            request_serializer=None,
            response_deserializer=pb.BatchAck.FromString,
        )()
        after = 0
        while batch := await spool.read(after, 200):
            await call.write(
                batch_bytes(name, spool.epoch, batch[0].seq, batch[-1].through_seq, [r.data for r in batch])
            )
            ack = await call.read()
            assert isinstance(ack, pb.BatchAck) and (rejections or not ack.rejected), ack
            reasons += [r.reason for r in ack.rejected]
            after = ack.acked_seq
        await call.done_writing()
    return reasons


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def lab(tmp_path: Path) -> Lab:
    return await make_lab(tmp_path, CAT)


SpoolMaker = Callable[[Path, Ed25519PrivateKey], Awaitable[Spool]]


def spool_of(*, evict: bool) -> SpoolMaker:
    """The six hours of :func:`agent_records`, with or without a spool eviction."""
    return lambda path, key: agent_records(path, key, evict=evict)


async def make_lab(
    tmp_path: Path,
    catalogue: str,
    agents: Sequence[tuple[str, SpoolMaker]] = (("a1", spool_of(evict=False)), ("a2", spool_of(evict=True))),
    *,
    maintenance: bool = True,
    clock: Callable[[], int] | None = None,
    rejected: dict[str, list[str]] | None = None,
) -> Lab:
    """The collector's database after each agent delivered the spool its maker built.

    ``clock``: the collector's clock while it receives; ``rejected``: where to put each agent's
    rejection reasons (without it, any rejection fails the delivery)."""
    db_path = tmp_path / "c.db"
    cat = tmp_path / "cat.yaml"
    cat.write_text(catalogue)
    db = store.open_store(db_path)
    with store.immediate(db):
        store._persist_catalogue(db, parse_catalogue(catalogue, str(cat)), T0 - 86_400 * NS_PER_S)
    if maintenance:
        store.add_maintenance(
            db, "lab", None, T0 + 4 * HOUR, T0 + 4 * HOUR + 15 * MINUTE, "router firmware", "ops-alice", T0
        )
    db.conn.close()
    tls = tmp_path / "tls"
    CollectorPki(tls).init(["localhost"])
    collector = Collector(CollectorSettings(cat, db_path, "127.0.0.1:0", grace_s=1, insecure=True))
    await collector.start()
    try:
        if clock is not None:
            assert collector.service is not None
            collector.service.clock = clock
        for name, make in agents:
            key = Ed25519PrivateKey.generate()
            spool = await make(tmp_path / f"{name}.db", key)
            try:
                reasons = await deliver(collector.port, name, spool, key, rejections=rejected is not None)
            finally:
                await spool.close()
            if rejected is not None:
                rejected[name] = reasons
    finally:
        await collector.stop()
    return Lab(tmp_path, db_path, tls)


# ---- round trip ---------------------------------------------------------------------------------


def test_export_then_verify_round_trip(lab: Lab) -> None:
    bundle = lab.export()
    code, out = verify(bundle, "--all-signatures")
    assert code == 0, out
    assert "VERIFIED" in out
    assert out.count("ok   chain agent") == 2
    with tarfile.open(bundle) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
        top = tar.getmembers()[0].name.split("/")[0]
        manifest = json.load(tar.extractfile(f"{top}/{layout.MANIFEST}"))  # type: ignore[arg-type]
        report = json.load(tar.extractfile(f"{top}/{layout.REPORT_JSON}"))  # type: ignore[arg-type]
        gaps_csv = tar.extractfile(f"{top}/{layout.GAPS_CSV}").read().decode()  # type: ignore[union-attr]
        maint = json.load(tar.extractfile(f"{top}/{layout.MAINTENANCE}"))  # type: ignore[arg-type]
    for required in (
        layout.SUMS,
        layout.SUMS_SIG,
        layout.COLLECTOR_KEY,
        layout.CATALOGUE,
        layout.METHODOLOGY,
        layout.AGENTS,
        layout.RESULTS_CSV,
        layout.RESULTS_JSONL,
        layout.REPORT_HTML,
        layout.PROTO,
    ):
        assert required in names
    assert {c["agent"] for c in manifest["chains"]} == {"a1", "a2"}
    assert all(c["sealed"] for c in manifest["chains"])
    # a2's spool evicted its oldest links: the loss is in the bundle, not hidden.
    assert "spool_full" in gaps_csv and ",a2," in gaps_csv
    assert maint[0]["reason"] == "router firmware" and maint[0]["created_by"] == "ops-alice"
    site = report["services"][0]["report"]
    assert site["downtime_s"] == 30 * 60  # the outage, seen by both agents
    assert site["unknown_s"] == 18 * 3600  # no agent probed after 06:00: unknown, never up or down
    assert site["status"] == "breached"  # 5.5 h up of 6 h counted < 99.5%
    lost = sum(int(line.split(",")[4]) for line in gaps_csv.splitlines()[1:])
    assert lost > 0 and manifest["tables"]["results"] == 2 * 720 - lost  # every result, or its gap record


async def test_a_service_bundle_keeps_the_gaps_that_also_name_other_services_checks(tmp_path: Path) -> None:
    """A spool eviction's gap record names the checks of every service whose results it stood
    for; a bundle of one service must count that gap for its own checks (the collector stored a
    gap row per check) and verify must recompute the same, not drop the whole record."""
    services = CAT.replace(
        "    checks:\n",
        "    services:\n"
        "      front:\n"
        "        checks: [web]\n"
        "        sla: {availability: 99.5%, latency: {percentile: 95, threshold: 250ms}}\n"
        "    checks:\n",
    )
    lab = await make_lab(
        tmp_path, services, agents=(("a2", spool_of(evict=True)),)
    )  # alone: its gap is the slots' state
    bundle = lab.export("front.tar.gz", "--service", "front")
    with tarfile.open(bundle) as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        gaps_csv = tar.extractfile(f"{top}/{layout.GAPS_CSV}").read().decode()  # type: ignore[union-attr]
        report = json.loads(tar.extractfile(f"{top}/{layout.REPORT_JSON}").read())  # type: ignore[union-attr]
    gap_lines = gaps_csv.splitlines()[1:]
    assert gap_lines and all("lab/web" in line for line in gap_lines), gaps_csv
    (front,) = report["services"]
    assert front["service"] == "front" and front["checks"] == ["web"]
    assert front["daily"][0]["seconds"]["gap"] > 0, front["daily"][0]
    code, out = verify(bundle)
    assert code == 0, out


def test_stock_tools_verify_the_bundle(lab: Lab, tmp_path: Path) -> None:
    for tool in ("sha256sum", "openssl", "tar"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed (coreutils/openssl/tar are part of every CI image)")
    bundle = lab.export()
    root = unpack(bundle, tmp_path / "stock")
    sums = subprocess.run(["sha256sum", "-c", layout.SUMS], cwd=root, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    sig = openssl_verify(root)
    assert sig.returncode == 0 and "Signature Verified Successfully" in sig.stdout, sig.stdout + sig.stderr
    fingerprint = subprocess.run(
        f"openssl pkey -pubin -in {layout.COLLECTOR_KEY} -outform DER | tail -c 32 | sha256sum",
        shell=True,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    manifest = json.loads((root / layout.MANIFEST).read_text())
    assert fingerprint == manifest["collector_key"]["fingerprint"]


# ---- tampering --------------------------------------------------------------------------------------


def unpack(bundle: Path, into: Path) -> Path:
    into.mkdir()
    subprocess.run(["tar", "xzf", str(bundle), "-C", str(into)], check=True)
    (root,) = list(into.iterdir())
    return root


def repack(root: Path, out: Path) -> Path:
    subprocess.run(["tar", "czf", str(out), "-C", str(root.parent), root.name], check=True)
    return out


def openssl_verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            layout.COLLECTOR_KEY,
            "-rawin",
            "-in",
            layout.SUMS,
            "-sigfile",
            layout.SUMS_SIG,
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )


def stock_ok(root: Path) -> bool:
    sums = subprocess.run(["sha256sum", "--quiet", "-c", layout.SUMS], cwd=root, capture_output=True)
    return sums.returncode == 0 and openssl_verify(root).returncode == 0


def resign(root: Path, tls: Path) -> None:
    """What a dishonest collector operator could do: rehash and re-sign with its own key."""
    key = serialization.load_pem_private_key((tls / SIGNING_KEY).read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    lines = []
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        rel = p.relative_to(root).as_posix()
        if rel in (layout.SUMS, layout.SUMS_SIG):
            continue
        lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {rel}\n")
    sums = "".join(lines).encode()
    (root / layout.SUMS).write_bytes(sums)
    (root / layout.SUMS_SIG).write_bytes(key.sign(sums))


def chain_file(root: Path, agent: str) -> Path:
    manifest = json.loads((root / layout.MANIFEST).read_text())
    return root / str(next(c["file"] for c in manifest["chains"] if c["agent"] == agent))


def rewrite_chain(path: Path, edit: object) -> None:
    with open(path, "rb") as f:
        records = list(read_frames(f))
    records = edit(records)  # type: ignore[operator]
    path.write_bytes(b"".join(frame(r) for r in records))


def flip_result(records: list[bytes]) -> list[bytes]:
    for i, raw in enumerate(records):
        rec = pb.Record.FromString(raw)
        if rec.WhichOneof("kind") == "result" and not rec.result.success:
            rec.result.success, rec.result.error_kind, rec.result.detail = True, "", ""
            records[i] = rec.SerializeToString()
            return records
    raise AssertionError("no failed result to flip")


def drop_link(records: list[bytes]) -> list[bytes]:
    seals = [i for i, r in enumerate(records) if pb.Record.FromString(r).WhichOneof("kind") == "seal"]
    a, b = seals[3], seals[4]  # everything after the 4th seal through the 5th: one whole batch of the chain
    return records[: a + 1] + records[b + 1 :]


def swap_rows(records: list[bytes]) -> list[bytes]:
    records[5], records[6] = records[6], records[5]
    return records


CASES = {
    # name: (edit the unpacked bundle, re-sign like a dishonest operator?, what verify must say)
    "flip a byte in the results CSV": ("flip_csv", False, "results/results.csv: its SHA-256 does not match"),
    "delete a CSV row and re-sign": (
        "delete_csv_row",
        True,
        "results/results.csv: does not say what the signed records say",
    ),
    "turn an outage into success in a chain and re-sign": (
        "flip_result",
        True,
        "first broken link: agent 'a1'",
    ),
    "reorder records in a chain and re-sign": ("swap_rows", True, "first broken link: agent 'a1'"),
    "drop a whole batch from a chain and re-sign": ("drop_link", True, "first broken link: agent 'a1'"),
    "change the SLA file": ("change_sla", False, "sla/catalogue.yaml: its SHA-256 does not match"),
    "change the SLA file and re-sign": ("change_sla", True, "sla/catalogue.yaml: its hash"),
    "change the report and re-sign": ("change_report", True, "differs from the report recomputed"),
    "remove a file": ("remove_agents", False, "listed in SHA256SUMS but missing"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tampering_is_caught(lab: Lab, tmp_path: Path, case: str) -> None:
    action, re_sign, expected = CASES[case]
    root = unpack(lab.export(), tmp_path / "t")
    if action == "flip_csv":
        p = root / layout.RESULTS_CSV
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0x04
        p.write_bytes(bytes(data))
    elif action == "delete_csv_row":
        p = root / layout.RESULTS_CSV
        lines = p.read_text().splitlines(keepends=True)
        down = next(i for i, line in enumerate(lines) if ",down," in line)
        p.write_text("".join(lines[:down] + lines[down + 1 :]))
    elif action in ("flip_result", "swap_rows", "drop_link"):
        rewrite_chain(
            chain_file(root, "a1"),
            {"flip_result": flip_result, "swap_rows": swap_rows, "drop_link": drop_link}[action],
        )
    elif action == "change_sla":
        p = root / layout.CATALOGUE
        p.write_text(p.read_text().replace("99.5%", "95%"))
    elif action == "change_report":
        p = root / layout.REPORT_JSON
        doc = json.loads(p.read_text())
        doc["services"][0]["report"]["status"] = (
            "met" if doc["services"][0]["report"]["status"] != "met" else "breached"
        )
        p.write_text(json.dumps(doc))
    elif action == "remove_agents":
        (root / layout.AGENTS).unlink()
    if re_sign:
        resign(root, lab.tls)
    code, out = verify(repack(root, tmp_path / "tampered.tar.gz"))
    assert code == 1, out
    assert expected in out, out
    # Stock tools catch whatever was not re-signed; a re-signed bundle needs the agents' chains.
    assert stock_ok(root) == re_sign


def test_a_truncated_archive_is_caught_by_verify_and_by_tar(lab: Lab, tmp_path: Path) -> None:
    bundle = lab.export()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size * 2 // 3])
    code, out = verify(cut)
    assert code == 1 and "damaged or truncated" in out, out
    (tmp_path / "x").mkdir()
    assert (
        subprocess.run(["tar", "xzf", str(cut), "-C", str(tmp_path / "x")], capture_output=True).returncode
        != 0
    )


def test_pruning_keeps_what_remains_verifiable(lab: Lab) -> None:
    before = len(stored_records(lab.db))
    res = CliRunner().invoke(main, ["db", "prune", "--db", str(lab.db), "--now", "2026-12-30T03:00Z"])
    assert res.exit_code == 0, res.output
    assert "signed records" in res.output
    after = len(stored_records(lab.db))
    assert 0 < after < before  # raw retention is 90 days: results before 2026-10-01T03:00 are gone
    out = lab.tmp / "late.tar.gz"
    res = CliRunner().invoke(
        main,
        ["evidence", "export", "--db", str(lab.db), "--tls-dir", str(lab.tls), "--site", "lab",
         "--from", "2026-10-01T03:00Z", "--to", "2026-10-01T06:00Z", "--now", "2026-12-30T03:00Z", "-o", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    code, text = verify(out, "--all-signatures")
    assert code == 0, text
    with tarfile.open(out) as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        manifest = json.load(tar.extractfile(f"{top}/{layout.MANIFEST}"))  # type: ignore[arg-type]
    assert all(c["anchored"] for c in manifest["chains"])  # each chain starts at the seal kept


def q(db: Path, sql: str) -> int:
    import sqlite3

    with sqlite3.connect(db) as c:
        return int(c.execute(sql).fetchone()[0])


def _odd_results() -> list[pb.Record]:
    """Results that exercise every branch of the hand-assembled lines (and the CSV quoting)."""
    records = []
    texts = ["", "plain", 'quote " and, comma', "new\nline", "ünïcödé ✓", "100% \\ back", "\x01ctl"]
    for i in range(200):
        r = pb.Result(
            check_id=["web", "db", "we%sird"][i % 3],
            check_revision=texts[i % len(texts)],
            scheduled_ns=T0 + i * 1_234_567_891,
            started_ns=T0 + i * 1_234_567_891 + i,
            duration_ns=[0, 1, 999_999, 2**62][i % 4],
            success=bool(i % 2),
            degraded=bool(i % 5 == 0),
            error_kind=texts[(i + 1) % len(texts)],
            detail=texts[(i + 2) % len(texts)],
            clock_offset_ns=[0, -1_500_000, 2**40][i % 3],
            clock_synced=bool(i % 3),
        )
        for j in range(i % 6):  # names repeat (the last one wins, at the first one's place)
            r.phases.add(
                name=["resolve", "connect", "50%d", "tls", "connect", 't"x'][j], duration_ns=i * 7 + j
            )
        values = [
            pb.FieldValue(number=float(i) / 3),
            pb.FieldValue(number=float("nan")),
            pb.FieldValue(number=float("-inf")),
            pb.FieldValue(text=texts[i % len(texts)]),
            pb.FieldValue(flag=bool(i % 2)),
            pb.FieldValue(),
        ]
        for j in range(i % 5):
            r.fields[["status_code", "a%s", "ünï", "z", ""][j]].CopyFrom(values[(i + j) % len(values)])
        records.append(pb.Record(seq=i + 1, result=r))
    return records


# Each rendering test runs on the Python path, and on the compiled one where it is built (a skip
# only where it cannot be: tests/speedups_build.py; test_evidence_rows insists on the build).
SPEEDUPS = [False, pytest.param(True, marks=pytest.mark.skipif(_Renderer is None, reason=NOT_BUILT))]


@pytest.mark.parametrize("speedups", SPEEDUPS)
def test_table_lines_are_the_json_documents(speedups: bool) -> None:
    """The hand-assembled result lines are exactly ``json.dumps`` of the documents, and a
    record renders the same whether it is fed decoded or as bytes (export and verify alike),
    by the Python code or the compiled renderer (fed twice: the second time the fields' texts
    are cached, and the compiled renderer takes those records too)."""
    import csv
    import io

    from collector.evidence.records import TableWriter, _result_doc

    records = _odd_results()
    checks = {"web", "db", "we%sird"}
    outs = []
    for as_bytes in (False, True):
        rcsv, gcsv, jsonl = io.BytesIO(), io.BytesIO(), io.BytesIO()
        tables = TableWriter(T0, T0 + 10**15, rcsv, gcsv, jsonl, checks, speedups=speedups)
        for rec in records + records:
            if as_bytes:
                tables.add_raw('agent "1"', 7, rec.SerializeToString())
            else:
                tables.add('agent "1"', 7, rec)
        tables.flush()
        outs.append((rcsv.getvalue().decode(), jsonl.getvalue().decode()))
    assert outs[0] == outs[1]
    header, *lines = outs[0][1].splitlines()
    columns = json.loads(header)["columns"]["result"]
    assert len(lines) == 2 * len(records) and lines[: len(records)] == lines[len(records) :]
    lines = lines[: len(records)]
    for line, rec in zip(lines, records, strict=True):
        assert len(json.loads(line)) == len(columns)
        doc = _result_doc('agent "1"', 7, rec.seq, rec.result)
        assert line == json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    rows = list(csv.reader(io.StringIO(outs[0][0])))
    assert len(rows) == 2 * len(records) + 1
    assert [r[7] for r in rows[1:]] == [rec.result.detail for rec in records] * 2


def test_utc_is_the_datetime_text() -> None:
    """``records.utc`` (cached minutes, its own rounding) writes what the datetime writes."""
    import random

    from collector.evidence.records import _utc, utc

    rng = random.Random(6)
    values = [rng.randrange(1, 2**63) for _ in range(100_000)]
    values += [rng.randrange(1, 2**63) // 1000 * 1000 for _ in range(50_000)]
    values += [T0 + rng.randrange(0, 40 * 86_400 * NS_PER_S) for _ in range(100_000)]
    values += [k * 1000 + 500 for k in range(T0 // 1000, T0 // 1000 + 20_000)]  # ties
    values += [m * 60 * NS_PER_S - d for m in range(T0 // 60 // NS_PER_S, T0 // 60 // NS_PER_S + 100)
               for d in (0, 1, 499, 500, 501, 999, 1000, 1500)]  # fmt: skip
    values += [-(10**18), -1, 0, 1, 999, 1000, NS_PER_S - 1, 2**63 - 1]
    assert [utc(v) for v in values] == [_utc(v) for v in values]


def test_result_ranges_are_the_per_check_answer() -> None:
    """The export's two-step range query (rowids from the index, then a rowid-ordered read) finds
    exactly what asking per check finds: a narrower range would drop results from a bundle."""
    import random
    import sqlite3

    from collector.evidence.export import _result_ranges

    rng = random.Random(6)
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE results (agent_id INTEGER, epoch INTEGER, seq INTEGER, check_id INTEGER, scheduled_ns INTEGER)"
    )
    conn.execute("CREATE INDEX results_check_time ON results(check_id, scheduled_ns)")
    rows = []
    for agent, epoch in ((1, 10), (1, 11), (2, 10), (3, 5)):
        for seq in range(1, 3000):  # results arrive out of their scheduled order, streams interleaved
            rows.append(
                (agent, epoch, seq, rng.randrange(1, 40), seq * 1000 + rng.randrange(-20_000, 20_000))
            )
    rng.shuffle(rows)
    conn.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?)", rows)

    def per_check(checks: list[int], start: int, end: int) -> set[tuple[int, int, int, int]]:
        spans: dict[tuple[int, int], tuple[int, int]] = {}
        for cid in checks:
            for agent, epoch, lo, hi in conn.execute(
                "SELECT agent_id, epoch, min(seq), max(seq) FROM results"
                " WHERE check_id = ? AND scheduled_ns >= ? AND scheduled_ns < ? GROUP BY agent_id, epoch",
                (cid, start, end),
            ):
                a, b = spans.get((agent, epoch), (lo, hi))
                spans[(agent, epoch)] = (min(a, lo), max(b, hi))
        return {(k[0], k[1], v[0], v[1]) for k, v in spans.items()}

    for _ in range(60):
        checks = rng.sample(range(1, 45), rng.randrange(1, 20))
        start = rng.randrange(-50_000, 3_000_000)
        end = start + rng.randrange(0, 1_500_000)
        assert set(_result_ranges(conn, checks, start, end)) == per_check(checks, start, end)
    assert _result_ranges(conn, [99], 0, 10**9) == []
