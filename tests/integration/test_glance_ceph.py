"""locproxy against a real Glance 33 with rbd and s3 stores on a real Ceph.

Glance (the session's ``glance_server``) is restarted for this module with
two more stores on the session's Ceph lab (``ceph_lab``: mon, BlueStore
OSD, radosgw on loopback): ``ceph1`` (rbd) and ``s3`` (radosgw), beside
``fs1``/``fs2`` (file) and ``web`` (http). Images are uploaded to ``fs1`` and
copied by Glance itself (``copy-image`` import) to ``ceph1`` and ``s3``, so
every location is one Glance wrote: ``rbd://<fsid>/images/<id>/snap`` and
``s3://127.0.0.1:<port>/glance/<id>`` (no credentials: Glance 33 keeps them
in its store config, locproxy in ``s3_credentials``).

Every test runs in both deployments (``pipeline``: the filter inside
Glance's paste pipeline; ``sidecar``: gunicorn with ``etc/paste.ini`` in
front of Glance) and downloads through python-glanceclient (CLI and library,
which verify the image's checksum) or a plain HTTP client.

Evidence of which backend served:

* the lab's read counters: the OSD's ``op_r_out_bytes`` (every read, rbd
  *and* radosgw's) and radosgw's ``get_b`` (S3 GETs only). rbd served:
  OSD up by the image size, radosgw unchanged; s3 served: radosgw up by the
  size; neither: the OSD nearly unchanged;
* locproxy's INFO line per download (``bytes A-B sent from rbd://<fsid>``)
  and WARNING per failed backend, in the sidecar's or Glance's log;
* the ``fs1`` copy of ``images.corrupt`` holds other bytes (same size), so
  Glance's own ``/file`` in its own order (fs1 first) would fail
  glanceclient's checksum check.

Skips with the lab's reason where Ceph cannot run (``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pytest

from tests.support import ceph
from tests.support.ceph import OSD_NAME, RGW_NAME, CephCluster
from tests.support.client import Fetched, http_request
from tests.support.glance.ceph_stores import ceph_stores
from tests.support.glance.config import locproxy_paste_ini
from tests.support.glance.server import GlanceServer
from tests.support.glance.venv import GlanceEnvError
from tests.support.servers import REPO_ROOT, GunicornServer, run_gunicorn

pytestmark = pytest.mark.integration

PASTE_INI = REPO_ROOT / "etc" / "paste.ini"
MiB = 1024 * 1024
MEMBER = ("member", "reader")  # not admin: Glance refuses ?prefer= (download_from_store, ADMIN_ONLY here)
ADMIN_ONLY = "role:admin"
LOG_TIMEOUT = 20.0


# --------------------------------------------------------------- the lab ---


@dataclass
class Image:
    id: str
    data: bytes
    urls: dict[str, str]  # store -> location URL, as Glance wrote them

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Images:
    corrupt: Image  # fs1 copy overwritten (same size): Glance's default /file would fail the checksum
    good: Image  # every copy good; big enough that an outage hits mid-stream


@pytest.fixture(scope="module")
def ceph_glance(glance_server: GlanceServer, ceph_lab: CephCluster) -> Iterator[GlanceServer]:
    """The session's Glance with the rbd and s3 stores (restored afterwards)."""
    # Store selection for admins only (Glance 33's default lets any project
    # member choose, like download_image): members get the 403 to ?prefer=.
    with ceph_stores(glance_server, ceph_lab, policy=f'"download_from_store": "{ADMIN_ONLY}"\n') as glance:
        yield glance


def make_image(glance: GlanceServer, lab: CephCluster, data: bytes, name: str) -> Image:
    image_id = glance.create_image(data, store="fs1", name=name)
    glance.copy_to_store(image_id, "ceph1", timeout=120)
    image = glance.copy_to_store(image_id, "s3", timeout=120)
    urls = {location["metadata"]["store"]: location["url"] for location in image["locations"]}
    assert list(urls) == ["fs1", "ceph1", "s3"], image["locations"]
    assert urls["ceph1"] == f"rbd://{lab.fsid}/images/{image_id}/snap"
    assert urls["s3"] == f"s3://{lab.rgw_host}/glance/{image_id}", "no credentials in Glance 33's s3 URLs"
    return Image(image_id, data, urls)


