"""Catalogue and agent-file validation, one fixture file per rule (as blackbox_exporter's testdata).

``tests/configs/invalid-*.yaml``: each breaks exactly one rule, and its first
line is ``# error: <the exact message>`` with the file's path written as
``{file}`` (write a literal brace as ``{{`` or ``}}``) and the probe registry's
types as ``{known_types}``. The message is the
contract: an operator reads it with the file open in an editor, so the line,
the dotted field and the wording are all asserted, not just "it failed".

``tests/configs/valid-*.yaml``: each loads, and the facts in ``CATALOGUE_FACTS``
or ``AGENT_FACTS`` hold. Files whose name starts with ``valid-agent-`` or
``invalid-agent-`` are agent files; the others are catalogues.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agent.config import AgentConfig, load_agent_config, parse_agent_config
from collector.catalogue import (
    Catalogue,
    LatencyObjective,
    SlaTarget,
    load_catalogue,
    parse_catalogue,
)
from probes.registry import PROBERS
from slaprobe.cli import main
from slaprobe.configfile import ConfigError, load_yaml_text

CONFIGS = Path(__file__).parent / "configs"
EXAMPLES = Path(__file__).parent.parent / "examples"
INVALID = sorted(CONFIGS.glob("invalid-*.yaml"))
VALID = sorted(CONFIGS.glob("valid-*.yaml"))
ERROR_PREFIX = "# error: "


def _name(path: Path) -> str:
    return path.name


def _is_agent_file(path: Path) -> bool:
    return path.name.startswith(("valid-agent-", "invalid-agent-"))


def _load(path: Path) -> Catalogue | AgentConfig:
    return load_agent_config(path) if _is_agent_file(path) else load_catalogue(path)


def _parse_text(path: Path, source: str) -> Catalogue | AgentConfig:
    """Validate the file's text under another source name, as the in-memory entry points do."""
    text = path.read_text(encoding="utf-8")
    if _is_agent_file(path):
        return parse_agent_config(load_yaml_text(text, source))
    return parse_catalogue(text, source)


