"""The DNS probe against a real dnsmasq on loopback, misbehaving peers, and config validation.

dnsmasq serves a small ``test`` zone from its command line (no files, no
upstream): names it does not know under ``test`` are NXDOMAIN, names outside
it are REFUSED. Peers dnsmasq cannot imitate (garbage, a wrong ID, silence)
are small asyncio servers in the test's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from probes import ErrorKind, PhaseTrace, run_probe
from probes.dns import DnsProber
from tests.probe_harness import ProbeHarness, block_the_loop_once, phase_names

SOURCE = "catalogue.yaml"
CHECK = "sites.lab.checks.resolver"
SETTINGS = f"{CHECK}.settings"
PHASES = ["resolve", "connect", "request"]

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
ZONE = [
    "--local=/test/",  # authoritative for test: unknown names are NXDOMAIN, never forwarded
    "--address=/app.test/127.0.0.5",  # app.test and every name under it
    "--host-record=web.test,127.0.0.7,::7",  # A, AAAA and the PTR for 127.0.0.7
    "--host-record=mail.test,127.0.0.9",
    "--txt-record=txt.test,v=spf1 -all,hello world",
    "--mx-host=test,mail.test,10",
    "--cname=alias.test,web.test",
    "--srv-host=_http._tcp.test,web.test,8080,1,5",
    "--caa-record=test,0,issue,ca.example",
    "--local-ttl=300",
]


_harness = ProbeHarness("dns", CHECK, SOURCE, guard_s=10)
make_prober = _harness.make_prober
probe = _harness.probe
config_error = _harness.config_error
names = phase_names


def can_bind_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = can_bind_ipv6_loopback()


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (and ::1 when there is IPv6) right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def closed_udp_port() -> int:
    """A loopback UDP port with nothing bound to it: datagrams there draw ICMP port unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def closed_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --------------------------------------------------------------------------- dnsmasq


