"""``slaprobe evidence export``: one site's (or service's) evidence for a period, in one archive.

What goes in (README "Evidence for disputes" explains it to its readers):

* ``records/*.chain``: every record of the period exactly as the agents signed it, per
  agent epoch, from the seal before the period's first record to the seal after its last;
* ``results/``: the same results as CSV (people) and JSON Lines (programs), rendered from
  the chain files (``records.TableWriter``), so a verifier can regenerate them;
* ``sla/``: the catalogue in force (the SLA definitions) and its hash, the maintenance log
  with who/when/why, the counting rules in words;
* ``inventory/``: the agents (names, public keys, versions) and the checks' versions;
* ``report/``: the computed report (JSON) and the human report (HTML);
* ``SHA256SUMS`` over every file, ``SHA256SUMS.sig`` (Ed25519, by the collector's
  ``signing.key``) and ``collector.pub.pem``, checkable with sha256sum and openssl.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable, Container, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector import record_log
from collector.catalogue import Catalogue, parse_catalogue
from collector.evidence import layout
from collector.evidence.archive import Archiver
from collector.evidence.html import render_html
from collector.evidence.records import Chain, TableWriter, record_brief, rejected_header, rejected_line
from collector.evidence.report_doc import add_exclusions, build_report
from collector.rollups import RawSource, RollupSource, meta
from collector.sla.engine import Source
from collector.sla.report import Context, Period, _overlaps, parts_for, selected, slice_and_origin
from collector.store import Reader
from slaprobe import __version__
from slaprobe.chain import fingerprint, key_id, public_pem, public_raw
from slaprobe.schedule import NS_PER_S

_LEN = struct.Struct(">I")  # a chain file's framing (records.frame)
T = TypeVar("T")
# Records (seqs) of a bundle below which the tables are rendered in this process alone.
PARALLEL_RENDER_MIN = 100_000
MAIN_SHARE = 0.45  # of the records to render: this process also copies every chain file
MMAP_BYTES = 1 << 34  # SQLite caps it at its build's limit (2 GiB here)


class ExportError(Exception):
    """Nothing to export, or no way to sign it; the message says which."""


@dataclass
class ExportResult:
    path: Path
    start_ns: int
    end_ns: int
    chains: list[dict[str, Any]] = field(default_factory=list)
    results: int = 0
    gaps: int = 0
    rejected: int = 0  # records of the chains the collector rejected at ingest (listed, not counted)
    files: int = 0
    size: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds per step (benchmarks)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    if not path.exists():
        raise ExportError(
            f"no evidence-signing key at {path}: run `slaprobe collector init --tls-dir ...` first"
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ExportError(f"{path} is not an Ed25519 private key")
    return key


def export_bundle(
    db_path: Path,
    signing_key: Ed25519PrivateKey,
    site: str,
    period: Period,
    out: Path,
    *,
    service: str | None = None,
    now_ns: int | None = None,
    period_label: str = "",
    max_future_skew_ns: int | None = None,
) -> ExportResult:
    """Write the bundle of ``site`` (or ``service``) over ``period`` to ``out``.

    ``max_future_skew_ns``: the clock skew the collector allows on ingest (its setting's default
    when None), stated in the manifest for verify to re-apply to the rejected records.
    """
    t0, cpu0 = time.monotonic(), time.process_time()
    if max_future_skew_ns is None:
        from collector.server import CollectorSettings  # not at import: the workers need no gRPC

        max_future_skew_ns = int(CollectorSettings.max_future_skew_s * 1e9)
    now = time.time_ns() if now_ns is None else now_ns
    reader = _reader(db_path)
    try:
        stored = reader.catalogue_text()
        if stored is None:
            raise ExportError(f"{db_path} holds no catalogue: start the collector once")
        catalogue = parse_catalogue(stored[1], f"{stored[0]} (as stored in {db_path})")
        chosen = selected(catalogue, site, service)
        if not chosen:
            what = f"site {site!r}" if service is None else f"service {service!r} of site {site!r}"
            raise ExportError(f"no {what} in the catalogue")
        (_, services) = chosen[0]
        start, end = period.resolve(services[0].sla, now)
        end = min(end, now)
        if end <= start:
            raise ExportError("the period has not started yet")
        with tempfile.TemporaryDirectory(prefix=".evidence-", dir=out.parent) as tmp:
            root = Path(tmp) / layout.bundle_name(site, service, period_label or str(start))
            root.mkdir()
            result = ExportResult(out, start, end)
            part = out.with_name(out.name + ".part")
            # The report is the one long computation that needs nothing the rest writes: it runs
            # in a process of its own while this one writes the chains and tables, and the
            # archive is compressed on threads as the files are completed (archive.py).
            pool = _pool()
            report = _submit(pool, _report_job, str(db_path), stored, site, service, start, end, now)
            archiver = Archiver(root, part)
            try:
                _write(
                    root,
                    reader,
                    catalogue,
                    stored[0],
                    site,
                    service,
                    services,
                    start,
                    end,
                    now,
                    signing_key,
                    result,
                    archiver,
                    report,
                    pool,
                    db_path,
                    Path(tmp),
                    max_future_skew_ns,
                )
                t = time.monotonic()
                result.files = _seal_bundle(root, signing_key, archiver)
                result.phases["rest of the compression"] = time.monotonic() - t
            except BaseException:
                archiver.abort()
                part.unlink(missing_ok=True)
                raise
            finally:
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
            os.replace(part, out)
        result.size = out.stat().st_size
        result.seconds = time.monotonic() - t0
        result.phases["CPU: this process (and its compression threads)"] = time.process_time() - cpu0
        return result
    finally:
        reader.close()


def _reader(db_path: Path | str) -> Reader:
    """A reader whose pages are read through a memory map (as much of the file as SQLite allows).

    The export reads a period's rows of ``results`` by index, each one a random page of the
    table (the report), and the period's ``record_log`` range: through the map a page is a
    memory access, not a ``pread`` per page the cache misses (the month's report: ~27% less CPU).
    """
    reader = Reader(db_path)
    reader.db.conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    return reader


def _pool() -> ProcessPoolExecutor | None:
    """Two worker processes (spawned: no SQLite connection crosses a fork), or None if none can start."""
    try:
        return ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    except (OSError, RuntimeError):
        return None


def _submit(pool: ProcessPoolExecutor | None, fn: Callable[..., T], *args: Any) -> Future[T]:
    """``fn(*args)`` in ``pool``; without one, in this process at once."""
    if pool is not None:
        try:
            return pool.submit(fn, *args)
        except (OSError, RuntimeError):
            pass
    done: Future[T] = Future()
    done.set_result(fn(*args))
    return done


def _report_job(
    db_path: str, stored: tuple[str, str], site: str, service: str | None, start: int, end: int, now: int
) -> tuple[str, float, float]:
    """(report document as JSON, seconds taken, CPU seconds taken); the exclusions (known only
    once the chains are written) are added, and the HTML rendered (~0.04 s), by the caller.

    From the rollups when every raw row the report could read is still kept (invariant 9: the
    rollup path and the raw path give the same report, field for field, within raw retention;
    verify recomputes it from the records by the raw path and compares): a month of one site in
    ~0.5 s instead of ~15-20 CPU-s. Otherwise from the raw rows that remain (``_period_rows``),
    as verify, which has only the records still kept, sees them.
    """
    t, cpu = time.monotonic(), time.process_time()
    catalogue = parse_catalogue(stored[1], f"{stored[0]} (as stored in {db_path})")
    reader = _reader(db_path)
    try:
        ((_, services),) = selected(catalogue, site, service)
        source: Source
        if meta(reader.db.conn, "raw_pruned_before_ns") <= start - _report_margin(
            reader, site, services, start, end
        ):
            source = RollupSource(reader.db.conn)
        else:
            source = RawSource(reader.db.conn, _period_rows(reader, site, services, start, end))
        ctx = Context(catalogue, reader, source, now, "raw")
        doc = build_report(ctx, site, start, end, service)
    finally:
        reader.close()
    return json.dumps(doc), time.monotonic() - t, time.process_time() - cpu


# The report's result columns (RawSource's), copied with an index holding them all.
_REPORT_COLUMNS = (
    "check_id, scheduled_ns, ok, duration_ns, degraded, error_kind, clock_offset_ns, clock_synced, agent_id"
)


def _period_rows(reader: Reader, site: str, services: list[Any], start: int, end: int) -> list[str]:
    """The period's results of the exported checks, copied into a scratch table for the report.

    Why: the report reads every row of the period per check through the (check, time) index,
    and each row's other columns from a random page of ``results`` (rows are stored in arrival
    order, all checks interleaved): ~20 CPU-s for a month of one site. The copy reads the
    period's rowid range in order (as ``_result_ranges``) and indexes every column the report
    reads (``RawSource``), so its queries never visit a table. It holds every row within a day
    beyond the margin the records are exported with (two slices; the report cannot read
    further, or verify, which has only the exported records, would disagree). Returns the
    table names for ``RawSource``.
    """
    conn = reader.db.conn
    names = {c for s in services for c in s.checks}
    check_ids = [
        int(r["id"])
        for r in reader.db.query("SELECT id, name FROM checks WHERE site = ? ORDER BY id", [site])
        if r["name"] in names
    ]
    margin = _report_margin(reader, site, services, start, end)
    lo_ns, hi_ns = start - margin, end + margin
    lo = hi = None
    for cid in check_ids:
        a, b = conn.execute(
            "SELECT min(rowid), max(rowid) FROM results WHERE check_id = ? AND scheduled_ns >= ? AND scheduled_ns < ?",
            (cid, lo_ns, hi_ns),
        ).fetchone()
        if a is not None:
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    conn.execute("PRAGMA query_only=OFF")  # a private temporary database; the collector's is only read
    try:
        conn.execute("ATTACH '' AS period")
        conn.execute(f"CREATE TABLE period.results AS SELECT {_REPORT_COLUMNS} FROM main.results WHERE 0")
        for i in range(0, len(check_ids), 500):
            part = check_ids[i : i + 500]
            if lo is not None:
                conn.execute(
                    f"INSERT INTO period.results SELECT {_REPORT_COLUMNS} FROM main.results NOT INDEXED"
                    f" WHERE rowid BETWEEN ? AND ? AND check_id IN ({','.join('?' * len(part))})"
                    " AND scheduled_ns >= ? AND scheduled_ns < ?",
                    (lo, hi, *part, lo_ns, hi_ns),
                )
        conn.execute(f"CREATE INDEX period.results_report ON results({_REPORT_COLUMNS})")
    finally:
        conn.execute("PRAGMA query_only=ON")
    return ["period.results"]


def _report_margin(reader: Reader, site: str, services: list[Any], start: int, end: int) -> int:
    """How far around the period the report's rows are taken: two slices (the margin the records
    are exported with) and a day."""
    return 2 * NS_PER_S * max([*_slice_s(reader, site, services, start, end), 1]) + 86_400 * NS_PER_S


def _slice_s(reader: Reader, site: str, services: list[Any], start: int, end: int) -> list[int]:
    """Each service's slice in whole seconds, as its report row gives it (``report.score``'s rule)."""
    versions = reader.check_versions(site, start, end + 86_400 * NS_PER_S)
    out = []
    for v in services:
        in_period = [p for p in parts_for(versions, v.checks) if _overlaps(p, start, end)]
        slice_ns, _ = slice_and_origin(v.sla, in_period, v.checks)
        out.append(int(slice_ns / NS_PER_S))
    return out


def _write(
    root: Path,
    reader: Reader,
    catalogue: Catalogue,
    catalogue_source: str,
    site: str,
    service: str | None,
    services: list[Any],
    start: int,
    end: int,
    now: int,
    key: Ed25519PrivateKey,
    result: ExportResult,
    archiver: Archiver,
    report: Future[tuple[str, float, float]],
    pool: ProcessPoolExecutor | None,
    db_path: Path,
    scratch: Path,
    max_future_skew_ns: int,
) -> None:
    t_start = time.monotonic()
    conn = reader.db.conn
    check_names = {c for s in services for c in s.checks}
    checks = [
        dict(r)
        for r in reader.db.query("SELECT id, key, site, name FROM checks WHERE site = ? ORDER BY id", [site])
        if service is None or r["name"] in check_names
    ]
    check_ids = [c["id"] for c in checks]
    check_keys = {c["key"] for c in checks}
    # A slice belongs to the period by its start, so the last slice's slots (and results) may lie
    # after the period's end: export the records of a margin around it too (verify needs them).
    # The slices are the report's (checked against it below); the report itself is still running.
    slices = _slice_s(reader, site, services, start, end)
    margin = 2 * NS_PER_S * max([*slices, 1])
    ranges = _ranges(conn, check_ids, start - margin, end + margin)
    every_agent = {int(r["id"]): dict(r) for r in reader.db.query("SELECT * FROM agents")}
    agents = {a: every_agent[a] for a, _ in ranges}

    for d in ("", "inventory", "protos", "records", "report", "results", "sla"):
        (root / d).mkdir(exist_ok=True)
        archiver.add_dir(root / d)
    spans = [
        (agent_id, epoch, str(agents[agent_id]["name"]), *_chain_span(conn, agent_id, epoch, lo, hi))
        for (agent_id, epoch), (lo, hi) in sorted(ranges.items())
    ]
    # The tables are most of the export's work: a worker process renders the records from a cut
    # on (every line depends on its record alone, so the parts join into the same bytes).
    cut = _cut(spans) if pool is not None else None
    rendered: Future[tuple[int, int, int, float]] | None = None
    rejected: list[tuple[str, int, int, str, int, tuple[str, str, int]]] = []
    if cut is not None:
        rendered = _submit(
            pool, _render_job, str(db_path), [s[:5] for s in spans[cut[0] :]], cut[1], start, end,
            sorted(check_keys), str(scratch),
        )  # fmt: skip
    with (
        open(root / layout.RESULTS_CSV, "wb") as rcsv,
        open(root / layout.GAPS_CSV, "wb") as gcsv,
        open(root / layout.RESULTS_JSONL, "wb") as jsonl,
    ):
        tables = TableWriter(start, end, rcsv, gcsv, jsonl, check_keys)
        for i, (agent_id, epoch, name, first, last, anchored, sealed) in enumerate(spans):
            chain = Chain(name, epoch, f"records/{agent_id}-{epoch}.chain")
            # This process renders the records before the cut.
            upto = last if cut is None or i < cut[0] else (cut[1] - 1 if i == cut[0] else -1)
            listed = {
                seq: (reason, at) for seq, reason, at in reader.rejections(agent_id, epoch, first, last)
            }
            found: dict[int, bytes] = {}
            records, links = _write_chain(
                root / chain.file, conn, agent_id, epoch, first, last, upto, chain, tables, listed, found
            )
            for seq in sorted(found):  # a rejection of a record the chain file holds
                rejected.append((name, epoch, seq, listed[seq][0], listed[seq][1], record_brief(found[seq])))
            result.chains.append(
                {
                    "file": chain.file,
                    "agent": name,
                    "epoch": epoch,
                    "first_seq": first,
                    "last_seq": last,
                    "anchored": anchored,
                    "sealed": sealed,
                    "records": records,
                    "links": links,
                }
            )
            archiver.add_file(root / chain.file)  # compressed while the next one is written
        tables.flush()
    counts = [tables.results, tables.gaps, tables.clocks]
    if rendered is not None:
        t = time.monotonic()
        *more, render_cpu = rendered.result()
        result.phases["waiting for the tables' second part"] = time.monotonic() - t
        result.phases["CPU: table process"] = render_cpu
        counts = [a + b for a, b in zip(counts, more, strict=True)]
        for name in (layout.RESULTS_CSV, layout.GAPS_CSV, layout.RESULTS_JSONL):
            with open(root / name, "ab") as dst, open(scratch / Path(name).name, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    result.results, result.gaps = counts[0], counts[1]
    with open(root / layout.REJECTED_CSV, "w", encoding="utf-8", newline="") as f:
        f.write(rejected_header())
        for name, epoch, seq, reason, at, (kind, check, when) in rejected:
            f.write(rejected_line(name, epoch, seq, kind, check, when, reason, at))
    result.rejected = len(rejected)
    archiver.add_file(root / layout.REJECTED_CSV)
    result.phases["chains and tables"] = time.monotonic() - t_start

    (root / layout.CATALOGUE).write_text(catalogue.text, encoding="utf-8")
    (root / layout.METHODOLOGY).write_text(layout.methodology_text(), encoding="utf-8")
    maintenance = reader.maintenance_windows(site, None, start, end, include_cancelled=True)
    _json(root / layout.MAINTENANCE, maintenance)

    wanted = set(check_ids)
    versions = [
        dict(r)
        for r in reader.db.query("SELECT * FROM check_versions ORDER BY check_id, valid_from_ns")
        if r["check_id"] in wanted
    ]
    _json(root / layout.CHECKS, {"checks": checks, "versions": versions})
    _json(root / layout.AGENTS, [_agent_doc(reader, a) for _, a in sorted(agents.items())])

    for name in (layout.CATALOGUE, layout.MAINTENANCE, layout.METHODOLOGY, layout.AGENTS, layout.CHECKS):
        archiver.add_file(root / name)

    t = time.monotonic()
    report_text, report_s, report_cpu = report.result()
    result.phases["report (its own process)"] = report_s
    result.phases["CPU: report process"] = report_cpu
    result.phases["waiting for the report"] = time.monotonic() - t
    doc = json.loads(report_text)
    doc_slices = [int(v["report"]["slice_s"]) for v in doc["services"]]
    if doc_slices != slices:
        raise RuntimeError(f"internal: report slices {doc_slices} are not the {slices} exported around")
    add_exclusions(doc, [r[3] for r in rejected], layout.REJECTED_CSV)
    (root / layout.REPORT_JSON).write_text(_json_text(doc), encoding="utf-8")
    (root / layout.REPORT_HTML).write_text(render_html(doc), encoding="utf-8")

    proto = Path(__file__).resolve().parents[2] / "protos" / "slaprobe_v1.proto"
    shutil.copyfile(proto, root / layout.PROTO)
    (root / layout.README).write_text(layout.readme_text(), encoding="utf-8")
    pub = public_raw(key)
    (root / layout.COLLECTOR_KEY).write_text(public_pem(pub), encoding="utf-8")
    _json(
        root / layout.MANIFEST,
        {
            "format": layout.FORMAT,
            "site": site,
            "service": service,
            "period": {"start_ns": start, "end_ns": end, "from": _iso(start), "to": _iso(end)},
            "generated_ns": now,
            "generated": _iso(now),
            "collector_version": __version__,
            "catalogue": {
                "file": layout.CATALOGUE,
                "sha256": catalogue.digest,
                "source": catalogue_source,
            },
            "chains": result.chains,
            "tables": {"results": counts[0], "gaps": counts[1], "clock_samples": counts[2]},
            # How the collector validated records on arrival: verify re-applies it to each record
            # listed as rejected (with the listed receipt time) and leaves out exactly those.
            "ingest": {
                "max_future_skew_ns": max_future_skew_ns,
                "rejected": len(rejected),
                "file": layout.REJECTED_CSV,
            },
            "collector_key": {"file": layout.COLLECTOR_KEY, "fingerprint": hashlib.sha256(pub).hexdigest()},
        },
    )
    # The tables last: a verifier's pieces need the chains and the small files above, and start
    # while it still extracts the tables (~60% of the bytes), which only its own process reads.
    for name in (
        layout.MANIFEST,
        layout.README,
        layout.COLLECTOR_KEY,
        layout.PROTO,
        layout.REPORT_HTML,
        layout.REPORT_JSON,
        layout.GAPS_CSV,
        layout.RESULTS_JSONL,
        layout.RESULTS_CSV,
    ):
        archiver.add_file(root / name)


def _ranges(
    conn: sqlite3.Connection, check_ids: list[int], start: int, end: int
) -> dict[tuple[int, int], tuple[int, int]]:
    """Per (agent, epoch): the seqs holding the period's results, gaps and clock samples."""
    spans: dict[tuple[int, int], tuple[int, int]] = {}

    def merge(rows: Iterable[tuple[Any, ...]]) -> None:
        for agent, epoch, lo, hi in rows:
            if lo is None:
                continue
            k = (int(agent), int(epoch))
            a, b = spans.get(k, (int(lo), int(hi)))
            spans[k] = (min(a, int(lo)), max(b, int(hi)))

    merge(_result_ranges(conn, check_ids, start, end))
    for cid in check_ids:
        merge(
            conn.execute(
                "SELECT agent_id, epoch, min(seq), max(through_seq) FROM gaps"
                " WHERE check_id = ? AND from_ns < ? AND to_ns >= ? GROUP BY agent_id, epoch",
                (cid, end, start),
            )
        )
    for agent in {a for a, _ in spans}:
        merge(
            conn.execute(
                "SELECT agent_id, epoch, min(seq), max(seq) FROM clock_samples"
                " WHERE agent_id = ? AND t0_ns >= ? AND t0_ns < ? GROUP BY agent_id, epoch",
                (agent, start, end),
            )
        )
    return spans


