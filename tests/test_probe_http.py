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
from tests.probe_harness import ProbeHarness, phase_names
from tests.probe_servers import (
    CHUNKS,
    GARBAGE,
    OK_BODY,
    HttpTestServer,
    RawTcpServer,
    can_bind_ipv6_loopback,
    close_at_once,
    closed_port,
    full_backlog,
    garbage,
    garbage_then_close,
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
