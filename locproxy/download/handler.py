"""The WSGI shell of downloads: asks the upstream, plans, renders the plan.

The order of events, and why:

1. The client's own request for the image's metadata goes to the upstream
   (with the client's credentials). On anything but 200 the client's request
   goes on to the upstream's own ``/file``, which refuses it in its own words:
   no byte of an image leaves locproxy without the upstream's consent.
2. The plan (``plan.py``, pure) decides the rest: only active images with a
   known size are served here; everything else is passed on to the
   upstream's own ``/file``, which knows its own rules best.
3. The planned sources are opened in turn until one answers; if none opens,
   the request goes to the upstream's ``/file`` (cinder, swift... still
   work), asking for the strategy's store order with ``?prefer=`` where
   the upstream allows it (``ImageRequests.as_sent``).
4. With a site cache (``cache_dir``), a committed entry or a fill in
   progress serves the bytes from local disk; a miss fills the cache beside
   the download, from the upstream's ``/file`` too when no copy opens
   (``caching.py``).
5. A copy verified before (``locproxy.verified``: by any worker, before a
   restart) is sent without hashing: a local file through the server's
   ``wsgi.file_wrapper`` (sendfile, the socket corked), an http copy with
   plain reads. Anything else streams through ``ImageBody``, which hashes
   beside the transfer, resumes and verifies (``body.py``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import replace
from typing import Any, Sequence

from webob import Request, Response

from locproxy import bodies, observability
from locproxy.cache import Fill, SiteCache
from locproxy.config import FilterSettings
from locproxy.download import caching
from locproxy.download.ahead import ACTIVITY, VerifyAhead
from locproxy.download.backends import Backends
from locproxy.download.body import Check, ImageBody
from locproxy.download.digests import Digest, file_digest_matches, submit
from locproxy.download.plan import CACHE, Candidate, DownloadPlan, Refusal, plan_download
from locproxy.download.probing import Prober
from locproxy.download.sources import Opened, Sources
from locproxy.observability import Recorder
from locproxy.responses import json_error
from locproxy.upstream import ImageRequests
from locproxy.verified import VerifiedCopies

LOG = logging.getLogger(__package__)  # one logger for the whole download path


class DownloadHandler:
    """Serves ``/file`` for the filter; returns None to let the upstream answer.

    Holds what outlives a settings reload: the backend connection pools, kept
    while the backend settings are unchanged.
    """

    def __init__(self, settings: FilterSettings) -> None:
        self.settings = settings
        self.backends = Backends.from_settings(settings)
        self.ahead = None
        if settings.backends.verify_ahead:
            self.ahead = VerifyAhead(self.backends, settings.verified, Recorder(settings.tracker), ACTIVITY)
        self.prober = None
        if settings.health.probe_interval:
            self.prober = Prober(self.backends, Recorder(settings.tracker), settings.health.probe_interval,
                                 settings.health.probe_size)

    def for_settings(self, settings: FilterSettings) -> DownloadHandler:
        """This handler if ``settings`` read the same backends the same way, else a new one."""
        if _same_backends(settings, self.settings):
            return self
        for worker in (self.prober, self.ahead):
            if worker is not None:
                worker.stop()
        return DownloadHandler(settings)

    def __call__(self, req: Request, image_requests: ImageRequests, settings: FilterSettings,
                 prefer: Sequence[str] = ()) -> Response | None:
        shown = image_requests.show()
        if shown.status_code != 200:
            # Refused (or failing): the client's own /file request goes to the
            # upstream, which answers it in its own words. No byte from us.
            bodies.close_iterable(shown.app_iter)
            return None
        try:
            image = bodies.json_document(shown, settings.selection.max_rewrite_size)
        except bodies.BodyBroken:
            return json_error(502, "The image API's response ended before it was complete.")
        if settings.hidden is not None:  # copies the image API hides (locproxy.hidden), after the show's 200
            image = settings.hidden.complete(image, req.environ)
        plan = plan_download(
            image, method=req.method, range_header=req.headers.get("Range"), selector=settings.selection.selector,
            prefer=prefer, readable=self.backends.readable, demoted=settings.tracker.demoted,
            verify_checksums=settings.backends.verify_checksums != "off",
        )
        if plan is None:
            return None
        if isinstance(plan, Refusal):
            return json_error(plan.status, plan.message, dict(plan.headers))
        if settings.security.download_authorization == "file":
            refusal = _download_refused(image_requests)
            if refusal is not None:
                return refusal
        return self.render(plan, req, image_requests, Recorder(settings.tracker), settings)

    def render(self, plan: DownloadPlan, req: Request, image_requests: ImageRequests, recorder: Recorder,
               settings: FilterSettings) -> Response | None:
        """The response for ``plan``: headers only, sendfile, or a streamed body."""
        if self.prober is not None:
            self.prober.remember(plan.candidates, plan.size)
        if self.ahead is not None:
            self.ahead.note(plan)
        image_requests.prefer = plan.upstream_prefer  # whenever the upstream's own /file is asked
        cache = settings.cache
        if not plan.candidates and cache is None:
            LOG.debug("image %s: no location locproxy may read; the upstream serves it", plan.image_id)
            recorder.outcome("upstream", "upstream")
            return image_requests.as_sent()
        if plan.head_only:
            return Response(status=plan.status, headerlist=list(plan.headers), app_iter=[])
        sources = Sources(plan.candidates, self.backends, recorder, image_requests, plan.image_id, plan.size,
                          plan.end)
        body = None if cache is None else self._from_cache(cache, plan, sources, req.environ, settings)
        if body is None:
            body = self._from_sources(plan, sources, req.environ, settings)
        if body is None:
            recorder.outcome(plan.candidates[0].label if plan.candidates else "upstream", "upstream")
            return image_requests.as_sent()
        return Response(status=plan.status, headerlist=list(plan.headers), app_iter=ACTIVITY.track(body))

    def _from_sources(self, plan: DownloadPlan, sources: Sources, environ: dict[str, Any],
                      settings: FilterSettings, fill: Fill | None = None) -> Any:
        """The body from the image's copies; with a cache fill, from the
        upstream's own /file when none opens (the fill needs the bytes)."""
        first = sources.open_next(plan.start)
        if first is None and fill is not None:
            first = sources.resume(plan.start)
        if first is None:
            return None
        if fill is not None:  # hashed whatever verify_checksums says: only verified bytes are committed
            check = Check.BACKGROUND if settings.backends.verify_checksums != "on" else Check.VERIFY
            return ImageBody(sources, first, plan.start, plan.end, plan.image_digest, check, settings.verified, fill)
        return self._body(plan, first, sources, environ, settings)

    def _from_cache(self, cache: SiteCache, plan: DownloadPlan, sources: Sources, environ: dict[str, Any],
                    settings: FilterSettings) -> Any:
        """A hit, a fill in progress to follow, or a new fill's body; None
        when the cache cannot serve or hold this download."""
        chunk_size, verified = settings.backends.chunk_size, settings.verified
        for attempt in range(3):  # again when a fill was being committed between the lookup and the fill
            if attempt:
                time.sleep(0.02)  # the commit: a rename and an index row
            hit = caching.lookup(cache, plan, chunk_size)
            if hit is not None:
                entry, stream = hit
                observability.cache_request("hit")
                observability.cache_served(plan.end - plan.start)
                if entry.verify and plan.whole_image:
                    return ImageBody(sources, (CACHE, stream), plan.start, plan.end, plan.image_digest,
                                     Check.VERIFY, verified, caching.EntryCheck(cache, entry.key))
                return self._body(replace(plan, digest=None), (CACHE, stream), sources, environ, settings)
            started = caching.fill_or_follow(cache, plan, chunk_size)
            if started != caching.COMMITTED:
                break
        if isinstance(started, caching.FollowStream):
            observability.cache_request("follow")
            check = _check(plan.digest, None, settings.backends.verify_checksums, verified)
            return ImageBody(sources, (CACHE, started), plan.start, plan.end, plan.digest, check, verified)
        observability.cache_request("miss")
        if not isinstance(started, Fill):
            return None
        return self._from_sources(plan, sources, environ, settings, started)

    def _body(self, plan: DownloadPlan, first: Opened, sources: Sources, environ: dict[str, Any],
              settings: FilterSettings) -> Any:
        candidate, stream = first
        check = _check(plan.digest, stream.identity, settings.backends.verify_checksums, settings.verified)
        file_wrapper = environ.get("wsgi.file_wrapper")
        # A file wrapper may send to the end of the file, whatever Content-Length says: whole bodies only.
        if stream.fileobj is None or file_wrapper is None or not plan.whole or check is Check.VERIFY:
            return ImageBody(sources, first, plan.start, plan.end, plan.digest, check, settings.verified)
        if check is Check.BACKGROUND:
            assert plan.digest is not None
            _verify_later(stream.fileobj, plan.digest, stream.identity, candidate, plan.image_id, sources.recorder,
                          settings.verified)
        LOG.info("image %s: bytes %d-%d sent from %s (sendfile%s)", plan.image_id, plan.start, plan.end - 1,
                 candidate.label, {Check.TRUST: f", {plan.digest and plan.digest[0]} verified before",
                                   Check.BACKGROUND: ", checked beside"}.get(check, ""))
        sources.recorder.outcome(candidate.label, "served" if sources.failures == 0 else "fell_back")
        return corked(file_wrapper(stream.fileobj, settings.backends.chunk_size), environ)