def _result_ranges(
    conn: sqlite3.Connection, check_ids: list[int], start: int, end: int
) -> list[tuple[Any, ...]]:
    """(agent, epoch, min seq, max seq) of the period's results of ``check_ids``.

    Why two steps: asked per check, SQLite finds the rows by the (check, time) index and then
    looks each one up in the table for its stream and seq, a random read per result (a month
    of 50 checks: ~11 CPU-s, ~24 s under load). The index alone gives the rowids holding the
    period's rows (every matching row's rowid lies between their least and greatest); the
    rows between are then read in rowid order, sequentially, with the same conditions, so
    the answer is the same.
    """
    lo = hi = None
    for cid in check_ids:
        a, b = conn.execute(
            "SELECT min(rowid), max(rowid) FROM results WHERE check_id = ? AND scheduled_ns >= ? AND scheduled_ns < ?",
            (cid, start, end),
        ).fetchone()
        if a is not None:
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    if lo is None:
        return []
    rows: list[tuple[Any, ...]] = []
    for i in range(0, len(check_ids), 500):
        part = check_ids[i : i + 500]
        rows += conn.execute(
            "SELECT agent_id, epoch, min(seq), max(seq) FROM results NOT INDEXED WHERE rowid BETWEEN ? AND ?"
            f" AND check_id IN ({','.join('?' * len(part))}) AND scheduled_ns >= ? AND scheduled_ns < ?"
            " GROUP BY agent_id, epoch",
            (lo, hi, *part, start, end),
        ).fetchall()
    return rows


