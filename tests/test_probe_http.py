"""The HTTP(S) probe against real servers on loopback, and its config validation."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from probes import ErrorKind, PhaseTrace, run_probe
from probes._net import der_not_after
from tests.probe_harness import ProbeHarness, block_the_loop_once, phase_names
from tests.probe_servers import (
    CHUNKS,
    GARBAGE,
    OK_BODY,
    H2TestServer,
    HttpTestServer,
    RawTcpServer,
    can_bind_ipv6_loopback,
    close_at_once,
    closed_port,
    full_backlog,
    garbage,
    garbage_then_close,
    over_tls,
    reset_at_once,
    silent,
)

SOURCE = "catalogue.yaml"
CHECK = "sites.lab.checks.api"
SETTINGS = f"{CHECK}.settings"
HTTP_PHASES = ["resolve", "connect", "processing", "transfer"]
HTTPS_PHASES = ["resolve", "connect", "tls", "processing", "transfer"]


_harness = ProbeHarness("http", CHECK, SOURCE, guard_s=10)
make_prober = _harness.make_prober
probe = _harness.probe
config_error = _harness.config_error
names = phase_names


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def server() -> Iterator[HttpTestServer]:
    with HttpTestServer() as s:
        yield s


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def good_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1", "::1", not_after=_now() + dt.timedelta(days=30))


@pytest.fixture
def https_server(good_cert: trustme.LeafCert) -> Iterator[HttpTestServer]:
    with HttpTestServer(ssl_context=_server_context(good_cert)) as s:
        yield s


# --------------------------------------------------------------------------- plain HTTP


async def test_ok_reports_phases_and_fields(server: HttpTestServer) -> None:
    start = time.perf_counter()
    result = await probe(server.url("/ok"))
    total = time.perf_counter() - start

    assert result.success, result
    assert result.error_kind is None
    assert result.detail == "HTTP 200"
    assert names(result) == HTTP_PHASES
    assert all(duration >= 0 for _, duration in result.phases)
    assert sum(d for _, d in result.phases) <= total
    assert total - sum(d for _, d in result.phases) < 0.25
    assert result.fields["status_code"] == 200
    assert result.fields["http_version"] == "HTTP/1.1"
    assert result.fields["body_bytes"] == len(OK_BODY)
    assert result.fields["ip"] == "127.0.0.1"
    assert "body_truncated" not in result.fields


async def test_phase_durations_add_up_to_the_total(server: HttpTestServer) -> None:
    start = time.perf_counter()
    result = await probe(server.url("/delay/0.3"))
    total = time.perf_counter() - start

    assert result.success, result
    phases = dict(result.phases)
    assert names(result) == HTTP_PHASES
    assert all(duration >= 0 for duration in phases.values())
    # The server's delay is time to first byte: it lands in "processing".
    assert 0.25 <= phases["processing"] < 3.0
    assert phases["transfer"] < 0.25
    assert sum(phases.values()) <= total
    assert total - sum(phases.values()) < 0.25


async def test_request_announces_connection_close(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok?x=1"), {"headers": {"X-Check": "slaprobe-test"}})
    assert result.success, result
    [request] = server.requests
    assert request.method == "GET"
    assert request.path == "/ok?x=1"
    assert request.request_version == "HTTP/1.1"
    assert request.header_all("Connection") == ["close"]
    assert request.header("Host") == f"127.0.0.1:{server.port}"
    assert (request.header("User-Agent") or "").startswith("slaprobe/")
    assert request.header("X-Check") == "slaprobe-test"
    assert request.header("Content-Length") is None


async def test_user_headers_replace_the_defaults(server: HttpTestServer) -> None:
    headers = {"host": "api.example", "User-Agent": "custom-agent/1", "Accept": "text/plain"}
    settings = {"headers": headers}
    result = await probe(server.url("/ok"), settings)
    assert result.success, result
    [request] = server.requests
    assert request.header_all("Host") == ["api.example"]
    assert request.header_all("User-Agent") == ["custom-agent/1"]
    assert request.header_all("Accept") == ["text/plain"]


async def test_post_sends_the_body_with_a_length(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok"), {"method": "post", "body": '{"ping": 1}'})
    assert result.success, result
    [request] = server.requests
    assert request.method == "POST"
    assert request.header("Content-Length") == "11"
    assert request.body == b'{"ping": 1}'


async def test_post_without_body_sends_zero_length(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok"), {"method": "POST"})
    assert result.success, result
    assert server.requests[0].header("Content-Length") == "0"


async def test_head_has_no_body(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok"), {"method": "HEAD"})
    assert result.success, result
    assert result.fields["body_bytes"] == 0
    assert server.requests[0].method == "HEAD"


async def test_path_with_spaces_and_unicode_is_percent_encoded(server: HttpTestServer) -> None:
    result = await probe(server.url("/no such/päge?q=a b"), {"valid_status": [404]})
    assert result.success, result
    assert server.requests[0].path == "/no%20such/p%C3%A4ge?q=a%20b"


async def test_status_503_is_a_status_failure(server: HttpTestServer) -> None:
    result = await probe(server.url("/status/503"))
    assert not result.success
    assert result.error_kind is ErrorKind.STATUS
    assert result.detail == "HTTP 503 (expected 2xx)"
    assert result.fields["status_code"] == 503
    assert names(result) == HTTP_PHASES


async def test_valid_status_class(server: HttpTestServer) -> None:
    result = await probe(server.url("/status/503"), {"valid_status": ["5xx"]})
    assert result.success, result
    assert result.detail == "HTTP 503"


async def test_valid_status_list_names_all_in_the_failure(server: HttpTestServer) -> None:
    result = await probe(server.url("/status/404"), {"valid_status": [200, "5xx", 302]})
    assert result.error_kind is ErrorKind.STATUS
    assert result.detail == "HTTP 404 (expected 200, 5xx, 302)"


async def test_valid_status_scalar(server: HttpTestServer) -> None:
    result = await probe(server.url("/status/204"), {"valid_status": 204})
    assert result.success, result


async def test_body_matches(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok"), {"body_matches": ["^status: all good$", "slaprobe"]})
    assert result.success, result


async def test_body_matches_failure_is_an_assertion(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok"), {"body_matches": ["slaprobe", "^status: degraded"]})
    assert not result.success
    assert result.error_kind is ErrorKind.ASSERTION
    assert result.detail == "body does not match '^status: degraded'"
    assert result.fields["status_code"] == 200
    assert names(result) == HTTP_PHASES


async def test_body_not_matches_failure_is_an_assertion(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok"), {"body_not_matches": ["error", "all good"]})
    assert result.error_kind is ErrorKind.ASSERTION
    assert result.detail == "body matches forbidden 'all good'"


async def test_body_not_matches_passes(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok"), {"body_not_matches": ["error"]})
    assert result.success, result


async def test_status_is_judged_before_the_body(server: HttpTestServer) -> None:
    result = await probe(server.url("/status/500"), {"body_matches": ["never"]})
    assert result.error_kind is ErrorKind.STATUS


async def test_chunked_body_matches(server: HttpTestServer) -> None:
    result = await probe(server.url("/chunked"), {"body_matches": ["^marker: CHUNKED-END$"]})
    assert result.success, result
    assert result.fields["body_bytes"] == sum(len(c) for c in CHUNKS)


async def test_close_delimited_body(server: HttpTestServer) -> None:
    result = await probe(server.url("/close-delimited"), {"body_matches": ["all good"]})
    assert result.success, result
    assert result.fields["body_bytes"] == len(OK_BODY)


async def test_max_body_bytes_truncates(server: HttpTestServer) -> None:
    result = await probe(server.url("/large/300000"), {"max_body_bytes": 1000})
    assert result.success, result
    assert result.fields["body_truncated"] is True
    assert result.fields["body_bytes"] == 1000


async def test_body_of_exactly_max_body_bytes_is_not_truncated(server: HttpTestServer) -> None:
    result = await probe(server.url("/large/1000"), {"max_body_bytes": 1000})
    assert result.success, result
    assert "body_truncated" not in result.fields
    assert result.fields["body_bytes"] == 1000


async def test_large_body_within_the_default_limit(server: HttpTestServer) -> None:
    result = await probe(server.url("/large/300000"))
    assert result.success, result
    assert result.fields["body_bytes"] == 300000
    assert "body_truncated" not in result.fields


async def test_body_cut_short_is_a_reset(server: HttpTestServer) -> None:
    result = await probe(server.url("/short-body"))
    assert result.error_kind is ErrorKind.RESET
    assert result.detail.startswith("connection closed mid-response")
    assert names(result) == HTTP_PHASES


async def test_refused_port() -> None:
    port = closed_port()
    result = await probe(f"http://127.0.0.1:{port}/")
    assert not result.success
    assert result.error_kind is ErrorKind.REFUSED
    assert result.detail == f"connection refused by 127.0.0.1:{port}"
    assert names(result) == ["resolve", "connect"]
    assert result.fields["ip"] == "127.0.0.1"


async def test_silent_server_times_out_in_processing() -> None:
    with RawTcpServer(silent) as srv:
        trace = PhaseTrace()
        start = time.perf_counter()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await run_probe(make_prober(f"http://{srv.address}/"), trace)
        elapsed = time.perf_counter() - start
    assert trace.current == "processing"
    assert 0.4 < elapsed < 3.0
    phases = trace.close()
    assert [name for name, _ in phases] == ["resolve", "connect", "processing"]
    assert 0.3 < dict(phases)["processing"] < 3.0


async def test_connect_that_hangs_times_out_in_connect() -> None:
    with full_backlog() as (port, _):
        trace = PhaseTrace()
        try:
            async with asyncio.timeout(0.5):
                result = await run_probe(make_prober(f"http://127.0.0.1:{port}/"), trace)
        except TimeoutError:
            pass
        else:
            pytest.skip(f"this kernel does not drop SYNs on a full accept queue ({result.detail})")
    assert trace.current == "connect"


@pytest.mark.parametrize("behaviour", [close_at_once, reset_at_once], ids=["fin", "rst"])
async def test_immediate_close_is_a_reset(behaviour: Any) -> None:
    with RawTcpServer(behaviour) as srv:
        result = await probe(f"http://{srv.address}/")
    assert not result.success
    assert result.error_kind is ErrorKind.RESET
    if names(result) == ["resolve", "connect"]:
        # An RST sent right after accept can beat the client's view of the handshake.
        assert behaviour is reset_at_once
        assert result.detail == f"cannot connect to {srv.address}: Connection reset by peer"
    else:
        assert names(result) == ["resolve", "connect", "processing"]
        assert result.detail in (
            "connection closed before any response",
            "connection reset before any response",
        )


async def test_garbage_banner_is_a_protocol_error_not_a_timeout() -> None:
    with RawTcpServer(garbage) as srv:
        result = await probe(f"http://{srv.address}/")
    assert result.error_kind is ErrorKind.PROTOCOL
    assert result.detail == f"not an HTTP response: {GARBAGE[:40]!r}"


async def test_garbage_then_close_is_a_protocol_error() -> None:
    with RawTcpServer(garbage_then_close) as srv:
        result = await probe(f"http://{srv.address}/")
    assert result.error_kind is ErrorKind.PROTOCOL
    assert result.detail == "not an HTTP response: b'220 mail.example ESMTP ready\\r\\n'"


async def test_malformed_status_line_is_a_protocol_error() -> None:
    def bad_status(conn: Any, stop: Any) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 OK-ish\r\nContent-Length: 0\r\n\r\n")

    with RawTcpServer(bad_status) as srv:
        result = await probe(f"http://{srv.address}/")
    assert result.error_kind is ErrorKind.PROTOCOL
    assert result.detail.startswith("malformed HTTP response: illegal status line")


async def test_hang_up_without_response_is_a_reset(server: HttpTestServer) -> None:
    result = await probe(server.url("/hang-up"))
    assert result.error_kind is ErrorKind.RESET
    assert result.detail == "connection closed before any response"
    assert names(result) == ["resolve", "connect", "processing"]


async def test_response_trickling_in_byte_by_byte() -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def trickle(conn: Any, stop: Any) -> None:
        conn.recv(65536)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(response)):
            conn.sendall(response[i : i + 1])
            time.sleep(0.005)

    with RawTcpServer(trickle) as srv:
        result = await probe(f"http://{srv.address}/")
    assert result.success, result
    assert result.fields["body_bytes"] == 2


async def test_garbage_trickling_in_is_caught_early() -> None:
    def trickle(conn: Any, stop: Any) -> None:
        conn.recv(65536)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(b"HT")
        time.sleep(0.05)
        conn.sendall(b"TX/1.1 200 OK\r\n")
        silent(conn, stop)

    with RawTcpServer(trickle) as srv:
        result = await probe(f"http://{srv.address}/")
    assert result.error_kind is ErrorKind.PROTOCOL
    assert result.detail == "not an HTTP response: b'HTTX/1.1 200 OK\\r\\n'"


async def test_peer_closing_inside_the_response_head_is_a_reset() -> None:
    def half_head(conn: Any, stop: Any) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")

    with RawTcpServer(half_head) as srv:
        result = await probe(f"http://{srv.address}/")
    assert result.error_kind is ErrorKind.RESET
    assert result.detail == "connection closed mid-response: peer unexpectedly closed connection"


async def test_switching_protocols_is_a_protocol_error() -> None:
    def upgrade(conn: Any, stop: Any) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
        silent(conn, stop)

    with RawTcpServer(upgrade) as srv:
        result = await probe(f"http://{srv.address}/")
    assert result.error_kind is ErrorKind.PROTOCOL
    assert result.detail == (
        "malformed HTTP response: Received server _SWITCH_UPGRADE event without a pending proposal"
    )


async def test_interim_100_continue_is_skipped() -> None:
    def with_continue(conn: Any, stop: Any) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with RawTcpServer(with_continue) as srv:
        result = await probe(f"http://{srv.address}/")
    assert result.success, result
    assert result.fields["body_bytes"] == 2


@pytest.mark.skipif(not can_bind_ipv6_loopback(), reason="this machine cannot listen on ::1")
async def test_ipv6_loopback() -> None:
    with HttpTestServer(host="::1") as srv:
        result = await probe(srv.url("/ok"))
        assert result.success, result
        assert names(result) == HTTP_PHASES
        assert result.fields["ip"] == "::1"
        assert srv.requests[0].header("Host") == f"[::1]:{srv.port}"


async def test_ip_version_mismatch_is_a_dns_failure(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok"), {"ip_version": "ipv6"})
    assert result.error_kind is ErrorKind.DNS
    assert result.detail == "127.0.0.1 is not an IPv6 address (ip_version: ipv6)"
    assert names(result) == ["resolve"]


async def test_hostname_target_resolves(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok", host="localhost"), {"ip_version": "ipv4"})
    assert result.success, result
    assert result.fields["ip"] == "127.0.0.1"
    assert server.requests[0].header("Host") == f"localhost:{server.port}"


# --------------------------------------------------------------------------- HTTPS


async def test_https_with_ca_file(https_server: HttpTestServer, ca_file: str) -> None:
    start = time.perf_counter()
    result = await probe(https_server.url("/ok"), {"ca_file": ca_file})
    total = time.perf_counter() - start

    assert result.success, result
    assert names(result) == HTTPS_PHASES
    assert all(duration >= 0 for _, duration in result.phases)
    assert sum(d for _, d in result.phases) <= total
    assert total - sum(d for _, d in result.phases) < 0.25
    assert str(result.fields["tls_version"]).startswith("TLSv1.")
    days = result.fields["cert_days_left"]
    assert isinstance(days, float)
    assert 29.0 < days <= 30.0
    assert https_server.requests[0].header("Connection") == "close"


async def test_https_by_name_with_server_name(https_server: HttpTestServer, ca_file: str) -> None:
    url = https_server.url("/ok", host="localhost")
    result = await probe(url, {"ca_file": ca_file, "ip_version": "ipv4"})
    assert result.success, result
    # The certificate also names 127.0.0.1, but the name is what gets verified:
    result = await probe(https_server.url("/ok"), {"ca_file": ca_file, "server_name": "localhost"})
    assert result.success, result


async def test_https_prober_reuses_its_context(https_server: HttpTestServer, ca_file: str) -> None:
    prober = make_prober(https_server.url("/ok"), {"ca_file": ca_file})
    for _ in range(3):
        result = await run_probe(prober, PhaseTrace())
        assert result.success, result
    assert len(https_server.requests) == 3


async def test_https_untrusted_ca(https_server: HttpTestServer, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    result = await probe(https_server.url("/ok"), {"ca_file": str(other)})
    assert not result.success
    assert result.error_kind is ErrorKind.TLS
    assert result.detail == "certificate rejected: unable to get local issuer certificate"
    assert names(result) == ["resolve", "connect", "tls"]


async def test_https_untrusted_by_the_system_store(https_server: HttpTestServer) -> None:
    result = await probe(https_server.url("/ok"))
    assert result.error_kind is ErrorKind.TLS
    assert result.detail == "certificate rejected: unable to get local issuer certificate"


async def test_https_expired_cert(ca: trustme.CA, ca_file: str) -> None:
    expired = ca.issue_cert(
        "localhost",
        "127.0.0.1",
        not_before=_now() - dt.timedelta(days=60),
        not_after=_now() - dt.timedelta(days=1),
    )
    with HttpTestServer(ssl_context=_server_context(expired)) as srv:
        result = await probe(srv.url("/ok"), {"ca_file": ca_file})
    assert result.error_kind is ErrorKind.TLS
    assert result.detail == "certificate rejected: certificate has expired"
    assert names(result) == ["resolve", "connect", "tls"]


async def test_https_wrong_hostname(ca: trustme.CA, ca_file: str) -> None:
    wrong = ca.issue_cert("wrong.example")
    with HttpTestServer(ssl_context=_server_context(wrong)) as srv:
        by_ip = await probe(srv.url("/ok"), {"ca_file": ca_file})
        by_name = await probe(srv.url("/ok"), {"ca_file": ca_file, "server_name": "localhost"})
    assert by_ip.error_kind is ErrorKind.TLS
    assert by_ip.detail == (
        "certificate rejected: IP address mismatch, certificate is not valid for '127.0.0.1'."
    )
    assert by_name.error_kind is ErrorKind.TLS
    assert by_name.detail == (
        "certificate rejected: Hostname mismatch, certificate is not valid for 'localhost'."
    )


async def test_tls_verify_false_accepts_an_untrusted_cert(https_server: HttpTestServer) -> None:
    result = await probe(https_server.url("/ok"), {"tls_verify": False})
    assert result.success, result
    assert names(result) == HTTPS_PHASES
    assert str(result.fields["tls_version"]).startswith("TLSv1.")
    # Unverified, the certificate's expiry is still reported (read from its DER form).
    days = result.fields["cert_days_left"]
    assert isinstance(days, float)
    assert 29.0 < days <= 30.0


async def test_tls_verify_false_accepts_expired_and_wrong_host(ca: trustme.CA) -> None:
    bad = ca.issue_cert(
        "wrong.example",
        not_before=_now() - dt.timedelta(days=60),
        not_after=_now() - dt.timedelta(days=1),
    )
    with HttpTestServer(ssl_context=_server_context(bad)) as srv:
        result = await probe(srv.url("/ok"), {"tls_verify": False})
    assert result.success, result
    days = result.fields["cert_days_left"]
    assert isinstance(days, float)
    assert -1.1 < days < -0.9


@pytest.mark.parametrize(
    "not_after",
    [
        dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC),  # last UTCTime year
        dt.datetime(2050, 1, 1, 0, 0, 1, tzinfo=dt.UTC),  # GeneralizedTime from here
        dt.datetime(3000, 1, 1, tzinfo=dt.UTC),  # trustme's default
        dt.datetime(2020, 2, 29, 12, 0, 0, tzinfo=dt.UTC),
    ],
)
def test_der_not_after(ca: trustme.CA, not_after: dt.datetime) -> None:
    cert = ca.issue_cert("localhost", not_before=dt.datetime(2019, 1, 1, tzinfo=dt.UTC), not_after=not_after)
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    assert der_not_after(der) == not_after.timestamp()


@pytest.mark.parametrize("der", [b"", b"\x30\x03\x02\x01\x01", b"\x30\x82\xff\xff", b"garbage"])
def test_der_not_after_tolerates_garbage(der: bytes) -> None:
    assert der_not_after(der) is None


async def test_https_to_a_plain_http_server_is_a_tls_failure(server: HttpTestServer) -> None:
    result = await probe(f"https://127.0.0.1:{server.port}/ok", {"tls_verify": False})
    assert result.error_kind is ErrorKind.TLS
    assert result.detail.startswith("TLS handshake failed: ")
    assert names(result) == ["resolve", "connect", "tls"]


async def test_https_to_a_garbage_server_is_a_tls_failure() -> None:
    with RawTcpServer(garbage) as srv:
        result = await probe(f"https://{srv.address}/", {"tls_verify": False})
    assert result.error_kind is ErrorKind.TLS
    assert result.detail.startswith("TLS handshake failed: ")


@pytest.mark.parametrize("behaviour", [close_at_once, reset_at_once], ids=["fin", "rst"])
async def test_https_immediate_close_is_a_reset(behaviour: Any) -> None:
    with RawTcpServer(behaviour) as srv:
        result = await probe(f"https://{srv.address}/", {"tls_verify": False})
    assert result.error_kind is ErrorKind.RESET
    if names(result) == ["resolve", "connect"]:
        # An RST sent right after accept can beat the client's view of the handshake.
        assert behaviour is reset_at_once
        assert result.detail == f"cannot connect to {srv.address}: Connection reset by peer"
    else:
        assert names(result) == ["resolve", "connect", "tls"]
        assert result.detail == "connection closed during the TLS handshake"


async def test_https_hang_up_after_the_handshake_is_a_reset(
    https_server: HttpTestServer, ca_file: str
) -> None:
    result = await probe(https_server.url("/hang-up"), {"ca_file": ca_file})
    assert result.error_kind is ErrorKind.RESET, result
    assert result.detail == "connection closed before any response"
    assert names(result) == ["resolve", "connect", "tls", "processing"]


async def test_https_body_cut_short_is_a_reset(https_server: HttpTestServer, ca_file: str) -> None:
    result = await probe(https_server.url("/short-body"), {"ca_file": ca_file})
    assert result.error_kind is ErrorKind.RESET, result
    assert result.detail.startswith("connection closed mid-response")


async def test_https_chunked_and_status(https_server: HttpTestServer, ca_file: str) -> None:
    settings = {"ca_file": ca_file, "body_matches": ["CHUNKED-END"]}
    chunked = await probe(https_server.url("/chunked"), settings)
    assert chunked.success, chunked
    status = await probe(https_server.url("/status/502"), {"ca_file": ca_file})
    assert status.error_kind is ErrorKind.STATUS
    assert status.detail == "HTTP 502 (expected 2xx)"


async def test_https_silent_server_times_out_in_tls() -> None:
    with RawTcpServer(silent) as srv:
        trace = PhaseTrace()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await run_probe(make_prober(f"https://{srv.address}/"), trace)
    assert trace.current == "tls"


@pytest.mark.skipif(not can_bind_ipv6_loopback(), reason="this machine cannot listen on ::1")
async def test_https_ipv6_loopback(good_cert: trustme.LeafCert, ca_file: str) -> None:
    with HttpTestServer(host="::1", ssl_context=_server_context(good_cert)) as srv:
        result = await probe(srv.url("/ok"), {"ca_file": ca_file})
    assert result.success, result
    assert names(result) == HTTPS_PHASES


# --------------------------------------------------------------------------- config validation


def test_valid_config_builds_without_io() -> None:
    prober = make_prober(
        "https://api.example:8443/health?deep=1",
        {
            "method": "GET",
            "headers": {"Authorization": "Bearer abc", "X-Retries": 3},
            "valid_status": [200, "3xx"],
            "body_matches": ["ok"],
            "body_not_matches": ["error"],
            "tls_verify": True,
            "ca_file": "/does/not/exist/yet.pem",
            "server_name": "api.example",
            "ip_version": "ipv4",
            "max_body_bytes": 4096,
        },
    )
    assert prober.type_name == "http"


def test_settings_may_be_omitted() -> None:
    assert make_prober("http://127.0.0.1/").type_name == "http"


def test_unknown_setting_suggests_the_right_one() -> None:
    assert config_error("http://127.0.0.1/", {"body_match": ["ok"]}) == (
        f"{SOURCE}: {SETTINGS}.body_match: unknown field (did you mean 'body_matches'?); "
        "allowed here: body, body_matches, body_not_matches, ca_file, client_cert, client_key, "
        "follow_redirects, header_matches, header_not_matches, headers, http_version, ip_version, "
        "max_body_bytes, max_redirects, method, server_name, tls_verify, valid_status"
    )


def test_settings_must_be_a_mapping() -> None:
    assert config_error("http://127.0.0.1/", ["GET"]) == (
        f"{SOURCE}: {SETTINGS}: expected a mapping of probe settings, got a list"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1/", "expected an http:// or https:// URL, got 'ftp://127.0.0.1/'"),
        ("127.0.0.1:80", "expected an http:// or https:// URL, got '127.0.0.1:80'"),
        (80, "expected a URL such as https://example.com/health"),
        ("http:///health", "missing host in 'http:///health'"),
        ("http://exa mple.com/", "invalid host name 'exa mple.com'"),
        (
            f"http://{'a' * 64}.example/",
            f"invalid host name '{'a' * 64}.example': each part between dots needs 1-63 characters",
        ),
        ("http://127.0.0.1:99999/", "invalid port in 'http://127.0.0.1:99999/'"),
        ("http://127.0.0.1:0/", "invalid port in 'http://127.0.0.1:0/'"),
        ("http://127.0.0.1:http/", "invalid port in 'http://127.0.0.1:http/'"),
        ("http://[::1/", "invalid URL 'http://[::1/': Invalid IPv6 URL"),
        (
            "http://::1:8080/",
            "IPv6 addresses need brackets, as in https://[2001:db8::1]:8443/; got 'http://::1:8080/'",
        ),
        (
            "http://user:secret@127.0.0.1/",
            "credentials in the URL would be stored and shown; use headers with a secret instead",
        ),
    ],
)
def test_bad_url(url: Any, message: str) -> None:
    assert config_error(url) == f"{SOURCE}: {CHECK}.target: {message}"


BAD_STATUS = "expected a status code (100-599) or a class such as 2xx, got "


@pytest.mark.parametrize(
    ("valid_status", "field", "message"),
    [
        (["2xx", "6xx"], "valid_status[1]", f"{BAD_STATUS}'6xx'"),
        ([99], "valid_status[0]", f"{BAD_STATUS}99"),
        ("200", "valid_status", f"{BAD_STATUS}'200'"),
        ([True], "valid_status[0]", f"{BAD_STATUS}True"),
        ([], "valid_status", "needs at least one status code or class such as 2xx"),
    ],
)
def test_bad_valid_status(valid_status: Any, field: str, message: str) -> None:
    assert config_error("http://127.0.0.1/", {"valid_status": valid_status}) == (
        f"{SOURCE}: {SETTINGS}.{field}: {message}"
    )


@pytest.mark.parametrize("key", ["body_matches", "body_not_matches"])
def test_bad_regex(key: str) -> None:
    assert config_error("http://127.0.0.1/", {key: ["ok", "status: (up"]}) == (
        f"{SOURCE}: {SETTINGS}.{key}[1]: invalid regular expression: "
        "missing ), unterminated subpattern at position 8"
    )


def test_regex_must_be_text() -> None:
    assert config_error("http://127.0.0.1/", {"body_matches": [42]}) == (
        f"{SOURCE}: {SETTINGS}.body_matches[0]: expected a regular expression as text"
    )


@pytest.mark.parametrize(
    ("name", "reserved"),
    [
        ("Connection", "connection"),
        ("content-length", "content-length"),
        ("Transfer-Encoding", "transfer-encoding"),
    ],
)
def test_reserved_header(name: str, reserved: str) -> None:
    assert config_error("http://127.0.0.1/", {"headers": {"X-Ok": "1", name: "x"}}) == (
        f"{SOURCE}: {SETTINGS}.headers.{name}: {reserved} is set by the probe (a fresh connection per run)"
    )


def test_bad_header_name() -> None:
    assert config_error("http://127.0.0.1/", {"headers": {"Bad Header": "x"}}) == (
        f"{SOURCE}: {SETTINGS}.headers['Bad Header']: invalid header name 'Bad Header'"
    )


def test_header_value_with_a_line_break() -> None:
    assert config_error("http://127.0.0.1/", {"headers": {"X-Token": "a\r\nEvil: 1"}}) == (
        f"{SOURCE}: {SETTINGS}.headers.X-Token: "
        "header values must not contain line breaks or control characters"
    )


def test_duplicate_header_ignoring_case() -> None:
    assert config_error("http://127.0.0.1/", {"headers": {"X-Token": "a", "x-token": "b"}}) == (
        f"{SOURCE}: {SETTINGS}.headers.x-token: duplicate header: 'X-Token' is already set (case is ignored)"
    )


async def test_header_values_are_trimmed(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok"), {"headers": {"X-Token": " abc\t", "X-Retries": 3}})
    assert result.success, result
    assert server.requests[0].header("X-Token") == "abc"
    assert server.requests[0].header("X-Retries") == "3"


def test_bad_method() -> None:
    assert config_error("http://127.0.0.1/", {"method": "GE T"}) == (
        f"{SOURCE}: {SETTINGS}.method: not an HTTP method: 'GE T'"
    )


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"max_body_bytes": -1}, "max_body_bytes", "must be at least 0"),
        ({"max_body_bytes": "1MB"}, "max_body_bytes", "expected a whole number, got text ('1MB')"),
        ({"tls_verify": "no"}, "tls_verify", "expected true or false, got text ('no')"),
        ({"ip_version": "v6"}, "ip_version", "must be one of any, ipv4, ipv6; got 'v6'"),
        ({"ca_file": ""}, "ca_file", "must not be empty"),
        ({"headers": ["X-A: 1"]}, "headers", "expected a mapping of names to text, got a list"),
    ],
)
def test_bad_setting(settings: dict[str, Any], field: str, message: str) -> None:
    assert config_error("http://127.0.0.1/", settings) == f"{SOURCE}: {SETTINGS}.{field}: {message}"


# --------------------------------------------------------------------------- redirects


async def test_redirects_are_followed_each_on_a_fresh_connection(server: HttpTestServer) -> None:
    result = await probe(server.url("/hops/3"), {"body_matches": ["all good"]})
    assert result.success, result
    assert result.detail == "HTTP 200"
    assert result.fields["redirects"] == 3
    assert result.fields["final_url"] == server.url("/hops/0")
    assert [r.path for r in server.requests] == ["/hops/3", "/hops/2", "/hops/1", "/hops/0"]
    assert len({r.client_port for r in server.requests}) == 4
    assert all(r.header("Connection") == "close" for r in server.requests)
    # Phases are summed over the hops: the same five names, never repeated.
    assert names(result) == HTTP_PHASES


async def test_a_prober_sends_the_same_request_on_each_run_made_once(server: HttpTestServer) -> None:
    """The request's h11 events and bytes are made on the first run and reused, the connection is new."""
    prober = make_prober(server.url("/ok?q=1"), {"headers": {"X-Run": "same"}})
    results = [await run_probe(prober, PhaseTrace()) for _ in range(3)]
    assert all(r.success for r in results), results
    seen = [(r.method, r.path, r.headers) for r in server.requests]
    assert len(seen) == 3 and seen[0] == seen[1] == seen[2]
    assert seen[0][1] == "/ok?q=1"
    assert ("X-Run", "same") in seen[0][2] and ("Connection", "close") in seen[0][2]
    assert len({r.client_port for r in server.requests}) == 3
    assert len(prober._h1) == 1  # type: ignore[attr-defined]


