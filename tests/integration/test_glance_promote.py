"""Promotion into the site's own store (issue 22) against a real Glance 33.

The setup: the session's Glance lab (``tests/support/glance``: stores
``fs1``, ``fs2`` (file) and ``web`` (http, a loopback server that records
every request)). Each image is at first only in ``web``, standing in for
another site's store; ``fs2`` (a file store) stands in for this site's own
store (``local_stores = fs2``): the lab's Ceph is not used here. The
sidecars (gunicorn, ``etc/paste.ini``) read ``web`` over http and ``fs2``
from its directory, local copies first (``weight``: fs2 100, web 1).

Identity: the lab's test-only ``tokenauth`` filter, not a real Keystone;
locproxy's service identity is keystoneauth1's ``admin_token`` plugin with
a lab token (``user:project:roles``), so the request path is the real one
(keystoneauth1 session, ``X-Auth-Token``) while Glance's policy sees the
roles the token names: ``admin`` (default ``copy_image`` rule) or a bare
``service`` role (refused, then granted by the README's policy line).

Evidence: the web server's request log (a GET of ``/<id>.raw`` is a read of
the non-local copy), Glance's image (``stores``, ``direct_url``) and task
list, the sidecar's log and ``/metrics``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pty
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support.client import Fetched, http_request
from tests.support.glance.config import locproxy_paste_ini
from tests.support.glance.server import GlanceServer
from tests.support.processes import wait_until
from tests.support.servers import REPO_ROOT, GunicornServer, run_gunicorn

pytestmark = pytest.mark.integration

PASTE_INI = REPO_ROOT / "etc" / "paste.ini"
MiB = 1024 * 1024
OWNER = ("member", "reader")
ADMIN_SERVICE = "locproxy-svc:service-project:admin"
SERVICE_ONLY = "locproxy-svc:service-project:service,reader"  # reader: get_image needs it
POLICY_LINE = '"copy_image": "role:admin or role:service"\n'  # the README's override
WAIT = 60.0


def web_only_image(glance: GlanceServer, data: bytes, name: str, visibility: str = "private") -> str:
    """An active image whose only copy is the ``web`` store's."""
    created = glance.request("POST", "/v2/images", json_body={"name": name, "disk_format": "raw",
                                                              "container_format": "bare", "visibility": visibility})
    assert created.status == 201, created.body[:300]
    image_id = created.json()["id"]
    url = glance.web.put(f"{image_id}.raw", data)
    glance.add_location_api(image_id, url, validation_data={"os_hash_algo": "sha512",
                                                            "os_hash_value": hashlib.sha512(data).hexdigest()})
    assert glance.get_image(image_id)["stores"] == "web"
    return image_id


@contextlib.contextmanager
def sidecar(glance: GlanceServer, tmp: Path, name: str, *, token: str = ADMIN_SERVICE, after: int = 2,
            **extra: str) -> Iterator[GunicornServer]:
    options = {
        "upstream": glance.url, "location_strategy": "weight", "store_weights": "fs2:100, web:1",
        "file_roots": str(glance.store_dirs["fs2"]), "allowed_hosts": f"127.0.0.1:{glance.web.port}",
        "metrics_file": str(tmp / f"{name}.sqlite"), "local_stores": "fs2", "promote": "auto",
        "promote_after": str(after), "promote_poll_interval": "0.3", "service_auth_type": "admin_token",
        "service_endpoint": glance.url, "service_token": token, **extra,
    }
    args = [arg for key, value in options.items() for arg in ("--paste-global", f"{key}={value}")]
    with run_gunicorn(PASTE_INI, threads=8, extra_args=args) as server:
        yield server


def download(server: GunicornServer, glance: GlanceServer, image_id: str, data: bytes,
             roles: tuple[str, ...] = OWNER) -> Fetched:
    resp = http_request(f"{server.url}/v2/images/{image_id}/file", headers=glance.headers(roles=roles), timeout=60)
    assert resp.status == 200, resp.body[:300]
    assert resp.body == data, "exact bytes"
    return resp


def web_reads(glance: GlanceServer, image_id: str) -> int:
    """GETs of the image's web copy (Glance's own reads while the location was added included)."""
    return sum(1 for request in glance.web.requests if request[:2] == ("GET", f"/{image_id}.raw"))


def metric(server: GunicornServer, series: str) -> float:
    resp = http_request(server.url + "/metrics")
    for line in resp.body.decode().splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return wait_until(predicate, timeout=timeout, interval=0.2, what=what)


def stores(glance: GlanceServer, image_id: str) -> list[str]:
    return glance.get_image(image_id)["stores"].split(",")


