"""Where a download's bytes come from: one decision, one tagged value.

``choose_source`` turns the plan, its body policy and what the site cache
answered into exactly one of:

* ``CacheHit``: a committed cache entry;
* ``Following``: a fill another request is writing;
* ``Filling``: a fill this request started (its ``Filler`` runs apart), followed;
* ``Copy``: the first of the image's copies that opened;
* ``Upstream``: none of those; the upstream's own ``/file`` answers the client.

The rest of the download (``serve.py``) only renders that value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from locproxy.cache import Fill, Follow, Hit, SiteCache
from locproxy.download.caching import EntryStream, Filler, FollowStream
from locproxy.download.plan import CACHE, DownloadPlan
from locproxy.download.policy import BodyPolicy, read_span
from locproxy.download.sources import Opened, Sources
from locproxy.fingerprints import Fingerprints


@dataclass(frozen=True)
class CacheHit:
    hit: Hit


@dataclass(frozen=True)
class Following:
    follow: Follow


@dataclass(frozen=True)
class Filling:
    follow: Follow


@dataclass(frozen=True)
class Copy:
    opened: Opened


@dataclass(frozen=True)
class Upstream:
    pass


Source = Union[CacheHit, Following, Filling, Copy, Upstream]


def choose_source(plan: DownloadPlan, policy: BodyPolicy, cached: Hit | Follow | Fill | None,
                  cache: SiteCache | None, sources: Sources, fill_sources: Sources,
                  fingerprints: Fingerprints) -> Source:
    """The source of ``plan``'s body (``cached``: what ``caching.begin`` found)."""
    if isinstance(cached, Hit):
        return CacheHit(cached)
    if isinstance(cached, Follow):
        return Following(cached)
    if isinstance(cached, Fill):
        assert cache is not None
        follow = cache.follow_fill(cached)  # before the filler starts: it may commit at once
        Filler(cached, plan, fill_sources, policy, fingerprints).start()
        if follow is not None:
            return Filling(follow)
    opened = sources.open_next(*read_span(plan, plan.start, policy.aligned))
    return Upstream() if opened is None else Copy(opened)


def opened(source: Source, plan: DownloadPlan, policy: BodyPolicy, chunk_size: int) -> Opened:
    """The first source of the body, for every source but ``Upstream``."""
    if isinstance(source, Copy):
        return source.opened
    start, end = read_span(plan, plan.start, policy.aligned)
    if isinstance(source, CacheHit):
        return CACHE, EntryStream(source.hit, start, end, chunk_size)
    assert isinstance(source, (Following, Filling))
    return CACHE, FollowStream(source.follow, start, end, chunk_size)


__all__ = ["CacheHit", "Copy", "Filling", "Following", "Source", "Upstream", "choose_source", "opened"]
