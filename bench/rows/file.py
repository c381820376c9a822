"""Row ``file``: one big image through a ``file://`` location, first
(verified while streaming) and repeat (sendfile), against the faster of nginx
``sendfile`` and real Glance's ``/file``; with Glance, locproxy also in front
of it and inside its paste pipeline."""

from __future__ import annotations

import re
import statistics
from typing import Any, Callable

from bench import glance, images, measure
from bench.context import Context
from bench.images import ImageFile, human
from bench.measure import Stat, alternate
from bench.results import Result, mib_s, throughput
from bench.row import Row, one_image


def measure_file(ctx: Context) -> list[Result]:
    image = ctx.image(ctx.sizes.big)
    g = ctx.glance.server
    runs: dict[str, Callable[[], float]] = {
        "nginx": ctx.one(ctx.web_url(image), image.size, cpu="nginx sendfile", pids=ctx.pids_of(ctx.nginx)),
    }
    glance_id = None
    if g is not None:
        glance_id = glance.upload(g, image)
        runs["glance"] = ctx.one(f"{g.url}/v2/images/{glance_id}/file", image.size, g.headers(),
                                 cpu="Glance /file", pids=ctx.pids_of(g))
    first, first_path = _first_downloads(ctx, image)
    # Prime every worker (each keeps its own verified-file memory), then repeats.
    for _ in range(ctx.config.workers * 3):
        measure.curl(ctx.lp_url(f"file-{image.name}"), expect_size=image.size)
    mark = ctx.log_mark()
    runs["locproxy"] = ctx.one(ctx.lp_url(f"file-{image.name}"), image.size, cpu="locproxy repeat",
                               pids=ctx.pids_of(ctx.sidecar))
    results = alternate(ctx.sizes.reps, runs)
    repeat_path = ctx.served_by(mark)
    peers = {"nginx sendfile": results["nginx"]}
    if "glance" in results:
        peers["Glance /file"] = results["glance"]
    best = max(peers, key=lambda peer: statistics.median(peers[peer]))
    others = "; ".join(f"{peer}: {mib_s(Stat.of(values))}" for peer, values in peers.items() if peer != best)
    notes = [f"repeat downloads: {repeat_path}"] + ([f"other peer {others}"] if others else [])
    notes.append(ctx.cpu_note("locproxy repeat", "locproxy first", "nginx sendfile", "Glance /file"))
    if g is None:
        notes.append(f"Glance peer: not available ({ctx.glance.reason})")
    name = human(image.size)
    lines = [
        throughput(f"{name} download, file:// location, one stream, repeat",
                   results["locproxy"], peers[best], f"faster of peers ({best})", 0.95, notes),
        throughput(f"{name} download, file:// location, one stream, first (sha512 verified)",
                   first, peers[best], f"faster of peers ({best})", 0.95, [f"first downloads: {first_path}"]),
    ]
    if g is not None and glance_id is not None:
        lines += _in_front_of_glance(ctx, image, glance_id, results["glance"])
    return lines


def _first_downloads(ctx: Context, image: ImageFile) -> tuple[list[float], str]:
    """MiB/s of verified downloads (a new mtime before each, so locproxy
    verifies again) and how they were served."""
    mark = ctx.log_mark()
    run = ctx.one(ctx.lp_url(f"file-{image.name}"), image.size, cpu="locproxy first", pids=ctx.pids_of(ctx.sidecar))
    first = []
    for _ in range(ctx.sizes.reps):
        images.touch(image)
        first.append(run())
    return first, ctx.served_by(mark)


def _in_front_of_glance(ctx: Context, image: ImageFile, glance_id: str, direct: list[float]) -> list[Result]:
    """locproxy in front of the real Glance: file:// from Glance's own store
    directory, and the fallback (no file_roots: Glance's /file)."""
    g = ctx.glance.server
    headers = g.headers()
    url = f"/v2/images/{glance_id}/file"
    with ctx.start_sidecar("glance-file", ctx.config, upstream=g.url, file_roots=str(g.store_dirs["fs1"])) as files, \
            ctx.start_sidecar("glance-fallback", ctx.config, upstream=g.url, file_roots="") as fallback:
        measure.curl(files.url + url, headers=headers, expect_size=image.size)  # verifies once
        for _ in range(ctx.config.workers * 2):
            measure.curl(files.url + url, headers=headers, expect_size=image.size)
        mark = ctx.log_mark(files)
        results = alternate(max(2, ctx.sizes.reps - 2), {
            "glance": ctx.one(g.url + url, image.size, headers, cpu="Glance /file", pids=ctx.pids_of(g)),
            "file": ctx.one(files.url + url, image.size, headers, cpu="locproxy before Glance, file",
                            pids=ctx.pids_of(files)),
            "fallback": ctx.one(fallback.url + url, image.size, headers, cpu="locproxy before Glance, fallback",
                                pids=ctx.pids_of(fallback)),
        })
        path = ctx.served_by(mark, files)
    return [
        _inside_glance(ctx, g, image, glance_id),
        throughput(f"{human(image.size)} via locproxy in front of real Glance, file:// from its fs1 store, repeat",
                   results["file"], direct + results["glance"], "Glance /file", 0.95, [f"served: {path}"]),
        throughput(f"fallback with real Glance: locproxy streaming Glance's /file ({human(image.size)})",
                   results["fallback"], results["glance"], "direct Glance /file", 0.8,
                   [ctx.cpu_note("locproxy before Glance, fallback", "Glance /file")]),
    ]


def _inside_glance(ctx: Context, g: Any, image: ImageFile, glance_id: str) -> Result:
    """locproxy as a filter inside Glance's own paste pipeline, serving
    /file from Glance's fs1 directory (file_wrapper: gunicorn sendfile)."""
    measure_name = f"{human(image.size)} download inside Glance's paste pipeline (locproxy filter, file://)"
    url = f"{g.url}/v2/images/{glance_id}/file"
    reps = max(2, ctx.sizes.reps - 2)
    with g.paste_pipeline(glance.locproxy_paste_ini(location_strategy="store_type", store_type_preference="file, http",
                                                    file_roots=str(g.store_dirs["fs1"]))):
        try:
            first = measure.curl(url, headers=g.headers(), expect_size=image.size)
        except measure.BenchError as error:
            log_tail = g.glance_log_path.read_text(errors="replace")[-4000:] if g.glance_log_path.exists() else ""
            cause = re.findall(r"(\w+Error: \w+)", log_tail)
            return Result(measure_name, "error", "Glance /file", "—", "≥ 0.95 × Glance /file", "**error**",
                          [f"{error}; Glance log: {cause[-1] if cause else 'see glance-api.log'} "
                           "(the filter's show subrequest drops environ['webob.adhoc_attrs'], "
                           "which holds Glance's request context)"])
        for _ in range(2):
            measure.curl(url, headers=g.headers(), expect_size=image.size)
        repeat = [measure.curl(url, headers=g.headers(), expect_size=image.size).mib_s for _ in range(reps)]
    direct = [measure.curl(url, headers=g.headers(), expect_size=image.size).mib_s for _ in range(reps)]
    return throughput(f"{measure_name}, repeat", repeat, direct, "Glance /file (same server, filter removed)", 0.95,
                      [f"first (verified) download: {first.mib_s:,.0f} MiB/s; not interleaved (each needs a restart)"])


ROW = Row("file", "the faster of nginx sendfile and real Glance's /file", "≥ 0.95 × the peer",
          measure_file, one_image(lambda s: s.big), glance=True)
