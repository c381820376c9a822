"""The selection library: strategies, ordering rules, option validation."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

import locproxy
from locproxy import strategies
from locproxy.strategies import Selector, order_locations


def loc(url, **metadata):
    return {"url": url, "metadata": metadata}


def urls(locations):
    return [location["url"] for location in locations]


GLANCE_INPUT = [
    loc(url)
    for url in (
        "file://image0", "rbd://image1", "file://image3", "swift://image4",
        "cinder://image5", "file://image6", "rbd://image7", "vsphere://image8",
    )
]
GLANCE_EXPECTED = [
    "rbd://image1", "rbd://image7", "file://image0", "file://image3",
    "file://image6", "swift://image4", "vsphere://image8", "cinder://image5",
]


@pytest.mark.parametrize(
    "locations, strategy, options, expected",
    [
        pytest.param(
            GLANCE_INPUT, "store_type", {"store_type_preference": "rbd, file, swift, http, vmware"},
            GLANCE_EXPECTED, id="glance-acceptance-case",
        ),
        pytest.param(
            GLANCE_INPUT, "store_type", {"store_type_preference": ["rbd", "file", "swift", "http", "vmware"]},
            GLANCE_EXPECTED, id="glance-acceptance-case-as-list",
        ),
        pytest.param(
            [loc("file:///a"), loc("http://b"), loc("rbd://c")], "location_order", {},
            ["file:///a", "http://b", "rbd://c"], id="location-order-keeps-upstream-order",
        ),
        pytest.param(
            [loc("file:///a"), loc("HTTPS://b"), loc("Http://c")], "store_type",
            {"store_type_preference": "http"}, ["HTTPS://b", "Http://c", "file:///a"],
            id="store-type-schemes-case-insensitive",
        ),
        pytest.param(
            [loc("file:///a"), loc("rbd://b"), loc("file:///c")], "store_type",
            {"store_type_preference": "file, file, rbd"}, ["file:///a", "file:///c", "rbd://b"],
            id="store-type-repeated-preference-counts-once",
        ),
        pytest.param(
            [loc("s3+https://a"), {"metadata": {}}, loc("filesystem:///b"), loc("swift+http://c")], "store_type",
            {"store_type_preference": " s3 ,, file "},
            ["s3+https://a", "filesystem:///b", None, "swift+http://c"],
            id="store-type-keeps-urlless-locations-last-and-skips-blanks",
        ),
        pytest.param(
            [loc("http://a", store="slow"), loc("http://b", store="fast"), loc("http://c")], "weight",
            {"store_weights": "fast:100, slow:10"}, ["http://b", "http://a", "http://c"],
            id="weight-from-store-weights",
        ),
        pytest.param(
            [loc("http://a", store="fast"), loc("http://b", store="slow", weight=500), loc("http://c", weight="7")],
            "weight", {"store_weights": {"fast": 100}}, ["http://b", "http://a", "http://c"],
            id="weight-metadata-overrides-store-weight",
        ),
        pytest.param(
            [loc("http://a", weight=-1), loc("http://b"), loc("http://c", weight=0), loc("http://d", weight="x")],
            "weight", {}, ["http://b", "http://c", "http://d", "http://a"],
            id="weight-ties-stable-and-bad-metadata-ignored",
        ),
        pytest.param(
            [
                loc("http://a", node_weights={"node-a": 1, "node-b": 9}),
                loc("http://b", node_weights={"node-a": 5}),
                loc("http://c", store="fast"),
            ],
            "node_weight", {"node_name": "node-a", "store_weights": "fast:3"},
            ["http://b", "http://c", "http://a"], id="node-weight-for-this-node-else-weight-rule",
        ),
        pytest.param(
            [loc("http://a", node_weights={"node-a": 1}), loc("http://b", node_weights={"node-b": 5})],
            "node_weight", {"node_name": "node-b"}, ["http://b", "http://a"],
            id="node-weight-other-node-falls-back-to-zero",
        ),
    ],
)
def test_strategy_order(locations, strategy, options, expected):
    before = copy.deepcopy(locations)
    result = order_locations(locations, strategy=strategy, **options)
    assert [location.get("url") for location in result] == expected
    assert locations == before, "input must not be mutated"
    assert result is not locations


def metrics_loc(url: str, inside: dict | None = None, beside: dict | None = None, **metadata) -> dict:
    """A location with the seed's ``metrics`` inside ``metadata`` and/or beside it."""
    location: dict = {"url": url, "metadata": dict(metadata)}
    if inside is not None:
        location["metadata"]["metrics"] = inside
    if beside is not None:
        location["metrics"] = beside
    return location


