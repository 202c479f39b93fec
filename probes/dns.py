"""DNS probe: one query to one server, over UDP or TCP; dnspython builds and parses the messages.

Phases ``resolve, connect, request`` (blackbox_exporter's names).
``resolve`` finds the server's address when the target is a name (zero for
an IP literal), ``connect`` is the TCP handshake and is recorded as zero
for UDP, which has no handshake, and ``request`` runs from sending the
query to the arrival of the whole reply; parsing and judging it come after,
in no phase (they are our time, not the server's).

dnspython builds and parses every message: DNS wire format has enough
corners (name compression, EDNS, truncation) that it belongs in a maintained
library. The query is built once per check and each run sends it with a new
random ID. Over UDP the probe runs the exchange itself, on a plain
non-blocking socket read straight from the event loop: dnspython's asyncio
backend opened a datagram endpoint per query (a transport, a protocol and a
loop round trip) and parsed inside the clock, 1.75 ms of ``request`` against
blackbox_exporter's 0.26 ms (``bench/RESULTS.md``). The socket is connected to
the server, so the kernel drops datagrams from other addresses and, when
nothing listens there, its ICMP "port unreachable" ends the probe at once as
``refused`` rather than as a timeout. A datagram with another ID is ignored
(a late answer to an earlier query, or a stray one), as resolvers and
blackbox_exporter do; a reply with our ID is then parsed and checked as
dnspython's ``udp()`` would (``Message.is_response``). A truncated answer (TC)
is judged as it is, with ``truncated`` set: there is no retry over TCP.
Over TCP the connection comes from ``_net.connect``, so connect time and
connect errors mean what they mean in every other probe, and the probe adds
the two length bytes of RFC 1035 4.2.2 itself.

No timeout is passed down: the runner's timeout cancels a query that gets
no answer, and the result is ``timeout`` (stuck in ``request``).

Errors: an rcode outside ``valid_rcodes`` is ``status`` (the detail names the
rcode, e.g. ``NXDOMAIN``); an answer that fails ``answer_matches`` or
``answer_not_matches`` is ``assertion``; a reply that does not parse or does
not answer our query is ``protocol``."""

from __future__ import annotations

import copy
import ipaddress
import re
import secrets
import socket
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename

from slaprobe.configfile import Fields, Node

from ._net import (
    HostPort,
    IpVersion,
    SockAddr,
    SockStream,
    connect,
    parse_host_port,
    read_ip_version,
    resolve,
)
from .base import ErrorKind, PhaseTrace, ProbeFailure, Prober, ProbeResult

# Types a plain query cannot ask for: zone transfers and EDNS/TSIG machinery.
_NOT_QUERYABLE = frozenset(
    {
        dns.rdatatype.AXFR,
        dns.rdatatype.IXFR,
        dns.rdatatype.OPT,
        dns.rdatatype.TSIG,
        dns.rdatatype.TKEY,
        dns.rdatatype.MAILA,
        dns.rdatatype.MAILB,
    }
)
# The largest UDP payload (a reply larger than we asked for is still read whole, then judged).
_UDP_MAX = 65535
_NOT_OUR_ANSWER = "the reply does not answer our query (its ID or question differs)"
_TYPE_EXAMPLES = "A, AAAA, CNAME, MX, TXT, NS, SOA, SRV, PTR or CAA"


@dataclass(frozen=True)
class DnsSettings:
    query_name: dns.name.Name
    query_type: dns.rdatatype.RdataType
    transport: str
    valid_rcodes: tuple[dns.rcode.Rcode, ...]
    answer_matches: tuple[re.Pattern[str], ...]
    answer_not_matches: tuple[re.Pattern[str], ...]
    recursion_desired: bool
    ip_version: IpVersion


