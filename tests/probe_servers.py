"""Real servers on loopback for the probe tests.

Everything binds to 127.0.0.1 (or ::1) on port 0 and runs in threads inside
the test process, so the probes talk to a real kernel socket and a real HTTP
or TLS stack, never to a mock.

- :class:`HttpTestServer`: ``http.server`` with a few routes (see
  :class:`_Handler`), optionally over TLS with a certificate from ``trustme``.
  Every request's headers are recorded in :attr:`HttpTestServer.requests`.
- :class:`H2TestServer`: HTTP/2 with the ``h2`` library on a plain socket,
  over TLS (ALPN ``h2``) or in clear text (prior knowledge); see its routes.
- :class:`RawTcpServer`: accepts connections and hands each one to a
  behaviour: :func:`silent` (never answers), :func:`close_at_once`,
  :func:`reset_at_once`, :func:`garbage` (a non-HTTP banner),
  :class:`LineProtocol` (SMTP- or Redis-like lines).
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h2.config
import h2.connection
import h2.events

__all__ = [
    "OK_BODY",
    "H2TestServer",
    "HttpTestServer",
    "LineProtocol",
    "RawTcpServer",
    "RecordedRequest",
    "can_bind_ipv6_loopback",
    "close_at_once",
    "closed_port",
    "garbage",
    "garbage_then_close",
    "over_tls",
    "reset_at_once",
    "silent",
    "tls_handshake",
]

OK_BODY = b"hello from the slaprobe test server\nstatus: all good\n"
CHUNKS = (b"first chunk\n", b"second chunk\n", b"marker: CHUNKED-END\n")


def can_bind_ipv6_loopback() -> bool:
    """True if this machine can listen on ::1 (IPv6 may be compiled in but disabled)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def closed_port(host: str = "127.0.0.1") -> int:
    """A loopback port with nothing listening on it (connecting is refused)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    # Bound but never listening, then closed: the kernel answers SYN with RST.
    return port


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    request_version: str
    headers: list[tuple[str, str]]
    body: bytes
    client_port: int = 0  # a fresh connection per request shows as a new port

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes:

    ``/ok``                  200 with :data:`OK_BODY` and a Content-Length
    ``/status/<code>``       that status, with a short body
    ``/chunked``             200, Transfer-Encoding: chunked, :data:`CHUNKS`
    ``/delay/<seconds>``     sleeps, then answers like ``/ok``
    ``/large/<bytes>``       200 with that many bytes of ``x`` (Content-Length)
    ``/close-delimited``     HTTP/1.0-style body ended by closing the connection
    ``/short-body``          announces 1000 bytes, sends 10, closes
    ``/hang-up``             closes the connection without any response
    ``/redirect/<code>?to=U``  that status with ``Location: U`` (U as given, may be relative)
    ``/hops/<n>``            302 to ``/hops/<n-1>``; ``/hops/0`` answers like ``/ok``
    ``/loop/a``, ``/loop/b``   302 to each other
    ``/headers?N=V&N=W``     200 with each query pair sent as a response header
    anything else            404
    """

    protocol_version = "HTTP/1.1"
    server: _ThreadingHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.owner.requests.append(
            RecordedRequest(
                method=self.command,
                path=self.path,
                request_version=self.request_version,
                headers=list(self.headers.items()),
                body=body,
                client_port=self.client_address[1],
            )
        )

    def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._record()
        path = self.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if path == "/ok":
            self._send(200, OK_BODY)
        elif parts[0] == "status" and len(parts) == 2 and parts[1].isdigit():
            code = int(parts[1])
            self._send(code, f"status {code}\n".encode())
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in CHUNKS:
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
                time.sleep(0.01)
            self.wfile.write(b"0\r\n\r\n")
        elif parts[0] == "delay" and len(parts) == 2:
            time.sleep(float(parts[1]))
            self._send(200, OK_BODY)
        elif parts[0] == "large" and len(parts) == 2 and parts[1].isdigit():
            size = int(parts[1])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = b"x" * 65536
            with contextlib.suppress(OSError):  # the probe may stop reading early
                remaining = size
                while remaining > 0:
                    n = min(remaining, len(block))
                    self.wfile.write(block[:n])
                    remaining -= n
        elif path == "/close-delimited":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(OK_BODY)
            self.close_connection = True
        elif path == "/hang-up":
            self.close_connection = True
        elif parts[0] == "redirect" and len(parts) == 2 and parts[1].isdigit():
            query = dict(parse_qsl(urlsplit(self.path).query))
            self._redirect(int(parts[1]), query.get("to", "/ok"))
        elif parts[0] == "hops" and len(parts) == 2 and parts[1].isdigit():
            left = int(parts[1])
            if left:
                self._redirect(302, f"/hops/{left - 1}")
            else:
                self._send(200, OK_BODY)
        elif parts[0] == "loop" and len(parts) == 2:
            self._redirect(302, "/loop/b" if parts[1] == "a" else "/loop/a")
        elif path == "/headers":
            body = b"headers as asked\n"
            self.send_response(200)
            for name, value in parse_qsl(urlsplit(self.path).query):
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/short-body":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.close_connection = True
        else:
            self._send(404, b"not found\n")

    def _redirect(self, code: int, location: str) -> None:
        body = f"see {location}\n".encode()
        self.send_response(code)
        self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET
    do_POST = do_GET
    do_PUT = do_GET
    do_DELETE = do_GET


