"""Shared state of one benchmark run, and the helpers rows measure with.

``start()`` readies the image files, writes the catalog the stand-in upstream
serves, and starts what every row uses: the upstream, nginx (the sendfile and
proxy_pass peers, also the http backend of every ``http-*`` image) and the
main locproxy sidecar. All of it is stopped by the run's ``ExitStack``.

Catalog images, for each image file: ``file-NAME`` (a ``file://`` location),
``http-NAME`` (nginx's sendfile server), ``rbd-NAME`` (unreadable: locproxy
falls back to the upstream's ``/file``); ``failover`` (a refused port, then
nginx) and ``good-only`` from the small image.
"""

from __future__ import annotations

import contextlib
import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from bench import apps, images, measure, servers
from bench.glance import GlancePeer
from bench.images import GiB, ImageFile
from bench.progress import log
from bench.settings import SidecarConfig, Sizes
from locproxy.demo import location

IMAGE_DIR = images.CACHE_DIR / "images"


def web_url(static_port: int, image: ImageFile) -> str:
    """``image`` from nginx's sendfile server."""
    return f"http://127.0.0.1:{static_port}/{image.path.name}"


@dataclass
class Context:
    work: Path
    stack: contextlib.ExitStack
    sizes: Sizes
    config: SidecarConfig
    files: dict[str, ImageFile]
    static_port: int  # nginx's sendfile server: a peer, and the http backend
    dead_port: int  # refuses connections: the failover image's first location
    upstream: servers.Gunicorn
    nginx: servers.Nginx
    sidecar: servers.Gunicorn = field(init=False)  # the main one, started by start()
    glance: GlancePeer = field(default_factory=GlancePeer)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # label -> CPU seconds per GiB moved

    # -- images and URLs ---------------------------------------------------------------

    def image(self, size: int, index: int | None = None) -> ImageFile:
        return self.files[images.file_name(size, index)]

    def concurrent_images(self) -> list[ImageFile]:
        s = self.sizes
        return [self.image(s.concurrent_size, i) for i in range(s.concurrent_count)]

    def web_url(self, image: ImageFile) -> str:
        return web_url(self.static_port, image)

    def lp_url(self, image_id: str, server: servers.Gunicorn | None = None) -> str:
        return f"{(server or self.sidecar).url}/v2/images/{image_id}/file"

    # -- more sidecars -----------------------------------------------------------------

    def start_sidecar(self, name: str, config: SidecarConfig, upstream: str | None = None,
                      file_roots: str | None = None,
                      env: dict[str, str] | None = None) -> contextlib.AbstractContextManager[servers.Gunicorn]:
        """Another locproxy sidecar, by default in front of the stand-in upstream
        (``env``: more environment, e.g. a PYTHONPATH for the rados/rbd bindings)."""
        paste_globals = {
            "upstream": upstream or self.upstream.url,
            "file_roots": file_roots if file_roots is not None else str(IMAGE_DIR),
            "allowed_hosts": f"127.0.0.1:{self.static_port}, 127.0.0.1:{self.dead_port}",
            "location_strategy": "store_type",
            "store_type_preference": "file, http",
            "chunk_size": config.chunk_size,
            "metrics_file": "",  # per-worker memory, as the rows were written; a row may say auto
            **config.extra,
        }
        return servers.sidecar(name, self.work, paste_globals, workers=config.workers, threads=config.threads,
                               worker_class=config.worker_class, env=env)

    # -- how it went -------------------------------------------------------------------

    def log_mark(self, server: servers.Gunicorn | None = None) -> int:
        return len((server or self.sidecar).log())

    def served_by(self, mark: int, server: servers.Gunicorn | None = None) -> str:
        """How downloads since ``mark`` were served, from locproxy's INFO log lines."""
        text = (server or self.sidecar).log()[mark:]
        lines = re.findall(r"bytes \d+-\d+ sent from .*$", text, re.M)
        if not lines:
            return "path unknown (no INFO log lines)"
        kinds = {"sendfile": "(sendfile", "checked block by block": "against the image's fingerprint)",
                 "first read (digest)": "verified)", "first read checked beside": "checked after sending)"}
        counts = {kind: 0 for kind in [*kinds, "unchecked stream"]}
        for line in lines:
            kind = next((kind for kind, mark_ in kinds.items() if mark_ in line), "unchecked stream")
            counts[kind] += 1
        return ", ".join(f"{count} {kind}" for kind, count in counts.items() if count)

    def one(self, url: str, size: int, headers: dict | None = None, cpu: str | None = None,
            pids: Callable[[], list[int]] | None = None) -> Callable[[], float]:
        """One curl download -> MiB/s; with ``cpu``/``pids``, the CPU seconds
        per GiB those processes spent on it are recorded under ``cpu``."""
        def run() -> float:
            before = measure.cpu_seconds(pids()) if pids else 0.0
            speed = measure.curl(url, headers=headers, expect_size=size).mib_s
            if cpu and pids:
                self.cpu.setdefault(cpu, []).append((measure.cpu_seconds(pids()) - before) / (size / GiB))
            return speed
        return run

    def cpu_note(self, *labels: str) -> str:
        found = [f"{label} {statistics.median(self.cpu[label]):.2f}" for label in labels if self.cpu.get(label)]
        return "CPU seconds per GiB moved (median): " + ", ".join(found) if found else ""

    @staticmethod
    def pids_of(server: Any) -> Callable[[], list[int]]:
        """The processes doing ``server``'s work: workers, not an idle master."""
        if isinstance(server, servers.Nginx):
            return lambda: servers.children(server.process.pid)
        if isinstance(server, servers.Gunicorn):
            return lambda: server.workers
        return lambda: servers.children(server.proc.pid) if getattr(server, "proc", None) else []


