"""The filter's configuration: every paste option parsed and validated once, at load.

``load_filter_settings`` turns the string options of a paste ini section
(plus a ``config_file``'s, on reloads) into a frozen ``FilterSettings``: a few
nested groups that compare with ``==``, so the shell can tell what a reload
changed. Errors are ``ConfigError`` (a ``ValueError``) naming the option, the
bad value and the valid choices, so a bad deployment fails when the server
starts, never on a request. (The sidecar proxy app has its own few options,
in ``locproxy.proxy``.)
"""

from __future__ import annotations

import os
import re
import sqlite3
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from locproxy import identity, observability, strategies
from locproxy.cache import SiteCache
from locproxy.credentials import S3Credentials
from locproxy.guards import AllowedHosts, FileRoots, RbdClusters
from locproxy.hidden import HiddenLocations, open_hidden
from locproxy.options import (
    ConfigError,
    MiB,
    parse_bool,
    parse_count,
    parse_list,
    parse_readable_file,
    parse_seconds,
    parse_size,
    reject_unknown,
)
from locproxy.shown import ShownOrders
from locproxy.strategies import Selector
from locproxy.tracker import HealthRule, Tracker
from locproxy.verified import VerifiedCopies

__all__ = ["ConfigError", "FilterSettings", "load_filter_settings"]

T = TypeVar("T")


# -- settings -----------------------------------------------------------------

@dataclass(frozen=True)
class SelectionSettings:
    """Which copy is best, and how image JSON shows it."""

    selector: Selector = field(default_factory=Selector)
    add_direct_url: bool = False
    max_rewrite_size: int = 16 * MiB


@dataclass(frozen=True)
class SecuritySettings:
    """What may be read, and what each client may see."""

    file_roots: FileRoots = FileRoots()
    allowed_hosts: AllowedHosts = AllowedHosts()
    backend_ca_file: str = ""
    download_authorization: str = "show"
    scrub_credentials: bool = False
    locations_visible_to_roles: tuple[str, ...] = ()
    hidden_fields: tuple[str, ...] = ("locations", "direct_url")
    roles_header: str = "X-Roles"
    rbd_clusters: RbdClusters = RbdClusters()  # rbd:// only from these (locproxy.guards)
    s3_credentials: S3Credentials = S3Credentials()  # keys for s3:// URLs without any


@dataclass(frozen=True)
class BackendSettings:
    """How backends are read."""

    serve_downloads: bool = True
    chunk_size: int = 1 * MiB
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    first_byte_timeout: float = 10.0
    min_rate: int = 64 * 1024  # bytes per second; 0: no minimum
    rate_window: float = 10.0
    pool_maxsize: int = 32
    verify_checksums: str = "on"  # on, off or background (see locproxy.download.body)
    verify_ahead: bool = False  # verify file copies while idle (locproxy.download.ahead)
    # rbd:// and s3:// (locproxy.download.backends.rbd, .s3)
    rbd_default_cluster: str = ""  # fsid of the legacy rbd://<image> form
    rbd_default_pool: str = ""
    rbd_block_size: int = 4 * MiB
    rbd_readahead: int = 4
    rbd_op_timeout: float = 30.0
    s3_default_scheme: str = "https"  # transport of plain s3:// URLs
    s3_region: str = "us-east-1"


@dataclass(frozen=True)
class HealthSettings:
    """What this node learns and remembers (see locproxy.tracker, locproxy.shown)."""

    metrics_file: str = ""
    failure_threshold: int = 3
    cooldown: float = 30.0
    max_cooldown: float = 600.0
    probe_interval: float = 0.0  # 0: no active probing
    probe_size: int = 64 * 1024
    shown_order_ttl: float = 3600.0

    @property
    def rule(self) -> HealthRule:
        return HealthRule(failure_threshold=self.failure_threshold, cooldown=self.cooldown,
                          max_cooldown=max(self.max_cooldown, self.cooldown))


@dataclass(frozen=True)
class CacheSettings:
    """The site cache (see locproxy.cache); off without a directory."""

    directory: str = ""
    max_size: int = 0
    verify_interval: float = 86400.0


@dataclass(frozen=True)
class ObservabilitySettings:
    healthcheck_path: str = ""
    metrics_path: str = ""


