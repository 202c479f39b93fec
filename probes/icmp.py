"""ICMP probe: a burst of echo requests, timed by the kernel. Phases ``resolve, setup, rtt``.

One run sends ``count`` echo requests ``interval`` apart and waits for each
reply at most ``wait`` after its request; the run ends as soon as every
reply is in, or ``wait`` after the last request. Requests without a reply in
time are lost (so are requests the kernel refused to send).

Outcome::

    no reply at all        timeout      (unreachable when the kernel reported
                                         an ICMP error such as host unreachable)
    loss above max_loss    assertion    the host answers, but not as the check expects
    otherwise              success

``max_loss`` (a percentage) is unset by default: one reply is enough, which
is the question an availability SLA asks ("is the host there?"). Set it to
make packet loss count as down.

Sockets. An unprivileged datagram ICMP socket (``SOCK_DGRAM``) is tried
first: no privilege needed where ``net.ipv4.ping_group_range`` includes the
agent's group, and the kernel keeps other processes' replies away from it. If
the kernel refuses it, a raw socket (needs ``CAP_NET_RAW`` or root) is used.
A raw ICMP socket sees the ICMP traffic of the whole host, so it is
connected to the target (the kernel then filters by source address), given
an ICMP filter that lets only echo replies through, and replies are matched
by type, identifier, sequence number and a random per-run token echoed in
the payload. If neither socket can be opened, the result is of kind
``internal`` (scored as unknown, never as down: it says nothing about the
target) and its detail names the fix.

Timing. Each reply's receive time is the kernel's (``SO_TIMESTAMPNS``), so a
busy event loop does not inflate RTTs; the event-loop time is the fallback
when the kernel time is missing or implausible (a wall clock step mid-run).
When every reply is in, the ``rtt`` phase (and the run's total) ends at the
last one's arrival, not when the task next ran.

Fields: ``ip``, ``icmp_socket`` (``datagram`` or ``raw``), ``sent``,
``received``, ``loss_pct``, and with replies ``rtt_min_ms``, ``rtt_avg_ms``,
``rtt_max_ms``, ``rtt_stddev_ms`` (population standard deviation, as ping's
``mdev``), and with two replies or more ``jitter_ms`` (mean absolute
difference of consecutive RTTs, in sequence order).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import itertools
import logging
import math
import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field

from slaprobe.configfile import Fields, Node

from ._net import (
    TIMESTAMP_ANCILLARY_SIZE,
    HostPort,
    IpVersion,
    close_later,
    enable_rx_timestamps,
    read_ip_version,
    resolve,
    timestamp_ns,
)
from .base import ErrorKind, FieldScalar, PhaseTrace, ProbeFailure, Prober, ProbeResult

log = logging.getLogger(__name__)

DEFAULT_COUNT = 5
DEFAULT_INTERVAL_S = 0.1
DEFAULT_WAIT_S = 1.0
DEFAULT_PAYLOAD = 56  # ping's default: 64-byte ICMP messages
MAX_PAYLOAD = 65507  # the largest ICMP payload an IPv4 packet can carry

PERMISSION_FIX = (
    "allow unprivileged ping with `sysctl net.ipv4.ping_group_range='0 2147483647'` "
    "or grant CAP_NET_RAW (AmbientCapabilities=CAP_NET_RAW)"
)

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

# Linux raw-socket ICMP filters (linux/icmp.h, linux/icmpv6.h); not in the socket module.
_SOL_RAW = 255
_ICMP_FILTER = 1
_ICMPV6_FILTER = 1

_TOKEN_SIZE = 8
_ANCILLARY_SIZE = TIMESTAMP_ANCILLARY_SIZE
_IP_RECVERR = 11  # linux/in.h
_IPV6_RECVERR = 25  # linux/in6.h
# A timestamp, then struct sock_extended_err (16 bytes) and the offender's sockaddr_in6 (28) at most.
_ERRQUEUE_ANCILLARY_SIZE = _ANCILLARY_SIZE + socket.CMSG_SPACE(16 + 28)
_SO_EE_ORIGIN_ICMP = 2
_SO_EE_ORIGIN_ICMP6 = 3
_ICMP_ERRORS = {
    (_SO_EE_ORIGIN_ICMP, 3, 0): "network unreachable",
    (_SO_EE_ORIGIN_ICMP, 3, 1): "host unreachable",
    (_SO_EE_ORIGIN_ICMP, 3, 9): "network administratively prohibited",
    (_SO_EE_ORIGIN_ICMP, 3, 10): "host administratively prohibited",
    (_SO_EE_ORIGIN_ICMP, 3, 13): "communication administratively prohibited",
    (_SO_EE_ORIGIN_ICMP, 11, 0): "TTL exceeded in transit",
    (_SO_EE_ORIGIN_ICMP6, 1, 0): "no route to destination",
    (_SO_EE_ORIGIN_ICMP6, 1, 1): "communication administratively prohibited",
    (_SO_EE_ORIGIN_ICMP6, 1, 3): "address unreachable",
    (_SO_EE_ORIGIN_ICMP6, 3, 0): "hop limit exceeded in transit",
}

# Raw sockets see every echo reply on the host: identifiers from one counter keep this
# process's concurrent runs apart (the payload token guards against other processes).
_identifiers = itertools.count(random.randrange(0x10000))
_warned: set[int] = set()
# Address families whose unprivileged datagram ICMP socket the kernel refused (see _open_socket).
_datagram_refused: set[int] = set()


_FILLER = bytes(range(256)) * (MAX_PAYLOAD // 256 + 1)  # the payload after the token, made once


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total >> 16) + (total & 0xFFFF)
    return ~total & 0xFFFF


@dataclass(frozen=True)
class RttStats:
    sent: int
    received: int
    loss_pct: float
    rtts: tuple[float, ...]  # seconds, in sequence order

    def fields(self) -> dict[str, FieldScalar]:
        out: dict[str, FieldScalar] = {
            "sent": self.sent,
            "received": self.received,
            "loss_pct": round(self.loss_pct, 3),
        }
        if self.rtts:
            ms = [r * 1000.0 for r in self.rtts]
            mean = sum(ms) / len(ms)
            out["rtt_min_ms"] = round(min(ms), 4)
            out["rtt_avg_ms"] = round(mean, 4)
            out["rtt_max_ms"] = round(max(ms), 4)
            out["rtt_stddev_ms"] = round(math.sqrt(sum((x - mean) ** 2 for x in ms) / len(ms)), 4)
        if len(self.rtts) >= 2:
            diffs = [abs(b - a) * 1000.0 for a, b in itertools.pairwise(self.rtts)]
            out["jitter_ms"] = round(sum(diffs) / len(diffs), 4)
        return out


@dataclass
class EchoBurst:
    """Builds the requests of one run and matches the replies to them (no I/O).

    ``raw`` says whether packets come from a raw socket: IPv4 raw sockets
    deliver the IP header too, and only raw sockets need the identifier
    checked (the kernel gives a datagram socket its own identifier and only
    that identifier's replies).
    """

    ipv6: bool
    raw: bool
    ident: int
    token: bytes
    payload_size: int
    wait: float
    sent_at: dict[int, tuple[float, int]] = field(default_factory=dict)  # seq -> (perf_counter, time_ns)
    rtts: dict[int, float] = field(default_factory=dict)
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    last_arrival: float = 0.0  # perf_counter time the latest reply arrived (the kernel's, if stamped)

    @property
    def sent(self) -> int:
        return len(self.sent_at)

    @property
    def received(self) -> int:
        return len(self.rtts)

    def request(self, seq: int) -> bytes:
        kind = ICMPV6_ECHO_REQUEST if self.ipv6 else ICMP_ECHO_REQUEST
        payload = (self.token + _FILLER[: max(0, self.payload_size - len(self.token))])[: self.payload_size]
        packet = struct.pack("!BBHHH", kind, 0, 0, self.ident, seq) + payload
        if self.ipv6:
            return packet  # the kernel computes ICMPv6 checksums (they cover the IPv6 pseudo-header)
        return packet[:2] + struct.pack("!H", checksum(packet)) + packet[4:]

    def mark_sent(self, seq: int, perf: float, wall_ns: int) -> None:
        self.sent_at[seq] = (perf, wall_ns)

    def receive(self, data: bytes, perf: float, kernel_ns: int | None = None) -> bool:
        """Match one received packet; True when it is a reply to us seen for the first time.

        The RTT is the kernel's receive time minus the send time when the
        kernel time is plausible (not negative, not later than the event
        loop's own reading), else the event loop's.
        """
        if not self.ipv6 and self.raw:
            if len(data) < 20 or data[0] >> 4 != 4:
                return False
            data = data[(data[0] & 0x0F) * 4 :]
        if len(data) < 8:
            return False
        kind, code, _, ident, seq = struct.unpack_from("!BBHHH", data)
        if kind != (ICMPV6_ECHO_REPLY if self.ipv6 else ICMP_ECHO_REPLY) or code != 0:
            return False
        if self.raw and ident != self.ident:
            return False
        sent = self.sent_at.get(seq)
        if sent is None:
            return False
        echoed = data[8 : 8 + len(self.token)]
        if echoed != self.token[: len(echoed)] or len(echoed) < min(len(self.token), self.payload_size):
            return False
        if seq in self.rtts:
            self.duplicates += 1
            return False
        rtt = perf - sent[0]
        if kernel_ns is not None:
            kernel_rtt = (kernel_ns - sent[1]) / 1e9
            if 0 <= kernel_rtt <= rtt:
                rtt = kernel_rtt
        if rtt > self.wait:
            return False  # too late: counted as lost
        self.rtts[seq] = rtt
        self.last_arrival = max(self.last_arrival, sent[0] + rtt)
        return True

    def stats(self) -> RttStats:
        sent = self.sent
        received = self.received
        loss = 100.0 * (sent - received) / sent if sent else 100.0
        return RttStats(sent, received, loss, tuple(self.rtts[s] for s in sorted(self.rtts)))


def describe_icmp_error(ancdata: list[tuple[int, int, bytes]]) -> str | None:
    """Describe an entry of a socket's error queue: what went wrong and who said so."""
    for level, kind, value in ancdata:
        if (level, kind) not in ((socket.IPPROTO_IP, _IP_RECVERR), (socket.IPPROTO_IPV6, _IPV6_RECVERR)):
            continue
        if len(value) < 16:
            continue
        ee_errno, origin, icmp_type, icmp_code = struct.unpack_from("=IBBB", value)
        what = _ICMP_ERRORS.get((origin, icmp_type, icmp_code)) or os.strerror(ee_errno)
        offender = value[16:]
        source = ""
        if len(offender) >= 8 and struct.unpack_from("=H", offender)[0] == socket.AF_INET:
            source = socket.inet_ntop(socket.AF_INET, offender[4:8])
        elif len(offender) >= 24 and struct.unpack_from("=H", offender)[0] == socket.AF_INET6:
            source = socket.inet_ntop(socket.AF_INET6, offender[8:24])
        if origin in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6) and source:
            return f"{what} (ICMP from {source})"
        return what
    return None


def _parse_host(node: Node) -> str:
    text = node.value
    if not isinstance(text, str) or not text.strip():
        node.fail("expected a host name or IP address")
    host = text.strip()
    if "://" in host:
        node.fail(f"expected a host name or IP address without a scheme, got {host!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    if ":" in host:
        node.fail(f"ICMP has no ports: write the host name or address alone, got {text.strip()!r}")
    if any(c.isspace() or ord(c) < 0x20 or c in "/\\@?#[]" for c in host):
        node.fail(f"invalid host name {host!r}")
    try:
        host.encode("idna")
    except UnicodeError as exc:
        node.fail(f"invalid host name {host!r}: {exc}")
    return host


def _read_max_loss(settings: Fields) -> float | None:
    node = settings.raw("max_loss")
    if node is None or node.value is None:
        return None
    raw = node.value
    if isinstance(raw, str) and raw.strip().endswith("%"):
        try:
            raw = float(raw.strip()[:-1])
        except ValueError:
            node.fail(f"expected a percentage such as 20%, got {node.value!r}")
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        node.fail(f"expected a percentage such as 20%, got {node.value!r}")
    if not 0 <= raw < 100:
        node.fail("must be at least 0% and below 100% (100% loss always fails)")
    return float(raw)


def _open_socket(family: int) -> tuple[socket.socket, bool]:
    """An ICMP socket: (socket, is_raw). Datagram first, raw when the kernel refuses that.

    A refusal of the datagram socket is remembered for the process (per address
    family), so later runs go straight to the raw socket instead of paying a
    refused ``socket()`` call inside ``setup`` each time. When the raw socket is
    refused too, the memo is dropped: a fixed ``ping_group_range`` then counts
    from the next run on, without restarting the agent.
    """
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    if family not in _datagram_refused:
        try:
            return socket.socket(family, socket.SOCK_DGRAM, proto), False
        except OSError as exc:
            if exc.errno == errno.EAFNOSUPPORT:
                raise
            # EACCES: the agent's group is outside ping_group_range; EPROTONOSUPPORT: an old kernel.
            _datagram_refused.add(family)
    try:
        return socket.socket(family, socket.SOCK_RAW, proto), True
    except OSError as exc:
        _datagram_refused.discard(family)
        if exc.errno not in (errno.EACCES, errno.EPERM):
            raise
        if family not in _warned:
            _warned.add(family)
            log.warning("icmp probes cannot open an ICMP socket: %s", PERMISSION_FIX)
        raise ProbeFailure(
            ErrorKind.INTERNAL, f"cannot open an ICMP socket ({exc.strerror}): {PERMISSION_FIX}"
        ) from exc


def _restrict_to_echo_replies(sock: socket.socket, ipv6: bool) -> None:
    """Let only echo replies reach a raw socket (less wake-ups on a host with much ICMP)."""
    try:
        if ipv6:
            words = [0xFFFFFFFF] * 8
            words[ICMPV6_ECHO_REPLY >> 5] &= ~(1 << (ICMPV6_ECHO_REPLY & 31))
            sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMPV6_FILTER, struct.pack("=8I", *words))
        else:
            sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("=I", 0xFFFFFFFF & ~(1 << ICMP_ECHO_REPLY)))
    except OSError:
        pass  # an optimisation only: replies are matched in user space anyway


