"""locproxy in front of (or inside) a ``keystone_glance`` lab server, for
the Keystone integration tests.

Every image the tests seed has an http copy (``web``) and file copies
``fs1`` (weight 100 in the tests' Glance: its ``direct_url``) and ``fs2``;
locproxy's strategy here prefers http, so a download that read the web
copy was the strategy's choice, not ``direct_url``'s. The web server's own
request log (``web_reads``) proves which copy was read, Glance's access log
(``locations_reads``, ``file_reads``) what reached Glance.

* ``filter_options``: the filter's options for a mode (``service_token``:
  user ``locproxy``, role service; ``service``: ``locproxy-admin``).
* ``sidecar``: a gunicorn sidecar in front of the lab's Glance.
* ``open_front``: either deployment, as a ``Front`` (where clients go, its
  log); ``pipeline`` restarts Glance with locproxy in its keystone pipeline
  and restores Glance's own paste file afterwards.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from tests.support.client import Fetched, http_request
from tests.support.keystone.config import STATUS_PATHS
from tests.support.keystone.lab import KeystoneGlance, KeystoneLab
from tests.support.keystone.seed import SeededImage
from tests.support.servers import GunicornServer, run_gunicorn, sidecar_ini

#: The lab identity locproxy uses in each mode.
SERVICE_USER = {"service_token": "locproxy", "service": "locproxy-admin"}
KINDS_AND_MODES = (("sidecar", "service_token"), ("sidecar", "service"), ("pipeline", "service_token"),
                   ("pipeline", "service"))


def filter_options(glance: KeystoneGlance, lab: KeystoneLab, mode: str, *, user: str | None = None,
                   **extra: str) -> dict[str, str]:
    options = {"file_roots": f"{glance.store_dirs['fs1']}, {glance.store_dirs['fs2']}",
               "allowed_hosts": f"127.0.0.1:{glance.web.port}", "location_strategy": "store_type",
               "store_type_preference": "http, file", "locations_from": mode,
               "healthcheck_path": "/healthcheck", "metrics_path": "/metrics",
               **lab.service_options(user or SERVICE_USER[mode])}
    options.update(extra)
    return options


@contextlib.contextmanager
def sidecar(glance: KeystoneGlance, options: dict[str, str], tmp: Path, *, workers: int = 1) -> Iterator[GunicornServer]:
    """A sidecar reading locations from Glance itself (``service_endpoint_override``)."""
    ini = sidecar_ini(tmp / "sidecar.ini", glance.url, {"service_endpoint_override": glance.url, **options},
                      log_level="INFO")
    with run_gunicorn(ini, threads=8, workers=workers) as server:
        yield server


#: Inside Glance 33's keystone pipeline the filter's own paths cannot be
#: reached (authtoken and versionnegotiation answer first): they are left
#: empty there, and ``locproxy.status``, first in the pipeline, answers
#: ``STATUS_PATHS`` for it.
PIPELINE_PATHS = {"healthcheck_path": "", "metrics_path": ""}


class Front:
    """locproxy in front of (or inside) the module's Glance: where clients go, and its log."""

    def __init__(self, url: str, log: Callable[[], str], kind: str, mode: str,
                 paths: dict[str, str]) -> None:
        self.url, self._log, self.kind, self.mode = url, log, kind, mode
        self.health_path, self.metrics_path = paths["healthcheck_path"], paths["metrics_path"]

    @property
    def observable(self) -> bool:
        """``/healthcheck`` and ``/metrics`` can be asked (the sidecar's own, or
        ``locproxy.status``'s in Glance's pipeline)."""
        return bool(self.health_path and self.metrics_path)

    def log(self) -> str:
        return self._log()

    def get(self, path: str, token: str | None, **headers: str) -> Fetched:
        sent = {"Accept": "application/json", **headers}
        if token:
            sent["X-Auth-Token"] = token
        return http_request(self.url + path, headers=sent, timeout=60)

    def health(self) -> dict[str, Any]:
        got = self.get(self.health_path, None)
        assert got.status == 200, got.describe()
        return got.json()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics`` (0 when absent); one worker answers."""
        text = self.metrics_text()
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        pattern = rf"^{re.escape(name)}" + (rf"\{{{re.escape(wanted)}\}}" if labels else "") + r" (\S+)$"
        found = re.search(pattern, text, re.M)
        return float(found.group(1)) if found else 0.0

    def metrics_text(self) -> str:
        got = self.get(self.metrics_path, None)
        assert got.status == 200, got.describe()
        return got.body.decode()


@contextlib.contextmanager
def open_front(kind: str, glance: KeystoneGlance, options: dict[str, str]) -> Iterator[Front]:
    """``kind`` = ``sidecar`` or ``pipeline`` (see the module docstring)."""
    mode = options["locations_from"]
    if kind == "sidecar":
        with tempfile.TemporaryDirectory() as tmp, sidecar(glance, options, Path(tmp)) as server:
            yield Front(server.url, server.log, kind, mode, options)
        return
    options = {**options, **PIPELINE_PATHS}
    original = glance.paste_ini_path.read_text()
    try:  # a Glance that failed to start with locproxy is restored too
        glance.restart(glance.paste_with_locproxy(**options))  # no endpoint override: the catalog's internal one
        yield Front(glance.url, lambda: glance.glance_log_path.read_text(errors="replace"), kind, mode, STATUS_PATHS)
    finally:
        glance.restart(original)


def locations_reads(glance: KeystoneGlance) -> int:
    """GET .../locations requests that reached Glance (its access log)."""
    return len(re.findall(r'"GET /v2/images/[^/ ]+/locations ', glance.access_log_path.read_text()))


def file_reads(glance: KeystoneGlance, image: SeededImage) -> int:
    """GET .../file requests of ``image`` that reached Glance (its access log)."""
    return glance.access_log_path.read_text().count(f'"GET /v2/images/{image.id}/file ')


def web_reads(glance: KeystoneGlance, image: SeededImage) -> int:
    return sum(1 for method, path, _ in glance.web.requests if method == "GET" and path == image.web_path)