async def test_redirect_phases_are_summed_over_the_hops(server: HttpTestServer) -> None:
    start = time.perf_counter()
    result = await probe(server.url("/redirect/302?to=/delay/0.3"))
    total = time.perf_counter() - start
    assert result.success, result
    assert result.fields["redirects"] == 1
    phases = dict(result.phases)
    assert names(result) == HTTP_PHASES
    assert 0.25 <= phases["processing"] < 3.0  # the second hop's wait is in the sum
    assert sum(phases.values()) <= total
    assert total - sum(phases.values()) < 0.25


async def test_the_total_of_a_redirected_run_covers_every_hop(server: HttpTestServer) -> None:
    # The runner's total ends at trace.end: the first hop's end would leave the second hop's 0.3 s out.
    trace = PhaseTrace()
    start = time.perf_counter()
    result = await run_probe(make_prober(server.url("/redirect/302?to=/delay/0.3")), trace)
    assert result.success, result
    assert trace.end is not None
    assert trace.end - start >= 0.3
    assert trace.end - start >= sum(dict(result.phases).values()) - 1e-6


async def test_plain_http_phases_end_when_the_bytes_arrived_not_when_the_loop_got_to_them(
    server: HttpTestServer,
) -> None:
    # The server answers 0.1 s after the request (its thread runs while the loop is frozen).
    trace = PhaseTrace()
    start = time.perf_counter()
    blocker = asyncio.create_task(block_the_loop_once(lambda: trace.current == "processing", 0.5))
    result = await run_probe(make_prober(server.url("/delay/0.1")), trace)
    assert await blocker, "the probe never waited where the test freezes the loop"
    wall = time.perf_counter() - start
    assert result.success, result
    assert wall >= 0.5
    # The answer came within the freeze; the kernel's receive time says so.
    assert trace.end is not None
    assert 0.09 <= trace.end - start < 0.4, (trace.end - start, result.phases)
    assert 0.09 <= dict(result.phases)["processing"] < 0.4


