"""Row ``show_filter``: the added latency of an image show with locproxy as
a filter in the app's own pipeline: ``LocationFilter(DemoImageAPI)`` against
``DemoImageAPI`` alone under the same gunicorn settings (plus the filter's
in-process cost); with Glance, one Glance restarted with and without the
filter in its paste pipeline, round after round."""

from __future__ import annotations

import io
import json
import sys
import timeit
from typing import Any, Callable

from bench import apps, glance, servers
from bench.context import Context
from bench.measure import KeepAlive, LatencyGap, get_body, interleaved_latency
from bench.results import Result, verdict
from bench.row import Row


def measure_show_filter(ctx: Context) -> list[Result]:
    path = f"/v2/images/{apps.SHOW_IMAGE_ID}"
    with servers.gunicorn("demo", "bench.apps:demo()", ctx.work, workers=1, threads=4) as alone, \
            servers.gunicorn("filtered", "bench.apps:filtered()", ctx.work, workers=1, threads=4) as filtered:
        samples = interleaved_latency({"alone": (alone.url + path, None), "filtered": (filtered.url + path, None)},
                                      ctx.sizes.latency_rounds, ctx.sizes.latency_per_round)
    lines = [_added(
        "image show through the in-pipeline filter: LocationFilter(DemoImageAPI) vs DemoImageAPI",
        LatencyGap.of(samples, "alone", "filtered"), "app alone",
        ["both under gunicorn gthread workers=1 threads=4; filter: store_type 'file, http' (reorders)",
         _in_process()])]
    if ctx.glance.server is not None:
        lines.append(_in_glance(ctx))
    return lines


def _in_glance(ctx: Context) -> Result:
    """One real Glance, restarted with and without locproxy in its paste
    pipeline, round after round (two servers differ by more than the filter)."""
    g = ctx.glance.server
    url = f"{g.url}/v2/images/{glance.small_image(g)}"
    original = g.paste_ini_path.read_text()
    pipelines = {"alone": original, "filtered": glance.locproxy_paste_ini(
        location_strategy="store_type", store_type_preference="http, file")}
    samples: dict[str, list[list[float]]] = {"alone": [], "filtered": []}
    rounds = max(1, ctx.sizes.latency_rounds // 2)
    order: list[str] = []
    try:
        for number in range(rounds):
            for name in (("alone", "filtered") if number % 2 == 0 else ("filtered", "alone")):
                g.restart(pipelines[name])
                samples[name].append(_one_round(url, g.headers(), ctx.sizes.latency_per_round))
                if name == "filtered" and not order:
                    body = json.loads(get_body(url, g.headers()))
                    order = [loc["url"].split(":", 1)[0] for loc in body.get("locations", [])]
    finally:
        g.restart(original)
    return _added(
        "image show, real Glance with locproxy in its paste pipeline vs the same Glance without",
        LatencyGap.of(samples, "alone", "filtered"), "Glance alone",
        [f"one Glance restarted with either paste pipeline, {rounds}×2 rounds of {ctx.sizes.latency_per_round}; "
         f"filter right before rootapp, store_type 'http, file' (order seen: {order})"])


def _one_round(url: str, headers: dict[str, str], count: int, warmup: int = 50) -> list[float]:
    client = KeepAlive(url, headers)
    try:
        for _ in range(warmup):
            client.get()
        return [client.get() for _ in range(count)]
    finally:
        client.close()


def _added(measure: str, gap: LatencyGap, peer: str, notes: list[str]) -> Result:
    percent = gap.added / gap.base.median * 100
    return Result(measure, f"{gap.other.median * 1000:.3f} ms", f"{peer}: {gap.base.median * 1000:.3f} ms",
                  f"+{percent:.1f} % (+{gap.added * 1000:.3f} ms; rounds {gap.rounds_ms()} ms)", "≤ +3 %",
                  verdict(percent <= 3.0), notes)


def _in_process() -> str:
    """The filter's own cost per show, without HTTP: µs per call."""
    path = f"/v2/images/{apps.SHOW_IMAGE_ID}"

    def call(app: Callable[..., Any]) -> Callable[[], None]:
        def run() -> None:
            environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
                       "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
                       "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
                       "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False,
                       "wsgi.run_once": False, "HTTP_HOST": "127.0.0.1"}
            body = app(environ, lambda status, headers, exc_info=None: None)
            b"".join(body)
            getattr(body, "close", lambda: None)()
        return run

    best = {name: min(timeit.repeat(call(app), number=500, repeat=5)) / 500
            for name, app in (("alone", apps.demo()), ("filtered", apps.filtered()))}
    return (f"in-process (no HTTP, best of 5×500): DemoImageAPI {best['alone'] * 1e6:.0f} µs, with the filter "
            f"{best['filtered'] * 1e6:.0f} µs (+{(best['filtered'] - best['alone']) * 1e6:.0f} µs per show)")


ROW = Row("show_filter", "DemoImageAPI alone, same gunicorn config (and Glance without the filter)", "≤ +3 %",
          measure_show_filter, glance=True)
