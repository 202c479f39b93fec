"""One SSH session to a host: connect with a verified host key, run commands, upload files.

asyncssh's exceptions are mapped here, at the boundary, to the installer's
own (see the package docstring). Secrets travel only as file contents over
SFTP, never on a remote command line where ``ps`` would show them; files are
written to a temporary name with their final mode from the start and renamed
into place, so a reader never sees a half-written or briefly world-readable
file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import asyncssh

from slaprobe.install.errors import ConnectError, HostKeyError, RemoteError
from slaprobe.install.hostkeys import KnownHosts, _reason
from slaprobe.install.inventory import Target


@dataclass(frozen=True)
class SshOptions:
    known_hosts: KnownHosts
    user: str | None = None
    identity: Path | None = None
    password: str | None = None  # from the environment (SLAPROBE_SSH_PASSWORD), never a flag
    connect_timeout: float = 15.0


@dataclass
class Session:
    target: Target
    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient | None = None
    bytes_uploaded: int = field(default=0)

    @classmethod
    async def open(cls, t: Target, opts: SshOptions) -> Session:
        await opts.known_hosts.ensure(t, opts.connect_timeout)
        user = t.user or opts.user
        kwargs: dict[str, object] = {}
        if opts.identity is not None:
            kwargs["client_keys"] = [str(opts.identity)]
            kwargs["agent_path"] = None  # only the key we were told to use
        if opts.password is not None:
            kwargs["password"] = opts.password
        try:
            conn = await asyncssh.connect(
                t.host,
                t.port,
                username=user,
                known_hosts=str(opts.known_hosts.path),
                connect_timeout=opts.connect_timeout,
                login_timeout=opts.connect_timeout,
                config=None,
                **kwargs,
            )
        except asyncssh.HostKeyNotVerifiable:
            raise HostKeyError(
                f"HOST KEY OF {t.label} HAS CHANGED (it does not match {opts.known_hosts.path}); nothing was"
                " sent. If the host was really reinstalled, remove its old line from known_hosts"
                " (ssh-keygen -R) and run again with --accept-new"
            ) from None
        except asyncssh.PermissionDenied:
            raise ConnectError(
                f"authentication as {user or 'the local user'} on {t.label} failed"
                f" ({'password' if opts.password else 'key'} refused)"
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise ConnectError(f"cannot connect to {t.label}: {_reason(exc)}") from None
        return cls(t, conn)

    @property
    def host_key(self) -> str:
        """The SHA256 fingerprint of the key this host proved it holds (checked against known_hosts)."""
        key = self.conn.get_server_host_key()
        if key is None:  # not with a verified connection; a host without one gets no binding
            return "unknown"
        return str(key.get_fingerprint("sha256"))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.sftp is not None:
            self.sftp.exit()
        self.conn.close()
        await self.conn.wait_closed()

    async def run(self, step: str, command: str, *, input: str | None = None, check: bool = True) -> str:
        """Run a shell command; return stdout. Non-zero exit raises RemoteError (unless ``check=False``)."""
        try:
            r = await self.conn.run(command, input=input, check=False)
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(step, None, _reason(exc)) from None
        if check and r.exit_status != 0:
            raise RemoteError(step, r.exit_status, str(r.stderr or r.stdout or ""))
        return str(r.stdout or "")

    async def _sftp(self) -> asyncssh.SFTPClient:
        if self.sftp is None:
            self.sftp = await self.conn.start_sftp_client()
        return self.sftp

    async def put_bytes(self, path: str, data: bytes, mode: int) -> None:
        """Write ``data`` to ``path`` atomically, created with ``mode`` (never wider)."""
        sftp = await self._sftp()
        tmp = path + ".part"
        try:
            async with sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=mode)) as f:
                await f.write(data)
            await sftp.chmod(tmp, mode)
            await sftp.posix_rename(tmp, path)
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(f"upload {path}", None, _reason(exc)) from None
        self.bytes_uploaded += len(data)

    async def put_file(self, local: Path, path: str, mode: int = 0o644, *, resume_from: int = 0) -> None:
        """Upload ``local`` to ``path`` via ``path.part``; ``resume_from``: that many bytes of the
        ``.part`` an interrupted upload left are kept and only the rest is sent (the caller checks the
        whole file's hash afterwards: a ``.part`` that was no prefix of ``local`` is caught there)."""
        sftp = await self._sftp()
        tmp = path + ".part"
        size = await asyncio.to_thread(os.path.getsize, local)
        try:
            if 0 < resume_from < size:
                await self._send_from(sftp, local, tmp, resume_from)
            else:
                resume_from = 0
                await sftp.put(str(local), tmp)
            await sftp.chmod(tmp, mode)
            if (await sftp.stat(tmp)).size != size:
                raise RemoteError(f"upload {path}", None, "the uploaded file has the wrong size")
            await sftp.posix_rename(tmp, path)
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(f"upload {path}", None, _reason(exc)) from None
        self.bytes_uploaded += size - resume_from

    @staticmethod
    async def _send_from(sftp: asyncssh.SFTPClient, local: Path, tmp: str, start: int) -> None:
        """Write ``local[start:]`` at its offsets into ``tmp``, 16 requests of 64 KiB in flight."""
        window = asyncio.Semaphore(16)
        pending: set[asyncio.Task[None]] = set()
        async with sftp.open(tmp, "r+b") as f:

            async def write(data: bytes, offset: int) -> None:
                try:
                    await f.write(data, offset)
                finally:
                    window.release()

            with local.open("rb") as src:
                src.seek(start)
                offset = start
                while chunk := src.read(1 << 16):
                    await window.acquire()
                    pending.add(asyncio.ensure_future(write(chunk, offset)))
                    offset += len(chunk)
                    done = {t for t in pending if t.done()}
                    for t in done:
                        t.result()  # raise the first failure
                    pending -= done
                await asyncio.gather(*pending)


def q(*parts: str) -> str:
    """Shell-quote and join."""
    return " ".join(shlex.quote(p) for p in parts)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
