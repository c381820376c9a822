"""The markdown report of a run: what ran where (date, machine, load,
versions, settings, peers, clients), the table with its notes, and the
settings sweep's table."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench import images, servers
from bench.glance import GlancePeer
from bench.results import HEADER, Result, markdown_table
from bench.settings import SidecarConfig


@dataclass
class Run:
    """What the report says about the run as a whole."""

    kind: str  # "full run", "quick run" or "settings sweep"
    seconds: float
    load_before: str
    config: SidecarConfig
    glance: GlancePeer


def versions(glance: GlancePeer) -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("locproxy", "gunicorn", "urllib3", "WebOb"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    with contextlib.suppress(OSError):
        found["nginx"] = servers.Nginx.version()
    with contextlib.suppress(OSError, IndexError):
        found["curl"] = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()[1]
    if glance.versions:
        found["glance"] = glance.versions.get("glance", "?")
        found["glance_store"] = glance.versions.get("glance_store", "?")
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


def _setup(run: Run) -> list[str]:
    g = run.glance
    glance = (f"real Glance {g.versions.get('glance', '')} under gunicorn (tests/support/glance)"
              if g.server is not None else f"not available ({g.reason})")
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, run took {run.seconds:.0f}s",
        f"- machine: {machine()}",
        f"- load average before / after: {run.load_before} / {os.getloadavg()[0]:.2f} "
        "(other work may share this machine: every figure is a median with its min–max spread)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions(g).items()),
        "- locproxy sidecar: `locproxy.sidecar.sidecar_command` (gunicorn with the packaged gunicorn.conf.py and "
        f"paste.ini, as `locproxy serve` runs it), {run.config.label()}, location_strategy=store_type "
        "(file, http), default verify_checksums=true and health rule",
        "- nginx: worker_processes 2, sendfile on, tcp_nopush on, access_log off; proxy_pass to the "
        "sendfile server (keepalive 32) with " + servers.NGINX_PROXY_SETTINGS.replace("\n", " "),
        "- stand-in upstream: `bench.apps:upstream()` (gunicorn gthread 1×32): Glance-v2 image JSON with "
        "correct size/checksum/os_hash for files on disk; its /file reads 64 KiB at a time like glance_store; "
        "`DemoImageAPI` for the show rows",
        f"- Glance peer: {glance}",
        "- clients: curl -o /dev/null (downloads; `%{time_starttransfer}` for TTFB), Python http.client "
        f"keep-alive loop (latency); images: real bytes in the page cache ({images.CACHE_DIR}); "
        "first downloads re-verify after a new mtime",
    ]


def report(run: Run, results: Sequence[Result], sweep: list[list[str]] | None) -> str:
    out = [f"# locproxy benchmark results ({run.kind})", "", *_setup(run)]
    if results:
        out += ["", markdown_table(HEADER, [r.cells() for r in results])]
        notes = [(r.measure, n) for r in results for n in r.notes if n]
        if notes:
            out += ["", "Notes:", ""] + [f"- *{m}*: {n}" for m, n in notes]
    if sweep:
        out += ["", "## Settings sweep (locproxy only; medians with min–max)", "",
                "Configurations run one after another (each its own sidecar), not interleaved: on a shared "
                "machine differences under ~15 % are within the run-to-run noise.", "",
                markdown_table(sweep[0], sweep[1:])]
    return "\n".join(out) + "\n"
