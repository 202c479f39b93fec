"""The agent's signed record chain: the rules, shared by the agent, the collector and the verifier.

Why a chain of seals in the record stream, not a signature per batch: batches
are an accident of the link (a reconnect splits or merges them), while the
spool's records are fixed once written. So the agent's spool *seals* what it
wrote every few hundred records or every second: a seal is itself a record,
numbered in the same sequence space, that covers every record since the
previous seal with a digest of their exact bytes, names the previous seal's
*head*, and is signed with the agent's Ed25519 key. The collector checks each
link before it stores a batch; anyone holding the agent's public key can check
an exported run of records later, without trusting the collector.

Rules (README "Evidence for disputes" states them for users):

* ``digest`` = sha256 over the covered records in seq order, each written as a
  4-byte big-endian length followed by the record's bytes.
* ``head(link)`` = sha256(body), or ``replaces_head`` for an eviction link.
* The first link of an epoch has ``prev`` = 32 zero bytes; every later link has
  ``prev`` = head of the link before it.
* Eviction: a full spool drops whole links (records and seals) and writes a gap
  record plus an eviction link covering it, whose ``prev`` is the head before the
  first dropped link and whose ``replaces_head`` is the head of the last one, so
  the links after it still chain. An eviction link is only as good as its own
  signature, so verifiers check every eviction link's signature.
* One signature authenticates everything before it: link *n*'s body holds the
  hash of link *n-1*'s body, and so on back. The collector checks every
  signature as links arrive; a bundle verifier may check hashes for every link
  and signatures only for the last link of a run and every eviction link.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protos import slaprobe_v1_pb2 as pb
from slaprobe.pki import write_private

DOMAIN = b"slaprobe.v1.seal\x00"
GENESIS = bytes(32)
KEY_ID_BYTES = 16
_LEN = struct.Struct(">I")


class ChainError(Exception):
    """A link that does not hold; the message names the seq and what is wrong."""

    def __init__(self, seq: int, message: str) -> None:
        super().__init__(f"seq {seq}: {message}")
        self.seq = seq


def key_id(public_raw: bytes) -> bytes:
    return hashlib.sha256(public_raw).digest()[:KEY_ID_BYTES]


def fingerprint(public_raw: bytes) -> str:
    """The key's SHA-256, as `openssl pkey -pubin -outform DER | tail -c 32 | sha256sum` prints it."""
    return hashlib.sha256(public_raw).hexdigest()


