"""``GET /v2/images/{id}/file`` served from the preferred backend.

The order of events, and why:

1. The client's own request for the image's metadata goes to the upstream
   (with the client's credentials). On anything but 200 the client's request
   goes on to the upstream's own ``/file``, which refuses it in its own words:
   no byte of an image leaves locproxy without the upstream's consent.
2. Only active images with a known size are served here; everything else
   (queued → 204, deactivated → 403 or admin download, odd data) is passed on
   to the upstream's own ``/file``, which knows its own rules best.
3. The image's readable locations, in strategy order (``?prefer=`` first),
   are opened in turn until one answers; failures before the first byte are
   logged and skipped. If none opens, the request goes to the upstream's
   ``/file`` unchanged (rbd, cinder, swift... still work).
4. While streaming, a failing source is replaced by the next one *at the
   current offset*, the upstream's own ``/file`` (with a Range) last, so the
   client receives one unbroken body.
5. A whole-image body is hashed as it goes (``os_hash_algo``, else md5
   ``checksum``) and its last chunk is held back until the digest matches: a
   corrupt body is aborted, never completed. Local files that verified once
   (same inode, size and mtime) are afterwards sent with ``wsgi.file_wrapper``
   so the server can use sendfile.

Every attempt is reported to the ``Recorder``: the tracker learns each
backend's speed and health from it (backends the health rule demotes are
tried after all the others), and the Prometheus counters move.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from webob import Request, Response

from locproxy import bodies
from locproxy.backends import BackendError, Backends
from locproxy.config import FilterSettings
from locproxy.observability import Recorder
from locproxy.probing import Prober
from locproxy.ranges import Unsatisfiable, parse_range
from locproxy.responses import json_error
from locproxy.strategies import backend_key, copy_key, is_active
from locproxy.urls import backend_label

LOG = logging.getLogger(__name__)


class ChecksumMismatch(Exception):
    """The delivered image does not match its recorded digest."""


@dataclass(frozen=True)
class Candidate:
    """A location locproxy may read: its url, the tracker keys of its backend
    and of this copy, and the backend's public label."""

    url: str
    key: str
    copy: str
    label: str


