"""The fleet's image API: locproxy's demo API holding the bench's images.

Served by gunicorn in the API namespace::

    gunicorn --preload --bind 10.77.1.1:9292 'bench.fleet.upstream:app("/path/manifest.json")'

Every image lists one copy per backend, always in the manifest's backend
order (the "one fixed order" every static strategy starts from). The demo
API keeps each image's bytes in memory to compute ``size``, ``checksum`` and
``os_hash_value``, and serves its own ``/file`` from them (locproxy's last
resort). This is the only fleet module that imports locproxy: the demo API
is being moved into a package, and only this import has to follow it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from locproxy.demo import DemoImageAPI, location


def app(manifest_path: str) -> Any:
    """A ``DemoImageAPI`` with the manifest's images (digests computed now,
    so that with ``--preload`` the first requests do not pay for them)."""
    manifest = json.loads(Path(manifest_path).read_text())
    api = DemoImageAPI()
    for image in manifest["images"]:
        data = Path(image["path"]).read_bytes()
        locations = [location(f"{backend['url']}/{image['file']}", backend["name"])
                     for backend in manifest["backends"]]
        api.add_image(id=image["id"], name=image["name"], data=data, locations=locations,
                      disk_format="raw", container_format="bare")
        shown = api.image(image["id"])
        if shown["os_hash_value"] != image["sha512"]:
            raise ValueError(f"{image['path']}: sha512 differs from the manifest")
    return api
