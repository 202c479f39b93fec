"""The TCP probe against real listeners on loopback, and target validation."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from probes import PROBERS, ErrorKind, PhaseTrace, run_probe
from probes._net import HostPort
from probes.tcp import TcpProber
from slaprobe.configfile import ConfigError
from tests.probe_harness import ProbeHarness, block_the_loop_once, phase_names
from tests.probe_servers import (
    LineProtocol,
    RawTcpServer,
    can_bind_ipv6_loopback,
    close_at_once,
    closed_port,
    full_backlog,
    over_tls,
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


# --------------------------------------------------------------------------- TLS

TLS_PHASES = ["resolve", "connect", "tls"]
SMTP_BANNER = b"220 mail.example ESMTP ready\r\n"
SMTP_REPLIES = {
    b"EHLO slaprobe": b"250-mail.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 HELP\r\n",
    b"QUIT": b"221 2.0.0 Bye\r\n",
}
SMTP_QUERY = [
    {"expect": "^220 "},
    {"send": "EHLO slaprobe"},
    {"expect": "^250 ", "skip": "^250-"},
    {"send": "QUIT"},
    {"expect": "^221 "},
]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def client_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("client") / "client.pem"
    ca.issue_cert("probe@slaprobe.test").private_key_and_cert_chain_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1", not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=20))


def _server_ctx(cert: trustme.LeafCert, ca: trustme.CA | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    if ca is not None:  # mutual TLS
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def redis_tls(server_cert: trustme.LeafCert) -> Iterator[RawTcpServer]:
    with RawTcpServer(over_tls(_server_ctx(server_cert), LineProtocol(None, {b"PING": b"+PONG\r\n"}))) as srv:
        yield srv


async def test_tls_handshake(redis_tls: RawTcpServer, ca_file: str) -> None:
    result = await probe(redis_tls.address, {"tls": True, "ca_file": ca_file})
    assert result.success, result
    assert names(result) == TLS_PHASES
    assert str(result.fields["tls_version"]).startswith("TLSv1.")
    assert result.detail == f"connected to {redis_tls.address}, {result.fields['tls_version']}"
    days = result.fields["cert_days_left"]
    assert isinstance(days, float)
    assert 19.0 < days <= 20.0


async def test_tls_untrusted_certificate(redis_tls: RawTcpServer) -> None:
    result = await probe(redis_tls.address, {"tls": True})
    assert result.error_kind is ErrorKind.TLS
    assert result.detail == "certificate rejected: unable to get local issuer certificate"
    assert names(result) == TLS_PHASES


async def test_tls_server_name_and_verify_off(redis_tls: RawTcpServer, ca_file: str) -> None:
    wrong = await probe(redis_tls.address, {"tls": True, "ca_file": ca_file, "server_name": "db.example"})
    assert wrong.error_kind is ErrorKind.TLS
    assert (
        wrong.detail == "certificate rejected: Hostname mismatch, certificate is not valid for 'db.example'."
    )
    unverified = await probe(
        redis_tls.address, {"tls": True, "tls_verify": False, "server_name": "db.example"}
    )
    assert unverified.success, unverified
    assert isinstance(unverified.fields["cert_days_left"], float)


async def test_tls_to_a_plain_server_is_a_tls_failure() -> None:
    with RawTcpServer(LineProtocol(SMTP_BANNER)) as srv:
        result = await probe(srv.address, {"tls": True, "tls_verify": False})
    assert result.error_kind is ErrorKind.TLS
    assert result.detail.startswith("TLS handshake failed: ")


async def test_query_over_tls(redis_tls: RawTcpServer, ca_file: str) -> None:
    settings = {"tls": True, "ca_file": ca_file, "query": [{"send": "PING"}, {"expect": "^\\+PONG$"}]}
    result = await probe(redis_tls.address, settings)
    assert result.success, result
    assert names(result) == [*TLS_PHASES, "query"]
    assert result.fields["banner"] == "+PONG"


async def test_client_certificate_required(
    server_cert: trustme.LeafCert, ca: trustme.CA, ca_file: str, client_pem: str
) -> None:
    redis = LineProtocol(None, {b"PING": b"+PONG\r\n"})
    query = [{"send": "PING"}, {"expect": "^\\+PONG$"}]
    with RawTcpServer(over_tls(_server_ctx(server_cert, ca), redis)) as srv:
        with_cert = await probe(
            srv.address, {"tls": True, "ca_file": ca_file, "client_cert": client_pem, "query": query}
        )
        without = await probe(srv.address, {"tls": True, "ca_file": ca_file, "query": query})
    assert with_cert.success, with_cert
    assert redis.received == [b"PING"]
    assert without.error_kind is ErrorKind.TLS, without
    assert without.detail == (
        "the server requires a client certificate (set client_cert): "
        "TLS alert TLSV13_ALERT_CERTIFICATE_REQUIRED at query[1] expect '^\\+PONG$'"
    )
    assert names(without) == [*TLS_PHASES, "query"]


async def test_client_certificate_required_without_a_query(
    server_cert: trustme.LeafCert, ca: trustme.CA, ca_file: str, client_pem: str
) -> None:
    """No query reads after a TLS 1.3 handshake: the probe waits for the server's verdict itself."""
    redis = LineProtocol(None, {b"PING": b"+PONG\r\n"})
    with RawTcpServer(over_tls(_server_ctx(server_cert, ca), redis)) as srv:
        with_cert = await probe(srv.address, {"tls": True, "ca_file": ca_file, "client_cert": client_pem})
        without = await probe(srv.address, {"tls": True, "ca_file": ca_file})
    assert with_cert.success, with_cert
    assert without.error_kind in (ErrorKind.TLS, ErrorKind.RESET), without
    if without.error_kind is ErrorKind.TLS:
        assert without.detail.startswith("the server requires a client certificate (set client_cert): ")
    assert names(without) == TLS_PHASES


