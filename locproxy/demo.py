"""A small in-memory image API that speaks Glance v2's JSON and ``/file`` contract.

This is a *demo and test upstream* for locproxy, not a Glance replacement. It
exists so that ``locproxy demo`` has something realistic to sit in front of,
and so that tests can run locproxy against an upstream whose behaviour matches
the Glance facts in ``DESIGN.md`` and whose traffic they can count
(``api.calls``, ``api.served_from``).

What it implements (Glance v2 semantics unless noted):

* ``GET /v2/images`` -- listing in insertion order (Glance sorts by
  ``created_at`` desc), ``limit``/``marker`` pagination with ``first`` and a
  ``next`` link only while more images remain, equality filters on ``name``,
  ``status``, ``visibility`` and ``owner``.
* ``POST /v2/images`` -- create a queued image (201).
* ``GET``/``PATCH``/``DELETE /v2/images/{id}`` -- show, JSON-patch
  (``application/openstack-images-v2.1-json-patch``: add/replace/remove of
  properties and Glance's location operations), delete.
* ``GET``/``HEAD``/``PUT /v2/images/{id}/file`` -- download with Glance's
  headers, one ``Range`` (206/416), 204 without data, 403 when deactivated
  (unless admin); upload of a queued image (204).
* ``POST /v2/images/{id}/actions/deactivate|reactivate``; ``GET /versions``.
* Keystone-style headers: ``X-Auth-Token`` (401 without it when
  ``require_auth``), ``X-Project-Id`` (owner of created images; private and
  shared images are visible only to their owner), ``X-Roles`` (``admin`` sees
  and downloads everything). There is no membership or write policy.

Also here: ``build_demo`` (stores on disk plus an API holding the demo
images), ``serve_static`` (a directory over HTTP with single ``Range``
support, which the stdlib handler lacks: the demo's "web" store) and
``serve_wsgi`` (any WSGI app on a loopback port). To list the web copies,
start ``serve_static(web_dir_of(workdir))`` first and pass its ``url`` to
``build_demo``.

Deliberate differences from modern Glance: ``replace /locations`` accepts any
list (Icehouse-era behaviour; an empty list empties the image again), and
``next`` is omitted when a page is exactly full but nothing follows.

Trust: image bytes are read only from ``file://`` URLs under ``file_roots``
(no ``..`` or symlink escape) and from ``http(s)://`` URLs under
``http_prefixes``; any other location (``rbd://``, ``swift://``, ...) is
skipped, and the image's in-memory copy is served when no location opens.
Everything else lives in memory and is lost when the process exits.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import random
import re
import socketserver
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import unquote, urlencode, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import webob.exc
from webob import Request, Response

from locproxy.urls import scrub_credentials

LOG = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
MAX_JSON_BODY = 1024 * 1024
MAX_IMAGE_DATA = 256 * 1024 * 1024  # a demo keeps images in memory

PATCH_MEDIA_TYPES = (
    "application/openstack-images-v2.1-json-patch",
    "application/openstack-images-v2.0-json-patch",
)
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


# -- byte ranges (RFC 7233) -------------------------------------------------

_RANGE = re.compile(r"^\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*$", re.IGNORECASE)


def parse_byte_range(header: str, size: int) -> tuple[int, int]:
    """One ``bytes=`` range of a ``size``-byte body -> ``(start, stop)``, stop exclusive.

    Raises ValueError when the header is malformed, asks for several ranges
    (neither server here builds multipart/byteranges) or is unsatisfiable
    (RFC 7233 section 2.1: a first byte beyond the end, or a zero-length
    suffix). A last byte past the end is clamped, as the RFC requires.
    """
    match = _RANGE.match(header)
    if not match:
        raise ValueError(f"unsupported Range {header!r}: expected one 'bytes=' range")
    first, last = match.groups()
    if not first:
        if not last:
            raise ValueError("Range 'bytes=-' has neither start nor suffix length")
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise ValueError(f"Range {header!r} not satisfiable for {size} bytes")
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        raise ValueError(f"Range {header!r} ends before it starts")
    if start >= size:
        raise ValueError(f"Range {header!r} not satisfiable for {size} bytes")
    stop = size if not last else min(int(last) + 1, size)
    return start, stop


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


def _validate_location(value: Any) -> dict[str, Any]:
    """A location from a client or constructor, checked as Glance's schema does."""
    if not isinstance(value, Mapping):
        raise ApiError(400, f"Invalid location: expected an object, got {type(value).__name__}")
    url, metadata = value.get("url"), value.get("metadata")
    if not isinstance(url, str) or not url or "://" not in url:
        raise ApiError(400, "Invalid location: 'url' must be a URL string")
    if not isinstance(metadata, Mapping):
        raise ApiError(400, "Invalid location: 'metadata' must be an object")
    return {"url": url, "metadata": copy.deepcopy(dict(metadata))}


