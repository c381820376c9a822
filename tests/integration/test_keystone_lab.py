"""The Keystone lab itself: what each identity sees in a Glance 33 behind
keystonemiddleware with default policies plus the ``service_token`` line
(the facts locproxy's Keystone modes are built on), token revocation and
a Keystone restart with other options."""

from __future__ import annotations

import datetime
import os
from typing import Iterator

import pytest

from tests.support.keystone.lab import KeystoneGlance, KeystoneLab, keystone_glance
from tests.support.keystone.seed import SeededImage, seed_image

pytestmark = pytest.mark.integration

JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def glance(keystone_lab: KeystoneLab) -> Iterator[KeystoneGlance]:
    with keystone_glance(keystone_lab) as server:
        yield server


@pytest.fixture(scope="module")
def private(glance: KeystoneGlance) -> SeededImage:
    return seed_image(glance, os.urandom(300_000), owner="alice")


def _when(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _status(glance: KeystoneGlance, path: str, token: str | None, service: str | None = None) -> int:
    headers = dict(JSON)
    if token:
        headers["X-Auth-Token"] = token
    if service:
        headers["X-Service-Token"] = service
    return glance.request("GET", path, identity={}, headers=headers).status


@pytest.mark.parametrize(("user", "service", "show", "locations"), [
    pytest.param("alice", None, 200, 403, id="alice-alone"),
    pytest.param("alice", "locproxy", 200, 200, id="alice-plus-service-token"),
    pytest.param("alice", "alice", 200, 403, id="alice-plus-a-token-without-service-role"),
    pytest.param("bob", "locproxy", 404, 404, id="bob-plus-service-token-keeps-bobs-visibility"),
    pytest.param("locproxy", None, 404, 404, id="service-role-only"),
    pytest.param("locproxy-admin", None, 200, 200, id="admin-and-service"),
    pytest.param(None, "locproxy", 401, 401, id="no-user-token"),
])
def test_what_each_identity_sees(keystone_lab: KeystoneLab, glance: KeystoneGlance, private: SeededImage,
                                 user: str | None, service: str | None, show: int, locations: int) -> None:
    token = keystone_lab.token(user) if user else None
    service_token = keystone_lab.token(service) if service else None
    path = f"/v2/images/{private.id}"
    assert _status(glance, path, token, service_token) == show
    assert _status(glance, path + "/locations", token, service_token) == locations
    if show == 200:
        image = glance.get_image(private.id, identity={"X-Auth-Token": token or ""})
        assert "locations" not in image and image["direct_url"].endswith(private.web_path), image
        assert image["stores"] == "web,fs1,fs2", image


def test_a_revoked_token_is_refused_by_glance(keystone_lab: KeystoneLab, glance: KeystoneGlance,
                                              private: SeededImage) -> None:
    token = keystone_lab.fresh_token("alice")
    keystone_lab.revoke(token)
    assert _status(glance, f"/v2/images/{private.id}", token) == 401


def test_restart_with_other_options_keeps_tokens(keystone_lab: KeystoneLab, glance: KeystoneGlance,
                                                 private: SeededImage) -> None:
    token = keystone_lab.fresh_token("alice")
    original = keystone_lab.server.overrides
    try:
        keystone_lab.restart({"token": {"expiration": "300"}})
        short = keystone_lab.identities.token_response("alice").json()["token"]
        lifetime = _when(short["expires_at"]) - _when(short["issued_at"])
        assert 299 <= lifetime.total_seconds() <= 301, short
        assert _status(glance, f"/v2/images/{private.id}", token) == 200
    finally:
        keystone_lab.restart(original)
