"""Evidence benchmark: export and verify a month of one site (issue #6).

The world: one site of ``--checks`` checks at a 60 s interval (50 by default: 30 http, 20 tcp,
a ``checkout`` service of 10 of them, SLA 99.9% and p95 <= 300 ms in Europe/Paris) for October
2026: about 2.23 million results from two agents in turn (``shop-a1`` from an hour before the
month until its host is replaced on the 17th at noon, ``shop-a2`` from 20 minutes later until
after the month), so the month has two chain files, one anchored on a seal before the period.

What one run does:

1. Builds the collector database (cached in ``bench/out/``, keyed by the parameters): every
   record exactly as an agent encodes it (``agent.wire.encode_record``) and sealed as the
   agent's spool seals it (``slaprobe.chain.make_seal``, Ed25519): a seal when 500 records wait
   or at the spool's sealing tick (``SpoolLimits.seal_interval_s``, 5 s; ``--seal-interval``),
   whichever comes first. At 50 checks per minute the tick comes first: a link covers ~4
   results at 5 s (~0.5 M seals for the month), 1.4 at the former 1 s (1.55 M). Stored as the collector stores a delivered batch: the records
   through ``collector.record_log.store``, each link as one batch (its results and clock samples one
   ``record_batches`` row, its seal a ``record_log`` row), ``results`` (``collector.store.measurement_row``), ``clock_samples``,
   ``streams`` with the chain's head, ``agents``, ``agent_keys``; the catalogue persisted a
   month before (``store._persist_catalogue``), ad-hoc maintenance windows (one cancelled),
   rollups by the production ``rollups.rebuild``. The agents' records are generated in
   parallel worker processes into part files, then copied in with ``INSERT ... SELECT``
   in one transaction (no gRPC: ingest speed is ``bench/ingest.py``'s subject).
   What the month holds: 20-80 ms latencies with a 1% tail at +400 ms, isolated timeouts
   and 503s (1 in 5,000), one 46-minute outage of the checkout service (refused), 20
   minutes without any agent at the handover (unknown), an hourly clock sample per agent.
2. Times ``slaprobe evidence export --period 2026-10`` and ``slaprobe evidence verify`` (the
   CLI, in subprocesses): wall time, CPU (user + system of the process and its children,
   from ``wait4``), peak RSS (``ru_maxrss`` of the largest process; and the sampled sum over
   the process tree), the bundle's size, files and the size of its largest members. The
   load average before and after each run is recorded: on 2 shared vCPUs a busy neighbour
   shows up directly.
3. A per-phase breakdown: the same export and verify in this process, reading the wall time
   of each step from ``ExportResult.phases`` / ``Verifier.phases``; with ``--profile`` also
   under cProfile, the main process's own time split into SQL reads, protobuf decoding,
   table rendering, report computation, hashing, compression and extraction.

Targets (the issue): export under 30 s and verify under 30 s on this machine (2 vCPU).

Run: ``.venv/bin/python bench/evidence.py [--checks 50] [--repeat 1] [--profile] [--markdown]``
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import json
import multiprocessing
import os
import platform
import pstats
import random
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from agent.spool import SpoolLimits  # noqa: E402
from agent.wire import encode_record  # noqa: E402
from collector import record_log, rollups, store  # noqa: E402
from collector.catalogue import parse_catalogue  # noqa: E402
from slaprobe import chain  # noqa: E402
from slaprobe.model import ClockSample, Measurement  # noqa: E402
from slaprobe.schedule import NS_PER_S, next_slot_at_or_after, offset_ns  # noqa: E402

RESULTS_MD = ROOT / "bench" / "RESULTS.md"
OUT = ROOT / "bench" / "out"
BUILD_VERSION = 2  # bump when the generated world changes: the cache key includes it (2: record batches)
SITE = "shop"
MINUTE = 60 * NS_PER_S
HOUR = 60 * MINUTE
DAY = 24 * HOUR
MS = 1_000_000
START = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp()) * NS_PER_S
END = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp()) * NS_PER_S
NOW = END + HOUR
HANDOVER = START + 16 * DAY + 12 * HOUR  # shop-a1's host is replaced on the 17th at noon UTC
OUTAGE = (START + 13 * DAY + 9 * HOUR + 12 * MINUTE, START + 13 * DAY + 9 * HOUR + 58 * MINUTE)
SEAL_EVERY = SpoolLimits().seal_every  # the agent's defaults (--seal-interval overrides the interval)
SEAL_INTERVAL_S = SpoolLimits().seal_interval_s
CHECKOUT = 10  # the checkout service: the first CHECKOUT checks


def catalogue(checks: int) -> str:
    http = checks * 3 // 5
    lines = [
        "reporting:",
        "  clock_bound: 100ms",
        "sites:",
        f"  {SITE}:",
        '    description: "Web shop, production"',
        "    sla:",
        "      availability: 99.9%",
        "      latency: {percentile: 95, threshold: 300ms}",
        "      time_zone: Europe/Paris",
        "    services:",
        "      checkout:",
        '        description: "Basket, payment and order confirmation"',
        f"        checks: [{', '.join(name(i, http) for i in range(min(CHECKOUT, checks)))}]",
        "        sla:",
        "          availability: 99.95%",
        "          latency: {percentile: 95, threshold: 250ms}",
        "    checks:",
    ]
    for i in range(checks):
        if i < http:
            lines.append(
                f'      {name(i, http)}: {{type: http, target: "https://shop.example/p/{i}", interval: 60s, timeout: 5s}}'
            )
        else:
            lines.append(
                f'      {name(i, http)}: {{type: tcp, target: "10.0.{i // 250}.{i % 250}:5432", interval: 60s, timeout: 5s}}'
            )
    return "\n".join(lines) + "\n"


def name(i: int, http: int) -> str:
    return f"web{i:02d}" if i < http else f"tcp{i:02d}"


@dataclass(frozen=True)
class AgentSpec:
    row: int
    name: str
    epoch: int
    start_ns: int  # first slot probed
    end_ns: int  # no slot at or after this
    tick_phase_ns: int  # the spool's sealing ticks: tick_phase + k intervals
    seed: int
    seal_interval_ns: int = int(SEAL_INTERVAL_S * NS_PER_S)


def agent_key(seed: int, agent: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(f"bench-evidence/{seed}/{agent}".encode()).digest()
    )


def agents(seed: int, seal_interval_s: float) -> list[AgentSpec]:
    a1_start = START - HOUR
    a2_start = HANDOVER + 20 * MINUTE
    return [
        AgentSpec(
            1,
            f"{SITE}-a1",
            a1_start - 3 * NS_PER_S,
            a1_start,
            HANDOVER,
            a1_start - 2_630_000_000,
            seed,
            int(seal_interval_s * NS_PER_S),
        ),
        AgentSpec(
            2,
            f"{SITE}-a2",
            a2_start - 5 * NS_PER_S,
            a2_start,
            END + 30 * MINUTE,
            a2_start - 4_170_000_000,
            seed,
            int(seal_interval_s * NS_PER_S),
        ),
    ]


# ---- generating one agent's stream (a worker process) ---------------------------------------------

OK, REFUSED, TIMEOUT, STATUS = 0, 1, 2, 3
HTTP_FIELDS: dict[str, float | str | bool] = {
    "status_code": 200.0,
    "http_version": "HTTP/1.1",
    "body_bytes": 5120.0,
}


def _measurement(
    key: str, rev: str, is_http: bool, t: int, start: int, dur: int, outcome: int, off: int
) -> Measurement:
    if outcome == OK:
        if is_http:
            r, c, tl = dur // 20, dur // 6, dur // 4
            x = dur // 12
            phases: tuple[tuple[str, int], ...] = (
                ("resolve", r),
                ("connect", c),
                ("tls", tl),
                ("processing", dur - r - c - tl - x),
                ("transfer", x),
            )
            return Measurement(
                key,
                rev,
                t,
                start,
                dur,
                True,
                phases=phases,
                fields=HTTP_FIELDS,
                clock_offset_ns=off,
                clock_synced=True,
            )
        return Measurement(
            key,
            rev,
            t,
            start,
            dur,
            True,
            phases=(("resolve", dur // 10), ("connect", dur - dur // 10)),
            clock_offset_ns=off,
            clock_synced=True,
        )
    if outcome == REFUSED:
        return Measurement(
            key,
            rev,
            t,
            start,
            dur,
            False,
            error_kind="refused",
            detail="connection refused",
            phases=(("resolve", dur // 2), ("connect", dur - dur // 2)),
            clock_offset_ns=off,
            clock_synced=True,
        )
    if outcome == TIMEOUT:
        return Measurement(
            key,
            rev,
            t,
            start,
            dur,
            False,
            error_kind="timeout",
            detail="no answer within 5s",
            phases=(("resolve", 400_000), ("connect", dur - 400_000)),
            clock_offset_ns=off,
            clock_synced=True,
        )
    return Measurement(
        key, rev, t, start, dur, False, error_kind="status", detail="status 503 not in [200-399]",
        phases=(("resolve", 300_000), ("connect", 2 * MS), ("tls", 4 * MS), ("processing", dur - 7 * MS - 300_000), ("transfer", 0)),
        fields={"status_code": 503.0, "http_version": "HTTP/1.1", "body_bytes": 312.0}, clock_offset_ns=off, clock_synced=True,
    )  # fmt: skip


def generate_agent(spec: AgentSpec, checks: list[tuple[str, int, str, bool]], part: Path) -> dict[str, Any]:
    """One agent's sealed stream into a part file: record_log, results and clock_samples rows."""
    rng = random.Random(spec.seed * 1000 + spec.row)
    key = agent_key(spec.seed, spec.name)
    # Every event with the time the spool appends it (a probe's result when it completes).
    events: list[
        tuple[int, int, int, int, int, int]
    ] = []  # append_ns, check index (-1 clock), t, started, duration, outcome
    for ci, (ckey, _row, _rev, is_http) in enumerate(checks):
        base = (20 + ci * 7 % 60) * MS
        t = next_slot_at_or_after(spec.start_ns, MINUTE, offset_ns(ckey, MINUTE))
        down = OUTAGE if ci < CHECKOUT else (0, 0)
        while t < spec.end_ns:
            started = t + rng.randrange(200_000, 3_000_000)
            if down[0] <= t < down[1]:
                outcome, dur = REFUSED, rng.randrange(300_000, 1_500_000)
            else:
                u = rng.random()
                if u < 1e-4:
                    outcome, dur = TIMEOUT, 5_000_000_000 + rng.randrange(0, 2_000_000)
                elif u < 2e-4 and is_http:
                    outcome, dur = STATUS, rng.randrange(30 * MS, 90 * MS)
                else:
                    outcome = OK
                    dur = base + rng.randrange(0, 15 * MS) + (400 * MS if u > 0.99 else 0)
            events.append((started + dur, ci, t, started, dur, outcome))
            t += MINUTE
    t = spec.start_ns - spec.start_ns % HOUR + HOUR + 17 * NS_PER_S
    while t < spec.end_ns:
        events.append((t + 300_000, -1, t, 0, 0, 0))
        t += HOUR
    events.sort()

    conn = sqlite3.connect(part)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("CREATE TABLE record_log (agent_id, epoch, seq, through_seq, kind, raw)")
    conn.execute(f"CREATE TABLE results ({', '.join(store.RESULT_COLUMNS)})")
    conn.execute(
        "CREATE TABLE clock_samples (agent_id, epoch, seq, t0_ns, t1_ns, t2_ns, t3_ns, offset_ns, rtt_ns, received_ns)"
    )
    a, epoch = spec.row, spec.epoch
    log_rows: list[tuple[Any, ...]] = []
    result_rows: list[tuple[Any, ...]] = []
    clock_rows: list[tuple[Any, ...]] = []

    def flush() -> None:
        conn.executemany("INSERT INTO record_log VALUES (?, ?, ?, ?, ?, ?)", log_rows)
        conn.executemany(
            f"INSERT INTO results VALUES ({', '.join('?' * len(store.RESULT_COLUMNS))})", result_rows
        )
        conn.executemany("INSERT INTO clock_samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", clock_rows)
        log_rows.clear()
        result_rows.clear()
        clock_rows.clear()

    head, seq, segment_start = chain.GENESIS, 0, 1
    digest = chain.Digest()
    seals = results = clocks = 0
    open_tick = -1  # the sealing tick that will close the open link
    offset = 180_000

    def seal(sealed_ns: int) -> None:
        nonlocal seq, head, segment_start, digest, seals
        seq += 1
        s = chain.make_seal(
            key, epoch=epoch, first_seq=segment_start, last_seq=seq - 1, prev=head,
            digest=digest.value(), count=digest.count, sealed_ns=sealed_ns,
        )  # fmt: skip
        log_rows.append((a, epoch, seq, seq, 5, chain.seal_record(seq, s)))
        head = chain.parse_link(seq, s).head
        segment_start = seq + 1
        digest = chain.Digest()
        seals += 1

    conn.execute("BEGIN")
    for appended, ci, t, started, dur, outcome in events:
        tick = -(-(appended - spec.tick_phase_ns) // spec.seal_interval_ns)
        if digest.count and tick != open_tick:
            seal(spec.tick_phase_ns + open_tick * spec.seal_interval_ns + 300_000)
        if not digest.count:
            open_tick = tick
        received = (
            spec.tick_phase_ns + open_tick * spec.seal_interval_ns + 42 * MS
        )  # delivered after its seal
        seq += 1
        if ci < 0:
            off = offset + rng.randrange(-40_000, 40_000)
            sample = ClockSample(t, t - off + 110_000, t - off + 130_000, t + 240_000)
            raw = encode_record(seq, sample)
            log_rows.append((a, epoch, seq, seq, 4, raw))
            clock_rows.append(store.clock_row(a, epoch, seq, sample, received))
            offset = sample.offset_ns
            clocks += 1
        else:
            ckey, row, rev, is_http = checks[ci]
            m = _measurement(ckey, rev, is_http, t, started, dur, outcome, offset)
            raw = encode_record(seq, m)
            log_rows.append((a, epoch, seq, seq, 2, raw))
            result_rows.append(store.measurement_row(a, epoch, seq, row, m, received))
            results += 1
        digest.add(raw)
        if digest.count >= SEAL_EVERY:
            seal(appended + 200_000)
        if len(log_rows) >= 100_000:
            flush()
    if digest.count:
        seal(spec.tick_phase_ns + open_tick * spec.seal_interval_ns + 300_000)
    flush()
    conn.execute("COMMIT")
    conn.close()
    return {
        "agent": spec.name,
        "results": results,
        "clocks": clocks,
        "seals": seals,
        "last_seq": seq,
        "head": head.hex(),
    }


def _generate(args: tuple[AgentSpec, list[tuple[str, int, str, bool]], Path]) -> dict[str, Any]:
    return generate_agent(*args)


# ---- the database ---------------------------------------------------------------------------------------


def db_path(checks: int, seed: int, seal_interval_s: float) -> Path:
    return OUT / f"evidence-{checks}c-s{seed}-seal{seal_interval_s:g}s-v{BUILD_VERSION}.db"


def build(path: Path, checks: int, seed: int, workers: int, seal_interval_s: float) -> dict[str, Any]:
    for suffix in ("", "-wal", "-shm", ".json"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    t0 = time.perf_counter()
    db = store.open_store(path)
    conn = db.conn
    conn.execute("PRAGMA journal_mode=DELETE")  # a bulk load: put back in WAL below
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1048576")
    cat = parse_catalogue(catalogue(checks), "bench-evidence.yaml")
    specs = agents(seed, seal_interval_s)
    with store.immediate(db):
        refs = store._persist_catalogue(db, cat, START - 30 * DAY)
        for s in specs:
            db.execute(
                "INSERT INTO agents (id, name, site, version, hostname, epoch, first_seen_ns, last_seen_ns,"
                " clock_offset_ns, clock_rtt_ns, spool_depth, oldest_unsent_ns)"
                " VALUES (?, ?, ?, '0.9.0', ?, ?, ?, ?, 180000, 240000, 0, 0)",
                [s.row, s.name, SITE, f"{s.name}.shop.example", s.epoch, s.epoch, s.end_ns],
            )
            pub = chain.public_raw(agent_key(seed, s.name))
            db.execute(
                "INSERT INTO agent_keys VALUES (?, ?, ?, ?, 'enrol')",
                [s.name, chain.key_id(pub), pub, s.epoch - 60 * NS_PER_S],
            )
    for at, hours, reason, by in (
        (START + 7 * DAY + 2 * HOUR, 1, "database upgrade", "ops-alice"),
        (START + 21 * DAY + 22 * HOUR, 1.5, "core switch replacement", "ops-bob"),
        (START + 27 * DAY + 3 * HOUR, 2, "planned then postponed", "ops-alice"),
    ):
        wid = store.add_maintenance(db, SITE, None, at, at + int(hours * HOUR), reason, by, at - 3 * DAY)
        if reason.endswith("postponed"):
            store.cancel_maintenance(db, wid, "ops-carol", at - DAY)
    keys = sorted(refs)
    http = checks * 3 // 5
    rows = {k: refs[k].row_id for k in keys}
    revisions = {c.id: c.revision for c in cat.all_checks()}
    check_list = [
        (
            f"{SITE}/{name(i, http)}",
            rows[f"{SITE}/{name(i, http)}"],
            revisions[f"{SITE}/{name(i, http)}"],
            i < http,
        )
        for i in range(checks)
    ]
    parts = [Path(f"{path}.part{s.row}") for s in specs]
    for p in parts:
        p.unlink(missing_ok=True)
    jobs = [(s, check_list, p) for s, p in zip(specs, parts, strict=True)]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            streams = pool.map(_generate, jobs)
    else:
        streams = [_generate(j) for j in jobs]
    t_gen = time.perf_counter()
    conn.execute("BEGIN")
    for s, p, got in zip(specs, parts, streams, strict=True):
        conn.execute("ATTACH DATABASE ? AS part", (str(p),))
        # As the collector stores them (collector/record_log.py): each link delivered as a batch,
        # the records before a seal one record_batches row, the seal a record_log row.
        link: list[tuple[Any, ...]] = []
        for row in conn.execute("SELECT * FROM part.record_log ORDER BY seq").fetchall():
            link.append(row)
            if row[4] == record_log.SEAL:
                record_log.store(conn, s.row, s.epoch, link)
                link = []
        if link:
            record_log.store(conn, s.row, s.epoch, link)
        conn.execute(
            f"INSERT INTO results ({', '.join(store.RESULT_COLUMNS)}) SELECT * FROM part.results ORDER BY rowid"
        )
        conn.execute("INSERT INTO clock_samples SELECT * FROM part.clock_samples ORDER BY rowid")
        conn.execute(
            "INSERT INTO streams (agent_id, epoch, acked_seq, head) VALUES (?, ?, ?, ?)",
            (s.row, s.epoch, got["last_seq"], bytes.fromhex(got["head"])),
        )
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE part")
        p.unlink()
        conn.execute("BEGIN")
    conn.execute("COMMIT")
    t_load = time.perf_counter()
    with store.immediate(db):
        rollups.rebuild(conn, store.RESULT_COLUMNS)
    t_roll = time.perf_counter()
    conn.execute("ANALYZE")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    info = {
        "results": sum(s["results"] for s in streams),
        "seals": sum(s["seals"] for s in streams),
        "clock_samples": sum(s["clocks"] for s in streams),
        "records": sum(s["last_seq"] for s in streams),
        "agents": [s["agent"] for s in streams],
        "generate_s": t_gen - t0,
        "load_s": t_load - t_gen,
        "rollup_s": t_roll - t_load,
        "db_gib": path.stat().st_size / 2**30,
    }
    Path(f"{path}.json").write_text(json.dumps(info))
    return info


def check_bytes(path: Path, seed: int) -> None:
    """The stored records are what the agent's own code writes: one result re-encoded, one seal re-checked."""
    conn = sqlite3.connect(path)
    try:
        (epoch,) = conn.execute("SELECT epoch FROM streams WHERE agent_id = 1").fetchone()
        stored = record_log.records(conn, 1, epoch, 0, 2**62)
        raw = next(r for i, (_s, kind, r) in enumerate(stored) if kind == 2 and i >= 1000)
        from protos import slaprobe_v1_pb2 as pb

        rec = pb.Record.FromString(raw)
        assert rec.SerializeToString(deterministic=True) == raw or rec.SerializeToString() == raw
        seq, body = conn.execute(
            "SELECT seq, raw FROM record_log WHERE agent_id = 1 AND kind = 5 LIMIT 1 OFFSET 10"
        ).fetchone()
        link = chain.parse_link(seq, pb.Record.FromString(body).seal)
        assert link.signature_ok(agent_key(seed, f"{SITE}-a1").public_key()), "seal signature"
    finally:
        conn.close()


def tls_dir() -> Path:
    from slaprobe.pki import SIGNING_KEY, CollectorPki

    d = OUT / "evidence-tls"
    if not (d / SIGNING_KEY).exists():
        CollectorPki(d).init(["localhost"])
    return d


# ---- measuring the CLI --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import zlib

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "kernel": platform.release(),
    }


def code_version() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.rstrip("\n") if out.returncode == 0 else ""

    status = git("status", "--porcelain", "--", "collector", "slaprobe", "protos")
    try:  # the compiled renderer (the optional slaprobe-speedups distribution), used when installed
        import slaprobe_speedups._evidence  # noqa: F401

        compiled = True
    except ImportError:
        compiled = False
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip() or "unknown",
        "uncommitted": sorted(line[3:] for line in status.splitlines()),
        "speedups": compiled,
    }


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
    return total


