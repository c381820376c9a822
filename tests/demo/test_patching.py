"""JSON-patch in the demo API (``locproxy.demo.patching``): properties and locations,
atomic and safe under concurrency."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from webtest import TestApp

from locproxy.demo import (
    DemoImageAPI,
    DemoSetup,
    location,
)
from locproxy.rewrite import JSON_PATCH_TYPES
from tests.support.demo import (
    CIRROS,
    MOTD,
    OWNER,
    PATCH_TYPE,
    PRIVATE,
    QUEUED,
    RETIRED,
    UNKNOWN,
    file_url,
    patch,
)

# -- patch: properties ------------------------------------------------------------------------

def test_patch_properties(app: TestApp, demo: DemoSetup) -> None:
    ops = [
        {"op": "replace", "path": "/name", "value": "renamed"},
        {"op": "add", "path": "/hw_disk_bus", "value": "virtio"},
        {"op": "add", "path": "/tags", "value": ["a", "b"]},
        {"op": "replace", "path": "/min_ram", "value": 512},
    ]
    response = patch(app, CIRROS, ops)
    assert response.headers["Content-Type"] == "application/json"
    image = response.json
    assert (image["name"], image["hw_disk_bus"], image["tags"], image["min_ram"]) == (
        "renamed", "virtio", ["a", "b"], 512)
    assert image == demo.api.image(CIRROS)
    image = patch(app, CIRROS, [{"op": "remove", "path": "/hw_disk_bus"}]).json
    assert "hw_disk_bus" not in image


def test_patch_sets_updated_at(tmp_path: Path) -> None:
    api = DemoImageAPI(clock=iter(["t0", "t1"]).__next__)
    image_id = api.add_image(name="x")
    image = patch(TestApp(api, lint=True), image_id, [{"op": "replace", "path": "/name", "value": "y"}]).json
    assert (image["created_at"], image["updated_at"]) == ("t0", "t1")


def test_patch_accepts_v20_media_type_with_parameters(app: TestApp) -> None:
    response = app.patch(f"/v2/images/{CIRROS}", json.dumps([{"op": "replace", "path": "/name", "value": "n"}]),
                         content_type="application/openstack-images-v2.0-json-patch; charset=UTF-8")
    assert response.json["name"] == "n"


@pytest.mark.parametrize("content_type", [
    pytest.param("application/json", id="json"),
    pytest.param("application/json-patch+json", id="rfc6902"),
])
def test_patch_unsupported_media_type_is_415(app: TestApp, content_type: str) -> None:
    response = app.patch(f"/v2/images/{CIRROS}", "[]", content_type=content_type, status=415)
    assert response.headers["Accept-Patch"] == ", ".join(JSON_PATCH_TYPES)
    assert content_type in response.text


@pytest.mark.parametrize(("body", "message"), [
    pytest.param(b"{nope", "Malformed JSON", id="malformed-json"),
    pytest.param(b'{"op": "add"}', "must be a JSON array", id="not-a-list"),
    pytest.param(b'["add"]', "Operations must be JSON objects", id="op-not-object"),
    pytest.param(b'[{"op": "move", "path": "/name", "from": "/x"}]', "Invalid operation: 'move'", id="move"),
    pytest.param(b'[{"path": "/name", "value": "x"}]', "Invalid operation: None", id="missing-op"),
    pytest.param(b'[{"op": "replace", "path": "/name"}]', "requires a 'value'", id="missing-value"),
    pytest.param(b'[{"op": "replace", "path": "name", "value": "x"}]', "Invalid JSON pointer", id="relative-path"),
    pytest.param(b'[{"op": "replace", "value": "x"}]', "Invalid JSON pointer", id="missing-path"),
    pytest.param(b'[{"op": "replace", "path": "/a/b", "value": "x"}]', "Invalid JSON pointer for this resource",
                 id="nested-path"),
    pytest.param(b'[{"op": "replace", "path": "/min_disk", "value": "big"}]', "Invalid value for 'min_disk'",
                 id="bad-value"),
])
def test_patch_bad_patch_is_400(app: TestApp, demo: DemoSetup, body: bytes, message: str) -> None:
    before = demo.api.image(CIRROS)
    response = app.patch(f"/v2/images/{CIRROS}", body, content_type=PATCH_TYPE, status=400)
    assert message in response.text
    assert demo.api.image(CIRROS) == before


@pytest.mark.parametrize(("op", "status", "message"), [
    pytest.param({"op": "replace", "path": "/status", "value": "active"}, 403, "Attribute 'status' is read-only.",
                 id="read-only"),
    pytest.param({"op": "remove", "path": "/name"}, 403, "Property name may not be removed.", id="remove-core"),
    pytest.param({"op": "remove", "path": "/nope"}, 409, "Property nope does not exist.", id="remove-missing"),
    pytest.param({"op": "replace", "path": "/nope", "value": "x"}, 409, "Property nope does not exist.",
                 id="replace-missing"),
    pytest.param({"op": "replace", "path": "/owner", "value": "x"}, 403, "Owner can't be updated by non admin.",
                 id="owner"),
])
def test_patch_refusals(app: TestApp, op: dict[str, Any], status: int, message: str) -> None:
    assert message in patch(app, CIRROS, [op], status=status).text


def test_patch_is_atomic(app: TestApp, demo: DemoSetup) -> None:
    before = demo.api.image(CIRROS)
    patch(app, CIRROS, [{"op": "replace", "path": "/name", "value": "x"},
                        {"op": "remove", "path": "/nope"}], status=409)
    assert demo.api.image(CIRROS) == before


def test_patch_unknown_or_invisible_image_is_404(app: TestApp) -> None:
    op = [{"op": "replace", "path": "/name", "value": "x"}]
    patch(app, UNKNOWN, op, status=404)
    patch(app, PRIVATE, op, status=404)
    assert patch(app, PRIVATE, op, headers=OWNER).json["name"] == "x"


# -- patch: locations ------------------------------------------------------------------------

NEW = {"url": "rbd://pool/new", "metadata": {"store": "ceph", "weight": 7}}


@pytest.mark.parametrize(("path", "expected_index"), [
    pytest.param("/locations/-", 2, id="append"),
    pytest.param("/locations/0", 0, id="insert-first"),
    pytest.param("/locations/1", 1, id="insert-middle"),
    pytest.param("/locations/9", 2, id="past-the-end-appends"),
])
def test_patch_add_location(app: TestApp, demo: DemoSetup, path: str, expected_index: int) -> None:
    before = demo.api.image(CIRROS)["locations"]
    image = patch(app, CIRROS, [{"op": "add", "path": path, "value": NEW}]).json
    expected = list(before)
    expected.insert(expected_index, NEW)
    assert image["locations"] == expected
    assert image["stores"] == ",".join(loc["metadata"]["store"] for loc in expected)


@pytest.mark.parametrize(("path", "kept"), [
    pytest.param("/locations/0", [1, 2], id="first"),
    pytest.param("/locations/1", [0, 2], id="middle"),
    pytest.param("/locations/-", [0, 1], id="last"),
])
def test_patch_remove_location_indexes_upstream_order(app: TestApp, demo: DemoSetup, path: str,
                                                      kept: list[int]) -> None:
    patch(app, CIRROS, [{"op": "add", "path": "/locations/-", "value": NEW}])
    before = demo.api.image(CIRROS)["locations"]
    image = patch(app, CIRROS, [{"op": "remove", "path": path}]).json
    assert image["locations"] == [before[i] for i in kept]
    assert image["direct_url"] == before[kept[0]]["url"]


def test_patch_replace_locations(app: TestApp, demo: DemoSetup) -> None:
    new = [NEW, location(file_url(demo.store_a, CIRROS), "fast-disk")]
    image = patch(app, CIRROS, [{"op": "replace", "path": "/locations", "value": new}]).json
    assert image["locations"] == new
    assert (image["stores"], image["direct_url"]) == ("ceph,fast-disk", "rbd://pool/new")


def test_patch_replace_locations_with_empty_list_queues_image(app: TestApp) -> None:
    image = patch(app, MOTD, [{"op": "replace", "path": "/locations", "value": []}]).json
    assert (image["status"], image["size"], image["locations"]) == ("queued", None, [])
    app.get(f"/v2/images/{MOTD}/file", status=204)


def test_patch_add_location_activates_queued_image(app: TestApp, demo: DemoSetup) -> None:
    value = location(file_url(demo.store_a, MOTD), "fast-disk")
    image = patch(app, QUEUED, [{"op": "add", "path": "/locations/-", "value": value}]).json
    motd = demo.data["motd-text"]
    assert (image["status"], image["size"], image["checksum"]) == ("active", len(motd), hashlib.md5(motd).hexdigest())
    assert app.get(f"/v2/images/{QUEUED}/file").body == motd


def test_patch_unreadable_location_activates_without_size(app: TestApp) -> None:
    image = patch(app, QUEUED, [{"op": "add", "path": "/locations/0", "value": NEW}]).json
    assert (image["status"], image["size"]) == ("active", None)
    assert "no location could be read" in app.get(f"/v2/images/{QUEUED}/file", status=503).text


@pytest.mark.parametrize(("image_id", "op", "status", "message"), [
    pytest.param(CIRROS, {"op": "add", "path": "/locations/x", "value": NEW}, 400,
                 "Invalid position for adding a location.", id="add-bad-position"),
    pytest.param(CIRROS, {"op": "remove", "path": "/locations/2"}, 400,
                 "Invalid position for removing a location.", id="remove-out-of-range"),
    pytest.param(CIRROS, {"op": "remove", "path": "/locations/-1"}, 400,
                 "Invalid position for removing a location.", id="remove-negative"),
    pytest.param(CIRROS, {"op": "add", "path": "/locations", "value": NEW}, 400,
                 "needs a position", id="add-without-position"),
    pytest.param(CIRROS, {"op": "add", "path": "/locations/-", "value": {"url": "rbd://x"}}, 400,
                 "'metadata' must be an object", id="missing-metadata"),
    pytest.param(CIRROS, {"op": "add", "path": "/locations/-", "value": {"url": 3, "metadata": {}}}, 400,
                 "'url' must be a URL string", id="bad-url"),
    pytest.param(CIRROS, {"op": "add", "path": "/locations/-", "value": "rbd://x"}, 400,
                 "expected an object", id="not-an-object"),
    pytest.param(CIRROS, {"op": "replace", "path": "/locations", "value": {"url": "rbd://x"}}, 400,
                 "needs path /locations and a list value", id="replace-not-list"),
    pytest.param(CIRROS, {"op": "replace", "path": "/locations/0", "value": NEW}, 400,
                 "needs path /locations and a list value", id="replace-one"),
    pytest.param(RETIRED, {"op": "add", "path": "/locations/-", "value": NEW}, 409,
                 "It's not allowed to add locations if image status is deactivated.", id="add-deactivated"),
    pytest.param(RETIRED, {"op": "remove", "path": "/locations/0"}, 409,
                 "It's not allowed to remove locations if image status is deactivated.", id="remove-deactivated"),
])
def test_patch_location_errors(app: TestApp, image_id: str, op: dict[str, Any], status: int, message: str) -> None:
    assert message in patch(app, image_id, [op], status=status).text


def test_patch_duplicate_location_is_400_without_credentials(app: TestApp, demo: DemoSetup) -> None:
    swift = demo.api.image(PRIVATE)["locations"][0]
    response = patch(app, PRIVATE, [{"op": "add", "path": "/locations/-", "value": swift}], status=400, headers=OWNER)
    assert "already exists" in response.text
    assert "s3cret" not in response.text


def test_patch_cannot_remove_last_location(app: TestApp) -> None:
    patch(app, MOTD, [{"op": "remove", "path": "/locations/0"}])
    response = patch(app, MOTD, [{"op": "remove", "path": "/locations/0"}], status=403)
    assert "Cannot remove last location in the image." in response.text


def test_patch_locations_forbidden_when_hidden() -> None:
    api = DemoImageAPI(show_multiple_locations=False)
    image_id = api.add_image(name="x", data=b"abc", locations=[location("rbd://a/b", "ceph")])
    response = patch(TestApp(api, lint=True), image_id, [{"op": "remove", "path": "/locations/0"}], status=403)
    assert "locations are invisible" in response.text



def test_concurrent_patches_are_not_lost(demo: DemoSetup) -> None:
    app = TestApp(demo.api, lint=True)

    def add_properties(worker: int) -> None:
        for n in range(20):
            patch(app, CIRROS, [{"op": "add", "path": f"/p{worker}_{n}", "value": "v"}])

    threads = [threading.Thread(target=add_properties, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    image = demo.api.image(CIRROS)
    assert {f"p{w}_{n}" for w in range(4) for n in range(20)} <= set(image)
    assert demo.api.calls["PATCH image"] == 80
