"""Shared network steps (probes/_net.py): names answered from the hosts file without a thread."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import probes._net
from probes import ErrorKind, PhaseTrace
from probes._net import (
    SO_TIMESTAMPNS,
    TIMESTAMP_ANCILLARY_SIZE,
    HostPort,
    HostsFile,
    enable_rx_timestamps,
    resolve,
    timestamp_ns,
)
from tests.probe_harness import ProbeHarness
from tests.probe_servers import HttpTestServer

HOSTS = """\
# a comment line
127.0.0.1   localhost
::1         localhost ip6-localhost
192.0.2.10  app.internal App-Alias   # trailing comment
2001:db8::7 v6only.internal
192.0.2.20  twice.internal
192.0.2.21  twice.internal
fe80::1%eth0 scoped.internal
not-an-address broken.internal
198.51.100.9
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    nsswitch = tmp_path / "nsswitch.conf"
    nsswitch.write_text("passwd: files\nhosts:          files dns\nnetworks: files\n")
    return hosts, nsswitch


@pytest.fixture
def table(files: tuple[Path, Path]) -> HostsFile:
    return HostsFile(str(files[0]), str(files[1]), recheck_s=0.0)  # looks at the files on every lookup


@pytest.mark.parametrize(
    ("name", "ip_version", "expected"),
    [
        ("app.internal", "any", (socket.AF_INET, "192.0.2.10")),
        ("APP.Internal", "any", (socket.AF_INET, "192.0.2.10")),  # names are case-insensitive
        ("app-alias", "ipv4", (socket.AF_INET, "192.0.2.10")),  # an alias after the first name
        ("v6only.internal", "any", (socket.AF_INET6, "2001:db8::7")),
        ("localhost", "ipv4", (socket.AF_INET, "127.0.0.1")),
        ("localhost", "ipv6", (socket.AF_INET6, "::1")),
        ("ip6-localhost", "any", (socket.AF_INET6, "::1")),
    ],
)
def test_a_listed_name_is_answered(
    table: HostsFile, name: str, ip_version: Any, expected: tuple[int, str]
) -> None:
    assert table.lookup(name, ip_version) == expected


@pytest.mark.parametrize(
    ("name", "ip_version", "why"),
    [
        ("localhost", "any", "both families: getaddrinfo orders them (RFC 6724)"),
        ("twice.internal", "any", "two addresses: getaddrinfo orders them"),
        ("app.internal", "ipv6", "no address of the wanted family"),
        ("v6only.internal", "ipv4", "no address of the wanted family"),
        ("scoped.internal", "any", "a scoped address needs getaddrinfo's scope id"),
        ("broken.internal", "any", "the line's address does not parse"),
        ("unlisted.internal", "any", "not in the file"),
        ("app.internal.", "any", "a trailing dot: left to the resolver"),
        ("bücher.internal", "any", "not ASCII: IDNA is the resolver's business"),
    ],
)
def test_getaddrinfo_answers_what_the_file_alone_cannot(
    table: HostsFile, name: str, ip_version: Any, why: str
) -> None:
    assert table.lookup(name, ip_version) is None, why


@pytest.mark.parametrize(
    "nsswitch",
    [
        "hosts: dns files\n",
        "hosts: resolve [!UNAVAIL=return] files myhostname dns\n",
        "passwd: files\n",  # no hosts line: the C library's default order is not ours to guess
        "#hosts: files dns\nhosts: dns\n",
    ],
)
def test_the_file_is_not_used_unless_nsswitch_reads_it_first(files: tuple[Path, Path], nsswitch: str) -> None:
    files[1].write_text(nsswitch)
    assert HostsFile(str(files[0]), str(files[1])).lookup("app.internal", "any") is None


def test_without_nsswitch_conf_the_file_is_not_used(files: tuple[Path, Path]) -> None:
    files[1].unlink()
    assert HostsFile(str(files[0]), str(files[1])).lookup("app.internal", "any") is None