async def test_https_phases_end_when_the_encrypted_bytes_arrived(https_server: HttpTestServer) -> None:
    # OpenSSL reads a TLS socket itself: the probe peeks at the encrypted bytes for their time.
    prober = make_prober(https_server.url("/delay/0.1"), {"tls_verify": False})
    assert (await run_probe(prober, PhaseTrace())).success  # the TLS context is built on the first run
    trace = PhaseTrace()
    start = time.perf_counter()
    blocker = asyncio.create_task(block_the_loop_once(lambda: trace.current == "processing", 0.5))
    result = await run_probe(prober, trace)
    assert await blocker, "the probe never waited where the test freezes the loop"
    assert time.perf_counter() - start >= 0.5
    assert result.success, result
    assert result.fields["http_version"] == "HTTP/1.1"
    assert trace.end is not None
    assert 0.09 <= trace.end - start < 0.4, (trace.end - start, result.phases)
    assert 0.09 <= dict(result.phases)["processing"] < 0.4


async def test_redirect_not_followed_is_judged_as_it_is(server: HttpTestServer) -> None:
    url = server.url("/redirect/302?to=/ok")
    failed = await probe(url, {"follow_redirects": False})
    assert failed.error_kind is ErrorKind.STATUS
    assert failed.detail == "HTTP 302 (expected 2xx)"
    assert "redirects" not in failed.fields
    accepted = await probe(url, {"follow_redirects": False, "valid_status": [302]})
    assert accepted.success, accepted
    assert [r.path for r in server.requests] == ["/redirect/302?to=/ok"] * 2


