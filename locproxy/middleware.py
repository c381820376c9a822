"""The ``locproxy`` paste filter: the thin WSGI shell around the pure core.

It sits in front of an image API, either inside its paste pipeline (after
authentication and context, before the API app) or in front of the sidecar
``proxy`` app, and:

* rewrites image responses (show, list, create, PATCH, location list) with
  ``locproxy.rewrite`` so ``locations``/``direct_url``/``stores`` follow the
  configured strategy;
* translates JSON-patch ``/locations/N`` indexes from the order the client saw
  back to the upstream's order;
* serves ``/v2/images/{id}/file`` from the preferred backend
  (``locproxy.download``).

Everything else, and every response it does not recognise (non-2xx, non-JSON,
invalid JSON, oversized), passes through unchanged. Trust: the "upstream" is
whatever app this filter wraps; every request it makes on a client's behalf
carries that client's own credentials, so the upstream authorises it.
"""

from __future__ import annotations

import json
import logging
import re
import weakref
from typing import Any, Callable, Mapping, NamedTuple

from webob import Request, Response

from locproxy import bodies, hidden, observability, rewrite
from locproxy.config import FilterSettings, load_filter_settings
from locproxy.download.handler import DownloadHandler
from locproxy.options import parse_list
from locproxy.reloading import Reloading, install_sighup, read_options
from locproxy.responses import json_error
from locproxy.services import Services
from locproxy.shown import client_key
from locproxy.strategies import strategy_names
from locproxy.upstream import ImageRequests

LOG = logging.getLogger(__name__)

# SCRIPT_NAME + PATH_INFO of the image API paths locproxy handles. Inside
# Glance's urlmap SCRIPT_NAME may already hold "/v2", hence the whole path.
_IMAGE_PATH = re.compile(r"^(?P<base>.*?)/v2/images(?:/(?P<image_id>[^/]+)(?P<sub>/file|/locations)?)?/?$")

#: This process's filters, for ``locproxy.status`` (which answers for them where they cannot be reached).
_LIVE: weakref.WeakSet[LocationFilter] = weakref.WeakSet()


def live_filters() -> list[LocationFilter]:
    return list(_LIVE)


