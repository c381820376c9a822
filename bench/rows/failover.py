"""Row ``failover``: the time to first byte when the first location refuses
connections, against the same image with only the good location."""

from __future__ import annotations

from bench import measure
from bench.context import Context
from bench.images import human
from bench.measure import Stat
from bench.results import Result, ms, verdict
from bench.row import Row, one_image


def measure_failover(ctx: Context) -> list[Result]:
    small = ctx.image(ctx.sizes.small)
    samples = _every_request_fails_over(ctx, small.size)
    # The default health rule on the main sidecar: after 3 failures the dead backend is demoted.
    for _ in range(5):
        measure.curl(ctx.lp_url("failover"), expect_size=small.size)
    steady = [measure.curl(ctx.lp_url("failover"), expect_size=small.size).ttfb
              for _ in range(max(5, ctx.sizes.ttfb_samples // 2))]
    fail, good = Stat.of(samples["failover"]), Stat.of(samples["good-only"])
    added = fail.median - good.median
    return [Result(
        "failover: dead backend (connection refused) → first byte from the next location",
        f"TTFB {ms(fail)}", f"good location only: {ms(good)}", f"+{added * 1000:.2f} ms", "≤ +50 ms",
        verdict(added <= 0.050),
        [f"{human(small.size)} image over http (sha512 verified: TTFB includes 2 chunks read and hashed); "
         f"failure_threshold=1000000 so every request tries the dead port first",
         f"with the default health rule (demoted after 3 failures): TTFB {ms(Stat.of(steady))}"])]


def _every_request_fails_over(ctx: Context, size: int) -> dict[str, list[float]]:
    """TTFB samples, alternating, from a sidecar whose huge failure_threshold
    keeps the dead backend in first place, so every request pays the failover."""
    config = ctx.config.with_options(failure_threshold="1000000")
    samples: dict[str, list[float]] = {"failover": [], "good-only": []}
    with ctx.start_sidecar("failover", config) as sidecar:
        for image_id in samples:
            measure.curl(ctx.lp_url(image_id, sidecar), expect_size=size)
        for n in range(ctx.sizes.ttfb_samples):
            for image_id in (("failover", "good-only") if n % 2 == 0 else ("good-only", "failover")):
                samples[image_id].append(measure.curl(ctx.lp_url(image_id, sidecar), expect_size=size).ttfb)
    return samples


ROW = Row("failover", "TTFB with only the good location", "≤ +50 ms", measure_failover,
          one_image(lambda s: s.small))
