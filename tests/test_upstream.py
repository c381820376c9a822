"""The upstream's own ``/file`` asked with the strategy's store order.

When locproxy leaves a download (or the rest of one) to the upstream, it
sends Glance 33's ``?prefer=``; a refusal (403 from the ``download_from_store``
policy, 400 for an unknown store) is followed at once by the plain ``/file``.
``upstream_prefer`` (pure) says what to ask for: Glance keeps the *image's*
order among the stores named, so only the longest prefix of the strategy's
store order that Glance's rule reproduces.

The upstream here is a small Glance-33 stand-in (``Glance33``): it answers
the image show, and ``/file`` with Range and ``?prefer=`` as Glance does,
refusing ``prefer`` for non-admins (403) or unknown stores (400), and
records every ``/file`` request (its query and Range).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from webob import Request, Response
from webtest import TestApp

from locproxy.config import load_filter_settings
from locproxy.download.plan import upstream_prefer
from locproxy.middleware import LocationFilter
from locproxy.ranges import parse_range
from locproxy.strategies import Selector
from tests.support.faultserver import FaultServer
from tests.support.upstreams import IMAGE_ID, json_response

DATA = bytes(range(256)) * 12800  # 3.125 MiB: resumes happen at a block (1 MiB) of the image
STORES = ("fs1", "cinder1", "ceph1", "s31", "web")


def loc(url: str, store: str | None, **extra: Any) -> dict:
    return {"url": url, "metadata": {"store": store} if store else {}, **extra}


# -- pure: what to ask for ---------------------------------------------------------


IMAGE_ORDER = [loc("file:///a", "fs1"), loc("cinder://v", "cinder1"), loc("rbd://f/p/i/s", "ceph1"),
               loc("s3://h/b/k", "s31")]


@pytest.mark.parametrize(
    "locations, selector, prefer, expected",
    [
        pytest.param(IMAGE_ORDER, Selector(), (), (), id="image-order-needs-nothing"),
        pytest.param(IMAGE_ORDER, Selector("store_type", store_type_preference="rbd, s3, file"), (),
                     ("ceph1", "s31"), id="prefix-glance-can-reproduce"),
        pytest.param(IMAGE_ORDER, Selector("store_type", store_type_preference="s3, rbd"), (), ("s31",),
                     id="image-lists-ceph1-before-s31-so-only-s31"),
        pytest.param(IMAGE_ORDER, Selector("weight", store_weights="cinder1:9, ceph1:5, fs1:1"), (),
                     ("cinder1", "ceph1"), id="weights"),
        pytest.param(IMAGE_ORDER, Selector(), ("s31",), ("s31",), id="client-prefer"),
        pytest.param([loc("file:///a", "fs1"), loc("rbd://x", None), loc("rbd://y", "ceph1")],
                     Selector("store_type", store_type_preference="rbd"), (), (), id="best-copy-has-no-store-name"),
        pytest.param([loc("file:///a", "fs1"), loc("rbd://y", "ceph1", status="pending_delete"),
                      loc("s3://h/b/k", "s31")], Selector("store_type", store_type_preference="rbd, s3"), (),
                     ("s31",), id="inactive-copies-ignored"),
        pytest.param([loc("rbd://a", "ceph1"), loc("file:///a", "fs1"), loc("rbd://b", "ceph1")],
                     Selector("store_type", store_type_preference="rbd"), (), ("ceph1",),
                     id="one-store-several-copies"),
        pytest.param("not a list", Selector(), ("x",), (), id="no-locations"),
    ],
)
def test_upstream_prefer(locations: Any, selector: Selector, prefer: tuple[str, ...],
                         expected: tuple[str, ...]) -> None:
    assert upstream_prefer({"locations": locations}, selector, prefer) == expected


# -- through the filter --------------------------------------------------------------


class Glance33:
    """Image show and ``/file`` (Range, ``?prefer=``) as Glance 33 answers them."""

    def __init__(self, locations: list[dict]) -> None:
        self.locations = locations
        self.files: list[tuple[str, str, str | None]] = []  # (method, query, Range)

    def __call__(self, environ: dict, start_response: Any) -> Any:
        req = Request(environ)
        if req.path_info == f"/v2/images/{IMAGE_ID}":
            return json_response(self.image())(environ, start_response)
        assert req.path_info == f"/v2/images/{IMAGE_ID}/file", req.path_info
        self.files.append((req.method, req.query_string, req.headers.get("Range")))
        prefer = [store.strip() for store in req.GET.get("prefer", "").split(",") if store.strip()]
        if prefer and "admin" not in req.headers.get("X-Roles", ""):
            return Response(status=403, json={"error": "download_from_store"})(environ, start_response)
        if any(store not in STORES for store in prefer):
            return Response(status=400, json={"error": "Store is not configured."})(environ, start_response)
        span = parse_range(req.headers.get("Range"), len(DATA))
        start, end = span or (0, len(DATA))
        response = Response(status=206 if span else 200, body=DATA[start:end], content_type="application/octet-stream")
        if span:
            response.content_range = (start, end, len(DATA))
        return response(environ, start_response)

    def image(self) -> dict:
        return {"id": IMAGE_ID, "status": "active", "size": len(DATA), "os_hash_algo": "sha512",
                "os_hash_value": hashlib.sha512(DATA).hexdigest(), "checksum": hashlib.md5(DATA).hexdigest(),
                "locations": self.locations}


def filtered(upstream: Glance33, **options: str) -> TestApp:
    settings = load_filter_settings({}, {"location_strategy": "store_type",
                                         "store_type_preference": "rbd, s3, file", **options})
    return TestApp(LocationFilter(upstream, settings))


ADMIN = {"X-Roles": "admin,member"}
MEMBER = {"X-Roles": "member"}
PATH = f"/v2/images/{IMAGE_ID}/file"


@pytest.mark.parametrize(
    "headers, query, expected",
    [
        pytest.param(ADMIN, "", [("GET", "prefer=ceph1,s31", None)], id="admin-gets-the-strategy-order"),
        pytest.param(MEMBER, "", [("GET", "prefer=ceph1,s31", None), ("GET", "", None)],
                     id="refused-403-then-plain"),
        pytest.param(ADMIN, "?prefer=nosuch", [("GET", "prefer=nosuch", None)], id="client-prefer-passes-as-sent"),
        pytest.param(ADMIN, "?foo=1", [("GET", "foo=1&prefer=ceph1,s31", None)], id="client-query-kept"),
    ],
)
def test_no_readable_copy_asks_the_upstream_in_the_strategys_order(
        headers: dict[str, str], query: str, expected: list) -> None:
    upstream = Glance33(list(IMAGE_ORDER))
    app = filtered(upstream)

    response = app.get(PATH + query, headers=headers, expect_errors=True)

    assert upstream.files == expected
    if "nosuch" in query:
        assert response.status_int == 400, "Glance's own answer to the client's own prefer"
    else:
        assert (response.status_int, response.body) == (200, DATA)


def test_unknown_store_400_falls_back_to_plain_file() -> None:
    upstream = Glance33([loc("file:///a", "fs1"), loc("rbd://f/p/i/s", "gone-store")])
    response = filtered(upstream).get(PATH, headers=ADMIN)
    assert (response.status_int, response.body) == (200, DATA)
    assert upstream.files == [("GET", "prefer=gone-store", None), ("GET", "", None)]


def test_range_and_head_keep_the_clients_request() -> None:
    upstream = Glance33(list(IMAGE_ORDER))
    app = filtered(upstream)
    part = app.get(PATH, headers={**ADMIN, "Range": "bytes=10-19"})
    assert (part.status_int, part.body, part.headers["Content-Range"]) == (206, DATA[10:20], f"bytes 10-19/{len(DATA)}")
    head = app.head(PATH, headers=ADMIN)
    assert head.status_int == 200 and head.body == b""
    assert upstream.files == [("GET", "prefer=ceph1,s31", "bytes=10-19"), ("HEAD", "prefer=ceph1,s31", None)]


def test_no_prefer_when_the_upstreams_order_is_the_strategys() -> None:
    upstream = Glance33([loc("rbd://f/p/i/s", "ceph1"), loc("file:///a", "fs1")])
    response = filtered(upstream).get(PATH, headers=ADMIN)
    assert response.body == DATA and upstream.files == [("GET", "", None)]


@pytest.mark.parametrize("headers", [pytest.param(ADMIN, id="admin"), pytest.param(MEMBER, id="member")])
def test_resume_from_the_upstream_asks_in_the_strategys_order(headers: dict[str, str]) -> None:
    """A readable http copy breaks mid-stream: the rest, from the block it
    broke in, comes from the upstream's /file with a Range, and ?prefer= (or
    plain, if refused)."""
    with FaultServer(DATA, mode="truncate_after:1500000") as web:
        upstream = Glance33([loc("file:///a", "fs1"), loc(web.url(), "web"), loc("rbd://f/p/i/s", "ceph1")])
        app = filtered(upstream, store_type_preference="http, rbd, file", allowed_hosts="127.0.0.1",
                       chunk_size="64K")
        response = app.get(PATH, headers=headers)
        assert (response.status_int, response.body) == (200, DATA)
    wanted = [("GET", "prefer=web,ceph1", f"bytes=1048576-{len(DATA) - 1}")]
    if headers is MEMBER:
        wanted.append(("GET", "", f"bytes=1048576-{len(DATA) - 1}"))
    assert upstream.files == wanted
