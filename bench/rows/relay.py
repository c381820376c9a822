"""Row ``relay``: network copies under load, through a sidecar with the
shipped configuration (``metrics_file = auto``: a fresh state directory,
shared by its workers), each line with the CPU seconds per GiB of the
processes doing the work beside the peer's.

* ``relay_count`` concurrent repeat downloads of an ``http://`` copy, every
  block checked against the image's fingerprint, against nginx
  ``proxy_pass`` to the same backend (nginx sendfile);
* the same of a ``file://`` copy, against nginx sendfile;
* the same with no readable copy (``rbd://``): locproxy streams the
  upstream's ``/file``, against that ``/file`` fetched directly.

Sizes: ``--relay-size`` (each download) and ``--relay-count``. CPU is the
workers' user + sys from ``/proc`` over each timed run; nginx serves both
the proxy and its backend, so its proxy's own share is its total minus what
the backend alone took while locproxy read it.
"""

from __future__ import annotations

import statistics
from typing import Callable, Sequence

from bench import measure
from bench.context import Context
from bench.images import GiB, MiB, file_name, human
from bench.measure import alternate, curl_many
from bench.results import Result, throughput
from bench.row import Row
from bench.settings import Sizes

TARGETS = {"http": 0.9, "file": 1.0, "fallback": 0.9}
Pids = Callable[[], list[int]]


def relay_images(sizes: Sizes) -> list[tuple[str, int]]:
    return [(file_name(sizes.relay_size, i), sizes.relay_size) for i in range(sizes.relay_count)]


def measure_relay(ctx: Context) -> list[Result]:
    s = ctx.sizes
    files = [ctx.image(s.relay_size, i) for i in range(s.relay_count)]
    head = f"{s.relay_count} concurrent {human(s.relay_size)} downloads, aggregate"
    with ctx.start_sidecar("shipped", ctx.config.with_options(metrics_file="auto")) as shipped:
        lp, nginx, upstream = ctx.pids_of(shipped), ctx.pids_of(ctx.nginx), ctx.pids_of(ctx.upstream)

        def many(kind: str, urls: list[str], cpu: dict[str, Pids]) -> Callable[[], float]:
            return _timed(ctx, urls, s.relay_size, {f"{kind}: {label}": pids for label, pids in cpu.items()})

        lp_http = many("http", [ctx.lp_url(f"http-{f.name}", shipped) for f in files],
                       {"locproxy": lp, "backend nginx": nginx})
        lp_file = many("file", [ctx.lp_url(f"file-{f.name}", shipped) for f in files], {"locproxy": lp})
        for kind in ("http", "file"):  # first reads, untimed: verified whole, fingerprints shared by the workers
            curl_many([ctx.lp_url(f"{kind}-{f.name}", shipped) for f in files], expect_size=s.relay_size)
        mark = ctx.log_mark(shipped)
        http = alternate(s.reps, {"nginx": many("http", [f"{ctx.nginx.proxy_url}/{f.path.name}" for f in files],
                                                {"nginx (proxy + backend)": nginx}), "locproxy": lp_http})
        http_path = ctx.served_by(mark, shipped)
        mark = ctx.log_mark(shipped)
        file = alternate(s.reps, {"nginx": many("file", [ctx.web_url(f) for f in files], {"nginx": nginx}),
                                  "locproxy": lp_file})
        file_path = ctx.served_by(mark, shipped)
        fallback = alternate(s.reps, {
            "direct": many("fallback", [f"{ctx.upstream.url}/v2/images/rbd-{f.name}/file" for f in files],
                           {"upstream (direct)": upstream}),
            "locproxy": many("fallback", [ctx.lp_url(f"rbd-{f.name}", shipped) for f in files],
                             {"locproxy": lp, "upstream (behind locproxy)": upstream})})
    return [
        throughput(f"{head}, http:// copy, every block checked", http["locproxy"], http["nginx"],
                   "nginx proxy_pass", TARGETS["http"], [f"served: {http_path}", _http_cpu(ctx)]),
        throughput(f"{head}, file:// copy, repeat, shipped configuration", file["locproxy"], file["nginx"],
                   "nginx sendfile", TARGETS["file"], [f"served: {file_path}", _cpu(ctx, "file")]),
        throughput(f"{head}, fallback through the upstream's /file", fallback["locproxy"], fallback["direct"],
                   "direct upstream /file", TARGETS["fallback"], [_cpu(ctx, "fallback")]),
    ]


def _timed(ctx: Context, urls: list[str], size: int, cpu: dict[str, Pids]) -> Callable[[], float]:
    """All ``urls`` at once -> aggregate MiB/s; CPU seconds per GiB of each
    pid group recorded under its label."""
    moved = len(urls) * size

    def run() -> float:
        pids = {label: get() for label, get in cpu.items()}
        before = {label: measure.cpu_seconds(group) for label, group in pids.items()}
        wall, _ = curl_many(urls, expect_size=size)
        for label, group in pids.items():
            ctx.cpu.setdefault(label, []).append((measure.cpu_seconds(group) - before[label]) / (moved / GiB))
        return moved / MiB / wall

    return run


def _median(ctx: Context, label: str) -> float:
    return statistics.median(ctx.cpu[label]) if ctx.cpu.get(label) else float("nan")


def _cpu(ctx: Context, kind: str) -> str:
    labels: Sequence[str] = [label for label in ctx.cpu if label.startswith(f"{kind}: ")]
    return "CPU seconds per GiB (median): " + ", ".join(
        f"{label.split(': ', 1)[1]} {_median(ctx, label):.2f}" for label in labels)


def _http_cpu(ctx: Context) -> str:
    locproxy, backend = _median(ctx, "http: locproxy"), _median(ctx, "http: backend nginx")
    both = _median(ctx, "http: nginx (proxy + backend)")
    proxy = both - backend
    return (f"{_cpu(ctx, 'http')}; nginx proxy alone ≈ {proxy:.2f} (its total minus the backend's); "
            f"locproxy / nginx proxy: {locproxy / proxy:.2f} × (target ≤ 1.5 ×), "
            f"with the backend: {(locproxy + backend) / both:.2f} ×")


ROW = Row("relay", "nginx proxy_pass / sendfile, the upstream's /file directly", "≥ 0.9 / 1.0 / 0.9 × the peer",
          measure_relay, relay_images)
