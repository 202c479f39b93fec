"""``slaprobe evidence export | verify``: bundles for SLA disputes (collector/evidence/)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from slaprobe.cli import main
from slaprobe.cli_sla import _now_option, _ns, _period, _period_options
from slaprobe.output import db_option, safe_output_path


@main.group("evidence")
def evidence_group() -> None:
    """Evidence for SLA disputes: export a signed bundle, verify one (no trust in our servers needed)."""


@evidence_group.command("export")
@click.option("--site", required=True, help="The site whose evidence to export.")
@click.option("--service", help="Only this service of the site ('(site)' is the site's own SLA).")
@_period_options
@db_option
@click.option(
    "--tls-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SLAPROBE_TLS_DIR",
    help="The collector's TLS directory, holding the evidence-signing key (signing.key).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The archive to write.",
)
@click.option("--force", is_flag=True, help="Replace an existing file.")
@_now_option
def export_cmd(
    site: str,
    service: str | None,
    period: str | None,
    start: str | None,
    end: str | None,
    last: str | None,
    db_path: Path,
    tls_dir: Path,
    output: Path,
    force: bool,
    now_text: str | None,
) -> None:
    """Write one archive with everything needed to settle a dispute about SITE over a period.

    The raw results exactly as the agents signed them (and as CSV and JSON Lines),
    the SLA definitions and their hash, the maintenance log, the agents and their
    keys, the report (JSON and a printable HTML page), SHA256SUMS and the
    collector's signature. Anyone can check it: see `slaprobe evidence verify`, or
    the README inside the archive for sha256sum and openssl.

    \b
    Examples:
      slaprobe evidence export --site paris --period 2026-10 --tls-dir /etc/slaprobe/tls -o paris-2026-10.tar.gz
      slaprobe evidence export --site paris --service shop --from 2026-10-03 --to 2026-10-05 -o shop.tar.gz
    """
    from collector.evidence.export import ExportError, export_bundle, load_signing_key
    from slaprobe.pki import SIGNING_KEY

    if not db_path.exists():
        raise click.ClickException(f"no database at {db_path}")
    out = safe_output_path(output, force=force)
    now = _ns(now_text, "--now") if now_text else time.time_ns()
    label = period or "-".join(x for x in (start, end) if x) or (f"last-{last}" if last else "window")
    try:
        key = load_signing_key(tls_dir / SIGNING_KEY)
        result = export_bundle(
            db_path,
            key,
            site,
            _period(period, start, end, last),
            out,
            service=service,
            now_ns=now,
            period_label=label,
        )
    except (ExportError, LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    links = sum(c["links"] for c in result.chains)
    click.echo(
        f"wrote {out} ({result.size / 1e6:.1f} MB, {result.files} files) in {result.seconds:.1f} s:"
        f" {result.results} results, {result.gaps} gap records, {len(result.chains)} agent chain(s) with"
        f" {links} signed links"
    )


@evidence_group.command("verify")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--all-signatures",
    is_flag=True,
    help="Check every link's signature (the default checks hashes everywhere and the signatures that"
    " vouch for the rest: eviction links and each chain's last link).",
)
def verify_cmd(bundle: Path, all_signatures: bool) -> None:
    """Check an evidence bundle end to end; exit 1 naming the first thing that does not hold.

    Checks every file's hash and the collector's signature, every agent's signed record
    chain, that the CSV and JSON tables say what the signed records say, and recomputes
    the report from the signed records.

    \b
    Example:
      slaprobe evidence verify paris-2026-10.tar.gz
    """
    from collector.evidence.verify import Verifier, VerifyFailed

    started = time.monotonic()
    try:
        Verifier(bundle, all_signatures=all_signatures, say=click.echo).run()
    except VerifyFailed as exc:
        click.echo(f"FAILED: {exc}", err=True)
        raise click.exceptions.Exit(1) from None
    click.echo(f"VERIFIED: {bundle} ({time.monotonic() - started:.1f} s)")
