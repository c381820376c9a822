"""Backends: file roots, host allow-list, ranges, faults, credentials, pool slots.

Real files under tmp_path roots and a real loopback HTTP backend
(``faultserver.FaultServer``); every wait is bounded by short timeouts.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from locproxy.config import configured_backends, load_filter_settings
from locproxy.download.backends import BackendError, Backends, BackendStream
from tests.support.faultserver import EXTRA, FaultServer, RefusingPort, StalledListener

# 10 000 bytes that never repeat at a chunk boundary, so an off-by-one shows.
DATA = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(313))[:10_000]
SIZE = len(DATA)
CHUNK = 1000
SECRET = "s3cr@t:pw"  # percent-encoded in URLs below
USERINFO = "glance:s3cr%40t%3Apw"


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """root/ with an image, and things around it that must stay unreachable."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    sibling = tmp_path / "root2"  # shares the "root" prefix: /…/root2 is not in /…/root
    for directory in (root, outside, sibling, root / "dir", root / "%2e%2e"):
        directory.mkdir()
    (root / "img").write_bytes(DATA)
    (root / "%2e%2e" / "img").write_bytes(DATA)  # a directory literally named %2e%2e
    (outside / "secret").write_bytes(DATA)
    (sibling / "img").write_bytes(DATA)
    (root / "escape").symlink_to(outside / "secret")
    (root / "linkdir").symlink_to(outside)
    (root / "alias").symlink_to(root / "img")
    os.mkfifo(root / "fifo")
    return {"root": root, "outside": outside, "sibling": sibling}


#: Test shorthands for the common options' ini names.
_INI_NAMES = {"connect_timeout": "backend_connect_timeout", "read_timeout": "backend_read_timeout",
              "pool_maxsize": "backend_pool_maxsize", "first_byte_timeout": "backend_first_byte_timeout",
              "min_rate": "backend_min_rate", "rate_window": "backend_rate_window", "ca_file": "backend_ca_file"}


def configure(**options: object) -> Backends:
    return configured_backends(**{_INI_NAMES.get(name, name): value for name, value in options.items()})


@pytest.fixture
def make_backends(tree: dict[str, Path]) -> Iterator[Callable[..., Backends]]:
    created: list[Backends] = []

    def make(**overrides: object) -> Backends:
        options: dict = {
            "file_roots": str(tree["root"]),
            "allowed_hosts": "127.0.0.1",
            "chunk_size": CHUNK,
            "connect_timeout": 1.0,
            "read_timeout": 1.0,
            "pool_maxsize": 2,
        }
        options.update(overrides)
        backends = configure(**options)
        created.append(backends)
        return backends

    yield make
    for backends in created:
        backends.clear()


@pytest.fixture
def backends(make_backends: Callable[..., Backends]) -> Backends:
    return make_backends()


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(DATA) as running:
        yield running


def read_all(stream: BackendStream) -> bytes:
    with stream:
        return b"".join(stream)


def read_until_error(stream: BackendStream) -> tuple[bytes, BackendError]:
    received = bytearray()
    with stream, pytest.raises(BackendError) as info:
        for chunk in stream:
            received += chunk
    return bytes(received), info.value


# -- file:// -------------------------------------------------------------------

RANGES = [
    pytest.param(0, SIZE, SIZE, id="whole"),
    pytest.param(0, SIZE, None, id="whole-size-unknown"),
    pytest.param(0, 1, SIZE, id="first-byte"),
    pytest.param(SIZE - 1, 1, SIZE, id="last-byte"),
    pytest.param(1234, 3000, SIZE, id="middle-across-chunks"),
    pytest.param(CHUNK, CHUNK, SIZE, id="exactly-one-chunk"),
    pytest.param(SIZE - 2500, 2500, None, id="tail-size-unknown"),
]


@pytest.mark.parametrize("start, length, total_size", RANGES)
def test_file_reads_the_range(backends: Backends, tree: dict, start: int, length: int, total_size: int | None) -> None:
    stream = backends.open(f"file://{tree['root']}/img", start, length, total_size)
    assert stream.label == "file"
    assert stream.fileobj is not None and stream.fileobj.tell() == start
    chunks = list(stream)
    stream.close()
    assert b"".join(chunks) == DATA[start : start + length]
    assert all(len(chunk) <= CHUNK for chunk in chunks)
    assert stream.fileobj.closed