@pytest.mark.parametrize(
    "locations, strategy, options, expected",
    [
        pytest.param(
            [metrics_loc("http://a", inside={"weight": 1}), metrics_loc("http://b", inside={"weight": 9}),
             metrics_loc("http://c")],
            "weight", {}, ["http://b", "http://a", "http://c"], id="weight-in-metadata-metrics",
        ),
        pytest.param(
            [metrics_loc("http://a", beside={"weight": 1}), metrics_loc("http://b", beside={"weight": "9"}),
             metrics_loc("http://c", beside={"weight": -2})],
            "weight", {}, ["http://b", "http://a", "http://c"], id="weight-in-metrics-beside-metadata",
        ),
        pytest.param(
            [metrics_loc("http://a", inside={"weight": 1}, weight=50), metrics_loc("http://b", beside={"weight": 9}),
             metrics_loc("http://c", inside={"weight": 20}, beside={"weight": 99})],
            "weight", {}, ["http://a", "http://c", "http://b"],
            id="weight-metadata-then-metadata-metrics-then-beside",
        ),
        pytest.param(
            [metrics_loc("http://a", store="fast"), metrics_loc("http://b", store="fast", beside={"weight": "x"}),
             metrics_loc("http://c", beside={"weight": 200}), metrics_loc("http://d", beside=["weight", 300])],
            "weight", {"store_weights": "fast:100"}, ["http://c", "http://a", "http://b", "http://d"],
            id="weight-metrics-not-numeric-or-not-a-mapping-fall-back-to-store-weight",
        ),
        pytest.param(
            [metrics_loc("http://a", inside={"node-weights": {"n1": 1}}),
             metrics_loc("http://b", beside={"node-weights": {"n1": 5}}),
             metrics_loc("http://c", node_weights={"n1": 3})],
            "node_weight", {"node_name": "n1"}, ["http://b", "http://c", "http://a"],
            id="node-weights-in-metrics-inside-and-beside",
        ),
        pytest.param(
            [metrics_loc("http://a", beside={"node-weights": {"n2": 50}, "weight": 1}),
             metrics_loc("http://b", inside={"node-weights": {"n1": 2}}, node_weights={"n1": 3}),
             metrics_loc("http://c", beside={"weight": 4})],
            "node_weight", {"node_name": "n1"}, ["http://c", "http://b", "http://a"],
            id="node-weights-other-node-falls-back-to-metrics-weight",
        ),
        pytest.param(
            [metrics_loc("http://a", beside={"node_weights": {"n1": 9}}),
             metrics_loc("http://b", inside={"node-weights": {"n1": "bad"}}, beside={"node-weights": {"n1": 2}})],
            "node_weight", {"node_name": "n1"}, ["http://b", "http://a"],
            id="node-weights-seed-spelling-only-and-bad-values-skipped",
        ),
    ],
)
def test_seed_metrics_are_static_weights(locations, strategy, options, expected):
    before = copy.deepcopy(locations)
    assert urls(order_locations(locations, strategy=strategy, **options)) == expected
    assert locations == before


@pytest.mark.parametrize("strategy", ["location_order", "store_type", "weight", "node_weight"])
def test_inactive_locations_never_first(strategy):
    locations = [
        {"url": "rbd://pending", "status": "pending", "metadata": {"weight": 99, "store": "x"}},
        loc("rbd://deleted", status="deleted", weight=98),
        loc("file:///ok"),
        {"url": "rbd://active", "status": "active", "metadata": {}},
    ]
    result = order_locations(locations, strategy=strategy, store_type_preference="rbd", node_name="n")
    assert urls(result)[:2] == ["file:///ok", "rbd://active"] or urls(result)[:2] == ["rbd://active", "file:///ok"]
    assert set(urls(result)[2:]) == {"rbd://pending", "rbd://deleted"}
    assert locproxy.best_location(result)["url"] in {"file:///ok", "rbd://active"}


