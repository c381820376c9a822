"""``choose_source``: one tagged value for where a download's bytes come
from (a real site cache in a temporary directory, copies in memory)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from locproxy.cache import SiteCache, cache_key
from locproxy.download.choose import CacheHit, Copy, Filling, Following, Upstream, choose_source
from locproxy.download.policy import body_policy
from locproxy.fingerprints import Fingerprints
from tests.support.download_fakes import DATA, DIGEST, MemoryBackends, fingerprint_of, plan, sources
from tests.support.download_fakes import Copy as MemoryCopy

KEY = cache_key("image", DIGEST)


def choose(cached, cache, copies: dict[str, MemoryCopy]):  # noqa: ANN001, ANN201 - test shorthand
    download = plan(names=tuple(copies))
    backends = MemoryBackends(copies)
    policy = body_policy(download, "on", None)
    return choose_source(download, policy, cached, cache, sources(download, backends), sources(download, backends),
                         Fingerprints())


def test_no_cache_the_first_copy_that_opens() -> None:
    source = choose(None, None, {"a": MemoryCopy(refuse=True), "b": MemoryCopy()})
    assert isinstance(source, Copy) and source.opened[0].label == "b"


def test_no_copy_opens_the_upstream() -> None:
    assert isinstance(choose(None, None, {"a": MemoryCopy(refuse=True)}), Upstream)


def test_a_committed_entry_is_a_hit(tmp_path: Path) -> None:
    cache = SiteCache(str(tmp_path), 1 << 30)
    fill = cache.begin(KEY, "image", len(DATA), DIGEST, whole=True)
    fill.write(DATA)
    assert fill.commit(fingerprint_of(DATA))
    hit = cache.begin(KEY, "image", len(DATA), DIGEST, whole=True)
    source = choose(hit, cache, {"a": MemoryCopy()})
    assert isinstance(source, CacheHit)
    source.hit.fileobj.close()


def test_a_fill_in_progress_is_followed(tmp_path: Path) -> None:
    cache = SiteCache(str(tmp_path), 1 << 30)
    fill = cache.begin(KEY, "image", len(DATA), DIGEST, whole=True)
    follow = cache.begin(KEY, "image", len(DATA), DIGEST, whole=True)
    source = choose(follow, cache, {"a": MemoryCopy()})
    assert isinstance(source, Following)
    source.follow.close()
    fill.abort()


@pytest.mark.parametrize("copies", [{"a": MemoryCopy()}, {"a": MemoryCopy(refuse=True)}],
                         ids=["from-a-copy", "from-the-upstream"])
def test_a_new_fill_is_filled_apart_and_followed(tmp_path: Path, copies: dict) -> None:
    cache = SiteCache(str(tmp_path), 1 << 30)
    fill = cache.begin(KEY, "image", len(DATA), DIGEST, whole=True)
    source = choose(fill, cache, copies)
    assert isinstance(source, Filling)
    source.follow.close()
    deadline = time.monotonic() + 10
    while not cache.list() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [entry["image"] for entry in cache.list()] == ["image"], "the filler committed it"
    assert (tmp_path / "entries" / KEY).read_bytes() == DATA
