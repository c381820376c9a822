"""``body_policy`` and ``read_span``: how a body is checked and sent, and
what a source must read for it (pure)."""

from __future__ import annotations

import pytest

from locproxy.download.policy import body_policy, read_span
from locproxy.download.verify import Check
from locproxy.fingerprints import BLOCK
from tests.support.download_fakes import DATA, fingerprint_of, plan

WHOLE, RANGE, TAIL = plan(), plan(10, 20), plan(BLOCK + 1)
KNOWN = fingerprint_of(DATA)


@pytest.mark.parametrize("download, mode, fingerprint, check, sendfile", [
    pytest.param(WHOLE, "on", None, Check.DIGEST, False, id="first-read-held-back"),
    pytest.param(WHOLE, "background", None, Check.BESIDE, True, id="first-read-background-sendfile"),
    pytest.param(WHOLE, "on", KNOWN, Check.BLOCKS, False, id="read-before-every-block"),
    pytest.param(WHOLE, "background", KNOWN, Check.BLOCKS, False, id="background-read-before-every-block"),
    pytest.param(RANGE, "on", KNOWN, Check.BLOCKS, False, id="range-read-before-checked"),
    pytest.param(RANGE, "on", None, Check.NONE, False, id="range-never-read-whole-unchecked"),
    pytest.param(TAIL, "on", None, Check.NONE, True, id="range-to-the-end-may-sendfile"),
    pytest.param(WHOLE, "off", KNOWN, Check.NONE, True, id="off-sendfile"),
    pytest.param(RANGE, "off", None, Check.NONE, False, id="off-range-no-sendfile"),
    pytest.param(plan(digest=None), "on", None, Check.NONE, True, id="no-digest"),
])
def test_body_policy(download, mode: str, fingerprint, check: Check, sendfile: bool) -> None:
    policy = body_policy(download, mode, fingerprint)
    assert (policy.check, policy.sendfile) == (check, sendfile)
    assert policy.fingerprint is (fingerprint if check is Check.BLOCKS else None)


@pytest.mark.parametrize("download, offset, aligned, span", [
    pytest.param(RANGE, 10, True, (0, BLOCK), id="inside-the-first-block"),
    pytest.param(plan(BLOCK - 1, BLOCK + 1), BLOCK - 1, True, (0, 2 * BLOCK), id="across-a-boundary"),
    pytest.param(WHOLE, 2 * BLOCK + 5, True, (2 * BLOCK, len(DATA)), id="resume-at-the-block"),
    pytest.param(plan(3 * BLOCK + 1), 3 * BLOCK + 1, True, (3 * BLOCK, len(DATA)), id="the-short-last-block"),
    pytest.param(RANGE, 10, False, (10, 20), id="unchecked-exact"),
])
def test_read_span(download, offset: int, aligned: bool, span: tuple[int, int]) -> None:
    assert read_span(download, offset, aligned) == span