@pytest.fixture(scope="module")
def images(ceph_glance: GlanceServer, ceph_lab: CephCluster) -> Images:
    assert "locproxy" not in ceph_glance.paste_ini_path.read_text()
    corrupt = make_image(ceph_glance, ceph_lab, os.urandom(9 * MiB + 7), "locproxy-ceph-corrupt")
    (ceph_glance.store_dirs["fs1"] / corrupt.id).write_bytes(os.urandom(corrupt.size))
    good = make_image(ceph_glance, ceph_lab, os.urandom(32 * MiB + 5), "locproxy-ceph-good")
    return Images(corrupt, good)


# ----------------------------------------------------------- deployment ---


class Deployment:
    """locproxy in Glance's pipeline or as a sidecar; ``configure`` restarts
    only when the options change."""

    def __init__(self, kind: str, glance: GlanceServer) -> None:
        self.kind = kind
        self.glance = glance
        self.sidecar: GunicornServer | None = None
        self._stack = contextlib.ExitStack()
        self._running: Any = None
        self._original_paste = glance.paste_ini_path.read_text()

    @property
    def url(self) -> str:
        return self.glance.url if self.kind == "pipeline" else self.sidecar.url  # type: ignore[union-attr]

    def configure(self, options: Mapping[str, str]) -> None:
        key = tuple(sorted(options.items()))
        if key == self._running:
            return
        if self.kind == "pipeline":
            try:
                self.glance.restart(locproxy_paste_ini(**options))
            except GlanceEnvError as error:
                pytest.fail(f"Glance did not start with locproxy in its pipeline: {error}", pytrace=False)
        else:
            self._stack.close()
            globals_ = [arg for name, value in {"upstream": self.glance.url, **options}.items()
                        for arg in ("--paste-global", f"{name}={value}")]
            self.sidecar = self._stack.enter_context(run_gunicorn(
                PASTE_INI, threads=8, extra_args=globals_, env={"PYTHONPATH": str(ceph.bindings_dir())}))
        self._running = key

    def close(self) -> None:
        self._stack.close()
        if self.kind == "pipeline" and self.glance.paste_ini_path.read_text() != self._original_paste:
            self.glance.restart(self._original_paste)

    # -- downloads --

    def request(self, path: str, *, method: str = "GET", identity: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None) -> Fetched:
        return http_request(self.url + path, method, headers={
            **(self.glance.headers() if identity is None else identity), **(headers or {})})

    def cli_download(self, image: Image, out: Path) -> None:
        """``glance image-download`` through locproxy; glanceclient checks the checksum."""
        proc = self.glance.glance_cli("image-download", "--file", str(out), image.id, url=self.url)
        assert proc.returncode == 0, f"glance image-download failed:\n{proc.stderr[-2000:]}\n{self.log_tail()}"
        assert out.read_bytes() == image.data

    def library_download(self, image: Image, roles: tuple[str, ...] | None = None) -> None:
        token = self.glance.token() if roles is None else self.glance.token(roles=roles)
        proc = self.glance.library_download(image.id, url=self.url, token=token)
        assert proc.returncode == 0, f"glanceclient download failed:\n{proc.stderr[-2000:]}\n{self.log_tail()}"
        assert json.loads(proc.stdout) == {"size": image.size, "sha512": hashlib.sha512(image.data).hexdigest()}

    def download_with_outage(self, image: Image, outage: Callable[[], None], after: int = 2 * MiB) -> bytes:
        """Read ``after`` bytes slowly (a small receive buffer), cause the
        outage, read the rest: the whole body as received."""
        host, port = self.url.split("//")[1].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.connect()
            connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            connection.request("GET", f"/v2/images/{image.id}/file", headers=self.glance.headers())
            response = connection.getresponse()
            assert response.status == 200, response.status
            received = [response.read(after)]
            outage()
            while True:
                chunk = response.read(MiB)
                if not chunk:
                    break
                received.append(chunk)
            return b"".join(received)
        finally:
            connection.close()

    # -- evidence --

    def log_text(self) -> str:
        if self.kind == "pipeline":
            path = self.glance.glance_log_path
            return path.read_text(errors="replace") if path.exists() else ""
        return self.sidecar.log() if self.sidecar is not None else ""

    def log_mark(self) -> int:
        return len(self.log_text())

    def log_tail(self, lines: int = 30) -> str:
        return f"--- locproxy's log ({self.kind}) ---\n" + "\n".join(self.log_text().splitlines()[-lines:])

    def wait_log(self, mark: int, pattern: str, count: int = 1) -> list[str]:
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + LOG_TIMEOUT
        while True:
            found = regex.findall(self.log_text()[mark:])
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} line(s) matching {pattern!r}\n{self.log_text()[mark:][-4000:]}")
            time.sleep(0.1)


