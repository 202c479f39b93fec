"""Benchmark: `slaprobe agent install` on 10 hosts at once, wall time and bytes sent per host.

The hosts are real OpenSSH servers on loopback ports (tests/sshd.py),
each with its own install prefix (``prefix=`` in the inventory), all logging
in as root with a throwaway key; the collector is a real subprocess with
mutual TLS. Each sshd sits behind a small TCP relay that counts the bytes the
installer sends (client to server) and receives, so "bytes sent" is what
went over the wire, SSH framing and encryption included.

The wheelhouse is built (or found warm in the cache) before the clock
starts: the target is "10 hosts in under 60 s with a warm wheelhouse". The
runtime bundle (slaprobe/install/bundle.py) is not: the first install runs
with an empty bundle cache, so its time includes building the bundle once.
Then an unchanged rerun, then uninstall and a second first install with the
bundle cached; with ``--wheels`` also an install with pip on every host
(``--method wheels``, the fallback path and the previous mechanism). Each run
records the load average before and after it and the whole machine's busy
CPU-seconds (/proc/stat: the installer, every "host" and anything else
running), since all of them share this machine's CPUs.

    .venv/bin/python bench/install.py [--hosts 10] [--wheels] [--markdown]
"""

# Run as a script, bench/ comes first on sys.path, and bench/agent.py would shadow slaprobe's agent.
from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH_DIR]
sys.path.insert(0, str(BENCH_DIR.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

from slaprobe import __version__  # noqa: E402
from slaprobe.install import wheelhouse  # noqa: E402
from tests.procs import SLAPROBE, enroll_port, run_cli, start_collector  # noqa: E402
from tests.sshd import SshServer, free_port, keygen, why_not_as_root  # noqa: E402

RESULTS_MD = BENCH_DIR / "RESULTS.md"
TARGET_S = 60.0


class Relay:
    """A TCP relay on its own event-loop thread that counts bytes in each direction."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.sent = 0  # installer -> sshd
        self.received = 0  # sshd -> installer
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.ready.set()
        async with self.server:
            with contextlib.suppress(asyncio.CancelledError):  # close() ends serve_forever this way
                await self.server.serve_forever()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, outbound: bool) -> None:
            try:
                while data := await src.read(65536):
                    if outbound:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(r, uw, True), pump(ur, w, False))

    def reset(self) -> None:
        self.sent = self.received = 0

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)


def run_timed(
    argv: list[str], env: dict[str, str], t0: float
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """Run the installer; time each host's progress steps from its stderr lines ("host: step").

    Returns the process and, per step, "median/max" seconds over the hosts (a step lasts until the next).
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None and proc.stdout is not None
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic() - t0, line.rstrip("\n")))

    th = threading.Thread(target=read, daemon=True)
    th.start()
    out = proc.stdout.read()
    proc.wait(900)
    th.join(10)
    per_host: dict[str, list[tuple[float, str]]] = {}
    for t, line in lines:
        label, sep, text = line.partition(": ")
        if sep and label.startswith("127.0.0.1:"):
            per_host.setdefault(label, []).append((t, text.split(" (")[0].split(":")[0]))
    durations: dict[str, list[float]] = {}
    for events in per_host.values():
        for (t, step), (t_next, _) in itertools.pairwise(events):
            durations.setdefault(step, []).append(t_next - t)
    steps = {k: f"{statistics.median(v):.1f}/{max(v):.1f}" for k, v in durations.items()}
    err = "\n".join(line for _, line in lines)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), steps


