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
    store_a, store_b = os.path.join(workdir, "store-a"), os.path.join(workdir, "store-b")
    web = web_dir_of(workdir)
    for directory in (store_a, store_b, web):
        os.makedirs(directory, exist_ok=True)
    data = dict(_demo_data())
    ids = dict(DEMO_IMAGE_IDS)

    def copy_to(directory: str, store: str, name: str, **metadata: Any) -> dict[str, Any]:
        path = Path(directory, ids[name])
        _write_if_changed(path, data[name])
        return location(path.resolve().as_uri(), store, **metadata)

    def on_web(name: str, **metadata: Any) -> list[dict[str, Any]]:
        _write_if_changed(Path(web, ids[name]), data[name])
        if http_base_url is None:
            return []
        return [location(f"{http_base_url.rstrip('/')}/{ids[name]}", "web", **metadata)]

    specs: list[dict[str, Any]] = [
        # Upstream order puts the slow copy first; weights say fast-disk is best.
        dict(name="cirros-demo", disk_format="qcow2", locations=[
            copy_to(store_b, "slow-disk", "cirros-demo", weight=10),
            *on_web("cirros-demo", weight=50),
            copy_to(store_a, "fast-disk", "cirros-demo", weight=100),
        ]),
        # First copy is in Ceph, which locproxy cannot read.
        dict(name="ubuntu-demo", disk_format="raw", locations=[
            location(f"rbd://b5a4c2e0-demo-fsid/images/{ids['ubuntu-demo']}/snap", "ceph", weight=200),
            copy_to(store_a, "fast-disk", "ubuntu-demo", weight=100),
            *on_web("ubuntu-demo", weight=50),
        ]),
        dict(name="motd-text", disk_format="raw", locations=[
            copy_to(store_b, "slow-disk", "motd-text"),
            copy_to(store_a, "fast-disk", "motd-text"),
        ]),
        dict(name="queued-empty"),
        dict(name="retired-demo", status="deactivated", locations=[
            copy_to(store_a, "fast-disk", "retired-demo"),
            copy_to(store_b, "slow-disk", "retired-demo"),
        ]),
        # Private, and its first URL carries credentials (never to be logged).
        dict(name="private-demo", visibility="private", locations=[
            location(f"swift+https://demo:s3cret@swift.invalid/v1/AUTH_demo/glance/{ids['private-demo']}",
                     "swift"),
            copy_to(store_a, "fast-disk", "private-demo"),
        ]),
    ]
    api = DemoImageAPI(
        file_roots=(store_a, store_b),
        http_prefixes=(http_base_url,) if http_base_url else (),
        upload_store=("fast-disk", store_a),
    )
    for number, spec in enumerate(specs, start=1):
        name = spec["name"]
        api.add_image(id=ids[name], data=data.get(name), owner=DEMO_OWNER,
                      container_format="bare", created_at=f"2024-01-0{number}T12:00:00Z", **spec)
    return DemoSetup(api=api, workdir=workdir, store_a=store_a, store_b=store_b, web_dir=web,
                     http_base_url=http_base_url, image_ids=ids, data=data)