class DnsProber(Prober):
    type_name = "dns"

    def __init__(self, server: HostPort, settings: DnsSettings) -> None:
        self.server = server
        self.settings = settings
        # The query message and its wire form, built on the first run (from_config does no work
        # beyond validation); each run copies them with its own ID.
        self._template: dns.message.Message | None = None
        self._wire = b""

    @classmethod
    def from_config(cls, target: Node, settings: Fields) -> DnsProber:
        server = parse_host_port(target, default_port=53)
        query_type = _read_query_type(settings)
        parsed = DnsSettings(
            query_name=_read_query_name(settings, query_type),
            query_type=query_type,
            transport=settings.choice("transport", ("udp", "tcp"), "udp"),
            valid_rcodes=_read_rcodes(settings),
            answer_matches=_read_patterns(settings, "answer_matches"),
            answer_not_matches=_read_patterns(settings, "answer_not_matches"),
            recursion_desired=settings.bool("recursion_desired", True),
            ip_version=read_ip_version(settings),
        )
        return cls(server, parsed)

    def _query(self) -> dns.message.Message:
        """The query of one run: the check's message with a new random ID, as any resolver sends."""
        if self._template is None:
            s = self.settings
            template = dns.message.make_query(s.query_name, s.query_type)
            if not s.recursion_desired:
                template.flags &= ~dns.flags.RD
            self._template = template
            self._wire = template.to_wire()
        query = copy.copy(self._template)  # shares the (unchanging) sections; only the ID differs
        query.id = secrets.randbits(16)
        return query

    async def probe(self, trace: PhaseTrace) -> ProbeResult:
        s = self.settings
        query = self._query()
        wire = query.id.to_bytes(2, "big") + self._wire[2:]
        family, sockaddr = await resolve(self.server, s.ip_version, trace)
        if s.transport == "tcp":
            stream = SockStream(await connect(family, sockaddr, trace, nodelay=False))  # one send
            stream.stamp_reads()
            trace.enter("request")
            reply = await _exchange_tcp(wire, stream)
        else:
            trace.skip("connect")  # UDP: no handshake
            stream = _udp_stream(sockaddr, family)
            trace.enter("request")
            reply = await _exchange_udp(wire, stream, sockaddr)
        # The request ends when the reply arrived (the kernel's receive time): parsing it, and
        # this task's wake-up after it, are our time, not the server's.
        trace.stop(at=stream.rx_perf())
        return self._judge(_parse_reply(query, reply), trace)

    def _judge(self, answer: dns.message.Message, trace: PhaseTrace) -> ProbeResult:
        s = self.settings
        phases = trace.close()
        fields = trace.fields
        rcode = answer.rcode()
        rcode_name = dns.rcode.to_text(rcode)
        fields["rcode"] = rcode_name
        count = sum(len(rrset) or 1 for rrset in answer.answer)  # the lines of to_text(), without it
        fields["answer_count"] = float(count)
        if answer.answer:
            fields["ttl_min"] = float(min(rrset.ttl for rrset in answer.answer))
        if answer.flags & dns.flags.TC:
            fields["truncated"] = True
        if rcode not in s.valid_rcodes:
            expected = ", ".join(dns.rcode.to_text(r) for r in s.valid_rcodes)
            detail = f"{rcode_name} (expected {expected})"
            return ProbeResult(False, phases, ErrorKind.STATUS, detail, fields)
        # The text form costs more than parsing the reply did: only when a pattern needs it.
        text = ""
        if s.answer_matches or s.answer_not_matches:
            text = "\n".join(line for rrset in answer.answer for line in rrset.to_text().splitlines())
        for pattern in s.answer_matches:
            if not pattern.search(text):
                detail = f"answer does not match {pattern.pattern!r}"
                return ProbeResult(False, phases, ErrorKind.ASSERTION, detail, fields)
        for pattern in s.answer_not_matches:
            if pattern.search(text):
                detail = f"answer matches forbidden {pattern.pattern!r}"
                return ProbeResult(False, phases, ErrorKind.ASSERTION, detail, fields)
        detail = f"{rcode_name}, {count} answer record{'' if count == 1 else 's'}"
        return ProbeResult(True, phases, None, detail, fields)


# --------------------------------------------------------------------------- the exchange


async def _exchange_tcp(wire: bytes, stream: SockStream) -> bytes:
    """One query over the connection ``connect`` opened: two-byte length framing (RFC 1035 4.2.2)."""
    try:
        await stream.send_all(len(wire).to_bytes(2, "big") + wire)
        head = await _read_exactly(stream, 2)
        return await _read_exactly(stream, int.from_bytes(head, "big"))
    except ConnectionError as exc:
        raise ProbeFailure(ErrorKind.RESET, f"connection reset during the query: {exc}") from exc
    finally:
        stream.close()


