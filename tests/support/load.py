"""Load through the real sidecar: concurrent verified downloads mixed with a
steady stream of metadata requests, on loopback.

* The upstream is the demo image API under gunicorn (its own processes, so
  the client's GIL does not slow it down); it also serves one image's bytes
  as an http backend (``/v2/images/{id}/file`` on a second bound port).
* The sidecar is ``gunicorn --paste`` (filter + proxy) with several workers
  and threads; one image downloads from a file root (sendfile once
  verified), one from the http backend (streamed and sha512-verified).
* The client is asyncio on raw keep-alive sockets: N download loops (each
  body compared byte for byte with the image) and an open-loop metadata
  schedule at a target rate (each JSON checked: id, location order).

Afterwards: zero errors, zero corrupt bodies, and the workers' open file
descriptors and pooled upstream connections did not grow between the
warm-up and the end of the run.

``run_load(...)`` runs it and returns a ``LoadReport``; ``check(report)``
asserts the promises. ``tests/test_load.py`` runs it (short by default, the
full load as ``slow``), ``bench/reliability.py --load`` prints the figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from locproxy.demo import DemoImageAPI, demo_bytes, location
from tests.support.processes import children, free_port
from tests.support.servers import run_gunicorn, sidecar_ini

SPEC_ENV = "LOCPROXY_LOAD_SPEC"
FILE_IMAGE = "10ad0000-0000-4000-8000-00000000000a"
HTTP_IMAGE = "10ad0000-0000-4000-8000-00000000000b"


def load_upstream() -> DemoImageAPI:
    """gunicorn app factory (``tests.support.load:load_upstream()``): the demo
    API holding the images described by the JSON file named in $LOCPROXY_LOAD_SPEC."""
    spec = json.loads(Path(os.environ[SPEC_ENV]).read_text())
    api = DemoImageAPI()
    for image in spec["images"]:
        api.add_image(id=image["id"], data=Path(image["data"]).read_bytes(), locations=image["locations"])
    return api


# -- the world -----------------------------------------------------------------------

@dataclass
class LoadWorld:
    sidecar: Any
    upstream: Any
    upstream_ports: tuple[int, ...]
    data: dict[str, bytes]
    pool_maxsize: int

    @property
    def port(self) -> int:
        return self.sidecar.port

    def worker_pids(self) -> list[int]:
        return children(self.sidecar.pid)


@contextmanager
def load_world(base: Path, *, workers: int = 2, threads: int = 16, image_size: int = 1 << 20) -> Iterator[LoadWorld]:
    root = base / "store"
    root.mkdir()
    data = {FILE_IMAGE: demo_bytes("load-file", image_size), HTTP_IMAGE: demo_bytes("load-http", image_size + 1)}
    for image_id, payload in data.items():
        (root / image_id).write_bytes(payload)
    backend_port = free_port()  # the upstream also listens here, as the http backend
    backend = f"http://127.0.0.1:{backend_port}"
    spec = {"images": [
        # Upstream order: the http copy first; the weight strategy puts the file first.
        {"id": FILE_IMAGE, "data": str(root / FILE_IMAGE), "locations": [
            location(f"{backend}/v2/images/{FILE_IMAGE}/file", "web", weight=1),
            location(f"file://{root / FILE_IMAGE}", "disk", weight=9)]},
        {"id": HTTP_IMAGE, "data": str(root / HTTP_IMAGE), "locations": [
            location(f"{backend}/v2/images/{HTTP_IMAGE}/file", "web", weight=9),
            location(f"file://{root}/missing-{HTTP_IMAGE}", "disk", weight=1)]},
    ]}
    spec_path = base / "spec.json"
    spec_path.write_text(json.dumps(spec))
    pool_maxsize = threads * 2
    with ExitStack() as stack:
        upstream = stack.enter_context(run_gunicorn(
            "tests.support.load:load_upstream()", workers=2, threads=32, env={SPEC_ENV: str(spec_path)},
            extra_args=["--bind", f"127.0.0.1:{backend_port}", "--keep-alive", "30"]))
        ini = sidecar_ini(base / "sidecar.ini", upstream.url, {
            "location_strategy": "weight",
            "file_roots": root,
            "allowed_hosts": f"127.0.0.1:{backend_port}",
            "chunk_size": "256K",
            "backend_pool_maxsize": pool_maxsize,
            "backend_connect_timeout": 5,
            "backend_read_timeout": 10,
        }, {"pool_maxsize": pool_maxsize, "connect_timeout": 5, "read_timeout": 20, "chunk_size": "256K"},
            log_level="WARNING")
        sidecar = stack.enter_context(run_gunicorn(ini, workers=workers, threads=threads,
                                                   extra_args=["--keep-alive", "10"]))
        yield LoadWorld(sidecar, upstream, (upstream.port, backend_port), data, pool_maxsize)


# -- resources of the sidecar's workers ---------------------------------------------------

def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_TCP_STATES = {"01": "established", "08": "close_wait", "06": "time_wait"}


def pooled_connections(pid: int, remote_ports: tuple[int, ...]) -> Counter[tuple[int, str]]:
    """The worker's TCP sockets to the upstream/backend ports, by (port, state)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    states: Counter[tuple[int, str]] = Counter()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[9] in inodes and remote_port in remote_ports:
                states[remote_port, _TCP_STATES.get(fields[3], fields[3])] += 1
    return states


