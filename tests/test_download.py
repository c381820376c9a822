"""``/v2/images/{id}/file`` served by locproxy: real gunicorn sidecar, real
loopback backends (file roots, fault-injecting http servers), the demo image
API as upstream.

Every test adds its own image (its own locations) to one shared upstream and
downloads it through one shared sidecar, so the module costs one gunicorn
start.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from webtest import TestApp

from locproxy import observability, services
from locproxy.config import load_filter_settings
from locproxy.demo import DemoImageAPI, demo_bytes, location, serve_wsgi
from locproxy.middleware import LocationFilter
from locproxy.tracker import Tracker
from tests.support.client import Fetched, fetch
from tests.support.faultserver import FaultServer, RefusingPort
from tests.support.processes import children
from tests.support.servers import run_gunicorn, sidecar_ini

DATA = demo_bytes("download-tests", 3 * 1024 * 1024 + 17)  # not a multiple of any chunk size
SHA512 = hashlib.sha512(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()
CHUNK = 64 * 1024
CREDENTIALS = "vault-user:Sup3rSecretKey"




class World:
    """The shared upstream, backends and sidecar."""

    def __init__(self, root_a: Path, root_b: Path, api: DemoImageAPI, web: FaultServer, web2: FaultServer,
                 refusing: RefusingPort, sidecar: Any, upstream_url: str) -> None:
        self.root_a, self.root_b, self.api = root_a, root_b, api
        self.web, self.web2, self.refusing = web, web2, refusing
        self.sidecar, self.upstream_url = sidecar, upstream_url

    def file_location(self, root: Path, name: str | None = None, data: bytes = DATA, store: str = "disk") -> dict:
        path = root / (name or str(uuid.uuid4()))
        path.write_bytes(data)
        return location(f"file://{path}", store)

    def missing_file(self) -> dict:
        return location(f"file://{self.root_a}/{uuid.uuid4()}-missing", "disk")

    def add_image(self, *locations: dict, data: bytes = DATA, **attributes: Any) -> str:
        return self.api.add_image(data=data, locations=locations, **attributes)

    def worker_pid(self) -> int:
        workers = children(self.sidecar.pid)
        assert len(workers) == 1, workers
        return workers[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("download")
    root_a, root_b = base / "root-a", base / "root-b"
    root_a.mkdir()
    root_b.mkdir()
    with FaultServer(DATA) as web, FaultServer(DATA) as web2, RefusingPort() as refusing:
        # The upstream itself reads only `web`: where `web2` breaks, the
        # upstream's own /file still has a good copy to resume from.
        api = DemoImageAPI(file_roots=(str(root_a), str(root_b)), http_prefixes=(web.url("/"),))
        with serve_wsgi(api) as upstream:
            ini = sidecar_ini(base / "sidecar.ini", upstream.url, {
                "location_strategy": "location_order",
                "file_roots": f"{root_a}, {root_b}",
                "allowed_hosts": "127.0.0.1",
                "chunk_size": CHUNK,
                "backend_connect_timeout": 1,
                "backend_read_timeout": 1,
                # Tests share backends whose faults they switch: no demotion across tests.
                "cooldown": 0.01,
                "max_cooldown": 0.01,
            }, {"read_timeout": 10})
            with run_gunicorn(ini, threads=16) as sidecar:
                yield World(root_a, root_b, api, web, web2, refusing, sidecar, upstream.url)


@pytest.fixture(autouse=True)
def healthy_backends(world: World):
    world.web.mode = "ok"
    world.web2.mode = "ok"
    time.sleep(0.02)  # let any demotion by the previous test (cooldown 0.01 s) end
    yield


def download(world: World, image_id: str, **kwargs: Any) -> Fetched:
    return fetch(world.sidecar.port, f"/v2/images/{image_id}/file", **kwargs)


def log_since(world: World, mark: int) -> str:
    return world.sidecar.log()[mark:]


# -- the response contract ---------------------------------------------------

def test_download_from_the_first_location(world: World):
    image_id = world.add_image(world.file_location(world.root_a), location(world.web.url(), "web"))
    before_web, before_upstream = world.web.request_count, world.api.calls["GET file"]
    result = download(world, image_id)
    assert (result.status, result.complete) == (200, True)
    assert hashlib.sha512(result.body).hexdigest() == SHA512
    assert result.headers["content-length"] == str(len(DATA))
    assert result.headers["content-type"] == "application/octet-stream"
    assert result.headers["content-md5"] == MD5
    assert world.web.request_count == before_web, "the http copy was not touched"
    assert world.api.calls["GET file"] == before_upstream, "the upstream's /file was not used"


def test_strategy_order_and_prefer_choose_the_backend(world: World):
    image_id = world.add_image(
        location(world.web.url(), "web"), world.file_location(world.root_a, store="disk"),
        location(world.web2.url(), "web2"),
    )
    before = world.web.request_count, world.web2.request_count
    assert download(world, image_id).body == DATA
    assert (world.web.request_count, world.web2.request_count) == (before[0] + 1, before[1])
    result = fetch(world.sidecar.port, f"/v2/images/{image_id}/file?prefer=web2")
    assert result.body == DATA
    assert (world.web.request_count, world.web2.request_count) == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize(
    "header, status, span",
    [
        pytest.param("bytes=0-99", 206, (0, 100), id="first-100"),
        pytest.param("bytes=-100", 206, (len(DATA) - 100, len(DATA)), id="suffix"),
        pytest.param("bytes=100-", 206, (100, len(DATA)), id="open-ended"),
        pytest.param(f"bytes=5-{len(DATA) + 50}", 206, (5, len(DATA)), id="end-clamped"),
        pytest.param(f"bytes={len(DATA)}-", 416, None, id="beyond-end"),
        pytest.param("bytes=0-1,5-6", 400, None, id="multiple-as-glance"),
        pytest.param("lines=1-2", 416, None, id="other-unit"),
    ],
)
@pytest.mark.parametrize("backend", ["file", "http"])
def test_ranges(world: World, backend: str, header: str, status: int, span: tuple[int, int] | None):
    first = world.file_location(world.root_a) if backend == "file" else location(world.web.url(), "web")
    image_id = world.add_image(first)
    result = download(world, image_id, headers={"Range": header})
    assert result.status == status
    if span:
        start, end = span
        assert result.body == DATA[start:end]
        assert result.headers["content-range"] == f"bytes {start}-{end - 1}/{len(DATA)}"
        assert result.headers["content-length"] == str(end - start)
    else:
        assert result.headers.get("content-range") == (f"bytes */{len(DATA)}" if status == 416 else None)
        assert result.json()["error"]["code"] == status


def test_head_sends_headers_only_and_reads_no_backend(world: World):
    image_id = world.add_image(location(world.web.url(), "web"))
    before = world.web.request_count
    result = download(world, image_id, method="HEAD")
    assert (result.status, result.body) == (200, b"")
    assert result.headers["content-length"] == str(len(DATA))
    assert world.web.request_count == before


def test_image_without_data_is_the_upstreams_204(world: World):
    image_id = world.api.add_image(name="empty")
    result = download(world, image_id)
    assert (result.status, result.body) == (204, b"")


def test_deactivated_image_is_refused_for_non_admin(world: World):
    image_id = world.add_image(location(world.web.url(), "web"))
    world.api.set_status(image_id, "deactivated")
    before = world.api.calls["GET file"]
    assert download(world, image_id).status == 403
    admin = download(world, image_id, headers={"X-Roles": "admin"})
    assert (admin.status, admin.body) == (200, DATA), "the upstream decides, and serves admins"
    assert world.api.calls["GET file"] == before + 2, "both went to the upstream's own /file"


# -- authorisation -----------------------------------------------------------

@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="anonymous"),
        pytest.param({"X-Project-Id": "someone-else"}, id="other-project"),
        pytest.param({"X-Project-Id": "someone-else", "X-Roles": "member"}, id="other-project-member"),
    ],
)
def test_no_bytes_without_the_upstreams_consent(world: World, headers: dict[str, str]):
    image_id = world.add_image(location(world.web.url(), "web"), visibility="private", owner="owner-project")
    before = world.web.request_count
    result = download(world, image_id, headers=headers)
    assert result.status == 404, "the upstream's own answer"
    assert DATA[:64] not in result.body
    assert world.web.request_count == before
    owner = download(world, image_id, headers={"X-Project-Id": "owner-project"})
    assert owner.body == DATA and world.web.request_count == before + 1


def test_client_credentials_never_reach_backends(world: World):
    image_id = world.add_image(location(world.web.url(), "web"))
    download(world, image_id, headers={"X-Auth-Token": "client-token", "Authorization": "Bearer client",
                                       "Cookie": "session=client"})
    received = world.web.requests[-1].headers
    assert not {"x-auth-token", "cookie"} & set(received)
    assert received.get("authorization") is None


def test_unknown_image_is_the_upstreams_404(world: World):
    result = download(world, str(uuid.uuid4()))
    assert result.status == 404


# -- fallback, resume, integrity ----------------------------------------------

@pytest.mark.parametrize(
    "broken",
    [
        pytest.param("missing-file", id="missing-file"),
        pytest.param("status:500", id="http-500"),
        pytest.param("status:404", id="http-404"),
        pytest.param("refused", id="refused"),
        pytest.param("hang_headers", id="hang-before-headers"),
        pytest.param("ignore_range", id="ignores-range"),
        pytest.param("outside-roots", id="file-outside-roots"),
    ],
)
def test_fallback_before_the_first_byte(world: World, broken: str):
    if broken == "missing-file":
        first = world.missing_file()
    elif broken == "refused":
        first = location(world.refusing.url("/x").replace("http://", f"http://{CREDENTIALS}@"), "dead")
    elif broken == "outside-roots":
        first = location("file:///etc/passwd", "disk")
    else:
        world.web2.mode = broken
        first = location(world.web2.url().replace("http://", f"http://{CREDENTIALS}@"), "web2")
    image_id = world.add_image(first, location(world.web.url(), "web"))
    mark = len(world.sidecar.log())
    # Past the first block: a checked range is read from its block's start, which here needs a Range.
    range_header = {"Range": "bytes=1048586-"} if broken == "ignore_range" else {}
    result = download(world, image_id, headers=range_header)
    assert result.complete
    assert result.body == (DATA[1048586:] if range_header else DATA)
    log = log_since(world, mark)
    if broken != "outside-roots":  # not a readable location at all: skipped silently
        assert re.search(r"WARNING locproxy\.download: image \S+: backend \S+ failed before the first byte", log), log
    assert "Sup3rSecretKey" not in log and "vault-user" not in log


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("truncate_after:1000000", id="closes-early"),
        pytest.param("reset_after:1500000", id="connection-reset"),
        pytest.param("hang_after:700000", id="stalls-mid-body"),
    ],
)
def test_mid_stream_failure_resumes_from_the_next_location(world: World, fault: str):
    world.web.mode = fault
    image_id = world.add_image(location(world.web.url(), "web"), world.file_location(world.root_b))
    mark = len(world.sidecar.log())
    result = download(world, image_id)
    assert result.complete and len(result.body) == len(DATA)
    assert hashlib.sha512(result.body).hexdigest() == SHA512, "one unbroken, correct body"
    assert re.search(r"backend http://127\.0\.0\.1:\d+ failed at byte \d+: .*; trying the next location", log_since(world, mark))


def test_resume_in_a_range_request(world: World):
    world.web.mode = "truncate_after:50000"
    image_id = world.add_image(location(world.web.url(), "web"), location(world.web2.url(), "web2"))
    result = download(world, image_id, headers={"Range": "bytes=1000-299999"})
    assert (result.status, result.complete) == (206, True)
    assert result.body == DATA[1000:300000]


def test_resume_falls_back_to_the_upstreams_file(world: World):
    world.web2.mode = "truncate_after:200000"
    image_id = world.add_image(location(world.web2.url(), "web2"), location("rbd://fsid/pool/img/snap", "ceph"))
    before = world.api.calls["GET file"]
    mark = len(world.sidecar.log())
    result = download(world, image_id)
    assert result.complete and result.body == DATA, log_since(world, mark)
    assert world.api.calls["GET file"] == before + 1, "the rest came from the upstream's /file"


def test_no_readable_location_streams_the_upstreams_file(world: World):
    image_id = world.add_image(world.missing_file(), location("rbd://fsid/pool/img/snap", "ceph"),
                               location(f"swift+https://{CREDENTIALS}@swift.example/v1/c/o", "swift"))
    before = world.api.calls["GET file"]
    result = download(world, image_id, headers={"Range": "bytes=-10"})
    assert (result.status, result.body) == (206, DATA[-10:])
    assert world.api.calls["GET file"] == before + 1


CORRUPT_BYTES = ["corrupt_byte:2500000", "corrupt_byte:0", f"corrupt_byte:{len(DATA) - 1}"]


@pytest.mark.parametrize("fault", CORRUPT_BYTES)
def test_a_corrupt_first_read_is_aborted_never_completed(world: World, fault: str):
    """No fingerprint yet (an image never read here): the digest judges the
    whole body; the last block waits for it, so a bad body is cut short."""
    data = demo_bytes(f"first-read-{fault}", len(DATA))
    with FaultServer(data) as web:
        web.mode = fault
        image_id = world.add_image(location(web.url(), "web"), world.file_location(world.root_a, data=data),
                                   data=data)
        mark = len(world.sidecar.log())
        result = download(world, image_id)
    assert result.status == 200
    assert not result.complete, "the client must see a broken transfer, not a finished bad body"
    assert len(result.body) < len(data)
    assert re.search(r"ERROR locproxy\.download: image \S+: sha512 digest mismatch from http://127\.0\.0\.1:\d+; "
                     r"aborting the download", log_since(world, mark))


@pytest.mark.parametrize("fault", CORRUPT_BYTES)
def test_a_corrupt_block_of_a_fingerprinted_image_is_never_sent(world: World, fault: str):
    """Once the image's fingerprint is known, the bad block is caught before
    it is sent and the body goes on, unbroken, from the next copy."""
    warm = world.add_image(world.file_location(world.root_a))
    assert download(world, warm).body == DATA  # fingerprints DATA
    world.web.mode = fault
    image_id = world.add_image(location(world.web.url(), "web"), world.file_location(world.root_a))
    mark = len(world.sidecar.log())
    result = download(world, image_id)
    assert (result.status, result.complete) == (200, True)
    assert result.body == DATA, "exact bytes, the bad block from the next copy"
    bad_block = int(fault.split(":")[1]) // (1 << 20)
    sent = rf"image {image_id}: bytes 0-{len(DATA) - 1} sent from"
    log = world.sidecar.log_after(sent, count=1)[mark:]
    assert re.search(rf"ERROR locproxy\.download: image {image_id}: block {bad_block} from http://127\.0\.0\.1:\d+ "
                     r"does not match the image's fingerprint; not sent", log), log
    assert re.search(r"sent from http://127\.0\.0\.1:\d+, file \(every block checked", log), log


@pytest.mark.parametrize("known", [False, True], ids=["first-read", "read-before"])
def test_a_swapped_copy_taking_over_mid_stream_never_completes_a_wrong_body(world: World, known: bool):
    """The first copy is cut after 2 MiB; the next one holds other bytes of
    the same size (swapped behind its URL). Its bytes are never trusted for
    what it is called: a first read hashes the whole body it sent and aborts
    it, without a word of "verified"; once the fingerprint is known, the
    swapped copy's first block is refused before it is sent and the body is
    completed, exact, from the third copy."""
    data = demo_bytes(f"takeover-{known}", len(DATA))
    swapped = demo_bytes(f"swapped-{known}", len(data))
    with FaultServer(data) as first, FaultServer(swapped) as other:
        if known:  # another image of the same bytes records their fingerprint
            warm = world.add_image(world.file_location(world.root_a, data=data), data=data)
            assert download(world, warm).body == data
        good = world.file_location(world.root_a, data=data)
        image_id = world.add_image(location(first.url(), "web"), location(other.url(), "web"), good, data=data)
        first.mode = "truncate_after:2097152"
        mark = len(world.sidecar.log())
        result = download(world, image_id)
        log = world.sidecar.log_after(r"image \S+: (bytes 0-|sha512 digest mismatch)", count=1)[mark:]
    if known:
        assert (result.status, result.complete, result.body == data) == (200, True, True), log
        assert re.search(rf"ERROR locproxy\.download: image {image_id}: block 2 from http://127\.0\.0\.1:{other.port} "
                         r"does not match the image's fingerprint; not sent", log), log
    else:
        assert result.status == 200 and not result.complete and result.body != data
        assert re.search(rf"ERROR locproxy\.download: image {image_id}: sha512 digest mismatch", log), log
        assert "verified" not in log, log


@pytest.mark.parametrize("then", ["next-copy", "upstream"])
def test_a_small_corrupt_copy_falls_through_every_time(world: World, then: str):
    """An image under one block: the mismatch is known before any byte is
    sent, so the download goes on from the next copy, or from the
    upstream's own /file when the corrupt copy is the only one locproxy may
    read; six times running, never an aborted or an HTML body."""
    data = demo_bytes(f"small-{then}", 100_000)
    with FaultServer(data, mode="corrupt_byte:5000") as corrupt:
        # With no other copy, the upstream's /file has the right bytes (the demo API keeps them).
        good = [world.file_location(world.root_a, data=data)] if then == "next-copy" else []
        image_id = world.add_image(location(corrupt.url(), "web"), *good, data=data)
        mark = len(world.sidecar.log())
        results = [download(world, image_id) for _ in range(6)]
        log = world.sidecar.log()[mark:]
    assert [(r.status, r.complete, r.body == data) for r in results] == [(200, True, True)] * 6, log
    assert all("html" not in r.headers.get("content-type", "") for r in results)
    assert re.search(rf"ERROR locproxy\.download: image {image_id}: sha512 digest mismatch from "
                     rf"http://127\.0\.0\.1:{corrupt.port}", log), log


def test_corrupt_range_is_not_checked_but_size_is(world: World):
    """A Range cannot be hashed end to end; it is served at the exact size."""
    world.web.mode = "bad_content_length"
    image_id = world.add_image(location(world.web.url(), "web"), world.file_location(world.root_a))
    result = download(world, image_id, headers={"Range": "bytes=0-999"})
    assert (result.status, result.body) == (206, DATA[:1000])


def test_short_file_is_not_served(world: World):
    short = world.file_location(world.root_a, data=DATA[:-1])
    image_id = world.add_image(short, location(world.web.url(), "web"))
    result = download(world, image_id)
    assert result.complete and result.body == DATA


def test_verified_file_is_served_again_correctly(world: World):
    """The second download of a verified file takes the sendfile path."""
    image_id = world.add_image(world.file_location(world.root_a))
    for _ in range(3):
        result = download(world, image_id)
        assert result.complete and result.body == DATA


# -- concurrency and resources -----------------------------------------------

def open_fds(pid: int) -> tuple[int, int]:
    """(regular files, sockets) the process holds open."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed meanwhile
            pass
    return sum(target.startswith("/") for target in targets), sum(target.startswith("socket:") for target in targets)


