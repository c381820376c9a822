"""The site cache's faults, on a real two-worker sidecar: a lock held by a
stopped process, a filler stopped mid-fill, a replacement worker meeting a
broken index and metrics_file, the cache's directory taken away while it
runs, a stalled first client, and a load of 200 downloads across fills,
follows and hits. In every case each client gets the image's exact bytes
(or the image API's own answer) in bounded time; the cache steps aside and
says so in /healthcheck and the metrics."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from locproxy.demo import demo_bytes, location
from tests.support.cachelab import DATA, Lab, exact, filler_pid, lab_fixture, wait_for_fill
from tests.support.client import fetch
from tests.support.faultserver import FaultServer
from tests.support.processes import children


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from lab_fixture(tmp_path_factory)


def download(server: object, image_id: str, **kwargs: object) -> object:
    return fetch(server.port, f"/v2/images/{image_id}/file", timeout=60, **kwargs)  # type: ignore[attr-defined]


def healthcheck(server: object) -> tuple[dict, float]:
    started = time.monotonic()
    body = fetch(server.port, "/healthcheck", timeout=10).json()  # type: ignore[attr-defined]
    return body, time.monotonic() - started


def cache_errors(server: object) -> float:
    text = fetch(server.port, "/metrics").body.decode()  # type: ignore[attr-defined]
    found = re.search(r'^locproxy_cache_events_total\{event="error"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def stopped_lock_holder(path: Path) -> subprocess.Popen:
    """A process that takes ``path``'s exclusive flock, then stops itself (SIGSTOP)."""
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, signal, sys; "
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); "
                               "os.kill(os.getpid(), signal.SIGSTOP)", str(path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.stdout.close()
    return holder


def test_a_stopped_process_holding_the_cache_lock_never_hangs_a_download(lab: Lab, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    with FaultServer(DATA) as backend:
        image_id = lab.api.add_image(data=DATA, locations=[location(backend.url("/image"), "web")])
        with lab.sidecar(cache_dir, metrics_path="/metrics") as server:
            assert exact(download(server, image_id))  # the cache works, its directory exists
            other = lab.api.add_image(data=DATA, locations=[location(backend.url("/other"), "web")])
            holder = stopped_lock_holder(cache_dir / "lock")
            try:
                started = time.monotonic()
                results = [download(server, other) for _ in range(4)]
                seconds = time.monotonic() - started
                health, health_seconds = healthcheck(server)
                errors = cache_errors(server)
            finally:
                holder.kill()
                holder.wait(10)
    assert all(exact(result) for result in results)
    assert seconds < 4 * 4, f"4 downloads took {seconds:.1f} s: each waits at most the 1 s lock bound"
    assert health["status"] == "degraded" and "aside" in health["cache"]["state"], health
    assert health_seconds < 3.0, "the health check never waits for the lock"
    assert errors >= 1


def test_a_filler_stopped_mid_fill_holds_up_no_follower(lab: Lab, tmp_path: Path) -> None:
    """SIGSTOP of the worker that fills: a client following the fill in
    another worker goes on from the backend after backend_first_byte_timeout
    without progress, exact."""
    cache_dir = tmp_path / "cache"
    with FaultServer(DATA, mode="slow:4000000") as backend:
        image_id = lab.api.add_image(data=DATA, locations=[location(backend.url("/image"), "web")])
        with lab.sidecar(cache_dir, workers=1, backend_first_byte_timeout=2) as filling, \
                lab.sidecar(cache_dir, workers=1, backend_first_byte_timeout=2) as following, \
                concurrent.futures.ThreadPoolExecutor(2) as pool:
            pool.submit(download, filling, image_id)
            part = wait_for_fill(cache_dir / "fills", 1 << 20)
            stopped = filler_pid(part)
            os.kill(stopped, signal.SIGSTOP)
            try:
                started = time.monotonic()
                followed = download(following, image_id)
                seconds = time.monotonic() - started
                log = following.log()
            finally:
                os.kill(stopped, signal.SIGCONT)
    assert exact(followed), followed.describe()
    assert "made no progress for 2 s" in log
    assert seconds < 15, f"{seconds:.1f} s"


def broken_sqlite(path: Path) -> None:
    """An sqlite file whose header is right and whose pages are not."""
    subprocess.run([sys.executable, "-c", "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
                    "db.execute('CREATE TABLE t (x)'); db.commit()", str(path)], check=True, timeout=30)
    with open(path, "r+b") as stream:
        stream.seek(100)
        stream.write(os.urandom(8192))


def test_a_replacement_worker_meeting_a_broken_index_and_metrics_file_boots(lab: Lab, tmp_path: Path) -> None:
    """Workers that meet a broken cache index and metrics_file degrade and
    serve, at start and when a worker killed with -9 is replaced: no
    worker's start is refused, so the master never exits."""
    cache_dir, metrics_file = tmp_path / "cache", tmp_path / "metrics.sqlite"
    cache_dir.mkdir()
    broken_sqlite(cache_dir / "index.sqlite")
    broken_sqlite(metrics_file)
    with FaultServer(DATA) as backend:
        image_id = lab.api.add_image(data=DATA, locations=[location(backend.url("/image"), "web")])
        with lab.sidecar(cache_dir, metrics_file=metrics_file) as server:
            assert exact(download(server, image_id))
            os.kill(children(server.pid)[0], signal.SIGKILL)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and server.log().count("Booting worker") < 3:
                time.sleep(0.1)
            time.sleep(1)
            results = [download(server, image_id) for _ in range(4)]
            health = [healthcheck(server)[0]["status"] for _ in range(4)]
            log = server.log()
            alive = len(children(server.pid))
    assert log.count("Booting worker") == 3 and "Worker failed to boot" not in log, log[-3000:]
    assert alive == 2, "both workers live on"
    assert all(exact(result) for result in results)
    assert health == ["degraded"] * 4, health
    assert "failed (cache: DatabaseError" in log or "malformed" in log, log[-3000:]


def test_the_cache_directory_taken_away_while_it_runs(lab: Lab, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    with FaultServer(DATA) as backend:
        image_id = lab.api.add_image(data=DATA, locations=[location(backend.url("/image"), "web")])
        with lab.sidecar(cache_dir) as server:
            assert exact(download(server, image_id))
            shutil.rmtree(cache_dir / "fills")
            other = lab.api.add_image(data=DATA, locations=[location(backend.url("/other"), "web")])
            results = [download(server, other) for _ in range(3)]
            hits = [download(server, image_id) for _ in range(2)]
            health, _seconds = healthcheck(server)
    assert all(exact(result) for result in results)
    assert all(exact(hit) for hit in hits)
    assert health["status"] == "degraded" and "aside" in health["cache"]["state"], health


def stalled_client(port: int, path: str) -> socket.socket:
    """A client that sends its request, reads a few bytes, then reads nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    sock.recv(100)
    return sock


def worker_load(pids: list[int]) -> tuple[int, list[str]]:
    """(open descriptors that are not sockets, names of locproxy's own threads) of the workers."""
    files, threads = 0, []
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                files += not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            except FileNotFoundError:
                pass
        for task in os.listdir(f"/proc/{pid}/task"):
            name = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
            threads += [name] if name.startswith("locproxy-") and name not in ("locproxy-watchdog",) \
                and not name.startswith("locproxy-digest") else []
    return files, threads


def test_200_downloads_across_fills_follows_and_hits_with_a_stalled_client(lab: Lab, tmp_path: Path) -> None:
    """Five images, four of which fit the cache: fills, followers, hits and
    evictions at once, beside a client that stalls on its download. Every
    other download is exact and finishes at its own pace; afterwards the
    workers hold no more descriptors or threads than before."""
    images = [demo_bytes(f"load-{number}", 3 * (1 << 20) + number) for number in range(5)]
    with contextlib.ExitStack() as stack:
        backends = [stack.enter_context(FaultServer(data, mode="slow:50000000")) for data in images]
        ids = [lab.api.add_image(data=data, locations=[location(backend.url("/image"), "web")])
               for data, backend in zip(images, backends)]
        with lab.sidecar(tmp_path / "cache", cache_max_size="13M") as server:
            assert exact(download(server, ids[0]), images[0])
            time.sleep(1)
            workers = children(server.pid)
            before = worker_load(workers)
            staller = stalled_client(server.port, f"/v2/images/{ids[1]}/file")
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                results = list(pool.map(lambda n: (n % 5, download(server, ids[n % 5])), range(200)))
            seconds = time.monotonic() - started
            staller.close()
            deadline = time.monotonic() + 15
            while worker_load(workers) != before and time.monotonic() < deadline:
                time.sleep(0.2)
            after = worker_load(workers)
    wrong = [number for number, result in results if not exact(result, images[number])]
    assert not wrong, f"{len(wrong)} of 200 downloads not exact"
    assert seconds < 120, f"200 downloads took {seconds:.1f} s beside a stalled client"
    assert after == before == (before[0], []), f"files and locproxy threads before {before}, after {after}"
