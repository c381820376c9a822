"""The body of one download: the byte pump from its sources to the client.

``ImageBody`` moves the bytes ``[start, end)`` of an image from the first
source that opened, then from the next ones (``Sources``), through a
``Verifier`` (``verify.py``: what is checked is decided there and in
``policy.py``, not here). Its rules:

* Bytes move in **blocks** of the image (``fingerprints.BLOCK``) whenever
  anything is checked: a source is read from the start of the block that
  holds the next byte needed, and only whole blocks that passed their check
  go out (the parts of the first and last block inside the span).
* A source that fails mid-stream, or sends a block that is not the image's
  (``BLOCKS``), is left for the next one **at that block**; the client gets
  one unbroken body. The upstream's own ``/file`` may have to start at byte
  0 (Glance refuses Ranges for most stores): the blocks already sent are
  then read again, compared with what was sent, and skipped.
* ``DIGEST`` holds the last block back until the whole body matched; a
  mismatch found before any byte went out (an image of one block) starts
  again from the next source, so a small corrupt copy falls through to a
  good one or to the upstream; found later, it aborts the connection: a
  client never gets a complete body that does not match.
* ``prime()`` reads until the first bytes may go out, before the response
  starts: a download that cannot start gets a JSON error, never a server's
  error page.

Transfers are learnt (``Recorder.transferred``) only once their bytes
passed their check: corrupt bytes teach nothing good.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator

from locproxy.download.backends import BackendError
from locproxy.download.plan import Candidate, DownloadPlan
from locproxy.download.policy import read_span
from locproxy.download.sources import Opened, Sources
from locproxy.download.verify import Check, ChecksumMismatch, Verdict, Verifier, corrupt_block, judge
from locproxy.fingerprints import BLOCK, Fingerprints

LOG = logging.getLogger(__package__)  # one logger for the whole download path

_CHECKED = {Check.DIGEST: "verified", Check.BESIDE: "checked after sending",
            Check.BLOCKS: "every block checked against the image's fingerprint"}


class Rejected(Exception):
    """A source sent a block that is not the image's."""


