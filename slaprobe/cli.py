"""The ``slaprobe`` command: a thin layer over the library.

Library errors become :class:`click.ClickException` here (a message and
exit status 1, never a traceback); usage errors exit with 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from slaprobe import __version__
from slaprobe.configfile import ConfigError, Fields, load_yaml_file, parse_duration
from slaprobe.logs import setup_logging
from slaprobe.output import db_option, format_option, render_csv, render_json, render_table, safe_output_path

log = logging.getLogger("slaprobe")

DEFAULT_DB = "slaprobe.db"
DEFAULT_LISTEN = "127.0.0.1:7431"
DEFAULT_ENROLL_LISTEN = "127.0.0.1:7432"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="slaprobe")
def main() -> None:
    """slaprobe: prove whether service levels were met.

    Agents probe services near customers and stream every result to a
    collector, which stores them and scores each site against its SLA.
    """


# ---- collector ---------------------------------------------------------------------


@main.group()
def collector() -> None:
    """Run the collector."""


@collector.command("serve")
@click.option(
    "--catalogue",
    "catalogue_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLAPROBE_CATALOGUE",
    help="Sites, checks and SLA targets (YAML).",
)
@click.option(
    "--db",
    "db_path",
    default=DEFAULT_DB,
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLAPROBE_DB",
    help="SQLite database file (created if missing).",
)
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    envvar="SLAPROBE_LISTEN",
    help="host:port for the agents' gRPC endpoint (port 0 picks a free one).",
)
@click.option(
    "--grace", default="5s", show_default=True, help="How long in-flight calls may finish at shutdown."
)
@click.option(
    "--tls-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SLAPROBE_TLS_DIR",
    help="CA and server certificate from `slaprobe collector init` (mutual TLS, the default).",
)
@click.option(
    "--enroll-listen",
    default=DEFAULT_ENROLL_LISTEN,
    show_default=True,
    help="host:port of the enrolment endpoint (TLS without client certificate; only enrolment is served there).",
)
@click.option(
    "--insecure", is_flag=True, help="Serve plaintext without agent identities (tests and labs only)."
)
@click.option("-v", "--verbose", count=True, help="More logging (twice for gRPC internals).")
def collector_serve(
    catalogue_path: Path,
    db_path: Path,
    listen: str,
    grace: str,
    tls_dir: Path | None,
    enroll_listen: str,
    insecure: bool,
    verbose: int,
) -> None:
    """Serve agents: push their checks, store their results.

    SIGHUP reloads the catalogue (a broken one is refused and the old one
    kept); SIGTERM or Ctrl-C shuts down gracefully.

    \b
    Example:
      slaprobe collector serve --catalogue examples/catalogue.yaml --db slaprobe.db
    """
    from collector.server import Collector, CollectorSettings

    setup_logging(verbose)
    settings = CollectorSettings(
        catalogue_path,
        db_path,
        listen,
        grace_s=_duration(grace, "--grace"),
        tls_dir=tls_dir,
        insecure=insecure,
        enroll_listen=enroll_listen or None,
    )

    async def run() -> None:
        c = Collector(settings)
        await c.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[bool]] = set()

        def reload() -> None:
            task = loop.create_task(c.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)
        await stop.wait()
        log.info("shutting down")
        await c.stop()

    _run_async(run)


@collector.command("init")
@click.option(
    "--tls-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SLAPROBE_TLS_DIR",
    help="Where to create the CA, the server certificate and the evidence-signing key.",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="A name or address agents use to reach the collector (repeatable). Default: localhost, 127.0.0.1, ::1 and this host's name.",
)
@click.option("--force", is_flag=True, help="Replace an existing CA (every agent must enrol again).")
def collector_init(tls_dir: Path, hosts: tuple[str, ...], force: bool) -> None:
    """Create the collector's CA, server certificate and evidence-signing key.

    Keys are created 0600 in a 0700 directory. Existing files are kept:
    running init twice changes nothing unless --force is given.

    \b
    Example:
      slaprobe collector init --tls-dir /etc/slaprobe/tls --host collector.example.net
    """
    from slaprobe.pki import CollectorPki

    created = CollectorPki(tls_dir).init(list(hosts), force=force)
    if created:
        click.echo(f"created in {tls_dir}: {', '.join(created)}")
    else:
        click.echo(
            f"{tls_dir} already holds a CA and server certificate; nothing changed (use --force to replace)"
        )


# ---- agent ---------------------------------------------------------------------------


@main.group()
def agent() -> None:
    """Run and inspect agents."""


@agent.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLAPROBE_AGENT_CONFIG",
    help="Agent configuration file (YAML).",
)
@click.option("--collector", "collector_addr", help="host:port of the collector (overrides the file).")
@click.option("--site", help="Site whose checks to run (overrides the file).")
@click.option("--name", help="Agent name, unique in the fleet (overrides the file).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Data directory.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Plaintext, no certificate (only against a collector run with --insecure).",
)
@click.option("-v", "--verbose", count=True, help="More logging.")
def agent_run(
    config_path: Path | None,
    collector_addr: str | None,
    site: str | None,
    name: str | None,
    data_dir: Path | None,
    insecure: bool,
    verbose: int,
) -> None:
    """Run the checks of one site and stream results to the collector.

    \b
    Example:
      slaprobe agent run --config examples/agent.yaml
      slaprobe agent run --collector 127.0.0.1:7431 --site lab --name lab-1
    """
    from agent.config import AgentConfig, load_agent_config
    from agent.link import FatalLinkError
    from agent.main import Agent

    setup_logging(verbose)
    if config_path is not None:
        cfg = _config(lambda: load_agent_config(config_path))
    else:
        if not (collector_addr and site):
            raise click.UsageError("give --config FILE, or at least --collector and --site")
        cfg = AgentConfig(
            collector=collector_addr,
            site=site,
            name=name or _hostname(),
            data_dir=data_dir or Path("slaprobe-agent-data"),
        )
    overrides: dict[str, Any] = {}
    if collector_addr:
        overrides["collector"] = collector_addr
    if site:
        overrides["site"] = site
    if name:
        overrides["name"] = name
    if data_dir:
        overrides["data_dir"] = data_dir
    if insecure:
        overrides["insecure"] = True
    if overrides:
        from dataclasses import replace

        cfg = replace(cfg, **overrides)

    async def run() -> None:
        a = Agent(cfg)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "agent %r for site %r, collector %s, data in %s", cfg.name, cfg.site, cfg.collector, cfg.data_dir
        )
        try:
            await a.run(stop)
        except FatalLinkError as exc:
            raise click.ClickException(str(exc)) from exc
        log.info("agent stopped after %d results", a.produced)

    _run_async(run)


@agent.group("token")
def agent_token() -> None:
    """One-time join tokens for enrolling agents."""


@agent_token.command("create")
@click.option("--site", required=True, help="The site the enrolled agent will belong to.")
@click.option("--name", help="Fix the agent's name (default: the agent chooses at enrolment).")
@click.option("--ttl", default="1h", show_default=True, help="How long the token can be used (once).")
@db_option
@click.option(
    "--tls-dir",
    required=True,
    envvar="SLAPROBE_TLS_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="The collector's TLS directory (its CA certificate goes into the join file).",
)
@click.option(
    "--collector",
    "collector_addr",
    default=DEFAULT_LISTEN,
    show_default=True,
    help="host:port agents use for the collector's agent endpoint.",
)
@click.option(
    "--enroll",
    "enroll_addr",
    default=DEFAULT_ENROLL_LISTEN,
    show_default=True,
    help="host:port agents use for the enrolment endpoint.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Join file to write (created 0600); '-' prints it.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing join file.")
@click.option("--by", default=None, help="Who creates the token (default: $USER).")
def agent_token_create(
    site: str,
    name: str | None,
    ttl: str,
    db_path: Path,
    tls_dir: Path,
    collector_addr: str,
    enroll_addr: str,
    output: Path,
    force: bool,
    by: str | None,
) -> None:
    """Create a one-time, expiring join token and write it with the CA into a join file.

    Copy the join file to the agent host and run `slaprobe agent enroll
    --join FILE` there. The token works once, before it expires; only its
    hash is stored.

    \b
    Example:
      slaprobe agent token create --site paris --ttl 1h --tls-dir /etc/slaprobe/tls -o paris-1.join
    """
    import getpass

    from agent.identity import JoinBundle
    from collector.store import create_token, open_store
    from slaprobe.pki import CollectorPki, new_token, write_private

    # Checked before the token exists: a refused path must not leave a live token behind.
    target = None if str(output) == "-" else safe_output_path(output, force=force)
    pki = CollectorPki(tls_dir)
    if not pki.exists():
        raise click.ClickException(
            f"no CA in {tls_dir}: run `slaprobe collector init --tls-dir {tls_dir}` first"
        )
    ttl_s = _duration(ttl, "--ttl")
    token = new_token()
    db = open_store(db_path)
    try:
        known_sites = {r[0] for r in db.execute("SELECT name FROM sites").fetchall()}
        if site not in known_sites:
            hint = (
                f"; known sites: {', '.join(sorted(known_sites))}"
                if known_sites
                else " (start the collector once first)"
            )
            raise click.ClickException(f"site {site!r} is not in the collector's catalogue{hint}")
        create_token(db, token, site, name, int(ttl_s * 1e9), by or getpass.getuser(), time.time_ns())
    finally:
        db.conn.close()
    bundle = JoinBundle(collector_addr, enroll_addr, site, token, pki.ca_cert_pem(), name)
    if str(output) == "-":
        click.echo(bundle.to_json())
    else:
        assert target is not None
        write_private(target, bundle.to_json().encode())
        click.echo(f"join file for site {site!r} written to {output} (valid {ttl}, once)")


@agent.command("enroll")
@click.option(
    "--join",
    "join_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="SLAPROBE_JOIN",
    help="The join file from `slaprobe agent token create`.",
)
@click.option("--name", help="This agent's name (default: the token's, else the host name).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("slaprobe-agent-data"),
    show_default=True,
    help="Data directory; the key and certificates go to DATA_DIR/tls.",
)
@click.option(
    "--write-config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write an agent configuration file for `slaprobe agent run --config`.",
)
def agent_enroll(join_path: Path, name: str | None, data_dir: Path, write_config: Path | None) -> None:
    """Enrol this agent: make its key, present the one-time token, store its certificate.

    \b
    Example:
      slaprobe agent enroll --join paris-1.join --data-dir /var/lib/slaprobe --write-config /etc/slaprobe/agent.yaml
    """
    from agent.identity import IdentityError, JoinBundle, TlsFiles, enroll
    from agent.main import SIGNING_KEY
    from slaprobe.chain import fingerprint, load_or_create_key, public_raw

    try:
        bundle = JoinBundle.load(join_path)
        chosen = name or bundle.name or _hostname()
        signing_key = load_or_create_key(data_dir / SIGNING_KEY)
        site, agent_name = asyncio.run(
            enroll(bundle, chosen, TlsFiles(data_dir / "tls"), signing_key=signing_key)
        )
    except IdentityError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"enrolled as agent {agent_name!r} of site {site!r}; certificate in {data_dir / 'tls'}")
    click.echo(
        f"signing key sha256 {fingerprint(public_raw(signing_key))}: this agent signs its results with it;"
        " whoever relies on its evidence should record this fingerprint"
    )
    if write_config is not None:
        import json as _json

        write_config.write_text(
            f"collector: {_json.dumps(bundle.collector)}\nsite: {_json.dumps(site)}\n"
            f"name: {_json.dumps(agent_name)}\ndata_dir: {_json.dumps(str(data_dir.resolve()))}\n",
            encoding="utf-8",
        )
        click.echo(f"configuration written to {write_config}")


@agent.command("revoke")
@click.argument("name")
@click.option("--reason", required=True, help="Why (recorded with who and when).")
@click.option("--by", default=None, help="Who revokes (default: $USER).")
@db_option
def agent_revoke(name: str, reason: str, by: str | None, db_path: Path) -> None:
    """Block an agent at once: its open streams are closed within a second, and it stays blocked
    across collector restarts until `slaprobe agent unrevoke`.

    \b
    Example:
      slaprobe agent revoke paris-probe-1 --reason "host decommissioned"
    """
    import getpass

    from collector.store import open_store, revoke

    db = _open_existing(db_path, open_store)
    try:
        done = revoke(db, name, by or getpass.getuser(), reason, time.time_ns())
    finally:
        db.conn.close()
    click.echo(f"agent {name!r} revoked" if done else f"agent {name!r} was already revoked")


@agent.command("unrevoke")
@click.argument("name")
@db_option
def agent_unrevoke(name: str, db_path: Path) -> None:
    """Lift a revocation (the agent may connect again with a valid certificate)."""
    from collector.store import open_store, unrevoke

    db = _open_existing(db_path, open_store)
    try:
        done = unrevoke(db, name)
    finally:
        db.conn.close()
    click.echo(f"agent {name!r} may connect again" if done else f"agent {name!r} was not revoked")


def _open_existing(db_path: Path, opener: Any) -> Any:
    if not db_path.exists():
        raise click.ClickException(f"no database at {db_path}: start a collector with --db {db_path} first")
    return opener(db_path)


@agent.command("list")
@db_option
@click.option("--site", help="Only agents of this site.")
@click.option(
    "--silent-after",
    default="1m",
    show_default=True,
    help="An agent not heard from for this long is shown as silent.",
)
@format_option
def agent_list(db_path: Path, site: str | None, silent_after: str, fmt: str) -> None:
    """The fleet as the collector sees it: last contact, version, clock, spool.

    \b
    Columns: state (online or silent), last seen, software version, clock
    offset (agent minus collector) and round trip of the last exchange, spool
    depth (records produced but not yet acknowledged) and the age of the
    oldest of them, as the agent last reported.

    \b
    Example:
      slaprobe agent list --db slaprobe.db
    """
    from collector.store import Reader

    silent_ns = int(_duration(silent_after, "--silent-after") * 1e9)
    try:
        reader = Reader(db_path)
    except FileNotFoundError:
        raise click.ClickException(
            f"no database at {db_path}: start a collector with --db {db_path} first"
        ) from None
    try:
        agents = [a for a in reader.agents() if site is None or a["site"] == site]
        keys = reader.signing_keys()
    finally:
        reader.close()
    now = time.time_ns()
    rows = []
    for a in agents:
        seen = a["last_seen_ns"] or 0
        oldest = a["oldest_unsent_ns"]
        rows.append(
            {
                "name": a["name"],
                "site": a["site"],
                "state": "online" if now - seen <= silent_ns else "silent",
                "last_seen": _iso_ns(seen),
                "last_seen_ago_s": round((now - seen) / 1e9, 1),
                "version": a["version"],
                "hostname": a["hostname"],
                "clock_offset_ms": None
                if a["clock_offset_ns"] is None
                else round(a["clock_offset_ns"] / 1e6, 3),
                "clock_rtt_ms": None if a["clock_rtt_ns"] is None else round(a["clock_rtt_ns"] / 1e6, 3),
                "spool_depth": a["spool_depth"],
                "oldest_unsent_age_s": None if not oldest else round((now - oldest) / 1e9, 1),
                # sha256 of the raw Ed25519 public key that signs its records (evidence), if any
                "signing_key_sha256": keys.get(a["name"]),
            }
        )
    if fmt == "json":
        click.echo(render_json({"agents": rows}))
        return
    headers = [
        "name",
        "site",
        "state",
        "last seen",
        "version",
        "clock offset",
        "rtt",
        "spool",
        "oldest unsent",
    ]
    table = [
        [
            r["name"],
            r["site"],
            r["state"],
            f"{_fmt_duration(r['last_seen_ago_s'])} ago",
            r["version"],
            "-" if r["clock_offset_ms"] is None else f"{r['clock_offset_ms']:+.1f} ms",
            "-" if r["clock_rtt_ms"] is None else f"{r['clock_rtt_ms']:.1f} ms",
            r["spool_depth"],
            "-" if r["oldest_unsent_age_s"] is None else _fmt_duration(r["oldest_unsent_age_s"]),
        ]
        for r in rows
    ]
    if fmt == "csv":
        click.echo(render_csv(headers, table), nl=False)
    elif not rows:
        click.echo("no agents have registered yet")
    else:
        click.echo(render_table(headers, table, "lllrlrrrr"))


def _iso_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _hostname() -> str:
    import socket

    return socket.gethostname()


# ---- config ----------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Validate configuration files."""