async def test_redirect_loop_is_a_status_failure(server: HttpTestServer) -> None:
    result = await probe(server.url("/loop/a"))
    assert result.error_kind is ErrorKind.STATUS
    a, b = server.url("/loop/a"), server.url("/loop/b")
    assert result.detail == f"redirect loop: {a} -> {b} -> {a} (HTTP 302)"
    assert result.fields["status_code"] == 302
    assert result.fields["redirects"] == 1
    assert names(result) == HTTP_PHASES
    assert len(server.requests) == 2


async def test_too_many_redirects(server: HttpTestServer) -> None:
    result = await probe(server.url("/hops/5"), {"max_redirects": 3})
    assert result.error_kind is ErrorKind.STATUS
    assert result.detail == (
        f"too many redirects: stopped after 3 (HTTP 302 from {server.url('/hops/2')} to {server.url('/hops/1')})"
    )
    assert len(server.requests) == 4
    # Exactly max_redirects hops is fine.
    ok = await probe(server.url("/hops/3"), {"max_redirects": 3})
    assert ok.success, ok


async def test_redirect_to_another_host_and_scheme(
    server: HttpTestServer, https_server: HttpTestServer, ca_file: str
) -> None:
    to = https_server.url("/ok", host="localhost")
    settings = {
        "ca_file": ca_file,
        "ip_version": "ipv4",
        "headers": {"Authorization": "Bearer s3cret", "Host": f"127.0.0.1:{server.port}", "X-Check": "1"},
    }
    result = await probe(server.url(f"/redirect/301?to={to}"), settings)
    assert result.success, result
    assert result.fields["final_url"] == to
    assert str(result.fields["tls_version"]).startswith("TLSv1.")
    assert names(result) == HTTPS_PHASES  # tls from the second hop, summed in
    [first] = server.requests
    assert first.header("Authorization") == "Bearer s3cret"
    [second] = https_server.requests
    # Credentials and the Host override are for the configured host only.
    assert second.header("Authorization") is None
    assert second.header("Host") == f"localhost:{https_server.port}"
    assert second.header("X-Check") == "1"


