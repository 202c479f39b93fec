"""The gRPC health probe against real grpcio health servers on loopback, and its config validation.

The servers are grpc.aio servers with the stock health servicer
(``grpc_health.v1.health.aio.HealthServicer``) in the test's own event loop,
plaintext or TLS with certificates from trustme.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from probes import ErrorKind, PhaseTrace, run_probe
from probes.grpc_health import GrpcHealthProber
from tests.probe_harness import ProbeHarness, phase_names
from tests.probe_servers import (
    HttpTestServer,
    RawTcpServer,
    can_bind_ipv6_loopback,
    close_at_once,
    closed_port,
    garbage,
    silent,
)

SOURCE = "catalogue.yaml"
CHECK = "sites.lab.checks.api-health"
SETTINGS = f"{CHECK}.settings"
PHASES = ["connect", "request"]
Status = health_pb2.HealthCheckResponse


_harness = ProbeHarness("grpc_health", CHECK, SOURCE, guard_s=10)
make_prober = _harness.make_prober
probe = _harness.probe
config_error = _harness.config_error
names = phase_names


# --------------------------------------------------------------------------- servers


class RecordingHealth(health_aio.HealthServicer):
    """The stock servicer, noting which connection (client address) each Check came on."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[str] = []
        self.delay = 0.0

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Status:
        self.peers.append(context.peer())
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().Check(request, context)


@dataclass
class HealthServer:
    port: int
    health: RecordingHealth
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def health_server(
    credentials: grpc.ServerCredentials | None = None, host: str = "127.0.0.1", with_health: bool = True
) -> AsyncIterator[HealthServer]:
    server = grpc.aio.server()
    health = RecordingHealth()
    if with_health:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        await health.set("api", Status.SERVING)
        await health.set("db", Status.NOT_SERVING)
        await health.set("cache", Status.UNKNOWN)
        await health.set("queue", Status.SERVICE_UNKNOWN)
    bind = f"[{host}]:0" if ":" in host else f"{host}:0"
    port = (
        server.add_insecure_port(bind) if credentials is None else server.add_secure_port(bind, credentials)
    )
    await server.start()
    try:
        yield HealthServer(port, health, host)
    finally:
        await server.stop(None)


@pytest.fixture
async def plain() -> AsyncIterator[HealthServer]:
    async with health_server() as server:
        yield server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_credentials(cert: trustme.LeafCert) -> grpc.ServerCredentials:
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    return grpc.ssl_server_credentials([(cert.private_key_pem.bytes(), chain)])


@pytest.fixture
async def secure(ca: trustme.CA) -> AsyncIterator[HealthServer]:
    cert = ca.issue_cert("127.0.0.1", "localhost", "health.internal")
    async with health_server(server_credentials(cert)) as server:
        yield server


# --------------------------------------------------------------------------- plaintext


async def test_serving_reports_phases_and_fields(plain: HealthServer) -> None:
    start = time.perf_counter()
    result = await probe(plain.address, {"service": "api"})
    total = time.perf_counter() - start

    assert result.success, result
    assert result.error_kind is None
    assert result.detail == "SERVING"
    assert names(result) == PHASES
    phases = dict(result.phases)
    assert all(duration >= 0 for duration in phases.values())
    assert sum(phases.values()) <= total
    assert result.fields == {"grpc_code": "OK", "serving_status": "SERVING"}


async def test_the_default_service_is_the_whole_server(plain: HealthServer) -> None:
    result = await probe(plain.address)
    assert result.success, result
    await plain.health.set("", Status.NOT_SERVING)
    result = await probe(plain.address, {"service": ""})
    assert result.error_kind is ErrorKind.STATUS


@pytest.mark.parametrize(
    ("service", "status"),
    [("db", "NOT_SERVING"), ("cache", "UNKNOWN"), ("queue", "SERVICE_UNKNOWN")],
)
async def test_not_serving_is_a_status_failure(plain: HealthServer, service: str, status: str) -> None:
    result = await probe(plain.address, {"service": service})
    assert not result.success
    assert result.error_kind is ErrorKind.STATUS
    assert result.detail == f"{status} (expected SERVING)"
    assert result.fields["serving_status"] == status
    assert names(result) == PHASES


