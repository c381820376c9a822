"""Location selection strategies: which copy of an image is best for this node.

A pure library shared by the server (response rewriting, downloads) and by
clients that read ``locations`` themselves. Standard library only: importing
it must never pull in webob, urllib3 or a server.

A *strategy* is a factory ``factory(**options) -> key`` where ``key(location)``
returns a sort key, lower meaning better. Factories validate their options once
and raise ``ValueError`` naming the option, the bad value and the valid
choices; keys never raise on odd location data (it comes from the network).
Ordering is a stable sort, so ties keep the upstream's relative order, and
locations whose status is not ``active`` always sort after the active ones.

Third-party strategies register a factory under the entry-point group
``locproxy.strategies``; a factory may list the options it reads in an
``options`` attribute so that configuration files can be checked at load.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import socket
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlsplit

from locproxy.options import ConfigError, number, parse_list, parse_size, parse_weights
from locproxy.urls import backend_label, rbd_label, scrub_credentials

Location = Mapping[str, Any]
SortKey = Callable[[Location], Any]
StrategyFactory = Callable[..., SortKey]

ENTRY_POINT_GROUP = "locproxy.strategies"

# Glance's store -> URL scheme map (glance/common/location_strategy/store_type.py),
# plus s3 and swift+config (what Glance's swift store writes with a
# swift_store_config_file), which Glance's map lacked.
STORE_SCHEMES: dict[str, tuple[str, ...]] = {
    "file": ("file", "filesystem"),
    "http": ("http", "https"),
    "rbd": ("rbd",),
    "swift": ("swift", "swift+http", "swift+https", "swift+config"),
    "cinder": ("cinder",),
    "vmware": ("vsphere",),
    "s3": ("s3", "s3+http", "s3+https"),
}


# -- location accessors -----------------------------------------------------

def _metadata(location: Location) -> Mapping[str, Any]:
    metadata = location.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _metric_holders(location: Location) -> tuple[tuple[Mapping[str, Any], str, str], ...]:
    """Where a location's static metrics may be, first found wins, with the
    names used there: ``metadata`` (``weight``, ``node_weights``), then the
    seed's ``"metrics": {"weight": ..., "node-weights": {...}}`` inside
    ``metadata``, then beside it."""
    metadata = _metadata(location)
    holders: list[tuple[Mapping[str, Any], str, str]] = [(metadata, "weight", "node_weights")]
    for holder in (metadata, location):
        metrics = holder.get("metrics")
        if isinstance(metrics, Mapping):
            holders.append((metrics, "weight", "node-weights"))
    return tuple(holders)


def static_weight(location: Location) -> float | None:
    """The location's own numeric weight, if it has one."""
    for holder, name, _ in _metric_holders(location):
        own = number(holder.get(name))
        if own is not None:
            return own
    return None


def node_weight_of(location: Location, node_name: str) -> float | None:
    """The location's numeric weight for ``node_name``, if it has one."""
    for holder, _, name in _metric_holders(location):
        node_weights = holder.get(name)
        if isinstance(node_weights, Mapping):
            own = number(node_weights.get(node_name))
            if own is not None:
                return own
    return None


def is_active(location: Location) -> bool:
    """True unless the location, or its metadata, carries a status other than active."""
    for holder in (location, _metadata(location)):
        status = holder.get("status")
        if status is not None and status != "active":
            return False
    return True


def store_of(location: Location) -> str | None:
    store = _metadata(location).get("store")
    return store if isinstance(store, str) and store else None


def stores_of(image: Mapping[str, Any]) -> tuple[str, ...]:
    """The image's stores: Glance's ``stores`` field and its locations' ``store``."""
    listed = image.get("stores")
    stores = [item.strip() for item in listed.split(",")] if isinstance(listed, str) else []
    locations = image.get("locations")
    for location in locations if isinstance(locations, list) else ():
        metadata = location.get("metadata") if isinstance(location, dict) else None
        store = metadata.get("store") if isinstance(metadata, dict) else None
        if isinstance(store, str):
            stores.append(store)
    return tuple(dict.fromkeys(store for store in stores if store))


def backend_key(location: Location) -> str:
    """The backend a location lives in, from its URL: ``scheme://host[:port]``,
    ``file://`` + directory for files, ``rbd://<fsid>/<pool>`` for rbd. What
    the measured strategy and the health rule learn about (store names in
    metadata are not used: image owners may set location metadata)."""
    url = location.get("url")
    if not isinstance(url, str):
        return "unknown"
    scheme = scheme_of(location)
    if scheme == "file":
        return "file://" + posixpath.dirname(urlsplit(url).path)
    if scheme == "rbd":
        return rbd_label(url, with_pool=True)
    return backend_label(url)