def test_file_yields_chunk_size_pieces(backends: Backends, tree: dict) -> None:
    with backends.open(f"file://{tree['root']}/img", 100, 2500, SIZE) as stream:
        assert [len(chunk) for chunk in stream] == [1000, 1000, 500]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("file://localhost{root}/img", id="localhost"),
        pytest.param("file://LOCALHOST{root}/img", id="localhost-uppercase"),
        pytest.param("file://{root}/alias", id="symlink-inside-root"),
        pytest.param("file://{root}/dir/../img", id="dotdot-staying-inside"),
        pytest.param("file://{root}/%2e%2e/img", id="percent-2e-is-a-literal-name"),
    ],
)
def test_file_locations_inside_roots_are_read(backends: Backends, tree: dict, path: str) -> None:
    url = path.format(root=tree["root"])
    assert backends.readable(url)
    assert read_all(backends.open(url, 0, SIZE, SIZE)) == DATA


def test_fileobj_is_ready_for_a_file_wrapper(backends: Backends, tree: dict) -> None:
    stream = backends.open(f"file://{tree['root']}/img", 4000, 100, SIZE)
    try:
        assert stream.fileobj is not None
        assert os.lseek(stream.fileobj.fileno(), 0, os.SEEK_CUR) == 4000  # what sendfile uses
        assert stream.fileobj.read(100) == DATA[4000:4100]
    finally:
        stream.close()
    stream.close()  # idempotent
    assert stream.fileobj.closed


FILE_REFUSALS = [
    pytest.param("file://{root}/../outside/secret", SIZE, "outside file roots", id="dotdot"),
    pytest.param("file://{root}/dir/../../outside/secret", SIZE, "outside file roots", id="dotdot-deep"),
    pytest.param("file://{root}/escape", SIZE, "outside file roots", id="symlink-out"),
    pytest.param("file://{root}/linkdir/secret", SIZE, "outside file roots", id="symlinked-dir-out"),
    pytest.param("file:///etc/passwd", None, "outside file roots", id="etc-passwd"),
    pytest.param("file://{sibling}/img", SIZE, "outside file roots", id="prefix-sibling-root2"),
    pytest.param("file://{root}/%2e%2e/outside/secret", SIZE, "file not found", id="percent-dotdot-literal"),
    pytest.param("file://{root}/missing", SIZE, "file not found", id="missing"),
    pytest.param("file://{root}/dir", None, "not a regular file", id="directory"),
    pytest.param("file://{root}", None, "not a regular file", id="the-root-itself"),
    pytest.param("file://{root}/img", SIZE + 1, "size mismatch (file has 10000 bytes, image 10001)", id="size-mismatch"),
    pytest.param("file://otherhost{root}/img", SIZE, "file URL with a host", id="other-host"),
    pytest.param("file://user:pw@localhost{root}/img", SIZE, "file URL with a host", id="userinfo"),
    pytest.param("file://localhost:1{root}/img", SIZE, "file URL with a host", id="port"),
    pytest.param("file://{root}/img?x=1", SIZE, "file URL with a query or fragment", id="query"),
    pytest.param("file://{root}/img#x", SIZE, "file URL with a query or fragment", id="fragment"),
    pytest.param("file:img", SIZE, "invalid file path", id="relative"),
    pytest.param("file://{root}/img\x00.txt", SIZE, "invalid file path", id="nul-byte"),
]


@pytest.mark.parametrize("template, total_size, reason", FILE_REFUSALS)
def test_file_refusals(backends: Backends, tree: dict, template: str, total_size: int | None, reason: str) -> None:
    url = template.format(root=tree["root"], sibling=tree["sibling"])
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        backends.open(url, 0, SIZE, total_size)
    assert time.monotonic() - start < 2
    error = info.value
    assert (error.label, error.reason) == ("file", reason)
    # Reasons go to logs and clients: never a path.
    assert str(tree["root"]) not in str(error) and "passwd" not in str(error)


