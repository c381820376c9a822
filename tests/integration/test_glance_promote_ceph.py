"""Promotion into a real rbd store (issue 22): Glance 33 with the lab's Ceph.

The session's Glance is restarted for this module with the stores of the
Ceph lab (``ceph1`` rbd, ``s3``) beside ``fs1``/``fs2``/``web``. Each image
is at first only in ``web`` (http, standing in for another site's store);
``ceph1`` is this site's own store (``local_stores = ceph1``). The sidecar
reads ``web`` over http and ``ceph1`` with librbd, local copies first.

Identity: the lab's test-only ``tokenauth`` (not Keystone), locproxy's
service identity through keystoneauth1's ``admin_token`` plugin with an
admin lab token (``tests/integration/test_glance_promote.py`` has the
refusals and the policy line).

Evidence: the OSD's read counter (``op_r_out_bytes``) and the web server's
request log tell which copy a download read.

Skips with the lab's reason where Ceph cannot run (``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.test_glance_promote import (
    ADMIN_SERVICE,
    download,
    metric,
    stores,
    tasks,
    wait_for,
    web_only_image,
    web_reads,
)
from tests.support import ceph
from tests.support.ceph import MON_NAME, OSD_NAME, CephCluster, Daemon
from tests.support.glance.ceph_stores import ceph_stores
from tests.support.glance.server import GlanceServer
from tests.support.servers import REPO_ROOT, GunicornServer, run_gunicorn

pytestmark = [pytest.mark.integration, pytest.mark.lab]  # opt-in: ./run tests -m lab

PASTE_INI = REPO_ROOT / "etc" / "paste.ini"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def ceph_glance(glance_server: GlanceServer, ceph_lab: CephCluster) -> Iterator[GlanceServer]:
    """The session's Glance with the rbd and s3 stores (restored afterwards)."""
    with ceph_stores(glance_server, ceph_lab) as glance:
        yield glance


@contextlib.contextmanager
def rbd_sidecar(glance: GlanceServer, lab: CephCluster, tmp: Path, name: str) -> Iterator[GunicornServer]:
    options = {
        "upstream": glance.url, "location_strategy": "weight", "store_weights": "ceph1:100, web:1",
        "rbd_clusters": f"{lab.fsid}:{lab.conf}", "allowed_hosts": f"127.0.0.1:{glance.web.port}",
        "metrics_file": str(tmp / f"{name}.sqlite"), "local_stores": "ceph1", "promote": "auto",
        "promote_after": "2", "promote_poll_interval": "0.3", "promote_backoff": "600",
        "service_auth_type": "admin_token", "service_endpoint": glance.url, "service_token": ADMIN_SERVICE,
    }
    args = [arg for key, value in options.items() for arg in ("--paste-global", f"{key}={value}")]
    with run_gunicorn(PASTE_INI, threads=8, extra_args=args, env={"PYTHONPATH": str(ceph.bindings_dir())}) as server:
        yield server


def test_promoted_into_rbd_then_read_from_rbd(ceph_glance: GlanceServer, ceph_lab: CephCluster,
                                              tmp_path: Path) -> None:
    glance, lab = ceph_glance, ceph_lab
    data = os.urandom(32 * MiB + 5)
    image_id = web_only_image(glance, data, "promote-rbd")
    base = web_reads(glance, image_id)
    with rbd_sidecar(glance, lab, tmp_path, "a") as server:
        for _ in range(2):
            download(server, glance, image_id, data)
        wait_for(lambda: "ceph1" in stores(glance, image_id), "Glance to list ceph1", timeout=120)
        assert [task["status"] for task in tasks(glance, image_id)] == ["success"]
        wait_for(lambda: "copy into store ceph1: done" in server.log(), "the promoter to see it done")
        seen = web_reads(glance, image_id)
        assert seen - base == 3, "two downloads and Glance's copy read the web copy"
        osd = lab.osd_read_bytes()
        for _ in range(2):
            download(server, glance, image_id, data)
        read = lab.osd_read_bytes() - osd
        assert web_reads(glance, image_id) == seen, "later downloads never read the non-local copy"
        assert read >= 2 * len(data), f"the OSD read {read} bytes for two downloads of {len(data)}"
        assert server.log().count(f"image {image_id}: bytes 0-{len(data) - 1} sent from rbd://{lab.fsid}") == 2
        shown = http_request_json(server, glance, image_id)
        assert shown["direct_url"] == f"rbd://{lab.fsid}/{lab.pool}/{image_id}/snap"
        assert metric(server, 'locproxy_copy_bytes_total{copy="local"}') == 2 * len(data)
        assert metric(server, 'locproxy_copy_bytes_total{copy="remote"}') == 2 * len(data)


