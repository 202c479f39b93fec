"""``slaprobe agent install | upgrade | status | uninstall``: agents on remote hosts over SSH.

Attached to the ``agent`` group of :mod:`slaprobe.cli`; the work is done by
:mod:`slaprobe.install`. Run these on the collector host: install creates
join tokens in the collector's database (``--db``) and reads its CA
(``--tls-dir``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click

from slaprobe.cli import DEFAULT_LISTEN, agent
from slaprobe.output import db_option, format_option, render_json

PASSWORD_ENV = "SLAPROBE_SSH_PASSWORD"


def _ssh_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.argument("hosts", nargs=-1),
        click.option(
            "-i",
            "--inventory",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            help="File with one [user@]host[:port] per line, optionally followed by user= port= site= name= prefix= sudo=.",
        ),
        click.option("--user", help="SSH login user (default: the host's user@, else your user name)."),
        click.option(
            "--port", type=click.IntRange(1, 65535), help="SSH port for hosts that do not give one."
        ),
        click.option(
            "--sudo",
            is_flag=True,
            help="Log in as --user and do every step as root through passwordless sudo (sudo -n), for hosts"
            " that refuse root logins; sudo=yes|no in the inventory sets it per host.",
        ),
        click.option(
            "--identity",
            type=click.Path(dir_okay=False, exists=True, path_type=Path),
            help="Private key to log in with (default: your SSH agent and ~/.ssh keys).",
        ),
        click.option(
            "--known-hosts",
            type=click.Path(dir_okay=False, path_type=Path),
            default=Path("~/.ssh/known_hosts").expanduser(),
            show_default="~/.ssh/known_hosts",
            help="Host keys to verify against.",
        ),
        click.option(
            "--accept-new",
            is_flag=True,
            help="Pin the key of a host not yet in known_hosts (its fingerprint is printed). A changed key is always refused.",
        ),
        click.option(
            "--prefix", default="/opt/slaprobe", show_default=True, help="Where everything goes on the host."
        ),
        click.option(
            "--parallel", default=10, show_default=True, type=click.IntRange(1, 200), help="Hosts at once."
        ),
        click.option(
            "--connect-timeout", default=15.0, show_default=True, help="Seconds to connect and log in."
        ),
        db_option,
        format_option,
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _targets(hosts: tuple[str, ...], inventory: Path | None, port: int | None) -> list[Any]:
    from dataclasses import replace

    from slaprobe.install.inventory import check_unique, load_inventory, parse_target

    targets = [parse_target(h) for h in hosts]
    if port is not None:
        targets = [
            t if ":" in h.lstrip("[").split("]")[-1] else replace(t, port=port)
            for t, h in zip(targets, hosts, strict=True)
        ]
    if inventory is not None:
        targets += load_inventory(inventory)
    if not targets:
        raise click.UsageError("give at least one HOST or --inventory FILE")
    check_unique(targets)
    return targets


def _run(
    action: str,
    hosts: tuple[str, ...],
    inventory: Path | None,
    user: str | None,
    port: int | None,
    sudo: bool,
    identity: Path | None,
    known_hosts: Path,
    accept_new: bool,
    prefix: str,
    parallel: int,
    connect_timeout: float,
    db_path: Path,
    fmt: str,
    **kw: Any,
) -> None:
    from slaprobe.install import bundle as bundles
    from slaprobe.install import plan
    from slaprobe.install.collector_side import CollectorSide
    from slaprobe.install.errors import InstallError
    from slaprobe.install.hostkeys import KnownHosts
    from slaprobe.install.runner import ProgressDisplay, run_hosts, summary
    from slaprobe.install.ssh import SshOptions
    from slaprobe.install.templates import Layout
    from slaprobe.install.wheelhouse import ensure

    try:
        layout = Layout(prefix)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--prefix") from None
    try:
        targets = _targets(hosts, inventory, port)
        tls_dir = kw.get("tls_dir")
        collector_addr = kw.get("collector_addr") or DEFAULT_LISTEN
        enroll_addr = kw.get("enroll_addr") or _enroll_default(collector_addr)
        side = CollectorSide(db_path, tls_dir or Path("."), collector_addr, enroll_addr)
        wheelhouse = bundle = None
        if action in ("install", "upgrade"):
            side.check({str(t.site or kw["site"]) for t in targets if t.site or kw.get("site")})
            if action == "install" and not kw.get("site") and any(t.site is None for t in targets):
                raise click.UsageError("give --site (or site= for every host in the inventory)")
            click.echo("preparing the wheelhouse…", err=True)
            wheelhouse = ensure(kw.get("wheelhouse"))
            click.echo(
                f"wheelhouse: slaprobe {wheelhouse.version}, {len(wheelhouse.wheels)} wheels,"
                f" {wheelhouse.total_bytes / 1e6:.1f} MB in {wheelhouse.dir}",
                err=True,
            )
            if kw.get("method") != "wheels":
                bundle = _bundle(bundles, wheelhouse)
            if kw.get("method") == "bundle" and bundle is None:
                raise InstallError(
                    f"--method bundle: no runtime bundle can be built here for a wheelhouse for"
                    f" Python {wheelhouse.python} on {wheelhouse.machine}"
                )
    except InstallError as exc:
        raise click.ClickException(str(exc)) from None

    display = ProgressDisplay([t.label for t in targets])
    kh = KnownHosts(known_hosts, accept_new=accept_new, say=lambda m: click.echo(m, err=True))
    ssh = SshOptions(kh, user, identity, os.environ.get(PASSWORD_ENV), connect_timeout, sudo=sudo)
    opts = plan.InstallOptions(
        layout,
        kw.get("service_user") or "slaprobe",
        kw.get("service_manager") or "auto",
        side,
        wheelhouse,
        kw.get("site"),
        kw.get("wait") or 60.0,
        bundle,
        kw.get("method") or "auto",
        take_over_name=bool(kw.get("take_over_name")),
    )
    fn = {
        "install": partial(plan.install_host, opts=opts, ssh=ssh),
        "upgrade": partial(plan.install_host, opts=opts, ssh=ssh, upgrade=True),
        "uninstall": partial(plan.uninstall_host, opts=opts, ssh=ssh),
        "status": partial(plan.status_host, opts=opts, ssh=ssh),
    }[action]
    results = asyncio.run(
        run_hosts(targets, lambda t, say: fn(t, say=say), parallel=parallel, display=display)
    )
    if fmt == "json":
        click.echo(
            render_json(
                {
                    "hosts": [
                        {
                            "host": r.target.label,
                            "ok": r.ok,
                            "result": r.outcome,
                            "version": r.version,
                            "seconds": round(r.seconds, 2),
                            "detail": r.detail,
                            "bytes_uploaded": r.bytes_uploaded,
                            **r.extra,
                        }
                        for r in results
                    ]
                }
            )
        )
    else:
        click.echo(summary(results))
    if not all(r.ok for r in results):
        raise click.exceptions.Exit(1)


def _bundle(bundles: Any, wheelhouse: Any) -> Any:
    """The runtime bundle for ``wheelhouse`` (built now if not cached), with a line on stderr saying which."""
    if bundles.target_for(wheelhouse) is None:
        click.echo(
            f"no runtime bundle: the wheelhouse is for Python {wheelhouse.python} on {wheelhouse.machine},"
            " not this interpreter; hosts install with pip from the wheelhouse",
            err=True,
        )
        return None
    click.echo("preparing the runtime bundle…", err=True)
    b = bundles.ensure(wheelhouse)
    made = f"built in {b.build_s:.1f}s" if b.build_s else "cached"
    click.echo(
        f"runtime bundle: {b.target.cache_tag} {b.target.machine}, {b.size / 1e6:.1f} MB, {made}: {b.path}",
        err=True,
    )
    return b


def _enroll_default(collector_addr: str) -> str:
    host, _, port = collector_addr.rpartition(":")
    return f"{host}:{int(port) + 1}" if port.isdigit() else collector_addr


def _install_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option(
            "--tls-dir",
            required=True,
            envvar="SLAPROBE_TLS_DIR",
            type=click.Path(file_okay=False, path_type=Path),
            help="The collector's TLS directory (its CA goes to the agents).",
        ),
        click.option(
            "--collector",
            "collector_addr",
            default=DEFAULT_LISTEN,
            show_default=True,
            help="host:port the agents use to reach the collector's agent endpoint.",
        ),
        click.option(
            "--enroll",
            "enroll_addr",
            help="host:port of the enrolment endpoint (default: the --collector host, port + 1).",
        ),
        click.option(
            "--service-user",
            default="slaprobe",
            show_default=True,
            help="The user the agent runs as (created as a system user if missing).",
        ),
        click.option(
            "--service-manager",
            type=click.Choice(["auto", "systemd", "supervisor"]),
            default="auto",
            show_default=True,
            help="auto: systemd where it is PID 1, else the fallback supervisor.",
        ),
        click.option(
            "--wheelhouse",
            type=click.Path(file_okay=False, exists=True, path_type=Path),
            help="Prebuilt wheels to install from (default: built from this slaprobe and cached).",
        ),
        click.option(
            "--method",
            type=click.Choice(["auto", "bundle", "wheels"]),
            default="auto",
            show_default=True,
            help="How hosts get the agent's code. bundle: one archive built here (unpacked on the host, no"
            " pip run there); wheels: pip on each host from the uploaded wheelhouse; auto: the bundle where"
            " the host's Python, machine and C library fit it, else wheels.",
        ),
        click.option(
            "--wait",
            default=60.0,
            show_default=True,
            help="Seconds to wait for the collector to see each agent.",
        ),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


@agent.command("install")
@_ssh_options
@_install_options
@click.option("--site", help="The site the agents belong to (an inventory line's site= wins).")
@click.option(
    "--take-over-name",
    is_flag=True,
    help="Install an agent name that another host (another SSH host key) holds: for a host that is gone."
    " Without it such a host is refused.",
)
def agent_install(**kw: Any) -> None:
    """Install agents on remote hosts over SSH, enrol them and start them.

    Everything lands under --prefix: the agent's runtime, built once here and
    unpacked on each host from one archive sent over SFTP (or installed with
    pip on the host from the wheelhouse where the host's Python differs; no
    internet needed on the host either way), the agent's config and key
    (0600, owned by the service user), and a hardened systemd unit (or the
    fallback supervisor where systemd is not running). Waits until the
    collector has heard from each agent. Running it again changes nothing;
    an interrupted run can simply be repeated. Exit status 1 if any host
    failed. Login passwords are read from $SLAPROBE_SSH_PASSWORD, never a flag.

    \b
    Examples:
      slaprobe agent install root@10.0.0.5 root@10.0.0.6 --site paris --tls-dir /etc/slaprobe/tls \\
          --collector collector.example:7431 --accept-new
      slaprobe agent install -i fleet.txt --tls-dir /etc/slaprobe/tls --collector collector.example:7431
    """
    _run("install", **kw)


@agent.command("upgrade")
@_ssh_options
@_install_options
def agent_upgrade(**kw: Any) -> None:
    """Upgrade installed agents to this slaprobe (keeps their identity, site and config).

    \b
    Example:
      slaprobe agent upgrade -i fleet.txt --tls-dir /etc/slaprobe/tls --collector collector.example:7431
    """
    _run("upgrade", **kw)


@agent.command("status")
@_ssh_options
def agent_status(**kw: Any) -> None:
    """Show each host's agent: service state, version, last error, when the collector last saw it.

    \b
    Example:
      slaprobe agent status -i fleet.txt
    """
    _run("status", **kw)


@agent.command("uninstall")
@_ssh_options
def agent_uninstall(**kw: Any) -> None:
    """Stop and remove everything install put on the hosts (the prefix, the unit, a user it created).

    The agent's certificate stays valid at the collector: revoke it with
    `slaprobe agent revoke NAME` if the host is gone for good.

    \b
    Example:
      slaprobe agent uninstall root@10.0.0.5
    """
    _run("uninstall", **kw)