async def test_redirect_to_https_verifies_the_new_host(
    server: HttpTestServer, https_server: HttpTestServer
) -> None:
    to = https_server.url("/ok")
    result = await probe(server.url(f"/redirect/302?to={to}"))  # system store: untrusted
    assert result.error_kind is ErrorKind.TLS
    assert result.detail == "certificate rejected: unable to get local issuer certificate"
    assert result.fields["redirects"] == 1
    assert names(result) == HTTPS_PHASES  # the first hop's processing and transfer, summed in


async def test_same_host_redirect_keeps_the_headers(server: HttpTestServer) -> None:
    result = await probe(server.url("/hops/1"), {"headers": {"Authorization": "Bearer s3cret"}})
    assert result.success, result
    assert [r.header("Authorization") for r in server.requests] == ["Bearer s3cret"] * 2


async def test_relative_location(server: HttpTestServer) -> None:
    result = await probe(server.url("/redirect/307?to=../ok"))
    assert result.success, result
    assert result.fields["final_url"] == server.url("/ok")


@pytest.mark.parametrize(
    ("code", "method", "body"),
    [(303, "GET", b""), (302, "GET", b""), (307, "POST", b"ping"), (308, "POST", b"ping")],
)
async def test_redirect_method_rules(server: HttpTestServer, code: int, method: str, body: bytes) -> None:
    result = await probe(server.url(f"/redirect/{code}?to=/ok"), {"method": "POST", "body": "ping"})
    assert result.success, result
    first, second = server.requests
    assert (first.method, first.body) == ("POST", b"ping")
    assert (second.method, second.body) == (method, body)


