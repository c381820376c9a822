"""The site cache: the store on its own, then a real two-worker sidecar:
one backend read for many cold downloads, hits and ranges from disk, a
filler killed mid-fill, a full disk, corrupt entries, the size cap, images
only the upstream can read, and the operators' commands."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from locproxy.cache import Fill, FillerGone, Follow, Hit, SiteCache, cache_key, guard, store
from locproxy.demo import location
from locproxy.fingerprints import BLOCK
from tests.support.cachelab import (
    DATA,
    DIGEST,
    Lab,
    MiB,
    bytes_sent,
    downloads,
    exact,
    filler_pid,
    lab_fixture,
    wait_for_fill,
)
from tests.support.client import fetch
from tests.support.download_fakes import fingerprint_of
from tests.support.faultserver import FaultServer


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from lab_fixture(tmp_path_factory)


# -- the store ----------------------------------------------------------------------------

def begin(cache: SiteCache, image_id: str, size: int = len(DATA), whole: bool = True) -> Any:
    return cache.begin(cache_key(image_id, DIGEST), image_id, size, DIGEST, whole=whole, stall=0.5)


def fill(cache: SiteCache, image_id: str, data: bytes = DATA) -> bool:
    started = begin(cache, image_id, len(data))
    assert isinstance(started, Fill), started
    started.write(data)
    return started.commit(fingerprint_of(data))


def test_only_whole_fills_are_committed_with_their_fingerprint(tmp_path: Path) -> None:
    cache = SiteCache(str(tmp_path), 100 * MiB)
    aborted = begin(cache, "aborted")
    aborted.write(DATA)
    aborted.abort()
    partial = begin(cache, "partial")
    partial.write(DATA[:1000])
    assert not partial.commit(fingerprint_of(DATA)), "an incomplete fill is never committed"
    assert fill(cache, "good")
    assert [entry["image"] for entry in cache.list()] == ["good"]
    assert os.listdir(tmp_path / "fills") == [], "nothing left behind"
    hit = begin(cache, "good")
    assert isinstance(hit, Hit) and hit.fileobj.read() == DATA
    assert hit.fingerprint is not None and hit.fingerprint.blocks == fingerprint_of(DATA).blocks
    hit.fileobj.close()
    other = cache.begin(cache_key("good", ("sha512", "0" * 128)), "good", len(DATA), ("sha512", "0" * 128),
                        whole=False)
    assert other is None, "another digest: another key"


def test_a_second_begin_follows_the_fill_in_progress(tmp_path: Path) -> None:
    cache = SiteCache(str(tmp_path), 100 * MiB)
    started = begin(cache, "x")
    follow = begin(cache, "x", whole=False)
    assert isinstance(follow, Follow)
    started.write(DATA[:BLOCK])
    chunks = follow.chunks(0, BLOCK, 64 * 1024)
    assert b"".join(next(chunks) for _ in range(16)) == DATA[:BLOCK]
    started.abort()
    with pytest.raises(FillerGone):
        list(follow.chunks(BLOCK, len(DATA), 64 * 1024))
    follow.close()


def test_the_cap_holds_for_fills_started_together(tmp_path: Path) -> None:
    """Reservations are made under the cache's lock: of eight images of
    which two fit, two fills start, however they race."""
    cache = SiteCache(str(tmp_path), 2 * len(DATA) + 10)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        started = list(pool.map(lambda n: begin(cache, f"image-{n}"), range(8)))
    fills = [item for item in started if isinstance(item, Fill)]
    assert len(fills) == 2 and started.count(None) == 6
    for item in fills:
        item.write(DATA)
        assert item.commit(fingerprint_of(DATA))
    assert sum(entry["size"] for entry in cache.list()) <= cache.max_size


def test_the_cap_evicts_the_least_recently_used_never_one_being_read(tmp_path: Path) -> None:
    cache = SiteCache(str(tmp_path), 2 * len(DATA) + 10)
    assert fill(cache, "a") and fill(cache, "b")
    time.sleep(0.01)
    reading = begin(cache, "a", whole=False)  # a: most recently used, and open
    assert isinstance(reading, Hit)
    assert fill(cache, "c"), "b, the least recently used, made room"
    assert sorted(entry["image"] for entry in cache.list()) == ["a", "c"]
    time.sleep(0.01)
    begin(cache, "c", whole=False).fileobj.close()  # c used after a
    assert fill(cache, "d"), "a is least recently used but being read: c goes"
    assert sorted(entry["image"] for entry in cache.list()) == ["a", "d"]
    assert begin(cache, "e", size=len(DATA) * 3) is None, "larger than the cache: not cached"
    reading.fileobj.close()


def test_a_dead_fillers_leftovers_and_orphans_are_removed_and_counted(tmp_path: Path) -> None:
    events: list[tuple[str, int]] = []
    cache = SiteCache(str(tmp_path), 100 * MiB, on_event=lambda event, amount: events.append((event, amount)))
    started = begin(cache, "x")
    started.write(DATA[:100])
    os.close(started.fd)  # as a killed process would: the lock goes, the file stays
    started.fd = -1
    assert fill(cache, "kept")
    (tmp_path / "entries" / ("0" * 40)).write_bytes(b"an orphan: its index row is gone")
    restarted = SiteCache(str(tmp_path), 100 * MiB, on_event=lambda event, amount: events.append((event, amount)))
    assert os.listdir(tmp_path / "fills") == [], "the dead fill went"
    assert sorted(os.listdir(tmp_path / "entries")) == [cache_key("kept", DIGEST)], "the orphan went"
    assert ("orphan", 32) in events
    assert isinstance(begin(restarted, "x"), Fill), "and the image can be cached again"


def test_an_index_lost_leaves_no_space_lost(tmp_path: Path) -> None:
    cache = SiteCache(str(tmp_path), 2 * len(DATA) + 10)
    assert fill(cache, "a") and fill(cache, "b")
    for name in os.listdir(tmp_path):
        if name.startswith("index.sqlite"):
            os.unlink(tmp_path / name)
    again = SiteCache(str(tmp_path), 2 * len(DATA) + 10)
    assert os.listdir(tmp_path / "entries") == [] and again.usage() == (0, 0)
    assert fill(again, "a") and fill(again, "b"), "cached again, within the cap"


def test_owner_only_modes_and_no_symlink_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "keep").write_bytes(b"not the cache's")
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o755)
    (cache_dir / "fills").symlink_to(secret)  # planted before the cache starts
    cache = SiteCache(str(cache_dir), 100 * MiB)
    assert (secret / "keep").exists(), "a start never removes what a link points at"
    assert cache.degraded and begin(cache, "x") is None, "the cache steps aside"
    os.unlink(cache_dir / "fills")
    cache = SiteCache(str(cache_dir), 100 * MiB)
    assert fill(cache, "x")
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in [cache_dir, *cache_dir.rglob("*")]}
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes
    entry = cache_dir / "entries" / cache_key("x", DIGEST)
    entry.unlink()
    entry.symlink_to(secret / "keep")  # an entry swapped for a link
    assert begin(cache, "x", whole=False) is None


def test_a_corrupt_entry_is_removed_even_while_it_is_read(tmp_path: Path) -> None:
    cache = SiteCache(str(tmp_path), 100 * MiB)
    assert fill(cache, "x")
    reading = begin(cache, "x", whole=False)
    reading.rejected()
    assert cache.list() == [] and os.listdir(tmp_path / "entries") == []
    assert reading.fileobj.read() == DATA, "its reader keeps its open file (and checks every block)"
    reading.fileobj.close()


def test_a_fill_that_cannot_write_is_a_cache_error_and_leaves_nothing(tmp_path: Path) -> None:
    """A write error of a fill (ENOSPC on a full disk; here the descriptor
    taken away) is counted and puts the cache aside like any other, after
    the fill's file is gone."""
    events: list[str] = []
    cache = SiteCache(str(tmp_path), 100 * MiB, on_event=lambda event, amount: events.append(event))
    started = begin(cache, "x")
    os.close(started.fd)
    with pytest.raises(OSError):
        started.write(DATA)
    started.fd = -1
    started.abort()
    assert os.listdir(tmp_path / "fills") == [], "the fill's file removed before the cache went aside"
    assert events.count("error") == 1 and "fill: " in (cache.degraded or ""), (events, cache.degraded)


