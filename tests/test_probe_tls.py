"""The TLS probe against real TLS servers on loopback (certificates from trustme), and its config validation."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from probes import ErrorKind, PhaseTrace, run_probe
from probes.tls import TlsProber
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
CHECK = "sites.lab.checks.cert"
SETTINGS = f"{CHECK}.settings"
PHASES = ["resolve", "connect", "tls"]


_harness = ProbeHarness("tls", CHECK, SOURCE, guard_s=10)
make_prober = _harness.make_prober
probe = _harness.probe
config_error = _harness.config_error
names = phase_names


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def server_context(
    cert: trustme.LeafCert,
    max_version: ssl.TLSVersion | None = None,
    client_ca: trustme.CA | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    if max_version is not None:
        ctx.maximum_version = max_version
    if client_ca is not None:
        client_ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="slaprobe test CA")


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def good_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(
        "localhost",
        "127.0.0.1",
        "::1",
        common_name="localhost",
        organization_name="slaprobe",
        organization_unit_name="probes",
        not_after=now() + dt.timedelta(days=30),
    )


def serve(cert: trustme.LeafCert, **kwargs: Any) -> HttpTestServer:
    return HttpTestServer(ssl_context=server_context(cert, **kwargs))


@pytest.fixture
def server(good_cert: trustme.LeafCert) -> Iterator[HttpTestServer]:
    with serve(good_cert) as s:
        yield s


def target(server: HttpTestServer) -> str:
    return f"127.0.0.1:{server.port}"


# --------------------------------------------------------------------------- success


async def test_handshake_reports_phases_and_certificate_facts(server: HttpTestServer, ca_file: str) -> None:
    start = time.perf_counter()
    result = await probe(target(server), {"ca_file": ca_file})
    total = time.perf_counter() - start

    assert result.success, result
    assert result.error_kind is None
    assert names(result) == PHASES
    phases = dict(result.phases)
    assert all(duration >= 0 for duration in phases.values())
    assert phases["tls"] > 0
    assert sum(phases.values()) <= total
    f = result.fields
    assert f["ip"] == "127.0.0.1"
    assert f["tls_version"] == "TLSv1.3"
    assert isinstance(f["cipher"], str) and f["cipher"].startswith("TLS_")
    assert f["cert_subject"] == "CN=localhost,OU=probes,O=slaprobe"
    assert "O=slaprobe test CA" in str(f["cert_issuer"])
    assert 29.9 < float(f["cert_days_left"]) <= 30.0
    expected_not_after = (now() + dt.timedelta(days=30)).strftime("%Y-%m-%dT")
    assert str(f["cert_not_after"]).startswith(expected_not_after)
    assert str(f["cert_not_after"]).endswith("Z")
    assert result.detail == f"TLSv1.3, certificate valid until {f['cert_not_after']}"
    assert not server.handshake_errors


async def test_each_run_is_a_full_handshake(server: HttpTestServer, ca_file: str) -> None:
    prober = make_prober(target(server), {"ca_file": ca_file})
    for _ in range(3):
        async with asyncio.timeout(10):
            result = await run_probe(prober, PhaseTrace())
        assert result.success, result
        assert names(result) == PHASES


async def test_server_name_sets_the_name_to_verify(ca: trustme.CA, ca_file: str) -> None:
    cert = ca.issue_cert("api.internal.example", organization_name="api")
    with serve(cert) as srv:
        mismatch = await probe(target(srv), {"ca_file": ca_file})
        named = await probe(target(srv), {"ca_file": ca_file, "server_name": "api.internal.example"})
    assert mismatch.error_kind is ErrorKind.TLS
    assert named.success, named
    assert str(named.fields["cert_subject"]).endswith(",O=api")  # the name itself is in the SAN only


async def test_a_host_name_target(server: HttpTestServer, ca_file: str) -> None:
    result = await probe(f"localhost:{server.port}", {"ca_file": ca_file, "ip_version": "ipv4"})
    assert result.success, result
    assert result.fields["ip"] == "127.0.0.1"


@pytest.mark.skipif(not can_bind_ipv6_loopback(), reason="this machine cannot listen on ::1")
async def test_ipv6_loopback(good_cert: trustme.LeafCert, ca_file: str) -> None:
    with HttpTestServer(host="::1", ssl_context=server_context(good_cert)) as srv:
        result = await probe(f"[::1]:{srv.port}", {"ca_file": ca_file})
    assert result.success, result
    assert result.fields["ip"] == "::1"


# --------------------------------------------------------------------------- verification failures


async def test_untrusted_chain_is_a_tls_failure(server: HttpTestServer) -> None:
    # No ca_file: the system store does not know the test CA.
    result = await probe(target(server))
    assert not result.success
    assert result.error_kind is ErrorKind.TLS
    assert result.detail == "certificate rejected: unable to get local issuer certificate"
    assert names(result) == PHASES
    assert "cert_subject" not in result.fields


async def test_self_signed_certificate_is_a_tls_failure(tmp_path: Path) -> None:
    other = trustme.CA()  # its own certificate as the server's: self-signed
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*_write_pair(tmp_path, other.cert_pem.bytes(), other.private_key_pem.bytes()))
    with HttpTestServer(ssl_context=ctx) as srv:
        result = await probe(target(srv))
        unverified = await probe(target(srv), {"verify": False})
    assert result.error_kind is ErrorKind.TLS
    assert result.detail == "certificate rejected: self-signed certificate"
    assert unverified.success, unverified
    assert unverified.fields["cert_subject"] == unverified.fields["cert_issuer"]


async def test_wrong_host_is_a_tls_failure(ca: trustme.CA, ca_file: str) -> None:
    with serve(ca.issue_cert("www.example.org")) as srv:
        result = await probe(target(srv), {"ca_file": ca_file})
    assert result.error_kind is ErrorKind.TLS
    assert (
        result.detail
        == "certificate rejected: IP address mismatch, certificate is not valid for '127.0.0.1'."
    )


async def test_wrong_host_name_is_a_tls_failure(ca: trustme.CA, ca_file: str) -> None:
    with serve(ca.issue_cert("www.example.org")) as srv:
        result = await probe(f"localhost:{srv.port}", {"ca_file": ca_file, "ip_version": "ipv4"})
    assert result.error_kind is ErrorKind.TLS
    assert (
        result.detail == "certificate rejected: Hostname mismatch, certificate is not valid for 'localhost'."
    )


async def test_expired_certificate_is_a_tls_failure(ca: trustme.CA, ca_file: str) -> None:
    cert = ca.issue_cert(
        "127.0.0.1", not_before=now() - dt.timedelta(days=10), not_after=now() - dt.timedelta(days=2)
    )
    with serve(cert) as srv:
        verified = await probe(target(srv), {"ca_file": ca_file, "expiry_warning": "14d"})
        unverified = await probe(target(srv), {"verify": False})
        warned = await probe(target(srv), {"verify": False, "expiry_warning": "1d"})
    assert verified.error_kind is ErrorKind.TLS
    assert verified.detail == "certificate rejected: certificate has expired"
    # Told not to verify, the probe still reports the facts ...
    assert unverified.success, unverified
    assert -2.01 < float(unverified.fields["cert_days_left"]) < -1.99
    # ... and an expiry_warning still catches it.
    assert warned.error_kind is ErrorKind.CERT_EXPIRING
    assert warned.detail.startswith("certificate expired 2.0 days ago (")


async def test_verify_false_accepts_an_untrusted_certificate(server: HttpTestServer) -> None:
    result = await probe(target(server), {"verify": False})
    assert result.success, result
    assert result.fields["cert_subject"] == "CN=localhost,OU=probes,O=slaprobe"
    assert 29.9 < float(result.fields["cert_days_left"]) <= 30.0


# --------------------------------------------------------------------------- expiry_warning


@pytest.fixture(scope="module")
def soon_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", not_after=now() + dt.timedelta(days=5, hours=1))


async def test_certificate_expiring_within_the_warning(soon_cert: trustme.LeafCert, ca_file: str) -> None:
    with serve(soon_cert) as srv:
        result = await probe(target(srv), {"ca_file": ca_file, "expiry_warning": "14d"})
    assert not result.success
    assert result.error_kind is ErrorKind.CERT_EXPIRING
    when = result.fields["cert_not_after"]
    assert result.detail == f"certificate expires in 5.0 days ({when}), within expiry_warning 14d"
    assert names(result) == PHASES
    assert 5.0 < float(result.fields["cert_days_left"]) < 5.1


async def test_certificate_expiring_after_the_warning(soon_cert: trustme.LeafCert, ca_file: str) -> None:
    with serve(soon_cert) as srv:
        result = await probe(target(srv), {"ca_file": ca_file, "expiry_warning": "4d12h"})
    assert result.success, result


async def test_expiry_in_hours_is_said_in_hours(ca: trustme.CA, ca_file: str) -> None:
    cert = ca.issue_cert("127.0.0.1", not_after=now() + dt.timedelta(hours=6, minutes=1))
    with serve(cert) as srv:
        result = await probe(target(srv), {"ca_file": ca_file, "expiry_warning": "1d"})
    assert result.error_kind is ErrorKind.CERT_EXPIRING
    assert result.detail.startswith("certificate expires in 6.0 hours (")


# --------------------------------------------------------------------------- versions


async def test_tls12_server_is_accepted_by_default(good_cert: trustme.LeafCert, ca_file: str) -> None:
    with serve(good_cert, max_version=ssl.TLSVersion.TLSv1_2) as srv:
        result = await probe(target(srv), {"ca_file": ca_file})
    assert result.success, result
    assert result.fields["tls_version"] == "TLSv1.2"
    assert not str(result.fields["cipher"]).startswith("TLS_")  # a TLS 1.2 suite name


async def test_server_below_min_version_is_a_tls_failure(good_cert: trustme.LeafCert, ca_file: str) -> None:
    with serve(good_cert, max_version=ssl.TLSVersion.TLSv1_2) as srv:
        result = await probe(target(srv), {"ca_file": ca_file, "min_version": "TLS1.3"})
    assert not result.success
    assert result.error_kind is ErrorKind.TLS
    assert result.detail.startswith("TLS handshake failed: ")
    assert result.detail.endswith("(no protocol version at or above min_version TLS1.3)"), result.detail
    assert names(result) == PHASES


async def test_tls13_server_meets_min_version(server: HttpTestServer, ca_file: str) -> None:
    result = await probe(target(server), {"ca_file": ca_file, "min_version": "TLS1.3"})
    assert result.success, result
    assert result.fields["tls_version"] == "TLSv1.3"


# --------------------------------------------------------------------------- client certificates


@pytest.fixture(scope="module")
def client_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(certificate, key, certificate+key) files of a client certificate from the test CA."""
    client = ca.issue_cert("probe@slaprobe.example")
    folder = tmp_path_factory.mktemp("client")
    cert, key, both = folder / "client.crt", folder / "client.key", folder / "client.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    key.write_bytes(client.private_key_pem.bytes())
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    return str(cert), str(key), str(both)


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
async def test_client_certificate_is_presented(
    ca: trustme.CA,
    good_cert: trustme.LeafCert,
    ca_file: str,
    client_files: tuple[str, str, str],
    version: ssl.TLSVersion,
) -> None:
    cert, key, both = client_files
    with serve(good_cert, max_version=version, client_ca=ca) as srv:
        separate = await probe(target(srv), {"ca_file": ca_file, "client_cert": cert, "client_key": key})
        combined = await probe(target(srv), {"ca_file": ca_file, "client_cert": both})
        # Let the server thread finish its side of both handshakes before looking.
        await asyncio.sleep(0.2)
        errors = list(srv.handshake_errors)
    assert separate.success, separate
    assert combined.success, combined
    assert errors == []


