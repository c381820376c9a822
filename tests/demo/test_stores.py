"""Downloads and uploads of the demo API (``locproxy.demo.stores``): which
location serves, within the file roots and http prefixes, ranges and status."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from webtest import TestApp

from locproxy.demo import (
    DemoImageAPI,
    DemoSetup,
    build_demo,
    location,
    serve_static,
    web_dir_of,
)
from tests.support.demo import (
    ADMIN,
    CIRROS,
    MOTD,
    OWNER,
    PRIVATE,
    QUEUED,
    RETIRED,
    UNKNOWN,
    file_url,
)

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


def test_download_several_ranges_is_400_as_glance(app: TestApp) -> None:
    response = app.get(f"/v2/images/{MOTD}/file", headers={"Range": "bytes=0-1,4-5"}, status=400)
    assert "single-range" in response.text
    assert "Content-Range" not in response.headers


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



# -- http locations -----------------------------------------------------------------------------------

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