async def test_client_certificate_required_and_the_alert_lost_to_a_reset(
    server_cert: trustme.LeafCert, ca: trustme.CA, ca_file: str
) -> None:
    query = [{"expect": "^\\+OK"}]
    with RawTcpServer(over_tls(_server_ctx(server_cert, ca), silent, linger=False)) as srv:
        result = await probe(srv.address, {"tls": True, "ca_file": ca_file, "query": query})
    assert not result.success
    assert result.error_kind in (ErrorKind.RESET, ErrorKind.TLS), result
    if result.error_kind is ErrorKind.RESET:
        assert result.detail == (
            "query[0] expect '^\\+OK': connection reset "
            "(right after a TLS 1.3 handshake: the server may require a client certificate)"
        )


async def test_unreadable_client_certificate_is_internal(redis_tls: RawTcpServer, ca_file: str) -> None:
    result = await probe(
        redis_tls.address, {"tls": True, "ca_file": ca_file, "client_cert": "/nonexistent/c.pem"}
    )
    assert result.error_kind is ErrorKind.INTERNAL
    assert result.detail == "cannot load client_cert /nonexistent/c.pem: No such file or directory"
    assert result.phases == ()


# --------------------------------------------------------------------------- send / expect


async def test_smtp_like_exchange() -> None:
    smtp = LineProtocol(SMTP_BANNER, SMTP_REPLIES)
    with RawTcpServer(smtp) as srv:
        result = await probe(srv.address, {"query": SMTP_QUERY})
    assert result.success, result
    assert result.detail == f"connected to {srv.address}, query passed (5 steps)"
    assert names(result) == [*TCP_PHASES, "query"]
    assert result.fields["banner"] == "220 mail.example ESMTP ready"
    assert "query_step" not in result.fields
    assert smtp.received == [b"EHLO slaprobe", b"QUIT"]


