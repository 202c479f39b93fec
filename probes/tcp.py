"""TCP probe: open a connection; optionally TLS; optionally a scripted exchange (``query``).

Phases ``resolve, connect``, then ``tls`` with ``tls: true`` and ``query``
when there are steps. Fields: ``ip``; with TLS ``tls_version`` and
``cert_days_left``; with a query ``banner`` (the first line received).

A query is a list of steps, each ``send: text`` or ``expect: regex`` (in the
order given, like blackbox_exporter's ``query_response``):

- ``send`` writes the text, then ``\\r\\n`` unless it already ends with a
  line break (SMTP, Redis, POP3, IMAP and memcached all take CRLF).
- ``expect`` reads the next line (up to ``\\n``; the line end is stripped
  before matching) and the regex must match it (``re.search``, bytes). With
  ``skip: regex``, lines that match ``skip`` are passed over first, for
  replies of several lines such as SMTP's ``250-`` continuation lines.

A line that does not match is ``assertion``, naming the step and the line
received. The peer closing before the line arrives is ``reset``. No line
within the check's timeout is ``timeout`` (the runner's): the field
``query_step`` then names the step that was waiting. When the last step is
an ``expect``, the probe's time ends when that line arrived (the kernel's
receive time), not when the agent got round to reading it.

With ``tls: true`` the handshake is verified as in the HTTP probe (same
``tls_verify``, ``ca_file``, ``server_name``, ``client_cert``,
``client_key``). In TLS 1.3 a server judges a client certificate after the
handshake, so a missing or rejected one is seen by a query's first read
(``tls``, "the server requires a client certificate"); without a query the
probe waits for the server's verdict outside the clock, as the TLS probe
does with its default ``verdict_wait`` (``_net.await_tls13_verdict``).
"""

from __future__ import annotations

import re
import ssl
import time
from dataclasses import dataclass

from slaprobe.configfile import Fields, Node

from ._net import (
    VERDICT_MARGIN_S,
    HostPort,
    IpVersion,
    SockStream,
    TlsOptions,
    await_tls13_verdict,
    close_later,
    connect,
    parse_host_port,
    read_ip_version,
    reset_after_tls_hint,
    resolve,
    tls_error_detail,
    tls_handshake,
)
from .base import ErrorKind, PhaseTrace, ProbeFailure, Prober, ProbeResult

_MAX_LINE = 65536
TLS13_VERDICT_WAIT_S = 1.0  # the tls probe's default verdict_wait
_SHOWN = 200  # characters of a received line quoted in a detail


@dataclass(frozen=True)
class QueryStep:
    label: str  # "query[1] expect '^\\+PONG'" (the regex as written), for details and query_step
    send: bytes | None = None
    expect: re.Pattern[bytes] | None = None
    skip: re.Pattern[bytes] | None = None


def _read_query(settings: Fields) -> tuple[QueryStep, ...]:
    nodes: list[Node] = settings.list("query", [])
    steps = []
    for index, node in enumerate(nodes):
        step = Fields(node, "a step such as {send: PING} or {expect: '^\\+PONG'}")
        send: str | None = step.str("send", None, nonempty=False)
        expect = _regex(step, "expect")
        skip = _regex(step, "skip")
        step.finish()
        if skip is not None and expect is None:
            raw = step.raw("skip")
            assert raw is not None
            raw.fail("skip needs expect (the line to wait for)")
        if send is None and expect is None:
            node.fail("a step needs send or expect")
        if send is not None and expect is not None:
            node.fail("a step is either send or expect, not both: write them as two steps")
        if send is not None:
            data = send.encode()
            if not data.endswith(b"\n"):
                data += b"\r\n"
            steps.append(QueryStep(f"query[{index}] send {send.rstrip()!r}", send=data))
        else:
            assert expect is not None
            label = f"query[{index}] expect '{expect.pattern.decode()}'"  # as written, unescaped
            steps.append(QueryStep(label, expect=expect, skip=skip))
    return tuple(steps)


def _regex(step: Fields, key: str) -> re.Pattern[bytes] | None:
    text: str | None = step.str(key, None)
    if text is None:
        return None
    try:
        return re.compile(text.encode())
    except re.error as exc:
        node = step.raw(key)
        assert node is not None
        node.fail(f"invalid regular expression: {exc}")


