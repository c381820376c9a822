"""locproxy reads Glance 33's swift copies itself: a real Ceph radosgw
speaking Swift, trusting a real Keystone (``tests/support/swiftlab.py``).

Glance (the session's ``glance_server``) is restarted for this module with
the store ``swift1`` (single tenant, its credentials in a references file:
``swift+config://ref1/glance/<id>`` locations) beside ``fs1``/``fs2``/``web``.
Images are uploaded to ``fs1`` and copied by Glance itself (``copy-image``)
to ``swift1``: a plain object (9 MiB + 7) and DLOs of five 8,192,000-byte
segments (40,960,000 bytes: an exact multiple, which glance_store 5.7.0's
segment upload needs). locproxy reads them with the same references file.

Every test runs in both deployments (Glance's pipeline; the sidecar), as
``test_glance_ceph.py``. Evidence of what served: locproxy's INFO line
(``bytes A-B sent from swift+config://ref1``) and radosgw's access lines
(``beast:``, with the user agent: ``locproxy`` for locproxy's reads).

Skips with the lab's reason where Ceph or Keystone cannot run.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Iterator

import pytest

from tests.integration.test_glance_ceph import VERIFIED, Deployment, Image, sent
from tests.support import ceph
from tests.support.glance.config import swift_store_overrides
from tests.support.glance.server import GlanceServer
from tests.support.keystone.lab import KeystoneLab
from tests.support.swiftlab import STORE_PASSWORD, SwiftGateway

pytestmark = [pytest.mark.integration, pytest.mark.lab]  # opt-in: ./run tests -m lab

MiB = 1024 * 1024
SEGMENT = 8_192_000  # Glance's swift_store_large_object_chunk_size = 8 ("MB" of 1,024,000 bytes)
DLO_SIZE = 5 * SEGMENT
LABEL = re.escape("swift+config://ref1")


@pytest.fixture(scope="module")
def swift_glance(glance_server: GlanceServer, swift: SwiftGateway) -> Iterator[GlanceServer]:
    glance_server.extra_pythonpath = [str(ceph.bindings_dir())]
    try:
        overrides = swift_store_overrides(references_file=swift.references_file, inline=swift.inline)
        with glance_server.config_overrides(overrides):
            yield glance_server
    finally:
        glance_server.extra_pythonpath = []


@dataclass
class Images:
    plain: Image  # one object
    dlo: Image  # a manifest and five segments
    short: Image  # a DLO whose third segment is gone: RGW serves it 8,192,000 bytes short


def make_image(glance: GlanceServer, data: bytes, name: str, inline: str = "") -> Image:
    """fs1, then swift1 (and swift2, whose URL holds ``inline``: user:key@keystone)."""
    image_id = glance.create_image(data, store="fs1", name=name)
    image = glance.copy_to_store(image_id, "swift1", timeout=180)
    expected = {"fs1": image["locations"][0]["url"], "swift1": f"swift+config://ref1/glance/{image_id}"}
    if inline:
        image = glance.copy_to_store(image_id, "swift2", timeout=180)
        expected["swift2"] = f"swift+http://{inline}/v3/glance-inline/{image_id}"
    urls = {location["metadata"]["store"]: location["url"] for location in image["locations"]}
    assert urls == expected, image["locations"]
    return Image(image_id, data, urls)


@pytest.fixture(scope="module")
def images(swift_glance: GlanceServer, swift: SwiftGateway) -> Images:
    """plain: fs1, swift1, swift2 (inline credentials); dlo and short: fs1, swift1."""
    plain = make_image(swift_glance, os.urandom(9 * MiB + 7), "locproxy-swift-plain",
                       inline=f"service%3Aswiftglance:{STORE_PASSWORD}@{keystone_host(swift)}")
    dlo = make_image(swift_glance, os.urandom(DLO_SIZE), "locproxy-swift-dlo")
    short = make_image(swift_glance, os.urandom(DLO_SIZE), "locproxy-swift-short")
    status, headers, _ = swift.request("HEAD", f"/glance/{dlo.id}")
    assert status == 200 and headers.get("x-object-manifest") == f"glance/{dlo.id}-", headers
    assert [item["name"] for item in swift.listing("glance", f"{dlo.id}-")] == \
        [f"{dlo.id}-{n:05d}" for n in range(1, 6)]
    assert "x-object-manifest" not in swift.request("HEAD", f"/glance/{plain.id}")[1]
    assert swift.request("DELETE", f"/glance/{short.id}-00003")[0] == 204
    assert swift.request("HEAD", f"/glance/{short.id}")[1]["content-length"] == str(DLO_SIZE - SEGMENT)
    return Images(plain, dlo, short)


@pytest.fixture(scope="module", params=["pipeline", "sidecar"])
def deployment(request: pytest.FixtureRequest, swift_glance: GlanceServer, images: Images) -> Iterator[Deployment]:
    deployed = Deployment(request.param, swift_glance)
    try:
        yield deployed
    finally:
        deployed.close()


def options(glance: GlanceServer, swift: SwiftGateway, **overrides: str | None) -> dict[str, str]:
    values: dict[str, str | None] = {
        "location_strategy": "store_type",
        "store_type_preference": "swift, file",
        "file_roots": f"{glance.store_dirs['fs1']}, {glance.store_dirs['fs2']}",
        "allowed_hosts": swift.host,
        "swift_store_config_file": str(swift.references_file),
        "backend_first_byte_timeout": "3",
        "backend_read_timeout": "3",
    }
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def keystone_host(swift: SwiftGateway) -> str:
    return swift.keystone.url.split("//", 1)[1]


def locproxy_reads(swift: SwiftGateway, mark: int) -> list[str]:
    return swift.log_lines(mark, agent="locproxy")


# ======================================================================


@pytest.mark.parametrize("which", ["plain", "dlo"])
def test_downloads_are_served_from_swift(deployment: Deployment, images: Images, swift: SwiftGateway,
                                         which: str) -> None:
    """glanceclient gets the exact bytes (it checks the checksum; sha512
    compared too), read by locproxy from radosgw; a DLO's five segments
    each read by ranged GETs of their own."""
    deployment.configure(options(deployment.glance, swift))
    image = getattr(images, which)
    mark, rgw = deployment.log_mark(), swift.log_mark()
    deployment.library_download(image)
    deployment.library_download(image)
    deployment.wait_log(mark, sent(image, LABEL), count=2)
    reads = locproxy_reads(swift, rgw)
    assert "failed" not in deployment.log_text()[mark:]
    if which == "dlo":
        for n in range(1, 6):
            assert any(f"/glance/{image.id}-{n:05d}" in line for line in reads), (n, reads)
    else:
        assert sum(f"/glance/{image.id} " in line for line in reads) >= 2, reads
    assert "lab-swiftglance-secret" not in deployment.log_text()[mark:]


def test_one_login_for_many_downloads(deployment: Deployment, images: Images, swift: SwiftGateway,
                                      keystone_lab: KeystoneLab) -> None:
    """The token is kept: four more downloads, not one token request to
    Keystone (its access log), where Glance's own /file logs in for each."""
    deployment.configure(options(deployment.glance, swift))
    deployment.library_download(images.plain)
    deployment.library_download(images.plain)  # each worker of the deployment has its token by now, or soon
    mark, before = deployment.log_mark(), keystone_lab.server.token_requests()
    for _ in range(4):
        deployment.library_download(images.plain)
    deployment.wait_log(mark, sent(images.plain, LABEL), count=4)
    logins = len(re.findall("new Keystone token for the swift reader", deployment.log_text()[mark:]))
    assert logins <= 1, f"{logins} logins for 4 downloads"  # one only if a worker served its first here
    assert keystone_lab.server.token_requests() - before == logins


