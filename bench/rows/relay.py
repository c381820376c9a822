"""Row ``relay``: network copies under load, through a sidecar with the
shipped configuration (``metrics_file = auto``: a fresh state directory,
shared by its workers), each line with the CPU seconds per GiB of the
processes doing the work beside the peer's.

* ``relay_count`` concurrent repeat downloads of an ``http://`` copy, every
  block checked against the image's fingerprint, against nginx
  ``proxy_pass`` to the same backend (nginx sendfile);
* the same of a ``file://`` copy, against nginx sendfile;
* the same with no readable copy (``rbd://``): locproxy streams the
  upstream's ``/file``, against that ``/file`` fetched directly (and, for
  scale, nginx ``proxy_pass`` in front of it: what any relay costs here).

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
from bench.images import GiB, ImageFile, MiB, file_name, human
from bench.measure import Stat, alternate, curl_many
from bench.results import Result, mib_s, throughput
from bench.row import Row
from bench.settings import Sizes

TARGETS = {"http": 0.9, "file": 1.0, "fallback": 0.9}
Pids = Callable[[], list[int]]
Runs = dict[str, list[float]]


def relay_images(sizes: Sizes) -> list[tuple[str, int]]:
    return [(file_name(sizes.relay_size, i), sizes.relay_size) for i in range(sizes.relay_count)]


def measure_relay(ctx: Context) -> list[Result]:
    s = ctx.sizes
    files = [ctx.image(s.relay_size, i) for i in range(s.relay_count)]
    with ctx.start_sidecar("shipped", ctx.config.with_options(metrics_file="auto")) as shipped:
        lp, nginx, upstream = ctx.pids_of(shipped), ctx.pids_of(ctx.nginx), ctx.pids_of(ctx.upstream)

        def many(kind: str, urls: list[str], cpu: dict[str, Pids]) -> Callable[[], float]:
            return _timed(ctx, urls, s.relay_size, {f"{kind}: {label}": pids for label, pids in cpu.items()})

        for kind in ("http", "file"):  # first reads, untimed: verified whole, fingerprints shared by the workers
            curl_many([ctx.lp_url(f"{kind}-{f.name}", shipped) for f in files], expect_size=s.relay_size)
        mark = ctx.log_mark(shipped)
        http = alternate(s.reps, {
            "nginx": many("http", [f"{ctx.nginx.proxy_url}/{f.path.name}" for f in files],
                          {"nginx (proxy + backend)": nginx}),
            "locproxy": many("http", [ctx.lp_url(f"http-{f.name}", shipped) for f in files],
                             {"locproxy": lp, "backend nginx": nginx})})
        paths = [ctx.served_by(mark, shipped)]
        mark = ctx.log_mark(shipped)
        file = alternate(s.reps, {"nginx": many("file", [ctx.web_url(f) for f in files], {"nginx": nginx}),
                                  "locproxy": many("file", [ctx.lp_url(f"file-{f.name}", shipped) for f in files],
                                                   {"locproxy": lp})})
        paths.append(ctx.served_by(mark, shipped))
        fallback = alternate(s.reps, {
            "direct": many("fallback", [f"{ctx.upstream.url}{_file(f)}" for f in files], {"upstream (direct)": upstream}),
            "locproxy": many("fallback", [f"{shipped.url}{_file(f)}" for f in files],
                             {"locproxy": lp, "upstream (behind locproxy)": upstream}),
            "nginx": many("fallback", [f"{ctx.nginx.api_url}{_file(f)}" for f in files],
                          {"nginx proxy_pass in front": nginx})})
    return _lines(ctx, http, file, fallback, paths)


def _lines(ctx: Context, http: Runs, file: Runs, fallback: Runs, paths: list[str]) -> list[Result]:
    head = f"{ctx.sizes.relay_count} concurrent {human(ctx.sizes.relay_size)} downloads, aggregate"
    in_front = statistics.median(fallback["nginx"]) / statistics.median(fallback["direct"])
    return [
        throughput(f"{head}, http:// copy, every block checked", http["locproxy"], http["nginx"],
                   "nginx proxy_pass", TARGETS["http"], [f"served: {paths[0]}", _http_cpu(ctx)]),
        throughput(f"{head}, file:// copy, repeat, shipped configuration", file["locproxy"], file["nginx"],
                   "nginx sendfile", TARGETS["file"], [f"served: {paths[1]}", _cpu(ctx, "file")]),
        throughput(f"{head}, fallback through the upstream's /file", fallback["locproxy"], fallback["direct"],
                   "direct upstream /file", TARGETS["fallback"],
                   [f"for scale, nginx proxy_pass in front of the same /file: {mib_s(Stat.of(fallback['nginx']))} "
                    f"({in_front:.2f} × direct)", _cpu(ctx, "fallback")]),
    ]


def _file(image: ImageFile) -> str:
    """The /file of the image with no readable copy: the upstream serves it."""
    return f"/v2/images/rbd-{image.name}/file"


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
