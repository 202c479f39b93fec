"""The remote steps for one host, driven by the manifest the host keeps (``PREFIX/manifest.json``).

Install goes through the steps below; each step compares what it would
write with what the host already has (the manifest's hashes, and the files'
own hashes read in the preflight) and does nothing when they match, so a
second run changes nothing and reports ``unchanged``. The manifest is
rewritten after every step that changed something, so a run interrupted at
any point resumes where it stopped (an archive already on the host is not
uploaded again, a half-unpacked runtime is unpacked again, uploads skip
wheels already on the host with the right hash).

=============  ==============================================================
preflight      one remote Python script: Python version, systemd, user, manifest, file hashes
user           ``useradd --system`` of the service user if it does not exist (recorded: uninstall removes it)
dirs           the prefix layout with its owners and modes
package        the runtime bundle (built once here, see ``bundle``): upload, check, unpack, bare venv, switch;
               or, where the bundle does not fit the host's Python: upload missing wheels, pip ``--no-index``
enrol          token in the collector DB → 0600 join file → ``slaprobe agent enroll`` on the host → delete
config         ``etc/agent.yaml``, 0600, owned by the service user
service        the systemd unit, or the fallback supervisor script
start          (re)start when anything changed or the agent is not running
wait           until the collector has heard from the agent, else the reason from the agent's log
=============  ==============================================================
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slaprobe.install import templates
from slaprobe.install.bundle import PTH, UNPACK, Bundle, fits
from slaprobe.install.collector_side import CollectorSide
from slaprobe.install.errors import EnrolError, InstallError, RemoteError
from slaprobe.install.inventory import Target, check_name
from slaprobe.install.ssh import Session, SshOptions, q, sha256
from slaprobe.install.templates import UNIT_NAME, UNIT_PATH, Layout
from slaprobe.install.wheelhouse import Wheelhouse

Progress = Callable[[str], None]
MIN_PYTHON = (3, 11)
RECENT_S = 60.0  # an unchanged agent heard from this recently counts as seen (heartbeat is 15 s)

# Runs on the host with its python3 (stdin), argv: prefix, service user, unit path.
PREFLIGHT = r"""
import hashlib, json, os, platform, pwd, shutil, sys
prefix, user, unit = sys.argv[1:4]
def h(p):
    try:
        with open(p, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None
try:
    libc = os.confstr("CS_GNU_LIBC_VERSION")
except (ValueError, OSError):
    libc = None
out = {"python": list(sys.version_info[:2]), "machine": platform.machine(), "uid": os.getuid(),
       "cache_tag": sys.implementation.cache_tag, "libc": libc, "tar": shutil.which("tar") is not None,
       "hostname": platform.node(), "systemd": os.path.isdir("/run/systemd/system"),
       "venv": os.path.exists(prefix + "/venv/bin/python"), "cert": os.path.exists(prefix + "/data/tls/agent.crt"),
       "prefix_exists": os.path.isdir(prefix)}
try:
    import venv
    out["has_venv"] = True
except ImportError:
    out["has_venv"] = False
try:
    out["user"] = pwd.getpwnam(user).pw_uid
except KeyError:
    out["user"] = None
try:
    with open(prefix + "/manifest.json") as f:
        out["manifest"] = json.load(f)
except (OSError, ValueError):
    out["manifest"] = None
out["files"] = {"config": h(prefix + "/etc/agent.yaml"), "unit": h(unit), "supervisor": h(prefix + "/bin/supervise")}
wd = prefix + "/wheels"
out["wheels"] = sorted(os.listdir(wd)) if os.path.isdir(wd) else []
rd, bd = prefix + "/runtime", prefix + "/bundles"
out["runtimes"] = sorted(os.listdir(rd)) if os.path.isdir(rd) else []
out["bundles"] = {n: os.path.getsize(bd + "/" + n) for n in os.listdir(bd)} if os.path.isdir(bd) else {}
try:
    import sysconfig
    site = sysconfig.get_path("purelib", "venv", vars={"base": prefix + "/venv", "platbase": prefix + "/venv"})
    with open(site + "/" + "@PTH@") as f:
        out["pth"] = f.read().strip()
except (OSError, KeyError):
    out["pth"] = None
pid = None
try:
    with open(prefix + "/run/supervisor.pid") as f:
        pid = int(f.read().strip())
    os.kill(pid, 0)
    out["supervisor_running"] = True
except (OSError, ValueError):
    out["supervisor_running"] = False
print(json.dumps(out))
""".replace("@PTH@", PTH)


@dataclass(frozen=True)
class InstallOptions:
    layout: Layout
    service_user: str
    service_manager: str  # "auto", "systemd" or "supervisor"
    collector: CollectorSide
    wheelhouse: Wheelhouse | None
    site: str | None = None
    wait_s: float = 60.0
    bundle: Bundle | None = None  # None: every host installs with pip from the wheelhouse
    method: str = "auto"  # "auto": the bundle where it fits, else the wheelhouse; or "bundle", "wheels"
    # Agent names taken by the hosts of this run so far (name -> host): two hosts that both
    # default to their host name (cloned images: "ubuntu", "localhost") must not enrol as one agent.
    claimed: dict[str, str] = field(default_factory=dict, compare=False)
    take_over_name: bool = False  # give a name held by another host (another SSH key) to this one


@dataclass
class HostResult:
    target: Target
    ok: bool
    outcome: str
    version: str = "-"
    seconds: float = 0.0
    detail: str = ""
    bytes_uploaded: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def claim(claimed: dict[str, str], name: str, t: Target) -> None:
    """Take ``name`` for host ``t`` in this run, or fail this host: the name belongs to another.

    Enrolling a name again replaces that agent's key at the collector (a reinstall
    does that on purpose), so two hosts under one name would silently become one
    agent whose other half is rejected. The first host to claim a name keeps it.
    """
    other = claimed.setdefault(name, t.label)
    if other != t.label:
        raise InstallError(
            f"agent name {name!r} is already taken by {other} in this run"
            " (both hosts call themselves that): give each host its own name= in the inventory"
        )


class Host:
    """One host's session plus what the preflight learnt about it."""

    def __init__(self, s: Session, layout: Layout, user: str, say: Progress) -> None:
        self.s = s
        self.layout = layout
        self.user = user
        self.say = say
        self.info: dict[str, Any] = {}
        self.manifest: dict[str, Any] = {}

    async def preflight(self) -> None:
        self.say("preflight")
        out = await self.s.run(
            "preflight",
            "command -v python3 >/dev/null || { echo 'python3 not found' >&2; exit 127; }; exec python3 - "
            + q(self.layout.prefix, self.user, UNIT_PATH),
            input=PREFLIGHT,
        )
        self.info = json.loads(out)
        self.manifest = dict(self.info["manifest"] or {})
        py = tuple(self.info["python"])
        if py < MIN_PYTHON:
            raise InstallError(
                f"{self.s.target.label} has Python {py[0]}.{py[1]}; slaprobe needs 3.11 or newer"
            )

    @property
    def root(self) -> bool:
        return int(self.info["uid"]) == 0

    def manager(self, wanted: str) -> str:
        systemd = bool(self.info["systemd"])
        if wanted == "systemd" and not systemd:
            raise InstallError("systemd is not running on this host (use --service-manager supervisor)")
        if wanted == "auto":
            wanted = "systemd" if systemd and self.root else "supervisor"
        if wanted == "systemd" and not self.root:
            raise InstallError("installing a systemd unit needs root on the host")
        return wanted

    async def save_manifest(self) -> None:
        self.manifest["updated_ns"] = time.time_ns()
        data = json.dumps(self.manifest, indent=1, sort_keys=True).encode()
        await self.s.put_bytes(self.layout.manifest, data, 0o644)

    async def running(self, manager: str) -> bool:
        if manager == "systemd":
            out = await self.s.run("status", f"systemctl is-active {UNIT_NAME}", check=False)
            return out.strip() == "active"
        return bool(self.info["supervisor_running"])

    async def stop(self, manager: str) -> None:
        if manager == "systemd":
            await self.s.run("stop", f"systemctl stop {UNIT_NAME}", check=False)
            return
        pid = q(self.layout.supervisor_pid)
        await self.s.run(
            "stop",
            f'if [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then p=$(cat {pid}); kill -TERM "$p";'
            ' i=0; while kill -0 "$p" 2>/dev/null; do i=$((i+1)); [ $i -le 150 ] || { echo "supervisor'
            ' did not stop" >&2; exit 1; }; sleep 0.2; done; fi',
        )

    async def start(self, manager: str) -> None:
        if manager == "systemd":
            await self.s.run(
                "start",
                f"systemctl daemon-reload && systemctl enable {UNIT_NAME} && systemctl restart {UNIT_NAME}",
            )
            return
        await self.stop(manager)
        pid = q(self.layout.supervisor_pid)
        await self.s.run(
            "start",
            f"setsid {q(self.layout.supervisor)} </dev/null >/dev/null 2>&1 & i=0;"
            f' while ! [ -s {pid} ]; do i=$((i+1)); [ $i -le 50 ] || {{ echo "supervisor did not start" >&2; exit 1; }}; sleep 0.1; done',
        )

    async def log_tail(self, manager: str, lines: int = 12) -> str:
        if manager == "systemd":
            cmd = f"journalctl -u {UNIT_NAME} -n {lines} --no-pager -o cat"
        else:
            cmd = f"tail -n {lines} {q(self.layout.log)}"
        return (await self.s.run("log", cmd + " 2>&1", check=False)).strip()


