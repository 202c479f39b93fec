"""`slaprobe agent install | upgrade | status | uninstall` against real OpenSSH servers on loopback.

The "remote" hosts are sshd instances on this machine (tests/install_sshd.py);
the install goes into a temporary prefix, the service user is root (no
system users are created on the CI machine) and, systemd not being PID 1
here, the fallback supervisor is what runs the agent. The collector is a
real subprocess with mutual TLS; an agent counts as installed only once it
has enrolled, registered and delivered results.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from slaprobe import __version__
from slaprobe.install import templates, wheelhouse
from slaprobe.install.errors import InstallError
from slaprobe.install.inventory import Target, load_inventory, parse_target
from tests.install_sshd import Sshd, available, free_port, keygen
from tests.procs import SLAPROBE, enroll_port, query, run_cli, start_collector, wait_for

why_not = available()
needs_sshd = pytest.mark.skipif(why_not is not None, reason=why_not or "")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("install")
    tls = tmp / "tls"
    assert run_cli("collector", "init", "--tls-dir", str(tls), "--host", "127.0.0.1").returncode == 0
    port = free_port()
    catalogue = f"""
sites:
  lab:
    sla: {{availability: 99%}}
    checks:
      collector-port:
        type: tcp
        target: 127.0.0.1:{port}
        interval: 1s
        timeout: 500ms