@pytest.fixture(scope="module", params=["pipeline", "sidecar"])
def deployment(request: pytest.FixtureRequest, ceph_glance: GlanceServer, images: Images) -> Iterator[Deployment]:
    deployed = Deployment(request.param, ceph_glance)
    try:
        yield deployed
    finally:
        deployed.close()


class Counters:
    """The lab's read counters since ``start``: OSD (all reads) and radosgw (S3 GETs)."""

    def __init__(self, lab: CephCluster) -> None:
        self.lab = lab
        self.osd, self.rgw = lab.osd_read_bytes(), lab.rgw_read_bytes()

    def read(self) -> tuple[int, int]:
        return self.lab.osd_read_bytes() - self.osd, self.lab.rgw_read_bytes() - self.rgw


def options(glance: GlanceServer, lab: CephCluster, preference: str, **overrides: str | None) -> dict[str, str]:
    access, secret = lab.s3_keys()
    values: dict[str, str | None] = {
        "location_strategy": "store_type",
        "store_type_preference": preference,
        "file_roots": f"{glance.store_dirs['fs1']}, {glance.store_dirs['fs2']}",
        "rbd_clusters": f"{lab.fsid}:{lab.conf}",
        "allowed_hosts": lab.rgw_host,
        "s3_credentials": f"{lab.rgw_host}={access}:{secret}",
        "s3_default_scheme": "http",
        "rbd_op_timeout": "3",
        "backend_first_byte_timeout": "3",
        "backend_read_timeout": "3",
    }
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


VERIFIED = r"(?:sha512 verified|every block checked against the image's fingerprint)"  # a first read, or a later one


def sent(image: Image, source: str, start: int = 0, end: int | None = None, how: str | None = VERIFIED) -> str:
    """``how``: the check the line names; None: whichever (a range is checked
    once the image was read whole, else not)."""
    last = image.size - 1 if end is None else end
    suffix = r"(?: \(every block checked against the image's fingerprint\))?" if how is None else \
        f" \\({how}\\)" if how else ""
    return rf"image {image.id}: bytes {start}-{last} sent from {source}{suffix}$"


def rbd_label(lab: CephCluster) -> str:
    return re.escape(f"rbd://{lab.fsid}")


def s3_label(lab: CephCluster) -> str:
    return re.escape(f"s3://{lab.rgw_host}")


# ======================================================================
# rbd first
# ======================================================================


def test_downloads_are_served_from_rbd_first(deployment: Deployment, images: Images, ceph_lab: CephCluster,
                                             tmp_path: Path) -> None:
    """store_type rbd, file, s3: glanceclient (CLI and library) gets the
    exact bytes from the rbd copy, read by locproxy (Glance's own order
    would read the corrupt fs1 copy)."""
    deployment.configure(options(deployment.glance, ceph_lab, "rbd, file, s3"))
    image = images.corrupt
    counters, mark = Counters(ceph_lab), deployment.log_mark()

    deployment.cli_download(image, tmp_path / "cli.raw")
    deployment.library_download(image)

    lines = deployment.wait_log(mark, sent(image, rbd_label(ceph_lab)), count=2)
    assert len(lines) == 2 and "failed" not in deployment.log_text()[mark:]
    osd, rgw = counters.read()
    assert osd >= 2 * image.size and rgw == 0, f"OSD +{osd}, radosgw +{rgw}: not two rbd reads"