def _expected_error(path: Path) -> str:
    """The fixture's first line; ``{known_types}`` there stands for the probe registry's types, so a
    new probe type is one file and one registry line, not an edit of this fixture too."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(ERROR_PREFIX), f"{path.name}: first line must be '{ERROR_PREFIX}...'"
    return first[len(ERROR_PREFIX) :].replace("{known_types}", ", ".join(sorted(PROBERS)))


# ---- the fixture set itself -----------------------------------------------------------


def test_fixture_directory_is_populated() -> None:
    assert len(INVALID) >= 50
    assert len(VALID) >= 3


@pytest.mark.parametrize("path", INVALID, ids=_name)
def test_invalid_fixture_declares_one_located_error(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    expected = _expected_error(path)
    assert expected.startswith("{file}"), "the message must start with the file"
    assert sum(line.startswith(ERROR_PREFIX) for line in lines) == 1
    # The line the error names exists in the file (line 1 is the error comment).
    m = re.match(r"\{file\}:(\d+): ", expected)
    assert m is not None, "every fixture error names a line"
    assert 1 <= int(m.group(1)) <= max(len(lines), 1)


# ---- invalid files: the exact message -----------------------------------------------------


@pytest.mark.parametrize("path", INVALID, ids=_name)
def test_invalid_config_is_rejected_with_the_expected_message(path: Path) -> None:
    expected = _expected_error(path)
    with pytest.raises(ConfigError) as excinfo:
        _load(path)
    assert str(excinfo.value) == expected.format(file=path)


@pytest.mark.parametrize("path", INVALID, ids=_name)
def test_invalid_text_gives_the_same_message_under_any_source_name(path: Path) -> None:
    # parse_catalogue (used on reload) and load_catalogue must agree on every message.
    expected = _expected_error(path)
    with pytest.raises(ConfigError) as excinfo:
        _parse_text(path, "inline.yaml")
    assert str(excinfo.value) == expected.format(file="inline.yaml")
    assert excinfo.value.source == "inline.yaml"


# ---- valid files: the facts ------------------------------------------------------------

CATALOGUE_FACTS: dict[str, dict[str, Any]] = {
    "valid-minimal.yaml": {
        "sites": {"lab": {"description": "", "sla": SlaTarget()}},
        "checks": {
            "lab/ssh": {
                "type": "tcp",
                "target": "192.0.2.10:22",
                "interval_ms": 30_000,
                "timeout_ms": 5_000,
                "degraded_after_ms": 0,
                "settings": {},
            },
        },
    },
    "valid-all-options.yaml": {
        "sites": {
            "paris": {
                "description": "Paris office: intranet and VPN",
                "sla": SlaTarget(99.95, LatencyObjective(99.9, 1500.0)),
            },
            "lyon.dc-2": {"description": "", "sla": SlaTarget(99.0, None)},
        },
        "checks": {
            "paris/intranet": {
                "type": "http",
                "target": "https://intranet.example.com:8443/health?full=1",
                "interval_ms": 5_400_000,
                "timeout_ms": 2_500,
                "degraded_after_ms": 750,
                # Forwarded to the agent as written (JSON-able, no locations).
                "settings": {
                    "method": "POST",
                    "headers": {"Authorization": "Bearer not-a-real-token", "X-Probe": "slaprobe"},
                    "body": '{"ping": true}',
                    "valid_status": [200, 204, "3xx"],
                    "body_matches": ["status: *up"],
                    "body_not_matches": ["(?i)maintenance"],
                    "tls_verify": False,
                    "ca_file": "/etc/ssl/private-ca.pem",
                    "server_name": "intranet.internal",
                    "ip_version": "ipv4",
                    "max_body_bytes": 4096,
                },
            },
            "paris/vpn": {
                "type": "tcp",
                "target": "[2001:db8::1]:443",
                "interval_ms": 60_000,  # from defaults
                "timeout_ms": 10_000,  # from defaults
                "degraded_after_ms": 0,
                "settings": {"ip_version": "ipv6"},
            },
            "lyon.dc-2/web": {
                "type": "http",
                "interval_ms": 60_000,
                "timeout_ms": 10_000,
                "settings": {},
            },
        },
    },
    "valid-tricky-names.yaml": {
        "sites": {"no": {"description": ""}, "zürich": {"description": ""}},
        "checks": {
            "no/off": {"site": "no", "name": "off", "type": "tcp"},
            "no/api%2Fv2": {"site": "no", "name": "api/v2", "type": "http"},
            "zürich/1.50": {"site": "zürich", "name": "1.50", "target": "zürich.example.ch:443"},
        },
    },
}

AGENT_FACTS: dict[str, dict[str, Any]] = {
    "valid-agent-minimal.yaml": {
        "collector": "collector.example.net:7431",
        "site": "lab",
        "data_dir": CONFIGS / "slaprobe-agent-data",
        "batch_max": 1000,
        "heartbeat_s": 15.0,
    },
    "valid-agent-all-options.yaml": {
        "collector": "[2001:db8::7]:7431",
        "site": "paris",
        "name": "paris-probe-1",
        "data_dir": CONFIGS / "agent-data",  # relative: resolved against the file's folder
        "batch_max": 500,
        "heartbeat_s": 60.0,
    },
}


def _subset(obj: object, expected: dict[str, Any]) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in expected}


@pytest.mark.parametrize("path", VALID, ids=_name)
def test_valid_config_loads_with_the_expected_facts(path: Path) -> None:
    assert path.read_text(encoding="utf-8").startswith("#"), "start valid fixtures with a comment"
    assert ERROR_PREFIX not in path.read_text(encoding="utf-8")
    loaded = _load(path)
    if isinstance(loaded, AgentConfig):
        facts = AGENT_FACTS[path.name]
        assert _subset(loaded, facts) == facts
        assert loaded.source == str(path)
        return
    facts = CATALOGUE_FACTS[path.name]
    assert list(loaded.sites) == list(facts["sites"])  # order as written
    for name, site_facts in facts["sites"].items():
        assert _subset(loaded.sites[name], site_facts) == site_facts
    checks = {c.id: c for c in loaded.all_checks()}
    assert sorted(checks) == sorted(facts["checks"])
    for check_id, check_facts in facts["checks"].items():
        assert _subset(checks[check_id], check_facts) == check_facts
    assert loaded.source == str(path)


def test_every_valid_fixture_has_facts() -> None:
    assert sorted(p.name for p in VALID) == sorted([*CATALOGUE_FACTS, *AGENT_FACTS])


@pytest.mark.parametrize("path", [p for p in VALID if not _is_agent_file(p)], ids=_name)
def test_revisions_are_set_and_stable_across_loads(path: Path) -> None:
    first, second = load_catalogue(path), load_catalogue(path)
    revs = {c.id: c.revision for c in first.all_checks()}
    assert all(re.fullmatch(r"[0-9a-f]{16}", r) for r in revs.values()), revs
    assert revs == {c.id: c.revision for c in second.all_checks()}
    assert len(set(revs.values())) == len(revs)  # distinct checks, distinct revisions
    # The same text under another name is the same catalogue to an agent.
    renamed = parse_catalogue(path.read_text(encoding="utf-8"), "other.yaml")
    assert revs == {c.id: c.revision for c in renamed.all_checks()}
    assert first.digest == second.digest


def _revisions(text: str) -> dict[str, str]:
    return {c.id: c.revision for c in parse_catalogue(text, "edited.yaml").all_checks()}


ALL_OPTIONS = CONFIGS / "valid-all-options.yaml"


@pytest.mark.parametrize(
    ("old", "new", "changed"),
    [
        ("max_body_bytes: 4096", "max_body_bytes: 8192", {"paris/intranet"}),
        ("X-Probe: slaprobe", "X-Probe: other", {"paris/intranet"}),
        ("ip_version: ipv6", "ip_version: any", {"paris/vpn"}),
        ("interval: 1h30m", "interval: 1h", {"paris/intranet"}),
        ("timeout: 2500ms", "timeout: 3s", {"paris/intranet"}),
        ("degraded_after: 750ms", "degraded_after: 1s", {"paris/intranet"}),
        ("target: http://192.0.2.20/", "target: http://192.0.2.21/", {"lyon.dc-2/web"}),
        # A default applies to every check that does not override it.
        ("  timeout: 10s", "  timeout: 9s", {"paris/vpn", "lyon.dc-2/web"}),
        # SLA targets and descriptions are the collector's business: agents keep their checks.
        ("availability: 99.95%", "availability: 99.9%", set()),
        ("threshold: 1.5s", "threshold: 2s", set()),
        ('description: "Paris office: intranet and VPN"', "description: Paris", set()),
    ],
)
def test_a_change_alters_exactly_the_revisions_of_the_checks_it_affects(
    old: str, new: str, changed: set[str]
) -> None:
    text = ALL_OPTIONS.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    before, after = _revisions(text), _revisions(text.replace(old, new))
    assert before.keys() == after.keys()
    assert {k for k in before if before[k] != after[k]} == changed
    # Any edit changes the digest (which tells the collector the file changed at all).
    assert parse_catalogue(text, "a").digest != parse_catalogue(text.replace(old, new), "a").digest


def test_a_comment_does_not_change_any_revision() -> None:
    text = ALL_OPTIONS.read_text(encoding="utf-8")
    assert _revisions(text) == _revisions(text + "\n# a trailing comment\n")


@pytest.mark.parametrize("name", ["catalogue.yaml", "agent.yaml"])
def test_the_shipped_examples_are_valid(name: str) -> None:
    path = EXAMPLES / name
    loaded = load_agent_config(path) if name == "agent.yaml" else load_catalogue(path)
    assert loaded.source == str(path)


def test_agent_name_defaults_to_the_host_name() -> None:
    import socket

    cfg = load_agent_config(CONFIGS / "valid-agent-minimal.yaml")
    assert cfg == replace(cfg, name=socket.gethostname())


# ---- `slaprobe config check` ------------------------------------------------------------


def _check(*paths: Path | str) -> Any:
    return CliRunner().invoke(main, ["config", "check", *map(str, paths)])


def test_cli_accepts_a_valid_catalogue() -> None:
    path = CONFIGS / "valid-all-options.yaml"
    result = _check(path)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{path}: ok (catalogue: 2 sites, 3 checks)\n"
    assert result.stderr == ""


def test_cli_accepts_an_agent_file_and_several_files_at_once() -> None:
    paths = [CONFIGS / "valid-minimal.yaml", CONFIGS / "valid-agent-all-options.yaml"]
    result = _check(*paths)
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()
    assert first.startswith(f"{paths[0]}: ok (catalogue: 1 site")  # wording of the count aside
    assert second == f"{paths[1]}: ok (agent configuration)"


@pytest.mark.parametrize(
    "name",
    [
        "invalid-duration-without-unit-quoted.yaml",
        "invalid-http-unknown-setting.yaml",
        "invalid-yaml-syntax.yaml",
        "invalid-agent-unknown-key.yaml",
    ],
)
def test_cli_prints_the_exact_error_line_and_exits_1(name: str) -> None:
    path = CONFIGS / name
    result = _check(path)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == _expected_error(path).format(file=path) + "\n"
    assert "Traceback" not in result.output


def test_cli_checks_every_file_even_after_a_failure() -> None:
    bad = CONFIGS / "invalid-tcp-missing-port.yaml"
    good = CONFIGS / "valid-minimal.yaml"
    result = _check(bad, good)
    assert result.exit_code == 1
    assert result.stderr == _expected_error(bad).format(file=bad) + "\n"
    assert result.stdout.startswith(f"{good}: ok (catalogue: ")


def test_cli_names_a_file_that_is_neither_kind() -> None:
    # No `sites` and no `collector`: the command cannot tell which rules apply.
    path = CONFIGS / "invalid-missing-sites.yaml"
    result = _check(path)
    assert result.exit_code == 1
    assert result.stderr == (
        f"{path}:1: neither a catalogue (no 'sites') nor an agent file (no 'collector')\n"
    )


def test_cli_reports_a_missing_file_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    result = _check(path)
    assert result.exit_code == 1
    assert result.stderr == f"{path}: file not found\n"
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_cli_reports_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("sites:\n  zürich: {}\n".encode("latin-1"))
    result = _check(path)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}: not UTF-8 text (")
    assert "Traceback" not in result.output
