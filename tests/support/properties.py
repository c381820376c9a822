"""Properties (hypothesis) of the pure core: the image rewrite, Range
parsing, JSON-patch translation and configuration parsing.

Each property is a function that runs its whole search when called, and
counts the examples it ran in ``EXAMPLES``; ``PROPERTIES`` lists them.
``tests/test_properties.py`` runs each as a test; ``run_properties()`` runs
them outside pytest for ``bench/reliability.py``, which reports the counts.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from typing import Any, Callable

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from locproxy.config import ConfigError, load_filter_settings
from locproxy.middleware import LocationFilter
from locproxy.proxy import Proxy, load_proxy_settings
from locproxy.ranges import SeveralRanges, Unsatisfiable, parse_range
from locproxy.rewrite import (
    IMAGE,
    IMAGES,
    LOCATIONS,
    RewritePolicy,
    patch_addresses_locations,
    rewrite_body,
    rewrite_image,
    translate_patch,
    well_formed,
)
from locproxy.strategies import Selector, is_active
from locproxy.urls import scrub_credentials
from tests.support.patches import apply_patch, tokens

EXAMPLES: Counter[str] = Counter()
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def examples_run() -> int:
    return sum(EXAMPLES.values())


# -- strategies -------------------------------------------------------------------

STORES = ["disk", "web", "ceph", "swift", "fast", "slow", ""]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=8)

urls = st.one_of(
    st.builds(lambda scheme, creds, host, path: f"{scheme}://{creds}{host}/{path}",
              st.sampled_from(["file", "FILE", "http", "https", "rbd", "swift", "swift+https", "cinder",
                               "vsphere", "s3", "s3+http", "gopher", "filesystem"]),
              st.sampled_from(["", "user:pass@", "u:p%40ss@", "@", "a:b:c@"]),
              st.sampled_from(["", "h", "127.0.0.1:8080", "[::1]:80", "localhost"]),
              st.text(max_size=10)),
    st.text(max_size=12),
)
statuses = st.one_of(st.none(), st.sampled_from(["active", "pending", "pending_delete", "deleted", "ACTIVE", ""]),
                     json_scalars)


@st.composite
def locations(draw: Callable, odd_urls: bool = False) -> dict:
    location: dict[str, Any] = {}
    if draw(st.integers(0, 9)):  # mostly with a url
        location["url"] = draw(st.one_of(urls, json_scalars) if odd_urls else urls)
    metadata: dict[str, Any] = draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2))
    if draw(st.booleans()):
        metadata["store"] = draw(st.one_of(st.sampled_from(STORES), json_scalars))
    if draw(st.booleans()):
        metadata["weight"] = draw(st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=False),
                                            st.text(max_size=4), st.none()))
    if draw(st.booleans()):
        metadata["node_weights"] = draw(st.one_of(
            st.dictionaries(st.sampled_from(["n1", "n2"]), st.one_of(st.integers(-9, 9), st.text(max_size=3))),
            json_scalars))
    if draw(st.integers(0, 2)) == 0:
        metadata["status"] = draw(statuses)
    if draw(st.integers(0, 2)) == 0:
        location["status"] = draw(statuses)
    if draw(st.integers(0, 5)):
        location["metadata"] = metadata
    else:
        location["metadata"] = draw(json_scalars)
    return location


@st.composite
def images(draw: Callable) -> dict:
    image: dict[str, Any] = draw(st.dictionaries(st.sampled_from(["id", "name", "size", "status", "x"]),
                                                json_values, max_size=3))
    shape = draw(st.integers(0, 9))
    if shape < 6:  # well formed: the common case, where every property applies
        image["locations"] = draw(st.lists(locations(), min_size=draw(st.sampled_from([0, 2, 3])), max_size=6))
    elif shape == 6:
        image["locations"] = draw(st.lists(locations(odd_urls=True), max_size=5))
    elif shape == 7:
        image["locations"] = draw(st.lists(st.one_of(locations(), json_scalars), max_size=4))
    elif shape == 8:
        image["locations"] = draw(json_scalars)
    if draw(st.booleans()):
        image["direct_url"] = draw(st.one_of(urls, st.none()))
    if draw(st.booleans()):
        image["stores"] = draw(st.one_of(st.sampled_from(["disk,web", "web", "", "ceph, disk ,x"]), json_scalars))
    return image


selectors = st.one_of(
    st.just(Selector("location_order")),
    st.builds(lambda pref: Selector("store_type", store_type_preference=pref),
              st.lists(st.sampled_from(["file", "http", "rbd", "swift", "cinder", "vmware", "s3"]), max_size=4)
              .map(", ".join)),
    st.builds(lambda weights: Selector("weight", store_weights=weights),
              st.dictionaries(st.sampled_from(STORES[:-1]), st.integers(-100, 100), max_size=3)),
    st.builds(lambda node, weights: Selector("node_weight", node_name=node, store_weights=weights),
              st.sampled_from(["n1", "n2"]),
              st.dictionaries(st.sampled_from(STORES[:-1]), st.integers(-100, 100), max_size=3)),
)
policies = st.builds(
    RewritePolicy,
    selector=selectors,
    prefer=st.lists(st.sampled_from(STORES), max_size=3).map(tuple),
    add_direct_url=st.booleans(),
    scrub_credentials=st.booleans(),
    hide=st.sampled_from([(), ("locations",), ("direct_url",), ("locations", "direct_url")]),
)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


# -- the rewrite -----------------------------------------------------------------------

@PROPERTY
@given(image=images(), policy=policies)
def rewrite_image_properties(image: dict, policy: RewritePolicy) -> None:
    # Pinned by test_security's test_hidden_direct_url_is_not_added_back:
    assume(not (policy.add_direct_url and "direct_url" in policy.hide and "direct_url" not in image))
    EXAMPLES["rewrite_image"] += 1
    before = copy.deepcopy(image)
    result = rewrite_image(image, policy)  # never raises
    assert image == before, "the input is never mutated"
    for name in policy.hide:
        assert name not in result
    locations = image.get("locations")
    if "locations" in result and well_formed(locations):
        out = result["locations"]
        expected = [_scrub(item) for item in locations] if policy.scrub_credentials else locations
        assert sorted(map(_canonical, out)) == sorted(map(_canonical, expected)), "a permutation"
        activity = [is_active(item) for item in out]
        assert activity == sorted(activity, reverse=True), "inactive locations never before active ones"
    if well_formed(locations) and "direct_url" not in policy.hide:
        ordered = policy.selector.order(locations, policy.prefer)
        best = next((item["url"] for item in ordered if is_active(item) and isinstance(item.get("url"), str)), None)
        if best is not None and policy.scrub_credentials:
            best = scrub_credentials(best)
        if "direct_url" in image or policy.add_direct_url:
            assert result.get("direct_url", "absent") == (best if best is not None else "absent")
        else:
            assert "direct_url" not in result
    elif "direct_url" not in policy.hide:
        assert ("direct_url" in result) == ("direct_url" in image)


def _scrub(location: dict) -> dict:
    url = location.get("url")
    return {**location, "url": scrub_credentials(url)} if isinstance(url, str) else location


@PROPERTY
@given(image=images(), policy=policies, kind=st.sampled_from([IMAGE, IMAGES, LOCATIONS]),
       wrap=st.integers(0, 2))
def rewrite_body_never_raises_and_emits_valid_json(image: dict, policy: RewritePolicy, kind: str,
                                                        wrap: int) -> None:
    EXAMPLES["rewrite_body"] += 1
    document: Any = {IMAGE: image, IMAGES: {"images": [image, image], "next": "/v2/images?marker=x"},
                     LOCATIONS: image.get("locations")}[kind]
    body = json.dumps(document).encode()
    if wrap == 1:
        body = body[: len(body) // 2]  # truncated JSON
    elif wrap == 2:
        body = b"\xff\xfe" + body  # not UTF-8
    result, _shown = rewrite_body(body, kind, policy)
    if wrap:
        assert result is None, "invalid input passes through untouched"
    elif result is not None:
        json.loads(result, parse_constant=_reject_constant)  # strict JSON: no NaN/Infinity


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON")


# -- Range ---------------------------------------------------------------------------

range_headers = st.one_of(
    st.text(max_size=30),
    st.builds(lambda unit, a, b, spaces: f"{unit}{spaces}={spaces}{a}{spaces}-{spaces}{b}",
              st.sampled_from(["bytes", "BYTES", "Bytes", "items", "byte"]),
              st.one_of(st.just(""), st.integers(0, 10**25).map(str)),
              st.one_of(st.just(""), st.integers(0, 10**25).map(str)),
              st.sampled_from(["", " ", "\t", "  "])),
    st.from_regex(r"\Abytes=\d{0,400}-\d{0,400}\Z"),
    st.from_regex(r"\Abytes=[\d\-, ]{0,20}\Z"),
)


def reference_range(header: str, size: int) -> tuple[int, int] | None | str:
    """RFC 9110 section 14.1.2 for one range, Glance's strictness: several
    ranges (any comma) are refused with 400, anything else is unsatisfiable."""
    if "," in header:
        return "several"
    match = re.fullmatch(r"\s*bytes\s*=\s*(?:(\d+)\s*-\s*(\d*)|-\s*(\d+))\s*", header, re.IGNORECASE | re.ASCII)
    if not match:
        return "unsatisfiable"
    first, last, suffix = match.groups()
    if suffix is not None:
        n = int(suffix)
        return "unsatisfiable" if n == 0 or size == 0 else (max(size - n, 0), size)
    start = int(first)
    end = int(last) + 1 if last else size
    if end <= start or start >= size:
        return "unsatisfiable"
    return start, min(end, size)


def known_range_bug(header: str) -> bool:
    """Pinned by test_range_of_more_than_4300_digits_is_unsatisfiable."""
    return bool(re.search(r"\d{4301,}", header))


@PROPERTY
@given(header=range_headers, size=st.one_of(st.integers(0, 10), st.integers(0, 10**15)))
def parse_range_matches_the_rfc(header: str, size: int) -> None:
    assume(not known_range_bug(header))
    try:
        got: Any = parse_range(header, size)
    except SeveralRanges:
        got = "several"
    except Unsatisfiable:
        got = "unsatisfiable"
    expected = reference_range(header, size)
    if expected != got and "several" not in (expected, got):
        # Non-ASCII digits (\d matches them in str patterns) are the only room for disagreement.
        assume(header.isascii())
    assert got == expected
    if isinstance(got, tuple):
        assert 0 <= got[0] < got[1] <= size
    EXAMPLES["parse_range"] += 1


# -- JSON-patch translation --------------------------------------------------------------

location_paths = st.one_of(
    st.integers(0, 6).map(lambda n: f"/locations/{n}"),
    st.integers(0, 6).map(lambda n: f"/locations/{n}/metadata"),
    st.just("/locations/-"), st.just("/locations"), st.just("/locations/01"), st.just("/locations/-1"),
    st.just("/locations/x"), st.just("/name"), st.text(max_size=12),
)
location_ops = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "remove", "replace", "test"]),
     "path": st.integers(0, 6).map(lambda n: f"/locations/{n}") | st.just("/locations/-")},
    optional={"value": json_values})
patch_ops = st.one_of(
    st.fixed_dictionaries({"op": st.one_of(st.sampled_from(["add", "remove", "replace", "test", "move", "copy"]),
                                           json_scalars),
                           "path": location_paths},
                          optional={"value": json_values, "from": location_paths}),
    json_values,
)


def known_patch_bug(operations: Any) -> bool:
    """Pinned by tests in test_security: a non-string path next to a
    location op (TypeError), or an index beyond int()'s 4300 digits."""
    if not isinstance(operations, list) or not patch_addresses_locations(operations):
        return False
    return any(isinstance(op, dict) and not isinstance(op.get("path", ""), str) for op in operations) or \
        bool(re.search(r"\d{4301,}", json.dumps(operations)))