def test_fifo_is_refused_without_blocking(backends: Backends, tree: dict) -> None:
    # Opening a FIFO for reading blocks until a writer comes: run the open in
    # a daemon thread so a regression fails this test instead of hanging.
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            backends.open(f"file://{tree['root']}/fifo", 0, SIZE, None).close()
        except BaseException as error:  # noqa: B036 - reported below
            outcome.append(error)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(2)
    if worker.is_alive():
        os.close(os.open(tree["root"] / "fifo", os.O_WRONLY | os.O_NONBLOCK))  # unblock it
        worker.join(2)
        pytest.fail("open() blocked on a FIFO")
    assert [type(error) for error in outcome] == [BackendError]
    assert outcome[0].reason == "not a regular file"  # type: ignore[attr-defined]


def test_file_readable_is_static(backends: Backends, tree: dict) -> None:
    # No I/O: a missing file is "readable" (open() will say it is missing)...
    assert backends.readable(f"file://{tree['root']}/missing")
    # ...but what open() refuses without looking never is.
    assert not backends.readable(f"file://otherhost{tree['root']}/img")
    assert not backends.readable(f"file://{tree['root']}/img?x")


def test_range_beyond_end_of_file_when_size_unknown(backends: Backends, tree: dict) -> None:
    with pytest.raises(BackendError, match=r"^file: range beyond end of file \(10000 bytes\)$"):
        backends.open(f"file://{tree['root']}/img", 5000, SIZE - 4999, None)


def test_file_shrinking_mid_read_fails_mid_stream(backends: Backends, tree: dict) -> None:
    image = tree["root"] / "img"
    stream = backends.open(f"file://{tree['root']}/img", 0, SIZE, SIZE)
    iterator = iter(stream)
    assert next(iterator) == DATA[:CHUNK]
    os.truncate(image, 2500)
    received = bytearray(DATA[:CHUNK])
    with stream, pytest.raises(BackendError) as info:
        for chunk in iterator:
            received += chunk
    assert bytes(received) == DATA[:2500]
    assert info.value.reason == "ended early at byte 2500"


def test_file_locations_need_file_roots(make_backends: Callable[..., Backends], tree: dict) -> None:
    backends = make_backends(file_roots=())
    url = f"file://{tree['root']}/img"
    assert not backends.readable(url)
    with pytest.raises(BackendError, match="file locations not enabled"):
        backends.open(url, 0, SIZE, SIZE)


def test_closed_stream_cannot_be_iterated(backends: Backends, tree: dict) -> None:
    stream = backends.open(f"file://{tree['root']}/img", 0, SIZE, SIZE)
    stream.close()
    with pytest.raises(BackendError, match="stream closed"):
        iter(stream)


# -- http(s):// ----------------------------------------------------------------


@pytest.mark.parametrize("start, length, total_size", RANGES)
def test_http_reads_the_range(
    backends: Backends, server: FaultServer, start: int, length: int, total_size: int | None
) -> None:
    stream = backends.open(server.url("/v1/images/abc"), start, length, total_size)
    assert stream.label == f"http://127.0.0.1:{server.port}"
    assert stream.fileobj is None
    chunks = list(stream)
    stream.close()
    assert b"".join(chunks) == DATA[start : start + length]
    assert all(len(chunk) <= CHUNK for chunk in chunks)

    (request,) = server.requests
    assert (request.method, request.path) == ("GET", "/v1/images/abc")
    whole = start == 0 and length == total_size
    assert request.headers.get("range") == (None if whole else f"bytes={start}-{start + length - 1}")
    # Backends get only what Backends builds.
    assert request.headers["accept-encoding"] == "identity"
    assert set(request.headers) <= {"host", "accept-encoding", "user-agent", "range"}


def test_http_query_string_is_kept(backends: Backends, server: FaultServer) -> None:
    read_all(backends.open(server.url("/img?sig=abc&x=1"), 0, SIZE, SIZE))
    assert server.requests[-1].path == "/img?sig=abc&x=1"


@pytest.mark.parametrize(
    "path, sent",
    [
        pytest.param("/a\r\nX-Injected: 1", "/aX-Injected:%201", id="crlf-is-stripped"),
        pytest.param("/a b", "/a%20b", id="space-is-encoded"),
        pytest.param("/im\u00e4", "/im%C3%A4", id="non-ascii-is-encoded"),
    ],
)
def test_location_paths_cannot_inject_headers(backends: Backends, server: FaultServer, path: str, sent: str) -> None:
    assert read_all(backends.open(server.url(path), 0, SIZE, SIZE)) == DATA
    (request,) = server.requests
    assert request.path == sent
    assert "x-injected" not in request.headers


