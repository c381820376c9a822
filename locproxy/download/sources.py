"""Where one download's bytes come from: its candidates in order, then the
upstream's own ``/file``.

Every attempt is reported to the ``Recorder`` (learning, health, metrics),
which never raises; failures are logged one by one for the first few only,
so an image with thousands of broken locations cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator

from locproxy import bodies
from locproxy.download.backends import NOBODY, BackendError, Backends, BackendStream, Caller
from locproxy.download.plan import UPSTREAM, Candidate
from locproxy.failures import Failure
from locproxy.observability import Recorder
from locproxy.upstream import ImageRequests

LOG = logging.getLogger(__package__)  # one logger for the whole download path

Opened = tuple[Candidate, "BackendStream | UpstreamStream"]


class Sources:
    """The candidates of one download, consumed in order as they are tried,
    then the upstream's own ``/file``."""

    #: Failures logged one by one per download; the rest are summed up.
    LOGGED_FAILURES = 3

    def __init__(self, candidates: tuple[Candidate, ...], backends: Backends, recorder: Recorder,
                 image_requests: ImageRequests, image_id: str, size: int, caller: Caller = NOBODY) -> None:
        self.remaining = list(candidates)
        self.caller = caller  # the client's, for copies only it may read (image_requests' environ)
        self.backends = backends
        self.recorder = recorder
        self.image_requests = image_requests
        self.image_id = image_id
        self.size = size
        self.failures = 0
        self.unlogged = 0
        self.upstream_tried = False

    def open_next(self, offset: int, end: int) -> Opened | None:
        """The next candidate that opens for ``[offset, end)``, or None when none is left."""
        tracker, deferred = self.recorder.tracker, set()  # candidates put back once
        try:
            while self.remaining:
                candidate = self.remaining.pop(0)
                if self.remaining and candidate not in deferred and tracker.demoted(candidate.key, candidate.copy):
                    # Went wrong (or another attempt is testing it) since the plan: the others first.
                    deferred.add(candidate)
                    self.remaining.append(candidate)
                    continue
                started = time.monotonic()
                try:
                    with tracker.attempt(candidate.key):
                        stream = self.backends.open(candidate.url, offset, end - offset, self.size, self.caller)
                except BackendError as error:
                    self.failed(candidate, error, offset, before_first_byte=True)
                    continue
                self.recorder.opened(candidate.key, time.monotonic() - started)  # never raises
                return candidate, stream
            return None
        finally:
            self._log_unlogged()

    def resume(self, offset: int, end: int) -> Opened:
        """A source for ``[offset, end)``: a location, else the upstream's
        ``/file`` (once: if that fails too, the download fails). The
        upstream's may start before ``offset`` (``UpstreamStream``)."""
        opened = self.open_next(offset, end)
        if opened is not None:
            return opened
        if self.upstream_tried:
            raise BackendError("all", f"no source could resume at byte {offset}")
        self.upstream_tried = True
        return UPSTREAM, UpstreamStream(self.image_requests, offset, end, self.size)

    def failed(self, candidate: Candidate, error: BackendError, offset: int, before_first_byte: bool = False) -> None:
        self.failures += 1
        if candidate.backend:
            self.recorder.failed(candidate.key, candidate.label, error.kind)
        if self.failures > self.LOGGED_FAILURES:
            self.unlogged += 1
            return
        where = "before the first byte" if before_first_byte else f"at byte {offset}"
        if error.kind is Failure.DENIED:  # the client's answer, not a fault of the copy
            LOG.info("image %s: backend %s refused the client's own token %s: %s; trying the next location",
                     self.image_id, candidate.label, where, error.reason)
            return
        LOG.warning("image %s: backend %s failed %s: %s; trying the next location", self.image_id, candidate.label,
                    where, error.reason)

    def _log_unlogged(self) -> None:
        if self.unlogged:
            LOG.warning("image %s: %d more locations failed (not logged one by one)", self.image_id, self.unlogged)
            self.unlogged = 0


class UpstreamStream:
    """The upstream's own ``/file`` as a last-resort source of ``[offset, end)``.

    Requested as the client (same credentials), so it needs no more
    authority than the client's own download. With a Range where one is
    needed; Glance refuses any Range (400) for stores that cannot read at
    random (rbd, swift, s3, http...): that is its limit, not a refusal, so
    the whole ``/file`` is read instead and ``start`` says where its bytes
    begin (0): the body skips, and checks, what it already sent.
    """

    fileobj = None

    def __init__(self, image_requests: ImageRequests, offset: int, end: int, size: int) -> None:
        self.start, self.end = offset, end
        whole = offset == 0 and end == size
        self.response = image_requests.download(headers=None if whole else {"Range": f"bytes={offset}-{end - 1}"})
        if not whole and self.response.status_code == 400:
            bodies.close_iterable(self.response.app_iter)
            self.start, self.end = 0, size
            self.response = image_requests.download()
        self.length = self.end - self.start
        self.expected_status = 200 if (self.start, self.end) == (0, size) else 206
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        response = self.response
        if response.status_code != self.expected_status or response.content_length != self.length:
            raise BackendError("upstream", f"HTTP {response.status_code} to a resume request", Failure.HTTP_STATUS)
        sent = 0
        try:
            for chunk in response.app_iter:
                chunk = chunk[: self.length - sent]
                sent += len(chunk)
                yield chunk
        except BackendError:
            raise
        except Exception as error:  # whatever the upstream app raised: a broken source
            raise BackendError("upstream", f"ended early at byte {self.start + sent}: {type(error).__name__}",
                               Failure.TRUNCATED) from error
        if sent < self.length:
            raise BackendError("upstream", f"ended early at byte {self.start + sent}", Failure.TRUNCATED)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            bodies.close_iterable(self.response.app_iter)
