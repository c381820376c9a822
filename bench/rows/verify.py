"""Row ``verify``: verification at wire speed (digests beside the transfer,
each copy verified once). Judged against the physical limit of a verified
first read, one core's sha512 (measured here, in the same run), and against
the peers for downloads of copies verified before, by any worker and after a
restart of the sidecar."""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from typing import Callable

from bench import images, measure
from bench.context import Context
from bench.images import MiB, human
from bench.measure import Stat, alternate, curl_many
from bench.results import Result, mib_s, throughput
from bench.row import Row


def hash_limit(seconds: float = 1.0) -> float:
    """MiB/s of hashlib sha512 on one core, 4 MiB updates (what a verified read can reach)."""
    block = os.urandom(4 * MiB)
    hasher, hashed, started = hashlib.sha512(), 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        hasher.update(block)
        hashed += len(block)
    return hashed / MiB / (time.perf_counter() - started)


def measure_verify(ctx: Context) -> list[Result]:
    limit = [hash_limit() for _ in range(3)]
    limit_stat = Stat.of(limit)
    image = ctx.image(ctx.sizes.big)
    metrics = ctx.work / f"verify-{os.urandom(3).hex()}.sqlite"
    config = ctx.config.with_options(metrics_file=str(metrics))
    file_url, http_url = f"file-{image.name}", f"http-{image.name}"
    with ctx.start_sidecar("verify", config) as sidecar:
        first_file, first_http = _first(ctx, sidecar, image, file_url), _first(ctx, sidecar, image, http_url)
        for url in (file_url, http_url):  # verified now: every later download of these copies is not hashed
            measure.curl(ctx.lp_url(url, sidecar), expect_size=image.size)
        mark = ctx.log_mark(sidecar)
        repeats = alternate(ctx.sizes.reps, {
            "file": ctx.one(ctx.lp_url(file_url, sidecar), image.size),
            "http": ctx.one(ctx.lp_url(http_url, sidecar), image.size),
            "sendfile": ctx.one(ctx.web_url(image), image.size),
            "proxy_pass": ctx.one(f"{ctx.nginx.proxy_url}/{image.path.name}", image.size),
        })
        repeat_path = ctx.served_by(mark, sidecar)
    with ctx.start_sidecar("verify-restarted", config) as restarted:
        mark = ctx.log_mark(restarted)
        after_restart = [ctx.one(ctx.lp_url(file_url, restarted), image.size)() for _ in range(ctx.sizes.reps)]
        restart_path = ctx.served_by(mark, restarted)
    name = human(image.size)
    limit_name = "one core's sha512"
    lines = [
        Result(f"hash limit: hashlib sha512 on one core ({os.cpu_count()} cores here)", mib_s(limit_stat), "—", "—",
               "(the limit of a verified first read)", "n/a"),
        throughput(f"{name}, file://, first download (sha512 verified beside the transfer)", first_file, limit,
                   limit_name, 0.9),
        throughput(f"{name}, http://, first download (sha512 verified beside the transfer)", first_http, limit,
                   limit_name, 0.9),
        throughput(f"{name}, file://, a copy verified before, any worker", repeats["file"], repeats["sendfile"],
                   "nginx sendfile", 1.0, [f"verified copies (any worker, then after a restart): {repeat_path}"]),
        throughput(f"{name}, file://, a copy verified before, after a restart of the sidecar", after_restart,
                   repeats["sendfile"], "nginx sendfile", 1.0, [f"after the restart: {restart_path}"]),
        throughput(f"{name}, http://, a copy verified before (strong ETag)", repeats["http"], repeats["proxy_pass"],
                   "nginx proxy_pass", 1.0),
        _concurrent_first(ctx, limit),
        _background(ctx, image),
    ]
    return lines


def _first(ctx: Context, sidecar: object, image: images.ImageFile, image_id: str) -> list[float]:
    """First downloads: a new mtime before each (the file's identity and
    nginx's ETag change), so the copy is verified again."""
    speeds = []
    for _ in range(ctx.sizes.reps):
        time.sleep(1.05)  # nginx's ETag and Last-Modified have a resolution of a second
        images.touch(image)
        speeds.append(measure.curl(ctx.lp_url(image_id, sidecar), expect_size=image.size).mib_s)
    return speeds


def _concurrent_first(ctx: Context, limit: list[float]) -> Result:
    """All the concurrent set at once, each file new (16 first downloads):
    against the lower of cores × the hash limit and nginx."""
    s = ctx.sizes
    files = ctx.concurrent_images()
    total = sum(f.size for f in files) / MiB

    def many(urls: list[str]) -> Callable[[], float]:
        return lambda: total / curl_many(urls, expect_size=s.concurrent_size)[0]

    lp, nginx = many([ctx.lp_url(f"file-{f.name}") for f in files]), many([ctx.web_url(f) for f in files])
    first, peer = [], []
    for _ in range(s.conc_reps):
        images.touch_all(files)
        first.append(lp())
        peer.append(nginx())
    ceiling = (os.cpu_count() or 1) * statistics.median(limit)
    use_limit = ceiling < statistics.median(peer)
    name = f"{s.concurrent_count} concurrent {human(s.concurrent_size)} first downloads, file://, aggregate"
    return throughput(name, first, [ceiling] if use_limit else peer,
                      "cores × the hash limit" if use_limit else "nginx sendfile", 0.9,
                      [f"the lower of cores × the hash limit ({ceiling:,.0f} MiB/s) and nginx sendfile "
                       f"({statistics.median(peer):,.0f} MiB/s)"])


def _background(ctx: Context, image: images.ImageFile) -> Result:
    """``verify_checksums = background``: first file downloads sent with
    sendfile at once, hashed beside; against Glance's /file when there is a
    Glance peer, else nginx sendfile."""
    g = ctx.glance.server
    with ctx.start_sidecar("background", ctx.config.with_options(verify_checksums="background")) as sidecar:
        first = _first(ctx, sidecar, image, f"file-{image.name}")
        time.sleep(2)  # the hashes beside finish
        if g is not None:
            from bench import glance

            glance_id = glance.upload(g, image)
            peer = [ctx.one(f"{g.url}/v2/images/{glance_id}/file", image.size, g.headers())()
                    for _ in range(ctx.sizes.reps)]
            peer_name = "Glance /file"
        else:
            peer = [ctx.one(ctx.web_url(image), image.size)() for _ in range(ctx.sizes.reps)]
            peer_name = "nginx sendfile (no Glance peer)"
    return throughput(f"{human(image.size)}, file://, first download, verify_checksums = background", first, peer,
                      peer_name, 0.95)


def _images(sizes: object) -> list[tuple[str, int]]:
    from bench.row import concurrent_images, one_image

    return one_image(lambda s: s.big)(sizes) + concurrent_images(sizes)


ROW = Row("verify", "one core's sha512 (first reads); nginx sendfile / proxy_pass, Glance /file (repeats, background)",
          "≥ 0.9 × the hash limit; ≥ 1.0 × the peers for verified copies", measure_verify, _images, glance=True)
