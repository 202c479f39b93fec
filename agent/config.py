"""Agent configuration file (YAML), validated at load with file:line: field errors.

collector: 127.0.0.1:7431     # host:port of the collector's gRPC endpoint
site: paris                   # the site whose checks this agent runs
name: paris-probe-1           # unique in the fleet; defaults to the host name
data_dir: /var/lib/slaprobe   # check cache (and, later, the spool)
batch_max: 1000               # records per message at most
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from slaprobe.configfile import Fields, Node, load_yaml_file


@dataclass(frozen=True)
class AgentConfig:
    collector: str
    site: str
    name: str
    data_dir: Path
    batch_max: int = 1000
    heartbeat_s: float = 15.0
    source: str = ""


def parse_agent_config(root: Node, base_dir: Path | None = None) -> AgentConfig:
    f = Fields(root, "an agent configuration (a mapping)")
    collector = f.str("collector")
    if ":" not in collector.strip("[]") and not collector.startswith("unix:"):
        node = f.raw("collector")
        assert node is not None
        node.fail(f"expected host:port, got {collector!r}")
    data_dir = Path(f.str("data_dir", "slaprobe-agent-data"))
    if not data_dir.is_absolute() and base_dir is not None:
        data_dir = (base_dir / data_dir).resolve()
    cfg = AgentConfig(
        collector=collector,
        site=f.str("site"),
        name=f.str("name", socket.gethostname()),
        data_dir=data_dir,
        batch_max=f.int("batch_max", 1000, min=1, max=10_000),
        heartbeat_s=f.duration("heartbeat", 15.0, min=1.0, max=300.0),
        source=root.source,
    )
    f.finish()
    return cfg


def load_agent_config(path: str | Path) -> AgentConfig:
    p = Path(path)
    return parse_agent_config(load_yaml_file(p), p.resolve().parent)
