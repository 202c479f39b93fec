"""The layout of an evidence bundle: file names, and the texts that travel with it."""

from __future__ import annotations

import re

FORMAT = "slaprobe-evidence/2"  # 2: records.jsonl as arrays under a column header; rejected.csv

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
REJECTED_CSV = "results/rejected.csv"
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
        "## Records rejected at ingest (results/rejected.csv)\n\n"
        f"{REJECTED_RULES}\n\n"
        "## The agents' signed record chain (slaprobe/chain.py)\n\n"
        f"{_dedent(chain.__doc__)}\n"
    )


REJECTED_RULES = """\
The collector validates every record it receives, alone, and rejects a record that breaks a rule:
a result or gap whose time is more than the allowed clock skew (the manifest's
`ingest.max_future_skew_ns`, 300 s by default) after the collector received it, a result of a
check the agent's site did not have when it arrived, or a malformed record (a success carrying an
error kind, a failure without one, an absurd duration, text too long ...). A rejected record is
still kept exactly as the agent signed it (it is part of the chain), but it is not stored as a
result, so it counts for nothing: its slot is unknown unless another agent's result covers it.

The bundle lists every record of its chains the collector rejected, with the collector's reason
and the time it received the record, in results/rejected.csv; the report gives their number by
reason (`excluded`). `slaprobe evidence verify` re-applies the rule to each listed record with that
receipt time and excludes exactly those: a listed rejection that does not follow from the record
fails the verification (a collector cannot drop a valid result by calling it rejected), and so
does a record that breaks a rule whatever the time but is not listed. The receipt time is the
collector's word; it is held to the collector's own times the agent signed: a record is received
after every clock exchange the agent recorded before it in the chain (the exchange's collector
send time, less 2 s for a step of the collector's clock).\
"""


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
  {REJECTED_CSV}   records the collector rejected at ingest (kept, signed, not counted)
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
