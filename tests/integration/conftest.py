"""Fixtures for integration tests against a real Glance (the lab in
``tests/support/glance``).

``glance_server`` (session scope) builds or reuses the cached Glance venv and
starts one Glance for the whole run. If that fails (e.g. no PyPI for a cold
build) every test using it FAILS with the reason: CI must not pass by skipping.
``LOCPROXY_SKIP_INTEGRATION=1`` skips the ``integration`` tests instead.

``keystone_lab`` (session scope): a real Keystone 30 with the lab's
identities (``tests/support/keystone``), started once (about 7 s; 20 s more
for a cold venv). Where it cannot be built or started it SKIPS with the
reason (``LOCPROXY_SKIP_KEYSTONE=1`` skips it on purpose).
"""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from tests.support.ceph import CephCluster
from tests.support.glance.lab import ENV_SKIP
from tests.support.glance.lab import glance_server as start_glance
from tests.support.glance.server import GlanceServer
from tests.support.glance.venv import GlanceEnvError, venv_dir
from tests.support.keystone.lab import KeystoneLab
from tests.support.keystone.lab import keystone_lab as start_keystone
from tests.support.swiftlab import SwiftGateway, swift_gateway_or_skip

ENV_SKIP_KEYSTONE = "LOCPROXY_SKIP_KEYSTONE"


def _skip_requested() -> bool:
    return os.environ.get(ENV_SKIP, "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs the real-Glance lab of tests/support/glance "
        "(set LOCPROXY_SKIP_INTEGRATION=1 to skip)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _skip_requested():
        return
    skip = pytest.mark.skip(reason=f"{ENV_SKIP} is set")
    for item in items:
        if item.get_closest_marker("integration") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def glance_server() -> Iterator[GlanceServer]:
    """A running Glance (gunicorn, no keystone) with stores fs1, fs2 (file) and web (http)."""
    if _skip_requested():
        pytest.skip(f"{ENV_SKIP} is set")
    context = start_glance()
    try:
        server = context.__enter__()
    except (GlanceEnvError, OSError, TimeoutError) as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:
        pytest.fail(
            f"could not build or start the real-Glance environment: {problem}\n"
            f"(cached venv: {venv_dir()}; a cold build needs PyPI. "
            f"Set {ENV_SKIP}=1 to skip the integration tests.)",
            pytrace=False,
        )
    try:
        yield server
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="session")
def keystone_lab() -> Iterator[KeystoneLab]:
    """A running Keystone with alice, bob, admin, locproxy, locproxy-admin and glance."""
    if _skip_requested():
        pytest.skip(f"{ENV_SKIP} is set")
    if os.environ.get(ENV_SKIP_KEYSTONE, "").strip().lower() not in ("", "0", "false", "no"):
        pytest.skip(f"{ENV_SKIP_KEYSTONE} is set")
    context = start_keystone()
    try:
        lab = context.__enter__()
    except (GlanceEnvError, OSError, TimeoutError) as exc:
        pytest.skip(f"the Keystone lab cannot run here: {exc}")
    try:
        yield lab
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="module")  # a radosgw speaking Swift with Keystone trust, per lab module
def swift(ceph_lab: CephCluster, keystone_lab: KeystoneLab) -> Iterator[SwiftGateway]:
    with swift_gateway_or_skip(ceph_lab, keystone_lab) as gateway:
        yield gateway
