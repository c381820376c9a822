"""Row ``swift``: the swift copies a real Glance 33 wrote on radosgw (Swift
API, trusting a real Keystone), read through locproxy, against Glance's own
``/file`` for the same copies and against direct reads of the objects.

The labs start for this row: Ceph (``tests/support/ceph.py``), Keystone
(``tests/support/keystone``) and a radosgw of their own speaking Swift
(``tests/support/swiftlab.py``). The Glance peer restarts with two swift
stores on it: ``swift1`` writes large objects as DLOs of 8 "MB" segments
(Glance's chunk size 8), ``swift2`` writes one plain object. One image of
an exact multiple of 8,192,000 bytes (glance_store 5.7.0 fails other sizes
over the threshold) is uploaded to ``fs1`` and copied by Glance
(``copy-image``) to both. A sidecar reads them itself with the same
references file (``?prefer=swift1`` / ``?prefer=swift2``). Peers,
interleaved with locproxy in every repetition:

* DLO: Glance's ``/file?prefer=swift1`` (a new Keystone token per download,
  radosgw joins the segments), and a direct parallel read of the segments
  (Python, four connections, whole segments, a token kept);
* plain: curl's ranged GET of the object with a kept token.

locproxy's downloads are repeats of a copy verified before. Which copy
served is checked for every timed download from locproxy's log.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import threading
import time
from typing import Any, Callable

from bench import glance, measure
from bench.context import Context
from bench.images import MiB, file_name, human
from bench.measure import alternate
from bench.progress import log
from bench.results import Result, throughput
from bench.row import Row
from bench.settings import Sizes

SEGMENT = 8_192_000
TARGETS = {"glance_dlo": 1.5, "direct_dlo": 0.9, "direct_plain": 0.9}
PARALLEL = 4


def image_size(sizes: Sizes) -> int:
    return max(1, min(256 * MiB, sizes.big) // SEGMENT) * SEGMENT


def measure_swift(ctx: Context) -> list[Result]:
    size = image_size(ctx.sizes)
    names = _names(size)
    if ctx.glance.server is None:
        return _skipped(names, f"no Glance peer: {ctx.glance.reason}")
    try:
        from tests.support import ceph, swiftlab
        from tests.support.glance.config import swift_store_overrides
        from tests.support.keystone.lab import keystone_lab
    except ImportError as error:
        return _skipped(names, f"the labs are not importable ({error})")
    with contextlib.ExitStack() as stack:
        try:
            started = time.monotonic()
            lab = stack.enter_context(ceph.ceph_cluster(ctx.work / "ceph-lab"))
            keystone = stack.enter_context(keystone_lab())
            swift = stack.enter_context(swiftlab.swift_gateway(lab, keystone))
        except (ceph.CephUnavailable, OSError, RuntimeError) as error:
            return _skipped(names, f"no Ceph, Keystone or Swift lab: {getattr(error, 'reason', error)}")
        log(f"Ceph, Keystone and radosgw (Swift) up ({time.monotonic() - started:.0f}s)")
        g = ctx.glance.server
        overrides = swift_store_overrides(references_file=swift.references_file, inline=swift.inline)
        overrides["swift2"] = {**overrides["swift1"], "swift_store_container": "glance-plain",
                               "swift_store_large_object_size": "5120"}  # a plain object, config credentials
        stack.enter_context(g.config_overrides(overrides))
        image = ctx.image(size)
        image_id = glance.upload(g, image)
        started = time.monotonic()
        for store in ("swift1", "swift2"):
            g.copy_to_store(image_id, store, timeout=900)
        log(f"Glance copied {human(size)} to swift1 (DLO) and swift2 (plain) in {time.monotonic() - started:.0f}s")
        segments = [f"/glance/{item['name']}" for item in swift.listing("glance", f"{image_id}-")]
        if sum(1 for _ in segments) != size // SEGMENT:
            raise measure.BenchError(f"swift1 holds {len(segments)} segments, expected {size // SEGMENT}")

        options = ctx.config.with_options(**{
            **ctx.config.extra, "location_strategy": "store_type", "store_type_preference": "swift, file",
            "allowed_hosts": swift.host, "swift_store_config_file": str(swift.references_file)})
        sidecar = stack.enter_context(ctx.start_sidecar("swift", options, upstream=g.url, file_roots=""))
        one_get = stack.enter_context(ctx.start_sidecar("swift-one-get", ctx.config.with_options(
            **options.extra, swift_segment_readers="1"), upstream=g.url, file_roots=""))
        headers = g.headers()
        path = f"/v2/images/{image_id}/file"
        token = swift.token()
        plain_url = f"{swift.storage_url}/glance-plain/{image_id}"
        runs: dict[str, Callable[[], float]] = {
            "lp_dlo": ctx.one(sidecar.url + path + "?prefer=swift1", size, headers, cpu="locproxy DLO",
                              pids=ctx.pids_of(sidecar)),
            "glance_dlo": ctx.one(g.url + path + "?prefer=swift1", size, headers, cpu="Glance DLO",
                                  pids=ctx.pids_of(g)),
            "direct_dlo": lambda: _parallel_segments(swift, segments, token, size),
            "lp_one_get": ctx.one(one_get.url + path + "?prefer=swift1", size, headers),
            "lp_plain": ctx.one(sidecar.url + path + "?prefer=swift2", size, headers),
            "direct_plain": lambda: measure.curl(plain_url, {"X-Auth-Token": token, "Range": f"bytes=0-{size - 1}"},
                                                 expect_size=size, expect_status=206).mib_s,
        }
        for name in ("lp_dlo", "lp_plain", "lp_one_get"):
            for _ in range(ctx.config.workers * 3):
                runs[name]()  # every worker verifies the copy and logs in once
        manifest = measure.curl(f"{swift.storage_url}/glance/{image_id}", {"X-Auth-Token": token},
                                expect_size=size).mib_s
        mark = ctx.log_mark(sidecar)
        results = alternate(ctx.sizes.reps, runs)
        served = _served(sidecar.log()[mark:], image_id)
        logins = len(re.findall("new Keystone token for the swift reader", sidecar.log()))
    notes = [f"lab: Ceph radosgw (beast) speaking Swift, Keystone v3 trust; Glance 33 swift stores, DLO segments of "
             f"{SEGMENT:,} bytes ({size // SEGMENT} of them); timed locproxy downloads: {served}; Keystone logins "
             f"of the sidecar in the whole row: {logins}",
             f"a direct GET of the DLO manifest (radosgw joins the segments): {manifest:,.0f} MiB/s",
             ctx.cpu_note("locproxy DLO", "Glance DLO")]
    return [
        throughput(names["glance_dlo"], results["lp_dlo"], results["glance_dlo"], "Glance /file?prefer=swift1",
                   TARGETS["glance_dlo"], notes),
        throughput(names["direct_dlo"], results["lp_dlo"], results["direct_dlo"],
                   f"direct read of the segments, {PARALLEL} in parallel", TARGETS["direct_dlo"]),
        throughput(names["direct_plain"], results["lp_plain"], results["direct_plain"],
                   "curl ranged GET with a kept token", TARGETS["direct_plain"]),
        throughput(names["one_get"], results["lp_one_get"], results["glance_dlo"], "Glance /file?prefer=swift1",
                   None),
    ]


def _parallel_segments(swift: Any, segments: list[str], token: str, size: int) -> float:
    """Whole segments on ``PARALLEL`` kept connections, 1 MiB reads: MiB/s."""
    received = [0] * PARALLEL
    errors: list[str] = []

    def read(worker: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", swift.port, timeout=60)
        try:
            for segment in segments[worker::PARALLEL]:
                connection.request("GET", f"/swift/v1/AUTH_{swift.project_id}{segment}",
                                   headers={"X-Auth-Token": token})
                response = connection.getresponse()
                if response.status != 200:
                    errors.append(f"{segment}: HTTP {response.status}")
                while chunk := response.read(MiB):
                    received[worker] += len(chunk)
        finally:
            connection.close()

    threads = [threading.Thread(target=read, args=(worker,)) for worker in range(PARALLEL)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    if errors or sum(received) != size:
        raise measure.BenchError(f"direct segment read: {sum(received)} bytes of {size}; {errors[:2]}")
    return size / MiB / seconds


def _served(text: str, image_id: str) -> str:
    lines = re.findall(rf"image {image_id}: bytes \d+-\d+ sent from (\S+) \(([^)]*)\)$", text, re.M)
    counts: dict[str, int] = {}
    for source, how in lines:
        counts[f"{source} ({how})"] = counts.get(f"{source} ({how})", 0) + 1
    return ", ".join(f"{count} from {what}" for what, count in counts.items()) or "none seen in the log"


def _names(size: int) -> dict[str, str]:
    name = human(size)
    return {
        "glance_dlo": f"{name}, swift DLO copy via locproxy (verified before) vs Glance's own /file for it",
        "direct_dlo": f"{name}, swift DLO copy via locproxy vs a direct parallel read of its segments",
        "direct_plain": f"{name}, swift plain object via locproxy vs a direct ranged GET",
        "one_get": f"{name}, swift DLO copy via locproxy, ``swift_segment_readers = 1`` (one GET, radosgw joins)",
    }


def _skipped(names: dict[str, str], reason: str) -> list[Result]:
    log(f"row swift skipped: {reason}")
    return [Result(name, "skipped", "—", "—", f"≥ {TARGETS[kind]:g} × the peer" if kind in TARGETS else "(info)",
                   "n/a", [reason] if i == 0 else []) for i, (kind, name) in enumerate(names.items())]


ROW = Row("swift", "Glance's /file for the same swift copies, and direct reads of the objects on radosgw",
          "≥ 1.5 × Glance and ≥ 0.9 × a direct parallel segment read (DLO); ≥ 0.9 × a direct GET (plain)",
          measure_swift, lambda sizes: [(file_name(image_size(sizes)), image_size(sizes))], glance=True)
