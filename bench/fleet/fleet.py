"""A fleet on a ``netlab.Lab``: backends, the image API, one locproxy sidecar
per node, a workload per node, an optional backend cut, and what happened.

Shared by the bench (``bench/fleet/main.py``) and the test
(``tests/test_fleet.py``). Each ``Fleet.run`` starts fresh backends and
sidecars (empty ``metrics_file``: nothing learnt), starts every node's client
at once, waits for them (bounded), stops what it started and returns a
``RunResult`` read from the clients' event files, the sidecars' logs and
metrics files, and the backends' request logs:

* each download's time, bytes, exactness and **sources** (the backends
  locproxy's INFO line names, in order: ``(0, 1)`` = started on backend 0,
  resumed from backend 1), and the failures logged for it;
* per node, the **probe traffic** each backend saw from it (ranged requests
  of exactly ``probe_size`` bytes from byte 0);
* with a ``Fault``: when the links went down and came back, and per node the
  cut backend's record in the metrics file, polled every 0.1 s (failures,
  demotion).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from bench.fleet.netlab import Lab, LabError, Proc, Topology

REPO_ROOT = Path(__file__).resolve().parents[2]
PASTE_INI = REPO_ROOT / "etc" / "paste.ini"
SIDECAR_PORT = 8080
MAX_IMAGES = 30  # the demo API caches the digests of 32 images' bytes
POLL = 0.1
READY_TIMEOUT = 120.0
UPSTREAM_TIMEOUT = 180.0  # loads and hashes every image before listening

# locproxy's log lines the results are read from (locproxy/download.py, probing.py).
_STAMP = r"(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "
SENT_LINE = re.compile(_STAMP + r"INFO \S+: image (?P<id>\S+): bytes \d+-\d+ sent from (?P<labels>.+?)"
                       r"(?: \(\w+ verified\)| \(sendfile\))?$")
FAILED_LINE = re.compile(_STAMP + r"WARNING \S+: image (?P<id>\S+): backend (?P<label>\S+) failed "
                         r"(?P<where>before the first byte|at byte \d+): (?P<reason>.*); trying the next location$")

UPSTREAM_SOURCE = -1


# -- images ------------------------------------------------------------------

@dataclass(frozen=True)
class ImageFile:
    id: str
    name: str
    path: Path
    size: int
    sha512: str

    @property
    def file(self) -> str:
        return self.path.name


def make_images(directory: Path, count: int, size: int, tag: str = "fleet") -> list[ImageFile]:
    """``count`` images of ``size`` random bytes (deterministic per name),
    kept in ``directory`` with their digests so later runs reuse them."""
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / "digests.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    images = []
    for number in range(count):
        name = f"{tag}-{size}-{number:02d}"
        path = directory / f"{name}.img"
        entry = index.get(name)
        if not (entry and path.exists() and path.stat().st_size == size
                and path.stat().st_mtime_ns == entry["mtime_ns"]):
            data = random.Random(name).randbytes(size)
            path.write_bytes(data)
            entry = index[name] = {"sha512": hashlib.sha512(data).hexdigest(), "mtime_ns": path.stat().st_mtime_ns}
        images.append(ImageFile(str(uuid.uuid5(uuid.NAMESPACE_URL, f"locproxy-fleet/{name}")), name, path, size,
                                entry["sha512"]))
    index_path.write_text(json.dumps(index, indent=1))
    return images


# -- what a run returns ----------------------------------------------------------

@dataclass
class Download:
    node: int
    n: int  # 1-based position in the node's sequence
    image: str
    started: float  # epoch seconds
    seconds: float
    bytes: int
    ok: bool  # status 200, exact length and sha512
    error: str | None
    sources: tuple[int, ...] = ()  # backends in the order they served bytes; -1 = the image API
    failures: tuple[tuple[int, str], ...] = ()  # (backend, reason) logged for this download


@dataclass
class NodeHealth:
    """The cut backend's record in one node's metrics file, through a fault."""

    polls: list[tuple[float, int, int, float]] = field(default_factory=list)  # (t, failures, total, demoted_until)

    def total_at(self, when: float) -> int:
        before = [poll for poll in self.polls if poll[0] <= when]
        return before[-1][2] if before else 0

    def first_demotion(self) -> tuple[float, int, float] | None:
        """(time seen, total failures then, demoted until) at the first poll
        showing the backend demoted."""
        for t, _failures, total, demoted_until in self.polls:
            if demoted_until > t:
                return t, total, demoted_until
        return None

    def failed_attempts(self, cut_at: float, restored_at: float, slack: float) -> int:
        """Failures of the backend from the cut on, of every attempt that
        started while it was not demoted: until its first cool-down ended
        (no attempt starts while it is demoted; one in flight when the
        demotion comes fails just after it), or, if it was never demoted,
        until ``slack`` seconds (the longest an attempt can take to fail)
        after the links came back."""
        demotion = self.first_demotion()
        until = restored_at + slack if demotion is None else demotion[2]
        return self.total_at(until) - self.total_at(cut_at)

    def healthy_again(self, after: float) -> float | None:
        """The first poll after ``after`` with no failures and no demotion."""
        for t, failures, _total, demoted_until in self.polls:
            if t > after and failures == 0 and demoted_until <= t:
                return t
        return None


@dataclass(frozen=True)
class Fault:
    """Hold ``node``'s download number ``download`` after ``at`` bytes, cut
    ``backend``'s links, release the download, restore the links
    ``outage`` seconds later."""

    backend: int
    node: int
    download: int
    at: int
    outage: float


@dataclass
class RunResult:
    name: str
    strategy: str
    options: dict[str, Any]
    topology: Topology
    started: float
    ended: float
    downloads: list[Download]
    probe_bytes: dict[int, int]  # node -> bytes of probe responses, all backends
    probe_requests: dict[int, int]
    metric_series: dict[int, int]  # node -> locproxy_* series its /metrics showed at the end
    fault: Fault | None = None
    cut_at: float | None = None
    restored_at: float | None = None
    health: dict[int, NodeHealth] = field(default_factory=dict)

    def of_node(self, node: int) -> list[Download]:
        return sorted((d for d in self.downloads if d.node == node), key=lambda d: d.n)

    def total_seconds(self, node: int | None = None) -> float:
        return sum(d.seconds for d in self.downloads if node is None or d.node == node)

    def from_fastest(self, download: Download) -> bool:
        return download.sources == (self.topology.fastest(download.node),)

    def converged_from(self, node: int, last: int | None = None) -> int | None:
        """The first download number from which every download (up to
        ``last``) came from the node's fastest backend alone; None if even the
        last one did not."""
        downloads = [d for d in self.of_node(node) if last is None or d.n <= last]
        first = None
        for download in downloads:
            if self.from_fastest(download):
                first = download.n if first is None else first
            else:
                first = None
        return first

    def attempt_slack(self) -> float:
        """Seconds an attempt on a dead backend can take to fail."""
        return float(self.options.get("backend_connect_timeout", 5)) + float(
            self.options.get("backend_read_timeout", 30))

    def probe_rate(self, node: int) -> float:
        """Bytes per second of probe responses this node received."""
        return self.probe_bytes.get(node, 0) / max(self.ended - self.started, 1e-9)


# -- the fleet -------------------------------------------------------------------

def _no_control_socket() -> list[str]:
    """gunicorn >= 25 opens a control socket in ~/.gunicorn by default: one
    shared path for every sidecar of the fleet. Not wanted."""
    from gunicorn.config import KNOWN_SETTINGS

    known = any("--no-control-socket" in (setting.cli or ()) for setting in KNOWN_SETTINGS)
    return ["--no-control-socket"] if known else []


class Fleet:
    """Backends holding ``images``, the image API listing them, and per-run
    sidecars and clients, on ``lab``. ``workdir`` holds everything a run writes."""

    def __init__(self, lab: Lab, workdir: Path, images: Sequence[ImageFile], *,
                 sidecar_threads: int = 8, python: str = sys.executable) -> None:
        if len(images) > MAX_IMAGES:
            raise ValueError(f"at most {MAX_IMAGES} images")
        self.lab = lab
        self.topology = lab.topology
        self.workdir = workdir
        self.images = list(images)
        self.python = python
        self.sidecar_threads = sidecar_threads
        self.env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                    "PYTHONUNBUFFERED": "1"}
        self.gunicorn_config = workdir / "gunicorn.conf.py"
        self.upstream: Proc | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.gunicorn_config.write_text("")  # no gunicorn.conf.py from the working directory
        self._fill_backends()

    def _fill_backends(self) -> None:
        """Each backend's own directory of the images (hard links: copies
        that cost no disk)."""
        for backend in range(self.topology.backends):
            root = self.backend_root(backend)
            root.mkdir(exist_ok=True)
            for image in self.images:
                target = root / image.file
                if not target.exists():
                    try:
                        os.link(image.path, target)
                    except OSError:
                        target.write_bytes(image.path.read_bytes())

    def backend_root(self, backend: int) -> Path:
        return self.workdir / f"b{backend}"

    def start_upstream(self) -> None:
        """The image API in its namespace, every image's copies listed in backend order."""
        manifest = self.workdir / "manifest.json"
        manifest.write_text(json.dumps({
            "images": [{"id": i.id, "name": i.name, "path": str(i.path), "file": i.file, "sha512": i.sha512}
                       for i in self.images],
            "backends": [{"name": f"b{j}", "url": self.topology.backend_url(j)}
                         for j in range(self.topology.backends)],
        }))
        self.upstream = self.lab.start("upstream", self.topology.api_ns, [
            self.python, "-m", "gunicorn", "--config", str(self.gunicorn_config), "--preload",
            "--bind", f"{self.topology.api_url.split('//')[1]}", "--workers", "1", "--threads", "16",
            "--timeout", "120", "--error-logfile", "-", *_no_control_socket(),
            f"bench.fleet.upstream:app({str(manifest)!r})",
        ], self.workdir / "upstream.log", cwd=REPO_ROOT, env=self.env)
        self.upstream.wait_for_log("Listening at", "Booting worker", timeout=UPSTREAM_TIMEOUT)

    # -- one run -------------------------------------------------------------

    def run(self, name: str, options: Mapping[str, Any], sequence: Sequence[ImageFile], *,
            pause: float = 0.0, fault: Fault | None = None, timeout: float = 900.0) -> RunResult:
        """Every node downloads ``sequence`` through its own sidecar, configured
        with the filter ``options`` (``location_strategy`` and the rest)."""
        if self.upstream is None:
            self.start_upstream()
        topo = self.topology
        rundir = self.run_dir(name)
        rundir.mkdir(parents=True, exist_ok=False)
        started_procs: list[Proc] = []
        try:
            for backend in range(topo.backends):
                proc = self.lab.start(f"backend {backend}", topo.backend_ns(backend), [
                    self.python, "-m", "bench.fleet.backend", "--bind", topo.backend_address(backend),
                    "--port", str(topo.port), "--root", str(self.backend_root(backend)),
                    "--log", str(rundir / f"b{backend}.jsonl"),
                ], rundir / f"b{backend}.log", cwd=REPO_ROOT, env=self.env)
                started_procs.append(proc)
            for proc in started_procs:
                proc.wait_for_log("listening", timeout=READY_TIMEOUT)
            sidecars = [self._start_sidecar(rundir, node, options) for node in range(topo.nodes)]
            started_procs += sidecars
            clients = [self._start_client(rundir, node, sequence, pause, fault) for node in range(topo.nodes)]
            started_procs += clients
            self._wait_ready(rundir, clients)
            begin = time.time()
            (rundir / "start").touch()
            cut_at, restored_at, health = self._supervise(rundir, clients, fault, begin + timeout)
            end = time.time()
        finally:
            for proc in reversed(started_procs):
                self.lab.stop(proc)
        (rundir / "run.json").write_text(json.dumps({
            "name": name, "options": dict(options), "started": begin, "ended": end,
            "sequence": [image.id for image in sequence], "cut_at": cut_at, "restored_at": restored_at,
            "fault": None if fault is None else fault.__dict__,
            "health": {str(node): record.polls for node, record in health.items()},
        }, default=str))
        return read_result(rundir, topo)

    def run_dir(self, name: str) -> Path:
        """Where run ``name`` keeps its logs, event and metrics files."""
        return self.workdir / (re.sub(r"[^A-Za-z0-9_]+", "-", name).strip("-") or "run")

    def _start_sidecar(self, rundir: Path, node: int, options: Mapping[str, Any]) -> Proc:
        topo = self.topology
        nodedir = rundir / f"n{node}"
        nodedir.mkdir()
        config = nodedir / "locproxy.ini"
        config.write_text("[locproxy]\n" + "".join(f"{key} = {value}\n" for key, value in options.items()))
        hosts = ", ".join(f"{topo.backend_address(j)}:{topo.port}" for j in range(topo.backends))
        globals_ = {
            "upstream": topo.api_url,
            "allowed_hosts": hosts,
            "metrics_file": nodedir / "metrics.sqlite",
            "config_file": config,
            "location_strategy": options.get("location_strategy", "location_order"),
        }
        proc = self.lab.start(f"sidecar {node}", topo.node_ns(node), [
            self.python, "-m", "gunicorn", "--config", str(self.gunicorn_config), "--paste", str(PASTE_INI),
            "--bind", f"127.0.0.1:{SIDECAR_PORT}", "--workers", "1", "--threads", str(self.sidecar_threads),
            "--timeout", "60", "--graceful-timeout", "2", "--error-logfile", "-", *_no_control_socket(),
            *[arg for key, value in globals_.items() for arg in ("--paste-global", f"{key}={value}")],
        ], nodedir / "sidecar.log", cwd=REPO_ROOT, env=self.env)
        return proc

    def _start_client(self, rundir: Path, node: int, sequence: Sequence[ImageFile], pause: float,
                      fault: Fault | None) -> Proc:
        nodedir = rundir / f"n{node}"
        hold = None
        if fault is not None and fault.node == node:
            hold = {"download": fault.download, "at": fault.at, "release_file": str(rundir / "release")}
        plan = nodedir / "plan.json"
        plan.write_text(json.dumps({
            "downloads": [{"id": i.id, "size": i.size, "sha512": i.sha512} for i in sequence],
            "pause": pause, "start_file": str(rundir / "start"), "hold": hold,
            "metrics_file": str(nodedir / "metrics.txt"),
        }))
        return self.lab.start(f"client {node}", self.topology.node_ns(node), [
            self.python, "-m", "bench.fleet.client", "--base", f"http://127.0.0.1:{SIDECAR_PORT}",
            "--plan", str(plan), "--out", str(nodedir / "events.jsonl"),
        ], nodedir / "client.log", cwd=REPO_ROOT, env=self.env)

    def _wait_ready(self, rundir: Path, clients: list[Proc]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        for node, client in enumerate(clients):
            events = rundir / f"n{node}" / "events.jsonl"
            while not any(e.get("event") == "ready" for e in _events(events)):
                if not client.alive() or time.monotonic() > deadline:
                    sidecar_log = (rundir / f"n{node}" / "sidecar.log")
                    raise LabError(f"node {node} not ready:\n{client.log()[-3000:]}\n"
                                   f"sidecar:\n{sidecar_log.read_text(errors='replace')[-3000:]}")
                time.sleep(POLL)

    def _supervise(self, rundir: Path, clients: list[Proc], fault: Fault | None,
                   deadline: float) -> tuple[float | None, float | None, dict[int, NodeHealth]]:
        """Wait for the clients (bounded); run the fault; poll the metrics files."""
        cut_at = restored_at = None
        health = {node: NodeHealth() for node in range(self.topology.nodes)} if fault else {}
        while any(client.alive() for client in clients):
            now = time.time()
            if now > deadline:
                raise LabError(f"clients still running at the deadline; see {rundir}")
            if fault is not None:
                if cut_at is None and any(e.get("event") == "held"
                                          for e in _events(rundir / f"n{fault.node}" / "events.jsonl")):
                    self.lab.set_backend_links(fault.backend, up=False)
                    cut_at = time.time()
                    (rundir / "release").touch()
                elif cut_at is not None and restored_at is None and now >= cut_at + fault.outage:
                    self.lab.set_backend_links(fault.backend, up=True)
                    restored_at = time.time()
                key = self.topology.backend_url(fault.backend)
                for node, record in health.items():
                    row = _tracker_row(rundir / f"n{node}" / "metrics.sqlite", key)
                    if row is not None:
                        record.polls.append((time.time(), *row))
            time.sleep(POLL)
        if fault is not None and cut_at is not None and restored_at is None:
            self.lab.set_backend_links(fault.backend, up=True)
            restored_at = time.time()
        return cut_at, restored_at, health

def read_result(rundir: Path, topo: Topology) -> RunResult:
    """A finished run, read back from its directory: ``run.json`` (what the
    supervisor saw), the clients' event files, the sidecars' logs and
    ``/metrics``, the backends' request logs."""
    run = json.loads((rundir / "run.json").read_text())
    options = run["options"]
    downloads = []
    for node in range(topo.nodes):
        nodedir = rundir / f"n{node}"
        records = [e for e in _events(nodedir / "events.jsonl") if e.get("event") == "download"]
        node_downloads = [Download(node, e["n"], e["image"], e["started"], e["seconds"], e["bytes"],
                                   e["ok"], e["error"]) for e in records]
        _attach_sources(node_downloads, (nodedir / "sidecar.log").read_text(errors="replace"), topo)
        downloads += node_downloads
        if len(node_downloads) != len(run["sequence"]):
            raise LabError(f"node {node}: {len(node_downloads)} of {len(run['sequence'])} downloads recorded; "
                           f"see {nodedir}")
    probe_size = _size(options.get("probe_size", "64K"))
    probe_bytes: dict[int, int] = {}
    probe_requests: dict[int, int] = {}
    for backend in range(topo.backends):
        for record in _events(rundir / f"b{backend}.jsonl"):
            node = _node_of(record["peer"])
            if record["range"] == f"bytes=0-{probe_size - 1}" and node is not None:
                probe_bytes[node] = probe_bytes.get(node, 0) + record["bytes"]
                probe_requests[node] = probe_requests.get(node, 0) + 1
    metric_series = {}
    for node in range(topo.nodes):
        metrics = rundir / f"n{node}" / "metrics.txt"
        if metrics.exists():
            metric_series[node] = sum(line.startswith("locproxy_") for line in metrics.read_text().splitlines())
    fault = None if run["fault"] is None else Fault(**run["fault"])
    health = {int(node): NodeHealth([tuple(poll) for poll in polls]) for node, polls in run["health"].items()}
    return RunResult(run["name"], str(options.get("location_strategy")), options, topo, run["started"],
                     run["ended"], downloads, probe_bytes, probe_requests, metric_series, fault, run["cut_at"],
                     run["restored_at"], health)


def _events(path: Path) -> Iterator[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return
    for line in text.splitlines():
        if line.endswith("}"):  # a line being written is skipped until complete
            yield json.loads(line)


def _tracker_row(path: Path, key: str) -> tuple[int, int, float] | None:
    """(consecutive failures, total failures, demoted_until) of ``key`` in a
    sidecar's metrics file, or None while it has no record."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(str(path), timeout=0.5)
        try:
            row = db.execute("SELECT failures, total_failures, demoted_until FROM backends WHERE key = ?",
                             (key,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return None if row is None else (int(row[0]), int(row[1]), float(row[2]))


def _node_of(peer: str) -> int | None:
    """Node ``i``'s link addresses are ``10.{100+i}.*.2``."""
    parts = peer.split(".")
    if len(parts) == 4 and parts[0] == "10" and int(parts[1]) >= 100:
        return int(parts[1]) - 100
    return None


def _size(value: Any) -> int:
    text = str(value).strip().upper()
    factor = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * factor


def _attach_sources(downloads: list[Download], log: str, topo: Topology) -> None:
    """Sources and failures of each download, from its sidecar's log. A node
    downloads one image at a time, so the n-th "sent from" line for an image
    belongs to the n-th download of it; failure lines for the image before
    that line belong to it too."""
    pending: dict[str, list[tuple[int, str]]] = {}
    sent: dict[str, list[tuple[tuple[int, ...], tuple[tuple[int, str], ...]]]] = {}
    for line in log.splitlines():
        if match := FAILED_LINE.match(line):
            backend = topo.backend_of(match["label"])
            pending.setdefault(match["id"], []).append(
                (UPSTREAM_SOURCE if backend is None else backend, match["reason"]))
        elif match := SENT_LINE.match(line):
            labels = match["labels"].split(", ")
            sources = tuple(UPSTREAM_SOURCE if (b := topo.backend_of(label)) is None else b for label in labels)
            sent.setdefault(match["id"], []).append((sources, tuple(pending.pop(match["id"], []))))
    for download in downloads:
        queue = sent.get(download.image)
        if queue:
            download.sources, download.failures = queue.pop(0)
        else:
            download.failures = tuple(pending.pop(download.image, []))
