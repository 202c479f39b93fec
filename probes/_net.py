"""Network steps shared by probes: resolve, connect, TLS, with errors mapped to ErrorKind.

Each step enters its phase on the trace, so the phase names mean the same
thing in every probe (``resolve``, ``connect``, ``tls``).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import errno
import functools
import ipaddress
import math
import os
import re
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, cast

from slaprobe.configfile import Fields, Node

from .base import ErrorKind, FieldScalar, PhaseTrace, ProbeFailure

IpVersion = Literal["any", "ipv4", "ipv6"]

SockAddr = tuple[str, int] | tuple[str, int, int, int]

# Linux: create sockets non-blocking in the socket() call itself (Python then skips its ioctl).
_SOCK_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)

_FAMILIES = {"any": socket.AF_UNSPEC, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}

SO_TIMESTAMPNS: int = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python names it only on some builds
SCM_TIMESTAMPNS: int = getattr(socket, "SCM_TIMESTAMPNS", SO_TIMESTAMPNS)
TIMESTAMP_ANCILLARY_SIZE = socket.CMSG_SPACE(16)  # one struct timespec
_TIMESPEC = struct.Struct("=qq")
_timestamp_holder: list[socket.socket] = []


def enable_rx_timestamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp what ``sock`` receives (``SO_TIMESTAMPNS``); False if it cannot.

    A probe's phase then ends when the bytes arrived, not when this task got to
    run after they did: on an idle VM, waking the process costs 0.3-0.5 ms, and
    that is not the target's time (ping reads its RTTs the same way).

    The first socket on the host to ask for receive timestamps switches them on
    in the kernel (a static key: code patching, measured here at 70 µs typical and
    3-4 ms at p99 per ``setsockopt``), and the last to close switches them off. A
    socket held open for the life of the process keeps them on, so each probe's
    ``setsockopt`` costs ~5 µs. The kernel then stamps every packet it receives
    (one clock read each), as it does whenever ping or an NTP daemon runs.
    """
    try:
        if not _timestamp_holder:
            holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            holder.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            _timestamp_holder.append(holder)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def timestamp_ns(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The ``SCM_TIMESTAMPNS`` receive time (CLOCK_REALTIME, ns) in ``recvmsg`` ancillary data."""
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(value) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(value)
            return int(sec) * 1_000_000_000 + int(nsec)
    return None


def realtime_to_perf(wall_ns: int) -> float:
    """A CLOCK_REALTIME instant in ``perf_counter`` terms, through the two clocks read now.

    Never later than now; a clock step between the kernel's stamp and now shows
    as a boundary the trace clamps into its phase.
    """
    now = time.perf_counter()
    return min(now, now - (time.time_ns() - wall_ns) / 1e9)


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    @functools.cached_property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address when ``host`` is an IP literal, else None: parsed once per prober, not per run.

        A name costs ~11 µs to turn down (both parsers raise), more on a cold cache,
        and that is inside the probe's clock.
        """
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    @property
    def is_ip_literal(self) -> bool:
        return self.ip is not None

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(node: Node, default_port: int | None = None) -> HostPort:
    """Parse ``host:port`` or ``[v6addr]:port`` from a target field."""
    text = node.value
    if not isinstance(text, str) or not text.strip():
        node.fail("expected host:port")
    text = text.strip()
    if "://" in text:
        node.fail(f"expected host:port without a scheme, got {text!r}")
    host: str
    port_text: str | None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            node.fail(f"unclosed '[' in {text!r}; write IPv6 targets as [::1]:443")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            node.fail(f"expected ':port' after ']' in {text!r}")
        port_text = rest[1:] if rest else None
        if host and not _is_ipv6(host):
            node.fail(f"only IPv6 addresses go in brackets, got [{host}] in {text!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        node.fail(f"IPv6 addresses need brackets, as in [2001:db8::1]:443; got {text!r}")
    else:
        host, port_text = text, None
    if not host:
        node.fail(f"missing host in {text!r}")
    check_host(node, host)
    if port_text is None:
        if default_port is None:
            node.fail(f"missing port in {text!r}; write host:port")
        return HostPort(host, default_port)
    # isdigit() alone accepts characters such as '²' that int() then rejects.
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not (0 < int(port_text) < 65536):
        node.fail(f"port must be a number from 1 to 65535, got {port_text!r}")
    return HostPort(host, int(port_text))


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def check_host(node: Node, host: str) -> None:
    """Reject host names that could only fail at probe time (the resolver encodes them as IDNA)."""
    if any(c.isspace() or ord(c) < 0x20 or c in "/\\@?#[]" for c in host):
        node.fail(f"invalid host name {host!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return
    try:
        host.encode("idna")
    except UnicodeError as exc:
        if "label empty or too long" in str(exc):
            node.fail(f"invalid host name {host!r}: each part between dots needs 1-63 characters")
        node.fail(f"invalid host name {host!r}: {exc}")


def read_ip_version(settings: Fields) -> IpVersion:
    value: IpVersion = settings.choice("ip_version", ("any", "ipv4", "ipv6"), "any")
    return value


async def resolve(target: HostPort, ip_version: IpVersion, trace: PhaseTrace) -> tuple[int, SockAddr]:
    """Return (family, sockaddr) for the first usable address."""
    trace.enter("resolve")
    addr = target.ip
    if addr is not None:
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        if ip_version == "ipv4" and family != socket.AF_INET:
            raise ProbeFailure(ErrorKind.DNS, f"{target.host} is not an IPv4 address (ip_version: ipv4)")
        if ip_version == "ipv6" and family != socket.AF_INET6:
            raise ProbeFailure(ErrorKind.DNS, f"{target.host} is not an IPv6 address (ip_version: ipv6)")
        sockaddr: SockAddr = (
            (target.host, target.port, 0, 0) if family == socket.AF_INET6 else (target.host, target.port)
        )
        trace.fields["ip"] = target.host
        return family, sockaddr
    known = _hosts.lookup(target.host, ip_version)
    if known is not None:
        family, ip = known
        sockaddr = (ip, target.port, 0, 0) if family == socket.AF_INET6 else (ip, target.port)
        trace.fields["ip"] = ip
        return family, sockaddr
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            target.host, target.port, family=_FAMILIES[ip_version], type=socket.SOCK_STREAM
        )
    except socket.gaierror as exc:
        raise ProbeFailure(ErrorKind.DNS, f"cannot resolve {target.host}: {exc.strerror}") from exc
    except UnicodeError as exc:  # the resolver encodes names as IDNA; bad labels fail here
        raise ProbeFailure(ErrorKind.DNS, f"cannot resolve {target.host}: {exc}") from exc
    for family, _, _, _, raw in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            sockaddr = cast(SockAddr, raw)
            trace.fields["ip"] = str(sockaddr[0])
            return family, sockaddr
    raise ProbeFailure(ErrorKind.DNS, f"no addresses for {target.host}")


class HostsFile:
    """``/etc/hosts``, parsed once per change of the file, to answer names it lists without a thread.

    ``loop.getaddrinfo`` runs in the default executor: a hop to a worker thread and
    back through the event loop's self-pipe for every run, 0.7 ms more than the
    lookup itself on a busy 2-core host (``bench/RESULTS.md``). Names listed in the
    hosts file (``localhost``, names an operator pins) are answered here instead,
    only where the C library would answer them from the file too:

    * ``/etc/nsswitch.conf`` names ``files`` first for ``hosts`` (otherwise another
      source, systemd-resolved say, could answer differently): no answer here;
    * the name maps to exactly one address of the wanted family. With both IPv4
      and IPv6 addresses (``ip_version: any``) getaddrinfo orders them by RFC 6724,
      which this does not imitate: no answer here, the caller asks getaddrinfo.

    Both files are checked with ``stat`` at most once every ``recheck_s``
    (a second): the two calls with their Python around them took ~11 µs a
    lookup here, inside the probe's clock. An edited hosts file counts from
    the first run a second after the edit.
    """

    __slots__ = ("_checked", "_key", "_names", "clock", "hosts_path", "nsswitch_path", "recheck_s")

    def __init__(
        self,
        hosts_path: str = "/etc/hosts",
        nsswitch_path: str = "/etc/nsswitch.conf",
        recheck_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hosts_path = hosts_path
        self.nsswitch_path = nsswitch_path
        self.recheck_s = recheck_s
        self.clock = clock
        self._checked = -math.inf  # time.monotonic() of the last stat
        self._key: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
        self._names: dict[str, list[tuple[socket.AddressFamily, str]]] = {}

    def lookup(self, name: str, ip_version: IpVersion) -> tuple[socket.AddressFamily, str] | None:
        """(family, address) when the hosts file alone answers ``name``; None: ask getaddrinfo."""
        if not name.isascii() or name.endswith("."):
            return None
        now = self.clock()
        if now - self._checked >= self.recheck_s:
            try:
                key = (_stat_key(self.hosts_path), _stat_key(self.nsswitch_path))
            except OSError:
                self._key, self._names = None, {}
                return None
            self._checked = now
            if key != self._key:
                self._names = self._load()
                self._key = key
        found = self._names.get(name.lower())
        if not found:
            return None
        wanted = _FAMILIES[ip_version]
        matches = {entry for entry in found if wanted in (socket.AF_UNSPEC, entry[0])}
        if len(matches) != 1:
            return None
        return matches.pop()

    def _load(self) -> dict[str, list[tuple[socket.AddressFamily, str]]]:
        if not _files_first(self.nsswitch_path):
            return {}
        names: dict[str, list[tuple[socket.AddressFamily, str]]] = {}
        try:
            with open(self.hosts_path, encoding="utf-8", errors="replace") as fh:
                lines = fh.readlines()
        except OSError:
            return {}
        for line in lines:
            words = line.partition("#")[0].split()
            if len(words) < 2 or "%" in words[0]:  # a scoped address needs getaddrinfo's sockaddr
                continue
            try:
                addr = ipaddress.ip_address(words[0])
            except ValueError:
                continue
            entry = (socket.AF_INET6 if addr.version == 6 else socket.AF_INET, str(addr))
            for alias in words[1:]:
                names.setdefault(alias.lower(), []).append(entry)
        return names


def _stat_key(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _files_first(nsswitch_path: str) -> bool:
    """Whether the ``hosts:`` line of nsswitch.conf starts with ``files``."""
    try:
        with open(nsswitch_path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                database, colon, sources = line.partition("#")[0].partition(":")
                if colon and database.strip() == "hosts":
                    return sources.split()[:1] == ["files"]
    except OSError:
        pass
    return False


_hosts = HostsFile()


async def connect(family: int, sockaddr: SockAddr, trace: PhaseTrace, nodelay: bool = True) -> socket.socket:
    """Open a fresh TCP connection (never pooled: pooling would hide connect time).

    ``nodelay=False`` for a caller that sends its request in one ``send`` (plain
    HTTP/1.1, a DNS query): Nagle's algorithm cannot delay a first segment, and
    each system call inside ``connect`` counts (tens of µs each on a busy gVisor
    host). The socket is created non-blocking (no separate ``ioctl``) for the same reason.
    """
    trace.enter("connect")
    sock: socket.socket | None = None
    try:
        # Inside the try: without IPv6 support, creating the socket already fails (EAFNOSUPPORT).
        sock = socket.socket(family, socket.SOCK_STREAM | _SOCK_NONBLOCK)
        if not _SOCK_NONBLOCK:
            sock.setblocking(False)
        await _connect(sock, sockaddr)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException as exc:
        if sock is not None:
            sock.close()
        where = _fmt(sockaddr)
        if isinstance(exc, ConnectionRefusedError):
            raise ProbeFailure(ErrorKind.REFUSED, f"connection refused by {where}") from exc
        if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
            kind = ErrorKind.RESET if exc.errno == errno.ECONNRESET else ErrorKind.UNREACHABLE
            # asyncio's strerror is "Connect call failed (addr)": name the errno instead.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            detail = f"cannot connect to {where}: {reason}"
            raise ProbeFailure(kind, detail) from exc
        raise
    return sock


async def _connect(sock: socket.socket, sockaddr: SockAddr) -> None:
    """Connect a non-blocking socket; look whether it is already connected before parking.

    Near targets (loopback, the same LAN) answer the SYN before ``connect()``
    returns, yet it still says EINPROGRESS. ``loop.sock_connect`` then always
    registers the socket with the selector and comes back two loop turns and
    two ``epoll_ctl`` calls later: 0.73 ms median on this VM against 0.16 ms for
    one ``poll`` with no timeout first (interleaved, 400 loopback connects each).
    A far target costs that one extra ``poll``.
    """
    err = sock.connect_ex(sockaddr)
    if err in (errno.EINPROGRESS, errno.EINTR, errno.EAGAIN):
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        if not poller.poll(0):
            await wait_ready(asyncio.get_running_loop(), sock.fileno(), writable=True)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))  # OSError picks the subclass: ConnectionRefusedError, ...


async def wait_ready(loop: asyncio.AbstractEventLoop, fd: int, writable: bool = False) -> None:
    """Until the selector reports ``fd`` readable (or writable): one registration, removed after."""
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if writable:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


def _fmt(sockaddr: SockAddr) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class TlsOptions:
    """TLS settings shared by the HTTP and TCP probes (same keys in both)."""

    verify: bool = True
    ca_file: str | None = None
    server_name: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    KEYS: ClassVar[tuple[str, ...]] = ("tls_verify", "ca_file", "server_name", "client_cert", "client_key")

    @classmethod
    def read(cls, settings: Fields) -> TlsOptions:
        server_name: str | None = settings.str("server_name", None)
        if server_name is not None:
            server_name = server_name.strip()
            node = settings.raw("server_name")
            assert node is not None
            check_host(node, server_name)
        client_cert, client_key = read_client_cert(settings)
        return cls(
            verify=settings.bool("tls_verify", True),
            ca_file=settings.str("ca_file", None),
            server_name=server_name,
            client_cert=client_cert,
            client_key=client_key,
        )

    def context(self, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """Load the CA store and the client certificate (file I/O: see :meth:`load_context`).

        A file the agent cannot read is ``internal``: it says nothing about the target.
        """
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            detail = f"cannot load ca_file {self.ca_file}: {_why(exc)}"
            raise ProbeFailure(ErrorKind.INTERNAL, detail) from exc
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            try:
                ctx.load_cert_chain(self.client_cert, self.client_key)
            except (OSError, ssl.SSLError) as exc:
                what = (
                    self.client_cert if self.client_key is None else f"{self.client_cert} / {self.client_key}"
                )
                detail = f"cannot load client_cert {what}: {_why(exc)}"
                raise ProbeFailure(ErrorKind.INTERNAL, detail) from exc
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx

    async def load_context(self, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """:meth:`context` in a thread, so loading files never blocks the event loop."""
        return await asyncio.to_thread(self.context, alpn)


def read_client_cert(settings: Fields) -> tuple[str | None, str | None]:
    """``client_cert`` and ``client_key``: paths of PEM files on the agent host."""
    client_cert: str | None = settings.str("client_cert", None)
    client_key: str | None = settings.str("client_key", None)
    for key, value in (("client_cert", client_cert), ("client_key", client_key)):
        if value is not None and "-----BEGIN" in value:
            node = settings.raw(key)
            assert node is not None
            node.fail(
                "expected the path of a PEM file on the agent host, got PEM text "
                "(keys do not belong in the catalogue)"
            )
    if client_key is not None and client_cert is None:
        node = settings.raw("client_key")
        assert node is not None
        node.fail("client_key needs client_cert (the certificate it belongs to)")
    return client_cert, client_key


def tls_error_detail(exc: ssl.SSLError, when: str) -> str:
    """Say what a TLS alert means for the probe, ``when`` being "before any response" and so on.

    With TLS 1.3 a server judges the client certificate after the handshake, so a
    missing or rejected one shows up as an alert on the first read.
    """
    reason = str(exc.reason or exc)
    upper = reason.upper()
    if "CERTIFICATE_REQUIRED" in upper:
        return f"the server requires a client certificate (set client_cert): TLS alert {reason} {when}"
    if any(a in upper for a in ("ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA", "ALERT_CERTIFICATE_UNKNOWN")):
        return f"the server rejected the client certificate: TLS alert {reason} {when}"
    return f"TLS error {when}: {exc}"


def reset_after_tls_hint(fields: dict[str, FieldScalar], client_cert: str | None) -> str:
    """A hint for a reset on the first read after a TLS 1.3 handshake without a client certificate.

    A server that requires one sends its alert and closes; when our request is
    still unread there, its kernel answers with an RST that can overtake the alert.
    """
    if client_cert is None and fields.get("tls_version") == "TLSv1.3":
        return " (right after a TLS 1.3 handshake: the server may require a client certificate)"
    return ""


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def record_tls_facts(tls: ssl.SSLObject | ssl.SSLSocket, trace: PhaseTrace) -> None:
    """``tls_version`` and ``cert_days_left`` of an established TLS connection.

    The expiry is read from the certificate's DER form: ``getpeercert()`` builds a
    dict of every field and ``ssl.cert_time_to_seconds`` runs strptime, about
    0.8 ms of CPU per probe together; the DER form is also the only one there is
    without verification (``tls_verify: false``), where the expiry of an internal,
    self-signed certificate still matters.
    """
    trace.fields["tls_version"] = str(tls.version())
    der = tls.getpeercert(binary_form=True)
    expires = der_not_after(der) if der else None
    if expires is not None:
        trace.fields["cert_days_left"] = round((expires - time.time()) / 86400.0, 3)


class SockStream:
    """A connected non-blocking socket, plain or TLS, read and written straight from the event loop.

    No transport, protocol or stream objects in between: a read is ``recv`` on
    the socket, and only when it would block does the task wait, once, for the
    selector to report the socket readable (``loop.sock_recv`` does the same for
    plain sockets, but refuses ``ssl.SSLSocket``). With TLS, OpenSSL reads and
    writes the socket itself (:func:`tls_handshake`). Measured here: about 1 ms
    less CPU per HTTPS probe than asyncio's SSL protocol (with the DER expiry
    and the hosts file); an ``SSLObject`` over memory BIOs driven from here
    measured the same as this and is more code. The handshake itself (OpenSSL
    3.0: 1.65 ms of client CPU) is what keeps ``tls`` above blackbox_exporter's
    (``bench/RESULTS.md``).
    """

    __slots__ = ("_loop", "_stamped", "rx_ns", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._stamped = False
        #: The kernel's receive time (CLOCK_REALTIME ns) of the last data read, with :meth:`stamp_reads`.
        self.rx_ns: int | None = None

    def stamp_reads(self) -> None:
        """Read with the kernel's receive times from now on (before or after a TLS handshake).

        OpenSSL reads a TLS socket itself, without ancillary data, so there each
        read first peeks at the encrypted bytes waiting in the kernel (``MSG_PEEK``:
        nothing is consumed) for their receive time: one more system call per read.
        """
        self._stamped = enable_rx_timestamps(self.sock)

    def rx_perf(self) -> float | None:
        """When the last data read arrived, in ``perf_counter`` terms; None without a kernel time."""
        return None if self.rx_ns is None else realtime_to_perf(self.rx_ns)

    async def wait(self, writable: bool = False) -> None:
        """Until the selector reports the socket readable (or writable)."""
        await wait_ready(self._loop, self.sock.fileno(), writable)

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                await self.wait(writable=True)
                continue
            except ssl.SSLWantReadError:  # a TLS renegotiation or key update in progress
                await self.wait()
                continue
            view = view[sent:]

    def send_nowait(self, data: bytes) -> None:
        """Send what the socket takes now, ignoring errors (a courtesy such as HTTP/2's GOAWAY)."""
        with contextlib.suppress(OSError):  # ssl.SSLError is an OSError
            self.sock.send(data)

    async def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" at the end of the stream."""
        while True:
            try:
                if self._stamped:
                    if isinstance(self.sock, ssl.SSLSocket):
                        self._peek_rx_time()
                        return self.sock.recv(size)
                    data, ancdata, _, _ = self.sock.recvmsg(size, TIMESTAMP_ANCILLARY_SIZE)
                    if data:
                        # TCP: the arrival of the newest segment this read took data from.
                        self.rx_ns = timestamp_ns(ancdata) or self.rx_ns
                    return data
                return self.sock.recv(size)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                await self.wait()
            except ssl.SSLWantWriteError:
                await self.wait(writable=True)

    def _peek_rx_time(self) -> None:
        """The receive time of the encrypted bytes waiting under a TLS socket (if any), unread.

        A peek over everything queued (up to 64 KiB) reports the newest segment's
        time, as a plain read does. Bytes OpenSSL already holds decrypted were
        timed by the peek before the read that fetched them.
        """
        tls = self.sock
        if not isinstance(tls, ssl.SSLSocket) or tls.pending():
            return
        try:
            _, ancdata, _, _ = socket.socket.recvmsg_into(
                tls, [_peek_buffer], TIMESTAMP_ANCILLARY_SIZE, socket.MSG_PEEK | socket.MSG_DONTWAIT
            )
        except OSError:  # nothing waiting (EAGAIN), or an error the real read will report
            return
        self.rx_ns = timestamp_ns(ancdata) or self.rx_ns

    def close(self) -> None:
        close_later(self.sock)


_peek_buffer = bytearray(65536)  # scratch for MSG_PEEK (the bytes are not used; one event loop thread reads)


def close_later(sock: socket.socket) -> None:
    """Close ``sock`` once the current callback is done: after the probe's result, outside its clock.

    Closing a connected socket is not the target's time: on loopback the kernel
    runs the peer's side of the teardown inside ``close()`` itself (0.2-0.9 ms
    on a busy 2-core VM). asyncio's transports defer their close the same way
    (``transport.close()`` closes on the next loop iteration).
    """
    try:
        asyncio.get_running_loop().call_soon(sock.close)
    except RuntimeError:  # no running loop, or it is closing
        sock.close()


async def tls_handshake(stream: SockStream, ctx: ssl.SSLContext, server_name: str, trace: PhaseTrace) -> None:
    """Make ``stream`` a TLS connection (the handshake on its own socket) and record certificate facts.

    A rejected certificate or a failed handshake is ``tls``, the peer closing or
    resetting is ``reset``. Every probe that speaks TLS goes through here, so a
    handshake fails the same way (same kinds, same words) in all of them.
    """
    trace.enter("tls")
    try:
        # The plain socket is detached into the SSLSocket (same descriptor, still non-blocking).
        tls = ctx.wrap_socket(stream.sock, server_hostname=server_name, do_handshake_on_connect=False)
    except (OSError, ValueError) as exc:
        raise ProbeFailure(ErrorKind.TLS, f"TLS handshake failed: {_why(exc)}") from exc
    stream.sock = tls
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await stream.wait()
            except ssl.SSLWantWriteError:
                await stream.wait(writable=True)
    except ssl.SSLCertVerificationError as exc:
        raise ProbeFailure(ErrorKind.TLS, f"certificate rejected: {exc.verify_message}") from exc
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
        raise ProbeFailure(ErrorKind.RESET, "connection closed during the TLS handshake") from exc
    except ssl.SSLError as exc:
        detail = tls_error_detail(exc, "during the handshake")
        if detail.startswith("TLS error"):
            detail = f"TLS handshake failed: {exc.reason or exc}"
        raise ProbeFailure(ErrorKind.TLS, detail) from exc
    except OSError as exc:  # reset, broken pipe
        raise ProbeFailure(ErrorKind.RESET, "connection closed during the TLS handshake") from exc
    record_tls_facts(tls, trace)


VERDICT_MARGIN_S = 0.1


async def await_tls13_verdict(stream: SockStream, tls: ssl.SSLSocket, wait_s: float) -> None:
    """Read after a TLS 1.3 handshake until the server accepts or rejects us, for up to ``wait_s``.

    A session ticket (or any data) means the server finished its side and kept
    the connection; an alert fails the probe as the handshake would have with
    TLS 1.2 (``tls``: "the server rejected the client certificate", "the server
    requires a client certificate"); a close or reset is ``reset``. Nothing
    within the wait (a server that sends no tickets) counts as accepted: the
    handshake itself succeeded. ``wait_s`` is the handshake's own duration plus
    100 ms (the verdict comes about one round trip after our last flight),
    capped by ``verdict_wait``, so a slow server is waited for and an ordinary
    one costs one read.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    after = "right after the TLS 1.3 handshake"
    while True:
        try:
            data = tls.recv(1)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            session = tls.session
            if session is not None and session.has_ticket:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    await stream.wait()
            except TimeoutError:
                return
            continue
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            raise ProbeFailure(ErrorKind.RESET, f"the server closed the connection {after}") from exc
        except ssl.SSLError as exc:
            raise ProbeFailure(ErrorKind.TLS, tls_error_detail(exc, after)) from exc
        except OSError as exc:  # reset
            detail = f"connection reset {after} (the server may have rejected the client certificate)"
            raise ProbeFailure(ErrorKind.RESET, detail) from exc
        if not data:
            raise ProbeFailure(ErrorKind.RESET, f"the server closed the connection {after}")
        return  # the server spoke first: it has accepted us


@functools.lru_cache(maxsize=64)
def der_not_after(der: bytes) -> float | None:
    """The notAfter of a DER X.509 certificate as a POSIX time; None if it cannot be read.

    Cached by the certificate's bytes: a check meets the same certificate run after
    run, and parsing it took ~12 µs inside the ``tls`` phase.
    """
    try:
        _, cert, _ = _der_tlv(der, 0)  # Certificate ::= SEQUENCE
        _, pos, end = _der_tlv(der, cert)  # tbsCertificate ::= SEQUENCE
        children: list[tuple[int, int, int]] = []
        while pos < end and len(children) < 5:
            tag, start, pos = _der_tlv(der, pos)
            children.append((tag, start, pos))
        if children and children[0][0] == 0xA0:  # [0] EXPLICIT version
            children.pop(0)
        # serialNumber, signature, issuer, validity
        _, validity, validity_end = children[3]
        _, _, pos = _der_tlv(der, validity)  # notBefore
        tag, start, stop = _der_tlv(der, pos)  # notAfter
        if stop > validity_end:
            return None
        text = der[start:stop].decode("ascii")
        if tag == 0x17 and len(text) == 13 and text.endswith("Z"):  # UTCTime YYMMDDHHMMSSZ
            year = int(text[:2])
            text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
        elif not (tag == 0x18 and len(text) == 15 and text.endswith("Z")):  # GeneralizedTime
            return None
        fields = [int(text[0:4]), *(int(text[i : i + 2]) for i in range(4, 14, 2))]
        return float(calendar.timegm((*fields, 0, 0, 0)))
    except (IndexError, ValueError):
        return None


def _der_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``pos``."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length