def tasks(glance: GlanceServer, image_id: str) -> list[dict]:
    """The image's copy tasks (``api_image_import``; adding the web location was a ``location_import``)."""
    return [task for task in glance.wait_tasks(image_id, timeout=WAIT) if task["type"] == "api_image_import"]


@pytest.fixture
def data() -> bytes:
    return os.urandom(8 * MiB + 123)


def test_promoted_after_promote_after_downloads_then_read_locally(glance_server: GlanceServer, tmp_path: Path,
                                                                   data: bytes) -> None:
    glance = glance_server
    image_id = web_only_image(glance, data, "promote-basic")
    base = web_reads(glance, image_id)
    with sidecar(glance, tmp_path, "a") as server:
        download(server, glance, image_id, data)
        assert web_reads(glance, image_id) - base == 1 and stores(glance, image_id) == ["web"]
        assert metric(server, "locproxy_promotions_total{event=\"started\"}") == 0
        download(server, glance, image_id, data)  # the second: promote_after = 2
        wait_for(lambda: "fs2" in stores(glance, image_id), "Glance to list fs2")
        found = tasks(glance, image_id)
        assert [task["status"] for task in found] == ["success"], found
        wait_for(lambda: "copy into store fs2: done" in server.log(), "the promoter to see it done")
        assert (glance.store_dirs["fs2"] / image_id).read_bytes() == data
        seen = web_reads(glance, image_id)
        assert seen - base == 3, "two downloads and Glance's copy read the web copy"
        local_before = metric(server, 'locproxy_copy_bytes_total{copy="local"}')
        for _ in range(3):
            download(server, glance, image_id, data)
        assert web_reads(glance, image_id) == seen, "later downloads never read the non-local copy"
        assert metric(server, 'locproxy_copy_bytes_total{copy="local"}') - local_before == 3 * len(data)
        assert metric(server, 'locproxy_copy_bytes_total{copy="remote"}') == 2 * len(data)
        shown = http_request(f"{server.url}/v2/images/{image_id}", headers=glance.headers(roles=OWNER)).json()
        assert shown["direct_url"] == f"file://{glance.store_dirs['fs2']}/{image_id}"
        assert metric(server, 'locproxy_promotions_total{event="started"}') == 1
        assert metric(server, 'locproxy_promotions_total{event="done"}') == 1
        assert "WARNING" not in server.log()


def test_inside_glances_pipeline_promotes_too(glance_server: GlanceServer, tmp_path: Path, data: bytes) -> None:
    """The filter in Glance's own paste pipeline: the promoter asks Glance's
    endpoint (its own server) from a thread of its own."""
    glance = glance_server
    image_id = web_only_image(glance, data, "promote-pipeline")
    base = web_reads(glance, image_id)
    options = {"location_strategy": "weight", "store_weights": "fs2:100, web:1",
               "file_roots": str(glance.store_dirs["fs2"]), "allowed_hosts": f"127.0.0.1:{glance.web.port}",
               "metrics_file": str(tmp_path / "pipeline.sqlite"), "local_stores": "fs2", "promote": "auto",
               "promote_after": "2", "promote_poll_interval": "0.3", "service_auth_type": "admin_token",
               "service_endpoint": glance.url, "service_token": ADMIN_SERVICE}
    with glance.paste_pipeline(locproxy_paste_ini(**options)):
        for _ in range(2):
            resp = http_request(f"{glance.url}/v2/images/{image_id}/file", headers=glance.headers(roles=OWNER),
                                timeout=60)
            assert resp.status == 200 and resp.body == data
        wait_for(lambda: "fs2" in stores(glance, image_id), "Glance to list fs2")
        assert [task["status"] for task in tasks(glance, image_id)] == ["success"]
        seen = web_reads(glance, image_id)
        assert seen - base == 3, "two downloads and Glance's copy read the web copy"
        resp = http_request(f"{glance.url}/v2/images/{image_id}/file", headers=glance.headers(roles=OWNER), timeout=60)
        assert resp.status == 200 and resp.body == data
        assert web_reads(glance, image_id) == seen, "the later download read fs2"
        wait_for(lambda: "copy into store fs2: done" in glance.glance_log_path.read_text(errors="replace"),
                 "the promoter's line in Glance's log")


