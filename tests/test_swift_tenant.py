"""Multi-tenant swift copies read with the client's own token
(``locproxy.download.backends.swift_tenant``): where a token may go, what
is refused without I/O, a refusal that never touches the health records,
and the token never logged. A real socket plays Swift (range GETs, the
token checked as radosgw does: 403 for another account's token)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import logging
import re
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
from webob import Request, Response
from webtest import TestApp

from locproxy.config import configured_backends, load_filter_settings
from locproxy.download.backends import NOBODY, BackendError, BackendStream, Caller
from locproxy.download.backends.swift_tenant import as_caller
from locproxy.download.plan import Candidate
from locproxy.download.probing import Prober
from locproxy.failures import Failure
from locproxy.middleware import LocationFilter
from locproxy.observability import Recorder
from locproxy.options import ConfigError
from locproxy.tracker import Tracker
from tests.support.download_fakes import Copy, MemoryBackends, plan, sources
from tests.support.upstreams import IMAGE_ID, Upstream, json_response

DATA = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4
OWNER, STRANGER = "gAAAAAB-owner-token", "gAAAAAB-stranger-token"
ACCOUNT = "/swift/v1/AUTH_owner"
OBJECT = f"{ACCOUNT}/glance_{IMAGE_ID}/{IMAGE_ID}"


class FakeSwift(http.server.ThreadingHTTPServer):
    """GET/HEAD of one object: the owner's token reads it (Range honoured),
    any other token gets 403, none 401; every request's token recorded."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SwiftHandler)
        self.tokens: list[str | None] = []

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def url(self, scheme: str = "swift+http") -> str:
        return f"{scheme}://{self.host}{OBJECT}"


class _SwiftHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeSwift

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        token = self.headers.get("X-Auth-Token")
        self.server.tokens.append(token)
        status, body, extra = 200, DATA, {}
        if token != OWNER:
            status, body = (403 if token else 401), b"AccessDenied"
        elif self.path != OBJECT:
            status, body = 404, b"NoSuchKey"
        elif match := re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", "")):
            first, last = int(match.group(1)), min(int(match.group(2)), len(DATA) - 1)
            status, body = 206, DATA[first:last + 1]
            extra["Content-Range"] = f"bytes {first}-{last}/{len(DATA)}"
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), "Accept-Ranges": "bytes", **extra}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@contextlib.contextmanager
def fake_swift() -> Iterator[FakeSwift]:
    server = FakeSwift()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def swift() -> Iterator[FakeSwift]:
    with fake_swift() as server:
        yield server


def tenant_backends(swift: FakeSwift, **options: str):  # noqa: ANN201 - a Backends
    return configured_backends(**{"allowed_hosts": swift.host, "swift_multi_tenant_hosts": swift.host,
                                  "swift_segment_readers": "1", **options})


# -- who the token is, and where it may go (no I/O) ------------------------------


@pytest.mark.parametrize("environ, token", [
    pytest.param({"HTTP_X_AUTH_TOKEN": OWNER}, OWNER, id="token"),
    pytest.param({}, "", id="none"),
    pytest.param({"HTTP_X_AUTH_TOKEN": ""}, "", id="empty"),
    pytest.param({"HTTP_X_AUTH_TOKEN": "a b"}, "", id="space"),
    pytest.param({"HTTP_X_AUTH_TOKEN": "a\r\nX-Evil: 1"}, "", id="crlf"),
    pytest.param({"HTTP_X_AUTH_TOKEN": "x" * 20000}, "", id="huge"),
    pytest.param({"HTTP_X_SERVICE_TOKEN": OWNER}, "", id="service-token-is-not-the-client"),
])
def test_the_caller_is_the_requests_own_token(environ: dict, token: str) -> None:
    caller = Caller.of(environ)
    assert caller.token == token
    assert OWNER not in repr(caller)


