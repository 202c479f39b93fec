"""Probe benchmark: our probes against Prometheus blackbox_exporter, same local targets, same run.

One run does, in order:

1. starts the targets: our own HTTP/HTTPS server in its own process (``--role target``: asyncio
   protocols, ``Connection: close``, a path ``/d/<ms>`` answers after ``<ms>`` milliseconds: an
   event-loop timer to 3 ms before the deadline, then ``time.sleep`` for the rest, so the injected
   delay is exact to tens of microseconds; it logs, per request id, when the connection came, when
   the request was read and when the answer was written, on the shared ``CLOCK_MONOTONIC``), dnsmasq
   for DNS (``app.test`` → 127.0.0.5, UDP), and 127.0.0.1 itself for ICMP;
2. starts blackbox_exporter (Debian's ``prometheus-blackbox-exporter``) on loopback with a generated
   config (modules ``http``, ``https``, ``tcp``, ``dns``, ``icmp``) and our probes in a dedicated
   worker process (``--role worker``: one asyncio loop, probers built by ``probes.build_prober`` from
   check settings as the agent builds them, each probe run by ``agent.runner.CheckRunner.run_once``,
   a fresh connection per probe, exactly as the agent runs it). With ``--pin`` (the default on 2+
   CPUs) the probing side (the worker, blackbox_exporter, curl) runs on CPU 0 and the targets,
   dnsmasq and this driver on the others, as a real target runs on another host: a target on the
   prober's CPU is woken inside the prober's own system calls and its work counts as the prober's;
3. **error**: for each probe type (and, for HTTP, each injected delay 0 / 50 / 200 ms) ``--probes``
   probes per implementation, one at a time, ``--gap`` (50 ms) of idle time between the end of a
   probe's slot and the next (probes start every delay + 50 ms), in blocks of 50 alternating between
   the implementations so that a neighbour's load hits both alike. Reported latency is what each
   implementation reports as the probe's total duration (ours: the runner's ``duration_ns``;
   blackbox_exporter: ``probe_duration_seconds``); error = reported − injected delay. The same blocks
   give the **spaced** CPU per probe. ``curl -w`` probes the same URLs at the same rate (``--rate``)
   as a third, external measurement of the target's overshoot;
4. **ceiling**: ``--seconds`` of saturation per probe type and implementation, ``--concurrency``
   probes in flight (ours: tasks in the worker's loop; blackbox_exporter: keep-alive connections
   from this process to ``/probe``), fresh connection per probe; probes/s over the cores the
   implementation's own process used (CPU from ``/proc/<pid>/task/*/schedstat``: nanoseconds, its
   threads summed; ``/proc/<pid>/stat`` ticks as a cross-check) is the ceiling per core;
5. RSS from ``/proc/<pid>/status`` (VmRSS sampled every 0.25 s, and VmHWM); the driver's CPU (this
   process: our requests to blackbox_exporter's endpoint and the parsing of its metrics) is stated and
   excluded from blackbox_exporter's figures, which are measured on its pid; the CPU of every other
   process on the machine (from ``/proc/stat`` minus the processes we know) flags disturbed windows;
6. prints a summary and one JSON line; ``--markdown`` appends a section to ``bench/RESULTS.md``.

Targets (issue #8): error no worse than blackbox_exporter's at each delay, and probes/s per core no
lower than blackbox_exporter's, both measured in the same run.

Run: ``.venv/bin/python bench/probes.py [--probes 200] [--seconds 8] [--markdown]`` (as root: ICMP
uses raw sockets, ``net.ipv4.ping_group_range`` being closed here).
"""

# ruff: noqa: E402
# Run as a script, bench/ comes first on sys.path and bench/agent.py would shadow slaprobe's agent
# package: drop bench/ before importing the project.
from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]

import argparse
import asyncio
import contextlib
import getpass
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

ROOT = BENCH_DIR.parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
MIB = 1024 * 1024
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
QUIET_CORES = 0.15

BLACKBOX = shutil.which("prometheus-blackbox-exporter") or "/usr/bin/prometheus-blackbox-exporter"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
CURL = shutil.which("curl") or "/usr/bin/curl"

# With --pin (the default on 2+ CPUs): the probing side (our worker, blackbox_exporter, curl) runs on
# PROBER_CPUS, the targets, dnsmasq and this driver on the other CPUs. A target on the same CPU as
# its prober is woken inside the prober's own system calls and can run first: its accept and
# answer then count in the prober's connect (measured here: loopback connect 0.58 ms with the
# target on the same CPU, 0.11 ms on the other one). A real target runs on another host.
PROBER_CPUS: set[int] | None = None
OTHER_CPUS: set[int] | None = None


