"""The download path's side of the site cache (``locproxy.cache``).

For a download the upstream has authorised and planned, ``begin`` asks the
cache (one call, its retries inside) and returns what it found:

* a **hit**: the committed entry, sent from local disk (``EntryStream``),
  every block checked against its fingerprint;
* a **fill in progress**: followed as it grows (``FollowStream``);
* a **new fill**, for a whole-image download: a ``Filler`` thread reads the
  image from its copies (the upstream's own ``/file`` last, read whole)
  at the backend's pace, checked as any body is, into the fill; it commits
  only if the whole image matched. The client that started it follows the
  fill like any other: no client sets the pace for another.

A follower whose fill stops or stalls goes on from the image's copies at
the byte it reached (a ``BackendError`` of its source, as any backend's).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace
from typing import Iterator

from locproxy.cache import Fill, FillerGone, Follow, Hit, SiteCache, cache_key
from locproxy.download.backends import BackendError
from locproxy.download.backends.file import FileStream
from locproxy.download.body import ImageBody
from locproxy.download.digests import file_digest_matches, submit
from locproxy.download.plan import DownloadPlan
from locproxy.download.policy import BodyPolicy
from locproxy.download.sources import Sources
from locproxy.download.verify import Check, Verifier
from locproxy.failures import Failure
from locproxy.fingerprints import Fingerprints

LOG = logging.getLogger(__package__)  # one logger for the whole download path

#: Fills one process runs at once (a soft bound); more downloads go on uncached.
MAX_FILLERS = 8
_scrubbing = threading.Lock()


def begin(cache: SiteCache, plan: DownloadPlan, stall: float) -> Hit | Follow | Fill | None:
    """What the cache holds for ``plan`` (see ``SiteCache.begin``); a new
    fill only for a whole image, and while this process runs fewer than
    ``MAX_FILLERS``."""
    if plan.digest is None:
        return None
    may_fill = plan.whole_image and Filler.running < MAX_FILLERS
    return cache.begin(cache_key(plan.image_id, plan.digest), plan.image_id, plan.size, plan.digest,
                       whole=may_fill, stall=stall)


class EntryStream(FileStream):
    """A committed entry as a source of ``[start, end)``."""

    def __init__(self, hit: Hit, start: int, end: int, chunk_size: int) -> None:
        hit.fileobj.seek(start)
        super().__init__("cache", hit.fileobj, start, end - start, chunk_size)
        self.hit = hit

    def rejected(self) -> None:
        self.hit.rejected()


class FollowStream:
    """A source: the bytes a filler is writing into the cache."""

    fileobj = None

    def __init__(self, follow: Follow, start: int, end: int, chunk_size: int) -> None:
        self.follow, self.start, self.end, self.chunk_size = follow, start, end, chunk_size

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.follow.chunks(self.start, self.end, self.chunk_size)
        except FillerGone as gone:
            raise BackendError("cache", str(gone), Failure.TRUNCATED) from None

    def close(self) -> None:
        self.follow.close()


class Filler(threading.Thread):
    """Fills one entry from the image's copies, apart from any client."""

    running = 0  # fillers of this process now
    _count = threading.Lock()

    def __init__(self, fill: Fill, plan: DownloadPlan, sources: Sources, policy: BodyPolicy,
                 fingerprints: Fingerprints) -> None:
        super().__init__(name=f"locproxy-fill-{plan.image_id}", daemon=True)
        self.fill, self.sources, self.fingerprints = fill, sources, fingerprints
        self.plan = replace(plan, start=0, end=plan.size, status=200)
        # Hashed whatever verify_checksums says: only verified bytes are committed.
        self.check = Check.BLOCKS if policy.fingerprint is not None else Check.DIGEST
        self.fingerprint = policy.fingerprint

    def start(self) -> None:
        with Filler._count:
            Filler.running += 1
        super().start()

    def run(self) -> None:
        fill = self.fill
        try:
            verifier = Verifier(self.check, self.plan.digest, self.fingerprint)
            body = ImageBody(self.plan, self.sources, self.sources.resume(0, self.plan.size), verifier,
                             self.fingerprints, done="read into the site cache")
            for chunk in body:
                fill.write(chunk)
            fingerprint = self.fingerprint or verifier.recorded(self.plan.size)
            if fingerprint is None or not fill.commit(fingerprint):
                fill.abort()
        except Exception as error:  # noqa: BLE001 - whatever stopped it, the fill goes, the followers carry on
            LOG.warning("image %s: cache fill stopped at byte %d: %s", self.plan.image_id, fill.written, error)
            fill.abort()
        finally:
            with Filler._count:
                Filler.running -= 1


def scrub_if_due(cache: SiteCache, hit: Hit) -> None:
    """Re-hash an entry whole against its image's digest on a digest thread
    when ``cache_verify_interval`` has passed: one scrub at a time per
    process; a mismatch removes the entry."""
    digest = cache.scrub_due(hit.key)
    if digest is None or not _scrubbing.acquire(blocking=False):
        return
    fd = os.dup(hit.fileobj.fileno())

    def scrub() -> None:
        try:
            with os.fdopen(fd, "rb", buffering=0) as entry:
                good = file_digest_matches(entry, digest)
            if good:
                cache.scrubbed(hit.key)
            else:
                cache.remove(hit.key, f"its {digest[0]} digest does not match (background scrub)")
        except OSError as error:
            LOG.warning("cache entry %s: scrub failed: %s", hit.key, error)
        finally:
            _scrubbing.release()

    submit(scrub)
