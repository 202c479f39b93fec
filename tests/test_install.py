"""`slaprobe agent install | upgrade | status | uninstall` against real OpenSSH servers on loopback.

The "remote" hosts are sshd instances on this machine (tests/sshd.py);
the install goes into a temporary prefix, the service user is root (no
system users are created on the CI machine) and, systemd not being PID 1
here, the fallback supervisor is what runs the agent. The collector is a
real subprocess with mutual TLS; an agent counts as installed only once it
has enrolled, registered and delivered results.

Time: each install, unpack or pip run on a "host" is this machine's CPU, and
the suite has a 10-minute budget on 2 cores. So the wheelhouse and the
runtime bundle are built once per module (the `world` fixture, whose bundle
build is also the subject of test_bundle_cache_builds_once_then_hits), and
the tests whose subject starts from an installed host share one
(`shared_host`) instead of installing their own first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from slaprobe import __version__
from slaprobe.install import bundle, templates, wheelhouse
from slaprobe.install.collector_side import CollectorSide
from slaprobe.install.errors import InstallError
from slaprobe.install.inventory import Target, load_inventory, parse_target
from slaprobe.install.plan import PREFLIGHT, InstallOptions, choose_method, claim
from tests.procs import SLAPROBE, enroll_port, query, run_cli, start_collector, wait_for
from tests.sshd import SshServer, free_port, keygen, why_not_as_root

why_not = why_not_as_root()
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
    # The runtime bundle (~10 s of 2 cores to build) is built once, in a cache of the module's own
    # that the CLI runs then find warm (XDG_CACHE_HOME). There a damaged entry for the same key and a
    # killed build's directory wait first, so this build is also test_bundle_cache_builds_once_then_hits's.
    cache = tmp / "cache"
    root = cache / "slaprobe" / "bundle"
    target = bundle.target_for(wheels)
    assert target is not None, "this interpreter's wheelhouse gives a bundle"
    bundle_key = bundle.key_of(wheels, target)
    root.mkdir(parents=True)
    (root / f"{bundle_key}.tar.gz").write_bytes(b"not the archive")
    (root / f"{bundle_key}.json").write_text(json.dumps({"sha256": "0" * 64, "size": 15, "key": bundle_key}))
    killed = root / ".0.0.9-old-build"  # what a build killed an hour ago left
    killed.mkdir()
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    runtime = bundle.ensure(wheels, root)
    assert runtime is not None
    xdg = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    yield {
        "wheelhouse": wheels.dir,
        "bundle": runtime,
        "bundle_cache": root,
        "killed_build": killed,
        "tmp": tmp,
        "tls": tls,
        "db": tmp / "slaprobe.db",
        "port": port,
        "enroll": enroll_port(proc),
        "key": key,
        "collector": proc,
    }
    if xdg is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = xdg
    assert proc.stop() == 0, proc.log()


@pytest.fixture
def sshd(world: dict[str, object], tmp_path: Path) -> Iterator[SshServer]:
    s = SshServer(tmp_path / "sshd", client_key=Path(str(world["key"]))).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def shared_host(
    world: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One host with the agent installed from the session's bundle, for the tests whose subject starts
    from an installed host (a first install costs ~10 s of this machine's 2 cores). Each of them
    leaves it installed that way; `installed_host` checks so before handing it to the next."""
    if why_not is not None:
        # The module's `needs_sshd` condition (no OpenSSH sshd on this machine: `make system-deps`
        # installs it, and CI does); a module fixture cannot carry the mark, so it skips itself.
        pytest.skip(why_not)
    tmp = tmp_path_factory.mktemp("shared-host")
    server = SshServer(tmp / "sshd", client_key=Path(str(world["key"]))).start()
    kh, prefix, inv = tmp / "known_hosts", tmp / "opt", tmp / "fleet.txt"
    kh.write_text(server.known_hosts_line())
    inv.write_text(f"root@127.0.0.1:{server.port} name=shared-1\n")
    host: dict[str, Any] = {
        "sshd": server,
        "prefix": prefix,
        "known_hosts": kh,
        "args": ["-i", str(inv), *install_args(world, kh, prefix)],
        "uninstall": ["-i", str(inv), *base_args(world, kh, prefix)],
    }
    try:
        h = _json_install(host["args"])
        assert (h["result"], h["method"]) == ("installed", "bundle"), h
        yield host
    finally:
        cli("uninstall", *host["uninstall"])
        server.stop()
        _kill_processes_under(tmp)


