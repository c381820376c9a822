"""Fault table rows: copies whose bytes change while their identity (inode,
size, times) does not, on real file systems (as root;
``tests.support.filesystems``), read by two-worker sidecars sharing a
``metrics_file``.

* bytes rot under ext4 (the loop device written, inode and times exactly as
  they were), read by every worker and after a restart;
* a same-size rewrite within one second on ext4 with 1 s timestamps;
* a copy one sidecar found bad while another, sharing its metrics_file,
  had read it good before.

The promise of every row: never a complete body with wrong bytes; the
image's exact bytes from the next copy (or the image API's own /file), and
an ERROR naming the copy whose block was refused.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from locproxy.demo import location
from tests.support import filesystems
from tests.support.client import Fetched, fetch
from tests.support.faults.lab import BLOCK_REFUSED, DATA, FaultLab, Scenarios
from tests.support.faults.sidecars import counted_sidecar, from_every_worker

ROWS = Scenarios()
scenario = ROWS.row

ROT_AT, ROT = 4096, bytes(4096)  # 4 KiB of zeroes over the image's block 0
SENT = r"INFO locproxy\.download: image {}: bytes \d+-\d+ sent from (.*)"


@contextmanager
def sidecar_on(lab: FaultLab, disk: Path, metrics_file: Path, workers: int = 2, **options: Any) -> Iterator[Any]:
    """Two workers reading file copies on ``disk`` too, sharing ``metrics_file``."""
    with counted_sidecar(lab, workers, file_roots=f"{lab.root},{disk}", metrics_file=metrics_file,
                         metrics_path="/metrics", healthcheck_path="/healthcheck", **options) as sidecar:
        yield sidecar


def in_every_worker(sidecar: Any, image_id: str) -> list[Fetched]:
    """At least 8 downloads, more until both workers served some."""
    path = f"/v2/images/{image_id}/file"
    before = len(sources(sidecar, image_id))
    results = from_every_worker(sidecar, path, lambda: fetch(sidecar.port, path, timeout=30), 8)
    sidecar.log_after(SENT.format(image_id), before + len(results))
    return results


def refused_metric(sidecar: Any) -> float:
    """locproxy_backend_failures_total of the file copies for checksum_mismatch (blocks refused)."""
    text = fetch(sidecar.port, "/metrics").body.decode()
    found = re.search(r'^locproxy_backend_failures_total\{backend="file",reason="checksum_mismatch"\} (\S+)$',
                      text, re.M)
    return float(found.group(1)) if found else 0.0


def demoted_copies(sidecar: Any) -> int:
    """/healthcheck's count of demoted copies (a demoted copy leaves the status ok)."""
    health = fetch(sidecar.port, "/healthcheck").json()
    assert health["status"] == "ok", health
    return int(health["demoted_copies"])


def copy_on(disk: Path, data: bytes = DATA) -> tuple[Path, dict]:
    path = disk / f"copy-{os.urandom(4).hex()}"
    with open(path, "wb") as stream:
        stream.write(data)
        os.fsync(stream.fileno())
    return path, location(f"file://{path}", "disk")


def exact(result: Fetched) -> bool:
    return (result.status, result.complete) == (200, True) and result.body == DATA


def downloads(sidecar: Any, image_id: str, count: int) -> list[Fetched]:
    """``count`` downloads, four at a time (so that every worker serves
    some), once their "sent from" lines are logged."""
    before = len(sources(sidecar, image_id))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: fetch(sidecar.port, f"/v2/images/{image_id}/file", timeout=30),
                                range(count)))
    sidecar.log_after(SENT.format(image_id), before + count)
    return results


def sources(sidecar: Any, image_id: str) -> list[str]:
    """What each download of ``image_id`` was sent from, as its log line says."""
    return re.findall(SENT.format(image_id), sidecar.log())


def refusals(log: str, image_id: str) -> int:
    return len(re.findall(BLOCK_REFUSED.replace(r"image \S+", f"image {image_id}"), log))


def assert_never_wrong(results: list[Fetched]) -> None:
    wrong = [result.describe()[:200] for result in results if result.complete and result.body != DATA]
    assert not wrong, f"complete bodies with wrong bytes: {wrong}"
    assert all(exact(result) for result in results), [result.describe()[:200] for result in results]


@scenario("trust content", "verified file copy rots under ext4 (4 KiB, inode and times untouched)",
          "2 workers, restart")
