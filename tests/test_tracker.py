"""The local backend tracker: learning, the health rule, shared storage."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from locproxy.tracker import MIN_THROUGHPUT_SAMPLE, HealthRule, Tracker
from tests.support.sqlite_files import Clock, used_while_locked

MiB = 1 << 20


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


def test_checksum_mismatch_demotes_the_copy_at_once_not_the_backend(tracker):
    backend, copy = tracker.record_corrupt("b", "b#1", "image-1")
    assert tracker.demoted("b#1") and copy.demoted(tracker.clock_control.now)
    assert not tracker.demoted("b") and not backend.demoted(tracker.clock_control.now)
    assert tracker.demoted("b", "b#1"), "a candidate is demoted when its copy is"


def test_one_image_with_a_wrong_hash_never_demotes_its_backend(tracker):
    for _ in range(10):
        tracker.record_corrupt("b", "b#1", "image-1")
    assert not tracker.demoted("b")
    assert tracker.stats()["b"].corrupt_images[-1][0] == "image-1"
    assert len(tracker.stats()["b"].corrupt_images) == 1, "an image counts once"


def test_several_corrupt_images_demote_the_backend(tracker):
    clock = tracker.clock_control
    for number in range(3):
        assert not tracker.demoted("b"), f"{number} corrupt images are not enough"
        tracker.record_corrupt("b", f"b#{number}", f"image-{number}")
        clock.now += 1
    assert tracker.demoted("b")
    assert tracker.stats()["b"].cooldown == 20, "the next demotion lasts twice as long"


def test_corrupt_images_are_forgotten_after_the_window(tracker):
    clock = tracker.clock_control
    tracker.record_corrupt("b", "b#0", "image-0")
    tracker.record_corrupt("b", "b#1", "image-1")
    clock.now += tracker.rule.corrupt_window + 1
    tracker.record_corrupt("b", "b#2", "image-2")
    assert not tracker.demoted("b")


def test_demotions_of_a_corrupt_copy_escalate(tracker):
    """A copy that keeps mismatching is demoted for longer each time (a
    mismatch is never learnt as a good transfer first)."""
    clock = tracker.clock_control
    tracker.record_corrupt("b", "b#1", "image-1")
    clock.now += 10.1
    assert not tracker.demoted("b#1"), "back after the first cool-down (10 s)"
    tracker.record_corrupt("b", "b#1", "image-1")
    clock.now += 19.9
    assert tracker.demoted("b#1"), "demoted twice as long the second time"
    clock.now += 0.2
    tracker.record_success("b#1")
    assert tracker.stats()["b#1"].cooldown == 0, "good bytes clear the copy's record"


def test_success_of_an_unknown_copy_writes_nothing(tracker):
    tracker.record_success("b#never-failed")
    assert tracker.stats() == {}


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


def test_first_bytes_are_written_with_the_backends_next_event_not_on_their_path(tmp_path):
    """A first byte costs no write of the shared file (it is on every
    download's way to its first byte): this process sees it at once, other
    workers with the backend's next event (the transfer's end), or when the
    tracker closes."""
    path = str(tmp_path / "metrics.sqlite")

    def elsewhere(key: str) -> tuple | None:  # what another worker reads from the file now
        other = Tracker(path)
        try:
            return other.estimate(key)
        finally:
            other.close()

    worker = Tracker(path, HealthRule(alpha=0.5))
    try:
        worker.record_first_byte("b", 0.1)
        worker.record_first_byte("b", 0.3)
        assert worker.estimate("b") == (pytest.approx(0.2), None)
        assert worker.stats()["b"].ttfb == pytest.approx(0.2)
        assert elsewhere("b") is None, "not written yet"
        worker.record_transfer("b", MiB, 0.5)
        assert elsewhere("b") == (pytest.approx(0.2), pytest.approx(2 * MiB))
        worker.record_first_byte("c", 0.4)
        assert elsewhere("c") is None
    finally:
        worker.close()
    assert elsewhere("c") == (pytest.approx(0.4), None), "written at close"


def test_a_locked_metrics_file_degrades_to_memory_quickly(tmp_path):
    """A lock held by another process (e.g. a stopped worker) costs one
    short wait, then the file is left alone: updates go on in memory,
    nothing raises, and the failure is reported and counted."""
    with used_while_locked(Tracker, tmp_path / "metrics.sqlite") as (tracker, errors):
        started = time.monotonic()
        tracker.record_failure("b")
        for _ in range(20):
            tracker.record_failure("b")
            tracker.record_transfer("c", MiB, 0.1)
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, f"bookkeeping took {elapsed:.2f} s while the file was locked"
        assert tracker.demoted("b"), "this process still applies the health rule"
        assert tracker.stats()["c"].samples == 20
        assert tracker.degraded and "locked" in tracker.degraded
        assert errors == ["tracker"], "one failure, then the file is left alone"


def test_read_only_tracker_never_writes(tmp_path):
    path = tmp_path / "metrics.sqlite"
    writer = Tracker(str(path))
    writer.record_transfer("b", 4 * MiB, 0.5)
    writer.close()
    before = path.read_bytes()
    reader = Tracker(str(path), read_only=True)
    try:
        assert reader.estimate("b") == (None, pytest.approx(8 * MiB))
        with pytest.raises(PermissionError):
            reader.record_failure("b")
    finally:
        reader.close()
    assert path.read_bytes() == before
