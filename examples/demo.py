"""The demo behind `make demo`: a real collector and a real agent, probing real local targets.

It starts a small web app on 127.0.0.1:8765, a collector (SQLite in
demo-data/) with examples/catalogue.yaml and an agent with
examples/agent.yaml, takes the web app down for ten seconds in the middle,
and prints the compliance table. Every process it starts is stopped on exit.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "demo-data"
WEB_PORT = 8765
COLLECTOR = "127.0.0.1:7431"
ENROLL = "127.0.0.1:7432"
RUN_S = 40
OUTAGE_AT_S, OUTAGE_S = 14, 10


class DemoApp(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            body = b"ok\n"
        else:
            time.sleep(random.uniform(0.005, 0.040))  # a little server-side work
            body = b"<html><body><h1>demo app</h1></body></html>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A probe cancelled at shutdown closes its connection mid-response; that is not news.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class WebApp:
    def __init__(self) -> None:
        self.server: QuietServer | None = None

    def start(self) -> None:
        self.server = QuietServer(("127.0.0.1", WEB_PORT), DemoApp)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def say(msg: str) -> None:
    print(f"[demo {datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


def slaprobe(*args: str, log: Path) -> subprocess.Popen[bytes]:
    fh = log.open("wb")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "slaprobe", *args], stdout=fh, stderr=subprocess.STDOUT, env=env
    )


def run(*args: str) -> None:
    """A one-shot slaprobe command; its output goes to the demo log, a failure stops the demo."""
    out = subprocess.run(
        [sys.executable, "-m", "slaprobe", *args], capture_output=True, text=True, check=False
    )
    with (DATA / "setup.log").open("a") as log:
        log.write(f"$ slaprobe {' '.join(args)}\n{out.stdout}{out.stderr}")
    if out.returncode != 0:
        raise SystemExit(f"demo: slaprobe {args[0]} {args[1]} failed:\n{out.stderr}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    for port in (WEB_PORT, int(COLLECTOR.rsplit(":", 1)[1]), int(ENROLL.rsplit(":", 1)[1])):
        if not port_free(port):
            print(
                f"demo: port {port} on 127.0.0.1 is in use; stop whatever holds it and retry", file=sys.stderr
            )
            return 1
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir()
    db = DATA / "slaprobe.db"
    web = WebApp()
    procs: list[subprocess.Popen[bytes]] = []
    started = datetime.now(UTC)
    try:
        web.start()
        say(f"web app up on http://127.0.0.1:{WEB_PORT}/")
        tls = DATA / "tls"
        run("collector", "init", "--tls-dir", str(tls), "--host", "127.0.0.1", "--host", "localhost")
        say("collector CA and server certificate created in demo-data/tls (mutual TLS, as in production)")
        procs.append(
            slaprobe(
                "collector",
                "serve",
                "--catalogue",
                str(ROOT / "examples/catalogue.yaml"),
                "--db",
                str(db),
                "--listen",
                COLLECTOR,
                "--enroll-listen",
                ENROLL,
                "--tls-dir",
                str(tls),
                log=DATA / "collector.log",
            )
        )
        time.sleep(1.5)
        if procs[0].poll() is not None:
            print((DATA / "collector.log").read_text(), file=sys.stderr)
            return 1
        say(
            f"collector serving agents on {COLLECTOR} (enrolment on {ENROLL}), storing in {db.relative_to(ROOT)}"
        )
        join = DATA / "demo-lab.join"
        run(
            "agent",
            "token",
            "create",
            "--site",
            "demo-lab",
            "--ttl",
            "10m",
            "--db",
            str(db),
            "--tls-dir",
            str(tls),
            "--collector",
            COLLECTOR,
            "--enroll",
            ENROLL,
            "-o",
            str(join),
        )
        run(
            "agent",
            "enroll",
            "--join",
            str(join),
            "--name",
            "demo-agent-1",
            "--data-dir",
            str(DATA / "agent"),
        )
        say(
            "agent enrolled with a one-time token: it holds its own key and a certificate naming it and its site"
        )
        procs.append(
            slaprobe("agent", "run", "--config", str(ROOT / "examples/agent.yaml"), log=DATA / "agent.log")
        )
        say(f"agent 'demo-agent-1' probing site 'demo-lab' every 2s; running for {RUN_S}s")
        t0 = time.monotonic()
        time.sleep(OUTAGE_AT_S)
        web.stop()
        say(f"web app DOWN for {OUTAGE_S}s (the outage the report should show)")
        time.sleep(OUTAGE_S)
        web.start()
        say("web app back up")
        time.sleep(max(0.0, RUN_S - (time.monotonic() - t0)))
        ended = datetime.now(UTC)
        for p in reversed(procs):
            stop(p)
        say("agent and collector stopped; logs in demo-data/")
    finally:
        for p in reversed(procs):
            stop(p)
        web.stop()
    print()
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "slaprobe",
            "compliance",
            "--db",
            str(db),
            "--from",
            started.isoformat(),
            "--to",
            ended.isoformat(),
        ],
        check=False,
    )
    print()
    print(f"Query it again:  .venv/bin/slaprobe compliance --db {db.relative_to(ROOT)} --format json")
    return 0 if report.returncode in (0,) else report.returncode


if __name__ == "__main__":
    sys.exit(main())