async def _read_exactly(stream: SockStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.recv(size - len(data))
        if not chunk:
            raise ProbeFailure(ErrorKind.RESET, "connection closed before the whole answer arrived")
        data += chunk
    return data


def _udp_stream(sockaddr: SockAddr, family: int) -> SockStream:
    """A fresh UDP socket connected to the server, reading with the kernel's receive times."""
    where, port = str(sockaddr[0]), int(sockaddr[1])
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        raise ProbeFailure(
            ErrorKind.UNREACHABLE, f"cannot send to {_fmt(where, port)}: {exc.strerror or exc}"
        ) from exc
    sock.setblocking(False)
    stream = SockStream(sock)  # send and recv work on a connected datagram socket alike
    stream.stamp_reads()
    return stream


async def _exchange_udp(wire: bytes, stream: SockStream, sockaddr: SockAddr) -> bytes:
    """Send one query and return the first datagram carrying our ID.

    A plain non-blocking socket read straight from the event loop (no datagram
    endpoint: its transport and protocol cost a loop round trip per run). It is
    connected, so the kernel drops datagrams from any other address and an ICMP
    "port unreachable" ends the probe at once as ``refused``. A datagram with
    another ID is ignored, as resolvers (and blackbox_exporter) do: it may answer
    an earlier query, and a stray or spoofed datagram must not decide the result.
    """
    where, port = str(sockaddr[0]), int(sockaddr[1])
    try:
        stream.sock.connect(sockaddr)
        await stream.send_all(wire)
        while True:
            reply = await stream.recv(_UDP_MAX)
            if reply[:2] == wire[:2]:
                return reply
    except ConnectionRefusedError as exc:
        raise ProbeFailure(
            ErrorKind.REFUSED, f"port unreachable: nothing answers DNS on {_fmt(where, port)}/udp"
        ) from exc
    except OSError as exc:
        detail = f"cannot query {_fmt(where, port)}: {exc.strerror or exc}"
        raise ProbeFailure(ErrorKind.UNREACHABLE, detail) from exc
    finally:
        stream.close()


def _parse_reply(query: dns.message.Message, wire: bytes) -> dns.message.Message:
    """Parse and check a reply as dnspython's own ``udp()`` and ``tcp()`` do (a truncated answer is kept)."""
    try:
        answer = dns.message.from_wire(wire, raise_on_truncation=False)
    except dns.exception.DNSException as exc:
        raise ProbeFailure(ErrorKind.PROTOCOL, _malformed(exc)) from exc
    if not query.is_response(answer):
        raise ProbeFailure(ErrorKind.PROTOCOL, _NOT_OUR_ANSWER)
    return answer


def _malformed(exc: dns.exception.DNSException) -> str:
    if isinstance(exc, dns.query.BadResponse):
        return _NOT_OUR_ANSWER
    return f"malformed DNS reply: {exc}"


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- settings


def _read_query_type(settings: Fields) -> dns.rdatatype.RdataType:
    text = settings.str("query_type", "A")
    node = settings.raw("query_type")
    try:
        rdtype = dns.rdatatype.from_text(text.strip().upper())
    except dns.exception.DNSException:
        assert node is not None
        node.fail(f"unknown DNS record type {text!r}; use a type such as {_TYPE_EXAMPLES}")
    if rdtype in _NOT_QUERYABLE:
        assert node is not None
        name = dns.rdatatype.to_text(rdtype)
        node.fail(f"{name} cannot be asked for in a single query; use a type such as {_TYPE_EXAMPLES}")
    return rdtype


def _read_query_name(settings: Fields, query_type: dns.rdatatype.RdataType) -> dns.name.Name:
    text: str = settings.str("query_name")
    node = settings.raw("query_name")
    assert node is not None
    text = text.strip()
    if query_type == dns.rdatatype.PTR:
        # An address is the natural way to write a reverse lookup: 192.0.2.1 → 1.2.0.192.in-addr.arpa.
        try:
            ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return dns.reversename.from_address(text)
    if any(c.isspace() for c in text):
        node.fail(f"invalid DNS name {text!r}: no spaces allowed")
    try:
        return dns.name.from_text(text)
    except dns.name.LabelTooLong:
        node.fail(f"invalid DNS name {text!r}: each part between dots needs at most 63 characters")
    except dns.name.EmptyLabel:
        node.fail(f"invalid DNS name {text!r}: empty part between dots")
    except dns.name.NameTooLong:
        node.fail(f"invalid DNS name {text!r}: longer than 255 bytes")
    except (dns.exception.DNSException, UnicodeError) as exc:
        node.fail(f"invalid DNS name {text!r}: {exc}")


def _read_rcodes(settings: Fields) -> tuple[dns.rcode.Rcode, ...]:
    names: list[str] = settings.str_list("valid_rcodes", ["NOERROR"])
    node = settings.raw("valid_rcodes")
    if not names:
        assert node is not None
        node.fail("needs at least one rcode such as NOERROR")
    codes = []
    for i, name in enumerate(names):
        upper = name.strip().upper()
        if upper not in dns.rcode.Rcode.__members__:
            assert node is not None
            node.value[i].fail(
                f"unknown rcode {name!r}; use names such as NOERROR, NXDOMAIN, SERVFAIL, REFUSED"
            )
        codes.append(dns.rcode.Rcode[upper])
    return tuple(codes)


def _read_patterns(settings: Fields, key: str) -> tuple[re.Pattern[str], ...]:
    patterns = []
    nodes: list[Node] = settings.list(key, [])
    for item in nodes:
        if not isinstance(item.value, str):
            item.fail("expected a regular expression as text")
        try:
            patterns.append(re.compile(item.value, re.MULTILINE))
        except re.error as exc:
            item.fail(f"invalid regular expression: {exc}")
    return tuple(patterns)
