"""``locproxy.status``: locproxy's /healthcheck and /metrics answered in front
of a pipeline whose ``locproxy`` filter is out of reach (webtest, WSGI lint
on; the proof inside a real Glance behind a real Keystone is in
tests/integration/test_keystone_locproxy.py)."""

from __future__ import annotations

import gc

import pytest
from webob import Response
from webtest import TestApp

from locproxy.config import load_filter_settings
from locproxy.middleware import LocationFilter, live_filters
from locproxy.options import ConfigError
from locproxy.status import filter_factory

PATHS = {"healthcheck_path": "/locproxy/healthcheck", "metrics_path": "/locproxy/metrics"}


def refusing_app(environ, start_response):
    """What authtoken does to a request without a token."""
    return Response(status=401, body=b"no token")(environ, start_response)


def pipeline(**status_options: str) -> tuple[TestApp, LocationFilter]:
    location_filter = LocationFilter(refusing_app, load_filter_settings({}, {"location_strategy": "weight"}))
    status = filter_factory({}, **(status_options or PATHS))(location_filter)
    return TestApp(status, lint=True), location_filter


def healths(body: dict) -> list[dict]:
    return body["filters"] if "filters" in body else [body]


def test_answers_the_health_of_this_processes_filters_without_a_token() -> None:
    gc.collect()
    app, location_filter = pipeline()
    assert location_filter in live_filters()
    got = app.get("/locproxy/healthcheck")
    assert got.status_int == 200 and got.headers["Cache-Control"] == "no-store"
    assert location_filter.services.health() in healths(got.json)
    assert got.json["status"] in ("ok", "degraded")


def test_answers_the_metrics() -> None:
    app, _ = pipeline()
    got = app.get("/locproxy/metrics")
    assert got.status_int == 200 and "locproxy_requests_total" in got.text


@pytest.mark.parametrize("method, path", [("GET", "/v2/images"), ("GET", "/healthcheck"),
                                          ("POST", "/locproxy/healthcheck"), ("GET", "/locproxy/healthcheck/x")])
def test_everything_else_goes_on_down_the_pipeline(method: str, path: str) -> None:
    app, _ = pipeline()
    got = app.request(path, method=method, expect_errors=True)
    assert got.status_int == 401 and got.body == b"no token"


def test_an_empty_path_is_not_served() -> None:
    app, _ = pipeline(healthcheck_path="/locproxy/healthcheck", metrics_path="")
    assert app.get("/locproxy/metrics", expect_errors=True).status_int == 401
    assert app.get("/locproxy/healthcheck").status_int == 200


@pytest.mark.parametrize("options, named", [({"healthcheck_path": "/v2/x"}, "healthcheck_path"),
                                            ({"metrics_path": "no-slash"}, "metrics_path"),
                                            ({"metric_path": "/m"}, "metric_path"),
                                            ({}, "healthcheck_path, metrics_path")])
def test_bad_options_are_refused_at_load(options: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"^{named}"):
        filter_factory({}, **options)
