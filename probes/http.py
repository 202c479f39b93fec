"""HTTP(S) probe: one fresh connection per run (per hop), timed phase by phase.

Phases: ``resolve, connect, tls, processing, transfer`` (the names
blackbox_exporter uses). ``processing`` runs from the end of the handshake to
the first response byte (HTTP/2: to the response's HEADERS frame),
``transfer`` from there to the end of the body.

Redirects (``follow_redirects``, on by default as in blackbox_exporter) are
followed up to ``max_redirects`` hops, each on a fresh connection with its
own resolve, connect and TLS, to another host or scheme too. Each phase is
summed over the hops, as blackbox_exporter's ``probe_http_duration_seconds``
is ("summed over all redirects"), so a result keeps the same five phases
however many hops it took; ``redirects`` counts the hops and ``final_url``
names where the chain ended. The status, headers, body and certificate
judged are those of the final response. A chain that comes back to a URL it
already asked for (same method), or that needs more than ``max_redirects``
hops, is ``status``: the last answer was a redirect that cannot be followed.

Why not httpx here: a probe's reported latency must be the target's, not
ours. Measured on this machine kind, httpx spends about 1.4 ms of its own CPU
per fresh-connection probe and reports 2 ms more than the true latency, while
a plain asyncio connection with h11 for the HTTP grammar stays under 0.5 ms.
h11 is the same parser httpx uses underneath, so framing (chunked bodies,
content-length, close-delimited bodies) is handled by well-tested code.

The connection is the bare non-blocking socket (``_net.SockStream``): no
asyncio transport or streams, whose set-up cost a loop round trip inside
``connect``, and for HTTPS the handshake runs in OpenSSL on the socket itself
(``_net.tls_handshake``) rather than through asyncio's SSL protocol. The
request is built before ``resolve``, and the socket is closed after the
result (as asyncio's transports did): inside the phases there is only I/O
and the parsing that tells the end of the response. Measured against
blackbox_exporter in ``bench/RESULTS.md``.

The socket reads with the kernel's receive times (``SO_TIMESTAMPNS``):
``processing`` ends when the first response bytes arrived and ``transfer``
(with the run's total) when the last ones did, not when this task was next
scheduled after them. On an idle VM that wake-up costs 0.3-0.5 ms and is
not the target's time. With TLS, OpenSSL reads the socket itself, so each
read first peeks at the encrypted bytes for their receive time (decrypting
them is then inside ``transfer``, as it is in blackbox_exporter's).

HTTP/2 (``http_version: 2``) takes the same road: the same raw asyncio
connection, ALPN ``h2`` (or prior knowledge over ``http://``), and the ``h2``
library (the state machine httpx itself uses for HTTP/2) for framing, HPACK
and flow control. Measured here (2 shared, busy cores; client CPU on the
event-loop thread, 200 fresh-connection HTTPS probes to a loopback server):
HTTP/1.1 with h11 3.5-4.0 ms CPU per probe (mostly the TLS handshake), HTTP/2
with h2 4.9-5.1 ms, httpx with ``http2=True`` 9.2 ms; in clear text h11
1.1 ms and h2 1.6-1.8 ms. h2 costs about 0.6-1.3 ms more than h11 (connection
preface, SETTINGS, HPACK), httpx another 4 ms on top, which would show up as
latency of the target. The phases keep their meaning: ``processing`` ends at
the response's HEADERS, not at the server's SETTINGS frame, which arrives first.
HTTP/2 has no ``Connection: close``: the probe sends GOAWAY after the response.
With ``http_version: 2`` the server must agree (ALPN ``h2``), else ``protocol``;
there is no fallback to HTTP/1.1, which would hide a broken HTTP/2 setup.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urljoin, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h11

from slaprobe import __version__
from slaprobe.configfile import ConfigError, Fields, Node

from ._net import (
    HostPort,
    IpVersion,
    SockStream,
    TlsOptions,
    check_host,
    connect,
    read_ip_version,
    reset_after_tls_hint,
    resolve,
    tls_error_detail,
    tls_handshake,
)
from .base import ErrorKind, PhaseTrace, ProbeFailure, Prober, ProbeResult

_READ_SIZE = 65536

# Characters left as they are when a configured path is percent-encoded: the
# reserved set plus '%' (so paths already encoded stay as written).
_PATH_SAFE = "!$&'()*+,/:;=?@[]~%"

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A header value may not carry line breaks (request smuggling) or other control characters.
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_RESERVED_HEADERS = ("connection", "content-length", "transfer-encoding")
# Connection-specific headers HTTP/2 forbids (RFC 9113, 8.2.2); `te` may only be "trailers".
_NOT_IN_HTTP2 = ("keep-alive", "proxy-connection", "upgrade", "te")

_REDIRECTS = (301, 302, 303, 307, 308)
# Credentials and the Host override are for the configured host only: a redirect
# elsewhere does not get them (as Go's http.Client and browsers do).
_HOST_BOUND_HEADERS = ("authorization", "cookie", "proxy-authorization", "host")
_MAX_REDIRECTS = 30
_PHASE_ORDER = ("resolve", "connect", "tls", "processing", "transfer")

HttpVersion = Literal["1.1", "2"]


@dataclass(frozen=True)
class StatusRange:
    low: int
    high: int

    def __contains__(self, code: object) -> bool:
        return isinstance(code, int) and self.low <= code <= self.high

    def __str__(self) -> str:
        if self.low == self.high:
            return str(self.low)
        if self.high - self.low == 99 and self.low % 100 == 0:
            return f"{self.low // 100}xx"
        return f"{self.low}-{self.high}"


def _read_status_ranges(settings: Fields) -> tuple[StatusRange, ...]:
    node = settings.raw("valid_status")
    if node is None or node.value is None:
        return (StatusRange(200, 299),)
    items = node.value if node.is_list else [node]
    if not items:
        node.fail("needs at least one status code or class such as 2xx")
    ranges = []
    for item in items:
        value = item.value
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            ranges.append(StatusRange(value, value))
        elif isinstance(value, str) and re.fullmatch(r"[1-5]xx", value):
            base = int(value[0]) * 100
            ranges.append(StatusRange(base, base + 99))
        else:
            item.fail(f"expected a status code (100-599) or a class such as 2xx, got {value!r}")
    return tuple(ranges)


def _read_patterns(settings: Fields, key: str) -> tuple[re.Pattern[bytes], ...]:
    patterns = []
    nodes: list[Node] = settings.list(key, [])
    for item in nodes:
        if not isinstance(item.value, str):
            item.fail("expected a regular expression as text")
        try:
            patterns.append(re.compile(item.value.encode(), re.MULTILINE))
        except re.error as exc:
            item.fail(f"invalid regular expression: {exc}")
    return tuple(patterns)


@dataclass(frozen=True)
class HeaderRule:
    """A response header (name in lower case) and a regex one of its values must (not) match."""

    name: str
    display: str  # as written in the config, for messages
    pattern: re.Pattern[str]


def _read_header_rules(settings: Fields, key: str) -> tuple[HeaderRule, ...]:
    node = settings.raw(key)
    if node is None or node.value is None:
        return ()
    if not node.is_mapping:
        node.fail("expected a mapping of header names to regular expressions")
    rules: list[HeaderRule] = []
    seen: dict[str, str] = {}
    items: dict[str, Node] = node.value
    for name, item in items.items():
        if not _HEADER_NAME.fullmatch(name):
            item.fail(f"invalid header name {name!r}")
        if name.lower() in seen:
            item.fail(f"duplicate header: {seen[name.lower()]!r} is already listed (case is ignored)")
        seen[name.lower()] = name
        regexes = item.value if item.is_list else [item]
        if not regexes:
            item.fail("needs at least one regular expression")
        for regex in regexes:
            if not isinstance(regex.value, str):
                regex.fail("expected a regular expression as text")
            try:
                rules.append(HeaderRule(name.lower(), name, re.compile(regex.value)))
            except re.error as exc:
                regex.fail(f"invalid regular expression: {exc}")
    return tuple(rules)


def _read_http_version(settings: Fields) -> HttpVersion:
    node = settings.raw("http_version")
    if node is None or node.value is None:
        return "1.1"
    value = node.value
    if value in ("1.1", 1.1, "HTTP/1.1"):
        return "1.1"
    if value in ("2", 2, "HTTP/2") and not isinstance(value, bool):
        return "2"
    node.fail(f"must be 1.1 or 2; got {value!r}")


@dataclass(frozen=True)
class HttpSettings:
    method: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    valid_status: tuple[StatusRange, ...]
    body_matches: tuple[re.Pattern[bytes], ...]
    body_not_matches: tuple[re.Pattern[bytes], ...]
    tls: TlsOptions
    ip_version: IpVersion
    max_body_bytes: int
    header_matches: tuple[HeaderRule, ...] = ()
    header_not_matches: tuple[HeaderRule, ...] = ()
    follow_redirects: bool = True
    max_redirects: int = 10
    http_version: HttpVersion = "1.1"


@dataclass(frozen=True)
class _Url:
    """One URL the probe asks for: the target, or a redirect's Location."""

    url: str
    endpoint: HostPort
    https: bool
    path: str  # percent-encoded, with the query

    @property
    def host_header(self) -> bytes:
        return _host_header(self.endpoint, self.https)


