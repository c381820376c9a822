"""Small JSON error responses for the faults locproxy reports itself."""

from __future__ import annotations

import json
from http import HTTPStatus

from webob import Response


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """``{"error": {"code": 502, "title": "Bad Gateway", "message": ...}}``.

    ``message`` must be safe to show a client: no internal paths, no
    credentials.
    """
    title = HTTPStatus(status).phrase
    body = json.dumps({"error": {"code": status, "title": title, "message": message}})
    response = Response(
        body=body.encode("utf-8"),
        status=status,
        content_type="application/json",
        charset=None,
    )
    response.cache_control = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
