"""The layout of an evidence bundle: file names, and the texts that travel with it."""

from __future__ import annotations

import re

FORMAT = "slaprobe-evidence/1"

MANIFEST = "MANIFEST.json"
README = "README.txt"
SUMS = "SHA256SUMS"
SUMS_SIG = "SHA256SUMS.sig"
COLLECTOR_KEY = "collector.pub.pem"
CATALOGUE = "sla/catalogue.yaml"
METHODOLOGY = "sla/methodology.md"
MAINTENANCE = "sla/maintenance.json"
CHECKS = "inventory/checks.json"
AGENTS = "inventory/agents.json"
RESULTS_CSV = "results/results.csv"
GAPS_CSV = "results/gaps.csv"
RESULTS_JSONL = "results/records.jsonl"
REPORT_JSON = "report/report.json"
REPORT_HTML = "report/report.html"
PROTO = "protos/slaprobe_v1.proto"

# Files the verifier regenerates from the chain files and compares byte for byte.
DERIVED = (RESULTS_CSV, GAPS_CSV, RESULTS_JSONL)


def bundle_name(site: str, service: str | None, label: str) -> str:
    parts = ["evidence", site] + ([service] if service else []) + [label]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts))


def methodology_text() -> str:
    """The counting rules in words: the docstrings the engine and the chain are written to."""
    from collector.sla import engine, report
    from slaprobe import chain

    return (
        "# How this report is computed\n\n"
        "These are the rules of the slaprobe version that exported this bundle, quoted from the\n"
        "code that applies them. `slaprobe evidence verify` applies them again to the raw records.\n\n"
        "## Slots, slot states and slices (collector/sla/engine.py)\n\n"
        f"{_dedent(engine.__doc__)}\n\n"
        "## Time accounts, maintenance, budget, latency, status (collector/sla/report.py)\n\n"
        f"{_dedent(report.__doc__)}\n\n"
        "## The agents' signed record chain (slaprobe/chain.py)\n\n"
        f"{_dedent(chain.__doc__)}\n"
    )


def _dedent(text: str | None) -> str:
    return (text or "").strip()


def readme_text() -> str:
    return f"""This is a slaprobe evidence bundle ({FORMAT}).

What it holds
  {MANIFEST}        what was exported: site, service, period, files, agent chains
  {REPORT_HTML}    the report for people (open in a browser, print to PDF)
  {REPORT_JSON}    the same report for programs
  {RESULTS_CSV}    every probe result of the period, one per line
  {GAPS_CSV}       results an agent had to drop (spool full): shown, never hidden
  {RESULTS_JSONL}   results, gaps and clock measurements for programs
  records/*.chain        the records exactly as each agent signed them
  {CATALOGUE}   the SLA definitions in force; {METHODOLOGY}: the counting rules
  {MAINTENANCE} maintenance windows: who, when, why
  {AGENTS} the agents and their public keys; {CHECKS}: the checks
  {SUMS}, {SUMS_SIG}, {COLLECTOR_KEY}: integrity and the collector's signature

Check it without slaprobe (GNU coreutils and OpenSSL 3):
  sha256sum -c {SUMS}
  openssl pkeyutl -verify -pubin -inkey {COLLECTOR_KEY} -rawin -in {SUMS} -sigfile {SUMS_SIG}
Both must succeed. Then compare the collector key's fingerprint,
  openssl pkey -pubin -in {COLLECTOR_KEY} -outform DER | tail -c 32 | sha256sum
with the one in {MANIFEST} and the one the provider published.

Check everything, including every agent signature and the report itself:
  slaprobe evidence verify <this archive>
"""
