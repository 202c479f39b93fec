"""Fault tests with real processes on loopback: nothing acknowledged is lost, nothing is stored twice.

Each test counts by sequence number from the agent's own record (its spool):
after the agent stops cleanly, every seq 1..last of its epoch must be held by
the collector exactly once, as a result, a clock sample or inside a gap span.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Proc, query, spawn, start_collector, wait_for

pytestmark = pytest.mark.slow


class Acceptor:
    """A TCP server that accepts and closes: a cheap real target for many checks."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def acceptor() -> Iterator[Acceptor]:
    a = Acceptor()
    yield a
    a.close()


def catalogue(target_port: int, sites: dict[str, int]) -> str:
    lines = ["sites:"]
    for site, n in sites.items():
        lines += [f"  {site}:", "    checks:"]
        for i in range(n):
            lines.append(
                f"      c{i:03d}: {{type: tcp, target: '127.0.0.1:{target_port}', interval: 1s, timeout: 500ms}}"
            )
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_agent(tmp: Path, port: int, site: str, name: str, extra_yaml: str = "") -> Proc:
    cfg = tmp / f"agent-{name}.yaml"
    cfg.write_text(
        f"collector: 127.0.0.1:{port}\nsite: {site}\nname: {name}\ndata_dir: data-{name}\n"
        f"heartbeat: 2s\ninsecure: true\n{extra_yaml}"
    )
    return spawn(["agent", "run", "--config", str(cfg)], tmp / f"agent-{name}.log")


def spool_state(tmp: Path, name: str) -> tuple[int, int, int]:
    """(epoch, acked_seq, records still spooled) from the agent's own spool."""
    with sqlite3.connect(tmp / f"data-{name}" / "spool.db") as c:
        meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
        left = c.execute("SELECT count(*) FROM records").fetchone()[0]
    return int(meta["epoch"]), int(meta["acked_seq"]), int(left)


def assert_exactly_once(db: Path, agent: str, epoch: int, last_seq: int) -> dict[str, int]:
    """Every seq 1..last_seq of the epoch is held exactly once; return counts per kind."""
    (agent_id,) = query(db, "SELECT id FROM agents WHERE name = ?", (agent,))[0]
    res = [s for (s,) in query(db, "SELECT seq FROM results WHERE agent_id=? AND epoch=?", (agent_id, epoch))]
    clk = [
        s
        for (s,) in query(db, "SELECT seq FROM clock_samples WHERE agent_id=? AND epoch=?", (agent_id, epoch))
    ]
    spans = query(
        db, "SELECT DISTINCT seq, through_seq FROM gaps WHERE agent_id=? AND epoch=?", (agent_id, epoch)
    )
    seals = [
        s
        for (s,) in query(
            db, "SELECT seq FROM record_log WHERE agent_id=? AND epoch=? AND kind=5", (agent_id, epoch)
        )
    ]
    held = res + clk + seals + [s for a, b in spans for s in range(a, b + 1)]
    assert len(held) == len(set(held)), "a sequence number is stored twice"
    missing = set(range(1, last_seq + 1)) - set(held)
    assert not missing, f"{len(missing)} acknowledged records missing, e.g. {sorted(missing)[:10]}"
    assert max(held) == last_seq
    other = query(db, "SELECT count(*) FROM results WHERE agent_id=? AND epoch!=?", (agent_id, epoch))[0][0]
    assert other == 0, "records under another epoch: the spool did not resume its sequence space"
    return {
        "results": len(res),
        "clock": len(clk),
        "seals": len(seals),
        "gap_seqs": len(held) - len(res) - len(clk) - len(seals),
    }


def stop_and_verify(tmp: Path, db: Path, agent: Proc, name: str) -> dict[str, int]:
    assert agent.stop() == 0, agent.log()
    epoch, acked, left = spool_state(tmp, name)
    assert left == 0, f"{left} records left in the spool after a clean stop with the collector up"
    return assert_exactly_once(db, name, epoch, acked)


