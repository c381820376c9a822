"""Prometheus metrics, the health check, and the download event recorder.

Metric labels are bounded: backends are named by ``backend_label`` (scheme and
allowed host, or ``file``: never a path, never credentials) and failure
reasons by a small fixed set of categories.

Under gunicorn with several workers, set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty directory before starting it, and use ``etc/gunicorn.conf.py`` (its
``child_exit`` hook tells prometheus_client when a worker is gone); every
worker then answers ``/metrics`` with the totals of all of them.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest, multiprocess
from webob import Response

if TYPE_CHECKING:  # pragma: no cover
    from locproxy.config import FilterSettings
    from locproxy.tracker import Tracker

REQUESTS = Counter("locproxy_requests", "Image API requests locproxy handled, by kind", ["kind"])
REWRITES = Counter("locproxy_rewrites", "Image JSON responses, by what locproxy did", ["result"])
DOWNLOADS = Counter(
    "locproxy_downloads", "Downloads by the backend that started them and outcome "
    "(served, fell_back, resumed, checksum_mismatch, failed, upstream)", ["backend", "outcome"],
)
DOWNLOAD_BYTES = Counter("locproxy_download_bytes", "Image bytes sent, by backend", ["backend"])
BACKEND_FAILURES = Counter("locproxy_backend_failures", "Backend failures, by reason", ["backend", "reason"])
STRATEGY = Gauge("locproxy_strategy", "1 for the strategy in use", ["strategy"], multiprocess_mode="livemax")
DEMOTED = Gauge("locproxy_backend_demoted", "1 while the health rule demotes a backend", ["backend"],
                multiprocess_mode="livemax")

# Reason text (locproxy.backends) -> a bounded label value.
_REASONS = (
    ("refused", "refused"),
    ("timeout", "timeout"),
    ("HTTP ", "http_status"),
    ("redirect", "http_status"),
    ("not found", "missing"),
    ("size", "size_mismatch"),
    ("mismatch", "size_mismatch"),
    ("ended early", "truncated"),
    ("reset", "reset"),
    ("closed", "closed"),
    ("pool", "pool_exhausted"),
    ("checksum", "checksum_mismatch"),
)


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


def reason_category(reason: str) -> str:
    for fragment, category in _REASONS:
        if fragment in reason:
            return category
    return "other"


class Recorder:
    """Feeds download events to the tracker (learning, health) and to metrics."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def opened(self, key: str, seconds: float) -> None:
        self.tracker.record_first_byte(key, seconds)

    def failed(self, key: str, label: str, reason: str, corrupt: bool = False) -> None:
        BACKEND_FAILURES.labels(label, "checksum_mismatch" if corrupt else reason_category(reason)).inc()
        if self.tracker.record_failure(key, corrupt=corrupt).demoted(time.time()):
            DEMOTED.labels(label).set(1)

    def transferred(self, key: str, label: str, nbytes: int, seconds: float) -> None:
        DOWNLOAD_BYTES.labels(label).inc(nbytes)
        self.tracker.record_transfer(key, nbytes, seconds)
        DEMOTED.labels(label).set(0)

    def outcome(self, label: str, outcome: str) -> None:
        DOWNLOADS.labels(label, outcome).inc()


def show_strategy(name: str, known: Iterable[str]) -> None:
    for other in known:
        STRATEGY.labels(other).set(1 if other == name else 0)


def metrics_response() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        body = generate_latest(REGISTRY)
    return Response(body=body, headerlist=[("Content-Type", CONTENT_TYPE_LATEST), ("Cache-Control", "no-store")])


def healthcheck_response(settings: FilterSettings) -> Response:
    """Cheap and local: no upstream call. Counts what the health rule demotes
    (``locproxy stats`` names them; this endpoint may be reachable by anyone)."""
    now = time.time()
    demoted = sum(1 for stats in settings.tracker.stats().values() if stats.demoted(now))
    body = {"status": "ok", "strategy": settings.selector.strategy, "demoted_backends": demoted}
    return Response(body=json.dumps(body).encode(), content_type="application/json", charset=None,
                    cache_control="no-store")