@config.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def config_check(files: tuple[Path, ...]) -> None:
    """Validate catalogue and agent files; print file:line: field: problem for each error.

    The kind is recognised from the content: a catalogue has ``sites``, an
    agent file has ``collector``.

    \b
    Example:
      slaprobe config check examples/catalogue.yaml examples/agent.yaml
    """
    from agent.config import parse_agent_config
    from collector.catalogue import load_catalogue

    failed = 0
    for path in files:
        try:
            root = load_yaml_file(path)
            keys = set(root.value) if root.is_mapping else set()
            if "sites" in keys:
                cat = load_catalogue(path)
                checks = len(cat.all_checks())
                click.echo(f"{path}: ok (catalogue: {len(cat.sites)} sites, {checks} checks)")
            elif "collector" in keys:
                parse_agent_config(root, path.resolve().parent)
                click.echo(f"{path}: ok (agent configuration)")
            else:
                Fields(root, "a catalogue (with 'sites') or an agent file (with 'collector')")
                raise ConfigError(
                    str(path), 1, "", "neither a catalogue (no 'sites') nor an agent file (no 'collector')"
                )
        except ConfigError as exc:
            failed += 1
            click.echo(str(exc), err=True)
    if failed:
        raise click.exceptions.Exit(1)


# ---- shared helpers (SLA commands live in slaprobe/cli_sla.py) -------------------------


def _duration(text: str, hint: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def _fmt_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h < 48 else f"{h // 24}d{h % 24:02d}h"


# ---- helpers ------------------------------------------------------------------------------


def _config(load: Any) -> Any:
    try:
        return load()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _run_async(fn: Any) -> None:
    try:
        asyncio.run(fn())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it
        with contextlib.suppress(Exception):
            sys.stderr.write("interrupted\n")
        raise click.exceptions.Exit(130) from None


# `agent install | upgrade | status | uninstall` (remote hosts over SSH) live in their own module.
# `evidence export | verify` live in their own module.
from slaprobe import cli_evidence as _cli_evidence  # noqa: E402, F401
from slaprobe import cli_install as _cli_install  # noqa: E402, F401

# `compliance`, `incidents`, `budget`, `sla whatif`, `maintenance`, `db prune` live in their own module.
from slaprobe import cli_sla as _cli_sla  # noqa: E402, F401
