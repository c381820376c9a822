"""The pure rewrite of image JSON and the JSON-patch index translation."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from locproxy.rewrite import (
    IMAGE,
    IMAGES,
    LOCATIONS,
    RewritePolicy,
    patch_addresses_locations,
    rewrite_body,
    rewrite_image,
    translate_patch,
)
from locproxy.strategies import Selector
from tests.support.patches import apply_patch, tokens

PREFER_HTTP = RewritePolicy(Selector("store_type", store_type_preference="http, file"))
UPSTREAM_ORDER = RewritePolicy(Selector("location_order"))


def image(*locations, **fields):
    body = {
        "id": "5c8f4a2e-0000-4000-8000-000000000001",
        "locations": [{"url": url, "metadata": {"store": store}} for url, store in locations],
        "direct_url": locations[0][0] if locations else None,
        "stores": ",".join(store for _, store in locations),
    }
    body.update(fields)
    return body


FILE_THEN_HTTP = image(("file:///a/1", "disk"), ("http://web/1", "web"))


def test_reorders_locations_direct_url_and_stores():
    result = rewrite_image(FILE_THEN_HTTP, PREFER_HTTP)
    assert [location["url"] for location in result["locations"]] == ["http://web/1", "file:///a/1"]
    assert result["direct_url"] == "http://web/1"
    assert result["stores"] == "web,disk"
    assert FILE_THEN_HTTP["locations"][0]["url"] == "file:///a/1", "input must not be mutated"


def test_unchanged_image_is_returned_as_is():
    assert rewrite_image(FILE_THEN_HTTP, UPSTREAM_ORDER) is FILE_THEN_HTTP


@pytest.mark.parametrize(
    "fields, policy, expected_direct_url",
    [
        pytest.param({}, PREFER_HTTP, "http://web/1", id="shown-direct-url-follows-order"),
        pytest.param({"direct_url": None}, PREFER_HTTP, "http://web/1", id="null-direct-url-is-shown"),
        pytest.param({"direct_url": "__absent__"}, PREFER_HTTP, "__absent__", id="hidden-direct-url-stays-hidden"),
        pytest.param(
            {"direct_url": "__absent__"}, RewritePolicy(PREFER_HTTP.selector, add_direct_url=True),
            "http://web/1", id="add-direct-url-option",
        ),
    ],
)
def test_direct_url_rules(fields, policy, expected_direct_url):
    body = {**FILE_THEN_HTTP, **fields}
    if body["direct_url"] == "__absent__":
        del body["direct_url"]
    result = rewrite_image(body, policy)
    assert result.get("direct_url", "__absent__") == expected_direct_url


def test_direct_url_never_points_at_inactive_location():
    body = image(("file:///a/1", "disk"), ("http://web/1", "web"))
    body["locations"][1]["status"] = "pending"
    body["locations"][0]["metadata"]["status"] = "deleted"
    result = rewrite_image(body, PREFER_HTTP)
    assert "direct_url" not in result
    body["locations"].append({"url": "rbd://p/i/s/snap", "metadata": {}})
    assert rewrite_image(body, PREFER_HTTP)["direct_url"] == "rbd://p/i/s/snap"


def test_stores_without_locations_keep_their_place_after():
    body = image(("file:///a/1", "disk"), ("http://web/1", "web"))
    body["stores"] = "disk,cold,web"
    assert rewrite_image(body, PREFER_HTTP)["stores"] == "web,disk,cold"


def test_scrub_credentials_in_locations_and_direct_url():
    body = image(("swift+https://tenant:s3cr3t@swift.example/v1/c/o", "swift"), ("http://u:p@web/1", "web"))
    policy = RewritePolicy(UPSTREAM_ORDER.selector, scrub_credentials=True)
    result = rewrite_image(body, policy)
    assert [location["url"] for location in result["locations"]] == [
        "swift+https://swift.example/v1/c/o", "http://web/1",
    ]
    assert result["direct_url"] == "swift+https://swift.example/v1/c/o"
    assert "s3cr3t" not in json.dumps(result)
    hidden = {"id": "x", "direct_url": "swift://a:b@c/d"}
    assert rewrite_image(hidden, policy) == {"id": "x", "direct_url": "swift://c/d"}


def test_hide_removes_fields():
    policy = RewritePolicy(PREFER_HTTP.selector, hide=("locations", "direct_url"))
    result = rewrite_image(FILE_THEN_HTTP, policy)
    assert "locations" not in result and "direct_url" not in result
    assert result["stores"] == "web,disk"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="invalid-json"),
        pytest.param(b'{"id": "x"}', id="no-locations"),
        pytest.param(b'{"locations": "nope", "direct_url": "file:///a"}', id="locations-not-a-list"),
        pytest.param(b'{"locations": [1, 2]}', id="locations-not-objects"),
        pytest.param(b'{"locations": [{"url": 5}]}', id="url-not-a-string"),
        pytest.param(b"[1, 2, 3]", id="not-an-object"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_rewrite_body_leaves_unrecognised_bodies_alone(body):
    assert rewrite_body(body, IMAGE, PREFER_HTTP)[0] is None


def test_rewrite_list_page_keeps_links():
    page = {
        "images": [FILE_THEN_HTTP, {"id": "no-locations"}],
        "first": "/v2/images", "next": "/v2/images?marker=x", "schema": "/v2/schemas/images",
    }
    result = json.loads(rewrite_body(json.dumps(page).encode(), IMAGES, PREFER_HTTP)[0])
    assert result["images"][0]["direct_url"] == "http://web/1"
    assert result["images"][1] == {"id": "no-locations"}
    assert {key: result[key] for key in ("first", "next", "schema")} == {
        "first": "/v2/images", "next": "/v2/images?marker=x", "schema": "/v2/schemas/images",
    }


def test_rewrite_location_list():
    body = json.dumps(FILE_THEN_HTTP["locations"]).encode()
    assert [item["url"] for item in json.loads(rewrite_body(body, LOCATIONS, PREFER_HTTP)[0])] == [
        "http://web/1", "file:///a/1",
    ]


def test_rewrite_keeps_non_ascii():
    body = json.dumps({**FILE_THEN_HTTP, "name": "образ ☁"}, ensure_ascii=False).encode()
    assert json.loads(rewrite_body(body, IMAGE, PREFER_HTTP)[0])["name"] == "образ ☁"


# -- JSON patch --------------------------------------------------------------

UPSTREAM = [{"url": f"file:///{name}"} for name in "abcd"]


def view_of(*names):
    by_name = {location["url"][-1]: location for location in UPSTREAM}
    return [by_name[name] for name in names]


@pytest.mark.parametrize(
    "view, operations, expected_paths",
    [
        pytest.param("cadb", [{"op": "remove", "path": "/locations/0"}], ["/locations/2"], id="remove-first-seen"),
        pytest.param(
            "cadb",
            [{"op": "remove", "path": "/locations/1"}, {"op": "remove", "path": "/locations/1"}],
            ["/locations/0", "/locations/2"], id="two-removes-shift",
        ),
        pytest.param(
            "dcba", [{"op": "replace", "path": "/locations/0", "value": {"url": "file:///z"}}],
            ["/locations/3"], id="replace",
        ),
        pytest.param(
            "cadb", [{"op": "add", "path": "/locations/1", "value": {"url": "file:///z"}}],
            ["/locations/0"], id="add-before-seen-item",
        ),
        pytest.param(
            "cadb", [{"op": "add", "path": "/locations/4", "value": {"url": "file:///z"}}],
            ["/locations/4"], id="add-at-end",
        ),
        pytest.param(
            "cadb", [{"op": "add", "path": "/locations/-", "value": {"url": "file:///z"}},
                     {"op": "remove", "path": "/locations/4"}],
            ["/locations/-", "/locations/4"], id="append-then-remove-it",
        ),
        pytest.param(
            "cadb", [{"op": "remove", "path": "/locations/9"}], ["/locations/9"], id="out-of-range-untouched",
        ),
        pytest.param(
            "cadb", [{"op": "remove", "path": "/locations/01"}], ["/locations/01"], id="leading-zero-untouched",
        ),
        pytest.param(
            "cadb", [{"op": "replace", "path": "/locations/0/metadata", "value": {}}],
            ["/locations/2/metadata"], id="member-of-location",
        ),
        pytest.param(
            "cadb", [{"op": "replace", "path": "/name", "value": "x"}, {"op": "move", "from": "/locations/0",
                                                                         "path": "/locations/1"}],
            ["/name", "/locations/1"], id="other-ops-untouched",
        ),
    ],
)
def test_translate_patch(view, operations, expected_paths):
    before = copy.deepcopy(operations)
    translated = translate_patch(operations, tokens(UPSTREAM), tokens(view_of(*view)))
    assert [op["path"] for op in translated] == expected_paths
    assert operations == before


def test_translated_removes_hit_the_copies_the_client_saw():
    view = view_of(*"cadb")
    operations = [{"op": "remove", "path": "/locations/1"}, {"op": "remove", "path": "/locations/2"}]
    client_result = apply_patch(operations, view)  # what the client expects to remain
    upstream_result = apply_patch(translate_patch(operations, tokens(UPSTREAM), tokens(view)), UPSTREAM)
    assert sorted(location["url"] for location in upstream_result) == sorted(
        location["url"] for location in client_result
    ) == ["file:///c", "file:///d"]


@settings(max_examples=300, deadline=None)
@given(
    permutation=st.permutations(range(4)),
    ops=st.lists(
        st.tuples(st.sampled_from(["remove", "add", "replace"]), st.integers(min_value=0, max_value=5)),
        max_size=5,
    ),
)
def test_translation_matches_client_intent(permutation, ops):
    """Whatever the order and ops, the upstream ends with the same set of
    copies as the client meant, or the translation leaves the op for the
    upstream to refuse."""
    view = [UPSTREAM[i] for i in permutation]
    operations, size = [], len(view)
    for number, (name, index) in enumerate(ops):
        if name == "add":
            index = min(index, size)
            operations.append({"op": "add", "path": f"/locations/{index}", "value": {"url": f"file:///new{number}"}})
            size += 1
        elif index < size:
            operations.append({"op": name, "path": f"/locations/{index}", "value": {"url": f"file:///r{number}"}})
            size -= name == "remove"
    client = apply_patch(operations, view)
    upstream = apply_patch(translate_patch(operations, tokens(UPSTREAM), tokens(view)), UPSTREAM)
    assert sorted(location["url"] for location in upstream) == sorted(location["url"] for location in client)


@pytest.mark.parametrize(
    "operations, expected",
    [
        pytest.param([{"op": "remove", "path": "/locations/0"}], True, id="index"),
        pytest.param([{"op": "add", "path": "/locations/-", "value": {}}], True, id="append"),
        pytest.param([{"op": "replace", "path": "/locations", "value": []}], False, id="whole-list"),
        pytest.param([{"op": "replace", "path": "/name"}], False, id="other-path"),
        pytest.param({"op": "remove"}, False, id="not-a-list"),
        pytest.param([1, None, "x"], False, id="not-objects"),
    ],
)
def test_patch_addresses_locations(operations, expected):
    assert patch_addresses_locations(operations) is expected
