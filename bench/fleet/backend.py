"""One fleet backend: image files over HTTP/1.1 with single ``Range`` support.

Run inside a backend namespace::

    python -m bench.fleet.backend --bind 10.77.0.1 --port 8080 --root DIR --log requests.jsonl

Serves the regular files directly in ``--root`` (no subdirectories, no
``..``) with ``sendfile``, keep-alive, one ``Range`` (``a-b``, ``a-``,
``-n``: 206; beyond the end: 416), which locproxy needs to resume a broken
download and to probe. Writes one JSON line per response to ``--log``
(peer address, path, range, status, bytes sent, start and end times): the
bench tells downloads, resumes and probes apart from it and counts probe
traffic per node. ``--first-byte-delay`` holds every response's headers
back that long (a far backend's latency; tc ``netem`` is not available on
every kernel). Prints ``listening`` once bound.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range -> ``(start, stop)`` (stop exclusive); None if
    unsatisfiable or not a single range (RFC 9110 section 14.1.2)."""
    match = _RANGE.match(header.replace(" ", ""))
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:
        suffix = int(last)
        return (max(0, size - suffix), size) if suffix and size else None
    start = int(first)
    stop = size if not last else min(int(last) + 1, size)
    return (start, stop) if start < size and start < stop else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as locproxy's pooled connections expect
    timeout = 60  # a peer behind a dead link: give the thread back eventually
    root: Path
    log_file: Any
    log_lock: threading.Lock
    first_byte_delay: float = 0.0

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        started = time.time()
        name = unquote(urlsplit(self.path).path).lstrip("/")
        path = self.root / name
        range_header = self.headers.get("Range")
        if not name or "/" in name or name.startswith(".") or not path.is_file():
            self._empty(HTTPStatus.NOT_FOUND, started, range_header)
            return
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            start, stop, status = 0, size, HTTPStatus.OK
            if range_header is not None:
                span = parse_range(range_header, size)
                if span is None:
                    self._empty(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, started, range_header,
                                {"Content-Range": f"bytes */{size}"})
                    return
                (start, stop), status = span, HTTPStatus.PARTIAL_CONTENT
            if self.first_byte_delay:
                time.sleep(self.first_byte_delay)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(stop - start))
            self.send_header("Accept-Ranges", "bytes")
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
            self.end_headers()
            self.wfile.flush()
            sent = 0
            try:
                if body:
                    sent = self.connection.sendfile(handle, start, stop - start)
            finally:
                self._log(started, int(status), range_header, sent)
            if sent < stop - start:
                self.close_connection = True

    def _empty(self, status: HTTPStatus, started: float, range_header: str | None,
               headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self._log(started, int(status), range_header, 0)

    def _log(self, started: float, status: int, range_header: str | None, sent: int) -> None:
        record = {"peer": self.client_address[0], "path": self.path, "range": range_header,
                  "status": status, "bytes": sent, "started": started, "ended": time.time()}
        with self.log_lock:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # the JSON log says it all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--first-byte-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    with open(args.log, "a", encoding="utf-8") as log_file:
        handler = type("BoundHandler", (Handler,), {
            "root": args.root.resolve(), "log_file": log_file, "log_lock": threading.Lock(),
            "first_byte_delay": args.first_byte_delay,
        })
        server = ThreadingHTTPServer((args.bind, args.port), handler)
        server.daemon_threads = True
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        print("listening", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