def _validate_attribute(name: str, value: Any) -> Any:
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


def _validate_id(image_id: Any) -> str:
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


def _parse_pointer(pointer: Any) -> tuple[str, ...]:
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
        ops.append(PatchOp(op, _parse_pointer(change.get("path")), change.get("value")))
    return ops


def _location_position(position: str, count: int, *, insert: bool) -> int:
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


# -- reading image bytes from locations --------------------------------------

class _BoundedReader:
    """Yields at most ``length`` bytes of a file-like source and closes it."""

    def __init__(self, source: Any, length: int) -> None:
        self._source = source
        self._remaining = length

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._remaining <= 0:
            raise StopIteration
        chunk = self._source.read(min(CHUNK_SIZE, self._remaining))
        if not chunk:  # a short store file: end early, as a truncated upstream does
            raise StopIteration
        self._remaining -= len(chunk)
        return chunk

    def close(self) -> None:
        self._source.close()


class _MemoryReader:
    def __init__(self, data: bytes) -> None:
        self._chunks = [data[i:i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def close(self) -> None:
        self._chunks = []


# -- the WSGI app -----------------------------------------------------------

_ID = r"(?P<id>[^/]+)"
_ROUTES: tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...] = (
    (re.compile(r"^/v2/images/?$"), "images", ("GET", "POST")),
    (re.compile(rf"^/v2/images/{_ID}$"), "image", ("GET", "PATCH", "DELETE")),
    (re.compile(rf"^/v2/images/{_ID}/file$"), "file", ("GET", "HEAD", "PUT")),
    (re.compile(rf"^/v2/images/{_ID}/actions/(?P<action>deactivate|reactivate)$"), "action", ("POST",)),
    (re.compile(r"^/(versions)?$"), "versions", ("GET",)),
)


@dataclass(frozen=True)
class _Caller:
    """Who is asking, from keystonemiddleware's headers."""

    project: str | None
    admin: bool

    @classmethod
    def of(cls, request: Request) -> _Caller:
        project = request.headers.get("X-Project-Id") or request.headers.get("X-Tenant-Id")
        roles = request.headers.get("X-Roles", "")
        return cls(project or None, "admin" in {role.strip().lower() for role in roles.split(",")})

    def can_see(self, image: DemoImage) -> bool:
        # Without a membership API, "shared" means owner-only, like "private".
        return self.admin or image.visibility in ("public", "community") or image.owner == self.project


class DemoImageAPI:
    """An in-memory Glance v2-style image API (a WSGI app). See the module docstring.

    ``calls`` counts requests by path kind (``images``, ``image``, ``file``,
    ``action``, ``versions``, ``other``) and by ``"METHOD kind"``;
    ``served_from`` counts downloads by the store (or ``memory``) that
    supplied the bytes. Both are Counters; tests may ``clear()`` them.
    """

    def __init__(
        self,
        images: Iterable[Mapping[str, Any]] = (),
        *,
        file_roots: Sequence[str] = (),
        http_prefixes: Sequence[str] = (),
        upload_store: tuple[str, str] | None = None,
        show_multiple_locations: bool = True,
        show_image_direct_url: bool = True,
        require_auth: bool = False,
        limit_default: int = 25,
        limit_max: int = 1000,
        http_timeout: float = 10.0,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self.file_roots = tuple(os.path.realpath(root) for root in file_roots)
        # A trailing "/" so that http://host:80 does not match http://host:8080.
        self.http_prefixes = tuple(prefix.rstrip("/") + "/" for prefix in http_prefixes)
        self.upload_store = upload_store
        self.show_multiple_locations = show_multiple_locations
        self.show_image_direct_url = show_image_direct_url
        self.require_auth = require_auth
        self.limit_default = limit_default
        self.limit_max = limit_max
        self.http_timeout = http_timeout
        self.clock = clock
        self.calls: Counter[str] = Counter()
        self.served_from: Counter[str] = Counter()
        self._images: dict[str, DemoImage] = {}  # insertion order is listing order
        self._lock = threading.RLock()
        for spec in images:
            self.add_image(**spec)

    # -- direct (non-HTTP) access, for setup code and tests ----------------

    def add_image(
        self,
        *,
        id: str | None = None,
        data: bytes | None = None,
        locations: Iterable[Mapping[str, Any]] = (),
        status: str | None = None,
        created_at: str | None = None,
        **attributes: Any,
    ) -> str:
        """Store an image; returns its id. ``status`` defaults to active when it
        has data or locations (data is then read from the first readable one)."""
        image_id = _validate_id(id) if id is not None else str(uuid.uuid4())
        now = created_at or self.clock()
        image = DemoImage(id=image_id, created_at=now, updated_at=now, data=data,
                          locations=[_validate_location(loc) for loc in locations])
        self._set_attributes(image, {"visibility": "public", **attributes})
        if image.data is None and image.locations:
            image.data = self._probe(image.locations)
        image.status = status or ("active" if image.data is not None or image.locations else "queued")
        with self._lock:
            if image_id in self._images:
                raise ValueError(f"image {image_id} already exists")
            self._images[image_id] = image
        return image_id

    def image(self, image_id: str) -> dict[str, Any]:
        """The image's JSON as an admin sees it (KeyError if unknown)."""
        with self._lock:
            return self._render(self._images[image_id])

    def set_status(self, image_id: str, status: str) -> None:
        with self._lock:
            self._images[image_id].status = status

    # -- WSGI ---------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        try:
            response = self._dispatch(request)
        except ApiError as error:
            response = error.response()
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Any:
        kind, match, methods = self._route(request.path_info)
        with self._lock:
            self.calls[kind] += 1
            self.calls[f"{request.method} {kind}"] += 1
        if self.require_auth and not request.headers.get("X-Auth-Token"):
            return _unauthorized()
        if match is None:
            raise ApiError(404, "The resource could not be found.")
        if request.method not in methods:
            raise ApiError(405, f"{request.method} is not allowed here.", {"Allow": ", ".join(methods)})
        caller = _Caller.of(request)
        if kind == "versions":
            return self._versions(request)
        if kind == "images":
            return self._list(request, caller) if request.method == "GET" else self._create(request, caller)
        image_id = match.group("id")
        if kind == "action":
            return self._action(image_id, match.group("action"), caller)
        handlers = {
            ("image", "GET"): self._show,
            ("image", "PATCH"): self._patch,
            ("image", "DELETE"): self._delete,
            ("file", "GET"): self._download,
            ("file", "HEAD"): self._download,
            ("file", "PUT"): self._upload,
        }
        return handlers[kind, request.method](request, image_id, caller)

    @staticmethod
    def _route(path: str) -> tuple[str, re.Match[str] | None, tuple[str, ...]]:
        for pattern, kind, methods in _ROUTES:
            match = pattern.match(path)
            if match:
                return kind, match, methods
        return "other", None, ()

    def _get(self, image_id: str, caller: _Caller) -> DemoImage:
        """The image if this caller may see it; 404 otherwise (Glance hides existence)."""
        image = self._images.get(image_id)
        if image is None or not caller.can_see(image):
            raise ApiError(404, f"No image found with ID {image_id}")
        return image

    def _render(self, image: DemoImage) -> dict[str, Any]:
        return render_image(image, show_locations=self.show_multiple_locations,
                            show_direct_url=self.show_image_direct_url)

    # -- handlers: metadata ----------------------------------------------------

    def _versions(self, request: Request) -> Response:
        href = request.host_url + "/v2/"
        body = {"versions": [{"id": "v2.16", "status": "CURRENT", "links": [{"rel": "self", "href": href}]}]}
        # Glance answers the root with 300 Multiple Choices, /versions with 200.
        return _json(body, 300 if request.path_info == "/" else 200)

    def _list(self, request: Request, caller: _Caller) -> Response:
        limit = self._limit(request.GET.get("limit"))
        marker = request.GET.get("marker")
        filters = {key: request.GET[key] for key in ("name", "status", "visibility", "owner") if key in request.GET}
        with self._lock:
            images = [image for image in self._images.values()
                      if caller.can_see(image) and all(getattr(image, k) == v for k, v in filters.items())]
            start = 0
            if marker is not None:
                ids = [image.id for image in images]
                if marker not in ids:
                    raise ApiError(400, f"No image found with ID {marker}")
                start = ids.index(marker) + 1
            page = images[start:start + limit]
            body: dict[str, Any] = {"images": [self._render(image) for image in page]}
        params = [(key, value) for key, value in request.GET.items() if key != "marker"]
        body["first"] = "/v2/images" + (f"?{urlencode(params)}" if params else "")
        body["schema"] = "/v2/schemas/images"
        if page and start + len(page) < len(images):
            body["next"] = "/v2/images?" + urlencode([("marker", page[-1].id)] + params)
        return _json(body)

    def _limit(self, value: str | None) -> int:
        if value is None:
            return self.limit_default
        try:
            limit = int(value)
        except ValueError:
            raise ApiError(400, "limit param must be an integer") from None
        if limit < 0:
            raise ApiError(400, "limit param must be positive")
        return min(limit, self.limit_max)

    def _create(self, request: Request, caller: _Caller) -> Response:
        body = _json_body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object.")
        body = dict(body)
        image_id = _validate_id(body.pop("id")) if "id" in body else str(uuid.uuid4())
        if "owner" in body and not caller.admin:
            raise ApiError(403, "Owner can't be updated by non admin.")
        now = self.clock()
        image = DemoImage(id=image_id, created_at=now, updated_at=now, owner=caller.project)
        self._set_attributes(image, body)
        with self._lock:
            if image_id in self._images:
                raise ApiError(409, f"Image with identifier {image_id} already exists!")
            self._images[image_id] = image
            response = _json(self._render(image), 201)
        response.location = f"{request.host_url}/v2/images/{image_id}"
        return response

    @staticmethod
    def _set_attributes(image: DemoImage, attributes: Mapping[str, Any]) -> None:
        for name, value in attributes.items():
            value = _validate_attribute(name, value)
            if name in CORE:
                setattr(image, name, value)
            else:
                image.properties[name] = value

    def _show(self, request: Request, image_id: str, caller: _Caller) -> Response:
        with self._lock:
            return _json(self._render(self._get(image_id, caller)))

    def _delete(self, request: Request, image_id: str, caller: _Caller) -> Any:
        with self._lock:
            image = self._get(image_id, caller)
            if image.protected:
                raise ApiError(403, f"Image {image_id} is protected and cannot be deleted.")
            del self._images[image_id]  # store files are left alone: they are demo fixtures
        return webob.exc.HTTPNoContent()

    def _action(self, image_id: str, action: str, caller: _Caller) -> Any:
        source, target = ("active", "deactivated") if action == "deactivate" else ("deactivated", "active")
        with self._lock:
            image = self._get(image_id, caller)
            if image.status not in (source, target):
                raise ApiError(400, f"Not allowed to {action} image in status '{image.status}'")
            image.status = target
            image.updated_at = self.clock()
        return webob.exc.HTTPNoContent()

    def _patch(self, request: Request, image_id: str, caller: _Caller) -> Response:
        if request.content_type not in PATCH_MEDIA_TYPES:
            raise ApiError(415, f"Unsupported Content-Type {request.content_type!r}",
                           {"Accept-Patch": ", ".join(PATCH_MEDIA_TYPES)})
        ops = parse_patch(_request_body(request))
        with self._lock:
            image = self._get(image_id, caller)
            # Work on a copy so that a failing operation leaves the image untouched.
            work = copy.deepcopy(image)
            for op in ops:
                self._apply(work, op, caller)
            work.updated_at = self.clock()
            self._images[image_id] = work
            return _json(self._render(work))

    def _apply(self, image: DemoImage, op: PatchOp, caller: _Caller) -> None:
        name = op.path[0]
        if name == "locations":
            self._apply_locations(image, op)
        elif name == "owner" and not caller.admin:
            raise ApiError(403, "Owner can't be updated by non admin.")
        elif op.op == "remove":
            if name in CORE or name in READ_ONLY:
                raise ApiError(403, f"Property {name} may not be removed.")
            if name not in image.properties:
                raise ApiError(409, f"Property {name} does not exist.")
            del image.properties[name]
        else:
            value = _validate_attribute(name, op.value)
            if name in CORE:
                setattr(image, name, value)
            elif op.op == "replace" and name not in image.properties:
                raise ApiError(409, f"Property {name} does not exist.")
            else:
                image.properties[name] = value

    def _apply_locations(self, image: DemoImage, op: PatchOp) -> None:
        """Glance's location operations; positions index the stored order."""
        if not self.show_multiple_locations:
            raise ApiError(403, "It's not allowed to update locations if locations are invisible.")
        if op.op == "replace":
            self._replace_locations(image, op)
        elif len(op.path) != 2:
            raise ApiError(400, f"Operation {op.op!r} on /locations needs a position.")
        elif op.op == "add":
            self._add_location(image, op.path[1], op.value)
        else:
            self._remove_location(image, op.path[1])

    def _replace_locations(self, image: DemoImage, op: PatchOp) -> None:
        if len(op.path) != 1 or not isinstance(op.value, list):
            raise ApiError(400, "Replacing locations needs path /locations and a list value.")
        image.locations = self._unique_locations(op.value)
        if not image.locations:
            image.data = None
            image.status = "queued"
        elif image.status == "queued":
            self._activate(image)

    def _add_location(self, image: DemoImage, position: str, value: Any) -> None:
        if image.status not in ("active", "queued"):
            raise ApiError(409, f"It's not allowed to add locations if image status is {image.status}.")
        pos = _location_position(position, len(image.locations), insert=True)
        image.locations.insert(pos, _validate_location(value))
        image.locations = self._unique_locations(image.locations)
        if image.status == "queued":
            self._activate(image)

    def _remove_location(self, image: DemoImage, position: str) -> None:
        if image.status != "active":
            raise ApiError(409, f"It's not allowed to remove locations if image status is {image.status}.")
        if len(image.locations) == 1:
            raise ApiError(403, "Cannot remove last location in the image.")
        del image.locations[_location_position(position, len(image.locations), insert=False)]

    @staticmethod
    def _unique_locations(values: list[Any]) -> list[dict[str, Any]]:
        locations = [_validate_location(value) for value in values]
        seen: set[str] = set()
        for loc in locations:
            if loc["url"] in seen:
                raise ApiError(400, f"The location {scrub_credentials(loc['url'])} already exists")
            seen.add(loc["url"])
        return locations

    def _activate(self, image: DemoImage) -> None:
        # Glance asks the store for the size; the demo reads the bytes when it can.
        if image.data is None:
            image.data = self._probe(image.locations)
        image.status = "active"

    # -- handlers: data --------------------------------------------------------

    def _download(self, request: Request, image_id: str, caller: _Caller) -> Any:
        with self._lock:  # a consistent snapshot; the bytes are read outside the lock
            image = self._get(image_id, caller)
            status, locations, data = image.status, copy.deepcopy(image.locations), image.data
            checksum = image.checksum
        if status == "deactivated" and not caller.admin:
            raise ApiError(403, "The requested image has been deactivated. "
                                "Image data download is forbidden.")
        if data is None and not locations:
            return webob.exc.HTTPNoContent()
        if data is None:
            raise ApiError(503, "Image data is unavailable: no location could be read.")
        size = len(data)
        start, stop = 0, size
        range_header = request.headers.get("Range")
        if range_header is not None:
            start, stop = self._range(range_header, size)
        # HEAD opens nothing; webob sends its headers without a body.
        body = self._open(locations, data, start, stop - start) if request.method == "GET" else []
        response = Response(app_iter=body, status=200 if range_header is None else 206,
                            content_type="application/octet-stream", charset=None,
                            content_length=stop - start)
        if checksum:
            response.headers["Content-MD5"] = checksum
        if range_header is not None:
            response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        return response

    @staticmethod
    def _range(header: str, size: int) -> tuple[int, int]:
        try:
            return parse_byte_range(header, size)
        except ValueError as error:
            raise ApiError(416, str(error), {"Content-Range": f"bytes */{size}"}) from None

    def _open(self, locations: list[dict[str, Any]], data: bytes, start: int, length: int) -> Any:
        """The first location that opens, as Glance does; the memory copy otherwise."""
        for loc in locations:
            reader = self._open_location(loc["url"], start, length)
            if reader is not None:
                self._count_source(loc["metadata"].get("store") or "unnamed")
                return reader
        self._count_source("memory")
        return _MemoryReader(data[start:start + length])

    def _count_source(self, name: str) -> None:
        with self._lock:
            self.served_from[name] += 1

    def _open_location(self, url: str, start: int, length: int) -> Any:
        scheme = url.partition("://")[0].lower()
        try:
            if scheme == "file":
                path = self._local_path(url)
                if path is not None:
                    return self._open_file(path, start, length)
            elif scheme in ("http", "https") and url.startswith(self.http_prefixes):
                return self._open_http(url, start, length)
        except (OSError, ValueError) as error:  # urllib's errors are OSErrors
            LOG.warning("demo: cannot read %s: %s", scrub_credentials(url), error)
        return None

    def _local_path(self, url: str) -> str | None:
        """The file a ``file://`` URL names, if it is a regular file under a file root."""
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            return None
        path = os.path.realpath(unquote(parts.path))  # resolves ".." and symlinks
        for root in self.file_roots:
            if os.path.commonpath([root, path]) == root and os.path.isfile(path):
                return path
        return None

    @staticmethod
    def _open_file(path: str, start: int, length: int) -> _BoundedReader:
        handle = open(path, "rb")
        handle.seek(start)
        return _BoundedReader(handle, length)

    def _open_http(self, url: str, start: int, length: int) -> _BoundedReader:
        headers = {"Range": f"bytes={start}-{start + length - 1}"} if length else {}
        response = _HTTP_OPENER.open(urllib.request.Request(url, headers=headers), timeout=self.http_timeout)
        try:
            if response.status == 200:  # the server ignored Range: skip to the start
                _discard(response, start)
            elif response.status != 206:
                raise OSError(f"HTTP {response.status}")
        except BaseException:
            response.close()
            raise
        return _BoundedReader(response, length)

    def _probe(self, locations: list[dict[str, Any]]) -> bytes | None:
        """The whole image from its first readable location, or None."""
        for loc in locations:
            reader = self._open_location(loc["url"], 0, MAX_IMAGE_DATA)
            if reader is not None:
                try:
                    return b"".join(reader)
                finally:
                    reader.close()
        return None

    def _upload(self, request: Request, image_id: str, caller: _Caller) -> Any:
        if request.content_type != "application/octet-stream":
            raise ApiError(415, f"Unsupported Content-Type {request.content_type!r}")
        with self._lock:
            if self._get(image_id, caller).status != "queued":
                raise ApiError(409, "Image data can only be uploaded to a queued image.")
        data = _read_input(request.environ)
        loc = self._store_upload(image_id, data)
        with self._lock:
            image = self._get(image_id, caller)
            if image.status != "queued":  # a concurrent upload won
                raise ApiError(409, "Image data can only be uploaded to a queued image.")
            image.data = data
            image.locations = [loc] if loc else []
            image.status = "active"
            image.updated_at = self.clock()
        return webob.exc.HTTPNoContent()

    def _store_upload(self, image_id: str, data: bytes) -> dict[str, Any] | None:
        """Write uploaded bytes into the upload store, if there is one."""
        if self.upload_store is None:
            return None
        store, directory = self.upload_store
        path = Path(directory, image_id)  # ids are validated UUIDs: safe file names
        path.write_bytes(data)
        return location(path.resolve().as_uri(), store)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could leave the allowed prefixes: treat it as a failure."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies from the environment (an http_proxy would swallow 127.0.0.1
# backends), no redirects.
_HTTP_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _discard(source: Any, count: int) -> None:
    while count > 0:
        chunk = source.read(min(CHUNK_SIZE, count))
        if not chunk:
            raise OSError("body ended before the requested range")
        count -= len(chunk)


def _read_input(environ: dict[str, Any]) -> bytes:
    """The request body, with or without Content-Length (chunked uploads)."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        remaining = int(length)
    elif environ.get("wsgi.input_terminated"):
        remaining = MAX_IMAGE_DATA + 1  # the server marks the end of a chunked body
    else:
        raise ApiError(411, "Uploads need Content-Length or chunked transfer encoding.")
    if remaining > MAX_IMAGE_DATA + 1:
        raise ApiError(413, "Image data is larger than this demo keeps in memory.")
    chunks = []
    while remaining > 0:
        chunk = stream.read(min(CHUNK_SIZE, remaining))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    data = b"".join(chunks)
    if len(data) > MAX_IMAGE_DATA:
        raise ApiError(413, "Image data is larger than this demo keeps in memory.")
    return data


def _request_body(request: Request) -> bytes:
    if (request.content_length or 0) > MAX_JSON_BODY:
        raise ApiError(413, "Request body too large.")
    return request.body


def _json_body(request: Request) -> Any:
    try:
        return json.loads(_request_body(request))
    except ValueError:
        raise ApiError(400, "Malformed JSON in request body.") from None


def _json(body: Any, status: int = 200) -> Response:
    return Response(body=json.dumps(body).encode("utf-8"), status=status,
                    content_type="application/json", charset=None)


def _unauthorized() -> Response:
    """What keystonemiddleware answers when the token is missing."""
    response = _json({"error": {"code": 401, "title": "Unauthorized",
                                "message": "The request you have made requires authentication."}}, 401)
    response.headers["WWW-Authenticate"] = 'Keystone uri="http://keystone.invalid/identity"'
    return response


# -- a static file server with Range support ---------------------------------

class _RangeRequestHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single ``Range`` requests (206/416)."""

    _range_length: int | None = None

    def send_head(self) -> Any:
        self._range_length = None
        path = self.translate_path(self.path)
        if "Range" not in self.headers or not os.path.isfile(path):
            return super().send_head()
        try:
            handle = open(path, "rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        try:
            size = os.fstat(handle.fileno()).st_size
            start, stop = parse_byte_range(self.headers["Range"], size)
        except ValueError:
            handle.close()
            self._send_unsatisfiable(size)
            return None
        handle.seek(start)
        self._range_length = stop - start
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(stop - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return handle

    def _send_unsatisfiable(self, size: int) -> None:
        self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
        self.send_header("Content-Range", f"bytes */{size}")  # RFC 7233 section 4.4
        self.send_header("Content-Length", "0")
        self.end_headers()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        if self._range_length is None:
            super().copyfile(source, outputfile)
            return
        for chunk in _BoundedReader(source, self._range_length):
            outputfile.write(chunk)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOG.debug("static: " + format, *args)


class LocalServer:
    """A socketserver running in a daemon thread on 127.0.0.1; close() when done."""

    def __init__(self, server: socketserver.BaseServer) -> None:
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        # A short poll interval keeps close() (shutdown waits for one poll) fast.
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                                        name="locproxy-demo-server", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def serve_static(directory: str, port: int = 0) -> LocalServer:
    """Serve ``directory`` over HTTP (with single ranges) on 127.0.0.1 (port 0: any free one)."""
    os.makedirs(directory, exist_ok=True)
    handler = functools.partial(_RangeRequestHandler, directory=directory)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return LocalServer(server)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietWSGIRequestHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        LOG.debug("demo api: " + format, *args)


def serve_wsgi(app: Callable[..., Any], port: int = 0) -> LocalServer:
    """Serve a WSGI app (e.g. a DemoImageAPI) with wsgiref on 127.0.0.1.

    Good enough for a demo upstream: threaded, HTTP/1.0, no chunked request
    bodies (wsgiref does not decode them).
    """
    server = make_server("127.0.0.1", port, app, server_class=_ThreadingWSGIServer,
                         handler_class=_QuietWSGIRequestHandler)
    return LocalServer(server)


# -- the demo data set --------------------------------------------------------

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