def choose_method(opts: InstallOptions, host: dict[str, Any]) -> tuple[str, str]:
    """How this host gets the agent's code: ("bundle" | "wheels", why), from its preflight.

    The bundle where it fits the host's Python, machine and C library; else pip on the host
    from the wheelhouse, which must then be for the host's Python and machine.
    """
    py = ".".join(str(x) for x in host["python"][:2])
    no_bundle = "--method wheels" if opts.method == "wheels" else None
    if no_bundle is None:
        no_bundle = "no bundle (the wheelhouse is not for this Python)" if opts.bundle is None else None
    if no_bundle is None:
        assert opts.bundle is not None
        no_bundle = fits(opts.bundle.target, host)
        if no_bundle is None:
            return "bundle", "runtime bundle"
    if opts.method == "bundle":
        raise InstallError(f"the runtime bundle does not fit this host: {no_bundle}")
    wh = opts.wheelhouse
    assert wh is not None
    if py != wh.python or host["machine"] != wh.machine:
        raise InstallError(
            f"host has Python {py} on {host['machine']}, the wheelhouse is for Python {wh.python} on"
            f" {wh.machine} and the runtime bundle does not fit ({no_bundle}): give a wheelhouse for"
            " this host with --wheelhouse DIR"
        )
    return "wheels", f"pip on the host: {no_bundle}"


