"""The demo image API's WSGI app: routing, handlers, request bodies.

See the package docstring (``locproxy.demo``) for what it implements.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlencode

import webob.exc
from webob import Request, Response

from locproxy.demo.model import (
    CORE,
    ApiError,
    Caller,
    DemoImage,
    parse_patch,
    render_image,
    utc_now,
    validate_attribute,
    validate_id,
    validate_location,
)
from locproxy.demo.patching import Patcher
from locproxy.demo.stores import CHUNK_SIZE, MAX_IMAGE_DATA, DemoStores
from locproxy.ranges import RangeRefused, parse_range, refused_range_headers
from locproxy.rewrite import JSON_PATCH_TYPES

MAX_JSON_BODY = 1024 * 1024


_ID = r"(?P<id>[^/]+)"
_ROUTES: tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...] = (
    (re.compile(r"^/v2/images/?$"), "images", ("GET", "POST")),
    (re.compile(rf"^/v2/images/{_ID}$"), "image", ("GET", "PATCH", "DELETE")),
    (re.compile(rf"^/v2/images/{_ID}/file$"), "file", ("GET", "HEAD", "PUT")),
    (re.compile(rf"^/v2/images/{_ID}/actions/(?P<action>deactivate|reactivate)$"), "action", ("POST",)),
    (re.compile(r"^/(versions)?$"), "versions", ("GET",)),
)


class DemoImageAPI:
    """An in-memory Glance v2-style image API (a WSGI app). See the module docstring.

    ``calls`` counts requests by path kind (``images``, ``image``, ``file``,
    ``action``, ``versions``, ``other``) and by ``"METHOD kind"``;
    ``served_from`` counts downloads by the store (or ``memory``) that
    supplied the bytes. Both are Counters; tests may ``clear()`` them.
    """

    @property
    def served_from(self) -> Counter[str]:
        return self.stores.served_from

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
        self.stores = DemoStores(file_roots, http_prefixes, upload_store, http_timeout)
        self.show_multiple_locations = show_multiple_locations
        self.show_image_direct_url = show_image_direct_url
        self.require_auth = require_auth
        self.limit_default = limit_default
        self.limit_max = limit_max
        self.clock = clock
        self.calls: Counter[str] = Counter()
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
        image_id = validate_id(id) if id is not None else str(uuid.uuid4())
        now = created_at or self.clock()
        image = DemoImage(id=image_id, created_at=now, updated_at=now, data=data,
                          locations=[validate_location(loc) for loc in locations])
        self._set_attributes(image, {"visibility": "public", **attributes})
        if image.data is None and image.locations:
            image.data = self.stores.probe(image.locations)
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
        caller = Caller.of(request.headers)
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

    def _get(self, image_id: str, caller: Caller) -> DemoImage:
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

    def _list(self, request: Request, caller: Caller) -> Response:
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

    def _create(self, request: Request, caller: Caller) -> Response:
        body = _json_body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object.")
        body = dict(body)
        image_id = validate_id(body.pop("id")) if "id" in body else str(uuid.uuid4())
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
            value = validate_attribute(name, value)
            if name in CORE:
                setattr(image, name, value)
            else:
                image.properties[name] = value

    def _show(self, request: Request, image_id: str, caller: Caller) -> Response:
        with self._lock:
            return _json(self._render(self._get(image_id, caller)))

    def _delete(self, request: Request, image_id: str, caller: Caller) -> Any:
        with self._lock:
            image = self._get(image_id, caller)
            if image.protected:
                raise ApiError(403, f"Image {image_id} is protected and cannot be deleted.")
            del self._images[image_id]  # store files are left alone: they are demo fixtures
        return webob.exc.HTTPNoContent()

    def _action(self, image_id: str, action: str, caller: Caller) -> Any:
        source, target = ("active", "deactivated") if action == "deactivate" else ("deactivated", "active")
        with self._lock:
            image = self._get(image_id, caller)
            if image.status not in (source, target):
                raise ApiError(400, f"Not allowed to {action} image in status '{image.status}'")
            image.status = target
            image.updated_at = self.clock()
        return webob.exc.HTTPNoContent()

    def _patch(self, request: Request, image_id: str, caller: Caller) -> Response:
        if request.content_type not in JSON_PATCH_TYPES:
            raise ApiError(415, f"Unsupported Content-Type {request.content_type!r}",
                           {"Accept-Patch": ", ".join(JSON_PATCH_TYPES)})
        ops = parse_patch(_request_body(request))
        with self._lock:
            image = self._get(image_id, caller)
            # Work on a copy so that a failing operation leaves the image untouched.
            work = copy.deepcopy(image)
            patcher = Patcher(self.show_multiple_locations, self.stores.probe)
            for op in ops:
                patcher.apply(work, op, admin=caller.admin)
            work.updated_at = self.clock()
            self._images[image_id] = work
            return _json(self._render(work))

    # -- handlers: data --------------------------------------------------------

    def _download(self, request: Request, image_id: str, caller: Caller) -> Any:
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
        body = self.stores.open(locations, data, start, stop - start) if request.method == "GET" else []
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
            span = parse_range(header, size)
        except RangeRefused as error:
            raise ApiError(error.status, str(error), refused_range_headers(error, size)) from None
        assert span is not None
        return span

    def _upload(self, request: Request, image_id: str, caller: Caller) -> Any:
        if request.content_type != "application/octet-stream":
            raise ApiError(415, f"Unsupported Content-Type {request.content_type!r}")
        with self._lock:
            if self._get(image_id, caller).status != "queued":
                raise ApiError(409, "Image data can only be uploaded to a queued image.")
        data = _read_input(request.environ)
        loc = self.stores.store_upload(image_id, data)
        with self._lock:
            image = self._get(image_id, caller)
            if image.status != "queued":  # a concurrent upload won
                raise ApiError(409, "Image data can only be uploaded to a queued image.")
            image.data = data
            image.locations = [loc] if loc else []
            image.status = "active"
            image.updated_at = self.clock()
        return webob.exc.HTTPNoContent()


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