class DownloadHandler:
    """Serves ``/file`` for the filter; returns None to let the upstream answer.

    Holds what outlives a settings reload: the backend connection pools (kept
    while the backend options are unchanged) and the verified-file memory.
    """

    def __init__(self, settings: FilterSettings, verified_files: VerifiedFiles | None = None) -> None:
        self.backends = Backends.from_settings(settings)
        self.options = _handler_options(settings)
        self.verified_files = verified_files or VerifiedFiles()
        self.prober = None
        if settings.probe_interval:
            self.prober = Prober(self.backends, settings.tracker, settings.probe_interval, settings.probe_size)

    def for_settings(self, settings: FilterSettings) -> DownloadHandler:
        """This handler if ``settings`` use the same backends, else a new one."""
        if _handler_options(settings) == self.options:
            return self
        if self.prober is not None:
            self.prober.stop()
        return DownloadHandler(settings, self.verified_files)

    def __call__(
        self, req: Request, image_requests: Any, settings: FilterSettings, prefer: Sequence[str] = ()
    ) -> Response | None:
        shown = image_requests.show()
        if shown.status_code != 200:
            # Refused (or failing): the client's own /file request goes to the
            # upstream, which answers it in its own words. No byte from us.
            bodies.close_iterable(shown.app_iter)
            return None
        try:
            image = bodies.json_document(shown, settings.max_rewrite_size)
        except bodies.BodyBroken:
            return json_error(502, "The image API's response ended before it was complete.")
        size = image.get("size") if isinstance(image, dict) else None
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or image.get("status") != "active":
            return None  # not an active image with data, or not understood: the upstream decides
        if settings.download_authorization == "file":
            refusal = _download_refused(image_requests)
            if refusal is not None:
                return refusal
        try:
            span = parse_range(req.headers.get("Range"), size)
        except Unsatisfiable as error:
            return json_error(416, str(error), {"Content-Range": f"bytes */{size}"})
        start, end = span or (0, size)
        recorder = Recorder(settings.tracker)
        candidates = self.candidates(image, settings, prefer)
        if self.prober is not None:
            self.prober.remember(candidates, size)
        if not candidates:
            LOG.debug("image %s: no location locproxy may read; the upstream serves it", image.get("id"))
            recorder.outcome("upstream", "upstream")
            return None
        status = 206 if span else 200
        headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(end - start)),
                   ("Accept-Ranges", "bytes")]
        if span:
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
        elif image.get("checksum"):
            headers.append(("Content-MD5", str(image["checksum"])))
        if req.method == "HEAD":
            return Response(status=status, headerlist=headers, app_iter=[])

        image_id = str(image.get("id"))
        sources = Sources(candidates, self.backends, recorder, image_requests, image_id, size, end)
        first = sources.open_next(start)
        if first is None:
            recorder.outcome(candidates[0].label, "upstream")
            return None
        candidate, stream = first
        digest = None if span or not settings.verify_checksums else expected_digest(image)
        file_wrapper = req.environ.get("wsgi.file_wrapper")
        if (
            stream.fileobj is not None
            and file_wrapper is not None
            and end == size  # a wrapper may send to the end of the file, whatever Content-Length says
            and (digest is None or self.verified_files.contains(stream.fileobj, digest))
        ):
            # Checked before (or a range, which cannot be): let the server sendfile it.
            LOG.info("image %s: bytes %d-%d sent from %s (sendfile)", image_id, start, end - 1, candidate.label)
            recorder.outcome(candidate.label, "served" if sources.failures == 0 else "fell_back")
            return Response(status=status, headerlist=headers,
                            app_iter=file_wrapper(stream.fileobj, settings.chunk_size))
        verified = None
        if stream.fileobj is not None and digest is not None:
            identity = self.verified_files.identity(stream.fileobj)
            verified = lambda: self.verified_files.add(identity, digest)  # noqa: E731
        body = ImageBody(sources, first, start, end, digest, verified)
        return Response(status=status, headerlist=headers, app_iter=body)

    def candidates(self, image: dict, settings: FilterSettings, prefer: Sequence[str]) -> list[Candidate]:
        """The image's active locations locproxy may read, best first; those
        the health rule demotes after all the others."""
        locations = image.get("locations")
        if isinstance(locations, list) and all(isinstance(item, dict) for item in locations):
            ordered = [item for item in settings.selector.order(locations, prefer) if is_active(item)]
        else:  # the upstream shows only direct_url
            ordered = [{"url": image.get("direct_url")}]
        candidates = [
            Candidate(location["url"], backend_key(location), copy_key(location), backend_label(location["url"]))
            for location in ordered
            if isinstance(location.get("url"), str) and self.backends.readable(location["url"])
        ]
        tracker = settings.tracker
        return sorted(candidates, key=lambda candidate: tracker.demoted(candidate.key, candidate.copy))


