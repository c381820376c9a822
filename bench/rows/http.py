"""Row ``http``: one big image through an ``http://`` location (hashed
the first time; later, the backend's strong ETag unchanged, sent unhashed), against nginx ``proxy_pass`` to the same backend; and, for
information, the same with ``verify_checksums = false``."""

from __future__ import annotations

from bench.context import Context
from bench.images import human
from bench.measure import Stat, alternate
from bench.results import Result, mib_s, throughput
from bench.row import Row, one_image


def measure_http(ctx: Context) -> list[Result]:
    image = ctx.image(ctx.sizes.big)
    with ctx.start_sidecar("noverify", ctx.config.with_options(verify_checksums="false")) as noverify:
        results = alternate(ctx.sizes.reps, {
            "nginx": ctx.one(f"{ctx.nginx.proxy_url}/{image.path.name}", image.size,
                             cpu="nginx (proxy + backend)", pids=ctx.pids_of(ctx.nginx)),
            "locproxy": ctx.one(ctx.lp_url(f"http-{image.name}"), image.size, cpu="locproxy http",
                                pids=ctx.pids_of(ctx.sidecar)),
            "noverify": ctx.one(ctx.lp_url(f"http-{image.name}", noverify), image.size,
                                cpu="locproxy http unverified", pids=ctx.pids_of(noverify)),
            "direct": ctx.one(ctx.web_url(image), image.size),
        })
    name = human(image.size)
    return [
        throughput(f"{name} download, http:// location, one stream (hashed the first time, then a copy verified before)",
                   results["locproxy"], results["nginx"], "nginx proxy_pass", 1.0,
                   [f"direct from the backend (nginx sendfile, no proxy): {mib_s(Stat.of(results['direct']))}",
                    ctx.cpu_note("locproxy http", "locproxy http unverified", "nginx (proxy + backend)")]),
        throughput(f"{name} download, http:// location, one stream, verify_checksums=false",
                   results["noverify"], results["nginx"], "nginx proxy_pass", None),
    ]


ROW = Row("http", "nginx proxy_pass to the same backend", "≥ 1.0 × the peer", measure_http,
          one_image(lambda s: s.big))
