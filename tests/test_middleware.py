"""The locproxy filter's response rewriting and JSON-patch translation.

These use webtest (WSGI lint on) against a small recording upstream app; the
real-socket proofs are in test_pipeline.py.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from webob import Request, Response
from webtest import TestApp

from locproxy.config import load_filter_settings
from locproxy.middleware import LocationFilter
from tests.support.upstreams import IMAGE_ID, Upstream, image_json, json_response

PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


def make_app(upstream: Upstream, **options: str) -> TestApp:
    options.setdefault("location_strategy", "store_type")
    options.setdefault("store_type_preference", "http, file")
    settings = load_filter_settings({}, options)
    return TestApp(LocationFilter(upstream, settings), lint=True)


def urls(document: dict) -> list[str]:
    return [location["url"] for location in document["locations"]]


EXPECTED_ORDER = [
    "http://127.0.0.1:1/" + IMAGE_ID, "file:///srv/a/" + IMAGE_ID, "rbd://fsid/pool/" + IMAGE_ID + "/snap",
]


def test_image_show_is_reordered_and_headers_fixed():
    upstream = Upstream()
    upstream.route("GET", f"/v2/images/{IMAGE_ID}",
                   json_response(image_json(), ETag='"abc"', Content_MD5="0" * 32))
    response = make_app(upstream).get(f"/v2/images/{IMAGE_ID}", headers={"Accept-Encoding": "gzip"})
    assert urls(response.json) == EXPECTED_ORDER
    assert response.json["direct_url"] == EXPECTED_ORDER[0]
    assert response.json["stores"] == "web,disk,ceph"
    assert response.headers["Content-Length"] == str(len(response.body))
    assert "ETag" not in response.headers and "Content-MD5" not in response.headers
    assert upstream.requests[0].headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize(
    "method, path, kind",
    [
        pytest.param("POST", "/v2/images", "image", id="create"),
        pytest.param("PATCH", f"/v2/images/{IMAGE_ID}", "image", id="patch"),
        pytest.param("GET", "/v2/images", "list", id="list"),
        pytest.param("GET", f"/v2/images/{IMAGE_ID}/locations", "locations", id="location-list"),
        pytest.param("GET", f"/v2/images/{IMAGE_ID}/", "image", id="trailing-slash"),
    ],
)
def test_every_image_response_is_reordered(method, path, kind):
    upstream = Upstream()
    document: Any = {
        "image": image_json(),
        "list": {"images": [image_json(), image_json(id="2")], "first": "/v2/images", "next": "/v2/images?m=2"},
        "locations": image_json()["locations"],
    }[kind]
    upstream.route(method, path, json_response(document, status=201 if method == "POST" else 200))
    app = make_app(upstream)
    body = {"name": "x"} if method == "POST" else []
    headers = {"Content-Type": PATCH_TYPE} if method == "PATCH" else {}
    if method == "GET":
        response = app.get(path)
    else:
        response = app.request(path, method=method, body=json.dumps(body).encode(), headers=headers)
    if kind == "list":
        assert [urls(image) for image in response.json["images"]] == [EXPECTED_ORDER, EXPECTED_ORDER]
        assert response.json["next"] == "/v2/images?m=2"
    elif kind == "locations":
        assert [location["url"] for location in response.json] == EXPECTED_ORDER
    else:
        assert urls(response.json) == EXPECTED_ORDER


@pytest.mark.parametrize(
    "response, path",
    [
        pytest.param(json_response(image_json(), status=404), f"/v2/images/{IMAGE_ID}", id="non-2xx"),
        pytest.param(Response(body=json.dumps(image_json()).encode(), content_type="text/plain", charset=None),
                     f"/v2/images/{IMAGE_ID}", id="not-json-content-type"),
        pytest.param(Response(body=b'{"locations": [', content_type="application/json", charset=None),
                     f"/v2/images/{IMAGE_ID}", id="invalid-json"),
        pytest.param(json_response(image_json()), f"/v2/images/{IMAGE_ID}/members", id="other-path"),
        pytest.param(json_response(image_json()), f"/v3/images/{IMAGE_ID}", id="other-version"),
        pytest.param(json_response({**image_json(), "pad": "x" * 5000}), f"/v2/images/{IMAGE_ID}",
                     id="oversized"),
    ],
)
def test_pass_through_byte_for_byte(response, path):
    upstream = Upstream()
    original = response.body
    upstream.route("GET", path, response)
    app = make_app(upstream, max_rewrite_size="4K")
    result = app.get(path, status="*")
    assert result.status_int == response.status_int
    assert result.body == original


def test_oversized_streamed_body_passes_through_whole():
    chunks = [json.dumps(image_json()).encode()[:10]] + [b" " * 1000] * 10 + [json.dumps(image_json()).encode()[10:]]

    def streamed(req: Request) -> Response:
        response = Response(content_type="application/json", charset=None)
        response.app_iter = iter(chunks)
        return response

    upstream = Upstream()
    upstream.route("GET", f"/v2/images/{IMAGE_ID}", streamed)
    result = make_app(upstream, max_rewrite_size="2K").get(f"/v2/images/{IMAGE_ID}")
    assert result.body == b"".join(chunks)


def test_gzip_json_is_decoded_and_rewritten():
    upstream = Upstream()
    compressed = gzip.compress(json.dumps(image_json()).encode())
    upstream.route("GET", f"/v2/images/{IMAGE_ID}", Response(
        body=compressed, content_type="application/json", charset=None, content_encoding="gzip"))
    result = Request.blank(f"/v2/images/{IMAGE_ID}").get_response(make_app(upstream).app)
    assert "Content-Encoding" not in result.headers
    assert result.headers["Content-Length"] == str(len(result.body))
    assert urls(json.loads(result.body)) == EXPECTED_ORDER


def test_gzip_bomb_is_not_expanded():
    upstream = Upstream()
    bomb = gzip.compress(b"[" + b" " * (8 << 20) + b"]")
    upstream.route("GET", f"/v2/images/{IMAGE_ID}", Response(
        body=bomb, content_type="application/json", charset=None, content_encoding="gzip"))
    app = make_app(upstream, max_rewrite_size="1M").app
    result = Request.blank(f"/v2/images/{IMAGE_ID}").get_response(app)  # webtest would gunzip it
    assert result.body == bomb and result.headers["Content-Encoding"] == "gzip"


def test_head_is_passed_through():
    upstream = Upstream()
    upstream.route("HEAD", f"/v2/images/{IMAGE_ID}", json_response(image_json()))
    result = make_app(upstream).head(f"/v2/images/{IMAGE_ID}")
    assert result.status_int == 200 and result.body == b""


def test_urlmap_script_name():
    """Inside Glance's urlmap the filter may see SCRIPT_NAME=/v2."""
    upstream = Upstream()
    upstream.route("GET", f"/images/{IMAGE_ID}", json_response(image_json()))
    result = make_app(upstream).get(f"/images/{IMAGE_ID}", extra_environ={"SCRIPT_NAME": "/v2"})
    assert urls(result.json) == EXPECTED_ORDER