def test_range_from_rbd(deployment: Deployment, images: Images, ceph_lab: CephCluster) -> None:
    deployment.configure(options(deployment.glance, ceph_lab, "rbd, file, s3"))
    image = images.corrupt
    start, end = 4 * MiB - 100, 6 * MiB + 99  # across an rbd object boundary
    counters, mark = Counters(ceph_lab), deployment.log_mark()

    part = deployment.request(f"/v2/images/{image.id}/file", headers={"Range": f"bytes={start}-{end}"})
    suffix = deployment.request(f"/v2/images/{image.id}/file", headers={"Range": "bytes=-1000"})

    assert (part.status, part.header("Content-Range"), part.body) == \
        (206, f"bytes {start}-{end}/{image.size}", image.data[start:end + 1])
    assert (suffix.status, suffix.body) == (206, image.data[-1000:])
    deployment.wait_log(mark, sent(image, rbd_label(ceph_lab), start, end, how=None))
    deployment.wait_log(mark, sent(image, rbd_label(ceph_lab), image.size - 1000, how=None))
    osd, rgw = counters.read()
    assert end - start < osd < image.size and rgw == 0, f"OSD +{osd}, radosgw +{rgw}"


def test_osd_stopped_mid_stream_resumes_from_the_next_copy(deployment: Deployment, images: Images,
                                                           ceph_lab: CephCluster) -> None:
    """The OSD stops after 2 MiB of an rbd download: locproxy's read fails
    within rbd_op_timeout and the rest comes from the file copy, at the
    offset; one unbroken, verified body."""
    deployment.configure(options(deployment.glance, ceph_lab, "rbd, file, s3"))
    image = images.good
    mark = deployment.log_mark()
    try:
        started = time.monotonic()
        body = deployment.download_with_outage(image, lambda: ceph_lab.stop(OSD_NAME))
        seconds = time.monotonic() - started
    finally:
        ceph_lab.start(OSD_NAME)
    assert len(body) == image.size and body == image.data, "the body differs"
    deployment.wait_log(mark, rf"image {image.id}: backend {rbd_label(ceph_lab)} failed at byte \d+: timeout at byte")
    deployment.wait_log(mark, sent(image, f"{rbd_label(ceph_lab)}, file", how=VERIFIED))
    assert seconds < 40, f"took {seconds:.0f} s"


# ======================================================================
# s3 first
# ======================================================================


def test_downloads_are_served_from_s3_first(deployment: Deployment, images: Images, ceph_lab: CephCluster,
                                            tmp_path: Path) -> None:
    deployment.configure(options(deployment.glance, ceph_lab, "s3, file, rbd"))
    image = images.corrupt
    counters, mark = Counters(ceph_lab), deployment.log_mark()

    deployment.cli_download(image, tmp_path / "cli.raw")
    deployment.library_download(image)

    deployment.wait_log(mark, sent(image, s3_label(ceph_lab)), count=2)
    osd, rgw = counters.read()
    # radosgw's get_b counts one byte less than it sends per GET.
    assert rgw >= 2 * (image.size - 1), f"radosgw +{rgw}: not two s3 reads"
    text = deployment.log_text()[mark:]
    assert "failed" not in text and ceph_lab.s3_keys()[1] not in text


def test_range_from_s3(deployment: Deployment, images: Images, ceph_lab: CephCluster) -> None:
    deployment.configure(options(deployment.glance, ceph_lab, "s3, file, rbd"))
    image = images.corrupt
    counters, mark = Counters(ceph_lab), deployment.log_mark()
    part = deployment.request(f"/v2/images/{image.id}/file", headers={"Range": "bytes=1000000-1999999"})
    assert (part.status, part.body) == (206, image.data[1000000:2000000])
    deployment.wait_log(mark, sent(image, s3_label(ceph_lab), 1000000, 1999999, how=None))
    assert 999_999 <= counters.read()[1] < 2 * MiB


def test_radosgw_stopped_mid_stream_resumes_from_the_next_copy(deployment: Deployment, images: Images,
                                                               ceph_lab: CephCluster) -> None:
    deployment.configure(options(deployment.glance, ceph_lab, "s3, file, rbd"))
    image = images.good
    mark = deployment.log_mark()
    try:
        body = deployment.download_with_outage(image, lambda: ceph_lab.stop(RGW_NAME))
    finally:
        ceph_lab.start(RGW_NAME)
    assert len(body) == image.size and body == image.data, "the body differs"
    deployment.wait_log(mark, rf"image {image.id}: backend {s3_label(ceph_lab)} failed at byte \d+")
    deployment.wait_log(mark, sent(image, f"{s3_label(ceph_lab)}, file", how=VERIFIED))


# ======================================================================
# what locproxy may not or cannot read
# ======================================================================