def test_best_location_skips_inactive_and_urlless():
    locations = [loc("rbd://a", status="pending_delete"), {"metadata": {}}, loc("file:///b")]
    assert locproxy.best_location(locations) == loc("file:///b")
    assert locproxy.best_location([loc("rbd://a", status="pending")]) is None


def test_prefer_puts_named_stores_first_in_given_order():
    locations = [loc("file:///a", store="a"), loc("file:///b", store="b"), loc("file:///c", store="c")]
    result = order_locations(locations, strategy="location_order", prefer="c, b")
    assert urls(result) == ["file:///c", "file:///b", "file:///a"]


def test_prefer_never_lifts_inactive_location():
    locations = [loc("file:///a", store="a"), loc("file:///b", store="b", status="pending")]
    assert urls(order_locations(locations, prefer=["b"])) == ["file:///a", "file:///b"]


def test_node_name_defaults_to_host_name():
    import socket

    locations = [loc("http://a"), loc("http://b", node_weights={socket.gethostname(): 1})]
    assert urls(order_locations(locations, strategy="node_weight")) == ["http://b", "http://a"]


@pytest.mark.parametrize(
    "strategy, options, message",
    [
        pytest.param("fastest", {}, "location_strategy: unknown strategy 'fastest'; valid choices: "
                     "location_order, measured, node_weight, store_type, weight", id="unknown-strategy"),
        pytest.param("store_type", {"store_type_preference": "rbd, floppy"},
                     "store_type_preference: unknown store type 'floppy'; valid choices: "
                     "cinder, file, http, rbd, s3, swift, vmware", id="unknown-store-type"),
        pytest.param("store_type", {"store_type_preference": 7}, "store_type_preference: expected a "
                     "comma-separated string or a list, got 7", id="preference-not-a-list"),
        pytest.param("weight", {"store_weights": "fast=100"}, "store_weights: 'fast=100' is not of the "
                     "form name:weight", id="weight-bad-pair"),
        pytest.param("weight", {"store_weights": "fast:lots"}, "store_weights: weight of 'fast' must be a "
                     "number, got 'lots'", id="weight-not-a-number"),
        pytest.param("weight", {"store_weights": {"fast": float("nan")}}, "store_weights: weight of 'fast' "
                     "must be a number", id="weight-nan"),
        pytest.param("node_weight", {"node_name": "  "}, "node_name: must be a non-empty string",
                     id="blank-node-name"),
    ],
)
def test_bad_options_name_option_value_and_choices(strategy, options, message):
    with pytest.raises(ValueError) as error:
        order_locations([loc("file:///a")], strategy=strategy, **options)
    assert message in str(error.value)


def test_registry_lists_builtins_and_accepts_registrations():
    assert {"location_order", "store_type", "weight", "node_weight"} <= set(locproxy.strategy_names())

    def reverse(**_options):
        counter = iter(range(0, -1000, -1))
        return lambda location: next(counter)

    locproxy.register_strategy("test_reverse", reverse)
    try:
        assert urls(order_locations([loc("a://1"), loc("b://2")], strategy="test_reverse")) == ["b://2", "a://1"]
    finally:
        del strategies.registered_strategies()["test_reverse"]


def test_selector_validates_once_and_reuses():
    selector = Selector("store_type", store_type_preference="http")
    page = [[loc("file:///x"), loc("http://y")] for _ in range(3)]
    assert [urls(selector.order(locations)) for locations in page] == [["http://y", "file:///x"]] * 3
    assert "store_type" in repr(selector)


