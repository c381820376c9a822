"""Row ``promote``: bytes over the non-local link with promotion into the
site's rbd store (issue 22), and the speed of downloads once promoted.

The Glance peer restarts with the stores of a single-node Ceph lab (started
for the row). An image of 256 MiB is at first only in Glance's ``web``
store (http, the lab's loopback server, standing in for another site):
every GET of it there is counted, by its bytes. Two sidecars (two nodes of
one site, each its own ``metrics_file``) with ``local_stores = ceph1``,
``promote_after = 2`` and local copies first serve 20 downloads of it, in
turn, back to back (a boot storm; none waits for the copy). Measured: the
bytes read from the web copy (the sidecars' and Glance's own copy), against
the same 20 downloads of a twin image through two sidecars with
``promote = off``, in the same run. The same storms again with
``cache_dir`` on each sidecar (the realistic site: a cache per machine,
whose hits count towards ``promote_after`` too), against two sidecars with
their caches and ``promote = off``; after each of those, a third node with
a cold cache downloads the image once (what its fill reads over the link:
the payoff of the copy). Then downloads through a sidecar of
the promoted image (its rbd copy) alternate with raw librbd reads of it.

The service identity is keystoneauth1's ``admin_token`` plugin with a lab
token (the Glance lab trusts it; no Keystone here).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from typing import Any

from bench import measure
from bench.context import Context
from bench.images import MiB, file_name, human
from bench.measure import alternate
from bench.progress import log
from bench.results import Result, throughput
from bench.row import Row
from bench.rows.ceph import image_size  # the ceph row's image: the same lab

DOWNLOADS = 20
PACE = 1.0  # seconds between download starts in the paced storm
TARGET_LINK = 5.0  # × the image size: each sidecar's threshold downloads plus the one copy
TARGET_SPEED = 0.9  # × raw librbd, as the ceph row
PEER = "promote = off"
CACHED_PEER = "promote = off, cache_dir on each"


def measure_promote(ctx: Context) -> list[Result]:
    size = image_size(ctx.sizes)
    names = _names(size)
    if ctx.glance.server is None:
        return _skipped(names, f"no Glance peer: {ctx.glance.reason}")
    from tests.support import ceph
    from tests.support.glance.ceph_stores import ceph_stores

    with contextlib.ExitStack() as stack:
        try:
            lab = stack.enter_context(ceph.ceph_cluster(ctx.work / "ceph-lab-promote"))
            rados, rbd = ceph.import_bindings()
        except ceph.CephUnavailable as error:
            return _skipped(names, f"no Ceph lab: {error.reason}")
        g = ctx.glance.server
        stack.enter_context(ceph_stores(g, lab))
        image = ctx.image(size)
        run = _Run(ctx, g, lab, image, stack)
        promoted = run.storm("promoted", promote="auto")
        paced = run.storm("paced", promote="auto", pace=PACE)
        prewarmed = run.storm("prewarmed", promote="auto", prewarm=True)
        plain = run.storm("plain", promote="off")
        cached = run.storm("cached", promote="auto", cache=True)
        cached_paced = run.storm("cached-paced", promote="auto", pace=PACE, cache=True)
        cached_plain = run.storm("cached-plain", promote="off", cache=True)
        cluster = rados.Rados(conffile=str(lab.conf))
        cluster.connect(timeout=10)
        stack.callback(cluster.shutdown)
        speeds = run.speeds(promoted, cluster, rbd)
    notes = [f"with promotion: {promoted['note']}", f"paced: {paced['note']}", f"pre-warmed: {prewarmed['note']}",
             f"without: {plain['note']}",
             "the image is on the web store only; sidecars alternate; no download waits for the copy; every byte "
             "counted from the web server's own request log"]
    cache_notes = [f"with promotion: {cached['note']}", f"paced: {cached_paced['note']}",
                   f"caches, promote = off: {cached_plain['note']}",
                   f"without caches or promotion: {plain['bytes'] / size:.2f} × the image"]
    return [_link(names["link"], promoted, plain, size, notes), _link(names["paced"], paced, plain, size, []),
            _link(names["prewarmed"], prewarmed, plain, size, []),
            _link(names["cached"], cached, cached_plain, size, cache_notes, CACHED_PEER),
            _link(names["cached_paced"], cached_paced, cached_plain, size, [], CACHED_PEER),
            throughput(names["speed"], speeds["lp"], speeds["raw"], "raw librbd, 4 MiB sequential reads",
                             TARGET_SPEED, [f"timed locproxy downloads: {speeds['paths']}"])]


def _names(size: int) -> dict[str, str]:
    storm = f"{human(size)}, bytes read from the non-local copy over {DOWNLOADS} downloads from 2 sidecars, promote_after = 2"
    return {"link": f"{storm}, back to back", "paced": f"{storm}, one download started every {PACE:g} s",
            "prewarmed": f"{storm}, back to back after `locproxy promote`",
            "cached": f"{storm}, cache_dir on each sidecar, back to back",
            "cached_paced": f"{storm}, cache_dir on each sidecar, one download started every {PACE:g} s",
            "speed": f"{human(size)}, promoted rbd:// copy via locproxy vs raw librbd"}


def _link(name: str, storm: dict[str, Any], plain: dict[str, Any], size: int, notes: list[str],
          peer: str = PEER) -> Result:
    ratio = storm["bytes"] / size
    return Result(name, f"{ratio:.2f} × the image ({storm['bytes'] / MiB:,.0f} MiB)",
                  f"{peer}: {plain['bytes'] / size:.2f} × ({plain['bytes'] / MiB:,.0f} MiB)",
                  f"{storm['bytes'] / max(plain['bytes'], 1):.2f}", f"≤ {TARGET_LINK:g} × the image size",
                  "yes" if ratio <= TARGET_LINK else "**no**", notes)


class _Run:
    """Images, sidecars and downloads of the row."""

    def __init__(self, ctx: Context, g: Any, lab: Any, image: Any, stack: contextlib.ExitStack) -> None:
        self.ctx, self.g, self.lab, self.image, self.stack = ctx, g, lab, image, stack

    def web_image(self, label: str) -> tuple[str, str]:
        """A Glance image whose only copy is a file on the web store; (id, web path)."""
        g = self.g
        created = g.request("POST", "/v2/images", json_body={"name": f"bench-promote-{label}", "disk_format": "raw",
                                                             "container_format": "bare", "visibility": "public"})
        image_id = created.json()["id"]
        name = f"{image_id}.raw"
        shutil.copyfile(self.image.path, g.web.root / name)
        g.add_location_api(image_id, f"{g.web.url}/{name}", timeout=600,
                           validation_data={"os_hash_algo": "sha512", "os_hash_value": self.image.sha512})
        return image_id, f"/{name}"

    def sidecars(self, label: str, promote: str, cache: bool, names: tuple[str, ...] = ("a", "b")) -> list[Any]:
        """Nodes of one site: each its own metrics_file and, with ``cache``, its own cache_dir."""
        lab, g = self.lab, self.g
        options = self.ctx.config.with_options(**{
            **self.ctx.config.extra, "location_strategy": "weight", "store_weights": "ceph1:100, web:1",
            "rbd_clusters": f"{lab.fsid}:{lab.conf}", "allowed_hosts": f"127.0.0.1:{g.web.port}",
            "local_stores": "ceph1", "promote": promote, "promote_after": "2", "promote_poll_interval": "0.5",
            "service_auth_type": "admin_token", "service_endpoint": g.url, "service_token": g.token()})
        found = []
        for node in names:
            extra = {"metrics_file": str(self.ctx.work / f"promote-{label}-{node}.sqlite")}
            if cache:
                cache_dir = self.ctx.work / f"promote-{label}-{node}-cache"
                cache_dir.mkdir()
                self.stack.callback(shutil.rmtree, cache_dir, True)  # after the sidecar stops (LIFO)
                extra |= {"cache_dir": str(cache_dir), "cache_max_size": str(2 * self.image.size)}
            found.append(self.stack.enter_context(self.ctx.start_sidecar(
                f"promote-{label}-{node}", options.with_options(**options.extra, **extra), upstream=g.url,
                file_roots="", env={"PYTHONPATH": _bindings()})))
        return found

    def storm(self, label: str, promote: str, pace: float = 0.0, prewarm: bool = False,
              cache: bool = False) -> dict[str, Any]:
        g, size = self.g, self.image.size
        image_id, path = self.web_image(label)
        nodes = self.sidecars(label, promote, cache)
        mark = len(g.web.requests)
        log_marks = [len(node.log()) for node in nodes]
        warmed = _prewarm(g, image_id) if prewarm else ""
        started = time.monotonic()
        local_at = None
        for index in range(DOWNLOADS):
            time.sleep(max(0.0, started + index * pace - time.monotonic()))
            measure.curl(f"{nodes[index % 2].url}/v2/images/{image_id}/file", g.headers(), expect_size=size)
            if local_at is None and "ceph1" in g.get_image(image_id)["stores"].split(","):
                local_at = index + 1
        seconds = time.monotonic() - started  # the downloads only, not the wait for the copy below
        if promote == "auto":
            deadline = time.monotonic() + 600
            while "ceph1" not in g.get_image(image_id)["stores"].split(",") and time.monotonic() < deadline:
                time.sleep(0.5)
            g.wait_tasks(image_id, timeout=600)
        read = _bytes_read(g.web.requests[mark:], path, size)
        copy = _copy_seconds(g, image_id)
        time.sleep(1.0)  # the last download's log line is written as its response closes
        sources = [found for node, at in zip(nodes, log_marks)
                   for found in re.findall(r"bytes \d+-\d+ sent from (\S+)", node.log()[at:])]
        note = (warmed + f"{read / size:.2f} × the image read from the web copy; {DOWNLOADS} downloads in {seconds:.0f} s "
                f"(served: {_served(sources)}); "
                + (f"Glance's copy task took {copy:.0f} s; " if copy is not None else "")
                + (f"Glance listed ceph1 after download {local_at}" if local_at else "ceph1 never listed during "
                   "the downloads"))
        if cache:
            note += "; " + self.joining(label, promote, image_id, path)
        log(f"promote row, {label}: {note}")
        return {"bytes": read, "note": note, "image": image_id, "nodes": nodes}

    def joining(self, label: str, promote: str, image_id: str, path: str) -> str:
        """A third node of the site, its cache cold, downloads the image once
        after the storm: what its fill reads over the link."""
        g, size = self.g, self.image.size
        node = self.sidecars(label, promote, True, names=("c",))[0]
        mark, at = len(g.web.requests), len(node.log())
        measure.curl(f"{node.url}/v2/images/{image_id}/file", g.headers(), expect_size=size)
        time.sleep(1.0)  # the fill's reads are over once it commits, just after the download
        read = _bytes_read(g.web.requests[mark:], path, size)
        fills = re.findall(r"bytes \d+-\d+ read into the site cache from (\S+)", node.log()[at:])
        return (f"then a third node's first download read {read / size:.2f} × the image from the web copy "
                f"(its cache filled from {', '.join(fills) or 'unknown'})")

    def speeds(self, promoted: dict[str, Any], cluster: Any, rbd: Any) -> dict[str, Any]:
        size, image_id, node = self.image.size, promoted["image"], promoted["nodes"][0]
        url = f"{node.url}/v2/images/{image_id}/file"

        def raw() -> float:
            began = time.perf_counter()
            with cluster.open_ioctx(self.lab.pool) as ioctx, rbd.Image(ioctx, image_id, snapshot="snap",
                                                                        read_only=True) as rbd_image:
                for offset in range(0, size, 4 * MiB):
                    rbd_image.read(offset, min(4 * MiB, size - offset))
            return size / MiB / (time.perf_counter() - began)

        mark = len(node.log())
        found = alternate(self.ctx.sizes.reps, {"lp": self.ctx.one(url, size, self.g.headers()), "raw": raw})
        time.sleep(1.0)  # the last download's log line is written as its response closes
        sources = re.findall(r"bytes \d+-\d+ sent from (\S+)", node.log()[mark:])
        found["paths"] = _served(sources)
        return found


def _served(sources: list[str]) -> str:
    return ", ".join(f"{sources.count(s)} from {s}" for s in sorted(set(sources))) or "unknown"


def _prewarm(g: Any, image_id: str) -> str:
    """``locproxy promote IMAGE --to ceph1`` (the operators' command), timed."""
    import os
    import subprocess
    import sys

    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "locproxy.cli", "promote", image_id, "--to", "ceph1", "--url", g.url,
                           "--poll-interval", "0.5"], env={**os.environ, "OS_AUTH_TOKEN": g.token()},
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise measure.BenchError(f"locproxy promote: exit {done.returncode}: {done.stderr[-300:]}")
    return f"locproxy promote took {time.monotonic() - began:.0f} s ({done.stdout.strip()}); "


