"""Real slaprobe processes for end-to-end tests: start, wait for, stop, read logs."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SLAPROBE = [sys.executable, "-m", "slaprobe"]


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
                raise AssertionError(f"process did not stop within {timeout}s:\n{self.log()}") from None
        return self.popen.returncode


def spawn(args: list[str], log_path: Path, **kw: Any) -> Proc:
    fh = log_path.open("wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([*SLAPROBE, *args], stdout=fh, stderr=subprocess.STDOUT, env=env, **kw)
    fh.close()
    return Proc(p, log_path)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_collector(
    tmp: Path,
    catalogue: str,
    db: Path | None = None,
    listen: str = "127.0.0.1:0",
    extra: list[str] | None = None,
    tls_dir: Path | None = None,
) -> tuple[Proc, int]:
    """Start a collector: mutual TLS with ``tls_dir`` (enrolment on a free port), else --insecure."""
    cat = tmp / "catalogue.yaml"
    cat.write_text(catalogue)
    db = db or tmp / "slaprobe.db"
    security = ["--tls-dir", str(tls_dir), "--enroll-listen", "127.0.0.1:0"] if tls_dir else ["--insecure"]
    proc = spawn(
        [
            "collector",
            "serve",
            "--catalogue",
            str(cat),
            "--db",
            str(db),
            "--listen",
            listen,
            *security,
            *(extra or []),
        ],
        tmp / "collector.log",
    )

    def port() -> int | None:
        if not proc.alive():
            raise AssertionError(f"collector exited:\n{proc.log()}")
        m = re.search(r"collector listening on .* \(port (\d+),", proc.log())
        return int(m.group(1)) if m else None

    return proc, wait_for(port, 20, "the collector to listen")


def enroll_port(proc: Proc) -> int:
    m = re.search(r"enrolment endpoint on .* \(port (\d+)\)", proc.log())
    assert m, proc.log()
    return int(m.group(1))


def start_agent(
    tmp: Path,
    port: int,
    site: str,
    name: str = "agent-1",
    extra: list[str] | None = None,
    *,
    tls: bool = False,
) -> Proc:
    """Start an agent; without ``tls`` it runs --insecure (its data dir must hold enrolment otherwise)."""
    data = tmp / f"data-{name}"
    extra = [*(extra or []), *([] if tls else ["--insecure"])]
    return spawn(
        [
            "agent",
            "run",
            "--collector",
            f"127.0.0.1:{port}",
            "--site",
            site,
            "--name",
            name,
            "--data-dir",
            str(data),
            *(extra or []),
        ],
        tmp / f"agent-{name}.log",
    )


def stored_records(db: Path) -> list[tuple[int, int, int, int, bytes]]:
    """(agent, epoch, seq, kind, bytes) of every record the collector stored, whichever table holds it."""
    from collector.record_log import every_record

    with sqlite3.connect(db) as conn:
        return list(every_record(conn))


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLAPROBE, *args], capture_output=True, text=True, timeout=timeout)
