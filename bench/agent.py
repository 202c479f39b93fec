"""Agent benchmark: one real agent, 1,000 http checks every 10 s (100 probes/s), and a spooled backlog.

One run does, in order:

1. **steady state**: starts a local HTTP server (nginx when installed, else a small asyncio server in
   its own process, so it shares no GIL with anyone), a collector (``python -m slaprobe collector
   serve --insecure``) whose catalogue holds ``--checks`` http checks on one site, and one agent
   (``python -m slaprobe agent run --config ...``). After ``--warmup`` seconds it measures for
   ``--seconds``: the agent's and the collector's CPU (psutil ``cpu_times`` delta over wall time),
   the agent's RSS (sampled every 0.5 s: peak and mean; VmHWM too). Start lateness
   (``started_ns - scheduled_ns``) is computed afterwards from the collector's database, for every
   result scheduled inside the window, against the slots the schedule says were due.
2. **drain**: writes a spool of ``--backlog`` results into a fresh agent data directory, the first
   ``--api-records`` through ``agent.spool.Spool`` itself and the rest in bulk with the same rows
   (``agent.wire.encode_record``; the bulk builder is checked byte for byte against what ``Spool``
   wrote), as an agent holds them after a long outage: sealed and signed (a seal every 500 results,
   the agent's own ``signing.key``), as a running agent spools them (``--unsealed`` for a spool written
   before sealing). Then starts a fresh collector and an agent on
   that directory (its checks point at a closed port: only the backlog matters) and measures the
   time from the agent's registration until the collector's ``streams.acked_seq`` covers the last
   spooled seq, with the agent's and the collector's CPU and RSS meanwhile. Then the same backlog (a
   copy of the spool) is drained into a **null collector** (a gRPC server in its own process that
   acknowledges every batch at once and stores nothing): the agent's own ceiling, which tells whether
   the agent or the collector sets the end-to-end rate (``--no-null-drain`` skips it).
3. prints a summary and one JSON line; ``--markdown`` appends a section to ``bench/RESULTS.md``.

Every window also reports the CPU other processes used meanwhile (in cores; above 0.15 its figures
are flagged as disturbed), and waits up to ``--quiet-wait`` seconds for a quiet machine first. Thread
names come from ``py-spy dump`` when py-spy is installed; ``--profile DIR`` records the agent with
py-spy (collapsed stacks) during each window and prints the busiest functions.

Targets (from the issue): p99 start lateness < 10 ms, agent RSS < 100 MB, drain ≥ 10,000 results/s.

Run: ``.venv/bin/python bench/agent.py [--seconds 60] [--warmup 20] [--backlog 1000000] [--markdown]``
"""

# ruff: noqa: E402
# This file is bench/agent.py. Run as a script, bench/ comes first on sys.path and ``import agent``
# would find this very file instead of slaprobe's agent package: drop bench/ before importing it.
from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import grpc
import psutil

from agent.main import SIGNING_KEY, build_runner_prober
from agent.runner import CheckRunner
from agent.spool import KIND_RESULT, KIND_SEAL, Spool, SpoolLimits
from agent.wire import encode_record
from collector.catalogue import load_catalogue
from slaprobe import chain
from slaprobe.model import CheckSpec, Measurement
from slaprobe.schedule import NS_PER_S, offset_ns, slot_index, slots_in

ROOT = BENCH_DIR.parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
SITE = "bench"
AGENT_NAME = "bench-agent"

TARGET_P99_LATENESS_MS = 10.0
TARGET_RSS_BYTES = 100_000_000  # "under 100 MB"
TARGET_DRAIN_PER_S = 10_000.0
QUIET_CORES = 0.15  # other processes using more than this during a window disturb its figures

HTTP_BODY = b"ok\n"
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
    % (len(HTTP_BODY), HTTP_BODY)
)
MIB = 1024 * 1024
SLAPROBE = [sys.executable, "-m", "slaprobe"]


@dataclass(frozen=True)
class Params:
    seconds: float
    warmup: float
    checks: int
    interval_s: float
    timeout_s: float
    backlog: int
    api_records: int
    http_server: str
    build_workers: int
    drain_timeout: float
    steady: bool
    drain: bool
    null_drain: bool
    sealed: bool
    quiet_wait: float
    profile: Path | None
    workdir: Path | None
    keep: bool
    markdown: bool


# ---- the local HTTP server -----------------------------------------------------------------------


async def _serve_http(conn: Connection) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")  # the probe sends no body with GET
            writer.write(HTTP_RESPONSE)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()  # Connection: close
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    conn.send(server.sockets[0].getsockname()[1])
    conn.close()
    async with server:
        await server.serve_forever()


