"""The ``Verifier`` and the one verdict on a copy's bytes (``judge``)."""

from __future__ import annotations

import hashlib
import logging

import pytest

from locproxy.download.verify import Check, Verdict, Verifier, judge
from locproxy.fingerprints import BLOCK, Fingerprints
from locproxy.observability import Recorder
from locproxy.tracker import Tracker
from tests.support.download_fakes import DATA, DIGEST, candidate, fingerprint_of

BLOCKS = [DATA[start:start + BLOCK] for start in range(0, len(DATA), BLOCK)]


@pytest.mark.parametrize("check", [Check.DIGEST, Check.BESIDE])
def test_a_first_read_hashes_and_fingerprints_every_block(check: Check) -> None:
    verifier = Verifier(check, DIGEST, None)
    assert verifier.aligned and verifier.holds_last is (check is Check.DIGEST)
    assert all(verifier.admit(index, block) for index, block in enumerate(BLOCKS))
    assert verifier.matched() is True
    assert verifier.recorded(len(DATA)).blocks == fingerprint_of(DATA).blocks
    assert verifier.admitted_before(1, BLOCKS[1]) and not verifier.admitted_before(1, BLOCKS[2])


def test_a_first_read_that_does_not_match() -> None:
    verifier = Verifier(Check.DIGEST, ("sha512", hashlib.sha512(b"other").hexdigest()), None)
    for index, block in enumerate(BLOCKS):
        verifier.admit(index, block)
    assert verifier.matched() is False


def test_a_read_before_checks_each_block_against_the_fingerprint() -> None:
    verifier = Verifier(Check.BLOCKS, DIGEST, fingerprint_of(DATA))
    assert not verifier.holds_last and verifier.matched() is None
    assert verifier.admit(0, BLOCKS[0]) and not verifier.admit(0, BLOCKS[1])
    assert not verifier.admit(3, BLOCKS[3] + b"x"), "a longer last block"


def test_nothing_checked() -> None:
    verifier = Verifier(Check.NONE, DIGEST, None)
    assert not verifier.aligned and verifier.admit(0, b"anything") and verifier.matched() is None
    assert verifier.admitted_before(0, b"anything")


def test_the_verdict(caplog: pytest.LogCaptureFixture) -> None:
    tracker, fingerprints = Tracker(), Fingerprints()
    recorder = Recorder(tracker)
    judge(Verdict("image", DIGEST, (candidate("a"),), True), fingerprint_of(DATA), fingerprints, recorder)
    assert fingerprints.get(DIGEST, len(DATA)) is not None and not caplog.records
    with caplog.at_level(logging.ERROR):
        judge(Verdict("image", DIGEST, (candidate("a"), candidate("b"), candidate("a")), False), None,
              Fingerprints(), recorder, "aborting the download")
    assert [record.getMessage() for record in caplog.records] == [
        "image image: sha512 digest mismatch from a, b; aborting the download; the copy is demoted"]
    assert tracker.demoted("mem://a", "mem://a#copy") and tracker.demoted("mem://b", "mem://b#copy")
