"""TCP probe: can a connection be opened? Phases ``resolve, connect``."""

from __future__ import annotations

from slaprobe.configfile import Fields, Node

from ._net import HostPort, IpVersion, connect, parse_host_port, read_ip_version, resolve
from .base import PhaseTrace, Prober, ProbeResult


class TcpProber(Prober):
    type_name = "tcp"

    def __init__(self, endpoint: HostPort, ip_version: IpVersion) -> None:
        self.endpoint = endpoint
        self.ip_version = ip_version

    @classmethod
    def from_config(cls, target: Node, settings: Fields) -> TcpProber:
        return cls(parse_host_port(target), read_ip_version(settings))

    async def probe(self, trace: PhaseTrace) -> ProbeResult:
        family, sockaddr = await resolve(self.endpoint, self.ip_version, trace)
        sock = await connect(family, sockaddr, trace)
        sock.close()
        return ProbeResult(True, trace.close(), None, f"connected to {self.endpoint}", trace.fields)