class Sources:
    """The candidates of one download, consumed in order as they are tried,
    then the upstream's own ``/file``."""

    #: Failures logged one by one per download; the rest are summed up, so an
    #: image with thousands of broken locations cannot flood the log.
    LOGGED_FAILURES = 3

    def __init__(self, candidates: list[Candidate], backends: Backends, recorder: Recorder,
                 image_requests: Any, image_id: str, size: int, end: int) -> None:
        self.remaining = list(candidates)
        self.backends = backends
        self.recorder = recorder
        self.image_requests = image_requests
        self.image_id = image_id
        self.size = size
        self.end = end
        self.failures = 0
        self.unlogged = 0
        self.upstream_tried = False

    def open_next(self, offset: int) -> tuple[Candidate, Any] | None:
        """The next candidate that opens at ``offset``, or None when none is left."""
        try:
            while self.remaining:
                candidate = self.remaining.pop(0)
                started = time.monotonic()
                try:
                    stream = self.backends.open(candidate.url, offset, self.end - offset, self.size)
                except BackendError as error:
                    self.failed(candidate, error.reason, offset, before_first_byte=True)
                    continue
                self.recorder.opened(candidate.key, time.monotonic() - started)  # never raises
                return candidate, stream
            return None
        finally:
            self._log_unlogged()

    def resume(self, offset: int) -> tuple[Candidate, Any]:
        """A source for the rest from ``offset``: a location, else the
        upstream's ``/file`` (once: if that fails too, the download fails)."""
        opened = self.open_next(offset)
        if opened is not None:
            return opened
        if self.upstream_tried:
            raise BackendError("all", f"no source could resume at byte {offset}")
        self.upstream_tried = True
        return UPSTREAM, UpstreamStream(self.image_requests, offset, self.end)

    def failed(self, candidate: Candidate, reason: str, offset: int, before_first_byte: bool = False) -> None:
        self.failures += 1
        if candidate is not UPSTREAM:
            self.recorder.failed(candidate.key, candidate.label, reason)
        if self.failures > self.LOGGED_FAILURES:
            self.unlogged += 1
            return
        LOG.warning(
            "image %s: backend %s failed %s: %s; trying the next location", self.image_id, candidate.label,
            "before the first byte" if before_first_byte else f"at byte {offset}", reason,
        )

    def _log_unlogged(self) -> None:
        if self.unlogged:
            LOG.warning("image %s: %d more locations failed (not logged one by one)", self.image_id, self.unlogged)
            self.unlogged = 0


UPSTREAM = Candidate("", "upstream", "upstream", "upstream")


class ImageBody:
    """The WSGI body of one download: streams, resumes, verifies.

    When ``digest`` is given the final chunk is held back until the whole body
    matches it; a mismatch raises, so the server aborts the connection and the
    client sees a truncated body rather than a bad one.
    """

    def __init__(self, sources: Sources, first: tuple[Candidate, Any], start: int, end: int,
                 digest: tuple[str, str] | None, on_verified: Any) -> None:
        self.sources = sources
        self.current = first
        self.start = start
        self.offset = start
        self.end = end
        self.digest = digest
        self.on_verified = on_verified

    def __iter__(self) -> Iterator[bytes]:
        sources, digest = self.sources, self.digest
        hasher = hashlib.new(digest[0]) if digest else None
        held = b""
        used: list[Candidate] = []
        first_label = self.current[0].label
        failures_before = sources.failures
        try:
            while True:
                candidate, stream = self.current
                used.append(candidate)
                segment_start, started = self.offset, time.monotonic()
                try:
                    for chunk in stream:
                        self.offset += len(chunk)
                        if hasher is None:
                            yield chunk
                            continue
                        hasher.update(chunk)
                        if held:
                            yield held
                        held = chunk
                except BackendError as error:
                    sources.failed(candidate, error.reason, self.offset)
                finally:
                    stream.close()
                if self.offset >= self.end:
                    break
                self.current = sources.resume(self.offset)
            if hasher is not None and digest is not None and not digest_matches(hasher, digest[1]):
                for source in used:
                    if source is not UPSTREAM:
                        sources.recorder.corrupt(source.key, source.copy, source.label, sources.image_id)
                sources.recorder.outcome(first_label, "checksum_mismatch")
                LOG.error("image %s: %s digest mismatch from %s; aborting the download",
                          sources.image_id, digest[0], ", ".join(c.label for c in used))
                raise ChecksumMismatch(f"image {sources.image_id}: {digest[0]} mismatch")
            # Learnt only now: bytes that did not verify teach nothing good.
            if candidate is not UPSTREAM:
                sources.recorder.transferred(candidate.key, candidate.copy, candidate.label,
                                             self.offset - segment_start, time.monotonic() - started)
            if len(used) == 1 and hasher is not None and self.on_verified is not None:
                self.on_verified()  # the first source alone produced a good body
            if held:
                yield held
        except BackendError:  # the upstream's /file failed too: abort
            sources.recorder.outcome(first_label, "failed")
            raise
        outcome = "resumed" if len(used) > 1 else "served" if failures_before == 0 else "fell_back"
        sources.recorder.outcome(first_label, outcome)
        LOG.info("image %s: bytes %d-%d sent from %s%s", sources.image_id, self.start, self.end - 1,
                 ", ".join(candidate.label for candidate in used), f" ({digest[0]} verified)" if digest else "")

    def close(self) -> None:
        self.current[1].close()