@pytest.mark.parametrize("options, caller, readable", [
    pytest.param({}, Caller(OWNER), True, id="both-lists-and-a-token"),
    pytest.param({}, NOBODY, False, id="no-token"),
    pytest.param({"swift_multi_tenant_hosts": None}, Caller(OWNER), False, id="off-by-default"),
    pytest.param({"swift_multi_tenant_hosts": "127.0.0.1:1", "allowed_hosts": "127.0.0.1"}, Caller(OWNER), False,
                 id="allowed-but-not-a-tenant-host"),
])
def test_where_a_clients_token_may_go(swift: FakeSwift, options: dict, caller: Caller, readable: bool) -> None:
    given = {"allowed_hosts": swift.host, "swift_multi_tenant_hosts": swift.host, **options}
    backends = configured_backends(**{name: value for name, value in given.items() if value is not None})
    assert backends.readable(swift.url(), caller) is readable
    if not readable:
        with pytest.raises(BackendError) as caught:
            backends.open(swift.url(), 0, 10, len(DATA), caller)
        assert caught.value.kind in (Failure.NOT_ALLOWED,)
        assert swift.tokens == [], "refused copies are refused before any request"


@pytest.mark.parametrize("options, message", [
    pytest.param({"swift_multi_tenant_hosts": "http://x"}, "swift_multi_tenant_hosts: 'http://x' is not host",
                 id="syntax"),
    pytest.param({"swift_multi_tenant_hosts": "rgw:8080", "allowed_hosts": "rgw:80"},
                 "swift_multi_tenant_hosts: 'rgw:8080' is not in allowed_hosts", id="other-port"),
    pytest.param({"swift_multi_tenant_hosts": "rgw", "allowed_hosts": "rgw:8080"},
                 "swift_multi_tenant_hosts: 'rgw' is not in allowed_hosts", id="any-port-wider"),
    pytest.param({"swift_multi_tenant_hosts": "rgw:8080"}, "'rgw:8080' is not in allowed_hosts", id="none-allowed"),
])
def test_a_bad_tenant_hosts_option_fails_at_load(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        configured_backends(**options)


def test_tenant_hosts_within_allowed_hosts_load() -> None:
    for tenant, allowed in (("rgw:8080", "rgw"), ("rgw:8080", "rgw:8080, web"), ("rgw", "rgw")):
        configured_backends(swift_multi_tenant_hosts=tenant, allowed_hosts=allowed)


# -- reads as the client ------------------------------------------------------------


@pytest.mark.parametrize("start, length", [(0, len(DATA)), (1000, 5000), (len(DATA) - 4, 4)])
def test_the_owners_token_reads_exact_ranges(swift: FakeSwift, start: int, length: int) -> None:
    backends = tenant_backends(swift)
    with backends.open(swift.url(), start, length, len(DATA), Caller(OWNER)) as stream:
        assert b"".join(stream) == DATA[start:start + length]
    assert swift.tokens == [OWNER]


def test_a_segmented_read_sends_the_clients_token_on_every_request(swift: FakeSwift) -> None:
    """With segment readers the object is HEADed first (a plain object
    here): that request carries the client's token too, nothing else."""
    backends = tenant_backends(swift, swift_segment_readers="2", swift_block_size="64K")
    with backends.open(swift.url(), 0, len(DATA), len(DATA), Caller(OWNER)) as stream:
        assert b"".join(stream) == DATA
    assert swift.tokens == [OWNER, OWNER]


@pytest.mark.parametrize("token, status", [(STRANGER, 403)])
def test_a_refused_token_is_the_clients_answer(swift: FakeSwift, caplog: pytest.LogCaptureFixture, token: str,
                                               status: int) -> None:
    backends = tenant_backends(swift)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BackendError) as caught:
        backends.open(swift.url(), 0, 10, len(DATA), Caller(token))
    assert caught.value.kind is Failure.DENIED
    assert caught.value.reason == f"the client's token was refused (HTTP {status})"
    assert swift.tokens == [token], "tried once: a client's token is not renewed"
    assert token not in caplog.text and token not in str(caught.value)