def copy_key(location: Location) -> str:
    """One copy (location) of an image, for the health rule: its backend key
    and a hash of its URL without credentials (bad bytes demote the copy
    before the backend)."""
    url = location.get("url")
    text = scrub_credentials(url) if isinstance(url, str) else ""
    return f"{backend_key(location)}#{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def scheme_of(location: Location) -> str:
    url = location.get("url")
    if not isinstance(url, str):
        return ""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


# -- built-in strategies ----------------------------------------------------

def location_order(**_options: Any) -> SortKey:
    """The upstream's own order."""
    return lambda location: 0


location_order.options = frozenset()  # type: ignore[attr-defined]


def store_type(store_type_preference: str | Iterable[str] | None = None, **_options: Any) -> SortKey:
    """Locations of the first preferred store type, then the second, ...; others last.

    Matches Glance's ``store_type`` strategy, without its quirks: locations
    without a url are kept (ranked last) and a repeated preference counts once.
    """
    names = parse_list("store_type_preference", store_type_preference)
    unknown = [name for name in names if name.lower() not in STORE_SCHEMES]
    if unknown:
        raise ValueError(
            f"store_type_preference: unknown store type {unknown[0]!r}; "
            f"valid choices: {', '.join(sorted(STORE_SCHEMES))}"
        )
    rank: dict[str, int] = {}
    for position, name in enumerate(names):
        for scheme in STORE_SCHEMES[name.lower()]:
            rank.setdefault(scheme, position)
    last = len(names)
    return lambda location: rank.get(scheme_of(location), last)


store_type.options = frozenset({"store_type_preference"})  # type: ignore[attr-defined]


def _weight_rule(store_weights: Mapping[str, float]) -> Callable[[Location], float]:
    def weight_of(location: Location) -> float:
        own = static_weight(location)
        if own is not None:
            return own
        return store_weights.get(store_of(location) or "", 0.0)

    return weight_of


def weight(store_weights: str | Mapping[str, Any] | None = None, **_options: Any) -> SortKey:
    """Higher weight first: the location's own weight (``metadata["weight"]``, or
    ``"metrics": {"weight": ...}`` inside or beside ``metadata``), else the
    store's configured weight, else 0."""
    weight_of = _weight_rule(parse_weights("store_weights", store_weights))
    return lambda location: -weight_of(location)


weight.options = frozenset({"store_weights"})  # type: ignore[attr-defined]


def node_weight(
    node_name: str | None = None,
    store_weights: str | Mapping[str, Any] | None = None,
    **_options: Any,
) -> SortKey:
    """Higher weight for ``node_name`` first: ``metadata["node_weights"]``, or
    ``"metrics": {"node-weights": ...}`` inside or beside ``metadata``; the
    ``weight`` rule otherwise."""
    if node_name is None:
        node_name = socket.gethostname()
    if not isinstance(node_name, str) or not node_name.strip():
        raise ValueError(f"node_name: must be a non-empty string, got {node_name!r}")
    node_name = node_name.strip()
    weight_of = _weight_rule(parse_weights("store_weights", store_weights))

    def key(location: Location) -> float:
        own = node_weight_of(location, node_name)
        return -own if own is not None else -weight_of(location)

    return key


node_weight.options = frozenset({"node_name", "store_weights"})  # type: ignore[attr-defined]


def measured(
    stats: Any = None,
    measured_base_strategy: str = "location_order",
    measured_reference_size: Any = "64M",
    measured_prior_throughput: Any = "1G",
    **options: Any,
) -> SortKey:
    """Fastest expected download first, from what this node measured.

    ``stats`` is a ``locproxy.tracker.Tracker`` (or anything with
    ``estimate(backend_key) -> (ttfb, bytes_per_second) | None``, or a plain
    mapping of the same). Expected time = ttfb + reference size / throughput.
    Backends never measured get the prior throughput (optimistic by default,
    so they are tried and learnt). Times are compared in steps of 10 % (a
    logarithmic scale), so near-equal backends tie, and ties follow
    ``measured_base_strategy`` (which gets the other options).
    """
    if measured_base_strategy == "measured":
        raise ConfigError("measured_base_strategy: must be another strategy than 'measured'")
    base = get_strategy(measured_base_strategy)(**options)
    reference = parse_size("measured_reference_size", measured_reference_size)
    prior = parse_size("measured_prior_throughput", measured_prior_throughput)
    if stats is None:
        stats = {}
    estimate = stats.estimate if hasattr(stats, "estimate") else stats.get
    bucket = math.log(1.1)

    def key(location: Location) -> tuple:
        learnt = estimate(backend_key(location)) or (None, None)
        ttfb, throughput = learnt
        seconds = (ttfb or 0.0) + reference / (throughput or prior)
        return (round(math.log(seconds) / bucket), base(location))

    return key