@PROPERTY
@given(operations=st.builds(lambda first, rest, at: rest[:at] + [first] + rest[at:],
                            location_ops, st.lists(patch_ops, max_size=5), st.integers(0, 5)),
       permutation=st.permutations(range(4)))
def translate_patch_never_raises_and_keeps_what_it_does_not_understand(operations: Any,
                                                                            permutation: list[int]) -> None:
    upstream = [{"url": f"file:///{name}", "metadata": {"store": name}} for name in "abcd"]
    view = [upstream[i] for i in permutation]
    # The filter forwards the others untouched without calling translate_patch.
    assume(patch_addresses_locations(operations))
    assume(not known_patch_bug(operations))
    EXAMPLES["translate_patch"] += 1
    before = copy.deepcopy(operations)
    translated = translate_patch(operations, tokens(upstream), tokens(view))
    assert operations == before, "the input is never mutated"
    assert len(translated) == len(operations)
    for old, new in zip(operations, translated):
        if not (isinstance(old, dict) and isinstance(old.get("path"), str)
                and re.fullmatch(r"/locations/(0|[1-9]\d*)(/.*)?", old["path"])):
            assert new == old, "only /locations/N paths are rewritten"
        else:
            assert {k: v for k, v in new.items() if k != "path"} == {k: v for k, v in old.items() if k != "path"}


