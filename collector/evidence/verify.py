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

How (speed: a month of one site is millions of records): steps 5-7 read each record once.
The chain files are cut into pieces, one per core (at a chain boundary near the middle, or
at a seal inside a chain); each piece walks its records, renders them into table parts it
hashes (SHA-256 and length) and builds the collector's rows of its results from the same
reading (``records.RowSink``: ``wire.result_row``'s checks and row) into a scratch database.
Where a piece is cut from the next, the same seal ends one walk and starts the other, and
the two must join (same offset, head and next seq). Each table must be its parts end to end:
the bundle's file, cut at the parts' lengths, hashes part for part to the regenerated ones.
The report is then recomputed by the collector's engine over all pieces' rows.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import mmap
import multiprocessing
import os
import sqlite3
import struct
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Container, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import IO, Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from collector.catalogue import parse_catalogue
from collector.evidence import layout
from collector.evidence.archive import MemberReader, iter_members
from collector.evidence.records import (
    REJECTED_CSV_HEADER,
    RowSink,
    TableWriter,
    _compiled,
    decode,
    parse_view,
    record_brief,
    rejected_header,
    rejected_line,
    utc,
)
from collector.evidence.report_doc import add_exclusions, build_report
from collector.rollups import RawSource, raw_summaries
from collector.sla.engine import AgentBits, Part, Summary
from collector.sla.histogram import LATENCY_EDGES_NS
from collector.sla.report import Context
from collector.store import Reader, gap_rows, measurement_row, open_store
from collector.wire import InvalidRecord, decode_record
from protos import slaprobe_v1_pb2 as pb
from slaprobe import chain
from slaprobe.model import Gap, Measurement

# The compiled counting of the report's rows and adding of its summaries (records._compiled).
_summarize: Any = None if _compiled is None else _compiled.summarize
_add_summaries: Any = None if _compiled is None else _compiled.add_summaries

_SKEW = 2**62  # no clock-skew limit for a record not listed as rejected: it was accepted when it arrived
# A receipt time may precede the collector's time in an earlier clock exchange by this much (a
# step back of the collector's clock); more, and the listed receipt time cannot be true.
CLOCK_STEP_NS = 2_000_000_000

Listed = dict[int, dict[int, tuple[str, int]]]  # chain index -> seq -> (reason, received_ns)


class VerifyFailed(Exception):
    """The first thing in the bundle that does not hold."""


class _Extractor:
    """The archive extracted on a thread of its own: its gzip members inflated on two more
    (``archive.iter_members``), each file hashed as it is written.

    Why: the pieces can start once the files they read are out (``wait_for_inputs``), while
    the tables, which only this process reads, are still being extracted; and step 2 needs no
    second read of every file. Members go through tarfile's ``data`` filter (nothing outside
    the directory); a bundle holds directories and regular files, each file once: anything
    else (a link, a file written twice) is refused, as a piece may already read what it
    would change.
    """

    def __init__(self, archive: Path, dest: Path) -> None:
        self.archive = archive
        self.dest = dest
        self.digests: dict[str, str] = {}  # member name -> sha256, of regular files as written
        self._done: set[str] = set()  # regular files completely written
        self._finished = False
        self._error: BaseException | None = None
        self._stopping = False
        self._written: set[str] = set()  # real paths of the files written
        self._cond = threading.Condition()
        dest.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="evidence-extract", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with (
                open(self.archive, "rb") as f,
                tarfile.open(
                    fileobj=io.BufferedReader(MemberReader(iter_members(f)), 1 << 20),
                    mode="r|",
                    bufsize=1 << 20,
                ) as tar,
            ):
                for member in tar:
                    if self._stopping:
                        return
                    self._member(tar, member)
        except BaseException as exc:  # surfaced by join()
            self._error = exc
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        safe = tarfile.data_filter(member, str(self.dest))  # raises for anything unsafe
        if safe.isdir():
            (self.dest / safe.name).mkdir(parents=True, exist_ok=True)
            return
        if not safe.isfile():
            raise tarfile.ExtractError(f"{member.name}: a bundle holds directories and regular files only")
        path = self.dest / safe.name
        path.parent.mkdir(parents=True, exist_ok=True)
        # A file is written once: a second member for the same file (by any spelling or through
        # any directory) would change what a piece may already be reading.
        real = os.path.realpath(path)
        if real in self._written:
            raise tarfile.ExtractError(f"{member.name}: the archive holds this file twice")
        self._written.add(real)
        name = Path(real).relative_to(os.path.realpath(self.dest)).as_posix()
        src = tar.extractfile(member)
        assert src is not None  # a regular file
        h = hashlib.sha256()
        with open(path, "xb") as out:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
        with self._cond:
            self.digests[name] = h.hexdigest()
            self._done.add(name)
            self._cond.notify_all()

    def wait_for_inputs(self) -> Path | None:
        """The bundle's root once the pieces' inputs (manifest, inventory, SLA files, rejection
        list, every chain file the manifest names) are completely extracted; None if the
        archive ends (or fails) first or names them oddly: the pieces then start after it."""
        with self._cond:
            while True:
                manifest = next(
                    (n for n in self._done if n.count("/") == 1 and n.endswith("/" + layout.MANIFEST)), None
                )
                if manifest is not None or self._finished:
                    break
                self._cond.wait()
            if manifest is None:
                return None
            top = manifest.split("/", 1)[0]
            try:
                chains = json.loads((self.dest / manifest).read_text(encoding="utf-8"))["chains"]
                needed = {f"{top}/{c['file']}" for c in chains}
            except (OSError, ValueError, KeyError, TypeError):
                return None
            needed |= {
                f"{top}/{n}"
                for n in (
                    layout.CHECKS,
                    layout.AGENTS,
                    layout.MAINTENANCE,
                    layout.CATALOGUE,
                    layout.REJECTED_CSV,
                )
            }
            while not needed <= self._done and not self._finished:
                self._cond.wait()
            return self.dest / top if needed <= self._done else None

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stopping = True
        self._thread.join()


class Verifier:
    def __init__(
        self,
        archive: Path,
        *,
        all_signatures: bool = False,
        say: Callable[[str], None] = print,
        jobs: int | None = None,
    ) -> None:
        self.archive = archive
        self.all_signatures = all_signatures
        self.jobs = min(2, os.cpu_count() or 1) if jobs is None else jobs  # processes walking the chains
        self.say = say
        self.phases: dict[str, float] = {}  # wall seconds per step (benchmarks)
        self.counts: dict[str, int] = {}  # how the work went (benchmarks, tests)
        self._listed: dict[str, str] = {}  # SHA256SUMS: path -> sha256 (every file checked against it)
        self._digests: dict[str, str] = {}  # sha256 of each regular file as extracted (_Extractor)
        self._rejected: tuple[Listed, list[tuple[int, int]], str | None] = ({}, [], None)  # _read_rejected

    def run(self) -> None:
        cpu = time.process_time()
        try:
            self._run()
        finally:
            self.phases["CPU: this process"] = time.process_time() - cpu

    def _run(self) -> None:
        with tempfile.TemporaryDirectory(prefix="slaprobe-verify-") as tmp:
            t = time.monotonic()
            # Steps 5-7's work (walk the chains, regenerate the tables, rebuild the collector's
            # rows from the same reading) is most of a verification and needs only the files:
            # the chains are cut into pieces, one per core, all but the smallest started in
            # processes of their own while this one runs steps 1-4 and then the smallest.
            # They start as soon as the files they read are out of the archive (export puts
            # the chains and the small files before the tables), while the rest is extracted.
            # Their answers are looked at only if steps 1-4 pass (a failure stops them), in
            # chain order, so the order of the checks and the failure named are unchanged.
            extractor = _Extractor(self.archive, Path(tmp) / "x")
            others: dict[int, Future[dict[str, Any]]] = {}
            try:
                early = extractor.wait_for_inputs()
                if early is not None:
                    self.phases["extract: the pieces' inputs"] = time.monotonic() - t
                    started = self._start_pieces(early, Path(tmp))
                    others = started[2]
                root = self._extract(extractor)
                self.phases["extract"] = time.monotonic() - t
                if early is None:
                    started = self._start_pieces(root, Path(tmp))
                    others = started[2]
                mine, args, _ = started
                self._digests = extractor.digests
                self._checks(root, mine, args, others)
            finally:
                extractor.stop()
                for fut in others.values():
                    fut.cancel()
                    _stop(fut)

    def _start_pieces(
        self, root: Path, tmp: Path
    ) -> tuple[int, tuple[Any, ...], dict[int, Future[dict[str, Any]]]]:
        """Plan the pieces, start all but the smallest in processes; (smallest, its args, started)."""
        chains = self._manifest_chains(root)
        self._rejected = _read_rejected(root, chains)
        plan = _plan(root, chains, self.jobs)
        args = [(str(root), piece, i, str(tmp / f"rows-{i}.db"), self.all_signatures, self._rejected[0],
                 len(plan) > 1) for i, piece in enumerate(plan)]  # fmt: skip
        mine = min(range(len(plan)), key=lambda i: _piece_bytes(root, chains, plan[i]))
        return mine, args[mine], {i: _start(_verify_piece, *a) for i, a in enumerate(args) if i != mine}

    def _manifest_chains(self, root: Path) -> list[dict[str, Any]]:
        try:
            return list(json.loads((root / layout.MANIFEST).read_text(encoding="utf-8"))["chains"])
        except (OSError, ValueError, KeyError, TypeError):
            return []  # step 2 or 4 names what is wrong with the manifest

    def _checks(
        self, root: Path, mine: int, args: tuple[Any, ...], others: dict[int, Future[dict[str, Any]]]
    ) -> None:
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
        cpu = time.process_time()
        done = {mine: _verify_piece(*args)}
        self.phases["chains and tables (this process)"] = time.monotonic() - t
        for i, fut in sorted(others.items()):
            try:
                done[i] = fut.result()
            except Exception as exc:  # a piece that could not run at all: a failure, not a crash
                raise VerifyFailed(f"the chains could not be checked: {type(exc).__name__}: {exc}") from exc
        pieces = [done[i] for i in sorted(done)]  # in chain order
        self.phases["chains and tables"] = time.monotonic() - t
        self.phases["CPU: chains and tables, this process"] = time.process_time() - cpu
        for i, piece in enumerate(pieces):
            self.phases[f"CPU: piece {i}"] = piece["cpu"]
        self._chains(root, manifest, pieces)
        self._tables(root, pieces)
        reasons = self._rejections(root, manifest, pieces)
        t = time.monotonic()
        self._report(root, manifest, report, pieces, reasons)
        self.phases["report"] = time.monotonic() - t

    # ---- 1-3: the archive, its hashes and the collector's signature ------------------------------

    def _extract(self, extractor: _Extractor) -> Path:
        try:
            extractor.join()
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise VerifyFailed(f"{self.archive}: the archive is damaged or truncated ({exc})") from None
        tops = list(extractor.dest.iterdir())
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
        # Hashed as they were extracted (each file's bytes as written); else read again.
        taken = {
            n[len(root.name) + 1 :]: d for n, d in self._digests.items() if n.startswith(root.name + "/")
        }
        with ThreadPoolExecutor(2) as pool:  # hashlib releases the GIL: both cores
            digests = pool.map(lambda n: taken.get(n) or _sha256(root / n), names)
            for name, digest in zip(names, digests, strict=True):
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

    def _chains(self, root: Path, manifest: dict[str, Any], pieces: list[dict[str, Any]]) -> None:
        """Step 5 from the pieces' walks: the first failure in chain order, the joins between
        pieces, and each chain's totals."""
        agents = {a["name"]: a for a in _load_json(root / layout.AGENTS)}
        segments = [seg for piece in pieces for seg in piece["segments"]]
        for entry_index, entry in enumerate(manifest["chains"]):
            mine = [seg for seg in segments if seg["chain"] == entry_index]
            for seg in mine:
                if seg["error"]:
                    raise VerifyFailed(seg["error"])
            name, epoch = str(entry["agent"]), int(entry["epoch"])
            where = f"agent {name!r} epoch {epoch}"
            if not mine or mine[0]["start"] != 0 or mine[-1]["end"] is not None:
                raise VerifyFailed(f"{where}: {entry['file']}: not walked whole (internal)")
            for a, b in pairwise(mine):  # a cut: the same seal ends one walk and starts the next
                if (a["end"], a["head"], a["next_seq"]) != (b["start"], b["head_in"], b["next_in"]):
                    raise VerifyFailed(
                        f"first broken link: {where}, the walks do not join at byte {b['start']}"
                    )
            last = mine[-1]["last"]
            if last != int(entry["last_seq"]):
                raise VerifyFailed(
                    f"{where}: the chain ends at seq {last}, the manifest says {entry['last_seq']}"
                )
            keys = agents[name]["keys"]
            if not entry.get("sealed", True) or not keys:
                raise VerifyFailed(f"{where}: records are not signed by the agent; they cannot be verified")
            signed = (
                "every link signature" if self.all_signatures else "eviction links and the last link signed"
            )
            records, links = sum(seg["records"] for seg in mine), sum(seg["links"] for seg in mine)
            self.say(
                f"ok   chain {where}: seqs {entry['first_seq']}..{last}, {records} records in {links} links,"
                f" every digest and link holds, {signed} ({len(keys)} key(s) from {layout.AGENTS})"
            )

    def _tables(self, root: Path, pieces: list[dict[str, Any]]) -> None:
        """Step 6: each table is its pieces' renderings end to end, byte for byte.

        A piece hashed what it rendered (SHA-256 and length); the bundle's file, whose own hash
        step 2 checked, is cut at the same lengths and each part hashed: equal parts that add up
        to the whole file are the whole file regenerated.
        """
        for name in (layout.RESULTS_CSV, layout.GAPS_CSV, layout.RESULTS_JSONL):
            parts = [piece["tables"][name] for piece in pieces]
            path = root / name
            size = path.stat().st_size if path.exists() else -1
            if sum(n for n, _ in parts) != size or not all(
                digest == mine
                for (_, digest), mine in zip(parts, _range_hashes(path, [n for n, _ in parts]), strict=True)
            ):
                raise VerifyFailed(
                    f"{name}: does not say what the signed records say (regenerated from the chains, it differs)"
                )
        self.say(f"ok   {', '.join(layout.DERIVED)}: regenerated from the signed records, identical")

    def _rejections(self, root: Path, manifest: dict[str, Any], pieces: list[dict[str, Any]]) -> list[str]:
        """Step 6b: the records the collector says it rejected at ingest (``results/rejected.csv``).

        The pieces re-applied the ingest rule to each listed record with its listed receipt time
        (a rejection that does not follow failed its chain's walk, as did a record that breaks a
        rule whatever the time but is not listed) and left it out of the rows. Here: every listed
        record is in the chains, no receipt time precedes the collector's own time in a clock
        exchange the agent signed before the record, and the file is what the list and the
        records give, byte for byte. Returns the reasons, in the file's order."""
        ingest = manifest.get("ingest")
        listed, order, error = self._rejected
        if not isinstance(ingest, dict) or not isinstance(ingest.get("max_future_skew_ns"), int):
            raise VerifyFailed(
                f"{layout.MANIFEST}: does not say how the collector validated records (ingest)"
            )
        if error is not None:
            raise VerifyFailed(f"{layout.REJECTED_CSV}: {error}")
        skew = int(ingest["max_future_skew_ns"])
        briefs: dict[tuple[int, int], tuple[str, str, int]] = {}
        clocks: dict[int, list[tuple[int, int]]] = {}
        for piece in pieces:
            for seg in piece["segments"]:
                for seq, brief in seg["rejected"].items():
                    briefs[seg["chain"], seq] = brief
                clocks.setdefault(seg["chain"], []).extend(seg["clocks"])
        lines = [rejected_header()]
        reasons: list[str] = []
        for chain_index, seq in order:
            entry = manifest["chains"][chain_index]
            name, epoch = str(entry["agent"]), int(entry["epoch"])
            where = f"agent {name!r} epoch {epoch}"
            reason, received = listed[chain_index][seq]
            brief = briefs.get((chain_index, seq))
            if brief is None:
                raise VerifyFailed(
                    f"{layout.REJECTED_CSV}: lists seq {seq} of {where}, which is not a result, gap or clock"
                    f" sample of its chain file {entry['file']}"
                )
            before = [(c, t2) for c, t2 in clocks.get(chain_index, []) if c < seq]
            if before:
                c, t2 = max(before, key=lambda x: x[1])
                if received < t2 - CLOCK_STEP_NS:
                    raise VerifyFailed(
                        f"{layout.REJECTED_CSV}: {where} seq {seq} is listed as received at {utc(received)},"
                        f" before the collector's own time {utc(t2)} in the clock exchange the agent signed"
                        f" at seq {c}, before that record: the receipt time cannot be true"
                    )
            lines.append(rejected_line(name, epoch, seq, *brief, reason, received))
            reasons.append(reason)
        try:
            on_file = (root / layout.REJECTED_CSV).read_text(encoding="utf-8")
        except OSError:
            on_file = None
        if on_file != "".join(lines):
            raise VerifyFailed(
                f"{layout.REJECTED_CSV}: does not say what the signed records say (rebuilt from the"
                " listed rejections and the records, it differs)"
            )
        if not reasons:
            self.say(f"ok   {layout.REJECTED_CSV}: no record of the chains was rejected at ingest")
            return reasons
        skewed = sum("in the future" in r for r in reasons)
        others: dict[str, int] = {}
        for r in reasons:
            if "in the future" not in r:
                others[r] = others.get(r, 0) + 1
        rest = "; ".join(f"{n}: {r}" for r, n in sorted(others.items()))
        self.say(
            f"ok   {layout.REJECTED_CSV}: {len(reasons)} records rejected at ingest, each rejection reproduced"
            f" from the signed record and its receipt time, all excluded from the report: {skewed} for clock"
            f" skew (a time more than {skew / 1e9:g} s after the collector received it),"
            f" {len(reasons) - skewed} for other reasons" + (f" ({rest})" if rest else "")
        )
        return reasons

    # ---- 7: the report ---------------------------------------------------------------------------

    def _report(
        self,
        root: Path,
        manifest: dict[str, Any],
        report: dict[str, Any],
        pieces: list[dict[str, Any]],
        reasons: list[str],
    ) -> None:
        try:
            text, phases, _ = _recompute(
                root,
                manifest,
                [piece["db"] for piece in pieces],
                answers=[piece["answers"] for piece in pieces],
            )
        except Exception as exc:  # the rebuild met something steps 5-6 let through: a failure, not a crash
            raise VerifyFailed(
                f"{layout.REPORT_JSON}: cannot be recomputed from the signed records: {type(exc).__name__}: {exc}"
            ) from exc
        self.phases.update({f"recompute: {k}": v for k, v in phases.items() if not k.startswith("#")})
        self.counts.update({k[1:]: int(v) for k, v in phases.items() if k.startswith("#")})
        recomputed = json.loads(text)
        add_exclusions(
            recomputed, reasons, layout.REJECTED_CSV
        )  # as reproduced (6b); export: the collector's
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


# ---- steps 5-6 in pieces, and the rows for step 7 ----------------------------------------------

# Chain bytes below which one process walks everything (a spawned process costs ~0.3 s).
PARALLEL_MIN_BYTES = 4 << 20
BOUNDARY_SLACK = 0.02  # a chain boundary this near the middle is the cut (else a seal inside a chain)
_CUT_SEARCH = 100_000  # records looked at past the middle for a seal to cut at


Segment = tuple[int, int, int | None]  # (chain index, start, stop): see _plan


def _plan(root: Path, chains: list[dict[str, Any]], jobs: int) -> list[list[Segment]]:
    """The chains cut into ``jobs`` pieces of about equal bytes (at most two, as yet), in order.

    A piece is a list of (chain index, start, stop): walk the chain file's records from byte
    ``start``, through the record that starts at ``stop`` (None: to the end). Pieces are cut
    at a chain boundary near the middle, else inside a chain at a seal: the piece before walks
    through that seal, the piece after starts there as at an anchor (``_chains`` joins them).
    One piece when a chain of the same agent epoch is listed twice (rows of one piece are
    stored once, as the collector stores a resent record once).
    """
    whole: list[list[Segment]] = [[(i, 0, None) for i in range(len(chains))]]
    try:
        sizes = [(root / str(c["file"])).stat().st_size for c in chains]
        streams = [(str(c["agent"]), int(c["epoch"])) for c in chains]
    except (OSError, KeyError, TypeError, ValueError):
        return whole  # named by the checks
    total = sum(sizes)
    if jobs < 2 or total < PARALLEL_MIN_BYTES or len(set(streams)) != len(streams):
        return whole
    half, acc = total / 2, 0
    for k in range(1, len(chains)):
        acc += sizes[k - 1]
        if abs(acc - half) <= total * BOUNDARY_SLACK:
            return [_whole(range(k)), _whole(range(k, len(chains)))]
    acc = 0
    for i, size in enumerate(sizes):
        if acc + size > half:
            cut = _seal_at_or_after(root / str(chains[i]["file"]), int(half - acc))
            if cut is None:
                return whole
            return [[*_whole(range(i)), (i, 0, cut)], [(i, cut, None), *_whole(range(i + 1, len(chains)))]]
        acc += size
    return whole


def _piece_bytes(root: Path, chains: list[dict[str, Any]], piece: list[Segment]) -> int:
    """The chain bytes a piece walks (0 for what cannot be read: the checks name it)."""
    total = 0
    for i, start, stop in piece:
        try:
            size = (root / str(chains[i]["file"])).stat().st_size
        except (OSError, KeyError, IndexError, TypeError):
            continue
        total += (size if stop is None else stop) - start
    return total


def _whole(chains: range) -> list[Segment]:
    return [(i, 0, None) for i in chains]


def _seal_at_or_after(path: Path, target: int) -> int | None:
    """The offset of the first seal record starting at or after byte ``target`` (None: none near)."""
    head = struct.Struct(">I")
    with open(path, "rb", buffering=1 << 16) as f:
        pos = 0
        while pos < target:  # hop over the records before: lengths only
            b = f.read(4)
            if len(b) != 4:
                return None
            pos += 4 + head.unpack(b)[0]
            f.seek(pos)
        for _ in range(_CUT_SEARCH):
            b = f.read(4)
            if len(b) != 4:
                return None
            raw = f.read(head.unpack(b)[0])
            try:
                if parse_view(raw).WhichOneof("kind") == "seal":
                    return pos if pos > 0 else None
            except DecodeError:
                return None
            pos += 4 + len(raw)
    return None


@contextlib.contextmanager
def _mapped(f: IO[bytes]) -> Iterator[Any]:
    """A chain file's bytes, memory-mapped (an empty file: empty bytes)."""
    if os.fstat(f.fileno()).st_size == 0:
        yield b""
        return
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        yield m


def _run_links(walker: chain.ChainWalker, first: bool) -> list[Any] | None:
    """The walker's state for the compiled walk to walk plain links too (``Renderer.run``):
    [epoch, keys, head, segment start, digest object, records in it, first record of the walk];
    None where every link's signature is checked (``--all-signatures``: Python's walk).

    A plain link is one ``ChainWalker.seal`` would accept without a signature check: not an
    eviction link, with the next seq, this epoch, covering the records since the last link
    (their count and digest), chained to the head before it, signed by a key the agent has.
    The compiled walk checks exactly that, in C, and leaves any other link (and any link where
    a check fails) to ``ChainWalker.seal``, which then names what is wrong; the first record of
    a walk (an anchor, or the cut between pieces) is always the walker's."""
    if walker.signatures == "all":
        return None
    d = walker._digest
    return [walker.epoch, walker.keys, walker.head, walker.segment_start, d._h, d.count, first]


def _walked(
    walker: chain.ChainWalker,
    data: Any,
    start: int,
    end: int,
    count: int,
    last: int,
    state: list[Any] | None,
    links: int,
    link_at: int,
) -> None:
    """``walker.record`` of each of the ``count`` records and ``walker.seal`` of each of the
    ``links`` plain links the compiled walk walked in ``data[start:end]`` (the last of them
    ``last``, the last link at ``link_at``). With ``state`` the compiled walk fed the digest
    object itself and updated the state; without, the records' bytes go to the digest here at
    once (its framing is the chain file's)."""
    d = walker._digest
    if state is None:
        with memoryview(data) as whole, whole[start:end] as part:
            d._h.update(part)
        d.count += count
    else:
        walker.head, walker.segment_start, d._h, d.count = state[2], state[3], state[4], state[5]
    if links:
        raw = bytes(data[link_at + 4 : link_at + 4 + int.from_bytes(data[link_at : link_at + 4], "big")])
        record = pb.Record.FromString(raw)
        walker.last_link = chain.parse_link(record.seq, record.seal)
        walker.links += links
    walker.records += count
    walker.next_seq = last + 1


class _Part:
    """A table part regenerated by a piece: only its SHA-256 and length are kept."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.n = 0

    def write(self, b: bytes) -> int:
        self.h.update(b)
        self.n += len(b)
        return len(b)


def _read_rejected(
    root: Path, chains: list[dict[str, Any]]
) -> tuple[Listed, list[tuple[int, int]], str | None]:
    """``results/rejected.csv`` read strictly: (per chain index, seq -> (reason, received_ns);
    (chain index, seq) in the file's order; what is wrong with the file, or None).

    Read before the pieces start (they need it); a problem is named only at its step, after
    the file's hash and the collector's signature were checked."""
    listed: Listed = {}
    order: list[tuple[int, int]] = []
    path = root / layout.REJECTED_CSV
    if not path.exists():
        return listed, order, "missing (the manifest says the collector listed its rejections)"
    index = {}
    for i, c in enumerate(chains):
        try:
            index[str(c["agent"]), int(c["epoch"])] = i
        except (KeyError, TypeError, ValueError):
            continue
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = csv.reader(f)
            if tuple(next(rows, ())) != REJECTED_CSV_HEADER:
                return {}, [], "its header is not the bundle format's"
            for n, row in enumerate(rows, 2):
                if len(row) != len(REJECTED_CSV_HEADER):
                    return {}, [], f"line {n} has {len(row)} fields"
                agent, epoch, seq, reason, received = row[0], int(row[1]), int(row[2]), row[6], int(row[8])
                chain_index = index.get((agent, epoch))
                if chain_index is None:
                    return {}, [], f"line {n} names agent {agent!r} epoch {epoch}, which has no chain here"
                mine = listed.setdefault(chain_index, {})
                if seq in mine:
                    return {}, [], f"line {n} lists seq {seq} of agent {agent!r} epoch {epoch} again"
                mine[seq] = (reason, received)
                order.append((chain_index, seq))
    except (OSError, ValueError, csv.Error) as exc:
        return {}, [], f"unreadable ({exc})"
    return listed, order, None


def _checks_at(versions: list[dict[str, Any]], keys: dict[int, str]) -> Callable[[int], set[str]]:
    """The site's checks the collector knew at a time (a version valid then), as ingest checks a
    record's check against the catalogue it had loaded."""
    spans = [
        (keys[int(v["check_id"])], int(v["valid_from_ns"]), v["valid_to_ns"])
        for v in versions
        if int(v["check_id"]) in keys
    ]

    def at(t: int) -> set[str]:
        return {k for k, a, b in spans if a <= t and (b is None or t < int(b))}

    return at


def _reproduce(
    raw: bytes,
    seq: int,
    listed: tuple[str, int],
    skew_ns: int,
    checks_at: Callable[[int], set[str]],
    where: str,
) -> None:
    """Re-apply the ingest rule to a record listed as rejected, with its listed receipt time;
    raise VerifyFailed unless it rejects the record for the listed reason."""
    reason, received = listed
    record = pb.Record.FromString(raw)
    try:
        decode_record(record, now_ns=received, max_skew_ns=skew_ns, checks=checks_at(received))
    except InvalidRecord as exc:
        if str(exc) == reason:
            return
        why = f"the rule rejects it for {str(exc)!r}"
    else:
        why = "the record is valid at that time"
    raise VerifyFailed(
        f"{layout.REJECTED_CSV}: {where} seq {seq} is listed as rejected at ingest ({reason!r}, received"
        f" {utc(received)}), but the rejection does not reproduce: {why}"
    )


def _unlisted(raw: bytes, seq: int, check_rows: dict[str, int], where: str) -> VerifyFailed:
    """A record that breaks an ingest rule whatever the time, yet is not listed as rejected."""
    try:
        decode_record(pb.Record.FromString(raw), now_ns=0, max_skew_ns=_SKEW, checks=check_rows)
        why = "a record the bundle's tables and rows leave out"  # (not reached: the rows hold it)
    except InvalidRecord as exc:
        why = str(exc)
    return VerifyFailed(
        f"{where} seq {seq}: the collector must have rejected this record ({why}), but"
        f" {layout.REJECTED_CSV} does not list it"
    )


def _verify_piece(
    root_dir: str,
    piece: list[Segment],
    index: int,
    db_file: str,
    all_signatures: bool,
    listed: Listed | None = None,
    precompute: bool = False,
) -> dict[str, Any]:
    """Walk a piece of the chains, render its records into table parts (hashed) and store the
    collector's rows of them (``db_file``), from one reading of each record.

    Returns what ``Verifier`` checks: per chain segment its walk (the first failure, if any,
    as the message to show; the piece stops there), per table (length, SHA-256) of the part,
    the rows' database and the CPU seconds taken.
    """
    cpu = time.process_time()
    root = Path(root_dir)
    manifest = _load_json(root / layout.MANIFEST)
    period = manifest["period"]
    start, end = int(period["start_ns"]), int(period["end_ns"])
    now_ns = int(manifest["generated_ns"])
    checks = _load_json(root / layout.CHECKS)
    check_rows = {c["key"]: int(c["id"]) for c in checks["checks"]}
    checks_at = _checks_at(checks["versions"], {int(c["id"]): c["key"] for c in checks["checks"]})
    ingest = manifest.get("ingest")
    skew_ns = int(ingest["max_future_skew_ns"]) if ingest is not None else _SKEW
    listed = listed or {}
    agents = {a["name"]: a for a in _load_json(root / layout.AGENTS)}
    parts = {name: _Part() for name in (layout.RESULTS_CSV, layout.GAPS_CSV, layout.RESULTS_JSONL)}
    rcsv, gcsv, jsonl = (cast(IO[bytes], p) for p in parts.values())
    tables = TableWriter(start, end, rcsv, gcsv, jsonl, set(check_rows), header=index == 0)
    conn = _rows_db(Path(db_file))
    _drop_late_indexes(conn)  # not rebuilt: the report's covering index serves all its queries
    try:
        streams = [
            (str(manifest["chains"][i]["agent"]), int(manifest["chains"][i]["epoch"])) for i, _, _ in piece
        ]
    except (KeyError, IndexError, TypeError, ValueError):
        streams = [("", 0)] * 2  # a manifest the walk will name as broken: the index stays
    if len(set(streams)) == len(streams):
        # Each stream walked once, its seqs strictly increasing (the walk checks): no row can
        # come twice, so the unique index that stores a resent record once has nothing to do
        # (0.17 CPU-s per 216k rows). A stream listed twice keeps it (INSERT OR IGNORE).
        conn.execute("DROP INDEX results_stream_seq")
    segments: list[dict[str, Any]] = []
    conn.execute("BEGIN")
    for chain_index, begin, stop in piece:
        entry = manifest["chains"][chain_index]
        rejected = _Rejected(listed.get(chain_index, {}), skew_ns, checks_at, ingest is not None)
        seg = _walk(
            root, entry, chain_index, begin, stop, agents, check_rows, now_ns, tables, conn, all_signatures,
            rejected,
        )  # fmt: skip
        segments.append(seg)
        if seg["error"]:
            break
    conn.execute("COMMIT")
    tables.flush()
    conn.execute(_REPORT_INDEX)
    conn.close()
    answers: Answers = {}
    if precompute and not any(seg["error"] for seg in segments):
        # The report over this piece's rows alone, for its source's answers (_CombinedSource);
        # whatever goes wrong here, the recompute reads the rows itself and names the problem.
        try:
            _, _, answers = _recompute(
                root, manifest, [db_file], record=True, db_path=Path(db_file + ".report")
            )
        except Exception:
            answers = {}
    return {
        "segments": segments,
        "tables": {name: (p.n, p.h.hexdigest()) for name, p in parts.items()},
        "db": db_file,
        "answers": answers,
        "cpu": time.process_time() - cpu,
    }


def _walk(
    root: Path,
    entry: dict[str, Any],
    chain_index: int,
    begin: int,
    stop: int | None,
    agents: dict[str, Any],
    check_rows: dict[str, int],
    now_ns: int,
    tables: TableWriter,
    conn: sqlite3.Connection,
    all_signatures: bool,
    rejected: _Rejected,
) -> dict[str, Any]:
    """One segment of one chain: walk, render, rows (a chain's first segment starts at 0).

    A record listed as rejected at ingest is re-judged by the ingest rule with its receipt time
    (``_reproduce``) and has no row; a record that breaks a rule whatever the time must be
    listed (when the bundle lists rejections at all)."""
    name, epoch = str(entry["agent"]), int(entry["epoch"])
    where = f"agent {name!r} epoch {epoch}"
    seg: dict[str, Any] = {
        "chain": chain_index, "start": begin, "end": stop, "error": None, "records": 0, "links": 0,
        "last": 0, "head_in": None, "next_in": None, "head": None, "next_seq": None,
        "rejected": {}, "clocks": [],
    }  # fmt: skip
    listed, found, clocks = rejected.listed, cast(dict[int, Any], seg["rejected"]), seg["clocks"]
    agent = agents.get(name)
    if agent is None:
        seg["error"] = f"{where}: not in {layout.AGENTS}"
        return seg
    keys = chain.public_keys(bytes.fromhex(k["public_key_hex"]) for k in agent["keys"])
    first = int(entry["first_seq"])
    walker = chain.ChainWalker(
        epoch,
        keys,
        head=chain.GENESIS if first == 1 and begin == 0 else None,
        next_seq=first,
        signatures="all" if all_signatures else "evictions",
    )
    last = 0
    anchored = bool(entry.get("anchored"))
    sink = RowSink(int(agent["id"]), check_rows, now_ns + _SKEW, slim=True)
    rows, gaps = sink.rows, cast(list[tuple[Any, ...]], [])
    record_, seal_, add, add_view = walker.record, walker.seal, tables.add, tables.add_view
    add_result = tables.add_result
    tail = -1  # where the last seal walked starts
    run = tables.run  # the compiled renderer's walk of plain results (None: not installed)
    try:
        with open(root / entry["file"], "rb") as f, _mapped(f) as data:
            size = len(data)
            limit = size if stop is None else stop  # walk the records starting at or before it
            pos = begin
            i = 0  # records walked
            while pos < size and pos <= limit:
                if run is not None and walker.next_seq < 2**64:
                    # A run of plain results with the next seqs, rendered and their rows built in
                    # C, and of the plain links between them (``_run_links``); it stops at
                    # anything else, which is walked below.
                    state = _run_links(walker, i == 0)
                    to, count, got_last, links, link_at = run(
                        data, pos, limit, name, epoch, sink, walker.next_seq, listed, 50_000, state,
                        hashlib.sha256,
                    )  # fmt: skip
                    if count or links:
                        _walked(walker, data, pos, to, count, got_last, state, links, link_at)
                        last = got_last
                        pos = to
                        i += count + links
                        if links:
                            tail = link_at
                        if len(rows) >= 50_000:
                            _insert(conn, rows, gaps)
                        continue
                if size - pos < 4:
                    raise ValueError("truncated chain file (a length prefix is cut)")
                end = pos + 4 + int.from_bytes(data[pos : pos + 4], "big")
                if end > size:
                    raise ValueError("truncated chain file (a record is cut)")
                raw = bytes(data[pos + 4 : end])
                at, first_walked = pos, i == 0
                pos = end
                i += 1
                n = len(rows)
                got = add_result(name, epoch, raw, sink)  # the compiled renderer: a plain result
                if got is not None:
                    last = got
                    record_(last, last, raw)
                    if last in listed:
                        if len(rows) > n:
                            rows.pop()
                        _reproduce(raw, last, listed[last], rejected.skew_ns, rejected.checks_at, where)
                        found[last] = record_brief(raw)
                    elif (
                        len(rows) == n and rejected.complete and parse_view(raw).result.check_id in check_rows
                    ):
                        raise _unlisted(raw, last, check_rows, where)
                    if len(rows) >= 50_000:
                        _insert(conn, rows, gaps)
                    continue
                view = parse_view(raw)  # a result is rendered, and its row built, from this reading alone
                if view.WhichOneof("kind") == "result":
                    last = view.seq
                    record_(last, last, raw)
                    n = len(rows)
                    add_view(name, epoch, view, sink)
                    if last in listed:
                        if len(rows) > n:
                            rows.pop()
                        _reproduce(raw, last, listed[last], rejected.skew_ns, rejected.checks_at, where)
                        found[last] = record_brief(raw)
                    elif len(rows) == n and rejected.complete and view.result.check_id in check_rows:
                        raise _unlisted(raw, last, check_rows, where)
                    if len(rows) >= 50_000:
                        _insert(conn, rows, gaps)
                    continue
                record, last = decode(raw)
                if record.WhichOneof("kind") == "seal":
                    link = chain.parse_link(record.seq, record.seal)
                    if first_walked and begin > 0:  # a cut: the piece before walked this link
                        walker.anchor(link)
                        seg["head_in"], seg["next_in"] = walker.head, walker.next_seq
                    elif first_walked and anchored:
                        if not link.signature_ok(_key(keys, link, where)):
                            raise chain.ChainError(link.seq, "bad signature on the anchor link")
                        walker.anchor(link)
                    else:
                        seal_(link)
                        tail = at
                    continue
                if first_walked and begin > 0:
                    raise chain.ChainError(record.seq, "a cut between pieces is not at a seal (internal)")
                record_(record.seq, last, raw)
                add(name, epoch, record)
                kind = record.WhichOneof("kind")
                if kind == "clock":
                    clocks.append((record.seq, record.clock.t2_ns))
                if record.seq in listed:
                    _reproduce(
                        raw, record.seq, listed[record.seq], rejected.skew_ns, rejected.checks_at, where
                    )
                    found[record.seq] = record_brief(raw)
                elif (
                    not _row(record, sink.agent_row, epoch, check_rows, now_ns, rows, gaps)
                    and rejected.complete
                    and (
                        kind == "clock"
                        or (kind == "gap" and all(c.check_id in check_rows for c in record.gap.checks))
                    )
                ):
                    raise _unlisted(raw, record.seq, check_rows, where)
        if stop is None and entry.get("sealed", True):
            walker.finish()
    except chain.ChainError as exc:
        seg["error"] = f"first broken link: {where}, {exc}"
    except VerifyFailed as exc:
        seg["error"] = str(exc)
    except (ValueError, DecodeError) as exc:  # a cut chain file or an undecodable record
        seg["error"] = f"{where}: {entry['file']}: {exc or 'a record does not decode'}"
    _insert(conn, rows, gaps)
    if stop is not None and tail != stop and not seg["error"]:
        seg["error"] = (
            f"first broken link: {where}, the walk does not end at a seal at byte {stop} (internal)"
        )
    seg.update(
        records=walker.records, links=walker.links, last=last, head=walker.head, next_seq=walker.next_seq
    )
    return seg


class _Rejected:
    """A chain's records listed as rejected at ingest, and how verify re-judges them."""

    __slots__ = ("checks_at", "complete", "listed", "skew_ns")

    def __init__(
        self,
        listed: dict[int, tuple[str, int]],
        skew_ns: int,
        checks_at: Callable[[int], set[str]],
        complete: bool,
    ) -> None:
        self.listed = listed  # seq -> (reason, received_ns)
        self.skew_ns = skew_ns
        self.checks_at = checks_at
        self.complete = complete  # the bundle lists rejections: an unlisted rejectable record fails


def _key(keys: dict[bytes, Ed25519PublicKey], link: chain.Link, where: str) -> Ed25519PublicKey:
    key = keys.get(bytes(link.body.key_id))
    if key is None:
        raise VerifyFailed(f"{where}: link at seq {link.seq} is signed by a key not in {layout.AGENTS}")
    return key


def _rows_db(path: Path) -> sqlite3.Connection:
    """A scratch database with the collector's schema: no journal, no fsync, a large cache."""
    conn = open_store(path).conn
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-131072")
    return conn


# Every column the report reads of a result (RawSource, Reader.failures apart), after the time
# index's: its queries then never visit the table (a random page read per row).
_REPORT_INDEX = (
    "CREATE INDEX results_report ON results(check_id, scheduled_ns, ok, duration_ns, degraded, error_kind,"
    " clock_offset_ns, clock_synced, agent_id)"
)


def _drop_late_indexes(conn: sqlite3.Connection) -> list[str]:
    """Drop the results indexes a scratch store does not need while its rows go in (the time
    index: random inserts); the unique one takes them in order. Returns their definitions.

    They are not built again: every query of the recompute (``RawSource``, ``Reader.failures``
    by check and time) is served by ``_REPORT_INDEX``, whose first columns are the time
    index's (a month: ~1.8 CPU-s of index building saved, 0.17 s per 216k rows)."""
    late = [
        sql
        for (sql,) in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'results' AND sql IS NOT NULL"
            " AND name != 'results_stream_seq'"
        ).fetchall()
    ]
    for sql in late:
        conn.execute(f"DROP INDEX {sql.split()[2]}")
    return late


def _range_hashes(path: Path, lengths: list[int]) -> list[str]:
    """SHA-256 of consecutive parts of a file, of these lengths (two threads: hashlib releases the GIL)."""
    offsets = [sum(lengths[:i]) for i in range(len(lengths))]

    def one(k: int) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            f.seek(offsets[k])
            left = lengths[k]
            while left > 0 and (chunk := f.read(min(left, 1 << 20))):
                h.update(chunk)
                left -= len(chunk)
        return h.hexdigest()

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, range(len(lengths))))