class _Failing(BackendStream):
    """Yields one chunk, then fails as a storage that refused a later request would."""

    def __init__(self, reason: str, kind: Failure) -> None:
        super().__init__("swift+http://s", 0, 20, 10)
        self.reason, self.kind, self.closed = reason, kind, False

    def _chunks(self) -> Iterator[bytes]:
        yield b"x" * 10
        raise BackendError(self.label, self.reason, self.kind)

    def close(self) -> None:
        super().close()
        self.closed = True


@pytest.mark.parametrize("reason, kind, told", [
    pytest.param("HTTP 401 at byte 8192000", Failure.HTTP_STATUS, Failure.DENIED, id="expired-mid-stream"),
    pytest.param("segment listing: HTTP 403", Failure.HTTP_STATUS, Failure.DENIED, id="listing"),
    pytest.param("HTTP 404", Failure.HTTP_STATUS, Failure.HTTP_STATUS, id="missing-is-the-copys"),
    pytest.param("HTTP 500", Failure.HTTP_STATUS, Failure.HTTP_STATUS, id="server-error-is-the-copys"),
    pytest.param("read timeout HTTP 403", Failure.TIMEOUT, Failure.TIMEOUT, id="only-statuses"),
])
def test_refusals_mid_stream_are_told_apart(reason: str, kind: Failure, told: Failure) -> None:
    inner = _Failing(reason, kind)
    stream = as_caller(lambda: inner)
    chunks = iter(stream)
    assert next(chunks) == b"x" * 10 and stream.position == 10
    with pytest.raises(BackendError) as caught:
        next(chunks)
    assert caught.value.kind is told
    stream.close()
    assert inner.closed


# -- the health records ---------------------------------------------------------------


def test_denied_is_never_recorded_but_faults_are() -> None:
    tracker = Tracker()
    recorder = Recorder(tracker)
    for _ in range(10):
        recorder.failed("swift+http://s", "swift+http://s", Failure.DENIED)
    assert "swift+http://s" not in tracker.stats() and not tracker.demoted("swift+http://s")
    for _ in range(3):
        recorder.failed("swift+http://s", "swift+http://s", Failure.HTTP_STATUS)
    assert tracker.demoted("swift+http://s"), "the same failures told as the backend's do demote it"


def test_a_refused_copy_falls_through_without_a_health_record() -> None:
    copies = {"a": Copy(refuse=True, refusal=Failure.DENIED), "b": Copy()}
    download = plan()
    tried = sources(download, MemoryBackends(copies), caller=Caller(OWNER))
    for _ in range(5):
        tried.remaining = list(download.candidates)
        candidate, stream = tried.open_next(0, download.size)
        stream.close()
        assert candidate.label == "b"
    assert tried.recorder.tracker.stats() == {} or all(
        stats.failures == 0 for stats in tried.recorder.tracker.stats().values())
    assert [caller.token for caller in copies["a"].callers] == [OWNER] * 5, "the sources' caller reached open"


def test_the_prober_never_probes_a_copy_only_a_client_reads(swift: FakeSwift) -> None:
    backends = tenant_backends(swift)
    prober = Prober(backends, Recorder(Tracker()), interval=3600, size=10)
    tenant = Candidate(swift.url(), f"swift+http://{swift.host}", "copy", f"swift+http://{swift.host}")
    try:
        prober.note(replace(plan(names=()), candidates=(tenant,)))
        assert prober._known == {}
    finally:
        prober.stop()
    assert swift.tokens == []


# -- through the filter -------------------------------------------------------------


