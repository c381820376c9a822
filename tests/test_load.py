"""Load through the real sidecar (``tests.support.load``): concurrent
verified downloads mixed with a steady stream of metadata requests, on
loopback; afterwards zero errors, zero corrupt bodies, and no growth of the
workers' open file descriptors or pooled upstream connections.

``test_load_short`` (a few seconds) runs by default; ``test_load_full``
(200 downloads + 1,000 metadata requests/s for 60 s) is ``slow``: run it
with ``./run tests -m slow tests/test_load.py``, or
``bench/reliability.py --load`` for the figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.load import check, run_load


def test_load_short(tmp_path: Path) -> None:
    """5 s: 20 concurrent verified downloads + 200 metadata requests/s."""
    report = run_load(tmp_path, seconds=5, downloads=20, rate=200, workers=2, threads=16, connections=16)
    print("\n".join(report.lines()))
    check(report)


@pytest.mark.slow
def test_load_full(tmp_path: Path) -> None:
    """60 s: 200 concurrent verified downloads + 1,000 metadata requests/s.

    The rate is a target, reported and not asserted: on 2 cores shared by
    client, sidecar and upstream, about 1,200 metadata req/s is the ceiling
    with no downloads, and the 200 download loops (200+ MB/s verified) leave
    roughly half of that. 500 connections keep the schedule open-loop: with
    all 128 sidecar threads busy, each request waits behind downloads."""
    report = run_load(tmp_path, seconds=60, downloads=200, rate=1000, workers=2, threads=64, connections=500,
                      warmup=5)
    print("\n".join(report.lines()))
    check(report)