def _chain_span(
    conn: sqlite3.Connection, agent_id: int, epoch: int, lo: int, hi: int
) -> tuple[int, int, bool, bool]:
    """(first seq, last seq, anchored, sealed) of the chain file holding seqs ``lo..hi``: from the
    seal before ``lo`` through the seal after ``hi``."""
    anchor = conn.execute(
        "SELECT seq FROM record_log WHERE agent_id = ? AND epoch = ? AND seq < ? AND kind = 5"
        " ORDER BY seq DESC LIMIT 1",
        (agent_id, epoch, lo),
    ).fetchone()
    closing = conn.execute(
        "SELECT seq FROM record_log WHERE agent_id = ? AND epoch = ? AND seq >= ? AND kind = 5"
        " ORDER BY seq LIMIT 1",
        (agent_id, epoch, hi),
    ).fetchone()
    if anchor is None:
        # Nothing sealed before lo: the stream's first record kept, which after `db prune` is
        # the seal retention left as an anchor, and otherwise seq 1 (the chain's genesis).
        start = record_log.first_record(conn, agent_id, epoch)
        if start is not None and start[1] == 5 and start[0] > 1:
            anchor = start
    first = int(anchor[0]) if anchor else 1
    last = int(closing[0]) if closing else hi
    return first, last, anchor is not None, closing is not None