def test_downloads_read_as_each_client(swift: FakeSwift, caplog: pytest.LogCaptureFixture) -> None:
    """The owner's download is read from the multi-tenant copy with the
    owner's token; a stranger the image API lets see the image is refused
    by the storage and gets the upstream's /file, five times over, and the
    copy is never demoted: the owner's next download reads it again."""
    upstream = Upstream()
    image = {"id": IMAGE_ID, "status": "active", "size": len(DATA), "checksum": None,
             "direct_url": swift.url(), "stores": "swiftmt"}
    upstream.route("GET", f"/v2/images/{IMAGE_ID}", lambda req: json_response(image))
    upstream.route("GET", f"/v2/images/{IMAGE_ID}/file",
                   lambda req: Response(body=DATA, content_type="application/octet-stream"))
    settings = load_filter_settings({}, {"allowed_hosts": swift.host, "swift_multi_tenant_hosts": swift.host,
                                         "swift_segment_readers": "1"})
    locproxy = LocationFilter(upstream, settings)
    app = TestApp(locproxy, lint=True)
    caplog.set_level(logging.DEBUG)

    def files() -> int:
        return sum(req.path_info.endswith("/file") for req in upstream.requests)

    assert app.get(f"/v2/images/{IMAGE_ID}/file", headers={"X-Auth-Token": OWNER}).body == DATA
    assert (swift.tokens, files()) == ([OWNER], 0)
    for _ in range(5):
        assert app.get(f"/v2/images/{IMAGE_ID}/file", headers={"X-Auth-Token": STRANGER}).body == DATA
    assert swift.tokens == [OWNER] + [STRANGER] * 5 and files() == 5
    assert not locproxy.services.tracker.demoted(f"swift+http://{swift.host}")
    assert app.get(f"/v2/images/{IMAGE_ID}/file", headers={"X-Auth-Token": OWNER, "Range": "bytes=10-19"},
                   status=206).body == DATA[10:20]
    assert swift.tokens[-1] == OWNER and files() == 5
    assert app.get(f"/v2/images/{IMAGE_ID}/file").body == DATA, "no token: the upstream's, no storage request"
    assert len(swift.tokens) == 7 and files() == 6
    assert "refused the client's own token before the first byte" in caplog.text
    assert OWNER not in caplog.text and STRANGER not in caplog.text


def test_a_cache_fill_reads_with_the_token_of_the_client_it_serves(swift: FakeSwift, tmp_path: Path) -> None:
    """The owner's download fills the site cache, read with the owner's
    token; a later client the image API lets see the image is served from
    the cache without any storage request with its token; a client the
    image API refuses gets its 404 and no byte, the cache holding the image."""
    refused = "gAAAAAB-refused-token"
    upstream = Upstream()
    image = {"id": IMAGE_ID, "status": "active", "size": len(DATA), "os_hash_algo": "sha512",
             "os_hash_value": hashlib.sha512(DATA).hexdigest(), "direct_url": swift.url(), "stores": "swiftmt"}

    def show(req: Request) -> Response:
        return json_response({"message": "not found"}, 404) if req.headers.get("X-Auth-Token") == refused \
            else json_response(image)

    upstream.route("GET", f"/v2/images/{IMAGE_ID}", show)
    upstream.route("GET", f"/v2/images/{IMAGE_ID}/file", lambda req: Response(status=404, body=b"no image"))
    (tmp_path / "cache").mkdir(mode=0o700)
    settings = load_filter_settings({}, {"allowed_hosts": swift.host, "swift_multi_tenant_hosts": swift.host,
                                         "swift_segment_readers": "1", "cache_dir": str(tmp_path / "cache"),
                                         "cache_max_size": "10M"})
    locproxy = LocationFilter(upstream, settings)
    app = TestApp(locproxy, lint=True)
    assert app.get(f"/v2/images/{IMAGE_ID}/file", headers={"X-Auth-Token": OWNER}).body == DATA
    assert swift.tokens == [OWNER], "the fill was read with the owner's token"
    deadline = time.monotonic() + 10
    while not any((tmp_path / "cache" / "entries").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the filler commits just after its last byte
    assert app.get(f"/v2/images/{IMAGE_ID}/file", headers={"X-Auth-Token": STRANGER}).body == DATA
    assert swift.tokens == [OWNER], "a hit asks the storage nothing"
    got = app.get(f"/v2/images/{IMAGE_ID}/file", headers={"X-Auth-Token": refused}, status=404)
    assert DATA[:64] not in got.body and swift.tokens == [OWNER]
