"""Which hosts to act on: ``[user@]host[:port]`` arguments and an inventory file.

Inventory file format: one host per line, ``#`` starts a comment, then
optional ``key=value`` fields that override the command's options for that
host::

    # site paris
    root@10.0.0.5                 name=paris-probe-1
    10.0.0.6:2222                 name=paris-probe-2 site=paris-dc2 prefix=/srv/slaprobe
    [2001:db8::7]:22  user=ops    name=paris-probe-3  sudo=yes

A plain text format, not YAML: an ops user writes it by hand or generates
it with ``awk`` from another tool's export, and a line is one host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from slaprobe.install.errors import InstallError
from slaprobe.install.templates import Layout

KEYS = ("user", "port", "site", "name", "prefix", "sudo")
_BOOLS = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class Target:
    """One host: where to connect and what the agent there is called."""

    host: str
    port: int = 22
    user: str | None = None
    site: str | None = None
    name: str | None = None  # the agent's name; default: the host's own host name
    prefix: str | None = None  # where it goes on this host; default: --prefix
    sudo: bool | None = None  # log in as ``user`` and become root with sudo; default: --sudo

    @property
    def label(self) -> str:
        return self.host if self.port == 22 else f"{self.host}:{self.port}"


def parse_target(text: str) -> Target:
    """``[user@]host[:port]``, IPv6 as ``[addr]:port`` (or a bare address without port)."""
    user = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not user:
            raise InstallError(f"empty user in {text!r}")
    port = 22
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InstallError(f"bad host {text!r}: expected [address]:port")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = _port(p, text)
    else:
        host = text  # a name, an IPv4 address or a bare IPv6 address
    if not host:
        raise InstallError(f"empty host in {text!r}")
    return Target(host, port, user)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InstallError(f"bad port in {whole!r}")
    return int(text)


def load_inventory(path: Path) -> list[Target]:
    """Parse an inventory file; errors name the file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InstallError(f"{path}: {exc.strerror}") from None
    targets = []
    for n, raw in enumerate(lines, 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        try:
            t = parse_target(words[0])
            fields: dict[str, str] = {}
            for w in words[1:]:
                k, sep, v = w.partition("=")
                if not sep or k not in KEYS or not v:
                    raise InstallError(f"expected key=value with key one of {', '.join(KEYS)}, got {w!r}")
                fields[k] = v
            if "port" in fields:
                t = replace(t, port=_port(fields.pop("port"), raw.strip()))
            if "sudo" in fields:
                sudo = _BOOLS.get(fields.pop("sudo").lower())
                if sudo is None:
                    raise InstallError("sudo= takes yes or no")
                t = replace(t, sudo=sudo)
            t = replace(
                t,
                user=fields.get("user", t.user),
                site=fields.get("site"),
                name=fields.get("name"),
                prefix=fields.get("prefix"),
            )
            if t.name is not None:
                check_name(t.name)
            if t.prefix is not None:
                try:
                    Layout(t.prefix)
                except ValueError as exc:
                    raise InstallError(str(exc)) from None
        except InstallError as exc:
            raise InstallError(f"{path}:{n}: {exc}") from None
        targets.append(t)
    return targets


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InstallError(f"bad agent name {name!r}: letters, digits, '.', '_' and '-', at most 63")
    return name


def check_unique(targets: list[Target]) -> None:
    """Two lines for the same host and port, or two agents with the same name, are a mistake."""
    seen: dict[tuple[str, int], Target] = {}
    names: set[str] = set()
    for t in targets:
        if (t.host, t.port) in seen:
            raise InstallError(f"host {t.label} is listed twice")
        seen[(t.host, t.port)] = t
        if t.name is not None:
            if t.name in names:
                raise InstallError(f"agent name {t.name!r} is given to two hosts")
            names.add(t.name)