def test_clear_closes_idle_connections(backends: Backends, server: FaultServer) -> None:
    read_all(backends.open(server.url(), 0, SIZE, SIZE))
    read_all(backends.open(server.url(), 0, SIZE, SIZE))
    assert server.connection_count == 1  # kept alive and reused
    backends.clear()
    read_all(backends.open(server.url(), 0, SIZE, SIZE))
    assert server.connection_count == 2


def test_credentials_go_to_the_backend_only(
    backends: Backends, server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = server.url("/img", userinfo=USERINFO)
    assert read_all(backends.open(url, 0, SIZE, SIZE)) == DATA
    expected = "Basic " + base64.b64encode(f"glance:{SECRET}".encode()).decode()
    assert server.requests[-1].headers["authorization"] == expected

    server.mode = "status:401"
    with pytest.raises(BackendError) as info:
        backends.open(url, 0, SIZE, SIZE)
    error = info.value
    assert str(error) == f"http://127.0.0.1:{server.port}: HTTP 401"
    for text in (str(error), repr(error), error.label, caplog.text):
        assert "s3cr" not in text and "glance:" not in text and "%40" not in text
    assert "HTTP 401" in caplog.text  # the decision is logged, scrubbed


HOST_POLICY = [
    # allowed_hosts, url, readable
    pytest.param({"127.0.0.1"}, "http://127.0.0.1:{port}/img", True, id="host-any-port"),
    pytest.param({"127.0.0.1:{port}"}, "http://127.0.0.1:{port}/img", True, id="host-exact-port"),
    pytest.param({"127.0.0.1:1"}, "http://127.0.0.1:{port}/img", False, id="other-port"),
    pytest.param({"localhost"}, "http://127.0.0.1:{port}/img", False, id="name-is-not-its-address"),
    pytest.param({"127.0.0.1"}, "http://[::1]:{port}/img", False, id="ipv6-literal-not-allowed"),
    pytest.param({"127.0.0.1"}, "http://2130706433:{port}/img", False, id="integer-ipv4-form"),
    pytest.param({"[::1]"}, "http://[::1]:8080/img", True, id="ipv6-any-port"),
    pytest.param({"[0:0::1]:8080"}, "http://[::1]:8080/img", True, id="ipv6-normalized"),
    pytest.param({"[::1]:8080"}, "http://[::1]:8081/img", False, id="ipv6-other-port"),
    pytest.param({"allowed.example"}, "http://allowed.example@evil.example/img", False, id="userinfo-trick"),
    pytest.param({"allowed.example"}, "http://allowed.example:80@evil.example/img", False, id="userinfo-port-trick"),
    pytest.param({"allowed.example"}, "http://allowed.example\\@evil.example/img", False, id="backslash-trick"),
    pytest.param({"allowed.example"}, "http://evil.example#@allowed.example/img", False, id="fragment-trick"),
    pytest.param({"allowed.example"}, "http://evil.example?@allowed.example/img", False, id="query-trick"),
    pytest.param({"allowed.example"}, "http://allowed.example.evil.example/img", False, id="suffix-trick"),
    pytest.param({"allowed.example"}, "http://ALLOWED.Example/img", True, id="case-insensitive"),
    pytest.param({"allowed.example:80"}, "http://allowed.example/img", True, id="http-default-port"),
    pytest.param({"allowed.example:80"}, "https://allowed.example/img", False, id="https-is-443"),
    pytest.param({"allowed.example:443"}, "https://allowed.example/img", True, id="https-default-port"),
    pytest.param({"allowed.example"}, "http://allowed.example:99999/img", False, id="invalid-port"),
    pytest.param({"allowed.example"}, "http:///img", False, id="no-host"),
    pytest.param(set(), "http://127.0.0.1:{port}/img", False, id="nothing-allowed"),
]


@pytest.mark.parametrize("allowed, template, readable", HOST_POLICY)
def test_host_allow_list(
    make_backends: Callable[..., Backends], server: FaultServer, allowed: set, template: str, readable: bool
) -> None:
    allowed_hosts = frozenset(item.format(port=server.port) for item in allowed)
    backends = make_backends(allowed_hosts=allowed_hosts)
    url = template.format(port=server.port)
    assert backends.readable(url) is readable
    if not readable:
        with pytest.raises(BackendError) as info:
            backends.open(url, 0, SIZE, SIZE)
        assert info.value.reason in ("host not allowed", "invalid URL")
        assert "evil" not in info.value.reason
        assert server.request_count == 0


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("sheepdog://tenant:Sekr1t@sheep.example/v3/container/obj", id="with-key"),
        pytest.param("cinder://volume-id", id="cinder"),
        pytest.param("vsphere://vc.example/folder/image?dcPath=dc", id="vsphere"),
        pytest.param("ftp://127.0.0.1/img", id="ftp"),
        pytest.param("gopher://127.0.0.1/img", id="gopher"),
        pytest.param("/root/img", id="bare-path"),
        pytest.param("", id="empty"),
    ],
)
def test_other_schemes_are_unsupported(backends: Backends, url: str) -> None:
    assert not backends.readable(url)
    with pytest.raises(BackendError) as info:
        backends.open(url, 0, SIZE, SIZE)
    assert info.value.reason == "unsupported scheme"
    assert "Sekr1t" not in str(info.value) and "tenant" not in str(info.value)


