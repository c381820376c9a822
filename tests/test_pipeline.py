"""Deployment: paste loading of etc/paste.ini, entry points, the sidecar under
gunicorn in front of a real upstream socket, live strategy toggling, and
flat memory on a large download."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from importlib import metadata
from pathlib import Path

import pytest
from paste.deploy import loadapp
from webtest import TestApp

from locproxy.demo import DEMO_IMAGE_IDS, build_demo, serve_static, serve_wsgi, web_dir_of
from tests.support.client import http_request
from tests.support.servers import REPO_ROOT, run_gunicorn

PASTE_INI = REPO_ROOT / "etc" / "paste.ini"
CIRROS = DEMO_IMAGE_IDS["cirros-demo"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("demo")
    with serve_static(web_dir_of(str(workdir))) as web:
        setup = build_demo(str(workdir), web.url)
        with serve_wsgi(setup.api) as upstream:
            yield setup, upstream.url, web.url


def stores(image: dict) -> list[str]:
    return [location["metadata"]["store"] for location in image["locations"]]


def test_entry_points_are_registered():
    entry_points = metadata.distribution("locproxy").entry_points
    registered = {(entry_point.group, entry_point.name): entry_point.value for entry_point in entry_points}
    assert registered[("paste.filter_factory", "locproxy")] == "locproxy.middleware:filter_factory"
    assert registered[("paste.app_factory", "proxy")] == "locproxy.proxy:app_factory"
    assert registered[("console_scripts", "locproxy")] == "locproxy.cli:main"


def test_loadapp_of_etc_paste_ini_rewrites_a_real_upstream(demo):
    setup, upstream, web = demo
    app = loadapp(f"config:{PASTE_INI}", global_conf={
        "upstream": upstream, "location_strategy": "store_type", "store_type_preference": "http, file",
    })
    response = TestApp(app).get(f"/v2/images/{CIRROS}")
    assert stores(response.json) == ["web", "slow-disk", "fast-disk"]
    assert response.json["direct_url"].startswith(web)
    assert stores(setup.api.image(CIRROS)) == ["slow-disk", "web", "fast-disk"], "the upstream is unchanged"


def test_bad_paste_option_fails_at_load_naming_it(demo):
    with pytest.raises(ValueError, match="store_type_preference: unknown store type 'tape'"):
        loadapp(f"config:{PASTE_INI}", global_conf={"store_type_preference": "tape"})


def get_json(url: str, path: str) -> dict:
    response = http_request(url + path, timeout=10)
    assert response.status == 200, response.body
    return response.json()


def paste_globals(**values: str) -> list[str]:
    return [arg for name, value in values.items() for arg in ("--paste-global", f"{name}={value}")]


def test_gunicorn_sidecar_serves_reordered_json_and_verified_downloads(demo):
    setup, upstream, web = demo
    args = paste_globals(
        upstream=upstream, location_strategy="weight", file_roots=f"{setup.store_a}, {setup.store_b}",
        allowed_hosts=web.split("//")[1],
    )
    with run_gunicorn(PASTE_INI, threads=8, extra_args=args) as sidecar:
        image = get_json(sidecar.url, f"/v2/images/{CIRROS}")
        assert stores(image) == ["fast-disk", "web", "slow-disk"], "the demo's location weights"
        assert image["direct_url"] == image["locations"][0]["url"]
        page = get_json(sidecar.url, "/v2/images?limit=2")
        assert [stores(item) for item in page["images"]] == [
            ["fast-disk", "web", "slow-disk"], ["ceph", "fast-disk", "web"],
        ]
        assert page["next"].startswith("/v2/images?marker=")
        connection = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=10)
        connection.request("GET", f"/v2/images/{CIRROS}/file")
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert hashlib.sha512(body).hexdigest() == image["os_hash_value"]
        assert response.getheader("Content-MD5") == image["checksum"]


def test_config_file_toggles_strategy_of_running_gunicorn_workers(demo, tmp_path: Path):
    """Two workers, each checks the file at most once a second: within 2 s
    every worker answers with the new order; an invalid edit changes nothing."""
    setup, upstream, web = demo
    config = tmp_path / "locproxy.ini"
    config.write_text("[locproxy]\nlocation_strategy = location_order\n")
    args = paste_globals(upstream=upstream, config_file=str(config))
    with run_gunicorn(PASTE_INI, workers=2, threads=4, extra_args=args) as sidecar:
        assert stores(get_json(sidecar.url, f"/v2/images/{CIRROS}")) == ["slow-disk", "web", "fast-disk"]

        config.write_text("[locproxy]\nlocation_strategy = store_type\nstore_type_preference = http\n")
        switched_at = time.monotonic()
        deadline = switched_at + 2.0
        answers: list[list[str]] = []
        while time.monotonic() < deadline:
            answers.append(stores(get_json(sidecar.url, f"/v2/images/{CIRROS}")))
            time.sleep(0.05)
        # Connections are new each time, so both workers answer over the run.
        assert answers[-10:] == [["web", "slow-disk", "fast-disk"]] * 10, answers

        config.write_text("[locproxy]\nlocation_strategy = store_type\nstore_type_preference = floppy\n")
        time.sleep(2.2)
        for _ in range(10):
            assert stores(get_json(sidecar.url, f"/v2/images/{CIRROS}")) == ["web", "slow-disk", "fast-disk"]
        log = sidecar.log()
        assert "store_type_preference: unknown store type 'floppy'" in log
        assert "keeping the previous settings" in log


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


LARGE = 1024 * 1024 * 1024  # 1 GiB, sparse: zeros cost no disk


@pytest.fixture(scope="module")
def large_image(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("large")
    path = root / "large.img"
    with open(path, "wb") as stream:
        stream.truncate(LARGE)
    digest = hashlib.sha512()
    block = bytes(1 << 20)
    for _ in range(LARGE >> 20):
        digest.update(block)
    return root, path, digest.hexdigest()


@pytest.mark.parametrize("backend", ["file", "http"])
def test_large_download_keeps_memory_flat(large_image, backend: str):
    """1 GiB through the verifying stream path: the worker's peak RSS grows
    by far less than the body (chunks of 1 MiB in flight)."""
    root, path, sha512 = large_image

    with serve_static(str(root)) as web:
        url = f"file://{path}" if backend == "file" else f"{web.url}/{path.name}"
        image = {"id": "big", "status": "active", "size": LARGE, "os_hash_algo": "sha512",
                 "os_hash_value": sha512, "locations": [{"url": url, "metadata": {}}]}

        def upstream_app(environ, start_response):
            body = json.dumps(image).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]

        with serve_wsgi(upstream_app) as upstream:
            args = paste_globals(upstream=upstream.url, file_roots=str(root), allowed_hosts=web.url.split("//")[1])
            with run_gunicorn(PASTE_INI, threads=4, extra_args=args) as sidecar:
                children = Path(f"/proc/{sidecar.pid}/task/{sidecar.pid}/children").read_text().split()
                worker = int(children[0])
                get_json(sidecar.url, "/v2/images/big")  # warm up: imports, pools
                before = peak_rss_kib(worker)
                connection = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=60)
                connection.request("GET", "/v2/images/big/file")
                response = connection.getresponse()
                received, digest = 0, hashlib.sha512()
                while chunk := response.read(1 << 20):
                    received += len(chunk)
                    digest.update(chunk)
                connection.close()
                growth_mib = (peak_rss_kib(worker) - before) / 1024
    assert received == LARGE and digest.hexdigest() == sha512
    assert growth_mib < 32, f"worker peak RSS grew by {growth_mib:.1f} MiB for a 1 GiB body"


def test_json_patch_remove_through_the_pipeline_hits_the_copy_the_client_saw(demo):
    """Filter + proxy from etc/paste.ini, real socket to the image API: the
    client deletes "location 0" of the order it was shown."""
    setup, upstream, web = demo
    app = TestApp(loadapp(f"config:{PASTE_INI}", global_conf={
        "upstream": upstream, "location_strategy": "store_type", "store_type_preference": "http, file",
    }))
    image_id = setup.api.add_image(data=b"x" * 1000, locations=[
        {"url": f"file://{setup.store_a}/patch-a", "metadata": {"store": "fast-disk"}},
        {"url": f"{web}/patch-b", "metadata": {"store": "web"}},
        {"url": f"file://{setup.store_b}/patch-c", "metadata": {"store": "slow-disk"}},
    ])
    shown = app.get(f"/v2/images/{image_id}").json
    assert stores(shown) == ["web", "fast-disk", "slow-disk"]
    patched = app.patch(f"/v2/images/{image_id}", json.dumps([{"op": "remove", "path": "/locations/0"}]),
                        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"})
    assert stores(patched.json) == ["fast-disk", "slow-disk"], "web, which the client saw first, is gone"
    assert stores(setup.api.image(image_id)) == ["fast-disk", "slow-disk"]
