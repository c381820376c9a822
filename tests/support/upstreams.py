"""Recording stand-ins for the image API, for in-process tests of the filter.

``Upstream`` serves canned responses by ``(method, path)`` (``route``) and
records every request and body; ``json_response(document)`` is such a
response; ``image_json(**extra)`` is an image with three copies (file,
http, rbd), ``IMAGE_ID``'s, as Glance shows it.
"""

from __future__ import annotations

import json
from typing import Any

from webob import Request, Response

IMAGE_ID = "1bea47ed-f6a9-463b-b423-14b9cca9ad27"


def image_json(**extra: Any) -> dict:
    body = {
        "id": IMAGE_ID,
        "status": "active",
        "locations": [
            {"url": "file:///srv/a/" + IMAGE_ID, "metadata": {"store": "disk"}},
            {"url": "http://127.0.0.1:1/" + IMAGE_ID, "metadata": {"store": "web"}},
            {"url": "rbd://fsid/pool/" + IMAGE_ID + "/snap", "metadata": {"store": "ceph"}},
        ],
        "direct_url": "file:///srv/a/" + IMAGE_ID,
        "stores": "disk,web,ceph",
    }
    body.update(extra)
    return body


class Upstream:
    """A recording image API stand-in: serves canned responses by path."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.bodies: list[bytes] = []
        self.routes: dict[tuple[str, str], Any] = {}

    def route(self, method: str, path: str, response: Any) -> None:
        self.routes[(method, path)] = response

    def __call__(self, environ: dict, start_response: Any) -> Any:
        req = Request(environ)
        self.requests.append(req)
        self.bodies.append(req.body)
        response = self.routes.get((req.method, req.path_info))
        if response is None:
            response = Response(status=404, json={"error": "no route"})
        elif callable(response) and not isinstance(response, Response):
            response = response(req)
        return response(environ, start_response)


def json_response(document: Any, status: int = 200, **headers: str) -> Response:
    response = Response(status=status, body=json.dumps(document).encode(), content_type="application/json",
                        charset=None)
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response
