"""Row ``ceph``: the rbd and s3 copies a real Glance 33 wrote on a
single-node Ceph lab, read through locproxy, against the limits of the same
cluster and against Glance's own ``/file`` for the same copies.

The lab (``tests/support/ceph.py``: mon, BlueStore OSD on a sparse file,
radosgw; apt-get installed as root when missing) starts for this row; the
Glance peer restarts with its ``ceph1`` (rbd) and ``s3`` stores on it; one
image is uploaded to ``fs1`` and copied by Glance (``copy-image``) to both.
A sidecar (``ctx.config``) in front of that Glance reads them itself
(``rbd_clusters``, ``s3_credentials``), rbd first; ``?prefer=s3`` makes it
read the s3 copy. Peers, interleaved with locproxy in every repetition:

* rbd: raw librbd from Python (the ``rbd`` binding, 4 MiB sequential reads of
  the snapshot, one at a time: what a hand-written client does), and
  Glance's ``/file?prefer=ceph1``;
* s3: curl's own SigV4 ranged GET of the object from radosgw (the same
  client as for locproxy), and Glance's ``/file?prefer=s3``.

locproxy's downloads are repeats of a copy verified before (a snapshot and
an ETag'd object keep their identity); each worker's first, verified
download is in the notes. Which backend served is checked once, untimed,
with the lab's read counters, and for every timed download from locproxy's
log. Skipped with the reason where the lab cannot run or no Glance peer is
cached. Folded in from the former ``bench/ceph_baseline.py``.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from typing import Any, Callable

from bench import glance, measure
from bench.context import Context
from bench.images import GiB, MiB, file_name, human
from bench.measure import alternate
from bench.progress import log
from bench.results import Result, throughput
from bench.row import Row
from bench.settings import Sizes

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
TARGETS = {"raw": 0.9, "glance_rbd": 1.5, "direct_s3": 0.9, "glance_s3": 1.0}


def image_size(sizes: Sizes) -> int:
    return min(256 * MiB, sizes.big)


def measure_ceph(ctx: Context) -> list[Result]:
    size = image_size(ctx.sizes)
    names = _names(size)
    if ctx.glance.server is None:
        return _skipped(names, f"no Glance peer: {ctx.glance.reason}")
    try:
        from tests.support import ceph
        from tests.support.glance.config import ceph_store_overrides
    except ImportError as error:
        return _skipped(names, f"the Ceph lab is not importable ({error})")
    with contextlib.ExitStack() as stack:
        try:
            started = time.monotonic()
            lab = stack.enter_context(ceph.ceph_cluster(ctx.work / "ceph-lab"))
            rados, rbd = ceph.import_bindings()
        except ceph.CephUnavailable as error:
            return _skipped(names, f"no Ceph lab: {error.reason}")
        log(f"Ceph lab {lab.fsid} up ({time.monotonic() - started:.0f}s)")
        g = ctx.glance.server
        access, secret = lab.s3_keys()
        g.extra_pythonpath = [str(ceph.bindings_dir())]
        stack.callback(setattr, g, "extra_pythonpath", [])
        stack.enter_context(g.config_overrides(ceph_store_overrides(
            ceph_conf=lab.conf, pool=lab.pool, rgw_endpoint=lab.rgw_endpoint, access_key=access, secret_key=secret)))
        image = ctx.image(size)
        image_id = glance.upload(g, image)
        started = time.monotonic()
        for store in ("ceph1", "s3"):
            g.copy_to_store(image_id, store, timeout=900)
        log(f"Glance copied {human(size)} to ceph1 and s3 in {time.monotonic() - started:.0f}s")

        cluster = rados.Rados(conffile=str(lab.conf))
        cluster.connect(timeout=10)
        stack.callback(cluster.shutdown)

        def raw_librbd() -> float:
            began = time.perf_counter()
            with cluster.open_ioctx(lab.pool) as ioctx, rbd.Image(ioctx, image_id, snapshot="snap",
                                                                   read_only=True) as rbd_image:
                for offset in range(0, size, 4 * MiB):
                    rbd_image.read(offset, min(4 * MiB, size - offset))
            return size / MiB / (time.perf_counter() - began)

        options = ctx.config.with_options(**{
            **ctx.config.extra, "location_strategy": "store_type", "store_type_preference": "rbd, s3, file",
            "rbd_clusters": f"{lab.fsid}:{lab.conf}", "allowed_hosts": lab.rgw_host,
            "s3_credentials": f"{lab.rgw_host}={access}:{secret}", "s3_default_scheme": "http"})
        sidecar = stack.enter_context(ctx.start_sidecar("ceph", options, upstream=g.url, file_roots="",
                                                        env={"PYTHONPATH": str(ceph.bindings_dir())}))
        headers = g.headers()
        path = f"/v2/images/{image_id}/file"
        urls = {"lp_rbd": sidecar.url + path, "lp_s3": sidecar.url + path + "?prefer=s3",
                "glance_rbd": g.url + path + "?prefer=ceph1", "glance_s3": g.url + path + "?prefer=s3"}
        direct_s3 = f"{lab.rgw_endpoint}/glance/{image_id}"
        sigv4 = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{access}:{secret}"]
        # curl's SigV4 signs x-amz-content-sha256 only when given: the empty payload's hash, as botocore does.
        range_header = {"Range": f"bytes=0-{size - 1}", "x-amz-content-sha256": EMPTY_SHA256}

        def ceph_pids() -> list[int]:  # what serves an S3 GET: radosgw and the OSD
            return [pid for name in (ceph.RGW_NAME, ceph.OSD_NAME) if (pid := lab.pid(name)) is not None]

        def direct() -> float:
            return measure.curl(direct_s3, range_header, expect_size=size, args=sigv4, expect_status=206).mib_s

        served = _check_served(lab, urls, headers, size, direct)
        first = {kind: _prime(ctx, sidecar, urls[kind], headers, size) for kind in ("lp_rbd", "lp_s3")}
        mark = ctx.log_mark(sidecar)
        results = alternate(ctx.sizes.reps, {
            "lp_rbd": ctx.one(urls["lp_rbd"], size, headers, cpu="locproxy rbd", pids=ctx.pids_of(sidecar)),
            "raw": raw_librbd,
            "glance_rbd": ctx.one(urls["glance_rbd"], size, headers, cpu="Glance rbd", pids=ctx.pids_of(g)),
            "lp_s3": _cpu_of(ctx, "radosgw + OSD behind locproxy", ceph_pids, size, ctx.one(
                urls["lp_s3"], size, headers, cpu="locproxy s3", pids=ctx.pids_of(sidecar))),
            "direct_s3": _cpu_of(ctx, "radosgw + OSD (direct)", ceph_pids, size, direct),
            "glance_s3": ctx.one(urls["glance_s3"], size, headers, cpu="Glance s3", pids=ctx.pids_of(g)),
        })
        paths = _paths(sidecar.log()[mark:], lab)
    common = [f"lab: Ceph {_ceph_version()}, one BlueStore OSD on a sparse file, radosgw (beast); "
              f"Glance rbd_store_chunk_size 4 MiB; copies checked once with the lab's read counters: {served}"]
    return [
        throughput(names["raw"], results["lp_rbd"], results["raw"], "raw librbd, 4 MiB sequential reads (Python)",
                   TARGETS["raw"], [*common, f"timed locproxy downloads: {paths['rbd']}",
                                    f"first downloads, sha512 verified while streaming (one per worker that served one): {_speeds(first['lp_rbd'])}",
                                    ctx.cpu_note("locproxy rbd", "Glance rbd")]),
        throughput(names["glance_rbd"], results["lp_rbd"], results["glance_rbd"], "Glance /file?prefer=ceph1",
                   TARGETS["glance_rbd"]),
        throughput(names["direct_s3"], results["lp_s3"], results["direct_s3"],
                   "curl SigV4 ranged GET from radosgw", TARGETS["direct_s3"],
                   [f"timed locproxy downloads: {paths['s3']}",
                    f"first downloads, sha512 verified while streaming (one per worker that served one): {_speeds(first['lp_s3'])}",
                    ctx.cpu_note("locproxy s3", "radosgw + OSD behind locproxy", "radosgw + OSD (direct)",
                                 "Glance s3")]),
        throughput(names["glance_s3"], results["lp_s3"], results["glance_s3"], "Glance /file?prefer=s3",
                   TARGETS["glance_s3"]),
    ]


def _cpu_of(ctx: Context, label: str, pids: Callable[[], list[int]], size: int,
            run: Callable[[], float]) -> Callable[[], float]:
    """``run``, with the CPU seconds per GiB ``pids`` spent on it recorded under ``label``."""
    def timed() -> float:
        group = pids()
        before = measure.cpu_seconds(group)
        speed = run()
        ctx.cpu.setdefault(label, []).append((measure.cpu_seconds(group) - before) / (size / GiB))
        return speed
    return timed


def _names(size: int) -> dict[str, str]:
    name = human(size)
    return {
        "raw": f"{name}, rbd:// copy via locproxy (sidecar, verified before) vs raw librbd",
        "glance_rbd": f"{name}, rbd:// copy via locproxy vs Glance's own /file for it",
        "direct_s3": f"{name}, s3:// copy (radosgw) via locproxy (verified before) vs a direct ranged GET",
        "glance_s3": f"{name}, s3:// copy via locproxy vs Glance's own /file for it",
    }


def _skipped(names: dict[str, str], reason: str) -> list[Result]:
    log(f"row ceph skipped: {reason}")
    return [Result(name, "skipped", "—", "—", f"≥ {TARGETS[kind]:g} × the peer", "n/a", [reason] if i == 0 else [])
            for i, (kind, name) in enumerate(names.items())]


def _check_served(lab: Any, urls: dict[str, str], headers: dict[str, str], size: int,
                  direct: Callable[[], float]) -> str:
    """One untimed download each, with the OSD's and radosgw's read counters:
    rbd reads raise the OSD's only, s3 reads radosgw's too."""
    checks = {"locproxy rbd": lambda: measure.curl(urls["lp_rbd"], headers, expect_size=size),
              "Glance ?prefer=ceph1": lambda: measure.curl(urls["glance_rbd"], headers, expect_size=size),
              "locproxy s3": lambda: measure.curl(urls["lp_s3"], headers, expect_size=size),
              "Glance ?prefer=s3": lambda: measure.curl(urls["glance_s3"], headers, expect_size=size),
              "direct s3": direct}
    found = []
    for label, run in checks.items():
        osd, rgw = lab.osd_read_bytes(), lab.rgw_read_bytes()
        run()
        osd, rgw = lab.osd_read_bytes() - osd, lab.rgw_read_bytes() - rgw
        backend = "s3" if rgw >= size - 1 else "rbd" if osd >= size else "neither"
        wanted = "s3" if "s3" in label else "rbd"
        if backend != wanted:
            raise measure.BenchError(f"{label}: served by {backend} (OSD +{osd}, radosgw +{rgw}), not {wanted}")
        found.append(f"{label} from {backend} (OSD +{osd / MiB:.0f} MiB, radosgw +{rgw / MiB:.0f} MiB)")
    return "; ".join(found)


def _prime(ctx: Context, sidecar: Any, url: str, headers: dict[str, str], size: int) -> list[float]:
    """Downloads until every worker has verified the copy (each worker keeps
    its own memory without metrics_file); the speeds of those that were
    verified (sha512 hashed while streaming), from the log line of each."""
    mark = ctx.log_mark(sidecar)
    speeds = [measure.curl(url, headers, expect_size=size).mib_s for _ in range(ctx.config.workers * 3)]
    hows = re.findall(r"bytes \d+-\d+ sent from \S+ \(([^)]*)\)$", sidecar.log()[mark:], re.M)
    return [speed for speed, how in zip(speeds, hows) if how == "sha512 verified"]


def _paths(text: str, lab: Any) -> dict[str, str]:
    lines = re.findall(r"bytes \d+-\d+ sent from (\S+) \(([^)]*)\)$", text, re.M)
    found = {}
    for kind, label in (("rbd", f"rbd://{lab.fsid}"), ("s3", f"s3://{lab.rgw_host}")):
        hows = [how for source, how in lines if source == label]
        others = [source for source, _ in lines if source.split("://")[0] == kind and source != label]
        found[kind] = (f"{len(hows)} from {label} ({', '.join(sorted(set(hows)))})"
                       + (f", {len(others)} from elsewhere" if others else ""))
    return found


def _speeds(values: list[float]) -> str:
    return ", ".join(f"{value:,.0f} MiB/s" for value in values) if values else "none seen in the log"


def _ceph_version() -> str:
    try:
        out = subprocess.run(["ceph", "--version"], capture_output=True, text=True, timeout=30).stdout
        return out.split()[2] if out.startswith("ceph version") else "?"
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


ROW = Row("ceph", "raw librbd / a direct S3 GET on the same cluster, and Glance's /file for the same copies",
          "≥ 0.9 × raw librbd, ≥ 1.5 × Glance (rbd); ≥ 0.9 × direct GET, ≥ 1.0 × Glance (s3)", measure_ceph,
          lambda sizes: [(file_name(image_size(sizes)), image_size(sizes))], glance=True)