# -- setup -------------------------------------------------------------------------------

def start(work: Path, stack: contextlib.ExitStack, sizes: Sizes, config: SidecarConfig,
          specs: Iterable[tuple[str, int]]) -> Context:
    """Image files ``specs`` (name, size) and the small one, the catalog, the
    upstream, nginx and the main sidecar."""
    files = _prepare_files([*specs, (images.file_name(sizes.small), sizes.small)])
    static_port = servers.free_port()
    dead_port = servers.refused_port()
    catalog = work / "catalog.json"
    catalog.write_text(json.dumps({"images": _catalog(files, sizes.small, static_port, dead_port)}))
    upstream = stack.enter_context(servers.gunicorn(
        "upstream", "bench.apps:upstream()", work, workers=1, threads=32, env={"BENCH_CATALOG": str(catalog)}))
    nginx = stack.enter_context(servers.nginx(IMAGE_DIR, work, static_port=static_port,
                                              api_upstream_port=upstream.port))
    context = Context(work, stack, sizes, config, files, static_port, dead_port, upstream, nginx)
    context.sidecar = stack.enter_context(context.start_sidecar("sidecar", config))
    log(f"nginx :{nginx.static_port} (sendfile) :{nginx.proxy_port} (proxy_pass), "
        f"upstream :{upstream.port}, locproxy :{context.sidecar.port} ({config.label()})")
    return context


def _prepare_files(specs: list[tuple[str, int]]) -> dict[str, ImageFile]:
    started = time.monotonic()
    files = images.ensure_all(list(dict.fromkeys(specs)), log)
    for image in files.values():
        images.warm(image)
    log(f"{len(files)} image files ready and in the page cache ({time.monotonic() - started:.1f}s)")
    return files


def _catalog(files: dict[str, ImageFile], small_size: int, static_port: int, dead_port: int) -> dict[str, dict]:
    """What the stand-in upstream serves: Glance JSON and the file behind it."""
    catalog: dict[str, dict] = {}

    def add(image_id: str, image: ImageFile, urls: list[tuple[str, str]]) -> None:
        locations = [location(url, store) for store, url in urls]
        catalog[image_id] = {
            "image": apps.glance_image(image_id, image_id, image.size, image.md5, image.sha512, locations),
            "path": str(image.path),
        }

    for image in files.values():
        add(f"file-{image.name}", image, [("fs", image.url)])
        add(f"http-{image.name}", image, [("web", web_url(static_port, image))])
        add(f"rbd-{image.name}", image, [("ceph", f"rbd://fsid/images/{image.name}/snap")])
    small = files[images.file_name(small_size)]
    add("failover", small, [("dead", f"http://127.0.0.1:{dead_port}/{small.path.name}"), ("web", web_url(static_port, small))])
    add("good-only", small, [("web", web_url(static_port, small))])
    return catalog