def _cut(spans: list[tuple[Any, ...]]) -> tuple[int, int] | None:
    """Where the worker's share of the rendering starts: (chain index, seq); None for small bundles."""
    sizes = [last - first + 1 for _a, _e, _n, first, last, *_ in spans]
    total = sum(sizes)
    if total < PARALLEL_RENDER_MIN:
        return None
    target = int(total * MAIN_SHARE)
    for i, size in enumerate(sizes):
        if target < size:
            return i, int(spans[i][3]) + target
        target -= size
    return None


def _write_chain(
    path: Path,
    conn: sqlite3.Connection,
    agent_id: int,
    epoch: int,
    first: int,
    last: int,
    upto: int,
    chain: Chain,
    tables: TableWriter,
    listed: Container[int] = (),
    found: dict[int, bytes] | None = None,
) -> tuple[int, int]:
    """Write one chain file (seqs ``first..last``), rendering its records through ``upto`` into the
    tables; return (records, links). The bytes of the records whose seq is ``listed`` (rejected at
    ingest) are put in ``found``."""
    records = links = 0
    add, agent = tables.add_raw, chain.agent
    with open(path, "wb") as f:
        stored = record_log.records(conn, agent_id, epoch, first, last)
        while rows := list(islice(stored, 4096)):
            f.write(b"".join([_LEN.pack(len(raw)) + raw for _seq, _kind, raw in rows]))
            for seq, kind, raw in rows:
                if seq in listed and found is not None:
                    found[seq] = raw
                if kind == 5:  # a seal: copied, nothing to render
                    links += 1
                    continue
                records += 1
                if seq <= upto:
                    add(agent, epoch, raw)
    return records, links