@pytest.mark.parametrize("broken", ["fills-removed", "lock-held"])
def test_a_failing_cache_steps_aside_at_once_and_heals(tmp_path: Path, broken: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard, "RETRY_AFTER", 0.5)
    events: list[str] = []
    cache = SiteCache(str(tmp_path), 100 * MiB, on_event=lambda event, amount: events.append(event))
    holder = None
    if broken == "fills-removed":
        os.rmdir(tmp_path / "fills")
    else:  # another process holds the cache's lock and never lets go
        holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; "
                                   "fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
                                   "print('locked', flush=True); time.sleep(60)", str(tmp_path / "lock")],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "locked"
    try:
        started = time.monotonic()
        assert begin(cache, "x") is None
        assert time.monotonic() - started < store.LOCK_TIMEOUT + 0.5, "a bounded wait"
        assert begin(cache, "x") is None and time.monotonic() - started < store.LOCK_TIMEOUT + 0.6, "aside: at once"
        assert cache.degraded and events.count("error") == 1
    finally:
        if holder is not None:
            holder.kill()
            holder.wait(10)
            holder.stdout.close()
    time.sleep(0.6)
    assert fill(cache, "x"), "after the back-off the cache works again"
    assert not cache.degraded


# -- a sidecar ---------------------------------------------------------------------------------

