"""gRPC health probe: ``grpc.health.v1.Health/Check`` for one service, plaintext or TLS.

Phases ``connect, request``. ``connect`` runs until the channel is ready:
name resolution (gRPC's own resolver), the TCP connection, the TLS handshake
when ``tls: true`` and the HTTP/2 preface. ``request`` is the Check call.

Every run opens a fresh channel with ``grpc.use_local_subchannel_pool`` so it
shares no connection with another channel in the process (a pooled
connection would hide connect time, and a dead one would be blamed on the
wrong run), with retries and HTTP proxies switched off.

gRPC does not give up on a channel by itself: it retries connecting until the
deadline. So when the channel reports ``TRANSIENT_FAILURE`` the probe makes
the call at once without waiting for readiness; it fails with ``UNAVAILABLE``
and the reason, which :func:`_failure` maps to the error vocabulary. No
deadline is set on the call: the runner's timeout is the deadline.

Outcomes, the gRPC side mapped in one place (:func:`_failure`)::

    SERVING                               success
    NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN status (serving_status names it)
    NOT_FOUND (service unknown to server) status, serving_status SERVICE_UNKNOWN
    UNIMPLEMENTED (no health service)     status
    UNAVAILABLE: connection refused       refused
    UNAVAILABLE: TLS handshake, hostname  tls
    UNAVAILABLE: socket closed or reset   reset
    UNAVAILABLE: not HTTP/2               protocol
    UNAVAILABLE: name not resolved        dns
    UNAVAILABLE: anything else            unreachable
    any other gRPC status                 status (grpc_code names it)
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from slaprobe import __version__
from slaprobe.configfile import Fields, Node

from ._net import HostPort, check_host, parse_host_port
from .base import ErrorKind, PhaseTrace, ProbeFailure, Prober, ProbeResult

_HEALTH = "grpc.health.v1.Health"
_CHECK = f"/{_HEALTH}/Check"
_ServingStatus = health_pb2.HealthCheckResponse.ServingStatus
_NOT_READY = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)
# "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: <reason>"
_LAST_ERROR = re.compile(r"last error: [A-Z_]+: (?:(?:ipv4|ipv6|unix|dns):\S*: )?(?P<reason>.*)", re.DOTALL)


@dataclass(frozen=True)
class GrpcHealthSettings:
    service: str
    tls: bool
    ca_file: str | None
    server_name: str | None


class GrpcHealthProber(Prober):
    type_name = "grpc_health"

    def __init__(self, endpoint: HostPort, settings: GrpcHealthSettings) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._credentials: grpc.ChannelCredentials | None = None

    @classmethod
    def from_config(cls, target: Node, settings: Fields) -> GrpcHealthProber:
        endpoint = parse_host_port(target)
        service: str = settings.str("service", "", nonempty=False)
        tls: bool = settings.bool("tls", False)
        ca_file: str | None = settings.str("ca_file", None)
        server_name: str | None = settings.str("server_name", None)
        for key, value in (("ca_file", ca_file), ("server_name", server_name)):
            if value is not None and not tls:
                node = settings.raw(key)
                assert node is not None
                node.fail(f"{key} applies to TLS only; add tls: true")
        if server_name is not None:
            server_name = server_name.strip()
            node = settings.raw("server_name")
            assert node is not None
            check_host(node, server_name)
        return cls(endpoint, GrpcHealthSettings(service, tls, ca_file, server_name))

    def _options(self) -> list[tuple[str, str | int]]:
        options: list[tuple[str, str | int]] = [
            ("grpc.use_local_subchannel_pool", 1),  # a connection of our own, not a shared one
            ("grpc.enable_retries", 0),  # one attempt: a retry would hide a failure
            ("grpc.enable_http_proxy", 0),  # measure the target, not a proxy from the environment
            ("grpc.service_config_disable_resolution", 1),  # no extra DNS TXT lookup
            ("grpc.primary_user_agent", f"slaprobe/{__version__}"),
        ]
        if self.settings.server_name is not None:
            options.append(("grpc.ssl_target_name_override", self.settings.server_name))
        return options

    def _load_credentials(self) -> grpc.ChannelCredentials:
        """Read the CA bundle: file I/O, so it runs in a thread."""
        roots: bytes | None = None
        if self.settings.ca_file is not None:
            try:
                roots = Path(self.settings.ca_file).read_bytes()
            except OSError as exc:
                detail = f"cannot load ca_file {self.settings.ca_file}: {exc.strerror or exc}"
                raise ProbeFailure(ErrorKind.INTERNAL, detail) from exc
        return grpc.ssl_channel_credentials(root_certificates=roots)

    async def _channel(self) -> grpc.aio.Channel:
        address = str(self.endpoint)
        if not self.settings.tls:
            return grpc.aio.insecure_channel(address, options=self._options())
        if self._credentials is None:
            # Built once per check, off the event loop; a failure is retried on the next run.
            self._credentials = await asyncio.to_thread(self._load_credentials)
        return grpc.aio.secure_channel(address, self._credentials, options=self._options())

    async def probe(self, trace: PhaseTrace) -> ProbeResult:
        channel = await self._channel()
        try:
            trace.enter("connect")
            ready = await _wait_until_ready_or_failed(channel)
            if ready:
                trace.enter("request")
            check: grpc.aio.UnaryUnaryMultiCallable[
                health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
            ] = channel.unary_unary(
                _CHECK,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            request = health_pb2.HealthCheckRequest(service=self.settings.service)
            try:
                # Not ready: fails at once with UNAVAILABLE and the reason the connection failed.
                response = await check(request, wait_for_ready=False)
            except grpc.aio.AioRpcError as exc:
                raise _failure(exc, self.endpoint, self.settings.service) from exc
        finally:
            await channel.close()
        phases = trace.close()
        fields = trace.fields
        fields["grpc_code"] = "OK"
        name = _status_name(response.status)
        fields["serving_status"] = name
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            return ProbeResult(False, phases, ErrorKind.STATUS, f"{name} (expected SERVING)", fields)
        return ProbeResult(True, phases, None, name, fields)


def _status_name(status: int) -> str:
    try:
        return _ServingStatus.Name(status)
    except ValueError:  # a status newer than our copy of health.proto
        return f"STATUS_{status}"


async def _wait_until_ready_or_failed(channel: grpc.aio.Channel) -> bool:
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state in _NOT_READY:
            return False
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
    return True


def _failure(exc: grpc.aio.AioRpcError, endpoint: HostPort, service: str) -> ProbeFailure:
    """The one place a gRPC status becomes an error kind (see the table in the module docstring)."""
    code = exc.code()
    details = exc.details() or ""
    fields: dict[str, str] = {"grpc_code": code.name}
    if code is grpc.StatusCode.NOT_FOUND:
        detail = f"SERVICE_UNKNOWN: the server does not know service {service!r} (expected SERVING)"
        return ProbeFailure(ErrorKind.STATUS, detail, serving_status="SERVICE_UNKNOWN", **fields)
    if code is grpc.StatusCode.UNIMPLEMENTED:
        detail = f"the server does not implement {_HEALTH} (UNIMPLEMENTED)"
        return ProbeFailure(ErrorKind.STATUS, detail, **fields)
    if code is not grpc.StatusCode.UNAVAILABLE:
        detail = f"gRPC status {code.name}" + (f": {details}" if details else "")
        return ProbeFailure(ErrorKind.STATUS, detail, **fields)
    match = _LAST_ERROR.search(details)
    reason = (match.group("reason") if match else details).strip()
    lower = reason.lower()
    if "connection refused" in lower:
        return ProbeFailure(ErrorKind.REFUSED, f"connection refused by {endpoint}", **fields)
    if any(s in lower for s in ("handshake", "ssl", "tsi_", "certificate", "hostname verification")):
        return ProbeFailure(ErrorKind.TLS, f"TLS handshake failed: {reason}", **fields)
    if any(s in lower for s in ("socket closed", "connection reset", "broken pipe", "end of file")):
        return ProbeFailure(ErrorKind.RESET, f"connection closed by {endpoint}: {reason}", **fields)
    if "http/2" in lower or "http2" in lower:
        return ProbeFailure(ErrorKind.PROTOCOL, f"not a gRPC server: {reason}", **fields)
    if "resolv" in lower or "lookup" in lower or "dns" in lower:
        return ProbeFailure(ErrorKind.DNS, f"cannot resolve {endpoint.host}: {reason}", **fields)
    return ProbeFailure(ErrorKind.UNREACHABLE, f"cannot connect to {endpoint}: {reason}", **fields)
