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
import threading
import time
from collections import OrderedDict
from typing import Any, Iterable

from locproxy.download.backends import BackendError, Backends

LOG = logging.getLogger(__name__)

MAX_REMEMBERED = 256


class Prober:
    def __init__(self, backends: Backends, tracker: Any, interval: float, size: int) -> None:
        self.backends = backends
        self.tracker = tracker
        self.interval = interval
        self.size = size
        self._lock = threading.Lock()
        self._known: OrderedDict[str, tuple[str, int]] = OrderedDict()  # key -> (url, image size)
        self._pid = 0
        self._stop = threading.Event()

    def remember(self, candidates: Iterable[Any], image_size: int) -> None:
        """Note the backends of one download's candidates; start the thread if needed."""
        with self._lock:
            for candidate in candidates:
                self._known[candidate.key] = (candidate.url, image_size)
                self._known.move_to_end(candidate.key)
            while len(self._known) > MAX_REMEMBERED:
                self._known.popitem(last=False)
            if self._pid != os.getpid():  # first use in this (forked) process
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="locproxy-prober", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.probe_all()

    def probe_all(self) -> None:
        with self._lock:
            known = list(self._known.items())
        for key, (url, image_size) in known:
            if self._stop.is_set():
                return
            if not self.tracker.demoted(key):
                self.probe(key, url, image_size)

    def probe(self, key: str, url: str, image_size: int) -> bool:
        length = min(self.size, image_size)
        started = time.monotonic()
        try:
            stream = self.backends.open(url, 0, length, image_size)
            try:
                self.tracker.record_first_byte(key, time.monotonic() - started)
                received = sum(len(chunk) for chunk in stream)
            finally:
                stream.close()
        except BackendError as error:
            LOG.warning("probe of backend %s failed: %s", error.label, error.reason)
            self.tracker.record_failure(key)
            return False
        self.tracker.record_transfer(key, received, time.monotonic() - started)
        LOG.debug("probe of %s: %d bytes in %.3f s", key, received, time.monotonic() - started)
        return True
