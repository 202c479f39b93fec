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
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector.catalogue import Catalogue, parse_catalogue
from collector.evidence import layout
from collector.evidence.html import render_html
from collector.evidence.records import Chain, TableWriter, decode, frame
from collector.evidence.report_doc import build_report
from collector.rollups import RawSource
from collector.sla.report import Context, Period, selected
from collector.store import Reader
from slaprobe import __version__
from slaprobe.chain import fingerprint, key_id, public_pem, public_raw
from slaprobe.schedule import NS_PER_S


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
    files: int = 0
    size: int = 0
    seconds: float = 0.0


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
) -> ExportResult:
    t0 = time.monotonic()
    now = time.time_ns() if now_ns is None else now_ns
    reader = Reader(db_path)
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
            )
            result.files = _seal_bundle(root, signing_key)
            _archive(root, out)
        result.size = out.stat().st_size
        result.seconds = time.monotonic() - t0
        return result
    finally:
        reader.close()


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
) -> None:
    conn = reader.db.conn
    check_names = {c for s in services for c in s.checks}
    checks = [
        dict(r)
        for r in reader.db.query("SELECT id, key, site, name FROM checks WHERE site = ? ORDER BY id", [site])
        if service is None or r["name"] in check_names
    ]
    check_ids = [c["id"] for c in checks]
    check_keys = {c["key"] for c in checks}
    ctx = Context(catalogue, reader, RawSource(conn), now, "raw")
    doc = build_report(ctx, site, start, end, service)
    # A slice belongs to the period by its start, so the last slice's slots (and results) may lie
    # after the period's end: export the records of a margin around it too (verify needs them).
    margin = 2 * NS_PER_S * max([int(s["report"]["slice_s"]) for s in doc["services"]] + [1])
    ranges = _ranges(conn, check_ids, start - margin, end + margin)
    every_agent = {int(r["id"]): dict(r) for r in reader.db.query("SELECT * FROM agents")}
    agents = {a: every_agent[a] for a, _ in ranges}

    (root / "records").mkdir()
    (root / "results").mkdir()
    with (
        open(root / layout.RESULTS_CSV, "w", encoding="utf-8", newline="") as rcsv,
        open(root / layout.GAPS_CSV, "w", encoding="utf-8", newline="") as gcsv,
        open(root / layout.RESULTS_JSONL, "w", encoding="utf-8") as jsonl,
    ):
        tables = TableWriter(start, end, rcsv, gcsv, jsonl, check_keys)
        for (agent_id, epoch), (lo, hi) in sorted(ranges.items()):
            name = str(agents[agent_id]["name"])
            chain = Chain(name, epoch, f"records/{agent_id}-{epoch}.chain")
            result.chains.append(
                _write_chain(root / chain.file, conn, agent_id, epoch, lo, hi, chain, tables)
            )
        result.results, result.gaps = tables.results, tables.gaps

    (root / "sla").mkdir()
    (root / layout.CATALOGUE).write_text(catalogue.text, encoding="utf-8")
    (root / layout.METHODOLOGY).write_text(layout.methodology_text(), encoding="utf-8")
    maintenance = reader.maintenance_windows(site, None, start, end, include_cancelled=True)
    _json(root / layout.MAINTENANCE, maintenance)

    (root / "inventory").mkdir()
    wanted = set(check_ids)
    versions = [
        dict(r)
        for r in reader.db.query("SELECT * FROM check_versions ORDER BY check_id, valid_from_ns")
        if r["check_id"] in wanted
    ]
    _json(root / layout.CHECKS, {"checks": checks, "versions": versions})
    _json(root / layout.AGENTS, [_agent_doc(reader, a) for _, a in sorted(agents.items())])

    (root / "report").mkdir()
    _json(root / layout.REPORT_JSON, doc)
    (root / layout.REPORT_HTML).write_text(render_html(doc), encoding="utf-8")

    (root / "protos").mkdir()
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
            "tables": {"results": tables.results, "gaps": tables.gaps, "clock_samples": tables.clocks},
            "collector_key": {"file": layout.COLLECTOR_KEY, "fingerprint": hashlib.sha256(pub).hexdigest()},
        },
    )


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

    for cid in check_ids:
        merge(
            conn.execute(
                "SELECT agent_id, epoch, min(seq), max(seq) FROM results"
                " WHERE check_id = ? AND scheduled_ns >= ? AND scheduled_ns < ? GROUP BY agent_id, epoch",
                (cid, start, end),
            )
        )
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


def _write_chain(
    path: Path,
    conn: sqlite3.Connection,
    agent_id: int,
    epoch: int,
    lo: int,
    hi: int,
    chain: Chain,
    tables: TableWriter,
) -> dict[str, Any]:
    """Write one chain file from the seal before ``lo`` through the seal after ``hi``."""
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
        start = conn.execute(
            "SELECT seq, kind FROM record_log WHERE agent_id = ? AND epoch = ? ORDER BY seq LIMIT 1",
            (agent_id, epoch),
        ).fetchone()
        if start is not None and start[1] == 5 and start[0] > 1:
            anchor = start
    first = int(anchor[0]) if anchor else 1
    last = int(closing[0]) if closing else hi
    records = links = 0
    with open(path, "wb", buffering=1 << 20) as f:
        cur = conn.execute(
            "SELECT seq, kind, raw FROM record_log WHERE agent_id = ? AND epoch = ? AND seq >= ? AND seq <= ?"
            " ORDER BY seq",
            (agent_id, epoch, first, last),
        )
        for _seq, kind, raw in cur:
            raw = bytes(raw)
            f.write(frame(raw))
            if kind == 5:
                links += 1
                continue
            records += 1
            record, _ = decode(raw)
            tables.add(chain.agent, epoch, record)
    return {
        "file": chain.file,
        "agent": chain.agent,
        "epoch": epoch,
        "first_seq": first,
        "last_seq": last,
        "anchored": anchor is not None,
        "sealed": closing is not None,
        "records": records,
        "links": links,
    }


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
    path.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _iso(ns: int) -> str:
    from collector.evidence.records import utc

    return utc(ns)


def _seal_bundle(root: Path, key: Ed25519PrivateKey) -> int:
    """SHA256SUMS over every file, in sha256sum's format, and its detached signature."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    lines = []
    for p in files:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        lines.append(f"{h.hexdigest()}  {p.relative_to(root).as_posix()}\n")
    sums = "".join(lines).encode()
    (root / layout.SUMS).write_bytes(sums)
    (root / layout.SUMS_SIG).write_bytes(key.sign(sums))
    return len(files) + 2


def _archive(root: Path, out: Path) -> None:
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(p), arcname=f"{root.name}/{p.relative_to(root).as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if p.is_dir() else 0o644
            if p.is_file():
                with open(p, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    os.replace(tmp, out)
