"""Network steps shared by probes: resolve, connect, TLS, with errors mapped to ErrorKind.

Each step enters its phase on the trace, so the phase names mean the same
thing in every probe (``resolve``, ``connect``, ``tls``).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Literal

from slaprobe.configfile import Fields, Node

from .base import ErrorKind, PhaseTrace, ProbeFailure

IpVersion = Literal["any", "ipv4", "ipv6"]

_FAMILIES = {"any": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    @property
    def is_ip_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(node: Node, default_port: int | None = None) -> HostPort:
    """Parse ``host:port`` or ``[v6addr]:port`` from a target field."""
    text = node.value
    if not isinstance(text, str) or not text.strip():
        node.fail("expected host:port")
    text = text.strip()
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            node.fail(f"unclosed '[' in {text!r}; write IPv6 targets as [::1]:443")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            node.fail(f"expected ':port' after ']' in {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        node.fail(f"IPv6 addresses need brackets: [{text}]:port")
    else:
        host, port_text = text, None
    if not host:
        node.fail(f"missing host in {text!r}")
    if port_text is None:
        if default_port is None:
            node.fail(f"missing port in {text!r}; write host:port")
        return HostPort(host, default_port)
    if not port_text.isdigit() or not (0 < int(port_text) < 65536):
        node.fail(f"port must be a number from 1 to 65535, got {port_text!r}")
    return HostPort(host, int(port_text))


def read_ip_version(settings: Fields) -> IpVersion:
    value: IpVersion = settings.choice("ip_version", ("any", "ipv4", "ipv6"), "any")
    return value


async def resolve(
    target: HostPort, ip_version: IpVersion, trace: PhaseTrace
) -> tuple[int, tuple[str, int] | tuple[str, int, int, int]]:
    """Return (family, sockaddr) for the first usable address."""
    trace.enter("resolve")
    if target.is_ip_literal:
        addr = ipaddress.ip_address(target.host)
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        if ip_version == "ipv4" and family != socket.AF_INET:
            raise ProbeFailure(ErrorKind.DNS, f"{target.host} is not an IPv4 address (ip_version: ipv4)")
        if ip_version == "ipv6" and family != socket.AF_INET6:
            raise ProbeFailure(ErrorKind.DNS, f"{target.host} is not an IPv6 address (ip_version: ipv6)")
        sockaddr: tuple[str, int] | tuple[str, int, int, int] = (
            (target.host, target.port, 0, 0) if family == socket.AF_INET6 else (target.host, target.port)
        )
        trace.fields["ip"] = target.host
        return family, sockaddr
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            target.host, target.port, family=_FAMILIES[ip_version], type=socket.SOCK_STREAM
        )
    except socket.gaierror as exc:
        raise ProbeFailure(ErrorKind.DNS, f"cannot resolve {target.host}: {exc.strerror}") from exc
    if not infos:
        raise ProbeFailure(ErrorKind.DNS, f"no addresses for {target.host}")
    family, _, _, _, sockaddr = infos[0]
    trace.fields["ip"] = str(sockaddr[0])
    return family, sockaddr


async def connect(family: int, sockaddr: tuple[str, int] | tuple[str, int, int, int], trace: PhaseTrace) -> socket.socket:
    """Open a fresh TCP connection (never pooled: pooling would hide connect time)."""
    trace.enter("connect")
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, sockaddr)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, ConnectionRefusedError):
            raise ProbeFailure(ErrorKind.REFUSED, f"connection refused by {_fmt(sockaddr)}") from exc
        if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
            kind = ErrorKind.RESET if exc.errno == errno.ECONNRESET else ErrorKind.UNREACHABLE
            raise ProbeFailure(kind, f"cannot connect to {_fmt(sockaddr)}: {exc.strerror or exc}") from exc
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _fmt(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class TlsOptions:
    verify: bool = True
    ca_file: str | None = None
    server_name: str | None = None

    @classmethod
    def read(cls, settings: Fields) -> TlsOptions:
        return cls(
            verify=settings.bool("tls_verify", True),
            ca_file=settings.str("ca_file", None),
            server_name=settings.str("server_name", None),
        )

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


async def start_tls(
    writer: asyncio.StreamWriter, ctx: ssl.SSLContext, server_name: str, trace: PhaseTrace
) -> None:
    """Upgrade an open connection to TLS and record certificate facts."""
    trace.enter("tls")
    try:
        await writer.start_tls(ctx, server_hostname=server_name)
    except ssl.SSLCertVerificationError as exc:
        raise ProbeFailure(ErrorKind.TLS, f"certificate rejected: {exc.verify_message}") from exc
    except ssl.SSLError as exc:
        raise ProbeFailure(ErrorKind.TLS, f"TLS handshake failed: {exc.reason or exc}") from exc
    except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
        raise ProbeFailure(ErrorKind.RESET, "connection closed during the TLS handshake") from exc
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is not None:
        trace.fields["tls_version"] = str(ssl_object.version())
        cert = ssl_object.getpeercert()
        if cert and "notAfter" in cert:
            expires = ssl.cert_time_to_seconds(str(cert["notAfter"]))
            trace.fields["cert_days_left"] = round((expires - time.time()) / 86400.0, 3)
