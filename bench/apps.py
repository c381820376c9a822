"""WSGI apps the benchmark serves with gunicorn (``bench.apps:NAME()``).

* ``upstream()`` -- the stand-in image API for the download rows: images from
  a catalog (``$BENCH_CATALOG``, JSON written by ``bench.context``) whose JSON
  carries correct ``size``/``checksum``/``os_hash_*`` for big files on disk
  (``locproxy.demo.DemoImageAPI`` keeps image bytes in memory and cannot
  hold 1 GiB), and whose own ``/file`` reads the file the way Glance's
  filesystem store does: 64 KiB reads (``glance_store``'s ``ChunkedFile``),
  yielded one by one. Anything else goes to a ``DemoImageAPI``.
* ``demo()`` -- ``DemoImageAPI`` alone, holding ``SHOW_IMAGE_ID`` (three
  locations: rbd, file, http; realistic Glance fields).
* ``filtered()`` -- the same ``DemoImageAPI`` behind ``LocationFilter``, as
  inside Glance's paste pipeline (strategy ``store_type``, ``file, http``).

Loopback benchmark code, no trust decisions: the catalog names the files.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterator

from locproxy.demo import DemoImageAPI
from locproxy.ranges import Malformed, Unsatisfiable, parse_range

SHOW_IMAGE_ID = "5e1ec7ed-0000-4000-8000-000000000001"
GLANCE_CHUNK = 64 * 1024  # glance_store/_drivers/filesystem.py ChunkedFile.CHUNKSIZE
FILTER_OPTIONS = {"location_strategy": "store_type", "store_type_preference": "file, http"}

_PATH = re.compile(r"^/v2/images/(?P<id>[^/]+)(?P<file>/file)?/?$")


def glance_image(image_id: str, name: str, size: int | None, md5: str | None, sha512: str | None,
                 locations: list[dict[str, Any]], status: str = "active") -> dict[str, Any]:
    """An image as Glance v2 shows it (show_multiple_locations and
    show_image_direct_url on), with Glance's field set."""
    stores = [loc["metadata"].get("store") for loc in locations]
    return {
        "id": image_id,
        "name": name,
        "status": status,
        "visibility": "public",
        "owner": "0123456789abcdef0123456789abcdef",
        "size": size,
        "virtual_size": size,
        "checksum": md5,
        "os_hash_algo": "sha512" if sha512 else None,
        "os_hash_value": sha512,
        "disk_format": "raw",
        "container_format": "bare",
        "min_disk": 0,
        "min_ram": 0,
        "protected": False,
        "os_hidden": False,
        "tags": [],
        "created_at": "2024-06-01T12:00:00Z",
        "updated_at": "2024-06-01T12:00:05Z",
        "hw_disk_bus": "virtio",
        "os_distro": "ubuntu",
        "os_version": "24.04",
        "stores": ",".join(s for s in stores if s),
        "locations": locations,
        "direct_url": locations[0]["url"] if locations else None,
        "file": f"/v2/images/{image_id}/file",
        "self": f"/v2/images/{image_id}",
        "schema": "/v2/schemas/image",
    }


def three_locations(image_id: str) -> list[dict[str, Any]]:
    """rbd, file, http: a typical multi-store image (in an order store_type changes)."""
    return [
        {"url": f"rbd://b5a4c2e0-6a8c-4c1d-9a6e-3f0d2c1b0a99/images/{image_id}/snap",
         "metadata": {"store": "ceph"}, "status": "active"},
        {"url": f"file:///var/lib/glance/images/{image_id}", "metadata": {"store": "fast-disk"},
         "status": "active"},
        {"url": f"http://images.example.org:8080/glance/{image_id}", "metadata": {"store": "web"},
         "status": "active"},
    ]


def _demo_api() -> DemoImageAPI:
    api = DemoImageAPI()
    api.add_image(
        id=SHOW_IMAGE_ID, name="ubuntu-24.04-server", data=b"\0" * 4096, owner="bench",
        disk_format="raw", container_format="bare", locations=three_locations(SHOW_IMAGE_ID),
        hw_disk_bus="virtio", os_distro="ubuntu", os_version="24.04",
    )
    return api


def demo() -> Callable:
    return _demo_api()


def filtered() -> Callable:
    from locproxy.config import load_filter_settings
    from locproxy.middleware import LocationFilter

    return LocationFilter(_demo_api(), load_filter_settings({}, dict(FILTER_OPTIONS)))


def upstream() -> Callable:
    with open(os.environ["BENCH_CATALOG"]) as stream:
        catalog = json.load(stream)
    return BenchUpstream(catalog["images"], _demo_api())


class BenchUpstream:
    """Catalog images (JSON + ``/file`` from disk), everything else to ``fallback``."""

    def __init__(self, images: dict[str, dict[str, Any]], fallback: Callable) -> None:
        self.images = images
        self.fallback = fallback
        self.bodies = {image_id: json.dumps(entry["image"]).encode() for image_id, entry in images.items()}

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        match = _PATH.match(environ.get("PATH_INFO", ""))
        if match is None or match["id"] not in self.images:
            return self.fallback(environ, start_response)
        method = environ["REQUEST_METHOD"]
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Length", "0")])
            return []
        image_id = match["id"]
        if not match["file"]:
            body = self.bodies[image_id]
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [] if method == "HEAD" else [body]
        entry = self.images[image_id]
        size = entry["image"]["size"]
        headers = [("Content-Type", "application/octet-stream"), ("Accept-Ranges", "bytes")]
        try:
            span = parse_range(environ.get("HTTP_RANGE"), size)
        except Malformed:
            span = None  # RFC 9110 lets a server ignore a Range it cannot parse: the whole image
        except Unsatisfiable:
            start_response("416 Range Not Satisfiable", [("Content-Range", f"bytes */{size}"),
                                                         ("Content-Length", "0")])
            return []
        if span is None:
            start, stop, status = 0, size, "200 OK"
            headers.append(("Content-MD5", entry["image"]["checksum"]))
        else:
            (start, stop), status = span, "206 Partial Content"
            headers.append(("Content-Range", f"bytes {start}-{stop - 1}/{size}"))
        headers.append(("Content-Length", str(stop - start)))
        start_response(status, headers)
        if method == "HEAD":
            return []
        return _ChunkedFile(entry["path"], start, stop - start)


class _ChunkedFile:
    """Like glance_store's filesystem ``ChunkedFile``: 64 KiB reads, yielded."""

    def __init__(self, path: str, start: int, length: int) -> None:
        self._file = open(path, "rb")
        self._file.seek(start)
        self._remaining = length

    def __iter__(self) -> Iterator[bytes]:
        while self._remaining > 0:
            chunk = self._file.read(min(GLANCE_CHUNK, self._remaining))
            if not chunk:
                return
            self._remaining -= len(chunk)
            yield chunk

    def close(self) -> None:
        self._file.close()