def _render_job(
    db_path: str,
    spans: list[tuple[int, int, str, int, int]],
    from_seq: int,
    start: int,
    end: int,
    check_keys: list[str],
    out_dir: str,
) -> tuple[int, int, int, float]:
    """Render the records of ``spans`` (the first one from ``from_seq``) into table parts without
    headers in ``out_dir``; return (results, gaps, clock samples) rendered and the CPU seconds."""
    cpu = time.process_time()
    out = Path(out_dir)
    reader = _reader(db_path)
    try:
        with (
            open(out / Path(layout.RESULTS_CSV).name, "wb") as rcsv,
            open(out / Path(layout.GAPS_CSV).name, "wb") as gcsv,
            open(out / Path(layout.RESULTS_JSONL).name, "wb") as jsonl,
        ):
            tables = TableWriter(start, end, rcsv, gcsv, jsonl, set(check_keys), header=False)
            add = tables.add_raw
            for i, (agent_id, epoch, name, first, last) in enumerate(spans):
                lo = from_seq if i == 0 else first
                for _seq, kind, raw in record_log.records(reader.db.conn, agent_id, epoch, lo, last):
                    if kind != record_log.SEAL:
                        add(name, epoch, raw)
            tables.flush()
    finally:
        reader.close()
    return tables.results, tables.gaps, tables.clocks, time.process_time() - cpu