def test_collector_down_for_a_minute_then_backlog_drains_in_order(tmp_path: Path, acceptor: Acceptor) -> None:
    port = free_port()
    collector, _ = start_collector(tmp_path, catalogue(acceptor.port, {"lab": 5}), listen=f"127.0.0.1:{port}")
    db = tmp_path / "slaprobe.db"
    agent = start_agent(tmp_path, port, "lab", "a1")
    wait_for(lambda: query(db, "SELECT count(*) FROM results")[0][0] >= 10, 30, "results to flow")
    assert collector.stop() == 0
    down_at = time.time_ns()
    time.sleep(62)
    collector, _ = start_collector(tmp_path, catalogue(acceptor.port, {"lab": 5}), listen=f"127.0.0.1:{port}")
    try:
        # The backlog (about 300 results) arrives, including those scheduled during the outage.
        wait_for(
            lambda: (
                query(
                    db,
                    "SELECT count(*) FROM results WHERE scheduled_ns BETWEEN ? AND ?",
                    (down_at + 5 * 10**9, down_at + 55 * 10**9),
                )[0][0]
                >= 5 * 48
            ),
            60,
            "the outage backlog to drain",
        )
        time.sleep(2)
        counts = stop_and_verify(tmp_path, db, agent, "a1")
    finally:
        agent.stop()
        collector.stop()
    assert counts["results"] >= 5 * 60  # about 70 s of probing at 1 s
    # In order per check: seq order and schedule order agree.
    for (check,) in query(db, "SELECT DISTINCT check_id FROM results"):
        sched = [
            s
            for (s,) in query(db, "SELECT scheduled_ns FROM results WHERE check_id=? ORDER BY seq", (check,))
        ]
        assert sched == sorted(sched)
    # No slot of the outage is missing: the agent kept probing while the collector was away.
    for (check,) in query(db, "SELECT DISTINCT check_id FROM results"):
        n = query(
            db,
            "SELECT count(*) FROM results WHERE check_id=? AND scheduled_ns BETWEEN ? AND ?",
            (check, down_at + 2 * 10**9, down_at + 60 * 10**9),
        )[0][0]
        assert n >= 57, n


def test_collector_sigkilled_repeatedly_under_load(tmp_path: Path, acceptor: Acceptor) -> None:
    port = free_port()
    cat = catalogue(acceptor.port, {"east": 50, "west": 50})
    collector, _ = start_collector(tmp_path, cat, listen=f"127.0.0.1:{port}")
    db = tmp_path / "slaprobe.db"
    agents = {
        "e1": start_agent(tmp_path, port, "east", "e1"),
        "w1": start_agent(tmp_path, port, "west", "w1"),
    }
    try:
        wait_for(lambda: query(db, "SELECT count(*) FROM results")[0][0] >= 200, 30, "results to flow")
        for _ in range(3):
            time.sleep(3)
            collector.stop(signal.SIGKILL)
            time.sleep(2)
            collector, _ = start_collector(tmp_path, cat, listen=f"127.0.0.1:{port}")
        time.sleep(8)
        totals = {name: stop_and_verify(tmp_path, db, proc, name) for name, proc in agents.items()}
    finally:
        for proc in agents.values():
            proc.stop()
        collector.stop()
    for counts in totals.values():
        assert counts["results"] >= 50 * 15