def test_concurrent_downloads_and_no_leaked_descriptors(world: World):
    images = [
        world.add_image(world.file_location(world.root_a), location(world.web.url(), "web")),
        world.add_image(location(world.web.url(), "web"), world.file_location(world.root_b)),
        world.add_image(world.missing_file(), location(world.web2.url(), "web2")),
    ]
    worker = world.worker_pid()
    files_before, sockets_before = open_fds(worker)

    def burst() -> tuple[int, int]:
        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(lambda n: download(world, images[n % 3]), range(36)))
        assert all(result.complete and result.body == DATA for result in results)
        return open_fds(worker)

    for _ in range(3):
        files, sockets = burst()
        # Every image file is closed after its download; sockets stay pooled,
        # at most one per concurrent request per host (two backends, the upstream).
        assert files == files_before
        assert sockets <= sockets_before + 3 * 12


def test_client_disconnect_releases_backend(world: World):
    world.web.mode = "slow:2000000"
    image_id = world.add_image(location(world.web.url(), "web"))
    connection = http.client.HTTPConnection("127.0.0.1", world.sidecar.port, timeout=10)
    connection.request("GET", f"/v2/images/{image_id}/file")
    response = connection.getresponse()
    assert response.read(1000)
    before = world.web.connection_count
    connection.close()
    world.web.mode = "ok"
    # The sidecar still serves every download afterwards (no stuck pool slot).
    results = [download(world, image_id) for _ in range(4)]
    assert all(result.body == DATA for result in results)
    assert world.web.connection_count >= before


