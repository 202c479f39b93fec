"""``slaprobe evidence verify``: check a bundle end to end, trusting nothing in it but the keys.

In order, stopping at the first failure and naming it:

1. the archive reads (a truncated or damaged archive fails here);
2. ``SHA256SUMS`` lists every file exactly, and every hash matches;
3. the collector's signature over ``SHA256SUMS`` holds;
4. the catalogue's hash is the one the manifest and the report name;
5. every agent chain holds: records contiguous, each link's digest, each link joined to the
   one before, the signature of every eviction link and of the last link (``--all-signatures``:
   of every link), keys from the agent inventory;
6. the result tables are regenerated from the chains and equal the bundle's, byte for byte;
7. the report is recomputed from the chains' results with the bundle's SLA definitions,
   maintenance log and check versions, and equals the bundle's report.

What a pass proves, and what it relies on (README "Evidence for disputes"): the agents'
public keys and the collector's key must be the ones the parties know independently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import sqlite3
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from collector.catalogue import parse_catalogue
from collector.evidence import layout
from collector.evidence.archive import hashing_text
from collector.evidence.records import TableWriter, decode, parse_view, read_frames
from collector.evidence.report_doc import build_report
from collector.rollups import RawSource
from collector.sla.report import Context
from collector.store import Reader, gap_rows, measurement_row, open_store
from collector.wire import InvalidRecord, decode_record, result_row
from protos import slaprobe_v1_pb2 as pb
from slaprobe import chain
from slaprobe.model import Gap, Measurement

_SKEW = 2**62  # no clock-skew limit: the bundle's records were accepted when they arrived


class VerifyFailed(Exception):
    """The first thing in the bundle that does not hold."""


class Verifier:
    def __init__(
        self, archive: Path, *, all_signatures: bool = False, say: Callable[[str], None] = print
    ) -> None:
        self.archive = archive
        self.all_signatures = all_signatures
        self.say = say
        self.phases: dict[str, float] = {}  # wall seconds per step (benchmarks)
        self._listed: dict[str, str] = {}  # SHA256SUMS: path -> sha256 (every file checked against it)

    def run(self) -> None:
        cpu = time.process_time()
        try:
            self._run()
        finally:
            self.phases["CPU: this process"] = time.process_time() - cpu

    def _run(self) -> None:
        with tempfile.TemporaryDirectory(prefix="slaprobe-verify-") as tmp:
            t = time.monotonic()
            root = self._extract(Path(tmp))
            self.phases["extract"] = time.monotonic() - t
            # Step 7's work (the collector's database rebuilt from the chains, the report
            # recomputed) is most of a verification and needs only the files: it starts now in a
            # process of its own, while this one runs steps 2-6. Its answer is looked at only if
            # they pass (a failure before it stops it); the order of the checks is unchanged.
            recompute = _start(_recompute, str(root), str(Path(tmp) / "recomputed.db"))
            try:
                self._checks(root, recompute)
            finally:
                recompute.cancel()
                _stop(recompute)

    def _checks(self, root: Path, recompute: Future[tuple[str, dict[str, float]]]) -> None:
        t = time.monotonic()
        self._sums(root)
        self.phases["hashes"] = time.monotonic() - t
        self._signature(root)
        manifest = _load_json(root / layout.MANIFEST)
        if manifest.get("format") != layout.FORMAT:
            raise VerifyFailed(f"unknown bundle format {manifest.get('format')!r}")
        catalogue_text = (root / layout.CATALOGUE).read_text(encoding="utf-8")
        digest = hashlib.sha256(catalogue_text.encode("utf-8")).hexdigest()
        report = _load_json(root / layout.REPORT_JSON)
        if digest != manifest["catalogue"]["sha256"] or digest != report.get("catalogue_sha256"):
            raise VerifyFailed(
                f"{layout.CATALOGUE}: its hash {digest[:16]}… is not the one the manifest and report name"
            )
        self.say(f"ok   SLA definitions: {layout.CATALOGUE}, sha256 {digest}")
        t = time.monotonic()
        self._chains_and_tables(root, manifest)
        self.phases["chains and tables"] = time.monotonic() - t
        t = time.monotonic()
        self._report(report, recompute)
        self.phases["waiting for the report"] = time.monotonic() - t

    # ---- 1-3: the archive, its hashes and the collector's signature ------------------------------

    def _extract(self, tmp: Path) -> Path:
        try:
            with tarfile.open(self.archive, "r:gz") as tar:
                tar.copybufsize = 1 << 20  # type: ignore[attr-defined]  # 1 MiB copies, not 16 KiB
                tar.extractall(tmp / "x", filter="data")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise VerifyFailed(f"{self.archive}: the archive is damaged or truncated ({exc})") from None
        tops = list((tmp / "x").iterdir())
        if len(tops) != 1 or not tops[0].is_dir():
            raise VerifyFailed(f"{self.archive}: expected one top directory, found {len(tops)} entries")
        self.say(f"ok   archive {self.archive.name}: reads completely")
        return tops[0]

    def _sums(self, root: Path) -> None:
        listed: dict[str, str] = {}
        try:
            lines = (root / layout.SUMS).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise VerifyFailed(f"{layout.SUMS} is missing") from None
        for n, line in enumerate(lines, 1):
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64:
                raise VerifyFailed(f"{layout.SUMS} line {n} is not 'sha256  path'")
            listed[name] = digest
        present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {
            layout.SUMS,
            layout.SUMS_SIG,
        }
        for name in sorted(set(listed) - present):
            raise VerifyFailed(f"{name}: listed in {layout.SUMS} but missing from the bundle")
        for name in sorted(present - set(listed)):
            raise VerifyFailed(f"{name}: in the bundle but not covered by {layout.SUMS}")
        names = sorted(listed)
        with ThreadPoolExecutor(2) as pool:  # hashlib releases the GIL: both cores
            for name, digest in zip(names, pool.map(lambda n: _sha256(root / n), names), strict=True):
                if digest != listed[name]:
                    raise VerifyFailed(
                        f"{name}: its SHA-256 does not match {layout.SUMS} (the file was changed)"
                    )
        self._listed = listed
        self.say(f"ok   {layout.SUMS}: {len(listed)} files, every hash matches")

    def _signature(self, root: Path) -> None:
        key = serialization.load_pem_public_key((root / layout.COLLECTOR_KEY).read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise VerifyFailed(f"{layout.COLLECTOR_KEY} is not an Ed25519 public key")
        try:
            key.verify((root / layout.SUMS_SIG).read_bytes(), (root / layout.SUMS).read_bytes())
        except (InvalidSignature, FileNotFoundError):
            raise VerifyFailed(
                f"{layout.SUMS_SIG}: not a valid signature of {layout.SUMS} by {layout.COLLECTOR_KEY}"
            ) from None
        fingerprint = hashlib.sha256(chain.public_raw(key)).hexdigest()
        self.say(f"ok   collector signature over {layout.SUMS}: key sha256 {fingerprint}")

    # ---- 5-6: the agents' chains, and the tables derived from them ----------------------------------

    def _chains_and_tables(self, root: Path, manifest: dict[str, Any]) -> None:
        period = manifest["period"]
        start, end = int(period["start_ns"]), int(period["end_ns"])
        checks = _load_json(root / layout.CHECKS)
        check_rows = {c["key"]: int(c["id"]) for c in checks["checks"]}
        agents = {a["name"]: a for a in _load_json(root / layout.AGENTS)}
        # The tables are regenerated into hashes, not files: the bundle's own are known to hash
        # to what SHA256SUMS lists (step 2).
        (rcsv, rcsv_sha), (gcsv, gcsv_sha), (jsonl, jsonl_sha) = (
            hashing_text(),
            hashing_text(),
            hashing_text(),
        )
        tables = TableWriter(start, end, rcsv, gcsv, jsonl, set(check_rows))
        for entry in manifest["chains"]:
            self._chain(root, entry, agents, tables)
        tables.flush()
        for f in (rcsv, gcsv, jsonl):
            f.flush()
        for name, mine in (
            (layout.RESULTS_CSV, rcsv_sha()),
            (layout.GAPS_CSV, gcsv_sha()),
            (layout.RESULTS_JSONL, jsonl_sha()),
        ):
            if mine != self._listed.get(name):
                raise VerifyFailed(
                    f"{name}: does not say what the signed records say (regenerated from the chains, it differs)"
                )
        self.say(f"ok   {', '.join(layout.DERIVED)}: regenerated from the signed records, identical")

    def _chain(self, root: Path, entry: dict[str, Any], agents: dict[str, Any], tables: TableWriter) -> None:
        name, epoch = str(entry["agent"]), int(entry["epoch"])
        where = f"agent {name!r} epoch {epoch}"
        agent = agents.get(name)
        if agent is None:
            raise VerifyFailed(f"{where}: not in {layout.AGENTS}")
        keys = chain.public_keys(bytes.fromhex(k["public_key_hex"]) for k in agent["keys"])
        first = int(entry["first_seq"])
        walker = chain.ChainWalker(
            epoch,
            keys,
            head=chain.GENESIS if first == 1 else None,
            next_seq=first,
            signatures="all" if self.all_signatures else "evictions",
        )
        last = 0
        anchored = bool(entry.get("anchored"))
        record_, seal_, add, add_view = walker.record, walker.seal, tables.add, tables.add_view
        try:
            with open(root / entry["file"], "rb") as f:
                for i, raw in enumerate(read_frames(f)):
                    view = parse_view(raw)  # a result is rendered from this reading alone
                    if view.WhichOneof("kind") == "result":
                        last = view.seq
                        record_(last, last, raw)
                        add_view(name, epoch, view)
                        continue
                    record, last = decode(raw)
                    if record.WhichOneof("kind") == "seal":
                        link = chain.parse_link(record.seq, record.seal)
                        if i == 0 and anchored:
                            if not link.signature_ok(self._key(keys, link, where)):
                                raise chain.ChainError(link.seq, "bad signature on the anchor link")
                            walker.anchor(link)
                        else:
                            seal_(link)
                        continue
                    record_(record.seq, last, raw)
                    add(name, epoch, record)
            if entry.get("sealed", True):
                walker.finish()
        except chain.ChainError as exc:
            raise VerifyFailed(f"first broken link: {where}, {exc}") from None
        except (ValueError, DecodeError) as exc:  # a cut chain file or an undecodable record
            raise VerifyFailed(f"{where}: {entry['file']}: {exc or 'a record does not decode'}") from None
        if last != int(entry["last_seq"]):
            raise VerifyFailed(
                f"{where}: the chain ends at seq {last}, the manifest says {entry['last_seq']}"
            )
        if not entry.get("sealed", True) or not keys:
            raise VerifyFailed(f"{where}: records are not signed by the agent; they cannot be verified")
        signed = "every link signature" if self.all_signatures else "eviction links and the last link signed"
        self.say(
            f"ok   chain {where}: seqs {first}..{last}, {walker.records} records in {walker.links} links,"
            f" every digest and link holds, {signed} ({len(keys)} key(s) from {layout.AGENTS})"
        )

    @staticmethod
    def _key(keys: dict[bytes, Ed25519PublicKey], link: chain.Link, where: str) -> Ed25519PublicKey:
        key = keys.get(bytes(link.body.key_id))
        if key is None:
            raise VerifyFailed(f"{where}: link at seq {link.seq} is signed by a key not in {layout.AGENTS}")
        return key

    # ---- 7: the report ---------------------------------------------------------------------------

    def _report(self, report: dict[str, Any], recompute: Future[tuple[str, dict[str, float]]]) -> None:
        try:
            text, phases = recompute.result()
        except Exception as exc:  # the rebuild met something steps 5-6 let through: a failure, not a crash
            raise VerifyFailed(
                f"{layout.REPORT_JSON}: cannot be recomputed from the signed records: {type(exc).__name__}: {exc}"
            ) from exc
        self.phases.update({f"recompute: {k}": v for k, v in phases.items()})
        recomputed = json.loads(text)
        if recomputed != report:
            where = _first_difference(report, recomputed, "report")
            raise VerifyFailed(
                f"{layout.REPORT_JSON}: differs from the report recomputed from the signed records at {where}"
            )
        verdicts = ", ".join(f"{v['service']}: {v['status']}" for v in report.get("verdicts", []))
        self.say(f"ok   {layout.REPORT_JSON}: recomputed from the signed records, identical ({verdicts})")


# ---- step 7's work, in its own process ----------------------------------------------------------


def _start(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """``fn(*args)`` in a separate process (in this one, at once, if none can start)."""
    try:
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        fut = pool.submit(fn, *args)
        fut.pool = pool  # type: ignore[attr-defined]
        return fut
    except (OSError, RuntimeError):
        done: Future[Any] = Future()
        try:
            done.set_result(fn(*args))
        except Exception as exc:  # raised where the result is asked for, as from a process
            done.set_exception(exc)
        return done


def _stop(fut: Future[Any]) -> None:
    """Stop the process behind ``fut`` (a verification that failed before needing it)."""
    pool = getattr(fut, "pool", None)
    if pool is None:
        return
    if not fut.done():
        for proc in list(getattr(pool, "_processes", {}).values()):  # no public way to stop a running job
            proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _recompute(root_dir: str, db_file: str) -> tuple[str, dict[str, float]]:
    """The collector's database rebuilt from the bundle's chains, and the report recomputed from it.

    Returns the report as JSON text and the seconds of each step. The checks of the records
    themselves are the main process's (steps 5-6); this only reads what they will vouch for.
    """
    root, db_path = Path(root_dir), Path(db_file)
    phases: dict[str, float] = {}
    t, cpu = time.monotonic(), time.process_time()
    manifest = _load_json(root / layout.MANIFEST)
    checks = _load_json(root / layout.CHECKS)
    check_rows = {c["key"]: int(c["id"]) for c in checks["checks"]}
    agents = {a["name"]: a for a in _load_json(root / layout.AGENTS)}
    now_ns = int(manifest["generated_ns"])
    db = open_store(db_path)
    conn = db.conn
    # A scratch database: no journal, no fsync, a large cache; the time index (random inserts)
    # is built after the rows, from its own definition; the unique one takes them in order.
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    for table, rows in (
        ("checks", checks["checks"]),
        ("check_versions", checks["versions"]),
        ("agents", [{k: v for k, v in a.items() if k != "keys"} for a in agents.values()]),
        ("maintenance", _load_json(root / layout.MAINTENANCE)),
    ):
        if rows:
            db.table(table).insert_all(rows)
    late = [
        sql
        for (sql,) in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'results' AND sql IS NOT NULL"
            " AND name != 'results_stream_seq'"
        ).fetchall()
    ]
    for sql in late:
        conn.execute(f"DROP INDEX {sql.split()[2]}")
    conn.execute("BEGIN")
    for entry in manifest["chains"]:
        agent = agents[str(entry["agent"])]
        _rows_of_chain(root / entry["file"], int(agent["id"]), int(entry["epoch"]), check_rows, now_ns, conn)
    conn.execute("COMMIT")
    phases["rows"] = time.monotonic() - t
    t = time.monotonic()
    for sql in late:
        conn.execute(sql)
    conn.close()
    phases["indexes"] = time.monotonic() - t
    t = time.monotonic()
    catalogue = parse_catalogue((root / layout.CATALOGUE).read_text(encoding="utf-8"), layout.CATALOGUE)
    reader = Reader(db_path)
    try:
        ctx = Context(catalogue, reader, RawSource(reader.db.conn), now_ns, "raw")
        period = manifest["period"]
        doc = build_report(
            ctx, manifest["site"], int(period["start_ns"]), int(period["end_ns"]), manifest["service"]
        )
    finally:
        reader.close()
    phases["report"] = time.monotonic() - t
    phases["CPU"] = time.process_time() - cpu
    return json.dumps(doc), phases


def _rows_of_chain(
    path: Path, agent_row: int, epoch: int, check_rows: dict[str, int], now_ns: int, conn: sqlite3.Connection
) -> None:
    results: list[tuple[Any, ...]] = []
    gaps: list[tuple[Any, ...]] = []
    parse = pb.Record.FromString
    with open(path, "rb") as f:
        for n, raw in enumerate(read_frames(f), 1):
            try:
                record = parse(raw)
            except DecodeError as exc:
                raise ValueError(f"{path.name}: record {n} cannot be decoded ({exc})") from exc
            kind = record.WhichOneof("kind")
            if kind == "seal":
                continue
            if kind == "result":
                # The ingest's own row builder: the same checks and row as decode_record +
                # measurement_row (a wire test holds them equal), at ~19 instead of ~25 µs.
                with contextlib.suppress(InvalidRecord):  # a record the collector rejected
                    results.append(
                        result_row(record, agent_row, epoch, check_rows, 0, now_ns=now_ns, max_skew_ns=_SKEW)
                    )
            else:
                _row(record, agent_row, epoch, check_rows, now_ns, results, gaps)
            if len(results) >= 50_000:
                _insert(conn, results, gaps)
    _insert(conn, results, gaps)


def _row(
    record: Any,
    agent_row: int,
    epoch: int,
    check_rows: dict[str, int],
    now_ns: int,
    results: list[tuple[Any, ...]],
    gaps: list[tuple[Any, ...]],
) -> None:
    """The collector's row for a record, as it would have stored it (rejected ones are left out)."""
    try:
        decoded = decode_record(record, now_ns=now_ns, max_skew_ns=_SKEW, checks=check_rows)
    except InvalidRecord:
        return
    p = decoded.payload
    if isinstance(p, Measurement):
        results.append(measurement_row(agent_row, epoch, decoded.seq, check_rows[p.check_id], p, 0))
    elif isinstance(p, Gap):
        gaps.extend(gap_rows(agent_row, epoch, decoded.seq, p, check_rows, 0))


def _insert(conn: sqlite3.Connection, results: list[tuple[Any, ...]], gaps: list[tuple[Any, ...]]) -> None:
    if results:
        conn.executemany(f"INSERT OR IGNORE INTO results VALUES ({','.join('?' * len(results[0]))})", results)
        results.clear()
    if gaps:
        conn.executemany(f"INSERT OR IGNORE INTO gaps VALUES ({','.join('?' * len(gaps[0]))})", gaps)
        gaps.clear()


def _first_difference(a: Any, b: Any, path: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
        if len(a) != len(b):
            return f"{path} (length {len(a)} vs {len(b)})"
    return f"{path}: bundle says {json.dumps(a)[:80]}, recomputed {json.dumps(b)[:80]}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VerifyFailed(f"{path.name}: unreadable ({exc})") from None