def test_prefer_query_applies_to_the_response():
    upstream = Upstream()
    upstream.route("GET", f"/v2/images/{IMAGE_ID}", json_response(image_json()))
    result = make_app(upstream).get(f"/v2/images/{IMAGE_ID}?prefer=ceph,disk")
    assert [location["metadata"]["store"] for location in result.json["locations"]] == ["ceph", "disk", "web"]
    assert result.json["direct_url"].startswith("rbd://")


@pytest.mark.parametrize(
    "roles, visible",
    [
        pytest.param("admin,member", True, id="admin-sees"),
        pytest.param("member", False, id="member-hidden"),
        pytest.param(None, False, id="no-roles-hidden"),
        pytest.param(" Service ", True, id="roles-trimmed-case-insensitive"),
    ],
)
def test_locations_hidden_without_role(roles, visible):
    upstream = Upstream()
    upstream.route("GET", f"/v2/images/{IMAGE_ID}", json_response(image_json()))
    app = make_app(upstream, locations_visible_to_roles="admin, service")
    result = app.get(f"/v2/images/{IMAGE_ID}", headers={"X-Roles": roles} if roles else {})
    assert ("locations" in result.json) is visible
    assert ("direct_url" in result.json) is visible
    assert result.json["id"] == IMAGE_ID


def test_scrub_credentials_option():
    upstream = Upstream()
    document = image_json()
    document["locations"][0]["url"] = "http://user:s3cret@127.0.0.1:1/x"
    upstream.route("GET", f"/v2/images/{IMAGE_ID}", json_response(document))
    result = make_app(upstream, scrub_credentials="true", location_strategy="location_order").get(
        f"/v2/images/{IMAGE_ID}")
    assert b"s3cret" not in result.body
    assert result.json["locations"][0]["url"] == "http://127.0.0.1:1/x"


# -- JSON patch --------------------------------------------------------------

def patch_app(upstream: Upstream, show: Response | None = None) -> TestApp:
    upstream.route("GET", f"/v2/images/{IMAGE_ID}", show or json_response(image_json()))
    upstream.route("PATCH", f"/v2/images/{IMAGE_ID}", lambda req: json_response(image_json()))
    return make_app(upstream)