def _check(digest: Digest | None, identity: tuple | None, mode: str, verified: VerifiedCopies) -> Check:
    """How much checking this body needs: none without a digest, none for a
    copy verified before, else what ``verify_checksums`` asks."""
    if digest is None:
        return Check.NONE
    if verified.contains(identity, digest):
        return Check.TRUST
    return Check.BACKGROUND if mode == "background" else Check.VERIFY


def _verify_later(fileobj: Any, digest: Digest, identity: tuple | None, candidate: Candidate, image_id: str,
                  recorder: Recorder, verified: VerifiedCopies) -> None:
    """Hash a file being sent with sendfile, on a digest thread, from a
    descriptor of its own (the response closes the other one whenever it
    ends). A mismatch demotes and forgets the copy; the body is the client's
    to check (``verify_checksums = background``)."""
    fd = os.dup(fileobj.fileno())

    def verify() -> None:
        with os.fdopen(fd, "rb", buffering=0) as copy:
            good = file_digest_matches(copy, digest)
        if good:
            verified.add(identity, digest)
            return
        verified.forget(identity)
        recorder.corrupt(candidate.key, candidate.copy, candidate.label, image_id)
        recorder.outcome(candidate.label, "checksum_mismatch")
        LOG.error("image %s: %s digest mismatch from %s; the body was sent (verify_checksums = background), "
                  "the copy is demoted", image_id, digest[0], candidate.label)

    submit(verify)


