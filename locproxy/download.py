"""``GET /v2/images/{id}/file`` served from the preferred backend.

The order of events, and why:

1. The client's own request for the image's metadata goes to the upstream
   (with the client's credentials). Anything but 200 goes back to the client
   as it is: no byte of an image leaves without the upstream's consent.
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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterator, Sequence

from webob import Request, Response

from locproxy.backends import BackendError, Backends, BackendStream
from locproxy.config import FilterSettings
from locproxy.ranges import Unsatisfiable, parse_range
from locproxy.responses import json_error
from locproxy.strategies import is_active

LOG = logging.getLogger(__name__)


class ChecksumMismatch(Exception):
    """The delivered image does not match its recorded digest."""


class DownloadHandler:
    """Serves ``/file`` for the filter; returns None to let the upstream answer.

    Holds what outlives a settings reload: the backend connection pools (kept
    while the backend options are unchanged) and the verified-file memory.
    """

    def __init__(self, settings: FilterSettings, verified_files: VerifiedFiles | None = None) -> None:
        self.backends = Backends.from_settings(settings)
        self.backend_options = _backend_options(settings)
        self.verified_files = verified_files or VerifiedFiles()

    def for_settings(self, settings: FilterSettings) -> DownloadHandler:
        """This handler if ``settings`` use the same backends, else a new one."""
        if _backend_options(settings) == self.backend_options:
            return self
        return DownloadHandler(settings, self.verified_files)

    def __call__(
        self, req: Request, image_requests: Any, settings: FilterSettings, prefer: Sequence[str] = ()
    ) -> Response | None:
        shown = image_requests.show()
        if shown.status_code != 200:
            return shown  # the upstream's own refusal, as it is
        image = _json_object(shown.body)
        size = image.get("size") if image else None
        if not image or image.get("status") != "active" or not isinstance(size, int) or size <= 0:
            return None
        try:
            span = parse_range(req.headers.get("Range"), size)
        except Unsatisfiable as error:
            return json_error(416, str(error), {"Content-Range": f"bytes */{size}"})
        start, end = span or (0, size)
        urls = self.candidate_urls(image, settings, prefer)
        if not urls:
            LOG.debug("image %s: no location locproxy may read; the upstream serves it", image.get("id"))
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

        digest = None if span or not settings.verify_checksums else expected_digest(image)
        opened = self._open_first(urls, start, end - start, size)
        if opened is None:
            return None
        stream, remaining = opened
        file_wrapper = req.environ.get("wsgi.file_wrapper")
        if (
            stream.fileobj is not None
            and file_wrapper is not None
            and end == size  # a wrapper may send to the end of the file, whatever Content-Length says
            and (digest is None or self.verified_files.contains(stream.fileobj, digest))
        ):
            # Checked before (or a range, which cannot be): let the server sendfile it.
            LOG.info("image %s: bytes %d-%d sent from %s (sendfile)", image.get("id"), start, end - 1, stream.label)
            return Response(status=status, headerlist=headers, app_iter=file_wrapper(stream.fileobj, settings.chunk_size))
        on_verified = None
        if stream.fileobj is not None and digest is not None:
            identity = self.verified_files.identity(stream.fileobj)
            on_verified = lambda: self.verified_files.add(identity, digest)  # noqa: E731
        body = ImageBody(
            first=stream,
            reopen=lambda offset: self._resume(remaining, image_requests, offset, end, size),
            start=start,
            end=end,
            digest=digest,
            on_verified=on_verified,
            image_id=str(image.get("id")),
        )
        return Response(status=status, headerlist=headers, app_iter=body)

    def candidate_urls(self, image: dict, settings: FilterSettings, prefer: Sequence[str]) -> list[str]:
        """Urls of the image's active, readable locations, best first."""
        locations = image.get("locations")
        if isinstance(locations, list) and all(isinstance(item, dict) for item in locations):
            ordered = settings.selector.order(locations, prefer)
            urls = [location.get("url") for location in ordered if is_active(location)]
        else:  # the upstream shows only direct_url
            urls = [image.get("direct_url")]
        return [url for url in urls if isinstance(url, str) and self.backends.readable(url)]

    def _open_first(self, urls: list[str], start: int, length: int, size: int) -> tuple[BackendStream, list[str]] | None:
        """The first location that opens, and the ones after it."""
        for position, url in enumerate(urls):
            try:
                return self.backends.open(url, start, length, size), urls[position + 1:]
            except BackendError as error:
                LOG.warning("backend %s failed before the first byte: %s; trying the next", error.label, error.reason)
        return None

    def _resume(self, urls: list[str], image_requests: Any, offset: int, end: int, size: int) -> Iterator[Any]:
        """Sources able to continue at ``offset``: the remaining locations,
        then the upstream's own ``/file``."""
        while urls:
            url = urls.pop(0)
            try:
                yield self.backends.open(url, offset, end - offset, size)
            except BackendError as error:
                LOG.warning("backend %s failed to resume at byte %d: %s", error.label, offset, error.reason)
        yield UpstreamStream(image_requests, offset, end)