@dataclass
class Resources:
    """The sidecar workers' open fds, and among them the pooled connections
    to the upstream and the http backend (by worker and port)."""

    fds: dict[int, int]
    pooled: dict[int, Counter[tuple[int, str]]]

    @classmethod
    def of(cls, world: LoadWorld) -> Resources:
        pids = world.worker_pids()
        return cls({pid: open_fds(pid) for pid in pids},
                   {pid: pooled_connections(pid, world.upstream_ports) for pid in pids})

    @property
    def total_fds(self) -> int:
        return sum(self.fds.values())

    @property
    def total_pooled(self) -> int:
        return sum(sum(counter.values()) for counter in self.pooled.values())

    @property
    def close_wait(self) -> int:
        return sum(count for counter in self.pooled.values() for (_, state), count in counter.items()
                   if state == "close_wait")

    def largest_pool(self) -> int:
        """The most connections one worker holds to one port."""
        sizes = Counter()
        for pid, counter in self.pooled.items():
            for (port, _), count in counter.items():
                sizes[pid, port] += count
        return max(sizes.values(), default=0)

    def __str__(self) -> str:
        return (f"{self.total_fds} fds, of which {self.total_pooled} pooled upstream/backend connections "
                f"({self.close_wait} in CLOSE_WAIT; largest pool {self.largest_pool()}), "
                f"{self.total_fds - self.total_pooled} other")


# -- the client ----------------------------------------------------------------------------

class HTTPError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection (raw asyncio streams)."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port, self.timeout = port, timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20), self.timeout)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), self.timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), self.timeout)
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await asyncio.wait_for(self._chunked(), self.timeout)
        else:
            raise HTTPError(f"neither Content-Length nor chunked: {headers}")
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")  # no trailers expected
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            if await self.reader.readexactly(2) != b"\r\n":
                raise HTTPError("bad chunk framing")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    done: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    corrupt: int = 0
    nbytes: int = 0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


CLIENT_ERRORS = (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, HTTPError, ValueError)


async def _get_200(connection: Connection, path: str, stats: Stats,
                   parse: Callable[[bytes], Any] = bytes) -> Any:
    """GET ``path``: the parsed body of a 200 (its latency recorded), or
    None with the error or the status counted (after an error the
    connection is closed, and the next request opens a new one)."""
    started = time.monotonic()
    try:
        status, body = await connection.get(path)
        value = parse(body)
    except CLIENT_ERRORS as error:
        stats.errors[type(error).__name__] += 1
        await connection.close()
        return None
    stats.latencies.append(time.monotonic() - started)
    if status != 200:
        stats.errors[f"HTTP {status}"] += 1
        return None
    return value


async def _download_loop(world: LoadWorld, deadline: float, stats: Stats, number: int, timeout: float) -> None:
    connection = Connection(world.port, timeout)
    images = [FILE_IMAGE, HTTP_IMAGE]
    turn = number
    try:
        while time.monotonic() < deadline:
            image_id = images[turn % 2]
            turn += 1
            body = await _get_200(connection, f"/v2/images/{image_id}/file", stats)
            if body is None:
                continue
            if body != world.data[image_id]:
                stats.corrupt += 1
            else:
                stats.done += 1
                stats.nbytes += len(body)
    finally:
        await connection.close()


async def _metadata_loop(world: LoadWorld, deadline: float, stats: Stats, schedule: Iterator[float],
                         timeout: float) -> None:
    connection = Connection(world.port, timeout)
    expected_first = {FILE_IMAGE: "disk", HTTP_IMAGE: "web"}
    try:
        for number, when in enumerate(schedule):
            if when >= deadline or time.monotonic() >= deadline:
                break  # behind schedule: what was not sent in time is not sent
            delay = when - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            image_id = (FILE_IMAGE, HTTP_IMAGE)[number % 2]
            document = await _get_200(connection, f"/v2/images/{image_id}", stats, json.loads)
            if document is None:
                continue
            if document.get("id") != image_id or \
                    document["locations"][0]["metadata"]["store"] != expected_first[image_id]:
                stats.corrupt += 1
            else:
                stats.done += 1
    finally:
        await connection.close()


