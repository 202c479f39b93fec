"""The agent's identity: enrolment with a join bundle, TLS credentials, renewal.

Files in the agent's TLS directory (``data_dir/tls`` by default):
``agent.key`` (0600, made here, never leaves the host), ``agent.crt`` (issued
by the collector, naming this agent and its site) and ``ca.crt`` (the
collector's CA, the only authority the agent trusts for the collector).

A **join bundle** is the file ``slaprobe agent token create`` writes (0600):
the collector's addresses, the site, a one-time token and the CA certificate.
It is read from a file, never from the command line, so the token does not
show up in ``ps`` or shell history.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protos import slaprobe_v1_pb2 as pb
from protos import slaprobe_v1_pb2_grpc as pb_grpc
from slaprobe.chain import public_raw
from slaprobe.pki import cert_not_after, key_pem, make_csr, new_key, write_private

KEY, CERT, CA = "agent.key", "agent.crt", "ca.crt"


class IdentityError(Exception):
    pass


@dataclass(frozen=True)
class JoinBundle:
    collector: str
    enroll: str
    site: str
    token: str
    ca_pem: bytes
    name: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "collector": self.collector,
                "enroll": self.enroll,
                "site": self.site,
                "name": self.name,
                "token": self.token,
                "ca": self.ca_pem.decode(),
            },
            indent=1,
        )

    @classmethod
    def load(cls, path: Path) -> JoinBundle:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                collector=str(data["collector"]),
                enroll=str(data["enroll"]),
                site=str(data["site"]),
                token=str(data["token"]),
                ca_pem=str(data["ca"]).encode(),
                name=data.get("name"),
            )
        except FileNotFoundError:
            raise IdentityError(f"{path}: no such join file") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"{path}: not a slaprobe join file ({exc})") from None


@dataclass(frozen=True)
class TlsFiles:
    dir: Path

    def exists(self) -> bool:
        return all((self.dir / f).exists() for f in (KEY, CERT, CA))

    def credentials(self) -> grpc.ChannelCredentials:
        if not self.exists():
            raise IdentityError(
                f"no agent certificate in {self.dir}: enrol first (`slaprobe agent enroll --join FILE`),"
                " or run with --insecure against a plaintext collector"
            )
        return grpc.ssl_channel_credentials(
            root_certificates=(self.dir / CA).read_bytes(),
            private_key=(self.dir / KEY).read_bytes(),
            certificate_chain=(self.dir / CERT).read_bytes(),
        )

    def not_after(self) -> dt.datetime:
        return cert_not_after((self.dir / CERT).read_bytes())

    def renew_at(self, fraction: float = 2 / 3) -> dt.datetime:
        """Renew once ``fraction`` of the certificate's lifetime has passed."""
        from cryptography import x509

        cert = x509.load_pem_x509_certificate((self.dir / CERT).read_bytes())
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        return start + (end - start) * fraction

    def store(self, key: bytes | None, cert: bytes, ca: bytes | None = None) -> None:
        """Write new material atomically (a crash leaves the old pair or the new one, never a mix)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if ca is not None:
            _atomic(self.dir / CA, ca, private=False)
        if key is not None:
            # Key and certificate must match: stage both, then swap the certificate last.
            _atomic(self.dir / (KEY + ".new"), key, private=True)
            _atomic(self.dir / (CERT + ".new"), cert, private=False)
            os.replace(self.dir / (KEY + ".new"), self.dir / KEY)
            os.replace(self.dir / (CERT + ".new"), self.dir / CERT)
        else:
            _atomic(self.dir / CERT, cert, private=False)


def _atomic(path: Path, data: bytes, *, private: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if private:
        write_private(tmp, data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


async def enroll(
    bundle: JoinBundle,
    name: str,
    tls: TlsFiles,
    *,
    signing_key: Ed25519PrivateKey | None = None,
    timeout_s: float = 30.0,
) -> tuple[str, str]:
    """Make a TLS key, present the one-time token and the signing key, store the certificate.

    The collector records the signing key with the enrolment, so the token
    vouches for both; returns (site, name).
    """
    key = new_key()
    creds = grpc.ssl_channel_credentials(root_certificates=bundle.ca_pem)
    async with grpc.aio.secure_channel(bundle.enroll, creds) as channel:
        try:
            reply = await pb_grpc.CollectorStub(channel).Enroll(
                pb.EnrollRequest(
                    token=bundle.token,
                    name=name,
                    csr_pem=make_csr(key),
                    signing_key=public_raw(signing_key) if signing_key else b"",
                ),
                timeout=timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise IdentityError(
                f"enrolment refused by {bundle.enroll}: {exc.details() or exc.code().name}"
            ) from None
    tls.store(key_pem(key), reply.cert_pem, reply.ca_pem)
    return reply.site, reply.name


async def renew(channel: grpc.aio.Channel, tls: TlsFiles, *, timeout_s: float = 30.0) -> None:
    key = new_key()
    reply = await pb_grpc.CollectorStub(channel).Renew(
        pb.RenewRequest(csr_pem=make_csr(key)), timeout=timeout_s
    )
    tls.store(key_pem(key), reply.cert_pem)
