"""Small, test-only parts for the unit tests of ``locproxy.download``'s pure
logic: backends that serve bytes from memory (broken as asked), an upstream
``/file`` that answers like Glance (a 400 to any Range, if asked), and a
plan. The end-to-end proofs run against real servers elsewhere."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterator

from webob import Response

from locproxy.download.backends import NOBODY, BackendError, BackendStream, Caller
from locproxy.download.plan import Candidate, DownloadPlan
from locproxy.download.sources import Sources
from locproxy.failures import Failure
from locproxy.fingerprints import BLOCK, Fingerprint, FingerprintBuilder
from locproxy.observability import Recorder
from locproxy.tracker import Tracker

MiB = 1 << 20
DATA = bytes(range(251)) * (3 * MiB // 251 + 1000)  # three blocks and a part
DIGEST = ("sha512", hashlib.sha512(DATA).hexdigest())


def fingerprint_of(data: bytes) -> Fingerprint:
    built = FingerprintBuilder()
    for start in range(0, len(data), BLOCK):
        built.add(data[start:start + BLOCK])
    return built.fingerprint(len(data))


@dataclass
class Copy:
    """A copy in memory: ``data``, broken ``fail_at`` a byte, and the reads it served."""

    data: bytes = DATA
    fail_at: int | None = None
    refuse: bool = False
    refusal: Failure = Failure.HTTP_STATUS  # what a refusal is told as
    reads: list[tuple[int, int]] = field(default_factory=list)
    callers: list[Caller] = field(default_factory=list)  # who each open was for


class MemoryStream(BackendStream):
    def __init__(self, copy: Copy, start: int, length: int, chunk_size: int) -> None:
        super().__init__("memory", start, length, chunk_size)
        self.copy = copy

    def _chunks(self) -> Iterator[bytes]:
        while self._sent < self.length:
            position = self.start + self._sent
            if self.copy.fail_at is not None and position >= self.copy.fail_at:
                raise BackendError(self.label, f"broken at byte {position}", Failure.TRUNCATED)
            end = min(self.start + self.length, position + self._chunk_size)
            if self.copy.fail_at is not None:
                end = min(end, max(self.copy.fail_at, position + 1))
            chunk = self.copy.data[position:end]
            self._sent += len(chunk)
            yield chunk


class MemoryBackends:
    """``Backends`` for urls ``mem://name``."""

    def __init__(self, copies: dict[str, Copy], chunk_size: int = 256 * 1024) -> None:
        self.copies, self.chunk_size = copies, chunk_size

    def readable(self, url: str, caller: Caller = NOBODY) -> bool:
        return url.startswith("mem://")

    def open(self, url: str, start: int, length: int, total_size: int | None,
             caller: Caller = NOBODY) -> MemoryStream:
        copy = self.copies[url[len("mem://"):]]
        copy.callers.append(caller)
        if copy.refuse:
            raise BackendError(url, "refused", copy.refusal)
        copy.reads.append((start, start + length))
        return MemoryStream(copy, start, length, self.chunk_size)


class GlanceFile:
    """The upstream's own ``/file`` as ``ImageRequests`` asks it: whole, or
    with a Range; a store without random reads answers any Range with 400."""

    def __init__(self, data: bytes = DATA, ranges: bool = True) -> None:
        self.data, self.ranges = data, ranges
        self.asked: list[str | None] = []

    def download(self, method: str = "GET", headers: dict[str, str] | None = None) -> Response:
        wanted = (headers or {}).get("Range")
        self.asked.append(wanted)
        if wanted is None:
            return Response(body=self.data, status=200)
        if not self.ranges:
            return Response(body=b"Getting images randomly from this store is not supported", status=400)
        first, last = wanted.split("=", 1)[1].split("-")
        return Response(body=self.data[int(first):int(last) + 1], status=206)

    def as_sent(self) -> None:
        return None


def candidate(name: str) -> Candidate:
    return Candidate(f"mem://{name}", f"mem://{name}", f"mem://{name}#copy", name)


def plan(start: int = 0, end: int | None = None, data: bytes = DATA, names: tuple[str, ...] = ("a", "b"),
         digest: Any = DIGEST) -> DownloadPlan:
    end = len(data) if end is None else end
    return DownloadPlan(image_id="image", status=200 if (start, end) == (0, len(data)) else 206, start=start,
                        end=end, size=len(data), headers=(), digest=digest,
                        candidates=tuple(candidate(name) for name in names), head_only=False)


def sources(download: DownloadPlan, backends: MemoryBackends, upstream: GlanceFile | None = None,
            caller: Caller = NOBODY) -> Sources:
    return Sources(download.candidates, backends, Recorder(Tracker()), upstream or GlanceFile(), download.image_id,
                   download.size, caller)  # type: ignore[arg-type]