measured.options = frozenset({  # type: ignore[attr-defined]
    "measured_base_strategy", "measured_reference_size", "measured_prior_throughput",
    "store_type_preference", "store_weights", "node_name",
})


BUILTIN_STRATEGIES: dict[str, StrategyFactory] = {
    "location_order": location_order,
    "store_type": store_type,
    "weight": weight,
    "node_weight": node_weight,
    "measured": measured,
}

_registry: dict[str, StrategyFactory] = {}


def register_strategy(name: str, factory: StrategyFactory) -> None:
    """Add a strategy at run time (entry points are the packaged way)."""
    registered_strategies()[name] = factory


def registered_strategies() -> dict[str, StrategyFactory]:
    """The registry: built-ins plus the ``locproxy.strategies`` entry points."""
    if not _registry:
        _registry.update(BUILTIN_STRATEGIES)
        for entry_point in _entry_points():
            _registry.setdefault(entry_point.name, entry_point.load())
    return _registry


def strategy_names() -> list[str]:
    return sorted(registered_strategies())


def strategy_options(name: str) -> frozenset[str]:
    """The option names a strategy declares (empty if it declares none)."""
    return frozenset(getattr(get_strategy(name), "options", ()))


def _entry_points() -> Iterable[Any]:
    from importlib import metadata

    found = metadata.entry_points()
    if hasattr(found, "select"):  # Python 3.10+
        return found.select(group=ENTRY_POINT_GROUP)
    return found.get(ENTRY_POINT_GROUP, [])  # pragma: no cover - Python 3.9


def get_strategy(name: str) -> StrategyFactory:
    registry = registered_strategies()
    if name not in registry:
        raise ValueError(
            f"location_strategy: unknown strategy {name!r}; "
            f"valid choices: {', '.join(sorted(registry))}"
        )
    return registry[name]


# -- ordering ---------------------------------------------------------------

class Selector:
    """A strategy with its options validated once; call it to order locations.

    Build one at load time and reuse it: ordering a page of images then costs
    only the sorts.
    """

    def __init__(self, strategy: str = "location_order", **options: Any) -> None:
        if not isinstance(strategy, str):
            raise ValueError(f"location_strategy: expected a name, got {strategy!r}")
        self.strategy = strategy
        self.options = dict(options)
        self._key = get_strategy(strategy)(**options)

    def __repr__(self) -> str:
        return f"Selector({self.strategy!r}, **{self.options!r})"

    def order(self, locations: Sequence[Location], prefer: Sequence[str] = ()) -> list:
        """A new list, best first: active before inactive, ``prefer`` stores
        first in the given order, then the strategy's order, ties stable."""
        key = self._key
        if prefer:
            rank = {store: position for position, store in enumerate(prefer)}
            last = len(prefer)

            def full_key(location: Location) -> tuple:
                return (not is_active(location), rank.get(store_of(location), last), key(location))

        else:

            def full_key(location: Location) -> tuple:
                return (not is_active(location), key(location))

        return sorted(locations, key=full_key)

    __call__ = order


def order_locations(
    locations: Sequence[Location],
    strategy: str = "location_order",
    prefer: Sequence[str] = (),
    **options: Any,
) -> list:
    """Order image locations best first; the entry point for clients.

    >>> order_locations([{"url": "file:///a"}, {"url": "rbd://b"}],
    ...                 strategy="store_type", store_type_preference="rbd,file")
    [{'url': 'rbd://b'}, {'url': 'file:///a'}]

    ``locations`` is not modified. ``prefer`` lists store names (as in
    ``metadata["store"]``) to put first, in that order.
    """
    return Selector(strategy, **options).order(locations, parse_list("prefer", prefer))


def best_location(locations: Sequence[Location], selector: Selector | None = None) -> Location | None:
    """The first active location with a url, or None: the ``direct_url`` candidate."""
    ordered = selector.order(locations) if selector else locations
    for location in ordered:
        if is_active(location) and isinstance(location.get("url"), str):
            return location
    return None