class UpstreamStream:
    """The upstream's own ``/file`` as a last-resort source, from ``offset``.

    Requested as the client (same credentials), with a Range, so it needs no
    more authority than the client's own download.
    """

    fileobj = None

    def __init__(self, image_requests: Any, offset: int, end: int) -> None:
        self.response = image_requests.download(headers={"Range": f"bytes={offset}-{end - 1}"})
        self.length = end - offset
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        if self.response.status_code != 206 or self.response.content_length != self.length:
            raise BackendError("upstream", f"HTTP {self.response.status_code} to a resume Range")
        sent = 0
        try:
            for chunk in self.response.app_iter:
                chunk = chunk[: self.length - sent]
                sent += len(chunk)
                yield chunk
        except BackendError:
            raise
        except Exception as error:  # whatever the upstream app raised: a broken source
            raise BackendError("upstream", f"ended early at byte {sent}: {type(error).__name__}") from error
        if sent < self.length:
            raise BackendError("upstream", f"ended early at byte {sent}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            bodies.close_iterable(self.response.app_iter)


def _download_refused(image_requests: Any) -> Response | None:
    """The upstream's refusal of this client's download, or None if it
    allows it: its own ``/file`` is asked for the first byte, as the client,
    so download policies stricter than viewing (Glance's ``download_image``)
    apply too."""
    probe = image_requests.download(headers={"Range": "bytes=0-0"})
    if probe.status_code in (200, 206):
        bodies.close_iterable(probe.app_iter)  # unread: a 200 may be the whole image
        return None
    return probe


def expected_digest(image: dict) -> tuple[str, str] | None:
    """``(hashlib name, hex)``: the image's ``os_hash`` if usable, else md5 ``checksum``."""
    algorithm, value = image.get("os_hash_algo"), image.get("os_hash_value")
    if (isinstance(algorithm, str) and isinstance(value, str) and algorithm.lower() in hashlib.algorithms_available
            and value and len(value) % 2 == 0):
        return algorithm.lower(), value
    checksum = image.get("checksum")
    if isinstance(checksum, str) and checksum:
        return "md5", checksum
    return None


def digest_matches(hasher: Any, expected: str) -> bool:
    """Whether the hash equals ``expected`` (hex). Extendable-output hashes
    (``shake_128``, ``shake_256``) are read to the expected length."""
    if hasher.name.startswith("shake_"):
        return hasher.hexdigest(len(expected) // 2) == expected.lower()
    return hasher.hexdigest() == expected.lower()


class VerifiedFiles:
    """Local files whose content matched their image digest, by identity.

    A file is the same file while its device, inode, size, modification and
    change times are (a copy rewritten in place with its mtime restored has a
    new ctime: utime() cannot set that). Keeps the most recent ``capacity``
    entries, per process.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, tuple[str, str]] = OrderedDict()

    @staticmethod
    def identity(fileobj: Any) -> tuple:
        stat = os.fstat(fileobj.fileno())
        return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)

    def contains(self, fileobj: Any, digest: tuple[str, str]) -> bool:
        with self._lock:
            return self._entries.get(self.identity(fileobj)) == digest

    def add(self, identity: tuple, digest: tuple[str, str]) -> None:
        with self._lock:
            self._entries[identity] = digest
            self._entries.move_to_end(identity)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


def _handler_options(settings: FilterSettings) -> tuple:
    """What a DownloadHandler is built from: a change means a new handler."""
    return (
        settings.file_roots,
        settings.allowed_hosts,
        settings.chunk_size,
        settings.backend_connect_timeout,
        settings.backend_read_timeout,
        settings.backend_pool_maxsize,
        settings.backend_ca_file,
        settings.backend_first_byte_timeout,
        settings.backend_min_rate,
        settings.backend_rate_window,
        settings.probe_interval,
        settings.probe_size,
        id(settings.tracker),
    )