def http_server_main(conn: Connection) -> None:
    """Entry point of the asyncio HTTP server's own process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve_http(conn))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpServer:
    """nginx (one worker, ``return 200``) when installed, else the asyncio server in a process."""

    def __init__(self, workdir: Path, kind: str) -> None:
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if kind == "nginx" and nginx is None:
            raise SystemExit("bench: --http-server nginx, but nginx is not installed")
        self.kind = "nginx" if kind in ("auto", "nginx") and nginx else "asyncio"
        self.version = ""
        if self.kind == "nginx":
            assert nginx is not None
            self.port = free_port()
            d = workdir / "nginx"
            (d / "tmp").mkdir(parents=True)
            conf = d / "nginx.conf"
            conf.write_text(
                f"worker_processes 1;\nmaster_process off;\ndaemon off;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n"
                "events { worker_connections 4096; }\nhttp {\n  access_log off;\n  keepalive_timeout 0;\n"
                f"  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n"
                f"  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n"
                f"  server {{ listen 127.0.0.1:{self.port}; default_type text/plain;"
                ' location / { return 200 "ok\\n"; } }\n}\n'
            )
            out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
            self.version = (out.stderr or out.stdout).strip().rpartition("/")[2]
            self.popen: subprocess.Popen[bytes] | None = subprocess.Popen(
                [nginx, "-p", str(d), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            self.process: multiprocessing.process.BaseProcess | None = None
            self.pid = self.popen.pid
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                    break
                if time.monotonic() > deadline or self.popen.poll() is not None:
                    raise SystemExit(f"bench: nginx did not start; see {d}/error.log")
                time.sleep(0.05)
        else:
            self.popen = None
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe(duplex=False)
            self.process = ctx.Process(target=http_server_main, args=(child,), name="bench-http", daemon=True)
            self.process.start()
            child.close()
            if not parent.poll(30):
                raise SystemExit("bench: the asyncio HTTP server did not start")
            self.port = int(parent.recv())
            assert self.process.pid is not None
            self.pid = self.process.pid
        self.ps = psutil.Process(self.pid)

    def stop(self) -> None:
        if self.popen is not None:
            self.popen.send_signal(signal.SIGQUIT)  # nginx: graceful stop
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.process is not None:
            self.process.terminate()
            self.process.join(10)


# ---- slaprobe processes ------------------------------------------------------------------------------


class SlaprobeProc:
    """``python -m slaprobe ARGS`` with its log in a file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with log_path.open("wb") as fh:
            self.popen = subprocess.Popen(
                [*SLAPROBE, *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        self.ps = psutil.Process(self.popen.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float, what: str) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            if self.popen.poll() is not None:
                raise SystemExit(
                    f"bench: {what}: the process exited ({self.popen.returncode}):\n{self.log()}"
                )
            time.sleep(0.05)
        raise SystemExit(f"bench: timed out after {timeout:.0f} s waiting for {what}:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def start_collector(workdir: Path, catalogue: Path, db: Path) -> tuple[SlaprobeProc, int]:
    proc = SlaprobeProc(
        [
            "collector",
            "serve",
            "--catalogue",
            str(catalogue),
            "--db",
            str(db),
            "--listen",
            "127.0.0.1:0",
            "--insecure",
        ],
        workdir / "collector.log",
    )
    m = proc.wait_log(r"collector listening on .* \(port (\d+)", 60, "the collector to listen")
    return proc, int(m.group(1))


def start_agent(workdir: Path, port: int, data_dir: Path) -> SlaprobeProc:
    cfg = workdir / "agent.yaml"
    cfg.write_text(
        f"collector: 127.0.0.1:{port}\nsite: {SITE}\nname: {AGENT_NAME}\ndata_dir: {data_dir}\ninsecure: true\n"
    )
    return SlaprobeProc(["agent", "run", "--config", str(cfg)], workdir / "agent.log")


def write_catalogue(path: Path, checks: int, interval_s: float, timeout_s: float, base_url: str) -> None:
    lines = [
        "defaults:",
        f"  interval: {interval_s:g}s",
        f"  timeout: {timeout_s:g}s",
        "sites:",
        f"  {SITE}:",
        '    description: "agent benchmark"',
        "    checks:",
    ]
    lines += [f"      c{i:04d}: {{type: http, target: '{base_url}/c{i:04d}'}}" for i in range(checks)]
    path.write_text("\n".join(lines) + "\n")


def log_time_ns(line_match: re.Match[str], log: str) -> int:
    """The timestamp of the log line holding ``line_match`` (slaprobe logs UTC to the millisecond)."""
    start = log.rfind("\n", 0, line_match.start()) + 1
    stamp = log[start : start + 23]  # 2026-11-25T21:12:00.123
    t = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)
    return int(t.timestamp() * 1000) * 1_000_000


# ---- process measurements ----------------------------------------------------------------------------


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def thread_cpu(p: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in p.threads()}


def thread_name(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "?"


def vm_hwm_bytes(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Usage:
    """CPU over a window and sampled RSS of one process."""

    pid: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    rss_peak: int = 0
    rss_mean: float = 0.0
    rss_samples: int = 0
    threads: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s else 0.0


def busy_s(t: Any) -> float:
    """CPU seconds the whole machine spent busy (not idle, not waiting for I/O, not stolen)."""
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0))


def wait_quiet(max_wait_s: float, ours: Sequence[psutil.Process], threshold: float = 0.15) -> float:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold`` cores over 2 s.

    Returns the cores they used in the last 2 s: on a shared 2-core machine, lateness measured while
    something else takes a core says more about the neighbour than about the agent.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        m0, o0 = busy_s(psutil.cpu_times()), sum(cpu_s(p) for p in ours)
        time.sleep(2.0)
        m1, o1 = busy_s(psutil.cpu_times()), sum(cpu_s(p) for p in ours)
        others = max(0.0, (m1 - m0) - (o1 - o0)) / 2.0
        if others < threshold or time.monotonic() >= deadline:
            return others
        print(f"waiting for a quiet machine: other processes use {others:.2f} cores", file=sys.stderr)


class Meter:
    """Samples the RSS of some processes every ``every_s`` and takes CPU deltas from start to stop.

    Also measures what the rest of the machine did meanwhile: ``others_cores`` is the CPU used by
    processes other than ours (and this benchmark), in cores, over the window.
    """

    def __init__(self, procs: dict[str, psutil.Process], every_s: float = 0.5) -> None:
        self.procs = procs
        self.every_s = every_s
        self.others_cores = 0.0
        self.load_avg = 0.0
        self._me = psutil.Process()
        self._machine0 = 0.0
        self._me0 = 0.0
        self._stop = threading.Event()
        self._rss: dict[str, list[int]] = {k: [] for k in procs}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = 0.0
        self._cpu0: dict[str, float] = {}
        self._threads0: dict[str, dict[int, float]] = {}

    def start(self) -> Meter:
        self.load_avg = os.getloadavg()[0]
        self._t0 = time.perf_counter()
        self._machine0 = busy_s(psutil.cpu_times())
        self._me0 = cpu_s(self._me)
        self._cpu0 = {k: cpu_s(p) for k, p in self.procs.items()}
        self._threads0 = {k: thread_cpu(p) for k, p in self.procs.items()}
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            for k, p in self.procs.items():
                with contextlib.suppress(psutil.Error):
                    self._rss[k].append(int(p.memory_info().rss))
            if self._stop.wait(self.every_s):
                return

    def stop(self) -> dict[str, Usage]:
        wall = time.perf_counter() - self._t0
        machine = busy_s(psutil.cpu_times()) - self._machine0
        me = cpu_s(self._me) - self._me0
        out: dict[str, Usage] = {}
        for k, p in self.procs.items():
            threads1 = thread_cpu(p)
            before = self._threads0[k]
            per_thread: list[dict[str, Any]] = [
                {"tid": tid, "name": thread_name(p.pid, tid), "cpu_s": c - before.get(tid, 0.0)}
                for tid, c in threads1.items()
            ]
            per_thread.sort(key=lambda t: -float(t["cpu_s"]))
            for t in per_thread:
                if t["tid"] == p.pid:
                    t["name"] = "main (event loop)"
            out[k] = Usage(pid=p.pid, wall_s=wall, cpu_s=cpu_s(p) - self._cpu0[k], threads=per_thread[:6])
        ours = me + sum(u.cpu_s for u in out.values())
        self.others_cores = max(0.0, machine - ours) / wall if wall else 0.0
        self._stop.set()
        self._thread.join()
        for k, rss in self._rss.items():
            if rss:
                out[k].rss_peak = max(rss)
                out[k].rss_mean = sum(rss) / len(rss)
                out[k].rss_samples = len(rss)
        return out


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def name_threads(usages: dict[str, Usage]) -> None:
    """Python thread names (/proc only says "python"), from ``py-spy dump`` when py-spy is installed."""
    spy = py_spy()
    if spy is None:
        return
    for u in usages.values():
        try:
            out = subprocess.run(
                [spy, "dump", "--pid", str(u.pid), "--nonblocking"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        names = {
            int(tid): name
            for tid, name in re.findall(r'^Thread (\d+) \([^)]*\): "([^"]*)"', out, re.MULTILINE)
        }
        for t in u.threads:
            if t["tid"] != u.pid and t["tid"] in names:
                t["name"] = names[t["tid"]]


class Profiler:
    """Optional py-spy (``--profile DIR``): collapsed stacks of a process for the length of a phase."""

    def __init__(self, directory: Path | None, name: str, pid: int, seconds: float) -> None:
        self.popen: subprocess.Popen[bytes] | None = None
        self.output = directory / f"{name}.txt" if directory is not None else None
        if directory is None:
            return
        spy = py_spy() or "py-spy"
        directory.mkdir(parents=True, exist_ok=True)
        self.popen = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                "200",
                "--format",
                "raw",
                "--threads",
                "--nonblocking",
                "--output",
                str(self.output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)  # py-spy writes what it has
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(20)

    def summary(self, top: int = 25) -> str:
        """The functions holding most samples (inclusive), per thread, for the console."""
        if self.output is None or not self.output.exists():
            return ""
        per_thread: Counter[str] = Counter()
        funcs: Counter[tuple[str, str]] = Counter()
        for line in self.output.read_text().splitlines():
            stack, _, n_text = line.rpartition(" ")
            frames = stack.split(";")
            thread = frames[0].partition(": ")[2] or frames[0]
            n = int(n_text)
            per_thread[thread] += n
            for f in dict.fromkeys(fr.split(" (")[0] for fr in frames[1:]):
                funcs[(thread, f)] += n
        lines = [f"py-spy {self.output}: active samples by thread: {dict(per_thread.most_common(6))}"]
        lines += [f"  {n:6d}  {t}: {f}" for (t, f), n in funcs.most_common(top)]
        return "\n".join(lines)


# ---- statistics --------------------------------------------------------------------------------------


def nearest_rank(sorted_values: Sequence[int], pct: float) -> int:
    if not sorted_values:
        return 0
    k = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[min(len(sorted_values), int(k)) - 1]


def ms(ns: float) -> float:
    return ns / 1e6


def query(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, tuple(params)).fetchall()
    finally:
        conn.close()


# ---- phase 1: steady state --------------------------------------------------------------------------


def capture_templates(url: str, n: int, timeout_s: float) -> list[Measurement]:
    """Real http probe results against the local server, for the backlog's records."""
    spec = CheckSpec(
        id=f"{SITE}/template",
        site=SITE,
        name="template",
        type="http",
        target=url,
        interval_ms=10_000,
        timeout_ms=int(timeout_s * 1000),
    ).with_revision()
    runner = CheckRunner(spec, build_runner_prober(spec), lambda m: None)

    async def go() -> list[Measurement]:
        out = []
        for _ in range(n):
            out.append(await runner.run_once(time.time_ns()))
            await asyncio.sleep(0.001)
        return out

    found = asyncio.run(go())
    bad = [m for m in found if not m.success]
    if bad:
        raise SystemExit(f"bench: the local HTTP server failed a probe: {bad[0].error_kind}: {bad[0].detail}")
    return found


def steady_state(p: Params, workdir: Path, http: HttpServer) -> dict[str, Any]:
    d = workdir / "steady"
    d.mkdir()
    cat = d / "catalogue.yaml"
    write_catalogue(cat, p.checks, p.interval_s, p.timeout_s, f"http://127.0.0.1:{http.port}")
    db = d / "collector.db"
    collector, port = start_collector(d, cat, db)
    agent = None
    try:
        agent = start_agent(d, port, d / "agent-data")
        agent.wait_log(r"checks synchronised: \d+ running", 60, "the agent to receive its checks")
        print(f"steady: agent running {p.checks:,} checks; warming up {p.warmup:g} s", file=sys.stderr)
        time.sleep(p.warmup)
        procs = {"agent": agent.ps, "collector": collector.ps, "http": http.ps}
        others_before = (
            wait_quiet(p.quiet_wait, [*procs.values(), psutil.Process()]) if p.quiet_wait else -1.0
        )
        profiler = Profiler(p.profile, "agent-steady", agent.popen.pid, p.seconds)
        t0_ns = time.time_ns()
        meter = Meter(procs).start()
        time.sleep(p.seconds)
        usage = meter.stop()
        t1_ns = time.time_ns()
        profiler.stop()
        name_threads(usage)
        if p.profile:
            print(profiler.summary(), file=sys.stderr)
        hwm = vm_hwm_bytes(agent.popen.pid)
        # Results scheduled before t1 may finish up to the timeout later; wait until a later one is stored
        # (records are pushed in seq order, so everything appended before it is stored too).
        settle_ns = t1_ns + int((p.timeout_s + 1.0) * NS_PER_S)
        deadline = time.monotonic() + p.timeout_s + 60
        while (query(db, "SELECT max(started_ns) FROM results")[0][0] or 0) < settle_ns:
            if time.monotonic() > deadline:
                raise SystemExit("bench: results stopped arriving at the collector")
            time.sleep(0.5)
        print(f"steady: measured {p.seconds:g} s; agent CPU {usage['agent'].cpu_pct:.1f} %", file=sys.stderr)
    finally:
        if agent is not None:
            agent.stop()
        collector.stop()
    return {
        **analyse_steady(db, t0_ns, t1_ns, p),
        "usage": usage,
        "agent_vm_hwm": hwm,
        "others_cores": meter.others_cores,
        "others_cores_before": others_before,
        "load_avg": meter.load_avg,
    }


def analyse_steady(db: Path, t0_ns: int, t1_ns: int, p: Params) -> dict[str, Any]:
    checks = query(
        db, "SELECT c.id, c.key, v.interval_ms FROM checks c JOIN check_versions v ON v.check_id = c.id"
    )
    expected = 0
    for _id, key, interval_ms in checks:
        interval_ns = int(interval_ms) * 1_000_000
        expected += len(slots_in(t0_ns, t1_ns, interval_ns, offset_ns(key, interval_ns)))
    rows = query(
        db,
        "SELECT check_id, scheduled_ns, started_ns - scheduled_ns, ok, duration_ns, error_kind FROM results"
        " WHERE scheduled_ns >= ? AND scheduled_ns < ?",
        (t0_ns, t1_ns),
    )
    slots = {(r[0], r[1]) for r in rows}
    lateness = sorted(int(r[2]) for r in rows)
    durations = sorted(int(r[4]) for r in rows if r[3])
    failures = Counter(str(r[5]) for r in rows if not r[3])
    return {
        "window_s": (t1_ns - t0_ns) / 1e9,
        "window_ns": [t0_ns, t1_ns],
        "results": len(rows),
        "distinct_slots": len(slots),
        "expected_slots": expected,
        "nominal_slots": round(p.checks / p.interval_s * (t1_ns - t0_ns) / 1e9),
        "failures": dict(failures),
        "lateness_ms": {
            "p50": ms(nearest_rank(lateness, 50)),
            "p90": ms(nearest_rank(lateness, 90)),
            "p99": ms(nearest_rank(lateness, 99)),
            "p99.9": ms(nearest_rank(lateness, 99.9)),
            "max": ms(lateness[-1]) if lateness else 0.0,
            "min": ms(lateness[0]) if lateness else 0.0,
            "over_10ms": sum(1 for x in lateness if x > 10_000_000),
        },
        "duration_ms": {"p50": ms(nearest_rank(durations, 50)), "p99": ms(nearest_rank(durations, 99))},
    }


# ---- phase 2: drain ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BacklogPlan:
    """What the n-th spooled result is: the checks in schedule order, round after round."""

    keys: tuple[str, ...]
    revisions: tuple[str, ...]
    offsets: tuple[int, ...]
    interval_ns: int
    first_slot: int
    templates: tuple[Measurement, ...]
    clock_offset_ns: int


def backlog_measurement(plan: BacklogPlan, seq: int) -> Measurement:
    n = seq - 1
    r, j = divmod(n, len(plan.keys))
    scheduled = plan.offsets[j] + (plan.first_slot + r) * plan.interval_ns
    template = plan.templates[(n * 7 + r) % len(plan.templates)]
    lateness = 40_000 + (n * 104_729) % 900_000  # 0.04 .. 0.94 ms, as measured at this rate
    return replace(
        template,
        check_id=plan.keys[j],
        check_revision=plan.revisions[j],
        scheduled_ns=scheduled,
        started_ns=scheduled + lateness,
        clock_offset_ns=plan.clock_offset_ns,
        clock_synced=True,
    )


SpoolRow = tuple[int, int, int, str, int, bytes]
SEAL_EVERY = SpoolLimits().seal_every  # results per link, as the agent seals a busy spool


def spool_row(plan: BacklogPlan, index: int, seq: int) -> SpoolRow:
    """The row ``Spool`` commits for the index-th result at ``seq`` (``agent/spool.py``: ``INSERT INTO records``)."""
    m = backlog_measurement(plan, index)
    return (seq, seq, m.scheduled_ns, m.check_id, KIND_RESULT, encode_record(seq, m))


@dataclass(frozen=True)
class BulkSpan:
    """Results ``first_index`` .. ``end_index - 1``, the first at ``first_seq``; with ``sealed``, a seal
    follows every ``SEAL_EVERY`` results (and the last), each taking the next seq."""

    first_index: int
    end_index: int
    first_seq: int
    sealed: bool


@dataclass(frozen=True)
class OpenLink:
    """A link's results, to be sealed in order by the main process (the seal needs the previous head)."""

    first_seq: int
    last_seq: int
    digest: bytes
    count: int


_worker_plan: list[BacklogPlan] = []


def _init_worker(plan: BacklogPlan) -> None:
    _worker_plan[:] = [plan]


def _build_rows(span: BulkSpan) -> tuple[list[SpoolRow], list[OpenLink]]:
    plan = _worker_plan[0]
    rows: list[SpoolRow] = []
    links: list[OpenLink] = []
    seq = span.first_seq
    index = span.first_index
    while index < span.end_index:
        group_end = min(index + SEAL_EVERY, span.end_index) if span.sealed else span.end_index
        digest = chain.Digest()
        first = seq
        for i in range(index, group_end):
            row = spool_row(plan, i, seq)
            rows.append(row)
            digest.add(row[5])
            seq += 1
        if span.sealed:
            links.append(OpenLink(first, seq - 1, digest.value(), digest.count))
            seq += 1  # the seal's own seq
        index = group_end
    return rows, links


def make_plan(catalogue: Path, backlog: int, templates: Sequence[Measurement]) -> BacklogPlan:
    specs = sorted(
        load_catalogue(catalogue).all_checks(), key=lambda s: offset_ns(s.id, s.interval_ms * 1_000_000)
    )
    interval_ns = specs[0].interval_ms * 1_000_000
    rounds = -(-backlog // len(specs))
    # The last round lies two intervals in the past: an outage of rounds × interval just ended.
    first_slot = slot_index(time.time_ns(), interval_ns, 0) - 2 - rounds
    return BacklogPlan(
        keys=tuple(s.id for s in specs),
        revisions=tuple(s.revision for s in specs),
        offsets=tuple(offset_ns(s.id, interval_ns) for s in specs),
        interval_ns=interval_ns,
        first_slot=first_slot,
        templates=tuple(templates),
        clock_offset_ns=-183_000,
    )


def build_spool(
    path: Path, plan: BacklogPlan, backlog: int, api_records: int, workers: int, sealed: bool
) -> dict[str, Any]:
    """Spool ``backlog`` results: the first ``api_records`` through Spool, the rest as the same rows in bulk.

    ``sealed``: signed with the key in the data directory (``signing.key``, the one the agent then
    loads), a seal after every ``SEAL_EVERY`` results, as a running agent's spool holds a backlog.
    Without it the spool is one written before sealing: the agent delivers it unsealed.
    """
    api_records = min(api_records, backlog)
    key = chain.load_or_create_key(path.parent / SIGNING_KEY) if sealed else None

    async def through_api() -> float:
        spool = Spool(path, SpoolLimits(seal_every=SEAL_EVERY, seal_interval_s=3600.0), signing_key=key)
        await spool.open()
        t = time.perf_counter()
        for index in range(1, api_records + 1):
            spool.append(backlog_measurement(plan, index))
        await spool.flush()
        elapsed = time.perf_counter() - t
        await spool.close()
        return elapsed

    api_s = asyncio.run(through_api())
    conn = sqlite3.connect(str(path), isolation_level=None)
    stored = conn.execute("SELECT * FROM records WHERE kind = ? ORDER BY seq", (KIND_RESULT,)).fetchall()
    expected = [spool_row(plan, i, int(row[0])) for i, row in enumerate(stored, 1)]
    if len(stored) != api_records or [tuple(r) for r in stored] != expected:
        raise SystemExit("bench: the bulk row builder differs from what agent.spool.Spool writes")
    epoch = int(dict(conn.execute("SELECT key, value FROM meta").fetchall())["epoch"])
    next_seq = int(conn.execute("SELECT max(seq) FROM records").fetchone()[0] or 0) + 1
    head = chain.GENESIS
    if key is not None:
        head_row = conn.execute("SELECT head, sealed FROM chain WHERE id = 1").fetchone()
        head = bytes(head_row[0])
        if int(head_row[1]) != next_seq - 1:
            raise SystemExit("bench: Spool left records unsealed after flush")
    t = time.perf_counter()
    chunk = SEAL_EVERY * 40
    spans = []
    for lo in range(api_records + 1, backlog + 1, chunk):
        hi = min(lo + chunk, backlog + 1)
        spans.append(BulkSpan(lo, hi, next_seq, sealed))
        next_seq += (hi - lo) + (-(-(hi - lo) // SEAL_EVERY) if sealed else 0)
    conn.execute("PRAGMA synchronous=OFF")  # bulk set-up only; the agent opens it with its own pragmas
    seals = 0

    def insert(built: tuple[list[SpoolRow], list[OpenLink]]) -> None:
        nonlocal head, seals
        rows, links = built
        for link in links:
            assert key is not None
            now = time.time_ns()
            seal = chain.make_seal(
                key,
                epoch=epoch,
                first_seq=link.first_seq,
                last_seq=link.last_seq,
                prev=head,
                digest=link.digest,
                count=link.count,
                sealed_ns=now,
            )
            seal_seq = link.last_seq + 1
            head = chain.parse_link(seal_seq, seal).head
            rows.append((seal_seq, seal_seq, now, "", KIND_SEAL, chain.seal_record(seal_seq, seal)))
        seals += len(links)
        rows.sort()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
        if key is not None and links:
            conn.execute("UPDATE chain SET head = ?, sealed = ? WHERE id = 1", (head, rows[-1][0]))
        conn.execute("COMMIT")

    if workers > 1 and spans:
        with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (plan,)) as pool:
            for built in pool.imap(_build_rows, spans):
                insert(built)
    else:
        _init_worker(plan)
        for span in spans:
            insert(_build_rows(span))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    count, data_bytes = conn.execute(
        "SELECT count(*), sum(length(data)) FROM records WHERE kind = ?", (KIND_RESULT,)
    ).fetchone()
    last_seq = int(conn.execute("SELECT max(seq) FROM records").fetchone()[0])
    all_seals = int(conn.execute("SELECT count(*) FROM records WHERE kind = ?", (KIND_SEAL,)).fetchone()[0])
    conn.close()
    if count != backlog or last_seq != next_seq - 1:
        raise SystemExit(f"bench: spool holds {count} results up to seq {last_seq}, expected {backlog}")
    return {
        "records": backlog,
        "last_seq": last_seq,
        "seals": all_seals,
        "sealed": sealed,
        "epoch": epoch,
        "api_records": api_records,
        "api_appends_per_s": api_records / api_s if api_s else 0.0,
        "bulk_s": time.perf_counter() - t,
        "file_bytes": path.stat().st_size,
        "record_bytes_mean": data_bytes / count,
        "outage_s": -(-backlog // len(plan.keys)) * plan.interval_ns / 1e9,
    }


class RealCollector:
    """``slaprobe collector serve`` on a fresh database; progress is ``streams.acked_seq`` (after commit)."""

    name = "collector"

    def __init__(self, d: Path, catalogue: Path) -> None:
        self.db = d / "collector.db"
        self.proc, self.port = start_collector(d, catalogue, self.db)
        self.ps = self.proc.ps

    def acked(self) -> int:
        row = query(self.db, "SELECT max(acked_seq) FROM streams")
        return int(row[0][0] or 0) if row else 0

    def stop(self) -> None:
        self.proc.stop()


async def _serve_null(checks: list[CheckSpec], acked: Any, conn: Connection) -> None:
    from collector.wire import check_to_pb
    from protos import slaprobe_v1_pb2 as pb
    from protos import slaprobe_v1_pb2_grpc as pb_grpc

    class Null(pb_grpc.CollectorServicer):  # type: ignore[misc]
        async def Register(self, request: Any, context: Any) -> Any:
            now = time.time_ns()
            return pb.RegisterResponse(
                collector_receive_ns=now, collector_transmit_ns=now, acked_seq=0, collector_version="null"
            )

        async def WatchChecks(self, request: Any, context: Any) -> Any:
            yield pb.CheckChanges(snapshot=True, upserts=[check_to_pb(c) for c in checks])
            await asyncio.Event().wait()

        async def Heartbeat(self, request: Any, context: Any) -> Any:
            now = time.time_ns()
            return pb.HeartbeatResponse(collector_receive_ns=now, collector_transmit_ns=now)

        async def PushRecords(self, request_iterator: Any, context: Any) -> Any:
            async for batch in request_iterator:
                acked.value = batch.last_seq
                yield pb.BatchAck(epoch=batch.epoch, acked_seq=batch.last_seq)

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    pb_grpc.add_CollectorServicer_to_server(Null(), server)
    conn.send(server.add_insecure_port("127.0.0.1:0"))
    conn.close()
    await server.start()
    await server.wait_for_termination()


def null_collector_main(checks: list[CheckSpec], acked: Any, conn: Connection) -> None:
    """Entry point of the null collector's own process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve_null(checks, acked, conn))


class NullCollector:
    """A collector that stores nothing and acknowledges every batch at once: the agent's own ceiling."""

    name = "null collector"

    def __init__(self, catalogue: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._acked = ctx.Value("q", 0)
        parent, child = ctx.Pipe(duplex=False)
        checks = load_catalogue(catalogue).all_checks()
        self.process = ctx.Process(
            target=null_collector_main,
            args=(checks, self._acked, child),
            name="bench-null-collector",
            daemon=True,
        )
        self.process.start()
        child.close()
        if not parent.poll(60):
            raise SystemExit("bench: the null collector did not start")
        self.port = int(parent.recv())
        assert self.process.pid is not None
        self.ps = psutil.Process(self.process.pid)

    def acked(self) -> int:
        return int(self._acked.value)

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)


def drain(p: Params, workdir: Path, templates: Sequence[Measurement]) -> dict[str, Any]:
    d = workdir / "drain"
    d.mkdir()
    cat = d / "catalogue.yaml"
    closed = free_port()  # nothing listens there: the agent's new probes are refused at once
    write_catalogue(cat, p.checks, p.interval_s, p.timeout_s, f"http://127.0.0.1:{closed}")
    plan = make_plan(cat, p.backlog, templates)
    data_dir = d / "agent-data"
    data_dir.mkdir()
    t = time.perf_counter()
    spool = build_spool(data_dir / "spool.db", plan, p.backlog, p.api_records, p.build_workers, p.sealed)
    spool["build_s"] = time.perf_counter() - t
    print(
        f"drain: spooled {p.backlog:,} results ({spool['file_bytes'] / MIB:.0f} MiB) in {spool['build_s']:.1f} s",
        file=sys.stderr,
    )
    null_data = d / "agent-data-null"
    if p.null_drain:
        null_data.mkdir()
        shutil.copyfile(data_dir / "spool.db", null_data / "spool.db")
        if (data_dir / SIGNING_KEY).exists():
            shutil.copyfile(data_dir / SIGNING_KEY, null_data / SIGNING_KEY)
    real = drain_once(p, d / "real", data_dir, spool, lambda: RealCollector(d / "real", cat))
    out: dict[str, Any] = {"spool": spool, **real}
    if real["complete"]:
        collector_db = d / "real" / "collector.db"
        out["stored"] = query(
            collector_db,
            "SELECT count(*) FROM results WHERE epoch = ? AND seq <= ?",
            (spool["epoch"], spool["last_seq"]),
        )[0][0]
        out["rejected"] = query(collector_db, "SELECT count(*) FROM rejections")[0][0]
        out["gaps"] = query(collector_db, "SELECT count(*) FROM gaps")[0][0]
    if p.null_drain:
        out["null"] = drain_once(p, d / "null", null_data, spool, lambda: NullCollector(cat))
    return out


def drain_once(
    p: Params,
    d: Path,
    data_dir: Path,
    spool: dict[str, Any],
    make: Callable[[], RealCollector | NullCollector],
) -> dict[str, Any]:
    """Start a collector and an agent on a spooled backlog; time registration → last backlog seq acked.

    Progress is in seqs (seals take seqs too); results/s counts results only.
    """
    d.mkdir()
    target = int(spool["last_seq"])
    others_before = wait_quiet(p.quiet_wait, [psutil.Process()]) if p.quiet_wait else -1.0
    collector = make()
    agent = None
    profiler = None
    try:
        start_ns = time.time_ns()
        agent = start_agent(d, collector.port, data_dir)
        reg = agent.wait_log(
            r"registered with collector .*; (\d+) records to send", 120, "the agent to register"
        )
        reg_ns = log_time_ns(reg, agent.log())
        to_send = int(reg.group(1))
        procs = {"agent": agent.ps, "collector": collector.ps}
        tag = "null" if isinstance(collector, NullCollector) else "real"
        profiler = Profiler(p.profile, f"agent-drain-{tag}", agent.popen.pid, p.drain_timeout)
        meter = Meter(procs, every_s=0.25).start()
        meter_start_ns = time.time_ns()
        progress: list[tuple[float, int]] = []
        deadline = time.monotonic() + p.drain_timeout
        acked = 0
        while acked < target and time.monotonic() < deadline:
            acked = collector.acked()
            progress.append(((time.time_ns() - reg_ns) / 1e9, acked))
            if acked < target:
                time.sleep(0.05)
        done_ns = time.time_ns()
        usage = meter.stop()
        profiler.stop()
        name_threads(usage)
        if p.profile:
            print(profiler.summary(), file=sys.stderr)
        hwm = vm_hwm_bytes(agent.popen.pid)
    finally:
        if profiler is not None:
            profiler.stop()
        if agent is not None:
            agent.stop()
        collector.stop()
    wall_s = (done_ns - reg_ns) / 1e9
    drained = min(acked, target) * p.backlog // target
    result = {
        "against": collector.name,
        "complete": acked >= target,
        "records_to_send_at_registration": to_send,
        "drained": drained,
        "wall_s": wall_s,
        "results_per_s": drained / wall_s if wall_s > 0 else 0.0,
        "agent_start_to_registration_s": (reg_ns - start_ns) / 1e9,
        "meter_lag_s": (meter_start_ns - reg_ns) / 1e9,
        "progress": deciles(progress, target),
        "usage": usage,
        "agent_vm_hwm": hwm,
        "others_cores": meter.others_cores,
        "others_cores_before": others_before,
        "load_avg": meter.load_avg,
    }
    print(
        f"drain against the {collector.name}: {drained:,} in {wall_s:.1f} s = {result['results_per_s']:,.0f}/s",
        file=sys.stderr,
    )
    return result


def deciles(progress: Sequence[tuple[float, int]], total: int) -> list[dict[str, float]]:
    """Results/s over each tenth of the backlog (from the polled acknowledgements; tenths acknowledged
    between two polls are merged)."""
    out = []
    prev_t, prev_n = 0.0, 0
    for k in range(1, 11):
        goal = total * k // 10
        hit = next(((t, n) for t, n in progress if n >= goal), None)
        if hit is None:
            break
        t, n = hit
        if t > prev_t:
            out.append({"upto": float(n), "at_s": t, "per_s": (n - prev_n) / (t - prev_t)})
            prev_t, prev_n = t, n
    return out


# ---- the run -------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import google.protobuf
    from google.protobuf.internal import api_implementation

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "grpcio": grpc.__version__,
        "protobuf": f"{google.protobuf.__version__} {api_implementation.Type()}",
        "kernel": platform.release(),
    }


@contextlib.contextmanager
def work_directory(p: Params) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="slaprobe-bench-agent-", dir=p.workdir))
    try:
        yield base
    finally:
        if p.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def run(p: Params) -> dict[str, Any]:
    started = datetime.now(UTC)
    t = time.perf_counter()
    with work_directory(p) as workdir:
        http = HttpServer(workdir, p.http_server)
        try:
            templates = capture_templates(f"http://127.0.0.1:{http.port}/template", 200, p.timeout_s)
            steady = steady_state(p, workdir, http) if p.steady else None
        finally:
            http.stop()
        drained = drain(p, workdir, templates) if p.drain else None
    targets: dict[str, dict[str, Any]] = {}
    if steady:
        targets["p99 start lateness"] = {
            "target": f"< {TARGET_P99_LATENESS_MS:g} ms",
            "value": f"{steady['lateness_ms']['p99']:.2f} ms",
            "met": steady["lateness_ms"]["p99"] < TARGET_P99_LATENESS_MS,
        }
        peak = steady["usage"]["agent"].rss_peak
        targets["agent RSS"] = {
            "target": "< 100 MB",
            "value": f"{peak / 1e6:.1f} MB peak",
            "met": peak < TARGET_RSS_BYTES,
        }
    if drained:
        targets["drain"] = {
            "target": f"≥ {TARGET_DRAIN_PER_S:,.0f} results/s",
            "value": f"{drained['results_per_s']:,.0f} results/s",
            "met": drained["complete"] and drained["results_per_s"] >= TARGET_DRAIN_PER_S,
        }
        peak = drained["usage"]["agent"].rss_peak
        targets["agent RSS while draining"] = {
            "target": "< 100 MB",
            "value": f"{peak / 1e6:.1f} MB peak",
            "met": peak < TARGET_RSS_BYTES,
        }
    disturbed = [
        name
        for name, phase in (
            ("steady", steady),
            ("drain", drained),
            ("null drain", (drained or {}).get("null")),
        )
        if phase and phase["others_cores"] > QUIET_CORES
    ]
    return {
        "benchmark": "agent",
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "run_s": time.perf_counter() - t,
        "machine": machine(),
        "http_server": f"{http.kind} {http.version}".strip(),
        "params": {k: v for k, v in asdict(p).items() if k not in ("workdir", "keep", "markdown", "profile")},
        "template": asdict(templates[0]),
        "steady": steady,
        "drain": drained,
        "targets": targets,
        "disturbed": disturbed,
    }


# ---- output ----------------------------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def threads_text(u: Usage) -> str:
    return ", ".join(
        f"{t['name']} {100 * t['cpu_s'] / u.wall_s:.1f} %"
        for t in u.threads[:4]
        if t["cpu_s"] > 0.005 * u.wall_s
    )


def others_text(phase: dict[str, Any]) -> str:
    flag = "  ← figures disturbed" if phase["others_cores"] > QUIET_CORES else ""
    return (
        f"other processes used {phase['others_cores']:.2f} cores (load average {phase['load_avg']:.2f}){flag}"
    )


def drain_text(x: dict[str, Any]) -> str:
    return (
        f"{'' if x['complete'] else 'INCOMPLETE: '}{x['drained']:,} in {x['wall_s']:.1f} s ="
        f" {x['results_per_s']:,.0f} results/s"
    )


def human(r: dict[str, Any]) -> str:
    p = r["params"]
    lines = [f"agent benchmark, {r['date']}; HTTP server: {r['http_server']}; run took {r['run_s']:.0f} s"]
    s = r["steady"]
    if s:
        a, c, h = s["usage"]["agent"], s["usage"]["collector"], s["usage"]["http"]
        lat = s["lateness_ms"]
        lines += [
            f"steady: {p['checks']:,} http checks every {p['interval_s']:g} s, measured {s['window_s']:.0f} s;"
            f" {others_text(s)}",
            f"  results {s['results']:,} in {s['distinct_slots']:,} slots of {s['expected_slots']:,} due"
            f" (nominal {s['nominal_slots']:,}); failures {s['failures'] or 'none'}",
            f"  start lateness p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f}, p99 {lat['p99']:.2f},"
            f" p99.9 {lat['p99.9']:.2f}, max {lat['max']:.2f} ms ({lat['over_10ms']} over 10 ms)",
            f"  probe duration p50 {s['duration_ms']['p50']:.2f} ms, p99 {s['duration_ms']['p99']:.2f} ms",
            f"  agent      CPU {a.cpu_pct:.1f} % of a core ({1e6 * a.cpu_s / max(1, s['results']):.0f} µs per"
            f" result); RSS peak {mib(a.rss_peak)}, mean {mib(a.rss_mean)}, VmHWM {mib(s['agent_vm_hwm'])}",
            f"             threads: {threads_text(a)}",
            f"  collector  CPU {c.cpu_pct:.1f} %; RSS peak {mib(c.rss_peak)}",
            f"  http       CPU {h.cpu_pct:.1f} % ({r['http_server']})",
        ]
    d = r["drain"]
    if d:
        a, c = d["usage"]["agent"], d["usage"]["collector"]
        sp = d["spool"]
        lines += [
            f"drain: {sp['records']:,} spooled results, {seals_text(sp)} ({sp['file_bytes'] / MIB:.0f} MiB,"
            f" {sp['record_bytes_mean']:.0f} B per record, an outage of {sp['outage_s'] / 3600:.1f} h);"
            f" built in {sp['build_s']:.1f} s (Spool.append {sp['api_appends_per_s']:,.0f}/s)",
            f"  collector: {drain_text(d)} (registration → acked_seq ≥ {sp['last_seq']:,});"
            f" agent start → registration {d['agent_start_to_registration_s']:.1f} s; {others_text(d)}",
            "  per tenth: " + ", ".join(f"{x['per_s']:,.0f}" for x in d["progress"]) + " results/s",
            f"  agent      CPU {a.cpu_pct:.1f} %; RSS peak {mib(a.rss_peak)}, mean {mib(a.rss_mean)},"
            f" VmHWM {mib(d['agent_vm_hwm'])}",
            f"             threads: {threads_text(a)}",
            f"  collector  CPU {c.cpu_pct:.1f} %; RSS peak {mib(c.rss_peak)}, mean {mib(c.rss_mean)}",
            f"             threads: {threads_text(c)}",
            f"  verify     stored {d.get('stored', 0):,} of the backlog, rejected {d.get('rejected', '?')},"
            f" gaps {d.get('gaps', '?')}",
        ]
        n = d.get("null")
        if n:
            a = n["usage"]["agent"]
            lines += [
                f"  null collector (acks at once, stores nothing: the agent's own ceiling): {drain_text(n)};"
                f" {others_text(n)}",
                "    per tenth: " + ", ".join(f"{x['per_s']:,.0f}" for x in n["progress"]) + " results/s",
                f"    agent CPU {a.cpu_pct:.1f} %; RSS peak {mib(a.rss_peak)}; threads: {threads_text(a)}",
            ]
    lines.append(
        "targets: "
        + "; ".join(
            f"{k} {t['target']}: {t['value']} {'met' if t['met'] else 'NOT MET'}"
            for k, t in r["targets"].items()
        )
    )
    return "\n".join(lines)


RESULTS_HEADER = """# Benchmark results

Figures from the benchmarks in `bench/`, newest last. Each section is one run: the benchmark, the date,
the machine (CPU model, cores, Python, SQLite, grpcio), the parameters and the figures. Runs on a
shared 2-vCPU VM vary by about ±20%; compare runs on the same machine only. Sections are appended by
`--markdown`; notes between them are written by hand.
"""


def seals_text(sp: dict[str, Any]) -> str:
    if not sp.get("sealed"):
        return "unsealed (a spool written before sealing)"
    return f"sealed: {sp['seals']:,} signed links of up to {SEAL_EVERY} results"


def markdown(r: dict[str, Any]) -> str:
    m, p = r["machine"], r["params"]
    out = [
        f"## agent: {r['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; Python {m['python']}, SQLite {m['sqlite']},"
        f" grpcio {m['grpcio']}, protobuf {m['protobuf']}.",
        f"Parameters: {p['checks']:,} http checks at {p['interval_s']:g} s (timeout {p['timeout_s']:g} s) on one"
        f" site against a local HTTP server ({r['http_server']}, its own process); warm-up {p['warmup']:g} s,"
        f" measured {p['seconds']:g} s; backlog {p['backlog']:,} results. Agent, collector and HTTP server"
        f" share the machine. `bench/agent.py`, {r['run_s']:.0f} s.",
        "",
        "| figure | value |",
        "|---|---:|",
    ]
    s = r["steady"]
    if s:
        a, c, h = s["usage"]["agent"], s["usage"]["collector"], s["usage"]["http"]
        lat = s["lateness_ms"]
        out += [
            f"| steady: results / slots due in the window (nominal 100/s × s) | {s['results']:,} /"
            f" {s['expected_slots']:,} ({s['nominal_slots']:,}); failures: {s['failures'] or 'none'} |",
            f"| steady: start lateness p50 / p90 / p99 | {lat['p50']:.2f} / {lat['p90']:.2f} /"
            f" **{lat['p99']:.2f} ms** |",
            f"| steady: start lateness p99.9 / max; results later than 10 ms | {lat['p99.9']:.2f} /"
            f" {lat['max']:.2f} ms; {lat['over_10ms']} |",
            f"| steady: probe duration p50 / p99 | {s['duration_ms']['p50']:.2f} / {s['duration_ms']['p99']:.2f} ms |",
            f"| steady: agent CPU | **{a.cpu_pct:.1f} %** of a core ({1e6 * a.cpu_s / max(1, s['results']):.0f} µs"
            " per result) |",
            f"| steady: agent CPU by thread | {threads_text(a)} |",
            f"| steady: agent RSS peak / mean (sampled 2/s); VmHWM | **{mib(a.rss_peak)}** / {mib(a.rss_mean)};"
            f" {mib(s['agent_vm_hwm'])} |",
            f"| steady: collector CPU; RSS peak | {c.cpu_pct:.1f} %; {mib(c.rss_peak)} |",
            f"| steady: HTTP server CPU | {h.cpu_pct:.1f} % |",
            f"| steady: other processes on the machine | {others_text(s)} |",
        ]
    d = r["drain"]
    if d:
        a, c = d["usage"]["agent"], d["usage"]["collector"]
        sp = d["spool"]
        out += [
            f"| drain: spool | {sp['records']:,} results, {seals_text(sp)}, {sp['file_bytes'] / MIB:.0f} MiB"
            f" ({sp['record_bytes_mean']:.0f} B per encoded record), an outage of {sp['outage_s'] / 3600:.1f} h |",
            f"| drain: registration → last backlog seq acknowledged by the collector | {d['wall_s']:.1f} s ="
            f" **{d['results_per_s']:,.0f} results/s**{'' if d['complete'] else ' (INCOMPLETE)'} |",
            "| drain: results/s per tenth of the backlog | "
            + ", ".join(f"{x['per_s']:,.0f}" for x in d["progress"])
            + " |",
            f"| drain: agent start → registration | {d['agent_start_to_registration_s']:.1f} s |",
            f"| drain: agent CPU; RSS peak / mean; VmHWM | {a.cpu_pct:.1f} %; **{mib(a.rss_peak)}** /"
            f" {mib(a.rss_mean)}; {mib(d['agent_vm_hwm'])} |",
            f"| drain: agent CPU by thread | {threads_text(a)} |",
            f"| drain: collector CPU; RSS peak / mean | {c.cpu_pct:.1f} %; {mib(c.rss_peak)} / {mib(c.rss_mean)} |",
            f"| drain: collector CPU by thread | {threads_text(c)} |",
            f"| drain: verified stored / rejected / gaps | {d.get('stored', 0):,} / {d.get('rejected', '?')} /"
            f" {d.get('gaps', '?')} |",
            f"| drain: other processes on the machine | {others_text(d)} |",
        ]
        n = d.get("null")
        if n:
            a = n["usage"]["agent"]
            out += [
                f"| drain against a null collector (acks at once, stores nothing): the agent's own ceiling |"
                f" {n['wall_s']:.1f} s = **{n['results_per_s']:,.0f} results/s**"
                f"{'' if n['complete'] else ' (INCOMPLETE)'} |",
                f"| null drain: agent CPU; RSS peak; by thread | {a.cpu_pct:.1f} %; {mib(a.rss_peak)};"
                f" {threads_text(a)} |",
                f"| null drain: other processes on the machine | {others_text(n)} |",
            ]
    out += [
        "",
        "Targets: "
        + "; ".join(
            f"{k} {t['target']}: {t['value']}, {'met' if t['met'] else '**not met**'}"
            for k, t in r["targets"].items()
        )
        + "."
        + (
            f" Figures of {', '.join(r['disturbed'])} disturbed by other processes." if r["disturbed"] else ""
        ),
        "",
    ]
    return "\n".join(out)


def append_markdown(text: str, path: Path = RESULTS_MD) -> None:
    if not path.exists():
        path.write_text(RESULTS_HEADER + "\n", encoding="utf-8")
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n" + text)


def to_json(r: dict[str, Any]) -> str:
    def default(o: object) -> object:
        if isinstance(o, Usage):
            return {**asdict(o), "cpu_pct": o.cpu_pct}
        if isinstance(o, Path):
            return str(o)
        raise TypeError(type(o).__name__)

    return json.dumps(r, default=default, separators=(",", ":"))


def parse_args(argv: Sequence[str] | None = None) -> Params:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="steady-state measurement window")
    ap.add_argument("--warmup", type=float, default=20.0, help="steady-state warm-up before measuring")
    ap.add_argument("--checks", type=int, default=1000, help="http checks in the catalogue (one site)")
    ap.add_argument("--interval", type=float, default=10.0, help="check interval, seconds")
    ap.add_argument("--timeout", type=float, default=2.0, help="check timeout, seconds")
    ap.add_argument("--backlog", type=int, default=1_000_000, help="results spooled for the drain phase")
    ap.add_argument(
        "--api-records", type=int, default=5000, help="of which written through agent.spool.Spool itself"
    )
    ap.add_argument("--http-server", choices=("auto", "nginx", "asyncio"), default="auto")
    ap.add_argument(
        "--build-workers", type=int, default=os.cpu_count() or 1, help="processes encoding the backlog"
    )
    ap.add_argument("--drain-timeout", type=float, default=600.0, help="give up draining after this, seconds")
    ap.add_argument("--no-steady", dest="steady", action="store_false", help="skip the steady-state phase")
    ap.add_argument("--no-drain", dest="drain", action="store_false", help="skip the drain phases")
    ap.add_argument(
        "--no-null-drain",
        dest="null_drain",
        action="store_false",
        help="skip draining a copy of the backlog into a null collector (the agent's own ceiling)",
    )
    ap.add_argument(
        "--unsealed",
        dest="sealed",
        action="store_false",
        help="spool the backlog unsealed (as written before agents sealed their records)",
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each measurement, wait up to this long for other processes to use < 0.15 cores",
    )
    ap.add_argument("--profile", type=Path, default=None, help="py-spy the agent in each phase into DIR")
    ap.add_argument("--workdir", type=Path, default=None, help="where the temporary directory goes")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--markdown", action="store_true", help="append a section to bench/RESULTS.md")
    a = ap.parse_args(argv)
    if a.checks < 1 or a.backlog < 1 or a.seconds <= 0 or a.timeout >= a.interval:
        ap.error("need checks, backlog ≥ 1, seconds > 0 and a timeout shorter than the interval")
    return Params(
        seconds=a.seconds,
        warmup=a.warmup,
        checks=a.checks,
        interval_s=a.interval,
        timeout_s=a.timeout,
        backlog=a.backlog,
        api_records=a.api_records,
        http_server=a.http_server,
        build_workers=max(1, a.build_workers),
        drain_timeout=a.drain_timeout,
        steady=a.steady,
        drain=a.drain,
        null_drain=a.null_drain,
        sealed=a.sealed,
        quiet_wait=a.quiet_wait,
        profile=a.profile,
        workdir=a.workdir,
        keep=a.keep,
        markdown=a.markdown,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = parse_args(argv)
    r = run(p)
    print(human(r))
    print(to_json(r))
    if p.markdown:
        append_markdown(markdown(r))
        print(f"appended to {RESULTS_MD.relative_to(ROOT)}", file=sys.stderr)
    missed = [k for k, t in r["targets"].items() if not t["met"]]
    if missed:
        print(f"targets not met: {', '.join(missed)}", file=sys.stderr)
    # Like bench/ingest.py: a missed target is a figure to report; only a broken run fails.
    return 0 if verified(r) else 1


def verified(r: dict[str, Any]) -> bool:
    s, d = r["steady"], r["drain"]
    if s and s["results"] == 0:
        return False
    return not d or (d["complete"] and d["stored"] == d["spool"]["records"] and d["rejected"] == 0)


if __name__ == "__main__":
    sys.exit(main())