async def package_bundle(h: Host, b: Bundle) -> bool:
    """Put runtime bundle ``b`` in force on the host; False if it already is."""
    s, lay, m = h.s, h.layout, h.manifest
    dest = f"{lay.runtime}/{b.key}"
    if (
        m.get("mode") == "bundle"
        and m.get("bundle") == b.key
        and h.info["venv"]
        and h.info["pth"] == dest
        and b.key in h.info["runtimes"]
    ):
        return False
    name = f"{b.key}.tar.gz"
    for attempt in (1, 2):
        # An archive left by an interrupted run is used if it is whole (UNPACK checks its hash).
        if b.key not in h.info["runtimes"] and h.info["bundles"].get(name) != b.size:
            # With sudo an upload goes whole through the login user's staging directory.
            part = int(h.info["bundles"].get(name + ".part", 0)) if attempt == 1 and not s.sudo else 0
            h.say(f"upload bundle ({(b.size - part) / 1e6:.1f} MB{', resumed' if part else ''})")
            await s.put_file(b.path, f"{lay.bundles}/{name}", 0o644, resume_from=part)
        h.say("unpack")
        try:
            out = await s.run(
                "unpack the runtime",
                "exec python3 - " + q(lay.prefix, b.key, b.sha256, b.version),
                input=UNPACK,
            )
            break
        except RemoteError as exc:
            if exc.status != 3 or attempt == 2:
                raise
            h.info["bundles"].pop(name, None)  # damaged or gone: upload it again
    did = json.loads(out.strip().splitlines()[-1])
    if did["version"] != b.version:  # UNPACK checks this too
        raise InstallError(f"the host's new runtime says version {did['version']}, not {b.version}")
    for k in ("wheels",):
        m.pop(k, None)
    m.update(mode="bundle", bundle=b.key, version=b.version)
    await h.save_manifest()
    return True


