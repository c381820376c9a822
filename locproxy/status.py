"""locproxy's ``/healthcheck`` and ``/metrics`` where its filter cannot answer
them: inside Glance's keystone pipeline.

There the ``locproxy`` filter sits below ``authtoken`` and ``context``, and a
request without a token never reaches it (``versionnegotiation`` even
answers every path outside ``/v2`` with Glance's version list first). Like
oslo.middleware's healthcheck, which Glance mounts beside its API so a load
balancer needs no token, this filter goes **first** in the pipeline::

    [composite:api]
    keystone = locproxy_status cors http_proxy_to_wsgi versionnegotiation osprofiler authtoken context locproxy rootapp

    [filter:locproxy_status]
    paste.filter_factory = locproxy.status:filter_factory
    healthcheck_path = /locproxy/healthcheck
    metrics_path = /locproxy/metrics

It answers ``GET`` of those two paths only, with what the ``locproxy``
filters of *this process* say (``/healthcheck``: their ``health()``;
``/metrics``: the process's, or with ``PROMETHEUS_MULTIPROC_DIR`` every
worker's, metrics), and hands every other request to the next app
unchanged. Trust: these two answers are given to anyone who reaches the
API, without a token, as Glance's own ``/healthcheck`` is; they hold no
names, paths, secrets or error texts (see ``Services.health``). Leave a
path empty to not serve it.
"""

from __future__ import annotations

from typing import Any, Callable

from webob import Response

from locproxy import observability
from locproxy.config import parse_path
from locproxy.options import ConfigError, reject_unknown

OPTIONS = ("healthcheck_path", "metrics_path")


class StatusFilter:
    """Serves the two paths; everything else goes to ``app``."""

    def __init__(self, app: Callable, healthcheck_path: str, metrics_path: str) -> None:
        self.app, self.healthcheck_path, self.metrics_path = app, healthcheck_path, metrics_path

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        if environ["REQUEST_METHOD"] == "GET":
            path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
            if path == self.healthcheck_path:
                return self._health()(environ, start_response)
            if path == self.metrics_path:
                return observability.metrics_response()(environ, start_response)
        return self.app(environ, start_response)

    @staticmethod
    def _health() -> Response:
        from locproxy.middleware import live_filters  # the middleware imports the whole download path

        bodies = [location_filter.services.health() for location_filter in live_filters()]
        if not bodies:
            status, body = 503, {"status": "failing", "reason": "no locproxy filter in this process"}
        elif len(bodies) == 1:
            status, body = 200, bodies[0]
        else:
            worst = "degraded" if any(item["status"] != "ok" for item in bodies) else "ok"
            status, body = 200, {"status": worst, "filters": bodies}
        return observability.health_response(body, status)


def filter_factory(global_conf: dict[str, Any], **local_conf: Any) -> Callable[[Callable], StatusFilter]:
    """``paste.filter_factory = locproxy.status:filter_factory`` (options checked at load)."""
    reject_unknown(local_conf, set(OPTIONS))
    paths = {option: parse_path(option, local_conf[option]) if str(local_conf.get(option) or "").strip() else ""
             for option in OPTIONS}
    if not any(paths.values()):
        raise ConfigError("healthcheck_path, metrics_path: set at least one, e.g. /locproxy/healthcheck")

    def make_filter(app: Callable) -> StatusFilter:
        return StatusFilter(app, **paths)

    return make_filter
