"""Two-worker sidecars for the fault rows that must prove what every worker
does: ``/metrics`` summed over the workers (``PROMETHEUS_MULTIPROC_DIR``)
and gunicorn's access log naming the worker that answered each request."""

from __future__ import annotations

import concurrent.futures
import os
import re
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from tests.support.faults.lab import FaultLab
from tests.support.servers import run_gunicorn, sidecar_ini

ACCESS_LOG = ["--access-logfile", "-", "--access-logformat", "access %(p)s %(r)s"]


@contextmanager
def counted_sidecar(lab: FaultLab, workers: int = 2, **options: Any) -> Iterator[Any]:
    """The lab's sidecar configuration with ``options``, in a gunicorn of its own."""
    counters = lab.base / f"prometheus-{os.urandom(3).hex()}"
    counters.mkdir()
    ini = sidecar_ini(lab.base / f"counted-{os.urandom(3).hex()}.ini", lab.upstream_url,
                      {**lab.filter_options, **options}, lab.proxy_options)
    with run_gunicorn(ini, workers=workers, threads=4, env={"PROMETHEUS_MULTIPROC_DIR": str(counters)},
                      extra_args=ACCESS_LOG) as sidecar:
        yield sidecar


def workers_of(sidecar: Any, path: str, since: int = 0) -> set[str]:
    """The pids of the workers that answered GETs of ``path`` (a regex), logged after offset ``since``."""
    return set(re.findall(rf"access <(\d+)> GET {path} ", sidecar.log()[since:]))


def from_every_worker(sidecar: Any, path: str, ask: Callable[[], Any], at_least: int,
                      workers: int = 2, at_most: int = 48) -> list[Any]:
    """``ask()`` at least ``at_least`` times, four at a time, and more until
    every worker answered one (gunicorn hands a connection to whichever
    worker accepts first); bounded by ``at_most``."""
    mark, answers = len(sidecar.log()), []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        while len(answers) < at_least or len(workers_of(sidecar, path, mark)) < workers:
            assert len(answers) < at_most, f"{len(answers)} requests of {path}, not all workers answered"
            answers += pool.map(lambda _: ask(), range(4))
            time.sleep(0.05)  # gunicorn logs the access once the answer is sent
    return answers
