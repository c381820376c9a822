"""locproxy in front of a production-like Glance: Keystone, default policies
(plus the ``service_token`` policy line), ``show_multiple_locations =
False``, ``show_image_direct_url = True``.

Every image has an http copy (``web``, registered while queued) and file
copies ``fs1`` (weight 100: Glance's ``direct_url``) and ``fs2``. locproxy's
strategy prefers http, so a download served from the web copy is the
strategy's choice, not ``direct_url``'s: the web server's own request log
proves which copy was read, and a download without any web request came
from ``direct_url`` (fs1). Both deployments (sidecar under gunicorn,
locproxy inside Glance's own keystone pipeline) and both modes
(``service``: locproxy-admin's own token; ``service_token``: the user's
token plus locproxy's as ``X-Service-Token``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.client import Fetched, http_request
from tests.support.keystone.lab import KeystoneGlance, KeystoneLab, keystone_glance
from tests.support.keystone.seed import SeededImage, seed_image
from tests.support.servers import GunicornServer, run_gunicorn, sidecar_ini

pytestmark = pytest.mark.integration

COMBOS = [pytest.param(("sidecar", "service_token"), id="sidecar-service_token"),
          pytest.param(("sidecar", "service"), id="sidecar-service"),
          pytest.param(("pipeline", "service_token"), id="pipeline-service_token"),
          pytest.param(("pipeline", "service"), id="pipeline-service")]
SERVICE_USER = {"service_token": "locproxy", "service": "locproxy-admin"}


@pytest.fixture(scope="module")
def glance(keystone_lab: KeystoneLab) -> Iterator[KeystoneGlance]:
    with keystone_glance(keystone_lab, overrides={"fs1": {"weight": "100"}}) as server:
        yield server


@pytest.fixture(scope="module")
def images(glance: KeystoneGlance) -> dict[str, SeededImage]:
    made = {name: seed_image(glance, os.urandom(1_500_000 + i), owner="alice", name=f"lp-ks-{name}")
            for i, name in enumerate(("a", "b", "c", "d", "e"))}
    shown = glance.get_image(made["a"].id, identity=glance.as_user("alice"))
    assert "locations" not in shown and shown["direct_url"].startswith("file://"), shown  # fs1: weight 100
    own = glance.request("GET", f"/v2/images/{made['a'].id}/locations", identity=glance.as_user("locproxy-admin"))
    assert [entry["metadata"]["store"] for entry in own.json()] == ["fs1", "web", "fs2"], "Glance's own: weight first"
    return made


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
def sidecar(glance: KeystoneGlance, options: dict[str, str], tmp: Path) -> Iterator[GunicornServer]:
    ini = sidecar_ini(tmp / "sidecar.ini", glance.url, {"service_endpoint_override": glance.url, **options},
                      log_level="INFO")
    with run_gunicorn(ini, threads=8) as server:
        yield server


class Front:
    """locproxy in front of (or inside) the module's Glance: where clients go, and its log."""

    def __init__(self, url: str, log: Any, kind: str, mode: str) -> None:
        self.url, self._log, self.kind, self.mode = url, log, kind, mode

    def log(self) -> str:
        return self._log()

    def get(self, path: str, token: str | None, **headers: str) -> Fetched:
        sent = {"Accept": "application/json", **headers}
        if token:
            sent["X-Auth-Token"] = token
        return http_request(self.url + path, headers=sent, timeout=60)


@pytest.fixture(scope="module", params=COMBOS)
def front(request: pytest.FixtureRequest, glance: KeystoneGlance, keystone_lab: KeystoneLab,
          images: dict[str, SeededImage]) -> Iterator[Front]:
    kind, mode = request.param
    options = filter_options(glance, keystone_lab, mode)
    if kind == "sidecar":
        with tempfile.TemporaryDirectory() as tmp, sidecar(glance, options, Path(tmp)) as server:
            yield Front(server.url, server.log, kind, mode)
        return
    original = glance.paste_ini_path.read_text()
    glance.restart(glance.paste_with_locproxy(**options))  # no endpoint override: the catalog's internal one
    try:
        yield Front(glance.url, lambda: glance.glance_log_path.read_text(errors="replace"), kind, mode)
    finally:
        glance.restart(original)


