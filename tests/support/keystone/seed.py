"""Seeding images under Glance's default policies (``keystone_glance``).

With ``show_multiple_locations = False`` an active image can get no extra
location, so an http copy exists only if it is registered while the image
is *queued*: the owner ``POST``s ``/v2/images/{id}/locations`` (Glance
imports it, the image goes active), then the admin copies it to file stores
(``copy-image`` is admin-only). Glance's database order is then
``[web, fs1, fs2]``; store weights decide ``direct_url``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tests.support.keystone.lab import KeystoneGlance


@dataclass
class SeededImage:
    id: str
    data: bytes
    owner: str
    web_path: str  # the web server's path of its http copy

    @property
    def sha512(self) -> str:
        return hashlib.sha512(self.data).hexdigest()


def seed_image(glance: KeystoneGlance, data: bytes, *, owner: str = "alice", copies: tuple[str, ...] = ("fs1", "fs2"),
               public: bool = False, name: str = "locproxy-keystone") -> SeededImage:
    """An image of ``owner`` with an http copy on the web store and ``copies`` (file stores)."""
    identity = glance.as_user(owner)
    created = glance.request("POST", "/v2/images", identity=identity, json_body={
        "name": name, "disk_format": "raw", "container_format": "bare"})
    assert created.status == 201, created.body[:500]
    image_id = created.json()["id"]
    url = glance.web.put(f"{image_id}.raw", data)
    glance.add_location_api(image_id, url, identity=identity, validation_data={
        "os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(data).hexdigest()})
    for store in copies:
        glance.copy_to_store(image_id, store, identity=glance.as_user("admin"))
    if public:
        resp = glance.patch_image(image_id, [{"op": "replace", "path": "/visibility", "value": "public"}],
                                  identity=glance.as_user("admin"))
        assert resp.status == 200, resp.body[:500]
    return SeededImage(image_id, data, owner, f"/{image_id}.raw")
