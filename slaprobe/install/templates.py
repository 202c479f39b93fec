"""What the installer writes on a host: the agent's config, the systemd unit, the fallback supervisor.

Layout under the prefix (default ``/opt/slaprobe``), so that uninstalling is
removing one directory (plus the unit and the user, when the installer made
them):

===================  ======================================  =====================
path                 what                                    owner, mode
===================  ======================================  =====================
``manifest.json``    what was installed (drives idempotency) root, 0644
``runtime/KEY/``     the agent and its dependencies          root, 0755 (the agent cannot change its own code)
``venv/``            bare venv, a .pth pointing at runtime/  root, 0755
``bundles/``         the bundle archive while it is unpacked root, 0755
``wheels/``          the uploaded wheelhouse (pip fallback)  root, 0755
``etc/agent.yaml``   the agent's configuration               agent user, 0600
``data/``            ``tls/`` (key, certificate), spool      agent user, 0700
``bin/supervise``    fallback supervisor (no systemd)        root, 0755
``log/agent.log``    fallback supervisor's log               root, 0700 dir
``run/*.pid``        fallback supervisor's pid files         root, 0700 dir
===================  ======================================  =====================

The systemd unit (``/etc/systemd/system/slaprobe-agent.service``) runs the
agent as a dedicated user with no privileges: NoNewPrivileges, a read-only
file system except its data directory (ProtectSystem=strict), no
capabilities unless the site has ICMP checks (then CAP_NET_RAW alone). Its
command line holds only paths: the agent's credentials are files. This is
where we do better than a unit that runs as root with an API token on its
command line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

UNIT_NAME = "slaprobe-agent.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"


@dataclass(frozen=True)
class Layout:
    prefix: str

    def __post_init__(self) -> None:
        p = self.prefix.rstrip("/")
        if not p.startswith("/") or p in ("", "/usr", "/etc", "/var", "/opt", "/home", "/root") or ".." in p:
            raise ValueError(f"the prefix must be an absolute directory of its own, not {self.prefix!r}")
        if not re.fullmatch(r"[A-Za-z0-9._+/-]+", p):
            # It goes unquoted into the unit's ExecStart and the launchers' #! lines.
            raise ValueError(f"the prefix may hold only letters, digits and . _ + - /, not {self.prefix!r}")

    def path(self, rel: str) -> str:
        return f"{self.prefix.rstrip('/')}/{rel}"

    @property
    def manifest(self) -> str:
        return self.path("manifest.json")

    @property
    def venv(self) -> str:
        return self.path("venv")

    @property
    def slaprobe(self) -> str:
        return self.path("venv/bin/slaprobe")

    @property
    def wheels(self) -> str:
        return self.path("wheels")

    @property
    def runtime(self) -> str:
        return self.path("runtime")

    @property
    def bundles(self) -> str:
        return self.path("bundles")

    @property
    def config(self) -> str:
        return self.path("etc/agent.yaml")

    @property
    def join(self) -> str:
        return self.path("etc/join.json")

    @property
    def data(self) -> str:
        return self.path("data")

    @property
    def cert(self) -> str:
        return self.path("data/tls/agent.crt")

    @property
    def supervisor(self) -> str:
        return self.path("bin/supervise")

    @property
    def log(self) -> str:
        return self.path("log/agent.log")

    @property
    def supervisor_pid(self) -> str:
        return self.path("run/supervisor.pid")


def agent_config(layout: Layout, collector: str, site: str, name: str) -> str:
    # JSON strings are valid YAML scalars: no quoting surprises for any site name.
    return (
        "# Written by `slaprobe agent install`; changes are replaced on the next install.\n"
        f"collector: {json.dumps(collector)}\n"
        f"site: {json.dumps(site)}\n"
        f"name: {json.dumps(name)}\n"
        f"data_dir: {json.dumps(layout.data)}\n"
    )


def systemd_unit(layout: Layout, user: str, site: str, *, net_raw: bool) -> str:
    caps = "CAP_NET_RAW" if net_raw else ""
    lines = [
        "# Written by `slaprobe agent install`; changes are replaced on the next install.",
        "[Unit]",
        f"Description=slaprobe agent (site {site})",
        "Documentation=https://github.com/slaprobe/slaprobe#deploying-agents",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={user}",
        f"Group={user}",
        # Only paths on the command line: the key and certificate are files in the data directory.
        f"ExecStart={layout.slaprobe} agent run --config {layout.config}",
        "Restart=always",
        "RestartSec=5s",
        "TimeoutStopSec=30s",
        "UMask=0077",
        "NoNewPrivileges=yes",
        f"CapabilityBoundingSet={caps}",
        f"AmbientCapabilities={caps}",
        "ProtectSystem=strict",
        f"ReadWritePaths={layout.data}",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "SystemCallArchitectures=native",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def supervisor_script(layout: Layout, user: str) -> str:
    """A POSIX sh supervisor for hosts without systemd as PID 1 (containers, minimal images).

    Started detached (``setsid``, all descriptors redirected) so the SSH session
    can end. It records its pid, runs the agent (as ``user`` via ``setpriv``
    when started as root), appends its output to the log, and restarts it when
    it exits: after 1 s, doubling up to 60 s while the agent keeps dying within
    10 s of starting, back to 1 s after a good run. SIGTERM stops the agent
    and the supervisor. The log is rotated once (``agent.log.1``) above 10 MiB.
    """
    p = layout
    return f"""#!/bin/sh
# slaprobe fallback supervisor, written by `slaprobe agent install` (used where systemd is not PID 1).
# Start:  setsid {p.supervisor} </dev/null >/dev/null 2>&1 &
# Stop:   kill -TERM "$(cat {p.supervisor_pid})"
umask 077
log={_sq(p.log)}
pidfile={_sq(p.supervisor_pid)}
agentpid={_sq(p.path("run/agent.pid"))}
user={_sq(user)}
echo $$ > "$pidfile"
stop=0
child=
trap 'stop=1; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT HUP
delay=1
while [ "$stop" = 0 ]; do
  if [ -f "$log" ] && [ "$(wc -c < "$log")" -gt 10485760 ]; then mv -f "$log" "$log.1"; fi
  if [ "$(id -u)" = 0 ] && [ "$user" != root ]; then
    set -- setpriv --reuid="$user" --regid="$user" --init-groups --
  else
    set --
  fi
  started=$(date +%s)
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) supervisor: starting agent" >> "$log"
  "$@" {_sq(p.slaprobe)} agent run --config {_sq(p.config)} >> "$log" 2>&1 &
  child=$!
  echo "$child" > "$agentpid"
  while kill -0 "$child" 2>/dev/null; do wait "$child"; done
  wait "$child" 2>/dev/null
  rc=$?
  child=
  [ "$stop" = 0 ] || break
  if [ $(( $(date +%s) - started )) -ge 10 ]; then delay=1; fi
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) supervisor: agent exited ($rc), restarting in ${{delay}}s" >> "$log"
  sleep "$delay" & wait $!
  delay=$(( delay * 2 )); [ "$delay" -le 60 ] || delay=60
done
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) supervisor: stopped" >> "$log"
rm -f "$pidfile" "$agentpid"
"""


def _sq(s: str) -> str:
    import shlex

    return shlex.quote(s)