@dataclass
class Dnsmasq:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _answers(port: int) -> bool:
    query = dns.message.make_query("app.test", "A").to_wire(prepend_length=True)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(query)
            return len(sock.recv(2)) > 0
    except OSError:
        return False


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    if not Path(DNSMASQ).exists():
        pytest.skip("dnsmasq is not installed (make system-deps installs it)")
    log = tmp_path_factory.mktemp("dnsmasq") / "dnsmasq.log"
    for _attempt in range(3):  # the free port can be taken between choosing and binding it
        port = free_port()
        listen = "127.0.0.1,::1" if IPV6 else "127.0.0.1"
        command = [
            DNSMASQ,
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--pid-file=",  # no pid file: nothing outside the test's temporary directory
            f"--listen-address={listen}",
            f"--port={port}",
            "--bind-interfaces",
            f"--user={getpass.getuser()}",
            "--log-facility=-",
            *ZONE,
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 5
        while process.poll() is None and time.monotonic() < deadline and not _answers(port):
            time.sleep(0.05)
        if process.poll() is None and _answers(port):
            break
        process.kill()
        process.wait()
    else:
        pytest.fail(f"dnsmasq did not start: {log.read_text()}")
    try:
        yield Dnsmasq(port, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- dnsmasq: success


async def test_a_record_reports_phases_and_fields(dnsmasq: Dnsmasq) -> None:
    start = time.perf_counter()
    result = await probe(dnsmasq.address, {"query_name": "app.test"})
    total = time.perf_counter() - start

    assert result.success, result
    assert result.error_kind is None
    assert result.detail == "NOERROR, 1 answer record"
    assert names(result) == PHASES
    phases = dict(result.phases)
    assert all(duration >= 0 for duration in phases.values())
    assert phases["resolve"] < 0.25  # an IP literal: nothing to look up
    assert phases["connect"] < 0.25  # UDP has no handshake
    assert sum(phases.values()) <= total
    assert result.fields == {"ip": "127.0.0.1", "rcode": "NOERROR", "answer_count": 1.0, "ttl_min": 300.0}


async def test_a_wildcard_address_answers_every_name_below(dnsmasq: Dnsmasq) -> None:
    settings = {"query_name": "deep.er.app.test", "answer_matches": [r"IN A 127\.0\.0\.5$"]}
    result = await probe(dnsmasq.address, settings)
    assert result.success, result


@pytest.mark.parametrize(
    ("query_name", "query_type", "expected"),
    [
        ("web.test", "A", r"^web\.test\. 300 IN A 127\.0\.0\.7$"),
        ("web.test", "AAAA", r"^web\.test\. 300 IN AAAA ::7$"),
        ("txt.test", "TXT", r'IN TXT "v=spf1 -all" "hello world"$'),
        ("test", "MX", r"IN MX 10 mail\.test\.$"),
        ("_http._tcp.test", "SRV", r"IN SRV 1 5 8080 web\.test\.$"),
        ("test", "CAA", r'IN CAA 0 issue "ca\.example"$'),
        ("7.0.0.127.in-addr.arpa", "PTR", r"IN PTR web\.test\.$"),
        ("127.0.0.7", "PTR", r"^7\.0\.0\.127\.in-addr\.arpa\. 300 IN PTR web\.test\.$"),
        ("test", "mx", r"IN MX 10 mail\.test\.$"),
    ],
    ids=["A", "AAAA", "TXT", "MX", "SRV", "CAA", "PTR", "PTR-from-address", "lower-case-type"],
)
async def test_query_types(dnsmasq: Dnsmasq, query_name: str, query_type: str, expected: str) -> None:
    settings = {"query_name": query_name, "query_type": query_type, "answer_matches": [expected]}
    result = await probe(dnsmasq.address, settings)
    assert result.success, result
    assert result.fields["rcode"] == "NOERROR"
    assert result.fields["answer_count"] == 1


async def test_a_cname_chain_counts_every_record(dnsmasq: Dnsmasq) -> None:
    settings = {
        "query_name": "alias.test",
        "answer_matches": [
            r"^alias\.test\. 300 IN CNAME web\.test\.$",
            r"^web\.test\. 300 IN A 127\.0\.0\.7$",
        ],
    }
    result = await probe(dnsmasq.address, settings)
    assert result.success, result
    assert result.fields["answer_count"] == 2
    assert result.detail == "NOERROR, 2 answer records"


async def test_tcp_transport(dnsmasq: Dnsmasq) -> None:
    result = await probe(dnsmasq.address, {"query_name": "web.test", "transport": "tcp"})
    assert result.success, result
    assert names(result) == PHASES
    assert result.fields["answer_count"] == 1
    assert dict(result.phases)["connect"] > 0


@contextlib.contextmanager
def delayed_udp_answerer(delay_s: float) -> Iterator[str]:
    """Answers one query after ``delay_s``, from a thread: it runs while the test freezes the loop.

    (dnsmasq answers a loopback query before the probe's first read: there is no wait to freeze.)
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)

    def answer() -> None:
        with contextlib.suppress(OSError):
            wire, addr = sock.recvfrom(4096)
            time.sleep(delay_s)
            response = dns.message.make_response(dns.message.from_wire(wire))
            sock.sendto(response.to_wire(), addr)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        thread.join(15)
        sock.close()


async def test_the_request_ends_when_the_reply_arrived_not_when_the_loop_got_to_it() -> None:
    trace = PhaseTrace()
    with delayed_udp_answerer(0.1) as address:
        start = time.perf_counter()
        blocker = asyncio.create_task(block_the_loop_once(lambda: trace.current == "request", 0.5))
        result = await run_probe(make_prober(address, {"query_name": "app.test"}), trace)
        assert await blocker, "the probe never waited where the test freezes the loop"
    assert time.perf_counter() - start >= 0.5
    assert result.success, result
    assert trace.end is not None
    # The answer arrived ~0.1 s in, inside the freeze; the kernel's receive time says so.
    assert 0.09 <= trace.end - start < 0.4, (trace.end - start, result.phases)
    assert 0.09 <= dict(result.phases)["request"] < 0.4


async def test_a_host_name_target_is_resolved_first(dnsmasq: Dnsmasq) -> None:
    settings = {"query_name": "app.test", "ip_version": "ipv4"}
    result = await probe(f"localhost:{dnsmasq.port}", settings)
    assert result.success, result
    assert result.fields["ip"] == "127.0.0.1"
    assert names(result) == PHASES


@pytest.mark.skipif(not IPV6, reason="this machine cannot listen on ::1")
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_ipv6_server(dnsmasq: Dnsmasq, transport: str) -> None:
    settings = {"query_name": "web.test", "query_type": "AAAA", "transport": transport}
    result = await probe(f"[::1]:{dnsmasq.port}", settings)
    assert result.success, result
    assert result.fields["ip"] == "::1"


async def test_no_data_is_success_with_no_answers(dnsmasq: Dnsmasq) -> None:
    result = await probe(dnsmasq.address, {"query_name": "web.test", "query_type": "MX"})
    assert result.success, result
    assert result.detail == "NOERROR, 0 answer records"
    assert result.fields["answer_count"] == 0
    assert "ttl_min" not in result.fields


# --------------------------------------------------------------------------- dnsmasq: failures


async def test_nxdomain_is_a_status_failure(dnsmasq: Dnsmasq) -> None:
    result = await probe(dnsmasq.address, {"query_name": "missing.test"})
    assert not result.success
    assert result.error_kind is ErrorKind.STATUS
    assert result.detail == "NXDOMAIN (expected NOERROR)"
    assert result.fields["rcode"] == "NXDOMAIN"
    assert result.fields["answer_count"] == 0
    assert names(result) == PHASES


async def test_refused_rcode_over_tcp(dnsmasq: Dnsmasq) -> None:
    # Outside its zone, with no upstream, dnsmasq refuses.
    result = await probe(dnsmasq.address, {"query_name": "example.com", "transport": "tcp"})
    assert result.error_kind is ErrorKind.STATUS
    assert result.detail == "REFUSED (expected NOERROR)"


async def test_expected_nxdomain_is_success(dnsmasq: Dnsmasq) -> None:
    settings = {"query_name": "missing.test", "valid_rcodes": ["nxdomain", "NOERROR"]}
    result = await probe(dnsmasq.address, settings)
    assert result.success, result
    assert result.detail == "NXDOMAIN, 0 answer records"


async def test_valid_rcodes_replace_the_default(dnsmasq: Dnsmasq) -> None:
    result = await probe(dnsmasq.address, {"query_name": "app.test", "valid_rcodes": ["NXDOMAIN"]})
    assert result.error_kind is ErrorKind.STATUS
    assert result.detail == "NOERROR (expected NXDOMAIN)"


async def test_answer_mismatch_is_an_assertion_failure(dnsmasq: Dnsmasq) -> None:
    settings = {"query_name": "app.test", "answer_matches": [r"IN A 127\.0\.0\.5$", r"IN A 10\."]}
    result = await probe(dnsmasq.address, settings)
    assert not result.success
    assert result.error_kind is ErrorKind.ASSERTION
    assert result.detail == r"answer does not match 'IN A 10\\.'"
    assert result.fields["rcode"] == "NOERROR"


async def test_forbidden_answer_is_an_assertion_failure(dnsmasq: Dnsmasq) -> None:
    settings = {"query_name": "app.test", "answer_not_matches": [r"IN A 10\.", r"127\.0\.0\.5"]}
    result = await probe(dnsmasq.address, settings)
    assert result.error_kind is ErrorKind.ASSERTION
    assert result.detail == r"answer matches forbidden '127\\.0\\.0\\.5'"


async def test_an_empty_answer_matches_nothing(dnsmasq: Dnsmasq) -> None:
    result = await probe(
        dnsmasq.address, {"query_name": "test", "query_type": "SOA", "answer_matches": ["."]}
    )
    assert result.error_kind is ErrorKind.ASSERTION
    assert result.fields["answer_count"] == 0


async def test_rcode_is_judged_before_the_answer(dnsmasq: Dnsmasq) -> None:
    settings = {"query_name": "missing.test", "answer_matches": ["never"]}
    result = await probe(dnsmasq.address, settings)
    assert result.error_kind is ErrorKind.STATUS


async def test_nothing_on_the_udp_port_is_refused_at_once() -> None:
    port = closed_udp_port()
    start = time.perf_counter()
    result = await probe(f"127.0.0.1:{port}", {"query_name": "app.test"})
    assert time.perf_counter() - start < 2.0  # the ICMP answer, not a timeout
    assert result.error_kind is ErrorKind.REFUSED
    assert result.detail == f"port unreachable: nothing answers DNS on 127.0.0.1:{port}/udp"
    assert names(result) == PHASES


async def test_nothing_on_the_tcp_port_is_refused() -> None:
    port = closed_tcp_port()
    result = await probe(f"127.0.0.1:{port}", {"query_name": "app.test", "transport": "tcp"})
    assert result.error_kind is ErrorKind.REFUSED
    assert result.detail == f"connection refused by 127.0.0.1:{port}"
    assert names(result) == ["resolve", "connect"]


# --------------------------------------------------------------------------- misbehaving peers

Reply = Callable[[bytes], bytes | None]
UdpReply = Callable[[bytes], bytes | list[bytes] | None]  # a list: several datagrams, in order


@dataclass
class UdpPeer(asyncio.DatagramProtocol):
    reply: UdpReply
    queries: list[bytes] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queries.append(data)
        answer = self.reply(data)
        if answer is not None and self.transport is not None:
            for datagram in answer if isinstance(answer, list) else [answer]:
                self.transport.sendto(datagram, addr)


@contextlib.asynccontextmanager
async def udp_peer(reply: UdpReply) -> AsyncIterator[tuple[str, UdpPeer]]:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(lambda: UdpPeer(reply), local_addr=("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{transport.get_extra_info('sockname')[1]}", peer
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def tcp_peer(reply: Reply) -> AsyncIterator[str]:
    """Reads one length-framed query, writes ``reply(query)`` as raw bytes (None: stay silent)."""
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            answer = reply(await reader.readexactly(size))
            if answer is None:
                await reader.read()  # silent until the client leaves
            else:
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await server.wait_closed()


def answer_for(wire: bytes) -> dns.message.Message:
    query = dns.message.from_wire(wire)
    answer = dns.message.make_response(query)
    answer.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.1"))
    return answer


def good(wire: bytes) -> bytes:
    return answer_for(wire).to_wire()


def garbage(wire: bytes) -> bytes:
    return wire[:2] + b"\x81\x80 this is not a DNS message"


def wrong_id(wire: bytes) -> bytes:
    answer = answer_for(wire)
    answer.id = (answer.id + 1) % 65536
    return answer.to_wire()


def truncated(wire: bytes) -> bytes:
    answer = dns.message.make_response(dns.message.from_wire(wire))
    answer.flags |= dns.flags.TC
    return answer.to_wire()


def framed(reply: Reply) -> Reply:
    def tcp_reply(wire: bytes) -> bytes | None:
        answer = reply(wire)
        return None if answer is None else len(answer).to_bytes(2, "big") + answer

    return tcp_reply


async def test_recursion_desired_sets_the_rd_bit() -> None:
    async with udp_peer(good) as (address, peer):
        assert (await probe(address, {"query_name": "a.example"})).success
        assert (await probe(address, {"query_name": "a.example", "recursion_desired": False})).success
    first, second = (dns.message.from_wire(q) for q in peer.queries)
    assert first.flags & dns.flags.RD
    assert not second.flags & dns.flags.RD


async def test_every_run_sends_a_fresh_query_id() -> None:
    prober = make_prober("127.0.0.1", {"query_name": "a.example"})
    assert isinstance(prober, DnsProber)
    ids = {prober._query().id for _ in range(20)}
    assert len(ids) > 1


async def test_garbage_over_udp_is_a_protocol_failure() -> None:
    async with udp_peer(garbage) as (address, _):
        result = await probe(address, {"query_name": "a.example"})
    assert result.error_kind is ErrorKind.PROTOCOL
    assert result.detail.startswith("malformed DNS reply: ")
    assert names(result) == PHASES


async def test_a_datagram_with_another_id_is_ignored_and_the_real_answer_counts() -> None:
    # As resolvers (and blackbox_exporter) do: a late answer to an earlier query, or a
    # stray datagram, must not decide the result.
    async with udp_peer(lambda wire: [wrong_id(wire), good(wire)]) as (address, peer):
        result = await probe(address, {"query_name": "a.example"})
    assert result.success, result
    assert result.fields["ttl_min"] == 60
    assert len(peer.queries) == 1


async def test_only_datagrams_with_another_id_time_out_in_request() -> None:
    async with udp_peer(wrong_id) as (address, peer):
        trace = PhaseTrace()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await run_probe(make_prober(address, {"query_name": "a.example"}), trace)
    assert trace.current == "request"
    assert len(peer.queries) == 1


async def test_our_id_with_another_question_is_a_protocol_failure() -> None:
    def other_question(wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        other = dns.message.make_query("b.example", "A")
        other.id = query.id
        return dns.message.make_response(other).to_wire()

    async with udp_peer(other_question) as (address, _):
        result = await probe(address, {"query_name": "a.example"})
    assert result.error_kind is ErrorKind.PROTOCOL
    assert result.detail == "the reply does not answer our query (its ID or question differs)"
    assert names(result) == PHASES


async def test_a_large_udp_answer_is_read_whole() -> None:
    # Past 512 bytes (no EDNS asked): a peer that sends more anyway is read, not cut.
    def large(wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        answer = dns.message.make_response(query)
        texts = [f'"{i:03d}' + "x" * 200 + '"' for i in range(20)]
        answer.answer.append(dns.rrset.from_text(query.question[0].name, 60, "IN", "TXT", *texts))
        return answer.to_wire()

    async with udp_peer(large) as (address, _):
        result = await probe(address, {"query_name": "a.example", "query_type": "TXT"})
    assert result.success, result
    assert result.fields["answer_count"] == 20


async def test_each_run_sends_the_same_question_with_a_new_id() -> None:
    async with udp_peer(good) as (address, peer):
        prober = make_prober(address, {"query_name": "a.example", "query_type": "MX"})
        for _ in range(5):
            assert (await run_probe(prober, PhaseTrace())).success
    queries = [dns.message.from_wire(q) for q in peer.queries]
    assert len({q.id for q in queries}) > 1
    assert {str(q.question[0]) for q in queries} == {"a.example. IN MX"}
    assert all(q.flags & dns.flags.RD for q in queries)


async def test_a_truncated_udp_answer_is_flagged() -> None:
    async with udp_peer(truncated) as (address, _):
        result = await probe(address, {"query_name": "a.example"})
    assert result.success, result
    assert result.fields["truncated"] is True


async def test_silent_udp_server_times_out_in_request() -> None:
    async with udp_peer(lambda wire: None) as (address, peer):
        trace = PhaseTrace()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await run_probe(make_prober(address, {"query_name": "a.example"}), trace)
    assert trace.current == "request"
    assert len(peer.queries) == 1


async def test_tcp_answer_from_a_minimal_server() -> None:
    async with tcp_peer(framed(good)) as address:
        result = await probe(address, {"query_name": "a.example", "transport": "tcp"})
    assert result.success, result
    assert result.fields["ttl_min"] == 60


async def test_garbage_over_tcp_is_a_protocol_failure() -> None:
    async with tcp_peer(framed(garbage)) as address:
        result = await probe(address, {"query_name": "a.example", "transport": "tcp"})
    assert result.error_kind is ErrorKind.PROTOCOL
    assert result.detail.startswith("malformed DNS reply: ")


async def test_wrong_id_over_tcp_is_a_protocol_failure() -> None:
    async with tcp_peer(framed(wrong_id)) as address:
        result = await probe(address, {"query_name": "a.example", "transport": "tcp"})
    assert result.error_kind is ErrorKind.PROTOCOL


async def test_tcp_answer_cut_short_is_a_reset() -> None:
    def cut_short(wire: bytes) -> bytes:
        answer = good(wire)
        return len(answer).to_bytes(2, "big") + answer[:-3]

    async with tcp_peer(cut_short) as address:
        result = await probe(address, {"query_name": "a.example", "transport": "tcp"})
    assert result.error_kind is ErrorKind.RESET
    assert result.detail == "connection closed before the whole answer arrived"
    assert names(result) == PHASES


async def test_tcp_close_without_answer_is_a_reset() -> None:
    async with tcp_peer(lambda wire: b"") as address:
        result = await probe(address, {"query_name": "a.example", "transport": "tcp"})
    assert result.error_kind is ErrorKind.RESET


async def test_silent_tcp_server_times_out_in_request() -> None:
    async with tcp_peer(lambda wire: None) as address:
        trace = PhaseTrace()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await run_probe(make_prober(address, {"query_name": "a.example", "transport": "tcp"}), trace)
    assert trace.current == "request"


# --------------------------------------------------------------------------- config validation


def test_valid_config_builds_without_io() -> None:
    prober = make_prober(
        "ns1.example.net",
        {
            "query_name": "www.example.net",
            "query_type": "AAAA",
            "transport": "tcp",
            "valid_rcodes": ["NOERROR", "NXDOMAIN"],
            "answer_matches": ["IN AAAA 2001:db8::"],
            "answer_not_matches": ["(?i)parked"],
            "recursion_desired": False,
            "ip_version": "ipv6",
        },
    )
    assert isinstance(prober, DnsProber)
    assert prober.server.port == 53  # the default
    assert prober.settings.transport == "tcp"


def test_query_name_is_required() -> None:
    assert config_error("127.0.0.1") == f"{SOURCE}: {SETTINGS}.query_name: required field is missing"
    assert config_error("127.0.0.1", {}) == f"{SOURCE}: {SETTINGS}.query_name: required field is missing"


def test_unknown_setting_suggests_the_right_one() -> None:
    assert config_error("127.0.0.1", {"query_name": "a.example", "querytype": "A"}) == (
        f"{SOURCE}: {SETTINGS}.querytype: unknown field (did you mean 'query_type'?); "
        "allowed here: answer_matches, answer_not_matches, ip_version, query_name, query_type, "
        "recursion_desired, transport, valid_rcodes"
    )


TYPES = "use a type such as A, AAAA, CNAME, MX, TXT, NS, SOA, SRV, PTR or CAA"


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"query_type": "AAA"}, "query_type", f"unknown DNS record type 'AAA'; {TYPES}"),
        ({"query_type": 28}, "query_type", "expected text, got a number (28)"),
        ({"query_type": "AXFR"}, "query_type", f"AXFR cannot be asked for in a single query; {TYPES}"),
        ({"transport": "quic"}, "transport", "must be one of udp, tcp; got 'quic'"),
        ({"transport": "UDP"}, "transport", "must be one of udp, tcp; got 'UDP'"),
        (
            {"valid_rcodes": ["NOERROR", "NOTFOUND"]},
            "valid_rcodes[1]",
            "unknown rcode 'NOTFOUND'; use names such as NOERROR, NXDOMAIN, SERVFAIL, REFUSED",
        ),
        ({"valid_rcodes": []}, "valid_rcodes", "needs at least one rcode such as NOERROR"),
        ({"valid_rcodes": "NOERROR"}, "valid_rcodes", "expected a list, got text ('NOERROR')"),
        ({"valid_rcodes": [0]}, "valid_rcodes[0]", "expected text, got a number (0)"),
        (
            {"answer_matches": ["ok", "(a"]},
            "answer_matches[1]",
            "invalid regular expression: missing ), unterminated subpattern at position 0",
        ),
        (
            {"answer_not_matches": ["[z-a]"]},
            "answer_not_matches[0]",
            "invalid regular expression: bad character range z-a at position 1",
        ),
        ({"answer_matches": [1]}, "answer_matches[0]", "expected a regular expression as text"),
        ({"answer_matches": "ok"}, "answer_matches", "expected a list, got text ('ok')"),
        ({"recursion_desired": "yes"}, "recursion_desired", "expected true or false, got text ('yes')"),
        ({"ip_version": "6"}, "ip_version", "must be one of any, ipv4, ipv6; got '6'"),
    ],
)
def test_bad_setting(settings: dict[str, Any], field: str, message: str) -> None:
    assert config_error("127.0.0.1", {"query_name": "a.example", **settings}) == (
        f"{SOURCE}: {SETTINGS}.{field}: {message}"
    )


@pytest.mark.parametrize(
    ("query_name", "message"),
    [
        ("", "must not be empty"),
        ("www example.net", "invalid DNS name 'www example.net': no spaces allowed"),
        (
            f"{'a' * 64}.example",
            f"invalid DNS name '{'a' * 64}.example': each part between dots needs at most 63 characters",
        ),
        ("www..example", "invalid DNS name 'www..example': empty part between dots"),
        (
            ".".join(["abcdefghij"] * 26),
            f"invalid DNS name '{'.'.join(['abcdefghij'] * 26)}': longer than 255 bytes",
        ),
        (53, "expected text, got a number (53)"),
    ],
)
def test_bad_query_name(query_name: Any, message: str) -> None:
    assert config_error("127.0.0.1", {"query_name": query_name}) == (
        f"{SOURCE}: {SETTINGS}.query_name: {message}"
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("127.0.0.1:0", "port must be a number from 1 to 65535, got '0'"),
        ("::1", "IPv6 addresses need brackets"),
        ("", "expected host:port"),
        (53, "expected host:port"),
    ],
)
def test_bad_target(target: Any, message: str) -> None:
    assert config_error(target, {"query_name": "a.example"}).startswith(
        f"{SOURCE}: {CHECK}.target: {message}"
    )


def test_query_name_and_type_are_normalised() -> None:
    prober = make_prober("[::1]:5353", {"query_name": "Example.NET.", "query_type": " srv "})
    assert isinstance(prober, DnsProber)
    assert str(prober.settings.query_name) == "Example.NET."
    assert prober.settings.query_type == dns.rdatatype.SRV
    assert prober.server.port == 5353
    assert prober.settings.valid_rcodes == (dns.rcode.NOERROR,)


def test_ptr_accepts_an_address() -> None:
    prober = make_prober("127.0.0.1", {"query_name": "2001:db8::1", "query_type": "PTR"})
    assert isinstance(prober, DnsProber)
    assert str(prober.settings.query_name).endswith(".8.b.d.0.1.0.0.2.ip6.arpa.")
