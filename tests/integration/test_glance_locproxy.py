"""locproxy against a real Glance, in both deployments.

Every test runs twice, through the module-scoped ``deployment`` fixture:

* ``pipeline``: locproxy inside Glance's own paste pipeline (right before
  ``rootapp``; Glance restarted with ``locproxy_paste_ini``);
* ``sidecar``: ``gunicorn --paste etc/paste.ini`` (the project's venv) in front
  of the plain Glance, options as ``--paste-global``; clients send the identity
  headers (or the tokenauth token) that Glance trusts.

Evidence of which backend served a download:

* the loopback web server behind the ``web`` store records every request
  (method, path, Range), so a GET of an image's ``.raw`` file is a read of the
  web copy, and its absence proves nobody read it;
* locproxy logs one INFO line per download it served,
  ``image <id>: bytes A-B sent from <backend> (sha512 verified)``, and a
  WARNING per backend that failed; the sidecar's gunicorn log has them, and
  inside Glance they go to Glance's own log (oslo.log, INFO);
* the sidecar also answers ``/metrics`` (``locproxy_downloads_total``);
* where it matters, the file copies of an image are overwritten with other
  bytes of the same size: Glance's own ``/file`` (which never verifies) would
  then send a corrupt body, which python-glanceclient's end-of-download
  checksum check refuses, so a clean download proves the other copy served it.

Glance's own JSON (the order to compare with) is recorded on the plain Glance
when the module's images are built, before locproxy enters Glance's pipeline.

Tests are grouped by locproxy's option set (store_type, weight,
location_order + config_file, README) so each deployment restarts as little as
possible: pytest runs all ``pipeline`` tests, then all ``sidecar`` ones, in
file order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import pytest

from tests.support.client import Fetched, http_request
from tests.support.glance.config import DEFAULT_PIPELINE, locproxy_paste_ini, render_paste_ini
from tests.support.glance.server import GlanceServer
from tests.support.glance.venv import GlanceEnvError
from tests.support.servers import REPO_ROOT, GunicornServer, run_gunicorn

pytestmark = pytest.mark.integration

PASTE_INI = REPO_ROOT / "etc" / "paste.ini"
README = REPO_ROOT / "README.rst"

MEMBER = ("member", "reader")  # not admin: Glance's visibility and deactivation rules apply
LOCATION_FIELDS = ("locations", "direct_url", "stores")
LOG_TIMEOUT = 20.0  # seconds to wait for a log line (the machine may be loaded)
TOGGLE_TIMEOUT = 15.0  # seconds for a config_file edit to show (checked once a second)


# --------------------------------------------------------------- images ---


@dataclass
class Image:
    """An image built for a test: its bytes and its copies' URLs by store."""

    id: str
    data: bytes
    urls: dict[str, str]

    @property
    def web_path(self) -> str:
        return f"/{self.id}.raw"


def make_image(glance: GlanceServer, data: bytes, *, name: str,
               stores: tuple[str, ...] = ("fs1", "fs2", "web"), identity: Mapping[str, str] | None = None,
               **props: Any) -> Image:
    """Upload to ``stores[0]``, copy-image to the other file stores, add the
    web copy (same bytes on the web server) last: Glance lists them in that order."""
    image_id = glance.create_image(data, store=stores[0], identity=identity, name=name, **props)
    urls = {stores[0]: f"file://{glance.store_dirs[stores[0]]}/{image_id}"}
    for store in stores[1:]:
        if store == "web":
            urls["web"] = glance.web.put(f"{image_id}.raw", data)
            glance.add_location(image_id, urls["web"], identity=identity)
        else:
            glance.copy_to_store(image_id, store, identity=identity)
            urls[store] = f"file://{glance.store_dirs[store]}/{image_id}"
    return Image(image_id, data, urls)


