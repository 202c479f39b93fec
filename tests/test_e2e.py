"""End to end with real processes: collector + agent subprocesses, a real HTTP target taken down
for a known span; the compliance report must show that span as downtime within one interval."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from slaprobe import __version__
from tests.procs import enroll_port, query, run_cli, start_agent, start_collector, wait_for

INTERVAL_S = 1.0


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the e2e target\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Target:
    """A real HTTP server on loopback that can be taken down and brought back on the same port."""

    def __init__(self) -> None:
        self.server: ThreadingHTTPServer | None = None
        self.port = 0
        self.up()

    def up(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), _Hello)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None


@pytest.fixture
def target() -> Iterator[Target]:
    t = Target()
    yield t
    if t.server is not None:
        t.down()


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat()


@pytest.mark.slow
def test_outage_shows_as_downtime_within_one_interval(tmp_path: Path, target: Target) -> None:
    catalogue = f"""
sites:
  lab:
    sla: {{availability: 99%}}
    checks:
      web:
        type: http
        target: http://127.0.0.1:{target.port}/
        interval: 1s
        timeout: 500ms
      self:
        type: tcp
        target: 127.0.0.1:{{collector_port}}
        interval: 1s
        timeout: 500ms
"""
    # The tcp check probes the collector's own port; pick it first so the catalogue can name it.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    # Production setup, as the README gives it: a CA, a join token, an enrolled agent, mutual TLS.
    tls = tmp_path / "tls"
    assert run_cli("collector", "init", "--tls-dir", str(tls), "--host", "127.0.0.1").returncode == 0
    collector, port = start_collector(
        tmp_path, catalogue.replace("{collector_port}", str(free)), listen=f"127.0.0.1:{free}", tls_dir=tls
    )
    db = tmp_path / "slaprobe.db"
    join = tmp_path / "lab.join"
    out = run_cli(
        "agent",
        "token",
        "create",
        "--site",
        "lab",
        "--db",
        str(db),
        "--tls-dir",
        str(tls),
        "--collector",
        f"127.0.0.1:{port}",
        "--enroll",
        f"127.0.0.1:{enroll_port(collector)}",
        "-o",
        str(join),
    )
    assert out.returncode == 0, out.stderr
    assert join.stat().st_mode & 0o777 == 0o600
    out = run_cli(
        "agent",
        "enroll",
        "--join",
        str(join),
        "--name",
        "agent-1",
        "--data-dir",
        str(tmp_path / "data-agent-1"),
    )
    assert out.returncode == 0, out.stderr
    agent = start_agent(tmp_path, port, "lab", tls=True)
    try:
        first = wait_for(
            lambda: query(db, "SELECT min(scheduled_ns) FROM results")[0][0], 30, "the first stored result"
        )
        time.sleep(3)
        t_down = time.time_ns()
        target.down()
        time.sleep(6)
        target.up()
        t_up = time.time_ns()
        time.sleep(4)
        end = time.time_ns() - 1_000_000_000
        assert agent.stop() == 0, agent.log()
    finally:
        agent.stop()
        assert collector.stop() == 0, collector.log()

    out = run_cli("compliance", "--db", str(db), "--from", iso(first), "--to", iso(end), "--format", "json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (site,) = report["sites"]
    checks = {c["check"]: c for c in site["checks"]}
    web, own = checks["web"], checks["self"]

    outage_s = (t_up - t_down) / 1e9
    assert abs(web["downtime_s"] - outage_s) <= INTERVAL_S, (web, outage_s)
    assert web["unknown"] == 0, web
    assert web["up"] > 0 and web["down"] > 0
    assert web["status"] == "breached"
    assert own["down"] == 0 and own["unknown"] == 0 and own["availability"] == 100.0

    # The failed probes say why: the port was refused while the server was down (a probe caught
    # in the act of shutting down may see its accepted connection reset instead).
    kinds = {
        k
        for (k,) in query(
            db,
            "SELECT DISTINCT error_kind FROM results r JOIN checks c"
            " ON c.id = r.check_id WHERE c.name = 'web' AND r.ok = 0",
        )
    }
    assert "refused" in kinds and kinds <= {"refused", "reset"}, kinds
    # Every down slot lies inside the outage (give one interval of slack at each edge).
    downs = query(
        db,
        "SELECT scheduled_ns FROM results r JOIN checks c ON c.id = r.check_id"
        " WHERE c.name = 'web' AND r.ok = 0",
    )
    for (ns,) in downs:
        assert t_down - 1e9 <= ns <= t_up + 1e9

    # The fleet view knows the agent, its version and its clock.
    out = run_cli("agent", "list", "--db", str(db), "--format", "json")
    assert out.returncode == 0, out.stderr
    (a,) = json.loads(out.stdout)["agents"]
    assert (a["name"], a["site"], a["version"]) == ("agent-1", "lab", __version__)
    assert a["clock_rtt_ms"] is not None and abs(a["clock_offset_ms"]) < 1000

    # The same run as evidence: the agent's signing key was recorded at enrolment (the join
    # token vouched for it), its chain verifies, and the report recomputed from the signed
    # records is the one exported.
    bundle = tmp_path / "evidence.tar.gz"
    out = run_cli(
        "evidence", "export", "--db", str(db), "--tls-dir", str(tls), "--site", "lab",
        "--from", iso(first), "--to", iso(end), "-o", str(bundle),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = run_cli("evidence", "verify", str(bundle), "--all-signatures")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "VERIFIED" in out.stdout and "ok   chain agent 'agent-1'" in out.stdout
    (how,) = query(db, "SELECT how FROM agent_keys WHERE name = 'agent-1'")[0]
    assert how == "enrol"