async def test_redirect_to_an_unusable_url_is_a_protocol_error(server: HttpTestServer) -> None:
    result = await probe(server.url("/redirect/302?to=ftp://files.example/x"))
    assert result.error_kind is ErrorKind.PROTOCOL
    assert result.detail == (
        "HTTP 302 redirect to an unusable URL: expected an http:// or https:// URL, got 'ftp://files.example/x'"
    )


async def test_3xx_without_location_is_the_final_answer(server: HttpTestServer) -> None:
    result = await probe(server.url("/status/302"))
    assert result.error_kind is ErrorKind.STATUS
    assert result.detail == "HTTP 302 (expected 2xx)"
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- header assertions


async def test_header_matches_ignores_the_case_of_names(server: HttpTestServer) -> None:
    url = server.url("/headers?X-Cache=HIT&Content-Type=application/json")
    settings = {"header_matches": {"x-cache": "^HIT$", "CONTENT-TYPE": ["json", "^application/"]}}
    result = await probe(url, settings)
    assert result.success, result


async def test_header_matches_any_of_several_values(server: HttpTestServer) -> None:
    url = server.url("/headers?Set-Cookie=a%3D1&Set-Cookie=b%3D2")
    assert (await probe(url, {"header_matches": {"Set-Cookie": "^b="}})).success
    result = await probe(url, {"header_not_matches": {"Set-Cookie": "^b="}})
    assert result.error_kind is ErrorKind.ASSERTION
    assert result.detail == "header Set-Cookie: 'b=2' matches forbidden '^b='"


async def test_header_does_not_match(server: HttpTestServer) -> None:
    result = await probe(server.url("/headers?X-Cache=MISS"), {"header_matches": {"X-Cache": "^HIT$"}})
    assert not result.success
    assert result.error_kind is ErrorKind.ASSERTION
    assert result.detail == "header X-Cache: 'MISS' does not match '^HIT$'"
    assert result.fields["status_code"] == 200
    assert names(result) == HTTP_PHASES


