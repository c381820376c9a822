"""Row ``show_sidecar``: the added latency of ``GET /v2/images/{id}``
through the sidecar, against the upstream directly (nginx ``proxy_pass`` in
front of it for scale); with Glance, the same with Glance as the upstream."""

from __future__ import annotations

from bench import apps, glance
from bench.context import Context
from bench.measure import LatencyGap, interleaved_latency
from bench.results import Result, verdict
from bench.row import Row


def measure_show_sidecar(ctx: Context) -> list[Result]:
    s = ctx.sizes
    path = f"/v2/images/{apps.SHOW_IMAGE_ID}"
    samples = interleaved_latency({"direct": (ctx.upstream.url + path, None),
                                   "sidecar": (ctx.sidecar.url + path, None),
                                   "nginx": (ctx.nginx.api_url + path, None)}, s.latency_rounds, s.latency_per_round)
    gap, nginx = LatencyGap.of(samples, "direct", "sidecar"), LatencyGap.of(samples, "direct", "nginx")
    lines = [_added(
        "image show through the sidecar (DemoImageAPI image, 3 locations), added median latency", gap,
        "direct upstream", f", n={s.latency_rounds}×{s.latency_per_round}",
        ["keep-alive http.client loop, one connection per target, rounds interleaved",
         f"for scale, nginx proxy_pass in front of the same upstream adds {nginx.added * 1000:+.3f} ms "
         f"(rounds {nginx.rounds_ms()})"])]
    if ctx.glance.server is not None:
        lines.append(_with_glance(ctx))
    return lines


def _with_glance(ctx: Context) -> Result:
    g = ctx.glance.server
    path = f"/v2/images/{glance.small_image(g)}"
    with ctx.start_sidecar("glance-show", ctx.config, upstream=g.url, file_roots="") as sidecar:
        samples = interleaved_latency({"direct": (g.url + path, g.headers()), "sidecar": (sidecar.url + path, g.headers())},
                                      ctx.sizes.latency_rounds, ctx.sizes.latency_per_round)
    return _added("image show through the sidecar, real Glance upstream, added median latency",
                  LatencyGap.of(samples, "direct", "sidecar"), "direct Glance")


def _added(measure: str, gap: LatencyGap, peer: str, counts: str = "", notes: list[str] | None = None) -> Result:
    return Result(measure, f"{gap.other.median * 1000:.3f} ms", f"{peer}: {gap.base.median * 1000:.3f} ms",
                  f"+{gap.added * 1000:.3f} ms (rounds {gap.rounds_ms()}{counts})", "≤ +1 ms",
                  verdict(gap.added <= 0.001), notes or [])


ROW = Row("show_sidecar", "the upstream directly (and nginx proxy_pass in front of it)", "≤ +1 ms",
          measure_show_sidecar, glance=True)
