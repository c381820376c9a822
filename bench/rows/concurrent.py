"""Row ``concurrent``: the concurrent set (16 images) downloaded at once,
file first, file repeat and http, against nginx sendfile / proxy_pass on the
same files."""

from __future__ import annotations

from typing import Callable

from bench import images
from bench.context import Context
from bench.images import MiB, human
from bench.measure import alternate, curl_many
from bench.results import Result, throughput
from bench.row import Row, concurrent_images


def measure_concurrent(ctx: Context) -> list[Result]:
    s = ctx.sizes
    files = ctx.concurrent_images()
    total = sum(f.size for f in files) / MiB
    headline = f"{s.concurrent_count} concurrent {human(s.concurrent_size)} downloads, aggregate"

    def many(urls: list[str]) -> Callable[[], float]:
        return lambda: total / curl_many(urls, expect_size=s.concurrent_size)[0]

    nginx_files = many([ctx.web_url(f) for f in files])
    lp_file = many([ctx.lp_url(f"file-{f.name}") for f in files])
    # First (verified) downloads: new mtimes, then all at once.
    first: list[float] = []
    nginx_first: list[float] = []
    mark = ctx.log_mark()
    for _ in range(s.conc_reps):
        images.touch_all(files)
        first.append(lp_file())
        nginx_first.append(nginx_files())
    first_path = ctx.served_by(mark)
    _prime(ctx, lp_file)
    mark = ctx.log_mark()
    results = alternate(s.conc_reps, {"nginx": nginx_files, "locproxy": lp_file})
    repeat_path = ctx.served_by(mark)
    http_results = alternate(s.conc_reps, {"nginx": many([f"{ctx.nginx.proxy_url}/{f.path.name}" for f in files]),
                                           "locproxy": many([ctx.lp_url(f"http-{f.name}") for f in files])})
    return [
        throughput(f"{headline}, file://, repeat", results["locproxy"], results["nginx"], "nginx sendfile", 0.9,
                   [f"served: {repeat_path}"]),
        throughput(f"{headline}, file://, first (sha512 verified)", first, results["nginx"] + nginx_first,
                   "nginx sendfile", 0.9, [f"served: {first_path}"]),
        throughput(f"{headline}, http:// (hashed the first pass, then copies verified before)", http_results["locproxy"], http_results["nginx"],
                   "nginx proxy_pass", 0.9),
    ]


def _prime(ctx: Context, lp_file: Callable[[], float]) -> None:
    """Every worker keeps its own verified-file memory: download the set
    until one whole pass is served by sendfile, at most 8 passes."""
    for _ in range(8):
        mark = ctx.log_mark()
        lp_file()
        served = ctx.served_by(mark)
        if " 0 verified" in served or "unknown" in served:
            break


ROW = Row("concurrent", "nginx sendfile / proxy_pass, the same files", "≥ 0.9 × the peer", measure_concurrent,
          concurrent_images)