async def test_redis_like_ping() -> None:
    redis = LineProtocol(None, {b"PING": b"+PONG\r\n"})
    with RawTcpServer(redis) as srv:
        result = await probe(srv.address, {"query": [{"send": "PING"}, {"expect": "^\\+PONG$"}]})
    assert result.success, result
    assert redis.received == [b"PING"]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_query_ends_when_the_expected_line_arrived(
    tls: bool, server_cert: trustme.LeafCert, ca: trustme.CA, ca_file: str
) -> None:
    """The answer arrives while the agent's loop is frozen: the kernel's receive time says when."""

    def pong_after_100ms(conn: socket.socket, stop: threading.Event) -> None:
        # Late enough that the probe parks waiting for it (where the test freezes the loop).
        data = b""
        while b"\n" not in data and not stop.is_set():
            chunk = conn.recv(100)
            if not chunk:
                return
            data += chunk
        time.sleep(0.1)
        conn.sendall(b"+PONG\r\n")
        silent(conn, stop)  # until the probe closes

    behaviour = over_tls(_server_ctx(server_cert), pong_after_100ms) if tls else pong_after_100ms
    settings: dict[str, Any] = {"query": [{"send": "PING"}, {"expect": "^\\+PONG$"}]}
    if tls:
        settings |= {"tls": True, "ca_file": ca_file}
    with RawTcpServer(behaviour) as srv:
        prober = make_prober(srv.address, settings)
        assert (await run_probe(prober, PhaseTrace())).success  # the TLS context is built on the first run
        trace = PhaseTrace()
        start = time.perf_counter()
        blocker = asyncio.create_task(block_the_loop_once(lambda: trace.current == "query", 0.5))
        result = await run_probe(prober, trace)
        assert await blocker, "the probe never waited where the test freezes the loop"
    assert result.success, result
    assert time.perf_counter() - start >= 0.5
    assert trace.end is not None
    assert 0.09 <= trace.end - start < 0.4, (trace.end - start, result.phases)
    assert 0.09 <= dict(result.phases)["query"] < 0.4


async def test_send_keeps_a_line_end_as_written() -> None:
    redis = LineProtocol(None, {b"PING": b"+PONG\r\n"})
    with RawTcpServer(redis) as srv:
        result = await probe(srv.address, {"query": [{"send": "PING\n"}, {"expect": "PONG"}]})
    assert result.success, result
    assert redis.received == [b"PING"]


async def test_expect_mismatch_names_the_step_and_the_line() -> None:
    redis = LineProtocol(None, {})  # every command: -ERR unknown command
    with RawTcpServer(redis) as srv:
        result = await probe(srv.address, {"query": [{"send": "PING"}, {"expect": "^\\+PONG"}]})
    assert not result.success
    assert result.error_kind is ErrorKind.ASSERTION
    assert result.detail == "query[1] expect '^\\+PONG' failed: received '-ERR unknown command'"
    assert result.fields["query_step"] == "query[1] expect '^\\+PONG'"
    assert names(result) == [*TCP_PHASES, "query"]


async def test_a_line_that_is_neither_expected_nor_skipped_fails() -> None:
    replies = {b"EHLO slaprobe": b"250-mail.example\r\n554 go away\r\n"}
    with RawTcpServer(LineProtocol(SMTP_BANNER, replies)) as srv:
        result = await probe(srv.address, {"query": SMTP_QUERY})
    assert result.error_kind is ErrorKind.ASSERTION
    assert result.detail == "query[2] expect '^250 ' failed: received '554 go away'"


async def test_expect_timeout_names_the_step() -> None:
    with RawTcpServer(silent) as srv:
        trace = PhaseTrace()
        start = time.perf_counter()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await run_probe(make_prober(srv.address, {"query": [{"expect": "^220 "}]}), trace)
        elapsed = time.perf_counter() - start
    # The runner turns this into a `timeout` result with these phases and fields.
    assert trace.current == "query"
    assert trace.fields["query_step"] == "query[0] expect '^220 '"
    assert 0.4 < elapsed < 3.0


