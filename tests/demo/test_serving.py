"""The demo's loopback servers (``locproxy.demo.serving``): ``serve_static`` with
ranges, ``serve_wsgi`` serving the API over a socket."""

from __future__ import annotations

from pathlib import Path

import pytest

from locproxy.demo import (
    DemoSetup,
    demo_bytes,
    serve_static,
    serve_wsgi,
)
from tests.support.client import http_request
from tests.support.demo import (
    MOTD,
)

# -- serve_static ---------------------------------------------------------------------------------------



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
        got = http_request(server.url + "/blob", headers=headers, timeout=5)
    assert (got.status, got.body) == (status, data[body_slice])
    assert got.header("Content-Length") == str(len(data[body_slice]))
    assert got.header("Content-Range") == content_range


def test_serve_static_head_and_missing(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(b"0123456789")
    with serve_static(str(tmp_path)) as server:
        head = http_request(server.url + "/blob", "HEAD", headers={"Range": "bytes=2-3"}, timeout=5)
        assert (head.status, head.header("Content-Range"), head.body) == (206, "bytes 2-3/10", b"")
        assert http_request(server.url + "/missing", headers={"Range": "bytes=0-1"}, timeout=5).status == 404



def test_serve_wsgi_serves_the_api_over_a_socket(demo: DemoSetup) -> None:
    data = demo.data["motd-text"]
    with serve_wsgi(demo.api) as server:
        shown = http_request(server.url + f"/v2/images/{MOTD}", timeout=5)
        assert (shown.status, shown.json()["id"]) == (200, MOTD)
        part = http_request(server.url + f"/v2/images/{MOTD}/file", headers={"Range": "bytes=-10"}, timeout=5)
    assert (part.status, part.body) == (206, data[-10:])
    assert part.header("Content-Range") == f"bytes {len(data) - 10}-{len(data) - 1}/{len(data)}"
    assert demo.api.calls["GET file"] == 1
