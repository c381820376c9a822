"""The sidecar proxy, over real sockets: gunicorn runs ``locproxy.proxy`` from
a paste ini in front of a real loopback upstream that records what it got.

A few pure-function tables and a lint-checked in-process run come last; the
socket tests are the proof that streaming, framing and aborts really work.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from webtest import TestApp

from locproxy.demo import serve_wsgi
from locproxy.forwarding import forward_headers, request_target
from locproxy.options import ConfigError
from locproxy.proxy import (
    Proxy,
    ProxySettings,
    app_factory,
    describe_upstream_error,
    load_proxy_settings,
    upstream_label,
)
from tests.support.servers import run_gunicorn, serve_raw_http_in_thread

MiB = 1024 * 1024
TIMEOUT = 10.0  # seconds: the bound on every single wait in this module
BIG = 64 * MiB
# One random MiB; block i of a big body is i (8 bytes) + its tail, so a lost,
# repeated or reordered block changes the digest.
BLOCK = os.urandom(MiB)


def big_blocks(size: int) -> Iterator[bytes]:
    for index, start in enumerate(range(0, size, MiB)):
        yield (index.to_bytes(8, "big") + BLOCK[8:])[: size - start]


def digest(blocks: Iterable[bytes]) -> tuple[int, str]:
    hasher, length = hashlib.sha256(), 0
    for block in blocks:
        hasher.update(block)
        length += len(block)
    return length, hasher.hexdigest()


# -- the fake upstream ---------------------------------------------------------

class Upstream:
    """A fake image API (WSGI). Routes on the first path segment; every
    request is recorded; ``echo`` answers with JSON describing the request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.body_started = threading.Event()  # echo read its first body bytes
        self.echo_done = threading.Event()  # echo finished reading (or failed to)
        self.gate = threading.Event()  # lets a paused download go on
        self.release = threading.Event()  # ends /hang
        self.endless_done = threading.Event()
        self.endless: dict[str, Any] = {}

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
        for event in (self.body_started, self.echo_done, self.gate, self.release, self.endless_done):
            event.clear()
        self.endless.clear()

    def last(self, route: str) -> dict[str, Any]:
        with self.lock:
            matching = [r for r in self.requests if r["path_info"].split("/")[1] == route]
        assert matching, f"the upstream received no /{route} request"
        return matching[-1]

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").title(): value for key, value in environ.items() if key.startswith("HTTP_")
        }
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").title()] = environ[key]
        record = {
            "method": environ["REQUEST_METHOD"],
            "raw_uri": environ["RAW_URI"],
            "path_info": environ["PATH_INFO"],
            "query": environ["QUERY_STRING"],
            "headers": headers,
        }
        with self.lock:
            self.requests.append(record)
        route = environ["PATH_INFO"].split("/")[1]
        handler = getattr(self, "route_" + route.replace("-", "_"), self.route_echo)
        return handler(environ, start_response, record)

    def route_echo(self, environ: dict, start_response: Callable, record: dict) -> Iterable[bytes]:
        try:
            record["body_length"], record["body_sha256"] = digest(self._read_body(environ))
        except (ConnectionError, ValueError, OSError) as error:
            record["body_error"] = str(error)
            start_response("400 Bad Request", [("Content-Length", "0")])
            return []
        finally:
            self.echo_done.set()
        status = parse_qs(environ["QUERY_STRING"]).get("status", ["200 OK"])[0]
        body = json.dumps(record).encode()
        start_response(status, [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("X-Upstream", "echo"),
        ])
        return [body]

    def _read_body(self, environ: dict) -> Iterator[bytes]:
        stream = environ["wsgi.input"]
        if environ.get("CONTENT_LENGTH"):
            left = int(environ["CONTENT_LENGTH"])
        elif environ.get("wsgi.input_terminated"):
            left = -1  # chunked: read to the end
        else:
            return
        first = True
        while left:
            wanted = 64 * 1024 if first else MiB
            data = stream.read(wanted if left < 0 else min(wanted, left))
            if not data:
                if left < 0:
                    return  # end of the chunked body
                raise ConnectionError("request body ended early")
            if first:
                self.body_started.set()
                first = False
            left -= len(data) if left > 0 else 0
            yield data

    def route_cookies(self, environ: dict, start_response: Callable, record: dict) -> Iterable[bytes]:
        start_response("200 OK", [
            ("Set-Cookie", "a=1; Path=/"),
            ("X-Multi", "one"),
            ("Set-Cookie", "b=2; HttpOnly"),
            ("X-Multi", "two"),
            ("Set-Cookie", "c=3"),
            ("Content-Length", "2"),
        ])
        return [b"ok"]

    GZIPPED = gzip.compress(b"locations " * 5000, mtime=0)

    def route_gzip(self, environ: dict, start_response: Callable, record: dict) -> Iterable[bytes]:
        start_response("200 OK", [
            ("Content-Type", "text/plain"),
            ("Content-Encoding", "gzip"),
            ("Content-Length", str(len(self.GZIPPED))),
        ])
        return [self.GZIPPED]

    def route_download(self, environ: dict, start_response: Callable, record: dict) -> Iterable[bytes]:
        query = parse_qs(environ["QUERY_STRING"])
        size = int(query.get("size", [str(BIG)])[0])
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        if environ["REQUEST_METHOD"] == "HEAD":
            return []
        return self._download(size, gated="gate" in query, record=record)

    def _download(self, size: int, gated: bool, record: dict) -> Iterator[bytes]:
        for index, block in enumerate(big_blocks(size)):
            if gated and index == 1:
                # Held until the client has the first MiB: a proxy that
                # buffered whole responses would never let that happen.
                record["gate_opened"] = self.gate.wait(TIMEOUT)
            yield block

    def route_endless(self, environ: dict, start_response: Callable, record: dict) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(1 << 40))])
        return self._endless()

    def _endless(self) -> Iterator[bytes]:
        sent, finished, deadline = 0, False, time.monotonic() + 2 * TIMEOUT
        try:
            while time.monotonic() < deadline:
                yield BLOCK
                sent += len(BLOCK)
            finished = True
        finally:
            # Reached through GeneratorExit when wsgiref's send fails, i.e.
            # when the proxy closed this connection.
            self.endless.update(sent=sent, finished=finished)
            self.endless_done.set()

    def route_status(self, environ: dict, start_response: Callable, record: dict) -> Iterable[bytes]:
        code = environ["PATH_INFO"].split("/")[2]
        headers = {"204": [], "304": [("ETag", '"v1"'), ("Content-Length", "1234")]}[code]
        start_response({"204": "204 No Content", "304": "304 Not Modified"}[code], headers)
        return []

    def route_hang(self, environ: dict, start_response: Callable, record: dict) -> Iterable[bytes]:
        self.release.wait(TIMEOUT)
        start_response("200 OK", [("Content-Length", "4")])
        return [b"late"]


