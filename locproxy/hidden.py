"""Copies the image API hides from users (``locations_from``).

Production Glance shows no ``locations`` (``show_multiple_locations =
False``); its service API ``GET /v2/images/{id}/locations`` lists them for
a service. With ``locations_from = service`` locproxy reads it with its own
token; with ``service_token``, with the user's token plus its own as
``X-Service-Token`` (the user's visibility, under one policy line; see the
README). ``response`` (the default) reads nothing.

Rules, and why:

* The user's own ``GET /v2/images/{id}`` is the authorisation: callers only
  ask here after that show answered 200, with the image it showed. Nothing
  here authorises a byte.
* The copies read choose and serve the download (``complete``: the image
  for the planner gets them as ``locations``) and decide ``direct_url`` in
  the user's show (``with_direct_url``); they are never put in a response as
  ``locations``. A list response uses only what is remembered (no read per
  listed image).
* A bounded memory (``MEMORY_SIZE`` images, ``locations_ttl`` seconds) keyed
  by what changes with the image's copies (id, ``updated_at``, digest,
  ``stores``, ``direct_url``): a changed image is read afresh.
* The request is built here, never from the client's headers: only the
  user's ``X-Auth-Token`` (service_token mode) and locproxy's token; a
  client's ``X-Service-Token``, ``X-Roles`` or identity headers never pass.
  Inside Glance's pipeline, below ``authtoken`` and ``context``, this is an
  HTTP request to the image API's endpoint, authenticated again there.
* locproxy's token revoked while it holds it: in ``service`` mode Glance
  answers 401 and keystoneauth1 gets a new token and sends the read once
  more; in ``service_token`` mode Glance ignores a service token it cannot
  validate (``delay_auth_decision``) and answers for the user's token
  alone (403), so a 401 or 403 there is sent once more with a new token,
  at most one renewal a minute per worker (``ServiceIdentity.renewed_token``):
  a missing policy line costs Keystone one token a minute, not one per read.
* Any failure (Keystone, the image API, a refusal, a bad body) leaves the
  image as the upstream showed it: the download goes on as without this.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable, Mapping

from prometheus_client import Counter

from locproxy.identity import IdentitySettings, ServiceIdentity

LOG = logging.getLogger(__name__)

MEMORY_SIZE = 4096
READS = Counter("locproxy_hidden_locations", "Hidden-location look-ups, by result: memory, read, refused, failed",
                ["result"])


def _key(image: Mapping[str, Any]) -> tuple:
    return tuple(str(image.get(name)) for name in ("id", "updated_at", "os_hash_value", "checksum", "stores",
                                                     "direct_url", "size"))


class HiddenLocations:
    """Reads and remembers the hidden copies of images (see the module docstring)."""

    def __init__(self, settings: IdentitySettings, identity: ServiceIdentity | None = None) -> None:
        self.settings = settings
        self.identity = identity or ServiceIdentity(settings)
        self._memory: OrderedDict[tuple, tuple[float, list[dict]]] = OrderedDict()
        self._lock = threading.Lock()
        self._refusal_logged = False

    @property
    def failing(self) -> bool:
        return self.identity.failing

    # -- the two seams --

    def complete(self, image: Any, environ: Mapping[str, Any]) -> Any:
        """``image`` with its hidden copies as ``locations`` (for the download
        planner only), or ``image`` itself when it shows them or none can be read."""
        if not isinstance(image, dict) or "locations" in image or image.get("status") != "active":
            return image
        locations = self.locations(image, environ)
        return image if locations is None else {**image, "locations": locations}

    def for_policy(self, environ: Mapping[str, Any], *, read: bool) -> Callable[[dict], list | None]:
        """The ``RewritePolicy.hidden`` of one response: reads for a show, memory only for a list."""
        if read:
            return lambda image: self.locations(image, environ)
        return self.remembered

    # -- memory and reads --

    def remembered(self, image: Mapping[str, Any]) -> list[dict] | None:
        key = _key(image)
        with self._lock:
            held = self._memory.get(key)
            if held is None or held[0] < time.monotonic():
                return None
            self._memory.move_to_end(key)
        READS.labels("memory").inc()
        return held[1]

    def locations(self, image: Mapping[str, Any], environ: Mapping[str, Any]) -> list[dict] | None:
        known = self.remembered(image)
        if known is not None:
            return known
        image_id = image.get("id")
        if not isinstance(image_id, str) or "/" in image_id:
            return None
        read = self._read(image_id, environ)
        if read is not None:
            with self._lock:
                self._memory[_key(image)] = (time.monotonic() + self.settings.locations_ttl, read)
                while len(self._memory) > MEMORY_SIZE:
                    self._memory.popitem(last=False)
        return read

    def _read(self, image_id: str, environ: Mapping[str, Any]) -> list[dict] | None:
        headers = {"Accept": "application/json"}
        if self.settings.locations_from == "service_token":
            user_token = environ.get("HTTP_X_AUTH_TOKEN")
            if not user_token:
                return None  # no user token: nothing to read on anyone's behalf
            headers["X-Auth-Token"] = user_token
        token = self.identity.token()
        endpoint = self.identity.endpoint() if token is not None else None
        if token is None or endpoint is None:
            READS.labels("failed").inc()
            return None
        url = f"{endpoint}/v2/images/{image_id}/locations"
        try:
            resp = self._get(url, headers, token)
            if resp.status_code in (401, 403) and self.settings.locations_from == "service_token":
                renewed = self.identity.renewed_token()  # ours may be the one refused (revoked while held)
                if renewed is not None:
                    resp = self._get(url, headers, renewed)
        except Exception as error:  # noqa: BLE001 - the download goes on without them
            READS.labels("failed").inc()
            LOG.warning("image %s: reading its locations from the image API failed (%s)", image_id,
                        type(error).__name__)
            return None
        if self.settings.locations_from == "service":
            self.identity.note_token()  # a 401 made keystoneauth1 get a new token and send the request again
        return self._parse(image_id, resp.status_code, resp.content)

    def _get(self, url: str, headers: dict[str, str], token: str) -> Any:
        """One read: ``service_token`` mode sends ``token`` beside the user's;
        ``service`` mode lets keystoneauth1 send its own (and retry once after a 401)."""
        service_token = self.settings.locations_from == "service_token"
        return self.identity.session().get(url, headers={**headers, "X-Service-Token": token} if service_token
                                           else headers, authenticated=not service_token, raise_exc=False,
                                           timeout=self.settings.timeout)

    def _parse(self, image_id: str, status: int, body: bytes) -> list[dict] | None:
        if status != 200:
            READS.labels("refused" if status in (401, 403, 404) else "failed").inc()
            if status in (401, 403) and not self._refusal_logged:
                self._refusal_logged = True  # a policy matter: once per worker
                LOG.warning("the image API refused locproxy's GET /v2/images/{id}/locations (HTTP %s, "
                            "locations_from = %s): see the README's policy line", status,
                            self.settings.locations_from)
            else:
                LOG.debug("image %s: GET .../locations answered HTTP %s", image_id, status)
            return None
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, list) or not all(
                isinstance(item, dict) and isinstance(item.get("url"), str) for item in document):
            READS.labels("failed").inc()
            LOG.warning("image %s: the image API's location list is not understood", image_id)
            return None
        READS.labels("read").inc()
        return document


def open_hidden(settings: IdentitySettings, previous: HiddenLocations | None) -> HiddenLocations | None:
    """The reader for ``settings`` (the previous one while they are unchanged); None for ``response``."""
    if not settings.enabled:
        return None
    if previous is not None and previous.settings == settings:
        return previous
    return HiddenLocations(settings)


def with_direct_url(policy: Any, hidden: HiddenLocations | None, environ: Mapping[str, Any], *, read: bool) -> Any:
    """``policy`` (a ``RewritePolicy``) that decides ``direct_url`` from hidden copies, if any are read."""
    if hidden is None:
        return policy
    return replace(policy, hidden=hidden.for_policy(environ, read=read))
