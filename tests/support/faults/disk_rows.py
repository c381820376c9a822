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

import contextlib
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from locproxy.demo import demo_bytes
from locproxy.fingerprints import BLOCK
from tests.support import filesystems
from tests.support.client import Fetched, fetch
from tests.support.faults.lab import DATA, FaultLab, Scenarios
from tests.support.faults.sidecars import counted_sidecar, from_every_worker
from tests.support.processes import children, wait_until

ROWS = Scenarios()
scenario = ROWS.row


@contextmanager
def cache_sidecar(lab: FaultLab, cache_dir: Path, **options: Any) -> Iterator[Any]:
    """Two workers with the site cache in ``cache_dir``, ``/healthcheck``
    and ``/metrics`` summed over both workers."""
    cache_dir.mkdir(exist_ok=True)
    with counted_sidecar(lab, 2, cache_dir=cache_dir, cache_max_size=options.pop("cache_max_size", "1G"),
                         healthcheck_path="/healthcheck", metrics_path="/metrics", **options) as sidecar:
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
    """At least ``count`` answers of /healthcheck, more until both workers gave some."""
    return from_every_worker(sidecar, "/healthcheck", lambda: fetch(sidecar.port, "/healthcheck", timeout=10).json(),
                             count)


def cache_errors(sidecar: Any) -> float:
    text = fetch(sidecar.port, "/metrics").body.decode()
    found = re.search(r'^locproxy_cache_events_total\{event="error"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def committed(sidecar: Any, count: int = 1) -> None:
    """Wait for the fill's commit (an fsync: slow on a loaded shared disk)."""
    log = sidecar.log_after(r"cache entry \w+ committed", count, timeout=30)
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
    with filesystems.ext4(lab.base, 256) as disk, cache_sidecar(lab, disk.path / "cache") as sidecar:
        assert as_without_cache(lab, download(sidecar, cached), cached)
        committed(sidecar)
        how = filesystems.read_only(disk)
        first = health(sidecar)  # before any download meets it
        assert {answer["status"] for answer in first} == {"degraded"}, first
        results = [(image_id, download(sidecar, image_id)) for image_id in others + [cached] * 4]
        answers, errors, _states = check_aside(lab, sidecar, results)
    return (f"file system made read-only by {how}; 200 as without the cache, {len(results)}/{len(results)} "
            f"(4 images never cached, 4 hits of one cached before); /healthcheck degraded, cache aside "
            f"({answers}/{answers} answers from both workers, the first ones before any download met it); "
            f"cache error metric {errors:.0f}",
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
            f"cache aside ({answers}/{answers} answers from both workers); cache error metric {errors:.0f}",
            f"sha512 ✓ ({len(results)} downloads)")


@scenario("site cache", "its directory emptied while serving (rm -rf cache_dir/*)")
def _cache_dir_emptied(lab: FaultLab) -> tuple[str, str]:
    web = lab.backend()
    cached, others = lab.image(lab.web(web)), [lab.image(lab.web(web)) for _ in range(4)]
    cache_dir = lab.base / f"cache-{os.urandom(3).hex()}"
    with cache_sidecar(lab, cache_dir) as sidecar:
        assert as_without_cache(lab, download(sidecar, cached), cached)
        committed(sidecar)
        for child in cache_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):  # sqlite's journal comes and goes
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        first = health(sidecar)  # before any download meets it
        assert {answer["status"] for answer in first} == {"degraded"}, first
        results = [(image_id, download(sidecar, image_id)) for image_id in others + [cached] * 4]
        answers, errors, _states = check_aside(lab, sidecar, results)
    return (f"200 as without the cache, {len(results)}/{len(results)} (4 images never cached, 4 of one "
            f"cached before); /healthcheck degraded, cache aside ({answers}/{answers} answers from both workers, "
            f"the first ones before any download met it); cache error metric {errors:.0f}",
            f"sha512 ✓ ({len(results)} downloads)")


# -- a rotted entry, scrubbed by another sidecar while one reads it ---------------------------

SCRUBBED = r"cache entry (\w+) removed: its sha512 digest does not match \(background scrub\)"


def stalled_client(port: int, path: str) -> socket.socket:
    """A client that sends its request and reads nothing for now (the
    server stops once the socket's buffers, a few MiB, are full)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def read_rest(sock: socket.socket, limit: float = 60.0) -> tuple[int, bytes, bool]:
    """(status, body, complete) of the response on ``sock``, read now to its
    end, within ``limit`` seconds."""
    deadline, data = time.monotonic() + limit, b""
    with sock:
        while b"\r\n\r\n" not in data and time.monotonic() < deadline and (piece := sock.recv(65536)):
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
        while len(body) < length and time.monotonic() < deadline and (piece := sock.recv(1 << 20)):
            body += piece
    return int(head.split()[1]), body, len(body) == length


def held_open(path: Path, pids: list[int]) -> bool:
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    return True
    return False


@scenario("site cache", "an entry rots on ext4; another sidecar's scrub finds it while this one reads it",
          "2 sidecars, one cache_dir")
def _scrubbed_while_read(lab: FaultLab) -> tuple[str, str]:
    big = demo_bytes("scrubbed-entry", 64 * BLOCK + 5)  # larger than what the sockets between buffer
    web = lab.backend(data=big)
    image_id = lab.image(lab.web(web), data=big)
    path = f"/v2/images/{image_id}/file"
    with filesystems.ext4(lab.base, 256) as disk, cache_sidecar(lab, disk.path / "cache") as reading, \
            cache_sidecar(lab, disk.path / "cache", cache_verify_interval=1) as scrubbing:
        assert download(reading, image_id).body == big
        committed(reading)
        (entry,) = (disk.path / "cache" / "entries").iterdir()
        filesystems.rot(disk, entry, 56 * BLOCK + 100, bytes(4096))
        sock = stalled_client(reading.port, path)
        wait_until(lambda: held_open(entry, children(reading.pid)), timeout=10, what="the entry read")
        time.sleep(1.1)  # cache_verify_interval has passed: the next hit in the other sidecar scrubs
        ranged = fetch(scrubbing.port, path, headers={"Range": "bytes=0-99"})
        log = scrubbing.log_after(SCRUBBED)
        gone = not entry.exists()
        status, body, complete = read_rest(sock)
        served = [download(sidecar, image_id) for sidecar in (reading, scrubbing) * 2]
        refilled = web.request_count
    assert (ranged.status, ranged.body) == (206, big[:100]), ranged.describe()
    assert re.search(SCRUBBED, log), log[-3000:]
    assert gone, "the scrub really removed the entry while it was read"
    assert (status, complete) == (200, True) and body == big, "the reader refused the rotten block, exact"
    assert all((r.status, r.complete, r.body) == (200, True, big) for r in served)
    assert refilled >= 2, "read from the backend again: the rotten entry is not served again"
    return ("the scrub's ERROR says removed and the entry is gone at once; the reader's client: 200, correct "
            "body (the rotten block refused, the rest from the backend); 4 later downloads in both sidecars "
            "200, correct, the entry filled again from the backend", "sha512 ✓ (1 + 4 downloads, a range)")