_WAIT4 = """
import json, os, sys
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ)
_, status, u = os.wait4(pid, 0)
print("BENCH-RUSAGE " + json.dumps({"exit": os.waitstatus_to_exitcode(status), "user": u.ru_utime,
      "system": u.ru_stime, "maxrss_kib": u.ru_maxrss}), file=sys.stderr)
"""


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a command; wall time, CPU of it and its children, peak RSS, machine CPU meanwhile."""
    load0 = os.getloadavg()[0]
    cpu0 = psutil.cpu_times()
    t0 = time.perf_counter()
    # Through a small wrapper that reports the command's rusage: a child forked from this big process
    # would count this process's memory (until exec) in its ru_maxrss.
    proc = subprocess.Popen(
        [sys.executable, "-c", _WAIT4, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(proc.pid)
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(p))
                done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read() if proc.stdout else b""))
    reader.start()
    proc.wait()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    reader.join()
    err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")
    err, _, tail = err.rpartition("BENCH-RUSAGE ")
    usage = json.loads(tail.split("\n", 1)[0])
    cpu1 = psutil.cpu_times()
    busy = (cpu1.user + cpu1.system + cpu1.nice) - (cpu0.user + cpu0.system + cpu0.nice)
    cpu = usage["user"] + usage["system"]
    return {
        "argv": argv,
        "exit": usage["exit"],
        "stdout": b"".join(out_chunks).decode(errors="replace"),
        "stderr": err,
        "wall_s": wall,
        "cpu_s": cpu,
        "user_s": usage["user"],
        "system_s": usage["system"],
        "maxrss_mib": usage["maxrss_kib"] / 1024,
        "tree_rss_peak_mib": peak[0] / 2**20,
        "other_cores": max(0.0, (busy - cpu) / wall),
        "load_before": load0,
        "load_after": os.getloadavg()[0],
    }


def bundle_facts(bundle: Path) -> dict[str, Any]:
    with tarfile.open(bundle) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
    sizes = {m.name.split("/", 1)[1]: m.size for m in members}
    return {
        "size_mib": bundle.stat().st_size / 2**20,
        "files": len(members),
        "uncompressed_mib": sum(sizes.values()) / 2**20,
        "largest": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:6]),
    }


# ---- the per-phase breakdown (in this process) ---------------------------------------------------

CATEGORIES = (
    # (category, substrings of "file:function" of cProfile's entries; first match wins)
    ("compression", ("zlib", "gzip", "_compress", "Compress")),
    ("hashing", ("_hashlib", "sha256", "digest", "Digest.add", "hexdigest")),
    ("signatures", ("ed25519", "verify' of", "sign' of")),
    ("extraction", ("tarfile",)),
    ("SQL", ("sqlite3", "execute", "fetch", "Cursor")),
    ("protobuf decode", ("FromString", "ParseFromString", "WhichOneof", "protobuf")),
    ("table rendering", ("records.py", "csv", "json/encoder", "dumps", "utc", "strftime", "fromtimestamp")),
    ("report computation", ("report_doc", "rollups.py", "sla/", "engine", "histogram")),
)


def profile_split(prof: cProfile.Profile) -> dict[str, float]:
    """Own (tottime) seconds per category of the main process's functions."""
    stats = pstats.Stats(prof)
    out: dict[str, float] = {}
    for (file, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        label = f"{file}:{func}"
        cat = next((c for c, keys in CATEGORIES if any(k in label for k in keys)), "other Python")
        out[cat] = out.get(cat, 0.0) + tt
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@contextlib.contextmanager
def maybe_profile(enabled: bool) -> Iterator[cProfile.Profile | None]:
    if not enabled:
        yield None
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield prof
    finally:
        prof.disable()


def phases_in_process(db: Path, tls: Path, bundle: Path, profile: bool) -> dict[str, Any]:
    from collector.evidence.export import export_bundle, load_signing_key
    from collector.evidence.verify import Verifier
    from collector.sla.report import Period
    from slaprobe.pki import SIGNING_KEY

    out: dict[str, Any] = {}
    key = load_signing_key(tls / SIGNING_KEY)
    with maybe_profile(profile) as prof:
        t = time.perf_counter()
        res = export_bundle(
            db, key, SITE, Period("month", 2026, 10), bundle, now_ns=NOW, period_label="2026-10"
        )
        out["export_s"] = time.perf_counter() - t
    out["export_phases"] = dict(getattr(res, "phases", {}))
    if prof is not None:
        out["export_profile"] = profile_split(prof)
    lines: list[str] = []
    verifier = Verifier(bundle, say=lines.append)
    with maybe_profile(profile) as prof:
        t = time.perf_counter()
        verifier.run()
        out["verify_s"] = time.perf_counter() - t
    out["verify_phases"] = dict(getattr(verifier, "phases", {}))
    out["verify_counts"] = dict(getattr(verifier, "counts", {}))
    if prof is not None:
        out["verify_profile"] = profile_split(prof)
    return out


# ---- main ------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checks", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--repeat", type=int, default=1, help="CLI runs of export and of verify (median reported)"
    )
    ap.add_argument("--build-workers", type=int, default=2)
    ap.add_argument(
        "--seal-interval",
        type=float,
        default=SEAL_INTERVAL_S,
        help="the agents' sealing interval in seconds (default: the spool's, %(default)g s)",
    )
    ap.add_argument("--rebuild", action="store_true", help="build the database even if cached")
    ap.add_argument("--no-phases", action="store_true", help="skip the in-process per-phase run")
    ap.add_argument("--profile", action="store_true", help="the per-phase run under cProfile too")
    ap.add_argument("--markdown", action="store_true", help=f"append a section to {RESULTS_MD}")
    ap.add_argument(
        "--code",
        type=Path,
        help="run the CLI from this source tree instead (e.g. `git archive` of an older commit): before/after",
    )
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    path = db_path(a.checks, a.seed, a.seal_interval)
    figures: dict[str, Any] = {
        "seal_interval_s": a.seal_interval,
        "machine": machine(),
        "code": code_version(),
        "checks": a.checks,
        "seed": a.seed,
    }
    if a.rebuild or not path.exists() or not Path(f"{path}.json").exists():
        print(f"building {path}: {a.checks} checks at 60 s, October 2026, sealed records ...", flush=True)
        figures["build"] = build(path, a.checks, a.seed, a.build_workers, a.seal_interval)
        figures["build"]["cached"] = False
    else:
        figures["build"] = json.loads(Path(f"{path}.json").read_text())
        figures["build"]["cached"] = True
    b = figures["build"]
    print(
        f"  {b['results']:,} results, {b['seals']:,} seals, {b['clock_samples']:,} clock samples;"
        f" database {b['db_gib']:.2f} GiB"
        + (
            " (cached)"
            if b["cached"]
            else f", built in {b['generate_s'] + b['load_s'] + b['rollup_s']:.0f} s"
        ),
        flush=True,
    )
    check_bytes(path, a.seed)
    tls = tls_dir()
    with open(path, "rb") as warm:  # a warm page cache, as for a database in use
        while warm.read(1 << 24):
            pass
    bundle = OUT / "evidence-bundle.tar.gz"
    cli = [str(ROOT / ".venv" / "bin" / "slaprobe")]
    env = None
    if a.code is not None:  # the console script's Python, the other tree first on its path
        cli = [sys.executable, cli[0]]
        env = {**os.environ, "PYTHONPATH": str(a.code.resolve())}
        figures["code"] = {
            "commit": f"tree {a.code}",
            "uncommitted": [],
            "speedups": figures["code"]["speedups"],
        }
        a.no_phases = True
    exports, verifies = [], []
    for i in range(a.repeat):
        e = run_measured(
            [*cli, "evidence", "export", "--db", str(path), "--tls-dir", str(tls), "--site", SITE, "--period", "2026-10",
             "--now", "2026-11-01T01:00Z", "-o", str(bundle), "--force"], env
        )  # fmt: skip
        if e["exit"] != 0:
            sys.exit(f"export failed: {e['stdout']}{e['stderr']}")
        print(
            f"  export {i + 1}: {e['wall_s']:.1f} s, CPU {e['cpu_s']:.1f} s, max RSS {e['maxrss_mib']:.0f} MiB, load {e['load_before']:.1f}",
            flush=True,
        )
        exports.append(e)
        v = run_measured([*cli, "evidence", "verify", str(bundle)], env)
        if v["exit"] != 0:
            sys.exit(f"verify failed: {v['stdout']}{v['stderr']}")
        print(
            f"  verify {i + 1}: {v['wall_s']:.1f} s, CPU {v['cpu_s']:.1f} s, max RSS {v['maxrss_mib']:.0f} MiB, load {v['load_before']:.1f}",
            flush=True,
        )
        verifies.append(v)
    figures["bundle"] = bundle_facts(bundle)
    figures["export_out"] = exports[-1]["stdout"].strip()
    figures["verify_out"] = verifies[-1]["stdout"].strip()

    def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]

    figures["export"] = {
        k: v for k, v in median_run(exports).items() if k not in ("stdout", "stderr", "argv")
    }
    figures["verify"] = {
        k: v for k, v in median_run(verifies).items() if k not in ("stdout", "stderr", "argv")
    }
    figures["export_runs_s"] = [r["wall_s"] for r in exports]
    figures["verify_runs_s"] = [r["wall_s"] for r in verifies]
    print(
        f"  bundle {figures['bundle']['size_mib']:.1f} MiB, {figures['bundle']['files']} files ({figures['bundle']['uncompressed_mib']:.0f} MiB unpacked)"
    )
    if not a.no_phases:
        print(
            "  per-phase run in this process" + (" under cProfile" if a.profile else "") + " ...", flush=True
        )
        figures["phases"] = phases_in_process(path, tls, OUT / "evidence-bundle-phases.tar.gz", a.profile)
        for what in ("export", "verify"):
            ph = figures["phases"][f"{what}_phases"]
            print(f"  {what} phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in ph.items()))
            if f"{what}_profile" in figures["phases"]:
                pr = figures["phases"][f"{what}_profile"]
                print(
                    f"  {what} profile (own time, main process): "
                    + ", ".join(f"{k} {v:.1f} s" for k, v in pr.items())
                )
    figures["machine"]["load_average_end"] = os.getloadavg()[0]
    e, v = figures["export"], figures["verify"]
    print(
        f"export {e['wall_s']:.1f} s (target < 30 s: {'met' if e['wall_s'] < 30 else 'NOT met'}), verify {v['wall_s']:.1f} s (target < 30 s: {'met' if v['wall_s'] < 30 else 'NOT met'})"
    )
    print(json.dumps(figures, default=str))
    if a.markdown:
        with RESULTS_MD.open("a", encoding="utf-8") as f:
            f.write(markdown(figures))


def markdown(f: dict[str, Any]) -> str:
    m, b, bun, e, v = f["machine"], f["build"], f["bundle"], f["export"], f["verify"]
    code = f["code"]
    dirty = f", uncommitted changes in {', '.join(code['uncommitted'])}" if code["uncommitted"] else ""
    largest = ", ".join(f"{k} {s / 2**20:,.0f} MiB" for k, s in bun["largest"].items())
    rows = []
    for label, r in (("export", e), ("verify", v)):
        rows.append(
            f"| `slaprobe evidence {label}` | **{r['wall_s']:.1f} s** | {r['cpu_s']:.1f} s ({r['user_s']:.1f} user + {r['system_s']:.1f} sys) = {r['cpu_s'] / r['wall_s']:.2f} cores"
            f" | {r['maxrss_mib']:.0f} / {r['tree_rss_peak_mib']:.0f} MiB | {r['load_before']:.1f} → {r['load_after']:.1f} | {r['other_cores']:.2f} |"
        )
    phases = ""
    if "phases" in f:
        p = f["phases"]
        phases = "\n\nPer phase (one more run of each in the benchmark's process; wall seconds, CPU seconds where named CPU):\n\n"
        for what in ("export", "verify"):
            phases += (
                f"* {what} ({p[f'{what}_s']:.1f} s): "
                + ", ".join(f"{k} {s:.1f}" for k, s in p[f"{what}_phases"].items())
                + "".join(f", {k}: {n}" for k, n in p.get(f"{what}_counts", {}).items())
                + "\n"
            )
            if f"{what}_profile" in p:
                phases += (
                    "  * cProfile, own time of the main process (profiled, so slower): "
                    + ", ".join(f"{k} {s:.1f}" for k, s in p[f"{what}_profile"].items())
                    + "\n"
                )
    built = "cached" if b["cached"] else f"built in {b['generate_s'] + b['load_s'] + b['rollup_s']:.0f} s"
    return f"""
## Evidence: export and verify a month of one site, {datetime.now(UTC).strftime("%Y-%m-%d %H:%M")} UTC

Machine: {m["cpu"]}, {m["cores"]} vCPU, Linux {m["kernel"]}; Python {m["python"]}, SQLite {m["sqlite"]}, zlib {m["zlib"]}. Load average at the end {m["load_average_end"]:.1f}.
Code: commit {code["commit"]}{dirty}; slaprobe_speedups._evidence (compiled renderer) {"installed" if code.get("speedups") else "not installed"}.
World (`bench/evidence.py`, database {built}, {b["db_gib"]:.2f} GiB): one site, {f["checks"]} checks at 60 s, October 2026: {b["results"]:,} results, {b["clock_samples"]:,} clock samples and {b["seals"]:,} seals (sealed every {f["seal_interval_s"]:g} s or 500 records, at 0.83 results/s) from 2 agents in turn; runs: export {", ".join(f"{x:.1f}" for x in f["export_runs_s"])} s, verify {", ".join(f"{x:.1f}" for x in f["verify_runs_s"])} s.

| command | wall (median) | CPU | max RSS (largest process / sampled tree) | load avg before → after | other processes, cores |
|---|---:|---:|---:|---|---:|
{chr(10).join(rows)}

Bundle: **{bun["size_mib"]:.1f} MiB**, {bun["files"]} files, {bun["uncompressed_mib"]:,.0f} MiB unpacked (largest: {largest}).{phases}
Targets: export under 30 s: {"met" if e["wall_s"] < 30 else "**NOT met**"}; verify under 30 s: {"met" if v["wall_s"] < 30 else "**NOT met**"}.
"""


if __name__ == "__main__":
    main()
