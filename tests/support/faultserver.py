"""A deterministic loopback HTTP backend with selectable faults, for tests.

Usage::

    from tests.support.faultserver import FaultServer, RefusingPort, StalledListener

    with FaultServer(b"image bytes", mode="ok") as server:
        url = server.url("/images/1")          # http://127.0.0.1:PORT/images/1
        ...                                    # fetch it
        server.mode = "truncate_after:4"       # switch faults at runtime
        assert server.request_count == 1
        assert "authorization" in server.requests[-1].headers

``FaultServer(data, mode="ok", *, hang_limit=10.0)`` serves ``data`` at any
path (GET and HEAD), over HTTP/1.1 keep-alive, honouring one
``Range: bytes=a-b`` / ``a-`` / ``-n`` with 206 + ``Content-Range``, read by
``locproxy.ranges.parse_range``: 416 when unsatisfiable (beyond the data,
``bytes=-0``, an end before the start); a Range it cannot parse at all
(several ranges, another unit, garbage) is
ignored, as RFC 9110 section 14.2 allows: 200 with the whole data. It is
threaded, bound to 127.0.0.1 port 0, and used as a context manager (or
``start()``/``close()``): closing stops accepting, shuts down every open
connection (idle keep-alive ones too), ends every hanging handler and joins
the handler threads, each wait bounded.

``mode`` is a comma-separated list of faults, read once per request, e.g.
``"no_content_length,extra_bytes"``. Body-position arguments ``N`` count
bytes *of the response body*; ``corrupt_byte:N`` is an offset in ``data``:

========================= ==================================================
``ok``                    normal behaviour
``status:CODE``           answer CODE with a short text body
``redirect:URL``          302 to URL (no commas in URL)
``drop_first:N``          close the connection without answering the next N
                          requests (counted from when the mode is set), then
                          apply the other faults
``hang_headers``          read the request, never answer (until close/limit)
``hang_after:N``          send headers and N body bytes, then stall
``truncate_after:N``      send headers and N body bytes, then close (FIN)
``reset_after:N``         send headers and N body bytes, wait 0.2 s, then
                          reset the connection (RST)
``corrupt_byte:N``        flip every bit of data[N] if it is in the response
``extra_bytes``           send ``EXTRA`` after the promised body, then close
``ignore_range``          ignore Range: always 200 with the whole data
``wrong_content_range``   206 with a Content-Range shifted by one byte
``bad_content_length``    Content-Length one more than the body (then close)
``slow:BYTES_PER_SEC``    pace the body (pieces every 50 ms)
``drip_headers``          send the response head one byte every 0.5 s
                          (until close/limit): never a read timeout, never
                          complete headers
``drip_after:N``          send headers and N body bytes, then one byte every
                          0.5 s (until close/limit)
``gzip``                  gzip the (ranged) body, chunked, with
                          ``Content-Encoding: gzip``, as a web server with
                          compression on does
``no_content_length``     no Content-Length: the body ends at connection close
``chunked``               Transfer-Encoding: chunked body
========================= ==================================================

Hanging waits end when the server closes, or after ``hang_limit`` seconds.

Every request is recorded (``requests``: ``RecordedRequest`` with method,
path as sent, ``headers`` with lowercase names and ``raw_headers``) and
counted (``request_count``); ``connection_count`` counts accepted
connections; ``reset_records()`` clears both. ``url(path, userinfo="")``,
``port`` and ``netloc`` name the server; ``parse_mode()`` validates a mode
string (setting ``mode`` raises ValueError on a typo).

``RefusingPort`` holds a bound, non-listening port: connecting to it is
refused (ECONNREFUSED) and nobody else can take the port meanwhile.
``StalledListener`` is a listener whose accept queue is full, so new
connects time out (a deterministic connect timeout on Linux loopback).
"""

from __future__ import annotations

import gzip
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from locproxy.ranges import Malformed, SeveralRanges, Unsatisfiable, parse_range

EXTRA = b"EXTRA-BYTES-BEYOND-THE-PROMISED-BODY"

# name -> whether it takes an argument (None: optional)
_MODES = {
    "ok": False,
    "drop_first": True,
    "status": True,
    "redirect": True,
    "hang_headers": False,
    "hang_after": True,
    "truncate_after": True,
    "reset_after": True,
    "corrupt_byte": True,
    "extra_bytes": False,
    "ignore_range": False,
    "wrong_content_range": False,
    "bad_content_length": False,
    "slow": True,
    "no_content_length": False,
    "chunked": False,
    "drip_headers": False,
    "drip_after": True,
    "gzip": False,
}
_INT_ARG = {"drop_first", "status", "hang_after", "truncate_after", "reset_after", "corrupt_byte", "slow",
            "drip_after"}
