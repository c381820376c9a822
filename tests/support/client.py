"""One HTTP request on a fresh loopback connection, for tests.

``fetch(port, path, ...)`` and ``http_request(url, ...)`` return a
``Fetched``: status, headers (lowercase names), body, and whether the body
was ``complete``: False when the connection ended before its
Content-Length or the chunked end (a server that aborts a transfer it
cannot finish correctly), so a test can tell an aborted download from a
complete one. Every wait is bounded and the connection is always closed
(no leaked sockets under ``filterwarnings = error``).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Mapping

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Fetched:
    status: int
    headers: dict[str, str]  # lowercase names
    body: bytes
    complete: bool  # False: the connection ended before Content-Length (or the chunked end)
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def describe(self) -> str:
        return (f"HTTP {self.status}, {len(self.body)} bytes, complete={self.complete}, "
                f"headers={self.headers}, body starts {self.body[:200]!r}")


def fetch(port: int, path: str, method: str = "GET", headers: Mapping[str, str] | None = None,
          body: bytes | None = None, timeout: float = 20.0, host: str = "127.0.0.1") -> Fetched:
    """One request to ``host:port`` (loopback) on a fresh connection."""
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        chunks: list[bytes] = []
        complete = True
        try:
            while True:
                chunk = response.read(256 * 1024)
                if not chunk:
                    break
                chunks.append(chunk)
        except http.client.IncompleteRead as error:  # chunked body cut short
            chunks.append(error.partial)
            complete = False
        except (ConnectionError, socket.timeout):
            complete = False
        received = b"".join(chunks)
        length = response.getheader("Content-Length")
        if method != "HEAD" and length is not None and length.isdigit() and int(length) != len(received):
            complete = False
        headers_out = {name.lower(): value for name, value in response.getheaders()}
        return Fetched(response.status, headers_out, received, complete, time.monotonic() - started)
    finally:
        connection.close()


def http_request(url: str, method: str = "GET", *, body: bytes | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 60.0) -> Fetched:
    """``fetch`` by URL (``http://127.0.0.1:PORT/path?query``); loopback only."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise ValueError(f"loopback only: {url}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return fetch(parts.port or 80, path, method, headers, body, timeout, host=parts.hostname)
