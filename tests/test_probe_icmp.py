"""The ICMP probe: real echo requests on loopback, loss and unreachable hosts in a namespace of our own.

Where the traffic goes: 127.0.0.1 and ::1, and a network namespace this
module creates (``ip netns add``) joined to the host by a veth pair, with
addresses from 198.18.0.0/15 (reserved for benchmarks, never routed). In it:

- ``responder`` answers pings;
- ``blackhole`` has a static neighbour entry on the host side, so requests
  reach the namespace, which does not own the address and drops them
  silently (100% loss, no ICMP error);
- ``no_neighbour`` answers no ARP request, so the host's kernel gives up
  after its three ARP probes (about 3 s) and reports "host unreachable".

No sysctl is changed: on this machine ``net.ipv4.ping_group_range`` is
``1 0``, so the datagram socket is refused and the raw-socket fallback is
what runs; a subprocess without CAP_NET_RAW shows the message naming the fix.
The namespace tests are skipped where ``ip netns`` is not permitted.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

import probes.icmp
from probes import ErrorKind, PhaseTrace, ProbeResult, run_probe
from probes.icmp import (
    ICMP_ECHO_REPLY,
    ICMPV6_ECHO_REPLY,
    PERMISSION_FIX,
    EchoBurst,
    IcmpProber,
    checksum,
    describe_icmp_error,
)
from tests.probe_harness import ProbeHarness, block_the_loop_once, phase_names

SOURCE = "catalogue.yaml"
CHECK = "sites.lab.checks.router"
SETTINGS = f"{CHECK}.settings"
ICMP_PHASES = ["resolve", "setup", "rtt"]
ROOT = Path(__file__).resolve().parent.parent


_harness = ProbeHarness("icmp", CHECK, SOURCE, guard_s=20)
make_prober = _harness.make_prober


@pytest.fixture(autouse=True)
def _forget_refused_datagram_sockets() -> Iterator[None]:
    # The probe remembers per process that datagram sockets are refused: each test starts afresh.
    probes.icmp._datagram_refused.clear()
    yield
    probes.icmp._datagram_refused.clear()


probe = _harness.probe
config_error = _harness.config_error
names = phase_names


def datagram_icmp_allowed(family: int = socket.AF_INET) -> bool:
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    try:
        socket.socket(family, socket.SOCK_DGRAM, proto).close()
    except OSError:
        return False
    return True


def raw_icmp_allowed() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    except OSError:
        return False
    return True


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_icmp = pytest.mark.skipif(
    not (datagram_icmp_allowed() or raw_icmp_allowed()),
    reason="neither an unprivileged nor a raw ICMP socket can be opened here",
)


def assert_sane_success(result: ProbeResult, count: int, wait: float = 1.0) -> None:
    assert result.success, result
    assert result.error_kind is None
    assert names(result) == ICMP_PHASES
    f = result.fields
    assert (f["sent"], f["received"], f["loss_pct"]) == (count, count, 0.0)
    rtt_min, rtt_avg, rtt_max = (float(f[k]) for k in ("rtt_min_ms", "rtt_avg_ms", "rtt_max_ms"))
    assert 0 < rtt_min <= rtt_avg <= rtt_max < wait * 1000
    assert rtt_max < 100, "loopback round trips take microseconds, not 100 ms"
    assert 0 <= float(f["rtt_stddev_ms"]) <= rtt_max - rtt_min + 0.001
    if count >= 2:
        assert 0 <= float(f["jitter_ms"]) <= rtt_max - rtt_min + 0.001
    assert f["icmp_socket"] == ("datagram" if datagram_icmp_allowed() else "raw")
    assert result.detail.startswith(f"{count} of {count} replies, rtt avg ")


# --------------------------------------------------------------------------- loopback


@needs_icmp
async def test_loopback_ipv4_answers_every_request() -> None:
    start = time.perf_counter()
    result = await probe("127.0.0.1", {"count": 4, "interval": "50ms"})
    elapsed = time.perf_counter() - start
    assert_sane_success(result, 4)
    assert result.fields["ip"] == "127.0.0.1"
    # The run ends when the last reply is in, not after `wait`: 3 intervals and a little.
    assert 0.15 <= elapsed < 0.5
    rtt_phase = dict(result.phases)["rtt"]
    assert 0.15 <= rtt_phase <= elapsed


@needs_icmp
async def test_the_run_ends_when_the_last_reply_arrived_not_when_the_loop_got_to_it() -> None:
    trace = PhaseTrace()
    start = time.perf_counter()
    blocker = asyncio.create_task(block_the_loop_once(lambda: trace.fields.get("sent") == 1, 0.4))
    result = await run_probe(make_prober("127.0.0.1", {"count": 1}), trace)
    assert await blocker, "the probe never waited where the test freezes the loop"
    assert time.perf_counter() - start >= 0.4
    assert_sane_success(result, 1)
    assert trace.end is not None
    assert trace.end - start < 0.3, (trace.end - start, result.phases)
    assert dict(result.phases)["rtt"] < 0.3


@needs_icmp
@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_loopback_ipv6_answers_every_request() -> None:
    result = await probe("::1", {"count": 3, "interval": "20ms", "payload_size": 1000})
    assert_sane_success(result, 3)
    assert result.fields["ip"] == "::1"
    bracketed = await probe("[::1]", {"count": 1, "ip_version": "ipv6"})
    assert_sane_success(bracketed, 1)


@needs_icmp
async def test_defaults_send_five_requests_and_a_host_name_resolves() -> None:
    result = await probe("localhost", {"ip_version": "ipv4"})
    assert_sane_success(result, 5)
    assert result.fields["ip"] == "127.0.0.1"


@needs_icmp
async def test_empty_and_large_payloads_are_echoed() -> None:
    assert_sane_success(await probe("127.0.0.1", {"count": 2, "interval": "10ms", "payload_size": 0}), 2)
    big = await probe("127.0.0.1", {"count": 2, "interval": "10ms", "payload_size": 60000})
    assert_sane_success(big, 2)


@needs_icmp
async def test_concurrent_runs_to_one_host_keep_their_replies_apart() -> None:
    # Raw sockets all see every reply from 127.0.0.1: identifiers and tokens must keep them apart.
    results = await asyncio.gather(*(probe("127.0.0.1", {"count": 5, "interval": "10ms"}) for _ in range(8)))
    for result in results:
        assert_sane_success(result, 5)


@needs_icmp
async def test_a_run_cut_short_by_the_timeout_still_tells_how_far_it_got() -> None:
    # What the runner sees when a check's timeout is shorter than the burst.
    prober = make_prober("127.0.0.1", {"count": 10, "interval": "100ms"})
    trace = PhaseTrace()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.25):
            await prober.probe(trace)
    assert trace.current == "rtt"
    assert trace.fields["sent"] == 3
    assert trace.fields["received"] == 3


async def test_an_ipv6_literal_with_ip_version_ipv4_is_a_dns_failure() -> None:
    result = await probe("::1", {"ip_version": "ipv4"})
    assert result.error_kind == ErrorKind.DNS
    assert names(result) == ["resolve"]


async def test_an_unresolvable_name_is_a_dns_failure() -> None:
    result = await probe("no-such-host.invalid")
    assert result.error_kind == ErrorKind.DNS
    assert "no-such-host.invalid" in result.detail


# --------------------------------------------------------------------------- which socket


class _RefusingSocket(socket.socket):
    """socket.socket that refuses ICMP sockets of the given types, as the kernel would."""

    refuse: ClassVar[dict[int, int]] = {}

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: Any = None) -> None:
        if proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6) and type in self.refuse:
            code = self.refuse[type]
            raise OSError(code, os.strerror(code))
        super().__init__(family, type, proto, fileno)


@needs_icmp
@pytest.mark.skipif(not raw_icmp_allowed(), reason="raw ICMP sockets need CAP_NET_RAW")
async def test_a_refused_datagram_socket_falls_back_to_a_raw_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    # On this machine ping_group_range refuses datagram sockets anyway; refusing them here
    # makes the test mean the same on machines where they are allowed.
    monkeypatch.setattr(_RefusingSocket, "refuse", {socket.SOCK_DGRAM: errno.EACCES})
    monkeypatch.setattr(socket, "socket", _RefusingSocket)
    result = await probe("127.0.0.1", {"count": 2, "interval": "10ms"})
    assert result.success, result
    assert result.fields["icmp_socket"] == "raw"


class _CountingSocket(_RefusingSocket):
    """_RefusingSocket that also counts the ICMP sockets asked for, by type."""

    asked: ClassVar[list[int]] = []

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: Any = None) -> None:
        if proto in (socket.IPPROTO_ICMP, socket.IPPROTO_ICMPV6):
            self.asked.append(type)
        super().__init__(family, type, proto, fileno)


@needs_icmp
@pytest.mark.skipif(not raw_icmp_allowed(), reason="raw ICMP sockets need CAP_NET_RAW")
async def test_a_refused_datagram_socket_is_not_asked_for_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # A refused socket() costs a system call inside `setup` on every run: once is enough.
    monkeypatch.setattr(_CountingSocket, "refuse", {socket.SOCK_DGRAM: errno.EACCES})
    monkeypatch.setattr(_CountingSocket, "asked", [])
    monkeypatch.setattr(socket, "socket", _CountingSocket)
    for _ in range(3):
        result = await probe("127.0.0.1", {"count": 1})
        assert result.success, result
        assert result.fields["icmp_socket"] == "raw"
    assert _CountingSocket.asked == [socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_RAW, socket.SOCK_RAW]


async def test_when_both_sockets_are_refused_the_datagram_socket_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An operator who opens ping_group_range after the agent started is heard from the next run on.
    monkeypatch.setattr(
        _CountingSocket, "refuse", {socket.SOCK_DGRAM: errno.EACCES, socket.SOCK_RAW: errno.EPERM}
    )
    monkeypatch.setattr(_CountingSocket, "asked", [])
    monkeypatch.setattr(socket, "socket", _CountingSocket)
    for _ in range(2):
        result = await probe("127.0.0.1", {"count": 1})
        assert result.error_kind == ErrorKind.INTERNAL
    assert _CountingSocket.asked == [socket.SOCK_DGRAM, socket.SOCK_RAW] * 2


@needs_icmp
def test_this_machine_refuses_datagram_icmp_sockets_so_the_raw_path_is_what_runs() -> None:
    # A statement about the test machine (ceilings.md): if it changes, the fallback test
    # above still covers the raw path, and the loopback tests cover the datagram one.
    if datagram_icmp_allowed():
        pytest.skip("datagram ICMP sockets are allowed here (ping_group_range is open)")
    result = asyncio.run(probe("127.0.0.1", {"count": 1}))
    assert result.fields["icmp_socket"] == "raw"


async def test_without_either_socket_the_result_is_internal_and_names_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        _RefusingSocket, "refuse", {socket.SOCK_DGRAM: errno.EACCES, socket.SOCK_RAW: errno.EPERM}
    )
    monkeypatch.setattr(socket, "socket", _RefusingSocket)
    result = await probe("127.0.0.1")
    assert not result.success
    assert result.error_kind == ErrorKind.INTERNAL  # scored as unknown: it says nothing about the target
    assert result.detail == f"cannot open an ICMP socket (Operation not permitted): {PERMISSION_FIX}"
    assert names(result) == ["resolve", "setup"]


@pytest.mark.skipif(
    shutil.which("setpriv") is None or os.geteuid() != 0 or datagram_icmp_allowed(),
    reason="needs root, setpriv, and datagram ICMP sockets refused",
)
def test_a_process_without_cap_net_raw_gets_the_fix_in_the_detail() -> None:
    # A real process without CAP_NET_RAW, as an agent started by an unprivileged unit would be.
    script = (
        "import asyncio, json\n"
        "from probes.icmp import IcmpProber\n"
        "from probes import PhaseTrace, run_probe\n"
        "r = asyncio.run(run_probe(IcmpProber('127.0.0.1', count=1), PhaseTrace()))\n"
        "print(json.dumps([r.success, str(r.error_kind), r.detail]))\n"
    )
    out = subprocess.run(
        ["setpriv", "--bounding-set=-net_raw", sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    success, kind, detail = json.loads(out.stdout)
    assert (success, kind) == (False, "internal")
    assert detail.endswith(PERMISSION_FIX)
    assert "ping_group_range='0 2147483647'" in detail and "AmbientCapabilities=CAP_NET_RAW" in detail


# --------------------------------------------------------------------------- a namespace of our own


@dataclass
class DropNet:
    ns: str
    host_if: str
    ns_if: str
    prefix: str
    responder: str
    blackhole: str
    no_neighbour: str

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.ns, *args], check=True, capture_output=True, timeout=10)


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture(scope="module")
def dropnet() -> Iterator[DropNet]:
    if shutil.which("ip") is None or os.geteuid() != 0 or not raw_icmp_allowed():
        pytest.skip("needs root and iproute2 for a test network namespace")
    tag = secrets.token_hex(3)
    used = _ip("-o", "-4", "addr").stdout
    third = next(n for n in range(secrets.randbelow(200) + 1, 256) if f"198.18.{n}." not in used)
    prefix = f"198.18.{third}"
    net = DropNet(
        ns=f"slaprobe-test-{tag}",
        host_if=f"sp{tag}h",
        ns_if=f"sp{tag}n",
        prefix=prefix,
        responder=f"{prefix}.2",
        blackhole=f"{prefix}.3",
        no_neighbour=f"{prefix}.4",
    )
    made = _ip("netns", "add", net.ns)
    if made.returncode != 0:
        pytest.skip(f"ip netns add is not permitted here: {made.stderr.strip()}")
    try:
        steps = [
            ["link", "add", net.host_if, "type", "veth", "peer", "name", net.ns_if, "netns", net.ns],
            ["addr", "add", f"{prefix}.1/24", "dev", net.host_if],
            ["link", "set", net.host_if, "up"],
            ["-n", net.ns, "addr", "add", f"{net.responder}/24", "dev", net.ns_if],
            ["-n", net.ns, "link", "set", net.ns_if, "up"],
            ["-n", net.ns, "link", "set", "lo", "up"],
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot build the test network (ip {' '.join(step)}): {done.stderr.strip()}")
        link = _ip("-n", net.ns, "-o", "link", "show", net.ns_if).stdout.split()
        mac = link[link.index("link/ether") + 1]
        done = _ip("neigh", "replace", net.blackhole, "lladdr", mac, "dev", net.host_if, "nud", "permanent")
        assert done.returncode == 0, done.stderr
        yield net
    finally:
        _ip("netns", "del", net.ns)  # takes the veth pair (and the host side's routes) with it
        _ip("link", "del", net.host_if)


async def test_a_host_in_the_namespace_answers(dropnet: DropNet) -> None:
    result = await probe(dropnet.responder, {"count": 3, "interval": "20ms"})
    assert result.success, result
    assert (result.fields["sent"], result.fields["received"]) == (3, 3)


async def test_silently_dropped_requests_are_a_timeout_with_full_loss(dropnet: DropNet) -> None:
    start = time.perf_counter()
    result = await probe(dropnet.blackhole, {"count": 3, "interval": "50ms", "wait": "300ms"})
    elapsed = time.perf_counter() - start
    assert not result.success
    assert result.error_kind == ErrorKind.TIMEOUT
    assert result.detail == f"no reply from {dropnet.blackhole} to 3 echo requests within 0.3s each"
    assert names(result) == ICMP_PHASES
    assert result.fields == {
        "ip": dropnet.blackhole,
        "icmp_socket": "raw",
        "sent": 3,
        "received": 0,
        "loss_pct": 100.0,
    }
    # Two intervals, then `wait` after the last request: the run ends on its own, well before any runner timeout.
    assert 0.4 <= elapsed < 0.8


@pytest.mark.slow
async def test_a_host_nobody_answers_for_is_unreachable(dropnet: DropNet) -> None:
    # The host's kernel sends three ARP probes a second apart, then reports "host unreachable".
    result = await probe(dropnet.no_neighbour, {"count": 1, "wait": "6s"})
    assert not result.success
    assert result.error_kind == ErrorKind.UNREACHABLE
    assert result.detail == (
        f"{dropnet.no_neighbour}: host unreachable (ICMP from {dropnet.prefix}.1); 0 of 1 replies"
    )
    assert (result.fields["sent"], result.fields["received"], result.fields["loss_pct"]) == (1, 0, 100.0)


async def test_partial_loss_is_measured_and_judged_against_max_loss(dropnet: DropNet) -> None:
    # A second address in the namespace answers the first two requests, then goes away.
    flaky = f"{dropnet.prefix}.5"
    dropnet.ip("addr", "add", f"{flaky}/24", "dev", dropnet.ns_if)
    settings = {"count": 4, "interval": "400ms", "wait": "300ms"}

    async def remove_address_between_the_second_and_third_request() -> None:
        await asyncio.sleep(0.6)
        proc = await asyncio.create_subprocess_exec(
            "ip", "-n", dropnet.ns, "addr", "del", f"{flaky}/24", "dev", dropnet.ns_if
        )
        assert await proc.wait() == 0

    strict, lenient, _ = await asyncio.gather(
        probe(flaky, {**settings, "max_loss": "25%"}),
        probe(flaky, settings),
        remove_address_between_the_second_and_third_request(),
    )
    for result in (strict, lenient):
        f = result.fields
        assert (f["sent"], f["received"], f["loss_pct"]) == (4, 2, 50.0), result
        assert names(result) == ICMP_PHASES
        assert "jitter_ms" in f and "rtt_avg_ms" in f
    assert strict.error_kind == ErrorKind.ASSERTION
    assert strict.detail.startswith("loss 50% above max_loss 25% (2 of 4 replies, rtt avg ")
    assert lenient.success and lenient.detail.startswith("2 of 4 replies")


# --------------------------------------------------------------------------- the reply matcher


def _burst(*, ipv6: bool = False, raw: bool = True, wait: float = 1.0, payload_size: int = 16) -> EchoBurst:
    return EchoBurst(
        ipv6=ipv6, raw=raw, ident=0x1234, token=b"TOKEN-01", payload_size=payload_size, wait=wait
    )


def _reply(burst: EchoBurst, seq: int, *, kind: int | None = None, ident: int | None = None) -> bytes:
    """What the kernel hands a socket for the reply to request ``seq``."""
    request = burst.request(seq)
    reply_kind = kind if kind is not None else (ICMPV6_ECHO_REPLY if burst.ipv6 else ICMP_ECHO_REPLY)
    icmp = (
        bytes([reply_kind])
        + request[1:4]
        + struct.pack("!H", ident if ident is not None else burst.ident)
        + request[6:]
    )
    if burst.raw and not burst.ipv6:
        header = bytes([0x45, 0]) + struct.pack("!H", 20 + len(icmp)) + bytes(16)
        return header + icmp
    return icmp


def test_requests_carry_a_valid_checksum_and_the_token() -> None:
    burst = _burst(payload_size=57)  # odd length: the checksum pads
    request = burst.request(7)
    assert request[0] == 8 and request[1] == 0
    assert struct.unpack("!HH", request[4:8]) == (0x1234, 7)
    assert checksum(request) == 0  # a packet with its checksum sums to zero
    assert request[8:16] == b"TOKEN-01" and len(request) == 8 + 57
    v6 = _burst(ipv6=True).request(1)
    assert v6[0] == 128 and v6[2:4] == b"\x00\x00"  # the kernel fills in ICMPv6 checksums


def test_replies_are_matched_by_type_identifier_sequence_and_token() -> None:
    burst = _burst()
    for seq in range(3):
        burst.mark_sent(seq, perf=10.0 + seq, wall_ns=0)
    assert not burst.receive(_reply(burst, 0, kind=8), 10.1)  # our own request, seen on loopback
    assert not burst.receive(_reply(burst, 0, ident=0x4321), 10.1)  # another pinger's reply
    assert not burst.receive(_reply(burst, 9), 10.1)  # a sequence we never sent
    forged = bytearray(_reply(burst, 0))
    forged[28:36] = b"OTHER-01"
    assert not burst.receive(bytes(forged), 10.1)  # same id and seq, another process's payload
    assert not burst.receive(b"\x45\x00\x00", 10.1)  # truncated
    assert burst.receive(_reply(burst, 0), 10.002)
    assert not burst.receive(_reply(burst, 0), 10.003)  # a duplicate
    assert burst.duplicates == 1
    assert burst.receive(_reply(burst, 2), 12.004)
    assert (burst.sent, burst.received) == (3, 2)
    assert burst.rtts == pytest.approx({0: 0.002, 2: 0.004})


def test_a_datagram_socket_reply_has_no_ip_header_and_a_kernel_chosen_identifier() -> None:
    burst = _burst(raw=False)
    burst.mark_sent(0, perf=1.0, wall_ns=0)
    assert burst.receive(_reply(burst, 0, ident=0x9999), 1.001)
    v6 = _burst(ipv6=True, raw=True)
    v6.mark_sent(0, perf=1.0, wall_ns=0)
    assert not v6.receive(_reply(v6, 0, kind=128), 1.001)
    assert v6.receive(_reply(v6, 0), 1.001)


def test_a_reply_later_than_wait_counts_as_lost() -> None:
    burst = _burst(wait=0.5)
    burst.mark_sent(0, perf=1.0, wall_ns=0)
    burst.mark_sent(1, perf=1.1, wall_ns=0)
    assert not burst.receive(_reply(burst, 0), 1.6001)
    assert burst.receive(_reply(burst, 1), 1.6)
    assert burst.stats().loss_pct == 50.0


def test_the_kernel_receive_time_is_used_when_plausible() -> None:
    burst = _burst()
    for seq in range(3):
        burst.mark_sent(seq, perf=100.0, wall_ns=5_000_000_000)
    # The event loop got to the reply 3 ms late; the kernel saw it after 0.2 ms.
    assert burst.receive(_reply(burst, 0), 100.003, kernel_ns=5_000_200_000)
    # A wall clock stepped backwards (negative) or forwards (beyond the loop's reading): not used.
    assert burst.receive(_reply(burst, 1), 100.003, kernel_ns=4_000_000_000)
    assert burst.receive(_reply(burst, 2), 100.003, kernel_ns=6_000_000_000)
    assert burst.rtts == pytest.approx({0: 0.0002, 1: 0.003, 2: 0.003})


def test_statistics_loss_rtts_stddev_and_jitter() -> None:
    burst = _burst()
    rtts_ms = {0: 10.0, 1: 14.0, 3: 12.0, 4: 20.0}  # seq 2 lost
    for seq in range(5):
        burst.mark_sent(seq, perf=float(seq), wall_ns=0)
    for seq in (4, 0, 3, 1):  # out of order: statistics follow sequence order
        assert burst.receive(_reply(burst, seq), seq + rtts_ms[seq] / 1000)
    fields = burst.stats().fields()
    assert fields == pytest.approx(
        {
            "sent": 5,
            "received": 4,
            "loss_pct": 20.0,
            "rtt_min_ms": 10.0,
            "rtt_avg_ms": 14.0,
            "rtt_max_ms": 20.0,
            "rtt_stddev_ms": 3.7417,  # sqrt(((-4)² + 0² + (-2)² + 6²) / 4) = sqrt(14)
            "jitter_ms": 4.6667,  # (|14-10| + |12-14| + |20-12|) / 3
        },
        abs=1e-4,
    )
    lone = _burst()
    lone.mark_sent(0, perf=0.0, wall_ns=0)
    lone.receive(_reply(lone, 0), 0.005)
    assert "jitter_ms" not in lone.stats().fields()
    assert lone.stats().fields()["rtt_stddev_ms"] == 0.0
    nothing = _burst()
    nothing.mark_sent(0, perf=0.0, wall_ns=0)
    assert nothing.stats().fields() == {"sent": 1, "received": 0, "loss_pct": 100.0}


def test_errors_from_the_error_queue_name_the_problem_and_who_reported_it() -> None:
    # As read from a raw socket after an ARP failure: EHOSTUNREACH, origin ICMP, type 3 code 1.
    ee = struct.pack("=IBBBBII", errno.EHOSTUNREACH, 2, 3, 1, 0, 0, 0)
    offender = struct.pack("=HH", socket.AF_INET, 0) + socket.inet_aton("198.18.250.1") + bytes(8)
    assert describe_icmp_error([(socket.IPPROTO_IP, 11, ee + offender)]) == (
        "host unreachable (ICMP from 198.18.250.1)"
    )
    ee6 = struct.pack("=IBBBBII", errno.EACCES, 3, 1, 1, 0, 0, 0)
    offender6 = (
        struct.pack("=HHI", socket.AF_INET6, 0, 0)
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        + bytes(4)
    )
    assert describe_icmp_error([(socket.IPPROTO_IPV6, 25, ee6 + offender6)]) == (
        "communication administratively prohibited (ICMP from 2001:db8::1)"
    )
    # An error of local origin (no ICMP message, no offender): the errno's text.
    local = struct.pack("=IBBBBII", errno.EMSGSIZE, 1, 0, 0, 0, 0, 0)
    assert describe_icmp_error([(socket.IPPROTO_IP, 11, local)]) == os.strerror(errno.EMSGSIZE)
    assert describe_icmp_error([(socket.SOL_SOCKET, 35, bytes(16))]) is None


# --------------------------------------------------------------------------- configuration


def test_defaults() -> None:
    prober = make_prober("192.0.2.1")
    assert isinstance(prober, IcmpProber)
    assert (prober.count, prober.interval, prober.wait, prober.payload_size) == (5, 0.1, 1.0, 56)
    assert prober.max_loss is None and prober.ip_version == "any"
    assert prober.burst_s == pytest.approx(1.4)


def test_all_settings() -> None:
    prober = make_prober(
        "router.example",
        {
            "count": 10,
            "interval": "1s",
            "wait": "2s",
            "payload_size": 1400,
            "max_loss": "20%",
            "ip_version": "ipv6",
        },
    )
    assert isinstance(prober, IcmpProber)
    assert (prober.host, prober.count, prober.interval, prober.wait) == ("router.example", 10, 1.0, 2.0)
    assert (prober.payload_size, prober.max_loss, prober.ip_version) == (1400, 20.0, "ipv6")
    assert prober.burst_s == pytest.approx(11.0)
    numeric = make_prober("192.0.2.1", {"max_loss": 0})
    assert isinstance(numeric, IcmpProber) and numeric.max_loss == 0.0


@pytest.mark.parametrize(
    ("target", "host"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        (" host.example ", "host.example"),
    ],
)
def test_targets(target: str, host: str) -> None:
    prober = make_prober(target)
    assert isinstance(prober, IcmpProber) and prober.host == host


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("", "expected a host name or IP address"),
        (42, "expected a host name or IP address"),
        ("host.example:22", "ICMP has no ports: write the host name or address alone, got 'host.example:22'"),
        (
            "[2001:db8::1]:22",
            "ICMP has no ports: write the host name or address alone, got '[2001:db8::1]:22'",
        ),
        (
            "http://host.example",
            "expected a host name or IP address without a scheme, got 'http://host.example'",
        ),
        ("host/path", "invalid host name 'host/path'"),
        ("two words", "invalid host name 'two words'"),
    ],
)
def test_bad_targets(target: Any, message: str) -> None:
    assert config_error(target) == f"{SOURCE}: {CHECK}.target: {message}"


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"count": 0}, "count", "must be at least 1"),
        ({"count": 101}, "count", "must be at most 100"),
        ({"count": "5"}, "count", "expected a whole number, got text ('5')"),
        ({"interval": "1ms"}, "interval", "must be at least 10ms"),
        (
            {"interval": 1},
            "interval",
            "expected a duration with a unit such as 500ms, 30s or 5m, got a number (1)",
        ),
        ({"wait": "31s"}, "wait", "must be at most 30s"),
        ({"payload_size": 65508}, "payload_size", "must be at most 65507"),
        ({"max_loss": 100}, "max_loss", "must be at least 0% and below 100% (100% loss always fails)"),
        ({"max_loss": "-1%"}, "max_loss", "must be at least 0% and below 100% (100% loss always fails)"),
        ({"max_loss": "lots"}, "max_loss", "expected a percentage such as 20%, got 'lots'"),
        ({"max_loss": True}, "max_loss", "expected a percentage such as 20%, got True"),
        ({"ip_version": 4}, "ip_version", "must be one of any, ipv4, ipv6; got 4"),
        (
            {"timeout": "1s"},
            "timeout",
            "unknown field; allowed here: count, interval, ip_version, max_loss, payload_size, wait",
        ),
        (
            {"intervall": "1s"},
            "intervall",
            "unknown field (did you mean 'interval'?); allowed here: count, interval, ip_version, max_loss, payload_size, wait",
        ),
    ],
)
def test_bad_settings(settings: dict[str, Any], field: str, message: str) -> None:
    assert config_error("192.0.2.1", settings) == f"{SOURCE}: {SETTINGS}.{field}: {message}"