def test_patch_remove_hits_the_location_the_client_saw():
    upstream = Upstream()
    app = patch_app(upstream)
    # The client saw http first (index 0); upstream has it at index 1.
    assert urls(app.get(f"/v2/images/{IMAGE_ID}", headers={"X-Auth-Token": "t0ken"}).json)[0].startswith("http")
    app.patch(f"/v2/images/{IMAGE_ID}", json.dumps([{"op": "remove", "path": "/locations/0"}]),
              headers={"Content-Type": PATCH_TYPE, "X-Auth-Token": "t0ken"})
    _read, show, patch = upstream.requests
    assert show.method == "GET" and show.headers["X-Auth-Token"] == "t0ken", "shown as the client"
    assert show.body == b"" and "Content-Type" not in show.headers
    assert json.loads(upstream.bodies[2]) == [{"op": "remove", "path": "/locations/1"}]
    assert patch.headers["Content-Type"] == PATCH_TYPE


def test_patch_without_location_index_is_forwarded_untouched():
    upstream = Upstream()
    app = patch_app(upstream)
    body = b'[{"op": "replace", "path": "/name", "value": "new"}]'
    app.patch(f"/v2/images/{IMAGE_ID}", body, headers={"Content-Type": PATCH_TYPE})
    assert [req.method for req in upstream.requests] == ["PATCH"]
    assert upstream.bodies[0] == body


def test_patch_refused_by_upstream_show_is_not_forwarded():
    upstream = Upstream()
    app = patch_app(upstream, show=json_response({"message": "forbidden"}, status=403))
    result = app.patch(f"/v2/images/{IMAGE_ID}", b'[{"op": "remove", "path": "/locations/0"}]',
                       headers={"Content-Type": PATCH_TYPE}, status=403)
    assert result.json == {"message": "forbidden"}
    assert [req.method for req in upstream.requests] == ["GET"]


def test_oversized_patch_is_refused_with_json():
    upstream = Upstream()
    app = make_app(upstream, max_rewrite_size="1K")
    result = app.patch(f"/v2/images/{IMAGE_ID}", b"[" + b" " * 2000 + b"]",
                       headers={"Content-Type": PATCH_TYPE}, status=413)
    assert result.json["error"]["code"] == 413
    assert "1024 bytes" in result.json["error"]["message"]
    assert upstream.requests == []


def test_malformed_patch_goes_to_upstream_to_refuse():
    upstream = Upstream()
    upstream.route("PATCH", f"/v2/images/{IMAGE_ID}", json_response({"message": "bad patch"}, status=400))
    result = make_app(upstream).patch(f"/v2/images/{IMAGE_ID}", b"{not json",
                                      headers={"Content-Type": PATCH_TYPE}, status=400)
    assert result.json == {"message": "bad patch"}
    assert upstream.bodies == [b"{not json"]


@pytest.mark.parametrize(
    "options, path, expected",
    [
        pytest.param({}, "/healthcheck", "upstream", id="off-by-default"),
        pytest.param({"healthcheck_path": "/healthcheck"}, "/healthcheck", "healthcheck", id="healthcheck"),
        pytest.param({"metrics_path": "/metrics"}, "/metrics", "metrics", id="metrics"),
        pytest.param({"healthcheck_path": "/hc"}, "/other", "upstream", id="other-path"),
    ],
)
def test_local_endpoints_answer_without_the_upstream(options, path, expected):
    upstream = Upstream()
    upstream.route("GET", path, Response(body=b"from upstream"))
    result = make_app(upstream, **options).get(path)
    if expected == "upstream":
        assert result.body == b"from upstream"
        return
    assert upstream.requests == []
    if expected == "healthcheck":
        assert result.json == {"status": "ok", "strategy": "store_type", "demoted_backends": 0, "demoted_copies": 0}
    else:
        assert b"locproxy_requests_total" in result.body
        assert result.content_type == "text/plain"


def test_subrequests_keep_the_request_context_set_by_earlier_filters():
    """Glance's context middleware sets req.context (a webob ad-hoc
    attribute); the metadata check before a download must carry it."""
    seen = []

    def api(environ, start_response):
        req = Request(environ)
        seen.append((req.path_info, getattr(req, "context", None)))
        return json_response({"id": IMAGE_ID, "status": "queued"})(environ, start_response)

    def context_filter(app):
        def middleware(environ, start_response):
            Request(environ).context = "the client's auth context"
            return app(environ, start_response)
        return middleware

    settings = load_filter_settings({}, {})
    app = TestApp(context_filter(LocationFilter(api, settings)))
    app.get(f"/v2/images/{IMAGE_ID}/file")
    assert seen[0] == (f"/v2/images/{IMAGE_ID}", "the client's auth context")