async def package_wheels(h: Host, wh: Wheelhouse) -> bool:
    """Install the agent with pip on the host from the uploaded wheelhouse; False if already done."""
    s, lay, m = h.s, h.layout, h.manifest
    if m.get("wheels") == wh.wheels and h.info["venv"] and m.get("mode", "wheels") == "wheels":
        return False
    if m.get("mode") == "bundle" or h.info["pth"] or h.info["runtimes"]:
        # From the bundle to pip: a venv of its own, without the .pth to the old runtime.
        await s.run("remove the bundle", f"rm -rf {q(lay.venv, lay.runtime, lay.bundles)}")
        h.info["venv"] = False
    h.say("upload")
    # Hashed only now, not in every preflight: 18 MB per host is most of an unchanged run's work.
    have: dict[str, str] = {}
    if h.info["wheels"]:
        out = await s.run("hash wheels", f"cd {q(lay.wheels)} && sha256sum -- *", check=False)
        have = {ln[66:]: ln[:64] for ln in out.splitlines() if len(ln) > 66}
    for n, digest in wh.wheels.items():
        if have.get(n) != digest:
            await s.put_file(wh.dir / n, f"{lay.wheels}/{n}", 0o644)
    stale = [f"{lay.wheels}/{n}" for n in have if n not in wh.wheels]
    if stale:
        await s.run("remove old wheels", "rm -f " + q(*stale))
    h.say("pip install")
    py = f"{lay.venv}/bin/python"
    pip = f"{py} {q(lay.wheels + '/' + wh.pip_wheel)}/pip"
    flags = f"--no-index --find-links {q(lay.wheels)} --disable-pip-version-check --quiet"
    wheel = q(f"{lay.wheels}/{wh.slaprobe_wheel}")
    # In a venv that already holds slaprobe, pip keeps an installed copy of the same version even if
    # the code differs: reinstall it. A venv made just now holds nothing, and the second pip run (its
    # start from the zipped wheel, uninstall, unpack, byte-compile: ~2 CPU-s) would only redo the first.
    again = f"; {pip} install {flags} --no-deps --force-reinstall {wheel}" if h.info["venv"] else ""
    await s.run(
        "install the agent",
        f"set -e; [ -x {q(py)} ] || python3 -m venv --without-pip {q(lay.venv)}; {pip} install {flags} {wheel}"
        + again,
    )
    m.pop("bundle", None)
    m.update(mode="wheels", wheels=wh.wheels, version=wh.version)
    await h.save_manifest()
    return True


async def tidy(h: Host, method: str, key: str | None) -> None:
    """Remove what an earlier version or method left: old runtimes, archives, the wheelhouse."""
    lay, info = h.layout, h.info
    if method == "bundle":
        old = [f"{lay.runtime}/{n}" for n in info["runtimes"] if n != key]
        old += [f"{lay.bundles}/{n}" for n in info["bundles"]]
        old += [lay.wheels] if info["wheels"] else []
    else:
        old = [lay.runtime, lay.bundles] if info["runtimes"] or info["bundles"] else []
    if old:
        await h.s.run("remove old files", "rm -rf -- " + q(*old))