def test_two_sidecars_crossing_together_create_one_task(glance_server: GlanceServer, tmp_path: Path) -> None:
    glance = glance_server
    data = os.urandom(48 * MiB)  # long enough a copy that the second ask meets the first one's lock
    image_id = web_only_image(glance, data, "promote-single-flight")
    with sidecar(glance, tmp_path, "a") as one, sidecar(glance, tmp_path, "b") as two:
        for server in (one, two):
            download(server, glance, image_id, data)
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def cross(server: GunicornServer) -> None:
            try:
                barrier.wait(timeout=10)
                download(server, glance, image_id, data)
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=cross, args=(server,)) for server in (one, two)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        wait_for(lambda: "fs2" in stores(glance, image_id), "Glance to list fs2", timeout=120)
        for server in (one, two):
            wait_for(lambda s=server: "copy into store fs2: " in s.log(), "both promoters to end")
        found = tasks(glance, image_id)
        assert len(found) == 1 and found[0]["status"] == "success", found
        started = [metric(s, 'locproxy_promotions_total{event="started"}') for s in (one, two)]
        waited = [metric(s, 'locproxy_promotions_total{event="in_progress"}') for s in (one, two)]
        assert sorted(started) == [0, 1], (started, waited, one.log()[-2000:], two.log()[-2000:])
        print(f"single flight: started {started}, in_progress (409) {waited}; other: "
              f"{[line for s in (one, two) for line in s.log().splitlines() if 'copy into store' in line]}")
        assert "WARNING" not in one.log() + two.log()


def test_with_a_site_cache_per_node_its_hits_count_and_the_next_node_fills_locally(
        glance_server: GlanceServer, tmp_path: Path, data: bytes) -> None:
    """The realistic site: each sidecar its own ``cache_dir``. Node a's
    second download is a cache hit and still counts (the site lacks its
    copy): promoted. Node b's cache then fills from the local store."""
    glance = glance_server
    image_id = web_only_image(glance, data, "promote-cached")
    base = web_reads(glance, image_id)
    caches = [tmp_path / "cache-a", tmp_path / "cache-b"]
    for cache in caches:
        cache.mkdir()
    with sidecar(glance, tmp_path, "a", cache_dir=str(caches[0]), cache_max_size="1G") as a:
        download(a, glance, image_id, data)
        assert web_reads(glance, image_id) - base == 1 and stores(glance, image_id) == ["web"]
        assert "committed" in a.log_after("committed"), "node a's cache committed its fill"
        stranger = glance.headers(project="another-project", roles=OWNER, user="bob")
        refused = http_request(f"{a.url}/v2/images/{image_id}/file", headers=stranger)
        assert refused.status == 404 and data[:64] not in refused.body, "no cache hit for a client refused"
        assert metric(a, "locproxy_promotion_downloads_total") == 1, "a refused client never counts"
        download(a, glance, image_id, data)  # a cache hit: the second count of promote_after = 2
        assert metric(a, 'locproxy_cache_requests_total{result="hit"}') == 1
        assert metric(a, "locproxy_promotion_downloads_total") == 2
        wait_for(lambda: "fs2" in stores(glance, image_id), "Glance to list fs2")
        assert [task["status"] for task in tasks(glance, image_id)] == ["success"]
        assert web_reads(glance, image_id) - base == 2, "node a's fill and Glance's copy read the web copy"
        assert metric(a, 'locproxy_copy_bytes_total{copy="remote"}') == len(data)
        assert "WARNING" not in a.log()
    with sidecar(glance, tmp_path, "b", cache_dir=str(caches[1]), cache_max_size="1G") as b:
        download(b, glance, image_id, data)
        download(b, glance, image_id, data)
        assert web_reads(glance, image_id) - base == 2, "node b never read the non-local copy"
        assert metric(b, 'locproxy_copy_bytes_total{copy="local"}') == len(data), "its fill read fs2, once"
        assert metric(b, "locproxy_promotion_downloads_total") == 0, "a promoted image no longer counts"
        assert "WARNING" not in b.log()


def test_a_client_that_got_404_triggers_nothing(glance_server: GlanceServer, tmp_path: Path, data: bytes) -> None:
    glance = glance_server
    image_id = web_only_image(glance, data, "promote-404")
    stranger = glance.headers(project="another-project", roles=OWNER, user="bob")
    with sidecar(glance, tmp_path, "a", after=1) as server:
        for _ in range(3):
            resp = http_request(f"{server.url}/v2/images/{image_id}/file", headers=stranger)
            assert resp.status == 404, resp.body[:300]
        time.sleep(1.0)
        assert metric(server, "locproxy_promotion_downloads_total") == 0
        assert tasks(glance, image_id) == []
        assert metric(server, "locproxy_copy_bytes_total{copy=\"remote\"}") == 0
        download(server, glance, image_id, data)  # the owner: counted, with promote_after = 1
        wait_for(lambda: "fs2" in stores(glance, image_id), "Glance to list fs2")
        assert len(tasks(glance, image_id)) == 1