# Canned upstream responses no WSGI server would send.
RAW_RESPONSES = {
    "/hop-by-hop": (
        b"HTTP/1.1 200 OK\r\n"
        b"Connection: close, X-Hop\r\n"
        b"X-Hop: for-the-proxy-only\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Authenticate: Basic realm=upstream\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: example/1\r\n"
        b"X-Kept: yes\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    ),
    # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length.
    "/chunked-and-length": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    ),
    "/truncated-length": b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n" + BLOCK[: 256 * 1024],
    "/truncated-chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40000\r\n" + BLOCK[: 256 * 1024] + b"\r\n"
    ),
    # An interim response before the real one (RFC 9110 §15.2).
    "/continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
}

# Keep-alive responses without a body, or with one the proxy must read to
# the end before the connection can serve the next request.
KEEPALIVE_RESPONSES = {
    "/ka/head": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
    "/ka/204": b"HTTP/1.1 204 No Content\r\n\r\n",
    "/ka/304": b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 100\r\n\r\n',
    "/ka/length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "/ka/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
}
KEEPALIVE_SEEN: list[tuple[Any, str, str]] = []  # (upstream connection's peer, method, path)


def raw_upstream(head: bytes, sock: socket.socket) -> bool:
    method, path = head.decode("latin-1").split(" ", 2)[:2]
    if path in KEEPALIVE_RESPONSES:
        KEEPALIVE_SEEN.append((sock.getpeername(), method, path))
        sock.sendall(KEEPALIVE_RESPONSES[path])
        return True
    sock.sendall(RAW_RESPONSES[path])
    return False


# -- a small HTTP client ---------------------------------------------------------

@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name} appears {len(values)} times"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Client:
    """One keep-alive connection; sends exactly the headers it is given
    (plus Host unless one is given)."""

    url: str
    timeout: float = TIMEOUT
    conn: http.client.HTTPConnection = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.conn.close()

    def send(self, method: str, path: str, body: Any = None, headers: Iterable[tuple[str, str]] = (),
             chunked: bool = False) -> http.client.HTTPResponse:
        headers = list(headers)
        names = {name.lower() for name, _ in headers}
        self.conn.putrequest(method, path, skip_host="host" in names, skip_accept_encoding=True)
        if isinstance(body, bytes) and "content-length" not in names:
            headers.append(("Content-Length", str(len(body))))
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        for name, value in headers:
            self.conn.putheader(name, value)
        self.conn.endheaders(body, encode_chunked=chunked)
        return self.conn.getresponse()

    def request(self, method: str, path: str, body: Any = None, headers: Iterable[tuple[str, str]] = (),
                chunked: bool = False) -> Reply:
        response = self.send(method, path, body, headers, chunked)
        with response:
            return Reply(response.status, response.reason, response.getheaders(), response.read())