def _rot_under_ext4(lab: FaultLab) -> tuple[str, str]:
    metrics_file = lab.base / f"metrics-{os.urandom(4).hex()}.sqlite"
    with filesystems.ext4(lab.base) as disk:
        rotting, near = copy_on(disk.path)
        alone_path, alone = copy_on(disk.path)
        with_spare, only_upstream = lab.image(near, lab.file_copy()), lab.image(alone)
        with sidecar_on(lab, disk.path, metrics_file) as sidecar:
            first = downloads(sidecar, with_spare, 2) + downloads(sidecar, only_upstream, 2)
            assert_never_wrong(first)
            assert all("verified" in line or "every block" in line for line in sources(sidecar, with_spare))
            for path in (rotting, alone_path):
                filesystems.rot(disk, path, ROT_AT, ROT)
            later = in_every_worker(sidecar, with_spare) + in_every_worker(sidecar, only_upstream)
            log = sidecar.log()
            counted, demoted = refused_metric(sidecar), demoted_copies(sidecar)
            refused_before_restart = refusals(log, with_spare) + refusals(log, only_upstream)
            lines = sources(sidecar, with_spare)[2:] + sources(sidecar, only_upstream)[2:]
        with sidecar_on(lab, disk.path, metrics_file) as restarted:
            again = downloads(restarted, with_spare, 4) + downloads(restarted, only_upstream, 4)
            lines += sources(restarted, with_spare) + sources(restarted, only_upstream)
            log += restarted.log()
    assert_never_wrong(later + again)
    refused = refusals(log, with_spare), refusals(log, only_upstream)
    assert min(refused) >= 1, log[-3000:]
    assert counted == refused_before_restart, (counted, refused_before_restart)
    assert demoted == 2, f"/healthcheck: {demoted} demoted copies"
    assert all("every block checked" in line for line in lines), lines
    upstream = sum(1 for line in lines if "upstream" in line)
    total = len(later) + len(again)
    return (f"200, correct body, {total}/{total} ({len(later)} with both workers serving each image, then "
            f"{len(again)} after a restart): the rotten block refused before it was sent, an ERROR naming the "
            f"copy each time it was read ({refused[0]} times for the image with a spare copy, which then serves first; "
            f"{refused[1]} for the one with none, {upstream} downloads completed from the image API's /file); "
            f"locproxy_backend_failures_total{{reason=checksum_mismatch}} counts each ({counted:.0f} before the "
            f"restart); /healthcheck: {demoted} demoted copies, status ok",
            f"sha512 ✓ ({len(later) + len(again)} downloads)")


def _same_second_rewrite(path: Path, sidecar: Any, image_id: str) -> tuple[bool, Fetched]:
    """Write the copy at the start of a second, read it whole (verified),
    rewrite 4 KiB of it in place: True if the rewrite kept inode, size and
    mtime (it fell in the same second)."""
    time.sleep(1.02 - time.time() % 1)
    with open(path, "r+b") as stream:
        stream.write(DATA)
        os.fsync(stream.fileno())
    first = fetch(sidecar.port, f"/v2/images/{image_id}/file", timeout=30)
    before = os.stat(path)
    with open(path, "r+b") as stream:
        stream.seek(ROT_AT)
        stream.write(ROT)
        os.fsync(stream.fileno())
    after = os.stat(path)
    same = ("st_ino", "st_size", "st_mtime_ns")
    return [getattr(after, n) for n in same] == [getattr(before, n) for n in same], first


@scenario("trust content", "same-size rewrite within the second on ext4 with 1 s timestamps (-I 128)",
          "2 workers")
def _one_second_timestamps(lab: FaultLab) -> tuple[str, str]:
    metrics_file = lab.base / f"metrics-{os.urandom(4).hex()}.sqlite"
    with filesystems.ext4(lab.base, inode_size=128) as disk:
        assert filesystems.one_second_timestamps(disk), "128-byte inodes keep whole seconds"
        path, copy = copy_on(disk.path)
        image_id = lab.image(copy, lab.file_copy())
        with sidecar_on(lab, disk.path, metrics_file) as sidecar:
            for _attempt in range(3):
                kept, first = _same_second_rewrite(path, sidecar, image_id)
                if kept:
                    break
            assert kept, "the rewrite never fell within the second of the write (a loaded machine?)"
            later = downloads(sidecar, image_id, 6)
            log = sidecar.log()
            counted, demoted = refused_metric(sidecar), demoted_copies(sidecar)
    assert exact(first)
    assert_never_wrong(later)
    assert refusals(log, image_id) >= 1 and counted == refusals(log, image_id), (counted, log[-3000:])
    assert demoted == 1, f"/healthcheck: {demoted} demoted copies"
    return ("identity kept (inode, size, mtime to the second); 200, correct body, 6/6: the rewritten block "
            f"refused (ERROR naming the copy, counted: {counted:.0f}), the rest from the spare copy; "
            "/healthcheck: 1 demoted copy, status ok", "sha512 ✓ (6 downloads)")


@scenario("trust content", "copy found bad by one sidecar, read good before by another sharing metrics_file",
          "2 sidecars")
def _mismatch_across_sidecars(lab: FaultLab) -> tuple[str, str]:
    metrics_file = lab.base / f"metrics-{os.urandom(4).hex()}.sqlite"
    with filesystems.ext4(lab.base) as disk:
        path, copy = copy_on(disk.path)
        image_id, alone = lab.image(copy, lab.file_copy()), lab.image(copy)
        with sidecar_on(lab, disk.path, metrics_file, workers=1) as one, \
                sidecar_on(lab, disk.path, metrics_file, workers=1) as other:
            good = downloads(one, image_id, 2) + downloads(other, image_id, 2) + downloads(one, alone, 1)
            filesystems.rot(disk, path, ROT_AT, ROT)
            found = downloads(other, image_id, 2)
            trusted_before = downloads(one, image_id, 3) + downloads(one, alone, 3)
            logs = one.log(), other.log()
    assert_never_wrong(good + found + trusted_before)
    assert refusals(logs[1], image_id) >= 1, logs[1][-3000:]
    assert refusals(logs[0], alone) >= 1, "the sidecar that had read it good checks it again, block by block"
    return ("200, correct body everywhere: the sidecar that read the copy good before refuses its rotten "
            "block itself (ERROR), it trusts neither its memory nor the other's record",
            f"sha512 ✓ ({len(good + found + trusted_before)} downloads)")
