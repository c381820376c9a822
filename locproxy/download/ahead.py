"""Verification ahead of need (``verify_ahead``, off by default).

A first download of an image is as fast as hashing it with its digest; once
its fingerprint is known, every later download is checked block by block at
about the speed of sending. So when a worker has nothing to send, it reads
a file copy of each image it was asked about whose fingerprint is not known
yet, one at a time, pausing whenever a download starts, and records the
fingerprint if the copy matched the image's digest (``verify.judge``, as a
download would: a mismatch demotes the copy).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Any

from locproxy.download.backends import BackendError, Backends
from locproxy.download.digests import file_digest_matches
from locproxy.download.plan import Candidate, DownloadPlan
from locproxy.download.verify import Verdict, judge
from locproxy.fingerprints import FingerprintBuilder, Fingerprints
from locproxy.observability import Recorder

LOG = logging.getLogger(__package__)  # one logger for the whole download path

#: Copies waiting to be verified, per process (the oldest are dropped).
MAX_QUEUED = 1024


class Activity:
    """Counts the bodies being sent by this process, so background work can
    wait for the moments when there are none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._idle = threading.Event()
        self._idle.set()

    def track(self, body: Any) -> Any:
        """``body`` (a WSGI iterable with ``close``), counted until the server
        closes it. Its ``close`` is replaced on the object itself: a
        ``wsgi.file_wrapper`` must stay the server's own type to be sent with
        sendfile."""
        with self._lock:
            self._active += 1
            self._idle.clear()
        close = body.close

        def closed() -> None:
            with self._lock:
                self._active -= 1
                if not self._active:
                    self._idle.set()
            close()

        body.close = closed
        return body

    def wait_idle(self, timeout: float) -> bool:
        return self._idle.wait(timeout)


#: This process's bodies being sent.
ACTIVITY = Activity()


class VerifyAhead:
    """Remembers images of planned downloads without a fingerprint; a daemon
    thread fingerprints them from a file copy while the process sends nothing."""

    def __init__(self, backends: Backends, fingerprints: Fingerprints, recorder: Recorder,
                 activity: Activity) -> None:
        self.backends = backends
        self.fingerprints = fingerprints
        self.recorder = recorder
        self.activity = activity
        self._lock = threading.Lock()
        self._queue: OrderedDict[str, tuple[DownloadPlan, Candidate]] = OrderedDict()
        self._wakeup = threading.Event()
        self._pid = 0
        self._stopped = False

    def note(self, plan: DownloadPlan) -> None:
        """Queue ``plan``'s image if it has a file copy and no fingerprint yet."""
        if plan.digest is None or self.fingerprints.get(plan.digest, plan.size) is not None:
            return
        copy = next((candidate for candidate in plan.candidates if candidate.url.startswith("file:")), None)
        if copy is None:
            return
        with self._lock:
            self._queue[plan.image_id] = (plan, copy)
            while len(self._queue) > MAX_QUEUED:
                self._queue.popitem(last=False)
            if self._pid != os.getpid():  # first use in this (forked) process
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="locproxy-verify-ahead", daemon=True).start()
        self._wakeup.set()

    def stop(self) -> None:
        self._stopped = True
        self._wakeup.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wakeup.wait(5.0)
            self._wakeup.clear()
            while not self._stopped and self.activity.wait_idle(1.0):
                with self._lock:
                    if not self._queue:
                        break
                    _image, (plan, candidate) = self._queue.popitem(last=False)
                self.verify(plan, candidate)

    def verify(self, plan: DownloadPlan, candidate: Candidate) -> bool | None:
        """Hash and fingerprint one file copy (pausing while downloads run);
        True or False, or None when it could not be read or was known already."""
        digest = plan.digest
        assert digest is not None
        if self.fingerprints.get(digest, plan.size) is not None:
            return None
        try:
            stream = self.backends.open(candidate.url, 0, plan.size, plan.size)
        except BackendError:
            return None  # a download will find out, and tell the health rule
        built = FingerprintBuilder()
        with stream:
            good = file_digest_matches(stream.fileobj, digest, built, lambda: self.activity.wait_idle(60.0))
        judge(Verdict(plan.image_id, digest, (candidate,), good), built.fingerprint(plan.size), self.fingerprints,
              self.recorder, "found while verifying ahead of need")
        if good:
            LOG.info("image %s: copy at %s verified ahead of need", plan.image_id, candidate.label)
        return good