def test_a_copy_task_that_fails_warns_once_and_backs_off(ceph_glance: GlanceServer, ceph_lab: CephCluster,
                                                          tmp_path: Path) -> None:
    """The local cluster's monitor is down: Glance's rbd store cannot connect
    (``rados_connect_timeout`` 10 s) and the copy fails. (A full pool cannot be had here: pool
    quotas need a ceph-mgr, which only these rows start.)"""
    glance, lab = ceph_glance, ceph_lab
    data = os.urandom(16 * MiB)
    image_id = web_only_image(glance, data, "promote-rbd-down")
    lab.stop(MON_NAME)
    try:
        with rbd_sidecar(glance, lab, tmp_path, "down") as server:
            for _ in range(6):
                download(server, glance, image_id, data)  # downloads unaffected (the web copy)
            wait_for(lambda: metric(server, 'locproxy_promotions_total{event="failed"}') == 1, "the failed copy",
                     timeout=180)
            for _ in range(2):
                download(server, glance, image_id, data)
            time.sleep(1.0)
            warnings = [line for line in server.log().splitlines() if " WARNING " in line]
            assert len(warnings) == 1, warnings
            # Glance either fails the task (os_glance_failed_import) or, busy
            # with the connection to the monitor, answers the import late
            # (keystoneauth's timeout): a failure either way.
            assert f"image {image_id}: copy into store ceph1 failed (" in warnings[0], warnings[0]
            assert "next try after 600 s" in warnings[0]
            assert metric(server, 'locproxy_promotions_total{event="failed"}') == 1, "backed off: asked once"
            assert "ceph1" not in stores(glance, image_id)
            print(f"copy task failed: {warnings[0]}")
    finally:
        lab.start(MON_NAME)
        lab.wait_ready(OSD_NAME)
    found = tasks(glance, image_id)
    # Glance may have taken the import it answered late, and finished it once
    # the monitor was back: then the image is local now, and read so.
    print(f"after the outage: copy tasks {[(task['status'], task.get('message')) for task in found]}, "
          f"stores {stores(glance, image_id)}")
    assert len(found) <= 1


MGR_NAME = "mgr.x"


@contextlib.contextmanager
def running_mgr(lab: CephCluster) -> Iterator[None]:
    """A ceph-mgr for the lab (pool usage, hence pool quotas, need one), stopped by its pid after."""
    if shutil.which("ceph-mgr") is None:
        pytest.skip("ceph-mgr is not installed (apt-get install ceph-mgr): pool quotas need it")
    data = lab.workdir / "mgr-x"
    data.mkdir(exist_ok=True)
    lab.daemons[MGR_NAME] = Daemon(MGR_NAME, ["ceph-mgr", "-c", str(lab.conf), "-f", "-i", "x", "--mgr-data",
                                              str(data)], lab.workdir / "log" / "mgr.x.out")
    lab.start(MGR_NAME, wait=False)
    try:
        wait_for(lambda: json.loads(lab.ceph("mgr", "stat", "--format=json")).get("available"), "ceph-mgr",
                 timeout=90)
        yield
    finally:
        lab.stop(MGR_NAME)
        del lab.daemons[MGR_NAME]


def pool_full(lab: CephCluster) -> bool:
    return "full_quota" in lab.ceph("osd", "pool", "ls", "detail")


def test_a_full_pool_fails_the_copy_with_one_warning(ceph_glance: GlanceServer, ceph_lab: CephCluster,
                                                     tmp_path: Path) -> None:
    """The local store's pool over its quota: Glance's rbd write fails
    (EDQUOT), the task fails and lists ceph1 in os_glance_failed_import."""
    glance, lab = ceph_glance, ceph_lab
    data = os.urandom(16 * MiB)
    image_id = web_only_image(glance, data, "promote-rbd-full")
    with running_mgr(lab):
        lab.create_rbd_image(f"filler-{image_id[:8]}", os.urandom(4 * MiB))
        lab.ceph("osd", "pool", "set-quota", lab.pool, "max_bytes", str(1 * MiB))
        try:
            wait_for(lambda: pool_full(lab), "the pool to be full (quota)", timeout=120)
            with rbd_sidecar(glance, lab, tmp_path, "full") as server:
                for _ in range(6):
                    download(server, glance, image_id, data)  # downloads unaffected
                wait_for(lambda: metric(server, 'locproxy_promotions_total{event="failed"}') == 1,
                         "the failed copy", timeout=180)
                download(server, glance, image_id, data)
                time.sleep(1.0)
                warnings = [line for line in server.log().splitlines() if " WARNING " in line]
                assert len(warnings) == 1, warnings
                assert f"image {image_id}: copy into store ceph1 failed (the copy ended without the store" \
                    in warnings[0], warnings[0]
                assert "next try after 600 s" in warnings[0]
                assert metric(server, 'locproxy_promotions_total{event="started"}') == 1, "asked once"
                image = glance.get_image(image_id)
                assert "ceph1" not in image["stores"], image
                found = tasks(glance, image_id)
                print(f"full pool: {warnings[0]}\ntasks: {[(t['status'], t.get('message')) for t in found]}, "
                      f"os_glance_failed_import={image.get('os_glance_failed_import')!r}")
                assert [task["status"] for task in found] == ["failure"], found
        finally:
            lab.ceph("osd", "pool", "set-quota", lab.pool, "max_bytes", "0")


def http_request_json(server: GunicornServer, glance: GlanceServer, image_id: str) -> dict:
    from tests.support.client import http_request

    resp = http_request(f"{server.url}/v2/images/{image_id}", headers=glance.headers(roles=("member", "reader")))
    assert resp.status == 200, resp.body[:300]
    return resp.json()
