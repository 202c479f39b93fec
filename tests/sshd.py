"""A real OpenSSH server for tests, on 127.0.0.1 and a free port, with throwaway keys.

Everything lives in one directory the test owns (``tmp_path``): a fresh
Ed25519 host key, an ``sshd_config``, the pid file, the log, an
``authorized_keys`` file, and a client key pair that is authorized from the
start. The host's own ``/etc/ssh`` is never read (``sshd -f``), nothing
listens beyond loopback, and the server stops when the ``with`` block ends::

    with SshServer(tmp_path) as server:
        server.port                  # where it listens on 127.0.0.1
        server.host_key_fingerprint  # "SHA256:...", as `ssh-keygen -lf` prints it
        server.client_key            # private key the server accepts for server.user
        server.known_hosts           # a known_hosts file naming the host key
        server.ssh_args("true")      # argv for the OpenSSH client, host key verified
        server.authorize(pub_path)   # accept one more public key
        server.log()                 # what sshd said (-e: its log goes to the file)

``options`` adds or overrides ``sshd_config`` keywords (``{"PasswordAuthentication":
"yes"}``); ``client_key`` authorizes an existing key pair instead of making one
(the installer tests and ``bench/install.py`` log in to many servers with one
key); ``new_host_key()`` restarts on the same port with a new host key (a
reinstalled host, or a machine in the middle). The server runs as the test's user (root here: sshd then needs
``/run/sshd``, which it creates if missing). A pytest fixture is a few lines
in the test module, with the scope it needs::

    @pytest.fixture(scope="module")
    def sshd(tmp_path_factory):
        with SshServer(tmp_path_factory.mktemp("sshd")) as server:
            yield server

Requires ``/usr/sbin/sshd`` and ``ssh-keygen`` (Debian: openssh-server,
openssh-client); :func:`sshd_available` says whether they are there, and
:func:`why_not_as_root` why tests that log in as root cannot run.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

__all__ = ["SSHD", "SshServer", "fingerprint", "free_port", "keygen", "sshd_available", "why_not_as_root"]

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and insists on an absolute path
PRIVSEP_DIR = Path("/run/sshd")


def sshd_available() -> bool:
    return os.access(SSHD, os.X_OK) and shutil.which("ssh-keygen") is not None


def why_not_as_root() -> str | None:
    """Why tests that log in as root over loopback (the installer's) cannot run here, or None."""
    if not sshd_available():
        return f"{SSHD} or ssh-keygen is missing (Debian openssh-server; `make system-deps` installs it)"
    if os.geteuid() != 0:
        return "these tests log in as root over loopback and must run as root"
    return None


def keygen(path: Path, comment: str = "slaprobe-test", key_type: str = "ed25519") -> Path:
    """Make an unencrypted key pair at ``path`` (and ``path.pub``); return the private key's path."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def fingerprint(public_key: Path) -> str:
    """The SHA256 fingerprint of a public key file, exactly as ``ssh-keygen -lf`` prints it."""
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out.split()[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SshServer:
    """``sshd -D -e`` on 127.0.0.1 in a directory of its own; see the module docstring."""

    def __init__(
        self, directory: Path, options: dict[str, str] | None = None, client_key: Path | None = None
    ) -> None:
        self.dir = Path(directory).resolve()
        self.options = dict(options or {})
        self.host = "127.0.0.1"
        self.port = 0
        self.user = getpass.getuser()
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.client_key = client_key or self.dir / "client_ed25519"
        self._keep_port = 0
        self.authorized_keys = self.dir / "authorized_keys"
        self.known_hosts = self.dir / "known_hosts"
        self.config = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self.host_key_fingerprint = ""
        self._proc: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> SshServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 15.0) -> SshServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            keygen(self.host_key, "slaprobe-test-host")
        if not self.client_key.exists():
            keygen(self.client_key, "slaprobe-test-client")
        if not self.authorized_keys.exists():
            self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        self.host_key_fingerprint = fingerprint(self.host_key.with_suffix(".pub"))
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        last_log = ""
        for _ in range(3):  # the free port can be taken between choosing and binding it
            self.port = self._keep_port or free_port()
            self._keep_port = 0
            self._write_config()
            self.log_path.write_bytes(b"")
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(self.config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            if self._wait_listening(timeout):
                host_pub = self.host_key.with_suffix(".pub").read_text().split()
                self.known_hosts.write_text(f"[{self.host}]:{self.port} {host_pub[0]} {host_pub[1]}\n")
                return self
            last_log = self.log()
            self.stop()
            if "Address already in use" not in last_log:
                break
        raise RuntimeError(f"sshd did not start:\n{last_log}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def new_host_key(self) -> None:
        """Restart on the same port with a new host key (a reinstalled host, or a machine in the middle)."""
        self.stop()
        self.host_key.unlink()
        self.host_key.with_suffix(".pub").unlink()
        keygen(self.host_key, "slaprobe-test-host-2")
        self._keep_port = self.port
        self.start()

    def _wait_listening(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            if f"Server listening on {self.host} port {self.port}" in self.log():
                return True
            time.sleep(0.02)
        return False

    def _write_config(self) -> None:
        settings = {
            "Port": str(self.port),
            "ListenAddress": self.host,
            "HostKey": str(self.host_key),
            "PidFile": str(self.dir / "sshd.pid"),
            "AuthorizedKeysFile": str(self.authorized_keys),
            "UsePAM": "no",
            "StrictModes": "no",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "PubkeyAuthentication": "yes",
            "PermitRootLogin": "prohibit-password",
            "PrintMotd": "no",
            "UseDNS": "no",
            "LogLevel": "VERBOSE",
            # Many quick connections in a row are what probe tests make: do not start dropping them.
            "MaxStartups": "100:30:200",
            "Subsystem": "sftp internal-sftp",
        }
        settings.update(self.options)
        self.config.write_text("".join(f"{key} {value}\n" for key, value in settings.items()))

    # ---------------------------------------------------------------- helpers

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def known_hosts_line(self) -> str:
        """This server's line for a known_hosts file (also written to ``self.known_hosts``)."""
        return self.known_hosts.read_text()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def authorize(self, public_key: Path) -> None:
        """Accept one more public key (sshd reads authorized_keys at each login)."""
        with self.authorized_keys.open("a") as f:
            f.write(public_key.read_text().strip() + "\n")

    def ssh_args(self, *command: str, key: Path | None = None) -> list[str]:
        """argv for OpenSSH's client to run ``command`` here, verifying the host key strictly."""
        return [
            "ssh",
            "-F",
            "none",
            "-p",
            str(self.port),
            "-i",
            str(key or self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            f"{self.user}@{self.host}",
            *command,
        ]
