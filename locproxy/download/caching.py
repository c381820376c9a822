"""The download path's side of the site cache (``locproxy.cache``).

For a download the upstream has authorised and planned:

* a **hit** (a committed entry) is sent from local disk: with sendfile when
  it was hashed whole in this process recently, else re-hashed while it is
  served (first use in a process, or ``cache_verify_interval`` passed), a
  mismatch aborting the download and removing the entry;
* a **fill in progress** is followed as it grows (``FollowStream``): one
  backend read per image, however many clients ask at once; if its filler
  dies, the follower resumes from the image's copies and takes the fill
  over;
* otherwise a whole-image download **fills** an entry beside the client's
  body (``Fill`` as the body's sink), hashed whatever ``verify_checksums``
  says, and committed only if it matched.
"""

from __future__ import annotations

from typing import Iterator

from locproxy.cache import COMMITTED, Entry, Fill, FillerGone, Follow, SiteCache, cache_key
from locproxy.download.backends import BackendError
from locproxy.download.backends.file import FileStream
from locproxy.download.plan import CACHE, DownloadPlan
from locproxy.failures import Failure


class FollowStream:
    """A source: the bytes another request is writing into the cache."""

    fileobj = None
    identity = None

    def __init__(self, cache: SiteCache, follow: Follow, start: int, end: int, chunk_size: int) -> None:
        self.cache, self.follow = cache, follow
        self.start, self.end, self.chunk_size = start, end, chunk_size

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.follow.chunks(self.start, self.end, self.chunk_size)
        except FillerGone as gone:
            raise BackendError("cache", f"the cache fill stopped at byte {gone.offset}", Failure.TRUNCATED) from None

    def take_over(self) -> Fill | None:
        """The filler stopped: this download continues its fill (if no one else does)."""
        return self.cache.take_over(self.follow)

    def close(self) -> None:
        self.follow.close()


class EntryCheck:
    """A sink for a cache hit served with hashing: the verdict keeps or
    removes the entry."""

    def __init__(self, cache: SiteCache, key: str) -> None:
        self.cache, self.key = cache, key

    def write(self, offset: int, chunk: bytes) -> None:
        pass

    def finish(self, verified: bool) -> None:
        if verified:
            self.cache.verified(self.key)
        else:
            self.cache.corrupt(self.key)

    def abort(self) -> None:
        pass


def key_of(plan: DownloadPlan) -> str | None:
    return None if plan.image_digest is None else cache_key(plan.image_id, plan.image_digest)


def lookup(cache: SiteCache, plan: DownloadPlan, chunk_size: int) -> tuple[Entry, FileStream] | None:
    """A committed entry for ``plan``, as a source of its span."""
    key = key_of(plan)
    entry = None if key is None else cache.lookup(key, plan.size)
    if entry is None:
        return None
    entry.fileobj.seek(plan.start)
    return entry, FileStream("cache", entry.fileobj, plan.start, plan.end - plan.start, chunk_size)


def fill_or_follow(cache: SiteCache, plan: DownloadPlan, chunk_size: int) -> Fill | FollowStream | str | None:
    """A fill for this whole-image download, or the fill in progress to
    follow (whole or a range); ``COMMITTED`` (look the entry up again) or
    None (not cached)."""
    key = key_of(plan)
    if key is None:
        return None
    started = cache.fill(key, plan.image_id, plan.size) if plan.whole_image else cache.following(
        key, plan.size)
    if isinstance(started, Follow):
        return FollowStream(cache, started, plan.start, plan.end, chunk_size)
    return started


__all__ = ["CACHE", "COMMITTED", "EntryCheck", "FollowStream", "fill_or_follow", "lookup"]