class LocationFilter:
    """WSGI middleware. ``settings`` is fixed, or a ``Reloading`` source that
    swaps them when the operator's ``config_file`` changes."""

    def __init__(self, app: Callable, settings: FilterSettings | Reloading[FilterSettings]) -> None:
        self.app = app
        self._reloading = settings if isinstance(settings, Reloading) else None
        initial = self._reloading.current() if self._reloading else settings
        assert isinstance(initial, FilterSettings)
        self._state = _state(Services(initial))
        _LIVE.add(self)

    @property
    def settings(self) -> FilterSettings:
        return self._state.settings

    @property
    def services(self) -> Services:
        return self._state.services

    def _current(self) -> _State:
        """Settings, services and download handler for one request, swapped together."""
        state = self._state
        if self._reloading is not None:
            settings = self._reloading.current()
            if settings is not state.settings:
                state = self._state = _state(Services(settings, state.services))
        return state

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        state = self._current()
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        match = _IMAGE_PATH.match(path)
        if match is None:
            if environ["REQUEST_METHOD"] == "GET" and path:
                settings = state.settings
                if path == settings.observability.healthcheck_path:
                    return observability.health_response(state.services.health())(environ, start_response)
                if path == settings.observability.metrics_path:
                    return observability.metrics_response()(environ, start_response)
            return self.app(environ, start_response)  # not ours: no request object, no cost
        return self._image_request(Request(environ), state, match)(environ, start_response)

    def _image_request(self, req: Request, state: _State, match: re.Match) -> Callable:
        """The WSGI app (a response, or the upstream) for an image API request."""
        image_id, sub = match.group("image_id"), match.group("sub")
        method = req.method
        try:
            prefer = request_prefer(req)
        except UnicodeDecodeError:
            return json_error(400, "The query string is not valid UTF-8.")
        if sub == "/file":
            if state.settings.backends.serve_downloads and method in ("GET", "HEAD"):
                observability.request("download")
                image = ImageRequests(self.app, req, match.group("base"), image_id)
                response = state.downloads(req, image, prefer)
                return self.app if response is None else response
            return self.app
        if sub == "/locations":
            kind = rewrite.LOCATIONS if method == "GET" else None
        elif image_id is None:
            kind = {"GET": rewrite.IMAGES, "POST": rewrite.IMAGE}.get(method)
        else:
            kind = rewrite.IMAGE if method in ("GET", "PATCH") else None
        if method == "DELETE" and image_id is not None and sub is None and state.services.cache is not None:
            return self._delete(req, state.services, image_id)
        if kind is None:
            return self.app
        observability.request(kind if method != "PATCH" else "patch")
        if method == "PATCH":
            image = ImageRequests(self.app, req, match.group("base"), image_id)
            refusal = self._translate_patch(req, image, state.services)
            if refusal is not None:
                return refusal
        policy = hidden.with_direct_url(rewrite_policy(req, state.services, prefer), state.services.hidden,
                                        req.environ, read=image_id is not None and kind == rewrite.IMAGE)
        return self._rewrite_response(req, kind, policy, state.services, image_id)

    # -- responses ---------------------------------------------------------

    def _rewrite_response(
        self, req: Request, kind: str, policy: rewrite.RewritePolicy, services: Services, image_id: str | None,
    ) -> Response:
        settings = services.settings
        # Ask for identity so the JSON can be read; gzip is still handled.
        req.headers["Accept-Encoding"] = "identity"
        resp = req.get_response(self.app)
        if req.method == "HEAD" or not 200 <= resp.status_code < 300 or resp.content_type != bodies.JSON:
            observability.rewrite("passed_through")
            return resp
        try:
            body = bodies.read_bounded(resp, settings.selection.max_rewrite_size)
        except bodies.BodyBroken as error:
            LOG.warning("upstream response for %s broke off while being read: %s", req.path, error)
            return json_error(502, "The image API's response ended before it was complete.")
        plain = None if body is None else bodies.plain_body(resp, body, settings.selection.max_rewrite_size)
        new, document = (None, None) if plain is None else rewrite.rewrite_body(plain, kind, policy)
        # What this client now sees, so its JSON-patch indexes can be translated.
        services.shown.remember(client_key(req.headers), rewrite.shown_orders(document, kind, image_id))
        if new is None:  # oversized, undecodable, not an image, or already in order
            observability.rewrite("unchanged" if plain is not None else "passed_through")
            return resp
        observability.rewrite("rewritten")
        LOG.debug("rewrote %s %s with strategy %s", req.method, req.path, settings.selection.strategy)
        resp.content_encoding = None
        resp.etag = None
        resp.content_md5 = None
        resp.body = new  # also sets Content-Length
        return resp

    def _delete(self, req: Request, services: Services, image_id: str) -> Response:
        """An image deleted through locproxy leaves the site cache at once."""
        resp = req.get_response(self.app)
        if resp.status_code in (200, 204) and services.cache is not None:
            dropped = services.cache.drop_image(image_id)
            LOG.debug("image %s deleted: %d site cache entries dropped", image_id, dropped)
        return resp

    # -- JSON patch --------------------------------------------------------

    def _translate_patch(self, req: Request, image: ImageRequests, services: Services) -> Response | None:
        """Point ``/locations/N`` at the copy the client saw at N. Returns a
        response to send instead of forwarding, or None to go on."""
        if req.content_type not in rewrite.JSON_PATCH_TYPES:
            return None
        limit = services.settings.selection.max_rewrite_size
        if req.content_length is not None and req.content_length > limit:
            return json_error(413, f"JSON-patch bodies are limited to {limit} bytes.")
        raw = req.body_file.read(limit + 1)
        if len(raw) > limit:
            return json_error(413, f"JSON-patch bodies are limited to {limit} bytes.")
        req.body = raw  # the stream was consumed: forward exactly what was read
        operations = rewrite.parse_json(raw)
        if rewrite.odd_location_index(operations):
            # The upstream might read "01" or "+1" as an index into its own order.
            return json_error(400, "JSON-patch location indexes must be plain numbers such as 0 or 12.")
        if not rewrite.patch_addresses_locations(operations):
            return None  # nothing to translate; a malformed patch is the upstream's to refuse
        current = image.show()
        if current.status_code != 200:
            return current  # the upstream's own refusal (401/403/404...)
        try:
            document = bodies.json_document(current, limit)
        except bodies.BodyBroken:
            return json_error(502, "The image API's response ended before it was complete.")
        locations = document.get("locations") if isinstance(document, dict) else None
        if not rewrite.well_formed(locations):
            return None  # never reordered: the client saw the upstream's order
        upstream = [rewrite.location_token(location) for location in locations]
        view = services.shown.recall(client_key(req.headers), image.image_id)
        if view is None and len(upstream) > 1:
            return _unknown_order(image.image_id, "locproxy does not know which order of its locations you saw")
        try:
            translated = rewrite.translate_patch(operations, upstream, upstream if view is None else view)
        except rewrite.Untranslatable as error:
            return _unknown_order(image.image_id, str(error))
        if translated != operations:
            LOG.debug("translated JSON-patch location indexes for image %s", image.image_id)
            req.body = json.dumps(translated).encode("utf-8")
        return None


