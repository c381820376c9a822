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
   the request goes to the upstream's ``/file`` unchanged (rbd, cinder,
   swift... still work).
4. A local file that verified before (``VerifiedFiles``) is handed to the
   server's ``wsgi.file_wrapper`` (sendfile); anything else streams through
   ``ImageBody``, which resumes and verifies.
"""

from __future__ import annotations

import logging
from typing import Sequence

from webob import Request, Response

from locproxy import bodies
from locproxy.config import FilterSettings
from locproxy.download.backends import Backends
from locproxy.download.body import ImageBody, VerifiedFiles
from locproxy.download.plan import DownloadPlan, Refusal, plan_download
from locproxy.download.sources import Opened, Sources
from locproxy.observability import Recorder
from locproxy.probing import Prober
from locproxy.responses import json_error
from locproxy.upstream import ImageRequests

LOG = logging.getLogger(__package__)  # one logger for the whole download path


class DownloadHandler:
    """Serves ``/file`` for the filter; returns None to let the upstream answer.

    Holds what outlives a settings reload: the backend connection pools (kept
    while the backend settings are unchanged) and the verified-file memory.
    """

    def __init__(self, settings: FilterSettings, verified_files: VerifiedFiles | None = None) -> None:
        self.settings = settings
        self.backends = Backends.from_settings(settings)
        self.verified_files = verified_files or VerifiedFiles()
        self.prober = None
        if settings.health.probe_interval:
            self.prober = Prober(self.backends, settings.tracker, settings.health.probe_interval,
                                 settings.health.probe_size)

    def for_settings(self, settings: FilterSettings) -> DownloadHandler:
        """This handler if ``settings`` read the same backends the same way, else a new one."""
        if _same_backends(settings, self.settings):
            return self
        if self.prober is not None:
            self.prober.stop()
        return DownloadHandler(settings, self.verified_files)

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
        plan = plan_download(
            image, method=req.method, range_header=req.headers.get("Range"), selector=settings.selection.selector,
            prefer=prefer, readable=self.backends.readable, demoted=settings.tracker.demoted,
            verify_checksums=settings.backends.verify_checksums,
        )
        if plan is None:
            return None
        if isinstance(plan, Refusal):
            return json_error(plan.status, plan.message, dict(plan.headers))
        if settings.security.download_authorization == "file":
            refusal = _download_refused(image_requests)
            if refusal is not None:
                return refusal
        return self.render(plan, req, image_requests, Recorder(settings.tracker), settings.backends.chunk_size)

    def render(self, plan: DownloadPlan, req: Request, image_requests: ImageRequests, recorder: Recorder,
               chunk_size: int) -> Response | None:
        """The response for ``plan``: headers only, sendfile, or a streamed body."""
        if self.prober is not None:
            self.prober.remember(plan.candidates, plan.size)
        if not plan.candidates:
            LOG.debug("image %s: no location locproxy may read; the upstream serves it", plan.image_id)
            recorder.outcome("upstream", "upstream")
            return None
        if plan.head_only:
            return Response(status=plan.status, headerlist=list(plan.headers), app_iter=[])
        sources = Sources(plan.candidates, self.backends, recorder, image_requests, plan.image_id, plan.size,
                          plan.end)
        first = sources.open_next(plan.start)
        if first is None:
            recorder.outcome(plan.candidates[0].label, "upstream")
            return None
        return Response(status=plan.status, headerlist=list(plan.headers),
                        app_iter=self._body(plan, first, sources, req.environ.get("wsgi.file_wrapper"), chunk_size))

    def _body(self, plan: DownloadPlan, first: Opened, sources: Sources, file_wrapper: object,
              chunk_size: int) -> object:
        candidate, stream = first
        fileobj = stream.fileobj
        if fileobj is not None and file_wrapper is not None and plan.whole and (
                plan.digest is None or self.verified_files.contains(fileobj, plan.digest)):
            # Checked before (or a range, which cannot be): let the server sendfile it.
            LOG.info("image %s: bytes %d-%d sent from %s (sendfile)", plan.image_id, plan.start, plan.end - 1,
                     candidate.label)
            sources.recorder.outcome(candidate.label, "served" if sources.failures == 0 else "fell_back")
            return file_wrapper(fileobj, chunk_size)  # type: ignore[operator]
        on_verified = None
        if fileobj is not None and plan.digest is not None:
            identity, digest = self.verified_files.identity(fileobj), plan.digest
            on_verified = lambda: self.verified_files.add(identity, digest)  # noqa: E731
        return ImageBody(sources, first, plan.start, plan.end, plan.digest, on_verified)


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