def _agent_doc(reader: Reader, agent: dict[str, Any]) -> dict[str, Any]:
    keys = [
        {
            "key_id": key_id(bytes(r[0])).hex(),
            "sha256": fingerprint(bytes(r[0])),
            "public_key_hex": bytes(r[0]).hex(),
            "public_key_pem": public_pem(bytes(r[0])),
            "recorded": _iso(int(r[1])),
            "how": r[2],
        }
        for r in reader.db.execute(
            "SELECT public_key, recorded_ns, how FROM agent_keys WHERE name = ? ORDER BY recorded_ns",
            [agent["name"]],
        ).fetchall()
    ]
    return {**agent, "keys": keys}


def _json(path: Path, data: Any) -> None:
    path.write_text(_json_text(data), encoding="utf-8")


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _iso(ns: int) -> str:
    from collector.evidence.records import utc

    return utc(ns)


def _seal_bundle(root: Path, key: Ed25519PrivateKey, archiver: Archiver) -> int:
    """SHA256SUMS over every file, in sha256sum's format, and its detached signature; end the archive.

    The hashes are the archiver's, taken as it read each file into the archive.
    """
    digests = archiver.hashes()
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    if on_disk != set(digests):  # every file written must have been handed to the archive
        raise RuntimeError(f"internal: files not archived: {sorted(on_disk ^ set(digests))}")
    names = sorted(digests, key=lambda n: n.split("/"))  # the order of sorted Paths, as sha256sum lists
    sums = "".join(f"{digests[n]}  {n}\n" for n in names).encode()
    (root / layout.SUMS).write_bytes(sums)
    (root / layout.SUMS_SIG).write_bytes(key.sign(sums))
    archiver.finish([root / layout.SUMS, root / layout.SUMS_SIG])
    return len(names) + 2