def test_without_a_hosts_file_nothing_is_answered(files: tuple[Path, Path]) -> None:
    files[0].unlink()
    assert HostsFile(str(files[0]), str(files[1])).lookup("app.internal", "any") is None


def test_an_edited_file_counts_from_the_next_lookup(table: HostsFile, files: tuple[Path, Path]) -> None:
    assert table.lookup("app.internal", "any") == (socket.AF_INET, "192.0.2.10")
    files[0].write_text("192.0.2.99 app.internal\n")
    assert table.lookup("app.internal", "any") == (socket.AF_INET, "192.0.2.99")
    files[1].write_text("hosts: dns files\n")
    assert table.lookup("app.internal", "any") is None


def test_the_files_are_looked_at_once_a_second(files: tuple[Path, Path]) -> None:
    now = [100.0]
    table = HostsFile(str(files[0]), str(files[1]), clock=lambda: now[0])
    assert table.lookup("app.internal", "any") == (socket.AF_INET, "192.0.2.10")
    files[0].write_text("192.0.2.99 app.internal\n")
    now[0] += 0.5
    assert table.lookup("app.internal", "any") == (socket.AF_INET, "192.0.2.10")  # not looked at yet
    now[0] += 0.5
    assert table.lookup("app.internal", "any") == (socket.AF_INET, "192.0.2.99")
    files[0].unlink()
    now[0] += 1.0
    assert table.lookup("app.internal", "any") is None  # gone: nothing answered from memory


def test_an_edit_within_the_same_second_and_size_counts(table: HostsFile, files: tuple[Path, Path]) -> None:
    # Same size and (coarse) mtime: the inode of an atomically replaced file tells it apart.
    assert table.lookup("app.internal", "any") == (socket.AF_INET, "192.0.2.10")
    stat = files[0].stat()
    replacement = files[0].with_suffix(".new")
    replacement.write_text(HOSTS.replace("192.0.2.10", "192.0.2.11"))
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    replacement.replace(files[0])
    assert table.lookup("app.internal", "any") == (socket.AF_INET, "192.0.2.11")


# --------------------------------------------------------------------------- resolve() with the file