def test_sixteen_cold_downloads_read_the_backend_once(lab: Lab, tmp_path: Path) -> None:
    with FaultServer(DATA, mode="slow:40000000") as backend:
        image_id = lab.api.add_image(data=DATA, locations=[location(backend.url("/image"), "web")])
        with lab.sidecar(tmp_path / "cache") as server:
            results = downloads(server, image_id, 16)
            again = downloads(server, image_id, 4)
            health = fetch(server.port, "/healthcheck").json()
            log = server.log_after("sent from", 20)
    assert all(exact(result) for result in results + again), [result.describe() for result in results]
    assert backend.request_count == 1 and bytes_sent(backend) == len(DATA), "one backend read for 20 downloads"
    assert health["cache"] == {"bytes": len(DATA), "max_bytes": 1 << 30, "entries": 1}
    assert log.count("sent from cache") == 20, "16 followed the fill (the first one too), 4 hit the entry"


def test_hits_and_ranges_come_from_disk(lab: Lab, tmp_path: Path) -> None:
    with FaultServer(DATA) as backend:
        image_id = lab.api.add_image(data=DATA, locations=[location(backend.url("/image"), "web")])
        with lab.sidecar(tmp_path / "cache") as server:
            first = fetch(server.port, f"/v2/images/{image_id}/file")
            hits = [fetch(server.port, f"/v2/images/{image_id}/file") for _ in range(4)]
            ranges = [fetch(server.port, f"/v2/images/{image_id}/file", headers={"Range": header})
                      for header in ("bytes=0-99", "bytes=5000000-", "bytes=-17")]
            log = server.log_after("sent from", 8)
    assert exact(first) and all(exact(hit) for hit in hits)
    assert [result.body for result in ranges] == [DATA[:100], DATA[5000000:], DATA[-17:]]
    assert backend.request_count == 1
    assert log.count("sent from cache (every block checked against the image's fingerprint)") == 7, \
        "every hit and range checked block by block"


