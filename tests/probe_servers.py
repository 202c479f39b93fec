"""Real servers on loopback for the probe tests.

Everything binds to 127.0.0.1 (or ::1) on port 0 and runs in threads inside
the test process, so the probes talk to a real kernel socket and a real HTTP
or TLS stack, never to a mock.

- :class:`HttpTestServer`: ``http.server`` with a few routes (see
  :class:`_Handler`), optionally over TLS with a certificate from ``trustme``.
  Every request's headers are recorded in :attr:`HttpTestServer.requests`.
- :class:`RawTcpServer`: accepts connections and hands each one to a
  behaviour: :func:`silent` (never answers), :func:`close_at_once`,
  :func:`reset_at_once`, :func:`garbage` (a non-HTTP banner).
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

__all__ = [
    "OK_BODY",
    "HttpTestServer",
    "RawTcpServer",
    "RecordedRequest",
    "can_bind_ipv6_loopback",
    "close_at_once",
    "closed_port",
    "garbage",
    "garbage_then_close",
    "reset_at_once",
    "silent",
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
        elif path == "/short-body":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.close_connection = True
        else:
            self._send(404, b"not found\n")

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
        try:
            tls = ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.owner.handshake_errors.append(exc)
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
