"""Verification ahead of need (``verify_ahead``, off by default).

A first download of a file copy is as fast as hashing it; a copy already
verified is sent with sendfile. So when a worker has nothing to send, it
verifies the file copies of images it was asked about that are not verified
yet, one at a time, and pauses whenever a download starts. A copy verified
here is remembered like any other (``locproxy.verified``); a mismatch
demotes and forgets it, as a download would.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from typing import Any

from locproxy.download.backends import BackendError, Backends
from locproxy.download.digests import Digest, digest_matches
from locproxy.download.plan import DownloadPlan
from locproxy.observability import Recorder
from locproxy.verified import VerifiedCopies

LOG = logging.getLogger(__package__)  # one logger for the whole download path

#: Copies waiting to be verified, per process (the oldest are dropped).
MAX_QUEUED = 1024
CHUNK = 1 << 20


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
    """Remembers unverified file copies of planned downloads; a daemon
    thread verifies them while the process sends nothing."""

    def __init__(self, backends: Backends, verified: VerifiedCopies, recorder: Recorder, activity: Activity) -> None:
        self.backends = backends
        self.verified = verified
        self.recorder = recorder
        self.activity = activity
        self._lock = threading.Lock()
        self._queue: OrderedDict[str, tuple[DownloadPlan, Any]] = OrderedDict()
        self._wakeup = threading.Event()
        self._pid = 0
        self._stopped = False

    def note(self, plan: DownloadPlan) -> None:
        """Queue the file copies of ``plan`` (whole-image digests only)."""
        if plan.digest is None:
            return
        with self._lock:
            for candidate in plan.candidates:
                if candidate.url.startswith("file:") and candidate.url not in self._queue:
                    self._queue[candidate.url] = (plan, candidate)
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
                    _url, (plan, candidate) = self._queue.popitem(last=False)
                self.verify(plan, candidate)

    def verify(self, plan: DownloadPlan, candidate: Any) -> bool | None:
        """Hash one file copy (pausing while downloads run); True or False,
        or None when it could not be read or was verified already."""
        assert plan.digest is not None
        try:
            stream = self.backends.open(candidate.url, 0, plan.size, plan.size)
        except BackendError:
            return None  # a download will find out, and tell the health rule
        with stream:
            if self.verified.contains(stream.identity, plan.digest):
                return None
            good = self._hash(stream, plan.digest)
        if good:
            self.verified.add(stream.identity, plan.digest)
            LOG.info("image %s: copy at %s verified ahead of need", plan.image_id, candidate.label)
        else:
            self.verified.forget(stream.identity)
            self.recorder.corrupt(candidate.key, candidate.copy, candidate.label, plan.image_id)
            LOG.error("image %s: %s digest mismatch from %s (verified ahead of need); the copy is demoted",
                      plan.image_id, plan.digest[0], candidate.label)
        return good

    def _hash(self, stream: Any, digest: Digest) -> bool:
        hasher = hashlib.new(digest[0])
        fd, offset = stream.fileobj.fileno(), 0
        while chunk := os.pread(fd, CHUNK, offset):
            self.activity.wait_idle(60.0)  # downloads first
            hasher.update(chunk)
            offset += len(chunk)
        return digest_matches(hasher, digest[1])
