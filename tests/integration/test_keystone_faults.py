"""Faults of a production-like Glance's Keystone, with locproxy reading the
copies Glance hides (``locations_from``), as the README's "When it fails"
says:

* Keystone stopped mid-run: tokens Glance has cached are still served, from
  the strategy's copy (locproxy's own token is kept), and a token Glance
  cannot check gets Glance's own answer; no 5xx of locproxy's;
* Keystone down when locproxy starts: downloads from ``direct_url``, one
  WARNING, the metric, ``/healthcheck`` degraded; then it recovers;
* locproxy's own token renewed by keystoneauth1 (130 s tokens here, renewed
  once within 120 s of expiry) and reused until then;
* a wrong ``service_password``: one WARNING, the metric, ``/healthcheck``
  degraded, downloads from ``direct_url``, then Glance's ``/file``; the
  password in no log line.

Images as in ``tests.support.keystone.fronts``: the strategy prefers the
web copy, Glance's ``direct_url`` is fs1 (weight 100).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from typing import Iterator

import pytest

from tests.support.keystone.fronts import (
    KINDS_AND_MODES,
    Front,
    file_reads,
    filter_options,
    open_front,
    web_reads,
)
from tests.support.keystone.lab import KeystoneGlance, KeystoneLab, keystone_glance
from tests.support.keystone.seed import SeededImage, seed_image
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

REFUSED = "service identity refused by Keystone"
UNREACHABLE = "service identity cannot reach Keystone"
NEW_TOKEN = r"service identity: new token \(user [^,]+, project [^)]+\), expires (\S+)"
WRONG_PASSWORD = "lab-wrong-password-7f3a"


@pytest.fixture(scope="module")
def glance(keystone_lab: KeystoneLab) -> Iterator[KeystoneGlance]:
    with keystone_glance(keystone_lab, overrides={"fs1": {"weight": "100"}}) as server:
        yield server


@pytest.fixture(scope="module")
def images(glance: KeystoneGlance) -> list[SeededImage]:
    """Seeded up front (Keystone is stopped in some tests). Each front is a
    new locproxy (a sidecar, or a restarted Glance): none remembers the
    locations of any image at first."""
    return [seed_image(glance, os.urandom(700_000 + n), owner="alice", name=f"lp-ksf-{n}") for n in range(4)]


def download(front: Front, glance: KeystoneGlance, image: SeededImage, token: str, *, web: int) -> None:
    """A 200 with exact bytes; ``web`` reads of the web copy (1: the strategy's copy, 0: not)."""
    before = web_reads(glance, image)
    got = front.get(f"/v2/images/{image.id}/file", token)
    assert got.status == 200 and got.complete, f"{got.describe()}\n{front.log()[-3000:]}"
    assert hashlib.sha512(got.body).hexdigest() == image.sha512, "not the image's bytes"
    assert web_reads(glance, image) == before + web, (
        f"web copy read {web_reads(glance, image) - before} times, not {web}\n{front.log()[-3000:]}")


@pytest.fixture
def keystone_restored(keystone_lab: KeystoneLab) -> Iterator[KeystoneLab]:
    """The lab's Keystone as it was after the test, whatever the test did to it."""
    original = keystone_lab.server.overrides
    try:
        yield keystone_lab
    finally:
        if keystone_lab.server.overrides != original or not keystone_lab.server.running:
            keystone_lab.restart(original)


@pytest.mark.parametrize("combo", [pytest.param(combo, id="-".join(combo)) for combo in KINDS_AND_MODES])
def test_keystone_stopped_mid_run(combo: tuple[str, str], glance: KeystoneGlance, keystone_restored: KeystoneLab,
                                  images: list[SeededImage]) -> None:
    kind, mode = combo
    lab = keystone_restored
    warm, cold = images[:2]
    with open_front(kind, glance, filter_options(glance, lab, mode)) as front:
        alice = lab.token("alice")
        download(front, glance, warm, alice, web=1)  # Glance caches alice's and locproxy's tokens
        unseen_via, unseen_direct = lab.fresh_token("alice"), lab.fresh_token("alice")
        lab.stop()
        download(front, glance, warm, alice, web=1)  # the locations remembered
        download(front, glance, cold, alice, web=1)  # read now, with tokens Glance has cached
        shown = front.get(f"/v2/images/{cold.id}", alice).json()
        assert shown["direct_url"] == f"{glance.web.url}{cold.web_path}" and "locations" not in shown, shown
        if front.observable:
            assert front.health()["status"] == "ok", "locproxy's token is kept: nothing failed"
        direct = glance.request("GET", f"/v2/images/{warm.id}/file", identity={"X-Auth-Token": unseen_direct})
        via = front.get(f"/v2/images/{warm.id}/file", unseen_via)
        assert via.status == direct.status != 200, (via.describe(), direct.status)
        assert warm.data[:64] not in via.body
        if kind == "sidecar":
            assert "locproxy" not in via.body.decode(errors="replace").lower(), via.describe()
        lab.start()
        download(front, glance, warm, lab.fresh_token("alice"), web=1)


@pytest.mark.parametrize("mode", ["service_token", "service"])
def test_keystone_down_when_locproxy_starts(mode: str, glance: KeystoneGlance, keystone_restored: KeystoneLab,
                                            images: list[SeededImage]) -> None:
    lab = keystone_restored
    first, later = images[:2]
    alice = lab.token("alice")
    assert glance.request("GET", f"/v2/images/{first.id}", identity={"X-Auth-Token": alice}).status == 200
    lab.stop()
    with open_front("sidecar", glance, filter_options(glance, lab, mode)) as front:
        download(front, glance, first, alice, web=0)  # direct_url's copy (fs1)
        download(front, glance, first, alice, web=0)
        assert front.log().count(UNREACHABLE) == 1, front.log()[-3000:]
        assert front.metric("locproxy_service_identity_errors_total", reason="unreachable") >= 1
        health = front.health()
        assert health["status"] == "degraded" and "service_identity" in health, health
        lab.start()
        time.sleep(5.5)  # a worker tries again at most every 5 s
        download(front, glance, later, alice, web=1)
        assert "service identity works again" in front.log()
        assert front.health()["status"] == "ok"


@pytest.mark.parametrize("kind", ["sidecar", "pipeline"])
def test_own_token_is_reused_then_renewed_before_it_expires(kind: str, glance: KeystoneGlance,
                                                           keystone_restored: KeystoneLab,
                                                           images: list[SeededImage]) -> None:
    lab = keystone_restored
    lab.restart({**lab.server.overrides, "token": {"expiration": "130"}})  # stale 10 s after issue
    with open_front(kind, glance, filter_options(glance, lab, "service_token")) as front:
        alice = lab.fresh_token("alice")
        start = len(front.log())
        issued = time.monotonic()
        download(front, glance, images[0], alice, web=1)
        download(front, glance, images[1], alice, web=1)  # a second read, the same token
        tokens = re.findall(NEW_TOKEN, front.log()[start:])
        assert len(tokens) == 1, front.log()[start:][-3000:]
        time.sleep(max(0.0, issued + 12 - time.monotonic()))
        download(front, glance, images[2], alice, web=1)
        download(front, glance, images[3], alice, web=1)
        tokens = re.findall(NEW_TOKEN, front.log()[start:])
        assert len(tokens) == 2 and tokens[1] > tokens[0], tokens
        if front.observable:
            assert front.metric("locproxy_service_tokens_total") == 2


@pytest.mark.parametrize("mode, refusal", [("service", "401"), ("service_token", "403")])
def test_a_revoked_service_token_is_replaced_and_the_read_sent_once_more(mode: str, refusal: str,
                                                                         glance: KeystoneGlance,
                                                                         keystone_lab: KeystoneLab,
                                                                         images: list[SeededImage]) -> None:
    """locproxy's own token revoked while it holds it. ``service``: Glance
    answers the locations read 401, keystoneauth1 gets a new token and sends
    it once more. ``service_token``: Glance ignores the service token it
    cannot validate and refuses the user's token alone (403); locproxy
    renews its token and sends the read once more. Either way the download
    is the strategy's copy."""
    first, later = images[2:4]
    user = "locproxy-admin" if mode == "service" else "locproxy"
    with open_front("sidecar", glance, filter_options(glance, keystone_lab, mode)) as front:
        start = len(front.log())
        alice = keystone_lab.token("alice")
        download(front, glance, first, alice, web=1)  # locproxy's token issued, sent, cached by Glance
        keystone_lab.revoke_all(user)
        time.sleep(1.1)  # a token issued in the revocation's second would be revoked too
        glance.restart()  # authtoken forgets the tokens it cached, as after token_cache_time
        alice = keystone_lab.token("alice")
        reads = locations_reads_of(glance, later)
        download(front, glance, later, alice, web=1)
        assert locations_reads_of(glance, later)[len(reads):] == [refusal, "200"], "one refusal, one retry"
        assert len(re.findall(NEW_TOKEN, front.log()[start:])) == 2, front.log()[start:][-3000:]
        assert front.metric("locproxy_service_tokens_total") == 2
        assert front.metric("locproxy_hidden_locations_total", result="refused") == 0
        assert front.health()["status"] == "ok"
        if mode == "service_token":  # at most one renewal a minute: a second refusal is left as it is
            keystone_lab.revoke_all(user)
            time.sleep(1.1)
            glance.restart()
            third = images[0]
            reads = locations_reads_of(glance, third)
            download(front, glance, third, keystone_lab.token("alice"), web=0)  # direct_url's copy (fs1)
            assert locations_reads_of(glance, third)[len(reads):] == ["403"] and len(re.findall(
                NEW_TOKEN, front.log()[start:])) == 2, "renewed again within a minute"
            assert front.metric("locproxy_hidden_locations_total", result="refused") == 1


def locations_reads_of(glance: KeystoneGlance, image: SeededImage) -> list[str]:
    """The statuses of Glance's answers to ``GET .../locations`` of ``image``, in order (its access log)."""
    return re.findall(rf'"GET /v2/images/{image.id}/locations HTTP/1.1" (\d+) ', glance.access_log_path.read_text())


@pytest.mark.parametrize("kind", ["sidecar", "pipeline"])
def test_a_wrong_service_password_is_as_the_readme_says(kind: str, glance: KeystoneGlance, keystone_lab: KeystoneLab,
                                                        images: list[SeededImage]) -> None:
    image, other = images[:2]
    options = filter_options(glance, keystone_lab, "service_token", service_password=WRONG_PASSWORD)
    with open_front(kind, glance, options) as front:
        start = len(front.log())
        alice = keystone_lab.token("alice")
        files = file_reads(glance, image)
        download(front, glance, image, alice, web=0)  # direct_url's copy (fs1) ...
        download(front, glance, other, alice, web=0)
        if kind == "sidecar":
            assert file_reads(glance, image) == files, "... served by locproxy, not Glance's /file"
        time.sleep(5.5)  # the next try
        download(front, glance, image, alice, web=0)
        log = front.log()[start:]
        assert log.count(REFUSED) == 1, log[-3000:]
        assert WRONG_PASSWORD not in log
        shown = front.get(f"/v2/images/{image.id}", alice).json()
        assert shown["direct_url"].startswith("file://") and "locations" not in shown, "Glance's own direct_url"
        if front.observable:
            assert front.metric("locproxy_service_identity_errors_total", reason="refused") >= 2
            health = front.health()
            assert health["status"] == "degraded" and "service_identity" in health, health
            assert WRONG_PASSWORD not in front.metrics_text()


def test_a_wrong_service_password_then_glances_file(glance: KeystoneGlance, keystone_lab: KeystoneLab,
                                                   images: list[SeededImage]) -> None:
    """direct_url's copy (fs1) outside file_roots: Glance's own /file serves."""
    image = images[0]
    options = filter_options(glance, keystone_lab, "service_token", service_password=WRONG_PASSWORD,
                             file_roots=str(glance.store_dirs["fs2"]))
    with open_front("sidecar", glance, options) as front:
        files = file_reads(glance, image)
        download(front, glance, image, keystone_lab.token("alice"), web=0)
        # gunicorn writes its access log line once the response has closed, after the client's last byte
        wait_until(lambda: file_reads(glance, image) == files + 1, timeout=5, what="Glance's /file serving it")
        assert front.health()["status"] == "degraded"