DRIP_INTERVAL = 0.5


def parse_mode(mode: str) -> dict[str, Any]:
    """``"a,b:1"`` -> ``{"a": None, "b": 1}``; ValueError on unknown faults."""
    faults: dict[str, Any] = {}
    for token in (item.strip() for item in mode.split(",")):
        if not token:
            continue
        name, sep, arg = token.partition(":")
        if name not in _MODES:
            raise ValueError(f"unknown fault mode {name!r}; valid: {', '.join(_MODES)}")
        if _MODES[name] and not sep:
            raise ValueError(f"fault mode {name!r} needs an argument ({name}:...)")
        if not _MODES[name] and sep:
            raise ValueError(f"fault mode {name!r} takes no argument")
        faults[name] = int(arg) if name in _INT_ARG else (arg or None)
    return faults


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lowercase names; repeated headers joined with ", "
    raw_headers: list[tuple[str, str]] = field(default_factory=list)


class _Server(socketserver.ThreadingMixIn, HTTPServer):
    # Handler threads are tracked and joined by FaultServer.close() with a
    # timeout; daemon so a bug here can never keep the test process alive.
    daemon_threads = True
    allow_reuse_address = True
    fault: FaultServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-body is what many tests do


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections give up on their own, too.
    timeout = 10
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fault._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.fault._track(self.connection, add=False)

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ValueError):
            pass  # reset by the client, or a socket we shut down on close

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    # -- the fault engine ----------------------------------------------------------

    def _serve(self, head: bool) -> None:
        fault = self.server.fault
        faults = fault._faults
        fault._record(self)
        data = fault.data
        size = len(data)

        if "drop_first" in faults and fault._take_drop():
            self.close_connection = True
            return
        if "hang_headers" in faults:
            fault.stopping.wait(fault.hang_limit)
            self.close_connection = True
            return
        if "drip_headers" in faults:
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
            self._drip(head.encode("ascii"))
            return
        if "status" in faults:
            code = faults["status"]
            self._simple(code, f"fault: status {code}\n".encode())
            return
        if "redirect" in faults:
            self.send_response(302)
            self.send_header("Location", faults["redirect"])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return

        first, last = 0, size - 1
        status = 200
        header = self.headers.get("Range")
        if header is not None and "ignore_range" not in faults:
            try:
                span = parse_range(header, size)
            except (Malformed, SeveralRanges):
                span = None  # not one range at all: RFC 9110 lets us ignore Range
            except Unsatisfiable:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if span is not None:
                first, last = span[0], span[1] - 1
                status = 206
        body = bytearray(data[first : last + 1])
        corrupt = faults.get("corrupt_byte")
        if corrupt is not None and first <= corrupt <= last:
            body[corrupt - first] ^= 0xFF
        if "gzip" in faults:
            body = bytearray(gzip.compress(bytes(body)))
            faults = {**faults, "chunked": None}

        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            shift = 1 if "wrong_content_range" in faults else 0
            self.send_header("Content-Range", f"bytes {first + shift}-{last + shift}/{size}")
        if "gzip" in faults:
            self.send_header("Content-Encoding", "gzip")
        if "chunked" in faults:
            self.send_header("Transfer-Encoding", "chunked")
        elif "no_content_length" in faults:
            # Close-delimited body (RFC 9112 section 6.3, rule 8).
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            declared = len(body) + (1 if "bad_content_length" in faults else 0)
            self.send_header("Content-Length", str(declared))
            if "bad_content_length" in faults:
                self.close_connection = True
        self.end_headers()
        if head:
            return

        cut = len(body)
        for name in ("hang_after", "truncate_after", "reset_after", "drip_after"):
            if name in faults:
                cut = min(cut, faults[name])
        self._send_body(memoryview(body)[:cut], faults)
        if cut < len(body):
            self.wfile.flush()
            if "hang_after" in faults:
                fault.stopping.wait(fault.hang_limit)
            elif "drip_after" in faults:
                self._drip(bytes(body[cut:]))
                return
            elif "reset_after" in faults:
                # Let the client read what was sent, then RST (SO_LINGER 0).
                fault.stopping.wait(0.2)
                self._reset()
                return
            self.close_connection = True
            return
        if "chunked" in faults:
            self.wfile.write(b"0\r\n\r\n")
        if "extra_bytes" in faults:
            self.wfile.write(EXTRA)
            self.close_connection = True

    def _send_body(self, body: memoryview, faults: dict[str, Any]) -> None:
        fault = self.server.fault
        rate = faults.get("slow")
        piece = max(1, rate // 20) if rate else 256 * 1024
        for offset in range(0, len(body), piece):
            part = body[offset : offset + piece]
            if "chunked" in faults:
                self.wfile.write(b"%x\r\n" % len(part) + bytes(part) + b"\r\n")
            else:
                self.wfile.write(part)
            if rate:
                self.wfile.flush()
                if fault.stopping.wait(0.05):
                    self.close_connection = True
                    return

    def _drip(self, data: bytes) -> None:
        """One byte every DRIP_INTERVAL: each read gets a byte well within
        any read timeout, the whole never comes."""
        fault = self.server.fault
        deadline = time.monotonic() + fault.hang_limit
        self.close_connection = True
        for index in range(len(data)):
            self.wfile.write(data[index:index + 1])
            self.wfile.flush()
            if fault.stopping.wait(DRIP_INTERVAL) or time.monotonic() > deadline:
                return

    def _simple(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset(self) -> None:
        self.close_connection = True
        sock = self.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The makefile() objects hold the fd open: close them first so the
        # socket's close() really closes it, and sends RST instead of FIN.
        for stream in (self.wfile, self.rfile):
            try:
                stream.close()
            except OSError:
                pass
        sock.close()


class FaultServer:
    """See the module docstring."""

    def __init__(self, data: bytes, mode: str = "ok", *, hang_limit: float = 10.0) -> None:
        self.data = bytes(data)
        self.hang_limit = hang_limit
        self.stopping = threading.Event()
        self.requests: list[RecordedRequest] = []
        self.connection_count = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._faults: dict[str, Any] = {}
        self._mode = "ok"
        self._drops_left = 0
        self.mode = mode
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fault = self
        self._thread: threading.Thread | None = None

    # -- configuration -----------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        faults = parse_mode(value)  # validate before switching
        with self._lock:
            self._mode, self._faults = value, faults
            self._drops_left = faults.get("drop_first", 0)

    def _take_drop(self) -> bool:
        with self._lock:
            if self._drops_left > 0:
                self._drops_left -= 1
                return True
            return False

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/image", userinfo: str = "") -> str:
        """``http://[userinfo@]127.0.0.1:PORT/path``."""
        at = f"{userinfo}@" if userinfo else ""
        return f"http://{at}{self.netloc}{path}"

    # -- records -----------------------------------------------------------------

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset_records(self) -> None:
        with self._lock:
            self.requests.clear()
            self.connection_count = 0

    def _record(self, handler: _Handler) -> None:
        raw = list(handler.headers.items())
        headers: dict[str, str] = {}
        for name, value in raw:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        with self._lock:
            self.requests.append(RecordedRequest(handler.command, handler.path, headers, raw))

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._sockets.add(sock)
                self._threads.add(threading.current_thread())
                self.connection_count += 1
            else:
                self._sockets.discard(sock)
                self._threads.discard(threading.current_thread())

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> FaultServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="faultserver", daemon=True
        )
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop: end hanging handlers, shut down connections, join threads."""
        self.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            try:
                # Wakes handlers blocked reading the next keep-alive request.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._server.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class RefusingPort:
    """A loopback port that refuses connections: bound, never listening.

    Holding the bound socket (instead of binding and closing) keeps another
    process from taking the port while the test runs.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]

    def url(self, path: str = "/image") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RefusingPort:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class StalledListener:
    """A loopback listener whose accept queue is full: connects time out.

    ``listen(0)`` plus one connection that is never accepted fills the queue;
    Linux then drops further SYNs, so a client's connect() waits for its
    connect timeout. ``works`` says whether a probe connect really stalled
    (tests skip when the platform accepts anyway).
    """

    def __init__(self, probe_timeout: float = 0.1) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._fillers: list[socket.socket] = []
        self.works = False
        for _ in range(4):  # the kernel may allow backlog + 1 queued connections
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.settimeout(probe_timeout)
            try:
                filler.connect(("127.0.0.1", self.port))
            except OSError:
                filler.close()
                self.works = True
                break
            self._fillers.append(filler)

    def url(self, path: str = "/image") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._listener.close()

    def __enter__(self) -> StalledListener:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