def locations_reads(glance: KeystoneGlance) -> int:
    """GET .../locations requests that reached Glance (its access log)."""
    return len(re.findall(r'"GET /v2/images/[^/ ]+/locations ', glance.access_log_path.read_text()))


def web_reads(glance: KeystoneGlance, image: SeededImage) -> int:
    return sum(1 for method, path, _ in glance.web.requests if method == "GET" and path == image.web_path)


def test_member_download_is_served_from_the_strategys_copy(front: Front, glance: KeystoneGlance,
                                                           keystone_lab: KeystoneLab,
                                                           images: dict[str, SeededImage]) -> None:
    image = images["a"]
    before = web_reads(glance, image)
    got = front.get(f"/v2/images/{image.id}/file", keystone_lab.token("alice"))
    assert got.status == 200 and got.complete, got.describe()
    assert hashlib.sha512(got.body).hexdigest() == image.sha512, "not the image's bytes"
    assert web_reads(glance, image) == before + 1, (
        f"the web copy (the strategy's choice) was not read: {glance.web.requests[-5:]}\n{front.log()[-3000:]}")


def test_member_show_has_the_nodes_direct_url_and_no_locations(front: Front, glance: KeystoneGlance,
                                                               keystone_lab: KeystoneLab,
                                                               images: dict[str, SeededImage]) -> None:
    image = images["b"]
    shown = front.get(f"/v2/images/{image.id}", keystone_lab.token("alice"))
    assert shown.status == 200, shown.describe()
    body = shown.json()
    assert "locations" not in body, body
    assert body["direct_url"] == f"{glance.web.url}{image.web_path}", body
    assert body["stores"].split(",")[0] == "web", body
    listed = front.get("/v2/images?name=lp-ks-b", keystone_lab.token("alice")).json()["images"]
    assert [entry.get("locations") for entry in listed] == [None], listed
    assert listed[0]["direct_url"] == body["direct_url"], "a list uses what the show's read remembered"


def test_another_projects_member_gets_glances_404_and_nothing_is_read(
        front: Front, glance: KeystoneGlance, keystone_lab: KeystoneLab, images: dict[str, SeededImage]) -> None:
    image = images["c"]
    reads, web = locations_reads(glance), web_reads(glance, image)
    for path in (f"/v2/images/{image.id}/file", f"/v2/images/{image.id}"):
        got = front.get(path, keystone_lab.token("bob"))
        assert got.status == 404, got.describe()
        assert image.data[:64] not in got.body
    assert locations_reads(glance) == reads, "locations were read on bob's behalf"
    assert web_reads(glance, image) == web


@pytest.mark.parametrize("warm", [pytest.param(False, id="cold"), pytest.param(True, id="verified-copy")])
def test_no_token_and_a_revoked_token_get_401(front: Front, glance: KeystoneGlance, keystone_lab: KeystoneLab,
                                              images: dict[str, SeededImage], warm: bool) -> None:
    image = images["d"]
    if warm:  # the copy verified and its locations remembered: still refused
        assert front.get(f"/v2/images/{image.id}/file", keystone_lab.token("alice")).status == 200
    revoked = keystone_lab.fresh_token("alice")
    keystone_lab.revoke(revoked)
    for token in (None, revoked):
        got = front.get(f"/v2/images/{image.id}/file", token)
        assert got.status == 401, got.describe()
        assert image.data[:64] not in got.body


def test_service_clients_own_location_list_is_reordered(front: Front, keystone_lab: KeystoneLab,
                                                        images: dict[str, SeededImage]) -> None:
    got = front.get(f"/v2/images/{images['a'].id}/locations", keystone_lab.token("locproxy-admin"))
    assert got.status == 200, got.describe()
    assert [entry["metadata"]["store"] for entry in got.json()] == ["web", "fs1", "fs2"], got.json()