async def install_host(
    t: Target, opts: InstallOptions, ssh: SshOptions, say: Progress, *, upgrade: bool = False
) -> HostResult:
    t0 = time.monotonic()
    lay = Layout(t.prefix) if t.prefix else opts.layout
    wh = opts.wheelhouse
    assert wh is not None
    async with await Session.open(t, ssh) as s:
        h = Host(s, lay, opts.service_user, say)
        await h.preflight()
        m = h.manifest
        if upgrade and not m:
            raise InstallError(
                f"slaprobe is not installed under {lay.prefix} here: run `slaprobe agent install` first"
            )
        method, why = choose_method(opts, h.info)
        if h.info["prefix_exists"] and not m and not upgrade and h.info["venv"]:
            raise InstallError(
                f"{lay.prefix} exists on the host but holds no slaprobe manifest; not touching it"
            )
        site = t.site or (m.get("site") if upgrade else None) or opts.site or m.get("site")
        if not site:
            raise InstallError("no site: give --site or site= in the inventory")
        name = check_name(t.name or m.get("name") or str(h.info["hostname"]).split(".")[0])
        if not upgrade:
            claim(opts.claimed, name, t)
            # Before anything is sent: a name that lives on another host stays there.
            await asyncio.to_thread(
                opts.collector.check_name_host, name, s.host_key, t.label, opts.take_over_name
            )
        manager = h.manager(m.get("service", opts.service_manager) if upgrade else opts.service_manager)
        changed: list[str] = []

        # user
        if h.info["user"] is None:
            if not h.root:
                raise InstallError(
                    f"user {opts.service_user!r} does not exist and the login user is not root"
                )
            say("user")
            await s.run(
                "create user",
                "useradd --system --user-group --no-create-home --shell /usr/sbin/nologin --home-dir "
                + q(lay.data, opts.service_user),
            )
            m["created_user"] = True
            changed.append("user")
        m["user"] = opts.service_user
        m["service"] = manager
        m["prefix"] = lay.prefix

        # dirs
        u = q(opts.service_user)
        p = lay.path
        code = ("runtime", "bundles") if method == "bundle" else ("wheels",)
        await s.run(
            "create directories",
            f"umask 022 && mkdir -p {q(*map(p, (*code, 'bin', 'etc', 'data', 'log', 'run')))}"
            f" && chmod 0755 {q(lay.prefix, *map(p, (*code, 'bin')))} && chmod 0700 {q(p('etc'), p('data'), p('log'), p('run'))}"
            f" && chown {u}: {q(p('etc'), p('data'))}",
        )
        if not h.info["manifest"]:
            await h.save_manifest()  # from now on uninstall knows this prefix is ours

        # package
        if method == "bundle":
            assert opts.bundle is not None
            if await package_bundle(h, opts.bundle):
                changed.append("package")
        elif await package_wheels(h, wh):
            changed.append("package")
        version = str(m["version"])

        # enrol
        c = opts.collector
        ident = {"site": site, "name": name, "enroll": c.enroll}
        if not (h.info["cert"] and m.get("identity") == ident):
            say("enrol")
            bundle = c.join_bundle(site, name)
            await s.put_bytes(lay.join, bundle, 0o600)
            await s.run(
                "enrol",
                f"{q(lay.slaprobe)} agent enroll --join {q(lay.join)} --name {q(name)} --data-dir {q(lay.data)};"
                f" rc=$?; rm -f {q(lay.join)}; [ $rc -ne 0 ] || chown -R {u}: {q(lay.data)}; exit $rc",
            )
            m["identity"] = ident
            await h.save_manifest()
            changed.append("enrol")
        if not upgrade:
            await asyncio.to_thread(c.bind_name_host, name, s.host_key, t.label)

        # config
        cfg = templates.agent_config(lay, c.collector, site, name).encode()
        if h.info["files"]["config"] != sha256(cfg):
            say("config")
            await s.put_bytes(lay.config, cfg, 0o600)
            await s.run("config owner", f"chown {u}: {q(lay.config)}")
            changed.append("config")

        # service
        if manager == "systemd":
            unit = templates.systemd_unit(
                lay, opts.service_user, site, net_raw=c.needs_net_raw(site)
            ).encode()
            if h.info["files"]["unit"] != sha256(unit):
                say("unit")
                await s.put_bytes(UNIT_PATH, unit, 0o644)
                m["unit"] = UNIT_PATH
                changed.append("unit")
        else:
            script = templates.supervisor_script(lay, opts.service_user).encode()
            if h.info["files"]["supervisor"] != sha256(script):
                say("supervisor")
                await s.put_bytes(lay.supervisor, script, 0o755)
                changed.append("supervisor")
        m["site"], m["name"] = site, name
        m["complete"] = True
        if changed:
            await h.save_manifest()

        # start and wait
        since = time.time_ns()
        if changed or not await h.running(manager):
            say("start")
            await h.start(manager)
            if not changed:
                changed.append("started")
        else:
            since -= int(RECENT_S * 1e9)
        # The old runtime only now: the agent that ran from it was stopped by the (re)start.
        await tidy(h, method, opts.bundle.key if method == "bundle" and opts.bundle else None)
        say("waiting for the collector")
        try:
            waited = await c.wait_seen(name, since, opts.wait_s)
        except EnrolError as exc:
            tail = await h.log_tail(manager)
            raise EnrolError(
                f"{exc}; agent log:\n{tail}" if tail else f"{exc}; the agent logged nothing"
            ) from None
        outcome = (
            ("upgraded" if upgrade else "installed")
            if "package" in changed
            else "updated"
            if changed
            else "unchanged"
        )
        if outcome == "updated":
            outcome += f" ({', '.join(changed)})"
        return HostResult(
            t,
            True,
            outcome,
            version,
            time.monotonic() - t0,
            f"agent {name!r} site {site!r} via {manager}, {why}, seen after {waited:.1f}s",
            s.bytes_uploaded,
            {"name": name, "changed": changed, "method": method},
        )