def test_client_import_pulls_in_no_server_libraries():
    code = (
        "import sys, locproxy\n"
        "print(locproxy.order_locations([{'url': 'file:///a'}, {'url': 'rbd://b'}],"
        " strategy='store_type', store_type_preference='rbd,file'))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('webob', 'urllib3')))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert output.stdout.splitlines() == ["[{'url': 'rbd://b'}, {'url': 'file:///a'}]", "[]"]


MEASURED = [loc("http://slow:80/i", store="s"), loc("http://fast:80/i", store="f"), loc("file:///store/c/i")]


@pytest.mark.parametrize(
    "stats, options, expected",
    [
        pytest.param({"http://slow:80": (0.01, 1e6), "http://fast:80": (0.01, 1e8), "file:///store/c": (0.0, 5e8)},
                     {}, ["file:///store/c/i", "http://fast:80/i", "http://slow:80/i"], id="fastest-first"),
        pytest.param({"http://slow:80": (0.01, 1e6)}, {},
                     ["http://fast:80/i", "file:///store/c/i", "http://slow:80/i"],
                     id="unmeasured-get-optimistic-prior-and-tie-in-base-order"),
        pytest.param({"http://slow:80": (0.01, 1e6)}, {"measured_prior_throughput": "1K"},
                     ["http://slow:80/i", "http://fast:80/i", "file:///store/c/i"], id="pessimistic-prior"),
        pytest.param({"http://slow:80": (0.0, 100e6), "http://fast:80": (0.0, 101e6)},
                     {"measured_base_strategy": "store_type", "store_type_preference": "file"},
                     ["file:///store/c/i", "http://slow:80/i", "http://fast:80/i"],
                     id="same-10-percent-step-ties-follow-base-strategy"),
        pytest.param({"http://slow:80": (2.0, 2**30), "http://fast:80": (0.0001, 2**30)}, {},
                     ["http://fast:80/i", "file:///store/c/i", "http://slow:80/i"], id="first-byte-time-counts"),
    ],
)
def test_measured(stats, options, expected):
    assert urls(order_locations(MEASURED, strategy="measured", stats=stats, **options)) == expected


@pytest.mark.parametrize(
    "options, message",
    [
        pytest.param({"measured_base_strategy": "measured"}, "measured_base_strategy: must be another strategy",
                     id="recursive-base"),
        pytest.param({"measured_base_strategy": "nope"}, "location_strategy: unknown strategy 'nope'",
                     id="unknown-base"),
        pytest.param({"measured_reference_size": "big"}, "measured_reference_size: expected a size", id="bad-size"),
    ],
)
def test_measured_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        order_locations(MEASURED, strategy="measured", **options)


def test_backend_key_comes_from_the_url_not_metadata():
    from locproxy.strategies import backend_key

    assert backend_key(loc("http://u:p@Host.Example:8080/x", store="whatever")) == "http://host.example:8080"
    assert backend_key(loc("file:///srv/a/b/img")) == "file:///srv/a/b"
    assert backend_key({"metadata": {}}) == "unknown"


@pytest.mark.parametrize(
    "url, key",
    [
        pytest.param("rbd://6F1C7B3E-2f4a-4c1e-9d7b-0a1b2c3d4e5f/images/img/snap",
                     "rbd://6f1c7b3e-2f4a-4c1e-9d7b-0a1b2c3d4e5f/images", id="rbd-cluster-and-pool"),
        pytest.param("rbd://6f1c7b3e-2f4a-4c1e-9d7b-0a1b2c3d4e5f/a%2Fb/img/snap",
                     "rbd://6f1c7b3e-2f4a-4c1e-9d7b-0a1b2c3d4e5f/a%2Fb", id="rbd-odd-pool"),
        pytest.param("rbd://legacy-image", "rbd", id="rbd-legacy-names-no-image"),
        pytest.param("s3://AK:wJal/rXU@Host:9000/bucket/key", "s3://host:9000", id="s3-without-keys"),
        pytest.param("s3+https://s3.example/bucket/key", "s3+https://s3.example", id="s3-https"),
    ],
)
def test_backend_keys_of_ceph_locations(url, key):
    """Health and learning per rbd cluster and pool, per s3 host; never an
    image name or a key."""
    from locproxy.strategies import backend_key

    assert backend_key(loc(url)) == key