def fetch(url: str, method: str, path: str, **kwargs: Any) -> Reply:
    with Client(url) as client:
        return client.request(method, path, **kwargs)


# -- fixtures ------------------------------------------------------------------------

def write_ini(directory: Any, upstream: str, **options: Any) -> str:
    settings = {"connect_timeout": 2, "read_timeout": 2, "pool_maxsize": 2, "chunk_size": "256K", **options}
    lines = ["[app:main]", "use = egg:locproxy#proxy", f"upstream = {upstream}"]
    lines += [f"{name} = {value}" for name, value in settings.items()]
    path = directory / "proxy.ini"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def upstream_app() -> Iterator[Upstream]:
    yield Upstream()


@pytest.fixture(scope="module")
def upstream_url(upstream_app: Upstream) -> Iterator[str]:
    with serve_wsgi(upstream_app) as upstream:
        url = upstream.url
        yield url
        upstream_app.release.set()  # nothing may stay parked in /hang
        upstream_app.gate.set()


@pytest.fixture()
def upstream(upstream_app: Upstream, upstream_url: str) -> Iterator[Upstream]:
    upstream_app.reset()
    yield upstream_app
    upstream_app.release.set()
    upstream_app.gate.set()


@pytest.fixture(scope="module")
def proxy(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # pool_maxsize (2) below the thread count (4) on purpose: a request that
    # fails to return its pooled connection shows up as a 503 after two.
    ini = write_ini(tmp_path_factory.mktemp("proxy"), upstream_url)
    with run_gunicorn(ini, threads=4) as server:
        yield server


@pytest.fixture(scope="module")
def raw_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The proxy in front of ``raw_upstream``."""
    with serve_raw_http_in_thread(raw_upstream) as url:
        with run_gunicorn(write_ini(tmp_path_factory.mktemp("raw-proxy"), url), threads=2) as server:
            yield server


# -- pass-through ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "method, body, status, headers",
    [
        pytest.param("GET", None, "200 OK", [], id="get"),
        pytest.param("GET", None, "203 Rewritten Elsewhere", [], id="get-custom-reason"),
        pytest.param("POST", b'{"name": "cirros"}', "201 Created", [("Content-Type", "application/json")], id="post"),
        pytest.param(
            "PUT", b"\x00\x01binary\xff" * 1000, "204 No Content",
            [("Content-Type", "application/octet-stream")], id="put-204",
        ),
        pytest.param("PATCH", b"[]", "409 Conflict", [("Content-Type", "application/openstack-images-v2.1-json-patch")],
                     id="patch-409"),
        pytest.param("DELETE", None, "404 Not Found", [], id="delete-404"),
    ],
)
def test_method_status_headers_and_body_pass_through(proxy, upstream, method, body, status, headers):
    query = "status=" + status.replace(" ", "+")
    reply = fetch(proxy.url, method, f"/echo/images?{query}", body=body,
                  headers=[("X-Auth-Token", "secret-token"), *headers])

    code, reason = status.split(" ", 1)
    assert (reply.status, reply.reason) == (int(code), reason)
    seen = upstream.last("echo")
    assert seen["method"] == method
    assert seen["raw_uri"] == f"/echo/images?{query}"
    assert seen["headers"]["X-Auth-Token"] == "secret-token"
    for name, value in headers:
        assert seen["headers"][name] == value
    assert (seen["body_length"], seen["body_sha256"]) == digest([body or b""])
    if code == "204":
        assert reply.body == b"" and reply.header("Content-Length") is None
    else:
        assert reply.json() == seen
        assert reply.header("X-Upstream") == "echo"
        assert reply.header("Content-Length") == str(len(reply.body))
        assert reply.header("Content-Type") == "application/json"


@pytest.mark.parametrize(
    "chunked, expect",
    [
        pytest.param(False, False, id="content-length"),
        pytest.param(True, False, id="chunked"),
        # gunicorn answers 100-continue itself; the body must still stream.
        pytest.param(True, True, id="chunked-expect-100"),
    ],
)
def test_large_upload_streams_intact(proxy, upstream, chunked, expect):
    hasher = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for index, block in enumerate(big_blocks(BIG)):
            if index == 1 and not upstream.body_started.wait(TIMEOUT):
                raise AssertionError("the upstream got no body byte while the client held back the rest")
            hasher.update(block)
            yield block

    headers = [] if chunked else [("Content-Length", str(BIG))]
    headers += [("Expect", "100-continue")] if expect else []
    reply = fetch(proxy.url, "PUT", "/echo/v2/images/1/file", body=body(), chunked=chunked,
                  headers=[("Content-Type", "application/octet-stream"), *headers])

    assert reply.status == 200, reply.body
    seen = upstream.last("echo")
    assert (seen["body_length"], seen["body_sha256"]) == (BIG, hasher.hexdigest())
    if chunked:
        assert seen["headers"]["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in seen["headers"]
    else:
        assert seen["headers"]["Content-Length"] == str(BIG)
        assert "Transfer-Encoding" not in seen["headers"]


def test_large_download_streams_intact(proxy, upstream):
    with Client(proxy.url) as client:
        response = client.send("GET", "/download/v2/images/1/file?gate=1")
        with response:
            assert response.status == 200
            assert response.getheader("Content-Length") == str(BIG)
            assert response.getheader("Transfer-Encoding") is None
            first = response.read(MiB)  # only possible if the proxy streams
            upstream.gate.set()
            length, sha = digest([first, *iter(lambda: response.read(MiB), b"")])

    assert (length, sha) == digest(big_blocks(BIG))
    assert upstream.last("download")["gate_opened"] is True


def test_gzip_body_passes_byte_exact(proxy, upstream):
    reply = fetch(proxy.url, "GET", "/gzip", headers=[("Accept-Encoding", "gzip")])

    assert reply.body == Upstream.GZIPPED
    assert reply.header("Content-Encoding") == "gzip"
    assert reply.header("Content-Length") == str(len(Upstream.GZIPPED))
    assert upstream.last("gzip")["headers"]["Accept-Encoding"] == "gzip"


def test_repeated_response_fields_kept_in_order(proxy, upstream):
    reply = fetch(proxy.url, "GET", "/cookies")

    assert reply.all("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly", "c=3"]
    assert reply.all("X-Multi") == ["one", "two"]
    assert reply.body == b"ok"


@pytest.mark.parametrize(
    "sent, expected",
    [
        pytest.param("/echo/v2/a%2Fb/c", "/echo/v2/a%2Fb/c", id="encoded-slash"),
        pytest.param("/echo/caf%C3%A9/%E2%9C%93", "/echo/caf%C3%A9/%E2%9C%93", id="utf8"),
        pytest.param("/echo/x?name=a%2Fb&v=%C3%A9&flag", "/echo/x?name=a%2Fb&v=%C3%A9&flag", id="query"),
        pytest.param("/echo/sp%20ace;p=1,2:@!$&'()*+=", "/echo/sp%20ace;p=1,2:@!$&'()*+=", id="sub-delims"),
        pytest.param("/echo/a/./b/../c", "/echo/a/./b/../c", id="dot-segments-untouched"),
        # urllib3 upper-cases percent-escapes; RFC 3986 §2.1 makes them equal.
        pytest.param("/echo/a%2fb", "/echo/a%2Fb", id="lowercase-escape-uppercased"),
    ],
)
def test_request_target_preserved(proxy, upstream, sent, expected):
    reply = fetch(proxy.url, "GET", sent)

    assert reply.status == 200, reply.body
    assert upstream.last("echo")["raw_uri"] == expected


def test_head_is_sent_as_head_and_returns_no_body(proxy, upstream):
    with Client(proxy.url) as client:
        head = client.request("HEAD", "/download/v2/images/1/file?size=12345")
        # Same connection: any stray body byte would corrupt this response.
        after = client.request("GET", "/echo/after-head")

    assert head.status == 200
    assert head.header("Content-Length") == "12345"
    assert head.body == b""
    assert upstream.last("download")["method"] == "HEAD"
    assert after.status == 200 and after.json()["path_info"] == "/echo/after-head"


@pytest.mark.parametrize(
    "code, reason, headers",
    [
        pytest.param(204, "No Content", {}, id="204"),
        pytest.param(304, "Not Modified", {"ETag": '"v1"'}, id="304"),
    ],
)
def test_no_body_statuses(proxy, upstream, code, reason, headers):
    with Client(proxy.url) as client:
        reply = client.request("GET", f"/status/{code}")
        after = client.request("GET", "/echo/after")

    assert (reply.status, reply.reason, reply.body) == (code, reason, b"")
    for name, value in headers.items():
        assert reply.header(name) == value
    assert after.status == 200


# -- headers ----------------------------------------------------------------------------

def test_hop_by_hop_request_fields_dropped(proxy, upstream):
    reply = fetch(proxy.url, "GET", "/echo/hop", headers=[
        ("Connection", "keep-alive, X-Hop-Token"),
        ("X-Hop-Token", "meant-for-the-proxy"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("X-End-To-End", "kept"),
    ])

    assert reply.status == 200, reply.body
    received = {name.lower() for name in upstream.last("echo")["headers"]}
    assert received.isdisjoint(
        {"connection", "x-hop-token", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
         "transfer-encoding", "upgrade"}
    ), received
    assert upstream.last("echo")["headers"]["X-End-To-End"] == "kept"


def test_hop_by_hop_response_fields_dropped(raw_proxy):
    reply = fetch(raw_proxy.url, "GET", "/hop-by-hop")

    assert (reply.status, reply.body) == (200, b"hello")
    assert reply.header("X-Kept") == "yes"
    names = {name.lower() for name, _ in reply.headers}
    assert names.isdisjoint({"x-hop", "keep-alive", "proxy-authenticate", "proxy-connection", "trailer", "upgrade"})
    # Connection, if any, is the proxy's own, not the upstream's.
    assert "x-hop" not in (reply.header("Connection") or "").lower()


def test_transfer_encoding_overrides_content_length(raw_proxy):
    reply = fetch(raw_proxy.url, "GET", "/chunked-and-length")

    assert (reply.status, reply.body) == (200, b"hello world")
    assert reply.header("Content-Length") is None


def test_interim_response_from_upstream_skipped(raw_proxy):
    reply = fetch(raw_proxy.url, "GET", "/continue")

    assert (reply.status, reply.body) == (200, b"ok")


def test_upstream_connection_reused_after_complete_responses(raw_proxy):
    KEEPALIVE_SEEN.clear()
    requests = [("HEAD", "/ka/head"), ("GET", "/ka/204"), ("GET", "/ka/304"), ("GET", "/ka/length"),
                ("GET", "/ka/chunked")] * 2
    replies = [fetch(raw_proxy.url, method, path) for method, path in requests]

    assert [(r.status, r.body) for r in replies] == [
        (200, b""), (204, b""), (304, b""), (200, b"hello"), (200, b"hello")
    ] * 2
    assert [(method, path) for _, method, path in KEEPALIVE_SEEN] == requests
    # Each response was read to its end, so one pooled connection served all.
    assert len({peer for peer, _, _ in KEEPALIVE_SEEN}) == 1, KEEPALIVE_SEEN


def test_forwarded_fields_and_configured_host(proxy, upstream, upstream_url):
    reply = fetch(proxy.url, "GET", "/echo/forwarded", headers=[
        ("Host", "images.example.com:8443"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Host", "spoofed.example"),
        # Not "https": gunicorn itself trusts that from loopback
        # (forwarded_allow_ips) and would make it wsgi.url_scheme.
        ("X-Forwarded-Proto", "ftp"),
    ])

    assert reply.status == 200, reply.body
    headers = upstream.last("echo")["headers"]
    assert headers["Host"] == urlsplit(upstream_url).netloc  # never the client's
    assert headers["X-Forwarded-For"] == "203.0.113.7, 127.0.0.1"
    assert headers["X-Forwarded-Host"] == "images.example.com:8443"
    assert headers["X-Forwarded-Proto"] == "http"
    assert "User-Agent" not in headers  # nothing added on the client's behalf


def test_first_forwarded_for_is_the_client(proxy, upstream):
    fetch(proxy.url, "GET", "/echo/xff")

    assert upstream.last("echo")["headers"]["X-Forwarded-For"] == "127.0.0.1"


# -- faults -----------------------------------------------------------------------------

def test_refused_upstream_is_502_json(tmp_path):
    # Bound but not listening: connections are refused, and no one else can
    # take the port while we hold it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with run_gunicorn(write_ini(tmp_path, f"http://127.0.0.1:{port}"), threads=1) as server:
            reply = fetch(server.url, "GET", "/v2/images")
            log = server.log()

    assert reply.status == 502
    assert reply.header("Content-Type") == "application/json"
    assert reply.json() == {"error": {
        "code": 502, "title": "Bad Gateway", "message": f"upstream 127.0.0.1:{port} refused the connection",
    }}
    assert f"upstream 127.0.0.1:{port} refused the connection" in log


def test_hanging_upstream_is_504_json(proxy, upstream, upstream_url):
    started = time.monotonic()
    reply = fetch(proxy.url, "GET", "/hang")
    elapsed = time.monotonic() - started

    assert reply.status == 504
    assert reply.json()["error"] == {
        "code": 504,
        "title": "Gateway Timeout",
        "message": f"upstream {urlsplit(upstream_url).netloc} did not answer within 2s",
    }
    assert 1.5 < elapsed < 6, elapsed


@pytest.mark.parametrize(
    "path", [pytest.param("/truncated-length", id="content-length"), pytest.param("/truncated-chunked", id="chunked")]
)
def test_truncated_upstream_body_aborts_client(raw_proxy, path):
    with Client(raw_proxy.url) as client:
        response = client.send("GET", path)
        with response:
            assert response.status == 200
            with pytest.raises(http.client.IncompleteRead) as error:
                response.read()

    assert len(error.value.partial) <= 256 * 1024
    assert "response body broke off" in raw_proxy.log_after("response body broke off", timeout=TIMEOUT)


def test_client_disconnect_closes_upstream_connection(proxy, upstream):
    for attempt in range(3):  # more than pool_maxsize: slots must come back
        upstream.reset()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /endless HTTP/1.1\r\nHost: proxy\r\n\r\n")
            head = sock.recv(64 * 1024)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head[:300]
            received = len(head)
            while received < 2 * MiB:
                data = sock.recv(256 * 1024)
                assert data, "the proxy closed the download early"
                received += len(data)
            # Reset rather than FIN: the client is gone, not done.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        assert upstream.endless_done.wait(TIMEOUT), "the upstream was still sending after the client left"
        assert upstream.endless["finished"] is False
        assert upstream.endless["sent"] < 1 << 30

    reply = fetch(proxy.url, "GET", "/echo/still-works")
    assert reply.status == 200, reply.body


def test_client_aborting_upload_breaks_upstream_body(proxy, upstream):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"PUT /echo/v2/images/1/file HTTP/1.1\r\nHost: proxy\r\nContent-Length: %d\r\n\r\n" % (8 * MiB))
        sock.sendall(BLOCK)
        assert upstream.body_started.wait(TIMEOUT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    # The upstream must see a broken body, never a complete shorter one.
    assert upstream.echo_done.wait(TIMEOUT), "the upstream is still waiting for the rest of the body"
    seen = upstream.last("echo")
    assert "body_length" not in seen and seen["body_error"], seen
    assert fetch(proxy.url, "GET", "/echo/still-works").status == 200


def test_pool_recovers_after_truncations(raw_proxy):
    for _ in range(3):  # more than pool_maxsize
        with pytest.raises(http.client.IncompleteRead):
            fetch(raw_proxy.url, "GET", "/truncated-length")

    assert fetch(raw_proxy.url, "GET", "/hop-by-hop").body == b"hello"


# -- pure parts ---------------------------------------------------------------------------

def _environ(**overrides: Any) -> dict[str, Any]:
    return {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "", **overrides}


def _wsgi(text: str) -> str:
    return text.encode("utf-8").decode("latin-1")


@pytest.mark.parametrize(
    "environ, expected",
    [
        pytest.param(_environ(RAW_URI="/v2/a%2Fb?x=1", PATH_INFO="/v2/a/b", QUERY_STRING="x=1"),
                     "/v2/a%2Fb?x=1", id="raw-uri"),
        pytest.param(_environ(REQUEST_URI="/v2/a%2Fb", PATH_INFO="/v2/a/b"), "/v2/a%2Fb", id="request-uri"),
        pytest.param(_environ(RAW_URI="/v2/images/1/file", PATH_INFO="/v2/images/1"), "/v2/images/1",
                     id="stale-raw-uri-rebuilt"),
        pytest.param(_environ(RAW_URI="/v2/images?prefer=a", PATH_INFO="/v2/images", QUERY_STRING=""),
                     "/v2/images", id="query-from-query-string"),
        pytest.param(_environ(SCRIPT_NAME="/image", PATH_INFO="/v2/x", RAW_URI="/image/v2/x"), "/image/v2/x",
                     id="script-name"),
        pytest.param(_environ(RAW_URI="http://other:1/a%2Fb#frag", PATH_INFO="/a/b"), "/a%2Fb", id="absolute-form"),
        pytest.param(_environ(PATH_INFO=_wsgi("/café/✓")), "/caf%C3%A9/%E2%9C%93", id="rebuilt-utf8"),
        pytest.param(_environ(PATH_INFO="/100%/a b;c=d,e:f@g"), "/100%25/a%20b;c=d,e:f@g", id="rebuilt-quoting"),
        pytest.param(_environ(PATH_INFO="", RAW_URI="*"), "/", id="asterisk-form"),
    ],
)
def test_request_target(environ, expected):
    assert request_target(environ) == expected


@pytest.mark.parametrize(
    "environ, expected",
    [
        pytest.param(
            _environ(HTTP_HOST="client.example", HTTP_X_AUTH_TOKEN="t", CONTENT_TYPE="application/json",
                     CONTENT_LENGTH="2", REMOTE_ADDR="192.0.2.1"),
            {"Host": "up:9292", "X-Auth-Token": "t", "Content-Type": "application/json",
             "X-Forwarded-For": "192.0.2.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "client.example"},
            id="basic",
        ),
        pytest.param(
            _environ(HTTP_CONNECTION="close, X-Secret", HTTP_X_SECRET="s", HTTP_TE="trailers",
                     HTTP_TRANSFER_ENCODING="chunked", HTTP_X_FORWARDED_FOR="10.0.0.1, 10.0.0.2",
                     REMOTE_ADDR="192.0.2.1", SERVER_NAME="proxy", SERVER_PORT="8080", **{"wsgi.url_scheme": "https"}),
            {"Host": "up:9292", "X-Forwarded-For": "10.0.0.1, 10.0.0.2, 192.0.2.1", "X-Forwarded-Proto": "https",
             "X-Forwarded-Host": "proxy:8080"},
            id="hop-by-hop-and-no-host",
        ),
    ],
)
def test_forward_headers(environ, expected):
    headers = forward_headers(environ, "up:9292")
    # User-Agent and Accept-Encoding are urllib3's SKIP_HEADER markers here.
    assert {k: v for k, v in headers.items() if k not in ("User-Agent", "Accept-Encoding")} == expected


@pytest.mark.parametrize(
    "environ, status, message",
    [
        pytest.param(_environ(REQUEST_METHOD="PUT", CONTENT_LENGTH="12abc"), 400, "invalid Content-Length '12abc'",
                     id="bad-length"),
        pytest.param(_environ(REQUEST_METHOD="PUT", CONTENT_LENGTH="-1"), 400, "invalid Content-Length '-1'",
                     id="negative-length"),
        pytest.param(_environ(REQUEST_METHOD="PUT", HTTP_TRANSFER_ENCODING="chunked"), 411,
                     "chunked request bodies are not supported by this server", id="chunked-unterminated"),
    ],
)
def test_bad_request_bodies_rejected_before_connecting(environ, status, message):
    # Port 9 (discard) on loopback: nothing may be sent there.
    proxy = Proxy(ProxySettings(upstream="http://127.0.0.1:9"))
    environ = {**environ, "wsgi.input": io.BytesIO(b"abc"), "wsgi.url_scheme": "http"}
    started: list[Any] = []
    try:
        body = b"".join(proxy(environ, lambda status, headers, exc_info=None: started.append((status, headers))))
    finally:
        proxy.close()

    assert started[0][0].startswith(f"{status} ")
    assert json.loads(body)["error"]["message"] == message


def _caused(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


SETTINGS = ProxySettings(upstream="http://glance:9292", connect_timeout=3, read_timeout=30, pool_maxsize=8)


@pytest.mark.parametrize(
    "error, status, message",
    [
        pytest.param(_caused(NewConnectionError(None, "refused"), ConnectionRefusedError(111, "refused")),
                     502, "upstream glance:9292 refused the connection", id="refused"),
        pytest.param(MaxRetryError(None, "/", _caused(NewConnectionError(None, "x"), ConnectionRefusedError())),
                     502, "upstream glance:9292 refused the connection", id="refused-wrapped"),
        pytest.param(_caused(NewConnectionError(None, "x"), OSError(113, "No route to host")),
                     502, "upstream glance:9292 could not be reached", id="unreachable"),
        pytest.param(NameResolutionError("glance", None, socket.gaierror(-2, "Name or service not known")),
                     502, "upstream glance:9292 could not be resolved", id="dns"),
        pytest.param(ConnectTimeoutError("timed out"), 504,
                     "upstream glance:9292 did not accept the connection within 3s", id="connect-timeout"),
        pytest.param(ReadTimeoutError(None, "/", "timed out"), 504,
                     "upstream glance:9292 did not answer within 30s", id="read-timeout"),
        pytest.param(EmptyPoolError(None, "full"), 503,
                     "no free connection to upstream glance:9292 within 3s (pool_maxsize=8)", id="pool-empty"),
        pytest.param(ProtocolError("Connection aborted.", http.client.RemoteDisconnected("closed")), 502,
                     "upstream glance:9292 closed the connection without a valid response", id="disconnected"),
        pytest.param(ProtocolError("Connection aborted.", TimeoutError("timed out")), 504,
                     "upstream glance:9292 stopped reading the request", id="send-stalled"),
        pytest.param(SSLError("bad handshake"), 502, "TLS with upstream glance:9292 failed", id="tls"),
    ],
)
def test_describe_upstream_error(error, status, message):
    assert describe_upstream_error(error, upstream_label(SETTINGS.upstream), SETTINGS) == (status, message)


@pytest.mark.parametrize(
    "url, label",
    [
        pytest.param("http://glance:9292/prefix", "glance:9292", id="port"),
        pytest.param("https://images.example", "images.example:443", id="https-default"),
        pytest.param("http://[::1]:8080", "[::1]:8080", id="ipv6"),
    ],
)
def test_upstream_label(url, label):
    assert upstream_label(url) == label


# -- in process, WSGI-linted ---------------------------------------------------------------

def test_wsgi_compliance_in_process(upstream, upstream_url):
    proxy = Proxy(ProxySettings(upstream=upstream_url + "/prefix", read_timeout=5, pool_maxsize=2))
    try:
        app = TestApp(proxy, lint=True, extra_environ={"REMOTE_ADDR": "192.0.2.9"})
        get = app.get("/echo/a%2Fb", headers={"X-Auth-Token": "t"})
        post = app.post("/echo/upload", params=b"x" * 100_000, content_type="application/octet-stream")
        head = app.head("/echo/head")
    finally:
        proxy.close()

    assert get.json["path_info"] == "/prefix/echo/a/b"
    assert get.json["headers"]["X-Forwarded-For"] == "192.0.2.9"
    assert post.json["body_length"] == 100_000
    assert head.status_int == 200 and head.body == b""
    assert int(head.headers["Content-Length"]) > 0  # the GET's length, kept
    assert [r["method"] for r in upstream.requests] == ["GET", "POST", "HEAD"]


def test_app_factory_reads_paste_options():
    proxy = app_factory({"here": "/etc/locproxy"}, upstream="http://127.0.0.1:9292/", read_timeout="7",
                        chunk_size="512K")
    try:
        assert proxy.settings == ProxySettings(upstream="http://127.0.0.1:9292", read_timeout=7.0,
                                               chunk_size=512 * 1024)
    finally:
        proxy.close()


def test_stale_keepalive_connection_is_retried_once_for_safe_requests():
    """The upstream closes a kept-alive connection instead of answering its
    next request (as servers do when their idle timeout races a reuse): a
    bodiless GET goes once more on a new connection; a POST does not."""
    requests_per_connection: dict[tuple, int] = {}

    def upstream(head: bytes, sock: socket.socket) -> bool:
        # Keyed by the client's address: id() of a closed socket can be reused.
        peer = sock.getpeername()
        count = requests_per_connection[peer] = requests_per_connection.get(peer, 0) + 1
        if count > 1:
            return False  # close without a word
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
        return True

    with serve_raw_http_in_thread(upstream) as url:
        proxy = Proxy(ProxySettings(upstream=url, pool_maxsize=1))
        try:
            app = TestApp(proxy)
            assert app.get("/v2/images").body == b"ok"
            assert app.get("/v2/images").body == b"ok", "the stale connection was retried on a new one"
            assert len(requests_per_connection) == 2
            refused = app.post("/v2/images", b"{}", status=502)
            assert "closed the connection" in refused.json["error"]["message"]
        finally:
            proxy.close()


# -- settings -------------------------------------------------------------------

@pytest.mark.parametrize(
    "local_conf, message",
    [
        pytest.param({}, "upstream: required", id="missing-upstream"),
        pytest.param({"upstream": "ftp://x"}, "upstream: expected an http:// or https:// URL", id="bad-scheme"),
        pytest.param({"upstream": "http://u:p@x"}, "upstream: must not carry credentials", id="credentials"),
        pytest.param({"upstream": "http://x", "pool_maxsize": "0"}, "pool_maxsize: expected an integer >= 1",
                     id="bad-pool"),
        pytest.param({"upstream": "http://x", "timeout": "1"}, "timeout: unknown option", id="unknown"),
    ],
)
def test_bad_proxy_options(local_conf, message):
    with pytest.raises(ConfigError) as error:
        load_proxy_settings({}, local_conf)
    assert message in str(error.value)


def test_proxy_settings():
    settings = load_proxy_settings({}, {"upstream": "http://127.0.0.1:9292/", "read_timeout": "2"})
    assert settings.upstream == "http://127.0.0.1:9292"
    assert settings.read_timeout == 2.0
