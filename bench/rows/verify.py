"""Row ``verify``: every byte checked, at wire speed. A first read is
judged against its physical limit, one core's sha512 (measured here, in the
same run); later reads, checked block by block against the image's
fingerprint, against the peers that check nothing: nginx sendfile and
proxy_pass. The block digest's own speed is reported beside them."""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from typing import Callable

import xxhash

from bench import images, measure
from bench.context import Context
from bench.images import MiB, human
from bench.measure import Stat, alternate, curl_many
from bench.results import Result, mib_s, throughput
from bench.row import Row


def digest_limit(digest: Callable[[bytes], object], seconds: float = 1.0) -> float:
    """MiB/s of ``digest`` on one core, over 1 MiB blocks."""
    block = os.urandom(MiB)
    hashed, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        digest(block)
        hashed += len(block)
    return hashed / MiB / (time.perf_counter() - started)


def sha512_stream(block: bytes, hasher: object = hashlib.sha512()) -> None:
    hasher.update(block)  # type: ignore[attr-defined] - one running hash, as a first read keeps


def measure_verify(ctx: Context) -> list[Result]:
    limit = [digest_limit(sha512_stream) for _ in range(3)]
    blocks = [digest_limit(xxhash.xxh3_128_digest) for _ in range(3)]
    image = ctx.image(ctx.sizes.big)
    file_url, http_url = f"file-{image.name}", f"http-{image.name}"
    first_file, first_http = _first(ctx, image, file_url), _first(ctx, image, http_url)
    metrics = ctx.work / f"verify-{os.urandom(3).hex()}.sqlite"
    config = ctx.config.with_options(metrics_file=str(metrics))
    with ctx.start_sidecar("verify", config) as sidecar:
        measure.curl(ctx.lp_url(file_url, sidecar), expect_size=image.size)  # fingerprints the image
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
    return [
        Result(f"hash limit: hashlib sha512 on one core ({os.cpu_count()} cores here)", mib_s(Stat.of(limit)), "—",
               "—", "(the limit of a first read)", "n/a"),
        Result("block digest: xxh3-128 on one core, 1 MiB blocks", mib_s(Stat.of(blocks)), "—", "—",
               "(what checking a block costs)", "n/a"),
        throughput(f"{name}, file://, first read (sha512 beside the transfer, last block held back)", first_file,
                   limit, "one core's sha512", 0.9),
        throughput(f"{name}, http://, first read (sha512 beside the transfer, last block held back)", first_http,
                   limit, "one core's sha512", 0.9),
        throughput(f"{name}, file://, read before: every block checked", repeats["file"], repeats["sendfile"],
                   "nginx sendfile", 0.9, [f"repeats: {repeat_path}"]),
        throughput(f"{name}, file://, read before, after a restart of the sidecar: every block checked",
                   after_restart, repeats["sendfile"], "nginx sendfile", 0.9, [f"after the restart: {restart_path}"]),
        throughput(f"{name}, http://, read before: every block checked", repeats["http"], repeats["proxy_pass"],
                   "nginx proxy_pass", 0.9),
        _concurrent_first(ctx, limit),
        _background(ctx, image),
    ]


def _first(ctx: Context, image: images.ImageFile, image_id: str) -> list[float]:
    """First reads: a fresh sidecar for each, without a metrics_file, so no
    fingerprint of the image is known."""
    speeds = []
    for _ in range(ctx.sizes.reps):
        with ctx.start_sidecar("verify-first", ctx.config) as sidecar:
            speeds.append(measure.curl(ctx.lp_url(image_id, sidecar), expect_size=image.size).mib_s)
    return speeds


def _concurrent_first(ctx: Context, limit: list[float]) -> Result:
    """All the concurrent set at once, none read before (16 first reads, a
    fresh sidecar each time): against the lower of cores × the hash limit and nginx."""
    s = ctx.sizes
    files = ctx.concurrent_images()
    total = sum(f.size for f in files) / MiB

    def many(urls: list[str]) -> Callable[[], float]:
        return lambda: total / curl_many(urls, expect_size=s.concurrent_size)[0]

    nginx = many([ctx.web_url(f) for f in files])
    first, peer = [], []
    for _ in range(s.conc_reps):
        with ctx.start_sidecar("verify-concurrent", ctx.config) as sidecar:
            first.append(many([ctx.lp_url(f"file-{f.name}", sidecar) for f in files])())
        peer.append(nginx())
    ceiling = (os.cpu_count() or 1) * statistics.median(limit)
    use_limit = ceiling < statistics.median(peer)
    name = f"{s.concurrent_count} concurrent {human(s.concurrent_size)} first reads, file://, aggregate"
    return throughput(name, first, [ceiling] if use_limit else peer,
                      "cores × the hash limit" if use_limit else "nginx sendfile", 0.9,
                      [f"the lower of cores × the hash limit ({ceiling:,.0f} MiB/s) and nginx sendfile "
                       f"({statistics.median(peer):,.0f} MiB/s)"])


def _background(ctx: Context, image: images.ImageFile) -> Result:
    """``verify_checksums = background``: first reads of a file copy sent
    with sendfile at once, hashed beside (a fresh sidecar each); against
    Glance's /file when there is a Glance peer, else nginx sendfile."""
    g = ctx.glance.server
    config = ctx.config.with_options(verify_checksums="background")
    first = []
    for _ in range(ctx.sizes.reps):
        with ctx.start_sidecar("background", config) as sidecar:
            first.append(measure.curl(ctx.lp_url(f"file-{image.name}", sidecar), expect_size=image.size).mib_s)
    if g is not None:
        from bench import glance

        glance_id = glance.upload(g, image)
        peer = [ctx.one(f"{g.url}/v2/images/{glance_id}/file", image.size, g.headers())()
                for _ in range(ctx.sizes.reps)]
        peer_name = "Glance /file"
    else:
        peer = [ctx.one(ctx.web_url(image), image.size)() for _ in range(ctx.sizes.reps)]
        peer_name = "nginx sendfile (no Glance peer)"
    return throughput(f"{human(image.size)}, file://, first read, verify_checksums = background", first, peer,
                      peer_name, 0.95)


def _images(sizes: object) -> list[tuple[str, int]]:
    from bench.row import concurrent_images, one_image

    return one_image(lambda s: s.big)(sizes) + concurrent_images(sizes)


ROW = Row("verify", "one core's sha512 (first reads); nginx sendfile / proxy_pass (later reads), Glance /file "
          "(background)", "≥ 0.9 × the hash limit (first reads); ≥ 0.9 × the peers (every block checked)",
          measure_verify, _images, glance=True)
