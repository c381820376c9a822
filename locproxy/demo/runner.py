"""``locproxy demo``: the demo image API with a real locproxy sidecar in front.

Starts, on loopback: a static http server (store "web"), the demo image API
whose images live in two file stores and the web store, and the sidecar
(``gunicorn --paste`` of the packaged ``paste.ini``, as ``locproxy serve``
runs it) pointed at it with a live-reloaded ``config_file``. Prints commands
to try; ``--check`` runs them instead. Works from any directory, from a
checkout or an installed package.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from locproxy.demo.data import DemoSetup, build_demo, web_dir_of
from locproxy.demo.serving import serve_static, serve_wsgi
from locproxy.sidecar import sidecar_command, stop_process
from locproxy.tracker import read_table


def run_demo(port: int, workdir: str | None, check: bool) -> int:
    with ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="locproxy-demo-"))
        web = stack.enter_context(serve_static(web_dir_of(workdir)))
        setup = build_demo(workdir, web.url)
        upstream = stack.enter_context(serve_wsgi(setup.api))
        config_file = Path(workdir) / "locproxy.ini"
        config_file.write_text(
            "[locproxy]\n"
            "# Edit and save: locproxy applies it within a second, no restart.\n"
            "location_strategy = store_type\n"
            "store_type_preference = file, http\n"
            "# location_strategy = weight\n"
            "# store_weights = fast-disk:100, web:50, slow-disk:10\n"
        )
        metrics_file = Path(workdir) / "metrics.sqlite"
        server = subprocess.Popen(sidecar_command(
            {"upstream": upstream.url, "file_roots": f"{setup.store_a}, {setup.store_b}",
             "allowed_hosts": web.url.split("//", 1)[1], "config_file": str(config_file),
             "metrics_file": str(metrics_file)},
            ["--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8"],
        ))
        stack.callback(stop_process, server)
        proxy = f"http://127.0.0.1:{port}"
        if not _wait_until_up(proxy, server):
            print("locproxy demo: the sidecar did not start (see its log above)", file=sys.stderr)
            return 1
        if check:
            return _check(proxy, upstream.url, setup, metrics_file)
        _print_guide(proxy, upstream.url, setup.image_ids["cirros-demo"], config_file, metrics_file)
        try:
            return server.wait()
        except KeyboardInterrupt:
            return 0


def _wait_until_up(url: str, server: subprocess.Popen, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url + "/versions", timeout=2) as response:
                response.read()
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _get(url: str) -> tuple[bytes, dict]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read(), dict(response.headers)


def _check(proxy: str, upstream: str, setup: DemoSetup, metrics_file: Path) -> int:
    """Show reordering and a verified download; 0 if everything is as expected."""
    image_id = setup.image_ids["cirros-demo"]
    original = json.loads(_get(f"{upstream}/v2/images/{image_id}")[0])
    through = json.loads(_get(f"{proxy}/v2/images/{image_id}")[0])
    stores = [location["metadata"]["store"] for location in original["locations"]]
    reordered = [location["metadata"]["store"] for location in through["locations"]]
    print(f"upstream order:  {', '.join(stores)}")
    print(f"locproxy order:  {', '.join(reordered)}   (store_type: file, http)")
    print(f"direct_url:      {through['direct_url']}")
    body, _headers = _get(f"{proxy}/v2/images/{image_id}/file")
    digest = hashlib.sha512(body).hexdigest()
    verified = digest == original["os_hash_value"] and len(body) == original["size"]
    print(f"download:        {len(body)} bytes, sha512 {'matches' if verified else 'DOES NOT match'} os_hash_value")
    good = reordered == ["slow-disk", "fast-disk", "web"] and through["direct_url"].startswith("file://") and verified
    print("what locproxy learnt (locproxy stats):")
    print(read_table(str(metrics_file)))
    print("demo check: " + ("OK" if good else "FAILED"))
    return 0 if good else 1


def _print_guide(proxy: str, upstream: str, image_id: str, config_file: Path, metrics_file: Path) -> None:
    print(f"""
locproxy demo is running (Ctrl-C to stop).
  image API (demo upstream): {upstream}
  locproxy sidecar:          {proxy}

The image's locations as the upstream orders them, and as locproxy does:
  curl -s {upstream}/v2/images/{image_id} | python3 -m json.tool
  curl -s {proxy}/v2/images/{image_id} | python3 -m json.tool

A download streamed from the preferred copy, checked against os_hash_value:
  curl -s {proxy}/v2/images/{image_id}/file | sha512sum
  curl -s {proxy}/v2/images/{image_id} | python3 -c 'import json,sys; print(json.load(sys.stdin)["os_hash_value"])'

Put another store first for one request, or ask for a range:
  curl -s '{proxy}/v2/images/{image_id}?prefer=web' | python3 -m json.tool
  curl -s -H 'Range: bytes=-16' {proxy}/v2/images/{image_id}/file | xxd

Switch the strategy live: edit {config_file}
What this node learnt about each backend: locproxy stats {metrics_file}
Health and metrics: curl -s {proxy}/healthcheck; curl -s {proxy}/metrics | grep ^locproxy_
""", flush=True)