async def uninstall_host(t: Target, opts: InstallOptions, ssh: SshOptions, say: Progress) -> HostResult:
    t0 = time.monotonic()
    lay = Layout(t.prefix) if t.prefix else opts.layout
    async with await Session.open(t, ssh) as s:
        h = Host(s, lay, opts.service_user, say)
        await h.preflight()
        m = h.manifest
        if not m:
            if h.info["prefix_exists"]:
                raise InstallError(f"{lay.prefix} holds no slaprobe manifest; not removing it")
            return HostResult(t, True, "absent", "-", time.monotonic() - t0, f"nothing under {lay.prefix}")
        manager = str(m.get("service", "supervisor"))
        say("stop")
        if manager == "systemd":
            await s.run(
                "disable unit",
                f"systemctl disable --now {UNIT_NAME}; rm -f {UNIT_PATH}; systemctl daemon-reload",
            )
        else:
            await h.stop(manager)
        say("remove")
        await s.run("remove", f"rm -rf {q(lay.prefix)}")
        if m.get("created_user"):
            await s.run("remove user", "userdel " + q(str(m.get("user", opts.service_user))))
        left = await s.run("check", f"ls -d {q(lay.prefix)} 2>/dev/null", check=False)
        if left.strip():
            raise RemoteError("remove", 1, f"{lay.prefix} is still there")
        if m.get("name"):  # the name is free for another host now
            await asyncio.to_thread(opts.collector.unbind_name_host, str(m["name"]), s.host_key)
        return HostResult(
            t,
            True,
            "removed",
            str(m.get("version", "-")),
            time.monotonic() - t0,
            f"agent {m.get('name')!r} removed",
        )


async def status_host(t: Target, opts: InstallOptions, ssh: SshOptions, say: Progress) -> HostResult:
    t0 = time.monotonic()
    lay = Layout(t.prefix) if t.prefix else opts.layout
    async with await Session.open(t, ssh) as s:
        h = Host(s, lay, opts.service_user, say)
        await h.preflight()
        m = h.manifest
        if not m:
            return HostResult(
                t, False, "not installed", "-", time.monotonic() - t0, f"no manifest under {lay.prefix}"
            )
        manager = str(m.get("service", "supervisor"))
        running = await h.running(manager)
        version = (await s.run("version", f"{q(lay.slaprobe)} --version", check=False)).strip().rsplit(
            " ", 1
        )[-1] or "?"
        tail = await h.log_tail(manager, 200)
        errors = [ln for ln in tail.splitlines() if " ERROR " in ln or " WARNING " in ln or "Error:" in ln]
        name = str(m.get("name"))
        detail = f"agent {name!r} via {manager}"
        try:
            seen = c_seen = opts.collector.last_seen_ns(name)
        except Exception:  # the collector DB is optional for status
            seen = c_seen = None
        if c_seen:
            detail += f", last seen by the collector {(time.time_ns() - c_seen) / 1e9:.0f}s ago"
        if errors:
            detail += f"; last error: {errors[-1].strip()}"
        return HostResult(
            t,
            running,
            "running" if running else "stopped",
            version,
            time.monotonic() - t0,
            detail,
            extra={"name": name, "last_seen_ns": seen, "last_error": errors[-1] if errors else None},
        )
