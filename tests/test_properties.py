"""Property-based tests (hypothesis) for the pure core: the image rewrite,
Range parsing, JSON-patch translation and configuration parsing.

The properties live in ``tests.support.properties`` (``bench/reliability.py``
runs them too and reports how many examples each checked); each is a test
here. The inputs that once broke locproxy are kept as plain regression tests
at the end.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Callable

import pytest

from locproxy.config import ConfigError, load_filter_settings
from locproxy.proxy import Proxy, load_proxy_settings
from locproxy.ranges import Unsatisfiable, parse_range
from locproxy.rewrite import IMAGE, RewritePolicy, rewrite_body
from locproxy.strategies import Selector
from tests.support.properties import EXAMPLES, PROPERTIES

# -- the properties ---------------------------------------------------------------------------

@pytest.mark.parametrize("prop", [pytest.param(prop, id=prop.__name__) for prop in PROPERTIES])
def test_property(prop: Callable[[], None]) -> None:
    prop()


# -- inputs that once broke locproxy, kept as regression tests ----------------------------------

@pytest.mark.parametrize("strategy, options", [("weight", {}), ("node_weight", {"node_name": "n1"})])
def test_huge_integer_weight_is_ignored(strategy: str, options: dict) -> None:
    body = b'{"id": "x", "locations": [{"url": "file:///a", "metadata": {"weight": 1' + b"0" * 400 + \
        b', "node_weights": {"n1": 1' + b"0" * 400 + b'}}}, {"url": "http://h/a", "metadata": {}}]}'
    rewrite_body(body, IMAGE, RewritePolicy(Selector(strategy, **options)))


def test_lone_surrogate_in_image_json_is_survived() -> None:
    body = json.dumps({"id": "x", "name": "\ud800", "locations": [
        {"url": "file:///a", "metadata": {"store": "disk"}}, {"url": "http://h/a", "metadata": {"store": "web"}}]}
    ).encode()
    result, _shown = rewrite_body(body, IMAGE, RewritePolicy(Selector("store_type", store_type_preference="http")))
    assert result is None or json.loads(result)["locations"][0]["url"] == "http://h/a"


def test_rewritten_body_is_strict_json() -> None:
    """1e400 would come back as Infinity, which is not JSON: such a body is
    passed through as the upstream sent it."""
    body = b'{"id": "x", "min_ram": 1e400, "locations": [{"url": "file:///a", "metadata": {"store": "d"}},' \
           b' {"url": "http://h/a", "metadata": {"store": "w"}}]}'
    assert rewrite_body(body, IMAGE, RewritePolicy(Selector("store_type", store_type_preference="http")))[0] is None


def test_range_of_more_than_4300_digits_is_unsatisfiable() -> None:
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=" + "9" * 5000 + "-", 100)


@pytest.mark.parametrize("option, value", [
    ("chunk_size", "9" * 5000), ("max_rewrite_size", "9000000000G"),
    ("measured_reference_size", "1" + "0" * 400),
])
def test_absurd_sizes_are_refused_at_load(option: str, value: str) -> None:
    conf = {option: value, **({"location_strategy": "measured"} if option.startswith("measured") else {})}
    with pytest.raises(ConfigError, match=option):
        load_filter_settings({}, conf)


@pytest.mark.parametrize("kind", ["directory", "text-file"])
def test_unusable_metrics_file_is_a_config_error_naming_it(kind: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "metrics")
        if kind == "directory":
            os.mkdir(path)
        else:
            with open(path, "w") as stream:
                stream.write("not a database, just some operator notes\n" * 10)
        with pytest.raises(ConfigError, match="metrics_file"):
            load_filter_settings({}, {"metrics_file": path})


@pytest.mark.parametrize("value", ["http://[::1", "http://a\uff03b", "http://h:99999", "http://h:-1"])
def test_bad_upstream_url_is_a_config_error_naming_it(value: str) -> None:
    with pytest.raises(ConfigError, match="upstream"):
        Proxy(load_proxy_settings({}, {"upstream": value})).close()


def test_examples_were_counted() -> None:
    """Runs last in this module: every property above ran (and counted) a
    fair number of valid examples, not just ones its assume() rejected."""
    if len(EXAMPLES) < len(PROPERTIES):
        pytest.skip("meaningful only after the whole module ran")
    assert all(count >= 100 for count in EXAMPLES.values()), EXAMPLES

