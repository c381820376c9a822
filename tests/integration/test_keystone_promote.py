"""Promotion (issue 22) behind a real Keystone: Glance 33 with its default
policies (``copy_image`` = admin), ``show_multiple_locations = False``.

Each image is alice's private image with only an http copy (``web``,
another site's store); ``fs2`` (a file store) stands in for this site's own
store. The sidecar reads hidden copies with its own identity
(``locations_from = service``), so the fs2 copy Glance makes is found by
reading the image's locations again once ``stores`` changed.

* ``locproxy-admin`` (admin, service; a keystoneauth1 password identity):
  after ``promote_after`` downloads Glance lists fs2, later downloads read
  fs2 with exact bytes and no web read.
* ``locproxy`` (service only): Glance hides alice's image from it (404, it
  lacks ``reader`` and the project): one WARNING, back-off, downloads
  unaffected.

Skips where the Keystone lab cannot run (``tests/integration/conftest.py``).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.client import http_request
from tests.support.keystone.lab import KeystoneGlance, KeystoneLab, keystone_glance
from tests.support.keystone.seed import SeededImage, seed_image
from tests.support.servers import GunicornServer, run_gunicorn, sidecar_ini

pytestmark = [pytest.mark.integration, pytest.mark.lab]  # opt-in: ./run tests -m lab

MiB = 1024 * 1024
WAIT = 60.0


@pytest.fixture(scope="module")
def glance(keystone_lab: KeystoneLab) -> Iterator[KeystoneGlance]:
    with keystone_glance(keystone_lab) as server:
        yield server


@contextlib.contextmanager
def sidecar(glance: KeystoneGlance, lab: KeystoneLab, tmp: Path, user: str) -> Iterator[GunicornServer]:
    options = {"file_roots": str(glance.store_dirs["fs2"]), "allowed_hosts": f"127.0.0.1:{glance.web.port}",
               "location_strategy": "weight", "store_weights": "fs2:100, web:1", "locations_from": "service",
               "metrics_file": str(tmp / f"{user}.sqlite"), "metrics_path": "/metrics", "local_stores": "fs2",
               "promote": "auto", "promote_after": "2", "promote_poll_interval": "0.3",
               "service_endpoint_override": glance.url, **lab.service_options(user)}
    ini = sidecar_ini(tmp / f"{user}.ini", glance.url, options, log_level="INFO")
    with run_gunicorn(ini, threads=8) as server:
        yield server


def download(server: GunicornServer, glance: KeystoneGlance, image: SeededImage) -> None:
    resp = http_request(f"{server.url}/v2/images/{image.id}/file", headers=glance.as_user("alice"), timeout=60)
    assert resp.status == 200, resp.body[:300]
    assert resp.body == image.data, "exact bytes"


def web_reads(glance: KeystoneGlance, image: SeededImage) -> int:
    return sum(1 for request in glance.web.requests if request[:2] == ("GET", image.web_path))


def stores(glance: KeystoneGlance, image: SeededImage) -> list[str]:
    return glance.get_image(image.id, identity=glance.as_user("admin"))["stores"].split(",")


def metric(server: GunicornServer, series: str) -> float:
    for line in http_request(server.url + "/metrics").body.decode().splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


def wait_for(predicate, what: str, timeout: float = WAIT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_admin_service_identity_promotes_then_fs2_serves(glance: KeystoneGlance, keystone_lab: KeystoneLab,
                                                         tmp_path: Path) -> None:
    image = seed_image(glance, os.urandom(8 * MiB + 3), copies=(), name="lp-ks-promote")
    assert stores(glance, image) == ["web"]
    base = web_reads(glance, image)
    with sidecar(glance, keystone_lab, tmp_path, "locproxy-admin") as server:
        for _ in range(2):
            download(server, glance, image)
        wait_for(lambda: "fs2" in stores(glance, image), "Glance to list fs2")
        wait_for(lambda: "copy into store fs2: done" in server.log(), "the promoter to see it done")
        glance.wait_tasks(image.id)
        seen = web_reads(glance, image)
        assert seen - base == 3, "two downloads and Glance's copy read the web copy"
        for _ in range(2):
            download(server, glance, image)
        assert web_reads(glance, image) == seen, "later downloads never read the non-local copy"
        assert server.log().count(f"image {image.id}: bytes 0-{len(image.data) - 1} sent from file") == 2
        assert metric(server, 'locproxy_promotions_total{event="started"}') == 1
        assert metric(server, 'locproxy_copy_bytes_total{copy="local"}') == 2 * len(image.data)
        assert "WARNING" not in server.log()


def test_a_service_only_identity_is_refused_once_and_backs_off(glance: KeystoneGlance, keystone_lab: KeystoneLab,
                                                               tmp_path: Path) -> None:
    image = seed_image(glance, os.urandom(2 * MiB), copies=(), name="lp-ks-refused")
    with sidecar(glance, keystone_lab, tmp_path, "locproxy") as server:
        for _ in range(6):
            download(server, glance, image)  # downloads unaffected
        wait_for(lambda: metric(server, 'locproxy_promotions_total{event="failed"}') == 1, "the refusal")
        time.sleep(1.0)
        warnings = [line for line in server.log().splitlines() if line.startswith("WARNING locproxy.promoter")]
        assert len(warnings) == 1, warnings
        assert f"image {image.id}: copy into store fs2 failed (HTTP 404" in warnings[0], warnings[0]
        assert metric(server, 'locproxy_promotions_total{event="failed"}') == 1
        assert stores(glance, image) == ["web"]
