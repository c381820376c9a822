"""What the filter's settings open: the stores and workers of one process.

``FilterSettings`` (``locproxy.config``) is plain data. ``Services`` holds what
those settings open, built once per settings change: the selector (with
what ``measured`` learnt), the tracker, the shown orders, the
fingerprints, the site cache, the backend readers and their pools, the prober,
the verify-ahead worker, the reader of hidden copies (``locproxy.hidden``)
and the promoter (``locproxy.promoter``).

One reuse rule covers them all: on a reload, a service is kept when what it
was opened from (its slice of the settings, and the services it uses) is
unchanged, so what was learnt in memory, the open files and the pooled
connections survive a strategy toggle. A background worker that is
replaced is stopped.

Opening never refuses: options that can never work were refused by their
parsers at load; a store that fails now (a corrupt or locked
``metrics_file``, a cache directory that cannot be used) degrades, logs and
counts, as it would while running (``locproxy.bookkeeping``), so a worker
started by a server in place of a dead one never fails to boot.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any, Callable

from locproxy import observability
from locproxy.cache import SiteCache
from locproxy.config import FilterSettings
from locproxy.download.ahead import ACTIVITY, VerifyAhead
from locproxy.download.backends import Backends
from locproxy.download.probing import Prober
from locproxy.fingerprints import Fingerprints
from locproxy.hidden import HiddenLocations, open_hidden
from locproxy.observability import Recorder
from locproxy.promoter import Promoter, open_promoter
from locproxy.shown import ShownOrders
from locproxy.tracker import Tracker

LOG = logging.getLogger(__name__)


class Services:
    """The services for ``settings``, reusing those of ``previous`` that are unchanged."""

    def __init__(self, settings: FilterSettings, previous: Services | None = None) -> None:
        self.settings = settings
        self._previous = previous
        self._keys: dict[str, Any] = {}
        health, metrics_file = settings.health, settings.health.metrics_file or None
        on_error = observability.bookkeeping_error
        self.tracker: Tracker = self._service("tracker", (metrics_file, health.rule),
                                              lambda: Tracker(metrics_file, health.rule, on_error=on_error))
        self.shown: ShownOrders = self._service(
            "shown", (metrics_file, health.shown_order_ttl),
            lambda: ShownOrders(metrics_file, health.shown_order_ttl, on_error=on_error))
        self.fingerprints: Fingerprints = self._service("fingerprints", metrics_file,
                                                        lambda: Fingerprints(metrics_file, on_error=on_error))
        self.cache: SiteCache | None = self._service("cache", settings.cache, lambda: _open_cache(settings))
        self.backends: Backends = self._service("backends", (settings.readers, settings.backends),
                                                lambda: Backends.from_settings(settings))
        self.hidden: HiddenLocations | None = self._service("hidden", settings.identity,
                                                           lambda: open_hidden(settings.identity, None))
        self.recorder = Recorder(self.tracker, settings.promotion.local_stores)
        self.promoter: Promoter | None = self._service(
            "promoter", (settings.promotion, settings.identity, metrics_file),
            lambda: open_promoter(settings.promotion, settings.identity, metrics_file))
        self.selector = settings.selection.selector(self.tracker)
        self.prober: Prober | None = self._service(
            "prober", (health.probe_interval, health.probe_size, self.backends, self.tracker),
            lambda: Prober(self.backends, self.recorder, health.probe_interval, health.probe_size)
            if health.probe_interval else None)
        self.ahead: VerifyAhead | None = self._service(
            "ahead", (settings.backends.verify_ahead, self.backends, self.fingerprints, self.tracker),
            lambda: VerifyAhead(self.backends, self.fingerprints, self.recorder, ACTIVITY)
            if settings.backends.verify_ahead else None)
        self._previous = None  # only needed while building

    def _service(self, name: str, key: Any, make: Callable[[], Any]) -> Any:
        """The previous services' ``name`` if it was opened from ``key``, else a new one."""
        self._keys[name] = key
        previous = self._previous
        if previous is not None and previous._keys.get(name) == key:
            return getattr(previous, name)
        if previous is not None:
            stop = getattr(getattr(previous, name), "stop", None)
            if stop is not None:
                stop()  # a background worker of the replaced settings
        return make()

    def health(self) -> dict[str, Any]:
        """``/healthcheck``'s body. Cheap and local: no upstream call. Counts
        what the health rule demotes (``locproxy stats`` names them), the
        site cache's use, and says when a store fails (downloads go on:
        still 200). It may be reachable by anyone: no names, paths or error texts."""
        now = time.time()
        demoted = [key for key, stats in self.tracker.stats().items() if stats.demoted(now)]
        copies = sum(1 for key in demoted if "#" in key)
        body: dict[str, Any] = {"status": "degraded" if self.degraded else "ok",
                                "strategy": self.settings.selection.strategy,
                                "demoted_backends": len(demoted) - copies, "demoted_copies": copies}
        cache = self.cache
        if cache is not None:
            cache.probe()  # before ``degraded`` is read: a removed or read-only directory says so now
            used, entries = cache.usage()
            body["cache"] = {"bytes": used, "max_bytes": cache.max_size, "entries": entries}
            if cache.degraded:
                body["status"] = "degraded"
                body["cache"]["state"] = "aside: downloads go on without it until it works again"
        if self.tracker.degraded or self.shown.degraded or self.fingerprints.degraded:
            body["metrics_file"] = "failing: what is learnt is kept in memory until it works again"
        if self.hidden is not None and self.hidden.failing:
            body["service_identity"] = "failing: hidden copies are not read; downloads go on from direct_url"
        return body

    @property
    def degraded(self) -> bool:
        """Whether a store is failing now (``/healthcheck`` says so)."""
        cache = self.cache
        promoter = self.promoter
        return bool((self.hidden is not None and self.hidden.failing) or self.tracker.degraded
                    or self.shown.degraded or self.fingerprints.degraded or (cache is not None and cache.degraded)
                    or (promoter is not None and promoter.ledger.degraded))


def _open_cache(settings: FilterSettings) -> SiteCache | None:
    """The site cache, or None when it is off (or cannot be opened now: then
    downloads go on without it)."""
    cache = settings.cache
    if not cache.directory:
        return None
    try:
        return SiteCache(cache.directory, cache.max_size, verify_interval=cache.verify_interval,
                         on_event=observability.cache_event)
    except (OSError, sqlite3.Error) as error:
        LOG.warning("cache_dir %s cannot be used (%s); downloads go on without the site cache", cache.directory,
                    error)
        return None