Answers = dict[tuple[Any, ...], Any]  # a piece's slot source answers: ("bits"|"sums", part, ...) -> answer


class _RecordingSource(RawSource):
    """``RawSource`` over one piece's rows, keeping every answer it gives (see ``_CombinedSource``)."""

    def __init__(self, conn: sqlite3.Connection, tables: list[str]) -> None:
        super().__init__(conn, tables)
        self.answers: Answers = {}

    def slot_bits(self, part: Part, k0: int, k1: int) -> dict[int, AgentBits]:
        got = self.answers[("bits", part, k0, k1)] = super().slot_bits(part, k0, k1)
        return got

    def summaries(self, part: Part, edges: Sequence[int]) -> list[Summary]:
        got = self.answers[("sums", part, tuple(edges))] = _summaries(
            self.conn, part.check_row, edges, self.tables
        )
        return got


def _summaries(
    conn: sqlite3.Connection, check_row: int, edges: Sequence[int], tables: Sequence[str]
) -> list[Summary]:
    """``rollups.raw_summaries``, its counting of the rows done by the compiled
    ``slaprobe_speedups._evidence.summarize`` (the same rules and order; a test holds the two
    equal): without it, or for rows it does not take, ``raw_summaries`` itself."""
    if _summarize is None:
        return raw_summaries(conn, check_row, edges, tables)
    summarize = _summarize
    return raw_summaries(
        conn, check_row, edges, tables, lambda rows, e: summarize(rows, e, LATENCY_EDGES_NS, len(LATENCY_EDGES_NS) - 1)
    )


