"""Progress lines on stderr, and waiting for a quieter machine (other work
shares these cores and adds noise to every figure)."""

from __future__ import annotations

import os
import sys
import time


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_quiet(limit: float) -> None:
    """Up to ``limit`` seconds until the 1-minute load average drops below half the CPU count."""
    deadline = time.monotonic() + limit
    threshold = (os.cpu_count() or 2) / 2
    while limit > 0 and os.getloadavg()[0] > threshold and time.monotonic() < deadline:
        time.sleep(5)