def unlisted_cluster(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ``rbd_clusters`` entry for another cluster (its ceph.conf names no monitor that exists)."""
    directory = tmp_path_factory.mktemp("other-cluster")
    fsid = str(uuid.uuid4())
    (directory / "ceph.conf").write_text(f"[global]\nfsid = {fsid}\nmon host = 127.0.0.1:1\n")
    return f"{fsid}:{directory / 'ceph.conf'}"


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory, ceph_lab: CephCluster) -> dict[str, str]:
    """rbd_clusters lists another cluster only; s3_credentials have a wrong secret."""
    access, secret = ceph_lab.s3_keys()
    return {"rbd_clusters": unlisted_cluster(tmp_path_factory),
            "s3_credentials": f"{ceph_lab.rgw_host}={access}:{secret[::-1]}"}


def test_an_unconfigured_fsid_is_never_read(deployment: Deployment, images: Images, ceph_lab: CephCluster,
                                            restricted: dict[str, str], tmp_path: Path) -> None:
    """The image's rbd copy is on a cluster locproxy is not configured for:
    never opened (no line names it); the file copy serves."""
    deployment.configure(options(deployment.glance, ceph_lab, "rbd, s3, file", **restricted))
    image = images.good
    counters, mark = Counters(ceph_lab), deployment.log_mark()

    deployment.cli_download(image, tmp_path / "cli.raw")

    deployment.wait_log(mark, sent(image, "file"))
    text = deployment.log_text()[mark:]
    assert "rbd://" not in text, text[-3000:]
    osd, rgw = counters.read()
    assert osd < MiB and rgw == 0, f"OSD +{osd}, radosgw +{rgw}: something read the Ceph copies"


def test_bad_s3_credentials_fall_back_cleanly(deployment: Deployment, images: Images, ceph_lab: CephCluster,
                                             restricted: dict[str, str]) -> None:
    deployment.configure(options(deployment.glance, ceph_lab, "rbd, s3, file", **restricted))
    image = images.good
    mark = deployment.log_mark()

    deployment.library_download(image)

    deployment.wait_log(mark, rf"image {image.id}: backend {s3_label(ceph_lab)} failed before the first byte: "
                              r"HTTP 403 \(SignatureDoesNotMatch\); trying the next location")
    deployment.wait_log(mark, sent(image, "file"))
    text = deployment.log_text()[mark:]
    access, secret = ceph_lab.s3_keys()
    assert secret not in text and secret[::-1] not in text and "Signature=" not in text


NOTHING_READABLE = {"file_roots": None, "rbd_clusters": None, "s3_credentials": None, "allowed_hosts": None}


def test_glance_is_asked_for_the_strategys_store_when_locproxy_reads_nothing(
        deployment: Deployment, images: Images, ceph_lab: CephCluster, tmp_path: Path) -> None:
    """locproxy may read no copy: Glance's own /file, asked with
    ?prefer=ceph1 (an admin may), reads the rbd copy, not its first (corrupt) fs1."""
    deployment.configure(options(deployment.glance, ceph_lab, "rbd, s3, file", **NOTHING_READABLE))
    image = images.corrupt
    counters, mark = Counters(ceph_lab), deployment.log_mark()

    deployment.cli_download(image, tmp_path / "cli.raw")

    osd, rgw = counters.read()
    assert osd >= image.size and rgw == 0, f"OSD +{osd}, radosgw +{rgw}: Glance did not read ceph1"
    assert f"image {image.id}: bytes" not in deployment.log_text()[mark:], "locproxy served it itself"


def test_a_client_glance_refuses_prefer_for_gets_its_plain_file(
        deployment: Deployment, images: Images, ceph_lab: CephCluster) -> None:
    """A member (not admin) may not choose stores here (``download_from_store``
    is admin-only in this module's policy): Glance answers 403 to ?prefer=,
    locproxy asks for the plain /file, which Glance serves in its own order
    (fs1)."""
    deployment.configure(options(deployment.glance, ceph_lab, "rbd, s3, file", **NOTHING_READABLE))
    image = images.good
    counters = Counters(ceph_lab)

    deployment.library_download(image, roles=MEMBER)

    osd, rgw = counters.read()
    assert osd < MiB and rgw == 0, f"OSD +{osd}, radosgw +{rgw}: Glance read a Ceph copy"
