"""Dynamic selection through a real gunicorn sidecar: the measured strategy
converging to the fast backend, the health rule demoting a failing one and
bringing it back, /metrics counters moving, /healthcheck, locproxy stats."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from locproxy.demo import DemoImageAPI, demo_bytes, location, serve_wsgi
from locproxy.tracker import Tracker
from tests.support.client import fetch
from tests.support.faultserver import FaultServer
from tests.support.servers import run_gunicorn, sidecar_ini

DATA = demo_bytes("measured-tests", 1024 * 1024)
# Longer than the 1 s for which a worker may read the shared file's state
# from its cache: while demoted, every worker has seen the demotion.
COOLDOWN = 3.0


@contextmanager
def sidecar_for(base: Path, copies: dict[str, FaultServer], options: dict[str, Any],
                **gunicorn: Any) -> Iterator[tuple[Any, str]]:
    """The demo API with one image whose copies are ``copies`` (store name ->
    backend, in upstream order), behind a sidecar with these filter options;
    yields the sidecar and the image's id."""
    api = DemoImageAPI()
    image_id = api.add_image(data=DATA, locations=[location(server.url("/img"), store)
                                                   for store, server in copies.items()])
    with serve_wsgi(api) as upstream:
        ini = sidecar_ini(base / "sidecar.ini", upstream.url, options)
        with run_gunicorn(ini, **gunicorn) as sidecar:
            yield sidecar, image_id


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("measured")
    metrics_file = base / "metrics.sqlite"
    options = {
        "location_strategy": "measured",
        "measured_base_strategy": "location_order",
        "allowed_hosts": "127.0.0.1",
        "metrics_file": metrics_file,
        "failure_threshold": 2,
        "cooldown": COOLDOWN,
        "backend_read_timeout": 2,
        "healthcheck_path": "/healthcheck",
        "metrics_path": "/metrics",
    }
    # Two workers share what they learn through the metrics file, and
    # their Prometheus counters through the multiprocess directory.
    prometheus_dir = base / "prometheus"
    prometheus_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(prometheus_dir)}
    with FaultServer(DATA, mode="slow:4000000") as slow, FaultServer(DATA) as fast:
        # Upstream order puts the slow copy first: measuring must overturn it.
        with sidecar_for(base, {"slow": slow, "fast": fast}, options, workers=2, threads=4, env=env) as (
                sidecar, image_id):
            yield sidecar, slow, fast, image_id, metrics_file


def get(sidecar, path: str) -> tuple[int, bytes]:
    result = fetch(sidecar.port, path, timeout=30)
    return result.status, result.body


