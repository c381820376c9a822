"""The demo image API's model: images, their JSON, their validation, JSON-patch.

What Glance v2 does, to the extent a demo and test upstream needs: the image
record and its rendering (``render_image``), the schema checks on settable
attributes and locations, and the parsing of JSON-patch bodies into
operations. No I/O.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

import webob.exc

DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
VISIBILITIES = ("public", "private", "shared", "community")

# Attributes Glance computes itself: setting them is 403 "read-only".
READ_ONLY = frozenset({
    "id", "status", "size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value",
    "created_at", "updated_at", "file", "self", "schema", "direct_url", "stores",
})
# Attributes with their own validation; everything else is an extra
# (string-valued) property.
CORE = frozenset({
    "name", "visibility", "owner", "disk_format", "container_format",
    "min_disk", "min_ram", "protected", "os_hidden", "tags",
})


def utc_now() -> str:
    """Glance's timestamp format, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def location(url: str, store: str | None = None, **metadata: Any) -> dict[str, Any]:
    """A Glance location: ``{"url": url, "metadata": {"store": store, **metadata}}``."""
    meta = {"store": store} if store else {}
    meta.update(metadata)
    return {"url": url, "metadata": meta}


class ApiError(ValueError):
    """A fault answered with a webob (Glance-like) error body; a ValueError
    for direct callers such as ``add_image``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> webob.exc.WSGIHTTPException:
        error_class = webob.exc.status_map[self.status]
        kwargs = {"explanation": self.message}
        # A few webob classes (415) have a template without the explanation.
        if "${explanation}" not in error_class.body_template_obj.template:
            kwargs["detail"] = self.message
        return error_class(headers=self.headers, **kwargs)


# -- the image model --------------------------------------------------------

@dataclass
class DemoImage:
    """One image record; ``data`` is the in-memory copy of its bytes."""

    id: str
    created_at: str
    updated_at: str
    name: str | None = None
    status: str = "queued"
    visibility: str = "shared"
    owner: str | None = None
    disk_format: str | None = None
    container_format: str | None = None
    min_disk: int = 0
    min_ram: int = 0
    protected: bool = False
    os_hidden: bool = False
    tags: list[str] = field(default_factory=list)
    locations: list[dict[str, Any]] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None

    @property
    def size(self) -> int | None:
        return None if self.data is None else len(self.data)

    @property
    def checksum(self) -> str | None:
        return None if self.data is None else _digests(self.data)[0]

    @property
    def os_hash_value(self) -> str | None:
        return None if self.data is None else _digests(self.data)[1]


@functools.lru_cache(maxsize=32)
def _digests(data: bytes) -> tuple[str, str]:
    """(md5, sha512) hex digests; cached because every render shows them (bytes
    objects cache their own hash, so a lookup does not rehash the data)."""
    return hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest()


def render_image(image: DemoImage, *, show_locations: bool, show_direct_url: bool) -> dict[str, Any]:
    """The v2 JSON of an image, as Glance's serializer builds it."""
    view: dict[str, Any] = dict(image.properties)
    checksum = image.checksum
    view.update({
        "id": image.id,
        "name": image.name,
        "status": image.status,
        "visibility": image.visibility,
        "owner": image.owner,
        "size": image.size,
        "virtual_size": None,
        "checksum": checksum,
        "os_hash_algo": "sha512" if checksum else None,
        "os_hash_value": image.os_hash_value if checksum else None,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "created_at": image.created_at,
        "updated_at": image.updated_at,
        "tags": list(image.tags),
        "min_disk": image.min_disk,
        "min_ram": image.min_ram,
        "protected": image.protected,
        "os_hidden": image.os_hidden,
        "file": f"/v2/images/{image.id}/file",
        "self": f"/v2/images/{image.id}",
        "schema": "/v2/schemas/image",
    })
    if image.locations:
        # Glance (multi-store) lists stores whatever show_multiple_locations says.
        stores = [loc["metadata"].get("store") for loc in image.locations]
        view["stores"] = ",".join(store for store in stores if isinstance(store, str) and store)
    if show_locations:
        view["locations"] = copy.deepcopy(image.locations)
    if show_direct_url and image.locations:
        view["direct_url"] = image.locations[0]["url"]
    return view