def test_agent_sigkilled_mid_stream_resumes_its_spool(tmp_path: Path, acceptor: Acceptor) -> None:
    port = free_port()
    collector, _ = start_collector(
        tmp_path, catalogue(acceptor.port, {"lab": 20}), listen=f"127.0.0.1:{port}"
    )
    db = tmp_path / "slaprobe.db"
    try:
        agent = start_agent(tmp_path, port, "lab", "a1")
        wait_for(lambda: query(db, "SELECT count(*) FROM results")[0][0] >= 40, 30, "results to flow")
        epoch_before = spool_state(tmp_path, "a1")[0]
        agent.stop(signal.SIGKILL)
        agent = start_agent(tmp_path, port, "lab", "a1")
        time.sleep(6)
        assert spool_state(tmp_path, "a1")[0] == epoch_before  # the same sequence space resumed
        counts = stop_and_verify(tmp_path, db, agent, "a1")
    finally:
        collector.stop()
    assert counts["results"] >= 20 * 5


def test_spool_bound_during_outage_becomes_a_delivered_gap(tmp_path: Path, acceptor: Acceptor) -> None:
    port = free_port()
    collector, _ = start_collector(
        tmp_path, catalogue(acceptor.port, {"lab": 20}), listen=f"127.0.0.1:{port}"
    )
    db = tmp_path / "slaprobe.db"
    agent = start_agent(tmp_path, port, "lab", "a1", "spool:\n  max_size: 48KiB\n")
    wait_for(lambda: query(db, "SELECT count(*) FROM results")[0][0] >= 20, 30, "results to flow")
    assert collector.stop() == 0
    wait_for(lambda: "evicted, replaced by a gap record" in agent.log(), 60, "the spool to evict")
    collector, _ = start_collector(
        tmp_path, catalogue(acceptor.port, {"lab": 20}), listen=f"127.0.0.1:{port}"
    )
    try:
        wait_for(lambda: query(db, "SELECT count(*) FROM gaps")[0][0] > 0, 30, "the gap record to arrive")
        time.sleep(3)
        counts = stop_and_verify(tmp_path, db, agent, "a1")
    finally:
        agent.stop()
        collector.stop()
    assert counts["gap_seqs"] > 0
    gaps = query(
        db,
        "SELECT c.name, g.count, g.reason, g.from_ns, g.to_ns FROM gaps g JOIN checks c ON c.id = g.check_id",
    )
    assert {r[2] for r in gaps} == {"spool_full"}
    assert len({r[0] for r in gaps}) == 20  # every check lost some results, and each is named
    assert all(r[1] > 0 and r[3] <= r[4] for r in gaps)


class FreezingProxy:
    """A TCP proxy on loopback whose open connections can be frozen: no FIN, no RST, just silence."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.frozen: set[int] = set()
        self.generation = 0
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze_existing(self) -> None:
        self.frozen.add(self.generation)
        self.generation += 1

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            gen = self.generation
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, gen), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, gen: int) -> None:
        try:
            while True:
                data = src.recv(65536)
                if gen in self.frozen:
                    time.sleep(3600)  # swallow: the peer sees a dead path, not a closed one
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        self.sock.close()


def test_a_silently_dead_path_is_noticed_and_the_agent_reconnects(tmp_path: Path, acceptor: Acceptor) -> None:
    collector, port = start_collector(tmp_path, catalogue(acceptor.port, {"lab": 5}))
    proxy = FreezingProxy(port)
    db = tmp_path / "slaprobe.db"
    agent = start_agent(tmp_path, proxy.port, "lab", "a1", "keepalive: 2s\n")
    try:
        wait_for(lambda: query(db, "SELECT count(*) FROM results")[0][0] >= 10, 30, "results to flow")
        proxy.freeze_existing()
        frozen_at = time.time_ns()
        # Keepalive (2 s, 1 s to answer) must notice, and a new connection must deliver again.
        wait_for(lambda: proxy.connections >= 2, 30, "the agent to reconnect")
        wait_for(
            lambda: (
                query(db, "SELECT count(*) FROM results WHERE received_ns > ?", (frozen_at + 10**9,))[0][0]
                > 0
            ),
            30,
            "results through the new connection",
        )
        counts = stop_and_verify(tmp_path, db, agent, "a1")
    finally:
        agent.stop()
        collector.stop()
        proxy.close()
    assert counts["results"] > 10
