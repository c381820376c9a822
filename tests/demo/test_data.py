"""The demo's data (``locproxy.demo.data``): deterministic stores and images."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from locproxy.demo import (
    DEMO_IMAGE_IDS,
    DemoSetup,
    build_demo,
    demo_bytes,
    web_dir_of,
)
from tests.support.demo import (
    CIRROS,
    QUEUED,
    UBUNTU,
    file_url,
    urls,
)

# -- build_demo ---------------------------------------------------------------

def test_build_demo_writes_deterministic_stores(tmp_path: Path) -> None:
    demo = build_demo(str(tmp_path))
    assert demo.store_a == str(tmp_path / "store-a")
    assert demo.store_b == str(tmp_path / "store-b")
    assert demo.web_dir == web_dir_of(str(tmp_path)) == str(tmp_path / "web")
    assert demo.image_ids == DEMO_IMAGE_IDS
    assert demo.data["cirros-demo"] == demo_bytes("cirros-demo", 2 * 1024 * 1024)
    Path(demo.store_a, CIRROS).write_bytes(b"tampered")
    os.remove(Path(demo.web_dir, CIRROS))
    demo = build_demo(str(tmp_path))  # restores missing and altered files
    assert Path(demo.store_a, CIRROS).read_bytes() == demo.data["cirros-demo"]
    assert Path(demo.store_b, CIRROS).read_bytes() == demo.data["cirros-demo"]
    assert Path(demo.web_dir, UBUNTU).read_bytes() == demo.data["ubuntu-demo"]
    assert demo.data["motd-text"].startswith(b"000 locproxy demo")
    assert Path(demo.web_dir, CIRROS).read_bytes() == demo.data["cirros-demo"]
    assert "queued-empty" not in demo.data


@pytest.mark.parametrize(("name", "status", "stores"), [
    pytest.param("cirros-demo", "active", "slow-disk,fast-disk", id="cirros"),
    pytest.param("ubuntu-demo", "active", "ceph,fast-disk", id="ubuntu-rbd-first"),
    pytest.param("motd-text", "active", "slow-disk,fast-disk", id="text"),
    pytest.param("retired-demo", "deactivated", "fast-disk,slow-disk", id="deactivated"),
    pytest.param("private-demo", "active", "swift,fast-disk", id="private"),
])
def test_build_demo_images_without_http(demo: DemoSetup, name: str, status: str, stores: str) -> None:
    image = demo.api.image(demo.image_ids[name])
    assert (image["name"], image["status"], image["stores"]) == (name, status, stores)
    assert image["size"] == len(demo.data[name])
    assert image["checksum"] == hashlib.md5(demo.data[name]).hexdigest()


def test_build_demo_with_http_lists_web_locations(tmp_path: Path) -> None:
    demo = build_demo(str(tmp_path), "http://127.0.0.1:8099/")
    cirros = demo.api.image(CIRROS)
    assert cirros["stores"] == "slow-disk,web,fast-disk"
    assert urls(cirros) == [
        file_url(demo.store_b, CIRROS),
        f"http://127.0.0.1:8099/{CIRROS}",
        file_url(demo.store_a, CIRROS),
    ]
    assert [loc["metadata"]["weight"] for loc in cirros["locations"]] == [10, 50, 100]
    assert demo.api.image(UBUNTU)["locations"][0]["url"].startswith("rbd://")


def test_build_demo_queued_image(demo: DemoSetup) -> None:
    image = demo.api.image(QUEUED)
    assert (image["status"], image["size"], image["checksum"], image["locations"]) == ("queued", None, None, [])
    assert "stores" not in image and "direct_url" not in image
