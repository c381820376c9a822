"""The real-Glance peer: a Glance API from the tests' Glance lab (``tests/support/glance``)
when its venv is cached (the benchmark never builds it), and the few things
the rows do with it (upload a big image, create a small one with locations,
the paste pipeline with locproxy in it).

Why a peer is missing is kept as text: the report says it instead of failing.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import time
from dataclasses import dataclass, field
from typing import Any

from bench.images import ImageFile, human
from bench.measure import BenchError
from bench.progress import log


@dataclass
class GlancePeer:
    server: Any = None  # tests.support.glance.server.GlanceServer while it runs
    reason: str = "not requested (--no-glance)"  # why ``server`` is None
    versions: dict[str, str] = field(default_factory=dict)


def start(stack: contextlib.ExitStack) -> GlancePeer:
    """Glance under gunicorn for the run (stopped by ``stack``), or why not."""
    try:
        from tests.support.glance.lab import glance_server
        from tests.support.glance.venv import READY_MARKER, ensure_venv, glance_versions, venv_dir
    except Exception as error:  # noqa: BLE001 - any reason is reported, not fatal
        return GlancePeer(reason=f"the Glance lab (tests/support/glance) is not importable "
                                 f"({type(error).__name__}: {error})")
    try:
        venv = venv_dir()
        if not (venv / READY_MARKER).exists():
            return GlancePeer(reason=f"Glance venv not cached at {venv} "
                                     "(build it: python -m tests.support.glance --selfcheck)")
        info = ensure_venv()
        started = time.monotonic()
        server = stack.enter_context(glance_server(venv=info))
        versions = glance_versions(info.path)
        log(f"Glance {versions.get('glance')} up at {server.url} ({time.monotonic() - started:.1f}s)")
        return GlancePeer(server, "", versions)
    except Exception as error:  # noqa: BLE001
        return GlancePeer(reason=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")


def locproxy_paste_ini(**options: str) -> str:
    """Glance's paste file with the locproxy filter right before its app."""
    from tests.support.glance.config import locproxy_paste_ini

    return locproxy_paste_ini(**options)


def upload(g: Any, image: ImageFile) -> str:
    """Create an image in Glance's fs1 store from ``image`` (streamed PUT)."""
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
        raise BenchError(f"Glance upload: HTTP {response.status}")
    shown = g.get_image(image_id)
    if shown.get("os_hash_value") != image.sha512:
        raise BenchError("Glance computed another sha512 than ours")
    log(f"Glance: uploaded {human(image.size)} as {image_id} in {time.monotonic() - started:.1f}s")
    return image_id


def small_image(g: Any) -> str:
    """A small Glance image with three locations (fs1 file + two http on the web store)."""
    data = os.urandom(64 * 1024)
    image_id = g.create_image(data, name="show-bench")
    for n in range(2):
        web_url = g.web.put(f"{image_id}-{n}.raw", data)
        g.add_location(image_id, web_url, {})
    return image_id
