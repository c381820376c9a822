"""``bench/run``: locproxy measured side by side with its peers, in one run.

Starts everything on 127.0.0.1 (nginx as a child with its own prefix, the
stand-in upstream and locproxy under gunicorn, optionally a real Glance from
``tests/integration/glance_env.py``), measures each row, prints one markdown
table and stops every process it started (also on errors and Ctrl-C).

Rows (``--rows``): file, http, concurrent, fallback, show_sidecar, show_filter,
rewrite, rss, failover. ``--sweep`` adds a table of locproxy settings
(chunk size, gunicorn workers/threads) instead of the main rows.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from bench import apps, images, measure, servers
from bench.images import GiB, ImageFile, MiB
from bench.measure import Stat

ALL_ROWS = ("file", "http", "concurrent", "fallback", "show_sidecar", "show_filter", "rewrite", "rss", "failover")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SWEEP_RESULTS = Path(__file__).resolve().parent / "RESULTS-sweep.md"


def urllib_get(url: str, headers: dict | None = None) -> bytes:
    client = measure.KeepAlive(url, headers)
    try:
        client.connection.request("GET", client.path, headers=client.headers)
        return client.connection.getresponse().read()
    finally:
        client.close()


def wait_quiet(limit: float) -> None:
    deadline = time.monotonic() + limit
    threshold = (os.cpu_count() or 2) / 2
    while limit > 0 and os.getloadavg()[0] > threshold and time.monotonic() < deadline:
        time.sleep(5)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- configuration -----------------------------------------------------------------

@dataclass
class Sizes:
    big: int
    rss: int
    concurrent_count: int
    concurrent_size: int
    small: int
    reps: int
    conc_reps: int
    latency_rounds: int
    latency_per_round: int
    ttfb_samples: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(GiB, 4 * GiB, 16, 256 * MiB, 16 * MiB, reps=5, conc_reps=3, latency_rounds=10,
                   latency_per_round=200, ttfb_samples=40)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(128 * MiB, 512 * MiB, 16, 32 * MiB, 16 * MiB, reps=2, conc_reps=1, latency_rounds=4,
                   latency_per_round=100, ttfb_samples=10)


def size_name(size: int) -> str:
    return f"{size // GiB}g" if size % GiB == 0 else f"{size // MiB}m"


def human(size: int) -> str:
    return f"{size // GiB} GiB" if size % GiB == 0 else f"{size // MiB} MiB"


@dataclass
class SidecarConfig:
    workers: int = 1
    threads: int = 16
    worker_class: str = "gthread"
    chunk_size: str = "1M"
    extra: dict = field(default_factory=dict)

    def label(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.extra.items())
        return f"gunicorn {self.worker_class} workers={self.workers} threads={self.threads}, chunk_size={self.chunk_size}{extra}"


# -- results -------------------------------------------------------------------------

@dataclass
class Row:
    measure: str
    locproxy: str
    peer: str
    ratio: str
    target: str
    met: str  # "yes", "**no**", or "n/a"
    notes: list[str] = field(default_factory=list)


def mib_s(stat: Stat) -> str:
    return f"{stat.median:,.0f} MiB/s ({stat.low:,.0f}–{stat.high:,.0f}, n={stat.n})"


def ms(stat: Stat) -> str:
    return f"{stat.median * 1000:.3f} ms ({stat.low * 1000:.3f}–{stat.high * 1000:.3f}, n={stat.n})"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def throughput_row(measure_name: str, lp: list[float], peer: list[float], peer_name: str, minimum: float | None,
                   notes: Sequence[str] = ()) -> Row:
    lp_stat, peer_stat = Stat.of(lp), Stat.of(peer)
    ratio = lp_stat.median / peer_stat.median
    target = f"≥ {minimum:g} × {peer_name}" if minimum is not None else "(informational)"
    return Row(measure_name, mib_s(lp_stat), f"{peer_name}: {mib_s(peer_stat)}", f"{ratio:.2f}", target,
               verdict(None if minimum is None else ratio >= minimum), list(notes))


# -- the benchmark ---------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> None:
        self.args = args
        self.work = work
        self.stack = stack
        self.sizes = Sizes.quick() if args.quick else Sizes.full()
        self.config = SidecarConfig(args.workers, args.threads, args.worker_class, args.chunk_size)
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.cpu: dict[str, list[float]] = {}
        self.files: dict[str, ImageFile] = {}
        self.catalog: dict[str, dict] = {}
        self.nginx: servers.Nginx | None = None
        self.upstream: servers.Gunicorn | None = None
        self.sidecar: servers.Gunicorn | None = None
        self.glance: Any = None
        self.glance_reason = "not requested (--no-glance)"
        self.glance_versions: dict[str, str] = {}
        self.dead_port = servers.refused_port()
        self.static_port = servers.free_port()  # nginx's sendfile server (the catalog names it)

    # -- setup ----------------------------------------------------------------------

    def prepare_files(self, rows: Sequence[str]) -> None:
        s = self.sizes
        specs: list[tuple[str, int]] = []
        if {"file", "http", "fallback"} & set(rows):
            specs.append((f"img-{size_name(s.big)}", s.big))
        if "rss" in rows:
            specs.append((f"img-{size_name(s.rss)}", s.rss))
        if "concurrent" in rows:
            specs += [(f"img-{size_name(s.concurrent_size)}-{i:02d}", s.concurrent_size) for i in range(s.concurrent_count)]
        specs.append((f"img-{size_name(s.small)}", s.small))  # failover, warm-ups
        specs = list(dict.fromkeys(specs))
        started = time.monotonic()
        self.files = images.ensure_all(specs, log)
        for image in self.files.values():
            images.warm(image)
        log(f"{len(self.files)} image files ready and in the page cache ({time.monotonic() - started:.1f}s)")

    @property
    def image_dir(self) -> Path:
        return images.CACHE_DIR / "images"

    def add(self, image_id: str, image: ImageFile | None, urls: Sequence[tuple[str, str]]) -> str:
        locations = [{"url": url, "metadata": {"store": store}} for store, url in urls]
        size, md5, sha = (image.size, image.md5, image.sha512) if image else (None, None, None)
        self.catalog[image_id] = {
            "image": apps.glance_image(image_id, image_id, size, md5, sha, locations),
            "path": str(image.path) if image else "",
        }
        return image_id

    def web_url(self, image: ImageFile) -> str:
        return f"http://127.0.0.1:{self.static_port}/{image.path.name}"

    def build_catalog(self) -> None:
        for image in self.files.values():
            self.add(f"file-{image.name}", image, [("fs", image.url)])
            self.add(f"http-{image.name}", image, [("web", self.web_url(image))])
            self.add(f"rbd-{image.name}", image, [("ceph", f"rbd://fsid/images/{image.name}/snap")])
        small = self.files.get(f"img-{size_name(self.sizes.small)}")
        if small is not None:
            dead = f"http://127.0.0.1:{self.dead_port}/{small.path.name}"
            self.add("failover", small, [("dead", dead), ("web", self.web_url(small))])
            self.add("good-only", small, [("web", self.web_url(small))])
        path = self.work / "catalog.json"
        path.write_text(json.dumps({"images": self.catalog}))

    def start_common(self) -> None:
        self.build_catalog()
        self.upstream = self.stack.enter_context(servers.gunicorn(
            "upstream", "bench.apps:upstream()", self.work, workers=1, threads=32,
            env={"BENCH_CATALOG": str(self.work / "catalog.json")}))
        self.nginx = self.stack.enter_context(servers.nginx(
            self.image_dir, self.work, static_port=self.static_port, api_upstream_port=self.upstream.port))
        self.sidecar = self.stack.enter_context(self.start_sidecar("sidecar", self.config))
        log(f"nginx :{self.nginx.static_port} (sendfile) :{self.nginx.proxy_port} (proxy_pass), "
            f"upstream :{self.upstream.port}, locproxy :{self.sidecar.port} ({self.config.label()})")

    def sidecar_globals(self, config: SidecarConfig, upstream: str | None = None,
                        file_roots: str | None = None) -> dict[str, str]:
        assert self.upstream is not None
        return {
            "upstream": upstream or self.upstream.url,
            "file_roots": file_roots if file_roots is not None else str(self.image_dir),
            "allowed_hosts": f"127.0.0.1:{self.static_port}, 127.0.0.1:{self.dead_port}",
            "location_strategy": "store_type",
            "store_type_preference": "file, http",
            "chunk_size": config.chunk_size,
            **config.extra,
        }

    def start_sidecar(self, name: str, config: SidecarConfig, **kwargs: Any) -> contextlib.AbstractContextManager:
        return servers.gunicorn(name, str(servers.PASTE_INI), self.work, workers=config.workers,
                                threads=config.threads, worker_class=config.worker_class,
                                paste_globals=self.sidecar_globals(config, **kwargs))

    def start_glance(self) -> None:
        """Real Glance for the ``/file`` peer, if its venv is cached (never built here)."""
        if not self.args.with_glance:
            return
        try:
            sys.path.insert(0, str(servers.REPO_ROOT / "tests" / "integration"))
            import glance_env  # type: ignore[import-not-found]
        except Exception as error:  # noqa: BLE001 - any reason is reported, not fatal
            self.glance_reason = f"tests/integration/glance_env.py not importable ({type(error).__name__}: {error})"
            return
        try:
            venv = glance_env.venv_dir()
            if not (venv / glance_env.READY_MARKER).exists():
                self.glance_reason = f"Glance venv not cached at {venv} (build it: python tests/integration/glance_env.py --selfcheck)"
                return
            info = glance_env.ensure_venv()
            started = time.monotonic()
            self.glance = self.stack.enter_context(glance_env.glance_server(venv=info))
            self.glance_versions = glance_env.glance_versions(info.path)
            log(f"Glance {self.glance_versions.get('glance')} up at {self.glance.url} ({time.monotonic() - started:.1f}s)")
            self.glance_reason = ""
        except Exception as error:  # noqa: BLE001
            self.glance = None
            self.glance_reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"

    def glance_upload(self, image: ImageFile) -> str:
        """Create an image in Glance's fs1 store from ``image`` (streamed PUT)."""
        g = self.glance
        created = g.request("POST", "/v2/images", json_body={"name": image.name, "disk_format": "raw",
                                                             "container_format": "bare"})
        image_id = created.json()["id"]
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", g.port, timeout=600, blocksize=1 << 20)
        try:
            with open(image.path, "rb") as body:
                connection.request("PUT", f"/v2/images/{image_id}/file", body=body, headers={
                    **g.headers(), "Content-Type": "application/octet-stream", "Content-Length": str(image.size)})
                response = connection.getresponse()
                response.read()
        finally:
            connection.close()
        if response.status != 204:
            raise measure.BenchError(f"Glance upload: HTTP {response.status}")
        shown = g.get_image(image_id)
        if shown.get("os_hash_value") != image.sha512:
            raise measure.BenchError("Glance computed another sha512 than ours")
        log(f"Glance: uploaded {human(image.size)} as {image_id} in {time.monotonic() - started:.1f}s")
        return image_id

    # -- helpers ---------------------------------------------------------------------

    def lp_url(self, image_id: str, server: servers.Gunicorn | None = None) -> str:
        return f"{(server or self.sidecar).url}/v2/images/{image_id}/file"

    def log_mark(self, server: servers.Gunicorn | None = None) -> int:
        return len((server or self.sidecar).log())

    def served_by(self, mark: int, server: servers.Gunicorn | None = None) -> str:
        """How downloads since ``mark`` were served, from locproxy's INFO log lines."""
        text = (server or self.sidecar).log()[mark:]
        sendfile = len(re.findall(r"\(sendfile\)", text))
        verified = len(re.findall(r"verified\)", text))
        plain = len(re.findall(r"bytes \d+-\d+ sent from [^(\n]*$", text, re.M))
        if not (sendfile or verified or plain):
            return "path unknown (no INFO log lines)"
        return f"{sendfile} sendfile, {verified} verified stream, {plain} unverified stream"

    def alternate(self, reps: int, runs: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
        """Each run once per repetition, order alternating, so drift hits all."""
        results: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for rep in range(reps):
            for name in (names if rep % 2 == 0 else list(reversed(names))):
                results[name].append(runs[name]())
        return results

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

    def pids_of(self, server: Any) -> Callable[[], list[int]]:
        if isinstance(server, servers.Nginx):
            return lambda: servers.children(server.process.pid)
        if isinstance(server, servers.Gunicorn):
            return lambda: server.workers
        return lambda: servers.children(server.proc.pid) if getattr(server, "proc", None) else []

    # -- rows ------------------------------------------------------------------------

    def row_file(self) -> None:
        image = self.files[f"img-{size_name(self.sizes.big)}"]
        name = human(image.size)
        runs: dict[str, Callable[[], float]] = {
            "nginx": self.one(self.web_url(image), image.size, cpu="nginx sendfile", pids=self.pids_of(self.nginx)),
        }
        glance_id = None
        if self.glance is not None:
            glance_id = self.glance_upload(image)
            runs["glance"] = self.one(f"{self.glance.url}/v2/images/{glance_id}/file", image.size,
                                      self.glance.headers(), cpu="Glance /file", pids=self.pids_of(self.glance))
        # First (verified) downloads: a new mtime before each, so locproxy re-verifies.
        first: list[float] = []
        mark = self.log_mark()
        first_run = self.one(self.lp_url(f"file-{image.name}"), image.size, cpu="locproxy first",
                             pids=self.pids_of(self.sidecar))
        for _ in range(self.sizes.reps):
            images.touch(image)
            first.append(first_run())
        first_path = self.served_by(mark)
        # Prime every worker (each keeps its own verified-file memory), then repeats.
        for _ in range(self.config.workers * 3):
            measure.curl(self.lp_url(f"file-{image.name}"), expect_size=image.size)
        mark = self.log_mark()
        runs["locproxy"] = self.one(self.lp_url(f"file-{image.name}"), image.size, cpu="locproxy repeat",
                                    pids=self.pids_of(self.sidecar))
        results = self.alternate(self.sizes.reps, runs)
        repeat_path = self.served_by(mark)
        peers = {"nginx sendfile": results["nginx"]}
        if "glance" in results:
            peers["Glance /file"] = results["glance"]
        best = max(peers, key=lambda peer: statistics.median(peers[peer]))
        others = "; ".join(f"{peer}: {mib_s(Stat.of(values))}" for peer, values in peers.items() if peer != best)
        notes = [f"repeat downloads: {repeat_path}"] + ([f"other peer {others}"] if others else [])
        notes.append(self.cpu_note("locproxy repeat", "locproxy first", "nginx sendfile", "Glance /file"))
        if self.glance is None:
            notes.append(f"Glance peer: not available ({self.glance_reason})")
        self.rows.append(throughput_row(f"{name} download, file:// location, one stream, repeat",
                                        results["locproxy"], peers[best], f"faster of peers ({best})", 0.95, notes))
        self.rows.append(throughput_row(f"{name} download, file:// location, one stream, first (sha512 verified)",
                                        first, peers[best], f"faster of peers ({best})", 0.95,
                                        [f"first downloads: {first_path}"]))
        if self.glance is not None and glance_id is not None:
            self.glance_sidecar_rows(image, glance_id, results["glance"])

    def glance_sidecar_rows(self, image: ImageFile, glance_id: str, direct: list[float]) -> None:
        """locproxy in front of the real Glance: file:// from Glance's own
        store directory, and the fallback (no file_roots: Glance's /file)."""
        g = self.glance
        headers = g.headers()
        url = f"/v2/images/{glance_id}/file"
        with self.start_sidecar("glance-file", self.config, upstream=g.url,
                                file_roots=str(g.store_dirs["fs1"])) as with_files, \
                self.start_sidecar("glance-fallback", self.config, upstream=g.url, file_roots="") as fallback:
            measure.curl(with_files.url + url, headers=headers, expect_size=image.size)  # verifies once
            for _ in range(self.config.workers * 2):
                measure.curl(with_files.url + url, headers=headers, expect_size=image.size)
            mark = self.log_mark(with_files)
            results = self.alternate(max(2, self.sizes.reps - 2), {
                "glance": self.one(g.url + url, image.size, headers, cpu="Glance /file", pids=self.pids_of(g)),
                "file": self.one(with_files.url + url, image.size, headers, cpu="locproxy before Glance, file",
                                 pids=self.pids_of(with_files)),
                "fallback": self.one(fallback.url + url, image.size, headers, cpu="locproxy before Glance, fallback",
                                     pids=self.pids_of(fallback)),
            })
            path = self.served_by(mark, with_files)
        self.glance_pipeline_rows(image, glance_id)
        glance_all = direct + results["glance"]
        self.rows.append(throughput_row(
            f"{human(image.size)} via locproxy in front of real Glance, file:// from its fs1 store, repeat",
            results["file"], glance_all, "Glance /file", 0.95, [f"served: {path}"]))
        self.rows.append(throughput_row(
            f"fallback with real Glance: locproxy streaming Glance's /file ({human(image.size)})",
            results["fallback"], results["glance"], "direct Glance /file", 0.8,
            [self.cpu_note("locproxy before Glance, fallback", "Glance /file")]))

    def glance_pipeline_rows(self, image: ImageFile, glance_id: str) -> None:
        """locproxy as a filter inside Glance's own paste pipeline, serving
        /file from Glance's fs1 directory (file_wrapper: gunicorn sendfile)."""
        import glance_env  # type: ignore[import-not-found]

        g = self.glance
        original = g.paste_ini_path.read_text()
        url = f"{g.url}/v2/images/{glance_id}/file"
        try:
            g.restart(glance_env.locproxy_paste_ini(location_strategy="store_type", store_type_preference="file, http",
                                                    file_roots=str(g.store_dirs["fs1"])))
            try:
                first = measure.curl(url, headers=g.headers(), expect_size=image.size)
            except measure.BenchError as error:
                log_tail = g.glance_log_path.read_text(errors="replace")[-4000:] if g.glance_log_path.exists() else ""
                cause = re.findall(r"(\w+Error: \w+)", log_tail)
                self.rows.append(Row(f"{human(image.size)} download inside Glance's paste pipeline (locproxy filter, file://)",
                                     "error", "Glance /file", "—", "≥ 0.95 × Glance /file", "**error**",
                                     [f"{error}; Glance log: {cause[-1] if cause else 'see glance-api.log'} "
                                      "(the filter's show subrequest drops environ['webob.adhoc_attrs'], "
                                      "which holds Glance's request context)"]))
                return
            for _ in range(2):
                measure.curl(url, headers=g.headers(), expect_size=image.size)
            reps = max(2, self.sizes.reps - 2)
            repeat = [measure.curl(url, headers=g.headers(), expect_size=image.size).mib_s for _ in range(reps)]
        finally:
            g.restart(original)
        direct = [measure.curl(url, headers=g.headers(), expect_size=image.size).mib_s for _ in range(reps)]
        self.rows.append(throughput_row(
            f"{human(image.size)} download inside Glance's paste pipeline (locproxy filter, file://), repeat",
            repeat, direct, "Glance /file (same server, filter removed)", 0.95,
            [f"first (verified) download: {first.mib_s:,.0f} MiB/s; not interleaved (each needs a restart)"]))

    def row_http(self) -> None:
        image = self.files[f"img-{size_name(self.sizes.big)}"]
        with self.start_sidecar("noverify", SidecarConfig(**{**self.config.__dict__,
                                                              "extra": {"verify_checksums": "false"}})) as noverify:
            results = self.alternate(self.sizes.reps, {
                "nginx": self.one(f"{self.nginx.proxy_url}/{image.path.name}", image.size,
                                  cpu="nginx (proxy + backend)", pids=self.pids_of(self.nginx)),
                "locproxy": self.one(self.lp_url(f"http-{image.name}"), image.size, cpu="locproxy http",
                                     pids=self.pids_of(self.sidecar)),
                "noverify": self.one(self.lp_url(f"http-{image.name}", noverify), image.size,
                                     cpu="locproxy http unverified", pids=self.pids_of(noverify)),
                "direct": self.one(self.web_url(image), image.size),
            })
        name = human(image.size)
        self.rows.append(throughput_row(
            f"{name} download, http:// location, one stream (sha512 verified, as always for http)",
            results["locproxy"], results["nginx"], "nginx proxy_pass", 1.0,
            [f"direct from the backend (nginx sendfile, no proxy): {mib_s(Stat.of(results['direct']))}",
             self.cpu_note("locproxy http", "locproxy http unverified", "nginx (proxy + backend)")]))
        self.rows.append(throughput_row(
            f"{name} download, http:// location, one stream, verify_checksums=false",
            results["noverify"], results["nginx"], "nginx proxy_pass", None))

    def row_concurrent(self) -> None:
        s = self.sizes
        files = [self.files[f"img-{size_name(s.concurrent_size)}-{i:02d}"] for i in range(s.concurrent_count)]
        total = sum(f.size for f in files) / MiB
        headline = f"{s.concurrent_count} concurrent {human(s.concurrent_size)} downloads, aggregate"

        def many(urls: list[str]) -> Callable[[], float]:
            return lambda: total / measure.curl_many(urls, expect_size=s.concurrent_size)[0]

        nginx_files = [self.web_url(f) for f in files]
        nginx_proxy = [f"{self.nginx.proxy_url}/{f.path.name}" for f in files]
        lp_file = [self.lp_url(f"file-{f.name}") for f in files]
        lp_http = [self.lp_url(f"http-{f.name}") for f in files]
        # First (verified) downloads: new mtimes, then all 16 at once.
        first: list[float] = []
        mark = self.log_mark()
        nginx_first: list[float] = []
        for rep in range(s.conc_reps):
            for f in files:
                images.touch(f)
            first.append(many(lp_file)())
            nginx_first.append(many(nginx_files)())
        first_path = self.served_by(mark)
        # Prime every worker (each keeps its own verified-file memory): until
        # one whole pass is served by sendfile, at most 8 passes.
        for _ in range(8):
            mark = self.log_mark()
            many(lp_file)()
            if " 0 verified" in self.served_by(mark) or "unknown" in self.served_by(mark):
                break
        mark = self.log_mark()
        results = self.alternate(s.conc_reps, {
            "nginx": many(nginx_files), "locproxy": many(lp_file),
        })
        repeat_path = self.served_by(mark)
        http_results = self.alternate(s.conc_reps, {"nginx": many(nginx_proxy), "locproxy": many(lp_http)})
        self.rows.append(throughput_row(f"{headline}, file://, repeat", results["locproxy"],
                                        results["nginx"], "nginx sendfile", 0.9, [f"served: {repeat_path}"]))
        self.rows.append(throughput_row(f"{headline}, file://, first (sha512 verified)", first,
                                        results["nginx"] + nginx_first, "nginx sendfile", 0.9,
                                        [f"served: {first_path}"]))
        self.rows.append(throughput_row(f"{headline}, http:// (sha512 verified)", http_results["locproxy"],
                                        http_results["nginx"], "nginx proxy_pass", 0.9))

    def row_fallback(self) -> None:
        image = self.files[f"img-{size_name(self.sizes.big)}"]
        image_id = f"rbd-{image.name}"
        results = self.alternate(self.sizes.reps, {
            "direct": self.one(f"{self.upstream.url}/v2/images/{image_id}/file", image.size,
                               cpu="upstream (direct)", pids=self.pids_of(self.upstream)),
            "locproxy": self.one(self.lp_url(image_id), image.size, cpu="locproxy fallback",
                                 pids=self.pids_of(self.sidecar)),
            "nginx": self.one(f"http://127.0.0.1:{self.nginx.api_port}/v2/images/{image_id}/file", image.size,
                              cpu="nginx in front of the upstream", pids=self.pids_of(self.nginx)),
        })
        self.rows.append(throughput_row(
            f"fallback: locproxy streaming the upstream's /file ({human(image.size)}, stand-in upstream)",
            results["locproxy"], results["direct"], "direct upstream /file", 0.8,
            ["stand-in upstream: bench.apps.upstream() under gunicorn gthread, /file in 64 KiB reads like glance_store",
             f"for scale, nginx proxy_pass in front of the same upstream /file: {mib_s(Stat.of(results['nginx']))} "
             f"({statistics.median(results['nginx']) / statistics.median(results['direct']):.2f} × direct)",
             self.cpu_note("locproxy fallback", "upstream (direct)", "nginx in front of the upstream")]))

    def latency(self, targets: dict[str, tuple[str, dict | None]]) -> dict[str, list[list[float]]]:
        return measure.interleaved_latency(targets, self.sizes.latency_rounds, self.sizes.latency_per_round)

    def latency_spread(self, samples: dict[str, list[list[float]]], a: str, b: str) -> tuple[float, float, float]:
        """Median of ``b`` - median of ``a`` overall, and min/max of the per-round differences."""
        overall = statistics.median(measure.flat(samples[b])) - statistics.median(measure.flat(samples[a]))
        per_round = [statistics.median(y) - statistics.median(x) for x, y in zip(samples[a], samples[b])]
        return overall, min(per_round), max(per_round)

    def row_show_sidecar(self) -> None:
        path = f"/v2/images/{apps.SHOW_IMAGE_ID}"
        samples = self.latency({"direct": (self.upstream.url + path, None), "sidecar": (self.sidecar.url + path, None),
                                "nginx": (f"http://127.0.0.1:{self.nginx.api_port}{path}", None)})
        added, low, high = self.latency_spread(samples, "direct", "sidecar")
        nginx_added, nginx_low, nginx_high = self.latency_spread(samples, "direct", "nginx")
        direct, sidecar = Stat.of(measure.flat(samples["direct"])), Stat.of(measure.flat(samples["sidecar"]))
        n = self.sizes.latency_rounds
        self.rows.append(Row(
            "image show through the sidecar (DemoImageAPI image, 3 locations), added median latency",
            f"{sidecar.median * 1000:.3f} ms", f"direct upstream: {direct.median * 1000:.3f} ms",
            f"+{added * 1000:.3f} ms (rounds {low * 1000:+.3f}…{high * 1000:+.3f}, n={n}×{self.sizes.latency_per_round})",
            "≤ +1 ms", verdict(added <= 0.001),
            ["keep-alive http.client loop, one connection per target, rounds interleaved",
             f"for scale, nginx proxy_pass in front of the same upstream adds {nginx_added * 1000:+.3f} ms "
             f"(rounds {nginx_low * 1000:+.3f}…{nginx_high * 1000:+.3f})"]))
        if self.glance is not None:
            self.glance_show_sidecar()

    def glance_show_sidecar(self) -> None:
        g = self.glance
        image_id = self.glance_small_image(g)
        with self.start_sidecar("glance-show", self.config, upstream=g.url, file_roots="") as sidecar:
            path = f"/v2/images/{image_id}"
            samples = self.latency({"direct": (g.url + path, g.headers()), "sidecar": (sidecar.url + path, g.headers())})
        added, low, high = self.latency_spread(samples, "direct", "sidecar")
        direct, via = Stat.of(measure.flat(samples["direct"])), Stat.of(measure.flat(samples["sidecar"]))
        self.rows.append(Row(
            "image show through the sidecar, real Glance upstream, added median latency",
            f"{via.median * 1000:.3f} ms", f"direct Glance: {direct.median * 1000:.3f} ms",
            f"+{added * 1000:.3f} ms (rounds {low * 1000:+.3f}…{high * 1000:+.3f})", "≤ +1 ms",
            verdict(added <= 0.001)))

    def glance_small_image(self, g: Any) -> str:
        """A small Glance image with three locations (fs1 file + two http on the web store)."""
        data = os.urandom(64 * 1024)
        image_id = g.create_image(data, name="show-bench")
        for n in range(2):
            web_url = g.web.put(f"{image_id}-{n}.raw", data)
            g.add_location(image_id, web_url, {})
        return image_id

    def row_show_filter(self) -> None:
        path = f"/v2/images/{apps.SHOW_IMAGE_ID}"
        with servers.gunicorn("demo", "bench.apps:demo()", self.work, workers=1, threads=4) as alone, \
                servers.gunicorn("filtered", "bench.apps:filtered()", self.work, workers=1, threads=4) as filtered:
            samples = self.latency({"alone": (alone.url + path, None), "filtered": (filtered.url + path, None)})
        added, low, high = self.latency_spread(samples, "alone", "filtered")
        base, with_filter = Stat.of(measure.flat(samples["alone"])), Stat.of(measure.flat(samples["filtered"]))
        percent = added / base.median * 100
        self.rows.append(Row(
            "image show through the in-pipeline filter: LocationFilter(DemoImageAPI) vs DemoImageAPI",
            f"{with_filter.median * 1000:.3f} ms", f"app alone: {base.median * 1000:.3f} ms",
            f"+{percent:.1f} % (+{added * 1000:.3f} ms; rounds {low * 1000:+.3f}…{high * 1000:+.3f} ms)",
            "≤ +3 %", verdict(percent <= 3.0),
            ["both under gunicorn gthread workers=1 threads=4; filter: store_type 'file, http' (reorders)",
             self.filter_in_process()]))
        if self.glance is not None:
            self.glance_show_filter()

    def glance_show_filter(self) -> None:
        """One real Glance, restarted with and without locproxy in its paste
        pipeline, round after round (two servers differ by more than the filter)."""
        import glance_env  # type: ignore[import-not-found]

        g = self.glance
        image_id = self.glance_small_image(g)
        original = g.paste_ini_path.read_text()
        pipelines = {"alone": original, "filtered": glance_env.locproxy_paste_ini(
            location_strategy="store_type", store_type_preference="http, file")}
        url = f"{g.url}/v2/images/{image_id}"
        samples: dict[str, list[list[float]]] = {"alone": [], "filtered": []}
        rounds = max(1, self.sizes.latency_rounds // 2)
        order = []
        try:
            for number in range(rounds):
                for name in (("alone", "filtered") if number % 2 == 0 else ("filtered", "alone")):
                    g.restart(pipelines[name])
                    client = measure.KeepAlive(url, g.headers())
                    try:
                        for _ in range(50):
                            client.get()
                        samples[name].append([client.get() for _ in range(self.sizes.latency_per_round)])
                        if name == "filtered" and not order:
                            body = json.loads(urllib_get(url, g.headers()))
                            order = [loc["url"].split(":", 1)[0] for loc in body.get("locations", [])]
                    finally:
                        client.close()
        finally:
            g.restart(original)
        added, low, high = self.latency_spread(samples, "alone", "filtered")
        base, with_filter = Stat.of(measure.flat(samples["alone"])), Stat.of(measure.flat(samples["filtered"]))
        percent = added / base.median * 100
        self.rows.append(Row(
            "image show, real Glance with locproxy in its paste pipeline vs the same Glance without",
            f"{with_filter.median * 1000:.3f} ms", f"Glance alone: {base.median * 1000:.3f} ms",
            f"+{percent:.1f} % (+{added * 1000:.3f} ms; rounds {low * 1000:+.3f}…{high * 1000:+.3f} ms)",
            "≤ +3 %", verdict(percent <= 3.0),
            [f"one Glance restarted with either paste pipeline, {rounds}×2 rounds of {self.sizes.latency_per_round}; "
             f"filter right before rootapp, store_type 'http, file' (order seen: {order})"]))

    def filter_in_process(self) -> str:
        """The filter's own cost per show, without HTTP: µs per call."""
        import io

        alone, filtered = apps.demo(), apps.filtered()
        path = f"/v2/images/{apps.SHOW_IMAGE_ID}"

        def call(app: Callable) -> Callable[[], None]:
            def run() -> None:
                environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
                           "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
                           "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
                           "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False,
                           "wsgi.run_once": False, "HTTP_HOST": "127.0.0.1"}
                body = app(environ, lambda status, headers, exc_info=None: None)
                b"".join(body)
                getattr(body, "close", lambda: None)()
            return run

        best = {name: min(timeit.repeat(call(app), number=500, repeat=5)) / 500
                for name, app in (("alone", alone), ("filtered", filtered))}
        return (f"in-process (no HTTP, best of 5×500): DemoImageAPI {best['alone'] * 1e6:.0f} µs, with the filter "
                f"{best['filtered'] * 1e6:.0f} µs (+{(best['filtered'] - best['alone']) * 1e6:.0f} µs per show)")

    def row_rewrite(self) -> None:
        from locproxy import rewrite
        from locproxy.strategies import Selector

        page_images = []
        for n in range(1000):
            image_id = f"{n:08d}-0000-4000-8000-000000000000"
            image = apps.glance_image(image_id, f"image-{n}", 1 << 30, "0" * 32, "0" * 128,
                                      apps.three_locations(image_id))
            page_images.append(image)
        page = json.dumps({"images": page_images, "first": "/v2/images?limit=1000",
                           "next": "/v2/images?marker=x&limit=1000", "schema": "/v2/schemas/images"}).encode()
        policy = rewrite.RewritePolicy(selector=Selector("store_type", store_type_preference="file, http"))
        rewritten = rewrite.rewrite_body(page, rewrite.IMAGES, policy)
        assert rewritten is not None, "the page must actually be rewritten"
        number, repeat = (3, 15) if not self.args.quick else (3, 3)

        def best(statement: Callable[[], Any]) -> float:
            return min(timeit.repeat(statement, number=number, repeat=repeat)) / number

        plain = best(lambda: json.dumps(json.loads(page)))
        plain_utf8 = best(lambda: json.dumps(json.loads(page), ensure_ascii=False).encode("utf-8"))
        cost = best(lambda: rewrite.rewrite_body(page, rewrite.IMAGES, policy))
        ratio = cost / plain
        self.rows.append(Row(
            f"rewrite of a 1,000-image list page ({len(page) / 1024:.0f} KiB, 3 locations each), pure function",
            f"{cost * 1000:.1f} ms", f"json.loads + json.dumps: {plain * 1000:.1f} ms",
            f"{ratio:.2f}", "≤ 1.5 ×", verdict(ratio <= 1.5),
            [f"best of {repeat}×{number}; json round trip with ensure_ascii=False + encode (what rewrite_body "
             f"emits): {plain_utf8 * 1000:.1f} ms"]))

    def row_rss(self) -> None:
        image = self.files[f"img-{size_name(self.sizes.rss)}"]
        growth: dict[str, float] = {}
        notes = []
        for kind in ("http", "file"):
            with self.start_sidecar(f"rss-{kind}", self.config) as sidecar:
                path = f"/v2/images/{apps.SHOW_IMAGE_ID}"
                measure.KeepAlive(sidecar.url + path).get()  # imports, pools
                small = f"file-img-{size_name(self.sizes.small)}" if f"img-{size_name(self.sizes.small)}" in self.files else None
                if small:
                    measure.curl(self.lp_url(small, sidecar))
                workers = sidecar.workers
                before = {pid: measure.proc_status_kib(pid, "VmRSS") for pid in workers}
                hwm_before = {pid: measure.proc_status_kib(pid, "VmHWM") for pid in workers}
                if kind == "file":
                    images.touch(image)  # the first, verifying read: the stream path
                with measure.RSSSampler(workers) as sampler:
                    fetch = measure.curl(self.lp_url(f"{kind}-{image.name}", sidecar), expect_size=image.size)
                hwm_after = {pid: measure.proc_status_kib(pid, "VmHWM") for pid in workers}
                grown = max((sampler.peak[pid] - before[pid]) / 1024 for pid in workers)
                hwm = max((hwm_after[pid] - hwm_before[pid]) / 1024 for pid in workers)
                growth[kind] = max(grown, hwm)
                notes.append(f"{kind}: VmRSS {max(before.values()) / 1024:.1f} → peak {max(sampler.peak.values()) / 1024:.1f} MiB, "
                             f"VmHWM +{hwm:.1f} MiB, {fetch.mib_s:,.0f} MiB/s")
        worst = max(growth.values())
        self.rows.append(Row(
            f"RSS growth while streaming a {human(image.size)} image (verifying stream path)",
            f"+{worst:.1f} MiB (http +{growth['http']:.1f}, file first +{growth['file']:.1f})",
            "—", "—", "≤ 32 MB", verdict(worst * 1.048576 <= 32), notes))

    def row_failover(self) -> None:
        s = self.sizes
        small = self.files[f"img-{size_name(s.small)}"]
        # A huge failure_threshold keeps the dead backend in first place, so
        # every request pays the failover (by default the health rule demotes
        # it after 3 failures: measured below as the steady state).
        config = SidecarConfig(**{**self.config.__dict__, "extra": {"failure_threshold": "1000000"}})
        with self.start_sidecar("failover", config) as sidecar:
            for image_id in ("failover", "good-only"):
                measure.curl(self.lp_url(image_id, sidecar), expect_size=small.size)
            samples: dict[str, list[float]] = {"failover": [], "good-only": []}
            for n in range(s.ttfb_samples):
                for image_id in (("failover", "good-only") if n % 2 == 0 else ("good-only", "failover")):
                    samples[image_id].append(measure.curl(self.lp_url(image_id, sidecar), expect_size=small.size).ttfb)
        # The default health rule on the main sidecar: after 3 failures the dead backend is demoted.
        steady = []
        for _ in range(5):
            measure.curl(self.lp_url("failover"), expect_size=small.size)
        for _ in range(max(5, s.ttfb_samples // 2)):
            steady.append(measure.curl(self.lp_url("failover"), expect_size=small.size).ttfb)
        fail, good = Stat.of(samples["failover"]), Stat.of(samples["good-only"])
        added = fail.median - good.median
        self.rows.append(Row(
            "failover: dead backend (connection refused) → first byte from the next location",
            f"TTFB {ms(fail)}", f"good location only: {ms(good)}", f"+{added * 1000:.2f} ms", "≤ +50 ms",
            verdict(added <= 0.050),
            [f"{human(small.size)} image over http (sha512 verified: TTFB includes 2 chunks read and hashed); "
             f"failure_threshold=1000000 so every request tries the dead port first",
             f"with the default health rule (demoted after 3 failures): TTFB {ms(Stat.of(steady))}"]))

    # -- sweep -------------------------------------------------------------------------

    def sweep(self) -> list[list[str]]:
        """locproxy settings side by side: chunk sizes on single streams,
        workers/threads on the concurrent set."""
        big = self.files[f"img-{size_name(self.sizes.big)}"]
        s = self.sizes
        conc = [self.files[f"img-{size_name(s.concurrent_size)}-{i:02d}"] for i in range(s.concurrent_count)]
        total = sum(f.size for f in conc) / MiB
        b = human(big.size)
        table = [["setting", f"{b} http (verified)", f"{b} file first (verified)", f"{b} fallback",
                  f"{s.concurrent_count}×{human(s.concurrent_size)} http", f"{s.concurrent_count}×{human(s.concurrent_size)} file first"]]
        reps = max(2, s.reps - 2)
        configs = [SidecarConfig(1, 16, "gthread", chunk) for chunk in ("64K", "256K", "1M", "4M")]
        configs += [SidecarConfig(w, t, "gthread", "1M") for w, t in ((2, 8), (2, 16), (4, 8))]
        nginx_row = ["nginx (peer: proxy_pass for http, sendfile for file)",
                     mib_s(Stat.of([measure.curl(f"{self.nginx.proxy_url}/{big.path.name}", expect_size=big.size).mib_s for _ in range(reps)])),
                     mib_s(Stat.of([measure.curl(self.web_url(big), expect_size=big.size).mib_s for _ in range(reps)])),
                     "", "", ""]
        nginx_row[4] = mib_s(Stat.of([total / measure.curl_many([f"{self.nginx.proxy_url}/{f.path.name}" for f in conc],
                                                               expect_size=s.concurrent_size)[0] for _ in range(2)]))
        nginx_row[5] = mib_s(Stat.of([total / measure.curl_many([self.web_url(f) for f in conc],
                                                               expect_size=s.concurrent_size)[0] for _ in range(2)]))
        table.append(nginx_row)
        for config in configs:
            log(f"sweep: {config.label()}")
            with self.start_sidecar("sweep", config) as sidecar:
                http_1 = [measure.curl(self.lp_url(f"http-{big.name}", sidecar), expect_size=big.size).mib_s for _ in range(reps)]
                first_1 = []
                for _ in range(reps):
                    images.touch(big)
                    first_1.append(measure.curl(self.lp_url(f"file-{big.name}", sidecar), expect_size=big.size).mib_s)
                fallback = [measure.curl(self.lp_url(f"rbd-{big.name}", sidecar), expect_size=big.size).mib_s for _ in range(reps)]
                conc_http, conc_first = [], []
                for _ in range(2):
                    conc_http.append(total / measure.curl_many([self.lp_url(f"http-{f.name}", sidecar) for f in conc],
                                                              expect_size=s.concurrent_size)[0])
                    for f in conc:
                        images.touch(f)
                    conc_first.append(total / measure.curl_many([self.lp_url(f"file-{f.name}", sidecar) for f in conc],
                                                               expect_size=s.concurrent_size)[0])
            table.append([config.label().replace("gunicorn ", ""), mib_s(Stat.of(http_1)), mib_s(Stat.of(first_1)),
                          mib_s(Stat.of(fallback)), mib_s(Stat.of(conc_http)), mib_s(Stat.of(conc_first))])
        return table


# -- report ----------------------------------------------------------------------------

def versions(bench: Bench) -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("locproxy", "gunicorn", "urllib3", "WebOb"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    with contextlib.suppress(OSError):
        found["nginx"] = servers.Nginx.version()
    with contextlib.suppress(OSError, IndexError):
        found["curl"] = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()[1]
    if bench.glance_versions:
        found["glance"] = bench.glance_versions.get("glance", "?")
        found["glance_store"] = bench.glance_versions.get("glance_store", "?")
    return found


def machine() -> str:
    mem = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), {mem / 1024:.1f} GiB RAM, {platform.system()} {platform.release()}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report(bench: Bench, started: float, load_before: str, rows: Sequence[str], sweep: list[list[str]] | None) -> str:
    cfg = bench.config
    kind = "settings sweep" if bench.args.sweep else ("quick run" if bench.args.quick else "full run")
    out = [f"# locproxy benchmark results ({kind})", ""]
    out.append(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, "
               f"run took {time.monotonic() - started:.0f}s")
    out.append(f"- machine: {machine()}")
    out.append(f"- load average before / after: {load_before} / {os.getloadavg()[0]:.2f} "
               "(other work may share this machine: every figure is a median with its min–max spread)")
    out.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions(bench).items()))
    out.append(f"- locproxy sidecar: `gunicorn --paste etc/paste.ini`, {cfg.label()}, location_strategy=store_type "
               "(file, http), default verify_checksums=true and health rule")
    out.append("- nginx: worker_processes 2, sendfile on, tcp_nopush on, access_log off; proxy_pass to the "
               "sendfile server (keepalive 32) with " + servers.NGINX_PROXY_SETTINGS.replace("\n", " "))
    out.append("- stand-in upstream: `bench.apps:upstream()` (gunicorn gthread 1×32): Glance-v2 image JSON with "
               "correct size/checksum/os_hash for files on disk; its /file reads 64 KiB at a time like glance_store; "
               "`DemoImageAPI` for the show rows")
    out.append(f"- Glance peer: {'real Glance ' + bench.glance_versions.get('glance', '') + ' under gunicorn (tests/integration/glance_env.py)' if bench.glance is not None else 'not available (' + bench.glance_reason + ')'}")
    out.append("- clients: curl -o /dev/null (downloads; `%{time_starttransfer}` for TTFB), Python http.client "
               "keep-alive loop (latency); images: real bytes in the page cache "
               f"({images.CACHE_DIR}); first downloads re-verify after a new mtime")
    if bench.rows:
        out += ["", markdown_table(["measure", "locproxy", "peer", "ratio", "target", "met?"],
                                   [[r.measure, r.locproxy, r.peer, r.ratio, r.target, r.met] for r in bench.rows])]
        notes = [(r.measure, n) for r in bench.rows for n in r.notes if n]
        if notes:
            out += ["", "Notes:", ""] + [f"- *{m}*: {n}" for m, n in notes]
    if sweep:
        out += ["", "## Settings sweep (locproxy only; medians with min–max)", "",
                "Configurations run one after another (each its own sidecar), not interleaved: on a shared "
                "machine differences under ~15 % are within the run-to-run noise.", "",
                markdown_table(sweep[0], sweep[1:])]
    return "\n".join(out) + "\n"


# -- entry point -------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (smoke run)")
    parser.add_argument("--rows", default=",".join(ALL_ROWS), help=f"comma-separated subset of {','.join(ALL_ROWS)}")
    glance = parser.add_mutually_exclusive_group()
    glance.add_argument("--with-glance", dest="with_glance", action="store_true", default=True,
                        help="use a real Glance as the /file peer when its venv is cached (default)")
    glance.add_argument("--no-glance", dest="with_glance", action="store_false")
    parser.add_argument("--workers", type=int, default=2, help="locproxy gunicorn workers (default 2: one per core here)")
    parser.add_argument("--threads", type=int, default=16, help="locproxy gunicorn threads (default 16)")
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--chunk-size", default="1M", help="locproxy chunk_size (default 1M)")
    parser.add_argument("--quiet-wait", type=float, default=0, metavar="SECONDS",
                        help="before each row, wait up to SECONDS for the 1-minute load average to drop below "
                             "half the CPU count (other work on the machine adds noise)")
    parser.add_argument("--sweep", action="store_true", help="compare locproxy settings instead of the main rows")
    parser.add_argument("--out", type=Path, help="also write the report here (a full run of every row "
                                                 "writes bench/RESULTS.md, a full --sweep bench/RESULTS-sweep.md)")
    args = parser.parse_args(argv)
    rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    unknown = [row for row in rows if row not in ALL_ROWS]
    if unknown:
        parser.error(f"unknown row {unknown[0]!r}; valid: {', '.join(ALL_ROWS)}")
    args.row_list = rows
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = f"{os.getloadavg()[0]:.2f}"

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    work = Path(tempfile.mkdtemp(prefix="locproxy-bench-"))
    rows = args.row_list
    sweep_table = None
    try:
        with contextlib.ExitStack() as stack:
            bench = Bench(args, work, stack)
            needs_files = rows if not args.sweep else ["http", "concurrent"]
            bench.prepare_files(needs_files)
            bench.start_common()
            if args.sweep:
                sweep_table = bench.sweep()
            else:
                if {"file", "show_sidecar", "show_filter"} & set(rows):
                    bench.start_glance()
                for row in rows:
                    wait_quiet(args.quiet_wait)
                    log(f"row {row} (load {os.getloadavg()[0]:.2f})")
                    try:
                        getattr(bench, f"row_{row}")()
                    except (measure.BenchError, RuntimeError, subprocess.SubprocessError, OSError) as error:
                        bench.rows.append(Row(row, "error", "—", "—", "—", "**error**",
                                              [f"{type(error).__name__}: {str(error)[:300]}"]))
                        log(f"row {row} failed: {error}")
            text = report(bench, started, load_before, rows, sweep_table)
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        servers.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print(text)
    full = not args.quick and list(rows) == list(ALL_ROWS)
    targets = [args.out] if args.out else []
    if full and not args.out:
        targets.append(SWEEP_RESULTS if args.sweep else RESULTS)
    for target in targets:
        target.write_text(text)
        log(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