@pytest.fixture
def installed_host(world: dict[str, object], shared_host: dict[str, Any]) -> dict[str, Any]:
    """`shared_host`, checked from its files (it is this machine's directory): the session's bundle in
    force and the agent running; else installed again, so one test's failure is not the next one's."""
    b = world["bundle"]
    assert isinstance(b, bundle.Bundle)
    prefix = shared_host["prefix"]
    try:
        manifest = json.loads((prefix / "manifest.json").read_text())
        ready = (
            manifest.get("complete")
            and (manifest.get("mode"), manifest.get("bundle")) == ("bundle", b.key)
            and installed_bundle(prefix) == b.key
            and pid_alive(prefix / "run" / "agent.pid") is not None
        )
    except (OSError, ValueError, AssertionError):
        ready = False
    if not ready:
        h = _json_install(shared_host["args"])
        assert h["method"] == "bundle" and installed_bundle(prefix) == b.key, h
    return shared_host


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
    """``slaprobe agent ARGS``, the same click command, run in this process (click's test runner, in a
    thread so that a hang fails the test after ``timeout``): a new interpreter importing slaprobe
    costs ~1.3 CPU-s, and the module makes ~20 such runs. A run that must be killed midway is a
    process of its own (test_install_interrupted_rerun_unchanged_status_restart_uninstall)."""
    from click.testing import CliRunner

    from slaprobe.cli import main

    results: list[Any] = []
    worker = threading.Thread(
        target=lambda: results.append(CliRunner().invoke(main, ["agent", *args], env=env)), daemon=True
    )
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise AssertionError(f"slaprobe agent {' '.join(args)} did not end within {timeout:g}s")
    (r,) = results
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception  # a bug: its traceback, rather than exit status 1
    return subprocess.CompletedProcess(["slaprobe", "agent", *args], r.exit_code, r.stdout, r.stderr)


def pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


# ---- pure parts --------------------------------------------------------------------------------


def test_two_hosts_of_one_run_cannot_take_the_same_agent_name() -> None:
    """Cloned hosts that all call themselves "ubuntu" would enrol as one agent: the second fails."""
    claimed: dict[str, str] = {}
    a, b = Target("10.0.0.5"), Target("10.0.0.6", 2222)
    claim(claimed, "ubuntu", a)
    claim(claimed, "ubuntu", a)  # the same host again (a retry within the run) keeps its name
    with pytest.raises(
        InstallError, match=r"agent name 'ubuntu' is already taken by 10\.0\.0\.5 in this run"
    ):
        claim(claimed, "ubuntu", b)
    claim(claimed, "ubuntu-2", b)
    assert claimed == {"ubuntu": "10.0.0.5", "ubuntu-2": "10.0.0.6:2222"}


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
    inv.write_text("e.example prefix=/srv/my slaprobe\n")
    with pytest.raises(InstallError, match=r"expected key=value"):
        load_inventory(inv)
    with pytest.raises(ValueError, match=r"the prefix may hold only letters, digits"):
        templates.Layout("/srv/my slaprobe")
    with pytest.raises(ValueError, match=r"the prefix may hold only letters, digits"):
        templates.Layout("/srv/it's")
    inv.write_text("a.example colour=blue\n")
    with pytest.raises(InstallError, match=r"fleet.txt:1: expected key=value"):
        load_inventory(inv)
    inv.write_text("ops@f.example sudo=yes\ng.example sudo=No\nh.example\n")
    assert [t.sudo for t in load_inventory(inv)] == [True, False, None]  # None: --sudo decides
    inv.write_text("f.example\nops@g.example sudo=maybe\n")
    with pytest.raises(InstallError, match=r"fleet.txt:2: sudo= takes yes or no"):
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
    _kill_processes_under(tmp_path)


def _kill_processes_under(directory: Path) -> None:
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(directory) in part for part in proc.info["cmdline"] or []):
                proc.kill()
        except psutil.Error:
            pass


