"""TLS probe: a full handshake with ``host:port``, and the facts of the certificate it presents.

Phases ``resolve, connect, tls``. Every run opens a new connection and does
a full handshake (no session is resumed), so ``tls`` is the real handshake
time. The connection is closed right after: nothing is sent inside it.

Failures: a chain, hostname or expiry problem found by the verifier is
``tls`` with the verifier's message (``certificate rejected: certificate has
expired``); a server that offers no protocol version at or above
``min_version`` is ``tls``; a certificate that verifies but expires within
``expiry_warning`` is ``cert_expiring``.

The certificate is read with ``cryptography`` from its DER form, so its
subject, issuer and expiry are reported even with ``verify: false`` (the
expiry of an internal, self-signed certificate still matters).

With TLS 1.3 a server judges the client certificate (or its absence) after
the client's side of the handshake is complete, and says so in its first
message: a session ticket once it has accepted the client, an alert when it
has not. So after a TLS 1.3 handshake the probe reads on, outside the clock,
until one of them comes or ``verdict_wait`` runs out (see
:func:`._net.await_tls13_verdict`).
With TLS 1.2 a rejection fails the handshake itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from dataclasses import dataclass

from cryptography import x509

from slaprobe.configfile import Fields, Node

from ._net import (
    VERDICT_MARGIN_S,
    HostPort,
    IpVersion,
    SockStream,
    await_tls13_verdict,
    check_host,
    connect,
    parse_host_port,
    read_ip_version,
    resolve,
    tls_handshake,
)
from .base import ErrorKind, FieldScalar, PhaseTrace, ProbeFailure, Prober, ProbeResult

_VERSIONS = {"TLS1.2": ssl.TLSVersion.TLSv1_2, "TLS1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class TlsSettings:
    server_name: str | None
    ca_file: str | None
    verify: bool
    min_version: str
    expiry_warning: float | None  # seconds
    expiry_warning_text: str  # as written, for the failure message
    client_cert: str | None
    client_key: str | None
    ip_version: IpVersion
    verdict_wait: float = 1.0  # seconds; 0: do not wait for a TLS 1.3 server's verdict


class TlsProber(Prober):
    type_name = "tls"

    def __init__(self, endpoint: HostPort, settings: TlsSettings) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._ssl: ssl.SSLContext | None = None

    @classmethod
    def from_config(cls, target: Node, settings: Fields) -> TlsProber:
        endpoint = parse_host_port(target)
        server_name: str | None = settings.str("server_name", None)
        if server_name is not None:
            server_name = server_name.strip()
            node = settings.raw("server_name")
            assert node is not None
            check_host(node, server_name)
        client_cert: str | None = settings.str("client_cert", None)
        client_key: str | None = settings.str("client_key", None)
        if client_key is not None and client_cert is None:
            node = settings.raw("client_key")
            assert node is not None
            node.fail("client_key needs client_cert (the certificate it belongs to)")
        expiry_warning: float | None = settings.duration("expiry_warning", None, min=1.0)
        expiry_node = settings.raw("expiry_warning")
        parsed = TlsSettings(
            server_name=server_name,
            ca_file=settings.str("ca_file", None),
            verify=settings.bool("verify", True),
            min_version=settings.choice("min_version", tuple(_VERSIONS), "TLS1.2"),
            expiry_warning=expiry_warning,
            expiry_warning_text=str(expiry_node.value).strip() if expiry_node is not None else "",
            client_cert=client_cert,
            client_key=client_key,
            ip_version=read_ip_version(settings),
            verdict_wait=settings.duration("verdict_wait", 1.0, min=0.0, max=60.0),
        )
        return cls(endpoint, parsed)

    def _build_context(self) -> ssl.SSLContext:
        """Load the CA store and client certificate: file I/O, so it runs in a thread."""
        s = self.settings
        try:
            ctx = ssl.create_default_context(cafile=s.ca_file if s.verify else None)
        except (OSError, ssl.SSLError) as exc:
            raise ProbeFailure(ErrorKind.INTERNAL, f"cannot load ca_file {s.ca_file}: {_why(exc)}") from exc
        ctx.minimum_version = _VERSIONS[s.min_version]
        if not s.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if s.client_cert is not None:
            try:
                ctx.load_cert_chain(s.client_cert, s.client_key)
            except (OSError, ssl.SSLError) as exc:
                what = s.client_cert if s.client_key is None else f"{s.client_cert} / {s.client_key}"
                detail = f"cannot load client_cert {what}: {_why(exc)}"
                raise ProbeFailure(ErrorKind.INTERNAL, detail) from exc
        return ctx

    async def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            # Built once per check, off the event loop; a failure is retried on the next run.
            self._ssl = await asyncio.to_thread(self._build_context)
        return self._ssl

    async def probe(self, trace: PhaseTrace) -> ProbeResult:
        s = self.settings
        ctx = await self._context()
        family, sockaddr = await resolve(self.endpoint, s.ip_version, trace)
        stream = SockStream(await connect(family, sockaddr, trace, nodelay=True))
        try:
            started = time.perf_counter()
            try:
                await tls_handshake(stream, ctx, s.server_name or self.endpoint.host, trace)
            except ProbeFailure as failure:
                if failure.kind is ErrorKind.TLS and _is_version_refusal(failure.detail):
                    detail = f"{failure.detail} (no protocol version at or above min_version {s.min_version})"
                    raise ProbeFailure(ErrorKind.TLS, detail) from failure
                raise
            tls = stream.sock
            cipher = tls.cipher() if isinstance(tls, ssl.SSLSocket) else None
            der = tls.getpeercert(binary_form=True) if isinstance(tls, ssl.SSLSocket) else None
            if isinstance(tls, ssl.SSLSocket) and tls.version() == "TLSv1.3" and s.verdict_wait > 0:
                handshake_s = time.perf_counter() - started
                trace.stop()  # the handshake's time ends here; the wait for the verdict is not counted
                await await_tls13_verdict(stream, tls, min(s.verdict_wait, handshake_s + VERDICT_MARGIN_S))
        finally:
            # Closed at once, without waiting for the peer's close_notify: asyncio's SSL
            # transport waits up to 30 s for it, holding the socket open after the result.
            stream.close()
        phases = trace.close()
        fields = trace.fields
        if cipher:
            fields["cipher"] = str(cipher[0])
        not_after = _read_certificate(der, fields) if der else None
        if not_after is None:
            return ProbeResult(True, phases, None, "handshake complete", fields)
        left = (not_after - dt.datetime.now(dt.UTC)).total_seconds()
        fields["cert_days_left"] = round(left / 86400.0, 3)
        when = fields["cert_not_after"]
        if s.expiry_warning is not None and left < s.expiry_warning:
            if left < 0:
                detail = f"certificate expired {_days(-left)} ago ({when})"
            else:
                detail = (
                    f"certificate expires in {_days(left)} ({when}), "
                    f"within expiry_warning {s.expiry_warning_text}"
                )
            return ProbeResult(False, phases, ErrorKind.CERT_EXPIRING, detail, fields)
        return ProbeResult(
            True, phases, None, f"{fields.get('tls_version')}, certificate valid until {when}", fields
        )


def _read_certificate(der: bytes, fields: dict[str, FieldScalar]) -> dt.datetime | None:
    """Put subject, issuer and expiry in ``fields``; return the expiry (None if unreadable)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        not_after = cert.not_valid_after_utc
        fields["cert_subject"] = cert.subject.rfc4514_string()
        fields["cert_issuer"] = cert.issuer.rfc4514_string()
    except ValueError:
        # A certificate the verifier accepted (or was told not to check) but cryptography
        # cannot parse: the handshake still stands; only the facts are missing.
        return None
    fields["cert_not_after"] = not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    return not_after


def _is_version_refusal(detail: str) -> bool:
    upper = detail.upper()
    return any(
        reason in upper
        for reason in (
            "PROTOCOL_VERSION",
            "UNSUPPORTED_PROTOCOL",
            "NO_PROTOCOLS_AVAILABLE",
            "WRONG_SSL_VERSION",
        )
    )


def _days(seconds: float) -> str:
    days = seconds / 86400.0
    return f"{days:.1f} days" if days >= 1 else f"{seconds / 3600.0:.1f} hours"


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