def test_refused_copy_image_one_warning_back_off_then_the_policy_line(glance_server: GlanceServer,
                                                                      tmp_path: Path, data: bytes) -> None:
    glance = glance_server
    # public: a bare service role sees it (a private image of another
    # project answers it 404, whatever copy_image says: see the next test)
    image_id = web_only_image(glance, data, "promote-refused", visibility="public")
    with sidecar(glance, tmp_path, "a", token=SERVICE_ONLY) as server:
        for _ in range(8):
            download(server, glance, image_id, data)  # downloads unaffected
        wait_for(lambda: metric(server, 'locproxy_promotions_total{event="failed"}') == 1, "the refusal")
        time.sleep(1.0)
        for _ in range(4):
            download(server, glance, image_id, data)
        warnings = [line for line in server.log().splitlines() if " WARNING " in line]
        assert len(warnings) == 1, warnings
        assert f"image {image_id}: copy into store fs2 failed (HTTP 403" in warnings[0]
        assert "next try after 300 s" in warnings[0]
        assert metric(server, 'locproxy_promotions_total{event="failed"}') == 1, "backed off: asked once"
        assert stores(glance, image_id) == ["web"]
        assert SERVICE_ONLY not in server.log(), "the service token is never logged"
        assert tasks(glance, image_id) == []
    policy = glance.policy_path.read_text()
    glance.policy_path.write_text(policy + POLICY_LINE)  # oslo.policy re-reads a changed file
    try:
        with sidecar(glance, tmp_path, "b", token=SERVICE_ONLY) as server:
            for _ in range(2):
                download(server, glance, image_id, data)
            wait_for(lambda: "fs2" in stores(glance, image_id), "Glance to list fs2 (service role granted)")
            assert len(tasks(glance, image_id)) == 1
    finally:
        glance.policy_path.write_text(policy)


def test_a_private_image_the_service_identity_cannot_see_is_backed_off(glance_server: GlanceServer,
                                                                        tmp_path: Path, data: bytes) -> None:
    glance = glance_server
    image_id = web_only_image(glance, data, "promote-invisible")
    policy = glance.policy_path.read_text()
    glance.policy_path.write_text(policy + POLICY_LINE)
    try:
        with sidecar(glance, tmp_path, "a", token=SERVICE_ONLY) as server:
            for _ in range(6):
                download(server, glance, image_id, data)
            wait_for(lambda: metric(server, 'locproxy_promotions_total{event="failed"}') == 1, "the 404")
            time.sleep(1.0)
            warnings = [line for line in server.log().splitlines() if " WARNING " in line]
            assert len(warnings) == 1 and "HTTP 404" in warnings[0] and "cannot see the image" in warnings[0]
            assert metric(server, 'locproxy_promotions_total{event="failed"}') == 1
    finally:
        glance.policy_path.write_text(policy)


def test_promote_command_copies_with_progress_on_a_terminal(glance_server: GlanceServer, tmp_path: Path,
                                                            data: bytes) -> None:
    glance = glance_server
    image_id = web_only_image(glance, data, "promote-command")
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN_SERVICE + "\n")
    command = [sys.executable, "-m", "locproxy.cli", "promote", image_id, "--to", "fs2", "--url", glance.url,
               "--token-file", str(token_file), "--poll-interval", "0.2"]
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal,
                              timeout=120, cwd=REPO_ROOT)
        os.close(terminal)
        terminal = -1
        shown = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(controller, 65536):
                shown += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert proc.returncode == 0, shown.decode(errors="replace")
    assert proc.stdout.decode().startswith(f"{image_id}: in store fs2 (done, ")
    assert f"{image_id}: copying into fs2".encode() in shown, shown
    assert "fs2" in stores(glance, image_id)
    tasks(glance, image_id)
    again = subprocess.run(command, capture_output=True, timeout=60, cwd=REPO_ROOT)
    assert again.returncode == 0 and b"the store holds it already" in again.stdout
    token_file.write_text(SERVICE_ONLY)
    other = web_only_image(glance, data, "promote-command-refused", visibility="public")
    refused = subprocess.run(command[:4] + [other] + command[5:], capture_output=True, timeout=60, cwd=REPO_ROOT)
    assert refused.returncode == 1 and f"{other}: NOT in store fs2 (HTTP 403".encode() in refused.stderr
    assert b"locproxy-svc" not in refused.stdout + refused.stderr, "the token is never printed"