def pin_to(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that puts the child on ``cpus`` before it starts (its threads inherit it)."""
    if not cpus:
        return None
    chosen = set(cpus)
    return lambda: os.sched_setaffinity(0, chosen)


# Measured earlier on this machine kind (../shared/ceilings.md); the targets are the figures of the same run.
EARLIER_BLACKBOX_ERROR_MS = {"http@0": 0.78, "http@50": 1.30, "http@200": 1.60, "https@0": 3.7}
EARLIER_BLACKBOX_PER_CORE = 1150.0

HTTP_DELAYS_MS = (0, 50, 200)
IMPLS = ("slaprobe", "blackbox")

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
)


# ---- the target server (its own process) ---------------------------------------------------------


class _TargetProtocol(asyncio.Protocol):
    """One connection: read the request head, wait the delay its path asks for, answer, close."""

    log: ClassVar[list[tuple[str, float, float, float]]] = []  # (id, connected, read, answered)
    slept: ClassVar[list[float]] = []

    def __init__(self) -> None:
        self.buf = b""
        self.t_conn = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.t_conn = time.perf_counter()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.buf is None:
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 65536:
                self.transport.abort()
            return
        t_req = time.perf_counter()
        parts = self.buf.split(b"\r\n", 1)[0].split(b" ")
        path = parts[1].decode("ascii", "replace") if len(parts) > 1 else "/"
        self.buf = b""
        route, _, query = path.partition("?")
        if route == "/_timings":
            body = json.dumps({"log": _TargetProtocol.log, "slept": _TargetProtocol.slept}).encode()
            _TargetProtocol.log = []
            _TargetProtocol.slept = []
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.transport.close()
            return
        delay = 0.0
        m = re.fullmatch(r"/d/(\d+)", route)
        if m:
            delay = int(m.group(1)) / 1000.0
        rid = ""
        for item in query.split("&"):
            if item.startswith("id="):
                rid = item[3:]
        if delay <= 0:
            self._answer(t_req, t_req, rid)
            return
        deadline = t_req + delay
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + max(0.0, delay - 0.003), self._finish, t_req, deadline, rid)

    def _finish(self, t_req: float, deadline: float, rid: str) -> None:
        remaining = deadline - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)  # nanosleep: exact to tens of µs, where the event loop's timer is not
        self._answer(t_req, deadline, rid)

    def _answer(self, t_req: float, deadline: float, rid: str) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        self.transport.write(RESPONSE)
        t_resp = time.perf_counter()
        self.transport.close()
        if deadline > t_req:
            _TargetProtocol.slept.append(t_resp - deadline)
        if rid:
            _TargetProtocol.log.append((rid, self.t_conn, t_req, t_resp))

    def eof_received(self) -> bool | None:
        return None  # a TCP probe connects and closes: close our side too


async def _target_serve(cert: str, key: str) -> None:
    import ssl

    loop = asyncio.get_running_loop()
    plain = await loop.create_server(_TargetProtocol, "127.0.0.1", 0, backlog=4096)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    tls = await loop.create_server(_TargetProtocol, "127.0.0.1", 0, backlog=4096, ssl=ctx)
    ports = [s.sockets[0].getsockname()[1] for s in (plain, tls)]
    print(json.dumps({"http": ports[0], "https": ports[1]}), flush=True)
    await loop.connect_read_pipe(asyncio.Protocol, sys.stdin)  # keeps stdin open; EOF ends nothing
    await asyncio.Event().wait()


def target_main(cert: str, key: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_target_serve(cert, key))


# ---- our probes (the worker process) -----------------------------------------------------------------


async def _worker_series(cmd: dict[str, Any]) -> dict[str, Any]:
    from agent.main import build_runner_prober
    from agent.runner import CheckRunner
    from slaprobe.model import CheckSpec

    spec = CheckSpec(
        id="bench",
        site="bench",
        name="bench",
        type=cmd["type"],
        target=cmd["target"],
        interval_ms=60_000,
        timeout_ms=5000,
        settings=cmd["settings"],
    )
    # One prober per check, built once and reused, as the agent does; one probe before the clock
    # starts (the agent's first probe of a check loads its CA store, for example).
    r = CheckRunner(spec, build_runner_prober(spec), lambda m: None)
    n: int = cmd["n"]
    period: float = cmd["period"]
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    warm = await r.run_once(time.time_ns())
    await asyncio.sleep(period)
    cpu0 = time.process_time()
    start = loop.time()
    for i in range(n):
        delay = start + i * period - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        m = await r.run_once(time.time_ns())
        t1 = time.perf_counter()
        out.append(
            {
                "t0": t0,
                "t1": t1,
                "ok": m.success,
                "duration": m.duration_ns / 1e9,
                "phases": dict((k, v / 1e9) for k, v in m.phases),
                "rtt_ms": m.fields.get("rtt_avg_ms"),
                "detail": m.detail if not m.success else "",
            }
        )
    if not warm.success:
        out[0]["detail"] = f"warm-up: {warm.detail}"
    # The CPU of the idle gap after the last probe belongs to it, as it does between probes.
    end = start + n * period - loop.time()
    if end > 0:
        await asyncio.sleep(end)
    return {"probes": out, "cpu_s": time.process_time() - cpu0}


async def _worker_saturate(cmd: dict[str, Any]) -> dict[str, Any]:
    from agent.main import build_runner_prober
    from agent.runner import CheckRunner
    from slaprobe.model import CheckSpec

    spec = CheckSpec(
        id="bench",
        site="bench",
        name="bench",
        type=cmd["type"],
        target=cmd["target"],
        interval_ms=60_000,
        timeout_ms=5000,
        settings=cmd["settings"],
    )
    r = CheckRunner(spec, build_runner_prober(spec), lambda m: None)
    ok = failed = 0
    details: dict[str, int] = {}
    deadline = time.perf_counter() + cmd["seconds"]

    async def one() -> None:
        nonlocal ok, failed
        while time.perf_counter() < deadline:
            m = await r.run_once(0)
            if m.success:
                ok += 1
            else:
                failed += 1
                details[m.detail[:80]] = details.get(m.detail[:80], 0) + 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(cmd["concurrency"])))
    return {
        "ok": ok,
        "failed": failed,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - cpu0,
        "errors": details,
    }


async def _worker_loop() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # Import what a probe needs before the first measurement (the agent has it loaded too).
    import agent.main
    import agent.runner
    import probes

    del agent, probes

    print(json.dumps({"ready": os.getpid()}), flush=True)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["op"] == "series":
            reply = await _worker_series(cmd)
        elif cmd["op"] == "saturate":
            reply = await _worker_saturate(cmd)
        else:
            reply = {"error": f"unknown op {cmd['op']!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def worker_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_worker_loop())


# ---- measuring processes from /proc ----------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """CPU time of every live thread of ``pid``, in ns (schedstat: exact, unlike the 10 ms ticks of stat)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    except OSError:
        return 0
    return total


def cpu_ticks_s(pid: int) -> float:
    """utime + stime from /proc/<pid>/stat, in seconds (10 ms resolution; includes exited threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S


def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_busy_s() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, stolen seconds) from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq) * TICK_S, steal * TICK_S


class RssSampler:
    """Samples VmRSS of some pids every 0.25 s in a thread; keeps the peak per pid."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak: dict[str, int] = dict.fromkeys(pids, 0)
        self.samples: dict[str, list[int]] = {k: [] for k in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for name, pid in self.pids.items():
                kib = status_kib(pid, "VmRSS")
                if kib:
                    self.peak[name] = max(self.peak[name], kib * 1024)
                    self.samples[name].append(kib * 1024)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Window:
    """CPU of the known processes and of everything else over one measurement window."""

    def __init__(self, known: dict[str, int]) -> None:
        self.known = known
        self.t0 = time.perf_counter()
        self.ns0 = {k: cpu_ns(p) for k, p in known.items()}
        self.ticks0 = {k: cpu_ticks_s(p) for k, p in known.items()}
        self.self0 = time.process_time()
        self.busy0, self.steal0 = machine_busy_s()

    def close(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        cpu = {k: (cpu_ns(p) - self.ns0[k]) / 1e9 for k, p in self.known.items()}
        ticks = {k: cpu_ticks_s(p) - self.ticks0[k] for k, p in self.known.items()}
        me = time.process_time() - self.self0
        busy, steal = machine_busy_s()
        # Processes we started and know (ticks, like /proc/stat) and this driver are not "others".
        others = (busy - self.busy0) - sum(ticks.values()) - me
        return {
            "wall_s": wall,
            "cpu_s": cpu,
            "cpu_ticks_s": ticks,
            "driver_cpu_s": me,
            "others_cores": max(0.0, others / wall),
            "steal_cores": (steal - self.steal0) / wall,
        }


# ---- blackbox_exporter and its driver --------------------------------------------------------------------------


def blackbox_config(ca_file: str) -> str:
    return f"""modules:
  http:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
  https:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
      tls_config:
        ca_file: {ca_file}
        server_name: localhost
  tcp:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
  dns:
    prober: dns
    timeout: 5s
    dns:
      query_name: app.test
      query_type: A
      transport_protocol: udp
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
  icmp:
    prober: icmp
    timeout: 5s
    icmp:
      preferred_ip_protocol: ip4
      ip_protocol_fallback: false
"""


_METRIC = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", re.MULTILINE)


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, labels, value in _METRIC.findall(text):
        key = name + (labels or "")
        with contextlib.suppress(ValueError):
            out[key] = float(value)
    return out


class BlackboxConn:
    """One keep-alive HTTP/1.1 connection to blackbox_exporter's ``/probe`` endpoint."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def probe(self, module: str, target: str) -> tuple[dict[str, float], float, float]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        q = f"/probe?module={module}&target={target.replace('&', '%26').replace('?', '%3F')}"
        t0 = time.perf_counter()
        self.writer.write(f"GET {q} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if length:
            body = await self.reader.readexactly(int(length.group(1)))
        else:  # chunked
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            body = b"".join(parts)
        t1 = time.perf_counter()
        return parse_metrics(body.decode()), t0, t1

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


def blackbox_reading(module: str, metrics: dict[str, float]) -> dict[str, Any]:
    phases = {
        k.split('phase="')[1].rstrip('"}'): v
        for k, v in metrics.items()
        if k.startswith(("probe_http_duration_seconds{", "probe_dns_lookup_time_seconds{"))
        or (k.startswith("probe_icmp_duration_seconds{") or k.startswith("probe_dns_duration_seconds{"))
    }
    return {
        "ok": metrics.get("probe_success") == 1.0,
        "duration": metrics.get("probe_duration_seconds", math.nan),
        "phases": phases,
        "rtt_ms": phases["rtt"] * 1000 if module == "icmp" and "rtt" in phases else None,
    }


# ---- the benchmark ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    probes: int
    block: int
    gap_s: float
    seconds: float
    concurrency: int
    icmp_concurrency: int
    types: tuple[str, ...]
    quiet_wait: float
    profile: bool
    nice: int
    workdir: Path | None
    markdown: bool
    pin: bool = True


@dataclass
class Case:
    """One probe type at one injected delay, as both implementations see it."""

    name: str  # http@0, https@0, tcp, dns, icmp
    kind: str  # our probe type
    module: str  # blackbox_exporter module
    delay_ms: int
    ours_settings: dict[str, Any]
    curl: bool = False
    results: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, p: Params) -> None:
        self.p = p
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-probes-", dir=p.workdir))
        self.procs: list[subprocess.Popen[bytes]] = []

    # -- processes

    def start(self) -> None:
        import trustme

        ca = trustme.CA(key_type=trustme.KeyType.RSA)  # RSA-2048, as in ../shared/ceilings.md
        cert = ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA)
        self.ca_file = str(self.tmp / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        cert_file, key_file = str(self.tmp / "cert.pem"), str(self.tmp / "key.pem")
        cert.cert_chain_pems[0].write_to_path(cert_file)
        cert.private_key_pem.write_to_path(key_file)

        py = sys.executable
        self.target = self._spawn([py, __file__, "--role", "target", cert_file, key_file], "target")
        ports = json.loads(self._readline(self.target, 30, "target server"))
        self.http_port, self.https_port = int(ports["http"]), int(ports["https"])

        self.worker = self._spawn([py, __file__, "--role", "worker"], "worker", prober=True)
        json.loads(self._readline(self.worker, 60, "worker"))

        self.dns_port = self._start_dnsmasq()

        cfg = self.tmp / "blackbox.yml"
        cfg.write_text(blackbox_config(self.ca_file))
        self.bb_port = free_port()
        self.bb = self._spawn(
            [
                BLACKBOX,
                f"--config.file={cfg}",
                f"--web.listen-address=127.0.0.1:{self.bb_port}",
                "--log.level=warn",
            ],
            "blackbox",
            stdout_to_log=True,
            prober=True,
        )
        wait_port(self.bb_port, 10, "blackbox_exporter", self.bb)
        out = subprocess.run([BLACKBOX, "--version"], capture_output=True, text=True, check=False)
        m = re.search(r"version (\S+)", out.stdout + out.stderr)
        self.bb_version = m.group(1) if m else "?"

    def _spawn(
        self, args: list[str], name: str, stdout_to_log: bool = False, prober: bool = False
    ) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=log if stdout_to_log else subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            preexec_fn=pin_to(PROBER_CPUS if prober else None),
        )
        self.procs.append(proc)
        return proc

    def _readline(self, proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
        assert proc.stdout is not None
        box: list[bytes] = []
        t = threading.Thread(target=lambda: box.append(proc.stdout.readline() if proc.stdout else b""))
        t.start()
        t.join(timeout)
        if not box or not box[0]:
            raise SystemExit(f"bench: {what} did not answer; see {self.tmp}")
        return box[0].decode()

    def _start_dnsmasq(self) -> int:
        for _ in range(3):
            port = free_port()
            proc = self._spawn(
                [
                    DNSMASQ,
                    "--no-daemon",
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    "--listen-address=127.0.0.1",
                    f"--port={port}",
                    "--bind-interfaces",
                    f"--user={getpass.getuser()}",
                    "--local=/test/",
                    "--address=/app.test/127.0.0.5",
                    "--local-ttl=300",
                ],
                "dnsmasq",
                stdout_to_log=True,
            )
            deadline = time.monotonic() + 5
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                    self.dnsmasq = proc
                    return port
                time.sleep(0.05)
            proc.kill()
            proc.wait()
        raise SystemExit("bench: dnsmasq did not start")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def known(self) -> dict[str, int]:
        return {
            "slaprobe": self.worker.pid,
            "blackbox": self.bb.pid,
            "target": self.target.pid,
            "dnsmasq": self.dnsmasq.pid,
        }

    # -- talking to the worker

    def ask(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.worker.stdin is not None
        self.worker.stdin.write((json.dumps(cmd) + "\n").encode())
        self.worker.stdin.flush()
        reply: dict[str, Any] = json.loads(self._readline(self.worker, timeout, "worker"))
        return reply

    def target_timings(self) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self.http_port), 5) as s:
            s.sendall(b"GET /_timings HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(1 << 20):
                data += chunk
        result: dict[str, Any] = json.loads(data.partition(b"\r\n\r\n")[2])
        return result

    # -- cases

    def cases(self) -> list[Case]:
        out: list[Case] = []
        if "http" in self.p.types:
            out += [Case(f"http@{d}", "http", "http", d, {}, curl=True) for d in HTTP_DELAYS_MS]
        if "https" in self.p.types:
            out.append(Case("https@0", "http", "https", 0, {"ca_file": self.ca_file}, curl=True))
        if "tcp" in self.p.types:
            out.append(Case("tcp", "tcp", "tcp", 0, {}))
        if "dns" in self.p.types:
            out.append(Case("dns", "dns", "dns", 0, {"query_name": "app.test", "query_type": "A"}))
        if "icmp" in self.p.types:
            out.append(Case("icmp", "icmp", "icmp", 0, {"count": 1}))
        return out

    def target_for(self, case: Case, rid: str) -> str:
        if case.name.startswith("https"):
            return f"https://localhost:{self.https_port}/d/{case.delay_ms}?id={rid}"
        if case.kind == "http":
            return f"http://127.0.0.1:{self.http_port}/d/{case.delay_ms}?id={rid}"
        if case.kind == "tcp":
            return f"127.0.0.1:{self.http_port}"
        if case.kind == "dns":
            return f"127.0.0.1:{self.dns_port}"
        return "127.0.0.1"

    def ours_target(self, case: Case, rid: str) -> str:
        # The same URL: for HTTPS ``localhost``, resolved by both (getaddrinfo / Go's resolver) and
        # verified against the certificate's name by both.
        return self.target_for(case, rid)

    def period(self, case: Case) -> float:
        return case.delay_ms / 1000 + self.p.gap_s

    async def bb_series(self, case: Case, ids: list[str]) -> dict[str, Any]:
        conn = BlackboxConn(self.bb_port)
        period = self.period(case)
        out = []
        loop = asyncio.get_running_loop()
        await conn.probe(case.module, self.target_for(case, "warm"))  # open the keep-alive connection
        await asyncio.sleep(period)
        start = loop.time()
        for i, rid in enumerate(ids):
            delay = start + i * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            metrics, t0, t1 = await conn.probe(case.module, self.target_for(case, rid))
            reading = blackbox_reading(case.module, metrics)
            reading.update(t0=t0, t1=t1)
            out.append(reading)
        end = start + len(ids) * period - loop.time()
        if end > 0:
            await asyncio.sleep(end)
        await conn.close()
        return {"probes": out}

    def curl_series(self, case: Case, ids: list[str]) -> list[float]:
        urls = [self.target_for(case, rid) for rid in ids]
        rate = f"{round(60 / self.period(case))}/m"
        args = [CURL, "-s", "-H", "Connection: close", "--rate", rate, "-w", "%{time_total}\\n"]
        if case.name.startswith("https"):
            args += ["--cacert", self.ca_file]
        for u in urls:
            args += ["-o", "/dev/null", u]
        out = subprocess.run(
            args, capture_output=True, text=True, check=False, timeout=600, preexec_fn=pin_to(PROBER_CPUS)
        )
        return [float(x) for x in out.stdout.split()]

    def run_error(self, case: Case) -> None:
        """Blocks of ``block`` probes, alternating ours / blackbox_exporter / curl."""
        p = self.p
        per: dict[str, list[dict[str, Any]]] = {"slaprobe": [], "blackbox": []}
        cpu: dict[str, float] = {"slaprobe": 0.0, "blackbox": 0.0}
        wall: dict[str, float] = {"slaprobe": 0.0, "blackbox": 0.0}
        driver = 0.0
        others: list[float] = []
        curl: list[float] = []
        slept: list[float] = []
        blocks = max(1, math.ceil(p.probes / p.block))
        n = 0
        for b in range(blocks):
            size = min(p.block, p.probes - n)
            n += size
            for impl in IMPLS:
                ids = [f"{impl[0]}{b}x{i}" for i in range(size)]
                wait_quiet(p.quiet_wait, self.known())
                if impl == "slaprobe":
                    cmd = {
                        "op": "series",
                        "type": case.kind,
                        "settings": case.ours_settings,
                        "target": self.ours_target(case, "ours"),
                        "n": size,
                        "period": self.period(case),
                    }
                    w = Window(self.known())
                    reply = self.ask(cmd, 600)
                    win = w.close()
                    cpu[impl] += reply["cpu_s"]
                else:
                    w = Window(self.known())
                    reply = asyncio.run(self.bb_series(case, ids))
                    win = w.close()
                    cpu[impl] += win["cpu_s"]["blackbox"]
                    driver += win["driver_cpu_s"]
                wall[impl] += win["wall_s"]
                others.append(win["others_cores"])
                t = self.target_timings()
                slept += t["slept"]
                log = t["log"]
                if impl == "slaprobe":  # one URL for all: the last `size` requests are the probes, in order
                    mine = [e for e in log if e[0] == "ours"][-size:]
                    for probe, entry in zip(reply["probes"], mine, strict=False):
                        probe["timing"] = entry[1:]
                else:
                    by_id = {e[0]: e[1:] for e in log}
                    for rid, probe in zip(ids, reply["probes"], strict=True):
                        probe["timing"] = by_id.get(rid)
                per[impl] += reply["probes"]
            if case.curl:
                ids = [f"c{b}x{i}" for i in range(size)]
                curl += self.curl_series(case, ids)
            slept += self.target_timings()["slept"]
        case.results["error"] = {
            impl: summarize_series(per[impl], case, cpu[impl], wall[impl]) for impl in IMPLS
        }
        case.results["error"]["driver_cpu_us_per_probe"] = 1e6 * driver / max(1, len(per["blackbox"]))
        case.results["error"]["others_cores_max"] = max(others)
        if curl:
            errs = [1000 * (x - case.delay_ms / 1000) for x in curl]
            case.results["curl"] = stats(errs)
        if slept:
            case.results["target_overshoot"] = stats([1000 * x for x in slept])

    def run_saturation(self, case: Case) -> None:
        conc = self.p.icmp_concurrency if case.kind == "icmp" else self.p.concurrency
        res: dict[str, Any] = {"concurrency": conc}
        for impl in IMPLS:
            wait_quiet(self.p.quiet_wait, self.known())
            if impl == "slaprobe":
                cmd = {
                    "op": "saturate",
                    "type": case.kind,
                    "settings": case.ours_settings,
                    "target": self.ours_target(case, "sat").split("?")[0],
                    "seconds": self.p.seconds,
                    "concurrency": conc,
                }
                w = Window(self.known())
                reply = self.ask(cmd, self.p.seconds + 60)
                win = w.close()
                res[impl] = {**reply, "window": win, "proc_cpu_s": win["cpu_s"]["slaprobe"]}
            else:
                w = Window(self.known())
                reply = asyncio.run(self.bb_saturate(case, conc))
                win = w.close()
                reply["cpu_s"] = win["cpu_s"]["blackbox"]
                res[impl] = {**reply, "window": win, "driver_cpu_s": win["driver_cpu_s"]}
            r = res[impl]
            r["per_s"] = r["ok"] / r["wall_s"]
            r["cores"] = r["cpu_s"] / r["wall_s"]
            r["per_core"] = r["ok"] / r["cpu_s"] if r["cpu_s"] > 0 else 0.0
            r["cpu_us"] = 1e6 * r["cpu_s"] / max(1, r["ok"] + r["failed"])
            r["target_cores"] = win["cpu_s"]["target"] / win["wall_s"]
            r["others_cores"] = win["others_cores"]
        case.results["saturation"] = res
        self.target_timings()  # clears nothing much: saturation sends no ids

    async def bb_saturate(self, case: Case, conc: int) -> dict[str, Any]:
        target = self.target_for(case, "sat").split("?")[0]
        ok = failed = 0
        deadline = time.perf_counter() + self.p.seconds

        async def one() -> None:
            nonlocal ok, failed
            conn = BlackboxConn(self.bb_port)
            while time.perf_counter() < deadline:
                metrics, _, _ = await conn.probe(case.module, target)
                if metrics.get("probe_success") == 1.0:
                    ok += 1
                else:
                    failed += 1
            await conn.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(conc)))
        return {"ok": ok, "failed": failed, "wall_s": time.perf_counter() - t0}

    def run(self) -> dict[str, Any]:
        p = self.p
        load0 = os.getloadavg()
        started = datetime.now(UTC)
        cases = self.cases()
        sampler = RssSampler({"slaprobe": self.worker.pid, "blackbox": self.bb.pid})
        profile = start_profile(self.worker.pid, self.tmp) if p.profile else None
        try:
            for case in cases:
                print(f"bench: error series {case.name}", file=sys.stderr, flush=True)
                self.run_error(case)
            for case in cases:
                if case.delay_ms == 0:
                    print(f"bench: saturation {case.name}", file=sys.stderr, flush=True)
                    self.run_saturation(case)
        finally:
            sampler.stop()
        profile_text = stop_profile(profile) if profile else None
        rss = {
            impl: {
                "peak": sampler.peak[impl],
                "mean": statistics.fmean(sampler.samples[impl]) if sampler.samples[impl] else 0,
                "hwm": status_kib(pid, "VmHWM") * 1024,
            }
            for impl, pid in (("slaprobe", self.worker.pid), ("blackbox", self.bb.pid))
        }
        return {
            "bench": "probes",
            "started": started.strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "code": code_state(),
            "blackbox_version": self.bb_version,
            "params": {
                "probes": p.probes,
                "block": p.block,
                "gap_s": p.gap_s,
                "seconds": p.seconds,
                "concurrency": p.concurrency,
                "icmp_concurrency": p.icmp_concurrency,
                "nice": p.nice,
                "prober_cpus": ",".join(map(str, sorted(PROBER_CPUS))) if PROBER_CPUS else "",
                "other_cpus": ",".join(map(str, sorted(OTHER_CPUS))) if OTHER_CPUS else "",
            },
            "load_before": load0,
            "load_after": os.getloadavg(),
            "cases": {c.name: c.results for c in cases},
            "rss": rss,
            "profile": profile_text,
            "icmp_note": icmp_note(),
        }


def stats(xs: Sequence[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "p50": math.nan, "p99": math.nan}
    s = sorted(xs)
    return {
        "n": len(s),
        "mean": statistics.fmean(s),
        "sd": statistics.stdev(s) if len(s) > 1 else 0.0,
        "p50": s[len(s) // 2],
        "p99": s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)],
        "min": s[0],
    }


def summarize_series(probes: list[dict[str, Any]], case: Case, cpu_s: float, wall_s: float) -> dict[str, Any]:
    delay = case.delay_ms / 1000
    good = [x for x in probes if x["ok"]]
    errs = [1000 * (x["duration"] - delay) for x in good]
    out: dict[str, Any] = {
        "n": len(probes),
        "failed": len(probes) - len(good),
        "fail_details": sorted({x.get("detail", "") for x in probes if not x["ok"]})[:3],
        "error_ms": stats(errs),
        "cpu_us_spaced": 1e6 * cpu_s / max(1, len(probes)),
        "cores_spaced": cpu_s / wall_s if wall_s else 0.0,
    }
    # Phase sums (ms): what the implementation says the target took, by phase.
    phase_names = sorted({k for x in good for k in x["phases"]})
    out["phases_ms"] = {
        k: statistics.fmean(1000 * x["phases"].get(k, 0.0) for x in good) for k in phase_names
    }
    rtts = [x["rtt_ms"] for x in good if x.get("rtt_ms") is not None]
    if rtts:
        out["rtt_ms"] = stats(rtts)
    # Where the time goes, from the target's log on the same clock (CLOCK_MONOTONIC in both processes):
    # start of the probe → request read by the target, the target's own overshoot, answer written →
    # the caller has the result (for blackbox_exporter "start" is the driver's request to /probe).
    before, server, after, api = [], [], [], []
    for x in good:
        t = x.get("timing")
        if t is not None:
            _t_conn, t_req, t_resp = t
            server.append(1000 * (t_resp - t_req - delay))
            before.append(1000 * (t_req - x["t0"]))
            after.append(1000 * (x["t1"] - t_resp))
        api.append(1000 * (x["t1"] - x["t0"] - x["duration"]))
    if server:
        out["target_overshoot_ms"] = stats(server)
        out["start_to_request_ms"] = stats(before)
        out["answer_to_result_ms"] = stats(after)
    out["outside_reported_ms"] = stats(api)  # driver-observed time not in the reported duration
    return out


# ---- profiling, machine facts ---------------------------------------------------------------------------


def start_profile(pid: int, tmp: Path) -> tuple[subprocess.Popen[bytes], Path] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    out = tmp / "profile.txt"
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
            "--rate",
            "200",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, out


def stop_profile(handle: tuple[subprocess.Popen[bytes], Path] | None) -> str | None:
    if handle is None:
        return None
    proc, out = handle
    proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    if not out.exists():
        return None
    totals: dict[str, int] = {}
    own: dict[str, int] = {}
    all_samples = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        all_samples += n
        frames = stack.split(";")
        for f in set(frames):
            totals[f] = totals.get(f, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    top = sorted(own.items(), key=lambda kv: -kv[1])[:15]
    return "\n".join(f"{100 * n / all_samples:5.1f}% {f}" for f, n in top)


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    import dns.version

    return (
        f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}; Python {platform.python_version()},"
        f" h11 {version('h11')}, dnspython {dns.version.version}"
    )


def code_state() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=False)
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    dirty = [d for d in dirty if d.startswith(("probes/", "agent/"))]
    return f"commit {commit}" + (f", uncommitted changes in {', '.join(dirty)}" if dirty else "")


def icmp_note() -> str:
    rng = Path("/proc/sys/net/ipv4/ping_group_range").read_text().split()
    return f"net.ipv4.ping_group_range = {' '.join(rng)}; uid {os.getuid()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if proc.poll() is not None:
            raise SystemExit(f"bench: {what} exited ({proc.returncode})")
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} did not listen on {port}")


def wait_quiet(limit_s: float, known: dict[str, int]) -> float:
    """Wait up to ``limit_s`` for other processes to use less than QUIET_CORES; return their last figure."""
    deadline = time.monotonic() + limit_s
    while True:
        w = Window(known)
        time.sleep(0.5)
        others: float = w.close()["others_cores"]
        if others < QUIET_CORES or time.monotonic() >= deadline:
            return others


# ---- reporting -------------------------------------------------------------------------------------------


def targets(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, c in r["cases"].items():
        e = c.get("error")
        if e:
            ours, bb = e["slaprobe"]["error_ms"]["mean"], e["blackbox"]["error_ms"]["mean"]
            out[f"error {name}"] = {
                "target": f"≤ blackbox_exporter's {bb:.2f} ms",
                "value": f"{ours:.2f} ms",
                "met": ours <= bb,
            }
        sat = c.get("saturation")
        if sat:
            ours, bb = sat["slaprobe"]["per_core"], sat["blackbox"]["per_core"]
            out[f"probes/s per core {name.split('@')[0]}"] = {
                "target": f"≥ blackbox_exporter's {bb:,.0f}",
                "value": f"{ours:,.0f}",
                "met": ours >= bb,
            }
    return out


def fmt_err(s: dict[str, float]) -> str:
    return f"{s['mean']:.2f} ± {s['sd']:.2f} (p50 {s['p50']:.2f}, p99 {s['p99']:.2f})"


TITLES = {
    "http": "HTTP",
    "https": "HTTPS (RSA-2048, CA verified)",
    "tcp": "TCP connect",
    "dns": "DNS (UDP, A)",
    "icmp": "ICMP echo (raw socket, 1 echo)",
}


def markdown(r: dict[str, Any]) -> str:
    p = r["params"]
    out = [
        f"## probes vs blackbox_exporter: {r['started']}",
        "",
        f"Machine: {r['machine']}; blackbox_exporter {r['blackbox_version']} (Debian).",
        f"Code: {r['code']}.",
        f"Parameters: {p['probes']} probes per implementation and case for the error, in blocks of {p['block']}"
        f" alternating slaprobe / blackbox_exporter / curl, probes starting every delay + {1000 * p['gap_s']:.0f} ms"
        f" (spaced CPU); saturation {p['seconds']:.0f} s per case and implementation, {p['concurrency']} probes in"
        f" flight ({p['icmp_concurrency']} for ICMP); fresh connection per probe; targets: own asyncio server"
        " (exact delays, see `bench/probes.py`), dnsmasq, 127.0.0.1"
        + (f"; every benchmark process at niceness {p['nice']}" if p.get("nice") else "")
        + (
            f"; probers (slaprobe's worker, blackbox_exporter, curl) pinned to CPU {p['prober_cpus']},"
            f" targets, dnsmasq and the driver to CPU {p['other_cpus']}."
            if p.get("prober_cpus")
            else "; not pinned."
        ),
        f"Load average before / after: {' '.join(f'{x:.2f}' for x in r['load_before'])} /"
        f" {' '.join(f'{x:.2f}' for x in r['load_after'])}. {r['icmp_note']}.",
        "",
        "Error = reported total duration − injected delay, in ms: mean ± sd (p50, p99). slaprobe reports the"
        " runner's `duration_ns`, blackbox_exporter `probe_duration_seconds`. CPU per probe: the implementation's"
        " own process only (blackbox_exporter: its pid, our driver's requests to `/probe` excluded and stated).",
        "",
    ]
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, c in r["cases"].items():
        groups.setdefault(name.split("@")[0], []).append((name, c))
    for g, items in groups.items():
        out += [f"### {TITLES.get(g, g)}", "", "| figure | slaprobe | blackbox_exporter |", "|---|---:|---:|"]
        for name, c in items:
            e = c["error"]
            d = f" @ {name.split('@')[1]} ms" if "@" in name else ""
            out.append(
                f"| error{d} | **{fmt_err(e['slaprobe']['error_ms'])}** | **{fmt_err(e['blackbox']['error_ms'])}** |"
            )
            if e["slaprobe"].get("rtt_ms"):
                out.append(
                    f"| reported RTT{d} (ms) | {fmt_err(e['slaprobe']['rtt_ms'])} | {fmt_err(e['blackbox']['rtt_ms'])} |"
                )
            ph = " ".join(f"{k} {v:.2f}" for k, v in e["slaprobe"]["phases_ms"].items())
            phb = " ".join(f"{k} {v:.2f}" for k, v in e["blackbox"]["phases_ms"].items())
            out.append(f"| reported phases{d}, mean ms | {ph} | {phb} |")
            if "target_overshoot_ms" in e["slaprobe"]:
                s, b = e["slaprobe"], e["blackbox"]
                out.append(
                    f"| where it goes{d}: start → request read by target; target overshoot; answer written → result"
                    f" | {s['start_to_request_ms']['mean']:.2f}; {s['target_overshoot_ms']['mean']:.3f};"
                    f" {s['answer_to_result_ms']['mean']:.2f} | (from driver) {b['start_to_request_ms']['mean']:.2f};"
                    f" {b['target_overshoot_ms']['mean']:.3f}; {b['answer_to_result_ms']['mean']:.2f} |"
                )
            out.append(
                f"| CPU per probe, spaced{d} | **{e['slaprobe']['cpu_us_spaced']:,.0f} µs** |"
                f" **{e['blackbox']['cpu_us_spaced']:,.0f} µs** (driver: {e['driver_cpu_us_per_probe']:,.0f} µs) |"
            )
            fails = [f"{impl} {e[impl]['failed']}" for impl in IMPLS if e[impl]["failed"]]
            if fails:
                out.append(f"| failed probes{d} | {'; '.join(fails)} | {e['blackbox']['fail_details']} |")
            extra = []
            if "target_overshoot" in c:
                extra.append(f"target's own overshoot (server side) {c['target_overshoot']['mean']:.3f} ms")
            if "curl" in c:
                extra.append(f"`curl -w` error {fmt_err(c['curl'])}")
            if extra:
                out.append(f"| target{d} | {'; '.join(extra)} | |")
            out.append(f"| other processes' CPU{d} (max over blocks) | {e['others_cores_max']:.2f} cores | |")
            sat = c.get("saturation")
            if sat:
                s, b = sat["slaprobe"], sat["blackbox"]
                out += [
                    f"| ceiling: probes/s on cores used → **per core** | {s['per_s']:,.0f} on {s['cores']:.2f} →"
                    f" **{s['per_core']:,.0f}** | {b['per_s']:,.0f} on {b['cores']:.2f} → **{b['per_core']:,.0f}** |",
                    f"| CPU per probe at saturation | **{s['cpu_us']:,.0f} µs** | **{b['cpu_us']:,.0f} µs**"
                    f" (driver {1e6 * b['driver_cpu_s'] / max(1, b['ok'] + b['failed']):,.0f} µs, {b['driver_cpu_s'] / b['wall_s']:.2f} cores) |",
                    f"| saturation: failed; target server cores; other processes | {s['failed']}; {s['target_cores']:.2f};"
                    f" {s['others_cores']:.2f} | {b['failed']}; {b['target_cores']:.2f}; {b['others_cores']:.2f} |",
                ]
        out.append("")
    rs, rb = r["rss"]["slaprobe"], r["rss"]["blackbox"]
    out += [
        f"RSS (sampled 4/s over the run: peak / mean; VmHWM): slaprobe worker {rs['peak'] / MIB:.0f} / {rs['mean'] / MIB:.0f};"
        f" {rs['hwm'] / MIB:.0f} MiB (the probing process alone: probes, agent.runner, no gRPC link);"
        f" blackbox_exporter {rb['peak'] / MIB:.0f} / {rb['mean'] / MIB:.0f}; {rb['hwm'] / MIB:.0f} MiB.",
        "",
        "Targets: "
        + "; ".join(
            f"{k} {t['target']}: {t['value']}, {'met' if t['met'] else '**NOT met**'}"
            for k, t in targets(r).items()
        )
        + ".",
        "",
    ]
    return "\n".join(out)


def human(r: dict[str, Any]) -> str:
    return markdown(r) + (
        "\nprofile (own time, slaprobe worker):\n" + r["profile"] if r.get("profile") else ""
    )


def append_markdown(text: str, path: Path = RESULTS_MD) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n" + text)


def parse_args(argv: Sequence[str] | None = None) -> Params:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument(
        "--probes", type=int, default=200, help="probes per implementation and case for the error"
    )
    ap.add_argument(
        "--block", type=int, default=50, help="probes per block (implementations alternate by block)"
    )
    ap.add_argument(
        "--gap", type=float, default=0.05, help="idle seconds between probes (added to the delay)"
    )
    ap.add_argument(
        "--seconds", type=float, default=8.0, help="saturation seconds per case and implementation"
    )
    ap.add_argument("--concurrency", type=int, default=32, help="probes in flight at saturation")
    ap.add_argument("--icmp-concurrency", type=int, default=8, help="ICMP probes in flight at saturation")
    ap.add_argument("--types", default="http,https,tcp,dns,icmp", help="comma-separated probe types")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        help="before each block, wait up to this for a quieter machine",
    )
    ap.add_argument(
        "--profile", action="store_true", help="py-spy the slaprobe worker and print its hot spots"
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run this process and every process it starts (targets, worker, blackbox_exporter) at this niceness",
    )
    ap.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="let the kernel place the probers and the targets (default: probers on CPU 0, the rest elsewhere)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="where the temporary directory goes")
    ap.add_argument("--markdown", action="store_true", help="append a section to bench/RESULTS.md")
    a = ap.parse_args(argv)
    if a.probes < 2 or a.block < 1 or a.seconds <= 0:
        ap.error("need probes ≥ 2, block ≥ 1, seconds > 0")
    return Params(
        probes=a.probes,
        block=a.block,
        gap_s=a.gap,
        seconds=a.seconds,
        concurrency=a.concurrency,
        icmp_concurrency=a.icmp_concurrency,
        types=tuple(t.strip() for t in a.types.split(",") if t.strip()),
        quiet_wait=a.quiet_wait,
        profile=a.profile,
        nice=a.nice,
        workdir=a.workdir,
        markdown=a.markdown,
        pin=a.pin,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] == ["--role", "target"]:
        target_main(args[2], args[3])
        return 0
    if args[:2] == ["--role", "worker"]:
        worker_main()
        return 0
    p = parse_args(args)
    for tool in (BLACKBOX, DNSMASQ, CURL):
        if not Path(tool).exists():
            raise SystemExit(f"bench: {tool} is missing (make bench-probes installs it)")
    cpus = sorted(os.sched_getaffinity(0))
    if p.pin and len(cpus) >= 2:
        global PROBER_CPUS, OTHER_CPUS
        PROBER_CPUS, OTHER_CPUS = {cpus[0]}, set(cpus[1:])
        os.sched_setaffinity(0, OTHER_CPUS)  # this driver, and the targets it starts, inherit it
    if p.nice:
        # Inherited by every process started below: the implementations, the targets and this driver
        # alike, so a neighbour's load disturbs them less and both sides the same.
        os.setpriority(os.PRIO_PROCESS, 0, p.nice)
    bench = Bench(p)
    try:
        bench.start()
        r = bench.run()
    finally:
        bench.stop()
    print(human(r))
    print(json.dumps(r, separators=(",", ":"), default=str))
    if p.markdown:
        append_markdown(markdown(r))
        print(f"appended to {RESULTS_MD.relative_to(ROOT)}", file=sys.stderr)
    missed = [k for k, t in targets(r).items() if not t["met"]]
    if missed:
        print(f"targets not met: {', '.join(missed)}", file=sys.stderr)
    broken = [
        name
        for name, c in r["cases"].items()
        for impl in IMPLS
        if c["error"][impl]["failed"] > c["error"][impl]["n"] // 10
    ]
    if broken:
        print(f"bench: too many failed probes in {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