# -- inside a pipeline (the filter in front of the image API app itself) -------

def test_filter_in_pipeline_serves_and_falls_back(tmp_path: Path):
    root = tmp_path / "store"
    root.mkdir()
    (root / "img").write_bytes(DATA)
    api = DemoImageAPI(file_roots=(str(root),))
    settings = load_filter_settings({}, {"file_roots": str(root)})
    app = TestApp(LocationFilter(api, settings), lint=True)
    served = api.add_image(data=DATA, locations=[location(f"file://{root}/img", "disk")])
    unreadable = api.add_image(data=DATA, locations=[location("rbd://a/b/c/d", "ceph")])
    before = api.calls["GET file"]
    assert app.get(f"/v2/images/{served}/file").body == DATA
    assert api.calls["GET file"] == before
    assert app.get(f"/v2/images/{unreadable}/file").body == DATA
    assert api.calls["GET file"] == before + 1
    assert app.get(f"/v2/images/{served}/file", headers={"Range": "bytes=-5"}, status=206).body == DATA[-5:]


class BrokenTracker(Tracker):
    """Every bookkeeping call fails, as a bug or a broken store would."""

    def _update(self, key: str, apply: Any) -> Any:
        raise RuntimeError("bookkeeping is broken")


def test_broken_bookkeeping_never_fails_a_download(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(observability, "_recorder_logged_at", float("-inf"))  # not logged by an earlier test
    root = tmp_path / "store"
    root.mkdir()
    (root / "img").write_bytes(DATA)
    api = DemoImageAPI()
    monkeypatch.setattr(services, "Tracker", lambda *args, **kwargs: BrokenTracker())
    app = TestApp(LocationFilter(api, load_filter_settings({}, {"file_roots": str(root)})), lint=True)
    image_id = api.add_image(data=DATA, locations=[location(f"file://{root}/missing", "disk"),
                                                   location(f"file://{root}/img", "disk")])
    with caplog.at_level(logging.WARNING, logger="locproxy.observability"):
        for _ in range(3):
            assert app.get(f"/v2/images/{image_id}/file").body == DATA
    warnings = [record for record in caplog.records if "bookkeeping failed" in record.getMessage()]
    assert len(warnings) == 1, "logged once, not per event"


@pytest.mark.parametrize(
    "mode, allow, expected",
    [
        pytest.param("show", False, "served", id="show-decides-by-default"),
        pytest.param("file", False, "refused", id="file-policy-respected"),
        pytest.param("file", True, "served", id="file-policy-allows"),
    ],
)
def test_download_authorization(tmp_path: Path, mode: str, allow: bool, expected: str):
    """An upstream that shows the image but refuses its /file (Glance's
    download_image policy stricter than get_image): with
    download_authorization = file its refusal is the answer, no backend read."""
    root = tmp_path / "store"
    root.mkdir()
    (root / "img").write_bytes(DATA)
    api = DemoImageAPI(file_roots=(str(root),))
    image_id = api.add_image(data=DATA, locations=[location(f"file://{root}/img", "disk")])
    file_requests = []

    def download_policy(environ, start_response):
        if environ["PATH_INFO"].endswith("/file"):
            file_requests.append(environ.get("HTTP_RANGE"))
        if environ["PATH_INFO"].endswith("/file") and not allow:
            start_response("403 Forbidden", [("Content-Type", "application/json")])
            return [b'{"message": "download_image is not allowed"}']
        return api(environ, start_response)

    settings = load_filter_settings({}, {"file_roots": str(root), "download_authorization": mode})
    app = TestApp(LocationFilter(download_policy, settings), lint=True)
    result = app.get(f"/v2/images/{image_id}/file", status="*")
    if expected == "served":
        assert (result.status_int, result.body) == (200, DATA)
        assert file_requests == ([] if mode == "show" else ["bytes=0-0"]), "then served from the backend"
    else:
        assert (result.status_int, result.json) == (403, {"message": "download_image is not allowed"})
        assert file_requests == ["bytes=0-0"], "the upstream was asked for one byte, as the client"