async def test_missing_client_certificate_fails_a_tls12_handshake(
    ca: trustme.CA, good_cert: trustme.LeafCert, ca_file: str
) -> None:
    with serve(good_cert, max_version=ssl.TLSVersion.TLSv1_2, client_ca=ca) as srv:
        result = await probe(target(srv), {"ca_file": ca_file})
    assert result.error_kind is ErrorKind.TLS
    assert result.detail.startswith("TLS handshake failed: ")


async def test_missing_client_certificate_fails_after_a_tls13_handshake(
    ca: trustme.CA, good_cert: trustme.LeafCert, ca_file: str
) -> None:
    """TLS 1.3: the server's alert comes after our side of the handshake; the probe waits for it."""
    with serve(good_cert, client_ca=ca) as srv:
        result = await probe(target(srv), {"ca_file": ca_file, "min_version": "TLS1.3"})
    assert result.error_kind is ErrorKind.TLS, result
    assert result.detail.startswith("the server requires a client certificate (set client_cert): TLS alert ")
    assert result.detail.endswith(" right after the TLS 1.3 handshake")
    assert result.fields["tls_version"] == "TLSv1.3"
    assert names(result) == PHASES


async def test_client_certificate_from_another_ca_fails_after_a_tls13_handshake(
    ca: trustme.CA, good_cert: trustme.LeafCert, ca_file: str, tmp_path: Path
) -> None:
    stranger = trustme.CA(organization_name="not trusted by the server").issue_cert("probe@elsewhere.example")
    both = tmp_path / "client.pem"
    both.write_bytes(stranger.private_key_pem.bytes() + b"".join(b.bytes() for b in stranger.cert_chain_pems))
    with serve(good_cert, client_ca=ca) as srv:
        result = await probe(target(srv), {"ca_file": ca_file, "client_cert": str(both)})
    assert result.error_kind is ErrorKind.TLS, result
    assert result.detail.startswith("the server rejected the client certificate: TLS alert ")