@dataclass(frozen=True)
class FilterSettings:
    """Settings of the ``locproxy`` filter, and the stores they opened."""

    selection: SelectionSettings = field(default_factory=SelectionSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    backends: BackendSettings = field(default_factory=BackendSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    cache_settings: CacheSettings = field(default_factory=CacheSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    identity: identity.IdentitySettings = field(default_factory=identity.IdentitySettings)  # locproxy.identity
    tracker: Tracker = field(default_factory=Tracker, compare=False, repr=False)
    shown: ShownOrders = field(default_factory=ShownOrders, compare=False, repr=False)
    verified: VerifiedCopies = field(default_factory=VerifiedCopies, compare=False, repr=False)
    cache: SiteCache | None = field(default=None, compare=False, repr=False)
    hidden: HiddenLocations | None = field(default=None, compare=False, repr=False)  # locproxy.hidden


# -- option parsers of the filter ------------------------------------------------

_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")


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


def parse_directory(option: str, value: Any) -> str:
    """An existing directory locproxy may write in (absolute path)."""
    path = str(value).strip()
    if not os.path.isabs(path) or not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{option}: {value!r} is not a writable directory (absolute path)")
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


def one_of(*valid: str) -> Callable[[str, Any], str]:
    def parse(option: str, value: Any) -> str:
        text = str(value).strip()
        if text not in valid:
            raise ConfigError(f"{option}: unknown value {text!r}; valid choices: {', '.join(valid)}")
        return text

    return parse


def some_of(*valid: str) -> Callable[[str, Any], tuple[str, ...]]:
    def parse(option: str, value: Any) -> tuple[str, ...]:
        items = parse_list(option, value)
        bad = [item for item in items if item not in valid]
        if bad:
            raise ConfigError(f"{option}: unknown value {bad[0]!r}; valid choices: {', '.join(valid)}")
        return items

    return parse


def _verification(option: str, value: Any) -> str:
    """``background``, or a boolean: on / off."""
    if str(value).strip().lower() == "background":
        return "background"
    try:
        return "on" if parse_bool(option, value) else "off"
    except ConfigError:
        raise ConfigError(f"{option}: expected true, false or background, got {value!r}") from None


def _fsid(option: str, value: Any) -> str:
    try:
        return str(uuid.UUID(str(value).strip()))
    except ValueError:
        raise ConfigError(f"{option}: {value!r} is not a cluster fsid (a UUID)") from None


def _name(option: str, value: Any) -> str:
    text = str(value).strip()
    if not re.match(r"^[A-Za-z0-9_.-]{1,128}$", text):
        raise ConfigError(f"{option}: {value!r} is not a name (letters, digits, '_', '.', '-')")
    return text


def _check_rbd(security: dict[str, Any], backends: dict[str, Any]) -> None:
    """The legacy rbd://<image> form needs both defaults, naming a listed cluster."""
    cluster, pool = backends.get("rbd_default_cluster", ""), backends.get("rbd_default_pool", "")
    if bool(cluster) != bool(pool):
        raise ConfigError("rbd_default_cluster and rbd_default_pool: set both (for rbd://<image>) or neither")
    if cluster and cluster not in security.get("rbd_clusters", RbdClusters()).fsids:
        raise ConfigError(f"rbd_default_cluster: {cluster} is not in rbd_clusters")


def _seconds_or_off(option: str, value: Any) -> float:
    return 0.0 if str(value).strip() == "0" else parse_seconds(option, value)


# Option -> (settings group, field, parser). Strategy options are handled
# separately: the Selector validates them.
_FILTER_OPTIONS: dict[str, tuple[str, str, Callable[[str, Any], Any]]] = {
    "add_direct_url": ("selection", "add_direct_url", parse_bool),
    "max_rewrite_size": ("selection", "max_rewrite_size", parse_size),
    "file_roots": ("security", "file_roots", FileRoots.parse),
    "allowed_hosts": ("security", "allowed_hosts", AllowedHosts.parse),
    "backend_ca_file": ("security", "backend_ca_file", parse_readable_file),
    "download_authorization": ("security", "download_authorization", one_of("show", "file")),
    "scrub_credentials": ("security", "scrub_credentials", parse_bool),
    "locations_visible_to_roles": ("security", "locations_visible_to_roles", parse_list),
    "hidden_fields": ("security", "hidden_fields", some_of("locations", "direct_url")),
    "roles_header": ("security", "roles_header", parse_header_name),
    "serve_downloads": ("backends", "serve_downloads", parse_bool),
    "chunk_size": ("backends", "chunk_size", parse_size),
    "backend_connect_timeout": ("backends", "connect_timeout", parse_seconds),
    "backend_read_timeout": ("backends", "read_timeout", parse_seconds),
    "backend_first_byte_timeout": ("backends", "first_byte_timeout", parse_seconds),
    "backend_min_rate": ("backends", "min_rate", lambda option, value: parse_size(option, value, minimum=0)),
    "backend_rate_window": ("backends", "rate_window", parse_seconds),
    "backend_pool_maxsize": ("backends", "pool_maxsize", parse_count),
    "verify_checksums": ("backends", "verify_checksums", _verification),
    "verify_ahead": ("backends", "verify_ahead", parse_bool),
    "rbd_clusters": ("security", "rbd_clusters", RbdClusters.parse),
    "rbd_default_cluster": ("backends", "rbd_default_cluster", _fsid),
    "rbd_default_pool": ("backends", "rbd_default_pool", _name),
    "rbd_block_size": ("backends", "rbd_block_size", parse_size),
    "rbd_readahead": ("backends", "rbd_readahead", parse_count),
    "rbd_op_timeout": ("backends", "rbd_op_timeout", parse_seconds),
    "s3_credentials": ("security", "s3_credentials", S3Credentials.parse),
    "s3_default_scheme": ("backends", "s3_default_scheme", one_of("https", "http")),
    "s3_region": ("backends", "s3_region", _name),
    "metrics_file": ("health", "metrics_file", parse_writable_file),
    "failure_threshold": ("health", "failure_threshold", parse_count),
    "cooldown": ("health", "cooldown", parse_seconds),
    "max_cooldown": ("health", "max_cooldown", parse_seconds),
    "probe_interval": ("health", "probe_interval", _seconds_or_off),
    "probe_size": ("health", "probe_size", parse_size),
    "shown_order_ttl": ("health", "shown_order_ttl", parse_seconds),
    "cache_dir": ("cache_settings", "directory", parse_directory),
    "cache_max_size": ("cache_settings", "max_size", parse_size),
    "cache_verify_interval": ("cache_settings", "verify_interval", parse_seconds),
    "healthcheck_path": ("observability", "healthcheck_path", parse_path),
    "metrics_path": ("observability", "metrics_path", parse_path),
}

_GROUPS = {"selection": SelectionSettings, "security": SecuritySettings, "backends": BackendSettings,
           "health": HealthSettings, "cache_settings": CacheSettings, "observability": ObservabilitySettings}


# -- loading --------------------------------------------------------------------

def load_filter_settings(
    global_conf: Mapping[str, Any], local_conf: Mapping[str, Any], previous: FilterSettings | None = None
) -> FilterSettings:
    """Validate a paste filter section; unknown local options are errors (typos).

    ``previous`` (on a reload): its tracker and shown orders are kept while
    the options they were opened with are unchanged, so what was learnt in
    memory survives.
    """
    strategy_keys = _strategy_option_names()
    reject_unknown(local_conf, set(_FILTER_OPTIONS) | strategy_keys | identity.option_names(local_conf))
    conf = {**global_conf, **local_conf}
    values: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
    for option, (group, name, parse) in _FILTER_OPTIONS.items():
        if option in conf and str(conf[option]).strip() != "":
            values[group][name] = parse(option, conf[option])
    _check_rbd(values["security"], values["backends"])
    health = HealthSettings(**values["health"])
    tracker, shown, verified = _stores(health, previous)
    cache_settings = CacheSettings(**values["cache_settings"])
    identity_settings = identity.load_settings(conf)
    return FilterSettings(
        selection=SelectionSettings(selector=load_selector(conf, tracker), **values["selection"]),
        security=SecuritySettings(**values["security"]),
        backends=BackendSettings(**values["backends"]),
        health=health,
        cache_settings=cache_settings,
        observability=ObservabilitySettings(**values["observability"]),
        tracker=tracker,
        shown=shown,
        verified=verified,
        cache=_open_cache(cache_settings, previous),
        identity=identity_settings,
        hidden=open_hidden(identity_settings, previous.hidden if previous is not None else None),
    )


def _stores(health: HealthSettings, previous: FilterSettings | None) -> tuple[Tracker, ShownOrders, VerifiedCopies]:
    """The tracker, the shown orders and the verified copies for ``health``:
    the previous ones while their own options are unchanged, else opened
    anew (at load: a metrics_file that cannot be used fails here, naming the
    option)."""
    old = previous.health if previous is not None else None
    if old is not None and (old.metrics_file, old.rule) == (health.metrics_file, health.rule):
        tracker = previous.tracker  # type: ignore[union-attr]
    else:
        tracker = _open_metrics_file(
            lambda path: Tracker(path, health.rule, on_error=observability.bookkeeping_error), health.metrics_file)
    if old is not None and (old.metrics_file, old.shown_order_ttl) == (health.metrics_file, health.shown_order_ttl):
        shown = previous.shown  # type: ignore[union-attr]
    else:
        shown = _open_metrics_file(
            lambda path: ShownOrders(path, health.shown_order_ttl, on_error=observability.bookkeeping_error),
            health.metrics_file)
    if old is not None and old.metrics_file == health.metrics_file:
        verified = previous.verified  # type: ignore[union-attr]
    else:
        verified = _open_metrics_file(lambda path: VerifiedCopies(path, on_error=observability.bookkeeping_error),
                                      health.metrics_file)
    return tracker, shown, verified


def _open_cache(settings: CacheSettings, previous: FilterSettings | None) -> SiteCache | None:
    """The site cache, or None when it is off; the previous one while its options are unchanged."""
    if not settings.directory:
        return None
    if previous is not None and previous.cache_settings == settings and previous.cache is not None:
        return previous.cache
    if not settings.max_size:
        raise ConfigError("cache_max_size: required with cache_dir (the cache never holds more), e.g. 50G")
    try:
        return SiteCache(settings.directory, settings.max_size, verify_interval=settings.verify_interval,
                         on_event=observability.cache_event)
    except (sqlite3.Error, OSError) as error:
        raise ConfigError(f"cache_dir: {settings.directory!r} cannot be used: {error}") from None


def _open_metrics_file(open_file: Callable[[str | None], T], path: str) -> T:
    try:
        return open_file(path or None)
    except (sqlite3.Error, OSError) as error:
        raise ConfigError(f"metrics_file: {path!r} cannot be used: {error}") from None


def _strategy_option_names() -> set[str]:
    names = {"location_strategy"}
    for name in strategies.strategy_names():
        names |= strategies.strategy_options(name)
    return names


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