# Faults that must fail before the first byte: (mode, start, length, total_size, reason)
FAULTS_BEFORE_FIRST_BYTE = [
    pytest.param("status:500", 0, SIZE, SIZE, "HTTP 500", id="500"),
    pytest.param("status:404", 0, SIZE, SIZE, "HTTP 404", id="404"),
    pytest.param("status:204", 0, SIZE, SIZE, "HTTP 204", id="204-no-content"),
    pytest.param("redirect:http://127.0.0.1:1/x", 0, SIZE, SIZE, "redirect not followed (HTTP 302)", id="redirect"),
    pytest.param("hang_headers", 0, SIZE, SIZE, "read timeout", id="hang-before-headers"),
    pytest.param("ignore_range", 100, 200, SIZE, "ignored Range", id="ignore-range"),
    pytest.param("ignore_range", 0, 200, None, "ignored Range", id="ignore-range-from-zero"),
    pytest.param("wrong_content_range", 100, 200, SIZE, "Content-Range mismatch", id="wrong-content-range"),
    pytest.param("ok", 100, 200, SIZE + 5, "Content-Range mismatch", id="other-total-size"),
    pytest.param("bad_content_length", 0, SIZE, SIZE, "Content-Length mismatch", id="content-length-200"),
    pytest.param("bad_content_length", 100, 200, SIZE, "Content-Length mismatch", id="content-length-206"),
    pytest.param("ok", SIZE, 10, None, "HTTP 416", id="416-unsatisfiable"),
]


@pytest.mark.parametrize("mode, start, length, total_size, reason", FAULTS_BEFORE_FIRST_BYTE)
def test_http_faults_before_the_first_byte(
    make_backends: Callable[..., Backends],
    server: FaultServer,
    mode: str,
    start: int,
    length: int,
    total_size: int | None,
    reason: str,
) -> None:
    # One pool slot: if a failed open() kept its connection, the next open
    # would fail with "connection pool exhausted" instead of succeeding.
    backends = make_backends(pool_maxsize=1, read_timeout=0.3, connect_timeout=0.5)
    server.mode = mode
    with pytest.raises(BackendError) as info:
        backends.open(server.url(), start, length, total_size)
    assert (info.value.label, info.value.reason) == (f"http://127.0.0.1:{server.port}", reason)

    server.mode = "ok"
    assert read_all(backends.open(server.url(), 0, SIZE, SIZE)) == DATA


def test_a_broken_reused_connection_is_retried_once(backends: Backends, server: FaultServer) -> None:
    read_all(backends.open(server.url(), 0, SIZE, SIZE))  # leaves a pooled keep-alive connection
    # The next request on it gets no answer (as when the backend closes an
    # idle connection just as it is reused): one retry, on a new connection.
    server.mode = "drop_first:1"
    assert read_all(backends.open(server.url(), 0, SIZE, SIZE)) == DATA
    assert server.request_count == 3
    assert server.connection_count == 2


def test_a_backend_that_never_answers_is_tried_twice(backends: Backends, server: FaultServer) -> None:
    server.mode = "drop_first:5"
    with pytest.raises(BackendError) as info:
        backends.open(server.url(), 0, SIZE, SIZE)
    # FIN or RST, depending on timing: both mean no answer.
    assert info.value.reason in ("connection closed", "connection reset")
    assert server.request_count == 2


