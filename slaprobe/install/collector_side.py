"""The collector side of an install: join bundles for new agents, and "has the collector seen it?".

The installer runs on the collector host, like ``slaprobe agent token
create``: it writes one-time join tokens (hashes only) into the collector's
database and takes the CA certificate from its TLS directory. Each token is
bound to the agent's name and expires after ``TOKEN_TTL_S``; it travels to
the host as a 0600 file over SFTP and is deleted there after use.
"""

from __future__ import annotations

import asyncio
import getpass
import time
from dataclasses import dataclass
from pathlib import Path

from agent.identity import JoinBundle
from collector.store import (
    Reader,
    bind_install_host,
    create_token,
    install_host_of,
    open_store,
    unbind_install_host,
)
from slaprobe.install.errors import EnrolError, InstallError
from slaprobe.pki import CollectorPki, new_token

TOKEN_TTL_S = 600


@dataclass(frozen=True)
class CollectorSide:
    db_path: Path
    tls_dir: Path
    collector: str  # host:port agents use for the agent endpoint
    enroll: str  # host:port agents use for enrolment

    def check(self, sites: set[str]) -> None:
        """Fail early, once for the whole run, when the collector is not set up or a site is unknown."""
        if not CollectorPki(self.tls_dir).exists():
            raise InstallError(
                f"no CA in {self.tls_dir}: run `slaprobe collector init --tls-dir {self.tls_dir}` first"
            )
        known = self.sites()
        for s in sorted(sites - known):
            hint = (
                f"; known sites: {', '.join(sorted(known))}" if known else " (start the collector once first)"
            )
            raise InstallError(f"site {s!r} is not in the collector's catalogue{hint}")

    def sites(self) -> set[str]:
        if not self.db_path.exists():
            raise InstallError(
                f"no database at {self.db_path}: start the collector with --db {self.db_path} first"
            )
        r = Reader(self.db_path)
        try:
            return {s["name"] for s in r.sites()}
        finally:
            r.close()

    def needs_net_raw(self, site: str) -> bool:
        """Whether the site's current checks include ICMP (raw sockets need CAP_NET_RAW)."""
        r = Reader(self.db_path)
        try:
            now = time.time_ns()
            return any(v.type == "icmp" for v in r.check_versions(site, now, now + 1))
        finally:
            r.close()

    def check_name_host(self, name: str, host_key: str, host: str, take_over: bool) -> None:
        """Refuse ``name`` for this host when another host (another SSH key) holds it.

        Enrolling the name replaces that agent's key at the collector: the agent on
        the other host would then be refused until it is reinstalled. A host with the
        same key (a reinstall, or a host that changed address) keeps its name.
        """
        db = open_store(self.db_path)
        try:
            held = install_host_of(db, name)
        finally:
            db.conn.close()
        if held is None or held[0] == host_key or take_over:
            return
        other_key, other_host, since_ns = held
        since = time.strftime("%Y-%m-%d", time.gmtime(since_ns / 1e9))
        raise InstallError(
            f"agent name {name!r} belongs to {other_host} (host key {other_key}, installed {since});"
            f" this host's key is {host_key}. Give this host its own name=, uninstall the agent on"
            f" {other_host} first, or pass --take-over-name if that host is gone"
        )

    def bind_name_host(self, name: str, host_key: str, host: str) -> None:
        db = open_store(self.db_path)
        try:
            bind_install_host(db, name, host_key, host, time.time_ns())
        finally:
            db.conn.close()

    def unbind_name_host(self, name: str, host_key: str) -> None:
        if not self.db_path.exists():  # uninstalling from elsewhere: no database to create here
            return
        db = open_store(self.db_path)
        try:
            unbind_install_host(db, name, host_key)
        finally:
            db.conn.close()

    def join_bundle(self, site: str, name: str) -> bytes:
        token = new_token()
        db = open_store(self.db_path)
        try:
            create_token(
                db,
                token,
                site,
                name,
                TOKEN_TTL_S * 1_000_000_000,
                f"{getpass.getuser()} (install)",
                time.time_ns(),
            )
        finally:
            db.conn.close()
        ca = CollectorPki(self.tls_dir).ca_cert_pem()
        return JoinBundle(self.collector, self.enroll, site, token, ca, name).to_json().encode()

    def last_seen_ns(self, name: str) -> int | None:
        r = Reader(self.db_path)
        try:
            for a in r.agents():
                if a["name"] == name:
                    return int(a["last_seen_ns"] or 0)
            return None
        finally:
            r.close()

    async def wait_seen(self, name: str, since_ns: int, timeout_s: float) -> float:
        """Wait until the collector has heard from ``name`` after ``since_ns``; return the wait in seconds."""
        t0 = time.monotonic()
        while True:
            seen = await asyncio.to_thread(self.last_seen_ns, name)
            if seen is not None and seen > since_ns:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise EnrolError(f"the collector has not heard from agent {name!r} within {timeout_s:g}s")
            # A local SQLite read of a few ms: polling 5 times a second ends each host's wait sooner than
            # twice (the agent registers about 1 s after it starts) and costs little even for --parallel hosts.
            await asyncio.sleep(0.2)
