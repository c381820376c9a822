"""The filter's configuration: every paste option parsed and validated once, at load.

``load_filter_settings`` turns the string options of a paste ini section
(plus a ``config_file``'s, on reloads) into a frozen ``FilterSettings``: plain
data in a few nested groups, compared whole with ``==``, so a reload can tell
what changed. What the settings open (the tracker, the site cache, backend
pools...) is not here: ``locproxy.services`` builds that once per change. Errors are ``ConfigError`` (a ``ValueError``) naming the option, the
bad value and the valid choices, so a bad deployment fails when the server
starts, never on a request. (The sidecar proxy app has its own few options,
in ``locproxy.proxy``.)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from locproxy import identity, state, strategies
from locproxy.download.backends import READERS, Backends, reader_options
from locproxy.options import (
    ConfigError,
    MiB,
    one_of,
    parse_bool,
    parse_count,
    parse_list,
    parse_seconds,
    parse_size,
    reject_unknown,
    some_of,
)
from locproxy.strategies import Selector
from locproxy.tracker import HealthRule

__all__ = ["ConfigError", "FilterSettings", "load_filter_settings"]


# -- settings -----------------------------------------------------------------

@dataclass(frozen=True)
class SelectionSettings:
    """Which copy is best, and how image JSON shows it."""

    strategy: str = "location_order"
    strategy_options: tuple[tuple[str, Any], ...] = ()  # validated at load
    add_direct_url: bool = False
    max_rewrite_size: int = 16 * MiB

    def selector(self, stats: Any = None) -> Selector:
        """The strategy, with what this node measured (``measured``) as ``stats``."""
        options = dict(self.strategy_options)
        if self.strategy == "measured":
            options["stats"] = stats
        return Selector(self.strategy, **options)


@dataclass(frozen=True)
class SecuritySettings:
    """What each client may see and download. (What may be read at all is
    each backend reader's own option: ``file_roots``, ``allowed_hosts``...)"""

    download_authorization: str = "show"
    scrub_credentials: bool = False
    locations_visible_to_roles: tuple[str, ...] = ()
    hidden_fields: tuple[str, ...] = ("locations", "direct_url")
    roles_header: str = "X-Roles"


@dataclass(frozen=True)
class BackendSettings:
    """How every backend is read (each reader has options of its own too)."""

    serve_downloads: bool = True
    chunk_size: int = 1 * MiB
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    first_byte_timeout: float = 10.0
    min_rate: int = 64 * 1024  # bytes per second; 0: no minimum
    rate_window: float = 10.0
    pool_maxsize: int = 32
    verify_checksums: str = "on"  # on, off or background (see locproxy.download.policy)
    verify_ahead: bool = False  # verify file copies while idle (locproxy.download.ahead)


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
class PromotionSettings:
    """Which Glance stores are this site's, and when an image is copied
    into one of them (``copy-image``; see locproxy.promotion)."""

    local_stores: tuple[str, ...] = ()
    mode: str = "off"  # off or auto
    after: int = 3  # downloads of an image with no local copy (cache hits too) ...
    window: float = 3600.0  # ... within this many seconds
    backoff: float = 300.0  # after a failed copy; doubled per failure
    max_backoff: float = 21600.0
    poll_interval: float = 5.0  # how often a copy in progress is looked at
    timeout: float = 3600.0  # a copy not done by then has failed

    @property
    def enabled(self) -> bool:
        return self.mode == "auto"

    @property
    def target(self) -> str:
        """The store copies go to: the first local one."""
        return self.local_stores[0] if self.local_stores else ""


@dataclass(frozen=True)
class ObservabilitySettings:
    healthcheck_path: str = ""
    metrics_path: str = ""


@dataclass(frozen=True)
class FilterSettings:
    """Settings of the ``locproxy`` filter: plain data, compared whole."""

    selection: SelectionSettings = field(default_factory=SelectionSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    backends: BackendSettings = field(default_factory=BackendSettings)
    readers: tuple[tuple[str, Any], ...] = field(default_factory=reader_options)  # (reader name, its options)
    health: HealthSettings = field(default_factory=HealthSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    identity: identity.IdentitySettings = field(default_factory=identity.IdentitySettings)  # locproxy.identity
    promotion: PromotionSettings = field(default_factory=PromotionSettings)


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


def parse_metrics_file(option: str, value: Any) -> str:
    """``auto``: ``metrics.sqlite`` in the default state directory (``locproxy.state``);
    else a file as ``parse_writable_file``."""
    if str(value).strip().lower() == state.AUTO:
        return parse_writable_file(option, state.default_metrics_file(option))
    return parse_writable_file(option, value)


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


def _verification(option: str, value: Any) -> str:
    """``background``, or a boolean: on / off."""
    if str(value).strip().lower() == "background":
        return "background"
    try:
        return "on" if parse_bool(option, value) else "off"
    except ConfigError:
        raise ConfigError(f"{option}: expected true, false or background, got {value!r}") from None


def _seconds_or_off(option: str, value: Any) -> float:
    return 0.0 if str(value).strip() == "0" else parse_seconds(option, value)


# Option -> (settings group, field, parser). Strategy options are handled
# separately: the Selector validates them.
_FILTER_OPTIONS: dict[str, tuple[str, str, Callable[[str, Any], Any]]] = {
    "add_direct_url": ("selection", "add_direct_url", parse_bool),
    "max_rewrite_size": ("selection", "max_rewrite_size", parse_size),
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
    "metrics_file": ("health", "metrics_file", parse_metrics_file),
    "failure_threshold": ("health", "failure_threshold", parse_count),
    "cooldown": ("health", "cooldown", parse_seconds),
    "max_cooldown": ("health", "max_cooldown", parse_seconds),
    "probe_interval": ("health", "probe_interval", _seconds_or_off),
    "probe_size": ("health", "probe_size", parse_size),
    "shown_order_ttl": ("health", "shown_order_ttl", parse_seconds),
    "cache_dir": ("cache", "directory", parse_directory),
    "cache_max_size": ("cache", "max_size", parse_size),
    "cache_verify_interval": ("cache", "verify_interval", parse_seconds),
    "local_stores": ("promotion", "local_stores", parse_list),
    "promote": ("promotion", "mode", one_of("off", "auto")),
    "promote_after": ("promotion", "after", parse_count),
    "promote_window": ("promotion", "window", parse_seconds),
    "promote_backoff": ("promotion", "backoff", parse_seconds),
    "promote_max_backoff": ("promotion", "max_backoff", parse_seconds),
    "promote_poll_interval": ("promotion", "poll_interval", parse_seconds),
    "promote_timeout": ("promotion", "timeout", parse_seconds),
    "healthcheck_path": ("observability", "healthcheck_path", parse_path),
    "metrics_path": ("observability", "metrics_path", parse_path),
}

_GROUPS = {"selection": SelectionSettings, "security": SecuritySettings, "backends": BackendSettings,
           "health": HealthSettings, "cache": CacheSettings, "observability": ObservabilitySettings,
           "promotion": PromotionSettings}

#: Each backend reader's own options: option -> (reader, field, parser).
_READER_OPTIONS = {option: (reader.name, name, parse) for reader in READERS
                   for option, (name, parse) in reader.parsers.items()}


# -- loading --------------------------------------------------------------------

def load_filter_settings(global_conf: Mapping[str, Any], local_conf: Mapping[str, Any]) -> FilterSettings:
    """Validate a paste filter section; unknown local options are errors (typos)."""
    strategy_keys = _strategy_option_names()
    reject_unknown(local_conf, set(_FILTER_OPTIONS) | set(_READER_OPTIONS) | strategy_keys
                   | identity.option_names(local_conf))
    conf = {**global_conf, **local_conf}
    values: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
    for option, (group, name, parse) in _FILTER_OPTIONS.items():
        if _given(conf, option):
            values[group][name] = parse(option, conf[option])
    readers: dict[str, dict[str, Any]] = {}
    for option, (reader, name, parse) in _READER_OPTIONS.items():
        if _given(conf, option):
            readers.setdefault(reader, {})[name] = parse(option, conf[option])
    cache = CacheSettings(**values["cache"])
    if cache.directory and not cache.max_size:
        raise ConfigError("cache_max_size: required with cache_dir (the cache never holds more), e.g. 50G")
    service = identity.load_settings(conf)
    promotion = _promotion(PromotionSettings(**values["promotion"]), service)
    return FilterSettings(
        selection=SelectionSettings(**load_strategy(conf), **values["selection"]),
        security=SecuritySettings(**values["security"]),
        backends=BackendSettings(**values["backends"]),
        readers=reader_options(readers),
        health=HealthSettings(**values["health"]),
        cache=cache,
        observability=ObservabilitySettings(**values["observability"]),
        identity=service,
        promotion=promotion,
    )


def _promotion(settings: PromotionSettings, service: identity.IdentitySettings) -> PromotionSettings:
    """``promote = auto`` needs somewhere to copy to and an identity to ask with."""
    if not settings.enabled:
        return settings
    if not settings.local_stores:
        raise ConfigError("promote: auto needs local_stores (the Glance stores of this site, e.g. ceph-site1)")
    if not service.auth_type:
        raise ConfigError("promote: auto needs a service identity: set service_auth_type (e.g. password) and "
                          "its service_* options (copy-image is asked with it)")
    if settings.max_backoff < settings.backoff:
        raise ConfigError(f"promote_max_backoff: {settings.max_backoff:g} s is less than promote_backoff "
                          f"({settings.backoff:g} s)")
    return settings


def _given(conf: Mapping[str, Any], option: str) -> bool:
    return option in conf and str(conf[option]).strip() != ""


def _strategy_option_names() -> set[str]:
    names = {"location_strategy"}
    for name in strategies.strategy_names():
        names |= strategies.strategy_options(name)
    return names


def load_strategy(conf: Mapping[str, Any]) -> dict[str, Any]:
    """``strategy`` and ``strategy_options`` of ``SelectionSettings``, named by
    ``location_strategy`` with its options.

    Options of the other strategies are validated too, so that a bad value
    fails now rather than when an operator switches strategy later.
    """
    strategy = str(conf.get("location_strategy") or "location_order").strip()
    try:
        for name in strategies.strategy_names():
            declared = strategies.strategy_options(name)
            if name != strategy and declared & conf.keys():
                strategies.get_strategy(name)(**_options_for(name, conf))
        options = tuple(sorted(_options_for(strategy, conf).items()))
        SelectionSettings(strategy, options).selector()  # validates them
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return {"strategy": strategy, "strategy_options": options}


def _options_for(strategy: str, conf: Mapping[str, Any]) -> dict[str, Any]:
    """The options a strategy declares; all strategy options if it declares none."""
    declared = strategies.strategy_options(strategy) or _strategy_option_names() - {"location_strategy"}
    return {name: conf[name] for name in declared if name in conf}


def configured_backends(**options: Any) -> Backends:
    """The readers for filter options by their ini names (``file_roots=...``,
    ``backend_read_timeout=...``), validated as at load: for a client or a
    test that reads locations without the filter."""
    return Backends.from_settings(load_filter_settings({}, options))
