"""The demo image API (``locproxy.demo.api``): Glance's v2 JSON, routing, callers,
listing, creation, deletion and actions, request bodies."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from webtest import TestApp

from locproxy.demo import DemoImageAPI, DemoSetup, location
from tests.support.demo import ADMIN, CIRROS, MOTD, OWNER, PRIVATE, QUEUED, RETIRED, UBUNTU, UNKNOWN, file_url, patch

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


# -- uploads without Content-Length ----------------------------------------------------------

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



def test_set_status(demo: DemoSetup) -> None:
    demo.api.set_status(CIRROS, "saving")
    assert demo.api.image(CIRROS)["status"] == "saving"