"""
    proc, port = start_collector(tmp, catalogue, listen=f"127.0.0.1:{port}", tls_dir=tls)
    key = keygen(tmp / "id_test")
    # Built (or found warm in the cache) once and pinned: the source tree may change under a long run.
    wheels = wheelhouse.ensure()
    yield {
        "wheelhouse": wheels.dir,
        "tmp": tmp,
        "tls": tls,
        "db": tmp / "slaprobe.db",
        "port": port,
        "enroll": enroll_port(proc),
        "key": key,
        "collector": proc,
    }
    assert proc.stop() == 0, proc.log()


@pytest.fixture
def sshd(world: dict[str, object], tmp_path: Path) -> Iterator[Sshd]:
    s = Sshd(tmp_path / "sshd", Path(str(world["key"]))).start()
    yield s
    s.stop()


def base_args(world: dict[str, object], known_hosts: Path, prefix: Path) -> list[str]:
    return [
        "--identity",
        str(world["key"]),
        "--known-hosts",
        str(known_hosts),
        "--prefix",
        str(prefix),
        "--db",
        str(world["db"]),
    ]


def install_args(world: dict[str, object], known_hosts: Path, prefix: Path, site: bool = True) -> list[str]:
    return [
        *base_args(world, known_hosts, prefix),
        "--tls-dir",
        str(world["tls"]),
        "--collector",
        f"127.0.0.1:{world['port']}",
        "--enroll",
        f"127.0.0.1:{world['enroll']}",
        "--service-user",
        "root",
        *(["--site", "lab"] if site else []),
        "--wait",
        "30",
        "--wheelhouse",
        str(world["wheelhouse"]),
    ]


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SLAPROBE, "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


# ---- pure parts --------------------------------------------------------------------------------


def test_targets_and_inventory(tmp_path: Path) -> None:
    assert parse_target("ops@10.0.0.5:2222") == Target("10.0.0.5", 2222, "ops")
    assert parse_target("[2001:db8::1]:22") == Target("2001:db8::1", 22)
    assert parse_target("2001:db8::1") == Target("2001:db8::1")
    inv = tmp_path / "fleet.txt"
    inv.write_text(
        "# paris\nroot@a.example name=a-1  # first\n\nb.example:2200 site=rome user=ops name=b-1\n"
    )
    assert load_inventory(inv) == [
        Target("a.example", 22, "root", None, "a-1"),
        Target("b.example", 2200, "ops", "rome", "b-1"),
    ]
    inv.write_text("c.example prefix=/srv/slaprobe\nd.example prefix=/etc\n")
    with pytest.raises(
        InstallError, match=r"fleet.txt:2: the prefix must be an absolute directory of its own"
    ):
        load_inventory(inv)
    inv.write_text("a.example colour=blue\n")
    with pytest.raises(InstallError, match=r"fleet.txt:1: expected key=value"):
        load_inventory(inv)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: give the unit a prefix whose venv is this one.
    prefix = tmp_path / "opt"
    (prefix / "venv" / "bin").mkdir(parents=True)
    (prefix / "venv" / "bin" / "slaprobe").symlink_to(shutil.which("slaprobe") or "/bin/true")
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    for net_raw in (False, True):
        unit = templates.systemd_unit(templates.Layout(str(prefix)), "root", "lab", net_raw=net_raw)
        assert "token" not in unit and "--join" not in unit
        assert ("AmbientCapabilities=CAP_NET_RAW" in unit) is net_raw
        path = unit_dir / templates.UNIT_NAME
        path.write_text(unit)
        r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "slaprobe-agent.service" not in r.stderr, r.stderr


def test_supervisor_script_is_valid_sh(tmp_path: Path) -> None:
    script = tmp_path / "supervise"
    script.write_text(templates.supervisor_script(templates.Layout(str(tmp_path)), "root"))
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0


# ---- against real sshd ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_stray_processes(tmp_path: Path) -> Iterator[None]:
    """A failed test must not leave an installed supervisor or agent running on the machine."""
    yield
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(tmp_path) in part for part in proc.info["cmdline"] or []):
                proc.kill()
        except psutil.Error:
            pass


@needs_sshd
@pytest.mark.slow
def test_install_interrupted_rerun_unchanged_status_restart_uninstall(
    world: dict[str, object], sshd: Sshd, tmp_path: Path
) -> None:
    kh, prefix = tmp_path / "known_hosts", tmp_path / "opt-slaprobe"
    args = [f"root@127.0.0.1:{sshd.port}", *install_args(world, kh, prefix), "--accept-new"]

    # 1. Interrupted in the middle (the installer is killed while pip installs): nothing to clean up by hand.
    p = subprocess.Popen(
        [*SLAPROBE, "agent", "install", *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    assert p.stderr is not None
    seen = []
    for line in p.stderr:
        seen.append(line)
        if "pip install" in line:
            p.send_signal(signal.SIGKILL)
            break
    p.wait(30)
    p.stderr.close()
    assert any("new host key ssh-ed25519 SHA256:" in s for s in seen), seen
    assert kh.read_text() == sshd.known_hosts_line()

    # 2. Rerun: completes; the agent enrols, registers and delivers results.
    r = cli("install", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "installed" in r.stdout and "1 of 1 hosts ok" in r.stdout, r.stdout
    name = os.uname().nodename.split(".")[0]
    (agent,) = [
        a
        for a in json.loads(run_cli("agent", "list", "--db", str(world["db"]), "--format", "json").stdout)[
            "agents"
        ]
        if a["name"] == name
    ]
    assert (agent["site"], agent["version"], agent["state"]) == ("lab", __version__, "online")
    wait_for(
        lambda: (
            query(
                Path(str(world["db"])),
                "SELECT count(*) FROM results r JOIN agents a ON a.id = r.agent_id WHERE a.name = ?",
                (name,),
            )[0][0]
            >= 2
        ),
        30,
        "results from the installed agent",
    )
    # What landed: secrets 0600/0700, no join file left, the manifest, the supervisor running.
    assert (prefix / "etc" / "agent.yaml").stat().st_mode & 0o777 == 0o600
    assert (prefix / "data").stat().st_mode & 0o777 == 0o700
    assert (prefix / "data" / "tls" / "agent.key").stat().st_mode & 0o777 == 0o600
    assert not (prefix / "etc" / "join.json").exists()
    manifest = json.loads((prefix / "manifest.json").read_text())
    assert manifest["version"] == __version__ and manifest["complete"] and manifest["service"] == "supervisor"
    sup = pid_alive(prefix / "run" / "supervisor.pid")
    agent_pid = pid_alive(prefix / "run" / "agent.pid")
    assert sup and agent_pid
    # No secret on any command line of the installed processes.
    for pid in (sup, agent_pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "token" not in cmdline and "BEGIN" not in cmdline, cmdline

    # 3. Second run changes nothing and says so; the agent was not restarted.
    r = cli("install", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unchanged" in r.stdout, r.stdout
    assert pid_alive(prefix / "run" / "agent.pid") == agent_pid

    # 4. The supervisor restarts a dead agent.
    os.kill(agent_pid, signal.SIGKILL)
    wait_for(
        lambda: (p := pid_alive(prefix / "run" / "agent.pid")) and p != agent_pid, 15, "the agent restarted"
    )

    # 5. Status.
    r = cli("status", *base_args(world, kh, prefix), f"root@127.0.0.1:{sshd.port}", "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    (st,) = json.loads(r.stdout)["hosts"]
    assert (st["result"], st["version"], st["name"]) == ("running", __version__, name)

    # 6. Upgrade of an up-to-date host changes nothing.
    r = cli(
        "upgrade",
        f"root@127.0.0.1:{sshd.port}",
        *install_args(world, kh, prefix, site=False),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unchanged" in r.stdout

    # 7. Uninstall leaves nothing behind: no prefix, no processes; a second uninstall finds nothing.
    r = cli("uninstall", *base_args(world, kh, prefix), f"root@127.0.0.1:{sshd.port}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "removed" in r.stdout
    assert not prefix.exists()
    for pid in (sup,):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    r = cli("uninstall", *base_args(world, kh, prefix), f"root@127.0.0.1:{sshd.port}")
    assert r.returncode == 0 and "absent" in r.stdout, r.stdout


def _settled_log_length(sshd: Sshd, quiet_s: float = 1.0, limit_s: float = 15.0) -> int:
    """The sshd log's length once it has stopped growing: earlier connections log late under load."""
    deadline = time.monotonic() + limit_s
    length, since = len(sshd.log()), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = len(sshd.log())
        if now != length:
            length, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return length