class _CombinedSource(RawSource):
    """``RawSource`` over all pieces' rows, answering from the pieces' own answers when each has one.

    Why: reading the rows (slot positions, the summaries' histograms) is ~80% of the report, and
    a piece can do it over its rows on its own core, before the report starts (``_verify_piece``
    runs the report over its rows alone, recording what the source answered). The answer over
    all rows is the pieces' answers put together exactly as ``RawSource`` puts its tables'
    together (tables in piece order): slot bits OR'd per agent, agents in first-seen order;
    summaries added piece after piece (``Summary.add``: counts summed, histogram keys in
    first-seen order, as ``raw_summaries`` counts the tables' rows one table after the other).
    A question some piece was not asked (its rows led its report elsewhere) is read from the
    rows, as without the answers.
    """

    def __init__(self, conn: sqlite3.Connection, tables: list[str], answers: list[Answers]) -> None:
        super().__init__(conn, tables)
        self.answers = answers
        self.hits = self.misses = 0

    def slot_bits(self, part: Part, k0: int, k1: int) -> dict[int, AgentBits]:
        key = ("bits", part, k0, k1)
        got = [a.get(key) for a in self.answers]
        if any(g is None for g in got):
            self.misses += 1
            return super().slot_bits(part, k0, k1)
        self.hits += 1
        out: dict[int, AgentBits] = {}
        for answer in cast(list[dict[int, AgentBits]], got):
            for agent, b in answer.items():
                mine = out.get(agent)
                if mine is None:
                    out[agent] = AgentBits(b.ok, b.fail, b.deg)
                else:
                    mine.ok |= b.ok
                    mine.fail |= b.fail
                    mine.deg |= b.deg
        return out

    def summaries(self, part: Part, edges: Sequence[int]) -> list[Summary]:
        key = ("sums", part, tuple(edges))
        got = [a.get(key) for a in self.answers]
        if any(g is None for g in got):
            self.misses += 1
            return super().summaries(part, edges)
        self.hits += 1
        out = [Summary() for _ in range(len(edges) - 1)]
        answers = cast(list[list[Summary]], got)
        if _add_summaries is not None and all(len(a) == len(out) for a in answers):  # the same adds, in C
            for i, s in enumerate(out):
                _add_summaries(s, [answer[i] for answer in answers])
            return out
        for answer in answers:
            for s, piece in zip(out, answer, strict=True):
                s.add(piece)
        return out


