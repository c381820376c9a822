"""Row ``keystone``: downloads through the sidecar in front of a
production-like Glance 33 (keystonemiddleware, default policies plus the
``service_token`` line, ``show_multiple_locations = False``) on a real
Keystone 30, against Glance's own ``/file`` in the same run.

The Keystone lab (``tests/support/keystone``) starts for this row, from the
cached Keystone and Glance venvs (never built here: skipped with the reason
when missing). One small image (TTFB) and one big (throughput), each with
an http copy and file copies ``fs1`` (Glance's weight 100: its
``direct_url`` and its ``/file``) and ``fs2``. The sidecar
(``locations_from = service_token``, ``weight`` strategy preferring fs2)
reads Glance's hidden locations and serves fs2, the strategy's copy.

Conditions: alice's token reused (Glance's authtoken has it cached), so is
locproxy's own (keystoneauth1 keeps it); each image downloaded from Glance
and through the sidecar until 8 sidecar downloads in a row read no
locations (copies verified and shared by the workers through
``metrics_file``; locations remembered per worker, ``locations_ttl`` 600 s:
the notes count the ``GET .../locations`` that reached Glance while timing,
expected 0). curl
for both, interleaved (and Glance's own show of the image, for the notes:
the sidecar's authorisation costs one). TTFB is curl's
``time_starttransfer``.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from typing import Any

from bench import measure
from bench.context import Context
from bench.images import MiB, human
from bench.measure import Stat, alternate
from bench.progress import log
from bench.results import Result, ms, throughput, verdict
from bench.row import Row

TTFB_SIZE = 4 * MiB
TTFB_TARGET = 0.002  # seconds over Glance's /file
THROUGHPUT_TARGET = 0.95
WARM_QUIET, WARM_MAX = 8, 40  # warm-up downloads through the sidecar (see _warm)


def big_size(ctx: Context) -> int:
    return min(256 * MiB, ctx.sizes.big)


def measure_keystone(ctx: Context) -> list[Result]:
    names = _names(big_size(ctx))
    reason = _unavailable()
    if reason:
        return _skipped(names, reason)
    from tests.support.keystone.lab import keystone_glance, keystone_lab
    from tests.support.keystone.seed import seed_image

    with contextlib.ExitStack() as stack:
        started = time.monotonic()
        lab = stack.enter_context(keystone_lab())
        g = stack.enter_context(keystone_glance(lab, overrides={"fs1": {"weight": "100"}}))
        log(f"Keystone lab and Glance up ({time.monotonic() - started:.0f}s); seeding")
        small = seed_image(g, os.urandom(TTFB_SIZE), name="bench-ks-small")
        big = seed_image(g, os.urandom(big_size(ctx)), name="bench-ks-big")
        options = {**_options(g, lab), "metrics_file": str(ctx.work / "keystone-metrics.sqlite")}
        sidecar = stack.enter_context(ctx.start_sidecar("keystone", ctx.config.with_options(**options),
                                                        upstream=g.url, file_roots=_roots(g)))
        headers = {"X-Auth-Token": lab.token("alice")}
        urls = {name: {"sidecar": f"{sidecar.url}/v2/images/{image.id}/file",
                       "glance": f"{g.url}/v2/images/{image.id}/file"} for name, image in (("small", small), ("big", big))}
        for pair, image in ((urls["small"], small), (urls["big"], big)):
            _warm(g, pair, headers, len(image.data))
        reads, mark = _locations_reads(g), ctx.log_mark(sidecar)
        show = f"{g.url}/v2/images/{small.id}"
        ttfb = alternate(ctx.sizes.ttfb_samples, {
            **{name: lambda url=url: measure.curl(url, headers, expect_size=TTFB_SIZE).ttfb
               for name, url in urls["small"].items()},
            "show": lambda: measure.curl(show, headers).ttfb})
        speeds = alternate(ctx.sizes.reps, {
            name: lambda url=url: measure.curl(url, headers, expect_size=len(big.data)).mib_s
            for name, url in urls["big"].items()})
        notes = [f"served: {ctx.served_by(mark, sidecar)}; GET .../locations reaching Glance while timing: "
                 f"{_locations_reads(g) - reads}; strategy's copy fs2, Glance's direct_url and /file fs1",
                 f"Glance's own show of the image (the sidecar's authorisation, one per download), same token: "
                 f"TTFB {ms(Stat.of(ttfb['show']))}"]
    return [_ttfb_result(names["ttfb"], ttfb, notes),
            throughput(names["throughput"], speeds["sidecar"], speeds["glance"], "Glance /file", THROUGHPUT_TARGET)]


def _warm(g: Any, pair: dict[str, str], headers: dict[str, str], size: int) -> None:
    """Tokens cached, copies verified, and the locations remembered by every
    worker: downloads until WARM_QUIET in a row read no locations (gunicorn
    may hand one worker most requests), at most WARM_MAX."""
    measure.curl(pair["glance"], headers, expect_size=size)
    quiet = 0
    for _ in range(WARM_MAX):
        reads = _locations_reads(g)
        measure.curl(pair["sidecar"], headers, expect_size=size)
        quiet = quiet + 1 if _locations_reads(g) == reads else 0
        if quiet >= WARM_QUIET:
            return


def _options(g: Any, lab: Any) -> dict[str, str]:
    return {"locations_from": "service_token", "locations_ttl": "600", "location_strategy": "weight",
            "store_weights": "fs2:10, fs1:5, web:1", "service_endpoint_override": g.url, **lab.service_options()}


def _roots(g: Any) -> str:
    return f"{g.store_dirs['fs1']}, {g.store_dirs['fs2']}"


def _locations_reads(g: Any) -> int:
    return g.access_log_path.read_text().count("/locations HTTP")


def _ttfb_result(name: str, ttfb: dict[str, list[float]], notes: list[str]) -> Result:
    lp, peer = Stat.of(ttfb["sidecar"]), Stat.of(ttfb["glance"])
    added = statistics.median(ttfb["sidecar"]) - statistics.median(ttfb["glance"])
    return Result(name, ms(lp), f"Glance /file: {ms(peer)}", f"{added * 1000:+.3f} ms", "≤ Glance + 2 ms",
                  verdict(added <= TTFB_TARGET), notes)


def _names(size: int) -> dict[str, str]:
    return {"ttfb": f"download TTFB via the sidecar, real Keystone (service_token), tokens reused, "
                    f"locations remembered ({human(TTFB_SIZE)})",
            "throughput": f"{human(size)} via the sidecar, real Keystone (service_token), strategy's copy"}


def _unavailable() -> str:
    """Why the lab cannot start here ('' when it can)."""
    try:
        from tests.support.glance.venv import READY_MARKER
        from tests.support.glance.venv import venv_dir as glance_venv
        from tests.support.keystone.venv import READY_MARKER as KEYSTONE_READY
        from tests.support.keystone.venv import venv_dir as keystone_venv
    except Exception as error:  # noqa: BLE001 - any reason is reported, not fatal
        return f"the Keystone lab is not importable ({type(error).__name__}: {error})"
    for path, marker, build in ((glance_venv(), READY_MARKER, "python -m tests.support.glance --selfcheck"),
                                (keystone_venv(), KEYSTONE_READY, "python -m tests.support.keystone --selfcheck")):
        if not (path / marker).exists():
            return f"venv not cached at {path} (build it: {build})"
    return ""


def _skipped(names: dict[str, str], reason: str) -> list[Result]:
    log(f"row keystone skipped: {reason}")
    return [Result(names["ttfb"], "skipped", "—", "—", "≤ Glance + 2 ms", "n/a", [reason]),
            Result(names["throughput"], "skipped", "—", "—", f"≥ {THROUGHPUT_TARGET:g} × Glance /file", "n/a")]


ROW = Row("keystone", "Glance's own /file on the same Keystone, same run", "TTFB ≤ Glance + 2 ms; ≥ 0.95 × Glance /file",
          measure_keystone)