async def test_a_status_change_is_seen_by_the_next_run(plain: HealthServer) -> None:
    prober = make_prober(plain.address, {"service": "api"})
    assert (await run_probe(prober, PhaseTrace())).success
    await plain.health.set("api", Status.NOT_SERVING)
    assert (await run_probe(prober, PhaseTrace())).error_kind is ErrorKind.STATUS
    await plain.health.set("api", Status.SERVING)
    assert (await run_probe(prober, PhaseTrace())).success


async def test_unknown_service_is_a_status_failure(plain: HealthServer) -> None:
    result = await probe(plain.address, {"service": "nope"})
    assert result.error_kind is ErrorKind.STATUS
    assert result.detail == "SERVICE_UNKNOWN: the server does not know service 'nope' (expected SERVING)"
    assert result.fields == {"grpc_code": "NOT_FOUND", "serving_status": "SERVICE_UNKNOWN"}
    assert names(result) == PHASES


async def test_server_without_health_service_is_a_status_failure() -> None:
    async with health_server(with_health=False) as server:
        result = await probe(server.address)
    assert result.error_kind is ErrorKind.STATUS
    assert result.detail == "the server does not implement grpc.health.v1.Health (UNIMPLEMENTED)"
    assert result.fields["grpc_code"] == "UNIMPLEMENTED"


async def test_every_run_uses_a_connection_of_its_own(plain: HealthServer) -> None:
    prober = make_prober(plain.address, {"service": "api"})
    for _ in range(3):
        assert (await run_probe(prober, PhaseTrace())).success
    # Two checks of the same target at the same time: gRPC's global subchannel pool
    # would put both on one connection.
    other = make_prober(plain.address, {"service": "api"})
    results = await asyncio.gather(run_probe(prober, PhaseTrace()), run_probe(other, PhaseTrace()))
    assert all(r.success for r in results), results
    assert len(plain.health.peers) == 5
    assert len(set(plain.health.peers)) == 5, plain.health.peers


@pytest.mark.skipif(not can_bind_ipv6_loopback(), reason="this machine cannot listen on ::1")
async def test_ipv6_loopback() -> None:
    async with health_server(host="::1") as server:
        result = await probe(server.address, {"service": "api"})
    assert result.success, result


# --------------------------------------------------------------------------- unreachable and wrong peers


async def test_server_down_is_refused_at_once() -> None:
    port = closed_port()
    start = time.perf_counter()
    result = await probe(f"127.0.0.1:{port}")
    assert time.perf_counter() - start < 2.0  # not gRPC's reconnect backoff
    assert result.error_kind is ErrorKind.REFUSED
    assert result.detail == f"connection refused by 127.0.0.1:{port}"
    assert result.fields["grpc_code"] == "UNAVAILABLE"
    assert names(result) == ["connect"]


async def test_garbage_peer_is_a_protocol_failure() -> None:
    with RawTcpServer(garbage) as srv:
        result = await probe(srv.address)
    assert result.error_kind is ErrorKind.PROTOCOL
    assert result.detail.startswith("not a gRPC server: Failed parsing HTTP/2")
    assert names(result) == ["connect"]


async def test_http1_server_is_a_protocol_failure() -> None:
    with HttpTestServer() as srv:
        result = await probe(f"127.0.0.1:{srv.port}")
    assert result.error_kind is ErrorKind.PROTOCOL


async def test_peer_that_closes_at_once_is_a_reset() -> None:
    with RawTcpServer(close_at_once) as srv:
        result = await probe(srv.address)
    assert result.error_kind is ErrorKind.RESET
    assert result.detail.startswith(f"connection closed by {srv.address}: ")


async def test_silent_peer_times_out_in_connect() -> None:
    with RawTcpServer(silent) as srv:
        trace = PhaseTrace()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await run_probe(make_prober(srv.address), trace)
    assert trace.current == "connect"


async def test_slow_health_check_times_out_in_request(plain: HealthServer) -> None:
    plain.health.delay = 5.0
    trace = PhaseTrace()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await run_probe(make_prober(plain.address, {"service": "api"}), trace)
    assert trace.current == "request"


# --------------------------------------------------------------------------- TLS


async def test_tls_serving(secure: HealthServer, ca_file: str) -> None:
    result = await probe(secure.address, {"tls": True, "ca_file": ca_file, "service": "api"})
    assert result.success, result
    assert names(result) == PHASES


