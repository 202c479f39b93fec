"""The SSH probe against a real OpenSSH sshd on loopback (tests/sshd.py) and against peers that are not SSH servers."""

from __future__ import annotations

import asyncio
import gc
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from probes import ErrorKind, PhaseTrace
from probes._net import HostPort
from probes.ssh import CLIENT_VERSION, Login, SshProber
from tests.probe_harness import ProbeHarness, phase_names
from tests.probe_servers import RawTcpServer, close_at_once, closed_port, reset_at_once, silent
from tests.sshd import SshServer, keygen, sshd_available

SOURCE = "catalogue.yaml"
CHECK = "sites.lab.checks.bastion"
SETTINGS = f"{CHECK}.settings"
HANDSHAKE = ["resolve", "connect", "handshake"]
LOGIN = ["resolve", "connect", "handshake", "auth"]
OTHER_FINGERPRINT = "SHA256:" + "A" * 43

needs_sshd = pytest.mark.skipif(not sshd_available(), reason="needs /usr/sbin/sshd and ssh-keygen")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    if not sshd_available():
        pytest.skip("needs /usr/sbin/sshd and ssh-keygen")
    with SshServer(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="module")
def stranger_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key the server has never heard of."""
    if not sshd_available():
        pytest.skip("needs ssh-keygen")
    return keygen(tmp_path_factory.mktemp("keys") / "stranger", "stranger")


_harness = ProbeHarness("ssh", CHECK, SOURCE, guard_s=20)
make_prober = _harness.make_prober
probe = _harness.probe
config_error = _harness.config_error
names = phase_names


def log_after(server: SshServer, mark: int, until: str = "", timeout: float = 5.0) -> str:
    """What sshd logged since ``mark`` (a length of its log), waiting for ``until`` to appear."""
    deadline = time.monotonic() + timeout
    while True:
        text = server.log()[mark:]
        if until in text or time.monotonic() > deadline:
            return text
        time.sleep(0.02)


# --------------------------------------------------------------------------- a real sshd


@needs_sshd
async def test_banner_and_host_key_without_a_login(sshd: SshServer) -> None:
    mark = len(sshd.log())
    result = await probe(sshd.address)
    assert result.success, result
    assert result.error_kind is None
    assert names(result) == HANDSHAKE
    banner = result.fields["banner"]
    assert isinstance(banner, str) and banner.startswith("SSH-2.0-OpenSSH_")
    assert result.fields == {
        "ip": "127.0.0.1",
        "banner": banner,
        "host_key_type": "ssh-ed25519",
        "host_key_fingerprint": sshd.host_key_fingerprint,
    }
    assert result.detail == f"{banner}, host key {sshd.host_key_fingerprint}"
    # No authentication was attempted: nothing in the server's log for fail2ban to count.
    log = log_after(sshd, mark, "[preauth]")
    assert "Connection from 127.0.0.1 port" in log
    assert "[preauth]" in log
    for attempt in ("Failed", "Invalid user", "authenticating user", "Postponed", "Accepted"):
        assert attempt not in log, log


async def test_the_probe_introduces_itself() -> None:
    heard: list[bytes] = []

    def record_client_version(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"SSH-2.0-Recorder_1.0\r\n")
        conn.settimeout(5)
        heard.append(conn.recv(256))

    with RawTcpServer(record_client_version) as srv:
        await probe(srv.address)
    assert heard and heard[0].startswith(f"SSH-2.0-{CLIENT_VERSION}\r\n".encode())


@needs_sshd
async def test_a_matching_fingerprint_succeeds_alone_or_in_a_list(sshd: SshServer) -> None:
    alone = await probe(sshd.address, {"host_key_fingerprint": sshd.host_key_fingerprint})
    assert alone.success, alone
    listed = await probe(
        sshd.address, {"host_key_fingerprint": [OTHER_FINGERPRINT, sshd.host_key_fingerprint]}
    )
    assert listed.success, listed


@needs_sshd
async def test_a_different_fingerprint_is_an_assertion_failure(sshd: SshServer) -> None:
    result = await probe(sshd.address, {"host_key_fingerprint": OTHER_FINGERPRINT})
    assert not result.success
    assert result.error_kind == ErrorKind.ASSERTION
    assert result.detail == (
        f"host key {sshd.host_key_fingerprint} (ssh-ed25519) does not match host_key_fingerprint {OTHER_FINGERPRINT}"
    )
    assert names(result) == HANDSHAKE
    assert result.fields["host_key_fingerprint"] == sshd.host_key_fingerprint


@needs_sshd
async def test_login_with_an_authorized_key(sshd: SshServer) -> None:
    mark = len(sshd.log())
    settings = {"username": sshd.user, "private_key_file": str(sshd.client_key)}
    result = await probe(sshd.address, settings)
    assert result.success, result
    assert names(result) == LOGIN
    assert result.detail == f"logged in as {sshd.user} (publickey)"
    assert str(result.fields["banner"]).startswith("SSH-2.0-OpenSSH_")
    assert result.fields["host_key_fingerprint"] == sshd.host_key_fingerprint
    assert all(duration >= 0 for _, duration in result.phases)
    assert f"Accepted publickey for {sshd.user} from 127.0.0.1" in log_after(sshd, mark, "Accepted publickey")
    # With the right fingerprint as well.
    pinned = await probe(sshd.address, {**settings, "host_key_fingerprint": sshd.host_key_fingerprint})
    assert pinned.success, pinned


@needs_sshd
async def test_login_with_an_unauthorized_key_is_refused_with_status(
    sshd: SshServer, stranger_key: Path
) -> None:
    result = await probe(sshd.address, {"username": sshd.user, "private_key_file": str(stranger_key)})
    assert not result.success
    assert result.error_kind == ErrorKind.STATUS
    assert result.detail.startswith(f"login refused: Permission denied for user {sshd.user}")
    assert names(result) == LOGIN
    assert result.fields["host_key_fingerprint"] == sshd.host_key_fingerprint


@needs_sshd
async def test_a_fingerprint_mismatch_stops_before_any_credential_is_sent(sshd: SshServer) -> None:
    mark = len(sshd.log())
    settings = {
        "username": sshd.user,
        "private_key_file": str(sshd.client_key),
        "host_key_fingerprint": OTHER_FINGERPRINT,
    }
    result = await probe(sshd.address, settings)
    assert result.error_kind == ErrorKind.ASSERTION
    assert result.detail.startswith(f"host key {sshd.host_key_fingerprint} (ssh-ed25519) does not match")
    assert names(result) == HANDSHAKE  # never got to auth
    log = log_after(sshd, mark, "preauth")
    assert "publickey" not in log and "Accepted" not in log, log


@needs_sshd
async def test_a_password_login_the_server_does_not_offer_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("not-the-password\n")
    result = await probe(sshd.address, {"username": sshd.user, "password_file": str(password_file)})
    assert result.error_kind == ErrorKind.STATUS
    assert result.detail.startswith("login refused: ")
    assert names(result) == LOGIN


@needs_sshd
async def test_unreadable_credentials_are_internal_not_down(sshd: SshServer, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = await probe(sshd.address, {"username": "u", "private_key_file": str(missing)})
    assert result.error_kind == ErrorKind.INTERNAL
    assert result.detail == f"cannot read private_key_file {missing}: No such file or directory"
    assert names(result) == []  # checked before any connection

    not_a_key = tmp_path / "not-a-key"
    not_a_key.write_text("hello\n")
    result = await probe(sshd.address, {"username": "u", "private_key_file": str(not_a_key)})
    assert result.error_kind == ErrorKind.INTERNAL
    assert result.detail == f"cannot use private_key_file {not_a_key}: Invalid private key"

    encrypted = tmp_path / "encrypted"
    await asyncio.to_thread(
        subprocess.run,
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(encrypted)],
        check=True,
    )
    result = await probe(sshd.address, {"username": "u", "private_key_file": str(encrypted)})
    assert result.error_kind == ErrorKind.INTERNAL
    assert result.detail == (
        f"cannot use private_key_file {encrypted}: "
        "Passphrase must be specified to import encrypted private keys"
    )

    empty = tmp_path / "empty-password"
    empty.write_text("\n")
    result = await probe(sshd.address, {"username": "u", "password_file": str(empty)})
    assert result.error_kind == ErrorKind.INTERNAL
    assert result.detail == f"password_file {empty} is empty"


@needs_sshd
async def test_lines_before_the_banner_are_allowed(sshd: SshServer) -> None:
    # RFC 4253 4.2: a server may send other lines first. A relay adds two in front of sshd.
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Welcome to the test relay\r\nAuthorized use only\r\n")
        up_reader, up_writer = await asyncio.open_connection(sshd.host, sshd.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await probe(f"127.0.0.1:{port}", {"host_key_fingerprint": sshd.host_key_fingerprint})
        login = await probe(
            f"127.0.0.1:{port}", {"username": sshd.user, "private_key_file": str(sshd.client_key)}
        )
    assert result.success, result
    assert str(result.fields["banner"]).startswith("SSH-2.0-OpenSSH_")
    assert login.success, login


# --------------------------------------------------------------------------- peers that are not SSH servers


def _sender(payload: bytes, then_close: bool) -> Any:
    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(payload)
        if not then_close:
            silent(conn, stop)

    return behaviour


async def test_a_closed_port_is_refused() -> None:
    port = closed_port()
    result = await probe(f"127.0.0.1:{port}")
    assert result.error_kind == ErrorKind.REFUSED
    assert result.detail == f"connection refused by 127.0.0.1:{port}"
    assert names(result) == ["resolve", "connect"]


async def test_an_http_server_is_a_protocol_failure() -> None:
    http = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    with RawTcpServer(_sender(http, then_close=True)) as srv:
        result = await probe(srv.address)
    assert result.error_kind == ErrorKind.PROTOCOL
    assert result.detail == "not an SSH server: it sent 'HTTP/1.1 400 Bad Request' and closed"
    assert names(result) == HANDSHAKE


async def test_endless_lines_without_a_banner_are_a_protocol_failure() -> None:
    with RawTcpServer(_sender(b"220 mail.example ESMTP\r\n" * 40, then_close=False)) as srv:
        result = await probe(srv.address)
    assert result.error_kind == ErrorKind.PROTOCOL
    assert result.detail == "not an SSH server: no SSH banner, it sent '220 mail.example ESMTP'"


async def test_binary_garbage_is_a_protocol_failure() -> None:
    with RawTcpServer(_sender(bytes(range(256)) * 4, then_close=False)) as srv:
        result = await probe(srv.address)
    assert result.error_kind == ErrorKind.PROTOCOL
    assert (
        result.detail
        == "not an SSH server: no SSH banner, it sent '\\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08\\t'"
    )


async def test_a_binary_greeting_is_a_protocol_failure_at_once() -> None:
    # A MySQL server speaks first, in binary, then waits for the client.
    greeting = b"J\x00\x00\x00\n8.0.36\x00\x08\x00\x00\x00"
    with RawTcpServer(_sender(greeting, then_close=False)) as srv:
        result = await probe(srv.address)
    assert result.error_kind == ErrorKind.PROTOCOL
    assert result.detail == "not an SSH server: no SSH banner, it sent 'J\\x00\\x00\\x00'"


async def test_an_ssh1_server_is_a_protocol_failure() -> None:
    with RawTcpServer(_sender(b"SSH-1.5-OldServer_1.0\r\n", then_close=False)) as srv:
        result = await probe(srv.address)
    assert result.error_kind == ErrorKind.PROTOCOL
    assert result.detail == "SSH handshake failed: Unsupported SSH version"
    assert result.fields["banner"] == "SSH-1.5-OldServer_1.0"


async def test_a_banner_followed_by_garbage_is_a_protocol_failure() -> None:
    garbage = b"SSH-2.0-Fake_1.0\r\n" + b"\xff" * 64
    with RawTcpServer(_sender(garbage, then_close=False)) as srv:
        result = await probe(srv.address)
    assert result.error_kind == ErrorKind.PROTOCOL
    assert result.detail.startswith("SSH handshake failed: ")
    assert result.fields["banner"] == "SSH-2.0-Fake_1.0"


async def test_a_banner_and_then_a_close_is_a_reset() -> None:
    with RawTcpServer(_sender(b"SSH-2.0-Fake_1.0\r\n", then_close=True)) as srv:
        result = await probe(srv.address)
    assert result.error_kind == ErrorKind.RESET
    # asyncssh notices the close (or the broken pipe when it writes) depending on timing.
    assert result.detail.startswith("connection closed during the SSH handshake")
    assert result.fields["banner"] == "SSH-2.0-Fake_1.0"


@pytest.mark.parametrize("behaviour", [close_at_once, reset_at_once], ids=["close", "reset"])
async def test_a_peer_that_hangs_up_before_the_banner_is_a_reset(behaviour: Any) -> None:
    with RawTcpServer(behaviour) as srv:
        result = await probe(srv.address)
    assert result.error_kind == ErrorKind.RESET
    if names(result) == HANDSHAKE:
        assert result.detail in (
            "connection closed before the SSH banner",
            "connection reset before the SSH banner: Connection reset by peer",
        )
    else:  # on a busy machine the reset can overtake the end of the connect step
        assert names(result) == ["resolve", "connect"]
        assert result.detail == f"cannot connect to {srv.address}: Connection reset by peer"


async def test_a_silent_peer_is_left_to_the_timeout_and_nothing_leaks(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("secret\n")
    with RawTcpServer(silent) as srv:
        for settings in (None, {"username": "u", "password_file": str(password_file)}):
            trace = PhaseTrace()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await make_prober(srv.address, settings).probe(trace)
            assert trace.current == "handshake"
    gc.collect()  # an unclosed socket would warn here, and warnings are errors


@needs_sshd
async def test_a_timeout_mid_handshake_with_a_real_server_closes_everything(sshd: SshServer) -> None:
    # Cancel at a few points of the exchange; each must leave no socket or task behind.
    for delay in (0.0005, 0.002, 0.005, 0.01):
        prober = make_prober(sshd.address, {"username": sshd.user, "private_key_file": str(sshd.client_key)})
        trace = PhaseTrace()
        try:
            async with asyncio.timeout(delay):
                await prober.probe(trace)
        except TimeoutError:
            pass
    await asyncio.sleep(0.05)
    gc.collect()


# --------------------------------------------------------------------------- configuration


def test_defaults_and_targets() -> None:
    prober = make_prober("bastion.example")
    assert isinstance(prober, SshProber)
    assert prober.endpoint == HostPort("bastion.example", 22)
    assert (prober.ip_version, prober.fingerprints, prober.login) == ("any", (), None)
    v6 = make_prober("[2001:db8::22]:2222")
    assert isinstance(v6, SshProber) and v6.endpoint == HostPort("2001:db8::22", 2222)


def test_all_settings() -> None:
    prober = make_prober(
        "bastion.example:2222",
        {
            "host_key_fingerprint": f"  {OTHER_FINGERPRINT}=  ",
            "username": "probe",
            "private_key_file": "/etc/slaprobe/ssh/probe_ed25519",
            "ip_version": "ipv4",
        },
    )
    assert isinstance(prober, SshProber)
    assert prober.fingerprints == (OTHER_FINGERPRINT,)
    assert prober.login == Login("probe", "/etc/slaprobe/ssh/probe_ed25519", None)
    assert prober.ip_version == "ipv4"
    password = make_prober("b.example", {"username": "probe", "password_file": "/etc/slaprobe/ssh/password"})
    assert isinstance(password, SshProber)
    assert password.login == Login("probe", None, "/etc/slaprobe/ssh/password")
    assert password.login.method == "password"


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        (
            {"host_key_fingerprint": "SHA256:tooshort"},
            "host_key_fingerprint",
            "expected a SHA256 fingerprint such as `ssh-keygen -lf` prints (SHA256: and 43 base64 characters), got 'SHA256:tooshort'",
        ),
        (
            {"host_key_fingerprint": "MD5:12:34:56:78:9a:bc:de:f0:12:34:56:78:9a:bc:de:f0"},
            "host_key_fingerprint",
            "MD5 fingerprints are not accepted; use the SHA256 one that `ssh-keygen -lf` prints",
        ),
        (
            {"host_key_fingerprint": [OTHER_FINGERPRINT, 42]},
            "host_key_fingerprint[1]",
            "expected a SHA256 fingerprint such as `ssh-keygen -lf` prints (SHA256:...)",
        ),
        (
            {"host_key_fingerprint": []},
            "host_key_fingerprint",
            "expected a SHA256 fingerprint or a list of them, got an empty list",
        ),
        (
            {"username": "probe", "password": "hunter2"},
            "password",
            "a password does not belong in the catalogue: put it in a file on the agent host and set password_file",
        ),
        ({"username": "probe"}, "username", "a login check needs private_key_file or password_file"),
        ({"private_key_file": "/k"}, "private_key_file", "a login check needs username too"),
        ({"password_file": "/p"}, "password_file", "a login check needs username too"),
        (
            {"username": "probe", "private_key_file": "/k", "password_file": "/p"},
            "password_file",
            "set private_key_file or password_file, not both",
        ),
        (
            {"username": "probe", "private_key_file": "keys/probe"},
            "private_key_file",
            "must be an absolute path on the agent host, got 'keys/probe'",
        ),
        ({"username": "two words", "private_key_file": "/k"}, "username", "invalid user name 'two words'"),
        ({"username": "", "private_key_file": "/k"}, "username", "must not be empty"),
        ({"ip_version": "v4"}, "ip_version", "must be one of any, ipv4, ipv6; got 'v4'"),
        (
            {"fingerprint": OTHER_FINGERPRINT},
            "fingerprint",
            "unknown field (did you mean 'host_key_fingerprint'?); allowed here: host_key_fingerprint, "
            "ip_version, password_file, private_key_file, username",
        ),
    ],
)
def test_bad_settings(settings: dict[str, Any], field: str, message: str) -> None:
    assert config_error("bastion.example", settings) == f"{SOURCE}: {SETTINGS}.{field}: {message}"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("bastion.example:0", "port must be a number from 1 to 65535, got '0'"),
        ("2001:db8::22", "IPv6 addresses need brackets, as in [2001:db8::1]:443; got '2001:db8::22'"),
        ("ssh://bastion.example", "expected host:port without a scheme, got 'ssh://bastion.example'"),
    ],
)
def test_bad_targets(target: str, message: str) -> None:
    assert config_error(target) == f"{SOURCE}: {CHECK}.target: {message}"