def _recompute(
    root: Path,
    manifest: dict[str, Any],
    row_dbs: list[str],
    *,
    answers: list[Answers] | None = None,
    record: bool = False,
    db_path: Path | None = None,
) -> tuple[str, dict[str, float], Answers]:
    """The report recomputed with the collector's engine from the rows the pieces rebuilt.

    A scratch database holds the bundle's checks, versions, agents and maintenance; the pieces'
    databases are attached and their ``results`` and ``gaps`` read as one (temporary views of
    the same names). ``answers``: each piece's recorded source answers (``_CombinedSource``);
    ``record``: keep this run's source answers (a piece, over its own rows). Returns the
    report as JSON text, the seconds of each step and the answers recorded.
    """
    phases: dict[str, float] = {}
    t = time.monotonic()
    db_path = db_path or Path(row_dbs[0]).with_name("recomputed.db")
    checks = _load_json(root / layout.CHECKS)
    agents = _load_json(root / layout.AGENTS)
    db = open_store(db_path)
    for table, rows in (
        ("checks", checks["checks"]),
        ("check_versions", checks["versions"]),
        ("agents", [{k: v for k, v in a.items() if k != "keys"} for a in agents]),
        ("maintenance", _load_json(root / layout.MAINTENANCE)),
    ):
        if rows:
            db.table(table).insert_all(rows)
    db.conn.close()
    catalogue = parse_catalogue((root / layout.CATALOGUE).read_text(encoding="utf-8"), layout.CATALOGUE)
    reader = Reader(db_path)
    try:
        conn = reader.db.conn
        conn.execute("PRAGMA query_only=OFF")  # the temporary views; nothing is written after them
        for i, path in enumerate(row_dbs):
            conn.execute(f"ATTACH ? AS rows{i}", (path,))
        for table in ("results", "gaps"):
            union = " UNION ALL ".join(f"SELECT * FROM rows{i}.{table}" for i in range(len(row_dbs)))
            conn.execute(f"CREATE TEMP VIEW {table} AS {union}")
        conn.execute("PRAGMA query_only=ON")
        # Each piece's rows read on their own (covering) index: the same answers as the view's.
        tables = [f"rows{i}.results" for i in range(len(row_dbs))]
        source: RawSource
        if record:
            source = _RecordingSource(conn, tables)
        elif answers:
            source = _CombinedSource(conn, tables, answers)
        else:
            source = RawSource(conn, tables)
        ctx = Context(catalogue, reader, source, int(manifest["generated_ns"]), "raw")
        period = manifest["period"]
        doc = build_report(
            ctx, manifest["site"], int(period["start_ns"]), int(period["end_ns"]), manifest["service"]
        )
    finally:
        reader.close()
    phases["report"] = time.monotonic() - t
    if isinstance(source, _CombinedSource):
        phases["#report: source answers from the pieces"] = source.hits  # counts, not seconds
        phases["#report: source answers read again"] = source.misses
    return json.dumps(doc), phases, source.answers if isinstance(source, _RecordingSource) else {}