def test_a_range_during_a_fill_reads_the_part_already_written(lab: Lab, tmp_path: Path) -> None:
    with FaultServer(DATA, mode="slow:4000000") as backend:  # about 2 s for the image
        image_id = lab.api.add_image(data=DATA, locations=[location(backend.url("/image"), "web")])
        with lab.sidecar(tmp_path / "cache") as server, concurrent.futures.ThreadPoolExecutor(1) as pool:
            filling = pool.submit(fetch, server.port, f"/v2/images/{image_id}/file", timeout=60)
            wait_for_fill(tmp_path / "cache" / "fills", MiB)
            ranged = fetch(server.port, f"/v2/images/{image_id}/file", headers={"Range": "bytes=1000-99999"})
            first = filling.result()
    assert exact(first) and ranged.status == 206 and ranged.body == DATA[1000:100000]
    assert backend.request_count == 1, "the range came from the fill in progress"


def test_a_filler_killed_mid_fill(lab: Lab, tmp_path: Path) -> None:
    """kill -9 of the worker filling: its own client sees an aborted body; a
    client following the fill (in another worker of the node: here another
    sidecar on the same cache_dir) finishes with exact bytes, going on from
    the backend at the block it reached; no partial entry is ever committed,
    and the next download fills the cache again."""
    cache_dir = tmp_path / "cache"
    with FaultServer(DATA, mode="slow:4000000") as backend:
        image_id = lab.api.add_image(data=DATA, locations=[location(backend.url("/image"), "web")])
        with lab.sidecar(cache_dir, workers=1) as filling, lab.sidecar(cache_dir, workers=1) as following, \
                concurrent.futures.ThreadPoolExecutor(2) as pool:
            filler = pool.submit(fetch, filling.port, f"/v2/images/{image_id}/file", timeout=60)
            part = wait_for_fill(cache_dir / "fills", MiB)
            follower = pool.submit(fetch, following.port, f"/v2/images/{image_id}/file", timeout=60)
            time.sleep(0.3)  # it follows the fill
            os.kill(filler_pid(part), signal.SIGKILL)
            filled, followed = filler.result(), follower.result()
            later = fetch(following.port, f"/v2/images/{image_id}/file")
            log = following.log_after("sent from", 2)
            following.log_after("committed", 1)
    assert not filled.complete, "the killed worker's client sees an aborted body"
    assert exact(followed), followed.describe()
    assert "the cache fill stopped at byte" in log, "it followed, then resumed from the backend"
    assert exact(later) and re.findall(r"sent from (\S+)", log)[-1] == "cache", "then from the cache again"
    entries = list((cache_dir / "entries").iterdir())
    assert [entry.read_bytes() == DATA for entry in entries] == [True], "the next download's fill was committed"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_stops_the_fill_never_the_download(lab: Lab, tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True, timeout=10)
    try:
        with FaultServer(DATA) as backend:
            image_id = lab.api.add_image(data=DATA, locations=[location(backend.url("/image"), "web")])
            with lab.sidecar(mount / "cache", cache_max_size="100M") as server:
                results = [fetch(server.port, f"/v2/images/{image_id}/file") for _ in range(3)]
                log = server.log()
            entries = os.listdir(mount / "cache" / "entries")
            fills = os.listdir(mount / "cache" / "fills")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=10)
    assert all(exact(result) for result in results)
    assert entries == [] and fills == [], "nothing committed, nothing left behind"
    assert "cache fill stopped at byte" in log and "No space left on device" in log


