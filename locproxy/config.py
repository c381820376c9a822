"""Configuration: every paste option parsed and validated once, at load.

``load_filter_settings`` and ``load_proxy_settings`` turn the string options
of a paste ini section into frozen settings objects. Errors are ``ConfigError``
(a ``ValueError``) naming the option, the bad value and the valid choices, so a
bad deployment fails when the server starts, never on a request.
"""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

from locproxy import strategies
from locproxy.options import (
    ConfigError,
    MiB,
    parse_bool,
    parse_count,
    parse_list,
    parse_seconds,
    parse_size,
)
from locproxy import observability
from locproxy.shown import ShownOrders
from locproxy.strategies import Selector
from locproxy.tracker import HealthRule, Tracker

T = TypeVar("T")

__all__ = ["ConfigError", "FilterSettings", "ProxySettings", "load_filter_settings", "load_proxy_settings"]


# -- deployment parsers: (option, raw value) -> parsed value -------------------

def parse_http_url(option: str, value: Any) -> str:
    url = str(value).strip().rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError if not a number in 0-65535
    except ValueError:
        raise ConfigError(f"{option}: {value!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(f"{option}: expected an http:// or https:// URL with a host, got {value!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{option}: must not carry credentials, a query or a fragment")
    return url


def parse_file_roots(option: str, value: Any) -> tuple[str, ...]:
    roots = []
    for item in parse_list(option, value):
        if not os.path.isabs(item):
            raise ConfigError(f"{option}: {item!r} is not an absolute path")
        if not os.path.isdir(item):
            raise ConfigError(f"{option}: {item!r} is not a directory")
        # Resolved once here; backends compare resolved paths against these.
        roots.append(os.path.realpath(item))
    return tuple(roots)


_HOST = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)(?::\d{1,5})?$")


def parse_hosts(option: str, value: Any) -> frozenset[str]:
    """``host`` (any port) or ``host:port`` items; IPv6 literals in brackets."""
    hosts = set()
    for item in parse_list(option, value):
        if not _HOST.match(item):
            raise ConfigError(
                f"{option}: {item!r} is not host, host:port or [ipv6]:port (no scheme, no path)"
            )
        hosts.add(item.lower())
    return frozenset(hosts)


def _one_of(option: str, value: Any, valid: tuple[str, ...]) -> str:
    text = str(value).strip()
    if text not in valid:
        raise ConfigError(f"{option}: unknown value {text!r}; valid choices: {', '.join(valid)}")
    return text


def _choices(option: str, valid: tuple[str, ...]) -> Callable[[str, Any], tuple[str, ...]]:
    def parse(option: str, value: Any) -> tuple[str, ...]:
        items = parse_list(option, value)
        bad = [item for item in items if item not in valid]
        if bad:
            raise ConfigError(f"{option}: unknown value {bad[0]!r}; valid choices: {', '.join(valid)}")
        return items

    return parse


# -- settings -----------------------------------------------------------------