class ImageBody:
    """The WSGI iterable of one download (``close()`` closes its current source)."""

    def __init__(self, plan: DownloadPlan, sources: Sources, first: Opened, verifier: Verifier,
                 fingerprints: Fingerprints, done: str = "sent") -> None:
        self.plan, self.sources, self.current = plan, sources, first
        self.done = done  # what the log says became of the bytes
        self.verifier, self.fingerprints = verifier, fingerprints
        self.offset = plan.start  # the next byte the client needs
        self.used: list[Candidate] = []
        self.sent = False  # a byte went to the client: a mismatch can no longer start again
        self.refused = False  # bytes were refused as not the image's (a block, or the whole digest)
        self.held = b""
        self.primed: list[bytes] = []
        self.failures_before = sources.failures
        self._pump = self._chunks()

    # -- the WSGI iterable --------------------------------------------------------

    def prime(self) -> None:
        """Read until the first bytes may go out (raises ``BackendError`` or
        ``ChecksumMismatch`` if no source can start the body)."""
        for chunk in self._pump:
            self.primed.append(chunk)
            if chunk:
                return

    def take_primed(self) -> list[bytes]:
        """The pieces ``prime()`` read, for the caller to send first (the
        iteration then goes on after them)."""
        primed, self.primed = self.primed, []
        self.sent = self.sent or any(primed)
        return primed

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.primed:
            self.sent = True
            yield chunk
        self.primed = []
        for chunk in self._pump:
            self.sent = True
            yield chunk

    def close(self) -> None:
        self.current[1].close()
        self._pump.close()

    # -- the pump -------------------------------------------------------------------

    def _chunks(self) -> Iterator[bytes]:
        first_label = self.current[0].label
        try:
            yield from self._from_sources()
            while self.verifier.matched() is False and self._start_again():
                yield from self._from_sources()
            yield from self._release_held()
        except BackendError:  # the upstream's /file failed too: abort
            self.sources.recorder.outcome(first_label, "failed")
            raise
        self._report(first_label)

    def _from_sources(self) -> Iterator[bytes]:
        while self.offset < self.plan.end:
            candidate, stream = self.current
            self.used.append(candidate)
            read, started = 0, time.monotonic()
            try:
                for position, data in self._pieces(stream):
                    read += len(data)
                    if sendable := self._take(candidate, position, data):
                        yield from self._hold(sendable)
            except BackendError as error:
                self.sources.failed(candidate, error, self.offset)
            except Rejected:
                getattr(stream, "rejected", lambda: None)()  # a cache entry: removed
            finally:
                stream.close()
            if self.offset >= self.plan.end:
                self.last = (candidate, read, time.monotonic() - started)
                return
            self.current = self.sources.resume(*read_span(self.plan, self.offset, self.verifier.aligned))

    def _pieces(self, stream: object) -> Iterator[tuple[int, bytes]]:
        """``(image offset, bytes)`` of what ``stream`` sends: its chunks as they
        come, or whole blocks of the image when they are checked."""
        position = getattr(stream, "start", self.offset)
        if not self.verifier.aligned:
            for chunk in stream:  # type: ignore[attr-defined]
                yield position, chunk
                position += len(chunk)
            return
        parts: list[bytes] = []
        have, want = 0, min(BLOCK, self.plan.size - position)
        for chunk in stream:  # type: ignore[attr-defined]
            while chunk:
                take = chunk if len(chunk) <= want - have else chunk[:want - have]
                chunk = chunk[len(take):]
                parts.append(take)
                have += len(take)
                if have == want:
                    yield position, parts[0] if len(parts) == 1 else b"".join(parts)
                    position += have
                    parts, have, want = [], 0, min(BLOCK, self.plan.size - position)

    def _take(self, candidate: Candidate, position: int, data: bytes) -> bytes:
        """Check one piece; what of it the client still needs. Raises
        ``Rejected`` for a block that is not the image's."""
        index, end = position // BLOCK, position + len(data)
        if end <= self.offset:  # sent already (a source that starts earlier)
            if not self.verifier.admitted_before(index, data):
                self._reject(candidate, index)
            return b""
        if self.verifier.aligned and not self.verifier.admit(index, data):
            self._reject(candidate, index)
        piece = data[max(0, self.offset - position):self.plan.end - position]
        self.offset = min(end, self.plan.end)
        return piece

    def _reject(self, candidate: Candidate, index: int) -> None:
        self.refused = True
        corrupt_block(candidate, self.plan.image_id, index, self.sources.recorder)
        raise Rejected()

    def _hold(self, piece: bytes) -> Iterator[bytes]:
        """The last piece waits for the verdict where the check holds it back."""
        if self.verifier.holds_last:
            piece, self.held = self.held, piece
        if piece:
            self.sent = True
            yield piece

    def _release_held(self) -> Iterator[bytes]:
        held, self.held = self.held, b""
        if held:
            self.sent = True
            yield held

    def _start_again(self) -> bool:
        """The whole body does not match its digest: judge it; True when it
        starts again from the next source (nothing went out yet), False
        when it was sent anyway (``BESIDE``); aborts otherwise."""
        plan, verifier = self.plan, self.verifier
        assert plan.digest is not None
        self.refused = True
        beside = verifier.check is Check.BESIDE
        consequence = ("the body was sent (verify_checksums = background)" if beside
                       else "aborting the download" if self.sent else "nothing was sent: starting again")
        judge(Verdict(plan.image_id, plan.digest, self.used, False), None, self.fingerprints,
              self.sources.recorder, consequence)
        self.sources.recorder.outcome(self.used[0].label, "checksum_mismatch")
        if beside:
            return False
        if self.sent:
            raise ChecksumMismatch(f"image {plan.image_id}: {plan.digest[0]} mismatch")
        self.verifier = Verifier(verifier.check, plan.digest, None)
        self.offset, self.held, self.used = plan.start, b"", []
        self.current = self.sources.resume(*read_span(plan, plan.start, True))
        return True

    def _report(self, first_label: str) -> None:
        candidate, read, seconds = self.last
        matched = self.verifier.matched()
        if matched and self.plan.digest is not None:
            judge(Verdict(self.plan.image_id, self.plan.digest, self.used, True),
                  self.verifier.recorded(self.plan.size), self.fingerprints, self.sources.recorder)
        if candidate.backend:
            self.sources.recorder.transferred(candidate.key, candidate.copy, candidate.label, read, seconds)
            self.sources.recorder.read_from(candidate.store, read)
        resumed = len(set(self.used)) > 1
        outcome = "resumed" if resumed else "served" if self.sources.failures == self.failures_before else "fell_back"
        self.sources.recorder.outcome(first_label, outcome)
        LOG.info("image %s: bytes %d-%d %s from %s%s", self.plan.image_id, self.plan.start, self.plan.end - 1,
                 self.done, ", ".join(dict.fromkeys(c.label for c in self.used)), self._checked())

    def _checked(self) -> str:
        label = _CHECKED.get(self.verifier.check)
        if label is None or self.plan.digest is None:
            return ""
        return f" ({label})" if self.verifier.check is Check.BLOCKS else f" ({self.plan.digest[0]} {label})"
