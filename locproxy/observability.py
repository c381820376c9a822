"""Prometheus metrics, the health check, and the download event recorder.

Metric labels are bounded: backends are named by ``backend_label`` (scheme and
allowed host, or ``file``: never a path, never credentials) and failure
reasons by ``locproxy.transport.Failure``, a small fixed set of kinds.

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty directory before starting it, and use ``etc/gunicorn.conf.py`` (its
``child_exit`` hook tells prometheus_client when a worker is gone); every
worker then answers ``/metrics`` with the totals of all of them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest, multiprocess
from webob import Response

from locproxy.failures import Failure

if TYPE_CHECKING:  # pragma: no cover
    from locproxy.tracker import Tracker

LOG = logging.getLogger(__name__)

REQUESTS = Counter("locproxy_requests", "Image API requests locproxy handled, by kind", ["kind"])
REWRITES = Counter("locproxy_rewrites", "Image JSON responses, by what locproxy did", ["result"])
DOWNLOADS = Counter(
    "locproxy_downloads", "Downloads by the backend that started them and outcome "
    "(served, fell_back, resumed, checksum_mismatch, failed, upstream)", ["backend", "outcome"],
)
DOWNLOAD_BYTES = Counter("locproxy_download_bytes", "Image bytes sent, by backend", ["backend"])
BACKEND_FAILURES = Counter("locproxy_backend_failures", "Backend failures, by reason", ["backend", "reason"])
STRATEGY = Gauge("locproxy_strategy", "1 for the strategy in use", ["strategy"], multiprocess_mode="livemax")
BOOKKEEPING_ERRORS = Counter("locproxy_bookkeeping_errors", "Failures of the metrics_file (downloads went on "
                             "without it)", ["what"])
CACHE_REQUESTS = Counter("locproxy_cache_requests", "Downloads the site cache answered: hit, follow (a fill in "
                         "progress), miss", ["result"])
CACHE_EVENTS = Counter("locproxy_cache_events", "Site cache fills, aborted fills and evictions", ["event"])
CACHE_BYTES = Counter("locproxy_cache_bytes", "Bytes of the site cache's fills (committed or aborted), evictions "
                      "and orphans removed", ["event"])
DEMOTED = Gauge("locproxy_backend_demoted", "1 while the health rule demotes a backend", ["backend"],
                multiprocess_mode="livemax")
PROMOTIONS = Counter("locproxy_promotions", "copy-image promotions into a local store: started (our task), "
                     "in_progress (another's, Glance's 409), done, failed, gone (the image went away)", ["event"])
PROMOTION_DOWNLOADS = Counter("locproxy_promotion_downloads", "Whole downloads served from a non-local copy, "
                              "counted towards promote_after")
PROMOTIONS_RUNNING = Gauge("locproxy_promotions_running", "Copies this node asked for or watches now",
                           multiprocess_mode="livesum")
COPY_BYTES = Counter("locproxy_copy_bytes", "Image bytes locproxy read from a copy in a local store (local_stores) "
                     "or in another (remote)", ["copy"])

_children: dict[tuple[Any, str], Any] = {}


def _child(metric: Any, label: str) -> Any:
    """``metric.labels(label)``, looked up once: this runs on every request."""
    child = _children.get((metric, label))
    if child is None:
        child = _children[(metric, label)] = metric.labels(label)
    return child


def request(kind: str) -> None:
    _child(REQUESTS, kind).inc()


def rewrite(result: str) -> None:
    _child(REWRITES, result).inc()


def cache_request(result: str) -> None:
    _child(CACHE_REQUESTS, result).inc()


def cache_event(event: str, nbytes: int) -> None:
    _child(CACHE_EVENTS, event).inc()
    _child(CACHE_BYTES, event).inc(nbytes)


def promotion(event: str) -> None:
    _child(PROMOTIONS, event).inc()


def promotion_download() -> None:
    PROMOTION_DOWNLOADS.inc()


def bookkeeping_error(what: str) -> None:
    _child(BOOKKEEPING_ERRORS, what).inc()


def _never_raises(method: Callable[..., None]) -> Callable[..., None]:
    """Bookkeeping must not fail the download it describes: errors are
    logged (once a minute) and counted, and the download goes on."""

    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - whatever it is, the download goes on
            global _recorder_logged_at
            try:
                bookkeeping_error("recorder")
            except Exception:  # noqa: BLE001
                pass
            if time.monotonic() - _recorder_logged_at >= 60:
                _recorder_logged_at = time.monotonic()
                LOG.warning("download bookkeeping failed (%s: %s); the download goes on",
                            type(error).__name__, error, exc_info=True)

    return guarded


_recorder_logged_at = float("-inf")


class Recorder:
    """Feeds download events to the tracker (learning, health) and to metrics.
    No method ever raises."""

    def __init__(self, tracker: Tracker, local_stores: Iterable[str] = ()) -> None:
        self.tracker = tracker
        self.local_stores = frozenset(local_stores)

    @_never_raises
    def opened(self, key: str, seconds: float) -> None:
        self.tracker.record_first_byte(key, seconds)

    @_never_raises
    def failed(self, key: str, label: str, kind: Failure) -> None:
        BACKEND_FAILURES.labels(label, kind.value).inc()
        if kind is Failure.DENIED:
            return  # a client refused (its own token): says nothing of the backend's health
        if self.tracker.record_failure(key).demoted(time.time()):
            DEMOTED.labels(label).set(1)

    @_never_raises
    def corrupt(self, key: str, copy_key: str, label: str, image_id: str) -> None:
        """Bytes from this copy did not match the image's digest."""
        BACKEND_FAILURES.labels(label, Failure.CHECKSUM_MISMATCH.value).inc()
        backend, _copy = self.tracker.record_corrupt(key, copy_key, image_id)
        if backend.demoted(time.time()):
            DEMOTED.labels(label).set(1)

    @_never_raises
    def transferred(self, key: str, copy_key: str, label: str, nbytes: int, seconds: float) -> None:
        """A transfer completed (and verified, where it could be)."""
        DOWNLOAD_BYTES.labels(label).inc(nbytes)
        self.tracker.record_transfer(key, nbytes, seconds)
        self.tracker.record_success(copy_key)
        DEMOTED.labels(label).set(0)

    @_never_raises
    def read_from(self, store: str, nbytes: int) -> None:
        """Bytes read from a copy in Glance store ``store`` ('' unknown: remote)."""
        _child(COPY_BYTES, "local" if store in self.local_stores else "remote").inc(nbytes)

    @_never_raises
    def outcome(self, label: str, outcome: str) -> None:
        DOWNLOADS.labels(label, outcome).inc()


def show_strategy(name: str, known: Iterable[str]) -> None:
    for other in known:
        STRATEGY.labels(other).set(1 if other == name else 0)


def health_response(body: dict[str, Any], status: int = 200) -> Response:
    """``/healthcheck``'s answer: ``body`` as JSON, never cached."""
    return Response(status=status, body=json.dumps(body).encode(), content_type="application/json", charset=None,
                    cache_control="no-store")


def metrics_response() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        body = generate_latest(REGISTRY)
    return Response(body=body, headerlist=[("Content-Type", CONTENT_TYPE_LATEST), ("Cache-Control", "no-store")])
