"""Requests locproxy makes to the image API on a client's behalf.

The "upstream" is whatever WSGI app the filter wraps: Glance's ``rootapp``
inside Glance's pipeline, or the sidecar's ``proxy`` app. Every subrequest
goes to it *as the client*: the same environ (credentials, auth context),
with its own method and path, no body and no conditions, so the upstream
authorises each one as it would the client's own request.
"""

from __future__ import annotations

import io
from typing import Callable

from webob import Request, Response

# What a subrequest must not inherit from the client's request: its body,
# conditions and ranges belong to the original request only.
_SUBREQUEST_DROP = (
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "HTTP_TRANSFER_ENCODING",
    "HTTP_EXPECT",
    "HTTP_RANGE",
    "HTTP_IF_RANGE",
    "HTTP_IF_MATCH",
    "HTTP_IF_NONE_MATCH",
    "HTTP_IF_MODIFIED_SINCE",
    "HTTP_IF_UNMODIFIED_SINCE",
    "HTTP_ACCEPT_ENCODING",
    "RAW_URI",
    "REQUEST_URI",
)


class ImageRequests:
    """Subrequests about one image, made to the wrapped app as the client."""

    def __init__(self, app: Callable, req: Request, base: str, image_id: str) -> None:
        self.app = app
        self.req = req
        self.image_id = image_id
        self.path = f"{base}/v2/images/{image_id}"

    def show(self) -> Response:
        """``GET /v2/images/{id}``, as JSON whatever the original request accepted."""
        return self._call("GET", self.path, {"Accept": "application/json"})

    def download(self, method: str = "GET", headers: dict[str, str] | None = None) -> Response:
        """``GET /v2/images/{id}/file`` (with e.g. a ``Range``), streamed."""
        return self._call(method, self.path + "/file", headers)

    def _call(self, method: str, path: str, headers: dict[str, str] | None = None) -> Response:
        original = self.req.environ
        script_name = original.get("SCRIPT_NAME", "")
        # webob caches the parsed request under "webob.*" keys: stale for a
        # subrequest, except the ad-hoc attributes, where apps keep state such
        # as Glance's request context (req.context), which must carry over.
        environ = {
            key: value
            for key, value in original.items()
            if key not in _SUBREQUEST_DROP and not key.startswith("webob.")
        }
        if "webob.adhoc_attrs" in original:
            environ["webob.adhoc_attrs"] = dict(original["webob.adhoc_attrs"])
        environ.update(REQUEST_METHOD=method, PATH_INFO=path[len(script_name):], QUERY_STRING="")
        environ["wsgi.input"] = io.BytesIO(b"")
        for name, value in (headers or {}).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        return Request(environ).get_response(self.app)