@dataclass(frozen=True)
class FilterSettings:
    """Settings of the ``locproxy`` filter: selection, rewriting and downloads."""

    selector: Selector = field(default_factory=Selector)
    # Rewriting.
    add_direct_url: bool = False
    scrub_credentials: bool = False
    locations_visible_to_roles: tuple[str, ...] = ()
    hidden_fields: tuple[str, ...] = ("locations", "direct_url")
    roles_header: str = "X-Roles"
    max_rewrite_size: int = 16 * MiB
    # Downloads.
    serve_downloads: bool = True
    file_roots: tuple[str, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    chunk_size: int = 1 * MiB
    backend_connect_timeout: float = 5.0
    backend_read_timeout: float = 30.0
    backend_pool_maxsize: int = 32
    backend_ca_file: str = ""
    backend_first_byte_timeout: float = 10.0
    backend_min_rate: int = 64 * 1024  # bytes per second; 0: no minimum
    backend_rate_window: float = 10.0
    verify_checksums: bool = True
    download_authorization: str = "show"
    # Learning and health (see locproxy.tracker).
    metrics_file: str = ""
    failure_threshold: int = 3
    cooldown: float = 30.0
    max_cooldown: float = 600.0
    probe_interval: float = 0.0  # 0: no active probing
    probe_size: int = 64 * 1024
    tracker: Tracker = field(default_factory=Tracker, compare=False, repr=False)
    # JSON-patch translation (see locproxy.shown).
    shown_order_ttl: float = 3600.0
    shown: ShownOrders = field(default_factory=ShownOrders, compare=False, repr=False)
    # Observability.
    healthcheck_path: str = ""
    metrics_path: str = ""

    @property
    def hides_locations(self) -> bool:
        return bool(self.locations_visible_to_roles)


_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")


def parse_readable_file(option: str, value: Any) -> str:
    path = str(value).strip()
    if not os.path.isabs(path) or not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(f"{option}: {value!r} is not a readable file (absolute path)")
    return path


def parse_writable_file(option: str, value: Any) -> str:
    """A file locproxy may create or update: an sqlite file if it exists."""
    path = str(value).strip()
    if not os.path.isabs(path):
        raise ConfigError(f"{option}: {value!r} is not an absolute path")
    directory = os.path.dirname(path)
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise ConfigError(f"{option}: the directory of {value!r} does not exist or is not writable")
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise ConfigError(f"{option}: {value!r} is not a file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"{option}: {value!r} is not writable")
        with open(path, "rb") as stream:
            header = stream.read(16)
        if header and header != b"SQLite format 3\x00":
            raise ConfigError(f"{option}: {value!r} exists and is not an sqlite file")
    return path


def parse_path(option: str, value: Any) -> str:
    path = str(value).strip()
    if not re.match(r"^/[A-Za-z0-9._~/-]*$", path) or "/v2/" in path + "/":
        raise ConfigError(f"{option}: {value!r} is not a URL path such as /healthcheck (outside /v2)")
    return path.rstrip("/") or "/"


def parse_header_name(option: str, value: Any) -> str:
    name = str(value).strip()
    if not _HEADER_NAME.match(name):
        raise ConfigError(f"{option}: {value!r} is not an HTTP header name")
    return name


# Option name (= FilterSettings field) -> parser. Strategy options are handled
# separately: the Selector validates them.
_FILTER_OPTIONS: dict[str, Callable[[str, Any], Any]] = {
    "add_direct_url": parse_bool,
    "scrub_credentials": parse_bool,
    "locations_visible_to_roles": parse_list,
    "hidden_fields": _choices("hidden_fields", ("locations", "direct_url")),
    "roles_header": parse_header_name,
    "max_rewrite_size": parse_size,
    "serve_downloads": parse_bool,
    "file_roots": parse_file_roots,
    "allowed_hosts": parse_hosts,
    "chunk_size": parse_size,
    "backend_connect_timeout": parse_seconds,
    "backend_read_timeout": parse_seconds,
    "backend_pool_maxsize": parse_count,
    "backend_ca_file": parse_readable_file,
    "backend_first_byte_timeout": parse_seconds,
    "backend_min_rate": lambda option, value: parse_size(option, value, minimum=0),
    "backend_rate_window": parse_seconds,
    "verify_checksums": parse_bool,
    "download_authorization": lambda option, value: _one_of(option, value, ("show", "file")),
    "metrics_file": parse_writable_file,
    "failure_threshold": parse_count,
    "cooldown": parse_seconds,
    "max_cooldown": parse_seconds,
    "probe_interval": lambda option, value: 0.0 if str(value).strip() == "0" else parse_seconds(option, value),
    "probe_size": parse_size,
    "shown_order_ttl": parse_seconds,
    "healthcheck_path": parse_path,
    "metrics_path": parse_path,
}

_TRACKER_OPTIONS = ("metrics_file", "failure_threshold", "cooldown", "max_cooldown")
_SHOWN_OPTIONS = ("metrics_file", "shown_order_ttl")

# Keys paste puts in every section's configuration.
_PASTE_KEYS = {"here", "__file__", "__name__"}


def _strategy_option_names() -> set[str]:
    names = {"location_strategy"}
    for name in strategies.strategy_names():
        names |= strategies.strategy_options(name)
    return names


def load_filter_settings(
    global_conf: Mapping[str, Any], local_conf: Mapping[str, Any], previous: FilterSettings | None = None
) -> FilterSettings:
    """Validate a paste filter section; unknown local options are errors (typos).

    ``previous`` (on a reload): its tracker is kept while the tracker's
    options are unchanged, so what was learnt in memory survives.
    """
    strategy_keys = _strategy_option_names()
    _reject_unknown(local_conf, set(_FILTER_OPTIONS) | strategy_keys)
    conf = {**global_conf, **local_conf}
    values: dict[str, Any] = {}
    for option, parse in _FILTER_OPTIONS.items():
        if option in conf and str(conf[option]).strip() != "":
            values[option] = parse(option, conf[option])
    settings = FilterSettings(**values)
    if previous is not None and _options(previous, _TRACKER_OPTIONS) == _options(settings, _TRACKER_OPTIONS):
        tracker = previous.tracker
    else:
        rule = HealthRule(failure_threshold=settings.failure_threshold, cooldown=settings.cooldown,
                          max_cooldown=max(settings.max_cooldown, settings.cooldown))
        tracker = _open_metrics_file(lambda path: Tracker(path, rule, on_error=observability.bookkeeping_error),
                                     settings.metrics_file)
    if previous is not None and _options(previous, _SHOWN_OPTIONS) == _options(settings, _SHOWN_OPTIONS):
        shown = previous.shown
    else:
        shown = _open_metrics_file(
            lambda path: ShownOrders(path, settings.shown_order_ttl, on_error=observability.bookkeeping_error),
            settings.metrics_file)
    return replace(settings, tracker=tracker, shown=shown, selector=load_selector(conf, tracker))


def _open_metrics_file(open_file: Callable[[str | None], T], path: str) -> T:
    try:
        return open_file(path or None)
    except (sqlite3.Error, OSError) as error:
        raise ConfigError(f"metrics_file: {path!r} cannot be used: {error}") from None


def _options(settings: FilterSettings, names: tuple[str, ...]) -> tuple:
    return tuple(getattr(settings, name) for name in names)


def load_selector(conf: Mapping[str, Any], tracker: Tracker | None = None) -> Selector:
    """The strategy named by ``location_strategy`` with its options.

    Options of the other strategies are validated too, so that a bad value
    fails now rather than when an operator switches strategy later.
    """
    strategy = str(conf.get("location_strategy") or "location_order").strip()
    try:
        for name in strategies.strategy_names():
            declared = strategies.strategy_options(name)
            if name != strategy and declared & conf.keys():
                strategies.get_strategy(name)(**_options_for(name, conf))
        options = _options_for(strategy, conf)
        if strategy == "measured":
            options["stats"] = tracker  # what this node learnt, not an ini value
        return Selector(strategy, **options)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _options_for(strategy: str, conf: Mapping[str, Any]) -> dict[str, Any]:
    """The options a strategy declares; all strategy options if it declares none."""
    declared = strategies.strategy_options(strategy) or _strategy_option_names() - {"location_strategy"}
    return {name: conf[name] for name in declared if name in conf}


def _reject_unknown(local_conf: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(local_conf) - known - _PASTE_KEYS)
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: unknown option; valid options: {', '.join(sorted(known))}"
        )


@dataclass(frozen=True)
class ProxySettings:
    """Settings of the ``proxy`` app (the sidecar's upstream connection)."""

    upstream: str
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    pool_maxsize: int = 32
    chunk_size: int = 1 * MiB


_PROXY_OPTIONS: dict[str, Callable[[str, Any], Any]] = {
    "upstream": parse_http_url,
    "connect_timeout": parse_seconds,
    "read_timeout": parse_seconds,
    "pool_maxsize": parse_count,
    "chunk_size": parse_size,
}


def load_proxy_settings(global_conf: Mapping[str, Any], local_conf: Mapping[str, Any]) -> ProxySettings:
    _reject_unknown(local_conf, set(_PROXY_OPTIONS))
    conf = {**global_conf, **local_conf}
    if not str(conf.get("upstream") or "").strip():
        raise ConfigError("upstream: required, e.g. upstream = http://127.0.0.1:9292")
    values = {
        option: parse(option, conf[option])
        for option, parse in _PROXY_OPTIONS.items()
        if option in conf and str(conf[option]).strip() != ""
    }
    return ProxySettings(**values)