@needs_sshd
def test_unknown_host_is_refused_without_accept_new(
    world: dict[str, object], sshd: Sshd, tmp_path: Path
) -> None:
    kh, prefix = tmp_path / "known_hosts", tmp_path / "opt"
    before = _settled_log_length(sshd)  # after the fixture's own readiness probe has been logged
    r = cli("install", f"root@127.0.0.1:{sshd.port}", *install_args(world, kh, prefix))
    assert r.returncode == 1
    assert "host key of 127.0.0.1:" in r.stdout and "is unknown" in r.stdout and "--accept-new" in r.stdout, (
        r.stdout
    )
    assert not kh.exists() and not prefix.exists()
    assert "Connection from" not in sshd.log()[before:]  # not even a connection was made


@needs_sshd
def test_changed_host_key_aborts_before_authentication(
    world: dict[str, object], sshd: Sshd, tmp_path: Path
) -> None:
    kh, prefix = tmp_path / "known_hosts", tmp_path / "opt"
    kh.write_text(sshd.known_hosts_line())
    sshd.new_host_key()
    before = len(sshd.log())
    r = cli("install", f"root@127.0.0.1:{sshd.port}", *install_args(world, kh, prefix), "--accept-new")
    assert r.returncode == 1
    assert "HAS CHANGED" in r.stdout, r.stdout
    log = sshd.log()[before:]
    assert "Connection from" in log  # the key exchange happened ...
    assert "publickey" not in log and "Accepted" not in log and "Failed" not in log, (
        log
    )  # ... authentication never started
    assert kh.read_text().count("\n") == 1  # --accept-new never replaces a changed key
    assert not prefix.exists()


@needs_sshd
def test_unreachable_and_wrong_password_fail_only_their_host(
    world: dict[str, object], sshd: Sshd, tmp_path: Path
) -> None:
    other_key = keygen(tmp_path / "id_other")
    pw = Sshd(tmp_path / "sshd-pw", other_key, password_auth=True).start()
    try:
        kh, prefix = tmp_path / "known_hosts", tmp_path / "opt"
        kh.write_text(sshd.known_hosts_line() + pw.known_hosts_line())
        dead = free_port()
        inv = tmp_path / "fleet.txt"
        inv.write_text(
            f"root@127.0.0.1:{sshd.port} name=good-1\nroot@127.0.0.1:{dead}\nroot@127.0.0.1:{pw.port} name=pw-1\n"
        )
        t0 = time.monotonic()
        r = cli(
            "install",
            "-i",
            str(inv),
            *install_args(world, kh, prefix),
            "--accept-new",
            "--connect-timeout",
            "5",
            env={"SLAPROBE_SSH_PASSWORD": "not-the-password"},
        )
        assert r.returncode == 1, r.stdout + r.stderr
        rows = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.startswith("127.0.0.1:")}
        assert "installed" in rows[f"127.0.0.1:{sshd.port}"], r.stdout
        assert "cannot reach" in rows[f"127.0.0.1:{dead}"] and "refused" in rows[f"127.0.0.1:{dead}"], (
            r.stdout
        )
        assert (
            "authentication as root" in rows[f"127.0.0.1:{pw.port}"]
            and "failed" in rows[f"127.0.0.1:{pw.port}"]
        )
        assert "1 of 3 hosts ok" in r.stdout
        assert time.monotonic() - t0 < 120
        assert "not-the-password" not in r.stdout + r.stderr
    finally:
        pw.stop()
        cli(
            "uninstall",
            *base_args(world, tmp_path / "known_hosts", tmp_path / "opt"),
            f"root@127.0.0.1:{sshd.port}",
        )
