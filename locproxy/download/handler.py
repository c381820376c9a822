"""The WSGI shell of downloads: one straight line.

1. **Authorise**: the client's own request for the image's metadata goes to
   the upstream (with the client's credentials). On anything but 200 the
   client's request goes on to the upstream's own ``/file``, which refuses
   it in its own words: no byte of an image leaves locproxy without the
   upstream's consent, cache hits included.
2. **Plan** (``plan.py``, pure): what the client asked for and the
   candidates in order; what is not an active image with data goes to the
   upstream's own ``/file``. The client's own token (``Caller``: the one the
   show just went with) decides, and later reads, the copies only the
   client may read (multi-tenant swift); the plan itself holds no token.
3. **Check** (``policy.py``, pure): how the bytes are checked and sent,
   from the ``verify_checksums`` mode and the image's fingerprint.
4. **Choose** (``choose.py``): one source: a cache hit, a fill to follow
   or one just started, a copy, or the upstream.
5. **Serve** (``serve.py``): headers only, sendfile, or a checked body
   (``body.py``) that resumes from the next sources.
6. **Promote** (``promote = auto``, ``locproxy.promoter``): a whole
   download served (200) of an image with no copy in ``local_stores``
   counts towards copying the image into the site's store, whatever served
   it (a copy, the upstream, this node's cache or a fill it follows); the
   copy is asked for in the background. Ranges, HEADs and refusals never
   count.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

from webob import Request, Response

from locproxy import bodies, observability
from locproxy.cache import Fill, Follow, Hit
from locproxy.download import caching
from locproxy.download.backends import Caller
from locproxy.download.choose import choose_source
from locproxy.download.plan import DownloadPlan, Refusal, plan_download
from locproxy.download.policy import body_policy
from locproxy.download.serve import serve
from locproxy.download.sources import Sources
from locproxy.promotion import locality
from locproxy.responses import json_error
from locproxy.services import Services
from locproxy.upstream import ImageRequests

LOG = logging.getLogger(__package__)  # one logger for the whole download path


class DownloadHandler:
    """Serves ``/file`` for the filter; returns None to let the upstream answer."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings

    def __call__(self, req: Request, image_requests: ImageRequests, prefer: Sequence[str] = ()) -> Response | None:
        plan = self.plan(req, image_requests, prefer)
        if not isinstance(plan, DownloadPlan):
            return plan
        if self.settings.security.download_authorization == "file":
            refusal = _download_refused(image_requests)
            if refusal is not None:
                return refusal
        return self.render(plan, req, image_requests)

    def plan(self, req: Request, image_requests: ImageRequests, prefer: Sequence[str]) -> DownloadPlan | Response | None:
        """Steps 1 and 2: the plan, a response of locproxy's own, or None."""
        services = self.services
        shown = image_requests.show()
        if shown.status_code != 200:
            # Refused (or failing): the client's own /file request goes to the
            # upstream, which answers it in its own words. No byte from us.
            bodies.close_iterable(shown.app_iter)
            return None
        try:
            image = bodies.json_document(shown, self.settings.selection.max_rewrite_size)
        except bodies.BodyBroken:
            return json_error(502, "The image API's response ended before it was complete.")
        if services.hidden is not None:  # copies the image API hides (locproxy.hidden), after the show's 200
            image = services.hidden.complete(image, req.environ)
        caller = Caller.of(image_requests.req.environ)  # the token the show just went with
        plan = plan_download(image, method=req.method, range_header=req.headers.get("Range"),
                             selector=services.selector, prefer=prefer,
                             readable=lambda url: services.backends.readable(url, caller),
                             demoted=services.tracker.demoted)
        if isinstance(plan, Refusal):
            return json_error(plan.status, plan.message, dict(plan.headers))
        return plan

    def render(self, plan: DownloadPlan, req: Request, image_requests: ImageRequests) -> Response | None:
        """Steps 3 to 5."""
        services, backends = self.services, self.settings.backends
        for worker in (services.prober, services.ahead):
            if worker is not None:
                worker.note(plan)
        image_requests.prefer = plan.upstream_prefer  # whenever the upstream's own /file is asked
        cache = services.cache
        if not plan.candidates and cache is None:
            LOG.debug("image %s: no location locproxy may read; the upstream serves it", plan.image_id)
            services.recorder.outcome("upstream", "upstream")
            return self._promoting(plan, image_requests.as_sent(), image_requests)
        if plan.head_only:
            return Response(status=plan.status, headerlist=list(plan.headers), app_iter=[])
        cached = None if cache is None else caching.begin(cache, plan, backends.first_byte_timeout)
        _count(cache, cached)
        fingerprint = services.fingerprints.get(plan.digest, plan.size)
        if isinstance(cached, Hit):
            fingerprint = fingerprint or cached.fingerprint
            caching.scrub_if_due(cache, cached)  # type: ignore[arg-type]
        policy = body_policy(plan, backends.verify_checksums, fingerprint)
        sources = self._sources(plan, image_requests)
        source = choose_source(plan, policy, cached, cache, sources, self._sources(plan, image_requests),
                               services.fingerprints)
        response = serve(plan, source, policy, sources, services.fingerprints, image_requests, req.environ,
                         backends.chunk_size)
        return self._promoting(plan, response, image_requests)

    def _promoting(self, plan: DownloadPlan, response: Response | None, image_requests: ImageRequests) -> Any:
        """Step 6: ``response``, after counting it towards a promotion if it
        serves the whole image of one with no local copy; None (the upstream
        answers the client's own request) becomes the upstream, watched.

        Whatever served it counts: a cache hit or a followed fill as a read
        of the non-local copy. The count is demand at a site that
        still lacks its copy, and the cache is this machine's alone: every
        other node of the site fills its own across the link, and an evicted
        entry crosses again. Were hits left out, a node with a cache would
        count one download per image (its fill) and never promote."""
        promoter = self.services.promoter
        if (promoter is None or plan.head_only or not plan.whole_image
                or locality(plan.stores, self.settings.promotion.local_stores)):
            return response
        if response is None:
            return _counted_if_served(image_requests.app, lambda: promoter.served(plan.image_id))
        if response.status_code == 200:
            promoter.served(plan.image_id)
        return response

    def _sources(self, plan: DownloadPlan, image_requests: ImageRequests) -> Sources:
        services = self.services
        return Sources(plan.candidates, services.backends, services.recorder, image_requests, plan.image_id,
                       plan.size, Caller.of(image_requests.req.environ))