class TcpProber(Prober):
    type_name = "tcp"

    def __init__(
        self,
        endpoint: HostPort,
        ip_version: IpVersion,
        tls: TlsOptions | None = None,
        query: tuple[QueryStep, ...] = (),
    ) -> None:
        self.endpoint = endpoint
        self.ip_version = ip_version
        self.tls = tls
        self.query = query
        self._ssl: ssl.SSLContext | None = None

    @classmethod
    def from_config(cls, target: Node, settings: Fields) -> TcpProber:
        endpoint = parse_host_port(target)
        ip_version = read_ip_version(settings)
        use_tls: bool = settings.bool("tls", False)
        tls = TlsOptions.read(settings)
        if not use_tls:
            for key in TlsOptions.KEYS:
                node = settings.raw(key)
                if node is not None:
                    node.fail(f"{key} needs tls: true")
        return cls(endpoint, ip_version, tls if use_tls else None, _read_query(settings))

    async def probe(self, trace: PhaseTrace) -> ProbeResult:
        ctx: ssl.SSLContext | None = None
        if self.tls is not None:
            if self._ssl is None:
                # Built once per check, off the event loop and outside the timed phases.
                self._ssl = await self.tls.load_context()
            ctx = self._ssl
        family, sockaddr = await resolve(self.endpoint, self.ip_version, trace)
        sock = await connect(family, sockaddr, trace, nodelay=ctx is not None or bool(self.query))
        if ctx is None and not self.query:
            close_later(sock)
            return ProbeResult(True, trace.close(), None, f"connected to {self.endpoint}", trace.fields)
        stream = SockStream(sock)
        detail = f"connected to {self.endpoint}"
        try:
            if ctx is not None and self.tls is not None:
                started = time.perf_counter()
                await tls_handshake(stream, ctx, self.tls.server_name or self.endpoint.host, trace)
                detail += f", {trace.fields.get('tls_version', 'TLS')}"
                tls = stream.sock
                if not self.query and isinstance(tls, ssl.SSLSocket) and tls.version() == "TLSv1.3":
                    # Nothing is read after the handshake: wait for the server's verdict on us, as
                    # the tls probe does (its default verdict_wait), outside the clock.
                    wait_s = min(TLS13_VERDICT_WAIT_S, time.perf_counter() - started + VERDICT_MARGIN_S)
                    trace.stop()
                    await await_tls13_verdict(stream, tls, wait_s)
            if self.query:
                stream.stamp_reads()  # an expected line ends at its arrival, not when this task woke
                trace.enter("query")
                await self._run_query(_LineReader(stream), trace)
                if self.query[-1].expect is not None:
                    trace.stop(at=stream.rx_perf())  # the last expected line's arrival
                detail += f", query passed ({len(self.query)} steps)"
        finally:
            # At once, TLS included: no wait for the peer's close_notify after the result.
            stream.close()
        return ProbeResult(True, trace.close(), None, detail, trace.fields)

    async def _run_query(self, lines: _LineReader, trace: PhaseTrace) -> None:
        for step in self.query:
            # Left in the fields while the step runs: a timeout result then names it.
            trace.fields["query_step"] = step.label
            if step.send is not None:
                try:
                    await lines.stream.send_all(step.send)
                except ssl.SSLError as exc:
                    raise ProbeFailure(ErrorKind.TLS, tls_error_detail(exc, f"at {step.label}")) from exc
                except OSError as exc:  # reset, broken pipe
                    raise ProbeFailure(ErrorKind.RESET, f"{step.label}: connection reset") from exc
                continue
            assert step.expect is not None
            skipped = 0
            while True:
                line = await _read_line(lines, step, trace, self.tls.client_cert if self.tls else None)
                if line is None:
                    what = f"after {skipped} skipped lines" if skipped else "before any line"
                    raise ProbeFailure(ErrorKind.RESET, f"{step.label}: connection closed {what}")
                if step.expect.search(line):
                    break
                if step.skip is not None and step.skip.search(line):
                    skipped += 1
                    continue
                shown = _show(line)
                raise ProbeFailure(ErrorKind.ASSERTION, f"{step.label} failed: received {shown!r}")
        del trace.fields["query_step"]


class _LineReader:
    """Lines from a :class:`SockStream`, buffered: one ``recv`` may carry several lines."""

    __slots__ = ("_buffer", "stream")

    def __init__(self, stream: SockStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def readline(self) -> tuple[bytes, bool]:
        """The next line with its ``\\n``; at EOF what is left and ``True``.

        Raises ``ValueError`` for a line longer than ``_MAX_LINE`` bytes.
        """
        searched = 0
        while True:
            end = self._buffer.find(b"\n", searched)
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line, False
            if len(self._buffer) > _MAX_LINE:
                raise ValueError(f"a line longer than {_MAX_LINE} bytes")
            searched = len(self._buffer)
            chunk = await self.stream.recv(_MAX_LINE)
            if not chunk:
                rest = bytes(self._buffer)
                self._buffer.clear()
                return rest, True
            self._buffer += chunk


async def _read_line(
    lines: _LineReader, step: QueryStep, trace: PhaseTrace, client_cert: str | None
) -> bytes | None:
    """The next line without its line end; a last line without one at EOF; None at EOF."""
    try:
        raw, eof = await lines.readline()
    except ValueError as exc:
        raise ProbeFailure(ErrorKind.PROTOCOL, f"{step.label}: {exc}") from exc
    except ssl.SSLError as exc:
        raise ProbeFailure(ErrorKind.TLS, tls_error_detail(exc, f"at {step.label}")) from exc
    except OSError as exc:  # reset
        hint = "" if "banner" in trace.fields else reset_after_tls_hint(trace.fields, client_cert)
        raise ProbeFailure(ErrorKind.RESET, f"{step.label}: connection reset{hint}") from exc
    if eof and not raw:
        return None
    line = raw.rstrip(b"\r\n")
    trace.fields.setdefault("banner", _show(line))
    return line


def _show(line: bytes) -> str:
    text = line.decode("utf-8", errors="replace")
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
