"""Smoke tests proving the integration environment is a real, working Glance.

They also pin down the Glance behaviours locproxy relies on (locations,
direct_url, copy-image, http locations, Range, deactivation, client-side
checksum verification), so a Glance upgrade that changes them shows up here
first. Every test here talks to the session's ``glance_server``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.glance.config import locproxy_paste_ini
from tests.support.glance.server import GlanceServer

pytestmark = pytest.mark.integration

MEMBER_ROLES = ("member", "reader")


def _urls(image: dict[str, Any]) -> list[str]:
    return [loc["url"] for loc in image["locations"]]


def _stores(image: dict[str, Any]) -> list[str | None]:
    return [loc["metadata"].get("store") for loc in image["locations"]]


def test_glance_answers_versions_and_requires_identity(glance_server: GlanceServer) -> None:
    versions = glance_server.get_json("/versions", identity={})
    current = [v["id"] for v in versions["versions"] if v["status"] == "CURRENT"]
    assert current and current[0].startswith("v2."), versions

    listing = glance_server.get_json("/v2/images")
    assert "images" in listing and listing["schema"] == "/v2/schemas/images"

    # No keystone and no anonymous access: without the trusted headers, 401.
    anonymous = glance_server.request("GET", "/v2/images", identity={})
    assert anonymous.status == 401, anonymous.body


def test_upload_stores_image_in_fs1_with_direct_url(glance_server: GlanceServer) -> None:
    data = os.urandom(200_000)
    image_id = glance_server.create_image(data, name="smoke-upload")
    image = glance_server.get_image(image_id)

    assert image["status"] == "active"
    assert image["size"] == len(data)
    assert image["checksum"] == hashlib.md5(data).hexdigest()
    assert (image["os_hash_algo"], image["os_hash_value"]) == ("sha512", hashlib.sha512(data).hexdigest())
    expected_url = f"file://{glance_server.store_dirs['fs1']}/{image_id}"
    assert image["locations"] == [{"url": expected_url, "metadata": {"store": "fs1"}}]
    assert image["direct_url"] == expected_url
    assert image["stores"] == "fs1"
    assert (glance_server.store_dirs["fs1"] / image_id).read_bytes() == data


def test_upload_to_named_store(glance_server: GlanceServer) -> None:
    image_id = glance_server.create_image(b"fs2 bytes", store="fs2", name="smoke-fs2")
    image = glance_server.get_image(image_id)
    assert _stores(image) == ["fs2"]
    assert (glance_server.store_dirs["fs2"] / image_id).read_bytes() == b"fs2 bytes"


def test_copy_image_adds_a_second_file_copy_in_fs2(glance_server: GlanceServer) -> None:
    data = os.urandom(100_000)
    image_id = glance_server.create_image(data, name="smoke-copy")

    image = glance_server.copy_to_store(image_id, "fs2")

    assert _urls(image) == [
        f"file://{glance_server.store_dirs['fs1']}/{image_id}",
        f"file://{glance_server.store_dirs['fs2']}/{image_id}",
    ]
    assert _stores(image) == ["fs1", "fs2"]
    assert image["stores"] == "fs1,fs2"
    assert image["direct_url"] == image["locations"][0]["url"]
    assert (glance_server.store_dirs["fs2"] / image_id).read_bytes() == data


def test_http_location_on_the_loopback_web_server(glance_server: GlanceServer) -> None:
    data = os.urandom(50_000)
    image_id = glance_server.create_image(data, name="smoke-http")
    web_url = glance_server.web.put(f"{image_id}.raw", data)
    seen = len(glance_server.web.requests)

    image = glance_server.add_location(image_id, web_url, {"note": "loopback"})

    assert image["locations"][-1] == {"url": web_url, "metadata": {"note": "loopback", "store": "web"}}
    assert image["stores"] == "fs1,web"
    # Glance validated the location with a HEAD (size), not a GET.
    assert glance_server.web.requests[seen:] == [("HEAD", f"/{image_id}.raw", None)]

    # Glance can read from it: remove the file copy, download through Glance.
    removed = glance_server.remove_location(image_id, 0)
    assert removed.status == 200, removed.body
    seen = len(glance_server.web.requests)
    download = glance_server.request("GET", f"/v2/images/{image_id}/file")
    assert download.status == 200 and download.body == data
    assert ("GET", f"/{image_id}.raw", None) in glance_server.web.requests[seen:]
    assert not (glance_server.store_dirs["fs1"] / image_id).exists(), "removing a location deletes the copy"


@pytest.mark.parametrize(
    "url, why",
    [
        pytest.param("file:///etc/passwd", "file locations are refused", id="file-scheme"),
        pytest.param("http://127.0.0.1:1/x.raw", "port not in allowed_ports", id="port-not-allowed"),
        pytest.param("{web}/missing.raw", "HEAD answers 404", id="missing"),
    ],
)
def test_invalid_locations_are_refused(glance_server: GlanceServer, url: str, why: str) -> None:
    image_id = glance_server.create_image(b"x" * 10, name="smoke-invalid-location")
    value = {"url": url.format(web=glance_server.web.url), "metadata": {}}
    resp = glance_server.patch_image(image_id, [{"op": "add", "path": "/locations/-", "value": value}])
    assert resp.status == 400, (why, resp.body)
    assert b"Invalid location" in resp.body


def test_policy_file_lets_members_delete_locations(glance_server: GlanceServer) -> None:
    # delete_image_location is admin-only in Glance's defaults: a member
    # succeeding proves Glance read policy.yaml from OS_GLANCE_CONFIG_DIR.
    member = glance_server.headers(roles=MEMBER_ROLES)
    data = b"member data"
    image_id = glance_server.create_image(data, identity=member, name="smoke-member")
    web_url = glance_server.web.put(f"{image_id}.raw", data)
    glance_server.add_location(image_id, web_url, identity=member)

    resp = glance_server.remove_location(image_id, 1, identity=member)

    assert resp.status == 200, resp.body
    assert _urls(resp.json()) == [f"file://{glance_server.store_dirs['fs1']}/{image_id}"]


def test_location_api_activates_a_queued_image(glance_server: GlanceServer) -> None:
    data = os.urandom(4096)
    created = glance_server.request(
        "POST", "/v2/images", json_body={"name": "smoke-location-api", "disk_format": "raw", "container_format": "bare"}
    )
    assert created.status == 201, created.body
    image_id = created.json()["id"]
    web_url = glance_server.web.put(f"{image_id}.raw", data)

    image = glance_server.add_location_api(
        image_id, web_url, validation_data={"os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest()}
    )

    assert image["status"] == "active"
    assert image["locations"] == [{"url": web_url, "metadata": {"store": "web"}}]
    assert image["size"] == len(data)
    assert image["os_hash_value"] == hashlib.sha512(data).hexdigest()


def test_download_range_and_deactivation_semantics(glance_server: GlanceServer) -> None:
    data = os.urandom(10_000)
    image_id = glance_server.create_image(data, name="smoke-range")
    path = f"/v2/images/{image_id}/file"

    full = glance_server.request("GET", path)
    assert full.status == 200 and full.body == data
    assert full.header("Content-MD5") == hashlib.md5(data).hexdigest()
    assert full.header("Content-Type") == "application/octet-stream"

    part = glance_server.request("GET", path, headers={"Range": "bytes=10-19"})
    assert (part.status, part.header("Content-Range"), part.body) == (206, "bytes 10-19/10000", data[10:20])
    suffix = glance_server.request("GET", path, headers={"Range": "bytes=-5"})
    assert (suffix.status, suffix.header("Content-Range"), suffix.body) == (206, "bytes 9995-9999/10000", data[-5:])
    assert glance_server.request("GET", path, headers={"Range": "bytes=20000-"}).status == 416

    glance_server.deactivate(image_id)
    try:
        member = glance_server.request("GET", path, identity=glance_server.headers(roles=MEMBER_ROLES))
        assert member.status == 403 and b"deactivated" in member.body
        admin = glance_server.request("GET", path)
        assert admin.status == 200 and admin.body == data
    finally:
        glance_server.reactivate(image_id)


def test_download_prefer_parameter_picks_the_store(glance_server: GlanceServer) -> None:
    data = os.urandom(3000)
    image_id = glance_server.create_image(data, name="smoke-prefer")
    glance_server.copy_to_store(image_id, "fs2")
    # Tell the copies apart: same size, other bytes in fs1.
    other = os.urandom(len(data))
    (glance_server.store_dirs["fs1"] / image_id).write_bytes(other)
    path = f"/v2/images/{image_id}/file"

    assert glance_server.request("GET", path).body == other  # first location: fs1
    assert glance_server.request("GET", path + "?prefer=fs2").body == data
    assert glance_server.request("GET", path + "?prefer=web,fs2").body == data
    unknown = glance_server.request("GET", path + "?prefer=nope")
    assert unknown.status == 400 and b"Store 'nope' is not configured" in unknown.body


def test_store_weight_orders_locations(glance_server: GlanceServer) -> None:
    image_id = glance_server.create_image(b"weighted", name="smoke-weight")
    glance_server.copy_to_store(image_id, "fs2")
    assert _stores(glance_server.get_image(image_id)) == ["fs1", "fs2"]

    with glance_server.config_overrides({"fs2": {"weight": "100"}, "fs1": {"weight": "10"}}):
        image = glance_server.get_image(image_id)
        assert _stores(image) == ["fs2", "fs1"]
        assert image["direct_url"] == f"file://{glance_server.store_dirs['fs2']}/{image_id}"

    assert _stores(glance_server.get_image(image_id)) == ["fs1", "fs2"]


def test_glance_cli_downloads_and_verifies_checksums(glance_server: GlanceServer, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    image_id = glance_server.create_image(data, name="smoke-cli")
    glance_server.copy_to_store(image_id, "fs2")
    out = tmp_path / "download.raw"

    proc = glance_server.glance_cli("image-download", "--file", str(out), image_id)

    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == data

    # Same size, other bytes in the copy Glance serves first: the CLI's
    # end-of-stream verification (os_hash_value) must reject it.
    (glance_server.store_dirs["fs1"] / image_id).write_bytes(os.urandom(len(data)))
    proc = glance_server.glance_cli("image-download", "--file", str(tmp_path / "corrupt.raw"), image_id)
    assert proc.returncode != 0
    assert "Corrupt image download" in proc.stderr, proc.stderr
    assert hashlib.sha512(data).hexdigest() in proc.stderr


def test_glance_cli_show_uses_token_identity(glance_server: GlanceServer) -> None:
    image_id = glance_server.create_image(b"cli show", name="smoke-cli-show")
    proc = glance_server.glance_cli("image-show", image_id)
    assert proc.returncode == 0, proc.stderr
    assert image_id in proc.stdout and "fs1" in proc.stdout

    # A project that does not own the (shared-visibility) image cannot see it.
    other = glance_server.glance_cli("image-show", image_id, token=glance_server.token(project="other", roles="member"))
    assert other.returncode != 0
    assert "404" in other.stderr or "No image" in other.stderr, other.stderr


GLANCECLIENT_LIBRARY = """
import hashlib, json, sys
import glanceclient
url, image_id, token, header_json = sys.argv[1:5]
kwargs = {"identity_headers": json.loads(header_json)} if header_json != "null" else {}
client = glanceclient.Client("2", endpoint=url, token=token, **kwargs)
image = client.images.get(image_id)
data = b"".join(client.images.data(image_id))  # verifies os_hash_value at the end
print(json.dumps({"sha512": hashlib.sha512(data).hexdigest(), "stores": image["stores"]}))
"""


@pytest.mark.parametrize(
    "use_identity_headers",
    [pytest.param(False, id="token-via-tokenauth"), pytest.param(True, id="identity_headers")],
)
def test_glanceclient_library_without_keystone(
    glance_server: GlanceServer, use_identity_headers: bool
) -> None:
    data = os.urandom(20_000)
    image_id = glance_server.create_image(data, name="smoke-library")
    if use_identity_headers:
        # glanceclient URL-quotes header values, so "admin,member" would reach
        # Glance as one role "admin%2Cmember": send a single role.
        token, headers = "unused", json.dumps(glance_server.headers(roles="admin"))
    else:
        token, headers = glance_server.token(), "null"

    proc = glance_server.venv_python_run(GLANCECLIENT_LIBRARY, glance_server.url, image_id, token, headers)

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"sha512": hashlib.sha512(data).hexdigest(), "stores": "fs1"}


@pytest.mark.parametrize(
    "use",
    [
        pytest.param("egg:locproxy#locproxy", id="egg-entry-point"),
        pytest.param("locproxy.middleware:filter_factory", id="filter_factory"),
    ],
)
def test_restart_with_locproxy_in_glance_pipeline(glance_server: GlanceServer, use: str) -> None:
    data = os.urandom(1000)
    image_id = glance_server.create_image(data, name="smoke-locproxy-pipeline")
    web_url = glance_server.web.put(f"{image_id}.raw", data)
    glance_server.add_location(image_id, web_url)
    file_url = f"file://{glance_server.store_dirs['fs1']}/{image_id}"
    assert _urls(glance_server.get_image(image_id)) == [file_url, web_url]

    paste = locproxy_paste_ini(use=use, location_strategy="store_type", store_type_preference="http, file")
    with glance_server.paste_pipeline(paste):
        assert "locproxy" in glance_server.paste_ini_path.read_text()
        image = glance_server.get_image(image_id)
        assert _urls(image) == [web_url, file_url]
        assert image["direct_url"] == web_url

    # Restored: Glance's own order again.
    assert _urls(glance_server.get_image(image_id)) == [file_url, web_url]


def test_locproxy_in_glance_pipeline_serves_file_from_preferred_backend(glance_server: GlanceServer) -> None:
    data = os.urandom(5000)
    image_id = glance_server.create_image(data, name="smoke-locproxy-download")
    web_url = glance_server.web.put(f"{image_id}.raw", data)
    glance_server.add_location(image_id, web_url)
    paste = locproxy_paste_ini(
        location_strategy="store_type",
        store_type_preference="http, file",
        allowed_hosts=f"127.0.0.1:{glance_server.web.port}",
    )
    with glance_server.paste_pipeline(paste):
        seen = len(glance_server.web.requests)
        resp = glance_server.request("GET", f"/v2/images/{image_id}/file")
        assert resp.status == 200, resp.body[:500]
        assert resp.body == data
        assert ("GET", f"/{image_id}.raw", None) in glance_server.web.requests[seen:]
