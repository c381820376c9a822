"""Benchmark image files and their digests, cached between runs.

Files live under ``$LOCPROXY_BENCH_CACHE`` (default ``/var/tmp/locproxy-bench``).
They hold real (non-sparse) bytes: a 16 MiB pseudo-random block, repeated,
with the file's own offset mixed into each block's first 8 bytes, so no two
blocks are equal and nothing is trivially compressible or a hole.

Each ``NAME.raw`` has a ``NAME.json`` beside it with ``size``, ``mtime_ns``,
``md5`` and ``sha512``; it is trusted only while the file's size and mtime
match. ``touch()`` gives a file a new mtime (so locproxy forgets that it
verified it: the next download is a "first", verifying one) and rewrites the
cache entry to match, since the bytes did not change.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB
BLOCK = 16 * MiB

CACHE_DIR = Path(os.environ.get("LOCPROXY_BENCH_CACHE", "/var/tmp/locproxy-bench"))


@dataclass(frozen=True)
class ImageFile:
    name: str
    path: Path
    size: int
    md5: str
    sha512: str

    @property
    def url(self) -> str:
        return self.path.as_uri()


def human(size: int) -> str:
    """``1 GiB``, ``256 MiB``: a size as the table names it."""
    return f"{size // GiB} GiB" if size % GiB == 0 else f"{size // MiB} MiB"


def file_name(size: int, index: int | None = None) -> str:
    """The cached file for an image of ``size``: ``img-1g``, ``img-256m-03``."""
    name = f"img-{size // GiB}g" if size % GiB == 0 else f"img-{size // MiB}m"
    return name if index is None else f"{name}-{index:02d}"


def _block() -> bytes:
    return random.Random(20240601).randbytes(BLOCK)


def _write(path: Path, size: int) -> None:
    block = bytearray(_block())
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as out:
        offset = 0
        while offset < size:
            block[:8] = offset.to_bytes(8, "little")
            out.write(block[: min(BLOCK, size - offset)])
            offset += BLOCK
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha512()
    with open(path, "rb", buffering=0) as stream:
        while chunk := stream.read(4 * MiB):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _meta_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _cached(path: Path, size: int) -> ImageFile | None:
    try:
        meta = json.loads(_meta_path(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return None
    if stat.st_size != size or meta.get("size") != size or meta.get("mtime_ns") != stat.st_mtime_ns:
        return None
    return ImageFile(path.stem, path, size, meta["md5"], meta["sha512"])


def _record(path: Path, size: int, md5: str, sha512: str) -> ImageFile:
    stat = path.stat()
    meta = {"size": size, "mtime_ns": stat.st_mtime_ns, "md5": md5, "sha512": sha512}
    tmp = _meta_path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, _meta_path(path))
    return ImageFile(path.stem, path, size, md5, sha512)


def ensure(name: str, size: int, log=print) -> ImageFile:
    """``CACHE_DIR/images/NAME.raw`` of ``size`` bytes with its digests."""
    directory = CACHE_DIR / "images"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.raw"
    found = _cached(path, size)
    if found is not None:
        return found
    started = time.monotonic()
    if not path.exists() or path.stat().st_size != size:
        log(f"images: writing {path} ({size / MiB:.0f} MiB)")
        _write(path, size)
    md5, sha512 = _digests(path)
    log(f"images: {path.name} ready in {time.monotonic() - started:.1f}s")
    return _record(path, size, md5, sha512)


def ensure_all(specs: list[tuple[str, int]], log=print) -> dict[str, ImageFile]:
    """Several at once (hashing releases the GIL: two cores, two threads)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(ensure, name, size, log) for name, size in specs}
        return {name: future.result() for name, future in futures.items()}


def touch(image: ImageFile) -> None:
    """New mtime (so locproxy's verified-file memory no longer matches), same bytes."""
    now = time.time_ns()
    os.utime(image.path, ns=(now, now))
    _record(image.path, image.size, image.md5, image.sha512)


def touch_all(files: list[ImageFile]) -> None:
    for image in files:
        touch(image)


def warm(image: ImageFile) -> None:
    """Read the file once so every peer is served from the page cache."""
    with open(image.path, "rb", buffering=0) as stream:
        buffer = bytearray(8 * MiB)
        while stream.readinto(buffer):
            pass
