"""The site cache's lab for the tests of tests/test_cache.py and
tests/test_cache_faults.py: the demo image API as the upstream, sidecars
(real gunicorn, two workers) with a cache directory each test gives, and
what those tests look at: exact bodies, the backend's bytes, fills and
their fillers."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from locproxy.demo import DemoImageAPI, demo_bytes, serve_wsgi
from tests.support.client import Fetched, fetch
from tests.support.faultserver import FaultServer
from tests.support.servers import run_gunicorn, sidecar_ini

MiB = 1 << 20
DATA = demo_bytes("cache-tests", 8 * MiB + 11)
DIGEST = ("sha512", hashlib.sha512(DATA).hexdigest())



class Lab:
    def __init__(self, base: Path, api: DemoImageAPI, upstream: str) -> None:
        self.base, self.api, self.upstream = base, api, upstream

    @contextmanager
    def sidecar(self, cache_dir: Path, workers: int = 2, **options: Any) -> Iterator[Any]:
        cache_dir.mkdir(exist_ok=True)
        ini = sidecar_ini(self.base / f"sidecar-{os.urandom(3).hex()}.ini", self.upstream, {
            "allowed_hosts": "127.0.0.1", "chunk_size": "256K", "cache_dir": cache_dir,
            "cache_max_size": options.pop("cache_max_size", "1G"), "backend_read_timeout": 5,
            "healthcheck_path": "/healthcheck", **options})
        with run_gunicorn(ini, workers=workers, threads=16) as server:
            yield server


def lab_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("cache")
    api = DemoImageAPI()
    with serve_wsgi(api) as upstream:
        yield Lab(base, api, upstream.url)


def exact(result: Fetched, data: bytes = DATA) -> bool:
    return (result.status, result.complete) in ((200, True), (206, True)) and result.body == data


def downloads(server: Any, image_id: str, count: int, headers: dict[str, str] | None = None) -> list[Fetched]:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: fetch(server.port, f"/v2/images/{image_id}/file", headers=headers,
                                             timeout=60), range(count)))


def bytes_sent(backend: FaultServer) -> int:
    """What the backend served: whole GETs count the image, ranges their span."""
    total = 0
    for request in backend.requests:
        span = re.match(r"bytes=(\d+)-(\d+)", request.headers.get("range", ""))
        total += int(span.group(2)) - int(span.group(1)) + 1 if span else len(DATA)
    return total


def wait_for_fill(fills: Path, nbytes: int) -> Path:
    """The fill file once it holds ``nbytes`` (workers make the directory as they load)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        parts = list(fills.iterdir()) if fills.is_dir() else []
        if parts and parts[0].stat().st_size >= nbytes:
            return parts[0]
        time.sleep(0.05)
    raise AssertionError(f"no fill of {nbytes} bytes in {fills}")


def filler_pid(part: Path) -> int:
    """The process holding the write lock on a fill file (/proc/locks)."""
    inode = part.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "FLOCK" in fields and "WRITE" in fields and fields[5].rsplit(":", 1)[1] == str(inode):
            return int(fields[4])
    raise AssertionError(f"no process holds {part}")


