"""Optional active probing: learn about backends before a user needs them.

Off by default (``probe_interval = 0``). When on, every location seen in a
download's metadata is remembered (one url per backend, the most recent 256
backends), and a daemon thread in each worker process reads the first
``probe_size`` bytes of each remembered backend every ``probe_interval``
seconds, feeding the tracker: first-byte times are learnt, failures count
towards demotion, and a demoted backend whose cool-down has ended comes back
after a successful probe rather than on a user's download.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import OrderedDict
from typing import Iterable

from locproxy.download.backends import BackendError, Backends
from locproxy.download.plan import Candidate, DownloadPlan
from locproxy.observability import Recorder

LOG = logging.getLogger(__package__)  # one logger for the whole download path

MAX_REMEMBERED = 256


class Prober:
    """One daemon thread per worker probing the backends it was asked about."""

    def __init__(self, backends: Backends, recorder: Recorder, interval: float, size: int) -> None:
        self.backends = backends
        self.recorder = recorder
        self.interval = interval
        self.size = size
        self._lock = threading.Lock()
        self._known: OrderedDict[str, tuple[Candidate, int]] = OrderedDict()  # backend -> (a copy, image size)
        self._pid = 0
        self._stop = threading.Event()

    def note(self, plan: DownloadPlan) -> None:
        """Note the backends of one download's candidates, those it may read
        without the client (never a copy only the client's token reads)."""
        self.remember([c for c in plan.candidates if self.backends.readable(c.url)], plan.size)

    def remember(self, candidates: Iterable[Candidate], image_size: int) -> None:
        """Note the backends of these candidates; start the thread if needed."""
        with self._lock:
            for candidate in candidates:
                self._known[candidate.key] = (candidate, image_size)
                self._known.move_to_end(candidate.key)
            while len(self._known) > MAX_REMEMBERED:
                self._known.popitem(last=False)
            if self._pid != os.getpid():  # first use in this (forked) process
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="locproxy-prober", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        # Jittered: the workers of a node, and nodes started together, do not probe in step.
        while not self._stop.wait(self.interval * random.uniform(0.9, 1.1)):
            self.probe_all()

    def probe_all(self) -> None:
        with self._lock:
            known = list(self._known.values())
        for candidate, image_size in known:
            if self._stop.is_set():
                return
            if not self.recorder.tracker.demoted(candidate.key):
                self.probe(candidate, image_size)

    def probe(self, candidate: Candidate, image_size: int) -> bool:
        """Read the first ``size`` bytes of ``candidate``; learn and count
        as a download does (first byte, throughput after it, failures)."""
        length = min(self.size, image_size)
        started = time.monotonic()
        try:  # the whole probe is an attempt (it is short): downloads leave a failing backend to it
            with self.recorder.tracker.attempt(candidate.key):
                stream = self.backends.open(candidate.url, 0, length, image_size)
                opened = time.monotonic()
                self.recorder.opened(candidate.key, opened - started)
                with stream:
                    received = sum(len(chunk) for chunk in stream)
        except BackendError as error:
            LOG.warning("probe of backend %s failed: %s", candidate.label, error.reason)
            self.recorder.failed(candidate.key, candidate.label, error.kind)
            return False
        seconds = time.monotonic() - opened  # the transfer alone: connecting is the first byte's time
        self.recorder.transferred(candidate.key, candidate.copy, candidate.label, received, seconds)
        LOG.debug("probe of %s: %d bytes in %.3f s", candidate.label, received, seconds)
        return True
