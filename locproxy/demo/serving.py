"""Loopback servers for the demo and the tests: any WSGI app, or a directory.

``serve_wsgi(app)`` runs a WSGI app in this process (one thread per
connection), with what wsgiref alone lacks: chunked request bodies
(``wsgi.input`` de-chunked, ``wsgi.input_terminated`` set) and the
request-target as received in ``environ["RAW_URI"]``, as gunicorn provides.
``serve_static(directory)`` serves files with single ``Range`` requests,
which the standard library's handler lacks (the demo's "web" store).

Both bind 127.0.0.1 only, return a ``LocalServer`` (``url``, ``close()``, a
context manager), and bound every wait when they stop.
"""

from __future__ import annotations

import functools
import logging
import os
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from locproxy.demo.stores import BoundedReader
from locproxy.ranges import RangeRefused, parse_range

LOG = logging.getLogger(__name__)

#: Seconds a stopping server waits for its threads.
STOP_TIMEOUT = 10.0


class LocalServer:
    """A socketserver running in a thread on 127.0.0.1; ``close()`` when done."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self.port = port
        # A short poll interval keeps close() (shutdown waits for one poll) fast.
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                                        name="locproxy-local-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, close the socket, and give running handlers
        ``STOP_TIMEOUT`` seconds to finish (apps that wait on something must
        be released by then)."""
        self._server.shutdown()
        self._thread.join(STOP_TIMEOUT)
        self._server.server_close()
        join = getattr(self._server, "join_handlers", None)
        if join is not None:
            join(STOP_TIMEOUT)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class TrackedThreads(socketserver.ThreadingMixIn):
    """Handler threads are daemons (a stuck one cannot hang the process) but
    are tracked, so ``join_handlers`` can wait for them with a bound."""

    daemon_threads = True
    block_on_close = False

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        with self._handlers_lock:
            self._handlers = [t for t in self._handlers if t.is_alive()] + [thread]
        thread.start()

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._handlers_lock:
            handlers = list(self._handlers)
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread for thread in handlers if thread.is_alive()]
        if alive:
            raise RuntimeError(f"{len(alive)} request handler thread(s) still running after {timeout:g}s")

    def server_bind(self) -> None:
        self._handlers: list[threading.Thread] = []
        self._handlers_lock = threading.Lock()
        super().server_bind()  # type: ignore[misc]


class _ThreadingWSGIServer(TrackedThreads, WSGIServer):
    pass


class _ChunkedInput:
    """``wsgi.input`` for a chunked request body (RFC 9112 section 7.1), de-chunked."""

    def __init__(self, rfile: Any) -> None:
        self._rfile = rfile
        self._left = 0
        self._done = False

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = None if size is None or size < 0 else size
        while not self._done and (wanted is None or wanted > 0):
            if self._left == 0 and not self._next_chunk():
                break
            count = self._left if wanted is None else min(wanted, self._left)
            data = self._rfile.read(count)
            if not data:
                raise ConnectionError("chunked request body ended inside a chunk")
            parts.append(data)
            self._left -= len(data)
            if wanted is not None:
                wanted -= len(data)
            if self._left == 0 and self._rfile.readline(3) not in (b"\r\n", b"\n"):
                raise ValueError("chunk data not followed by CRLF")
        return b"".join(parts)

    def _next_chunk(self) -> bool:
        line = self._rfile.readline(1024)
        if not line:
            raise ConnectionError("chunked request body ended before its last chunk")
        self._left = int(line.split(b";", 1)[0].strip(), 16)
        if self._left:
            return True
        while self._rfile.readline(65537) not in (b"\r\n", b"\n", b""):
            pass  # trailer fields
        self._done = True
        return False


class _WSGIRequestHandler(WSGIRequestHandler):
    """wsgiref's handler, quiet, with RAW_URI and chunked request bodies."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOG.debug("wsgi: " + format, *args)

    def handle(self) -> None:
        # The same steps as WSGIRequestHandler.handle, with our wsgi.input.
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.parse_request():
            return
        environ = self.get_environ()
        environ["RAW_URI"] = self.path
        stdin: Any = self.rfile
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() and not environ.get("CONTENT_LENGTH"):
            stdin = _ChunkedInput(self.rfile)
            environ["wsgi.input_terminated"] = True
        handler = ServerHandler(stdin, self.wfile, self.get_stderr(), environ, multithread=True)
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[attr-defined]


def serve_wsgi(app: Callable[..., Any], port: int = 0) -> LocalServer:
    """Serve a WSGI app on 127.0.0.1 (port 0: any free one); HTTP/1.0
    responses, one request per connection."""
    server = _ThreadingWSGIServer(("127.0.0.1", port), _WSGIRequestHandler)
    server.set_app(app)
    return LocalServer(server)


class _RangeRequestHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single ``Range`` requests (206/416)."""

    _range_length: int | None = None

    def send_head(self) -> Any:
        self._range_length = None
        path = self.translate_path(self.path)
        if "Range" not in self.headers or not os.path.isfile(path):
            return super().send_head()
        try:
            handle = open(path, "rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        size = os.fstat(handle.fileno()).st_size
        try:
            start, stop = parse_range(self.headers["Range"], size) or (0, size)
        except RangeRefused:  # a plain server: 416 for any Range it does not serve
            handle.close()
            self._send_unsatisfiable(size)
            return None
        handle.seek(start)
        self._range_length = stop - start
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return handle

    def _send_unsatisfiable(self, size: int) -> None:
        self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
        self.send_header("Content-Range", f"bytes */{size}")  # RFC 7233 section 4.4
        self.send_header("Content-Length", "0")
        self.end_headers()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        if self._range_length is None:
            super().copyfile(source, outputfile)
            return
        for chunk in BoundedReader(source, self._range_length):
            outputfile.write(chunk)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOG.debug("static: " + format, *args)


class _ThreadingHTTPServer(TrackedThreads, ThreadingHTTPServer):
    pass


def serve_static(directory: str, port: int = 0) -> LocalServer:
    """Serve ``directory`` over HTTP (with single ranges) on 127.0.0.1 (port 0: any free one)."""
    os.makedirs(directory, exist_ok=True)
    handler = functools.partial(_RangeRequestHandler, directory=directory)
    return LocalServer(_ThreadingHTTPServer(("127.0.0.1", port), handler))