async def test_tls13_server_without_tickets_is_accepted_after_the_wait_outside_the_clock(
    ca: trustme.CA, good_cert: trustme.LeafCert, ca_file: str, client_files: tuple[str, str, str]
) -> None:
    """No ticket and no alert: the handshake stands; the wait for a verdict is not latency."""
    ctx = server_context(good_cert, client_ca=ca)
    ctx.num_tickets = 0
    _, _, both = client_files
    with HttpTestServer(ssl_context=ctx) as srv:
        prober = make_prober(target(srv), {"ca_file": ca_file, "client_cert": both, "verdict_wait": "300ms"})
        trace = PhaseTrace()
        started = time.perf_counter()
        result = await run_probe(prober, trace)
        took = time.perf_counter() - started
    assert result.success, result
    assert trace.end is not None
    reported = trace.end - started
    # The probe waited (handshake time + 100 ms at least, within the 300 ms cap) ...
    assert took >= 0.1
    # ... and the reported time ends with the handshake, before the wait.
    assert took - reported >= 0.09


async def test_verdict_wait_zero_does_not_read_after_the_handshake(
    ca: trustme.CA, good_cert: trustme.LeafCert, ca_file: str
) -> None:
    with serve(good_cert, client_ca=ca) as srv:
        result = await probe(target(srv), {"ca_file": ca_file, "verdict_wait": "0s"})
    assert result.success, result  # the documented trade: the rejection is not seen
    assert result.fields["tls_version"] == "TLSv1.3"


