"""Row ``fallback``: no readable location (an ``rbd://`` one), so locproxy
streams the upstream's own ``/file``; against that ``/file`` fetched directly
(and, for scale, nginx ``proxy_pass`` in front of it)."""

from __future__ import annotations

import statistics

from bench.context import Context
from bench.images import human
from bench.measure import Stat, alternate
from bench.results import Result, mib_s, throughput
from bench.row import Row, one_image


def measure_fallback(ctx: Context) -> list[Result]:
    image = ctx.image(ctx.sizes.big)
    image_id = f"rbd-{image.name}"
    results = alternate(ctx.sizes.reps, {
        "direct": ctx.one(f"{ctx.upstream.url}/v2/images/{image_id}/file", image.size,
                          cpu="upstream (direct)", pids=ctx.pids_of(ctx.upstream)),
        "locproxy": ctx.one(ctx.lp_url(image_id), image.size, cpu="locproxy fallback",
                            pids=ctx.pids_of(ctx.sidecar)),
        "nginx": ctx.one(f"{ctx.nginx.api_url}/v2/images/{image_id}/file", image.size,
                         cpu="nginx in front of the upstream", pids=ctx.pids_of(ctx.nginx)),
    })
    nginx_ratio = statistics.median(results["nginx"]) / statistics.median(results["direct"])
    return [throughput(
        f"fallback: locproxy streaming the upstream's /file ({human(image.size)}, stand-in upstream)",
        results["locproxy"], results["direct"], "direct upstream /file", 0.8,
        ["stand-in upstream: bench.apps.upstream() under gunicorn gthread, /file in 64 KiB reads like glance_store",
         f"for scale, nginx proxy_pass in front of the same upstream /file: {mib_s(Stat.of(results['nginx']))} "
         f"({nginx_ratio:.2f} × direct)",
         ctx.cpu_note("locproxy fallback", "upstream (direct)", "nginx in front of the upstream")])]


ROW = Row("fallback", "the upstream's /file fetched directly", "≥ 0.8 × the peer", measure_fallback,
          one_image(lambda s: s.big))