async def test_tls_with_server_name(secure: HealthServer, ca_file: str) -> None:
    settings = {"tls": True, "ca_file": ca_file, "server_name": "health.internal"}
    result = await probe(secure.address, settings)
    assert result.success, result


async def test_tls_untrusted_certificate(secure: HealthServer) -> None:
    result = await probe(secure.address, {"tls": True})  # the system store does not know the test CA
    assert result.error_kind is ErrorKind.TLS
    assert result.detail.startswith("TLS handshake failed: ")
    assert "CERTIFICATE_VERIFY_FAILED" in result.detail
    assert names(result) == ["connect"]


async def test_tls_wrong_server_name(secure: HealthServer, ca_file: str) -> None:
    settings = {"tls": True, "ca_file": ca_file, "server_name": "other.example"}
    result = await probe(secure.address, settings)
    assert result.error_kind is ErrorKind.TLS
    assert "Hostname Verification Check failed" in result.detail


async def test_tls_to_a_plaintext_server(plain: HealthServer, ca_file: str) -> None:
    result = await probe(plain.address, {"tls": True, "ca_file": ca_file})
    assert result.error_kind is ErrorKind.TLS


async def test_plaintext_to_a_tls_server(secure: HealthServer) -> None:
    result = await probe(secure.address)
    assert result.error_kind is ErrorKind.RESET  # the TLS server hangs up on an HTTP/2 preface


async def test_unreadable_ca_file_is_an_internal_failure_and_retried(
    secure: HealthServer, ca_file: str, tmp_path: Path
) -> None:
    path = tmp_path / "ca.pem"
    prober = make_prober(secure.address, {"tls": True, "ca_file": str(path)})
    first = await run_probe(prober, PhaseTrace())
    assert first.error_kind is ErrorKind.INTERNAL  # the agent's file, not the target: scored unknown
    assert first.detail == f"cannot load ca_file {path}: No such file or directory"
    await asyncio.to_thread(shutil.copyfile, ca_file, path)  # the file appears: the next run uses it
    second = await run_probe(prober, PhaseTrace())
    assert second.success, second


# --------------------------------------------------------------------------- config validation


def test_valid_config_builds_without_io() -> None:
    prober = make_prober(
        "api.example:443",
        {
            "service": "shop.v1.Cart",
            "tls": True,
            "ca_file": "/not/there/yet.pem",
            "server_name": "api.internal",
        },
    )
    assert isinstance(prober, GrpcHealthProber)
    assert prober.settings.service == "shop.v1.Cart"
    assert prober.endpoint.port == 443


def test_settings_may_be_omitted() -> None:
    prober = make_prober("127.0.0.1:50051")
    assert isinstance(prober, GrpcHealthProber)
    assert prober.settings.service == ""
    assert prober.settings.tls is False


def test_unknown_setting_suggests_the_right_one() -> None:
    assert config_error("127.0.0.1:50051", {"services": "api"}) == (
        f"{SOURCE}: {SETTINGS}.services: unknown field (did you mean 'service'?); "
        "allowed here: ca_file, server_name, service, tls"
    )


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"ca_file": "/ca.pem"}, "ca_file", "ca_file applies to TLS only; add tls: true"),
        ({"server_name": "api.internal"}, "server_name", "server_name applies to TLS only; add tls: true"),
        ({"tls": False, "ca_file": "/ca.pem"}, "ca_file", "ca_file applies to TLS only; add tls: true"),
        ({"tls": "yes"}, "tls", "expected true or false, got text ('yes')"),
        ({"service": 5}, "service", "expected text, got a number (5)"),
        ({"tls": True, "ca_file": ""}, "ca_file", "must not be empty"),
        ({"tls": True, "server_name": "bad name"}, "server_name", "invalid host name 'bad name'"),
    ],
)
def test_bad_setting(settings: dict[str, Any], field: str, message: str) -> None:
    assert config_error("127.0.0.1:50051", settings) == f"{SOURCE}: {SETTINGS}.{field}: {message}"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("127.0.0.1", "missing port in '127.0.0.1'; write host:port"),
        ("grpc://api.example:443", "expected host:port without a scheme, got 'grpc://api.example:443'"),
    ],
)
def test_bad_target(target: str, message: str) -> None:
    assert config_error(target) == f"{SOURCE}: {CHECK}.target: {message}"