def download_counts(sidecar, slow, fast, image_id: str, times: int) -> list[str]:
    """Which backend served each of ``times`` downloads."""
    served = []
    for _ in range(times):
        before = slow.request_count, fast.request_count
        status, body = get(sidecar, f"/v2/images/{image_id}/file")
        assert (status, body == DATA) == (200, True)
        served.append("slow" if slow.request_count > before[0] else "fast" if fast.request_count > before[1]
                      else "?")
    return served


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_measured_converges_demotes_and_recovers(setup):
    sidecar, slow, fast, image_id, metrics_file = setup
    _, before_text = get(sidecar, "/metrics")

    # Nothing learnt: both unknown, tie, base order: slow first. Then the
    # still-unknown fast copy (optimistic prior) is tried, learnt, and kept.
    served = download_counts(sidecar, slow, fast, image_id, 8)
    assert served[0] == "slow"
    assert served[-5:] == ["fast"] * 5, served

    # The fast backend fails: two failures demote it; downloads fall back to slow.
    fast.mode = "status:503"
    served = download_counts(sidecar, slow, fast, image_id, 3)
    assert served == ["slow"] * 3
    time.sleep(1.1)  # each worker reads the shared file at most once a second
    status, health = get(sidecar, "/healthcheck")
    assert status == 200 and json.loads(health)["demoted_backends"] == 1
    requests_while_demoted = fast.request_count
    download_counts(sidecar, slow, fast, image_id, 2)
    assert fast.request_count == requests_while_demoted, "a demoted backend is tried last: not at all here"

    # It recovers; after the cool-down the next download probes it and it is back.
    fast.mode = "ok"
    time.sleep(COOLDOWN + 1.2)  # cool-down, plus the 1 s cache of the shared metrics file
    served = download_counts(sidecar, slow, fast, image_id, 4)
    assert served == ["fast"] * 4, served
    assert json.loads(get(sidecar, "/healthcheck")[1])["demoted_backends"] == 0

    _, after_text = get(sidecar, "/metrics")
    after, before = after_text.decode(), before_text.decode()
    assert metric(after, "locproxy_downloads_total", outcome="served") > metric(before, "locproxy_downloads_total",
                                                                                outcome="served")
    assert metric(after, "locproxy_backend_failures_total", reason="http_status") >= 2
    assert metric(after, "locproxy_download_bytes_total") >= 17 * len(DATA)
    assert metric(after, "locproxy_requests_total", kind="download") >= 17
    assert 'locproxy_strategy{strategy="measured"} 1.0' in after

    # What the node learnt, as operators see it.
    table = subprocess.run([sys.executable, "-m", "locproxy.cli", "stats", str(metrics_file)],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    rows = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert set(rows) == {slow.url(""), fast.url("")}, table  # backend keys: scheme://host:port
    assert all("healthy" in row for row in rows.values())
    slow_mbps = float(re.search(r"([\d.]+) MB/s", rows[slow.url("")]).group(1))
    fast_mbps = float(re.search(r"([\d.]+) MB/s", rows[fast.url("")]).group(1))
    assert slow_mbps < 6 < fast_mbps, table


def test_active_probing_learns_and_brings_a_backend_back(tmp_path):
    """With probe_interval set, backends are learnt and recovered by probes,
    not by users' downloads."""
    metrics_file = tmp_path / "metrics.sqlite"
    options = {
        "allowed_hosts": "127.0.0.1",
        "metrics_file": metrics_file,
        "failure_threshold": 2,
        "cooldown": 0.5,
        "max_cooldown": 0.5,
        "probe_interval": 0.2,
        "probe_size": "4K",
    }
    with FaultServer(DATA) as first, FaultServer(DATA, mode="status:500") as second:
        with sidecar_for(tmp_path, {"a": first, "b": second}, options, threads=4) as (sidecar, image_id):
            status, body = get(sidecar, f"/v2/images/{image_id}/file")
            assert (status, body == DATA) == (200, True)
            # Only probes (small Range reads, which may already have begun) reached it.
            assert all(request.headers.get("range") == "bytes=0-4095" for request in second.requests), \
                "the user's download never needed the second copy"
            tracker_rows = lambda: subprocess.run(  # noqa: E731
                [sys.executable, "-m", "locproxy.cli", "stats", str(metrics_file)],
                capture_output=True, text=True, timeout=60, check=True).stdout

            def second_record() -> Any:
                return Tracker(str(metrics_file), read_only=True).stats().get(second.url(""))

            deadline = time.monotonic() + 10
            while not (second_record() and second_record().demoted_until) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert second_record().demoted_until, "probes found the second copy failing, and demoted it"
            assert second.requests[-1].headers.get("range") == "bytes=0-4095", "small Range reads"
            second.mode = "ok"

            def second_row() -> str:
                return next(row for row in tracker_rows().splitlines() if row.startswith(second.url("")))

            deadline = time.monotonic() + 10
            while not re.search(r"\d+\.\d ms.*healthy", second_row()) and time.monotonic() < deadline:
                time.sleep(0.1)
            line = second_row()
            assert "healthy" in line, "a successful probe brought it back"
            assert re.search(r"\d+\.\d ms", line), "its first-byte time was learnt by probing"
