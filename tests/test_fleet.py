"""The fleet, short: three nodes, three backends, each node's links shaped so
that each has a different fastest backend (``bench/fleet``, small images).

Proves, with real namespaces, veth links, tc shaping and one gunicorn
sidecar per node, that with ``measured`` every node ends up on its own
fastest backend, and that cutting a backend's links mid-download costs each
node a resumed download (exact bytes) and at most ``failure_threshold``
failures before the backend is demoted, and that the node whose fastest
backend it is returns to it once it is back. Asserts behaviour, not timings.

Needs root (network namespaces): skipped otherwise, with the reason.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from bench.fleet import netlab
from bench.fleet.fleet import Fault, Fleet, RunResult, make_images

MiB = 1024 * 1024
FAILURE_THRESHOLD = 3
OUTAGE = 6.0  # long enough for node 0 to fail the threshold: the read timeout, probes, a download
COOLDOWN = 4.0
CONVERGE = 6  # downloads before the fault
AFTER = 12  # downloads after the held one: long enough for the outage, the cool-down and a probe
OPTIONS = {
    "location_strategy": "measured",
    "probe_interval": 1,
    "probe_size": "256K",  # the tracker learns throughput from 256 KiB up
    "failure_threshold": FAILURE_THRESHOLD,
    "cooldown": COOLDOWN,
    "backend_connect_timeout": 1,
    "backend_read_timeout": 2,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunResult]:
    # Checked here rather than at collection, so that collecting the suite
    # never creates a namespace.
    reason = netlab.unavailable_reason()
    if reason is not None:
        pytest.skip(f"fleet test: {reason}")
    # Rates 4x apart, so the ranking does not hinge on Python's overhead
    # per request on a busy 2-core machine. A different prefix from the
    # bench's, so the test never removes a running bench's network.
    topology = netlab.Topology(prefix="lpt", rates=(200, 50, 12))
    base = tmp_path_factory.mktemp("fleet")
    small = make_images(base / "images", CONVERGE, 4 * MiB, tag="small")
    big = make_images(base / "images", 1, 32 * MiB, tag="big")
    sequence = small + big + (small * 3)[:AFTER]
    with netlab.Lab(topology) as lab:
        fleet = Fleet(lab, base / "work", small + big, sidecar_threads=4)
        # Node 0's fastest backend is 0: hold its big download after 2 MiB,
        # cut backend 0 there, bring it back OUTAGE seconds later.
        fault = Fault(backend=0, node=0, download=CONVERGE + 1, at=2 * MiB, outage=OUTAGE)
        yield fleet.run("measured-fault", OPTIONS, sequence, pause=0.5, fault=fault, timeout=120)


def test_every_download_is_exact(run: RunResult):
    bad = [(d.node, d.n, d.bytes, d.error) for d in run.downloads if not d.ok]
    assert not bad, f"downloads with wrong bytes or errors (node, n, bytes, error): {bad}"


def test_every_node_converges_to_its_fastest_backend_by_its_third_download(run: RunResult):
    for node in range(run.topology.nodes):
        first = run.converged_from(node, last=CONVERGE)
        sources = [d.sources for d in run.of_node(node)[:CONVERGE]]
        assert first is not None and first <= 3, (
            f"node {node} (fastest backend {run.topology.fastest(node)}): sources per download {sources}"
        )


def test_the_cut_download_resumes_from_another_backend(run: RunResult):
    held = run.of_node(0)[CONVERGE]
    assert run.cut_at is not None and run.restored_at is not None, "the fault never happened"
    assert held.ok, f"the cut download is not exact: {held}"
    assert held.sources[:1] == (0,) and len(held.sources) >= 2 and 0 not in held.sources[1:], (
        f"expected backend 0 then others (a resume), got sources {held.sources}, failures {held.failures}"
    )


def test_the_dead_backend_costs_each_node_at_most_the_threshold(run: RunResult):
    for node, health in run.health.items():
        failures = health.failed_attempts(run.cut_at, run.restored_at, run.attempt_slack())
        # Half-open: one attempt at a time tests a failing backend (one
        # worker per node here), so the threshold is never exceeded.
        assert failures <= FAILURE_THRESHOLD, (
            f"node {node}: {failures} failed attempts on backend 0 before its demotion "
            f"(threshold {FAILURE_THRESHOLD})"
        )
        if failures >= FAILURE_THRESHOLD or node == 0:
            assert health.first_demotion() is not None, (
                f"node {node}: {failures} failures but backend 0 never demoted: {health.polls[-5:]}"
            )


def test_node_returns_to_its_fastest_backend_after_the_cooldown(run: RunResult):
    after = [d for d in run.of_node(0) if d.started > run.restored_at]
    assert any(d.sources == (0,) for d in after), (
        f"node 0 never downloaded from backend 0 again after the outage: {[d.sources for d in after]}"
    )
    assert run.of_node(0)[-1].sources == (0,), f"node 0's last download: {run.of_node(0)[-1]}"
    for node, health in run.health.items():
        assert health.healthy_again(run.restored_at) is not None, (
            f"node {node} still counts backend 0 as failing at the end: {health.polls[-1]}"
        )
