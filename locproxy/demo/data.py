"""The demo data set: three stores on disk and six images that show what
locproxy does (reordering, an unreadable first copy, a deactivated image, a
private one whose location carries credentials)."""

from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locproxy.demo.api import DemoImageAPI
from locproxy.demo.model import location

DEMO_OWNER = "demo-project"
DEMO_IMAGE_IDS = {
    "cirros-demo": "c1005000-0000-4000-8000-000000000001",
    "ubuntu-demo": "c1005000-0000-4000-8000-000000000002",
    "motd-text": "c1005000-0000-4000-8000-000000000003",
    "queued-empty": "c1005000-0000-4000-8000-000000000004",
    "retired-demo": "c1005000-0000-4000-8000-000000000005",
    "private-demo": "c1005000-0000-4000-8000-000000000006",
}
_MIB = 1024 * 1024


@dataclass
class DemoSetup:
    """What ``build_demo`` made: the API, its directories and image ids by name."""

    api: DemoImageAPI
    workdir: str
    store_a: str  # store "fast-disk"
    store_b: str  # store "slow-disk"
    web_dir: str  # served as store "web" when http_base_url is given
    http_base_url: str | None
    image_ids: dict[str, str]
    data: dict[str, bytes]  # image name -> its bytes (absent for queued-empty)


def demo_bytes(name: str, size: int) -> bytes:
    """Deterministic pseudo-random image bytes (the same on every run and version)."""
    return random.Random(f"locproxy-demo:{name}").randbytes(size)


def _motd() -> bytes:
    lines = [f"{n:03d} locproxy demo: this image is served from the best copy.\n" for n in range(40)]
    return "".join(lines).encode("ascii")


@functools.lru_cache(maxsize=1)
def _demo_data() -> dict[str, bytes]:
    """The demo images' bytes, generated once per process (callers copy the dict)."""
    return {
        "cirros-demo": demo_bytes("cirros-demo", 2 * _MIB),
        "ubuntu-demo": demo_bytes("ubuntu-demo", 3 * _MIB),
        "motd-text": _motd(),
        "retired-demo": demo_bytes("retired-demo", 1 * _MIB),
        "private-demo": demo_bytes("private-demo", 1 * _MIB),
    }


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` unless the file already holds it (rebuilding is then cheap)."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    path.write_bytes(data)


def web_dir_of(workdir: str) -> str:
    """The directory the demo's http store serves (start serve_static on it first)."""
    return os.path.join(workdir, "web")


def build_demo(workdir: str, http_base_url: str | None = None) -> DemoSetup:
    """Write the demo stores under ``workdir`` and return an API holding the demo images.

    Images have copies in ``store-a`` ("fast-disk"), ``store-b`` ("slow-disk"),
    ``web`` ("web", only listed when ``http_base_url`` is given), plus
    unreadable ``rbd://`` and ``swift+https://`` locations. Every call
    restores missing or altered store files (unchanged ones are not rewritten).
    """
    stores = _Stores(workdir, http_base_url)
    api = DemoImageAPI(
        file_roots=(stores.store_a, stores.store_b),
        http_prefixes=(http_base_url,) if http_base_url else (),
        upload_store=("fast-disk", stores.store_a),
    )
    for number, spec in enumerate(_image_specs(stores), start=1):
        name = spec["name"]
        api.add_image(id=DEMO_IMAGE_IDS[name], data=stores.data.get(name), owner=DEMO_OWNER,
                      container_format="bare", created_at=f"2024-01-0{number}T12:00:00Z", **spec)
    return DemoSetup(api=api, workdir=workdir, store_a=stores.store_a, store_b=stores.store_b, web_dir=stores.web,
                     http_base_url=http_base_url, image_ids=dict(DEMO_IMAGE_IDS), data=stores.data)


class _Stores:
    """The demo's store directories, and copies of the demo images in them."""

    def __init__(self, workdir: str, http_base_url: str | None) -> None:
        self.store_a, self.store_b = os.path.join(workdir, "store-a"), os.path.join(workdir, "store-b")
        self.web = web_dir_of(workdir)
        self.http_base_url = http_base_url
        for directory in (self.store_a, self.store_b, self.web):
            os.makedirs(directory, exist_ok=True)
        self.data = dict(_demo_data())

    def copy_to(self, directory: str, store: str, name: str, **metadata: Any) -> dict[str, Any]:
        path = Path(directory, DEMO_IMAGE_IDS[name])
        _write_if_changed(path, self.data[name])
        return location(path.resolve().as_uri(), store, **metadata)

    def fast(self, name: str, **metadata: Any) -> dict[str, Any]:
        return self.copy_to(self.store_a, "fast-disk", name, **metadata)

    def slow(self, name: str, **metadata: Any) -> dict[str, Any]:
        return self.copy_to(self.store_b, "slow-disk", name, **metadata)

    def on_web(self, name: str, **metadata: Any) -> list[dict[str, Any]]:
        """The web copy (written always, listed only when it is served)."""
        _write_if_changed(Path(self.web, DEMO_IMAGE_IDS[name]), self.data[name])
        if self.http_base_url is None:
            return []
        return [location(f"{self.http_base_url.rstrip('/')}/{DEMO_IMAGE_IDS[name]}", "web", **metadata)]


def _image_specs(stores: _Stores) -> list[dict[str, Any]]:
    ids = DEMO_IMAGE_IDS
    return [
        # Upstream order puts the slow copy first; weights say fast-disk is best.
        dict(name="cirros-demo", disk_format="qcow2", locations=[
            stores.slow("cirros-demo", weight=10),
            *stores.on_web("cirros-demo", weight=50),
            stores.fast("cirros-demo", weight=100),
        ]),
        # First copy is in Ceph, which locproxy cannot read.
        dict(name="ubuntu-demo", disk_format="raw", locations=[
            location(f"rbd://b5a4c2e0-demo-fsid/images/{ids['ubuntu-demo']}/snap", "ceph", weight=200),
            stores.fast("ubuntu-demo", weight=100),
            *stores.on_web("ubuntu-demo", weight=50),
        ]),
        dict(name="motd-text", disk_format="raw", locations=[stores.slow("motd-text"), stores.fast("motd-text")]),
        dict(name="queued-empty"),
        dict(name="retired-demo", status="deactivated", locations=[
            stores.fast("retired-demo"), stores.slow("retired-demo"),
        ]),
        # Private, and its first URL carries credentials (never to be logged).
        dict(name="private-demo", visibility="private", locations=[
            location(f"swift+https://demo:s3cret@swift.invalid/v1/AUTH_demo/glance/{ids['private-demo']}",
                     "swift"),
            stores.fast("private-demo"),
        ]),
    ]