def _row(
    record: Any,
    agent_row: int,
    epoch: int,
    check_rows: dict[str, int],
    now_ns: int,
    results: list[tuple[Any, ...]],
    gaps: list[tuple[Any, ...]],
) -> bool:
    """The collector's row for a record, as it would have stored it (rejected ones are left out);
    False if the ingest rules reject it.

    A gap record names the checks of every service whose results it stood for, and the collector
    stored a gap row for each; a bundle of one service holds only that service's checks. So a gap
    is judged with the checks it names counted as known (an unlisted gap was accepted at ingest,
    and ``_unlisted`` judges a gap in full only where the bundle knows all its checks) and gives
    rows for the bundle's checks alone: dropping the whole record made an honest service bundle
    fail verify wherever the gap was the slots' state.
    """
    checks: Container[str] = check_rows
    if record.WhichOneof("kind") == "gap":
        checks = check_rows.keys() | {c.check_id for c in record.gap.checks}
    try:
        decoded = decode_record(record, now_ns=now_ns, max_skew_ns=_SKEW, checks=checks)
    except InvalidRecord:
        return False
    p = decoded.payload
    if isinstance(p, Measurement):
        results.append(measurement_row(agent_row, epoch, decoded.seq, check_rows[p.check_id], p, 0))
    elif isinstance(p, Gap):
        own = tuple(c for c in p.checks if c.check_id in check_rows)
        if own:
            gaps.extend(gap_rows(agent_row, epoch, decoded.seq, replace(p, checks=own), check_rows, 0))
    return True


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