class _Schedule:
    """Shared open-loop schedule: request k is due at start + k / rate."""

    def __init__(self, start: float, rate: float) -> None:
        self.start, self.rate, self.next = start, rate, 0

    def __iter__(self) -> Iterator[float]:
        while True:
            number, self.next = self.next, self.next + 1
            yield self.start + number / self.rate


async def _run(world: LoadWorld, seconds: float, downloads: int, rate: float, connections: int,
               timeout: float) -> tuple[Stats, Stats, float]:
    started = time.monotonic()
    deadline = started + seconds
    download_stats, metadata_stats = Stats(), Stats()
    schedule = iter(_Schedule(started, rate))
    tasks = [_download_loop(world, deadline, download_stats, n, timeout) for n in range(downloads)]
    tasks += [_metadata_loop(world, deadline, metadata_stats, schedule, timeout) for _ in range(connections)]
    await asyncio.gather(*tasks)
    return download_stats, metadata_stats, time.monotonic() - started


@dataclass
class LoadReport:
    seconds: float
    downloads: Stats
    metadata: Stats
    target_rate: float
    concurrency: int
    connections: int
    before: Resources
    after: Resources
    workers: int
    threads: int
    pool_maxsize: int

    @property
    def errors(self) -> int:
        return sum(self.downloads.errors.values()) + sum(self.metadata.errors.values())

    @property
    def corrupt(self) -> int:
        return self.downloads.corrupt + self.metadata.corrupt

    def lines(self) -> list[str]:
        d, m = self.downloads, self.metadata
        return [
            f"sidecar: {self.workers} workers x {self.threads} threads; {self.concurrency} concurrent download "
            f"loops + metadata at a target of {self.target_rate:g} req/s (open loop over {self.connections} "
            f"keep-alive connections) for {self.seconds:.1f} s",
            f"downloads: {d.done} verified ({d.done / self.seconds:.1f}/s, "
            f"{d.nbytes / self.seconds / 1e6:.0f} MB/s), p50 {d.percentile(0.5) * 1000:.0f} ms, "
            f"p99 {d.percentile(0.99) * 1000:.0f} ms",
            f"metadata: {m.done} ({m.done / self.seconds:.0f} req/s achieved, target {self.target_rate:g}), "
            f"p50 {m.percentile(0.5) * 1000:.1f} ms, p99 {m.percentile(0.99) * 1000:.1f} ms",
            f"errors: {self.errors} {dict(d.errors + m.errors) or ''}; corrupt bodies: {self.corrupt}",
            f"workers after the warm-up: {self.before}",
            f"workers after the load: {self.after} (pool bound {self.pool_maxsize} per worker and host)",
        ]


def run_load(base: Path, *, seconds: float, downloads: int, rate: float, workers: int = 2, threads: int = 16,
             connections: int = 32, image_size: int = 1 << 20, warmup: float = 1.5,
             timeout: float = 30.0) -> LoadReport:
    """Start the world, warm it up at the same concurrency (pools fill),
    take the resource baseline, run the load, settle, measure again."""
    with load_world(base, workers=workers, threads=threads, image_size=image_size) as world:
        asyncio.run(_run(world, warmup, downloads, rate, connections, timeout))
        time.sleep(0.5)
        before = Resources.of(world)
        download_stats, metadata_stats, elapsed = asyncio.run(
            _run(world, seconds, downloads, rate, connections, timeout))
        time.sleep(0.5)
        after = Resources.of(world)
        return LoadReport(elapsed, download_stats, metadata_stats, rate, downloads, connections, before, after,
                          workers, threads, world.pool_maxsize)


def check(report: LoadReport) -> None:
    assert report.errors == 0, report.lines()
    assert report.corrupt == 0, report.lines()
    assert report.downloads.done > 0 and report.metadata.done > 0, report.lines()
    before, after = report.before, report.after
    assert set(after.fds) == set(before.fds), "the same workers (none crashed or was replaced)"
    # Everything but pooled connections (files, client sockets, listeners)
    # is back to the baseline: nothing leaked.
    assert after.total_fds - after.total_pooled <= before.total_fds - before.total_pooled + 4, report.lines()
    # Pools may grow with the peak concurrency, never past their bound.
    assert after.largest_pool() <= report.pool_maxsize, report.lines()
