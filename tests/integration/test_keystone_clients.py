"""OpenStack's own clients, as alice with her password through Keystone's
catalog, download through locproxy: python-glanceclient, openstacksdk and
``openstack image save`` (python-openstackclient), each from the Glance
lab's venv. Exact bytes, served from the strategy's copy (the web copy; the
web server's log says so), in both deployments and both modes.

* sidecar: the sidecar is the catalog's **internal** image endpoint (the
  public one stays on Glance): glanceclient with ``interface='internal'``,
  ``openstack --os-interface internal``; openstacksdk with
  ``image_endpoint_override``;
* pipeline: locproxy inside Glance's keystone pipeline, the clients on the
  catalog's public endpoint (Glance).

Skipped, with the reason, where a client is missing from the venv.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import pytest

from tests.support.keystone import clients
from tests.support.keystone.fronts import KINDS_AND_MODES, Front, filter_options, open_front, web_reads
from tests.support.keystone.lab import KeystoneGlance, KeystoneLab, keystone_glance
from tests.support.keystone.seed import SeededImage, seed_image

pytestmark = [pytest.mark.integration, pytest.mark.lab]  # opt-in: ./run tests -m lab


@pytest.fixture(scope="module")
def glance(keystone_lab: KeystoneLab) -> Iterator[KeystoneGlance]:
    with keystone_glance(keystone_lab, overrides={"fs1": {"weight": "100"}}) as server:
        yield server


@pytest.fixture(scope="module")
def image(glance: KeystoneGlance) -> SeededImage:
    return seed_image(glance, os.urandom(2_000_000), owner="alice", name="lp-ks-clients")


@pytest.fixture(scope="module", params=[pytest.param(combo, id="-".join(combo)) for combo in KINDS_AND_MODES])
def front(request: pytest.FixtureRequest, glance: KeystoneGlance, keystone_lab: KeystoneLab) -> Iterator[Front]:
    kind, mode = request.param
    with open_front(kind, glance, filter_options(glance, keystone_lab, mode)) as opened:
        if kind == "sidecar":
            keystone_lab.set_endpoint("image", "internal", opened.url)
        try:
            yield opened
        finally:
            keystone_lab.set_endpoint("image", "internal", glance.url)


def _interface(front: Front) -> str:
    return "internal" if front.kind == "sidecar" else "public"


def _check(front: Front, glance: KeystoneGlance, image: SeededImage,
           download: Callable[[], clients.ClientResult]) -> clients.ClientResult:
    before = web_reads(glance, image)
    try:
        got = download()
    except clients.ClientMissing as missing:
        pytest.skip(f"client not in the Glance venv: {missing}")
    assert (got.size, got.sha512) == (len(image.data), image.sha512), "not the image's bytes"
    assert web_reads(glance, image) >= before + 1, (
        f"the web copy (the strategy's choice) was not read\n{front.log()[-3000:]}")
    return got


def test_glanceclient(front: Front, glance: KeystoneGlance, keystone_lab: KeystoneLab, image: SeededImage) -> None:
    got = _check(front, glance, image, lambda: clients.glanceclient_download(
        glance.venv, keystone_lab, image.id, interface=_interface(front)))
    assert got.direct_url == f"{glance.web.url}{image.web_path}" and not got.locations, got


def test_openstacksdk(front: Front, glance: KeystoneGlance, keystone_lab: KeystoneLab, image: SeededImage) -> None:
    override = front.url if front.kind == "sidecar" else ""
    got = _check(front, glance, image, lambda: clients.openstacksdk_download(
        glance.venv, keystone_lab, image.id, endpoint_override=override))
    assert got.direct_url == f"{glance.web.url}{image.web_path}" and not got.locations, got


def test_openstack_image_save(front: Front, glance: KeystoneGlance, keystone_lab: KeystoneLab,
                              image: SeededImage) -> None:
    _check(front, glance, image, lambda: clients.openstack_image_save(
        glance.venv, keystone_lab, image.id, interface=_interface(front)))
