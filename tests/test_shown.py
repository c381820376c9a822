"""JSON-patch location indexes address the copy the client saw: every way
the order can change between a client's read and its PATCH.

Each scenario runs the filter (webtest, lint on) in front of the demo image
API, which applies JSON-patch location operations as Glance does. The client
reads the image, something changes the order, then the client removes the
copy it saw at an index; the test checks which copy the upstream removed, or
that the PATCH was refused with 409 and nothing was removed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from webtest import TestApp

from locproxy.config import load_filter_settings
from locproxy.demo import DemoImageAPI, location
from locproxy.middleware import LocationFilter
from locproxy.reloading import Reloading
from locproxy.shown import ShownOrders, client_key
from tests.support.sqlite_files import Clock, used_while_locked

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
URLS = {"fs1": "file:///srv/fs1/image", "fs2": "file:///srv/fs2/image", "web": "http://web.example/image"}
CLIENT = {"X-Auth-Token": "client-token"}
OTHER_CLIENT = {"X-Auth-Token": "other-token"}
MiB = 1 << 20


class World:
    """The demo API with one image whose copies are, upstream, fs1, fs2, web."""

    def __init__(self) -> None:
        self.api = DemoImageAPI()
        self.image_id = self.api.add_image(data=b"x" * 1000, locations=[location(url, store)
                                                                         for store, url in URLS.items()])

    def app(self, settings: Any) -> TestApp:
        return TestApp(LocationFilter(self.api, settings), lint=True)

    def read(self, app: TestApp, query: str = "", headers: dict[str, str] = CLIENT) -> list[str]:
        return stores(app.get(f"/v2/images/{self.image_id}{query}", headers=headers).json)

    def remove(self, app: TestApp, index: int, query: str = "", headers: dict[str, str] = CLIENT) -> Any:
        return app.patch(f"/v2/images/{self.image_id}{query}",
                         json.dumps([{"op": "remove", "path": f"/locations/{index}"}]),
                         headers={**PATCH, **headers}, expect_errors=True)

    @property
    def upstream_stores(self) -> list[str]:
        return stores(self.api.image(self.image_id))


def stores(image: dict) -> list[str]:
    return [item["metadata"]["store"] for item in image["locations"]]


def settings(**options: str) -> Any:
    return load_filter_settings({}, options)


def removed(world: World, response: Any, store: str) -> None:
    assert response.status_int == 200, response.text
    assert store not in world.upstream_stores, f"{store}, the copy the client saw there, is gone"
    assert len(world.upstream_stores) == 2, "one copy removed, no other"


def refused(world: World, response: Any) -> None:
    assert response.status_int == 409, response.text
    message = response.json["error"]["message"]
    assert f"Read the image again (GET /v2/images/{world.image_id})" in message
    assert world.upstream_stores == ["fs1", "fs2", "web"], "nothing removed"


# -- each way the order can change ---------------------------------------------------

def test_prefer_on_read_and_patch_removes_what_was_shown_first():
    """The reported data loss: with ?prefer=web the client saw web at 0."""
    world = World()
    app = world.app(settings())
    assert world.read(app, "?prefer=web") == ["web", "fs1", "fs2"]
    removed(world, world.remove(app, 0, "?prefer=web"), "web")


def test_prefer_on_read_only():
    world = World()
    app = world.app(settings())
    assert world.read(app, "?prefer=web") == ["web", "fs1", "fs2"]
    removed(world, world.remove(app, 0), "web")


def test_strategy_switched_between_read_and_patch(tmp_path: Path):
    config = tmp_path / "locproxy.ini"
    config.write_text("[locproxy]\nlocation_strategy = weight\nstore_weights = web:100, fs2:50\n")
    reloading = Reloading(str(config), lambda options, previous: load_filter_settings({}, options),
                          interval=0)
    world = World()
    app = world.app(reloading)
    assert world.read(app) == ["web", "fs2", "fs1"]
    config.write_text("[locproxy]\nlocation_strategy = location_order\n")
    assert world.read(app, headers=OTHER_CLIENT) == ["fs1", "fs2", "web"], "switched"
    removed(world, world.remove(app, 1), "fs2")


def measured_app(world: World) -> tuple[Any, TestApp]:
    """The filter with the ``measured`` strategy, nothing learnt yet, and a
    client that has read the image (in the upstream's order)."""
    app = world.app(settings(location_strategy="measured"))
    assert world.read(app) == ["fs1", "fs2", "web"], "nothing learnt yet: the upstream's order"
    return app.app.services, app


def test_measured_strategy_learnt_between_read_and_patch():
    world = World()
    options, app = measured_app(world)
    for _ in range(3):
        options.tracker.record_transfer("file:///srv/fs1", 64 * MiB, 10.0)
        options.tracker.record_transfer("http://web.example", 64 * MiB, 0.01)
    assert world.read(app, headers=OTHER_CLIENT) == ["web", "fs2", "fs1"], "learnt"
    removed(world, world.remove(app, 0), "fs1")


def test_backend_demoted_between_read_and_patch():
    world = World()
    options, app = measured_app(world)
    options.tracker.record_failure("file:///srv/fs1", at_once=True)
    removed(world, world.remove(app, 0), "fs1")


def test_another_worker_with_other_figures_shares_what_was_shown(tmp_path: Path):
    """Two workers of one node: the read on one (which learnt web is fast),
    the PATCH on the other (which learnt nothing): the shared metrics_file
    tells the second what the first showed."""
    world = World()
    worker_one = world.app(settings(location_strategy="measured", metrics_file=str(tmp_path / "metrics.sqlite")))
    for _ in range(3):
        worker_one.app.services.tracker.record_transfer("http://web.example", 64 * MiB, 0.01)
    assert world.read(worker_one) == ["web", "fs1", "fs2"]
    worker_two = world.app(settings(location_strategy="measured", metrics_file=str(tmp_path / "metrics.sqlite")))
    # figures the first worker never saw:
    worker_two.app.services.tracker.record_transfer("file:///srv/fs1", 64 * MiB, 0.01)
    removed(world, world.remove(worker_two, 0), "web")


def test_another_worker_without_a_shared_file_refuses():
    world = World()
    worker_one = world.app(settings(location_strategy="store_type", store_type_preference="http"))
    worker_two = world.app(settings(location_strategy="store_type", store_type_preference="http"))
    assert world.read(worker_one) == ["web", "fs1", "fs2"]
    refused(world, world.remove(worker_two, 0))


# -- what cannot be known is refused ---------------------------------------------------

def test_patch_without_a_read_is_refused():
    world = World()
    app = world.app(settings(location_strategy="store_type", store_type_preference="http"))
    refused(world, world.remove(app, 0))


def test_another_clients_read_is_not_used():
    world = World()
    app = world.app(settings(location_strategy="store_type", store_type_preference="http"))
    world.read(app, headers=OTHER_CLIENT)
    refused(world, world.remove(app, 0))


def test_the_last_read_counts():
    world = World()
    options = settings()
    app = world.app(options)
    assert world.read(app, "?prefer=web") == ["web", "fs1", "fs2"]
    assert world.read(app) == ["fs1", "fs2", "web"]
    removed(world, world.remove(app, 0, "?prefer=web"), "fs1")


def test_a_copy_removed_since_the_read_is_refused():
    world = World()
    app = world.app(settings(location_strategy="store_type", store_type_preference="http"))
    assert world.read(app) == ["web", "fs1", "fs2"]
    # Another client removes web, directly upstream.
    TestApp(world.api).patch(f"/v2/images/{world.image_id}",
                             json.dumps([{"op": "remove", "path": "/locations/2"}]), headers=PATCH)
    response = world.remove(app, 0)
    assert response.status_int == 409 and "no longer there" in response.json["error"]["message"]
    assert world.upstream_stores == ["fs1", "fs2"]


def test_a_copy_added_since_the_read_keeps_indexes_on_what_was_seen():
    world = World()
    app = world.app(settings(location_strategy="store_type", store_type_preference="http"))
    assert world.read(app) == ["web", "fs1", "fs2"]
    TestApp(world.api).patch(f"/v2/images/{world.image_id}", json.dumps(
        [{"op": "add", "path": "/locations/0", "value": {"url": "file:///srv/fs3/image", "metadata": {"store": "fs3"}}}]),
        headers=PATCH)
    response = world.remove(app, 2)
    assert response.status_int == 200, response.text
    assert world.upstream_stores == ["fs3", "fs1", "web"], "fs2, seen at 2, is gone"


def test_single_copy_needs_no_record():
    api = DemoImageAPI()
    image_id = api.add_image(data=b"x", locations=[location(URLS["fs1"], "fs1")])
    app = TestApp(LocationFilter(api, settings()), lint=True)
    response = app.patch(f"/v2/images/{image_id}", json.dumps(
        [{"op": "add", "path": "/locations/0", "value": {"url": URLS["web"], "metadata": {"store": "web"}}}]),
        headers={**PATCH, **CLIENT})
    assert response.status_int == 200, response.text
    assert stores(api.image(image_id)) == ["web", "fs1"]


def test_the_patch_response_is_what_the_client_saw_last():
    """After a PATCH the client holds the response's order: its next PATCH
    is translated from that."""
    world = World()
    app = world.app(settings(location_strategy="store_type", store_type_preference="http"))
    assert world.read(app) == ["web", "fs1", "fs2"]
    patched = app.patch(f"/v2/images/{world.image_id}", json.dumps(
        [{"op": "add", "path": "/locations/-", "value": {"url": "http://web2.example/image",
                                                         "metadata": {"store": "web2"}}}]),
        headers={**PATCH, **CLIENT})
    assert stores(patched.json) == ["web", "web2", "fs1", "fs2"]
    removed_second = world.remove(app, 1)
    assert removed_second.status_int == 200, removed_second.text
    assert world.upstream_stores == ["fs1", "fs2", "web"], "web2, shown at 1, is gone"


# -- the record itself ---------------------------------------------------------------

@pytest.mark.parametrize("path", [None, "file"], ids=["memory", "sqlite"])
def test_records_expire_and_the_latest_order_wins(tmp_path: Path, path: str | None):
    clock = Clock()
    shown = ShownOrders(str(tmp_path / "m.sqlite") if path else None, ttl=100, clock=clock)
    shown.remember("c", [("i", ("a", "b"))])
    clock.now += 0.001
    shown.remember("c", [("i", ("b", "a")), ("j", ())])
    assert shown.recall("c", "i") == ("b", "a")
    assert shown.recall("c", "j") == ()
    clock.now += 10
    shown.remember("c", [("i", ("a", "b"))])
    assert shown.recall("c", "i") == ("a", "b")
    assert shown.recall("other", "i") is None and shown.recall("c", "other") is None
    clock.now += 200
    assert shown.recall("c", "i") is None, "expired"
    shown.close()


def test_workers_see_each_others_records(tmp_path: Path):
    one = ShownOrders(str(tmp_path / "m.sqlite"))
    two = ShownOrders(str(tmp_path / "m.sqlite"))
    one.remember("c", [("i", ("a", "b"))])
    assert two.recall("c", "i") == ("a", "b")
    one.close()
    two.close()


def test_a_locked_file_means_fewer_records_never_an_error(tmp_path: Path):
    with used_while_locked(ShownOrders, tmp_path / "m.sqlite") as (shown, errors):
        started = time.monotonic()
        for number in range(20):
            shown.remember("c", [(f"image-{number}", ("a", "b"))])
        assert time.monotonic() - started < 1.0
        assert shown.recall("c", "image-3") == ("a", "b"), "this process remembers in memory"
        assert errors == ["shown_orders"] and shown.degraded


def test_client_key_depends_on_credentials_only():
    assert client_key({"X-Auth-Token": "a"}) == client_key({"X-Auth-Token": "a", "Accept": "x"})
    assert client_key({"X-Auth-Token": "a"}) != client_key({"X-Auth-Token": "b"})
    assert client_key({}) != client_key({"Cookie": "session=1"})
    assert len(client_key({"X-Auth-Token": "secret"})) == 24, "a short hash, never the token itself"