def busy_cpu_s() -> float:
    """CPU-seconds the whole machine has been busy since boot (/proc/stat: all but idle and iowait)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} vCPU, Python {platform.python_version()}, asyncssh {_asyncssh()}"


def _asyncssh() -> str:
    import asyncssh

    return str(asyncssh.__version__)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--markdown", action="store_true", help=f"append a section to {RESULTS_MD}")
    ap.add_argument("--wheels", action="store_true", help="also time an install with pip on every host")
    a = ap.parse_args()
    if (why := why_not_as_root()) is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="slaprobe-bench-install-"))
    tls = tmp / "tls"
    assert run_cli("collector", "init", "--tls-dir", str(tls), "--host", "127.0.0.1").returncode == 0
    port = free_port()
    catalogue = (
        "sites:\n  bench:\n    sla: {availability: 99%}\n    checks:\n      collector:\n"
        f"        type: tcp\n        target: 127.0.0.1:{port}\n        interval: 5s\n        timeout: 1s\n"
    )
    collector, port = start_collector(tmp, catalogue, listen=f"127.0.0.1:{port}", tls_dir=tls)
    key = keygen(tmp / "id_bench")
    t0 = time.monotonic()
    wh = wheelhouse.ensure()
    warmup_s = time.monotonic() - t0
    sshds = [SshServer(tmp / f"sshd-{i}", client_key=key).start() for i in range(a.hosts)]
    relays = [Relay(s.port) for s in sshds]
    kh = tmp / "known_hosts"
    kh.write_text(
        "".join(
            s.known_hosts_line().replace(f":{s.port} ", f":{r.port} ")
            for s, r in zip(sshds, relays, strict=True)
        )
    )
    inv = tmp / "fleet.txt"
    inv.write_text(
        "".join(
            f"root@127.0.0.1:{r.port} name=bench-{i} prefix={tmp}/host-{i}/opt\n"
            for i, r in enumerate(relays)
        )
    )
    common = ["--identity", str(key), "--known-hosts", str(kh), "--db", str(tmp / "slaprobe.db")]
    install = [
        *SLAPROBE, "agent", "install", "-i", str(inv), *common, "--tls-dir", str(tls),
        "--collector", f"127.0.0.1:{port}", "--enroll", f"127.0.0.1:{enroll_port(collector)}",
        "--service-user", "root", "--site", "bench", "--wheelhouse", str(wh.dir), "--format", "json",
    ]  # fmt: skip
    uninstall = [*SLAPROBE, "agent", "uninstall", "-i", str(inv), *common]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache")}  # the bundle cache starts empty
    runs = [("first", install), ("rerun", install), ("first, bundle cached", install)]
    if a.wheels:
        runs.append(("pip on every host", [*install, "--method", "wheels"]))
    figures: dict[str, dict[str, object]] = {}
    try:
        for run, argv in runs:
            if run.startswith(("first, ", "pip ")):
                u = subprocess.run(uninstall, capture_output=True, text=True, timeout=300)
                if u.returncode != 0:
                    print(u.stdout, u.stderr, file=sys.stderr)
                    return 1
            for r in relays:
                r.reset()
            load0, cpu0 = os.getloadavg()[0], busy_cpu_s()
            t = time.monotonic()
            ru0, self0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
            p, steps = run_timed(argv, env, t)
            wall = time.monotonic() - t
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if p.returncode != 0:
                print(p.stdout, p.stderr, file=sys.stderr)
                return 1
            hosts = json.loads(p.stdout)["hosts"]
            sent = [r.sent for r in relays]
            built = [ln for ln in p.stderr.splitlines() if ln.startswith("runtime bundle:")]
            figures[run] = {
                "wall_s": round(wall, 1),
                "per_host_s_max": max(h["seconds"] for h in hosts),
                "results": sorted({h["result"] for h in hosts}),
                "methods": sorted({h.get("method", "?") for h in hosts}),
                "bundle": built[0].split(": ", 1)[1] if built else None,
                "bytes_sent_per_host_avg": sum(sent) // len(sent),
                "bytes_received_per_host_avg": sum(r.received for r in relays) // len(relays),
                "payload_uploaded_per_host_avg": sum(h["bytes_uploaded"] for h in hosts) // len(hosts),
                "machine_busy_cpu_s": round(busy_cpu_s() - cpu0, 1),
                # The installer process and what it waited for (the bundle build), and this script's relays.
                "installer_cpu_s": round(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 1),
                "relays_cpu_s": round(time.process_time() - self0, 1),
                "steps_s_median_max": steps,
                "load_before": round(load0, 2),
                "load_after": round(os.getloadavg()[0], 2),
            }
            print(f"{run}: {a.hosts} hosts in {wall:.1f}s, {figures[run]}", flush=True)
        u = subprocess.run(uninstall, capture_output=True, text=True, timeout=300)
        if u.returncode != 0:
            print(u.stdout, u.stderr, file=sys.stderr)
    finally:
        for r in relays:
            r.close()
        for s in sshds:
            s.stop()
        collector.stop()
    first = figures["first"]
    ok = float(str(first["wall_s"])) < TARGET_S
    ok_cached = float(str(figures["first, bundle cached"]["wall_s"])) < TARGET_S
    summary = {
        "benchmark": "install",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "hosts": a.hosts,
        "version": __version__,
        "wheelhouse": {"wheels": len(wh.wheels), "bytes": wh.total_bytes, "warmup_s": round(warmup_s, 1)},
        **figures,
        "target_s": TARGET_S,
        "met": ok,
    }
    print(json.dumps(summary))
    if a.markdown:
        bundle = str(first["bundle"] or "none")
        rows = "".join(
            f"| {run} | {f['wall_s']} s | {f['per_host_s_max']:.1f} s | {_bytes(f['bytes_sent_per_host_avg'])} |"
            f" {_bytes(f['bytes_received_per_host_avg'])} | {f['installer_cpu_s']} s | {f['machine_busy_cpu_s']} s |"
            f" {f['load_before']} → {f['load_after']} | {', '.join(map(str, f['results']))} |\n"  # type: ignore[call-overload]
            for run, f in figures.items()
        )
        with RESULTS_MD.open("a", encoding="utf-8") as fh:
            fh.write(
                f"\n## Agent install over SSH, {summary['date'][:10]}\n\n"
                f"Machine: {summary['machine']}. {a.hosts} OpenSSH servers on loopback, each behind a"
                f" byte-counting relay; warm wheelhouse ({len(wh.wheels)} wheels, {wh.total_bytes / 1e6:.1f} MB);"
                f" runtime bundle {bundle.split(': /')[0]}; fallback supervisor (no systemd); `bench/install.py`.\n\n"
                "| run | wall time, all hosts | slowest host | bytes sent per host | bytes received per host |"
                " installer CPU | machine CPU busy | load avg (1 min) before → after | result |\n"
                "|---|---:|---:|---:|---:|---:|---:|---|---|\n"
                f"{rows}\n"
                "Seconds per step, median/max over the hosts (a step lasts until the host's next progress"
                " line; all hosts at once):\n\n"
                + "".join(
                    f"- {run}: " + ", ".join(f"{k} {v}" for k, v in f["steps_s_median_max"].items()) + "\n"  # type: ignore[attr-defined]
                    for run, f in figures.items()
                )
                + "\nInstaller CPU: the installer process and what it waited for (the bundle build); machine CPU"
                " busy: /proc/stat over the run, i.e. installer, sshd, every host's commands and agents, and"
                " anything else running on the machine.\n\n"
                f"Target: {a.hosts} hosts in under {TARGET_S:.0f} s. First install with the bundle built in the"
                f" run: {'met' if ok else 'NOT met'}; with the bundle cached (as warm as the wheelhouse):"
                f" {'met' if ok_cached else 'NOT met'}.\n"
            )
    return 0 if ok else 1


def _bytes(n: object) -> str:
    v = float(str(n))
    return f"{v / 1e6:.2f} MB" if v >= 1e6 else f"{v / 1e3:.0f} kB"


if __name__ == "__main__":
    sys.exit(main())
