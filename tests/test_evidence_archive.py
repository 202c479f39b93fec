"""The bundle's ``.tar.gz``: gzip members that carry their own length, read on several threads.

Stock tools must read the archive as any gzip file (``test_evidence`` runs tar and sha256sum on
it); verify inflates the members at once when they carry their length, in order otherwise (an
archive re-packed by another tool), and a damaged or truncated archive is an error, never a
silently shorter stream.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from collector.evidence import archive
from collector.evidence.archive import Archiver, iter_members


def _payload(n: int) -> bytes:
    rng = random.Random(n)
    words = [b"result", b"shop/web01", b"1790809197000000000", b"true", b"false", b'{"resolve":7369285}']
    return b",".join(rng.choice(words) for _ in range(n // 8))[:n]


def _archive(tmp: Path, sizes: list[int]) -> tuple[Path, bytes]:
    root = tmp / "bundle"
    root.mkdir()
    out = tmp / "b.tar.gz"
    a = Archiver(root, out)
    a.add_dir(root)
    for i, n in enumerate(sizes):
        (root / f"f{i}").write_bytes(_payload(n))
        a.add_file(root / f"f{i}")
    a.hashes()
    a.finish([])
    return out, gzip.decompress(out.read_bytes())


def test_members_carry_their_length_and_inflate_in_parallel_as_gzip_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "CHUNK", 64 << 10)  # many members from small files
    out, whole = _archive(tmp_path, [300_000, 5, 1_000_000, 0, 70_000])
    data = out.read_bytes()
    offsets = []
    pos = 0
    while pos < len(data):  # every member: the subfield's length lands on the next member
        assert data[pos : pos + 2] == b"\x1f\x8b" and data[pos + 3] & 4 and data[pos + 12 : pos + 14] == b"SP"
        offsets.append(pos)
        pos += struct.unpack_from("<I", data, pos + 16)[0]
    assert pos == len(data) and len(offsets) > 10
    with open(out, "rb") as f:
        assert b"".join(iter_members(f)) == whole
    listing = subprocess.run(["tar", "tzf", str(out)], capture_output=True, text=True, check=True).stdout
    assert listing.split() == ["bundle/", *(f"bundle/f{i}" for i in range(5))]


def test_an_archive_repacked_by_another_tool_is_read_in_order(tmp_path: Path) -> None:
    raw = _payload(2_000_000)
    two = gzip.compress(raw[:700_000]) + gzip.compress(raw[700_000:])  # two plain members
    assert b"".join(iter_members(io.BytesIO(two))) == raw
    assert b"".join(iter_members(io.BytesIO(gzip.compress(raw)))) == raw


@pytest.mark.parametrize(
    "damage", ["a member's length", "a byte of a member", "truncated", "truncated plain"]
)
def test_a_damaged_archive_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    monkeypatch.setattr(archive, "CHUNK", 64 << 10)
    out, _ = _archive(tmp_path, [1_000_000])
    data = bytearray(out.read_bytes())
    second = struct.unpack_from("<I", data, 16)[0]
    if damage == "a member's length":
        struct.pack_into("<I", data, second + 16, struct.unpack_from("<I", data, second + 16)[0] - 100)
    elif damage == "a byte of a member":
        data[second + 200] ^= 0x10
    elif damage == "truncated":
        data = data[: len(data) * 2 // 3]
    else:
        data = bytearray(gzip.compress(os.urandom(100_000))[:-20])
    with pytest.raises((zlib.error, EOFError)):
        b"".join(iter_members(io.BytesIO(bytes(data))))
