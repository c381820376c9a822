"""``--sweep``: locproxy settings side by side (chunk sizes on single
streams, gunicorn workers × threads on the concurrent set), one sidecar per
configuration, run one after another; nginx first for scale."""

from __future__ import annotations

from typing import Callable

from bench import images, measure
from bench.context import Context
from bench.images import ImageFile, MiB, human
from bench.measure import Stat
from bench.progress import log
from bench.results import mib_s
from bench.row import concurrent_images, one_image
from bench.settings import SidecarConfig, Sizes

CONFIGS = [SidecarConfig(1, 16, "gthread", chunk) for chunk in ("64K", "256K", "1M", "4M")]
CONFIGS += [SidecarConfig(w, t, "gthread", "1M") for w, t in ((2, 8), (2, 16), (4, 8))]


def image_specs(sizes: Sizes) -> list[tuple[str, int]]:
    return one_image(lambda s: s.big)(sizes) + concurrent_images(sizes)


def sweep(ctx: Context) -> list[list[str]]:
    """The table: a header, nginx's line, a line per configuration."""
    s = ctx.sizes
    b = human(s.big)
    set_name = f"{s.concurrent_count}×{human(s.concurrent_size)}"
    table = [["setting", f"{b} http (verified)", f"{b} file first (verified)", f"{b} fallback",
              f"{set_name} http", f"{set_name} file first"], _nginx_line(ctx)]
    for config in CONFIGS:
        log(f"sweep: {config.label()}")
        table.append(_sidecar_line(ctx, config))
    return table


def _downloads(ctx: Context, url: Callable[[ImageFile], str], reps: int,
               touch: bool = False) -> str:
    """The big image ``reps`` times (a new mtime before each with ``touch``)."""
    big = ctx.image(ctx.sizes.big)
    speeds = []
    for _ in range(reps):
        if touch:
            images.touch(big)
        speeds.append(measure.curl(url(big), expect_size=big.size).mib_s)
    return mib_s(Stat.of(speeds))


def _at_once(ctx: Context, url: Callable[[ImageFile], str], touch: bool = False) -> str:
    """The concurrent set at once, twice (new mtimes before each with ``touch``): aggregate MiB/s."""
    files = ctx.concurrent_images()
    total = sum(f.size for f in files) / MiB
    speeds = []
    for _ in range(2):
        if touch:
            images.touch_all(files)
        speeds.append(total / measure.curl_many([url(f) for f in files], expect_size=ctx.sizes.concurrent_size)[0])
    return mib_s(Stat.of(speeds))


def _nginx_line(ctx: Context) -> list[str]:
    reps = max(2, ctx.sizes.reps - 2)

    def proxied(image: ImageFile) -> str:
        return f"{ctx.nginx.proxy_url}/{image.path.name}"

    return ["nginx (peer: proxy_pass for http, sendfile for file)", _downloads(ctx, proxied, reps),
            _downloads(ctx, ctx.web_url, reps), "", _at_once(ctx, proxied), _at_once(ctx, ctx.web_url)]


def _sidecar_line(ctx: Context, config: SidecarConfig) -> list[str]:
    reps = max(2, ctx.sizes.reps - 2)
    with ctx.start_sidecar("sweep", config) as sidecar:
        def via(kind: str) -> Callable[[ImageFile], str]:
            return lambda image: ctx.lp_url(f"{kind}-{image.name}", sidecar)

        return [config.label().replace("gunicorn ", ""), _downloads(ctx, via("http"), reps),
                _downloads(ctx, via("file"), reps, touch=True), _downloads(ctx, via("rbd"), reps),
                _at_once(ctx, via("http")), _at_once(ctx, via("file"), touch=True)]
