"""How a download's bytes are checked and sent, decided without I/O (pure).

``body_policy`` turns what the client asked for (the plan), whether the
first source is a local file the server may ``sendfile``, the
``verify_checksums`` mode and the image's fingerprint (if one is known) into
a ``BodyPolicy``. The rules, in order:

1. ``verify_checksums = false`` or an image without a digest: nothing is
   checked; a local file sent to its end goes by sendfile.
2. A fingerprint is known: every block of every body (whole or a range) is
   checked before it is sent (``BLOCKS``), in every mode.
3. A whole image without a fingerprint: its first whole read. Hashed and
   fingerprinted beside the transfer, the last block held back until it
   matched (``DIGEST``); with ``background``, nothing held back
   (``BESIDE``), and a local file then goes by sendfile while a helper
   thread hashes it.
4. A range without a fingerprint: nothing covers it (``NONE``); the first
   whole read of the image will fingerprint it.
"""

from __future__ import annotations

from dataclasses import dataclass

from locproxy.download.plan import DownloadPlan
from locproxy.download.verify import Check
from locproxy.fingerprints import BLOCK, Fingerprint


@dataclass(frozen=True)
class BodyPolicy:
    check: Check
    fingerprint: Fingerprint | None
    sendfile: bool  # a local file source goes to the server's sendfile; nothing in Python touches its bytes

    @property
    def aligned(self) -> bool:
        return self.check is not Check.NONE


def body_policy(plan: DownloadPlan, mode: str, fingerprint: Fingerprint | None) -> BodyPolicy:
    """The check and the sending of ``plan``'s body (see the module docstring)."""
    # A file wrapper may send to the end of the file whatever Content-Length says: bodies to the end only.
    if mode == "off" or plan.digest is None:
        return BodyPolicy(Check.NONE, None, plan.whole)
    if fingerprint is not None:
        return BodyPolicy(Check.BLOCKS, fingerprint, False)
    if plan.whole_image:
        if mode == "background":
            return BodyPolicy(Check.BESIDE, None, True)
        return BodyPolicy(Check.DIGEST, None, False)
    return BodyPolicy(Check.NONE, None, plan.whole)


def read_span(plan: DownloadPlan, offset: int, aligned: bool) -> tuple[int, int]:
    """What a source must read for the rest of ``plan``'s body from
    ``offset``: whole blocks of the image when they are checked."""
    if not aligned:
        return offset, plan.end
    return offset - offset % BLOCK, min(plan.size, -(-plan.end // BLOCK) * BLOCK)