@pytest.fixture
def hosts_only(monkeypatch: pytest.MonkeyPatch, table: HostsFile) -> list[str]:
    """Use the test's hosts file and record the names that went to getaddrinfo."""
    monkeypatch.setattr(probes._net, "_hosts", table)
    asked: list[str] = []
    original = asyncio.BaseEventLoop.getaddrinfo

    async def recording(self: asyncio.BaseEventLoop, host: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        return await original(self, host, *args, **kwargs)

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", recording)
    return asked


async def test_resolve_answers_a_listed_name_without_getaddrinfo(hosts_only: list[str]) -> None:
    trace = PhaseTrace()
    family, sockaddr = await resolve(HostPort("App.Internal", 8080), "any", trace)
    assert (family, sockaddr) == (socket.AF_INET, ("192.0.2.10", 8080))
    assert trace.fields["ip"] == "192.0.2.10"
    family, sockaddr = await resolve(HostPort("v6only.internal", 443), "any", trace)
    assert (family, sockaddr) == (socket.AF_INET6, ("2001:db8::7", 443, 0, 0))
    assert [name for name, _ in trace.close()] == ["resolve", "resolve"]
    assert hosts_only == []


async def test_resolve_falls_back_to_getaddrinfo(hosts_only: list[str]) -> None:
    trace = PhaseTrace()
    family, _ = await resolve(HostPort("localhost", 80), "any", trace)  # both families listed
    assert family in (socket.AF_INET, socket.AF_INET6)
    assert hosts_only == ["localhost"]


async def test_a_name_neither_answers_is_a_dns_failure(hosts_only: list[str]) -> None:
    with pytest.raises(probes.ProbeFailure) as info:
        await resolve(HostPort("no-such-host.invalid", 80), "any", PhaseTrace())
    assert info.value.kind is ErrorKind.DNS
    assert hosts_only == ["no-such-host.invalid"]


@pytest.fixture
def server() -> Iterator[HttpTestServer]:
    with HttpTestServer() as s:
        yield s


async def test_an_http_probe_reaches_a_name_from_the_hosts_file(
    server: HttpTestServer, files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    files[0].write_text("127.0.0.1 pinned.internal\n")
    monkeypatch.setattr(probes._net, "_hosts", HostsFile(str(files[0]), str(files[1])))
    result = await ProbeHarness("http", "sites.lab.checks.web").probe(
        f"http://pinned.internal:{server.port}/ok"
    )
    assert result.success, result
    assert result.fields["ip"] == "127.0.0.1"
    assert server.requests[-1].header("host") == f"pinned.internal:{server.port}"


# --------------------------------------------------------------------------- sockets closed after the result


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_sockets_are_closed_right_after_the_result(server: HttpTestServer) -> None:
    # Probes close their sockets on the next loop iteration (outside the clock): none may stay open.
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a DNS "server" that never answers
    udp.bind(("127.0.0.1", 0))
    checks = [
        (ProbeHarness("http", "c"), f"http://127.0.0.1:{server.port}/ok", None),
        (ProbeHarness("tcp", "c"), f"127.0.0.1:{server.port}", None),
        (ProbeHarness("http", "c"), f"http://127.0.0.1:{server.port}/no-such-path", {"valid_status": [200]}),
    ]
    try:
        before = _open_fds()
        for harness, target, settings in checks:
            for _ in range(5):
                await harness.probe(target, settings)
        dns = ProbeHarness("dns", "c").make_prober(
            f"127.0.0.1:{udp.getsockname()[1]}", {"query_name": "a.test"}
        )
        for _ in range(3):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await probes.run_probe(dns, PhaseTrace())
        await asyncio.sleep(0)
        assert _open_fds() == before
    finally:
        udp.close()


# --------------------------------------------------------------------------- PhaseTrace boundaries


def test_a_boundary_given_by_a_receive_time_stays_inside_its_phase() -> None:
    trace = PhaseTrace()
    trace.enter("processing")
    opened = time.perf_counter()
    time.sleep(0.02)
    trace.enter("transfer", at=opened - 10.0)  # before the phase opened: clamped to its start
    assert dict(trace._phases)["processing"] == pytest.approx(0.0, abs=0.005)
    time.sleep(0.02)
    trace.stop(at=time.perf_counter() + 10.0)  # in the future: clamped to now
    assert trace.end is not None
    assert trace.end <= time.perf_counter()
    assert 0.015 <= dict(trace._phases)["transfer"] < 1.0


def test_the_end_moves_when_the_target_s_part_resumes() -> None:
    trace = PhaseTrace()
    trace.enter("connect")
    trace.stop()
    first_end = trace.end
    trace.enter("connect")  # a redirect's next hop
    while_resumed = trace.end
    assert while_resumed is None
    time.sleep(0.01)
    phases = trace.close()
    assert first_end is not None and trace.end is not None
    assert trace.end - first_end >= 0.01
    assert [name for name, _ in phases] == ["connect", "connect"]
    end = trace.end
    assert trace.close() == phases
    assert trace.end == end  # closing again changes nothing


def test_receive_timestamps_can_be_switched_on() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert enable_rx_timestamps(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS) == 1
        sock.bind(("127.0.0.1", 0))
        before = time.time_ns()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"x", sock.getsockname())
        data, ancdata, _, _ = sock.recvmsg(16, TIMESTAMP_ANCILLARY_SIZE)
        stamp = timestamp_ns(ancdata)
        assert data == b"x"
        assert stamp is not None and before - 1_000_000 <= stamp <= time.time_ns()
