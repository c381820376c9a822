"""The body of one download: streams from its sources, resumes, verifies.

How much checking a body gets (``Check``):

* ``VERIFY``: every byte is hashed (beside the transfer: ``PipelinedHash``)
  and the final chunk is held back until the whole body matches the image's
  digest; a mismatch raises, so the server aborts the connection and the
  client sees a truncated body, never a complete bad one.
* ``TRUST``: the first source is a copy verified before (``locproxy.verified``):
  nothing is hashed. If it fails mid-stream, the copy that takes over is not
  known to be good, so it is read and hashed *whole* from its first byte
  (the bytes already sent are skipped, not sent twice) and checked as in
  ``VERIFY``.
* ``BACKGROUND``: every byte is hashed, nothing is held back (for clients
  that verify themselves); a mismatch is logged, demotes and forgets the
  copy, but the body has been sent.
* ``NONE``: a range (no digest covers it) or ``verify_checksums = off``.

Transfers are learnt (``Recorder.transferred``) only once their bytes
verified: corrupt bytes teach nothing good, and are recorded against the
copies that sent them. A copy that alone produced a good body is remembered
as verified.

A ``Sink`` sees every byte sent, in order, and the verdict: the site cache
fills an entry that way (``locproxy.download.caching``). A source may offer
a new sink when it fails (a fill followed by this body whose filler died:
this body takes the fill over).
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Iterator, Protocol

from locproxy.download.backends import BackendError
from locproxy.download.digests import Digest, PipelinedHash
from locproxy.download.plan import Candidate
from locproxy.download.sources import Opened, Sources
from locproxy.verified import VerifiedCopies

LOG = logging.getLogger(__package__)  # one logger for the whole download path


class Check(enum.Enum):
    NONE = "none"
    VERIFY = "verify"
    TRUST = "trust"
    BACKGROUND = "background"


class Sink(Protocol):
    def write(self, offset: int, chunk: bytes) -> None: ...

    def finish(self, verified: bool) -> None: ...

    def abort(self) -> None: ...


class ChecksumMismatch(Exception):
    """The delivered image does not match its recorded digest."""


class ImageBody:
    """The WSGI iterable of one download (``close()`` closes its current source)."""

    def __init__(self, sources: Sources, first: Opened, start: int, end: int, digest: Digest | None,
                 check: Check, verified: VerifiedCopies, sink: Sink | None = None) -> None:
        self.sources = sources
        self.sink = sink
        self.verdict: bool | None = None  # the digest's, once judged
        self.current = first
        self.start = start
        self.offset = start
        self.end = end
        self.digest = digest
        self.check = check if digest is not None else Check.NONE
        self.verified = verified
        self.used: list[tuple[Candidate, tuple | None]] = []
        self.hasher: PipelinedHash | None = None
        self.hold = False  # the last chunk back until the digest is judged
        self.held = b""
        self.skip = 0  # bytes of the current source to hash but not send again

    def __iter__(self) -> Iterator[bytes]:
        if self.digest and self.check in (Check.VERIFY, Check.BACKGROUND):
            self.hasher = PipelinedHash(self.digest[0])
        self.hold = self.check is Check.VERIFY
        first_label, failures_before = self.current[0].label, self.sources.failures
        try:
            while True:
                candidate, stream = self.current
                self.used.append((candidate, stream.identity))
                read, started = 0, time.monotonic()
                try:
                    for chunk in stream:
                        read += len(chunk)
                        if sendable := self._take(chunk):
                            yield sendable
                except BackendError as error:
                    self.sources.failed(candidate, error, self.offset)
                    if self.sink is None:
                        self.sink = getattr(stream, "take_over", lambda: None)()
                finally:
                    stream.close()
                if self.offset >= self.end:
                    break
                self._resume()
            good = self._finish(candidate, read, time.monotonic() - started, first_label)
            if self.held:
                yield self.held
        except BackendError:  # the upstream's /file failed too: abort
            self.sources.recorder.outcome(first_label, "failed")
            raise
        finally:
            # After the last byte went out (the client does not wait for an
            # fsync), or when the client went away after the verdict: finish
            # the sink; a body that ended otherwise aborts it.
            self._close_sink()
        self._report(good, first_label, failures_before)

    def _take(self, chunk: bytes) -> bytes:
        """Hash, skip, keep and hold back one chunk read from a source;
        returns what can be sent now."""
        if self.hasher is not None:
            self.hasher.update(chunk)
        if self.skip:  # already sent from the previous source
            cut = min(self.skip, len(chunk))
            self.skip, chunk = self.skip - cut, chunk[cut:]
            if not chunk:
                return b""
        if self.sink is not None:
            self.sink.write(self.offset, chunk)
        self.offset += len(chunk)
        if self.hold:  # the last chunk waits for the verdict
            chunk, self.held = self.held, chunk
        return chunk

    def _resume(self) -> None:
        if self.check is Check.TRUST and self.hasher is None:
            # The rest comes from a copy not known to be good: check it whole.
            self.hasher, self.hold, self.skip = PipelinedHash(self.digest[0]), True, self.offset  # type: ignore[index]
            self.current = self.sources.resume(0)
        else:
            self.current = self.sources.resume(self.offset)

    def _report(self, good: bool, first_label: str, failures_before: int) -> None:
        if good:
            outcome = "resumed" if len(self.used) > 1 else "served" if failures_before == 0 else "fell_back"
            self.sources.recorder.outcome(first_label, outcome)
        LOG.info("image %s: bytes %d-%d sent from %s%s", self.sources.image_id, self.start, self.end - 1,
                 ", ".join(candidate.label for candidate, _ in self.used), self._checked())

    def _finish(self, last: Candidate, read: int, seconds: float, first_label: str) -> bool:
        """Judge the body before its last chunk goes: learn and remember, or
        abort (raises; in ``BACKGROUND``, only reports: False)."""
        hasher = self.hasher
        matched = hasher is None or self.digest is None or hasher.matches(self.digest[1])
        self.verdict = matched and hasher is not None
        if not matched:
            self._mismatch(first_label)
            return False
        if last.backend:
            self.sources.recorder.transferred(last.key, last.copy, last.label, read, seconds)
        hashed = self.used if self.check is not Check.TRUST else self.used[1:]
        if hasher is not None and len(hashed) == 1 and self.digest is not None:
            self.verified.add(hashed[0][1], self.digest)  # this copy alone produced the good body
        return True

    def _mismatch(self, first_label: str) -> None:
        sources, digest = self.sources, self.digest
        assert digest is not None
        hashed = self.used if self.check is not Check.TRUST else self.used[1:]
        for candidate, identity in hashed:
            self.verified.forget(identity)
            if candidate.backend:
                sources.recorder.corrupt(candidate.key, candidate.copy, candidate.label, sources.image_id)
        sources.recorder.outcome(first_label, "checksum_mismatch")
        labels = ", ".join(candidate.label for candidate, _ in hashed)
        if self.check is Check.BACKGROUND:
            LOG.error("image %s: %s digest mismatch from %s; the body was sent (verify_checksums = background), "
                      "the copy is demoted", sources.image_id, digest[0], labels)
            return
        LOG.error("image %s: %s digest mismatch from %s; aborting the download", sources.image_id, digest[0], labels)
        raise ChecksumMismatch(f"image {sources.image_id}: {digest[0]} mismatch")

    def _checked(self) -> str:
        if self.digest is None or self.check is Check.NONE:
            return ""
        if self.check is Check.TRUST and len(self.used) == 1:
            return f" ({self.digest[0]} verified before)"
        return f" ({self.digest[0]} {'checked after sending' if self.check is Check.BACKGROUND else 'verified'})"

    def _close_sink(self) -> None:
        """Give the sink the verdict once it is known (``_finish``), else abort it."""
        if self.sink is not None:
            sink, self.sink = self.sink, None
            if self.verdict is None:
                sink.abort()
            else:
                sink.finish(self.verdict)

    def close(self) -> None:
        self.current[1].close()
        self._close_sink()