@needs_sshd
@pytest.mark.slow
def test_install_interrupted_rerun_unchanged_status_restart_uninstall(
    world: dict[str, object], sshd: SshServer, tmp_path: Path
) -> None:
    kh, prefix = tmp_path / "known_hosts", tmp_path / "opt-slaprobe"
    args = [f"root@127.0.0.1:{sshd.port}", *install_args(world, kh, prefix), "--accept-new"]

    # 1. Interrupted in the middle (the installer is killed while the host unpacks the runtime): nothing to clean up by hand.
    p = subprocess.Popen(
        [*SLAPROBE, "agent", "install", *args], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    assert p.stderr is not None
    seen = []
    for line in p.stderr:
        seen.append(line)
        if "unpack" in line:
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


def _settled_log_length(sshd: SshServer, quiet_s: float = 1.0, limit_s: float = 15.0) -> int:
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
    world: dict[str, object], sshd: SshServer, tmp_path: Path
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
def test_a_name_installed_on_another_host_is_refused_before_anything_is_sent(
    world: dict[str, object], installed_host: dict[str, Any], sshd: SshServer, tmp_path: Path
) -> None:
    """Another machine (another SSH host key) asking for the shared host's agent name is refused:
    enrolling the name again would replace that agent's key and cut it off."""
    kh, prefix, inv = tmp_path / "known_hosts", tmp_path / "opt", tmp_path / "fleet.txt"
    kh.write_text(sshd.known_hosts_line())
    inv.write_text(f"root@127.0.0.1:{sshd.port} name=shared-1\n")
    try:
        r = cli("install", "-i", str(inv), "--format", "json", *install_args(world, kh, prefix))
    finally:
        if prefix.exists():  # the refusal failed: do not leave a second agent running
            cli("uninstall", "-i", str(inv), *base_args(world, kh, prefix))
    assert r.returncode == 1, r.stdout + r.stderr
    (h,) = json.loads(r.stdout)["hosts"]
    shared_port = installed_host["sshd"].port
    assert h["detail"].startswith(
        f"agent name 'shared-1' belongs to 127.0.0.1:{shared_port} (host key SHA256:"
    )
    assert "--take-over-name" in h["detail"], h
    assert not prefix.exists()  # refused before anything was created or sent


def test_the_collector_side_keeps_each_installed_name_on_its_host(tmp_path: Path) -> None:
    """check / bind / unbind on a real store, as the installer drives them."""
    from collector.store import open_store

    db = tmp_path / "c.db"
    open_store(db).conn.close()
    side = CollectorSide(db, tmp_path, "127.0.0.1:7431", "127.0.0.1:7432")
    side.check_name_host("edge-1", "SHA256:aaa", "10.0.0.5", take_over=False)  # a new name: fine
    side.bind_name_host("edge-1", "SHA256:aaa", "10.0.0.5")
    side.check_name_host("edge-1", "SHA256:aaa", "10.0.0.9", take_over=False)  # same host, new address
    with pytest.raises(
        InstallError, match=r"agent name 'edge-1' belongs to 10\.0\.0\.5 \(host key SHA256:aaa"
    ):
        side.check_name_host("edge-1", "SHA256:bbb", "10.0.0.6", take_over=False)
    side.check_name_host("edge-1", "SHA256:bbb", "10.0.0.6", take_over=True)
    side.unbind_name_host("edge-1", "SHA256:bbb")  # not its host: nothing freed
    with pytest.raises(InstallError):
        side.check_name_host("edge-1", "SHA256:bbb", "10.0.0.6", take_over=False)
    side.unbind_name_host("edge-1", "SHA256:aaa")  # uninstalled there: the name is free
    side.check_name_host("edge-1", "SHA256:bbb", "10.0.0.6", take_over=False)
    side.bind_name_host("edge-1", "SHA256:bbb", "10.0.0.6")
    with pytest.raises(InstallError, match=r"belongs to 10\.0\.0\.6"):
        side.check_name_host("edge-1", "SHA256:aaa", "10.0.0.5", take_over=False)


@needs_sshd
def test_changed_host_key_aborts_before_authentication(
    world: dict[str, object], sshd: SshServer, tmp_path: Path
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


# ---- the runtime bundle ---------------------------------------------------------------------------


def installed_bundle(prefix: Path) -> str:
    """The runtime key the host's venv points at; checks the venv holds nothing else."""
    (site,) = (prefix / "venv" / "lib").glob("python3.*/site-packages")
    assert sorted(p.name for p in site.iterdir() if p.name != "__pycache__") == [bundle.PTH]
    target = Path((site / bundle.PTH).read_text().strip())
    assert target.parent == prefix / "runtime" and (target / "slaprobe" / "__init__.py").exists()
    return target.name


def agent_code_dirs(prefix: Path) -> set[str]:
    """Where the running agent's native extensions were loaded from (prefix-relative directories)."""
    pid = pid_alive(prefix / "run" / "agent.pid")
    assert pid, "the agent is not running"
    files = {Path(ln.split()[-1]) for ln in Path(f"/proc/{pid}/maps").read_text().splitlines()}
    return {
        "/".join(f.relative_to(prefix).parts[:2])
        for f in files
        if f.suffix == ".so" and f.is_relative_to(prefix)
    }


@needs_sshd
def test_decision_bundle_or_wheels_from_the_hosts_real_python(
    world: dict[str, object], sshd: SshServer, tmp_path: Path
) -> None:
    """The preflight's own output from the sshd host's python3, then the same host with another Python,
    machine or C library: each takes the path it can run, with the reason."""
    r = subprocess.run(
        sshd.ssh_args("python3", "-", str(tmp_path / "opt"), "root", templates.UNIT_PATH),
        input=PREFLIGHT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    host = json.loads(r.stdout)
    wh = wheelhouse.load(Path(str(world["wheelhouse"])))
    b = world["bundle"]
    assert isinstance(b, bundle.Bundle)
    assert b.target.glibc is not None and b.target.glibc >= (2, 17)  # cryptography's wheel is manylinux
    side = CollectorSide(tmp_path / "db", tmp_path, "127.0.0.1:1", "127.0.0.1:2")

    def opts(method: str = "auto", with_bundle: bool = True) -> InstallOptions:
        lay = templates.Layout(str(tmp_path / "opt"))
        return InstallOptions(lay, "root", "auto", side, wh, bundle=b if with_bundle else None, method=method)

    # This host, as it is: the bundle.
    assert bundle.fits(b.target, host) is None
    assert choose_method(opts(), host) == ("bundle", "runtime bundle")
    # Another minor version of Python: neither the bundle nor this wheelhouse; the way out is named.
    py312 = {**host, "python": [3, 12], "cache_tag": "cpython-312"}
    assert bundle.fits(b.target, py312) == "its python3 is cpython-312, the bundle is for cpython-311"
    with pytest.raises(InstallError, match=r"Python 3\.12 on x86_64.*give a wheelhouse for this host"):
        choose_method(opts(), py312)
    # Another machine.
    arm = {**host, "machine": "aarch64"}
    assert bundle.fits(b.target, arm) == f"it is aarch64, the bundle is for {b.target.machine}"
    # Same Python and machine, a C library too old for a wheel in the bundle: pip on the host decides.
    old = {**host, "libc": "glibc 2.17"}
    reason = bundle.fits(b.target, old)
    assert (
        reason
        == f"it has glibc 2.17, the bundle needs at least glibc {b.target.glibc[0]}.{b.target.glibc[1]}"
    )
    assert choose_method(opts(), old) == ("wheels", f"pip on the host: {reason}")
    assert bundle.fits(b.target, {**host, "tar": False}) == "it has no tar"
    musl = {**host, "libc": None}
    assert "it has no glibc" in (bundle.fits(b.target, musl) or "")
    # Forced either way.
    assert choose_method(opts("wheels"), host) == ("wheels", "pip on the host: --method wheels")
    with pytest.raises(InstallError, match=r"the runtime bundle does not fit this host: it has glibc 2\.17"):
        choose_method(opts("bundle"), old)
    # No bundle (a wheelhouse for another Python than the installer's): wheels.
    assert choose_method(opts(with_bundle=False), host)[0] == "wheels"


def test_bundle_cache_builds_once_then_hits(world: dict[str, object]) -> None:
    """The world fixture built the session's bundle in a cache where a damaged entry for the same key
    (every host would refuse it) and a killed build's directory waited: the entry was built again, not
    handed out, and the leftovers pruned. Asked again, the cache hands out that build."""
    wh = wheelhouse.load(Path(str(world["wheelhouse"])))
    built, root = world["bundle"], Path(str(world["bundle_cache"]))
    assert isinstance(built, bundle.Bundle)
    assert built.build_s > 0 and built.path == root / f"{built.key}.tar.gz"
    assert wheelhouse._file_sha256(built.path) == built.sha256 and built.path.stat().st_size == built.size
    assert json.loads((root / f"{built.key}.json").read_text())["sha256"] == built.sha256
    assert not Path(str(world["killed_build"])).exists()
    stat = built.path.stat()
    again = bundle.ensure(wh, root)
    assert again is not None and again.build_s == 0  # a hit: nothing built
    assert (again.key, again.sha256, again.path) == (built.key, built.sha256, built.path)
    assert again.path.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(p.name for p in root.iterdir()) == [
        f".{built.key}.lock",
        f"{built.key}.json",
        f"{built.key}.tar.gz",
    ]
    # The archive: the agent's packages with bytecode for this Python, no pip, no scripts with our paths.
    import tarfile

    with tarfile.open(built.path) as tar:
        names = set(tar.getnames())
        members = tar.getmembers()
    assert "slaprobe/cli.py" in names and "grpc/__init__.py" in names and bundle.META in names
    assert f"slaprobe/__pycache__/cli.{sys.implementation.cache_tag}.pyc" in names
    assert not any(n.split("/")[0] in ("pip", "bin") or n.startswith("pip-") for n in names)
    assert all(m.uid == 0 and m.mode & 0o022 == 0 for m in members)


@needs_sshd
@pytest.mark.slow
def test_one_bundle_for_several_hosts_while_unreachable_and_refused_hosts_fail_alone(
    world: dict[str, object], tmp_path: Path
) -> None:
    """Three hosts take the same archive in one run and their agents run from it; in the same run an
    unreachable host and one refusing the login fail, each alone, and the others are not held up."""
    key = Path(str(world["key"]))
    servers = [SshServer(tmp_path / f"sshd-{i}", client_key=key).start() for i in range(3)]
    # Authorizes another key than the installer's: the login falls back to the (wrong) password.
    pw = SshServer(
        tmp_path / "sshd-pw",
        {"PasswordAuthentication": "yes", "PermitRootLogin": "yes"},
        client_key=keygen(tmp_path / "id_other"),
    ).start()
    try:
        kh = tmp_path / "known_hosts"
        kh.write_text("".join(s.known_hosts_line() for s in [*servers, pw]))
        prefixes = [tmp_path / f"host-{i}" / "opt" for i in range(3)]
        good = "".join(
            f"root@127.0.0.1:{s.port} name=multi-{i} prefix={p}\n"
            for i, (s, p) in enumerate(zip(servers, prefixes, strict=True))
        )
        dead = free_port()
        inv, fleet = tmp_path / "all.txt", tmp_path / "fleet.txt"
        inv.write_text(f"{good}root@127.0.0.1:{dead}\nroot@127.0.0.1:{pw.port} name=pw-1\n")
        fleet.write_text(good)
        # The bundle cache is the one the world fixture built into (building is
        # test_bundle_cache_builds_once_then_hits's subject): prepared once for the whole run.
        b = world["bundle"]
        assert isinstance(b, bundle.Bundle)
        common = [*install_args(world, kh, tmp_path / "unused"), "--format", "json"]
        t0 = time.monotonic()
        r = cli(
            "install",
            "-i",
            str(inv),
            *common,
            "--accept-new",
            "--connect-timeout",
            "5",
            env={"SLAPROBE_SSH_PASSWORD": "not-the-password"},
        )
        assert r.returncode == 1, r.stdout + r.stderr
        assert time.monotonic() - t0 < 120
        assert "not-the-password" not in r.stdout + r.stderr
        assert r.stderr.count("preparing the runtime bundle") == 1
        (prepared,) = [ln for ln in r.stderr.splitlines() if ln.startswith("runtime bundle:")]
        assert prepared.endswith(f"cached: {b.path}"), prepared
        hosts = json.loads(r.stdout)["hosts"]
        assert [h["host"] for h in hosts[3:]] == [f"127.0.0.1:{dead}", f"127.0.0.1:{pw.port}"]
        failed_dead, failed_pw = hosts[3:]
        assert not failed_dead["ok"] and failed_dead["result"] == "failed"
        assert "cannot reach" in failed_dead["detail"] and "refused" in failed_dead["detail"], failed_dead
        assert not failed_pw["ok"] and failed_pw["result"] == "failed"
        assert "authentication as root" in failed_pw["detail"] and "failed" in failed_pw["detail"], failed_pw
        hosts = hosts[:3]
        assert [(h["ok"], h["result"]) for h in hosts] == [(True, "installed")] * 3
        assert {h["method"] for h in hosts} == {"bundle"}
        for h in hosts:  # one archive each, plus a few kB of manifest, config and scripts
            assert b.size <= h["bytes_uploaded"] < b.size + 50_000
        keys = {installed_bundle(p) for p in prefixes}
        assert keys == {b.key}
        for p in prefixes:
            assert agent_code_dirs(p) == {f"runtime/{b.key}"}  # grpc, cryptography, ... from the bundle
            assert not (p / "wheels").exists() and not list((p / "bundles").iterdir())
            assert json.loads((p / "manifest.json").read_text())["mode"] == "bundle"

        # Again: nothing sent, nothing changed.
        r = cli("install", "-i", str(fleet), *common)
        assert r.returncode == 0, r.stdout + r.stderr
        hosts = json.loads(r.stdout)["hosts"]
        assert [h["result"] for h in hosts] == ["unchanged"] * 3
        assert all(h["bytes_uploaded"] < 5_000 for h in hosts)
    finally:
        cli(
            "uninstall",
            "-i",
            str(tmp_path / "fleet.txt"),
            *base_args(world, tmp_path / "known_hosts", tmp_path),
        )
        pw.stop()
        for s in servers:
            s.stop()


def _json_install(args: list[str]) -> dict[str, object]:
    r = cli("install", *args, "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    (h,) = json.loads(r.stdout)["hosts"]
    assert isinstance(h, dict)
    return h


@needs_sshd
@pytest.mark.slow
def test_interrupted_upload_and_unpack_are_completed_on_rerun(
    world: dict[str, object], installed_host: dict[str, Any]
) -> None:
    """From an installed host, what a run killed in the package step leaves: each is completed."""
    prefix, args = installed_host["prefix"], installed_host["args"]
    b = world["bundle"]
    assert isinstance(b, bundle.Bundle)
    runtime, bundles = prefix / "runtime" / b.key, prefix / "bundles"
    manifest = prefix / "manifest.json"

    def interrupted_before_the_switch() -> None:
        """What a run killed in the package step leaves: the manifest and the .pth still name the old runtime."""
        m = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**m, "bundle": "0.0.9-old", "version": "0.0.9"}))
        shutil.rmtree(runtime)
        (site,) = (prefix / "venv" / "lib").glob("python3.*/site-packages")
        (site / bundle.PTH).write_text(str(prefix / "runtime" / "0.0.9-old") + "\n")
        (prefix / "runtime" / "0.0.9-old" / "slaprobe").mkdir(parents=True)  # the runtime being replaced

    # 1. Killed while unpacking: the archive is whole on the host, the runtime half unpacked.
    interrupted_before_the_switch()
    shutil.copy(b.path, bundles / f"{b.key}.tar.gz")
    half = prefix / "runtime" / f".{b.key}.part"
    (half / "slaprobe").mkdir(parents=True)
    (half / "slaprobe" / "__init__.py").write_text("raise SystemExit('half unpacked')\n")
    h = _json_install(args)
    assert h["result"] == "installed", h
    assert int(str(h["bytes_uploaded"])) < 50_000  # the archive already there was used, not sent again
    assert installed_bundle(prefix) == b.key and not half.exists()
    assert sorted(p.name for p in (prefix / "runtime").iterdir()) == [b.key]
    assert not list(bundles.iterdir())
    assert json.loads(manifest.read_text())["bundle"] == b.key
    assert agent_code_dirs(prefix) == {f"runtime/{b.key}"}

    # 2. Killed while uploading: a partial archive. Only the rest is sent.
    interrupted_before_the_switch()
    cut = b.size // 2
    (bundles / f"{b.key}.tar.gz.part").write_bytes(b.path.read_bytes()[:cut])
    h = _json_install(args)
    assert h["result"] == "installed", h
    assert b.size - cut <= int(str(h["bytes_uploaded"])) < b.size - cut + 50_000
    assert installed_bundle(prefix) == b.key and not list(bundles.iterdir())
    assert agent_code_dirs(prefix) == {f"runtime/{b.key}"}

    # 2b. A partial file that is no prefix of the archive: resumed, caught by the hash, sent whole.
    interrupted_before_the_switch()
    (bundles / f"{b.key}.tar.gz.part").write_bytes(b"\0" * cut)
    h = _json_install(args)
    assert h["result"] == "installed", h
    assert 1.4 * b.size < int(str(h["bytes_uploaded"])) < 1.5 * b.size + 50_000
    assert installed_bundle(prefix) == b.key and not list(bundles.iterdir())

    # 3. An archive of the right size but damaged: caught by its hash on the host, sent again.
    interrupted_before_the_switch()
    data = bytearray(b.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundles / f"{b.key}.tar.gz").write_bytes(bytes(data))
    h = _json_install(args)
    assert h["result"] == "installed", h
    assert b.size <= int(str(h["bytes_uploaded"])) < b.size + 50_000
    assert installed_bundle(prefix) == b.key and not list(bundles.iterdir())
    r = subprocess.run(
        [str(prefix / "venv" / "bin" / "slaprobe"), "--version"], capture_output=True, text=True
    )
    assert r.stdout.strip().endswith(__version__), r.stdout + r.stderr

    # And then nothing to do.
    assert _json_install(args)["result"] == "unchanged"


@needs_sshd
@pytest.mark.slow
def test_pip_fallback_and_switching_to_the_bundle_and_back(
    world: dict[str, object], installed_host: dict[str, Any]
) -> None:
    """--method wheels is the path hosts with another Python take (pip on the host). A host installed
    from the bundle moves to it (the runtime removed, a venv of its own: exactly what a first install
    with pip does from there on), and an install made that way (or by an older slaprobe) moves to the
    bundle on the next run."""
    prefix, args = installed_host["prefix"], installed_host["args"]
    b = world["bundle"]
    assert isinstance(b, bundle.Bundle)

    h = _json_install([*args, "--method", "wheels"])
    assert (h["result"], h["method"]) == ("installed", "wheels"), h
    assert "pip on the host: --method wheels" in str(h["detail"])
    (site,) = (prefix / "venv" / "lib").glob("python3.*/site-packages")
    assert (site / "slaprobe").is_dir() and (prefix / "wheels").is_dir()
    assert not (prefix / "runtime").exists() and not (prefix / "bundles").exists()
    assert not (site / bundle.PTH).exists()
    assert agent_code_dirs(prefix) == {"venv/lib"}
    assert json.loads((prefix / "manifest.json").read_text())["mode"] == "wheels"
    assert _json_install([*args, "--method", "wheels"])["result"] == "unchanged"

    h = _json_install(args)
    assert (h["result"], h["method"]) == ("installed", "bundle"), h
    assert installed_bundle(prefix) == b.key  # a fresh venv: pip's packages are gone
    assert not (prefix / "wheels").exists()
    assert agent_code_dirs(prefix) == {f"runtime/{b.key}"}
    assert json.loads((prefix / "manifest.json").read_text())["mode"] == "bundle"


def test_the_wheel_carries_every_package_and_is_built_from_the_source_files_only(tmp_path: Path) -> None:
    """A wheel missing a subpackage (collector.sla once was) or carrying a deleted module breaks hosts.

    ``build_wheel`` is how ``wheelhouse.ensure`` makes slaprobe's wheel (the dependencies' wheels are
    pip's business): built here into a directory of its own, while a stale module sits in build/.
    """
    import zipfile

    from slaprobe.install.wheelhouse import build_wheel, source_files, source_tree

    root = source_tree()
    assert root is not None
    packages = {
        str(p.parent.relative_to(root)).replace("/", ".")
        for pkg in ("slaprobe", "agent", "collector", "probes", "protos")
        for p in (root / pkg).rglob("__init__.py")
    }
    names = source_files(root)
    assert {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("__init__.py")} == packages
    (root / "build" / "lib" / "collector").mkdir(parents=True, exist_ok=True)
    stale = root / "build" / "lib" / "collector" / "deleted_module.py"
    stale.write_text("raise SystemExit('stale')\n")
    out = tmp_path / "wheels"
    out.mkdir()
    try:
        wheel = build_wheel(root, out)
    finally:
        stale.unlink()
    assert wheel.name.startswith(f"slaprobe-{__version__}-") and list(out.iterdir()) == [wheel]
    inside = {
        n.rsplit("/", 1)[0].replace("/", ".")
        for n in zipfile.ZipFile(wheel).namelist()
        if n.endswith("__init__.py")
    }
    assert packages <= inside
    assert "collector/deleted_module.py" not in zipfile.ZipFile(wheel).namelist()


# ---- a login that is not root: --sudo ------------------------------------------------------------


@pytest.fixture
def sudo_logins(world: dict[str, object], tmp_path: Path) -> Iterator[tuple[SshServer, str, str]]:
    """Two real non-root logins on a real sshd: one that may become root with passwordless sudo, one that
    may not. Most cloud images refuse root logins, so this is how those hosts are installed."""
    if why_not is not None:
        pytest.skip(why_not)
    if os.geteuid() != 0 or shutil.which("sudo") is None or shutil.which("useradd") is None:
        # Honest: creating the logins needs root, and sudo comes from `make system-deps` (CI has both).
        pytest.skip("needs root, useradd and sudo (make system-deps installs sudo)")
    tag = f"{os.getpid() % 100000}"
    sudoer, plain = f"slp-sudo-{tag}", f"slp-nosudo-{tag}"
    rule = Path(f"/etc/sudoers.d/slaprobe-test-{tag}")
    # sshd reads a user's authorized keys as that user: a directory they can read, outside tmp_path.
    keys = Path(f"/tmp/slaprobe-test-keys-{tag}")
    key = Path(str(world["key"]))
    try:
        for user in (sudoer, plain):
            subprocess.run(
                ["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/bin/sh", user],
                check=True,
            )
            subprocess.run(["usermod", "-p", "*", user], check=True)  # no password, but not locked (sshd)
        rule.write_text(f"{sudoer} ALL=(ALL) NOPASSWD: ALL\n")
        rule.chmod(0o440)
        keys.mkdir(mode=0o755)
        for user in (sudoer, plain):
            (keys / user).write_text(Path(f"{key}.pub").read_text())
            (keys / user).chmod(0o644)
        server = SshServer(
            tmp_path / "sshd-sudo",
            {"AuthorizedKeysFile": f"{tmp_path / 'sshd-sudo' / 'authorized_keys'} {keys}/%u"},
            client_key=key,
        ).start()
        try:
            yield server, sudoer, plain
        finally:
            server.stop()
    finally:
        rule.unlink(missing_ok=True)
        shutil.rmtree(keys, ignore_errors=True)
        for user in (sudoer, plain):
            subprocess.run(["pkill", "-KILL", "-u", user], check=False)
            subprocess.run(["userdel", user], check=False, capture_output=True)


@needs_sshd
@pytest.mark.slow
def test_a_login_that_is_not_root_installs_through_sudo_and_one_without_sudo_fails_alone(
    world: dict[str, object], sudo_logins: tuple[SshServer, str, str], tmp_path: Path
) -> None:
    """``--sudo``: the login user becomes root with ``sudo -n`` for every step; uploads land in its own
    0700 staging directory first and nothing of them stays there. A login sudo refuses fails before
    anything is sent, with what to do."""
    server, sudoer, plain = sudo_logins
    kh, prefix = tmp_path / "known_hosts", tmp_path / "opt"
    kh.write_text(server.known_hosts_line())
    inv = tmp_path / "fleet.txt"
    inv.write_text(f"{sudoer}@127.0.0.1:{server.port} name=sudo-1\n")
    before = set(Path("/tmp").glob("slaprobe-install.*"))

    h = _json_install(["-i", str(inv), *install_args(world, kh, prefix), "--sudo"])
    assert (h["ok"], h["result"], h["method"]) == (True, "installed", "bundle"), h
    # The login was the non-root user, and the prefix is in a directory only root may enter: every
    # file got there through sudo.
    assert f"Accepted publickey for {sudoer} " in server.log()
    assert "Accepted publickey for root " not in server.log()
    assert tmp_path.stat().st_uid == 0 and tmp_path.stat().st_mode & 0o077 == 0
    manifest = json.loads((prefix / "manifest.json").read_text())
    assert manifest["complete"] and manifest["name"] == "sudo-1"
    for path in (prefix / "manifest.json", prefix / "etc" / "agent.yaml"):
        assert path.stat().st_uid == 0, path  # put in place by root, not left the login user's
    assert (prefix / "etc" / "agent.yaml").stat().st_mode & 0o777 == 0o600
    assert pid_alive(prefix / "run" / "agent.pid"), "the agent is not running"
    assert set(Path("/tmp").glob("slaprobe-install.*")) == before, "a staging directory stayed behind"

    # The same from the inventory's sudo=yes, without the flag: nothing to do.
    inv.write_text(f"{sudoer}@127.0.0.1:{server.port} name=sudo-1 sudo=yes\n")
    assert _json_install(["-i", str(inv), *install_args(world, kh, prefix)])["result"] == "unchanged"

    # A login that sudo does not let become root: that host fails, clearly, and nothing is sent.
    other = tmp_path / "opt-plain"
    r = cli(
        "install",
        f"{plain}@127.0.0.1:{server.port}",
        *install_args(world, kh, other),
        "--sudo",
        "--format",
        "json",
    )
    assert r.returncode == 1, r.stdout + r.stderr
    (failed,) = json.loads(r.stdout)["hosts"]
    assert not failed["ok"] and "without a password" in failed["detail"] and "NOPASSWD" in failed["detail"], (
        failed
    )
    assert f"does not make {plain} root" in failed["detail"], failed
    assert not other.exists()

    r = cli("uninstall", "-i", str(inv), *base_args(world, kh, prefix))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not prefix.exists()