def test_redirect_target_is_never_contacted(backends: Backends, server: FaultServer) -> None:
    with FaultServer(DATA) as target:
        server.mode = f"redirect:{target.url()}"
        with pytest.raises(BackendError, match=r"redirect not followed \(HTTP 302\)"):
            backends.open(server.url(), 0, SIZE, SIZE)
        assert target.request_count == 0
    assert server.request_count == 1


# Faults that fail mid-stream: (mode, reason prefix, fewest and most bytes yielded first)
FAULTS_MID_STREAM = [
    pytest.param("hang_after:2500", "read timeout at byte", 2000, 2500, id="hang-mid-body"),
    pytest.param("truncate_after:2500", "ended early at byte", 2500, 2500, id="truncated-content-length"),
    pytest.param("truncate_after:3000,chunked", "ended early at byte", 3000, 3000, id="truncated-chunked"),
    pytest.param("truncate_after:3000,no_content_length", "ended early at byte", 3000, 3000, id="truncated-close-delimited"),
    pytest.param("reset_after:2500", "connection reset at byte", 0, 2500, id="reset-mid-body"),
    pytest.param("hang_after:0", "read timeout at byte", 0, 0, id="hang-after-headers"),
]


@pytest.mark.parametrize("mode, reason, fewest, most", FAULTS_MID_STREAM)
@pytest.mark.parametrize("start", [pytest.param(0, id="whole"), pytest.param(100, id="ranged")])
def test_http_faults_mid_stream(
    make_backends: Callable[..., Backends], server: FaultServer, mode: str, reason: str, fewest: int, most: int, start: int
) -> None:
    backends = make_backends(pool_maxsize=1, read_timeout=0.3, connect_timeout=0.5)
    server.mode = mode
    length = SIZE - start
    received, error = read_until_error(backends.open(server.url(), start, length, SIZE))
    assert fewest <= len(received) <= most
    assert received == DATA[start : start + len(received)]
    assert error.reason == f"{reason} {start + len(received)}"

    server.mode = "ok"  # the pool slot came back
    assert read_all(backends.open(server.url(), 0, SIZE, SIZE)) == DATA


BODY_SHAPES = [
    pytest.param("ok", id="content-length"),
    pytest.param("no_content_length", id="close-delimited"),
    pytest.param("chunked", id="chunked"),
    pytest.param("extra_bytes", id="extra-after-content-length"),
    pytest.param("no_content_length,extra_bytes", id="extra-close-delimited"),
    pytest.param("chunked,extra_bytes", id="extra-after-last-chunk"),
    pytest.param("slow:200000", id="slow-but-steady"),
]


@pytest.mark.parametrize("mode", BODY_SHAPES)
@pytest.mark.parametrize("start, length, total_size", RANGES[:5])
def test_http_yields_exactly_length_bytes(
    make_backends: Callable[..., Backends], server: FaultServer, mode: str, start: int, length: int, total_size: int | None
) -> None:
    backends = make_backends(pool_maxsize=1, connect_timeout=0.5)
    server.mode = mode
    received = read_all(backends.open(server.url(), start, length, total_size))
    assert received == DATA[start : start + length]
    assert EXTRA not in received
    # Whatever the body shape, the connection is usable or replaced.
    server.mode = "ok"
    assert read_all(backends.open(server.url(), 0, SIZE, SIZE)) == DATA


@pytest.mark.parametrize("start", [pytest.param(0, id="whole"), pytest.param(100, id="ranged")])
def test_content_coded_bodies_are_refused_before_the_first_byte(
    make_backends: Callable[..., Backends], server: FaultServer, start: int
) -> None:
    """A gzip body is not the image's bytes (and a gzip range is no range of
    it): refused at once, so the download falls back to another copy."""
    backends = make_backends(pool_maxsize=1)
    server.mode = "gzip"
    with pytest.raises(BackendError) as info:
        backends.open(server.url(), start, SIZE - start, SIZE)
    assert info.value.reason == "content-coded body (gzip) not accepted"
    server.mode = "ok"  # the pool slot came back
    assert read_all(backends.open(server.url(), 0, SIZE, SIZE)) == DATA