def _copy_seconds(g: Any, image_id: str) -> float | None:
    """How long Glance's copy task ran (its created_at to updated_at), if there was one."""
    from datetime import datetime

    tasks = [task for task in g.get_json(f"/v2/images/{image_id}/tasks")["tasks"] if task["type"] == "api_image_import"]
    if not tasks:
        return None
    stamps = [datetime.fromisoformat(tasks[0][key].replace("Z", "+00:00")) for key in ("created_at", "updated_at")]
    return (stamps[1] - stamps[0]).total_seconds()


def _bindings() -> str:
    from tests.support import ceph

    return str(ceph.bindings_dir())


def _bytes_read(requests: list[tuple[str, str, str | None]], path: str, size: int) -> int:
    """Bytes the web server sent for ``path``: whole GETs and Ranges."""
    total = 0
    for method, seen, range_header in requests:
        if method != "GET" or seen != path:
            continue
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header or "")
        if match is None:
            total += size
        elif match.group(1):
            total += min(int(match.group(2) or size - 1), size - 1) - int(match.group(1)) + 1
        else:
            total += min(int(match.group(2)), size)
    return total


def _skipped(names: dict[str, str], reason: str) -> list[Result]:
    log(f"row promote skipped: {reason}")
    return [Result(names["link"], "skipped", "—", "—", f"≤ {TARGET_LINK:g} × the image size", "n/a", [reason]),
            Result(names["paced"], "skipped", "—", "—", f"≤ {TARGET_LINK:g} × the image size", "n/a"),
            Result(names["prewarmed"], "skipped", "—", "—", f"≤ {TARGET_LINK:g} × the image size", "n/a"),
            Result(names["cached"], "skipped", "—", "—", f"≤ {TARGET_LINK:g} × the image size", "n/a"),
            Result(names["cached_paced"], "skipped", "—", "—", f"≤ {TARGET_LINK:g} × the image size", "n/a"),
            Result(names["speed"], "skipped", "—", "—", f"≥ {TARGET_SPEED:g} × raw librbd", "n/a")]


ROW = Row("promote", "the same downloads with promote = off; raw librbd for the promoted copy",
          f"≤ {TARGET_LINK:g} × the image over the non-local link; ≥ {TARGET_SPEED:g} × raw librbd after", measure_promote,
          lambda sizes: [(file_name(image_size(sizes)), image_size(sizes))], glance=True)