@pytest.mark.parametrize("start, end", [(SEGMENT - 10, SEGMENT + 9), (3 * SEGMENT - 1, 4 * SEGMENT),
                                        (0, 2 * SEGMENT + 5), (DLO_SIZE - 100, DLO_SIZE - 1)])
def test_range_across_segments(deployment: Deployment, images: Images, swift: SwiftGateway, start: int,
                               end: int) -> None:
    deployment.configure(options(deployment.glance, swift))
    image = images.dlo
    mark = deployment.log_mark()
    part = deployment.request(f"/v2/images/{image.id}/file", headers={"Range": f"bytes={start}-{end}"})
    assert (part.status, part.header("Content-Range")) == (206, f"bytes {start}-{end}/{image.size}")
    assert part.body == image.data[start:end + 1]
    deployment.wait_log(mark, sent(image, LABEL, start, end, how=None))


def test_radosgw_stopped_mid_stream_resumes_from_the_next_copy(deployment: Deployment, images: Images,
                                                               swift: SwiftGateway) -> None:
    """Blocks of 1 MiB, two ahead: radosgw stops while most of the image is
    still to be read (with the defaults, 32 MiB of it would already be in)."""
    deployment.configure(options(deployment.glance, swift, swift_block_size="1M", swift_segment_readers="2"))
    image = images.dlo
    mark = deployment.log_mark()
    try:
        body = deployment.download_with_outage(image, swift.stop)
    finally:
        swift.start()
    assert len(body) == image.size and hashlib.sha256(body).digest() == hashlib.sha256(image.data).digest()
    deployment.wait_log(mark, rf"image {image.id}: backend {LABEL} failed at byte \d+")
    deployment.wait_log(mark, sent(image, f"{LABEL}, file", how=VERIFIED))