async def test_header_missing(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok"), {"header_matches": {"X-Cache": "HIT"}})
    assert result.error_kind is ErrorKind.ASSERTION
    assert result.detail == "header X-Cache missing (expected to match 'HIT')"


async def test_header_not_matches(server: HttpTestServer) -> None:
    result = await probe(server.url("/ok"), {"header_not_matches": {"server": "^BaseHTTP/"}})
    assert result.error_kind is ErrorKind.ASSERTION
    assert result.detail.startswith("header server: 'BaseHTTP/")
    assert result.detail.endswith("' matches forbidden '^BaseHTTP/'")
    # An absent header matches nothing, so it passes.
    assert (await probe(server.url("/ok"), {"header_not_matches": {"X-Powered-By": "PHP"}})).success


async def test_status_is_judged_before_headers(server: HttpTestServer) -> None:
    result = await probe(server.url("/status/503"), {"header_matches": {"X-Never": "x"}})
    assert result.error_kind is ErrorKind.STATUS


async def test_headers_are_judged_before_the_body(server: HttpTestServer) -> None:
    settings = {"header_matches": {"Content-Type": "json"}, "body_matches": ["never"]}
    result = await probe(server.url("/ok"), settings)
    assert result.detail == "header Content-Type: 'text/plain' does not match 'json'"


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        (["X-A: 1"], "header_matches", "expected a mapping of header names to regular expressions"),
        ({"X A": "1"}, "header_matches['X A']", "invalid header name 'X A'"),
        (
            {"X-A": "(x"},
            "header_matches.X-A",
            "invalid regular expression: missing ), unterminated subpattern at position 0",
        ),
        (
            {"X-A": ["ok", "(x"]},
            "header_matches.X-A[1]",
            "invalid regular expression: missing ), unterminated subpattern at position 0",
        ),
        ({"X-A": 5}, "header_matches.X-A", "expected a regular expression as text"),
        ({"X-A": []}, "header_matches.X-A", "needs at least one regular expression"),
        (
            {"X-A": "a", "x-a": "b"},
            "header_matches.x-a",
            "duplicate header: 'X-A' is already listed (case is ignored)",
        ),
    ],
)
def test_bad_header_rules(value: Any, field: str, message: str) -> None:
    assert (
        config_error("http://127.0.0.1/", {"header_matches": value})
        == f"{SOURCE}: {SETTINGS}.{field}: {message}"
    )


# --------------------------------------------------------------------------- client certificate


@pytest.fixture(scope="module")
def client_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("client") / "client.pem"
    ca.issue_cert("probe@slaprobe.test").private_key_and_cert_chain_pem.write_to_path(str(path))
    return str(path)


