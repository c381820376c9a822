"""Row ``rss``: how much a locproxy worker's memory grows while it streams a
big image on the verifying path (http, and file first), sampled from
``/proc`` (VmRSS every 10 ms, and VmHWM). A target, no peer."""

from __future__ import annotations

from bench import apps, images, measure
from bench.context import Context
from bench.images import ImageFile, human
from bench.results import Result, verdict
from bench.row import Row, one_image


def measure_rss(ctx: Context) -> list[Result]:
    image = ctx.image(ctx.sizes.rss)
    growth: dict[str, float] = {}
    notes = []
    for kind in ("http", "file"):
        growth[kind], note = _growth(ctx, kind, image)
        notes.append(note)
    worst = max(growth.values())
    return [Result(
        f"RSS growth while streaming a {human(image.size)} image (verifying stream path)",
        f"+{worst:.1f} MiB (http +{growth['http']:.1f}, file first +{growth['file']:.1f})",
        "—", "—", "≤ 32 MB", verdict(worst * 1.048576 <= 32), notes)]


def _growth(ctx: Context, kind: str, image: ImageFile) -> tuple[float, str]:
    """MiB a fresh sidecar's workers grew by while streaming ``image`` over
    ``kind`` (the larger of the sampled VmRSS peak and VmHWM), and a note."""
    with ctx.start_sidecar(f"rss-{kind}", ctx.config) as sidecar:
        measure.KeepAlive(f"{sidecar.url}/v2/images/{apps.SHOW_IMAGE_ID}").get()  # imports, pools
        measure.curl(ctx.lp_url(f"file-{images.file_name(ctx.sizes.small)}", sidecar))
        workers = sidecar.workers
        before = {pid: measure.proc_status_kib(pid, "VmRSS") for pid in workers}
        hwm_before = {pid: measure.proc_status_kib(pid, "VmHWM") for pid in workers}
        if kind == "file":
            images.touch(image)  # the first, verifying read: the stream path
        with measure.RSSSampler(workers) as sampler:
            fetch = measure.curl(ctx.lp_url(f"{kind}-{image.name}", sidecar), expect_size=image.size)
        hwm_after = {pid: measure.proc_status_kib(pid, "VmHWM") for pid in workers}
    grown = max((sampler.peak[pid] - before[pid]) / 1024 for pid in workers)
    hwm = max((hwm_after[pid] - hwm_before[pid]) / 1024 for pid in workers)
    return max(grown, hwm), (f"{kind}: VmRSS {max(before.values()) / 1024:.1f} → peak "
                             f"{max(sampler.peak.values()) / 1024:.1f} MiB, VmHWM +{hwm:.1f} MiB, {fetch.mib_s:,.0f} MiB/s")


ROW = Row("rss", "none (a target only)", "≤ 32 MB", measure_rss, one_image(lambda s: s.rss))
