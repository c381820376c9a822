"""Requests locproxy makes to the image API on a client's behalf.

The "upstream" is whatever WSGI app the filter wraps: Glance's ``rootapp``
inside Glance's pipeline, or the sidecar's ``proxy`` app. Every subrequest
goes to it *as the client*: the same environ (credentials, auth context),
with its own method and path, no body and no conditions, so the upstream
authorises each one as it would the client's own request.

When locproxy leaves a download to the upstream's own ``/file`` (no copy it
may read, none that opened, or the rest of a broken stream), it asks for the
strategy's store order with Glance's ``?prefer=store1,store2`` (``prefer``,
set from the download plan). Glance 33 accepts it behind its
``download_from_store`` policy: a client it refuses (403; 400 for a store
it does not know) is asked for the plain ``/file`` at once, so such copies
still download, in the upstream's own order. That rule lives here only
(``_preferring``), for both kinds of request.
"""

from __future__ import annotations

import io
import logging
from typing import Callable, Sequence
from urllib.parse import parse_qs, quote

from webob import Request, Response

from locproxy import bodies

LOG = logging.getLogger(__name__)

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
        #: Stores to ask the upstream's own /file to read first (Glance's ?prefer=).
        self.prefer: Sequence[str] = ()

    def show(self) -> Response:
        """``GET /v2/images/{id}``, as JSON whatever the original request accepted."""
        return self._call("GET", self.path, {"Accept": "application/json"})

    def download(self, method: str = "GET", headers: dict[str, str] | None = None) -> Response:
        """``GET /v2/images/{id}/file`` (with e.g. a ``Range``), streamed,
        with ``?prefer=`` when ``prefer`` is set."""
        return self._preferring(lambda query: self._call(method, self.path + "/file", headers, query))

    def as_sent(self) -> Response | None:
        """The client's own ``/file`` request (its Range, conditions and
        query), with ``?prefer=`` added; None when there is nothing to add
        (no ``prefer``, or the client chose its own): then the request goes
        to the upstream exactly as it came."""
        query = self.req.environ.get("QUERY_STRING", "")
        if not self.prefer or "prefer" in parse_qs(query, keep_blank_values=True):
            return None
        return self._preferring(lambda extra: self._forward(f"{query}&{extra}" if query and extra else query or extra))

    def _preferring(self, send: Callable[[str], Response]) -> Response:
        """``send(query)`` with ``prefer=...``, then without it if refused."""
        if self.prefer:
            response = send("prefer=" + quote(",".join(self.prefer), safe=","))
            if response.status_code not in (400, 403):
                return response
            bodies.close_iterable(response.app_iter)
            LOG.debug("image %s: the upstream refused ?prefer=%s (HTTP %s); asking for its plain /file",
                      self.image_id, ",".join(self.prefer), response.status_code)
        return send("")

    def _forward(self, query: str) -> Response:
        environ = self._environ(())
        environ["QUERY_STRING"] = query
        return Request(environ).get_response(self.app)

    def _environ(self, drop: Sequence[str]) -> dict:
        original = self.req.environ
        # webob caches the parsed request under "webob.*" keys: stale for a
        # subrequest, except the ad-hoc attributes, where apps keep state such
        # as Glance's request context (req.context), which must carry over.
        environ = {key: value for key, value in original.items() if key not in drop and not key.startswith("webob.")}
        if "webob.adhoc_attrs" in original:
            environ["webob.adhoc_attrs"] = dict(original["webob.adhoc_attrs"])
        return environ

    def _call(self, method: str, path: str, headers: dict[str, str] | None = None, query: str = "") -> Response:
        script_name = self.req.environ.get("SCRIPT_NAME", "")
        environ = self._environ(_SUBREQUEST_DROP)
        environ.update(REQUEST_METHOD=method, PATH_INFO=path[len(script_name):], QUERY_STRING=query)
        environ["wsgi.input"] = io.BytesIO(b"")
        for name, value in (headers or {}).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        return Request(environ).get_response(self.app)
