"""A tiny loopback HTTP server for the ``web`` (http store) image locations.

Glance's http store, locproxy's http backend and python-glanceclient only need
GET and HEAD of whole files plus single byte ranges (RFC 9110 section 14), so
this serves a directory read-only with exactly that, records every request (so
a test can tell which backend really served the bytes) and binds to 127.0.0.1
only. Ranges are read by ``locproxy.ranges.parse_range``: an unsatisfiable
one (beyond the file, ``bytes=-0``, an end before the start) gets 416; one it
cannot parse at all (several ranges, other units) is ignored
and the whole file sent, as RFC 9110 section 14.2 allows. It runs in a thread
of the test process and is closed by ``close()`` or the context manager,
joining its handler threads (no leaked sockets under ``filterwarnings = error``).
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from locproxy.ranges import Malformed, SeveralRanges, Unsatisfiable, parse_range


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StaticHTTPServer._Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # requests are recorded in server.requests instead of stderr

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, *, send_body: bool) -> None:
        owner = self.server.owner
        owner._record(self.command, self.path, self.headers.get("Range"))
        name = self.path.split("?", 1)[0].lstrip("/")
        path = (owner.root / name).resolve()
        if not name or owner.root not in path.parents or not path.is_file():
            self._reply_empty(404)
            return
        size = path.stat().st_size
        status, first, last = 200, 0, size - 1
        try:
            span = parse_range(self.headers.get("Range"), size)
        except (Malformed, SeveralRanges):  # not understood: ignore it, send the whole file
            span = None
        except Unsatisfiable:
            self._reply_empty(416, {"Content-Range": f"bytes */{size}"})
            return
        if span is not None:
            status, first, last = 206, span[0], span[1] - 1
        length = max(0, last - first + 1)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if not send_body or not length:
            return
        cut = owner.cuts.get(name) if self.headers.get("User-Agent", "").startswith("locproxy") else None
        if cut is not None:  # locproxy's reads of this file break off; Glance's own are whole
            remaining = length = min(length, max(0, cut - first))
            self.close_connection = True
        with path.open("rb") as source:
            source.seek(first)
            remaining = length
            while remaining:
                chunk = source.read(min(remaining, 256 * 1024))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def _reply_empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


class StaticHTTPServer:
    """Serve ``root`` on ``http://127.0.0.1:<port>/`` until closed.

    ``put(name, data)`` writes a file and returns its URL; ``requests`` lists
    ``(method, path, range_header)`` of every request received, in order.
    """

    class _Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        block_on_close = True
        owner: StaticHTTPServer

    def __init__(self, root: str | os.PathLike[str], port: int = 0) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[tuple[str, str, str | None]] = []
        #: File name -> byte at which locproxy's GETs of it break off (a copy
        #: that breaks mid-stream for locproxy, whole for Glance's http store).
        self.cuts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = self._Server(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"static-http-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def _record(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, range_header))

    def put(self, name: str, data: bytes) -> str:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return f"{self.url}/{name}"

    def clear(self) -> None:
        shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        with self._lock:
            self.requests.clear()

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()

    def __enter__(self) -> StaticHTTPServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
