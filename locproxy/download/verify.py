"""How one body's bytes are checked (``Verifier``), and the one verdict on a
copy's bytes (``judge`` and ``corrupt_block``), apart from the byte pump.

The checks (``Check``, chosen by ``policy.body_policy``):

* ``DIGEST``: the first whole read of an image. Every block is hashed with
  the image's digest beside the transfer (``PipelinedHash``) and
  fingerprinted; the last block is held back until the whole body matched.
* ``BESIDE``: the same, holding nothing back (``verify_checksums =
  background``: clients that verify themselves get the bytes at once).
* ``BLOCKS``: the image's fingerprint is known: every block is compared
  before it is sent, whatever the span (ranges too); a block that differs
  is never sent.
* ``NONE``: ``verify_checksums = false``, an image without a digest, or a
  range of an image never read whole here (no fingerprint covers it yet).

The verdict (``judge``) is the same wherever bytes were checked (a client's
body, a cache fill, the background check of a sendfile, verify-ahead): a
good whole read records its fingerprint and teaches the tracker; a bad one
demotes the copies that sent it and is logged once, as an ERROR naming
them. Bookkeeping never raises (``Recorder``).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Sequence

from locproxy.download.digests import PipelinedHash
from locproxy.download.plan import Candidate, Digest
from locproxy.fingerprints import Fingerprint, FingerprintBuilder, Fingerprints, block_digest
from locproxy.observability import Recorder

LOG = logging.getLogger(__package__)  # one logger for the whole download path


class Check(enum.Enum):
    NONE = "none"
    DIGEST = "digest"
    BESIDE = "beside"
    BLOCKS = "blocks"


class ChecksumMismatch(Exception):
    """The delivered image does not match its recorded digest."""


class Verifier:
    """Checks the blocks of one body, in order (block ``index`` of the image)."""

    def __init__(self, check: Check, digest: Digest | None, fingerprint: Fingerprint | None) -> None:
        self.check = check
        self.digest = digest
        self.fingerprint = fingerprint
        self.built: FingerprintBuilder | None = None
        self.hasher: PipelinedHash | None = None
        if check in (Check.DIGEST, Check.BESIDE):
            assert digest is not None
            self.built = FingerprintBuilder()
            self.hasher = PipelinedHash(digest[0], self.built)

    @property
    def aligned(self) -> bool:
        """Whether bodies must be read in whole blocks (all but ``NONE``)."""
        return self.check is not Check.NONE

    @property
    def holds_last(self) -> bool:
        return self.check is Check.DIGEST

    def admit(self, index: int, block: bytes) -> bool:
        """Whether block ``index`` may go out; hashed if it may."""
        if self.check is Check.BLOCKS:
            assert self.fingerprint is not None
            return self.fingerprint.matches(index, block)
        if self.hasher is not None:
            self.hasher.update(block)
        return True

    def admitted_before(self, index: int, block: bytes) -> bool:
        """Whether ``block`` equals block ``index`` as admitted before: a source
        that had to start earlier than the bytes still to send (a resume
        from byte 0) must hold what was already sent. True where nothing
        tells (``NONE``)."""
        if self.fingerprint is not None:
            return self.fingerprint.matches(index, block)
        if self.built is not None:
            self.hasher.wait()  # type: ignore[union-attr] - the digests of the blocks given so far
            return self.built.digest(index) == block_digest(block)
        return True

    def matched(self) -> bool | None:
        """The whole body's verdict once every block was admitted: True or
        False for a digest, None where no digest was computed."""
        if self.hasher is None:
            return None
        assert self.digest is not None
        return self.hasher.matches(self.digest[1])

    def recorded(self, size: int) -> Fingerprint | None:
        """The fingerprint this body built, once it matched."""
        return None if self.built is None else self.built.fingerprint(size)


@dataclass(frozen=True)
class Verdict:
    """What one whole read of an image was: which copies sent it, and whether it matched."""

    image_id: str
    digest: Digest
    copies: Sequence[Candidate]
    good: bool


def judge(verdict: Verdict, fingerprint: Fingerprint | None, fingerprints: Fingerprints, recorder: Recorder,
          consequence: str = "") -> None:
    """Remember a good whole read's fingerprint; demote the copies of a bad
    one, with one ERROR naming them and saying ``consequence``."""
    if verdict.good:
        if fingerprint is not None:
            fingerprints.add(verdict.digest, fingerprint)
        return
    labels = ", ".join(dict.fromkeys(candidate.label for candidate in verdict.copies)) or "no copy"
    for candidate in dict.fromkeys(verdict.copies):
        if candidate.backend:
            recorder.corrupt(candidate.key, candidate.copy, candidate.label, verdict.image_id)
    LOG.error("image %s: %s digest mismatch from %s; %s; the copy is demoted", verdict.image_id,
              verdict.digest[0], labels, consequence)


def corrupt_block(candidate: Candidate, image_id: str, index: int, recorder: Recorder) -> None:
    """Block ``index`` from ``candidate`` is not the image's: never sent, the copy demoted."""
    if candidate.backend:
        recorder.corrupt(candidate.key, candidate.copy, candidate.label, image_id)
    LOG.error("image %s: block %d from %s does not match the image's fingerprint; not sent, the copy is "
              "demoted, the download goes on from the next copy", image_id, index, candidate.label)