class IcmpProber(Prober):
    """Echo requests to one host; see the module docstring for the outcome rules."""

    type_name = "icmp"

    def __init__(
        self,
        host: str,
        ip_version: IpVersion = "any",
        *,
        count: int = DEFAULT_COUNT,
        interval: float = DEFAULT_INTERVAL_S,
        wait: float = DEFAULT_WAIT_S,
        payload_size: int = DEFAULT_PAYLOAD,
        max_loss: float | None = None,
    ) -> None:
        self.host = host
        self._endpoint = HostPort(host, 0)  # parsed once: an IP literal is recognised once per check
        self.ip_version = ip_version
        self.count = count
        self.interval = interval
        self.wait = wait
        self.payload_size = payload_size
        self.max_loss = max_loss

    @property
    def burst_s(self) -> float:
        """The longest a run takes after resolving: keep the check's timeout above it."""
        return (self.count - 1) * self.interval + self.wait

    @property
    def min_timeout_s(self) -> float:
        return self.burst_s

    @classmethod
    def from_config(cls, target: Node, settings: Fields) -> IcmpProber:
        host = _parse_host(target)
        ip_version = read_ip_version(settings)
        count = settings.int("count", DEFAULT_COUNT, min=1, max=100)
        interval = settings.duration("interval", DEFAULT_INTERVAL_S, min=0.01, max=10.0)
        wait = settings.duration("wait", DEFAULT_WAIT_S, min=0.001, max=30.0)
        payload_size = settings.int("payload_size", DEFAULT_PAYLOAD, min=0, max=MAX_PAYLOAD)
        max_loss = _read_max_loss(settings)
        return cls(
            host,
            ip_version,
            count=count,
            interval=interval,
            wait=wait,
            payload_size=payload_size,
            max_loss=max_loss,
        )

    async def probe(self, trace: PhaseTrace) -> ProbeResult:
        family, sockaddr = await resolve(self._endpoint, self.ip_version, trace)
        trace.enter("setup")
        ipv6 = family == socket.AF_INET6
        try:
            sock, raw = _open_socket(family)
        except OSError as exc:  # EAFNOSUPPORT: no IPv6 on this host
            raise ProbeFailure(ErrorKind.UNREACHABLE, f"cannot open an ICMP socket: {exc.strerror}") from exc
        trace.fields["icmp_socket"] = "raw" if raw else "datagram"
        try:
            sock.setblocking(False)
            if raw:
                _restrict_to_echo_replies(sock, ipv6)
            enable_rx_timestamps(sock)  # without kernel times, the event loop's
            # Report ICMP errors about our requests ("host unreachable" is a soft error that
            # a connected socket would otherwise never hear about).
            with contextlib.suppress(OSError):
                if ipv6:
                    sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
            try:
                # Connecting makes the kernel drop ICMP from other sources and report
                # errors such as "host unreachable" for this destination on the socket.
                sock.connect(sockaddr)
            except OSError as exc:
                raise ProbeFailure(
                    ErrorKind.UNREACHABLE, f"cannot reach {sockaddr[0]}: {exc.strerror or exc}"
                ) from exc
            burst = EchoBurst(
                ipv6=ipv6,
                raw=raw,
                ident=next(_identifiers) & 0xFFFF if raw else 0,
                token=os.urandom(_TOKEN_SIZE),
                payload_size=self.payload_size,
                wait=self.wait,
            )
            trace.fields["sent"] = trace.fields["received"] = 0
            trace.enter("rtt")
            await self._run_burst(sock, burst, trace)
            if burst.received == self.count:
                # Every reply is in: the target's part ended at the last one's arrival.
                trace.stop(at=burst.last_arrival)
        finally:
            close_later(sock)  # after the result, outside its clock
        return self._outcome(burst, trace)

    async def _run_burst(self, sock: socket.socket, burst: EchoBurst, trace: PhaseTrace) -> None:
        loop = asyncio.get_running_loop()
        all_in = asyncio.Event()
        bufsize = self.payload_size + 128  # room for IP (and IP option) headers

        def on_readable() -> None:
            # ICMP errors for this destination (IP_RECVERR) first: while any is queued the
            # socket stays readable, and reading the queue also clears the pending error.
            while True:
                try:
                    _, ancdata, _, _ = sock.recvmsg(bufsize, _ERRQUEUE_ANCILLARY_SIZE, socket.MSG_ERRQUEUE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    burst.errors.append(exc.strerror or str(exc))
                    break
                burst.errors.append(describe_icmp_error(ancdata) or "an ICMP error")
            while True:
                try:
                    data, ancdata, _, _ = sock.recvmsg(bufsize, _ANCILLARY_SIZE)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # a pending error not (yet) in the queue
                    burst.errors.append(exc.strerror or str(exc))
                    return
                if burst.receive(data, time.perf_counter(), timestamp_ns(ancdata)):
                    trace.fields["received"] = burst.received
                    if burst.received == self.count:
                        all_in.set()

        fd = sock.fileno()
        try:
            start = loop.time()
            for seq in range(self.count):
                if seq:
                    await asyncio.sleep(max(0.0, start + seq * self.interval - loop.time()))
                packet = burst.request(seq)
                burst.mark_sent(seq, time.perf_counter(), time.time_ns())
                trace.fields["sent"] = burst.sent
                for attempt in (1, 2):
                    try:
                        sock.send(packet)
                    except (BlockingIOError, InterruptedError):
                        break  # the socket buffer is full: this request is lost
                    except OSError as exc:
                        # A send first reports an error pending from an earlier request (and
                        # clears it); a second failure is this request's own (no route, say).
                        burst.errors.append(exc.strerror or str(exc))
                        if attempt == 2:
                            break
                    else:
                        break
                if seq == 0:
                    # Registered after the first request is out, not before: the epoll_ctl call
                    # is then not between the clock's start and the request leaving (a reply
                    # already queued is reported at once: epoll is level-triggered).
                    loop.add_reader(fd, on_readable)
            last = burst.sent_at[self.count - 1][0]
            remaining = last + self.wait - time.perf_counter()
            if remaining > 0:
                try:
                    async with asyncio.timeout(remaining):
                        await all_in.wait()
                except TimeoutError:
                    pass
        finally:
            loop.remove_reader(fd)

    def _outcome(self, burst: EchoBurst, trace: PhaseTrace) -> ProbeResult:
        stats = burst.stats()
        trace.fields.update(stats.fields())
        counted = f"{stats.received} of {stats.sent} replies"
        if stats.received == 0:
            if burst.errors:
                raise ProbeFailure(ErrorKind.UNREACHABLE, f"{self.host}: {burst.errors[-1]}; {counted}")
            raise ProbeFailure(
                ErrorKind.TIMEOUT,
                f"no reply from {self.host} to {stats.sent} echo requests within {self.wait:g}s each",
            )
        avg = trace.fields["rtt_avg_ms"]
        if self.max_loss is not None and stats.loss_pct > self.max_loss:
            raise ProbeFailure(
                ErrorKind.ASSERTION,
                f"loss {stats.loss_pct:g}% above max_loss {self.max_loss:g}% ({counted}, rtt avg {avg} ms)",
            )
        return ProbeResult(True, trace.close(), None, f"{counted}, rtt avg {avg} ms", trace.fields)