class _ThreadingHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: HttpTestServer

    def finish_request(self, request: Any, client_address: Any) -> None:
        ctx = self.owner.ssl_context
        if ctx is None:
            super().finish_request(request, client_address)
            return
        # Handshake in the connection's own thread, so a client that fails the
        # handshake (or never starts it) cannot stall the accept loop.
        request.settimeout(5.0)
        tls = tls_handshake(ctx, request, self.owner.handshake_errors)
        if tls is None:
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a probe that hangs up early is expected here


class _ThreadingHttp6Server(_ThreadingHttpServer):
    address_family = socket.AF_INET6


class HttpTestServer:
    """A threaded HTTP(S) server on loopback; use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.ssl_context = ssl_context
        self.requests: list[RecordedRequest] = []
        self.handshake_errors: list[BaseException] = []
        server_cls = _ThreadingHttp6Server if ":" in host else _ThreadingHttpServer
        self._server: _ThreadingHttpServer = server_cls((host, 0), _Handler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def url(self, path: str = "/ok", host: str | None = None) -> str:
        return f"{self.scheme}://{url_host(host or self.host)}:{self.port}{path}"

    def __enter__(self) -> HttpTestServer:
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------- HTTP/2


class H2TestServer:
    """HTTP/2 on loopback with the ``h2`` library, one thread per connection.

    With ``ssl_context`` it speaks TLS and offers ALPN ``h2`` only (pass
    ``alpn=("http/1.1",)`` to refuse HTTP/2); without, HTTP/2 with prior
    knowledge (h2c). Routes: ``/ok`` (200, :data:`OK_BODY`, ``x-proto: h2``),
    ``/status/<code>``, ``/large/<bytes>`` (beyond one flow-control window),
    ``/reset`` (RST_STREAM, no response), ``/goaway`` (GOAWAY with an error),
    ``/echo`` (200 with the request body). Requests go to :attr:`requests` as
    (method, path, headers, body), headers as text with lower-case names.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
        alpn: tuple[str, ...] = ("h2",),
    ) -> None:
        self.host = host
        self.ssl_context = ssl_context
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(list(alpn))
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.connections = 0
        self._stop = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)

    def url(self, path: str = "/ok") -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{url_host(self.host)}:{self.port}{path}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5.0)
        sock: socket.socket = raw
        try:
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(raw, server_side=True)
                if sock.selected_alpn_protocol() != "h2":
                    # An HTTP/1.1-only server: answer in HTTP/1.1.
                    sock.recv(65536)
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nh1")
                    return
            self._serve_h2(sock)
        except OSError:  # ssl.SSLError too: a client that hangs up or fails the handshake
            pass
        finally:
            sock.close()
            raw.close()

    def _serve_h2(self, sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        pending: dict[int, tuple[str, str, dict[str, str], bytearray]] = {}
        while not self._stop.is_set():
            data = sock.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = {str(k): str(v) for k, v in event.headers or ()}
                    sid = event.stream_id or 0
                    pending[sid] = (headers[":method"], headers[":path"], headers, bytearray())
                elif isinstance(event, h2.events.DataReceived):
                    sid = event.stream_id or 0
                    pending[sid][3].extend(event.data or b"")
                    conn.acknowledge_received_data(event.flow_controlled_length or 0, sid)
                elif isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id or 0
                    method, path, headers, body = pending.pop(sid)
                    self.requests.append((method, path, headers, bytes(body)))
                    if not self._respond(sock, conn, sid, path, bytes(body)):
                        return
                elif isinstance(event, h2.events.ConnectionTerminated):
                    sock.sendall(conn.data_to_send())
                    return
            sock.sendall(conn.data_to_send())

    def _respond(
        self, sock: socket.socket, conn: h2.connection.H2Connection, sid: int, path: str, body: bytes
    ) -> bool:
        parts = path.split("?", 1)[0].strip("/").split("/")
        if path == "/reset":
            conn.reset_stream(sid, error_code=2)  # INTERNAL_ERROR
            return True
        if path == "/goaway":
            conn.close_connection(error_code=2, last_stream_id=0)
            sock.sendall(conn.data_to_send())
            return False
        status, payload = 404, b"not found\n"
        if path == "/ok":
            status, payload = 200, OK_BODY
        elif path == "/echo":
            status, payload = 200, body
        elif parts[0] == "status" and len(parts) == 2 and parts[1].isdigit():
            status, payload = int(parts[1]), f"status {parts[1]}\n".encode()
        elif parts[0] == "large" and len(parts) == 2 and parts[1].isdigit():
            status, payload = 200, b"x" * int(parts[1])
        conn.send_headers(
            sid,
            [
                (":status", str(status)),
                ("content-type", "text/plain"),
                ("content-length", str(len(payload))),
                ("x-proto", "h2"),
            ],
            end_stream=not payload,
        )
        while payload:
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if window <= 0:
                sock.sendall(conn.data_to_send())
                data = sock.recv(65536)
                if not data:
                    return False
                conn.receive_data(data)  # WINDOW_UPDATE frames
                continue
            chunk, payload = payload[:window], payload[window:]
            conn.send_data(sid, chunk, end_stream=not payload)
        sock.sendall(conn.data_to_send())
        return True

    def __enter__(self) -> H2TestServer:
        self._accept_thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._accept_thread.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


# --------------------------------------------------------------------------- raw TCP

Behaviour = Callable[[socket.socket, threading.Event], None]


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Accept and never answer; swallow whatever arrives until the client leaves."""
    conn.settimeout(0.05)
    while not stop.is_set():
        try:
            if not conn.recv(65536):
                return
        except TimeoutError:
            continue
        except OSError:
            return


def close_at_once(conn: socket.socket, stop: threading.Event) -> None:
    """Accept, then close at once (a FIN, or an RST if the request already arrived)."""


def reset_at_once(conn: socket.socket, stop: threading.Event) -> None:
    """Accept, then abort the connection with an RST (SO_LINGER 0)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


GARBAGE = b"SSH-2.0-OpenSSH_9.6 not an http server\r\n"


def garbage(conn: socket.socket, stop: threading.Event) -> None:
    """Speak first with a non-HTTP banner, then wait like an SSH server would."""
    conn.sendall(GARBAGE)
    silent(conn, stop)


def garbage_then_close(conn: socket.socket, stop: threading.Event) -> None:
    """Answer the request with a non-HTTP line, then close."""
    conn.settimeout(2.0)
    with contextlib.suppress(OSError):
        conn.recv(65536)
        conn.sendall(b"220 mail.example ESMTP ready\r\n")


class LineProtocol:
    """A line protocol behaviour: send ``banner`` (if any), then answer each line by its reply.

    ``replies`` maps a received line (without its line end) to the bytes sent back;
    an unknown line gets ``-ERR unknown command``. Lines received are recorded in
    :attr:`received`. With ``close_after``, the server closes after its banner (no
    replies given) or after its first reply.
    """

    def __init__(
        self, banner: bytes | None, replies: dict[bytes, bytes] | None = None, close_after: bool = False
    ) -> None:
        self.banner = banner
        self.replies = replies or {}
        self.close_after = close_after
        self.received: list[bytes] = []

    def __call__(self, conn: socket.socket, stop: threading.Event) -> None:
        if self.banner is not None:
            conn.sendall(self.banner)
            if self.close_after and not self.replies:
                return
        conn.settimeout(0.05)
        buffer = b""
        while not stop.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                line = line.rstrip(b"\r")
                self.received.append(line)
                conn.sendall(self.replies.get(line, b"-ERR unknown command\r\n"))
                if self.close_after:
                    return


def tls_handshake(
    ctx: ssl.SSLContext, conn: socket.socket, errors: list[BaseException], linger: bool = True
) -> ssl.SSLSocket | None:
    """Server-side handshake; on failure record the error and return None.

    With ``linger`` the server then closes the way a careful server does: its
    alert, a FIN, and it reads what the client had sent before closing. Closing
    at once with unread data makes the kernel send an RST, which can reach the
    client before the alert and hide it (the client sees only a reset).
    """
    tls = ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
    try:
        tls.do_handshake()
    except (ssl.SSLError, OSError) as exc:
        errors.append(exc)
        if linger:
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_WR)  # drops the TLS layer: plain reads from here
                tls.settimeout(1.0)
                while tls.recv(65536):
                    pass
        tls.close()
        return None
    return tls


