"""Probe type name → prober class. Adding a probe type: one module, one line here."""

from __future__ import annotations

from slaprobe.configfile import Fields, Node

from .base import Prober
from .dns import DnsProber
from .grpc_health import GrpcHealthProber
from .http import HttpProber
from .icmp import IcmpProber
from .ssh import SshProber
from .tcp import TcpProber
from .tls import TlsProber

PROBERS: dict[str, type[Prober]] = {
    DnsProber.type_name: DnsProber,
    GrpcHealthProber.type_name: GrpcHealthProber,
    HttpProber.type_name: HttpProber,
    IcmpProber.type_name: IcmpProber,
    SshProber.type_name: SshProber,
    TcpProber.type_name: TcpProber,
    TlsProber.type_name: TlsProber,
}


def build_prober(type_node: Node, target: Node, settings: Node | None) -> Prober:
    """Validate a check's probe part and return a ready prober; ConfigError names the field."""
    type_name = type_node.value
    cls = PROBERS.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        type_node.fail(f"unknown probe type {type_name!r}; known types: {', '.join(sorted(PROBERS))}")
    node = (
        settings
        if settings is not None and settings.value is not None
        else Node(
            {},
            target.source,
            target.line,
            target.path.rsplit(".", 1)[0] + ".settings" if target.path else "settings",
        )
    )
    fields = Fields(node, "a mapping of probe settings")
    prober = cls.from_config(target, fields)
    fields.finish()
    return prober
