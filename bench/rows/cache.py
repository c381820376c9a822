"""Row ``cache``: the site cache. Many cold downloads of one image read its
backend once (bytes counted in the backend's access log, every client's
bytes checked); hits, one stream and 16 at once, against nginx sendfile of
the same file; a cold download with the cache on against the same with it
off; a hit for an image only the upstream can read."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Callable

from bench import measure
from bench.context import Context
from bench.images import ImageFile, MiB, human
from bench.measure import alternate, curl_many
from bench.results import Result, throughput
from bench.row import Row, one_image

COLD_CLIENTS = 16


def measure_cache(ctx: Context) -> list[Result]:
    image = ctx.image(ctx.sizes.big)
    cache_dir = ctx.work / f"cache-{os.urandom(3).hex()}"
    cache_dir.mkdir()
    config = ctx.config.with_options(cache_dir=str(cache_dir), cache_max_size=str(4 * image.size))
    name = human(image.size)
    with ctx.start_sidecar("cache", config) as sidecar:
        cold = _cold(ctx, sidecar, image)
        for image_id in (f"http-{image.name}", f"rbd-{image.name}"):
            measure.curl(ctx.lp_url(image_id, sidecar), expect_size=image.size)  # filled
        mark = ctx.log_mark(sidecar)
        one = alternate(ctx.sizes.reps, {
            "hit": ctx.one(ctx.lp_url(f"http-{image.name}", sidecar), image.size),
            "upstream-only": ctx.one(ctx.lp_url(f"rbd-{image.name}", sidecar), image.size),
            "sendfile": ctx.one(ctx.web_url(image), image.size),
        })
        hit_path = ctx.served_by(mark, sidecar)
        many = alternate(ctx.sizes.conc_reps, {
            "hits": _many(ctx, [ctx.lp_url(f"http-{image.name}", sidecar)] * COLD_CLIENTS, image),
            "sendfile": _many(ctx, [ctx.web_url(image)] * COLD_CLIENTS, image),
        })
    cold_on = _cold_downloads(ctx, image, cached=True)
    cold_off = _cold_downloads(ctx, image, cached=False)
    return [
        cold,
        throughput(f"{name}, cache hit, one stream, every block checked", one["hit"], one["sendfile"],
                   "nginx sendfile", 0.9, [f"served: {hit_path}"]),
        throughput(f"{COLD_CLIENTS} concurrent cache hits of one {name} image, aggregate", many["hits"],
                   many["sendfile"], "nginx sendfile", 0.9),
        throughput(f"{name}, cold download with the cache on (a fill apart, followed)", cold_on, cold_off,
                   "the same with the cache off", 0.9),
        throughput(f"{name}, cache hit for an image only the upstream can read (rbd-like)", one["upstream-only"],
                   one["sendfile"], "nginx sendfile", 0.9),
    ]


def _cold(ctx: Context, sidecar: object, image: ImageFile) -> Result:
    """16 clients at once, nothing cached: how many bytes the backend sent, and
    whether every client got the image's exact bytes (each body hashed)."""
    before = ctx.nginx.bytes_sent(image.path.name)
    url = ctx.lp_url(f"http-{image.name}", sidecar)
    started = time.perf_counter()
    digests = _sha512_many([url] * COLD_CLIENTS)
    seconds = time.perf_counter() - started
    sent = ctx.nginx.bytes_sent(image.path.name) - before
    exact = sum(digest == image.sha512 for digest in digests)
    once = sent == image.size and exact == COLD_CLIENTS
    return Result(f"{COLD_CLIENTS} concurrent cold downloads of one {human(image.size)} image",
                  f"backend sent {sent / image.size:.2f} × the image; {exact}/{COLD_CLIENTS} exact",
                  "—", "—", "the backend serves it exactly once; every client exact",
                  "yes" if once else "**no**",
                  [f"cold downloads with the cache: {COLD_CLIENTS} clients in {seconds:.1f} s "
                   "(including hashing each body to check it)"])


def _sha512_many(urls: list[str]) -> list[str]:
    """Each URL downloaded at once by curl, its body hashed by sha512sum."""
    processes = [subprocess.Popen(f"curl -sS --max-time 600 '{url}' | sha512sum", shell=True, stdout=subprocess.PIPE,
                                  text=True) for url in urls]
    return [process.communicate(timeout=900)[0].split(" ", 1)[0] for process in processes]


def _many(ctx: Context, urls: list[str], image: ImageFile) -> Callable[[], float]:
    total = len(urls) * image.size / MiB
    return lambda: total / curl_many(urls, expect_size=image.size)[0]


def _cold_downloads(ctx: Context, image: ImageFile, cached: bool) -> list[float]:
    """First reads of the file copy: a fresh sidecar each time (no
    fingerprint known), with a fresh cache directory, or none."""
    speeds = []
    for _ in range(ctx.sizes.reps):
        config = ctx.config
        if cached:
            cache_dir = ctx.work / f"cache-cold-{os.urandom(3).hex()}"
            cache_dir.mkdir()
            config = config.with_options(cache_dir=str(cache_dir), cache_max_size=str(2 * image.size))
        with ctx.start_sidecar("cold", config) as sidecar:
            speeds.append(measure.curl(ctx.lp_url(f"file-{image.name}", sidecar), expect_size=image.size).mib_s)
    return speeds


ROW = Row("cache", "nginx sendfile of the same file; the same download without the cache",
          "backend read once; hits (every block checked) ≥ 0.9 × nginx sendfile; cold ≥ 0.9 × cache off",
          measure_cache, one_image(lambda s: s.big))