async def test_unreadable_client_certificate_is_an_internal_failure(
    server: HttpTestServer, ca_file: str, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.pem"
    result = await probe(target(server), {"ca_file": ca_file, "client_cert": str(missing)})
    assert result.error_kind is ErrorKind.INTERNAL  # the agent's files, not the target: scored unknown
    assert result.detail == f"cannot load client_cert {missing}: No such file or directory"
    assert result.phases == ()


async def test_unreadable_ca_file_is_an_internal_failure_and_retried(
    server: HttpTestServer, ca_file: str, tmp_path: Path
) -> None:
    path = tmp_path / "ca.pem"
    prober = make_prober(target(server), {"ca_file": str(path)})
    first = await run_probe(prober, PhaseTrace())
    assert first.error_kind is ErrorKind.INTERNAL
    assert first.detail == f"cannot load ca_file {path}: No such file or directory"
    await asyncio.to_thread(shutil.copyfile, ca_file, path)  # the file appears: the next run uses it
    second = await run_probe(prober, PhaseTrace())
    assert second.success, second


# --------------------------------------------------------------------------- broken peers


async def test_nothing_listening_is_refused() -> None:
    port = closed_port()
    result = await probe(f"127.0.0.1:{port}")
    assert result.error_kind is ErrorKind.REFUSED
    assert names(result) == ["resolve", "connect"]


async def test_plain_tcp_peer_is_a_tls_failure() -> None:
    with RawTcpServer(garbage) as srv:
        result = await probe(srv.address, {"verify": False})
    assert result.error_kind is ErrorKind.TLS
    assert result.detail.startswith("TLS handshake failed: ")
    assert "min_version" not in result.detail


async def test_immediate_close_is_a_reset() -> None:
    with RawTcpServer(close_at_once) as srv:
        result = await probe(srv.address)
    assert result.error_kind is ErrorKind.RESET
    assert result.detail == "connection closed during the TLS handshake"
    assert names(result) == PHASES


async def test_silent_server_times_out_in_tls() -> None:
    with RawTcpServer(silent) as srv:
        trace = PhaseTrace()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await run_probe(make_prober(srv.address), trace)
    assert trace.current == "tls"


# --------------------------------------------------------------------------- config validation


def _write_pair(folder: Path, cert: bytes, key: bytes) -> tuple[str, str]:
    cert_path, key_path = folder / "self.crt", folder / "self.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    return str(cert_path), str(key_path)


def test_valid_config_builds_without_io() -> None:
    prober = make_prober(
        "mail.example:993",
        {
            "server_name": "imap.example",
            "ca_file": "/does/not/exist/yet.pem",
            "verify": True,
            "min_version": "TLS1.3",
            "expiry_warning": "14d",
            "client_cert": "/etc/slaprobe/client.crt",
            "client_key": "/etc/slaprobe/client.key",
            "ip_version": "ipv6",
        },
    )
    assert isinstance(prober, TlsProber)
    assert prober.settings.expiry_warning == 14 * 86400
    assert prober.endpoint.port == 993


def test_settings_may_be_omitted() -> None:
    prober = make_prober("127.0.0.1:443")
    assert isinstance(prober, TlsProber)
    assert prober.settings.verify is True
    assert prober.settings.min_version == "TLS1.2"
    assert prober.settings.expiry_warning is None


def test_unknown_setting_suggests_the_right_one() -> None:
    assert config_error("127.0.0.1:443", {"tls_verify": False}) == (
        f"{SOURCE}: {SETTINGS}.tls_verify: unknown field (did you mean 'verify'?); "
        "allowed here: ca_file, client_cert, client_key, expiry_warning, ip_version, min_version, "
        "server_name, verdict_wait, verify"
    )


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"min_version": "TLS1.1"}, "min_version", "must be one of TLS1.2, TLS1.3; got 'TLS1.1'"),
        ({"min_version": 1.3}, "min_version", "must be one of TLS1.2, TLS1.3; got 1.3"),
        (
            {"expiry_warning": 14},
            "expiry_warning",
            "expected a duration with a unit such as 500ms, 30s or 5m, got a number (14)",
        ),
        (
            {"expiry_warning": "14"},
            "expiry_warning",
            "expected a duration with a unit such as 500ms, 30s, 5m or 1h30m, got '14'",
        ),
        ({"expiry_warning": "0s"}, "expiry_warning", "must be at least 1s"),
        ({"verify": "no"}, "verify", "expected true or false, got text ('no')"),
        ({"ca_file": ""}, "ca_file", "must not be empty"),
        ({"server_name": "exa mple.com"}, "server_name", "invalid host name 'exa mple.com'"),
        (
            {"client_key": "/k.pem"},
            "client_key",
            "client_key needs client_cert (the certificate it belongs to)",
        ),
        ({"ip_version": "4"}, "ip_version", "must be one of any, ipv4, ipv6; got '4'"),
        ({"verdict_wait": "2m"}, "verdict_wait", "must be at most 1m"),
    ],
)
def test_bad_setting(settings: dict[str, Any], field: str, message: str) -> None:
    assert config_error("127.0.0.1:443", settings) == f"{SOURCE}: {SETTINGS}.{field}: {message}"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("127.0.0.1", "missing port in '127.0.0.1'; write host:port"),
        ("https://example.com:443", "expected host:port without a scheme, got 'https://example.com:443'"),
        ("::1:443", "IPv6 addresses need brackets, as in [2001:db8::1]:443; got '::1:443'"),
    ],
)
def test_bad_target(target: str, message: str) -> None:
    assert config_error(target) == f"{SOURCE}: {CHECK}.target: {message}"