def test_a_dlo_missing_a_segment_is_refused(deployment: Deployment, images: Images, swift: SwiftGateway) -> None:
    """RGW serves it 8,192,000 bytes short with a 200: locproxy refuses it
    before the first byte and serves the file copy."""
    deployment.configure(options(deployment.glance, swift))
    image = images.short
    mark = deployment.log_mark()
    deployment.library_download(image)
    deployment.wait_log(mark, rf"image {image.id}: backend {LABEL} failed before the first byte: segments hold "
                              rf"{DLO_SIZE - SEGMENT} bytes, expected {DLO_SIZE}")
    deployment.wait_log(mark, sent(image, "file"))


def test_a_short_dlo_read_as_one_get_is_refused_too(deployment: Deployment, images: Images,
                                                    swift: SwiftGateway) -> None:
    deployment.configure(options(deployment.glance, swift, swift_segment_readers="1"))
    image = images.short
    mark = deployment.log_mark()
    deployment.library_download(image)
    deployment.wait_log(mark, rf"image {image.id}: backend {LABEL} failed before the first byte: Content-Length "
                              "mismatch")
    deployment.wait_log(mark, sent(image, "file"))


def test_bad_credentials_fall_back_cleanly(deployment: Deployment, images: Images, swift: SwiftGateway) -> None:
    bad = swift.write_references(key="not-the-password")
    deployment.configure(options(deployment.glance, swift, swift_store_config_file=str(bad)))
    image = images.plain
    mark, rgw = deployment.log_mark(), swift.log_mark()
    deployment.library_download(image)
    deployment.wait_log(mark, rf"backend {LABEL} failed before the first byte: Keystone refused the swift credentials")
    deployment.wait_log(mark, sent(image, "file"))
    assert locproxy_reads(swift, rgw) == []
    assert "not-the-password" not in deployment.log_text()[mark:]


def test_a_storage_host_outside_allowed_hosts_is_never_contacted(deployment: Deployment, images: Images,
                                                                 swift: SwiftGateway) -> None:
    deployment.configure(options(deployment.glance, swift, allowed_hosts="127.0.0.1:1"))
    image = images.dlo
    mark, rgw = deployment.log_mark(), swift.log_mark()
    deployment.library_download(image)
    deployment.wait_log(mark, rf"backend {LABEL} failed before the first byte: storage host not allowed")
    deployment.wait_log(mark, sent(image, "file"))
    assert locproxy_reads(swift, rgw) == []


def test_inline_credentials_are_read_where_their_keystone_is_allowed(deployment: Deployment, images: Images,
                                                                     swift: SwiftGateway) -> None:
    """swift2's URL holds the store user and key and the Keystone URL:
    read (?prefer=swift2) when that Keystone is in allowed_hosts, else not
    even tried (the next copy, swift1, serves; no login there); the key
    never in the log."""
    image, inline = images.plain, re.escape(f"swift+http://{keystone_host(swift)}")
    deployment.configure(options(deployment.glance, swift, allowed_hosts=f"{swift.host}, {keystone_host(swift)}"))
    mark = deployment.log_mark()
    whole = deployment.request(f"/v2/images/{image.id}/file?prefer=swift2")
    assert (whole.status, whole.body == image.data) == (200, True)
    deployment.wait_log(mark, sent(image, inline))

    deployment.configure(options(deployment.glance, swift))
    mark = deployment.log_mark()
    whole = deployment.request(f"/v2/images/{image.id}/file?prefer=swift2")
    assert (whole.status, whole.body == image.data) == (200, True)
    deployment.wait_log(mark, sent(image, LABEL))  # not readable: skipped at the plan, no attempt
    assert not re.search(rf"{inline}: new Keystone token", deployment.log_text()[mark:])
    assert STORE_PASSWORD not in deployment.log_text()
