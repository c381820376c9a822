"""Fault table rows: the site cache on real file systems that fail under it
(as root; ``tests.support.filesystems``), on a two-worker sidecar.

* its ext4 (``errors=remount-ro``) meets an error and goes read-only while
  it serves;
* its tmpfs is full;
* a committed entry rots on ext4 (inode and times untouched) and another
  sidecar's scrub finds it while this one reads it.

Each row: every download is the exact 200 the same sidecar gives without a
cache (status, length, type, bytes), ``/healthcheck`` and the error metric
say the cache is aside, and no request of a client is dropped.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tests.support import filesystems
from tests.support.client import Fetched, fetch
from tests.support.faults.lab import DATA, FaultLab, Scenarios

ROWS = Scenarios()
scenario = ROWS.row


@contextmanager
def cache_sidecar(lab: FaultLab, cache_dir: Path, **options: Any) -> Iterator[Any]:
    """Two workers with the site cache in ``cache_dir``, ``/healthcheck``
    and ``/metrics`` summed over both workers (PROMETHEUS_MULTIPROC_DIR)."""
    cache_dir.mkdir(exist_ok=True)
    counters = lab.base / f"prometheus-{os.urandom(3).hex()}"
    counters.mkdir()
    with lab.private_sidecar(workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(counters)}, cache_dir=cache_dir,
                             cache_max_size=options.pop("cache_max_size", "1G"), healthcheck_path="/healthcheck",
                             metrics_path="/metrics", **options) as sidecar:
        yield sidecar


def download(sidecar: Any, image_id: str) -> Fetched:
    return fetch(sidecar.port, f"/v2/images/{image_id}/file", timeout=30)


def as_without_cache(lab: FaultLab, result: Fetched, image_id: str) -> bool:
    """The same answer as the lab's sidecar, which has no cache: status,
    length, type and the image's exact bytes."""
    plain = lab.download(image_id)
    same = [(r.status, r.complete, r.header("content-length"), r.header("content-type")) for r in (result, plain)]
    return same[0] == same[1] and result.body == plain.body == DATA


def health(sidecar: Any, count: int = 6) -> list[dict]:
    """``count`` answers of /healthcheck (each from either worker)."""
    return [fetch(sidecar.port, "/healthcheck", timeout=10).json() for _ in range(count)]


def cache_errors(sidecar: Any) -> float:
    text = fetch(sidecar.port, "/metrics").body.decode()
    found = re.search(r'^locproxy_cache_events_total\{event="error"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def committed(sidecar: Any, count: int = 1) -> None:
    log = sidecar.log_after(r"cache entry \w+ committed", count)
    assert len(re.findall(r"cache entry \w+ committed", log)) >= count, log[-3000:]


def check_aside(lab: FaultLab, sidecar: Any, downloads: list[tuple[str, Fetched]]) -> tuple[int, float, set[str]]:
    """Every download as without the cache; /healthcheck degraded with the
    cache aside in every answer; the error metric counted; nothing dropped."""
    for image_id, result in downloads:
        assert as_without_cache(lab, result, image_id), result.describe()
    answers = health(sidecar)
    states = {answer["status"] for answer in answers}
    assert states == {"degraded"}, answers
    assert all("aside" in answer["cache"].get("state", "") for answer in answers), answers
    errors = cache_errors(sidecar)
    assert errors >= 1, "the cache's errors are counted"
    log = sidecar.log()
    assert "Socket error" not in log and "Traceback" not in log, log[-3000:]
    return len(answers), errors, states


@scenario("site cache", "its ext4 meets an error and goes read-only while serving (errors=remount-ro)")
def _cache_disk_read_only(lab: FaultLab) -> tuple[str, str]:
    web = lab.backend()
    cached, others = lab.image(lab.web(web)), [lab.image(lab.web(web)) for _ in range(4)]
    with filesystems.ext4(lab.base) as disk, cache_sidecar(lab, disk.path / "cache") as sidecar:
        assert as_without_cache(lab, download(sidecar, cached), cached)
        committed(sidecar)
        how = filesystems.read_only(disk)
        first = health(sidecar)  # before any download meets it
        assert {answer["status"] for answer in first} == {"degraded"}, first
        results = [(image_id, download(sidecar, image_id)) for image_id in others + [cached] * 4]
        answers, errors, _states = check_aside(lab, sidecar, results)
    return (f"file system made read-only by {how}; 200 as without the cache, {len(results)}/{len(results)} "
            f"(4 images never cached, 4 hits of one cached before); /healthcheck degraded, cache aside "
            f"({answers}/{answers} answers, the first ones before any download met it); cache error metric {errors:.0f}",
            f"sha512 ✓ ({len(results)} downloads)")


@scenario("site cache", "its tmpfs is full")
def _cache_disk_full(lab: FaultLab) -> tuple[str, str]:
    web = lab.backend()
    images = [lab.image(lab.web(web)) for _ in range(6)]
    with filesystems.tmpfs(lab.base, "8m") as disk, cache_sidecar(lab, disk.path / "cache") as sidecar:
        health(sidecar, 2)  # both workers have opened the cache (its index made)
        filesystems.fill_up(disk.path)
        results = [(image_id, download(sidecar, image_id)) for image_id in images]
        time.sleep(0.5)  # the fillers have met the full disk
        answers, errors, _states = check_aside(lab, sidecar, results)
        left = os.listdir(disk.path / "cache" / "fills")
    assert left == [], f"no fill left behind: {left}"
    return (f"200 as without the cache, {len(results)}/{len(results)}; no fill left; /healthcheck degraded, "
            f"cache aside ({answers}/{answers} answers); cache error metric {errors:.0f}",
            f"sha512 ✓ ({len(results)} downloads)")
