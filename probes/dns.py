"""DNS probe: one query to one server, over UDP or TCP, with dnspython.

Phases ``resolve, connect, request`` (blackbox_exporter's names).
``resolve`` finds the server's address when the target is a name (zero for
an IP literal), ``connect`` is the TCP handshake and is recorded as zero
for UDP, which has no handshake, and ``request`` runs from sending the
query to the parsed answer.

dnspython builds and parses every message: DNS wire format has enough
corners (name compression, EDNS, truncation) that it belongs in a maintained
library. Over UDP it also runs the exchange (:func:`dns.asyncquery.udp`, on a
socket connected to the server, so when nothing listens there the kernel's
ICMP "port unreachable" ends the probe at once as ``refused`` rather than as
a timeout). Over TCP the connection comes from ``_net.connect``, so connect
time and connect errors mean what they mean in every other probe, and the
probe adds the two length bytes of RFC 1035 4.2.2 itself.

No timeout is passed down: the runner's timeout cancels a query that gets
no answer, and the result is ``timeout`` (stuck in ``request``).

Errors: an rcode outside ``valid_rcodes`` is ``status`` (the detail names the
rcode, e.g. ``NXDOMAIN``); an answer that fails ``answer_matches`` or
``answer_not_matches`` is ``assertion``; a reply that does not parse or does
not answer our query is ``protocol``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename

from slaprobe.configfile import Fields, Node

from ._net import HostPort, IpVersion, connect, parse_host_port, read_ip_version, resolve
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
        s = self.settings
        # A fresh message per run: a new random ID, as any resolver would send.
        query = dns.message.make_query(s.query_name, s.query_type)
        if not s.recursion_desired:
            query.flags &= ~dns.flags.RD
        return query

    async def probe(self, trace: PhaseTrace) -> ProbeResult:
        s = self.settings
        family, sockaddr = await resolve(self.server, s.ip_version, trace)
        where, port = str(sockaddr[0]), int(sockaddr[1])
        query = self._query()
        if s.transport == "tcp":
            sock = await connect(family, sockaddr, trace)
            trace.enter("request")
            answer = await _exchange_tcp(query, sock)
        else:
            trace.skip("connect")  # UDP: no handshake
            trace.enter("request")
            answer = await _exchange_udp(query, where, port, family)
        return self._judge(answer, trace)

    def _judge(self, answer: dns.message.Message, trace: PhaseTrace) -> ProbeResult:
        s = self.settings
        phases = trace.close()
        fields = trace.fields
        rcode = answer.rcode()
        rcode_name = dns.rcode.to_text(rcode)
        fields["rcode"] = rcode_name
        records = [line for rrset in answer.answer for line in rrset.to_text().splitlines()]
        fields["answer_count"] = float(len(records))
        if answer.answer:
            fields["ttl_min"] = float(min(rrset.ttl for rrset in answer.answer))
        if answer.flags & dns.flags.TC:
            fields["truncated"] = True
        if rcode not in s.valid_rcodes:
            expected = ", ".join(dns.rcode.to_text(r) for r in s.valid_rcodes)
            detail = f"{rcode_name} (expected {expected})"
            return ProbeResult(False, phases, ErrorKind.STATUS, detail, fields)
        text = "\n".join(records)
        for pattern in s.answer_matches:
            if not pattern.search(text):
                detail = f"answer does not match {pattern.pattern!r}"
                return ProbeResult(False, phases, ErrorKind.ASSERTION, detail, fields)
        for pattern in s.answer_not_matches:
            if pattern.search(text):
                detail = f"answer matches forbidden {pattern.pattern!r}"
                return ProbeResult(False, phases, ErrorKind.ASSERTION, detail, fields)
        count = len(records)
        detail = f"{rcode_name}, {count} answer record{'' if count == 1 else 's'}"
        return ProbeResult(True, phases, None, detail, fields)


# --------------------------------------------------------------------------- the exchange


async def _exchange_tcp(query: dns.message.Message, sock: socket.socket) -> dns.message.Message:
    """One query over the connection ``connect`` opened: two-byte length framing (RFC 1035 4.2.2)."""
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        writer.write(query.to_wire(prepend_length=True))
        size = int.from_bytes(await reader.readexactly(2), "big")
        wire = await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise ProbeFailure(ErrorKind.RESET, "connection closed before the whole answer arrived") from exc
    except ConnectionError as exc:
        raise ProbeFailure(ErrorKind.RESET, f"connection reset during the query: {exc}") from exc
    finally:
        writer.close()
    try:
        answer = dns.message.from_wire(wire)
    except dns.exception.DNSException as exc:
        raise ProbeFailure(ErrorKind.PROTOCOL, _malformed(exc)) from exc
    if not query.is_response(answer):
        raise ProbeFailure(ErrorKind.PROTOCOL, _NOT_OUR_ANSWER)
    return answer


async def _exchange_udp(
    query: dns.message.Message, where: str, port: int, family: int
) -> dns.message.Message:
    backend = dns.asyncbackend.get_backend("asyncio")
    try:
        # Connected (a destination is given): ICMP port unreachable then surfaces as ECONNREFUSED.
        sock = await backend.make_socket(  # type: ignore[no-untyped-call]  # dnspython leaves it untyped
            family, socket.SOCK_DGRAM, 0, None, (where, port)
        )
    except OSError as exc:
        raise ProbeFailure(
            ErrorKind.UNREACHABLE, f"cannot send to {_fmt(where, port)}: {exc.strerror or exc}"
        ) from exc
    try:
        return await dns.asyncquery.udp(query, where, port=port, sock=sock)
    except ConnectionRefusedError as exc:
        raise ProbeFailure(
            ErrorKind.REFUSED, f"port unreachable: nothing answers DNS on {_fmt(where, port)}/udp"
        ) from exc
    except OSError as exc:
        detail = f"cannot query {_fmt(where, port)}: {exc.strerror or exc}"
        raise ProbeFailure(ErrorKind.UNREACHABLE, detail) from exc
    except dns.exception.DNSException as exc:
        raise ProbeFailure(ErrorKind.PROTOCOL, _malformed(exc)) from exc
    finally:
        await sock.close()


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
