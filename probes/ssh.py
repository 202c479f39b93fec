"""SSH probe: the server's banner, its host key, and optionally a login. Phases ``resolve, connect, handshake, auth``.

``handshake`` runs from the open connection to the end of the key exchange
(the server's version banner, algorithm negotiation and the server's proof
that it holds its host key); ``auth`` is the login, when one is configured.

Host keys. The probe measures availability, not trust: without
``host_key_fingerprint`` any host key is accepted, and it is reported in the
fields either way (``host_key_type``, ``host_key_fingerprint``), so an
operator can copy it into the check. With ``host_key_fingerprint`` the key
must match one of the given SHA256 fingerprints; a mismatch is an
``assertion`` failure (the server answered, but not with the key the check
expects: a reinstalled host, or someone in the middle) rather than ``tls``,
which stays TLS's. Keys are asked for in OpenSSH's order (Ed25519, ECDSA,
RSA), so the key a server presents is the one ``ssh`` itself would show;
host certificates are not requested. Acceptance goes through asyncssh's
documented mechanisms, never by switching host key checks off:

- without a login, :func:`asyncssh.get_server_host_key` runs the key
  exchange and disconnects before authentication, so no login attempt
  reaches the server's log (nothing for fail2ban to count); the probe
  compares the fingerprint itself;
- with a login, nothing is trusted in advance (``known_hosts`` is an empty
  list of keys) and :meth:`_ProbeClient.validate_host_public_key` decides
  during the key exchange, so credentials are never sent to a server whose
  key does not match.

Login. ``username`` with ``private_key_file`` (an unencrypted key) or
``password_file`` (the password alone on the first line): paths on the agent
host, never a secret in the catalogue. Success means authentication
succeeded; the probe then disconnects without opening a session. A login
the server refuses is ``status`` (the server answered and said no, as an
HTTP 401 would). A key or password file the agent cannot read is
``internal``: scored as unknown, since it says nothing about the target.
The user's ``~/.ssh`` (config, keys, known hosts) and any ssh-agent are
never consulted.

Errors: ``refused``/``unreachable``/``dns`` as for TCP; a peer that does not
speak SSH (no ``SSH-`` banner, an unsupported version, failed negotiation)
is ``protocol``; a peer that closes mid-handshake is ``reset``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from dataclasses import dataclass

import asyncssh

from slaprobe import __version__
from slaprobe.configfile import Fields, Node

from ._net import HostPort, IpVersion, connect, parse_host_port, read_ip_version, resolve
from .base import ErrorKind, PhaseTrace, ProbeFailure, Prober, ProbeResult

DEFAULT_PORT = 22
CLIENT_VERSION = f"slaprobe_{__version__}"

# OpenSSH's own preference among plain host keys, so that the key (and fingerprint) a
# server presents to the probe is the one `ssh` shows; ssh-rsa (SHA-1) last, for old servers.
HOST_KEY_ALGORITHMS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
)

_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")

# Before its version line a server may send other lines (RFC 4253, 4.2); a peer that sends
# more than this without one is not an SSH server.
_MAX_PRE_BANNER_LINES = 32
_MAX_PRE_BANNER_BYTES = 8192
_MAX_LINE = 255  # RFC 4253: the version line, CR LF included
# Lines before the banner are text; control characters mean a binary protocol (MySQL, say).
_BINARY = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class Login:
    username: str
    private_key_file: str | None = None
    password_file: str | None = None

    @property
    def method(self) -> str:
        return "publickey" if self.private_key_file else "password"


def _read_fingerprints(settings: Fields) -> tuple[str, ...]:
    node = settings.raw("host_key_fingerprint")
    if node is None or node.value is None:
        return ()
    items = node.value if isinstance(node.value, list) else [node]
    if not items:
        node.fail("expected a SHA256 fingerprint or a list of them, got an empty list")
    out = []
    for item in items:
        text = item.value
        if not isinstance(text, str):
            item.fail("expected a SHA256 fingerprint such as `ssh-keygen -lf` prints (SHA256:...)")
        text = text.strip().rstrip("=")
        if text.upper().startswith("MD5:"):
            item.fail("MD5 fingerprints are not accepted; use the SHA256 one that `ssh-keygen -lf` prints")
        if not _FINGERPRINT.fullmatch(text):
            item.fail(
                f"expected a SHA256 fingerprint such as `ssh-keygen -lf` prints "
                f"(SHA256: and 43 base64 characters), got {item.value!r}"
            )
        out.append(text)
    return tuple(out)


def _read_path(settings: Fields, key: str) -> str | None:
    path: str | None = settings.str(key, None)
    if path is not None and not os.path.isabs(path):
        node = settings.raw(key)
        assert node is not None
        node.fail(f"must be an absolute path on the agent host, got {path!r}")
    return path


def _read_login(settings: Fields) -> Login | None:
    if "password" in settings:
        node = settings.raw("password")
        assert node is not None
        node.fail(
            "a password does not belong in the catalogue: put it in a file on the agent host and set password_file"
        )
    username: str | None = settings.str("username", None)
    key_file = _read_path(settings, "private_key_file")
    password_file = _read_path(settings, "password_file")
    if username is not None and any(c.isspace() or ord(c) < 0x20 for c in username):
        node = settings.raw("username")
        assert node is not None
        node.fail(f"invalid user name {username!r}")
    if key_file is not None and password_file is not None:
        node = settings.raw("password_file")
        assert node is not None
        node.fail("set private_key_file or password_file, not both")
    if username is None:
        for key in ("private_key_file", "password_file"):
            node = settings.raw(key)
            if node is not None and node.value is not None:
                node.fail("a login check needs username too")
        return None
    if key_file is None and password_file is None:
        node = settings.raw("username")
        assert node is not None
        node.fail("a login check needs private_key_file or password_file")
    return Login(username, key_file, password_file)


def _clean(text: str, limit: int = _MAX_LINE) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


class _ProbeClient(asyncssh.SSHClient):
    """Host key decisions during the key exchange, and the start of the auth phase."""

    def __init__(self, expected: tuple[str, ...], trace: PhaseTrace) -> None:
        self.expected = expected
        self.trace = trace
        self.mismatch: str | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        fingerprint = _record_key(key, self.trace)
        if not self.expected:
            return True  # availability, not trust: any key (the module docstring says why)
        if fingerprint in self.expected:
            return True
        self.mismatch = fingerprint
        return False

    def begin_auth(self, username: str) -> None:
        self.trace.enter("auth")


def _record_key(key: asyncssh.SSHKey, trace: PhaseTrace) -> str:
    fingerprint = key.get_fingerprint("sha256")
    trace.fields["host_key_type"] = key.get_algorithm()
    trace.fields["host_key_fingerprint"] = fingerprint
    return fingerprint


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _read_banner(sock: socket.socket, trace: PhaseTrace) -> None:
    """Wait for the server's version line and leave it unread for asyncssh.

    Lines before it are read and dropped here (asyncssh would drop them too),
    so a peer that is not an SSH server is told apart from one that closed.
    """
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    dropped: list[bytes] = []
    line = b""  # the part of a non-SSH line read so far
    total = 0
    while True:
        await _readable(loop, fd)
        try:
            data = sock.recv(_MAX_LINE + 1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError as exc:
            raise ProbeFailure(
                ErrorKind.RESET, f"connection reset before the SSH banner: {exc.strerror}"
            ) from exc
        if not data:
            if dropped or line:
                raise ProbeFailure(
                    ErrorKind.PROTOCOL,
                    f"not an SSH server: it sent {_show(dropped[0] if dropped else line)} and closed",
                )
            raise ProbeFailure(ErrorKind.RESET, "connection closed before the SSH banner")
        if not line and (data.startswith(b"SSH-") or b"SSH-".startswith(data)):
            end = data.find(b"\n")
            if end >= 0:
                trace.fields["banner"] = _clean(data[:end].rstrip(b"\r").decode("latin-1"))
            return  # asyncssh reads the version line (and the rest) from here
        end = data.find(b"\n")
        chunk = data[: end + 1] if end >= 0 else data
        sock.recv(len(chunk))  # already buffered: consume exactly what was peeked
        line += chunk
        total += len(chunk)
        if end >= 0:
            dropped.append(line)
            line = b""
        if (
            _BINARY.search(chunk)
            or len(dropped) > _MAX_PRE_BANNER_LINES
            or total > _MAX_PRE_BANNER_BYTES
            or len(line) > _MAX_LINE
        ):
            shown = _show(dropped[0] if dropped else line)
            raise ProbeFailure(ErrorKind.PROTOCOL, f"not an SSH server: no SSH banner, it sent {shown}")


def _show(raw: bytes) -> str:
    """A line a peer sent, quoted for a detail message (control characters escaped)."""
    return repr(raw.rstrip(b"\r\n")[:60].decode("latin-1"))


class SshProber(Prober):
    type_name = "ssh"

    def __init__(
        self,
        endpoint: HostPort,
        ip_version: IpVersion = "any",
        fingerprints: tuple[str, ...] = (),
        login: Login | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.ip_version = ip_version
        self.fingerprints = fingerprints
        self.login = login

    @classmethod
    def from_config(cls, target: Node, settings: Fields) -> SshProber:
        return cls(
            parse_host_port(target, DEFAULT_PORT),
            read_ip_version(settings),
            _read_fingerprints(settings),
            _read_login(settings),
        )

    async def probe(self, trace: PhaseTrace) -> ProbeResult:
        credentials = await self._load_credentials() if self.login else None
        family, sockaddr = await resolve(self.endpoint, self.ip_version, trace)
        sock = await connect(family, sockaddr, trace)
        try:
            trace.enter("handshake")
            await _read_banner(sock, trace)
            if self.login is None:
                detail = await self._handshake_only(sock, trace)
            else:
                assert credentials is not None
                detail = await self._log_in(sock, self.login, credentials, trace)
        finally:
            if sock.fileno() != -1:  # asyncssh closes it once it has taken it over
                sock.close()
        return ProbeResult(True, trace.close(), None, detail, trace.fields)

    async def _load_credentials(self) -> asyncssh.SSHKey | str:
        login = self.login
        assert login is not None
        if login.private_key_file:
            path = login.private_key_file
            try:
                return await asyncio.to_thread(asyncssh.read_private_key, path)
            except asyncssh.KeyImportError as exc:  # not a key, or an encrypted one
                raise ProbeFailure(ErrorKind.INTERNAL, f"cannot use private_key_file {path}: {exc}") from exc
            except OSError as exc:
                raise ProbeFailure(
                    ErrorKind.INTERNAL, f"cannot read private_key_file {path}: {exc.strerror}"
                ) from exc
        assert login.password_file
        path = login.password_file
        try:
            text = await asyncio.to_thread(_read_text, path)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ProbeFailure(ErrorKind.INTERNAL, f"cannot read password_file {path}: {reason}") from exc
        password = text.split("\n", 1)[0].removesuffix("\r")
        if not password:
            raise ProbeFailure(ErrorKind.INTERNAL, f"password_file {path} is empty")
        return password

    def _check_fingerprint(self, fingerprint: str, trace: PhaseTrace) -> None:
        if self.fingerprints and fingerprint not in self.fingerprints:
            expected = " or ".join(self.fingerprints)
            raise ProbeFailure(
                ErrorKind.ASSERTION,
                f"host key {fingerprint} ({trace.fields.get('host_key_type')}) "
                f"does not match host_key_fingerprint {expected}",
            )

    async def _handshake_only(self, sock: socket.socket, trace: PhaseTrace) -> str:
        try:
            key = await asyncssh.get_server_host_key(
                sock=sock,
                config=None,
                client_version=CLIENT_VERSION,
                server_host_key_algs=list(HOST_KEY_ALGORITHMS),
            )
        except (asyncssh.Error, OSError) as exc:
            raise _map_error(exc, trace) from exc
        if key is None:  # only with GSS key exchange, which the probe does not offer
            raise ProbeFailure(ErrorKind.PROTOCOL, "the server presented no host key")
        fingerprint = _record_key(key, trace)
        self._check_fingerprint(fingerprint, trace)
        return f"{trace.fields.get('banner', 'SSH server')}, host key {fingerprint}"

    async def _log_in(
        self, sock: socket.socket, login: Login, credentials: asyncssh.SSHKey | str, trace: PhaseTrace
    ) -> str:
        client = _ProbeClient(self.fingerprints, trace)
        key = credentials if isinstance(credentials, asyncssh.SSHKey) else None
        password = credentials if isinstance(credentials, str) else None
        try:
            conn = await asyncssh.connect(
                sock=sock,
                client_factory=lambda: client,
                # Nothing is trusted in advance: the client's validate_host_public_key decides.
                known_hosts=([], [], []),
                x509_trusted_certs=None,
                server_host_key_algs=list(HOST_KEY_ALGORITHMS),
                config=None,
                client_version=CLIENT_VERSION,
                username=login.username,
                client_keys=[key] if key else None,
                password=password,
                preferred_auth=["publickey"] if key else ["keyboard-interactive", "password"],
                kbdint_auth=password is not None,
                agent_path=None,
                gss_host=None,
                host_based_auth=False,
            )
        except (asyncssh.Error, OSError) as exc:
            if isinstance(exc, asyncssh.HostKeyNotVerifiable) and client.mismatch:
                self._check_fingerprint(client.mismatch, trace)
            raise _map_error(exc, trace) from exc
        if "banner" not in trace.fields:
            trace.fields["banner"] = _clean(str(conn.get_extra_info("server_version") or ""))
        conn.close()
        with contextlib.suppress(asyncssh.Error, OSError):
            await conn.wait_closed()
        return f"logged in as {login.username} ({login.method})"


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _map_error(exc: Exception, trace: PhaseTrace) -> ProbeFailure:
    """asyncssh's errors → the probe vocabulary (the phase on the trace says where)."""
    if isinstance(exc, asyncssh.PermissionDenied):
        return ProbeFailure(ErrorKind.STATUS, f"login refused: {exc.reason}")
    if isinstance(exc, asyncssh.ConnectionLost):
        return ProbeFailure(
            ErrorKind.RESET, f"connection closed during the SSH {trace.current or 'handshake'}"
        )
    if isinstance(
        exc,
        asyncssh.ProtocolError
        | asyncssh.ProtocolNotSupported
        | asyncssh.KeyExchangeFailed
        | asyncssh.HostKeyNotVerifiable
        | asyncssh.MACError
        | asyncssh.CompressionError
        | asyncssh.ServiceNotAvailable,
    ):
        return ProbeFailure(ErrorKind.PROTOCOL, f"SSH {trace.current or 'handshake'} failed: {exc.reason}")
    if isinstance(exc, asyncssh.DisconnectError):
        return ProbeFailure(ErrorKind.RESET, f"the server disconnected: {exc.reason}")
    if isinstance(exc, OSError):
        return ProbeFailure(
            ErrorKind.RESET,
            f"connection closed during the SSH {trace.current or 'handshake'} ({exc.strerror or exc})",
        )
    return ProbeFailure(ErrorKind.PROTOCOL, f"SSH {trace.current or 'handshake'} failed: {exc}")