def validate_location(value: Any) -> dict[str, Any]:
    """A location from a client or constructor, checked as Glance's schema does."""
    if not isinstance(value, Mapping):
        raise ApiError(400, f"Invalid location: expected an object, got {type(value).__name__}")
    url, metadata = value.get("url"), value.get("metadata")
    if not isinstance(url, str) or not url or "://" not in url:
        raise ApiError(400, "Invalid location: 'url' must be a URL string")
    if not isinstance(metadata, Mapping):
        raise ApiError(400, "Invalid location: 'metadata' must be an object")
    return {"url": url, "metadata": copy.deepcopy(dict(metadata))}


def validate_attribute(name: str, value: Any) -> Any:
    """Check one settable attribute's value; returns it, or raises 400/403."""
    if name in READ_ONLY:
        raise ApiError(403, f"Attribute '{name}' is read-only.")
    if name == "locations":
        raise ApiError(403, "Attribute 'locations' is reserved.")
    if name in ("name", "owner"):
        ok = value is None or (isinstance(value, str) and len(value) <= 255)
    elif name == "visibility":
        ok = value in VISIBILITIES
    elif name == "disk_format":
        ok = value is None or value in DISK_FORMATS
    elif name == "container_format":
        ok = value is None or value in CONTAINER_FORMATS
    elif name in ("min_disk", "min_ram"):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif name in ("protected", "os_hidden"):
        ok = isinstance(value, bool)
    elif name == "tags":
        ok = isinstance(value, list) and all(isinstance(tag, str) for tag in value)
    else:  # extra properties are strings in Glance's schema
        ok = isinstance(value, str)
    if not ok:
        raise ApiError(400, f"Invalid value for '{name}': {value!r}")
    return value


def validate_id(image_id: Any) -> str:
    try:
        return str(uuid.UUID(str(image_id)))
    except ValueError:
        raise ApiError(400, f"Invalid image id {image_id!r}: must be a UUID") from None


# -- JSON patch -------------------------------------------------------------

@dataclass(frozen=True)
class PatchOp:
    op: str
    path: tuple[str, ...]
    value: Any = None


def parse_pointer(pointer: Any) -> tuple[str, ...]:
    """A JSON pointer (RFC 6901) -> its unescaped segments; only Glance's shapes pass."""
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise ApiError(400, f"Invalid JSON pointer: {pointer!r}")
    parts = tuple(part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/"))
    nested_ok = parts[0] == "locations" and len(parts) == 2
    if not parts[0] or (len(parts) > 1 and not nested_ok):
        raise ApiError(400, f"Invalid JSON pointer for this resource: {pointer!r}")
    return parts


def parse_patch(body: bytes) -> list[PatchOp]:
    """A json-patch body -> operations, or 400 naming what is wrong."""
    try:
        changes = json.loads(body)
    except ValueError:
        raise ApiError(400, "Malformed JSON in request body.") from None
    if not isinstance(changes, list):
        raise ApiError(400, "Request body must be a JSON array of operation objects.")
    ops = []
    for change in changes:
        if not isinstance(change, dict):
            raise ApiError(400, "Operations must be JSON objects.")
        op = change.get("op")
        if op not in ("add", "remove", "replace"):
            raise ApiError(400, f"Invalid operation: {op!r}; valid: add, remove, replace")
        if op != "remove" and "value" not in change:
            raise ApiError(400, f"Operation {op!r} requires a 'value' member.")
        ops.append(PatchOp(op, parse_pointer(change.get("path")), change.get("value")))
    return ops


def location_position(position: str, count: int, *, insert: bool) -> int:
    """Glance's ``_get_locations_op_pos``: ``-`` is the end; inserts may pass it."""
    if position.isascii() and position.isdigit():
        pos = int(position)
    elif position == "-":
        pos = count if insert else count - 1
    else:
        pos = -1
    if pos < 0 or (not insert and pos >= count):
        verb = "adding" if insert else "removing"
        raise ApiError(400, f"Invalid position for {verb} a location.")
    return pos


@dataclass(frozen=True)
class Caller:
    """Who is asking, from keystonemiddleware's headers."""

    project: str | None
    admin: bool

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Caller:
        project = headers.get("X-Project-Id") or headers.get("X-Tenant-Id")
        roles = headers.get("X-Roles", "")
        return cls(project or None, "admin" in {role.strip().lower() for role in roles.split(",")})

    def can_see(self, image: DemoImage) -> bool:
        # Without a membership API, "shared" means owner-only, like "private".
        return self.admin or image.visibility in ("public", "community") or image.owner == self.project
