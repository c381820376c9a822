"""The body of one download: streams from its sources, resumes, verifies.

When a digest is given the final chunk is held back until the whole body
matches it; a mismatch raises, so the server aborts the connection and the
client sees a truncated body rather than a complete bad one. Transfers are
learnt (``Recorder.transferred``) only once their bytes verified: corrupt
bytes teach nothing good, and are recorded against the copies that sent them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterator

from locproxy.download.backends import BackendError
from locproxy.download.plan import UPSTREAM, Candidate, Digest
from locproxy.download.sources import Opened, Sources

LOG = logging.getLogger(__package__)  # one logger for the whole download path


class ChecksumMismatch(Exception):
    """The delivered image does not match its recorded digest."""


def digest_matches(hasher: Any, expected: str) -> bool:
    """Whether the hash equals ``expected`` (hex). Extendable-output hashes
    (``shake_128``, ``shake_256``) are read to the expected length."""
    if hasher.name.startswith("shake_"):
        return hasher.hexdigest(len(expected) // 2) == expected.lower()
    return hasher.hexdigest() == expected.lower()


class ImageBody:
    """The WSGI iterable of one download (``close()`` closes its current source)."""

    def __init__(self, sources: Sources, first: Opened, start: int, end: int, digest: Digest | None,
                 on_verified: Callable[[], None] | None) -> None:
        self.sources = sources
        self.current = first
        self.start = start
        self.offset = start
        self.end = end
        self.digest = digest
        self.on_verified = on_verified

    def __iter__(self) -> Iterator[bytes]:
        sources, digest = self.sources, self.digest
        hasher = hashlib.new(digest[0]) if digest else None
        held = b""
        used: list[Candidate] = []
        first_label = self.current[0].label
        failures_before = sources.failures
        try:
            while True:
                candidate, stream = self.current
                used.append(candidate)
                segment_start, started = self.offset, time.monotonic()
                try:
                    for chunk in stream:
                        self.offset += len(chunk)
                        if hasher is None:
                            yield chunk
                            continue
                        hasher.update(chunk)
                        if held:
                            yield held
                        held = chunk
                except BackendError as error:
                    sources.failed(candidate, error, self.offset)
                finally:
                    stream.close()
                if self.offset >= self.end:
                    break
                self.current = sources.resume(self.offset)
            if hasher is not None and digest is not None and not digest_matches(hasher, digest[1]):
                self._mismatch(used, first_label)
            if candidate is not UPSTREAM:
                sources.recorder.transferred(candidate.key, candidate.copy, candidate.label,
                                             self.offset - segment_start, time.monotonic() - started)
            if len(used) == 1 and hasher is not None and self.on_verified is not None:
                self.on_verified()  # the first source alone produced a good body
            if held:
                yield held
        except BackendError:  # the upstream's /file failed too: abort
            sources.recorder.outcome(first_label, "failed")
            raise
        outcome = "resumed" if len(used) > 1 else "served" if failures_before == 0 else "fell_back"
        sources.recorder.outcome(first_label, outcome)
        LOG.info("image %s: bytes %d-%d sent from %s%s", sources.image_id, self.start, self.end - 1,
                 ", ".join(candidate.label for candidate in used), f" ({digest[0]} verified)" if digest else "")

    def _mismatch(self, used: list[Candidate], first_label: str) -> None:
        sources, digest = self.sources, self.digest
        assert digest is not None
        for source in used:
            if source is not UPSTREAM:
                sources.recorder.corrupt(source.key, source.copy, source.label, sources.image_id)
        sources.recorder.outcome(first_label, "checksum_mismatch")
        LOG.error("image %s: %s digest mismatch from %s; aborting the download",
                  sources.image_id, digest[0], ", ".join(c.label for c in used))
        raise ChecksumMismatch(f"image {sources.image_id}: {digest[0]} mismatch")

    def close(self) -> None:
        self.current[1].close()


class VerifiedFiles:
    """Local files whose content matched their image digest, by identity.

    A file is the same file while its device, inode, size, modification and
    change times are (a copy rewritten in place with its mtime restored has a
    new ctime: utime() cannot set that). Keeps the most recent ``capacity``
    entries, per process.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, Digest] = OrderedDict()

    @staticmethod
    def identity(fileobj: Any) -> tuple:
        stat = os.fstat(fileobj.fileno())
        return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)

    def contains(self, fileobj: Any, digest: Digest) -> bool:
        with self._lock:
            return self._entries.get(self.identity(fileobj)) == digest

    def add(self, identity: tuple, digest: Digest) -> None:
        with self._lock:
            self._entries[identity] = digest
            self._entries.move_to_end(identity)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
