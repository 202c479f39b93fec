"""Real OpenSSH servers on loopback for the installer tests and benchmark.

Each ``Sshd`` is ``/usr/sbin/sshd -D -e -f CONFIG`` with a throwaway ed25519
host key and one authorized test key, listening on a free loopback port,
logging to a file in the test's directory. Tests run as root and log in as
root: sshd refuses other users' logins without their real home directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def available() -> str | None:
    """Why these tests cannot run here, or None."""
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (Debian package openssh-server; `make system-deps` installs it)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing (openssh-client)"
    if os.geteuid() != 0:
        return "sshd tests log in as root over loopback and must run as root"
    return None


def keygen(path: Path, comment: str = "slaprobe-test") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sshd:
    dir: Path
    client_key: Path
    port: int = 0
    password_auth: bool = False
    proc: subprocess.Popen[bytes] | None = None
    host_key: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host_key = self.dir / "ssh_host_ed25519_key"
        if not self.host_key.exists():
            keygen(self.host_key, "test-host")
        auth = self.dir / "authorized_keys"
        auth.write_text(Path(str(self.client_key) + ".pub").read_text())
        auth.chmod(0o600)

    @property
    def log_path(self) -> Path:
        return self.dir / "sshd.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> Sshd:
        self.port = self.port or free_port()
        cfg = self.dir / "sshd_config"
        cfg.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.dir}/authorized_keys\nPidFile {self.dir}/sshd.pid\n"
            "StrictModes no\nUsePAM no\nPermitRootLogin yes\nPubkeyAuthentication yes\n"
            f"PasswordAuthentication {'yes' if self.password_auth else 'no'}\n"
            "KbdInteractiveAuthentication no\nMaxStartups 100\nMaxSessions 50\nLogLevel VERBOSE\n"
            "Subsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as fh:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(cfg)], stdout=fh, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            except OSError:
                time.sleep(0.05)
                continue
            # Let sshd log the probe's connection, so tests can tell their own connections apart.
            while time.monotonic() < deadline and "Connection closed" not in self.log()[-300:]:
                time.sleep(0.02)
            return self
        raise AssertionError(f"sshd did not listen on {self.port}:\n{self.log()}")

    def new_host_key(self) -> None:
        """Replace the host key (a reinstalled host, or a machine in the middle); restart."""
        self.stop()
        self.host_key.unlink()
        Path(str(self.host_key) + ".pub").unlink()
        keygen(self.host_key, "test-host-2")
        self.start()

    def known_hosts_line(self) -> str:
        return (
            f"[127.0.0.1]:{self.port} "
            + " ".join(Path(str(self.host_key) + ".pub").read_text().split()[:2])
            + "\n"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
