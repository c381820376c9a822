"""Image digests, computed beside the transfer instead of in its way.

sha512 runs at about 0.6 GB/s on one core here: hashed on the request's
thread, serially with sending, a verified download runs at the sum of both
costs. ``PipelinedHash`` moves ``update`` to a helper thread (hashlib releases
the GIL for large buffers), so the request thread sends one chunk and reads
the next while the previous one is hashed: a download then runs at about
min(hash speed, transfer speed). At most one update is in flight per
download, so chunks are hashed in order and memory stays at a chunk or two.

The helper threads are one small pool per process (made after fork, never
per download): a client that goes away leaves no thread behind, only an
update that finishes on its own.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import threading
from typing import Any

from locproxy.fingerprints import BLOCK

Digest = tuple[str, str]  # (hashlib name, expected hex value)

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    """This process's digest threads, one per core (a pool must not cross a fork)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                                          thread_name_prefix="locproxy-digest")
            _pool_pid = os.getpid()
        return _pool


def submit(task: Any) -> concurrent.futures.Future[Any]:
    """Run ``task()`` on a digest thread (work that must not hold a request)."""
    return _executor().submit(task)


class PipelinedHash:
    """A hashlib object whose ``update`` returns at once and runs on a helper
    thread; the next ``update`` (or ``matches``) waits for the previous one.
    With ``blocks`` (a ``FingerprintBuilder``), each update is one block of
    the image, fingerprinted on the same thread."""

    def __init__(self, algorithm: str, blocks: Any = None) -> None:
        self._hasher = hashlib.new(algorithm)
        self._blocks = blocks
        self._pending: concurrent.futures.Future[None] | None = None

    @property
    def name(self) -> str:
        return self._hasher.name

    def update(self, data: bytes) -> None:
        self.wait()
        self._pending = _executor().submit(self._update, data)

    def _update(self, data: bytes) -> None:
        self._hasher.update(data)
        if self._blocks is not None:
            self._blocks.add(data)

    def wait(self) -> None:
        """Until every chunk given so far is hashed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def matches(self, expected: str) -> bool:
        self.wait()
        return digest_matches(self._hasher, expected)


def digest_matches(hasher: Any, expected: str) -> bool:
    """Whether the hash equals ``expected`` (hex). Extendable-output hashes
    (``shake_128``, ``shake_256``) are read to the expected length."""
    if hasher.name.startswith("shake_"):
        return hasher.hexdigest(len(expected) // 2) == expected.lower()
    return hasher.hexdigest() == expected.lower()


def file_digest_matches(fileobj: Any, digest: Digest, blocks: Any = None, pause: Any = None) -> bool:
    """Hash an open file from its start, a block of the image at a time
    (its own descriptor position is kept for the caller: reads use pread);
    with ``blocks`` (a ``FingerprintBuilder``), fingerprint it too; with
    ``pause``, call it before each block (background work giving way)."""
    hasher = hashlib.new(digest[0])
    fd, offset = fileobj.fileno(), 0
    while True:
        if pause is not None:
            pause()
        chunk = os.pread(fd, BLOCK, offset)
        if not chunk:
            return digest_matches(hasher, digest[1])
        hasher.update(chunk)
        if blocks is not None:
            blocks.add(chunk)
        offset += len(chunk)