def _parse_url(url: str, node: Node) -> _Url:
    """Split and check an http(s) URL; ``node.fail`` names what is wrong."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed '[' around an IPv6 address
        node.fail(f"invalid URL {url!r}: {exc}")
    if parts.scheme not in ("http", "https"):
        node.fail(f"expected an http:// or https:// URL, got {url!r}")
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.count(":") > 1 and not hostport.startswith("["):
        node.fail(f"IPv6 addresses need brackets, as in https://[2001:db8::1]:8443/; got {url!r}")
    if not parts.hostname:
        node.fail(f"missing host in {url!r}")
    check_host(node, parts.hostname)
    try:
        explicit_port = parts.port
    except ValueError:
        node.fail(f"invalid port in {url!r}")
    if explicit_port == 0:  # urlsplit accepts 0; `or` below would silently turn it into 80
        node.fail(f"invalid port in {url!r}")
    port = explicit_port or (443 if parts.scheme == "https" else 80)
    if parts.username or parts.password:
        node.fail("credentials in the URL would be stored and shown; use headers with a secret instead")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    # h11 sends the target as ASCII without spaces: encode the rest here, not at probe time.
    path = quote(path, safe=_PATH_SAFE)
    return _Url(url, HostPort(parts.hostname, port), parts.scheme == "https", path)


@dataclass(frozen=True)
class _Response:
    status: int
    http_version: str
    headers: tuple[tuple[str, str], ...]  # names in lower case, in the order received
    body: bytes
    truncated: bool

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


class HttpProber(Prober):
    type_name = "http"

    def __init__(self, url: str, endpoint: HostPort, https: bool, path: str, settings: HttpSettings) -> None:
        self.url = url
        self.endpoint = endpoint
        self.https = https
        self.path = path
        self.settings = settings
        self._first = _Url(url, endpoint, https, path)
        self._ssl: ssl.SSLContext | None = None
        self._h1: dict[_RequestParts, _H1Request] = {}

    @classmethod
    def from_config(cls, target: Node, settings: Fields) -> HttpProber:
        url = target.value
        if not isinstance(url, str):
            target.fail("expected a URL such as https://example.com/health")
        first = _parse_url(url.strip(), target)

        method = settings.str("method", "GET").upper()
        if not re.fullmatch(r"[A-Z]+", method):
            raw = settings.raw("method")
            assert raw is not None
            raw.fail(f"not an HTTP method: {method!r}")
        http_version = _read_http_version(settings)
        headers: dict[str, str] = settings.str_map("headers", {})
        if headers:
            headers_node = settings.raw("headers")
            assert headers_node is not None
            headers = _check_headers(headers_node, headers, http_version)
        body: str = settings.str("body", "", nonempty=False)
        follow_redirects: bool = settings.bool("follow_redirects", True)
        max_redirects: int = settings.int("max_redirects", 10, min=1, max=_MAX_REDIRECTS)
        if "max_redirects" in settings and not follow_redirects:
            node = settings.raw("max_redirects")
            assert node is not None
            node.fail("max_redirects needs follow_redirects: true")
        parsed = HttpSettings(
            method=method,
            headers=tuple(headers.items()),
            body=body.encode(),
            valid_status=_read_status_ranges(settings),
            body_matches=_read_patterns(settings, "body_matches"),
            body_not_matches=_read_patterns(settings, "body_not_matches"),
            tls=TlsOptions.read(settings),
            ip_version=read_ip_version(settings),
            max_body_bytes=settings.int("max_body_bytes", 1 << 20, min=0),
            header_matches=_read_header_rules(settings, "header_matches"),
            header_not_matches=_read_header_rules(settings, "header_not_matches"),
            follow_redirects=follow_redirects,
            max_redirects=max_redirects,
            http_version=http_version,
        )
        return cls(first.url, first.endpoint, first.https, first.path, parsed)

    async def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            # Built once per check, off the event loop (the CA store costs milliseconds);
            # a file the agent cannot read fails this run and is retried on the next.
            alpn = ("h2",) if self.settings.http_version == "2" else ()
            self._ssl = await self.settings.tls.load_context(alpn)
        return self._ssl

    async def probe(self, trace: PhaseTrace) -> ProbeResult:
        s = self.settings
        hop = self._first
        method, body, headers = s.method, s.body, s.headers
        asked = [(method, hop.url)]
        try:
            while True:
                response = await self._exchange(hop, method, body, headers, trace)
                location = response.header_values("location")
                if not (s.follow_redirects and response.status in _REDIRECTS and location):
                    break
                redirects = len(asked) - 1
                target = urljoin(hop.url, location[0].strip())
                if redirects >= s.max_redirects:
                    trace.fields["status_code"] = float(response.status)
                    detail = (
                        f"too many redirects: stopped after {redirects} "
                        f"(HTTP {response.status} from {hop.url} to {target})"
                    )
                    raise ProbeFailure(ErrorKind.STATUS, detail)
                try:
                    hop = _parse_url(target, Node(target, "", None, "Location"))
                except ConfigError as exc:  # the server's Location, not our config
                    trace.fields["status_code"] = float(response.status)
                    detail = f"HTTP {response.status} redirect to an unusable URL: {exc.message}"
                    raise ProbeFailure(ErrorKind.PROTOCOL, detail) from exc
                method, body = _redirected_method(response.status, method, body)
                if (method, hop.url) in asked:
                    trace.fields["status_code"] = float(response.status)
                    chain = " -> ".join(url for _, url in asked[asked.index((method, hop.url)) :])
                    detail = f"redirect loop: {chain} -> {hop.url} (HTTP {response.status})"
                    raise ProbeFailure(ErrorKind.STATUS, detail)
                if hop.endpoint.host.lower() != self.endpoint.host.lower():
                    headers = tuple((k, v) for k, v in s.headers if k.lower() not in _HOST_BOUND_HEADERS)
                else:
                    headers = s.headers
                asked.append((method, hop.url))
                trace.fields["redirects"] = float(len(asked) - 1)
                trace.fields["final_url"] = hop.url
                _sum_phases(trace)
        except ProbeFailure:
            _sum_phases(trace)  # run_probe closes the trace again: a no-op once closed
            raise
        return self._judge(response, _sum_phases(trace), trace.fields)

    def _judge(
        self,
        response: _Response,
        phases: tuple[tuple[str, float], ...],
        fields: dict[str, float | str | bool],
    ) -> ProbeResult:
        s = self.settings
        status, body = response.status, response.body
        fields["status_code"] = float(status)
        fields["http_version"] = response.http_version
        fields["body_bytes"] = float(len(body))
        if response.truncated:
            fields["body_truncated"] = True
        if not any(status in r for r in s.valid_status):
            expected = ", ".join(str(r) for r in s.valid_status)
            detail = f"HTTP {status} (expected {expected})"
            return ProbeResult(False, phases, ErrorKind.STATUS, detail, fields)
        for rule in s.header_matches:
            values = response.header_values(rule.name)
            if not values:
                detail = f"header {rule.display} missing (expected to match {rule.pattern.pattern!r})"
                return ProbeResult(False, phases, ErrorKind.ASSERTION, detail, fields)
            if not any(rule.pattern.search(v) for v in values):
                shown = _shorten(", ".join(values))
                detail = f"header {rule.display}: {shown!r} does not match {rule.pattern.pattern!r}"
                return ProbeResult(False, phases, ErrorKind.ASSERTION, detail, fields)
        for rule in s.header_not_matches:
            for value in response.header_values(rule.name):
                if rule.pattern.search(value):
                    shown = _shorten(value)
                    detail = f"header {rule.display}: {shown!r} matches forbidden {rule.pattern.pattern!r}"
                    return ProbeResult(False, phases, ErrorKind.ASSERTION, detail, fields)
        for pattern in s.body_matches:
            if not pattern.search(body):
                detail = f"body does not match {pattern.pattern.decode()!r}"
                return ProbeResult(False, phases, ErrorKind.ASSERTION, detail, fields)
        for pattern in s.body_not_matches:
            if pattern.search(body):
                detail = f"body matches forbidden {pattern.pattern.decode()!r}"
                return ProbeResult(False, phases, ErrorKind.ASSERTION, detail, fields)
        return ProbeResult(True, phases, None, f"HTTP {status}", fields)

    async def _exchange(
        self,
        hop: _Url,
        method: str,
        body: bytes,
        headers: tuple[tuple[str, str], ...],
        trace: PhaseTrace,
    ) -> _Response:
        """One request on a fresh connection: resolve, connect, TLS, request, response."""
        s = self.settings
        ctx = await self._ssl_context() if hop.https else None
        request = _RequestParts(hop, method, body, headers, s.headers)
        # The request is ready before the clock's first phase: nothing but I/O inside the phases.
        h1 = None if s.http_version == "2" else self._h1_request(request)
        family, sockaddr = await resolve(hop.endpoint, s.ip_version, trace)
        # HTTP/1.1 in clear text is one send: no TCP_NODELAY needed (see connect).
        stream = SockStream(await connect(family, sockaddr, trace, nodelay=ctx is not None or h1 is None))
        stream.stamp_reads()  # phases end when the bytes arrived (kernel receive times)
        try:
            if ctx is not None:
                # server_name is for the configured host; a redirect elsewhere verifies its own name.
                same_host = hop.endpoint.host.lower() == self.endpoint.host.lower()
                server_name = (s.tls.server_name if same_host else None) or hop.endpoint.host
                await tls_handshake(stream, ctx, server_name, trace)
                if s.http_version == "2":
                    tls = stream.sock
                    alpn = tls.selected_alpn_protocol() if isinstance(tls, ssl.SSLSocket) else None
                    if alpn != "h2":
                        detail = f"the server did not agree to HTTP/2 (ALPN: {alpn or 'none'})"
                        raise ProbeFailure(ErrorKind.PROTOCOL, detail)
            if h1 is None:
                response = await self._exchange_h2(request, stream, trace)
            else:
                response = await self._exchange_h1(request, h1, stream, trace)
        finally:
            stream.close()
        trace.stop(at=stream.rx_perf())  # the last byte's arrival: judging the answer is our time
        return response

    # ------------------------------------------------------------------ HTTP/1.1

    def _h1_request(self, parts: _RequestParts) -> _H1Request:
        """The request's h11 events and bytes, made on its first run (a check sends the same one each time)."""
        made = self._h1.get(parts)
        if made is None:
            if len(self._h1) >= _H1_CACHED:  # redirects to ever new URLs: keep the first ones
                return _H1Request(parts)
            made = self._h1[parts] = _H1Request(parts)
        return made

    async def _exchange_h1(
        self, request: _RequestParts, h1: _H1Request, stream: SockStream, trace: PhaseTrace
    ) -> _Response:
        trace.enter("processing")
        try:
            await stream.send_all(h1.data)
            # h11's state for this connection, made while the target works on the request (the
            # answer's time is its kernel receive time, so this is not counted either way).
            conn = h1.connection()
            first = await stream.recv(_READ_SIZE)
        except ConnectionError as exc:
            hint = (
                reset_after_tls_hint(trace.fields, self.settings.tls.client_cert) if request.hop.https else ""
            )
            raise ProbeFailure(ErrorKind.RESET, f"connection reset before any response{hint}") from exc
        except ssl.SSLError as exc:
            raise ProbeFailure(ErrorKind.TLS, tls_error_detail(exc, "before any response")) from exc
        if not first:
            raise ProbeFailure(ErrorKind.RESET, "connection closed before any response")
        trace.enter("transfer", at=stream.rx_perf())
        return await self._read_response(conn, stream, first)

    async def _read_response(self, conn: h11.Connection, stream: SockStream, first: bytes) -> _Response:
        limit = self.settings.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        status = 0
        version = ""
        headers: tuple[tuple[str, str], ...] = ()
        # A peer that is not HTTP (SSH, SMTP, a TLS server) is told apart by its
        # first bytes; h11 alone would wait for a blank line that never comes.
        head = first
        _check_http_start(head)
        eof = False
        conn.receive_data(first)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = await stream.recv(_READ_SIZE)
                    except ConnectionError as exc:
                        detail = "connection reset during the response"
                        raise ProbeFailure(ErrorKind.RESET, detail) from exc
                    except ssl.SSLError as exc:
                        detail = tls_error_detail(exc, "during the response")
                        raise ProbeFailure(ErrorKind.TLS, detail) from exc
                    if len(head) < 5:
                        head += data
                        _check_http_start(head)
                    eof = not data
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    version = "HTTP/" + event.http_version.decode()
                    headers = tuple((k.decode("ascii").lower(), _text(v)) for k, v in event.headers)
                elif isinstance(event, h11.InformationalResponse):
                    continue
                elif isinstance(event, h11.Data):
                    if size < limit:
                        chunks.append(event.data[: limit - size])
                    size += len(event.data)
                    if size > limit:
                        # Enough to judge the body; the rest would only cost time and memory.
                        return _Response(status, version, headers, b"".join(chunks), True)
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return _Response(status, version, headers, b"".join(chunks), False)
                else:  # h11.PAUSED: a 2xx answer to a configured CONNECT
                    detail = f"unexpected HTTP event {type(event).__name__}"
                    raise ProbeFailure(ErrorKind.PROTOCOL, detail)
        except h11.RemoteProtocolError as exc:
            # Data already received was parsed before the end of stream was fed in,
            # so an error raised after EOF means the response was cut short.
            if eof:
                detail = f"connection closed mid-response: {exc}"
                raise ProbeFailure(ErrorKind.RESET, detail) from exc
            raise ProbeFailure(ErrorKind.PROTOCOL, f"malformed HTTP response: {exc}") from exc

    # ------------------------------------------------------------------ HTTP/2

    async def _exchange_h2(self, request: _RequestParts, stream: SockStream, trace: PhaseTrace) -> _Response:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        body = request.body
        conn.send_headers(stream_id, request.h2_headers(), end_stream=not body)
        trace.enter("processing")
        limit = self.settings.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        status = 0
        headers: tuple[tuple[str, str], ...] = ()
        head = b""
        while True:
            while body and conn.local_flow_control_window(stream_id) > 0:
                n = min(len(body), conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                conn.send_data(stream_id, body[:n], end_stream=n == len(body))
                body = body[n:]
            try:
                await stream.send_all(conn.data_to_send())
                data = await stream.recv(_READ_SIZE)
            except ConnectionError as exc:
                if status:
                    raise ProbeFailure(ErrorKind.RESET, "connection reset during the response") from exc
                hint = (
                    reset_after_tls_hint(trace.fields, self.settings.tls.client_cert)
                    if request.hop.https
                    else ""
                )
                raise ProbeFailure(ErrorKind.RESET, f"connection reset before any response{hint}") from exc
            except ssl.SSLError as exc:
                when = "during the response" if status else "before any response"
                raise ProbeFailure(ErrorKind.TLS, tls_error_detail(exc, when)) from exc
            if not data:
                if status:
                    raise ProbeFailure(ErrorKind.RESET, "connection closed mid-response")
                raise ProbeFailure(ErrorKind.RESET, "connection closed before any response")
            if len(head) < 4:
                head += data
                _check_h2_start(head)
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                raise ProbeFailure(ErrorKind.PROTOCOL, f"malformed HTTP/2: {exc}") from exc
            for event in events:
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                    trace.enter("transfer")
                    raw = [(bytes(k), bytes(v)) for k, v in event.headers or ()]
                    status = int(dict(raw).get(b":status", b"0"))
                    headers = tuple((k.decode("ascii"), _text(v)) for k, v in raw if not k.startswith(b":"))
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream_id:
                    data_bytes = event.data or b""
                    conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
                    if size < limit:
                        chunks.append(data_bytes[: limit - size])
                    size += len(data_bytes)
                    if size > limit:
                        return self._h2_done(
                            conn, stream, _Response(status, "HTTP/2", headers, b"".join(chunks), True)
                        )
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    return self._h2_done(
                        conn, stream, _Response(status, "HTTP/2", headers, b"".join(chunks), False)
                    )
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream_id:
                    code = _h2_error_name(event.error_code)
                    raise ProbeFailure(ErrorKind.RESET, f"the server reset the HTTP/2 stream ({code})")
                elif isinstance(event, h2.events.ConnectionTerminated) and (
                    # A graceful GOAWAY that still covers our stream lets it finish.
                    event.error_code or (event.last_stream_id or 0) < stream_id
                ):
                    code = _h2_error_name(event.error_code)
                    detail = f"the server closed the HTTP/2 connection (GOAWAY {code})"
                    raise ProbeFailure(ErrorKind.RESET, detail)

    @staticmethod
    def _h2_done(conn: h2.connection.H2Connection, stream: SockStream, response: _Response) -> _Response:
        # HTTP/2 has no Connection: close; a GOAWAY says the same: nothing more on this connection.
        conn.close_connection()
        stream.send_nowait(conn.data_to_send())
        return response


@dataclass(frozen=True)
class _RequestParts:
    hop: _Url
    method: str
    body: bytes
    headers: tuple[tuple[str, str], ...]  # the configured headers this hop gets
    configured: tuple[tuple[str, str], ...]  # all configured headers (for Content-Length rules)

    def _header_list(self) -> list[tuple[bytes, bytes]]:
        defaults = [
            (b"Host", self.hop.host_header),
            (b"User-Agent", f"slaprobe/{__version__}".encode()),
            (b"Accept", b"*/*"),
        ]
        # A configured Host, User-Agent or Accept replaces ours: sending both would
        # be two Host headers (h11 refuses) or an ambiguous request.
        overridden = {k.lower().encode() for k, _ in self.headers}
        headers = [(k, v) for k, v in defaults if k.lower() not in overridden]
        headers.extend((k.encode(), v.encode()) for k, v in self.headers)
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            headers.append((b"Content-Length", str(len(self.body)).encode()))
        return headers

    def h11_events(self) -> tuple[h11.Request | h11.Data | h11.EndOfMessage, ...]:
        headers = self._header_list()
        # A new connection per probe, announced, as blackbox_exporter does.
        headers.append((b"Connection", b"close"))
        events: list[h11.Request | h11.Data | h11.EndOfMessage] = [
            h11.Request(method=self.method, target=self.hop.path, headers=headers)
        ]
        if self.body:
            events.append(h11.Data(data=self.body))
        events.append(h11.EndOfMessage())
        return tuple(events)

    def h2_headers(self) -> list[tuple[bytes, bytes]]:
        headers = self._header_list()
        authority = next(v for k, v in headers if k.lower() == b"host")
        pseudo = [
            (b":method", self.method.encode()),
            (b":scheme", b"https" if self.hop.https else b"http"),
            (b":authority", authority),
            (b":path", self.hop.path.encode()),
        ]
        return pseudo + [(k.lower(), v) for k, v in headers if k.lower() != b"host"]


_H1_CACHED = 16  # distinct requests a prober keeps made (its URL, and the hops it is redirected to)


class _H1Request:
    """One request's h11 events and bytes, made once and reused on every run.

    Building an ``h11.Request`` (header validation) and serialising it took
    ~70 µs per run here, before the request could leave: time in the probe's
    clock that is not the target's. h11's events are immutable, so one set
    serves every connection; each run still gets a fresh ``h11.Connection``
    driven through the same events (its state must know the request was sent
    to read the response), but after the bytes are on their way.
    """

    __slots__ = ("data", "events")

    def __init__(self, parts: _RequestParts) -> None:
        self.events = parts.h11_events()
        self.data = self._drive(h11.Connection(our_role=h11.CLIENT))

    def connection(self) -> h11.Connection:
        """A fresh client connection that has sent this request (its bytes are :attr:`data`)."""
        conn = h11.Connection(our_role=h11.CLIENT)
        self._drive(conn)
        return conn

    def _drive(self, conn: h11.Connection) -> bytes:
        return b"".join(conn.send(event) or b"" for event in self.events)


def _redirected_method(status: int, method: str, body: bytes) -> tuple[str, bytes]:
    """303 turns anything but HEAD into GET; 301 and 302 turn POST into GET (as browsers and Go do)."""
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        return "GET", b""
    return method, body


def _sum_phases(trace: PhaseTrace) -> tuple[tuple[str, float], ...]:
    """Close the phase in progress and sum each phase over the hops so far (blackbox_exporter's rule).

    PhaseTrace (the probe seam, ``base.py``) has no public way to rewrite what it
    recorded, so this folds its list in place. Called
    between hops too, so a run cut short by its timeout reports the earlier hops
    summed and only the hop that hung after them.
    """
    trace.close()
    phases: list[tuple[str, float]] = trace._phases
    summed: dict[str, float] = {}
    for name, seconds in phases:
        summed[name] = summed.get(name, 0.0) + seconds
    # In the order of a request (a first hop without TLS would put tls last otherwise).
    order = {name: i for i, name in enumerate(_PHASE_ORDER)}
    phases[:] = sorted(summed.items(), key=lambda item: order.get(item[0], len(order)))
    return tuple(phases)


def _h2_error_name(code: int | None) -> str:
    try:
        return h2.errors.ErrorCodes(code or 0).name
    except ValueError:
        return f"error {code}"


def _text(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _check_h2_start(head: bytes) -> None:
    """A server's HTTP/2 preface is a SETTINGS frame (type 4, the 4th byte); h2 would wait for more."""
    if head.startswith(b"HTTP/"):
        raise ProbeFailure(ErrorKind.PROTOCOL, f"the server answered in HTTP/1, not HTTP/2: {head[:40]!r}")
    if len(head) >= 4 and head[3] != 4:
        raise ProbeFailure(
            ErrorKind.PROTOCOL, f"not an HTTP/2 server (no SETTINGS frame first): {head[:40]!r}"
        )


def _check_http_start(head: bytes) -> None:
    if not b"HTTP/".startswith(head[:5]):
        raise ProbeFailure(ErrorKind.PROTOCOL, f"not an HTTP response: {head[:40]!r}")


def _host_header(endpoint: HostPort, https: bool) -> bytes:
    host = endpoint.host
    if endpoint.is_ip_literal:
        if ":" in host:
            host = f"[{host}]"  # IPv6 literals are bracketed in Host as in URLs
    elif not host.isascii():
        host = host.encode("idna").decode("ascii")
    if endpoint.port != (443 if https else 80):
        host = f"{host}:{endpoint.port}"
    return host.encode("ascii")


def _check_headers(node: Node, headers: dict[str, str], http_version: HttpVersion = "1.1") -> dict[str, str]:
    """Validate configured headers, naming the offending one; return them with values trimmed."""
    items: dict[str, Node] = node.value
    checked: dict[str, str] = {}
    seen: dict[str, str] = {}
    for name, value in headers.items():
        item = items[name]
        if not _HEADER_NAME.fullmatch(name):
            item.fail(f"invalid header name {name!r}")
        if name.lower() in seen:
            item.fail(f"duplicate header: {seen[name.lower()]!r} is already set (case is ignored)")
        seen[name.lower()] = name
        if name.lower() in _RESERVED_HEADERS:
            item.fail(f"{name.lower()} is set by the probe (a fresh connection per run)")
        if _HEADER_VALUE_BAD.search(value):
            item.fail("header values must not contain line breaks or control characters")
        te_trailers = name.lower() == "te" and value.strip().lower() == "trailers"
        if http_version == "2" and name.lower() in _NOT_IN_HTTP2 and not te_trailers:
            item.fail(f"{name.lower()} is a connection header, which HTTP/2 forbids")
        # Surrounding whitespace is not part of a header value, and h11 refuses to send it.
        checked[name] = value.strip(" \t")
    return checked