@PROPERTY
@given(permutation=st.permutations(range(4)), steps=st.lists(
    st.tuples(st.sampled_from(["add", "add-end", "remove", "replace", "replace-all"]), st.integers(0, 6)),
    max_size=6))
def translated_patch_does_what_the_client_meant(permutation: list[int], steps: list) -> None:
    """Whatever the view order: applied upstream, the translated patch leaves
    the same copies as the client's patch on the list it saw (with appends
    and whole-list replacements mixed in), or both refuse."""
    EXAMPLES["translate_patch_intent"] += 1
    upstream = [{"url": f"file:///{name}"} for name in "abcd"]
    view = [upstream[i] for i in permutation]
    operations = []
    for number, (name, index) in enumerate(steps):
        value = {"url": f"file:///new{number}"}
        if name == "add-end":
            operations.append({"op": "add", "path": "/locations/-", "value": value})
        elif name == "replace-all":
            operations.append({"op": "replace", "path": "/locations", "value": [value, {"url": f"file:///z{number}"}]})
        else:
            operations.append({"op": name, "path": f"/locations/{index}", "value": value})
    client = apply_patch(operations, view)
    upstream_result = apply_patch(translate_patch(operations, tokens(upstream), tokens(view)), upstream)
    if client is None:
        return  # an out-of-range op: the upstream refuses (it may refuse another op first)
    assert upstream_result is not None
    assert sorted(item["url"] for item in upstream_result) == sorted(item["url"] for item in client)


