"""The client-side CLI: ``locproxy order`` with the shared functions, no server."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

from locproxy.cli import main as cli_main
from locproxy.tracker import Tracker
from tests.support.unprivileged import make_read_only, run_unprivileged, shared_dir

IMAGE = {
    "id": "i1",
    "locations": [
        {"url": "file:///srv/images/i1", "metadata": {"store": "disk"}},
        {"url": "rbd://fsid/images/i1/snap", "metadata": {"store": "ceph"}},
    ],
    "direct_url": "file:///srv/images/i1",
}


def run_order(*args: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "locproxy.cli", "order", *args],
        input=stdin, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    "document, pick",
    [
        pytest.param(IMAGE, lambda out: out, id="image"),
        pytest.param({"images": [IMAGE], "next": "/v2/images?marker=i1"}, lambda out: out["images"][0], id="list"),
    ],
)
def test_order_reorders_stdin(document, pick):
    result = run_order("--strategy", "store_type", "--store-type-preference", "rbd,file", stdin=json.dumps(document))
    assert result.returncode == 0, result.stderr
    image = pick(json.loads(result.stdout))
    assert [location["url"] for location in image["locations"]] == [
        "rbd://fsid/images/i1/snap", "file:///srv/images/i1",
    ]
    assert image["direct_url"] == "rbd://fsid/images/i1/snap"


def test_order_location_list_with_prefer():
    result = run_order("--prefer", "ceph", stdin=json.dumps(IMAGE["locations"]))
    assert [location["metadata"]["store"] for location in json.loads(result.stdout)] == ["ceph", "disk"]


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        pytest.param(["--strategy", "fastest"], "{}", "location_strategy: unknown strategy 'fastest'", id="strategy"),
        pytest.param(["--strategy", "store_type", "--store-type-preference", "tape"], "{}",
                     "store_type_preference: unknown store type 'tape'", id="preference"),
        pytest.param([], "{oops", "stdin is not JSON", id="bad-json"),
    ],
)
def test_order_errors(args, stdin, message):
    result = run_order(*args, stdin=stdin)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_demo_check_runs_the_readme_demo_end_to_end():
    """`./run demo` starts this; --check makes the same set-up verify itself."""
    from tests.support.processes import free_port

    result = subprocess.run(
        [sys.executable, "-m", "locproxy.cli", "demo", "--check", "--port", str(free_port())],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "locproxy order:  slow-disk, fast-disk, web" in result.stdout
    assert "sha512 matches os_hash_value" in result.stdout
    assert "demo check: OK" in result.stdout
    assert "sent from file" in result.stderr, "the download came from a file store, not the upstream"


def _stats_output(path: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli_main(["stats", path])
    return f"exit {code}\n{out.getvalue()}"


def test_stats_reads_a_metrics_file_it_may_not_write():
    """``locproxy stats`` works for an operator who may only read the file
    (and not its directory, so sqlite cannot even create its WAL index)."""
    with shared_dir() as directory:
        path = directory / "metrics.sqlite"
        tracker = Tracker(str(path))
        tracker.record_transfer("http://web:80", 4 << 20, 0.5)
        tracker.close()
        make_read_only(path, directory)
        output = run_unprivileged(_stats_output, str(path))
    assert output.startswith("exit 0"), output
    assert "http://web:80" in output and "8.4 MB/s" in output, output