def _unknown_order(image_id: str, why: str) -> Response:
    return json_error(409, f"JSON-patch location indexes of image {image_id} refused: {why}. "
                           f"Read the image again (GET /v2/images/{image_id}) and retry with its indexes.")


class _State(NamedTuple):
    settings: FilterSettings
    services: Services
    downloads: DownloadHandler


def _state(services: Services) -> _State:
    observability.show_strategy(services.settings.selection.strategy, strategy_names())
    return _State(services.settings, services, DownloadHandler(services))


def rewrite_policy(req: Request, services: Services, prefer: tuple[str, ...]) -> rewrite.RewritePolicy:
    """How to rewrite this client's responses: its ``prefer``, what it may see."""
    settings = services.settings
    security = settings.security
    hide: tuple[str, ...] = ()
    if security.locations_visible_to_roles:
        roles = {role.strip().lower() for role in req.headers.get(security.roles_header, "").split(",")}
        if not roles & {role.lower() for role in security.locations_visible_to_roles}:
            hide = security.hidden_fields
    return rewrite.RewritePolicy(
        selector=services.selector,
        prefer=prefer,
        add_direct_url=settings.selection.add_direct_url,
        scrub_credentials=security.scrub_credentials,
        hide=hide,
    )


def request_prefer(req: Request) -> tuple[str, ...]:
    """Stores the client asked to put first (``?prefer=store1,store2``).
    UnicodeDecodeError if the query string is not UTF-8."""
    return parse_list("prefer", ",".join(req.GET.getall("prefer")))


def filter_factory(global_conf: dict[str, Any], **local_conf: Any) -> Callable[[Callable], LocationFilter]:
    """paste.filter_factory: options validated here, once, at load.

    With ``config_file``, that file's ``[locproxy]`` options override these
    and are reloaded when it changes (see ``locproxy.reloading``).
    """
    config_file = str(local_conf.pop("config_file", "") or global_conf.get("config_file", "")).strip()
    settings: FilterSettings | Reloading[FilterSettings]
    if config_file:
        def build(options: Mapping[str, str], previous: FilterSettings | None) -> FilterSettings:
            return load_filter_settings(global_conf, {**local_conf, **options})

        read_options(config_file)  # fail at load, naming config_file, if unreadable
        settings = Reloading(config_file, build)
        install_sighup([settings])
    else:
        settings = load_filter_settings(global_conf, local_conf)

    def make_filter(app: Callable) -> LocationFilter:
        return LocationFilter(app, settings)

    return make_filter
