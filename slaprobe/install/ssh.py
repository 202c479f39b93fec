"""One SSH session to a host: connect with a verified host key, run commands, upload files.

asyncssh's exceptions are mapped here, at the boundary, to the installer's
own (see the package docstring). Secrets travel only as file contents over
SFTP, never on a remote command line where ``ps`` would show them; files are
written to a temporary name with their final mode from the start and renamed
into place, so a reader never sees a half-written or briefly world-readable
file.

With ``sudo`` the login user becomes root for every step (``sudo -n``: never
a password prompt; the host must allow the login user passwordless sudo):
commands run as ``sudo -n -- sh -c '...'``, and uploads land first in a
directory of the login user's own (``mktemp -d``, mode 0700) and are then
installed into place by root with their final mode. Hosts that refuse root
logins (most cloud images) are installed this way.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    sudo: bool = False  # become root with ``sudo -n`` after logging in (a host's sudo= overrides it)


@dataclass
class Session:
    target: Target
    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient | None = None
    bytes_uploaded: int = field(default=0)
    sudo: bool = False
    _stage: str | None = None  # with sudo: the login user's directory that uploads land in first

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
        session = cls(t, conn, sudo=opts.sudo if t.sudo is None else t.sudo)
        if session.sudo:
            try:
                await session._check_sudo(user)
            except BaseException:
                conn.close()
                raise
        return session

    async def _check_sudo(self, user: str | None) -> None:
        """Fail this host now, clearly, if its sudo will not let the login user become root unasked."""
        try:
            r = await self.conn.run("sudo -n -- sh -c 'id -u'", check=False)
        except (OSError, asyncssh.Error) as exc:
            raise ConnectError(f"cannot run sudo on {self.target.label}: {_reason(exc)}") from None
        if r.exit_status != 0 or str(r.stdout or "").strip() != "0":
            why = str(r.stderr or r.stdout or "").strip().splitlines()
            raise ConnectError(
                f"sudo on {self.target.label} does not make {user or 'the login user'} root without a"
                f" password ({why[-1] if why else f'exit status {r.exit_status}'}): allow it passwordless"
                " sudo (NOPASSWD), or log in as root without --sudo"
            )

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
        if self._stage is not None:
            # As the login user, who made it: a staged secret must not stay behind.
            with contextlib.suppress(OSError, asyncssh.Error):
                await self.conn.run(f"rm -rf {q(self._stage)}", check=False)
        self.conn.close()
        await self.conn.wait_closed()

    async def run(self, step: str, command: str, *, input: str | None = None, check: bool = True) -> str:
        """Run a shell command (as root with sudo); return stdout. Non-zero exit raises RemoteError
        (unless ``check=False``)."""
        if self.sudo:
            command = "sudo -n -- sh -c " + shlex.quote(command)
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
        tmp = path + ".part" if not self.sudo else await self._staged(path)
        try:
            async with sftp.open(tmp, "wb", asyncssh.SFTPAttrs(permissions=mode)) as f:
                await f.write(data)
            await sftp.chmod(tmp, mode)
            if not self.sudo:
                await sftp.posix_rename(tmp, path)
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(f"upload {path}", None, _reason(exc)) from None
        if self.sudo:
            await self._install(tmp, path, mode)
        self.bytes_uploaded += len(data)

    async def put_file(self, local: Path, path: str, mode: int = 0o644, *, resume_from: int = 0) -> None:
        """Upload ``local`` to ``path`` via ``path.part``; ``resume_from``: that many bytes of the
        ``.part`` an interrupted upload left are kept and only the rest is sent (the caller checks the
        whole file's hash afterwards: a ``.part`` that was no prefix of ``local`` is caught there).
        With sudo the file is sent whole to the login user's staging directory, then put in place."""
        sftp = await self._sftp()
        tmp = path + ".part"
        if self.sudo:
            tmp, resume_from = await self._staged(path), 0
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
            if not self.sudo:
                await sftp.posix_rename(tmp, path)
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(f"upload {path}", None, _reason(exc)) from None
        if self.sudo:
            await self._install(tmp, path, mode)
        self.bytes_uploaded += size - resume_from

    async def _staged(self, path: str) -> str:
        """Where ``path`` is uploaded first with sudo: in a 0700 directory of the login user's."""
        if self._stage is None:
            try:
                r = await self.conn.run("mktemp -d /tmp/slaprobe-install.XXXXXXXX", check=False)
            except (OSError, asyncssh.Error) as exc:
                raise RemoteError("staging directory", None, _reason(exc)) from None
            stage = str(r.stdout or "").strip()
            if r.exit_status != 0 or not stage.startswith("/tmp/slaprobe-install."):
                raise RemoteError("staging directory", r.exit_status, str(r.stderr or r.stdout or ""))
            self._stage = stage
        return f"{self._stage}/{path.rsplit('/', 1)[-1]}"

    async def _install(self, staged: str, path: str, mode: int) -> None:
        """As root: ``staged`` becomes ``path`` (root's, ``mode`` from the start, renamed into place)."""
        part = path + ".part"
        await self.run(
            f"upload {path}",
            f"install -m {mode:o} -T {q(staged)} {q(part)} && mv -f {q(part)} {q(path)} && rm -f {q(staged)}",
        )

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
