"""The local backend tracker: learning, the health rule, shared storage."""

from __future__ import annotations

import multiprocessing

import pytest

from locproxy.tracker import MIN_THROUGHPUT_SAMPLE, HealthRule, Tracker

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
def tracker(request, tmp_path):
    clock = Clock()
    path = str(tmp_path / "metrics.sqlite") if request.param == "sqlite" else None
    tracker = Tracker(path, HealthRule(alpha=0.5, failure_threshold=3, cooldown=10, max_cooldown=25), clock)
    tracker.clock_control = clock
    yield tracker
    tracker.close()


def test_learns_ewma_of_first_byte_and_throughput(tracker):
    tracker.record_first_byte("b", 0.1)
    tracker.record_first_byte("b", 0.3)
    tracker.record_transfer("b", 10 * MiB, 1.0)
    tracker.record_transfer("b", 10 * MiB, 0.5)
    ttfb, throughput = tracker.estimate("b")
    assert ttfb == pytest.approx(0.2)
    assert throughput == pytest.approx((10 * MiB + 20 * MiB) / 2)
    assert tracker.stats()["b"].samples == 2
    assert tracker.estimate("never-seen") is None


def test_small_transfers_do_not_count_for_throughput(tracker):
    tracker.record_transfer("b", MIN_THROUGHPUT_SAMPLE - 1, 0.0001)
    assert tracker.estimate("b") == (None, None)


def test_health_rule_demotes_after_threshold_and_doubles_cooldown(tracker):
    clock = tracker.clock_control
    for _ in range(2):
        tracker.record_failure("b")
    assert not tracker.demoted("b"), "two failures are not enough"
    tracker.record_failure("b")
    assert tracker.demoted("b")
    clock.now += 9.9
    assert tracker.demoted("b")
    clock.now += 0.2
    assert not tracker.demoted("b"), "back in place after the cool-down: the next download probes it"
    tracker.record_failure("b")  # the probe failed
    assert tracker.demoted("b")
    clock.now += 19.9
    assert tracker.demoted("b"), "twice as long the second time"
    clock.now += 0.2
    tracker.record_failure("b")
    clock.now += 24.9
    assert tracker.demoted("b")
    clock.now += 0.2
    assert not tracker.demoted("b"), "capped at max_cooldown"


def test_successful_probe_clears_the_record(tracker):
    clock = tracker.clock_control
    for _ in range(3):
        tracker.record_failure("b")
    clock.now += 11
    tracker.record_transfer("b", MiB, 0.1)
    stats = tracker.stats()["b"]
    assert (stats.failures, stats.demoted_until, stats.cooldown, stats.total_failures) == (0, 0.0, 0.0, 3)
    tracker.record_failure("b")
    assert not tracker.demoted("b"), "the count starts again"


def test_checksum_mismatch_demotes_at_once(tracker):
    tracker.record_failure("b", corrupt=True)
    assert tracker.demoted("b")


def _hammer(path: str, key: str, count: int) -> None:
    tracker = Tracker(path)
    for _ in range(count):
        tracker.record_transfer(key, MiB, 0.01)
    tracker.close()


def test_sqlite_is_shared_by_processes_without_lost_updates(tmp_path):
    path = str(tmp_path / "metrics.sqlite")
    Tracker(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_hammer, args=(path, "shared", 50)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    reader = Tracker(path)
    try:
        assert reader.stats()["shared"].samples == 200
    finally:
        reader.close()


def test_sqlite_keeps_what_was_learnt_across_restarts(tmp_path):
    path = str(tmp_path / "metrics.sqlite")
    first = Tracker(path)
    first.record_transfer("b", 4 * MiB, 0.5)
    first.close()
    second = Tracker(path)
    try:
        assert second.estimate("b") == (None, pytest.approx(8 * MiB))
    finally:
        second.close()
