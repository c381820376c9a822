"""Site-cache hits stay authorised per request behind Keystone: with the
image in locproxy's site cache (filled from the strategy's copy, the web
copy) and its locations remembered, a request with no token gets 401, a
revoked token 401, another project's member Glance's 404, with no byte of
the image and no locations read on that member's behalf. Both deployments,
both modes (images and fronts as in ``tests.support.keystone.fronts``)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from typing import Iterator

import pytest

from tests.support.keystone.fronts import KINDS_AND_MODES, Front, filter_options, locations_reads, open_front, web_reads
from tests.support.keystone.lab import KeystoneGlance, KeystoneLab, keystone_glance
from tests.support.keystone.seed import SeededImage, seed_image

pytestmark = pytest.mark.integration

HITS = "locproxy_cache_requests_total"


@pytest.fixture(scope="module")
def glance(keystone_lab: KeystoneLab) -> Iterator[KeystoneGlance]:
    with keystone_glance(keystone_lab, overrides={"fs1": {"weight": "100"}}) as server:
        yield server


@pytest.fixture(scope="module")
def images(glance: KeystoneGlance) -> dict[str, SeededImage]:
    return {"-".join(combo): seed_image(glance, os.urandom(1_200_000 + i), owner="alice", name=f"lp-ksc-{i}")
            for i, combo in enumerate(KINDS_AND_MODES)}


@pytest.fixture(scope="module", params=[pytest.param(combo, id="-".join(combo)) for combo in KINDS_AND_MODES])
def cached_front(request: pytest.FixtureRequest, glance: KeystoneGlance, keystone_lab: KeystoneLab) -> Iterator[Front]:
    kind, mode = request.param
    with tempfile.TemporaryDirectory(prefix="locproxy-ks-cache-") as tmp:
        os.mkdir(f"{tmp}/cache")
        options = filter_options(glance, keystone_lab, mode, cache_dir=f"{tmp}/cache", cache_max_size="64M",
                                 metrics_file=f"{tmp}/metrics.sqlite")
        with open_front(kind, glance, options) as front:
            yield front


def test_refusals_hold_for_cache_hits(cached_front: Front, glance: KeystoneGlance, keystone_lab: KeystoneLab,
                                      images: dict[str, SeededImage]) -> None:
    front, image = cached_front, images[f"{cached_front.kind}-{cached_front.mode}"]
    path = f"/v2/images/{image.id}/file"
    web = web_reads(glance, image)
    for _ in range(2):  # a fill (from the strategy's copy), then a hit
        got = front.get(path, keystone_lab.token("alice"))
        assert got.status == 200 and hashlib.sha512(got.body).hexdigest() == image.sha512, got.describe()
    filled = web_reads(glance, image)
    assert filled > web, f"the web copy (the strategy's choice) was not read\n{front.log()[-3000:]}"
    hits = _cache_sends(front, image, at_least=1)  # the first follows its fill, the second is a hit
    assert hits >= 1, f"the second download was not served from the cache\n{front.log()[-3000:]}"
    metric_hits = front.metric(HITS, result="hit") if front.observable else None
    assert metric_hits is None or metric_hits >= 1, "the second download was not a cache hit"
    reads = locations_reads(glance)
    revoked = keystone_lab.fresh_token("alice")
    keystone_lab.revoke(revoked)
    for token, status in ((None, 401), (revoked, 401), (keystone_lab.token("bob"), 404)):
        for asked in (path, f"/v2/images/{image.id}"):
            got = front.get(asked, token)
            assert got.status == status, got.describe()
            assert image.data[:64] not in got.body
    assert locations_reads(glance) == reads, "locations were read on behalf of a refused request"
    assert _cache_sends(front, image) == hits, "a refused request was answered from the cache"
    assert metric_hits is None or front.metric(HITS, result="hit") == metric_hits
    assert web_reads(glance, image) == filled
    again = front.get(path, keystone_lab.token("alice"))
    assert again.status == 200 and again.body == image.data
    assert _cache_sends(front, image, at_least=hits + 1) == hits + 1
    assert metric_hits is None or front.metric(HITS, result="hit") == metric_hits + 1


def _cache_sends(front: Front, image: SeededImage, at_least: int = 0) -> int:
    """Downloads of ``image`` served from the site cache (locproxy's INFO log
    lines, written just after the last byte: waited for up to 5 s)."""
    pattern = re.compile(rf"image {re.escape(image.id)}: bytes \d+-\d+ .*?from cache")
    deadline = time.monotonic() + 5
    while len(found := pattern.findall(front.log())) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(found)