def corked(wrapper: Any, environ: dict[str, Any]) -> Any:
    """Cork the client socket while the server sendfile()s ``wrapper``.

    Under gunicorn (``gunicorn.socket``, Linux ``TCP_CORK``) the kernel then
    sends only full segments, as nginx does with ``tcp_nopush on``. The
    wrapper's ``close()`` (always called by the server) uncorks, which
    flushes the last partial segment at once.
    """
    sock, cork = environ.get("gunicorn.socket"), getattr(socket, "TCP_CORK", None)
    if sock is None or cork is None or not hasattr(wrapper, "close"):
        return wrapper
    try:
        sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
    except (OSError, AttributeError):
        return wrapper
    close = wrapper.close

    def uncork_and_close() -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, cork, 0)
        except OSError:
            pass  # the client is gone
        close()

    wrapper.close = uncork_and_close  # the server checks isinstance(): keep the object
    return wrapper


def _download_refused(image_requests: ImageRequests) -> Response | None:
    """The upstream's refusal of this client's download, or None if it
    allows it: its own ``/file`` is asked for the first byte, as the client,
    so download policies stricter than viewing (Glance's ``download_image``)
    apply too."""
    probe = image_requests.download(headers={"Range": "bytes=0-0"})
    if probe.status_code in (200, 206):
        bodies.close_iterable(probe.app_iter)  # unread: a 200 may be the whole image
        return None
    return probe


def _same_backends(settings: FilterSettings, other: FilterSettings) -> bool:
    """Whether a handler built for ``other`` serves ``settings`` as well."""
    return (settings.security == other.security and settings.backends == other.backends
            and settings.health.probe_interval == other.health.probe_interval
            and settings.health.probe_size == other.health.probe_size and settings.tracker is other.tracker)