# -- configuration --------------------------------------------------------------------------

_TMP = tempfile.mkdtemp(prefix="locproxy-properties-")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)

FILTER_OPTIONS = [
    "add_direct_url", "scrub_credentials", "locations_visible_to_roles", "hidden_fields", "roles_header",
    "max_rewrite_size", "serve_downloads", "file_roots", "allowed_hosts", "chunk_size",
    "backend_connect_timeout", "backend_read_timeout", "backend_pool_maxsize", "verify_checksums",
    "metrics_file", "failure_threshold", "cooldown", "max_cooldown", "probe_interval", "probe_size",
    "healthcheck_path", "metrics_path",
    "location_strategy", "store_type_preference", "store_weights", "node_name",
    "measured_base_strategy", "measured_reference_size", "measured_prior_throughput",
]
PROXY_OPTIONS = ["upstream", "connect_timeout", "read_timeout", "pool_maxsize", "chunk_size"]

plausible = st.one_of(
    st.text(max_size=20),
    st.from_regex(r"\A\s*-?\d{1,25}(\.\d{0,3})?\s*([kKmMgG]i?[bB]?)?\s*\Z"),
    st.sampled_from(["true", "off", "0", "1", "nan", "inf", "-1", "1e309", "86400", "file, http", "tape",
                     "store_type", "weight", "node_weight", "measured", "location_order", "a:1, b:x", ":5",
                     "/healthcheck", "/v2/x", "127.0.0.1:80, [::1]:9", "[::1", "h:99999", "http://h:1",
                     "https://[::1]:8443/p", "http://u:p@h", "http://h?q", "ftp://h", "http://[::1",
                     "http://a\uff03b", "http://h:-1", _TMP, _TMP + ", /", "relative/dir"]),
    st.builds(lambda host, port: f"http://{host}:{port}", st.sampled_from(["h", "127.0.0.1", "[::1]"]),
              st.integers(0, 70000)),
    st.text(max_size=8).map(lambda text: _TMP + "/" + text),
)


def _is_sqlite(path: str) -> bool:
    with open(path, "rb") as stream:
        head = stream.read(16)
    return head in (b"", b"SQLite format 3\x00")


def _filter_conf(option: str, value: str) -> dict[str, str]:
    conf = {option: value}
    if option in ("store_type_preference",):
        conf["location_strategy"] = "store_type"
    if option.startswith("measured_"):
        conf["location_strategy"] = "measured"
    return conf


@PROPERTY
@given(option=st.sampled_from(FILTER_OPTIONS + [f"proxy:{name}" for name in PROXY_OPTIONS]), value=plausible)
def config_value_is_settings_or_a_config_error_naming_the_option(option: str, value: str) -> None:
    proxy = option.startswith("proxy:")
    name = option.split(":", 1)[1] if proxy else option
    if name == "metrics_file" and not value.startswith(_TMP):
        value = os.path.join(_TMP, "m", value)  # never create files outside the scratch directory
    EXAMPLES["config"] += 1
    try:
        if proxy:
            conf = {"upstream": "http://127.0.0.1:9", name: value}
            Proxy(load_proxy_settings({}, conf)).close()
        else:
            LocationFilter(lambda environ, start_response: [], load_filter_settings({}, _filter_conf(name, value)))
    except ConfigError as error:
        assert name in str(error) or _names_a_strategy_option(str(error)), f"{error} does not name {name}"


def _names_a_strategy_option(message: str) -> bool:
    # A bad strategy option names itself (e.g. store_type_preference) when
    # location_strategy selected that strategy.
    return bool(re.match(r"^\w+: ", message))


PROPERTIES = [
    rewrite_image_properties,
    rewrite_body_never_raises_and_emits_valid_json,
    parse_range_matches_the_rfc,
    translate_patch_never_raises_and_keeps_what_it_does_not_understand,
    translated_patch_does_what_the_client_meant,
    config_value_is_settings_or_a_config_error_naming_the_option,
]


def run_properties() -> Counter[str]:
    """For bench/reliability.py: run every property (outside pytest); the counts."""
    EXAMPLES.clear()
    for prop in PROPERTIES:
        prop()
    return Counter(EXAMPLES)
