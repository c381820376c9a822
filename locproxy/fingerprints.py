"""Block fingerprints: what every later read of an image is checked against.

An image's content never changes while it is active, and every copy of it
holds the same bytes. So locproxy trusts *content*, never a copy's identity
(an inode, an ETag, a URL):

* The first whole read of an image, from any copy, is hashed with the
  image's own digest (``os_hash_value``, else ``checksum``) beside the
  transfer. The same read records a **fingerprint**: a fast digest of each
  ``BLOCK`` of the image.
* The fingerprint is kept only if the whole read matched the image's digest,
  under that digest: ``(algorithm, value, size)``. It describes the bytes an
  image *must* have, so it serves every copy of that image, in every worker
  that shares the ``metrics_file``, after restarts, and in sidecars that see
  different bytes behind the same URL: each block of each later read is
  compared before it is sent.

The block digest is xxh3-128 (the ``xxhash`` package): about 10 GB/s per
core here, so checking a block costs less than sending it. It guards against
accidental corruption (bit rot, a truncated or swapped file, a wrong object
behind a URL), not against a writer with access to a backend who sets out
to forge blocks: xxh3 is not collision resistant, so such a writer could
craft a block with the same digest. A cryptographic block digest (BLAKE3 at
about 3.7 GB/s per core here, sha256 at 0.4) would close that at several
times the cost; the whole-image digest still guards every first read.

Standard library and ``xxhash`` only; bookkeeping rules apply to the shared
file (``locproxy.bookkeeping``): when it fails, a fingerprint not found only
costs a first-read verification, never a wrong answer.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable

import xxhash

from locproxy.bookkeeping import KeptInFile, SharedFile

Digest = tuple[str, str]  # (hashlib name, hex)

#: The unit of every check and every resume: 1 MiB.
BLOCK = 1 << 20
DIGEST_SIZE = 16
#: Fingerprint bytes kept in memory per process (16 bytes per MiB of image:
#: 64 MiB cover 4 TiB of images), and in the shared file.
MEMORY_BYTES = 64 << 20
FILE_BYTES = 256 << 20

_SCHEMA = "CREATE TABLE IF NOT EXISTS fingerprints (image TEXT PRIMARY KEY, blocks BLOB, used REAL)"


def block_digest(data: bytes | memoryview) -> bytes:
    return xxhash.xxh3_128_digest(data)


def block_count(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK


class Fingerprint:
    """The block digests of one image's content (immutable)."""

    __slots__ = ("blocks", "size")

    def __init__(self, size: int, blocks: bytes) -> None:
        if len(blocks) != block_count(size) * DIGEST_SIZE:
            raise ValueError(f"a fingerprint of {size} bytes has {block_count(size)} blocks")
        self.size, self.blocks = size, blocks

    def matches(self, index: int, data: bytes | memoryview) -> bool:
        """Whether ``data`` is block ``index`` of the image (length included)."""
        start = index * BLOCK
        if len(data) != min(BLOCK, self.size - start) or start >= self.size:
            return False
        return block_digest(data) == self.blocks[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE]


class FingerprintBuilder:
    """Collects the digests of an image's blocks, in order, as they are read."""

    def __init__(self) -> None:
        self.digests: list[bytes] = []

    def add(self, data: bytes | memoryview) -> None:
        self.digests.append(block_digest(data))

    def digest(self, index: int) -> bytes | None:
        return self.digests[index] if index < len(self.digests) else None

    def fingerprint(self, size: int) -> Fingerprint:
        return Fingerprint(size, b"".join(self.digests))


def _key(digest: Digest, size: int) -> str:
    return f"{digest[0].lower()}:{digest[1].lower()}:{size}"


class Fingerprints(KeptInFile):
    """Fingerprints by image digest: in memory, and with ``metrics_file`` in
    that sqlite file, shared by the workers and kept across restarts."""

    def __init__(self, path: str | None = None, *, on_error: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._memory: OrderedDict[str, Fingerprint] = OrderedDict()
        self._memory_bytes = 0
        self._file: SharedFile | None = None
        self._pruned_at = float("-inf")
        if path:
            self._file = SharedFile(path, on_error=on_error)
            self._file.open("fingerprints", lambda db: db.execute(_SCHEMA))

    def get(self, digest: Digest | None, size: int) -> Fingerprint | None:
        """The fingerprint of the image with ``digest`` and ``size``, if known."""
        if digest is None:
            return None
        key = _key(digest, size)
        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
                return found
        if self._file is None:
            return None
        _ok, row = self._file.run("fingerprints", lambda db: db.execute(
            "SELECT blocks FROM fingerprints WHERE image = ?", (key,)).fetchone())
        try:
            found = None if row is None else Fingerprint(size, bytes(row[0]))
        except (ValueError, TypeError):  # a damaged row: as good as none
            return None
        if found is not None:
            self._remember(key, found)  # recorded by another worker, or before a restart
        return found

    def add(self, digest: Digest, fingerprint: Fingerprint) -> None:
        """``fingerprint`` was read in a body that matched ``digest``."""
        key = _key(digest, fingerprint.size)
        self._remember(key, fingerprint)
        if self._file is not None:
            self._file.run("fingerprints", lambda db: self._write(db, key, fingerprint.blocks))

    def _remember(self, key: str, fingerprint: Fingerprint) -> None:
        with self._lock:
            old = self._memory.pop(key, None)
            self._memory_bytes += len(fingerprint.blocks) - (0 if old is None else len(old.blocks))
            self._memory[key] = fingerprint
            while self._memory_bytes > MEMORY_BYTES and len(self._memory) > 1:
                _key_, dropped = self._memory.popitem(last=False)
                self._memory_bytes -= len(dropped.blocks)

    def _write(self, db, key: str, blocks: bytes) -> None:  # noqa: ANN001 - an sqlite3 connection
        now = time.time()
        db.execute("INSERT OR REPLACE INTO fingerprints VALUES (?, ?, ?)", (key, blocks, now))
        if now - self._pruned_at > 3600:  # the most recently recorded, FILE_BYTES in all
            self._pruned_at = now
            db.execute("DELETE FROM fingerprints WHERE image IN (SELECT image FROM (SELECT image, "
                       "SUM(length(blocks)) OVER (ORDER BY used DESC) AS total FROM fingerprints) "
                       "WHERE total > ?)", (FILE_BYTES,))