class ImageBody:
    """The WSGI body of one download: streams, resumes, verifies.

    ``reopen(offset)`` yields replacement sources for a source that failed
    mid-stream. When ``digest`` is given the final chunk is held back until
    the whole body matches it; a mismatch raises, so the server aborts the
    connection and the client sees a truncated body rather than a bad one.
    """

    def __init__(
        self,
        first: Any,
        reopen: Callable[[int], Iterator[Any]],
        start: int,
        end: int,
        digest: tuple[str, str] | None,
        on_verified: Callable[[], None] | None,
        image_id: str,
    ) -> None:
        self.source = first
        self.reopen = reopen
        self.start = start
        self.offset = start
        self.end = end
        self.digest = digest
        self.on_verified = on_verified
        self.image_id = image_id
        self._replacements: Iterator[Any] | None = None

    def __iter__(self) -> Iterator[bytes]:
        hasher = hashlib.new(self.digest[0]) if self.digest else None
        held = b""
        labels = []
        while self.offset < self.end:
            source = self.source
            labels.append(source.label)
            try:
                for chunk in source:
                    self.offset += len(chunk)
                    if hasher is None:
                        yield chunk
                        continue
                    hasher.update(chunk)
                    if held:
                        yield held
                    held = chunk
            except BackendError as error:
                LOG.warning(
                    "image %s: backend %s failed at byte %d: %s; resuming from the next location",
                    self.image_id, error.label, self.offset, error.reason,
                )
            finally:
                source.close()
            if self.offset < self.end:
                self.source = self._next_source()
        if hasher is not None and self.digest is not None:
            algorithm, expected = self.digest
            if hasher.hexdigest() != expected.lower():
                LOG.error(
                    "image %s: %s digest mismatch from %s; aborting the download",
                    self.image_id, algorithm, ", ".join(labels),
                )
                raise ChecksumMismatch(f"image {self.image_id}: {algorithm} mismatch")
            if len(labels) == 1 and self.on_verified is not None:
                self.on_verified()  # the first source alone produced a good body
            yield held
        LOG.info(
            "image %s: bytes %d-%d sent from %s%s", self.image_id, self.start, self.end - 1,
            ", ".join(labels), f" ({self.digest[0]} verified)" if self.digest else "",
        )

    def _next_source(self) -> Any:
        if self._replacements is None:
            self._replacements = self.reopen(self.offset)
        try:
            return next(self._replacements)
        except StopIteration:
            raise BackendError("all", f"no source could resume at byte {self.offset}") from None

    def close(self) -> None:
        self.source.close()


class UpstreamStream:
    """The upstream's own ``/file`` as a last-resort source, from ``offset``.

    Requested as the client (same credentials), with a Range, so it needs no
    more authority than the client's own download.
    """

    label = "upstream"
    fileobj = None

    def __init__(self, image_requests: Any, offset: int, end: int) -> None:
        self.response = image_requests.download(headers={"Range": f"bytes={offset}-{end - 1}"})
        self.length = end - offset
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        if self.response.status_code != 206 or self.response.content_length != self.length:
            raise BackendError(self.label, f"HTTP {self.response.status_code} to a resume Range")
        sent = 0
        for chunk in self.response.app_iter:
            chunk = chunk[: self.length - sent]
            sent += len(chunk)
            yield chunk
        if sent < self.length:
            raise BackendError(self.label, f"ended early at byte {sent}")

    def close(self) -> None:
        close = getattr(self.response.app_iter, "close", None)
        if close is not None and not self._closed:
            self._closed = True
            close()


def expected_digest(image: dict) -> tuple[str, str] | None:
    """``(hashlib name, hex)``: the image's ``os_hash`` if usable, else md5 ``checksum``."""
    algorithm, value = image.get("os_hash_algo"), image.get("os_hash_value")
    if isinstance(algorithm, str) and isinstance(value, str) and algorithm.lower() in hashlib.algorithms_available:
        return algorithm.lower(), value
    checksum = image.get("checksum")
    if isinstance(checksum, str) and checksum:
        return "md5", checksum
    return None


class VerifiedFiles:
    """Local files whose content matched their image digest, by identity.

    A file is the same file while its device, inode, size and modification
    time are; Glance's file store never rewrites image files in place. Keeps
    the most recent ``capacity`` entries, per process.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, tuple[str, str]] = OrderedDict()

    @staticmethod
    def identity(fileobj: Any) -> tuple:
        stat = os.fstat(fileobj.fileno())
        return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def contains(self, fileobj: Any, digest: tuple[str, str]) -> bool:
        with self._lock:
            return self._entries.get(self.identity(fileobj)) == digest

    def add(self, identity: tuple, digest: tuple[str, str]) -> None:
        with self._lock:
            self._entries[identity] = digest
            self._entries.move_to_end(identity)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


def _backend_options(settings: FilterSettings) -> tuple:
    return (
        settings.file_roots,
        settings.allowed_hosts,
        settings.chunk_size,
        settings.backend_connect_timeout,
        settings.backend_read_timeout,
        settings.backend_pool_maxsize,
    )


def _json_object(body: bytes) -> dict | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None