def test_a_backend_dripping_its_headers_is_cut_at_the_first_byte_bound(
    make_backends: Callable[..., Backends], server: FaultServer
) -> None:
    """A byte every 0.5 s never trips the 1 s read timeout; the first-byte
    bound (1.5 s here) ends it."""
    backends = make_backends(pool_maxsize=1, first_byte_timeout=1.5)
    server.mode = "drip_headers"
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        backends.open(server.url(), 0, SIZE, SIZE)
    elapsed = time.monotonic() - started
    assert info.value.reason == "no response within 1.5 s"
    assert 1.4 < elapsed < 3.0, elapsed
    server.mode = "ok"  # the pool slot came back
    assert read_all(backends.open(server.url(), 0, SIZE, SIZE)) == DATA


@pytest.mark.parametrize("start", [pytest.param(0, id="whole"), pytest.param(100, id="ranged")])
def test_a_backend_dripping_its_body_is_cut_at_the_minimum_rate(
    make_backends: Callable[..., Backends], server: FaultServer, start: int
) -> None:
    """After 2500 good bytes, one byte every 0.5 s: below 1000 B/s over a
    1 s window, so the read of the next chunk is cut after about a second."""
    backends = make_backends(pool_maxsize=1, min_rate=1000, rate_window=1.0)
    server.mode = "drip_after:2500"
    started = time.monotonic()
    received, error = read_until_error(backends.open(server.url(), start, SIZE - start, SIZE))
    elapsed = time.monotonic() - started
    assert received == DATA[start : start + len(received)] and 2000 <= len(received) <= 2500
    assert error.reason == f"slower than 1000 B/s over 1 s at byte {start + len(received)}"
    assert elapsed < 3.0, elapsed
    server.mode = "ok"  # the pool slot came back
    assert read_all(backends.open(server.url(), 0, SIZE, SIZE)) == DATA


def test_a_slow_but_steady_backend_is_not_cut(make_backends: Callable[..., Backends], server: FaultServer) -> None:
    backends = make_backends(pool_maxsize=1, min_rate=1000, rate_window=1.0, first_byte_timeout=1.0)
    server.mode = "slow:20000"  # 1000-byte chunks in 50 ms each
    assert read_all(backends.open(server.url(), 0, SIZE, SIZE)) == DATA


def test_corruption_passes_through(backends: Backends, server: FaultServer) -> None:
    # Backends do not verify checksums (the download handler does): the
    # bytes are whatever the backend sent, exactly length of them.
    server.mode = "corrupt_byte:1500"
    received = read_all(backends.open(server.url(), 1000, 1000, SIZE))
    assert len(received) == 1000
    assert [i for i in range(1000) if received[i] != DATA[1000 + i]] == [500]


def test_connection_refused(backends: Backends) -> None:
    with RefusingPort() as refusing:
        with pytest.raises(BackendError) as info:
            backends.open(refusing.url(), 0, SIZE, SIZE)
    assert info.value.reason == "connection refused"
    assert info.value.label == f"http://127.0.0.1:{refusing.port}"


def test_connect_timeout(make_backends: Callable[..., Backends]) -> None:
    backends = make_backends(connect_timeout=0.3)
    with StalledListener() as stalled:
        if not stalled.works:
            pytest.skip("this platform accepts connections beyond the listen backlog")
        started = time.monotonic()
        with pytest.raises(BackendError) as info:
            backends.open(stalled.url(), 0, SIZE, SIZE)
        assert time.monotonic() - started < 2
    assert info.value.reason == "connect timeout"


# -- pool slots ------------------------------------------------------------------


def _full(stream: BackendStream) -> None:
    assert b"".join(stream) == DATA


def _partial(stream: BackendStream) -> None:
    assert next(iter(stream)) == DATA[:CHUNK]


def _unread(stream: BackendStream) -> None:
    pass


