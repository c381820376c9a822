"""Tests for locproxy.demo: the Glance v2-style demo upstream and its static server."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from webtest import TestApp

from locproxy.demo import (
    DEMO_IMAGE_IDS,
    DemoImageAPI,
    DemoSetup,
    build_demo,
    demo_bytes,
    location,
    serve_static,
    serve_wsgi,
    web_dir_of,
)
from locproxy.rewrite import JSON_PATCH_TYPES

PATCH_TYPE = JSON_PATCH_TYPES[0]
CIRROS = DEMO_IMAGE_IDS["cirros-demo"]
UBUNTU = DEMO_IMAGE_IDS["ubuntu-demo"]
MOTD = DEMO_IMAGE_IDS["motd-text"]
QUEUED = DEMO_IMAGE_IDS["queued-empty"]
RETIRED = DEMO_IMAGE_IDS["retired-demo"]
PRIVATE = DEMO_IMAGE_IDS["private-demo"]
UNKNOWN = "00000000-0000-4000-8000-00000000dead"
OWNER = {"X-Project-Id": "demo-project"}
ADMIN = {"X-Project-Id": "ops", "X-Roles": "member, admin"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def demo(workdir: str) -> DemoSetup:
    # build_demo restores any store file an earlier test removed.
    return build_demo(workdir)


@pytest.fixture
def app(demo: DemoSetup) -> TestApp:
    return TestApp(demo.api, lint=True)


def patch(app: TestApp, image_id: str, ops: list[dict[str, Any]], status: int = 200, **kwargs: Any) -> Any:
    return app.patch(f"/v2/images/{image_id}", json.dumps(ops),
                     content_type=PATCH_TYPE, status=status, **kwargs)


def urls(image: dict[str, Any]) -> list[str]:
    return [loc["url"] for loc in image["locations"]]


def file_url(directory: str, image_id: str) -> str:
    return Path(directory, image_id).resolve().as_uri()


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


# -- show -------------------------------------------------------------------------

def test_show_has_glance_fields(app: TestApp, demo: DemoSetup) -> None:
    response = app.get(f"/v2/images/{CIRROS}")
    assert response.headers["Content-Type"] == "application/json"
    image = response.json
    data = demo.data["cirros-demo"]
    assert image == {
        "id": CIRROS,
        "name": "cirros-demo",
        "status": "active",
        "visibility": "public",
        "owner": "demo-project",
        "size": len(data),
        "virtual_size": None,
        "checksum": hashlib.md5(data).hexdigest(),
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(data).hexdigest(),
        "disk_format": "qcow2",
        "container_format": "bare",
        "created_at": "2024-01-01T12:00:00Z",
        "updated_at": "2024-01-01T12:00:00Z",
        "tags": [],
        "min_disk": 0,
        "min_ram": 0,
        "protected": False,
        "os_hidden": False,
        "file": f"/v2/images/{CIRROS}/file",
        "self": f"/v2/images/{CIRROS}",
        "schema": "/v2/schemas/image",
        "stores": "slow-disk,fast-disk",
        "locations": [
            {"url": file_url(demo.store_b, CIRROS), "metadata": {"store": "slow-disk", "weight": 10}},
            {"url": file_url(demo.store_a, CIRROS), "metadata": {"store": "fast-disk", "weight": 100}},
        ],
        "direct_url": file_url(demo.store_b, CIRROS),
    }


@pytest.mark.parametrize(("show_locations", "show_direct", "present"), [
    pytest.param(True, True, {"locations", "direct_url"}, id="both"),
    pytest.param(False, True, {"direct_url"}, id="direct-url-only"),
    pytest.param(True, False, {"locations"}, id="locations-only"),
    pytest.param(False, False, set(), id="neither"),
])
def test_show_respects_location_flags(show_locations: bool, show_direct: bool, present: set[str]) -> None:
    api = DemoImageAPI(show_multiple_locations=show_locations, show_image_direct_url=show_direct)
    image_id = api.add_image(name="x", data=b"abc", locations=[location("rbd://pool/x", "ceph")])
    image = TestApp(api, lint=True).get(f"/v2/images/{image_id}").json
    assert {"locations", "direct_url"} & set(image) == present
    assert image["stores"] == "ceph"  # multi-store lists stores regardless


def test_show_extra_properties_are_top_level() -> None:
    api = DemoImageAPI()
    image_id = api.add_image(name="x", hw_disk_bus="scsi")
    assert TestApp(api, lint=True).get(f"/v2/images/{image_id}").json["hw_disk_bus"] == "scsi"


@pytest.mark.parametrize(("image_id", "headers", "status"), [
    pytest.param(UNKNOWN, {}, 404, id="unknown"),
    pytest.param(PRIVATE, {}, 404, id="private-anonymous"),
    pytest.param(PRIVATE, {"X-Project-Id": "other"}, 404, id="private-other-project"),
    pytest.param(PRIVATE, OWNER, 200, id="private-owner"),
    pytest.param(PRIVATE, ADMIN, 200, id="private-admin"),
    pytest.param(CIRROS, {"X-Project-Id": "other"}, 200, id="public-other-project"),
])
def test_show_visibility(app: TestApp, image_id: str, headers: dict[str, str], status: int) -> None:
    response = app.get(f"/v2/images/{image_id}", headers=headers, status=status)
    if status == 404:
        assert f"No image found with ID {image_id}" in response.text


def test_error_bodies_are_json_when_asked(app: TestApp) -> None:
    response = app.get(f"/v2/images/{UNKNOWN}", headers={"Accept": "application/json"}, status=404)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json["code"] == "404 Not Found"
    assert f"No image found with ID {UNKNOWN}" in response.json["message"]


# -- routing ------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "allow"), [
    pytest.param("DELETE", "/v2/images", "GET, POST", id="delete-collection"),
    pytest.param("PUT", f"/v2/images/{CIRROS}", "GET, PATCH, DELETE", id="put-image"),
    pytest.param("POST", f"/v2/images/{CIRROS}/file", "GET, HEAD, PUT", id="post-file"),
    pytest.param("GET", f"/v2/images/{CIRROS}/actions/deactivate", "POST", id="get-action"),
    pytest.param("POST", "/versions", "GET", id="post-versions"),
])
def test_wrong_method_is_405(app: TestApp, method: str, path: str, allow: str) -> None:
    response = app.request(path, method=method, status=405)
    assert response.headers["Allow"] == allow


@pytest.mark.parametrize("path", [
    pytest.param("/v1/images", id="v1"),
    pytest.param(f"/v2/images/{CIRROS}/members", id="members"),
    pytest.param("/v2/schemas/image", id="schema"),
])
def test_unknown_path_is_404(app: TestApp, path: str) -> None:
    app.get(path, status=404)


@pytest.mark.parametrize(("path", "status"), [
    pytest.param("/", 300, id="root"),
    pytest.param("/versions", 200, id="versions"),
])
def test_versions(app: TestApp, path: str, status: int) -> None:
    body = app.get(path, status=status).json
    assert body["versions"][0]["status"] == "CURRENT"
    assert body["versions"][0]["links"][0]["href"] == "http://localhost/v2/"


def test_calls_count_requests_by_kind_and_method(app: TestApp, demo: DemoSetup) -> None:
    app.get("/v2/images")
    app.get(f"/v2/images/{CIRROS}")
    app.get(f"/v2/images/{CIRROS}/file")
    app.head(f"/v2/images/{CIRROS}/file")
    app.get(f"/v2/images/{UNKNOWN}/file", status=404)
    app.get("/nowhere", status=404)
    assert demo.api.calls == {
        "images": 1, "GET images": 1,
        "image": 1, "GET image": 1,
        "file": 3, "GET file": 2, "HEAD file": 1,
        "other": 1, "GET other": 1,
    }


# -- auth -----------------------------------------------------------------------------

def test_require_auth_rejects_requests_without_token() -> None:
    api = DemoImageAPI(require_auth=True)
    image_id = api.add_image(name="x", data=b"abc")
    app = TestApp(api, lint=True)
    response = app.get(f"/v2/images/{image_id}", status=401)
    assert response.json == {"error": {"code": 401, "title": "Unauthorized",
                                       "message": "The request you have made requires authentication."}}
    assert response.headers["WWW-Authenticate"].startswith("Keystone uri=")
    app.get(f"/v2/images/{image_id}/file", status=401)
    assert app.get(f"/v2/images/{image_id}", headers={"X-Auth-Token": "t"}).json["id"] == image_id
    assert api.calls["image"] == 2  # a rejected request still reached the upstream


# -- list ---------------------------------------------------------------------------------

def list_ids(app: TestApp, query: str = "", headers: dict[str, str] | None = None) -> list[str]:
    return [image["id"] for image in app.get(f"/v2/images{query}", headers=headers or {}).json["images"]]


PUBLIC_ORDER = [CIRROS, UBUNTU, MOTD, QUEUED, RETIRED]


@pytest.mark.parametrize(("headers", "expected"), [
    pytest.param({}, PUBLIC_ORDER, id="anonymous"),
    pytest.param({"X-Project-Id": "other"}, PUBLIC_ORDER, id="other-project"),
    pytest.param(OWNER, PUBLIC_ORDER + [PRIVATE], id="owner"),
    pytest.param(ADMIN, PUBLIC_ORDER + [PRIVATE], id="admin"),
])
def test_list_shows_visible_images_in_insertion_order(app: TestApp, headers: dict[str, str],
                                                      expected: list[str]) -> None:
    assert list_ids(app, headers=headers) == expected


def test_list_body_shape(app: TestApp, demo: DemoSetup) -> None:
    response = app.get("/v2/images")
    assert response.headers["Content-Type"] == "application/json"
    body = response.json
    assert set(body) == {"images", "first", "schema"}  # no "next": everything fit
    assert (body["first"], body["schema"]) == ("/v2/images", "/v2/schemas/images")
    assert body["images"][0] == demo.api.image(CIRROS)


def test_list_pagination_follows_next_links(app: TestApp) -> None:
    page = app.get("/v2/images?limit=2").json
    assert page["first"] == "/v2/images?limit=2"
    assert page["next"] == f"/v2/images?marker={UBUNTU}&limit=2"
    seen = [image["id"] for image in page["images"]]
    while "next" in page:
        page = app.get(page["next"]).json
        seen += [image["id"] for image in page["images"]]
    assert seen == PUBLIC_ORDER
    assert len(page["images"]) == 1


def test_list_marker_and_filters(app: TestApp) -> None:
    assert list_ids(app, f"?marker={MOTD}") == [QUEUED, RETIRED]
    assert list_ids(app, "?status=active") == [CIRROS, UBUNTU, MOTD]
    assert list_ids(app, "?name=motd-text") == [MOTD]
    body = app.get("/v2/images?status=active&limit=1").json
    assert body["next"] == f"/v2/images?marker={CIRROS}&status=active&limit=1"


def test_list_limit_is_capped_and_zero_gives_no_next(demo: DemoSetup) -> None:
    demo.api.limit_max = 3
    app = TestApp(demo.api, lint=True)
    assert list_ids(app, "?limit=100") == PUBLIC_ORDER[:3]
    assert "next" not in app.get("/v2/images?limit=0").json


@pytest.mark.parametrize(("query", "message"), [
    pytest.param("?limit=abc", "limit param must be an integer", id="limit-not-int"),
    pytest.param("?limit=-1", "limit param must be positive", id="limit-negative"),
    pytest.param(f"?marker={UNKNOWN}", f"No image found with ID {UNKNOWN}", id="unknown-marker"),
    pytest.param(f"?marker={PRIVATE}", f"No image found with ID {PRIVATE}", id="invisible-marker"),
])
def test_list_bad_parameters_are_400(app: TestApp, query: str, message: str) -> None:
    assert message in app.get(f"/v2/images{query}", status=400).text


# -- create --------------------------------------------------------------------------------

def test_create_returns_queued_image(app: TestApp) -> None:
    body = {"name": "new", "disk_format": "raw", "container_format": "bare", "visibility": "private"}
    response = app.post_json("/v2/images", body, headers=OWNER, status=201)
    image = response.json
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Location"] == f"http://localhost/v2/images/{image['id']}"
    assert {k: image[k] for k in ("name", "status", "size", "checksum", "owner", "visibility", "locations")} == {
        "name": "new", "status": "queued", "size": None, "checksum": None,
        "owner": "demo-project", "visibility": "private", "locations": [],
    }
    assert "direct_url" not in image and "stores" not in image
    assert app.get(f"/v2/images/{image['id']}", headers=OWNER).json == image
    app.get(f"/v2/images/{image['id']}", status=404)  # private to its owner


def test_create_with_id_and_extra_property(app: TestApp) -> None:
    image_id = "7f3c0f2e-1111-4222-8333-444455556666"
    image = app.post_json("/v2/images", {"id": image_id, "name": "n", "hw_os": "linux"}, status=201).json
    assert (image["id"], image["hw_os"], image["visibility"]) == (image_id, "linux", "shared")
    assert "already exists" in app.post_json("/v2/images", {"id": image_id}, status=409).text


@pytest.mark.parametrize(("body", "status", "message"), [
    pytest.param({"disk_format": "exe"}, 400, "Invalid value for 'disk_format'", id="bad-disk-format"),
    pytest.param({"container_format": "zip"}, 400, "Invalid value for 'container_format'", id="bad-container"),
    pytest.param({"visibility": "everyone"}, 400, "Invalid value for 'visibility'", id="bad-visibility"),
    pytest.param({"min_ram": -1}, 400, "Invalid value for 'min_ram'", id="negative-min-ram"),
    pytest.param({"id": "not-a-uuid"}, 400, "must be a UUID", id="bad-id"),
    pytest.param({"hw_os": 3}, 400, "Invalid value for 'hw_os'", id="non-string-property"),
    pytest.param({"status": "active"}, 403, "Attribute 'status' is read-only.", id="read-only-status"),
    pytest.param({"size": 3}, 403, "Attribute 'size' is read-only.", id="read-only-size"),
    pytest.param({"locations": []}, 403, "Attribute 'locations' is reserved.", id="locations"),
    pytest.param({"owner": "x"}, 403, "Owner can't be updated by non admin.", id="owner"),
    pytest.param(["name"], 400, "must be a JSON object", id="not-an-object"),
])
def test_create_rejects_bad_bodies(app: TestApp, body: Any, status: int, message: str) -> None:
    assert message in app.post_json("/v2/images", body, status=status).text


def test_create_rejects_malformed_json(app: TestApp) -> None:
    response = app.post("/v2/images", b"{nope", content_type="application/json", status=400)
    assert "Malformed JSON in request body." in response.text


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


# -- delete and actions -------------------------------------------------------------------------

def test_delete(app: TestApp, demo: DemoSetup) -> None:
    response = app.delete(f"/v2/images/{MOTD}", status=204)
    assert response.body == b"" and "Content-Type" not in response.headers
    app.get(f"/v2/images/{MOTD}", status=404)
    assert Path(demo.store_a, MOTD).exists()  # demo fixtures stay on disk
    app.delete(f"/v2/images/{MOTD}", status=404)


def test_delete_protected_is_403(app: TestApp) -> None:
    patch(app, CIRROS, [{"op": "replace", "path": "/protected", "value": True}])
    assert "is protected and cannot be deleted" in app.delete(f"/v2/images/{CIRROS}", status=403).text


def test_deactivate_and_reactivate(app: TestApp) -> None:
    app.post(f"/v2/images/{CIRROS}/actions/deactivate", status=204)
    assert app.get(f"/v2/images/{CIRROS}").json["status"] == "deactivated"
    app.get(f"/v2/images/{CIRROS}/file", status=403)
    app.post(f"/v2/images/{CIRROS}/actions/reactivate", status=204)
    app.get(f"/v2/images/{CIRROS}/file", status=200)
    response = app.post(f"/v2/images/{QUEUED}/actions/deactivate", status=400)
    assert "Not allowed to deactivate image in status 'queued'" in response.text


# -- download -------------------------------------------------------------------------------------

def test_download_serves_first_readable_location(app: TestApp, demo: DemoSetup) -> None:
    response = app.get(f"/v2/images/{CIRROS}/file")
    data = demo.data["cirros-demo"]
    assert response.status_int == 200
    assert response.body == data
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Content-MD5"] == hashlib.md5(data).hexdigest()
    assert "Content-Range" not in response.headers
    assert demo.api.served_from == {"slow-disk": 1}


def test_download_head_sends_headers_and_reads_nothing(app: TestApp, demo: DemoSetup) -> None:
    response = app.head(f"/v2/images/{CIRROS}/file")
    assert response.body == b""
    assert response.headers["Content-Length"] == str(len(demo.data["cirros-demo"]))
    assert response.headers["Content-MD5"] == demo.api.image(CIRROS)["checksum"]
    assert not demo.api.served_from


@pytest.mark.parametrize(("name", "remove", "source"), [
    pytest.param("ubuntu-demo", (), "fast-disk", id="skips-rbd"),
    pytest.param("cirros-demo", ("store-b",), "fast-disk", id="missing-file"),
    pytest.param("cirros-demo", ("store-b", "store-a"), "memory", id="nothing-opens"),
    pytest.param("private-demo", (), "fast-disk", id="skips-swift"),
])
def test_download_falls_back_in_location_order(app: TestApp, demo: DemoSetup, name: str,
                                               remove: tuple[str, ...], source: str) -> None:
    image_id = demo.image_ids[name]
    for store in remove:
        os.remove(os.path.join(demo.workdir, store, image_id))
    assert app.get(f"/v2/images/{image_id}/file", headers=OWNER).body == demo.data[name]
    assert demo.api.served_from == {source: 1}


def test_download_never_reads_outside_file_roots(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"SECRET")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(secret)
    api = DemoImageAPI(file_roots=[str(root)])
    image_id = api.add_image(name="x", data=b"public", locations=[
        location(secret.as_uri(), "outside"),
        location(f"file://{root}/../secret", "dotdot"),
        location((root / "link").as_uri(), "symlink"),
    ])
    assert TestApp(api, lint=True).get(f"/v2/images/{image_id}/file").body == b"public"
    assert api.served_from == {"memory": 1}


@pytest.mark.parametrize(("header", "start", "stop"), [
    pytest.param("bytes=0-9", 0, 10, id="first-ten"),
    pytest.param("bytes=100-", 100, None, id="open-ended"),
    pytest.param("bytes=-5", -5, None, id="suffix"),
    pytest.param("bytes=-99999999", 0, None, id="suffix-longer-than-image"),
    pytest.param("bytes=5-99999999", 5, None, id="end-clamped"),
    pytest.param("bytes=0-", 0, None, id="whole-as-range"),
])
def test_download_range(app: TestApp, demo: DemoSetup, header: str, start: int, stop: int | None) -> None:
    data = demo.data["motd-text"]
    expected = data[start:stop]
    first = start % len(data)
    response = app.get(f"/v2/images/{MOTD}/file", headers={"Range": header}, status=206)
    assert response.body == expected
    assert response.headers["Content-Length"] == str(len(expected))
    assert response.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    assert response.headers["Content-MD5"] == hashlib.md5(data).hexdigest()  # whole image, as Glance


@pytest.mark.parametrize("header", [
    pytest.param("bytes=0-1,4-5", id="multiple"),
    pytest.param("bytes=9-3", id="reversed"),
    pytest.param("bytes=99999999-", id="past-end"),
    pytest.param("bytes=-0", id="empty-suffix"),
    pytest.param("bytes=-", id="no-numbers"),
    pytest.param("items=0-1", id="other-unit"),
    pytest.param("bytes=a-b", id="not-numbers"),
])
def test_download_bad_range_is_416(app: TestApp, demo: DemoSetup, header: str) -> None:
    response = app.get(f"/v2/images/{MOTD}/file", headers={"Range": header}, status=416)
    assert response.headers["Content-Range"] == f"bytes */{len(demo.data['motd-text'])}"
    assert not demo.api.served_from


@pytest.mark.parametrize(("image_id", "headers", "status"), [
    pytest.param(QUEUED, {}, 204, id="queued-no-data"),
    pytest.param(RETIRED, {}, 403, id="deactivated"),
    pytest.param(RETIRED, {"X-Roles": "member"}, 403, id="deactivated-member"),
    pytest.param(RETIRED, ADMIN, 200, id="deactivated-admin"),
    pytest.param(PRIVATE, {}, 404, id="private"),
    pytest.param(UNKNOWN, {}, 404, id="unknown"),
])
def test_download_status(app: TestApp, image_id: str, headers: dict[str, str], status: int) -> None:
    response = app.get(f"/v2/images/{image_id}/file", headers=headers, status=status)
    if status == 204:
        assert response.body == b"" and "Content-Type" not in response.headers
    if status == 403:
        assert "Image data download is forbidden." in response.text


def test_download_empty_image() -> None:
    api = DemoImageAPI()
    image_id = api.add_image(name="empty", data=b"")
    app = TestApp(api, lint=True)
    response = app.get(f"/v2/images/{image_id}/file")
    assert (response.body, response.headers["Content-Length"]) == (b"", "0")
    app.get(f"/v2/images/{image_id}/file", headers={"Range": "bytes=0-"}, status=416)


# -- upload -------------------------------------------------------------------------------------------

def test_upload_activates_queued_image(app: TestApp, demo: DemoSetup) -> None:
    payload = b"uploaded bytes" * 1000
    app.put(f"/v2/images/{QUEUED}/file", payload, content_type="application/octet-stream", status=204)
    image = demo.api.image(QUEUED)
    assert (image["status"], image["size"], image["checksum"]) == (
        "active", len(payload), hashlib.md5(payload).hexdigest())
    assert image["locations"] == [location(file_url(demo.store_a, QUEUED), "fast-disk")]
    assert Path(demo.store_a, QUEUED).read_bytes() == payload
    assert app.get(f"/v2/images/{QUEUED}/file").body == payload
    assert demo.api.served_from == {"fast-disk": 1}


def test_upload_without_store_keeps_bytes_in_memory() -> None:
    api = DemoImageAPI()
    image_id = api.add_image(name="x")
    app = TestApp(api, lint=True)
    app.put(f"/v2/images/{image_id}/file", b"abc", content_type="application/octet-stream", status=204)
    assert api.image(image_id)["locations"] == []
    assert app.get(f"/v2/images/{image_id}/file").body == b"abc"


@pytest.mark.parametrize(("image_id", "content_type", "status", "message"), [
    pytest.param(CIRROS, "application/octet-stream", 409, "only be uploaded to a queued image", id="active"),
    pytest.param(QUEUED, "text/plain", 415, "Unsupported Content-Type 'text/plain'", id="wrong-type"),
    pytest.param(UNKNOWN, "application/octet-stream", 404, "No image found", id="unknown"),
])
def test_upload_refusals(app: TestApp, image_id: str, content_type: str, status: int, message: str) -> None:
    response = app.put(f"/v2/images/{image_id}/file", b"x", content_type=content_type, status=status)
    assert message in response.text


# -- real sockets: serve_static and http locations ------------------------------------------------------

def fetch(url: str, path: str, headers: dict[str, str] | None = None,
          method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    host_port = url.split("://", 1)[1]
    connection = http.client.HTTPConnection(host_port, timeout=5)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(("headers", "status", "body_slice", "content_range"), [
    pytest.param({}, 200, slice(None), None, id="whole"),
    pytest.param({"Range": "bytes=10-19"}, 206, slice(10, 20), "bytes 10-19/5000", id="closed"),
    pytest.param({"Range": "bytes=4990-"}, 206, slice(4990, None), "bytes 4990-4999/5000", id="open"),
    pytest.param({"Range": "bytes=-7"}, 206, slice(-7, None), "bytes 4993-4999/5000", id="suffix"),
    pytest.param({"Range": "bytes=5000-"}, 416, slice(0, 0), "bytes */5000", id="unsatisfiable"),
    pytest.param({"Range": "bytes=0-1,5-6"}, 416, slice(0, 0), "bytes */5000", id="multiple"),
])
def test_serve_static_ranges(tmp_path: Path, headers: dict[str, str], status: int, body_slice: slice,
                             content_range: str | None) -> None:
    data = demo_bytes("static", 5000)
    (tmp_path / "blob").write_bytes(data)
    with serve_static(str(tmp_path)) as server:
        assert server.url.startswith("http://127.0.0.1:")
        got_status, got_headers, body = fetch(server.url, "/blob", headers)
    assert (got_status, body) == (status, data[body_slice])
    assert got_headers["Content-Length"] == str(len(data[body_slice]))
    assert got_headers.get("Content-Range") == content_range


def test_serve_static_head_and_missing(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(b"0123456789")
    with serve_static(str(tmp_path)) as server:
        status, headers, body = fetch(server.url, "/blob", {"Range": "bytes=2-3"}, method="HEAD")
        assert (status, headers["Content-Range"], body) == (206, "bytes 2-3/10", b"")
        assert fetch(server.url, "/missing", {"Range": "bytes=0-1"})[0] == 404


def test_download_reads_http_location(tmp_path: Path) -> None:
    with serve_static(web_dir_of(str(tmp_path))) as server:
        demo = build_demo(str(tmp_path), server.url)
        os.remove(os.path.join(demo.store_b, CIRROS))  # the slow-disk copy is gone: next is web
        app = TestApp(demo.api, lint=True)
        data = demo.data["cirros-demo"]
        assert app.get(f"/v2/images/{CIRROS}/file").body == data
        response = app.get(f"/v2/images/{CIRROS}/file", headers={"Range": "bytes=1000-1999"}, status=206)
        assert response.body == data[1000:2000]
        assert demo.api.served_from == {"web": 2}


def test_download_ignores_http_outside_prefixes(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(b"from the web")
    with serve_static(str(tmp_path)) as server:
        api = DemoImageAPI(http_prefixes=[server.url + "/allowed"])
        image_id = api.add_image(name="x", data=b"from memory", locations=[location(f"{server.url}/blob", "web")])
        assert TestApp(api, lint=True).get(f"/v2/images/{image_id}/file").body == b"from memory"
    assert api.served_from == {"memory": 1}


def test_download_does_not_follow_redirects(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()  # SimpleHTTPRequestHandler redirects /dir to /dir/
    with serve_static(str(tmp_path)) as server:
        api = DemoImageAPI(http_prefixes=[server.url])
        image_id = api.add_image(name="x", data=b"from memory", locations=[location(f"{server.url}/dir", "web")])
        assert TestApp(api, lint=True).get(f"/v2/images/{image_id}/file").body == b"from memory"
    assert api.served_from == {"memory": 1}


# -- uploads without Content-Length, concurrency ----------------------------------------------------------

def put_raw(api: DemoImageAPI, image_id: str, body: bytes, terminated: bool) -> Any:
    app = TestApp(api, lint=True)
    request = app.RequestClass.blank(f"/v2/images/{image_id}/file", method="PUT", body=body,
                                     content_type="application/octet-stream")
    del request.environ["CONTENT_LENGTH"]  # as a server passes a chunked body
    if terminated:
        request.environ["wsgi.input_terminated"] = True
    return app.do_request(request, status="*", expect_errors=True)


def test_upload_chunked_body_without_content_length() -> None:
    api = DemoImageAPI()
    image_id = api.add_image(name="x")
    assert put_raw(api, image_id, b"chunked" * 100_000, terminated=True).status_int == 204
    assert api.image(image_id)["size"] == 700_000


def test_upload_without_length_or_terminated_input_is_411() -> None:
    api = DemoImageAPI()
    image_id = api.add_image(name="x")
    response = put_raw(api, image_id, b"abc", terminated=False)
    assert response.status_int == 411
    assert api.image(image_id)["status"] == "queued"


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


def test_set_status(demo: DemoSetup) -> None:
    demo.api.set_status(CIRROS, "saving")
    assert demo.api.image(CIRROS)["status"] == "saving"


def test_serve_wsgi_serves_the_api_over_a_socket(demo: DemoSetup) -> None:
    data = demo.data["motd-text"]
    with serve_wsgi(demo.api) as server:
        status, _, body = fetch(server.url, f"/v2/images/{MOTD}")
        assert (status, json.loads(body)["id"]) == (200, MOTD)
        status, headers, body = fetch(server.url, f"/v2/images/{MOTD}/file", {"Range": "bytes=-10"})
    assert (status, body) == (206, data[-10:])
    assert headers["Content-Range"] == f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}"
    assert demo.api.calls["GET file"] == 1
