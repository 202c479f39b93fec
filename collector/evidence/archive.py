"""Writing a bundle's ``.tar.gz`` while the bundle is still being written, on every core.

Why not ``tarfile.open("w:gz")``: it compresses on the calling thread, one 16 KiB block at a
time, after everything is written. A month of one site is ~2 GB of tables and chain files;
at gzip's default level that is a minute of one core. Here each file is handed over as soon
as it is complete; a feeder thread reads it once (hashing it for ``SHA256SUMS`` on the way)
and cuts the tar stream into chunks that a pool of threads compresses at once (zlib and
hashlib release the GIL, so this runs beside the Python work of the export). Each chunk is
its own gzip member: a sequence of members is one valid gzip file (RFC 1952 §2.2), read by
stock ``tar``/``gzip`` and Python's ``tarfile`` alike, as pigz does.

The archive's order: the directories, then the files in the order they were added, the
caller adding ``SHA256SUMS`` and its signature last.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import os
import queue
import struct
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, cast

CHUNK = 8 << 20  # bytes of tar stream per gzip member
LEVEL = 1  # gzip level: measured on a month's bundle, level 6 costs ~4x the CPU for ~20% less size
_RECORD = tarfile.RECORDSIZE


class Archiver:
    """A ``.tar.gz`` of ``root`` (arcnames under ``root.name/``), fed file by file."""

    def __init__(self, root: Path, out: Path, *, level: int = LEVEL, threads: int | None = None) -> None:
        self.root = root
        self.out = out
        self.level = level
        self.digests: dict[str, str] = {}  # arcname below root -> sha256 hex, of every file added
        self._f = open(out, "wb")  # noqa: SIM115 (closed by close/abort)
        self._pool = ThreadPoolExecutor(
            threads or max(2, os.cpu_count() or 1), thread_name_prefix="evidence-gz"
        )
        self._pending: queue.Queue[Future[bytes] | None] = queue.Queue(maxsize=8)
        self._jobs: queue.Queue[tuple[Path, bool] | None] = queue.Queue()
        self._buf = bytearray()
        self._offset = 0  # bytes of tar stream produced
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="evidence-gz-writer", daemon=True)
        self._feeder = threading.Thread(target=self._feed_loop, name="evidence-tar", daemon=True)
        self._writer.start()
        self._feeder.start()

    # ---- the caller's side --------------------------------------------------------------------

    def add_dir(self, path: Path) -> None:
        self._jobs.put((path, True))

    def add_file(self, path: Path) -> None:
        """Queue a complete file: it is read (and hashed) later, on the feeder thread."""
        self._jobs.put((path, False))

    def hashes(self) -> dict[str, str]:
        """Wait until every queued file is read; their SHA-256s by path below root."""
        self._jobs.put(None)  # the feeder stops after the files queued before it
        self._feeder.join()
        self._raise()
        return dict(self.digests)

    def finish(self, last: list[Path]) -> int:
        """Add ``last`` (after :meth:`hashes`), end the archive; return its size in bytes."""
        for p in last:
            self._add(p, False)
        self._emit(b"\0" * (2 * tarfile.BLOCKSIZE))
        pad = -(self._offset + len(self._buf)) % _RECORD
        self._emit(b"\0" * pad)
        self._cut(final=True)
        self._pending.put(None)
        self._writer.join()
        self._pool.shutdown()
        self._raise()
        self._f.close()
        return self.out.stat().st_size

    def abort(self) -> None:
        self._error = self._error or RuntimeError("aborted")
        self._jobs.put(None)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(queue.Full):
            self._pending.put_nowait(None)
        self._f.close()

    # ---- threads -------------------------------------------------------------------------------

    def _feed_loop(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                self._add(*job)
        except BaseException as exc:  # surfaced by hashes()/finish()
            self._error = exc

    def _add(self, path: Path, is_dir: bool) -> None:
        rel = path.relative_to(self.root).as_posix()
        name = self.root.name if rel == "." else f"{self.root.name}/{rel}"
        st = path.stat()
        info = tarfile.TarInfo(name)
        info.mtime = int(st.st_mtime)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if is_dir:
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            self._emit(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            return
        info.mode = 0o644
        info.size = st.st_size
        self._emit(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        h = hashlib.sha256()
        read = 0
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                read += len(chunk)
                self._emit(chunk)
        if read != st.st_size:
            raise OSError(f"{path} changed while being archived")
        self._emit(b"\0" * (-read % tarfile.BLOCKSIZE))
        self.digests[rel] = h.hexdigest()

    def _emit(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= CHUNK:
            self._cut(final=False)

    def _cut(self, *, final: bool) -> None:
        while len(self._buf) >= CHUNK or (final and self._buf):
            piece = bytes(self._buf[:CHUNK])
            del self._buf[:CHUNK]
            self._offset += len(piece)
            fut = self._pool.submit(_gzip_member, piece, self.level)
            while True:  # bounded: at most a few chunks wait for the writer
                self._raise()
                try:
                    self._pending.put(fut, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def _write_loop(self) -> None:
        try:
            while (fut := self._pending.get()) is not None:
                self._f.write(fut.result())
        except BaseException as exc:
            self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


# Each member's header carries its own length in an extra subfield (RFC 1952 §2.3.1.1: FEXTRA,
# subfield "SP", 4 bytes little-endian: the whole member's bytes), as BGZF does with "BC":
# a reader can then find every member without inflating the ones before, and inflate them on
# all cores (``iter_members``). Stock gzip and tar skip extra fields.
_SUBFIELD = b"SP"
_HEAD = struct.Struct("<2sBBIBBH2sHI")  # ID, CM, FLG, MTIME, XFL, OS, XLEN, SI, LEN, member length
_TRAIL = struct.Struct("<II")  # CRC32, ISIZE
_FEXTRA = 4


def _gzip_member(data: bytes, level: int) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    body = c.compress(data) + c.flush()
    size = _HEAD.size + len(body) + _TRAIL.size
    head = _HEAD.pack(b"\x1f\x8b", 8, _FEXTRA, 0, 0, 3, 8, _SUBFIELD, 4, size)
    return head + body + _TRAIL.pack(zlib.crc32(data), len(data) & 0xFFFFFFFF)


def _inflate_member(member: bytes) -> bytes:
    """A member found by its length subfield, inflated and checked (CRC and size) whole."""
    view = memoryview(member)
    d = zlib.decompressobj(-15)
    out = d.decompress(view[_HEAD.size : len(member) - _TRAIL.size])
    crc, isize = _TRAIL.unpack(view[len(member) - _TRAIL.size :])
    if not d.eof or d.unused_data or zlib.crc32(out) != crc or len(out) & 0xFFFFFFFF != isize:
        raise zlib.error("a gzip member does not end where its length says, or its CRC does not match")
    return out


def iter_members(f: IO[bytes], threads: int = 2, ahead: int = 6) -> Iterator[bytes]:
    """The decompressed bytes of a ``.tar.gz``, in order, in pieces (a gzip file is a sequence of
    members, RFC 1952 §2.2).

    Members written by :class:`Archiver` carry their length: they are read whole and inflated
    on ``threads`` threads at once (zlib releases the GIL), ``ahead`` at most in flight. From
    the first member without it (an archive re-packed by another tool) the rest is inflated in
    order, member after member. A truncated or damaged archive raises ``zlib.error`` or
    ``EOFError``.
    """
    pending: collections.deque[Future[bytes]] = collections.deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="evidence-inflate") as pool:
        while True:
            head = f.read(_HEAD.size)
            if not head:
                break
            fields = _HEAD.unpack(head) if len(head) == _HEAD.size else None
            if fields is None or fields[0] != b"\x1f\x8b" or fields[2] != _FEXTRA or fields[7] != _SUBFIELD:
                while pending:
                    yield pending.popleft().result()
                yield from _inflate_in_order(head, f)
                return
            size = fields[9]
            rest = f.read(size - _HEAD.size) if size > _HEAD.size + _TRAIL.size else b""
            if len(rest) != size - _HEAD.size:
                raise EOFError("the archive is truncated (a gzip member is cut)")
            pending.append(pool.submit(_inflate_member, head + rest))
            while len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _inflate_in_order(first: bytes, f: IO[bytes]) -> Iterator[bytes]:
    """Inflate the rest of a gzip stream member after member (from bytes already read)."""
    d = zlib.decompressobj(31)
    data = first
    while True:
        if not data:
            data = f.read(CHUNK)
            if not data:
                break
        out = d.decompress(data)
        if out:
            yield out
        data = b""
        if d.eof:
            data = d.unused_data
            d = zlib.decompressobj(31)
            if not data:
                data = f.read(CHUNK)
                if not data:
                    return  # ended exactly after a member
    if not d.eof:
        raise EOFError("the archive is truncated (the gzip stream ends inside a member)")


class MemberReader(io.RawIOBase):
    """A readable stream over ``iter_members``' pieces (what ``tarfile`` reads in stream mode)."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        super().__init__()
        self._pieces = pieces
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._buf = memoryview(piece)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class HashingWriter(io.BufferedIOBase):
    """A write-only binary sink that only hashes (a regenerated table compared by its SHA-256)."""

    def __init__(self) -> None:
        super().__init__()
        self.h = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.h.update(b)
        return len(b)


def hashing_text() -> tuple[IO[str], Callable[[], str]]:
    """A text stream (UTF-8, no newline translation) and a function giving its SHA-256 once flushed."""
    raw = HashingWriter()
    text = io.TextIOWrapper(cast(Any, raw), encoding="utf-8", newline="")
    return text, lambda: raw.h.hexdigest()