@pytest.mark.parametrize("how", ["rewritten", "bit-rot"])
def test_a_corrupt_entry_never_sends_a_bad_block(lab: Lab, tmp_path: Path, how: str) -> None:
    """Whatever changed an entry (a rewrite, or rot that keeps its inode and
    times), the bad block is refused before it is sent: that download goes
    on from the backend at that block, exact, and the entry is removed."""
    with FaultServer(DATA) as backend:
        image_id = lab.api.add_image(data=DATA, locations=[location(backend.url("/image"), "web")])
        cache_dir = tmp_path / "cache"
        with lab.sidecar(cache_dir) as server:
            assert exact(fetch(server.port, f"/v2/images/{image_id}/file"))
            server.log_after("committed", 1)
        entry = cache_dir / "entries" / cache_key(image_id, DIGEST)
        before = entry.stat()
        with open(entry, "r+b") as stream:
            stream.seek(4 * MiB + 10)
            stream.write(bytes([DATA[4 * MiB + 10] ^ 1]))
        if how == "bit-rot":
            os.utime(entry, ns=(before.st_atime_ns, before.st_mtime_ns))
        with lab.sidecar(cache_dir) as server:
            first = fetch(server.port, f"/v2/images/{image_id}/file")
            log = server.log_after("sent from", 1)
            second = fetch(server.port, f"/v2/images/{image_id}/file")
            server.log_after("sent from", 2)
    assert exact(first) and exact(second)
    assert re.search(rf"ERROR locproxy\.download: image {image_id}: block 4 from cache does not match", log), log
    assert f"cache entry {cache_key(image_id, DIGEST)} removed: a block does not match" in log
    assert re.search(rf"image {image_id}: bytes 0-\d+ sent from cache, http://127\.0\.0\.1:\d+ \(every block", log)
    assert backend.request_count == 3, "the fill, the rest from block 4, the fill again"


def test_an_image_larger_than_the_cache_is_served_not_cached(lab: Lab, tmp_path: Path) -> None:
    with FaultServer(DATA) as backend:
        image_id = lab.api.add_image(data=DATA, locations=[location(backend.url("/image"), "web")])
        with lab.sidecar(tmp_path / "cache", cache_max_size="1M") as server:
            results = [fetch(server.port, f"/v2/images/{image_id}/file") for _ in range(2)]
    assert all(exact(result) for result in results)
    assert backend.request_count == 2 and os.listdir(tmp_path / "cache" / "entries") == []


def test_an_image_only_the_upstream_can_read_is_cached(lab: Lab, tmp_path: Path) -> None:
    image_id = lab.api.add_image(data=DATA, locations=[location("rbd://fsid/pool/image/snap", "ceph")])
    with lab.sidecar(tmp_path / "cache") as server:
        before = lab.api.calls["GET file"]
        results = [fetch(server.port, f"/v2/images/{image_id}/file") for _ in range(3)]
        asked = lab.api.calls["GET file"] - before
    assert all(exact(result) for result in results)
    assert asked == 1, "the upstream's /file was read once; then the cache served"


def test_operators_list_prefetch_evict_and_clear(lab: Lab, tmp_path: Path) -> None:
    with FaultServer(DATA) as backend:
        first = lab.api.add_image(data=DATA, locations=[location(backend.url("/first"), "web")])
        second = lab.api.add_image(data=DATA, locations=[location(backend.url("/second"), "web")])
        cache_dir = tmp_path / "cache"
        with lab.sidecar(cache_dir) as server:
            cli = [sys.executable, "-m", "locproxy.cli", "cache"]
            prefetched = subprocess.run([*cli, "prefetch", server.url, first, second], capture_output=True,
                                        text=True, timeout=120)
            listed = subprocess.run([*cli, "list", str(cache_dir)], capture_output=True, text=True, timeout=60)
            evicted = subprocess.run([*cli, "evict", str(cache_dir), first], capture_output=True, text=True,
                                     timeout=60)
            after_evict = subprocess.run([*cli, "list", str(cache_dir)], capture_output=True, text=True, timeout=60)
            cleared = subprocess.run([*cli, "clear", str(cache_dir)], capture_output=True, text=True, timeout=60)
    assert prefetched.returncode == 0 and f"{first}: {len(DATA):,} bytes" in prefetched.stdout, prefetched.stderr
    assert first in listed.stdout and second in listed.stdout and "2 entries" in listed.stdout
    assert evicted.stdout.strip() == "removed 1 entries"
    assert first not in after_evict.stdout and second in after_evict.stdout
    assert cleared.stdout.strip() == "removed 1 entries" and os.listdir(cache_dir / "entries") == []