def make_web_first(glance: GlanceServer, data: bytes, name: str) -> Image:
    """Web copy first in Glance's own order: a queued image gets its http
    location (the locations API), then copy-image adds fs1 after it. (A
    JSON-patch "add /locations/0" is not kept: Glance lists by insertion.)"""
    created = glance.request("POST", "/v2/images", json_body={
        "name": name, "disk_format": "raw", "container_format": "bare"})
    assert created.status == 201, created.body[:500]
    image_id = created.json()["id"]
    web_url = glance.web.put(f"{image_id}.raw", data)
    glance.add_location_api(image_id, web_url, validation_data={
        "os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest()})
    glance.copy_to_store(image_id, "fs1")
    assert stores_of(glance.get_image(image_id)) == ["web", "fs1"]
    assert (glance.store_dirs["fs1"] / image_id).read_bytes() == data
    return Image(image_id, data, {"web": web_url, "fs1": f"file://{glance.store_dirs['fs1']}/{image_id}"})


def stores_of(image: Mapping[str, Any]) -> list[str]:
    return [location["metadata"]["store"] for location in image["locations"]]


def without_location_fields(image: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in image.items() if key not in LOCATION_FIELDS}


@dataclass
class Refusal:
    """A request Glance refuses, and Glance's own answer to it (recorded on the plain Glance)."""

    image: Image
    path: str
    identity: dict[str, str]
    status: int
    content_type: str | None
    body: bytes


@dataclass
class ModuleImages:
    """Images every test may read (never modified), with Glance's own JSON."""

    name: str
    three: list[Image]  # each fs1 (upload), fs2 (copy-image), web (http location)
    shown: dict[str, dict[str, Any]]  # Glance's own GET /v2/images/{id}
    pages: list[dict[str, Any]]  # Glance's own list pages (?name=...&limit=2)
    web_first: Image  # Glance order [web, fs1]
    web_first_blocks: Image  # the same, three blocks and a part (1 MiB blocks)
    refusals: dict[str, Refusal] = field(default_factory=dict)

    def list_path(self) -> str:
        return f"/v2/images?name={self.name}&limit=2"


@pytest.fixture(scope="module")
def images(glance_server: GlanceServer) -> ModuleImages:
    """Built on the plain Glance (no locproxy in its pipeline), so the JSON
    recorded here is Glance's own."""
    assert "locproxy" not in glance_server.paste_ini_path.read_text(), "Glance must run its default pipeline here"
    glance = glance_server
    name = f"locproxy-it-{uuid.uuid4().hex[:8]}"
    # Over one 1 MiB chunk: verification holds back the last of several chunks.
    three = [make_image(glance, os.urandom(1_500_000 + i), name=name) for i in range(3)]
    shown = {image.id: glance.get_image(image.id) for image in three}
    for image in three:
        assert stores_of(shown[image.id]) == ["fs1", "fs2", "web"], shown[image.id]
        assert shown[image.id]["stores"] == "fs1,fs2,web"
    first = glance.get_json(f"/v2/images?name={name}&limit=2")
    pages = [first, glance.get_json(first["next"])]
    assert [len(page["images"]) for page in pages] == [2, 1] and "next" not in pages[1], pages

    web_first = make_web_first(glance, os.urandom(200_000), "locproxy-it-web-first")
    web_first_blocks = make_web_first(glance, os.urandom(3 * 1024 * 1024 + 777), "locproxy-it-web-first-blocks")

    result = ModuleImages(name, three, shown, pages, web_first, web_first_blocks)

    # Requests Glance refuses; each image has a web copy, so reading it would show.
    other = glance.headers(project="locproxy-other-project", roles=MEMBER)
    private = make_image(glance, os.urandom(50_000), name="locproxy-it-private", stores=("fs1", "web"),
                         identity=other, visibility="private")
    deactivated = make_image(glance, os.urandom(50_000), name="locproxy-it-deactivated", stores=("fs1", "web"))
    glance.deactivate(deactivated.id)
    cases = {
        "other-project-404": (private, glance.headers(roles=MEMBER), 404),
        "deactivated-403": (deactivated, glance.headers(roles=MEMBER), 403),
        "anonymous-401": (three[0], {}, 401),
    }
    for case, (image, identity, status) in cases.items():
        path = f"/v2/images/{image.id}/file"
        own = glance.request("GET", path, identity=identity)
        assert own.status == status, (case, own.status, own.body[:300])
        result.refusals[case] = Refusal(image, path, identity, own.status, own.header("Content-Type"), own.body)
    return result


# ----------------------------------------------------------- deployment ---


def paste_globals(**values: str) -> list[str]:
    return [arg for name, value in values.items() for arg in ("--paste-global", f"{name}={value}")]


class Deployment:
    """locproxy in front of the session's Glance, one way or the other.

    ``configure(options)`` (re)starts what is needed only when the options
    differ from the running ones; ``url`` is where clients talk to locproxy.
    """

    def __init__(self, kind: str, glance: GlanceServer, workdir: Path) -> None:
        self.kind = kind
        self.glance = glance
        self.workdir = workdir
        self.config_file = workdir / "locproxy.ini"
        self.sidecar: GunicornServer | None = None
        self._sidecar_stack: contextlib.ExitStack | None = None
        self._running: Any = None
        self._original_paste = glance.paste_ini_path.read_text()

    # -- lifecycle --

    @property
    def url(self) -> str:
        if self.kind == "pipeline":
            return self.glance.url
        assert self.sidecar is not None, "configure() first"
        return self.sidecar.url

    def configure(self, options: Mapping[str, str], config_text: str | None = None) -> None:
        """Run locproxy with these filter options (and this ``config_file`` text)."""
        key = (tuple(sorted(options.items())), config_text)
        if key == self._running:
            return
        options = dict(options)
        if config_text is not None:
            self.write_config(config_text)
            options["config_file"] = str(self.config_file)
        if self.kind == "pipeline":
            self._restart_glance(locproxy_paste_ini(**options))
        else:
            self._start_sidecar(options)
        self._running = key

    def configure_paste(self, paste_ini: str) -> None:
        """Pipeline only: restart Glance with this paste file."""
        assert self.kind == "pipeline"
        self._restart_glance(paste_ini)
        self._running = ("paste", paste_ini)

    def forget(self) -> None:
        """The running locproxy no longer matches its options (its config_file was edited)."""
        self._running = None

    def write_config(self, text: str) -> None:
        # A new inode each time: the reloader sees the change even within one mtime tick.
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(textwrap.dedent(text))
        os.replace(tmp, self.config_file)

    def _restart_glance(self, paste_ini: str) -> None:
        try:
            self.glance.restart(paste_ini)
        except GlanceEnvError as exc:
            pytest.fail(f"Glance did not start with locproxy in its pipeline: {exc}", pytrace=False)

    def _start_sidecar(self, options: Mapping[str, str]) -> None:
        self._stop_sidecar()
        assert "locproxy" not in self.glance.paste_ini_path.read_text(), "the sidecar's Glance must be plain"
        stack = contextlib.ExitStack()
        try:
            self.sidecar = stack.enter_context(
                run_gunicorn(PASTE_INI, threads=8, extra_args=paste_globals(upstream=self.glance.url, **options))
            )
        except BaseException:
            stack.close()
            raise
        self._sidecar_stack = stack

    def _stop_sidecar(self) -> None:
        stack, self._sidecar_stack, self.sidecar = self._sidecar_stack, None, None
        if stack is not None:
            stack.close()

    def close(self) -> None:
        self._running = None
        if self.kind == "pipeline":
            if self.glance.paste_ini_path.read_text() != self._original_paste:
                self.glance.restart(self._original_paste)
        else:
            self._stop_sidecar()

    def process_ids(self) -> tuple[int, tuple[int, ...]]:
        """gunicorn master and worker pids (a restart changes them)."""
        if self.kind == "pipeline":
            assert self.glance.proc is not None
            master = self.glance.proc.pid
        else:
            assert self.sidecar is not None
            master = self.sidecar.pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return master, tuple(sorted(int(pid) for pid in children))

    # -- requests through locproxy --

    def request(self, method: str, path: str, *, identity: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None, json_body: Any = None,
                body: bytes | None = None) -> Fetched:
        all_headers = dict(self.glance.headers() if identity is None else identity)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        all_headers.update(headers or {})
        return http_request(self.url + path, method, body=body, headers=all_headers)

    def get_json(self, path: str, **kwargs: Any) -> Any:
        resp = self.request("GET", path, **kwargs)
        assert resp.status == 200, (path, resp.status, resp.body[:500])
        return resp.json()

    def patch(self, image_id: str, ops: list[dict[str, Any]]) -> Fetched:
        return self.request("PATCH", f"/v2/images/{image_id}", body=json.dumps(ops).encode(),
                            headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})

    def glance_cli_download(self, image: Image, out: Path) -> None:
        """``glance image-download`` through locproxy; glanceclient verifies the checksum."""
        proc = self.glance.glance_cli("image-download", "--file", str(out), image.id, url=self.url)
        assert proc.returncode == 0, f"glance image-download failed:\n{proc.stderr[-2000:]}\n{self.log_tail()}"
        assert out.read_bytes() == image.data

    def library_download(self, image: Image) -> None:
        """python-glanceclient's ``images.data`` through locproxy (verifies at the end)."""
        proc = self.glance.library_download(image.id, url=self.url)
        assert proc.returncode == 0, f"glanceclient download failed:\n{proc.stderr[-2000:]}\n{self.log_tail()}"
        assert json.loads(proc.stdout) == {"size": len(image.data), "sha512": hashlib.sha512(image.data).hexdigest()}

    # -- evidence: locproxy's log and metrics --

    def log_text(self) -> str:
        if self.kind == "pipeline":
            path = self.glance.glance_log_path
            return path.read_text(errors="replace") if path.exists() else ""
        assert self.sidecar is not None
        return self.sidecar.log()

    def log_mark(self) -> int:
        return len(self.log_text())

    def log_since(self, mark: int) -> str:
        return self.log_text()[mark:]

    def log_tail(self, lines: int = 30) -> str:
        return f"--- locproxy's log ({self.kind}) ---\n" + "\n".join(self.log_text().splitlines()[-lines:])

    def wait_log(self, mark: int, pattern: str, count: int = 1) -> list[re.Match[str]]:
        """The first ``count`` lines after ``mark`` matching ``pattern`` (waits: a
        download's INFO line may be written just after its last byte)."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + LOG_TIMEOUT
        while True:
            matches = list(regex.finditer(self.log_since(mark)))
            if len(matches) >= count:
                return matches[:count]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} log line(s) matching {pattern!r} after the mark\n"
                                     f"{self.log_since(mark)[-4000:]}")
            time.sleep(0.1)

    def metric(self, series: str) -> float | None:
        """A sample of the sidecar's ``/metrics`` (0 if absent); None inside
        Glance (its version negotiation answers unknown paths itself)."""
        if self.kind != "sidecar":
            return None
        resp = http_request(self.url + "/metrics")
        assert resp.status == 200, resp.body[:300]
        for line in resp.body.decode().splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
        return 0.0


@pytest.fixture(scope="module", params=["pipeline", "sidecar"])
def deployment(request: pytest.FixtureRequest, glance_server: GlanceServer, images: ModuleImages,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """locproxy in Glance's pipeline or as a sidecar; tests call ``configure``."""
    deployed = Deployment(request.param, glance_server, tmp_path_factory.mktemp(f"locproxy-{request.param}"))
    try:
        yield deployed
    finally:
        deployed.close()


def readable_backends(glance: GlanceServer) -> dict[str, str]:
    """Every copy locproxy may read itself: both file stores and the web server."""
    return {"file_roots": f"{glance.store_dirs['fs1']}, {glance.store_dirs['fs2']}",
            "allowed_hosts": f"127.0.0.1:{glance.web.port}"}


def use_store_type(deployment: Deployment) -> None:
    deployment.configure({"location_strategy": "store_type", "store_type_preference": "http, file",
                          **readable_backends(deployment.glance)})


def use_weight(deployment: Deployment) -> None:
    deployment.configure({"location_strategy": "weight", "store_weights": "fs2:100, web:50, fs1:10",
                          **readable_backends(deployment.glance)})


LOCATION_ORDER_CONFIG = "[locproxy]\nlocation_strategy = location_order\n"


def use_location_order_with_config_file(deployment: Deployment) -> None:
    """No file_roots, no allowed_hosts: locproxy may read nothing itself."""
    deployment.configure({"location_strategy": "store_type", "store_type_preference": "http, file"},
                         config_text=LOCATION_ORDER_CONFIG)


def web_label(glance: GlanceServer) -> str:
    return f"http://127.0.0.1:{glance.web.port}"


def sent_line(image: Image, start: int, end: int, source: str, how: str | None) -> str:
    """Regex of locproxy's INFO line for a download it served."""
    suffix = "" if how is None else rf" \({how}\)"
    return rf"image {image.id}: bytes {start}-{end} sent from {re.escape(source)}{suffix}$"


VERIFIED = r"(?:sha512 verified|every block checked against the image's fingerprint)"  # a first read, or a later one


def failed_line(image: Image, source: str) -> str:
    # Inside Glance, oslo.log appends the exception being handled to the line.
    return (rf"image {image.id}: backend {re.escape(source)} failed before the first byte: .*; "
            r"trying the next location")


def assert_no_sent_line(deployment: Deployment, mark: int, image: Image) -> None:
    # Absence cannot be waited for; give a line that would come the moment to
    # arrive (a download's INFO line follows its last byte by microseconds).
    time.sleep(0.5)
    log = deployment.log_since(mark)
    assert f"image {image.id}: bytes" not in log, log[-3000:]


# --------------------------------------------------------- reordering ---


def assert_ordered(got: Mapping[str, Any], glance_own: Mapping[str, Any], expected: list[str]) -> None:
    """``got`` is Glance's image with its locations in ``expected`` store order."""
    by_store = {location["metadata"]["store"]: location for location in glance_own["locations"]}
    assert stores_of(got) == expected, got["locations"]
    assert got["locations"] == [by_store[store] for store in expected], "locations must be Glance's, reordered"
    assert got["direct_url"] == got["locations"][0]["url"]
    assert got["stores"] == ",".join(expected)
    assert without_location_fields(got) == without_location_fields(glance_own), "nothing else changes"


def check_responses_ordered(deployment: Deployment, images: ModuleImages, expected: list[str]) -> None:
    """Show, list (every image of both pages), create and PATCH through locproxy."""
    glance = deployment.glance
    for image in images.three:
        assert_ordered(deployment.get_json(f"/v2/images/{image.id}"), images.shown[image.id], expected)

    path = images.list_path()
    for glance_page in images.pages:
        page = deployment.get_json(path)
        assert {k: v for k, v in page.items() if k != "images"} == \
            {k: v for k, v in glance_page.items() if k != "images"}, "next/first/schema untouched"
        assert [item["id"] for item in page["images"]] == [item["id"] for item in glance_page["images"]]
        for item, glance_item in zip(page["images"], glance_page["images"]):
            assert_ordered(item, glance_item, expected)
        path = page.get("next", "")
    assert path == "", "the last page has no next"

    # Create: Glance's 201 body of a new (queued) image has no copies yet and
    # comes through as a 201 with the same body.
    created = deployment.request("POST", "/v2/images", json_body={
        "name": "locproxy-it-created", "disk_format": "raw", "container_format": "bare"})
    assert created.status == 201, created.body[:500]
    body = created.json()
    assert (body["status"], body["locations"], body["name"]) == ("queued", [], "locproxy-it-created")
    assert "direct_url" not in body and "stores" not in body
    assert glance.get_image(body["id"])["status"] == "queued"

    # PATCH (an unrelated property) answers with the image in locproxy's order.
    image = make_image(glance, os.urandom(30_000), name="locproxy-it-patch")
    patched = deployment.patch(image.id, [{"op": "add", "path": "/locproxy_it", "value": "patched"}])
    assert patched.status == 200, patched.body[:500]
    body = patched.json()
    assert body["locproxy_it"] == "patched"
    assert body["locations"] == [{"url": image.urls[store], "metadata": {"store": store}} for store in expected]
    assert body["direct_url"] == image.urls[expected[0]]
    assert body["stores"] == ",".join(expected)


# ======================================================================
# store_type: http first, then file (every copy readable by locproxy)
# ======================================================================


def test_store_type_orders_show_list_create_and_patch(deployment: Deployment, images: ModuleImages) -> None:
    use_store_type(deployment)
    check_responses_ordered(deployment, images, ["web", "fs1", "fs2"])


def test_downloads_come_from_the_preferred_backend(deployment: Deployment, tmp_path: Path) -> None:
    """glance CLI and glanceclient library through locproxy: exact bytes,
    checksum verified by glanceclient, read from the web copy (http first)."""
    use_store_type(deployment)
    glance = deployment.glance
    image = make_image(glance, os.urandom(1_200_000), name="locproxy-it-preferred")
    # Glance's own /file would send fs1's bytes (it never verifies): make them
    # wrong, same size. glanceclient would then refuse the download.
    for store in ("fs1", "fs2"):
        (glance.store_dirs[store] / image.id).write_bytes(os.urandom(len(image.data)))
    seen = len(glance.web.requests)
    served_before = deployment.metric(f'locproxy_downloads_total{{backend="{web_label(glance)}",outcome="served"}}')
    mark = deployment.log_mark()

    deployment.glance_cli_download(image, tmp_path / "cli.raw")
    deployment.library_download(image)

    last = len(image.data) - 1
    deployment.wait_log(mark, sent_line(image, 0, last, web_label(glance), VERIFIED), count=2)
    assert "failed before the first byte" not in deployment.log_since(mark)
    assert [r for r in glance.web.requests[seen:] if r[1] == image.web_path] == [("GET", image.web_path, None)] * 2
    if served_before is not None:
        served = deployment.metric(f'locproxy_downloads_total{{backend="{web_label(glance)}",outcome="served"}}')
        assert served == served_before + 2


def test_range_and_head_through_locproxy(deployment: Deployment, images: ModuleImages) -> None:
    use_store_type(deployment)
    glance = deployment.glance
    image = images.three[0]
    glance_own = images.shown[image.id]
    path = f"/v2/images/{image.id}/file"
    size = len(image.data)

    seen, mark = len(glance.web.requests), deployment.log_mark()
    part = deployment.request("GET", path, headers={"Range": "bytes=1000-1999"})
    assert (part.status, part.header("Content-Range"), part.header("Content-Length")) == \
        (206, f"bytes 1000-1999/{size}", "1000")
    assert part.body == image.data[1000:2000]
    suffix = deployment.request("GET", path, headers={"Range": "bytes=-100"})
    assert (suffix.status, suffix.header("Content-Range"), suffix.body) == \
        (206, f"bytes {size - 100}-{size - 1}/{size}", image.data[-100:])
    deployment.wait_log(mark, sent_line(image, 1000, 1999, web_label(glance), None))
    deployment.wait_log(mark, sent_line(image, size - 100, size - 1, web_label(glance), None))
    assert glance.web.requests[seen:] == [("GET", image.web_path, "bytes=1000-1999"),
                                          ("GET", image.web_path, f"bytes={size - 100}-{size - 1}")]

    beyond = deployment.request("GET", path, headers={"Range": f"bytes={size}-"})
    assert (beyond.status, beyond.header("Content-Range")) == (416, f"bytes */{size}")
    several = {"Range": "bytes=0-1,5-6"}  # Glance: 400, "make multiple single-range requests instead"
    theirs, ours = glance.request("GET", path, headers=several), deployment.request("GET", path, headers=several)
    assert (ours.status, theirs.status) == (400, 400), (ours.body[:300], theirs.body[:300])
    assert ours.json()["error"]["code"] == 400 and ours.header("Content-Range") is None

    seen = len(glance.web.requests)
    head = deployment.request("HEAD", path)
    assert head.status == 200 and head.body == b""
    assert head.header("Content-Length") == str(size)
    assert head.header("Content-MD5") == glance_own["checksum"] == hashlib.md5(image.data).hexdigest()
    assert head.header("Content-Type") == "application/octet-stream"
    assert glance.web.requests[seen:] == [], "HEAD reads no backend"


def test_fallback_to_the_next_location_when_preferred_copies_are_gone(deployment: Deployment, tmp_path: Path) -> None:
    use_store_type(deployment)  # order: web, fs1, fs2
    glance = deployment.glance
    image = make_image(glance, os.urandom(600_000), name="locproxy-it-fallback")
    last = len(image.data) - 1

    # The web copy is gone from the web server: the next location (a file) serves.
    (glance.web.root / f"{image.id}.raw").unlink()
    seen, mark = len(glance.web.requests), deployment.log_mark()
    deployment.glance_cli_download(image, tmp_path / "no-web.raw")
    deployment.wait_log(mark, failed_line(image, web_label(glance)))
    deployment.wait_log(mark, sent_line(image, 0, last, "file", VERIFIED))
    assert ("GET", image.web_path, None) in glance.web.requests[seen:], "the web copy was tried first"

    # fs1's file is gone too: fs2, the only copy left, serves.
    (glance.store_dirs["fs1"] / image.id).unlink()
    mark = deployment.log_mark()
    deployment.library_download(image)
    deployment.wait_log(mark, failed_line(image, web_label(glance)))
    deployment.wait_log(mark, failed_line(image, "file"))
    deployment.wait_log(mark, sent_line(image, 0, last, "file", VERIFIED))


REFUSALS = [
    pytest.param("other-project-404", id="other-project-404"),
    pytest.param("deactivated-403", id="deactivated-403"),
    pytest.param("anonymous-401", id="anonymous-401"),
]


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_requests_get_glances_status_and_no_bytes(deployment: Deployment, images: ModuleImages,
                                                          case: str) -> None:
    """Another project's private image (404), a deactivated image for a
    non-admin (403), no identity (401): Glance's status, no image bytes, and
    no backend read."""
    use_store_type(deployment)
    glance = deployment.glance
    refusal = images.refusals[case]
    seen, mark = len(glance.web.requests), deployment.log_mark()

    resp = deployment.request("GET", refusal.path, identity=refusal.identity)

    assert resp.status == refusal.status, resp.body[:500]
    assert len(resp.body) < 1000 and refusal.image.data[:64] not in resp.body
    assert glance.web.requests[seen:] == [], "no backend was read"
    assert_no_sent_line(deployment, mark, refusal.image)


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_requests_get_glances_own_body(deployment: Deployment, images: ModuleImages, case: str) -> None:
    """Glance's own answer to the client's own request: status, type and body."""
    use_store_type(deployment)
    refusal = images.refusals[case]

    resp = deployment.request("GET", refusal.path, identity=refusal.identity)

    assert (resp.status, resp.header("Content-Type"), resp.body) == \
        (refusal.status, refusal.content_type, refusal.body)


# ======================================================================
# weight: fs2:100, web:50, fs1:10
# ======================================================================


def test_weight_orders_show_list_create_and_patch(deployment: Deployment, images: ModuleImages) -> None:
    use_weight(deployment)
    check_responses_ordered(deployment, images, ["fs2", "web", "fs1"])


def test_fallback_from_a_missing_file_copy_to_the_web_copy(deployment: Deployment, tmp_path: Path) -> None:
    use_weight(deployment)  # order: fs2, web, fs1
    glance = deployment.glance
    image = make_image(glance, os.urandom(400_000), name="locproxy-it-file-fallback")
    (glance.store_dirs["fs2"] / image.id).unlink()
    (glance.store_dirs["fs1"] / image.id).write_bytes(os.urandom(len(image.data)))  # Glance's /file: corrupt
    seen, mark = len(glance.web.requests), deployment.log_mark()

    deployment.glance_cli_download(image, tmp_path / "web.raw")

    deployment.wait_log(mark, failed_line(image, "file"))
    deployment.wait_log(mark, sent_line(image, 0, len(image.data) - 1, web_label(glance), VERIFIED))
    assert [r for r in glance.web.requests[seen:] if r[1] == image.web_path] == [("GET", image.web_path, None)]


def test_json_patch_remove_deletes_the_copy_the_client_saw(deployment: Deployment) -> None:
    """``remove /locations/N`` with the client's N (locproxy's order) removes
    that copy in Glance, whatever its index there."""
    use_weight(deployment)
    glance = deployment.glance
    image = make_image(glance, os.urandom(20_000), name="locproxy-it-remove")
    shown = deployment.get_json(f"/v2/images/{image.id}")
    assert stores_of(shown) == ["fs2", "web", "fs1"]  # Glance: fs1, fs2, web

    removed = deployment.patch(image.id, [{"op": "remove", "path": "/locations/0"}])
    assert removed.status == 200, removed.body[:500]
    assert stores_of(removed.json()) == ["web", "fs1"]
    glance_urls = {location["url"] for location in glance.get_image(image.id)["locations"]}
    assert glance_urls == {image.urls["fs1"], image.urls["web"]}, "fs2, shown at 0, is gone in Glance"
    assert not (glance.store_dirs["fs2"] / image.id).exists(), "Glance deleted that copy's data"
    assert (glance.store_dirs["fs1"] / image.id).exists()

    removed = deployment.patch(image.id, [{"op": "remove", "path": "/locations/1"}])
    assert removed.status == 200, removed.body[:500]
    assert stores_of(removed.json()) == ["web"]
    assert [location["url"] for location in glance.get_image(image.id)["locations"]] == [image.urls["web"]]
    assert not (glance.store_dirs["fs1"] / image.id).exists(), "fs1, shown at 1, is gone"


# ======================================================================
# location_order from a config_file; locproxy may read no copy itself
# ======================================================================


def test_location_order_leaves_glances_responses_unchanged(deployment: Deployment, images: ModuleImages) -> None:
    use_location_order_with_config_file(deployment)  # the file overrides the paste options' store_type
    check_responses_ordered(deployment, images, ["fs1", "fs2", "web"])
    for image in images.three:
        assert deployment.get_json(f"/v2/images/{image.id}") == images.shown[image.id]
    assert deployment.get_json(images.list_path()) == images.pages[0]


def test_glance_serves_the_file_when_locproxy_may_read_no_location(deployment: Deployment, images: ModuleImages,
                                                                   tmp_path: Path) -> None:
    """No file_roots, no allowed_hosts: the request goes to Glance's own /file.
    The image's first location is the web copy: the GET at the web server is
    Glance's http store (locproxy may not fetch from it)."""
    use_location_order_with_config_file(deployment)
    glance = deployment.glance
    image = images.web_first
    seen, mark = len(glance.web.requests), deployment.log_mark()
    upstream_before = deployment.metric('locproxy_downloads_total{backend="upstream",outcome="upstream"}')

    deployment.glance_cli_download(image, tmp_path / "glance.raw")

    assert [r for r in glance.web.requests[seen:] if r[1] == image.web_path] == [("GET", image.web_path, None)]
    assert_no_sent_line(deployment, mark, image)
    if upstream_before is not None:
        assert deployment.metric('locproxy_downloads_total{backend="upstream",outcome="upstream"}') == \
            upstream_before + 1


def test_config_file_switches_strategy_without_restart(deployment: Deployment, images: ModuleImages) -> None:
    use_location_order_with_config_file(deployment)
    image = images.three[0]
    path = f"/v2/images/{image.id}"
    assert stores_of(deployment.get_json(path)) == ["fs1", "fs2", "web"]
    processes = deployment.process_ids()
    mark = deployment.log_mark()

    deployment.forget()  # from here on the running locproxy no longer matches its options
    deployment.write_config("[locproxy]\nlocation_strategy = store_type\nstore_type_preference = http, file\n")
    edited = time.monotonic()
    answers: list[list[str]] = []
    while time.monotonic() - edited < TOGGLE_TIMEOUT:
        answers.append(stores_of(deployment.get_json(path)))
        if answers[-1] == ["web", "fs1", "fs2"]:
            break
        time.sleep(0.1)
    took = time.monotonic() - edited
    assert answers[-1] == ["web", "fs1", "fs2"], f"no switch within {TOGGLE_TIMEOUT}s: {answers[-5:]}"
    assert set(map(tuple, answers)) <= {("fs1", "fs2", "web"), ("web", "fs1", "fs2")}, answers
    deployment.wait_log(mark, rf"config_file {re.escape(str(deployment.config_file))} reloaded")
    assert deployment.process_ids() == processes, "no restart: same gunicorn master and worker"
    # Every later request sees the new order.
    for _ in range(3):
        assert stores_of(deployment.get_json(path)) == ["web", "fs1", "fs2"], f"switched after {took:.1f}s"


# ======================================================================
# README's [filter:locproxy] block, verbatim, in Glance's pipeline
# ======================================================================


def readme_pipeline_section() -> str:
    """The text of README.rst's "Inside Glance's pipeline" section."""
    lines = README.read_text().splitlines()
    start = lines.index("Inside Glance's pipeline") + 2
    end = next(i for i in range(start, len(lines) - 1)
               if lines[i + 1] and set(lines[i + 1]) <= set("=-~") and len(lines[i + 1]) >= len(lines[i]) > 0)
    return "\n".join(lines[start:end])


def readme_filter_block(section: str) -> list[str]:
    """The ``[filter:locproxy]`` block of the section's literal block, dedented."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "[filter:locproxy]")
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line.strip())
    return block


@pytest.mark.parametrize("deployment", ["pipeline"], indirect=True)
def test_readme_pipeline_snippet_works_in_glance(deployment: Deployment, images: ModuleImages,
                                                 tmp_path: Path) -> None:
    glance = deployment.glance
    section = readme_pipeline_section()
    pipeline = next(line.split("=", 1)[1].split() for line in section.splitlines()
                    if line.strip().startswith("pipeline ="))
    assert pipeline[-2:] == ["locproxy", "rootapp"] and pipeline.index("context") < pipeline.index("locproxy")
    block = readme_filter_block(section)
    options = dict(line.split("=", 1) for line in block[1:] if not line.startswith("#"))
    options = {key.strip(): value.strip() for key, value in options.items()}
    assert options["use"] == "egg:locproxy#locproxy"
    assert options["location_strategy"] == "store_type" and options["store_type_preference"] == "file, http", block
    # The README's file_roots is a production path (Glance's datadir); here the
    # datadirs are the test's own. Every other line is used as written.
    roots = f"{glance.store_dirs['fs1']}, {glance.store_dirs['fs2']}"
    filter_section = [f"file_roots = {roots}" if line.split("=", 1)[0].strip() == "file_roots" else line
                      for line in block]
    ours = [*DEFAULT_PIPELINE[:-1], "locproxy", DEFAULT_PIPELINE[-1]]
    deployment.configure_paste(render_paste_ini(ours, "\n".join(filter_section)))

    image = images.web_first  # Glance's order: web, fs1
    shown = deployment.get_json(f"/v2/images/{image.id}")
    assert stores_of(shown) == ["fs1", "web"]
    assert shown["direct_url"] == image.urls["fs1"]

    seen, mark = len(glance.web.requests), deployment.log_mark()
    deployment.glance_cli_download(image, tmp_path / "readme.raw")
    deployment.wait_log(mark, sent_line(image, 0, len(image.data) - 1, "file", VERIFIED))
    assert [r for r in glance.web.requests[seen:] if r[1] == image.web_path] == [], "the file copy served"


# -- Glance refuses any Range for stores that cannot read at random (its http store here) --------------------

def test_an_image_only_glance_can_read_is_cached_from_its_whole_file(deployment: Deployment, images: ModuleImages,
                                                                     tmp_path: Path) -> None:
    """With a site cache and no copy locproxy may read: the fill reads Glance's
    /file whole (a Range would be a 400 from its http store), the client gets
    200 and exact bytes, and the next download is a hit."""
    cache_dir = tmp_path / f"cache-{deployment.kind}"
    cache_dir.mkdir()
    deployment.configure({"cache_dir": str(cache_dir), "cache_max_size": "64M"})
    glance, image = deployment.glance, images.web_first
    seen = len(glance.web.requests)
    first = deployment.request("GET", f"/v2/images/{image.id}/file")
    second = deployment.request("GET", f"/v2/images/{image.id}/file")
    assert (first.status, first.body) == (200, image.data), first.body[:300]
    assert (second.status, second.body) == (200, image.data)
    glances_reads = [r for r in glance.web.requests[seen:] if r[1] == image.web_path]
    assert glances_reads == [("GET", image.web_path, None)], "Glance read its web copy once, whole"


def test_download_authorization_file_with_a_store_that_refuses_ranges(deployment: Deployment,
                                                                      images: ModuleImages) -> None:
    """Glance answers the first-byte probe with 400 for its http store: that
    is its limit, not a refusal; the download is served from the file copy."""
    deployment.configure({"download_authorization": "file", **readable_backends(deployment.glance),
                          "location_strategy": "store_type", "store_type_preference": "file, http"})
    image, mark = images.web_first, deployment.log_mark()
    result = deployment.request("GET", f"/v2/images/{image.id}/file")
    assert (result.status, result.body) == (200, image.data), result.body[:300]
    deployment.wait_log(mark, sent_line(image, 0, len(image.data) - 1, "file", VERIFIED))


@pytest.mark.parametrize("read", ["first", "again"])
def test_resume_onto_glances_file_for_a_store_that_refuses_ranges(deployment: Deployment, images: ModuleImages,
                                                                  read: str) -> None:
    """locproxy's read of the web copy breaks off mid-stream, past its first
    blocks; the only other source is Glance's own /file, which answers a
    Range with 400: it is read from byte 0, the blocks already sent are
    compared with what was sent and skipped, and the client gets one exact
    body (a first read, checked by its digest; then a read checked block by
    block)."""
    glance, image = deployment.glance, images.web_first_blocks
    deployment.configure({"allowed_hosts": f"127.0.0.1:{glance.web.port}", "location_strategy": "location_order"})
    glance.web.cuts[image.web_path.lstrip("/")] = 2 * 1024 * 1024 + 1000
    try:
        mark = deployment.log_mark()
        result = deployment.request("GET", f"/v2/images/{image.id}/file")
    finally:
        glance.web.cuts.clear()
    assert (result.status, result.body) == (200, image.data)
    deployment.wait_log(mark, sent_line(image, 0, len(image.data) - 1, f"{web_label(glance)}, upstream", VERIFIED))
    assert not re.search(r"does not match", deployment.log_since(mark))