def over_tls(ctx: ssl.SSLContext, behaviour: Behaviour, linger: bool = True) -> Behaviour:
    """Run ``behaviour`` inside a server-side TLS session; see :func:`tls_handshake` for ``linger``."""
    errors: list[BaseException] = []

    def wrapped(conn: socket.socket, stop: threading.Event) -> None:
        conn.settimeout(5.0)
        tls = tls_handshake(ctx, conn, errors, linger)
        if tls is not None:
            with tls:
                behaviour(tls, stop)

    return wrapped


class RawTcpServer:
    """Accepts TCP connections on loopback and runs ``behaviour`` for each in a thread."""

    def __init__(self, behaviour: Behaviour, host: str = "127.0.0.1") -> None:
        self.host = host
        self.behaviour = behaviour
        self.accepted = 0
        self._accepted_changed = threading.Condition()
        self._stop = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def address(self) -> str:
        return f"{url_host(self.host)}:{self.port}"

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._accepted_changed:
                self.accepted += 1
                self._accepted_changed.notify_all()
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def wait_accepted(self, count: int, timeout: float = 5.0) -> int:
        """Block until ``count`` connections were accepted (or timeout); return the number."""
        with self._accepted_changed:
            self._accepted_changed.wait_for(lambda: self.accepted >= count, timeout)
            return self.accepted

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.behaviour(conn, self._stop)

    def __enter__(self) -> RawTcpServer:
        self._accept_thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._accept_thread.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


@contextlib.contextmanager
def full_backlog(host: str = "127.0.0.1") -> Iterator[tuple[int, list[socket.socket]]]:
    """A listener that never accepts, with its accept queue filled by idle clients.

    On Linux a further SYN is then dropped, so connecting hangs in ``connect``
    (a loopback stand-in for a black-holed address). Yields (port, fillers).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind((host, 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(8):
            client = socket.socket(family, socket.SOCK_STREAM)
            client.setblocking(False)
            fillers.append(client)
            with contextlib.suppress(BlockingIOError):
                client.connect((host, port))
        time.sleep(0.05)
        yield port, fillers
    finally:
        for client in fillers:
            client.close()
        listener.close()
