"""locproxy in front of a production-like Glance: Keystone, default policies
(plus the ``service_token`` policy line), ``show_multiple_locations =
False``, ``show_image_direct_url = True``.

Every image has an http copy (``web``, registered while queued) and file
copies ``fs1`` (weight 100: Glance's ``direct_url``) and ``fs2``. locproxy's
strategy prefers http, so a download served from the web copy is the
strategy's choice, not ``direct_url``'s (``tests.support.keystone.fronts``).
Both deployments (sidecar under gunicorn, locproxy inside Glance's own
keystone pipeline) and both modes
(``service``: locproxy-admin's own token; ``service_token``: the user's
token plus locproxy's as ``X-Service-Token``).
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterator

import pytest

from tests.support.keystone.fronts import KINDS_AND_MODES, Front, filter_options, locations_reads, open_front, web_reads
from tests.support.keystone.lab import KeystoneGlance, KeystoneLab, keystone_glance
from tests.support.keystone.seed import SeededImage, seed_image

pytestmark = pytest.mark.integration

COMBOS = [pytest.param(combo, id="-".join(combo)) for combo in KINDS_AND_MODES]


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


@pytest.fixture(scope="module", params=COMBOS)
def front(request: pytest.FixtureRequest, glance: KeystoneGlance, keystone_lab: KeystoneLab,
          images: dict[str, SeededImage]) -> Iterator[Front]:
    kind, mode = request.param
    with open_front(kind, glance, filter_options(glance, keystone_lab, mode)) as opened:
        yield opened


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


@pytest.mark.parametrize("warm", [pytest.param(False, id="cold"), pytest.param(True, id="verified-copy")])
def test_another_projects_member_gets_glances_404_and_nothing_is_read(
        front: Front, glance: KeystoneGlance, keystone_lab: KeystoneLab, images: dict[str, SeededImage],
        warm: bool) -> None:
    image = images["c"]
    if warm:  # the copy verified, its fingerprint known and its locations remembered: still refused
        assert front.get(f"/v2/images/{image.id}/file", keystone_lab.token("alice")).body == image.data
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


def test_locproxys_health_and_metrics_need_no_token_where_the_api_does(front: Front, glance: KeystoneGlance,
                                                                       keystone_lab: KeystoneLab,
                                                                       images: dict[str, SeededImage]) -> None:
    """The sidecar answers them itself; inside Glance's pipeline
    ``locproxy.status``, first, answers for the filter below authtoken: its
    health, and metrics that count the download this filter just served."""
    assert front.observable
    downloads = front.metric("locproxy_requests_total", kind="download")
    assert front.get(f"/v2/images/{images['a'].id}/file", keystone_lab.token("alice")).status == 200
    assert front.metric("locproxy_requests_total", kind="download") == downloads + 1
    health = front.health()
    assert health["status"] == "ok" and health["strategy"] == "store_type", health
    for path in ("/v2/images", f"/v2/images/{images['a'].id}/file"):
        assert front.get(path, None).status == 401, f"{path}: authtoken no longer guards the API"
    if front.kind == "pipeline":
        own = front.get("/healthcheck", None)
        assert own.status == 200 and b"OK" in own.body and b"strategy" not in own.body, "Glance's own is Glance's"


def test_service_clients_own_location_list_is_reordered(front: Front, keystone_lab: KeystoneLab,
                                                        images: dict[str, SeededImage]) -> None:
    got = front.get(f"/v2/images/{images['a'].id}/locations", keystone_lab.token("locproxy-admin"))
    assert got.status == 200, got.describe()
    assert [entry["metadata"]["store"] for entry in got.json()] == ["web", "fs1", "fs2"], got.json()


@pytest.mark.parametrize("kind", ["sidecar", "pipeline"])
def test_an_application_credential_as_the_service_identity(kind: str, glance: KeystoneGlance,
                                                           keystone_lab: KeystoneLab,
                                                           images: dict[str, SeededImage]) -> None:
    """``service_auth_type = v3applicationcredential``: the same as a password."""
    credential_id, secret = keystone_lab.identities.application_credential("locproxy", label=f"locproxy-lab-{kind}")
    options = filter_options(glance, keystone_lab, "service_token")
    for name in ("username", "password", "project_name", "user_domain_name", "project_domain_name"):
        del options[f"service_{name}"]
    options.update(service_auth_type="v3applicationcredential", service_application_credential_id=credential_id,
                   service_application_credential_secret=secret)
    image = images["e"]
    with open_front(kind, glance, options) as opened:
        before = web_reads(glance, image)
        got = opened.get(f"/v2/images/{image.id}/file", keystone_lab.token("alice"))
        assert got.status == 200 and got.body == image.data, got.describe()
        assert web_reads(glance, image) == before + 1, opened.log()[-3000:]
        assert secret not in opened.log()


def test_service_mode_after_admin_leaves_service_api(glance: KeystoneGlance, keystone_lab: KeystoneLab,
                                                    images: dict[str, SeededImage]) -> None:
    """Glance's TODO (admin leaves ``service_api``), simulated: an admin-only
    token is refused the locations; locproxy-admin (admin and service, as the
    README says to create it) still reads them."""
    original = glance.policy_path.read_text()
    glance.policy_path.write_text('"service_api": "role:service"\n')  # and no service_token line
    glance.restart()
    try:
        image = images["e"]
        admin_only = glance.request("GET", f"/v2/images/{image.id}/locations", identity=glance.as_user("admin"))
        assert admin_only.status == 403, admin_only.body[:300]
        with open_front("sidecar", glance, filter_options(glance, keystone_lab, "service")) as opened:
            before = web_reads(glance, image)
            got = opened.get(f"/v2/images/{image.id}/file", keystone_lab.token("alice"))
            assert got.status == 200 and got.body == image.data, got.describe()
            assert web_reads(glance, image) == before + 1, opened.log()[-3000:]
    finally:
        glance.policy_path.write_text(original)
        glance.restart()