async def test_peer_closing_before_the_expected_line_is_a_reset() -> None:
    with RawTcpServer(close_at_once) as srv:
        result = await probe(srv.address, {"query": [{"expect": "^220 "}]})
    assert result.error_kind is ErrorKind.RESET
    assert result.detail == "query[0] expect '^220 ': connection closed before any line"


async def test_skipped_lines_then_close_is_a_reset() -> None:
    with RawTcpServer(LineProtocol(b"220-one\r\n220-two\r\n", close_after=True)) as srv:
        result = await probe(srv.address, {"query": [{"expect": "^220 ", "skip": "^220-"}]})
    assert result.error_kind is ErrorKind.RESET
    assert result.detail == "query[0] expect '^220 ': connection closed after 2 skipped lines"


async def test_last_line_without_a_line_end_still_counts() -> None:
    with RawTcpServer(LineProtocol(b"220 ready", close_after=True)) as srv:
        result = await probe(srv.address, {"query": [{"expect": "^220 ready$"}]})
    assert result.success, result


async def test_query_runs_repeatedly_on_fresh_connections() -> None:
    redis = LineProtocol(None, {b"PING": b"+PONG\r\n"})
    with RawTcpServer(redis) as srv:
        prober = make_prober(srv.address, {"query": [{"send": "PING"}, {"expect": "PONG"}]})
        for _ in range(3):
            result = await run_probe(prober, PhaseTrace())
            assert result.success, result
        await wait_for_accepts(srv, 3)
    assert redis.received == [b"PING"] * 3


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        (
            {"query": [{"send": "PING", "expect": "PONG"}]},
            "query[0]",
            "a step is either send or expect, not both: write them as two steps",
        ),
        ({"query": [{}]}, "query[0]", "a step needs send or expect"),
        (
            {"query": [{"sned": "PING"}]},
            "query[0].sned",
            "unknown field (did you mean 'send'?); allowed here: expect, send, skip",
        ),
        (
            {"query": [{"send": "PING"}, {"skip": "^250-"}]},
            "query[1].skip",
            "skip needs expect (the line to wait for)",
        ),
        (
            {"query": [{"expect": "(+PONG"}]},
            "query[0].expect",
            "invalid regular expression: nothing to repeat at position 1",
        ),
        (
            {"query": [{"expect": "x", "skip": "("}]},
            "query[0].skip",
            "invalid regular expression: missing ), unterminated subpattern at position 0",
        ),
        (
            {"query": ["PING"]},
            "query[0]",
            "expected a step such as {send: PING} or {expect: '^\\+PONG'}, got text ('PING')",
        ),
        ({"query": {"send": "PING"}}, "query", "expected a list, got a mapping"),
        ({"query": [{"expect": ""}]}, "query[0].expect", "must not be empty"),
        ({"tls": "yes"}, "tls", "expected true or false, got text ('yes')"),
        ({"ca_file": "/etc/ca.pem"}, "ca_file", "ca_file needs tls: true"),
        ({"tls": False, "client_cert": "/etc/c.pem"}, "client_cert", "client_cert needs tls: true"),
        (
            {"tls": True, "client_key": "/etc/k.pem"},
            "client_key",
            "client_key needs client_cert (the certificate it belongs to)",
        ),
        ({"tls": True, "server_name": "bad name"}, "server_name", "invalid host name 'bad name'"),
    ],
)
def test_bad_tls_or_query_setting(settings: dict[str, Any], field: str, message: str) -> None:
    assert config_error("127.0.0.1:6379", settings) == f"{SOURCE}: {SETTINGS}.{field}: {message}"


def test_valid_tls_and_query_config_builds_without_io(tmp_path: Path) -> None:
    settings = {
        "tls": True,
        "tls_verify": True,
        "ca_file": str(tmp_path / "not-yet.pem"),
        "server_name": "mail.example",
        "client_cert": str(tmp_path / "c.pem"),
        "client_key": str(tmp_path / "k.pem"),
        "query": SMTP_QUERY,
    }
    assert make_prober("mail.example:465", settings).type_name == "tcp"