def public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_pem(public: bytes) -> str:
    """A raw public key as PEM (SubjectPublicKeyInfo), the form openssl reads."""
    key = Ed25519PublicKey.from_public_bytes(public)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path`` (PKCS#8 PEM, mode 0600), made on first use."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write_private(tmp, pem)
    os.replace(tmp, path)
    return key


class Digest:
    """The running digest of a link's records."""

    __slots__ = ("_h", "count")

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.count = 0

    def add(self, record: bytes) -> None:
        h = self._h
        h.update(_LEN.pack(len(record)))
        h.update(record)
        self.count += 1

    def value(self) -> bytes:
        return self._h.digest()


def digest_of(records: Iterable[bytes]) -> bytes:
    d = Digest()
    for r in records:
        d.add(r)
    return d.value()


@dataclass(frozen=True)
class Link:
    """One parsed seal."""

    seq: int
    body_bytes: bytes
    signature: bytes
    body: pb.SealBody

    @property
    def head(self) -> bytes:
        return bytes(self.body.replaces_head) or hashlib.sha256(self.body_bytes).digest()

    @property
    def is_eviction(self) -> bool:
        return bool(self.body.replaces_head)

    @property
    def prev(self) -> bytes:
        return bytes(self.body.prev)

    def signature_ok(self, public: Ed25519PublicKey) -> bool:
        try:
            public.verify(self.signature, DOMAIN + self.body_bytes)
        except InvalidSignature:
            return False
        return True


def parse_link(seq: int, seal: pb.Seal) -> Link:
    body = pb.SealBody.FromString(seal.body)
    return Link(seq, bytes(seal.body), bytes(seal.signature), body)


def make_seal(
    key: Ed25519PrivateKey,
    *,
    epoch: int,
    first_seq: int,
    last_seq: int,
    prev: bytes,
    digest: bytes,
    count: int,
    sealed_ns: int,
    replaces_head: bytes = b"",
    evicted_links: int = 0,
) -> pb.Seal:
    body = pb.SealBody(
        epoch=epoch,
        first_seq=first_seq,
        last_seq=last_seq,
        prev=prev,
        digest=digest,
        sealed_ns=sealed_ns,
        count=count,
        key_id=key_id(public_raw(key)),
        replaces_head=replaces_head,
        evicted_links=evicted_links,
    ).SerializeToString()
    return pb.Seal(body=body, signature=key.sign(DOMAIN + body))


def seal_record(seq: int, seal: pb.Seal) -> bytes:
    return pb.Record(seq=seq, seal=seal).SerializeToString()


class ChainWalker:
    """Checks a contiguous run of one agent epoch's records, link by link, as they come.

    ``head`` is the head before the run (GENESIS at the start of an epoch) or
    None when unknown (a run that starts at an exported anchor link: its own
    head is then taken as given, to be vouched for by the signatures after it).
    ``signatures``: "all" checks every link's signature; "evictions" checks
    only eviction links', leaving the rest to :meth:`finish` (the last link).
    """

    def __init__(
        self,
        epoch: int,
        keys: Mapping[bytes, Ed25519PublicKey],
        *,
        head: bytes | None,
        next_seq: int,
        signatures: str = "all",
    ) -> None:
        self.epoch = epoch
        self.keys = keys
        self.head = head
        self.next_seq = next_seq  # the seq the next record must start at
        self.segment_start = next_seq
        self.signatures = signatures
        self.links = 0
        self.records = 0
        self.last_link: Link | None = None
        self._digest = Digest()

    @property
    def unsealed(self) -> int:
        """Records fed since the last link."""
        return self._digest.count

    def record(self, seq: int, through_seq: int, raw: bytes) -> None:
        """Feed one record that is not a seal."""
        if seq != self.next_seq:
            raise ChainError(seq, f"expected seq {self.next_seq}: records are missing or out of order")
        d = self._digest  # Digest.add, inlined: this runs once per record of a month's bundle
        h = d._h
        h.update(_LEN.pack(len(raw)))
        h.update(raw)
        d.count += 1
        self.records += 1
        self.next_seq = through_seq + 1

    def anchor(self, link: Link) -> None:
        """Start a run at an exported link whose own records are not part of the run."""
        self._check_key(link)
        self.head = link.head
        self.last_link = link
        self.next_seq = self.segment_start = link.seq + 1
        self._digest = Digest()

    def seal(self, link: Link) -> Link:
        """Feed one seal; raise ChainError when it does not hold."""
        # Each field of the body is read once (a protobuf attribute read is not free, and this
        # runs once per link: half a million times for a month of one site).
        b = link.body
        seq = link.seq
        if seq != self.next_seq:
            raise ChainError(seq, f"expected seq {self.next_seq}: records are missing or out of order")
        epoch, first_seq, last_seq = b.epoch, b.first_seq, b.last_seq
        if epoch != self.epoch:
            raise ChainError(seq, f"seal names epoch {epoch}, the records are of epoch {self.epoch}")
        if first_seq != self.segment_start or last_seq != seq - 1:
            raise ChainError(
                seq,
                f"seal covers seqs {first_seq}..{last_seq}, the records since the last seal are"
                f" {self.segment_start}..{seq - 1}",
            )
        d = self._digest
        if b.count != d.count or bytes(b.digest) != d._h.digest():
            raise ChainError(seq, "the records do not match the seal's digest: altered, dropped or added")
        if self.head is not None and bytes(b.prev) != self.head:
            raise ChainError(
                seq, "the seal does not chain to the link before it (a link is missing or replaced)"
            )
        public = self.keys.get(bytes(b.key_id))
        if public is None:
            raise ChainError(seq, f"signed by unknown key {bytes(b.key_id).hex()}")
        replaces = bytes(b.replaces_head)
        if (replaces or self.signatures == "all") and not link.signature_ok(public):
            raise ChainError(seq, "bad signature: not signed by this agent's key")
        self.head = replaces or hashlib.sha256(link.body_bytes).digest()  # Link.head
        self.last_link = link
        self.links += 1
        self.next_seq = self.segment_start = seq + 1
        self._digest = Digest()
        return link

    def finish(self) -> None:
        """End a run: no unsealed records, and the last link's signature vouches for the rest."""
        if self._digest.count:
            raise ChainError(self.next_seq - 1, f"{self._digest.count} records at the end are not sealed")
        link = self.last_link
        if link is not None and self.signatures != "all" and not link.signature_ok(self._check_key(link)):
            raise ChainError(link.seq, "bad signature on the last link: not signed by this agent's key")

    def _check_key(self, link: Link) -> Ed25519PublicKey:
        public = self.keys.get(bytes(link.body.key_id))
        if public is None:
            raise ChainError(link.seq, f"signed by unknown key {bytes(link.body.key_id).hex()}")
        return public


def public_keys(raws: Iterable[bytes]) -> dict[bytes, Ed25519PublicKey]:
    return {key_id(r): Ed25519PublicKey.from_public_bytes(r) for r in raws}
