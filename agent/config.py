"""Agent configuration file (YAML), validated at load with file:line: field errors.

collector: 127.0.0.1:7431     # host:port of the collector's gRPC endpoint
site: paris                   # the site whose checks this agent runs
name: paris-probe-1           # unique in the fleet; defaults to the host name
data_dir: /var/lib/slaprobe   # check cache and the durable spool (spool.db)
batch_max: 1000               # records per message at most
heartbeat: 15s                # liveness and clock exchange with the collector
tls_dir: /var/lib/slaprobe/tls  # agent.key, agent.crt, ca.crt from `slaprobe agent enroll` (default data_dir/tls)
insecure: false               # true: plaintext to a collector run with --insecure (never in production)
keepalive: 20s                # gRPC ping interval; a dead path is noticed within ~1.5x this
spool:
  max_size: 512MiB            # beyond this size or age the oldest unsent results are evicted
  max_age: 7d                 # and replaced by a gap record that is delivered in their place
  seal_interval: 5s           # results are signed (sealed) in links at least this often; they are
                              # sent once sealed, so this is also the longest a result waits
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from pathlib import Path

from probes._net import parse_host_port
from slaprobe.configfile import Fields, Node, load_yaml_file


@dataclass(frozen=True)
class AgentConfig:
    collector: str
    site: str
    name: str
    data_dir: Path
    batch_max: int = 1000
    heartbeat_s: float = 15.0
    keepalive_s: float = 20.0
    spool_max_bytes: int = 512 * 1024 * 1024
    spool_max_age_s: float = 7 * 86400.0
    seal_interval_s: float = 5.0
    insecure: bool = False
    tls_dir: Path | None = None  # default: data_dir/tls
    source: str = ""

    @property
    def tls_path(self) -> Path:
        return self.tls_dir if self.tls_dir is not None else self.data_dir / "tls"


def parse_agent_config(root: Node, base_dir: Path | None = None) -> AgentConfig:
    f = Fields(root, "an agent configuration (a mapping)")
    collector = f.str("collector")
    collector_node = f.raw("collector")
    assert collector_node is not None
    parse_host_port(collector_node)  # validates host, port and IPv6 brackets, naming the field
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
        keepalive_s=f.duration("keepalive", 20.0, min=1.0, max=600.0),
        insecure=f.bool("insecure", False),
        tls_dir=_path(f.str("tls_dir", None), base_dir),
        source=root.source,
    )
    spool = f.mapping("spool")
    if spool is not None:
        cfg = replace(
            cfg,
            spool_max_bytes=spool.size("max_size", cfg.spool_max_bytes, min=16 * 1024),
            spool_max_age_s=spool.duration("max_age", cfg.spool_max_age_s, min=1.0),
            seal_interval_s=spool.duration("seal_interval", cfg.seal_interval_s, min=0.1, max=300.0),
        )
        spool.finish()
    f.finish()
    return cfg


def _path(value: str | None, base_dir: Path | None) -> Path | None:
    if value is None:
        return None
    p = Path(value)
    return (base_dir / p).resolve() if not p.is_absolute() and base_dir is not None else p


def load_agent_config(path: str | Path) -> AgentConfig:
    p = Path(path)
    return parse_agent_config(load_yaml_file(p), p.resolve().parent)