def _mtls_context(cert: trustme.LeafCert, ca: trustme.CA) -> ssl.SSLContext:
    ctx = _server_context(cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def mtls_server(good_cert: trustme.LeafCert, ca: trustme.CA) -> Iterator[HttpTestServer]:
    with HttpTestServer(ssl_context=_mtls_context(good_cert, ca)) as s:
        yield s


async def test_client_certificate_accepted(
    mtls_server: HttpTestServer, ca_file: str, client_pem: str
) -> None:
    result = await probe(mtls_server.url("/ok"), {"ca_file": ca_file, "client_cert": client_pem})
    assert result.success, result
    assert names(result) == HTTPS_PHASES
    assert mtls_server.handshake_errors == []


async def test_client_certificate_as_two_files(
    mtls_server: HttpTestServer, ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    leaf = ca.issue_cert("probe@slaprobe.test")
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    result = await probe(
        mtls_server.url("/ok"), {"ca_file": ca_file, "client_cert": str(cert), "client_key": str(key)}
    )
    assert result.success, result


async def test_client_certificate_missing(mtls_server: HttpTestServer, ca_file: str) -> None:
    result = await probe(mtls_server.url("/ok"), {"ca_file": ca_file})
    assert not result.success
    assert result.error_kind is ErrorKind.TLS
    # TLS 1.3: the server judges the certificate after the handshake; its alert comes on the first read.
    assert result.detail == (
        "the server requires a client certificate (set client_cert): "
        "TLS alert TLSV13_ALERT_CERTIFICATE_REQUIRED before any response"
    )
    assert names(result) == ["resolve", "connect", "tls", "processing"]
    # The server's thread records its failed handshake after sending the alert, which the
    # probe may have read (and returned on) first.
    for _ in range(200):
        if mtls_server.handshake_errors:
            break
        await asyncio.sleep(0.005)
    assert len(mtls_server.handshake_errors) == 1
    assert mtls_server.requests == []


async def test_client_certificate_missing_and_the_alert_lost_to_a_reset(
    good_cert: trustme.LeafCert, ca: trustme.CA, ca_file: str
) -> None:
    # A server that closes at once with our request unread: its RST can overtake the alert.
    with RawTcpServer(over_tls(_mtls_context(good_cert, ca), silent, linger=False)) as srv:
        result = await probe(f"https://{srv.address}/", {"ca_file": ca_file})
    assert not result.success
    assert result.error_kind in (ErrorKind.RESET, ErrorKind.TLS), result
    if result.error_kind is ErrorKind.RESET:
        assert result.detail == (
            "connection reset before any response "
            "(right after a TLS 1.3 handshake: the server may require a client certificate)"
        )


async def test_client_certificate_from_another_ca(
    mtls_server: HttpTestServer, ca_file: str, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.pem"
    trustme.CA().issue_cert("probe@elsewhere.test").private_key_and_cert_chain_pem.write_to_path(
        str(stranger)
    )
    result = await probe(mtls_server.url("/ok"), {"ca_file": ca_file, "client_cert": str(stranger)})
    assert result.error_kind is ErrorKind.TLS
    assert result.detail == (
        "the server rejected the client certificate: TLS alert TLSV1_ALERT_UNKNOWN_CA before any response"
    )
    assert mtls_server.requests == []


async def test_unreadable_client_certificate_is_internal(https_server: HttpTestServer, ca_file: str) -> None:
    result = await probe(
        https_server.url("/ok"), {"ca_file": ca_file, "client_cert": "/nonexistent/client.pem"}
    )
    assert result.error_kind is ErrorKind.INTERNAL
    assert result.detail == "cannot load client_cert /nonexistent/client.pem: No such file or directory"
    assert result.phases == ()  # loaded before anything is timed
    assert https_server.requests == []


async def test_unreadable_ca_file_is_internal(https_server: HttpTestServer) -> None:
    result = await probe(https_server.url("/ok"), {"ca_file": "/nonexistent/ca.pem"})
    assert result.error_kind is ErrorKind.INTERNAL
    assert result.detail == "cannot load ca_file /nonexistent/ca.pem: No such file or directory"


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        (
            {"client_key": "/etc/k.pem"},
            "client_key",
            "client_key needs client_cert (the certificate it belongs to)",
        ),
        (
            {"client_cert": "-----BEGIN CERTIFICATE-----\nMIIB..."},
            "client_cert",
            "expected the path of a PEM file on the agent host, got PEM text (keys do not belong in the catalogue)",
        ),
        ({"client_cert": ""}, "client_cert", "must not be empty"),
        ({"server_name": "bad name"}, "server_name", "invalid host name 'bad name'"),
        ({"follow_redirects": "yes"}, "follow_redirects", "expected true or false, got text ('yes')"),
        ({"max_redirects": 0}, "max_redirects", "must be at least 1"),
        ({"max_redirects": 31}, "max_redirects", "must be at most 30"),
        (
            {"follow_redirects": False, "max_redirects": 3},
            "max_redirects",
            "max_redirects needs follow_redirects: true",
        ),
        ({"http_version": 3}, "http_version", "must be 1.1 or 2; got 3"),
        ({"http_version": "h2"}, "http_version", "must be 1.1 or 2; got 'h2'"),
        ({"http_version": True}, "http_version", "must be 1.1 or 2; got True"),
        (
            {"http_version": 2, "headers": {"Upgrade": "websocket"}},
            "headers.Upgrade",
            "upgrade is a connection header, which HTTP/2 forbids",
        ),
    ],
)
def test_bad_new_setting(settings: dict[str, Any], field: str, message: str) -> None:
    assert config_error("https://127.0.0.1/", settings) == f"{SOURCE}: {SETTINGS}.{field}: {message}"


def test_http_version_spellings() -> None:
    for value in (2, "2", "HTTP/2", 1.1, "1.1", "HTTP/1.1"):
        assert make_prober("https://127.0.0.1/", {"http_version": value}).type_name == "http"
    assert make_prober("https://127.0.0.1/", {"http_version": 2, "headers": {"TE": "trailers"}})


# --------------------------------------------------------------------------- HTTP/2


@pytest.fixture
def h2_server(good_cert: trustme.LeafCert) -> Iterator[H2TestServer]:
    with H2TestServer(ssl_context=_server_context(good_cert)) as s:
        yield s


async def test_http2_over_tls(h2_server: H2TestServer, ca_file: str) -> None:
    start = time.perf_counter()
    settings = {
        "http_version": 2,
        "ca_file": ca_file,
        "headers": {"X-Check": "slaprobe-test"},
        "body_matches": ["all good"],
        "header_matches": {"X-Proto": "^h2$"},
    }
    result = await probe(h2_server.url("/ok"), settings)
    total = time.perf_counter() - start
    assert result.success, result
    assert result.fields["http_version"] == "HTTP/2"
    assert result.fields["body_bytes"] == len(OK_BODY)
    assert names(result) == HTTPS_PHASES
    assert sum(d for _, d in result.phases) <= total
    assert isinstance(result.fields["cert_days_left"], float)
    [(method, path, headers, body)] = h2_server.requests
    assert (method, path, body) == ("GET", "/ok", b"")
    assert headers[":authority"] == f"127.0.0.1:{h2_server.port}"
    assert headers[":scheme"] == "https"
    assert headers["x-check"] == "slaprobe-test"
    assert headers["user-agent"].startswith("slaprobe/")
    assert "connection" not in headers and "host" not in headers


async def test_http2_prior_knowledge_over_http() -> None:
    with H2TestServer() as srv:
        result = await probe(srv.url("/ok"), {"http_version": "2"})
    assert result.success, result
    assert result.fields["http_version"] == "HTTP/2"
    assert names(result) == HTTP_PHASES
    assert srv.requests[0][2][":scheme"] == "http"


async def test_http2_body_beyond_one_flow_control_window(h2_server: H2TestServer, ca_file: str) -> None:
    result = await probe(h2_server.url("/large/300000"), {"http_version": 2, "ca_file": ca_file})
    assert result.success, result
    assert result.fields["body_bytes"] == 300000
    truncated = await probe(
        h2_server.url("/large/300000"), {"http_version": 2, "ca_file": ca_file, "max_body_bytes": 1000}
    )
    assert truncated.fields["body_truncated"] is True
    assert truncated.fields["body_bytes"] == 1000


async def test_http2_post_sends_the_body(h2_server: H2TestServer, ca_file: str) -> None:
    body = "p" * 100_000  # beyond the initial 65,535-byte window
    settings = {
        "http_version": 2,
        "ca_file": ca_file,
        "method": "POST",
        "body": body,
        "body_matches": ["^p+$"],
    }
    result = await probe(h2_server.url("/echo"), settings)
    assert result.success, result
    [(method, _, headers, received)] = h2_server.requests
    assert method == "POST"
    assert headers["content-length"] == "100000"
    assert received == body.encode()


async def test_http2_status_failure(h2_server: H2TestServer, ca_file: str) -> None:
    result = await probe(h2_server.url("/status/503"), {"http_version": 2, "ca_file": ca_file})
    assert result.error_kind is ErrorKind.STATUS
    assert result.detail == "HTTP 503 (expected 2xx)"
    assert result.fields["http_version"] == "HTTP/2"


async def test_http2_stream_reset(h2_server: H2TestServer, ca_file: str) -> None:
    result = await probe(h2_server.url("/reset"), {"http_version": 2, "ca_file": ca_file})
    assert result.error_kind is ErrorKind.RESET
    assert result.detail == "the server reset the HTTP/2 stream (INTERNAL_ERROR)"
    assert names(result) == HTTPS_PHASES[:4]


async def test_http2_goaway_with_an_error(h2_server: H2TestServer, ca_file: str) -> None:
    result = await probe(h2_server.url("/goaway"), {"http_version": 2, "ca_file": ca_file})
    assert result.error_kind is ErrorKind.RESET
    assert result.detail == "the server closed the HTTP/2 connection (GOAWAY INTERNAL_ERROR)"


async def test_http2_refused_by_alpn(good_cert: trustme.LeafCert, ca_file: str) -> None:
    with H2TestServer(ssl_context=_server_context(good_cert), alpn=("http/1.1",)) as srv:
        result = await probe(srv.url("/ok"), {"http_version": 2, "ca_file": ca_file})
        plain = await probe(srv.url("/ok"), {"ca_file": ca_file})
    assert result.error_kind is ErrorKind.PROTOCOL
    # No protocol in common: the server goes on without ALPN, which the probe reports.
    assert result.detail == "the server did not agree to HTTP/2 (ALPN: none)"
    assert names(result) == ["resolve", "connect", "tls"]
    assert plain.success, plain  # the default stays HTTP/1.1, with no ALPN offered
    assert plain.fields["http_version"] == "HTTP/1.1"


async def test_http2_prior_knowledge_to_an_http1_server() -> None:
    def http1_only(conn: Any, stop: Any) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    with RawTcpServer(http1_only) as srv:
        result = await probe(f"http://{srv.address}/", {"http_version": 2})
    assert result.error_kind is ErrorKind.PROTOCOL
    assert (
        result.detail
        == "the server answered in HTTP/1, not HTTP/2: b'HTTP/1.1 400 Bad Request\\r\\nContent-Length'"
    )


async def test_http2_garbage_is_a_protocol_error() -> None:
    with RawTcpServer(garbage) as srv:
        result = await probe(f"http://{srv.address}/", {"http_version": 2})
    assert result.error_kind is ErrorKind.PROTOCOL
    assert result.detail == f"not an HTTP/2 server (no SETTINGS frame first): {GARBAGE[:40]!r}"


async def test_http2_silent_server_times_out_in_processing() -> None:
    with RawTcpServer(silent) as srv:
        trace = PhaseTrace()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await run_probe(make_prober(f"http://{srv.address}/", {"http_version": 2}), trace)
    assert trace.current == "processing"
