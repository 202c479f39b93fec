"""The TCP probe against real listeners on loopback, and target validation."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from probes import PROBERS, ErrorKind, PhaseTrace, run_probe
from probes._net import HostPort
from probes.tcp import TcpProber
from slaprobe.configfile import ConfigError
from tests.probe_harness import ProbeHarness, phase_names
from tests.probe_servers import (
    RawTcpServer,
    can_bind_ipv6_loopback,
    close_at_once,
    closed_port,
    full_backlog,
    silent,
)

SOURCE = "catalogue.yaml"
CHECK = "sites.lab.checks.db"
SETTINGS = f"{CHECK}.settings"
TCP_PHASES = ["resolve", "connect"]
TCP_SETTINGS = "ca_file, client_cert, client_key, ip_version, query, server_name, tls, tls_verify"


_harness = ProbeHarness("tcp", CHECK, SOURCE, guard_s=10)
make_prober = _harness.make_prober
probe = _harness.probe
config_error = _harness.config_error
names = phase_names


async def wait_for_accepts(server: RawTcpServer, count: int) -> None:
    assert await asyncio.to_thread(server.wait_accepted, count) == count


# --------------------------------------------------------------------------- real listeners


async def test_connect_succeeds() -> None:
    with RawTcpServer(silent) as srv:
        start = time.perf_counter()
        result = await probe(srv.address)
        total = time.perf_counter() - start
        await wait_for_accepts(srv, 1)
    assert result.success, result
    assert result.error_kind is None
    assert result.detail == f"connected to 127.0.0.1:{srv.port}"
    assert names(result) == TCP_PHASES
    assert all(duration >= 0 for _, duration in result.phases)
    assert sum(d for _, d in result.phases) <= total
    assert total - sum(d for _, d in result.phases) < 0.25
    assert result.fields == {"ip": "127.0.0.1"}


async def test_a_peer_that_closes_at_once_still_accepted_the_connection() -> None:
    with RawTcpServer(close_at_once) as srv:
        result = await probe(srv.address)
    assert result.success, result


async def test_the_prober_runs_repeatedly() -> None:
    with RawTcpServer(silent) as srv:
        prober = make_prober(srv.address)
        for _ in range(5):
            result = await run_probe(prober, PhaseTrace())
            assert result.success, result
        await wait_for_accepts(srv, 5)


async def test_refused_port() -> None:
    port = closed_port()
    result = await probe(f"127.0.0.1:{port}")
    assert not result.success
    assert result.error_kind is ErrorKind.REFUSED
    assert result.detail == f"connection refused by 127.0.0.1:{port}"
    assert names(result) == TCP_PHASES
    assert result.fields == {"ip": "127.0.0.1"}


async def test_hostname_with_ip_version() -> None:
    with RawTcpServer(silent) as srv:
        result = await probe(f"localhost:{srv.port}", {"ip_version": "ipv4"})
    assert result.success, result
    assert result.detail == f"connected to localhost:{srv.port}"
    assert result.fields["ip"] == "127.0.0.1"


async def test_ip_version_mismatch_is_a_dns_failure() -> None:
    result = await probe("127.0.0.1:9", {"ip_version": "ipv6"})
    assert result.error_kind is ErrorKind.DNS
    assert result.detail == "127.0.0.1 is not an IPv6 address (ip_version: ipv6)"
    assert names(result) == ["resolve"]


async def test_name_that_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    # No real DNS lookups from tests: the resolver answers "no such name" locally.
    async def no_such_name(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_such_name)
    result = await probe("db.example:5432")
    assert result.error_kind is ErrorKind.DNS
    assert result.detail == "cannot resolve db.example: Name or service not known"
    assert names(result) == ["resolve"]


async def test_name_with_no_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    async def nothing(*args: Any, **kwargs: Any) -> Any:
        return []

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", nothing)
    result = await probe("db.example:5432")
    assert result.error_kind is ErrorKind.DNS
    assert result.detail == "no addresses for db.example"


async def test_name_the_resolver_cannot_encode_is_a_dns_failure() -> None:
    # Config validation rejects such names; a prober built directly must still not raise.
    prober = TcpProber(HostPort("a" * 64 + ".example", 5432), "any")
    result = await run_probe(prober, PhaseTrace())
    assert result.error_kind is ErrorKind.DNS
    assert result.detail.startswith(f"cannot resolve {'a' * 64}.example: ")


async def test_connect_that_hangs_times_out_in_connect() -> None:
    with full_backlog() as (port, _):
        trace = PhaseTrace()
        try:
            async with asyncio.timeout(0.5):
                result = await run_probe(make_prober(f"127.0.0.1:{port}"), trace)
        except TimeoutError:
            pass
        else:
            pytest.skip(f"this kernel does not drop SYNs on a full accept queue ({result.detail})")
    assert trace.current == "connect"
    assert [name for name, _ in trace.close()] == TCP_PHASES


@pytest.mark.skipif(not can_bind_ipv6_loopback(), reason="this machine cannot listen on ::1")
async def test_ipv6_loopback() -> None:
    with RawTcpServer(silent, host="::1") as srv:
        result = await probe(srv.address)
        assert result.success, result
        assert result.detail == f"connected to [::1]:{srv.port}"
        assert result.fields == {"ip": "::1"}
        assert names(result) == TCP_PHASES
        v4_only = await probe(srv.address, {"ip_version": "ipv4"})
    assert v4_only.error_kind is ErrorKind.DNS
    assert v4_only.detail == "::1 is not an IPv4 address (ip_version: ipv4)"


@pytest.mark.skipif(not can_bind_ipv6_loopback(), reason="this machine cannot listen on ::1")
async def test_ipv6_refused() -> None:
    port = closed_port("::1")
    result = await probe(f"[::1]:{port}")
    assert result.error_kind is ErrorKind.REFUSED
    assert result.detail == f"connection refused by [::1]:{port}"


# --------------------------------------------------------------------------- config validation


def test_valid_targets() -> None:
    for target in ("127.0.0.1:5432", "[::1]:5432", "db.example:5432", " db.example:1 ", "db:65535"):
        assert make_prober(target).type_name == "tcp"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("127.0.0.1:99999", "port must be a number from 1 to 65535, got '99999'"),
        ("127.0.0.1:0", "port must be a number from 1 to 65535, got '0'"),
        ("127.0.0.1:postgres", "port must be a number from 1 to 65535, got 'postgres'"),
        ("127.0.0.1:", "port must be a number from 1 to 65535, got ''"),
        ("127.0.0.1:²", "port must be a number from 1 to 65535, got '²'"),
        ("127.0.0.1:-1", "port must be a number from 1 to 65535, got '-1'"),
        ("[::1]:70000", "port must be a number from 1 to 65535, got '70000'"),
        ("127.0.0.1", "missing port in '127.0.0.1'; write host:port"),
        ("[::1]", "missing port in '[::1]'; write host:port"),
        ("::1", "IPv6 addresses need brackets, as in [2001:db8::1]:443; got '::1'"),
        ("::1:5432", "IPv6 addresses need brackets, as in [2001:db8::1]:443; got '::1:5432'"),
        ("[::1:5432", "unclosed '[' in '[::1:5432'; write IPv6 targets as [::1]:443"),
        ("[::1]5432", "expected ':port' after ']' in '[::1]5432'"),
        ("[db]:5432", "only IPv6 addresses go in brackets, got [db] in '[db]:5432'"),
        ("[]:5432", "missing host in '[]:5432'"),
        (":5432", "missing host in ':5432'"),
        ("tcp://db:5432", "expected host:port without a scheme, got 'tcp://db:5432'"),
        ("db host:5432", "invalid host name 'db host'"),
        ("", "expected host:port"),
        (5432, "expected host:port"),
        (None, "expected host:port"),
    ],
)
def test_bad_target(target: Any, message: str) -> None:
    assert config_error(target) == f"{SOURCE}: {CHECK}.target: {message}"


def test_unknown_setting_suggests_the_right_one() -> None:
    assert config_error("127.0.0.1:5432", {"ipversion": "ipv4"}) == (
        f"{SOURCE}: {SETTINGS}.ipversion: unknown field (did you mean 'ip_version'?); "
        f"allowed here: {TCP_SETTINGS}"
    )


def test_settings_the_tcp_probe_does_not_have() -> None:
    assert config_error("127.0.0.1:5432", {"body_matches": ["x"]}) == (
        f"{SOURCE}: {SETTINGS}.body_matches: unknown field; allowed here: {TCP_SETTINGS}"
    )


def test_bad_ip_version() -> None:
    assert config_error("127.0.0.1:5432", {"ip_version": 6}) == (
        f"{SOURCE}: {SETTINGS}.ip_version: must be one of any, ipv4, ipv6; got 6"
    )


def test_unknown_probe_type() -> None:
    with pytest.raises(ConfigError) as info:
        make_prober("127.0.0.1:5432", type_name="udp")
    known = ", ".join(sorted(PROBERS))  # other probe types join the registry over time
    assert "http" in PROBERS
    assert "tcp" in PROBERS
    assert str(info.value) == f"{SOURCE}: {CHECK}.type: unknown probe type 'udp'; known types: {known}"
