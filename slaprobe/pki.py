"""The small PKI: the collector's CA and server certificate, agent keys, CSRs and certificates.

Uses ``cryptography`` (the maintained Python binding to OpenSSL's primitives)
rather than shelling out to ``openssl``: every field we put in a certificate
is then explicit and testable.

Identity: an agent certificate carries one SAN URI,
``slaprobe://agent/<site>/<name>`` (both percent-encoded, so any Unicode name
round-trips), and the collector derives the agent's name and site from the
verified certificate alone, never from message payloads.

Keys are ECDSA P-256: every TLS stack gRPC is built on supports it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
SIGNING_KEY = "signing.key"  # Ed25519, for evidence bundles
URI_PREFIX = "slaprobe://agent/"


class PkiError(Exception):
    pass


@dataclass(frozen=True)
class AgentIdentity:
    site: str
    name: str

    @property
    def uri(self) -> str:
        return f"{URI_PREFIX}{quote(self.site, safe='')}/{quote(self.name, safe='')}"

    @classmethod
    def from_uri(cls, uri: str) -> AgentIdentity | None:
        if not uri.startswith(URI_PREFIX):
            return None
        parts = urlsplit(uri).path.lstrip("/").split("/")
        if len(parts) != 2 or not all(parts):
            return None
        return cls(unquote(parts[0]), unquote(parts[1]))


def identity_from_cert_pem(pem: bytes) -> AgentIdentity | None:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        ident = AgentIdentity.from_uri(uri)
        if ident is not None:
            return ident
    return None


def write_private(path: Path, data: bytes) -> None:
    """Create a secret file readable by its owner only (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: expected an EC private key")
    return key


@dataclass(frozen=True)
class CollectorPki:
    """The files ``slaprobe collector init`` creates in the collector's TLS directory."""

    dir: Path

    @property
    def ca_cert_path(self) -> Path:
        return self.dir / CA_CERT

    def exists(self) -> bool:
        return all((self.dir / f).exists() for f in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY))

    def ca_cert_pem(self) -> bytes:
        return (self.dir / CA_CERT).read_bytes()

    def server_pair(self) -> tuple[bytes, bytes]:
        """(private key PEM, certificate chain PEM) for the gRPC server."""
        return (self.dir / SERVER_KEY).read_bytes(), (self.dir / SERVER_CERT).read_bytes()

    def init(self, hosts: list[str], *, days: int = 3650, force: bool = False) -> list[str]:
        """Create what is missing; return the files created. Never overwrites without ``force``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        created: list[str] = []
        if force or not (self.dir / CA_KEY).exists():
            ca_key = new_key()
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slaprobe collector CA")])
            ca = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(ca_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - dt.timedelta(minutes=5))
                .not_valid_after(_now() + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
                )
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256())
            )
            write_private(self.dir / CA_KEY, _key_pem(ca_key))
            (self.dir / CA_CERT).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
            created += [CA_KEY, CA_CERT]
            force = True  # a new CA needs a new server certificate
        if force or not (self.dir / SERVER_KEY).exists():
            key = new_key()
            cert = self._issue(
                key.public_key(),
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost")]),
                _sans(hosts),
                ExtendedKeyUsageOID.SERVER_AUTH,
                days=days,
            )
            write_private(self.dir / SERVER_KEY, _key_pem(key))
            (self.dir / SERVER_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            created += [SERVER_KEY, SERVER_CERT]
        if not (self.dir / SIGNING_KEY).exists():
            write_private(self.dir / SIGNING_KEY, _key_pem(ed25519.Ed25519PrivateKey.generate()))
            created.append(SIGNING_KEY)
        return created

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        return x509.load_pem_x509_certificate(self.ca_cert_pem()), load_key(self.dir / CA_KEY)

    def _issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        subject: x509.Name,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        *,
        days: float,
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        ca, ca_key = self._ca()
        # Backdated a little for clocks slightly behind ours, never by a large part of the lifetime.
        start = not_before or (_now() - min(dt.timedelta(minutes=5), dt.timedelta(days=days) * 0.05))
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )

    def issue_agent_cert(
        self,
        csr_pem: bytes,
        identity: AgentIdentity,
        *,
        days: float = 90,
        not_before: dt.datetime | None = None,
    ) -> bytes:
        """Sign an agent's CSR. The identity comes from the enrolment, never from the CSR."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise PkiError(f"not a PEM certificate request: {exc}") from exc
        if not csr.is_signature_valid:
            raise PkiError("the certificate request's signature is invalid")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise PkiError("agent keys must be ECDSA P-256")
        cert = self._issue(
            public_key,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.name[:64] or "agent")]),
            [x509.UniformResourceIdentifier(identity.uri)],
            ExtendedKeyUsageOID.CLIENT_AUTH,
            days=days,
            not_before=not_before,
        )
        return cert.public_bytes(serialization.Encoding.PEM)


def _sans(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for h in hosts or ["localhost", "127.0.0.1", "::1", socket.gethostname()]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return names


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slaprobe agent")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return _key_pem(key)


def cert_not_after(pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


def cert_serial(pem: bytes) -> str:
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


def new_token() -> str:
    return secrets.token_urlsafe(32)
