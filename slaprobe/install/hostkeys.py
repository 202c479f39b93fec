"""Host-key policy: verify against known_hosts, refuse unknown hosts, pin with --accept-new.

Three cases, decided before any credential or file is sent:

* the host has entries in known_hosts: connect with asyncssh verifying the
  key against the file; a different key fails during key exchange, before
  user authentication starts, and is reported as *changed*;
* the host has no entry and --accept-new is not given: refused, with the
  command that would pin it;
* no entry and --accept-new: fetch the key (``asyncssh.get_server_host_key``,
  which authenticates nothing), print its SHA256 fingerprint, append it to
  known_hosts (OpenSSH format, so ``ssh`` agrees), then connect verifying
  against the file like any known host.

Host-key checking is never switched off: every connection is made with a
known_hosts file.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

import asyncssh

from slaprobe.install.errors import ConnectError, HostKeyError
from slaprobe.install.inventory import Target


def known_hosts_pattern(t: Target) -> str:
    return t.host if t.port == 22 else f"[{t.host}]:{t.port}"


def _addr(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return ""


class KnownHosts:
    """One known_hosts file shared by all hosts of a run (appends are serialised)."""

    def __init__(self, path: Path, *, accept_new: bool, say: Callable[[str], None]) -> None:
        self.path = path
        self.accept_new = accept_new
        self.say = say
        self._lock = asyncio.Lock()

    def is_known(self, t: Target) -> bool:
        if not self.path.exists():
            return False
        keys = asyncssh.match_known_hosts(
            str(self.path), t.host, _addr(t.host), t.port if t.port != 22 else None
        )
        host_keys, ca_keys = keys[0], keys[1]
        return bool(host_keys or ca_keys)

    async def ensure(self, t: Target, connect_timeout: float) -> None:
        """Make sure ``t`` is in known_hosts, or raise HostKeyError (unknown without --accept-new)."""
        if self.is_known(t):
            return
        if not self.accept_new:
            raise HostKeyError(
                f"host key of {t.label} is unknown (not in {self.path}); check it with the host's owner and"
                " run again with --accept-new to pin it"
            )
        try:
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(t.host, t.port, config=None), connect_timeout
            )
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise ConnectError(f"cannot reach {t.label} to fetch its host key: {_reason(exc)}") from None
        if key is None:
            raise HostKeyError(f"{t.label} presented no host key")
        line = f"{known_hosts_pattern(t)} {key.export_public_key('openssh').decode().strip()}\n"
        async with self._lock:
            if self.is_known(t):  # pinned meanwhile (the same host listed under another spelling)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        self.say(
            f"{t.label}: new host key {key.get_algorithm()} {key.get_fingerprint('sha256')} pinned in {self.path}"
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        # asyncio's "Connect call failed ('10.0.0.5', 22)" hides the reason behind the errno.
        return os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)
    return str(exc)