@pytest.mark.parametrize(
    "consume, mode, reused",
    [
        pytest.param(_full, "ok", True, id="full-read-keeps-alive"),
        pytest.param(_partial, "ok", False, id="partial-read"),
        pytest.param(_unread, "ok", False, id="never-read"),
        pytest.param(_partial, "slow:8000", False, id="partial-read-slow-body"),
        pytest.param(_full, "chunked", False, id="full-read-chunked"),
        pytest.param(_full, "no_content_length", False, id="full-read-close-delimited"),
    ],
)
def test_close_gives_the_pool_slot_back(
    make_backends: Callable[..., Backends], server: FaultServer, consume: Callable, mode: str, reused: bool
) -> None:
    # pool_maxsize=1, block=True: a slot not given back makes the next open
    # wait pool_timeout (= connect_timeout) and fail "connection pool exhausted".
    backends = make_backends(pool_maxsize=1, connect_timeout=0.5)
    server.mode = mode
    for _ in range(5):
        stream = backends.open(server.url(), 0, SIZE, SIZE)
        consume(stream)
        started = time.monotonic()
        stream.close()
        stream.close()
        # Closed, never drained (the slow body would take over a second).
        assert time.monotonic() - started < 0.5
    assert server.request_count == 5
    # Fully read Content-Length bodies reuse one connection; anything else is closed.
    assert server.connection_count == (1 if reused else 5)


def test_a_leaked_stream_exhausts_the_pool_quickly(make_backends: Callable[..., Backends], server: FaultServer) -> None:
    backends = make_backends(pool_maxsize=1, connect_timeout=0.3)
    leaked = backends.open(server.url(), 0, SIZE, SIZE)
    try:
        started = time.monotonic()
        with pytest.raises(BackendError, match="connection pool exhausted"):
            backends.open(server.url(), 0, SIZE, SIZE)
        assert time.monotonic() - started < 2
    finally:
        leaked.close()
    assert read_all(backends.open(server.url(), 0, SIZE, SIZE)) == DATA


# -- construction and errors -------------------------------------------------------


def test_from_settings(tree: dict, server: FaultServer) -> None:
    settings = load_filter_settings({}, {
        "file_roots": str(tree["root"]),
        "allowed_hosts": "127.0.0.1",
        "chunk_size": 4096,
        "backend_connect_timeout": 0.5,
        "backend_read_timeout": 0.5,
        "backend_pool_maxsize": 1,
    })
    backends = Backends.from_settings(settings)
    try:
        assert backends.readers["file"].chunk_size == backends.readers["http"].chunk_size == 4096
        assert backends.readers["file"].roots.roots == (str(tree["root"]),)
        assert read_all(backends.open(server.url(), 0, SIZE, SIZE)) == DATA
        with backends.open(f"file://{tree['root']}/img", 0, SIZE, SIZE) as stream:
            assert [len(chunk) for chunk in stream][:2] == [4096, 4096]
    finally:
        backends.clear()


@pytest.mark.parametrize(
    "start, length, total_size",
    [
        pytest.param(-1, 10, SIZE, id="negative-start"),
        pytest.param(0, 0, SIZE, id="empty"),
        pytest.param(SIZE - 5, 10, SIZE, id="past-the-end"),
    ],
)
def test_bad_ranges_are_caller_errors(backends: Backends, tree: dict, start: int, length: int, total_size: int) -> None:
    with pytest.raises(ValueError, match="bad range"):
        backends.open(f"file://{tree['root']}/img", start, length, total_size)


def test_backend_error_is_plain_data() -> None:
    error = BackendError("http://10.0.0.1:8080", "HTTP 503")
    assert str(error) == "http://10.0.0.1:8080: HTTP 503"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.label, copy.reason) == (error.label, error.reason)


# -- TLS ------------------------------------------------------------------------

@pytest.fixture
def https_backend(tmp_path):
    """A loopback https server with a self-signed certificate for 127.0.0.1."""
    import functools
    import http.server
    import ssl
    import subprocess
    import threading

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    root = tmp_path / "www"
    root.mkdir()
    (root / "img").write_bytes(b"tls image bytes" * 1000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/img", str(cert), b"tls image bytes" * 1000
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_https_backend_is_verified_against_the_configured_ca(https_backend):
    url, ca_file, data = https_backend
    common = dict(allowed_hosts="127.0.0.1", chunk_size=4096, connect_timeout=5, read_timeout=5, pool_maxsize=2)
    untrusted = configure(**common)
    try:
        with pytest.raises(BackendError, match="TLS error"):
            untrusted.open(url, 0, len(data), len(data))
    finally:
        untrusted.clear()
    trusted = configure(**common, ca_file=ca_file)
    try:
        stream = trusted.open(url, 0, len(data), len(data))
        with stream:
            assert b"".join(stream) == data
    finally:
        trusted.clear()