def _counted_if_served(app: Callable, served: Callable[[], None]) -> Callable:
    """``app`` (the upstream), calling ``served()`` when it answers 200."""
    def watched(environ: dict, start_response: Callable) -> Any:
        def start(status: str, headers: list, exc_info: Any = None) -> Any:
            if status.startswith("200"):
                served()
            return start_response(status, headers, exc_info)
        return app(environ, start)
    return watched


def _count(cache: object, cached: Hit | Follow | Fill | None) -> None:
    if cache is not None:
        observability.cache_request({Hit: "hit", Follow: "follow"}.get(type(cached), "miss"))


def _download_refused(image_requests: ImageRequests) -> Response | None:
    """The upstream's refusal of this client's download, or None if it
    allows it: its own ``/file`` is asked, as the client, so download
    policies stricter than viewing (Glance's ``download_image``) apply too.
    The first byte is asked for; a store that cannot read at random
    (Glance's 400 to any Range) is asked for the whole ``/file``, whose
    body is not read: the answer's status is what counts."""
    probe = image_requests.download(headers={"Range": "bytes=0-0"})
    if probe.status_code == 400:
        bodies.close_iterable(probe.app_iter)
        probe = image_requests.download()
    if probe.status_code in (200, 206):
        bodies.close_iterable(probe.app_iter)  # unread: a 200 may be the whole image
        return None
    return probe
